//! [`JobStore`] on PostgreSQL: the model of `sqlite/jobs.rs` and
//! `sqlite/deploy.rs` (scripts, sealed secrets, jobs and their output in
//! order, apps and deployments), with `job_output` partitioned by time.
//!
//! An output row carries its job's creation time (`job_ms`), and the table
//! is partitioned by it, one partition a day (`partitions.rs`): every row
//! of a job lands in one partition, made when the job is. Retention drops
//! a day's partition whole once every job created that day is final and
//! finished before the cut (the jobs are then deleted, deploys only
//! marked pruned, as SQLite does row by row); jobs still running keep
//! their day. The per-tenant byte cap deletes the output of single jobs.
//!
//! A batch of output is one multi-row `INSERT … SELECT FROM unnest(…)`.
//! Creating jobs counts a tenant's active ones under a per-tenant advisory
//! lock, so two replicas cannot both slip under the cap.

use std::collections::BTreeMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tether::protocol::JobResult;
use tokio_postgres::Row;

use super::partitions::{Partitions, Table, WriteError};
use crate::db::jobs::*;
use crate::db::metrics::DAY_MS;
use crate::db::StorageError;

pub(super) const OUTPUT: Table = Table {
    name: "job_output",
    width: DAY_MS,
};

/// Old jobs deleted one by one per retention pass at most.
const RETAIN_BATCH: i64 = 1000;
/// The advisory lock class of job creation (with the tenant's hash).
const CREATE_LOCK: i32 = 0x6a6f_6273; // "jobs"

const JOB_COLUMNS: &str =
    "seq, id, tenant_id, runner_id, label, spec, status, exit_code, signal, reason, \
     created_ms, started_ms, finished_ms, stored_bytes, output_bytes, cancel_requested, \
     output_pruned";

const FINAL_SQL: &str = "('succeeded', 'failed', 'cancelled', 'timed_out', 'expired')";

fn job_row(r: &Row) -> JobRow {
    job_row_at(r, 0)
}

fn script_row(r: &Row) -> Script {
    let args: &str = r.get(3);
    Script {
        name: r.get(0),
        body: r.get(1),
        interpreter: r.get(2),
        args: serde_json::from_str(args).unwrap_or_default(),
        timeout_s: r.get::<_, i64>(4).max(0) as u64,
        updated_ms: r.get(5),
    }
}

fn app_row(r: &Row) -> StoredApp {
    let def: &str = r.get(1);
    StoredApp {
        name: r.get(0),
        def: serde_json::from_str(def).unwrap_or(serde_json::Value::Null),
        updated_ms: r.get(2),
    }
}

pub struct PgJobs {
    pool: Pool,
    parts: Partitions,
}

impl PgJobs {
    pub(super) fn new(pool: Pool) -> PgJobs {
        PgJobs {
            pool,
            parts: Partitions::default(),
        }
    }

    async fn store_once(&self, rows: &[(i64, OutputRow)]) -> Result<Vec<(i64, i64)>, WriteError> {
        let mut ends: Vec<(i64, i64)> = Vec::new();
        let (mut seqs, mut offsets, mut tags, mut steps, mut ts, mut data) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for (seq, row) in rows {
            if row.is_stored() {
                seqs.push(*seq);
                offsets.push(row.offset);
                tags.push(i16::from(row.tag));
                steps.push(i16::from(row.step));
                ts.push(row.ts_ms);
                data.push(row.data.as_slice());
            }
            match ends.iter_mut().find(|e| e.0 == *seq) {
                Some(e) => e.1 = e.1.max(row.end),
                None => ends.push((*seq, row.end)),
            }
        }
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        if !seqs.is_empty() {
            tx.execute(
                "INSERT INTO job_output (seq, job_ms, \"offset\", tag, step, ts_ms, data)
                 SELECT v.seq, j.created_ms, v.o, v.tag, v.step, v.ts, v.data
                 FROM unnest($1::BIGINT[], $2::BIGINT[], $3::SMALLINT[], $4::SMALLINT[],
                             $5::BIGINT[], $6::BYTEA[]) AS v(seq, o, tag, step, ts, data)
                 JOIN jobs j ON j.seq = v.seq
                 ON CONFLICT DO NOTHING",
                &[&seqs, &offsets, &tags, &steps, &ts, &data],
            )
            .await?;
        }
        let (eseqs, eends): (Vec<i64>, Vec<i64>) = ends.iter().copied().unzip();
        tx.execute(
            "UPDATE jobs j SET stored_bytes = greatest(j.stored_bytes, v.e)
             FROM unnest($1::BIGINT[], $2::BIGINT[]) AS v(seq, e) WHERE j.seq = v.seq",
            &[&eseqs, &eends],
        )
        .await?;
        tx.commit().await?;
        Ok(ends)
    }

    /// Days whose every job is old: drop their output partitions whole.
    async fn retain_partitions(
        &self,
        cutoff_ms: i64,
        stats: &mut RetainStats,
    ) -> Result<(), StorageError> {
        let mut c = self.pool.get().await?;
        for n in self.parts.list(&c, &OUTPUT).await? {
            let (lo, hi) = OUTPUT.bounds(n);
            if hi > cutoff_ms {
                break;
            }
            let young = c
                .query_opt(
                    &format!(
                        "SELECT 1 FROM jobs WHERE created_ms >= $1 AND created_ms < $2
                         AND NOT (status IN {FINAL_SQL} AND finished_ms < $3) LIMIT 1"
                    ),
                    &[&lo, &hi, &cutoff_ms],
                )
                .await?
                .is_some();
            if young {
                continue;
            }
            let (deleted, pruned): (i64, i64) = {
                let r = c
                    .query_one(
                        "SELECT count(*) FILTER (WHERE d.job_id IS NULL),
                                count(*) FILTER (WHERE d.job_id IS NOT NULL AND NOT j.output_pruned)
                         FROM jobs j LEFT JOIN deployments d ON d.job_id = j.id
                         WHERE j.created_ms >= $1 AND j.created_ms < $2",
                        &[&lo, &hi],
                    )
                    .await?;
                (r.get(0), r.get(1))
            };
            let before = format!(
                "DELETE FROM jobs j WHERE j.created_ms >= {lo} AND j.created_ms < {hi}
                   AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.job_id = j.id);
                 UPDATE jobs SET output_pruned = TRUE
                   WHERE created_ms >= {lo} AND created_ms < {hi} AND NOT output_pruned;"
            );
            self.parts.drop(&mut c, &OUTPUT, n, Some(&before)).await?;
            stats.jobs_deleted += usize::try_from(deleted).unwrap_or(0);
            stats.outputs_deleted += usize::try_from(pruned).unwrap_or(0);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl JobStore for PgJobs {
    async fn put_script(&self, tenant: &str, s: &Script) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        let args = serde_json::to_string(&s.args).unwrap_or_default();
        let timeout = i64::try_from(s.timeout_s).unwrap_or(i64::MAX);
        c.execute(
            "INSERT INTO scripts (tenant_id, name, body, interpreter, args, timeout_s, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant_id, name) DO UPDATE SET body = excluded.body,
               interpreter = excluded.interpreter, args = excluded.args,
               timeout_s = excluded.timeout_s, updated_ms = excluded.updated_ms",
            &[
                &tenant,
                &s.name,
                &s.body,
                &s.interpreter,
                &args,
                &timeout,
                &s.updated_ms,
            ],
        )
        .await?;
        Ok(())
    }

    async fn script(&self, tenant: &str, name: &str) -> Result<Option<Script>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT name, body, interpreter, args, timeout_s, updated_ms FROM scripts
             WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?
        .as_ref()
        .map(script_row))
    }

    async fn scripts(&self, tenant: &str) -> Result<Vec<Script>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT name, body, interpreter, args, timeout_s, updated_ms FROM scripts
             WHERE tenant_id = $1 ORDER BY name",
            &[&tenant],
        )
        .await?
        .iter()
        .map(script_row)
        .collect())
    }

    async fn delete_script(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.execute(
            "DELETE FROM scripts WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?
            > 0)
    }

    async fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        nonce: &[u8],
        sealed: &[u8],
        now: i64,
    ) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO secrets (tenant_id, name, nonce, sealed, updated_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, name) DO UPDATE SET nonce = excluded.nonce,
               sealed = excluded.sealed, updated_ms = excluded.updated_ms",
            &[&tenant, &name, &nonce, &sealed, &now],
        )
        .await?;
        Ok(())
    }

    async fn secret(&self, tenant: &str, name: &str) -> Result<Option<Sealed>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT nonce, sealed FROM secrets WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
    }

    async fn secrets(&self, tenant: &str) -> Result<Vec<(String, i64)>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT name, updated_ms FROM secrets WHERE tenant_id = $1 ORDER BY name",
            &[&tenant],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    async fn delete_secret(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.execute(
            "DELETE FROM secrets WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?
            > 0)
    }

    async fn create_jobs(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        label: &str,
        spec: &JobSpec,
        now: i64,
        max_active: usize,
    ) -> Result<Result<Vec<JobRow>, usize>, StorageError> {
        // The day their output goes to, before the transaction.
        self.parts.ensure(&self.pool, &OUTPUT, &[now]).await?;
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&CREATE_LOCK, &tenant],
        )
        .await?;
        let active: i64 = tx
            .query_one(
                "SELECT count(*) FROM jobs WHERE tenant_id = $1
                 AND status IN ('pending', 'queued', 'running')
                 AND NOT (status = 'pending' AND cancel_requested)",
                &[&tenant],
            )
            .await?
            .get(0);
        let active = usize::try_from(active).unwrap_or(usize::MAX);
        if active.saturating_add(jobs.len()) > max_active {
            return Ok(Err(active));
        }
        let spec = serde_json::to_string(spec).unwrap_or_default();
        let mut made = Vec::with_capacity(jobs.len());
        for (id, runner) in jobs {
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO jobs (id, tenant_id, runner_id, label, spec, status, created_ms)
                         VALUES ($1, $2, $3, $4, $5, 'pending', $6) RETURNING {JOB_COLUMNS}"
                    ),
                    &[id, &tenant, runner, &label, &spec, &now],
                )
                .await?;
            made.push(job_row(&row));
        }
        tx.commit().await?;
        Ok(Ok(made))
    }

    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRow>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2"),
            &[&tenant, &id],
        )
        .await?
        .as_ref()
        .map(job_row))
    }

    async fn job_by_seq(&self, runner: &str, seq: i64) -> Result<Option<JobRow>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE seq = $1 AND runner_id = $2"),
            &[&seq, &runner],
        )
        .await?
        .as_ref()
        .map(job_row))
    }

    async fn jobs(
        &self,
        tenant: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRow>, StorageError> {
        let c = self.pool.get().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(c.query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE tenant_id = $1 AND ($2::TEXT IS NULL OR runner_id = $2)
                 ORDER BY seq DESC LIMIT $3"
            ),
            &[&tenant, &runner, &limit],
        )
        .await?
        .iter()
        .map(job_row)
        .collect())
    }

    async fn open_jobs(&self, runner: &str) -> Result<Vec<JobRow>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE runner_id = $1
                 AND status IN ('pending', 'queued', 'running') ORDER BY seq"
            ),
            &[&runner],
        )
        .await?
        .iter()
        .map(job_row)
        .collect())
    }

    async fn runners_with_open_jobs(
        &self,
        runners: &[String],
    ) -> Result<Vec<String>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT DISTINCT runner_id FROM jobs WHERE runner_id = ANY($1)
             AND status IN ('pending', 'queued', 'running')",
            &[&runners],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn job_states(
        &self,
        tenant: &str,
        ids: &[String],
    ) -> Result<Vec<JobState>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT id, status, exit_code, started_ms, finished_ms FROM jobs
             WHERE id = ANY($2) AND tenant_id = $1",
            &[&tenant, &ids],
        )
        .await?
        .iter()
        .map(|r| JobState {
            id: r.get(0),
            status: r.get(1),
            exit_code: r.get(2),
            started_ms: r.get(3),
            finished_ms: r.get(4),
        })
        .collect())
    }

    async fn resumable(&self, runner: &str) -> Result<Vec<(i64, i64)>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT seq, stored_bytes FROM jobs WHERE runner_id = $1
             AND (status IN ('queued', 'running')
                  OR (output_bytes IS NOT NULL AND stored_bytes < output_bytes))",
            &[&runner],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    async fn accepted(&self, id: &str, state: &str, now: i64) -> Result<(), StorageError> {
        let status = if state == "queued" {
            "queued"
        } else {
            "running"
        };
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE jobs SET status = $2,
               started_ms = CASE WHEN $2 = 'running' THEN coalesce(started_ms, $3) ELSE started_ms END
             WHERE id = $1 AND status IN ('pending', 'queued', 'running')",
            &[&id, &status, &now],
        )
        .await?;
        Ok(())
    }

    async fn finish(
        &self,
        id: &str,
        status: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.execute(
            "UPDATE jobs SET status = $2, reason = $3, finished_ms = $4,
               output_bytes = coalesce(output_bytes, stored_bytes)
             WHERE id = $1 AND status IN ('pending', 'queued', 'running')",
            &[&id, &status, &reason, &now],
        )
        .await?
            > 0)
    }

    async fn record_result(&self, runner: &str, r: &JobResult) -> Result<bool, StorageError> {
        let started = (r.started_ms > 0).then(|| i64::try_from(r.started_ms).unwrap_or(i64::MAX));
        let finished = i64::try_from(r.finished_ms).unwrap_or(i64::MAX);
        let output = i64::try_from(r.output_bytes).unwrap_or(i64::MAX);
        let c = self.pool.get().await?;
        Ok(c.execute(
            "UPDATE jobs SET status = $3, exit_code = $4, signal = $5, reason = $6,
               started_ms = coalesce($7, started_ms), finished_ms = $8,
               output_bytes = greatest($9, stored_bytes)
             WHERE id = $1 AND runner_id = $2 AND status IN ('pending', 'queued', 'running')",
            &[
                &r.job_id,
                &runner,
                &r.status,
                &r.exit_code,
                &r.signal,
                &r.reason,
                &started,
                &finished,
                &output,
            ],
        )
        .await?
            > 0)
    }

    async fn request_cancel(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.execute(
            "UPDATE jobs SET cancel_requested = TRUE WHERE tenant_id = $1 AND id = $2
             AND status IN ('pending', 'queued', 'running')",
            &[&tenant, &id],
        )
        .await?
            > 0)
    }

    async fn store_output(
        &self,
        rows: Arc<[(i64, OutputRow)]>,
    ) -> Result<Vec<(i64, i64)>, StorageError> {
        match self.store_once(&rows).await {
            Err(WriteError::NoPartition) => {
                // The job's day was made at its creation; one dropped since
                // (retention on another replica) is made again, once.
                self.parts.forget_all();
                let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
                let days: Vec<i64> = {
                    let c = self.pool.get().await?;
                    c.query(
                        "SELECT DISTINCT created_ms FROM jobs WHERE seq = ANY($1)",
                        &[&seqs],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
                };
                self.parts.ensure(&self.pool, &OUTPUT, &days).await?;
                Ok(self.store_once(&rows).await?)
            }
            r => Ok(r?),
        }
    }

    async fn output(
        &self,
        seq: i64,
        from: i64,
        limit: usize,
    ) -> Result<Vec<OutputRow>, StorageError> {
        let c = self.pool.get().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(c.query(
            "SELECT \"offset\", tag, ts_ms, data, step FROM job_output
             WHERE seq = $1 AND \"offset\" >= $2 ORDER BY \"offset\" LIMIT $3",
            &[&seq, &from, &limit],
        )
        .await?
        .into_iter()
        .map(|r| {
            let offset: i64 = r.get(0);
            let data: Vec<u8> = r.get(3);
            OutputRow {
                end: offset + tether::protocol::JOB_RECORD_HEADER as i64 + data.len() as i64,
                offset,
                tag: u8::try_from(r.get::<_, i16>(1)).unwrap_or(0),
                ts_ms: r.get(2),
                data,
                step: u8::try_from(r.get::<_, i16>(4)).unwrap_or(0),
            }
        })
        .collect())
    }

    async fn retain(
        &self,
        cutoff_ms: i64,
        max_tenant_bytes: u64,
    ) -> Result<RetainStats, StorageError> {
        let mut stats = RetainStats::default();
        // Today's and tomorrow's partitions, made ahead.
        let now = crate::common::clock::now_ms();
        self.parts
            .ensure(&self.pool, &OUTPUT, &[now, now.saturating_add(DAY_MS)])
            .await?;
        self.retain_partitions(cutoff_ms, &mut stats).await?;
        // Then old jobs of days that are not all old, one by one.
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let old: Vec<(i64, i64, bool)> = tx
            .query(
                &format!(
                    "SELECT j.seq, j.created_ms, d.job_id IS NOT NULL FROM jobs j
                     LEFT JOIN deployments d ON d.job_id = j.id
                     WHERE j.finished_ms < $1 AND j.status IN {FINAL_SQL}
                       AND (d.job_id IS NULL OR NOT j.output_pruned)
                     LIMIT $2"
                ),
                &[&cutoff_ms, &RETAIN_BATCH],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        for (seq, job_ms, deploy) in old {
            tx.execute(
                "DELETE FROM job_output WHERE job_ms = $2 AND seq = $1",
                &[&seq, &job_ms],
            )
            .await?;
            if deploy {
                tx.execute(
                    "UPDATE jobs SET output_pruned = TRUE WHERE seq = $1",
                    &[&seq],
                )
                .await?;
                stats.outputs_deleted += 1;
            } else {
                tx.execute("DELETE FROM jobs WHERE seq = $1", &[&seq])
                    .await?;
                stats.jobs_deleted += 1;
            }
        }
        let limit = i64::try_from(max_tenant_bytes).unwrap_or(i64::MAX);
        let over: Vec<(String, i64)> = tx
            .query(
                "SELECT tenant_id, sum(stored_bytes)::BIGINT FROM jobs WHERE NOT output_pruned
                 GROUP BY tenant_id HAVING sum(stored_bytes) > $1::BIGINT",
                &[&limit],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (tenant, mut total) in over {
            let oldest: Vec<(i64, i64, i64)> = tx
                .query(
                    &format!(
                        "SELECT seq, created_ms, stored_bytes FROM jobs
                         WHERE tenant_id = $1 AND NOT output_pruned AND status IN {FINAL_SQL}
                         AND (output_bytes IS NULL OR stored_bytes >= output_bytes)
                         ORDER BY finished_ms, seq"
                    ),
                    &[&tenant],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            for (seq, job_ms, bytes) in oldest {
                if total <= limit {
                    break;
                }
                tx.execute(
                    "DELETE FROM job_output WHERE job_ms = $2 AND seq = $1",
                    &[&seq, &job_ms],
                )
                .await?;
                tx.execute(
                    "UPDATE jobs SET output_pruned = TRUE WHERE seq = $1",
                    &[&seq],
                )
                .await?;
                total -= bytes;
                stats.outputs_deleted += 1;
            }
        }
        tx.commit().await?;
        Ok(stats)
    }

    async fn put_app(&self, tenant: &str, a: &StoredApp) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO apps (tenant_id, name, def, updated_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, name) DO UPDATE SET def = excluded.def,
               updated_ms = excluded.updated_ms",
            &[&tenant, &a.name, &a.def.to_string(), &a.updated_ms],
        )
        .await?;
        Ok(())
    }

    async fn app(&self, tenant: &str, name: &str) -> Result<Option<StoredApp>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT name, def, updated_ms FROM apps WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?
        .as_ref()
        .map(app_row))
    }

    async fn apps(&self, tenant: &str) -> Result<Vec<StoredApp>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT name, def, updated_ms FROM apps WHERE tenant_id = $1 ORDER BY name",
            &[&tenant],
        )
        .await?
        .iter()
        .map(app_row)
        .collect())
    }

    async fn delete_app(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.execute(
            "DELETE FROM apps WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &name],
        )
        .await?
            > 0)
    }

    async fn add_deployment(&self, tenant: &str, d: &Deployment) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO deployments (job_id, tenant_id, app, image, kind, git_ref, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &d.id,
                &tenant,
                &d.app,
                &d.image,
                &d.kind,
                &d.git_ref,
                &d.created_ms,
            ],
        )
        .await?;
        Ok(())
    }

    async fn deployments(
        &self,
        tenant: &str,
        app: &str,
        limit: usize,
    ) -> Result<Vec<(Deployment, Option<JobRow>)>, StorageError> {
        let c = self.pool.get().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .query(
                &format!(
                    "SELECT d.job_id, d.app, d.image, d.kind, d.git_ref, d.created_ms, j.seq IS NOT NULL,
                            {}
                     FROM deployments d LEFT JOIN jobs j ON j.id = d.job_id AND j.tenant_id = d.tenant_id
                     WHERE d.tenant_id = $1 AND d.app = $2
                     ORDER BY d.created_ms DESC, d.seq DESC LIMIT $3",
                    JOB_COLUMNS
                        .split(", ")
                        .map(|c| format!("j.{}", c.trim()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &[&tenant, &app, &limit],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let d = Deployment {
                id: r.get(0),
                app: r.get(1),
                image: r.get(2),
                kind: r.get(3),
                git_ref: r.get(4),
                created_ms: r.get(5),
            };
            let job = r.get::<_, bool>(6).then(|| job_row_at(&r, 7));
            out.push((d, job));
        }
        Ok(out)
    }
}

/// A [`JobRow`] from the columns of `JOB_COLUMNS` starting at `at`.
fn job_row_at(r: &Row, at: usize) -> JobRow {
    let spec: &str = r.get(at + 5);
    JobRow {
        seq: r.get(at),
        id: r.get(at + 1),
        tenant_id: r.get(at + 2),
        runner_id: r.get(at + 3),
        label: r.get(at + 4),
        spec: serde_json::from_str(spec).unwrap_or(JobSpec {
            program: String::new(),
            args: Vec::new(),
            script: None,
            env: Vec::new(),
            secrets: Vec::new(),
            timeout_s: 0,
            deploy: None,
            signed: BTreeMap::new(),
        }),
        status: r.get(at + 6),
        exit_code: r.get(at + 7),
        signal: r.get(at + 8),
        reason: r.get(at + 9),
        created_ms: r.get(at + 10),
        started_ms: r.get(at + 11),
        finished_ms: r.get(at + 12),
        stored_bytes: r.get(at + 13),
        output_bytes: r.get(at + 14),
        cancel_requested: r.get(at + 15),
        output_pruned: r.get(at + 16),
    }
}
