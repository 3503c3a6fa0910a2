//! REST handlers for containers (`docs/api.md`, containers): Docker calls
//! through the runner's connection, the server's cached view, the event
//! history.
//!
//! Every handler looks the runner up in the caller's tenant before anything
//! else (before parsing the query, the body or the container name), so
//! another tenant gets 404 whatever it sends. A live call is one
//! `docker_request` through the registry, answered by `docker_response`
//! (Docker's status and body, unchanged) or `error`:
//!
//! ```text
//!  no connection            → 409 runner_unreachable
//!  no answer in time        → 504 runner_timeout
//!  error docker_unavailable → 503 docker_unavailable (the runner's reason)
//!  error bad_request        → 400 bad_request
//!  error signature_refused  → 403 signature_refused (the host requires a signed operation; its reason)
//!  docker 2xx / 304         → 200 (304: "changed": false)
//!  docker 4xx / 5xx         → the same status, code "docker", Docker's message verbatim
//! ```

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tether::protocol::{
    api_error, secret_env, ContainerSummary, DockerOp, DockerRequest, DockerResponse, Message,
    CONTAINER_CONTROL_DISABLED,
};

use crate::common::auth::runner_in_tenant;
use crate::common::auth::Caller;
use crate::common::clock;
use crate::common::error::{ApiError, DOCKER, DOCKER_UNAVAILABLE, RUNNER_ERROR};
use crate::common::http::{query, signed_param};
use crate::common::http::{valid_container_ref, MAX_CONTAINER_REF};
use crate::containers::ContainerEventView;
use crate::containers::ContainersCtx;
use tether::protocol::signed::REFUSED_CODE;

/// Longest stop/restart timeout a caller may ask for.
const MAX_STOP_TIMEOUT_S: u32 = 600;
/// Docker's own default stop timeout, waited for when none is given.
const DEFAULT_STOP_TIMEOUT_S: u32 = 10;

fn check_container(cid: &str) -> Result<(), ApiError> {
    if valid_container_ref(cid) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid container id or name {:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most {MAX_CONTAINER_REF} characters",
            cid.chars().take(MAX_CONTAINER_REF + 1).collect::<String>()
        )))
    }
}

/// A signal name or number as `docker kill --signal` takes it: SIGKILL,
/// KILL, 9, SIGRTMIN+3.
fn valid_signal(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-'))
}

/// Docker filters: a JSON object (`{"label": ["app=web"]}`).
fn check_filters(v: Value) -> Result<Value, ApiError> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::bad_request(
            "filters must be a JSON object, e.g. {\"label\": [\"app=web\"]}",
        ))
    }
}

fn request(op: DockerOp) -> DockerRequest {
    DockerRequest {
        op,
        container: None,
        timeout_s: None,
        signal: None,
        force: false,
        volumes: false,
        filters: None,
        signed: None,
    }
}

/// One Docker call through the runner; `extra` is added to the wait (a stop
/// takes its timeout before Docker answers).
async fn call_docker(
    state: &ContainersCtx,
    tenant: &str,
    id: &str,
    req: DockerRequest,
    extra: Duration,
) -> Result<DockerResponse, ApiError> {
    let limit = state.tuning.docker_timeout + extra;
    let op = req.op;
    let reply = state
        .registry
        .request(tenant, id, Message::DockerRequest(req), limit)
        .await
        .map_err(|e| ApiError::runner_request(id, e, &format!("{op:?}"), limit))?;
    match reply.body {
        Message::DockerResponse(r) => Ok(r),
        Message::Error(e) => Err(match e.code.as_str() {
            DOCKER_UNAVAILABLE => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                DOCKER_UNAVAILABLE,
                e.message,
            ),
            api_error::BAD_REQUEST => ApiError::bad_request(e.message),
            // The host owner's `--no-container-control`: the message says so.
            CONTAINER_CONTROL_DISABLED => {
                ApiError::new(StatusCode::FORBIDDEN, CONTAINER_CONTROL_DISABLED, e.message)
            }
            // The host requires a signature this operation lacks (or whose
            // check failed): the host's reason, as it said it.
            REFUSED_CODE => ApiError::new(StatusCode::FORBIDDEN, REFUSED_CODE, e.message),
            other => ApiError::new(
                StatusCode::BAD_GATEWAY,
                RUNNER_ERROR,
                format!("runner {id} answered with an error: {other}: {}", e.message),
            ),
        }),
        other => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            api_error::INTERNAL,
            format!(
                "runner {id} answered docker_request with '{}'",
                other.type_name()
            ),
        )),
    }
}

/// Docker's answer if it is a success (2xx, or 304 "nothing to do"), else
/// Docker's error with its status and message unchanged.
fn docker_success(r: DockerResponse) -> Result<DockerResponse, ApiError> {
    if (200..300).contains(&r.status) || r.status == 304 {
        return Ok(r);
    }
    let message = match &r.body {
        Value::Object(o) => match o.get("message") {
            Some(Value::String(m)) => m.clone(),
            _ => r.body.to_string(),
        },
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Null => format!("Docker answered HTTP {}", r.status),
        other => other.to_string(),
    };
    // A status that is no HTTP error (a 1xx or 3xx Docker should never send)
    // is a bad gateway answer; the body still says what Docker said.
    let status = StatusCode::from_u16(r.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut e = ApiError::new(status, DOCKER, message);
    e.docker_status = Some(r.status);
    Err(e)
}

// ---- GET /api/v1/runners/{id}/docker --------------------------------------------

pub async fn docker_state(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    Ok(Json(match state.containers.state(&id).await? {
        Some(row) => json!({
            "runner_id": id,
            "available": row.state.available,
            "version": row.state.version,
            "api_version": row.state.api_version,
            "reason": row.state.reason,
            "updated_at": clock::rfc3339(row.updated_at),
        }),
        None => json!({
            "runner_id": id,
            "available": false,
            "version": null,
            "api_version": null,
            "reason": "the runner has not reported its Docker state",
            "updated_at": null,
        }),
    }))
}

// ---- GET /api/v1/runners/{id}/containers ----------------------------------------

#[derive(Deserialize)]
pub struct ListParams {
    cached: Option<bool>,
    /// Docker filters as JSON, passed through.
    filters: Option<String>,
}

/// One entry of Docker's `GET /containers/json` as a summary.
fn summary_of(c: &Value) -> Option<ContainerSummary> {
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    let name = c["Names"]
        .as_array()
        .and_then(|n| n.first())
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some(ContainerSummary {
        id: c["Id"].as_str()?.to_owned(),
        name: name.strip_prefix('/').unwrap_or(name).to_owned(),
        image: text("Image"),
        state: text("State"),
        status: text("Status"),
        created: c["Created"].as_i64().unwrap_or(0),
        ports: c.get("Ports").cloned().unwrap_or(Value::Array(Vec::new())),
        labels: serde_json::from_value(c["Labels"].clone()).unwrap_or_default(),
    })
}

pub async fn list(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path(id): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let p = query(params)?;
    if p.cached == Some(true) {
        if p.filters.is_some() {
            return Err(ApiError::bad_request(
                "filters work on live lists only (not with cached=true)",
            ));
        }
        let view = state
            .db
            .control
            .containers(tenant, &id)
            .await?
            .ok_or_else(|| ApiError::runner_not_found(&id))?;
        return Ok(Json(json!({
            "runner_id": id,
            "cached": true,
            "as_of": view.as_of.map(clock::rfc3339),
            "containers": view.containers,
        })));
    }
    let mut req = request(DockerOp::List);
    if let Some(f) = &p.filters {
        let v = serde_json::from_str(f)
            .map_err(|e| ApiError::bad_request(format!("filters is not JSON: {e}")))?;
        req.filters = Some(check_filters(v)?);
    }
    let filtered = req.filters.is_some();
    let r = docker_success(call_docker(&state, tenant, &id, req, Duration::ZERO).await?)?;
    let Some(items) = r.body.as_array() else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            api_error::INTERNAL,
            format!("runner {id}: Docker's container list is not a JSON array"),
        ));
    };
    let containers: Vec<ContainerSummary> = items.iter().filter_map(summary_of).collect();
    let now = clock::now_ms();
    if !filtered {
        // A full live list is the freshest view there is.
        if let Err(e) = state.containers.replace(&id, &containers, now).await {
            tracing::error!(runner = %id, "storing the container list: {e}");
        }
    }
    Ok(Json(json!({
        "runner_id": id,
        "cached": false,
        "as_of": clock::rfc3339(now),
        "containers": containers,
    })))
}

// ---- GET /api/v1/runners/{id}/containers/{cid} ----------------------------------

pub async fn inspect(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    check_container(&cid)?;
    let mut req = request(DockerOp::Inspect);
    req.container = Some(cid);
    let mut r = docker_success(call_docker(&state, tenant, &id, req, Duration::ZERO).await?)?;
    let names = secret_names(&state, tenant, &r.body).await?;
    secret_env::mask_inspect(&mut r.body, &names);
    Ok(Json(r.body))
}

/// Env names whose values no caller may read, whatever its role: the
/// tenant's secrets, and those of the app the container was deployed for
/// (a secret deleted since still sits in that container's `Env`). The
/// runner already masked what its label lists; this also covers runners
/// and containers older than that label, and scripts that passed a secret
/// to `docker run -e` under its own name.
async fn secret_names(
    state: &ContainersCtx,
    tenant: &str,
    inspect: &Value,
) -> Result<Vec<String>, ApiError> {
    let mut names: Vec<String> = state
        .db
        .jobs
        .secrets(tenant)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let app = inspect["Config"]["Labels"]["tether.app"].as_str();
    let app = match app {
        Some(a) => state.db.jobs.app(tenant, a).await.ok().flatten(),
        None => None,
    };
    if let Some(app) = app {
        if let Some(list) = app.def["secrets"].as_array() {
            names.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
    Ok(names)
}

// ---- container actions ----------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct ActionParams {
    pub timeout: Option<u32>,
    pub signal: Option<String>,
    pub force: Option<bool>,
    pub volumes: Option<bool>,
    /// An operator's signature (`container … --sign-key`), flat.
    pub action_id: Option<String>,
    pub not_after_ms: Option<u64>,
    pub signature: Option<String>,
}

/// The `docker_request` of a container operation: each parameter only for
/// the operation that takes it. The CLI builds the same to sign it
/// (`cli/containers.rs`), so what the host receives is what was signed.
pub(crate) fn action_request(op: DockerOp, cid: &str, p: &ActionParams) -> DockerRequest {
    let mut req = request(op);
    req.container = Some(cid.to_owned());
    if matches!(op, DockerOp::Stop | DockerOp::Restart) {
        req.timeout_s = p.timeout;
    }
    if op == DockerOp::Kill {
        req.signal = p.signal.clone();
    }
    if op == DockerOp::Remove {
        req.force = p.force.unwrap_or(false);
        req.volumes = p.volumes.unwrap_or(false);
    }
    req
}

/// The `docker_request` of a prune of images (`images`) or of containers,
/// with its `filters`. The CLI and the page build the same to sign it
/// (`cli/containers.rs`; `cli/page_signing.rs` checks the page's bytes).
pub(crate) fn prune_request(images: bool, filters: Option<Value>) -> DockerRequest {
    let mut req = request(if images {
        DockerOp::PruneImages
    } else {
        DockerOp::PruneContainers
    });
    req.filters = filters;
    req
}

async fn action(
    caller: Caller,
    state: ContainersCtx,
    id: String,
    cid: String,
    op: DockerOp,
    params: Result<Query<ActionParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    check_container(&cid)?;
    let mut p = query(params)?;
    let mut extra = Duration::ZERO;
    if matches!(op, DockerOp::Stop | DockerOp::Restart) {
        if let Some(t) = p.timeout {
            if t > MAX_STOP_TIMEOUT_S {
                return Err(ApiError::bad_request(format!(
                    "timeout is at most {MAX_STOP_TIMEOUT_S} seconds"
                )));
            }
        }
        extra = Duration::from_secs(u64::from(p.timeout.unwrap_or(DEFAULT_STOP_TIMEOUT_S)));
    }
    if op == DockerOp::Kill {
        if let Some(sig) = &p.signal {
            if !valid_signal(sig) {
                return Err(ApiError::bad_request(format!(
                    "invalid signal {:?}: use a name or number, e.g. SIGKILL, HUP, 9",
                    sig.chars().take(33).collect::<String>()
                )));
            }
        }
    }
    let mut req = action_request(op, &cid, &p);
    req.signed = signed_param(p.action_id.take(), p.not_after_ms, p.signature.take())?;
    let r = docker_success(call_docker(&state, tenant, &id, req, extra).await?)?;
    // 304: already started / already stopped; Docker did nothing.
    Ok(Json(json!({
        "status": r.status,
        "changed": r.status != 304,
        "result": r.body,
    })))
}

pub async fn start(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path((id, cid)): Path<(String, String)>,
    params: Result<Query<ActionParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    action(caller, state, id, cid, DockerOp::Start, params).await
}

pub async fn stop(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path((id, cid)): Path<(String, String)>,
    params: Result<Query<ActionParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    action(caller, state, id, cid, DockerOp::Stop, params).await
}

pub async fn restart(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path((id, cid)): Path<(String, String)>,
    params: Result<Query<ActionParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    action(caller, state, id, cid, DockerOp::Restart, params).await
}

pub async fn kill(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path((id, cid)): Path<(String, String)>,
    params: Result<Query<ActionParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    action(caller, state, id, cid, DockerOp::Kill, params).await
}

pub async fn remove(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path((id, cid)): Path<(String, String)>,
    params: Result<Query<ActionParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    action(caller, state, id, cid, DockerOp::Remove, params).await
}

// ---- prune ------------------------------------------------------------------------

#[derive(Deserialize)]
struct PruneBody {
    filters: Option<Value>,
    /// An operator's signature (`prune --sign-key`), flat.
    action_id: Option<String>,
    not_after_ms: Option<u64>,
    signature: Option<String>,
}

async fn prune(
    caller: Caller,
    state: ContainersCtx,
    id: String,
    op: DockerOp,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    // Parsed here, after the tenant check, not by an extractor.
    let parsed: PruneBody = if body.iter().all(u8::is_ascii_whitespace) {
        PruneBody {
            filters: None,
            action_id: None,
            not_after_ms: None,
            signature: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let mut req = request(op);
    req.filters = parsed.filters.map(check_filters).transpose()?;
    req.signed = signed_param(parsed.action_id, parsed.not_after_ms, parsed.signature)?;
    let r = docker_success(call_docker(&state, tenant, &id, req, Duration::ZERO).await?)?;
    Ok(Json(r.body))
}

pub async fn prune_containers(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    prune(caller, state, id, DockerOp::PruneContainers, body).await
}

pub async fn prune_images(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    prune(caller, state, id, DockerOp::PruneImages, body).await
}

// ---- GET /api/v1/runners/{id}/containers/events ---------------------------------

#[derive(Deserialize)]
pub struct HistoryParams {
    since: Option<String>,
}

pub async fn history(
    caller: Caller,
    State(state): State<ContainersCtx>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<Vec<ContainerEventView>>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let p = query(params)?;
    let since = match p.since.as_deref() {
        Some(s) => clock::parse_time(s, clock::now_ms())
            .map_err(|e| ApiError::bad_request(format!("since: {e}")))?,
        None => 0,
    };
    let rows = state
        .db
        .control
        .container_events(tenant, &id, since)
        .await?
        .ok_or_else(|| ApiError::runner_not_found(&id))?;
    Ok(Json(
        rows.iter()
            .map(|r| ContainerEventView::from_row(&id, r))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_refs_follow_dockers_charset() {
        for ok in ["web", "a", "web_1.blue-2", "3f9a2c7d1e4b", &"a".repeat(128)] {
            assert!(valid_container_ref(ok), "{ok}");
        }
        for bad in [
            "",
            "-web",
            ".web",
            "_web",
            "web/1",
            "we b",
            "web%2F",
            "wéb",
            &"a".repeat(129),
        ] {
            assert!(!valid_container_ref(bad), "{bad}");
        }
        assert!(valid_signal("SIGKILL") && valid_signal("9") && valid_signal("SIGRTMIN+3"));
        assert!(!valid_signal("") && !valid_signal("KILL;rm") && !valid_signal(&"S".repeat(33)));
    }

    #[test]
    fn docker_errors_keep_status_and_message() {
        let e = docker_success(DockerResponse {
            status: 404,
            body: json!({"message": "No such container: web"}),
        })
        .unwrap_err();
        assert_eq!(
            (e.status, e.code, e.message.as_str(), e.docker_status),
            (
                StatusCode::NOT_FOUND,
                DOCKER,
                "No such container: web",
                Some(404)
            )
        );
        let odd = docker_success(DockerResponse {
            status: 302,
            body: Value::Null,
        })
        .unwrap_err();
        assert_eq!(
            (odd.status, odd.docker_status),
            (StatusCode::BAD_GATEWAY, Some(302))
        );
        assert!(docker_success(DockerResponse {
            status: 304,
            body: Value::Null
        })
        .is_ok());
    }

    #[test]
    fn list_entries_become_summaries() {
        let c = json!({"Id": "abc", "Names": ["/web"], "Image": "nginx", "State": "running",
            "Status": "Up 5 minutes", "Created": 1700000000, "Ports": [], "Labels": {"app": "web"}});
        let s = summary_of(&c).unwrap();
        assert_eq!(
            (s.id.as_str(), s.name.as_str(), s.state.as_str(), s.created),
            ("abc", "web", "running", 1_700_000_000)
        );
        assert_eq!(s.labels.get("app").map(String::as_str), Some("web"));
        assert!(summary_of(&json!({"Names": ["/x"]})).is_none());
        let no_labels = summary_of(&json!({"Id": "x", "Labels": null})).unwrap();
        assert!(no_labels.labels.is_empty());
    }
}
