//! Time partitions of the bulk tables (metrics, container logs): each is
//! declared `PARTITION BY RANGE` on a time column (`schema.rs`), and this
//! file makes its partitions and drops them.
//!
//! ```text
//! metrics_raw   ts (ms)        one partition a day      metrics_raw_p20430
//! metrics_1m    ts (ms)        one a day
//! metrics_1h    ts (ms)        one per 30 days
//! log_blocks    ts_last (ns)   one a day
//! job_output    job_ms (ms)    one a day (the job's creation time)
//! ```
//!
//! A partition is named `<table>_p<n>` and holds `[n·width, (n+1)·width)`.
//! Writers call [`Partitions::ensure`] for the partitions their rows need
//! before they insert (a range-partitioned table without a matching
//! partition refuses the row); maintenance makes today's and tomorrow's
//! ahead, so writers rarely create one. There is no DEFAULT partition: a
//! row in it would block creating the partition it belongs to.
//!
//! Retention drops whole partitions (`DROP TABLE`: no dead rows, no
//! vacuum debt) once all their rows are past it; the stores delete rows
//! only in the partition that straddles the cut.
//!
//! Creating and dropping run under a transaction-scoped advisory lock, so
//! replicas doing it at once do not race on the catalog (`IF NOT EXISTS`
//! alone does not stop two creators colliding on the table's row type).

use std::collections::HashSet;
use std::sync::Mutex;

use deadpool_postgres::Pool;

use crate::db::StorageError;

/// The advisory lock key partition changes hold ("tpart" in ASCII).
const PARTITION_LOCK: i64 = 0x74_7061_7274;

/// Partitions remembered as existing, per store; then it starts over (a
/// forgotten one is found again by `IF NOT EXISTS`).
const KNOWN_MAX: usize = 4096;

/// A range-partitioned table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Table {
    pub name: &'static str,
    /// Width of one partition, in the partition column's unit.
    pub width: i64,
}

impl Table {
    /// The partition number that holds `key`.
    pub fn part(&self, key: i64) -> i64 {
        key.div_euclid(self.width)
    }

    /// `[lo, hi)` of partition `n`, saturating at the ends of i64.
    pub fn bounds(&self, n: i64) -> (i64, i64) {
        let lo = n.saturating_mul(self.width);
        (lo, lo.saturating_add(self.width))
    }

    fn partition_name(&self, n: i64) -> String {
        // A minus sign is not allowed in an unquoted name.
        if n < 0 {
            format!("{}_m{}", self.name, n.unsigned_abs())
        } else {
            format!("{}_p{n}", self.name)
        }
    }

    fn parse_name(&self, relname: &str) -> Option<i64> {
        let rest = relname.strip_prefix(self.name)?.strip_prefix('_')?;
        if let Some(n) = rest.strip_prefix('p') {
            n.parse().ok()
        } else {
            rest.strip_prefix('m')?.parse::<i64>().ok().map(|n| -n)
        }
    }
}

/// The partitions one store knows exist.
#[derive(Default)]
pub(super) struct Partitions {
    known: Mutex<HashSet<(&'static str, i64)>>,
}

impl Partitions {
    fn is_known(&self, t: &Table, n: i64) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(t.name, n))
    }

    fn remember(&self, t: &Table, n: i64) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_MAX {
            known.clear();
        }
        known.insert((t.name, n));
    }

    fn forget(&self, t: &Table, n: i64) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(t.name, n));
    }

    /// Forget every partition (after an insert found one missing).
    pub fn forget_all(&self) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Make sure the partitions holding `keys` exist: one short
    /// transaction of its own for those missing (never inside a writer's
    /// transaction, which would then hold the parent's lock).
    pub async fn ensure(&self, pool: &Pool, t: &Table, keys: &[i64]) -> Result<(), StorageError> {
        let mut missing: Vec<i64> = keys
            .iter()
            .map(|&k| t.part(k))
            .filter(|&n| !self.is_known(t, n))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_unstable();
        missing.dedup();
        let mut c = pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await?;
        for &n in &missing {
            let (lo, hi) = t.bounds(n);
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({lo}) TO ({hi})",
                t.partition_name(n),
                t.name
            ))
            .await?;
        }
        tx.commit().await?;
        for n in missing {
            self.remember(t, n);
        }
        Ok(())
    }

    /// The partitions of `t` that exist, as numbers, oldest first.
    pub async fn list(
        &self,
        c: &tokio_postgres::Client,
        t: &Table,
    ) -> Result<Vec<i64>, StorageError> {
        let rows = c
            .query(
                "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = $1::TEXT::regclass",
                &[&t.name],
            )
            .await?;
        let mut out: Vec<i64> = rows
            .iter()
            .filter_map(|r| t.parse_name(r.get::<_, &str>(0)))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Drop partition `n` of `t` (the caller checked that every row in it
    /// is past retention). `before`, if given, runs first in the same
    /// transaction, with `{part}` standing for the partition's name (e.g.
    /// to take its rows off a counter).
    pub async fn drop(
        &self,
        c: &mut deadpool_postgres::Object,
        t: &Table,
        n: i64,
        before: Option<&str>,
    ) -> Result<(), StorageError> {
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await?;
        if let Some(sql) = before {
            tx.batch_execute(&sql.replace("{part}", &t.partition_name(n)))
                .await?;
        }
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", t.partition_name(n)))
            .await?;
        tx.commit().await?;
        self.forget(t, n);
        Ok(())
    }

    /// The name of partition `n` of `t`, for a statement on it alone.
    pub fn name(&self, t: &Table, n: i64) -> String {
        t.partition_name(n)
    }
}

/// Why a write to a partitioned table failed.
pub(super) enum WriteError {
    /// No partition for a row: one another replica dropped after this one
    /// remembered it (23514, as a check constraint).
    NoPartition,
    Storage(StorageError),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) {
            WriteError::NoPartition
        } else {
            WriteError::Storage(e.into())
        }
    }
}

impl From<deadpool_postgres::PoolError> for WriteError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        WriteError::Storage(e.into())
    }
}

impl From<WriteError> for StorageError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NoPartition => StorageError::Corrupt("no partition for a row".into()),
            WriteError::Storage(e) => e,
        }
    }
}
