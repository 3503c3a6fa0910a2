//! The Tether control plane as a library: the `tether-server` binary
//! (`main.rs`) parses its command line and calls [`app::serve::main`] or
//! [`cli::run`]; the integration tests (`tests/server/`) drive it the same way.
//!
//! One folder per concern (`docs/server.md` lists every file and the
//! dependency rule between these folders, which a test checks):
//!
//! ```text
//! app/        state, route table (each feature's routes()), listener and
//!             shutdown, TLS, serve flags, the embedded dashboard
//! common/     error body, request parsing, caller extractor and hashing,
//!             time formats, the edge toward strangers, private files,
//!             sealed secrets, stream re-checks and tickets, quotas
//! link/       the runner WebSocket, the registry of live connections, and
//!             dispatch of runner messages by family to the features
//! db/         storage: one async trait per area, the model types, db/sqlite/
//! cluster/    several replicas on one PostgreSQL: who holds each runner's link
//! cli/        operator subcommands, clients of the REST API
//! runners/    tenants, tokens, enrollment, runners; health and its SSE
//! telemetry/  metrics and fingerprints: ingest, store, REST, Prometheus
//! containers/ Docker state and container REST
//! logs/       container log collection, store, REST
//! jobs/       jobs: hub, store, REST
//! deploy/     deploys over groups of runners: REST, store
//! terminals/  terminal sessions: relay, REST and WebSocket, audit
//! users/      dashboard users and sessions
//! updates/    releases, update policy, install script
//! alerts/     alert rules and their engine, notification channels, REST
//! fleet/      labels and selectors, waves, job deadlines, schedules
//! audit/      the audit trail: the recording layer, its store, REST
//! signing/    operator keys (minisign format) and signing, for the CLI
//! ```

pub mod alerts;
pub mod app;
pub mod audit;
pub mod cli;
pub mod cluster;
pub mod common;
mod containers;
pub mod db;
mod deploy;
pub mod fleet;
pub mod jobs;
pub mod link;
pub mod logs;
mod runners;
pub mod signing;
pub mod telemetry;
mod terminals;
pub mod updates;
mod users;
