//! The terminal audit trail: who opened which terminal where, when, and for
//! how long. One row per session, written when it opens and completed when
//! it ends (or marked ended by a server restart, since a session does not
//! survive the server). Its table is migration 7 of tether.db (made with
//! `IF NOT EXISTS`: files of earlier builds made it on every start).
//!
//! Bounds: the newest [`AUDIT_LIMIT`] rows per tenant are kept.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::control::SqliteControl;
use crate::db::audit::*;
use crate::db::StorageError;

/// Audit rows kept per tenant.
pub const AUDIT_LIMIT: i64 = 100_000;

/// Migration 7 of tether.db (`control.rs`).
pub(super) fn create(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS terminal_audit (
            id          TEXT PRIMARY KEY,
            tenant_id   TEXT NOT NULL,
            runner_id   TEXT NOT NULL,
            target      TEXT NOT NULL,
            who         TEXT NOT NULL,
            client      TEXT NOT NULL,
            opened_at   INTEGER NOT NULL,
            closed_at   INTEGER,
            reason      TEXT,
            bytes_in    INTEGER NOT NULL DEFAULT 0,
            bytes_out   INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS terminal_audit_by_tenant ON terminal_audit(tenant_id, opened_at);",
    )
}

/// At start: a session does not survive the server, so one still open in
/// the trail ended with the previous process.
pub(super) fn end_open_sessions(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(
        "UPDATE terminal_audit SET closed_at = opened_at, reason = 'server restarted'
            WHERE closed_at IS NULL;",
    )?;
    Ok(())
}

impl SqliteControl {
    /// `tok_… (label)` for an API token hash, for the audit trail.
    pub fn api_token_name(&self, token_hash: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, label FROM api_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| {
                    let id: String = r.get(0)?;
                    let label: Option<String> = r.get(1)?;
                    Ok(match label.filter(|l| !l.is_empty()) {
                        Some(l) => format!("{id} ({l})"),
                        None => id,
                    })
                },
            )
            .optional()?)
    }

    pub fn terminal_opened(
        &self,
        tenant_id: &str,
        row: &TerminalAuditRow,
    ) -> Result<(), StorageError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO terminal_audit (id, tenant_id, runner_id, target, who, client, opened_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                row.id,
                tenant_id,
                row.runner_id,
                row.target,
                row.who,
                row.client,
                row.opened_ms
            ],
        )?;
        conn.execute(
            "DELETE FROM terminal_audit WHERE tenant_id = ?1 AND id NOT IN
               (SELECT id FROM terminal_audit WHERE tenant_id = ?1
                ORDER BY opened_at DESC LIMIT ?2)",
            params![tenant_id, AUDIT_LIMIT],
        )?;
        Ok(())
    }

    pub fn terminal_closed(
        &self,
        id: &str,
        closed_ms: i64,
        reason: &str,
        bytes_in: u64,
        bytes_out: u64,
    ) -> Result<(), StorageError> {
        self.conn().execute(
            "UPDATE terminal_audit SET closed_at = ?2, reason = ?3, bytes_in = ?4, bytes_out = ?5
             WHERE id = ?1 AND closed_at IS NULL",
            params![id, closed_ms, reason, bytes_in as i64, bytes_out as i64],
        )?;
        Ok(())
    }

    /// Newest first; `runner` narrows to one runner.
    pub fn terminal_audit(
        &self,
        tenant_id: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TerminalAuditRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, runner_id, target, who, client, opened_at, closed_at, reason, bytes_in, bytes_out
             FROM terminal_audit WHERE tenant_id = ?1 AND (?2 IS NULL OR runner_id = ?2)
             ORDER BY opened_at DESC, rowid DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![tenant_id, runner, limit as i64], |r| {
            Ok(TerminalAuditRow {
                id: r.get(0)?,
                runner_id: r.get(1)?,
                target: r.get(2)?,
                who: r.get(3)?,
                client: r.get(4)?,
                opened_ms: r.get(5)?,
                closed_ms: r.get(6)?,
                reason: r.get(7)?,
                bytes_in: r.get(8)?,
                bytes_out: r.get(9)?,
                replica_id: None,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_recorded_and_completed() {
        let s = SqliteControl::open_in_memory().unwrap();
        let row = TerminalAuditRow {
            id: "tm_1".into(),
            runner_id: "rn_1".into(),
            target: "host".into(),
            who: "tok_1 (ops)".into(),
            client: "127.0.0.1:5000".into(),
            opened_ms: 1000,
            closed_ms: None,
            reason: None,
            bytes_in: 0,
            bytes_out: 0,
            replica_id: None,
        };
        s.terminal_opened("tn_1", &row).unwrap();
        let open = s.terminal_audit("tn_1", Some("rn_1"), 10).unwrap();
        assert_eq!((open.len(), open[0].closed_ms), (1, None));
        s.terminal_closed("tm_1", 5000, "exited 0", 12, 345)
            .unwrap();
        // A second close does not overwrite the first.
        s.terminal_closed("tm_1", 9000, "again", 0, 0).unwrap();
        let rows = s.terminal_audit("tn_1", None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].closed_ms, Some(5000));
        assert_eq!(rows[0].reason.as_deref(), Some("exited 0"));
        assert_eq!((rows[0].bytes_in, rows[0].bytes_out), (12, 345));
        assert!(s.terminal_audit("tn_2", None, 10).unwrap().is_empty());
        assert!(s
            .terminal_audit("tn_1", Some("rn_2"), 10)
            .unwrap()
            .is_empty());
    }
}
