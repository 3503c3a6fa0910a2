//! `make bench` attack section (BENCH_ONLY=attack): the release server under
//! the unauthenticated load issue 15 names, on loopback, bounded in time.
//!
//! 1. Login flood: BENCH_ATTACKERS (16) clients, each from its own loopback
//!    address (127.0.1.x), for BENCH_ATTACK_SECS (20 s) send logins as fast
//!    as they are answered: every other one with a 1.9 MB tenant name, the
//!    rest small wrong passwords for made-up users (each costs a hash until
//!    the per-address rate stops it). Meanwhile a legitimate user logs in
//!    from a fresh address (127.0.2.x) every 250 ms, and BENCH_ATTACK_RUNNERS
//!    (100) simulated runners stay connected. Figures: the server's RSS
//!    growth (peak − before), the legitimate logins' p99 latency and how many
//!    failed, and the runners that stayed active.
//! 2. Slow bodies: BENCH_SLOW_CONNS (2,000) TLS connections from 8 loopback
//!    addresses (127.0.3.x) each send the headers of a login and one byte of
//!    its body, then a byte every 5 s. With them held, a real runner's link
//!    (through a TCP proxy) is cut three times, each time just after a
//!    fresh start (so its backoff is the first retry's 1 s, not a grown
//!    one); the figure is the longest time from a cut to the runner
//!    connected again, against the same measured before the attack.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::util::proxy::TcpProxy;
use super::util::*;
use super::{env_secs, percentile, Row};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TCP connection to `dst` from the loopback address `src` (Linux answers
/// on all of 127/8), so each attacker is its own client address.
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 server address expected")
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; on error it is
    // closed; on success ownership moves into the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(src, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sin(*dst.ip(), dst.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn open_tls(cfg: &Arc<rustls::ClientConfig>, src: Ipv4Addr, dst: SocketAddr) -> Option<Tls> {
    let tcp = connect_from(src, dst).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(15))).ok()?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).ok()?;
    }
    Some(tls)
}

/// Send one request (head, then body; errors ignored: the server may
/// answer and close before the body is all sent) and read the status.
fn exchange(tls: &mut Tls, head: &str, body: &[u8]) -> u16 {
    if tls.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let _ = tls.write_all(body).and_then(|()| tls.flush());
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 8192 {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn login_request(body: &[u8]) -> String {
    format!(
        "POST /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
}

/// RSS sampled every 50 ms until `stop`: the peak, in KiB.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

pub fn run(rows: &mut Vec<Row>) {
    login_flood(rows);
    slow_bodies(rows);
}

fn active_runners(tenant: &Tenant) -> usize {
    let (_, list) = tenant.call("GET", "/api/v1/runners", None);
    list.as_array()
        .map(|a| a.iter().filter(|r| r["health"] == "active").count())
        .unwrap_or(0)
}

fn login_flood(rows: &mut Vec<Row>) {
    let secs = env_secs("BENCH_ATTACK_SECS", 20);
    let attackers = env_secs("BENCH_ATTACKERS", 16) as u8;
    let runners = env_secs("BENCH_ATTACK_RUNNERS", 100);
    // One address enrolls the whole simulated fleet: no per-address rate.
    let server = Server::start_with(&["--enroll-rate", "0"]);
    let tenant = server.tenant("bench");
    let (st, v) = server.api().call(
        "POST",
        "/api/v1/tenants/bench/users",
        Some(&server.admin_token),
        Some(serde_json::json!({"name": "ada", "password": "pw-of-8-chars", "role": "viewer"})),
    );
    assert_eq!(st, 201, "{v}");
    let sim = runner_bin().with_file_name("tether-sim");
    let mut sim = std::process::Command::new(&sim)
        .args(["--api", &server.url, "--token", &tenant.token, "--ca-file"])
        .arg(&server.ca)
        .args(["--count", &runners.to_string(), "--heartbeat", "5s"])
        .args(["--duration", &format!("{}s", secs + 60)])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", sim.display()));
    wait_for(Duration::from_secs(60), "simulated runners active", || {
        (active_runners(&tenant) as u64 >= runners).then_some(())
    });
    let cfg = tls_config(&server.ca);
    let dst: SocketAddr = server.addr().parse().unwrap();
    // Steady state of a server that has served logins: both hashing slots
    // have had their 19 MiB (the allocator keeps it), as after any two
    // logins at once. The flood must not add to that.
    std::thread::scope(|s| {
        for i in 0..4u8 {
            let cfg = &cfg;
            s.spawn(move || {
                let body = br#"{"tenant":"bench","name":"ada","password":"pw-of-8-chars"}"#;
                let mut tls = open_tls(cfg, Ipv4Addr::new(127, 0, 4, 1 + i), dst).unwrap();
                assert_eq!(exchange(&mut tls, &login_request(body), body), 200);
            });
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let pid = server.child.id();
    let before = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = watch_rss(pid, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let counts: Arc<Mutex<std::collections::BTreeMap<u16, u64>>> = Default::default();
    let huge = format!(
        r#"{{"tenant":"{}","name":"ada","password":"pw-of-8-chars"}}"#,
        "t".repeat(1_900_000)
    );
    eprintln!("bench: login flood, {attackers} clients for {secs} s, {runners} simulated runners");
    let min_active = AtomicU64::new(runners);
    let legit: Vec<(f64, u16)> = std::thread::scope(|s| {
        for a in 0..attackers {
            let (cfg, counts, huge) = (&cfg, &counts, &huge);
            s.spawn(move || {
                let src = Ipv4Addr::new(127, 0, 1, 10 + a);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let body = if n % 2 == 0 {
                        huge.clone().into_bytes()
                    } else {
                        format!(
                            r#"{{"tenant":"bench","name":"u{a}x{n}","password":"wrong-guess"}}"#
                        )
                        .into_bytes()
                    };
                    let code = match open_tls(cfg, src, dst) {
                        Some(mut tls) => exchange(&mut tls, &login_request(&body), &body),
                        None => 0,
                    };
                    *counts.lock().unwrap().entry(code).or_default() += 1;
                }
            });
        }
        s.spawn(|| {
            while Instant::now() < deadline {
                let n = active_runners(&tenant) as u64;
                min_active.fetch_min(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let legit = s.spawn(|| {
            let mut out = Vec::new();
            let body = br#"{"tenant":"bench","name":"ada","password":"pw-of-8-chars"}"#;
            let mut i = 0u8;
            while Instant::now() < deadline {
                i = i.wrapping_add(1);
                let src = Ipv4Addr::new(127, 0, 2, i.max(1));
                let t = Instant::now();
                let code = match open_tls(&cfg, src, dst) {
                    Some(mut tls) => exchange(&mut tls, &login_request(body), body),
                    None => 0,
                };
                out.push((t.elapsed().as_secs_f64() * 1000.0, code));
                std::thread::sleep(Duration::from_millis(250));
            }
            out
        });
        legit.join().unwrap()
    });
    stop.store(true, Ordering::Relaxed);
    let peak = peak.join().unwrap();
    let active_after = active_runners(&tenant);
    let _ = sim.kill();
    let _ = sim.wait();
    let counts = counts.lock().unwrap().clone();
    let total: u64 = counts.values().sum();
    eprintln!("bench: flood answers by status: {counts:?}");
    let mut ms: Vec<f64> = legit.iter().map(|(ms, _)| *ms).collect();
    let failed = legit.iter().filter(|(_, c)| *c != 200).count();
    let cmd = "BENCH_ONLY=attack make bench";
    rows.push(Row {
        what: format!(
            "login flood: server RSS growth ({total} requests, {attackers} clients, 1.9 MB bodies)"
        ),
        value: peak.saturating_sub(before) as f64 / 1024.0,
        unit: "MiB",
        goal: Some(32.0),
        how: format!(
            "VmRSS peak (50 ms samples) − before ({before} KiB, after 4 logins warmed both Argon2 slots); {cmd}"
        ),
    });
    rows.push(Row {
        what: format!("login flood: legitimate login p99 ({} logins)", legit.len()),
        value: percentile(&mut ms, 0.99),
        unit: "ms",
        goal: Some(1000.0),
        how: format!("TLS connect + POST /api/v1/session, each from its own address; {cmd}"),
    });
    rows.push(Row {
        what: "login flood: legitimate logins not answered 200".into(),
        value: failed as f64,
        unit: "",
        goal: None,
        how: format!("of {}; {cmd}", legit.len()),
    });
    rows.push(Row {
        what: format!("login flood: runners active, lowest during / after (of {runners})"),
        value: min_active.load(Ordering::Relaxed).min(active_after as u64) as f64,
        unit: "",
        goal: None,
        how: format!("tether-sim, GET /api/v1/runners every 1 s; {cmd}"),
    });
}

/// Start the runner afresh (its backoff at the first failure: 1 s ± 10 %),
/// wait until the server has it, cut its link at the proxy and time until
/// the server has it again (a new `connected_since`), polled every 20 ms.
fn reconnect_time(tenant: &Tenant, proxy: &TcpProxy, runner: &mut Runner) -> f64 {
    if let Some(child) = runner.child.as_mut() {
        signal(child, libc::SIGTERM);
        let _ = wait_exit(child, Duration::from_secs(10));
        wait_for(Duration::from_secs(30), "runner gone", || {
            (tenant.health(&runner.id) != "active").then_some(())
        });
    }
    runner.start(&["--server", &proxy.url("https")]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(30));
    // connected_since has whole seconds: cut more than a second after it,
    // so the next one differs.
    std::thread::sleep(Duration::from_millis(1100));
    let since = tenant.runner(&runner.id)["connected_since"].clone();
    let t = Instant::now();
    proxy.cut();
    wait_for(Duration::from_secs(30), "runner reconnected", || {
        let r = tenant.runner(&runner.id);
        (r["health"] == "active" && r["connected_since"] != since).then_some(())
    });
    t.elapsed().as_secs_f64()
}

/// This process needs a descriptor per slow connection.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own; setrlimit reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn slow_bodies(rows: &mut Vec<Row>) {
    let conns = env_secs("BENCH_SLOW_CONNS", 2000) as usize;
    raise_open_files();
    let server = Server::start();
    let tenant = server.tenant("bench");
    let proxy = TcpProxy::to(&server.addr());
    let mut runner = Runner::enroll(&server, &tenant);
    let baseline = (0..3)
        .map(|_| reconnect_time(&tenant, &proxy, &mut runner))
        .fold(0.0, f64::max);

    let cfg = tls_config(&server.ca);
    let dst: SocketAddr = server.addr().parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let head =
        "POST /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{";
    eprintln!("bench: {conns} slow-body connections");
    let holders: Vec<_> = (0..8u8)
        .map(|h| {
            let (cfg, stop, opened) = (cfg.clone(), stop.clone(), opened.clone());
            std::thread::spawn(move || {
                let src = Ipv4Addr::new(127, 0, 3, 1 + h);
                let mut held: Vec<Tls> = Vec::new();
                for _ in 0..conns / 8 {
                    if let Some(mut tls) = open_tls(&cfg, src, dst) {
                        if tls
                            .write_all(head.as_bytes())
                            .and_then(|()| tls.flush())
                            .is_ok()
                        {
                            held.push(tls);
                            opened.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // A byte every 5 s: a slowloris, not an idle connection.
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(5));
                    held.retain_mut(|t| t.write_all(b" ").and_then(|()| t.flush()).is_ok());
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(60), "slow connections open", || {
        (opened.load(Ordering::Relaxed) as usize >= conns * 95 / 100).then_some(())
    });
    let open_at_cut = opened.load(Ordering::Relaxed);
    let rss_held = rss_kib(server.child.id());
    let during = (0..3)
        .map(|_| reconnect_time(&tenant, &proxy, &mut runner))
        .fold(0.0, f64::max);
    stop.store(true, Ordering::Relaxed);
    for h in holders {
        let _ = h.join();
    }
    let cmd = "BENCH_ONLY=attack make bench";
    rows.push(Row {
        what: format!("runner reconnect with {open_at_cut} slow-body connections held (worst of 3)"),
        value: during,
        unit: "s",
        goal: Some(2.0),
        how: format!("cut at a TCP proxy → new connected_since in the API (1 s of it is the runner's backoff); {cmd}"),
    });
    rows.push(Row {
        what: format!("server RSS with {open_at_cut} slow-body connections held"),
        value: rss_held as f64 / 1024.0,
        unit: "MiB",
        goal: None,
        how: format!("VmRSS; {cmd}"),
    });
    rows.push(Row {
        what: "runner reconnect, no attack (worst of 3)".into(),
        value: baseline,
        unit: "s",
        goal: None,
        how: format!("same; {cmd}"),
    });
}
