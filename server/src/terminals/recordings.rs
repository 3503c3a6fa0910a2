//! Terminal recordings over REST (`docs/api.md`, recordings), and the
//! tenant's recording policy.
//!
//! ```text
//!  GET /recordings[?runner=&limit=]   sessions with a recording, newest first
//!  GET /recordings/{tid}              one of them
//!  GET /recordings/{tid}/cast         the asciicast v2 file (application/x-asciicast)
//!  GET /recording-policy              the tenant's policy
//!  PUT /recording-policy              change it (a tenant admin; fields left out are kept)
//! ```
//!
//! Who may replay: API tokens, admins and operators; a viewer only if the
//! tenant's policy says `viewers_replay` (a recording shows whatever was
//! on the screen, secrets included). Another tenant's recording is a 404,
//! as one that does not exist.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::auth::Caller;
use crate::common::clock;
use crate::common::error::ApiError;
use crate::common::http::{query, JsonBody};
use crate::db::recordings::{RecordingPolicy, RecordingRow, MAX_MAX_BYTES, MIN_MAX_BYTES};
use crate::db::Role;
use crate::terminals::TerminalsCtx;

/// Rows one list answers with at most.
const MAX_LIST: usize = 1000;
/// The content type asciinema registers for `.cast` files.
pub const CAST_TYPE: &str = "application/x-asciicast";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    runner: Option<String>,
    limit: Option<usize>,
}

/// A policy change: the fields given replace the tenant's.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    record: Option<bool>,
    record_input: Option<bool>,
    viewers_replay: Option<bool>,
    max_bytes: Option<u64>,
}

/// The caller's tenant, if it may replay there.
async fn replayer<'a>(caller: &'a Caller, state: &TerminalsCtx) -> Result<&'a str, ApiError> {
    let tenant = caller.tenant()?;
    if let Caller::User(session) = caller {
        if session.user.role == Role::Viewer
            && !state.db.recordings.policy(tenant).await?.viewers_replay
        {
            return Err(ApiError::forbidden(
                "this tenant does not let viewers replay terminal recordings \
                 (recording policy: viewers_replay)",
            ));
        }
    }
    Ok(tenant)
}

fn row_json(r: &RecordingRow) -> Value {
    let header: Value = serde_json::from_str(&r.header).unwrap_or(Value::Null);
    json!({
        "id": r.id, "runner_id": r.runner_id, "target": r.target, "who": r.who,
        "started_at": clock::rfc3339(r.started_ms),
        "ended_at": r.ended_ms.map(clock::rfc3339),
        "duration_s": r.ended_ms.map(|e| e.saturating_sub(r.started_ms) as f64 / 1000.0),
        "width": header["width"], "height": header["height"],
        "bytes": r.bytes, "truncated": r.truncated,
    })
}

async fn found(state: &TerminalsCtx, tenant: &str, id: &str) -> Result<RecordingRow, ApiError> {
    state
        .db
        .recordings
        .get(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no recording {id} in this tenant")))
}

/// `GET /api/v1/recordings`
pub async fn list(
    caller: Caller,
    State(state): State<TerminalsCtx>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = query(q)?;
    let tenant = replayer(&caller, &state).await?;
    let limit = p.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let rows = state
        .db
        .recordings
        .list(tenant, p.runner.as_deref(), limit)
        .await?;
    Ok(Json(Value::Array(rows.iter().map(row_json).collect())))
}

/// `GET /api/v1/recordings/{tid}`
pub async fn show(
    caller: Caller,
    State(state): State<TerminalsCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = replayer(&caller, &state).await?;
    Ok(Json(row_json(&found(&state, tenant, &id).await?)))
}

/// `GET /api/v1/recordings/{tid}/cast`: the header line, then the events.
pub async fn download(
    caller: Caller,
    State(state): State<TerminalsCtx>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = replayer(&caller, &state).await?;
    let row = found(&state, tenant, &id).await?;
    let events = state.db.recordings.events(&row.id).await?;
    let mut body = Vec::with_capacity(row.header.len() + 1 + events.len());
    body.extend_from_slice(row.header.as_bytes());
    body.push(b'\n');
    body.extend_from_slice(&events);
    let disposition = format!("attachment; filename=\"{}.cast\"", row.id);
    Ok((
        [
            (CONTENT_TYPE, CAST_TYPE.to_owned()),
            (CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// `GET /api/v1/recording-policy`
pub async fn policy(
    caller: Caller,
    State(state): State<TerminalsCtx>,
) -> Result<Json<RecordingPolicy>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(state.db.recordings.policy(tenant).await?))
}

/// `PUT /api/v1/recording-policy`
pub async fn set_policy(
    caller: Caller,
    State(state): State<TerminalsCtx>,
    JsonBody(change): JsonBody<PolicyChange>,
) -> Result<Json<RecordingPolicy>, ApiError> {
    let tenant = caller.tenant_admin()?;
    if let Some(m) = change.max_bytes {
        if !(MIN_MAX_BYTES..=MAX_MAX_BYTES).contains(&m) {
            return Err(ApiError::bad_request(format!(
                "max_bytes is {MIN_MAX_BYTES} to {MAX_MAX_BYTES}, not {m}"
            )));
        }
    }
    let mut p = state.db.recordings.policy(tenant).await?;
    p.record = change.record.unwrap_or(p.record);
    p.record_input = change.record_input.unwrap_or(p.record_input);
    p.viewers_replay = change.viewers_replay.unwrap_or(p.viewers_replay);
    p.max_bytes = change.max_bytes.unwrap_or(p.max_bytes);
    state.db.recordings.set_policy(tenant, &p).await?;
    Ok(Json(p))
}
