//! Self-update state (the SQL for it; `updates/mod.rs` is the
//! logic): the desired version per tenant and per group of runners with its
//! canary share, each runner's group, and the runners' update reports.
//!
//! Bounds: [`REPORT_HISTORY_LIMIT`] reports per runner.

use rusqlite::{params, OptionalExtension};
use tether::protocol::UpdateStatus;

use super::control::SqliteControl;
use crate::db::updates::*;
use crate::db::StorageError;

/// Update reports kept per runner.
pub const REPORT_HISTORY_LIMIT: i64 = 200;

impl SqliteControl {
    pub fn set_update_policy(
        &self,
        tenant_id: &str,
        policy: &UpdatePolicy,
    ) -> Result<(), StorageError> {
        self.conn().execute(
            "INSERT INTO update_policies (tenant_id, grp, version, canary_percent, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant_id, grp) DO UPDATE SET
               version = excluded.version, canary_percent = excluded.canary_percent,
               updated_at = excluded.updated_at",
            params![
                tenant_id,
                policy.group,
                policy.version,
                policy.canary_percent,
                policy.updated_at
            ],
        )?;
        Ok(())
    }

    /// Remove a policy; whether there was one.
    pub fn clear_update_policy(&self, tenant_id: &str, group: &str) -> Result<bool, StorageError> {
        let n = self.conn().execute(
            "DELETE FROM update_policies WHERE tenant_id = ?1 AND grp = ?2",
            params![tenant_id, group],
        )?;
        Ok(n > 0)
    }

    pub fn update_policies(&self, tenant_id: &str) -> Result<Vec<UpdatePolicy>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT grp, version, canary_percent, updated_at FROM update_policies
             WHERE tenant_id = ?1 ORDER BY grp",
        )?;
        let rows = stmt.query_map([tenant_id], |r| {
            Ok(UpdatePolicy {
                group: r.get(0)?,
                version: r.get(1)?,
                canary_percent: r.get::<_, i64>(2)?.clamp(0, 100) as u8,
                updated_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The policy for a runner: its group's, else the tenant's.
    pub fn update_policy_for(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<(String, UpdatePolicy)>, StorageError> {
        let group = self.runner_group(runner_id)?.unwrap_or_default();
        let all = self.update_policies(tenant_id)?;
        let policy = all
            .iter()
            .find(|p| p.group == group && !group.is_empty())
            .or_else(|| all.iter().find(|p| p.group.is_empty()))
            .cloned();
        Ok(policy.map(|p| (group, p)))
    }

    pub fn runner_group(&self, runner_id: &str) -> Result<Option<String>, StorageError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT update_group FROM runners WHERE id = ?1")?
            .query_row([runner_id], |r| r.get(0))
            .optional()?)
    }

    /// Whether the runner exists in the tenant.
    pub fn set_runner_group(
        &self,
        tenant_id: &str,
        runner_id: &str,
        group: &str,
    ) -> Result<bool, StorageError> {
        let n = self.conn().execute(
            "UPDATE runners SET update_group = ?3 WHERE id = ?2 AND tenant_id = ?1",
            params![tenant_id, runner_id, group],
        )?;
        Ok(n > 0)
    }

    pub fn record_update_report(
        &self,
        runner_id: &str,
        at: i64,
        status: &UpdateStatus,
    ) -> Result<(), StorageError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO update_reports (runner_id, at, version, state, from_version, reason, took_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                runner_id,
                at,
                status.version,
                status.state,
                status.from_version,
                status.reason,
                status.took_ms.map(|t| t.min(i64::MAX as u64) as i64)
            ],
        )?;
        conn.execute(
            "DELETE FROM update_reports WHERE runner_id = ?1 AND seq <= (
               SELECT seq FROM update_reports WHERE runner_id = ?1
               ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            params![runner_id, REPORT_HISTORY_LIMIT],
        )?;
        Ok(())
    }

    pub fn latest_update_reports(
        &self,
        tenant_id: &str,
    ) -> Result<std::collections::HashMap<String, UpdateReportRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT u.runner_id, u.at, u.version, u.state, u.from_version, u.reason, u.took_ms
             FROM update_reports u JOIN runners r ON r.id = u.runner_id
             WHERE r.tenant_id = ?1
               AND u.seq = (SELECT max(seq) FROM update_reports WHERE runner_id = u.runner_id)",
        )?;
        let rows = stmt.query_map([tenant_id], |r| {
            Ok((
                r.get(0)?,
                UpdateReportRow {
                    at: r.get(1)?,
                    status: UpdateStatus {
                        version: r.get(2)?,
                        state: r.get(3)?,
                        from_version: r.get(4)?,
                        reason: r.get(5)?,
                        at_ms: 0,
                        took_ms: r.get::<_, Option<i64>>(6)?.map(|t| t.max(0) as u64),
                    },
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A runner's update reports, oldest first.
    pub fn update_reports(&self, runner_id: &str) -> Result<Vec<UpdateReportRow>, StorageError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, version, state, from_version, reason, took_ms FROM update_reports
             WHERE runner_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([runner_id], |r| {
            Ok(UpdateReportRow {
                at: r.get(0)?,
                status: UpdateStatus {
                    version: r.get(1)?,
                    state: r.get(2)?,
                    from_version: r.get(3)?,
                    reason: r.get(4)?,
                    at_ms: 0,
                    took_ms: r.get::<_, Option<i64>>(5)?.map(|t| t.max(0) as u64),
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
