//! The HTTP application: shared state; the route table is `app/routes.rs`.
//!
//! [`app`] builds the whole router from an [`AppState`], with no socket, so
//! tests drive it with `tower::ServiceExt::oneshot`. `app/serve.rs` puts it behind
//! TLS; nothing here knows about listeners or certificates.

pub mod backup;
pub mod cluster;
pub mod config;
mod ctx;
pub mod forward;
pub mod migrate;
mod routes;
pub mod serve;
pub mod tls;
pub mod web;

pub use routes::app;

use std::sync::Arc;

use crate::alerts::notify::Tuning as AlertTuning;
use crate::alerts::Alerts;
pub use crate::common::tuning::Tuning;
use crate::db::TrailStore;

use crate::common::edge::{Edge, EdgeConfig};
use crate::common::quotas::Quotas;
use crate::common::secrets::SecretBox;
use crate::common::stream_auth::Tickets;
use crate::containers::ContainerHub;
use crate::db::Db;
use crate::jobs::JobHub;
use crate::link::registry::Registry;
use crate::runners::health::HealthLog;
use crate::telemetry::MetricsWriter;
use crate::terminals::Terminals;
use crate::updates::ReleaseConfig;
use crate::{common::auth, users};

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
    /// Connection caps and per-address rates (`common/edge.rs`).
    pub edge: Arc<Edge>,
    /// Password hashing slots and wrong-password counts (`users/mod.rs`).
    pub passwords: Arc<users::Passwords>,
    /// Single sign-on: the client toward providers, their metadata (`users/sso.rs`).
    pub sso: Arc<users::sso::Sso>,
    /// Alert rules, their engine and the notification channels (`alerts/`).
    pub alerts: Arc<Alerts>,
    /// Labels, job deadlines, rollouts, schedules (`fleet/mod.rs`).
    pub fleet: Arc<crate::fleet::Fleet>,
    /// The audit trail (`audit/`): `db.trail`, named here for the layer.
    pub audit: Arc<dyn TrailStore>,
    /// On a replica of several: requests for runners another replica
    /// holds go there (`app/forward.rs`).
    pub forward: Option<Arc<forward::ForwardCtx>>,
    /// Tenant events for the event stream: jobs made or cancelled
    /// (`common/bus.rs`).
    pub bus: Arc<crate::common::bus::Bus>,
}

impl AppState {
    /// Also starts the metrics writer task (so: inside a tokio runtime),
    /// which ends with the last clone of this state.
    pub fn new(db: Db, secrets: Arc<SecretBox>, admin_token: &str, tuning: Tuning) -> AppState {
        let health = Arc::new(HealthLog::new(db.control.clone()));
        let registry = Arc::new(Registry::new(health.clone()));
        let metrics_writer = MetricsWriter::start(db.metrics.clone(), tuning.metrics_flush);
        let containers = Arc::new(ContainerHub::new(db.control.clone()));
        let alerts = Alerts::start(
            db.clone(),
            secrets.clone(),
            &health,
            &containers,
            AlertTuning::default(),
        );
        AppState {
            alerts,
            containers,
            secrets,
            job_hub: Arc::new(JobHub::default()),
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
            sso: Arc::default(),
            fleet: Arc::new(crate::fleet::Fleet::new(db.fleet.clone())),
            audit: db.trail.clone(),
            forward: None,
            bus: Arc::default(),
            db,
        }
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

    /// Alert delivery with these retries, timeouts and address rule (the
    /// engine `new` started keeps running; `serve` calls it once at start).
    pub fn with_alert_tuning(self, tuning: AlertTuning) -> AppState {
        self.alerts.notifier.set_tuning(tuning);
        self
    }

    pub fn with_releases(mut self, releases: ReleaseConfig) -> AppState {
        self.releases = Arc::new(releases);
        self
    }

    /// Releases kept in `store` (tests: the in-memory databases keep none;
    /// `serve` takes the backend's own, `db.releases`).
    pub fn with_release_store(mut self, store: Arc<dyn crate::db::ReleaseStore>) -> AppState {
        self.db.releases = store;
        self
    }
}
