//! Fleet data at rest in SQLite (`<data-dir>/fleet.db`): the
//! [`FleetStore`](crate::db::fleet::FleetStore) of the embedded backend
//! (tables and their meaning: `db/fleet.rs`). The schema is [`MIGRATIONS`]
//! (`migrate.rs`); this file has no other tables.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::migrate::{migrate, Migration, Step};
use crate::db::fleet::*;
use crate::db::StorageError;

/// fleet.db's schema, in order (`migrate.rs`; files of earlier builds
/// counted these same steps in `user_version`).
const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "labels, proposals, policy, deadlines",
        step: Step::Sql(STEP_1),
    },
    Migration {
        name: "rollouts",
        step: Step::Sql(STEP_2),
    },
    Migration {
        name: "schedules and their runs",
        step: Step::Sql(STEP_3),
    },
    Migration {
        name: "labels by value",
        step: Step::Sql(STEP_4),
    },
    Migration {
        name: "runner versions",
        step: Step::Sql(STEP_5),
    },
    Migration {
        name: "rollouts' driver state",
        step: Step::Sql(STEP_6),
    },
];

const STEP_1: &str = "CREATE TABLE labels (
         tenant_id TEXT NOT NULL, runner_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
         PRIMARY KEY (runner_id, key)) WITHOUT ROWID;
     CREATE INDEX labels_tenant ON labels (tenant_id);
     CREATE TABLE proposals (
         tenant_id TEXT NOT NULL, runner_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
         PRIMARY KEY (runner_id, key)) WITHOUT ROWID;
     CREATE TABLE fleet_policy (
         tenant_id TEXT PRIMARY KEY, job_deadline_s INTEGER, auto_accept TEXT NOT NULL DEFAULT '[]');
     CREATE TABLE job_deadlines (
         job_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, runner_id TEXT NOT NULL,
         expires_ms INTEGER NOT NULL);
     CREATE INDEX job_deadlines_expiry ON job_deadlines (expires_ms);";
const STEP_2: &str = "CREATE TABLE rollouts (
         id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, state TEXT NOT NULL,
         created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, body TEXT NOT NULL);
     CREATE INDEX rollouts_tenant ON rollouts (tenant_id, created_ms);";
const STEP_3: &str = "CREATE TABLE schedules (
         tenant_id TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
         last_occurrence INTEGER NOT NULL,
         PRIMARY KEY (tenant_id, name)) WITHOUT ROWID;
     CREATE TABLE schedule_runs (
         tenant_id TEXT NOT NULL, schedule TEXT NOT NULL, occurrence_ms INTEGER NOT NULL,
         status TEXT NOT NULL, at_ms INTEGER NOT NULL, jobs TEXT NOT NULL DEFAULT '[]',
         PRIMARY KEY (tenant_id, schedule, occurrence_ms)) WITHOUT ROWID;";
/// A selector's `k=v` finds its runners without reading every label.
const STEP_4: &str = "CREATE INDEX labels_by_value ON labels (tenant_id, key, value);";
/// A runner's own desired version (the update rollout sets it).
const STEP_5: &str = "CREATE TABLE runner_versions (
         tenant_id TEXT NOT NULL, runner_id TEXT PRIMARY KEY, version TEXT NOT NULL,
         set_ms INTEGER NOT NULL);
     CREATE INDEX runner_versions_tenant ON runner_versions (tenant_id);";
/// A rollout's driver state while it has work left, and the revision its
/// writers compare and set (`fleet/rollout.rs`); the open ones indexed.
const STEP_6: &str = "ALTER TABLE rollouts ADD COLUMN driver TEXT;
     ALTER TABLE rollouts ADD COLUMN rev INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX rollouts_open ON rollouts (created_ms) WHERE driver IS NOT NULL;";

pub struct SqliteFleet {
    conn: Mutex<Connection>,
}

impl SqliteFleet {
    pub fn open(path: &Path) -> Result<SqliteFleet, StorageError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::setup(conn)
    }

    #[doc(hidden)] // a test seam
    pub fn open_in_memory() -> Result<SqliteFleet, StorageError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<SqliteFleet, StorageError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        migrate(&mut conn, "fleet.db", MIGRATIONS)?;
        Ok(SqliteFleet {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read_labels(
    c: &Connection,
    table: &str,
    tenant: &str,
    runner: &str,
) -> Result<Labels, StorageError> {
    let mut st = c.prepare_cached(&format!(
        "SELECT key, value FROM {table} WHERE tenant_id = ?1 AND runner_id = ?2"
    ))?;
    let rows = st.query_map(params![tenant, runner], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl SqliteFleet {
    pub fn tenant_labels(
        &self,
        tenant: &str,
    ) -> Result<std::collections::HashMap<String, Labels>, StorageError> {
        let c = self.lock();
        let mut st =
            c.prepare_cached("SELECT runner_id, key, value FROM labels WHERE tenant_id = ?1")?;
        let mut out = std::collections::HashMap::<String, Labels>::new();
        let mut rows = st.query(params![tenant])?;
        while let Some(r) = rows.next()? {
            out.entry(r.get(0)?)
                .or_default()
                .insert(r.get(1)?, r.get(2)?);
        }
        Ok(out)
    }

    /// One statement made for `must` (its shape varies; not kept): the
    /// first label found through `labels_by_value`, each other one checked
    /// per candidate on the primary key, then the candidates' labels by
    /// primary key (`+tenant_id`: not by the tenant's index, which would
    /// read every label of the tenant).
    pub fn labels_where(
        &self,
        tenant: &str,
        must: &[HasLabel],
    ) -> Result<std::collections::HashMap<String, Labels>, StorageError> {
        use std::fmt::Write;
        let mut sql = String::from(
            "SELECT runner_id, key, value FROM labels WHERE +tenant_id = ?1 AND runner_id IN (
             SELECT a.runner_id FROM labels a WHERE a.tenant_id = ?1",
        );
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&tenant];
        for (n, m) in must.iter().enumerate() {
            let t = if n == 0 { "a" } else { "b" };
            if n > 0 {
                sql.push_str(" AND EXISTS (SELECT 1 FROM labels b WHERE b.runner_id = a.runner_id");
            }
            args.push(&m.key);
            let _ = write!(sql, " AND {t}.key = ?{}", args.len());
            if let Some(values) = &m.values {
                let _ = write!(sql, " AND {t}.value IN (");
                for (i, v) in values.iter().enumerate() {
                    args.push(v);
                    let _ = write!(sql, "{}?{}", if i > 0 { "," } else { "" }, args.len());
                }
                sql.push(')');
            }
            if n > 0 {
                sql.push(')');
            }
        }
        sql.push(')');
        let c = self.lock();
        let mut st = c.prepare(&sql)?;
        let mut out = std::collections::HashMap::<String, Labels>::new();
        let mut rows = st.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            out.entry(r.get(0)?)
                .or_default()
                .insert(r.get(1)?, r.get(2)?);
        }
        Ok(out)
    }

    pub fn labels(&self, tenant: &str, runner: &str) -> Result<(Labels, Labels), StorageError> {
        let c = self.lock();
        Ok((
            read_labels(&c, "labels", tenant, runner)?,
            read_labels(&c, "proposals", tenant, runner)?,
        ))
    }

    pub fn replace_labels(
        &self,
        tenant: &str,
        runner: &str,
        labels: &Labels,
    ) -> Result<(), StorageError> {
        let mut c = self.lock();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM labels WHERE runner_id = ?1", params![runner])?;
        for (k, v) in labels {
            tx.execute(
                "INSERT INTO labels (tenant_id, runner_id, key, value) VALUES (?1, ?2, ?3, ?4)",
                params![tenant, runner, k, v],
            )?;
        }
        // A proposal the operator has now set the same way is settled.
        tx.execute(
            "DELETE FROM proposals WHERE runner_id = ?1 AND EXISTS (SELECT 1 FROM labels l
             WHERE l.runner_id = proposals.runner_id AND l.key = proposals.key AND l.value = proposals.value)",
            params![runner],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn propose(
        &self,
        tenant: &str,
        runner: &str,
        proposed: &Labels,
        policy: &Policy,
    ) -> Result<(), StorageError> {
        let mut c = self.lock();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = read_labels(&tx, "labels", tenant, runner)?;
        tx.execute(
            "DELETE FROM proposals WHERE runner_id = ?1",
            params![runner],
        )?;
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
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO {table} (tenant_id, runner_id, key, value) VALUES (?1, ?2, ?3, ?4)"
                ),
                params![tenant, runner, k, v],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn accept(
        &self,
        tenant: &str,
        runner: &str,
        keys: Option<&[String]>,
    ) -> Result<Labels, StorageError> {
        let mut c = self.lock();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let proposed = read_labels(&tx, "proposals", tenant, runner)?;
        let mut labels = read_labels(&tx, "labels", tenant, runner)?;
        for (k, v) in proposed {
            if keys.is_some_and(|ks| !ks.contains(&k)) {
                continue;
            }
            if labels.len() >= MAX_LABELS && !labels.contains_key(&k) {
                continue;
            }
            tx.execute(
                "INSERT OR REPLACE INTO labels (tenant_id, runner_id, key, value) VALUES (?1, ?2, ?3, ?4)",
                params![tenant, runner, k, v],
            )?;
            tx.execute(
                "DELETE FROM proposals WHERE runner_id = ?1 AND key = ?2",
                params![runner, k],
            )?;
            labels.insert(k, v);
        }
        tx.commit()?;
        Ok(labels)
    }

    pub fn policy(&self, tenant: &str) -> Result<Policy, StorageError> {
        let c = self.lock();
        let row: Option<(Option<i64>, String)> = c
            .query_row(
                "SELECT job_deadline_s, auto_accept FROM fleet_policy WHERE tenant_id = ?1",
                params![tenant],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            None => Policy::default(),
            Some((d, auto)) => Policy {
                job_deadline_s: d.and_then(|d| u64::try_from(d).ok()),
                auto_accept: serde_json::from_str(&auto)
                    .map_err(|e| StorageError::Corrupt(format!("fleet_policy.auto_accept: {e}")))?,
            },
        })
    }

    pub fn set_policy(&self, tenant: &str, p: &Policy) -> Result<(), StorageError> {
        let auto = serde_json::to_string(&p.auto_accept).unwrap_or_else(|_| "[]".into());
        self.lock().execute(
            "INSERT OR REPLACE INTO fleet_policy (tenant_id, job_deadline_s, auto_accept) VALUES (?1, ?2, ?3)",
            params![tenant, p.job_deadline_s.map(|d| d as i64), auto],
        )?;
        Ok(())
    }

    pub fn add_deadlines(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        expires_ms: i64,
    ) -> Result<(), StorageError> {
        let mut c = self.lock();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (job, runner) in jobs {
            tx.execute(
                "INSERT OR REPLACE INTO job_deadlines (job_id, tenant_id, runner_id, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                params![job, tenant, runner, expires_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn due_deadlines(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, String, i64)>, StorageError> {
        let c = self.lock();
        let mut st = c.prepare_cached(
            "SELECT job_id, tenant_id, runner_id, expires_ms FROM job_deadlines
             WHERE expires_ms <= ?1 ORDER BY expires_ms LIMIT ?2",
        )?;
        let rows = st.query_map(params![now, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn drop_deadline(&self, job: &str) -> Result<(), StorageError> {
        self.lock()
            .execute("DELETE FROM job_deadlines WHERE job_id = ?1", params![job])?;
        Ok(())
    }

    pub fn save_rollout(&self, r: &RolloutRow) -> Result<(), StorageError> {
        self.lock().execute(
            "INSERT OR REPLACE INTO rollouts
                 (id, tenant_id, state, created_ms, updated_ms, body, driver, rev)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                r.id,
                r.tenant_id,
                r.state,
                r.created_ms,
                r.updated_ms,
                r.body,
                r.driver,
                r.rev
            ],
        )?;
        Ok(())
    }

    pub fn update_rollout(&self, r: &RolloutRow) -> Result<bool, StorageError> {
        let n = self.lock().execute(
            "UPDATE rollouts SET state = ?3, updated_ms = ?4, body = ?5, driver = ?6, rev = rev + 1
             WHERE id = ?1 AND rev = ?2",
            params![r.id, r.rev, r.state, r.updated_ms, r.body, r.driver],
        )?;
        Ok(n == 1)
    }

    pub fn open_rollouts(&self) -> Result<Vec<(String, String, i64)>, StorageError> {
        let c = self.lock();
        let mut st = c.prepare_cached(
            "SELECT tenant_id, id, rev FROM rollouts WHERE driver IS NOT NULL ORDER BY created_ms",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn rollout(&self, tenant: &str, id: &str) -> Result<Option<RolloutRow>, StorageError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT id, tenant_id, state, created_ms, updated_ms, body, driver, rev FROM rollouts
                 WHERE tenant_id = ?1 AND id = ?2",
                params![tenant, id],
                rollout_row,
            )
            .optional()?)
    }

    pub fn rollouts(&self, tenant: &str, limit: usize) -> Result<Vec<RolloutRow>, StorageError> {
        let c = self.lock();
        let mut st = c.prepare_cached(
            "SELECT id, tenant_id, state, created_ms, updated_ms, body, driver, rev FROM rollouts
             WHERE tenant_id = ?1 ORDER BY created_ms DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![tenant, limit as i64], rollout_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn desired_versions(
        &self,
        tenant: &str,
    ) -> Result<std::collections::HashMap<String, String>, StorageError> {
        let c = self.lock();
        let mut st = c.prepare_cached(
            "SELECT runner_id, version FROM runner_versions WHERE tenant_id = ?1",
        )?;
        let rows = st.query_map(params![tenant], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn desired_version(
        &self,
        tenant: &str,
        runner: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(self
            .lock()
            .prepare_cached(
                "SELECT version FROM runner_versions WHERE tenant_id = ?1 AND runner_id = ?2",
            )?
            .query_row(params![tenant, runner], |r| r.get(0))
            .optional()?)
    }

    pub fn set_desired_version(
        &self,
        tenant: &str,
        runners: &[String],
        version: Option<&str>,
        now: i64,
    ) -> Result<(), StorageError> {
        let mut c = self.lock();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for r in runners {
            match version {
                Some(v) => tx.execute(
                    "INSERT OR REPLACE INTO runner_versions (tenant_id, runner_id, version, set_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![tenant, r, v, now],
                )?,
                None => tx.execute(
                    "DELETE FROM runner_versions WHERE tenant_id = ?1 AND runner_id = ?2",
                    params![tenant, r],
                )?,
            };
        }
        tx.commit()?;
        Ok(())
    }

    pub fn put_schedule(
        &self,
        tenant: &str,
        name: &str,
        body: &str,
        start: i64,
    ) -> Result<(), StorageError> {
        self.lock().execute(
            "INSERT INTO schedules (tenant_id, name, body, last_occurrence) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant_id, name) DO UPDATE SET body = excluded.body,
                 last_occurrence = max(last_occurrence, excluded.last_occurrence)",
            params![tenant, name, body, start],
        )?;
        Ok(())
    }

    pub fn delete_schedule(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        let mut c = self.lock();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM schedules WHERE tenant_id = ?1 AND name = ?2",
            params![tenant, name],
        )?;
        tx.execute(
            "DELETE FROM schedule_runs WHERE tenant_id = ?1 AND schedule = ?2",
            params![tenant, name],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRow>, StorageError> {
        let c = self.lock();
        let mut st = c.prepare_cached(
            "SELECT tenant_id, name, body, last_occurrence FROM schedules
             WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY tenant_id, name",
        )?;
        let rows = st.query_map(params![tenant], |r| {
            Ok(ScheduleRow {
                tenant_id: r.get(0)?,
                name: r.get(1)?,
                body: r.get(2)?,
                last_occurrence: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn claim_occurrence(
        &self,
        tenant: &str,
        schedule: &str,
        occurrence: i64,
        status: &str,
        now: i64,
    ) -> Result<bool, StorageError> {
        let mut c = self.lock();
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO schedule_runs (tenant_id, schedule, occurrence_ms, status, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, schedule, occurrence, status, now],
        )?;
        tx.execute(
            "UPDATE schedules SET last_occurrence = max(last_occurrence, ?3)
             WHERE tenant_id = ?1 AND name = ?2",
            params![tenant, schedule, occurrence],
        )?;
        tx.commit()?;
        Ok(n == 1)
    }

    pub fn set_run_jobs(
        &self,
        tenant: &str,
        schedule: &str,
        occurrence: i64,
        status: &str,
        jobs: &[String],
    ) -> Result<(), StorageError> {
        let jobs = serde_json::to_string(jobs).unwrap_or_else(|_| "[]".into());
        self.lock().execute(
            "UPDATE schedule_runs SET status = ?4, jobs = ?5
             WHERE tenant_id = ?1 AND schedule = ?2 AND occurrence_ms = ?3",
            params![tenant, schedule, occurrence, status, jobs],
        )?;
        Ok(())
    }

    pub fn runs(
        &self,
        tenant: &str,
        schedule: &str,
        limit: usize,
    ) -> Result<Vec<RunRow>, StorageError> {
        let c = self.lock();
        let mut st = c.prepare_cached(
            "SELECT occurrence_ms, status, at_ms, jobs FROM schedule_runs
             WHERE tenant_id = ?1 AND schedule = ?2 ORDER BY occurrence_ms DESC LIMIT ?3",
        )?;
        let rows = st.query_map(params![tenant, schedule, limit as i64], |r| {
            let jobs: String = r.get(3)?;
            Ok(RunRow {
                occurrence_ms: r.get(0)?,
                status: r.get(1)?,
                at_ms: r.get(2)?,
                jobs: serde_json::from_str(&jobs).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RolloutRow> {
    Ok(RolloutRow {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        state: r.get(2)?,
        created_ms: r.get(3)?,
        updated_ms: r.get(4)?,
        body: r.get(5)?,
        driver: r.get(6)?,
        rev: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn proposals_wait_for_acceptance_unless_the_policy_takes_them() {
        let s = SqliteFleet::open_in_memory().unwrap();
        s.replace_labels("t", "r1", &l(&[("env", "prod")])).unwrap();
        let p = Policy {
            job_deadline_s: None,
            auto_accept: vec!["zone".into()],
        };
        s.propose(
            "t",
            "r1",
            &l(&[("env", "prod"), ("role", "db"), ("zone", "a")]),
            &p,
        )
        .unwrap();
        let (labels, proposed) = s.labels("t", "r1").unwrap();
        assert_eq!(labels, l(&[("env", "prod"), ("zone", "a")]));
        assert_eq!(proposed, l(&[("role", "db")]));
        assert_eq!(
            s.accept("t", "r1", Some(&["nope".into()])).unwrap().len(),
            2
        );
        assert_eq!(
            s.accept("t", "r1", None).unwrap(),
            l(&[("env", "prod"), ("role", "db"), ("zone", "a")])
        );
        assert!(s.labels("t", "r1").unwrap().1.is_empty());
        assert_eq!(s.tenant_labels("t").unwrap().len(), 1);
        assert!(s.tenant_labels("other").unwrap().is_empty());
    }

    #[test]
    fn an_occurrence_is_claimed_once() {
        let s = SqliteFleet::open_in_memory().unwrap();
        s.put_schedule("t", "backup", "{}", 100).unwrap();
        assert!(s.claim_occurrence("t", "backup", 60_000, "run", 1).unwrap());
        assert!(!s.claim_occurrence("t", "backup", 60_000, "run", 2).unwrap());
        assert_eq!(s.schedules(Some("t")).unwrap()[0].last_occurrence, 60_000);
        // Redefining does not move the clock back.
        s.put_schedule("t", "backup", "{\"x\":1}", 0).unwrap();
        assert_eq!(s.schedules(None).unwrap()[0].last_occurrence, 60_000);
        s.set_run_jobs("t", "backup", 60_000, "run", &["jb_1".into()])
            .unwrap();
        assert_eq!(s.runs("t", "backup", 10).unwrap()[0].jobs, ["jb_1"]);
        assert!(s.delete_schedule("t", "backup").unwrap());
        assert!(s.runs("t", "backup", 10).unwrap().is_empty());
    }

    #[test]
    fn deadlines_come_due_in_order() {
        let s = SqliteFleet::open_in_memory().unwrap();
        s.add_deadlines("t", &[("j1".into(), "r".into())], 200)
            .unwrap();
        s.add_deadlines("t", &[("j2".into(), "r".into())], 100)
            .unwrap();
        assert!(s.due_deadlines(99, 10).unwrap().is_empty());
        let due: Vec<String> = s
            .due_deadlines(300, 10)
            .unwrap()
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(due, ["j2", "j1"]);
        s.drop_deadline("j2").unwrap();
        assert_eq!(s.due_deadlines(300, 10).unwrap().len(), 1);
        let p = Policy {
            job_deadline_s: Some(60),
            auto_accept: vec!["*".into()],
        };
        s.set_policy("t", &p).unwrap();
        assert_eq!(s.policy("t").unwrap(), p);
        assert!(p.accepts("anything"));
    }
}
