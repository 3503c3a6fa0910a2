//! Container logs on the runner connection (dispatched by
//! `link/dispatch.rs`; `logs/mod.rs` holds the channel table, this is the
//! I/O around it):
//!
//! ```text
//!  container_snapshot / start event / policy change (nudge) / every minute
//!      └─▶ sync_collection: log_open (keep) for each chosen container not collected yet,
//!                           log_close for each collected one the policy now leaves out
//!  LiveOpen from the API (a family request) ─▶ log_open (live), its answer routed like any request
//!  DATA / END frames ─▶ LogChannels::on_frame ─▶ batch (collect) or follower queue (live)
//!  tick (≤ 250 ms while something waits) ─▶ store the batch, then ACK it;
//!                                           move stalled frames, ACK what followers took
//!  connection ends ─▶ followers told ("runner disconnected"); collection resumes
//!                     on the next connection from the stored cursor
//! ```
//!
//! The channel table is made when the first channel opens: a runner whose
//! containers are not collected, and that nobody follows, carries a
//! pointer for it.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::ws::Message as WsMessage;
use tether::protocol::{
    encode_control, encode_frame, ChannelRef, ContainerSummary, Envelope, ErrorBody, FrameHeader,
    FrameKind, Hello, LogOpen, Message, StreamTag, MAX_LOG_CHANNELS,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::common::observe::Observer;
use crate::db::control::ControlStore;
use crate::db::logs::LogStore;
use crate::db::RunnerIdentity;
use crate::link::dispatch::{Answer, Ending, Family, FamilyConn, Wire};
use crate::logs::{LiveItem, LogChannels, Sends};

/// Request ids of the server's own `log_open`s: far above the registry's,
/// so their answers are never mistaken for an API request's.
const COLLECT_ID_BASE: u64 = 1 << 62;
/// Collection is checked against the policy and the stored container list
/// this often, so a failed open or a missed event is made good. Skipped
/// while the runner has no containers (`LogsConn::containers`): then there
/// is nothing to make good, and the check would cost a database call per
/// runner and minute.
const RESYNC_EVERY: Duration = Duration::from_secs(60);

/// The logs family's handler (one, shared by every connection): only the
/// stores it needs, so each connection's share stays small.
pub struct LogsLink {
    pub logs: Arc<dyn LogStore>,
    pub control: Arc<dyn ControlStore>,
    pub observer: Arc<dyn Observer>,
}

/// A live follower's `log_open`, queued by the API (`logs/api.rs`) as this
/// family's request (`Registry::family_request`): lines go to `tx`.
pub struct LiveOpen {
    pub open: LogOpen,
    pub tx: mpsc::Sender<LiveItem>,
}

#[async_trait]
impl Family for LogsLink {
    async fn attached(self: Arc<Self>, _: &RunnerIdentity, _: &Hello) -> Box<dyn FamilyConn> {
        Box::new(LogsConn {
            link: self,
            channels: None,
            next_id: 0,
            resync_at: Instant::now() + RESYNC_EVERY,
            containers: true,
        })
    }
}

/// One connection's log channels.
struct LogsConn {
    link: Arc<LogsLink>,
    /// Made when the first channel opens.
    channels: Option<Box<LogChannels>>,
    /// The last of the server's own `log_open` ids (above `COLLECT_ID_BASE`).
    next_id: u64,
    /// When collection is next checked against the stored container list.
    resync_at: Instant,
    /// Whether the runner may have containers: the last stored list had
    /// some, or a snapshot or start event said so since. Only this
    /// connection's own messages change the stored list, so while this
    /// is false the periodic check has nothing to find (a policy change
    /// nudges, and a nudge always checks).
    containers: bool,
}

impl LogsConn {
    fn channels(&mut self, runner: &RunnerIdentity) -> &mut LogChannels {
        self.channels
            .get_or_insert_with(|| Box::new(LogChannels::new(&runner.id)))
    }

    /// Open collection for the containers the policy chooses. Stopped ones
    /// are caught up (read to their end) only if they were collected before.
    async fn sync_collection(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        containers: &[ContainerSummary],
    ) -> Result<(), Ending> {
        let policy = match self.link.logs.policy(&runner.id).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(runner = %runner.id, "reading the log collection policy: {e}");
                return Ok(());
            }
        };
        let mut left_out = Vec::new();
        for c in containers {
            let collecting = self
                .channels
                .as_ref()
                .is_some_and(|ch| ch.is_collecting(&c.id));
            if !policy.matches(&c.labels) {
                if collecting {
                    left_out.push(c.id.as_str());
                }
                continue;
            }
            if collecting {
                continue;
            }
            let running = matches!(c.state.as_str(), "running" | "restarting" | "paused");
            let cursor = match self.link.logs.cursor(&runner.id, &c.id).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(runner = %runner.id, "reading a log cursor: {e}");
                    continue;
                }
            };
            if !running && cursor.is_none() {
                continue;
            }
            self.next_id += 1;
            let id = COLLECT_ID_BASE + self.next_id;
            let opened = self
                .channels(runner)
                .open_collect(&c.id, &c.name, cursor, id, running);
            if let Some(open) = opened {
                tracing::debug!(runner = %runner.id, container = %c.name, channel = open.channel, ?cursor, "collecting logs");
                wire.send_control(id, Message::LogOpen(open)).await?;
            }
        }
        if let Some(channels) = self.channels.as_deref_mut() {
            let sends = channels.stop_collecting(&left_out);
            send_all(wire, sends).await?;
        }
        Ok(())
    }

    /// Collection against the stored container list (policy change, the
    /// periodic check).
    async fn resync_collection(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
    ) -> Result<(), Ending> {
        self.resync_at = Instant::now() + RESYNC_EVERY;
        let view = self
            .link
            .control
            .containers(&runner.tenant_id, &runner.id)
            .await;
        match view {
            Ok(Some(view)) => {
                self.containers = !view.containers.is_empty();
                self.sync_collection(wire, runner, &view.containers).await
            }
            Ok(None) => {
                self.containers = false;
                Ok(())
            }
            Err(e) => {
                tracing::error!(runner = %runner.id, "listing containers for log collection: {e}");
                Ok(())
            }
        }
    }

    /// Store the batch (off the async threads), then ACK it. On a storage
    /// error the channels are closed and reopened later from the stored
    /// cursor: nothing unstored is ever acknowledged.
    async fn flush(&mut self, wire: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        let Some(channels) = self.channels.as_deref_mut() else {
            return Ok(());
        };
        let batch = channels.take_batch();
        if batch.is_empty() {
            return Ok(());
        }
        // The blocks go to the store; (channel, end) of each stays to ACK.
        let (marks, blocks): (Vec<(u32, u64)>, Vec<_>) =
            batch.into_iter().map(|(c, end, b)| ((c, end), b)).unzip();
        for b in &blocks {
            let observer = &self.link.observer;
            observer.log_lines(&runner.tenant_id, &b.runner_id, &b.container, &b.data);
        }
        let sends = match self.link.logs.insert(blocks).await {
            Ok(()) => channels.stored(&marks),
            Err(e) => {
                tracing::error!(runner = %runner.id, "storing container logs: {e}");
                self.resync_at = Instant::now() + RESYNC_EVERY;
                channels.store_failed(&marks)
            }
        };
        send_all(wire, sends).await
    }
}

/// The ACKs and `log_close`s a call of the channel table asked for.
async fn send_all(wire: &mut Wire, sends: Sends) -> Result<(), Ending> {
    for (channel, seq) in sends.acks {
        let header = FrameHeader {
            kind: FrameKind::Ack,
            tag: StreamTag::None,
            channel,
            seq,
        };
        wire.send(WsMessage::Binary(encode_frame(header, &[]).into()))
            .await?;
    }
    for channel in sends.closes {
        let close = Message::LogClose(ChannelRef { channel });
        wire.send(WsMessage::Text(encode_control(0, close).into()))
            .await?;
    }
    Ok(())
}

#[async_trait]
impl FamilyConn for LogsConn {
    /// Collection follows the containers: the snapshot, a start.
    async fn message(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending> {
        match &envelope.body {
            Message::ContainerSnapshot(snapshot) => {
                self.containers |= !snapshot.containers.is_empty();
                self.sync_collection(wire, runner, &snapshot.containers)
                    .await
            }
            Message::ContainerEvent(event) => match (&event.action[..], &event.container) {
                ("start" | "restart", Some(c)) => {
                    self.containers = true;
                    self.sync_collection(wire, runner, std::slice::from_ref(c))
                        .await
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The runner's answer to a `log_open` (ours or a follower's): a
    /// refusal closes the channel.
    async fn reply(&mut self, _runner: &RunnerIdentity, envelope: &Envelope) -> bool {
        self.channels
            .as_deref_mut()
            .is_some_and(|ch| ch.on_reply(envelope.id, &envelope.body))
    }

    /// A live follower from the API ([`LiveOpen`]).
    async fn request(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        id: u64,
        item: Box<dyn Any + Send>,
    ) -> Result<Answer, Ending> {
        let Ok(live) = item.downcast::<LiveOpen>() else {
            return Ok(Answer::Refused(ErrorBody {
                code: "internal".into(),
                message: "not a log request".into(),
            }));
        };
        let open_now = self.channels.as_ref().map_or(0, |ch| ch.open_count());
        if open_now >= MAX_LOG_CHANNELS {
            return Ok(Answer::Refused(ErrorBody {
                code: "too_many_channels".into(),
                message: format!("{MAX_LOG_CHANNELS} log channels are open on this runner"),
            }));
        }
        let LiveOpen { open, tx } = *live;
        let open = self.channels(runner).open_live(open, tx, id);
        wire.send_control(id, Message::LogOpen(open)).await?;
        Ok(Answer::Sent)
    }

    /// The collection policy changed.
    async fn nudge(&mut self, wire: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        self.resync_collection(wire, runner).await
    }

    /// A DATA or END frame of a log channel.
    async fn frame(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        header: FrameHeader,
        payload: Bytes,
    ) -> Result<(), Ending> {
        let Some(channels) = self.channels.as_deref_mut() else {
            // Frames still in flight for a channel of an earlier connection.
            return Ok(());
        };
        let now = Instant::now();
        match channels.on_frame(&header, payload, now) {
            Err(why) => Err(Ending::violation(0, why)),
            Ok(sends) => {
                let flush = channels.flush_due(now);
                send_all(wire, sends).await?;
                if flush {
                    self.flush(wire, runner).await?;
                }
                Ok(())
            }
        }
    }

    /// When [`tick`](Self::tick) wants to run: the batch, the followers,
    /// the periodic check (only for a runner with containers).
    fn due(&self) -> Option<Instant> {
        let channels = self.channels.as_ref().and_then(|ch| ch.due());
        let resync = self.containers.then_some(self.resync_at);
        [channels, resync].into_iter().flatten().min()
    }

    /// Due work: store the batch, feed followers, check collection.
    async fn tick(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        now: Instant,
    ) -> Result<(), Ending> {
        if self.channels.as_ref().is_some_and(|ch| ch.flush_due(now)) {
            self.flush(wire, runner).await?;
        }
        if let Some(channels) = self.channels.as_deref_mut() {
            let sends = channels.tick();
            send_all(wire, sends).await?;
        }
        if self.containers && now >= self.resync_at {
            self.resync_collection(wire, runner).await?;
        }
        Ok(())
    }

    /// Followers are told; collection just stops (the next connection
    /// resumes it from the stored cursor).
    async fn detached(&mut self, _runner: &RunnerIdentity) {
        if let Some(channels) = self.channels.as_deref_mut() {
            channels.close_all("runner disconnected");
        }
    }
}
