//! REST: the audit trail. `GET /api/v1/audit` (JSON, filters),
//! `GET /api/v1/audit/export` (NDJSON), `GET /api/v1/audit/verify` (admin).
//!
//! A tenant's API token or a tenant admin sees its tenant's entries; the
//! admin token sees every tenant's (and entries of no tenant: the admin's
//! own actions, refused logins) and may narrow with `tenant=`. Reading the
//! trail is itself not recorded (a GET changes nothing).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::AuditCtx;
use crate::common::auth::Caller;
use crate::common::clock;
use crate::common::error::ApiError;
use crate::common::http::query;
use crate::db::trail::{AuditQuery, Entry};

/// Entries one JSON page holds at most.
pub const MAX_PAGE: usize = 1000;
/// Entries one NDJSON export holds at most (page on with `after`).
pub const MAX_EXPORT: usize = 100_000;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    tenant: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<i64>,
    limit: Option<usize>,
}

fn audit_query(caller: &Caller, f: Filters, max: usize) -> Result<AuditQuery, ApiError> {
    let tenant = match caller {
        Caller::Admin => f.tenant,
        other => {
            if f.tenant.is_some() {
                return Err(ApiError::bad_request(
                    "tenant: only the admin token chooses a tenant",
                ));
            }
            Some(other.tenant_admin()?.to_owned())
        }
    };
    let now = clock::now_ms();
    let time = |s: Option<String>| {
        s.map(|s| clock::parse_time(&s, now).map_err(ApiError::bad_request))
            .transpose()
    };
    let clipped = |s: Option<String>, what: &str| match s {
        Some(s) if s.len() > 512 => {
            Err(ApiError::bad_request(format!("{what}: at most 512 bytes")))
        }
        s => Ok(s),
    };
    Ok(AuditQuery {
        tenant,
        actor: clipped(f.actor, "actor")?,
        action: clipped(f.action, "action")?,
        target: clipped(f.target, "target")?,
        since_ms: time(f.since)?,
        until_ms: time(f.until)?,
        after_seq: f.after,
        limit: f.limit.unwrap_or(100).clamp(1, max),
    })
}

pub fn entry_json(e: &Entry) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    v["at"] = json!(clock::rfc3339(e.entry.at_ms));
    // Stored as JSON text; shown as JSON.
    v["params"] = serde_json::from_str(&e.entry.params).unwrap_or(Value::Null);
    v
}

async fn run_query(state: &AuditCtx, q: AuditQuery) -> Result<Vec<Entry>, ApiError> {
    Ok(state.audit.query(&q).await?)
}

/// `GET /api/v1/audit`: a page of entries, oldest first.
pub async fn list(
    caller: Caller,
    State(state): State<AuditCtx>,
    params: Result<Query<Filters>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = audit_query(&caller, query(params)?, MAX_PAGE)?;
    let rows = run_query(&state, q).await?;
    Ok(Json(Value::Array(rows.iter().map(entry_json).collect())))
}

/// `GET /api/v1/audit/export`: the same filters, one JSON entry per line.
pub async fn export(
    caller: Caller,
    State(state): State<AuditCtx>,
    params: Result<Query<Filters>, QueryRejection>,
) -> Result<Response, ApiError> {
    let mut f = query(params)?;
    f.limit = Some(f.limit.unwrap_or(MAX_EXPORT));
    let q = audit_query(&caller, f, MAX_EXPORT)?;
    let rows = run_query(&state, q).await?;
    let mut body = String::new();
    for e in &rows {
        body.push_str(&entry_json(e).to_string());
        body.push('\n');
    }
    Ok(([(CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// `GET /api/v1/audit/verify`: walk the whole chain (admin token).
pub async fn verify(
    caller: Caller,
    State(state): State<AuditCtx>,
) -> Result<Json<Value>, ApiError> {
    caller.admin()?;
    let found = state.audit.verify().await?;
    Ok(Json(serde_json::to_value(found).unwrap_or(Value::Null)))
}
