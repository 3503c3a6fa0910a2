//! The log channels of one runner connection (and the tick that job output
//! shares with them), as the connection task drives them (`logs/mod.rs` holds the channel table; this is the I/O around it):
//!
//! ```text
//!  container_snapshot / start event / policy change / every minute
//!      └─▶ sync_collection: log_open (keep) for each chosen container not collected yet
//!  OpenLogs from the API ─▶ log_open (live), its answer routed like any request
//!  DATA / END frames ─▶ LogChannels::on_frame ─▶ batch (collect) or follower queue (live)
//!  tick (≤ 250 ms while something waits) ─▶ store the batch, then ACK it;
//!                                           move stalled frames, ACK what followers took
//! ```

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::Message as WsMessage;
use tether::protocol::{
    encode_control, encode_frame, ChannelRef, ContainerSummary, Envelope, ErrorBody, FrameHeader,
    FrameKind, LogOpen, Message, StreamTag, MAX_LOG_CHANNELS,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Connection, Ending};
use crate::logs::{LiveItem, Sends};

/// Request ids of the server's own `log_open`s: far above the registry's,
/// so their answers are never mistaken for an API request's.
const COLLECT_ID_BASE: u64 = 1 << 62;
/// Collection is checked against the policy and the stored container list
/// this often, so a failed open or a missed event is made good.
pub(super) const RESYNC_EVERY: Duration = Duration::from_secs(60);

impl Connection {
    /// A live follower from the API.
    pub(super) async fn open_live_logs(
        &mut self,
        id: u64,
        open: LogOpen,
        tx: mpsc::Sender<LiveItem>,
        reply: oneshot::Sender<Envelope>,
        pending: &mut HashMap<u64, oneshot::Sender<Envelope>>,
    ) -> Result<(), Ending> {
        if self.logs.open_count() >= MAX_LOG_CHANNELS {
            let body = Message::Error(ErrorBody {
                code: "too_many_channels".into(),
                message: format!("{MAX_LOG_CHANNELS} log channels are open on this runner"),
            });
            let _ = reply.send(Envelope { id, body });
            return Ok(());
        }
        let open = self.logs.open_live(open, tx, id);
        pending.insert(id, reply);
        self.send(WsMessage::Text(
            encode_control(id, Message::LogOpen(open)).into(),
        ))
        .await
    }

    /// Open collection for the containers the policy chooses. Stopped ones
    /// are caught up (read to their end) only if they were collected before.
    pub(super) async fn sync_collection(
        &mut self,
        containers: &[ContainerSummary],
    ) -> Result<(), Ending> {
        let policy = match self.state.db.logs.policy(&self.runner.id).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(runner = %self.runner.id, "reading the log collection policy: {e}");
                return Ok(());
            }
        };
        for c in containers {
            if !policy.matches(&c.labels) || self.logs.is_collecting(&c.id) {
                continue;
            }
            let running = matches!(c.state.as_str(), "running" | "restarting" | "paused");
            let cursor = match self.state.db.logs.cursor(&self.runner.id, &c.id).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(runner = %self.runner.id, "reading a log cursor: {e}");
                    continue;
                }
            };
            if !running && cursor.is_none() {
                continue;
            }
            self.collect_ids += 1;
            let id = COLLECT_ID_BASE + self.collect_ids;
            if let Some(open) = self.logs.open_collect(&c.id, &c.name, cursor, id, running) {
                tracing::debug!(runner = %self.runner.id, container = %c.name, channel = open.channel, ?cursor, "collecting logs");
                self.send(WsMessage::Text(
                    encode_control(id, Message::LogOpen(open)).into(),
                ))
                .await?;
            }
        }
        Ok(())
    }

    /// Collection against the stored container list (policy change, the
    /// periodic check).
    pub(super) async fn resync_collection(&mut self) -> Result<(), Ending> {
        self.resync_at = Instant::now() + RESYNC_EVERY;
        let view = self
            .state
            .db
            .control
            .containers(&self.runner.tenant_id, &self.runner.id)
            .await;
        match view {
            Ok(Some(view)) => self.sync_collection(&view.containers).await,
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::error!(runner = %self.runner.id, "listing containers for log collection: {e}");
                Ok(())
            }
        }
    }

    /// A DATA or END frame of a log channel.
    pub(super) async fn on_log_frame(
        &mut self,
        header: FrameHeader,
        payload: Bytes,
    ) -> Result<(), Ending> {
        let now = Instant::now();
        match self.logs.on_frame(&header, payload, now) {
            Err(why) => Err(Ending::violation(0, why)),
            Ok(sends) => {
                self.log_sends(sends).await?;
                if self.logs.flush_due(now) {
                    self.flush_logs().await?;
                }
                Ok(())
            }
        }
    }

    /// Due work: store the batch, feed followers, check collection.
    pub(super) async fn log_tick(&mut self, now: Instant) -> Result<(), Ending> {
        if self.logs.flush_due(now) {
            self.flush_logs().await?;
        }
        if self.job_flush_due(now) {
            self.start_job_store();
        }
        let sends = self.logs.tick();
        self.log_sends(sends).await?;
        if now >= self.resync_at {
            self.resync_collection().await?;
            // A missed nudge (full outbox) is made good here.
            self.send_pending_jobs().await?;
        }
        Ok(())
    }

    /// When [`log_tick`](Self::log_tick) wants to run.
    pub(super) fn log_due(&self) -> Instant {
        [self.logs.due(), self.job_due()]
            .into_iter()
            .flatten()
            .fold(self.resync_at, Instant::min)
    }

    /// Store the batch (off the async threads), then ACK it. On a storage
    /// error the channels are closed and reopened later from the stored
    /// cursor: nothing unstored is ever acknowledged.
    async fn flush_logs(&mut self) -> Result<(), Ending> {
        let batch = self.logs.take_batch();
        if batch.is_empty() {
            return Ok(());
        }
        // The blocks go to the store; (channel, end) of each stays to ACK.
        let (marks, blocks): (Vec<(u32, u64)>, Vec<_>) =
            batch.into_iter().map(|(c, end, b)| ((c, end), b)).unzip();
        for b in &blocks {
            let tenant = &self.runner.tenant_id;
            let alerts = &self.state.observer;
            alerts.log_lines(tenant, &b.runner_id, &b.container, &b.data);
        }
        let sends = match self.state.db.logs.insert(blocks).await {
            Ok(()) => self.logs.stored(&marks),
            Err(e) => {
                tracing::error!(runner = %self.runner.id, "storing container logs: {e}");
                self.resync_at = Instant::now() + RESYNC_EVERY;
                self.logs.store_failed(&marks)
            }
        };
        self.log_sends(sends).await
    }

    async fn log_sends(&mut self, sends: Sends) -> Result<(), Ending> {
        for (channel, seq) in sends.acks {
            let header = FrameHeader {
                kind: FrameKind::Ack,
                tag: StreamTag::None,
                channel,
                seq,
            };
            self.send(WsMessage::Binary(encode_frame(header, &[]).into()))
                .await?;
        }
        for channel in sends.closes {
            let close = Message::LogClose(ChannelRef { channel });
            self.send(WsMessage::Text(encode_control(0, close).into()))
                .await?;
        }
        Ok(())
    }
}
