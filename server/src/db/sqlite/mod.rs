//! The embedded backend: every storage trait over SQLite files in the data
//! directory (rusqlite, bundled SQLite, WAL).
//!
//! ```text
//! tether.db   control.rs (+ containers.rs, tokens.rs, users.rs, updates.rs,
//!             terminals.rs): ControlStore, UserStore, UpdateStore, AuditStore
//! metrics.db  metrics.rs: MetricStore
//! logs.db     logs.rs: LogStore
//! jobs.db     jobs.rs (+ deploy.rs): JobStore
//! alerts.db   alerts.rs: AlertStore
//! fleet.db    fleet.rs: FleetStore
//! audit.db    trail.rs: TrailStore (the audit trail)
//! recordings.db  recordings.rs: RecordingStore (terminal recordings)
//! releases/   releases.rs: ReleaseStore, plain files (not a database)
//! backup.rs   online copies of any of these files (`tether-server backup`)
//! ```
//!
//! Each file's store is a plain synchronous struct (a mutex-guarded
//! connection, or a writer and a reader). The async traits are implemented
//! on [`Blocking`], which owns it: the one rule, in this one place, is that
//! every call goes through [`Blocking::run`] onto tokio's blocking pool, at
//! most two calls of a store at a time (more would only wait on its mutex,
//! each on a thread of its own). A SQLite call can wait on a lock or an
//! fsync (`busy_timeout` is 5 s); waiting there never holds a runtime thread. The synchronous structs are
//! private to this folder, so no caller can reach SQLite another way.
//!
//! Every file's schema is a numbered list of migrations (`migrate.rs`);
//! `tests/fixtures/data-d0bbe8d/` holds a data dir of the release before,
//! which `an_old_data_dir_opens_with_its_data` opens and checks.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::logs::LogRetention;
use super::metrics::Retention;
use super::{Db, StorageError};
use crate::db::logs::CollectPolicy;

mod alerts;
pub mod backup;
mod containers;
mod control;
mod deploy;
mod fleet;
mod impls;
mod jobs;
mod logs;
mod metrics;
mod migrate;
mod recordings;
mod releases;
mod terminals;
mod tokens;
mod trail;
mod updates;
mod users;

use alerts::SqliteAlerts;
use control::SqliteControl;
use fleet::SqliteFleet;
use jobs::SqliteJobs;
use logs::SqliteLogs;
use metrics::SqliteMetrics;
use recordings::SqliteRecordings;
use trail::SqliteAudit;

/// A synchronous store whose every call runs on the blocking pool.
///
/// At most [`LANES`] of a store's calls hold a blocking thread at once; the
/// rest wait here, as tasks. A store is one or two mutex-guarded SQLite
/// connections, so more threads could only queue on its mutex — and each
/// one costs a stack and, on glibc, soon its own malloc arena: a thousand
/// runners connecting at once otherwise start dozens of threads whose
/// arenas stay in the server's RSS (issue 16: 4 KiB per runner).
pub struct Blocking<T> {
    store: Arc<T>,
    lanes: Arc<Semaphore>,
}

/// Calls of one store on blocking threads at once: its writer and reader.
const LANES: usize = 2;

impl<T: Send + Sync + 'static> Blocking<T> {
    fn new(store: T) -> Blocking<T> {
        Blocking {
            store: Arc::new(store),
            lanes: Arc::new(Semaphore::new(LANES)),
        }
    }

    /// Run `f` with the store on tokio's blocking pool and wait for it. A
    /// panic in `f` (a bug) becomes an error of the call, not of the caller.
    async fn run<R, E>(&self, f: impl FnOnce(&T) -> Result<R, E> + Send + 'static) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        // The semaphore is never closed; the lane goes with the call, so a
        // caller that gives up does not free it while the call still runs.
        let lane = match self.lanes.clone().acquire_owned().await {
            Ok(lane) => lane,
            Err(e) => {
                return Err(StorageError::Backend(format!("storage lanes: {e}").into()).into())
            }
        };
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || {
            let _lane = lane;
            f(&store)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(StorageError::Backend(format!("storage task: {e}").into()).into()),
        }
    }
}

/// What the files are opened with (from the serve flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub metrics_retention: Retention,
    pub log_retention: LogRetention,
    pub log_collect: CollectPolicy,
}

/// Plans that do not depend on bound values (SQLite's query planner
/// stability guarantee). The bundled SQLite is built with STAT4, under
/// which binding a new value to some parameters expires a cached statement:
/// `open_jobs` was parsed again on every call (~170k instructions, once a
/// minute per connected runner). Our queries have one plan whatever the
/// values, so nothing is lost.
pub(super) fn steady_plans(conn: &rusqlite::Connection) -> Result<(), StorageError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Open (creating if needed) the databases in `data` and bring their schemas
/// up to date.
pub fn open(data: &Path, options: &Options) -> Result<Db, StorageError> {
    let control = SqliteControl::open(&data.join("tether.db"))?;
    let metrics = SqliteMetrics::open(&data.join("metrics.db"), options.metrics_retention)?;
    let logs = SqliteLogs::open(
        &data.join("logs.db"),
        options.log_retention,
        options.log_collect.clone(),
    )?;
    let jobs = SqliteJobs::open(&data.join("jobs.db"))?;
    let alerts = SqliteAlerts::open(&data.join("alerts.db"))?;
    let fleet = SqliteFleet::open(&data.join("fleet.db"))?;
    let trail = SqliteAudit::open(&data.join("audit.db"))?;
    let recordings = SqliteRecordings::open(&data.join("recordings.db"))?;
    let mut db = assemble(
        control, metrics, logs, jobs, alerts, fleet, trail, recordings,
    );
    db.releases = release_dir(&data.join("releases"));
    Ok(db)
}

/// The releases kept as files in `dir` (`<data-dir>/releases`): the
/// embedded backend's [`ReleaseStore`](crate::db::ReleaseStore), and what
/// `migrate` copies from.
pub fn release_dir(dir: &Path) -> Arc<dyn crate::db::ReleaseStore> {
    Arc::new(releases::FsReleases::new(dir.to_owned()))
}

/// The audit trail in the SQLite file at `path` (opened, migrated), for
/// tests that keep it apart from a data dir.
#[doc(hidden)] // a test seam
pub fn open_trail(path: &Path) -> Result<Arc<dyn crate::db::TrailStore>, StorageError> {
    Ok(Arc::new(Blocking::new(SqliteAudit::open(path)?)))
}

/// Check the chain of a copied `audit.db` offline (`tether-server audit
/// verify --db FILE`): no runtime, no server.
pub fn verify_trail_file(path: &Path) -> Result<crate::db::trail::Verification, StorageError> {
    SqliteAudit::open(path)?.verify()
}

/// Private in-memory databases, for tests.
#[doc(hidden)] // a test seam: the integration tests' databases
pub fn open_in_memory(metrics_retention: Retention) -> Result<Db, StorageError> {
    Ok(assemble(
        SqliteControl::open_in_memory()?,
        SqliteMetrics::open_in_memory(metrics_retention)?,
        SqliteLogs::open_in_memory(LogRetention::default())?,
        SqliteJobs::open_in_memory()?,
        SqliteAlerts::open_in_memory()?,
        SqliteFleet::open_in_memory()?,
        SqliteAudit::open_in_memory()?,
        SqliteRecordings::open_in_memory()?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    control: SqliteControl,
    metrics: SqliteMetrics,
    logs: SqliteLogs,
    jobs: SqliteJobs,
    alerts: SqliteAlerts,
    fleet: SqliteFleet,
    trail: SqliteAudit,
    recordings: SqliteRecordings,
) -> Db {
    // Once per start, before any request: apps that still name their
    // runner get its id (deploy.rs).
    if let Err(e) = deploy::resolve_runner_names(&jobs, &control) {
        tracing::error!("resolving the runner names of older apps: {e}");
    }
    let control = Arc::new(Blocking::new(control));
    Db {
        liveness: Arc::new(crate::db::Liveness::new(control.clone())),
        control: control.clone(),
        users: control.clone(),
        updates: control.clone(),
        audit: control,
        metrics: Arc::new(Blocking::new(metrics)),
        logs: Arc::new(Blocking::new(logs)),
        jobs: Arc::new(Blocking::new(jobs)),
        alerts: Arc::new(Blocking::new(alerts)),
        fleet: Arc::new(Blocking::new(fleet)),
        trail: Arc::new(Blocking::new(trail)),
        recordings: Arc::new(Blocking::new(recordings)),
        // In-memory databases keep none; `open` puts the data dir's here.
        releases: Arc::new(crate::db::releases::NoReleases),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::logs::LogQuery;

    /// The four files as the server at d0bbe8d (before `db/`) left them.
    const OLD: [(&str, &str); 4] = [
        (
            "tether.db",
            include_str!("../../../tests/fixtures/data-d0bbe8d/tether.sql"),
        ),
        (
            "metrics.db",
            include_str!("../../../tests/fixtures/data-d0bbe8d/metrics.sql"),
        ),
        (
            "logs.db",
            include_str!("../../../tests/fixtures/data-d0bbe8d/logs.sql"),
        ),
        (
            "jobs.db",
            include_str!("../../../tests/fixtures/data-d0bbe8d/jobs.sql"),
        ),
    ];

    fn version(path: &Path) -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    /// A data dir made by the previous release opens with every row in
    /// place, and each file records the migrations it now has.
    #[tokio::test]
    async fn an_old_data_dir_opens_with_its_data() {
        let dir = std::env::temp_dir().join(format!("tether-old-data-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, sql) in OLD {
            let conn = rusqlite::Connection::open(dir.join(file)).unwrap();
            // The dump lists tables by name, not in reference order.
            conn.pragma_update(None, "foreign_keys", "OFF").unwrap();
            conn.execute_batch(sql).unwrap();
        }
        let before: Vec<i64> = OLD.iter().map(|(f, _)| version(&dir.join(f))).collect();
        assert_eq!(before, [6, 1, 0, 0]);
        let options = Options {
            metrics_retention: Retention::default(),
            log_retention: LogRetention::default(),
            log_collect: CollectPolicy::All,
        };
        let db = open(&dir, &options).unwrap();

        let tenants = db.control.list_tenants().await.unwrap();
        assert_eq!(tenants.len(), 1);
        assert_eq!(tenants[0].name, "acme");
        let runner = db
            .control
            .runner("tn_acme", "rn_web1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(runner.name, "web-1");
        let auth = db
            .control
            .api_token_auth("hash-of-api-token", 1)
            .await
            .unwrap();
        assert_eq!(auth.unwrap().tenant_id, "tn_acme");
        let ada = db.users.user("tn_acme", "ada").await.unwrap().unwrap();
        assert_eq!(ada.role, crate::db::Role::Admin);
        let policies = db.updates.update_policies("tn_acme").await.unwrap();
        assert_eq!(policies[0].version, "0.2.0");
        let audit = db.audit.terminal_audit("tn_acme", None, 10).await.unwrap();
        assert_eq!((audit[0].bytes_in, audit[0].bytes_out), (42, 4200));

        let job = db.jobs.job("tn_acme", "jb_one").await.unwrap().unwrap();
        assert_eq!(job.label, "echo hi");
        let out = db.jobs.output(job.seq, 0, 10).await.unwrap();
        assert_eq!(out[0].data, b"hi\n");
        assert_eq!(db.jobs.scripts("tn_acme").await.unwrap()[0].name, "hello");
        let app = db.jobs.app("tn_acme", "web").await.unwrap().unwrap();
        assert_eq!(app.def["image"], "nginx");

        let q = LogQuery {
            limit: 10,
            ..LogQuery::default()
        };
        let lines = db.logs.query("rn_web1", "nginx", &q).await.unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].line, "GET / 200");

        let latest = db.metrics.latest(&["rn_web1"]).await.unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].1.ts, 1_795_000_006_000);

        drop(db);
        let after: Vec<i64> = OLD.iter().map(|(f, _)| version(&dir.join(f))).collect();
        assert_eq!(after, [9, 1, 1, 2]);
        // Opening again applies nothing and keeps everything.
        let db = open(&dir, &options).unwrap();
        assert_eq!(db.control.list_runners("tn_acme").await.unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A new data dir gets the same versions.
    #[test]
    fn a_new_data_dir_is_at_the_latest_version() {
        let dir = std::env::temp_dir().join(format!("tether-new-data-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let options = Options {
            metrics_retention: Retention::default(),
            log_retention: LogRetention::default(),
            log_collect: CollectPolicy::All,
        };
        drop(open(&dir, &options).unwrap());
        let after: Vec<i64> = OLD.iter().map(|(f, _)| version(&dir.join(f))).collect();
        assert_eq!(after, [9, 1, 1, 2]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
