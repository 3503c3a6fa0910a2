//! REST handlers for container logs (`docs/api.md`, logs).
//!
//! ```text
//!  GET  /runners/{id}/containers/{c}/logs            stored history (time range, text filter, tail)
//!  GET  /runners/{id}/containers/{c}/logs?follow=1   live from the runner, until the stream ends
//!  GET  /runners/{id}/containers/{c}/logs?source=runner  read from Docker now, not from storage
//!  GET  /runners/{id}/logs                           collection policy, retention, stored containers
//!  PUT  /runners/{id}/logs/collect                   {"policy": "all" | "none" | "label:K[=V]" | null}
//!  PUT  /runners/{id}/logs/retention                 {"container"?, "max_age": "3d", "max_bytes": "10M"}
//!  DELETE /runners/{id}/logs/retention[?container=c] back to the runner's / server's default
//! ```
//!
//! Lines are NDJSON, one `{"ts","ts_ns","stream","line"}` per line; a live
//! stream ends with `{"end": "reason"}` (container stopped, runner
//! disconnected, ...; `authorization ended: …` when the caller's
//! authority does, `common/stream_auth.rs`). A follower that reads slowly slows the runner's
//! reading of Docker (its queue is bounded and ACKed as it drains), never
//! the server's memory.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use futures_util::stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tether::protocol::{LogOpen, Message};
use tokio::sync::mpsc;

use crate::common::auth::runner_in_tenant;
use crate::common::auth::Caller;
use crate::common::clock;
use crate::common::error::ApiError;
use crate::common::error::{DOCKER_UNAVAILABLE, RUNNER_ERROR};
use crate::common::http::valid_container_ref;
use crate::common::http::{query, JsonBody};
use crate::common::stream_auth::{until_revoked, AuthGuard};
use crate::db::logs::{LogQuery, LogRetention};
use crate::db::Role;
use crate::link::dispatch::FamilyId;
use crate::logs::link::LiveOpen;
use crate::logs::LogsCtx;
use crate::logs::{self, parse_line, CollectPolicy, LiveItem, StreamSel, LIVE_QUEUE};

/// Lines a history answer holds unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 10_000;
const MAX_LIMIT: usize = 100_000;
/// Longest text filter.
const MAX_FILTER: usize = 256;
/// Error code: no such container on the runner.
const NO_SUCH_CONTAINER: &str = "no_such_container";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogParams {
    #[serde(default)]
    follow: Option<String>,
    /// Last N lines.
    tail: Option<usize>,
    since: Option<String>,
    until: Option<String>,
    /// Case-insensitive substring filter.
    q: Option<String>,
    stream: Option<String>,
    limit: Option<usize>,
    /// `stored` (default without follow) or `runner`.
    source: Option<String>,
}

fn flag(v: &Option<String>) -> Result<bool, ApiError> {
    match v.as_deref() {
        None | Some("0" | "false" | "no") => Ok(false),
        Some("" | "1" | "true" | "yes") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "follow={other:?}: use 1 or 0"
        ))),
    }
}

fn time_ns(what: &str, v: &Option<String>, now_ms: i64) -> Result<Option<i64>, ApiError> {
    let Some(s) = v else { return Ok(None) };
    // Nanosecond RFC 3339 first (a line's own `ts`), then the API's forms.
    if let Some(ns) = logs::parse_rfc3339_ns(s) {
        return Ok(Some(ns));
    }
    clock::parse_time(s, now_ms)
        .map(|ms| Some(ms.saturating_mul(1_000_000)))
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

fn ndjson(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        // Proxies must pass a live stream through as it comes.
        .header("X-Accel-Buffering", "no")
        .body(body)
        .unwrap_or_default()
}

fn line_json(line: &logs::LogLine) -> Bytes {
    let mut v = serde_json::to_vec(line).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

pub async fn logs(
    caller: Caller,
    State(state): State<LogsCtx>,
    headers: HeaderMap,
    Path((id, container)): Path<(String, String)>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant()?.to_owned();
    runner_in_tenant(&state.db, &tenant, &id).await?;
    let p = query(params)?;
    if !valid_container_ref(&container) {
        return Err(ApiError::bad_request(format!(
            "invalid container name {container:?}"
        )));
    }
    let now = clock::now_ms();
    let follow = flag(&p.follow)?;
    let since_ns = time_ns("since", &p.since, now)?;
    let until_ns = time_ns("until", &p.until, now)?;
    let streams =
        StreamSel::parse(p.stream.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    let filter = p.q.filter(|q| !q.is_empty());
    if filter.as_ref().is_some_and(|q| q.len() > MAX_FILTER) {
        return Err(ApiError::bad_request(format!(
            "q: at most {MAX_FILTER} bytes"
        )));
    }
    let live = match p.source.as_deref() {
        None => follow,
        Some("stored") if follow => {
            return Err(ApiError::bad_request(
                "follow reads from the runner; drop source=stored",
            ))
        }
        Some("stored") => false,
        Some("runner") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "source={other:?}: use stored or runner"
            )))
        }
    };
    if !live {
        let limit = p.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
        let q = LogQuery {
            since_ns,
            until_ns,
            contains: filter,
            streams,
            limit: p.tail.map_or(limit, |t| t.min(limit)),
            from_end: p.tail.is_some(),
        };
        let name = stored_name(&state, &tenant, &id, &container).await?;
        let lines = state.db.logs.query(&id, &name, &q).await?;
        let body: Vec<u8> = lines.iter().flat_map(|l| line_json(l).to_vec()).collect();
        return Ok(ndjson(Body::from(body)));
    }

    let open = LogOpen {
        channel: 0,
        container: container.clone(),
        follow,
        tail: p.tail.map(|t| t as u64),
        since_ns,
        skip: 0,
        until_ns,
        stdout: streams != StreamSel::Stderr,
        stderr: streams != StreamSel::Stdout,
        keep: false,
        window: 0,
    };
    let (tx, rx) = mpsc::channel(LIVE_QUEUE);
    let limit = state.tuning.docker_timeout;
    let reply = state
        .registry
        .family_request(
            &tenant,
            &id,
            FamilyId::Logs,
            Box::new(LiveOpen { open, tx }),
            limit,
        )
        .await
        .map_err(|e| ApiError::runner_request(&id, e, "the log request", limit))?;
    match reply.body {
        Message::LogOpened(_) => {}
        Message::Error(e) => {
            return Err(match e.code.as_str() {
                NO_SUCH_CONTAINER => {
                    ApiError::new(StatusCode::NOT_FOUND, NO_SUCH_CONTAINER, e.message)
                }
                DOCKER_UNAVAILABLE | "too_many_channels" => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    DOCKER_UNAVAILABLE,
                    e.message,
                ),
                other => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    RUNNER_ERROR,
                    format!("runner {id} answered with an error: {other}: {}", e.message),
                ),
            })
        }
        other => {
            return Err(ApiError::internal(format!(
                "unexpected answer '{}' to log_open",
                other.type_name()
            )))
        }
    }
    let needle = filter.map(|f| f.to_lowercase());
    let lines = stream::unfold(Some((rx, needle)), |st| async move {
        let (mut rx, needle) = st?;
        loop {
            match rx.recv().await {
                Some(LiveItem::Lines { tag, data }) => {
                    let mut out = Vec::with_capacity(data.len() * 2);
                    for raw in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        let line = parse_line(tag, raw);
                        if needle
                            .as_ref()
                            .is_some_and(|n| !line.line.to_lowercase().contains(n.as_str()))
                        {
                            continue;
                        }
                        out.extend_from_slice(&line_json(&line));
                    }
                    if out.is_empty() {
                        continue;
                    }
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from(out)),
                        Some((rx, needle)),
                    ));
                }
                Some(LiveItem::End(reason)) => {
                    let mut end = serde_json::to_vec(&json!({ "end": reason })).unwrap_or_default();
                    end.push(b'\n');
                    return Some((Ok(Bytes::from(end)), None));
                }
                None => {
                    let end = b"{\"end\":\"server closed the stream\"}\n".to_vec();
                    return Some((Ok(Bytes::from(end)), None));
                }
            }
        }
    });
    // The caller's authority is watched while the stream is open.
    let guard = AuthGuard::for_request(&state.db, &headers, Role::Viewer);
    let lines = until_revoked(lines, guard, |reason| {
        let mut end =
            serde_json::to_vec(&json!({ "end": format!("authorization ended: {reason}") }))
                .unwrap_or_default();
        end.push(b'\n');
        Ok(Bytes::from(end))
    });
    Ok(ndjson(Body::from_stream(lines)))
}

/// The name logs are stored under: the container's name; an id (or id
/// prefix) of a container the server knows is turned into its name.
async fn stored_name(
    state: &LogsCtx,
    tenant: &str,
    runner: &str,
    container: &str,
) -> Result<String, ApiError> {
    let is_hex = container.len() >= 12 && container.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        if let Some(view) = state.db.control.containers(tenant, runner).await? {
            if let Some(c) = view.containers.iter().find(|c| c.id.starts_with(container)) {
                return Ok(c.name.clone());
            }
        }
    }
    Ok(container.to_owned())
}

// ---- settings ---------------------------------------------------------------

fn retention_json(r: LogRetention) -> Value {
    json!({ "max_age_s": r.max_age_s, "max_bytes": r.max_bytes })
}

pub async fn settings(
    caller: Caller,
    State(state): State<LogsCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let policy = state.db.logs.policy(&id).await?;
    let runner_retention = state.db.logs.retention(&id, "").await?;
    let mut containers = Vec::new();
    for (name, bytes) in state.db.logs.containers(&id).await? {
        let r = state.db.logs.retention(&id, &name).await?;
        containers.push(json!({ "name": name, "bytes": bytes, "retention": retention_json(r) }));
    }
    Ok(Json(json!({
        "runner_id": id,
        "collect": policy.to_string(),
        "retention": retention_json(runner_retention),
        "containers": containers,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectBody {
    /// `None`: back to the server's default.
    policy: Option<String>,
}

pub async fn set_collect(
    caller: Caller,
    State(state): State<LogsCtx>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CollectBody>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let policy = body
        .policy
        .as_deref()
        .map(CollectPolicy::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    state.db.logs.set_policy(&id, policy.as_ref()).await?;
    // Applied by the replica holding the runner (here, or by NOTIFY).
    state.registry.nudge(&id, FamilyId::Logs);
    let now = state.db.logs.policy(&id).await?;
    state.bus.publish(
        tenant,
        crate::common::bus::POLICY,
        json!({ "policy": "log_collect", "runner_id": id, "collect": now.to_string() }),
    );
    Ok(Json(json!({ "runner_id": id, "collect": now.to_string() })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    #[serde(default)]
    container: Option<String>,
    max_age: String,
    max_bytes: String,
}

pub async fn set_retention(
    caller: Caller,
    State(state): State<LogsCtx>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RetentionBody>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let container = body.container.unwrap_or_default();
    if !container.is_empty() && !valid_container_ref(&container) {
        return Err(ApiError::bad_request(format!(
            "invalid container name {container:?}"
        )));
    }
    let max_age_ms = clock::parse_duration_ms(&body.max_age)
        .filter(|ms| *ms >= 60_000)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "max_age {:?}: a duration of at least a minute (90m, 7d)",
                body.max_age
            ))
        })?;
    let max_bytes =
        crate::common::http::parse_bytes(&body.max_bytes).map_err(ApiError::bad_request)?;
    let r = LogRetention {
        max_age_s: max_age_ms / 1000,
        max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
    };
    state
        .db
        .logs
        .set_retention(&id, &container, Some(r))
        .await?;
    Ok(Json(json!({
        "runner_id": id,
        "container": (!container.is_empty()).then_some(container),
        "retention": retention_json(r),
    })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetentionParams {
    container: Option<String>,
}

pub async fn clear_retention(
    caller: Caller,
    State(state): State<LogsCtx>,
    Path(id): Path<String>,
    params: Result<Query<RetentionParams>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let p = query(params)?;
    state
        .db
        .logs
        .set_retention(&id, p.container.as_deref().unwrap_or(""), None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
