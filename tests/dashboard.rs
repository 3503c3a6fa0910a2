//! The dashboard in real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `server/web/node_modules`) against the real server
//! and runner: log in, see the runner active, charts, the install command,
//! run a script and read its output, a container's coloured logs and its
//! removal after confirmation (real Docker), stop the runner and see it
//! turn unreachable without a reload, a viewer refused. The browser steps are in
//! `server/web/e2e.mjs`; screenshots land in `<target>/dashboard-e2e/`.
//!
//! Needs `chromium` and `make web` (`.ci/run` installs both); it fails,
//! saying so, when they are missing.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::docker::{self, IMAGE};
use crate::util::{self, Runner, Server};

const PASSWORD: &str = "e2e-password-1";

fn add_user(server: &Server, tenant: &str, name: &str, role: &str) {
    let mut child = Command::new(util::server_bin())
        .args([
            "user",
            "add",
            tenant,
            name,
            "--role",
            role,
            "--api",
            &server.url,
        ])
        .arg("--ca-file")
        .arg(&server.ca)
        .env("TETHER_TOKEN", &server.admin_token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The password comes from stdin, as an operator would pipe it.
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_in_a_real_browser() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("server/web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && web.join("node_modules/playwright-core").exists(),
        "the browser test needs {chromium} (apt-get install chromium) and \
         server/web/node_modules (make web); .ci/run installs both"
    );
    let artifacts = util::target_dir().join("dashboard-e2e");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    eprintln!("dashboard screenshots: {}", artifacts.display());

    let _engine = docker::ensure();
    let container = format!("tether-dash-{}", std::process::id());
    let out = Command::new("docker")
        // No network: a new veth would make Chromium abort a page load.
        .args(["run", "-d", "--network", "none", "--name", &container])
        .args([IMAGE, "sh", "-c"])
        // An ANSI red word among plain lines, as many programs log.
        .arg(
            r#"i=0; while true; do printf 'tick-%s [31mALERT[0m done
' $i; i=$((i+1)); sleep 0.2; done"#,
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _cleanup = RemoveContainer(container.clone());

    let server = Server::start();
    let tenant = server.tenant("acme");
    add_user(&server, "acme", "ada", "admin");
    add_user(&server, "acme", "vic", "viewer");
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));

    let mut node = Command::new("node")
        .arg("e2e.mjs")
        .current_dir(&web)
        .env("TETHER_URL", &server.url)
        .env("TENANT", "acme")
        .env("ADMIN_USER", "ada")
        .env("VIEWER_USER", "vic")
        .env("PASSWORD", PASSWORD)
        .env("RUNNER_ID", &runner.id)
        .env("CONTAINER", &container)
        .env("CHROMIUM", &chromium)
        .env("ARTIFACTS", &artifacts)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node (apt-get install nodejs)");
    let mut stdin = node.stdin.take().unwrap();
    let mut transcript = String::new();
    for line in BufReader::new(node.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        eprintln!("e2e: {line}");
        transcript.push_str(&line);
        transcript.push('\n');
        if line == "STOP_RUNNER" {
            // SIGTERM: the runner closes cleanly, so the server knows at once
            // and the page must show it within a second or so.
            util::signal(runner.child(), libc::SIGTERM);
            util::wait_exit(runner.child(), Duration::from_secs(10));
            writeln!(stdin, "stopped").unwrap();
        }
    }
    let status = node.wait().unwrap();
    assert!(
        status.success() && transcript.contains("E2E OK"),
        "browser test failed ({status}); screenshots in {}:\n{transcript}",
        artifacts.display()
    );
    for step in [
        "runner active",
        "metrics charts drawn",
        "script output read",
        "container logs shown",
        "container removed after confirmation",
        "runner unreachable on the page",
        "viewer refused",
    ] {
        assert!(
            transcript.contains(step),
            "missing step {step:?}:\n{transcript}"
        );
    }
    assert!(artifacts.join("05-runner-unreachable.png").exists());
    // The page's Remove really removed it.
    let gone = Command::new("docker")
        .args(["inspect", &container])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "container still exists");
}

/// Removes the test's container however the test ends.
struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// The API calls the page makes, with the session cookie and CSRF header
/// as the page sends them, over real TLS against a real runner (no browser):
/// a broken endpoint shows here even if the page hid it.
#[test]
fn the_pages_api_calls_work_with_the_session_cookie() {
    let server = Server::start();
    let tenant = server.tenant("acme");
    add_user(&server, "acme", "otto", "operator");
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s", "--docker-socket", "off"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let pem = std::fs::read(&server.ca).unwrap();
    let cert = ureq::tls::Certificate::from_pem(&pem).unwrap().to_owned();
    let agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    cert,
                ])))
                .build(),
        )
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent();
    let url = |p: &str| format!("{}{p}", server.url);

    // Log in as the page does.
    let mut resp = agent
        .post(url("/api/v1/session"))
        .send(
            serde_json::json!({"tenant": "acme", "name": "otto", "password": PASSWORD}).to_string(),
        )
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let session: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    let csrf = session["csrf_token"].as_str().unwrap().to_owned();
    let get = |p: &str| -> (u16, String) {
        let mut r = agent.get(url(p)).header("Cookie", &cookie).call().unwrap();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        (r.status().as_u16(), body)
    };
    let get_json = |p: &str| -> serde_json::Value {
        let (st, body) = get(p);
        assert_eq!(st, 200, "GET {p}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {p}: {e}: {body}"))
    };

    assert_eq!(get_json("/api/v1/session")["user"]["role"], "operator");
    let id = &runner.id;
    assert_eq!(get_json("/api/v1/runners")[0]["health"], "active");
    assert_eq!(
        get_json(&format!("/api/v1/runners/{id}"))["id"],
        id.as_str()
    );
    assert!(get_json(&format!("/api/v1/runners/{id}/health"))
        .as_array()
        .is_some_and(|h| !h.is_empty()));
    assert_eq!(
        get_json(&format!("/api/v1/runners/{id}/updates"))["runner_id"],
        id.as_str()
    );
    // The metrics query of the charts, once samples are stored.
    util::wait_for(Duration::from_secs(15), "cpu.busy samples", || {
        let m = get_json(&format!(
            "/api/v1/runners/{id}/metrics?since=1h&series=cpu.busy,mem.used,mem.total,fs.*,ip4.*,ip6.*"
        ));
        let names: Vec<_> = m["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["points"].as_array().is_some_and(|p| !p.is_empty()))
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        (names.iter().any(|n| n == "cpu.busy") && names.iter().any(|n| n == "mem.total"))
            .then_some(())
    });
    util::wait_for(Duration::from_secs(15), "fingerprint", || {
        (get(&format!("/api/v1/runners/{id}/fingerprint")).0 == 200).then_some(())
    });
    assert!(get_json(&format!("/api/v1/runners/{id}/drift?since=90d")).is_array());

    // Run a script the way the page does and read its output stream.
    let mut r = agent
        .put(url("/api/v1/scripts/hello"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send(serde_json::json!({"body": "echo out-line; echo err-line >&2"}).to_string())
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    let mut r = agent
        .post(url("/api/v1/jobs"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .send(serde_json::json!({"runners": [id], "script": "hello"}).to_string())
        .unwrap();
    assert_eq!(r.status(), 201);
    let jobs: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let job = jobs[0]["id"].as_str().unwrap().to_owned();
    let (st, out) = get(&format!(
        "/api/v1/jobs/{job}/output?format=ndjson&stream=all&follow=1"
    ));
    assert_eq!(st, 200, "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |stream: &str, text: &str| {
        lines
            .iter()
            .any(|l| l["stream"] == stream && l["data"].as_str().unwrap().contains(text))
    };
    assert!(
        has("stdout", "out-line") && has("stderr", "err-line"),
        "{out}"
    );
    assert_eq!(
        get_json(&format!("/api/v1/jobs/{job}"))["status"],
        "succeeded"
    );
    assert_eq!(get_json("/api/v1/jobs?limit=20")[0]["id"], job.as_str());
    assert!(get_json("/api/v1/scripts").as_array().unwrap().len() == 1);

    // Without the CSRF header the same change is refused.
    let r = agent
        .post(url("/api/v1/jobs"))
        .header("Cookie", &cookie)
        .send(serde_json::json!({"runners": [id], "script": "hello"}).to_string())
        .unwrap();
    assert_eq!(r.status(), 403);
    // Logging out ends the cookie.
    let r = agent
        .delete(url("/api/v1/session"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .call()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(get("/api/v1/runners").0, 401);
}
