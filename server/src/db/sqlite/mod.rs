//! The embedded backend: every storage trait over SQLite files in the data
//! directory (rusqlite, bundled SQLite, WAL).
//!
//! ```text
//! tether.db   control.rs (+ containers.rs, tokens.rs, users.rs, updates.rs,
//!             terminals.rs): ControlStore, UserStore, UpdateStore, AuditStore
//! metrics.db  metrics.rs: MetricStore
//! logs.db     logs.rs: LogStore
//! jobs.db     jobs.rs (+ deploy.rs): JobStore
//! ```
//!
//! Each file's store is a plain synchronous struct (a mutex-guarded
//! connection, or a writer and a reader). The async traits are implemented
//! on [`Blocking`], which owns it: the one rule, in this one place, is that
//! every call goes through [`Blocking::run`] onto tokio's blocking pool. A
//! SQLite call can wait on a lock or an fsync (`busy_timeout` is 5 s);
//! waiting there never holds a runtime thread. The synchronous structs are
//! private to this folder, so no caller can reach SQLite another way.

use std::path::Path;
use std::sync::Arc;

use super::logs::LogRetention;
use super::metrics::Retention;
use super::{Db, StorageError};
use crate::logs::CollectPolicy;

mod containers;
mod control;
mod deploy;
mod impls;
mod jobs;
mod logs;
mod metrics;
mod terminals;
mod tokens;
mod updates;
mod users;

use control::SqliteControl;
use jobs::SqliteJobs;
use logs::SqliteLogs;
use metrics::SqliteMetrics;

/// A synchronous store whose every call runs on the blocking pool.
pub struct Blocking<T>(Arc<T>);

impl<T: Send + Sync + 'static> Blocking<T> {
    fn new(store: T) -> Blocking<T> {
        Blocking(Arc::new(store))
    }

    /// Run `f` with the store on tokio's blocking pool and wait for it. A
    /// panic in `f` (a bug) becomes an error of the call, not of the caller.
    async fn run<R, E>(&self, f: impl FnOnce(&T) -> Result<R, E> + Send + 'static) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let store = self.0.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
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
    Ok(assemble(control, metrics, logs, jobs))
}

/// Private in-memory databases, for tests.
#[doc(hidden)] // a test seam: the integration tests' databases
pub fn open_in_memory(metrics_retention: Retention) -> Result<Db, StorageError> {
    Ok(assemble(
        SqliteControl::open_in_memory()?,
        SqliteMetrics::open_in_memory(metrics_retention)?,
        SqliteLogs::open_in_memory(LogRetention::default())?,
        SqliteJobs::open_in_memory()?,
    ))
}

fn assemble(
    control: SqliteControl,
    metrics: SqliteMetrics,
    logs: SqliteLogs,
    jobs: SqliteJobs,
) -> Db {
    // Once per start, before any request: apps that still name their
    // runner get its id (deploy.rs).
    if let Err(e) = deploy::resolve_runner_names(&jobs, &control) {
        tracing::error!("resolving the runner names of older apps: {e}");
    }
    let control = Arc::new(Blocking::new(control));
    Db {
        control: control.clone(),
        users: control.clone(),
        updates: control.clone(),
        audit: control,
        metrics: Arc::new(Blocking::new(metrics)),
        logs: Arc::new(Blocking::new(logs)),
        jobs: Arc::new(Blocking::new(jobs)),
    }
}
