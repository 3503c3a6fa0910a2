//! The runner WebSocket: hello, liveness, the registry of live
//! connections, and dispatch of inbound messages to the features that own
//! them (`runner_ws/{jobs,logs,terminals}.rs`).

pub mod registry;
pub mod runner_ws;

use std::sync::Arc;

use crate::common::quotas::Quotas;
use crate::common::secrets::SecretBox;
use crate::common::tuning::Tuning;
use crate::db::Db;
use crate::link::registry::Registry;

/// What a runner's connection uses, built by `app/` from its state
/// (`FromRef`), so the link never names the app's state. It still holds
/// the features whose messages the connection handles itself
/// (`runner_ws/*.rs`), until they are dispatched by family.
#[derive(Clone)]
pub struct LinkCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub tuning: Tuning,
    pub quotas: Quotas,
    pub secrets: Arc<SecretBox>,
    pub job_hub: Arc<crate::jobs::JobHub>,
    pub metrics_writer: crate::telemetry::MetricsWriter,
    pub containers: Arc<crate::containers::ContainerHub>,
    pub terminals: Arc<crate::terminals::Terminals>,
    pub alerts: Arc<crate::alerts::Alerts>,
    pub fleet: crate::fleet::labels::LabelsCtx,
    pub updates: crate::updates::UpdatesCtx,
    pub deploy: crate::deploy::DeployCtx,
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
