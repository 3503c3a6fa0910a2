//! Runner updates: the desired version per group of a tenant (with its
//! canary share), each runner's group, and the reports runners send.

use async_trait::async_trait;
use tether::protocol::UpdateStatus;

use super::StorageError;

#[async_trait]
pub trait UpdateStore: Send + Sync {
    async fn set_update_policy(
        &self,
        tenant_id: &str,
        policy: &UpdatePolicy,
    ) -> Result<(), StorageError>;
    async fn clear_update_policy(&self, tenant_id: &str, group: &str)
        -> Result<bool, StorageError>;
    async fn update_policies(&self, tenant_id: &str) -> Result<Vec<UpdatePolicy>, StorageError>;
    /// The policy that applies to a runner: its group's, else the tenant's default.
    async fn update_policy_for(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<(String, UpdatePolicy)>, StorageError>;
    async fn runner_group(&self, runner_id: &str) -> Result<Option<String>, StorageError>;
    async fn set_runner_group(
        &self,
        tenant_id: &str,
        runner_id: &str,
        group: &str,
    ) -> Result<bool, StorageError>;
    async fn record_update_report(
        &self,
        runner_id: &str,
        at: i64,
        status: &UpdateStatus,
    ) -> Result<(), StorageError>;
    async fn update_reports(&self, runner_id: &str) -> Result<Vec<UpdateReportRow>, StorageError>;
    /// The newest report of each runner of the tenant that has one.
    async fn latest_update_reports(
        &self,
        tenant_id: &str,
    ) -> Result<std::collections::HashMap<String, UpdateReportRow>, StorageError>;
}

/// The desired version for a tenant (`group` empty) or one group of its runners.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpdatePolicy {
    pub group: String,
    pub version: String,
    /// Share of the group's runners (by a hash of the runner id) that get
    /// the version: a canary first, then 100.
    pub canary_percent: u8,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateReportRow {
    pub at: i64,
    pub status: UpdateStatus,
}
