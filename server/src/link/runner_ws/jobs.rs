//! Jobs on one runner connection (the I/O around `jobs/mod.rs`): send what is
//! pending, store output then ACK it, record results once, and tell the
//! watchers.
//!
//! Output is stored one batch at a time on a blocking thread while the
//! connection goes on reading frames into the next batch (group commit):
//!
//! ```text
//!  DATA ─▶ batch ──due (512 KiB / 250 ms) and no store running──▶ StoreTask (jobs.db, fsync)
//!            ▲                                                       │ done
//!            └──── frames read meanwhile grow the next batch ◀───────┤
//!                                            ACK each job's stored end ◀┘ then the next batch, if due
//! ```
//!
//! Awaiting each store inside the frame handler left the socket unread for
//! the length of every commit; overlapping them keeps the runner's window
//! moving, and the batch grows to what arrived during the last commit, so
//! a slow disk means fewer, bigger transactions rather than a stall.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::Message as WsMessage;
use tether::protocol::{
    encode_control, encode_control_checked, encode_frame, ChannelAck, FrameHeader, FrameKind,
    JobRef, JobResult, Message, StreamTag,
};
use tokio::time::Instant;

use super::{Connection, Ending};
use crate::common::clock;
use crate::db::jobs::OutputRow;
use crate::db::StorageError;
use crate::jobs::{start_message, Frame, JobUpdate};

/// Shared with the store, which reads it; kept here to ACK from.
type Batch = Arc<[(i64, OutputRow)]>;
/// The batch, and each job's stored end (or the storage error).
type Stored = (Batch, Result<Vec<(i64, i64)>, StorageError>);
pub(super) type StoreTask = tokio::task::JoinHandle<Stored>;

/// The running store's outcome (for the connection's `select!`: pending
/// while there is none; a future dropped unfinished leaves the task in
/// place).
pub(super) async fn stored(task: &mut Option<StoreTask>) -> Result<Stored, tokio::task::JoinError> {
    let Some(t) = task.as_mut() else {
        return std::future::pending().await;
    };
    let out = t.await;
    *task = None;
    out
}

/// Request ids of the server's own `job_start`s (see runner_ws/logs.rs).
const JOB_ID_BASE: u64 = 3 << 61;

/// `welcome.acks`: where the stored output of each job still producing
/// ends, so the runner resends from there.
pub(super) async fn welcome_acks(conn: &mut Connection) -> Vec<ChannelAck> {
    match conn.state.db.jobs.resumable(&conn.runner.id).await {
        Ok(list) => list
            .into_iter()
            .filter_map(|(seq, stored)| {
                let channel = u32::try_from(seq).ok()?;
                conn.job_channels.learn(channel, seq, stored);
                Some(ChannelAck {
                    channel,
                    seq: stored.max(0) as u64,
                })
            })
            .collect(),
        Err(e) => {
            tracing::error!(runner = %conn.runner.id, "reading jobs for the welcome: {e}");
            Vec::new()
        }
    }
}

impl Connection {
    /// Send `job_start` for every job not started on this connection and
    /// `job_cancel` for every cancel not sent yet.
    pub(super) async fn send_pending_jobs(&mut self) -> Result<(), Ending> {
        let jobs = match self.state.db.jobs.open_jobs(&self.runner.id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(runner = %self.runner.id, "reading pending jobs: {e}");
                return Ok(());
            }
        };
        for job in jobs {
            if job.cancel_requested
                && job.status == "pending"
                && !self.job_channels.started.contains(&job.id)
            {
                self.finish_job(
                    &job.id,
                    job.seq,
                    "cancelled",
                    "cancelled before it was sent to the runner",
                )
                .await;
                continue;
            }
            if job.cancel_requested {
                if self.job_channels.cancels.insert(job.id.clone()) {
                    let msg = Message::JobCancel(JobRef {
                        job_id: job.id.clone(),
                    });
                    self.send(WsMessage::Text(encode_control(0, msg).into()))
                        .await?;
                }
                if job.status != "pending" {
                    continue;
                }
            }
            if self.job_channels.started.contains(&job.id) {
                continue;
            }
            let start = match start_message(&job, &*self.state.db.jobs, &self.state.secrets).await {
                Ok(s) => s,
                Err(why) => {
                    self.finish_job(&job.id, job.seq, "failed", &why).await;
                    continue;
                }
            };
            self.collect_ids += 1;
            let id = JOB_ID_BASE + self.collect_ids;
            // Checked at the API too; a secret may have grown since. Never
            // sent: the runner could not take it, and a refusal there would
            // come back here on every connection.
            let text = match encode_control_checked(id, Message::JobStart(start)) {
                Ok(t) => t,
                Err(e) => {
                    self.finish_job(&job.id, job.seq, "failed", &e.to_string())
                        .await;
                    continue;
                }
            };
            if let Ok(channel) = u32::try_from(job.seq) {
                self.job_channels.learn(channel, job.seq, job.stored_bytes);
            }
            self.job_channels.started.insert(job.id.clone());
            self.job_channels.requests.insert(id, job.id.clone());
            tracing::debug!(runner = %self.runner.id, job = %job.id, "job_start");
            self.send(WsMessage::Text(text.into())).await?;
        }
        Ok(())
    }

    async fn finish_job(&mut self, id: &str, seq: i64, status: &str, reason: &str) {
        match self
            .state
            .db
            .jobs
            .finish(id, status, reason, clock::now_ms())
            .await
        {
            Ok(true) => {
                tracing::info!(runner = %self.runner.id, job = %id, status, "{reason}");
                self.state.job_hub.send(JobUpdate::Status { seq });
            }
            Ok(false) => {}
            Err(e) => tracing::error!(runner = %self.runner.id, job = %id, "finishing a job: {e}"),
        }
    }

    /// An answer to one of our `job_start`s. Returns whether it was one.
    pub(super) async fn on_job_reply(&mut self, id: u64, body: &Message) -> bool {
        let Some(job_id) = self.job_channels.requests.remove(&id) else {
            return false;
        };
        let seq = self
            .state
            .db
            .jobs
            .job(&self.runner.tenant_id, &job_id)
            .await
            .ok()
            .flatten()
            .map_or(0, |j| j.seq);
        match body {
            Message::JobAccepted(a) => {
                if let Err(e) = self
                    .state
                    .db
                    .jobs
                    .accepted(&job_id, &a.state, clock::now_ms())
                    .await
                {
                    tracing::error!(runner = %self.runner.id, job = %job_id, "recording acceptance: {e}");
                }
                self.state.job_hub.send(JobUpdate::Status { seq });
            }
            Message::Error(e) => {
                let why = format!("refused by the runner: {}: {}", e.code, e.message);
                self.finish_job(&job_id, seq, "failed", &why).await;
                // A host's refusal (a signature it did not accept) is an
                // event of the trail, under the runner as actor.
                let action = format!("runner refused job_start: {}", e.code);
                crate::audit::host_event(
                    &self.state.audit,
                    &self.runner.tenant_id,
                    &self.runner.id,
                    &action,
                    &job_id,
                    &e.message,
                )
                .await;
            }
            _ => {}
        }
        true
    }

    /// `job_result`: stored once, acknowledged every time.
    pub(super) async fn on_job_result(&mut self, id: u64, r: JobResult) -> Result<(), Ending> {
        match self.state.db.jobs.record_result(&self.runner.id, &r).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(runner = %self.runner.id, job = %r.job_id, status = %r.status, "job ended");
                    self.state.job_hub.send(JobUpdate::Status {
                        seq: i64::from(r.channel),
                    });
                    let (tenant, runner) = (&self.runner.tenant_id, &self.runner.id);
                    self.state.observer.job_ended(tenant, runner, &r);
                }
            }
            Err(e) => {
                // Not acknowledged: the runner sends it again.
                tracing::error!(runner = %self.runner.id, job = %r.job_id, "storing a job result: {e}");
                return Ok(());
            }
        }
        let ack = Message::JobResultAck(JobRef { job_id: r.job_id });
        self.send(WsMessage::Text(encode_control(id, ack).into()))
            .await
    }

    /// A DATA frame on a job channel.
    pub(super) async fn on_job_frame(
        &mut self,
        h: FrameHeader,
        payload: Bytes,
    ) -> Result<(), Ending> {
        if h.kind != FrameKind::Data {
            return Ok(());
        }
        if !self.job_channels.is_known(h.channel) {
            let job = self
                .state
                .db
                .jobs
                .job_by_seq(&self.runner.id, i64::from(h.channel))
                .await;
            match job {
                Ok(Some(j)) => self.job_channels.learn(h.channel, j.seq, j.stored_bytes),
                Ok(None) => {
                    if self.job_channels.stranger(h.channel) {
                        tracing::warn!(runner = %self.runner.id, channel = h.channel, "output for a job that is not this runner's: ignored");
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(runner = %self.runner.id, "looking up a job channel: {e}");
                    return Err(Ending::close(
                        1011,
                        "internal server error",
                        "internal error",
                    ));
                }
            }
        }
        let now = Instant::now();
        match self
            .job_channels
            .on_data(h.channel, h.seq, h.tag as u8, &payload, now)
        {
            Err(why) => return Err(Ending::violation(0, why)),
            // Watchers see it at once (they order by offset and skip what
            // they have, so a resend after a failed store is harmless);
            // the runner's ACK waits for the disk.
            Ok(Frame::Queued(seq, row)) => self.state.job_hub.send(JobUpdate::Output { seq, row }),
            Ok(Frame::Duplicate | Frame::Stranger | Frame::Dropped) => {}
        }
        if self.job_channels.flush_due(now) {
            self.start_job_store();
        }
        Ok(())
    }

    /// Start storing the batch, unless a store is running (its end starts
    /// the next one).
    pub(super) fn start_job_store(&mut self) {
        if self.job_store.is_some() {
            return;
        }
        let batch = self.job_channels.take_batch();
        if batch.is_empty() {
            return;
        }
        let batch: Batch = batch.into();
        let store = self.state.db.jobs.clone();
        self.job_store = Some(tokio::spawn(async move {
            let r = store.store_output(batch.clone()).await;
            (batch, r)
        }));
    }

    /// A batch is stored: ACK it, and start the next if it is due. A
    /// storage error ends the connection: the runner resends from the last
    /// ACK after it reconnects, so nothing unstored is ever acknowledged
    /// or lost.
    pub(super) async fn on_job_stored(
        &mut self,
        stored: Result<Stored, tokio::task::JoinError>,
    ) -> Result<(), Ending> {
        let (batch, ends) = match stored {
            Ok((batch, Ok(ends))) => (batch, ends),
            Ok((batch, Err(e))) => {
                tracing::error!(runner = %self.runner.id, "storing job output: {e}");
                self.job_channels.unstored(&batch);
                return Err(Ending::close(
                    1011,
                    "storing job output failed",
                    "internal error",
                ));
            }
            Err(e) => {
                tracing::error!(runner = %self.runner.id, "job output task: {e}");
                return Err(Ending::close(
                    1011,
                    "internal server error",
                    "internal error",
                ));
            }
        };
        drop(batch);
        for (seq, end) in ends {
            // Watchers saw the rows on receipt; this tells one waiting for
            // the end that storage has caught up.
            self.state.job_hub.send(JobUpdate::Status { seq });
            let Some(channel) = self.job_channels.channel_of(seq) else {
                continue;
            };
            let header = FrameHeader {
                kind: FrameKind::Ack,
                tag: StreamTag::None,
                channel,
                seq: end.max(0) as u64,
            };
            self.send(WsMessage::Binary(encode_frame(header, &[]).into()))
                .await?;
        }
        if self.job_channels.flush_due(Instant::now()) {
            self.start_job_store();
        }
        Ok(())
    }

    /// When a batch is due to be stored; none while a store runs (its end
    /// starts the next, and a past deadline would spin the timer).
    pub(super) fn job_due(&self) -> Option<Instant> {
        if self.job_store.is_some() {
            return None;
        }
        self.job_channels.due()
    }

    pub(super) fn job_flush_due(&self, now: Instant) -> bool {
        self.job_channels.flush_due(now)
    }
}
