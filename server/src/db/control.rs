//! The control plane: tenants, API and enrollment tokens, runners and their
//! health history, fingerprints and drift, Docker state and the container
//! view with its event history.
//!
//! Methods speak in domain terms (enroll a runner, record a health change).
//! A method that reads then writes is atomic in every backend (one
//! transaction), since several server replicas may share one database.

use async_trait::async_trait;
use tether::protocol::{ContainerEvent, ContainerSummary, DockerState};

use super::StorageError;

/// Decides a runner's new fingerprint from the stored one (JSON, if any);
/// `None` writes nothing. Runs inside the backend's transaction.
pub type FingerprintDecision =
    Box<dyn FnOnce(Option<&str>) -> Option<FingerprintWrite> + Send + 'static>;

#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Changes after every committed write that can take authority away
    /// (logout, user deleted or changed, API token revoked), so open streams
    /// re-check what authenticated them (`common/stream_auth.rs`).
    fn watch_credentials(&self) -> tokio::sync::watch::Receiver<u64>;

    /// One trivial round trip to the database (`/healthz`, through
    /// [`Liveness`](crate::db::Liveness), which bounds and caches it).
    async fn ping(&self) -> Result<(), StorageError>;

    // ---- tenants and tokens
    /// Create a tenant together with its first API token.
    async fn create_tenant(
        &self,
        tenant: &TenantRow,
        api_token_id: &str,
        api_token_hash: &str,
    ) -> Result<(), StorageError>;
    async fn list_tenants(&self) -> Result<Vec<TenantRow>, StorageError>;
    /// A tenant's id from its id or its name.
    async fn tenant_id_by_id_or_name(&self, key: &str) -> Result<Option<String>, StorageError>;
    async fn create_api_token(
        &self,
        row: &ApiTokenRow,
        token_hash: &str,
    ) -> Result<(), StorageError>;
    /// Authenticate a bearer token (recording its use).
    async fn api_token_auth(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<ApiTokenAuth, TokenRefusal>, StorageError>;
    /// Whether a token still holds (for long-lived streams): its expiry.
    async fn api_token_check(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Result<Option<i64>, TokenRefusal>, StorageError>;
    async fn list_api_tokens(&self, tenant_id: &str) -> Result<Vec<ApiTokenInfo>, StorageError>;
    async fn revoke_api_token(
        &self,
        tenant_id: &str,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<ApiTokenInfo>, StorageError>;
    /// The label of the API token with this hash (for the terminal audit).
    async fn api_token_name(&self, token_hash: &str) -> Result<Option<String>, StorageError>;
    async fn create_enrollment_token(
        &self,
        row: &EnrollmentTokenRow,
        token_hash: &str,
    ) -> Result<(), StorageError>;
    async fn list_enrollment_tokens(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<EnrollmentTokenRow>, StorageError>;
    async fn revoke_enrollment_token(
        &self,
        tenant_id: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<EnrollmentTokenRow>, StorageError>;

    // ---- runners and health
    /// Spend an enrollment token and create the runner: its name.
    async fn enroll(
        &self,
        token_hash: &str,
        runner: &NewRunner<'_>,
        now: i64,
    ) -> Result<String, EnrollError>;
    async fn runner(&self, tenant_id: &str, id: &str) -> Result<Option<RunnerRow>, StorageError>;
    async fn list_runners(&self, tenant_id: &str) -> Result<Vec<RunnerRow>, StorageError>;
    /// The tenant's runners among `ids` (any order; ids of none are skipped).
    async fn runners_by_ids(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RunnerRow>, StorageError>;
    /// Version and health of the tenant's runners among `ids` (ids of none
    /// are skipped): what an update rollout's driver watches, without the
    /// rest of each row.
    async fn runner_versions(
        &self,
        tenant_id: &str,
        ids: &[String],
    ) -> Result<Vec<RunnerVersion>, StorageError>;
    async fn runner_by_credential(
        &self,
        credential_hash: &str,
    ) -> Result<Option<RunnerIdentity>, StorageError>;
    async fn health_history(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Vec<HealthRecord>>, StorageError>;
    async fn runner_connected(
        &self,
        id: &str,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError>;
    async fn rename_runner(
        &self,
        tenant_id: &str,
        id: &str,
        name: &str,
    ) -> Result<Option<RunnerRow>, StorageError>;
    async fn runner_disconnected(
        &self,
        id: &str,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError>;
    async fn revoke_runner(
        &self,
        tenant_id: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError>;
    async fn mark_all_unreachable(
        &self,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError>;
    /// Persist a batch of last-seen times in one write.
    async fn touch_last_seen(&self, seen: &[(String, i64)]) -> Result<(), StorageError>;

    // ---- fingerprints and drift
    async fn update_fingerprint(
        &self,
        runner_id: &str,
        decide: FingerprintDecision,
    ) -> Result<(), StorageError>;
    async fn fingerprint(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<Option<FingerprintRow>>, StorageError>;
    async fn drift(
        &self,
        tenant_id: &str,
        runner_id: &str,
        since: i64,
    ) -> Result<Option<Vec<DriftRow>>, StorageError>;

    // ---- Docker state and containers
    async fn set_docker_state(
        &self,
        runner_id: &str,
        row: &DockerStateRow,
    ) -> Result<(), StorageError>;
    async fn docker_state(&self, runner_id: &str) -> Result<Option<DockerStateRow>, StorageError>;
    async fn replace_containers(
        &self,
        runner_id: &str,
        containers: &[ContainerSummary],
        now: i64,
    ) -> Result<(), StorageError>;
    async fn record_container_event(
        &self,
        runner_id: &str,
        event: &ContainerEvent,
        now: i64,
    ) -> Result<(), StorageError>;
    async fn containers(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<ContainerView>, StorageError>;
    async fn container_events(
        &self,
        tenant_id: &str,
        runner_id: &str,
        since: i64,
    ) -> Result<Option<Vec<ContainerEventRow>>, StorageError>;
}

/// Longest runner name (operator-set; a reported hostname is cut to fit).
pub const MAX_RUNNER_NAME: usize = 64;

/// Whether `name` may be a runner's name: 1 to [`MAX_RUNNER_NAME`]
/// characters, no control characters or surrounding spaces, and not
/// shaped like a runner id (`rn_…`), so a name never reads as another
/// runner's id wherever either is accepted.
pub fn valid_runner_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_RUNNER_NAME
        && name.trim() == name
        && !name.chars().any(char::is_control)
        && !name.starts_with("rn_")
}

/// Why an enrollment token was refused. Each maps to one API error code.
#[derive(Debug, PartialEq, Eq)]
pub enum EnrollRefusal {
    Invalid,
    Expired,
    Used,
    Revoked,
}

impl From<StorageError> for EnrollError {
    fn from(e: StorageError) -> Self {
        EnrollError::Storage(e)
    }
}

#[derive(Debug)]
pub enum EnrollError {
    Refused(EnrollRefusal),
    Storage(StorageError),
}

/// A runner's health as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// A live, authenticated connection that is answering.
    Active,
    /// No live connection (also before the first connect).
    Unreachable,
    /// The credential was revoked; connects are refused.
    Revoked,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Active => "active",
            Health::Unreachable => "unreachable",
            Health::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Result<Health, StorageError> {
        match s {
            "active" => Ok(Health::Active),
            "unreachable" => Ok(Health::Unreachable),
            "revoked" => Ok(Health::Revoked),
            other => Err(StorageError::Corrupt(format!("unknown health {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    pub id: String,
    pub tenant_id: String,
    pub label: Option<String>,
    pub created_at: i64,
    /// The user whose authority the token carries (`db/sqlite/tokens.rs`).
    pub created_by_user: Option<String>,
    /// Who made it, for people: `user ada`, `token at_… (label)`.
    pub created_by: String,
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenRow {
    pub id: String,
    pub tenant_id: String,
    pub label: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl EnrollmentTokenRow {
    /// `unused`, `used`, `expired` or `revoked`, as of `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.used_at.is_some() {
            "used"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "unused"
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerRow {
    pub id: String,
    pub tenant_id: String,
    /// The operator's name for it: the authority apps and the CLI resolve.
    pub name: String,
    /// What the runner last said it is called (its hostname, in `hello`):
    /// shown, never trusted.
    pub reported_name: String,
    pub health: Health,
    pub version: String,
    pub arch: String,
    pub os: String,
    pub protocol: Option<u16>,
    pub created_at: i64,
    pub last_seen: Option<i64>,
    pub connected_since: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A runner's version and health (`ControlStore::runner_versions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerVersion {
    pub id: String,
    pub version: String,
    pub health: Health,
}

/// One entry of a runner's health history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRecord {
    pub runner_id: String,
    pub tenant_id: String,
    pub at: i64,
    pub health: Health,
    pub reason: String,
}

/// Who a runner credential belongs to, for the connect handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerIdentity {
    pub id: String,
    pub tenant_id: String,
    pub revoked: bool,
}

/// A runner about to be created by enrollment.
#[derive(Debug, Clone)]
pub struct NewRunner<'a> {
    pub id: &'a str,
    pub credential_hash: &'a str,
    /// The name asked for (stored as reported; the runner's name is this
    /// made unique in the tenant).
    pub name: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub os: &'a str,
}

/// What a runner told the server in its `hello`.
#[derive(Debug, Clone)]
pub struct ConnectedInfo<'a> {
    /// Its hostname: stored as `reported_name`, never as its name.
    pub name: &'a str,
    pub version: &'a str,
    pub arch: &'a str,
    pub os: &'a str,
    pub protocol: u16,
}

/// Outcome of marking a runner connected.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// Now active; `Some` if that was a change worth a history entry.
    Active(Option<HealthRecord>),
    /// Revoked (or deleted) since the credential was checked: refuse.
    Refused,
}

/// A runner's stored fingerprint (JSON as the runner sent it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintRow {
    pub body: String,
    /// JSON array of strings: the collection problems of the last report.
    pub notes: String,
    /// The runner's collection time of the last report.
    pub collected_at: i64,
    /// When the server last stored a report.
    pub updated_at: i64,
}

/// What [`ControlStore::update_fingerprint`] writes.
#[derive(Debug, Clone)]
pub struct FingerprintWrite {
    pub body: String,
    pub notes: String,
    pub collected_at: i64,
    pub updated_at: i64,
    /// (at, change JSON), oldest first.
    pub drift: Vec<(i64, String)>,
}

/// One stored drift event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRow {
    pub at: i64,
    /// JSON of a `tether::fingerprint::Change`.
    pub change: String,
}

/// A runner's Docker state as last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerStateRow {
    pub state: DockerState,
    pub updated_at: i64,
}

/// The server's view of a runner's containers.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// When the view last changed; `None` if the runner never sent one.
    pub as_of: Option<i64>,
    pub containers: Vec<ContainerSummary>,
}

/// One stored container event and when the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEventRow {
    pub at: i64,
    pub event: ContainerEvent,
}

/// A valid API token, as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenAuth {
    pub id: String,
    /// Its label, for the audit trail.
    pub label: Option<String>,
    pub tenant_id: String,
    /// The user whose authority it carries, if a user minted it (or its parent).
    pub created_by_user: Option<String>,
    pub expires_at: Option<i64>,
}

/// Why a token hash does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Revoked,
    Expired,
    /// The user who minted it was deleted or is no longer an admin.
    CreatorGone,
}

impl TokenRefusal {
    pub fn message(self) -> &'static str {
        match self {
            TokenRefusal::Unknown => "unknown token",
            TokenRefusal::Revoked => "this API token was revoked",
            TokenRefusal::Expired => "this API token has expired",
            TokenRefusal::CreatorGone => {
                "the user who created this API token was deleted or is no longer an admin"
            }
        }
    }
}

/// One API token as `GET /api/v1/api-tokens` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenInfo {
    pub id: String,
    pub label: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    /// The creator check of the module doc, as of the listing.
    pub creator_ok: bool,
}

impl ApiTokenInfo {
    /// `active`, `revoked`, `expired` or `creator_gone`, as of `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else if !self.creator_ok {
            "creator_gone"
        } else {
            "active"
        }
    }
}
