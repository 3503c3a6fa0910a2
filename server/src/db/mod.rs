//! Everything the server persists, behind one async trait per area.
//!
//! ```text
//! control.rs  ControlStore  tenants, API and enrollment tokens, runners and
//!                           their health, fingerprints and drift, Docker
//!                           state, container views and events
//! users.rs    UserStore     dashboard users and sessions
//! updates.rs  UpdateStore   update policies, runner groups, update reports
//! audit.rs    AuditStore    the terminal audit trail
//! metrics.rs  MetricStore   host metrics: raw samples, rollups, retention
//! logs.rs     LogStore      container log blocks, cursors, collection settings
//! jobs.rs     JobStore      scripts, sealed secrets, jobs, their output, apps
//!                           and deployments
//! alerts.rs   AlertStore    alert rules, channels (sealed), live states,
//!                           history, silences, the delivery log
//! fleet.rs    FleetStore    labels and proposals, fleet policy, job
//!                           deadlines, rollouts, schedules and their runs
//! trail.rs    TrailStore    the audit trail: append-only, hash-chained
//! recordings.rs RecordingStore terminal recordings (asciicast v2) and
//!                           each tenant's recording policy
//! releases.rs ReleaseStore  signed runner releases: files in the data dir
//!                           (SQLite), chunked rows (PostgreSQL); streamed
//! cluster.rs  ClusterStore  replicas and the links table (PostgreSQL only)
//! sqlite/     the embedded backend (the default): every trait over rusqlite
//! postgres/   PostgreSQL (issue 18, `--database postgres://…`): every
//!             trait here; metrics, logs and job output partitioned by time
//! copy.rs     rows as plain values, for `migrate` (SQLite → PostgreSQL)
//! Liveness    (this file) the cached database check behind `/healthz`
//! ```
//!
//! Each area file holds its trait and the model types its methods speak in;
//! no database type (rusqlite's or another driver's) appears outside `db/`,
//! and only a backend folder writes SQL. Features hold a [`Db`] (in
//! `AppState`) and call `state.db.jobs.job(..).await`.
//!
//! The traits are async and object-safe (`async-trait`), so the backend is
//! chosen at run time behind `Arc<dyn …>`: the embedded SQLite files for one
//! box, a shared PostgreSQL for several replicas (issue 18). A backend whose
//! driver blocks (SQLite) runs every call on tokio's blocking pool, by one
//! rule in one place (`sqlite/mod.rs`, `Blocking::run`), so no handler ever
//! holds a runtime thread on a disk write.
//!
//! Times are Unix milliseconds. Secrets are stored only as SHA-256 hex (tokens)
//! or sealed (`common/secrets.rs`).

use std::fmt;
use std::sync::Arc;

pub mod alerts;
pub mod audit;
pub mod cluster;
pub mod control;
pub mod copy;
pub mod fleet;
pub mod jobs;
pub mod logs;
pub mod metrics;
pub mod postgres;
pub mod recordings;
pub mod releases;
pub mod sqlite;
pub mod trail;
pub mod updates;
pub mod users;

pub use alerts::AlertStore;
pub use audit::AuditStore;
pub use control::ControlStore;
pub use fleet::FleetStore;
pub use jobs::JobStore;
pub use logs::LogStore;
pub use metrics::MetricStore;
pub use recordings::RecordingStore;
pub use releases::ReleaseStore;
pub use trail::TrailStore;
pub use updates::UpdateStore;
pub use users::UserStore;

// The control plane's model types, where features name them most.
pub use audit::TerminalAuditRow;
pub use control::{
    valid_runner_name, ApiTokenAuth, ApiTokenInfo, ApiTokenRow, ConnectOutcome, ConnectedInfo,
    ContainerEventRow, ContainerView, DockerStateRow, DriftRow, EnrollError, EnrollRefusal,
    EnrollmentTokenRow, FingerprintRow, FingerprintWrite, Health, HealthRecord, NewRunner,
    RunnerIdentity, RunnerRow, TenantRow, TokenRefusal, MAX_RUNNER_NAME,
};
pub use updates::{UpdatePolicy, UpdateReportRow};
pub use users::{OidcProviderRow, Role, SessionRow, UserRow};

/// Every store of one server, cheap to clone. The control-plane traits
/// (control, users, updates, audit) share one database in the SQLite
/// backend; they are apart so each feature names only what it uses.
#[derive(Clone)]
pub struct Db {
    pub control: Arc<dyn ControlStore>,
    pub users: Arc<dyn UserStore>,
    pub updates: Arc<dyn UpdateStore>,
    pub audit: Arc<dyn AuditStore>,
    pub metrics: Arc<dyn MetricStore>,
    pub logs: Arc<dyn LogStore>,
    pub jobs: Arc<dyn JobStore>,
    pub alerts: Arc<dyn AlertStore>,
    pub fleet: Arc<dyn FleetStore>,
    pub trail: Arc<dyn TrailStore>,
    pub recordings: Arc<dyn RecordingStore>,
    pub releases: Arc<dyn ReleaseStore>,
    /// Whether the database answers, for `/healthz`.
    pub liveness: Arc<Liveness>,
}

/// How long one `/healthz` answer about the database is reused.
const LIVENESS_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long one database check may take before it counts as a failure.
const LIVENESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The database check behind the unauthenticated `/healthz`: at most one
/// [`ControlStore::ping`] in flight and at most one a second, whatever the
/// request rate; callers arriving meanwhile get the last answer.
pub struct Liveness {
    control: Arc<dyn ControlStore>,
    /// The last answer (`Err`: why the database is down) and when.
    last: std::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
    /// Held while a check runs: the single flight.
    probing: tokio::sync::Mutex<()>,
}

impl Liveness {
    pub fn new(control: Arc<dyn ControlStore>) -> Liveness {
        Liveness {
            control,
            last: std::sync::Mutex::new(None),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, fresh_only: bool) -> Option<Result<(), String>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, r)) if !fresh_only || at.elapsed() < LIVENESS_TTL => Some(r.clone()),
            _ => None,
        }
    }

    /// `Ok` when the database answered within the last second or so;
    /// `Err(reason)` otherwise (the reason names no credential: it is the
    /// driver's message, which never quotes the URL).
    pub async fn check(&self) -> Result<(), String> {
        if let Some(r) = self.cached(true) {
            return r;
        }
        let Ok(_probe) = self.probing.try_lock() else {
            // Another request is checking: the last answer, or (the very
            // first time) healthy until that check says otherwise.
            return self.cached(false).unwrap_or(Ok(()));
        };
        let r = match tokio::time::timeout(LIVENESS_TIMEOUT, self.control.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("database unreachable: {e}")),
            Err(_) => Err(format!(
                "database unreachable: no answer within {} s",
                LIVENESS_TIMEOUT.as_secs()
            )),
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), r.clone()));
        r
    }
}

/// Why a storage call failed.
#[derive(Debug)]
pub enum StorageError {
    /// The database itself failed (I/O, a constraint, a lost connection);
    /// the backend's own error, boxed so no driver type leaks out of `db/`.
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// A unique name is already taken.
    Conflict(String),
    /// A stored value this build cannot read (e.g. an unknown health string).
    Corrupt(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Backend(e) => write!(f, "{e}"),
            StorageError::Conflict(m) => f.write_str(m),
            StorageError::Corrupt(m) => write!(f, "corrupt database: {m}"),
        }
    }
}

impl std::error::Error for StorageError {}
