//! Long-lived streams keep their authority only while its source does:
//! one mechanism for terminal WebSockets, the SSE event stream, log
//! follows and job-output follows. Also the single-use tickets that let a
//! WebSocket client authenticate without a token in its URL.
//!
//! ```text
//!  request authenticated ─▶ Principal (what proved it: API token hash, session hash, admin)
//!        │                       + the role the stream needs (viewer: reads, operator: a shell)
//!        ▼
//!  AuthGuard task: check ─▶ wait for ─┬─ storage.credentials_changed()   (logout, user deleted,
//!        ▲                            │   role or password changed, API token revoked;
//!        │                            │   on PostgreSQL, another replica's too, by NOTIFY)
//!        └────────────────────────────┼─ the session's or token's expiry
//!                                     └─ RECHECK_EVERY (a write by another process)
//!  check fails ─▶ guard.ended() yields the reason ─▶ the stream writes its end
//!                 (terminal: {"type":"end"} + close 1008; SSE: event end; NDJSON: {"end"};
//!                 raw job output: a `[tether]` line) and closes
//! ```
//!
//! Every credential write wakes every guard, which then runs one indexed
//! lookup: tens of microseconds each, and such writes are rare (people
//! logging out or managing users), so the wake is not scoped per tenant.
//! A check that fails on a storage error keeps the stream (the next wake
//! retries): a database hiccup must not hang up every terminal.
//!
//! Tickets (`POST /api/v1/ws-tickets`): a random secret that stands for the
//! credential that minted it, valid for [`TICKET_TTL`] and for one use. The
//! table lives in memory, bounded by [`MAX_TICKETS`] (expired ones are
//! dropped first; when it is still full, minting answers 503).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use crate::common::auth::{self, AuthCtx, Caller};
use crate::common::clock;
use crate::common::error::ApiError;
use crate::db::{Db, Role};

/// A guard re-checks at least this often, for writes it was not woken for
/// (another process on the same database).
const RECHECK_EVERY: Duration = Duration::from_secs(30);
/// A WebSocket ticket is good for this long after it is minted.
pub const TICKET_TTL: Duration = Duration::from_secs(10);
/// Unredeemed tickets held at once (about 200 bytes each).
pub const MAX_TICKETS: usize = 10_000;
pub const TICKET_PREFIX: &str = "twst_";

/// What proved who a request is, kept so a stream can ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The server's admin token: configured at start, never revoked while
    /// the process runs.
    Admin,
    /// SHA-256 hex of an API token.
    ApiToken(String),
    /// SHA-256 hex of a dashboard session cookie.
    Session(String),
}

impl Credential {
    /// The credential of a request the [`Caller`] extractor accepted: the
    /// bearer token if there is one (it wins, as there), else the cookie.
    pub fn of(headers: &HeaderMap) -> Option<Credential> {
        if let Some(token) = auth::bearer(headers) {
            let hash = auth::hash_secret(token);
            return Some(if token.starts_with(auth::API_PREFIX) {
                Credential::ApiToken(hash)
            } else {
                Credential::Admin
            });
        }
        auth::session_cookie(headers).map(|c| Credential::Session(auth::hash_secret(c)))
    }
}

impl Credential {
    /// As the internal channel between replicas carries it (a ticket
    /// redeemed on the entry replica): a hash, never the secret.
    pub fn to_wire(&self) -> String {
        match self {
            Credential::Admin => "admin".to_owned(),
            Credential::ApiToken(h) => format!("token:{h}"),
            Credential::Session(h) => format!("session:{h}"),
        }
    }

    pub fn from_wire(text: &str) -> Option<Credential> {
        let hash = |h: &str| {
            (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_owned())
        };
        match text.split_once(':') {
            None if text == "admin" => Some(Credential::Admin),
            Some(("token", h)) => hash(h).map(Credential::ApiToken),
            Some(("session", h)) => hash(h).map(Credential::Session),
            _ => None,
        }
    }
}

/// A credential another replica vouches for: a ticket it redeemed before
/// sending the request on. Put into a request only by the internal
/// listener's gate, after the cluster key was proved (`app/forward.rs`).
#[derive(Debug, Clone)]
pub struct Vouched(pub Credential);

/// A credential and the least role its stream needs (sessions only: an
/// API token is a tenant admin's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub credential: Credential,
    pub need: Role,
}

fn rank(r: Role) -> u8 {
    match r {
        Role::Viewer => 0,
        Role::Operator => 1,
        Role::Admin => 2,
    }
}

/// Why a principal no longer holds (the stream's end reason), or until
/// when it does (`None`: no expiry). `Ok(None)` too on a storage error.
async fn check(db: &Db, p: &Principal) -> Result<Option<i64>, String> {
    let now = clock::now_ms();
    let result = match &p.credential {
        Credential::Admin => return Ok(None),
        Credential::ApiToken(hash) => db
            .control
            .api_token_check(hash, now)
            .await
            .map(|r| r.map_err(|why| why.message().to_owned())),
        Credential::Session(hash) => db.users.session(hash, now).await.map(|s| match s {
            Some(s) if rank(s.user.role) < rank(p.need) => Err(format!(
                "your role is now {}: this needs {}",
                s.user.role.as_str(),
                p.need.as_str()
            )),
            Some(s) => Ok(Some(s.expires_at)),
            None => Err(
                "session ended: logged out, password changed, user deleted or expired".to_owned(),
            ),
        }),
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("re-checking a stream's credential: {e}");
            Ok(None)
        }
    }
}

/// Watches one stream's principal; [`AuthGuard::ended`] resolves with the
/// reason once it no longer holds. Dropping the guard stops the watch.
pub struct AuthGuard {
    ended: watch::Receiver<Option<String>>,
    task: Option<tokio::task::AbortHandle>,
}

impl AuthGuard {
    pub fn spawn(db: &Db, principal: Principal) -> AuthGuard {
        let (tx, rx) = watch::channel(None);
        let task = (principal.credential != Credential::Admin)
            .then(|| tokio::spawn(watch_principal(db.clone(), principal, tx)).abort_handle());
        AuthGuard { ended: rx, task }
    }

    /// The guard of a request's stream: its credential (see
    /// [`Credential::of`]) must keep at least `need`.
    pub fn for_request(db: &Db, headers: &HeaderMap, need: Role) -> AuthGuard {
        let credential = Credential::of(headers).unwrap_or(Credential::Admin);
        AuthGuard::spawn(db, Principal { credential, need })
    }

    /// Resolves with the reason the stream must end; pending while the
    /// principal holds. Cancel-safe (for `select!` in a loop).
    pub async fn ended(&mut self) -> String {
        loop {
            if let Some(reason) = self.ended.borrow_and_update().clone() {
                return reason;
            }
            if self.ended.changed().await.is_err() {
                // The watch is gone without a verdict: never end.
                return std::future::pending().await;
            }
        }
    }
}

impl Drop for AuthGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn watch_principal(db: Db, p: Principal, tx: watch::Sender<Option<String>>) {
    let mut changes = db.control.watch_credentials();
    loop {
        let expires = match check(&db, &p).await {
            Ok(e) => e,
            Err(reason) => {
                // The kind only: even a hash of a credential stays out of logs.
                let kind = match p.credential {
                    Credential::Admin => "admin token",
                    Credential::ApiToken(_) => "API token",
                    Credential::Session(_) => "session",
                };
                tracing::info!(credential = kind, "ending a stream: {reason}");
                let _ = tx.send(Some(reason));
                return;
            }
        };
        let wait = expires
            .map(|e| Duration::from_millis(u64::try_from(e - clock::now_ms() + 1).unwrap_or(0)))
            .map_or(RECHECK_EVERY, |d| d.min(RECHECK_EVERY));
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = sleep(wait) => {}
            () = tx.closed() => return,
        }
    }
}

/// `inner`, ended early with `end(reason)` as its last item when the
/// guard fires.
pub fn until_revoked<S, T, F>(inner: S, guard: AuthGuard, end: F) -> impl Stream<Item = T> + Send
where
    S: Stream<Item = T> + Send + 'static,
    T: Send + 'static,
    F: FnOnce(String) -> T + Send + 'static,
{
    let start = (inner.boxed(), guard, end);
    stream::unfold(Some(start), |st| async move {
        let (mut inner, mut guard, end) = st?;
        tokio::select! {
            biased;
            reason = guard.ended() => Some((end(reason), None)),
            item = inner.next() => {
                let item = item?;
                Some((item, Some((inner, guard, end))))
            }
        }
    })
}

// ---- tickets --------------------------------------------------------------------

struct Ticket {
    credential: Credential,
    expires: Instant,
}

/// Unredeemed WebSocket tickets, by the SHA-256 of the ticket.
#[derive(Default)]
pub struct Tickets {
    map: Mutex<HashMap<String, Ticket>>,
}

impl Tickets {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ticket>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new ticket standing for `credential`; `None` when the table is full.
    pub fn mint(&self, credential: Credential) -> Result<Option<String>, getrandom::Error> {
        self.mint_for(credential, TICKET_TTL)
    }

    fn mint_for(
        &self,
        credential: Credential,
        ttl: Duration,
    ) -> Result<Option<String>, getrandom::Error> {
        let secret = auth::new_secret(TICKET_PREFIX)?;
        let now = Instant::now();
        let mut map = self.map();
        if map.len() >= MAX_TICKETS {
            map.retain(|_, t| t.expires > now);
            if map.len() >= MAX_TICKETS {
                return Ok(None);
            }
        }
        let ticket = Ticket {
            credential,
            expires: now + ttl,
        };
        map.insert(auth::hash_secret(&secret), ticket);
        Ok(Some(secret))
    }

    /// The credential a ticket stands for, once: redeeming removes it.
    pub fn redeem(&self, ticket: &str) -> Option<Credential> {
        let t = self.map().remove(&auth::hash_secret(ticket))?;
        (t.expires > Instant::now()).then_some(t.credential)
    }
}

/// `POST /api/v1/ws-tickets`: a single-use ticket for a WebSocket
/// (`?ticket=`), for clients that cannot send `Authorization` on one.
pub async fn mint_ticket(
    caller: Caller,
    State(state): State<AuthCtx>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.tenant()?;
    let credential = Credential::of(&headers)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token or session cookie"))?;
    let ticket = state.tickets.mint(credential)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many unredeemed WebSocket tickets: try again in a few seconds",
        )
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "ticket": ticket, "expires_in_s": TICKET_TTL.as_secs() })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once() {
        let t = Tickets::default();
        let s = t.mint(Credential::ApiToken("h".into())).unwrap().unwrap();
        assert!(s.starts_with(TICKET_PREFIX));
        assert_eq!(t.redeem(&s), Some(Credential::ApiToken("h".into())));
        assert_eq!(t.redeem(&s), None, "single use");
        assert_eq!(t.redeem("twst_nope"), None);
    }

    #[test]
    fn a_ticket_expires() {
        let t = Tickets::default();
        let s = t
            .mint_for(Credential::Session("h".into()), Duration::from_millis(20))
            .unwrap()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.redeem(&s), None, "expired");
    }

    #[test]
    fn the_ticket_table_is_bounded() {
        let t = Tickets::default();
        for _ in 0..MAX_TICKETS {
            assert!(t.mint(Credential::Admin).unwrap().is_some());
        }
        assert!(t.mint(Credential::Admin).unwrap().is_none(), "full");
    }
}
