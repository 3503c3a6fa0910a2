//! Alerts at rest (`<data-dir>/alerts.db`): the SQL behind
//! [`AlertStore`](crate::db::alerts::AlertStore), its schema the numbered
//! migrations of `MIGRATIONS` (`migrate.rs`).
//!
//! ```text
//! alert_rules      id → tenant, spec JSON (alerts/rules.rs RuleSpec)
//! alert_channels   id → tenant, name, kind, public JSON, sealed config (nonce, blob)
//! alert_state      (rule, target) → tenant, runner, subject, state, since, summary, ack
//!                  only pending/firing targets; a resolved one is deleted
//! alert_history    seq → tenant, rule, runner, subject, state, at, summary, silenced
//! alert_silences   id → tenant, spec JSON, ends (for pruning)
//! alert_deliveries seq → tenant, channel, history seq, at, attempt, ok, detail
//! ```
//!
//! History and deliveries keep the newest [`KEEP_ROWS`] rows.

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::migrate::{migrate, Migration, Step};
use super::Blocking;

use crate::db::alerts::*;
use crate::db::StorageError;

/// The schema of `alerts.db`, in order (`migrate.rs`: append, never edit).
const MIGRATIONS: &[Migration] = &[Migration {
    name: "1: rules, channels, states, history, silences, deliveries",
    step: Step::Sql(
        "CREATE TABLE alert_rules (
         id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, spec TEXT NOT NULL, created_ms INTEGER NOT NULL);
     CREATE INDEX alert_rules_tenant ON alert_rules (tenant_id);
     CREATE TABLE alert_channels (
         id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
         public TEXT NOT NULL, nonce BLOB NOT NULL, sealed BLOB NOT NULL, created_ms INTEGER NOT NULL,
         UNIQUE (tenant_id, name));
     CREATE TABLE alert_state (
         rule_id TEXT NOT NULL, target TEXT NOT NULL, tenant_id TEXT NOT NULL,
         runner_id TEXT NOT NULL, subject TEXT NOT NULL, state TEXT NOT NULL,
         since_ms INTEGER NOT NULL, summary TEXT NOT NULL,
         ack_by TEXT, ack_ms INTEGER, ack_comment TEXT,
         PRIMARY KEY (rule_id, target)) WITHOUT ROWID;
     CREATE INDEX alert_state_tenant ON alert_state (tenant_id);
     CREATE TABLE alert_history (
         seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id TEXT NOT NULL, rule_id TEXT NOT NULL,
         runner_id TEXT NOT NULL, subject TEXT NOT NULL, state TEXT NOT NULL, at_ms INTEGER NOT NULL,
         summary TEXT NOT NULL, silenced INTEGER NOT NULL);
     CREATE INDEX alert_history_tenant ON alert_history (tenant_id, seq);
     CREATE TABLE alert_silences (
         id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, created_by TEXT NOT NULL,
         spec TEXT NOT NULL, ends_ms INTEGER NOT NULL);
     CREATE TABLE alert_deliveries (
         seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant_id TEXT NOT NULL, channel_id TEXT NOT NULL,
         history_seq INTEGER, at_ms INTEGER NOT NULL, attempt INTEGER NOT NULL, ok INTEGER NOT NULL,
         detail TEXT NOT NULL);
     CREATE INDEX alert_deliveries_channel ON alert_deliveries (tenant_id, channel_id, seq);",
    ),
}];

/// [`AlertStore`] on SQLite: one connection behind a mutex (alert traffic is
/// a few rows per state change, not a stream).
pub struct SqliteAlerts {
    conn: Mutex<Connection>,
}

impl SqliteAlerts {
    pub fn open(path: &Path) -> Result<SqliteAlerts, StorageError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        SqliteAlerts::setup(conn)
    }

    pub fn open_in_memory() -> Result<SqliteAlerts, StorageError> {
        SqliteAlerts::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<SqliteAlerts, StorageError> {
        migrate(&mut conn, "alerts.db", MIGRATIONS)?;
        Ok(SqliteAlerts {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding it left no half-done transaction behind
        // (rusqlite rolls back on drop).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn json_err(e: serde_json::Error) -> StorageError {
    StorageError::Corrupt(format!("alerts.db: {e}"))
}

fn rule_from(id: String, tenant: String, spec: String) -> Result<Rule, StorageError> {
    let spec: RuleSpec = serde_json::from_str(&spec).map_err(json_err)?;
    Ok(Rule { id, tenant, spec })
}

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    let state: String = r.get(5)?;
    let ack_by: Option<String> = r.get(8)?;
    Ok(AlertRow {
        rule_id: r.get(0)?,
        target: r.get(1)?,
        tenant: r.get(2)?,
        runner_id: r.get(3)?,
        subject: r.get(4)?,
        state: State::parse(&state).unwrap_or(State::Firing),
        since_ms: r.get(6)?,
        summary: r.get(7)?,
        ack: match ack_by {
            Some(by) => Some(Ack {
                by,
                at_ms: r.get(9)?,
                comment: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
            }),
            None => None,
        },
    })
}

const ALERT_COLUMNS: &str =
    "rule_id, target, tenant_id, runner_id, subject, state, since_ms, summary, ack_by, ack_ms, ack_comment";

fn channel_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChannelRow> {
    Ok(ChannelRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        public: r.get(4)?,
        nonce: r.get(5)?,
        sealed: r.get(6)?,
        created_ms: r.get(7)?,
    })
}

const CHANNEL_COLUMNS: &str = "id, tenant_id, name, kind, public, nonce, sealed, created_ms";

fn silence_from(
    id: String,
    tenant: String,
    by: String,
    spec: String,
) -> Result<Silence, StorageError> {
    let spec: SilenceSpec = serde_json::from_str(&spec).map_err(json_err)?;
    Ok(Silence {
        id,
        tenant,
        created_by: by,
        spec,
    })
}

impl SqliteAlerts {
    pub fn put_rule(&self, rule: &Rule, now: i64) -> Result<(), StorageError> {
        let spec = serde_json::to_string(&rule.spec).map_err(json_err)?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO alert_rules (id, tenant_id, spec, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET spec = ?3 WHERE tenant_id = ?2",
            params![rule.id, rule.tenant, spec, now],
        )?;
        Ok(())
    }

    pub fn delete_rule(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM alert_rules WHERE tenant_id = ?1 AND id = ?2",
            params![tenant, id],
        )?;
        tx.execute(
            "DELETE FROM alert_state WHERE tenant_id = ?1 AND rule_id = ?2",
            params![tenant, id],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    pub fn rules(&self, tenant: &str) -> Result<Vec<Rule>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, tenant_id, spec FROM alert_rules WHERE tenant_id = ?1 ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([tenant], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.map(|r| {
            let (id, t, s) = r?;
            rule_from(id, t, s)
        })
        .collect()
    }

    pub fn all_rules(&self) -> Result<Vec<Rule>, StorageError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, tenant_id, spec FROM alert_rules ORDER BY created_ms, id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.map(|r| {
            let (id, t, s) = r?;
            rule_from(id, t, s)
        })
        .collect()
    }

    pub fn put_channel(&self, ch: &ChannelRow) -> Result<bool, StorageError> {
        let conn = self.conn();
        let n = conn.execute(
            "INSERT INTO alert_channels (id, tenant_id, name, kind, public, nonce, sealed, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET name = ?3, kind = ?4, public = ?5, nonce = ?6, sealed = ?7
               WHERE tenant_id = ?2
             ON CONFLICT (tenant_id, name) DO NOTHING",
            params![ch.id, ch.tenant, ch.name, ch.kind, ch.public, ch.nonce, ch.sealed, ch.created_ms],
        )?;
        Ok(n > 0)
    }

    pub fn delete_channel(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let n = self.conn().execute(
            "DELETE FROM alert_channels WHERE tenant_id = ?1 AND id = ?2",
            params![tenant, id],
        )?;
        Ok(n > 0)
    }

    pub fn channels(&self, tenant: &str) -> Result<Vec<ChannelRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM alert_channels WHERE tenant_id = ?1 ORDER BY created_ms, id"
        ))?;
        let rows = stmt.query_map([tenant], channel_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn channel(&self, tenant: &str, id: &str) -> Result<Option<ChannelRow>, StorageError> {
        // Read for every delivery: the statement is kept.
        Ok(self
            .conn()
            .prepare_cached(&format!(
                "SELECT {CHANNEL_COLUMNS} FROM alert_channels WHERE tenant_id = ?1 AND (id = ?2 OR name = ?2)"
            ))?
            .query_row(params![tenant, id], channel_row)
            .optional()?)
    }

    /// Statements kept (`prepare_cached`): a busy fleet makes many
    /// transitions, each was parsed three times.
    ///
    /// The embedded server is one replica and keeps no live-links table
    /// (`db/cluster.rs`): no link is ever the runner's current one here,
    /// so a transition written through one is refused (the one server's
    /// engine owns every runner and writes without).
    pub fn transition(
        &self,
        a: &AlertRow,
        silenced: bool,
        at: i64,
        through: Option<&LinkRef>,
    ) -> Result<Option<i64>, StorageError> {
        if through.is_some() {
            return Ok(None);
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if a.state == State::Resolved {
            tx.prepare_cached("DELETE FROM alert_state WHERE rule_id = ?1 AND target = ?2")?
                .execute(params![a.rule_id, a.target])?;
        } else {
            tx.prepare_cached(
                "INSERT INTO alert_state (rule_id, target, tenant_id, runner_id, subject, state, since_ms, summary)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (rule_id, target) DO UPDATE SET state = ?6, since_ms = ?7, summary = ?8",
            )?
            .execute(params![a.rule_id, a.target, a.tenant, a.runner_id, a.subject, a.state.as_str(), a.since_ms, a.summary])?;
        }
        tx.prepare_cached(
            "INSERT INTO alert_history (tenant_id, rule_id, runner_id, subject, state, at_ms, summary, silenced)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![a.tenant, a.rule_id, a.runner_id, a.subject, a.state.as_str(), at, a.summary, silenced])?;
        let seq = tx.last_insert_rowid();
        tx.prepare_cached("DELETE FROM alert_history WHERE seq <= ?1 - ?2")?
            .execute(params![seq, KEEP_ROWS])?;
        tx.commit()?;
        Ok(Some(seq))
    }

    pub fn alerts(&self, tenant: &str) -> Result<Vec<AlertRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ALERT_COLUMNS} FROM alert_state WHERE tenant_id = ?1 AND state = 'firing' ORDER BY since_ms"
        ))?;
        let rows = stmt.query_map([tenant], alert_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn all_alerts(&self) -> Result<Vec<AlertRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {ALERT_COLUMNS} FROM alert_state"))?;
        let rows = stmt.query_map([], alert_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn runners_alerts(&self, runner_ids: &[String]) -> Result<Vec<AlertRow>, StorageError> {
        let conn = self.conn();
        let mut out = Vec::new();
        for ids in runner_ids.chunks(TAKE_OVER_CHUNK) {
            let marks = vec!["?"; ids.len()].join(",");
            let mut stmt = conn.prepare(&format!(
                "SELECT {ALERT_COLUMNS} FROM alert_state WHERE runner_id IN ({marks})"
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(ids), alert_row)?;
            for r in rows {
                out.push(r?);
            }
        }
        Ok(out)
    }

    pub fn ack(
        &self,
        tenant: &str,
        rule: &str,
        target: &str,
        ack: &Ack,
    ) -> Result<bool, StorageError> {
        let n = self.conn().execute(
            "UPDATE alert_state SET ack_by = ?4, ack_ms = ?5, ack_comment = ?6
             WHERE tenant_id = ?1 AND rule_id = ?2 AND target = ?3 AND state = 'firing'",
            params![tenant, rule, target, ack.by, ack.at_ms, ack.comment],
        )?;
        Ok(n > 0)
    }

    pub fn history(
        &self,
        tenant: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<HistoryRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, rule_id, runner_id, subject, state, at_ms, summary, silenced FROM alert_history
             WHERE tenant_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![tenant, before, limit], |r| {
            Ok(HistoryRow {
                seq: r.get(0)?,
                rule_id: r.get(1)?,
                runner_id: r.get(2)?,
                subject: r.get(3)?,
                state: r.get(4)?,
                at_ms: r.get(5)?,
                summary: r.get(6)?,
                silenced: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn put_silence(&self, s: &Silence) -> Result<(), StorageError> {
        let spec = serde_json::to_string(&s.spec).map_err(json_err)?;
        self.conn().execute(
            "INSERT INTO alert_silences (id, tenant_id, created_by, spec, ends_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.id, s.tenant, s.created_by, spec, s.spec.ends_ms],
        )?;
        Ok(())
    }

    pub fn delete_silence(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let n = self.conn().execute(
            "DELETE FROM alert_silences WHERE tenant_id = ?1 AND id = ?2",
            params![tenant, id],
        )?;
        Ok(n > 0)
    }

    pub fn silences(&self, tenant: &str) -> Result<Vec<Silence>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, tenant_id, created_by, spec FROM alert_silences WHERE tenant_id = ?1 ORDER BY ends_ms",
        )?;
        let rows = stmt.query_map([tenant], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.map(|r| {
            let (a, b, c, d) = r?;
            silence_from(a, b, c, d)
        })
        .collect()
    }

    pub fn all_silences(&self, now: i64) -> Result<Vec<Silence>, StorageError> {
        let conn = self.conn();
        conn.execute("DELETE FROM alert_silences WHERE ends_ms < ?1", [now])?;
        let mut stmt =
            conn.prepare("SELECT id, tenant_id, created_by, spec FROM alert_silences")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.map(|r| {
            let (a, b, c, d) = r?;
            silence_from(a, b, c, d)
        })
        .collect()
    }

    pub fn delivery(&self, tenant: &str, d: &DeliveryRow) -> Result<(), StorageError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO alert_deliveries (tenant_id, channel_id, history_seq, at_ms, attempt, ok, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![tenant, d.channel_id, d.history_seq, d.at_ms, d.attempt, d.ok, d.detail])?;
        let seq = conn.last_insert_rowid();
        conn.prepare_cached("DELETE FROM alert_deliveries WHERE seq <= ?1 - ?2")?
            .execute(params![seq, KEEP_ROWS])?;
        Ok(())
    }

    pub fn deliveries(
        &self,
        tenant: &str,
        channel: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, channel_id, history_seq, at_ms, attempt, ok, detail FROM alert_deliveries
             WHERE tenant_id = ?1 AND channel_id = ?2 ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![tenant, channel, limit], |r| {
            Ok(DeliveryRow {
                seq: r.get(0)?,
                channel_id: r.get(1)?,
                history_seq: r.get(2)?,
                at_ms: r.get(3)?,
                attempt: r.get(4)?,
                ok: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl AlertStore for Blocking<SqliteAlerts> {
    async fn put_rule(&self, rule: &Rule, now: i64) -> Result<(), StorageError> {
        let rule = rule.to_owned();
        self.run(move |s| s.put_rule(&rule, now)).await
    }
    async fn delete_rule(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let tenant = tenant.to_owned();
        let id = id.to_owned();
        self.run(move |s| s.delete_rule(&tenant, &id)).await
    }
    async fn rules(&self, tenant: &str) -> Result<Vec<Rule>, StorageError> {
        let tenant = tenant.to_owned();
        self.run(move |s| s.rules(&tenant)).await
    }
    async fn all_rules(&self) -> Result<Vec<Rule>, StorageError> {
        self.run(move |s| s.all_rules()).await
    }
    async fn put_channel(&self, ch: &ChannelRow) -> Result<bool, StorageError> {
        let ch = ch.to_owned();
        self.run(move |s| s.put_channel(&ch)).await
    }
    async fn delete_channel(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let tenant = tenant.to_owned();
        let id = id.to_owned();
        self.run(move |s| s.delete_channel(&tenant, &id)).await
    }
    async fn channels(&self, tenant: &str) -> Result<Vec<ChannelRow>, StorageError> {
        let tenant = tenant.to_owned();
        self.run(move |s| s.channels(&tenant)).await
    }
    async fn channel(&self, tenant: &str, id: &str) -> Result<Option<ChannelRow>, StorageError> {
        let tenant = tenant.to_owned();
        let id = id.to_owned();
        self.run(move |s| s.channel(&tenant, &id)).await
    }
    async fn transition(
        &self,
        a: &AlertRow,
        silenced: bool,
        at: i64,
        through: Option<&LinkRef>,
    ) -> Result<Option<i64>, StorageError> {
        let (a, through) = (a.to_owned(), through.cloned());
        self.run(move |s| s.transition(&a, silenced, at, through.as_ref()))
            .await
    }
    async fn alerts(&self, tenant: &str) -> Result<Vec<AlertRow>, StorageError> {
        let tenant = tenant.to_owned();
        self.run(move |s| s.alerts(&tenant)).await
    }
    async fn all_alerts(&self) -> Result<Vec<AlertRow>, StorageError> {
        self.run(move |s| s.all_alerts()).await
    }
    async fn runners_alerts(&self, runner_ids: &[String]) -> Result<Vec<AlertRow>, StorageError> {
        let runner_ids = runner_ids.to_owned();
        self.run(move |s| s.runners_alerts(&runner_ids)).await
    }
    async fn ack(
        &self,
        tenant: &str,
        rule: &str,
        target: &str,
        ack: &Ack,
    ) -> Result<bool, StorageError> {
        let tenant = tenant.to_owned();
        let rule = rule.to_owned();
        let target = target.to_owned();
        let ack = ack.to_owned();
        self.run(move |s| s.ack(&tenant, &rule, &target, &ack))
            .await
    }
    async fn history(
        &self,
        tenant: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<HistoryRow>, StorageError> {
        let tenant = tenant.to_owned();
        self.run(move |s| s.history(&tenant, before, limit)).await
    }
    async fn put_silence(&self, s: &Silence) -> Result<(), StorageError> {
        let silence = s.clone();
        self.run(move |st| st.put_silence(&silence)).await
    }
    async fn delete_silence(&self, tenant: &str, id: &str) -> Result<bool, StorageError> {
        let tenant = tenant.to_owned();
        let id = id.to_owned();
        self.run(move |s| s.delete_silence(&tenant, &id)).await
    }
    async fn silences(&self, tenant: &str) -> Result<Vec<Silence>, StorageError> {
        let tenant = tenant.to_owned();
        self.run(move |s| s.silences(&tenant)).await
    }
    async fn all_silences(&self, now: i64) -> Result<Vec<Silence>, StorageError> {
        self.run(move |s| s.all_silences(now)).await
    }
    async fn delivery(&self, tenant: &str, d: &DeliveryRow) -> Result<(), StorageError> {
        let tenant = tenant.to_owned();
        let d = d.to_owned();
        self.run(move |s| s.delivery(&tenant, &d)).await
    }
    async fn deliveries(
        &self,
        tenant: &str,
        channel: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StorageError> {
        let tenant = tenant.to_owned();
        let channel = channel.to_owned();
        self.run(move |s| s.deliveries(&tenant, &channel, limit))
            .await
    }
}
