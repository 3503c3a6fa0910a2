//! The route table: every feature's `routes()`, one line each, and what
//! holds for all of them (the JSON fallbacks, the body deadline, the edge
//! as a request extension for the rate layers of stranger routes).
//!
//! A new feature adds one `.merge(...)` line here; its paths live in its
//! own folder. Routers are merged, so two features claiming the same path
//! and method fail at start-up (axum panics on the overlap), not at random.

use axum::extract::FromRef;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::{Extension, Router};

use super::{web, AppState};
use crate::common::edge;
use crate::common::error::ApiError;
use crate::link::LinkCtx;

/// The whole HTTP application over `state`, with no socket (tests drive it
/// with `tower::ServiceExt::oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        // The link's context is cut once, here: cut per request (FromRef),
        // its table of family handlers was built anew on every runner
        // connect and kept by the connection as long as it lasted.
        .merge(crate::link::routes().with_state(LinkCtx::from_ref(&state)))
        .merge(crate::runners::routes())
        .merge(crate::telemetry::routes())
        .merge(crate::containers::routes())
        .merge(crate::logs::routes())
        .merge(crate::jobs::routes())
        .merge(crate::deploy::routes())
        .merge(crate::terminals::routes())
        .merge(crate::users::routes())
        .merge(crate::updates::routes())
        .merge(crate::alerts::routes())
        .merge(crate::fleet::api::routes())
        .merge(crate::audit::routes())
        .merge(web::routes())
        .route(
            "/api/v1/replica/metrics",
            axum::routing::get(super::forward::metrics),
        )
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                tether::protocol::api_error::BAD_REQUEST,
                "method not allowed on this endpoint",
            )
        })
        // Every action is recorded here, whatever route it took (`audit/`).
        .layer(from_fn_with_state(
            crate::audit::AuditCtx::from_ref(&state),
            crate::audit::record,
        ))
        // Outside the audit layer: a forwarded request is recorded once,
        // by the replica that answers it (`app/forward.rs`).
        .layer(from_fn_with_state(
            state.forward.clone(),
            super::forward::route,
        ))
        .layer(from_fn_with_state(state.edge.clone(), edge::body_deadline))
        // Outermost: the rate layers of enrollment and login read it.
        .layer(Extension(state.edge.clone()))
        .with_state(state)
}
