//! Integration tests of the server through its library API (one test
//! binary, one module per feature, shared helpers in `util`): the REST API
//! through `app(state)` without a socket, and the runner WebSocket over a
//! real loopback socket (plain HTTP, and once over the dev-CA TLS the
//! runners use).
//!
//! Each test gets its own in-memory databases (control plane and metrics)
//! and short timeouts.

mod alerts;
mod audit;
mod cluster;
mod containers;
mod edge;
mod fuzz_seeds;
mod layout;
mod link;
mod pg;
mod pg_server;
mod runners;
mod sso;
mod storage;
mod storage_bulk;
mod storage_fleet;
mod telemetry;
mod threats;
mod tokens;
mod updates;
mod users;
mod util;
