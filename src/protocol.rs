//! The wire protocol between `tether` (runner) and `tether-server`.
//!
//! This module is the one place where message types live. It is compiled
//! without the runner's I/O stack (no mio, no rustls) so the server can depend
//! on it with `default-features = false`. Everything here is sans-IO: values in,
//! bytes out, and the other way round. `docs/protocol.md` is the prose version.
//!
//! Two kinds of WebSocket message travel on the one connection:
//!
//! * **control**: JSON text frames, `{"type": "...", "id": N, ...}`. `id` is the
//!   request id; a reply carries the id of the request it answers.
//! * **data**: binary frames with a fixed 16-byte header ([`FrameHeader`]) and
//!   raw payload bytes (job output, logs, terminal bytes; never base64).
//!
//! Liveness uses WebSocket Ping/Pong control frames (the cheapest thing on the
//! wire): the runner pings every heartbeat interval, the server answers.

use serde::{Deserialize, Serialize};
use std::fmt;

pub mod deploy;
pub mod secret_env;
pub mod signed;

/// Protocol versions this build speaks, newest last.
pub const SUPPORTED_VERSIONS: &[u16] = &[1];
/// The version a runner of this build asks for first.
pub const PROTOCOL_VERSION: u16 = 1;
/// Path of the runner WebSocket endpoint on the server.
pub const RUNNER_CONNECT_PATH: &str = "/v1/runner/connect";
/// Path of the enrollment endpoint (a plain HTTPS POST, before any WebSocket).
pub const ENROLL_PATH: &str = "/api/v1/enroll";
/// Largest control (JSON) message either side accepts.
pub const MAX_CONTROL_MESSAGE: usize = 256 * 1024;
/// Largest payload of one data frame. Senders split bulk output into frames no
/// larger than this so a terminal keystroke never waits behind a huge frame.
pub const MAX_DATA_PAYLOAD: usize = 32 * 1024;
/// Largest WebSocket message the server accepts from a runner (a data frame
/// plus header, or a control message).
pub const MAX_WS_MESSAGE: usize = MAX_CONTROL_MESSAGE;
/// Largest WebSocket message the runner reads. Larger than any control
/// message the server may send ([`MAX_CONTROL_MESSAGE`], which the server
/// checks at its API and again before sending), so that one that is too
/// large anyway (an older server, a bug) is still read whole and answered
/// with a [`TOO_LARGE`] error for its request id: a WebSocket cannot skip
/// the rest of a message it refused mid-frame, so refusing at the frame
/// limit would cost the connection, and the server would send it again.
pub const MAX_RUNNER_READ: usize = 4 * MAX_CONTROL_MESSAGE;
/// Error code (in an `error` answer) for a control message larger than
/// [`MAX_CONTROL_MESSAGE`]; the REST API answers 413 with the same code.
pub const TOO_LARGE: &str = "too_large";

/// WebSocket close codes used by Tether (4000-4999 is the private range).
pub mod close {
    /// Normal close (runner shutting down, server shutting down).
    pub const NORMAL: u16 = 1000;
    /// The peer is going away (process exit).
    pub const GOING_AWAY: u16 = 1001;
    /// A message larger than [`super::MAX_WS_MESSAGE`].
    pub const TOO_BIG: u16 = 1009;
    /// The runner's credential was revoked; do not reconnect.
    pub const REVOKED: u16 = 4002;
    /// No protocol version in common.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4003;
    /// A malformed frame or a message that breaks the protocol.
    pub const PROTOCOL_VIOLATION: u16 = 4004;
    /// A newer connection of the same runner replaced this one.
    pub const REPLACED: u16 = 4006;
    /// No `hello` within the hello timeout.
    pub const HELLO_TIMEOUT: u16 = 4008;
    /// No frame for too long: the peer's watchdog fired.
    pub const WATCHDOG: u16 = 4009;
}

/// One control message: a request id and a typed body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    #[serde(flatten)]
    pub body: Message,
}

/// The catalogue of control messages. `docs/protocol.md` says who sends each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// runner → server, first message after the upgrade.
    Hello(Hello),
    /// server → runner, answer to `hello`: the version settled on and what the
    /// server already holds of each stream.
    Welcome(Welcome),
    /// either way: "answer me" (used by `POST /runners/{id}/ping` for a round
    /// trip through the routing path).
    Ping(Ping),
    /// answer to `ping`, with the same id.
    Pong(Pong),
    /// either way: a request failed, or the sender is about to close.
    Error(ErrorBody),
    /// runner → server: the series of the metrics records that follow
    /// (binary frames of kind [`FrameKind::Metrics`]).
    MetricsSchema(MetricsSchema),
    /// server → runner: every metrics record up to `ts_ms` is stored; the
    /// runner may forget them.
    MetricsAck(MetricsAck),
    /// runner → server: the host fingerprint, in full (first report on each
    /// connection) or as the changes since the previous report.
    Fingerprint(FingerprintReport),
    /// server → runner: "send the full fingerprint next" (the server could
    /// not apply a change list).
    FingerprintResync(Empty),
    /// runner → server: whether the Docker engine answers, and its version.
    /// Sent after `welcome` and whenever it changes.
    DockerState(DockerState),
    /// server → runner: one container-management call on the Engine API.
    DockerRequest(DockerRequest),
    /// runner → server: the engine's answer to a `docker_request`, same id:
    /// its HTTP status and JSON body, unchanged (errors keep Docker's own
    /// `{"message": ...}`).
    DockerResponse(DockerResponse),
    /// runner → server: a container event (start, die, oom, health ...) with
    /// the container's summary after it (`None` once it is destroyed).
    ContainerEvent(ContainerEvent),
    /// runner → server: every container on the host, sent when Docker becomes
    /// available on a connection, so the server's view starts complete.
    ContainerSnapshot(ContainerSnapshot),
    /// server → runner: open data channel `channel` with a container's logs
    /// (answered with `log_opened` or `error`, same id; the lines follow as
    /// DATA frames, and an END frame closes the channel).
    LogOpen(LogOpen),
    /// runner → server: answer to `log_open`: which container it is.
    LogOpened(LogOpened),
    /// server → runner: stop a log channel (the subscriber left). No answer;
    /// the runner sends no more frames on it.
    LogClose(ChannelRef),
    /// server → runner: run a job (answered with `job_accepted` or `error`,
    /// same id). Sent again after a reconnect until accepted; the runner
    /// runs a job id once.
    JobStart(JobStart),
    /// runner → server: the job is known here (queued, running or done).
    JobAccepted(JobAccepted),
    /// server → runner: cancel a job (SIGTERM to its process group, SIGKILL
    /// after a grace period). No answer; the result follows.
    JobCancel(JobRef),
    /// runner → server: how a job ended. Sent until acknowledged.
    JobResult(JobResult),
    /// server → runner: the result is stored; forget it.
    JobResultAck(JobRef),
    /// server → runner: the version this runner should run, and where its
    /// binary and minisign signature are. Sent after `welcome` and when the
    /// operator changes the desired version. The runner decides (signature
    /// against its own trusted keys, no downgrade, not a version that failed
    /// here) and answers with `update_status`.
    Update(UpdateOffer),
    /// runner → server: what became of an update (installed, failed and
    /// rolled back, rejected, interrupted).
    UpdateStatus(UpdateStatus),
    /// server → runner: open an interactive terminal on data channel
    /// `channel` (answered with `term_opened` or `error`, same id).
    TermOpen(TermOpen),
    /// runner → server: answer to `term_open`.
    TermOpened(TermOpened),
    /// server → runner: the client's window size changed.
    TermResize(TermResize),
    /// server → runner: hang the terminal up. No answer; an END frame
    /// follows once the shell is gone.
    TermClose(ChannelRef),
    /// runner → server, after `welcome`: the terminal channels the runner
    /// still holds (the server ends the others).
    TermAlive(TermAlive),
    /// runner → server, after `welcome`: apps whose in-memory secrets are
    /// gone (a host reboot) and whose container Docker could not start for
    /// want of them; the server deploys their current image again.
    SecretsLost(SecretsLost),
}

impl Message {
    /// The `type` tag as it appears on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::Error(_) => "error",
            Message::MetricsSchema(_) => "metrics_schema",
            Message::MetricsAck(_) => "metrics_ack",
            Message::Fingerprint(_) => "fingerprint",
            Message::FingerprintResync(_) => "fingerprint_resync",
            Message::DockerState(_) => "docker_state",
            Message::DockerRequest(_) => "docker_request",
            Message::DockerResponse(_) => "docker_response",
            Message::ContainerEvent(_) => "container_event",
            Message::ContainerSnapshot(_) => "container_snapshot",
            Message::LogOpen(_) => "log_open",
            Message::LogOpened(_) => "log_opened",
            Message::LogClose(_) => "log_close",
            Message::JobStart(_) => "job_start",
            Message::JobAccepted(_) => "job_accepted",
            Message::JobCancel(_) => "job_cancel",
            Message::JobResult(_) => "job_result",
            Message::JobResultAck(_) => "job_result_ack",
            Message::Update(_) => "update",
            Message::UpdateStatus(_) => "update_status",
            Message::TermOpen(_) => "term_open",
            Message::TermOpened(_) => "term_opened",
            Message::TermResize(_) => "term_resize",
            Message::TermClose(_) => "term_close",
            Message::TermAlive(_) => "term_alive",
            Message::SecretsLost(_) => "secrets_lost",
        }
    }

    /// All `type` tags this build understands.
    pub const KNOWN_TYPES: &'static [&'static str] = &[
        "hello",
        "welcome",
        "ping",
        "pong",
        "error",
        "metrics_schema",
        "metrics_ack",
        "fingerprint",
        "fingerprint_resync",
        "docker_state",
        "docker_request",
        "docker_response",
        "container_event",
        "container_snapshot",
        "log_open",
        "log_opened",
        "log_close",
        "job_start",
        "job_accepted",
        "job_cancel",
        "job_result",
        "job_result_ack",
        "update",
        "update_status",
        "term_open",
        "term_opened",
        "term_resize",
        "term_close",
        "term_alive",
        "secrets_lost",
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Versions the runner speaks; the server picks the highest it shares.
    pub protocol: Vec<u16>,
    pub runner_version: String,
    /// `uname -m` style: x86_64, aarch64, armv7l, mips ...
    pub arch: String,
    pub os: String,
    pub hostname: String,
    /// How often the runner pings. The server declares the runner unreachable
    /// after [`silence_limit_ms`] without any frame.
    pub heartbeat_ms: u64,
    /// Capabilities the host owner left switched on (`terminal.host`, ...).
    /// The server cannot turn on what is not listed.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Data channels the runner still holds unacknowledged output for.
    #[serde(default)]
    pub open_channels: Vec<u32>,
    /// How often the runner samples metrics (0: metrics off).
    #[serde(default)]
    pub metrics_interval_ms: u64,
    /// Labels the host owner proposes (`key=value`, `tether run --label`);
    /// the server shows them as proposed until accepted. Left out when
    /// empty, so older servers see the hello they know.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides now speak.
    pub protocol: u16,
    pub runner_id: String,
    pub server_version: String,
    /// Last acknowledged sequence number per channel the server knows of: the
    /// runner resends from here, so nothing is lost and nothing doubled.
    #[serde(default)]
    pub acks: Vec<ChannelAck>,
    /// Timestamp of the newest metrics record the server has stored for this
    /// runner: the runner resends only what is newer (no gap, no duplicate).
    #[serde(default)]
    pub metrics_ts: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSchema {
    pub schema: crate::metrics::wire::Schema,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsAck {
    pub ts_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FingerprintReport {
    /// Collection time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The whole fingerprint (first report on a connection), or `None` when
    /// `changes` holds the difference to the previous report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<Box<crate::fingerprint::Fingerprint>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<crate::fingerprint::Change>,
    /// Collection problems, e.g. "firewall: unavailable (no nft or iptables-save)".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOffer {
    /// The desired version, e.g. `0.2.0`.
    pub version: String,
    /// Path (on the server the runner is connected to) of the binary for
    /// this runner's architecture, e.g. `/releases/0.2.0/tether-x86_64`.
    pub binary: String,
    /// Path of its minisign signature (`<binary>.minisig`).
    pub signature: String,
}

/// `update_status` states.
pub mod update_state {
    /// The new version connected and is healthy.
    pub const INSTALLED: &str = "installed";
    /// The new version did not come up (exited, never connected): the
    /// previous one runs again. Not tried again on this host.
    pub const FAILED: &str = "failed";
    /// Refused before anything changed: bad signature, wrong architecture,
    /// downgrade, download failure, disk full, read-only binary location.
    pub const REJECTED: &str = "rejected";
    /// The runner was stopped in the middle of an update; nothing changed.
    pub const INTERRUPTED: &str = "interrupted";
}

/// What became of an update on one runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub version: String,
    /// One of [`update_state`].
    pub state: String,
    /// The version running when the update started.
    #[serde(default)]
    pub from_version: String,
    /// Why (for every state but `installed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix ms when it happened on the runner.
    #[serde(default)]
    pub at_ms: u64,
    /// Milliseconds from the runner hearing of the version to the new
    /// version connected (`installed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerState {
    pub available: bool,
    /// Engine version, e.g. `20.10.24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The API version the runner negotiated, e.g. `1.41`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Why it is unavailable, e.g. "no socket at /var/run/docker.sock".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Container-management operations the server may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerOp {
    /// `GET /containers/json?all=1` (params: `filters`).
    List,
    /// `GET /containers/{id}/json`.
    Inspect,
    Start,
    /// params: `timeout_s`.
    Stop,
    /// params: `timeout_s`.
    Restart,
    /// params: `signal`.
    Kill,
    /// `DELETE /containers/{id}` (params: `force`, `volumes`).
    Remove,
    /// `POST /containers/prune` (params: `filters`).
    PruneContainers,
    /// `POST /images/prune`, dangling images (params: `filters`).
    PruneImages,
}

/// Error code (answering a `docker_request`) of a call the runner's owner
/// switched off with `--no-container-control`.
pub const CONTAINER_CONTROL_DISABLED: &str = "container_control_disabled";

impl DockerOp {
    /// Its name on the wire (what a signature covers).
    pub fn as_str(self) -> &'static str {
        match self {
            DockerOp::List => "list",
            DockerOp::Inspect => "inspect",
            DockerOp::Start => "start",
            DockerOp::Stop => "stop",
            DockerOp::Restart => "restart",
            DockerOp::Kill => "kill",
            DockerOp::Remove => "remove",
            DockerOp::PruneContainers => "prune_containers",
            DockerOp::PruneImages => "prune_images",
        }
    }

    /// Whether the call changes a container or image (refused by the
    /// runner's `--no-container-control`); only list and inspect do not.
    pub fn changes_state(self) -> bool {
        !matches!(self, DockerOp::List | DockerOp::Inspect)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerRequest {
    pub op: DockerOp,
    /// Container id or name, for the per-container operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub volumes: bool,
    /// Docker filters, e.g. `{"label": ["app=web"], "until": ["24h"]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<serde_json::Value>,
    /// An operator's signature over the operation (`protocol/signed.rs`);
    /// absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<signed::Signed>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerResponse {
    /// The engine's HTTP status (204 and 304 have a null body).
    pub status: u16,
    #[serde(default)]
    pub body: serde_json::Value,
}

/// The fields of a container the server's view keeps (from the list call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    /// `running`, `exited`, `created`, `paused`, `restarting`, `dead`.
    pub state: String,
    /// Docker's human status, e.g. `Up 5 minutes (healthy)`.
    pub status: String,
    /// Unix seconds.
    pub created: i64,
    #[serde(default)]
    pub ports: serde_json::Value,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerEvent {
    /// Docker's `timeNano`.
    pub time_nano: i64,
    /// `start`, `die`, `oom`, `health_status: healthy`, `destroy` ...
    pub action: String,
    pub container_id: String,
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The container after the event; `None` once destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSnapshot {
    pub containers: Vec<ContainerSummary>,
}

/// Terminal channels have this bit set; the server allocates them, so
/// they never collide with log (or other) channels.
pub const TERM_CHANNEL_BIT: u32 = 0x8000_0000;
/// Bytes a terminal may have in flight (read from the shell, not yet
/// acknowledged): the runner's replay buffer and the most a blip keeps.
pub const DEFAULT_TERM_WINDOW: u32 = 256 * 1024;
/// Terminals a runner keeps open at once; more are refused.
pub const MAX_TERMINALS: usize = 64;

/// Open an interactive terminal (docs/protocol.md §4e). Keystrokes come
/// as DATA frames (tag pty) from the server, output goes back the same
/// way; offsets start at 0 in each direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermOpen {
    pub channel: u32,
    /// A container id or name; `None` for a login shell on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Command to run instead of the shell (container: `["sh"]` by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// User inside the container (Docker's `User`); ignored on the host,
    /// whose user is the runner's own configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub cols: u16,
    pub rows: u16,
    /// Hang up after this long without a keystroke or output; 0: never.
    #[serde(default)]
    pub idle_timeout_s: u64,
    /// Keep the shell this long while the link is down; 0: the default (60 s).
    #[serde(default)]
    pub detach_timeout_s: u64,
    /// Bytes in flight before the runner stops reading the terminal; 0: default.
    #[serde(default)]
    pub window: u32,
    /// An operator's signature over the target, command and user
    /// (`protocol/signed.rs`); absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<signed::Signed>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermOpened {
    pub channel: u32,
    /// The shell's pid on the host (container: the exec's host pid, once known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// The host user, or the container's id.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermResize {
    pub channel: u32,
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TermAlive {
    pub channels: Vec<u32>,
}

/// Apps (names) that need their secrets delivered again; at most
/// [`MAX_SECRETS_LOST`] are sent, the server reads no more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretsLost {
    pub apps: Vec<String>,
}

/// Most apps one `secrets_lost` names.
pub const MAX_SECRETS_LOST: usize = 64;

/// Bytes a log channel may have in flight (sent, not acknowledged) unless
/// `log_open` says otherwise.
pub const DEFAULT_LOG_WINDOW: u32 = 256 * 1024;
/// Log channels a runner keeps open at once; more are refused.
pub const MAX_LOG_CHANNELS: usize = 256;

/// Open a container's log stream on a data channel (docs/protocol.md §4b).
///
/// The payload of each DATA frame is whole lines of one stream (tag 1
/// stdout, 2 stderr), each `RFC3339Nano-timestamp SP message LF`, exactly
/// as Docker's `timestamps=1` writes them. Channel offsets start at 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogOpen {
    pub channel: u32,
    /// Container id or name.
    pub container: String,
    #[serde(default)]
    pub follow: bool,
    /// Last `n` lines only (Docker's `tail`); `None` for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
    /// Lines at or after this time (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<i64>,
    /// Of the lines stamped exactly `since_ns`, skip this many: the
    /// receiver has them already (resume without a duplicate).
    #[serde(default)]
    pub skip: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ns: Option<i64>,
    #[serde(default = "yes")]
    pub stdout: bool,
    #[serde(default = "yes")]
    pub stderr: bool,
    /// Collection: stay open while the container stops and starts again,
    /// until it is removed or the server closes the channel. Otherwise a
    /// follow ends when the container stops (as `docker logs -f` does).
    #[serde(default)]
    pub keep: bool,
    /// Bytes in flight before the runner waits for an ACK; 0 for the default.
    #[serde(default)]
    pub window: u32,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogOpened {
    pub channel: u32,
    pub container_id: String,
    pub name: String,
    /// Whether the container has a TTY (then everything is stdout).
    pub tty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRef {
    pub channel: u32,
}

/// Channel numbers: below this, jobs' (the server's job sequence, stable
/// across reconnects); from here up to [`TERM_CHANNEL_BIT`], log channels
/// (numbered per connection); with that bit set, terminals.
pub const FIRST_CONNECTION_CHANNEL: u32 = 0x4000_0000;
/// Each job DATA payload starts with this header: `ts_ms` (u64 BE, the
/// runner's clock when the bytes were read) and `step` (u8).
pub const JOB_RECORD_HEADER: usize = 9;

/// Run a program (with `script` as its `-c` argument, for interpreters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStart {
    pub job_id: String,
    pub channel: u32,
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Run as `program -c script job args…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Secret environment variables: never written to disk, masked as
    /// `***` in the output.
    #[serde(default)]
    pub secrets: Vec<(String, String)>,
    /// 0: no limit.
    #[serde(default)]
    pub timeout_s: u64,
    /// A deployment instead of a program (`program` is then ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Box<deploy::DeploySpec>>,
    /// An operator's signature over all of the above that the runner acts
    /// on (`protocol/signed.rs`); absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<signed::Signed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAccepted {
    pub job_id: String,
    /// `queued`, `running` or `finished`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub job_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: String,
    pub channel: u32,
    /// `succeeded`, `failed`, `cancelled`, `timed_out`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why, for people (empty on success).
    #[serde(default)]
    pub reason: String,
    /// Unix ms; 0 if it never started.
    #[serde(default)]
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Length of the output stream: the server has it all once stored so far.
    pub output_bytes: u64,
}

/// A message with no fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// "Everything of `channel` before `seq` is stored."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAck {
    pub channel: u32,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// Sender's wall clock, milliseconds since the Unix epoch.
    pub sent_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// Echo of `Ping::sent_ms`.
    pub sent_ms: u64,
    /// Responder's wall clock, milliseconds since the Unix epoch.
    pub now_ms: u64,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code (`unsupported_protocol`, `bad_request` ...).
    pub code: String,
    pub message: String,
}

/// The server's silence limit for a runner pinging every `heartbeat_ms`:
/// two and a half intervals, so one late ping is tolerated but a dead link is
/// declared well inside three intervals.
pub fn silence_limit_ms(heartbeat_ms: u64) -> u64 {
    heartbeat_ms.saturating_mul(5) / 2
}

/// The highest version in `offered` that this build also speaks.
pub fn negotiate(offered: &[u16]) -> Option<u16> {
    offered
        .iter()
        .copied()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .max()
}

/// What came out of a text frame.
// Lives only from decode to dispatch (moved once, never stored), so the size
// difference between a known message and an unknown tag does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Known(Envelope),
    /// A well-formed message of a type this build does not know: log and
    /// ignore it, so old and new peers keep talking.
    Unknown {
        type_name: String,
        id: Option<u64>,
    },
}

#[derive(Debug, PartialEq)]
pub enum DecodeError {
    TooLarge(usize),
    /// Not JSON, not an object, or no string `type`.
    Malformed(String),
    /// A known type with missing or ill-typed fields.
    BadFields {
        type_name: String,
        detail: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge(n) => {
                write!(
                    f,
                    "control message of {n} bytes exceeds {MAX_CONTROL_MESSAGE}"
                )
            }
            DecodeError::Malformed(d) => write!(f, "malformed control message: {d}"),
            DecodeError::BadFields { type_name, detail } => {
                write!(f, "bad '{type_name}' message: {detail}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decode one text frame.
pub fn decode_control(text: &str) -> Result<Decoded, DecodeError> {
    if text.len() > MAX_CONTROL_MESSAGE {
        return Err(DecodeError::TooLarge(text.len()));
    }
    // First only the tag, so an unknown type is told apart from a broken one.
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        id: Option<u64>,
    }
    let tag: Tag = serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !Message::KNOWN_TYPES.contains(&tag.kind.as_ref()) {
        return Ok(Decoded::Unknown {
            type_name: tag.kind.into_owned(),
            id: tag.id,
        });
    }
    serde_json::from_str::<Envelope>(text)
        .map(Decoded::Known)
        .map_err(|e| DecodeError::BadFields {
            type_name: tag.kind.into_owned(),
            detail: e.to_string(),
        })
}

/// Encode one control message as the text of a WebSocket frame.
pub fn encode_control(id: u64, body: Message) -> String {
    // Serializing these plain structs cannot fail (no maps with non-string
    // keys other than integers, which serde_json renders as strings).
    serde_json::to_string(&Envelope { id, body }).unwrap_or_default()
}

/// A control message the peer would refuse: its encoded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the message to the runner would be {} bytes; a runner takes at most \
             {MAX_CONTROL_MESSAGE} bytes per message (env, secrets, script and arguments together)",
            self.0
        )
    }
}

impl std::error::Error for TooLarge {}

/// [`encode_control`], refusing what [`decode_control`] on the other side
/// would refuse: the one check both sides share.
pub fn encode_control_checked(id: u64, body: Message) -> Result<String, TooLarge> {
    let text = encode_control(id, body);
    if text.len() > MAX_CONTROL_MESSAGE {
        return Err(TooLarge(text.len()));
    }
    Ok(text)
}

/// The request id of a control message that could not be decoded (too
/// large, or a known type with bad fields), so the refusal can name the
/// request it answers. Reads only `id`, skipping everything else.
pub fn request_id(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    serde_json::from_str::<IdOnly>(text).ok()?.id
}

/// Length of the fixed header in front of every binary frame.
pub const FRAME_HEADER_LEN: usize = 16;

/// What a binary frame carries.
///
/// ```text
///  0        1        2        4                 8                        16
///  +--------+--------+--------+-----------------+------------------------+---------
///  | kind   | tag    | flags  | channel (u32 BE)| seq (u64 BE)           | payload
///  +--------+--------+--------+-----------------+------------------------+---------
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Payload bytes; `seq` is the stream offset of the first payload byte.
    Data = 1,
    /// Receiver has stored everything before `seq`; the sender may drop it.
    Ack = 2,
    /// Receiver allows the sender to send up to stream offset `seq`.
    Credit = 3,
    /// The stream ends at offset `seq`; payload may hold a UTF-8 reason.
    End = 4,
    /// Metrics records (see `crate::metrics::wire`), batched with
    /// `push_to_batch`; channel 0, `seq` 0. Not acknowledged per frame:
    /// the server answers with `metrics_ack` control messages.
    Metrics = 5,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Data),
            2 => Some(FrameKind::Ack),
            3 => Some(FrameKind::Credit),
            4 => Some(FrameKind::End),
            5 => Some(FrameKind::Metrics),
            _ => None,
        }
    }
}

/// Which part of a channel a data frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTag {
    None = 0,
    Stdout = 1,
    Stderr = 2,
    /// Terminal bytes (a PTY has one merged stream).
    Pty = 3,
    /// Runner-generated notes inside a stream (step started, exit status).
    System = 4,
}

impl StreamTag {
    fn from_u8(b: u8) -> Option<StreamTag> {
        match b {
            0 => Some(StreamTag::None),
            1 => Some(StreamTag::Stdout),
            2 => Some(StreamTag::Stderr),
            3 => Some(StreamTag::Pty),
            4 => Some(StreamTag::System),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub tag: StreamTag,
    pub channel: u32,
    pub seq: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than [`FRAME_HEADER_LEN`] bytes.
    Short(usize),
    /// A kind this build does not know (ignore the frame, as with unknown
    /// control types).
    UnknownKind(u8),
    UnknownTag(u8),
    /// Flags are reserved and must be zero in version 1.
    ReservedFlags(u16),
    /// Payload longer than [`MAX_DATA_PAYLOAD`], or any payload on an ACK or
    /// CREDIT frame.
    BadPayload {
        kind: FrameKind,
        len: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Short(n) => write!(
                f,
                "binary frame of {n} bytes is shorter than its {FRAME_HEADER_LEN}-byte header"
            ),
            FrameError::UnknownKind(k) => write!(f, "unknown binary frame kind {k}"),
            FrameError::UnknownTag(t) => write!(f, "unknown stream tag {t}"),
            FrameError::ReservedFlags(x) => write!(f, "reserved frame flags set: {x:#06x}"),
            FrameError::BadPayload { kind, len } => {
                write!(f, "{kind:?} frame with a {len}-byte payload")
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0] = self.kind as u8;
        out[1] = self.tag as u8;
        // out[2..4]: flags, zero in version 1.
        out[4..8].copy_from_slice(&self.channel.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out
    }
}

/// Build a whole binary frame: header then payload.
pub fn encode_frame(header: FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

/// Split a binary frame into its header and payload, checking every field.
pub fn decode_frame(bytes: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Short(bytes.len()));
    }
    let kind = FrameKind::from_u8(bytes[0]).ok_or(FrameError::UnknownKind(bytes[0]))?;
    let tag = StreamTag::from_u8(bytes[1]).ok_or(FrameError::UnknownTag(bytes[1]))?;
    let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
    if flags != 0 {
        return Err(FrameError::ReservedFlags(flags));
    }
    let channel = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    let seq = u64::from_be_bytes(seq);
    let payload = &bytes[FRAME_HEADER_LEN..];
    let payload_ok = match kind {
        FrameKind::Data | FrameKind::End | FrameKind::Metrics => payload.len() <= MAX_DATA_PAYLOAD,
        FrameKind::Ack | FrameKind::Credit => payload.is_empty(),
    };
    if !payload_ok {
        return Err(FrameError::BadPayload {
            kind,
            len: payload.len(),
        });
    }
    Ok((
        FrameHeader {
            kind,
            tag,
            channel,
            seq,
        },
        payload,
    ))
}

/// Error codes of the REST API and of enrollment, shared so the runner can map
/// them to its exit codes. The server answers `{"error": {"code", "message"}}`.
pub mod api_error {
    pub const INVALID_TOKEN: &str = "invalid_token";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const TOKEN_USED: &str = "token_used";
    pub const TOKEN_REVOKED: &str = "token_revoked";
    pub const RUNNER_REVOKED: &str = "runner_revoked";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const CONFLICT: &str = "conflict";
    pub const RUNNER_UNREACHABLE: &str = "runner_unreachable";
    pub const RUNNER_TIMEOUT: &str = "runner_timeout";
    pub const INTERNAL: &str = "internal";
}

/// Body of `POST /api/v1/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    pub hostname: String,
    pub arch: String,
    pub os: String,
    pub version: String,
}

/// Answer to a successful enrollment. `credential` is shown once; the server
/// keeps only its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub runner_id: String,
    pub tenant_id: String,
    pub credential: String,
}

/// The JSON error body of every REST answer that is not 2xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trip() {
        let hello = Message::Hello(Hello {
            protocol: vec![1],
            runner_version: "0.1.0".into(),
            arch: "x86_64".into(),
            os: "linux".into(),
            hostname: "box".into(),
            heartbeat_ms: 5000,
            capabilities: vec!["terminal.host".into()],
            open_channels: vec![],
            metrics_interval_ms: 5000,
            labels: Vec::new(),
        });
        let text = encode_control(7, hello.clone());
        assert!(text.starts_with(r#"{"id":7,"type":"hello""#), "{text}");
        // No labels: the field is left out, as older servers know it.
        assert!(!text.contains("labels"), "{text}");
        assert_eq!(
            decode_control(&text),
            Ok(Decoded::Known(Envelope { id: 7, body: hello }))
        );
    }

    #[test]
    fn hello_labels_are_optional_both_ways() {
        let text = r#"{"id":1,"type":"hello","protocol":[1],"runner_version":"0.1","arch":"x","os":"linux","hostname":"h","heartbeat_ms":5000,"labels":["role=db"]}"#;
        let Ok(Decoded::Known(Envelope {
            body: Message::Hello(h),
            ..
        })) = decode_control(text)
        else {
            panic!("{text}");
        };
        assert_eq!(h.labels, ["role=db"]);
        let old = text.replace(r#","labels":["role=db"]"#, "");
        let Ok(Decoded::Known(Envelope {
            body: Message::Hello(h),
            ..
        })) = decode_control(&old)
        else {
            panic!("{old}");
        };
        assert!(h.labels.is_empty());
    }

    #[test]
    fn welcome_carries_acks_per_channel() {
        let acks = vec![ChannelAck {
            channel: 3,
            seq: 4096,
        }];
        let w = Message::Welcome(Welcome {
            protocol: 1,
            runner_id: "rn_1".into(),
            server_version: "0.1.0".into(),
            acks,
            metrics_ts: Some(1_700_000_000_000),
        });
        let text = encode_control(1, w.clone());
        assert!(
            text.contains(r#""acks":[{"channel":3,"seq":4096}]"#),
            "{text}"
        );
        assert_eq!(
            decode_control(&text),
            Ok(Decoded::Known(Envelope { id: 1, body: w }))
        );
    }

    #[test]
    fn update_messages_round_trip() {
        let offer = Message::Update(UpdateOffer {
            version: "0.2.0".into(),
            binary: "/releases/0.2.0/tether-x86_64".into(),
            signature: "/releases/0.2.0/tether-x86_64.minisig".into(),
        });
        let text = encode_control(4, offer.clone());
        assert!(text.contains(r#""type":"update""#), "{text}");
        assert_eq!(
            decode_control(&text).unwrap(),
            Decoded::Known(Envelope { id: 4, body: offer })
        );
        // Older runners send no took_ms/at_ms; missing fields default.
        let text = r#"{"type":"update_status","id":1,"version":"0.2.0","state":"failed","reason":"exited"}"#;
        let Decoded::Known(Envelope {
            body: Message::UpdateStatus(s),
            ..
        }) = decode_control(text).unwrap()
        else {
            panic!("not an update_status");
        };
        assert_eq!((s.state.as_str(), s.took_ms), ("failed", None));
        assert!(Message::KNOWN_TYPES.contains(&"update_status"));
    }

    #[test]
    fn unknown_type_is_not_an_error() {
        let d = decode_control(r#"{"type":"from_the_future","id":9,"x":[1,2]}"#).unwrap();
        assert_eq!(
            d,
            Decoded::Unknown {
                type_name: "from_the_future".into(),
                id: Some(9)
            }
        );
    }

    #[test]
    fn malformed_and_bad_fields_are_told_apart() {
        for bad in [
            "",
            "nope",
            "[1,2]",
            r#"{"id":1}"#,
            r#"{"type":5}"#,
            "{\"type\":\"ping\"",
        ] {
            assert!(
                matches!(decode_control(bad), Err(DecodeError::Malformed(_))),
                "{bad:?}"
            );
        }
        let e = decode_control(r#"{"type":"ping","id":1}"#).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadFields { ref type_name, .. } if type_name == "ping"),
            "{e:?}"
        );
        let e = decode_control(r#"{"type":"ping","sent_ms":1}"#).unwrap_err();
        assert!(
            matches!(e, DecodeError::BadFields { .. }),
            "missing id: {e:?}"
        );
    }

    #[test]
    fn oversized_control_is_refused_before_parsing() {
        let big = format!(
            r#"{{"type":"ping","id":1,"pad":"{}"}}"#,
            "x".repeat(MAX_CONTROL_MESSAGE)
        );
        assert_eq!(decode_control(&big), Err(DecodeError::TooLarge(big.len())));
    }

    #[test]
    fn the_checked_encoder_refuses_what_the_decoder_would() {
        let fits = |pad: usize| {
            let body = Message::Ping(Ping { sent_ms: 1 });
            let mut v = serde_json::to_value(Envelope { id: 7, body }).unwrap();
            v["pad"] = serde_json::Value::String("x".repeat(pad));
            v.to_string()
        };
        // Exactly at the limit: both sides take it.
        let base = fits(0).len();
        let at = fits(MAX_CONTROL_MESSAGE - base);
        assert_eq!(at.len(), MAX_CONTROL_MESSAGE);
        assert!(decode_control(&at).is_ok());
        let big = JobStart {
            job_id: "jb_1".into(),
            channel: 1,
            program: "/bin/sh".into(),
            args: vec![],
            script: Some("true".into()),
            env: vec![("BIG".into(), "x".repeat(300 * 1024))],
            secrets: vec![],
            timeout_s: 0,
            deploy: None,
            signed: None,
        };
        let err = encode_control_checked(9, Message::JobStart(big.clone())).unwrap_err();
        assert!(err.0 > MAX_CONTROL_MESSAGE);
        assert!(
            err.to_string().contains(&MAX_CONTROL_MESSAGE.to_string()),
            "{err}"
        );
        let text = encode_control(9, Message::JobStart(big));
        assert_eq!(
            decode_control(&text),
            Err(DecodeError::TooLarge(text.len()))
        );
        // The refusal can still name the request.
        assert_eq!(request_id(&text), Some(9));
        assert_eq!(request_id(r#"{"type":"x"}"#), None);
        assert_eq!(request_id("not json"), None);
    }

    #[test]
    fn negotiation_picks_the_highest_shared_version() {
        assert_eq!(negotiate(&[1]), Some(1));
        assert_eq!(negotiate(&[0, 1, 99]), Some(1));
        assert_eq!(negotiate(&[2, 3]), None);
        assert_eq!(negotiate(&[]), None);
    }

    #[test]
    fn frame_round_trip_and_layout() {
        let h = FrameHeader {
            kind: FrameKind::Data,
            tag: StreamTag::Stderr,
            channel: 0x0102_0304,
            seq: 0x1122_3344_5566_7788,
        };
        let f = encode_frame(h, b"hi");
        assert_eq!(
            &f[..16],
            &[1, 2, 0, 0, 1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert_eq!(decode_frame(&f), Ok((h, &b"hi"[..])));
    }

    #[test]
    fn every_truncation_of_a_frame_is_refused_cleanly() {
        let f = encode_frame(
            FrameHeader {
                kind: FrameKind::Ack,
                tag: StreamTag::None,
                channel: 1,
                seq: 2,
            },
            b"",
        );
        for n in 0..FRAME_HEADER_LEN {
            assert_eq!(decode_frame(&f[..n]), Err(FrameError::Short(n)));
        }
        assert!(decode_frame(&f).is_ok());
    }

    #[test]
    fn bad_frames_are_classified() {
        let mut f = encode_frame(
            FrameHeader {
                kind: FrameKind::Data,
                tag: StreamTag::Stdout,
                channel: 1,
                seq: 0,
            },
            b"x",
        );
        f[0] = 77;
        assert_eq!(decode_frame(&f), Err(FrameError::UnknownKind(77)));
        f[0] = 1;
        f[1] = 200;
        assert_eq!(decode_frame(&f), Err(FrameError::UnknownTag(200)));
        f[1] = 1;
        f[3] = 1;
        assert_eq!(decode_frame(&f), Err(FrameError::ReservedFlags(1)));
        let ack_with_payload = encode_frame(
            FrameHeader {
                kind: FrameKind::Ack,
                tag: StreamTag::None,
                channel: 1,
                seq: 0,
            },
            b"x",
        );
        assert_eq!(
            decode_frame(&ack_with_payload),
            Err(FrameError::BadPayload {
                kind: FrameKind::Ack,
                len: 1
            })
        );
        let big = vec![0u8; MAX_DATA_PAYLOAD + 1];
        let too_big = encode_frame(
            FrameHeader {
                kind: FrameKind::Data,
                tag: StreamTag::Stdout,
                channel: 1,
                seq: 0,
            },
            &big,
        );
        assert!(matches!(
            decode_frame(&too_big),
            Err(FrameError::BadPayload { .. })
        ));
    }

    #[test]
    fn silence_limit_is_under_three_intervals() {
        assert_eq!(silence_limit_ms(1000), 2500);
        assert!(silence_limit_ms(5000) < 15000);
    }
}
