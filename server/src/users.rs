//! Dashboard users: passwords, login sessions, and user management.
//!
//! Passwords are hashed with Argon2id (memory-hard; the crate's defaults:
//! 19 MiB, 2 passes) on a blocking thread, so a burst of logins cannot stall
//! the runtime that carries runner connections. A login that names no such
//! user still runs one hash, so the answer's timing does not tell which
//! user names exist.
//!
//! ```text
//!  POST /api/v1/session ──ok──▶ Set-Cookie tether_session=tses_… (HttpOnly, Secure,
//!        {tenant,name,password}   SameSite=Strict) + csrf_token in the body
//!  any request with the cookie ─▶ auth::Caller::User (CSRF header on non-GET)
//!  DELETE /api/v1/session ──────▶ row deleted, cookie cleared
//!  expires_at passed ───────────▶ 401, the page shows the login form
//! ```
//!
//! Guessing is slowed three ways (besides the per-address login rate of
//! `edge.rs`): at most [`HASH_PERMITS`] password hashes run at once (each
//! takes 19 MiB and tens of milliseconds), with at most `--hash-queue`
//! waiting a bounded time for a slot, beyond which a login is answered
//! `503` with `Retry-After`; and [`MAX_FAILURES`] attempts per tenant and
//! user name in [`FAILURE_WINDOW`]. An attempt is counted *before* its hash
//! runs (given back only if it never ran), so concurrent guesses cannot
//! overrun the limit; then the name is refused with `429 rate_limited`
//! until the window passes. A tenant counts once whether named by id or by
//! name. The counts live in a bounded map ([`MAX_TRACKED`] names) that
//! makes room instead of refusing to track new names.
//!
//! The first user of a tenant is made with the admin token
//! (`POST /api/v1/tenants/{tenant}/users`, CLI `user add`); after that, the
//! tenant's admins (or an API token) manage users with `/api/v1/users`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::api::JsonBody;
use crate::app::AppState;
use crate::auth::{self, Caller};
use crate::clock;
use crate::edge::Clip;
use crate::error::ApiError;
use crate::storage::{Role, SessionRow, UserRow};

const MIN_PASSWORD_LEN: usize = 8;
/// Longer inputs only cost hashing time.
const MAX_PASSWORD_LEN: usize = 1024;
const MAX_USER_NAME_LEN: usize = 64;

/// Argon2id PHC string of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::internal)
}

/// Whether `password` matches a stored PHC string (a malformed one never does).
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Password hashes that may run at once.
const HASH_PERMITS: usize = 2;
/// Wrong passwords per tenant and user name before that name is refused.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Names tracked at most (bounded memory); when full, expired entries go
/// first, then the eighth with the fewest failures (oldest first).
const MAX_TRACKED: usize = 10_000;

/// Password work shared by every request: the hashing slots with their
/// bounded queue, and the wrong-password counts.
pub struct Passwords {
    hashing: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
    lockout: Lockout,
}

impl Passwords {
    /// `max_waiting` hashes may queue for [`HASH_PERMITS`] slots, each at
    /// most `max_wait`.
    pub fn new(max_waiting: usize, max_wait: Duration) -> Passwords {
        Passwords {
            hashing: Semaphore::new(HASH_PERMITS),
            waiting: AtomicUsize::new(0),
            max_waiting,
            max_wait,
            lockout: Lockout::new(MAX_FAILURES, FAILURE_WINDOW, MAX_TRACKED),
        }
    }

    /// Run one Argon2 computation on a blocking thread, within
    /// [`HASH_PERMITS`]; 503 with `Retry-After` when the queue is full or
    /// the wait is over.
    async fn argon2<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let busy = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "too many password checks at once: try again in a few seconds",
            )
            .with_retry_after(Duration::from_secs(2))
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(busy());
        }
        let permit = tokio::time::timeout(self.max_wait, self.hashing.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|_| busy())?.map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(ApiError::internal)
    }

    async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.argon2(move || hash_password(&password)).await?
    }
}

impl Default for Passwords {
    fn default() -> Self {
        let edge = crate::edge::EdgeConfig::default();
        Passwords::new(edge.hash_queue, edge.hash_wait)
    }
}

/// Whose wrong passwords are counted together: the canonical tenant id
/// (or, for no such tenant, the name as given) and the user name.
type LockKey = (String, String);

/// Recent login attempts per tenant and user name. An attempt is counted
/// when it is let through to the hash, not when the hash says no, so
/// concurrent guesses cannot overrun the limit; a correct password clears
/// the count.
struct Lockout {
    max: u32,
    window: Duration,
    capacity: usize,
    counts: Mutex<HashMap<LockKey, (u32, Instant)>>,
}

impl Lockout {
    fn new(max: u32, window: Duration, capacity: usize) -> Lockout {
        Lockout {
            max,
            window,
            capacity,
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<LockKey, (u32, Instant)>> {
        // Counters only: a panic elsewhere cannot leave them inconsistent.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count one attempt for `key`, or `Err(wait)` when it has none left.
    fn reserve(&self, key: &LockKey) -> Result<(), Duration> {
        let mut map = self.counts();
        if !map.contains_key(key) && map.len() >= self.capacity {
            self.evict(&mut map);
        }
        let entry = map.entry(key.clone()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        if entry.0 >= self.max {
            return Err(self.window.saturating_sub(entry.1.elapsed()));
        }
        entry.0 += 1;
        Ok(())
    }

    /// Give back an attempt that was never evaluated (the hash queue was full).
    fn refund(&self, key: &LockKey) {
        if let Some(entry) = self.counts().get_mut(key) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    /// The right password: the name starts afresh.
    fn clear(&self, key: &LockKey) {
        self.counts().remove(key);
    }

    /// Make room: expired entries, then an eighth of the rest, fewest
    /// attempts and oldest first (a locked name is the last to go, and a
    /// spray of new names cannot push it out cheaply).
    fn evict(&self, map: &mut HashMap<LockKey, (u32, Instant)>) {
        map.retain(|_, (_, since)| since.elapsed() < self.window);
        if map.len() < self.capacity {
            return;
        }
        let mut order: Vec<(u32, Instant, LockKey)> = map
            .iter()
            .map(|(k, (n, since))| (*n, *since, k.clone()))
            .collect();
        order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        for (_, _, k) in order.into_iter().take((self.capacity / 8).max(1)) {
            map.remove(&k);
        }
    }
}

fn check_user_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "user name must be 1 to {MAX_USER_NAME_LEN} of a-z A-Z 0-9 . _ @ -"
        )))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
        )))
    }
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::parse(role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown role {role:?}: use admin, operator or viewer"
        ))
    })
}

#[derive(Serialize)]
pub struct UserView {
    name: String,
    role: Role,
    created_at: String,
}

impl From<&UserRow> for UserView {
    fn from(u: &UserRow) -> Self {
        UserView {
            name: u.name.clone(),
            role: u.role,
            created_at: clock::rfc3339(u.created_at),
        }
    }
}

// ---- sessions ----------------------------------------------------------------------

#[derive(Deserialize)]
pub struct Login {
    tenant: String,
    name: String,
    password: String,
}

#[derive(Serialize)]
pub struct SessionView {
    tenant_id: String,
    tenant: String,
    user: UserView,
    /// Send back in `X-CSRF-Token` with every request that is not GET/HEAD.
    csrf_token: String,
    expires_at: String,
}

impl From<&SessionRow> for SessionView {
    fn from(s: &SessionRow) -> Self {
        SessionView {
            tenant_id: s.user.tenant_id.clone(),
            tenant: s.tenant_name.clone(),
            user: UserView::from(&s.user),
            csrf_token: s.csrf_token.clone(),
            expires_at: clock::rfc3339(s.expires_at),
        }
    }
}

fn cookie(value: &str, max_age_secs: i64) -> HeaderValue {
    // Secure: browsers treat http://127.0.0.1 and localhost as secure too, so
    // `make run` and `--plain-http` behind a TLS proxy both keep working.
    let c = format!(
        "{}={value}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age_secs}",
        auth::SESSION_COOKIE
    );
    HeaderValue::from_str(&c).expect("cookie is ASCII")
}

/// Longest tenant a login may name: a tenant name (`api.rs`) or an id.
const MAX_TENANT_LEN: usize = 64;

/// The login's fields within their limits, checked before anything is
/// looked up, counted or logged.
fn check_login(req: &Login) -> Result<(), ApiError> {
    if req.tenant.is_empty() || req.tenant.chars().count() > MAX_TENANT_LEN {
        return Err(ApiError::bad_request(format!(
            "tenant must be 1 to {MAX_TENANT_LEN} characters"
        )));
    }
    if req.name.is_empty() || req.name.len() > MAX_USER_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "user name must be 1 to {MAX_USER_NAME_LEN} characters"
        )));
    }
    if req.password.chars().count() > MAX_PASSWORD_LEN {
        return Err(ApiError::bad_request(format!(
            "password must be at most {MAX_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

/// `POST /api/v1/session`: log in.
///
/// ```text
///  fields within limits? ─no─▶ 400
///  tenant id or name ─▶ canonical id ─▶ lockout: an attempt left? ─no─▶ 429
///  hash slot within the queue and wait? ─no─▶ 503 (attempt given back)
///  Argon2 verify ─wrong─▶ 401 (attempt stays counted) │ right ─▶ count cleared, session
/// ```
pub async fn login(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<Login>,
) -> Result<Response, ApiError> {
    let refused = || ApiError::unauthorized("wrong tenant, user name or password");
    check_login(&req)?;
    let tenant = state.storage.tenant_id_by_id_or_name(&req.tenant)?;
    // A tenant named by id or by name counts as one; a tenant that does
    // not exist is counted under what was typed (the same refusal, so
    // the lockout does not tell which tenants exist).
    let key = (
        tenant.clone().unwrap_or_else(|| format!("?{}", req.tenant)),
        req.name.clone(),
    );
    let lockout = &state.passwords.lockout;
    if let Err(wait) = lockout.reserve(&key) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many wrong passwords for this user: try again in a few minutes",
        )
        .with_retry_after(wait));
    }
    let user = match &tenant {
        Some(tenant) => state.storage.user(tenant, &req.name)?,
        None => None,
    };
    let phc = match &user {
        Some(u) => u.password_hash.clone(),
        // Same work for an unknown user, so timing does not reveal names.
        None => DUMMY_HASH.to_owned(),
    };
    let password = req.password;
    let ok = match state
        .passwords
        .argon2(move || verify_password(&password, &phc))
        .await
    {
        Ok(ok) => ok,
        Err(e) => {
            lockout.refund(&key);
            return Err(e);
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(
            tenant = %Clip(&req.tenant),
            user = %Clip(&req.name),
            "dashboard login refused"
        );
        return Err(refused());
    };
    lockout.clear(&key);
    let secret = auth::new_secret(auth::SESSION_PREFIX)?;
    let csrf = auth::new_secret("")?;
    let now = clock::now_ms();
    let ttl = state.tuning.session_ttl.as_millis() as i64;
    state
        .storage
        .create_session(&auth::hash_secret(&secret), &user.id, &csrf, now, now + ttl)?;
    let session = state
        .storage
        .session(&auth::hash_secret(&secret), now)?
        .ok_or_else(|| ApiError::internal("session vanished right after login"))?;
    tracing::info!(tenant = %session.tenant_name, user = %user.name, "dashboard login");
    let mut res = Json(SessionView::from(&session)).into_response();
    res.headers_mut()
        .insert(SET_COOKIE, cookie(&secret, ttl / 1000));
    Ok(res)
}

/// A valid Argon2id hash of a random password nobody knows, to verify
/// against when the user does not exist.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0bYpVQ8t3mAbUnx6bVh9bkqkTl/XZbDRgc5xuWQXifE";

/// `GET /api/v1/session`: who is logged in, and the CSRF token (the page
/// reads it after a reload).
pub async fn current(caller: Caller) -> Result<Json<SessionView>, ApiError> {
    match &caller {
        Caller::User(s) => Ok(Json(SessionView::from(s.as_ref()))),
        _ => Err(ApiError::bad_request(
            "no session: this request used a bearer token",
        )),
    }
}

/// `DELETE /api/v1/session`: log out (needs the CSRF token like any change,
/// but a viewer may do it too, so it reads the cookie itself).
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(secret) = auth::session_cookie(&headers) else {
        return Err(ApiError::unauthorized("no session cookie"));
    };
    let hash = auth::hash_secret(secret);
    if let Some(session) = state.storage.session(&hash, clock::now_ms())? {
        let sent = headers.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|t| auth::hashes_equal(t, &session.csrf_token)) {
            return Err(ApiError::forbidden(
                "missing or wrong X-CSRF-Token header for this session",
            ));
        }
        state.storage.delete_session(&hash)?;
    }
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(SET_COOKIE, cookie("", 0));
    Ok(res)
}

// ---- user management -------------------------------------------------------------

#[derive(Deserialize)]
pub struct NewUser {
    name: String,
    password: String,
    role: String,
}

async fn create_in(
    state: &AppState,
    tenant_id: &str,
    req: NewUser,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    check_user_name(&req.name)?;
    check_password(&req.password)?;
    let role = parse_role(&req.role)?;
    let user = UserRow {
        id: auth::new_id("us_")?,
        tenant_id: tenant_id.to_owned(),
        name: req.name,
        password_hash: state.passwords.hash(req.password).await?,
        role,
        created_at: clock::now_ms(),
    };
    state.storage.create_user(&user)?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// `POST /api/v1/tenants/{tenant}/users` (admin token): a tenant's first
/// user, or any user; `tenant` is an id or a name.
pub async fn create_for_tenant(
    caller: Caller,
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    JsonBody(req): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    caller.admin()?;
    let tenant_id = state
        .storage
        .tenant_id_by_id_or_name(&tenant)?
        .ok_or_else(|| ApiError::not_found(format!("no tenant {tenant}")))?;
    create_in(&state, &tenant_id, req).await
}

/// `POST /api/v1/users` (tenant admin).
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let tenant = caller.tenant_admin()?.to_owned();
    create_in(&state, &tenant, req).await
}

/// `GET /api/v1/users` (tenant admin).
pub async fn list(
    caller: Caller,
    State(state): State<AppState>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let tenant = caller.tenant_admin()?;
    let users = state.storage.list_users(tenant)?;
    Ok(Json(users.iter().map(UserView::from).collect()))
}

#[derive(Deserialize)]
pub struct UserChange {
    role: Option<String>,
    password: Option<String>,
}

fn is_self(caller: &Caller, name: &str) -> bool {
    matches!(caller, Caller::User(s) if s.user.name == name)
}

/// `PATCH /api/v1/users/{name}` (tenant admin): `{"role"?, "password"?}`.
pub async fn update(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<UserChange>,
) -> Result<Json<UserView>, ApiError> {
    let tenant = caller.tenant_admin()?.to_owned();
    let role = req.role.as_deref().map(parse_role).transpose()?;
    if role.is_some_and(|r| r != Role::Admin) && is_self(&caller, &name) {
        // The last admin locking the tenant out would need the admin token.
        return Err(ApiError::conflict(
            "you cannot take the admin role from yourself",
        ));
    }
    let hash = match req.password {
        Some(p) => {
            check_password(&p)?;
            Some(state.passwords.hash(p).await?)
        }
        None => None,
    };
    if role.is_none() && hash.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: give role and/or password",
        ));
    }
    if !state
        .storage
        .update_user(&tenant, &name, role, hash.as_deref())?
    {
        return Err(ApiError::not_found(format!(
            "no user {name} in this tenant"
        )));
    }
    let user = state
        .storage
        .user(&tenant, &name)?
        .ok_or_else(|| ApiError::not_found(format!("no user {name} in this tenant")))?;
    Ok(Json(UserView::from(&user)))
}

/// `DELETE /api/v1/users/{name}` (tenant admin); its sessions end at once.
pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant_admin()?.to_owned();
    if is_self(&caller, &name) {
        return Err(ApiError::conflict("you cannot delete yourself"));
    }
    if state.storage.delete_user(&tenant, &name)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no user {name} in this tenant"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_is_argon2id_salted_and_verifies() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "a fresh salt each time");
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("correct horsE", &a));
        assert!(!verify_password("x", "not a phc string"));
        // The dummy hash parses (so an unknown user costs a real hash) and
        // matches nothing anyone would type.
        assert!(argon2::password_hash::PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password("", DUMMY_HASH));
    }

    #[test]
    fn names_passwords_and_roles_are_checked() {
        assert!(check_user_name("ada.l@x-y_z").is_ok());
        for bad in ["", "a b", "é", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert_eq!(parse_role("viewer").unwrap(), Role::Viewer);
        assert!(parse_role("root").is_err());
    }
}
