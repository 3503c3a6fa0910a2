//! `tether run` in the loop: the connection and the feature list. This is
//! the only file that names every feature; the reactor and the connection
//! name none.
//!
//! Each turn: the reactor fires due timers; the news one feature has for
//! another is handed over (Docker's engine version and running containers
//! to telemetry, its engine to terminals); the connection pumps the link
//! (link events routed by family, then the features' messages in list
//! order, which is their priority); an exit asked for by a feature closes
//! the connection; then the reactor waits and dispatches.
//!
//! Where a new feature goes (docs/runner.md): its folder with a type
//! implementing `link::Feature` and `reactor::Source`, its settings in
//! [`RunConfig`], its line in the `features!` list below and its
//! constructor in [`run_until`]. The list expands to plain calls, no trait
//! objects: in the static binary each vtable entry costs a relocation.

use crate::conn::{ConnConfig, Connection};
use crate::docker::client::{Docker, DockerConfig};
use crate::jobs::{Jobs, JobsConfig};
use crate::link::{Exit, Feature, Feed, FeedFigures, LinkEvent, Outgoing};
use crate::net::dns::Resolver;
use crate::protocol::Message as Control;
use crate::reactor::{Ctx, Event, Reactor, Source, SourceId, Sources, SIGNALS};
use crate::signals::Signals;
use crate::telemetry::{Telemetry, TelemetryConfig};
use crate::terminal::{TerminalConfig, Terminals};
use crate::trust::gate::Gate;
use crate::trust::{TrustConfig, Verifier};
use crate::update::feed::UpdateFeed;
use crate::update::UpdateConfig;
use mio::Waker;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything `tether run` decided before the loop starts: the
/// connection's settings and each feature's own.
#[derive(Clone)]
pub struct RunConfig {
    pub conn: ConnConfig,
    /// Metrics and fingerprint.
    pub telemetry: TelemetryConfig,
    /// The Docker engine; `None` switches the integration off.
    pub docker: Option<DockerConfig>,
    /// Jobs (scripts, deployments); `None`: switched off on this host.
    pub jobs: Option<JobsConfig>,
    /// Self-update settings; `None` ignores `update` offers entirely.
    pub update: Option<UpdateConfig>,
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
    pub terminals: TerminalConfig,
    /// Which actions need an operator's signature, and the trusted keys
    /// (`trust/`): checked by the gate and by jobs.
    pub trust: TrustConfig,
}

impl RunConfig {
    /// What the host owner switched off, for `status.json` (`tether status`).
    pub fn switched_off(&self) -> Vec<String> {
        let docker_on = self.docker.is_some();
        [
            ("jobs", self.jobs.is_none()),
            ("docker", !docker_on),
            ("host terminal", !self.terminals.host_enabled),
            (
                "container terminal",
                docker_on && !self.terminals.container_enabled,
            ),
            (
                "container control",
                self.docker.as_ref().is_some_and(|d| !d.control_enabled),
            ),
        ]
        .into_iter()
        .filter(|(_, off)| *off)
        .map(|(what, _)| what.to_owned())
        .collect()
    }
}

/// The connection (source 0) and the features (sources 1…), and the
/// signature check terminals and container operations pass first.
struct Runner {
    conn: Connection,
    features: Features,
    gate: Gate,
}

/// The connection's place in the source list.
const CONN: SourceId = SourceId(0);

/// Declares [`Features`] from the list: a field per feature, the list as
/// link features, and the static dispatch of loop events by place.
macro_rules! features {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)*) => {
        /// The features of this runner.
        struct Features {
            $($(#[$doc])* $name: $ty,)*
        }

        /// How many features the list names.
        const FEATURES: usize = [$(stringify!($name)),*].len();

        impl Features {
            /// Before the first turn, in list order.
            fn start(&mut self, ctx: &mut Ctx<'_>) {
                let mut i = 0;
                $(
                    i += 1;
                    self.$name.start(&mut ctx.on_behalf(SourceId(i)));
                )*
            }

            /// Up and down to every feature, a message to the one owning
            /// its family.
            fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
                let family = event.family();
                let mut i = 0;
                $(
                    i += 1;
                    let mut ctx = ctx.on_behalf(SourceId(i));
                    match (family, event.to_all()) {
                        (None, Some(copy)) => Feature::on_link(&mut self.$name, &mut ctx, copy),
                        (Some(fam), _) if self.$name.families().contains(&fam) => {
                            return Feature::on_link(&mut self.$name, &mut ctx, event);
                        }
                        _ => {}
                    }
                )*
            }

            /// The first exit a feature asks for, in list order.
            fn take_exit(&mut self) -> Option<Exit> {
                $(
                    if let Some(exit) = Feature::take_exit(&mut self.$name) {
                        return Some(exit);
                    }
                )*
                None
            }

            /// The first message in list order.
            fn next_message(&mut self) -> Option<Outgoing> {
                $(
                    if let Some(m) = Feature::next_message(&mut self.$name) {
                        return Some(m);
                    }
                )*
                None
            }

            /// Hand a loop event to the feature at `place`.
            fn dispatch(&mut self, place: usize, ctx: &mut Ctx<'_>, event: Event) {
                let mut i = 0;
                $(
                    if i == place {
                        return self.$name.dispatch(ctx, event);
                    }
                    i += 1;
                )*
                let _ = i;
            }

            fn wants_again(&self, place: usize) -> bool {
                let mut i = 0;
                $(
                    if i == place {
                        return Source::wants_again(&self.$name);
                    }
                    i += 1;
                )*
                let _ = i;
                false
            }
        }
    };
}

// The feature list, in the order they send (first: keystroke echo before
// bulk): terminals, update reports (rare and small), Docker (answers,
// container events, log lines), jobs, then telemetry. A feature's
// `SourceId` is its place here + 1.
features! {
    terminals: Terminals,
    update: UpdateFeed,
    docker: Docker,
    jobs: Jobs,
    telemetry: Telemetry,
}

impl Features {
    /// Docker's news for telemetry.
    fn hand_over_news(&mut self) {
        if let Some(v) = self.docker.take_version_change() {
            self.telemetry.set_docker_version(v);
        }
        if let Some(list) = self.docker.take_running_change() {
            self.telemetry.set_containers(list);
        }
    }
}

impl Sources for Runner {
    fn count(&self) -> usize {
        1 + FEATURES
    }

    fn dispatch(&mut self, id: SourceId, ctx: &mut Ctx<'_>, event: Event) {
        match usize::from(id.0) {
            0 => self.conn.dispatch(ctx, event),
            i => self.features.dispatch(i - 1, ctx, event),
        }
    }

    fn wants_again(&self, id: SourceId) -> bool {
        match usize::from(id.0) {
            0 => self.conn.wants_again(),
            i => self.features.wants_again(i - 1),
        }
    }
}

/// The link's side of the feature list: events by family (screened by
/// the gate), messages in list order after the gate's refusals.
struct FeedOf<'a>(&'a mut Features, &'a mut Gate);

impl Feed for FeedOf<'_> {
    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        if let LinkEvent::Message { id, body } = &event {
            if !self.1.screen(*id, body) {
                return;
            }
            if let Control::TermOpen(_) = **body {
                // A container terminal runs in Docker's engine.
                self.0.terminals.set_engine(self.0.docker.engine());
            }
        }
        self.0.on_link(ctx, event);
    }

    fn next_message(&mut self) -> Option<Outgoing> {
        self.1.next_message().or_else(|| self.0.next_message())
    }

    fn figures(&self) -> Option<FeedFigures> {
        self.0.telemetry.figures()
    }

    fn terminals(&self) -> usize {
        self.0.terminals.len()
    }
}

/// Run the connection until it stops (signal, revocation). `signals` is
/// `None` in tests that stop the loop another way.
pub fn run(cfg: RunConfig, signals: Option<&Signals>) -> io::Result<Exit> {
    run_until(cfg, signals, None)
}

/// [`run`] with an optional deadline, for tests: once it passes the loop
/// returns `Err(TimedOut)`.
pub fn run_until(
    mut cfg: RunConfig,
    signals: Option<&Signals>,
    deadline: Option<Instant>,
) -> io::Result<Exit> {
    let mut reactor = Reactor::new()?;
    let dns_token = reactor.ctx(CONN).token();
    let waker = Arc::new(Waker::new(reactor.registry(), dns_token)?);
    cfg.conn.metrics_interval_ms = cfg.telemetry.metrics_interval_ms();
    cfg.conn.switched_off = cfg.switched_off();
    let verifier = Rc::new(RefCell::new(Verifier::new(cfg.trust, now_ms())));
    let features = Features {
        telemetry: Telemetry::new(&cfg.telemetry, Instant::now()),
        docker: Docker::new(cfg.docker),
        jobs: Jobs::new(cfg.jobs, verifier.clone()),
        update: UpdateFeed::new(
            cfg.update,
            cfg.update_trial,
            cfg.update_off,
            cfg.health_deadline,
        ),
        terminals: Terminals::new(cfg.terminals),
    };
    let mut r = Runner {
        conn: Connection::new(cfg.conn, Resolver::new(waker), dns_token),
        features,
        gate: Gate::new(verifier),
    };
    if let Some(s) = signals {
        s.register(reactor.registry(), SIGNALS)?;
    }
    r.conn.start(&mut reactor.ctx(CONN));
    r.features.start(&mut reactor.ctx(CONN));

    loop {
        if let Some(exit) = r.conn.exit() {
            return Ok(exit.clone());
        }
        // Timers first: they may change what the poll should wait for.
        reactor.fire_timers(&mut r);
        r.features.hand_over_news();
        let mut ctx = reactor.ctx(CONN);
        r.conn
            .pump(&mut ctx, &mut FeedOf(&mut r.features, &mut r.gate));
        match r.features.take_exit() {
            // Nothing to close: it never connected.
            Some(Exit::Unhealthy) => return Ok(Exit::Unhealthy),
            Some(exit) => r.conn.shutdown_with(&mut ctx, exit, "runner updating"),
            None => {}
        }
        if let Some(exit) = r.conn.exit() {
            return Ok(exit.clone());
        }

        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "event loop deadline passed",
            ));
        }
        reactor.wait(&mut r, signals, deadline)?;
    }
}
