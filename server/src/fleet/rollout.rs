//! Rollouts: per runner of a selector, a job or an update to a version,
//! started in waves by the planner (`waves.rs`), driven by a task per
//! rollout.
//!
//! ```text
//!  POST /rollouts ─▶ runners of the selector (name order) ─▶ Planner ─▶ driver task:
//!     every TICK: finished targets ─▶ planner.finished(ok)
//!                 (update: soaking wave's runners gone bad ─▶ planner.failed_late)
//!                 planner.starts_at(now) ─▶ jobs (the ordinary job path, with a deadline)
//!                                        or the runner's own desired version + an offer
//!                 snapshot ─▶ db::FleetStore (what GET shows, and what survives a restart)
//!  pause / resume / abort ─▶ the planner (abort also cancels the running jobs,
//!                            and takes an update back from the runners not at it yet)
//! ```
//!
//! A job target fails when its job ends in anything but `succeeded`
//! (failed, timed out, cancelled, or expired because the runner stayed
//! offline past the rollout's deadline). An update target succeeds when
//! the runner is connected at the version, and fails when it reports the
//! update `failed` (rolled back), `rejected` or `interrupted`, or is not
//! connected at the version within `reconnect` of its start; a failed
//! runner gets its previous own desired version back (its policy's, if
//! it had none), so it is not offered the version again. While a wave
//! soaks, a runner of it found back at another version, or reporting a
//! failure, fails late. A server restart does not resume a rollout: its
//! last snapshot stays readable, marked `live: false`.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;

use serde::Serialize;
use serde_json::{json, Value};

use crate::common::clock;
use crate::common::error::ApiError;
use crate::db::fleet::RolloutRow;
use crate::db::jobs::JobSpec;
use crate::fleet::waves::{Planner, State, TargetState, Threshold, Totals, WaveSize};
use crate::fleet::FleetCtx;
use crate::link::dispatch::FamilyId;

/// How often a driver looks at its jobs.
const TICK: Duration = Duration::from_millis(300);
/// How often a soaking wave's updated runners are looked at again.
const SOAK_CHECK_MS: i64 = 2_000;
/// How long after an abort a runner connected at another version is
/// taken as not having taken the offer (one that took it closes its
/// connection at once to install).
const WITHDRAW_SETTLE_MS: i64 = 2_000;
/// Most runners in one rollout.
pub const MAX_TARGETS: usize = 10_000;

#[derive(Debug, Clone, Serialize)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// When it started (update: the reports and the reconnect bound count
    /// from here).
    #[serde(skip)]
    started_ms: i64,
    /// Update: the runner's own desired version before, put back if it fails.
    #[serde(skip)]
    prev_desired: Option<String>,
    /// Update: when an abort took the version back from this runner.
    #[serde(skip)]
    withdrawn_ms: Option<i64>,
}

/// What a rollout does to each runner.
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
    /// When a soaking wave was last looked at.
    soak_checked_ms: i64,
}

/// The live rollouts of this process.
#[derive(Default)]
pub struct Rollouts {
    live: Mutex<HashMap<String, Arc<AsyncMutex<Rollout>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rollouts {
    pub fn get(&self, id: &str) -> Option<Arc<AsyncMutex<Rollout>>> {
        lock(&self.live).get(id).cloned()
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
            "live": true,
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

    fn row(&self) -> RolloutRow {
        RolloutRow {
            id: self.id.clone(),
            tenant_id: self.tenant.clone(),
            state: self.planner.state().as_str().to_owned(),
            created_ms: self.created_ms,
            updated_ms: clock::now_ms(),
            body: self.view().to_string(),
        }
    }

    fn sync_targets(&mut self) {
        for (i, t) in self.targets.iter_mut().enumerate() {
            t.state = self.planner.target(i);
        }
    }
}

/// Start a rollout over the runners of `tenant` that the selector picks.
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
        .map(|(i, (runner_id, name))| Target {
            runner_id,
            name,
            wave: planner.wave_of(i) + 1,
            state: TargetState::Waiting,
            job_id: None,
            status: None,
            exit_code: None,
            duration_ms: None,
            from_version: None,
            started_ms: 0,
            prev_desired: None,
            withdrawn_ms: None,
        })
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
    };
    state.fleet.store.save_rollout(&r.row()).await?;
    let view = r.view();
    let r = Arc::new(AsyncMutex::new(r));
    lock(&state.fleet.rollouts.live).insert(id.clone(), r.clone());
    tokio::spawn(drive(state.clone(), r));
    tracing::info!(rollout = %id, tenant, "rollout started");
    Ok(view)
}

/// One step of a rollout: collect finished targets, start what the
/// planner says. Returns whether the rollout is over for good (done or
/// aborted, nothing running).
async fn step(state: &FleetCtx, r: &mut Rollout) -> Result<bool, ApiError> {
    let now = clock::now_ms();
    match &r.work {
        Work::Job { .. } => collect_jobs(state, r).await?,
        Work::Update {
            version,
            reconnect_ms,
        } => {
            let (version, reconnect_ms) = (version.clone(), *reconnect_ms);
            collect_updates(state, r, &version, reconnect_ms, now).await?;
            if r.planner.soak_until().is_some() && now - r.soak_checked_ms >= SOAK_CHECK_MS {
                r.soak_checked_ms = now;
                check_soaking(state, r, &version).await?;
            }
        }
    }
    let starts = r.planner.starts_at(now);
    if !starts.is_empty() {
        match &r.work {
            Work::Job { .. } => start_jobs(state, r, &starts, now).await?,
            Work::Update { version, .. } => {
                let version = version.clone();
                start_updates(state, r, &starts, &version, now).await?
            }
        }
    }
    r.sync_targets();
    Ok(r.planner.is_over() && matches!(r.planner.state(), State::Done | State::Aborted))
}

/// Finished jobs.
async fn collect_jobs(state: &FleetCtx, r: &mut Rollout) -> Result<(), ApiError> {
    for i in 0..r.targets.len() {
        if r.planner.target(i) != TargetState::Running {
            continue;
        }
        let Some(job_id) = r.targets[i].job_id.clone() else {
            continue;
        };
        let Some(job) = state.db.jobs.job(&r.tenant, &job_id).await? else {
            r.planner.finished(i, false);
            continue;
        };
        r.targets[i].status = Some(job.status.clone());
        if job.is_final() {
            r.targets[i].exit_code = job.exit_code;
            r.targets[i].duration_ms = job.finished_ms.zip(job.started_ms).map(|(f, s)| f - s);
            r.planner.finished(i, job.status == "succeeded");
        }
    }
    Ok(())
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
    let mut jobs = Vec::with_capacity(starts.len());
    for &i in starts {
        jobs.push((
            crate::jobs::api::new_job_id()?,
            r.targets[i].runner_id.clone(),
        ));
    }
    match crate::jobs::api::create_jobs(&state.jobs, &r.tenant, &jobs, label, spec, now).await {
        Ok(_) => {
            state
                .fleet
                .store
                .add_deadlines(&r.tenant, &jobs, now + deadline_ms)
                .await?;
            for (&i, (job_id, runner)) in starts.iter().zip(&jobs) {
                r.targets[i].job_id = Some(job_id.clone());
                r.targets[i].status = Some("pending".into());
                r.targets[i].started_ms = now;
                state.registry.nudge(runner, FamilyId::Jobs);
            }
        }
        Err(e) => {
            // The tenant's job quota: these count as failed.
            for &i in starts {
                r.targets[i].status = Some(format!("not started: {}", e.message));
                r.planner.finished(i, false);
            }
        }
    }
    Ok(())
}

/// The runners' own desired version set to `version` (the previous one
/// kept), and an offer to each connected one.
async fn start_updates(
    state: &FleetCtx,
    r: &mut Rollout,
    starts: &[usize],
    version: &str,
    now: i64,
) -> Result<(), ApiError> {
    let before = state.fleet.store.desired_versions(&r.tenant).await?;
    let ids: Vec<String> = starts
        .iter()
        .map(|&i| r.targets[i].runner_id.clone())
        .collect();
    state
        .fleet
        .store
        .set_desired_version(&r.tenant, &ids, Some(version), now)
        .await?;
    let versions: HashMap<String, String> = state
        .db
        .control
        .list_runners(&r.tenant)
        .await?
        .into_iter()
        .map(|row| (row.id, row.version))
        .collect();
    for &i in starts {
        let id = r.targets[i].runner_id.clone();
        let t = &mut r.targets[i];
        t.prev_desired = before.get(&id).cloned();
        t.started_ms = now;
        t.status = Some("offered".into());
        t.from_version = versions.get(&id).cloned();
        if let Err(e) = state.offers.offer(&r.tenant, &id).await {
            tracing::warn!(rollout = %r.id, runner = %id, "offering the update: {}", e.message);
        }
    }
    Ok(())
}

/// What the update targets are checked against, read at once (two
/// queries per tick, whatever the size of the wave): each runner's
/// version and whether it is connected, and its newest update report.
struct Seen {
    runners: HashMap<String, (String, bool)>,
    latest: HashMap<String, crate::db::updates::UpdateReportRow>,
}

impl Seen {
    async fn read(state: &FleetCtx, tenant: &str) -> Result<Seen, ApiError> {
        let runners = state
            .db
            .control
            .list_runners(tenant)
            .await?
            .into_iter()
            .map(|r| (r.id, (r.version, r.health.as_str() == "active")))
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
    if r.planner.totals().running == 0 {
        return Ok(());
    }
    let seen = Seen::read(state, &r.tenant).await?;
    for i in 0..r.targets.len() {
        if r.planner.target(i) != TargetState::Running {
            continue;
        }
        let id = r.targets[i].runner_id.clone();
        let started = r.targets[i].started_ms;
        let failure = match seen.runners.get(&id) {
            None => Some("the runner is gone".to_owned()),
            Some((v, true)) if v == version => {
                let t = &mut r.targets[i];
                t.status = Some(if t.from_version.as_deref() == Some(version) {
                    "already at the version".into()
                } else if t.withdrawn_ms.is_some() {
                    "installed: already under way at the abort".into()
                } else {
                    "installed".into()
                });
                t.duration_ms = Some(now - started);
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
                    r.targets[i].status = Some(if *active {
                        "offered".into()
                    } else {
                        "waiting for the runner".into()
                    });
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
    let t = &mut r.targets[i];
    tracing::info!(rollout = %r.id, runner = %t.runner_id, "update failed: {why}");
    t.status = Some(why);
    t.duration_ms = Some(now - t.started_ms);
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
    let now = clock::now_ms();
    let seen = Seen::read(state, &r.tenant).await?;
    for &i in running {
        let t = &mut r.targets[i];
        if seen.runners.get(&t.runner_id) == Some(&(version.clone(), true)) {
            continue; // updated: collected as succeeded
        }
        t.withdrawn_ms = Some(now);
        t.status = Some("withdrawn by the abort".into());
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
    t.status = Some(why);
    t.duration_ms = Some(now - t.started_ms);
    r.planner.withdrawn(i);
    true
}

/// While a wave soaks: its updated runners still at the version, with no
/// failure reported since.
async fn check_soaking(state: &FleetCtx, r: &mut Rollout, version: &str) -> Result<(), ApiError> {
    let now = clock::now_ms();
    let wave = r.planner.wave().0;
    let seen = Seen::read(state, &r.tenant).await?;
    for i in 0..r.targets.len() {
        if r.planner.wave_of(i) != wave || r.planner.target(i) != TargetState::Succeeded {
            continue;
        }
        let id = r.targets[i].runner_id.clone();
        let started = r.targets[i].started_ms;
        let why = match seen.runners.get(&id) {
            None => Some("the runner is gone".to_owned()),
            Some((v, _)) if v != version => seen
                .failure(&id, version, started)
                .or_else(|| Some(format!("back at {v} while its wave soaked"))),
            Some(_) => seen.failure(&id, version, started),
        };
        if let Some(why) = why {
            fail_update(state, r, i, why, now).await?;
            r.planner.failed_late(i);
        }
    }
    Ok(())
}

async fn drive(state: FleetCtx, r: Arc<AsyncMutex<Rollout>>) {
    let mut tick = tokio::time::interval(TICK);
    let mut last = String::new();
    loop {
        tick.tick().await;
        let (over, row) = {
            let mut g = r.lock().await;
            let over = match step(&state, &mut g).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(rollout = %g.id, "rollout step: {}", e.message);
                    false
                }
            };
            (over, g.row())
        };
        if row.body != last {
            if let Err(e) = state.fleet.store.save_rollout(&row).await {
                tracing::error!(rollout = %row.id, "saving a rollout: {e}");
            }
            last = row.body;
        }
        if over {
            tracing::info!(rollout = %row.id, state = row.state, "rollout over");
            lock(&state.fleet.rollouts.live).remove(&row.id);
            return;
        }
    }
}

/// pause, resume or abort a live rollout.
pub async fn control(
    state: &FleetCtx,
    tenant: &str,
    id: &str,
    action: &str,
) -> Result<Value, ApiError> {
    let Some(r) = state.fleet.rollouts.get(id) else {
        return Err(match state.fleet.store.rollout(tenant, id).await? {
            Some(_) => {
                ApiError::conflict(format!("rollout {id} is over (or from before a restart)"))
            }
            None => ApiError::not_found(format!("no rollout {id:?}")),
        });
    };
    let mut g = r.lock().await;
    if g.tenant != tenant {
        return Err(ApiError::not_found(format!("no rollout {id:?}")));
    }
    let ok = match action {
        "pause" => g.planner.pause(),
        "resume" => g.planner.resume(),
        "abort" => match g.planner.abort() {
            Some(running) => {
                if matches!(g.work, Work::Update { .. }) {
                    withdraw_updates(state, &mut g, &running).await?;
                }
                for i in running {
                    if let Some(job) = g.targets[i].job_id.clone() {
                        state.db.jobs.request_cancel(tenant, &job).await?;
                        state
                            .registry
                            .nudge(&g.targets[i].runner_id, FamilyId::Jobs);
                    }
                }
                true
            }
            None => false,
        },
        _ => return Err(ApiError::not_found("no such action")),
    };
    if !ok {
        return Err(ApiError::conflict(format!(
            "rollout {id} is {}: cannot {action}",
            g.planner.state().as_str()
        )));
    }
    g.sync_targets();
    tracing::info!(rollout = %id, action, "rollout {action}");
    state.fleet.store.save_rollout(&g.row()).await?;
    Ok(g.view())
}

/// A rollout as the API shows it: live, else its last snapshot.
pub async fn show(state: &FleetCtx, tenant: &str, id: &str) -> Result<Value, ApiError> {
    if let Some(r) = state.fleet.rollouts.get(id) {
        let g = r.lock().await;
        if g.tenant == tenant {
            return Ok(g.view());
        }
    }
    let row = state
        .fleet
        .store
        .rollout(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id:?}")))?;
    let mut v: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
    v["live"] = json!(false);
    Ok(v)
}
