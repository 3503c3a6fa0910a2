//! Several replicas sharing one PostgreSQL (issue 18): who holds each
//! runner's link, and closing a link another replica took over.
//!
//! ```text
//! config.rs   --replica-id, --internal-addr, --cluster-key: checked once at start
//! internal.rs the internal channel: TLS to a peer, the key's proof, a request
//!             (stream, WebSocket) sent on and its answer streamed back; kept
//!             connections per peer (bounded, dropped on error or when idle);
//!             a replica's own WebSocket to a peer (the terminal relay)
//! lease.rs    once-only work (retention, rollups, deadlines, rollouts, health
//!             alerts) on the replica holding a lease
//! replica.rs  Replica: the links table behind LinkTable, the heartbeat, the
//!             reaper of dead replicas, fence notices and the periodic check
//! ```
//!
//! The rest of the server sees one trait, [`LinkTable`]: the health log
//! (`runners/health.rs`) records every attach, detach, revoke and restart
//! through it. A single server (SQLite, or PostgreSQL without
//! `--replica-id`) uses [`Solo`], which is exactly the health writes of
//! before, one call each: the single-box path pays nothing for the cluster.
//!
//! With `--replica-id`, [`replica::Replica`] writes the link row in the
//! same transaction as the health (`db/cluster.rs`), so a runner is never
//! linked to two replicas and a replaced link's late detach changes
//! nothing:
//!
//! ```text
//!  runner ──▶ replica A: link (A, gen 7), active
//!  runner ──▶ replica B: link (B, gen 3), A's row replaced ──NOTIFY fence(A, 7)──▶ A
//!  A: registry.fence(runner, 7) ─▶ close 4006; A's detach(7) later: no row (A, 7), no change
//!  A dies (no heartbeat for STALE): another replica's reaper marks A's runners
//!     unreachable and drops A's rows; they come back active where they reconnect
//! ```
//!
//! Health changes also travel by NOTIFY to every replica's SSE, and so do
//! nudges (jobs made or cancelled, a log policy changed, for a runner
//! another replica holds). A request for a runner linked to another
//! replica is sent there over the internal channel (`internal.rs`; which
//! requests: `app/forward.rs`) and answered as if it were local, streams
//! and terminal WebSockets included:
//!
//! ```text
//!  client ─▶ B: /api/v1/runners/rn_1/terminal   (rn_1 linked to A)
//!  B: authorise the caller; runner_links: rn_1 ─▶ A (its --internal-addr)
//!  B ──TLS, key proof──▶ A's internal listener ─▶ the same routes on A ─▶ runner
//!  answer / SSE / NDJSON streamed back; a WebSocket spliced both ways
//! ```
//!
//! A terminal session stays on the replica that opened it; requests by its
//! id go there (its audit row names it). When its runner relinks to another
//! replica, that one relays the session's runner-side frames to it over the
//! same channel (`terminals/relay.rs`, `Peers::websocket`):
//!
//! ```text
//!  runner ─▶ B: term_alive [c1]; B has no session c1
//!  B: open sessions of the runner elsewhere ─▶ A ──WSS, key proof──▶ A's internal
//!     /internal/v1/terminal-relay: A checks B holds the runner's link (else 409)
//!  runner ⇄ B ⇄ A: DATA, END, ACK, term_resize, term_close of c1
//!  A dies ─▶ reaped (its rows closed) ─▶ B hangs c1 up on the runner
//! ```

pub mod config;
pub mod internal;
pub mod lease;
pub mod replica;

use std::sync::Arc;

use async_trait::async_trait;

use crate::db::{
    ConnectOutcome, ConnectedInfo, ControlStore, HealthRecord, RunnerRow, StorageError,
};

/// Every change of who holds a runner's link, with its health write.
#[async_trait]
pub trait LinkTable: Send + Sync {
    /// This replica's id, if it is one of several.
    fn replica_id(&self) -> Option<&str>;

    /// The runner finished its hello on this replica's connection
    /// `generation`: it is active, linked here.
    async fn linked(
        &self,
        runner_id: &str,
        generation: u64,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError>;

    /// That connection ended: unreachable, unless it no longer held the link.
    async fn unlinked(
        &self,
        runner_id: &str,
        generation: u64,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError>;

    /// Revoke a runner of `tenant_id` (its link, wherever it is, is closed).
    async fn revoke(
        &self,
        tenant_id: &str,
        runner_id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError>;

    /// At start: nothing is linked here yet, so what was is unreachable.
    async fn started(&self, reason: &str, now: i64) -> Result<Vec<HealthRecord>, StorageError>;
}

/// One server: the health writes of the control store, as they were.
pub struct Solo(pub Arc<dyn ControlStore>);

#[async_trait]
impl LinkTable for Solo {
    fn replica_id(&self) -> Option<&str> {
        None
    }

    async fn linked(
        &self,
        runner_id: &str,
        _generation: u64,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError> {
        self.0.runner_connected(runner_id, info, reason, now).await
    }

    async fn unlinked(
        &self,
        runner_id: &str,
        _generation: u64,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError> {
        self.0
            .runner_disconnected(runner_id, last_seen, reason, now)
            .await
    }

    async fn revoke(
        &self,
        tenant_id: &str,
        runner_id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError> {
        self.0.revoke_runner(tenant_id, runner_id, now).await
    }

    async fn started(&self, reason: &str, now: i64) -> Result<Vec<HealthRecord>, StorageError> {
        self.0.mark_all_unreachable(reason, now).await
    }
}
