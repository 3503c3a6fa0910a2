//! REST handlers of `docs/api.md` (all but the runner socket and the SSE stream).
//!
//! Each handler authenticates first (the [`Caller`] extractor runs before the
//! body is read), then scopes every lookup to the caller's tenant: an object of
//! another tenant is answered exactly like one that does not exist (404).
//! Bodies go through [`JsonBody`], so malformed JSON gets the same JSON error
//! shape as everything else, and an empty body counts as `{}`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tether::protocol::{api_error, EnrollRequest, EnrollResponse, Message, Ping};

use crate::common::auth::{self, Caller};
use crate::common::clock;
use crate::common::error::ApiError;
use crate::runners::RunnersCtx;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;

use crate::common::auth::runner_in_tenant;
use crate::common::http::{query, JsonBody, SERVER_VERSION};
use crate::db::{
    ApiTokenInfo, ApiTokenRow, EnrollError, EnrollRefusal, EnrollmentTokenRow, NewRunner,
    RunnerRow, TenantRow,
};
use crate::runners::health::HealthView;

/// Default and longest lifetime of an enrollment token.
const DEFAULT_TTL_SECS: u64 = 3600;
const MAX_TTL_SECS: u64 = 366 * 24 * 3600;
const MAX_NAME_LEN: usize = 64;
const MAX_LABEL_LEN: usize = 200;
const MAX_FIELD_LEN: usize = 255;

/// Unauthenticated, for load balancers: 200 while the database answers,
/// 503 with the reason when it does not (one cached check a second at
/// most, `db::Liveness`). A replica of several names itself (`replica`)
/// and says how many runner links it holds; `ready` is what a balancer
/// should go by (a replica without its database cannot take a runner).
pub async fn healthz(State(state): State<RunnersCtx>) -> Response {
    let replica = state.health.replica_id();
    let links = state.registry.held_count();
    match state.db.liveness.check().await {
        Ok(()) => Json(serde_json::json!({
            "ok": true, "ready": true, "version": SERVER_VERSION,
            "database": "reachable", "replica": replica, "links": links,
        }))
        .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "ok": false, "ready": false, "version": SERVER_VERSION,
                "database": "unreachable", "reason": reason,
                "replica": replica, "links": links,
            })),
        )
            .into_response(),
    }
}

// ---- tenants (admin) -------------------------------------------------------------

#[derive(Deserialize)]
pub struct CreateTenant {
    name: String,
}

#[derive(Serialize)]
pub struct CreatedTenant {
    id: String,
    name: String,
    api_token: String,
}

#[derive(Serialize)]
pub struct TenantView {
    id: String,
    name: String,
    created_at: String,
}

pub async fn create_tenant(
    caller: Caller,
    State(state): State<RunnersCtx>,
    JsonBody(req): JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    caller.admin()?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "tenant name must be 1 to {MAX_NAME_LEN} printable characters"
        )));
    }
    let tenant = TenantRow {
        id: auth::new_id("tn_")?,
        name: name.to_owned(),
        created_at: clock::now_ms(),
    };
    let api_token = auth::new_secret(auth::API_PREFIX)?;
    state
        .db
        .control
        .create_tenant(
            &tenant,
            &auth::new_id("at_")?,
            &auth::hash_secret(&api_token),
        )
        .await?;
    tracing::info!(tenant = %tenant.id, name = %tenant.name, "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenant {
            id: tenant.id,
            name: tenant.name,
            api_token,
        }),
    ))
}

pub async fn list_tenants(
    caller: Caller,
    State(state): State<RunnersCtx>,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    caller.admin()?;
    let tenants = state.db.control.list_tenants().await?;
    Ok(Json(
        tenants
            .into_iter()
            .map(|t| TenantView {
                id: t.id,
                name: t.name,
                created_at: clock::rfc3339(t.created_at),
            })
            .collect(),
    ))
}

// ---- API tokens ----------------------------------------------------------------

#[derive(Deserialize)]
pub struct CreateApiToken {
    label: Option<String>,
    /// Seconds until it expires; none: until revoked.
    ttl_secs: Option<u64>,
}

#[derive(Serialize)]
pub struct CreatedApiToken {
    id: String,
    token: String,
    label: Option<String>,
    created_by: String,
    expires_at: Option<String>,
}

/// The `ApiToken` object of `docs/api.md` (never the secret).
#[derive(Serialize)]
pub struct ApiTokenView {
    id: String,
    label: Option<String>,
    created_by: String,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
    revoked_reason: Option<String>,
    state: &'static str,
}

impl ApiTokenView {
    fn new(t: ApiTokenInfo, now: i64) -> Self {
        ApiTokenView {
            state: t.state(now),
            id: t.id,
            label: t.label,
            created_by: t.created_by,
            created_at: clock::rfc3339(t.created_at),
            expires_at: t.expires_at.map(clock::rfc3339),
            last_used_at: t.last_used_at.map(clock::rfc3339),
            revoked_at: t.revoked_at.map(clock::rfc3339),
            revoked_reason: t.revoked_reason,
        }
    }
}

/// Who is minting or revoking, for people, and the user whose authority a
/// new token carries: a user's own; an API token's creator's (so a token
/// a user minted cannot mint one that outlives them).
async fn token_actor(
    state: &RunnersCtx,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<(String, Option<String>), ApiError> {
    match caller {
        Caller::User(s) => Ok((format!("user {}", s.user.name), Some(s.user.id.clone()))),
        _ => {
            let token = auth::bearer(headers).unwrap_or("");
            let hash = auth::hash_secret(token);
            let parent = state
                .db
                .control
                .api_token_auth(&hash, clock::now_ms())
                .await?
                .map_err(|why| ApiError::unauthorized(why.message()))?;
            let name = state
                .db
                .control
                .api_token_name(&hash)
                .await?
                .unwrap_or(parent.id);
            Ok((format!("token {name}"), parent.created_by_user))
        }
    }
}

pub async fn create_api_token(
    caller: Caller,
    State(state): State<RunnersCtx>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateApiToken>,
) -> Result<(StatusCode, Json<CreatedApiToken>), ApiError> {
    // An API token is a tenant admin's authority: operators may not mint one.
    let tenant = caller.tenant_admin()?;
    let label = check_label(req.label)?;
    let now = clock::now_ms();
    let expires_at = match req.ttl_secs {
        None => None,
        Some(t) if t == 0 || t > MAX_TTL_SECS => {
            return Err(ApiError::bad_request(format!(
                "ttl_secs must be between 1 and {MAX_TTL_SECS}"
            )))
        }
        // t ≤ MAX_TTL_SECS, so the product fits easily.
        Some(t) => Some(now + t as i64 * 1000),
    };
    let (created_by, created_by_user) = token_actor(&state, &caller, &headers).await?;
    let token = auth::new_secret(auth::API_PREFIX)?;
    let row = ApiTokenRow {
        id: auth::new_id("at_")?,
        tenant_id: tenant.to_owned(),
        label,
        created_at: now,
        created_by_user,
        created_by,
        expires_at,
    };
    state
        .db
        .control
        .create_api_token(&row, &auth::hash_secret(&token))
        .await?;
    tracing::info!(tenant, token = %row.id, by = %row.created_by, "API token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiToken {
            id: row.id,
            token,
            label: row.label,
            created_by: row.created_by,
            expires_at: row.expires_at.map(clock::rfc3339),
        }),
    ))
}

/// `GET /api/v1/api-tokens` (tenant admin): every token, revoked ones too.
pub async fn list_api_tokens(
    caller: Caller,
    State(state): State<RunnersCtx>,
) -> Result<Json<Vec<ApiTokenView>>, ApiError> {
    let tenant = caller.tenant_admin()?;
    let now = clock::now_ms();
    let tokens = state.db.control.list_api_tokens(tenant).await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| ApiTokenView::new(t, now))
            .collect(),
    ))
}

/// `DELETE /api/v1/api-tokens/{id}` (tenant admin): revoked at once; its
/// open streams end within a second (`common/stream_auth.rs`).
pub async fn revoke_api_token(
    caller: Caller,
    State(state): State<RunnersCtx>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ApiTokenView>, ApiError> {
    let tenant = caller.tenant_admin()?;
    let (by, _) = token_actor(&state, &caller, &headers).await?;
    let now = clock::now_ms();
    match state
        .db
        .control
        .revoke_api_token(tenant, &id, &format!("revoked by {by}"), now)
        .await?
    {
        Some(t) => {
            tracing::info!(tenant, token = %id, %by, "API token revoked");
            Ok(Json(ApiTokenView::new(t, now)))
        }
        None => Err(ApiError::not_found(format!(
            "no API token {id} in this tenant"
        ))),
    }
}

fn check_label(label: Option<String>) -> Result<Option<String>, ApiError> {
    match label {
        Some(l) if l.chars().count() > MAX_LABEL_LEN => Err(ApiError::bad_request(format!(
            "label is longer than {MAX_LABEL_LEN} characters"
        ))),
        other => Ok(other),
    }
}

// ---- enrollment tokens ---------------------------------------------------------

#[derive(Deserialize)]
pub struct CreateEnrollmentToken {
    ttl_secs: Option<u64>,
    label: Option<String>,
}

#[derive(Serialize)]
pub struct CreatedEnrollmentToken {
    id: String,
    token: String,
    label: Option<String>,
    expires_at: String,
}

#[derive(Serialize)]
pub struct EnrollmentTokenView {
    id: String,
    label: Option<String>,
    created_at: String,
    expires_at: String,
    used_at: Option<String>,
    revoked_at: Option<String>,
    state: &'static str,
}

impl EnrollmentTokenView {
    fn new(t: EnrollmentTokenRow, now: i64) -> Self {
        EnrollmentTokenView {
            state: t.state(now),
            id: t.id,
            label: t.label,
            created_at: clock::rfc3339(t.created_at),
            expires_at: clock::rfc3339(t.expires_at),
            used_at: t.used_at.map(clock::rfc3339),
            revoked_at: t.revoked_at.map(clock::rfc3339),
        }
    }
}

pub async fn create_enrollment_token(
    caller: Caller,
    State(state): State<RunnersCtx>,
    JsonBody(req): JsonBody<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<CreatedEnrollmentToken>), ApiError> {
    let tenant = caller.tenant()?;
    let ttl = req.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )));
    }
    let label = check_label(req.label)?;
    let token = auth::new_secret(auth::ENROLL_PREFIX)?;
    let now = clock::now_ms();
    // ttl ≤ MAX_TTL_SECS, so the product fits easily.
    let row = EnrollmentTokenRow {
        id: auth::new_id("et_")?,
        tenant_id: tenant.to_owned(),
        label,
        created_at: now,
        expires_at: now + ttl as i64 * 1000,
        used_at: None,
        revoked_at: None,
    };
    state
        .db
        .control
        .create_enrollment_token(&row, &auth::hash_secret(&token))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEnrollmentToken {
            id: row.id,
            token,
            label: row.label,
            expires_at: clock::rfc3339(row.expires_at),
        }),
    ))
}

pub async fn list_enrollment_tokens(
    caller: Caller,
    State(state): State<RunnersCtx>,
) -> Result<Json<Vec<EnrollmentTokenView>>, ApiError> {
    let tenant = caller.tenant()?;
    let now = clock::now_ms();
    let tokens = state.db.control.list_enrollment_tokens(tenant).await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| EnrollmentTokenView::new(t, now))
            .collect(),
    ))
}

pub async fn revoke_enrollment_token(
    caller: Caller,
    State(state): State<RunnersCtx>,
    Path(id): Path<String>,
) -> Result<Json<EnrollmentTokenView>, ApiError> {
    let tenant = caller.tenant()?;
    let now = clock::now_ms();
    match state
        .db
        .control
        .revoke_enrollment_token(tenant, &id, now)
        .await?
    {
        Some(t) => Ok(Json(EnrollmentTokenView::new(t, now))),
        None => Err(ApiError::not_found(format!(
            "no enrollment token {id} in this tenant"
        ))),
    }
}

// ---- enrollment ------------------------------------------------------------------

pub async fn enroll(
    State(state): State<RunnersCtx>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), ApiError> {
    for (field, value) in [
        ("hostname", &req.hostname),
        ("arch", &req.arch),
        ("os", &req.os),
        ("version", &req.version),
    ] {
        if value.len() > MAX_FIELD_LEN {
            return Err(ApiError::bad_request(format!(
                "{field} is longer than {MAX_FIELD_LEN} bytes"
            )));
        }
    }
    let runner_id = auth::new_id("rn_")?;
    let credential = auth::new_secret(auth::RUNNER_PREFIX)?;
    let credential_hash = auth::hash_secret(&credential);
    let runner = NewRunner {
        id: &runner_id,
        credential_hash: &credential_hash,
        name: &req.hostname,
        version: &req.version,
        arch: &req.arch,
        os: &req.os,
    };
    let refused = |code, message: &str| ApiError::new(StatusCode::UNAUTHORIZED, code, message);
    let tenant_id = match state
        .db
        .control
        .enroll(&auth::hash_secret(&req.token), &runner, clock::now_ms())
        .await
    {
        Ok(t) => t,
        Err(EnrollError::Storage(e)) => return Err(e.into()),
        Err(EnrollError::Refused(why)) => {
            return Err(match why {
                EnrollRefusal::Invalid => {
                    refused(api_error::INVALID_TOKEN, "unknown enrollment token")
                }
                EnrollRefusal::Expired => refused(
                    api_error::TOKEN_EXPIRED,
                    "this enrollment token has expired",
                ),
                EnrollRefusal::Used => refused(
                    api_error::TOKEN_USED,
                    "this enrollment token was already used",
                ),
                EnrollRefusal::Revoked => refused(
                    api_error::TOKEN_REVOKED,
                    "this enrollment token was revoked",
                ),
            })
        }
    };
    tracing::info!(
        runner = %runner_id,
        tenant = %tenant_id,
        hostname = %crate::common::edge::Clip(&req.hostname),
        "runner enrolled"
    );
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            runner_id,
            tenant_id,
            credential,
        }),
    ))
}

// ---- runners ---------------------------------------------------------------------

/// The `Runner` object of `docs/api.md`.
#[derive(Debug, Serialize)]
pub struct RunnerView {
    id: String,
    tenant_id: String,
    /// The operator's name (set at enrollment, changed with `PUT
    /// /runners/{id}/name`): what apps and the CLI resolve.
    name: String,
    /// What the runner says it is called (its hostname), shown apart and
    /// never used to find it.
    reported_name: String,
    health: &'static str,
    version: String,
    arch: String,
    os: String,
    protocol: Option<u16>,
    created_at: String,
    last_seen: Option<String>,
    connected_since: Option<String>,
    revoked_at: Option<String>,
    /// Accepted labels (`fleet/labels.rs`).
    labels: crate::fleet::selector::Labels,
}

async fn runner_view(state: &RunnersCtx, r: RunnerRow) -> RunnerView {
    let labels = state.fleet.store.labels(&r.tenant_id, &r.id).await;
    runner_view_with(state, r, labels.map(|l| l.0).unwrap_or_default())
}

fn runner_view_with(
    state: &RunnersCtx,
    r: RunnerRow,
    labels: crate::fleet::selector::Labels,
) -> RunnerView {
    // The stored last_seen lags by up to one flush interval; a live
    // connection knows better.
    let live = state.registry.live_last_seen(&r.tenant_id, &r.id);
    let last_seen = r.last_seen.max(live);
    RunnerView {
        health: r.health.as_str(),
        id: r.id,
        tenant_id: r.tenant_id,
        name: r.name,
        reported_name: r.reported_name,
        version: r.version,
        arch: r.arch,
        os: r.os,
        protocol: r.protocol,
        created_at: clock::rfc3339(r.created_at),
        last_seen: last_seen.map(clock::rfc3339),
        connected_since: r.connected_since.map(clock::rfc3339),
        revoked_at: r.revoked_at.map(clock::rfc3339),
        labels,
    }
}

/// `?selector=&health=&arch=&version=&q=&sort=&page=|offset=&limit=`
/// (`fleet/labels.rs`); the number of matches before paging is in
/// `X-Total-Count`.
pub async fn list_runners(
    caller: Caller,
    State(state): State<RunnersCtx>,
    params: Result<Query<crate::fleet::labels::RunnerFilter>, QueryRejection>,
) -> Result<(HeaderMap, Json<Vec<RunnerView>>), ApiError> {
    let tenant = caller.tenant()?;
    let (rows, total) = crate::fleet::labels::list(&state.fleet, tenant, &query(params)?).await?;
    let mut headers = HeaderMap::new();
    headers.insert("x-total-count", total.into());
    Ok((
        headers,
        Json(
            rows.into_iter()
                .map(|(r, l)| runner_view_with(&state, r, l))
                .collect(),
        ),
    ))
}

/// `GET /runners/counts`: by health, arch and version, for the same
/// filters as the list (health, sort and paging aside).
pub async fn runner_counts(
    caller: Caller,
    State(state): State<RunnersCtx>,
    params: Result<Query<crate::fleet::labels::RunnerFilter>, QueryRejection>,
) -> Result<Json<crate::fleet::labels::Counts>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(
        crate::fleet::labels::counts(&state.fleet, tenant, &query(params)?).await?,
    ))
}

pub async fn show_runner(
    caller: Caller,
    State(state): State<RunnersCtx>,
    Path(id): Path<String>,
) -> Result<Json<RunnerView>, ApiError> {
    let tenant = caller.tenant()?;
    let row = runner_in_tenant(&state.db, tenant, &id).await?;
    Ok(Json(runner_view(&state, row).await))
}

#[derive(Serialize)]
pub struct HealthEntry {
    at: String,
    health: &'static str,
    reason: String,
}

pub async fn runner_health(
    caller: Caller,
    State(state): State<RunnersCtx>,
    Path(id): Path<String>,
) -> Result<Json<Vec<HealthEntry>>, ApiError> {
    let tenant = caller.tenant()?;
    let history = state
        .db
        .control
        .health_history(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::runner_not_found(&id))?;
    Ok(Json(
        history
            .iter()
            .map(|r| {
                let v = HealthView::from(r);
                HealthEntry {
                    at: v.at,
                    health: v.health,
                    reason: v.reason,
                }
            })
            .collect(),
    ))
}

pub async fn revoke_runner(
    caller: Caller,
    State(state): State<RunnersCtx>,
    Path(id): Path<String>,
) -> Result<Json<RunnerView>, ApiError> {
    let tenant = caller.tenant()?;
    let row = state
        .registry
        .revoke(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::runner_not_found(&id))?;
    tracing::info!(runner = %id, tenant, "runner revoked");
    Ok(Json(runner_view(&state, row).await))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    name: String,
}

/// `PUT /runners/{id}/name`: the operator names a runner. A runner's own
/// `hello` never does (it reports `reported_name`), so a runner cannot take
/// another's name and with it the deploys and secrets sent by name.
pub async fn rename_runner(
    caller: Caller,
    State(state): State<RunnersCtx>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RenameRequest>,
) -> Result<Json<RunnerView>, ApiError> {
    let tenant = caller.tenant()?;
    if !crate::db::valid_runner_name(&req.name) {
        return Err(ApiError::bad_request(format!(
            "runner name: 1 to {} characters, no control characters or surrounding spaces, \
             not starting with rn_ (that is how runner ids look)",
            crate::db::MAX_RUNNER_NAME
        )));
    }
    let row = state
        .db
        .control
        .rename_runner(tenant, &id, &req.name)
        .await?
        .ok_or_else(|| ApiError::runner_not_found(&id))?;
    tracing::info!(runner = %id, tenant, name = %row.name, "runner renamed");
    Ok(Json(runner_view(&state, row).await))
}

#[derive(Debug, Serialize)]
pub struct PingResult {
    rtt_ms: u64,
    runner_version: String,
    runner_time_ms: u64,
}

pub async fn ping_runner(
    caller: Caller,
    State(state): State<RunnersCtx>,
    Path(id): Path<String>,
) -> Result<Json<PingResult>, ApiError> {
    let tenant = caller.tenant()?;
    runner_in_tenant(&state.db, tenant, &id).await?;
    let limit = state.tuning.request_timeout;
    let started = std::time::Instant::now();
    let sent_ms = u64::try_from(clock::now_ms()).unwrap_or(0);
    let reply = state
        .registry
        .request(tenant, &id, Message::Ping(Ping { sent_ms }), limit)
        .await
        .map_err(|e| ApiError::runner_request(&id, e, "the ping", limit))?;
    match reply.body {
        Message::Pong(p) => Ok(Json(PingResult {
            rtt_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            runner_version: p.version,
            runner_time_ms: p.now_ms,
        })),
        Message::Error(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            api_error::INTERNAL,
            format!(
                "runner {id} answered with an error: {}: {}",
                e.code, e.message
            ),
        )),
        other => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            api_error::INTERNAL,
            format!("runner {id} answered ping with '{}'", other.type_name()),
        )),
    }
}
