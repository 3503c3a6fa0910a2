//! Two `tether-server` replicas on one real PostgreSQL, a real runner
//! linked to replica A, and every call made through replica B (issue 18,
//! `server/src/app/forward.rs`, `server/src/cluster/internal.rs`): a job
//! and its byte-identical output, the job's live output, a terminal (42
//! typed, a resize), a session opened on A attached again through B by its
//! id, container events on B's event stream and container logs followed
//! on a real Docker engine; a
//! stranger on the internal address refused; `/healthz` with the replica
//! and 503 when PostgreSQL stops; the job made on B on A's event stream;
//! A stopped cleanly releases its link and the runner goes to B; a token
//! revoked on A ends its event stream on B at once.
//!
//! A terminal session outlives its runner moving (`server/src/terminals/
//! relay.rs`): the runner's link to A cut (A up), it relinks to B, which
//! relays the session to A: the same shell, every line once and in order,
//! a resize, the clients on A and through B attached throughout, closed
//! once; moved again to a third replica C, relayed by C alone; A killed
//! after the move: its shell hung up on the runner once A is reaped; and
//! the runner restarted onto B: A's session ends in seconds, not 90.

use crate::util::docker::{self, IMAGE};
use crate::util::pg::Postgres;
use crate::util::term::TermClient;
use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("cluster.key");
    std::fs::write(&p, "5e".repeat(32)).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

pub(crate) struct Pair {
    pub(crate) a: Server,
    pub(crate) b: Server,
    internal_a: String,
    _dir: TempDir,
}

/// Replicas `a` and `b` on `url`, one certificate (the runner and the
/// tests trust one CA), each with its internal address.
pub(crate) fn pair(url: &str) -> Pair {
    pair_with(url, &[])
}

/// [`pair`], both started with `extra` flags too.
pub(crate) fn pair_with(url: &str, extra: &[&str]) -> Pair {
    let dir = TempDir::new("replicas");
    let key = key_file(dir.path());
    let key = key.to_str().unwrap();
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));
    let internal_a = format!("127.0.0.1:{}", free_port());
    let internal_b = format!("127.0.0.1:{}", free_port());
    let flags = |id: &'static str, internal: &str| -> Vec<String> {
        [
            "--database",
            url,
            "--replica-id",
            id,
            "--internal-addr",
            internal,
            "--cluster-key",
            key,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let fa = flags("a", &internal_a);
    let a = Server::start_on(&data_a, &fa.iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::create_dir_all(data_b.join("tls")).unwrap();
    for f in ["ca.pem", "ca.key", "cert.pem", "key.pem"] {
        std::fs::copy(data_a.join("tls").join(f), data_b.join("tls").join(f)).unwrap();
    }
    let fb = flags("b", &internal_b);
    let b = Server::start_on(&data_b, &fb.iter().map(String::as_str).collect::<Vec<_>>());
    Pair {
        a,
        b,
        internal_a,
        _dir: dir,
    }
}

impl Pair {
    /// A third replica `id` on `url`, with the pair's key and certificate.
    fn third(&self, url: &str, id: &str) -> Server {
        let data = self._dir.path().join(id);
        std::fs::create_dir_all(data.join("tls")).unwrap();
        for f in ["ca.pem", "ca.key", "cert.pem", "key.pem"] {
            std::fs::copy(self.a.data.join("tls").join(f), data.join("tls").join(f)).unwrap();
        }
        let internal = format!("127.0.0.1:{}", free_port());
        let key = self._dir.path().join("cluster.key");
        let flags = [
            "--database",
            url,
            "--replica-id",
            id,
            "--internal-addr",
            &internal,
            "--cluster-key",
            key.to_str().unwrap(),
        ];
        Server::start_on(&data, &flags)
    }
}

/// The same tenant, its calls made to `server`.
pub(crate) fn through(tenant: &Tenant, server: &Server) -> Tenant {
    Tenant {
        id: tenant.id.clone(),
        token: tenant.token.clone(),
        api: server.api(),
    }
}

fn percentile(times: &mut [Duration], p: usize) -> Duration {
    times.sort();
    times[(times.len() * p / 100).min(times.len() - 1)]
}

pub(crate) fn job(tenant: &Tenant, id: &str) -> Value {
    let (st, v) = tenant.call("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

/// The data of each `event: <kind>` of an SSE stream, read on a thread.
pub(crate) fn events_of(
    stream: impl Read + Send + 'static,
    wanted: &'static str,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut kind = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                if kind == wanted && tx.send(d.trim().to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[test]
fn a_runner_linked_to_a_is_served_through_b_streams_and_terminals_included() {
    let _engine = docker::ensure();
    let pg = Postgres::start();
    let url = pg.database("fwd");
    let p = pair(&url);
    let on_a = p.a.tenant("fwd");
    let on_b = through(&on_a, &p.b);

    let mut runner = Runner::enroll(&p.a, &on_a);
    // A first: it links there; B is where it goes when A stops.
    let both = format!("{},{}", p.a.url, p.b.url);
    runner.start(&["--server", &both, "--heartbeat", "1s"]);
    on_b.wait_health(&runner.id, "active", Duration::from_secs(20));
    let id = runner.id.clone();
    // Linked to A: A answers a ping directly; B through A.
    let (st, v) = on_a.call("POST", &format!("/api/v1/runners/{id}/ping"), None);
    assert_eq!(st, 200, "ping on A: {v}");
    let (st, v) = on_b.call("POST", &format!("/api/v1/runners/{id}/ping"), None);
    assert_eq!(st, 200, "ping through B: {v}");

    // A job made on B (the runner hears of it by NOTIFY at once), its
    // live output followed on B while it prints, then stored.
    // A's event stream, to see the job made on B (NOTIFY, `common/bus.rs`).
    let jobs_seen_on_a = events_of(p.a.api().stream("/api/v1/events", &on_a.token), "job");
    std::thread::sleep(Duration::from_millis(300));
    let script = "i=0; while [ $i -lt 20000 ]; do echo \"line $i\"; i=$((i+1)); case $i in *000) sleep 0.05;; esac; done; printf '\\001\\377end'";
    let started = Instant::now();
    let (st, v) = on_b.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [id], "command": script })),
    );
    assert_eq!(st, 201, "run through B: {v}");
    let job_id = v[0]["id"].as_str().unwrap().to_owned();
    let seen = jobs_seen_on_a
        .recv_timeout(Duration::from_secs(10))
        .expect("A's event stream shows the job made on B");
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["id"], job_id.as_str(), "{seen}");
    assert_eq!(seen["change"], "created", "{seen}");
    assert_eq!(seen["runner_id"], id.as_str(), "{seen}");
    eprintln!(
        "A's event stream showed B's job {:?} after the POST",
        started.elapsed()
    );
    let mut live = BufReader::new(on_b.api.stream(
        &format!("/api/v1/jobs/{job_id}/output?follow=1&format=ndjson"),
        &on_b.token,
    ));
    let mut first_line = None;
    let mut lines = 0;
    loop {
        let mut line = String::new();
        if live.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
        if v.get("end").is_some() {
            break;
        }
        first_line.get_or_insert_with(|| started.elapsed());
        lines += 1;
    }
    assert!(lines > 0, "the watch through B showed output");
    eprintln!(
        "job through B: first output on B's watch {:?} after the POST; {lines} records",
        first_line.unwrap()
    );
    let done = wait_for(Duration::from_secs(60), "the job to complete", || {
        let v = job(&on_b, &job_id);
        (v["complete"] == true).then_some(v)
    });
    assert_eq!(done["status"], "succeeded", "{done}");
    let mut got = Vec::new();
    on_b.api
        .stream(
            &format!("/api/v1/jobs/{job_id}/output?stream=stdout"),
            &on_b.token,
        )
        .read_to_end(&mut got)
        .unwrap();
    let mut want = Vec::new();
    for i in 0..20_000 {
        want.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    want.extend_from_slice(b"\x01\xffend");
    assert_eq!(got.len(), want.len(), "stored bytes through B");
    assert!(
        got == want,
        "output through B differs from what was printed"
    );

    // The figures of a replica (`/api/v1/replica/metrics`).
    let metric = |server: &Server, name: &str| -> f64 {
        let (st, v) = server.api().call(
            "GET",
            "/api/v1/replica/metrics",
            Some(&server.admin_token),
            None,
        );
        assert_eq!(st, 200, "{v}");
        let text = v.as_str().unwrap().to_owned();
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    // The relay of stored output: direct on A vs through B and B's kept connection.
    let fetch = |t: &Tenant| {
        let start = Instant::now();
        let mut got = Vec::new();
        t.api
            .stream(
                &format!("/api/v1/jobs/{job_id}/output?stream=stdout"),
                &t.token,
            )
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got.len(), want.len());
        start.elapsed()
    };
    let connections_before = metric(&p.b, "tether_replica_forward_connections_total");
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        direct.push(fetch(&on_a));
        forwarded.push(fetch(&on_b));
    }
    let (d, f) = (percentile(&mut direct, 50), percentile(&mut forwarded, 50));
    eprintln!(
        "job output ({} bytes) fetched: direct on A p50 {d:?}, through B p50 {f:?} ({:.2}x of direct)",
        want.len(),
        d.as_secs_f64() / f.as_secs_f64()
    );
    // One after another, the 20 relays share B's kept connection to A
    // (`cluster/internal.rs`): a fresh TLS handshake each was the cost.
    let opened = metric(&p.b, "tether_replica_forward_connections_total") - connections_before;
    assert!(opened <= 2.0, "B opened {opened} connections for 20 relays");

    // Keystroke round trips: direct on A vs through B (the extra hop).
    let rtt = |server: &Server| {
        let mut t = TermClient::open(server, &on_a.token, &id, "cols=80&rows=24")
            .unwrap_or_else(|e| panic!("terminal: {e:?}"));
        t.run("stty -echo; echo ready", "ready");
        t.send(b"stty echo\n");
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..6 {
            t.pump();
        }
        let times = keystroke_rtts(&mut t);
        t.send(b"exit\n");
        t.wait_end(Duration::from_secs(10));
        times
    };
    let (mut on_a_rtt, mut via_b_rtt) = (rtt(&p.a), rtt(&p.b));
    eprintln!(
        "keystroke round trip: direct on A p50 {:?} p99 {:?}; through B p50 {:?} p99 {:?}",
        percentile(&mut on_a_rtt, 50),
        percentile(&mut on_a_rtt, 99),
        percentile(&mut via_b_rtt, 50),
        percentile(&mut via_b_rtt, 99)
    );

    // A terminal through B: the WebSocket spliced to A.
    let mut t = TermClient::open(&p.b, &on_b.token, &id, "cols=80&rows=24")
        .unwrap_or_else(|e| panic!("terminal through B: {e:?}"));
    t.run("echo $((6*7))", "42\r\n");
    t.run("stty size", "24 80");
    t.resize(100, 30);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let from = t.out.len();
        t.send(b"stty size\n");
        if t.read_until(from, "30 100", Duration::from_secs(1)) || Instant::now() > end {
            break;
        }
    }
    assert!(
        t.text().contains("30 100"),
        "the resize through B never arrived"
    );
    t.send(b"exit\n");
    assert_eq!(
        t.wait_end(Duration::from_secs(15)).as_deref(),
        Some("exited 0")
    );

    // A session opened on A, attached and attached again through B by its
    // id alone (B finds the replica of its runner: `app/forward.rs`),
    // with a ticket minted on B too, and closed through B.
    let (st, s) = on_a.call(
        "POST",
        &format!("/api/v1/runners/{id}/terminals"),
        Some(json!({})),
    );
    assert_eq!(st, 201, "{s}");
    let tid = s["id"].as_str().unwrap().to_owned();
    let mut t = TermClient::attach(&p.b, &on_b.token, &tid, 0);
    t.run("echo $((6*7))", "42\r\n");
    // Detached (the socket dropped), not closed: the session lives on A.
    drop(t);
    let mut t = TermClient::attach(&p.b, &on_b.token, &tid, 0);
    assert!(
        t.read_until(0, "42\r\n", Duration::from_secs(5)),
        "the scrollback again through B: {}",
        t.text()
    );
    t.run("echo again-$((6*8))", "again-48");
    // Detached (the socket dropped), not closed: the session lives on A.
    drop(t);
    let (st, v) = on_b.call("POST", "/api/v1/ws-tickets", None);
    assert_eq!(st, 201, "{v}");
    let ticket = v["ticket"].as_str().unwrap().to_owned();
    let mut t = TermClient::attach_with_ticket(&p.b, &ticket, &tid)
        .unwrap_or_else(|e| panic!("attach with a ticket through B: {e:?}"));
    t.run("echo ticket-$((6*9))", "ticket-54");
    let stranger = through(&p.a.tenant("fwd-other"), &p.b);
    let (st, v) = stranger.call("DELETE", &format!("/api/v1/terminals/{tid}"), None);
    assert_eq!(st, 404, "another tenant's session through B: {v}");
    let (st, v) = on_b.call("DELETE", &format!("/api/v1/terminals/{tid}"), None);
    assert_eq!(st, 200, "closed through B: {v}");
    assert!(
        t.wait_end(Duration::from_secs(15)).is_some(),
        "the client attached through B sees the end"
    );

    // Container events of A's runner on B's event stream (NOTIFY), and
    // its logs followed through B, on a real Docker engine.
    let containers_on_b = events_of(p.b.api().stream("/api/v1/events", &on_b.token), "container");
    std::thread::sleep(Duration::from_millis(300));
    let name = format!("tether-fwd-{}", std::process::id());
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, IMAGE, "sh", "-c"])
        .arg("i=0; while true; do echo \"tick $i\"; i=$((i+1)); sleep 0.05; done")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _rm = Rm(name.clone());
    let started_event = loop {
        let data = containers_on_b
            .recv_timeout(Duration::from_secs(20))
            .expect("B's event stream shows the container started on A's runner");
        let v: Value = serde_json::from_str(&data).unwrap();
        if v["name"] == name.as_str() && v["action"] == "start" {
            break v;
        }
    };
    assert_eq!(started_event["runner_id"], id.as_str(), "{started_event}");
    assert_eq!(
        started_event["container"]["state"], "running",
        "{started_event}"
    );
    wait_for(Duration::from_secs(30), "the container seen", || {
        let (st, v) = on_b.call("GET", &format!("/api/v1/runners/{id}/containers"), None);
        (st == 200 && v.to_string().contains(&name)).then_some(())
    });
    let mut follow = BufReader::new(on_b.api.stream(
        &format!("/api/v1/runners/{id}/containers/{name}/logs?follow=1&tail=1"),
        &on_b.token,
    ));
    let mut ticks = Vec::new();
    while ticks.len() < 10 {
        let mut line = String::new();
        assert!(follow.read_line(&mut line).unwrap() > 0, "follow ended");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v["end"].is_null(), "ended: {v}");
        let n: u64 = v["line"]
            .as_str()
            .unwrap()
            .strip_prefix("tick ")
            .unwrap()
            .parse()
            .unwrap();
        ticks.push(n);
    }
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "live lines through B in order: {ticks:?}"
    );

    // Forwarded, not answered by B: B's log says so, A's counters too.
    let log_b = p.b.log();
    assert!(
        !log_b.contains("forwarding /api"),
        "no failed forward: {log_b}"
    );

    // A stranger on A's internal address: 401, and nothing more.
    let api = Api::new(&format!("https://{}", p.internal_a), &p.a.ca);
    for proof in [None, Some("1.00"), Some("x")] {
        let mut req = api
            .agent
            .get(format!("https://{}/api/v1/runners", p.internal_a))
            .header("Authorization", format!("Bearer {}", on_a.token));
        if let Some(v) = proof {
            req = req.header("x-tether-cluster", v);
        }
        let resp = req.config().http_status_as_error(false).build().call();
        let status = resp.map(|r| r.status().as_u16()).unwrap_or(0);
        assert_eq!(status, 401, "internal address without the key ({proof:?})");
    }

    // /healthz names the replica; with PostgreSQL gone it says 503.
    let (st, v) = p.b.api().call("GET", "/healthz", None, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["replica"], "b", "{v}");
    assert_eq!(v["ready"], true, "{v}");
    let (_, v) = p.a.api().call("GET", "/healthz", None, None);
    assert_eq!(v["links"], 1, "A holds the runner's link: {v}");
    // Per-replica metrics: B forwarded, A holds the link.
    assert!(metric(&p.b, "tether_replica_forwards_total{replica=\"b\"}") >= 5.0);
    assert_eq!(metric(&p.b, "tether_replica_forward_errors_total"), 0.0);
    assert_eq!(metric(&p.a, "tether_replica_links{replica=\"a\"}"), 1.0);
    assert_eq!(metric(&p.a, "tether_replica_internal_refused_total"), 3.0);
    assert!(metric(&p.a, "tether_replica_db_pool_max") >= 1.0);
    let (st, _) =
        p.b.api()
            .call("GET", "/api/v1/replica/metrics", Some(&on_b.token), None);
    assert_eq!(st, 403, "the metrics need the admin token");

    // A stops cleanly (SIGTERM): it releases its links at once, so the
    // runner goes to B without waiting for A to be reaped.
    drop(follow);
    let (_, v) = p.a.api().call("GET", "/healthz", None, None);
    assert_eq!(v["links"], 1, "{v}");
    let mut a = p.a;
    let stopped = Instant::now();
    a.stop();
    let b = p.b;
    wait_for(Duration::from_secs(20), "the runner linked to B", || {
        let (_, v) = b.api().call("GET", "/healthz", None, None);
        (v["links"] == 1).then_some(())
    });
    eprintln!("runner on B {:?} after A's SIGTERM", stopped.elapsed());
    assert!(a.log().contains("released 1 link(s)"), "{}", a.log());
    let (st, v) = on_b.call("GET", &format!("/api/v1/runners/{id}/health"), None);
    assert_eq!(st, 200, "{v}");
    assert!(v.to_string().contains("replica stopped"), "{v}");
    on_b.wait_health(&id, "active", Duration::from_secs(10));
    drop(runner);
    pg.stop();
    let v = wait_for(Duration::from_secs(15), "503 from /healthz", || {
        let (st, v) = b.api().call("GET", "/healthz", None, None);
        (st == 503).then_some(v)
    });
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(v["database"], "unreachable", "{v}");
}

/// Links the replica says it holds (`/healthz`).
#[test]
fn a_token_revoked_on_a_ends_its_event_stream_on_b_within_seconds() {
    let pg = Postgres::start();
    let p = pair(&pg.database("revoke"));
    let on_a = p.a.tenant("revoke");
    let (st, v) = on_a.call(
        "POST",
        "/api/v1/api-tokens",
        Some(json!({ "name": "stream" })),
    );
    assert_eq!(st, 201, "{v}");
    let (id, token) = (v["id"].as_str().unwrap(), v["token"].as_str().unwrap());
    let ends = events_of(p.b.api().stream("/api/v1/events", token), "end");
    let revoked = Instant::now();
    let (st, v) = on_a.call("DELETE", &format!("/api/v1/api-tokens/{id}"), None);
    assert_eq!(st, 200, "{v}");
    let end = ends
        .recv_timeout(Duration::from_secs(20))
        .expect("the stream on B ended");
    let took = revoked.elapsed();
    eprintln!("B's stream ended {took:?} after the revocation on A");
    assert!(end.contains("revoked"), "{end}");
    assert!(
        took < Duration::from_secs(3),
        "not the 30 s re-check: {took:?}"
    );
}

fn links_held(server: &Server) -> Option<u64> {
    let (_, v) = server.api().call("GET", "/healthz", None, None);
    v["links"].as_u64()
}

/// The pid of the session's shell (`$$`).
fn shell_pid(t: &mut TermClient) -> u32 {
    let out = t.run("echo pid$((0))=$$ end$((0))", "end0");
    let rest = &out[out.find("pid0=").expect("pid0=") + 5..];
    rest[..rest.find(' ').unwrap()].parse().unwrap()
}

/// Whether process `pid` is still there (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split(' ').nth(2).is_none_or(|st| st != "Z"))
        .unwrap_or(false)
}

/// The numbers of the `n0-N` lines in `text`, in order.
fn numbered(text: &str) -> Vec<u32> {
    text.split("n0-")
        .skip(1)
        .filter_map(|rest| rest.split("\r\n").next()?.parse().ok())
        .collect()
}

/// 40 keystroke echo round trips, sorted (the typed line cleared after).
fn keystroke_rtts(t: &mut TermClient) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..40 {
        let from = t.out.len();
        let start = Instant::now();
        t.send(b"x");
        assert!(t.read_until(from, "x", Duration::from_secs(5)), "no echo");
        times.push(start.elapsed());
    }
    // Ctrl-U: the line of x's is dropped, not run.
    t.send(b"\x15");
    t.run("echo clear$((0))", "clear0");
    times.sort();
    times
}

/// The runner of replica A, linked there through a proxy the test cuts; B
/// is the next URL it tries.
fn runner_on_a_through(p: &Pair, tenant: &Tenant) -> (Runner, crate::util::proxy::TcpProxy) {
    let proxy = crate::util::proxy::TcpProxy::to(&p.a.addr());
    let mut runner = Runner::enroll(&p.a, tenant);
    let urls = format!("{},{}", proxy.url("https"), p.b.url);
    runner.start(&["--server", &urls, "--heartbeat", "1s"]);
    wait_for(Duration::from_secs(20), "the runner linked to A", || {
        (links_held(&p.a) == Some(1) && links_held(&p.b) == Some(0)).then_some(())
    });
    (runner, proxy)
}

/// Cut the runner's link to A for good (A stays up): it links to B.
fn move_runner_to_b(p: &Pair, proxy: &crate::util::proxy::TcpProxy) -> Duration {
    let cut = Instant::now();
    proxy.set_mode(crate::util::proxy::Mode::Refuse);
    proxy.cut();
    wait_for(Duration::from_secs(30), "the runner linked to B", || {
        (links_held(&p.b) == Some(1) && links_held(&p.a) == Some(0)).then_some(())
    });
    cut.elapsed()
}

#[test]
fn a_terminal_session_survives_its_runner_moving_to_the_other_replica() {
    let pg = Postgres::start();
    let url = pg.database("term_move");
    let p = pair(&url);
    let on_a = p.a.tenant("term-move");
    let on_b = through(&on_a, &p.b);
    let (runner, proxy) = runner_on_a_through(&p, &on_a);
    let id = runner.id.clone();

    // Session 1: opened and attached on A directly. Session 2: opened on
    // A, its client attached through B (spliced to A).
    let mut t1 = TermClient::open(&p.a, &on_a.token, &id, "cols=80&rows=24")
        .unwrap_or_else(|e| panic!("terminal on A: {e:?}"));
    let tid1 = t1.session.clone();
    let pid1 = shell_pid(&mut t1);
    t1.send(b"v=kept$((6*7))\n");
    t1.run("echo v$((0))=$v", "v0=kept42");
    let (st, s) = on_a.call(
        "POST",
        &format!("/api/v1/runners/{id}/terminals"),
        Some(json!({})),
    );
    assert_eq!(st, 201, "{s}");
    let tid2 = s["id"].as_str().unwrap().to_owned();
    let mut t2 = TermClient::attach(&p.b, &on_b.token, &tid2, 0);
    let pid2 = shell_pid(&mut t2);
    t2.send(b"w=two$((1+1))\n");
    t2.run("echo w$((0))=$w", "w0=two2");

    let direct = keystroke_rtts(&mut t1);

    // Numbered lines printing while the link is cut and the runner
    // relinks to B: every one arrives, once, in order.
    let from = t1.out.len();
    // 100,000 lines (~700 KB, more than twice the window), in 100 chunks
    // over ~5 s.
    t1.send(
        b"for k in $(seq 0 99); do seq -f n0-%g $((k*1000+1)) $((k*1000+1000)); \
          sleep 0.05; done; echo done$((0))\n",
    );
    assert!(
        t1.read_until(from, "n0-20000\r\n", Duration::from_secs(15)),
        "{}",
        t1.text()
    );
    let took = move_runner_to_b(&p, &proxy);
    eprintln!("runner linked to B {took:?} after its link to A was cut");
    assert!(
        t1.read_until(from, "done0", Duration::from_secs(60)),
        "the loop's end through the relay: {}",
        String::from_utf8_lossy(&t1.out[from..])
    );
    let lines = numbered(&String::from_utf8_lossy(&t1.out[from..]));
    assert!(
        lines == (1..=100_000).collect::<Vec<u32>>(),
        "every line once, in order, across the move: {} lines, first out of order at {:?}",
        lines.len(),
        lines.iter().enumerate().find(|(i, n)| **n != *i as u32 + 1)
    );
    // The same shells, on A, through the relay of B.
    t1.run("echo v$((0))=$v", "v0=kept42");
    t2.run("echo w$((0))=$w", "w0=two2");
    assert_eq!(shell_pid(&mut t1), pid1);
    assert_eq!(shell_pid(&mut t2), pid2);
    let relayed = keystroke_rtts(&mut t1);
    eprintln!(
        "keystroke round trip, client on A: runner linked to A (through the test's \
         fault proxy) p50 {:?} p99 {:?}; runner on B, relayed p50 {:?} p99 {:?}",
        direct[direct.len() / 2],
        direct[direct.len() * 99 / 100],
        relayed[relayed.len() / 2],
        relayed[relayed.len() * 99 / 100]
    );
    assert!(relayed[relayed.len() * 99 / 100] < Duration::from_millis(500));
    // A resize after the move reaches the pty.
    t1.resize(100, 30);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let from = t1.out.len();
        t1.send(b"stty size\n");
        if t1.read_until(from, "30 100", Duration::from_secs(1)) || Instant::now() > end {
            break;
        }
    }
    assert!(t1.text().contains("30 100"), "the resize after the move");
    let log_a = p.a.log();
    assert!(
        log_a.contains("terminal sessions relayed by another replica"),
        "{log_a}"
    );
    assert!(
        p.b.log()
            .contains("relaying terminal sessions to their replica"),
        "{}",
        p.b.log()
    );

    // Output complete and in order: the scrollback (its newest 256 KiB),
    // attached again through B from offset 0, is byte for byte what the
    // first client read live at the same offsets (it takes the session
    // over: one client at a time).
    for _ in 0..10 {
        t1.pump();
    }
    let live = t1.out.clone();
    assert_eq!(t1.start, 0);
    let mut t3 = TermClient::attach(&p.b, &on_b.token, &tid1, 0);
    let end = Instant::now() + Duration::from_secs(15);
    while t3.offset() < live.len() as u64 && Instant::now() < end {
        t3.pump();
    }
    let skip = t3.start as usize;
    assert!(
        skip > 0 && live.len() - skip >= 200 * 1024,
        "the ring starts at {skip} of {}",
        live.len()
    );
    assert!(
        t3.out.len() >= live.len() - skip && t3.out[..live.len() - skip] == live[skip..],
        "the scrollback differs from what was read live ({} bytes from {skip} vs {})",
        t3.out.len(),
        live.len()
    );
    assert!(
        t1.wait_closed(Duration::from_secs(5)) || t1.notes.iter().any(|n| n["type"] == "detached"),
        "the first client was replaced"
    );

    // Closed: session 1 by its shell's exit, session 2 by DELETE through
    // B. Both end on A, once; the runner keeps no shell.
    t3.send(b"exit\n");
    assert_eq!(
        t3.wait_end(Duration::from_secs(15)).as_deref(),
        Some("exited 0")
    );
    let (st, v) = on_b.call("DELETE", &format!("/api/v1/terminals/{tid2}"), None);
    assert_eq!(st, 200, "closed through B: {v}");
    assert!(
        t2.wait_end(Duration::from_secs(15)).is_some(),
        "session 2's end"
    );
    wait_for(Duration::from_secs(10), "both shells gone", || {
        (!alive(pid1) && !alive(pid2)).then_some(())
    });
    for server in [&p.a, &p.b] {
        let t = through(&on_a, server);
        let (st, v) = t.call("GET", &format!("/api/v1/terminals?runner={id}"), None);
        assert_eq!(st, 200, "{v}");
        for tid in [&tid1, &tid2] {
            let row = v
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == tid.as_str())
                .unwrap_or_else(|| panic!("{tid} in {v}"));
            assert_eq!(row["open"], false, "{row}");
            assert!(row["closed_at"].is_string(), "{row}");
            let reason = row["reason"].as_str().unwrap();
            assert!(!reason.contains("unreachable"), "{row}");
        }
    }
    let (log_a, log_b) = (p.a.log(), p.b.log());
    for tid in [&tid1, &tid2] {
        let ended = |log: &str| {
            log.lines()
                .filter(|l| l.contains("terminal ended") && l.contains(tid.as_str()))
                .count()
        };
        assert_eq!(ended(&log_a), 1, "{tid} ended on A once: {log_a}");
        assert_eq!(ended(&log_b), 0, "{tid} is not B's: {log_b}");
    }
    drop(runner);
}

#[test]
fn a_terminal_whose_replica_is_killed_after_its_runner_moved_ends_on_the_runner() {
    let pg = Postgres::start();
    let url = pg.database("term_kill");
    let p = pair(&url);
    let on_a = p.a.tenant("term-kill");
    let on_b = through(&on_a, &p.b);
    let (runner, proxy) = runner_on_a_through(&p, &on_a);
    let id = runner.id.clone();
    let (st, s) = on_a.call(
        "POST",
        &format!("/api/v1/runners/{id}/terminals"),
        Some(json!({})),
    );
    assert_eq!(st, 201, "{s}");
    let tid = s["id"].as_str().unwrap().to_owned();
    let mut t = TermClient::attach(&p.b, &on_b.token, &tid, 0);
    let pid = shell_pid(&mut t);
    move_runner_to_b(&p, &proxy);
    // Relayed: the session on A answers through B's link.
    t.run("echo moved$((6*7))", "moved42");
    assert!(alive(pid));

    let killed = Instant::now();
    signal(&p.a.child, libc::SIGKILL);
    // A's rows are closed when B reaps A; B then finds no replica for the
    // runner's terminal and hangs it up there.
    wait_for(
        Duration::from_secs(40),
        "the shell hung up on the runner",
        || (!alive(pid)).then_some(()),
    );
    let gone = killed.elapsed();
    eprintln!("shell of the killed replica's session gone {gone:?} after kill -9");
    assert!(
        gone <= Duration::from_secs(25),
        "documented bound ~15 s: {gone:?}"
    );
    assert!(
        p.b.log()
            .contains("no replica holds this terminal's session"),
        "{}",
        p.b.log()
    );
    let (st, v) = on_b.call("GET", &format!("/api/v1/terminals?runner={id}"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v[0]["id"], tid.as_str(), "{v}");
    assert_eq!(v[0]["open"], false, "closed by the reaper: {v}");
    // The runner is still B's, healthy, and opens a new terminal there.
    let mut again = TermClient::open(&p.b, &on_b.token, &id, "cols=80&rows=24")
        .unwrap_or_else(|e| panic!("terminal on B: {e:?}"));
    again.run("echo fresh$((6*7))", "fresh42");
    drop(runner);
}

#[test]
fn a_terminal_of_a_runner_restarted_on_the_other_replica_ends_within_seconds() {
    let pg = Postgres::start();
    let url = pg.database("term_restart");
    let p = pair(&url);
    let on_a = p.a.tenant("term-restart");
    let (mut runner, _proxy) = runner_on_a_through(&p, &on_a);
    let id = runner.id.clone();
    let mut t = TermClient::open(&p.a, &on_a.token, &id, "cols=80&rows=24").unwrap();
    let pid = shell_pid(&mut t);
    let session = t.session.clone();

    // A new runner process, B's URL only: it has no terminal to confirm
    // (no term_alive), so A's session must not wait out its 90 s.
    signal(runner.child(), libc::SIGKILL);
    wait_exit(runner.child(), Duration::from_secs(5)).expect("runner killed");
    let restarted = Instant::now();
    runner.start(&["--server", &p.b.url, "--heartbeat", "1s"]);
    wait_for(Duration::from_secs(20), "the runner linked to B", || {
        (links_held(&p.b) == Some(1)).then_some(())
    });
    let reason = t.wait_end(Duration::from_secs(30));
    let took = restarted.elapsed();
    eprintln!("session of the restarted runner ended {took:?} after the restart");
    assert_eq!(
        reason.as_deref(),
        Some("the runner no longer has this terminal"),
        "{}",
        p.a.log()
    );
    assert!(
        took <= Duration::from_secs(20),
        "10 s wait + a look each 2 s: {took:?}"
    );
    assert!(!alive(pid), "the old process's shell is gone");
    let (st, v) = on_a.call("GET", &format!("/api/v1/terminals?runner={id}"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v[0]["id"].as_str(), &v[0]["open"]),
        (Some(session.as_str()), &json!(false)),
        "{v}"
    );
}

#[test]
fn a_terminal_session_follows_its_runner_from_b_to_c_relayed_once_at_a_time() {
    use crate::util::proxy::{Mode, TcpProxy};
    let pg = Postgres::start();
    let url = pg.database("term_hops");
    let p = pair(&url);
    let c = p.third(&url, "c");
    let on_a = p.a.tenant("term-hops");
    let (to_a, to_b) = (TcpProxy::to(&p.a.addr()), TcpProxy::to(&p.b.addr()));
    let mut runner = Runner::enroll(&p.a, &on_a);
    let urls = format!("{},{},{}", to_a.url("https"), to_b.url("https"), c.url);
    runner.start(&["--server", &urls, "--heartbeat", "1s"]);
    let linked = |want: [u64; 3]| {
        wait_for(Duration::from_secs(30), &format!("links {want:?}"), || {
            let have = [&p.a, &p.b, &c].map(|s| links_held(s).unwrap_or(9));
            (have == want).then_some(())
        })
    };
    linked([1, 0, 0]);
    let id = runner.id.clone();
    let mut t = TermClient::open(&p.a, &on_a.token, &id, "cols=80&rows=24")
        .unwrap_or_else(|e| panic!("terminal on A: {e:?}"));
    let pid = shell_pid(&mut t);
    t.send(b"v=hops$((6*7))\n");
    let from = t.out.len();
    t.send(b"for i in $(seq 1 600); do echo n$((0))-$i; sleep 0.01; done; echo done$((0))\n");
    assert!(t.read_until(from, "n0-50\r\n", Duration::from_secs(15)));
    // A ─▶ B (relayed to A), then B ─▶ C (relayed to A by C; B's relay ends).
    to_a.set_mode(Mode::Refuse);
    to_a.cut();
    linked([0, 1, 0]);
    t.run("echo v$((0))=$v", "v0=hops42");
    to_b.set_mode(Mode::Refuse);
    to_b.cut();
    linked([0, 0, 1]);
    assert!(
        t.read_until(from, "done0", Duration::from_secs(60)),
        "{}",
        String::from_utf8_lossy(&t.out[from..])
    );
    let lines = numbered(&String::from_utf8_lossy(&t.out[from..]));
    assert_eq!(
        lines,
        (1..=600).collect::<Vec<u32>>(),
        "every line once, in order, across two moves"
    );
    t.run("echo v$((0))=$v", "v0=hops42");
    assert_eq!(shell_pid(&mut t), pid);
    let log_a = p.a.log();
    let relayed: Vec<&str> = log_a
        .lines()
        .filter(|l| l.contains("terminal sessions relayed by another replica"))
        .collect();
    // From B, then from C, and never from B again once C relayed. (B may
    // relay twice: a relay broken under load is opened again while B
    // still holds the link, and A takes it while B's link row stands.)
    let from: Vec<bool> = relayed.iter().map(|l| l.contains("\"c\"")).collect();
    assert!(
        relayed.len() >= 2
            && !from[0]
            && from[from.len() - 1]
            && from.windows(2).all(|w| w[0] <= w[1]),
        "one or more relays from B, then from C: {log_a}"
    );
    // B's relay ended with B's link: A saw the runner away, then C's.
    assert!(
        log_a.contains("terminal relay ended: the runner is away"),
        "{log_a}"
    );
    // Closed through C: ended on A, once.
    let on_c = through(&on_a, &c);
    let (st, v) = on_c.call("DELETE", &format!("/api/v1/terminals/{}", t.session), None);
    assert_eq!(st, 200, "closed through C: {v}");
    assert!(t.wait_end(Duration::from_secs(15)).is_some());
    wait_for(Duration::from_secs(10), "the shell gone", || {
        (!alive(pid)).then_some(())
    });
    let ended =
        p.a.log()
            .lines()
            .filter(|l| l.contains("terminal ended") && l.contains(t.session.as_str()))
            .count();
    assert_eq!(ended, 1);
    runner.child().kill().ok();
}
