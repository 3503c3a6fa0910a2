//! Enrollment and the first connection: tokens, exit codes, the credential
//! file, `tether status`, and connecting through an HTTP CONNECT proxy.

use crate::util::proxy::TcpProxy;
use crate::util::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn enrolled_runner_becomes_active_and_answers_a_routed_ping() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));

    let r = tenant.runner(&runner.id);
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["protocol"], 1);
    assert!(r["last_seen"].is_string(), "{r}");

    // A request routed over the runner's own connection, answered by it.
    let (st, v) = tenant.call("POST", &format!("/api/v1/runners/{}/ping", runner.id), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["runner_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["rtt_ms"].as_f64().unwrap() < 2000.0, "{v}");
}

#[test]
fn credential_is_private_and_status_reports_the_connection() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let mut runner = Runner::enroll(&server, &tenant);
    let cred = runner.dir.path().join("credential.json");
    let mode = std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credential.json must be 0600");

    // Not running yet: status says so with a non-zero exit.
    let out = runner.cmd().arg("status").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let out = wait_for(Duration::from_secs(10), "status with a heartbeat", || {
        let out = runner.cmd().args(["status", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (out.status.success() && v["last_heartbeat"].is_string()).then_some(v)
    });
    assert_eq!(out["runner_id"], runner.id.as_str());
    assert_eq!(out["server"], server.url.as_str());
    assert_eq!(out["state"], "connected");

    let text = runner.cmd().arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("connected") && text.contains(&runner.id),
        "{text}"
    );
}

/// Exit code and stderr of one `tether enroll` attempt.
fn enroll_code(server: &Server, token: &str) -> (i32, String) {
    let out = Runner::new().enroll_at(&server.url, &server.ca, token);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_expired_reused_and_revoked_tokens_get_distinct_exit_codes() {
    let server = Server::start();
    let tenant = server.tenant("acme");

    let (code, err) = enroll_code(&server, "tenr_not-a-real-token");
    assert_eq!(code, 6, "wrong token: {err}");
    assert!(err.to_lowercase().contains("token"), "{err}");

    let (_, used) = tenant.enrollment_token(600);
    assert_eq!(enroll_code(&server, &used).0, 0);
    let (code, err) = enroll_code(&server, &used);
    assert_eq!(code, 8, "reused token: {err}");
    assert!(err.contains("used"), "{err}");

    let (_, short) = tenant.enrollment_token(1);
    std::thread::sleep(Duration::from_millis(2100));
    let (code, err) = enroll_code(&server, &short);
    assert_eq!(code, 7, "expired token: {err}");
    assert!(err.contains("expired"), "{err}");

    let (id, revoked) = tenant.enrollment_token(600);
    let (st, v) = tenant.call("DELETE", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "revoked");
    let (code, err) = enroll_code(&server, &revoked);
    assert_eq!(code, 9, "revoked token: {err}");
    assert!(err.contains("revoked"), "{err}");

    // Only the one good enrollment made a runner.
    let (_, list) = tenant.call("GET", "/api/v1/runners", None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn unwritable_state_dir_unreachable_server_and_untrusted_certificate_are_told_apart() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let (_, token) = tenant.enrollment_token(600);

    // A state dir below a regular file can never be created, even by root.
    let scratch = TempDir::new("scratch");
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = runner_cmd_with_state(&file.join("state"))
        .args([
            "enroll",
            "--server",
            &server.url,
            "--token",
            &token,
            "--ca-file",
        ])
        .arg(&server.ca)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The token was not burnt by the failed attempt.
    assert_eq!(
        enroll_code(&server, &token).0,
        0,
        "token must still be usable"
    );

    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Runner::new().enroll_at(&format!("https://{dead}"), &server.ca, "tenr_x");
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without --ca-file the dev certificate is not trusted (webpki roots only).
    let (_, token) = tenant.enrollment_token(600);
    let r = Runner::new();
    let out = r
        .cmd()
        .args(["enroll", "--server", &server.url, "--token", &token])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
}

fn runner_cmd_with_state(state: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(runner_bin());
    c.arg("--state-dir").arg(state);
    c
}

#[test]
fn run_without_enrollment_exits_not_enrolled() {
    let r = Runner::new();
    let out = r.cmd().arg("run").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("enroll"));
}

#[test]
fn plain_http_is_refused_for_a_non_loopback_server() {
    let r = Runner::new();
    let out = r
        .cmd()
        .args([
            "enroll",
            "--server",
            "http://example.com",
            "--token",
            "tenr_x",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn runner_enrolls_and_connects_through_an_http_connect_proxy() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    let proxy = TcpProxy::http_connect();
    let (_, token) = tenant.enrollment_token(600);
    let mut runner = Runner::new();
    let out = runner
        .cmd()
        .args([
            "enroll",
            "--server",
            &server.url,
            "--token",
            &token,
            "--proxy",
            &proxy.url("http"),
            "--ca-file",
        ])
        .arg(&server.ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cred: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runner.dir.path().join("credential.json")).unwrap())
            .unwrap();
    runner.id = cred["runner_id"].as_str().unwrap().to_string();

    // HTTPS_PROXY from the environment, as on a corporate network.
    let log = std::fs::File::create(runner.dir.path().join("runner.log")).unwrap();
    runner.child = Some(
        runner
            .cmd()
            .args(["run", "--heartbeat", "1s"])
            .env("HTTPS_PROXY", proxy.url("http"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let seen = proxy.connect_requests();
    assert!(
        seen.len() >= 2 && seen.iter().all(|t| *t == server.addr()),
        "{seen:?}"
    );
}

/// `tether enroll --name NAME`; returns the runner (not started).
fn enroll_named(server: &Server, tenant: &Tenant, name: &str) -> Runner {
    let mut r = Runner::new();
    let (_, token) = tenant.enrollment_token(600);
    let out = r
        .cmd()
        .args([
            "enroll",
            "--server",
            &server.url,
            "--token",
            &token,
            "--name",
            name,
            "--ca-file",
        ])
        .arg(&server.ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r.id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    r
}

/// Issue 15, item 8: a runner's name is the operator's. A second runner
/// whose host calls itself like an absent one (its hostname, sent in every
/// `hello`) neither takes that name nor receives the app deployed to it;
/// its hostname is shown apart as `reported_name`.
#[test]
fn a_runner_reporting_another_runners_name_neither_takes_it_nor_gets_its_deploys() {
    let server = Server::start();
    let tenant = server.tenant("identity");
    // The real web-1, enrolled and now away.
    let web1 = enroll_named(&server, &tenant, "web-1");
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/apps/site",
        Some(serde_json::json!({ "runner": "web-1", "path": "/srv/site" })),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["runner"], web1.id.as_str(), "apps store the runner's id");

    // A compromised host whose hostname is web-1 (its own UTS namespace).
    let mut intruder = enroll_named(&server, &tenant, "intruder");
    let log = std::fs::File::create(intruder.dir.path().join("runner.log")).unwrap();
    let child = std::process::Command::new("unshare")
        .args(["--uts", "sh", "-c", "hostname web-1 && exec \"$0\" \"$@\""])
        .arg(&intruder.bin)
        .arg("--state-dir")
        .arg(intruder.dir.path())
        .args(["run", "--heartbeat", "1s", "--docker-socket", "off"])
        .env("TETHER_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    intruder.child = Some(child);
    tenant.wait_health(&intruder.id, "active", Duration::from_secs(15));

    let r = tenant.runner(&intruder.id);
    assert_eq!(
        (r["name"].as_str(), r["reported_name"].as_str()),
        (Some("intruder"), Some("web-1")),
        "hello reports, it does not rename: {r}"
    );
    assert_eq!(tenant.runner(&web1.id)["name"], "web-1");
    // The name still finds the real one (it was ambiguous before, then
    // the intruder's once web-1 was gone).
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/apps/site2",
        Some(serde_json::json!({ "runner": "web-1", "path": "/srv/site" })),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["runner"], web1.id.as_str());

    // A deploy goes to web-1 (and waits for it), never to the intruder.
    let (st, v) = tenant.call("POST", "/api/v1/apps/site/deploy", None);
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["runner_id"], web1.id.as_str(), "{v}");
    let job = v["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let (_, mine) = tenant.call("GET", &format!("/api/v1/jobs?runner={}", intruder.id), None);
    assert_eq!(mine.as_array().map(Vec::len), Some(0), "{mine}");
    let (_, j) = tenant.call("GET", &format!("/api/v1/jobs/{job}"), None);
    assert_eq!(j["status"], "pending", "{j}");
    assert!(
        !intruder.log().contains(&job),
        "the intruder never saw {job}"
    );

    // Enrolling under a taken name gets a free one.
    let again = enroll_named(&server, &tenant, "web-1");
    assert_eq!(tenant.runner(&again.id)["name"], "web-1-2");

    // Only the operator names runners, and not onto a name in use.
    let path = format!("/api/v1/runners/{}/name", intruder.id);
    let (st, v) = tenant.call("PUT", &path, Some(serde_json::json!({ "name": "web-1" })));
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    for bad in ["", " padded", "rn_0123456789ab", "a\u{7}b"] {
        let (st, v) = tenant.call("PUT", &path, Some(serde_json::json!({ "name": bad })));
        assert_eq!(st, 400, "{bad:?}: {v}");
    }
    // Through the CLI, which also resolves the runner by its name.
    let out = std::process::Command::new(server_bin())
        .args(["--api", &server.url, "--ca-file"])
        .arg(&server.ca)
        .args([
            "--token",
            &tenant.token,
            "runner",
            "rename",
            "intruder",
            "edge-2",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = tenant.runner(&intruder.id);
    assert_eq!(
        (r["name"].as_str(), r["reported_name"].as_str()),
        (Some("edge-2"), Some("web-1"))
    );
}
