//! Apps and their deployments: the REST API and the store (in `jobs.db`,
//! beside the jobs they become).

pub mod api;
pub mod link;

use std::sync::Arc;

use crate::db::Db;
use crate::link::registry::Registry;

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct DeployCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    /// A deploy is jobs (the seam to `jobs/`).
    pub jobs: crate::jobs::JobsCtx,
}

/// Apps, deploys, rollbacks and the deployment history.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    DeployCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/v1/apps", get(api::list_apps))
        .route(
            "/api/v1/apps/{name}",
            get(api::get_app).put(api::put_app).delete(api::delete_app),
        )
        .route("/api/v1/apps/{name}/deploy", post(api::deploy))
        .route("/api/v1/apps/{name}/rollback", post(api::rollback))
        .route("/api/v1/apps/{name}/deployments", get(api::deployments))
        .route("/api/v1/apps/{name}/signable", get(api::signable))
}
