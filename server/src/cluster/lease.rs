//! Work that must happen once in the cluster (metrics rollups and
//! retention, container log retention, job and audit trail retention, job
//! deadlines, rollouts, the evaluation of health alerts: `app/serve.rs`)
//! runs on the one replica that holds the lease, and moves when that
//! replica dies (a rollout goes on from its stored state:
//! `fleet/rollout.rs`).
//!
//! ```text
//!   every RENEW: take or renew the lease (TTL, the database's clock)
//!     got it   ─▶ start the work if it is not running here
//!     refused  ─▶ another replica has it: stop the work here
//!     error    ─▶ keep going until the last renewal is TTL/2 old, then
//!                 stop (the lease may expire, and another take it)
//!   holder killed ─▶ its lease expires after TTL ─▶ the next renewal
//!                    of another replica takes it (within TTL + RENEW)
//!   clean shutdown ─▶ the lease is given up at once
//! ```
//!
//! A single server does not take a lease: it starts the work at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::db::cluster::ClusterStore;

/// The lease of the once-only work.
pub const ONCE_ONLY: &str = "once-only";
/// How long a lease lasts without renewal.
pub const TTL: Duration = Duration::from_secs(10);
/// How often the holder renews it, and others try to take it.
pub const RENEW: Duration = Duration::from_secs(2);

/// Tasks aborted when dropped (the lease lost, or its loop aborted).
struct Running(Vec<JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Run `start()`'s tasks on this replica while `holder` holds the lease.
pub fn run_while_held(
    store: Arc<dyn ClusterStore>,
    holder: String,
    start: impl Fn() -> Vec<JoinHandle<()>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RENEW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running: Option<Running> = None;
        let mut renewed = Instant::now();
        let ttl_ms = TTL.as_millis() as i64;
        loop {
            tick.tick().await;
            match store.lease(ONCE_ONLY, &holder, ttl_ms).await {
                Ok(true) => {
                    renewed = Instant::now();
                    if running.is_none() {
                        tracing::info!("once-only work: this replica holds the lease");
                        running = Some(Running(start()));
                    }
                }
                Ok(false) => {
                    if running.take().is_some() {
                        tracing::warn!(
                            "once-only work: another replica took the lease; stopped here"
                        );
                    }
                }
                Err(e) => {
                    if running.is_some() && renewed.elapsed() > TTL / 2 {
                        tracing::warn!(
                            "once-only work: cannot renew the lease ({e}); stopped here"
                        );
                        running = None;
                    }
                }
            }
        }
    })
}

/// Give the lease up (a clean shutdown), after the work was stopped.
pub async fn release(store: &dyn ClusterStore, holder: &str) {
    if let Err(e) = store.release_lease(ONCE_ONLY, holder).await {
        tracing::warn!("giving up the once-only lease: {e}");
    }
}
