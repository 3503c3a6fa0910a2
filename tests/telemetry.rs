//! Host telemetry end to end: metrics arrive and can be queried, a cut link
//! leaves no hole in the series, and a fingerprint change (a new listening
//! port, a new firewall rule) is recorded as drift.

use crate::util::proxy::{Mode, TcpProxy};
use crate::util::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Raw points of one series over the last `since`.
fn points(tenant: &Tenant, runner: &str, series: &str, since: &str) -> Vec<(u64, f64)> {
    let path =
        format!("/api/v1/runners/{runner}/metrics?since={since}&resolution=raw&series={series}");
    let (st, v) = tenant.call("GET", &path, None);
    assert_eq!(st, 200, "{path}: {v}");
    let Some(s) = v["series"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == series))
    else {
        return Vec::new();
    };
    s["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p[0].as_u64()?, p[1].as_f64()?)))
        .collect()
}

fn drift(tenant: &Tenant, runner: &str) -> Vec<String> {
    let (st, v) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{runner}/drift?since=1h"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap_or("").to_string())
        .collect()
}

fn telemetry_runner(server: &Server, tenant: &Tenant, extra: &[&str]) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    let mut args = vec![
        "--heartbeat",
        "1s",
        "--metrics-interval",
        "1s",
        "--fingerprint-interval",
        "2s",
    ];
    args.extend_from_slice(extra);
    runner.start(&args);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    runner
}

#[test]
fn metrics_arrive_and_are_queryable_through_api_cli_and_prometheus() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let other = server.tenant("other");
    let runner = telemetry_runner(&server, &tenant, &[]);

    let pts = wait_for(Duration::from_secs(15), "three cpu samples", || {
        let p = points(&tenant, &runner.id, "cpu.busy", "5m");
        (p.len() >= 3).then_some(p)
    });
    for (_, v) in &pts {
        assert!(
            (0.0..=100.0).contains(v),
            "cpu.busy is a percentage: {pts:?}"
        );
    }

    let (st, latest) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{}/metrics/latest", runner.id),
        None,
    );
    assert_eq!(st, 200, "{latest}");
    let text = latest.to_string();
    for name in [
        "mem.total",
        "load.1",
        "uptime",
        "proc.tasks",
        "ip6.in_bytes",
    ] {
        assert!(text.contains(name), "latest lacks {name}: {text}");
    }

    // Prometheus text: this tenant's runner only, with an up gauge.
    let body = prometheus(&server, &tenant.token);
    assert!(body.contains(&runner.id), "{body}");
    assert!(
        body.lines().any(|l| l.starts_with("tether_runner_up{")
            && l.contains(&runner.id)
            && l.ends_with(" 1")),
        "{body}"
    );
    assert!(body.lines().any(|l| l.starts_with("# TYPE ")), "{body}");
    assert!(
        !prometheus(&server, &other.token).contains(&runner.id),
        "another tenant sees the runner"
    );
    let (st, _) = other.call(
        "GET",
        &format!("/api/v1/runners/{}/metrics?since=1h", runner.id),
        None,
    );
    assert_eq!(st, 404);

    let out = Command::new(server_bin())
        .args([
            "metrics",
            &runner.id,
            "--since",
            "5m",
            "--api",
            &server.url,
            "--token",
            &tenant.token,
            "--ca-file",
        ])
        .arg(&server.ca)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("cpu.busy"), "{text}");
}

fn prometheus(server: &Server, token: &str) -> String {
    let (st, v) = server
        .api()
        .call("GET", "/api/v1/metrics/prometheus", Some(token), None);
    assert_eq!(st, 200, "{v}");
    match v {
        Value::String(s) => s,
        other => panic!("prometheus answer is not text: {other}"),
    }
}

#[test]
fn samples_missed_during_a_cut_are_backfilled_without_a_hole_or_a_duplicate() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let proxy = TcpProxy::to(&server.addr());
    let runner = telemetry_runner(&server, &tenant, &["--server", &proxy.url("https")]);
    wait_for(Duration::from_secs(15), "first samples", || {
        (points(&tenant, &runner.id, "uptime", "5m").len() >= 2).then_some(())
    });

    let cut_at = now_ms();
    proxy.set_mode(Mode::Blackhole);
    tenant.wait_health(&runner.id, "unreachable", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(6));
    proxy.set_mode(Mode::Forward);
    let healed_at = now_ms();
    tenant.wait_health(&runner.id, "active", Duration::from_secs(40));

    // Every 1 s tick between shortly before the cut and the heal is there once.
    let pts = wait_for(Duration::from_secs(20), "backfill to arrive", || {
        let p = points(&tenant, &runner.id, "uptime", "10m");
        p.iter().any(|(ts, _)| *ts > healed_at).then_some(p)
    });
    let window: Vec<u64> = pts
        .iter()
        .map(|(ts, _)| *ts)
        .filter(|ts| *ts + 3000 >= cut_at && *ts <= healed_at)
        .collect();
    assert!(
        window.len() >= ((healed_at - cut_at) / 1000) as usize,
        "too few samples in the cut: {window:?}"
    );
    for pair in window.windows(2) {
        assert!(
            pair[1] > pair[0],
            "duplicate or unordered timestamps: {window:?}"
        );
        assert!(
            pair[1] - pair[0] <= 1600,
            "a hole between {} and {}: {window:?}",
            pair[0],
            pair[1]
        );
    }
}

#[test]
fn a_new_listening_port_is_recorded_as_drift() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = telemetry_runner(&server, &tenant, &[]);
    wait_for(Duration::from_secs(15), "a baseline fingerprint", || {
        let (st, v) = tenant.call(
            "GET",
            &format!("/api/v1/runners/{}/fingerprint", runner.id),
            None,
        );
        (st == 200 && v.to_string().contains("kernel")).then_some(())
    });

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let line = wait_for(Duration::from_secs(20), "drift for the new port", || {
        drift(&tenant, &runner.id)
            .into_iter()
            .find(|t| t.contains("listening") && t.contains(&port))
    });
    assert!(line.contains('+'), "an addition: {line}");
    eprintln!("drift after {:?}: {line}", started.elapsed());

    drop(listener);
    wait_for(Duration::from_secs(20), "drift for the closed port", || {
        drift(&tenant, &runner.id)
            .into_iter()
            .find(|t| t.contains(&port) && t.contains('-'))
    });

    let out = Command::new(server_bin())
        .args([
            "drift",
            &runner.id,
            "--api",
            &server.url,
            "--token",
            &tenant.token,
            "--ca-file",
        ])
        .arg(&server.ca)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&port),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// An iptables rule that is removed again when the test ends.
struct Rule(Vec<String>);

impl Rule {
    fn add(port: u16) -> Rule {
        let spec: Vec<String> = [
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-m",
            "comment",
            "--comment",
            "tether-drift-test",
            "-j",
            "ACCEPT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let st = Command::new("iptables")
            .arg("-A")
            .args(&spec)
            .status()
            .expect("iptables is installed (make test's set-up does)");
        assert!(st.success(), "iptables -A failed");
        Rule(spec)
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = Command::new("iptables").arg("-D").args(&self.0).status();
    }
}

#[test]
fn a_new_firewall_rule_is_recorded_as_drift() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = telemetry_runner(&server, &tenant, &[]);
    wait_for(
        Duration::from_secs(15),
        "a baseline fingerprint with firewall rules",
        || {
            let (st, v) = tenant.call(
                "GET",
                &format!("/api/v1/runners/{}/fingerprint", runner.id),
                None,
            );
            (st == 200 && !v["firewall"].is_null()).then_some(())
        },
    );
    // A port number unlikely to be used by a parallel test's rule.
    let port = 40000 + (std::process::id() % 20000) as u16;
    let _rule = Rule::add(port);
    let line = wait_for(Duration::from_secs(20), "drift for the new rule", || {
        drift(&tenant, &runner.id)
            .into_iter()
            .find(|t| t.contains("firewall") && t.contains(&port.to_string()))
    });
    eprintln!("firewall drift: {line}");
}
