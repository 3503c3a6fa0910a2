//! Jobs on the runner connection (dispatched by `link/dispatch.rs`; the I/O
//! around `jobs/mod.rs`): send what is pending, store output then ACK it,
//! record results once, and tell the watchers.
//!
//! ```text
//!  welcome ─▶ acks: where each job's stored output ends (the runner resends from there)
//!  welcome sent / nudge (jobs made or cancelled; the sweep) ─▶ job_start, job_cancel
//!  job_accepted, error (answers to our job_start) ─▶ queued/running, or failed
//!  job_result ─▶ stored once ─▶ job_result_ack (every time)
//! ```
//!
//! Output is stored one batch at a time on a blocking thread while the
//! connection goes on reading frames into the next batch (group commit):
//!
//! ```text
//!  DATA ─▶ batch ──due (512 KiB / 250 ms) and no store running──▶ StoreTask (jobs.db, fsync)
//!            ▲                                                       │ done (poll_work)
//!            └──── frames read meanwhile grow the next batch ◀───────┤
//!                                            ACK each job's stored end ◀┘ then the next batch, if due
//! ```
//!
//! Awaiting each store inside the frame handler left the socket unread for
//! the length of every commit; overlapping them keeps the runner's window
//! moving, and the batch grows to what arrived during the last commit, so
//! a slow disk means fewer, bigger transactions rather than a stall.
//!
//! The channel table and the store task are made on first use: a runner
//! without jobs carries a pointer for them.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::ws::Message as WsMessage;
use tether::protocol::{
    encode_control_checked, encode_frame, ChannelAck, Envelope, FrameHeader, FrameKind, Hello,
    JobRef, JobResult, Message, StreamTag, Welcome,
};
use tokio::time::Instant;

use crate::audit::AuditCtx;
use crate::common::clock;
use crate::common::observe::Observer;
use crate::common::secrets::SecretBox;
use crate::db::jobs::{JobStore, OutputRow};
use crate::db::{RunnerIdentity, StorageError};
use crate::jobs::{start_message, Frame, JobChannels, JobHub, JobUpdate};
use crate::link::dispatch::{Ending, Family, FamilyConn, FamilyId, Wire};
use crate::link::registry::Registry;

/// Request ids of the server's own `job_start`s: far above the registry's
/// (and apart from the log collection's, `logs/link.rs`), so their answers
/// are never mistaken for an API request's.
const JOB_ID_BASE: u64 = 3 << 61;
/// After the jobs could not be read, the next try. (Otherwise a
/// connection reads them only when nudged: nudges are never lost on a
/// replica (`link/registry.rs::Nudges`), a replica that listens again
/// after a lost database connection nudges every runner it holds
/// (`cluster/replica.rs`), and [`sweep`] is the safety net. A check per
/// connection every few minutes was, at 1,000 idle runners, 3 database
/// calls a second, each a hand-off to a blocking thread: most of an idle
/// fleet's CPU.)
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(60);

/// How often [`sweep`] looks for jobs a connection was not told of.
pub const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// The safety net under the nudges, once per process: every
/// [`SWEEP_EVERY`], one question to storage — which of the runners held
/// here have a job not yet final — and a nudge to each (a connection that
/// has sent them all reads its jobs and sends nothing). One call for the
/// whole fleet instead of one per connection.
pub async fn sweep(jobs: Arc<dyn JobStore>, registry: Arc<Registry>) {
    let mut every = tokio::time::interval_at(Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let held: Vec<String> = registry.held().into_iter().map(|(id, _)| id).collect();
        if held.is_empty() {
            continue;
        }
        match jobs.runners_with_open_jobs(&held).await {
            Ok(ids) => {
                for id in ids.iter().filter(|id| registry.holds(id)) {
                    registry.nudge(id, FamilyId::Jobs);
                }
            }
            Err(e) => tracing::warn!("jobs sweep: reading runners with open jobs: {e}"),
        }
    }
}

/// Shared with the store, which reads it; kept here to ACK from.
type Batch = Arc<[(i64, OutputRow)]>;
/// The batch, and each job's stored end (or the storage error).
type Stored = (Batch, Result<Vec<(i64, i64)>, StorageError>);
type StoreTask = tokio::task::JoinHandle<Stored>;

/// The jobs family's handler (one, shared by every connection).
pub struct JobsLink {
    pub jobs: Arc<dyn JobStore>,
    pub secrets: Arc<SecretBox>,
    pub hub: Arc<JobHub>,
    pub observer: Arc<dyn Observer>,
    pub audit: AuditCtx,
    /// Output bytes stored per job (`common/quotas.rs`).
    pub output_cap: u64,
}

#[async_trait]
impl Family for JobsLink {
    async fn attached(self: Arc<Self>, _: &RunnerIdentity, _: &Hello) -> Box<dyn FamilyConn> {
        Box::new(JobsConn {
            link: self,
            state: None,
            next_id: 0,
            retry_at: None,
        })
    }
}

/// One connection's jobs.
struct JobsConn {
    link: Arc<JobsLink>,
    /// Made on first use (a resumable job, a job sent, a frame).
    state: Option<Box<JobsState>>,
    /// The last of our `job_start` ids (above `JOB_ID_BASE`).
    next_id: u64,
    /// When the jobs are read again after they could not be.
    retry_at: Option<Instant>,
}

/// What a connection with jobs keeps.
struct JobsState {
    /// Job channels and the job messages sent.
    channels: JobChannels,
    /// The output batch being stored, if any (one at a time, in order;
    /// frames keep being read meanwhile).
    store: Option<StoreTask>,
    /// Its outcome, once it came (`poll_work`), until `work` ACKs it.
    stored: Option<Result<Stored, tokio::task::JoinError>>,
}

impl JobsConn {
    fn state(&mut self) -> &mut JobsState {
        let cap = self.link.output_cap;
        self.state.get_or_insert_with(|| {
            Box::new(JobsState {
                channels: JobChannels::new(cap),
                store: None,
                stored: None,
            })
        })
    }

    fn channels(&self) -> Option<&JobChannels> {
        self.state.as_ref().map(|s| &s.channels)
    }

    /// Send `job_start` for every job not started on this connection and
    /// `job_cancel` for every cancel not sent yet.
    async fn send_pending(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
    ) -> Result<(), Ending> {
        let jobs = match self.link.jobs.open_jobs(&runner.id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(runner = %runner.id, "reading pending jobs: {e}");
                self.retry_at = Some(Instant::now() + RETRY_AFTER_ERROR);
                return Ok(());
            }
        };
        for job in jobs {
            let started = self
                .channels()
                .is_some_and(|ch| ch.started.contains(&job.id));
            if job.cancel_requested && job.status == "pending" && !started {
                self.finish(
                    runner,
                    &job.id,
                    job.seq,
                    "cancelled",
                    "cancelled before it was sent to the runner",
                )
                .await;
                continue;
            }
            if job.cancel_requested {
                if self.state().channels.cancels.insert(job.id.clone()) {
                    let msg = Message::JobCancel(JobRef {
                        job_id: job.id.clone(),
                    });
                    wire.send_control(0, msg).await?;
                }
                if job.status != "pending" {
                    continue;
                }
            }
            if started {
                continue;
            }
            let start = match start_message(&job, &*self.link.jobs, &self.link.secrets).await {
                Ok(s) => s,
                Err(why) => {
                    self.finish(runner, &job.id, job.seq, "failed", &why).await;
                    continue;
                }
            };
            self.next_id += 1;
            let id = JOB_ID_BASE + self.next_id;
            // Checked at the API too; a secret may have grown since. Never
            // sent: the runner could not take it, and a refusal there would
            // come back here on every connection.
            let text = match encode_control_checked(id, Message::JobStart(start)) {
                Ok(t) => t,
                Err(e) => {
                    self.finish(runner, &job.id, job.seq, "failed", &e.to_string())
                        .await;
                    continue;
                }
            };
            let channels = &mut self.state().channels;
            if let Ok(channel) = u32::try_from(job.seq) {
                channels.learn(channel, job.seq, job.stored_bytes);
            }
            channels.started.insert(job.id.clone());
            channels.requests.insert(id, job.id.clone());
            tracing::debug!(runner = %runner.id, job = %job.id, "job_start");
            wire.send(WsMessage::Text(text.into())).await?;
        }
        Ok(())
    }

    async fn finish(
        &self,
        runner: &RunnerIdentity,
        id: &str,
        seq: i64,
        status: &str,
        reason: &str,
    ) {
        match self
            .link
            .jobs
            .finish(id, status, reason, clock::now_ms())
            .await
        {
            Ok(true) => {
                tracing::info!(runner = %runner.id, job = %id, status, "{reason}");
                self.link.hub.send(JobUpdate::Status { seq });
            }
            Ok(false) => {}
            Err(e) => tracing::error!(runner = %runner.id, job = %id, "finishing a job: {e}"),
        }
    }

    /// `job_result`: stored once, acknowledged every time.
    async fn on_result(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        id: u64,
        r: &JobResult,
    ) -> Result<(), Ending> {
        match self.link.jobs.record_result(&runner.id, r).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(runner = %runner.id, job = %r.job_id, status = %r.status, "job ended");
                    self.link.hub.send(JobUpdate::Status {
                        seq: i64::from(r.channel),
                    });
                    self.link
                        .observer
                        .job_ended(&runner.tenant_id, &runner.id, r);
                }
            }
            Err(e) => {
                // Not acknowledged: the runner sends it again.
                tracing::error!(runner = %runner.id, job = %r.job_id, "storing a job result: {e}");
                return Ok(());
            }
        }
        let ack = Message::JobResultAck(JobRef {
            job_id: r.job_id.clone(),
        });
        wire.send_control(id, ack).await
    }

    /// Start storing the batch, unless a store is running (its end starts
    /// the next one).
    fn start_store(&mut self) {
        let Some(state) = self.state.as_deref_mut() else {
            return;
        };
        if state.store.is_some() || state.stored.is_some() {
            return;
        }
        let batch = state.channels.take_batch();
        if batch.is_empty() {
            return;
        }
        let batch: Batch = batch.into();
        let store = self.link.jobs.clone();
        state.store = Some(tokio::spawn(async move {
            let r = store.store_output(batch.clone()).await;
            (batch, r)
        }));
    }

    /// When a batch is due to be stored; none while a store runs (its end
    /// starts the next, and a past deadline would spin the timer).
    fn store_due(&self) -> Option<Instant> {
        let state = self.state.as_ref()?;
        if state.store.is_some() || state.stored.is_some() {
            return None;
        }
        state.channels.due()
    }
}

#[async_trait]
impl FamilyConn for JobsConn {
    /// `welcome.acks`: where the stored output of each job still producing
    /// ends, so the runner resends from there.
    async fn welcoming(&mut self, runner: &RunnerIdentity, welcome: &mut Welcome) {
        let list = match self.link.jobs.resumable(&runner.id).await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(runner = %runner.id, "reading jobs for the welcome: {e}");
                return;
            }
        };
        for (seq, stored) in list {
            let Ok(channel) = u32::try_from(seq) else {
                continue;
            };
            self.state().channels.learn(channel, seq, stored);
            welcome.acks.push(ChannelAck {
                channel,
                seq: stored.max(0) as u64,
            });
        }
    }

    /// Jobs waiting for this runner.
    async fn welcomed(&mut self, wire: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        self.send_pending(wire, runner).await
    }

    async fn message(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending> {
        match &envelope.body {
            Message::JobResult(r) => self.on_result(wire, runner, envelope.id, r).await,
            _ => Ok(()),
        }
    }

    /// An answer to one of our `job_start`s.
    async fn reply(&mut self, runner: &RunnerIdentity, envelope: &Envelope) -> bool {
        let Some(job_id) = self
            .state
            .as_deref_mut()
            .and_then(|s| s.channels.requests.remove(&envelope.id))
        else {
            return false;
        };
        let seq = self
            .link
            .jobs
            .job(&runner.tenant_id, &job_id)
            .await
            .ok()
            .flatten()
            .map_or(0, |j| j.seq);
        match &envelope.body {
            Message::JobAccepted(a) => {
                if let Err(e) = self
                    .link
                    .jobs
                    .accepted(&job_id, &a.state, clock::now_ms())
                    .await
                {
                    tracing::error!(runner = %runner.id, job = %job_id, "recording acceptance: {e}");
                }
                self.link.hub.send(JobUpdate::Status { seq });
            }
            Message::Error(e) => {
                let why = format!("refused by the runner: {}: {}", e.code, e.message);
                self.finish(runner, &job_id, seq, "failed", &why).await;
                // A host's refusal (a signature it did not accept) is an
                // event of the trail, under the runner as actor.
                let action = format!("runner refused job_start: {}", e.code);
                crate::audit::host_event(
                    &self.link.audit,
                    &runner.tenant_id,
                    &runner.id,
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

    /// Jobs were made or cancelled for this runner.
    async fn nudge(&mut self, wire: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        self.send_pending(wire, runner).await
    }

    /// A DATA frame on a job channel.
    async fn frame(
        &mut self,
        _wire: &mut Wire,
        runner: &RunnerIdentity,
        h: FrameHeader,
        payload: Bytes,
    ) -> Result<(), Ending> {
        if h.kind != FrameKind::Data {
            return Ok(());
        }
        if !self.channels().is_some_and(|ch| ch.is_known(h.channel)) {
            let job = self
                .link
                .jobs
                .job_by_seq(&runner.id, i64::from(h.channel))
                .await;
            match job {
                Ok(Some(j)) => self
                    .state()
                    .channels
                    .learn(h.channel, j.seq, j.stored_bytes),
                Ok(None) => {
                    if self.state().channels.stranger(h.channel) {
                        tracing::warn!(runner = %runner.id, channel = h.channel, "output for a job that is not this runner's: ignored");
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(runner = %runner.id, "looking up a job channel: {e}");
                    return Err(Ending::close(
                        1011,
                        "internal server error",
                        "internal error",
                    ));
                }
            }
        }
        let now = Instant::now();
        let channels = &mut self.state().channels;
        match channels.on_data(h.channel, h.seq, h.tag as u8, &payload, now) {
            Err(why) => return Err(Ending::violation(0, why)),
            // Watchers see it at once (they order by offset and skip what
            // they have, so a resend after a failed store is harmless);
            // the runner's ACK waits for the disk.
            Ok(Frame::Queued(seq, row)) => self.link.hub.send(JobUpdate::Output { seq, row }),
            Ok(Frame::Duplicate | Frame::Stranger | Frame::Dropped) => {}
        }
        if self.state().channels.flush_due(now) {
            self.start_store();
        }
        Ok(())
    }

    /// The store task's end: `work` ACKs it.
    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(state) = self.state.as_deref_mut() else {
            return Poll::Pending;
        };
        if state.stored.is_some() {
            return Poll::Ready(());
        }
        let Some(task) = state.store.as_mut() else {
            return Poll::Pending;
        };
        let out = std::task::ready!(std::pin::Pin::new(task).poll(cx));
        state.store = None;
        state.stored = Some(out);
        Poll::Ready(())
    }

    /// A batch is stored: ACK it, and start the next if it is due. A
    /// storage error ends the connection: the runner resends from the last
    /// ACK after it reconnects, so nothing unstored is ever acknowledged
    /// or lost.
    async fn work(&mut self, wire: &mut Wire, runner: &RunnerIdentity) -> Result<(), Ending> {
        let Some(stored) = self.state.as_deref_mut().and_then(|s| s.stored.take()) else {
            return Ok(());
        };
        let (batch, ends) = match stored {
            Ok((batch, Ok(ends))) => (batch, ends),
            Ok((batch, Err(e))) => {
                tracing::error!(runner = %runner.id, "storing job output: {e}");
                self.state().channels.unstored(&batch);
                return Err(Ending::close(
                    1011,
                    "storing job output failed",
                    "internal error",
                ));
            }
            Err(e) => {
                tracing::error!(runner = %runner.id, "job output task: {e}");
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
            self.link.hub.send(JobUpdate::Status { seq });
            let Some(channel) = self.channels().and_then(|ch| ch.channel_of(seq)) else {
                continue;
            };
            let header = FrameHeader {
                kind: FrameKind::Ack,
                tag: StreamTag::None,
                channel,
                seq: end.max(0) as u64,
            };
            wire.send(WsMessage::Binary(encode_frame(header, &[]).into()))
                .await?;
        }
        if self
            .channels()
            .is_some_and(|ch| ch.flush_due(Instant::now()))
        {
            self.start_store();
        }
        Ok(())
    }

    /// When [`tick`](Self::tick) wants to run: a batch to store, a read
    /// to try again.
    fn due(&self) -> Option<Instant> {
        match (self.store_due(), self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Due work: store the batch; check the jobs against storage.
    async fn tick(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        now: Instant,
    ) -> Result<(), Ending> {
        if self.channels().is_some_and(|ch| ch.flush_due(now)) {
            self.start_store();
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
            self.send_pending(wire, runner).await?;
        }
        Ok(())
    }
}
