//! The reactor: the one mio `Poll`, tokens that name their source, a
//! min-heap of timers keyed by source, the signal self-pipe, and the
//! [`Source`] trait. It names no feature: the runner (`runner.rs`) lists
//! the sources and hands them over as a [`Sources`] set each turn.
//! Single-threaded; the only other thread is the DNS helper, which wakes
//! the loop through a `mio::Waker` on a token of the connection's.
//!
//! ```text
//!   runner, each turn:
//!   ┌──────────────────────────────────────────────────────────────────┐
//!   │ fire_timers: each due timer ─▶ its source's timer(id, kind)      │
//!   │ (the runner's own work: pump the link, cross-feature news)       │
//!   │ wait: poll(timeout = next timer, or 0 if a source wants again)   │
//!   │   SIGNALS token ─▶ drain the self-pipe ─▶ every source's signals │
//!   │                    (the set the drain brought, once)             │
//!   │   other tokens  ─▶ the source named in the token: ready(token)   │
//!   │   go again (capped passes): each source that wants_again         │
//!   └──────────────────────────────────────────────────────────────────┘
//! ```
//!
//! A token is `(sequence << SOURCE_BITS) | source`: finding the source of
//! an event is a mask, no table to grow or to clean, and a sequence is
//! never handed out twice, so an event for a dropped socket cannot be
//! mistaken for its successor's (the source ignores a token it no longer
//! holds). No busy loop: the poll sleeps until the next timer or event.

pub mod timers;

use crate::signals::Signals;
use mio::{Events, Poll, Registry, Token};
use std::io;
use std::time::{Duration, Instant};
pub use timers::{TimerId, Timers};

/// Self-pipe of the signal handlers (sequence 0 of source 0: no source
/// is handed it).
pub const SIGNALS: Token = Token(0);
/// Low bits of a token that name its source.
const SOURCE_BITS: u32 = 4;
/// At most this many sources.
pub const MAX_SOURCES: usize = 1 << SOURCE_BITS;
/// Events per poll; more simply wait for the next turn.
const EVENT_CAPACITY: usize = 64;

/// A source's place in the runner's list (`0..MAX_SOURCES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceId(pub u8);

impl SourceId {
    /// The source a token was handed to.
    pub fn of(token: Token) -> SourceId {
        SourceId((token.0 & (MAX_SOURCES - 1)) as u8)
    }
}

/// A source's own kinds of timer: a fieldless enum, listed once so the
/// reactor can keep a small number with the deadline and give the kind
/// back when it fires.
pub trait TimerKind: Copy + PartialEq + 'static {
    /// Every kind; a kind's number is its place here.
    const ALL: &'static [Self];

    fn code(self) -> u8 {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as u8
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

/// One thing in the loop: sockets, pipes and timers it took through its
/// [`Ctx`], and what it does when they fire.
pub trait Source {
    /// Readiness on a token this source took from its `Ctx`.
    fn ready(&mut self, ctx: &mut Ctx<'_>, token: Token);
    /// A timer it scheduled is due; `kind` is its [`TimerKind::code`].
    fn timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, kind: u8);
    /// Signals arrived (SIGCHLD: reap your children), each once per drain.
    fn signals(&mut self, _ctx: &mut Ctx<'_>, _set: SignalSet) {}
    /// A pass stopped at its cap: call [`again`](Self::again) before sleeping.
    fn wants_again(&self) -> bool {
        false
    }
    fn again(&mut self, _ctx: &mut Ctx<'_>) {}

    /// Hand over one [`Event`].
    fn dispatch(&mut self, ctx: &mut Ctx<'_>, event: Event) {
        match event {
            Event::Ready(token) => self.ready(ctx, token),
            Event::Timer(id, kind) => self.timer(ctx, id, kind),
            Event::Signals(set) => self.signals(ctx, set),
            Event::Again => self.again(ctx),
        }
    }
}

/// The signals one drain of the self-pipe brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalSet(u64);

impl SignalSet {
    pub fn insert(&mut self, signal: libc::c_int) {
        if (0..64).contains(&signal) {
            self.0 |= 1 << signal;
        }
    }

    pub fn contains(self, signal: libc::c_int) -> bool {
        (0..64).contains(&signal) && self.0 & (1 << signal) != 0
    }
}

/// What the reactor hands a source.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Ready(Token),
    Timer(TimerId, u8),
    Signals(SignalSet),
    /// Another pass after one that stopped at its cap.
    Again,
}

/// The sources of one run, by [`SourceId`]: the runner's list. Called
/// statically (no `dyn`: in the static binary each vtable entry costs a
/// relocation as well as the pointer).
pub trait Sources {
    /// How many; their ids are `0..count()`.
    fn count(&self) -> usize;
    /// Hand `event` to source `id` (`Source::dispatch`).
    fn dispatch(&mut self, id: SourceId, ctx: &mut Ctx<'_>, event: Event);
    /// Whether source `id` stopped at a cap (`Source::wants_again`).
    fn wants_again(&self, id: SourceId) -> bool;
}

/// What a source may touch while it handles an event: the registry, its
/// timers, fresh tokens, and the loop's idea of "now".
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    timers: &'a mut Timers<(SourceId, u8)>,
    next_seq: &'a mut usize,
    source: SourceId,
    pub now: Instant,
}

impl Ctx<'_> {
    /// A token never handed out before, naming this source.
    pub fn token(&mut self) -> Token {
        let t = Token(*self.next_seq << SOURCE_BITS | usize::from(self.source.0));
        *self.next_seq += 1;
        t
    }

    /// A timer of this source, due `after` from now.
    pub fn schedule(&mut self, after: Duration, kind: impl TimerKind) -> TimerId {
        self.timers
            .schedule(self.now + after, (self.source, kind.code()))
    }

    pub fn cancel(&mut self, id: TimerId) {
        self.timers.cancel(id);
    }

    /// The same context for another source (a link event it is handed by
    /// the runner): its tokens and timers come back to it.
    pub fn on_behalf(&mut self, source: SourceId) -> Ctx<'_> {
        Ctx {
            registry: self.registry,
            timers: self.timers,
            next_seq: self.next_seq,
            source,
            now: self.now,
        }
    }
}

/// Poll, events, timers and tokens.
pub struct Reactor {
    poll: Poll,
    events: Events,
    timers: Timers<(SourceId, u8)>,
    next_seq: usize,
}

impl Reactor {
    pub fn new() -> io::Result<Reactor> {
        Ok(Reactor {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENT_CAPACITY),
            timers: Timers::new(),
            next_seq: 1,
        })
    }

    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// A context for `source`, outside any event (start-up, the link pump).
    pub fn ctx(&mut self, source: SourceId) -> Ctx<'_> {
        Ctx {
            registry: self.poll.registry(),
            timers: &mut self.timers,
            next_seq: &mut self.next_seq,
            source,
            now: Instant::now(),
        }
    }

    /// Hand every due timer to its source.
    pub fn fire_timers<S: Sources>(&mut self, set: &mut S) {
        let now = Instant::now();
        while let Some((id, (source, kind))) = self.timers.pop_due(now) {
            set.dispatch(source, &mut self.ctx(source), Event::Timer(id, kind));
        }
    }

    /// Whether a source wants another pass before the loop sleeps.
    pub fn wants_again<S: Sources>(set: &S) -> bool {
        (0..set.count()).any(|i| set.wants_again(SourceId(i as u8)))
    }

    /// Sleep until the next timer, an event, or `limit`; then hand each
    /// event to its source (signals to all) and give the sources that
    /// stopped at a cap another pass.
    pub fn wait<S: Sources>(
        &mut self,
        set: &mut S,
        signals: Option<&Signals>,
        limit: Option<Instant>,
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut timeout = if Self::wants_again(set) {
            Some(Duration::ZERO)
        } else {
            self.timers
                .next_deadline()
                .map(|at| at.saturating_duration_since(now))
        };
        if let Some(d) = limit {
            let left = d.saturating_duration_since(now);
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // Copy the tokens out: handlers need the reactor mutably.
        let mut ready = [Token(0); EVENT_CAPACITY];
        let mut n = 0;
        for event in self.events.iter() {
            ready[n] = event.token();
            n += 1;
        }
        for &token in &ready[..n] {
            if token == SIGNALS {
                let mut seen = SignalSet::default();
                if let Some(s) = signals {
                    s.drain(|sig| seen.insert(sig))?;
                }
                for i in 0..set.count() {
                    let id = SourceId(i as u8);
                    set.dispatch(id, &mut self.ctx(id), Event::Signals(seen));
                }
                continue;
            }
            let source = SourceId::of(token);
            if usize::from(source.0) < set.count() {
                set.dispatch(source, &mut self.ctx(source), Event::Ready(token));
            }
        }
        for i in 0..set.count() {
            let id = SourceId(i as u8);
            if set.wants_again(id) {
                set.dispatch(id, &mut self.ctx(id), Event::Again);
            }
        }
        Ok(())
    }

    /// One poll (up to `timeout`), for tests that drive a source by hand:
    /// the ready tokens and the timers now due (with their kind codes).
    #[cfg(test)]
    pub(crate) fn turn(&mut self, timeout: Duration) -> (Vec<Token>, Vec<(TimerId, u8)>) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
        }
        let tokens = self.events.iter().map(|e| e.token()).collect();
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some((id, (_, kind))) = self.timers.pop_due(now) {
            due.push((id, kind));
        }
        (tokens, due)
    }

    /// A context for tests that call a source directly (source 0).
    #[cfg(test)]
    pub(crate) fn test_ctx(&mut self) -> Ctx<'_> {
        self.ctx(SourceId(0))
    }

    /// Drive one source alone, for its tests: timers, readiness and capped
    /// passes as in the runner, until `done` says so (checked every turn)
    /// or the deadline passes (`false`).
    #[cfg(test)]
    pub(crate) fn drive<S: Source>(
        &mut self,
        source: &mut S,
        deadline: Instant,
        mut done: impl FnMut(&mut S, &mut Ctx<'_>) -> bool,
    ) -> bool {
        struct One<'a, S>(&'a mut S);
        impl<S: Source> Sources for One<'_, S> {
            fn count(&self) -> usize {
                1
            }
            fn dispatch(&mut self, _: SourceId, ctx: &mut Ctx<'_>, event: Event) {
                self.0.dispatch(ctx, event);
            }
            fn wants_again(&self, _: SourceId) -> bool {
                self.0.wants_again()
            }
        }
        let mut set = One(source);
        loop {
            self.fire_timers(&mut set);
            if done(set.0, &mut self.ctx(SourceId(0))) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let limit = now + Duration::from_millis(50);
            self.wait(&mut set, None, Some(limit.min(deadline)))
                .expect("poll");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctx_tokens_are_fresh_and_name_their_source() {
        let mut r = Reactor::new().unwrap();
        let mut ctx = r.ctx(SourceId(3));
        let a = ctx.token();
        let b = ctx.token();
        assert_ne!(a, b);
        assert_eq!(SourceId::of(a), SourceId(3));
        assert_eq!(SourceId::of(b), SourceId(3));
        assert_ne!(a, SIGNALS);
        let c = r.ctx(SourceId(5)).token();
        assert_eq!(SourceId::of(c), SourceId(5));
        assert!(c.0 > b.0);
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Kind {
        A,
        B,
    }
    impl TimerKind for Kind {
        const ALL: &'static [Kind] = &[Kind::A, Kind::B];
    }

    #[test]
    fn timer_kinds_round_trip() {
        assert_eq!(Kind::from_code(Kind::B.code()), Some(Kind::B));
        assert_eq!(Kind::from_code(Kind::A.code()), Some(Kind::A));
        assert_eq!(Kind::from_code(7), None);
    }
}
