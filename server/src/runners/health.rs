//! Runner health changes: persisted, then announced.
//!
//! Every change of a runner's health (`active`, `unreachable`, `revoked`) goes
//! through [`HealthLog`]: it is written to the runner's history in storage and
//! then sent on a broadcast channel that the SSE endpoint (`runners/events.rs`)
//! subscribes to. Only real changes are recorded; a replacing connection of an
//! already active runner is not one.
//!
//! Callers that must order a change against the live-connection registry
//! (connect, disconnect, revoke) call these methods while holding the
//! registry's lock: the registry reaches them through
//! `link::registry::HealthRecorder`, which `HealthLog` implements (`app/`
//! hands it over); see `link/registry.rs`.
//!
//! Connect, disconnect, revoke and restart go through a
//! [`LinkTable`](crate::cluster::LinkTable): on one server the control
//! store's writes as they are (`cluster::Solo`); on a replica of several,
//! the same writes with the links table, so a replica's late disconnect
//! of a runner another replica took changes nothing (`cluster/`).
//!
//! The alert engine hears health changes on a feed of its own
//! ([`HealthLog::subscribe_alerts`]): on one server every change made here;
//! on a replica of several, every change of the cluster (made here or
//! heard by NOTIFY) but only while this replica holds the once-only lease
//! (`app/serve.rs` sets [`HealthLog::evaluate_alerts_here`]), so a health
//! alert is evaluated, and notified, by one replica:
//!
//! ```text
//!  made here ─────────┬─▶ events (SSE)
//!                     └─▶ alerts, if evaluate_alerts_here
//!  made elsewhere ────┬─▶ remote (SSE)
//!   (NOTIFY)          └─▶ alerts, if evaluate_alerts_here
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::cluster::{LinkTable, Solo};
use crate::common::clock;
use crate::db::{
    ConnectOutcome, ConnectedInfo, ControlStore, HealthRecord, RunnerRow, StorageError,
};
use crate::link::registry::HealthRecorder;

/// Undelivered events per slow SSE subscriber before it skips ahead.
const EVENT_BACKLOG: usize = 1024;

/// The JSON of one health change, in the history and on the SSE stream.
#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    pub runner_id: String,
    pub health: &'static str,
    pub reason: String,
    pub at: String,
}

impl From<&HealthRecord> for HealthView {
    fn from(r: &HealthRecord) -> Self {
        HealthView {
            runner_id: r.runner_id.clone(),
            health: r.health.as_str(),
            reason: r.reason.clone(),
            at: clock::rfc3339(r.at),
        }
    }
}

pub struct HealthLog {
    storage: Arc<dyn ControlStore>,
    events: broadcast::Sender<Arc<HealthRecord>>,
    /// Changes other replicas made (`cluster/`), for the event streams
    /// only; nothing is ever sent on it on a single server.
    remote: broadcast::Sender<Arc<HealthRecord>>,
    /// What the alert engine evaluates (the module doc's drawing).
    alerts: broadcast::Sender<Arc<HealthRecord>>,
    /// Whether this process's alert engine evaluates health: always on one
    /// server; on a replica, while it holds the once-only lease.
    alerts_here: AtomicBool,
    solo: Solo,
    /// Set once at start on a replica of several (`with_links`).
    cluster: OnceLock<Arc<dyn LinkTable>>,
}

impl HealthLog {
    pub fn new(storage: Arc<dyn ControlStore>) -> HealthLog {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let (remote, _) = broadcast::channel(EVENT_BACKLOG);
        let (alerts, _) = broadcast::channel(EVENT_BACKLOG);
        HealthLog {
            alerts,
            alerts_here: AtomicBool::new(true),
            solo: Solo(storage.clone()),
            storage,
            events,
            remote,
            cluster: OnceLock::new(),
        }
    }

    /// Record links in `links` from now on (a replica of several; before
    /// any runner connects). A second call changes nothing.
    pub fn set_links(&self, links: Arc<dyn LinkTable>) {
        let _ = self.cluster.set(links);
    }

    /// This replica's id, on a replica of several.
    pub fn replica_id(&self) -> Option<&str> {
        self.cluster.get().and_then(|l| l.replica_id())
    }

    fn links(&self) -> &dyn LinkTable {
        match self.cluster.get() {
            Some(l) => &**l,
            None => &self.solo,
        }
    }

    /// A change another replica made: for this replica's event streams,
    /// and its alert engine while it holds the once-only lease.
    pub fn announce_remote(&self, record: HealthRecord) {
        let record = Arc::new(record);
        if self.alerts_here.load(Ordering::Relaxed) {
            let _ = self.alerts.send(record.clone());
        }
        let _ = self.remote.send(record);
    }

    /// Whether this process's alert engine hears health changes from now
    /// on (a replica: on while it holds the once-only lease).
    pub fn evaluate_alerts_here(&self, on: bool) {
        self.alerts_here.store(on, Ordering::Relaxed);
    }

    /// Health changes for the alert engine (the module doc's drawing).
    pub fn subscribe_alerts(&self) -> broadcast::Receiver<Arc<HealthRecord>> {
        self.alerts.subscribe()
    }

    /// Changes other replicas made (see `announce_remote`).
    pub fn subscribe_remote(&self) -> broadcast::Receiver<Arc<HealthRecord>> {
        self.remote.subscribe()
    }

    /// Announce changes another part made (a dead replica's runners).
    pub fn announce(&self, records: Vec<HealthRecord>) {
        for r in records {
            self.publish(Some(r));
        }
    }

    /// Changes of every tenant; subscribers filter by tenant.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HealthRecord>> {
        self.events.subscribe()
    }

    fn publish(&self, record: Option<HealthRecord>) {
        if let Some(r) = record {
            tracing::info!(runner = %r.runner_id, health = %r.health.as_str(), reason = %r.reason, "health changed");
            let r = Arc::new(r);
            if self.alerts_here.load(Ordering::Relaxed) {
                let _ = self.alerts.send(r.clone());
            }
            // No subscriber is not an error.
            let _ = self.events.send(r);
        }
    }

    /// The runner finished its hello on connection `generation`.
    /// `Refused` if it was revoked meanwhile.
    pub async fn connected(
        &self,
        runner_id: &str,
        generation: u64,
        info: &ConnectedInfo<'_>,
    ) -> Result<ConnectOutcome, StorageError> {
        let outcome = self
            .links()
            .linked(runner_id, generation, info, "connected", clock::now_ms())
            .await?;
        if let ConnectOutcome::Active(record) = &outcome {
            self.publish(record.clone());
        }
        Ok(outcome)
    }

    /// The runner's current connection, `generation`, ended.
    pub async fn disconnected(
        &self,
        runner_id: &str,
        generation: u64,
        last_seen: i64,
        reason: &str,
    ) -> Result<(), StorageError> {
        let record = self
            .links()
            .unlinked(runner_id, generation, last_seen, reason, clock::now_ms())
            .await?;
        self.publish(record);
        Ok(())
    }

    /// Revoke a runner of `tenant_id`; `None` if the tenant has no such runner.
    pub async fn revoked(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<RunnerRow>, StorageError> {
        let Some((row, record)) = self
            .links()
            .revoke(tenant_id, runner_id, clock::now_ms())
            .await?
        else {
            return Ok(None);
        };
        self.publish(record);
        Ok(Some(row))
    }

    /// Persist a batch of last-seen times (liveness without a health change).
    pub async fn record_last_seen(&self, batch: &[(String, i64)]) -> Result<(), StorageError> {
        self.storage.touch_last_seen(batch).await
    }

    /// At startup: nothing can be connected here yet, so nothing that was
    /// linked here (on one server: nothing at all) is active.
    pub async fn server_restarted(&self) -> Result<usize, StorageError> {
        let records = self
            .links()
            .started("server restarted", clock::now_ms())
            .await?;
        let n = records.len();
        for r in records {
            self.publish(Some(r));
        }
        Ok(n)
    }
}

/// The registry's view of the log: the same calls, for `link/registry.rs`.
#[async_trait::async_trait]
impl HealthRecorder for HealthLog {
    async fn connected(
        &self,
        runner_id: &str,
        generation: u64,
        info: &ConnectedInfo<'_>,
    ) -> Result<ConnectOutcome, StorageError> {
        HealthLog::connected(self, runner_id, generation, info).await
    }

    async fn disconnected(
        &self,
        runner_id: &str,
        generation: u64,
        last_seen: i64,
        reason: &str,
    ) -> Result<(), StorageError> {
        HealthLog::disconnected(self, runner_id, generation, last_seen, reason).await
    }

    async fn revoked(
        &self,
        tenant_id: &str,
        runner_id: &str,
    ) -> Result<Option<RunnerRow>, StorageError> {
        HealthLog::revoked(self, tenant_id, runner_id).await
    }

    async fn record_last_seen(&self, batch: &[(String, i64)]) -> Result<(), StorageError> {
        HealthLog::record_last_seen(self, batch).await
    }
}
