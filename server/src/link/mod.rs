//! The runner WebSocket: hello, liveness, the registry of live
//! connections, and dispatch of inbound messages by family to the features
//! that own them (`dispatch.rs`; jobs and logs are still handled
//! by the connection itself, `runner_ws/{jobs,logs}.rs`).

pub mod dispatch;
pub mod registry;
pub mod runner_ws;

use std::sync::Arc;

use crate::common::observe::Observer;
use crate::common::quotas::Quotas;
use crate::common::secrets::SecretBox;
use crate::common::tuning::Tuning;
use crate::db::Db;
use crate::link::dispatch::Families;
use crate::link::registry::Registry;

/// What a runner's connection uses, built by `app/` from its state
/// (`FromRef`), so the link never names the app's state. `families` is the
/// table of the features' handlers; the rest still serves the families the
/// connection handles itself (`runner_ws/*.rs`).
#[derive(Clone)]
pub struct LinkCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub tuning: Tuning,
    pub quotas: Quotas,
    pub secrets: Arc<SecretBox>,
    pub job_hub: Arc<crate::jobs::JobHub>,
    pub observer: Arc<dyn Observer>,
    pub families: Families,
    pub audit: crate::audit::AuditCtx,
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
