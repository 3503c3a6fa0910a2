//! Reconnecting: after a server restart, after an outage, never faster
//! than the backoff policy allows, and to another server when the one in
//! use is lost (a list of URLs, or HAProxy in front).

use crate::util::proxy::{Mode, TcpProxy};
use crate::util::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Times the runner's log says it reached `url` ("connected to URL as …").
fn connections_to(runner: &Runner, url: &str) -> usize {
    runner
        .log()
        .matches(&format!("connected to {url} as"))
        .count()
}

#[test]
fn a_runner_with_two_urls_moves_to_the_second_when_the_first_server_dies() {
    let mut server = Server::start();
    let tenant = server.tenant("acme");
    let first = server.url.clone();
    let second_addr = format!("127.0.0.1:{}", free_port());
    let second = format!("https://{second_addr}");
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&[
        "--heartbeat",
        "1s",
        "--server",
        &format!("{first},{second}"),
    ]);
    wait_for(Duration::from_secs(15), "linked to the first", || {
        (connections_to(&runner, &first) == 1).then_some(())
    });

    // The first dies without a word; the same data comes up at the second
    // URL (a replica taking over, as the cluster does with shared storage).
    let lost = Instant::now();
    server.kill_and_start_at(&second_addr);
    assert_eq!(server.url, second);
    wait_for(Duration::from_secs(20), "linked to the second", || {
        (connections_to(&runner, &second) == 1).then_some(())
    });
    eprintln!(
        "moved to the second URL {:?} after the first died",
        lost.elapsed()
    );
    tenant_of(&server, &tenant).wait_health(&runner.id, "active", Duration::from_secs(10));
    // One link at a time: the first was never reached again.
    assert_eq!(connections_to(&runner, &first), 1, "{}", runner.log());
}

/// The tenant's token against the server's current address.
fn tenant_of(server: &Server, tenant: &Tenant) -> Tenant {
    Tenant {
        id: tenant.id.clone(),
        token: tenant.token.clone(),
        api: server.api(),
    }
}

/// HAProxy in TCP mode in front of two backends, checking both every 200 ms.
pub(crate) struct Haproxy {
    child: Child,
    _dir: TempDir,
    pub(crate) url: String,
}

impl Haproxy {
    pub(crate) fn start(backends: &[&str]) -> Haproxy {
        Haproxy::start_with(backends, 200, "roundrobin")
    }

    /// Every connection to the first backend that is up (`balance
    /// first`), at most `maxconn` at once.
    pub(crate) fn first(backends: &[&str], maxconn: usize) -> Haproxy {
        Haproxy::start_with(backends, maxconn, "first")
    }

    fn start_with(backends: &[&str], maxconn: usize, balance: &str) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("    server s{i} {b} check inter 200ms fall 1 rise 1\n"))
            .collect();
        let cfg = format!(
            "global\n    maxconn {maxconn}\ndefaults\n    mode tcp\n    timeout connect 2s\n    \
             timeout client 60s\n    timeout server 60s\nlisten tether\n    bind 127.0.0.1:{port}\n    \
             balance {balance}\n{servers}"
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

#[test]
fn behind_haproxy_a_runner_comes_back_through_the_same_url_to_the_surviving_backend() {
    let mut server = Server::start();
    let tenant = server.tenant("acme");
    let second_addr = format!("127.0.0.1:{}", free_port());
    let lb = Haproxy::start(&[&server.addr(), &second_addr]);
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s", "--server", &lb.url]);
    wait_for(Duration::from_secs(15), "linked through haproxy", || {
        (connections_to(&runner, &lb.url) == 1).then_some(())
    });
    tenant.wait_health(&runner.id, "active", Duration::from_secs(10));

    let lost = Instant::now();
    server.kill_and_start_at(&second_addr);
    wait_for(
        Duration::from_secs(20),
        "linked again through haproxy",
        || (connections_to(&runner, &lb.url) == 2).then_some(()),
    );
    eprintln!(
        "back through haproxy {:?} after the backend died",
        lost.elapsed()
    );
    // The second backend holds the link: its API shows the runner active.
    tenant_of(&server, &tenant).wait_health(&runner.id, "active", Duration::from_secs(10));
    let (_, hist) = tenant_of(&server, &tenant).call(
        "GET",
        &format!("/api/v1/runners/{}/health", runner.id),
        None,
    );
    assert!(hist.as_array().is_some_and(|h| !h.is_empty()), "{hist}");
}
