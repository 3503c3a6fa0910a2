//! The link seen from the features: what the connection tells them
//! ([`LinkEvent`]), what they give it to send ([`Outgoing`]), and which
//! feature takes which protocol message ([`Family`]). A message from the
//! server is handed on as decoded (`protocol::Message`), never re-typed:
//! the connection keeps the session's own messages (welcome, ping, error)
//! and passes every other one to the [`Feature`] that owns its family.
//!
//! ```text
//!   server ──▶ conn (session: hello, ping, error) ──▶ LinkEvent::Up/Down ──▶ every feature
//!                                                 └─▶ Message / frame ─▶ family(...) ─▶ its feature
//!   features ──next_message (list order = priority)──▶ conn ──▶ server
//! ```

use crate::protocol::{self, FrameKind, Message as Control};
use crate::reactor::Ctx;
use crate::state::MetricsStatus;
use std::time::Duration;

/// What happened to the link, for the features. Not `Clone`: a message
/// goes to one feature (cloning any `protocol::Message` would pull every
/// message type's clone code into the binary); see [`LinkEvent::to_all`].
#[derive(Debug)]
pub enum LinkEvent {
    /// `welcome` arrived: a new connection. `metrics_ts` is the newest
    /// metrics record the server has stored.
    Up {
        metrics_ts: Option<u64>,
        /// What the server holds of each job channel (`welcome.acks`).
        acks: Vec<protocol::ChannelAck>,
    },
    /// The connection that was up is gone.
    Down,
    /// A request (`id` > 0: answer with [`Outgoing::Reply`]) or notice
    /// from the server, as decoded; only to the feature owning its family.
    Message { id: u64, body: Box<Control> },
    /// An ACK or CREDIT frame for a data channel.
    ChannelAck {
        channel: u32,
        kind: FrameKind,
        seq: u64,
    },
    /// A DATA frame from the server (terminal keystrokes).
    ChannelData {
        channel: u32,
        seq: u64,
        payload: Vec<u8>,
    },
}

/// Who takes a message from the server: the protocol's message families
/// (docs/protocol.md), each owned by one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// metrics_ack, fingerprint_resync.
    Telemetry,
    /// docker_request, log_open, log_close; ACKs of log channels.
    Docker,
    /// job_start, job_cancel, job_result_ack; ACKs of job channels.
    Jobs,
    /// term_open, term_resize, term_close; every DATA frame, terminal ACKs.
    Terminal,
    /// update.
    Update,
}

/// The family of a message from the server; `None` for the session's own
/// messages and for those only a runner sends.
pub fn family(msg: &Control) -> Option<Family> {
    Some(match msg {
        Control::MetricsAck(_) | Control::FingerprintResync(_) => Family::Telemetry,
        Control::DockerRequest(_) | Control::LogOpen(_) | Control::LogClose(_) => Family::Docker,
        Control::JobStart(_) | Control::JobCancel(_) | Control::JobResultAck(_) => Family::Jobs,
        Control::TermOpen(_) | Control::TermResize(_) | Control::TermClose(_) => Family::Terminal,
        Control::Update(_) => Family::Update,
        _ => return None,
    })
}

/// The family of a data-channel frame: terminals take every DATA frame
/// and their own ACKs; job channels and log channels never share a number.
pub fn channel_family(channel: u32, kind: FrameKind) -> Family {
    if kind == FrameKind::Data || channel & protocol::TERM_CHANNEL_BIT != 0 {
        Family::Terminal
    } else if channel < protocol::FIRST_CONNECTION_CHANNEL {
        Family::Jobs
    } else {
        Family::Docker
    }
}

impl LinkEvent {
    /// A copy for each feature if this event goes to all (up, down).
    pub fn to_all(&self) -> Option<LinkEvent> {
        match self {
            LinkEvent::Up { metrics_ts, acks } => Some(LinkEvent::Up {
                metrics_ts: *metrics_ts,
                acks: acks.clone(),
            }),
            LinkEvent::Down => Some(LinkEvent::Down),
            _ => None,
        }
    }

    /// The family this event goes to; `None`: to every feature (up, down).
    pub fn family(&self) -> Option<Family> {
        match self {
            LinkEvent::Up { .. } | LinkEvent::Down => None,
            LinkEvent::Message { body, .. } => family(body),
            LinkEvent::ChannelAck { channel, kind, .. } => Some(channel_family(*channel, *kind)),
            LinkEvent::ChannelData { channel, .. } => {
                Some(channel_family(*channel, FrameKind::Data))
            }
        }
    }
}

/// One message for the server.
#[derive(Debug)]
pub enum Outgoing {
    /// A control message; the connection gives it a request id. Boxed:
    /// a full fingerprint makes `Control` large.
    Control(Box<Control>),
    /// A whole binary frame (header and payload).
    Binary(Vec<u8>),
    /// The answer to a server request: sent with the request's id.
    Reply { id: u64, body: Box<Control> },
}

/// The feed's figures for `status.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedFigures {
    pub records: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub last_sample_ms: Option<u64>,
}

impl FeedFigures {
    pub fn to_status(self) -> MetricsStatus {
        MetricsStatus {
            backlog_records: self.records,
            backlog_bytes: self.bytes,
            dropped: self.dropped,
            last_sample: self
                .last_sample_ms
                .map(|ms| crate::log::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ms))),
        }
    }
}

/// Everything the connection sends besides its own traffic, and where it
/// delivers what happened to the link: the runner's feature list.
pub trait Feed {
    /// Called in order, before the next `next_message`.
    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent);
    /// The next message to send now, if any. Called only while connected
    /// and while the link has room.
    fn next_message(&mut self) -> Option<Outgoing>;
    /// For `status.json`; `None` when there is nothing to show.
    fn figures(&self) -> Option<FeedFigures>;
    /// Terminals open, for `status.json`.
    fn terminals(&self) -> usize {
        0
    }
}

/// A feature of the runner: owns message families and sends its own
/// messages over the link. It is also a [`Source`](crate::reactor::Source)
/// in the loop; the runner lists it under both traits (not a supertrait:
/// each vtable costs the static binary a relocation per entry).
pub trait Feature {
    /// The families whose messages it takes (link up/down go to all).
    fn families(&self) -> &'static [Family];
    /// Before the first turn (first timers, a probe).
    fn start(&mut self, _ctx: &mut Ctx<'_>) {}
    /// Link up/down, and the messages of its families.
    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent);
    /// Its next message for the server, while the link has room.
    fn next_message(&mut self) -> Option<Outgoing>;
    /// It wants the run to end (an update to install): taken once.
    fn take_exit(&mut self) -> Option<Exit> {
        None
    }
}

/// Why `tether run` stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT.
    Shutdown,
    /// The server revoked this runner (403 runner_revoked or close 4002).
    Revoked(String),
    /// Install this version (the connection was closed cleanly first).
    Update(protocol::UpdateOffer),
    /// SIGUSR1: install the release `tether update --file` left in the state dir.
    UpdateFromFile,
    /// A new version on probation did not connect before its deadline.
    Unhealthy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_to_the_family_of_their_channel() {
        let term = protocol::TERM_CHANNEL_BIT | 3;
        assert_eq!(channel_family(term, FrameKind::Ack), Family::Terminal);
        assert_eq!(channel_family(5, FrameKind::Data), Family::Terminal);
        assert_eq!(channel_family(5, FrameKind::Ack), Family::Jobs);
        let log = protocol::FIRST_CONNECTION_CHANNEL + 1;
        assert_eq!(channel_family(log, FrameKind::Credit), Family::Docker);
    }

    #[test]
    fn session_messages_have_no_family() {
        let ping = Control::Ping(protocol::Ping { sent_ms: 1 });
        assert_eq!(family(&ping), None);
        let ack = Control::MetricsAck(protocol::MetricsAck { ts_ms: 1 });
        assert_eq!(family(&ack), Some(Family::Telemetry));
    }
}
