//! REST handlers for saved scripts, sealed secrets and jobs (`docs/api.md`).
//!
//! ```text
//!  GET/PUT/DELETE /scripts[/{name}]        the tenant's script library
//!  GET /secrets, PUT/DELETE /secrets/{name} write-only values (names listed, never values)
//!  POST /jobs                               run a saved script or a command on runners: one job each
//!  GET  /jobs[?runner=], /jobs/{id}         status, exit code, times
//!  POST /jobs/{id}/cancel
//!  GET  /jobs/{id}/output[?follow=1&stream=stdout|stderr|all&format=raw|ndjson]
//! ```
//!
//! Output follows are served from storage first, then from the live hub,
//! by offset, so a watcher that joins late (or falls behind) sees every byte
//! once and in order; the stream ends when the job is over and its whole
//! output is stored, or when the caller's authority ends (`common/stream_auth.rs`:
//! a last `{"end": reason}` line in NDJSON, a `[tether]` line in raw).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tether::protocol::signed::{Signed, MAX_ACTION_ID, MAX_SIGNATURE};
use tether::protocol::StreamTag;
use tokio::sync::broadcast;

use crate::common::auth::runner_in_tenant;
use crate::common::auth::Caller;
use crate::common::clock;
use crate::common::error::ApiError;
use crate::common::http::{query, JsonBody};
use crate::common::quotas;
use crate::common::stream_auth::{until_revoked, AuthGuard};
use crate::db::jobs::{JobRow, JobSpec, OutputRow, Script};
use crate::db::Role;
use crate::jobs::rules::{
    self, valid_env, valid_name, DEFAULT_INTERPRETER, MAX_RUNNERS_PER_RUN, MAX_SCRIPT, MAX_SECRET,
    MAX_TIMEOUT_S,
};
use crate::jobs::JobsCtx;
use crate::jobs::{check_fits, JobUpdate, Unfit};
use crate::link::dispatch::FamilyId;

/// Output rows read from storage per page.
const PAGE: usize = 512;

fn check_interpreter(s: &str) -> Result<(), ApiError> {
    rules::check_interpreter(s).map_err(ApiError::bad_request)
}

// ---- scripts ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptBody {
    body: String,
    #[serde(default)]
    interpreter: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    timeout_s: u64,
}

pub async fn list_scripts(
    caller: Caller,
    State(state): State<JobsCtx>,
) -> Result<Json<Vec<Script>>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(state.db.jobs.scripts(tenant).await?))
}

pub async fn put_script(
    caller: Caller,
    State(state): State<JobsCtx>,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<ScriptBody>,
) -> Result<Json<Script>, ApiError> {
    let tenant = caller.tenant()?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "script name {name:?}: 1 to 64 of [A-Za-z0-9_.-]"
        )));
    }
    if b.body.len() > MAX_SCRIPT || b.body.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "script body: at most {MAX_SCRIPT} bytes, no NUL"
        )));
    }
    if b.timeout_s > MAX_TIMEOUT_S {
        return Err(ApiError::bad_request("timeout_s: at most 7 days"));
    }
    let interpreter = b.interpreter.unwrap_or_else(|| DEFAULT_INTERPRETER.into());
    check_interpreter(&interpreter)?;
    let script = Script {
        name,
        body: b.body,
        interpreter,
        args: b.args,
        timeout_s: b.timeout_s,
        updated_ms: clock::now_ms(),
    };
    // Refused now, not each time it is run.
    let spec = JobSpec {
        program: script.interpreter.clone(),
        args: script.args.clone(),
        script: Some(script.body.clone()),
        env: Vec::new(),
        secrets: Vec::new(),
        timeout_s: script.timeout_s,
        deploy: None,
        signed: BTreeMap::new(),
    };
    fits(&state, tenant, &spec).await?;
    state.db.jobs.put_script(tenant, &script).await?;
    Ok(Json(script))
}

pub async fn get_script(
    caller: Caller,
    State(state): State<JobsCtx>,
    Path(name): Path<String>,
) -> Result<Json<Script>, ApiError> {
    let tenant = caller.tenant()?;
    state
        .db
        .jobs
        .script(tenant, &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no script {name:?}")))
}

pub async fn delete_script(
    caller: Caller,
    State(state): State<JobsCtx>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant()?;
    if state.db.jobs.delete_script(tenant, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no script {name:?}")))
    }
}

// ---- secrets ---------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    value: String,
}

pub async fn list_secrets(
    caller: Caller,
    State(state): State<JobsCtx>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let list: Vec<Value> = state
        .db
        .jobs
        .secrets(tenant)
        .await?
        .into_iter()
        .map(|(name, at)| json!({ "name": name, "updated_at": clock::rfc3339(at) }))
        .collect();
    Ok(Json(Value::Array(list)))
}

pub async fn put_secret(
    caller: Caller,
    State(state): State<JobsCtx>,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<SecretBody>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant()?;
    if !valid_env(&name) {
        return Err(ApiError::bad_request(format!(
            "secret name {name:?}: an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
        )));
    }
    if b.value.is_empty() || b.value.len() > MAX_SECRET || b.value.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "secret value: 1 to {MAX_SECRET} bytes, no NUL"
        )));
    }
    let (nonce, sealed) = state
        .secrets
        .seal(tenant, &name, b.value.as_bytes())
        .map_err(ApiError::internal)?;
    state
        .db
        .jobs
        .put_secret(tenant, &name, &nonce, &sealed, clock::now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_secret(
    caller: Caller,
    State(state): State<JobsCtx>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant()?;
    if state.db.jobs.delete_secret(tenant, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no secret {name:?}")))
    }
}

// ---- jobs ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[serde(default)]
    runners: Vec<String>,
    /// Instead of `runners`: every runner whose labels match (`fleet/selector.rs`).
    #[serde(default)]
    selector: Option<String>,
    /// How long a job waits for an offline runner before it expires
    /// (`fleet/deadlines.rs`); default: the tenant's fleet policy.
    #[serde(default)]
    deadline_s: Option<u64>,
    #[serde(default)]
    script: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    interpreter: Option<String>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    timeout_s: Option<u64>,
    /// Operators' signatures by runner id (`tether-server run --sign-key`).
    #[serde(default)]
    signatures: BTreeMap<String, Signed>,
}

impl RunBody {
    /// What the job runs, checked (a saved script's name or a command,
    /// with its interpreter, arguments, env and secrets): its label and
    /// spec. Rollouts use it too (`fleet/rollout.rs`).
    pub(crate) async fn spec(
        &self,
        state: &JobsCtx,
        tenant: &str,
    ) -> Result<(String, JobSpec), ApiError> {
        let (label, mut spec) = match (&self.script, &self.command) {
            (Some(name), None) => {
                let s = state
                    .db
                    .jobs
                    .script(tenant, name)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("no script {name:?}")))?;
                (
                    s.name.clone(),
                    JobSpec {
                        program: s.interpreter,
                        args: s.args,
                        script: Some(s.body),
                        env: Vec::new(),
                        secrets: Vec::new(),
                        timeout_s: s.timeout_s,
                        deploy: None,
                        signed: BTreeMap::new(),
                    },
                )
            }
            (None, Some(cmd)) => {
                if cmd.is_empty() || cmd.len() > MAX_SCRIPT || cmd.contains('\0') {
                    return Err(ApiError::bad_request(format!(
                        "command: 1 to {MAX_SCRIPT} bytes, no NUL"
                    )));
                }
                (
                    cmd.chars().take(120).collect(),
                    JobSpec {
                        program: DEFAULT_INTERPRETER.into(),
                        args: Vec::new(),
                        script: Some(cmd.clone()),
                        env: Vec::new(),
                        secrets: Vec::new(),
                        timeout_s: 0,
                        deploy: None,
                        signed: BTreeMap::new(),
                    },
                )
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of script (a saved script's name) or command",
                ))
            }
        };
        if let Some(i) = self.interpreter.clone() {
            check_interpreter(&i)?;
            spec.program = i;
        }
        if let Some(a) = self.args.clone() {
            spec.args = a;
        }
        if let Some(t) = self.timeout_s {
            if t > MAX_TIMEOUT_S {
                return Err(ApiError::bad_request("timeout_s: at most 7 days"));
            }
            spec.timeout_s = t;
        }
        for (k, v) in &self.env {
            if !valid_env(k) || v.contains('\0') {
                return Err(ApiError::bad_request(format!(
                    "env {k:?}: a variable name and a value without NUL"
                )));
            }
        }
        spec.env = self.env.clone().into_iter().collect();
        for name in &self.secrets {
            if state.db.jobs.secret(tenant, name).await?.is_none() {
                return Err(ApiError::not_found(format!("no secret {name:?}")));
            }
        }
        spec.secrets = self.secrets.clone();
        fits(state, tenant, &spec).await?;
        Ok((label, spec))
    }

    /// The job part only: no runners, selector or deadline (a rollout
    /// names its runners itself).
    pub(crate) fn is_job_only(&self) -> bool {
        self.runners.is_empty() && self.selector.is_none() && self.deadline_s.is_none()
    }
}

/// 413 when the job's `job_start` would not fit in one message to a
/// runner (`jobs::check_fits`): checked before anything is stored.
pub(crate) async fn fits(state: &JobsCtx, tenant: &str, spec: &JobSpec) -> Result<(), ApiError> {
    match check_fits(tenant, spec, &*state.db.jobs, &state.secrets).await {
        Ok(()) => Ok(()),
        Err(Unfit::TooLarge(e)) => Err(ApiError::too_large(e)),
        Err(Unfit::Secret(why)) => Err(ApiError::bad_request(why)),
    }
}

pub(crate) fn job_json(j: &JobRow) -> Value {
    let mut v = serde_json::to_value(j).unwrap_or(Value::Null);
    v["created_at"] = json!(clock::rfc3339(j.created_ms));
    if let Some(t) = j.started_ms {
        v["started_at"] = json!(clock::rfc3339(t));
    }
    if let Some(t) = j.finished_ms {
        v["finished_at"] = json!(clock::rfc3339(t));
        if let Some(s) = j.started_ms {
            v["duration_ms"] = json!(t - s);
        }
    }
    v["complete"] = json!(j.is_complete());
    // Signed by an operator for this runner (`protocol/signed.rs`): public.
    if let Some(s) = j.spec.signed.get(&j.runner_id) {
        v["signed"] = json!(s);
    }
    v
}

pub(crate) fn new_job_id() -> Result<String, ApiError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(ApiError::internal)?;
    Ok(format!(
        "jb_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

pub async fn run(
    caller: Caller,
    State(state): State<JobsCtx>,
    JsonBody(b): JsonBody<RunBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = caller.tenant()?;
    let mut b = b;
    let deadline = state.fleet.deadline_ms(tenant, b.deadline_s).await?;
    if let Some(text) = &b.selector {
        if !b.runners.is_empty() {
            return Err(ApiError::bad_request(
                "give runners or a selector, not both",
            ));
        }
        b.runners = state.fleet.select(tenant, text).await?;
        if b.runners.is_empty() {
            return Err(ApiError::not_found(format!("no runner matches {text:?}")));
        }
    }
    if b.runners.is_empty() || b.runners.len() > MAX_RUNNERS_PER_RUN {
        return Err(ApiError::bad_request(format!(
            "runners: 1 to {MAX_RUNNERS_PER_RUN} runner ids"
        )));
    }
    let (label, mut spec) = b.spec(&state, tenant).await?;
    for (runner, s) in &b.signatures {
        if !b.runners.contains(runner) {
            return Err(ApiError::bad_request(format!(
                "signatures: {runner:?} is not one of the runners"
            )));
        }
        if s.action_id.is_empty()
            || s.action_id.len() > MAX_ACTION_ID
            || s.signature.len() > MAX_SIGNATURE
        {
            return Err(ApiError::bad_request(format!(
                "signatures.{runner}: action_id 1 to {MAX_ACTION_ID} bytes, \
                 signature at most {MAX_SIGNATURE}"
            )));
        }
    }
    // Relayed as they came: the runner checks them, not the server.
    spec.signed = b.signatures;
    fits(&state, tenant, &spec).await?;
    // Every runner must be the tenant's before any job is made.
    for r in &b.runners {
        runner_in_tenant(&state.db, tenant, r).await?;
    }
    let now = clock::now_ms();
    let mut jobs = Vec::with_capacity(b.runners.len());
    for r in &b.runners {
        jobs.push((new_job_id()?, r.clone()));
    }
    let made = create_jobs(&state, tenant, &jobs, &label, &spec, now).await?;
    if let Some(ms) = deadline {
        state.fleet.add_deadlines(tenant, &jobs, now + ms).await?;
    }
    for (id, r) in &jobs {
        state.registry.nudge(r, FamilyId::Jobs);
        state.bus.publish(
            tenant,
            "job",
            json!({ "id": id, "runner_id": r, "change": "created" }),
        );
    }
    Ok((
        StatusCode::CREATED,
        Json(Value::Array(made.iter().map(job_json).collect())),
    ))
}

/// Make jobs within the tenant's limit of jobs not final (`common/quotas.rs`).
pub(crate) async fn create_jobs(
    state: &JobsCtx,
    tenant: &str,
    jobs: &[(String, String)],
    label: &str,
    spec: &JobSpec,
    now: i64,
) -> Result<Vec<JobRow>, ApiError> {
    let limit = state.quotas.active_jobs_per_tenant;
    state
        .db
        .jobs
        .create_jobs(tenant, jobs, label, spec, now, limit)
        .await?
        .map_err(|active| {
            tracing::debug!(tenant, active, limit, "job refused: tenant at its limit");
            quotas::exceeded(
                "jobs pending or running",
                limit as u64,
                "--max-jobs-per-tenant",
            )
        })
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    runner: Option<String>,
    limit: Option<usize>,
}

pub async fn list_jobs(
    caller: Caller,
    State(state): State<JobsCtx>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let p = query(params)?;
    let jobs = state
        .db
        .jobs
        .jobs(
            tenant,
            p.runner.as_deref(),
            p.limit.unwrap_or(100).min(1000),
        )
        .await?;
    Ok(Json(Value::Array(jobs.iter().map(job_json).collect())))
}

async fn job_of(state: &JobsCtx, tenant: &str, id: &str) -> Result<JobRow, ApiError> {
    state
        .db
        .jobs
        .job(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id:?}")))
}

pub async fn get_job(
    caller: Caller,
    State(state): State<JobsCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(job_json(&job_of(&state, tenant, &id).await?)))
}

pub async fn cancel_job(
    caller: Caller,
    State(state): State<JobsCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let job = job_of(&state, tenant, &id).await?;
    if job.is_final() {
        return Err(ApiError::conflict(format!(
            "job {id} is {} already",
            job.status
        )));
    }
    state.db.jobs.request_cancel(tenant, &id).await?;
    state.registry.nudge(&job.runner_id, FamilyId::Jobs);
    state.bus.publish(
        tenant,
        "job",
        json!({ "id": id, "runner_id": job.runner_id, "change": "cancelled" }),
    );
    Ok(Json(job_json(&job_of(&state, tenant, &id).await?)))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputParams {
    follow: Option<String>,
    stream: Option<String>,
    format: Option<String>,
}

/// Which rows a reader wants, and how to write them.
#[derive(Clone, Copy)]
struct View {
    tags: [bool; 5],
    ndjson: bool,
}

impl View {
    fn render(&self, row: &OutputRow, out: &mut Vec<u8>) {
        if !self.tags.get(row.tag as usize).copied().unwrap_or(false) {
            return;
        }
        if self.ndjson {
            let stream = match row.tag {
                1 => "stdout",
                2 => "stderr",
                _ => "system",
            };
            let v = json!({
                "offset": row.offset,
                "ts_ms": row.ts_ms,
                "stream": stream,
                "step": row.step,
                "data": String::from_utf8_lossy(&row.data),
            });
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        } else {
            out.extend_from_slice(&row.data);
        }
    }
}

pub async fn output(
    caller: Caller,
    State(state): State<JobsCtx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<OutputParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant()?.to_owned();
    let p = query(params)?;
    let job = job_of(&state, &tenant, &id).await?;
    let follow = matches!(p.follow.as_deref(), Some("1" | "true" | "yes" | ""));
    let mut tags = [false; 5];
    match p.stream.as_deref().unwrap_or("all") {
        "all" => tags = [true; 5],
        "stdout" => tags[StreamTag::Stdout as usize] = true,
        "stderr" => tags[StreamTag::Stderr as usize] = true,
        "output" => {
            tags[StreamTag::Stdout as usize] = true;
            tags[StreamTag::Stderr as usize] = true;
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "stream={other:?}: use stdout, stderr, output (both) or all (with tether's notes)"
            )))
        }
    }
    let ndjson = match p.format.as_deref().unwrap_or("raw") {
        "raw" => false,
        "ndjson" => true,
        other => {
            return Err(ApiError::bad_request(format!(
                "format={other:?}: use raw or ndjson"
            )))
        }
    };
    let view = View { tags, ndjson };
    let guard = AuthGuard::for_request(&state.db, &headers, Role::Viewer);
    // Subscribe before reading storage: nothing falls between the two.
    let rx = state.job_hub.subscribe();
    let st = Follow {
        state,
        tenant,
        id,
        seq: job.seq,
        next: 0,
        rx,
        follow,
        done: false,
        view,
    };
    let body = stream::unfold(st, |mut st| async move {
        let chunk = st.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), st))
    });
    let body = until_revoked(body, guard, move |reason| {
        let end = if ndjson {
            format!("{}\n", json!({ "end": reason }))
        } else {
            format!("\n[tether] stream ended: {reason}\n")
        };
        Ok(Bytes::from(end))
    });
    let ctype = if ndjson {
        "application/x-ndjson"
    } else {
        "application/octet-stream"
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, ctype)
        .header("X-Accel-Buffering", "no")
        .body(Body::from_stream(body))
        .unwrap_or_default())
}

struct Follow {
    state: JobsCtx,
    tenant: String,
    id: String,
    seq: i64,
    /// Offset of the next row to hand out.
    next: i64,
    rx: broadcast::Receiver<Arc<JobUpdate>>,
    follow: bool,
    done: bool,
    view: View,
}

impl Follow {
    /// Rows from storage from `next` on, rendered; `None` at the end.
    async fn stored(&mut self) -> Option<Vec<u8>> {
        let rows = self
            .state
            .db
            .jobs
            .output(self.seq, self.next, PAGE)
            .await
            .ok()?;
        if rows.is_empty() {
            return Some(Vec::new());
        }
        let mut out = Vec::new();
        for r in &rows {
            self.view.render(r, &mut out);
            self.next = r.end;
        }
        Some(out)
    }

    /// Final with its whole output stored (or removed by retention, or
    /// the job itself removed): nothing more will come. Asked *before*
    /// reading storage, so rows stored meanwhile are still read.
    async fn complete(&self) -> bool {
        match self.state.db.jobs.job(&self.tenant, &self.id).await {
            Ok(Some(j)) => j.is_complete() || (j.is_final() && j.output_pruned),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        loop {
            let complete = self.complete().await;
            // Whatever storage has beyond `next` first.
            let out = self.stored().await?;
            if !out.is_empty() {
                return Some(out);
            }
            if !self.follow || complete {
                self.done = true;
                return None;
            }
            // Then wait for news of this job (output or status).
            loop {
                match self.rx.recv().await {
                    Ok(u) if u.seq() == self.seq => match u.as_ref() {
                        JobUpdate::Output { row, .. } if row.offset >= self.next => {
                            let mut out = Vec::new();
                            if row.offset == self.next {
                                self.view.render(row, &mut out);
                                self.next = row.end;
                                if !out.is_empty() {
                                    return Some(out);
                                }
                                continue;
                            }
                            // Ahead of us: storage has what is between.
                            break;
                        }
                        JobUpdate::Output { .. } => continue,
                        JobUpdate::Status { .. } => break,
                    },
                    Ok(_) => continue,
                    // Fell behind: storage has it all.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.done = true;
                        return None;
                    }
                }
            }
        }
    }
}
