//! Alerts: rules on what runners report, evaluated as it arrives, and
//! notifications to webhooks, chat and email.
//!
//! ```text
//!  hooks (one line where data arrives)          broadcasts already there
//!  metrics schema/records, drift, jobs,          health changes (runners/health.rs)
//!  updates, log lines ── Alerts::observe ──┐     container events (containers/)
//!                           (try_send,     ▼          │
//!                            bounded)  engine task ◀──┘   + a 1 s tick (durations)
//!                                          │ rules.rs Evaluator per tenant
//!                                          ▼ transitions
//!                             store.rs: state + history (silenced or not)
//!                                          ▼ not silenced
//!                             notify.rs: one bounded queue + worker per channel
//! ```
//!
//! - `rules.rs`: the decision core (pure; its module doc draws the state machine).
//! - `db/alerts.rs` (the `AlertStore` trait) and `db/sqlite/alerts.rs`
//!   (its SQL, `alerts.db`): rules, channels, states, history, silences.
//! - `notify.rs`: channel kinds, delivery, retries, the delivery log.
//! - `api.rs`: REST.
//!
//! The engine never blocks a connection: hooks `try_send` into a bounded
//! queue ([`QUEUE`]); when it is full, observations are dropped and
//! counted (logged once per 1,000). Metrics are decoded for the engine only
//! when the tenant has a metric rule, and read through the runner's plan
//! (`rules::MetricPlan`: which series each metric rule reads, made once per
//! schema and rule set), so a healthy record costs a compare per series a
//! rule reads: no names are copied and no text is made. Runner names,
//! groups and labels are read from `db/` a tenant at a time (two calls)
//! and cached for [`RUNNER_TTL`].
//!
//! On a replica of several (issue 18), each state has one owner, and an
//! owner reads the states from the store when it becomes one (another
//! replica may have changed them since this one last knew):
//!
//! ```text
//!  health alerts (unreachable)    the once-only lease holder (`app/serve.rs`)
//!    lease taken  ─▶ read them all from the store, resolve the ones whose
//!                    runner is active now, then hear health changes
//!    lease lost   ─▶ forget them (no transition), hear nothing
//!  every other kind               the replica the runner is linked to
//!    first observation of a new link here ─▶ the runner waits for a read:
//!        its reports held (64 at most)       runners waiting are read together,
//!        others' evaluated meanwhile         one store call per batch, off the
//!                                            engine task (AlertStore::runners_alerts)
//!    read answered, link still this one   ─▶ states restored, held reports evaluated
//!    link closed, replaced or fenced      ─▶ forget them (no transition);
//!                                            a late observation of it is dropped
//!  a transition is recorded only if the owner still owns it (local
//!  knowledge), and the store judges again as it writes a report alert's:
//!
//!    engine ──transition through (replica, generation)──▶ store
//!      one statement: runner_links row is (replica, generation)?  (row share-locked)
//!        yes ─▶ state + history written ─▶ notified
//!        no  ─▶ nothing written, not notified (debug log): another
//!               replica took the runner before this one heard the fence
//! ```
//!
//! The lock orders the two: a replica taking the runner over links it
//! first (its link row written, waiting for a write that holds the row)
//! and reads the states after, so a late write is either in what it reads
//! or refused. So a firing alert is resolved once, by whichever replica
//! sees it end, and not fired again by one that did not know. What is not stored moves
//! not: a *pending* condition (held for `for_s`) starts again on the new
//! owner, restart counts start again, and a one-shot alert's quiet time is
//! counted from when it fired. A runner linked nowhere keeps its report
//! alerts as they are until it links again.
//!
//! No other feature is imported but through the broadcasts above
//! (`runners::health`, `containers`); a job's label is read from `db.jobs`
//! by the engine, not by the hook.

pub mod api;
pub use api::routes;
pub mod notify;
pub mod rules;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};

use self::notify::{Notification, Notifier};
use self::rules::{
    Evaluator, Kind, MetricPlan, Observation, Rule, RunnerInfo, Silence, State, Transition,
};
use crate::common::clock;
use crate::common::observe::LinksHere;
use crate::common::secrets::SecretBox;
use crate::containers::ContainerEventRecord;
use crate::db::alerts::{AlertRow, AlertStore, LinkRef};
use crate::db::{Db, Health, HealthRecord};

/// Observations queued for the engine before new ones are dropped.
pub const QUEUE: usize = 8192;
/// How long a tenant's runner names, groups and labels are cached (a
/// label change reaches a rule's selector scope within this).
pub const RUNNER_TTL: Duration = Duration::from_secs(30);
/// A runner not among its tenant's (enrolled since they were read) reads
/// them again, at most this often.
const REREAD_MISSING: Duration = Duration::from_secs(1);

/// A runner as rules see it, from its name and accepted labels: its group
/// is the label `group` (kept equal to the update group by `fleet/`).
fn runner_info(id: String, name: String, labels: crate::db::fleet::Labels) -> RunnerInfo {
    let group = labels
        .get(crate::fleet::labels::GROUP)
        .cloned()
        .unwrap_or_default();
    RunnerInfo {
        id,
        name,
        group,
        labels,
    }
}

/// A tenant's runners as rules see them, and when they were read.
struct TenantRunners {
    read_at: Instant,
    by_id: HashMap<String, Arc<RunnerInfo>>,
}
/// Silences are re-read this often (and at once when one is changed).
const SILENCE_TTL: Duration = Duration::from_secs(30);
/// Log lines looked at per runner per call at most.
const MAX_LOG_LINES: usize = 256;
/// A replica: runners whose states one take-over read asks for at most
/// (the store reads them in chunks of `db::alerts::TAKE_OVER_CHUNK`).
pub const TAKE_OVER_BATCH: usize = 2_000;
/// A replica: observations kept per runner while its states are read;
/// beyond, they are dropped (and counted as the queue's are).
const HELD_PER_RUNNER: usize = 64;

/// Runners a scope preview looks at (past it the answer says `truncated`).
pub const PREVIEW_CHECKED: usize = 5_000;
/// Matching runners a scope preview names (all are counted).
pub const PREVIEW_LISTED: usize = 200;

/// What a rule's scope covers now (`POST /alerts/preview`).
#[derive(Debug, serde::Serialize)]
pub struct Preview {
    pub runners: Vec<PreviewRunner>,
    pub matched: usize,
    pub checked: usize,
    pub truncated: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct PreviewRunner {
    pub id: String,
    pub name: String,
    pub health: &'static str,
}

enum Input {
    Observe {
        tenant: String,
        runner: String,
        obs: Observation,
    },
    Schema {
        runner: String,
        series: Vec<(String, f64)>,
    },
    Record {
        tenant: String,
        runner: String,
        values: Vec<u8>,
    },
    JobEnded {
        tenant: String,
        runner: String,
        channel: u32,
        status: String,
        reason: String,
    },
    RulesChanged {
        tenant: String,
    },
    SilencesChanged,
}

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct AlertsCtx {
    /// Alert rules, their engine and the notification channels.
    pub alerts: Arc<Alerts>,
    pub secrets: Arc<SecretBox>,
}

/// The handle in the app's state: hooks, and what the API needs.
pub struct Alerts {
    tx: mpsc::Sender<Input>,
    pub store: Arc<dyn AlertStore>,
    /// Runners, their groups and labels: the API's scope preview reads them.
    db: Db,
    pub notifier: Arc<Notifier>,
    dropped: AtomicU64,
    /// Runners whose report-based alerts the engine owns now (a replica).
    owned: AtomicU64,
    /// Tenants with a metric rule / a log rule (checked before any work).
    metric_tenants: Mutex<HashSet<String>>,
    log_tenants: Mutex<HashSet<String>>,
    /// On a replica of several: the other replicas' engines, told when
    /// rules or silences change here (`app/cluster.rs`).
    remote: OnceLock<Arc<dyn crate::common::bus::Remote>>,
    /// On a replica of several: the runners linked here, whose
    /// report-based alerts this engine owns ([`Alerts::set_links`]).
    links: OnceLock<Arc<dyn LinksHere>>,
    /// Whether this engine evaluates health alerts, and how many times it
    /// was turned on: each time, it first takes the states over from the
    /// store ([`Alerts::evaluate_health`]).
    health_here: watch::Sender<(bool, u64)>,
}

/// The tenant event that tells other replicas' engines to re-read a
/// tenant's rules / the silences (never shown on an event stream).
pub const RULES_CHANGED: &str = "alerts.rules";
pub const SILENCES_CHANGED: &str = "alerts.silences";

/// The features report runner data through this (`common/observe.rs`).
impl crate::common::observe::Observer for Alerts {
    fn metrics_schema(&self, runner: &str, schema: &tether::metrics::wire::Schema) {
        Alerts::metrics_schema(self, runner, schema)
    }
    fn metrics(&self, tenant: &str, runner: &str, rows: &[(i64, Vec<u8>)]) {
        Alerts::metrics(self, tenant, runner, rows)
    }
    fn log_lines(&self, tenant: &str, runner: &str, container: &str, data: &[u8]) {
        Alerts::log_lines(self, tenant, runner, container, data)
    }
    fn job_ended(&self, tenant: &str, runner: &str, r: &tether::protocol::JobResult) {
        Alerts::job_ended(self, tenant, runner, r)
    }
    fn drift(&self, tenant: &str, runner: &str, changes: &[tether::fingerprint::Change]) {
        Alerts::drift(self, tenant, runner, changes)
    }
    fn update_report(&self, tenant: &str, runner: &str, r: &tether::protocol::UpdateStatus) {
        Alerts::update_report(self, tenant, runner, r)
    }
}

impl Alerts {
    /// Loads rules and live states and starts the engine task (when called
    /// inside a Tokio runtime; without one, hooks are accepted and dropped).
    pub fn start(
        db: Db,
        secrets: Arc<SecretBox>,
        health: &crate::runners::health::HealthLog,
        containers: &crate::containers::ContainerHub,
        tuning: notify::Tuning,
    ) -> Arc<Alerts> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let store = db.alerts.clone();
        let notifier = Arc::new(Notifier::new(store.clone(), secrets, tuning));
        let alerts = Arc::new(Alerts {
            tx,
            store: store.clone(),
            db: db.clone(),
            notifier: notifier.clone(),
            dropped: AtomicU64::new(0),
            owned: AtomicU64::new(0),
            metric_tenants: Mutex::default(),
            log_tenants: Mutex::default(),
            remote: OnceLock::new(),
            links: OnceLock::new(),
            health_here: watch::Sender::new((true, 0)),
        });
        let engine = Engine {
            store,
            db,
            notifier,
            tenants: HashMap::new(),
            generations: 0,
            schemas: HashMap::new(),
            plans: HashMap::new(),
            ints: Vec::new(),
            vals: Vec::new(),
            runners: HashMap::new(),
            silences: Vec::new(),
            silences_read: None,
            alerts: Arc::downgrade(&alerts),
            replica: false,
            health_on: Some(0),
            owned: HashMap::new(),
            taking: HashMap::new(),
            to_read: Vec::new(),
            reading: false,
        };
        let (health, containers) = (health.subscribe_alerts(), containers.subscribe());
        let switch = alerts.health_here.subscribe();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(engine.run(rx, health, containers, switch));
            }
            Err(_) => tracing::warn!("alerts: no runtime, the engine is not running"),
        }
        alerts
    }

    fn push(&self, input: Input) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(input) {
            self.count_dropped("the engine's queue is full");
        }
    }

    fn count_dropped(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed);
        if n % 1000 == 0 {
            tracing::warn!("alerts: {why}, {} observations dropped", n + 1);
        }
    }

    /// Observations dropped so far (the queue full, or too many of one
    /// runner held while its states were read).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A replica: the runners whose report-based alerts this engine owns
    /// now (their states taken over from the store).
    pub fn owned_runners(&self) -> u64 {
        self.owned.load(Ordering::Relaxed)
    }

    /// Something happened on `runner` of `tenant`.
    pub fn observe(&self, tenant: &str, runner: &str, obs: Observation) {
        self.push(Input::Observe {
            tenant: tenant.to_owned(),
            runner: runner.to_owned(),
            obs,
        });
    }

    /// A runner's metrics schema: series names and scales.
    pub fn metrics_schema(&self, runner: &str, schema: &tether::metrics::wire::Schema) {
        self.push(Input::Schema {
            runner: runner.to_owned(),
            series: schema
                .series
                .iter()
                .map(|d| (d.name.clone(), d.scale))
                .collect(),
        });
    }

    /// Decoded records of a METRICS frame, in the stored form; the newest is evaluated.
    pub fn metrics(&self, tenant: &str, runner: &str, rows: &[(i64, Vec<u8>)]) {
        if !lock(&self.metric_tenants).contains(tenant) {
            return;
        }
        if let Some((_, values)) = rows.last() {
            self.push(Input::Record {
                tenant: tenant.to_owned(),
                runner: runner.to_owned(),
                values: values.clone(),
            });
        }
    }

    /// A stored block of a container's log lines (`<stamp> <line>\n` each;
    /// only for tenants with a log rule).
    pub fn log_lines(&self, tenant: &str, runner: &str, container: &str, data: &[u8]) {
        if !lock(&self.log_tenants).contains(tenant) {
            return;
        }
        let text = String::from_utf8_lossy(data);
        for line in text.lines().take(MAX_LOG_LINES) {
            let line = line.split_once(' ').map_or(line, |(_, l)| l);
            self.observe(
                tenant,
                runner,
                Observation::Log {
                    container: container.to_owned(),
                    line: line.chars().take(4096).collect(),
                },
            );
        }
    }

    /// A job's result (the engine looks up what it ran).
    pub fn job_ended(&self, tenant: &str, runner: &str, r: &tether::protocol::JobResult) {
        self.push(Input::JobEnded {
            tenant: tenant.to_owned(),
            runner: runner.to_owned(),
            channel: r.channel,
            status: r.status.clone(),
            reason: r.reason.clone(),
        });
    }

    /// Fingerprint changes recorded as drift (a listening socket opened or
    /// closed is named by protocol, address and port, with its process).
    pub fn drift(&self, tenant: &str, runner: &str, changes: &[tether::fingerprint::Change]) {
        for c in changes.iter().take(MAX_LOG_LINES) {
            let show = |v: &serde_json::Value| match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            let detail = match (show(&c.old), show(&c.new)) {
                (None, Some(n)) => format!("added {n}"),
                (Some(o), None) => format!("removed {o}"),
                (Some(o), Some(n)) => format!("{o} → {n}"),
                (None, None) => "changed".into(),
            };
            // Each listening socket is its own target: a second new port
            // while the first still fires is a notification of its own.
            let (path, detail) = match listener_change(c) {
                Some(pair) => pair,
                None => (c.path.clone(), detail),
            };
            self.observe(
                tenant,
                runner,
                Observation::Drift {
                    path,
                    detail: detail.chars().take(rules::MAX_TEXT).collect(),
                },
            );
        }
    }

    /// An `update_status` report.
    pub fn update_report(&self, tenant: &str, runner: &str, r: &tether::protocol::UpdateStatus) {
        self.observe(
            tenant,
            runner,
            Observation::Update {
                state: r.state.clone(),
                version: r.version.clone(),
                reason: r.reason.clone().unwrap_or_default(),
            },
        );
    }

    /// Which of `tenant`'s runners `scope` covers now, as the engine would
    /// judge them (accepted labels, update group), in the order listed.
    /// Bounded: at most [`PREVIEW_CHECKED`] runners are looked at.
    pub async fn preview(
        &self,
        tenant: &str,
        scope: &rules::Scope,
    ) -> Result<Preview, crate::db::StorageError> {
        let runners = self.db.control.list_runners(tenant).await?;
        let labels = match scope {
            rules::Scope::Selector(_) => self.db.fleet.tenant_labels(tenant).await?,
            _ => HashMap::new(),
        };
        let mut out = Preview {
            runners: Vec::new(),
            matched: 0,
            checked: 0,
            truncated: runners.len() > PREVIEW_CHECKED,
        };
        for r in runners.into_iter().take(PREVIEW_CHECKED) {
            out.checked += 1;
            let group = match scope {
                rules::Scope::Group(_) => self
                    .db
                    .updates
                    .runner_group(&r.id)
                    .await?
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let info = RunnerInfo {
                labels: labels.get(&r.id).cloned().unwrap_or_default(),
                id: r.id,
                name: r.name,
                group,
            };
            if !scope.covers(&info) {
                continue;
            }
            out.matched += 1;
            if out.runners.len() < PREVIEW_LISTED {
                out.runners.push(PreviewRunner {
                    id: info.id,
                    name: info.name,
                    health: r.health.as_str(),
                });
            }
        }
        Ok(out)
    }

    pub fn rules_changed(&self, tenant: &str) {
        self.push(Input::RulesChanged {
            tenant: tenant.to_owned(),
        });
        self.tell_remote(tenant, RULES_CHANGED);
    }

    pub fn silences_changed(&self, tenant: &str) {
        self.push(Input::SilencesChanged);
        self.tell_remote(tenant, SILENCES_CHANGED);
    }

    /// Rule and silence changes go to `remote` too from now on (a replica
    /// of several: every engine evaluates the rules of its own runners).
    pub fn set_remote(&self, remote: Arc<dyn crate::common::bus::Remote>) {
        let _ = self.remote.set(remote);
    }

    /// A replica of several, from now on (before any runner links): the
    /// alerts on what a runner reports are this engine's while the runner
    /// is linked here (`links`), and health alerts only once
    /// [`Alerts::evaluate_health`] turns them on (the once-only lease).
    pub fn set_links(&self, links: Arc<dyn LinksHere>) {
        if self.links.set(links).is_ok() {
            self.health_here.send_modify(|(on, _)| *on = false);
        }
    }

    /// Health alerts are evaluated by this engine from now on, or no
    /// longer (a replica: while it holds the once-only lease). Turned on
    /// on a replica, the engine first reads the health alerts' states
    /// from the store: the previous holder may have fired or resolved
    /// some since this one last knew.
    pub fn evaluate_health(&self, on: bool) {
        self.health_here.send_modify(|(was, epoch)| {
            if on && !*was {
                *epoch += 1;
            }
            *was = on;
        });
    }

    fn tell_remote(&self, tenant: &str, kind: &str) {
        if let Some(r) = self.remote.get() {
            r.send(&crate::common::bus::TenantEvent {
                tenant_id: tenant.to_owned(),
                kind: kind.to_owned(),
                data: "{}".to_owned(),
            });
        }
    }

    /// A tenant event of another replica: `true` if it was one of ours
    /// (rules or silences changed there), taken in here.
    pub fn changed_elsewhere(&self, event: &crate::common::bus::TenantEvent) -> bool {
        match event.kind.as_str() {
            RULES_CHANGED => self.push(Input::RulesChanged {
                tenant: event.tenant_id.clone(),
            }),
            SILENCES_CHANGED => self.push(Input::SilencesChanged),
            _ => return false,
        }
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Tenant {
    rules: Vec<Rule>,
    /// Changes with `rules` (unique in the engine): plans of an older one
    /// are made again.
    gen: u64,
    eval: Evaluator,
}

/// A runner's metrics schema as records are read: series names and the
/// scale of each (a record's values are in this order).
struct Schema {
    names: Vec<String>,
    scales: Vec<f64>,
}

/// A runner's plan: good while its tenant's rules and its schema are the
/// ones it was made for.
struct PlanCache {
    gen: u64,
    schema: Arc<Schema>,
    plan: Arc<MetricPlan>,
}

struct Engine {
    store: Arc<dyn AlertStore>,
    db: Db,
    notifier: Arc<Notifier>,
    tenants: HashMap<String, Tenant>,
    /// The last rules generation given out.
    generations: u64,
    /// Per runner: its metrics schema.
    schemas: HashMap<String, Arc<Schema>>,
    /// Per runner: which series each metric rule reads (`rules::MetricPlan`).
    plans: HashMap<String, PlanCache>,
    /// A record's values, decoded and scaled (kept: no allocation per record).
    ints: Vec<Option<i64>>,
    vals: Vec<Option<f64>>,
    /// Per tenant: its runners as rules see them, read together.
    runners: HashMap<String, TenantRunners>,
    silences: Vec<Silence>,
    silences_read: Option<Instant>,
    alerts: std::sync::Weak<Alerts>,
    /// A replica of several (noticed once `Alerts::set_links` was called):
    /// alert states are owned as the module doc says.
    replica: bool,
    /// Health alerts evaluated here: the epoch of the switch taken.
    health_on: Option<u64>,
    /// A replica: the runners whose report-based alerts this engine owns,
    /// with their tenant and the generation of their link here.
    owned: HashMap<String, (String, u64)>,
    /// A replica: runners newly linked here whose states are being read,
    /// with what was observed of them meanwhile.
    taking: HashMap<String, Taking>,
    /// Runners of `taking` to read in the next batch (not yet asked for,
    /// or asked for an older link).
    to_read: Vec<String>,
    /// A take-over read is running (one at a time: the runners newly
    /// linked while it runs are read together in the next).
    reading: bool,
}

/// A runner newly linked here whose states are being read.
struct Taking {
    tenant: String,
    /// The link here the read is for.
    gen: u64,
    /// What arrived meanwhile, evaluated in order once the states are in.
    held: Vec<Held>,
}

enum Held {
    Obs(Observation),
    Record(Vec<u8>),
}

/// Whether this engine evaluates a runner's report now.
enum Owner {
    Here,
    /// Linked here, its states not read yet: held until they are.
    Reading,
    /// Linked elsewhere or nowhere.
    Not,
}

/// A take-over read's answer: the runners (and links) it was for.
struct ReadDone {
    batch: Vec<(String, u64)>,
    rows: Result<Vec<AlertRow>, crate::db::StorageError>,
}

/// Whether `rule_id` is a health rule of `rules` (evaluated on the lease
/// holder; every other kind where the runner is linked).
fn is_health(rules: &[Rule], rule_id: &str) -> bool {
    rules
        .iter()
        .any(|r| r.id == rule_id && matches!(r.spec.kind, Kind::Unreachable { .. }))
}

fn health_ids(rules: &[Rule]) -> HashSet<String> {
    rules
        .iter()
        .filter(|r| matches!(r.spec.kind, Kind::Unreachable { .. }))
        .map(|r| r.id.clone())
        .collect()
}

impl Engine {
    async fn load(&mut self) {
        match self.store.all_rules().await {
            Ok(rules) => {
                for r in rules {
                    self.tenant(&r.tenant.clone()).rules.push(r);
                }
            }
            Err(e) => tracing::error!("alerts: reading rules: {e}"),
        }
        match self.store.all_alerts().await {
            Ok(rows) => {
                for a in rows {
                    self.tenant(&a.tenant.clone())
                        .eval
                        .restore(&a.rule_id, &a.target, a.state, a.since_ms, &a.summary);
                }
            }
            Err(e) => tracing::error!("alerts: reading alert states: {e}"),
        }
        let tenants: Vec<String> = self.tenants.keys().cloned().collect();
        for t in tenants {
            self.note_kinds(&t);
        }
    }

    fn links(&self) -> Option<Arc<dyn LinksHere>> {
        self.alerts.upgrade().and_then(|a| a.links.get().cloned())
    }

    /// Become a replica's engine once `Alerts::set_links` was called:
    /// every state loaded at start is forgotten (each is taken over from
    /// the store by its owner: `own`, `take_health`).
    fn sync_mode(&mut self) {
        if self.replica || self.links().is_none() {
            return;
        }
        self.replica = true;
        self.health_on = None;
        self.owned.clear();
        self.taking.clear();
        self.to_read.clear();
        for t in self.tenants.values_mut() {
            t.eval.retain(|_, _| false);
        }
    }

    /// The once-only lease came or went (`Alerts::evaluate_health`).
    async fn on_health_switch(&mut self, (on, epoch): (bool, u64)) {
        self.sync_mode();
        if !on {
            if self.health_on.take().is_some() && self.replica {
                self.drop_health();
            }
            return;
        }
        if self.health_on == Some(epoch) {
            return;
        }
        // On before the take-over: its resolutions are recorded (`record`
        // checks that health alerts are evaluated here).
        self.health_on = Some(epoch);
        if self.replica {
            self.take_health().await;
        }
    }

    fn drop_health(&mut self) {
        for t in self.tenants.values_mut() {
            let ids = health_ids(&t.rules);
            if !ids.is_empty() {
                t.eval.retain(|r, _| !ids.contains(r));
            }
        }
    }

    /// Health alerts evaluated here from now on: their states as the
    /// store has them (the previous holder's transitions included), then
    /// each loaded one checked against the runner's health now (a runner
    /// back while no replica held the lease resolves).
    async fn take_health(&mut self) {
        self.drop_health();
        let rows = match self.store.all_alerts().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("alerts: reading alert states: {e}");
                Vec::new()
            }
        };
        let mut check = Vec::new();
        for a in rows {
            let Some(t) = self.tenants.get_mut(&a.tenant) else {
                continue;
            };
            if !is_health(&t.rules, &a.rule_id) {
                continue;
            }
            t.eval
                .restore(&a.rule_id, &a.target, a.state, a.since_ms, &a.summary);
            check.push((a.tenant, a.runner_id));
        }
        tracing::info!(
            "alerts: health alerts evaluated here; {} state(s) taken over",
            check.len()
        );
        check.sort();
        check.dedup();
        for (tenant, runner) in check {
            if let Ok(Some(r)) = self.db.control.runner(&tenant, &runner).await {
                if r.health == Health::Active {
                    let obs = Observation::Health {
                        up: true,
                        reason: "connected".into(),
                    };
                    self.on_observe(&tenant, &runner, &obs).await;
                }
            }
        }
    }

    /// Whether this engine owns `runner`'s report-based alerts now: on
    /// one server always; on a replica while the runner is linked here.
    /// A link here that is new (a first observation of this generation)
    /// has the runner's states taken over from the store first (the
    /// replica it was linked to before may have fired or resolved some):
    /// it is `Reading` until they are in, its runner read in the next
    /// batch ([`Engine::read_next`]).
    fn owner(&mut self, tenant: &str, runner: &str) -> Owner {
        if !self.replica {
            return Owner::Here;
        }
        let Some(links) = self.links() else {
            return Owner::Here;
        };
        let gen = links.generation(runner);
        match (gen, self.owned.get(runner)) {
            (Some(g), Some((_, owned))) if g == *owned => return Owner::Here,
            _ => self.disown(runner),
        }
        let Some(gen) = gen else {
            // A late observation of a link closed or fenced here.
            self.taking.remove(runner);
            return Owner::Not;
        };
        match self.taking.get_mut(runner) {
            Some(t) if t.gen == gen => {}
            Some(t) => {
                // Linked here again while its states were read for the
                // link before: read again, for this one.
                t.gen = gen;
                self.to_read.push(runner.to_owned());
            }
            None => {
                self.taking.insert(
                    runner.to_owned(),
                    Taking {
                        tenant: tenant.to_owned(),
                        gen,
                        held: Vec::new(),
                    },
                );
                self.to_read.push(runner.to_owned());
            }
        }
        Owner::Reading
    }

    /// Keep what arrived of a runner whose states are being read.
    fn hold(&mut self, runner: &str, held: Held) {
        let Some(t) = self.taking.get_mut(runner) else {
            return;
        };
        if t.held.len() < HELD_PER_RUNNER {
            t.held.push(held);
        } else if let Some(a) = self.alerts.upgrade() {
            a.count_dropped("too many reports of a runner whose states are read");
        }
    }

    /// Start the next take-over read, if none runs: every runner waiting
    /// for one (up to [`TAKE_OVER_BATCH`]), in one store call, off the
    /// engine task (observations of the runners owned here go on).
    fn read_next(&mut self, done: &mpsc::Sender<ReadDone>) {
        if self.reading || self.to_read.is_empty() {
            return;
        }
        let mut seen = HashSet::new();
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for runner in std::mem::take(&mut self.to_read) {
            if !seen.insert(runner.clone()) {
                continue;
            }
            if batch.len() >= TAKE_OVER_BATCH {
                rest.push(runner);
            } else if let Some(t) = self.taking.get(&runner) {
                batch.push((runner, t.gen));
            }
        }
        self.to_read = rest;
        if batch.is_empty() {
            return;
        }
        self.reading = true;
        let (store, done) = (self.store.clone(), done.clone());
        tokio::spawn(async move {
            let ids: Vec<String> = batch.iter().map(|(r, _)| r.clone()).collect();
            let rows = store.runners_alerts(&ids).await;
            let _ = done.send(ReadDone { batch, rows }).await;
        });
    }

    /// A take-over read answered: each runner still linked here by the
    /// link it was read for is owned from now on, its states restored and
    /// what arrived meanwhile evaluated, in order. One whose link ended
    /// meanwhile, or whose read failed, loses what was held (its next
    /// report, on a link held here, asks again).
    async fn on_read(&mut self, done: ReadDone) {
        self.reading = false;
        let links = self.links();
        let mut rows: HashMap<String, Vec<AlertRow>> = HashMap::new();
        let read = match done.rows {
            Ok(all) => {
                for a in all {
                    rows.entry(a.runner_id.clone()).or_default().push(a);
                }
                true
            }
            Err(e) => {
                tracing::error!(
                    "alerts: reading {} runner(s)' alert states: {e}",
                    done.batch.len()
                );
                false
            }
        };
        let mut taken = 0usize;
        for (runner, gen) in done.batch {
            // Read for an older link of it: the newer one is read next.
            if self.taking.get(&runner).is_none_or(|t| t.gen != gen) {
                continue;
            }
            let Some(t) = self.taking.remove(&runner) else {
                continue;
            };
            let current = links.as_ref().and_then(|l| l.generation(&runner)) == Some(gen);
            if !read || !current {
                if let Some(a) = self.alerts.upgrade().filter(|_| !read) {
                    for _ in &t.held {
                        a.count_dropped("a runner's alert states could not be read");
                    }
                }
                continue;
            }
            if let Some(tn) = self.tenants.get_mut(&t.tenant) {
                for a in rows.remove(&runner).unwrap_or_default() {
                    if a.tenant != t.tenant || is_health(&tn.rules, &a.rule_id) {
                        continue;
                    }
                    tn.eval
                        .restore(&a.rule_id, &a.target, a.state, a.since_ms, &a.summary);
                }
            }
            self.owned.insert(runner.clone(), (t.tenant.clone(), gen));
            taken += 1;
            for held in t.held {
                match held {
                    Held::Obs(obs) => self.on_observe(&t.tenant, &runner, &obs).await,
                    Held::Record(values) => self.on_record(&t.tenant, &runner, values).await,
                }
            }
        }
        tracing::debug!("alerts: {taken} runner(s) taken over");
        self.note_owned();
    }

    /// The count of runners owned, for the replica's metrics.
    fn note_owned(&self) {
        if let Some(a) = self.alerts.upgrade() {
            a.owned.store(self.owned.len() as u64, Ordering::Relaxed);
        }
    }

    /// Forget `runner`'s report-based states (no transition): it is linked
    /// elsewhere or nowhere, and its next owner reads them from the store.
    fn disown(&mut self, runner: &str) {
        let Some((tenant, _)) = self.owned.remove(runner) else {
            return;
        };
        if let Some(t) = self.tenants.get_mut(&tenant) {
            if t.eval.has_targets(runner) {
                let ids = health_ids(&t.rules);
                t.eval
                    .retain(|r, target| ids.contains(r) || rules::runner_of(target) != runner);
            }
        }
    }

    /// A replica: the runners whose link here ended (closed, replaced,
    /// fenced) are disowned before time passes for their alerts.
    fn release_gone(&mut self) {
        let Some(links) = self.links().filter(|_| self.replica) else {
            return;
        };
        let gone: Vec<String> = self
            .owned
            .iter()
            .filter(|(r, (_, g))| links.generation(r) != Some(*g))
            .map(|(r, _)| r.clone())
            .collect();
        for r in gone {
            self.disown(&r);
        }
        // Links ended while their states were read: what was held goes.
        self.taking
            .retain(|r, t| links.generation(r) == Some(t.gen));
        self.note_owned();
    }

    /// Whether a transition may still be recorded here, and through which
    /// link: `None` if not (a replica: a health alert while health is not
    /// evaluated here; any other once the runner's link it was owned
    /// through is no longer held here). Through the link, the store judges
    /// again as it writes: the local knowledge may be late (the fence's
    /// notice not heard yet).
    fn through(&self, tenant: &str, t: &Transition) -> Option<Option<LinkRef>> {
        if !self.replica {
            return Some(None);
        }
        let health = self
            .tenants
            .get(tenant)
            .is_some_and(|x| is_health(&x.rules, &t.rule_id));
        if health {
            return self.health_on.is_some().then_some(None);
        }
        let Some(links) = self.links() else {
            return Some(None);
        };
        let (_, generation) = self.owned.get(&t.runner.id)?;
        (links.generation(&t.runner.id) == Some(*generation)).then(|| {
            Some(LinkRef {
                replica_id: links.replica_id().to_owned(),
                generation: *generation,
            })
        })
    }

    fn tenant(&mut self, id: &str) -> &mut Tenant {
        self.tenants.entry(id.to_owned()).or_insert_with(|| Tenant {
            rules: Vec::new(),
            gen: 0,
            eval: Evaluator::default(),
        })
    }

    /// `runner`'s plan for its tenant's rules and its schema, made when
    /// either changed since the last one.
    fn plan(&mut self, tenant: &str, runner: &str, schema: &Arc<Schema>) -> Arc<MetricPlan> {
        let Some(t) = self.tenants.get(tenant) else {
            return Arc::default();
        };
        if let Some(c) = self.plans.get(runner) {
            if c.gen == t.gen && Arc::ptr_eq(&c.schema, schema) {
                return c.plan.clone();
            }
        }
        let plan = Arc::new(MetricPlan::new(&t.rules, &schema.names));
        if self.plans.len() > 100_000 {
            self.plans.clear();
        }
        self.plans.insert(
            runner.to_owned(),
            PlanCache {
                gen: t.gen,
                schema: schema.clone(),
                plan: plan.clone(),
            },
        );
        plan
    }

    /// Tell the hooks whether this tenant needs metrics or log lines.
    fn note_kinds(&self, tenant: &str) {
        let Some(alerts) = self.alerts.upgrade() else {
            return;
        };
        let rules = self
            .tenants
            .get(tenant)
            .map(|t| &t.rules[..])
            .unwrap_or(&[]);
        let has = |f: fn(&Kind) -> bool| rules.iter().any(|r| r.spec.enabled && f(&r.spec.kind));
        for (set, on) in [
            (
                &alerts.metric_tenants,
                has(|k| matches!(k, Kind::Metric { .. })),
            ),
            (
                &alerts.log_tenants,
                has(|k| matches!(k, Kind::LogMatch { .. })),
            ),
        ] {
            let mut set = lock(set);
            if on {
                set.insert(tenant.to_owned());
            } else {
                set.remove(tenant);
            }
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut health: broadcast::Receiver<Arc<HealthRecord>>,
        mut containers: broadcast::Receiver<Arc<ContainerEventRecord>>,
        mut switch: watch::Receiver<(bool, u64)>,
    ) {
        self.load().await;
        // Take-over reads answer here (`read_next`).
        let (done_tx, mut done_rx) = mpsc::channel::<ReadDone>(1);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = rx.recv() => match input {
                    Some(i) => self.on_input(i).await,
                    None => return,
                },
                h = health.recv() => match h {
                    Ok(h) => {
                        self.sync_mode();
                        // Health alerts are the lease holder's (on a replica).
                        if self.health_on.is_some() {
                            let obs = Observation::Health { up: h.health == Health::Active, reason: h.reason.clone() };
                            self.on_observe(&h.tenant_id, &h.runner_id, &obs).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!("alerts: {n} health changes missed (lagging)"),
                    Err(broadcast::error::RecvError::Closed) => health = broadcast::channel(1).1,
                },
                c = containers.recv() => match c {
                    Ok(c) => self.on_container(&c).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!("alerts: {n} container events missed (lagging)"),
                    Err(broadcast::error::RecvError::Closed) => containers = broadcast::channel(1).1,
                },
                _ = tick.tick() => self.on_tick().await,
                changed = switch.changed() => match changed {
                    Ok(()) => {
                        let now = *switch.borrow_and_update();
                        self.on_health_switch(now).await;
                    }
                    Err(_) => return,
                },
                Some(done) = done_rx.recv() => self.on_read(done).await,
            }
            self.read_next(&done_tx);
        }
    }

    async fn on_input(&mut self, input: Input) {
        self.sync_mode();
        match input {
            Input::Observe {
                tenant,
                runner,
                obs,
            } => self.on_observe(&tenant, &runner, &obs).await,
            Input::Schema { runner, series } => {
                let (names, scales) = series.into_iter().unzip();
                self.schemas
                    .insert(runner, Arc::new(Schema { names, scales }));
            }
            Input::Record {
                tenant,
                runner,
                values,
            } => self.on_record(&tenant, &runner, values).await,
            Input::JobEnded {
                tenant,
                runner,
                channel,
                status,
                reason,
            } => {
                let Ok(Some(job)) = self.db.jobs.job_by_seq(&runner, i64::from(channel)).await
                else {
                    return;
                };
                let deploy = job.spec.deploy.as_ref().map(|d| d.app.clone());
                let obs = Observation::Job {
                    deploy: deploy.is_some(),
                    label: deploy.unwrap_or(job.label),
                    status,
                    reason,
                };
                self.on_observe(&tenant, &runner, &obs).await;
            }
            Input::RulesChanged { tenant } => match self.store.rules(&tenant).await {
                Ok(rules) => {
                    self.generations += 1;
                    let gen = self.generations;
                    let t = self.tenant(&tenant);
                    t.gen = gen;
                    let gone: Vec<String> = t
                        .rules
                        .iter()
                        .filter(|old| !rules.iter().any(|r| r.id == old.id && r.spec == old.spec))
                        .map(|r| r.id.clone())
                        .collect();
                    for id in gone {
                        t.eval.drop_rule(&id);
                    }
                    t.rules = rules;
                    self.note_kinds(&tenant);
                }
                Err(e) => tracing::error!("alerts: reading rules: {e}"),
            },
            Input::SilencesChanged => self.silences_read = None,
        }
    }

    /// A metrics record of `runner`: evaluated if a metric rule reads a
    /// series it sends (and, on a replica, once its states are here).
    async fn on_record(&mut self, tenant: &str, runner: &str, values: Vec<u8>) {
        if self.tenants.get(tenant).is_none_or(|t| t.rules.is_empty()) {
            return;
        }
        let Some(schema) = self.schemas.get(runner).cloned() else {
            return;
        };
        // No metric rule reads a series this runner sends: done.
        let plan = self.plan(tenant, runner, &schema);
        if plan.is_empty() {
            return;
        }
        match self.owner(tenant, runner) {
            Owner::Here => {}
            Owner::Reading => return self.hold(runner, Held::Record(values)),
            Owner::Not => return,
        }
        if crate::db::metrics::decode_values(&values, &mut self.ints).is_err() {
            return;
        }
        self.vals.clear();
        self.vals.extend(
            schema
                .scales
                .iter()
                .zip(&self.ints)
                .map(|(scale, v)| v.map(|v| v as f64 * scale)),
        );
        let info = self.runner(tenant, runner).await;
        let now = clock::now_ms();
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        let out = t
            .eval
            .observe_metrics(&t.rules, &plan, &schema.names, &info, &self.vals, now);
        self.record(tenant, out).await;
    }

    async fn on_container(&mut self, c: &ContainerEventRecord) {
        self.sync_mode();
        let e = &c.event;
        let name = e
            .container
            .as_ref()
            .map(|s| s.name.clone())
            .or_else(|| e.attributes.get("name").cloned())
            .unwrap_or_else(|| e.container_id.chars().take(12).collect());
        let labels = match &e.container {
            Some(s) => s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => e
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let obs = Observation::Container {
            name: name.trim_start_matches('/').to_owned(),
            action: e.action.clone(),
            exit_code: e.attributes.get("exitCode").and_then(|c| c.parse().ok()),
            labels,
        };
        self.on_observe(&c.tenant_id, &c.runner_id, &obs).await;
    }

    /// The runner as rules see it: from the tenant's runners, read again
    /// when [`RUNNER_TTL`] old, or when it is not among them (enrolled
    /// since) and the read is older than [`REREAD_MISSING`]; one missing
    /// from a read that recent is read alone. A runner of none (deleted)
    /// has only its id.
    async fn runner(&mut self, tenant: &str, id: &str) -> Arc<RunnerInfo> {
        let (age, known) = match self.runners.get(tenant) {
            Some(t) => (Some(t.read_at.elapsed()), t.by_id.get(id).cloned()),
            None => (None, None),
        };
        let fresh = age.is_some_and(|a| a < RUNNER_TTL);
        let recent = age.is_some_and(|a| a < REREAD_MISSING);
        match known {
            Some(info) if fresh => return info,
            None if recent => return self.read_one(tenant, id).await,
            _ => self.read_runners(tenant).await,
        }
        self.runners
            .get(tenant)
            .and_then(|t| t.by_id.get(id).cloned())
            .unwrap_or_else(|| {
                Arc::new(RunnerInfo {
                    id: id.to_owned(),
                    ..RunnerInfo::default()
                })
            })
    }

    /// One runner the tenant's last read did not have (enrolled since):
    /// its name and labels, kept with the tenant's until their next read.
    async fn read_one(&mut self, tenant: &str, id: &str) -> Arc<RunnerInfo> {
        let (row, labels) = tokio::join!(
            self.db.control.runner(tenant, id),
            self.db.fleet.labels(tenant, id)
        );
        let labels = labels
            .map(|(accepted, _proposed)| accepted)
            .unwrap_or_default();
        let name = row.ok().flatten().map(|r| r.name).unwrap_or_default();
        let info = Arc::new(runner_info(id.to_owned(), name, labels));
        if let Some(t) = self.runners.get_mut(tenant) {
            t.by_id.insert(id.to_owned(), info.clone());
        }
        info
    }

    /// Every runner of the tenant, names and accepted labels (the group is
    /// the label `group`): two store calls for the whole tenant, so a
    /// fleet's reports cost two reads per tenant and [`RUNNER_TTL`], not
    /// reads per runner. A failed read keeps what was known, for a second.
    async fn read_runners(&mut self, tenant: &str) {
        let (rows, labels) = tokio::join!(
            self.db.control.list_runners(tenant),
            self.db.fleet.tenant_labels(tenant)
        );
        let (rows, mut labels) = match (rows, labels) {
            (Ok(r), Ok(l)) => (r, l),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(tenant, "alerts: reading the tenant's runners: {e}");
                let retry = Instant::now()
                    .checked_sub(RUNNER_TTL - REREAD_MISSING)
                    .unwrap_or_else(Instant::now);
                let t = self
                    .runners
                    .entry(tenant.to_owned())
                    .or_insert_with(|| TenantRunners {
                        read_at: retry,
                        by_id: HashMap::new(),
                    });
                t.read_at = retry;
                return;
            }
        };
        let by_id = rows
            .into_iter()
            .map(|r| {
                let labels = labels.remove(&r.id).unwrap_or_default();
                let info = runner_info(r.id.clone(), r.name, labels);
                (r.id, Arc::new(info))
            })
            .collect::<HashMap<_, _>>();
        tracing::debug!(
            tenant,
            runners = by_id.len(),
            "alerts: the tenant's runners read (names, groups, labels)"
        );
        self.runners.insert(
            tenant.to_owned(),
            TenantRunners {
                read_at: Instant::now(),
                by_id,
            },
        );
    }

    async fn on_observe(&mut self, tenant: &str, runner: &str, obs: &Observation) {
        if self.tenants.get(tenant).is_none_or(|t| t.rules.is_empty()) {
            return;
        }
        // Health is the lease holder's (checked by the caller); the rest
        // is the engine's where the runner is linked.
        if !matches!(obs, Observation::Health { .. }) {
            match self.owner(tenant, runner) {
                Owner::Here => {}
                Owner::Reading => return self.hold(runner, Held::Obs(obs.clone())),
                Owner::Not => return,
            }
        }
        let info = self.runner(tenant, runner).await;
        let now = clock::now_ms();
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        let out = t.eval.observe(&t.rules, &info, obs, now);
        self.record(tenant, out).await;
    }

    async fn on_tick(&mut self) {
        self.sync_mode();
        self.release_gone();
        let now = clock::now_ms();
        let tenants: Vec<String> = self
            .tenants
            .iter()
            .filter(|(_, t)| !t.eval.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for tenant in tenants {
            // Read only for the targets that change (none, most seconds).
            let cache = self.runners.get(&tenant).map(|t| &t.by_id);
            let Some(t) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            let lookup = |id: &str| match cache.and_then(|c| c.get(id)) {
                Some(info) => RunnerInfo::clone(info),
                None => RunnerInfo {
                    id: id.to_owned(),
                    ..RunnerInfo::default()
                },
            };
            let out = t.eval.tick(&t.rules, &lookup, now);
            self.record(&tenant, out).await;
        }
    }

    async fn silenced(&mut self, tenant: &str, t: &Transition, now: i64) -> bool {
        if self
            .silences_read
            .is_none_or(|at| at.elapsed() > SILENCE_TTL)
        {
            match self.store.all_silences(now).await {
                Ok(s) => self.silences = s,
                Err(e) => tracing::error!("alerts: reading silences: {e}"),
            }
            self.silences_read = Some(Instant::now());
        }
        self.silences
            .iter()
            .any(|s| s.tenant == tenant && s.spec.silences(t, now))
    }

    /// Store each transition, then notify the rule's channels unless silenced.
    async fn record(&mut self, tenant: &str, out: Vec<Transition>) {
        for t in out {
            let Some(through) = self.through(tenant, &t) else {
                tracing::info!(rule = %t.rule_id, runner = %t.runner.id, subject = %t.subject, "alert state owned elsewhere now: not recorded here");
                continue;
            };
            tracing::debug!(rule = %t.rule_id, runner = %t.runner.id, subject = %t.subject, to = %t.to.as_str(), "alert transition: writing");
            let silenced = self.silenced(tenant, &t, t.at).await;
            let row = AlertRow {
                rule_id: t.rule_id.clone(),
                target: format!("{}/{}", t.runner.id, t.subject),
                tenant: tenant.to_owned(),
                runner_id: t.runner.id.clone(),
                subject: t.subject.clone(),
                state: t.to,
                since_ms: t.at,
                summary: t.summary.clone(),
                ack: None,
            };
            let seq = match self
                .store
                .transition(&row, silenced || !t.notify, t.at, through.as_ref())
                .await
            {
                Ok(Some(s)) => Some(s),
                Ok(None) => {
                    // Another replica took the runner before this one heard
                    // of it: its transitions are that replica's now.
                    tracing::debug!(rule = %t.rule_id, runner = %t.runner.id, subject = %t.subject, to = t.to.as_str(), "alert transition refused by the store: the runner's link is no longer this one; not notified");
                    self.disown(&t.runner.id);
                    continue;
                }
                Err(e) => {
                    tracing::error!("alerts: storing a transition: {e}");
                    None
                }
            };
            tracing::info!(rule = %t.rule_id, runner = %t.runner.id, subject = %t.subject, state = t.to.as_str(), silenced, "alert {}", t.summary);
            if silenced || !t.notify || t.to == State::Pending {
                continue;
            }
            let Some(rule) = self
                .tenants
                .get(tenant)
                .and_then(|x| x.rules.iter().find(|r| r.id == t.rule_id))
            else {
                continue;
            };
            let n = Notification {
                version: 1,
                state: t.to.as_str().to_owned(),
                rule_id: rule.id.clone(),
                rule_name: rule.spec.name.clone(),
                runner_id: t.runner.id.clone(),
                runner_name: t.runner.name.clone(),
                group: t.runner.group.clone(),
                subject: t.subject.clone(),
                summary: t.summary.clone(),
                value: t.value,
                at: clock::rfc3339(t.at),
                history_seq: seq,
            };
            for ch in &rule.spec.channels {
                self.notifier.send(tenant, ch, n.clone());
            }
        }
    }
}

/// A `listening` change as (`listening tcp 0.0.0.0:4444`, `opened by nc`).
fn listener_change(c: &tether::fingerprint::Change) -> Option<(String, String)> {
    use tether::fingerprint::Listener;
    if c.path != "listening" {
        return None;
    }
    let (l, verb) = match (&c.old, &c.new) {
        (_, n) if !n.is_null() => (
            serde_json::from_value::<Listener>(n.clone()).ok()?,
            "opened",
        ),
        (o, _) => (
            serde_json::from_value::<Listener>(o.clone()).ok()?,
            "closed",
        ),
    };
    let at = std::net::SocketAddr::new(l.addr, l.port);
    let by = l.process.as_deref().unwrap_or("an unseen process");
    Some((
        format!("listening {} {at}", l.proto),
        format!("{verb} by {by}"),
    ))
}
