//! Dashboard users: passwords, login sessions, and user management.
//!
//! Passwords are hashed with Argon2id (memory-hard; the crate's defaults:
//! 19 MiB, 2 passes) on two threads of their own, so a burst of logins
//! cannot stall the runtime that carries runner connections, nor hold more
//! than 2 × 19 MiB. A login that names no such
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
//! `common/edge.rs`): at most [`HASH_PERMITS`] password hashes run at once (each
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
//! Single sign-on (OpenID Connect) is `sso.rs`; a tenant may switch
//! password logins off (`PUT /api/v1/sso/password-login`), after which
//! this login answers `403 password_login_disabled` before any hash runs.
//!
//! The first user of a tenant is made with the admin token
//! (`POST /api/v1/tenants/{tenant}/users`, CLI `user add`); after that, the
//! tenant's admins (or an API token) manage users with `/api/v1/users`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::common::auth::{self, Caller};
use crate::common::clock;
use crate::common::edge::Clip;
use crate::common::error::ApiError;
use crate::common::http::JsonBody;
use crate::common::secrets::SecretBox;
use crate::common::tuning::Tuning;
use crate::db::Db;
use crate::db::{Role, SessionRow, UserRow};

pub mod sso;

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct UsersCtx {
    pub db: Db,
    /// Password hashing slots and wrong-password counts.
    pub passwords: Arc<Passwords>,
    pub tuning: Tuning,
    /// Seals single sign-on client secrets and the sign-in's flow cookie.
    pub secrets: Arc<SecretBox>,
    /// The HTTP client toward identity providers, their metadata, used states.
    pub sso: Arc<sso::Sso>,
    /// This server's URL as browsers reach it (`--public-url`, else the
    /// listening address): the base of the sign-in's redirect URI. Never
    /// the request's `Host`, which anyone can set.
    pub base_url: Arc<str>,
}

/// Logins (a stranger's route: small body, a rate per address) and users.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    UsersCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use crate::common::edge;
    use axum::middleware::{from_fn, from_fn_with_state};
    use axum::routing::{get, patch, post};
    axum::Router::new()
        .route(
            "/api/v1/session",
            post(login)
                .layer(edge::small_body())
                .layer(from_fn_with_state(edge::SMALL_BODY, edge::announced_length))
                .layer(from_fn(edge::login_rate))
                .get(current)
                .delete(logout),
        )
        .route("/api/v1/users", get(list).post(create))
        .route("/api/v1/users/{name}", patch(update).delete(delete))
        .route("/api/v1/tenants/{tenant}/users", post(create_for_tenant))
        // Public, so rated like a login: naming tenants to learn which
        // have providers costs as much as guessing passwords.
        .route(
            "/api/v1/sso/options",
            get(sso::options).layer(from_fn(edge::login_rate)),
        )
        .route(
            "/api/v1/sso/login",
            get(sso::login).layer(from_fn(edge::login_rate)),
        )
        .route(
            sso::CALLBACK_PATH,
            get(sso::callback).layer(from_fn(edge::login_rate)),
        )
        .route(
            "/api/v1/sso/providers",
            get(sso::list_providers).post(sso::create_provider),
        )
        .route(
            "/api/v1/sso/providers/{name}",
            axum::routing::delete(sso::delete_provider),
        )
        .route(
            "/api/v1/sso/password-login",
            axum::routing::put(sso::set_password_login),
        )
}

const MIN_PASSWORD_LEN: usize = 8;
/// Longer inputs only cost hashing time.
const MAX_PASSWORD_LEN: usize = 1024;
const MAX_USER_NAME_LEN: usize = 64;

/// Argon2id PHC string of `password` with a fresh random salt (in the
/// thread's reused Argon2 memory, like [`verify_password`]).
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)?;
    let argon = argon2::Argon2::default();
    let mut out = [0u8; 32];
    argon2_into(&argon, password.as_bytes(), &salt, &mut out).map_err(ApiError::internal)?;
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    let phc = PasswordHash {
        algorithm: argon2::Algorithm::Argon2id.ident(),
        version: Some(argon2::Version::V0x13.into()),
        params: ParamsString::try_from(argon.params()).map_err(ApiError::internal)?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(ApiError::internal)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches a stored PHC string (a malformed one never does).
///
/// Computed in the calling thread's own Argon2 memory ([`argon2_into`]):
/// this is the hash any stranger can ask for, so it must not allocate.
pub fn verify_password(password: &str, phc: &str) -> bool {
    use argon2::password_hash::{Output, PasswordHash};
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&h) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(h.algorithm) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::V0x13,
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = argon2::Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    // Output compares in constant time.
    argon2_into(&argon, password.as_bytes(), salt, &mut out).is_ok()
        && Output::new(&out).is_ok_and(|got| got == expected)
}

/// Argon2 memory (19 MiB for the default parameters) per hashing thread,
/// made on its first hash and reused by every later one (grown if a
/// stored hash asks for more).
fn argon2_into(
    argon: &argon2::Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    thread_local! {
        static MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    MEMORY.with_borrow_mut(|memory| {
        let need = argon.params().block_count();
        if memory.len() < need {
            memory.resize(need, argon2::Block::default());
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut memory[..need])
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
    threads: HashThreads,
    lockout: Lockout,
}

type HashJob = Box<dyn FnOnce() + Send>;

/// The [`HASH_PERMITS`] threads that run Argon2, for as long as the
/// [`Passwords`] live, each with its own Argon2 memory made once
/// ([`argon2_into`]). Not tokio's blocking pool, and not a fresh 19 MiB per
/// hash: glibc keeps freed blocks in whichever of its (up to 16) arenas the
/// thread used, so a login flood left +286 MiB resident on the blocking
/// pool and +154 MiB on two threads that allocated per hash. Two threads
/// with their own memory hold 2 × 19 MiB, whatever the load.
struct HashThreads {
    jobs: std::sync::mpsc::Sender<HashJob>,
}

impl HashThreads {
    fn start() -> HashThreads {
        let (jobs, queue) = std::sync::mpsc::channel::<HashJob>();
        let queue = std::sync::Arc::new(Mutex::new(queue));
        for i in 0..HASH_PERMITS {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take the next job.
                    let job = match queue.lock() {
                        Ok(q) => q.recv(),
                        Err(_) => return,
                    };
                    match job {
                        // A panicking hash fails its request, not the thread.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        // The Passwords were dropped.
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("starting a password hashing thread: {e}");
            }
        }
        HashThreads { jobs }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| ApiError::internal("password hashing threads are gone"))?;
        rx.await
            .map_err(|_| ApiError::internal("a password hash failed"))
    }
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
            threads: HashThreads::start(),
            lockout: Lockout::new(MAX_FAILURES, FAILURE_WINDOW, MAX_TRACKED),
        }
    }

    /// Run one Argon2 computation on a hashing thread, within
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
        self.threads.run(f).await
    }

    async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.argon2(move || hash_password(&password)).await?
    }
}

impl Default for Passwords {
    fn default() -> Self {
        let edge = crate::common::edge::EdgeConfig::default();
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

/// Longest tenant a login may name: a tenant name (`runners/api.rs`) or an id.
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
    State(state): State<UsersCtx>,
    JsonBody(req): JsonBody<Login>,
) -> Result<Response, ApiError> {
    let refused = || ApiError::unauthorized("wrong tenant, user name or password");
    check_login(&req)?;
    let tenant = state
        .db
        .control
        .tenant_id_by_id_or_name(&req.tenant)
        .await?;
    if let Some(tenant) = &tenant {
        if !state.db.users.password_login(tenant).await? {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "password_login_disabled",
                "this tenant allows single sign-on only: log in with its identity provider",
            ));
        }
    }
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
        Some(tenant) => state.db.users.user(tenant, &req.name).await?,
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
    let (secret, session) = new_session(&state, &user).await?;
    tracing::info!(tenant = %session.tenant_name, user = %user.name, "dashboard login");
    let ttl = state.tuning.session_ttl.as_secs() as i64;
    let mut res = Json(SessionView::from(&session)).into_response();
    res.headers_mut().insert(SET_COOKIE, cookie(&secret, ttl));
    Ok(res)
}

/// A new session for `user`: the cookie's secret and the session row.
async fn new_session(state: &UsersCtx, user: &UserRow) -> Result<(String, SessionRow), ApiError> {
    let secret = auth::new_secret(auth::SESSION_PREFIX)?;
    let csrf = auth::new_secret("")?;
    let now = clock::now_ms();
    let ttl = state.tuning.session_ttl.as_millis() as i64;
    state
        .db
        .users
        .create_session(&auth::hash_secret(&secret), &user.id, &csrf, now, now + ttl)
        .await?;
    let session = state
        .db
        .users
        .session(&auth::hash_secret(&secret), now)
        .await?
        .ok_or_else(|| ApiError::internal("session vanished right after login"))?;
    Ok((secret, session))
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
    State(state): State<UsersCtx>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(secret) = auth::session_cookie(&headers) else {
        return Err(ApiError::unauthorized("no session cookie"));
    };
    let hash = auth::hash_secret(secret);
    if let Some(session) = state.db.users.session(&hash, clock::now_ms()).await? {
        let sent = headers.get(auth::CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|t| auth::hashes_equal(t, &session.csrf_token)) {
            return Err(ApiError::forbidden(
                "missing or wrong X-CSRF-Token header for this session",
            ));
        }
        state.db.users.delete_session(&hash).await?;
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
    state: &UsersCtx,
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
    state.db.users.create_user(&user).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// `POST /api/v1/tenants/{tenant}/users` (admin token): a tenant's first
/// user, or any user; `tenant` is an id or a name.
pub async fn create_for_tenant(
    caller: Caller,
    State(state): State<UsersCtx>,
    Path(tenant): Path<String>,
    JsonBody(req): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    caller.admin()?;
    let tenant_id = state
        .db
        .control
        .tenant_id_by_id_or_name(&tenant)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no tenant {tenant}")))?;
    create_in(&state, &tenant_id, req).await
}

/// `POST /api/v1/users` (tenant admin).
pub async fn create(
    caller: Caller,
    State(state): State<UsersCtx>,
    JsonBody(req): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let tenant = caller.tenant_admin()?.to_owned();
    create_in(&state, &tenant, req).await
}

/// `GET /api/v1/users` (tenant admin).
pub async fn list(
    caller: Caller,
    State(state): State<UsersCtx>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let tenant = caller.tenant_admin()?;
    let users = state.db.users.list_users(tenant).await?;
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
    State(state): State<UsersCtx>,
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
        .db
        .users
        .update_user(&tenant, &name, role, hash.as_deref())
        .await?
    {
        return Err(ApiError::not_found(format!(
            "no user {name} in this tenant"
        )));
    }
    let user = state
        .db
        .users
        .user(&tenant, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {name} in this tenant")))?;
    Ok(Json(UserView::from(&user)))
}

/// `DELETE /api/v1/users/{name}` (tenant admin); its sessions end at once.
pub async fn delete(
    caller: Caller,
    State(state): State<UsersCtx>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant_admin()?.to_owned();
    if is_self(&caller, &name) {
        return Err(ApiError::conflict("you cannot delete yourself"));
    }
    if state.db.users.delete_user(&tenant, &name).await? {
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
    fn hashes_match_the_argon2_crates_own_both_ways() {
        use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
        // Stored before this server reused its memory: still verifies.
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = argon2::Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(verify_password("correct horse", &theirs));
        assert!(!verify_password("correct horsE", &theirs));
        // Ours verifies with the crate's verifier.
        let ours = hash_password("correct horse").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2::Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok());
    }

    #[test]
    fn a_full_lockout_map_makes_room_and_keeps_the_locked_names() {
        let lockout = Lockout::new(3, Duration::from_secs(300), 8);
        let key = |n: &str| ("tn_1".to_owned(), n.to_owned());
        for i in 0..8 {
            lockout.reserve(&key(&format!("spray{i}"))).unwrap();
        }
        // Full: a new name is still tracked (room is made), up to its limit.
        for _ in 0..3 {
            lockout.reserve(&key("victim")).unwrap();
        }
        let wait = lockout.reserve(&key("victim")).unwrap_err();
        assert!(wait > Duration::from_secs(290), "{wait:?}");
        // A spray of new names pushes out the once-tried ones, not the
        // locked one, and the map stays bounded.
        for i in 0..100 {
            lockout.reserve(&key(&format!("more{i}"))).unwrap();
        }
        assert!(lockout.counts().len() <= 8);
        assert!(lockout.reserve(&key("victim")).is_err());
        // An attempt that never ran is given back; a right password clears.
        lockout.refund(&key("victim"));
        lockout.reserve(&key("victim")).unwrap();
        lockout.clear(&key("victim"));
        lockout.reserve(&key("victim")).unwrap();
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
