//! The Tether control plane as a library: the `tether-server` binary
//! (`main.rs`) parses its command line and calls [`serve::main`] or
//! [`cli::run`]; the server's integration tests drive it the same way.
//!
//! Module map, one concern each:
//!
//! ```text
//! config     serve flags, data-dir files      serve      listener, TLS accept, shutdown
//! tls        cert loading, dev CA             app        shared state, route table
//! storage    SQLite, the only SQL             auth       secrets, hashing, callers
//! api        REST handlers                    error      the JSON error body
//! runner_ws  one runner's WebSocket           registry   live connections, routing
//! health     health changes + broadcast       events     SSE of health changes
//! clock      time formats                     cli        operator subcommands
//! telemetry  metrics + fingerprints from      metrics_store  metrics SQLite: samples,
//!            a runner socket, the writer                     rollups, retention, queries
//! telemetry_api  metrics/fingerprint REST     prometheus     text exposition
//! containers     Docker state, container      containers_api container REST: Docker
//!                view + events from a runner                 calls through the runner
//! users      dashboard users, sessions        web        the embedded dashboard files
//! stream_auth  streams re-check who they       quotas     per-tenant limits, job retention
//!              serve; WebSocket tickets
//! ```

mod api;
pub mod app;
mod auth;
pub mod cli;
pub mod clock;
pub mod config;
mod containers;
mod containers_api;
mod deploy_api;
mod deploy_store;
pub mod edge;
mod error;
mod events;
mod health;
pub mod job_store;
mod jobs;
mod jobs_api;
pub mod log_store;
mod logs;
mod logs_api;
pub mod metrics_store;
mod prometheus;
mod quotas;
pub mod registry;
mod runner_ws;
pub mod secrets;
pub mod serve;
pub mod storage;
mod stream_auth;
mod telemetry;
mod telemetry_api;
mod terminals;
mod terminals_api;
pub mod tls;
pub mod updates;
mod users;
mod web;
