//! Terminal recordings (`terminals/recorder.rs` makes them): each session's
//! asciicast v2 file, stored as its header and its event lines in chunks,
//! and each tenant's recording policy.
//!
//! ```text
//! recordings        (id) tenant_id, runner_id, target, who, started_ms,
//!                        ended_ms, header, bytes, truncated
//! recording_chunks  (recording_id, seq) data     event lines, in seq order
//! recording_policy  (tenant_id) record, record_input, viewers_replay, max_bytes
//! ```
//!
//! A `.cast` file is the header line and then every chunk in `seq` order:
//! the recorder numbers its chunks when it takes them from the session, so
//! writes that land out of order still read back in order. Retention
//! removes whole recordings (with their chunks) by when they started.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageError;

/// The per-session cap a tenant gets unless it sets its own.
pub const DEFAULT_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// The smallest and largest cap a tenant may set.
pub const MIN_MAX_BYTES: u64 = 1024;
pub const MAX_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What a tenant records, and who may replay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingPolicy {
    /// Record every terminal session (on by default).
    pub record: bool,
    /// Record keystrokes too (`"i"` events); off by default: they carry
    /// passwords typed at prompts that do not echo.
    pub record_input: bool,
    /// Users with the viewer role may list and replay recordings.
    pub viewers_replay: bool,
    /// Bytes of events per session; past it recording stops with a marker.
    pub max_bytes: u64,
}

impl Default for RecordingPolicy {
    fn default() -> Self {
        RecordingPolicy {
            record: true,
            record_input: false,
            viewers_replay: false,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// A recording as listed (no events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordingRow {
    pub id: String,
    pub tenant_id: String,
    pub runner_id: String,
    /// `host` or `container:NAME`.
    pub target: String,
    pub who: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// The asciicast header line (JSON, no newline).
    pub header: String,
    /// Bytes of event lines stored so far.
    pub bytes: i64,
    /// Recording stopped at the size cap (the session went on).
    pub truncated: bool,
}

#[async_trait]
pub trait RecordingStore: Send + Sync {
    /// The tenant's policy ([`RecordingPolicy::default`] if never set).
    async fn policy(&self, tenant_id: &str) -> Result<RecordingPolicy, StorageError>;
    async fn set_policy(&self, tenant_id: &str, p: &RecordingPolicy) -> Result<(), StorageError>;
    /// A new recording, events to follow (`ended_ms` None, bytes 0).
    async fn start(&self, row: &RecordingRow) -> Result<(), StorageError>;
    /// Chunk `seq` of event lines; `bytes` and `truncated` are the
    /// recording's totals after it.
    async fn append(
        &self,
        id: &str,
        seq: i64,
        data: &[u8],
        bytes: i64,
        truncated: bool,
    ) -> Result<(), StorageError>;
    async fn finish(&self, id: &str, ended_ms: i64) -> Result<(), StorageError>;
    /// Newest first, at most `limit`; `runner` narrows to one runner.
    async fn list(
        &self,
        tenant_id: &str,
        runner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordingRow>, StorageError>;
    async fn get(&self, tenant_id: &str, id: &str) -> Result<Option<RecordingRow>, StorageError>;
    /// The event lines, every chunk in order.
    async fn events(&self, id: &str) -> Result<Vec<u8>, StorageError>;
    /// Remove recordings started before `before_ms`; how many.
    async fn prune(&self, before_ms: i64) -> Result<usize, StorageError>;
}
