//! Honest health: the server knows within seconds that a runner is gone, says
//! so, pushes the change live, and keeps the history.

use crate::util::proxy::{Mode, TcpProxy};
use crate::util::*;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn active_runner(server: &Server, tenant: &Tenant, args: &[&str]) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    runner.start(args);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    runner
}

#[test]
fn sigkill_marks_the_runner_unreachable_within_one_second() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let mut runner = active_runner(&server, &tenant, &["--heartbeat", "5s"]);
    signal(runner.child(), libc::SIGKILL);
    let took = tenant.wait_health(&runner.id, "unreachable", Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn sigterm_closes_cleanly_and_the_server_sees_it_at_once() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let mut runner = active_runner(&server, &tenant, &["--heartbeat", "5s"]);
    signal(runner.child(), libc::SIGTERM);
    let took = tenant.wait_health(&runner.id, "unreachable", Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let st = wait_exit(runner.child(), Duration::from_secs(5)).expect("runner exits on SIGTERM");
    assert_eq!(st.code(), Some(0));
    let (_, hist) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{}/health", runner.id),
        None,
    );
    let last = hist.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["health"], "unreachable");
    assert!(
        last["reason"].as_str().unwrap().contains("closed"),
        "{last}"
    );
}

#[test]
fn a_silent_link_is_detected_within_three_heartbeats_and_heals_when_restored() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let proxy = TcpProxy::to(&server.addr());
    let mut runner = Runner::enroll(&server, &tenant);
    // `--server` overrides the enrolled URL: the runner goes through the proxy.
    runner.start(&["--heartbeat", "1s", "--server", &proxy.url("https")]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));

    proxy.set_mode(Mode::Blackhole);
    let took = tenant.wait_health(&runner.id, "unreachable", Duration::from_secs(10));
    assert!(
        took <= Duration::from_secs(3),
        "server noticed after {took:?}, limit is 3 intervals"
    );

    // The runner's own watchdog notices too (it has seen no frame for 3 s).
    wait_for(
        Duration::from_secs(6),
        "runner to leave 'connected'",
        || {
            let out = runner.cmd().arg("status").output().unwrap();
            (out.status.code() == Some(3)).then_some(())
        },
    );

    proxy.set_mode(Mode::Forward);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(30));
}

#[test]
fn health_changes_are_pushed_live_and_kept_as_history() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let mut runner = active_runner(&server, &tenant, &["--heartbeat", "1s"]);

    let (tx, rx) = mpsc::channel::<String>();
    let stream = tenant.api.stream("/api/v1/events", &tenant.token);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    signal(runner.child(), libc::SIGKILL);
    let deadline = killed + Duration::from_secs(5);
    let event = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("no health event pushed within 5 s");
        if let Some(data) = line.strip_prefix("data:") {
            let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
            if v["runner_id"] == runner.id.as_str() && v["health"] == "unreachable" {
                break v;
            }
        }
    };
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "event after {:?}",
        killed.elapsed()
    );
    assert!(event["at"].is_string(), "{event}");

    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let (_, hist) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{}/health", runner.id),
        None,
    );
    let states: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["health"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["active", "unreachable", "active"], "{hist}");
}

#[test]
fn a_revoked_runner_is_disconnected_at_once_and_refused_afterwards() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let mut runner = active_runner(&server, &tenant, &["--heartbeat", "5s"]);
    let (st, v) = tenant.call(
        "POST",
        &format!("/api/v1/runners/{}/revoke", runner.id),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["health"], "revoked");
    let st = wait_exit(runner.child(), Duration::from_secs(3)).expect("revoked runner exits");
    assert_eq!(st.code(), Some(9), "{}", runner.log());

    // Starting it again: refused at the upgrade, same clear exit.
    runner.child = None;
    let out = runner.cmd().arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(9));
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    assert_eq!(tenant.health(&runner.id), "revoked");
    let (st, v) = tenant.call("POST", &format!("/api/v1/runners/{}/ping", runner.id), None);
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["code"], "runner_unreachable");
}
