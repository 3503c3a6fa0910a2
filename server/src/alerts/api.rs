//! REST for alerts (`docs/api.md`, "Alerts"): thin handlers over
//! `rules.rs` checks, `store.rs` and the engine.
//!
//! ```text
//!  GET/POST /alerts/rules, GET/PUT/DELETE /alerts/rules/{id}
//!  POST /alerts/preview (which runners a scope covers now)
//!  GET/POST /alerts/channels, PUT/DELETE /alerts/channels/{id}      (tenant admins only)
//!  POST /alerts/channels/{id}/test, GET /alerts/channels/{id}/deliveries
//!  GET  /alerts (firing), POST /alerts/ack, GET /alerts/history
//!  GET/POST /alerts/silences, DELETE /alerts/silences/{id}
//! ```
//!
//! Roles: every caller of the tenant reads; writes need more than the
//! viewer role (the `Caller` extractor refuses viewers on non-GET);
//! channels — which make this server send requests to addresses a user
//! chooses — need the tenant admin (API token or admin role).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::notify::{seal_name, ChannelConfig, Notification};
use super::rules::{Rule, RuleSpec, Scope, Silence, SilenceSpec, MAX_RULES, MAX_TEXT};
use crate::alerts::AlertsCtx;
use crate::common::auth::{new_id, Caller};
use crate::common::clock;
use crate::common::error::ApiError;
use crate::common::http::{query, JsonBody};
use crate::db::alerts::{Ack, ChannelRow};

/// Channels per tenant.
const MAX_CHANNELS: usize = 50;
/// Silences per tenant.
const MAX_SILENCES: usize = 500;
/// Rows per history or delivery page.
const MAX_PAGE: i64 = 500;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    AlertsCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/api/v1/alerts", get(firing))
        .route("/api/v1/alerts/ack", post(ack))
        .route("/api/v1/alerts/history", get(history))
        .route("/api/v1/alerts/rules", get(list_rules).post(create_rule))
        .route("/api/v1/alerts/preview", post(preview))
        .route(
            "/api/v1/alerts/rules/{id}",
            get(get_rule).put(put_rule).delete(delete_rule),
        )
        .route(
            "/api/v1/alerts/channels",
            get(list_channels).post(create_channel),
        )
        .route(
            "/api/v1/alerts/channels/{id}",
            put(put_channel).delete(delete_channel),
        )
        .route("/api/v1/alerts/channels/{id}/test", post(test_channel))
        .route("/api/v1/alerts/channels/{id}/deliveries", get(deliveries))
        .route(
            "/api/v1/alerts/silences",
            get(list_silences).post(create_silence),
        )
        .route("/api/v1/alerts/silences/{id}", delete(delete_silence))
}

fn who(caller: &Caller) -> String {
    match caller {
        Caller::User(s) => s.user.name.clone(),
        Caller::Tenant(_) => "api token".into(),
        Caller::Admin => "admin".into(),
    }
}

// ---- rules ----------------------------------------------------------------------------

async fn list_rules(
    caller: Caller,
    State(state): State<AlertsCtx>,
) -> Result<Json<Value>, ApiError> {
    let rules = state.alerts.store.rules(caller.tenant()?).await?;
    Ok(Json(json!({ "rules": rules })))
}

async fn get_rule(
    caller: Caller,
    State(state): State<AlertsCtx>,
    Path(id): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    let rules = state.alerts.store.rules(caller.tenant()?).await?;
    rules
        .into_iter()
        .find(|r| r.id == id || r.spec.name == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no alert rule {id:?}")))
}

async fn check_rule(state: &AlertsCtx, tenant: &str, spec: &RuleSpec) -> Result<(), ApiError> {
    spec.check().map_err(ApiError::bad_request)?;
    let channels = state.alerts.store.channels(tenant).await?;
    for c in &spec.channels {
        if !channels.iter().any(|ch| ch.id == *c) {
            return Err(ApiError::bad_request(format!(
                "no alert channel {c:?} (channels are named by id)"
            )));
        }
    }
    Ok(())
}

async fn create_rule(
    caller: Caller,
    State(state): State<AlertsCtx>,
    JsonBody(spec): JsonBody<RuleSpec>,
) -> Result<(StatusCode, Json<Rule>), ApiError> {
    let tenant = caller.tenant()?;
    check_rule(&state, tenant, &spec).await?;
    let rules = state.alerts.store.rules(tenant).await?;
    if rules.len() >= MAX_RULES {
        return Err(ApiError::conflict(format!(
            "at most {MAX_RULES} alert rules per tenant"
        )));
    }
    if rules.iter().any(|r| r.spec.name == spec.name) {
        return Err(ApiError::conflict(format!(
            "an alert rule is already named {:?}",
            spec.name
        )));
    }
    let rule = Rule {
        id: new_id("ar_")?,
        tenant: tenant.to_owned(),
        spec,
    };
    state.alerts.store.put_rule(&rule, clock::now_ms()).await?;
    state.alerts.rules_changed(tenant);
    Ok((StatusCode::CREATED, Json(rule)))
}

async fn put_rule(
    caller: Caller,
    State(state): State<AlertsCtx>,
    Path(id): Path<String>,
    JsonBody(spec): JsonBody<RuleSpec>,
) -> Result<Json<Rule>, ApiError> {
    let tenant = caller.tenant()?;
    check_rule(&state, tenant, &spec).await?;
    let rules = state.alerts.store.rules(tenant).await?;
    let Some(old) = rules.iter().find(|r| r.id == id) else {
        return Err(ApiError::not_found(format!("no alert rule {id:?}")));
    };
    if rules
        .iter()
        .any(|r| r.spec.name == spec.name && r.id != old.id)
    {
        return Err(ApiError::conflict(format!(
            "an alert rule is already named {:?}",
            spec.name
        )));
    }
    let rule = Rule {
        id: old.id.clone(),
        tenant: tenant.to_owned(),
        spec,
    };
    state.alerts.store.put_rule(&rule, clock::now_ms()).await?;
    state.alerts.rules_changed(tenant);
    Ok(Json(rule))
}

async fn delete_rule(
    caller: Caller,
    State(state): State<AlertsCtx>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant()?;
    let rules = state.alerts.store.rules(tenant).await?;
    let Some(rule) = rules.iter().find(|r| r.id == id || r.spec.name == id) else {
        return Err(ApiError::not_found(format!("no alert rule {id:?}")));
    };
    state.alerts.store.delete_rule(tenant, &rule.id).await?;
    state.alerts.rules_changed(tenant);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    #[serde(default)]
    scope: Scope,
}

/// Which runners a scope covers now: the rule form's live preview. A
/// POST (the scope is JSON), so, like the form it serves, not for viewers.
async fn preview(
    caller: Caller,
    State(state): State<AlertsCtx>,
    JsonBody(b): JsonBody<PreviewBody>,
) -> Result<Json<super::Preview>, ApiError> {
    let tenant = caller.tenant()?;
    let probe = RuleSpec {
        name: "preview".into(),
        scope: b.scope,
        containers: None,
        kind: super::rules::Kind::UpdateFailed {},
        channels: Vec::new(),
        enabled: true,
    };
    probe.check().map_err(ApiError::bad_request)?;
    Ok(Json(state.alerts.preview(tenant, &probe.scope).await?))
}

// ---- channels -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelBody {
    name: String,
    config: ChannelConfig,
}

fn channel_view(c: &ChannelRow) -> Value {
    json!({
        "id": c.id, "name": c.name, "kind": c.kind,
        "target": serde_json::from_str::<Value>(&c.public).unwrap_or(Value::Null),
        "created_at": clock::rfc3339(c.created_ms),
    })
}

async fn list_channels(
    caller: Caller,
    State(state): State<AlertsCtx>,
) -> Result<Json<Value>, ApiError> {
    let rows = state.alerts.store.channels(caller.tenant()?).await?;
    Ok(Json(
        json!({ "channels": rows.iter().map(channel_view).collect::<Vec<_>>() }),
    ))
}

fn seal_channel(
    state: &AlertsCtx,
    tenant: &str,
    id: String,
    body: &ChannelBody,
    created_ms: i64,
) -> Result<ChannelRow, ApiError> {
    if body.name.trim().is_empty() || body.name.len() > MAX_TEXT {
        return Err(ApiError::bad_request(format!(
            "name must be 1 to {MAX_TEXT} bytes"
        )));
    }
    body.config.check().map_err(ApiError::bad_request)?;
    let plain = serde_json::to_vec(&body.config).map_err(ApiError::internal)?;
    let (nonce, sealed) = state
        .secrets
        .seal(tenant, &seal_name(&id), &plain)
        .map_err(ApiError::internal)?;
    Ok(ChannelRow {
        id,
        tenant: tenant.to_owned(),
        name: body.name.clone(),
        kind: body.config.kind().to_owned(),
        public: body.config.public().to_string(),
        nonce,
        sealed,
        created_ms,
    })
}

async fn create_channel(
    caller: Caller,
    State(state): State<AlertsCtx>,
    JsonBody(body): JsonBody<ChannelBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = caller.tenant_admin()?;
    if state.alerts.store.channels(tenant).await?.len() >= MAX_CHANNELS {
        return Err(ApiError::conflict(format!(
            "at most {MAX_CHANNELS} alert channels per tenant"
        )));
    }
    let row = seal_channel(&state, tenant, new_id("ac_")?, &body, clock::now_ms())?;
    if !state.alerts.store.put_channel(&row).await? {
        return Err(ApiError::conflict(format!(
            "an alert channel is already named {:?}",
            body.name
        )));
    }
    Ok((StatusCode::CREATED, Json(channel_view(&row))))
}

async fn put_channel(
    caller: Caller,
    State(state): State<AlertsCtx>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ChannelBody>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant_admin()?;
    let Some(old) = state.alerts.store.channel(tenant, &id).await? else {
        return Err(ApiError::not_found(format!("no alert channel {id:?}")));
    };
    let row = seal_channel(&state, tenant, old.id, &body, old.created_ms)?;
    if !state.alerts.store.put_channel(&row).await? {
        return Err(ApiError::conflict(format!(
            "an alert channel is already named {:?}",
            body.name
        )));
    }
    Ok(Json(channel_view(&row)))
}

async fn delete_channel(
    caller: Caller,
    State(state): State<AlertsCtx>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant_admin()?;
    let Some(ch) = state.alerts.store.channel(tenant, &id).await? else {
        return Err(ApiError::not_found(format!("no alert channel {id:?}")));
    };
    let used: Vec<String> = state
        .alerts
        .store
        .rules(tenant)
        .await?
        .into_iter()
        .filter(|r| r.spec.channels.contains(&ch.id))
        .map(|r| r.spec.name)
        .collect();
    if !used.is_empty() {
        return Err(ApiError::conflict(format!(
            "alert rules use this channel: {}",
            used.join(", ")
        )));
    }
    state.alerts.store.delete_channel(tenant, &ch.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn test_channel(
    caller: Caller,
    State(state): State<AlertsCtx>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = caller.tenant()?;
    let Some(ch) = state.alerts.store.channel(tenant, &id).await? else {
        return Err(ApiError::not_found(format!("no alert channel {id:?}")));
    };
    let n = Notification {
        version: 1,
        state: "test".into(),
        rule_id: String::new(),
        rule_name: "test message".into(),
        runner_id: String::new(),
        runner_name: String::new(),
        group: String::new(),
        subject: String::new(),
        summary: format!(
            "a test message from Tether to channel {:?}, sent by {}",
            ch.name,
            who(&caller)
        ),
        value: None,
        at: clock::rfc3339(clock::now_ms()),
        history_seq: None,
    };
    state.alerts.notifier.send(tenant, &ch.id, n);
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({ "queued": true, "deliveries": format!("/api/v1/alerts/channels/{}/deliveries", ch.id) }),
        ),
    ))
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    before: Option<i64>,
}

async fn deliveries(
    caller: Caller,
    State(state): State<AlertsCtx>,
    Path(id): Path<String>,
    p: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = query(p)?;
    let tenant = caller.tenant()?;
    let Some(ch) = state.alerts.store.channel(tenant, &id).await? else {
        return Err(ApiError::not_found(format!("no alert channel {id:?}")));
    };
    let limit = p.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let rows = state.alerts.store.deliveries(tenant, &ch.id, limit).await?;
    Ok(Json(json!({ "deliveries": rows })))
}

// ---- alerts, ack, history -------------------------------------------------------------

async fn firing(caller: Caller, State(state): State<AlertsCtx>) -> Result<Json<Value>, ApiError> {
    let rows = state.alerts.store.alerts(caller.tenant()?).await?;
    Ok(Json(json!({ "alerts": rows })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    rule_id: String,
    target: String,
    #[serde(default)]
    comment: String,
}

async fn ack(
    caller: Caller,
    State(state): State<AlertsCtx>,
    JsonBody(b): JsonBody<AckBody>,
) -> Result<Json<Ack>, ApiError> {
    let tenant = caller.tenant()?;
    if b.comment.len() > MAX_TEXT || b.rule_id.len() > MAX_TEXT || b.target.len() > 2 * MAX_TEXT {
        return Err(ApiError::bad_request(format!(
            "comment must be at most {MAX_TEXT} bytes"
        )));
    }
    let ack = Ack {
        by: who(&caller),
        at_ms: clock::now_ms(),
        comment: b.comment,
    };
    if !state
        .alerts
        .store
        .ack(tenant, &b.rule_id, &b.target, &ack)
        .await?
    {
        return Err(ApiError::not_found(
            "no firing alert with this rule_id and target",
        ));
    }
    Ok(Json(ack))
}

async fn history(
    caller: Caller,
    State(state): State<AlertsCtx>,
    p: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = query(p)?;
    let limit = p.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let rows = state
        .alerts
        .store
        .history(caller.tenant()?, p.before.unwrap_or(i64::MAX), limit)
        .await?;
    Ok(Json(json!({ "history": rows })))
}

// ---- silences -------------------------------------------------------------------------

async fn list_silences(
    caller: Caller,
    State(state): State<AlertsCtx>,
) -> Result<Json<Value>, ApiError> {
    let rows = state.alerts.store.silences(caller.tenant()?).await?;
    Ok(Json(json!({ "silences": rows })))
}

async fn create_silence(
    caller: Caller,
    State(state): State<AlertsCtx>,
    JsonBody(spec): JsonBody<SilenceSpec>,
) -> Result<(StatusCode, Json<Silence>), ApiError> {
    let tenant = caller.tenant()?;
    spec.check().map_err(ApiError::bad_request)?;
    if state.alerts.store.silences(tenant).await?.len() >= MAX_SILENCES {
        return Err(ApiError::conflict(format!(
            "at most {MAX_SILENCES} silences per tenant"
        )));
    }
    let s = Silence {
        id: new_id("as_")?,
        tenant: tenant.to_owned(),
        created_by: who(&caller),
        spec,
    };
    state.alerts.store.put_silence(&s).await?;
    state.alerts.silences_changed(tenant);
    Ok((StatusCode::CREATED, Json(s)))
}

async fn delete_silence(
    caller: Caller,
    State(state): State<AlertsCtx>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant()?;
    if !state.alerts.store.delete_silence(tenant, &id).await? {
        return Err(ApiError::not_found(format!("no silence {id:?}")));
    }
    state.alerts.silences_changed(tenant);
    Ok(StatusCode::NO_CONTENT)
}
