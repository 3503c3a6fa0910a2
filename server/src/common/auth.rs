//! Secrets and callers: token generation, hashing, and who is calling.
//!
//! Four kinds of secret exist (`docs/api.md`, "Credentials"): admin (`tadm_`),
//! API (`tapi_`), enrollment (`tenr_`) and runner (`trun_`). Each is a prefix
//! and 32 random bytes in hex; the server keeps only the SHA-256 of the whole
//! string. The prefix tells at a glance (and in a leaked log) what a secret is,
//! and lets the server look in the right table.
//!
//! [`Caller`] is the axum extractor for REST endpoints: admin or one tenant.
//!
//! A request proves who it is in one of two ways, and every handler accepts
//! both: a bearer token (CLI, scripts), or the dashboard's session cookie
//! (`users/mod.rs`). A bearer header wins when both are present. With the cookie,
//! a request that is not GET/HEAD must also carry the session's CSRF token
//! in `X-CSRF-Token` (a cross-site form cannot set a header), and a viewer's
//! such request is refused here, before any handler runs, so no endpoint
//! can forget to check.
//!
//! A WebSocket upgrade is a GET that cannot carry the CSRF header, so the
//! terminal WebSockets take the cookie only through [`websocket_session`]:
//! the `Origin` must be this server's (cross-site WebSocket hijacking), and
//! a viewer is refused (a shell is an action).

use std::sync::{Arc, Mutex};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use sha2::{Digest, Sha256};

use crate::common::edge::Edge;
use crate::common::error::ApiError;
use crate::common::stream_auth::Tickets;
use crate::db::{Db, Role, SessionRow};

pub const ADMIN_PREFIX: &str = "tadm_";
pub const API_PREFIX: &str = "tapi_";
pub const ENROLL_PREFIX: &str = "tenr_";
pub const RUNNER_PREFIX: &str = "trun_";
/// The dashboard's session cookie value (never accepted as a bearer token).
pub const SESSION_PREFIX: &str = "tses_";
/// The cookie that carries a session, and the header that carries its CSRF token.
pub const SESSION_COOKIE: &str = "tether_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A new secret: `prefix` then 256 random bits in hex.
pub fn new_secret(prefix: &str) -> Result<String, getrandom::Error> {
    Ok(format!("{prefix}{}", random_hex(32)?))
}

/// A new object id: `prefix` then 48 random bits in hex (`rn_3f9a2c7d1e4b`).
pub fn new_id(prefix: &str) -> Result<String, getrandom::Error> {
    Ok(format!("{prefix}{}", random_hex(6)?))
}

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(hex(&buf))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// What the server stores for a secret: SHA-256 of the whole string, in hex.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compare two hashes without an early exit, so timing says nothing about
/// how much of a guess was right.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What identifying a caller needs: the stores of tokens and sessions, the
/// admin token's hash, the edge's TLS flag (for `Origin` checks) and the
/// WebSocket tickets. `app/` builds it from its state (`FromRef`), so every
/// feature's routes can take a [`Caller`] without naming the app.
#[derive(Clone)]
pub struct AuthCtx {
    pub db: Db,
    /// SHA-256 hex of the admin token.
    pub admin_token_hash: Arc<str>,
    pub edge: Arc<Edge>,
    /// Single-use WebSocket tickets (`common/stream_auth.rs`).
    pub tickets: Arc<Tickets>,
}

/// Who is calling a REST endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server's admin token: tenants only.
    Admin,
    /// An API token of one tenant: a tenant admin.
    Tenant(String),
    /// A dashboard user, by session cookie.
    User(Box<SessionRow>),
}

impl Caller {
    /// The caller's tenant, for tenant endpoints; the admin token is refused.
    pub fn tenant(&self) -> Result<&str, ApiError> {
        match self {
            Caller::Tenant(id) => Ok(id),
            Caller::User(session) => Ok(&session.user.tenant_id),
            Caller::Admin => Err(ApiError::forbidden(
                "the admin token manages tenants only; use a tenant's API token",
            )),
        }
    }

    /// Tenant endpoints that hand out authority (users, API tokens): an API
    /// token or a user with the admin role.
    pub fn tenant_admin(&self) -> Result<&str, ApiError> {
        match self {
            Caller::User(session) if session.user.role != Role::Admin => Err(ApiError::forbidden(
                "this needs the admin role in the tenant",
            )),
            other => other.tenant(),
        }
    }

    /// Admin endpoints; API tokens are refused.
    pub fn admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) | Caller::User(_) => {
                Err(ApiError::forbidden("this endpoint needs the admin token"))
            }
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    AuthCtx: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = &AuthCtx::from_ref(state);
        if let Some(token) = bearer(&parts.headers) {
            let (caller, actor) = identify_actor(state, token).await?;
            note_actor(&parts.extensions, actor);
            return Ok(caller);
        }
        let session = cookie_session(state, &parts.headers).await?;
        note_actor(&parts.extensions, user_actor(&session));
        if !is_safe(&parts.method) {
            let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !sent.is_some_and(|t| hashes_equal(t, &session.csrf_token)) {
                return Err(ApiError::forbidden(
                    "missing or wrong X-CSRF-Token header for this session",
                ));
            }
            if session.user.role == Role::Viewer {
                return Err(ApiError::forbidden(
                    "the viewer role can only look, not change anything",
                ));
            }
        }
        Ok(Caller::User(Box::new(session)))
    }
}

/// The live dashboard session named by the request's cookie.
async fn cookie_session(state: &AuthCtx, headers: &HeaderMap) -> Result<SessionRow, ApiError> {
    let Some(cookie) = session_cookie(headers) else {
        return Err(ApiError::unauthorized(
            "missing bearer token or session cookie",
        ));
    };
    state
        .db
        .users
        .session(&hash_secret(cookie), crate::common::clock::now_ms())
        .await?
        .ok_or_else(|| ApiError::unauthorized("session expired or unknown; log in again"))
}

/// Who a token is, for endpoints that take it outside the header (a
/// browser's WebSocket cannot set `Authorization`).
pub async fn identify_token(state: &AuthCtx, token: &str) -> Result<Caller, ApiError> {
    identify(state, token).await
}

/// The dashboard session behind a WebSocket upgrade that came with the
/// cookie and no token. `SameSite=Strict` alone does not guard it: a page
/// on a sibling subdomain is the same *site* and gets the cookie sent, and
/// a GET has no CSRF header; the browser's `Origin` (which a page cannot
/// forge) says which page asked. `public_url` is this server's address as
/// the browser sees it, when a proxy rewrites `Host`.
pub async fn websocket_session(
    state: &AuthCtx,
    headers: &HeaderMap,
    public_url: Option<&str>,
) -> Result<SessionRow, ApiError> {
    let session = cookie_session(state, headers).await?;
    if !same_origin(headers, public_url, state.edge.config.tls) {
        return Err(ApiError::forbidden(
            "this WebSocket's Origin is not this server: open it from the dashboard",
        ));
    }
    if session.user.role == Role::Viewer {
        return Err(ApiError::forbidden(
            "the viewer role can only look: opening a terminal is an action",
        ));
    }
    Ok(session)
}

/// Whether `Origin` names this server, scheme included: `public_url`'s
/// scheme and host:port, or the request's `Host` with the scheme this
/// listener serves (`tls`: https). An `http://` page on the same host
/// (another service on port 80, or a page injected into plain HTTP by
/// someone on the path) is another origin. Behind a TLS-terminating proxy
/// this listener is plain HTTP and the page https: `--public-url` says so.
fn same_origin(headers: &HeaderMap, public_url: Option<&str>, tls: bool) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let origin_of = |url: &str| {
        let (scheme, rest) = url.split_once("://")?;
        let host = rest.split('/').next().unwrap_or("");
        (matches!(scheme, "https" | "http") && !host.is_empty())
            .then(|| (scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
    };
    let Some(origin) = text(ORIGIN).and_then(origin_of) else {
        return false;
    };
    let served = text(HOST).map(|host| {
        let scheme = if tls { "https" } else { "http" };
        (scheme.to_owned(), host.to_ascii_lowercase())
    });
    let public = public_url.and_then(origin_of);
    [served, public].into_iter().flatten().any(|o| o == origin)
}

/// GET and HEAD change nothing; everything else needs CSRF proof and a role
/// above viewer.
fn is_safe(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// The session secret of the request's cookie, if there is one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && value.starts_with(SESSION_PREFIX))
        .map(|(_, value)| value)
}

/// Who made a request, as the audit trail names them. Noted here, where
/// the caller is identified, for the audit layer (`audit/mod.rs`) to record:
/// the note lives in `common/` so that identifying a caller needs nothing
/// of the audit feature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// `admin`, `token`, `user`.
    pub kind: &'static str,
    pub id: String,
    pub label: String,
    pub tenant: Option<String>,
}

/// Where the caller extractor leaves the actor: the audit layer puts one
/// into the request's extensions and takes the actor out after the handler.
#[derive(Debug, Clone, Default)]
pub struct ActorSlot(Arc<Mutex<Option<Actor>>>);

impl ActorSlot {
    /// The actor noted, if any (once).
    pub fn take(&self) -> Option<Actor> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Called by the [`Caller`] extractor once it knows who is calling; a
/// request without a slot (not an action) notes nothing.
pub fn note_actor(extensions: &axum::http::Extensions, actor: Actor) {
    if let Some(slot) = extensions.get::<ActorSlot>() {
        *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(actor);
    }
}

/// The runner `id` if it belongs to `tenant` (every feature that takes a
/// runner id asks); another tenant's runner is
/// "not found", never "forbidden", so its existence does not leak.
pub async fn runner_in_tenant(
    db: &Db,
    tenant: &str,
    id: &str,
) -> Result<crate::db::RunnerRow, ApiError> {
    db.control
        .runner(tenant, id)
        .await?
        .ok_or_else(|| ApiError::runner_not_found(id))
}

/// How the audit trail names a dashboard user.
pub fn user_actor(session: &SessionRow) -> Actor {
    Actor {
        kind: "user",
        id: session.user.id.clone(),
        label: session.user.name.clone(),
        tenant: Some(session.user.tenant_id.clone()),
    }
}

async fn identify(state: &AuthCtx, token: &str) -> Result<Caller, ApiError> {
    identify_actor(state, token).await.map(|(caller, _)| caller)
}

/// Who a token is, and how the audit trail names them.
async fn identify_actor(state: &AuthCtx, token: &str) -> Result<(Caller, Actor), ApiError> {
    let hash = hash_secret(token);
    if token.starts_with(API_PREFIX) {
        // Revoked, expired, or its creator gone (`db/sqlite/tokens.rs`).
        return match state
            .db
            .control
            .api_token_auth(&hash, crate::common::clock::now_ms())
            .await?
        {
            Ok(t) => {
                let actor = Actor {
                    kind: "token",
                    id: t.id,
                    label: t.label.unwrap_or_default(),
                    tenant: Some(t.tenant_id.clone()),
                };
                Ok((Caller::Tenant(t.tenant_id), actor))
            }
            Err(why) => Err(ApiError::unauthorized(why.message())),
        };
    } else if token.starts_with(RUNNER_PREFIX) {
        if state
            .db
            .control
            .runner_by_credential(&hash)
            .await?
            .is_some()
        {
            return Err(ApiError::forbidden(
                "a runner credential cannot call the API",
            ));
        }
    } else if hashes_equal(&hash, &state.admin_token_hash) {
        // Checked last and by hash alone: a configured admin token
        // (TETHER_ADMIN_TOKEN) may have any shape.
        let actor = Actor {
            kind: "admin",
            ..Actor::default()
        };
        return Ok((Caller::Admin, actor));
    }
    Err(ApiError::unauthorized("unknown token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_prefix_and_256_bits() {
        let s = new_secret(API_PREFIX).unwrap();
        assert!(s.starts_with("tapi_"));
        assert_eq!(s.len(), 5 + 64);
        assert_ne!(s, new_secret(API_PREFIX).unwrap());
        let id = new_id("rn_").unwrap();
        assert_eq!(id.len(), 3 + 12);
        assert!(id[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(hashes_equal(&hash_secret("x"), &hash_secret("x")));
        assert!(!hashes_equal(&hash_secret("x"), &hash_secret("y")));
        assert!(!hashes_equal("ab", "abc"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, want) in [
            ("Bearer tapi_x", Some("tapi_x")),
            ("bearer  tapi_x ", Some("tapi_x")),
            ("BEARER tapi_x", Some("tapi_x")),
            ("Basic dXNlcg==", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("tapi_x", None),
        ] {
            h.insert(AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), want, "{value:?}");
        }
    }

    #[test]
    fn origin_must_name_this_server() {
        let check_on =
            |tls: bool, origin: Option<&'static str>, host: &'static str, public: Option<&str>| {
                let mut h = HeaderMap::new();
                h.insert(HOST, HeaderValue::from_static(host));
                if let Some(o) = origin {
                    h.insert(ORIGIN, HeaderValue::from_static(o));
                }
                same_origin(&h, public, tls)
            };
        let check = |origin, host, public| check_on(true, origin, host, public);
        assert!(check(
            Some("https://tether.example:8443"),
            "tether.example:8443",
            None
        ));
        assert!(check(
            Some("https://Tether.Example"),
            "tether.example",
            None
        ));
        // A TLS-terminating proxy: the page is https, this listener plain
        // HTTP, and --public-url says which https origin is ours.
        assert!(check_on(
            false,
            Some("https://tether.example"),
            "127.0.0.1:8080",
            Some("https://tether.example/")
        ));
        assert!(!check_on(
            false,
            Some("https://tether.example"),
            "tether.example",
            None
        ));
        // A plain-HTTP listener reached directly (`--plain-http` on loopback).
        assert!(check_on(
            false,
            Some("http://127.0.0.1:8080"),
            "127.0.0.1:8080",
            None
        ));
        for bad in [
            None,
            Some("null"),
            Some("https://evil.example"),
            Some("https://tether.example.evil.example"),
            Some("https://tether.example:8444"),
            Some("file://tether.example"),
            Some("https://"),
            // Same host and port, other scheme: another origin.
            Some("http://tether.example"),
        ] {
            assert!(!check(bad, "tether.example", None), "{bad:?}");
        }
        // The scheme of --public-url counts too.
        assert!(!check(
            Some("http://tether.example"),
            "127.0.0.1:8443",
            Some("https://tether.example")
        ));
    }

    #[test]
    fn session_cookie_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(session_cookie(&h), None);
        for (value, want) in [
            ("tether_session=tses_ab", Some("tses_ab")),
            ("a=1; tether_session=tses_ab; b=2", Some("tses_ab")),
            ("tether_session=tapi_ab", None),
            ("xtether_session=tses_ab", None),
            ("tether_session", None),
        ] {
            h.insert(axum::http::header::COOKIE, HeaderValue::from_static(value));
            assert_eq!(session_cookie(&h), want, "{value:?}");
        }
    }
}
