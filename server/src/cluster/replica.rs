//! One replica of several: the links table behind [`LinkTable`], and the
//! tasks that keep this replica's links true to it.
//!
//! ```text
//! heartbeat  every HEARTBEAT: our row's heartbeat; then the reaper: replicas
//!            silent for STALE lose their links (runners unreachable)
//! notices    fence(runner, us, gen) ─▶ holder.fence: close that link (4006,
//!            or 4002 when revoked); "listening again" ─▶ a check now,
//!            and every held runner nudged (nudges sent meanwhile are lost);
//!            a health change of another replica ─▶ this replica's SSE;
//!            nudge(runner, family) ─▶ holder.nudge (jobs made elsewhere)
//! check      every CHECK, the fallback for a lost notice: a link we hold that
//!            the table does not give us (same generation) is closed
//! ```
//!
//! A fenced link is closed without a health write: the replica that took
//! the runner wrote it. Our later detach of it finds no row of ours and
//! changes nothing (`db/postgres/cluster.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

use super::config::ClusterConfig;
use super::LinkTable;
use crate::common::clock;
use crate::db::cluster::{ClusterStore, Notice};
use crate::db::{ConnectOutcome, ConnectedInfo, HealthRecord, RunnerRow, StorageError};

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Silent this long, a replica is taken for dead: its runners become
/// unreachable (honest health) and reconnect elsewhere.
pub const STALE: Duration = Duration::from_secs(10);
/// How often the links held here are checked against the table.
pub const CHECK: Duration = Duration::from_secs(5);

/// The live links of this process, as the cluster sees them.
#[async_trait]
pub trait LinkHolder: Send + Sync + 'static {
    /// Every link held now: (runner, generation).
    fn held(&self) -> Vec<(String, u64)>;
    /// Close link `generation` of `runner_id`, if it is still the current
    /// one here, without recording health. `revoked`: the runner was
    /// revoked (else: another replica took it).
    async fn fence(&self, runner_id: &str, generation: u64, revoked: bool);
    /// Something of `family` changed for `runner_id` on another replica:
    /// tell its connection, if it is held here.
    fn nudge(&self, runner_id: &str, family: &str);
    /// Nudge every family of every runner held here: notices sent while
    /// this replica was not listening are lost, and nothing else would
    /// look before the families' rare periodic checks.
    fn nudge_all(&self);
}

/// Where a replica's tasks put health changes: the ones it made (the
/// reaper's: for everything on this replica, alerts included), and the
/// ones other replicas made (for this replica's event streams only: their
/// alerts fire where they were made).
pub trait HealthSink: Send + Sync + 'static {
    fn made_here(&self, records: Vec<HealthRecord>);
    fn made_elsewhere(&self, record: HealthRecord);
    /// A tenant event another replica published (`common/bus.rs`).
    fn event_elsewhere(&self, event: crate::common::bus::TenantEvent);
}

pub struct Replica {
    id: String,
    internal_addr: String,
    store: Arc<dyn ClusterStore>,
    /// How late the last health notice of another replica arrived (ms
    /// from its change to our hearing it), for the metrics.
    notice_lag_ms: AtomicI64,
}

impl Replica {
    pub fn new(config: &ClusterConfig, store: Arc<dyn ClusterStore>) -> Replica {
        Replica {
            id: config.replica_id.clone(),
            internal_addr: config.internal_addr.clone(),
            store,
            notice_lag_ms: AtomicI64::new(0),
        }
    }

    pub fn store(&self) -> &Arc<dyn ClusterStore> {
        &self.store
    }

    /// Milliseconds between the last health change another replica made
    /// and this replica hearing of it.
    pub fn notice_lag_ms(&self) -> i64 {
        self.notice_lag_ms.load(Ordering::Relaxed)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Run `start()`'s tasks while this replica holds the once-only lease
    /// (`lease.rs`).
    pub fn once_only(
        &self,
        start: impl Fn() -> Vec<JoinHandle<()>> + Send + 'static,
    ) -> JoinHandle<()> {
        super::lease::run_while_held(self.store.clone(), self.id.clone(), start)
    }

    /// A clean shutdown: give the lease up, and the links held here (their
    /// runners reconnect to another replica at once instead of waiting
    /// for the reaper). Returns the health changes.
    pub async fn stopping(&self) -> Vec<HealthRecord> {
        super::lease::release(&*self.store, &self.id).await;
        match self
            .store
            .replica_stopped(&self.id, "replica stopped", clock::now_ms())
            .await
        {
            Ok(changes) => changes,
            Err(e) => {
                tracing::warn!("releasing this replica's links: {e}");
                Vec::new()
            }
        }
    }

    /// Start listening for notices (an error here is a start-up error),
    /// then run the heartbeat, the reaper, the notices and the check.
    pub async fn spawn(
        self: &Arc<Self>,
        holder: Arc<dyn LinkHolder>,
        health: Arc<dyn HealthSink>,
    ) -> Result<Vec<JoinHandle<()>>, StorageError> {
        let mut notices = self.store.listen().await?;
        let heartbeat = {
            let (me, health) = (self.clone(), health.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failing = false;
                loop {
                    tick.tick().await;
                    let now = clock::now_ms();
                    let pass = async {
                        me.store.heartbeat(&me.id, &me.internal_addr, now).await?;
                        let stale = now - STALE.as_millis() as i64;
                        me.store.reap(&me.id, stale, "replica lost", now).await
                    };
                    match pass.await {
                        Ok(changes) => {
                            if failing {
                                tracing::info!("cluster heartbeat: the database answers again");
                            }
                            failing = false;
                            if !changes.is_empty() {
                                health.made_here(changes);
                            }
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!("cluster heartbeat: {e}");
                            }
                            failing = true;
                        }
                    }
                }
            })
        };
        let listener = {
            let (me, holder) = (self.clone(), holder.clone());
            tokio::spawn(async move {
                while let Some(notice) = notices.recv().await {
                    match notice {
                        Notice::Fence(f) if f.replica_id == me.id => {
                            holder.fence(&f.runner_id, f.generation, f.revoked).await;
                        }
                        Notice::Fence(_) => {}
                        Notice::Health { origin, record } if origin != me.id => {
                            let lag = clock::now_ms().saturating_sub(record.at).max(0);
                            me.notice_lag_ms.store(lag, Ordering::Relaxed);
                            health.made_elsewhere(record);
                        }
                        Notice::Nudge { runner_id, family } => holder.nudge(&runner_id, &family),
                        Notice::Event { origin, event } if origin != me.id => {
                            health.event_elsewhere(event);
                        }
                        Notice::Event { .. } => {}
                        Notice::Health { .. } => {}
                        Notice::Listening => {
                            me.check(&*holder).await;
                            holder.nudge_all();
                        }
                    }
                }
            })
        };
        let checker = {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(CHECK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    me.check(&*holder).await;
                }
            })
        };
        Ok(vec![heartbeat, listener, checker])
    }

    /// Close every link held here that the table does not give us.
    async fn check(&self, holder: &dyn LinkHolder) {
        let local = holder.held();
        if local.is_empty() {
            return;
        }
        let ours: HashSet<(String, u64)> = match self.store.links_held(&self.id).await {
            Ok(rows) => rows.into_iter().collect(),
            // The database is away: the links stay as they are until we
            // know better (the heartbeat logs the outage).
            Err(_) => return,
        };
        for (runner, generation) in local {
            if !ours.contains(&(runner.clone(), generation)) {
                tracing::info!(
                    runner = %runner,
                    "the links table no longer gives this replica the runner: closing its link"
                );
                holder.fence(&runner, generation, false).await;
            }
        }
    }
}

#[async_trait]
impl LinkTable for Replica {
    fn replica_id(&self) -> Option<&str> {
        Some(&self.id)
    }

    async fn linked(
        &self,
        runner_id: &str,
        generation: u64,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError> {
        self.store
            .link(&self.id, runner_id, generation, info, reason, now)
            .await
    }

    async fn unlinked(
        &self,
        runner_id: &str,
        generation: u64,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError> {
        self.store
            .unlink(&self.id, runner_id, generation, last_seen, reason, now)
            .await
    }

    async fn revoke(
        &self,
        tenant_id: &str,
        runner_id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError> {
        self.store.revoke(&self.id, tenant_id, runner_id, now).await
    }

    async fn started(&self, reason: &str, now: i64) -> Result<Vec<HealthRecord>, StorageError> {
        self.store
            .replica_started(&self.id, &self.internal_addr, reason, now)
            .await
    }
}
