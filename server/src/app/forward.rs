//! A replica's two ends of forwarding (issue 18): which requests another
//! replica must answer, and the gate of the internal listener.
//!
//! ```text
//!  public listener ─▶ route: the path names a runner (a job's)? a terminal
//!     session (its own replica, by its audit row, wherever its runner is)?
//!     linked here, or linked nowhere ─▶ this replica answers (409 if no link)
//!     linked to replica R ─▶ the caller authorised HERE (401/403 stay here)
//!                         ─▶ Peers::forward to R's --internal-addr, streamed
//!  internal listener ─▶ gate: the cluster key proved? else 401, nothing more
//!                    ─▶ FromPeer (never forwarded again), Vouched (a ticket)
//!                    ─▶ the same routes (and the terminal relay, served
//!                       there only): R authorises the credential again
//!                       against the shared database, and answers
//! ```
//!
//! One seam for every feature: a request is forwarded whole (REST, SSE and
//! NDJSON streams, WebSocket upgrades), so no feature knows of replicas.
//! Jobs made or cancelled and log policies reach the holder through the
//! registry's nudge (`app/cluster.rs`), not through here.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tether::protocol::api_error as code;

use crate::cluster::internal::{Peers, AUTH_HEADER, PRINCIPAL_HEADER};
use crate::cluster::replica::Replica;
use crate::common::auth::{AuthCtx, Caller};
use crate::common::error::ApiError;
use crate::common::stream_auth::{Credential, Vouched};
use crate::db::cluster::ClusterStore;
use crate::db::Db;
use crate::link::registry::Registry;

/// What forwarding needs of the app.
pub struct ForwardCtx {
    pub peers: Arc<Peers>,
    pub replica: Arc<Replica>,
    pub store: Arc<dyn ClusterStore>,
    pub registry: Arc<Registry>,
    pub auth: AuthCtx,
    pub db: Db,
}

/// `GET /api/v1/replica/metrics` (the admin token): this replica's own
/// figures in Prometheus' text format, scraped from each replica (not
/// through the load balancer). A single server shows its links only.
pub async fn metrics(
    caller: Caller,
    State(state): State<super::AppState>,
) -> Result<Response, ApiError> {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    caller.admin()?;
    let ctx = state.forward.as_deref();
    let replica = state.health.replica_id().unwrap_or("");
    let label = format!("{{replica=\"{}\"}}", replica);
    let database = u8::from(state.db.liveness.check().await.is_ok());
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{label} {value}"
        );
    };
    put(
        "tether_replica_links",
        "gauge",
        "Runner links this replica holds.",
        state.registry.held_count().to_string(),
    );
    put(
        "tether_replica_alert_runners_owned",
        "gauge",
        "Runners whose alert states this replica's engine has taken over (a replica of several).",
        state.alerts.owned_runners().to_string(),
    );
    put(
        "tether_replica_alert_observations_dropped_total",
        "counter",
        "Runner reports the alert engine dropped (its queue full, or held too long for a take-over).",
        state.alerts.dropped().to_string(),
    );
    put(
        "tether_replica_database_up",
        "gauge",
        "Whether the database answers (the check behind /healthz).",
        database.to_string(),
    );
    if let Some(ctx) = ctx {
        let c = &ctx.peers.counters;
        put(
            "tether_replica_forwards_total",
            "counter",
            "Requests sent on to the replica holding their runner.",
            c.forwards.load(Relaxed).to_string(),
        );
        put(
            "tether_replica_forward_errors_total",
            "counter",
            "Forwarded requests the other replica did not answer.",
            c.forward_errors.load(Relaxed).to_string(),
        );
        put(
            "tether_replica_forward_connections_total",
            "counter",
            "Connections opened to other replicas (forwards on kept ones open none).",
            c.connections.load(Relaxed).to_string(),
        );
        put(
            "tether_replica_internal_refused_total",
            "counter",
            "Requests to the internal address without the cluster key's proof.",
            c.refused.load(Relaxed).to_string(),
        );
        put(
            "tether_replica_notice_lag_seconds",
            "gauge",
            "From another replica's last health change to this replica hearing it (NOTIFY).",
            format!("{:.3}", ctx.replica.notice_lag_ms() as f64 / 1000.0),
        );
        let (in_use, max) = ctx.store.pool_use();
        put(
            "tether_replica_db_pool_in_use",
            "gauge",
            "Database connections of the pool in use.",
            in_use.to_string(),
        );
        put(
            "tether_replica_db_pool_max",
            "gauge",
            "The pool's most connections.",
            max.to_string(),
        );
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// Set by the gate: the request came from another replica.
#[derive(Debug, Clone, Copy)]
pub struct FromPeer;

/// Whose link a request needs, by its path.
#[derive(Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// `/api/v1/runners/{id}/…` (anything below the runner itself).
    Runner(&'a str),
    /// `/api/v1/jobs/{id}/output`: the live output is on the replica
    /// whose link the job's runner holds.
    Job(&'a str),
    /// `/api/v1/terminals/{id}` and `…/{id}/attach`: a session lives on
    /// the replica that opened it (its runner's link then), found by its
    /// open audit row; it stays there when the link moves (relayed).
    Terminal(&'a str),
    /// Anything else: any replica answers from the shared database.
    Any,
}

pub fn scope(path: &str) -> Scope<'_> {
    if let Some(rest) = path.strip_prefix("/api/v1/runners/") {
        if let Some((id, sub)) = rest.split_once('/') {
            if !id.is_empty() && !sub.is_empty() {
                return Scope::Runner(id);
            }
        }
    } else if let Some(rest) = path.strip_prefix("/api/v1/terminals/") {
        let id = rest.strip_suffix("/attach").unwrap_or(rest);
        if !id.is_empty() && !id.contains('/') {
            return Scope::Terminal(id);
        }
    } else if let Some(rest) = path.strip_prefix("/api/v1/jobs/") {
        if let Some(id) = rest.strip_suffix("/output") {
            if !id.is_empty() && !id.contains('/') {
                return Scope::Job(id);
            }
        }
    }
    Scope::Any
}

/// The middleware of the public routes.
pub async fn route(
    State(ctx): State<Option<Arc<ForwardCtx>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(ctx) = ctx else {
        return next.run(req).await;
    };
    if req.extensions().get::<FromPeer>().is_some() {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let (runner, job, terminal) = match scope(&path) {
        Scope::Any => return next.run(req).await,
        Scope::Runner(id) => (Some(id.to_owned()), None, None),
        Scope::Job(id) => (None, Some(id.to_owned()), None),
        Scope::Terminal(id) => (None, None, Some(id.to_owned())),
    };
    if runner.as_deref().is_some_and(|r| ctx.registry.holds(r)) {
        return next.run(req).await;
    }
    // A runner's holder first (one indexed lookup); the caller is
    // authorised only for a request that leaves this replica.
    let (mut parts, body) = req.into_parts();
    let mut held = None;
    if let Some(r) = &runner {
        held = match holder(&ctx, r).await {
            Some(h) => Some(h),
            None => return next.run(Request::from_parts(parts, body)).await,
        };
    }
    if let Some(terminal) = &terminal {
        // By id alone, before a ticket is redeemed here (the session's
        // holder redeems it if it is this replica): the holder checks the
        // caller's tenant and answers 404 for another tenant's session,
        // as this replica would. The holder is the session's own replica
        // (its audit row), wherever its runner is linked now: a session
        // stays where it was opened when its runner moves
        // (`terminals/relay.rs`).
        held = match ctx.store.terminal_holder(terminal).await {
            Ok(Some((replica, addr))) if replica != ctx.peers.id() => Some((replica, addr)),
            Ok(_) => return next.run(Request::from_parts(parts, body)).await,
            Err(e) => {
                tracing::warn!(terminal, "looking up the terminal's replica: {e}");
                return next.run(Request::from_parts(parts, body)).await;
            }
        };
    }
    let (caller, principal) = match authorise(&ctx, &mut parts).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if let Some(job) = &job {
        let Some(tenant) = caller.as_ref().and_then(|c| c.tenant().ok()) else {
            return next.run(Request::from_parts(parts, body)).await;
        };
        let runner = match ctx.db.jobs.job(tenant, job).await {
            Ok(Some(row)) if !ctx.registry.holds(&row.runner_id) => row.runner_id,
            _ => return next.run(Request::from_parts(parts, body)).await,
        };
        held = match holder(&ctx, &runner).await {
            Some(h) => Some(h),
            None => return next.run(Request::from_parts(parts, body)).await,
        };
    }
    let Some((replica, addr)) = held else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let req = Request::from_parts(parts, body);
    match ctx.peers.forward(&addr, req, principal).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(replica = %replica, "forwarding {path}: {e}");
            ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                code::RUNNER_UNREACHABLE,
                format!("the runner is linked to replica {replica}, which did not answer ({e})"),
            )
            .into_response()
        }
    }
}

/// The replica holding `runner`'s link, if it is another one.
async fn holder(ctx: &ForwardCtx, runner: &str) -> Option<(String, String)> {
    match ctx.store.holder_of(runner).await {
        Ok(Some((replica, addr))) if replica != ctx.peers.id() => Some((replica, addr)),
        Ok(_) => None,
        Err(e) => {
            // Answered here: as without a cluster, "no live connection".
            tracing::warn!(runner, "looking up the runner's replica: {e}");
            None
        }
    }
}

/// Who is calling, checked here before anything leaves: a single-use
/// ticket is redeemed (and what it stood for travels as the principal);
/// otherwise the caller's token or session cookie (with its CSRF header)
/// must hold, and travels as it came for the holder to check again.
async fn authorise(
    ctx: &ForwardCtx,
    parts: &mut axum::http::request::Parts,
) -> Result<(Option<Caller>, Option<String>), ApiError> {
    let ticket = parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "ticket")
            .map(|(_, v)| v.to_owned())
    });
    if let Some(t) = ticket {
        let credential: Credential = ctx.auth.tickets.redeem(&t).ok_or_else(|| {
            ApiError::unauthorized("unknown, used or expired ticket: mint one per WebSocket")
        })?;
        return Ok((None, Some(credential.to_wire())));
    }
    let caller = Caller::from_request_parts(parts, &ctx.auth).await?;
    Ok((Some(caller), None))
}

/// The middleware of the internal listener, before everything: only a
/// replica that proves the cluster key gets further.
pub async fn gate(State(peers): State<Arc<Peers>>, mut req: Request, next: Next) -> Response {
    let now = crate::common::clock::now_ms();
    if !peers.verify(req.headers().get(AUTH_HEADER), now) {
        peers
            .counters
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return ApiError::unauthorized(
            "this is a replica's internal address: only replicas holding the cluster key are served",
        )
        .into_response();
    }
    req.extensions_mut().insert(FromPeer);
    let vouched = req
        .headers()
        .get(PRINCIPAL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Credential::from_wire);
    if let Some(c) = vouched {
        req.extensions_mut().insert(Vouched(c));
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_says_whose_link_answers() {
        assert_eq!(
            scope("/api/v1/runners/rn_1/terminal"),
            Scope::Runner("rn_1")
        );
        assert_eq!(
            scope("/api/v1/runners/rn_1/containers/c1/logs"),
            Scope::Runner("rn_1")
        );
        assert_eq!(scope("/api/v1/runners/rn_1"), Scope::Any);
        assert_eq!(scope("/api/v1/runners/rn_1/"), Scope::Any);
        assert_eq!(scope("/api/v1/runners"), Scope::Any);
        assert_eq!(scope("/api/v1/jobs/jb_1/output"), Scope::Job("jb_1"));
        assert_eq!(scope("/api/v1/jobs/jb_1"), Scope::Any);
        assert_eq!(scope("/api/v1/jobs/a/b/output"), Scope::Any);
        assert_eq!(scope("/api/v1/events"), Scope::Any);
        assert_eq!(scope("/api/v1/terminals/tm_1"), Scope::Terminal("tm_1"));
        assert_eq!(
            scope("/api/v1/terminals/tm_1/attach"),
            Scope::Terminal("tm_1")
        );
        assert_eq!(scope("/api/v1/terminals"), Scope::Any);
        assert_eq!(scope("/api/v1/terminals/"), Scope::Any);
        assert_eq!(scope("/api/v1/terminals/tm_1/x/attach"), Scope::Any);
    }
}
