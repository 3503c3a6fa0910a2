//! Container log lines as the API shows them, the collection policy, and
//! the per-connection log channels ([`LogChannels`]; `link.rs` drives them
//! on the runner connection, as the logs family of `link/dispatch.rs`).
//!
//! A runner sends log lines on data channels the server opens with
//! `log_open` (docs/protocol.md §4b). Two kinds:
//!
//! ```text
//!  collect (keep: true)   one per collected container, opened when the runner's
//!                         snapshot or a `start` event shows a container the policy
//!                         chooses; since = the stored cursor. Lines are batched and
//!                         stored (db/sqlite/logs.rs) with the cursor, then ACKed.
//!  live (API follow)      one per subscriber; lines go to its bounded queue and are
//!                         ACKed as it takes them, so a slow reader slows the runner's
//!                         reading of Docker, not the server's memory.
//! ```
//!
//! Channels live and die with the connection: after a reconnect the server
//! opens collection again from its stored cursor, and a live follower sees
//! the stream end ("runner disconnected").

pub mod api;
pub mod link;

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct LogsCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    pub tuning: Tuning,
    /// Collection settings changed, for the event stream (`common/bus.rs`).
    pub bus: Arc<crate::common::bus::Bus>,
}

/// Container logs, and a runner's collection settings.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    LogsCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use axum::routing::{get, put};
    axum::Router::new()
        .route("/api/v1/runners/{id}/containers/{cid}/logs", get(api::logs))
        .route("/api/v1/runners/{id}/logs", get(api::settings))
        .route("/api/v1/runners/{id}/logs/collect", put(api::set_collect))
        .route(
            "/api/v1/runners/{id}/logs/retention",
            put(api::set_retention).delete(api::clear_retention),
        )
}

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use tether::protocol::{
    FrameHeader, FrameKind, LogOpen, Message, StreamTag, FIRST_CONNECTION_CHANNEL, TERM_CHANNEL_BIT,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::common::clock;
use crate::common::tuning::Tuning;
use crate::db::logs::BlockIn;
use crate::db::Db;
use crate::link::registry::Registry;

/// Stored blocks are written at least this often...
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// ...or once this much is waiting.
pub const FLUSH_BYTES: usize = 256 * 1024;
/// The window a collection channel gets: a few flushes' worth.
pub const COLLECT_WINDOW: u32 = 1024 * 1024;
/// A live follower is ACKed once it took this much (or on the next tick).
const LIVE_ACK_BYTES: u64 = 64 * 1024;
/// How often a connection looks whether its quiet followers are still there.
const FOLLOWER_CHECK: Duration = Duration::from_secs(1);
/// Frames queued for one live follower before the server stops taking them.
pub const LIVE_QUEUE: usize = 64;

// Lines and the collection policy are the log area's model types, kept in
// db/logs.rs with the store that speaks them; re-exported here, where the
// feature names them most.
#[cfg(test)]
pub use crate::db::logs::format_ts;
pub use crate::db::logs::{
    parse_line, parse_rfc3339_ns, stream_name, CollectPolicy, LogLine, StreamSel,
};

// ---------------------------------------------------------------------------
// Channels of one connection

/// What a live follower receives.
#[derive(Debug, Clone)]
pub enum LiveItem {
    /// Whole lines of one stream (see [`parse_line`]).
    Lines { tag: u8, data: Bytes },
    /// The stream ended, and why.
    End(String),
}

enum Sink {
    Collect {
        container_id: String,
        name: String,
        cursor: Option<(i64, u32)>,
    },
    Live {
        tx: mpsc::Sender<LiveItem>,
        /// Frames the follower's queue had no room for, with the offset
        /// after each; bounded by the window.
        stalled: VecDeque<(LiveItem, u64)>,
    },
}

struct Chan {
    sink: Sink,
    /// Next offset expected, and the offset up to which the data is
    /// stored (collect) or taken by the follower (live).
    received: u64,
    done: u64,
    acked: u64,
}

/// What the connection must send after a call.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sends {
    /// ACK frames: (channel, offset).
    pub acks: Vec<(u32, u64)>,
    /// `log_close` for channels whose follower left.
    pub closes: Vec<u32>,
}

/// The log channels of one runner connection.
pub struct LogChannels {
    runner_id: String,
    next: u32,
    chans: HashMap<u32, Chan>,
    /// `log_open` request id → channel, until answered.
    opening: HashMap<u64, u32>,
    /// Container id → its collection channel.
    collecting: HashMap<String, u32>,
    /// Blocks waiting to be stored, with (channel, offset after).
    batch: Vec<(u32, u64, BlockIn)>,
    batch_bytes: usize,
    batch_since: Option<Instant>,
}

impl LogChannels {
    pub fn new(runner_id: &str) -> LogChannels {
        LogChannels {
            runner_id: runner_id.to_owned(),
            next: FIRST_CONNECTION_CHANNEL,
            chans: HashMap::new(),
            opening: HashMap::new(),
            collecting: HashMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            batch_since: None,
        }
    }

    fn channel(&mut self) -> u32 {
        let c = self.next;
        // Log channels stay between the jobs' and the terminals' numbers.
        self.next = self.next.wrapping_add(1);
        if self.next >= TERM_CHANNEL_BIT {
            self.next = FIRST_CONNECTION_CHANNEL;
        }
        c
    }

    pub fn open_count(&self) -> usize {
        self.chans.len()
    }

    pub fn is_collecting(&self, container_id: &str) -> bool {
        self.collecting.contains_key(container_id)
    }

    /// A live follower: its `log_open` (sent with `request_id`).
    pub fn open_live(
        &mut self,
        mut open: LogOpen,
        tx: mpsc::Sender<LiveItem>,
        request_id: u64,
    ) -> LogOpen {
        let channel = self.channel();
        open.channel = channel;
        self.chans.insert(
            channel,
            Chan {
                sink: Sink::Live {
                    tx,
                    stalled: VecDeque::new(),
                },
                received: 0,
                done: 0,
                acked: 0,
            },
        );
        self.opening.insert(request_id, channel);
        open
    }

    /// Collection of a container from `cursor`: its `log_open`, or `None`
    /// if it is collected already.
    /// `follow`: a running container, followed for as long as it exists;
    /// otherwise a stopped one, read to its end.
    pub fn open_collect(
        &mut self,
        container_id: &str,
        name: &str,
        cursor: Option<(i64, u32)>,
        request_id: u64,
        follow: bool,
    ) -> Option<LogOpen> {
        if self.collecting.contains_key(container_id) {
            return None;
        }
        let channel = self.channel();
        self.chans.insert(
            channel,
            Chan {
                sink: Sink::Collect {
                    container_id: container_id.to_owned(),
                    name: name.to_owned(),
                    cursor,
                },
                received: 0,
                done: 0,
                acked: 0,
            },
        );
        self.collecting.insert(container_id.to_owned(), channel);
        self.opening.insert(request_id, channel);
        Some(LogOpen {
            channel,
            container: container_id.to_owned(),
            follow,
            tail: None,
            since_ns: cursor.map(|c| c.0),
            skip: cursor.map_or(0, |c| c.1),
            until_ns: None,
            stdout: true,
            stderr: true,
            keep: follow,
            window: COLLECT_WINDOW,
        })
    }

    /// The policy no longer chooses these containers: their collection
    /// channels close (the runner is told). What was received is still
    /// stored, and a later policy that chooses them again resumes from the
    /// stored cursor.
    pub fn stop_collecting(&mut self, container_ids: &[&str]) -> Sends {
        let mut sends = Sends::default();
        for id in container_ids {
            if let Some(&channel) = self.collecting.get(*id) {
                self.opening.retain(|_, c| *c != channel);
                self.remove(channel, Some("the collection policy left it out".into()));
                sends.closes.push(channel);
            }
        }
        sends
    }

    /// The runner answered a request: if it refused a `log_open`, the
    /// channel is gone. Returns whether the id was a `log_open`.
    pub fn on_reply(&mut self, id: u64, body: &Message) -> bool {
        let Some(channel) = self.opening.remove(&id) else {
            return false;
        };
        if let Message::Error(e) = body {
            tracing::debug!(runner = %self.runner_id, channel, code = %e.code, "log_open refused: {}", e.message);
            self.remove(channel, None);
        }
        true
    }

    /// The follower of `channel` left (or the caller gave up before the
    /// answer): forget it. Returns whether it was open.
    pub fn forget(&mut self, channel: u32) -> bool {
        self.opening.retain(|_, c| *c != channel);
        self.chans.remove(&channel).is_some()
    }

    /// A DATA or END frame. `Err` is a protocol violation.
    pub fn on_frame(
        &mut self,
        h: &FrameHeader,
        payload: Bytes,
        now: Instant,
    ) -> Result<Sends, String> {
        let mut sends = Sends::default();
        let Some(chan) = self.chans.get_mut(&h.channel) else {
            // Frames still in flight for a channel we closed.
            return Ok(sends);
        };
        if h.seq != chan.received && !(h.kind == FrameKind::End && h.seq < chan.received) {
            return Err(format!(
                "channel {} data at offset {} but {} was expected",
                h.channel, h.seq, chan.received
            ));
        }
        match h.kind {
            FrameKind::Data => {
                if !matches!(h.tag, StreamTag::Stdout | StreamTag::Stderr) {
                    return Err(format!(
                        "log channel {} with a {:?} frame",
                        h.channel, h.tag
                    ));
                }
                chan.received += payload.len() as u64;
                let end = chan.received;
                match &mut chan.sink {
                    Sink::Collect {
                        container_id,
                        name,
                        cursor,
                    } => {
                        let block = block_of(
                            &self.runner_id,
                            container_id,
                            name,
                            cursor,
                            h.tag as u8,
                            &payload,
                        );
                        self.batch_bytes += block.data.len();
                        self.batch.push((h.channel, end, block));
                        self.batch_since.get_or_insert(now);
                    }
                    Sink::Live { tx, stalled } => {
                        let item = LiveItem::Lines {
                            tag: h.tag as u8,
                            data: payload,
                        };
                        if stalled.is_empty() {
                            match tx.try_send(item) {
                                Ok(()) => chan.done = end,
                                Err(mpsc::error::TrySendError::Full(item)) => {
                                    stalled.push_back((item, end))
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => {
                                    sends.closes.push(h.channel);
                                }
                            }
                        } else {
                            stalled.push_back((item, end));
                        }
                        if chan.done - chan.acked >= LIVE_ACK_BYTES {
                            chan.acked = chan.done;
                            sends.acks.push((h.channel, chan.done));
                        }
                    }
                }
            }
            FrameKind::End => {
                let reason = String::from_utf8_lossy(&payload).into_owned();
                self.remove(h.channel, Some(reason));
            }
            _ => {}
        }
        for &c in &sends.closes {
            self.forget(c);
        }
        Ok(sends)
    }

    /// Drop a channel; a live follower is told why it ended.
    fn remove(&mut self, channel: u32, reason: Option<String>) {
        let Some(chan) = self.chans.remove(&channel) else {
            return;
        };
        match chan.sink {
            Sink::Collect { container_id, .. } => {
                tracing::debug!(runner = %self.runner_id, channel, container = %container_id, "log collection ended: {}", reason.as_deref().unwrap_or("refused"));
                self.collecting.remove(&container_id);
            }
            Sink::Live { tx, stalled } => {
                let why = reason.unwrap_or_else(|| "log stream refused".into());
                // The follower gets what was stalled, then the end, from a
                // task: it may be slow, and the connection must not wait.
                tokio::spawn(async move {
                    for (item, _) in stalled {
                        if tx.send(item).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.send(LiveItem::End(why)).await;
                });
            }
        }
    }

    /// When [`tick`](Self::tick) should run next, if something waits.
    pub fn due(&self) -> Option<Instant> {
        let (mut live_open, mut live_waiting) = (false, false);
        for c in self.chans.values() {
            if let Sink::Live { stalled, .. } = &c.sink {
                live_open = true;
                live_waiting |= !stalled.is_empty() || c.done > c.acked;
            }
        }
        let batch = self.batch_since.map(|t| t + FLUSH_EVERY);
        // With followers open, look now and then whether they left.
        let live = if live_waiting {
            Some(Instant::now() + FLUSH_EVERY)
        } else {
            live_open.then(|| Instant::now() + FOLLOWER_CHECK)
        };
        match (batch, live) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the batch should be stored now.
    pub fn flush_due(&self, now: Instant) -> bool {
        self.batch_bytes >= FLUSH_BYTES || self.batch_since.is_some_and(|t| now >= t + FLUSH_EVERY)
    }

    /// The blocks to store; hand the result to [`stored`](Self::stored).
    pub fn take_batch(&mut self) -> Vec<(u32, u64, BlockIn)> {
        self.batch_bytes = 0;
        self.batch_since = None;
        std::mem::take(&mut self.batch)
    }

    /// The batch is stored: ACK each channel up to its last block. `batch`
    /// is (channel, end) of each block taken, in order.
    pub fn stored(&mut self, batch: &[(u32, u64)]) -> Sends {
        let mut sends = Sends::default();
        for (channel, end) in batch {
            if let Some(chan) = self.chans.get_mut(channel) {
                chan.done = chan.done.max(*end);
            }
        }
        for (channel, chan) in &mut self.chans {
            if matches!(chan.sink, Sink::Collect { .. }) && chan.done > chan.acked {
                chan.acked = chan.done;
                sends.acks.push((*channel, chan.done));
            }
        }
        sends
    }

    /// Storing failed: the collection channels of the batch are closed (the
    /// runner is told), and reopened later from the stored cursor.
    pub fn store_failed(&mut self, batch: &[(u32, u64)]) -> Sends {
        let mut sends = Sends::default();
        let mut seen: Vec<u32> = batch.iter().map(|b| b.0).collect();
        seen.dedup();
        for channel in seen {
            if self.chans.contains_key(&channel) {
                self.remove(channel, Some("storage failed".into()));
                sends.closes.push(channel);
            }
        }
        // Later blocks of those channels in a newer batch follow a gap.
        self.batch.retain(|b| !sends.closes.contains(&b.0));
        sends
    }

    /// Move stalled frames to live followers that have room; ACK what they
    /// took; close channels whose follower left.
    pub fn tick(&mut self) -> Sends {
        let mut sends = Sends::default();
        for (&channel, chan) in &mut self.chans {
            let Sink::Live { tx, stalled } = &mut chan.sink else {
                continue;
            };
            if tx.is_closed() {
                sends.closes.push(channel);
                continue;
            }
            while let Some((item, end)) = stalled.pop_front() {
                match tx.try_send(item) {
                    Ok(()) => chan.done = end,
                    Err(mpsc::error::TrySendError::Full(item)) => {
                        stalled.push_front((item, end));
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        sends.closes.push(channel);
                        break;
                    }
                }
            }
            if chan.done > chan.acked {
                chan.acked = chan.done;
                sends.acks.push((channel, chan.done));
            }
        }
        for &c in &sends.closes {
            self.forget(c);
        }
        sends
    }

    /// The connection ended: followers are told, collection just stops
    /// (the next connection resumes it from the stored cursor).
    pub fn close_all(&mut self, reason: &str) {
        let channels: Vec<u32> = self.chans.keys().copied().collect();
        for c in channels {
            self.remove(c, Some(reason.to_owned()));
        }
    }
}

/// A DATA payload of a collection channel as a block, moving `cursor`
/// past its last line. Lines without a readable time are kept with the
/// block's (or, if none has one, the cursor's) time.
fn block_of(
    runner_id: &str,
    container_id: &str,
    name: &str,
    cursor: &mut Option<(i64, u32)>,
    tag: u8,
    payload: &[u8],
) -> BlockIn {
    let (mut first, mut last, mut lines) = (None, None, 0i64);
    for line in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        lines += 1;
        let ts = std::str::from_utf8(line)
            .ok()
            .map(|l| l.split_once(' ').map_or(l, |(t, _)| t))
            .and_then(parse_rfc3339_ns);
        let Some(ts) = ts else { continue };
        first.get_or_insert(ts);
        last = Some(last.map_or(ts, |l: i64| l.max(ts)));
        *cursor = Some(match *cursor {
            Some((t, n)) if t == ts => (ts, n.saturating_add(1)),
            _ => (ts, 1),
        });
    }
    let fallback = cursor.map_or_else(|| clock::now_ms().saturating_mul(1_000_000), |c| c.0);
    BlockIn {
        runner_id: runner_id.to_owned(),
        container: name.to_owned(),
        container_id: container_id.to_owned(),
        tag,
        ts_first: first.unwrap_or(fallback),
        ts_last: last.unwrap_or(fallback),
        lines,
        data: payload.to_vec(),
        cursor: *cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        let ns = 1_795_867_200_123_456_789;
        assert_eq!(format_ts(ns), "2026-11-28T12:00:00.123456789Z");
        assert_eq!(parse_rfc3339_ns(&format_ts(ns)), Some(ns));
        assert_eq!(
            parse_rfc3339_ns("2026-11-28T12:00:00.5Z"),
            Some(1_795_867_200_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2026-11-28T12:00:00Z"),
            Some(1_795_867_200_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2026-11-28T14:00:00.1+02:00"),
            Some(1_795_867_200_100_000_000)
        );
        assert_eq!(parse_rfc3339_ns("2026-11-28T12:00:00.Z"), None);
        assert_eq!(parse_rfc3339_ns("2026-11-28T12:00:00.1234567890Z"), None);
        assert_eq!(parse_rfc3339_ns("garbage"), None);
        let l = parse_line(2, b"2026-11-28T12:00:00.5Z hello world");
        assert_eq!((l.stream, l.line.as_str()), ("stderr", "hello world"));
        let l = parse_line(1, b"no time here");
        assert_eq!((l.ts_ns, l.line.as_str()), (None, "no time here"));
    }

    #[test]
    fn policies_parse_and_match() {
        let labels: BTreeMap<String, String> =
            [("tether.logs".to_owned(), "yes".to_owned())].into();
        for (text, want) in [
            ("all", true),
            ("none", false),
            ("label:tether.logs", true),
            ("label:tether.logs=yes", true),
            ("label:tether.logs=no", false),
            ("label:other", false),
        ] {
            let p = CollectPolicy::parse(text).unwrap();
            assert_eq!(p.matches(&labels), want, "{text}");
            assert_eq!(CollectPolicy::parse(&p.to_string()).unwrap(), p);
        }
        assert!(CollectPolicy::parse("label:").is_err());
        assert!(CollectPolicy::parse("some").is_err());
    }

    fn data(channel: u32, seq: u64) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Data,
            tag: StreamTag::Stdout,
            channel,
            seq,
        }
    }

    #[tokio::test]
    async fn a_container_the_policy_leaves_out_stops_being_collected_and_keeps_what_came() {
        let mut ch = LogChannels::new("r1");
        let web = ch.open_collect("web", "web", None, 7, true).unwrap();
        let _db = ch.open_collect("db", "db", None, 8, true).unwrap();
        let p = Bytes::from_static(b"2026-11-28T12:00:00.5Z a\n");
        ch.on_frame(&data(web.channel, 0), p.clone(), Instant::now())
            .unwrap();
        let sends = ch.stop_collecting(&["web", "gone"]);
        assert_eq!(sends.closes, vec![web.channel], "only what is collected");
        assert!(!ch.is_collecting("web") && ch.is_collecting("db"));
        assert_eq!(ch.open_count(), 1);
        // The line received before the close is still stored.
        assert_eq!(ch.take_batch().len(), 1);
        // Late frames of the closed channel change nothing.
        let late = ch.on_frame(&data(web.channel, p.len() as u64), p, Instant::now());
        assert_eq!(late, Ok(Sends::default()));
        assert!(ch.take_batch().is_empty());
        // Chosen again: opened again (from the stored cursor).
        assert!(ch
            .open_collect("web", "web", Some((5, 1)), 9, true)
            .is_some());
        let refused = Message::Error(tether::protocol::ErrorBody {
            code: "x".into(),
            message: "late".into(),
        });
        assert!(!ch.on_reply(7, &refused), "the old open is forgotten");
        assert!(ch.on_reply(8, &refused) && !ch.is_collecting("db"));
    }

    #[tokio::test]
    async fn collection_batches_blocks_with_the_cursor_and_acks_after_storing() {
        let mut ch = LogChannels::new("r1");
        let open = ch
            .open_collect("cid", "web", Some((5, 2)), 7, true)
            .unwrap();
        assert_eq!((open.since_ns, open.skip, open.keep), (Some(5), 2, true));
        assert!(
            ch.open_collect("cid", "web", None, 8, true).is_none(),
            "one per container"
        );
        let now = Instant::now();
        let p1 = Bytes::from_static(b"2026-11-28T12:00:00.5Z a\n2026-11-28T12:00:00.5Z b\n");
        let sends = ch
            .on_frame(&data(open.channel, 0), p1.clone(), now)
            .unwrap();
        assert!(
            sends.acks.is_empty(),
            "nothing is acked before it is stored"
        );
        // A gap is a protocol violation.
        assert!(ch
            .on_frame(&data(open.channel, 999), p1.clone(), now)
            .is_err());
        assert!(!ch.flush_due(now));
        assert!(ch.flush_due(now + FLUSH_EVERY));
        let batch = ch.take_batch();
        assert_eq!(batch.len(), 1);
        let b = &batch[0].2;
        assert_eq!(
            (b.lines, b.cursor),
            (2, Some((1_795_867_200_500_000_000, 2)))
        );
        let marks: Vec<(u32, u64)> = batch.iter().map(|b| (b.0, b.1)).collect();
        let sends = ch.stored(&marks);
        assert_eq!(sends.acks, vec![(open.channel, p1.len() as u64)]);
        // END removes it; collection can be opened again later.
        let end = FrameHeader {
            kind: FrameKind::End,
            tag: StreamTag::None,
            channel: open.channel,
            seq: p1.len() as u64,
        };
        ch.on_frame(&end, Bytes::from_static(b"container removed"), now)
            .unwrap();
        assert!(!ch.is_collecting("cid"));
        assert_eq!(ch.open_count(), 0);
    }

    #[tokio::test]
    async fn a_slow_follower_stalls_acks_not_memory() {
        let mut ch = LogChannels::new("r1");
        let (tx, mut rx) = mpsc::channel(1);
        let open = ch.open_live(
            LogOpen {
                channel: 0,
                container: "web".into(),
                follow: true,
                tail: None,
                since_ns: None,
                skip: 0,
                until_ns: None,
                stdout: true,
                stderr: true,
                keep: false,
                window: 0,
            },
            tx,
            3,
        );
        assert!(ch.on_reply(
            3,
            &Message::LogOpened(tether::protocol::LogOpened {
                channel: open.channel,
                container_id: "cid".into(),
                name: "web".into(),
                tty: false,
            })
        ));
        let p = Bytes::from(vec![b'x'; 40 * 1024]);
        let now = Instant::now();
        ch.on_frame(&data(open.channel, 0), p.clone(), now).unwrap();
        // The queue (1) is full now: the next frame stalls, nothing acked for it.
        let sends = ch
            .on_frame(&data(open.channel, p.len() as u64), p.clone(), now)
            .unwrap();
        assert!(sends.acks.is_empty());
        assert_eq!(ch.tick().acks, vec![(open.channel, p.len() as u64)]);
        rx.recv().await.unwrap();
        assert_eq!(ch.tick().acks, vec![(open.channel, 2 * p.len() as u64)]);
        // The follower leaves: the runner is told to close.
        drop(rx);
        let sends = ch
            .on_frame(&data(open.channel, 2 * p.len() as u64), p, now)
            .unwrap();
        let sends = if sends.closes.is_empty() {
            ch.tick()
        } else {
            sends
        };
        assert_eq!(sends.closes, vec![open.channel]);
        assert_eq!(ch.open_count(), 0);
    }
}
