//! [`UpdateStore`] on PostgreSQL: policies per tenant and group, each
//! runner's group, and the newest [`REPORT_HISTORY_LIMIT`] update reports
//! per runner (as `sqlite/updates.rs`).

use async_trait::async_trait;
use tether::protocol::UpdateStatus;

use super::PgControl;
use crate::db::updates::*;
use crate::db::StorageError;

/// Update reports kept per runner.
pub const REPORT_HISTORY_LIMIT: i64 = 200;

#[async_trait]
impl UpdateStore for PgControl {
    async fn set_update_policy(
        &self,
        tenant_id: &str,
        policy: &UpdatePolicy,
    ) -> Result<(), StorageError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO update_policies (tenant_id, grp, version, canary_percent, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, grp) DO UPDATE SET
               version = excluded.version, canary_percent = excluded.canary_percent,
               updated_at = excluded.updated_at",
            &[
                &tenant_id,
                &policy.group,
                &policy.version,
                &i32::from(policy.canary_percent),
                &policy.updated_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn clear_update_policy(
        &self,
        tenant_id: &str,
        group: &str,
    ) -> Result<bool, StorageError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "DELETE FROM update_policies WHERE tenant_id = $1 AND grp = $2",
                &[&tenant_id, &group],
            )
            .await?;
        Ok(n > 0)
    }

    async fn update_policies(&self, tenant_id: &str) -> Result<Vec<UpdatePolicy>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT grp, version, canary_percent, updated_at FROM update_policies
                 WHERE tenant_id = $1 ORDER BY grp",
                &[&tenant_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| UpdatePolicy {
                group: r.get(0),
                version: r.get(1),
                canary_percent: r.get::<_, i32>(2).clamp(0, 100) as u8,
                updated_at: r.get(3),
            })
            .collect())
    }

    async fn update_policy_for(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<(String, UpdatePolicy)>, StorageError> {
        let group = self.runner_group(runner_id).await?.unwrap_or_default();
        let all = self.update_policies(tenant_id).await?;
        let policy = all
            .iter()
            .find(|p| p.group == group && !group.is_empty())
            .or_else(|| all.iter().find(|p| p.group.is_empty()))
            .cloned();
        Ok(policy.map(|p| (group, p)))
    }

    async fn runner_group(&self, runner_id: &str) -> Result<Option<String>, StorageError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT update_group FROM runners WHERE id = $1",
            &[&runner_id],
        )
        .await?
        .map(|r| r.get(0)))
    }

    async fn set_runner_group(
        &self,
        tenant_id: &str,
        runner_id: &str,
        group: &str,
    ) -> Result<bool, StorageError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE runners SET update_group = $3 WHERE id = $2 AND tenant_id = $1",
                &[&tenant_id, &runner_id, &group],
            )
            .await?;
        Ok(n > 0)
    }

    async fn record_update_report(
        &self,
        runner_id: &str,
        at: i64,
        status: &UpdateStatus,
    ) -> Result<(), StorageError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let took = status.took_ms.map(|t| t.min(i64::MAX as u64) as i64);
        tx.execute(
            "INSERT INTO update_reports (runner_id, at, version, state, from_version, reason, took_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &runner_id,
                &at,
                &status.version,
                &status.state,
                &status.from_version,
                &status.reason,
                &took,
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM update_reports WHERE runner_id = $1 AND seq <= (
               SELECT seq FROM update_reports WHERE runner_id = $1
               ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            &[&runner_id, &REPORT_HISTORY_LIMIT],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_reports(&self, runner_id: &str) -> Result<Vec<UpdateReportRow>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT at, version, state, from_version, reason, took_ms FROM update_reports
                 WHERE runner_id = $1 ORDER BY seq",
                &[&runner_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| UpdateReportRow {
                at: r.get(0),
                status: UpdateStatus {
                    version: r.get(1),
                    state: r.get(2),
                    from_version: r.get(3),
                    reason: r.get(4),
                    at_ms: 0,
                    took_ms: r.get::<_, Option<i64>>(5).map(|t| t.max(0) as u64),
                },
            })
            .collect())
    }

    async fn latest_update_reports(
        &self,
        tenant_id: &str,
    ) -> Result<std::collections::HashMap<String, UpdateReportRow>, StorageError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT DISTINCT ON (u.runner_id) u.runner_id, u.at, u.version, u.state,
                        u.from_version, u.reason, u.took_ms
                 FROM update_reports u JOIN runners r ON r.id = u.runner_id
                 WHERE r.tenant_id = $1 ORDER BY u.runner_id, u.seq DESC",
                &[&tenant_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    UpdateReportRow {
                        at: r.get(1),
                        status: UpdateStatus {
                            version: r.get(2),
                            state: r.get(3),
                            from_version: r.get(4),
                            reason: r.get(5),
                            at_ms: 0,
                            took_ms: r.get::<_, Option<i64>>(6).map(|t| t.max(0) as u64),
                        },
                    },
                )
            })
            .collect())
    }
}
