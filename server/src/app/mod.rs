//! The HTTP application: shared state and the route table.
//!
//! [`app`] builds the whole router from an [`AppState`], with no socket, so
//! tests drive it with `tower::ServiceExt::oneshot`. `app/serve.rs` puts it behind
//! TLS; nothing here knows about listeners or certificates.

pub mod config;
pub mod edge;
pub mod serve;
pub mod tls;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, patch, post, put};
use axum::Router;

use self::edge::{Edge, EdgeConfig};
use crate::audit::store::{SqliteAudit, TrailStore};
use crate::audit::{self, api as audit_api};
use crate::common::error::ApiError;
use crate::common::quotas::Quotas;
use crate::common::secrets::SecretBox;
use crate::common::stream_auth::{self, Tickets};
use crate::containers::ContainerHub;
use crate::db::Db;
use crate::deploy::api as deploy_api;
use crate::jobs::JobHub;
use crate::link::registry::Registry;
use crate::runners::health::HealthLog;
use crate::telemetry::MetricsWriter;
use crate::terminals::api as terminals_api;
use crate::terminals::Terminals;
use crate::updates::{self, ReleaseConfig};
use crate::{
    common::auth, containers::api as containers_api, jobs::api as jobs_api, link::runner_ws,
    logs::api as logs_api, runners::api, runners::events, telemetry::api as telemetry_api, users,
};

/// Timeouts of the runner connection, adjustable so tests need not wait 10 s.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// From the upgrade to the runner's `hello` (protocol.md: 10 s).
    pub hello_timeout: Duration,
    /// `POST /runners/{id}/ping` waits this long for the `pong`.
    pub request_timeout: Duration,
    /// Sending one frame to a runner; a peer that stops reading is dropped.
    pub send_timeout: Duration,
    /// After sending a close frame, how long to wait for the peer's.
    pub close_wait: Duration,
    /// The metrics writer stores what was queued in one transaction this often.
    pub metrics_flush: Duration,
    /// A runner gets a `metrics_ack` at most this often.
    pub metrics_ack_every: Duration,
    /// A Docker call through a runner waits this long for the answer (plus
    /// the stop timeout for stop and restart).
    pub docker_timeout: Duration,
    /// A dashboard login lasts this long (`users/mod.rs`).
    pub session_ttl: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            hello_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            close_wait: Duration::from_secs(2),
            metrics_flush: Duration::from_secs(1),
            metrics_ack_every: Duration::from_secs(5),
            docker_timeout: Duration::from_secs(30),
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

/// Everything a request handler may touch. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Every store (`db/`): `state.db.jobs.job(..).await`.
    pub db: Db,
    pub health: Arc<HealthLog>,
    pub registry: Arc<Registry>,
    pub metrics_writer: MetricsWriter,
    /// Docker state and container events of every runner.
    pub containers: Arc<ContainerHub>,
    pub secrets: Arc<SecretBox>,
    /// Live job output and status, for watchers.
    pub job_hub: Arc<JobHub>,
    /// SHA-256 hex of the admin token.
    pub admin_token_hash: Arc<str>,
    pub tuning: Tuning,
    /// Where releases live, and what install.sh says (`updates/mod.rs`).
    pub releases: Arc<ReleaseConfig>,
    /// Interactive terminal sessions (they outlive runner connections).
    pub terminals: Arc<Terminals>,
    /// Single-use WebSocket tickets (`common/stream_auth.rs`).
    pub tickets: Arc<Tickets>,
    /// Per-tenant limits and job retention (`common/quotas.rs`).
    pub quotas: Quotas,
    /// Connection caps and per-address rates (`app/edge.rs`).
    pub edge: Arc<Edge>,
    /// Password hashing slots and wrong-password counts (`users/mod.rs`).
    pub passwords: Arc<users::Passwords>,
    /// The audit trail (`audit/`): in memory until `with_audit`.
    pub audit: Arc<dyn TrailStore>,
}

impl AppState {
    /// Also starts the metrics writer task (so: inside a tokio runtime),
    /// which ends with the last clone of this state.
    pub fn new(db: Db, secrets: Arc<SecretBox>, admin_token: &str, tuning: Tuning) -> AppState {
        let health = Arc::new(HealthLog::new(db.control.clone()));
        let registry = Arc::new(Registry::new(health.clone()));
        let metrics_writer = MetricsWriter::start(db.metrics.clone(), tuning.metrics_flush);
        let containers = Arc::new(ContainerHub::new(db.control.clone()));
        AppState {
            containers,
            secrets,
            job_hub: Arc::new(JobHub::default()),
            db,
            health,
            registry,
            metrics_writer,
            admin_token_hash: auth::hash_secret(admin_token).into(),
            tuning,
            releases: Arc::new(ReleaseConfig::default()),
            terminals: Arc::new(Terminals::new()),
            tickets: Arc::new(Tickets::default()),
            quotas: Quotas::default(),
            edge: Arc::default(),
            passwords: Arc::default(),
            audit: Arc::new(
                SqliteAudit::open_in_memory().expect("an in-memory SQLite database opens"),
            ),
        }
    }

    /// The audit trail's store (`serve` opens `<data-dir>/audit.db`).
    pub fn with_audit(mut self, audit: Arc<dyn TrailStore>) -> AppState {
        self.audit = audit;
        self
    }

    pub fn with_quotas(mut self, quotas: Quotas) -> AppState {
        self.quotas = quotas;
        self
    }

    /// The limits of the unauthenticated edge (`serve`'s flags).
    pub fn with_edge(mut self, config: EdgeConfig) -> AppState {
        self.passwords = Arc::new(users::Passwords::new(config.hash_queue, config.hash_wait));
        self.edge = Arc::new(Edge::new(config));
        self
    }

    pub fn with_releases(mut self, releases: ReleaseConfig) -> AppState {
        self.releases = Arc::new(releases);
        self
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route(
            tether::protocol::ENROLL_PATH,
            post(api::enroll)
                .layer(small_body())
                .layer(from_fn_with_state(edge::SMALL_BODY, edge::announced_length))
                .layer(from_fn_with_state(state.clone(), edge::enroll_rate)),
        )
        .route(
            tether::protocol::RUNNER_CONNECT_PATH,
            get(runner_ws::connect),
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
        .route("/api/v1/runners/{id}", get(api::show_runner))
        .route("/api/v1/runners/{id}/health", get(api::runner_health))
        .route("/api/v1/runners/{id}/revoke", post(api::revoke_runner))
        .route("/api/v1/runners/{id}/name", put(api::rename_runner))
        .route("/api/v1/runners/{id}/ping", post(api::ping_runner))
        .route(
            "/api/v1/runners/{id}/metrics",
            get(telemetry_api::runner_metrics),
        )
        .route(
            "/api/v1/runners/{id}/metrics/latest",
            get(telemetry_api::latest_metrics),
        )
        .route(
            "/api/v1/runners/{id}/fingerprint",
            get(telemetry_api::fingerprint),
        )
        .route("/api/v1/runners/{id}/drift", get(telemetry_api::drift))
        .route(
            "/api/v1/runners/{id}/docker",
            get(containers_api::docker_state),
        )
        .route("/api/v1/runners/{id}/containers", get(containers_api::list))
        .route(
            "/api/v1/runners/{id}/containers/events",
            get(containers_api::history),
        )
        .route(
            "/api/v1/runners/{id}/containers/prune",
            post(containers_api::prune_containers),
        )
        .route(
            "/api/v1/runners/{id}/images/prune",
            post(containers_api::prune_images),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}",
            get(containers_api::inspect).delete(containers_api::remove),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/logs",
            get(logs_api::logs),
        )
        .route("/api/v1/runners/{id}/logs", get(logs_api::settings))
        .route("/api/v1/scripts", get(jobs_api::list_scripts))
        .route(
            "/api/v1/scripts/{name}",
            get(jobs_api::get_script)
                .put(jobs_api::put_script)
                .delete(jobs_api::delete_script),
        )
        .route("/api/v1/secrets", get(jobs_api::list_secrets))
        .route(
            "/api/v1/secrets/{name}",
            put(jobs_api::put_secret).delete(jobs_api::delete_secret),
        )
        .route("/api/v1/jobs", get(jobs_api::list_jobs).post(jobs_api::run))
        .route("/api/v1/jobs/{id}", get(jobs_api::get_job))
        .route("/api/v1/jobs/{id}/cancel", post(jobs_api::cancel_job))
        .route("/api/v1/jobs/{id}/output", get(jobs_api::output))
        .route("/api/v1/apps", get(deploy_api::list_apps))
        .route(
            "/api/v1/apps/{name}",
            get(deploy_api::get_app)
                .put(deploy_api::put_app)
                .delete(deploy_api::delete_app),
        )
        .route("/api/v1/apps/{name}/deploy", post(deploy_api::deploy))
        .route("/api/v1/apps/{name}/rollback", post(deploy_api::rollback))
        .route(
            "/api/v1/apps/{name}/deployments",
            get(deploy_api::deployments),
        )
        .route(
            "/api/v1/runners/{id}/terminals",
            post(terminals_api::create),
        )
        .route("/api/v1/runners/{id}/terminal", get(terminals_api::open_ws))
        .route("/api/v1/terminals", get(terminals_api::audit))
        .route("/api/v1/terminals/{tid}", delete(terminals_api::close))
        .route(
            "/api/v1/terminals/{tid}/attach",
            get(terminals_api::attach_ws),
        )
        .route(
            "/api/v1/runners/{id}/logs/collect",
            put(logs_api::set_collect),
        )
        .route(
            "/api/v1/runners/{id}/logs/retention",
            put(logs_api::set_retention).delete(logs_api::clear_retention),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/start",
            post(containers_api::start),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/stop",
            post(containers_api::stop),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/restart",
            post(containers_api::restart),
        )
        .route(
            "/api/v1/runners/{id}/containers/{cid}/kill",
            post(containers_api::kill),
        )
        .route("/api/v1/metrics/prometheus", get(telemetry_api::prometheus))
        .route("/api/v1/releases", get(updates::list_releases))
        .route(
            "/api/v1/releases/{version}/{file}",
            // Streamed to a file after the admin check (`updates/mod.rs`).
            post(updates::upload),
        )
        .route("/releases/{version}/{file}", get(updates::download))
        .route("/install.sh", get(updates::install_sh))
        .route(
            "/api/v1/update-policy",
            put(updates::set_policy).get(updates::get_policy),
        )
        .route("/api/v1/runners/{id}/group", put(updates::set_group))
        .route("/api/v1/runners/{id}/updates", get(updates::runner_updates))
        .route("/api/v1/events", get(events::follow))
        .route("/api/v1/audit", get(audit_api::list))
        .route("/api/v1/audit/export", get(audit_api::export))
        .route("/api/v1/audit/verify", get(audit_api::verify))
        // The dashboard (`app/web.rs`) and its logins and users (`users/mod.rs`).
        .route("/", get(web::index))
        .route("/ui/{*path}", get(web::file))
        .route(
            "/api/v1/session",
            post(users::login)
                .layer(small_body())
                .layer(from_fn_with_state(edge::SMALL_BODY, edge::announced_length))
                .layer(from_fn_with_state(state.clone(), edge::login_rate))
                .get(users::current)
                .delete(users::logout),
        )
        .route("/api/v1/users", get(users::list).post(users::create))
        .route(
            "/api/v1/users/{name}",
            patch(users::update).delete(users::delete),
        )
        .route(
            "/api/v1/tenants/{tenant}/users",
            post(users::create_for_tenant),
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
        .layer(from_fn_with_state(state.clone(), audit::record))
        .layer(from_fn_with_state(state.clone(), edge::body_deadline))
        .with_state(state)
}

fn small_body() -> DefaultBodyLimit {
    DefaultBodyLimit::max(edge::SMALL_BODY)
}
