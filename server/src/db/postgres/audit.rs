//! [`AuditStore`] on PostgreSQL: the terminal audit trail, the newest
//! [`AUDIT_LIMIT`] rows per tenant kept (as `sqlite/terminals.rs`).
//!
//! Unlike SQLite, a start does not mark every open row "server restarted":
//! with several replicas another one may hold those sessions still. Each
//! row names the replica holding its session (`replica_id`); that
//! replica's rows are closed when it starts again, stops, or is reaped
//! as dead (`postgres/cluster.rs`, `release_all`).

use async_trait::async_trait;

use super::PgControl;
use crate::db::audit::*;
use crate::db::StorageError;

/// Audit rows kept per tenant.
pub const AUDIT_LIMIT: i64 = 100_000;

#[async_trait]
impl AuditStore for PgControl {
    async fn terminal_opened(
        &self,
        tenant_id: &str,
        row: &TerminalAuditRow,
    ) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO terminal_audit
                (id, tenant_id, runner_id, target, who, client, opened_at, replica_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &row.id,
                &tenant_id,
                &row.runner_id,
                &row.target,
                &row.who,
                &row.client,
                &row.opened_ms,
                &row.replica_id,
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM terminal_audit WHERE tenant_id = $1 AND id NOT IN
               (SELECT id FROM terminal_audit WHERE tenant_id = $1
                ORDER BY opened_at DESC, seq DESC LIMIT $2)",
            &[&tenant_id, &AUDIT_LIMIT],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn terminal_closed(
        &self,
        id: &str,
        closed_ms: i64,
        reason: &str,
        bytes_in: u64,
        bytes_out: u64,
    ) -> Result<(), StorageError> {
        let c = self.client().await?;
        let [bytes_in, bytes_out] = [bytes_in, bytes_out].map(|b| b.min(i64::MAX as u64) as i64);
        c.execute(
            "UPDATE terminal_audit SET closed_at = $2, reason = $3, bytes_in = $4, bytes_out = $5
             WHERE id = $1 AND closed_at IS NULL",
            &[&id, &closed_ms, &reason, &bytes_in, &bytes_out],
        )
        .await?;
        Ok(())
    }

    async fn terminal_audit(
        &self,
        tenant_id: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TerminalAuditRow>, StorageError> {
        let c = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .query(
                "SELECT id, runner_id, target, who, client, opened_at, closed_at, reason,
                        bytes_in, bytes_out, replica_id
                 FROM terminal_audit WHERE tenant_id = $1 AND ($2::TEXT IS NULL OR runner_id = $2)
                 ORDER BY opened_at DESC, seq DESC LIMIT $3",
                &[&tenant_id, &runner, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| TerminalAuditRow {
                id: r.get(0),
                runner_id: r.get(1),
                target: r.get(2),
                who: r.get(3),
                client: r.get(4),
                opened_ms: r.get(5),
                closed_ms: r.get(6),
                reason: r.get(7),
                bytes_in: r.get(8),
                bytes_out: r.get(9),
                replica_id: r.get(10),
            })
            .collect())
    }
}
