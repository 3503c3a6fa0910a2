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
