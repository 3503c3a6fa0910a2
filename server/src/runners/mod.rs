//! Tenants, tokens, enrollment and runners over REST; runner health
//! changes and the SSE stream that announces them.

pub mod api;
pub mod events;
pub mod health;

use std::sync::Arc;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::common::edge;
use crate::common::stream_auth;
use crate::common::tuning::Tuning;
use crate::db::Db;
use crate::link::registry::Registry;

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct RunnersCtx {
    pub db: Db,
    pub health: Arc<health::HealthLog>,
    pub registry: Arc<Registry>,
    /// The event stream's container events (the seam to `containers/`).
    pub containers: Arc<crate::containers::ContainerHub>,
    /// Runner labels (the seam to `fleet/`).
    pub fleet: crate::fleet::labels::LabelsCtx,
    pub tuning: Tuning,
    /// The event stream's other tenant events (jobs made or cancelled).
    pub bus: Arc<crate::common::bus::Bus>,
}

/// Tenants, tokens (enrollment, API, WebSocket tickets), enrollment, runners
/// and the event stream. Enrollment is the one route open to strangers: a
/// small body, refused early when announced larger, and a rate per address.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    RunnersCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/healthz", get(api::healthz))
        .route(
            tether::protocol::ENROLL_PATH,
            post(api::enroll)
                .layer(edge::small_body())
                .layer(from_fn_with_state(edge::SMALL_BODY, edge::announced_length))
                .layer(from_fn(edge::enroll_rate)),
        )
        .route(
            "/api/v1/tenants",
            post(api::create_tenant).get(api::list_tenants),
        )
        .route(
            "/api/v1/api-tokens",
            post(api::create_api_token).get(api::list_api_tokens),
        )
        .route("/api/v1/api-tokens/{id}", delete(api::revoke_api_token))
        .route("/api/v1/ws-tickets", post(stream_auth::mint_ticket))
        .route(
            "/api/v1/tokens",
            post(api::create_enrollment_token).get(api::list_enrollment_tokens),
        )
        .route("/api/v1/tokens/{id}", delete(api::revoke_enrollment_token))
        .route("/api/v1/runners", get(api::list_runners))
        .route("/api/v1/runners/counts", get(api::runner_counts))
        .route("/api/v1/runners/{id}", get(api::show_runner))
        .route("/api/v1/runners/{id}/health", get(api::runner_health))
        .route("/api/v1/runners/{id}/revoke", post(api::revoke_runner))
        .route("/api/v1/runners/{id}/name", put(api::rename_runner))
        .route("/api/v1/runners/{id}/ping", post(api::ping_runner))
        .route("/api/v1/events", get(events::follow))
}
