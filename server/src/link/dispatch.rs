//! Dispatch by family: the connection task decodes frames and hands each
//! runner message to the feature that owns its family (`<feature>/link.rs`);
//! `app/` fills the table ([`Families`]), so the link names no feature.
//!
//! ```text
//!  hello ─▶ attach ─▶ Family::attached (each, in table order) ─▶ a FamilyConn per family
//!  welcome made ─▶ FamilyConn::welcoming (each adds its part: the job acks)
//!  welcome sent ─▶ FamilyConn::welcomed (each)
//!  control message ─▶ families_of(type) ─▶ FamilyConn::message (each, in that order)
//!  reply to a request ─▶ FamilyConn::reply (each, until one owns it) ─▶ the waiting caller, if any
//!  METRICS frame   ─▶ Telemetry's FamilyConn::frame
//!  DATA/END frame  ─▶ family_of_channel(channel) ─▶ FamilyConn::frame
//!                     (terminal channels, job channels, log channels)
//!  outbox: Family request ─▶ FamilyConn::request (sent: the reply goes to the caller)
//!  nudges (a bit per family, never lost) ─▶ FamilyConn::nudge
//!  timer           ─▶ FamilyConn::tick of each whose due() has come
//!  background work ─▶ FamilyConn::poll_work ready ─▶ FamilyConn::work
//!                     (a job output batch stored: ACK it)
//!  connection ends ─▶ FamilyConn::detached (each)
//! ```
//!
//! A family's per-connection state lives in its `FamilyConn` (a trait
//! object: one box per family and connection, so it keeps what only some
//! connections need behind an `Option<Box<…>>` made on first use), which
//! answers the runner through [`Wire`]. `Err(Ending)` from a hook ends the
//! connection. What the API queues for a family (`link/registry.rs`:
//! `Outgoing::Family`, `Registry::nudge`) names the family, not the
//! feature: its payload is a `Box<dyn Any>` only that family's
//! `FamilyConn::request` opens.

use std::any::Any;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::SinkExt;
use tether::protocol::{
    close, encode_control, Envelope, ErrorBody, FrameHeader, Hello, Message, Welcome,
    FIRST_CONNECTION_CHANNEL, TERM_CHANNEL_BIT,
};
use tokio::time::{timeout, Instant};

use crate::db::RunnerIdentity;

/// The families of runner messages the link dispatches (the ones it keeps
/// itself — hello, ping, replies to requests, close — are not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyId {
    /// `metrics_schema`, METRICS frames, `fingerprint`.
    Telemetry,
    /// `docker_state`, `container_snapshot`, `container_event`.
    Containers,
    /// `update_status` (and the offer after the welcome).
    Updates,
    /// `secrets_lost`.
    Deploy,
    /// The hello's proposed labels.
    Fleet,
    /// `term_alive`, frames on terminal channels (the welcome, the end).
    Terminals,
    /// `job_result`, frames on job channels, answers to `job_start`.
    Jobs,
    /// Frames on log channels, answers to `log_open`; it follows
    /// `container_snapshot` and `container_event` (collection).
    Logs,
}

impl FamilyId {
    const ALL: [FamilyId; 8] = [
        FamilyId::Telemetry,
        FamilyId::Containers,
        FamilyId::Updates,
        FamilyId::Deploy,
        FamilyId::Fleet,
        FamilyId::Terminals,
        FamilyId::Jobs,
        FamilyId::Logs,
    ];

    /// Its name in a cluster's nudge notice (`cluster/`).
    pub fn name(self) -> &'static str {
        match self {
            FamilyId::Telemetry => "telemetry",
            FamilyId::Containers => "containers",
            FamilyId::Updates => "updates",
            FamilyId::Deploy => "deploy",
            FamilyId::Fleet => "fleet",
            FamilyId::Terminals => "terminals",
            FamilyId::Jobs => "jobs",
            FamilyId::Logs => "logs",
        }
    }

    pub fn from_name(name: &str) -> Option<FamilyId> {
        FamilyId::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Its bit in a connection's pending nudges (`link/registry.rs`).
    pub fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// The families whose bits are set in `bits`, in table order.
    pub fn of_bits(bits: u32) -> impl Iterator<Item = FamilyId> {
        FamilyId::ALL
            .into_iter()
            .filter(move |f| bits & f.bit() != 0)
    }
}

/// The families a runner-sent control message concerns, in the order they
/// hear it (empty: the link's own, or nobody's). A container's start
/// concerns its own family and the log collection that follows it.
pub fn families_of(message: &Message) -> &'static [FamilyId] {
    match message {
        Message::MetricsSchema(_) | Message::Fingerprint(_) => &[FamilyId::Telemetry],
        Message::DockerState(_) => &[FamilyId::Containers],
        Message::ContainerSnapshot(_) | Message::ContainerEvent(_) => {
            &[FamilyId::Containers, FamilyId::Logs]
        }
        Message::UpdateStatus(_) => &[FamilyId::Updates],
        Message::SecretsLost(_) => &[FamilyId::Deploy],
        Message::TermAlive(_) => &[FamilyId::Terminals],
        Message::JobResult(_) => &[FamilyId::Jobs],
        _ => &[],
    }
}

/// The family of a DATA, END (or a terminal's ACK) frame, by its channel's
/// number space (`docs/protocol.md` 4): terminals have the high bit, job
/// channels are below [`FIRST_CONNECTION_CHANNEL`], log channels between.
pub fn family_of_channel(channel: u32) -> FamilyId {
    if channel & TERM_CHANNEL_BIT != 0 {
        FamilyId::Terminals
    } else if channel < FIRST_CONNECTION_CHANNEL {
        FamilyId::Jobs
    } else {
        FamilyId::Logs
    }
}

/// What [`FamilyConn::request`] did with a request the API queued.
pub enum Answer {
    /// Sent to the runner: its reply (the same id) goes to the caller.
    Sent,
    /// Refused here, without the runner: the caller gets this `error`.
    Refused(ErrorBody),
}

/// How a connection ends.
pub enum Ending {
    /// The runner closed or the connection broke: nothing more to send.
    Gone { health_reason: &'static str },
    /// The server closes: optionally an `error` message, then a close frame.
    Close {
        code: u16,
        reason: String,
        error: Option<ErrorReply>,
        health_reason: &'static str,
    },
}

/// An `error` control message to send before closing.
pub struct ErrorReply {
    pub id: u64,
    pub code: &'static str,
    pub message: String,
}

impl Ending {
    pub fn close(code: u16, reason: impl Into<String>, health_reason: &'static str) -> Ending {
        Ending::Close {
            code,
            reason: reason.into(),
            error: None,
            health_reason,
        }
    }

    /// The server failed (storage): close 1011.
    pub fn internal() -> Ending {
        Ending::close(1011, "internal server error", "internal error")
    }

    /// A protocol violation: `error` then close 4004, both saying what was wrong.
    pub fn violation(id: u64, what: impl Into<String>) -> Ending {
        let what = what.into();
        Ending::Close {
            code: close::PROTOCOL_VIOLATION,
            reason: what.clone(),
            error: Some(ErrorReply {
                id,
                code: "protocol_violation",
                message: what,
            }),
            health_reason: "protocol violation",
        }
    }

    pub fn health_reason(&self) -> &'static str {
        match self {
            Ending::Gone { health_reason } | Ending::Close { health_reason, .. } => health_reason,
        }
    }
}

/// The connection's socket, as hooks answer through it: every send has a
/// timeout, so a runner that stops reading cannot stall its task.
pub struct Wire {
    pub(super) socket: WebSocket,
    pub(super) send_timeout: Duration,
}

impl Wire {
    pub async fn send(&mut self, message: WsMessage) -> Result<(), Ending> {
        match timeout(self.send_timeout, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!("send failed: {e}");
                Err(Ending::Gone {
                    health_reason: "connection lost",
                })
            }
            Err(_) => Err(Ending::Gone {
                health_reason: "runner stopped reading",
            }),
        }
    }

    /// A control message with this id.
    pub async fn send_control(&mut self, id: u64, message: Message) -> Result<(), Ending> {
        self.send(WsMessage::Text(encode_control(id, message).into()))
            .await
    }

    pub async fn flush(&mut self) -> Result<(), Ending> {
        match timeout(self.send_timeout, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::Gone {
                health_reason: "connection lost",
            }),
            Err(_) => Err(Ending::Gone {
                health_reason: "runner stopped reading",
            }),
        }
    }
}

/// A feature's handler of one family, shared by every connection.
#[async_trait]
pub trait Family: Send + Sync {
    /// The runner said hello and is attached: make this connection's state
    /// (before the welcome is sent, so nothing may be sent here).
    async fn attached(
        self: Arc<Self>,
        runner: &RunnerIdentity,
        hello: &Hello,
    ) -> Box<dyn FamilyConn>;
}

/// One family's state on one connection.
#[async_trait]
pub trait FamilyConn: Send {
    /// The welcome is about to be sent: add this family's part (nothing
    /// may be sent yet).
    async fn welcoming(&mut self, _runner: &RunnerIdentity, _welcome: &mut Welcome) {}

    /// The welcome is sent: the first things of this family, if any.
    async fn welcomed(&mut self, _wire: &mut Wire, _runner: &RunnerIdentity) -> Result<(), Ending> {
        Ok(())
    }

    /// A control message of this family.
    async fn message(
        &mut self,
        wire: &mut Wire,
        runner: &RunnerIdentity,
        envelope: &Envelope,
    ) -> Result<(), Ending>;

    /// A reply of the runner (`pong`, `error`, `docker_response`,
    /// `log_opened`, `term_opened`, `job_accepted`): whether it answers a
    /// request of this family's own (the link then asks no other family).
    /// A caller waiting for the id gets it either way.
    async fn reply(&mut self, _runner: &RunnerIdentity, _envelope: &Envelope) -> bool {
        false
    }

    /// A request the API queued for this family (`Registry::family_request`):
    /// `item` is the family's own type; `id` is the request id its reply
    /// must carry.
    async fn request(
        &mut self,
        _wire: &mut Wire,
        _runner: &RunnerIdentity,
        _id: u64,
        _item: Box<dyn Any + Send>,
    ) -> Result<Answer, Ending> {
        Ok(Answer::Refused(ErrorBody {
            code: "internal".into(),
            message: "no handler for this request".into(),
        }))
    }

    /// Something of this family changed for the runner (`Registry::nudge`).
    async fn nudge(&mut self, _wire: &mut Wire, _runner: &RunnerIdentity) -> Result<(), Ending> {
        Ok(())
    }

    /// A binary frame of this family (the payload after the header).
    async fn frame(
        &mut self,
        _wire: &mut Wire,
        _runner: &RunnerIdentity,
        _header: FrameHeader,
        _payload: Bytes,
    ) -> Result<(), Ending> {
        Ok(())
    }

    /// When [`tick`](Self::tick) wants to run, if at all.
    fn due(&self) -> Option<Instant> {
        None
    }

    /// Due work (the connection's one timer reached [`due`](Self::due)).
    async fn tick(
        &mut self,
        _wire: &mut Wire,
        _runner: &RunnerIdentity,
        _now: Instant,
    ) -> Result<(), Ending> {
        Ok(())
    }

    /// Whether background work of this family has finished (a task it
    /// started), registering `cx` to be woken when it does; then the link
    /// calls [`work`](Self::work). Polled on every turn of the connection's
    /// loop: cheap, and `Pending` without work.
    fn poll_work(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }

    /// Finish what [`poll_work`](Self::poll_work) found done.
    async fn work(&mut self, _wire: &mut Wire, _runner: &RunnerIdentity) -> Result<(), Ending> {
        Ok(())
    }

    /// The connection ended (the registry has marked it gone).
    async fn detached(&mut self, _runner: &RunnerIdentity) {}
}

/// The table `app/` fills: which feature handles each family. Families
/// absent from it are ignored (logged as unknown).
#[derive(Clone, Default)]
pub struct Families(Arc<Vec<(FamilyId, Arc<dyn Family>)>>);

impl Families {
    pub fn new(table: Vec<(FamilyId, Arc<dyn Family>)>) -> Families {
        Families(Arc::new(table))
    }

    /// Each family's state for a new connection, in table order.
    pub async fn attach(&self, runner: &RunnerIdentity, hello: &Hello) -> Conns {
        let mut conns = Vec::with_capacity(self.0.len());
        for (id, family) in self.0.iter() {
            conns.push((*id, family.clone().attached(runner, hello).await));
        }
        Conns(conns)
    }
}

/// The families' states of one connection.
#[derive(Default)]
pub struct Conns(Vec<(FamilyId, Box<dyn FamilyConn>)>);

impl Conns {
    pub fn get(&mut self, id: FamilyId) -> Option<&mut (dyn FamilyConn + 'static)> {
        self.0
            .iter_mut()
            .find(|(f, _)| *f == id)
            .map(|(_, c)| c.as_mut())
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn FamilyConn>> {
        self.0.iter_mut().map(|(_, c)| c)
    }

    /// Offer a reply to each family, in table order, until one owns it.
    pub async fn reply(&mut self, runner: &RunnerIdentity, envelope: &Envelope) -> bool {
        for (_, family) in self.0.iter_mut() {
            if family.reply(runner, envelope).await {
                return true;
            }
        }
        false
    }

    /// The first family whose background work is done (its index, for
    /// [`work`](Self::work)).
    pub fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        for (i, (_, family)) in self.0.iter_mut().enumerate() {
            if family.poll_work(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    }

    /// The family at `index` (from [`poll_work`](Self::poll_work)) finishes its work.
    pub async fn work(
        &mut self,
        index: usize,
        wire: &mut Wire,
        runner: &RunnerIdentity,
    ) -> Result<(), Ending> {
        match self.0.get_mut(index) {
            Some((_, family)) => family.work(wire, runner).await,
            None => Ok(()),
        }
    }

    /// The earliest due tick of any family.
    pub fn due(&self) -> Option<Instant> {
        self.0.iter().filter_map(|(_, c)| c.due()).min()
    }
}

/// Log something ignored for forward compatibility: once per kind per
/// process at warn level (a thousand runners of a newer version would
/// otherwise flood the log), later ones at debug.
pub fn note_ignored(what: &str, runner: &str) {
    const MAX_REMEMBERED: usize = 256;
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let first = {
        let mut seen = SEEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        seen.len() < MAX_REMEMBERED && seen.insert(what.to_owned())
    };
    if first {
        tracing::warn!(runner, "ignoring unknown {what} (logged once)");
    } else {
        tracing::debug!(runner, "ignoring unknown {what}");
    }
}
