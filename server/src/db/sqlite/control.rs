//! tether.db: the control plane's SQLite store (ControlStore, UserStore,
//! UpdateStore and AuditStore in `db/`; the SQL of users, tokens, updates,
//! terminals and containers is in the sibling files).
//!
//! [`SqliteControl`] owns the connection (one file, WAL mode). Fingerprints
//! and their drift events live here: they are small and change rarely; so do
//! Docker state, the container view and its event history
//! (`containers.rs`). Every method that reads-then-writes runs in one
//! `IMMEDIATE` transaction, so it is atomic across processes too, not only
//! under this process's mutex.
//!
//! Times are Unix milliseconds. Secrets are stored only as SHA-256 hex.
//!
//! The methods are synchronous (each is a few indexed statements on a local
//! file, tens of microseconds in WAL mode with `synchronous=NORMAL`); callers
//! reach them only through `Blocking::run` (`mod.rs`). Writes that would
//! happen per frame (last_seen) are batched by the caller instead.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::migrate::{migrate, Migration, Step};
use super::{terminals, tokens};
use crate::db::control::*;
use crate::db::StorageError;

/// How many health changes are kept per runner; older ones are dropped so a
/// flapping runner cannot grow the database without bound.
const HEALTH_HISTORY_LIMIT: i64 = 1000;

/// How many drift events are kept per runner (a host whose listening
/// sockets flap must not grow the database without bound).
const DRIFT_HISTORY_LIMIT: i64 = 10_000;

/// Schema migrations, applied in order; `PRAGMA user_version` counts the ones done.
/// tether.db's schema, in order (`migrate.rs`). 1 to 6 were counted in
/// `user_version` before; 7 and 8 were made on every start with `IF NOT
/// EXISTS` or a column check, so they are idempotent on older files.
const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "tenants, tokens, runners, health",
        step: Step::Sql(
            r#"
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    token_hash  TEXT NOT NULL UNIQUE,
    label       TEXT,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE enrollment_tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    token_hash  TEXT NOT NULL UNIQUE,
    label       TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    runner_id   TEXT,
    revoked_at  INTEGER
);
CREATE INDEX enrollment_tokens_by_tenant ON enrollment_tokens(tenant_id);
CREATE TABLE runners (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants(id),
    name            TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    health          TEXT NOT NULL,
    version         TEXT NOT NULL,
    arch            TEXT NOT NULL,
    os              TEXT NOT NULL,
    protocol        INTEGER,
    created_at      INTEGER NOT NULL,
    last_seen       INTEGER,
    connected_since INTEGER,
    revoked_at      INTEGER
);
CREATE INDEX runners_by_tenant ON runners(tenant_id);
CREATE INDEX runners_by_health ON runners(health);
CREATE TABLE health_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    runner_id   TEXT NOT NULL REFERENCES runners(id),
    tenant_id   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    health      TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX health_events_by_runner ON health_events(runner_id, seq);
"#,
        ),
    },
    Migration {
        name: "fingerprints and drift",
        step: Step::Sql(
            r#"
CREATE TABLE fingerprints (
    runner_id    TEXT PRIMARY KEY REFERENCES runners(id),
    body         TEXT NOT NULL,
    notes        TEXT NOT NULL,
    collected_at INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE TABLE drift_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    runner_id   TEXT NOT NULL REFERENCES runners(id),
    at          INTEGER NOT NULL,
    change      TEXT NOT NULL
);
CREATE INDEX drift_events_by_runner ON drift_events(runner_id, seq);
"#,
        ),
    },
    Migration {
        name: "Docker state and containers",
        step: Step::Sql(
            r#"
CREATE TABLE docker_states (
    runner_id   TEXT PRIMARY KEY REFERENCES runners(id),
    available   INTEGER NOT NULL,
    version     TEXT,
    api_version TEXT,
    reason      TEXT,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE container_views (
    runner_id   TEXT PRIMARY KEY REFERENCES runners(id),
    as_of       INTEGER NOT NULL
);
CREATE TABLE containers (
    runner_id   TEXT NOT NULL REFERENCES runners(id),
    id          TEXT NOT NULL,
    summary     TEXT NOT NULL,
    PRIMARY KEY (runner_id, id)
);
CREATE TABLE container_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    runner_id    TEXT NOT NULL REFERENCES runners(id),
    at           INTEGER NOT NULL,
    time_nano    INTEGER NOT NULL,
    action       TEXT NOT NULL,
    container_id TEXT NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX container_events_by_runner ON container_events(runner_id, seq);
CREATE INDEX container_events_by_age ON container_events(at);
"#,
        ),
    },
    Migration {
        name: "update policies and reports",
        step: Step::Sql(
            r#"
ALTER TABLE runners ADD COLUMN update_group TEXT NOT NULL DEFAULT '';
CREATE TABLE update_policies (
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    grp            TEXT NOT NULL,
    version        TEXT NOT NULL,
    canary_percent INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, grp)
);
CREATE TABLE update_reports (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    runner_id    TEXT NOT NULL REFERENCES runners(id),
    at           INTEGER NOT NULL,
    version      TEXT NOT NULL,
    state        TEXT NOT NULL,
    from_version TEXT NOT NULL,
    reason       TEXT,
    took_ms      INTEGER
);
CREATE INDEX update_reports_by_runner ON update_reports(runner_id, seq);
"#,
        ),
    },
    // Dashboard users and their browser sessions (`users.rs`).
    Migration {
        name: "users and sessions",
        step: Step::Sql(
            r#"
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sessions_by_user ON sessions(user_id);
CREATE INDEX sessions_by_expiry ON sessions(expires_at);
"#,
        ),
    },
    // Runner identity: `name` is the operator's (set at enrollment, changed
    // only through the API); what a runner's `hello` says it is called is
    // kept apart. Until now hello overwrote `name`, so that is the best
    // guess of the last reported one.
    Migration {
        name: "runner reported names",
        step: Step::Sql(
            r#"
ALTER TABLE runners ADD COLUMN reported_name TEXT NOT NULL DEFAULT '';
UPDATE runners SET reported_name = name;
"#,
        ),
    },
    Migration {
        name: "terminal audit",
        step: Step::Code(terminals::create),
    },
    Migration {
        name: "API token owners, expiry, use",
        step: Step::Code(tokens::create),
    },
    // Single sign-on (`users.rs`, `users/sso.rs`): a tenant's OpenID Connect
    // providers, which user each provider's subject became, and whether
    // the tenant still allows password logins.
    Migration {
        name: "single sign-on",
        step: Step::Sql(
            r#"
CREATE TABLE oidc_providers (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    name          TEXT NOT NULL,
    issuer        TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    secret_nonce  BLOB NOT NULL,
    secret_sealed BLOB NOT NULL,
    role_claim    TEXT NOT NULL,
    role_map      TEXT NOT NULL,
    default_role  TEXT,
    created_at    INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE TABLE oidc_identities (
    provider_id TEXT NOT NULL REFERENCES oidc_providers(id) ON DELETE CASCADE,
    subject     TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (provider_id, subject)
);
CREATE INDEX oidc_identities_by_user ON oidc_identities(user_id);
CREATE TABLE login_policy (
    tenant_id      TEXT PRIMARY KEY REFERENCES tenants(id),
    password_login INTEGER NOT NULL
);
"#,
        ),
    },
];

/// The name a runner gets at enrollment from the one it asked for (its
/// `--name` or hostname): made valid, then unique in the tenant with a
/// `-2`, `-3`, … suffix, so it can never take a name another runner holds.
fn enrollment_name(
    tx: &Transaction<'_>,
    tenant_id: &str,
    asked: &str,
) -> Result<String, StorageError> {
    let cleaned: String = asked
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        // Room for the longest suffix, `-9999`.
        .take(MAX_RUNNER_NAME - 5)
        .collect();
    let base = if valid_runner_name(&cleaned) {
        cleaned
    } else {
        "runner".to_owned()
    };
    let taken = |name: &str| -> Result<bool, StorageError> {
        Ok(tx
            .query_row(
                "SELECT 1 FROM runners WHERE tenant_id = ?1 AND name = ?2",
                params![tenant_id, name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    };
    if !taken(&base)? {
        return Ok(base);
    }
    for n in 2..10_000 {
        let candidate = format!("{base}-{n}");
        if !taken(&candidate)? {
            return Ok(candidate);
        }
    }
    Err(StorageError::Conflict(format!(
        "too many runners are named {base:?} already"
    )))
}

/// rusqlite's error, shown as before the traits (`sqlite: …`).
#[derive(Debug)]
struct SqliteError(rusqlite::Error);

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sqlite: {}", self.0)
    }
}

impl std::error::Error for SqliteError {}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Backend(Box::new(SqliteError(e)))
    }
}

impl From<rusqlite::Error> for EnrollError {
    fn from(e: rusqlite::Error) -> Self {
        EnrollError::Storage(e.into())
    }
}

pub struct SqliteControl {
    conn: Mutex<Connection>,
    /// Bumped after every write that can take authority away (logout,
    /// user deleted or changed, API token revoked), so open streams
    /// re-check what authenticated them (`common/stream_auth.rs`).
    credentials: tokio::sync::watch::Sender<u64>,
}

impl SqliteControl {
    /// Open (creating if needed) the database file and bring its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteControl, StorageError> {
        let conn = Connection::open(path)?;
        // WAL lets readers run beside the writer; NORMAL syncs at checkpoints,
        // which is durable against process crashes (not power loss of the last
        // few commits), the usual trade for a control plane's metadata.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::setup(conn)
    }

    /// A private in-memory database, for tests.
    #[doc(hidden)] // a test seam: the integration tests' databases
    pub fn open_in_memory() -> Result<SqliteControl, StorageError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<SqliteControl, StorageError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // rusqlite keeps 16 prepared statements by default; this store has
        // more hot ones than that (hello, heartbeat flush, periodic checks),
        // and a statement parsed again costs ~10x its run.
        conn.set_prepared_statement_cache_capacity(64);
        super::steady_plans(&conn)?;
        migrate(&mut conn, "tether.db", MIGRATIONS)?;
        terminals::end_open_sessions(&conn)?;
        Ok(SqliteControl {
            conn: Mutex::new(conn),
            credentials: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Something that authenticates may have lost its authority: wake the
    /// streams to re-check. Called after the write is committed.
    pub(super) fn credentials_changed(&self) {
        self.credentials.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes with every [`SqliteControl::credentials_changed`].
    pub fn watch_credentials(&self) -> tokio::sync::watch::Receiver<u64> {
        self.credentials.subscribe()
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (the
        // transaction rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- tenants and API tokens ------------------------------------------------

    /// Create a tenant together with its first API token.
    pub fn create_tenant(
        &self,
        tenant: &TenantRow,
        api_token_id: &str,
        api_token_hash: &str,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken: bool = tx
            .query_row(
                "SELECT 1 FROM tenants WHERE name = ?1",
                [&tenant.name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if taken {
            return Err(StorageError::Conflict(format!(
                "a tenant named {:?} already exists",
                tenant.name
            )));
        }
        tx.execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (?1, ?2, ?3)",
            params![tenant.id, tenant.name, tenant.created_at],
        )?;
        tx.execute(
            "INSERT INTO api_tokens (id, tenant_id, token_hash, label, created_at, created_by)
             VALUES (?1, ?2, ?3, 'initial', ?4, 'admin token')",
            params![api_token_id, tenant.id, api_token_hash, tenant.created_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn list_tenants(&self) -> Result<Vec<TenantRow>, StorageError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, name, created_at FROM tenants ORDER BY created_at, rowid")?;
        let rows = stmt.query_map([], |r| {
            Ok(TenantRow {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- enrollment tokens -----------------------------------------------------

    pub fn create_enrollment_token(
        &self,
        row: &EnrollmentTokenRow,
        token_hash: &str,
    ) -> Result<(), StorageError> {
        self.conn().execute(
            "INSERT INTO enrollment_tokens (id, tenant_id, token_hash, label, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![row.id, row.tenant_id, token_hash, row.label, row.created_at, row.expires_at],
        )?;
        Ok(())
    }

    pub fn list_enrollment_tokens(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<EnrollmentTokenRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, tenant_id, label, created_at, expires_at, used_at, revoked_at
             FROM enrollment_tokens WHERE tenant_id = ?1 ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([tenant_id], enrollment_token_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revoke an enrollment token of `tenant_id`. Revoking twice keeps the
    /// first time. `None` if the tenant has no such token.
    pub fn revoke_enrollment_token(
        &self,
        tenant_id: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<EnrollmentTokenRow>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, ?3)
             WHERE id = ?1 AND tenant_id = ?2",
            params![id, tenant_id, now],
        )?;
        let row = tx
            .query_row(
                "SELECT id, tenant_id, label, created_at, expires_at, used_at, revoked_at
                 FROM enrollment_tokens WHERE id = ?1 AND tenant_id = ?2",
                params![id, tenant_id],
                enrollment_token_row,
            )
            .optional()?;
        tx.commit()?;
        Ok(row)
    }

    /// Spend an enrollment token and create the runner it admits, atomically:
    /// of any number of concurrent calls with the same token, one succeeds.
    /// Returns the new runner's tenant.
    pub fn enroll(
        &self,
        token_hash: &str,
        runner: &NewRunner<'_>,
        now: i64,
    ) -> Result<String, EnrollError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = tx
            .query_row(
                "SELECT id, tenant_id, expires_at, used_at, revoked_at
                 FROM enrollment_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((token_id, tenant_id, expires_at, used_at, revoked_at)) = found else {
            return Err(EnrollError::Refused(EnrollRefusal::Invalid));
        };
        if revoked_at.is_some() {
            return Err(EnrollError::Refused(EnrollRefusal::Revoked));
        }
        if used_at.is_some() {
            return Err(EnrollError::Refused(EnrollRefusal::Used));
        }
        if expires_at <= now {
            return Err(EnrollError::Refused(EnrollRefusal::Expired));
        }
        // The guard in the WHERE clause makes the spend atomic even where the
        // transaction is not serializable (a future PostgreSQL backend).
        let spent = tx.execute(
            "UPDATE enrollment_tokens SET used_at = ?2, runner_id = ?3 WHERE id = ?1 AND used_at IS NULL",
            params![token_id, now, runner.id],
        )?;
        if spent != 1 {
            return Err(EnrollError::Refused(EnrollRefusal::Used));
        }
        let name = enrollment_name(&tx, &tenant_id, runner.name).map_err(EnrollError::Storage)?;
        tx.execute(
            "INSERT INTO runners (id, tenant_id, name, reported_name, credential_hash, health, version, arch, os, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'unreachable', ?6, ?7, ?8, ?9)",
            params![
                runner.id,
                tenant_id,
                name,
                runner.name,
                runner.credential_hash,
                runner.version,
                runner.arch,
                runner.os,
                now
            ],
        )?;
        tx.commit()?;
        Ok(tenant_id)
    }

    // ---- runners ---------------------------------------------------------------

    pub fn runner(&self, tenant_id: &str, id: &str) -> Result<Option<RunnerRow>, StorageError> {
        let conn = self.conn();
        select_runner(&conn, tenant_id, id)
    }

    pub fn list_runners(&self, tenant_id: &str) -> Result<Vec<RunnerRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUNNER_COLUMNS} FROM runners WHERE tenant_id = ?1 ORDER BY created_at, rowid"
        ))?;
        let rows = stmt.query_map([tenant_id], raw_runner_row)?;
        let mut out = Vec::new();
        for raw in rows {
            out.push(raw?.into_row()?);
        }
        Ok(out)
    }

    /// The tenant's runners among `ids` (a selector's candidates,
    /// `fleet/labels.rs`): one look-up by key each, not the whole table.
    pub fn runners_by_ids(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RunnerRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RUNNER_COLUMNS} FROM runners
             WHERE id IN (SELECT value FROM json_each(?2)) AND tenant_id = ?1"
        ))?;
        let list = serde_json::Value::from(ids).to_string();
        let rows = stmt.query_map(params![tenant_id, list], raw_runner_row)?;
        let mut out = Vec::new();
        for raw in rows {
            out.push(raw?.into_row()?);
        }
        Ok(out)
    }

    pub fn runner_versions(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RunnerVersion>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, version, health FROM runners
             WHERE id IN (SELECT value FROM json_each(?2)) AND tenant_id = ?1",
        )?;
        let list = serde_json::Value::from(ids).to_string();
        let rows = stmt.query_map(params![tenant_id, list], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, version, health) = row?;
            out.push(RunnerVersion {
                id,
                version,
                health: Health::parse(&health)?,
            });
        }
        Ok(out)
    }

    /// Whose credential this is (by hash), for the connect handshake.
    pub fn runner_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<RunnerIdentity>, StorageError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT id, tenant_id, revoked_at IS NOT NULL FROM runners WHERE credential_hash = ?1",
            )?
            .query_row([credential_hash], |r| {
                Ok(RunnerIdentity { id: r.get(0)?, tenant_id: r.get(1)?, revoked: r.get(2)? })
            })
            .optional()?)
    }

    /// The health history of a runner of `tenant_id`, oldest first. `None` if
    /// the tenant has no such runner.
    pub fn health_history(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Vec<HealthRecord>>, StorageError> {
        let conn = self.conn();
        let exists = conn
            .query_row(
                "SELECT 1 FROM runners WHERE id = ?1 AND tenant_id = ?2",
                params![id, tenant_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            return Ok(None);
        }
        let mut stmt = conn.prepare(
            "SELECT runner_id, tenant_id, at, health, reason FROM health_events
             WHERE runner_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (runner_id, tenant_id, at, health, reason) = row?;
            out.push(HealthRecord {
                runner_id,
                tenant_id,
                at,
                health: Health::parse(&health)?,
                reason,
            });
        }
        Ok(Some(out))
    }

    /// A runner finished its hello: record what it said and mark it active.
    pub fn runner_connected(
        &self,
        id: &str,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some((tenant_id, old, revoked)) = current_health(&tx, id)? else {
            return Ok(ConnectOutcome::Refused);
        };
        if revoked {
            return Ok(ConnectOutcome::Refused);
        }
        tx.execute(
            "UPDATE runners SET health = 'active', reported_name = ?2, version = ?3, arch = ?4, os = ?5,
                 protocol = ?6, connected_since = ?7, last_seen = ?7
             WHERE id = ?1",
            params![
                id,
                info.name,
                info.version,
                info.arch,
                info.os,
                info.protocol,
                now
            ],
        )?;
        let record = record_change(&tx, id, &tenant_id, old, Health::Active, reason, now)?;
        tx.commit()?;
        Ok(ConnectOutcome::Active(record))
    }

    /// The operator renames a runner of `tenant_id`. `None`: no such
    /// runner; `Conflict`: another runner of the tenant has that name
    /// (names resolve runners, so they are unique per tenant).
    pub fn rename_runner(
        &self,
        tenant_id: &str,
        id: &str,
        name: &str,
    ) -> Result<Option<RunnerRow>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if select_runner(&tx, tenant_id, id)?.is_none() {
            return Ok(None);
        }
        let holder: Option<String> = tx
            .query_row(
                "SELECT id FROM runners WHERE tenant_id = ?1 AND name = ?2 AND id != ?3",
                params![tenant_id, name, id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = holder {
            return Err(StorageError::Conflict(format!(
                "runner {other} is named {name:?} already"
            )));
        }
        tx.execute(
            "UPDATE runners SET name = ?3 WHERE id = ?1 AND tenant_id = ?2",
            params![id, tenant_id, name],
        )?;
        let row = select_runner(&tx, tenant_id, id)?;
        tx.commit()?;
        Ok(row)
    }

    /// A runner's connection ended: unreachable, unless it was revoked meanwhile.
    pub fn runner_disconnected(
        &self,
        id: &str,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some((tenant_id, old, revoked)) = current_health(&tx, id)? else {
            return Ok(None);
        };
        if revoked {
            return Ok(None);
        }
        tx.execute(
            "UPDATE runners SET health = 'unreachable', connected_since = NULL,
                 last_seen = MAX(COALESCE(last_seen, 0), ?2)
             WHERE id = ?1",
            params![id, last_seen],
        )?;
        let record = record_change(&tx, id, &tenant_id, old, Health::Unreachable, reason, now)?;
        tx.commit()?;
        Ok(record)
    }

    /// Revoke a runner of `tenant_id`. `None` if the tenant has no such runner.
    /// The record is `Some` unless it was revoked already.
    pub fn revoke_runner(
        &self,
        tenant_id: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(before) = select_runner(&tx, tenant_id, id)? else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE runners SET health = 'revoked', revoked_at = COALESCE(revoked_at, ?2),
                 connected_since = NULL
             WHERE id = ?1",
            params![id, now],
        )?;
        let record = record_change(
            &tx,
            id,
            tenant_id,
            before.health,
            Health::Revoked,
            "revoked",
            now,
        )?;
        let after = select_runner(&tx, tenant_id, id)?;
        tx.commit()?;
        Ok(after.map(|row| (row, record)))
    }

    /// Mark every runner still stored as active unreachable (the server just
    /// started, so none of them can have a live connection).
    pub fn mark_all_unreachable(
        &self,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<(String, String)> = {
            let mut stmt =
                tx.prepare("SELECT id, tenant_id FROM runners WHERE health = 'active'")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for (id, tenant_id) in ids {
            tx.execute(
                "UPDATE runners SET health = 'unreachable', connected_since = NULL WHERE id = ?1",
                [&id],
            )?;
            if let Some(r) = record_change(
                &tx,
                &id,
                &tenant_id,
                Health::Active,
                Health::Unreachable,
                reason,
                now,
            )? {
                out.push(r);
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Persist last-seen times in one transaction (batched by the caller, so
    /// a thousand pinging runners cost one write every few seconds).
    pub fn touch_last_seen(&self, seen: &[(String, i64)]) -> Result<(), StorageError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE runners SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE id = ?1",
            )?;
            for (id, at) in seen {
                stmt.execute(params![id, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl SqliteControl {
    // ---- fingerprints and drift ------------------------------------------------

    /// Read a runner's fingerprint and write what `decide` makes of it, in
    /// one transaction (no report of a replaced connection can interleave).
    /// `decide` gets the stored JSON, if any; `None` writes nothing.
    pub fn update_fingerprint(
        &self,
        runner_id: &str,
        decide: impl FnOnce(Option<&str>) -> Option<FingerprintWrite>,
    ) -> Result<(), StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT body FROM fingerprints WHERE runner_id = ?1",
                [runner_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(w) = decide(stored.as_deref()) else {
            return Ok(());
        };
        tx.execute(
            "INSERT INTO fingerprints (runner_id, body, notes, collected_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (runner_id) DO UPDATE SET body = excluded.body, notes = excluded.notes,
                 collected_at = excluded.collected_at, updated_at = excluded.updated_at",
            params![runner_id, w.body, w.notes, w.collected_at, w.updated_at],
        )?;
        if !w.drift.is_empty() {
            let mut add = tx.prepare_cached(
                "INSERT INTO drift_events (runner_id, at, change) VALUES (?1, ?2, ?3)",
            )?;
            for (at, change) in &w.drift {
                add.execute(params![runner_id, at, change])?;
            }
            tx.execute(
                "DELETE FROM drift_events WHERE runner_id = ?1 AND seq <=
                    (SELECT seq FROM drift_events WHERE runner_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![runner_id, DRIFT_HISTORY_LIMIT],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored fingerprint of a runner of `tenant_id`: `None` if the
    /// tenant has no such runner, `Some(None)` if it has not reported one.
    pub fn fingerprint(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<Option<FingerprintRow>>, StorageError> {
        let conn = self.conn();
        if !runner_exists(&conn, tenant_id, runner_id)? {
            return Ok(None);
        }
        let row = conn
            .query_row(
                "SELECT body, notes, collected_at, updated_at FROM fingerprints WHERE runner_id = ?1",
                [runner_id],
                |r| {
                    Ok(FingerprintRow {
                        body: r.get(0)?,
                        notes: r.get(1)?,
                        collected_at: r.get(2)?,
                        updated_at: r.get(3)?,
                    })
                },
            )
            .optional()?;
        Ok(Some(row))
    }

    /// Drift events of a runner of `tenant_id` at or after `since`, oldest
    /// first. `None` if the tenant has no such runner.
    pub fn drift(
        &self,
        tenant_id: &str,
        runner_id: &str,
        since: i64,
    ) -> Result<Option<Vec<DriftRow>>, StorageError> {
        let conn = self.conn();
        if !runner_exists(&conn, tenant_id, runner_id)? {
            return Ok(None);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT at, change FROM drift_events WHERE runner_id = ?1 AND at >= ?2 ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![runner_id, since], |r| {
            Ok(DriftRow {
                at: r.get(0)?,
                change: r.get(1)?,
            })
        })?;
        Ok(Some(rows.collect::<Result<_, _>>()?))
    }
}

pub(super) fn runner_exists(
    conn: &Connection,
    tenant_id: &str,
    id: &str,
) -> Result<bool, StorageError> {
    // Cached: every connection's periodic checks ask this (logs, jobs).
    Ok(conn
        .prepare_cached("SELECT 1 FROM runners WHERE id = ?1 AND tenant_id = ?2")?
        .query_row(params![id, tenant_id], |_| Ok(()))
        .optional()?
        .is_some())
}

const RUNNER_COLUMNS: &str =
    "id, tenant_id, name, health, version, arch, os, protocol, created_at, \
                              last_seen, connected_since, revoked_at, reported_name";

/// A runner row as SQLite returns it, before the health string is checked
/// (rusqlite's row closures cannot return our error type).
struct RawRunner {
    row: RunnerRow,
    health: String,
}

impl RawRunner {
    fn into_row(self) -> Result<RunnerRow, StorageError> {
        let mut row = self.row;
        row.health = Health::parse(&self.health)?;
        Ok(row)
    }
}

fn raw_runner_row(r: &Row<'_>) -> rusqlite::Result<RawRunner> {
    Ok(RawRunner {
        health: r.get(3)?,
        row: RunnerRow {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            name: r.get(2)?,
            health: Health::Unreachable,
            version: r.get(4)?,
            arch: r.get(5)?,
            os: r.get(6)?,
            protocol: r.get(7)?,
            created_at: r.get(8)?,
            last_seen: r.get(9)?,
            connected_since: r.get(10)?,
            revoked_at: r.get(11)?,
            reported_name: r.get(12)?,
        },
    })
}

fn select_runner(
    conn: &Connection,
    tenant_id: &str,
    id: &str,
) -> Result<Option<RunnerRow>, StorageError> {
    let raw = conn
        .query_row(
            &format!("SELECT {RUNNER_COLUMNS} FROM runners WHERE id = ?1 AND tenant_id = ?2"),
            params![id, tenant_id],
            raw_runner_row,
        )
        .optional()?;
    raw.map(RawRunner::into_row).transpose()
}

fn enrollment_token_row(r: &Row<'_>) -> rusqlite::Result<EnrollmentTokenRow> {
    Ok(EnrollmentTokenRow {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        label: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        used_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

/// (tenant, stored health, revoked?) of a runner.
fn current_health(
    tx: &Transaction<'_>,
    id: &str,
) -> Result<Option<(String, Health, bool)>, StorageError> {
    let found = tx
        .prepare_cached(
            "SELECT tenant_id, health, revoked_at IS NOT NULL FROM runners WHERE id = ?1",
        )?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })
        .optional()?;
    found
        .map(|(tenant, health, revoked)| Ok((tenant, Health::parse(&health)?, revoked)))
        .transpose()
}

/// Append a history entry if the health actually changed, keeping the
/// history bounded.
fn record_change(
    tx: &Transaction<'_>,
    runner_id: &str,
    tenant_id: &str,
    old: Health,
    new: Health,
    reason: &str,
    now: i64,
) -> Result<Option<HealthRecord>, StorageError> {
    if old == new {
        return Ok(None);
    }
    tx.prepare_cached(
        "INSERT INTO health_events (runner_id, tenant_id, at, health, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![runner_id, tenant_id, now, new.as_str(), reason])?;
    tx.prepare_cached(
        "DELETE FROM health_events WHERE runner_id = ?1 AND seq <=
            (SELECT seq FROM health_events WHERE runner_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![runner_id, HEALTH_HISTORY_LIMIT])?;
    Ok(Some(HealthRecord {
        runner_id: runner_id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        at: now,
        health: new,
        reason: reason.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn tenant(s: &SqliteControl, id: &str) {
        let row = TenantRow {
            id: id.into(),
            name: format!("name-{id}"),
            created_at: T0,
        };
        s.create_tenant(&row, &format!("at_{id}"), &format!("hash-api-{id}"))
            .unwrap();
    }

    fn token(s: &SqliteControl, tenant: &str, id: &str, expires_at: i64) {
        let row = EnrollmentTokenRow {
            id: id.into(),
            tenant_id: tenant.into(),
            label: None,
            created_at: T0,
            expires_at,
            used_at: None,
            revoked_at: None,
        };
        s.create_enrollment_token(&row, &format!("hash-{id}"))
            .unwrap();
    }

    fn new_runner<'a>(id: &'a str, cred: &'a str) -> NewRunner<'a> {
        NewRunner {
            id,
            credential_hash: cred,
            name: "box",
            version: "0.1.0",
            arch: "x86_64",
            os: "linux",
        }
    }

    fn refusal(r: Result<String, EnrollError>) -> EnrollRefusal {
        match r {
            Err(EnrollError::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn enrollment_token_is_spent_once() {
        let s = SqliteControl::open_in_memory().unwrap();
        tenant(&s, "tn_a");
        token(&s, "tn_a", "et_1", T0 + 60_000);
        assert_eq!(
            s.enroll("hash-et_1", &new_runner("rn_1", "c1"), T0)
                .unwrap(),
            "tn_a"
        );
        assert_eq!(
            refusal(s.enroll("hash-et_1", &new_runner("rn_2", "c2"), T0)),
            EnrollRefusal::Used
        );
        assert!(
            s.runner("tn_a", "rn_2").unwrap().is_none(),
            "a refused enrollment creates nothing"
        );
        let tokens = s.list_enrollment_tokens("tn_a").unwrap();
        assert_eq!(tokens[0].state(T0), "used");
    }

    #[test]
    fn enrollment_refusals_are_classified() {
        let s = SqliteControl::open_in_memory().unwrap();
        tenant(&s, "tn_a");
        token(&s, "tn_a", "et_old", T0 - 1);
        token(&s, "tn_a", "et_rev", T0 + 60_000);
        s.revoke_enrollment_token("tn_a", "et_rev", T0)
            .unwrap()
            .unwrap();
        assert_eq!(
            refusal(s.enroll("hash-nope", &new_runner("rn_1", "c1"), T0)),
            EnrollRefusal::Invalid
        );
        assert_eq!(
            refusal(s.enroll("hash-et_old", &new_runner("rn_1", "c1"), T0)),
            EnrollRefusal::Expired
        );
        assert_eq!(
            refusal(s.enroll("hash-et_rev", &new_runner("rn_1", "c1"), T0)),
            EnrollRefusal::Revoked
        );
        let states: Vec<_> = s
            .list_enrollment_tokens("tn_a")
            .unwrap()
            .iter()
            .map(|t| t.state(T0))
            .collect();
        assert_eq!(states, ["expired", "revoked"]);
    }

    #[test]
    fn concurrent_enrollments_spend_a_token_once() {
        let s = std::sync::Arc::new(SqliteControl::open_in_memory().unwrap());
        tenant(&s, "tn_a");
        token(&s, "tn_a", "et_1", T0 + 60_000);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let id = format!("rn_{i}");
                    let cred = format!("c{i}");
                    s.enroll("hash-et_1", &new_runner(&id, &cred), T0).is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(wins, 1);
        assert_eq!(s.list_runners("tn_a").unwrap().len(), 1);
    }

    #[test]
    fn tenants_do_not_see_each_other() {
        let s = SqliteControl::open_in_memory().unwrap();
        tenant(&s, "tn_a");
        tenant(&s, "tn_b");
        token(&s, "tn_a", "et_1", T0 + 60_000);
        s.enroll("hash-et_1", &new_runner("rn_1", "c1"), T0)
            .unwrap();
        assert!(s.runner("tn_b", "rn_1").unwrap().is_none());
        assert!(s.list_runners("tn_b").unwrap().is_empty());
        assert!(s.health_history("tn_b", "rn_1").unwrap().is_none());
        assert!(s.revoke_runner("tn_b", "rn_1", T0).unwrap().is_none());
        assert!(s
            .revoke_enrollment_token("tn_b", "et_1", T0)
            .unwrap()
            .is_none());
        assert!(s.list_enrollment_tokens("tn_b").unwrap().is_empty());
        assert_eq!(
            s.runner("tn_a", "rn_1").unwrap().unwrap().health,
            Health::Unreachable
        );
    }

    #[test]
    fn tenant_names_are_unique() {
        let s = SqliteControl::open_in_memory().unwrap();
        tenant(&s, "tn_a");
        let dup = TenantRow {
            id: "tn_z".into(),
            name: "name-tn_a".into(),
            created_at: T0,
        };
        assert!(matches!(
            s.create_tenant(&dup, "at_z", "h"),
            Err(StorageError::Conflict(_))
        ));
        assert_eq!(
            s.api_token_auth("hash-api-tn_a", T0)
                .unwrap()
                .unwrap()
                .tenant_id,
            "tn_a"
        );
        assert!(s.api_token_auth("hash-api-tn_z", T0).unwrap().is_err());
    }

    #[test]
    fn health_changes_are_recorded_once_and_revocation_sticks() {
        let s = SqliteControl::open_in_memory().unwrap();
        tenant(&s, "tn_a");
        token(&s, "tn_a", "et_1", T0 + 60_000);
        s.enroll("hash-et_1", &new_runner("rn_1", "c1"), T0)
            .unwrap();
        let info = ConnectedInfo {
            name: "edge-01",
            version: "0.2.0",
            arch: "aarch64",
            os: "linux",
            protocol: 1,
        };
        assert!(matches!(
            s.runner_connected("rn_1", &info, "connected", T0 + 1)
                .unwrap(),
            ConnectOutcome::Active(Some(_))
        ));
        // A replacing connection is not a change.
        assert_eq!(
            s.runner_connected("rn_1", &info, "connected", T0 + 2)
                .unwrap(),
            ConnectOutcome::Active(None)
        );
        let row = s.runner("tn_a", "rn_1").unwrap().unwrap();
        assert_eq!(
            (
                row.name.as_str(),
                row.reported_name.as_str(),
                row.protocol,
                row.connected_since
            ),
            ("box", "edge-01", Some(1), Some(T0 + 2))
        );
        assert!(s
            .runner_disconnected("rn_1", T0 + 3, "connection closed", T0 + 4)
            .unwrap()
            .is_some());
        assert!(s
            .runner_disconnected("rn_1", T0 + 3, "connection closed", T0 + 4)
            .unwrap()
            .is_none());
        assert_eq!(
            s.runner("tn_a", "rn_1").unwrap().unwrap().connected_since,
            None
        );

        let (row, rec) = s.revoke_runner("tn_a", "rn_1", T0 + 5).unwrap().unwrap();
        assert_eq!(
            (row.health, row.revoked_at),
            (Health::Revoked, Some(T0 + 5))
        );
        assert!(rec.is_some());
        assert!(s
            .revoke_runner("tn_a", "rn_1", T0 + 6)
            .unwrap()
            .unwrap()
            .1
            .is_none());
        assert_eq!(
            s.runner_connected("rn_1", &info, "connected", T0 + 7)
                .unwrap(),
            ConnectOutcome::Refused
        );
        assert!(s
            .runner_disconnected("rn_1", T0 + 7, "x", T0 + 7)
            .unwrap()
            .is_none());
        assert!(s.runner_by_credential("c1").unwrap().unwrap().revoked);

        let history: Vec<_> = s
            .health_history("tn_a", "rn_1")
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|h| (h.health, h.reason))
            .collect();
        assert_eq!(
            history,
            [
                (Health::Active, "connected".to_owned()),
                (Health::Unreachable, "connection closed".to_owned()),
                (Health::Revoked, "revoked".to_owned()),
            ]
        );
    }

    #[test]
    fn restart_marks_active_runners_unreachable() {
        let s = SqliteControl::open_in_memory().unwrap();
        tenant(&s, "tn_a");
        token(&s, "tn_a", "et_1", T0 + 60_000);
        s.enroll("hash-et_1", &new_runner("rn_1", "c1"), T0)
            .unwrap();
        let info = ConnectedInfo {
            name: "b",
            version: "0.1.0",
            arch: "x86_64",
            os: "linux",
            protocol: 1,
        };
        s.runner_connected("rn_1", &info, "connected", T0).unwrap();
        s.touch_last_seen(&[("rn_1".into(), T0 + 9)]).unwrap();
        let recs = s.mark_all_unreachable("server restarted", T0 + 10).unwrap();
        assert_eq!(recs.len(), 1);
        let row = s.runner("tn_a", "rn_1").unwrap().unwrap();
        assert_eq!(
            (row.health, row.last_seen),
            (Health::Unreachable, Some(T0 + 9))
        );
        assert!(s
            .mark_all_unreachable("server restarted", T0 + 11)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn schema_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("tether-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        {
            let s = SqliteControl::open(&path).unwrap();
            tenant(&s, "tn_a");
        }
        let s = SqliteControl::open(&path).unwrap();
        assert_eq!(s.list_tenants().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 15, item 8: a runner's hello (its hostname) never changes its
    /// name; enrollment cannot take a name another runner holds; only the
    /// operator renames, and not onto a name in use.
    #[test]
    fn names_are_the_operators_and_unique_and_hello_only_reports() {
        let s = SqliteControl::open_in_memory().unwrap();
        tenant(&s, "tn_a");
        tenant(&s, "tn_b");
        let enroll = |tn: &str, tok: &str, id: &str, asked: &str| {
            token(&s, tn, tok, T0 + 60_000);
            let cred = format!("c-{id}");
            let r = NewRunner {
                name: asked,
                ..new_runner(id, &cred)
            };
            s.enroll(&format!("hash-{tok}"), &r, T0).unwrap();
            let row = s.runner(tn, id).unwrap().unwrap();
            (row.name, row.reported_name)
        };
        assert_eq!(
            enroll("tn_a", "e1", "rn_1", "web-1"),
            ("web-1".into(), "web-1".into())
        );
        assert_eq!(
            enroll("tn_a", "e2", "rn_2", "web-1"),
            ("web-1-2".into(), "web-1".into())
        );
        assert_eq!(
            enroll("tn_a", "e3", "rn_3", "web-1"),
            ("web-1-3".into(), "web-1".into())
        );
        // Another tenant's names are its own.
        assert_eq!(
            enroll("tn_b", "e4", "rn_4", "web-1"),
            ("web-1".into(), "web-1".into())
        );
        // Names shaped like ids, empty or with control characters are not kept.
        assert_eq!(enroll("tn_a", "e5", "rn_5", "rn_1").0, "runner");
        assert_eq!(enroll("tn_a", "e6", "rn_6", " \n").0, "runner-2");
        assert_eq!(enroll("tn_a", "e7", "rn_7", "a\u{7}b").0, "ab");

        // rn_2 says it is web-1 in every hello: reported, not taken.
        let info = ConnectedInfo {
            name: "web-1",
            version: "0.2.0",
            arch: "x86_64",
            os: "linux",
            protocol: 1,
        };
        s.runner_connected("rn_2", &info, "connected", T0 + 1)
            .unwrap();
        let row = s.runner("tn_a", "rn_2").unwrap().unwrap();
        assert_eq!(
            (row.name.as_str(), row.reported_name.as_str()),
            ("web-1-2", "web-1")
        );

        // The operator renames; a name in use is a conflict and changes nothing.
        assert!(matches!(
            s.rename_runner("tn_a", "rn_2", "web-1"),
            Err(StorageError::Conflict(_))
        ));
        assert_eq!(s.runner("tn_a", "rn_2").unwrap().unwrap().name, "web-1-2");
        let row = s.rename_runner("tn_a", "rn_2", "edge-2").unwrap().unwrap();
        assert_eq!(
            (row.name.as_str(), row.reported_name.as_str()),
            ("edge-2", "web-1")
        );
        // Its own name again is fine; another tenant's runner is not found.
        assert!(s.rename_runner("tn_a", "rn_2", "edge-2").unwrap().is_some());
        assert!(s.rename_runner("tn_b", "rn_2", "x").unwrap().is_none());
        assert!(!valid_runner_name("rn_2") && !valid_runner_name(" x") && !valid_runner_name(""));
        assert!(valid_runner_name("lab \"7\" \\ edge"));
    }
}
