//! The client against a fake engine: a thread on a unix socket in a temp
//! dir that answers each request with the bytes a real engine sent
//! (`fixtures/`), driven by the real event loop.

use super::*;
use crate::reactor::Reactor as EventLoop;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream as StdUnix};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const PING: &[u8] = include_bytes!("fixtures/ping.http");
const VERSION: &[u8] = include_bytes!("fixtures/version.http");
const LIST: &[u8] = include_bytes!("fixtures/list_all.http");
const START_204: &[u8] = include_bytes!("fixtures/start_204.http");
const START_304: &[u8] = include_bytes!("fixtures/start_304.http");
const NOT_FOUND: &[u8] = include_bytes!("fixtures/not_found_404.http");
const EVENTS: &[u8] = include_bytes!("fixtures/events.http");
const SSH: &[u8] = include_bytes!("fixtures/not_docker_ssh.http");
const NGINX: &[u8] = include_bytes!("fixtures/not_docker_nginx.http");

const WAIT: Duration = Duration::from_secs(10);

/// What the fake engine does with one request.
enum Answer {
    /// Write these bytes, then close.
    Close(&'static [u8]),
    /// Write these bytes and keep the connection open (a live stream).
    Hold(Vec<u8>),
}

type Routes = dyn Fn(&str) -> Answer + Send + Sync;

struct FakeEngine {
    path: PathBuf,
    /// Request lines, in order of arrival.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FakeEngine {
    fn start(path: &Path, routes: Arc<Routes>) -> FakeEngine {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (seen, stop, routes) = (seen2.clone(), stop2.clone(), routes.clone());
                        std::thread::spawn(move || serve(s, &seen, &stop, &*routes));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeEngine {
            path: path.to_owned(),
            seen,
            stop,
        }
    }

    fn seen(&self, prefix: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// Stop accepting, close held streams, remove the socket (a daemon going away).
    fn shut(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.shut();
    }
}

fn serve(mut s: StdUnix, seen: &Mutex<Vec<String>>, stop: &AtomicBool, routes: &Routes) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("").to_owned();
    seen.lock().unwrap().push(line.clone());
    match routes(&line) {
        Answer::Close(bytes) => {
            let _ = s.write_all(bytes);
        }
        Answer::Hold(bytes) => {
            let _ = s.write_all(&bytes);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A real engine's answers: ping, version, list, start `a` (204) and `b`
/// (304), anything else 404; `/events` is the recorded stream, kept open
/// when `hold_events`, else ending (as when the daemon stops).
fn engine_routes(hold_events: bool) -> Arc<Routes> {
    Arc::new(move |line: &str| {
        let target = line.split(' ').nth(1).unwrap_or("");
        if target == "/_ping" {
            Answer::Close(PING)
        } else if target == "/version" {
            Answer::Close(VERSION)
        } else if target.starts_with("/v1.41/events") {
            if hold_events {
                // Without the last chunk: the stream goes on.
                Answer::Hold(EVENTS[..EVENTS.len() - 5].to_vec())
            } else {
                Answer::Close(EVENTS)
            }
        } else if target.starts_with("/v1.41/containers/json") {
            Answer::Close(LIST)
        } else if target == "/v1.41/containers/a/start" {
            Answer::Close(START_204)
        } else if target == "/v1.41/containers/b/start" {
            Answer::Close(START_304)
        } else {
            Answer::Close(NOT_FOUND)
        }
    })
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tether-docker-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(path: &Path) -> DockerConfig {
    DockerConfig {
        socket: path.to_owned(),
        request_timeout: Duration::from_secs(5),
        probe_every: Duration::from_millis(300),
        control_enabled: true,
    }
}

fn is_available(d: &Docker) -> bool {
    d.state().available
}

/// Messages the client queued for the server, in order.
fn drain(d: &mut Docker, out: &mut Vec<Outgoing>) {
    while let Some(m) = d.next_message() {
        out.push(m);
    }
}

fn control(o: &Outgoing) -> (Option<u64>, &Control) {
    match o {
        Outgoing::Control(c) => (None, c),
        Outgoing::Reply { id, body } => (Some(*id), body),
        Outgoing::Binary(_) => panic!("docker sends no binary frames"),
    }
}

fn request(op: DockerOp, container: Option<&str>) -> Box<DockerRequest> {
    Box::new(DockerRequest {
        op,
        container: container.map(str::to_owned),
        timeout_s: None,
        signal: None,
        force: false,
        volumes: false,
        filters: None,
        signed: None,
    })
}

/// A `docker_request` from the server, as the link hands it on.
fn docker_request(id: u64, request: impl Into<Box<DockerRequest>>) -> LinkEvent {
    LinkEvent::Message {
        id,
        body: Box::new(Control::DockerRequest(*request.into())),
    }
}

fn up() -> LinkEvent {
    LinkEvent::Up {
        metrics_ts: None,
        acks: Vec::new(),
    }
}

#[test]
fn probe_finds_the_engine_and_negotiates() {
    let dir = tempdir("probe");
    let sock = dir.join("docker.sock");
    let engine = FakeEngine::start(&sock, engine_routes(true));
    let mut el = EventLoop::new().unwrap();
    let mut d = Docker::new(Some(config(&sock)));
    d.start(&mut el.test_ctx());
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| is_available(d)));
    let st = d.state();
    assert_eq!(st.version.as_deref(), Some("20.10.24+dfsg1"));
    assert_eq!(st.api_version.as_deref(), Some("1.41"));
    assert_eq!(
        d.take_version_change(),
        Some(Some("20.10.24+dfsg1 (API 1.41)".to_owned()))
    );
    // The events stream opened, filtered to containers.
    assert!(el.drive(&mut d, Instant::now() + WAIT, |_, _| engine.seen(
        "GET /v1.41/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D"
    ) == 1));
    assert_eq!(engine.seen("GET /_ping"), 1);
}

#[test]
fn no_socket_is_unavailable_then_the_engine_is_picked_up() {
    let dir = tempdir("late");
    let sock = dir.join("docker.sock");
    let mut el = EventLoop::new().unwrap();
    let mut d = Docker::new(Some(config(&sock)));
    d.start(&mut el.test_ctx());
    d.on_link(&mut el.test_ctx(), up());
    let mut out = Vec::new();
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        matches!(d.state, Availability::Unavailable { .. })
    }));
    let st = d.state();
    assert_eq!(
        st.reason.as_deref(),
        Some(format!("no socket at {}", sock.display()).as_str())
    );
    assert!(!st.available);
    drain(&mut d, &mut out);
    // docker_state after welcome (probing), then the change.
    let states: Vec<&DockerState> = out
        .iter()
        .filter_map(|o| match control(o).1 {
            Control::DockerState(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(states.last().unwrap().reason, st.reason);

    // A request now is refused with the reason, same id.
    d.on_link(
        &mut el.test_ctx(),
        docker_request(7, request(DockerOp::List, None)),
    );
    let mut out = Vec::new();
    drain(&mut d, &mut out);
    match control(&out[0]) {
        (Some(7), Control::Error(e)) => {
            assert_eq!(e.code, "docker_unavailable");
            assert!(e.message.starts_with("no socket at "), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    let _engine = FakeEngine::start(&sock, engine_routes(true));
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| is_available(d)));
    // Available on a connection: the state, then a snapshot.
    let mut out = Vec::new();
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        drain(d, &mut out);
        out.iter()
            .any(|o| matches!(control(o).1, Control::ContainerSnapshot(_)))
    }));
    let Control::DockerState(s) = control(&out[0]).1 else {
        panic!("{:?}", out[0]);
    };
    assert!(s.available);
    let snap = out
        .iter()
        .find_map(|o| match control(o).1 {
            Control::ContainerSnapshot(s) => Some(s),
            _ => None,
        })
        .unwrap();
    assert!(!snap.containers.is_empty());
    let c = &snap.containers[0];
    assert!(!c.name.starts_with('/') && !c.name.is_empty(), "{c:?}");
    assert!(c.ports.is_array());
}

fn unavailable_reason(routes: Arc<Routes>, tag: &str) -> String {
    let dir = tempdir(tag);
    let sock = dir.join("docker.sock");
    let _engine = FakeEngine::start(&sock, routes);
    let mut el = EventLoop::new().unwrap();
    let mut d = Docker::new(Some(config(&sock)));
    d.start(&mut el.test_ctx());
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        matches!(d.state, Availability::Unavailable { .. })
    }));
    d.state().reason.unwrap()
}

#[test]
fn something_else_on_the_socket_is_not_docker() {
    let ssh = unavailable_reason(Arc::new(|_: &str| Answer::Close(SSH)), "ssh");
    assert!(ssh.starts_with("not a Docker engine: "), "{ssh}");
    assert!(ssh.contains("does not answer HTTP"), "{ssh}");
    let nginx = unavailable_reason(Arc::new(|_: &str| Answer::Close(NGINX)), "nginx");
    assert!(nginx.starts_with("not a Docker engine at "), "{nginx}");
    assert!(nginx.contains("Api-Version"), "{nginx}");
}

#[test]
fn answers_pass_through_unchanged() {
    let dir = tempdir("pass");
    let sock = dir.join("docker.sock");
    let _engine = FakeEngine::start(&sock, engine_routes(true));
    let mut el = EventLoop::new().unwrap();
    let mut d = Docker::new(Some(config(&sock)));
    d.start(&mut el.test_ctx());
    d.on_link(&mut el.test_ctx(), up());
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| is_available(d)));
    let reqs = [
        (1, request(DockerOp::List, None)),
        (2, request(DockerOp::Start, Some("a"))),
        (3, request(DockerOp::Start, Some("b"))),
        (4, request(DockerOp::Inspect, Some("x"))),
        (5, request(DockerOp::Stop, None)),
    ];
    for (id, r) in reqs {
        d.on_link(&mut el.test_ctx(), docker_request(id, r));
    }
    let mut replies: BTreeMap<u64, Control> = BTreeMap::new();
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        while let Some(m) = d.next_message() {
            if let Outgoing::Reply { id, body } = m {
                replies.insert(id, *body);
            }
        }
        replies.len() == 5
    }));
    let body_of = |raw: &[u8]| -> Value {
        let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        serde_json::from_slice(&raw[at..]).unwrap()
    };
    let resp = |id| match &replies[&id] {
        Control::DockerResponse(r) => r.clone(),
        other => panic!("{id}: {other:?}"),
    };
    assert_eq!(resp(1).status, 200);
    assert_eq!(resp(1).body, body_of(LIST));
    assert_eq!((resp(2).status, resp(2).body), (204, Value::Null));
    assert_eq!((resp(3).status, resp(3).body), (304, Value::Null));
    assert_eq!(resp(4).status, 404);
    assert_eq!(
        resp(4).body,
        serde_json::json!({"message": "No such container: x"})
    );
    match &replies[&5] {
        Control::Error(e) => assert_eq!(e.code, "bad_request"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn container_events_carry_the_container() {
    let dir = tempdir("events");
    let sock = dir.join("docker.sock");
    let _engine = FakeEngine::start(&sock, engine_routes(true));
    let mut el = EventLoop::new().unwrap();
    let mut d = Docker::new(Some(config(&sock)));
    d.on_link(&mut el.test_ctx(), up());
    d.start(&mut el.test_ctx());
    let mut events = Vec::new();
    let expected = EVENTS
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"{\"status\""))
        .count();
    assert!(expected > 0);
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        while let Some(m) = d.next_message() {
            if let Outgoing::Control(c) = m {
                if let Control::ContainerEvent(e) = *c {
                    events.push(e);
                }
            }
        }
        !events.is_empty() && events.len() >= expected.min(3)
    }));
    let e = &events[0];
    assert_eq!(e.action, "create");
    assert_eq!(e.container_id.len(), 64);
    assert_eq!(e.attributes.get("name").map(String::as_str), Some("tt-web"));
    assert!(e.time_nano > 1_000_000_000_000_000_000);
    // The fake engine answers every list with the fixture: a summary is there.
    assert!(e.container.is_some());
    assert!(events
        .iter()
        .all(|e| e.action == "destroy" || e.container.is_some()));
}

#[test]
fn a_daemon_restart_resubscribes_and_resnapshots() {
    let dir = tempdir("restart");
    let sock = dir.join("docker.sock");
    // Every events stream ends at once, as when dockerd stops.
    let engine = FakeEngine::start(&sock, engine_routes(false));
    let mut el = EventLoop::new().unwrap();
    let mut d = Docker::new(Some(config(&sock)));
    d.on_link(&mut el.test_ctx(), up());
    d.start(&mut el.test_ctx());
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        while d.next_message().is_some() {}
        engine.seen("GET /v1.41/events") >= 2
            && engine.seen("GET /v1.41/containers/json?all=1 ") >= 2
    }));
    assert!(engine.seen("GET /_ping") >= 2);

    // The daemon goes away: unavailable, and back when it returns.
    engine.shut();
    drop(engine);
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        while d.next_message().is_some() {}
        !is_available(d)
    }));
    let _engine = FakeEngine::start(&sock, engine_routes(true));
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        while d.next_message().is_some() {}
        is_available(d)
    }));
}

#[test]
fn switched_off_refuses_requests_and_sends_nothing_else() {
    let mut el = EventLoop::new().unwrap();
    let mut d = Docker::new(None);
    d.start(&mut el.test_ctx());
    d.on_link(&mut el.test_ctx(), up());
    assert!(d.next_message().is_none());
    d.on_link(
        &mut el.test_ctx(),
        docker_request(3, request(DockerOp::List, None)),
    );
    match d.next_message() {
        Some(Outgoing::Reply { id: 3, body }) => {
            assert!(matches!(*body, Control::Error(ref e) if e.code == "docker_unavailable"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_container_control_only_list_and_inspect_pass() {
    let mut el = EventLoop::new().unwrap();
    let mut cfg = config(Path::new("/nonexistent/docker.sock"));
    cfg.control_enabled = false;
    let mut d = Docker::new(Some(cfg));
    d.on_link(&mut el.test_ctx(), up());
    while d.next_message().is_some() {}
    let ops = [
        DockerOp::Start,
        DockerOp::Stop,
        DockerOp::Restart,
        DockerOp::Kill,
        DockerOp::Remove,
        DockerOp::PruneContainers,
        DockerOp::PruneImages,
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let id = 10 + i as u64;
        d.on_link(
            &mut el.test_ctx(),
            docker_request(id, request(op, Some("web"))),
        );
        match d.next_message() {
            Some(Outgoing::Reply { id: got, body }) if got == id => match *body {
                Control::Error(e) => {
                    assert_eq!(e.code, CONTAINER_CONTROL_DISABLED, "{op:?}");
                    assert!(
                        e.message.contains("--no-container-control"),
                        "{}",
                        e.message
                    );
                }
                other => panic!("{op:?}: {other:?}"),
            },
            other => panic!("{op:?}: {other:?}"),
        }
    }
    // Reading calls are not refused for control: they wait for the probe.
    for op in [DockerOp::List, DockerOp::Inspect] {
        d.on_link(
            &mut el.test_ctx(),
            docker_request(99, request(op, Some("web"))),
        );
        assert!(d.next_message().is_none(), "{op:?} held, not refused");
    }
}

#[test]
fn socket_selection() {
    let def = Some(PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(DockerConfig::socket_from(None, None, None), Ok(def.clone()));
    assert_eq!(
        DockerConfig::socket_from(Some("/x.sock"), Some("/y"), Some("unix:///z")),
        Ok(Some("/x.sock".into()))
    );
    assert_eq!(
        DockerConfig::socket_from(None, Some("/y"), Some("unix:///z")),
        Ok(Some("/y".into()))
    );
    assert_eq!(
        DockerConfig::socket_from(None, None, Some("unix:///run/user/1000/docker.sock")),
        Ok(Some("/run/user/1000/docker.sock".into()))
    );
    assert_eq!(DockerConfig::socket_from(Some("off"), None, None), Ok(None));
    assert!(DockerConfig::socket_from(None, None, Some("tcp://10.0.0.1:2375")).is_err());
}

#[test]
fn requests_map_to_engine_calls() {
    let api = Api::new(ApiVersion::new(1, 41));
    let base = Duration::from_secs(30);
    let mut r = *request(DockerOp::Stop, Some("web"));
    r.timeout_s = Some(60);
    let (req, t) = build_request(&api, &r, base).unwrap();
    assert_eq!(req.target(), "/v1.41/containers/web/stop?t=60");
    assert_eq!(t, Duration::from_secs(70));
    let mut r = *request(DockerOp::Remove, Some("web"));
    r.force = true;
    let (req, _) = build_request(&api, &r, base).unwrap();
    assert_eq!(req.target(), "/v1.41/containers/web?force=1&v=0");
    let mut r = *request(DockerOp::List, None);
    r.filters = Some(serde_json::json!({"label": ["app=web"], "status": {"running": true}}));
    let (req, _) = build_request(&api, &r, base).unwrap();
    assert_eq!(
        req.target(),
        "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22app%3Dweb%22%5D%2C%22status%22%3A%5B%22running%22%5D%7D"
    );
    let r = *request(DockerOp::PruneImages, None);
    let (req, _) = build_request(&api, &r, base).unwrap();
    assert_eq!(
        req.target(),
        "/v1.41/images/prune?filters=%7B%22dangling%22%3A%5B%22true%22%5D%7D"
    );
    let mut r = *request(DockerOp::PruneContainers, None);
    r.filters = Some(serde_json::json!(["nope"]));
    assert!(build_request(&api, &r, base).is_err());
    let r = *request(DockerOp::Kill, Some("  "));
    assert!(build_request(&api, &r, base).is_err());
}

/// Against the host's engine: `cargo test -p tether --lib real_engine -- --ignored --nocapture`
/// (needs dockerd and the `tether-test/busybox` image; see tests/util/docker.rs).
#[test]
#[ignore]
fn real_engine_smoke() {
    let sock = PathBuf::from(DEFAULT_SOCKET);
    let mut el = EventLoop::new().unwrap();
    let mut d = Docker::new(Some(DockerConfig::new(sock)));
    d.on_link(&mut el.test_ctx(), up());
    d.start(&mut el.test_ctx());
    let mut out = Vec::new();
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, _| {
        drain(d, &mut out);
        out.iter()
            .any(|o| matches!(control(o).1, Control::ContainerSnapshot(_)))
    }));
    println!("state: {:?}", d.state());
    let name = format!("tt-smoke-{}", std::process::id());
    let created = std::process::Command::new("docker")
        .args([
            "create",
            "--name",
            &name,
            "tether-test/busybox",
            "sleep",
            "30",
        ])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let mut start = *request(DockerOp::Start, Some(&name));
    start.container = Some(name.clone());
    d.on_link(&mut el.test_ctx(), docker_request(1, Box::new(start)));
    let mut remove = *request(DockerOp::Remove, Some(&name));
    remove.force = true;
    let mut out = Vec::new();
    let mut sent_remove = false;
    assert!(el.drive(&mut d, Instant::now() + WAIT, |d, ctx| {
        drain(d, &mut out);
        let started = out.iter().any(|o| {
            matches!(control(o).1, Control::ContainerEvent(e) if e.action == "start"
                && e.container.as_ref().is_some_and(|c| c.state == "running"))
        });
        if started && !sent_remove {
            sent_remove = true;
            d.on_link(ctx, docker_request(2, Box::new(remove.clone())));
        }
        // The engine may send the event before its answer: wait for both.
        out.iter()
            .any(|o| matches!(control(o).1, Control::ContainerEvent(e) if e.action == "destroy"))
            && out.iter().any(|o| control(o).0 == Some(2))
    }));
    for o in &out {
        println!("{o:?}");
    }
    let replies: Vec<_> = out
        .iter()
        .filter_map(|o| match control(o) {
            (Some(id), Control::DockerResponse(r)) => Some((id, r.status)),
            _ => None,
        })
        .collect();
    assert_eq!(replies, vec![(1, 204), (2, 204)]);
}

/// A container inspect answer leaves the host with the values of the
/// `Env` entries its `tether.secrets` label names masked; plain env and
/// other answers are untouched (`protocol::secret_env`).
#[test]
fn inspect_answers_leave_the_host_with_secret_env_masked() {
    let body = r#"{"Id":"c1","Config":{"Env":["A=1","DB_PW=hunter2"],"Labels":{"tether.secrets":"DB_PW"}}}"#;
    let raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut dec = crate::net::http::BufferedDecoder::new(crate::net::http::Expect::Normal, 1 << 16);
    dec.feed(raw.as_bytes()).unwrap();
    let resp = dec.take().unwrap();
    let v = response_body(&resp);
    assert!(!v.to_string().contains("hunter2"), "{v}");
    assert_eq!(v["Config"]["Env"], serde_json::json!(["A=1", "DB_PW=***"]));
}
