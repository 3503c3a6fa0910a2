//! Container logs at rest: blocks of lines per container, the cursor where
//! collection resumes, retention and the collection policy per runner.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::Serialize;
use tether::protocol::StreamTag;

use crate::common::clock;

use super::StorageError;

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

// ---------------------------------------------------------------------------
// Lines

/// One log line as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Docker's time, RFC 3339 with nanoseconds (as the runner sent it).
    pub ts: String,
    /// The same, nanoseconds since the epoch; `None` if unreadable.
    pub ts_ns: Option<i64>,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub line: String,
}

/// Which streams a query wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamSel {
    #[default]
    Both,
    Stdout,
    Stderr,
}

impl StreamSel {
    pub fn wants(self, tag: u8) -> bool {
        match self {
            StreamSel::Both => true,
            StreamSel::Stdout => tag == StreamTag::Stdout as u8,
            StreamSel::Stderr => tag == StreamTag::Stderr as u8,
        }
    }

    pub fn parse(s: &str) -> Result<StreamSel, String> {
        match s {
            "" | "both" | "all" => Ok(StreamSel::Both),
            "stdout" => Ok(StreamSel::Stdout),
            "stderr" => Ok(StreamSel::Stderr),
            _ => Err(format!("stream {s:?}: use stdout, stderr or both")),
        }
    }
}

pub fn stream_name(tag: u8) -> &'static str {
    if tag == StreamTag::Stderr as u8 {
        "stderr"
    } else {
        "stdout"
    }
}

/// The lines of one stored block a query keeps: within `since..=until`
/// (lines without a time stamp pass), containing `needle` (lower case) if
/// given, newest first when reading from the end. Both backends store the
/// same blocks; only how they fetch them differs.
pub fn block_lines(
    data: &[u8],
    tag: u8,
    since: i64,
    until: i64,
    needle: Option<&str>,
    from_end: bool,
) -> Vec<LogLine> {
    let mut block: Vec<LogLine> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_line(tag, l))
        .filter(|l| l.ts_ns.is_none_or(|t| t >= since && t <= until))
        .filter(|l| needle.is_none_or(|n| l.line.to_lowercase().contains(n)))
        .collect();
    if from_end {
        block.reverse();
    }
    block
}

/// `2026-11-28T12:00:00.123456789Z SP message` → a [`LogLine`].
pub fn parse_line(tag: u8, bytes: &[u8]) -> LogLine {
    let text = String::from_utf8_lossy(bytes);
    let (ts, line) = text.split_once(' ').unwrap_or((&text, ""));
    match parse_rfc3339_ns(ts) {
        Some(ns) => LogLine {
            ts: ts.to_owned(),
            ts_ns: Some(ns),
            stream: stream_name(tag),
            line: line.to_owned(),
        },
        None => LogLine {
            ts: String::new(),
            ts_ns: None,
            stream: stream_name(tag),
            line: text.into_owned(),
        },
    }
}

/// RFC 3339 with up to nine fraction digits to nanoseconds since the epoch.
pub fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    let (whole, nanos) = match s.get(19..20) {
        Some(".") => {
            let frac = &s[20..];
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            let nanos: i64 = frac[..digits].parse().ok()?;
            let nanos = nanos * 10i64.pow(9 - digits as u32);
            (format!("{}{}", &s[..19], &frac[digits..]), nanos)
        }
        _ => (s.to_owned(), 0),
    };
    let ms = clock::parse_rfc3339(&whole)?;
    ms.checked_mul(1_000_000)?.checked_add(nanos)
}

/// Nanoseconds since the epoch as RFC 3339 with nine fraction digits.
#[cfg(test)]
pub fn format_ts(ns: i64) -> String {
    let secs = clock::rfc3339(ns.div_euclid(1_000_000_000) * 1000);
    format!("{}.{:09}Z", &secs[..19], ns.rem_euclid(1_000_000_000))
}

// ---------------------------------------------------------------------------
// Policy

/// Which containers of a runner are collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectPolicy {
    None,
    All,
    /// Containers with this label (and value, if given).
    Label {
        key: String,
        value: Option<String>,
    },
}

impl CollectPolicy {
    /// `all`, `none`, `label:KEY` or `label:KEY=VALUE`.
    pub fn parse(s: &str) -> Result<CollectPolicy, String> {
        match s.trim() {
            "all" => Ok(CollectPolicy::All),
            "none" | "off" => Ok(CollectPolicy::None),
            other => {
                let Some(sel) = other.strip_prefix("label:") else {
                    return Err(format!(
                        "collection policy {other:?}: use all, none, label:KEY or label:KEY=VALUE"
                    ));
                };
                let (key, value) = match sel.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_owned())),
                    None => (sel, None),
                };
                if key.is_empty() {
                    return Err("collection policy label: the label key is empty".into());
                }
                Ok(CollectPolicy::Label {
                    key: key.to_owned(),
                    value,
                })
            }
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            CollectPolicy::None => false,
            CollectPolicy::All => true,
            CollectPolicy::Label { key, value } => match (labels.get(key), value) {
                (Some(_), None) => true,
                (Some(have), Some(want)) => have == want,
                (None, _) => false,
            },
        }
    }
}

impl fmt::Display for CollectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectPolicy::None => f.write_str("none"),
            CollectPolicy::All => f.write_str("all"),
            CollectPolicy::Label { key, value: None } => write!(f, "label:{key}"),
            CollectPolicy::Label {
                key,
                value: Some(v),
            } => write!(f, "label:{key}={v}"),
        }
    }
}
