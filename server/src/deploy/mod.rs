//! Apps and their deployments: the REST API and the store (in `jobs.db`,
//! beside the jobs they become).

pub mod api;
/// Apps, deploys, rollbacks and the deployment history.
pub fn routes() -> axum::Router<crate::app::AppState> {
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
}
