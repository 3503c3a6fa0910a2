//! ClusterStore: what several replicas sharing one PostgreSQL keep there
//! about each other (issue 18): the replicas (id, internal address,
//! heartbeat) and the table of live links (runner → replica, generation).
//!
//! Only the PostgreSQL backend implements it; the embedded SQLite default
//! is one replica by definition and has no such table (`cluster/` uses
//! its `Solo` there, which costs nothing).
//!
//! A link row is written in the same transaction as the runner's health,
//! under the runner row's lock, so the two never disagree: an attach on
//! replica B replaces A's row and marks the runner active; A's late detach
//! finds a row that is no longer (A, its generation) and changes nothing.
//! The replaced holder hears of it through a notice ([`Fence`], sent with
//! NOTIFY in the same transaction, so it is delivered only if it commits);
//! every health change is sent the same way ([`Notice::Health`]), so the
//! event stream of every replica shows every runner's.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{ConnectOutcome, ConnectedInfo, HealthRecord, RunnerRow, StorageError};

/// One link that its holder must close: another replica took the runner
/// (`revoked: false`), or the runner was revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub runner_id: String,
    /// The replica that held the link, and its generation there.
    pub replica_id: String,
    pub generation: u64,
    pub revoked: bool,
}

/// What a replica hears on its notice connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Fence(Fence),
    /// A health change another replica (`origin`) made, for this
    /// replica's event streams (sent in the transaction that made it).
    Health {
        origin: String,
        record: HealthRecord,
    },
    /// Something of `family` changed for a runner (jobs made or cancelled,
    /// a log collection policy) on a replica that does not hold its link:
    /// the holder tells the connection (`Registry::nudge`).
    Nudge {
        runner_id: String,
        family: String,
    },
    /// A tenant event another replica (`origin`) published, for this
    /// replica's event streams (`common/bus.rs`).
    Event {
        origin: String,
        event: TenantEvent,
    },
    /// The notice connection was (re)established: notices may have been
    /// missed before it, so the holder checks its links against the table.
    Listening,
}

/// One event of a tenant for the event stream (`common/bus.rs`): its SSE
/// `event:` name and JSON data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEvent {
    pub tenant_id: String,
    pub kind: String,
    pub data: String,
}

/// Longest event data a notice carries (NOTIFY takes < 8000 bytes).
pub const MAX_EVENT_DATA: usize = 4096;

/// Longest family name a nudge notice carries (they are short words).
pub const MAX_FAMILY: usize = 32;

#[async_trait]
pub trait ClusterStore: Send + Sync {
    /// Record `replica_id` as starting (its address, a fresh heartbeat),
    /// and drop what an earlier life of it held: runners linked to it (and
    /// active runners linked to no replica at all) become unreachable with
    /// `reason`, their rows go. Returns the health changes.
    async fn replica_started(
        &self,
        replica_id: &str,
        internal_addr: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError>;

    /// The replica is alive at `now` (its row made again if it was reaped).
    async fn heartbeat(
        &self,
        replica_id: &str,
        internal_addr: &str,
        now: i64,
    ) -> Result<(), StorageError>;

    /// The runner's link is now (`replica_id`, `generation`): health
    /// active (as `ControlStore::runner_connected`), and the replaced link,
    /// if any, fenced (a notice to its holder). Refused if revoked.
    async fn link(
        &self,
        replica_id: &str,
        runner_id: &str,
        generation: u64,
        info: &ConnectedInfo<'_>,
        reason: &str,
        now: i64,
    ) -> Result<ConnectOutcome, StorageError>;

    /// The link (`replica_id`, `generation`) ended: if it is still the
    /// runner's link, the row goes and the runner becomes unreachable;
    /// otherwise nothing changes.
    async fn unlink(
        &self,
        replica_id: &str,
        runner_id: &str,
        generation: u64,
        last_seen: i64,
        reason: &str,
        now: i64,
    ) -> Result<Option<HealthRecord>, StorageError>;

    /// Revoke (as `ControlStore::revoke_runner`, through `replica_id`)
    /// and fence its link, if any.
    async fn revoke(
        &self,
        replica_id: &str,
        tenant_id: &str,
        runner_id: &str,
        now: i64,
    ) -> Result<Option<(RunnerRow, Option<HealthRecord>)>, StorageError>;

    /// The links the table says `replica_id` holds: (runner, generation).
    /// The holder's periodic check closes any other it has.
    async fn links_held(&self, replica_id: &str) -> Result<Vec<(String, u64)>, StorageError>;

    /// Replicas other than `replica_id` whose heartbeat is older than
    /// `stale_before`: their runners become unreachable with `reason`,
    /// their link rows and their replica rows go. Returns the changes.
    async fn reap(
        &self,
        replica_id: &str,
        stale_before: i64,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError>;

    /// Take or renew lease `name` for `holder` for `ttl_ms` (the
    /// database's clock, so replicas' clocks need not agree): `true` if
    /// `holder` has it now. Another holder's lease is taken only once it
    /// has expired.
    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool, StorageError>;

    /// Give lease `name` up, if `holder` has it (a clean shutdown: the
    /// next replica need not wait for it to expire).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StorageError>;

    /// The replica holding the runner's link and the address it is
    /// reached at (`cluster/forward.rs`): `None` if no replica holds it.
    async fn holder_of(&self, runner_id: &str) -> Result<Option<(String, String)>, StorageError>;

    /// The replica holding open terminal session `session_id` (its audit
    /// row names it: the session stays there when its runner's link
    /// moves) and its address; `None` if the session is not open or has
    /// no replica.
    async fn terminal_holder(
        &self,
        session_id: &str,
    ) -> Result<Option<(String, String)>, StorageError>;

    /// The replicas other than `except` holding open terminal sessions of
    /// `runner_id`, and their addresses: where a runner that moved here
    /// left its sessions (`terminals/relay.rs`).
    async fn terminal_holders(
        &self,
        runner_id: &str,
        except: &str,
    ) -> Result<Vec<(String, String)>, StorageError>;

    /// Tell every replica that something of `family` changed for
    /// `runner_id` ([`Notice::Nudge`]); only its holder acts on it.
    async fn nudge(&self, runner_id: &str, family: &str) -> Result<(), StorageError>;

    /// A clean stop of `replica_id`: its links go at once (their runners
    /// unreachable with `reason`: they reconnect to another replica
    /// without waiting for the reaper), and so does its replica row.
    async fn replica_stopped(
        &self,
        replica_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Vec<HealthRecord>, StorageError>;

    /// Send a tenant event to every replica ([`Notice::Event`]).
    async fn publish(&self, origin: &str, event: &TenantEvent) -> Result<(), StorageError>;

    /// Connections of the pool in use now, and its most (for the
    /// replica's metrics).
    fn pool_use(&self) -> (usize, usize);

    /// Open a dedicated connection that listens for notices; they arrive
    /// on the receiver (bounded) until it is dropped. A lost connection is
    /// made again (with backoff) and says so with [`Notice::Listening`].
    async fn listen(&self) -> Result<mpsc::Receiver<Notice>, StorageError>;
}
