//! The decision core: rules, what they watch, and the state of each
//! (rule, target). Plain data and functions, no I/O, no clock of its own
//! (every call takes `now`), so everything here is tested without a server.
//!
//! A *target* is what one rule watches on one runner: the runner itself
//! (unreachable), one metric series, one container, one drift path, one
//! script or app, the runner's updates, one container's log. Its key is
//! `runner_id/subject`.
//!
//! ```text
//!                cond on                      held for `for_s`
//!   (idle) ─────────────────▶ pending ─────────────────────────▶ firing ──▶ notify "firing"
//!      ▲                         │ cond off (no notification)       │
//!      └─────────────────────────┘                                  │ resolve cond
//!      ▲                                                            ▼
//!      └──────────────────────────────────────────────────────── resolved ─▶ notify "resolved"
//!                                                                  (one-shot kinds: silently)
//! ```
//!
//! - *cond on* / *resolve cond* differ per kind: a metric fires above
//!   `threshold` and resolves only below `resolve` (hysteresis: values in
//!   between keep the current state, so flapping around the threshold
//!   does not flap notifications); a runner fires when down and resolves
//!   when back; one-shot kinds (drift, a failed job, a rejected update, a
//!   log match) fire at once (`for_s` = 0) and resolve on their recovery
//!   signal or after `quiet_s` without a new occurrence.
//! - Only a *change* of state is a [`Transition`]: the same state seen
//!   again yields nothing, so no state is notified twice.
//! - Silences and maintenance windows ([`Silence`]) do not stop the state
//!   machine: the transition is recorded in the history, marked silenced,
//!   and not sent. Acknowledgement is a note on a firing alert (who, when,
//!   comment); it clears when the alert resolves.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::fleet::selector::{Labels, Selector};

// The model (what is stored) lives with its store; the rules here decide.
pub use crate::db::alerts::{
    ContainerFilter, Kind, Op, Rule, RuleSpec, Scope, Silence, SilenceSpec, State,
};

/// Longest rule name, pattern, filter or subject accepted.
pub const MAX_TEXT: usize = 200;
/// Rules per tenant.
pub const MAX_RULES: usize = 200;
/// Longest duration a rule may name (a week).
pub const MAX_SECONDS: u64 = 7 * 24 * 3600;
/// Die times kept per container for the restart count.
const MAX_RESTARTS_KEPT: usize = 1000;
/// A `die` this soon after a `kill` or `stop` of the same container was asked for.
pub const ASKED_STOP_MS: i64 = 30_000;
/// Targets tracked per tenant; past it new targets are not tracked (logged).
pub const MAX_TARGETS: usize = 100_000;

impl RuleSpec {
    /// Bounds and sense; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        let text = |what: &str, s: &str, empty_ok: bool| {
            if (!empty_ok && s.trim().is_empty()) || s.len() > MAX_TEXT {
                Err(format!("{what} must be 1 to {MAX_TEXT} bytes"))
            } else {
                Ok(())
            }
        };
        let secs = |what: &str, s: u64| {
            if s > MAX_SECONDS {
                Err(format!("{what} must be at most {MAX_SECONDS} s"))
            } else {
                Ok(())
            }
        };
        text("name", &self.name, false)?;
        match &self.scope {
            Scope::All => {}
            Scope::Group(g) => text("scope.group", g, false)?,
            Scope::Runner(r) => text("scope.runner", r, false)?,
            Scope::Selector(sel) => {
                Selector::parse(sel).map_err(|e| format!("scope.selector: {e}"))?;
            }
        }
        if let Some(f) = &self.containers {
            if let Some(n) = &f.name {
                text("containers.name", n, false)?;
            }
            if let Some(l) = &f.label {
                text("containers.label", l, false)?;
            }
        }
        if self.channels.len() > 20 {
            return Err("at most 20 channels per rule".into());
        }
        for c in &self.channels {
            text("channels[]", c, false)?;
        }
        match &self.kind {
            Kind::Unreachable { for_s } => secs("for_s", *for_s)?,
            Kind::Metric {
                series,
                per,
                op,
                threshold,
                resolve,
                for_s,
            } => {
                text("series", series, false)?;
                if let Some(p) = per {
                    text("per", p, false)?;
                    if p.matches('*').count() != series.matches('*').count() {
                        return Err("per must have as many * as series".into());
                    }
                }
                if series.matches('*').count() > 1 {
                    return Err("series may have at most one *".into());
                }
                secs("for_s", *for_s)?;
                if !threshold.is_finite() || !resolve.unwrap_or(*threshold).is_finite() {
                    return Err("threshold and resolve must be numbers".into());
                }
                let r = resolve.unwrap_or(*threshold);
                let wrong_side = match op {
                    Op::Above => r > *threshold,
                    Op::Below => r < *threshold,
                };
                if wrong_side {
                    return Err(
                        "resolve must be on the healthy side of threshold (below it for above, above it for below)"
                            .into(),
                    );
                }
            }
            Kind::ContainerStopped { quiet_s } | Kind::ContainerExitNonzero { quiet_s } => {
                secs("quiet_s", *quiet_s)?
            }
            Kind::ContainerUnhealthy {} | Kind::UpdateFailed {} => {}
            Kind::ContainerRestarts { count, within_s } => {
                secs("within_s", *within_s)?;
                if *within_s == 0 || *count as usize >= MAX_RESTARTS_KEPT {
                    return Err(format!(
                        "within_s must be > 0 and count below {MAX_RESTARTS_KEPT}"
                    ));
                }
            }
            Kind::Drift { paths, quiet_s } => {
                secs("quiet_s", *quiet_s)?;
                if paths.len() > 20 {
                    return Err("at most 20 drift paths".into());
                }
                for p in paths {
                    text("paths[]", p, false)?;
                }
            }
            Kind::JobFailed { scripts: names } | Kind::DeployFailed { apps: names } => {
                if names.len() > 50 {
                    return Err("at most 50 names".into());
                }
                for n in names {
                    text("names", n, false)?;
                }
            }
            Kind::LogMatch { pattern, quiet_s } => {
                text("pattern", pattern, false)?;
                secs("quiet_s", *quiet_s)?;
            }
        }
        Ok(())
    }
}

/// A runner as rules see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunnerInfo {
    pub id: String,
    pub name: String,
    pub group: String,
    /// Accepted labels (proposed ones do not count until accepted).
    pub labels: Labels,
}

impl Scope {
    pub fn covers(&self, r: &RunnerInfo) -> bool {
        match self {
            Scope::All => true,
            Scope::Group(g) => *g == r.group,
            Scope::Runner(id) => *id == r.id || *id == r.name,
            Scope::Selector(text) => parsed(text).is_some_and(|s| s.matches(&r.labels)),
        }
    }
}

/// Selectors parsed once: `covers` runs for every sample of every runner,
/// the text of a rule's selector changes only with the rule. Bounded (a
/// few tenants' worth of rules); refilled after a clear.
fn parsed(text: &str) -> Option<Arc<Selector>> {
    static CACHE: Mutex<Option<HashMap<String, Arc<Selector>>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(sel) = map.get(text) {
        return Some(sel.clone());
    }
    // Checked when the rule was made; one that no longer parses covers none.
    let sel = Arc::new(Selector::parse(text).ok()?);
    if map.len() >= 4 * MAX_RULES {
        map.clear();
    }
    map.insert(text.to_owned(), sel.clone());
    Some(sel)
}

/// `*` matches any run of characters (including none); everything else
/// literally. No allocation: it runs for every series of every record
/// against every metric rule.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (Some((first, _)), Some((_, last))) = (pattern.split_once('*'), pattern.rsplit_once('*'))
    else {
        return pattern == text;
    };
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    // What lies between the first star and the last ("" for one star).
    let inner = &pattern[first.len() + 1..pattern.len() - last.len()];
    for mid in inner.split('*').filter(|m| !m.is_empty()) {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// What a `*` in a one-star pattern stood for in `text`.
fn capture<'a>(pattern: &str, text: &'a str) -> Option<&'a str> {
    let (head, tail) = pattern.split_once('*')?;
    let mid = text.strip_prefix(head)?.strip_suffix(tail)?;
    (!mid.is_empty() && !mid.contains('.')).then_some(mid)
}

impl ContainerFilter {
    pub fn matches(&self, name: &str, labels: &dyn Fn(&str) -> Option<String>) -> bool {
        if let Some(p) = &self.name {
            if !glob(p, name.trim_start_matches('/')) {
                return false;
            }
        }
        if let Some(l) = &self.label {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            match labels(k) {
                Some(have) if v.is_empty() || have == v => {}
                _ => return false,
            }
        }
        true
    }
}

/// Something that happened on a runner, as the engine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Health {
        up: bool,
        reason: String,
    },
    /// One record of a runner's metrics: every series by name.
    Metrics {
        values: Vec<(String, f64)>,
    },
    Container {
        name: String,
        /// Docker's action: `die`, `start`, `kill`, `health_status: unhealthy`, ...
        action: String,
        exit_code: Option<i64>,
        labels: Vec<(String, String)>,
    },
    Drift {
        path: String,
        detail: String,
    },
    Job {
        /// Script name or command; for a deploy, the app.
        label: String,
        deploy: bool,
        status: String,
        reason: String,
    },
    Update {
        state: String,
        version: String,
        reason: String,
    },
    Log {
        container: String,
        line: String,
    },
}

/// One target's live state (pending or firing; resolved targets are dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub state: State,
    /// When the condition started (pending) or the alert fired.
    pub since: i64,
    /// Last time the condition was seen (one-shot kinds: last occurrence).
    pub last: i64,
    pub summary: String,
    pub value: Option<f64>,
    /// Die times (restart counting), oldest first.
    hits: VecDeque<i64>,
}

/// A change of state the caller records and, unless silenced, notifies.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub rule_id: String,
    pub runner: RunnerInfo,
    pub subject: String,
    pub to: State,
    pub at: i64,
    pub summary: String,
    pub value: Option<f64>,
    /// Resolutions of one-shot kinds are recorded, not sent.
    pub notify: bool,
}

/// Every rule's state for one tenant. `observe` and `tick` are the only
/// ways state changes.
#[derive(Debug, Default)]
pub struct Evaluator {
    targets: HashMap<(String, String), Tracked>,
    /// Targets per runner id: a healthy sample of a runner with none (most
    /// samples) needs no lookup, so no key is made for it.
    per_runner: HashMap<String, usize>,
    /// Recent `kill`/`stop` per (runner, container): a `die` after one was asked for.
    asked_stop: HashMap<(String, String), i64>,
}

/// What one observation means for one rule's target: the condition is on
/// (with a summary and value), off (a recovery signal), or says nothing.
enum Signal {
    On(String, Option<f64>),
    Off(String),
    /// A hysteresis band or an unrelated event: keep the state.
    Neither,
}

fn key(runner: &str, subject: &str) -> String {
    format!("{runner}/{subject}")
}

/// The runner id of a target key (`runner_id/subject`; ids have no `/`).
pub fn runner_of(target: &str) -> &str {
    target.split_once('/').map_or(target, |(r, _)| r)
}

/// Which series of one runner's metrics schema each enabled metric rule
/// reads, and the series it is divided by: made once per (schema, rules),
/// so a record is a walk over indices instead of every series globbed
/// against every rule (`Evaluator::observe_metrics`).
#[derive(Debug, Default)]
pub struct MetricPlan {
    /// In rule order, then series order (the order of the transitions).
    entries: Vec<PlanEntry>,
}

#[derive(Debug)]
struct PlanEntry {
    /// Index into the rules the plan was made for.
    rule: usize,
    series: usize,
    per: Option<usize>,
}

impl MetricPlan {
    /// `names`: the schema's series, in record order.
    pub fn new(rules: &[Rule], names: &[String]) -> MetricPlan {
        let mut entries = Vec::new();
        for (ri, rule) in rules.iter().enumerate() {
            let Kind::Metric { series, per, .. } = &rule.spec.kind else {
                continue;
            };
            if !rule.spec.enabled {
                continue;
            }
            for (si, name) in names.iter().enumerate() {
                if !glob(series, name) {
                    continue;
                }
                if let (Some(ctr), true) = (name.strip_prefix("ctr."), series.starts_with("ctr.")) {
                    let ctr = ctr.rsplit_once('.').map_or(ctr, |(c, _)| c);
                    let ok = rule
                        .spec
                        .containers
                        .as_ref()
                        .is_none_or(|f| f.matches(ctr, &|_| None));
                    if !ok {
                        continue;
                    }
                }
                let per = match per {
                    None => None,
                    Some(p) => {
                        let denom = match capture(series, name) {
                            Some(s) => p.replacen('*', s, 1),
                            None => p.clone(),
                        };
                        // No such series in this schema: the rule cannot
                        // be judged on this one.
                        match names.iter().position(|n| *n == denom) {
                            Some(d) => Some(d),
                            None => continue,
                        }
                    }
                };
                entries.push(PlanEntry {
                    rule: ri,
                    series: si,
                    per,
                });
            }
        }
        MetricPlan { entries }
    }

    /// Series looked at per record (0: the tenant's metric rules read
    /// nothing this runner sends).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Evaluator {
    /// Targets known (pending or firing).
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// A state read back from the store at start-up.
    pub fn restore(
        &mut self,
        rule_id: &str,
        target: &str,
        state: State,
        since: i64,
        summary: &str,
    ) {
        let k = (rule_id.to_owned(), target.to_owned());
        if !self.targets.contains_key(&k) {
            *self
                .per_runner
                .entry(runner_of(target).to_owned())
                .or_default() += 1;
        }
        self.targets.insert(
            k,
            Tracked {
                state,
                since,
                last: since,
                summary: summary.to_owned(),
                value: None,
                hits: VecDeque::new(),
            },
        );
    }

    /// A new target (the caller checked it is not there).
    fn track(&mut self, k: (String, String), t: Tracked) -> &mut Tracked {
        *self
            .per_runner
            .entry(runner_of(&k.1).to_owned())
            .or_default() += 1;
        self.targets.entry(k).or_insert(t)
    }

    fn untrack(&mut self, k: &(String, String)) -> Option<Tracked> {
        let t = self.targets.remove(k)?;
        let r = runner_of(&k.1);
        if let Some(n) = self.per_runner.get_mut(r) {
            *n -= 1;
            if *n == 0 {
                self.per_runner.remove(r);
            }
        }
        Some(t)
    }

    /// Whether `runner` has any target (pending or firing) of any rule.
    pub fn has_targets(&self, runner: &str) -> bool {
        self.per_runner.contains_key(runner)
    }

    /// Pending and firing targets of `rule_id` (for listing and tests).
    pub fn get(&self, rule_id: &str, target: &str) -> Option<&Tracked> {
        self.targets.get(&(rule_id.to_owned(), target.to_owned()))
    }

    /// Forget a deleted rule's targets.
    pub fn drop_rule(&mut self, rule_id: &str) {
        self.retain(|r, _| r != rule_id);
    }

    /// Keep only the targets `keep(rule_id, target key)` says yes to; the
    /// others are forgotten without a transition (another replica owns
    /// them now, `alerts/mod.rs`).
    pub fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.targets.retain(|(r, t), _| keep(r, t));
        self.per_runner.clear();
        for (_, target) in self.targets.keys() {
            *self
                .per_runner
                .entry(runner_of(target).to_owned())
                .or_default() += 1;
        }
    }

    /// An observation of `runner` at `now` against `rules`.
    pub fn observe(
        &mut self,
        rules: &[Rule],
        runner: &RunnerInfo,
        obs: &Observation,
        now: i64,
    ) -> Vec<Transition> {
        if let Observation::Metrics { values } = obs {
            // By name (tests, and callers without a schema): the same
            // path as the engine's, with a plan made for this record.
            let names: Vec<String> = values.iter().map(|(n, _)| n.clone()).collect();
            let vals: Vec<Option<f64>> = values.iter().map(|(_, v)| Some(*v)).collect();
            let plan = MetricPlan::new(rules, &names);
            return self.observe_metrics(rules, &plan, &names, runner, &vals, now);
        }
        if let Observation::Container { name, action, .. } = obs {
            let k = (runner.id.clone(), name.clone());
            if action == "kill" || action == "stop" {
                if self.asked_stop.len() >= MAX_TARGETS {
                    self.asked_stop.retain(|_, t| now - *t < ASKED_STOP_MS);
                }
                self.asked_stop.insert(k, now);
            } else if action == "start" {
                self.asked_stop.remove(&k);
            }
        }
        let mut out = Vec::new();
        for rule in rules {
            if !rule.spec.enabled || !rule.spec.scope.covers(runner) {
                continue;
            }
            for (subject, signal) in self.signals(rule, runner, obs, now) {
                self.apply(rule, runner, subject, signal, now, &mut out);
            }
        }
        out
    }

    /// One metrics record of `runner`: `values[i]` is series `names[i]`
    /// (none: not sent this time), `plan` made from these `rules` and
    /// names. A healthy value of a runner with no target costs a compare:
    /// no text is made, nothing is looked up.
    pub fn observe_metrics(
        &mut self,
        rules: &[Rule],
        plan: &MetricPlan,
        names: &[String],
        runner: &RunnerInfo,
        values: &[Option<f64>],
        now: i64,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        // The scope is judged once per rule, not per series.
        let mut scoped: Option<(usize, bool)> = None;
        for e in &plan.entries {
            let Some(rule) = rules.get(e.rule) else {
                continue;
            };
            let covered = match scoped {
                Some((r, ok)) if r == e.rule => ok,
                _ => {
                    let ok = rule.spec.enabled && rule.spec.scope.covers(runner);
                    scoped = Some((e.rule, ok));
                    ok
                }
            };
            if !covered {
                continue;
            }
            let (Some(Some(v)), Some(name)) = (values.get(e.series), names.get(e.series)) else {
                continue;
            };
            let value = match e.per {
                None => *v,
                Some(d) => match values.get(d) {
                    Some(Some(d)) if *d != 0.0 => 100.0 * v / d,
                    _ => continue,
                },
            };
            if let Some(signal) = self.metric_signal(rule, runner, name, value) {
                self.apply(rule, runner, name.clone(), signal, now, &mut out);
            }
        }
        out
    }

    /// What one value of one series says for a metric rule's target.
    fn metric_signal(
        &self,
        rule: &Rule,
        runner: &RunnerInfo,
        name: &str,
        value: f64,
    ) -> Option<Signal> {
        let Kind::Metric {
            per,
            op,
            threshold,
            resolve,
            ..
        } = &rule.spec.kind
        else {
            return None;
        };
        let resolve = resolve.unwrap_or(*threshold);
        let (on, off) = match op {
            Op::Above => (value > *threshold, value <= resolve),
            Op::Below => (value < *threshold, value >= resolve),
        };
        // Healthy or in the band, as most samples are: news only for a
        // tracked target, and most runners have none.
        let tracked = || {
            self.has_targets(&runner.id)
                .then(|| self.targets.get(&(rule.id.clone(), key(&runner.id, name))))
                .flatten()
        };
        let shown = || match per {
            Some(p) => format!("{name} / {p}"),
            None => name.to_owned(),
        };
        Some(if on {
            let word = if *op == Op::Above { "above" } else { "below" };
            Signal::On(
                format!(
                    "{} = {} on {} ({word} {})",
                    shown(),
                    fmt_num(value),
                    runner_label(runner),
                    fmt_num(*threshold)
                ),
                Some(value),
            )
        } else if off {
            tracked()?;
            Signal::Off(format!(
                "{} = {} on {} (back past {})",
                shown(),
                fmt_num(value),
                runner_label(runner),
                fmt_num(resolve)
            ))
        } else {
            // Between the thresholds: a pending alert did not hold; a
            // firing one stays (hysteresis).
            match tracked() {
                Some(t) if t.state == State::Pending => Signal::Off(String::new()),
                _ => return None,
            }
        })
    }

    /// What `obs` says for each of `rule`'s targets on this runner.
    fn signals(
        &mut self,
        rule: &Rule,
        runner: &RunnerInfo,
        obs: &Observation,
        now: i64,
    ) -> Vec<(String, Signal)> {
        let container_ok = |name: &str, labels: &[(String, String)]| {
            rule.spec.containers.as_ref().is_none_or(|f| {
                f.matches(name, &|k| {
                    labels
                        .iter()
                        .find(|(lk, _)| lk == k)
                        .map(|(_, v)| v.clone())
                })
            })
        };
        match (&rule.spec.kind, obs) {
            (Kind::Unreachable { .. }, Observation::Health { up, reason }) => {
                let s = if *up {
                    Signal::Off(format!("{} is reachable again", runner_label(runner)))
                } else {
                    Signal::On(
                        format!("{} is unreachable ({reason})", runner_label(runner)),
                        None,
                    )
                };
                vec![(String::new(), s)]
            }
            // Metrics go by `observe_metrics` (a plan per schema).
            (
                kind @ (Kind::ContainerStopped { .. }
                | Kind::ContainerExitNonzero { .. }
                | Kind::ContainerUnhealthy {}
                | Kind::ContainerRestarts { .. }),
                Observation::Container {
                    name,
                    action,
                    exit_code,
                    labels,
                },
            ) => {
                if !container_ok(name, labels) {
                    return Vec::new();
                }
                let who = format!("container {name} on {}", runner_label(runner));
                let code = exit_code.unwrap_or(0);
                let signal = match (kind, action.as_str()) {
                    (Kind::ContainerStopped { .. }, "die") => {
                        let asked = self
                            .asked_stop
                            .get(&(runner.id.clone(), name.clone()))
                            .is_some_and(|t| now - *t < ASKED_STOP_MS);
                        if asked {
                            Signal::Neither
                        } else {
                            Signal::On(
                                format!("{who} stopped unexpectedly (exit {code})"),
                                Some(code as f64),
                            )
                        }
                    }
                    (Kind::ContainerExitNonzero { .. }, "die") if code != 0 => {
                        Signal::On(format!("{who} exited with code {code}"), Some(code as f64))
                    }
                    (Kind::ContainerUnhealthy {}, a) if a.starts_with("health_status") => {
                        if a.ends_with("unhealthy") {
                            Signal::On(format!("{who} is unhealthy"), None)
                        } else if a.ends_with("healthy") {
                            Signal::Off(format!("{who} is healthy again"))
                        } else {
                            Signal::Neither
                        }
                    }
                    (Kind::ContainerRestarts { count, within_s }, "die") => {
                        let k = (rule.id.clone(), key(&runner.id, name));
                        let window = *within_s as i64 * 1000;
                        let hits = self.targets.get_mut(&k).map(|t| &mut t.hits);
                        let mut n = hits.map_or(0, |h| {
                            while h.front().is_some_and(|t| now - t >= window) {
                                h.pop_front();
                            }
                            h.len()
                        });
                        n += 1;
                        let summary = format!(
                            "{who} restarted {n} times in {} (more than {count})",
                            fmt_secs(*within_s)
                        );
                        // Tracked from the first die so the count survives;
                        // it fires only past `count`.
                        if n > *count as usize {
                            Signal::On(summary, Some(n as f64))
                        } else {
                            self.hit(rule, runner, name, now, summary, n);
                            Signal::Neither
                        }
                    }
                    _ => Signal::Neither,
                };
                vec![(name.clone(), signal)]
            }
            (Kind::Drift { paths, .. }, Observation::Drift { path, detail }) => {
                if paths.is_empty() || paths.iter().any(|p| path.starts_with(p.as_str())) {
                    vec![(
                        path.clone(),
                        Signal::On(
                            format!("drift on {}: {path} {detail}", runner_label(runner)),
                            None,
                        ),
                    )]
                } else {
                    Vec::new()
                }
            }
            (
                Kind::JobFailed { scripts: names } | Kind::DeployFailed { apps: names },
                Observation::Job {
                    label,
                    deploy,
                    status,
                    reason,
                },
            ) => {
                let wants_deploy = matches!(rule.spec.kind, Kind::DeployFailed { .. });
                if wants_deploy != *deploy || !(names.is_empty() || names.contains(label)) {
                    return Vec::new();
                }
                let what = if *deploy { "deploy of" } else { "job" };
                let s = match status.as_str() {
                    "failed" | "timed_out" => Signal::On(
                        format!(
                            "{what} {label} {} on {}: {reason}",
                            status.replace('_', " "),
                            runner_label(runner)
                        ),
                        None,
                    ),
                    "succeeded" => Signal::Off(format!(
                        "{what} {label} succeeded on {}",
                        runner_label(runner)
                    )),
                    _ => Signal::Neither,
                };
                vec![(label.clone(), s)]
            }
            (
                Kind::UpdateFailed {},
                Observation::Update {
                    state,
                    version,
                    reason,
                },
            ) => {
                let s = match state.as_str() {
                    "rejected" | "failed" => Signal::On(
                        format!(
                            "update to {version} {} on {}: {reason}",
                            if state == "failed" {
                                "rolled back"
                            } else {
                                "rejected"
                            },
                            runner_label(runner)
                        ),
                        None,
                    ),
                    "installed" => Signal::Off(format!(
                        "update to {version} installed on {}",
                        runner_label(runner)
                    )),
                    _ => Signal::Neither,
                };
                vec![("update".into(), s)]
            }
            (Kind::LogMatch { pattern, .. }, Observation::Log { container, line }) => {
                if !container_ok(container, &[]) || !line.contains(pattern.as_str()) {
                    return Vec::new();
                }
                let line: String = line.chars().take(MAX_TEXT).collect();
                vec![(
                    container.clone(),
                    Signal::On(
                        format!(
                            "container {container} on {} logged: {line}",
                            runner_label(runner)
                        ),
                        None,
                    ),
                )]
            }
            _ => Vec::new(),
        }
    }

    /// Count a die below the restart threshold without firing.
    fn hit(
        &mut self,
        rule: &Rule,
        runner: &RunnerInfo,
        name: &str,
        now: i64,
        summary: String,
        n: usize,
    ) {
        let k = (rule.id.clone(), key(&runner.id, name));
        let t = match self.targets.contains_key(&k) {
            true => self.targets.get_mut(&k).expect("checked"),
            false => self.track(
                k,
                Tracked {
                    state: State::Pending,
                    since: now,
                    last: now,
                    summary: String::new(),
                    value: None,
                    hits: VecDeque::new(),
                },
            ),
        };
        t.hits.push_back(now);
        t.last = now;
        t.summary = summary;
        t.value = Some(n as f64);
    }

    fn apply(
        &mut self,
        rule: &Rule,
        runner: &RunnerInfo,
        subject: String,
        signal: Signal,
        now: i64,
        out: &mut Vec<Transition>,
    ) {
        let k = (rule.id.clone(), key(&runner.id, &subject));
        let hold_ms = match &rule.spec.kind {
            Kind::Unreachable { for_s } | Kind::Metric { for_s, .. } => *for_s as i64 * 1000,
            _ => 0,
        };
        let transition = |to, summary: String, value| Transition {
            rule_id: rule.id.clone(),
            runner: runner.clone(),
            subject: subject.clone(),
            to,
            at: now,
            summary,
            value,
            notify: true,
        };
        match signal {
            Signal::Neither => {}
            Signal::On(summary, value) => {
                let known = self.targets.contains_key(&k);
                if !known && self.targets.len() >= MAX_TARGETS {
                    tracing::warn!(rule = %rule.id, "alert targets at their cap: not tracked");
                    return;
                }
                let t = match known {
                    true => self.targets.get_mut(&k).expect("checked"),
                    false => self.track(
                        k,
                        Tracked {
                            state: State::Pending,
                            since: now,
                            last: now,
                            summary: summary.clone(),
                            value,
                            hits: VecDeque::new(),
                        },
                    ),
                };
                if let Kind::ContainerRestarts { .. } = rule.spec.kind {
                    t.hits.push_back(now);
                    if t.hits.len() > MAX_RESTARTS_KEPT {
                        t.hits.pop_front();
                    }
                }
                t.last = now;
                t.value = value;
                if t.state == State::Pending {
                    t.summary = summary.clone();
                    if now - t.since >= hold_ms {
                        t.state = State::Firing;
                        t.since = now;
                        out.push(transition(State::Firing, summary, value));
                    }
                }
            }
            Signal::Off(summary) => {
                let Some(t) = self.untrack(&k) else {
                    return;
                };
                if t.state == State::Firing {
                    out.push(transition(State::Resolved, summary, None));
                }
            }
        }
    }

    /// Time passing: pending runner alerts that have held fire; one-shot
    /// and restart alerts quiet for long enough resolve.
    pub fn tick(
        &mut self,
        rules: &[Rule],
        runners: &dyn Fn(&str) -> RunnerInfo,
        now: i64,
    ) -> Vec<Transition> {
        let by_id: HashMap<&str, &Rule> = rules.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for ((rule_id, target), t) in self.targets.iter_mut() {
            let Some(rule) = by_id.get(rule_id.as_str()) else {
                gone.push((rule_id.clone(), target.clone()));
                continue;
            };
            let (runner_id, subject) = target.split_once('/').unwrap_or((target, ""));
            let quiet_ms = |s: u64| s as i64 * 1000;
            let mut to = None;
            match (&rule.spec.kind, t.state) {
                (Kind::Unreachable { for_s }, State::Pending)
                    if now - t.since >= quiet_ms(*for_s) =>
                {
                    to = Some((State::Firing, true));
                }
                (Kind::ContainerRestarts { within_s, .. }, _)
                    if now - t.last >= quiet_ms(*within_s) =>
                {
                    to = Some((State::Resolved, t.state == State::Firing));
                }
                (
                    Kind::ContainerStopped { quiet_s }
                    | Kind::ContainerExitNonzero { quiet_s }
                    | Kind::Drift { quiet_s, .. }
                    | Kind::LogMatch { quiet_s, .. },
                    State::Firing,
                ) if now - t.last >= quiet_ms(*quiet_s) => {
                    // Container kinds tell when it is fine again; the
                    // others were one-shot news.
                    let says = matches!(
                        rule.spec.kind,
                        Kind::ContainerStopped { .. } | Kind::ContainerExitNonzero { .. }
                    );
                    to = Some((State::Resolved, says));
                }
                _ => {}
            }
            let Some((to, notify)) = to else { continue };
            let runner = runners(runner_id);
            let summary = match to {
                State::Firing => t.summary.clone(),
                _ if matches!(
                    rule.spec.kind,
                    Kind::ContainerRestarts { .. }
                        | Kind::ContainerStopped { .. }
                        | Kind::ContainerExitNonzero { .. }
                ) =>
                {
                    format!(
                        "container {subject} on {} has been up for a while",
                        runner_label(&runner)
                    )
                }
                _ => format!("quiet again: {}", t.summary),
            };
            if to == State::Firing {
                t.state = State::Firing;
                t.since = now;
            } else {
                gone.push((rule_id.clone(), target.clone()));
                if !notify {
                    // A never-fired restart counter, or a one-shot note:
                    // recorded only if it had fired.
                    if t.state != State::Firing {
                        continue;
                    }
                }
            }
            out.push(Transition {
                rule_id: rule_id.clone(),
                runner,
                subject: subject.to_owned(),
                to,
                at: now,
                summary,
                value: t.value,
                notify,
            });
        }
        for k in gone {
            self.untrack(&k);
        }
        out
    }

    /// Every tracked target: `(rule_id, target key, state)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Tracked)> {
        self.targets
            .iter()
            .map(|((r, k), t)| (r.as_str(), k.as_str(), t))
    }
}

fn runner_label(r: &RunnerInfo) -> String {
    if r.name.is_empty() {
        format!("runner {}", r.id)
    } else {
        format!("runner {}", r.name)
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_secs(s: u64) -> String {
    if s % 60 == 0 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

impl SilenceSpec {
    pub fn check(&self) -> Result<(), String> {
        if self.ends_ms <= self.starts_ms {
            return Err("ends must be after starts".into());
        }
        if self.comment.len() > MAX_TEXT {
            return Err(format!("comment must be at most {MAX_TEXT} bytes"));
        }
        if self.maintenance && self.group.is_none() {
            return Err("a maintenance window names a group".into());
        }
        if self.rule.is_none() && self.runner.is_none() && self.group.is_none() {
            return Err("a silence names a rule, a runner or a group (or several)".into());
        }
        for s in [&self.rule, &self.runner, &self.group]
            .into_iter()
            .flatten()
        {
            if s.is_empty() || s.len() > MAX_TEXT {
                return Err(format!(
                    "rule, runner and group must be 1 to {MAX_TEXT} bytes"
                ));
            }
        }
        Ok(())
    }

    /// In force at `now` and matching the transition (every field it names).
    pub fn silences(&self, t: &Transition, now: i64) -> bool {
        now >= self.starts_ms
            && now < self.ends_ms
            && self.rule.as_ref().is_none_or(|r| *r == t.rule_id)
            && self
                .runner
                .as_ref()
                .is_none_or(|r| *r == t.runner.id || *r == t.runner.name)
            && self.group.as_ref().is_none_or(|g| *g == t.runner.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, kind: Kind) -> Rule {
        Rule {
            id: id.into(),
            tenant: "t".into(),
            spec: RuleSpec {
                name: id.into(),
                scope: Scope::All,
                containers: None,
                kind,
                channels: vec![],
                enabled: true,
            },
        }
    }

    fn runner(id: &str, group: &str) -> RunnerInfo {
        RunnerInfo {
            id: id.into(),
            name: format!("{id}-name"),
            group: group.into(),
            labels: Labels::new(),
        }
    }

    fn health(up: bool) -> Observation {
        Observation::Health {
            up,
            reason: "gone".into(),
        }
    }

    fn metric(name: &str, v: f64) -> Observation {
        Observation::Metrics {
            values: vec![(name.into(), v)],
        }
    }

    fn states(ts: &[Transition]) -> Vec<State> {
        ts.iter().map(|t| t.to).collect()
    }

    #[test]
    fn unreachable_fires_after_its_duration_and_resolves_once() {
        let rules = [rule("r1", Kind::Unreachable { for_s: 10 })];
        let r = runner("a", "");
        let info = |_: &str| r.clone();
        let mut e = Evaluator::default();
        assert!(e.observe(&rules, &r, &health(false), 0).is_empty());
        assert!(e.tick(&rules, &info, 9_999).is_empty());
        let fired = e.tick(&rules, &info, 10_000);
        assert_eq!(states(&fired), [State::Firing]);
        assert!(fired[0].summary.contains("a-name is unreachable"));
        // Down again while firing: no second notification.
        assert!(e.observe(&rules, &r, &health(false), 11_000).is_empty());
        assert!(e.tick(&rules, &info, 20_000).is_empty());
        let back = e.observe(&rules, &r, &health(true), 21_000);
        assert_eq!(states(&back), [State::Resolved]);
        assert!(e.observe(&rules, &r, &health(true), 22_000).is_empty());
        assert!(e.is_empty());
    }

    #[test]
    fn a_short_outage_is_never_notified() {
        let rules = [rule("r1", Kind::Unreachable { for_s: 10 })];
        let r = runner("a", "");
        let mut e = Evaluator::default();
        e.observe(&rules, &r, &health(false), 0);
        assert!(e.observe(&rules, &r, &health(true), 5_000).is_empty());
        assert!(e.tick(&rules, &|_: &str| r.clone(), 60_000).is_empty());
    }

    #[test]
    fn metric_hysteresis_does_not_flap() {
        let rules = [rule(
            "m",
            Kind::Metric {
                series: "cpu.busy".into(),
                per: None,
                op: Op::Above,
                threshold: 90.0,
                resolve: Some(80.0),
                for_s: 10,
            },
        )];
        let r = runner("a", "");
        let mut e = Evaluator::default();
        let mut all = Vec::new();
        // Above, held for 10 s: fires once.
        for (t, v) in [(0, 95.0), (5_000, 96.0), (10_000, 97.0), (15_000, 99.0)] {
            all.extend(e.observe(&rules, &r, &metric("cpu.busy", v), t));
        }
        assert_eq!(states(&all), [State::Firing]);
        // Flapping between 85 and 95: still firing, nothing new.
        for (i, v) in [85.0, 95.0, 85.0, 91.0, 81.0].iter().enumerate() {
            assert!(e
                .observe(
                    &rules,
                    &r,
                    &metric("cpu.busy", *v),
                    20_000 + i as i64 * 5_000
                )
                .is_empty());
        }
        let done = e.observe(&rules, &r, &metric("cpu.busy", 79.0), 50_000);
        assert_eq!(states(&done), [State::Resolved]);
        // A spike shorter than for_s: no notification.
        assert!(e
            .observe(&rules, &r, &metric("cpu.busy", 95.0), 60_000)
            .is_empty());
        assert!(e
            .observe(&rules, &r, &metric("cpu.busy", 85.0), 65_000)
            .is_empty());
        assert!(e
            .observe(&rules, &r, &metric("cpu.busy", 95.0), 70_000)
            .is_empty());
        assert!(e.get("m", "a/cpu.busy").is_some_and(|t| t.since == 70_000));
    }

    #[test]
    fn metric_ratio_with_a_star() {
        let rules = [rule(
            "fs",
            Kind::Metric {
                series: "fs.*.avail".into(),
                per: Some("fs.*.size".into()),
                op: Op::Below,
                threshold: 10.0,
                resolve: Some(15.0),
                for_s: 0,
            },
        )];
        let r = runner("a", "");
        let mut e = Evaluator::default();
        let values = |avail: f64| Observation::Metrics {
            values: vec![
                ("fs./.avail".into(), 500.0),
                ("fs./.size".into(), 1000.0),
                ("fs./data.avail".into(), avail),
                ("fs./data.size".into(), 1000.0),
            ],
        };
        let t = e.observe(&rules, &r, &values(50.0), 0);
        assert_eq!(states(&t), [State::Firing]);
        assert_eq!(t[0].subject, "fs./data.avail");
        assert_eq!(t[0].value, Some(5.0));
        assert!(e.observe(&rules, &r, &values(120.0), 1).is_empty());
        assert_eq!(
            states(&e.observe(&rules, &r, &values(200.0), 2)),
            [State::Resolved]
        );
    }

    #[test]
    fn a_plan_reads_only_what_rules_name_and_skips_values_not_sent() {
        let metric = |series: &str, per: Option<&str>, op, threshold, resolve| Kind::Metric {
            series: series.into(),
            per: per.map(Into::into),
            op,
            threshold,
            resolve,
            for_s: 0,
        };
        let rules = [
            rule("cpu", metric("cpu.busy", None, Op::Above, 90.0, Some(50.0))),
            rule(
                "fs",
                metric("fs.*.avail", Some("fs.*.size"), Op::Below, 10.0, None),
            ),
        ];
        let names: Vec<String> = [
            "cpu.busy",
            "fs./.avail",
            "fs./.size",
            "fs./x.avail",
            "mem.total",
        ]
        .map(String::from)
        .to_vec();
        let plan = MetricPlan::new(&rules, &names);
        // fs./x.avail has no size series: the ratio rule cannot read it.
        assert_eq!(plan.len(), 2);
        let (a, b) = (runner("a", ""), runner("b", ""));
        let healthy = [Some(10.0), Some(900.0), Some(1000.0), Some(1.0), None];
        let mut e = Evaluator::default();
        let at = |e: &mut Evaluator, r: &RunnerInfo, v: &[Option<f64>], now| {
            e.observe_metrics(&rules, &plan, &names, r, v, now)
                .iter()
                .map(|t| (t.rule_id.clone(), t.to))
                .collect::<Vec<_>>()
        };
        assert!(at(&mut e, &a, &healthy, 0).is_empty());
        assert!(e.is_empty());
        // cpu.busy not sent this time, / low: only fs fires.
        let low = [None, Some(50.0), Some(1000.0), None, None];
        assert_eq!(at(&mut e, &a, &low, 1), [("fs".into(), State::Firing)]);
        // Another runner's healthy record changes nothing of a's.
        assert!(at(&mut e, &b, &healthy, 2).is_empty());
        let spike = [Some(99.0), Some(50.0), Some(1000.0), None, None];
        assert_eq!(at(&mut e, &a, &spike, 3), [("cpu".into(), State::Firing)]);
        assert_eq!(e.len(), 2);
        assert_eq!(
            at(&mut e, &a, &healthy, 4),
            [
                ("cpu".into(), State::Resolved),
                ("fs".into(), State::Resolved)
            ]
        );
        assert!(e.is_empty());
        // By name, the same: a plan is made for the record.
        let t = e.observe(&rules, &a, &metric_values(&[("cpu.busy", 95.0)]), 5);
        assert_eq!(states(&t), [State::Firing]);
    }

    fn metric_values(pairs: &[(&str, f64)]) -> Observation {
        Observation::Metrics {
            values: pairs.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("fs.*.avail", "fs./var.avail"));
        assert!(!glob("fs.*.avail", "fs./var.size"));
        assert!(glob("web-*", "web-1"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "ac"));
        assert!(glob("exact", "exact"));
        assert!(glob("a*b*c", "abc"));
        assert!(glob("a**b", "ab"));
        assert!(!glob("a*a", "a"));
        assert!(!glob("x*", "y"));
        assert_eq!(capture("fs.*.avail", "fs./.avail"), Some("/"));
    }

    fn ctr(name: &str, action: &str, code: Option<i64>) -> Observation {
        Observation::Container {
            name: name.into(),
            action: action.into(),
            exit_code: code,
            labels: vec![("team".into(), "web".into())],
        }
    }

    #[test]
    fn a_crash_loop_notifies_once_with_its_count() {
        let rules = [rule(
            "cl",
            Kind::ContainerRestarts {
                count: 3,
                within_s: 60,
            },
        )];
        let r = runner("a", "");
        let mut e = Evaluator::default();
        let mut all = Vec::new();
        for i in 0..10 {
            all.extend(e.observe(&rules, &r, &ctr("web", "die", Some(1)), i * 2_000));
            all.extend(e.observe(&rules, &r, &ctr("web", "start", None), i * 2_000 + 500));
        }
        assert_eq!(states(&all), [State::Firing]);
        assert!(
            all[0].summary.contains("restarted 4 times"),
            "{}",
            all[0].summary
        );
        let info = |_: &str| r.clone();
        assert!(e.tick(&rules, &info, 18_000 + 59_000).is_empty());
        assert_eq!(
            states(&e.tick(&rules, &info, 18_000 + 60_000)),
            [State::Resolved]
        );
    }

    #[test]
    fn stopped_unexpectedly_ignores_asked_stops() {
        let mut stop = rule("s", Kind::ContainerStopped { quiet_s: 60 });
        stop.spec.containers = Some(ContainerFilter {
            name: Some("web*".into()),
            label: Some("team=web".into()),
        });
        let nz = rule("nz", Kind::ContainerExitNonzero { quiet_s: 60 });
        let rules = [stop, nz];
        let r = runner("a", "");
        let mut e = Evaluator::default();
        e.observe(&rules, &r, &ctr("web1", "kill", None), 0);
        assert!(e
            .observe(&rules, &r, &ctr("web1", "die", Some(0)), 1_000)
            .is_empty());
        let t = e.observe(&rules, &r, &ctr("web1", "die", Some(137)), 40_000);
        assert_eq!(t.len(), 2);
        // The filter: another name does not match the stop rule.
        let t = e.observe(&rules, &r, &ctr("db", "die", Some(0)), 41_000);
        assert!(t.is_empty());
    }

    #[test]
    fn jobs_deploys_updates_drift_and_logs() {
        let rules = [
            rule(
                "j",
                Kind::JobFailed {
                    scripts: vec!["backup".into()],
                },
            ),
            rule("d", Kind::DeployFailed { apps: vec![] }),
            rule("u", Kind::UpdateFailed {}),
            rule(
                "dr",
                Kind::Drift {
                    paths: vec!["listening".into()],
                    quiet_s: 60,
                },
            ),
            rule(
                "l",
                Kind::LogMatch {
                    pattern: "panic".into(),
                    quiet_s: 60,
                },
            ),
        ];
        let r = runner("a", "");
        let mut e = Evaluator::default();
        let job = |label: &str, deploy, status: &str| Observation::Job {
            label: label.into(),
            deploy,
            status: status.into(),
            reason: "exit 1".into(),
        };
        assert!(e
            .observe(&rules, &r, &job("other", false, "failed"), 0)
            .is_empty());
        let t = e.observe(&rules, &r, &job("backup", false, "failed"), 0);
        assert_eq!((t[0].rule_id.as_str(), t[0].to), ("j", State::Firing));
        assert_eq!(
            states(&e.observe(&rules, &r, &job("backup", false, "succeeded"), 1)),
            [State::Resolved]
        );
        let t = e.observe(&rules, &r, &job("shop", true, "failed"), 2);
        assert_eq!(t[0].rule_id, "d");
        assert!(t[0].summary.contains("deploy of shop failed"));
        let up = |s: &str| Observation::Update {
            state: s.into(),
            version: "0.3.0".into(),
            reason: "did not connect".into(),
        };
        assert!(e.observe(&rules, &r, &up("failed"), 3)[0]
            .summary
            .contains("rolled back"));
        assert!(e.observe(&rules, &r, &up("rejected"), 4).is_empty());
        let drift = |p: &str| Observation::Drift {
            path: p.into(),
            detail: "tcp 0.0.0.0:8080 nc".into(),
        };
        assert!(e.observe(&rules, &r, &drift("kernel"), 5).is_empty());
        assert_eq!(e.observe(&rules, &r, &drift("listening"), 5).len(), 1);
        let log = |l: &str| Observation::Log {
            container: "web".into(),
            line: l.into(),
        };
        assert!(e.observe(&rules, &r, &log("all fine"), 6).is_empty());
        assert_eq!(e.observe(&rules, &r, &log("panic: x"), 6).len(), 1);
        // Rate limited: more matches within quiet_s are not notified.
        assert!(e.observe(&rules, &r, &log("panic: y"), 30_000).is_empty());
        let ticked = e.tick(&rules, &|_: &str| r.clone(), 90_000);
        let log_end: Vec<_> = ticked.iter().filter(|t| t.rule_id == "l").collect();
        assert_eq!(log_end.len(), 1);
        assert!(!log_end[0].notify);
        assert_eq!(e.observe(&rules, &r, &log("panic: z"), 91_000).len(), 1);
    }

    #[test]
    fn a_selector_scope_covers_runners_by_their_accepted_labels() {
        let mut r = rule("s", Kind::Unreachable { for_s: 0 });
        r.spec.scope = Scope::Selector("env=prod,region in (eu,us),!canary".into());
        assert!(r.spec.check().is_ok());
        let rules = [r];
        let labelled = |id: &str, pairs: &[(&str, &str)]| {
            let mut info = runner(id, "");
            info.labels = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            info
        };
        let mut e = Evaluator::default();
        let prod_eu = labelled("a", &[("env", "prod"), ("region", "eu")]);
        let canary = labelled("b", &[("env", "prod"), ("region", "eu"), ("canary", "")]);
        let staging = labelled("c", &[("env", "staging"), ("region", "us")]);
        assert_eq!(
            states(&e.observe(&rules, &prod_eu, &health(false), 0)),
            [State::Firing]
        );
        assert!(e.observe(&rules, &canary, &health(false), 0).is_empty());
        assert!(e.observe(&rules, &staging, &health(false), 0).is_empty());
        assert!(e
            .observe(&rules, &runner("d", ""), &health(false), 0)
            .is_empty());
        // A selector that does not parse is refused, naming the field.
        let mut bad = rule("x", Kind::Unreachable { for_s: 0 });
        bad.spec.scope = Scope::Selector("env in (".into());
        let err = bad.spec.check().unwrap_err();
        assert!(err.starts_with("scope.selector: at byte"), "{err}");
    }

    #[test]
    fn scope_and_silences() {
        let mut g = rule("g", Kind::Unreachable { for_s: 0 });
        g.spec.scope = Scope::Group("edge".into());
        let rules = [g];
        let mut e = Evaluator::default();
        assert!(e
            .observe(&rules, &runner("a", "core"), &health(false), 0)
            .is_empty());
        let t = e.observe(&rules, &runner("b", "edge"), &health(false), 0);
        assert_eq!(states(&t), [State::Firing]);
        let s = SilenceSpec {
            rule: None,
            runner: None,
            group: Some("edge".into()),
            starts_ms: 0,
            ends_ms: 100,
            comment: String::new(),
            maintenance: true,
        };
        assert!(s.check().is_ok());
        assert!(s.silences(&t[0], 50));
        assert!(!s.silences(&t[0], 100));
        let mut other = s.clone();
        other.runner = Some("zzz".into());
        assert!(!other.silences(&t[0], 50));
        let mut bad = s.clone();
        bad.ends_ms = 0;
        assert!(bad.check().is_err());
    }

    #[test]
    fn rule_json_is_checked() {
        let ok: RuleSpec = serde_json::from_str(
            r#"{"name":"cpu","kind":"metric","series":"cpu.busy","op":"above","threshold":90,"resolve":80,"for_s":300}"#,
        )
        .unwrap();
        assert!(ok.check().is_ok());
        let wrong_side: RuleSpec = serde_json::from_str(
            r#"{"name":"cpu","kind":"metric","series":"cpu.busy","op":"above","threshold":90,"resolve":95}"#,
        )
        .unwrap();
        assert!(wrong_side.check().unwrap_err().contains("resolve"));
        assert!(serde_json::from_str::<RuleSpec>(r#"{"name":"x","kind":"nope"}"#).is_err());
        assert!(serde_json::from_str::<RuleSpec>(
            r#"{"name":"x","kind":"unreachable","for_s":5,"typo":1}"#
        )
        .is_err());
        let long: RuleSpec = serde_json::from_value(serde_json::json!({
            "name": "x".repeat(300), "kind": "unreachable", "for_s": 5
        }))
        .unwrap();
        assert!(long.check().is_err());
        let scoped: RuleSpec = serde_json::from_str(
            r#"{"name":"u","scope":{"group":"edge"},"kind":"unreachable","for_s":5}"#,
        )
        .unwrap();
        assert_eq!(scoped.scope, Scope::Group("edge".into()));
    }
}
