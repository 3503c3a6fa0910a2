//! REST and WebSocket endpoints for interactive terminals (`docs/api.md`,
//! terminals), and the task that serves one attached client.
//!
//! ```text
//!  POST   /runners/{id}/terminals            open → 201 {"id", ...}        (then attach)
//!  GET    /runners/{id}/terminal?container=  open and attach in one (WebSocket)
//!  GET    /terminals/{tid}/attach?offset=N   attach / reattach (WebSocket): replay from N, then live
//!  DELETE /terminals/{tid}                   hang up
//!  GET    /terminals[?runner=]               the audit trail, newest first
//! ```
//!
//! The trail's `open` is the same on every replica: each row names the
//! replica holding its session (see `audit`).
//!
//! The client's WebSocket: binary messages are raw terminal bytes both ways
//! (keystrokes in, output out); text messages are JSON: from the client
//! `{"type":"resize","cols","rows"}` and `{"type":"close"}`; from the server
//! `{"type":"attached","session","offset"}` (offset: the output offset of
//! the next byte sent), `{"type":"runner","state":"unreachable"|"active"}`,
//! and `{"type":"end","reason"}` before the close.
//!
//! A WebSocket proves who it is with `Authorization` (CLI, scripts), a
//! single-use `?ticket=` (`common/stream_auth.rs`: for clients that cannot set a
//! header), or the dashboard's cookie; never a long-lived token in the URL,
//! where proxy logs keep it. While attached, the client's authority is
//! watched (`stream_auth::AuthGuard`): a logout, a deleted or demoted
//! user, a changed password or a revoked token ends it within a second
//! with `{"type":"end","reason"}` and close code 1008, and hangs the
//! terminal up when the client was the one who opened it.
//!
//! One client per session: a newer attach replaces the older one (which gets
//! `{"type":"detached"}`). A session without a client is kept for
//! [`DETACH_TIMEOUT`], so a client can reattach after a blip; each session
//! has a watchdog task for that and for a runner that does not come back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use tether::protocol::signed::REFUSED_CODE;
use tether::protocol::{encode_control, Envelope, Message, TermOpen, TermResize, MAX_DATA_PAYLOAD};
use tokio::time::{sleep, timeout, Instant};

use crate::common::auth::runner_in_tenant;
use crate::common::auth::{self, bearer, hash_secret, identify_token, new_id, Caller};
use crate::common::clock;
use crate::common::edge::PeerAddr;
use crate::common::error::ApiError;
use crate::common::http::JsonBody;
use crate::common::http::{signed_param, valid_container_ref};
use crate::common::quotas;
use crate::common::stream_auth::{AuthGuard, Credential, Principal, Vouched};
use crate::db::recordings::RecordingRow;
use crate::db::{Db, Role, SessionRow, TerminalAuditRow};
use crate::link::registry::RequestError;
use crate::terminals::recorder::{Encoder, Recorder};
use crate::terminals::TerminalsCtx;
use crate::terminals::{
    ack_frame, close_message, Full, Phase, Session, ToRunner, DETACH_TIMEOUT, RUNNER_AWAY_TIMEOUT,
};

/// Hang up after this long without a keystroke or output, unless asked.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 3600;
/// A runner back on a new connection confirms its terminals (`term_alive`)
/// within this long, or they are gone (it restarted).
const ALIVE_WAIT: Duration = Duration::from_secs(10);
/// How often a session whose runner is away looks whether it linked to
/// another replica (one indexed read; only sessions of runners away).
const LOOK_ELSEWHERE_EVERY: Duration = Duration::from_secs(2);
/// A hang-up the runner has not confirmed with END after this long ends here.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// A send to a terminal client taking longer drops the client (it reattaches).
const CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Keystrokes and control for the runner wait this long for its queue.
const RUNNER_SEND_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_COMMAND: usize = 4096;
const MAX_AUDIT: usize = 1000;

/// Client generations, so a replaced client knows it.
static CLIENTS: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OpenParams {
    container: Option<String>,
    #[serde(default)]
    command: Option<String>,
    user: Option<String>,
    cols: Option<u16>,
    rows: Option<u16>,
    /// Seconds; 0 switches it off.
    idle_timeout: Option<u64>,
    /// A single-use ticket from `POST /api/v1/ws-tickets`.
    ticket: Option<String>,
    /// An operator's signature (`terminal --sign-key`), flat so that a
    /// WebSocket's query string can carry it too.
    action_id: Option<String>,
    not_after_ms: Option<u64>,
    signature: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AttachParams {
    offset: Option<u64>,
    /// A single-use ticket from `POST /api/v1/ws-tickets`.
    ticket: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    runner: Option<String>,
    limit: Option<usize>,
}

/// The caller of a terminal WebSocket and a printable name for the audit
/// trail: a token from the header, a ticket that stands for a token or a
/// session, else the dashboard's session cookie, which
/// [`auth::websocket_session`] accepts only from this server's own page.
/// A viewer is refused either way (a shell is an action).
async fn who(
    state: &TerminalsCtx,
    headers: &HeaderMap,
    ticket: Option<&str>,
    vouched: Option<Extension<Vouched>>,
) -> Result<Who, ApiError> {
    // A ticket redeemed by the replica the client reached, which sent the
    // request on here (`cluster/internal.rs`): what it stood for.
    let credential = if let Some(Extension(Vouched(c))) = vouched {
        c
    } else if let Some(t) = ticket {
        state.tickets.redeem(t).ok_or_else(|| {
            ApiError::unauthorized("unknown, used or expired ticket: mint one per WebSocket")
        })?
    } else if let Some(token) = bearer(headers) {
        identify_token(&state.auth, token).await?.tenant()?;
        Credential::of(headers).unwrap_or(Credential::Admin)
    } else {
        let public_url = state.public_url.as_deref();
        auth::websocket_session(&state.auth, headers, public_url).await?;
        Credential::of(headers).unwrap_or(Credential::Admin)
    };
    match &credential {
        Credential::ApiToken(hash) => {
            let token = state
                .db
                .control
                .api_token_auth(hash, clock::now_ms())
                .await?
                .map_err(|why| ApiError::unauthorized(why.message()))?;
            Ok(Who {
                tenant: token.tenant_id,
                name: token_name_by_hash(state, hash).await?,
                any_session: true,
                credential,
            })
        }
        Credential::Session(hash) => {
            let session = state
                .db
                .users
                .session(hash, clock::now_ms())
                .await?
                .ok_or_else(|| {
                    ApiError::unauthorized("session expired or unknown; log in again")
                })?;
            if session.user.role == Role::Viewer {
                return Err(ApiError::forbidden(
                    "the viewer role can only look: opening a terminal is an action",
                ));
            }
            Ok(Who {
                tenant: session.user.tenant_id.clone(),
                name: user_name(&session),
                any_session: session.user.role == Role::Admin,
                credential,
            })
        }
        Credential::Admin => Err(ApiError::forbidden(
            "the admin token manages tenants only; use a tenant's API token",
        )),
    }
}

/// A terminal client: its tenant, its name in the audit trail, and whether
/// it may take over or end a session someone else opened.
struct Who {
    tenant: String,
    name: String,
    /// API tokens (a tenant admin's automation) and admin users may; an
    /// operator's dashboard session reaches only the shells it opened —
    /// another operator's open shell is theirs, not a shared resource.
    any_session: bool,
    /// What proved it, watched while the client is attached.
    credential: Credential,
}

impl Who {
    fn may_use(&self, s: &Session) -> Result<(), ApiError> {
        if self.any_session || s.who == self.name {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "terminal {} was opened by {}; only they or an admin can attach to it or end it",
            s.id, s.who
        )))
    }

    /// The watch on this client's authority over `s`: an operator for its
    /// own shell, an admin for someone else's.
    fn guard(&self, state: &TerminalsCtx, s: &Session) -> ClientAuth {
        let opener = s.who == self.name;
        let need = if opener { Role::Operator } else { Role::Admin };
        let principal = Principal {
            credential: self.credential.clone(),
            need,
        };
        ClientAuth {
            guard: AuthGuard::spawn(&state.db, principal),
            opener,
        }
    }
}

/// A client's watched authority, and whether it opened the shell (which
/// then ends with that authority).
struct ClientAuth {
    guard: AuthGuard,
    opener: bool,
}

async fn token_name(state: &TerminalsCtx, token: &str) -> Result<String, ApiError> {
    token_name_by_hash(state, &hash_secret(token)).await
}

async fn token_name_by_hash(state: &TerminalsCtx, hash: &str) -> Result<String, ApiError> {
    Ok(state
        .db
        .control
        .api_token_name(hash)
        .await?
        .unwrap_or_else(|| "api token".into()))
}

/// A dashboard user in the audit trail, told apart from a token's name.
fn user_name(session: &SessionRow) -> String {
    format!("{} (dashboard)", session.user.name)
}

/// The runner's refusal, with its reason kept.
fn refused(code: &str, message: String) -> ApiError {
    let (status, code) = match code {
        "host_terminal_disabled" => (StatusCode::FORBIDDEN, "host_terminal_disabled"),
        "container_terminal_disabled" => (StatusCode::FORBIDDEN, "container_terminal_disabled"),
        "no_such_container" => (StatusCode::NOT_FOUND, "no_such_container"),
        "docker_unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "docker_unavailable"),
        "too_many_channels" => (StatusCode::CONFLICT, "too_many_terminals"),
        // The host requires a signature: its reason, as it said it.
        REFUSED_CODE => (StatusCode::FORBIDDEN, REFUSED_CODE),
        "docker_error" => (StatusCode::BAD_GATEWAY, "docker"),
        _ => (StatusCode::BAD_GATEWAY, "runner_error"),
    };
    ApiError::new(status, code, message)
}

/// The `term_open` of a terminal in `container` (or on the host) running
/// `command` (or the shell) as `user`: the fields a signature covers, the
/// rest zero. The CLI builds the same to sign it (`cli/terminal.rs`).
pub(crate) fn term_open(
    container: Option<&str>,
    command: Option<&str>,
    user: Option<&str>,
) -> TermOpen {
    let command: Vec<String> = match command {
        Some(c) if !c.trim().is_empty() => vec!["sh".into(), "-c".into(), c.to_owned()],
        _ => Vec::new(),
    };
    TermOpen {
        channel: 0,
        container: container.map(str::to_owned),
        // On the host, `command` runs through the user's own shell.
        command: if container.is_some() {
            command
        } else {
            command.into_iter().skip(2).collect()
        },
        user: user.map(str::to_owned),
        cols: 0,
        rows: 0,
        idle_timeout_s: 0,
        detach_timeout_s: 0,
        window: 0,
        signed: None,
    }
}

/// Open a terminal on a runner: `term_open`, its answer, the audit row and
/// the session's watchdog.
async fn open(
    state: &TerminalsCtx,
    tenant: &str,
    who: String,
    client: String,
    runner: &str,
    p: &OpenParams,
) -> Result<Arc<Session>, ApiError> {
    let row = runner_in_tenant(&state.db, tenant, runner).await?;
    if let Some(c) = &p.container {
        if !valid_container_ref(c) {
            return Err(ApiError::bad_request(format!("bad container name {c:?}")));
        }
    }
    if p.command.as_ref().is_some_and(|c| c.len() > MAX_COMMAND) {
        return Err(ApiError::bad_request("command is too long"));
    }
    let signed = signed_param(p.action_id.clone(), p.not_after_ms, p.signature.clone())?;
    let target = match &p.container {
        Some(c) => format!("container:{c}"),
        None => "host".to_owned(),
    };
    let id = new_id("tm_").map_err(ApiError::internal)?;
    let now_ms = clock::now_ms();
    let policy = state.db.recordings.policy(tenant).await?;
    let per_tenant = state.quotas.terminals_per_tenant;
    let session = state
        .terminals
        .create(id, tenant, &row.id, target, who, now_ms, per_tenant)
        .map_err(|full| match full {
            Full::Server => ApiError::new(
                StatusCode::CONFLICT,
                "too_many_terminals",
                "too many terminals are open on this server",
            ),
            Full::Tenant => quotas::exceeded(
                "open terminals",
                per_tenant as u64,
                "--max-terminals-per-tenant",
            ),
        })?;
    let (cols, rows) = (
        p.cols.unwrap_or(80).clamp(1, 1000),
        p.rows.unwrap_or(24).clamp(1, 1000),
    );
    // Recording starts before the runner is asked: its first output (the
    // prompt) may come right behind its answer.
    let mut recording = policy.record.then(|| {
        let (rec, encoder, header) = Recorder::new(&policy, cols, rows, now_ms);
        session.lock().rec = Some(rec);
        (encoder, header)
    });
    let open = TermOpen {
        channel: session.channel,
        cols,
        rows,
        idle_timeout_s: p.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT_S),
        signed,
        ..term_open(
            p.container.as_deref(),
            p.command.as_deref(),
            p.user.as_deref(),
        )
    };
    let limit = state.tuning.docker_timeout;
    let answer = state
        .registry
        .request(tenant, &row.id, Message::TermOpen(open), limit)
        .await;
    let fail = |e: ApiError| {
        state.terminals.remove(&session.id);
        e
    };
    match answer {
        Ok(Envelope {
            body: Message::TermOpened(opened),
            ..
        }) => {
            tracing::info!(runner = %row.id, session = %session.id, target = %session.target, who = %session.who, pid = ?opened.pid, "terminal opened");
        }
        Ok(Envelope {
            body: Message::Error(e),
            ..
        }) => return Err(fail(refused(&e.code, e.message))),
        Ok(other) => {
            return Err(fail(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "runner_error",
                format!("unexpected answer '{}'", other.body.type_name()),
            )))
        }
        Err(e) => {
            // It may open late: make sure it is hung up then.
            let close = ToRunner::Text(close_message(session.channel));
            let _ = to_runner(state, tenant, &row.id, close, RUNNER_SEND_TIMEOUT).await;
            return Err(fail(ApiError::runner_request(
                &row.id,
                e,
                "the terminal open",
                limit,
            )));
        }
    }
    session.lock().phase = Phase::Live;
    let audit = TerminalAuditRow {
        id: session.id.clone(),
        runner_id: row.id.clone(),
        target: session.target.clone(),
        who: session.who.clone(),
        client,
        opened_ms: now_ms,
        closed_ms: None,
        reason: None,
        bytes_in: 0,
        bytes_out: 0,
        replica_id: state.replica_id.as_deref().map(str::to_owned),
    };
    if let Err(e) = state.db.audit.terminal_opened(tenant, &audit).await {
        tracing::error!(session = %session.id, "recording a terminal in the audit trail: {e}");
    }
    if let Some((_, header)) = &recording {
        let rec_row = RecordingRow {
            id: session.id.clone(),
            tenant_id: tenant.to_owned(),
            runner_id: row.id.clone(),
            target: session.target.clone(),
            who: session.who.clone(),
            started_ms: now_ms,
            ended_ms: None,
            header: header.clone(),
            bytes: 0,
            truncated: false,
        };
        if let Err(e) = state.db.recordings.start(&rec_row).await {
            // The session goes on, unrecorded: a shell is not refused
            // for a full disk, and the log says why there is no recording.
            tracing::error!(session = %session.id, "starting the terminal's recording: {e}");
            session.lock().rec = None;
            recording = None;
        }
    }
    let encoder = recording.map(|(encoder, _)| encoder);
    tokio::spawn(watchdog(state.clone(), session.clone(), encoder));
    Ok(session)
}

fn session_json(s: &Session) -> Value {
    let st = s.lock();
    json!({
        "id": s.id,
        "runner_id": s.runner_id,
        "target": s.target,
        "who": s.who,
        "opened_at": clock::rfc3339(s.opened_ms),
        "attached": st.client.is_some(),
        "runner_connected": st.runner_here,
        "output_offset": st.end,
        "state": match &st.phase {
            Phase::Opening => "opening",
            Phase::Live => "open",
            Phase::Ended(_) => "ended",
        },
    })
}

fn peer_name(peer: Option<Extension<PeerAddr>>) -> String {
    peer.map_or_else(|| "-".to_owned(), |Extension(PeerAddr(a))| a.to_string())
}

/// `POST /api/v1/runners/{id}/terminals`: a token, or the session cookie
/// with its CSRF header and a role above viewer (the [`Caller`] checks).
pub async fn create(
    caller: Caller,
    State(state): State<TerminalsCtx>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    Path(runner): Path<String>,
    JsonBody(p): JsonBody<OpenParams>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = caller.tenant()?.to_owned();
    let who = match (&caller, bearer(&headers)) {
        (Caller::User(session), _) => user_name(session),
        (_, Some(token)) => token_name(&state, token).await?,
        (_, None) => "api token".into(),
    };
    let s = open(&state, &tenant, who, peer_name(peer), &runner, &p).await?;
    Ok((StatusCode::CREATED, Json(session_json(&s))))
}

/// `GET /api/v1/runners/{id}/terminal` (WebSocket): open and attach.
pub async fn open_ws(
    State(state): State<TerminalsCtx>,
    peer: Option<Extension<PeerAddr>>,
    vouched: Option<Extension<Vouched>>,
    headers: HeaderMap,
    Path(runner): Path<String>,
    Query(p): Query<OpenParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let result = async {
        let who = who(&state, &headers, p.ticket.as_deref(), vouched).await?;
        let upgrade = upgrade.map_err(|r| {
            ApiError::bad_request(format!("expected a WebSocket upgrade: {}", r.body_text()))
        })?;
        let s = open(
            &state,
            &who.tenant,
            who.name.clone(),
            peer_name(peer),
            &runner,
            &p,
        )
        .await?;
        let guard = who.guard(&state, &s);
        Ok::<_, ApiError>((s, guard, upgrade))
    }
    .await;
    match result {
        Ok((s, guard, upgrade)) => upgrade
            .max_message_size(1024 * 1024)
            .on_upgrade(move |ws| serve_client(state, s, ws, 0, guard)),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/v1/terminals/{tid}/attach` (WebSocket).
pub async fn attach_ws(
    State(state): State<TerminalsCtx>,
    vouched: Option<Extension<Vouched>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Query<AttachParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let result = async {
        let who = who(&state, &headers, p.ticket.as_deref(), vouched).await?;
        let s = state
            .terminals
            .get(&who.tenant, &id)
            .ok_or_else(|| ApiError::not_found(format!("no open terminal {id} in this tenant")))?;
        who.may_use(&s)?;
        let upgrade = upgrade.map_err(|r| {
            ApiError::bad_request(format!("expected a WebSocket upgrade: {}", r.body_text()))
        })?;
        let guard = who.guard(&state, &s);
        Ok::<_, ApiError>((s, guard, upgrade))
    }
    .await;
    match result {
        Ok((s, guard, upgrade)) => {
            let from = p.offset.unwrap_or(0);
            upgrade
                .max_message_size(1024 * 1024)
                .on_upgrade(move |ws| serve_client(state, s, ws, from, guard))
        }
        Err(e) => e.into_response(),
    }
}

/// `DELETE /api/v1/terminals/{tid}`
pub async fn close(
    caller: Caller,
    State(state): State<TerminalsCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let s = state
        .terminals
        .get(tenant, &id)
        .ok_or_else(|| ApiError::not_found(format!("no open terminal {id} in this tenant")))?;
    if let Caller::User(session) = &caller {
        let who = Who {
            tenant: tenant.to_owned(),
            name: user_name(session),
            any_session: session.user.role == Role::Admin,
            // Not watched: this request ends here.
            credential: Credential::Admin,
        };
        who.may_use(&s)?;
    }
    request_close(&state, &s, "closed by API").await;
    Ok(Json(session_json(&s)))
}

/// `GET /api/v1/terminals`
pub async fn audit(
    caller: Caller,
    State(state): State<TerminalsCtx>,
    Query(p): Query<AuditParams>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant()?;
    let limit = p.limit.unwrap_or(100).min(MAX_AUDIT);
    let rows = state
        .db
        .audit
        .terminal_audit(tenant, p.runner.as_deref(), limit)
        .await?;
    let list: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            // A session held here: this memory says. One held by another
            // replica: its row, closed when it ends there, or when that
            // replica stops, starts again or is reaped as dead
            // (`db/postgres/cluster.rs`). Recorded rather than asked of the
            // holder: one query answers for every replica, and a dead
            // holder cannot be asked.
            let here =
                r.replica_id.is_none() || r.replica_id.as_deref() == state.replica_id.as_deref();
            let open = match here {
                true => state.terminals.get(tenant, &r.id).is_some(),
                false => r.closed_ms.is_none(),
            };
            let secs = r
                .closed_ms
                .unwrap_or_else(clock::now_ms)
                .saturating_sub(r.opened_ms)
                / 1000;
            json!({
                "id": r.id, "runner_id": r.runner_id, "target": r.target, "who": r.who,
                "client": r.client, "opened_at": clock::rfc3339(r.opened_ms),
                "closed_at": r.closed_ms.map(clock::rfc3339), "duration_s": secs,
                "reason": r.reason, "open": open, "bytes_in": r.bytes_in, "bytes_out": r.bytes_out,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// Close the audit row of a session that ended.
pub async fn record_end(db: &crate::db::Db, s: &Session) {
    let (reason, bytes_in, bytes_out) = {
        let st = s.lock();
        let reason = match &st.phase {
            Phase::Ended(r) => r.clone(),
            _ => "ended".into(),
        };
        (reason, st.bytes_in, st.bytes_out)
    };
    tracing::info!(runner = %s.runner_id, session = %s.id, %reason, "terminal ended");
    if let Err(e) = db
        .audit
        .terminal_closed(&s.id, clock::now_ms(), &reason, bytes_in, bytes_out)
        .await
    {
        tracing::error!(session = %s.id, "recording the end of a terminal: {e}");
    }
}

/// End a session here (the runner cannot be told, or did not answer).
async fn end_here(state: &TerminalsCtx, s: &Session, reason: &str) {
    {
        let mut st = s.lock();
        if matches!(st.phase, Phase::Ended(_)) {
            return;
        }
        st.phase = Phase::Ended(reason.to_owned());
    }
    state.terminals.remove(&s.id);
    s.notify.notify_one();
    record_end(&state.db, s).await;
}

/// Hang the terminal up: `term_close` to the runner, whose END ends it; a
/// runner that is away gets it when it is back (or the session ends when
/// it does not come back).
async fn request_close(state: &TerminalsCtx, s: &Session, why: &str) {
    let here = {
        let mut st = s.lock();
        if st.closing || matches!(st.phase, Phase::Ended(_)) {
            return;
        }
        st.closing = true;
        st.runner_here
    };
    tracing::debug!(session = %s.id, "hanging up: {why}");
    if !here {
        return;
    }
    let msg = ToRunner::Text(close_message(s.channel));
    if let Err(e) = to_runner(state, &s.tenant_id, &s.runner_id, msg, RUNNER_SEND_TIMEOUT).await {
        tracing::debug!(session = %s.id, "cannot send term_close: {e:?}");
    }
}

/// One per session: detach timeout, a runner that stays away, a hang-up
/// the runner never confirms.
async fn watchdog(state: TerminalsCtx, s: Arc<Session>, mut encoder: Option<Encoder>) {
    let mut closing_since: Option<Instant> = None;
    let mut next_look = Instant::now();
    loop {
        sleep(Duration::from_secs(1)).await;
        let ended = matches!(s.lock().phase, Phase::Ended(_));
        // The recording's batch: written here, in order, never by the relay.
        if let Some(enc) = encoder.as_mut() {
            write_recording(&state.db, &s, enc, ended).await;
        }
        if ended {
            return;
        }
        let now = Instant::now();
        let (detached, away, closing, back) = {
            let st = s.lock();
            if matches!(st.phase, Phase::Ended(_)) {
                continue;
            }
            (
                st.client
                    .is_none()
                    .then_some(st.detached_since)
                    .flatten()
                    .map(|t| now.saturating_duration_since(t)),
                st.runner_away_since
                    .map(|t| now.saturating_duration_since(t)),
                st.closing,
                st.runner_back_at.map(|t| now.saturating_duration_since(t)),
            )
        };
        if away.is_some_and(|d| d > RUNNER_AWAY_TIMEOUT) {
            end_here(&state, &s, "runner unreachable").await;
            return;
        }
        if away.is_some() && back.is_none() && now >= next_look {
            next_look = now + LOOK_ELSEWHERE_EVERY;
            linked_elsewhere(&state, &s).await;
        }
        if back.is_some_and(|d| d > ALIVE_WAIT) {
            end_here(&state, &s, "the runner no longer has this terminal").await;
            return;
        }
        if closing {
            let since = *closing_since.get_or_insert(now);
            if away.is_none() && now.saturating_duration_since(since) > CLOSE_WAIT {
                end_here(&state, &s, "closed (the runner did not confirm)").await;
                return;
            }
        } else if detached.is_some_and(|d| d > DETACH_TIMEOUT) {
            request_close(&state, &s, "no client attached").await;
        }
    }
}

/// On a replica of several: a runner away from here that is linked to
/// another replica is back, for this session, as if it had come back here
/// (`runner_back_at`): the replica holding it relays the session if the
/// runner still has it (its `term_alive`), and if none comes within
/// [`ALIVE_WAIT`] the session ends. A runner process that restarted says
/// nothing of terminals it never had, so without this the session would
/// wait out [`RUNNER_AWAY_TIMEOUT`].
async fn linked_elsewhere(state: &TerminalsCtx, s: &Session) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    match cluster.store.holder_of(&s.runner_id).await {
        Ok(Some((replica, _))) if *replica != *cluster.id => {
            let mut st = s.lock();
            if st.runner_away_since.is_some() && st.runner_back_at.is_none() {
                tracing::debug!(session = %s.id, replica, "the runner is linked to another replica: waiting for its relay");
                st.runner_back_at = Some(Instant::now());
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(session = %s.id, "looking up the runner's replica: {e}"),
    }
}

/// Write the events the session's recording captured: taken under the
/// lock (a move), encoded and written outside it. `last`: the session
/// ended, so whatever is left, and the recording's end.
async fn write_recording(db: &Db, s: &Session, enc: &mut Encoder, last: bool) {
    let batch = match s.lock().rec.as_mut() {
        Some(r) => r.take(),
        None => return,
    };
    if let Some(c) = enc.encode(batch, last) {
        let written = db
            .recordings
            .append(&s.id, c.seq, &c.data, c.bytes, c.truncated)
            .await;
        if let Err(e) = written {
            tracing::error!(session = %s.id, "writing the terminal's recording: {e}");
        }
    }
    if last {
        if let Err(e) = db.recordings.finish(&s.id, clock::now_ms()).await {
            tracing::error!(session = %s.id, "ending the terminal's recording: {e}");
        }
    }
}

async fn send_ws(ws: &mut WebSocket, m: WsMessage) -> bool {
    matches!(timeout(CLIENT_SEND_TIMEOUT, ws.send(m)).await, Ok(Ok(())))
}

fn text(v: Value) -> WsMessage {
    WsMessage::Text(v.to_string().into())
}

/// Serve one attached client until it leaves, is replaced, the session
/// ends, or its authority does (`guard`).
async fn serve_client(
    state: TerminalsCtx,
    s: Arc<Session>,
    mut ws: WebSocket,
    from: u64,
    mut auth: ClientAuth,
) {
    let gen = CLIENTS.fetch_add(1, Ordering::Relaxed);
    let start = {
        let mut st = s.lock();
        st.client = Some(gen);
        st.detached_since = None;
        let start = from.clamp(st.ring_start(), st.end);
        st.delivered = start;
        start
    };
    // A replaced client wakes up and sees it.
    s.notify.notify_one();
    let hello = json!({"type": "attached", "session": s.id, "offset": start, "target": s.target});
    let mut ok = send_ws(&mut ws, text(hello)).await;
    let mut pending_in: Vec<u8> = Vec::new();
    let mut runner_shown = true;
    let mut end_reason: Option<String> = None;
    let mut revoked: Option<String> = None;
    while ok {
        // Output first, then keystrokes held back for lack of room.
        loop {
            let (from, bytes, runner_here, replaced) = {
                let st = s.lock();
                let (f, b) = st.output_from(st.delivered, MAX_DATA_PAYLOAD);
                if let Phase::Ended(r) = &st.phase {
                    if b.is_empty() {
                        end_reason = Some(r.clone());
                    }
                }
                (f, b, st.runner_here, st.client != Some(gen))
            };
            if replaced {
                let _ = send_ws(&mut ws, text(json!({"type": "detached"}))).await;
                ok = false;
                end_reason = None;
                break;
            }
            if runner_here != runner_shown {
                runner_shown = runner_here;
                let state = if runner_here { "active" } else { "unreachable" };
                ok = send_ws(&mut ws, text(json!({"type": "runner", "state": state}))).await;
            }
            if bytes.is_empty() || !ok {
                break;
            }
            let n = bytes.len() as u64;
            ok = send_ws(&mut ws, WsMessage::Binary(bytes.into())).await;
            let ack = {
                let mut st = s.lock();
                if st.client == Some(gen) {
                    st.delivered = from + n;
                }
                st.ack_due()
            };
            if let Some(seq) = ack {
                send_ack(&state, &s, seq).await;
            }
        }
        if !ok || end_reason.is_some() {
            break;
        }
        if !pending_in.is_empty() {
            send_input(&state, &s, &mut pending_in).await;
        }
        let reading = pending_in.is_empty();
        tokio::select! {
            reason = auth.guard.ended() => {
                revoked = Some(reason);
                break;
            }
            () = s.notify.notified() => {}
            () = sleep(Duration::from_secs(1)) => {}
            msg = ws.recv(), if reading => match msg {
                Some(Ok(WsMessage::Binary(b))) => {
                    pending_in.extend_from_slice(&b);
                    send_input(&state, &s, &mut pending_in).await;
                }
                Some(Ok(WsMessage::Text(t))) => on_client_text(&state, &s, t.as_str()).await,
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => ok = false,
            },
        }
    }
    if let Some(reason) = revoked {
        tracing::info!(session = %s.id, %reason, "terminal client's authority ended");
        {
            let mut st = s.lock();
            if st.client == Some(gen) {
                st.client = None;
                st.detached_since = Some(Instant::now());
            }
        }
        // The shell was opened with this authority: it goes with it.
        // (Someone else's shell an admin was looking at stays theirs.)
        if auth.opener {
            request_close(&state, &s, "the opener's authority ended").await;
        }
        let reason = format!("authorization ended: {reason}");
        let _ = send_ws(&mut ws, text(json!({"type": "end", "reason": reason}))).await;
        let close = CloseFrame {
            code: 1008,
            reason: "authorization ended".into(),
        };
        let _ = send_ws(&mut ws, WsMessage::Close(Some(close))).await;
        return;
    }
    if let Some(reason) = end_reason {
        let _ = send_ws(&mut ws, text(json!({"type": "end", "reason": reason}))).await;
        let close = CloseFrame {
            code: 1000,
            reason: "terminal ended".into(),
        };
        let _ = send_ws(&mut ws, WsMessage::Close(Some(close))).await;
        return;
    }
    // Gone without ending the session: detach; the runner may go on.
    let ack = {
        let mut st = s.lock();
        if st.client != Some(gen) {
            return;
        }
        st.client = None;
        st.detached_since = Some(Instant::now());
        st.ack_due()
    };
    tracing::debug!(session = %s.id, "terminal client detached");
    if let Some(seq) = ack {
        send_ack(&state, &s, seq).await;
    }
}

/// A message for the session's runner: through the relay of the replica
/// now holding its link, if another one does (`relay.rs`), else on the
/// link here.
async fn to_runner(
    state: &TerminalsCtx,
    tenant: &str,
    runner: &str,
    msg: ToRunner,
    limit: Duration,
) -> Result<(), RequestError> {
    match state.terminals.relay_of(runner) {
        Some(relay) => match timeout(limit, relay.send(msg)).await {
            Err(_) => Err(RequestError::Timeout),
            Ok(Err(_)) => Err(RequestError::ConnectionLost),
            Ok(Ok(())) => Ok(()),
        },
        None => {
            state
                .registry
                .send_terminal(tenant, runner, msg, limit)
                .await
        }
    }
}

/// Tell the runner the client has the output up to `seq` (best effort: a
/// lost ACK is repeated by the next one, which covers it).
async fn send_ack(state: &TerminalsCtx, s: &Session, seq: u64) {
    let _ = to_runner(
        state,
        &s.tenant_id,
        &s.runner_id,
        ToRunner::Binary(ack_frame(s.channel, seq)),
        RUNNER_SEND_TIMEOUT,
    )
    .await;
}

/// Move keystrokes into the session's window and send them.
async fn send_input(state: &TerminalsCtx, s: &Session, pending: &mut Vec<u8>) {
    let frames = {
        let mut st = s.lock();
        if st.closing {
            pending.clear();
            return;
        }
        let n = pending.len().min(st.input_room());
        let frames = st.push_input(s.channel, &pending[..n]);
        pending.drain(..n);
        frames
    };
    for f in frames {
        // Not connected: kept in the window, sent again on `term_alive`.
        let _ = to_runner(
            state,
            &s.tenant_id,
            &s.runner_id,
            ToRunner::Binary(f),
            RUNNER_SEND_TIMEOUT,
        )
        .await;
    }
}

#[derive(Deserialize)]
struct ClientText {
    #[serde(rename = "type")]
    kind: String,
    cols: Option<u16>,
    rows: Option<u16>,
}

async fn on_client_text(state: &TerminalsCtx, s: &Session, t: &str) {
    let Ok(m) = serde_json::from_str::<ClientText>(t) else {
        tracing::debug!(session = %s.id, "ignoring a malformed client message");
        return;
    };
    match (m.kind.as_str(), m.cols, m.rows) {
        ("resize", Some(cols), Some(rows)) => {
            let (cols, rows) = (cols.clamp(1, 1000), rows.clamp(1, 1000));
            if let Some(r) = s.lock().rec.as_mut() {
                r.resize(cols, rows);
            }
            let msg = Message::TermResize(TermResize {
                channel: s.channel,
                cols,
                rows,
            });
            let _ = to_runner(
                state,
                &s.tenant_id,
                &s.runner_id,
                ToRunner::Text(encode_control(0, msg)),
                RUNNER_SEND_TIMEOUT,
            )
            .await;
        }
        ("close", _, _) => request_close(state, s, "closed by the client").await,
        _ => tracing::debug!(session = %s.id, "ignoring client message {:?}", m.kind),
    }
}
