//! Single sign-on: the dashboard's OpenID Connect login (authorization code
//! with PKCE), a tenant's providers, and whether passwords still work.
//!
//! ```text
//!  GET /api/v1/sso/login?tenant&provider ─▶ 303 to the provider's authorize URL
//!        Set-Cookie tether_sso = sealed {tenant, provider, state, nonce, PKCE verifier, expiry}
//!  (the user signs in at the provider)
//!  GET /api/v1/sso/callback?code&state ─▶ cookie opens? not expired? state equal? not seen before?
//!        iss (RFC 9207) = the provider's? ─▶ code + verifier exchanged at the token endpoint
//!        ─▶ ID token: signature (JWKS), issuer, audience, expiry, nonce (openidconnect)
//!        ─▶ role from the claim (or the default; none: refused) ─▶ user (made on first login)
//!        ─▶ 303 to / with the session cookie │ any refusal: 303 to /#sso_error=…
//! ```
//!
//! What an attacker meets:
//! - a forged callback (login CSRF: the victim's browser sent with the
//!   attacker's code) has no flow cookie, or one whose `state` differs;
//! - a replayed callback: each state is taken once ([`Sso::take_state`])
//!   and the ID token must carry the nonce sealed in this browser's cookie;
//! - the flow cookie is sealed (ChaCha20-Poly1305, the secrets key), so it
//!   cannot be read (the PKCE verifier) nor made;
//! - issuer mix-up: the flow names one provider; its issuer must be the one
//!   discovery, the `iss` parameter and the ID token all name;
//! - open redirects: the login goes only to the provider's discovered
//!   authorization endpoint, the callback only to `/`;
//! - the provider's answers are bounded (size, time) and redirects are not
//!   followed (openidconnect's SSRF advice); issuers must be `https`, or
//!   `http` on loopback (tests, a provider beside the server);
//! - a new subject never takes over an existing user: a name already in
//!   use is refused, so a local `admin` cannot be claimed by a provider
//!   user named `admin`.
//!
//! Users made here have no password (their hash is `!sso`, which no
//! password verifies); their role follows the claim at every login.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IdToken, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

use super::{check_user_name, parse_role, UsersCtx};
use crate::common::auth::{self, Caller};
use crate::common::clock;
use crate::common::edge::{Clip, PeerAddr};
use crate::common::error::ApiError;
use crate::common::http::JsonBody;
use crate::db::trail::NewEntry;
use crate::db::{OidcProviderRow, Role, UserRow};

/// The flow cookie: only the callback reads it. `SameSite=Lax`, not
/// Strict: the callback is a top-level navigation from the provider's
/// site, on which a Strict cookie would not be sent.
pub const FLOW_COOKIE: &str = "tether_sso";
pub const CALLBACK_PATH: &str = "/api/v1/sso/callback";
/// How long a sign-in at the provider may take.
const FLOW_TTL: Duration = Duration::from_secs(600);
/// The password hash of users made by single sign-on: not a PHC string,
/// so no password ever verifies against it.
pub const NO_PASSWORD: &str = "!sso";

const MAX_PROVIDERS: usize = 8;
const MAX_PROVIDER_NAME: usize = 32;
const MAX_URL: usize = 512;
const MAX_CLIENT_ID: usize = 256;
const MAX_CLIENT_SECRET: usize = 512;
const MAX_CLAIM_NAME: usize = 64;
const MAX_ROLE_MAP: usize = 32;
const MAX_ROLE_VALUE: usize = 128;
/// Query parameters of the callback, each at most this long.
const MAX_PARAM: usize = 2048;
/// Bytes of one answer from a provider (discovery, keys, tokens).
const MAX_ANSWER: u64 = 1024 * 1024;
/// One request to a provider, connection to last byte.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long discovery and the provider's keys are reused.
const METADATA_TTL: Duration = Duration::from_secs(300);
/// Providers' metadata kept at most; states remembered at most.
const MAX_CACHED: usize = 1024;
const MAX_STATES: usize = 100_000;

/// What every sign-in shares: the HTTP client toward providers, their
/// discovered metadata, and the states already used.
pub struct Sso {
    http: ureq::Agent,
    metadata: Mutex<HashMap<String, (Instant, Arc<CoreProviderMetadata>)>>,
    /// SHA-256 of each used state → when it may be forgotten (its flow's
    /// expiry: a replay after that fails on the expired cookie anyway).
    used: Mutex<HashMap<String, i64>>,
}

impl Default for Sso {
    fn default() -> Self {
        let config = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(PROVIDER_TIMEOUT))
            .max_response_header_size(64 * 1024)
            .build();
        Sso {
            http: config.into(),
            metadata: Mutex::default(),
            used: Mutex::default(),
        }
    }
}

impl Sso {
    /// `Err` if `state` was taken before (a replayed callback).
    fn take_state(&self, state: &str, expires_at: i64) -> Result<(), ()> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let now = clock::now_ms();
        if used.len() >= MAX_STATES {
            used.retain(|_, until| *until > now);
        }
        if used.len() >= MAX_STATES {
            // Full of live states: refuse rather than forget one (a flood
            // of sign-ins, each rate-limited per address, ends in minutes).
            return Err(());
        }
        match used.insert(auth::hash_secret(state), expires_at) {
            None => Ok(()),
            Some(_) => Err(()),
        }
    }

    async fn metadata(&self, issuer: &str) -> Result<Arc<CoreProviderMetadata>, ApiError> {
        {
            let cache = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, m)) = cache.get(issuer) {
                if at.elapsed() < METADATA_TTL {
                    return Ok(m.clone());
                }
            }
        }
        let url = IssuerUrl::new(issuer.to_owned()).map_err(|e| bad_gateway(e.to_string()))?;
        let agent = self.http.clone();
        let client = move |req| fetch(agent.clone(), req);
        // Checks that the document's issuer is this one, and fetches the keys.
        let m = CoreProviderMetadata::discover_async(url, &client)
            .await
            .map_err(|e| bad_gateway(format!("discovery at {issuer}: {}", error_chain(&e))))?;
        check_endpoints(issuer, &m)?;
        let m = Arc::new(m);
        let mut cache = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(issuer.to_owned(), (Instant::now(), m.clone()));
        Ok(m)
    }
}

/// One request to a provider, on the blocking pool (ureq is blocking),
/// redirects refused, the answer bounded. Takes its agent by value so the
/// future borrows nothing (openidconnect's client is any such function).
async fn fetch(
    agent: ureq::Agent,
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    tokio::task::spawn_blocking(move || {
        let res = agent.run(req).map_err(|e| HttpError(e.to_string()))?;
        let (parts, body) = res.into_parts();
        let bytes = body
            .into_with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| HttpError(e.to_string()))?;
        Ok(openidconnect::HttpResponse::from_parts(parts, bytes))
    })
    .await
    .map_err(|e| HttpError(e.to_string()))?
}

#[derive(Debug)]
struct HttpError(String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpError {}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn bad_gateway(why: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", why)
}

/// `https`, or `http` to a loopback host (a provider beside the server,
/// tests): a plain-HTTP issuer elsewhere would hand tokens to the network.
fn check_url(what: &str, url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{what} must be an absolute URL"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    if name.is_empty() {
        return Err(format!("{what} has no host"));
    }
    match scheme {
        "https" => Ok(()),
        "http" if matches!(name, "127.0.0.1" | "localhost" | "::1") => Ok(()),
        _ => Err(format!(
            "{what} must be https (http only on 127.0.0.1, ::1 or localhost)"
        )),
    }
}

/// The endpoints discovery named follow the issuer's rule too.
fn check_endpoints(issuer: &str, m: &CoreProviderMetadata) -> Result<(), ApiError> {
    let mut urls = vec![
        (
            "authorization_endpoint",
            m.authorization_endpoint().as_str(),
        ),
        ("jwks_uri", m.jwks_uri().as_str()),
    ];
    if let Some(t) = m.token_endpoint() {
        urls.push(("token_endpoint", t.as_str()));
    } else {
        return Err(bad_gateway(format!("{issuer} names no token endpoint")));
    }
    for (what, url) in urls {
        check_url(what, url).map_err(|why| bad_gateway(format!("{issuer}: {why}")))?;
    }
    Ok(())
}

// ---- provider configuration ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProvider {
    name: String,
    issuer: String,
    client_id: String,
    client_secret: String,
    /// The ID token claim that names the role (default `groups`).
    #[serde(default)]
    role_claim: Option<String>,
    /// Claim value → `admin` | `operator` | `viewer`.
    #[serde(default)]
    role_map: HashMap<String, String>,
    /// The role of a user none of whose values maps; absent: refused.
    #[serde(default)]
    default_role: Option<String>,
}

#[derive(Serialize)]
pub struct ProviderView {
    name: String,
    issuer: String,
    client_id: String,
    role_claim: String,
    role_map: serde_json::Value,
    default_role: Option<Role>,
    /// Where the provider must send users back (register it there).
    redirect_uri: String,
    created_at: String,
}

fn view(p: &OidcProviderRow, base: &str) -> ProviderView {
    ProviderView {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        client_id: p.client_id.clone(),
        role_claim: p.role_claim.clone(),
        role_map: serde_json::from_str(&p.role_map).unwrap_or_default(),
        default_role: p.default_role,
        redirect_uri: redirect_uri(base),
        created_at: clock::rfc3339(p.created_at),
    }
}

fn redirect_uri(base: &str) -> String {
    format!("{}{CALLBACK_PATH}", base.trim_end_matches('/'))
}

fn check_provider_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PROVIDER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "provider name must be 1 to {MAX_PROVIDER_NAME} of a-z A-Z 0-9 . _ -"
        )))
    }
}

fn sealed_name(provider_id: &str) -> String {
    format!("oidc/{provider_id}")
}

/// `POST /api/v1/sso/providers` (tenant admin).
pub async fn create_provider(
    caller: Caller,
    State(state): State<UsersCtx>,
    JsonBody(req): JsonBody<NewProvider>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    let tenant = caller.tenant_admin()?.to_owned();
    check_provider_name(&req.name)?;
    if req.issuer.len() > MAX_URL {
        return Err(ApiError::bad_request(format!(
            "issuer must be at most {MAX_URL} bytes"
        )));
    }
    check_url("issuer", &req.issuer).map_err(ApiError::bad_request)?;
    IssuerUrl::new(req.issuer.clone())
        .map_err(|e| ApiError::bad_request(format!("issuer: {e}")))?;
    let bounded = |what: &str, v: &str, max: usize| {
        if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
            Err(ApiError::bad_request(format!(
                "{what} must be 1 to {max} bytes without control characters"
            )))
        } else {
            Ok(())
        }
    };
    bounded("client_id", &req.client_id, MAX_CLIENT_ID)?;
    bounded("client_secret", &req.client_secret, MAX_CLIENT_SECRET)?;
    let role_claim = req.role_claim.unwrap_or_else(|| "groups".to_owned());
    bounded("role_claim", &role_claim, MAX_CLAIM_NAME)?;
    if req.role_map.len() > MAX_ROLE_MAP {
        return Err(ApiError::bad_request(format!(
            "role_map may have at most {MAX_ROLE_MAP} entries"
        )));
    }
    let mut role_map = serde_json::Map::new();
    for (value, role) in &req.role_map {
        bounded("a role_map value", value, MAX_ROLE_VALUE)?;
        role_map.insert(value.clone(), parse_role(role)?.as_str().into());
    }
    let default_role = req.default_role.as_deref().map(parse_role).transpose()?;
    if role_map.is_empty() && default_role.is_none() {
        return Err(ApiError::bad_request(
            "give role_map and/or default_role: otherwise nobody could log in",
        ));
    }
    if state.db.users.oidc_providers(&tenant).await?.len() >= MAX_PROVIDERS {
        return Err(ApiError::conflict(format!(
            "a tenant has at most {MAX_PROVIDERS} providers"
        )));
    }
    let id = auth::new_id("op_")?;
    let (nonce, sealed) = state
        .secrets
        .seal(&tenant, &sealed_name(&id), req.client_secret.as_bytes())
        .map_err(ApiError::internal)?;
    let row = OidcProviderRow {
        id,
        tenant_id: tenant,
        name: req.name,
        issuer: req.issuer,
        client_id: req.client_id,
        secret_nonce: nonce,
        secret_sealed: sealed,
        role_claim,
        role_map: serde_json::Value::Object(role_map).to_string(),
        default_role,
        created_at: clock::now_ms(),
    };
    state.db.users.create_oidc_provider(&row).await?;
    Ok((StatusCode::CREATED, Json(view(&row, &state.base_url))))
}

/// `GET /api/v1/sso/providers` (tenant admin): without their secrets.
pub async fn list_providers(
    caller: Caller,
    State(state): State<UsersCtx>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    let tenant = caller.tenant_admin()?;
    let rows = state.db.users.oidc_providers(tenant).await?;
    Ok(Json(
        rows.iter().map(|p| view(p, &state.base_url)).collect(),
    ))
}

/// `DELETE /api/v1/sso/providers/{name}` (tenant admin): its users stay,
/// but can no longer sign in through it.
pub async fn delete_provider(
    caller: Caller,
    State(state): State<UsersCtx>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant_admin()?;
    if state.db.users.delete_oidc_provider(tenant, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no provider {name} in this tenant"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginPolicy {
    password_login: bool,
}

/// `PUT /api/v1/sso/password-login` (tenant admin): `{"password_login": false}`
/// refuses password logins from then on and ends the password users'
/// sessions. Refused while the tenant has no provider (nobody could log in).
pub async fn set_password_login(
    caller: Caller,
    State(state): State<UsersCtx>,
    JsonBody(req): JsonBody<LoginPolicy>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = caller.tenant_admin()?;
    if !req.password_login && state.db.users.oidc_providers(tenant).await?.is_empty() {
        return Err(ApiError::conflict(
            "add a single sign-on provider before switching password login off",
        ));
    }
    state
        .db
        .users
        .set_password_login(tenant, req.password_login)
        .await?;
    Ok(Json(
        serde_json::json!({ "password_login": req.password_login }),
    ))
}

#[derive(Deserialize)]
pub struct TenantQuery {
    tenant: String,
}

/// `GET /api/v1/sso/options?tenant=` (anyone: the login page's "Sign in
/// with …" buttons): the tenant's provider names and whether passwords
/// work. That is all it tells before authentication: no issuer, client id
/// or role mapping (the admin's `GET /api/v1/sso/providers` has those); an
/// unknown tenant answers like one without providers, so only a tenant
/// with providers is seen to exist. Bounded: at most [`MAX_PROVIDERS`]
/// names of [`MAX_PROVIDER_NAME`] bytes, and rated like a login
/// (`edge::login_rate`), so walking tenant names is as slow as guessing
/// passwords.
pub async fn options(
    State(state): State<UsersCtx>,
    Query(q): Query<TenantQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut providers = Vec::new();
    let mut password_login = true;
    if !q.tenant.is_empty() && q.tenant.len() <= super::MAX_TENANT_LEN {
        if let Some(tenant) = state.db.control.tenant_id_by_id_or_name(&q.tenant).await? {
            password_login = state.db.users.password_login(&tenant).await?;
            providers = state
                .db
                .users
                .oidc_providers(&tenant)
                .await?
                .into_iter()
                .map(|p| p.name)
                .collect();
        }
    }
    Ok(Json(serde_json::json!({
        "password_login": password_login,
        "providers": providers,
    })))
}

// ---- the sign-in ------------------------------------------------------------------------------

/// What the flow cookie carries, sealed.
#[derive(Serialize, Deserialize)]
struct Flow {
    /// Tenant id.
    t: String,
    /// Provider id.
    p: String,
    /// state, nonce, PKCE verifier.
    s: String,
    n: String,
    v: String,
    /// Expiry, Unix ms.
    e: i64,
}

const FLOW_AAD: &str = "sso-flow";
/// The cookie's value is at most this long (base64 of a sealed [`Flow`]).
const MAX_FLOW_COOKIE: usize = 2048;

fn flow_cookie(value: &str, max_age_secs: u64) -> HeaderValue {
    let c = format!(
        "{FLOW_COOKIE}={value}; Path={CALLBACK_PATH}; HttpOnly; Secure; SameSite=Lax; Max-Age={max_age_secs}"
    );
    HeaderValue::from_str(&c).expect("cookie is ASCII")
}

fn seal_flow(state: &UsersCtx, flow: &Flow) -> Result<String, ApiError> {
    let json = serde_json::to_vec(flow).map_err(ApiError::internal)?;
    let (mut nonce, sealed) = state
        .secrets
        .seal(FLOW_AAD, "", &json)
        .map_err(ApiError::internal)?;
    nonce.extend_from_slice(&sealed);
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce))
}

fn open_flow(state: &UsersCtx, headers: &HeaderMap) -> Option<Flow> {
    let value = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == FLOW_COOKIE)
        .map(|(_, v)| v)?;
    if value.len() > MAX_FLOW_COOKIE {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    if raw.len() < 12 {
        return None;
    }
    let (nonce, sealed) = raw.split_at(12);
    let json = state.secrets.open(FLOW_AAD, "", nonce, sealed).ok()?;
    serde_json::from_slice(&json).ok()
}

#[derive(Deserialize)]
pub struct LoginQuery {
    tenant: String,
    provider: String,
}

/// `GET /api/v1/sso/login?tenant=&provider=` (anyone; the login rate):
/// to the provider, with a fresh state, nonce and PKCE challenge.
pub async fn login(
    State(state): State<UsersCtx>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    if q.tenant.is_empty() || q.tenant.len() > super::MAX_TENANT_LEN {
        return Err(ApiError::bad_request("tenant must be 1 to 64 characters"));
    }
    check_provider_name(&q.provider)?;
    let no_such = || ApiError::not_found("no such single sign-on provider in this tenant");
    let tenant = state
        .db
        .control
        .tenant_id_by_id_or_name(&q.tenant)
        .await?
        .ok_or_else(no_such)?;
    let provider = state
        .db
        .users
        .oidc_provider(&tenant, &q.provider)
        .await?
        .ok_or_else(no_such)?;
    let client = client_for(&state, &provider).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    let flow = Flow {
        t: tenant,
        p: provider.id,
        s: csrf.secret().clone(),
        n: nonce.secret().clone(),
        v: verifier.secret().clone(),
        e: clock::now_ms() + FLOW_TTL.as_millis() as i64,
    };
    let cookie = seal_flow(&state, &flow)?;
    let mut res = StatusCode::SEE_OTHER.into_response();
    let location = HeaderValue::from_str(url.as_str()).map_err(ApiError::internal)?;
    res.headers_mut().insert(LOCATION, location);
    res.headers_mut()
        .insert(SET_COOKIE, flow_cookie(&cookie, FLOW_TTL.as_secs()));
    Ok(res)
}

type Client = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

async fn client_for(state: &UsersCtx, p: &OidcProviderRow) -> Result<Client, ApiError> {
    let metadata = state.sso.metadata(&p.issuer).await?;
    let secret = state
        .secrets
        .open(
            &p.tenant_id,
            &sealed_name(&p.id),
            &p.secret_nonce,
            &p.secret_sealed,
        )
        .map_err(ApiError::internal)?;
    let secret = String::from_utf8(secret).map_err(ApiError::internal)?;
    let redirect = RedirectUrl::new(redirect_uri(&state.base_url)).map_err(ApiError::internal)?;
    Ok(CoreClient::from_provider_metadata(
        (*metadata).clone(),
        ClientId::new(p.client_id.clone()),
        Some(ClientSecret::new(secret)),
    )
    .set_redirect_uri(redirect))
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

/// Every claim of the ID token beyond the standard ones, for the role claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extra(serde_json::Map<String, serde_json::Value>);

impl AdditionalClaims for Extra {}

type RoleIdToken =
    IdToken<Extra, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// Why a callback was refused: the code the page and the trail show, and
/// what the page tells the user.
struct Refusal {
    code: &'static str,
    status: u16,
    message: String,
}

fn refuse(code: &'static str, status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        status,
        message: message.into(),
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        refuse(e.code, e.status.as_u16(), e.message)
    }
}

impl From<crate::db::StorageError> for Refusal {
    fn from(e: crate::db::StorageError) -> Self {
        ApiError::from(e).into()
    }
}

/// Who signed in, for the trail.
#[derive(Default)]
struct Attempt {
    tenant: Option<String>,
    provider: String,
    subject: String,
    user: Option<UserRow>,
}

/// `GET /api/v1/sso/callback` (the provider sends the browser here).
pub async fn callback(
    State(state): State<UsersCtx>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
    peer: Option<axum::Extension<PeerAddr>>,
) -> Response {
    let mut attempt = Attempt::default();
    let result = finish(&state, &q, &headers, &mut attempt).await;
    let client = peer.map(|p| p.0 .0.ip().to_string()).unwrap_or_default();
    let (status, detail) = match &result {
        Ok(_) => (200, String::new()),
        Err(r) => (r.status, r.code.to_owned()),
    };
    let (kind, id, label) = match &attempt.user {
        Some(u) => ("user", u.id.clone(), u.name.clone()),
        None => ("none", String::new(), Clip(&attempt.subject).to_string()),
    };
    let params = serde_json::json!({ "provider": attempt.provider, "subject": Clip(&attempt.subject).to_string() });
    let entry = NewEntry {
        at_ms: clock::now_ms(),
        tenant_id: attempt.tenant.clone(),
        actor_kind: kind.to_owned(),
        actor_id: id,
        actor_label: label,
        client,
        action: "sso login".to_owned(),
        target: attempt.provider.clone(),
        params: params.to_string(),
        result: status,
        detail,
    };
    if let Err(e) = state.db.trail.append(entry).await {
        tracing::error!("audit trail: cannot append: {e}");
    }
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    // The flow is over either way.
    h.append(SET_COOKIE, flow_cookie("", 0));
    match result {
        Ok((secret, ttl_secs)) => {
            tracing::info!(provider = %attempt.provider, user = ?attempt.user.as_ref().map(|u| &u.name), "single sign-on");
            h.append(SET_COOKIE, super::cookie(&secret, ttl_secs));
            h.insert(LOCATION, HeaderValue::from_static("/"));
        }
        Err(r) => {
            tracing::info!(provider = %attempt.provider, code = r.code, "single sign-on refused: {}", Clip(&r.message));
            let frag: String = url_escape(&format!("{}: {}", r.code, r.message));
            let loc = HeaderValue::from_str(&format!("/#sso_error={frag}"))
                .unwrap_or_else(|_| HeaderValue::from_static("/#sso_error=sso_failed"));
            h.insert(LOCATION, loc);
        }
    }
    res
}

/// Percent-encode all but unreserved characters (for the fragment).
fn url_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes().take(512) {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn finish(
    state: &UsersCtx,
    q: &CallbackQuery,
    headers: &HeaderMap,
    attempt: &mut Attempt,
) -> Result<(String, i64), Refusal> {
    for v in [&q.code, &q.state, &q.iss, &q.error].into_iter().flatten() {
        if v.len() > MAX_PARAM {
            return Err(refuse(
                "bad_request",
                400,
                "a callback parameter is too long",
            ));
        }
    }
    let flow = open_flow(state, headers).ok_or_else(|| {
        refuse(
            "no_flow",
            400,
            "no sign-in was started in this browser (or it was made elsewhere): start again",
        )
    })?;
    attempt.tenant = Some(flow.t.clone());
    let provider = state
        .db
        .users
        .oidc_providers(&flow.t)
        .await?
        .into_iter()
        .find(|p| p.id == flow.p)
        .ok_or_else(|| refuse("no_provider", 400, "the provider was removed: start again"))?;
    attempt.provider = provider.name.clone();
    if flow.e < clock::now_ms() {
        return Err(refuse(
            "expired",
            400,
            "the sign-in took too long: start again",
        ));
    }
    if let Some(error) = &q.error {
        return Err(refuse(
            "provider_refused",
            401,
            format!("the provider refused: {}", Clip(error)),
        ));
    }
    // Login CSRF: the state must be the one sealed in this browser's cookie.
    let sent = q.state.as_deref().unwrap_or("");
    if !auth::hashes_equal(&auth::hash_secret(sent), &auth::hash_secret(&flow.s)) {
        return Err(refuse(
            "state_mismatch",
            403,
            "the sign-in's state does not match this browser's",
        ));
    }
    if state.sso.take_state(&flow.s, flow.e).is_err() {
        return Err(refuse(
            "replayed",
            403,
            "this sign-in was already used: start again",
        ));
    }
    // RFC 9207: a provider that names itself must be the one the flow chose.
    if let Some(iss) = &q.iss {
        if iss != &provider.issuer {
            return Err(refuse(
                "issuer_mismatch",
                403,
                "the answer came from another issuer",
            ));
        }
    }
    let code = q
        .code
        .clone()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| refuse("bad_request", 400, "no code in the callback"))?;
    let client = client_for(state, &provider).await?;
    let agent = state.sso.http.clone();
    let http = move |req| fetch(agent.clone(), req);
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| refuse("provider_error", 502, e.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(flow.v.clone()))
        .request_async(&http)
        .await
        .map_err(|e| {
            refuse(
                "token_refused",
                401,
                format!("the token request failed: {}", error_chain(&e)),
            )
        })?;
    let raw = tokens
        .id_token()
        .ok_or_else(|| refuse("no_id_token", 502, "the provider sent no ID token"))?
        .to_string();
    // Parsed again with every claim kept, for the configurable role claim.
    let id_token: RoleIdToken = raw
        .parse()
        .map_err(|e| refuse("bad_id_token", 401, format!("ID token: {e}")))?;
    let verifier = client.id_token_verifier();
    let claims = id_token
        .claims(&verifier, &Nonce::new(flow.n.clone()))
        .map_err(|e| {
            refuse(
                "bad_id_token",
                401,
                format!("ID token: {}", error_chain(&e)),
            )
        })?;
    let subject = claims.subject().as_str().to_owned();
    attempt.subject = subject.clone();
    let role = role_of(
        &provider,
        claims.additional_claims().0.get(&provider.role_claim),
    )
    .ok_or_else(|| {
        refuse(
            "no_role",
            403,
            format!(
                "your account has no {:?} claim that maps to a role in this tenant: ask its admin",
                provider.role_claim
            ),
        )
    })?;
    let user = match state.db.users.oidc_user(&provider.id, &subject).await? {
        Some(mut user) => {
            if user.role != role {
                state
                    .db
                    .users
                    .update_user(&user.tenant_id, &user.name, Some(role), None)
                    .await?;
                user.role = role;
            }
            user
        }
        None => {
            let preferred = claims.preferred_username().map(|u| u.as_str().to_owned());
            let email = claims.email().map(|e| e.as_str().to_owned());
            let name = [preferred, email, Some(subject.clone())]
                .into_iter()
                .flatten()
                .find(|n| check_user_name(n).is_ok())
                .unwrap_or_else(|| format!("sso-{}", &auth::hash_secret(&subject)[..16]));
            let user = UserRow {
                id: auth::new_id("us_").map_err(ApiError::from)?,
                tenant_id: flow.t.clone(),
                name,
                password_hash: NO_PASSWORD.to_owned(),
                role,
                created_at: clock::now_ms(),
            };
            match state.db.users.create_oidc_user(&user, &provider.id, &subject).await {
                Ok(()) => user,
                Err(crate::db::StorageError::Conflict(_)) => {
                    return Err(refuse(
                        "name_taken",
                        409,
                        format!(
                            "a user named {:?} already exists in this tenant and is not linked to this provider: ask its admin",
                            user.name
                        ),
                    ))
                }
                Err(e) => return Err(ApiError::from(e).into()),
            }
        }
    };
    attempt.user = Some(user.clone());
    let (secret, _) = super::new_session(state, &user).await?;
    Ok((secret, state.tuning.session_ttl.as_secs() as i64))
}

/// The highest role any of the claim's values maps to, else the default.
fn role_of(p: &OidcProviderRow, claim: Option<&serde_json::Value>) -> Option<Role> {
    let map: HashMap<String, String> = serde_json::from_str(&p.role_map).unwrap_or_default();
    let values: Vec<&str> = match claim {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    let rank = |r: Role| match r {
        Role::Admin => 3,
        Role::Operator => 2,
        Role::Viewer => 1,
    };
    values
        .into_iter()
        .filter_map(|v| map.get(v).and_then(|r| Role::parse(r)))
        .max_by_key(|r| rank(*r))
        .or(p.default_role)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(map: &str, default_role: Option<Role>) -> OidcProviderRow {
        OidcProviderRow {
            id: "op_1".into(),
            tenant_id: "tn_1".into(),
            name: "corp".into(),
            issuer: "https://id.example".into(),
            client_id: "c".into(),
            secret_nonce: vec![],
            secret_sealed: vec![],
            role_claim: "groups".into(),
            role_map: map.into(),
            default_role,
            created_at: 0,
        }
    }

    #[test]
    fn the_highest_mapped_role_wins_else_the_default_else_none() {
        let p = provider(
            r#"{"ops":"operator","admins":"admin","all":"viewer"}"#,
            None,
        );
        let v = |j: &str| serde_json::from_str::<serde_json::Value>(j).unwrap();
        assert_eq!(
            role_of(&p, Some(&v(r#"["all","admins","ops"]"#))),
            Some(Role::Admin)
        );
        assert_eq!(role_of(&p, Some(&v(r#""ops""#))), Some(Role::Operator));
        assert_eq!(role_of(&p, Some(&v(r#"["other"]"#))), None);
        assert_eq!(role_of(&p, None), None);
        assert_eq!(role_of(&p, Some(&v("3"))), None);
        let p = provider("{}", Some(Role::Viewer));
        assert_eq!(role_of(&p, None), Some(Role::Viewer));
    }

    #[test]
    fn issuers_are_https_or_loopback_http() {
        assert!(check_url("issuer", "https://id.example/realms/x").is_ok());
        assert!(check_url("issuer", "http://127.0.0.1:9000").is_ok());
        assert!(check_url("issuer", "http://[::1]:9000/").is_ok());
        assert!(check_url("issuer", "http://localhost/").is_ok());
        for bad in [
            "http://id.example",
            "http://127.0.0.1.evil.example/",
            "http://localhost@evil.example/",
            "ftp://id.example",
            "id.example",
            "https:///x",
        ] {
            assert!(check_url("issuer", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn states_are_taken_once() {
        let sso = Sso::default();
        let later = clock::now_ms() + 60_000;
        assert!(sso.take_state("abc", later).is_ok());
        assert!(sso.take_state("abc", later).is_err());
        assert!(sso.take_state("abd", later).is_ok());
    }
}
