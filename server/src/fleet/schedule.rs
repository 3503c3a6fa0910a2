//! Schedules: a saved script (or a command) run on the runners of a
//! selector at the times of a cron expression (`cron.rs`), as plain jobs
//! or as a rollout in waves (`rollout.rs`).
//!
//! ```text
//!  PUT /schedules/{name} ─▶ checked (cron, selector, job, waves) ─▶ db::FleetStore
//!  scheduler task, every TICK, on every server process:
//!     schedules (re-read when one is due, else every REFRESH) ─▶ cron::due
//!       missed occurrences ─▶ claim_occurrence("missed")
//!       the one to run     ─▶ claim_occurrence("running") ──won──▶ jobs | rollout
//!                                                        └─lost─▶ another process runs it
//! ```
//!
//! Running once per occurrence rests on the store: an occurrence is a
//! unique row, and only the process whose insert lands runs it, so two
//! servers on one PostgreSQL (or one data dir) never both do. The claim
//! is made before the jobs: a process that dies between the two leaves
//! the occurrence `running` with no jobs (missed, never doubled).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::common::clock;
use crate::common::error::ApiError;
use crate::db::fleet::ScheduleRow;
use crate::fleet::cron::{self, Cron, Missed};
use crate::fleet::waves::{Threshold, WaveSize};
use crate::fleet::{labels, FleetCtx};
use crate::link::dispatch::FamilyId;

/// How often the scheduler looks at the clock: a run starts at most this
/// late (plus its jitter).
pub const TICK: Duration = Duration::from_secs(1);
/// Schedules are re-read at least this often (another process may have
/// added or changed one), and whenever one is due.
const REFRESH_MS: i64 = 10_000;
/// An occurrence fired (with its jitter) at most this long ago runs; an
/// older one follows the missed-run policy.
pub const GRACE_MS: i64 = 60_000;
/// Missed occurrences recorded per schedule and pass (the newest; the
/// history is for reading, not an account of a long outage).
const MAX_MISSED_RECORDED: usize = 100;
/// Schedules one tenant may have.
pub const MAX_SCHEDULES: usize = 100;
/// Longest jitter: a day.
pub const MAX_JITTER_S: u64 = 86_400;
/// Runs kept readable per schedule in one answer.
pub const MAX_HISTORY: usize = 500;
/// Occurrences shown ahead.
const NEXT_SHOWN: usize = 5;

/// Waves of a scheduled rollout (the fields of `POST /rollouts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waves {
    /// `10` runners or `10%` of them per wave.
    pub wave: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_rate: Option<u8>,
}

/// A schedule as stored (the row's body) and as `PUT` takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub cron: String,
    /// Which runners, at each run (`""`: every runner).
    pub selector: String,
    /// What runs: the job part of `POST /jobs` (`script` or `command`,
    /// env, secrets, timeout_s).
    pub job: Value,
    /// Each run starts up to this long after its occurrence (the same
    /// delay on every server process: `cron::jitter_ms`).
    #[serde(default)]
    pub jitter_s: u64,
    /// `skip` or `run-once`: what a server that was down does with the
    /// occurrences it missed [default skip].
    #[serde(default = "skip")]
    pub missed: String,
    /// Run as a rollout in waves instead of jobs all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
    /// How long a job waits for an offline runner (default: the tenant's
    /// policy; a rollout's own default otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
}

fn skip() -> String {
    Missed::Skip.as_str().to_owned()
}

/// A definition checked: what the scheduler needs at each tick.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub cron: Cron,
    pub jitter_ms: i64,
    pub missed: Missed,
}

impl Definition {
    /// Everything that can be judged without the database.
    pub fn parse(&self) -> Result<Parsed, ApiError> {
        let cron =
            Cron::parse(&self.cron).map_err(|e| ApiError::bad_request(format!("cron: {e}")))?;
        labels::parse_selector(&self.selector)?;
        if self.jitter_s > MAX_JITTER_S {
            return Err(ApiError::bad_request(format!(
                "jitter_s: at most {MAX_JITTER_S} (a day)"
            )));
        }
        let missed = Missed::parse(&self.missed)
            .ok_or_else(|| ApiError::bad_request("missed: skip or run-once"))?;
        if let Some(w) = &self.waves {
            wave_params(w)?;
        }
        if self
            .deadline_s
            .is_some_and(|d| d > crate::fleet::deadlines::MAX_DEADLINE_S)
        {
            return Err(ApiError::bad_request(format!(
                "deadline_s: at most {}",
                crate::fleet::deadlines::MAX_DEADLINE_S
            )));
        }
        Ok(Parsed {
            cron,
            jitter_ms: self.jitter_s as i64 * 1000,
            missed,
        })
    }

    fn run_body(&self) -> Result<crate::jobs::api::RunBody, ApiError> {
        let b: crate::jobs::api::RunBody = serde_json::from_value(self.job.clone())
            .map_err(|e| ApiError::bad_request(format!("job: {e}")))?;
        if !b.is_job_only() {
            return Err(ApiError::bad_request(
                "job: what to run only (runners come from the schedule's selector)",
            ));
        }
        Ok(b)
    }
}

/// A rollout's wave size, its text, concurrency and threshold, checked
/// (`POST /rollouts` and scheduled rollouts).
pub fn wave_params(w: &Waves) -> Result<(WaveSize, u32, Threshold), ApiError> {
    let wave = WaveSize::parse(&w.wave).ok_or_else(|| {
        ApiError::bad_request("wave: a number of runners (1 or more) or a percentage (1% to 100%)")
    })?;
    let threshold = match (w.max_failures, w.max_failure_rate) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give max_failures or max_failure_rate, not both",
            ))
        }
        (None, Some(p)) if p <= 100 => Threshold::Rate(p),
        (None, Some(_)) => return Err(ApiError::bad_request("max_failure_rate: 0 to 100")),
        (Some(0), None) => return Err(ApiError::bad_request("max_failures: 1 or more")),
        (Some(n), None) => Threshold::Count(n),
        (None, None) => Threshold::Count(1),
    };
    if w.concurrency == Some(0) {
        return Err(ApiError::bad_request("concurrency: 1 or more"));
    }
    Ok((wave, w.concurrency.unwrap_or(u32::MAX), threshold))
}

/// Check a new definition against the tenant's data too (the script
/// exists, the job fits), then store it: it runs from the next
/// occurrence after now.
pub async fn put(
    state: &FleetCtx,
    tenant: &str,
    name: &str,
    def: &Definition,
) -> Result<Value, ApiError> {
    if !crate::jobs::rules::valid_name(name) {
        return Err(ApiError::bad_request(format!(
            "schedule name {name:?}: 1 to 64 of [A-Za-z0-9_.-]"
        )));
    }
    let parsed = def.parse()?;
    def.run_body()?.spec(&state.jobs, tenant).await?;
    let existing = state.fleet.store.schedules(Some(tenant)).await?;
    if existing.len() >= MAX_SCHEDULES && !existing.iter().any(|r| r.name == name) {
        return Err(ApiError::conflict(format!(
            "the tenant has {MAX_SCHEDULES} schedules, the most it may have"
        )));
    }
    // Stored as parsed: the cron text normalised.
    let mut def = def.clone();
    def.cron = parsed.cron.to_string();
    let body = serde_json::to_string(&def).map_err(ApiError::internal)?;
    let now = clock::now_ms();
    state
        .fleet
        .store
        .put_schedule(tenant, name, &body, now)
        .await?;
    tracing::info!(tenant, schedule = name, cron = %def.cron, "schedule saved");
    let row = ScheduleRow {
        tenant_id: tenant.to_owned(),
        name: name.to_owned(),
        body,
        last_occurrence: now,
    };
    Ok(view(&row, now))
}

/// The next firing times (occurrence + jitter) after the last one dealt
/// with.
fn next_runs(name: &str, p: &Parsed, last: i64, now: i64, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    let mut at = last;
    while out.len() < n {
        let Some(o) = p.cron.next_after(at) else {
            break;
        };
        at = o;
        // One not yet dealt with (the scheduler's tick) shows as now.
        out.push((o + cron::jitter_ms(name, o, p.jitter_ms)).max(now));
    }
    out
}

/// A schedule as the API shows it: its definition, the next runs.
pub fn view(row: &ScheduleRow, now: i64) -> Value {
    let def: Result<Definition, _> = serde_json::from_str(&row.body);
    let Ok(def) = def else {
        return json!({"name": row.name, "error": "unreadable definition"});
    };
    let next: Vec<String> = def
        .parse()
        .map(|p| next_runs(&row.name, &p, row.last_occurrence, now, NEXT_SHOWN))
        .unwrap_or_default()
        .into_iter()
        .map(clock::rfc3339)
        .collect();
    let mut v = serde_json::to_value(&def).unwrap_or(Value::Null);
    v["name"] = json!(row.name);
    v["next_run"] = json!(next.first());
    v["next_runs"] = json!(next);
    v
}

/// A run as the API shows it.
pub fn run_view(r: &crate::db::fleet::RunRow) -> Value {
    json!({
        "occurrence": clock::rfc3339(r.occurrence_ms),
        "occurrence_ms": r.occurrence_ms,
        "status": r.status,
        "at": clock::rfc3339(r.at_ms),
        "jobs": r.jobs,
    })
}

// ---- the scheduler -------------------------------------------------------------

struct Known {
    row: ScheduleRow,
    def: Definition,
    parsed: Parsed,
    /// When its next occurrence fires (occurrence + jitter).
    next_fire: i64,
}

/// What one process knows of every tenant's schedules between reads.
#[derive(Default)]
struct Cache {
    known: Vec<Known>,
    read_at: Option<i64>,
}

impl Cache {
    fn stale(&self, now: i64) -> bool {
        self.read_at.is_none_or(|t| now - t >= REFRESH_MS)
            || self.known.iter().any(|k| k.next_fire <= now)
    }
}

/// Run schedules forever (a task of `fleet::spawn`, on every process).
pub async fn run(state: FleetCtx) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cache = Cache::default();
    loop {
        tick.tick().await;
        if let Err(e) = pass(&state, &mut cache, clock::now_ms()).await {
            tracing::error!("scheduler: {}", e.message);
        }
    }
}

/// One look at the clock: re-read and act when something is due.
async fn pass(state: &FleetCtx, cache: &mut Cache, now: i64) -> Result<(), ApiError> {
    if !cache.stale(now) {
        return Ok(());
    }
    let rows = state.fleet.store.schedules(None).await?;
    cache.read_at = Some(now);
    cache.known.clear();
    for row in rows {
        let def: Definition = match serde_json::from_str(&row.body) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(tenant = %row.tenant_id, schedule = %row.name, "unreadable schedule: {e}");
                continue;
            }
        };
        let parsed = match def.parse() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(tenant = %row.tenant_id, schedule = %row.name, "schedule: {}", e.message);
                continue;
            }
        };
        let mut k = Known {
            next_fire: i64::MAX,
            row,
            def,
            parsed,
        };
        let due = cron::due(
            &k.parsed.cron,
            &k.row.name,
            k.parsed.jitter_ms,
            k.row.last_occurrence,
            now,
            GRACE_MS,
            k.parsed.missed,
        );
        if let Some(handled) = due.handled {
            act(state, &k, &due, now).await;
            k.row.last_occurrence = k.row.last_occurrence.max(handled);
        }
        k.next_fire = next_runs(&k.row.name, &k.parsed, k.row.last_occurrence, now, 1)
            .first()
            .copied()
            .unwrap_or(i64::MAX);
        cache.known.push(k);
    }
    Ok(())
}

/// Record the missed occurrences and run the due one, each only if this
/// process claims it.
async fn act(state: &FleetCtx, k: &Known, due: &cron::Due, now: i64) {
    let (tenant, name) = (&k.row.tenant_id, &k.row.name);
    let skip = due.missed.len().saturating_sub(MAX_MISSED_RECORDED);
    for &o in &due.missed[skip..] {
        match state
            .fleet
            .store
            .claim_occurrence(tenant, name, o, "missed", now)
            .await
        {
            Ok(true) => {
                tracing::warn!(tenant, schedule = %name, occurrence = %clock::rfc3339(o), "schedule: occurrence missed")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(tenant, schedule = %name, "recording a missed run: {e}"),
        }
    }
    let Some(o) = due.run else { return };
    match state
        .fleet
        .store
        .claim_occurrence(tenant, name, o, "running", now)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(tenant, schedule = %name, occurrence = o, "occurrence claimed by another process");
            return;
        }
        Err(e) => {
            tracing::error!(tenant, schedule = %name, "claiming an occurrence: {e}");
            return;
        }
    }
    let (status, ids) = match fire(state, tenant, name, &k.def).await {
        Ok(r) => r,
        Err(e) => (format!("failed: {}", e.message), Vec::new()),
    };
    tracing::info!(tenant, schedule = %name, occurrence = %clock::rfc3339(o), status, jobs = ids.len(), "schedule ran");
    if let Err(e) = state
        .fleet
        .store
        .set_run_jobs(tenant, name, o, &status, &ids)
        .await
    {
        tracing::error!(tenant, schedule = %name, "recording a run: {e}");
    }
}

/// Start one run: jobs for every runner the selector names now, or a
/// rollout. Returns the run's status and its job (or rollout) ids.
async fn fire(
    state: &FleetCtx,
    tenant: &str,
    name: &str,
    def: &Definition,
) -> Result<(String, Vec<String>), ApiError> {
    let sel = labels::parse_selector(&def.selector)?;
    let (label, spec) = def.run_body()?.spec(&state.jobs, tenant).await?;
    let runners: Vec<(String, String)> = labels::select(&state.labels, tenant, &sel)
        .await?
        .into_iter()
        .map(|(r, _)| (r.id, r.name))
        .collect();
    if runners.is_empty() {
        return Ok(("no runners".into(), Vec::new()));
    }
    let deadline =
        crate::fleet::deadlines::deadline_ms(&state.labels, tenant, def.deadline_s).await?;
    if let Some(w) = &def.waves {
        let (wave, concurrency, threshold) = wave_params(w)?;
        if runners.len() > crate::fleet::rollout::MAX_TARGETS {
            return Err(ApiError::bad_request(format!(
                "the selector names {} runners; a rollout takes at most {}",
                runners.len(),
                crate::fleet::rollout::MAX_TARGETS
            )));
        }
        let view = crate::fleet::rollout::start(
            state,
            tenant,
            runners,
            crate::fleet::rollout::NewRollout {
                selector: sel.to_string(),
                wave,
                wave_text: w.wave.clone(),
                concurrency,
                threshold,
                soak_ms: 0,
                work: crate::fleet::rollout::Work::Job {
                    deadline_ms: deadline
                        .unwrap_or(crate::fleet::api::ROLLOUT_DEADLINE_S as i64 * 1000),
                    label,
                    spec: Box::new(spec),
                },
            },
        )
        .await?;
        let id = view["id"].as_str().unwrap_or_default().to_owned();
        return Ok(("rollout".into(), vec![id]));
    }
    if runners.len() > crate::jobs::rules::MAX_RUNNERS_PER_RUN {
        return Err(ApiError::bad_request(format!(
            "the selector names {} runners; jobs at once go to at most {} (give the schedule waves)",
            runners.len(),
            crate::jobs::rules::MAX_RUNNERS_PER_RUN
        )));
    }
    let now = clock::now_ms();
    let mut jobs = Vec::with_capacity(runners.len());
    for (r, _) in &runners {
        jobs.push((crate::jobs::api::new_job_id()?, r.clone()));
    }
    crate::jobs::api::create_jobs(&state.jobs, tenant, &jobs, &label, &spec, now).await?;
    if let Some(ms) = deadline {
        state
            .fleet
            .store
            .add_deadlines(tenant, &jobs, now + ms)
            .await?;
    }
    for (_, r) in &jobs {
        state.registry.nudge(r, FamilyId::Jobs);
    }
    tracing::debug!(schedule = name, jobs = jobs.len(), "scheduled jobs made");
    Ok(("started".into(), jobs.into_iter().map(|(j, _)| j).collect()))
}

/// Schedules of a tenant by name (the API's list).
pub async fn list(state: &FleetCtx, tenant: &str) -> Result<Vec<Value>, ApiError> {
    let now = clock::now_ms();
    let rows = state.fleet.store.schedules(Some(tenant)).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut last: HashMap<String, Value> = HashMap::new();
    for r in &rows {
        if let Some(run) = state.fleet.store.runs(tenant, &r.name, 1).await?.first() {
            last.insert(r.name.clone(), run_view(run));
        }
    }
    for r in &rows {
        let mut v = view(r, now);
        v["last_run"] = last.remove(&r.name).unwrap_or(Value::Null);
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(cron: &str) -> Definition {
        Definition {
            cron: cron.into(),
            selector: "role=db".into(),
            job: json!({"command": "true"}),
            jitter_s: 0,
            missed: "skip".into(),
            waves: None,
            deadline_s: None,
        }
    }

    #[test]
    fn definitions_are_checked_field_by_field() {
        assert!(def("0 3 * * *").parse().is_ok());
        for (d, says) in [
            (def("0 3 * *"), "cron: five fields"),
            (
                Definition {
                    selector: "a=(".into(),
                    ..def("* * * * *")
                },
                "selector: at byte",
            ),
            (
                Definition {
                    jitter_s: MAX_JITTER_S + 1,
                    ..def("* * * * *")
                },
                "jitter_s",
            ),
            (
                Definition {
                    missed: "later".into(),
                    ..def("* * * * *")
                },
                "missed: skip or run-once",
            ),
            (
                Definition {
                    waves: Some(Waves {
                        wave: "0%".into(),
                        ..Waves::default()
                    }),
                    ..def("* * * * *")
                },
                "wave:",
            ),
        ] {
            let e = d.parse().unwrap_err().message;
            assert!(e.contains(says), "{e}");
        }
        let e = Definition {
            job: json!({"command": "true", "runners": ["rn_1"]}),
            ..def("* * * * *")
        }
        .run_body()
        .err()
        .unwrap()
        .message;
        assert!(e.contains("what to run only"), "{e}");
    }

    #[test]
    fn next_runs_follow_the_cron_and_its_jitter() {
        let p = def("0 * * * *").parse().unwrap();
        let h = 3_600_000;
        assert_eq!(
            next_runs("s", &p, 10 * h, 10 * h, 3),
            [11 * h, 12 * h, 13 * h]
        );
        let j = Definition {
            jitter_s: 600,
            ..def("0 * * * *")
        }
        .parse()
        .unwrap();
        let n = next_runs("s", &j, 10 * h, 10 * h, 1)[0];
        assert_eq!(n, 11 * h + cron::jitter_ms("s", 11 * h, 600_000));
    }
}
