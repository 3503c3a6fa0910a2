//! The runner WebSocket: hello, liveness, the registry of live
//! connections, and dispatch of inbound messages by family to the features
//! that own them (`dispatch.rs`).

pub mod dispatch;
pub mod registry;
pub mod runner_ws;

use std::sync::Arc;

use crate::common::tuning::Tuning;
use crate::db::Db;
use crate::link::dispatch::Families;
use crate::link::registry::Registry;

/// What a runner's connection uses, built by `app/` from its state
/// (`FromRef`), so the link never names the app's state. `families` is the
/// table of the features' handlers; the rest is the link's own (the
/// credential check, the welcome's metrics time, timeouts).
#[derive(Clone)]
pub struct LinkCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub tuning: Tuning,
    pub families: Families,
}

/// The one route of the link: a runner's WebSocket.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    LinkCtx: axum::extract::FromRef<S>,
{
    axum::Router::new().route(
        tether::protocol::RUNNER_CONNECT_PATH,
        axum::routing::get(runner_ws::connect),
    )
}
