//! The one event loop: a mio `Poll`, token allocation, a min-heap of timers,
//! and dispatch to the sources. Single-threaded; the only other thread is
//! the DNS helper, which wakes the loop through a `mio::Waker`.
//!
//! ```text
//!   ┌───────────────────────────────────────────────────────────────────────┐
//!   │ fire due timers (conn, telemetry, docker, jobs, terminals)            │
//!   │ docker's news (engine version, running containers) ─▶ telemetry       │
//!   │ conn.pump(feeds): link events to the feeds, their messages out:       │
//!   │   terminals first, then update, docker (replies, logs), jobs,         │
//!   │   then telemetry                                                      │
//!   │ poll(timeout = next timer, or 0 if a source asked to go again)        │
//!   │   SIGNALS token ─▶ drain self-pipe ─▶ SIGCHLD: telemetry, jobs and    │
//!   │                                       terminals reap their own        │
//!   │                                       SIGTERM/INT: conn.shutdown()    │
//!   │                                       SIGUSR1: update from the file   │
//!   │   DNS token     ─▶ conn.on_dns()                                      │
//!   │   pty / exec    ─▶ terminals.on_ready(token)                          │
//!   │   probe pipes   ─▶ telemetry.on_ready(token)                          │
//!   │   engine calls  ─▶ docker.on_ready(token)                             │
//!   │   job pipes, deploy engine calls ─▶ jobs.on_ready(token)              │
//!   │   other tokens  ─▶ conn.on_ready(token)                               │
//!   │ go again (capped passes): conn, telemetry, docker, jobs, terminals    │
//!   └──────────────── until conn.exit() is set ─────────────────────────────┘
//! ```
//!
//! No busy loop: the poll sleeps until the next timer or event. Timers are
//! cancelled by id (the heap is tiny, so `retain` is fine).

use crate::conn::dns::Resolver;
use crate::conn::{
    ConnConfig, ConnTimer, Connection, Exit, Feed, FeedFigures, LinkEvent, Outgoing,
};
use crate::docker::client::{Docker, DockerTimer};
use crate::jobs::{JobTimer, Jobs};
use crate::signals::{self, Signals};
use crate::telemetry::{Telemetry, TelemetryTimer};
use crate::terminal::{TerminalTimer, Terminals};
use crate::update::feed::UpdateFeed;
use crate::{debug, info};
use mio::{Events, Poll, Registry, Token, Waker};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Self-pipe of the signal handlers.
pub const SIGNALS: Token = Token(0);
/// The DNS helper's waker.
pub const DNS_WAKER: Token = Token(1);
/// Tokens from here on are handed out to sockets, never reused.
const FIRST_DYNAMIC_TOKEN: usize = 16;
/// Events per poll; more simply wait for the next turn.
const EVENT_CAPACITY: usize = 64;

/// Everything that can be scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    Conn(ConnTimer),
    Telemetry(TelemetryTimer),
    Docker(DockerTimer),
    Jobs(JobTimer),
    Terminal(TerminalTimer),
}

/// What the connection sends besides its own traffic: terminals first
/// (keystroke echo goes ahead of bulk), update reports (rare and small),
/// Docker (answers to the server's requests, container events, log lines),
/// jobs (results, output), then telemetry.
struct Feeds<'a> {
    terminals: &'a mut Terminals,
    update: &'a mut UpdateFeed,
    docker: &'a mut Docker,
    jobs: &'a mut Jobs,
    telemetry: &'a mut Telemetry,
}

impl Feed for Feeds<'_> {
    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        match event {
            LinkEvent::ChannelAck { channel, .. } | LinkEvent::ChannelData { channel, .. }
                if Terminals::is_terminal_channel(channel) =>
            {
                self.terminals.on_link(ctx, event, None)
            }
            LinkEvent::TermOpen { .. } => {
                let engine = self.docker.engine();
                self.terminals.on_link(ctx, event, engine)
            }
            LinkEvent::TermResize(_) | LinkEvent::TermClose(_) | LinkEvent::ChannelData { .. } => {
                self.terminals.on_link(ctx, event, None)
            }
            LinkEvent::DockerRequest { .. }
            | LinkEvent::LogOpen { .. }
            | LinkEvent::LogClose(_) => self.docker.on_link(ctx, event),
            LinkEvent::JobStart { .. } | LinkEvent::JobCancel(_) | LinkEvent::JobResultAck(_) => {
                self.jobs.on_link(ctx, event)
            }
            // Job channels and log channels never share a number.
            LinkEvent::ChannelAck { channel, .. } => {
                if channel < crate::protocol::FIRST_CONNECTION_CHANNEL {
                    self.jobs.on_link(ctx, event)
                } else {
                    self.docker.on_link(ctx, event)
                }
            }
            LinkEvent::UpdateOffer(offer) => self.update.on_offer(offer),
            other => {
                if let LinkEvent::Up { .. } = other {
                    self.update.on_up();
                }
                self.terminals.on_link(ctx, other.clone(), None);
                self.docker.on_link(ctx, other.clone());
                self.jobs.on_link(ctx, other.clone());
                self.telemetry.on_link(ctx, other);
            }
        }
    }

    fn next_message(&mut self) -> Option<Outgoing> {
        self.terminals
            .next_message()
            .or_else(|| self.update.next_message())
            .or_else(|| self.docker.next_message())
            .or_else(|| self.jobs.next_message())
            .or_else(|| self.telemetry.next_message())
    }

    fn figures(&self) -> Option<FeedFigures> {
        self.telemetry.figures()
    }

    fn terminals(&self) -> usize {
        self.terminals.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

struct Entry<K> {
    at: Instant,
    id: u64,
    kind: K,
}

impl<K> PartialEq for Entry<K> {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.id == o.id
    }
}
impl<K> Eq for Entry<K> {}
impl<K> PartialOrd for Entry<K> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<K> Ord for Entry<K> {
    /// Reversed: `BinaryHeap` is a max-heap and we want the earliest first;
    /// ties go to the one scheduled first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.cmp(&self.at).then(o.id.cmp(&self.id))
    }
}

/// A min-heap of deadlines.
pub struct Timers<K> {
    heap: BinaryHeap<Entry<K>>,
    next_id: u64,
}

impl<K: Copy> Timers<K> {
    pub fn new() -> Timers<K> {
        Timers {
            heap: BinaryHeap::new(),
            next_id: 0,
        }
    }

    pub fn schedule(&mut self, at: Instant, kind: K) -> TimerId {
        self.next_id += 1;
        self.heap.push(Entry {
            at,
            id: self.next_id,
            kind,
        });
        TimerId(self.next_id)
    }

    pub fn cancel(&mut self, id: TimerId) {
        self.heap.retain(|e| e.id != id.0);
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// The earliest timer due at `now`, removed from the heap.
    pub fn pop_due(&mut self, now: Instant) -> Option<(TimerId, K)> {
        if self.heap.peek()?.at > now {
            return None;
        }
        self.heap.pop().map(|e| (TimerId(e.id), e.kind))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

impl<K: Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers::new()
    }
}

/// What a source may touch while it handles an event: the registry, the
/// timers, fresh tokens, and the loop's idea of "now".
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    timers: &'a mut Timers<Timer>,
    next_token: &'a mut usize,
    pub now: Instant,
}

impl Ctx<'_> {
    /// A token never handed out before, so events for a dropped socket
    /// cannot be mistaken for its successor's.
    pub fn token(&mut self) -> Token {
        let t = Token(*self.next_token);
        *self.next_token += 1;
        t
    }

    pub fn schedule(&mut self, after: Duration, timer: Timer) -> TimerId {
        self.timers.schedule(self.now + after, timer)
    }

    pub fn cancel(&mut self, id: TimerId) {
        self.timers.cancel(id);
    }
}

/// Poll, events, timers and tokens.
pub struct EventLoop {
    poll: Poll,
    events: Events,
    timers: Timers<Timer>,
    next_token: usize,
}

impl EventLoop {
    pub fn new() -> io::Result<EventLoop> {
        Ok(EventLoop {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENT_CAPACITY),
            timers: Timers::new(),
            next_token: FIRST_DYNAMIC_TOKEN,
        })
    }

    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            registry: self.poll.registry(),
            timers: &mut self.timers,
            next_token: &mut self.next_token,
            now: Instant::now(),
        }
    }

    /// Run the connection until it stops (signal, revocation). `signals`
    /// is `None` in tests that stop the loop another way.
    pub fn run(self, cfg: ConnConfig, signals: Option<&Signals>) -> io::Result<Exit> {
        self.run_until(cfg, signals, None)
    }

    /// [`run`](Self::run) with an optional deadline, for tests: once it
    /// passes the loop returns `Err(TimedOut)`.
    pub fn run_until(
        mut self,
        cfg: ConnConfig,
        signals: Option<&Signals>,
        deadline: Option<Instant>,
    ) -> io::Result<Exit> {
        let waker = Arc::new(Waker::new(self.poll.registry(), DNS_WAKER)?);
        let mut telemetry = Telemetry::new(&cfg.telemetry, Instant::now());
        let mut docker = Docker::new(cfg.docker.clone());
        let mut jobs = Jobs::new(cfg.jobs.clone());
        let mut update = UpdateFeed::new(
            cfg.update.clone(),
            cfg.update_trial.clone(),
            cfg.update_off.clone(),
            cfg.health_deadline.is_some(),
        );
        // A new version on probation must connect by then (update/mod.rs).
        let health_deadline = cfg.health_deadline.map(|d| Instant::now() + d);
        let cfg_update = cfg.update.is_some() && cfg.update_trial.is_none();
        let mut terminals = Terminals::new(cfg.terminals.clone());
        let mut conn = Connection::new(cfg, Resolver::new(waker));
        if let Some(s) = signals {
            s.register(self.poll.registry(), SIGNALS)?;
        }
        conn.start(&mut self.ctx());
        telemetry.start(&mut self.ctx());
        docker.start(&mut self.ctx());

        loop {
            if let Some(exit) = conn.exit() {
                return Ok(exit.clone());
            }
            // Timers first: they may change what the poll should wait for.
            let now = Instant::now();
            while let Some((id, timer)) = self.timers.pop_due(now) {
                let mut ctx = self.ctx();
                match timer {
                    Timer::Conn(t) => conn.on_timer(&mut ctx, id, t),
                    Timer::Telemetry(t) => telemetry.on_timer(&mut ctx, id, t),
                    Timer::Docker(t) => docker.on_timer(&mut ctx, id, t),
                    Timer::Jobs(t) => jobs.on_timer(&mut ctx, id, t),
                    Timer::Terminal(t) => terminals.on_timer(&mut ctx, id, t),
                }
            }
            if let Some(v) = docker.take_version_change() {
                telemetry.set_docker_version(v);
            }
            if let Some(list) = docker.take_running_change() {
                telemetry.set_containers(list);
            }
            let mut feeds = Feeds {
                update: &mut update,
                terminals: &mut terminals,
                docker: &mut docker,
                jobs: &mut jobs,
                telemetry: &mut telemetry,
            };
            conn.pump(&mut self.ctx(), &mut feeds);
            if let Some(exit) = update.take_exit() {
                conn.shutdown_with(&mut self.ctx(), exit, "runner updating");
            }
            if let Some(exit) = conn.exit() {
                return Ok(exit.clone());
            }

            let now = Instant::now();
            let probation = health_deadline.filter(|_| update.on_probation());
            if probation.is_some_and(|d| now >= d) {
                return Ok(Exit::Unhealthy);
            }
            if deadline.is_some_and(|d| now >= d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "event loop deadline passed",
                ));
            }
            let mut timeout = if conn.wants_again()
                || telemetry.wants_again()
                || docker.wants_again()
                || jobs.wants_again()
                || terminals.wants_again()
            {
                Some(Duration::ZERO)
            } else {
                self.timers
                    .next_deadline()
                    .map(|at| at.saturating_duration_since(now))
            };
            for d in [deadline, probation].into_iter().flatten() {
                let left = d.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }

            // Copy the tokens out: handlers need the loop mutably.
            let mut ready = [Token(0); EVENT_CAPACITY];
            let mut n = 0;
            for event in self.events.iter() {
                ready[n] = event.token();
                n += 1;
            }
            for &token in &ready[..n] {
                let mut ctx = self.ctx();
                match token {
                    SIGNALS => {
                        let (mut stop, mut child, mut incoming) = (false, false, false);
                        if let Some(s) = signals {
                            s.drain(|sig| {
                                if sig == libc::SIGCHLD {
                                    child = true;
                                    return;
                                }
                                if sig == libc::SIGUSR1 {
                                    incoming = true;
                                    return;
                                }
                                info!("main", "received {}; shutting down", signals::name(sig));
                                stop |= sig == libc::SIGTERM || sig == libc::SIGINT;
                            })?;
                        }
                        if child {
                            telemetry.on_sigchld(&mut ctx);
                            jobs.on_sigchld(&mut ctx);
                            terminals.on_sigchld(&mut ctx);
                        }
                        if stop {
                            conn.shutdown(&mut ctx);
                        } else if incoming && cfg_update {
                            info!(
                                "main",
                                "received SIGUSR1: installing the release in the state dir"
                            );
                            conn.shutdown_with(&mut ctx, Exit::UpdateFromFile, "runner updating");
                        }
                    }
                    DNS_WAKER => conn.on_dns(&mut ctx),
                    t if terminals.owns(t) => terminals.on_ready(&mut ctx, t),
                    t if telemetry.owns(t) => telemetry.on_ready(&mut ctx, t),
                    t if docker.owns(t) => docker.on_ready(&mut ctx, t),
                    t if jobs.owns(t) => jobs.on_ready(&mut ctx, t),
                    t => conn.on_ready(&mut ctx, t),
                }
            }
            if conn.wants_again() {
                debug!("loop", "driving the connection again after a capped pass");
                conn.on_again(&mut self.ctx());
            }
            if telemetry.wants_again() {
                telemetry.on_again(&mut self.ctx());
            }
            if docker.wants_again() {
                docker.on_again(&mut self.ctx());
            }
            if jobs.wants_again() {
                jobs.on_again(&mut self.ctx());
            }
            if terminals.wants_again() {
                terminals.on_again(&mut self.ctx());
            }
        }
    }

    /// Drive only a [`Docker`] client, for its tests: timers, readiness and
    /// capped passes as in [`run_until`](Self::run_until), until `done`
    /// says so (checked every turn) or the deadline passes (`false`).
    #[cfg(test)]
    pub(crate) fn drive_docker(
        &mut self,
        docker: &mut Docker,
        deadline: Instant,
        mut done: impl FnMut(&mut Docker, &mut Ctx<'_>) -> bool,
    ) -> bool {
        loop {
            let now = Instant::now();
            while let Some((id, timer)) = self.timers.pop_due(now) {
                if let Timer::Docker(t) = timer {
                    docker.on_timer(&mut self.ctx(), id, t);
                }
            }
            if done(docker, &mut self.ctx()) {
                return true;
            }
            if now >= deadline {
                return false;
            }
            let timeout = if docker.wants_again() {
                Duration::ZERO
            } else {
                let next = self
                    .timers
                    .next_deadline()
                    .unwrap_or(deadline)
                    .min(deadline);
                next.saturating_duration_since(now)
                    .min(Duration::from_millis(50))
            };
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("poll: {e}"),
            }
            let tokens: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
            for t in tokens {
                if docker.owns(t) {
                    docker.on_ready(&mut self.ctx(), t);
                }
            }
            if docker.wants_again() {
                docker.on_again(&mut self.ctx());
            }
        }
    }

    /// One poll (up to `timeout`), for tests that drive a source by hand:
    /// the ready tokens and the timers now due.
    #[cfg(test)]
    pub(crate) fn turn(&mut self, timeout: Duration) -> (Vec<Token>, Vec<(TimerId, Timer)>) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
        }
        let tokens = self.events.iter().map(|e| e.token()).collect();
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(t) = self.timers.pop_due(now) {
            due.push(t);
        }
        (tokens, due)
    }

    /// A context for tests that call a source directly.
    #[cfg(test)]
    pub(crate) fn test_ctx(&mut self) -> Ctx<'_> {
        self.ctx()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_pop_in_deadline_order_and_cancel() {
        let t0 = Instant::now();
        let mut t: Timers<u8> = Timers::new();
        let c = t.schedule(t0 + Duration::from_millis(30), 3);
        let a = t.schedule(t0 + Duration::from_millis(10), 1);
        let _b = t.schedule(t0 + Duration::from_millis(20), 2);
        let _b2 = t.schedule(t0 + Duration::from_millis(20), 22);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        t.cancel(c);
        assert_eq!(t.len(), 3);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(t.pop_due(later), Some((a, 1)));
        assert_eq!(t.pop_due(later).map(|x| x.1), Some(2));
        assert_eq!(t.pop_due(later).map(|x| x.1), Some(22));
        assert_eq!(t.pop_due(later), None);
        assert!(t.is_empty());
    }

    #[test]
    fn ctx_tokens_are_fresh() {
        let mut el = EventLoop::new().unwrap();
        let mut ctx = el.ctx();
        let a = ctx.token();
        let b = ctx.token();
        assert!(a.0 >= FIRST_DYNAMIC_TOKEN && b.0 == a.0 + 1);
        assert_ne!(a, SIGNALS);
        assert_ne!(a, DNS_WAKER);
    }
}
