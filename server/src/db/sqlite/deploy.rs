//! Apps and their deployments, in `jobs.db` beside the jobs they become.
//!
//! ```text
//!  apps         (tenant, name) → definition JSON (secret names only, never values)
//!  deployments  job id → tenant, app, image reference, kind (deploy | rollback), git ref
//! ```
//!
//! A deployment *is* a job: its status, output and times live in `jobs`
//! and `job_output`; this table adds what the history and a rollback need
//! (the image each deployment ran). Deleting an app keeps its history.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::control::SqliteControl;
use super::jobs::SqliteJobs;
use crate::db::jobs::*;
use crate::db::StorageError;

pub fn setup(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS apps (
             tenant_id TEXT NOT NULL, name TEXT NOT NULL, def TEXT NOT NULL,
             updated_ms INTEGER NOT NULL,
             PRIMARY KEY (tenant_id, name)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS deployments (
             job_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, app TEXT NOT NULL,
             image TEXT NOT NULL, kind TEXT NOT NULL, git_ref TEXT,
             created_ms INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS deployments_app ON deployments (tenant_id, app, created_ms);",
    )?;
    Ok(())
}

fn deployment(r: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: r.get(0)?,
        app: r.get(1)?,
        image: r.get(2)?,
        kind: r.get(3)?,
        git_ref: r.get(4)?,
        created_ms: r.get(5)?,
    })
}

impl SqliteJobs {
    pub fn put_app(&self, tenant: &str, a: &StoredApp) -> Result<(), StorageError> {
        self.write().execute(
            "INSERT INTO apps (tenant_id, name, def, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant_id, name) DO UPDATE SET def = ?3, updated_ms = ?4",
            params![tenant, a.name, a.def.to_string(), a.updated_ms],
        )?;
        Ok(())
    }

    pub fn app(&self, tenant: &str, name: &str) -> Result<Option<StoredApp>, StorageError> {
        Ok(self
            .read()
            .query_row(
                "SELECT name, def, updated_ms FROM apps WHERE tenant_id = ?1 AND name = ?2",
                params![tenant, name],
                app_row,
            )
            .optional()?)
    }

    pub fn apps(&self, tenant: &str) -> Result<Vec<StoredApp>, StorageError> {
        let conn = self.read();
        let mut stmt = conn
            .prepare("SELECT name, def, updated_ms FROM apps WHERE tenant_id = ?1 ORDER BY name")?;
        let rows = stmt.query_map(params![tenant], app_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn delete_app(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        Ok(self.write().execute(
            "DELETE FROM apps WHERE tenant_id = ?1 AND name = ?2",
            params![tenant, name],
        )? > 0)
    }

    /// Record that job `d.id` (made just before) is a deployment.
    pub fn add_deployment(&self, tenant: &str, d: &Deployment) -> Result<(), StorageError> {
        self.write().execute(
            "INSERT INTO deployments (job_id, tenant_id, app, image, kind, git_ref, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                d.id,
                tenant,
                d.app,
                d.image,
                d.kind,
                d.git_ref,
                d.created_ms
            ],
        )?;
        Ok(())
    }

    /// An app's deployments with their jobs, newest first.
    pub fn deployments(
        &self,
        tenant: &str,
        app: &str,
        limit: usize,
    ) -> Result<Vec<(Deployment, Option<JobRow>)>, StorageError> {
        let list: Vec<Deployment> = {
            let conn = self.read();
            let mut stmt = conn.prepare(
                "SELECT job_id, app, image, kind, git_ref, created_ms FROM deployments
                 WHERE tenant_id = ?1 AND app = ?2 ORDER BY created_ms DESC, rowid DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![tenant, app, limit as i64], deployment)?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(list.len());
        for d in list {
            let job = self.job(tenant, &d.id)?;
            out.push((d, job));
        }
        Ok(out)
    }
}

/// Apps defined before runner identity was fixed (issue 15) may name their
/// runner instead of giving its id, and a name was whatever the runner last
/// said it was called. Each such name is resolved once, here, to the id of
/// the one runner of the tenant that holds it, and stored; a name that
/// matches no runner or several is left as it is, and deploying that app
/// asks for the runner's id. Returns how many apps were changed.
pub fn resolve_runner_names(
    jobs: &SqliteJobs,
    storage: &SqliteControl,
) -> Result<usize, StorageError> {
    let apps: Vec<(String, StoredApp)> = {
        let conn = jobs.read();
        let mut stmt = conn.prepare("SELECT tenant_id, name, def, updated_ms FROM apps")?;
        let rows = stmt.query_map([], |r| {
            let def: String = r.get(2)?;
            Ok((
                r.get::<_, String>(0)?,
                StoredApp {
                    name: r.get(1)?,
                    def: serde_json::from_str(&def).unwrap_or(serde_json::Value::Null),
                    updated_ms: r.get(3)?,
                },
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut changed = 0;
    for (tenant, mut app) in apps {
        let Some(runner) = app.def["runner"].as_str().map(str::to_owned) else {
            continue;
        };
        if storage.runner(&tenant, &runner)?.is_some() {
            continue;
        }
        let all = storage.list_runners(&tenant)?;
        let mut hits = all.iter().filter(|r| r.name == runner);
        match (hits.next(), hits.next()) {
            (Some(r), None) => {
                tracing::info!(tenant, app = %app.name, name = %runner, runner = %r.id,
                    "app's runner name resolved to its id");
                app.def["runner"] = serde_json::Value::String(r.id.clone());
                jobs.put_app(&tenant, &app)?;
                changed += 1;
            }
            _ => tracing::warn!(tenant, app = %app.name, name = %runner,
                "app names a runner that is not one runner's name; its next deploy asks for the runner id"),
        }
    }
    Ok(changed)
}

fn app_row(r: &Row<'_>) -> rusqlite::Result<StoredApp> {
    let def: String = r.get(1)?;
    Ok(StoredApp {
        name: r.get(0)?,
        def: serde_json::from_str(&def).unwrap_or(serde_json::Value::Null),
        updated_ms: r.get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apps_and_deployment_history() {
        let s = SqliteJobs::open_in_memory().unwrap();
        let a = StoredApp {
            name: "web".into(),
            def: json!({"image": "web"}),
            updated_ms: 1,
        };
        s.put_app("tn", &a).unwrap();
        assert_eq!(s.app("tn", "web").unwrap(), Some(a.clone()));
        assert_eq!(s.app("other", "web").unwrap(), None, "tenants apart");
        for (i, id) in ["jb_1", "jb_2"].iter().enumerate() {
            s.add_deployment(
                "tn",
                &Deployment {
                    id: (*id).into(),
                    app: "web".into(),
                    image: format!("web:{id}"),
                    kind: "deploy".into(),
                    git_ref: None,
                    created_ms: i as i64,
                },
            )
            .unwrap();
        }
        let h = s.deployments("tn", "web", 10).unwrap();
        assert_eq!(
            h.iter().map(|(d, _)| d.id.as_str()).collect::<Vec<_>>(),
            ["jb_2", "jb_1"],
            "newest first"
        );
        assert!(s.deployments("other", "web", 10).unwrap().is_empty());
        assert!(s.delete_app("tn", "web").unwrap());
        assert_eq!(
            s.deployments("tn", "web", 10).unwrap().len(),
            2,
            "history stays"
        );
    }

    /// Issue 15, item 8: apps saved with a runner's name get its id once
    /// (when exactly one runner of the tenant has it); ambiguous or unknown
    /// names are left for the operator.
    #[test]
    fn app_runner_names_are_resolved_to_ids_once() {
        use crate::db::{EnrollmentTokenRow, NewRunner, TenantRow};
        let jobs = SqliteJobs::open_in_memory().unwrap();
        let storage = SqliteControl::open_in_memory().unwrap();
        let t = TenantRow {
            id: "tn_a".into(),
            name: "a".into(),
            created_at: 0,
        };
        storage.create_tenant(&t, "at_a", "hash-api-a").unwrap();
        for (tok, id, name) in [
            ("e1", "rn_1", "web-1"),
            ("e2", "rn_2", "db"),
            ("e3", "rn_3", "db"),
        ] {
            let row = EnrollmentTokenRow {
                id: tok.into(),
                tenant_id: "tn_a".into(),
                label: None,
                created_at: 0,
                expires_at: i64::MAX,
                used_at: None,
                revoked_at: None,
            };
            storage
                .create_enrollment_token(&row, &format!("h-{tok}"))
                .unwrap();
            let cred = format!("c-{id}");
            let r = NewRunner {
                id,
                credential_hash: &cred,
                name,
                version: "0.1.0",
                arch: "x86_64",
                os: "linux",
            };
            storage.enroll(&format!("h-{tok}"), &r, 1).unwrap();
        }
        // rn_3 asked for "db" too and was named "db-2".
        let put = |name: &str, runner: &str| {
            let a = StoredApp {
                name: name.into(),
                def: json!({ "runner": runner, "path": "/srv" }),
                updated_ms: 5,
            };
            jobs.put_app("tn_a", &a).unwrap();
        };
        put("by-name", "web-1");
        put("by-id", "rn_2");
        put("unknown", "gone-box");
        assert_eq!(resolve_runner_names(&jobs, &storage).unwrap(), 1);
        let runner = |app: &str| jobs.app("tn_a", app).unwrap().unwrap().def["runner"].clone();
        assert_eq!(runner("by-name"), "rn_1");
        assert_eq!(runner("by-id"), "rn_2");
        assert_eq!(runner("unknown"), "gone-box");
        // Once: nothing left to change.
        assert_eq!(resolve_runner_names(&jobs, &storage).unwrap(), 0);
    }
}
