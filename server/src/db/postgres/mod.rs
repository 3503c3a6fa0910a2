//! The PostgreSQL backend (issue 18), for several replicas sharing one
//! database: tokio-postgres behind a deadpool pool, schema by numbered
//! migrations (`schema.rs`).
//!
//! ```text
//! mod.rs      the pool, connecting, the migration runner, error mapping
//! schema.rs   the numbered migrations (SQL)
//! control.rs  ControlStore over PgControl
//! users.rs    UserStore    over PgControl
//! audit.rs    AuditStore   over PgControl
//! updates.rs  UpdateStore  over PgControl
//! metrics.rs  MetricStore  over PgMetrics: samples and rollups, by time partition
//! logs.rs     LogStore     over PgLogs: container log blocks, by time partition
//! jobs.rs     JobStore     over PgJobs: scripts, secrets, jobs, output by day partition, apps
//! alerts.rs   AlertStore   over PgAlerts: rules, channels, states, history, silences, deliveries
//! fleet.rs    FleetStore   over PgFleet: labels, fleet policy, deadlines, rollouts, schedules
//! trail.rs    TrailStore   over PgTrail: the audit trail, one chain for every replica
//! recordings.rs RecordingStore over PgRecordings: terminal recordings and policies
//! releases.rs ReleaseStore over PgReleases: release files in 1 MiB chunks
//! cluster.rs  ClusterStore over PgCluster: replicas, the links table, fence notices (NOTIFY)
//! tls.rs      the URL's sslmode and sslrootcert: TLS as libpq does it
//! partitions.rs  making partitions ahead and dropping them for retention
//! import.rs   filling an empty database from SQLite rows (`migrate`)
//! ```
//!
//! Every store behind a `db/` trait is here; [`Postgres::open`] makes the
//! server's [`Db`](super::Db) of them (`tether-server run --database
//! postgres://…`), the fleet and the audit trail included: with PostgreSQL
//! the data dir keeps only keys and certificates (releases are rows too:
//! `releases.rs`).
//!
//! Why tokio-postgres + deadpool: the driver is async (no blocking pool
//! hop, unlike SQLite's `Blocking::run`), is the one the Rust PostgreSQL
//! project keeps, and speaks COPY and LISTEN/NOTIFY, which the cluster
//! parts of issue 18 need; deadpool is the small pool built for it. sqlx
//! would bring its own macro layer and a second SQL dialect check for no
//! gain here.
//!
//! Migrations: `schema_migrations(version)` records the ones applied; each
//! runs in its own transaction under a transaction-scoped advisory lock,
//! so replicas starting together apply each exactly once.

use std::fmt;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StorageError;

mod alerts;
mod audit;
mod cluster;
mod control;
mod fleet;
pub mod import;
mod jobs;
mod logs;
mod metrics;
mod partitions;
mod recordings;
mod releases;
mod schema;
mod tls;
mod trail;
mod updates;
mod users;

/// Connections per replica: enough for the API beside the writers; a
/// PostgreSQL default of 100 connections then serves several replicas.
const POOL_SIZE: usize = 16;

/// The advisory lock key the migration runner holds ("tether" in ASCII).
const MIGRATION_LOCK: i64 = 0x7465_7468_6572;

/// The driver's error, shown as `postgres: …`.
#[derive(Debug)]
struct PgError(String);

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres: {}", self.0)
    }
}

impl std::error::Error for PgError {}

fn backend(e: impl fmt::Display) -> StorageError {
    StorageError::Backend(Box::new(PgError(e.to_string())))
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's message (with its detail) says more than the
        // driver's "db error".
        match e.as_db_error() {
            Some(db) => backend(format_args!("{} ({})", db.message(), db.code().code())),
            None => backend(chain(&e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        backend(chain(&e))
    }
}

/// An error with its causes ("error connecting to server: Connection
/// refused"): the driver's own message leaves the cause out.
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        next = cause.source();
    }
    msg
}

/// Whether a statement failed on a unique constraint.
fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// The control-plane stores (control, users, audit, updates) over one pool.
pub struct PgControl {
    pool: Pool,
    /// Bumped after every write that can take authority away; the same
    /// contract as `ControlStore::watch_credentials`. Other replicas hear
    /// it by NOTIFY on their notice connection (`cluster.rs`).
    credentials: tokio::sync::watch::Sender<u64>,
}

impl PgControl {
    pub(super) fn credentials_changed(&self) {
        self.credentials.send_modify(|n| *n = n.wrapping_add(1));
        // After the caller's commit; a notice that cannot be sent leaves
        // the others to their periodic re-check.
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = cluster::notify_credentials(&pool).await {
                tracing::warn!("telling the other replicas a credential changed: {e}");
            }
        });
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        Ok(self.pool.get().await?)
    }
}

/// How long connecting (and waiting for a pooled connection) may take
/// before a call fails: an unreachable database is an error, not a hang.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `url` names a PostgreSQL database (`postgres://`, `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` with its password (between `user:` and `@`) replaced by `***`,
/// for logs.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `msg` with the password of `url`, if any, replaced by `***`.
fn scrub(url: &str, msg: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => msg.replace(p, "***"),
        None => msg.to_owned(),
    }
}

/// A connected, migrated PostgreSQL database.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    control: Arc<PgControl>,
    /// For connections outside the pool (the cluster's notice listener).
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Postgres {
    /// Connect to `url` (`postgres://user@host:port/db`) and bring the
    /// schema up to date.
    pub async fn connect(url: &str) -> Result<Postgres, StorageError> {
        let tls::Target {
            mut config,
            tls,
            mode,
            checked,
        } = tls::parse(url)
            .map_err(|e| backend(format_args!("database URL: {}", scrub(url, &e))))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if mode != tls::SslMode::Disable && !checked {
            tracing::info!(
                ?mode,
                "the database's certificate is not verified: use sslmode=verify-full (and sslrootcert) for a database across a network"
            );
        }
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(backend)?;
        // The driver's messages do not quote the URL; scrubbing anyway keeps
        // a password out of the start-up error whatever a later one says.
        migrate(&pool)
            .await
            .map_err(|e| StorageError::Backend(scrub(url, &e.to_string()).into()))?;
        Ok(Postgres {
            control: Arc::new(PgControl {
                pool: pool.clone(),
                credentials: tokio::sync::watch::Sender::new(0),
            }),
            pool,
            config,
            tls,
        })
    }

    /// The control-plane store.
    pub fn control(&self) -> Arc<dyn super::ControlStore> {
        self.control.clone()
    }

    /// The user store.
    pub fn users(&self) -> Arc<dyn super::UserStore> {
        self.control.clone()
    }

    /// The terminal audit store.
    pub fn audit(&self) -> Arc<dyn super::AuditStore> {
        self.control.clone()
    }

    /// The update store.
    pub fn updates(&self) -> Arc<dyn super::UpdateStore> {
        self.control.clone()
    }

    /// The metric store, keeping samples as long as `retention` says.
    pub fn metrics(&self, retention: crate::db::metrics::Retention) -> Arc<dyn super::MetricStore> {
        Arc::new(metrics::PgMetrics::new(self.pool.clone(), retention))
    }

    /// The log store, with the server's default retention and collection
    /// policy for runners and containers without their own.
    pub fn logs(
        &self,
        defaults: crate::db::logs::LogRetention,
        policy: crate::db::logs::CollectPolicy,
    ) -> Arc<dyn super::LogStore> {
        Arc::new(logs::PgLogs::new(self.pool.clone(), defaults, policy))
    }

    /// The job store (scripts, secrets, jobs and output, apps).
    pub fn jobs(&self) -> Arc<dyn super::JobStore> {
        Arc::new(jobs::PgJobs::new(self.pool.clone()))
    }

    /// The alert store.
    pub fn alerts(&self) -> Arc<dyn super::AlertStore> {
        Arc::new(alerts::PgAlerts::new(self.pool.clone()))
    }

    /// The fleet store (labels, policy, deadlines, rollouts, schedules).
    pub fn fleet(&self) -> Arc<dyn super::FleetStore> {
        Arc::new(fleet::PgFleet::new(self.pool.clone()))
    }

    /// The audit trail.
    pub fn trail(&self) -> Arc<dyn super::TrailStore> {
        Arc::new(trail::PgTrail::new(self.pool.clone()))
    }

    /// Terminal recordings and each tenant's recording policy.
    pub fn recordings(&self) -> Arc<dyn super::RecordingStore> {
        Arc::new(recordings::PgRecordings::new(self.pool.clone()))
    }

    /// Releases, for every replica (in the database, not the data dir).
    pub fn releases(&self) -> Arc<dyn super::ReleaseStore> {
        Arc::new(releases::PgReleases::new(self.pool.clone()))
    }

    /// What replicas sharing this database keep about each other.
    pub fn cluster(&self) -> Arc<dyn super::cluster::ClusterStore> {
        Arc::new(cluster::PgCluster::new(
            self.pool.clone(),
            cluster::NoticeConn {
                config: self.config.clone(),
                tls: self.tls.clone(),
                credentials: self.control.credentials.clone(),
            },
        ))
    }

    /// Connect, migrate, and make every store of the server's [`Db`](super::Db),
    /// with the same options the SQLite backend is opened with.
    pub async fn open(
        url: &str,
        options: &super::sqlite::Options,
    ) -> Result<super::Db, StorageError> {
        Ok(Postgres::connect(url).await?.db(options))
    }

    /// Every store of the server's [`Db`](super::Db) over this database.
    pub fn db(&self, options: &super::sqlite::Options) -> super::Db {
        let pg = self;
        super::Db {
            liveness: Arc::new(super::Liveness::new(pg.control())),
            control: pg.control(),
            users: pg.users(),
            updates: pg.updates(),
            audit: pg.audit(),
            metrics: pg.metrics(options.metrics_retention),
            logs: pg.logs(options.log_retention, options.log_collect.clone()),
            jobs: pg.jobs(),
            alerts: pg.alerts(),
            fleet: pg.fleet(),
            trail: pg.trail(),
            recordings: pg.recordings(),
            releases: pg.releases(),
        }
    }

    /// The import side of `tether-server migrate` (one connection).
    pub async fn importer(&self) -> Result<import::Importer, StorageError> {
        import::Importer::new(self.pool.clone()).await
    }

    /// The numbered migrations applied, in order (tests, operators).
    pub async fn applied_migrations(&self) -> Result<Vec<i32>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// Apply every migration not yet recorded, each in its own transaction,
/// under an advisory lock so concurrent replicas apply each once.
async fn migrate(pool: &Pool) -> Result<(), StorageError> {
    let mut c = pool.get().await?;
    // The history table is made under the same lock: `IF NOT EXISTS` alone
    // races between replicas starting together (the loser fails on the
    // table's row type, 42710, not on a unique key).
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    tx.commit().await?;
    for (i, sql) in schema::MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(i + 1).map_err(backend)?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}
