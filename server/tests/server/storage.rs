//! The storage conformance suite: the same checks of the storage traits
//! against every backend, the embedded SQLite and a real PostgreSQL
//! (`pg.rs`). Each check is one async function taking the stores; `both!`
//! makes a `sqlite` and a `postgres` test of it.
//!
//! Covered so far: UserStore, AuditStore, UpdateStore (the traits the
//! PostgreSQL backend implements), and the migration runner.

use std::sync::Arc;

use tether::protocol::UpdateStatus;
use tether_server::db::postgres::Postgres;
use tether_server::db::users::{Role, UserRow};
use tether_server::db::{
    AuditStore, Db, NewRunner, StorageError, TenantRow, TerminalAuditRow, UpdatePolicy,
    UpdateStore, UserStore,
};

use crate::pg;

/// The stores under test, and a way to seed what they refer to (tenants,
/// runners) that does not depend on stores a backend lacks.
struct Under {
    users: Arc<dyn UserStore>,
    audit: Arc<dyn AuditStore>,
    updates: Arc<dyn UpdateStore>,
    seed: Seed,
}

enum Seed {
    Sqlite(Db),
    Postgres(Postgres),
}

impl Under {
    async fn sqlite() -> Under {
        let db = tether_server::db::sqlite::open_in_memory(Default::default()).unwrap();
        Under {
            users: db.users.clone(),
            audit: db.audit.clone(),
            updates: db.updates.clone(),
            seed: Seed::Sqlite(db),
        }
    }

    async fn postgres() -> Under {
        let pg = Postgres::connect(&pg::fresh_database().await)
            .await
            .unwrap();
        Under {
            users: pg.users(),
            audit: pg.audit(),
            updates: pg.updates(),
            seed: Seed::Postgres(pg),
        }
    }

    async fn tenant(&self, id: &str, name: &str) {
        match &self.seed {
            Seed::Sqlite(db) => {
                let t = TenantRow {
                    id: id.into(),
                    name: name.into(),
                    created_at: 1,
                };
                db.control
                    .create_tenant(&t, &format!("at_{id}"), &format!("h_{id}"))
                    .await
                    .unwrap();
            }
            Seed::Postgres(pg) => pg
                .execute_batch(&format!(
                    "INSERT INTO tenants (id, name, created_at) VALUES ('{id}', '{name}', 1)"
                ))
                .await
                .unwrap(),
        }
    }

    async fn runner(&self, tenant: &str, id: &str) {
        match &self.seed {
            Seed::Sqlite(db) => {
                let row = tether_server::db::EnrollmentTokenRow {
                    id: format!("et_{id}"),
                    tenant_id: tenant.into(),
                    label: None,
                    created_at: 1,
                    expires_at: i64::MAX,
                    used_at: None,
                    revoked_at: None,
                };
                let hash = format!("eh_{id}");
                db.control
                    .create_enrollment_token(&row, &hash)
                    .await
                    .unwrap();
                let cred = format!("cred_{id}");
                let new = NewRunner {
                    id,
                    credential_hash: &cred,
                    name: id,
                    version: "1",
                    arch: "x86_64",
                    os: "linux",
                };
                db.control.enroll(&hash, &new, 2).await.unwrap();
            }
            Seed::Postgres(pg) => pg
                .execute_batch(&format!(
                    "INSERT INTO runners (id, tenant_id, name, credential_hash, health, version,
                         arch, os, created_at)
                     VALUES ('{id}', '{tenant}', '{id}', 'cred_{id}', 'unreachable', '1',
                         'x86_64', 'linux', 2)"
                ))
                .await
                .unwrap(),
        }
    }
}

macro_rules! both {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test]
            async fn sqlite() {
                super::$check(super::Under::sqlite().await).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$check(super::Under::postgres().await).await
            }
        }
    )*};
}

both!(
    users_are_unique_per_tenant_and_roles_round_trip,
    sessions_expire_and_die_with_password_change_or_user,
    terminal_audit_is_recorded_completed_once_and_scoped,
    update_policies_groups_and_reports,
);

fn ada(tenant: &str) -> UserRow {
    UserRow {
        id: format!("us_{tenant}"),
        tenant_id: tenant.into(),
        name: "ada".into(),
        password_hash: "$argon2id$x".into(),
        role: Role::Viewer,
        created_at: 5,
    }
}

async fn users_are_unique_per_tenant_and_roles_round_trip(s: Under) {
    s.tenant("tn_1", "acme").await;
    s.tenant("tn_2", "other").await;
    let u = ada("tn_1");
    s.users.create_user(&u).await.unwrap();
    assert!(matches!(
        s.users.create_user(&u).await,
        Err(StorageError::Conflict(_))
    ));
    // The same name in another tenant is another user.
    s.users.create_user(&ada("tn_2")).await.unwrap();
    assert_eq!(s.users.user("tn_1", "ada").await.unwrap(), Some(u.clone()));
    assert_eq!(s.users.user("tn_1", "bob").await.unwrap(), None);
    assert_eq!(s.users.user("tn_3", "ada").await.unwrap(), None);
    assert!(s
        .users
        .update_user("tn_1", "ada", Some(Role::Admin), None)
        .await
        .unwrap());
    let listed = s.users.list_users("tn_1").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].role, Role::Admin);
    assert_eq!(
        s.users.list_users("tn_2").await.unwrap()[0].role,
        Role::Viewer
    );
    assert!(!s
        .users
        .update_user("tn_1", "bob", Some(Role::Admin), None)
        .await
        .unwrap());
    assert!(s.users.delete_user("tn_2", "ada").await.unwrap());
    assert!(s.users.list_users("tn_2").await.unwrap().is_empty());
    assert_eq!(s.users.list_users("tn_1").await.unwrap().len(), 1);
}

async fn sessions_expire_and_die_with_password_change_or_user(s: Under) {
    s.tenant("tn_1", "acme").await;
    let u = ada("tn_1");
    s.users.create_user(&u).await.unwrap();
    let mut creds = s.users_credentials();
    s.users
        .create_session("sh", &u.id, "csrf", 10, 100)
        .await
        .unwrap();
    let got = s.users.session("sh", 50).await.unwrap().unwrap();
    assert_eq!(
        (
            got.tenant_name.as_str(),
            got.csrf_token.as_str(),
            got.expires_at
        ),
        ("acme", "csrf", 100)
    );
    assert_eq!(got.user, u);
    assert_eq!(
        s.users.session("sh", 100).await.unwrap(),
        None,
        "expired at 100"
    );
    // A role change keeps the session but shows at once.
    s.users
        .update_user("tn_1", "ada", Some(Role::Operator), None)
        .await
        .unwrap();
    assert_eq!(
        s.users.session("sh", 50).await.unwrap().unwrap().user.role,
        Role::Operator
    );
    s.users
        .update_user("tn_1", "ada", None, Some("y"))
        .await
        .unwrap();
    assert_eq!(
        s.users.session("sh", 50).await.unwrap(),
        None,
        "a password change ends sessions"
    );
    // A login sweeps expired sessions; a logout ends its own.
    s.users
        .create_session("old", &u.id, "c", 1, 20)
        .await
        .unwrap();
    s.users
        .create_session("sh2", &u.id, "c", 30, 100)
        .await
        .unwrap();
    s.users
        .create_session("sh3", &u.id, "c", 30, 100)
        .await
        .unwrap();
    s.users.delete_session("sh3").await.unwrap();
    assert_eq!(s.users.session("sh3", 50).await.unwrap(), None);
    assert!(s.users.session("sh2", 50).await.unwrap().is_some());
    assert!(s.users.delete_user("tn_1", "ada").await.unwrap());
    assert_eq!(s.users.session("sh2", 50).await.unwrap(), None);
    assert!(!s.users.delete_user("tn_1", "ada").await.unwrap());
    // Each change that takes authority away woke the credential watchers.
    assert!(creds.as_mut().is_none_or(|c| c.has_changed().unwrap()));
}

impl Under {
    /// The credential watch of the backend, where the stores under test
    /// feed it (SQLite: `ControlStore::watch_credentials`).
    fn users_credentials(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.seed {
            Seed::Sqlite(db) => Some(db.control.watch_credentials()),
            Seed::Postgres(_) => None,
        }
    }
}

fn audit_row(id: &str, runner: &str, opened: i64) -> TerminalAuditRow {
    TerminalAuditRow {
        id: id.into(),
        runner_id: runner.into(),
        target: "host".into(),
        who: "tok_1 (ops)".into(),
        client: "127.0.0.1:5000".into(),
        opened_ms: opened,
        closed_ms: None,
        reason: None,
        bytes_in: 0,
        bytes_out: 0,
    }
}

async fn terminal_audit_is_recorded_completed_once_and_scoped(s: Under) {
    s.audit
        .terminal_opened("tn_1", &audit_row("tm_1", "rn_1", 1000))
        .await
        .unwrap();
    s.audit
        .terminal_opened("tn_1", &audit_row("tm_2", "rn_2", 2000))
        .await
        .unwrap();
    s.audit
        .terminal_closed("tm_1", 5000, "exited 0", 12, 345)
        .await
        .unwrap();
    // A second close does not overwrite the first.
    s.audit
        .terminal_closed("tm_1", 9000, "again", 0, 0)
        .await
        .unwrap();
    let rows = s.audit.terminal_audit("tn_1", None, 10).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["tm_2", "tm_1"],
        "newest first"
    );
    let closed = &rows[1];
    assert_eq!(closed.closed_ms, Some(5000));
    assert_eq!(closed.reason.as_deref(), Some("exited 0"));
    assert_eq!((closed.bytes_in, closed.bytes_out), (12, 345));
    assert_eq!(rows[0].closed_ms, None);
    assert_eq!(
        s.audit.terminal_audit("tn_1", None, 1).await.unwrap().len(),
        1
    );
    assert!(s
        .audit
        .terminal_audit("tn_2", None, 10)
        .await
        .unwrap()
        .is_empty());
    let one = s
        .audit
        .terminal_audit("tn_1", Some("rn_1"), 10)
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, "tm_1");
    assert!(s
        .audit
        .terminal_audit("tn_1", Some("rn_9"), 10)
        .await
        .unwrap()
        .is_empty());
}

async fn update_policies_groups_and_reports(s: Under) {
    s.tenant("tn_1", "acme").await;
    s.tenant("tn_2", "other").await;
    s.runner("tn_1", "rn_a").await;
    s.runner("tn_1", "rn_b").await;
    let policy = |group: &str, version: &str, canary: u8| UpdatePolicy {
        group: group.into(),
        version: version.into(),
        canary_percent: canary,
        updated_at: 10,
    };
    assert_eq!(
        s.updates.update_policy_for("tn_1", "rn_a").await.unwrap(),
        None
    );
    s.updates
        .set_update_policy("tn_1", &policy("", "1.1.0", 100))
        .await
        .unwrap();
    s.updates
        .set_update_policy("tn_1", &policy("edge", "1.2.0", 10))
        .await
        .unwrap();
    // Setting again replaces.
    s.updates
        .set_update_policy("tn_1", &policy("edge", "1.2.1", 25))
        .await
        .unwrap();
    let all = s.updates.update_policies("tn_1").await.unwrap();
    assert_eq!(all, [policy("", "1.1.0", 100), policy("edge", "1.2.1", 25)]);
    assert!(s.updates.update_policies("tn_2").await.unwrap().is_empty());

    assert_eq!(
        s.updates.runner_group("rn_a").await.unwrap().as_deref(),
        Some("")
    );
    assert_eq!(s.updates.runner_group("rn_none").await.unwrap(), None);
    assert!(s
        .updates
        .set_runner_group("tn_1", "rn_a", "edge")
        .await
        .unwrap());
    assert!(
        !s.updates
            .set_runner_group("tn_2", "rn_b", "edge")
            .await
            .unwrap(),
        "another tenant's runner"
    );
    assert_eq!(
        s.updates.update_policy_for("tn_1", "rn_a").await.unwrap(),
        Some(("edge".into(), policy("edge", "1.2.1", 25)))
    );
    assert_eq!(
        s.updates.update_policy_for("tn_1", "rn_b").await.unwrap(),
        Some((String::new(), policy("", "1.1.0", 100))),
        "no group: the tenant's default"
    );
    assert!(s.updates.clear_update_policy("tn_1", "edge").await.unwrap());
    assert!(!s.updates.clear_update_policy("tn_1", "edge").await.unwrap());
    assert_eq!(
        s.updates.update_policy_for("tn_1", "rn_a").await.unwrap(),
        Some(("edge".into(), policy("", "1.1.0", 100))),
        "its group's policy gone: the tenant's default"
    );

    let status = |state: &str, took: Option<u64>| UpdateStatus {
        version: "1.1.0".into(),
        state: state.into(),
        from_version: "1.0.0".into(),
        reason: (state != "installed").then(|| "why".to_owned()),
        at_ms: 0,
        took_ms: took,
    };
    s.updates
        .record_update_report("rn_a", 100, &status("downloading", None))
        .await
        .unwrap();
    s.updates
        .record_update_report("rn_a", 200, &status("installed", Some(1234)))
        .await
        .unwrap();
    let reports = s.updates.update_reports("rn_a").await.unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!((reports[0].at, reports[1].at), (100, 200), "oldest first");
    assert_eq!(reports[1].status, status("installed", Some(1234)));
    assert_eq!(reports[0].status.reason.as_deref(), Some("why"));
    assert!(s.updates.update_reports("rn_b").await.unwrap().is_empty());
}

/// The migration runner: a second connect (another replica, a restart)
/// applies nothing again, and several at once agree.
#[tokio::test]
async fn postgres_migrations_apply_once_even_when_replicas_start_together() {
    let url = pg::fresh_database().await;
    let starts = (0..3).map(|_| Postgres::connect(&url));
    let dbs: Vec<_> = futures_util::future::join_all(starts).await;
    for db in &dbs {
        let applied = db.as_ref().unwrap().applied_migrations().await.unwrap();
        assert_eq!(applied, (1..=applied.len() as i32).collect::<Vec<_>>());
        assert!(!applied.is_empty());
    }
    let again = Postgres::connect(&url).await.unwrap();
    assert_eq!(
        again.applied_migrations().await.unwrap(),
        dbs[0].as_ref().unwrap().applied_migrations().await.unwrap()
    );
    assert!(matches!(
        Postgres::connect("postgres://tether@127.0.0.1:1/none").await,
        Err(StorageError::Backend(_))
    ));
}
