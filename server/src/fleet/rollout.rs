//! Rollouts: one job per runner of a selector, started in waves by the
//! planner (`waves.rs`), driven by a task per rollout.
//!
//! ```text
//!  POST /rollouts ─▶ runners of the selector (name order) ─▶ Planner ─▶ driver task:
//!     every TICK: finished jobs ─▶ planner.finished(ok = succeeded)
//!                 planner.starts() ─▶ jobs (the ordinary job path, with a deadline)
//!                 snapshot ─▶ fleet.db (what GET shows, and what survives a restart)
//!  pause / resume / abort ─▶ the planner (abort also cancels the running jobs)
//! ```
//!
//! A target fails when its job ends in anything but `succeeded` (failed,
//! timed out, cancelled, or expired because the runner stayed offline
//! past the rollout's deadline). A server restart does not resume a
//! rollout: its last snapshot stays readable, marked `live: false`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;
use tokio::sync::Mutex as AsyncMutex;

use serde::Serialize;
use serde_json::{json, Value};

use crate::common::clock;
use crate::common::error::ApiError;
use crate::db::jobs::JobSpec;
use crate::fleet::store::RolloutRow;
use crate::fleet::waves::{Planner, State, TargetState, Threshold, Totals, WaveSize};
use crate::fleet::FleetCtx;
use crate::link::dispatch::FamilyId;

/// How often a driver looks at its jobs.
const TICK: Duration = Duration::from_millis(300);
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
}

pub struct Rollout {
    pub id: String,
    pub tenant: String,
    pub created_ms: i64,
    pub selector: String,
    pub wave: String,
    pub label: String,
    spec: JobSpec,
    deadline_ms: i64,
    planner: Planner,
    targets: Vec<Target>,
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
    pub deadline_ms: i64,
    pub label: String,
    pub spec: JobSpec,
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
        json!({
            "id": self.id,
            "state": self.planner.state(),
            "selector": self.selector,
            "wave_size": self.wave,
            "job": self.label,
            "wave": wave + 1,
            "waves": waves,
            "totals": self.planner.totals(),
            "over": self.planner.is_over(),
            "created_at": clock::rfc3339(self.created_ms),
            "targets": self.targets,
            "live": true,
        })
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
pub fn start(
    state: &FleetCtx,
    tenant: &str,
    runners: Vec<(String, String)>,
    new: NewRollout,
) -> Result<Value, ApiError> {
    let id = crate::jobs::api::new_job_id()?.replacen("jb_", "ro_", 1);
    let planner = Planner::new(runners.len(), new.wave, new.concurrency, new.threshold);
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
        })
        .collect();
    let r = Rollout {
        id: id.clone(),
        tenant: tenant.to_owned(),
        created_ms: clock::now_ms(),
        selector: new.selector,
        wave: new.wave_text,
        label: new.label,
        spec: new.spec,
        deadline_ms: new.deadline_ms,
        planner,
        targets,
    };
    state.fleet.store.save_rollout(&r.row())?;
    let view = r.view();
    let r = Arc::new(AsyncMutex::new(r));
    lock(&state.fleet.rollouts.live).insert(id.clone(), r.clone());
    tokio::spawn(drive(state.clone(), r));
    tracing::info!(rollout = %id, tenant, "rollout started");
    Ok(view)
}

/// One step of a rollout: collect finished jobs, start what the planner
/// says. Returns whether the rollout is over for good (done or aborted,
/// nothing running).
async fn step(state: &FleetCtx, r: &mut Rollout) -> Result<bool, ApiError> {
    // Finished jobs.
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
    // New starts.
    let starts = r.planner.starts();
    if !starts.is_empty() {
        let now = clock::now_ms();
        let mut jobs = Vec::with_capacity(starts.len());
        for &i in &starts {
            jobs.push((
                crate::jobs::api::new_job_id()?,
                r.targets[i].runner_id.clone(),
            ));
        }
        match crate::jobs::api::create_jobs(&state.jobs, &r.tenant, &jobs, &r.label, &r.spec, now)
            .await
        {
            Ok(_) => {
                state
                    .fleet
                    .store
                    .add_deadlines(&r.tenant, &jobs, now + r.deadline_ms)?;
                for (&i, (job_id, runner)) in starts.iter().zip(&jobs) {
                    r.targets[i].job_id = Some(job_id.clone());
                    r.targets[i].status = Some("pending".into());
                    state.registry.nudge(runner, FamilyId::Jobs);
                }
            }
            Err(e) => {
                // The tenant's job quota: these count as failed.
                for &i in &starts {
                    r.targets[i].status = Some(format!("not started: {}", e.message));
                    r.planner.finished(i, false);
                }
            }
        }
    }
    r.sync_targets();
    Ok(r.planner.is_over() && matches!(r.planner.state(), State::Done | State::Aborted))
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
            if let Err(e) = state.fleet.store.save_rollout(&row) {
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
        return Err(match state.fleet.store.rollout(tenant, id)? {
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
    state.fleet.store.save_rollout(&g.row())?;
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
        .rollout(tenant, id)?
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id:?}")))?;
    let mut v: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
    v["live"] = json!(false);
    Ok(v)
}
