//! Containers through the server, on a real Docker engine: the runner's own
//! Engine API client (no docker CLI on the runner's side) reports the engine,
//! manages containers, passes Docker's errors through unchanged, and pushes
//! container events so the server's view stays current without polling.
//! The docker CLI is used only by the tests, to set up and to check.

use crate::util::docker::{self, IMAGE};
use crate::util::*;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A container made by the test with a unique name and a label, removed on drop.
struct TestContainer {
    name: String,
}

impl TestContainer {
    fn create(label: &str, args: &[&str]) -> TestContainer {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tether-t-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = Command::new("docker");
        cmd.args([
            "create",
            "--name",
            &name,
            "--label",
            &format!("tether-test={label}"),
        ])
        .args(args)
        .args([IMAGE, "sleep", "300"]);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "docker create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestContainer { name }
    }

    /// `docker inspect -f '{{.State.Status}}'`, or None when it is gone.
    fn state(&self) -> Option<String> {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Status}}", &self.name])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

fn docker_runner(server: &Server, tenant: &Tenant, extra: &[&str]) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    let mut args = vec!["--heartbeat", "1s", "--fingerprint-interval", "2s"];
    args.extend_from_slice(extra);
    runner.start(&args);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    runner
}

fn wait_docker_available(tenant: &Tenant, runner: &str, limit: Duration) -> Value {
    wait_for(limit, "docker to be reported available", || {
        let (st, v) = tenant.call("GET", &format!("/api/v1/runners/{runner}/docker"), None);
        (st == 200 && v["available"] == true).then_some(v)
    })
}

#[test]
fn the_engine_is_reported_with_its_version_in_state_and_fingerprint() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = docker_runner(&server, &tenant, &[]);
    let state = wait_docker_available(&tenant, &runner.id, Duration::from_secs(15));
    let engine = String::from_utf8(
        Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(state["version"], engine.trim(), "{state}");
    assert!(
        state["api_version"].as_str().unwrap().starts_with("1."),
        "{state}"
    );
    wait_for(
        Duration::from_secs(15),
        "docker version in the fingerprint",
        || {
            let (_, fp) = tenant.call(
                "GET",
                &format!("/api/v1/runners/{}/fingerprint", runner.id),
                None,
            );
            fp["docker_version"]
                .as_str()
                .filter(|v| v.contains(engine.trim()))
                .map(|_| ())
        },
    );
}

#[test]
fn containers_are_listed_started_stopped_restarted_killed_and_removed_through_the_server() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = docker_runner(&server, &tenant, &[]);
    wait_docker_available(&tenant, &runner.id, Duration::from_secs(15));
    let c = TestContainer::create("manage", &[]);
    let base = format!("/api/v1/runners/{}/containers", runner.id);

    let (st, v) = tenant.call("GET", &base, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["cached"], false, "{v}");
    let list = &v["containers"];
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == c.name.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {list}", c.name))
        .clone();
    assert_eq!(entry["image"], IMAGE);
    assert_eq!(entry["state"], "created");
    assert_eq!(entry["labels"]["tether-test"], "manage");

    let (st, v) = tenant.call("POST", &format!("{base}/{}/start", c.name), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(c.state().as_deref(), Some("running"));
    // Starting again: Docker says 304, nothing changed.
    let (st, v) = tenant.call("POST", &format!("{base}/{}/start", c.name), None);
    assert_eq!((st, &v["changed"]), (200, &json!(false)), "{v}");

    let (st, v) = tenant.call("GET", &format!("{base}/{}", c.name), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["Name"],
        format!("/{}", c.name),
        "inspect is Docker's JSON unchanged"
    );

    let (st, v) = tenant.call("POST", &format!("{base}/{}/stop?timeout=1", c.name), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(c.state().as_deref(), Some("exited"));
    let (st, v) = tenant.call(
        "POST",
        &format!("{base}/{}/restart?timeout=1", c.name),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(c.state().as_deref(), Some("running"));
    let (st, v) = tenant.call(
        "POST",
        &format!("{base}/{}/kill?signal=SIGKILL", c.name),
        None,
    );
    assert_eq!(st, 200, "{v}");
    wait_for(Duration::from_secs(5), "killed container to exit", || {
        (c.state().as_deref() == Some("exited")).then_some(())
    });
    let (st, v) = tenant.call("DELETE", &format!("{base}/{}?force=true", c.name), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(c.state(), None, "removed");

    // Docker's own error, unchanged.
    let (st, v) = tenant.call(
        "POST",
        &format!("{base}/no-such-container-here/start"),
        None,
    );
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"]["code"], "docker");
    assert_eq!(
        v["error"]["message"], "No such container: no-such-container-here",
        "{v}"
    );
    let (st, v) = tenant.call("POST", &format!("{base}/bad%20name/start"), None);
    assert_eq!(st, 400, "{v}");

    // Another tenant sees none of it.
    let other = server.tenant("other");
    let (st, _) = other.call("GET", &base, None);
    assert_eq!(st, 404);
}

#[test]
fn prune_removes_only_what_the_filter_names() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = docker_runner(&server, &tenant, &[]);
    wait_docker_available(&tenant, &runner.id, Duration::from_secs(15));
    let label = format!("prune-{}", std::process::id());
    let doomed = TestContainer::create(&label, &[]);
    let kept = TestContainer::create("keep", &[]);
    let (st, v) = tenant.call(
        "POST",
        &format!("/api/v1/runners/{}/containers/prune", runner.id),
        Some(json!({"filters": {"label": [format!("tether-test={label}")]}})),
    );
    assert_eq!(st, 200, "{v}");
    let deleted = v["ContainersDeleted"].to_string();
    assert_eq!(doomed.state(), None, "pruned: {v}");
    assert!(
        kept.state().is_some(),
        "a container outside the filter survived: {deleted}"
    );
}

#[test]
fn container_events_keep_the_servers_view_current() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("acme");
    let runner = docker_runner(&server, &tenant, &[]);
    wait_docker_available(&tenant, &runner.id, Duration::from_secs(15));
    let cached = format!("/api/v1/runners/{}/containers?cached=true", runner.id);
    let c = TestContainer::create("events", &[]);

    // Started outside Tether: the event brings the server's view up to date.
    let out = Command::new("docker")
        .args(["start", &c.name])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_for(
        Duration::from_secs(10),
        "the cached view to show it running",
        || {
            let (_, v) = tenant.call("GET", &cached, None);
            let list = v["containers"].as_array()?.clone();
            list.iter()
                .any(|e| e["name"] == c.name.as_str() && e["state"] == "running")
                .then_some(())
        },
    );
    let _ = Command::new("docker").args(["rm", "-f", &c.name]).output();
    wait_for(
        Duration::from_secs(10),
        "the cached view to drop it",
        || {
            let (_, v) = tenant.call("GET", &cached, None);
            let list = v["containers"].as_array()?.clone();
            (!list.iter().any(|e| e["name"] == c.name.as_str())).then_some(())
        },
    );
    let (st, hist) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{}/containers/events?since=10m", runner.id),
        None,
    );
    assert_eq!(st, 200, "{hist}");
    let actions: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == c.name.as_str())
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"start"), "{actions:?}");
}

#[test]
fn a_host_without_docker_reports_why_keeps_working_and_picks_docker_up_later() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("acme");
    let dir = TempDir::new("sock");
    let sock = dir.path().join("docker.sock");
    let runner = docker_runner(
        &server,
        &tenant,
        &[
            "--docker-socket",
            sock.to_str().unwrap(),
            "--metrics-interval",
            "1s",
        ],
    );
    let state = wait_for(
        Duration::from_secs(15),
        "docker reported unavailable",
        || {
            let (st, v) = tenant.call(
                "GET",
                &format!("/api/v1/runners/{}/docker", runner.id),
                None,
            );
            // `updated_at` null is the server's placeholder before the
            // runner's first report: wait for the report itself.
            (st == 200
                && v["available"] == false
                && v["reason"].is_string()
                && v["updated_at"].is_string())
            .then_some(v)
        },
    );
    assert!(
        state["reason"].as_str().unwrap().contains("docker.sock"),
        "{state}"
    );
    // Everything else works: metrics flow, pings route.
    wait_for(Duration::from_secs(10), "metrics without docker", || {
        let (_, v) = tenant.call(
            "GET",
            &format!("/api/v1/runners/{}/metrics/latest", runner.id),
            None,
        );
        v["ts_ms"].is_u64().then_some(())
    });
    let (st, v) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{}/containers", runner.id),
        None,
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (503, Some("docker_unavailable")),
        "{v}"
    );

    // Docker "appears": the socket path now leads to the real engine.
    std::os::unix::fs::symlink(docker::SOCKET, &sock).unwrap();
    wait_docker_available(&tenant, &runner.id, Duration::from_secs(45));
}

#[test]
fn running_containers_join_the_host_metrics() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("acme");
    let c = TestContainer::create("metrics", &[]);
    let out = Command::new("docker")
        .args(["start", &c.name])
        .output()
        .unwrap();
    assert!(out.status.success());
    let runner = docker_runner(&server, &tenant, &["--metrics-interval", "1s"]);
    let want = format!("ctr.{}.mem", c.name);
    let latest = wait_for(
        Duration::from_secs(20),
        "container series in the metrics",
        || {
            let (_, v) = tenant.call(
                "GET",
                &format!("/api/v1/runners/{}/metrics/latest", runner.id),
                None,
            );
            v["series"]
                .as_array()?
                .iter()
                .any(|s| s["name"] == want.as_str() && s["value"].as_f64().is_some())
                .then_some(v)
        },
    );
    let names: Vec<&str> = latest["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&format!("ctr.{}.cpu", c.name).as_str()),
        "{names:?}"
    );

    // Stopped: its series leave the schema.
    let _ = Command::new("docker")
        .args(["stop", "-t", "0", &c.name])
        .output();
    wait_for(Duration::from_secs(20), "container series to go", || {
        let (_, v) = tenant.call(
            "GET",
            &format!("/api/v1/runners/{}/metrics/latest", runner.id),
            None,
        );
        (!v["series"]
            .as_array()?
            .iter()
            .any(|s| s["name"] == want.as_str()))
        .then_some(())
    });
}

/// Issue 15, item 9: `--no-host-terminal` and `--no-jobs` left container
/// exec and stop/kill/remove/prune open. The host owner's
/// `--no-container-control` and `--no-container-terminal` (or their env
/// vars) refuse them on the runner, whatever the server asks; the server
/// answers 403 with the runner's reason, and `tether status` says what is
/// switched off.
#[test]
fn the_owners_switches_refuse_container_control_and_container_terminals() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("owner-switches");
    let runner = docker_runner(
        &server,
        &tenant,
        &[
            "--no-host-terminal",
            "--no-jobs",
            "--no-container-control",
            "--no-container-terminal",
        ],
    );
    wait_docker_available(&tenant, &runner.id, Duration::from_secs(15));
    let c = TestContainer::create("owner-switches", &[]);
    let out = Command::new("docker")
        .args(["start", &c.name])
        .output()
        .unwrap();
    assert!(out.status.success());
    let base = format!("/api/v1/runners/{}/containers", runner.id);

    // Reading stays.
    let (st, v) = tenant.call("GET", &base, None);
    assert_eq!(st, 200, "{v}");
    let (st, v) = tenant.call("GET", &format!("{base}/{}", c.name), None);
    assert_eq!(st, 200, "{v}");

    let refused = |st: u16, v: &Value, code: &str, flag: &str| {
        assert_eq!(st, 403, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(flag), "the message names the switch: {msg}");
    };
    for (method, path) in [
        ("POST", format!("{base}/{}/stop?timeout=1", c.name)),
        ("POST", format!("{base}/{}/restart?timeout=1", c.name)),
        ("POST", format!("{base}/{}/kill?signal=SIGKILL", c.name)),
        ("POST", format!("{base}/{}/start", c.name)),
        ("DELETE", format!("{base}/{}?force=true", c.name)),
        ("POST", format!("{base}/prune")),
        (
            "POST",
            format!("/api/v1/runners/{}/images/prune", runner.id),
        ),
    ] {
        let (st, v) = tenant.call(method, &path, None);
        refused(
            st,
            &v,
            "container_control_disabled",
            "--no-container-control",
        );
    }
    assert_eq!(c.state().as_deref(), Some("running"), "nothing changed");

    // A terminal in the container: refused the same way, before upgrading.
    let path = format!("/api/v1/runners/{}/terminals", runner.id);
    let (st, v) = tenant.call("POST", &path, Some(json!({ "container": c.name })));
    refused(
        st,
        &v,
        "container_terminal_disabled",
        "--no-container-terminal",
    );
    let q = format!("container={}", c.name);
    let e = crate::util::term::TermClient::open(&server, &tenant.token, &runner.id, &q)
        .err()
        .expect("refused");
    assert_eq!(e.0, 403);
    assert!(e.1.contains("container_terminal_disabled"), "{}", e.1);

    // The owner sees what is switched off.
    let out = runner.cmd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("switched off:   jobs, host terminal, container terminal, container control"),
        "{text}"
    );
    // The env vars do the same; the help names the flags.
    let mut by_env = Runner::enroll(&server, &tenant);
    by_env.env = vec![
        ("TETHER_CONTAINER_CONTROL".into(), "off".into()),
        ("TETHER_CONTAINER_TERMINAL".into(), "off".into()),
    ];
    by_env.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&by_env.id, "active", Duration::from_secs(15));
    wait_docker_available(&tenant, &by_env.id, Duration::from_secs(15));
    let (st, v) = tenant.call(
        "POST",
        &format!("/api/v1/runners/{}/containers/{}/stop", by_env.id, c.name),
        None,
    );
    refused(
        st,
        &v,
        "container_control_disabled",
        "--no-container-control",
    );
    let out = by_env.cmd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("switched off:   container terminal, container control"),
        "{text}"
    );
    let help = by_env.cmd().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for s in [
        "--no-container-control",
        "--no-container-terminal",
        "TETHER_CONTAINER_CONTROL=off",
        "TETHER_CONTAINER_TERMINAL=off",
    ] {
        assert!(help.contains(s), "{s} in --help");
    }
    // Without the switches the same calls go through (what --no-host-terminal
    // and --no-jobs alone allowed before, and still do).
    let open = docker_runner(&server, &tenant, &["--no-host-terminal", "--no-jobs"]);
    wait_docker_available(&tenant, &open.id, Duration::from_secs(15));
    let (st, v) = tenant.call(
        "POST",
        &format!(
            "/api/v1/runners/{}/containers/{}/stop?timeout=1",
            open.id, c.name
        ),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(c.state().as_deref(), Some("exited"));
}
