//! Reconnecting: after a server restart, after an outage, and never faster
//! than the backoff policy allows.

use crate::util::proxy::{Mode, TcpProxy};
use crate::util::*;
use std::time::Duration;

#[test]
fn runners_reconnect_on_their_own_after_a_server_restart() {
    let mut server = Server::start();
    let tenant = server.tenant("acme");
    let mut a = Runner::enroll(&server, &tenant);
    let mut b = Runner::enroll(&server, &tenant);
    a.start(&["--heartbeat", "1s"]);
    b.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&a.id, "active", Duration::from_secs(15));
    tenant.wait_health(&b.id, "active", Duration::from_secs(15));

    server.restart();
    // Right after the restart nobody is connected yet, or has just come back.
    tenant.wait_health(&a.id, "active", Duration::from_secs(15));
    tenant.wait_health(&b.id, "active", Duration::from_secs(15));
    let (_, hist) = tenant.call("GET", &format!("/api/v1/runners/{}/health", a.id), None);
    let reasons: Vec<String> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("server")),
        "the restart is in the history: {reasons:?}"
    );
}

#[test]
fn an_outage_costs_no_more_attempts_than_the_backoff_policy_allows() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let proxy = TcpProxy::to(&server.addr());
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s", "--server", &proxy.url("https")]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));

    let outage = Duration::from_secs(30);
    proxy.set_mode(Mode::Refuse);
    let before = proxy.accepted();
    proxy.cut();
    std::thread::sleep(outage);
    let attempts = proxy.accepted() - before;
    let allowed = tether::conn::backoff::max_attempts_within(outage) as u64;
    assert!(
        attempts >= 3,
        "the runner kept retrying: {attempts} attempts"
    );
    assert!(
        attempts <= allowed,
        "{attempts} attempts in {outage:?}, the policy allows {allowed}"
    );
    eprintln!("outage of {outage:?}: {attempts} connection attempts (policy worst case {allowed})");

    proxy.set_mode(Mode::Forward);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(70));
}
