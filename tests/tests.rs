//! Integration tests: the real `tether-server` and `tether` binaries, real TLS
//! on loopback, faults injected from outside with a TCP proxy and signals.
//! One test binary; one module per area; helpers in `util`.

mod util;

mod alerts;
mod authz;
mod cli;
mod compat;
mod cross_arch;
mod dashboard;
mod deploy;
mod dev_run;
mod docker;
mod enroll;
mod failover;
mod fleet;
mod health;
mod install_sh;
mod jobs;
mod logs;
mod moving;
mod packages;
mod reconnect;
mod recordings;
mod releases;
mod replicas;
mod rogue;
mod signed;
mod telemetry;
mod tenancy;
mod terminal;
mod unauthenticated;
mod update;
