//! Jobs and what they need: saved scripts, sealed secrets, jobs and their
//! output in order; and apps with their deployments (a deployment is a job).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tether::protocol::JobResult;

use super::StorageError;

#[async_trait]
pub trait JobStore: Send + Sync {
    // ---- scripts and secrets
    async fn put_script(&self, tenant: &str, s: &Script) -> Result<(), StorageError>;
    async fn script(&self, tenant: &str, name: &str) -> Result<Option<Script>, StorageError>;
    async fn scripts(&self, tenant: &str) -> Result<Vec<Script>, StorageError>;
    async fn delete_script(&self, tenant: &str, name: &str) -> Result<bool, StorageError>;
    async fn put_secret(
        &self,
        tenant: &str,
        name: &str,
        nonce: &[u8],
        sealed: &[u8],
        now: i64,
    ) -> Result<(), StorageError>;
    async fn secret(&self, tenant: &str, name: &str) -> Result<Option<Sealed>, StorageError>;
    /// Names and update times, never values.
    async fn secrets(&self, tenant: &str) -> Result<Vec<(String, i64)>, StorageError>;
    async fn delete_secret(&self, tenant: &str, name: &str) -> Result<bool, StorageError>;

    // ---- jobs
    /// One job per (id, runner), all or none: `Err(n)` if the tenant would
    /// have more than `max_active` jobs not final (`n` are now).
    async fn create_jobs(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        label: &str,
        spec: &JobSpec,
        now: i64,
        max_active: usize,
    ) -> Result<Result<Vec<JobRow>, usize>, StorageError>;
    async fn job(&self, tenant: &str, id: &str) -> Result<Option<JobRow>, StorageError>;
    async fn job_by_seq(&self, runner: &str, seq: i64) -> Result<Option<JobRow>, StorageError>;
    async fn jobs(
        &self,
        tenant: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<JobRow>, StorageError>;
    /// Jobs of a runner not yet final, oldest first.
    async fn open_jobs(&self, runner: &str) -> Result<Vec<JobRow>, StorageError>;
    /// Which of `runners` have a job not yet final (the jobs' periodic
    /// safety net asks this for the runners a process holds, in one call).
    async fn runners_with_open_jobs(&self, runners: &[String])
        -> Result<Vec<String>, StorageError>;
    /// Where the tenant's jobs among `ids` are (ids of none are skipped):
    /// a rollout's driver reads its running targets' jobs in one call.
    async fn job_states(&self, tenant: &str, ids: &[String])
        -> Result<Vec<JobState>, StorageError>;
    /// (seq, stored bytes) of a runner's jobs whose output is incomplete.
    async fn resumable(&self, runner: &str) -> Result<Vec<(i64, i64)>, StorageError>;
    async fn accepted(&self, id: &str, state: &str, now: i64) -> Result<(), StorageError>;
    async fn finish(
        &self,
        id: &str,
        status: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StorageError>;
    async fn record_result(&self, runner: &str, r: &JobResult) -> Result<bool, StorageError>;
    async fn request_cancel(&self, tenant: &str, id: &str) -> Result<bool, StorageError>;
    /// Store output rows (job seq, row) in one transaction: (seq, stored
    /// end) per job. Shared, not copied: the caller ACKs from the same rows.
    async fn store_output(
        &self,
        rows: Arc<[(i64, OutputRow)]>,
    ) -> Result<Vec<(i64, i64)>, StorageError>;
    async fn output(
        &self,
        seq: i64,
        from: i64,
        limit: usize,
    ) -> Result<Vec<OutputRow>, StorageError>;
    /// One retention pass: jobs finished before `cutoff_ms`, then the
    /// oldest output of tenants above `max_tenant_bytes`.
    async fn retain(
        &self,
        cutoff_ms: i64,
        max_tenant_bytes: u64,
    ) -> Result<RetainStats, StorageError>;

    // ---- apps and deployments
    async fn put_app(&self, tenant: &str, a: &StoredApp) -> Result<(), StorageError>;
    async fn app(&self, tenant: &str, name: &str) -> Result<Option<StoredApp>, StorageError>;
    async fn apps(&self, tenant: &str) -> Result<Vec<StoredApp>, StorageError>;
    async fn delete_app(&self, tenant: &str, name: &str) -> Result<bool, StorageError>;
    async fn add_deployment(&self, tenant: &str, d: &Deployment) -> Result<(), StorageError>;
    /// Newest first, each with its job.
    async fn deployments(
        &self,
        tenant: &str,
        app: &str,
        limit: usize,
    ) -> Result<Vec<(Deployment, Option<JobRow>)>, StorageError>;
}

pub const FINAL: &[&str] = &["succeeded", "failed", "cancelled", "timed_out", "expired"];

/// What a job runs, as stored (secret values are not here, only names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Secret names, exported under the same name.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub timeout_s: u64,
    /// A deployment (`deploy/api.rs`): `program` is then unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<tether::protocol::deploy::DeploySpec>,
    /// Operators' signatures, one per runner id (`protocol/signed.rs`):
    /// each runner gets its own in `job_start.signed`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub signed: std::collections::BTreeMap<String, tether::protocol::signed::Signed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    #[serde(skip)]
    pub seq: i64,
    pub id: String,
    #[serde(skip)]
    pub tenant_id: String,
    pub runner_id: String,
    /// The saved script's name, or the ad-hoc command.
    pub label: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// Output bytes stored; and the job's total once its result came.
    pub stored_bytes: i64,
    pub output_bytes: Option<i64>,
    pub cancel_requested: bool,
    /// Its output was deleted by retention (`common/quotas.rs`).
    pub output_pruned: bool,
    #[serde(skip)]
    pub spec: JobSpec,
}

/// A job's status and times, without its spec (`JobStore::job_states`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    pub id: String,
    pub status: String,
    pub exit_code: Option<i32>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

impl JobState {
    pub fn is_final(&self) -> bool {
        FINAL.contains(&self.status.as_str())
    }
}

impl JobRow {
    pub fn is_final(&self) -> bool {
        FINAL.contains(&self.status.as_str())
    }

    /// Final, and every byte of its output stored.
    pub fn is_complete(&self) -> bool {
        self.is_final() && self.output_bytes.is_none_or(|n| self.stored_bytes >= n)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Script {
    pub name: String,
    pub body: String,
    pub interpreter: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub timeout_s: u64,
    #[serde(default)]
    pub updated_ms: i64,
}

/// A sealed secret as stored: `(nonce, ciphertext with tag)`.
pub type Sealed = (Vec<u8>, Vec<u8>);

/// One stored DATA frame of a job.
#[derive(Debug, Clone)]
pub struct OutputRow {
    pub offset: i64,
    pub tag: u8,
    /// The record's step (deploys: 1 source, 2 build, 3 replace).
    pub step: u8,
    pub ts_ms: i64,
    pub data: Vec<u8>,
    /// The offset after this record in the runner's numbering (where the
    /// next one starts): `offset + JOB_RECORD_HEADER + data.len()`, except
    /// for the rows of a cut (see the module doc).
    pub end: i64,
}

impl OutputRow {
    /// A row without data is not stored: it only moves `stored_bytes`.
    pub fn is_stored(&self) -> bool {
        !self.data.is_empty()
    }
}

/// What one [`JobStore::retain`] pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetainStats {
    /// Jobs deleted outright (past the age, not deploys).
    pub jobs_deleted: usize,
    /// Jobs whose output was deleted (the row kept).
    pub outputs_deleted: usize,
}

/// A stored app definition, as the API takes it (see `deploy/api.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredApp {
    pub name: String,
    pub def: serde_json::Value,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub id: String,
    pub app: String,
    pub image: String,
    pub kind: String,
    pub git_ref: Option<String>,
    pub created_ms: i64,
}
