//! The Docker Engine client inside the event loop: probes the engine,
//! answers the server's `docker_request`s, follows `/events` and reports
//! container changes. Owns every Docker socket; the sans-IO codec
//! ([`super::http`], [`crate::engine::api`]) turns their bytes into values.
//!
//! Availability (what `docker_state` reports):
//!
//! ```text
//!   start ─▶ Unknown ──probe──┬──▶ Available{version, api} ──events stream ends──▶ probe again
//!                             │        ▲                     (daemon restart)        │
//!                             │        └──────────── answers ◀───────────────────────┤
//!                             └──▶ Unavailable{reason} ◀──────── fails ──────────────┘
//!                                   └─ probe again after 1 s, 2 s, … up to 30 s
//!   probe: GET /_ping (Api-Version header: it is Docker) ─▶ GET /version ─▶ negotiate()
//!   Available: one GET /events stream open; a container_snapshot per connection.
//! ```
//!
//! One HTTP exchange is one [`Call`] on its own `UnixStream` (we send no
//! keep-alive reuse: a fresh connection per request is cheap on a local
//! socket and a stuck answer can never delay the next one):
//!
//! ```text
//!   connect (non-blocking; ENOENT, EACCES, ECONNREFUSED fail at once)
//!     ─▶ Writing (WRITABLE; partial writes keep an offset)
//!     ─▶ Reading (READABLE; drained to WouldBlock, a stream at most a budget per pass)
//!     ─▶ done: BufferedDecoder answer (≤ MAX_RESPONSE) or, for /events, EOF
//!   each call but /events has a timer (REQUEST_TIMEOUT; stop/restart add their grace)
//! ```
//!
//! Server requests, probes and the events stream do not queue behind each
//! other: requests, container summaries and snapshots share
//! [`MAX_CONNECTIONS`] sockets and wait in a bounded queue; the probe and
//! the events stream have their own. Messages for the server wait in a
//! bounded outbox that the connection drains as the link has room; while
//! it is full no new calls start (backpressure), and events beyond it are
//! dropped and made good by a fresh snapshot.

use super::logs::{EngineView, LogFollows};
use crate::engine::api::{self, Api, ApiVersion, Filters, VersionInfo};
use crate::engine::stream::LineSplitter;
use crate::engine::{self, Answer, EngineCall, Exchange, Got};
use crate::link::{Family, Feature, LinkEvent, Outgoing};
use crate::metrics::containers::RunningContainer;
use crate::net::http::{HttpError, Request, Response};
use crate::protocol::{
    ContainerEvent, ContainerSnapshot, ContainerSummary, DockerOp, DockerRequest, DockerResponse,
    DockerState, ErrorBody, Message as Control, CONTAINER_CONTROL_DISABLED, MAX_CONTROL_MESSAGE,
};
use crate::reactor::{Ctx, Source, TimerId, TimerKind};
use crate::{debug, info, warn};
use mio::Token;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Longest wait between probes while the engine is unavailable.
pub const PROBE_EVERY: Duration = Duration::from_secs(30);
/// First retry after a failure: a restarting daemon is back within seconds.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Deadline of one call (connect to last byte).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Stop and restart answer only after the grace period: their deadline is
/// the grace period plus this.
const GRACE_MARGIN: Duration = Duration::from_secs(10);
/// Docker's own default grace period for stop and restart.
const DEFAULT_GRACE_SECS: u32 = 10;
/// Sockets for requests, summaries and snapshots (the probe and the events
/// stream have their own).
pub const MAX_CONNECTIONS: usize = 8;
/// Calls waiting for a socket; a server request beyond it is refused.
const MAX_QUEUED: usize = 256;
/// Largest buffered answer.
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024;
/// Longest `/events` line kept (a line is one JSON event, ~1 KiB).
const MAX_EVENT_LINE: usize = 64 * 1024;
/// Bytes waiting for the link; above it no new calls start.
const MAX_OUTBOX_BYTES: usize = 16 * 1024 * 1024;
/// Room kept in a control message for the envelope around a body.
const ENVELOPE_ROOM: usize = 4096;
/// Actions we report; the rest (`exec_*`, `attach`, `resize`, `top`,
/// `copy`, `archive-path`, …) is noise for a container view.
const ACTIONS: &[&str] = &[
    "create", "start", "die", "oom", "kill", "stop", "restart", "pause", "unpause", "destroy",
    "rename", "update",
];

/// Where the engine is and how long calls may take.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub socket: PathBuf,
    pub request_timeout: Duration,
    /// Longest wait between probes while unavailable.
    pub probe_every: Duration,
    /// `--no-container-control`: the server's calls that change containers
    /// or images (start, stop, restart, kill, remove, prune) are refused;
    /// list and inspect stay. The host owner's choice; the server cannot
    /// override it.
    pub control_enabled: bool,
}

impl DockerConfig {
    pub fn new(socket: PathBuf) -> DockerConfig {
        DockerConfig {
            socket,
            request_timeout: REQUEST_TIMEOUT,
            probe_every: PROBE_EVERY,
            control_enabled: true,
        }
    }

    /// The socket from `--docker-socket`, else `TETHER_DOCKER_SOCKET`,
    /// else `DOCKER_HOST=unix://…`, else the default. `off`/`none` switch
    /// the integration off (`None`). A `DOCKER_HOST` we cannot speak
    /// (`tcp://`, `ssh://`) is an error: the user asked for that engine.
    pub fn socket_from(
        flag: Option<&str>,
        env: Option<&str>,
        docker_host: Option<&str>,
    ) -> Result<Option<PathBuf>, String> {
        if let Some(v) = flag.or(env).map(str::trim).filter(|v| !v.is_empty()) {
            if v == "off" || v == "none" {
                return Ok(None);
            }
            return Ok(Some(PathBuf::from(v.strip_prefix("unix://").unwrap_or(v))));
        }
        match docker_host.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(Some(PathBuf::from(DEFAULT_SOCKET))),
            Some(h) => match h.strip_prefix("unix://") {
                Some(p) if !p.is_empty() => Ok(Some(PathBuf::from(p))),
                _ => Err(format!(
                    "DOCKER_HOST={h} is not a unix socket; the runner speaks to the engine only \
                     over unix://, set --docker-socket PATH (or `off`)"
                )),
            },
        }
    }
}

/// Timers the client sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerTimer {
    /// Probe the engine again.
    Probe,
    /// A call's deadline (which call: its `TimerId`).
    Call,
    /// A log channel's inspect deadline or retry.
    Log,
}

impl TimerKind for DockerTimer {
    const ALL: &'static [DockerTimer] = &[DockerTimer::Probe, DockerTimer::Call, DockerTimer::Log];
}

#[derive(Debug, Clone, PartialEq)]
enum Availability {
    /// Not probed yet: requests wait for the first probe.
    Unknown,
    Available {
        version: String,
        api: Api,
    },
    Unavailable {
        reason: String,
    },
}

/// Why a call did not produce an answer.
#[derive(Debug)]
enum CallError {
    /// The Engine call itself failed (socket, HTTP).
    Engine(engine::CallError),
    Timeout(Duration),
    /// `/events` answered with this status instead of a stream.
    Status(u16),
    /// `/events` ended (the engine stopped or restarted).
    Ended,
}

impl CallError {
    /// A short reason naming the socket, for logs, `docker_state` and errors.
    fn describe(&self, path: &Path) -> String {
        let p = path.display();
        match self {
            CallError::Engine(engine::CallError::Connect(e)) => match e.kind() {
                io::ErrorKind::NotFound => format!("no socket at {p}"),
                io::ErrorKind::PermissionDenied => format!("permission denied on {p}"),
                io::ErrorKind::ConnectionRefused => {
                    format!("nothing listens on {p} (connection refused; engine stopped?)")
                }
                _ => format!("cannot connect to {p}: {e}"),
            },
            CallError::Engine(engine::CallError::Io(e) | engine::CallError::Write(e)) => {
                format!("connection to {p} failed: {e}")
            }
            CallError::Engine(engine::CallError::WriteZero) => {
                format!("connection to {p} failed: socket took no bytes")
            }
            CallError::Engine(engine::CallError::Http(HttpError::NotHttp)) => {
                format!("not a Docker engine: {p} does not answer HTTP")
            }
            CallError::Engine(engine::CallError::Http(e)) => format!("bad answer from {p}: {e}"),
            // Its calls upload nothing.
            CallError::Engine(e @ engine::CallError::Upload(_)) => e.to_string(),
            CallError::Timeout(d) => format!("no answer from {p} within {}s", d.as_secs()),
            CallError::Status(s) => format!("the engine at {p} answered /events with {s}"),
            CallError::Ended => format!("the events stream from {p} ended"),
        }
    }
}

/// What a finished call was for.
#[derive(Debug)]
enum Purpose {
    Ping,
    Version,
    /// A `docker_request` with this id, on link generation `link`.
    Reply {
        link: u64,
        id: u64,
    },
    /// The container's summary for the event `seq` in `events`.
    Summary {
        link: u64,
        seq: u64,
    },
    Snapshot {
        link: u64,
    },
    Events,
    /// The running containers, for per-container metrics.
    Running,
}

impl Purpose {
    /// Whether it uses one of the [`MAX_CONNECTIONS`] shared sockets.
    fn is_shared(&self) -> bool {
        matches!(
            self,
            Purpose::Reply { .. } | Purpose::Summary { .. } | Purpose::Snapshot { .. }
        )
    }
}

/// A call waiting for a socket.
struct Job {
    purpose: Purpose,
    request: Request,
    timeout: Duration,
}

/// One Engine call and what it is for.
struct Call {
    call: EngineCall,
    purpose: Purpose,
    timeout: Duration,
    /// `/events`: its chunked body of JSON lines, as long as the engine runs.
    lines: Option<LineSplitter>,
    /// The read budget was spent with data left: drive again this turn.
    again: bool,
}

/// What driving a call decided.
enum CallStep {
    /// Wait for readiness (or, with `again`, for the next turn).
    Wait,
    Finished(Result<Response, CallError>),
}

impl Call {
    /// Move bytes until the call waits or ends. Complete event lines go to
    /// `out`.
    fn drive(&mut self, ctx: &mut Ctx<'_>, out: &mut Vec<Vec<u8>>) -> CallStep {
        loop {
            match self.call.drive(ctx) {
                Got::Wait => return CallStep::Wait,
                Got::Again => {
                    self.again = true;
                    return CallStep::Wait;
                }
                Got::Answer(resp, _) => return CallStep::Finished(Ok(resp)),
                Got::Failed(e) => return CallStep::Finished(Err(CallError::Engine(e))),
                Got::Head(h) if h.status != 200 => {
                    return CallStep::Finished(Err(CallError::Status(h.status)))
                }
                Got::Head(_) => {}
                Got::Body(mut body) => {
                    let Some(lines) = self.lines.as_mut() else {
                        continue;
                    };
                    while !body.is_empty() {
                        let s = lines.feed(body);
                        if let Some(line) = s.item {
                            if line.truncated {
                                debug!("docker", "dropping an over-long event line");
                            } else {
                                out.push(line.bytes.to_vec());
                            }
                        }
                        body = &body[s.consumed..];
                    }
                }
                Got::End | Got::Eof => return CallStep::Finished(Err(CallError::Ended)),
            }
        }
    }
}

/// A container event waiting for its summary.
struct PendingEvent {
    seq: u64,
    event: ContainerEvent,
    ready: bool,
}

/// One entry of `GET /containers/json`, with `Ports` kept as Docker sent it.
#[derive(Debug, Deserialize)]
struct ListEntry {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Option<Vec<String>>,
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "State", default)]
    state: String,
    #[serde(rename = "Status", default)]
    status: String,
    #[serde(rename = "Created", default)]
    created: i64,
    #[serde(rename = "Ports", default)]
    ports: Value,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

impl ListEntry {
    fn into_summary(self) -> ContainerSummary {
        let name = self
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.strip_prefix('/').unwrap_or(n).to_owned())
            .unwrap_or_default();
        ContainerSummary {
            id: self.id,
            name,
            image: self.image,
            state: self.state,
            status: self.status,
            created: self.created,
            // Docker sends `null` for no ports on some versions.
            ports: if self.ports.is_null() {
                Value::Array(Vec::new())
            } else {
                self.ports
            },
            labels: self.labels.unwrap_or_default(),
        }
    }
}

fn parse_list(resp: Response) -> Result<Vec<ContainerSummary>, String> {
    let entries: Vec<ListEntry> = api::parse_json(resp).map_err(|e| e.to_string())?;
    Ok(entries.into_iter().map(ListEntry::into_summary).collect())
}

/// The server's `filters` (`{"label": ["a=b"]}`, or Docker's older
/// `{"label": {"a=b": true}}`) as [`Filters`].
fn filters_from(v: Option<&Value>) -> Result<Filters, String> {
    let bad = || "filters must be an object of lists of strings".to_owned();
    let mut f = Filters::new();
    let map = match v {
        None | Some(Value::Null) => return Ok(f),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad()),
    };
    for (key, val) in map {
        match val {
            Value::String(s) => f = f.add(key, s),
            Value::Array(items) => {
                for item in items {
                    f = f.add(key, item.as_str().ok_or_else(bad)?);
                }
            }
            Value::Object(m) => {
                for (k, on) in m {
                    if on.as_bool().ok_or_else(bad)? {
                        f = f.add(key, k);
                    }
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok(f)
}

/// The Engine API call for a `docker_request`, and its deadline; `Err` is
/// a `bad_request` message.
fn build_request(
    api: &Api,
    r: &DockerRequest,
    base: Duration,
) -> Result<(Request, Duration), String> {
    let container = || -> Result<&str, String> {
        match r.container.as_deref().map(str::trim) {
            Some(c) if !c.is_empty() => Ok(c),
            _ => Err(format!("{:?} needs a container", r.op).to_lowercase()),
        }
    };
    let grace = |t: Option<u32>| {
        base.max(Duration::from_secs(u64::from(t.unwrap_or(DEFAULT_GRACE_SECS))) + GRACE_MARGIN)
    };
    Ok(match r.op {
        DockerOp::List => (
            api.list_containers(true, &filters_from(r.filters.as_ref())?),
            base,
        ),
        DockerOp::Inspect => (api.inspect_container(container()?), base),
        DockerOp::Start => (api.start(container()?), base),
        DockerOp::Stop => (api.stop(container()?, r.timeout_s), grace(r.timeout_s)),
        DockerOp::Restart => (api.restart(container()?, r.timeout_s), grace(r.timeout_s)),
        DockerOp::Kill => (api.kill(container()?, r.signal.as_deref()), base),
        DockerOp::Remove => (api.remove(container()?, r.force, r.volumes), base),
        DockerOp::PruneContainers => (
            api.prune_containers(&filters_from(r.filters.as_ref())?),
            base,
        ),
        DockerOp::PruneImages => {
            // Only dangling images unless the server says otherwise:
            // pruning every unused image is rarely what one means.
            let mut filters = filters_from(r.filters.as_ref())?;
            let has_dangling = r
                .filters
                .as_ref()
                .and_then(Value::as_object)
                .is_some_and(|m| m.contains_key("dangling"));
            if !has_dangling {
                filters = filters.add("dangling", "true");
            }
            let req = Request::post(format!("/v{}/images/prune", api.version()))
                .query("filters", &filters.to_json());
            (req, base)
        }
    })
}

/// The engine's answer as a `docker_response`: status and JSON body as
/// sent (`null` when there is none, as for 204 and 304). A body that is
/// not JSON (an old engine's plain-text error) becomes `{"message": text}`.
/// A container inspect answer has its secret `Env` values masked here, so
/// they never leave the host (`protocol::secret_env`).
fn response_body(resp: &Response) -> Value {
    if resp.body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    match serde_json::from_slice(&resp.body) {
        Ok(mut v) => {
            crate::protocol::secret_env::mask_inspect(&mut v, &[]);
            v
        }
        Err(_) => serde_json::json!({ "message": api::engine_message(&resp.head, &resp.body) }),
    }
}

fn error_reply(id: u64, code: &str, message: String) -> Outgoing {
    Outgoing::Reply {
        id,
        body: Box::new(Control::Error(ErrorBody {
            code: code.into(),
            message,
        })),
    }
}

/// The Docker integration as the event loop drives it.
pub struct Docker {
    cfg: Option<DockerConfig>,
    state: Availability,
    /// A ping or version call is in flight.
    probing: bool,
    probe_timer: Option<TimerId>,
    retry: Duration,
    calls: Vec<Call>,
    queue: VecDeque<Job>,
    /// Requests that came before the first probe finished.
    held: VecDeque<(u64, DockerRequest)>,
    /// Generation of the link that is up; replies for an older one are dropped.
    link: Option<u64>,
    links: u64,
    outbox: VecDeque<(Outgoing, usize)>,
    outbox_bytes: usize,
    /// An event was dropped (outbox full): send a snapshot when there is room.
    resnapshot: bool,
    /// Events waiting for their container's summary, in the engine's
    /// order: summaries may come back out of order, events may not.
    events: VecDeque<PendingEvent>,
    next_event: u64,
    /// `Some(new fingerprint value)` until the loop took it.
    version_change: Option<Option<String>>,
    /// Running containers by id (name), for the metrics sampler: listed
    /// when the engine becomes available, kept current from events whether
    /// or not a link is up.
    running: BTreeMap<String, String>,
    running_changed: bool,
    /// Log channels (`log_open`), with their own sockets.
    logs: LogFollows,
    /// Container events for the log channels: (id, action).
    log_events: Vec<(String, String)>,
}

impl Docker {
    /// `None`: switched off; requests are refused, nothing else is sent.
    pub fn new(cfg: Option<DockerConfig>) -> Docker {
        Docker {
            cfg,
            state: Availability::Unknown,
            probing: false,
            probe_timer: None,
            retry: FIRST_RETRY,
            calls: Vec::new(),
            queue: VecDeque::new(),
            held: VecDeque::new(),
            link: None,
            links: 0,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            resnapshot: false,
            events: VecDeque::new(),
            next_event: 0,
            version_change: None,
            running: BTreeMap::new(),
            running_changed: false,
            logs: LogFollows::new(),
            log_events: Vec::new(),
        }
    }

    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        match &self.cfg {
            Some(c) => {
                info!(
                    "docker",
                    "watching the Docker engine at {}",
                    c.socket.display()
                );
                self.start_probe(ctx);
            }
            None => info!("docker", "Docker integration switched off"),
        }
    }

    /// `Some(v)` once after the engine version changed: `"20.10.24 (API
    /// 1.41)"` for the fingerprint, `None` when unavailable.
    pub fn take_version_change(&mut self) -> Option<Option<String>> {
        self.version_change.take()
    }

    /// The running containers, once after the set changed (empty when the
    /// engine became unavailable).
    pub fn take_running_change(&mut self) -> Option<Vec<RunningContainer>> {
        if !std::mem::take(&mut self.running_changed) {
            return None;
        }
        let list = self.running.iter().map(|(id, name)| RunningContainer {
            id: id.clone(),
            name: name.clone(),
        });
        Some(list.collect())
    }

    /// The state as `docker_state` reports it.
    pub fn state(&self) -> DockerState {
        match &self.state {
            Availability::Available { version, api } => DockerState {
                available: true,
                version: Some(version.clone()),
                api_version: Some(api.version().to_string()),
                reason: None,
            },
            Availability::Unavailable { reason } => DockerState {
                available: false,
                version: None,
                api_version: None,
                reason: Some(reason.clone()),
            },
            Availability::Unknown => DockerState {
                available: false,
                version: None,
                api_version: None,
                reason: Some(match &self.cfg {
                    Some(_) => "the engine is being probed".into(),
                    None => "docker integration switched off on this runner".into(),
                }),
            },
        }
    }

    pub fn owns(&self, token: Token) -> bool {
        self.calls.iter().any(|c| c.call.token() == token) || self.logs.owns(token)
    }

    pub fn wants_again(&self) -> bool {
        self.calls.iter().any(|c| c.again) || self.logs.wants_again()
    }

    pub fn on_ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if let Some(i) = self.calls.iter().position(|c| c.call.token() == token) {
            self.drive_call(ctx, i);
        } else if self.logs.owns(token) {
            self.with_logs(|logs, engine| logs.on_ready(ctx, engine, token));
        }
        self.pump_queue(ctx);
    }

    /// The engine's socket and API, while it is available (terminals).
    pub fn engine(&self) -> Option<crate::engine::Engine> {
        match &self.state {
            Availability::Available { api, .. } => Some(crate::engine::Engine {
                socket: self.socket(),
                api: *api,
            }),
            _ => None,
        }
    }

    /// Open log channels (for status and tests).
    pub fn log_channels(&self) -> usize {
        self.logs.len()
    }

    /// Run `f` on the log channels with what they need of the engine.
    fn with_logs<R>(&mut self, f: impl FnOnce(&mut LogFollows, &EngineView<'_>) -> R) -> R {
        let socket = self.socket();
        let api = match &self.state {
            Availability::Available { api, .. } => Some(*api),
            _ => None,
        };
        let engine = EngineView {
            socket: &socket,
            api,
        };
        f(&mut self.logs, &engine)
    }

    pub fn on_again(&mut self, ctx: &mut Ctx<'_>) {
        let tokens: Vec<Token> = self
            .calls
            .iter()
            .filter(|c| c.again)
            .map(|c| c.call.token())
            .collect();
        for t in tokens {
            if let Some(i) = self.calls.iter().position(|c| c.call.token() == t) {
                self.calls[i].again = false;
                self.drive_call(ctx, i);
            }
        }
        if self.logs.wants_again() {
            self.with_logs(|logs, engine| logs.on_again(ctx, engine));
        }
        self.pump_queue(ctx);
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, timer: DockerTimer) {
        match timer {
            DockerTimer::Probe if self.probe_timer == Some(id) => {
                self.probe_timer = None;
                self.start_probe(ctx);
            }
            DockerTimer::Call => {
                if let Some(i) = self.calls.iter().position(|c| c.call.timer() == Some(id)) {
                    let call = self.calls.swap_remove(i);
                    let d = call.timeout;
                    call.call.close(ctx);
                    self.complete(ctx, call.purpose, Err(CallError::Timeout(d)));
                }
            }
            DockerTimer::Log => self.with_logs(|logs, engine| logs.on_timer(ctx, engine, id)),
            DockerTimer::Probe => {}
        }
        self.pump_queue(ctx);
    }

    /// Link changes and the server's requests, from the connection.
    pub fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        match event {
            LinkEvent::Up { .. } => {
                self.links += 1;
                self.link = Some(self.links);
                self.clear_outbox();
                if self.cfg.is_some() {
                    self.send_state();
                    if matches!(self.state, Availability::Available { .. }) {
                        self.snapshot();
                    }
                }
            }
            LinkEvent::Down => {
                self.link = None;
                self.clear_outbox();
                // Nobody is left to answer; the next link gets a snapshot.
                self.held.clear();
                self.queue.retain(|j| !j.purpose.is_shared());
                self.logs.drop_all(ctx);
            }
            LinkEvent::Message { id, body } => match *body {
                Control::DockerRequest(request) => self.on_request(request, id),
                Control::LogOpen(open) => {
                    if self.cfg.is_none() {
                        let why = "docker integration switched off on this runner".to_owned();
                        self.push(error_reply(id, "docker_unavailable", why), 256);
                    } else if self.link.is_some() {
                        self.with_logs(|logs, engine| logs.open(ctx, engine, id, open));
                    }
                }
                Control::LogClose(c) => self.logs.close(ctx, c.channel),
                _ => {}
            },
            LinkEvent::ChannelAck { channel, kind, seq } => self.logs.on_ack(channel, kind, seq),
            LinkEvent::ChannelData { .. } => {}
        }
        self.pump_queue(ctx);
    }

    /// The next message for the server, while the link has room.
    pub fn next_message(&mut self) -> Option<Outgoing> {
        let Some((msg, n)) = self.outbox.pop_front() else {
            return self.logs.next_message();
        };
        self.outbox_bytes = self.outbox_bytes.saturating_sub(n);
        Some(msg)
    }

    // ---- requests from the server ----------------------------------------

    fn on_request(&mut self, r: DockerRequest, id: u64) {
        let Some(link) = self.link else {
            return;
        };
        let Some(cfg) = &self.cfg else {
            let why = "docker integration switched off on this runner".to_owned();
            self.push(error_reply(id, "docker_unavailable", why), 256);
            return;
        };
        if !cfg.control_enabled && r.op.changes_state() {
            let why = format!(
                "container control is switched off on this runner (its owner started it \
                 with --no-container-control): {:?} refused",
                r.op
            );
            self.push(error_reply(id, CONTAINER_CONTROL_DISABLED, why), 256);
            return;
        }
        let base = cfg.request_timeout;
        match &self.state {
            Availability::Available { api, .. } => {
                let api = *api;
                match build_request(&api, &r, base) {
                    Ok((request, timeout)) => self.enqueue(
                        Job {
                            purpose: Purpose::Reply { link, id },
                            request,
                            timeout,
                        },
                        Some(id),
                    ),
                    Err(why) => self.push(error_reply(id, "bad_request", why), 256),
                }
            }
            Availability::Unknown => {
                // Check it now; build it for the negotiated version later.
                let probe_api = Api::new(api::NEWEST_SUPPORTED);
                if let Err(why) = build_request(&probe_api, &r, base) {
                    self.push(error_reply(id, "bad_request", why), 256);
                } else if self.held.len() >= MAX_QUEUED {
                    let why = "too many docker requests waiting".to_owned();
                    self.push(error_reply(id, "docker_unavailable", why), 256);
                } else {
                    self.held.push_back((id, r));
                }
            }
            Availability::Unavailable { reason } => {
                let why = reason.clone();
                self.push(error_reply(id, "docker_unavailable", why), 256);
            }
        }
    }

    fn enqueue(&mut self, job: Job, reply_id: Option<u64>) {
        if self.queue.len() >= MAX_QUEUED {
            if let Some(id) = reply_id {
                let why = "too many docker requests waiting".to_owned();
                self.push(error_reply(id, "docker_unavailable", why), 256);
            } else {
                debug!("docker", "call queue full; dropping a {:?}", job.purpose);
            }
            return;
        }
        self.queue.push_back(job);
    }

    // ---- availability ----------------------------------------------------

    fn start_probe(&mut self, ctx: &mut Ctx<'_>) {
        if self.probing || self.cfg.is_none() {
            return;
        }
        if let Some(t) = self.probe_timer.take() {
            ctx.cancel(t);
        }
        self.probing = true;
        let timeout = self.timeout();
        self.start_call(
            ctx,
            Job {
                purpose: Purpose::Ping,
                request: Api::ping(),
                timeout,
            },
        );
    }

    fn timeout(&self) -> Duration {
        self.cfg
            .as_ref()
            .map_or(REQUEST_TIMEOUT, |c| c.request_timeout)
    }

    fn socket(&self) -> PathBuf {
        self.cfg
            .as_ref()
            .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), |c| c.socket.clone())
    }

    fn on_ping(&mut self, ctx: &mut Ctx<'_>, result: Result<Response, CallError>) {
        let path = self.socket();
        let resp = match result {
            Ok(r) => r,
            Err(e) => return self.set_unavailable(ctx, e.describe(&path)),
        };
        if let Err(e) = api::engine_version_from_ping(&resp.head) {
            let why = match e {
                api::ApiError::NotDocker(w) => {
                    format!("not a Docker engine at {}: {w}", path.display())
                }
                other => other.to_string(),
            };
            return self.set_unavailable(ctx, why);
        }
        let timeout = self.timeout();
        self.start_call(
            ctx,
            Job {
                purpose: Purpose::Version,
                request: Api::version_info(),
                timeout,
            },
        );
    }

    fn on_version(&mut self, ctx: &mut Ctx<'_>, result: Result<Response, CallError>) {
        let path = self.socket();
        let resp = match result {
            Ok(r) => r,
            Err(e) => return self.set_unavailable(ctx, e.describe(&path)),
        };
        let info: VersionInfo = match api::parse_json(resp) {
            Ok(i) => i,
            Err(e) => return self.set_unavailable(ctx, e.to_string()),
        };
        match api::negotiate_from_version(&info) {
            Ok(v) => self.set_available(ctx, info.version, v),
            Err(e) => self.set_unavailable(ctx, e.to_string()),
        }
    }

    fn set_available(&mut self, ctx: &mut Ctx<'_>, version: String, v: ApiVersion) {
        self.probing = false;
        self.retry = FIRST_RETRY;
        let next = Availability::Available {
            version: version.clone(),
            api: Api::new(v),
        };
        if self.state != next {
            info!("docker", "Docker engine {version} available (API {v})");
            self.state = next;
            self.version_change = Some(Some(format!("{version} (API {v})")));
            self.send_state();
        }
        if !self
            .calls
            .iter()
            .any(|c| matches!(c.purpose, Purpose::Events))
        {
            let req = Api::new(v).events(&Filters::new().add("type", "container"), None, None);
            self.start_call(
                ctx,
                Job {
                    purpose: Purpose::Events,
                    request: req,
                    timeout: Duration::ZERO,
                },
            );
        }
        // After a daemon restart events may have been missed: resync.
        self.snapshot();
        if !self.logs.is_empty() {
            self.with_logs(|logs, engine| logs.on_engine_back(ctx, engine));
        }
        if !self
            .calls
            .iter()
            .any(|c| matches!(c.purpose, Purpose::Running))
        {
            let request = Api::new(v).list_containers(false, &Filters::new());
            let timeout = self.timeout();
            self.start_call(
                ctx,
                Job {
                    purpose: Purpose::Running,
                    request,
                    timeout,
                },
            );
        }
        let base = self.timeout();
        let api = Api::new(v);
        while let Some((id, r)) = self.held.pop_front() {
            let Some(link) = self.link else { break };
            match build_request(&api, &r, base) {
                Ok((request, timeout)) => self.enqueue(
                    Job {
                        purpose: Purpose::Reply { link, id },
                        request,
                        timeout,
                    },
                    Some(id),
                ),
                Err(why) => self.push(error_reply(id, "bad_request", why), 256),
            }
        }
    }

    fn set_unavailable(&mut self, ctx: &mut Ctx<'_>, reason: String) {
        self.probing = false;
        let next = Availability::Unavailable {
            reason: reason.clone(),
        };
        if self.state != next {
            match self.state {
                Availability::Available { .. } => {
                    warn!("docker", "Docker engine no longer available: {reason}")
                }
                _ => info!("docker", "Docker engine not available: {reason}"),
            }
            if matches!(self.state, Availability::Available { .. }) {
                self.version_change = Some(None);
            }
            self.state = next;
            self.send_state();
        }
        if !self.running.is_empty() {
            self.running.clear();
            self.running_changed = true;
        }
        // Its stream is of no use now; a new one opens with the engine.
        while let Some(i) = self
            .calls
            .iter()
            .position(|c| matches!(c.purpose, Purpose::Events))
        {
            self.calls.swap_remove(i).call.close(ctx);
        }
        for (id, _) in std::mem::take(&mut self.held) {
            self.push(error_reply(id, "docker_unavailable", reason.clone()), 256);
        }
        // Summaries will not come: the events go without them.
        for p in &mut self.events {
            p.ready = true;
        }
        self.flush_events();
        let queued: Vec<Job> = self.queue.drain(..).collect();
        for job in queued {
            if let Purpose::Reply { id, .. } = job.purpose {
                self.push(error_reply(id, "docker_unavailable", reason.clone()), 256);
            }
        }
        if let Some(t) = self.probe_timer.take() {
            ctx.cancel(t);
        }
        // No jitter: one local socket, nobody to stampede.
        self.probe_timer = Some(ctx.schedule(self.retry, DockerTimer::Probe));
        let cap = self.cfg.as_ref().map_or(PROBE_EVERY, |c| c.probe_every);
        self.retry = (self.retry * 2).min(cap);
    }

    fn send_state(&mut self) {
        if self.link.is_some() && self.cfg.is_some() {
            let msg = Outgoing::Control(Box::new(Control::DockerState(self.state())));
            self.push(msg, 256);
        }
    }

    /// Queue a `container_snapshot` for the link that is up.
    fn snapshot(&mut self) {
        let (Some(link), Availability::Available { api, .. }) = (self.link, &self.state) else {
            return;
        };
        if self
            .queue
            .iter()
            .any(|j| matches!(j.purpose, Purpose::Snapshot { link: l } if l == link))
        {
            return;
        }
        let request = api.list_containers(true, &Filters::new());
        let timeout = self.timeout();
        self.resnapshot = false;
        self.enqueue(
            Job {
                purpose: Purpose::Snapshot { link },
                request,
                timeout,
            },
            None,
        );
    }

    // ---- events ----------------------------------------------------------

    fn on_event_line(&mut self, line: &[u8]) {
        let ev: api::Event = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(e) => {
                debug!("docker", "skipping an unreadable event line: {e}");
                return;
            }
        };
        if ev.kind != "container" || ev.actor.id.is_empty() {
            return;
        }
        self.track_running(&ev);
        if !self.logs.is_empty() && matches!(ev.action.as_str(), "start" | "restart" | "destroy") {
            self.log_events
                .push((ev.actor.id.clone(), ev.action.clone()));
        }
        let of_interest =
            ACTIONS.contains(&ev.action.as_str()) || ev.action.starts_with("health_status");
        let Some(link) = self.link else {
            // Offline: the next connection starts with a snapshot.
            return;
        };
        let Availability::Available { api, .. } = &self.state else {
            return;
        };
        if !of_interest {
            return;
        }
        let event = ContainerEvent {
            time_nano: ev.time_nano,
            action: ev.action,
            container_id: ev.actor.id,
            attributes: ev.actor.attributes,
            container: None,
        };
        if self.events.len() >= MAX_QUEUED {
            self.drop_event();
            return;
        }
        self.next_event += 1;
        let seq = self.next_event;
        // A destroyed container has no summary to fetch; with the queue
        // full the event goes without one rather than not at all.
        let ready = event.action == "destroy" || self.queue.len() >= MAX_QUEUED;
        let request = api.list_containers(true, &Filters::new().add("id", &event.container_id));
        self.events.push_back(PendingEvent { seq, event, ready });
        if ready {
            self.flush_events();
            return;
        }
        let timeout = self.timeout();
        self.enqueue(
            Job {
                purpose: Purpose::Summary { link, seq },
                request,
                timeout,
            },
            None,
        );
    }

    /// Keeps the running set current, online or not: events carry the
    /// name, so no call is needed.
    fn track_running(&mut self, ev: &api::Event) {
        let id = &ev.actor.id;
        let name = ev.actor.attributes.get("name");
        let changed = match (ev.action.as_str(), name) {
            ("start", Some(n)) => self.running.insert(id.clone(), n.clone()).as_ref() != Some(n),
            ("rename", Some(n)) => match self.running.get_mut(id) {
                Some(old) if old != n => {
                    *old = n.clone();
                    true
                }
                _ => false,
            },
            ("die" | "destroy", _) => self.running.remove(id).is_some(),
            _ => false,
        };
        self.running_changed |= changed;
    }

    /// Send the events at the front that have their summary.
    fn flush_events(&mut self) {
        while self.events.front().is_some_and(|e| e.ready) {
            if let Some(p) = self.events.pop_front() {
                self.push_event(p.event);
            }
        }
    }

    fn drop_event(&mut self) {
        if !self.resnapshot {
            warn!(
                "docker",
                "server link too slow for container events; dropping them until a snapshot"
            );
        }
        self.resnapshot = true;
    }

    fn push_event(&mut self, event: ContainerEvent) {
        if self.outbox_bytes >= MAX_OUTBOX_BYTES {
            self.drop_event();
            return;
        }
        let n = 512 + event.attributes.len() * 64;
        self.push(
            Outgoing::Control(Box::new(Control::ContainerEvent(event))),
            n,
        );
    }

    fn on_events_end(&mut self, ctx: &mut Ctx<'_>, err: CallError) {
        if !matches!(self.state, Availability::Available { .. }) {
            return;
        }
        info!(
            "docker",
            "{}; probing the engine again",
            err.describe(&self.socket())
        );
        self.start_probe(ctx);
    }

    // ---- calls -----------------------------------------------------------

    /// Start queued calls while sockets and outbox room allow.
    fn pump_queue(&mut self, ctx: &mut Ctx<'_>) {
        if self.resnapshot && self.outbox_bytes < MAX_OUTBOX_BYTES / 2 {
            self.snapshot();
        }
        loop {
            let shared = self.calls.iter().filter(|c| c.purpose.is_shared()).count();
            if shared >= MAX_CONNECTIONS || self.outbox_bytes >= MAX_OUTBOX_BYTES {
                return;
            }
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            self.start_call(ctx, job);
        }
    }

    fn start_call(&mut self, ctx: &mut Ctx<'_>, job: Job) {
        let (answer, lines) = match job.purpose {
            Purpose::Events => (Answer::Stream, Some(LineSplitter::new(MAX_EVENT_LINE))),
            _ => (Answer::Whole(MAX_RESPONSE), None),
        };
        debug!(
            "docker",
            "{} {}",
            job.request.method().as_str(),
            job.request.target()
        );
        let x = Exchange::new(&job.request, "docker call", answer);
        let mut call = match EngineCall::start(ctx, &self.socket(), x) {
            Ok(c) => c,
            Err(e) => return self.complete(ctx, job.purpose, Err(CallError::Engine(e))),
        };
        // The events stream lasts as long as the engine: no deadline.
        if !job.timeout.is_zero() {
            call = call.deadline(ctx, job.timeout, DockerTimer::Call);
        }
        self.calls.push(Call {
            call,
            purpose: job.purpose,
            timeout: job.timeout,
            lines,
            again: false,
        });
        // The socket is likely writable already; an edge may not come.
        let i = self.calls.len() - 1;
        self.drive_call(ctx, i);
    }

    fn drive_call(&mut self, ctx: &mut Ctx<'_>, i: usize) {
        let mut lines = Vec::new();
        let step = self.calls[i].drive(ctx, &mut lines);
        for line in lines {
            self.on_event_line(&line);
        }
        for (id, action) in std::mem::take(&mut self.log_events) {
            self.with_logs(|logs, engine| logs.on_container_event(ctx, engine, &id, &action));
        }
        if let CallStep::Finished(result) = step {
            let call = self.calls.swap_remove(i);
            call.call.close(ctx);
            self.complete(ctx, call.purpose, result);
        }
    }

    fn complete(
        &mut self,
        ctx: &mut Ctx<'_>,
        purpose: Purpose,
        result: Result<Response, CallError>,
    ) {
        let path = self.socket();
        match purpose {
            Purpose::Ping => self.on_ping(ctx, result),
            Purpose::Version => self.on_version(ctx, result),
            Purpose::Events => {
                let err = result.err().unwrap_or(CallError::Ended);
                self.on_events_end(ctx, err);
            }
            Purpose::Running => match result.map_err(|e| e.describe(&path)).and_then(parse_list) {
                Ok(list) => {
                    // Replaces what events said: it is the newer word
                    // unless a container died in between (then its cgroup
                    // is gone and the sampler leaves it out).
                    self.running = list
                        .into_iter()
                        .filter(|c| c.state == "running")
                        .map(|c| (c.id, c.name))
                        .collect();
                    self.running_changed = true;
                }
                Err(e) => debug!("docker", "cannot list running containers for metrics: {e}"),
            },
            Purpose::Reply { link, id } => {
                if self.link != Some(link) {
                    return;
                }
                match result {
                    Ok(resp) if resp.body.len() > MAX_CONTROL_MESSAGE - ENVELOPE_ROOM => {
                        let why = format!(
                            "the engine's answer ({} bytes) is larger than a control message ({} bytes); narrow the request with filters",
                            resp.body.len(),
                            MAX_CONTROL_MESSAGE
                        );
                        self.push(error_reply(id, "response_too_large", why), 256);
                    }
                    Ok(resp) => {
                        let refused = resp.head.status == 400
                            && api::engine_message(&resp.head, &resp.body)
                                .starts_with("client version ");
                        if refused {
                            // The engine was upgraded under us: negotiate again.
                            self.start_probe(ctx);
                        }
                        let n = resp.body.len() + 256;
                        let body = DockerResponse {
                            status: resp.head.status,
                            body: response_body(&resp),
                        };
                        self.push(
                            Outgoing::Reply {
                                id,
                                body: Box::new(Control::DockerResponse(body)),
                            },
                            n,
                        );
                    }
                    Err(CallError::Engine(engine::CallError::Http(HttpError::BodyTooLarge {
                        limit,
                    }))) => {
                        let why = format!("the engine's answer is larger than {limit} bytes");
                        self.push(error_reply(id, "response_too_large", why), 256);
                    }
                    Err(e) => {
                        let why = e.describe(&path);
                        self.push(error_reply(id, "docker_unavailable", why), 256);
                        if !matches!(e, CallError::Timeout(_)) {
                            // The engine may be gone: find out.
                            self.start_probe(ctx);
                        }
                    }
                }
            }
            Purpose::Summary { link, seq } => {
                if self.link != Some(link) {
                    return;
                }
                let Some(p) = self.events.iter_mut().find(|p| p.seq == seq) else {
                    return;
                };
                // Failed: the event still goes, without the container.
                match result.map_err(|e| e.describe(&path)).and_then(parse_list) {
                    Ok(list) => p.event.container = list.into_iter().next(),
                    Err(e) => debug!("docker", "no summary for {}: {e}", p.event.container_id),
                }
                p.ready = true;
                self.flush_events();
            }
            Purpose::Snapshot { link } => {
                if self.link != Some(link) {
                    return;
                }
                match result.map_err(|e| e.describe(&path)).and_then(parse_list) {
                    Ok(mut containers) => {
                        let mut size = serde_json::to_vec(&containers).map_or(0, |v| v.len());
                        if size > MAX_CONTROL_MESSAGE - ENVELOPE_ROOM {
                            warn!(
                                "docker",
                                "{} containers do not fit one snapshot message; sending the first that fit",
                                containers.len()
                            );
                            while size > MAX_CONTROL_MESSAGE - ENVELOPE_ROOM
                                && !containers.is_empty()
                            {
                                containers.truncate(containers.len() * 3 / 4);
                                size = serde_json::to_vec(&containers).map_or(0, |v| v.len());
                            }
                        }
                        debug!("docker", "snapshot of {} containers", containers.len());
                        self.push(
                            Outgoing::Control(Box::new(Control::ContainerSnapshot(
                                ContainerSnapshot { containers },
                            ))),
                            size,
                        );
                    }
                    Err(e) => warn!("docker", "cannot list containers for the snapshot: {e}"),
                }
            }
        }
    }

    fn push(&mut self, msg: Outgoing, bytes: usize) {
        if self.link.is_none() {
            return;
        }
        self.outbox_bytes += bytes;
        self.outbox.push_back((msg, bytes));
    }

    fn clear_outbox(&mut self) {
        self.outbox.clear();
        self.outbox_bytes = 0;
        self.events.clear();
    }
}

impl Source for Docker {
    fn ready(&mut self, ctx: &mut Ctx<'_>, token: Token) {
        if self.owns(token) {
            self.on_ready(ctx, token);
        }
    }

    fn timer(&mut self, ctx: &mut Ctx<'_>, id: TimerId, kind: u8) {
        if let Some(t) = DockerTimer::from_code(kind) {
            self.on_timer(ctx, id, t);
        }
    }

    fn wants_again(&self) -> bool {
        Docker::wants_again(self)
    }

    fn again(&mut self, ctx: &mut Ctx<'_>) {
        self.on_again(ctx);
    }
}

impl Feature for Docker {
    fn families(&self) -> &'static [Family] {
        &[Family::Docker]
    }

    fn start(&mut self, ctx: &mut Ctx<'_>) {
        Docker::start(self, ctx);
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        Docker::on_link(self, ctx, event);
    }

    fn next_message(&mut self) -> Option<Outgoing> {
        Docker::next_message(self)
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
