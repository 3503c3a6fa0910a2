//! Jobs at rest (`<data-dir>/jobs.db`): saved scripts, sealed secrets, jobs
//! and their output.
//!
//! ```text
//! scripts     (tenant, name) → body, interpreter, args, timeout
//! secrets     (tenant, name) → nonce, sealed value          (common/secrets.rs; never in the clear)
//! jobs        seq (= the data channel) → id, tenant, runner, spec (secret *names* only),
//!             status, exit, reason, times, stored_bytes, output_bytes, cancel_requested
//! job_output  (seq, offset) → tag, ts_ms, data              one row per DATA frame
//! ```
//!
//! Job status:
//!
//! ```text
//!  pending ──job_accepted──▶ queued ──▶ running ──job_result──▶ succeeded | failed | cancelled | timed_out
//!     │ (sent on every connection until accepted; the runner runs an id once)
//!     └── cancel before it was sent ──▶ cancelled
//! ```
//!
//! Output is stored in order: a row's offset is where the previous one
//! ended, and `stored_bytes` moves in the same transaction, so the ACK the
//! server sends (and the `welcome.acks` after a reconnect) always names the
//! end of what is on disk.
//!
//! Bounds (`common/quotas.rs`): output past a job's cap is acknowledged but not
//! stored (one `[tether] output truncated` row marks the cut; rows
//! without data only move `stored_bytes`), and [`SqliteJobs::retain`]
//! deletes old output by age and by each tenant's total.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use tether::protocol::JobResult;

use super::migrate::{has_column, migrate, Migration, Step};
use crate::db::jobs::*;
use crate::db::StorageError;

/// Old jobs deleted per retention pass at most.
pub const RETAIN_BATCH: i64 = 1000;

pub struct SqliteJobs {
    write: Mutex<Connection>,
    read: Option<Mutex<Connection>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// jobs.db's schema, in order (`migrate.rs`). Files of earlier builds have
/// version 0 and made 1 and 2 on every start (`IF NOT EXISTS`, column
/// checks), so both are idempotent on them.
const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "scripts, secrets, jobs, output",
        step: Step::Code(schema),
    },
    Migration {
        name: "apps and deployments",
        step: Step::Sql(super::deploy::SCHEMA),
    },
];

fn setup(mut conn: Connection) -> Result<Connection, StorageError> {
    migrate(&mut conn, "jobs.db", MIGRATIONS)?;
    Ok(conn)
}

fn schema(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS scripts (
             tenant_id TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
             interpreter TEXT NOT NULL, args TEXT NOT NULL, timeout_s INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL,
             PRIMARY KEY (tenant_id, name)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS secrets (
             tenant_id TEXT NOT NULL, name TEXT NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL,
             updated_ms INTEGER NOT NULL,
             PRIMARY KEY (tenant_id, name)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS jobs (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT NOT NULL UNIQUE, tenant_id TEXT NOT NULL, runner_id TEXT NOT NULL,
             label TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
             exit_code INTEGER, signal INTEGER, reason TEXT NOT NULL DEFAULT '',
             created_ms INTEGER NOT NULL, started_ms INTEGER, finished_ms INTEGER,
             stored_bytes INTEGER NOT NULL DEFAULT 0, output_bytes INTEGER,
             cancel_requested INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX IF NOT EXISTS jobs_runner ON jobs (runner_id, status);
         CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs (tenant_id, seq);
         CREATE TABLE IF NOT EXISTS job_output (
             seq INTEGER NOT NULL, offset INTEGER NOT NULL, tag INTEGER NOT NULL,
             ts_ms INTEGER NOT NULL, data BLOB NOT NULL,
             PRIMARY KEY (seq, offset)) WITHOUT ROWID;",
    )?;
    // Added with deployments; older files get the column (0: step 0).
    if !has_column(tx, "job_output", "step")? {
        tx.execute_batch("ALTER TABLE job_output ADD COLUMN step INTEGER NOT NULL DEFAULT 0")?;
    }
    // Added with retention (`common/quotas.rs`).
    if !has_column(tx, "jobs", "output_pruned")? {
        tx.execute_batch(
            "ALTER TABLE jobs ADD COLUMN output_pruned INTEGER NOT NULL DEFAULT 0;
             CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (tenant_id, finished_ms);",
        )?;
    }
    Ok(())
}

const JOB_COLUMNS: &str =
    "seq, id, tenant_id, runner_id, label, spec, status, exit_code, signal, reason, \
     created_ms, started_ms, finished_ms, stored_bytes, output_bytes, cancel_requested, \
     output_pruned";

fn job_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
    let spec: String = r.get(5)?;
    Ok(JobRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        tenant_id: r.get(2)?,
        runner_id: r.get(3)?,
        label: r.get(4)?,
        spec: serde_json::from_str(&spec).unwrap_or(JobSpec {
            program: String::new(),
            args: Vec::new(),
            script: None,
            env: Vec::new(),
            secrets: Vec::new(),
            timeout_s: 0,
            deploy: None,
            signed: BTreeMap::new(),
        }),
        status: r.get(6)?,
        exit_code: r.get(7)?,
        signal: r.get(8)?,
        reason: r.get(9)?,
        created_ms: r.get(10)?,
        started_ms: r.get(11)?,
        finished_ms: r.get(12)?,
        stored_bytes: r.get(13)?,
        output_bytes: r.get(14)?,
        cancel_requested: r.get::<_, i64>(15)? != 0,
        output_pruned: r.get::<_, i64>(16)? != 0,
    })
}

impl SqliteJobs {
    pub fn open(path: &Path) -> Result<SqliteJobs, StorageError> {
        let write = Connection::open(path)?;
        write.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit reaches the disk before it returns. Stored
        // output is acknowledged, and the runner then forgets it, so a
        // commit that a power cut could undo (NORMAL syncs the WAL only at
        // checkpoints) would lose output for good. The cost is one fsync
        // per batch, and batches grow while a commit runs
        // (jobs/link.rs), so throughput holds.
        write.pragma_update(None, "synchronous", "FULL")?;
        super::steady_plans(&write)?;
        let write = setup(write)?;
        let read = Connection::open(path)?;
        read.busy_timeout(Duration::from_secs(5))?;
        read.pragma_update(None, "query_only", true)?;
        super::steady_plans(&read)?;
        Ok(SqliteJobs {
            write: Mutex::new(write),
            read: Some(Mutex::new(read)),
        })
    }

    #[doc(hidden)] // a test seam: the integration tests' databases
    pub fn open_in_memory() -> Result<SqliteJobs, StorageError> {
        Ok(SqliteJobs {
            write: Mutex::new(setup(Connection::open_in_memory()?)?),
            read: None,
        })
    }

    pub(crate) fn write(&self) -> MutexGuard<'_, Connection> {
        lock(&self.write)
    }

    pub(crate) fn read(&self) -> MutexGuard<'_, Connection> {
        self.read.as_ref().map_or_else(|| self.write(), lock)
    }

    // ---- scripts -------------------------------------------------------------

    pub fn put_script(&self, tenant: &str, s: &Script) -> Result<(), StorageError> {
        self.write().execute(
            "INSERT INTO scripts (tenant_id, name, body, interpreter, args, timeout_s, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (tenant_id, name) DO UPDATE SET body = ?3, interpreter = ?4, args = ?5,
               timeout_s = ?6, updated_ms = ?7",
            params![
                tenant,
                s.name,
                s.body,
                s.interpreter,
                serde_json::to_string(&s.args).unwrap_or_default(),
                s.timeout_s as i64,
                s.updated_ms
            ],
        )?;
        Ok(())
    }

    pub fn script(&self, tenant: &str, name: &str) -> Result<Option<Script>, StorageError> {
        Ok(self
            .read()
            .query_row(
                "SELECT name, body, interpreter, args, timeout_s, updated_ms FROM scripts
                 WHERE tenant_id = ?1 AND name = ?2",
                params![tenant, name],
                script_row,
            )
            .optional()?)
    }

    pub fn scripts(&self, tenant: &str) -> Result<Vec<Script>, StorageError> {
        let conn = self.read();
        let mut stmt = conn.prepare(
            "SELECT name, body, interpreter, args, timeout_s, updated_ms FROM scripts
             WHERE tenant_id = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![tenant], script_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_script(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        Ok(self.write().execute(
            "DELETE FROM scripts WHERE tenant_id = ?1 AND name = ?2",
            params![tenant, name],
        )? > 0)
    }

    // ---- secrets -------------------------------------------------------------

    pub fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        nonce: &[u8],
        sealed: &[u8],
        now: i64,
    ) -> Result<(), StorageError> {
        self.write().execute(
            "INSERT INTO secrets (tenant_id, name, nonce, sealed, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant_id, name) DO UPDATE SET nonce = ?3, sealed = ?4, updated_ms = ?5",
            params![tenant, name, nonce, sealed, now],
        )?;
        Ok(())
    }

    /// `(nonce, sealed)` of a secret.
    pub fn secret(&self, tenant: &str, name: &str) -> Result<Option<Sealed>, StorageError> {
        Ok(self
            .read()
            .query_row(
                "SELECT nonce, sealed FROM secrets WHERE tenant_id = ?1 AND name = ?2",
                params![tenant, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Names and update times only: values are write-only.
    pub fn secrets(&self, tenant: &str) -> Result<Vec<(String, i64)>, StorageError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare("SELECT name, updated_ms FROM secrets WHERE tenant_id = ?1 ORDER BY name")?;
        let rows = stmt.query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_secret(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        Ok(self.write().execute(
            "DELETE FROM secrets WHERE tenant_id = ?1 AND name = ?2",
            params![tenant, name],
        )? > 0)
    }

    // ---- jobs ----------------------------------------------------------------

    #[cfg(test)]
    pub fn create_job(
        &self,
        id: &str,
        tenant: &str,
        runner: &str,
        label: &str,
        spec: &JobSpec,
        now: i64,
    ) -> Result<JobRow, StorageError> {
        let jobs = [(id.to_owned(), runner.to_owned())];
        let made = self.create_jobs(tenant, &jobs, label, spec, now, usize::MAX)?;
        Ok(made.expect("no limit").pop().expect("one made"))
    }

    /// Make one job per `(id, runner)`, all or none: none when the tenant
    /// would then have more than `max_active` jobs that are not final
    /// (`Ok(Err(active now))`). A pending job with a cancel requested
    /// does not count: it will never start (its runner may be away). The count and the inserts hold the one
    /// write lock, so concurrent requests cannot both slip under it.
    pub fn create_jobs(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        label: &str,
        spec: &JobSpec,
        now: i64,
        max_active: usize,
    ) -> Result<Result<Vec<JobRow>, usize>, StorageError> {
        let mut conn = self.write();
        let tx = conn.transaction()?;
        let active: i64 = tx.query_row(
            "SELECT count(*) FROM jobs WHERE tenant_id = ?1
             AND status IN ('pending', 'queued', 'running')
             AND NOT (status = 'pending' AND cancel_requested = 1)",
            params![tenant],
            |r| r.get(0),
        )?;
        let active = usize::try_from(active).unwrap_or(usize::MAX);
        if active.saturating_add(jobs.len()) > max_active {
            return Ok(Err(active));
        }
        let spec = serde_json::to_string(spec).unwrap_or_default();
        let mut made = Vec::with_capacity(jobs.len());
        for (id, runner) in jobs {
            tx.execute(
                "INSERT INTO jobs (id, tenant_id, runner_id, label, spec, status, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                params![id, tenant, runner, label, spec, now],
            )?;
            let seq = tx.last_insert_rowid();
            made.push(tx.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq = ?1"),
                params![seq],
                job_row,
            )?);
        }
        tx.commit()?;
        Ok(Ok(made))
    }

    pub fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRow>, StorageError> {
        Ok(self
            .read()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = ?1 AND id = ?2"),
                params![tenant, id],
                job_row,
            )
            .optional()?)
    }

    /// A job by channel, if it belongs to `runner`.
    pub fn job_by_seq(&self, runner: &str, seq: i64) -> Result<Option<JobRow>, StorageError> {
        Ok(self
            .read()
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq = ?1 AND runner_id = ?2"),
                params![seq, runner],
                job_row,
            )
            .optional()?)
    }

    pub fn jobs(
        &self,
        tenant: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRow>, StorageError> {
        let conn = self.read();
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = ?1 AND (?2 IS NULL OR runner_id = ?2)
             ORDER BY seq DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![tenant, runner, limit as i64], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Jobs of a runner that are not final: to (re)send, cancel, resume.
    pub fn open_jobs(&self, runner: &str) -> Result<Vec<JobRow>, StorageError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE runner_id = ?1
             AND status IN ('pending', 'queued', 'running') ORDER BY seq"
        ))?;
        let rows = stmt.query_map(params![runner], job_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Which of `runners` have a job not yet final: one statement per 500
    /// (the `jobs_runner` index answers each id with a seek).
    pub fn runners_with_open_jobs(&self, runners: &[String]) -> Result<Vec<String>, StorageError> {
        let conn = self.read();
        let mut found = Vec::new();
        for chunk in runners.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT DISTINCT runner_id FROM jobs WHERE runner_id IN ({marks})
                 AND status IN ('pending', 'queued', 'running')"
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(chunk), |r| r.get(0))?;
            for r in rows {
                found.push(r?);
            }
        }
        Ok(found)
    }

    pub fn job_states(&self, tenant: &str, ids: &[String]) -> Result<Vec<JobState>, StorageError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT id, status, exit_code, started_ms, finished_ms FROM jobs
             WHERE id IN (SELECT value FROM json_each(?2)) AND tenant_id = ?1",
        )?;
        let list = serde_json::Value::from(ids).to_string();
        let rows = stmt.query_map(params![tenant, list], |r| {
            Ok(JobState {
                id: r.get(0)?,
                status: r.get(1)?,
                exit_code: r.get(2)?,
                started_ms: r.get(3)?,
                finished_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Jobs of a runner whose output is still coming (final or not).
    pub fn resumable(&self, runner: &str) -> Result<Vec<(i64, i64)>, StorageError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, stored_bytes FROM jobs WHERE runner_id = ?1
             AND (status IN ('queued', 'running') OR (output_bytes IS NOT NULL AND stored_bytes < output_bytes))",
        )?;
        let rows = stmt.query_map(params![runner], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The runner has it: `queued` or `running` (never back from final).
    pub fn accepted(&self, id: &str, state: &str, now: i64) -> Result<(), StorageError> {
        let status = if state == "queued" {
            "queued"
        } else {
            "running"
        };
        self.write().execute(
            "UPDATE jobs SET status = ?2, started_ms = CASE WHEN ?2 = 'running' THEN coalesce(started_ms, ?3) ELSE started_ms END
             WHERE id = ?1 AND status IN ('pending', 'queued', 'running')",
            params![id, status, now],
        )?;
        Ok(())
    }

    /// A final status set by the server (refused, secret missing, cancelled
    /// before it was sent). False if it was final already.
    pub fn finish(
        &self,
        id: &str,
        status: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        Ok(self.write().execute(
            "UPDATE jobs SET status = ?2, reason = ?3, finished_ms = ?4, output_bytes = coalesce(output_bytes, stored_bytes)
             WHERE id = ?1 AND status IN ('pending', 'queued', 'running')",
            params![id, status, reason, now],
        )? > 0)
    }

    /// The runner's result. Stored once; a repeat (at-least-once delivery)
    /// changes nothing and returns false.
    pub fn record_result(&self, runner: &str, r: &JobResult) -> Result<bool, StorageError> {
        let started = (r.started_ms > 0).then_some(r.started_ms as i64);
        Ok(self.write().execute(
            "UPDATE jobs SET status = ?3, exit_code = ?4, signal = ?5, reason = ?6,
               started_ms = coalesce(?7, started_ms), finished_ms = ?8,
               output_bytes = max(?9, stored_bytes)
             WHERE id = ?1 AND runner_id = ?2 AND status IN ('pending', 'queued', 'running')",
            params![
                r.job_id,
                runner,
                r.status,
                r.exit_code,
                r.signal,
                r.reason,
                started,
                r.finished_ms as i64,
                r.output_bytes as i64
            ],
        )? > 0)
    }

    pub fn request_cancel(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        Ok(self.write().execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE tenant_id = ?1 AND id = ?2
             AND status IN ('pending', 'queued', 'running')",
            params![tenant, id],
        )? > 0)
    }

    /// Store output rows of jobs in order; returns each job's stored end.
    pub fn store_output(&self, rows: &[(i64, OutputRow)]) -> Result<Vec<(i64, i64)>, StorageError> {
        let mut conn = self.write();
        let tx = conn.transaction()?;
        let mut ends: Vec<(i64, i64)> = Vec::new();
        for (seq, row) in rows {
            if row.is_stored() {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO job_output (seq, offset, tag, ts_ms, data, step) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![seq, row.offset, row.tag, row.ts_ms, row.data, row.step])?;
            }
            let end = row.end;
            match ends.iter_mut().find(|e| e.0 == *seq) {
                Some(e) => e.1 = e.1.max(end),
                None => ends.push((*seq, end)),
            }
        }
        for (seq, end) in &ends {
            tx.prepare_cached(
                "UPDATE jobs SET stored_bytes = max(stored_bytes, ?2) WHERE seq = ?1",
            )?
            .execute(params![seq, end])?;
        }
        tx.commit()?;
        Ok(ends)
    }

    /// Output rows of a job from `offset` on, at most `limit`.
    pub fn output(
        &self,
        seq: i64,
        from: i64,
        limit: usize,
    ) -> Result<Vec<OutputRow>, StorageError> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT offset, tag, ts_ms, data, step FROM job_output WHERE seq = ?1 AND offset >= ?2
             ORDER BY offset LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![seq, from, limit as i64], |r| {
            let offset: i64 = r.get(0)?;
            let data: Vec<u8> = r.get(3)?;
            Ok(OutputRow {
                end: offset + tether::protocol::JOB_RECORD_HEADER as i64 + data.len() as i64,
                offset,
                tag: r.get(1)?,
                ts_ms: r.get(2)?,
                data,
                step: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl SqliteJobs {
    /// One retention pass (`common/quotas.rs`): finished jobs older than
    /// `cutoff_ms` are deleted with their output (a deploy keeps its row,
    /// which rollback reads); then, per tenant, the output of its oldest
    /// finished jobs is deleted until what it stores is at most
    /// `max_tenant_bytes`. Jobs still running are never touched. At most
    /// [`RETAIN_BATCH`] old jobs go per pass, so a pass holds the write
    /// lock (which output storing waits for) briefly; the next pass
    /// takes the rest.
    pub fn retain(
        &self,
        cutoff_ms: i64,
        max_tenant_bytes: u64,
    ) -> Result<RetainStats, StorageError> {
        let mut stats = RetainStats::default();
        let mut conn = self.write();
        let tx = conn.transaction()?;
        let old: Vec<(i64, bool)> = {
            let mut stmt = tx.prepare(
                "SELECT j.seq, d.job_id IS NOT NULL FROM jobs j
                 LEFT JOIN deployments d ON d.job_id = j.id
                 WHERE j.finished_ms < ?1 AND j.status IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'expired')
                   AND (d.job_id IS NULL OR j.output_pruned = 0)
                 LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![cutoff_ms, RETAIN_BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (seq, deploy) in old {
            tx.execute("DELETE FROM job_output WHERE seq = ?1", params![seq])?;
            if deploy {
                tx.execute(
                    "UPDATE jobs SET output_pruned = 1 WHERE seq = ?1",
                    params![seq],
                )?;
                stats.outputs_deleted += 1;
            } else {
                tx.execute("DELETE FROM jobs WHERE seq = ?1", params![seq])?;
                stats.jobs_deleted += 1;
            }
        }
        let limit = i64::try_from(max_tenant_bytes).unwrap_or(i64::MAX);
        let over: Vec<(String, i64)> = {
            let mut stmt = tx.prepare(
                "SELECT tenant_id, sum(stored_bytes) FROM jobs WHERE output_pruned = 0
                 GROUP BY tenant_id HAVING sum(stored_bytes) > ?1",
            )?;
            let rows = stmt.query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (tenant, mut total) in over {
            let oldest: Vec<(i64, i64)> = {
                let mut stmt = tx.prepare(
                    "SELECT seq, stored_bytes FROM jobs WHERE tenant_id = ?1 AND output_pruned = 0
                     AND status IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'expired')
                     AND (output_bytes IS NULL OR stored_bytes >= output_bytes)
                     ORDER BY finished_ms, seq",
                )?;
                let rows = stmt.query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            for (seq, bytes) in oldest {
                if total <= limit {
                    break;
                }
                tx.execute("DELETE FROM job_output WHERE seq = ?1", params![seq])?;
                tx.execute(
                    "UPDATE jobs SET output_pruned = 1 WHERE seq = ?1",
                    params![seq],
                )?;
                total -= bytes;
                stats.outputs_deleted += 1;
            }
        }
        tx.commit()?;
        Ok(stats)
    }
}

fn script_row(r: &Row<'_>) -> rusqlite::Result<Script> {
    let args: String = r.get(3)?;
    Ok(Script {
        name: r.get(0)?,
        body: r.get(1)?,
        interpreter: r.get(2)?,
        args: serde_json::from_str(&args).unwrap_or_default(),
        timeout_s: r.get::<_, i64>(4)?.max(0) as u64,
        updated_ms: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            program: "/bin/sh".into(),
            args: vec![],
            script: Some("echo hi".into()),
            env: vec![],
            secrets: vec!["TOKEN".into()],
            timeout_s: 0,
            deploy: None,
            signed: BTreeMap::new(),
        }
    }

    #[test]
    fn a_job_goes_pending_running_final_once() {
        let s = SqliteJobs::open_in_memory().unwrap();
        let j = s
            .create_job("jb_1", "tn", "rn", "hello", &spec(), 1)
            .unwrap();
        assert_eq!((j.status.as_str(), j.seq), ("pending", 1));
        assert_eq!(s.open_jobs("rn").unwrap().len(), 1);
        s.accepted("jb_1", "running", 2).unwrap();
        let rows = [(
            j.seq,
            OutputRow {
                offset: 0,
                tag: 1,
                step: 0,
                ts_ms: 3,
                data: b"hi\n".to_vec(),
                end: 12,
            },
        )];
        assert_eq!(s.store_output(&rows).unwrap(), vec![(1, 12)]);
        // A resent frame changes nothing.
        s.store_output(&rows).unwrap();
        let r = JobResult {
            job_id: "jb_1".into(),
            channel: 1,
            status: "succeeded".into(),
            exit_code: Some(0),
            signal: None,
            reason: String::new(),
            started_ms: 2,
            finished_ms: 4,
            output_bytes: 12,
        };
        assert!(s.record_result("rn", &r).unwrap());
        assert!(
            !s.record_result("rn", &r).unwrap(),
            "at least once, stored once"
        );
        assert!(!s.record_result("other", &r).unwrap());
        let j = s.job("tn", "jb_1").unwrap().unwrap();
        assert!(j.is_complete());
        assert_eq!(j.spec.secrets, vec!["TOKEN".to_owned()]);
        assert!(s.job("tn2", "jb_1").unwrap().is_none(), "tenant scoped");
        assert!(
            !s.request_cancel("tn", "jb_1").unwrap(),
            "final: nothing to cancel"
        );
        assert_eq!(s.output(1, 0, 10).unwrap().len(), 1);
        assert!(s.open_jobs("rn").unwrap().is_empty());
    }

    fn finished(s: &SqliteJobs, id: &str, tenant: &str, at: i64, bytes: usize) -> i64 {
        let j = s.create_job(id, tenant, "rn", id, &spec(), at).unwrap();
        let data = vec![b'x'; bytes];
        let end = (tether::protocol::JOB_RECORD_HEADER + bytes) as i64;
        let row = OutputRow {
            offset: 0,
            tag: 1,
            step: 0,
            ts_ms: at,
            data,
            end,
        };
        s.store_output(&[(j.seq, row)]).unwrap();
        s.finish(id, "succeeded", "", at).unwrap();
        j.seq
    }

    #[test]
    fn a_job_over_its_quota_is_refused_all_or_nothing_per_tenant() {
        let s = SqliteJobs::open_in_memory().unwrap();
        let two = [("jb_1".into(), "rn".into()), ("jb_2".into(), "rn".into())];
        assert_eq!(
            s.create_jobs("tn_a", &two, "l", &spec(), 1, 2)
                .unwrap()
                .unwrap()
                .len(),
            2
        );
        let one = [("jb_3".into(), "rn".into())];
        assert_eq!(
            s.create_jobs("tn_a", &one, "l", &spec(), 1, 2)
                .unwrap()
                .unwrap_err(),
            2
        );
        assert!(s.job("tn_a", "jb_3").unwrap().is_none(), "nothing made");
        assert!(
            s.create_jobs("tn_b", &one, "l", &spec(), 1, 2)
                .unwrap()
                .is_ok(),
            "another tenant"
        );
        s.finish("jb_1", "cancelled", "", 2).unwrap();
        let four = [("jb_4".into(), "rn".into())];
        assert!(
            s.create_jobs("tn_a", &four, "l", &spec(), 3, 2)
                .unwrap()
                .is_ok(),
            "a final job frees its slot"
        );
    }

    #[test]
    fn retention_removes_old_output_and_keeps_each_tenant_under_its_bytes() {
        let s = SqliteJobs::open_in_memory().unwrap();
        let old = finished(&s, "jb_old", "tn_a", 1_000, 100);
        let dep = finished(&s, "jb_dep", "tn_a", 1_000, 100);
        s.add_deployment(
            "tn_a",
            &crate::db::jobs::Deployment {
                id: "jb_dep".into(),
                app: "web".into(),
                image: "web:1".into(),
                kind: "deploy".into(),
                git_ref: None,
                created_ms: 1_000,
            },
        )
        .unwrap();
        let a1 = finished(&s, "jb_a1", "tn_a", 5_000, 40_000);
        let a2 = finished(&s, "jb_a2", "tn_a", 6_000, 40_000);
        let b1 = finished(&s, "jb_b1", "tn_b", 5_000, 40_000);
        // Still running: never touched.
        let run = s
            .create_job("jb_run", "tn_a", "rn", "r", &spec(), 4_000)
            .unwrap();
        let row = OutputRow {
            offset: 0,
            tag: 1,
            step: 0,
            ts_ms: 4_000,
            data: vec![b'y'; 10_000],
            end: 10_012,
        };
        s.store_output(&[(run.seq, row)]).unwrap();

        let stats = s.retain(2_000, 64 * 1024).unwrap();
        // Past the age: the job is gone; the deploy keeps its row, not its output.
        assert!(s.job("tn_a", "jb_old").unwrap().is_none());
        assert!(s.output(old, 0, 10).unwrap().is_empty());
        let d = s.job("tn_a", "jb_dep").unwrap().unwrap();
        assert!(d.output_pruned && s.output(dep, 0, 10).unwrap().is_empty());
        // tn_a stores 90 KB > 64 KiB (the running job counts, but is not
        // touched): its oldest finished output goes.
        assert!(s.job("tn_a", "jb_a1").unwrap().unwrap().output_pruned);
        assert!(s.output(a1, 0, 10).unwrap().is_empty());
        assert_eq!(s.output(a2, 0, 10).unwrap().len(), 1, "newest kept");
        assert_eq!(s.output(run.seq, 0, 10).unwrap().len(), 1, "running kept");
        // tn_b is under its own limit: untouched by tn_a's use.
        assert_eq!(s.output(b1, 0, 10).unwrap().len(), 1);
        assert_eq!(
            stats,
            RetainStats {
                jobs_deleted: 1,
                outputs_deleted: 2
            }
        );
        assert_eq!(
            s.retain(2_000, 64 * 1024).unwrap(),
            RetainStats::default(),
            "idempotent"
        );
    }
}

#[cfg(test)]
mod plans {
    use super::*;

    /// A cached statement runs again without being parsed again, whatever
    /// is bound (see `steady_plans`).
    #[test]
    fn open_jobs_is_not_prepared_again_for_each_runner() {
        let dir = std::env::temp_dir().join(format!("tether-plans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = SqliteJobs::open(&dir.join("jobs.db")).unwrap();
        for i in 0..5 {
            s.open_jobs(&format!("rn_{i}")).unwrap();
        }
        let c = s.read();
        let st = c
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE runner_id = ?1
             AND status IN ('pending', 'queued', 'running') ORDER BY seq"
            ))
            .unwrap();
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
        drop(st);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
