//! The terminal audit trail: who opened which terminal where, when, and for
//! how long (`terminals/api.rs` writes the ends).

use async_trait::async_trait;
use serde::Serialize;

use super::StorageError;

#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn terminal_opened(
        &self,
        tenant_id: &str,
        row: &TerminalAuditRow,
    ) -> Result<(), StorageError>;
    async fn terminal_closed(
        &self,
        id: &str,
        closed_ms: i64,
        reason: &str,
        bytes_in: u64,
        bytes_out: u64,
    ) -> Result<(), StorageError>;
    /// Newest first, at most `limit`.
    async fn terminal_audit(
        &self,
        tenant_id: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TerminalAuditRow>, StorageError>;
}

/// One audit row as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TerminalAuditRow {
    pub id: String,
    pub runner_id: String,
    /// `host` or `container:NAME`.
    pub target: String,
    /// The API token that opened it: `tok_… (label)`.
    pub who: String,
    /// The client's address.
    pub client: String,
    pub opened_ms: i64,
    pub closed_ms: Option<i64>,
    pub reason: Option<String>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    /// The replica holding the session (a replica of several; none on one
    /// server): its own memory says whether it is still open.
    #[serde(skip)]
    pub replica_id: Option<String>,
}
