//! [`FleetStore`] on PostgreSQL (as `sqlite/fleet.rs`): labels and
//! proposals, fleet policy, job deadlines, rollouts, schedules and their
//! runs. A runner's label changes run under a transaction-scoped advisory
//! lock on that runner (SQLite's IMMEDIATE transaction, across replicas);
//! a schedule's occurrence is claimed by its unique key, so one replica
//! runs it.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};

use crate::db::fleet::*;
use crate::db::StorageError;

/// The advisory lock class of a runner's labels ("flee" in ASCII), with
/// the runner id's hash as the second key.
const LABELS_LOCK: i32 = 0x666c_6565;

pub struct PgFleet {
    pool: Pool,
}

impl PgFleet {
    pub(super) fn new(pool: Pool) -> PgFleet {
        PgFleet { pool }
    }
}

async fn read_labels(
    c: &impl GenericClient,
    table: &str,
    tenant: &str,
    runner: &str,
) -> Result<Labels, StorageError> {
    let rows = c
        .query(
            &format!("SELECT key, value FROM {table} WHERE tenant_id = $1 AND runner_id = $2"),
            &[&tenant, &runner],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn lock_runner(
    tx: &deadpool_postgres::Transaction<'_>,
    runner: &str,
) -> Result<(), StorageError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LABELS_LOCK, &runner],
    )
    .await?;
    Ok(())
}

async fn upsert_label(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &str,
    tenant: &str,
    runner: &str,
    k: &str,
    v: &str,
) -> Result<(), StorageError> {
    tx.execute(
        &format!(
            "INSERT INTO {table} (tenant_id, runner_id, key, value) VALUES ($1, $2, $3, $4)
             ON CONFLICT (runner_id, key) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,
                 value = EXCLUDED.value"
        ),
        &[&tenant, &runner, &k, &v],
    )
    .await?;
    Ok(())
}

fn rollout_row(r: &tokio_postgres::Row) -> RolloutRow {
    RolloutRow {
        id: r.get(0),
        tenant_id: r.get(1),
        state: r.get(2),
        created_ms: r.get(3),
        updated_ms: r.get(4),
        body: r.get(5),
        driver: r.get(6),
        rev: r.get(7),
    }
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl FleetStore for PgFleet {
    async fn tenant_labels(&self, tenant: &str) -> Result<HashMap<String, Labels>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT runner_id, key, value FROM labels WHERE tenant_id = $1",
                &[&tenant],
            )
            .await?;
        let mut out = HashMap::<String, Labels>::new();
        for r in rows {
            out.entry(r.get(0)).or_default().insert(r.get(1), r.get(2));
        }
        Ok(out)
    }

    async fn labels_where(
        &self,
        tenant: &str,
        must: &[HasLabel],
    ) -> Result<HashMap<String, Labels>, StorageError> {
        use tokio_postgres::types::ToSql;
        // The first label through labels_by_value, the others checked per
        // candidate on the primary key (as on SQLite).
        let mut sql = String::from(
            "SELECT runner_id, key, value FROM labels WHERE tenant_id = $1 AND runner_id IN (
             SELECT a.runner_id FROM labels a WHERE a.tenant_id = $1",
        );
        let mut args: Vec<&(dyn ToSql + Sync)> = vec![&tenant];
        for (n, m) in must.iter().enumerate() {
            let t = if n == 0 { "a" } else { "b" };
            if n > 0 {
                sql.push_str(" AND EXISTS (SELECT 1 FROM labels b WHERE b.runner_id = a.runner_id");
            }
            args.push(&m.key);
            sql.push_str(&format!(" AND {t}.key = ${}", args.len()));
            if let Some(values) = &m.values {
                args.push(values);
                sql.push_str(&format!(" AND {t}.value = ANY(${})", args.len()));
            }
            if n > 0 {
                sql.push(')');
            }
        }
        sql.push(')');
        let c = self.pool.get().await?;
        let mut out = HashMap::<String, Labels>::new();
        for r in c.query(&sql, &args).await? {
            out.entry(r.get(0)).or_default().insert(r.get(1), r.get(2));
        }
        Ok(out)
    }

    async fn labels(&self, tenant: &str, runner: &str) -> Result<(Labels, Labels), StorageError> {
        let c = self.pool.get().await?;
        Ok((
            read_labels(&c, "labels", tenant, runner).await?,
            read_labels(&c, "proposals", tenant, runner).await?,
        ))
    }

    async fn replace_labels(
        &self,
        tenant: &str,
        runner: &str,
        labels: &Labels,
    ) -> Result<(), StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        lock_runner(&tx, runner).await?;
        tx.execute("DELETE FROM labels WHERE runner_id = $1", &[&runner])
            .await?;
        for (k, v) in labels {
            upsert_label(&tx, "labels", tenant, runner, k, v).await?;
        }
        // A proposal the operator has now set the same way is settled.
        tx.execute(
            "DELETE FROM proposals p WHERE p.runner_id = $1 AND EXISTS (SELECT 1 FROM labels l
             WHERE l.runner_id = p.runner_id AND l.key = p.key AND l.value = p.value)",
            &[&runner],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn propose(
        &self,
        tenant: &str,
        runner: &str,
        proposed: &Labels,
        policy: &Policy,
    ) -> Result<(), StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        lock_runner(&tx, runner).await?;
        let current = read_labels(&tx, "labels", tenant, runner).await?;
        tx.execute("DELETE FROM proposals WHERE runner_id = $1", &[&runner])
            .await?;
        for (k, v) in proposed {
            if current.get(k) == Some(v) {
                continue;
            }
            let table =
                if policy.accepts(k) && (current.len() < MAX_LABELS || current.contains_key(k)) {
                    "labels"
                } else {
                    "proposals"
                };
            upsert_label(&tx, table, tenant, runner, k, v).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn accept(
        &self,
        tenant: &str,
        runner: &str,
        keys: Option<&[String]>,
    ) -> Result<Labels, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        lock_runner(&tx, runner).await?;
        let proposed = read_labels(&tx, "proposals", tenant, runner).await?;
        let mut labels = read_labels(&tx, "labels", tenant, runner).await?;
        for (k, v) in proposed {
            if keys.is_some_and(|ks| !ks.contains(&k)) {
                continue;
            }
            if labels.len() >= MAX_LABELS && !labels.contains_key(&k) {
                continue;
            }
            upsert_label(&tx, "labels", tenant, runner, &k, &v).await?;
            tx.execute(
                "DELETE FROM proposals WHERE runner_id = $1 AND key = $2",
                &[&runner, &k],
            )
            .await?;
            labels.insert(k, v);
        }
        tx.commit().await?;
        Ok(labels)
    }

    async fn policy(&self, tenant: &str) -> Result<Policy, StorageError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT job_deadline_s, auto_accept FROM fleet_policy WHERE tenant_id = $1",
                &[&tenant],
            )
            .await?;
        Ok(match row {
            None => Policy::default(),
            Some(r) => {
                let d: Option<i64> = r.get(0);
                let auto: String = r.get(1);
                Policy {
                    job_deadline_s: d.and_then(|d| u64::try_from(d).ok()),
                    auto_accept: serde_json::from_str(&auto).map_err(|e| {
                        StorageError::Corrupt(format!("fleet_policy.auto_accept: {e}"))
                    })?,
                }
            }
        })
    }

    async fn set_policy(&self, tenant: &str, p: &Policy) -> Result<(), StorageError> {
        let auto = serde_json::to_string(&p.auto_accept).unwrap_or_else(|_| "[]".into());
        let deadline = p
            .job_deadline_s
            .map(|d| i64::try_from(d).unwrap_or(i64::MAX));
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO fleet_policy (tenant_id, job_deadline_s, auto_accept) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO UPDATE SET job_deadline_s = EXCLUDED.job_deadline_s,
                 auto_accept = EXCLUDED.auto_accept",
            &[&tenant, &deadline, &auto],
        )
        .await?;
        Ok(())
    }

    async fn add_deadlines(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        expires_ms: i64,
    ) -> Result<(), StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        for (job, runner) in jobs {
            tx.execute(
                "INSERT INTO job_deadlines (job_id, tenant_id, runner_id, expires_ms)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (job_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,
                     runner_id = EXCLUDED.runner_id, expires_ms = EXCLUDED.expires_ms",
                &[job, &tenant, runner, &expires_ms],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn due_deadlines(
        &self,
        now: i64,
        n: usize,
    ) -> Result<Vec<(String, String, String, i64)>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT job_id, tenant_id, runner_id, expires_ms FROM job_deadlines
                 WHERE expires_ms <= $1 ORDER BY expires_ms LIMIT $2",
                &[&now, &limit(n)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    async fn drop_deadline(&self, job: &str) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        c.execute("DELETE FROM job_deadlines WHERE job_id = $1", &[&job])
            .await?;
        Ok(())
    }

    async fn save_rollout(&self, r: &RolloutRow) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO rollouts
                 (id, tenant_id, state, created_ms, updated_ms, body, driver, rev)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,
                 state = EXCLUDED.state, created_ms = EXCLUDED.created_ms,
                 updated_ms = EXCLUDED.updated_ms, body = EXCLUDED.body,
                 driver = EXCLUDED.driver, rev = EXCLUDED.rev",
            &[
                &r.id,
                &r.tenant_id,
                &r.state,
                &r.created_ms,
                &r.updated_ms,
                &r.body,
                &r.driver,
                &r.rev,
            ],
        )
        .await?;
        Ok(())
    }

    async fn update_rollout(&self, r: &RolloutRow) -> Result<bool, StorageError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE rollouts SET state = $3, updated_ms = $4, body = $5, driver = $6,
                     rev = rev + 1
                 WHERE id = $1 AND rev = $2",
                &[&r.id, &r.rev, &r.state, &r.updated_ms, &r.body, &r.driver],
            )
            .await?;
        Ok(n == 1)
    }

    async fn open_rollouts(&self) -> Result<Vec<(String, String, i64)>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT tenant_id, id, rev FROM rollouts WHERE driver IS NOT NULL
                 ORDER BY created_ms",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    async fn rollout(&self, tenant: &str, id: &str) -> Result<Option<RolloutRow>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT id, tenant_id, state, created_ms, updated_ms, body, driver, rev FROM rollouts
             WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &id],
        )
        .await?
        .map(|r| rollout_row(&r)))
    }

    async fn rollouts(&self, tenant: &str, n: usize) -> Result<Vec<RolloutRow>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT id, tenant_id, state, created_ms, updated_ms, body, driver, rev
                 FROM rollouts WHERE tenant_id = $1 ORDER BY created_ms DESC LIMIT $2",
                &[&tenant, &limit(n)],
            )
            .await?;
        Ok(rows.iter().map(rollout_row).collect())
    }

    async fn put_schedule(
        &self,
        tenant: &str,
        name: &str,
        body: &str,
        start: i64,
    ) -> Result<(), StorageError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO schedules (tenant_id, name, body, last_occurrence) VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id, name) DO UPDATE SET body = EXCLUDED.body,
                 last_occurrence = GREATEST(schedules.last_occurrence, EXCLUDED.last_occurrence)",
            &[&tenant, &name, &body, &start],
        )
        .await?;
        Ok(())
    }

    async fn delete_schedule(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "DELETE FROM schedules WHERE tenant_id = $1 AND name = $2",
                &[&tenant, &name],
            )
            .await?;
        tx.execute(
            "DELETE FROM schedule_runs WHERE tenant_id = $1 AND schedule = $2",
            &[&tenant, &name],
        )
        .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    async fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRow>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT tenant_id, name, body, last_occurrence FROM schedules
                 WHERE $1::TEXT IS NULL OR tenant_id = $1 ORDER BY tenant_id, name",
                &[&tenant],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ScheduleRow {
                tenant_id: r.get(0),
                name: r.get(1),
                body: r.get(2),
                last_occurrence: r.get(3),
            })
            .collect())
    }

    async fn claim_occurrence(
        &self,
        tenant: &str,
        schedule: &str,
        occurrence: i64,
        status: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "INSERT INTO schedule_runs (tenant_id, schedule, occurrence_ms, status, at_ms)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&tenant, &schedule, &occurrence, &status, &now],
            )
            .await?;
        tx.execute(
            "UPDATE schedules SET last_occurrence = GREATEST(last_occurrence, $3)
             WHERE tenant_id = $1 AND name = $2",
            &[&tenant, &schedule, &occurrence],
        )
        .await?;
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn set_run_jobs(
        &self,
        tenant: &str,
        schedule: &str,
        occurrence: i64,
        status: &str,
        jobs: &[String],
    ) -> Result<(), StorageError> {
        let jobs = serde_json::to_string(jobs).unwrap_or_else(|_| "[]".into());
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE schedule_runs SET status = $4, jobs = $5
             WHERE tenant_id = $1 AND schedule = $2 AND occurrence_ms = $3",
            &[&tenant, &schedule, &occurrence, &status, &jobs],
        )
        .await?;
        Ok(())
    }

    async fn runs(
        &self,
        tenant: &str,
        schedule: &str,
        n: usize,
    ) -> Result<Vec<RunRow>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT occurrence_ms, status, at_ms, jobs FROM schedule_runs
                 WHERE tenant_id = $1 AND schedule = $2 ORDER BY occurrence_ms DESC LIMIT $3",
                &[&tenant, &schedule, &limit(n)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let jobs: String = r.get(3);
                RunRow {
                    occurrence_ms: r.get(0),
                    status: r.get(1),
                    at_ms: r.get(2),
                    jobs: serde_json::from_str(&jobs).unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn desired_versions(
        &self,
        tenant: &str,
    ) -> Result<HashMap<String, String>, StorageError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT runner_id, version FROM runner_versions WHERE tenant_id = $1",
                &[&tenant],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn desired_version(
        &self,
        tenant: &str,
        runner: &str,
    ) -> Result<Option<String>, StorageError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT version FROM runner_versions WHERE tenant_id = $1 AND runner_id = $2",
            &[&tenant, &runner],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn set_desired_version(
        &self,
        tenant: &str,
        runners: &[String],
        version: Option<&str>,
        now: i64,
    ) -> Result<(), StorageError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        for r in runners {
            match version {
                Some(v) => {
                    tx.execute(
                        "INSERT INTO runner_versions (tenant_id, runner_id, version, set_ms)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (runner_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,
                             version = EXCLUDED.version, set_ms = EXCLUDED.set_ms",
                        &[&tenant, r, &v, &now],
                    )
                    .await?
                }
                None => {
                    tx.execute(
                        "DELETE FROM runner_versions WHERE tenant_id = $1 AND runner_id = $2",
                        &[&tenant, r],
                    )
                    .await?
                }
            };
        }
        tx.commit().await?;
        Ok(())
    }
}
