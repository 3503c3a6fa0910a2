//! The control connection: one outbound TLS WebSocket to tether-server,
//! driven by the event loop through readiness events, timers and the DNS
//! waker. Owns the socket, the phase timer, the ping and watchdog timers,
//! the backoff policy and `status.json`.
//!
//! ```text
//!            start
//!              │
//!              ▼          every phase has its own timeout (10 s by default)
//!   ┌──▶ Resolving ─────(DNS helper thread answers via the waker)
//!   │          │
//!   │          ▼
//!   │     Connecting ───(non-blocking connect; next address on failure)
//!   │          │
//!   │          ├──(proxy set)──▶ ProxyHandshake ──(CONNECT, 2xx)──┐
//!   │          ▼                                                  │
//!   │    TlsHandshake ◀───────────────────────────────────────────┘   (skipped for loopback ws://)
//!   │          │
//!   │          ▼
//!   │      Upgrading ───(tungstenite, Authorization: Bearer …)── 403 runner_revoked ──▶ Stopped (exit 9)
//!   │          │
//!   │          ▼
//!   │        Hello ─────(send hello, wait for welcome)
//!   │          │
//!   │          ▼
//!   │      Connected ───(ping every heartbeat; watchdog 3 × heartbeat;
//!   │          │          answer `ping` with `pong`)── close 4002 ──▶ Stopped (exit 9)
//!   │          │
//!   │   any failure, timeout, close, watchdog
//!   │          ▼
//!   └──── Backoff ◀──── Closing (our close frame sent, ≤ 1 s for the reply)
//!
//!   SIGTERM/SIGINT: with a WebSocket up ─▶ Closing(1000 "runner shutting down") ─▶ Stopped (exit 0)
//!                   otherwise            ─▶ Stopped at once
//! ```
//!
//! Everything but the connection's own traffic (terminals, Docker, logs,
//! telemetry) comes from a [`Feed`] that the event loop passes to
//! [`Connection::pump`] once per turn. The connection tells the feed what
//! happened to the link ([`LinkEvent`]: up with the server's `metrics_ts`,
//! down, the server's requests, ACKs and keystroke DATA frames) and takes its
//! messages only while everything written so far has left for the socket,
//! at most [`MAX_FEED_BYTES_PER_PASS`] per turn: a pong or an error waits
//! behind at most one feed message (a METRICS frame is ≤ 32 KiB), never
//! behind a whole backfill.
//!
//! Each phase is a variant of [`Phase`] holding exactly what it needs. The
//! drive functions take the phase by value and return the next one, so a
//! transition cannot leave stale state behind. Mio is edge-triggered: after
//! every transition the new phase is driven at once (the socket may already
//! be ready and no new edge would come), and reads drain to `WouldBlock`
//! with a per-pass cap.

pub mod backoff;
pub mod dns;

use crate::event_loop::{Ctx, Timer, TimerId};
use crate::net::{proxy, tls, transport};
use crate::protocol::{self, close, Decoded, FrameKind, Message as Control};
use crate::rand::{RandomSource, SplitMix64};
use crate::state::MetricsStatus;
use crate::state::{self, RunState, Status};
use crate::telemetry::TelemetryConfig;
use crate::url::Url;
use crate::{debug, error, info, warn};
use backoff::Backoff;
use dns::Resolver;
use mio::net::TcpStream;
use mio::{Interest, Token};
use proxy::{ConnectResponse, Progress, ProxyError};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use transport::{Handshake, Transport};
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message as WsMessage, WebSocket};

/// Messages handled per readiness pass before yielding to other sources.
const MAX_MESSAGES_PER_PASS: usize = 64;
/// Longest reason in an `error` answer to a message this runner refused.
const MAX_REFUSAL: usize = 1024;
/// Bytes read per pass in the proxy phase (the head is at most 16 KiB).
const PROXY_READ_CHUNK: usize = 1024;
/// How long to wait for the server's answer to our close frame.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Watchdog: this many heartbeats without any frame from the server.
pub const WATCHDOG_HEARTBEATS: u32 = 3;
/// Distinct unknown message types/kinds remembered for "log once".
const MAX_REMEMBERED_UNKNOWN: usize = 32;
/// A WebSocket close reason must fit a control frame (125 bytes - 2 for the code).
const MAX_CLOSE_REASON: usize = 123;
/// Feed bytes sent per turn of the loop before other sources get theirs.
pub const MAX_FEED_BYTES_PER_PASS: usize = 64 * 1024;
/// While not connected (no pongs rewrite status.json), feed figures are
/// written at most this often.
const FEED_STATUS_EVERY: Duration = Duration::from_secs(5);

type Ws = WebSocket<Transport<TcpStream>>;
type MidUpgrade = MidHandshake<ClientHandshake<Transport<TcpStream>>>;

/// What `hello` tells the server about this host.
#[derive(Debug, Clone)]
pub struct HelloInfo {
    pub hostname: String,
    pub arch: String,
    pub os: String,
    /// Capabilities the host owner left switched on (`terminal.host`).
    pub capabilities: Vec<String>,
    /// Labels the host owner proposes (`--label`).
    pub labels: Vec<String>,
}

impl HelloInfo {
    pub fn from_host() -> HelloInfo {
        HelloInfo {
            hostname: crate::sys::hostname(),
            // The build's name, which releases use (the kernel's `uname
            // -m` is in the fingerprint).
            arch: crate::sys::RELEASE_ARCH.to_owned(),
            os: std::env::consts::OS.to_owned(),
            capabilities: Vec::new(),
            labels: Vec::new(),
        }
    }
}

/// Everything the connection needs, decided before the loop starts.
#[derive(Clone)]
pub struct ConnConfig {
    /// The server's base URL (`https://…`, or `http://` for loopback).
    pub server: Url,
    pub runner_id: String,
    pub credential: String,
    pub heartbeat: Duration,
    pub proxy: Option<Url>,
    pub tls: Arc<rustls::ClientConfig>,
    /// Timeout of each phase (DNS, TCP, proxy, TLS, upgrade, hello).
    pub phase_timeout: Duration,
    pub hello: HelloInfo,
    /// Where `status.json` goes; `None` writes nothing (tests).
    pub run_dir: Option<PathBuf>,
    /// Metrics and fingerprint (run by the event loop, sent through here).
    pub telemetry: TelemetryConfig,
    /// The Docker engine (run by the event loop, sent through here);
    /// `None` switches the integration off.
    pub docker: Option<crate::docker::client::DockerConfig>,
    /// Jobs (scripts, deployments); `None`: switched off on this host.
    pub jobs: Option<crate::jobs::JobsConfig>,
    /// Self-update settings; `None` ignores `update` offers entirely.
    pub update: Option<crate::update::UpdateConfig>,
    /// Why self-update is off on this host (`TETHER_UPDATE=off`, no keys):
    /// with `update` `None`, each offered version is answered `rejected`
    /// with this reason, so the operator sees why instead of a version
    /// pending forever.
    pub update_off: Option<String>,
    /// This process is a trial run of a new version (see `update`).
    pub update_trial: Option<String>,
    /// A new version on probation: it must connect within this, or the
    /// loop ends with [`Exit::Unhealthy`].
    pub health_deadline: Option<Duration>,
    /// Terminals: what the host owner allows.
    pub terminals: crate::terminal::TerminalConfig,
}

/// What happened to the link, for the [`Feed`].
#[derive(Debug, Clone, PartialEq)]
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
    /// `metrics_ack`: every record up to this time is stored.
    MetricsAck(u64),
    /// `fingerprint_resync`: send the full fingerprint next.
    FingerprintResync,
    /// `docker_request` with this id: answer with [`Outgoing::Reply`].
    DockerRequest {
        id: u64,
        request: Box<protocol::DockerRequest>,
    },
    /// `log_open` with this id: answer with `log_opened` or `error`.
    LogOpen {
        id: u64,
        open: Box<protocol::LogOpen>,
    },
    /// `log_close`: send nothing more on the channel.
    LogClose(u32),
    /// `job_start` with this id: answer with `job_accepted` or `error`.
    JobStart {
        id: u64,
        start: Box<protocol::JobStart>,
    },
    JobCancel(String),
    JobResultAck(String),
    /// An ACK or CREDIT frame for a data channel.
    ChannelAck {
        channel: u32,
        kind: protocol::FrameKind,
        seq: u64,
    },
    /// `update`: the server wants this runner to run another version.
    UpdateOffer(protocol::UpdateOffer),
    /// A DATA frame from the server (terminal keystrokes).
    ChannelData {
        channel: u32,
        seq: u64,
        payload: Vec<u8>,
    },
    /// `term_open` with this id: answer with `term_opened` or `error`.
    TermOpen {
        id: u64,
        open: Box<protocol::TermOpen>,
    },
    TermResize(protocol::TermResize),
    /// `term_close`: hang the terminal up.
    TermClose(u32),
}

/// One message of the feed.
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
    fn to_status(self) -> MetricsStatus {
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

/// The lowest class of traffic (metrics and fingerprints): sent when
/// nothing else is waiting, kept by the feed until the link is up.
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

/// Timers the connection sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnTimer {
    /// Timeout of the current phase, end of a backoff wait, or close wait.
    Phase,
    /// Send a WebSocket Ping.
    Ping,
    /// Check for silence from the server.
    Watchdog,
}

/// Why a connection attempt or a connection ended.
#[derive(Debug)]
pub enum Failure {
    Dns {
        host: String,
        error: io::Error,
    },
    Connect {
        addr: SocketAddr,
        error: io::Error,
    },
    Timeout(&'static str),
    Proxy(ProxyError),
    Tls(rustls::Error),
    Io {
        phase: &'static str,
        error: io::Error,
    },
    /// The upgrade was answered with something other than 101.
    Rejected {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    /// The WebSocket handshake or framing broke.
    WebSocket(String),
    /// The server closed the WebSocket.
    Closed {
        code: u16,
        reason: String,
    },
    /// The TCP connection ended without a close frame.
    Dropped,
    /// The server sent something that breaks the protocol.
    Violation(String),
    /// No frame from the server for this long.
    Watchdog(Duration),
    /// Close 4003: no protocol version in common.
    NoCommonProtocol(String),
    Internal(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Dns { host, error } => write!(f, "cannot resolve {host}: {error}"),
            Failure::Connect { addr, error } => write!(f, "cannot connect to {addr}: {error}"),
            Failure::Timeout(phase) => write!(f, "{phase} timed out"),
            Failure::Proxy(e) => write!(f, "{e}"),
            Failure::Tls(e) => write!(f, "{}", tls::describe(e)),
            Failure::Io { phase, error } => write!(f, "{phase}: {error}"),
            Failure::Rejected {
                status,
                code,
                message,
            } => {
                write!(f, "server refused the connection: HTTP {status}")?;
                if let Some(c) = code {
                    write!(f, " {c}")?;
                }
                if let Some(m) = message {
                    write!(f, " ({m})")?;
                }
                if *status == 401 {
                    write!(f, "; the credential is unknown to the server, re-enroll with `tether enroll` if this persists")?;
                }
                Ok(())
            }
            Failure::WebSocket(e) => write!(f, "websocket error: {e}"),
            Failure::Closed { code, reason } if reason.is_empty() => {
                write!(f, "server closed the connection ({code})")
            }
            Failure::Closed { code, reason } => {
                write!(f, "server closed the connection ({code}: {reason})")
            }
            Failure::Dropped => write!(f, "connection lost (closed without a close frame)"),
            Failure::Violation(d) => write!(f, "protocol violation by the server: {d}"),
            Failure::Watchdog(d) => write!(
                f,
                "no frame from the server for {:.1}s (watchdog)",
                d.as_secs_f64()
            ),
            Failure::NoCommonProtocol(r) => write!(
                f,
                "no protocol version in common with the server ({r}); retrying slowly"
            ),
            Failure::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

/// What the server's close code asks of us (docs/protocol.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// 4002: the runner was revoked; exit with code 9, never retry.
    ExitRevoked,
    /// 4003: back off, keep retrying slowly.
    ReconnectSlowly,
    /// Everything else: reconnect with the normal backoff.
    Reconnect,
}

pub fn close_action(code: u16) -> CloseAction {
    match code {
        close::REVOKED => CloseAction::ExitRevoked,
        close::UNSUPPORTED_PROTOCOL => CloseAction::ReconnectSlowly,
        _ => CloseAction::Reconnect,
    }
}

/// What a non-101 answer to the upgrade means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeRefusal {
    /// 403 with `runner_revoked`: stop for good.
    Revoked(String),
    /// Anything else: back off and retry.
    Other {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
}

/// Read the JSON error body of a refused upgrade. The body is what arrived
/// with the head (tungstenite hands over the bytes it had read); servers
/// send small error answers in one piece.
pub fn classify_refusal(status: u16, body: Option<&[u8]>) -> UpgradeRefusal {
    let err = body
        .and_then(|b| serde_json::from_slice::<protocol::ApiError>(b).ok())
        .map(|e| e.error);
    match err {
        Some(e) if e.code == protocol::api_error::RUNNER_REVOKED => {
            UpgradeRefusal::Revoked(e.message)
        }
        Some(e) => UpgradeRefusal::Other {
            status,
            code: Some(e.code),
            message: Some(e.message),
        },
        None => UpgradeRefusal::Other {
            status,
            code: None,
            message: None,
        },
    }
}

/// The hello this runner sends.
pub fn hello_message(cfg: &ConnConfig) -> Control {
    Control::Hello(protocol::Hello {
        protocol: protocol::SUPPORTED_VERSIONS.to_vec(),
        runner_version: crate::version::version().to_owned(),
        arch: cfg.hello.arch.clone(),
        os: cfg.hello.os.clone(),
        hostname: cfg.hello.hostname.clone(),
        heartbeat_ms: cfg.heartbeat.as_millis() as u64,
        capabilities: cfg.hello.capabilities.clone(),
        // Data channels arrive with jobs; nothing to resume yet.
        open_channels: Vec::new(),
        metrics_interval_ms: cfg.telemetry.metrics_interval_ms(),
        labels: cfg.hello.labels.clone(),
    })
}

/// The answer to a server `ping`.
pub fn pong_for(ping: &protocol::Ping) -> Control {
    Control::Pong(protocol::Pong {
        sent_ms: ping.sent_ms,
        now_ms: crate::log::now_ms(),
        version: crate::version::version().to_owned(),
    })
}

/// What the host owner switched off, for `status.json` (`tether status`).
pub fn switched_off(cfg: &ConnConfig) -> Vec<String> {
    let docker_on = cfg.docker.is_some();
    [
        ("jobs", cfg.jobs.is_none()),
        ("docker", !docker_on),
        ("host terminal", !cfg.terminals.host_enabled),
        (
            "container terminal",
            docker_on && !cfg.terminals.container_enabled,
        ),
        (
            "container control",
            cfg.docker.as_ref().is_some_and(|d| !d.control_enabled),
        ),
    ]
    .into_iter()
    .filter(|(_, off)| *off)
    .map(|(what, _)| what.to_owned())
    .collect()
}

/// The WebSocket limits: bounded messages, frames and write buffer.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Small: control traffic is tiny, and the buffer is allocated up front.
        .read_buffer_size(8 * 1024)
        // Write each message through at once; we flush after every batch anyway.
        .write_buffer_size(0)
        // Backpressure instead of unbounded queueing behind a slow link.
        .max_write_buffer_size(2 * protocol::MAX_WS_MESSAGE)
        // Reads above the control limit: see `protocol::MAX_RUNNER_READ`.
        .max_message_size(Some(protocol::MAX_RUNNER_READ))
        .max_frame_size(Some(protocol::MAX_RUNNER_READ))
}

fn truncate_reason(s: &str) -> String {
    clip(s, MAX_CLOSE_REASON).to_owned()
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// An established WebSocket.
struct Link {
    ws: Ws,
    /// Output is queued that the socket did not take yet: want WRITABLE.
    unflushed: bool,
    /// Last frame of any kind from the server (watchdog).
    last_frame: Instant,
}

impl Link {
    /// Push queued output; `WouldBlock` just means "later".
    fn flush(&mut self) -> Result<(), tungstenite::Error> {
        match self.ws.flush() {
            Ok(()) => {
                self.unflushed = false;
                Ok(())
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.unflushed = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Queue and push one message. A `WouldBlock` means the message is
    /// queued in tungstenite's (bounded) buffer.
    fn send(&mut self, msg: WsMessage) -> Result<(), tungstenite::Error> {
        match self.ws.write(msg) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                self.unflushed = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.flush()
    }

    fn send_control(&mut self, id: u64, body: Control) -> Result<(), tungstenite::Error> {
        self.send(WsMessage::text(protocol::encode_control(id, body)))
    }
}

/// What to do once a close handshake is over (or timed out).
#[derive(Debug)]
enum AfterClose {
    Exit(Exit),
    Reconnect(Failure),
}

/// The connection's phases; each holds exactly what it needs.
enum Phase {
    /// Not started yet.
    Idle,
    Resolving {
        gen: u64,
    },
    Connecting {
        sock: TcpStream,
        addr: SocketAddr,
        rest: Vec<SocketAddr>,
    },
    ProxyHandshake {
        sock: TcpStream,
        request: Vec<u8>,
        written: usize,
        answer: ConnectResponse,
    },
    TlsHandshake {
        transport: Transport<TcpStream>,
    },
    Upgrading {
        mid: MidUpgrade,
    },
    Hello {
        link: Link,
        hello_id: u64,
    },
    Connected {
        link: Link,
    },
    Closing {
        link: Link,
        then: AfterClose,
    },
    Backoff,
    Stopped,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Resolving { .. } => "resolving",
            Phase::Connecting { .. } => "connecting",
            Phase::ProxyHandshake { .. } => "proxy handshake",
            Phase::TlsHandshake { .. } => "TLS handshake",
            Phase::Upgrading { .. } => "websocket upgrade",
            Phase::Hello { .. } => "hello",
            Phase::Connected { .. } => "connected",
            Phase::Closing { .. } => "closing",
            Phase::Backoff => "backing off",
            Phase::Stopped => "stopped",
        }
    }

    fn socket_mut(&mut self) -> Option<&mut TcpStream> {
        match self {
            Phase::Connecting { sock, .. } | Phase::ProxyHandshake { sock, .. } => Some(sock),
            Phase::TlsHandshake { transport } => Some(transport.socket_mut()),
            Phase::Upgrading { mid } => Some(mid.get_mut().get_mut().socket_mut()),
            Phase::Hello { link, .. } | Phase::Connected { link } | Phase::Closing { link, .. } => {
                Some(link.ws.get_mut().socket_mut())
            }
            Phase::Idle | Phase::Resolving { .. } | Phase::Backoff | Phase::Stopped => None,
        }
    }

    /// Readiness this phase waits for. WRITABLE only while output is pending.
    fn interest(&self) -> Option<Interest> {
        let rw = Interest::READABLE | Interest::WRITABLE;
        match self {
            // Connect completion is signalled as writability.
            Phase::Connecting { .. } => Some(rw),
            Phase::ProxyHandshake {
                request, written, ..
            } => Some(if *written < request.len() {
                rw
            } else {
                Interest::READABLE
            }),
            Phase::TlsHandshake { transport } => Some(if transport.wants_write() {
                rw
            } else {
                Interest::READABLE
            }),
            // tungstenite does not expose whether its request is fully
            // written; the upgrade is short and edge-triggered writability
            // fires once per transition, so asking for both cannot spin.
            Phase::Upgrading { .. } => Some(rw),
            Phase::Hello { link, .. } | Phase::Connected { link } | Phase::Closing { link, .. } => {
                let pending = link.unflushed || link.ws.get_ref().wants_write();
                Some(if pending { rw } else { Interest::READABLE })
            }
            Phase::Idle | Phase::Resolving { .. } | Phase::Backoff | Phase::Stopped => None,
        }
    }
}

/// The control connection.
pub struct Connection {
    cfg: ConnConfig,
    phase: Phase,
    backoff: Backoff,
    rng: Box<dyn RandomSource>,
    resolver: Resolver,
    /// Socket registration: token and the interest registered with it.
    token: Option<Token>,
    interest: Option<Interest>,
    phase_timer: Option<TimerId>,
    ping_timer: Option<TimerId>,
    watchdog_timer: Option<TimerId>,
    /// When the current connection reached Connected.
    connected_since: Option<Instant>,
    /// Failed attempts since the last successful connection.
    attempts_failed: u32,
    /// Last failure logged at warn level, so a repeat is logged at debug only.
    last_logged_failure: Option<String>,
    /// The server's `error` message during hello (e.g. unsupported_protocol).
    hello_error: Option<String>,
    unknown_seen: Vec<String>,
    next_request_id: u64,
    /// The read pass hit its cap: drive again before sleeping.
    again: bool,
    exit: Option<Exit>,
    status: Status,
    status_write_failed: bool,
    /// When status.json was last written.
    status_written: Option<Instant>,
    /// For the feed, delivered by the next `pump`.
    link_events: Vec<LinkEvent>,
    /// The feed's figures as last put into `status`.
    feed_figures: Option<FeedFigures>,
}

/// What a drive step decided: stay and wait for readiness, or drive the
/// new phase at once.
enum Step {
    Wait(Phase),
    Again(Phase),
}

impl Connection {
    pub fn new(cfg: ConnConfig, resolver: Resolver) -> Connection {
        Connection::with_rng(cfg, resolver, Box::new(SplitMix64::from_os()))
    }

    pub fn with_rng(cfg: ConnConfig, resolver: Resolver, rng: Box<dyn RandomSource>) -> Connection {
        let status = Status {
            state: RunState::Connecting,
            server: cfg.server.to_string(),
            runner_id: cfg.runner_id.clone(),
            since: crate::log::rfc3339(SystemTime::now()),
            last_heartbeat: None,
            pid: std::process::id(),
            version: crate::version::version().to_owned(),
            last_error: None,
            metrics: None,
            terminals: 0,
            switched_off: switched_off(&cfg),
        };
        Connection {
            cfg,
            phase: Phase::Idle,
            backoff: Backoff::new(),
            rng,
            resolver,
            token: None,
            interest: None,
            phase_timer: None,
            ping_timer: None,
            watchdog_timer: None,
            connected_since: None,
            attempts_failed: 0,
            last_logged_failure: None,
            hello_error: None,
            unknown_seen: Vec::new(),
            next_request_id: 1,
            again: false,
            exit: None,
            status,
            status_write_failed: false,
            status_written: None,
            link_events: Vec::new(),
            feed_figures: None,
        }
    }

    /// Set once the connection has stopped for good.
    pub fn exit(&self) -> Option<&Exit> {
        self.exit.as_ref()
    }

    /// The phase name, for logs and tests.
    pub fn phase_name(&self) -> &'static str {
        self.phase.name()
    }

    /// Whether a read pass stopped at its cap and wants another turn.
    pub fn wants_again(&self) -> bool {
        self.again
    }

    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        info!(
            "conn",
            "connecting to {} as runner {}", self.cfg.server, self.cfg.runner_id
        );
        self.write_status();
        self.begin_attempt(ctx);
        self.sync_interest(ctx);
    }

    /// The DNS waker fired.
    pub fn on_dns(&mut self, ctx: &mut Ctx<'_>) {
        while let Some(answer) = self.resolver.try_recv() {
            let current = matches!(self.phase, Phase::Resolving { gen } if gen == answer.gen);
            if !current {
                debug!("conn", "dropping a late DNS answer (lookup {})", answer.gen);
                continue;
            }
            self.phase = Phase::Idle;
            let next = match answer.result {
                Ok(addrs) => self.connect_first(ctx, addrs, None),
                Err(error) => {
                    let host = self.dial_host().to_owned();
                    self.fail(ctx, Failure::Dns { host, error })
                }
            };
            self.run(ctx, next);
        }
        self.sync_interest(ctx);
    }

    /// Readiness on a socket token.
    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if self.token != Some(token) {
            return; // a socket we already dropped
        }
        self.drive(ctx);
    }

    /// Drive again after a capped pass.
    pub fn on_again(&mut self, ctx: &mut Ctx<'_>) {
        self.again = false;
        self.drive(ctx);
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, timer: ConnTimer) {
        match timer {
            ConnTimer::Phase if self.phase_timer == Some(id) => {
                self.phase_timer = None;
                self.on_phase_timeout(ctx);
            }
            ConnTimer::Ping if self.ping_timer == Some(id) => {
                self.ping_timer = None;
                self.on_ping_timer(ctx);
            }
            ConnTimer::Watchdog if self.watchdog_timer == Some(id) => {
                self.watchdog_timer = None;
                self.on_watchdog(ctx);
            }
            _ => {}
        }
        self.sync_interest(ctx);
    }

    /// SIGTERM/SIGINT: close cleanly if a WebSocket is up, else stop now.
    pub fn shutdown(&mut self, ctx: &mut Ctx<'_>) {
        self.shutdown_with(ctx, Exit::Shutdown, "runner shutting down");
    }

    /// Stop with `exit` (also for an update: the loop ends, `main` installs),
    /// closing cleanly with `reason` if a WebSocket is up.
    pub fn shutdown_with(&mut self, ctx: &mut Ctx<'_>, exit: Exit, reason: &str) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let next = match phase {
            Phase::Hello { link, .. } | Phase::Connected { link } => {
                self.start_close(ctx, link, close::NORMAL, reason, AfterClose::Exit(exit))
            }
            Phase::Closing {
                link,
                then: AfterClose::Reconnect(_),
            } => {
                // Already closing for a reconnect: keep waiting, then exit.
                Step::Wait(Phase::Closing {
                    link,
                    then: AfterClose::Exit(exit),
                })
            }
            other => {
                // Nothing worth a goodbye (or a second signal): stop now.
                self.release(ctx, other);
                Step::Wait(self.stop(ctx, exit))
            }
        };
        self.run(ctx, next);
        self.sync_interest(ctx);
    }

    /// Once per turn of the loop: tell the feed what happened to the link,
    /// then send its messages while the link has room (everything written
    /// so far went to the socket), up to [`MAX_FEED_BYTES_PER_PASS`].
    pub fn pump(&mut self, ctx: &mut Ctx<'_>, feed: &mut dyn Feed) {
        if !self.link_events.is_empty() {
            for event in std::mem::take(&mut self.link_events) {
                feed.on_link(ctx, event);
            }
        }
        self.update_feed_figures(ctx, feed.figures());
        let terminals = u32::try_from(feed.terminals()).unwrap_or(u32::MAX);
        if terminals != self.status.terminals {
            // Rare (an open or an end): written at once, not at the next pong.
            self.status.terminals = terminals;
            self.write_status();
        }
        if !matches!(self.phase, Phase::Connected { .. }) {
            return;
        }
        let Phase::Connected { mut link } = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let mut sent = 0;
        let step = loop {
            if link.unflushed || link.ws.get_ref().wants_write() {
                // The socket will say when it has room (WRITABLE).
                break Step::Wait(Phase::Connected { link });
            }
            if sent >= MAX_FEED_BYTES_PER_PASS {
                // Others get a turn; come back before sleeping.
                self.again = true;
                break Step::Wait(Phase::Connected { link });
            }
            let Some(out) = feed.next_message() else {
                break Step::Wait(Phase::Connected { link });
            };
            let msg = match out {
                Outgoing::Control(body) => {
                    let id = self.request_id();
                    WsMessage::text(protocol::encode_control(id, *body))
                }
                Outgoing::Binary(frame) => WsMessage::binary(frame),
                Outgoing::Reply { id, body } => {
                    WsMessage::text(protocol::encode_control(id, *body))
                }
            };
            sent += msg.len();
            if let Err(e) = link.send(msg) {
                break self.link_ended(ctx, link, LinkStage::Connected, e);
            }
        };
        self.run(ctx, step);
        self.sync_interest(ctx);
    }

    fn update_feed_figures(&mut self, ctx: &mut Ctx<'_>, figures: Option<FeedFigures>) {
        if figures == self.feed_figures {
            return;
        }
        self.feed_figures = figures;
        self.status.metrics = figures.map(FeedFigures::to_status);
        // Connected, every pong rewrites status.json; otherwise now and then.
        let stale = self
            .status_written
            .is_none_or(|at| ctx.now.saturating_duration_since(at) >= FEED_STATUS_EVERY);
        if self.status.state != RunState::Connected && stale {
            self.write_status();
        }
    }

    // ---- driving -------------------------------------------------------

    fn drive(&mut self, ctx: &mut Ctx<'_>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let step = self.step(ctx, phase);
        self.run(ctx, step);
        self.sync_interest(ctx);
    }

    /// Keep driving while a step asks for it; store the final phase.
    fn run(&mut self, ctx: &mut Ctx<'_>, mut step: Step) {
        loop {
            match step {
                Step::Wait(p) => {
                    self.phase = p;
                    return;
                }
                Step::Again(p) => step = self.step(ctx, p),
            }
        }
    }

    fn step(&mut self, ctx: &mut Ctx<'_>, phase: Phase) -> Step {
        match phase {
            Phase::Connecting { sock, addr, rest } => self.drive_connecting(ctx, sock, addr, rest),
            Phase::ProxyHandshake {
                sock,
                request,
                written,
                answer,
            } => self.drive_proxy(ctx, sock, request, written, answer),
            Phase::TlsHandshake { transport } => self.drive_tls(ctx, transport),
            Phase::Upgrading { mid } => self.drive_upgrade(ctx, mid),
            Phase::Hello { link, hello_id } => {
                self.drive_link(ctx, link, LinkStage::Hello { hello_id })
            }
            Phase::Connected { link } => self.drive_link(ctx, link, LinkStage::Connected),
            Phase::Closing { link, then } => self.drive_link(ctx, link, LinkStage::Closing(then)),
            other => Step::Wait(other),
        }
    }

    /// Host the TCP connection goes to: the proxy, or the server.
    fn dial_host(&self) -> &str {
        match &self.cfg.proxy {
            Some(p) => &p.host,
            None => &self.cfg.server.host,
        }
    }

    fn begin_attempt(&mut self, ctx: &mut Ctx<'_>) {
        self.set_state(RunState::Connecting);
        let (host, port) = match &self.cfg.proxy {
            Some(p) => (p.host.clone(), p.port),
            None => (self.cfg.server.host.clone(), self.cfg.server.port),
        };
        match self.resolver.resolve(&host, port) {
            Ok(gen) => {
                self.phase = Phase::Resolving { gen };
                self.arm_phase_timer(ctx, self.cfg.phase_timeout);
            }
            Err(e) => {
                let step = self.fail(
                    ctx,
                    Failure::Internal(format!("cannot start the DNS lookup: {e}")),
                );
                self.run(ctx, step);
            }
        }
    }

    /// Start a non-blocking connect to the first address that accepts one.
    fn connect_first(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut addrs: Vec<SocketAddr>,
        mut last: Option<Failure>,
    ) -> Step {
        while !addrs.is_empty() {
            let addr = addrs.remove(0);
            match TcpStream::connect(addr) {
                Ok(mut sock) => {
                    let token = ctx.token();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = ctx.registry.register(&mut sock, token, interest) {
                        return self.fail(
                            ctx,
                            Failure::Internal(format!("cannot register the socket: {e}")),
                        );
                    }
                    self.token = Some(token);
                    self.interest = Some(interest);
                    self.arm_phase_timer(ctx, self.cfg.phase_timeout);
                    return Step::Wait(Phase::Connecting {
                        sock,
                        addr,
                        rest: addrs,
                    });
                }
                Err(error) => last = Some(Failure::Connect { addr, error }),
            }
        }
        let failure = last.unwrap_or_else(|| Failure::Internal("no address to connect to".into()));
        self.fail(ctx, failure)
    }

    fn drive_connecting(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut sock: TcpStream,
        addr: SocketAddr,
        rest: Vec<SocketAddr>,
    ) -> Step {
        // mio: on writability check SO_ERROR, then peer_addr; NotConnected
        // means "not yet" (spurious wakeup).
        let error = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    return Step::Wait(Phase::Connecting { sock, addr, rest });
                }
                Err(e) => Some(e),
            },
        };
        if let Some(error) = error {
            self.deregister(ctx, &mut sock);
            debug!("conn", "connect to {addr} failed: {error}");
            return self.connect_first(ctx, rest, Some(Failure::Connect { addr, error }));
        }
        let _ = sock.set_nodelay(true);
        debug!("conn", "TCP connected to {addr}");
        match &self.cfg.proxy {
            Some(p) => {
                let auth = p.userinfo.as_ref().map(|(u, pw)| (u.as_str(), pw.as_str()));
                let request = proxy::connect_request(&self.cfg.server.authority(), auth);
                self.arm_phase_timer(ctx, self.cfg.phase_timeout);
                Step::Again(Phase::ProxyHandshake {
                    sock,
                    request,
                    written: 0,
                    answer: ConnectResponse::new(),
                })
            }
            None => self.start_tls(ctx, sock, Vec::new()),
        }
    }

    fn drive_proxy(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut sock: TcpStream,
        request: Vec<u8>,
        mut written: usize,
        mut answer: ConnectResponse,
    ) -> Step {
        while written < request.len() {
            match sock.write(&request[written..]) {
                Ok(0) => return self.fail_with(ctx, sock, Failure::Proxy(ProxyError::Closed)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Wait(Phase::ProxyHandshake {
                        sock,
                        request,
                        written,
                        answer,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return self.fail_with(
                        ctx,
                        sock,
                        Failure::Io {
                            phase: "proxy CONNECT",
                            error,
                        },
                    )
                }
            }
        }
        let mut buf = [0u8; PROXY_READ_CHUNK];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => return self.fail_with(ctx, sock, Failure::Proxy(answer.eof())),
                Ok(n) => match answer.feed(&buf[..n]) {
                    Ok(Progress::NeedMore) => {}
                    Ok(Progress::Established { leftover }) => {
                        debug!(
                            "conn",
                            "proxy tunnel to {} established",
                            self.cfg.server.authority()
                        );
                        return self.start_tls(ctx, sock, leftover);
                    }
                    Err(e) => return self.fail_with(ctx, sock, Failure::Proxy(e)),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Wait(Phase::ProxyHandshake {
                        sock,
                        request,
                        written,
                        answer,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return self.fail_with(
                        ctx,
                        sock,
                        Failure::Io {
                            phase: "proxy CONNECT",
                            error,
                        },
                    )
                }
            }
        }
    }

    /// TCP (or the tunnel) is up: TLS for https, straight to the upgrade for
    /// loopback http.
    fn start_tls(&mut self, ctx: &mut Ctx<'_>, sock: TcpStream, leftover: Vec<u8>) -> Step {
        self.arm_phase_timer(ctx, self.cfg.phase_timeout);
        if !self.cfg.server.scheme.is_secure() {
            if !leftover.is_empty() {
                return self.fail_with(
                    ctx,
                    sock,
                    Failure::Violation("proxy sent data before the request".into()),
                );
            }
            return self.start_upgrade(ctx, Transport::plain(sock));
        }
        let conn = tls::server_name(&self.cfg.server.host)
            .and_then(|name| rustls::ClientConnection::new(self.cfg.tls.clone(), name));
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => return self.fail_with(ctx, sock, Failure::Tls(e)),
        };
        if !leftover.is_empty() {
            let fed = conn.read_tls(&mut &leftover[..]).map(|_| ());
            let processed = fed.and_then(|_| {
                conn.process_new_packets()
                    .map(|_| ())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            });
            if let Err(error) = processed {
                return self.fail_with(ctx, sock, io_failure("TLS handshake", error));
            }
        }
        Step::Again(Phase::TlsHandshake {
            transport: Transport::tls(conn, sock),
        })
    }

    fn drive_tls(&mut self, ctx: &mut Ctx<'_>, mut transport: Transport<TcpStream>) -> Step {
        match transport.handshake() {
            Ok(Handshake::WouldBlock) => Step::Wait(Phase::TlsHandshake { transport }),
            Ok(Handshake::Done) => {
                debug!("conn", "TLS established with {}", self.cfg.server.host);
                self.start_upgrade(ctx, transport)
            }
            Err(error) => {
                let failure = io_failure("TLS handshake", error);
                self.fail_with(ctx, transport.socket_mut(), failure)
            }
        }
    }

    fn start_upgrade(&mut self, ctx: &mut Ctx<'_>, mut transport: Transport<TcpStream>) -> Step {
        use tungstenite::client::IntoClientRequest;
        self.arm_phase_timer(ctx, self.cfg.phase_timeout);
        let url = self
            .cfg
            .server
            .to_websocket()
            .join(protocol::RUNNER_CONNECT_PATH)
            .to_string();
        let request = url.as_str().into_client_request().and_then(|mut req| {
            let bearer = format!("Bearer {}", self.cfg.credential);
            let value = bearer.parse().map_err(tungstenite::Error::from)?;
            req.headers_mut().insert("Authorization", value);
            let ua = concat!("tether/", env!("CARGO_PKG_VERSION"));
            req.headers_mut().insert(
                "User-Agent",
                tungstenite::http::HeaderValue::from_static(ua),
            );
            Ok(req)
        });
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return self.fail_with(
                    ctx,
                    transport.socket_mut(),
                    Failure::Internal(format!("bad upgrade request: {e}")),
                )
            }
        };
        match ClientHandshake::start(transport, request, Some(ws_config())) {
            Ok(mid) => Step::Again(Phase::Upgrading { mid }),
            Err(e) => self.fail(ctx, Failure::WebSocket(e.to_string())),
        }
    }

    fn drive_upgrade(&mut self, ctx: &mut Ctx<'_>, mid: MidUpgrade) -> Step {
        match mid.handshake() {
            Ok((ws, _response)) => self.start_hello(ctx, ws),
            Err(HandshakeError::Interrupted(mid)) => Step::Wait(Phase::Upgrading { mid }),
            Err(HandshakeError::Failure(e)) => {
                // The stream went down with the handshake; its fd is closed.
                self.forget_socket();
                match e {
                    tungstenite::Error::Http(resp) => {
                        let status = resp.status().as_u16();
                        match classify_refusal(status, resp.body().as_deref()) {
                            UpgradeRefusal::Revoked(message) => {
                                error!(
                                    "conn",
                                    "runner revoked: the server refused the credential ({message})"
                                );
                                Step::Wait(self.stop(ctx, Exit::Revoked(message)))
                            }
                            UpgradeRefusal::Other {
                                status,
                                code,
                                message,
                            } => self.fail(
                                ctx,
                                Failure::Rejected {
                                    status,
                                    code,
                                    message,
                                },
                            ),
                        }
                    }
                    tungstenite::Error::Io(error) => {
                        self.fail(ctx, io_failure("websocket upgrade", error))
                    }
                    other => self.fail(ctx, Failure::WebSocket(other.to_string())),
                }
            }
        }
    }

    fn start_hello(&mut self, ctx: &mut Ctx<'_>, ws: Ws) -> Step {
        let mut link = Link {
            ws,
            unflushed: false,
            last_frame: ctx.now,
        };
        let hello_id = self.request_id();
        self.hello_error = None;
        self.arm_phase_timer(ctx, self.cfg.phase_timeout);
        if let Err(e) = link.send_control(hello_id, hello_message(&self.cfg)) {
            return self.link_failed(ctx, link, ws_failure(e));
        }
        debug!("conn", "upgraded; hello sent");
        // The welcome may already sit in tungstenite's buffer: read at once.
        Step::Again(Phase::Hello { link, hello_id })
    }

    fn drive_link(&mut self, ctx: &mut Ctx<'_>, mut link: Link, mut stage: LinkStage) -> Step {
        if let Err(e) = link.flush() {
            return self.link_ended(ctx, link, stage, e);
        }
        for _ in 0..MAX_MESSAGES_PER_PASS {
            match link.ws.read() {
                Ok(msg) => {
                    link.last_frame = ctx.now;
                    match self.on_message(ctx, &mut link, &mut stage, msg) {
                        Flow::Continue => {}
                        Flow::Close { code, reason, then } => {
                            return self.start_close(ctx, link, code, &reason, then)
                        }
                        Flow::Drop(then) => return self.finish_close(ctx, link, then),
                    }
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    // tungstenite may have queued a pong or close reply.
                    if let Err(e) = link.flush() {
                        return self.link_ended(ctx, link, stage, e);
                    }
                    return Step::Wait(stage.into_phase(link));
                }
                Err(e) => return self.link_ended(ctx, link, stage, e),
            }
        }
        // Cap reached: let other sources run, come back before sleeping.
        self.again = true;
        if let Err(e) = link.flush() {
            return self.link_ended(ctx, link, stage, e);
        }
        Step::Wait(stage.into_phase(link))
    }

    fn on_message(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: &mut Link,
        stage: &mut LinkStage,
        msg: WsMessage,
    ) -> Flow {
        if let LinkStage::Closing(_) = stage {
            // Only the close reply matters now.
            if let WsMessage::Close(_) = msg {
                let LinkStage::Closing(then) = std::mem::replace(stage, LinkStage::Connected)
                else {
                    unreachable!()
                };
                return Flow::Drop(then);
            }
            return Flow::Continue;
        }
        match msg {
            WsMessage::Text(text) => self.on_control(ctx, link, stage, text.as_str()),
            WsMessage::Binary(bytes) => self.on_data(link, &bytes),
            WsMessage::Pong(payload) => {
                self.on_pong(&payload);
                Flow::Continue
            }
            // tungstenite queued the Pong; drive_link flushes it.
            WsMessage::Ping(_) | WsMessage::Frame(_) => Flow::Continue,
            WsMessage::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    None => (close::NORMAL, String::new()),
                };
                // Send tungstenite's queued close reply before hanging up.
                let _ = link.flush();
                match close_action(code) {
                    CloseAction::ExitRevoked => {
                        error!(
                            "conn",
                            "runner revoked: the server closed the connection with {code} {reason}"
                        );
                        Flow::Drop(AfterClose::Exit(Exit::Revoked(reason)))
                    }
                    CloseAction::ReconnectSlowly => {
                        let why = self.hello_error.take().unwrap_or(reason);
                        Flow::Drop(AfterClose::Reconnect(Failure::NoCommonProtocol(why)))
                    }
                    CloseAction::Reconnect => {
                        Flow::Drop(AfterClose::Reconnect(Failure::Closed { code, reason }))
                    }
                }
            }
        }
    }

    fn on_control(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: &mut Link,
        stage: &mut LinkStage,
        text: &str,
    ) -> Flow {
        let envelope = match protocol::decode_control(text) {
            Ok(Decoded::Known(env)) => env,
            Ok(Decoded::Unknown { type_name, .. }) => {
                self.note_unknown(format!("message type '{type_name}'"));
                return Flow::Continue;
            }
            Err(e) => return self.undecodable(link, stage, text, e),
        };
        match envelope.body {
            Control::Welcome(w) => {
                let LinkStage::Hello { .. } = stage else {
                    debug!("conn", "ignoring a welcome outside the hello phase");
                    return Flow::Continue;
                };
                if !protocol::SUPPORTED_VERSIONS.contains(&w.protocol) {
                    return self.violation(
                        link,
                        format!(
                            "welcome settled on protocol {} which this runner does not speak",
                            w.protocol
                        ),
                    );
                }
                if w.runner_id != self.cfg.runner_id {
                    warn!(
                        "conn",
                        "server calls this runner {} but credential.json says {}",
                        w.runner_id,
                        self.cfg.runner_id
                    );
                }
                *stage = LinkStage::Connected;
                self.on_connected(ctx, &w);
                Flow::Continue
            }
            Control::Ping(p) => {
                if let Err(e) = link.send_control(envelope.id, pong_for(&p)) {
                    debug!("conn", "cannot answer ping: {e}");
                }
                Flow::Continue
            }
            Control::Error(e) => {
                warn!(
                    "conn",
                    "server reported an error: {}: {}", e.code, e.message
                );
                if let LinkStage::Hello { .. } = stage {
                    self.hello_error = Some(format!("{}: {}", e.code, e.message));
                }
                Flow::Continue
            }
            Control::MetricsAck(a) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::MetricsAck(a.ts_ms));
                }
                Flow::Continue
            }
            Control::FingerprintResync(_) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::FingerprintResync);
                }
                Flow::Continue
            }
            Control::DockerRequest(r) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::DockerRequest {
                        id: envelope.id,
                        request: Box::new(r),
                    });
                }
                Flow::Continue
            }
            Control::LogOpen(open) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::LogOpen {
                        id: envelope.id,
                        open: Box::new(open),
                    });
                }
                Flow::Continue
            }
            Control::LogClose(c) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::LogClose(c.channel));
                }
                Flow::Continue
            }
            Control::JobStart(start) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::JobStart {
                        id: envelope.id,
                        start: Box::new(start),
                    });
                }
                Flow::Continue
            }
            Control::TermOpen(open) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::TermOpen {
                        id: envelope.id,
                        open: Box::new(open),
                    });
                }
                Flow::Continue
            }
            Control::JobCancel(r) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::JobCancel(r.job_id));
                }
                Flow::Continue
            }
            Control::JobResultAck(r) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::JobResultAck(r.job_id));
                }
                Flow::Continue
            }
            Control::Update(offer) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::UpdateOffer(offer));
                }
                Flow::Continue
            }
            Control::TermResize(r) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::TermResize(r));
                }
                Flow::Continue
            }
            Control::TermClose(c) => {
                if let LinkStage::Connected = stage {
                    self.push_link_event(LinkEvent::TermClose(c.channel));
                }
                Flow::Continue
            }
            Control::Pong(_)
            | Control::JobAccepted(_)
            | Control::JobResult(_)
            | Control::TermOpened(_)
            | Control::TermAlive(_)
            | Control::SecretsLost(_)
            | Control::LogOpened(_)
            | Control::UpdateStatus(_)
            | Control::DockerState(_)
            | Control::DockerResponse(_)
            | Control::ContainerEvent(_)
            | Control::ContainerSnapshot(_)
            | Control::Hello(_)
            | Control::MetricsSchema(_)
            | Control::Fingerprint(_) => {
                debug!(
                    "conn",
                    "ignoring an unexpected '{}' message",
                    envelope.body.type_name()
                );
                Flow::Continue
            }
        }
    }

    fn on_data(&mut self, link: &mut Link, bytes: &[u8]) -> Flow {
        match protocol::decode_frame(bytes) {
            Ok((header, _)) if matches!(header.kind, FrameKind::Ack | FrameKind::Credit) => {
                // For a channel that is gone this is ignored downstream.
                self.push_link_event(LinkEvent::ChannelAck {
                    channel: header.channel,
                    kind: header.kind,
                    seq: header.seq,
                });
                Flow::Continue
            }
            Ok((header, payload)) if header.kind == FrameKind::Data => {
                // Keystrokes for a terminal; ignored downstream if unknown.
                self.push_link_event(LinkEvent::ChannelData {
                    channel: header.channel,
                    seq: header.seq,
                    payload: payload.to_vec(),
                });
                Flow::Continue
            }
            Ok((header, payload)) => {
                debug!(
                    "conn",
                    "ignoring a {:?} frame for channel {} ({} bytes)",
                    header.kind,
                    header.channel,
                    payload.len()
                );
                Flow::Continue
            }
            Err(protocol::FrameError::UnknownKind(k)) => {
                self.note_unknown(format!("binary frame kind {k}"));
                Flow::Continue
            }
            Err(e) => self.violation(link, e.to_string()),
        }
    }

    /// A control message this runner cannot take. Once connected, one that
    /// is too large or has bad fields is refused for its request id and the
    /// link stays: closing would only bring the same message again after
    /// the reconnect (the server resends what it thinks was not received),
    /// and the health would flap. What is not JSON at all, or anything
    /// before the welcome, is a protocol violation.
    fn undecodable(
        &mut self,
        link: &mut Link,
        stage: &LinkStage,
        text: &str,
        e: protocol::DecodeError,
    ) -> Flow {
        let code = match &e {
            protocol::DecodeError::TooLarge(_) => protocol::TOO_LARGE,
            protocol::DecodeError::BadFields { .. } => protocol::api_error::BAD_REQUEST,
            protocol::DecodeError::Malformed(_) => return self.violation(link, e.to_string()),
        };
        if !matches!(stage, LinkStage::Connected) {
            return self.violation(link, e.to_string());
        }
        match protocol::request_id(text).filter(|&id| id != 0) {
            Some(id) => {
                // serde quotes the offending value: keep the answer small.
                let why = clip(&e.to_string(), MAX_REFUSAL).to_owned();
                warn!("conn", "refusing request {id} from the server: {why}");
                let body = Control::Error(protocol::ErrorBody {
                    code: code.into(),
                    message: format!("the runner cannot take this message: {why}"),
                });
                if let Err(err) = link.send_control(id, body) {
                    debug!("conn", "cannot answer request {id}: {err}");
                }
            }
            // A notice (id 0) has nobody to answer: it is dropped.
            None => warn!(
                "conn",
                "ignoring a message from the server: {}",
                clip(&e.to_string(), MAX_REFUSAL)
            ),
        }
        Flow::Continue
    }

    /// Tell the server what was wrong, then close with 4004 and reconnect.
    fn violation(&mut self, link: &mut Link, detail: String) -> Flow {
        warn!("conn", "protocol violation by the server: {detail}");
        let body = Control::Error(protocol::ErrorBody {
            code: "protocol_violation".into(),
            message: detail.clone(),
        });
        let id = self.request_id();
        let _ = link.send_control(id, body);
        Flow::Close {
            code: close::PROTOCOL_VIOLATION,
            reason: truncate_reason(&detail),
            then: AfterClose::Reconnect(Failure::Violation(detail)),
        }
    }

    fn note_unknown(&mut self, what: String) {
        if self.unknown_seen.contains(&what) {
            return;
        }
        if self.unknown_seen.len() < MAX_REMEMBERED_UNKNOWN {
            info!(
                "conn",
                "ignoring {what} from the server (newer server?); logged once"
            );
            self.unknown_seen.push(what);
        } else {
            debug!("conn", "ignoring {what} from the server");
        }
    }

    fn on_connected(&mut self, ctx: &mut Ctx<'_>, w: &protocol::Welcome) {
        self.cancel_phase_timer(ctx);
        self.connected_since = Some(ctx.now);
        let after = match self.attempts_failed {
            0 => String::new(),
            n => format!(" after {n} failed attempt{}", if n == 1 { "" } else { "s" }),
        };
        info!(
            "conn",
            "connected to {} as {} (protocol {}, server {}){after}",
            self.cfg.server,
            w.runner_id,
            w.protocol,
            w.server_version
        );
        self.attempts_failed = 0;
        self.last_logged_failure = None;
        self.status.last_error = None;
        self.set_state(RunState::Connected);
        self.schedule_ping(ctx);
        self.schedule_watchdog(ctx, ctx.now);
        self.push_link_event(LinkEvent::Up {
            metrics_ts: w.metrics_ts,
            acks: w.acks.clone(),
        });
    }

    /// Queue a link event for the feed; consecutive acks collapse into one.
    fn push_link_event(&mut self, event: LinkEvent) {
        if let (Some(LinkEvent::MetricsAck(prev)), LinkEvent::MetricsAck(ts)) =
            (self.link_events.last_mut(), &event)
        {
            *prev = (*prev).max(*ts);
            return;
        }
        self.link_events.push(event);
    }

    fn on_pong(&mut self, payload: &[u8]) {
        if let Ok(bytes) = <[u8; 8]>::try_from(payload) {
            let sent = u64::from_be_bytes(bytes);
            debug!(
                "conn",
                "pong after {} ms",
                crate::log::now_ms().saturating_sub(sent)
            );
        }
        self.status.last_heartbeat = Some(crate::log::rfc3339(SystemTime::now()));
        self.write_status();
    }

    fn on_ping_timer(&mut self, ctx: &mut Ctx<'_>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let Phase::Connected { mut link } = phase else {
            self.phase = phase;
            return;
        };
        let payload = crate::log::now_ms().to_be_bytes().to_vec();
        let step = match link.send(WsMessage::Ping(payload.into())) {
            Ok(()) => {
                self.schedule_ping(ctx);
                Step::Wait(Phase::Connected { link })
            }
            Err(e) => self.link_ended(ctx, link, LinkStage::Connected, e),
        };
        self.run(ctx, step);
    }

    fn on_watchdog(&mut self, ctx: &mut Ctx<'_>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let Phase::Connected { link } = phase else {
            self.phase = phase;
            return;
        };
        let silent = ctx.now.saturating_duration_since(link.last_frame);
        let limit = self.watchdog_limit();
        let step = if silent >= limit {
            warn!(
                "conn",
                "no frame from the server for {:.1}s; closing (watchdog)",
                silent.as_secs_f64()
            );
            self.start_close(
                ctx,
                link,
                close::WATCHDOG,
                "watchdog: silence too long",
                AfterClose::Reconnect(Failure::Watchdog(silent)),
            )
        } else {
            let last = link.last_frame;
            self.schedule_watchdog(ctx, last);
            Step::Wait(Phase::Connected { link })
        };
        self.run(ctx, step);
    }

    fn on_phase_timeout(&mut self, ctx: &mut Ctx<'_>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let step = match phase {
            Phase::Backoff => {
                self.begin_attempt(ctx);
                return;
            }
            Phase::Resolving { .. } => self.fail(ctx, Failure::Timeout("DNS lookup")),
            Phase::Connecting {
                mut sock,
                addr,
                rest,
            } => {
                self.deregister(ctx, &mut sock);
                drop(sock);
                let error = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                if rest.is_empty() {
                    self.fail(ctx, Failure::Timeout("TCP connect"))
                } else {
                    self.connect_first(ctx, rest, Some(Failure::Connect { addr, error }))
                }
            }
            Phase::ProxyHandshake { sock, .. } => {
                self.fail_with(ctx, sock, Failure::Timeout("proxy CONNECT"))
            }
            Phase::TlsHandshake { mut transport } => self.fail_with(
                ctx,
                transport.socket_mut(),
                Failure::Timeout("TLS handshake"),
            ),
            Phase::Upgrading { mut mid } => {
                let sock = mid.get_mut().get_mut().socket_mut();
                self.fail_with(ctx, sock, Failure::Timeout("websocket upgrade"))
            }
            Phase::Hello { link, .. } => {
                self.link_failed(ctx, link, Failure::Timeout("hello/welcome"))
            }
            Phase::Closing { link, then } => {
                debug!(
                    "conn",
                    "no close reply within {CLOSE_WAIT:?}; dropping the connection"
                );
                self.finish_close(ctx, link, then)
            }
            other => Step::Wait(other),
        };
        self.run(ctx, step);
    }

    // ---- endings -------------------------------------------------------

    /// Send a close frame and wait (≤ CLOSE_WAIT) for the reply.
    fn start_close(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut link: Link,
        code: u16,
        reason: &str,
        then: AfterClose,
    ) -> Step {
        self.cancel_link_timers(ctx);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: truncate_reason(reason).into(),
        };
        match link.ws.close(Some(frame)) {
            Ok(()) => link.unflushed = false,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                link.unflushed = true
            }
            Err(e) => {
                debug!("conn", "cannot send close frame: {e}");
                return self.finish_close(ctx, link, then);
            }
        }
        self.arm_phase_timer(ctx, CLOSE_WAIT);
        Step::Again(Phase::Closing { link, then })
    }

    /// The link is over: say goodbye to TLS, drop the socket, then exit or
    /// back off.
    fn finish_close(&mut self, ctx: &mut Ctx<'_>, mut link: Link, then: AfterClose) -> Step {
        link.ws.get_mut().close_notify();
        let _ = link.ws.get_mut().flush();
        self.drop_link(ctx, link);
        match then {
            AfterClose::Exit(exit) => Step::Wait(self.stop(ctx, exit)),
            AfterClose::Reconnect(failure) => self.fail(ctx, failure),
        }
    }

    /// A read, write or flush on the link failed.
    fn link_ended(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: Link,
        stage: LinkStage,
        e: tungstenite::Error,
    ) -> Step {
        match stage {
            LinkStage::Closing(then) => self.finish_close(ctx, link, then),
            _ if matches!(e, tungstenite::Error::Capacity(_)) => {
                // A frame above MAX_RUNNER_READ: tungstenite stopped after
                // its header, so the rest of the stream cannot be read as
                // frames any more (reading on trips an assertion in its
                // debug builds). Say why, write-only, and drop the link
                // without waiting for a close reply.
                let failure = ws_failure(e);
                let frame = CloseFrame {
                    code: CloseCode::from(close::TOO_BIG),
                    reason: truncate_reason(&failure.to_string()).into(),
                };
                let mut link = link;
                if link.ws.close(Some(frame)).is_ok() {
                    let _ = link.flush();
                }
                warn!("conn", "closing the connection: {failure}");
                self.link_failed(ctx, link, failure)
            }
            _ => {
                let failure = ws_failure(e);
                if let Failure::WebSocket(_) | Failure::Violation(_) = failure {
                    // Broken framing from the server: tell it, then reconnect.
                    let code = close::PROTOCOL_VIOLATION;
                    let reason = failure.to_string();
                    return self.start_close(
                        ctx,
                        link,
                        code,
                        &reason,
                        AfterClose::Reconnect(failure),
                    );
                }
                self.link_failed(ctx, link, failure)
            }
        }
    }

    fn link_failed(&mut self, ctx: &mut Ctx<'_>, link: Link, failure: Failure) -> Step {
        self.drop_link(ctx, link);
        self.fail(ctx, failure)
    }

    fn drop_link(&mut self, ctx: &mut Ctx<'_>, mut link: Link) {
        self.deregister(ctx, link.ws.get_mut().socket_mut());
    }

    /// Drop a phase's socket (deregistering it) and fail.
    fn fail_with<S: AsSocket>(&mut self, ctx: &mut Ctx<'_>, mut sock: S, failure: Failure) -> Step {
        self.deregister(ctx, sock.as_socket());
        self.fail(ctx, failure)
    }

    /// Record a failure, log it the first time, and back off.
    fn fail(&mut self, ctx: &mut Ctx<'_>, failure: Failure) -> Step {
        self.cancel_link_timers(ctx);
        self.forget_socket();
        let message = failure.to_string();
        let delay = match failure {
            Failure::NoCommonProtocol(_) => self.backoff.slow_delay(self.rng.as_mut()),
            _ => {
                if let Some(since) = self.connected_since {
                    self.backoff
                        .connection_ended(ctx.now.saturating_duration_since(since));
                }
                self.backoff.next_delay(self.rng.as_mut())
            }
        };
        let wait = format!("{:.1}s", delay.as_secs_f64());
        if self.connected_since.take().is_some() {
            self.push_link_event(LinkEvent::Down);
            warn!("conn", "disconnected: {message}; reconnecting in {wait}");
            self.last_logged_failure = Some(message.clone());
        } else if self.last_logged_failure.as_deref() != Some(message.as_str()) {
            warn!(
                "conn",
                "connection attempt failed: {message}; backing off, next attempt in {wait}"
            );
            self.last_logged_failure = Some(message.clone());
        } else {
            debug!(
                "conn",
                "attempt failed again: {message}; next attempt in {wait}"
            );
        }
        self.attempts_failed += 1;
        self.status.last_error = Some(message);
        self.set_state(RunState::BackingOff);
        self.arm_phase_timer(ctx, delay);
        Step::Wait(Phase::Backoff)
    }

    fn stop(&mut self, ctx: &mut Ctx<'_>, exit: Exit) -> Phase {
        self.cancel_link_timers(ctx);
        self.cancel_phase_timer(ctx);
        self.forget_socket();
        if let Exit::Revoked(reason) = &exit {
            self.status.last_error = Some(format!("runner revoked: {reason}"));
        }
        self.set_state(RunState::Stopped);
        self.exit = Some(exit);
        Phase::Stopped
    }

    // ---- plumbing ------------------------------------------------------

    fn request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    fn watchdog_limit(&self) -> Duration {
        self.cfg.heartbeat * WATCHDOG_HEARTBEATS
    }

    fn schedule_ping(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(id) = self.ping_timer.take() {
            ctx.cancel(id);
        }
        self.ping_timer = Some(ctx.schedule(self.cfg.heartbeat, Timer::Conn(ConnTimer::Ping)));
    }

    /// Check again when `last_frame + limit` passes. Frames do not touch the
    /// timer (that would be heap work per frame); the check re-arms itself.
    fn schedule_watchdog(&mut self, ctx: &mut Ctx<'_>, last_frame: Instant) {
        if let Some(id) = self.watchdog_timer.take() {
            ctx.cancel(id);
        }
        let due = (last_frame + self.watchdog_limit()).saturating_duration_since(ctx.now);
        self.watchdog_timer = Some(ctx.schedule(due, Timer::Conn(ConnTimer::Watchdog)));
    }

    fn cancel_link_timers(&mut self, ctx: &mut Ctx<'_>) {
        for id in [self.ping_timer.take(), self.watchdog_timer.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel(id);
        }
    }

    fn arm_phase_timer(&mut self, ctx: &mut Ctx<'_>, after: Duration) {
        self.cancel_phase_timer(ctx);
        self.phase_timer = Some(ctx.schedule(after, Timer::Conn(ConnTimer::Phase)));
    }

    fn cancel_phase_timer(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(id) = self.phase_timer.take() {
            ctx.cancel(id);
        }
    }

    /// Deregister and drop whatever socket `phase` holds.
    fn release(&mut self, ctx: &mut Ctx<'_>, mut phase: Phase) {
        if let Some(sock) = phase.socket_mut() {
            let _ = ctx.registry.deregister(sock);
        }
        self.forget_socket();
    }

    fn deregister(&mut self, ctx: &mut Ctx<'_>, sock: &mut TcpStream) {
        let _ = ctx.registry.deregister(sock);
        self.forget_socket();
    }

    /// The socket is gone (closed with its owner); stale events for its token
    /// are ignored from now on.
    fn forget_socket(&mut self) {
        self.token = None;
        self.interest = None;
    }

    /// Re-register only when the wanted interest changed.
    fn sync_interest(&mut self, ctx: &mut Ctx<'_>) {
        let Some(token) = self.token else { return };
        let Some(want) = self.phase.interest() else {
            return;
        };
        if self.interest == Some(want) {
            return;
        }
        if let Some(sock) = self.phase.socket_mut() {
            match ctx.registry.reregister(sock, token, want) {
                Ok(()) => self.interest = Some(want),
                Err(e) => warn!("conn", "cannot update socket interest: {e}"),
            }
        }
    }

    fn set_state(&mut self, state: RunState) {
        if self.status.state == state && state != RunState::BackingOff {
            return;
        }
        self.status.state = state;
        self.status.since = crate::log::rfc3339(SystemTime::now());
        self.write_status();
    }

    fn write_status(&mut self) {
        let Some(dir) = &self.cfg.run_dir else { return };
        self.status_written = Some(Instant::now());
        match state::write_status(dir, &self.status) {
            Ok(()) => self.status_write_failed = false,
            Err(e) => {
                if !self.status_write_failed {
                    warn!(
                        "conn",
                        "cannot write {}: {e}",
                        state::status_path(dir).display()
                    );
                }
                self.status_write_failed = true;
            }
        }
    }
}

/// Where an established link stands.
enum LinkStage {
    Hello { hello_id: u64 },
    Connected,
    Closing(AfterClose),
}

impl LinkStage {
    fn into_phase(self, link: Link) -> Phase {
        match self {
            LinkStage::Hello { hello_id } => Phase::Hello { link, hello_id },
            LinkStage::Connected => Phase::Connected { link },
            LinkStage::Closing(then) => Phase::Closing { link, then },
        }
    }
}

/// What a message asks the link to do next.
enum Flow {
    Continue,
    /// Send a close frame and wait for the reply.
    Close {
        code: u16,
        reason: String,
        then: AfterClose,
    },
    /// Hang up now.
    Drop(AfterClose),
}

/// Something that holds the connection's socket.
trait AsSocket {
    fn as_socket(&mut self) -> &mut TcpStream;
}

impl AsSocket for TcpStream {
    fn as_socket(&mut self) -> &mut TcpStream {
        self
    }
}

impl AsSocket for &mut TcpStream {
    fn as_socket(&mut self) -> &mut TcpStream {
        self
    }
}

/// An I/O error, told apart: TLS (certificate or other) or plain I/O.
fn io_failure(phase: &'static str, error: io::Error) -> Failure {
    match tls::rustls_error(&error) {
        Some(t) => Failure::Tls(t.clone()),
        None => Failure::Io { phase, error },
    }
}

fn ws_failure(e: tungstenite::Error) -> Failure {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Failure::Dropped
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Failure::Dropped
        }
        tungstenite::Error::Io(error) => match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => {
                if let Some(t) = tls::rustls_error(&error) {
                    return Failure::Tls(t.clone());
                }
                Failure::Dropped
            }
            _ => io_failure("connection", error),
        },
        tungstenite::Error::Capacity(c) => Failure::Violation(c.to_string()),
        // Our own backpressure: the server stopped reading (not its protocol error).
        tungstenite::Error::WriteBufferFull(_) => Failure::Io {
            phase: "sending",
            error: io::Error::new(
                io::ErrorKind::WouldBlock,
                "send buffer full: the server is not reading",
            ),
        },
        tungstenite::Error::Utf8(d) => {
            Failure::Violation(format!("invalid UTF-8 in a text frame: {d}"))
        }
        other => Failure::WebSocket(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
