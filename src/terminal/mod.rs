//! Interactive terminals on data channels: a login shell on the host
//! ([`pty`]) or a TTY exec in a container ([`exec`]), keystrokes in as DATA
//! frames from the server, output out as DATA frames (tag pty), at the
//! highest priority of the feeds (docs/protocol.md §4e, §5).
//!
//! One terminal, as the event loop drives it:
//!
//! ```text
//!  term_open ─▶ host: refused if switched off locally; openpty + login shell
//!               container: refused if switched off locally; Opening (exec
//!               create, start: engine calls in the loop, see [`exec`];
//!               keystrokes and resizes wait)
//!               ─▶ term_opened ─▶ Running ─────────────────────────────────┐
//!   DATA in  ─▶ input queue ─▶ written to the pty/stream ─▶ ACK (inbound)   │
//!   pty/stream readable ─▶ replay buffer (≤ window) ─▶ DATA out             │
//!   ACK from the server ─▶ buffer front dropped, reading resumes            │
//!   term_resize ─▶ TIOCSWINSZ / exec resize                                 │
//!                                                                           ▼
//!   EOF (shell exited) ─▶ reaped / exec inspected ──┐      hang-up: term_close, idle timeout,
//!                                                   ├──▶ Finished ─▶ END "reason" once every
//!   hang-up ─▶ SIGHUP (then SIGKILL after 2 s) ─────┘     byte before it is sent ─▶ gone
//!
//!  link down: keeps running and reading up to the window (the replay buffer);
//!             after `detach_timeout` (60 s) without a link: hang-up.
//!             One still Opening is given up (its answer has nobody to go to).
//!  link up:   term_alive (the channels still here; sent once this process
//!             has had a terminal), then everything not
//!             acknowledged is sent again from the server's ACK; the server
//!             drops what it already has (no gap, no duplicate).
//! ```
//!
//! The output side is a [`crate::channel`] kept until acknowledged, in
//! memory only: read bytes join the unsent frame, and a reconnect resends
//! from the terminal's own ACK.
//!
//! Bounds: the replay buffer holds at most `window` (256 KiB) unacknowledged
//! bytes; past it the terminal is not read (the shell blocks on its writes:
//! `cat /dev/urandom` costs no memory). Keystrokes waiting for the pty are at
//! most [`MAX_INPUT`]; the server keeps its own window below that.

pub mod exec;
pub mod pty;

use crate::channel::{Keep, Limits, OutChannel};
use crate::link::{Family, Feature, LinkEvent, Outgoing};
use crate::protocol::{
    self, ErrorBody, FrameHeader, FrameKind, Message as Control, StreamTag, TermAlive, TermOpen,
    TermOpened, DEFAULT_TERM_WINDOW, MAX_TERMINALS, TERM_CHANNEL_BIT,
};
use crate::reactor::{Ctx, SignalSet, Source, TimerId, TimerKind};
use crate::{debug, info, sys, warn};
use exec::{Exec, Hangup, Step};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use pty::{HostUser, Pty};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Keystrokes held for a terminal that is not reading them.
pub const MAX_INPUT: usize = 64 * 1024;
/// Largest window a `term_open` may ask for.
const MAX_WINDOW: u32 = 4 * 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Bytes read from one terminal per readiness pass before others get a turn.
const MAX_READ_PER_PASS: usize = 64 * 1024;
/// How long the shell is kept while the link is down, unless `term_open` says.
pub const DEFAULT_DETACH: Duration = Duration::from_secs(60);
/// Between SIGHUP and SIGKILL; also how long an exited shell may keep its
/// terminal open through a child before it is hung up.
const KILL_GRACE: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_secs(1);

/// The host owner's choices, from the runner's own command line.
#[derive(Debug, Clone)]
pub struct TerminalConfig {
    /// `--no-host-terminal` switches host shells off; the server cannot
    /// turn them back on.
    pub host_enabled: bool,
    /// `--no-container-terminal` switches container exec terminals off,
    /// the same way.
    pub container_enabled: bool,
    /// Whose login shell a host terminal runs; `None`: the runner's user.
    pub host_user: Option<String>,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        TerminalConfig {
            host_enabled: true,
            container_enabled: true,
            host_user: None,
        }
    }
}

impl TerminalConfig {
    /// For `hello`: what the server may offer for this host.
    pub fn capabilities(&self) -> Vec<String> {
        let mut c = Vec::new();
        if self.container_enabled {
            c.push("terminal.container".to_owned());
        }
        if self.host_enabled {
            c.push("terminal.host".to_owned());
        }
        c
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminalTimer {
    Tick,
    /// An exec's engine call deadline or inspect retry (which: its id).
    Engine,
}

/// The engine, for container terminals: its socket and negotiated API.
pub use crate::engine::Engine;

enum Io {
    Host(Pty),
    /// Boxed: it holds the engine calls of every state.
    Container(Box<Exec>),
    /// Hung up or ended: nothing to read or write.
    Closed,
}

struct Session {
    channel: u32,
    /// A container terminal not attached yet: the `term_open`'s request id
    /// (answered once attached or refused) and the container. Nothing is
    /// sent on its channel meanwhile; keystrokes wait in `input`.
    opening: Option<(u64, String)>,
    io: Io,
    token: Token,
    registered: Option<Interest>,
    /// Output not yet acknowledged, at most `window` bytes (memory only).
    chan: OutChannel,
    /// Keystrokes not yet written, and the next inbound offset expected.
    input: VecDeque<u8>,
    in_seq: u64,
    /// Inbound bytes written to the terminal; an ACK with it is due.
    in_written: u64,
    ack_due: bool,
    idle: Option<Duration>,
    detach: Duration,
    last_activity: Instant,
    /// The output source ended (EOF or EIO): waiting for the exit status.
    eof_at: Option<Instant>,
    /// Set once the terminal is over: the END frame's reason.
    finished: Option<String>,
    /// Readable data may be waiting (the window was full).
    again: bool,
}

/// A hung-up host shell not reaped yet.
struct Reaping {
    pty: Pty,
    since: Instant,
    killed: bool,
}

/// Every open terminal.
pub struct Terminals {
    cfg: TerminalConfig,
    sessions: Vec<Session>,
    control: VecDeque<Outgoing>,
    link_up: bool,
    down_since: Option<Instant>,
    tick: Option<TimerId>,
    reaping: Vec<Reaping>,
    /// Host pids of hung-up container execs: SIGKILL after the grace.
    orphans: Vec<(i32, Instant)>,
    /// Hung-up container execs whose pid is being asked for.
    hangups: Vec<Hangup>,
    /// Round-robin position for fairness between floods.
    next: usize,
    /// A terminal was opened since this process started: the server may
    /// hold sessions of ours, so every new link starts with `term_alive`.
    /// (A fresh process has nothing to report; the server ends what a
    /// reconnected runner does not confirm.)
    ever_opened: bool,
    /// The engine for the next container terminal (see `set_engine`).
    engine: Option<Engine>,
}

impl Terminals {
    pub fn new(cfg: TerminalConfig) -> Terminals {
        Terminals {
            cfg,
            sessions: Vec::new(),
            control: VecDeque::new(),
            link_up: false,
            down_since: None,
            tick: None,
            reaping: Vec::new(),
            orphans: Vec::new(),
            hangups: Vec::new(),
            next: 0,
            ever_opened: false,
            engine: None,
        }
    }

    /// Open terminals (for status and tests).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn owns(&self, token: Token) -> bool {
        self.sessions
            .iter()
            .any(|s| s.token == token || s.exec().is_some_and(|x| x.owns(token)))
            || self.hangups.iter().any(|h| h.owns(token))
    }

    pub fn wants_again(&self) -> bool {
        self.sessions.iter().any(|s| s.again && s.has_room())
    }

    /// Whether this link event belongs to a terminal.
    pub fn is_terminal_channel(channel: u32) -> bool {
        channel & TERM_CHANNEL_BIT != 0
    }

    /// The Docker engine for the `term_open` the runner hands over next
    /// (container terminals); `None` while it is unavailable.
    pub fn set_engine(&mut self, engine: Option<Engine>) {
        self.engine = engine;
    }

    pub fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        match event {
            LinkEvent::Up { .. } => {
                self.link_up = true;
                self.down_since = None;
                self.control.clear();
                if self.ever_opened {
                    let channels = self
                        .sessions
                        .iter()
                        .filter(|s| s.opening.is_none())
                        .map(|s| s.channel)
                        .collect();
                    let alive = Control::TermAlive(TermAlive { channels });
                    self.control.push_back(Outgoing::Control(Box::new(alive)));
                }
                for s in &mut self.sessions {
                    // Resend what the server may not have; it drops overlap.
                    // (In memory only: cannot fail.)
                    let _ = s.chan.link_up(None);
                    s.ack_due = true;
                }
            }
            LinkEvent::Down => {
                self.link_up = false;
                self.down_since = Some(ctx.now);
                self.control.clear();
                // Nobody waits for their answer any more (the server's
                // request failed with the link): give them up.
                while let Some(i) = self.sessions.iter().position(|s| s.opening.is_some()) {
                    self.abort(ctx, i, None);
                }
                if !self.sessions.is_empty() {
                    info!(
                        "term",
                        "link down: keeping {} terminal(s) for now",
                        self.sessions.len()
                    );
                }
            }
            LinkEvent::Message { id, body } => match *body {
                Control::TermOpen(open) => {
                    let engine = self.engine.take();
                    self.open(ctx, id, open, engine);
                }
                Control::TermResize(r) => self.resize(ctx, r.channel, r.cols, r.rows),
                Control::TermClose(c) => self.hang_up(ctx, c.channel, "closed"),
                _ => {}
            },
            LinkEvent::ChannelData {
                channel,
                seq,
                payload,
            } => self.on_input(ctx, channel, seq, &payload),
            LinkEvent::ChannelAck { channel, kind, seq } => self.on_ack(channel, kind, seq),
        }
    }

    /// Control replies first, then inbound ACKs, then output and END frames
    /// taking turns between terminals (one frame each), so a flood in one
    /// cannot hold back another's echo.
    pub fn next_message(&mut self) -> Option<Outgoing> {
        if !self.link_up {
            return None;
        }
        if let Some(m) = self.control.pop_front() {
            return Some(m);
        }
        if let Some(s) = self
            .sessions
            .iter_mut()
            .find(|s| s.ack_due && s.opening.is_none())
        {
            s.ack_due = false;
            let header = FrameHeader {
                kind: FrameKind::Ack,
                tag: StreamTag::None,
                channel: s.channel,
                seq: s.in_written,
            };
            return Some(Outgoing::Binary(protocol::encode_frame(header, &[])));
        }
        let n = self.sessions.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let s = &mut self.sessions[i];
            if s.opening.is_some() {
                continue;
            }
            if let Some(frame) = s.chan.next_frame() {
                self.next = (i + 1) % n;
                return Some(Outgoing::Binary(frame));
            }
            // Every byte before it sent: END, and the terminal is gone.
            let end = s.finished.as_deref().and_then(|r| s.chan.end_frame(r));
            if let Some(end) = end {
                let s = self.sessions.swap_remove(i);
                let reason = s.finished.unwrap_or_default();
                debug!("term", "terminal {} ends: {reason}", s.channel);
                self.next = 0;
                return Some(Outgoing::Binary(end));
            }
        }
        None
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, t: TerminalTimer) {
        match t {
            TerminalTimer::Tick => self.on_tick(ctx, id),
            TerminalTimer::Engine => self.on_engine_timer(ctx, id),
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>, id: TimerId) {
        if self.tick == Some(id) {
            self.tick = None;
        }
        let now = ctx.now;
        let down_for = self
            .down_since
            .map(|d| now.saturating_duration_since(d))
            .filter(|_| !self.link_up);
        let mut hang: Vec<(u32, String)> = Vec::new();
        for s in &mut self.sessions {
            // An opening one is bounded by its engine calls' deadlines.
            if s.finished.is_some() || s.opening.is_some() {
                continue;
            }
            if let Some(d) = down_for.filter(|d| *d > s.detach) {
                hang.push((s.channel, format!("link down for {} s", d.as_secs())));
            } else if s
                .idle
                .is_some_and(|i| now.saturating_duration_since(s.last_activity) > i)
            {
                hang.push((s.channel, "idle timeout".into()));
            } else if s.eof_at.is_some() {
                if let Io::Host(p) = &mut s.io {
                    if let Some(st) = p.try_reap() {
                        s.finished = Some(pty::describe_status(st));
                    } else if s
                        .eof_at
                        .is_some_and(|t| now.saturating_duration_since(t) > KILL_GRACE)
                    {
                        hang.push((s.channel, "terminal closed".into()));
                    }
                }
            }
        }
        for (channel, why) in hang {
            info!("term", "terminal {channel}: hanging up ({why})");
            self.hang_up(ctx, channel, &why);
        }
        self.reap(now);
        if down_for.is_some() {
            // Without a link nobody will send the END: forget finished ones.
            self.sessions.retain(|s| s.finished.is_none());
        }
        self.schedule_tick(ctx);
    }

    /// SIGCHLD: reap whatever of ours exited.
    pub fn on_sigchld(&mut self, ctx: &mut Ctx<'_>) {
        for s in &mut self.sessions {
            if let (Io::Host(p), None) = (&mut s.io, &s.finished) {
                if s.eof_at.is_some() {
                    if let Some(st) = p.try_reap() {
                        s.finished = Some(pty::describe_status(st));
                    }
                }
            }
        }
        self.reap(ctx.now);
    }

    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if let Some(i) = self.sessions.iter().position(|s| s.token == token) {
            self.drive(ctx, i);
        } else if let Some(i) = self
            .sessions
            .iter()
            .position(|s| s.exec().is_some_and(|x| x.owns(token)))
        {
            let step = match &mut self.sessions[i].io {
                Io::Container(x) => x.on_ready(ctx, token),
                _ => Step::Nothing,
            };
            self.on_exec_step(ctx, i, step);
        } else if let Some(k) = self.hangups.iter().position(|h| h.owns(token)) {
            if let Some(got) = self.hangups[k].on_ready(ctx) {
                let h = self.hangups.swap_remove(k);
                let pid = h.finish(ctx, Some(got));
                self.signal_exec(ctx, pid);
            }
        }
    }

    fn on_engine_timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId) {
        if let Some(i) = self
            .sessions
            .iter()
            .position(|s| s.exec().is_some_and(|x| x.owns_timer(id)))
        {
            let step = match &mut self.sessions[i].io {
                Io::Container(x) => x.on_timer(ctx, id),
                _ => Step::Nothing,
            };
            self.on_exec_step(ctx, i, step);
        } else if let Some(k) = self.hangups.iter().position(|h| h.owns_timer(id)) {
            let h = self.hangups.swap_remove(k);
            let pid = h.finish(ctx, None);
            self.signal_exec(ctx, pid);
        }
    }

    /// What an exec's engine call meant for terminal `i`.
    fn on_exec_step(&mut self, ctx: &mut Ctx<'_>, i: usize, step: Step) {
        match step {
            Step::Nothing => {}
            Step::Attached { early } => {
                let s = &mut self.sessions[i];
                let Some((id, target)) = s.opening.take() else {
                    return;
                };
                s.chan.append(StreamTag::Pty, &early);
                if let Err(e) = s.register(ctx) {
                    let why = format!("cannot watch it: {e}");
                    s.opening = Some((id, target));
                    return self.abort(ctx, i, Some(("terminal_failed", why)));
                }
                self.opened(ctx, id, self.sessions[i].channel, target, None);
                // Keystrokes typed while it opened go in now.
                self.drive(ctx, i);
            }
            Step::Refused { code, message } => self.abort(ctx, i, Some((code, message))),
            Step::Ended(reason) => {
                let s = &mut self.sessions[i];
                s.finished = Some(reason);
                s.io = Io::Closed;
            }
        }
    }

    /// Give up terminal `i` before it opened: hang up what may have
    /// started, answer the `term_open` (unless the link went), forget it.
    fn abort(&mut self, ctx: &mut Ctx<'_>, i: usize, reply: Option<(&str, String)>) {
        let mut s = self.sessions.swap_remove(i);
        self.next = 0;
        s.deregister(ctx);
        if let Io::Container(x) = &mut s.io {
            if let Some(h) = x.hang_up(ctx) {
                self.hangups.push(h);
            }
        }
        if let (Some((id, _)), Some((code, why))) = (s.opening, reply) {
            self.reply_error(id, code, why);
        }
    }

    /// SIGHUP a hung-up exec's process; SIGKILL follows after the grace.
    fn signal_exec(&mut self, ctx: &mut Ctx<'_>, pid: Option<i32>) {
        let Some(pid) = pid else { return };
        // A host pid the engine reported: its group, and itself.
        sys::process::kill_group(pid, libc::SIGHUP);
        sys::process::kill_pid(pid, libc::SIGHUP);
        self.orphans.push((pid, ctx.now + KILL_GRACE));
        self.schedule_tick(ctx);
    }

    pub fn on_again(&mut self, ctx: &mut Ctx<'_>) {
        for i in 0..self.sessions.len() {
            if self.sessions[i].again && self.sessions[i].has_room() {
                self.sessions[i].again = false;
                self.drive(ctx, i);
            }
        }
    }

    // ---- internals -------------------------------------------------------

    fn open(&mut self, ctx: &mut Ctx<'_>, id: u64, open: TermOpen, engine: Option<Engine>) {
        if !Self::is_terminal_channel(open.channel)
            || self.sessions.iter().any(|s| s.channel == open.channel)
        {
            let why = format!("channel {} is not a free terminal channel", open.channel);
            return self.reply_error(id, "bad_request", why);
        }
        if self.sessions.len() >= MAX_TERMINALS {
            let why = format!("this runner has {MAX_TERMINALS} terminals open already");
            return self.reply_error(id, "too_many_channels", why);
        }
        let (io, target, pid) = match &open.container {
            None => {
                if !self.cfg.host_enabled {
                    let why = "the host terminal is switched off on this runner \
                               (its owner started it with --no-host-terminal)"
                        .to_owned();
                    return self.reply_error(id, "host_terminal_disabled", why);
                }
                let user: HostUser = match pty::lookup_user(self.cfg.host_user.as_deref()) {
                    Ok(u) => u,
                    Err(e) => return self.reply_error(id, "terminal_failed", e.to_string()),
                };
                match Pty::spawn(&user, &open.command, open.cols, open.rows) {
                    Ok(p) => {
                        let pid = p.pid();
                        (Io::Host(p), user.name, Some(pid))
                    }
                    Err(e) => {
                        let why = format!("cannot start {}'s shell {}: {e}", user.name, user.shell);
                        return self.reply_error(id, "terminal_failed", why);
                    }
                }
            }
            Some(_) if !self.cfg.container_enabled => {
                let why = "container terminals are switched off on this runner \
                           (its owner started it with --no-container-terminal)"
                    .to_owned();
                return self.reply_error(id, "container_terminal_disabled", why);
            }
            Some(container) => {
                let Some(engine) = engine else {
                    let why = "the Docker engine is not available on this runner".to_owned();
                    return self.reply_error(id, "docker_unavailable", why);
                };
                // Answered once attached (`on_exec_step`), or refused.
                let x = match Exec::open(ctx, engine, container, &open) {
                    Ok(x) => x,
                    Err(why) => return self.reply_error(id, "docker_error", why),
                };
                let mut s = self.new_session(ctx, &open, Io::Container(Box::new(x)));
                s.opening = Some((id, container.clone()));
                self.sessions.push(s);
                return;
            }
        };
        let s = self.new_session(ctx, &open, io);
        self.start_session(ctx, id, s, target, pid);
    }

    fn new_session(&mut self, ctx: &mut Ctx<'_>, open: &TermOpen, io: Io) -> Session {
        let window = match open.window {
            0 => DEFAULT_TERM_WINDOW,
            w => w.min(MAX_WINDOW),
        };
        let limits = Limits {
            mem: window as usize,
            spool: 0,
            window: u64::from(window),
        };
        Session {
            channel: open.channel,
            opening: None,
            io,
            token: ctx.token(),
            registered: None,
            chan: OutChannel::new(open.channel, limits, Keep::UntilAcked),
            input: VecDeque::new(),
            in_seq: 0,
            in_written: 0,
            ack_due: false,
            idle: (open.idle_timeout_s > 0).then(|| Duration::from_secs(open.idle_timeout_s)),
            detach: match open.detach_timeout_s {
                0 => DEFAULT_DETACH,
                s => Duration::from_secs(s),
            },
            last_activity: ctx.now,
            eof_at: None,
            finished: None,
            again: true,
        }
    }

    fn start_session(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: u64,
        mut s: Session,
        target: String,
        pid: Option<i64>,
    ) {
        if let Err(e) = s.register(ctx) {
            s.close_io(ctx);
            return self.reply_error(id, "terminal_failed", format!("cannot watch it: {e}"));
        }
        let channel = s.channel;
        self.sessions.push(s);
        self.opened(ctx, id, channel, target, pid);
    }

    /// The terminal is up: answer its `term_open`.
    fn opened(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: u64,
        channel: u32,
        target: String,
        pid: Option<i64>,
    ) {
        info!(
            "term",
            "terminal {channel} open: {}{target}",
            if pid.is_some() {
                "host shell of "
            } else {
                "exec in "
            },
        );
        self.control.push_back(Outgoing::Reply {
            id,
            body: Box::new(Control::TermOpened(TermOpened {
                channel,
                pid,
                target,
            })),
        });
        self.ever_opened = true;
        self.schedule_tick(ctx);
    }

    fn schedule_tick(&mut self, ctx: &mut Ctx<'_>) {
        let busy =
            !self.sessions.is_empty() || !self.reaping.is_empty() || !self.orphans.is_empty();
        if busy && self.tick.is_none() {
            self.tick = Some(ctx.schedule(TICK, TerminalTimer::Tick));
        }
    }

    fn resize(&mut self, ctx: &mut Ctx<'_>, channel: u32, cols: u16, rows: u16) {
        let Some(s) = self.sessions.iter_mut().find(|s| s.channel == channel) else {
            return;
        };
        match &mut s.io {
            Io::Host(p) => {
                if let Err(e) = p.resize(cols, rows) {
                    debug!("term", "terminal {channel}: resize to {cols}x{rows}: {e}");
                }
            }
            // Non-blocking; errors are logged there.
            Io::Container(x) => x.resize(ctx, cols, rows),
            Io::Closed => {}
        }
    }

    fn on_ack(&mut self, channel: u32, kind: FrameKind, seq: u64) {
        let Some(s) = self.sessions.iter_mut().find(|s| s.channel == channel) else {
            return;
        };
        let acked = s.chan.acked();
        // In memory only: cannot fail.
        let _ = s.chan.on_frame(kind, seq);
        if s.chan.acked() > acked {
            s.again = true;
        }
    }

    fn on_input(&mut self, ctx: &mut Ctx<'_>, channel: u32, seq: u64, payload: &[u8]) {
        let Some(i) = self.sessions.iter().position(|s| s.channel == channel) else {
            return;
        };
        let s = &mut self.sessions[i];
        let end = seq + payload.len() as u64;
        if end <= s.in_seq {
            // A resend after a reconnect: we have it; say so again.
            s.ack_due = true;
            return;
        }
        if seq > s.in_seq {
            // Sent before a reconnect's resend reached us: the resend
            // (from our ACK) carries these bytes too, in order.
            debug!(
                "term",
                "terminal {channel}: keystrokes from {seq}, expected {}; dropped", s.in_seq
            );
            return;
        }
        let skip = s.in_seq.saturating_sub(seq) as usize;
        let data = &payload[skip..];
        let room = MAX_INPUT.saturating_sub(s.input.len());
        if data.len() > room {
            warn!(
                "term",
                "terminal {channel}: {} keystroke bytes over the limit dropped",
                data.len() - room
            );
        }
        s.input.extend(&data[..data.len().min(room)]);
        s.in_seq = end;
        s.last_activity = ctx.now;
        self.drive(ctx, i);
    }

    /// Write keystrokes, then read output while the window allows.
    fn drive(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let s = &mut self.sessions[i];
        if s.finished.is_some() || matches!(s.io, Io::Closed) {
            return;
        }
        // Write.
        while !s.input.is_empty() {
            let (a, _) = s.input.as_slices();
            let r = match &mut s.io {
                Io::Host(p) => match p.master() {
                    Some(mut m) => m.write(a),
                    None => break,
                },
                Io::Container(x) => match x.stream() {
                    Some(st) => st.write(a),
                    None => break,
                },
                Io::Closed => break,
            };
            match r {
                Ok(0) => break,
                Ok(n) => {
                    s.input.drain(..n);
                    s.in_written += n as u64;
                    s.ack_due = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("term", "terminal {}: write: {e}", s.channel);
                    s.input.clear();
                    break;
                }
            }
        }
        // Read.
        let mut buf = [0u8; READ_CHUNK];
        let mut budget = MAX_READ_PER_PASS;
        let mut eof = false;
        loop {
            let room = s.chan.room();
            if room == 0 || budget == 0 {
                s.again = true;
                break;
            }
            let want = room.min(READ_CHUNK).min(budget);
            let r = match &mut s.io {
                Io::Host(p) => match p.master() {
                    Some(mut m) => m.read(&mut buf[..want]),
                    None => break,
                },
                Io::Container(x) => match x.stream() {
                    Some(st) => st.read(&mut buf[..want]),
                    None => break,
                },
                Io::Closed => break,
            };
            match r {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    s.chan.append(StreamTag::Pty, &buf[..n]);
                    budget -= n;
                    s.last_activity = ctx.now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The pty master reads EIO once no process holds the
                // slave open any more: the shell is gone.
                Err(e) => {
                    if e.raw_os_error() != Some(libc::EIO) {
                        debug!("term", "terminal {}: read: {e}", s.channel);
                    }
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            self.on_eof(ctx, i);
            return;
        }
        let s = &mut self.sessions[i];
        if let Err(e) = s.register(ctx) {
            warn!("term", "terminal {}: cannot watch it: {e}", s.channel);
            let ch = s.channel;
            self.hang_up(ctx, ch, "internal error");
        }
    }

    /// The output ended: the shell exited (or let go of the terminal).
    fn on_eof(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let s = &mut self.sessions[i];
        s.eof_at = Some(ctx.now);
        s.deregister(ctx);
        match std::mem::replace(&mut s.io, Io::Closed) {
            Io::Host(mut p) => {
                if let Some(st) = p.try_reap() {
                    s.finished = Some(pty::describe_status(st));
                }
                // Not reaped yet: SIGCHLD or the tick will.
                s.io = Io::Host(p);
            }
            Io::Container(mut x) => {
                // The exit code comes from an inspect, in the loop.
                let step = x.on_eof(ctx);
                s.io = Io::Container(x);
                self.on_exec_step(ctx, i, step);
            }
            Io::Closed => {}
        }
    }

    /// SIGHUP the shell and finish the terminal with `reason`.
    fn hang_up(&mut self, ctx: &mut Ctx<'_>, channel: u32, reason: &str) {
        let Some(i) = self.sessions.iter().position(|s| s.channel == channel) else {
            return;
        };
        if self.sessions[i].opening.is_some() {
            let why = format!("{reason} before it opened");
            return self.abort(ctx, i, Some(("terminal_failed", why)));
        }
        let s = &mut self.sessions[i];
        if s.finished.is_some() {
            return;
        }
        s.deregister(ctx);
        s.input.clear();
        s.finished = Some(reason.to_owned());
        match std::mem::replace(&mut s.io, Io::Closed) {
            Io::Host(mut pty) => {
                pty.hang_up();
                if pty.try_reap().is_none() {
                    self.reaping.push(Reaping {
                        pty,
                        since: ctx.now,
                        killed: false,
                    });
                }
            }
            Io::Container(mut x) => {
                if let Some(h) = x.hang_up(ctx) {
                    self.hangups.push(h);
                }
            }
            Io::Closed => {}
        }
        self.schedule_tick(ctx);
    }

    fn reap(&mut self, now: Instant) {
        self.reaping.retain_mut(|r| {
            if r.pty.try_reap().is_some() {
                return false;
            }
            if !r.killed && now.saturating_duration_since(r.since) > KILL_GRACE {
                r.pty.signal(libc::SIGKILL);
                r.killed = true;
            }
            // Dropping kills and reaps it at once (a blocking wait after
            // SIGKILL); only after a second grace, which it never needs.
            now.saturating_duration_since(r.since) < KILL_GRACE * 2
        });
        self.orphans.retain(|&(pid, at)| {
            // Signal 0 only checks that the pid exists.
            let alive = sys::process::kill_pid(pid, 0);
            if alive && now >= at {
                // The exec's host pid, which ignored SIGHUP.
                sys::process::kill_group(pid, libc::SIGKILL);
                sys::process::kill_pid(pid, libc::SIGKILL);
                return false;
            }
            alive
        });
    }

    fn reply_error(&mut self, id: u64, code: &str, message: String) {
        info!("term", "term_open refused: {code}: {message}");
        self.control.push_back(Outgoing::Reply {
            id,
            body: Box::new(Control::Error(ErrorBody {
                code: code.into(),
                message,
            })),
        });
    }
}

impl Session {
    fn exec(&self) -> Option<&Exec> {
        match &self.io {
            Io::Container(x) => Some(x),
            _ => None,
        }
    }

    fn has_room(&self) -> bool {
        self.chan.room() > 0
    }

    fn wanted(&self) -> Interest {
        if self.input.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// Register, or reregister when the interest changed.
    fn register(&mut self, ctx: &mut Ctx<'_>) -> io::Result<()> {
        let want = self.wanted();
        if self.registered == Some(want) {
            return Ok(());
        }
        let first = self.registered.is_none();
        match &mut self.io {
            Io::Host(p) => {
                let Some(fd) = p.raw_fd() else { return Ok(()) };
                let mut src = SourceFd(&fd);
                if first {
                    ctx.registry.register(&mut src, self.token, want)?;
                } else {
                    ctx.registry.reregister(&mut src, self.token, want)?;
                }
            }
            Io::Container(x) => {
                let Some(stream) = x.stream() else {
                    return Ok(());
                };
                if first {
                    ctx.registry.register(stream, self.token, want)?;
                } else {
                    ctx.registry.reregister(stream, self.token, want)?;
                }
            }
            Io::Closed => return Ok(()),
        }
        self.registered = Some(want);
        Ok(())
    }

    fn deregister(&mut self, ctx: &mut Ctx<'_>) {
        if self.registered.take().is_none() {
            return;
        }
        match &mut self.io {
            Io::Host(p) => {
                if let Some(fd) = p.raw_fd() {
                    let _ = ctx.registry.deregister(&mut SourceFd(&fd));
                }
            }
            Io::Container(x) => {
                if let Some(stream) = x.stream() {
                    let _ = ctx.registry.deregister(stream);
                }
            }
            Io::Closed => {}
        }
    }

    fn close_io(&mut self, ctx: &mut Ctx<'_>) {
        self.deregister(ctx);
        self.io = Io::Closed;
    }
}

impl TimerKind for TerminalTimer {
    const ALL: &'static [TerminalTimer] = &[TerminalTimer::Tick, TerminalTimer::Engine];
}

impl Source for Terminals {
    fn ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if self.owns(token) {
            self.on_ready(ctx, token);
        }
    }

    fn timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, kind: u8) {
        if let Some(t) = TerminalTimer::from_code(kind) {
            self.on_timer(ctx, id, t);
        }
    }

    fn signals(&mut self, ctx: &mut Ctx<'_>, set: SignalSet) {
        if set.contains(libc::SIGCHLD) {
            self.on_sigchld(ctx);
        }
    }

    fn wants_again(&self) -> bool {
        Terminals::wants_again(self)
    }

    fn again(&mut self, ctx: &mut Ctx<'_>) {
        self.on_again(ctx);
    }
}

impl Feature for Terminals {
    fn families(&self) -> &'static [Family] {
        &[Family::Terminal]
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        Terminals::on_link(self, ctx, event);
    }

    fn next_message(&mut self) -> Option<Outgoing> {
        Terminals::next_message(self)
    }
}
