//! REST handlers of the fleet (`docs/api.md`, "Fleet").
//!
//! ```text
//!  GET   /runners/{id}/labels            {labels, proposed}
//!  PATCH /runners/{id}/labels            {set: {k: v}, remove: [k]}
//!  POST  /runners/{id}/labels/accept     {keys: [k]}   (none: every proposal)
//!  POST  /labels                         {selector, set, remove}: in bulk
//!  GET/PUT /fleet-policy                 {job_deadline_s, auto_accept: [key | "*"]}
//!  POST  /rollouts                       {selector, wave, concurrency, max_failures |
//!                                         max_failure_rate, soak_s, deadline_s, job: {script | command, ...}
//!                                         | update: {version, reconnect_s}}
//!  GET   /rollouts, /rollouts/{id}       state, wave, totals, per runner: state, job, exit, duration
//!  POST  /rollouts/{id}/pause|resume|abort
//!  GET   /schedules                      each with next_run, next_runs, last_run
//!  PUT   /schedules/{name}               {cron, selector, job: {script | command, ...}, jitter_s,
//!                                         missed: skip | run-once, waves: {wave, ...}, deadline_s}
//!  GET/DELETE /schedules/{name}          GET: the definition, next runs, the latest runs
//!  GET   /schedules/{name}/runs[?limit=] history: occurrence, status, at, jobs (newest first)
//! ```

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::auth::runner_in_tenant;
use crate::common::auth::Caller;
use crate::common::error::ApiError;
use crate::common::http::JsonBody;
use crate::db::fleet::Policy;
use crate::fleet::deadlines::MAX_DEADLINE_S;
use crate::fleet::labels;
use crate::fleet::schedule::{self, Waves};
use crate::fleet::selector::{self, Labels};
use crate::fleet::FleetCtx;

/// Most runners one bulk label change touches.
const MAX_BULK: usize = 10_000;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    FleetCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    Router::new()
        .route(
            "/api/v1/runners/{id}/labels",
            get(get_labels).patch(patch_labels),
        )
        .route("/api/v1/runners/{id}/labels/accept", post(accept))
        .route("/api/v1/labels", post(bulk))
        .route("/api/v1/fleet-policy", get(get_policy).put(put_policy))
        .route("/api/v1/rollouts", get(list_rollouts).post(create_rollout))
        .route("/api/v1/rollouts/{id}", get(get_rollout))
        .route("/api/v1/rollouts/{id}/{action}", post(control_rollout))
        .route("/api/v1/schedules", get(list_schedules))
        .route(
            "/api/v1/schedules/{name}",
            get(get_schedule).put(put_schedule).delete(delete_schedule),
        )
        .route("/api/v1/schedules/{name}/runs", get(schedule_runs))
}

async fn labels_json(
    state: &FleetCtx,
    tenant: &str,
    runner: &str,
) -> Result<Json<Value>, ApiError> {
    let (labels, proposed) = state.fleet.store.labels(tenant, runner).await?;
    Ok(Json(
        json!({"runner_id": runner, "labels": labels, "proposed": proposed}),
    ))
}

async fn get_labels(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    labels_json(&state, tenant, &id).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    #[serde(default)]
    set: Labels,
    #[serde(default)]
    remove: Vec<String>,
    /// Bulk only: which runners.
    #[serde(default)]
    selector: Option<String>,
}

async fn patch_labels(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<ChangeBody>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    if b.selector.is_some() {
        return Err(ApiError::bad_request(
            "selector: only for POST /api/v1/labels",
        ));
    }
    labels::check_change(&b.set, &b.remove)?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    labels::change(&state.labels, tenant, &id, &b.set, &b.remove).await?;
    labels_json(&state, tenant, &id).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    #[serde(default)]
    keys: Option<Vec<String>>,
}

async fn accept(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<AcceptBody>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    if b.keys
        .as_ref()
        .is_some_and(|k| k.len() > selector::MAX_LABELS)
    {
        return Err(ApiError::bad_request(format!(
            "keys: at most {}",
            selector::MAX_LABELS
        )));
    }
    runner_in_tenant(&state.db, tenant, &id).await?;
    let before = state.fleet.store.labels(tenant, &id).await?.0;
    let after = state
        .fleet
        .store
        .accept(tenant, &id, b.keys.as_deref())
        .await?;
    // The group label moves the update group (labels.rs).
    if before.get(labels::GROUP) != after.get(labels::GROUP) {
        if let Some(g) = after.get(labels::GROUP) {
            state.db.updates.set_runner_group(tenant, &id, g).await?;
        }
    }
    labels_json(&state, tenant, &id).await
}

async fn bulk(
    caller: Caller,
    State(state): State<FleetCtx>,
    JsonBody(b): JsonBody<ChangeBody>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let Some(text) = b.selector.as_deref() else {
        return Err(ApiError::bad_request(
            "selector: required (\"\" names every runner)",
        ));
    };
    let sel = labels::parse_selector(text)?;
    labels::check_change(&b.set, &b.remove)?;
    let chosen = labels::select(&state.labels, tenant, &sel).await?;
    if chosen.len() > MAX_BULK {
        return Err(ApiError::bad_request(format!(
            "the selector names {} runners; at most {MAX_BULK} at once",
            chosen.len()
        )));
    }
    // Every runner's result is checked before any is written.
    for (r, l) in &chosen {
        let mut after = l.clone();
        for k in &b.remove {
            after.remove(k);
        }
        after.extend(b.set.clone());
        selector::check_labels(&after)
            .map_err(|e| ApiError::bad_request(format!("runner {}: {e}", r.id)))?;
    }
    let mut ids = Vec::with_capacity(chosen.len());
    for (r, _) in &chosen {
        labels::change(&state.labels, tenant, &r.id, &b.set, &b.remove).await?;
        ids.push(r.id.clone());
    }
    Ok(Json(json!({"changed": ids.len(), "runners": ids})))
}

async fn get_policy(
    caller: Caller,
    State(state): State<FleetCtx>,
) -> Result<Json<Policy>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(state.fleet.store.policy(tenant).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default)]
    job_deadline_s: Option<u64>,
    #[serde(default)]
    auto_accept: Vec<String>,
}

async fn put_policy(
    caller: Caller,
    State(state): State<FleetCtx>,
    JsonBody(b): JsonBody<PolicyBody>,
) -> Result<Json<Policy>, ApiError> {
    let tenant = caller.tenant()?;
    if b.job_deadline_s
        .is_some_and(|d| d == 0 || d > MAX_DEADLINE_S)
    {
        return Err(ApiError::bad_request(format!(
            "job_deadline_s: 1 to {MAX_DEADLINE_S} (leave it out for no deadline)"
        )));
    }
    if b.auto_accept.len() > selector::MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "auto_accept: at most {} keys",
            selector::MAX_LABELS
        )));
    }
    for k in &b.auto_accept {
        if k != "*" {
            selector::check_key(k, 0)
                .map_err(|e| ApiError::bad_request(format!("auto_accept {k:?}: {e}")))?;
        }
    }
    let p = Policy {
        job_deadline_s: b.job_deadline_s,
        auto_accept: b.auto_accept,
    };
    state.fleet.store.set_policy(tenant, &p).await?;
    state.jobs.bus.publish(
        tenant,
        crate::common::bus::POLICY,
        serde_json::json!({ "policy": "fleet", "job_deadline_s": p.job_deadline_s, "auto_accept": p.auto_accept }),
    );
    Ok(Json(p))
}

// ---- rollouts --------------------------------------------------------------

/// A rollout's jobs wait this long for an offline runner unless the
/// request or the tenant's policy says otherwise: a wave must end.
pub(crate) const ROLLOUT_DEADLINE_S: u64 = 600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutBody {
    selector: String,
    /// `10` runners or `10%` of them per wave [default: all at once].
    #[serde(default)]
    wave: Option<String>,
    /// Runners of a wave running at once [default: the whole wave].
    #[serde(default)]
    concurrency: Option<u32>,
    /// Halt once this many runners failed [default 1].
    #[serde(default)]
    max_failures: Option<u32>,
    /// Or: halt when more than this percent of a wave's runners failed.
    #[serde(default)]
    max_failure_rate: Option<u8>,
    /// Wait this long after each wave before the next [default 0].
    #[serde(default)]
    soak_s: Option<u64>,
    #[serde(default)]
    deadline_s: Option<u64>,
    /// What each runner runs; or `update`.
    #[serde(default)]
    job: Option<crate::jobs::api::RunBody>,
    /// Update each runner to a version.
    #[serde(default)]
    update: Option<UpdateBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    version: String,
    /// How long a runner has to be connected at the version [default 120].
    #[serde(default)]
    reconnect_s: Option<u64>,
}

/// Longest soak time of a wave.
const MAX_SOAK_S: u64 = 86_400;
/// How long an updated runner may take to reconnect: bounds.
const RECONNECT_S: std::ops::RangeInclusive<u64> = 5..=3_600;
const DEFAULT_RECONNECT_S: u64 = 120;

async fn create_rollout(
    caller: Caller,
    State(state): State<FleetCtx>,
    JsonBody(b): JsonBody<RolloutBody>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let tenant = caller.tenant()?;
    let sel = labels::parse_selector(&b.selector)?;
    let waves = Waves {
        wave: b.wave.clone().unwrap_or_else(|| "100%".into()),
        concurrency: b.concurrency,
        max_failures: b.max_failures,
        max_failure_rate: b.max_failure_rate,
    };
    let (wave, concurrency, threshold) = schedule::wave_params(&waves)?;
    let soak_s = b.soak_s.unwrap_or(0);
    if soak_s > MAX_SOAK_S {
        return Err(ApiError::bad_request(format!("soak_s: 0 to {MAX_SOAK_S}")));
    }
    let work = match (b.job, b.update) {
        (Some(job), None) => {
            if !job.is_job_only() {
                return Err(ApiError::bad_request(
                    "job: what to run only (runners come from the rollout's selector)",
                ));
            }
            let deadline_ms =
                crate::fleet::deadlines::deadline_ms(&state.labels, tenant, b.deadline_s)
                    .await?
                    .unwrap_or(ROLLOUT_DEADLINE_S as i64 * 1000);
            let (label, spec) = job.spec(&state.jobs, tenant).await?;
            crate::fleet::rollout::Work::Job {
                label,
                spec: Box::new(spec),
                deadline_ms,
            }
        }
        (None, Some(u)) => {
            if b.deadline_s.is_some() {
                return Err(ApiError::bad_request(
                    "deadline_s: for jobs (an update has update.reconnect_s)",
                ));
            }
            let reconnect_s = u.reconnect_s.unwrap_or(DEFAULT_RECONNECT_S);
            if !RECONNECT_S.contains(&reconnect_s) {
                return Err(ApiError::bad_request(format!(
                    "update.reconnect_s: {} to {}",
                    RECONNECT_S.start(),
                    RECONNECT_S.end()
                )));
            }
            state.offers.check_release(&u.version).await?;
            crate::fleet::rollout::Work::Update {
                version: u.version,
                reconnect_ms: reconnect_s as i64 * 1000,
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "give job (what to run) or update (a version), one of them",
            ))
        }
    };
    let runners: Vec<(String, String)> = labels::select(&state.labels, tenant, &sel)
        .await?
        .into_iter()
        .map(|(r, _)| (r.id, r.name))
        .collect();
    if runners.is_empty() {
        return Err(ApiError::not_found(format!(
            "no runner matches {:?}",
            b.selector
        )));
    }
    if runners.len() > crate::fleet::rollout::MAX_TARGETS {
        return Err(ApiError::bad_request(format!(
            "the selector names {} runners; a rollout takes at most {}",
            runners.len(),
            crate::fleet::rollout::MAX_TARGETS
        )));
    }
    let view = crate::fleet::rollout::start(
        &state,
        tenant,
        runners,
        crate::fleet::rollout::NewRollout {
            selector: sel.to_string(),
            wave,
            wave_text: waves.wave,
            concurrency,
            threshold,
            soak_ms: soak_s as i64 * 1000,
            work,
        },
    )
    .await?;
    Ok((axum::http::StatusCode::CREATED, Json(view)))
}

async fn list_rollouts(
    caller: Caller,
    State(state): State<FleetCtx>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let rows = state.fleet.store.rollouts(tenant, 100).await?;
    let mut list: Vec<Value> = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut v = crate::fleet::rollout::shown(r);
        // The list is a summary: targets are in GET /rollouts/{id}.
        if let Some(o) = v.as_object_mut() {
            o.remove("targets");
        }
        list.push(v);
    }
    Ok(Json(Value::Array(list)))
}

async fn get_rollout(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(
        crate::fleet::rollout::show(&state, tenant, &id).await?,
    ))
}

async fn control_rollout(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    if !matches!(action.as_str(), "pause" | "resume" | "abort") {
        return Err(ApiError::not_found("no such endpoint"));
    }
    Ok(Json(
        crate::fleet::rollout::control(&state, tenant, &id, &action).await?,
    ))
}

// ---- schedules -------------------------------------------------------------

async fn list_schedules(
    caller: Caller,
    State(state): State<FleetCtx>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(Value::Array(schedule::list(&state, tenant).await?)))
}

async fn put_schedule(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<schedule::Definition>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(schedule::put(&state, tenant, &name, &b).await?))
}

async fn get_schedule(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let row = state
        .fleet
        .store
        .schedules(Some(tenant))
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no schedule {name:?}")))?;
    let mut v = schedule::view(&row, crate::common::clock::now_ms());
    let runs = state.fleet.store.runs(tenant, &name, 20).await?;
    v["runs"] = Value::Array(runs.iter().map(schedule::run_view).collect());
    Ok(Json(v))
}

async fn delete_schedule(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path(name): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let tenant = caller.tenant()?;
    if state.fleet.store.delete_schedule(tenant, &name).await? {
        tracing::info!(tenant, schedule = %name, "schedule removed");
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no schedule {name:?}")))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn schedule_runs(
    caller: Caller,
    State(state): State<FleetCtx>,
    Path(name): Path<String>,
    params: Result<axum::extract::Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let q = crate::common::http::query(params)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > schedule::MAX_HISTORY {
        return Err(ApiError::bad_request(format!(
            "limit: 1 to {}",
            schedule::MAX_HISTORY
        )));
    }
    if !state
        .fleet
        .store
        .schedules(Some(tenant))
        .await?
        .iter()
        .any(|r| r.name == name)
    {
        return Err(ApiError::not_found(format!("no schedule {name:?}")));
    }
    let runs = state.fleet.store.runs(tenant, &name, limit).await?;
    Ok(Json(Value::Array(
        runs.iter().map(schedule::run_view).collect(),
    )))
}
