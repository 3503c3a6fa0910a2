//! Rollouts: per runner of a selector, a job or an update to a version,
//! started in waves by the planner (`waves.rs`), driven by one task on
//! the replica holding the once-only lease (a single server: itself),
//! from the store, so a rollout goes on where it was when that replica
//! dies or the server restarts.
//!
//! ```text
//!  POST /rollouts (any replica) ─▶ runners of the selector (name order) ─▶ Planner
//!     ─▶ row: view (what GET shows) + driver state (work, planner, targets), rev 0
//!  driver task (the lease holder; `run`), every TICK:
//!     open rows (driver state set) ─▶ not held here, or rev moved ─▶ read it (again),
//!          finish what its last change left half done (see below)
//!     finished targets ─▶ planner.finished(ok)       (one query for all the
//!     (update: soaking wave's runners gone bad          running targets' jobs, each
//!          ─▶ planner.failed_late)                      1 s past 500 running;
//!                                                       update: two, each 1 s)
//!     planner.starts_at(now) ─▶ job ids / previous versions chosen, status `starting`
//!          ─▶ SAVED (rev+1) ─▶ only then: the jobs (the ordinary job path, with a deadline)
//!                              or the runner's own desired version + an offer
//!     anything changed ─▶ saved (rev+1): state, wave, soak, a start or the end
//!          at once, targets' progress at most each SAVE_EVERY_MS
//!     over for good ─▶ driver state dropped (closed)
//!  pause / resume / abort (any replica): read the row, apply the action to its
//!     planner, save it if rev is still the one read (else read again) ─▶ the answer
//!     is the state stored; abort also cancels the running jobs and takes
//!     an update back from the runners not at it yet (below)
//! ```
//!
//! Every write of the row is compare-and-set on its revision (`rev`), the
//! driver's too: a driver whose save misses (an action landed in between)
//! drops what it holds and reads the row again, and nothing it decided
//! after its last save has happened yet outside the planner, because a
//! target is saved as started (its job id, the previous desired version)
//! before its job is made or its version set. So an action answered
//! `paused` means no target starts after it that the answer does not show
//! as running. Actions are taken in the store rather than forwarded to
//! the lease holder: they work the same while the lease moves (nobody
//! drives; the next holder reads the action with the rest), on a single
//! server, and on whichever replica the request lands; the driver sees
//! them within a TICK, by the revision in its one query of open rows.
//!
//! A driver that reads a row whose last change it did not finish
//! (another replica died, or this server restarted, after the save and
//! before the work): a job target `starting` gets its job made under the
//! saved id if no job has it (never a second job for a target); an
//! update target `starting` gets the desired version set and an offer
//! (again, at worst: what its own desired version says anyway); an
//! aborted rollout's running jobs are asked to cancel again.
//!
//! A job target fails when its job ends in anything but `succeeded`
//! (failed, timed out, cancelled, or expired because the runner stayed
//! offline past the rollout's deadline). An update target succeeds when
//! the runner is connected at the version, and fails when it reports the
//! update `failed` (rolled back), `rejected` or `interrupted`, or is not
//! connected at the version within `reconnect` of its start; a failed
//! runner gets its previous own desired version back (its policy's, if
//! it had none) and, if connected, that version's offer, so it is not
//! offered the version again. While a wave soaks, a runner of it found
//! back at another version, reporting a failure, or not connected for
//! longer than `reconnect`, fails late.
//!
//! A tick costs what the rollout's running targets need, not its size:
//! their jobs' states in one query (`JobStore::job_states`), or their
//! runners' versions and health and the newest update reports in two,
//! each second; nothing is written unless something changed (the
//! planner's [`Mark`] and the targets' statuses tell it without making
//! the row). Rows saved by builds before the driver state was
//! stored have none: they show as they were, `live: false`.
//!
//! Abort of an update rollout: the runners of waves not started are
//! skipped (never offered anything). Each started runner not yet
//! connected at the version gets its previous own desired version back
//! and is sent that version's offer (or none): a connected runner holds
//! no pending offer (it takes one at once or refuses it), and an offline
//! one is offered the previous version when it connects. What abort
//! cannot stop is an install already under way: a runner that took the
//! offer closed its connection to download, try and swap the binary, and
//! nothing reaches it until it is back. Such a target stays running
//! until the runner is connected at the version (succeeded, "already
//! under way at the abort"), reports a failure (failed), is connected at
//! another version (skipped, "withdrawn by the abort: not installed") or
//! stays away past `reconnect` (skipped).
//!
//! ```text
//!  abort, per running update target:
//!    connected at the version ───────────────▶ succeeded (next tick)
//!    else: previous desired version back, its offer sent
//!          ├─ back at the version ───────────▶ succeeded (the install was under way)
//!          ├─ reports failed/rejected ───────▶ failed
//!          ├─ connected at another version ──▶ skipped (after 2 s: it did not take it)
//!          └─ away past `reconnect` ─────────▶ skipped
//! ```

use std::collections::{HashMap, HashSet};

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::common::clock;
use crate::common::error::ApiError;
use crate::db::control::Health;
use crate::db::fleet::RolloutRow;
use crate::db::jobs::{JobSpec, JobState};
use crate::db::StorageError;
use crate::fleet::waves::{Planner, State, TargetState, Threshold, Totals, WaveSize};
use crate::fleet::FleetCtx;
use crate::link::dispatch::FamilyId;

/// How often the driver looks at the rollouts and their jobs (and so the
/// longest an action taken on another replica waits to be seen).
const TICK: Duration = Duration::from_millis(300);
/// How often an update rollout's running targets are looked at (their
/// runners' versions and reports: one query each for the whole wave; an
/// install takes seconds, the reconnect bound is counted in seconds).
const UPDATE_CHECK_MS: i64 = 1_000;
/// A job rollout with more running targets than this looks at their jobs
/// each [`JOB_CHECK_MS`] rather than each TICK: one query for all of
/// them either way, but 10,000 ids three times a second was most of the
/// driver's cost, and a wave that large ends in more than a second.
const JOB_CHECK_EACH_TICK_UP_TO: usize = 500;
const JOB_CHECK_MS: i64 = 1_000;
/// How often a soaking wave's updated runners are looked at again.
const SOAK_CHECK_MS: i64 = 2_000;
/// Targets' progress within one state of the rollout is saved at most
/// this often (a 10,000-target row is megabytes of JSON); a change of
/// state, wave or soak, a start and the end are saved at once. What a
/// driver that dies in between did not save, the next one reads again
/// from the jobs and the runners.
const SAVE_EVERY_MS: i64 = 1_000;
/// How long after an abort a runner connected at another version is
/// taken as not having taken the offer (one that took it closes its
/// connection at once to install).
const WITHDRAW_SETTLE_MS: i64 = 2_000;
/// Most runners in one rollout.
pub const MAX_TARGETS: usize = 10_000;
/// How often an action reads the row again when the driver saved it
/// between its read and its write (a save every TICK at most).
const ACTION_ATTEMPTS: usize = 20;
/// A target saved as started whose job or offer may not have happened.
const STARTING: &str = "starting";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub runner_id: String,
    pub name: String,
    pub wave: usize,
    pub state: TargetState,
    pub job_id: Option<String>,
    pub status: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    /// Update rollouts: the version the runner ran when it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// When it started (update: the reports and the reconnect bound count
    /// from here). Stored with the driver state, not shown.
    #[serde(skip)]
    started_ms: i64,
    /// Update: the runner's own desired version before, put back if it
    /// fails. Stored with the driver state, not shown.
    #[serde(skip)]
    prev_desired: Option<String>,
    /// Update: when an abort took the version back from this runner.
    /// Stored with the driver state, not shown.
    #[serde(skip)]
    withdrawn_ms: Option<i64>,
    /// Update, while its wave soaks: since when its runner was last seen
    /// not connected (not stored: a new driver counts again).
    #[serde(skip)]
    away_ms: Option<i64>,
}

impl Target {
    /// A target not started yet, in wave `wave` (1-based).
    fn waiting(runner_id: String, name: String, wave: usize) -> Target {
        Target {
            runner_id,
            name,
            wave,
            state: TargetState::Waiting,
            job_id: None,
            status: None,
            exit_code: None,
            duration_ms: None,
            from_version: None,
            started_ms: 0,
            prev_desired: None,
            withdrawn_ms: None,
            away_ms: None,
        }
    }
}

/// What a rollout does to each runner.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// A job (the ordinary job path).
    Job {
        label: String,
        spec: Box<JobSpec>,
        /// How long a job waits for an offline runner.
        deadline_ms: i64,
    },
    /// An update to `version`: the runner's own desired version.
    Update {
        version: String,
        /// How long a started runner has to be connected at the version.
        reconnect_ms: i64,
    },
}

pub struct Rollout {
    pub id: String,
    pub tenant: String,
    pub created_ms: i64,
    pub selector: String,
    pub wave: String,
    work: Work,
    planner: Planner,
    targets: Vec<Target>,
    /// When a soaking wave, and the running targets (update: always;
    /// job: past 500 running), were last looked at (not stored: a new
    /// driver looks at once).
    soak_checked_ms: i64,
    targets_checked_ms: i64,
    /// The row's revision this copy was read at or last saved as.
    rev: i64,
    /// A target changed since the last read or save (the planner's changes
    /// show in its [`Mark`]).
    dirty: bool,
    /// The planner as last read or saved, and when.
    saved_mark: Mark,
    saved_ms: i64,
}

/// What tells whether a rollout changed, without making its row: the
/// planner's state, wave, soak and totals (every target's move between
/// states changes the totals).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct Mark {
    state: Option<State>,
    wave: usize,
    soak_until: Option<i64>,
    totals: Totals,
}

/// What the driver stores beside the view: everything it needs to go on.
#[derive(Deserialize)]
struct Driver {
    selector: String,
    wave: String,
    work: Work,
    planner: Planner,
    /// Per target, in order.
    started_ms: Vec<i64>,
    prev_desired: Vec<Option<String>>,
    #[serde(default)]
    withdrawn_ms: Vec<Option<i64>>,
}

/// The driver of this process, when it is the one (`run`): told at once
/// of a rollout started or changed here, instead of at its next TICK.
#[derive(Default)]
pub struct Rollouts {
    wake: tokio::sync::Notify,
}

impl Rollouts {
    fn wake(&self) {
        self.wake.notify_one();
    }
}

pub struct NewRollout {
    pub selector: String,
    pub wave: WaveSize,
    pub wave_text: String,
    pub concurrency: u32,
    pub threshold: Threshold,
    /// How long the next wave waits after one is over.
    pub soak_ms: i64,
    pub work: Work,
}

impl Rollout {
    pub fn state(&self) -> State {
        self.planner.state()
    }

    pub fn totals(&self) -> Totals {
        self.planner.totals()
    }

    /// Done or aborted with nothing running: nothing will ever change.
    fn closed(&self) -> bool {
        self.planner.is_over() && matches!(self.planner.state(), State::Done | State::Aborted)
    }

    pub fn view(&self) -> Value {
        let (wave, waves) = self.planner.wave();
        let mut v = json!({
            "id": self.id,
            "state": self.planner.state(),
            "selector": self.selector,
            "wave_size": self.wave,
            "wave": wave + 1,
            "waves": waves,
            "totals": self.planner.totals(),
            "over": self.planner.is_over(),
            "created_at": clock::rfc3339(self.created_ms),
            "soak_s": self.planner.soak_ms() / 1000,
            "soaking_until": self.planner.soak_until().map(clock::rfc3339),
            "targets": self.targets,
            "live": !self.closed(),
        });
        match &self.work {
            Work::Job { label, .. } => {
                v["kind"] = json!("job");
                v["job"] = json!(label);
            }
            Work::Update {
                version,
                reconnect_ms,
            } => {
                v["kind"] = json!("update");
                v["job"] = json!(format!("update to {version}"));
                v["version"] = json!(version);
                v["reconnect_s"] = json!(reconnect_ms / 1000);
            }
        }
        v
    }

    /// The row as it is to be stored (at revision `self.rev`).
    fn row(&self) -> RolloutRow {
        let driver = (!self.closed()).then(|| {
            json!({
                "selector": self.selector,
                "wave": self.wave,
                "work": self.work,
                "planner": self.planner,
                "started_ms": self.targets.iter().map(|t| t.started_ms).collect::<Vec<_>>(),
                "prev_desired": self.targets.iter().map(|t| &t.prev_desired).collect::<Vec<_>>(),
                "withdrawn_ms": self.targets.iter().map(|t| t.withdrawn_ms).collect::<Vec<_>>(),
            })
            .to_string()
        });
        RolloutRow {
            id: self.id.clone(),
            tenant_id: self.tenant.clone(),
            state: self.planner.state().as_str().to_owned(),
            created_ms: self.created_ms,
            updated_ms: clock::now_ms(),
            body: self.view().to_string(),
            driver,
            rev: self.rev,
        }
    }

    /// A stored rollout with its driver state; `None` if it has none
    /// (closed, or saved by an older build).
    fn from_row(row: &RolloutRow) -> Result<Option<Rollout>, String> {
        let Some(text) = &row.driver else {
            return Ok(None);
        };
        let d: Driver = serde_json::from_str(text).map_err(|e| format!("driver state: {e}"))?;
        let mut body: Value = serde_json::from_str(&row.body).map_err(|e| format!("body: {e}"))?;
        let mut targets: Vec<Target> =
            serde_json::from_value(body.get_mut("targets").map(Value::take).unwrap_or_default())
                .map_err(|e| format!("targets: {e}"))?;
        let n = targets.len();
        if !d.planner.is_sound()
            || d.planner.totals().targets != n
            || d.started_ms.len() != n
            || d.prev_desired.len() != n
        {
            return Err("the planner and the targets do not agree".into());
        }
        for ((t, s), p) in targets.iter_mut().zip(d.started_ms).zip(d.prev_desired) {
            t.started_ms = s;
            t.prev_desired = p;
        }
        for (t, w) in targets.iter_mut().zip(d.withdrawn_ms) {
            t.withdrawn_ms = w;
        }
        let mut r = Rollout {
            id: row.id.clone(),
            tenant: row.tenant_id.clone(),
            created_ms: row.created_ms,
            selector: d.selector,
            wave: d.wave,
            work: d.work,
            planner: d.planner,
            targets,
            soak_checked_ms: 0,
            targets_checked_ms: 0,
            rev: row.rev,
            dirty: false,
            saved_mark: Mark::default(),
            saved_ms: row.updated_ms,
        };
        r.saved_mark = r.mark();
        Ok(Some(r))
    }

    fn mark(&self) -> Mark {
        Mark {
            state: Some(self.planner.state()),
            wave: self.planner.wave().0,
            soak_until: self.planner.soak_until(),
            totals: self.planner.totals(),
        }
    }

    /// A target's status, marked as a change only if it is one.
    fn set_status(&mut self, i: usize, status: String) {
        if self.targets[i].status.as_deref() != Some(status.as_str()) {
            self.targets[i].status = Some(status);
            self.dirty = true;
        }
    }

    fn sync_targets(&mut self) {
        for (i, t) in self.targets.iter_mut().enumerate() {
            t.state = self.planner.target(i);
        }
    }
}

/// Why a driver's step stopped: the row moved on (an action, or another
/// driver), or an error. Either way what it holds is dropped and the row
/// read again.
enum Stop {
    Stale,
    /// The stored row does not read back (left alone, said once).
    Unreadable(String),
    Failed(ApiError),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Stop {
        Stop::Failed(e.into())
    }
}

/// Save `r` if it changed since it was read or saved, if the row is still
/// at the revision it was read at: at once if `at_once` or its state,
/// wave or soak moved or it is over; progress alone at most every
/// [`SAVE_EVERY_MS`].
async fn save(state: &FleetCtx, r: &mut Rollout, now: i64, at_once: bool) -> Result<(), Stop> {
    let mark = r.mark();
    let was = r.saved_mark;
    if !r.dirty && mark == was {
        return Ok(());
    }
    let moved = (mark.state, mark.wave, mark.soak_until) != (was.state, was.wave, was.soak_until);
    if !(at_once || moved || r.closed()) && now - r.saved_ms < SAVE_EVERY_MS {
        return Ok(());
    }
    if !state.fleet.store.update_rollout(&r.row()).await? {
        return Err(Stop::Stale);
    }
    r.rev += 1;
    r.dirty = false;
    r.saved_mark = mark;
    r.saved_ms = now;
    Ok(())
}

/// Start a rollout over the runners of `tenant` that the selector picks:
/// stored, for the driver to take up (at once if it is this process).
pub async fn start(
    state: &FleetCtx,
    tenant: &str,
    runners: Vec<(String, String)>,
    new: NewRollout,
) -> Result<Value, ApiError> {
    let id = crate::jobs::api::new_job_id()?.replacen("jb_", "ro_", 1);
    let planner = Planner::new(runners.len(), new.wave, new.concurrency, new.threshold)
        .with_soak(new.soak_ms);
    let targets = runners
        .into_iter()
        .enumerate()
        .map(|(i, (runner_id, name))| Target::waiting(runner_id, name, planner.wave_of(i) + 1))
        .collect();
    let r = Rollout {
        id: id.clone(),
        tenant: tenant.to_owned(),
        created_ms: clock::now_ms(),
        selector: new.selector,
        wave: new.wave_text,
        work: new.work,
        planner,
        targets,
        soak_checked_ms: 0,
        targets_checked_ms: 0,
        rev: 0,
        dirty: false,
        saved_mark: Mark::default(),
        saved_ms: 0,
    };
    state.fleet.store.save_rollout(&r.row()).await?;
    state.fleet.rollouts.wake();
    tracing::info!(rollout = %id, tenant, "rollout started");
    Ok(r.view())
}

/// The driver (once-only work: `fleet::spawn_once_only`): every TICK, the
/// open rollouts read from the store where they changed, and stepped.
pub async fn run(state: FleetCtx) {
    let mut driven: HashMap<String, Rollout> = HashMap::new();
    // Rows that do not read back (logged once, left alone).
    let mut unreadable: HashSet<(String, i64)> = HashSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.fleet.rollouts.wake.notified() => {}
        }
        let open = match state.fleet.store.open_rollouts().await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("reading the open rollouts: {e}");
                continue;
            }
        };
        driven.retain(|id, _| open.iter().any(|(_, o, _)| o == id));
        for (tenant, id, rev) in open {
            if driven.get(&id).map(|r| r.rev) != Some(rev) {
                if unreadable.contains(&(id.clone(), rev)) {
                    continue;
                }
                let first = driven.remove(&id).is_none();
                match load(&state, &tenant, &id).await {
                    Ok(Some(r)) => {
                        if first {
                            tracing::info!(rollout = %id, state = r.state().as_str(), "driving the rollout from its stored state");
                        }
                        driven.insert(id.clone(), r);
                    }
                    Ok(None) => continue,
                    Err(Stop::Unreadable(e)) => {
                        tracing::error!(rollout = %id, "not driven: its stored state: {e}");
                        unreadable.insert((id.clone(), rev));
                        continue;
                    }
                    Err(Stop::Failed(e)) => {
                        tracing::error!(rollout = %id, "reading the rollout: {}", e.message);
                        continue;
                    }
                    Err(Stop::Stale) => continue,
                }
            }
            let Some(r) = driven.get_mut(&id) else {
                continue;
            };
            match step(&state, r).await {
                Ok(()) if r.closed() => {
                    tracing::info!(rollout = %id, state = r.state().as_str(), "rollout over");
                    driven.remove(&id);
                }
                Ok(()) => {}
                Err(Stop::Stale) => {
                    tracing::debug!(rollout = %id, "changed elsewhere: read again");
                    driven.remove(&id);
                }
                Err(Stop::Failed(e)) => {
                    tracing::error!(rollout = %id, "rollout step: {}", e.message);
                    driven.remove(&id);
                }
                Err(Stop::Unreadable(_)) => {
                    driven.remove(&id);
                }
            }
        }
    }
}

/// Read a rollout to drive it, and finish what its last change left half
/// done (the module doc); `None`: closed.
async fn load(state: &FleetCtx, tenant: &str, id: &str) -> Result<Option<Rollout>, Stop> {
    let Some(row) = state.fleet.store.rollout(tenant, id).await? else {
        return Ok(None);
    };
    let mut r = match Rollout::from_row(&row) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(e) => return Err(Stop::Unreadable(e)),
    };
    let starting: Vec<usize> = (0..r.targets.len())
        .filter(|&i| {
            r.planner.target(i) == TargetState::Running
                && r.targets[i].status.as_deref() == Some(STARTING)
        })
        .collect();
    if !starting.is_empty() {
        let now = clock::now_ms();
        let mut missing = Vec::with_capacity(starting.len());
        for &i in &starting {
            let t = &r.targets[i];
            let job = match &t.job_id {
                Some(job) => state.db.jobs.job(&r.tenant, job).await?,
                None => None,
            };
            match (job, &r.work) {
                (None, _) => missing.push(i),
                // Made, but maybe not told or given its deadline: both
                // again (the same expiry: from the saved start).
                (Some(job), Work::Job { deadline_ms, .. }) if job.status == "pending" => {
                    let pair = [(job.id, t.runner_id.clone())];
                    state
                        .fleet
                        .store
                        .add_deadlines(&r.tenant, &pair, t.started_ms + deadline_ms)
                        .await?;
                    state.registry.nudge(&t.runner_id, FamilyId::Jobs);
                }
                (Some(_), _) => {}
            }
        }
        if !missing.is_empty() {
            tracing::info!(rollout = %r.id, targets = missing.len(), "finishing the starts of its last change");
            perform_starts(state, &mut r, &missing, now).await?;
            r.sync_targets();
            r.dirty = true;
        }
    }
    if r.planner.state() == State::Aborted {
        cancel_jobs(state, &r, &running(&r)).await?;
    }
    Ok(Some(r))
}

fn running(r: &Rollout) -> Vec<usize> {
    (0..r.targets.len())
        .filter(|&i| r.planner.target(i) == TargetState::Running)
        .collect()
}

/// One step of a rollout: collect finished targets, start what the
/// planner says (saved first), save what changed.
async fn step(state: &FleetCtx, r: &mut Rollout) -> Result<(), Stop> {
    let now = clock::now_ms();
    match &r.work {
        Work::Job { .. } => collect_jobs(state, r, now).await?,
        Work::Update {
            version,
            reconnect_ms,
        } => {
            let (version, reconnect_ms) = (version.clone(), *reconnect_ms);
            if now - r.targets_checked_ms >= UPDATE_CHECK_MS {
                r.targets_checked_ms = now;
                collect_updates(state, r, &version, reconnect_ms, now).await?;
            }
            if r.planner.soak_until().is_some() && now - r.soak_checked_ms >= SOAK_CHECK_MS {
                r.soak_checked_ms = now;
                check_soaking(state, r, &version, reconnect_ms).await?;
            }
        }
    }
    let starts = r.planner.starts_at(now);
    if !starts.is_empty() {
        plan_starts(state, r, &starts, now).await?;
        r.sync_targets();
        // Stored as started before anything starts: whoever reads the
        // row next finishes these starts, never makes them again.
        save(state, r, now, true).await?;
        perform_starts(state, r, &starts, now).await?;
        r.dirty = true;
    }
    r.sync_targets();
    save(state, r, now, false).await
}

/// The running targets' jobs, read in one call: their status, and the
/// finished ones.
async fn collect_jobs(state: &FleetCtx, r: &mut Rollout, now: i64) -> Result<(), ApiError> {
    let running = running(r);
    if running.is_empty()
        || (running.len() > JOB_CHECK_EACH_TICK_UP_TO && now - r.targets_checked_ms < JOB_CHECK_MS)
    {
        return Ok(());
    }
    r.targets_checked_ms = now;
    let running: Vec<(usize, String)> = running
        .into_iter()
        .filter_map(|i| Some((i, r.targets[i].job_id.clone()?)))
        .collect();
    let ids: Vec<String> = running.iter().map(|(_, j)| j.clone()).collect();
    let mut jobs: HashMap<String, JobState> = state
        .db
        .jobs
        .job_states(&r.tenant, &ids)
        .await?
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
    for (i, job_id) in running {
        let Some(job) = jobs.remove(&job_id) else {
            r.planner.finished(i, false);
            continue;
        };
        let ok = job.status == "succeeded";
        let is_final = job.is_final();
        r.set_status(i, job.status);
        if is_final {
            r.targets[i].exit_code = job.exit_code;
            r.targets[i].duration_ms = job.finished_ms.zip(job.started_ms).map(|(f, s)| f - s);
            r.planner.finished(i, ok);
        }
    }
    Ok(())
}

/// What the starts of `starts` will be, chosen before they happen: a
/// job id each, or each runner's own desired version and version now.
async fn plan_starts(
    state: &FleetCtx,
    r: &mut Rollout,
    starts: &[usize],
    now: i64,
) -> Result<(), ApiError> {
    match &r.work {
        Work::Job { .. } => {
            for &i in starts {
                r.targets[i].job_id = Some(crate::jobs::api::new_job_id()?);
            }
        }
        Work::Update { .. } => {
            let before = state.fleet.store.desired_versions(&r.tenant).await?;
            let ids: Vec<String> = starts
                .iter()
                .map(|&i| r.targets[i].runner_id.clone())
                .collect();
            let versions: HashMap<String, String> = state
                .db
                .control
                .runner_versions(&r.tenant, &ids)
                .await?
                .into_iter()
                .map(|row| (row.id, row.version))
                .collect();
            for &i in starts {
                let t = &mut r.targets[i];
                t.prev_desired = before.get(&t.runner_id).cloned();
                t.from_version = versions.get(&t.runner_id).cloned();
            }
        }
    }
    for &i in starts {
        r.targets[i].started_ms = now;
        r.targets[i].status = Some(STARTING.into());
    }
    Ok(())
}

/// Make the planned starts happen: the jobs under their ids, or the
/// runners' own desired version set and an offer each.
async fn perform_starts(
    state: &FleetCtx,
    r: &mut Rollout,
    starts: &[usize],
    now: i64,
) -> Result<(), ApiError> {
    if starts.is_empty() {
        return Ok(());
    }
    match &r.work {
        Work::Job { .. } => start_jobs(state, r, starts, now).await,
        Work::Update { version, .. } => {
            let version = version.clone();
            start_updates(state, r, starts, &version, now).await
        }
    }
}

async fn start_jobs(
    state: &FleetCtx,
    r: &mut Rollout,
    starts: &[usize],
    now: i64,
) -> Result<(), ApiError> {
    let Work::Job {
        label,
        spec,
        deadline_ms,
    } = &r.work
    else {
        return Ok(());
    };
    let jobs: Vec<(String, String)> = starts
        .iter()
        .filter_map(|&i| {
            let t = &r.targets[i];
            Some((t.job_id.clone()?, t.runner_id.clone()))
        })
        .collect();
    match crate::jobs::api::create_jobs(&state.jobs, &r.tenant, &jobs, label, spec, now).await {
        Ok(_) => {
            state
                .fleet
                .store
                .add_deadlines(&r.tenant, &jobs, now + deadline_ms)
                .await?;
            for &i in starts {
                r.set_status(i, "pending".into());
                state
                    .registry
                    .nudge(&r.targets[i].runner_id, FamilyId::Jobs);
            }
        }
        Err(e) if e.status.is_server_error() => return Err(e),
        Err(e) => {
            // The tenant's job quota: these count as failed.
            for &i in starts {
                r.set_status(i, format!("not started: {}", e.message));
                r.planner.finished(i, false);
            }
        }
    }
    Ok(())
}

/// The runners' own desired version set to `version` (the previous one
/// kept by `plan_starts`), and an offer to each connected one.
async fn start_updates(
    state: &FleetCtx,
    r: &mut Rollout,
    starts: &[usize],
    version: &str,
    now: i64,
) -> Result<(), ApiError> {
    let ids: Vec<String> = starts
        .iter()
        .map(|&i| r.targets[i].runner_id.clone())
        .collect();
    state
        .fleet
        .store
        .set_desired_version(&r.tenant, &ids, Some(version), now)
        .await?;
    for &i in starts {
        let id = r.targets[i].runner_id.clone();
        r.set_status(i, "offered".into());
        if let Err(e) = state.offers.offer(&r.tenant, &id).await {
            tracing::warn!(rollout = %r.id, runner = %id, "offering the update: {}", e.message);
        }
    }
    Ok(())
}

/// What the update targets are checked against, read at once (two
/// queries, whatever the size of the wave): each of these runners'
/// version and whether it is connected, and the tenant's newest update
/// report of each runner.
struct Seen {
    runners: HashMap<String, (String, bool)>,
    latest: HashMap<String, crate::db::updates::UpdateReportRow>,
}

impl Seen {
    async fn read(state: &FleetCtx, r: &Rollout, targets: &[usize]) -> Result<Seen, ApiError> {
        let ids: Vec<String> = targets
            .iter()
            .map(|&i| r.targets[i].runner_id.clone())
            .collect();
        let tenant = &r.tenant;
        let runners = state
            .db
            .control
            .runner_versions(tenant, &ids)
            .await?
            .into_iter()
            .map(|r| (r.id, (r.version, r.health == Health::Active)))
            .collect();
        let latest = state.db.updates.latest_update_reports(tenant).await?;
        Ok(Seen { runners, latest })
    }

    /// A failure the runner reported for `version` since `since` (its
    /// newest report; a runner answers an offer once): `state: reason`.
    fn failure(&self, runner: &str, version: &str, since: i64) -> Option<String> {
        use tether::protocol::update_state::{FAILED, INTERRUPTED, REJECTED};
        let rep = self.latest.get(runner)?;
        (rep.at >= since
            && rep.status.version == version
            && matches!(rep.status.state.as_str(), FAILED | REJECTED | INTERRUPTED))
        .then(|| {
            format!(
                "{}: {}",
                rep.status.state,
                rep.status.reason.as_deref().unwrap_or("no reason given")
            )
        })
    }
}

/// Started updates: connected at the version (succeeded), reported a
/// failure or past the reconnect bound (failed: its previous desired
/// version back).
async fn collect_updates(
    state: &FleetCtx,
    r: &mut Rollout,
    version: &str,
    reconnect_ms: i64,
    now: i64,
) -> Result<(), ApiError> {
    let running = running(r);
    if running.is_empty() {
        return Ok(());
    }
    let seen = Seen::read(state, r, &running).await?;
    for i in running {
        let id = r.targets[i].runner_id.clone();
        let started = r.targets[i].started_ms;
        let failure = match seen.runners.get(&id) {
            None => Some("the runner is gone".to_owned()),
            Some((v, true)) if v == version => {
                let t = &mut r.targets[i];
                let status = if t.from_version.as_deref() == Some(version) {
                    "already at the version"
                } else if t.withdrawn_ms.is_some() {
                    "installed: already under way at the abort"
                } else {
                    "installed"
                };
                t.duration_ms = Some(now - started);
                r.set_status(i, status.into());
                r.planner.finished(i, true);
                continue;
            }
            Some((_, active)) => match seen.failure(&id, version, started) {
                Some(f) => Some(f),
                None if settle_withdrawn(r, i, *active, version, reconnect_ms, now) => continue,
                None if now - started > reconnect_ms => Some(format!(
                    "not connected at {version} within {} s",
                    reconnect_ms / 1000
                )),
                None => {
                    let status = if *active {
                        "offered"
                    } else {
                        "waiting for the runner"
                    };
                    r.set_status(i, status.into());
                    continue;
                }
            },
        };
        fail_update(state, r, i, failure.unwrap_or_default(), now).await?;
        r.planner.finished(i, false);
    }
    Ok(())
}

/// A failed update target: its status, and its previous own desired
/// version back.
async fn fail_update(
    state: &FleetCtx,
    r: &mut Rollout,
    i: usize,
    why: String,
    now: i64,
) -> Result<(), ApiError> {
    tracing::info!(rollout = %r.id, runner = %r.targets[i].runner_id, "update failed: {why}");
    r.set_status(i, why);
    r.targets[i].duration_ms = Some(now - r.targets[i].started_ms);
    take_back(state, r, i, now).await
}

/// A target's own desired version as it was before the rollout set it,
/// and that version's offer (or none) sent if the runner is connected: it
/// holds no pending offer (it takes one at once or refuses it), so the
/// version it is to run now must be said; an offline one is told when it
/// connects.
async fn take_back(state: &FleetCtx, r: &Rollout, i: usize, now: i64) -> Result<(), ApiError> {
    let t = &r.targets[i];
    state
        .fleet
        .store
        .set_desired_version(
            &r.tenant,
            std::slice::from_ref(&t.runner_id),
            t.prev_desired.as_deref(),
            now,
        )
        .await?;
    if let Err(e) = state.offers.offer(&r.tenant, &t.runner_id).await {
        tracing::warn!(rollout = %r.id, runner = %t.runner_id, "offering the previous version: {}", e.message);
    }
    Ok(())
}

/// Abort of an update rollout: each started runner not yet connected at
/// the version gets its previous own desired version back, and is told
/// (the offer of that version, or none: a runner holds no pending offer,
/// it takes one at once or refuses it). A runner that already took the
/// offer is installing with its connection closed: nothing reaches it
/// until it is back, at the version (counted as succeeded) or not.
async fn withdraw_updates(
    state: &FleetCtx,
    r: &mut Rollout,
    running: &[usize],
) -> Result<(), ApiError> {
    let Work::Update { version, .. } = &r.work else {
        return Ok(());
    };
    let version = version.clone();
    let now = clock::now_ms();
    let seen = Seen::read(state, r, running).await?;
    for &i in running {
        if seen.runners.get(&r.targets[i].runner_id) == Some(&(version.clone(), true)) {
            continue; // updated: collected as succeeded
        }
        r.targets[i].withdrawn_ms = Some(now);
        r.set_status(i, "withdrawn by the abort".into());
        take_back(state, r, i, now).await?;
    }
    Ok(())
}

/// A withdrawn update target not at the version and with no failure
/// reported: skipped once it is connected at another version (it did not
/// take the offer), or once the reconnect bound passed without it. Returns
/// whether it was settled.
fn settle_withdrawn(
    r: &mut Rollout,
    i: usize,
    active: bool,
    version: &str,
    reconnect_ms: i64,
    now: i64,
) -> bool {
    let t = &mut r.targets[i];
    let Some(at) = t.withdrawn_ms else {
        return false;
    };
    let why = if active && now - at >= WITHDRAW_SETTLE_MS {
        "withdrawn by the abort: not installed".to_owned()
    } else if !active && now - t.started_ms > reconnect_ms {
        format!(
            "withdrawn by the abort: not seen at {version} within {} s",
            reconnect_ms / 1000
        )
    } else {
        return true;
    };
    t.duration_ms = Some(now - t.started_ms);
    r.set_status(i, why);
    r.planner.withdrawn(i);
    true
}

/// While a wave soaks: its updated runners still at the version, with no
/// failure reported since, and not away longer than the reconnect bound
/// (a version that dies after its first connect keeps its runner away).
async fn check_soaking(
    state: &FleetCtx,
    r: &mut Rollout,
    version: &str,
    reconnect_ms: i64,
) -> Result<(), ApiError> {
    let now = clock::now_ms();
    let wave = r.planner.wave().0;
    let soaking: Vec<usize> = (0..r.targets.len())
        .filter(|&i| r.planner.wave_of(i) == wave && r.planner.target(i) == TargetState::Succeeded)
        .collect();
    let seen = Seen::read(state, r, &soaking).await?;
    for i in soaking {
        let id = r.targets[i].runner_id.clone();
        let started = r.targets[i].started_ms;
        let why = match seen.runners.get(&id) {
            None => Some("the runner is gone".to_owned()),
            Some((v, _)) if v != version => seen
                .failure(&id, version, started)
                .or_else(|| Some(format!("back at {v} while its wave soaked"))),
            Some((_, active)) => {
                let t = &mut r.targets[i];
                t.away_ms = if *active {
                    None
                } else {
                    t.away_ms.or(Some(now))
                };
                seen.failure(&id, version, started).or_else(|| {
                    t.away_ms
                        .filter(|&away| now - away > reconnect_ms)
                        .map(|_| {
                            format!(
                                "not connected for {} s while its wave soaked",
                                reconnect_ms / 1000
                            )
                        })
                })
            }
        };
        if let Some(why) = why {
            fail_update(state, r, i, why, now).await?;
            r.planner.failed_late(i);
        }
    }
    Ok(())
}

/// Ask the jobs of these targets to cancel (an abort).
async fn cancel_jobs(state: &FleetCtx, r: &Rollout, targets: &[usize]) -> Result<(), ApiError> {
    for &i in targets {
        if let Some(job) = &r.targets[i].job_id {
            state.db.jobs.request_cancel(&r.tenant, job).await?;
            state
                .registry
                .nudge(&r.targets[i].runner_id, FamilyId::Jobs);
        }
    }
    Ok(())
}

/// pause, resume or abort a rollout, from any replica: taken in the store
/// (the driver, wherever it is, reads it), answered with the state stored.
pub async fn control(
    state: &FleetCtx,
    tenant: &str,
    id: &str,
    action: &str,
) -> Result<Value, ApiError> {
    for _ in 0..ACTION_ATTEMPTS {
        let row = stored(state, tenant, id).await?;
        let mut r = match Rollout::from_row(&row) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(ApiError::conflict(format!(
                    "rollout {id} is over ({}): nothing to {action}",
                    row.state
                )))
            }
            Err(e) => return Err(ApiError::internal(format!("rollout {id}: {e}"))),
        };
        let mut cancel = Vec::new();
        let ok = match action {
            "pause" => r.planner.pause(),
            "resume" => r.planner.resume(),
            "abort" => match r.planner.abort() {
                Some(running) => {
                    if matches!(r.work, Work::Update { .. }) {
                        withdraw_updates(state, &mut r, &running).await?;
                    }
                    cancel = running;
                    true
                }
                None => false,
            },
            _ => return Err(ApiError::not_found("no such action")),
        };
        if !ok {
            return Err(ApiError::conflict(format!(
                "rollout {id} is {}: cannot {action}",
                r.planner.state().as_str()
            )));
        }
        r.sync_targets();
        if !state.fleet.store.update_rollout(&r.row()).await? {
            // The driver saved it in between: the action on what it saved.
            continue;
        }
        r.rev += 1;
        cancel_jobs(state, &r, &cancel).await?;
        state.fleet.rollouts.wake();
        tracing::info!(rollout = %id, action, "rollout {action}");
        return Ok(r.view());
    }
    Err(ApiError::conflict(format!(
        "rollout {id} changed under every attempt to {action}: try again"
    )))
}

/// The tenant's stored rollout `id`, or 404.
async fn stored(state: &FleetCtx, tenant: &str, id: &str) -> Result<RolloutRow, ApiError> {
    state
        .fleet
        .store
        .rollout(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id:?}")))
}

/// A rollout as the API shows it: what was last stored.
pub async fn show(state: &FleetCtx, tenant: &str, id: &str) -> Result<Value, ApiError> {
    Ok(shown(&stored(state, tenant, id).await?))
}

/// A stored rollout's view: `live` while a driver has work in it.
pub fn shown(row: &RolloutRow) -> Value {
    let mut v: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
    if v.is_object() {
        v["live"] = json!(row.driver.is_some());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(work: Work, n: usize) -> Rollout {
        let planner = Planner::new(n, WaveSize::Count(2), 1, Threshold::Count(1)).with_soak(5_000);
        Rollout {
            id: "ro_1".into(),
            tenant: "tn_1".into(),
            created_ms: 1_000,
            selector: "env=prod".into(),
            wave: "2".into(),
            work,
            targets: (0..n)
                .map(|i| {
                    Target::waiting(format!("rn_{i}"), format!("r{i}"), planner.wave_of(i) + 1)
                })
                .collect(),
            planner,
            soak_checked_ms: 0,
            targets_checked_ms: 0,
            rev: 3,
            dirty: false,
            saved_mark: Mark::default(),
            saved_ms: 0,
        }
    }

    fn update() -> Work {
        Work::Update {
            version: "0.5.0".into(),
            reconnect_ms: 60_000,
        }
    }

    #[test]
    fn a_stored_rollout_reads_back_as_its_driver_left_it() {
        let mut r = rollout(update(), 3);
        assert_eq!(r.planner.starts_at(10), [0]);
        r.targets[0].started_ms = 10;
        r.targets[0].prev_desired = Some("0.4.0".into());
        r.targets[0].from_version = Some("0.3.0".into());
        r.targets[0].status = Some(STARTING.into());
        r.sync_targets();
        let row = r.row();
        assert_eq!((row.rev, row.state.as_str()), (3, "running"));
        // What the API shows has none of the driver's own fields.
        let shown = shown(&row);
        assert_eq!(shown["live"], true);
        assert!(shown["targets"][0].get("prev_desired").is_none(), "{shown}");
        assert!(shown["targets"][0].get("started_ms").is_none(), "{shown}");

        let back = Rollout::from_row(&row).unwrap().unwrap();
        assert_eq!(back.rev, 3);
        assert_eq!(back.targets[0].started_ms, 10);
        assert_eq!(back.targets[0].prev_desired.as_deref(), Some("0.4.0"));
        assert_eq!(back.targets[0].from_version.as_deref(), Some("0.3.0"));
        assert_eq!(back.targets[0].status.as_deref(), Some(STARTING));
        assert_eq!(back.planner.target(0), TargetState::Running);
        assert_eq!(back.planner.soak_ms(), 5_000);
        assert_eq!(
            (back.selector.as_str(), back.wave.as_str()),
            ("env=prod", "2")
        );
        assert!(
            matches!(&back.work, Work::Update { version, reconnect_ms: 60_000 } if version == "0.5.0")
        );
        assert_eq!(back.view(), r.view(), "the same view");
        // Nothing changed since it was read: nothing to write (and what
        // would be written is what was read).
        let mut back = back;
        assert!(!back.dirty && back.mark() == back.saved_mark);
        let again = back.row();
        assert_eq!((&again.body, &again.driver), (&row.body, &row.driver));
        // The same status again is no change; another is one.
        back.set_status(0, STARTING.into());
        assert!(!back.dirty);
        back.set_status(0, "offered".into());
        assert!(back.dirty);
        // A planner move shows in its mark.
        let mut moved = Rollout::from_row(&row).unwrap().unwrap();
        moved.planner.finished(0, true);
        assert!(moved.mark() != moved.saved_mark);
    }

    #[test]
    fn a_job_rollout_keeps_its_job_and_a_closed_one_has_no_driver_state() {
        let spec = JobSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "true".into()],
            script: None,
            env: vec![("A".into(), "1".into())],
            secrets: vec![],
            timeout_s: 30,
            deploy: None,
            signed: Default::default(),
        };
        let mut r = rollout(
            Work::Job {
                label: "true".into(),
                spec: Box::new(spec.clone()),
                deadline_ms: 9_000,
            },
            1,
        );
        assert_eq!(r.planner.starts(), [0]);
        r.targets[0].job_id = Some("jb_1".into());
        r.sync_targets();
        let back = Rollout::from_row(&r.row()).unwrap().unwrap();
        assert_eq!(back.targets[0].job_id.as_deref(), Some("jb_1"));
        match &back.work {
            Work::Job {
                spec: s,
                deadline_ms,
                ..
            } => assert_eq!((s.as_ref(), *deadline_ms), (&spec, 9_000)),
            Work::Update { .. } => panic!("a job rollout"),
        }

        // Aborted with the job still running: open until it ends.
        assert_eq!(r.planner.abort(), Some(vec![0]));
        assert!(r.row().driver.is_some());
        r.planner.finished(0, false);
        let row = r.row();
        assert_eq!(
            (row.driver.as_deref(), row.state.as_str()),
            (None, "aborted")
        );
        assert!(Rollout::from_row(&row).unwrap().is_none());
        assert_eq!(shown(&row)["live"], false);
    }

    #[test]
    fn stored_state_that_does_not_agree_is_refused() {
        let r = rollout(update(), 3);
        let mut row = r.row();
        // One target fewer in the view than the planner has.
        let mut body: Value = serde_json::from_str(&row.body).unwrap();
        body["targets"].as_array_mut().unwrap().pop();
        row.body = body.to_string();
        assert!(Rollout::from_row(&row).is_err());
        let mut row = r.row();
        row.driver = Some("{\"planner\": 1}".into());
        assert!(Rollout::from_row(&row).is_err());
        // A row of a build before the driver state: shown, not driven.
        let mut row = r.row();
        row.driver = None;
        assert!(Rollout::from_row(&row).unwrap().is_none());
    }
}
