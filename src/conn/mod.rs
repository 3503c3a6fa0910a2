//! The control connection: one outbound TLS WebSocket to tether-server,
//! a [`Source`] of the reactor (readiness, timers, the DNS waker, SIGTERM).
//! Owns the socket, the phase timer, the ping and watchdog timers, the
//! backoff policy and `status.json`. Uses only the reactor, the link types
//! and the net parts (transport, tls, proxy, dns); it names no feature.
//!
//! Files: `dial.rs` (resolve → TCP → proxy → TLS → upgrade), `session.rs`
//! (hello, the server's messages, liveness, the close handshake), this file
//! (the phases, failure and backoff, timers, status).
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
//!   │          ▼                 (several --server URLs: the next attempt
//!   └──── Backoff ◀──── Closing   goes to the next one, round robin)
//!                      (our close frame sent, ≤ 1 s for the reply)
//!
//!   SIGTERM/SIGINT: with a WebSocket up ─▶ Closing(1000 "runner shutting down") ─▶ Stopped (exit 0)
//!                   otherwise            ─▶ Stopped at once
//! ```
//!
//! Everything but the connection's own traffic (terminals, Docker, logs,
//! telemetry) comes from a [`Feed`] (the runner's feature list) passed to
//! [`Connection::pump`] once per turn. The connection tells the feed what
//! happened to the link ([`LinkEvent`]: up with the server's `metrics_ts`,
//! down, the server's messages as decoded, ACKs and DATA frames) and takes its
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
mod dial;
mod session;

pub use dial::{classify_refusal, ws_config, UpgradeRefusal};
#[cfg(test)]
use session::truncate_reason;
pub use session::{close_action, hello_message, pong_for, CloseAction};
use session::{Link, LinkStage};

use crate::link::{Exit, Feed, FeedFigures, LinkEvent, Outgoing};
use crate::net::dns::Resolver;
use crate::net::{proxy, tls, transport};
use crate::protocol::{self, close, Decoded, FrameKind, Message as Control};
use crate::rand::{RandomSource, SplitMix64};
use crate::reactor::{Ctx, SignalSet, Source, TimerId, TimerKind};
use crate::state::{self, RunState, Status};
use crate::url::Url;
use crate::{debug, error, info, warn};
use backoff::Backoff;
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

/// One place the runner may connect to: a server (or a replica, or a load
/// balancer in front of them) and the proxy on the way, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The server's base URL (`https://…`, or `http://` for loopback).
    pub url: Url,
    pub proxy: Option<Url>,
}

/// Everything the connection needs, decided before the loop starts.
#[derive(Clone)]
pub struct ConnConfig {
    /// Where to connect, tried in turn: each failed attempt (or lost
    /// connection) moves to the next one, under the one backoff policy, so
    /// several URLs never multiply the attempt rate. Never empty.
    pub servers: Vec<Endpoint>,
    pub runner_id: String,
    pub credential: String,
    pub heartbeat: Duration,
    pub tls: Arc<rustls::ClientConfig>,
    /// Timeout of each phase (DNS, TCP, proxy, TLS, upgrade, hello).
    pub phase_timeout: Duration,
    pub hello: HelloInfo,
    /// Where `status.json` goes; `None` writes nothing (tests).
    pub run_dir: Option<PathBuf>,
    /// For `hello.metrics_interval_ms` (0: metrics off); the runner
    /// sets it from the telemetry settings.
    pub metrics_interval_ms: u64,
    /// What the host owner switched off, for `status.json`; the runner
    /// sets it from the features' settings.
    pub switched_off: Vec<String>,
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

impl TimerKind for ConnTimer {
    const ALL: &'static [ConnTimer] = &[ConnTimer::Phase, ConnTimer::Ping, ConnTimer::Watchdog];
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
    /// Index into `cfg.servers` of the endpoint the current attempt uses.
    current: usize,
    phase: Phase,
    backoff: Backoff,
    rng: Box<dyn RandomSource>,
    resolver: Resolver,
    /// The token the DNS helper's waker fires on.
    dns_token: Token,
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

impl Source for Connection {
    fn ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if token == self.dns_token {
            self.on_dns(ctx);
        } else {
            self.on_ready(ctx, token);
        }
    }

    fn timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, kind: u8) {
        if let Some(t) = ConnTimer::from_code(kind) {
            self.on_timer(ctx, id, t);
        }
    }

    /// SIGTERM/SIGINT: shut down.
    fn signals(&mut self, ctx: &mut Ctx<'_>, set: SignalSet) {
        let stop = [libc::SIGINT, libc::SIGTERM].map(|s| set.contains(s));
        for (sig, _) in [libc::SIGINT, libc::SIGTERM]
            .iter()
            .zip(stop)
            .filter(|x| x.1)
        {
            info!(
                "main",
                "received {}; shutting down",
                crate::signals::name(*sig)
            );
        }
        if stop.contains(&true) {
            self.shutdown(ctx);
        }
    }

    fn wants_again(&self) -> bool {
        self.again
    }

    /// Drive again after a capped pass.
    fn again(&mut self, ctx: &mut Ctx<'_>) {
        debug!("loop", "driving the connection again after a capped pass");
        self.again = false;
        self.drive(ctx);
    }
}

/// What a drive step decided: stay and wait for readiness, or drive the
/// new phase at once.
enum Step {
    Wait(Phase),
    Again(Phase),
}

impl Connection {
    /// `dns_token`: the token of `resolver`'s waker.
    pub fn new(cfg: ConnConfig, resolver: Resolver, dns_token: Token) -> Connection {
        Connection::with_rng(cfg, resolver, dns_token, Box::new(SplitMix64::from_os()))
    }

    pub fn with_rng(
        cfg: ConnConfig,
        resolver: Resolver,
        dns_token: Token,
        rng: Box<dyn RandomSource>,
    ) -> Connection {
        let status = Status {
            state: RunState::Connecting,
            server: cfg.servers[0].url.to_string(),
            runner_id: cfg.runner_id.clone(),
            since: crate::log::rfc3339(SystemTime::now()),
            last_heartbeat: None,
            pid: std::process::id(),
            version: crate::version::version().to_owned(),
            last_error: None,
            metrics: None,
            terminals: 0,
            switched_off: cfg.switched_off.clone(),
        };
        Connection {
            cfg,
            current: 0,
            phase: Phase::Idle,
            backoff: Backoff::new(),
            rng,
            resolver,
            dns_token,
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

    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        info!(
            "conn",
            "connecting to {} as runner {}",
            self.servers_text(),
            self.cfg.runner_id
        );
        self.write_status();
        self.begin_attempt(ctx);
        self.sync_interest(ctx);
    }

    /// Readiness on a socket token.
    fn on_ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if self.token != Some(token) {
            return; // a socket we already dropped
        }
        self.drive(ctx);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, timer: ConnTimer) {
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
    fn shutdown(&mut self, ctx: &mut Ctx<'_>) {
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
        self.next_endpoint();
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

    /// Where the current attempt goes.
    fn endpoint(&self) -> &Endpoint {
        &self.cfg.servers[self.current % self.cfg.servers.len()]
    }

    /// After a failure the next attempt goes to the next URL: a dead
    /// replica is not retried before the others have been.
    fn next_endpoint(&mut self) {
        if self.cfg.servers.len() > 1 {
            self.current = (self.current + 1) % self.cfg.servers.len();
            let url = self.endpoint().url.to_string();
            debug!("conn", "next attempt goes to {url}");
            self.status.server = url;
        }
    }

    fn servers_text(&self) -> String {
        let urls: Vec<String> = self.cfg.servers.iter().map(|e| e.url.to_string()).collect();
        urls.join(", ")
    }

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
        self.ping_timer = Some(ctx.schedule(self.cfg.heartbeat, ConnTimer::Ping));
    }

    /// Check again when `last_frame + limit` passes. Frames do not touch the
    /// timer (that would be heap work per frame); the check re-arms itself.
    fn schedule_watchdog(&mut self, ctx: &mut Ctx<'_>, last_frame: Instant) {
        if let Some(id) = self.watchdog_timer.take() {
            ctx.cancel(id);
        }
        let due = (last_frame + self.watchdog_limit()).saturating_duration_since(ctx.now);
        self.watchdog_timer = Some(ctx.schedule(due, ConnTimer::Watchdog));
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
        self.phase_timer = Some(ctx.schedule(after, ConnTimer::Phase));
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

#[cfg(test)]
mod tests;
