//! `make bench` cluster part (BENCH_ONLY=cluster, issue 18): three
//! `tether-server` replicas on one PostgreSQL, HAProxy (TCP mode) in front.
//!
//! ```text
//!  one real runner on replica r0 ─ job and terminal calls made on r1 (forwarded to r0)
//!     job line printed → seen by a follower on r1       p50, p99
//!     stored output fetched on r1 vs on r0              speed ratio (p50 times)
//!     a small request on r1 vs on r0                    the hop's own cost
//!     keystroke echo through r1 vs on r0                p50, p99, the difference
//!  tether-sim --reconnect: BENCH_CLUSTER_RUNNERS (3,000) through HAProxy
//!     kill -9 of r2 → its runners linked on r0/r1 again  seconds, attempts
//! ```
//!
//! Bounded: every wait has a limit; a figure that was not reached is
//! printed as what was (and said so on stderr). Knobs:
//! BENCH_CLUSTER_RUNNERS, BENCH_CLUSTER_LINES (job lines timed, 300),
//! BENCH_KEYSTROKES (shared with the terminal part, here at most 400).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::util::pg::Postgres;
use super::util::term::TermClient;
use super::util::*;
use super::{env_secs, percentile, Row};

struct Cluster {
    replicas: Vec<Server>,
    _dir: TempDir,
}

impl Cluster {
    /// `n` replicas on `url`, one certificate (copied from the first), each
    /// with its internal address.
    fn start(url: &str, n: usize) -> Cluster {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("cluster");
        let key = dir.path().join("cluster.key");
        std::fs::write(&key, "6b".repeat(32)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut replicas: Vec<Server> = Vec::new();
        for i in 0..n {
            let data = dir.path().join(format!("r{i}"));
            if let Some(first) = replicas.first() {
                std::fs::create_dir_all(data.join("tls")).unwrap();
                for f in ["ca.pem", "ca.key", "cert.pem", "key.pem"] {
                    std::fs::copy(first.data.join("tls").join(f), data.join("tls").join(f))
                        .unwrap();
                }
            }
            let internal = format!("127.0.0.1:{}", free_port());
            let id = format!("r{i}");
            let flags = [
                "--database",
                url,
                "--replica-id",
                &id,
                "--internal-addr",
                &internal,
                "--cluster-key",
                key.to_str().unwrap(),
                "--enroll-rate",
                "0",
            ];
            replicas.push(Server::start_on(&data, &flags));
        }
        Cluster {
            replicas,
            _dir: dir,
        }
    }

    /// Links each replica holds (`/healthz`); 0 for one that does not answer.
    fn links(&self, i: usize) -> u64 {
        let (st, v) = self.replicas[i].api().call("GET", "/healthz", None, None);
        if st == 200 {
            v["links"].as_u64().unwrap_or(0)
        } else {
            0
        }
    }
}

/// HAProxy in TCP mode over `backends`, each checked every 500 ms; a
/// connection a dead backend refuses is sent to another (redispatch).
struct Haproxy {
    child: Child,
    _dir: TempDir,
    url: String,
}

impl Haproxy {
    fn start(backends: &[String]) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("    server r{i} {b} check inter 500ms fall 2 rise 2\n"))
            .collect();
        let cfg = format!(
            "global\n    maxconn 8000\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
             timeout client 120s\n    timeout server 120s\n    retries 2\n    option redispatch\n\
             listen tether\n    bind 127.0.0.1:{port}\n    balance roundrobin\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("haproxy (Debian package haproxy, installed by packaging/dev-setup.sh)");
        wait_for(Duration::from_secs(10), "haproxy listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Haproxy {
            child,
            _dir: dir,
            url: format!("https://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(rows: &mut Vec<Row>) {
    let pg = Postgres::start();
    let url = pg.database("cluster");
    let mut cluster = Cluster::start(&url, 3);
    hop(rows, &cluster);
    failover(rows, &mut cluster);
}

/// The same tenant, its calls made to `server`.
fn on(tenant: &Tenant, server: &Server) -> Tenant {
    Tenant {
        id: tenant.id.clone(),
        token: tenant.token.clone(),
        api: server.api(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the extra hop costs: one real runner linked to r0, calls on r1.
fn hop(rows: &mut Vec<Row>, cluster: &Cluster) {
    let (r0, r1) = (&cluster.replicas[0], &cluster.replicas[1]);
    let direct = r0.tenant("bench-hop");
    let via = on(&direct, r1);
    let mut runner = Runner::enroll(r0, &direct);
    runner.start(&["--heartbeat", "5s", "--server", &r0.url]);
    via.wait_health(&runner.id, "active", Duration::from_secs(30));
    let id = runner.id.clone();

    // Job lines: each is its print time; the follower on r1 takes it apart.
    let lines = env_secs("BENCH_CLUSTER_LINES", 300);
    let script = format!(
        "sleep 2; i=0; while [ $i -lt {lines} ]; do date +%s%N; i=$((i+1)); sleep 0.01; done"
    );
    let (st, v) = via.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [id], "command": script })),
    );
    assert_eq!(st, 201, "{v}");
    let job = v[0]["id"].as_str().unwrap().to_owned();
    let mut follow = BufReader::new(via.api.stream(
        &format!("/api/v1/jobs/{job}/output?follow=1&stream=stdout"),
        &via.token,
    ));
    let mut lag = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        let mut line = String::new();
        if follow.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as f64;
        if let Ok(printed) = line.trim().parse::<f64>() {
            lag.push((now_ns - printed) / 1e6);
        }
    }
    if lag.len() < lines as usize {
        eprintln!(
            "bench: the follower on r1 saw {} of {lines} lines",
            lag.len()
        );
    }
    let how =
        format!("{lines} lines of `date +%s%N` 10 ms apart, followed raw on r1 (runner on r0)");
    let (p50, p99) = (percentile(&mut lag, 0.50), percentile(&mut lag, 0.99));
    rows.push(Row {
        what: "cluster: job line → watcher on another replica, p50".into(),
        value: p50,
        unit: "ms",
        goal: None,
        how: how.clone(),
    });
    rows.push(Row {
        what: "cluster: job line → watcher on another replica, p99".into(),
        value: p99,
        unit: "ms",
        goal: Some(100.0),
        how,
    });

    // Stored output: fetched on r0 (direct) and on r1 (relayed).
    let (st, v) = via.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [id], "command": "seq 1 400000" })),
    );
    assert_eq!(st, 201, "{v}");
    let big = v[0]["id"].as_str().unwrap().to_owned();
    wait_for(
        Duration::from_secs(120),
        "the output job to complete",
        || {
            let (_, v) = via.call("GET", &format!("/api/v1/jobs/{big}"), None);
            (v["complete"] == true).then_some(())
        },
    );
    let fetch = |t: &Tenant| {
        let start = Instant::now();
        let mut got = Vec::new();
        t.api
            .stream(
                &format!("/api/v1/jobs/{big}/output?stream=stdout"),
                &t.token,
            )
            .read_to_end(&mut got)
            .unwrap();
        (start.elapsed(), got.len())
    };
    let (mut d, mut f) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..15 {
        let (t, n) = fetch(&direct);
        d.push(ms(t));
        bytes = n;
        let (t, n) = fetch(&via);
        assert_eq!(n, bytes, "the same output through r1");
        f.push(ms(t));
    }
    let (d50, f50) = (percentile(&mut d, 0.5), percentile(&mut f, 0.5));
    rows.push(Row {
        what: "cluster: stored job output relayed by another replica vs direct".into(),
        value: d50 / f50,
        unit: "x",
        goal: None,
        how: format!(
            "{bytes} bytes, GET …/output 15× on r0 and on r1: p50 {d50:.1} ms vs {f50:.1} ms (goal ≥ 0.5x)"
        ),
    });

    // A small request answered by the holder from memory (the runner's
    // Docker state): what the hop itself costs, handshake or kept
    // connection (`cluster/internal.rs`).
    let small = |t: &Tenant| -> Vec<f64> {
        (0..200)
            .map(|_| {
                let start = Instant::now();
                let (st, v) = t.call("GET", &format!("/api/v1/runners/{id}/docker"), None);
                assert_eq!(st, 200, "{v}");
                ms(start.elapsed())
            })
            .collect()
    };
    let (mut sd, mut sv) = (small(&direct), small(&via));
    let (sd50, sv50) = (percentile(&mut sd, 0.5), percentile(&mut sv, 0.5));
    let (sd99, sv99) = (percentile(&mut sd, 0.99), percentile(&mut sv, 0.99));
    rows.push(Row {
        what: "cluster: small request answered through another replica, added p50".into(),
        value: sv50 - sd50,
        unit: "ms",
        goal: None,
        how: format!(
            "GET …/docker 200× on r0: p50 {sd50:.2} p99 {sd99:.2} ms; through r1: p50 {sv50:.2} p99 {sv99:.2} ms"
        ),
    });

    // Keystrokes: `cat` in raw mode echoes each byte; on r0 and through r1.
    let n = env_secs("BENCH_KEYSTROKES", 400).min(400) as usize;
    let rtt = |server: &Server| -> Vec<f64> {
        let mut t = TermClient::open(server, &direct.token, &id, "cols=80&rows=24")
            .unwrap_or_else(|e| panic!("terminal: {e:?}"));
        t.send(b"stty raw -echo; echo RE\"\"ADY; exec cat\n");
        assert!(
            t.read_until(0, "READY", Duration::from_secs(15)),
            "cat did not start: {}",
            t.text()
        );
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..4 {
            t.pump();
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let from = t.out.len();
            let start = Instant::now();
            t.send(b"x");
            assert!(t.read_until(from, "x", Duration::from_secs(5)), "no echo");
            times.push(ms(start.elapsed()));
        }
        times
    };
    let (mut a, mut b) = (rtt(r0), rtt(r1));
    let (a50, a99) = (percentile(&mut a, 0.5), percentile(&mut a, 0.99));
    let (b50, b99) = (percentile(&mut b, 0.5), percentile(&mut b, 0.99));
    let how = format!("{n} keys to `cat` (raw), on r0: p50 {a50:.2} p99 {a99:.2} ms; through r1: p50 {b50:.2} p99 {b99:.2} ms");
    rows.push(Row {
        what: "cluster: keystroke round trip added by the hop, p50".into(),
        value: b50 - a50,
        unit: "ms",
        goal: None,
        how: how.clone(),
    });
    rows.push(Row {
        what: "cluster: keystroke round trip added by the hop, p99".into(),
        value: b99 - a99,
        unit: "ms",
        goal: Some(5.0),
        how,
    });
}

/// BENCH_CLUSTER_RUNNERS simulated runners through HAProxy, then r2
/// killed: how long until every runner it held is linked again, and how
/// many attempts that took.
fn failover(rows: &mut Vec<Row>, cluster: &mut Cluster) {
    let count = env_secs("BENCH_CLUSTER_RUNNERS", 3000);
    let backends: Vec<String> = cluster.replicas.iter().map(Server::addr).collect();
    let lb = Haproxy::start(&backends);
    let tenant = cluster.replicas[0].tenant("bench-cluster");
    let sim = runner_bin().with_file_name("tether-sim");
    let out_path = cluster.replicas[0].data.join("sim.out");
    let out = std::fs::File::create(&out_path).unwrap();
    // Held long enough for the kill and the way back (bounded below).
    let hold = 45;
    let mut child = Command::new(&sim)
        .args(["--api", &lb.url, "--token", &tenant.token, "--ca-file"])
        .arg(&cluster.replicas[0].ca)
        .args(["--count", &count.to_string(), "--heartbeat", "5s"])
        .args([
            "--duration",
            &format!("{hold}s"),
            "--retries",
            "8",
            "--reconnect",
        ])
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", sim.display()));
    eprintln!("bench: {count} simulated runners through HAProxy to 3 replicas");
    let linked = |c: &Cluster| (0..3).map(|i| c.links(i)).collect::<Vec<_>>();
    let limit = Instant::now() + Duration::from_secs(300);
    let mut held = linked(cluster);
    while held.iter().sum::<u64>() < count && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(500));
        held = linked(cluster);
    }
    eprintln!("bench: links per replica {held:?}");
    // Settled: pings flowing, nothing connecting.
    std::thread::sleep(Duration::from_secs(3));
    let victim = held[2];
    let killed = Instant::now();
    kill_hard(&mut cluster.replicas[2].child);
    let mut back = None;
    while killed.elapsed() < Duration::from_secs(60) {
        if cluster.links(0) + cluster.links(1) >= count {
            back = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if back.is_none() {
        eprintln!(
            "bench: only {} of {count} linked 60 s after the kill",
            cluster.links(0) + cluster.links(1)
        );
    }
    let _ = child.wait();
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    print!("{text}");
    let field = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with("tether-sim: reconnect "))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")[..]))
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    rows.push(Row {
        what: format!("cluster {count}: kill -9 of a replica → its runners linked again"),
        value: back.map_or(60.0, |d| d.as_secs_f64()),
        unit: "s",
        goal: Some(15.0),
        how: format!(
            "{victim} runners on r2; /healthz links of r0 + r1 polled every 100 ms until {count}"
        ),
    });
    rows.push(Row {
        what: format!("cluster {count}: the same, first loss to last welcome (tether-sim)"),
        value: field("all_back_ms") / 1000.0,
        unit: "s",
        goal: Some(15.0),
        how: "tether-sim --reconnect (the runner's backoff: 1 s ± 10 % ×3, then jitter)".into(),
    });
    rows.push(Row {
        what: format!("cluster {count}: reconnect attempts per runner lost"),
        value: field("attempts") / field("lost").max(1.0),
        unit: "",
        goal: None,
        how: format!(
            "attempts {} (failed {}) for {} runners lost; 1.0 = no herd beyond the backoff",
            field("attempts"),
            field("failed"),
            field("lost")
        ),
    });
}

fn kill_hard(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
