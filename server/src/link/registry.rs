//! Live runner connections: who is connected right now, and how to reach them.
//!
//! The registry maps a runner id to the one connection task that currently
//! speaks for it (`link/runner_ws.rs`). It owns three things:
//!
//! * **Routing.** [`Registry::request`] sends a control message to a runner
//!   with a fresh request id and waits for the reply carrying that id. The
//!   connection task keeps the pending id → reply map (it sees the replies);
//!   the registry hands it the request through a small bounded channel.
//! * **Lifecycle order.** Attach (hello), detach (connection ended), revoke and
//!   shutdown take the registry lock and update health *inside* it, so a
//!   replaced connection that ends late cannot mark a freshly connected runner
//!   unreachable, and a revoke cannot be undone by a reconnect racing it. Each
//!   attach gets a generation number; detach only counts for the current one.
//! * **Closing.** Replacement (4006), revoke (4002) and shutdown (1001) send a
//!   close order to the connection task, which closes the WebSocket itself.
//!
//! ```text
//!   attach(gen 7) ──▶ live ──detach(7)──▶ gone, health unreachable
//!                      │
//!                      ├─ attach(gen 8) ─▶ close order 4006 to gen 7;
//!                      │                   detach(7) later is a no-op
//!                      ├─ revoke ────────▶ health revoked, close order 4002
//!                      └─ close_all ─────▶ close order 1001 (health untouched:
//!                                          the next start says "server restarted")
//! ```
//!
//! Lock order: the lifecycle lock (async: it is held across the health
//! write), then storage (inside the [`HealthRecorder`]); the map's own lock is only
//! ever held briefly, never across an await. Attach, detach, revoke and
//! close_all take the lifecycle lock, so the map changes in the same order
//! as the stored health.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tether::protocol::{encode_control, encode_control_checked, Envelope, Message, TooLarge};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::db::{ConnectOutcome, ConnectedInfo, RunnerRow, StorageError};
use axum::http::StatusCode;
use tether::protocol::api_error as code;

use crate::common::error::ApiError;
use crate::link::dispatch::FamilyId;

/// Where the registry records health changes, inside its lifecycle lock:
/// `runners/health.rs` (`HealthLog`: persisted, then broadcast) implements
/// it and `app/` hands it over, so the link does not name the runners
/// feature.
#[async_trait::async_trait]
pub trait HealthRecorder: Send + Sync {
    /// The runner finished its hello on connection `generation`.
    /// `Refused` if it was revoked meanwhile.
    async fn connected(
        &self,
        runner_id: &str,
        generation: u64,
        info: &ConnectedInfo<'_>,
    ) -> Result<ConnectOutcome, StorageError>;
    /// The runner's current connection, `generation`, ended.
    async fn disconnected(
        &self,
        runner_id: &str,
        generation: u64,
        last_seen: i64,
        reason: &str,
    ) -> Result<(), StorageError>;
    /// Revoke a runner of `tenant_id`; `None` if the tenant has no such runner.
    async fn revoked(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<RunnerRow>, StorageError>;
    /// Persist a batch of last-seen times (liveness without a health change).
    async fn record_last_seen(&self, batch: &[(String, i64)]) -> Result<(), StorageError>;
}

/// Where a nudge for a runner not linked here goes: on a replica of
/// several, to the replica that holds it (`app/cluster.rs`, by NOTIFY).
pub trait RemoteNudge: Send + Sync {
    fn nudge(&self, runner_id: &str, family: FamilyId);
}

/// Requests queued for one connection before senders wait. Small on purpose:
/// each connected runner holds one such channel.
const OUTBOX_CAPACITY: usize = 8;

/// An order to close a connection, with the WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseOrder {
    pub code: u16,
    pub reason: &'static str,
}

/// Something for a connection task to send to its runner.
#[derive(Debug)]
pub enum Outgoing {
    /// A control message expecting a reply with the same id.
    Request {
        id: u64,
        text: String,
        reply: oneshot::Sender<Envelope>,
    },
    /// A request of a family's own (`FamilyConn::request`, e.g. a live log
    /// channel: the connection picks its number): what `item` is, only
    /// that family knows; the runner's answer goes to `reply`.
    Family {
        family: FamilyId,
        id: u64,
        item: Box<dyn Any + Send>,
        reply: oneshot::Sender<Envelope>,
    },
    /// A control message that expects no reply (an `update` offer).
    Notify { text: String },
    /// A frame or message sent as it is (a terminal's keystrokes, ACK,
    /// resize or close: `terminals/mod.rs`).
    Terminal(ToRunner),
}

/// A frame or message for a runner, sent as it is (no answer expected).
#[derive(Debug)]
pub enum ToRunner {
    Binary(Vec<u8>),
    Text(String),
}

/// Families of one connection nudged (`FamilyConn::nudge`: jobs to send, a
/// new log collection policy) and not yet told: one bit per family, and a
/// wake-up. Kept apart from the outbox so none is ever lost: a full outbox
/// used to drop it, and every family then looked at the database each
/// minute per runner to make good a nudge it might have missed.
#[derive(Default)]
pub struct Nudges {
    bits: AtomicU32,
    wake: Notify,
}

impl Nudges {
    fn set(&self, family: FamilyId) {
        self.bits.fetch_or(family.bit(), Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// The families nudged since the last call; waits for one. A nudge
    /// set between the two steps leaves a stored wake-up, so none is lost.
    pub async fn wait(&self) -> u32 {
        loop {
            let bits = self.bits.swap(0, Ordering::AcqRel);
            if bits != 0 {
                return bits;
            }
            self.wake.notified().await;
        }
    }
}

/// What a connection task gets when it attaches.
pub struct Session {
    pub generation: u64,
    pub outbox: mpsc::Receiver<Outgoing>,
    pub nudges: Arc<Nudges>,
    pub close: oneshot::Receiver<CloseOrder>,
    /// Unix ms of the last frame, updated by the connection task on every frame
    /// and persisted in batches by [`Registry::flush_last_seen`].
    pub last_seen: Arc<AtomicI64>,
}

#[derive(Debug)]
pub enum AttachError {
    /// Revoked between the credential check and the hello.
    Revoked,
    ShuttingDown,
    Storage(StorageError),
}

#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// No live connection.
    NotConnected,
    /// No answer in time.
    Timeout,
    /// The connection ended before the answer came.
    ConnectionLost,
    /// Larger than a runner takes: not sent (the API answers 413).
    TooLarge(TooLarge),
}

struct Entry {
    generation: u64,
    tenant_id: String,
    outbox: mpsc::Sender<Outgoing>,
    nudges: Arc<Nudges>,
    close: oneshot::Sender<CloseOrder>,
    last_seen: Arc<AtomicI64>,
    persisted_last_seen: i64,
}

impl Entry {
    fn close(self, order: CloseOrder) {
        // The task may be gone already; then there is nothing to close.
        let _ = self.close.send(order);
    }
}

#[derive(Default)]
struct Inner {
    runners: HashMap<String, Entry>,
    shutting_down: bool,
}

pub struct Registry {
    inner: Mutex<Inner>,
    /// Serializes attach, detach, revoke and close_all with their health writes.
    lifecycle: tokio::sync::Mutex<()>,
    health: Arc<dyn HealthRecorder>,
    next_generation: AtomicU64,
    next_request_id: AtomicU64,
    tasks: AtomicUsize,
    tasks_done: Notify,
    /// Set once on a replica of several.
    remote: OnceLock<Arc<dyn RemoteNudge>>,
}

/// Held by every runner connection task, attached or not, so shutdown can wait
/// for all of them to finish closing.
pub struct TaskGuard<'a>(&'a Registry);

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.tasks_done.notify_waiters();
        }
    }
}

impl Registry {
    pub fn new(health: Arc<dyn HealthRecorder>) -> Registry {
        Registry {
            inner: Mutex::new(Inner::default()),
            lifecycle: tokio::sync::Mutex::new(()),
            health,
            next_generation: AtomicU64::new(1),
            next_request_id: AtomicU64::new(1),
            tasks: AtomicUsize::new(0),
            tasks_done: Notify::new(),
            remote: OnceLock::new(),
        }
    }

    /// Nudges for runners not linked here go to `remote` from now on.
    pub fn set_remote(&self, remote: Arc<dyn RemoteNudge>) {
        let _ = self.remote.set(remote);
    }

    /// Whether the runner's link is held by this process.
    pub fn holds(&self, runner_id: &str) -> bool {
        self.lock().runners.contains_key(runner_id)
    }

    /// The generation of the runner's link held by this process, if any.
    pub fn held_generation(&self, runner_id: &str) -> Option<u64> {
        self.lock().runners.get(runner_id).map(|e| e.generation)
    }

    /// How many links this process holds.
    pub fn held_count(&self) -> usize {
        self.lock().runners.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in here can be left half-updated by a panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn task_guard(&self) -> TaskGuard<'_> {
        self.tasks.fetch_add(1, Ordering::AcqRel);
        TaskGuard(self)
    }

    /// Wait until every connection task has finished, or `limit` passed.
    /// Returns how many are still running.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.tasks_done.notified();
            let left = self.tasks.load(Ordering::Acquire);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.tasks.load(Ordering::Acquire);
            }
        }
    }

    /// The runner finished its hello: make this connection the one that speaks
    /// for it (closing an older one with 4006) and mark it active.
    pub async fn attach(
        &self,
        runner_id: &str,
        tenant_id: &str,
        info: &ConnectedInfo<'_>,
        now_ms: i64,
    ) -> Result<Session, AttachError> {
        let _lifecycle = self.lifecycle.lock().await;
        if self.lock().shutting_down {
            return Err(AttachError::ShuttingDown);
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        match self.health.connected(runner_id, generation, info).await {
            Ok(ConnectOutcome::Active(_)) => {}
            Ok(ConnectOutcome::Refused) => return Err(AttachError::Revoked),
            Err(e) => return Err(AttachError::Storage(e)),
        }
        let mut inner = self.lock();
        let (outbox_tx, outbox) = mpsc::channel(OUTBOX_CAPACITY);
        let (close_tx, close) = oneshot::channel();
        let last_seen = Arc::new(AtomicI64::new(now_ms));
        let nudges = Arc::new(Nudges::default());
        let entry = Entry {
            generation,
            tenant_id: tenant_id.to_owned(),
            outbox: outbox_tx,
            nudges: nudges.clone(),
            close: close_tx,
            last_seen: last_seen.clone(),
            persisted_last_seen: now_ms,
        };
        if let Some(old) = inner.runners.insert(runner_id.to_owned(), entry) {
            tracing::info!(
                runner = runner_id,
                "a newer connection replaces the current one"
            );
            old.close(CloseOrder {
                code: tether::protocol::close::REPLACED,
                reason: "replaced by a newer connection",
            });
        }
        Ok(Session {
            generation,
            outbox,
            nudges,
            close,
            last_seen,
        })
    }

    /// A connection ended. If it was still the current one, the runner is now
    /// unreachable for `reason`; a replaced or revoked connection changes nothing.
    pub async fn detach(&self, runner_id: &str, generation: u64, reason: &str) {
        let _lifecycle = self.lifecycle.lock().await;
        let removed = {
            let mut inner = self.lock();
            let current = inner
                .runners
                .get(runner_id)
                .is_some_and(|e| e.generation == generation);
            if !current {
                return;
            }
            inner.runners.remove(runner_id)
        };
        if let Some(entry) = removed {
            let last_seen = entry.last_seen.load(Ordering::Relaxed);
            if let Err(e) = self
                .health
                .disconnected(runner_id, generation, last_seen, reason)
                .await
            {
                tracing::error!(runner = runner_id, "recording disconnect: {e}");
            }
        }
    }

    /// Another replica took the runner, or it was revoked there (`cluster/`):
    /// close connection `generation` if it is still the current one, with
    /// no health write (the other side wrote it), so its detach is a no-op.
    pub async fn fence(&self, runner_id: &str, generation: u64, order: CloseOrder) -> bool {
        let _lifecycle = self.lifecycle.lock().await;
        let mut inner = self.lock();
        let current = inner
            .runners
            .get(runner_id)
            .is_some_and(|e| e.generation == generation);
        if !current {
            return false;
        }
        if let Some(entry) = inner.runners.remove(runner_id) {
            entry.close(order);
        }
        true
    }

    /// Every live connection: (runner, generation).
    pub fn held(&self) -> Vec<(String, u64)> {
        self.lock()
            .runners
            .iter()
            .map(|(id, e)| (id.clone(), e.generation))
            .collect()
    }

    /// Revoke a runner of `tenant_id` and drop its live connection at once.
    /// `None` if the tenant has no such runner.
    pub async fn revoke(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<RunnerRow>, StorageError> {
        let _lifecycle = self.lifecycle.lock().await;
        let Some(row) = self.health.revoked(tenant_id, runner_id).await? else {
            return Ok(None);
        };
        let removed = self.lock().runners.remove(runner_id);
        if let Some(entry) = removed {
            entry.close(CloseOrder {
                code: tether::protocol::close::REVOKED,
                reason: "runner revoked",
            });
        }
        Ok(Some(row))
    }

    /// Close every connection (server shutting down) and refuse new attaches.
    /// Health is left as stored; the next start records "server restarted".
    pub async fn close_all(&self, order: CloseOrder) -> usize {
        let _lifecycle = self.lifecycle.lock().await;
        let mut inner = self.lock();
        inner.shutting_down = true;
        let n = inner.runners.len();
        for (_, entry) in inner.runners.drain() {
            entry.close(order);
        }
        n
    }

    /// The in-memory last-seen time of a connected runner of `tenant_id`.
    pub fn live_last_seen(&self, tenant_id: &str, runner_id: &str) -> Option<i64> {
        let inner = self.lock();
        let entry = inner
            .runners
            .get(runner_id)
            .filter(|e| e.tenant_id == tenant_id)?;
        Some(entry.last_seen.load(Ordering::Relaxed))
    }

    /// Persist the last-seen times that moved since the last flush, in one write.
    pub async fn flush_last_seen(&self) -> Result<usize, StorageError> {
        let batch: Vec<(String, i64)> = {
            let mut inner = self.lock();
            inner
                .runners
                .iter_mut()
                .filter_map(|(id, e)| {
                    let seen = e.last_seen.load(Ordering::Relaxed);
                    (seen > e.persisted_last_seen).then(|| {
                        e.persisted_last_seen = seen;
                        (id.clone(), seen)
                    })
                })
                .collect()
        };
        self.health.record_last_seen(&batch).await?;
        Ok(batch.len())
    }

    fn outbox(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<mpsc::Sender<Outgoing>, RequestError> {
        let inner = self.lock();
        let entry = inner
            .runners
            .get(runner_id)
            .filter(|e| e.tenant_id == tenant_id)
            .ok_or(RequestError::NotConnected)?;
        Ok(entry.outbox.clone())
    }

    /// A request of `family`'s own (`item`, its type) to a runner of
    /// `tenant_id`; wait up to `limit` for the runner's answer (or the
    /// family's, if it answers itself).
    pub async fn family_request(
        &self,
        tenant_id: &str,
        runner_id: &str,
        family: FamilyId,
        item: Box<dyn Any + Send>,
        limit: Duration,
    ) -> Result<Envelope, RequestError> {
        self.send_and_wait(tenant_id, runner_id, limit, |id, reply| Outgoing::Family {
            family,
            id,
            item,
            reply,
        })
        .await
    }

    /// Queue the message `make` builds (with a fresh request id and the
    /// reply slot) for a runner of `tenant_id`, then wait for the reply;
    /// both within `limit`.
    async fn send_and_wait(
        &self,
        tenant_id: &str,
        runner_id: &str,
        limit: Duration,
        make: impl FnOnce(u64, oneshot::Sender<Envelope>) -> Outgoing,
    ) -> Result<Envelope, RequestError> {
        let deadline = tokio::time::Instant::now() + limit;
        let outbox = self.outbox(tenant_id, runner_id)?;
        let id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        match tokio::time::timeout_at(deadline, outbox.send(make(id, reply))).await {
            Err(_) => return Err(RequestError::Timeout),
            Ok(Err(_)) => return Err(RequestError::ConnectionLost),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(RequestError::Timeout),
            Ok(Err(_)) => Err(RequestError::ConnectionLost),
            Ok(Ok(envelope)) => Ok(envelope),
        }
    }

    /// A terminal frame or message for a runner; waits while its
    /// connection's queue is full (backpressure on the client).
    pub async fn send_terminal(
        &self,
        tenant_id: &str,
        runner_id: &str,
        msg: ToRunner,
        limit: Duration,
    ) -> Result<(), RequestError> {
        let outbox = self.outbox(tenant_id, runner_id)?;
        match tokio::time::timeout(limit, outbox.send(Outgoing::Terminal(msg))).await {
            Err(_) => Err(RequestError::Timeout),
            Ok(Err(_)) => Err(RequestError::ConnectionLost),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Tell a connected runner's connection that something of `family`
    /// changed (its jobs, its log collection policy). Not connected:
    /// nothing to do, the family looks on connect. Never lost, however busy
    /// the connection (`Nudges`). On a replica of several, a runner not linked here may be linked to
    /// another replica: the nudge goes there (`set_remote`).
    pub fn nudge(&self, runner_id: &str, family: FamilyId) {
        {
            let inner = self.lock();
            if let Some(entry) = inner.runners.get(runner_id) {
                entry.nudges.set(family);
                return;
            }
        }
        if let Some(remote) = self.remote.get() {
            remote.nudge(runner_id, family);
        }
    }

    /// A nudge that came from another replica: for a runner linked here
    /// only (never sent on again).
    pub fn nudge_local(&self, runner_id: &str, family: FamilyId) {
        let inner = self.lock();
        if let Some(entry) = inner.runners.get(runner_id) {
            entry.nudges.set(family);
        }
    }

    /// The runners of `tenant_id` connected now.
    pub fn connected(&self, tenant_id: &str) -> Vec<String> {
        self.lock()
            .runners
            .iter()
            .filter(|(_, e)| e.tenant_id == tenant_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Queue a message that needs no reply. If the runner's outbox is full
    /// it is dropped: whatever it says is sent again on the next connect.
    pub fn notify(&self, tenant_id: &str, runner_id: &str, text: String) -> bool {
        let inner = self.lock();
        inner
            .runners
            .get(runner_id)
            .filter(|e| e.tenant_id == tenant_id)
            .is_some_and(|e| e.outbox.try_send(Outgoing::Notify { text }).is_ok())
    }

    /// Send `body` to a runner of `tenant_id` as a request and wait up to
    /// `limit` for the reply with the same id.
    pub async fn request(
        &self,
        tenant_id: &str,
        runner_id: &str,
        body: Message,
        limit: Duration,
    ) -> Result<Envelope, RequestError> {
        // Checked with the largest id: the size cannot depend on which id
        // the request gets.
        encode_control_checked(u64::MAX, body.clone()).map_err(RequestError::TooLarge)?;
        self.send_and_wait(tenant_id, runner_id, limit, |id, reply| Outgoing::Request {
            id,
            text: encode_control(id, body),
            reply,
        })
        .await
    }
}

/// How a failed request to a runner reads in the API. Here rather than in
/// `common/error.rs`: the error type is the link's, and common does not
/// know the link.
impl ApiError {
    pub fn runner_request(
        id: &str,
        e: RequestError,
        what: &str,
        limit: std::time::Duration,
    ) -> Self {
        let unreachable = |why: &str| {
            Self::new(
                StatusCode::CONFLICT,
                code::RUNNER_UNREACHABLE,
                format!("runner {id} {why}"),
            )
        };
        match e {
            RequestError::NotConnected => unreachable("has no live connection"),
            RequestError::ConnectionLost => unreachable("disconnected before answering"),
            RequestError::TooLarge(e) => Self::too_large(e),
            RequestError::Timeout => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                code::RUNNER_TIMEOUT,
                format!(
                    "runner {id} did not answer {what} within {} ms",
                    limit.as_millis()
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::dispatch::FamilyId;

    /// Health as the tests want it: every connect accepted, nothing stored.
    struct Accepting;

    #[async_trait::async_trait]
    impl HealthRecorder for Accepting {
        async fn connected(
            &self,
            _: &str,
            _: u64,
            _: &ConnectedInfo<'_>,
        ) -> Result<ConnectOutcome, StorageError> {
            Ok(ConnectOutcome::Active(None))
        }
        async fn disconnected(&self, _: &str, _: u64, _: i64, _: &str) -> Result<(), StorageError> {
            Ok(())
        }
        async fn revoked(&self, _: &str, _: &str) -> Result<Option<RunnerRow>, StorageError> {
            Ok(None)
        }
        async fn record_last_seen(&self, _: &[(String, i64)]) -> Result<(), StorageError> {
            Ok(())
        }
    }

    fn info() -> ConnectedInfo<'static> {
        ConnectedInfo {
            name: "h",
            version: "0",
            arch: "x86_64",
            os: "linux",
            protocol: 1,
        }
    }

    /// A connection too busy to read its outbox used to lose nudges (a
    /// full outbox dropped them); now each family nudged is told once.
    #[tokio::test]
    async fn nudges_to_a_busy_connection_are_kept_and_told_once_per_family() {
        let registry = Registry::new(Arc::new(Accepting));
        let session = registry.attach("r1", "t1", &info(), 0).await.unwrap();
        // Fill the outbox as a busy connection would leave it.
        for _ in 0..OUTBOX_CAPACITY {
            assert!(registry.notify("t1", "r1", "{}".into()));
        }
        assert!(
            !registry.notify("t1", "r1", "{}".into()),
            "the outbox is full"
        );
        for _ in 0..100 {
            registry.nudge("r1", FamilyId::Jobs);
        }
        registry.nudge("r1", FamilyId::Logs);
        let bits = tokio::time::timeout(Duration::from_secs(1), session.nudges.wait())
            .await
            .expect("nudges waiting");
        let told: Vec<FamilyId> = FamilyId::of_bits(bits).collect();
        assert_eq!(told, vec![FamilyId::Jobs, FamilyId::Logs]);
        // Told once: nothing more until the next nudge.
        let again = tokio::time::timeout(Duration::from_millis(100), session.nudges.wait()).await;
        assert!(again.is_err(), "no nudge left: {again:?}");
        // A nudge of a runner not connected here goes nowhere (no remote).
        registry.nudge("r2", FamilyId::Jobs);
        registry.nudge("r1", FamilyId::Jobs);
        let bits = session.nudges.wait().await;
        assert_eq!(
            FamilyId::of_bits(bits).collect::<Vec<_>>(),
            vec![FamilyId::Jobs]
        );
    }
}
