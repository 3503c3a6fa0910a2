//! Alerts from real data: a real runner's fingerprint, a real Docker
//! engine's container events, a real link cut by the fault proxy, each
//! delivered to a webhook receiver on loopback (`util/hooks.rs`). The
//! server's own tests (`server/tests/server/alerts.rs`) cover the rules,
//! channels, retries and silences with scripted input.

use crate::util::hooks::Hooks;
use crate::util::proxy::{Mode, TcpProxy};
use crate::util::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// A server that may notify loopback receivers, a tenant, and a webhook
/// channel to `hooks`.
fn setup(hooks: &Hooks) -> (Server, Tenant, String) {
    let server = Server::start_with(&["--alert-private-targets"]);
    let tenant = server.tenant("acme");
    let (st, ch) = tenant.call(
        "POST",
        "/api/v1/alerts/channels",
        Some(json!({"name": "ops", "config": {"kind": "webhook", "url": hooks.url()}})),
    );
    assert_eq!(st, 201, "{ch}");
    let ch = ch["id"].as_str().unwrap().to_owned();
    (server, tenant, ch)
}

fn rule(tenant: &Tenant, body: Value) {
    let (st, v) = tenant.call("POST", "/api/v1/alerts/rules", Some(body));
    assert_eq!(st, 201, "{v}");
}

fn summary(v: &Value) -> &str {
    v["summary"].as_str().unwrap_or("")
}

#[test]
fn a_new_listening_port_on_the_host_is_an_alert_naming_port_and_process() {
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&[
        "--fingerprint-interval",
        "1s",
        "--metrics-interval",
        "off",
        "--docker-socket",
        "off",
    ]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    rule(
        &tenant,
        json!({"name": "ports", "kind": "drift", "paths": ["listening"], "channels": [ch]}),
    );
    // Let the first full fingerprint land: what listens already is no drift.
    std::thread::sleep(Duration::from_secs(3));

    let socket = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let want = format!("0.0.0.0:{port}");
    let n = hooks.wait(Duration::from_secs(15), "drift naming the port", |v| {
        summary(v).contains(&want)
    });
    assert_eq!(n["state"], "firing", "{n}");
    let s = summary(&n);
    assert!(
        s.contains("listening tcp") && s.contains(&format!("opened by {}", comm.trim())),
        "{s}"
    );
    drop(socket);
}

#[test]
fn a_crash_looping_container_is_one_notification_with_its_restart_count() {
    let _engine = docker::ensure();
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--metrics-interval", "off", "--fingerprint-interval", "off"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let name = format!("tether-crashloop-{}", std::process::id());
    rule(
        &tenant,
        json!({"name": "crashloop", "kind": "container_restarts", "count": 3, "within_s": 120,
               "containers": {"name": name}, "channels": [ch]}),
    );
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, "--restart", "always"])
        .args([docker::IMAGE, "sh", "-c", "sleep 0.2; exit 1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed = || {
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    };
    // Docker's restart delay doubles from 100 ms: four exits within ~3 s.
    let n = hooks.wait(Duration::from_secs(40), "the crash loop", |v| {
        v["rule_name"] == "crashloop"
    });
    removed();
    assert_eq!(n["state"], "firing", "{n}");
    let s = summary(&n);
    assert!(s.contains("restart") || s.contains("exit"), "{s}");
    assert!(
        s.chars().any(|c| c.is_ascii_digit() && c >= '4'),
        "the count (more than 3) is named: {s}"
    );
    // The loop went on while it fired: still one notification for it.
    let more: Vec<Value> = hooks
        .drain_for(Duration::from_secs(5))
        .into_iter()
        .filter(|v| v["rule_name"] == "crashloop" && v["state"] == "firing")
        .collect();
    assert!(more.is_empty(), "notified again: {more:?}");
}

#[test]
fn a_black_holed_link_is_notified_within_the_rule_time_and_resolved_once() {
    let hooks = Hooks::start();
    let (server, tenant, ch) = setup(&hooks);
    let proxy = TcpProxy::to(&server.addr());
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s", "--server", &proxy.url("https")]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let for_s = 3;
    rule(
        &tenant,
        json!({"name": "down", "kind": "unreachable", "for_s": for_s, "channels": [ch]}),
    );
    std::thread::sleep(Duration::from_millis(300));

    // Silence, not a close: the server finds out by its own liveness check.
    proxy.set_mode(Mode::Blackhole);
    let cut = std::time::Instant::now();
    let detected = tenant.wait_health(&runner.id, "unreachable", Duration::from_secs(30));
    let n = hooks.wait(Duration::from_secs(30), "unreachable", |v| {
        v["state"] == "firing" && v["runner_id"] == runner.id.as_str()
    });
    let took = cut.elapsed();
    // From the health change: the rule's N s plus 2 s (the poll above is
    // every few hundred ms, so `detected` is late if anything).
    let after_health = took.saturating_sub(detected);
    eprintln!("black hole: unreachable after {detected:?}, notified {after_health:?} later");
    assert!(
        after_health <= Duration::from_secs(for_s + 2),
        "notified {after_health:?} after the health change: {n}"
    );
    assert!(
        after_health >= Duration::from_secs(for_s) - Duration::from_millis(500),
        "the rule's {for_s} s were not waited: {after_health:?}"
    );

    proxy.set_mode(Mode::Forward);
    let resolved = hooks.wait(Duration::from_secs(70), "resolved", |v| {
        v["state"] == "resolved"
    });
    assert_eq!(resolved["runner_id"], runner.id.as_str(), "{resolved}");
    assert_eq!(resolved["rule_name"], "down", "{resolved}");
    // Once: nothing more about it while the link stays up.
    let more = hooks.drain_for(Duration::from_secs(4));
    assert!(more.is_empty(), "{more:?}");
}
