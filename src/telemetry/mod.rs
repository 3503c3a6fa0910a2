//! Host telemetry on the event loop: metrics sampled on a timer into the
//! backlog, the fingerprint collected on another (with the firewall
//! commands as child processes of the loop), both handed to the
//! connection as its lowest-priority feature (`link::Feature`).
//!
//! ```text
//!  Sample timer ─▶ Sampler::sample ─▶ Encoder ─▶ Backlog (bounded; kept until metrics_ack)
//!                     └ notes: logged once each                       │
//!  Fingerprint timer,                                                 │ next_message(): only while
//!  link up, resync ─▶ FirewallProbe (nft | iptables-save, children)   │ the link has room
//!                        └ done ─▶ collect ─▶ Sequencer ─▶ pending ───┤
//!                                                                     ▼
//!                  connection ◀── fingerprint, then metrics_schema / METRICS frames (≤ 32 KiB)
//!
//!  link events from the connection:
//!    Up{metrics_ts} ─▶ backlog.ack_through(metrics_ts), backlog.restart(); full fingerprint now
//!    MetricsAck(ts) ─▶ backlog.ack_sent_through(ts) (never past what this link sent)
//!    FingerprintResync ─▶ full fingerprint now
//!    Down ─▶ stop collecting fingerprints (the next connection gets a full one anyway)
//! ```
//!
//! Sampling keeps going whatever the connection does; nothing here
//! blocks except the /proc reads of a tick and of a fingerprint.

pub mod fingerprint;

use crate::link::{Family, Feature, FeedFigures, LinkEvent, Outgoing};
use crate::metrics::backlog::{Backlog, Item, Next, DEFAULT_BUDGET};
use crate::metrics::containers::RunningContainer;
use crate::metrics::sample::Sampler;
use crate::metrics::wire::{push_to_batch, Encoder};
use crate::metrics::Note;
use crate::protocol::{
    self, FrameHeader, FrameKind, Message as Control, MetricsSchema, StreamTag, FRAME_HEADER_LEN,
    MAX_DATA_PAYLOAD,
};
use crate::reactor::{Ctx, SignalSet, Source, TimerId, TimerKind};
use crate::{debug, info, warn};
use fingerprint::{FirewallProbe, Sequencer};
use mio::Token;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Default fingerprint interval (docs/protocol.md §4a).
pub const DEFAULT_FINGERPRINT_INTERVAL: Duration = Duration::from_secs(60);
/// Largest record sent: one must fit a METRICS frame with its length prefix.
const MAX_RECORD: usize = MAX_DATA_PAYLOAD - 8;
/// Distinct notes remembered for "log once".
const MAX_REMEMBERED_NOTES: usize = 64;

/// What to collect and how often; `None` switches a part off.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub metrics_interval: Option<Duration>,
    pub fingerprint_interval: Option<Duration>,
    /// Bytes the metrics backlog may hold.
    pub backlog_budget: usize,
    /// The host's root for the fingerprint (`/`).
    pub root: PathBuf,
}

impl TelemetryConfig {
    pub fn new(
        metrics_interval: Option<Duration>,
        fingerprint_interval: Option<Duration>,
    ) -> TelemetryConfig {
        TelemetryConfig {
            metrics_interval,
            fingerprint_interval,
            backlog_budget: DEFAULT_BUDGET,
            root: PathBuf::from("/"),
        }
    }

    /// Nothing collected, nothing sent.
    pub fn off() -> TelemetryConfig {
        TelemetryConfig::new(None, None)
    }

    /// For `hello.metrics_interval_ms` (0: metrics off).
    pub fn metrics_interval_ms(&self) -> u64 {
        self.metrics_interval
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Timers telemetry sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryTimer {
    Sample,
    Fingerprint,
    /// A firewall command's deadline, or a check for its exit.
    Probe,
}

/// Logs each distinct note once.
#[derive(Debug, Default)]
struct NoteLog {
    seen: Vec<Note>,
}

impl NoteLog {
    fn log(&mut self, area: &str, notes: &[Note]) {
        for n in notes {
            if self.seen.contains(n) {
                continue;
            }
            if self.seen.len() < MAX_REMEMBERED_NOTES {
                info!("telemetry", "{area}: {n} (logged once)");
                self.seen.push(n.clone());
            } else {
                debug!("telemetry", "{area}: {n}");
            }
        }
    }
}

struct Metrics {
    interval: Duration,
    sampler: Sampler,
    encoder: Encoder,
    backlog: Backlog,
    record: Vec<u8>,
    notes: NoteLog,
    /// Timestamp of the last sample: the next is strictly later, so a
    /// clock stepped back never makes two records share a time.
    last_ts: Option<u64>,
    next_due: Instant,
    timer: Option<TimerId>,
    oversize_logged: bool,
    /// Sampling cost, for the debug log.
    ticks: u64,
    tick_us_total: u64,
    tick_us_max: u64,
}

impl Metrics {
    fn new(interval: Duration, budget: usize, now: Instant) -> Metrics {
        Metrics {
            interval,
            sampler: Sampler::new(),
            encoder: Encoder::new(),
            backlog: Backlog::new(budget),
            record: Vec::new(),
            notes: NoteLog::default(),
            last_ts: None,
            next_due: now,
            timer: None,
            oversize_logged: false,
            ticks: 0,
            tick_us_total: 0,
            tick_us_max: 0,
        }
    }

    fn tick(&mut self, now_ms: u64) {
        let t0 = Instant::now();
        let ts = match self.last_ts {
            Some(last) => now_ms.max(last + 1),
            None => now_ms,
        };
        self.last_ts = Some(ts);
        let (sample, notes) = self.sampler.sample(ts);
        let schema = self.encoder.encode(&sample, &mut self.record);
        if let Some(s) = schema {
            self.backlog.push_schema(s);
        }
        if self.record.len() > MAX_RECORD {
            if !self.oversize_logged {
                warn!(
                    "telemetry",
                    "a metrics record of {} bytes is too large to send; skipping such records",
                    self.record.len()
                );
                self.oversize_logged = true;
            }
            // The next record must not be a delta against this one.
            self.encoder.restart();
        } else {
            self.backlog.push_record(&self.record);
        }
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.ticks += 1;
        self.tick_us_total += us;
        self.tick_us_max = self.tick_us_max.max(us);
        if self.ticks.is_power_of_two() {
            debug!(
                "telemetry",
                "metrics tick {}: {us} µs (mean {} µs, max {} µs); backlog {} records, {} bytes, {} dropped",
                self.ticks,
                self.tick_us_total / self.ticks,
                self.tick_us_max,
                self.backlog.records(),
                self.backlog.bytes(),
                self.backlog.dropped()
            );
        }
        self.notes.log("metrics", &notes);
    }

    /// The schema control message, or one METRICS frame with as many
    /// records as fit in 32 KiB (stopping before a schema change).
    fn next_message(&mut self) -> Option<Outgoing> {
        match self.backlog.next_to_send()? {
            Item::Schema(schema) => {
                let msg = Control::MetricsSchema(MetricsSchema { schema });
                Some(Outgoing::Control(Box::new(msg)))
            }
            Item::Record(first) => {
                let header = FrameHeader {
                    kind: FrameKind::Metrics,
                    tag: StreamTag::None,
                    channel: 0,
                    seq: 0,
                };
                let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + first.len() + 4);
                frame.extend_from_slice(&header.encode());
                push_to_batch(&mut frame, &first);
                while let Some(Next::Record(n)) = self.backlog.peek() {
                    // varint length prefix: at most 3 bytes below 2 MiB.
                    if frame.len() - FRAME_HEADER_LEN + n + 3 > MAX_DATA_PAYLOAD {
                        break;
                    }
                    let Some(Item::Record(r)) = self.backlog.next_to_send() else {
                        break;
                    };
                    push_to_batch(&mut frame, &r);
                }
                Some(Outgoing::Binary(frame))
            }
        }
    }
}

struct Fingerprints {
    interval: Duration,
    root: PathBuf,
    seq: Sequencer,
    probe: Option<FirewallProbe>,
    /// Ready to send.
    pending: Option<protocol::FingerprintReport>,
    timer: Option<TimerId>,
    probe_timer: Option<TimerId>,
    notes: NoteLog,
}

/// Metrics and fingerprint, as the event loop drives them.
pub struct Telemetry {
    metrics: Option<Metrics>,
    fingerprint: Option<Fingerprints>,
    connected: bool,
    /// From the Docker integration: `20.10.24 (API 1.41)` while available.
    docker_version: Option<String>,
}

impl Telemetry {
    pub fn new(cfg: &TelemetryConfig, now: Instant) -> Telemetry {
        Telemetry {
            metrics: cfg
                .metrics_interval
                .map(|i| Metrics::new(i, cfg.backlog_budget, now)),
            fingerprint: cfg.fingerprint_interval.map(|interval| Fingerprints {
                interval,
                root: cfg.root.clone(),
                seq: Sequencer::new(),
                probe: None,
                pending: None,
                timer: None,
                probe_timer: None,
                notes: NoteLog::default(),
            }),
            connected: false,
            docker_version: None,
        }
    }

    /// The engine version for the next fingerprint (a change shows up
    /// there as a drift of `docker_version`).
    pub fn set_docker_version(&mut self, version: Option<String>) {
        self.docker_version = version;
    }

    /// The running containers whose figures join the metrics (from the
    /// Docker integration; empty when the engine is unavailable).
    pub fn set_containers(&mut self, list: Vec<RunningContainer>) {
        if let Some(m) = &mut self.metrics {
            m.sampler.set_containers(list);
        }
    }

    /// First sample now; fingerprints start with the first connection.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(m) = &mut self.metrics {
            info!("telemetry", "sampling metrics every {:?}", m.interval);
            m.next_due = ctx.now;
            m.timer = Some(ctx.schedule(Duration::ZERO, TelemetryTimer::Sample));
        }
        if let Some(f) = &self.fingerprint {
            info!(
                "telemetry",
                "collecting the host fingerprint every {:?}", f.interval
            );
        }
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, timer: TelemetryTimer) {
        match timer {
            TelemetryTimer::Sample => {
                let Some(m) = self.metrics.as_mut().filter(|m| m.timer == Some(id)) else {
                    return;
                };
                m.tick(crate::log::now_ms());
                // A fixed cadence, not "interval after the tick": no drift.
                // After a stall (suspend, a blocked loop) skip the missed ticks.
                m.next_due += m.interval;
                if m.next_due < ctx.now {
                    m.next_due = ctx.now + m.interval;
                }
                let after = m.next_due.saturating_duration_since(ctx.now);
                m.timer = Some(ctx.schedule(after, TelemetryTimer::Sample));
            }
            TelemetryTimer::Fingerprint => {
                let ours = self
                    .fingerprint
                    .as_ref()
                    .is_some_and(|f| f.timer == Some(id));
                if ours {
                    if let Some(f) = self.fingerprint.as_mut() {
                        f.timer = None;
                    }
                    self.collect_fingerprint(ctx);
                }
            }
            TelemetryTimer::Probe => {
                let ours = self
                    .fingerprint
                    .as_ref()
                    .is_some_and(|f| f.probe_timer == Some(id));
                if ours {
                    if let Some(f) = self.fingerprint.as_mut() {
                        f.probe_timer = None;
                    }
                    self.poll_probe(ctx);
                }
            }
        }
    }

    /// Whether `token` is a pipe of a child of ours.
    pub fn owns(&self, token: Token) -> bool {
        self.probe().is_some_and(|p| p.owns(token))
    }

    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if let Some(p) = self.probe_mut() {
            p.on_ready(ctx.registry, token);
        }
        self.poll_probe(ctx);
    }

    /// SIGCHLD arrived: reap what ended.
    pub fn on_sigchld(&mut self, ctx: &mut Ctx<'_>) {
        self.poll_probe(ctx);
    }

    pub fn wants_again(&self) -> bool {
        self.probe().is_some_and(FirewallProbe::wants_again)
    }

    pub fn on_again(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(p) = self.probe_mut() {
            p.on_again(ctx.registry);
        }
        self.poll_probe(ctx);
    }

    fn probe(&self) -> Option<&FirewallProbe> {
        self.fingerprint.as_ref().and_then(|f| f.probe.as_ref())
    }

    fn probe_mut(&mut self) -> Option<&mut FirewallProbe> {
        self.fingerprint.as_mut().and_then(|f| f.probe.as_mut())
    }

    /// Start a collection (the firewall probe first) unless one runs.
    fn collect_fingerprint(&mut self, ctx: &mut Ctx<'_>) {
        let connected = self.connected;
        let Some(f) = self.fingerprint.as_mut() else {
            return;
        };
        if let Some(id) = f.timer.take() {
            ctx.cancel(id);
        }
        f.timer = Some(ctx.schedule(f.interval, TelemetryTimer::Fingerprint));
        // Offline, a change list would be thrown away: the next connection
        // starts with a full report anyway. A report still waiting for room
        // on the link must go first: the next change list builds on it.
        if !connected || f.probe.is_some() || f.pending.is_some() {
            return;
        }
        match FirewallProbe::start(ctx) {
            Ok(p) => {
                f.probe = Some(p);
                self.poll_probe(ctx);
            }
            Err(note) => self.finish_fingerprint(None, vec![note]),
        }
    }

    /// Reap, kill on deadline, and once all firewall commands are done,
    /// collect the rest and queue the report.
    fn poll_probe(&mut self, ctx: &mut Ctx<'_>) {
        let Some(f) = self.fingerprint.as_mut() else {
            return;
        };
        let Some(p) = f.probe.as_mut() else {
            return;
        };
        p.poll(ctx.registry, Instant::now());
        if let Some(id) = f.probe_timer.take() {
            ctx.cancel(id);
        }
        if !p.is_done() {
            if let Some(at) = p.next_check(ctx.now) {
                let after = at.saturating_duration_since(ctx.now);
                f.probe_timer = Some(ctx.schedule(after, TelemetryTimer::Probe));
            }
            return;
        }
        let Some(probe) = f.probe.take() else {
            return;
        };
        let (firewall, notes) = probe.finish();
        self.finish_fingerprint(firewall, notes);
    }

    fn finish_fingerprint(
        &mut self,
        firewall: Option<crate::fingerprint::Firewall>,
        mut notes: Vec<Note>,
    ) {
        let Some(f) = self.fingerprint.as_mut() else {
            return;
        };
        let extras = crate::fingerprint::Extras {
            arch: Some(crate::sys::machine()),
            firewall,
            docker_version: self.docker_version.clone(),
            runner_version: Some(crate::version::version().to_owned()),
        };
        let (fp, more) = crate::fingerprint::collect(&f.root, extras);
        notes.extend(more);
        f.notes.log("fingerprint", &notes);
        let texts = notes.iter().map(fingerprint::report_note).collect();
        if let Some(report) = f.seq.report(fp, texts, crate::log::now_ms()) {
            debug!(
                "telemetry",
                "fingerprint: {} report queued",
                if report.full.is_some() {
                    "full".to_owned()
                } else {
                    format!("{} change(s)", report.changes.len())
                }
            );
            f.pending = Some(report);
        }
    }

    /// Figures of the metrics backlog.
    pub fn figures(&self) -> Option<FeedFigures> {
        let m = self.metrics.as_ref()?;
        Some(FeedFigures {
            records: m.backlog.records() as u64,
            bytes: m.backlog.bytes() as u64,
            dropped: m.backlog.dropped(),
            last_sample_ms: m.last_ts,
        })
    }
}

impl Telemetry {
    /// Link changes, metrics acks and fingerprint resyncs.
    pub fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        match event {
            LinkEvent::Up { metrics_ts, .. } => {
                self.connected = true;
                if let Some(m) = &mut self.metrics {
                    if let Some(ts) = metrics_ts {
                        let n = m.backlog.ack_through(ts);
                        debug!(
                            "telemetry",
                            "server has metrics up to {ts}: {n} records forgotten"
                        );
                    }
                    m.backlog.restart();
                    if m.backlog.records() > 1 {
                        info!(
                            "telemetry",
                            "sending {} metrics records the server does not have yet",
                            m.backlog.records()
                        );
                    }
                }
                if let Some(f) = &mut self.fingerprint {
                    f.seq.resync();
                    f.pending = None;
                }
                self.collect_fingerprint(ctx);
            }
            LinkEvent::Down => self.connected = false,
            LinkEvent::Message { body, .. } => match *body {
                Control::MetricsAck(a) => {
                    if let Some(m) = &mut self.metrics {
                        m.backlog.ack_sent_through(a.ts_ms);
                    }
                }
                Control::FingerprintResync(_) => {
                    if let Some(f) = &mut self.fingerprint {
                        info!("telemetry", "the server asked for the full fingerprint");
                        f.seq.resync();
                        f.pending = None;
                    }
                    self.collect_fingerprint(ctx);
                }
                _ => {}
            },
            LinkEvent::ChannelAck { .. } | LinkEvent::ChannelData { .. } => {}
        }
    }

    /// The next fingerprint report or metrics frame.
    pub fn next_message(&mut self) -> Option<Outgoing> {
        if let Some(report) = self.fingerprint.as_mut().and_then(|f| f.pending.take()) {
            return Some(Outgoing::Control(Box::new(Control::Fingerprint(report))));
        }
        self.metrics.as_mut()?.next_message()
    }
}

impl TimerKind for TelemetryTimer {
    const ALL: &'static [TelemetryTimer] = &[
        TelemetryTimer::Sample,
        TelemetryTimer::Fingerprint,
        TelemetryTimer::Probe,
    ];
}

impl Source for Telemetry {
    fn ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if self.owns(token) {
            self.on_ready(ctx, token);
        }
    }

    fn timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, kind: u8) {
        if let Some(t) = TelemetryTimer::from_code(kind) {
            self.on_timer(ctx, id, t);
        }
    }

    fn signals(&mut self, ctx: &mut Ctx<'_>, set: SignalSet) {
        if set.contains(libc::SIGCHLD) {
            self.on_sigchld(ctx);
        }
    }

    fn wants_again(&self) -> bool {
        Telemetry::wants_again(self)
    }

    fn again(&mut self, ctx: &mut Ctx<'_>) {
        self.on_again(ctx);
    }
}

impl Feature for Telemetry {
    fn families(&self) -> &'static [Family] {
        &[Family::Telemetry]
    }

    fn start(&mut self, ctx: &mut Ctx<'_>) {
        Telemetry::start(self, ctx);
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        Telemetry::on_link(self, ctx, event);
    }

    fn next_message(&mut self) -> Option<Outgoing> {
        Telemetry::next_message(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo test --release -p tether --lib tick_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn tick_cost() {
        let mut m = Metrics::new(Duration::from_secs(5), DEFAULT_BUDGET, Instant::now());
        let mut sample_us = Vec::new();
        let mut encode_us = Vec::new();
        for i in 0..200u64 {
            let t0 = Instant::now();
            let (s, _) = m.sampler.sample(1_800_000_000_000 + i * 5000);
            let t1 = Instant::now();
            let schema = m.encoder.encode(&s, &mut m.record);
            if let Some(s) = schema {
                m.backlog.push_schema(s);
            }
            m.backlog.push_record(&m.record);
            let t2 = Instant::now();
            sample_us.push((t1 - t0).as_micros() as u64);
            encode_us.push((t2 - t1).as_micros() as u64);
            std::thread::sleep(Duration::from_millis(20));
        }
        // The same without the TCP tables (their cost is the kernel's,
        // proportional to the socket hash table and the socket count).
        m.sampler.set_tcp_every(Some(u32::MAX));
        m.sampler.sample(1_800_000_000_000);
        let mut no_tcp_us = Vec::new();
        for i in 0..200u64 {
            let t0 = Instant::now();
            m.sampler.sample(1_900_000_000_000 + i * 5000);
            no_tcp_us.push(t0.elapsed().as_micros() as u64);
            std::thread::sleep(Duration::from_millis(20));
        }
        let stat = |v: &mut Vec<u64>| {
            v.sort();
            (
                v[v.len() / 2],
                v.iter().sum::<u64>() / v.len() as u64,
                v[v.len() - 1],
            )
        };
        println!("sample µs (median, mean, max): {:?}", stat(&mut sample_us));
        println!(
            "encode+push µs (median, mean, max): {:?}",
            stat(&mut encode_us)
        );
        let mut warm_us = Vec::new();
        for i in 0..200u64 {
            let t0 = Instant::now();
            m.sampler.sample(2_000_000_000_000 + i * 5000);
            warm_us.push(t0.elapsed().as_micros() as u64);
        }
        println!(
            "sample without TCP tables µs (median, mean, max): {:?}",
            stat(&mut no_tcp_us)
        );
        println!("  back to back (warm caches): {:?}", stat(&mut warm_us));
        println!("record bytes: {}", m.record.len());
    }
}
