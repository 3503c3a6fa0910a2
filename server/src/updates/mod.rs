//! Releases and self-update: the server stores signed releases, serves them
//! for download (the runners' updater and `install.sh`), keeps the desired
//! version per tenant or group with a canary share, tells connected runners
//! (`update` message) and records what they report (`update_status`).
//!
//! The server never signs and never vouches: runners verify every binary
//! against keys installed on the host. A release is a version holding what
//! `build.sh release` made: `tether-<arch>`, `tether-<arch>.minisig`,
//! `manifest.json` and `manifest.json.minisig`, kept by the
//! [`ReleaseStore`](crate::db::ReleaseStore) (`db/releases.rs`): as files
//! in `<data-dir>/releases/<version>/` with SQLite, as rows in the
//! database with PostgreSQL, so every replica serves and offers every
//! release. Uploads and downloads stream through it. Downloads need no
//! token (the files are public and signed); uploads need the admin token.
//!
//! ```text
//!  operator ─ upload (admin) ─▶ ReleaseStore (data dir | PostgreSQL)
//!  operator ─ PUT policy {version, canary_percent, group} ─▶ storage ─▶ `update` to each connected
//!                                                                    runner it selects
//!  operator ─ PUT runners/{id}/desired-version, POST desired-version {selector | runners}
//!            ─▶ a runner's own desired version (over its policy; fleet/versions.rs) ─▶ `update`
//!  runner connects ─▶ welcome ─▶ `update` if its policy selects it and it runs another version
//!  runner ─ update_status ─▶ update_reports (installed / failed / rejected / interrupted)
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tether::protocol::{encode_control, Message, UpdateOffer};

use crate::common::auth::runner_in_tenant;
use crate::common::auth::Caller;
use crate::common::clock;
use crate::common::error::ApiError;
use crate::common::http::JsonBody;
use crate::db::releases::Upload;
use crate::db::Db;
use crate::db::UpdatePolicy;
use crate::link::registry::Registry;

pub mod link;
mod policy;

use self::policy::Offer;
pub use self::policy::{bucket, compare_versions, valid_file_name, valid_version};

/// What this feature's handlers use, built by `app/` from its state
/// (`FromRef`), so the feature never names the app's state.
#[derive(Clone)]
pub struct UpdatesCtx {
    pub db: Db,
    pub registry: Arc<Registry>,
    /// What install.sh says (the releases are `db.releases`).
    pub releases: Arc<ReleaseConfig>,
    /// The `group` label follows the update group (the seam to `fleet/`).
    pub fleet: crate::fleet::labels::LabelsCtx,
    /// Policy changes, for the event stream and the other replicas
    /// (`common/bus.rs`).
    pub bus: Arc<crate::common::bus::Bus>,
}

/// Releases (upload, list, download), install.sh, the update policy and
/// groups, a runner's update reports.
pub fn routes<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    UpdatesCtx: axum::extract::FromRef<S>,
    crate::common::auth::AuthCtx: axum::extract::FromRef<S>,
{
    use axum::routing::{get, post, put};
    axum::Router::new()
        .route("/api/v1/releases", get(list_releases))
        .route(
            "/api/v1/releases/{version}/{file}",
            // Streamed to the store after the admin check (`upload`).
            post(upload),
        )
        .route("/releases/{version}/{file}", get(download))
        .route("/install.sh", get(install_sh))
        .route("/api/v1/update-policy", put(set_policy).get(get_policy))
        .route("/api/v1/runners/{id}/group", put(set_group))
        .route(
            "/api/v1/runners/{id}/desired-version",
            put(set_runner_version),
        )
        .route("/api/v1/desired-version", post(set_versions))
        .route("/api/v1/runners/{id}/updates", get(runner_updates))
}

pub use crate::db::releases::{ReleaseFile, ReleaseInfo, MAX_RELEASE_FILE};

/// What `install.sh` is told (the releases themselves are in the
/// [`Db`]'s `releases` store).
#[derive(Debug, Clone, Default)]
pub struct ReleaseConfig {
    /// The minisign public keys `install.sh` writes on the host (the
    /// operator's, from `--release-keys`); the first install trusts the
    /// HTTPS connection to this server for them.
    pub install_keys: Option<String>,
    /// The URL runners and `install.sh` use for this server (`--public-url`).
    pub public_url: Option<String>,
    /// Without `public_url`: the `Host` names (`host` or `host:port`) whose
    /// request gets `https://<Host>` in `install.sh` (`--allowed-hosts`).
    pub allowed_hosts: Vec<String>,
    /// Without either: where this server listens (its `server.url`).
    pub listen_url: Option<String>,
}

impl ReleaseConfig {
    /// The server URL `install.sh` tells a new host: `--public-url`, else
    /// `https://<Host>` if the request's Host is in `--allowed-hosts`, else
    /// the listening address. Never a Host nobody allowed: anyone can send
    /// any Host, and a cached or proxied install.sh would then enroll
    /// hosts with the sender's server.
    pub fn install_url(&self, host: Option<&str>) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        if let Some(host) =
            host.filter(|h| self.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h)))
        {
            return format!("https://{}", host.to_ascii_lowercase());
        }
        self.listen_url
            .clone()
            .unwrap_or_else(|| "https://localhost".to_owned())
    }
}

/// Uploads at once (each holds a database connection with PostgreSQL,
/// and a chunk of memory); more are answered 429.
const MAX_UPLOADS: usize = 4;
static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_UPLOADS);

/// A release file's bytes may pause this long between chunks.
const UPLOAD_IDLE: Duration = Duration::from_secs(30);
/// Largest `manifest.json` (read back to check it names its version).
const MAX_MANIFEST: u64 = 1024 * 1024;

/// `POST /api/v1/releases/{version}/{file}` (admin): the raw bytes of one file.
///
/// The caller and the names are checked before a byte of the body is read
/// (a tenant token sending 60 MB gets its 403 at once, and with `Expect:
/// 100-continue` never sends them); then the body is streamed to a
/// release store (`db/releases.rs`), at most [`MAX_RELEASE_FILE`] bytes
/// and [`UPLOAD_IDLE`] between chunks, and seen by no one until whole: a
/// body cut short leaves nothing.
pub async fn upload(
    State(state): State<UpdatesCtx>,
    caller: Caller,
    Path((version, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ReleaseFile>), ApiError> {
    if let Err(e) = refusal(&caller, &version, &name) {
        drain_refused(&headers, body);
        return Err(e);
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_RELEASE_FILE as u64) {
        return Err(crate::common::edge::too_large(MAX_RELEASE_FILE as u64));
    }
    let Ok(_turn) = UPLOADS.try_acquire() else {
        drain_refused(&headers, body);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{MAX_UPLOADS} release uploads are running; try again when one is done"),
        ));
    };
    let mut upload = state.db.releases.upload(&version, &name).await?;
    let manifest = receive(body, upload.as_mut(), name == "manifest.json").await?;
    if let Some(bytes) = manifest {
        check_manifest(&bytes, &version)?;
    }
    let stored = upload.finish().await?;
    tracing::info!(
        version,
        file = name,
        size = stored.size,
        sha256 = stored.sha256,
        "release file stored"
    );
    Ok((
        StatusCode::CREATED,
        Json(ReleaseFile {
            name,
            size: stored.size,
        }),
    ))
}

/// Why an upload is refused before its body is read (the caller, the
/// names).
fn refusal(caller: &Caller, version: &str, name: &str) -> Result<(), ApiError> {
    caller.admin()?;
    if !valid_version(version) {
        return Err(ApiError::bad_request(format!(
            "{version:?} is not a version"
        )));
    }
    if !valid_file_name(name) {
        return Err(ApiError::bad_request(format!(
            "{name:?} is not a release file name"
        )));
    }
    Ok(())
}

/// The body of a refused upload is read and dropped in the background
/// while the answer goes out at once: a client that writes its whole body
/// before it reads (ureq, the operator CLI) would otherwise meet a reset
/// connection instead of the 403. Nothing is kept (no memory), at most
/// [`MAX_RELEASE_FILE`] bytes, [`UPLOAD_IDLE`] between chunks. A client
/// that sent `Expect: 100-continue` (curl) is waiting for the answer and
/// never sends the body: reading it would ask for it, so it is left.
fn drain_refused(headers: &HeaderMap, body: Body) {
    let expects = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        return;
    }
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut chunks = body.into_data_stream();
        let mut seen = 0u64;
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(UPLOAD_IDLE, chunks.next()).await {
            seen += chunk.len() as u64;
            if seen > MAX_RELEASE_FILE as u64 {
                break;
            }
        }
    });
}

/// Stream `body` into `upload`; with `keep`, its bytes too (at most
/// [`MAX_MANIFEST`]: a manifest is read back to be checked).
async fn receive(
    body: Body,
    upload: &mut dyn Upload,
    keep: bool,
) -> Result<Option<Vec<u8>>, ApiError> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut size = 0u64;
    let mut kept = keep.then(Vec::new);
    loop {
        let chunk = match tokio::time::timeout(UPLOAD_IDLE, chunks.next()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    tether::protocol::api_error::BAD_REQUEST,
                    format!(
                        "the upload stalled: no data for {} s",
                        UPLOAD_IDLE.as_secs()
                    ),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!("reading the upload: {e}")))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        size += chunk.len() as u64;
        if size > MAX_RELEASE_FILE as u64 {
            return Err(crate::common::edge::too_large(MAX_RELEASE_FILE as u64));
        }
        if let Some(k) = kept.as_mut() {
            if size > MAX_MANIFEST {
                return Err(ApiError::bad_request(format!(
                    "manifest.json is larger than {MAX_MANIFEST} bytes"
                )));
            }
            k.extend_from_slice(&chunk);
        }
        upload.write(&chunk).await?;
    }
    Ok(kept)
}

/// A `manifest.json` must be JSON and name the version it is uploaded as.
fn check_manifest(bytes: &[u8], version: &str) -> Result<(), ApiError> {
    let manifest: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("manifest.json is not JSON: {e}")))?;
    if manifest.get("version").and_then(|v| v.as_str()) != Some(version) {
        return Err(ApiError::bad_request(format!(
            "manifest.json is not for version {version}"
        )));
    }
    Ok(())
}

/// Every release the store holds with a valid version, newest first, each
/// with its valid file names.
async fn list(state: &UpdatesCtx) -> Result<Vec<ReleaseInfo>, ApiError> {
    let mut out: Vec<ReleaseInfo> = state
        .db
        .releases
        .list()
        .await?
        .into_iter()
        .filter(|r| valid_version(&r.version))
        .map(|r| {
            let files = r
                .files
                .into_iter()
                .filter(|f| valid_file_name(&f.name))
                .collect();
            ReleaseInfo::new(r.version, files)
        })
        .collect();
    out.sort_by(|a, b| compare_versions(&b.version, &a.version));
    Ok(out)
}

/// `GET /api/v1/releases` (admin or tenant).
pub async fn list_releases(
    State(state): State<UpdatesCtx>,
    _caller: Caller,
) -> Result<Json<Vec<ReleaseInfo>>, ApiError> {
    Ok(Json(list(&state).await?))
}

/// `GET /releases/{version}/{file}`: public download; `latest` is the
/// newest release that has the file.
pub async fn download(
    State(state): State<UpdatesCtx>,
    Path((version, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !valid_file_name(&name) || !(version == "latest" || valid_version(&version)) {
        return Err(ApiError::not_found("no such release file"));
    }
    let version = if version == "latest" {
        list(&state)
            .await?
            .into_iter()
            .find(|r| r.files.iter().any(|f| f.name == name))
            .map(|r| r.version)
            .ok_or_else(|| ApiError::not_found("no such release file"))?
    } else {
        version
    };
    // Streamed chunk by chunk from the store: a fleet updating at once
    // must not hold a copy of the binary per download in memory.
    let download = state
        .db
        .releases
        .open(&version, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("no such release file"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, download.size.to_string()),
        ],
        Body::from_stream(download.chunks),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// `null` removes the policy.
    pub version: Option<String>,
    #[serde(default = "hundred")]
    pub canary_percent: u8,
    #[serde(default)]
    pub group: String,
}

fn hundred() -> u8 {
    100
}

/// `PUT /api/v1/update-policy` (tenant): desired version for the tenant
/// (or a group), with a canary share. Tells connected runners at once.
pub async fn set_policy(
    State(state): State<UpdatesCtx>,
    caller: Caller,
    JsonBody(req): JsonBody<PolicyRequest>,
) -> Result<Json<Vec<UpdatePolicy>>, ApiError> {
    let tenant = caller.tenant()?.to_owned();
    policy::check_request(&req.group, req.canary_percent).map_err(ApiError::bad_request)?;
    match &req.version {
        Some(v) => {
            check_release(&state, v).await?;
            state
                .db
                .updates
                .set_update_policy(
                    &tenant,
                    &UpdatePolicy {
                        group: req.group.clone(),
                        version: v.clone(),
                        canary_percent: req.canary_percent,
                        updated_at: clock::now_ms(),
                    },
                )
                .await?;
            tracing::info!(
                tenant,
                group = req.group,
                version = v,
                canary = req.canary_percent,
                "desired version set"
            );
        }
        None => {
            state
                .db
                .updates
                .clear_update_policy(&tenant, &req.group)
                .await?;
        }
    }
    for runner_id in state.registry.connected(&tenant) {
        if let Some(offer) = offer_for(&state, &tenant, &runner_id).await? {
            let text = encode_control(0, Message::Update(offer));
            state.registry.notify(&tenant, &runner_id, text);
        }
    }
    // The event streams; other replicas offer it to the runners they hold
    // (`app/cluster.rs`).
    state.bus.publish(
        &tenant,
        crate::common::bus::POLICY,
        serde_json::json!({
            "policy": crate::common::bus::UPDATE_POLICY,
            "group": req.group,
            "version": req.version,
            "canary_percent": req.canary_percent,
        }),
    );
    Ok(Json(state.db.updates.update_policies(&tenant).await?))
}

/// `GET /api/v1/update-policy` (tenant).
pub async fn get_policy(
    State(state): State<UpdatesCtx>,
    caller: Caller,
) -> Result<Json<Vec<UpdatePolicy>>, ApiError> {
    let tenant = caller.tenant()?;
    Ok(Json(state.db.updates.update_policies(tenant).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRequest {
    pub group: String,
}

/// `PUT /api/v1/runners/{id}/group` (tenant).
pub async fn set_group(
    State(state): State<UpdatesCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<GroupRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = caller.tenant()?;
    policy::check_group(&req.group).map_err(ApiError::bad_request)?;
    if !state
        .db
        .updates
        .set_runner_group(tenant, &id, &req.group)
        .await?
    {
        return Err(ApiError::runner_not_found(&id));
    }
    // The group is the label `group` too (fleet/labels.rs).
    crate::fleet::labels::group_set(&state.fleet, tenant, &id, &req.group).await;
    Ok(Json(
        serde_json::json!({"runner_id": id, "group": req.group}),
    ))
}

/// `GET /api/v1/runners/{id}/updates` (tenant): group, desired version and reports.
pub async fn runner_updates(
    State(state): State<UpdatesCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = caller.tenant()?;
    let runner = runner_in_tenant(&state.db, tenant, &id).await?;
    let desired = desired_version(&state, tenant, &runner.id).await?;
    let reports: Vec<serde_json::Value> = state
        .db
        .updates
        .update_reports(&runner.id)
        .await?
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "at": clock::rfc3339(r.at),
                "version": r.status.version,
                "state": r.status.state,
                "from_version": r.status.from_version,
                "reason": r.status.reason,
                "took_ms": r.status.took_ms,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "runner_id": runner.id,
        "version": runner.version,
        "group": state.db.updates.runner_group(&runner.id).await?.unwrap_or_default(),
        "desired": desired,
        "desired_version": crate::fleet::versions::own(&state.fleet, tenant, &runner.id).await?,
        "reports": reports,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerVersionRequest {
    /// `null` drops the runner's own version (its policy applies again).
    pub version: Option<String>,
}

/// A version a runner is told to run: a release the store has (on any
/// replica: with PostgreSQL they share it).
async fn check_release(state: &UpdatesCtx, v: &str) -> Result<(), ApiError> {
    if !valid_version(v) || !state.db.releases.exists(v).await? {
        return Err(ApiError::bad_request(format!(
            "no release {v:?} on this server (upload it first)"
        )));
    }
    Ok(())
}

/// Store the runners' own desired version and tell the connected ones.
async fn set_own_versions(
    state: &UpdatesCtx,
    tenant: &str,
    runners: &[String],
    version: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(v) = version {
        check_release(state, v).await?;
    }
    state
        .fleet
        .store
        .set_desired_version(tenant, runners, version, clock::now_ms())
        .await?;
    tracing::info!(
        tenant,
        runners = runners.len(),
        version = version.unwrap_or("(policy)"),
        "runner desired version set"
    );
    for r in runners {
        offer_now(state, tenant, r).await?;
    }
    Ok(())
}

/// Send the runner its offer if it is connected and one is due.
async fn offer_now(state: &UpdatesCtx, tenant: &str, runner: &str) -> Result<(), ApiError> {
    if let Some(offer) = offer_for(state, tenant, runner).await? {
        let text = encode_control(0, Message::Update(offer));
        state.registry.notify(tenant, runner, text);
    }
    Ok(())
}

/// `PUT /api/v1/runners/{id}/desired-version` (tenant): this runner's own
/// desired version, over its update policy.
pub async fn set_runner_version(
    State(state): State<UpdatesCtx>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RunnerVersionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = caller.tenant()?;
    let runner = runner_in_tenant(&state.db, tenant, &id).await?;
    set_own_versions(
        &state,
        tenant,
        std::slice::from_ref(&runner.id),
        req.version.as_deref(),
    )
    .await?;
    Ok(Json(serde_json::json!({
        "runner_id": runner.id,
        "desired_version": req.version,
        "desired": desired_version(&state, tenant, &runner.id).await?,
    })))
}

/// Most runners one bulk desired-version change names.
const MAX_BULK_VERSION: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkVersionRequest {
    /// `null` drops their own version.
    pub version: Option<String>,
    /// Which runners: a selector ...
    #[serde(default)]
    pub selector: Option<String>,
    /// ... or their ids (the dashboard's selection).
    #[serde(default)]
    pub runners: Option<Vec<String>>,
}

/// `POST /api/v1/desired-version` (tenant): the own desired version of
/// every runner a selector (or a list of ids) names; all checked first.
pub async fn set_versions(
    State(state): State<UpdatesCtx>,
    caller: Caller,
    JsonBody(req): JsonBody<BulkVersionRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = caller.tenant()?;
    let ids: Vec<String> = match (&req.selector, &req.runners) {
        (Some(sel), None) => {
            let sel = crate::fleet::labels::parse_selector(sel)?;
            crate::fleet::labels::select(&state.fleet, tenant, &sel)
                .await?
                .into_iter()
                .map(|(r, _)| r.id)
                .collect()
        }
        (None, Some(ids)) => {
            if ids.len() > MAX_BULK_VERSION {
                return Err(ApiError::bad_request(format!(
                    "runners: at most {MAX_BULK_VERSION}"
                )));
            }
            let known: std::collections::HashSet<String> = state
                .db
                .control
                .list_runners(tenant)
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
            if let Some(bad) = ids.iter().find(|id| !known.contains(*id)) {
                return Err(ApiError::runner_not_found(bad));
            }
            ids.clone()
        }
        _ => {
            return Err(ApiError::bad_request(
                "give selector or runners (one of them)",
            ))
        }
    };
    if ids.len() > MAX_BULK_VERSION {
        return Err(ApiError::bad_request(format!(
            "the selector names {} runners; at most {MAX_BULK_VERSION} at once",
            ids.len()
        )));
    }
    set_own_versions(&state, tenant, &ids, req.version.as_deref()).await?;
    Ok(Json(
        serde_json::json!({"changed": ids.len(), "desired_version": req.version}),
    ))
}

/// The fleet's update rollouts reach the updater through this (the seam
/// `fleet::versions::Offers`).
#[async_trait::async_trait]
impl crate::fleet::versions::Offers for UpdatesCtx {
    async fn check_release(&self, version: &str) -> Result<(), ApiError> {
        check_release(self, version).await
    }

    async fn offer(&self, tenant: &str, runner: &str) -> Result<(), ApiError> {
        offer_now(self, tenant, runner).await
    }
}

/// The version this runner should run, if any: its own (set for it
/// alone, fleet/versions.rs), else what its update policy selects.
pub async fn desired_version(
    state: &UpdatesCtx,
    tenant: &str,
    runner_id: &str,
) -> Result<Option<String>, ApiError> {
    let own = crate::fleet::versions::own(&state.fleet, tenant, runner_id).await?;
    let group = state
        .db
        .updates
        .runner_group(runner_id)
        .await?
        .unwrap_or_default();
    let policies = state.db.updates.update_policies(tenant).await?;
    Ok(crate::fleet::versions::desired_of(
        runner_id,
        own.as_deref(),
        &group,
        &policies,
    ))
}

/// The `update` message for a runner, if its policy selects it, it runs
/// another version, and the release has a binary for its architecture.
pub async fn offer_for(
    state: &UpdatesCtx,
    tenant: &str,
    runner_id: &str,
) -> Result<Option<UpdateOffer>, ApiError> {
    let Some(version) = desired_version(state, tenant, runner_id).await? else {
        return Ok(None);
    };
    let Some(runner) = state.db.control.runner(tenant, runner_id).await? else {
        return Ok(None);
    };
    // The store's answers first (async), for the decision (sync); not
    // asked for a runner that runs the version already.
    let binary = format!("tether-{}", runner.arch);
    let signature = format!("{binary}.minisig");
    let (has_binary, has_signature) = if runner.version != version && valid_file_name(&binary) {
        (
            state.db.releases.has(&version, &binary).await?,
            state.db.releases.has(&version, &signature).await?,
        )
    } else {
        (false, false)
    };
    let has = |name: &str| (name == binary && has_binary) || (name == signature && has_signature);
    match policy::offer(&runner.version, &runner.arch, &version, has) {
        Offer::Current => Ok(None),
        Offer::NoSignedBinary => {
            tracing::warn!(
                runner = runner_id,
                version,
                arch = runner.arch,
                "desired release has no signed binary for this architecture"
            );
            Ok(None)
        }
        Offer::Update(offer) => Ok(Some(offer)),
    }
}

const INSTALL_SH: &str = include_str!("../../../packaging/install.sh");
const SYSTEMD_UNIT: &str = include_str!("../../../packaging/systemd/tether.service");
const OPENRC_SCRIPT: &str = include_str!("../../../packaging/openrc/tether");
const PROCD_SCRIPT: &str = include_str!("../../../packaging/procd/tether");

/// `GET /install.sh`: the installer with this server's URL and the
/// operator's release keys filled in.
pub async fn install_sh(State(state): State<UpdatesCtx>, headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let url = state.releases.install_url(host);
    let keys = state
        .releases
        .install_keys
        .as_deref()
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("untrusted comment:") && !l.starts_with('#'))
        .filter(|l| {
            l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        })
        .collect::<Vec<_>>()
        .join(" ");
    let body = INSTALL_SH
        .replace("@SERVER_URL@", &url)
        .replace("@RELEASE_KEYS@", &keys)
        .replacen("@SYSTEMD_UNIT@", SYSTEMD_UNIT.trim_end(), 1)
        .replacen("@OPENRC_SCRIPT@", OPENRC_SCRIPT.trim_end(), 1)
        .replacen("@PROCD_SCRIPT@", PROCD_SCRIPT.trim_end(), 1);
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_url_takes_the_host_header_only_when_allowed() {
        let mut c = ReleaseConfig {
            listen_url: Some("https://127.0.0.1:8443".into()),
            ..Default::default()
        };
        // No --public-url, no --allowed-hosts: the Host sent is ignored.
        assert_eq!(
            c.install_url(Some("evil.example")),
            "https://127.0.0.1:8443"
        );
        assert_eq!(c.install_url(None), "https://127.0.0.1:8443");
        c.allowed_hosts = vec!["tether.example".into(), "tether.example:8443".into()];
        assert_eq!(
            c.install_url(Some("Tether.Example")),
            "https://tether.example"
        );
        assert_eq!(
            c.install_url(Some("tether.example:8443")),
            "https://tether.example:8443"
        );
        assert_eq!(
            c.install_url(Some("evil.example")),
            "https://127.0.0.1:8443"
        );
        c.public_url = Some("https://fleet.example/".into());
        assert_eq!(
            c.install_url(Some("tether.example")),
            "https://fleet.example"
        );
    }
}
