//! Alerts (`alerts/`): rules, notification channels (their config
//! sealed), the live state of each (rule, target), the history of state
//! changes, silences, and the delivery log.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageError;

// ---- the model: rules, silences, states (their checks and the state
// machine are the decision core's, `alerts/rules.rs`) ----

/// Which runners a rule covers: all, one update group, one runner (id or
/// name), or a label selector (`env=prod,region in (eu,us),!canary`, the
/// syntax of `fleet/selector.rs`, over the runner's accepted labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    All,
    Group(String),
    Runner(String),
    Selector(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Above,
    Below,
}

/// What a rule watches. The JSON is `{"kind": "...", ...fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Kind {
    /// The runner has been unreachable for `for_s` seconds; resolves when back.
    Unreachable { for_s: u64 },
    /// A series (`*` matches one dot-separated part, e.g. `fs.*.avail`,
    /// `ctr.*.cpu`) beyond `threshold` for `for_s`; resolves once beyond
    /// `resolve` the other way. With `per` (same `*`), the value is
    /// `100 * series / per` (a percentage: `fs.*.avail` per `fs.*.size`).
    Metric {
        series: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        per: Option<String>,
        op: Op,
        threshold: f64,
        /// Defaults to `threshold` (no hysteresis).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resolve: Option<f64>,
        #[serde(default)]
        for_s: u64,
    },
    /// A container died without a `kill`/`stop` asked for just before.
    ContainerStopped {
        #[serde(default = "default_quiet")]
        quiet_s: u64,
    },
    /// A container exited with a non-zero code.
    ContainerExitNonzero {
        #[serde(default = "default_quiet")]
        quiet_s: u64,
    },
    /// A container's health check says unhealthy; resolves on healthy.
    ContainerUnhealthy {},
    /// More than `count` exits within `within_s`; resolves after `within_s`
    /// without one.
    ContainerRestarts { count: u32, within_s: u64 },
    /// A fingerprint change whose path starts with one of `paths` (all if
    /// empty): `listening`, `firewall`, `kernel`, ...
    Drift {
        #[serde(default)]
        paths: Vec<String>,
        #[serde(default = "default_quiet")]
        quiet_s: u64,
    },
    /// A job failed or timed out (only these scripts, if named); resolves
    /// when the same script succeeds on that runner.
    JobFailed {
        #[serde(default)]
        scripts: Vec<String>,
    },
    /// A deploy failed (only these apps, if named); resolves on a good one.
    DeployFailed {
        #[serde(default)]
        apps: Vec<String>,
    },
    /// An update was rejected or rolled back; resolves when one installs.
    UpdateFailed {},
    /// A collected log line containing `pattern`; at most one notification
    /// per container per `quiet_s` (the alert resolves after that long
    /// without a match).
    LogMatch {
        pattern: String,
        #[serde(default = "default_quiet")]
        quiet_s: u64,
    },
}

fn default_quiet() -> u64 {
    300
}

/// A container filter: by name (`*` wildcards) and/or one `key=value` label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ContainerFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A rule as the API takes it (`id`, `tenant` are the server's). Unknown
/// fields are refused by [`Kind`] (serde cannot deny them on a struct
/// with a flattened part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<ContainerFilter>,
    #[serde(flatten)]
    pub kind: Kind,
    /// Channel ids to notify.
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub id: String,
    #[serde(skip)]
    pub tenant: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "pending" => Some(State::Pending),
            "firing" => Some(State::Firing),
            "resolved" => Some(State::Resolved),
            _ => None,
        }
    }
}

/// A silence (or a group's maintenance window): transitions that match it
/// while it is in force are recorded but not sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Unix ms; the silence is in force in `[starts, ends)`.
    pub starts_ms: i64,
    pub ends_ms: i64,
    #[serde(default)]
    pub comment: String,
    /// `true`: a maintenance window (of `group`), shown as such.
    #[serde(default)]
    pub maintenance: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Silence {
    pub id: String,
    #[serde(skip)]
    pub tenant: String,
    pub created_by: String,
    #[serde(flatten)]
    pub spec: SilenceSpec,
}

// ---- the store ----

/// History rows and delivery rows kept (all tenants; older ones are
/// deleted as new ones come).
pub const KEEP_ROWS: i64 = 40_000;

/// Runner ids one query of [`AlertStore::runners_alerts`] reads at most
/// (SQLite binds each as a parameter).
pub const TAKE_OVER_CHUNK: usize = 500;

/// The link a transition is written through: the replica holding the
/// runner's link and the link's generation there (the live-links table
/// of `db/cluster.rs`, which fences a replaced link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRef {
    pub replica_id: String,
    pub generation: u64,
}

/// A channel as stored: the public part is shown, the config only opened to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub kind: String,
    /// JSON shown in the API: never a URL with its token, never a password.
    pub public: String,
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
    pub created_ms: i64,
}

/// A pending or firing alert as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    pub rule_id: String,
    pub target: String,
    #[serde(skip)]
    pub tenant: String,
    pub runner_id: String,
    pub subject: String,
    pub state: State,
    pub since_ms: i64,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ack {
    pub by: String,
    pub at_ms: i64,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryRow {
    pub seq: i64,
    pub rule_id: String,
    pub runner_id: String,
    pub subject: String,
    pub state: String,
    pub at_ms: i64,
    pub summary: String,
    pub silenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRow {
    pub seq: i64,
    pub channel_id: String,
    pub history_seq: Option<i64>,
    pub at_ms: i64,
    pub attempt: i64,
    pub ok: bool,
    pub detail: String,
}

/// Everything the alerts feature keeps. Tenant-scoped reads take the tenant;
/// the `all_*` reads are the engine's, at start-up.
#[async_trait]
pub trait AlertStore: Send + Sync {
    async fn put_rule(&self, rule: &Rule, now: i64) -> Result<(), StorageError>;
    async fn delete_rule(&self, tenant: &str, id: &str) -> Result<bool, StorageError>;
    async fn rules(&self, tenant: &str) -> Result<Vec<Rule>, StorageError>;
    async fn all_rules(&self) -> Result<Vec<Rule>, StorageError>;

    async fn put_channel(&self, ch: &ChannelRow) -> Result<bool, StorageError>;
    async fn delete_channel(&self, tenant: &str, id: &str) -> Result<bool, StorageError>;
    async fn channels(&self, tenant: &str) -> Result<Vec<ChannelRow>, StorageError>;
    async fn channel(&self, tenant: &str, id: &str) -> Result<Option<ChannelRow>, StorageError>;

    /// Record a transition: the state row follows it, one history row is
    /// added; the history row's seq is returned. With `through` (a
    /// replica's alert on what a runner reports), only if that is still the
    /// runner's link in the live-links table (`db/cluster.rs`), judged in
    /// the statement that writes: `None`, and nothing written, when it is
    /// not (another replica took the runner, or it is linked nowhere).
    async fn transition(
        &self,
        a: &AlertRow,
        silenced: bool,
        at: i64,
        through: Option<&LinkRef>,
    ) -> Result<Option<i64>, StorageError>;
    async fn alerts(&self, tenant: &str) -> Result<Vec<AlertRow>, StorageError>;
    async fn all_alerts(&self) -> Result<Vec<AlertRow>, StorageError>;
    /// The pending and firing alerts of several runners, read together
    /// (the replica they link to takes them over, `alerts/mod.rs`): one
    /// query per [`TAKE_OVER_CHUNK`] ids at most.
    async fn runners_alerts(&self, runner_ids: &[String]) -> Result<Vec<AlertRow>, StorageError>;
    async fn ack(
        &self,
        tenant: &str,
        rule: &str,
        target: &str,
        ack: &Ack,
    ) -> Result<bool, StorageError>;
    async fn history(
        &self,
        tenant: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<HistoryRow>, StorageError>;

    async fn put_silence(&self, s: &Silence) -> Result<(), StorageError>;
    async fn delete_silence(&self, tenant: &str, id: &str) -> Result<bool, StorageError>;
    async fn silences(&self, tenant: &str) -> Result<Vec<Silence>, StorageError>;
    async fn all_silences(&self, now: i64) -> Result<Vec<Silence>, StorageError>;

    async fn delivery(&self, tenant: &str, d: &DeliveryRow) -> Result<(), StorageError>;
    async fn deliveries(
        &self,
        tenant: &str,
        channel: &str,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StorageError>;
}
