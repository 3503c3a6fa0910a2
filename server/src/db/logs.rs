//! Container logs at rest: blocks of lines per container, the cursor where
//! collection resumes, retention and the collection policy per runner.

use async_trait::async_trait;

use super::StorageError;
use crate::logs::{CollectPolicy, LogLine, StreamSel};

#[async_trait]
pub trait LogStore: Send + Sync {
    /// Store blocks (and advance their cursors) in one transaction.
    async fn insert(&self, blocks: Vec<BlockIn>) -> Result<(), StorageError>;
    /// Where collection of a container resumes: (time, lines at it).
    async fn cursor(
        &self,
        runner_id: &str,
        container_id: &str,
    ) -> Result<Option<(i64, u32)>, StorageError>;
    async fn query(
        &self,
        runner_id: &str,
        container: &str,
        q: &LogQuery,
    ) -> Result<Vec<LogLine>, StorageError>;
    /// Containers with stored logs: (name, newest block's time).
    async fn containers(&self, runner_id: &str) -> Result<Vec<(String, i64)>, StorageError>;
    async fn retention(
        &self,
        runner_id: &str,
        container: &str,
    ) -> Result<LogRetention, StorageError>;
    async fn set_retention(
        &self,
        runner_id: &str,
        container: &str,
        r: Option<LogRetention>,
    ) -> Result<(), StorageError>;
    async fn policy(&self, runner_id: &str) -> Result<CollectPolicy, StorageError>;
    async fn set_policy(
        &self,
        runner_id: &str,
        p: Option<&CollectPolicy>,
    ) -> Result<(), StorageError>;
    /// One retention pass over every container.
    async fn expire(&self, now_ms: i64) -> Result<ExpireStats, StorageError>;
}

/// How long and how much of one container's logs to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LogRetention {
    pub max_age_s: i64,
    pub max_bytes: i64,
}

impl Default for LogRetention {
    fn default() -> Self {
        LogRetention {
            max_age_s: 7 * 86_400,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One block to store, with the cursor after its last line.
#[derive(Debug, Clone)]
pub struct BlockIn {
    pub runner_id: String,
    pub container: String,
    pub container_id: String,
    /// 1 stdout, 2 stderr.
    pub tag: u8,
    pub ts_first: i64,
    pub ts_last: i64,
    pub lines: i64,
    pub data: Vec<u8>,
    /// Where collection resumes after this block: (time, lines at it).
    pub cursor: Option<(i64, u32)>,
}

/// A history query.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    /// Case-insensitive substring of the message.
    pub contains: Option<String>,
    pub streams: StreamSel,
    /// At most this many lines...
    pub limit: usize,
    /// ...counted from the newest (`tail`) instead of the oldest.
    pub from_end: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExpireStats {
    pub blocks: usize,
    pub bytes: i64,
}
