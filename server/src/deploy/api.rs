//! REST handlers for apps and deployments (`docs/api.md`, "Apps and
//! deployments").
//!
//! ```text
//!  GET /apps, GET/PUT/DELETE /apps/{name}   the tenant's app definitions
//!  POST /apps/{name}/deploy   {"ref"?}      a deploy job for the app's runner: fetch, build, replace
//!  POST /apps/{name}/rollback {"to"?}       a job that runs an earlier deployment's image again (no build)
//!  GET  /apps/{name}/deployments            history, newest first, each with its job's status
//!  GET  /apps/{name}/signable?action_id=…    the job_start a signed deploy/rollback will be (to sign it)
//! ```
//!
//! A deploy or rollback may carry `"signed"`: an operator's signature
//! (`app deploy --sign-key`) over the `job_start` the server will send
//! (`protocol/signed.rs`), relayed as it came for hosts that require signed
//! deploys (the dashboard gets what to sign from `signable`). A signed
//! deploy's image is tagged with the signature's action
//! id instead of the job id: the signer cannot know the job id, and the tag
//! is part of what the host acts on, so it must be in what was signed.
//!
//! A deployment is a job (`jobs` table, same output, watch, cancel and
//! timeout as any job) whose `job_start` carries a [`DeploySpec`]. Each
//! build is tagged `IMAGE:JOB_ID`, so every deployment names the exact
//! image it ran and a rollback needs no registry and no rebuild. Secrets
//! are names here; their values are opened only when the `job_start` is
//! sent (`jobs::start_message`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tether::protocol::deploy::{DeploySpec, HealthCheck, PortMap, SecretsDelivery};
use tether::protocol::signed::{Signed, MAX_ACTION_ID, MAX_SIGNATURE};

use crate::common::auth::runner_in_tenant;
use crate::common::auth::Caller;
use crate::common::clock;
use crate::common::error::ApiError;
use crate::common::http::JsonBody;
use crate::db::jobs::{Deployment, StoredApp};
use crate::db::jobs::{JobRow, JobSpec};
use crate::deploy::DeployCtx;
use crate::jobs::api::{fits, job_json, new_job_id};
use crate::jobs::rules::{valid_env, valid_name};
use crate::link::dispatch::FamilyId;

/// A deploy's default job timeout (a cold build can be slow).
const DEFAULT_TIMEOUT_S: u64 = 1800;
const MAX_TIMEOUT_S: u64 = 86_400;
const MAX_HEALTH_TIMEOUT_S: u64 = 3600;
const MAX_HISTORY: usize = 1000;
const MAX_ITEMS: usize = 256;
/// Least time between two redeliveries of one app's secrets.
const REDELIVER_PAUSE_MS: i64 = 10 * 60 * 1000;

/// An app definition as the API takes and returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppDef {
    /// The runner (id or name) the app lives on.
    pub runner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "dot")]
    pub context: String,
    #[serde(default = "dockerfile")]
    pub dockerfile: String,
    /// Image repository (no tag): each deployment is `IMAGE:JOB_ID`.
    /// Default: the app's name.
    #[serde(default)]
    pub image: Option<String>,
    /// Default: the app's name.
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub ports: Vec<PortMap>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default = "restart")]
    pub restart: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of sealed secrets, passed to the container under their name.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Absolute path in the container for a `KEY=VALUE` file of the env
    /// (and the secrets, unless they are delivered as files), mode 0600,
    /// for apps that read a `.env` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
    /// How secrets reach the container. Omitted on PUT: the existing app's
    /// choice, or `files` (memory only) for a new app. A stored definition
    /// without it predates the field: `env`, as deploys were then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_delivery: Option<SecretsDelivery>,
    /// Owner (numeric) of the files in `/run/secrets`, for an app that runs
    /// as another user than root; absent: root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_gid: Option<u32>,
    #[serde(default = "timeout")]
    pub timeout_s: u64,
}

fn dot() -> String {
    ".".into()
}
fn dockerfile() -> String {
    "Dockerfile".into()
}
fn restart() -> String {
    "no".into()
}
fn timeout() -> u64 {
    DEFAULT_TIMEOUT_S
}

fn bad(msg: String) -> ApiError {
    ApiError::bad_request(msg)
}

/// Docker's container name charset.
fn valid_container(s: &str) -> bool {
    s.len() <= 128
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An image repository without tag or digest: `name`, `ns/name`,
/// `host:port/ns/name`.
fn valid_repository(s: &str) -> bool {
    let last = s.rsplit('/').next().unwrap_or(s);
    !s.is_empty()
        && s.len() <= 200
        && !last.contains(':')
        && !s.contains('@')
        && last.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && s.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'-' | b'/' | b':')
        })
}

/// Text that goes to git as an argument: never an option.
fn valid_git_arg(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 2048
        && !s.starts_with('-')
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A path inside the source: relative, without `..`.
fn valid_inner_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 1024
        && !s.starts_with('/')
        && !s.contains('\0')
        && s.split('/').all(|seg| seg != "..")
}

async fn check(
    state: &DeployCtx,
    tenant: &str,
    name: &str,
    d: &mut AppDef,
) -> Result<(), ApiError> {
    // The runner checks the same rule again before the name becomes a path.
    tether::protocol::deploy::check_app_name(name).map_err(bad)?;
    // The definition keeps the runner's id, so a rename cannot move the app.
    d.runner = resolve_runner(state, tenant, &d.runner).await?;
    match (&d.git_url, &d.path) {
        (Some(u), None) if valid_git_arg(u) => {}
        (None, Some(p)) if p.starts_with('/') && !p.contains('\0') && p.len() <= 1024 => {}
        _ => {
            return Err(bad(
                "give exactly one source: git_url (not starting with '-') or path (absolute)"
                    .into(),
            ))
        }
    }
    if let Some(r) = &d.git_ref {
        if !valid_git_arg(r) {
            return Err(bad(format!("git_ref {r:?}: a branch, tag or commit")));
        }
    }
    for (what, p) in [("context", &d.context), ("dockerfile", &d.dockerfile)] {
        if !valid_inner_path(p) {
            return Err(bad(format!(
                "{what} {p:?}: a relative path inside the source, without '..'"
            )));
        }
    }
    let image = d.image.clone().unwrap_or_else(|| name.to_ascii_lowercase());
    if !valid_repository(&image) {
        return Err(bad(format!(
            "image {image:?}: a repository name in lower case, without a tag (each deployment is tagged with its id)"
        )));
    }
    d.image = Some(image);
    let container = d.container.clone().unwrap_or_else(|| name.to_owned());
    if !valid_container(&container) {
        return Err(bad(format!(
            "container {container:?}: Docker's [a-zA-Z0-9][a-zA-Z0-9_.-]*"
        )));
    }
    d.container = Some(container);
    if !["no", "always", "unless-stopped", "on-failure"].contains(&d.restart.as_str()) {
        return Err(bad(format!(
            "restart {:?}: no, always, unless-stopped or on-failure",
            d.restart
        )));
    }
    if d.ports.len() > MAX_ITEMS || d.volumes.len() > MAX_ITEMS || d.labels.len() > MAX_ITEMS {
        return Err(bad(format!(
            "at most {MAX_ITEMS} ports, volumes and labels"
        )));
    }
    for p in &d.ports {
        if p.host == 0 || p.container == 0 || !["tcp", "udp"].contains(&p.proto.as_str()) {
            return Err(bad(format!(
                "port {}:{}/{}: ports 1 to 65535, proto tcp or udp",
                p.host, p.container, p.proto
            )));
        }
    }
    for v in &d.volumes {
        if v.contains('\0') || v.split(':').count() < 2 {
            return Err(bad(format!("volume {v:?}: SOURCE:TARGET[:OPTIONS]")));
        }
    }
    for (k, v) in d.labels.iter().chain(&d.env) {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(bad(format!("{k:?}: a name and a value without NUL")));
        }
    }
    if d.secrets_delivery == Some(SecretsDelivery::EnvFile) && d.env_file.is_none() {
        return Err(bad(
            "secrets_delivery \"env_file\" needs env_file (the file's path in the container)"
                .into(),
        ));
    }
    if let Some(f) = &d.env_file {
        let name = f.rsplit('/').next().unwrap_or("");
        if !f.starts_with('/') || name.is_empty() || name == "." || name == ".." || f.contains('\0')
        {
            return Err(bad(format!(
                "env_file {f:?}: an absolute path of a file in the container"
            )));
        }
    }
    for k in d.env.keys() {
        if !valid_env(k) {
            return Err(bad(format!("env {k:?}: a variable name")));
        }
    }
    for name in &d.secrets {
        if !valid_env(name) {
            return Err(bad(format!("secret {name:?}: a variable name")));
        }
        if state.db.jobs.secret(tenant, name).await?.is_none() {
            return Err(ApiError::not_found(format!("no secret {name:?}")));
        }
    }
    if let Some(h) = &d.health {
        if h.timeout_s == 0 || h.timeout_s > MAX_HEALTH_TIMEOUT_S {
            return Err(bad(format!(
                "health.timeout_s: 1 to {MAX_HEALTH_TIMEOUT_S}"
            )));
        }
        if h.cmd
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.iter().any(|a| a.contains('\0')))
        {
            return Err(bad("health.cmd: a non-empty argument list".into()));
        }
        if h.tcp_port == Some(0) {
            return Err(bad("health.tcp_port: 1 to 65535".into()));
        }
    }
    if d.timeout_s == 0 || d.timeout_s > MAX_TIMEOUT_S {
        return Err(bad(format!("timeout_s: 1 to {MAX_TIMEOUT_S}")));
    }
    Ok(())
}

/// A runner id, or a runner's name in this tenant.
async fn resolve_runner(state: &DeployCtx, tenant: &str, r: &str) -> Result<String, ApiError> {
    if let Ok(row) = runner_in_tenant(&state.db, tenant, r).await {
        return Ok(row.id);
    }
    let all = state.db.control.list_runners(tenant).await?;
    let mut hits = all.iter().filter(|x| x.name == r);
    match (hits.next(), hits.next()) {
        (Some(x), None) => Ok(x.id.clone()),
        (Some(_), Some(_)) => Err(bad(format!("runner name {r:?} is not unique: give its id"))),
        _ => Err(ApiError::runner_not_found(r)),
    }
}

fn app_json(a: &StoredApp) -> Value {
    let mut v = a.def.clone();
    if v["secrets_delivery"].is_null() {
        v["secrets_delivery"] = json!(SecretsDelivery::Env.as_str());
    }
    v["name"] = json!(a.name);
    v["updated_at"] = json!(clock::rfc3339(a.updated_ms));
    v
}

fn deployment_json(d: &Deployment, job: Option<&JobRow>) -> Value {
    let mut v = job.map(job_json).unwrap_or_else(|| json!({"id": d.id}));
    v["app"] = json!(d.app);
    v["image"] = json!(d.image);
    v["kind"] = json!(d.kind);
    v["git_ref"] = json!(d.git_ref);
    v["created_at"] = json!(clock::rfc3339(d.created_ms));
    v
}

async fn app_of(
    state: &DeployCtx,
    tenant: &str,
    name: &str,
) -> Result<(StoredApp, AppDef), ApiError> {
    let a = state
        .db
        .jobs
        .app(tenant, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no app {name:?}")))?;
    let def: AppDef = serde_json::from_value(a.def.clone())
        .map_err(|e| ApiError::internal(format!("stored app {name}: {e}")))?;
    Ok((a, def))
}

pub async fn list_apps(
    caller: Caller,
    State(state): State<DeployCtx>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let apps = state.db.jobs.apps(tenant).await?;
    Ok(Json(Value::Array(apps.iter().map(app_json).collect())))
}

pub async fn put_app(
    caller: Caller,
    State(state): State<DeployCtx>,
    Path(name): Path<String>,
    JsonBody(mut d): JsonBody<AppDef>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    check(&state, tenant, &name, &mut d).await?;
    if d.secrets_delivery.is_none() {
        let kept = match state.db.jobs.app(tenant, &name).await? {
            Some(old) => Some(
                serde_json::from_value::<AppDef>(old.def)
                    .ok()
                    .and_then(|o| o.secrets_delivery)
                    .unwrap_or(SecretsDelivery::Env),
            ),
            None => None,
        };
        let delivery = kept.unwrap_or(SecretsDelivery::Files);
        if delivery == SecretsDelivery::EnvFile && d.env_file.is_none() {
            return Err(bad(
                "the app delivers its secrets in env_file: give env_file, or another secrets_delivery"
                    .into(),
            ));
        }
        d.secrets_delivery = Some(delivery);
    }
    // A deploy of it must fit in one message to the runner: refused now,
    // not at each deploy (the longest ref a deploy may ask for is checked
    // then).
    let (spec, _) = job_spec(&name, &d, &new_job_id()?, None, d.git_ref.clone());
    fits(&state.jobs, tenant, &spec).await?;
    let a = StoredApp {
        name,
        def: serde_json::to_value(&d).map_err(ApiError::internal)?,
        updated_ms: clock::now_ms(),
    };
    state.db.jobs.put_app(tenant, &a).await?;
    Ok(Json(app_json(&a)))
}

pub async fn get_app(
    caller: Caller,
    State(state): State<DeployCtx>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(app_json(&app_of(&state, tenant, &name).await?.0)))
}

pub async fn delete_app(
    caller: Caller,
    State(state): State<DeployCtx>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant()?;
    if state.db.jobs.delete_app(tenant, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no app {name:?}")))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// Deploy this ref instead of the app's `git_ref`.
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    /// An operator's signature (`app deploy --sign-key`).
    #[serde(default)]
    signed: Option<Signed>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The deployment whose image to run again (default: the newest
    /// successful one with an image other than the current one).
    #[serde(default)]
    to: Option<String>,
    /// An operator's signature (`app rollback --sign-key`).
    #[serde(default)]
    signed: Option<Signed>,
}

/// An optional JSON body: empty is the default.
fn optional_body<T: for<'de> Deserialize<'de> + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| bad(format!("body: {e}")))
}

/// What a deployment is: `kind` (deploy, rollback, redeliver), the image
/// to run again (`None`: build one), the ref, an operator's signature.
struct Launch {
    kind: &'static str,
    image: Option<String>,
    git_ref: Option<String>,
    signed: Option<Signed>,
}

/// Make the job and its deployment row; tell the runner's connection.
async fn launch(
    state: &DeployCtx,
    tenant: &str,
    app: &str,
    def: &AppDef,
    what: Launch,
) -> Result<Value, ApiError> {
    let Launch {
        kind,
        image,
        git_ref,
        signed,
    } = what;
    // By id only: a name here would be an app that predates runner ids and
    // could not be resolved at start (deploy_store::resolve_runner_names).
    if state
        .db
        .control
        .runner(tenant, &def.runner)
        .await?
        .is_none()
    {
        return Err(ApiError::conflict(format!(
            "app {app} names runner {:?}, which is no runner id of this tenant: \
             PUT the app again with its runner's id or name",
            def.runner
        )));
    }
    let id = new_job_id()?;
    let tag = match &signed {
        Some(s) => check_signed(s)?.to_owned(),
        None => id.clone(),
    };
    let (mut job_spec, image) = job_spec(app, def, &tag, image, git_ref.clone());
    if let Some(s) = signed {
        // Relayed as it came: the runner checks it, not the server.
        job_spec.signed.insert(def.runner.clone(), s);
    }
    fits(&state.jobs, tenant, &job_spec).await?;
    let label = format!("{kind} {app}");
    let now = clock::now_ms();
    let jobs = [(id.clone(), def.runner.clone())];
    let job = crate::jobs::api::create_jobs(&state.jobs, tenant, &jobs, &label, &job_spec, now)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("no job made"))?;
    let d = Deployment {
        id: id.clone(),
        app: app.to_owned(),
        image,
        kind: kind.to_owned(),
        git_ref,
        created_ms: now,
    };
    state.db.jobs.add_deployment(tenant, &d).await?;
    state.registry.nudge(&def.runner, FamilyId::Jobs);
    Ok(deployment_json(&d, Some(&job)))
}

/// A signature's bounds, and its action id usable as an image tag
/// (Docker's `[A-Za-z0-9_][A-Za-z0-9_.-]*`, at most 128): the tag.
fn check_signed(s: &Signed) -> Result<&str, ApiError> {
    let id = &s.action_id;
    let tag_like = id
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !tag_like || id.len() > MAX_ACTION_ID || s.signature.len() > MAX_SIGNATURE {
        return Err(bad(format!(
            "signed: action_id 1 to {MAX_ACTION_ID} of [A-Za-z0-9_.-] (it tags the image), \
             signature at most {MAX_SIGNATURE} bytes"
        )));
    }
    Ok(id)
}

/// The job a deploy (`image` `None`: build one tagged `tag`, the job id or
/// a signed deploy's action id) or a rollback (`image`: run it again) of
/// `app` is; and its image. The CLI builds the same to sign it
/// (`cli/deploy.rs`), so what the host receives is what was signed.
pub(crate) fn job_spec(
    app: &str,
    def: &AppDef,
    tag: &str,
    image: Option<String>,
    git_ref: Option<String>,
) -> (JobSpec, String) {
    let repo = def
        .image
        .clone()
        .unwrap_or_else(|| app.to_ascii_lowercase());
    let build = image.is_none();
    let image = image.unwrap_or_else(|| format!("{repo}:{tag}"));
    let spec = DeploySpec {
        app: app.to_owned(),
        git_url: def.git_url.clone(),
        git_ref,
        path: def.path.clone(),
        context: def.context.clone(),
        dockerfile: def.dockerfile.clone(),
        image: image.clone(),
        build,
        container: def.container.clone().unwrap_or_else(|| app.to_owned()),
        ports: def.ports.clone(),
        volumes: def.volumes.clone(),
        restart: def.restart.clone(),
        labels: def.labels.clone().into_iter().collect(),
        health: def.health.clone(),
        env_file: def.env_file.clone(),
        secrets_delivery: def.secrets_delivery.unwrap_or(SecretsDelivery::Env),
        secrets_uid: def.secrets_uid,
        secrets_gid: def.secrets_gid,
    };
    let job_spec = JobSpec {
        program: "deploy".into(),
        args: Vec::new(),
        script: None,
        env: def.env.clone().into_iter().collect(),
        secrets: def.secrets.clone(),
        timeout_s: def.timeout_s,
        deploy: Some(spec),
        signed: BTreeMap::new(),
    };
    (job_spec, image)
}

/// The `job_start` a job spec becomes, as far as a signature covers it
/// (no job id, no channel, secret names without values): what the CLI
/// signs of a [`job_spec`].
pub(crate) fn signed_start(spec: JobSpec) -> tether::protocol::JobStart {
    tether::protocol::JobStart {
        job_id: String::new(),
        channel: 0,
        program: spec.program,
        args: spec.args,
        script: spec.script,
        env: spec.env,
        // Names only: the values are the server's and are not signed.
        secrets: spec
            .secrets
            .into_iter()
            .map(|n| (n, String::new()))
            .collect(),
        timeout_s: spec.timeout_s,
        deploy: spec.deploy.map(Box::new),
        signed: None,
    }
}

pub async fn deploy(
    caller: Caller,
    State(state): State<DeployCtx>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = caller.tenant()?;
    let b: DeployBody = optional_body(&body)?;
    let (_, def) = app_of(&state, tenant, &name).await?;
    let git_ref = deploy_ref(&def, b.git_ref)?;
    let what = Launch {
        kind: "deploy",
        image: None,
        git_ref,
        signed: b.signed,
    };
    let v = launch(&state, tenant, &name, &def, what).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

pub async fn rollback(
    caller: Caller,
    State(state): State<DeployCtx>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = caller.tenant()?;
    let b: RollbackBody = optional_body(&body)?;
    let (_, def) = app_of(&state, tenant, &name).await?;
    let target = rollback_target(&state, tenant, &name, b.to.as_deref()).await?;
    let v = launch(
        &state,
        tenant,
        &name,
        &def,
        Launch {
            kind: "rollback",
            image: Some(target.image.clone()),
            git_ref: target.git_ref.clone(),
            signed: b.signed,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignableParams {
    /// The signature's action id to be (a signed deploy's image tag).
    action_id: String,
    /// `deploy` (default) or `rollback`.
    #[serde(default)]
    kind: Option<String>,
    /// A deploy's ref instead of the app's.
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    /// A rollback's deployment (default: the one `rollback` would pick).
    #[serde(default)]
    to: Option<String>,
}

/// `GET /apps/{name}/signable?action_id=…[&ref=…|&kind=rollback[&to=…]]`:
/// the `job_start` this server would send for a deploy or rollback signed
/// under `action_id`, for a signer that cannot run [`job_spec`] itself
/// (the dashboard; the CLI builds it with this same code). Read-only: it
/// says nothing `GET /apps/{name}` and the history do not (secret names,
/// not values). The signer signs what it received, so it trusts the
/// server's word on the app's definition, as the CLI does; the host
/// refuses anything else than what was signed. A rollback names the
/// deployment it goes to (`to`), which the signer sends with it so the
/// server cannot pick another.
pub async fn signable(
    caller: Caller,
    State(state): State<DeployCtx>,
    Path(name): Path<String>,
    params: Result<axum::extract::Query<SignableParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let p = crate::common::http::query(params)?;
    let (_, def) = app_of(&state, tenant, &name).await?;
    let probe = Signed {
        action_id: p.action_id,
        not_after_ms: 0,
        signature: String::new(),
    };
    let tag = check_signed(&probe)?;
    let (kind, image, git_ref, to) = match p.kind.as_deref().unwrap_or("deploy") {
        "deploy" if p.to.is_none() => ("deploy", None, deploy_ref(&def, p.git_ref)?, None),
        "rollback" if p.git_ref.is_none() => {
            let d = rollback_target(&state, tenant, &name, p.to.as_deref()).await?;
            ("rollback", Some(d.image), d.git_ref, Some(d.id))
        }
        _ => {
            return Err(bad(
                "kind: deploy (with an optional ref) or rollback (with an optional to)".into(),
            ))
        }
    };
    let (spec, _) = job_spec(&name, &def, tag, image, git_ref);
    Ok(Json(json!({
        "kind": kind,
        "runner": def.runner,
        "to": to,
        "job_start": spec,
    })))
}

/// The ref a deploy fetches: `asked` (checked), else the app's.
fn deploy_ref(def: &AppDef, asked: Option<String>) -> Result<Option<String>, ApiError> {
    if let Some(r) = &asked {
        if !valid_git_arg(r) {
            return Err(bad(format!("ref {r:?}: a branch, tag or commit")));
        }
        if def.git_url.is_none() {
            return Err(bad("ref: the app's source is a path, not git".into()));
        }
    }
    Ok(asked.or_else(|| def.git_ref.clone()))
}

/// The deployment a rollback of `name` goes to: `to` (it must have
/// succeeded), else the newest successful one with an image other than
/// the current one's.
async fn rollback_target(
    state: &DeployCtx,
    tenant: &str,
    name: &str,
    to: Option<&str>,
) -> Result<Deployment, ApiError> {
    let history = state.db.jobs.deployments(tenant, name, MAX_HISTORY).await?;
    let succeeded = |j: &Option<JobRow>| j.as_ref().is_some_and(|j| j.status == "succeeded");
    let target = match to {
        Some(id) => {
            let (d, job) = history
                .iter()
                .find(|(d, _)| d.id == id)
                .ok_or_else(|| ApiError::not_found(format!("no deployment {id:?} of {name}")))?;
            if !succeeded(job) {
                return Err(ApiError::conflict(format!(
                    "deployment {id} did not succeed; its image may not exist"
                )));
            }
            d.clone()
        }
        None => {
            let mut ok = history.iter().filter(|(_, j)| succeeded(j));
            let current = ok.next().ok_or_else(|| {
                ApiError::conflict(format!("{name} has no successful deployment"))
            })?;
            ok.find(|(d, _)| d.image != current.0.image)
                .map(|(d, _)| d.clone())
                .ok_or_else(|| {
                    ApiError::conflict(format!(
                        "{name} has no earlier successful deployment to roll back to"
                    ))
                })?
        }
    };
    Ok(target)
}

/// A runner lost the in-memory secrets of these apps (a host reboot) and
/// Docker could not start their containers: each app of this runner that
/// delivers secrets as files, with nothing in flight, is deployed again
/// with its newest successful image (`kind: "redeliver"`, no build). A
/// runner names only apps it already receives the secrets of; anything
/// else is skipped with a log line.
pub async fn redeliver_lost(state: &DeployCtx, tenant: &str, runner: &str, apps: &[String]) {
    for name in apps.iter().take(tether::protocol::MAX_SECRETS_LOST) {
        match redeliver(state, tenant, runner, name).await {
            Ok(Some(job)) => {
                tracing::info!(%runner, app = %name, %job, "secrets lost on the host: delivering them again")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%runner, app = %name.chars().take(64).collect::<String>(),
                "secrets lost on the host, not redelivered: {}", e.message),
        }
    }
}

async fn redeliver(
    state: &DeployCtx,
    tenant: &str,
    runner: &str,
    name: &str,
) -> Result<Option<String>, ApiError> {
    if !valid_name(name) {
        return Err(bad("not an app name".into()));
    }
    let (_, def) = app_of(state, tenant, name).await?;
    if def.runner != runner {
        return Err(bad("the app lives on another runner".into()));
    }
    if def.secrets_delivery != Some(SecretsDelivery::Files) {
        return Err(bad("the app does not deliver its secrets as files".into()));
    }
    let history = state.db.jobs.deployments(tenant, name, MAX_HISTORY).await?;
    if history
        .first()
        .is_some_and(|(_, j)| j.as_ref().is_some_and(|j| !j.is_final()))
    {
        return Ok(None); // a deploy is on its way; it brings the secrets
    }
    if history.first().is_some_and(|(d, _)| {
        d.kind == "redeliver" && clock::now_ms() - d.created_ms < REDELIVER_PAUSE_MS
    }) {
        // A runner restarting in a loop (or lying) cannot redeploy the
        // app over and over: one redelivery per pause.
        return Err(bad("redelivered a moment ago".into()));
    }
    let Some((d, _)) = history
        .iter()
        .find(|(_, j)| j.as_ref().is_some_and(|j| j.status == "succeeded"))
    else {
        return Err(bad("no successful deployment to run again".into()));
    };
    let v = launch(
        state,
        tenant,
        name,
        &def,
        Launch {
            kind: "redeliver",
            image: Some(d.image.clone()),
            git_ref: d.git_ref.clone(),
            // Nobody to sign it: a host requiring signed deploys refuses it.
            signed: None,
        },
    )
    .await?;
    Ok(v["id"].as_str().map(str::to_owned))
}

pub async fn deployments(
    caller: Caller,
    State(state): State<DeployCtx>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let list = state
        .db
        .jobs
        .deployments(tenant, &name, MAX_HISTORY)
        .await?;
    if list.is_empty() && state.db.jobs.app(tenant, &name).await?.is_none() {
        return Err(ApiError::not_found(format!("no app {name:?}")));
    }
    Ok(Json(Value::Array(
        list.iter()
            .map(|(d, j)| deployment_json(d, j.as_ref()))
            .collect(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert!(valid_repository("web"));
        assert!(valid_repository("registry.local:5000/team/web"));
        assert!(!valid_repository("web:1"));
        assert!(!valid_repository("Web"));
        assert!(!valid_repository("web@sha256:00"));
        assert!(valid_git_arg("https://example.com/a.git"));
        assert!(!valid_git_arg("--upload-pack=evil"));
        assert!(!valid_git_arg("a b"));
        assert!(valid_inner_path("docker/Dockerfile"));
        assert!(!valid_inner_path("../etc/passwd"));
        assert!(!valid_inner_path("/abs"));
        assert!(valid_container("web-1.a_b"));
        assert!(!valid_container("-web"));
    }
}
