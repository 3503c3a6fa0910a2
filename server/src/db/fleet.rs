//! The fleet's data (`fleet/`): labels and what hosts propose, the
//! tenant's fleet policy, job deadlines, rollouts and schedules.
//!
//! ```text
//! labels          (runner, key) → value              what selectors match
//!                 (tenant, key, value) indexed: the runners a selector's
//!                 `k=v`, `k in (…)`, `k` can match, without reading the rest
//! proposals       (runner, key) → value              proposed by the host, not accepted
//! fleet_policy    tenant → default job deadline, keys accepted without review
//! job_deadlines   job → expires_ms                   pending jobs that may expire
//! rollouts        id → view (JSON), state; while open its driver state
//!                 (JSON) and a revision every write compares and sets
//! schedules       (tenant, name) → cron, selector, script, jitter, missed policy, last
//! schedule_runs   (tenant, schedule, occurrence) UNIQUE → run | missed, jobs
//! runner_versions runner → desired version         a runner's own, over its update policy
//! ```
//!
//! The uniqueness of (schedule, occurrence) is what makes a schedule fire
//! once per occurrence when several server processes share the data: the
//! one whose insert lands runs it.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageError;

/// A runner's labels, key → value (`fleet/selector.rs` matches them).
pub type Labels = BTreeMap<String, String>;

/// Labels one runner may carry (accepted; proposals beyond wait).
pub const MAX_LABELS: usize = 32;

/// A label a runner must have (`values`: one of these; none: any value):
/// the part of a selector the store can answer from its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HasLabel {
    pub key: String,
    pub values: Option<Vec<String>>,
}

/// A tenant's fleet settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// How long a job waits for an offline runner unless the request
    /// says; none: as long as it takes.
    pub job_deadline_s: Option<u64>,
    /// Label keys a host's proposal sets without review (`*`: all).
    pub auto_accept: Vec<String>,
}

impl Policy {
    pub fn accepts(&self, key: &str) -> bool {
        self.auto_accept.iter().any(|k| k == "*" || k == key)
    }
}

/// A stored rollout: what the API shows (`body`) and, while it has work
/// left, all its driver needs to go on (`driver`), as JSON
/// (`fleet/rollout.rs` owns the shapes).
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: String,
    pub tenant_id: String,
    pub state: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub body: String,
    /// `None` once the rollout is over for good (or from a build that
    /// did not store it): no driver takes it up.
    pub driver: Option<String>,
    /// Moved on by one at each [`FleetStore::update_rollout`].
    pub rev: i64,
}

/// A stored schedule: its definition as JSON (`fleet/schedule.rs`) and
/// the newest occurrence dealt with.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub tenant_id: String,
    pub name: String,
    pub body: String,
    pub last_occurrence: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub occurrence_ms: i64,
    pub status: String,
    pub at_ms: i64,
    pub jobs: Vec<String>,
}

#[async_trait]
pub trait FleetStore: Send + Sync {
    // ---- labels
    /// Accepted labels of every runner of the tenant that has some.
    async fn tenant_labels(&self, tenant: &str) -> Result<HashMap<String, Labels>, StorageError>;
    /// Accepted labels of the tenant's runners that have every label of
    /// `must` (at least one; bounded by the selector's own limits).
    async fn labels_where(
        &self,
        tenant: &str,
        must: &[HasLabel],
    ) -> Result<HashMap<String, Labels>, StorageError>;
    /// (accepted, proposed) labels of one runner.
    async fn labels(&self, tenant: &str, runner: &str) -> Result<(Labels, Labels), StorageError>;
    /// Replace a runner's accepted labels.
    async fn replace_labels(
        &self,
        tenant: &str,
        runner: &str,
        labels: &Labels,
    ) -> Result<(), StorageError>;
    /// Replace what the host proposes; keys the policy accepts (or whose
    /// accepted value is already the proposed one) go straight to labels.
    async fn propose(
        &self,
        tenant: &str,
        runner: &str,
        proposed: &Labels,
        policy: &Policy,
    ) -> Result<(), StorageError>;
    /// Accept proposals (all, or these keys); returns the labels after.
    async fn accept(
        &self,
        tenant: &str,
        runner: &str,
        keys: Option<&[String]>,
    ) -> Result<Labels, StorageError>;

    // ---- policy and deadlines
    async fn policy(&self, tenant: &str) -> Result<Policy, StorageError>;
    async fn set_policy(&self, tenant: &str, policy: &Policy) -> Result<(), StorageError>;
    async fn add_deadlines(
        &self,
        tenant: &str,
        jobs: &[(String, String)],
        expires_ms: i64,
    ) -> Result<(), StorageError>;
    /// (job, tenant, runner, expires_ms) of deadlines passed by `now`.
    async fn due_deadlines(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, String, i64)>, StorageError>;
    async fn drop_deadline(&self, job: &str) -> Result<(), StorageError>;

    // ---- rollouts
    /// Store a rollout as it is (a new one; `migrate` copies).
    async fn save_rollout(&self, r: &RolloutRow) -> Result<(), StorageError>;
    /// Store a change of a rollout if its row is still at revision
    /// `r.rev` (then at `r.rev + 1`): false if it moved on (another
    /// writer came first) or is gone.
    async fn update_rollout(&self, r: &RolloutRow) -> Result<bool, StorageError>;
    /// (tenant, id, rev) of every rollout with driver state, oldest first.
    async fn open_rollouts(&self) -> Result<Vec<(String, String, i64)>, StorageError>;
    async fn rollout(&self, tenant: &str, id: &str) -> Result<Option<RolloutRow>, StorageError>;
    async fn rollouts(&self, tenant: &str, limit: usize) -> Result<Vec<RolloutRow>, StorageError>;

    // ---- schedules
    /// Create or replace; a new definition starts after `start`.
    async fn put_schedule(
        &self,
        tenant: &str,
        name: &str,
        body: &str,
        start: i64,
    ) -> Result<(), StorageError>;
    async fn delete_schedule(&self, tenant: &str, name: &str) -> Result<bool, StorageError>;
    async fn schedules(&self, tenant: Option<&str>) -> Result<Vec<ScheduleRow>, StorageError>;
    /// Record what happened to one occurrence, once: false if another
    /// process (or tick) already did. Moves `last_occurrence` forward.
    async fn claim_occurrence(
        &self,
        tenant: &str,
        schedule: &str,
        occurrence: i64,
        status: &str,
        now: i64,
    ) -> Result<bool, StorageError>;
    async fn set_run_jobs(
        &self,
        tenant: &str,
        schedule: &str,
        occurrence: i64,
        status: &str,
        jobs: &[String],
    ) -> Result<(), StorageError>;
    async fn runs(
        &self,
        tenant: &str,
        schedule: &str,
        limit: usize,
    ) -> Result<Vec<RunRow>, StorageError>;

    // ---- desired versions of single runners
    /// Every runner of the tenant that has its own desired version.
    async fn desired_versions(&self, tenant: &str)
        -> Result<HashMap<String, String>, StorageError>;
    async fn desired_version(
        &self,
        tenant: &str,
        runner: &str,
    ) -> Result<Option<String>, StorageError>;
    /// Set (or with `None` drop) the desired version of these runners.
    async fn set_desired_version(
        &self,
        tenant: &str,
        runners: &[String],
        version: Option<&str>,
        now: i64,
    ) -> Result<(), StorageError>;
}
