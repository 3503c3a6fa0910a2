//! The dashboard in real headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `server/web/node_modules`) against the real server
//! and runner: log in, see the runner active, charts, the install command,
//! run a script and read its output, a container's coloured logs and its
//! removal after confirmation (real Docker), a terminal (type a command,
//! read its answer in xterm.js, resize, reattach), an app deployed from a
//! local git repository with its steps watched, redeployed and rolled back,
//! stop the runner and see it turn unreachable without a reload, a viewer
//! refused an action and a terminal, every page at phone width. The browser steps are in
//! `server/web/e2e.mjs`; screenshots land in `<target>/dashboard-e2e/`. The
//! runners page with 2,000 simulated runners: `server/web/e2e-fleet.mjs`;
//! the schedules page: `server/web/e2e-schedules.mjs`; the runners page's
//! update-state filter and bulk desired version: `server/web/e2e-updates.mjs`;
//! actions signed in the page: `server/web/e2e-signed.mjs`,
//! `server/web/e2e-signed-actions.mjs`.
//!
//! Needs `chromium` and `make web` (`make test`'s set-up installs both); it fails,
//! saying so, when they are missing.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::docker::{self, IMAGE};
use crate::util::term::TermClient;
use crate::util::{self, Runner, Server};

const PASSWORD: &str = "e2e-password-1";

/// What a browser test needs: `server/web` (its page scripts and
/// `node_modules`), Debian's Chromium, and a folder for the screenshots.
struct Browser {
    web: PathBuf,
    chromium: String,
    artifacts: PathBuf,
}

impl Browser {
    /// Check that Chromium and `playwright-core` are there (the test fails,
    /// saying so, when they are not); screenshots in `<target>/{dir}`,
    /// emptied first when `clear`.
    fn new(dir: &str, clear: bool) -> Browser {
        // Before anything starts: server, runner and Chromium in a network
        // of their own, where no container's interface comes and goes.
        util::netns::own_network();
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("server/web");
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists() && web.join("node_modules/playwright-core").exists(),
            "the browser test needs {chromium} (apt-get install chromium) and \
             server/web/node_modules (make web); make test's set-up installs both"
        );
        let artifacts = util::target_dir().join(dir);
        if clear {
            let _ = std::fs::remove_dir_all(&artifacts);
        }
        std::fs::create_dir_all(&artifacts).unwrap();
        eprintln!("browser screenshots: {}", artifacts.display());
        Browser {
            web,
            chromium,
            artifacts,
        }
    }

    /// Run one of `server/web`'s page scripts under node against the
    /// server at `site.0`, logging in to tenant `site.1` as its admin `ada`,
    /// with `configure`'s environment (and CHROMIUM, ARTIFACTS): its stdout
    /// is the transcript, echoed to stderr, returned once the script ended
    /// well (it exits 0 and says "E2E OK"; the test fails otherwise). When
    /// it prints `stop.0`, `stop.1` is stopped with SIGTERM (a clean close,
    /// which the server sees at once: the page must show it within a second
    /// or so) and the script is told "stopped".
    fn run(
        &self,
        script: &str,
        (url, tenant): (&str, &str),
        configure: impl FnOnce(&mut Command),
        stop: (&str, &mut Runner),
    ) -> String {
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .current_dir(&self.web)
            .env("TETHER_URL", url)
            .env("TENANT", tenant)
            .env("ADMIN_USER", "ada")
            .env("PASSWORD", PASSWORD);
        configure(&mut cmd);
        let mut node = cmd
            .env("CHROMIUM", &self.chromium)
            .env("ARTIFACTS", &self.artifacts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start node (apt-get install nodejs)");
        let mut stdin = node.stdin.take().unwrap();
        let mut transcript = String::new();
        for line in BufReader::new(node.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            eprintln!("{script}: {line}");
            transcript.push_str(&line);
            transcript.push('\n');
            if line == stop.0 {
                util::signal(stop.1.child(), libc::SIGTERM);
                util::wait_exit(stop.1.child(), Duration::from_secs(10));
                writeln!(stdin, "stopped").unwrap();
            }
        }
        let status = node.wait().unwrap();
        assert!(
            status.success() && transcript.contains("E2E OK"),
            "{script} failed ({status}); screenshots in {}:\n{transcript}",
            self.artifacts.display()
        );
        transcript
    }
}

/// Every one of `steps` is in the page script's `transcript`.
fn assert_steps(transcript: &str, steps: &[&str]) {
    for step in steps {
        assert!(
            transcript.contains(step),
            "missing step {step:?}:\n{transcript}"
        );
    }
}

/// The rest of the transcript's first line that starts with `prefix`.
fn line_after<'a>(transcript: &'a str, prefix: &str) -> &'a str {
    transcript
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?}:\n{transcript}"))
}

/// The id of the operator key the page loaded (its step `key … loaded`).
fn loaded_key_id(transcript: &str) -> &str {
    transcript
        .lines()
        .find_map(|l| l.strip_prefix("step: key ")?.strip_suffix(" loaded"))
        .unwrap_or_else(|| panic!("no key loaded:\n{transcript}"))
}

/// Label runner `id` `key=value` through the API.
fn label(tenant: &util::Tenant, id: &str, key: &str, value: &str) {
    let (st, v) = tenant.call(
        "PATCH",
        &format!("/api/v1/runners/{id}/labels"),
        Some(serde_json::json!({"set": {key: value}})),
    );
    assert_eq!(st, 200, "{v}");
}

/// Each of `wants` is in a line of the host's own record (its `audit.log`).
fn assert_host_record(runner: &Runner, wants: &[String]) {
    let log = std::fs::read_to_string(runner.dir.path().join("audit.log")).unwrap();
    for want in wants {
        assert!(
            log.lines().any(|l| l.contains(want.as_str())),
            "want {want:?} in the host's record:\n{log}"
        );
    }
}

/// A server (started with `args`) with tenant `name` and its admin `ada`,
/// whom the page scripts log in as.
fn site(args: &[&str], name: &str) -> (Server, util::Tenant) {
    let server = Server::start_with(args);
    let tenant = server.tenant(name);
    add_user(&server, name, "ada", "admin");
    (server, tenant)
}

/// An operator key (`key generate`, in the returned temp dir) and an active
/// runner of `tenant` that trusts it and requires `require` signed
/// (`--require-signed`), started with `extra` arguments too.
fn signing_runner(
    server: &Server,
    tenant: &util::Tenant,
    require: &str,
    extra: &[&str],
) -> (util::TempDir, PathBuf, Runner) {
    let keys = util::TempDir::new("dash-keys");
    let key = util::keygen(keys.path(), "op.key");
    let mut args = vec!["--heartbeat", "1s", "--metrics-interval", "off"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--require-signed", require]);
    let runner = Runner::trusting(server, tenant, &key, &args);
    (keys, key, runner)
}

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
    let browser = Browser::new("dashboard-e2e", true);

    let _engine = docker::ensure();
    let container = format!("tether-dash-{}", std::process::id());
    // No network: a new veth would make Chromium abort a page load.
    // An ANSI red word among plain lines, as many programs log.
    docker::run_detached(&[
        "--network",
        "none",
        "--name",
        &container,
        IMAGE,
        "sh",
        "-c",
        r#"i=0; while true; do printf 'tick-%s [31mALERT[0m done
' $i; i=$((i+1)); sleep 0.2; done"#,
    ]);
    let _cleanup = RemoveContainer(container.clone());

    // The app the page deploys: a local git repository whose Dockerfile
    // builds on the local test image (no registry here).
    let app = format!("tether-e2e-app-{}", std::process::id());
    let _app_cleanup = RemoveApp(app.clone());
    let repo = util::TempDir::new("dash-app");
    util::git::app_repo(repo.path(), "v1");

    let (server, tenant) = site(&[], "acme");
    add_user(&server, "acme", "vic", "viewer");
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));

    let runner_id = runner.id.clone();
    let transcript = browser.run(
        "e2e.mjs",
        (&server.url, "acme"),
        |c| {
            c.env("VIEWER_USER", "vic")
                .env("RUNNER_ID", &runner_id)
                .env("CONTAINER", &container)
                .env("APP", &app)
                .env("APP_REPO", repo.path());
        },
        ("STOP_RUNNER", &mut runner),
    );
    assert_steps(
        &transcript,
        &[
            "runner active",
            "metrics charts drawn",
            "script output read",
            "terminal: typed echo $((6*7)), read 42",
            "terminal resized with the page",
            "terminal reattached after leaving",
            "terminal reattached after a dropped socket",
            "recording replayed in the player",
            "audit page lists the terminal open",
            "update group set from the page",
            "app deployed, steps source/build/replace shown",
            "app container running",
            "app redeployed and rolled back",
            "viewer refused a terminal",
            "container logs shown",
            "container removed after confirmation",
            "runner unreachable on the page",
            "viewer refused",
        ],
    );
    assert!(browser.artifacts.join("05-runner-unreachable.png").exists());
    // The page's Remove really removed it.
    let gone = Command::new("docker")
        .args(["inspect", &container])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "container still exists");
}

/// The runners page with a fleet: 2,000 `tether-sim` runners and one real
/// runner (labelled role=db) in real Chromium (`server/web/e2e-fleet.mjs`):
/// the counts, a label filter, the real runner's health flip seen live
/// within 1 s, a bulk label on a page of rows.
#[test]
fn fleet_view_with_2000_runners_in_a_real_browser() {
    let browser = Browser::new("dashboard-e2e", false);
    let sims: u64 = 2000;
    let (server, tenant) = site(&["--enroll-rate", "0"], "fleet");
    let mut sim = util::start_sims(&server, &tenant.token, sims, "600s");
    let mut runner = Runner::enroll(&server, &tenant);
    runner.start(&["--heartbeat", "1s", "--docker-socket", "off"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    label(&tenant, &runner.id, "role", "db");
    util::wait_for(
        Duration::from_secs(300),
        "the simulated fleet active",
        || {
            let (_, v) = tenant.call("GET", "/api/v1/runners/counts", None);
            (v["health"]["active"].as_u64()? > sims).then_some(())
        },
    );

    let runner_id = runner.id.clone();
    let transcript = browser.run(
        "e2e-fleet.mjs",
        (&server.url, "fleet"),
        |c| {
            c.env("RUNNER_ID", &runner_id)
                .env("SIM_COUNT", sims.to_string());
        },
        ("STOP_RUNNER", &mut runner),
    );
    let _ = sim.0.kill();
    let flip: u64 = transcript
        .lines()
        .find_map(|l| l.strip_prefix("flip_ms ")?.parse().ok())
        .expect("flip_ms");
    assert!(flip <= 1000, "the health flip took {flip} ms to show");
    // The bulk label really landed: 100 runners carry it.
    let (_, c) = tenant.call("GET", "/api/v1/runners/counts?selector=batch%3Done", None);
    assert_eq!(c["total"], 100, "{c}");
}

/// The alert pages in real Chromium (`server/web/e2e-alerts.mjs`): a
/// webhook channel added and its test message delivered (to a receiver
/// here, and in the page's delivery log), a rule scoped by a label selector
/// whose live preview names only the labelled runner, that runner stopped
/// and its alert shown firing on the runners page and its own page,
/// acknowledged, in the history, silenced, and the rule removed. Its own
/// test (no Docker, no apps) so it runs in seconds.
#[test]
fn alert_pages_in_a_real_browser() {
    let browser = Browser::new("dashboard-alerts-e2e", true);

    let hooks = crate::util::hooks::Hooks::start();
    let (server, tenant) = site(&["--alert-private-targets"], "acme");
    let mut prod = Runner::enroll(&server, &tenant);
    let mut dev = Runner::enroll(&server, &tenant);
    for (r, env) in [(&mut prod, "prod"), (&mut dev, "dev")] {
        r.start(&["--heartbeat", "1s", "--metrics-interval", "off"]);
        tenant.wait_health(&r.id, "active", Duration::from_secs(15));
        label(&tenant, &r.id, "env", env);
    }

    let prod_id = prod.id.clone();
    let transcript = browser.run(
        "e2e-alerts.mjs",
        (&server.url, "acme"),
        |c| {
            c.env("PROD_RUNNER", &prod_id)
                .env("DEV_RUNNER", &dev.id)
                .env("HOOK_URL", hooks.url());
        },
        ("STOP_PROD", &mut prod),
    );
    assert_steps(
        &transcript,
        &[
            "channel added, test message in its delivery log",
            "preview names the labelled runner only",
            "rule added",
            "firing on the runners page",
            "firing on the runner's page, acknowledged",
            "history shows it",
            "silence added and ended",
            "rule removed",
            "phone width fits",
        ],
    );
    // What the page sent reached the receiver: the test message, then the
    // alert of the labelled runner (and none of the other).
    let test = hooks.wait(Duration::from_secs(5), "the test message", |v| {
        v["state"] == "test"
    });
    assert!(
        test["summary"].as_str().unwrap_or("").contains("ada"),
        "{test}"
    );
    let fired = hooks.wait(Duration::from_secs(5), "the alert", |v| {
        v["state"] == "firing"
    });
    assert_eq!(fired["runner_id"], prod.id.as_str(), "{fired}");
    assert_eq!(fired["rule_name"], "prod-down", "{fired}");
}

/// The login page's single sign-on buttons for a provider added with the
/// CLI (`sso provider add|list|rm`), and a refused sign-in's reason. Then
/// signing in the page (`server/web/src/signing.js`, `server/web/e2e-signed.mjs`):
/// a runner requiring signed jobs refuses the job the page sends without a
/// key (the reason and the CLI command that signs it shown on the page,
/// nothing run), then runs the one the page signed with the operator's key
/// loaded there (the file `key generate` wrote); no request the page made
/// carried the key.
#[test]
fn signing_and_single_sign_on_in_a_real_browser() {
    let browser = Browser::new("dashboard-signed-e2e", true);

    let (server, tenant) = site(&[], "acme");
    sso_provider_cli(&server, &tenant.token);
    let (_keys, key, mut runner) =
        signing_runner(&server, &tenant, "jobs", &["--docker-socket", "off"]);
    let (st, r) = tenant.call("GET", &format!("/api/v1/runners/{}", runner.id), None);
    assert_eq!(st, 200, "{r}");
    let name = r["name"].as_str().unwrap().to_owned();
    let made = util::TempDir::new("dash-made");
    let unsigned = made.path().join("unsigned");
    let signed = made.path().join("signed");
    let runner_id = runner.id.clone();

    let transcript = browser.run(
        "e2e-signed.mjs",
        (&server.url, "acme"),
        |c| {
            c.env("RUNNER_ID", &runner_id)
                .env("RUNNER_NAME", &name)
                .env("KEY_FILE", &key)
                .env("UNSIGNED_FILE", &unsigned)
                .env("SIGNED_FILE", &signed);
        },
        ("never", &mut runner),
    );
    assert_steps(
        &transcript,
        &[
            "login page shows Sign in with corp",
            "sso refusal shown",
            "CLI command shown",
            "unsigned job refused, reason shown",
            "damaged key refused",
            "loaded",
            "signed job ran",
            "signature sent with the job",
            "key never sent",
        ],
    );
    // The host ran only the signed job, and the server relayed the page's
    // signature to it.
    assert!(!unsigned.exists(), "the unsigned job ran");
    assert!(signed.exists(), "the signed job did not run");
    let job = line_after(&transcript, "JOB ");
    let (st, v) = tenant.call("GET", &format!("/api/v1/jobs/{job}"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "succeeded", "{v}");
    let action = v["signed"]["action_id"].as_str().unwrap();
    assert!(action.starts_with("sa_"), "{v}");
    // The host's own record names the key that signed it.
    let key_id = loaded_key_id(&transcript);
    assert_host_record(
        &runner,
        &[format!(
            "job={job} kind=job action={action} signer={key_id} ran"
        )],
    );
}

/// Deploys, terminals and container operations signed in the page
/// (`server/web/src/signing.js`, `server/web/e2e-signed-actions.mjs`) for a
/// runner with Docker that requires them signed: without a key the host
/// refuses a deploy, a terminal and a container stop (the page shows its
/// reason and the CLI command that signs each; the container keeps
/// running); with the operator's key loaded in the page a container
/// restarts, a terminal opens and answers, a deploy and a rollback
/// succeed, each on the page's signature, which the host's record names;
/// no request the page made carried the key.
#[test]
fn signed_deploys_terminals_and_containers_in_a_real_browser() {
    let browser = Browser::new("dashboard-signed-actions-e2e", true);

    let _engine = docker::ensure();
    let container = format!("tether-dash-signed-{}", std::process::id());
    // No network: a new veth would make Chromium abort a page load. It
    // stops at once on SIGTERM (PID 1 has no default handler).
    docker::run_detached(&[
        "--network",
        "none",
        "--name",
        &container,
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
    ]);
    let _cleanup = RemoveContainer(container.clone());
    let started = |c: &str| {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.StartedAt}}", c])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let started_before = started(&container);
    let app = format!("tether-signed-app-{}", std::process::id());
    let _app_cleanup = RemoveApp(app.clone());
    let repo = util::TempDir::new("dash-signed-app");
    util::git::app_repo(repo.path(), "v1");

    let (server, tenant) = site(&[], "acme");
    let (_keys, key, mut runner) =
        signing_runner(&server, &tenant, "jobs,deploys,terminals,containers", &[]);
    let def = serde_json::json!({"runner": runner.id, "git_url": repo.path(), "git_ref": "main",
        "container": app, "env": {"GREETING": "hello"}});
    let (st, v) = tenant.call("PUT", &format!("/api/v1/apps/{app}"), Some(def));
    assert_eq!(st, 200, "{v}");
    let runner_id = runner.id.clone();

    let transcript = browser.run(
        "e2e-signed-actions.mjs",
        (&server.url, "acme"),
        |c| {
            c.env("RUNNER_ID", &runner_id)
                .env("KEY_FILE", &key)
                .env("APP", &app)
                .env("CONTAINER", &container);
        },
        ("never", &mut runner),
    );
    assert_steps(
        &transcript,
        &[
            "unsigned deploy refused, reason and CLI command shown",
            "unsigned terminal refused, reason and CLI command shown",
            "unsigned container stop refused, reason and CLI command shown",
            "loaded",
            "signed container restart done",
            "signed terminal opened, echo $((40+2)) read 42",
            "signed deploy succeeded",
            "signed rollback to",
            "key never sent",
        ],
    );
    // Docker did it: the container restarted (and was never stopped for
    // good by the unsigned stop), the app's container runs.
    assert_ne!(started(&container), started_before, "not restarted");
    let running = |c: &str| {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", c])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    };
    assert!(
        running(&container) && running(&app),
        "containers not running"
    );

    // The host's own record: the refusals, then each signed action ran on
    // the page's key.
    let key_id = loaded_key_id(&transcript);
    let deployment = line_after(&transcript, "DEPLOYMENT ");
    let rollback = line_after(&transcript, "ROLLBACK ");
    let actions: Vec<&str> = line_after(&transcript, "ACTIONS ").split(' ').collect();
    assert_host_record(
        &runner,
        &[
            "kind=deploy action=- signer=unsigned refused: unsigned".to_owned(),
            "terminal=host kind=terminal action=- signer=unsigned refused: unsigned".to_owned(),
            format!("container={container} op=stop kind=container action=- signer=unsigned refused: unsigned"),
            format!("job={deployment} kind=deploy action={} signer={key_id} ran", actions[0]),
            format!("terminal=host kind=terminal action={} signer={key_id} ran", actions[1]),
            format!("container={container} op=restart kind=container action={} signer={key_id} ran", actions[2]),
            format!("job={rollback} kind=deploy action={} signer={key_id} ran", actions[3]),
        ],
    );
}

/// `tether-server sso …` with the tenant's token; the client secret on stdin.
fn sso_cli(server: &Server, token: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(util::server_bin())
        .args(["--api", &server.url, "--token", token, "--ca-file"])
        .arg(&server.ca)
        .arg("sso")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    write!(child.stdin.take().unwrap(), "{stdin}").unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The CLI manages a tenant's providers: a bad one refused with the
/// reason (nothing added), `corp` added (its secret never shown again),
/// listed, a second added and removed; `corp` stays for the login page.
fn sso_provider_cli(server: &Server, token: &str) {
    let issuer = "http://127.0.0.1:9/";
    let add = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "provider",
            "add",
            name,
            "--issuer",
            issuer,
            "--client-id",
            "dash",
        ];
        args.extend_from_slice(extra);
        sso_cli(server, token, &args, "cli-secret-never-shown\n")
    };
    let (ok, out) = add("bad name", &["--default-role", "viewer"]);
    assert!(!ok && out.contains("provider name"), "{out}");
    let (ok, out) = add("corp", &[]);
    assert!(!ok && out.contains("role_map"), "{out}");
    let (ok, out) = add(
        "corp",
        &["--map", "tether-admins=admin", "--map", "ops=operator"],
    );
    assert!(
        ok && out.contains("/api/v1/sso/callback"),
        "the redirect URI to register: {out}"
    );
    let (ok, out) = add("spare", &["--default-role", "viewer"]);
    assert!(ok, "{out}");
    let (ok, out) = sso_cli(server, token, &["--json", "provider", "list"], "");
    assert!(ok, "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["corp", "spare"], "{listed}");
    assert_eq!(listed[0]["role_map"]["tether-admins"], "admin", "{listed}");
    assert!(!out.contains("cli-secret-never-shown"), "{out}");
    let (ok, out) = sso_cli(server, token, &["provider", "rm", "spare"], "");
    assert!(ok, "{out}");
    let (ok, out) = sso_cli(server, token, &["provider", "rm", "spare"], "");
    assert!(!ok && out.contains("no provider spare"), "{out}");
    let (ok, out) = sso_cli(server, token, &["provider", "list"], "");
    assert!(
        ok && out.contains("corp") && !out.contains("spare"),
        "{out}"
    );
}

/// Removes the app the page deployed (its container, a replaced one left
/// parked, and its images) however the test ends.
struct RemoveApp(String);

impl Drop for RemoveApp {
    fn drop(&mut self) {
        let list = |args: &[&str]| {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for id in list(&["ps", "-aq", "--filter", &format!("name={}", self.0)]).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        for id in list(&["images", "-q", &self.0]).split_whitespace() {
            let _ = Command::new("docker").args(["rmi", "-f", id]).output();
        }
    }
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
    add_user(&server, "acme", "vic", "viewer");
    add_user(&server, "acme", "olga", "operator");
    add_user(&server, "acme", "ada", "admin");
    let agent = agent(&server);
    let url = |p: &str| format!("{}{p}", server.url);
    // Log in as the page does.
    let (cookie, csrf) = login(&server, "otto");
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
    // The runners page (runners.js): a page of rows, the counts, the meters.
    assert_eq!(
        get_json("/api/v1/runners?sort=name&page=1&limit=100")[0]["id"],
        id.as_str()
    );
    assert_eq!(get_json("/api/v1/runners/counts")["health"]["active"], 1);
    assert!(get_json(&format!("/api/v1/metrics/summary?runners={id}")).is_object());
    assert!(get_json("/api/v1/alerts")["alerts"].is_array());
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

    // Every other change the page makes, with the cookie and CSRF header.
    let send =
        |method: &str, p: &str, body: Option<serde_json::Value>| -> (u16, serde_json::Value) {
            let req = agent
                .run(
                    ureq::http::Request::builder()
                        .method(method)
                        .uri(url(p))
                        .header("Cookie", &cookie)
                        .header("X-CSRF-Token", &csrf)
                        .header("Content-Type", "application/json")
                        .body(body.map(|b| b.to_string()).unwrap_or_default())
                        .unwrap(),
                )
                .unwrap();
            let (parts, mut body) = req.into_parts();
            let text = body.read_to_string().unwrap_or_default();
            (
                parts.status.as_u16(),
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            )
        };
    the_apps_page_calls(&send, &get_json, id);
    the_update_card_calls(&send, &get_json, id);
    the_terminal_tab_calls(&server, &send, &get_json, &cookie, id);
    assert_eq!(send("DELETE", "/api/v1/scripts/hello", None).0, 204);
    assert!(get_json("/api/v1/scripts").as_array().unwrap().is_empty());

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

type Send<'a> = dyn Fn(&str, &str, Option<serde_json::Value>) -> (u16, serde_json::Value) + 'a;
type GetJson<'a> = dyn Fn(&str) -> serde_json::Value + 'a;

/// The apps page: a secret (write-only: listed by name), an app, a deploy
/// (this runner has Docker off, so the job fails, and says why), the
/// history, a rollback with nothing to go back to, and removal.
fn the_apps_page_calls(send: &Send, get_json: &GetJson, runner: &str) {
    use serde_json::json;
    let (st, v) = send(
        "PUT",
        "/api/v1/secrets/DB_PASSWORD",
        Some(json!({"value": "s3cret-value"})),
    );
    assert_eq!(st, 204, "{v}");
    let secrets = get_json("/api/v1/secrets");
    assert_eq!(secrets[0]["name"], "DB_PASSWORD");
    assert!(!secrets.to_string().contains("s3cret-value"), "{secrets}");
    let def = json!({
        "runner": runner, "git_url": "/nonexistent/repo", "git_ref": "main",
        "context": ".", "dockerfile": "Dockerfile", "image": "web", "container": "web",
        "ports": [{"host": 18080, "container": 80, "proto": "tcp"}], "volumes": ["/srv/web:/data"],
        "restart": "unless-stopped", "labels": {"tier": "front"}, "env": {"MODE": "prod"},
        "secrets": ["DB_PASSWORD"], "health": {"cmd": ["true"], "timeout_s": 5}, "timeout_s": 60,
    });
    let (st, v) = send("PUT", "/api/v1/apps/web", Some(def));
    assert_eq!(st, 200, "{v}");
    assert_eq!(get_json("/api/v1/apps")[0]["name"], "web");
    let (st, d) = send("POST", "/api/v1/apps/web/deploy", Some(json!({})));
    assert_eq!(st, 201, "{d}");
    let job = d["id"].as_str().unwrap().to_owned();
    let done = util::wait_for(Duration::from_secs(30), "the deploy job to end", || {
        let j = get_json(&format!("/api/v1/jobs/{job}"));
        (j["complete"] == true).then_some(j)
    });
    assert_eq!(done["status"], "failed", "{done}");
    let history = get_json("/api/v1/apps/web/deployments");
    assert_eq!(history[0]["id"], job.as_str());
    assert_eq!(history[0]["kind"], "deploy");
    let (st, v) = send("POST", "/api/v1/apps/web/rollback", Some(json!({})));
    assert_eq!(st, 409, "{v}");
    assert_eq!(send("DELETE", "/api/v1/apps/web", None).0, 204);
    assert_eq!(get_json("/api/v1/apps"), json!([]));
}

/// The update card: releases and policies (none here), the group lever and
/// a desired version this server does not have (refused, nothing changed).
fn the_update_card_calls(send: &Send, get_json: &GetJson, runner: &str) {
    use serde_json::json;
    assert!(get_json("/api/v1/releases").is_array());
    assert_eq!(get_json("/api/v1/update-policy"), json!([]));
    let (st, v) = send(
        "PUT",
        &format!("/api/v1/runners/{runner}/group"),
        Some(json!({"group": "canary"})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        get_json(&format!("/api/v1/runners/{runner}/updates"))["group"],
        "canary"
    );
    let (st, v) = send(
        "PUT",
        "/api/v1/update-policy",
        Some(json!({"version": "9.9.9", "canary_percent": 10, "group": "canary"})),
    );
    assert_eq!(st, 400, "{v}");
    let (st, v) = send(
        "PUT",
        "/api/v1/update-policy",
        Some(json!({"version": null, "group": "canary"})),
    );
    assert_eq!(st, 200, "{v}");
}

/// The terminal tab: open by POST, attach by WebSocket with the cookie and
/// this server's Origin (as a browser does), run a command, find it in the
/// audit trail, hang up. Another site's Origin, a viewer and no credential
/// are refused before any upgrade.
fn the_terminal_tab_calls(
    server: &Server,
    send: &Send,
    get_json: &GetJson,
    cookie: &str,
    runner: &str,
) {
    use serde_json::json;
    let (st, s) = send(
        "POST",
        &format!("/api/v1/runners/{runner}/terminals"),
        Some(json!({"cols": 100, "rows": 30})),
    );
    assert_eq!(st, 201, "{s}");
    let tid = s["id"].as_str().unwrap().to_owned();
    let mut t = TermClient::attach_as_browser(server, cookie, Some(&server.url), &tid)
        .unwrap_or_else(|e| panic!("attach with the cookie: {e:?}"));
    t.run("echo $((6*7))", "42\r\n");
    let audit = get_json(&format!("/api/v1/terminals?runner={runner}&limit=20"));
    let row = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == tid.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (row["open"].clone(), row["who"].clone()),
        (json!(true), json!("otto (dashboard)"))
    );

    let refused = TermClient::attach_as_browser(server, cookie, Some("https://evil.example"), &tid);
    let (st, body) = refused.err().expect("another site's page is refused");
    assert!(st == 403 && body.contains("Origin"), "{st} {body}");
    let refused = TermClient::attach_as_browser(server, cookie, None, &tid);
    assert_eq!(refused.err().map(|e| e.0), Some(403));
    let refused = TermClient::attach_as_browser(server, "x=1", Some(&server.url), &tid);
    assert_eq!(refused.err().map(|e| e.0), Some(401));
    let (viewer, _) = login(server, "vic");
    let refused = TermClient::attach_as_browser(server, &viewer, Some(&server.url), &tid);
    let (st, body) = refused.err().expect("a viewer is refused");
    assert!(st == 403 && body.contains("viewer"), "{st} {body}");

    // Another operator can neither take the shell over nor end it; an
    // admin can (and takes the client's place).
    let (olga, olga_csrf) = login(server, "olga");
    let refused = TermClient::attach_as_browser(server, &olga, Some(&server.url), &tid);
    let (st, body) = refused.err().expect("another operator is refused");
    assert!(st == 403 && body.contains("opened by otto"), "{st} {body}");
    let resp = agent(server)
        .delete(format!("{}/api/v1/terminals/{tid}", server.url))
        .header("Cookie", &olga)
        .header("X-CSRF-Token", &olga_csrf)
        .call()
        .unwrap();
    assert_eq!(resp.status(), 403, "another operator's DELETE");
    let (ada, _) = login(server, "ada");
    let mut a = TermClient::attach_as_browser(server, &ada, Some(&server.url), &tid)
        .unwrap_or_else(|e| panic!("an admin attaches: {e:?}"));
    a.run("echo $((7*6))", "42\r\n");
    drop(t);

    let (st, v) = send("DELETE", &format!("/api/v1/terminals/{tid}"), None);
    assert_eq!(st, 200, "{v}");
    assert!(
        a.wait_end(Duration::from_secs(15)).is_some(),
        "the hang-up ends the client too"
    );
}

/// An HTTP client that trusts the test server's CA and returns error
/// statuses as responses.
fn agent(server: &Server) -> ureq::Agent {
    let pem = std::fs::read(&server.ca).unwrap();
    let cert = ureq::tls::Certificate::from_pem(&pem).unwrap().to_owned();
    ureq::Agent::config_builder()
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
        .new_agent()
}

/// Log `name` in as the page does: (the `Cookie` header value, CSRF token).
fn login(server: &Server, name: &str) -> (String, String) {
    let mut resp = agent(server)
        .post(format!("{}/api/v1/session", server.url))
        .send(serde_json::json!({"tenant": "acme", "name": name, "password": PASSWORD}).to_string())
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let session: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    (cookie, session["csrf_token"].as_str().unwrap().to_owned())
}

/// The schedules page in real Chromium (`server/web/e2e-schedules.mjs`):
/// a bad cron refused with the reason, a schedule added on a label
/// selector with its next run shown, its page with the next runs and the
/// history getting its first run (a real job on the labelled runner, at
/// most a minute later), removed after confirmation.
#[test]
fn schedules_page_in_a_real_browser() {
    let browser = Browser::new("dashboard-schedules-e2e", true);

    let (server, tenant) = site(&[], "acme");
    let mut db = Runner::enroll(&server, &tenant);
    db.start(&["--heartbeat", "1s", "--metrics-interval", "off"]);
    tenant.wait_health(&db.id, "active", Duration::from_secs(15));
    label(&tenant, &db.id, "role", "db");

    let transcript = browser.run(
        "e2e-schedules.mjs",
        (&server.url, "acme"),
        |_| {},
        ("never asked", &mut db),
    );
    assert_steps(
        &transcript,
        &[
            "a bad cron is refused with the reason",
            "added, next run",
            "five next runs shown",
            "history shows the run and its job",
            "removed after confirmation",
        ],
    );
    // The job the history linked ran on the labelled runner; the schedule
    // is gone and the bad one was never stored.
    let job = transcript
        .lines()
        .find_map(|l| l.strip_prefix("job: "))
        .expect("the page named the run's job")
        .to_owned();
    let done = util::wait_for(Duration::from_secs(30), "the scheduled job to end", || {
        let (_, j) = tenant.call("GET", &format!("/api/v1/jobs/{job}"), None);
        (j["complete"] == true).then_some(j)
    });
    assert_eq!(
        (done["status"].as_str(), done["runner_id"].as_str()),
        (Some("succeeded"), Some(db.id.as_str())),
        "{done}"
    );
    let (_, list) = tenant.call("GET", "/api/v1/schedules", None);
    assert_eq!(list, serde_json::json!([]));
}

/// The runners page's update state in real Chromium
/// (`server/web/e2e-updates.mjs`) over 6 `tether-sim` runners (they hold
/// their link and ignore offers, so a wanted version stays pending), two
/// of which want the version they run: the update-state filter narrows
/// the rows and the counts (current 2, none 4, pending 0); two ticked
/// under "no desired version" get a version by the bulk action, which the
/// API then shows as their own desired version, and the filter as pending.
#[test]
fn update_state_filter_and_bulk_desired_version_in_a_real_browser() {
    let browser = Browser::new("dashboard-updates-e2e", true);

    // A server with release keys, and releases of the running version and
    // of the one the page sets (their content does not matter: the
    // simulated runners never install).
    let fx = crate::update::Fx::new();
    let v0 = env!("CARGO_PKG_VERSION");
    fx.publish(v0, &crate::update::script("exit 0"));
    fx.publish("0.9.0", &crate::update::script("exit 0"));
    add_user(&fx.server, "acme", "ada", "admin");
    let sims = 6;
    let mut sim = util::start_sims(&fx.server, &fx.tenant.token, sims as u64, "600s");
    let ids: std::collections::HashMap<String, String> = util::wait_for(
        Duration::from_secs(60),
        "the simulated runners active",
        || {
            let (_, v) = fx.tenant.call("GET", "/api/v1/runners", None);
            let list = v.as_array()?;
            (list.iter().filter(|r| r["health"] == "active").count() == sims).then(|| {
                list.iter()
                    .map(|r| {
                        let name = r["name"].as_str().unwrap().to_owned();
                        (name, r["id"].as_str().unwrap().to_owned())
                    })
                    .collect()
            })
        },
    );
    let current = ["sim-00000", "sim-00001"];
    let pick = ["sim-00002", "sim-00004"];
    let (st, v) = fx.tenant.call(
        "POST",
        "/api/v1/desired-version",
        Some(serde_json::json!({"runners": current.map(|n| ids[n].clone()), "version": v0})),
    );
    assert_eq!(
        (st, v["changed"].clone()),
        (200, serde_json::json!(2)),
        "{v}"
    );

    let t0 = std::time::Instant::now();
    browser.run(
        "e2e-updates.mjs",
        (&fx.server.url, "acme"),
        |c| {
            c.env("TOTAL", sims.to_string())
                .env("CURRENT", current.join(","))
                .env("PICK", pick.join(","))
                .env("VERSION", "0.9.0");
        },
        ("never asked", &mut Runner::new()),
    );
    eprintln!("the page script took {:?}", t0.elapsed());
    let _ = sim.0.kill();
    // Checked through the API: the two picked want 0.9.0 (their own), the
    // others are as they were, and the API's filter agrees with the page.
    for (name, id) in &ids {
        let (_, r) = fx
            .tenant
            .call("GET", &format!("/api/v1/runners/{id}/updates"), None);
        let want = if pick.contains(&name.as_str()) {
            serde_json::json!("0.9.0")
        } else if current.contains(&name.as_str()) {
            serde_json::json!(v0)
        } else {
            serde_json::Value::Null
        };
        assert_eq!(r["desired_version"], want, "{name}: {r}");
    }
    let (_, v) = fx
        .tenant
        .call("GET", "/api/v1/runners?update=pending&sort=name", None);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, pick, "{v}");
}
