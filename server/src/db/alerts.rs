//! Alerts (`alerts/`): rules, notification channels (their config
//! sealed), the live state of each (rule, target), the history of state
//! changes, silences, and the delivery log.

use async_trait::async_trait;
use serde::Serialize;

use super::StorageError;
use crate::alerts::rules::{Rule, Silence, State};

/// History rows and delivery rows kept (all tenants; older ones are
/// deleted as new ones come).
pub const KEEP_ROWS: i64 = 40_000;

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

    /// Record a transition: the state row follows it, one history row is added.
    async fn transition(&self, a: &AlertRow, silenced: bool, at: i64) -> Result<i64, StorageError>;
    async fn alerts(&self, tenant: &str) -> Result<Vec<AlertRow>, StorageError>;
    async fn all_alerts(&self) -> Result<Vec<AlertRow>, StorageError>;
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
