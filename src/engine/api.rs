//! Engine API: version negotiation, the requests the runner sends (as
//! [`Request`] values, nothing is sent here) and the answers it reads.
//!
//! Negotiation, once per connection to a (possibly upgraded) engine:
//!
//! ```text
//!  GET /version (unversioned) ─▶ ApiVersion, MinAPIVersion ─▶ negotiate() ─▶ Api::new(v)
//!    (or GET /_ping ─▶ Api-Version header ─▶ negotiate(max, None))
//!  every later path is /v{v}/…; a 400 "client version … is too old/new"
//!  (ApiError::is_version_refused) means the engine changed: negotiate again.
//! ```
//!
//! We speak 1.41 (Engine 20.10) to 1.52 (Engine 29). Engine 25 and later
//! refuse versions below 1.44 and Engine 20.10 refuses above 1.41, so we
//! take the engine's newest, capped at ours. Nothing we send or read changed
//! meaning in between; what did change is noted where it bites.

use super::stream::Timestamp;
use crate::net::http::{path_segment, Head, HttpError, Method, Request, Response};
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// An Engine API version, `1.41`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    pub major: u16,
    pub minor: u16,
}

impl ApiVersion {
    pub const fn new(major: u16, minor: u16) -> ApiVersion {
        ApiVersion { major, minor }
    }

    /// `"1.41"`; nothing else (no `v`, no patch).
    pub fn parse(s: &str) -> Option<ApiVersion> {
        let (major, minor) = s.trim().split_once('.')?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(major) || !digits(minor) {
            return None;
        }
        Some(ApiVersion {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Engine 20.10, the oldest engine we support.
pub const OLDEST_SUPPORTED: ApiVersion = ApiVersion::new(1, 41);
/// Engine 29. Newer engines still accept it.
pub const NEWEST_SUPPORTED: ApiVersion = ApiVersion::new(1, 52);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    Http(HttpError),
    /// The socket answers HTTP, but not as a Docker engine would.
    NotDocker(&'static str),
    BadVersion(String),
    /// The engine's newest API is older than ours.
    EngineTooOld {
        engine: ApiVersion,
    },
    /// The engine refuses every version we speak.
    EngineTooNew {
        engine_min: ApiVersion,
    },
    /// An error answer; `message` is the engine's, unchanged.
    Engine {
        status: u16,
        message: String,
    },
    /// A success answer we could not read.
    Json(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Http(e) => write!(f, "docker socket: {e}"),
            ApiError::NotDocker(why) => write!(f, "not a docker engine: {why}"),
            ApiError::BadVersion(v) => write!(f, "docker engine sent a bad api version {v:?}"),
            ApiError::EngineTooOld { engine } => write!(
                f,
                "docker engine speaks api {engine}, older than {OLDEST_SUPPORTED} (docker 20.10)"
            ),
            ApiError::EngineTooNew { engine_min } => write!(
                f,
                "docker engine needs api {engine_min} or newer, we speak up to {NEWEST_SUPPORTED}"
            ),
            ApiError::Engine { status, message } => {
                write!(f, "docker engine ({status}): {message}")
            }
            ApiError::Json(e) => write!(f, "unexpected answer from docker engine: {e}"),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::Http(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> Self {
        ApiError::Http(e)
    }
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Engine { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// "No such container/image/exec".
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// "Container is not running", "name already in use", "removal in progress".
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// The engine refused our API version, as after an engine upgrade under
    /// a running runner: negotiate again.
    pub fn is_version_refused(&self) -> bool {
        matches!(self, ApiError::Engine { status: 400, message } if message.starts_with("client version "))
    }
}

// ---------------------------------------------------------------------------
// Negotiation

/// The version to speak: the engine's newest, capped at ours, and refused
/// when the ranges do not meet. `engine_min` is unknown after a bare ping.
pub fn negotiate(
    engine_max: ApiVersion,
    engine_min: Option<ApiVersion>,
) -> Result<ApiVersion, ApiError> {
    let chosen = engine_max.min(NEWEST_SUPPORTED);
    if chosen < OLDEST_SUPPORTED {
        return Err(ApiError::EngineTooOld { engine: engine_max });
    }
    if let Some(min) = engine_min {
        if min > chosen {
            return Err(ApiError::EngineTooNew { engine_min: min });
        }
    }
    Ok(chosen)
}

/// The engine's newest API version from a `/_ping` answer. A server without
/// the `Api-Version` header is something else on the socket.
pub fn engine_version_from_ping(head: &Head) -> Result<ApiVersion, ApiError> {
    if !head.is_success() {
        return Err(ApiError::NotDocker("/_ping did not answer 200"));
    }
    let v = head.header("api-version").ok_or(ApiError::NotDocker(
        "no Api-Version header in the /_ping answer",
    ))?;
    ApiVersion::parse(v).ok_or_else(|| ApiError::BadVersion(v.to_owned()))
}

/// Negotiate from a `GET /version` answer.
pub fn negotiate_from_version(info: &VersionInfo) -> Result<ApiVersion, ApiError> {
    let max = ApiVersion::parse(&info.api_version)
        .ok_or_else(|| ApiError::BadVersion(info.api_version.clone()))?;
    let min = match info.min_api_version.as_deref() {
        None | Some("") => None,
        Some(v) => Some(ApiVersion::parse(v).ok_or_else(|| ApiError::BadVersion(v.to_owned()))?),
    };
    negotiate(max, min)
}

// ---------------------------------------------------------------------------
// Answers

/// Longest engine message we keep when the error body is not JSON.
const MAX_MESSAGE: usize = 1024;

/// The engine's message from an error body: `{"message": "..."}` unchanged,
/// or the body text, or the reason phrase.
pub fn engine_message(head: &Head, body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<ErrorMessage>(body) {
        if e.message.is_empty() {
            return head.reason.clone();
        }
        return e.message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return head.reason.clone();
    }
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Turn an error status (4xx, 5xx) into [`ApiError::Engine`]. 1xx-3xx pass:
/// Docker's 304 means "already started/stopped", which callers treat as done.
pub fn check(resp: Response) -> Result<Response, ApiError> {
    if resp.head.status < 400 {
        return Ok(resp);
    }
    Err(ApiError::Engine {
        status: resp.head.status,
        message: engine_message(&resp.head, &resp.body),
    })
}

/// [`check`], then read the body as JSON.
pub fn parse_json<T: DeserializeOwned>(resp: Response) -> Result<T, ApiError> {
    let resp = check(resp)?;
    serde_json::from_slice(&resp.body).map_err(|e| ApiError::Json(e.to_string()))
}

/// Docker sends `null` for empty lists and maps in places (`ImagesDeleted`,
/// `Warnings`, `Labels` of some objects); read it as empty.
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorMessage {
    pub message: String,
}

/// `GET /version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "Version", default)]
    pub version: String,
    #[serde(rename = "ApiVersion", default)]
    pub api_version: String,
    #[serde(rename = "MinAPIVersion", default)]
    pub min_api_version: Option<String>,
    #[serde(rename = "Os", default)]
    pub os: String,
    #[serde(rename = "Arch", default)]
    pub arch: String,
    #[serde(rename = "KernelVersion", default)]
    pub kernel_version: String,
    #[serde(rename = "GitCommit", default)]
    pub git_commit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Port {
    #[serde(rename = "IP", default)]
    pub ip: Option<String>,
    #[serde(rename = "PrivatePort")]
    pub private_port: u16,
    #[serde(rename = "PublicPort", default)]
    pub public_port: Option<u16>,
    #[serde(rename = "Type", default)]
    pub kind: String,
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerSummary {
    #[serde(rename = "Id")]
    pub id: String,
    /// With the leading `/` Docker puts there.
    #[serde(rename = "Names", default, deserialize_with = "null_default")]
    pub names: Vec<String>,
    #[serde(rename = "Image", default)]
    pub image: String,
    #[serde(rename = "ImageID", default)]
    pub image_id: String,
    #[serde(rename = "Command", default)]
    pub command: String,
    /// Unix seconds.
    #[serde(rename = "Created", default)]
    pub created: i64,
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited`, `dead`.
    #[serde(rename = "State", default)]
    pub state: String,
    /// Human text: "Up 5 minutes", "Exited (0) 8 seconds ago".
    #[serde(rename = "Status", default)]
    pub status: String,
    #[serde(rename = "Ports", default, deserialize_with = "null_default")]
    pub ports: Vec<Port>,
    #[serde(rename = "Labels", default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// The parts of `GET /containers/{id}/json` the runner reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerInspect {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Created", default)]
    pub created: String,
    #[serde(rename = "RestartCount", default)]
    pub restart_count: u64,
    #[serde(rename = "State", default)]
    pub state: ContainerState,
    #[serde(rename = "Config", default)]
    pub config: ContainerConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ContainerState {
    #[serde(rename = "Status", default)]
    pub status: String,
    #[serde(rename = "Running", default)]
    pub running: bool,
    #[serde(rename = "Paused", default)]
    pub paused: bool,
    #[serde(rename = "Restarting", default)]
    pub restarting: bool,
    #[serde(rename = "OOMKilled", default)]
    pub oom_killed: bool,
    #[serde(rename = "Pid", default)]
    pub pid: i64,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i64,
    #[serde(rename = "Error", default)]
    pub error: String,
    #[serde(rename = "StartedAt", default)]
    pub started_at: String,
    #[serde(rename = "FinishedAt", default)]
    pub finished_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ContainerConfig {
    /// Decides the framing of logs and attach: see [`super::stream`].
    #[serde(rename = "Tty", default)]
    pub tty: bool,
    #[serde(rename = "Image", default)]
    pub image: String,
    #[serde(rename = "Labels", default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// `POST /containers/create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedContainer {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Warnings", default, deserialize_with = "null_default")]
    pub warnings: Vec<String>,
}

/// `POST /containers/{id}/exec`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedExec {
    #[serde(rename = "Id")]
    pub id: String,
}

/// `GET /exec/{id}/json`: the exit code once the hijacked stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExecInspect {
    #[serde(rename = "Running", default)]
    pub running: bool,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: Option<i64>,
    #[serde(rename = "Pid", default)]
    pub pid: i64,
}

/// `POST /containers/prune`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrunedContainers {
    #[serde(
        rename = "ContainersDeleted",
        default,
        deserialize_with = "null_default"
    )]
    pub deleted: Vec<String>,
    #[serde(rename = "SpaceReclaimed", default)]
    pub space_reclaimed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeletedImage {
    #[serde(rename = "Untagged", default)]
    pub untagged: Option<String>,
    #[serde(rename = "Deleted", default)]
    pub deleted: Option<String>,
}

/// `POST /images/prune`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrunedImages {
    #[serde(rename = "ImagesDeleted", default, deserialize_with = "null_default")]
    pub deleted: Vec<DeletedImage>,
    #[serde(rename = "SpaceReclaimed", default)]
    pub space_reclaimed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Actor {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Attributes", default, deserialize_with = "null_default")]
    pub attributes: BTreeMap<String, String>,
}

/// One line of `GET /events`. Only the fields every engine sends: API 1.52
/// dropped the old `status`, `id` and `from`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// `container`, `image`, `network`, …
    #[serde(rename = "Type", default)]
    pub kind: String,
    /// `create`, `start`, `die`, `destroy`, `exec_create: sh -c …`, `health_status: healthy`, …
    #[serde(rename = "Action", default)]
    pub action: String,
    #[serde(rename = "Actor", default)]
    pub actor: Actor,
    #[serde(rename = "scope", default)]
    pub scope: String,
    /// Unix seconds.
    #[serde(rename = "time", default)]
    pub time: i64,
    /// Unix nanoseconds.
    #[serde(rename = "timeNano", default)]
    pub time_nano: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ProgressDetail {
    #[serde(default)]
    pub current: Option<u64>,
    #[serde(default)]
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
}

/// One line of a build or pull progress stream. These streams answer 200
/// before the work starts, so a failure arrives as a line with `error`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ProgressLine {
    /// Build output text.
    #[serde(default)]
    pub stream: Option<String>,
    /// Pull status: "Pulling fs layer", "Downloading", …
    #[serde(default)]
    pub status: Option<String>,
    /// Layer id for pull lines.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub progress: Option<String>,
    #[serde(rename = "progressDetail", default)]
    pub progress_detail: Option<ProgressDetail>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(rename = "errorDetail", default)]
    pub error_detail: Option<ErrorDetail>,
    /// Build results (`{"ID": "sha256:…"}`).
    #[serde(default)]
    pub aux: Option<serde_json::Value>,
}

impl ProgressLine {
    /// The engine's message when this line reports a failure.
    pub fn error_message(&self) -> Option<&str> {
        self.error_detail
            .as_ref()
            .and_then(|d| d.message.as_deref())
            .or(self.error.as_deref())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CpuUsage {
    #[serde(default)]
    pub total_usage: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CpuStats {
    #[serde(default)]
    pub cpu_usage: CpuUsage,
    #[serde(default)]
    pub system_cpu_usage: Option<u64>,
    #[serde(default)]
    pub online_cpus: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct MemoryStats {
    #[serde(default)]
    pub usage: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
}

/// The parts of `GET /containers/{id}/stats?stream=0` the runner reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Stats {
    #[serde(default)]
    pub read: String,
    #[serde(default)]
    pub cpu_stats: CpuStats,
    #[serde(default)]
    pub precpu_stats: CpuStats,
    #[serde(default)]
    pub memory_stats: MemoryStats,
}

impl Stats {
    /// CPU use over the sample, in percent of one CPU (as `docker stats`).
    pub fn cpu_percent(&self) -> Option<f64> {
        let cpu = self
            .cpu_stats
            .cpu_usage
            .total_usage
            .checked_sub(self.precpu_stats.cpu_usage.total_usage)?;
        let system = self
            .cpu_stats
            .system_cpu_usage?
            .checked_sub(self.precpu_stats.system_cpu_usage?)?;
        if system == 0 {
            return None;
        }
        let cpus = f64::from(self.cpu_stats.online_cpus.unwrap_or(1).max(1));
        Some(cpu as f64 / system as f64 * cpus * 100.0)
    }
}

// ---------------------------------------------------------------------------
// Requests

/// Docker's `filters` query parameter: `{"label":["a=b"],"type":["container"]}`.
/// The list form is what every engine from 1.41 on reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn new() -> Filters {
        Filters::default()
    }

    pub fn add(mut self, key: &str, value: &str) -> Filters {
        self.0
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_json(&self) -> String {
        // A map of strings to lists of strings always serializes.
        serde_json::to_string(&self.0).unwrap_or_default()
    }
}

/// `GET /containers/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsOptions {
    pub follow: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Prefix every line with its RFC 3339 time ([`super::stream::split_log_timestamp`]).
    pub timestamps: bool,
    /// Last `n` lines; `None` for all.
    pub tail: Option<u64>,
    /// Resume after a reconnect: lines at or after this time.
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl Default for LogsOptions {
    fn default() -> Self {
        LogsOptions {
            follow: false,
            stdout: true,
            stderr: true,
            timestamps: true,
            tail: None,
            since: None,
            until: None,
        }
    }
}

/// `POST /containers/{id}/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecConfig {
    #[serde(rename = "AttachStdin")]
    pub attach_stdin: bool,
    #[serde(rename = "AttachStdout")]
    pub attach_stdout: bool,
    #[serde(rename = "AttachStderr")]
    pub attach_stderr: bool,
    /// Decides the framing of the hijacked stream: see [`super::stream`].
    #[serde(rename = "Tty")]
    pub tty: bool,
    #[serde(rename = "Cmd")]
    pub cmd: Vec<String>,
    #[serde(rename = "Env", skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(rename = "WorkingDir", skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(rename = "User", skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `[height, width]`; engines before API 1.42 ignore it (resize instead).
    #[serde(rename = "ConsoleSize", skip_serializing_if = "Option::is_none")]
    pub console_size: Option<[u16; 2]>,
}

/// `POST /build` (the classic builder, which streams JSON lines; BuildKit
/// needs a gRPC session we do not speak).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    pub tag: Option<String>,
    /// Path of the Dockerfile inside the context.
    pub dockerfile: Option<String>,
    pub rm: bool,
    pub forcerm: bool,
    pub nocache: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            tag: None,
            dockerfile: None,
            rm: true,
            forcerm: true,
            nocache: false,
        }
    }
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// Request builders for one negotiated API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Api {
    version: ApiVersion,
}

impl Api {
    pub fn new(version: ApiVersion) -> Api {
        Api { version }
    }

    pub fn version(&self) -> ApiVersion {
        self.version
    }

    /// `GET /_ping`, unversioned: it is how the version is found. Answers
    /// `OK` with the engine's newest version in `Api-Version`.
    pub fn ping() -> Request {
        Request::get("/_ping")
    }

    /// `HEAD /_ping`: the same headers, no body (Engine 19.03 and later).
    pub fn ping_head() -> Request {
        Request::head("/_ping")
    }

    /// `GET /version`, unversioned, for [`negotiate_from_version`].
    pub fn version_info() -> Request {
        Request::get("/version")
    }

    fn path(&self, rest: &str) -> String {
        format!("/v{}{rest}", self.version)
    }

    fn container(&self, id: &str, action: &str) -> String {
        self.path(&format!("/containers/{}{action}", path_segment(id)))
    }

    pub fn list_containers(&self, all: bool, filters: &Filters) -> Request {
        let mut req = Request::get(self.path("/containers/json"));
        if all {
            req = req.query("all", "1");
        }
        if !filters.is_empty() {
            req = req.query("filters", &filters.to_json());
        }
        req
    }

    pub fn inspect_container(&self, id: &str) -> Request {
        Request::get(self.container(id, "/json"))
    }

    /// 204 started, 304 already running.
    pub fn start(&self, id: &str) -> Request {
        Request::post(self.container(id, "/start"))
    }

    /// 204 stopped, 304 already stopped. The engine answers only after the
    /// grace period `t` (seconds): the request timeout must exceed it.
    pub fn stop(&self, id: &str, timeout_secs: Option<u32>) -> Request {
        let t = timeout_secs.map(|t| t.to_string());
        Request::post(self.container(id, "/stop")).query_opt("t", t.as_deref())
    }

    pub fn restart(&self, id: &str, timeout_secs: Option<u32>) -> Request {
        let t = timeout_secs.map(|t| t.to_string());
        Request::post(self.container(id, "/restart")).query_opt("t", t.as_deref())
    }

    /// 409 when the container is not running.
    pub fn kill(&self, id: &str, signal: Option<&str>) -> Request {
        Request::post(self.container(id, "/kill")).query_opt("signal", signal)
    }

    /// `force` kills a running container first; `volumes` removes its anonymous volumes.
    pub fn remove(&self, id: &str, force: bool, volumes: bool) -> Request {
        Request::delete(self.container(id, ""))
            .query("force", flag(force))
            .query("v", flag(volumes))
    }

    pub fn prune_containers(&self, filters: &Filters) -> Request {
        let req = Request::post(self.path("/containers/prune"));
        if filters.is_empty() {
            return req;
        }
        req.query("filters", &filters.to_json())
    }

    /// `dangling_only` false also removes unused tagged images.
    pub fn prune_images(&self, dangling_only: bool) -> Request {
        let dangling = if dangling_only { "true" } else { "false" };
        Request::post(self.path("/images/prune")).query(
            "filters",
            &Filters::new().add("dangling", dangling).to_json(),
        )
    }

    /// A chunked stream of output, framed by the container's `Tty` (see
    /// [`super::stream::StreamDecoder::for_tty`]); with `follow` it lasts
    /// until the container stops or we close.
    pub fn logs(&self, id: &str, opts: &LogsOptions) -> Request {
        let mut req = Request::get(self.container(id, "/logs"));
        if opts.follow {
            req = req.query("follow", "1");
        }
        req = req
            .query("stdout", flag(opts.stdout))
            .query("stderr", flag(opts.stderr));
        if opts.timestamps {
            req = req.query("timestamps", "1");
        }
        let tail = opts
            .tail
            .map_or_else(|| "all".to_owned(), |n| n.to_string());
        req = req.query("tail", &tail);
        let since = opts.since.map(|t| t.to_query());
        let until = opts.until.map(|t| t.to_query());
        req.query_opt("since", since.as_deref())
            .query_opt("until", until.as_deref())
    }

    /// JSON lines of [`Event`] until `until` (or forever). For the runner:
    /// `Filters::new().add("type", "container")`.
    pub fn events(&self, filters: &Filters, since: Option<i64>, until: Option<i64>) -> Request {
        let (since, until) = (since.map(|s| s.to_string()), until.map(|s| s.to_string()));
        let req = Request::get(self.path("/events"))
            .query_opt("since", since.as_deref())
            .query_opt("until", until.as_deref());
        if filters.is_empty() {
            return req;
        }
        req.query("filters", &filters.to_json())
    }

    /// `config` is the JSON body (`Image`, `Cmd`, `Labels`, `HostConfig`, …),
    /// serialized by the caller so field order and extras stay its own.
    pub fn create_container(&self, name: Option<&str>, config: Vec<u8>) -> Request {
        Request::post(self.path("/containers/create"))
            .query_opt("name", name)
            .json(config)
    }

    pub fn exec_create(&self, container: &str, config: &ExecConfig) -> Request {
        // A struct of strings, bools and lists always serializes.
        let body = serde_json::to_vec(config).unwrap_or_default();
        Request::post(self.container(container, "/exec")).json(body)
    }

    /// Hijacks the connection: `101 UPGRADED` (or 200 from older engines),
    /// then the socket is the process's stdio. We write stdin raw and
    /// half-close (shutdown Write) for EOF; output is multiplexed unless `tty`.
    ///
    /// Write stdin only after the decoder said `Upgraded`: the engine drops
    /// bytes that arrive with the request (its HTTP server had read them
    /// ahead; Engine 20.10 lost them every time we tried).
    pub fn exec_start(&self, exec_id: &str, tty: bool) -> Request {
        let body = format!(r#"{{"Detach":false,"Tty":{tty}}}"#).into_bytes();
        Request::post(self.path(&format!("/exec/{}/start", path_segment(exec_id))))
            .json(body)
            .hijack()
    }

    /// Only for a `tty` exec, after it started.
    pub fn exec_resize(&self, exec_id: &str, height: u16, width: u16) -> Request {
        Request::post(self.path(&format!("/exec/{}/resize", path_segment(exec_id))))
            .query("h", &height.to_string())
            .query("w", &width.to_string())
    }

    pub fn exec_inspect(&self, exec_id: &str) -> Request {
        Request::get(self.path(&format!("/exec/{}/json", path_segment(exec_id))))
    }

    /// One sample. The engine takes about a second: it measures CPU use
    /// between two readings.
    pub fn stats_once(&self, id: &str) -> Request {
        Request::get(self.container(id, "/stats")).query("stream", "0")
    }

    /// Chunked upload of a tar context ([`crate::net::http::encode_chunk`]), then
    /// JSON lines of [`ProgressLine`]; a failed step is a line with `error`.
    pub fn build(&self, opts: &BuildOptions) -> Request {
        Request::new(Method::Post, self.path("/build"))
            .query_opt("t", opts.tag.as_deref())
            .query_opt("dockerfile", opts.dockerfile.as_deref())
            .query("rm", flag(opts.rm))
            .query("forcerm", flag(opts.forcerm))
            .query_opt("nocache", opts.nocache.then_some("1"))
            .chunked("application/x-tar")
    }

    /// Start an exec without attaching: it runs in the background and its
    /// exit code is read with [`exec_inspect`](Self::exec_inspect) (the
    /// deploy's health check needs no output, so no hijacked stream).
    pub fn exec_start_detached(&self, exec_id: &str) -> Request {
        let body = br#"{"Detach":true,"Tty":false}"#.to_vec();
        Request::post(self.path(&format!("/exec/{}/start", path_segment(exec_id)))).json(body)
    }

    /// `POST /containers/{id}/rename?name=`.
    pub fn rename(&self, id: &str, new_name: &str) -> Request {
        Request::post(self.container(id, "/rename")).query("name", new_name)
    }

    /// `PUT /containers/{id}/archive?path=DIR`: unpack a tar into the
    /// container's filesystem (before it starts: the deploy's env file).
    pub fn put_archive(&self, id: &str, dir: &str, tar: Vec<u8>) -> Request {
        Request::new(Method::Put, self.container(id, "/archive"))
            .query("path", dir)
            .body("application/x-tar", tar)
    }

    /// JSON lines of [`ProgressLine`]. A registry that cannot be reached is
    /// an error answer; a failure later is a line with `error`.
    pub fn pull(&self, image: &str, tag: &str) -> Request {
        Request::post(self.path("/images/create"))
            .query("fromImage", image)
            .query("tag", tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ApiVersion {
        ApiVersion::parse(s).unwrap()
    }

    #[test]
    fn parses_versions() {
        assert_eq!(v("1.41"), ApiVersion::new(1, 41));
        assert!(v("1.9") < v("1.41"));
        assert_eq!(v(" 1.52 ").to_string(), "1.52");
        for bad in [
            "", "1", "1.", ".41", "v1.41", "1.41.0", "1.-4", "99999.1", "1.x",
        ] {
            assert_eq!(ApiVersion::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn negotiation() {
        // Engine 20.10: speak its 1.41.
        assert_eq!(negotiate(v("1.41"), Some(v("1.12"))), Ok(v("1.41")));
        // Engine 27: 1.47.
        assert_eq!(negotiate(v("1.47"), Some(v("1.24"))), Ok(v("1.47")));
        // Engine 29 refuses below 1.44; we cap at ours.
        assert_eq!(negotiate(v("1.52"), Some(v("1.44"))), Ok(v("1.52")));
        // A future engine: still ours while it accepts it.
        assert_eq!(negotiate(v("1.60"), Some(v("1.44"))), Ok(NEWEST_SUPPORTED));
        assert_eq!(negotiate(v("1.60"), None), Ok(NEWEST_SUPPORTED));
        // …and a clear error once it does not.
        assert_eq!(
            negotiate(v("1.70"), Some(v("1.53"))),
            Err(ApiError::EngineTooNew {
                engine_min: v("1.53")
            })
        );
        // Engine 19.03 and older.
        assert_eq!(
            negotiate(v("1.40"), None),
            Err(ApiError::EngineTooOld { engine: v("1.40") })
        );
        // Inconsistent engine (min above max) is refused, not trusted.
        assert!(negotiate(v("1.41"), Some(v("1.44"))).is_err());
    }

    #[test]
    fn error_messages_are_short_and_keep_the_engines_words() {
        let e = ApiError::Engine {
            status: 404,
            message: "No such container: x".into(),
        };
        assert_eq!(e.to_string(), "docker engine (404): No such container: x");
        assert!(e.is_not_found());
        let e = ApiError::Engine {
            status: 400,
            message: "client version 1.41 is too old. Minimum supported API version is 1.44, please upgrade your client to a newer version".into(),
        };
        assert!(e.is_version_refused());
        assert_eq!(
            ApiError::EngineTooNew {
                engine_min: v("1.53")
            }
            .to_string(),
            "docker engine needs api 1.53 or newer, we speak up to 1.52"
        );
    }

    #[test]
    fn paths_are_encoded_segments() {
        let api = Api::new(v("1.41"));
        let req = api.inspect_container("../../images/x");
        assert_eq!(req.target(), "/v1.41/containers/..%2F..%2Fimages%2Fx/json");
        let req = api.kill("a b", Some("SIGKILL"));
        assert_eq!(req.target(), "/v1.41/containers/a%20b/kill?signal=SIGKILL");
    }

    #[test]
    fn logs_query() {
        let api = Api::new(v("1.47"));
        let opts = LogsOptions {
            follow: true,
            tail: Some(100),
            since: Some(Timestamp {
                secs: 1_700_000_000,
                nanos: 5,
            }),
            ..LogsOptions::default()
        };
        assert_eq!(
            api.logs("web", &opts).target(),
            "/v1.47/containers/web/logs?follow=1&stdout=1&stderr=1&timestamps=1&tail=100&since=1700000000.000000005"
        );
    }

    #[test]
    fn stats_cpu_percent() {
        let s = Stats {
            cpu_stats: CpuStats {
                cpu_usage: CpuUsage { total_usage: 300 },
                system_cpu_usage: Some(2000),
                online_cpus: Some(2),
            },
            precpu_stats: CpuStats {
                cpu_usage: CpuUsage { total_usage: 100 },
                system_cpu_usage: Some(1000),
                online_cpus: Some(2),
            },
            ..Stats::default()
        };
        assert_eq!(s.cpu_percent(), Some(40.0));
        assert_eq!(Stats::default().cpu_percent(), None);
    }
}
