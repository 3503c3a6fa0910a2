//! The audit trail: who did what, from where, with what result.
//!
//! One place records: [`record`], a layer around the whole router
//! (`app/mod.rs`), so a route added later is recorded without anyone
//! remembering to (the route-walk test in `tests/server/audit.rs` proves
//! every mutating route appears). It records every request that can change
//! something — POST, PUT, PATCH, DELETE, and WebSocket upgrades under
//! `/api/` (a terminal is an action) — after the handler answered:
//!
//! ```text
//! request ─▶ record: slot into extensions, JSON body read (≤ 64 KiB)
//!              │ handler runs; the Caller extractor notes the actor
//!              ▼
//!            answer ─▶ append (when, tenant, actor, client, action,
//!                      target, params without secret values, status)
//! ```
//!
//! Requests nobody authenticated and that were refused (401, 403, 404) are
//! not recorded, except logins and enrollments (both rate-limited at the
//! edge): otherwise a stranger could fill the disk with refusals.
//!
//! The actor is noted by `common/auth.rs` through an `ActorSlot` the
//! layer puts into the request's extensions, so identification happens
//! once. Host-side refusals of signed actions arrive as job results and are
//! recorded by [`host_event`].

pub mod api;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, UPGRADE};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

use crate::common::auth::{Actor, ActorSlot};
use crate::common::clock;
use crate::common::edge::PeerAddr;
use crate::common::error::ErrorCode;
use crate::db::trail::{NewEntry, TrailStore};

/// A JSON body larger than this is recorded by its size only.
pub const MAX_PARAMS_BODY: usize = 64 * 1024;
/// Recorded parameters are clipped to this many bytes of JSON.
pub const MAX_PARAMS: usize = 4096;
/// Strings inside the recorded parameters are clipped to this many chars.
const MAX_PARAM_STRING: usize = 512;

/// Whether a request is recorded at all.
fn is_action(method: &Method, path: &str, websocket: bool) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) || (websocket && path.starts_with("/api/"))
}

/// Routes recorded even when nobody authenticated: the doors themselves.
fn is_door(route: &str) -> bool {
    route == "/api/v1/session" || route == tether::protocol::ENROLL_PATH
}

/// The layer (`app/mod.rs`: `from_fn_with_state(state, audit::record)`).
pub async fn record(State(state): State<AuditCtx>, mut req: Request, next: Next) -> Response {
    let websocket = req.headers().contains_key(UPGRADE);
    if !is_action(req.method(), req.uri().path(), websocket) {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let action = format!(
        "{} {}",
        req.method(),
        route.as_deref().unwrap_or("(no route)")
    );
    let target = clip(req.uri().path(), MAX_PARAM_STRING);
    let client = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip().to_string())
        .unwrap_or_default();
    let slot = ActorSlot::default();
    req.extensions_mut().insert(slot.clone());
    let (req, params) = params_of(req).await;
    let res = next.run(req).await;
    let actor = slot.take();
    let status = res.status().as_u16();
    if actor.is_none()
        && matches!(status, 401 | 403 | 404)
        && !route.as_deref().is_some_and(is_door)
    {
        return res;
    }
    let actor = actor.unwrap_or(Actor {
        kind: "none",
        ..Actor::default()
    });
    let detail = res
        .extensions()
        .get::<ErrorCode>()
        .map(|c| c.0.to_owned())
        .unwrap_or_default();
    let entry = NewEntry {
        at_ms: clock::now_ms(),
        tenant_id: actor.tenant,
        actor_kind: actor.kind.to_owned(),
        actor_id: actor.id,
        actor_label: actor.label,
        client,
        action,
        target,
        params,
        result: status,
        detail,
    };
    append(&*state.audit, entry).await;
    res
}

/// Append, logging (not failing the request) if the store cannot: the
/// action already happened.
pub async fn append(store: &dyn TrailStore, entry: NewEntry) {
    if let Err(e) = store.append(entry).await {
        tracing::error!("audit trail: cannot append: {e}");
    }
}

/// Something a host did or refused, reported over the runner link (a
/// signed action refused): recorded under the runner as actor.
pub async fn host_event(
    state: &AuditCtx,
    tenant: &str,
    runner: &str,
    action: &str,
    target: &str,
    detail: &str,
) {
    append(
        &*state.audit,
        NewEntry {
            at_ms: clock::now_ms(),
            tenant_id: Some(tenant.to_owned()),
            actor_kind: "runner".into(),
            actor_id: runner.to_owned(),
            actor_label: String::new(),
            client: String::new(),
            action: action.to_owned(),
            target: target.to_owned(),
            params: "{}".into(),
            result: 0,
            detail: clip(detail, MAX_PARAM_STRING),
        },
    )
    .await;
}

/// The request's parameters as JSON: its query and, for a JSON body of at
/// most [`MAX_PARAMS_BODY`], the body; secret values replaced by `"***"`.
/// The body is read here and handed on unchanged.
async fn params_of(req: Request) -> (Request, String) {
    let mut params = serde_json::Map::new();
    if let Some(q) = req.uri().query() {
        let query: serde_json::Map<String, Value> = q
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        params.insert("query".into(), Value::Object(query));
    }
    // Uploads are octet-streams; JSON bodies often come without a type.
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|t| t.starts_with("application/json"));
    let length = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .or_else(|| {
            // A body built in-process (tests, `oneshot`) knows its size.
            HttpBody::size_hint(req.body())
                .exact()
                .and_then(|n| usize::try_from(n).ok())
        });
    let req = match length {
        Some(n) if json && n <= MAX_PARAMS_BODY => {
            let (parts, body) = req.into_parts();
            match to_bytes(body, MAX_PARAMS_BODY).await {
                Ok(bytes) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                        params.insert("body".into(), v);
                    }
                    Request::from_parts(parts, Body::from(bytes))
                }
                // Late, broken off, too long: the handler meets the same
                // error (a late body is a 408 there, `app/edge.rs`).
                Err(e) => {
                    let failed = futures_util::stream::once(async move { Err::<Bytes, _>(e) });
                    Request::from_parts(parts, Body::from_stream(failed))
                }
            }
        }
        Some(n) if n > 0 => {
            params.insert("body_bytes".into(), Value::from(n));
            req
        }
        _ => req,
    };
    let mut v = Value::Object(params);
    redact(&mut v, false);
    let mut text = v.to_string();
    if text.len() > MAX_PARAMS {
        text = serde_json::json!({ "clipped": clip(&text, MAX_PARAMS) }).to_string();
    }
    (req, text)
}

/// Whether a key names a secret value (`password`, `value` of a secret,
/// tokens, keys, tickets). `secrets` (a list of names) is not one.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "value"
        || k.contains("password")
        || k.contains("token")
        || k == "ticket"
        || k.ends_with("key")
        || k == "secret"
        || k.ends_with("_secret")
}

fn redact(v: &mut Value, secret: bool) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                redact(v, secret || is_secret_key(k));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, secret)),
        Value::String(s) if secret => *s = "***".into(),
        Value::String(s) if s.len() > MAX_PARAM_STRING => *s = clip(s, MAX_PARAM_STRING),
        Value::Number(_) | Value::Bool(_) if secret => *v = Value::String("***".into()),
        _ => {}
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Remove entries older than `keep` now and every hour after, for as long
/// as the task runs: once-only work (`app/serve.rs`), on the one replica
/// holding the lease when several share PostgreSQL, so two replicas never
/// prune (and move the anchor) at once.
pub async fn retain(store: Arc<dyn TrailStore>, keep: Duration) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let before = clock::now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        match store.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("audit trail: retention removed {n} entries"),
            Err(e) => tracing::error!("audit trail: retention: {e}"),
        }
    }
}

/// Checkpoint the WAL every few seconds, for as long as the server runs:
/// local work of this process's SQLite file (nothing on PostgreSQL), so
/// on every process.
pub fn spawn_checkpoints(store: Arc<dyn TrailStore>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        loop {
            every.tick().await;
            if let Err(e) = store.checkpoint().await {
                tracing::error!("audit trail: checkpoint: {e}");
            }
        }
    });
}

/// How often retention looks for entries past their time.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often the audit WAL is moved into its file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct AuditCtx {
    /// The audit trail (in memory until `serve` opens `audit.db`).
    pub audit: Arc<dyn TrailStore>,
}

/// The audit trail's REST: list, NDJSON export, verify.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    AuditCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use axum::routing::get;
    axum::Router::new()
        .route("/api/v1/audit", get(api::list))
        .route("/api/v1/audit/export", get(api::export))
        .route("/api/v1/audit/verify", get(api::verify))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_reach_the_trail() {
        let mut v = serde_json::json!({
            "body": {"value": "hunter2", "password": "pw", "name": "db",
                     "secrets": ["DB_PASSWORD"], "env": {"A": "1"}, "client_secret": "cs",
                     "nested": {"api_token": "tapi_x", "sign_key": [1, 2]}},
            "query": {"ticket": "tkt_x", "runner": "rn_1"}
        });
        redact(&mut v, false);
        let text = v.to_string();
        for secret in ["hunter2", "\"pw\"", "tapi_x", "tkt_x", "\"cs\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // Names stay: what was used, not its value.
        assert!(
            text.contains("DB_PASSWORD") && text.contains("rn_1"),
            "{text}"
        );
    }

    #[test]
    fn only_actions_are_recorded() {
        assert!(is_action(&Method::POST, "/api/v1/jobs", false));
        assert!(is_action(&Method::DELETE, "/api/v1/x", false));
        assert!(!is_action(&Method::GET, "/api/v1/jobs", false));
        assert!(is_action(&Method::GET, "/api/v1/runners/x/terminal", true));
        assert!(!is_action(&Method::GET, "/v1/runner/connect", true));
    }
}
