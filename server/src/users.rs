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
//! Guessing is slowed two ways: at most [`HASH_PERMITS`] password hashes run
//! at once (each takes 19 MiB and tens of milliseconds, so a flood of logins
//! queues instead of eating the machine), and after [`MAX_FAILURES`] wrong
//! passwords for one tenant and user name in [`FAILURE_WINDOW`], that name is
//! refused with `429 rate_limited` until the window passes.
//!
//! The first user of a tenant is made with the admin token
//! (`POST /api/v1/tenants/{tenant}/users`, CLI `user add`); after that, the
//! tenant's admins (or an API token) manage users with `/api/v1/users`.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
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
static HASHING: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(HASH_PERMITS));

/// Run one Argon2 computation on a blocking thread, within [`HASH_PERMITS`].
async fn argon2_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = HASHING.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)
}

async fn hash_blocking(password: String) -> Result<String, ApiError> {
    argon2_blocking(move || hash_password(&password)).await?
}

/// Wrong passwords per tenant and user name before that name is refused.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);
/// Names tracked at most (bounded memory); beyond it new names go untracked,
/// which still leaves every guess costing a queued hash.
const MAX_TRACKED: usize = 10_000;

/// Recent failed logins: key "tenant\nname" → (count, first failure).
static FAILURES: LazyLock<Mutex<HashMap<String, (u32, Instant)>>> = LazyLock::new(Default::default);

fn failures() -> std::sync::MutexGuard<'static, HashMap<String, (u32, Instant)>> {
    // Counters only: a panic elsewhere cannot leave them inconsistent.
    FAILURES.lock().unwrap_or_else(|e| e.into_inner())
}

fn locked_out(key: &str) -> bool {
    failures()
        .get(key)
        .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
}

fn record_failure(key: &str) {
    let mut map = failures();
    if !map.contains_key(key) && map.len() >= MAX_TRACKED {
        map.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        if map.len() >= MAX_TRACKED {
            return;
        }
    }
    let entry = map.entry(key.to_owned()).or_insert((0, Instant::now()));
    if entry.1.elapsed() >= FAILURE_WINDOW {
        *entry = (0, Instant::now());
    }
    entry.0 += 1;
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

/// `POST /api/v1/session`: log in.
pub async fn login(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<Login>,
) -> Result<Response, ApiError> {
    let refused = || ApiError::unauthorized("wrong tenant, user name or password");
    if req.password.len() > MAX_PASSWORD_LEN * 4 {
        return Err(refused());
    }
    let key = format!("{}\n{}", req.tenant, req.name);
    if locked_out(&key) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many wrong passwords for this user: try again in a few minutes",
        ));
    }
    let user = match state.storage.tenant_id_by_id_or_name(&req.tenant)? {
        Some(tenant) => state.storage.user(&tenant, &req.name)?,
        None => None,
    };
    let phc = match &user {
        Some(u) => u.password_hash.clone(),
        // Same work for an unknown user, so timing does not reveal names.
        None => DUMMY_HASH.to_owned(),
    };
    let password = req.password;
    let ok = argon2_blocking(move || verify_password(&password, &phc)).await?;
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(tenant = %req.tenant, user = %req.name, "dashboard login refused");
        record_failure(&key);
        return Err(refused());
    };
    failures().remove(&key);
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
        password_hash: hash_blocking(req.password).await?,
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
            Some(hash_blocking(p).await?)
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
