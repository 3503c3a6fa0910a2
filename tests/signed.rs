//! Signed jobs through the real server and runner: a host that requires
//! signatures (`--require-signed jobs`, keys in `<state-dir>/operator-keys.pub`)
//! runs a job the operator's CLI signed (`run --sign-key`), and refuses —
//! with the reason, visible in the API and the audit trail, and nothing
//! executed (the file the job would make is not there) — one that is
//! unsigned, signed by an unknown key, expired, replayed, or altered in the
//! server's database after signing (as a stolen database would).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::*;
use serde_json::{json, Value};

fn cli(server: &Server, tenant: &Tenant, args: &[&str]) -> (bool, String) {
    let out = Command::new(server_bin())
        .args(["--api", &server.url, "--token", &tenant.token, "--ca-file"])
        .arg(&server.ca)
        .args(args)
        .env_remove("TETHER_SIGN_KEY")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A runner without Docker that requires signed jobs.
const JOBS_SIGNED: &[&str] = &[
    "--heartbeat",
    "1s",
    "--docker-socket",
    "off",
    "--require-signed",
    "jobs",
];

fn job(tenant: &Tenant, id: &str) -> Value {
    let (st, v) = tenant.call("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

fn wait_final(tenant: &Tenant, id: &str) -> Value {
    wait_for(Duration::from_secs(20), &format!("job {id} to end"), || {
        let v = job(tenant, id);
        (v["finished_at"].is_string()).then_some(v)
    })
}

/// `run --detach`: the job id it printed.
fn run_detached(
    server: &Server,
    tenant: &Tenant,
    runner: &str,
    cmd: &str,
    extra: &[&str],
) -> String {
    let mut args = vec!["--json", "run", "--detach", runner, "-c", cmd];
    args.extend_from_slice(extra);
    let (ok, out) = cli(server, tenant, &args);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    v[0]["id"].as_str().unwrap().to_owned()
}

fn stop(runner: &mut Runner) {
    let mut child = runner.child.take().expect("running");
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).is_some());
}

fn assert_refused(tenant: &Tenant, id: &str, reason: &str, file: &Path) {
    let v = wait_final(tenant, id);
    assert_eq!(v["status"], "failed", "{v}");
    let why = v["reason"].as_str().unwrap();
    assert!(
        why.contains("signature_refused") && why.contains(reason),
        "want {reason:?}: {why}"
    );
    assert!(!file.exists(), "{} was made: the job ran", file.display());
}

#[test]
fn a_host_requiring_signatures_runs_signed_jobs_and_refuses_the_rest() {
    let server = Server::start();
    let tenant = server.tenant("signed");
    let keys = TempDir::new("keys");
    let key = keygen(keys.path(), "op.key");
    let stranger = keygen(keys.path(), "stranger.key");
    let mut runner = Runner::trusting(&server, &tenant, &key, JOBS_SIGNED);
    let out = TempDir::new("made");
    let file = |n: &str| out.path().join(n);
    let touch = |n: &str| format!("touch {}", file(n).display());
    let key_arg = key.to_str().unwrap();

    // Signed by the trusted key: runs.
    let signed_id = run_detached(
        &server,
        &tenant,
        &runner.id,
        &touch("signed"),
        &["--sign-key", key_arg],
    );
    let v = wait_final(&tenant, &signed_id);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(file("signed").exists());
    assert!(
        v["signed"]["action_id"]
            .as_str()
            .unwrap()
            .starts_with("sa_"),
        "{v}"
    );

    // Unsigned.
    let id = run_detached(&server, &tenant, &runner.id, &touch("unsigned"), &[]);
    assert_refused(&tenant, &id, "unsigned", &file("unsigned"));

    // Signed by a key the host does not trust.
    let id = run_detached(
        &server,
        &tenant,
        &runner.id,
        &touch("stranger"),
        &["--sign-key", stranger.to_str().unwrap()],
    );
    assert_refused(&tenant, &id, "unknown key", &file("stranger"));

    // Replayed: the signed job's exact request sent again (signatures are
    // public: the job shows its own).
    let first = job(&tenant, &signed_id);
    let replay = json!({
        "runners": [runner.id],
        "command": touch("signed"),
        "signatures": { runner.id.clone(): first["signed"] },
    });
    std::fs::remove_file(file("signed")).unwrap();
    let (st, v) = tenant.call("POST", "/api/v1/jobs", Some(replay));
    assert_eq!(st, 201, "{v}");
    assert_refused(
        &tenant,
        v[0]["id"].as_str().unwrap(),
        "replayed",
        &file("signed"),
    );

    // Expired: signed for 1 s while the host is away, delivered after.
    stop(&mut runner);
    let id = run_detached(
        &server,
        &tenant,
        &runner.id,
        &touch("expired"),
        &["--sign-key", key_arg, "--sign-valid", "1s"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    runner.start(JOBS_SIGNED);
    assert_refused(&tenant, &id, "expired", &file("expired"));

    // Altered: signed, then changed in the server's database before it is
    // sent (a stolen database, a compromised server).
    stop(&mut runner);
    let id = run_detached(
        &server,
        &tenant,
        &runner.id,
        &touch("meant"),
        &["--sign-key", key_arg],
    );
    let mut server = server;
    server.stop();
    let st = Command::new("sqlite3")
        .arg(server.data.join("jobs.db"))
        .arg(format!(
            "UPDATE jobs SET spec = replace(spec, 'meant', 'evil') WHERE id = '{id}'"
        ))
        .status()
        .expect("sqlite3 (packaging/dev-setup.sh installs it)");
    assert!(st.success());
    server.restart();
    runner.start(JOBS_SIGNED);
    assert_refused(&tenant, &id, "altered", &file("evil"));
    assert!(!file("meant").exists());

    // Every refusal is in the audit trail, under the runner.
    let (st, trail) = tenant.call("GET", "/api/v1/audit?action=runner%20refused", None);
    assert_eq!(st, 200, "{trail}");
    let details: Vec<&str> = trail
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    for reason in ["unsigned", "unknown key", "replayed", "expired", "altered"] {
        assert!(
            details.iter().any(|d| d.starts_with(reason)),
            "{reason} not in {details:?}"
        );
    }

    // The operator's secret key never reached the server: its key line is
    // in no file of the server's dir (data, log), while the signatures are.
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret_line = secret.lines().nth(1).unwrap();
    assert!(
        files_containing(server.dir.path(), secret_line.as_bytes()).is_empty(),
        "the secret key is in the server's files"
    );
    let signature = first["signed"]["signature"].as_str().unwrap();
    let sig_line = signature.lines().nth(1).unwrap();
    assert!(!files_containing(server.dir.path(), sig_line.as_bytes()).is_empty());
}

/// Files under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p);
            }
        }
    }
    hits
}

#[test]
fn a_runner_requiring_signatures_without_keys_does_not_start() {
    let server = Server::start();
    let tenant = server.tenant("nokeys");
    let runner = Runner::enroll(&server, &tenant);
    let out = runner
        .cmd()
        .args(["run", "--require-signed", "jobs", "--docker-socket", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("operator-keys.pub"), "{err}");
}

#[test]
fn our_key_files_and_signatures_are_minisign_s() {
    let dir = TempDir::new("interop");
    let key = keygen(dir.path(), "op.key");
    let msg = dir.path().join("msg");
    std::fs::write(&msg, b"hello").unwrap();
    // minisign signs with our secret key file and verifies with our public one.
    let st = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&key)
        .arg("-m")
        .arg(&msg)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let st = Command::new("minisign")
        .args(["-V", "-p"])
        .arg(dir.path().join("op.key.pub"))
        .arg("-m")
        .arg(&msg)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
}

/// `--require-signed jobs` alone does not check deploys: an unsigned
/// deploy gets past the signature check (and fails later, for want of
/// Docker here), while an unsigned job is refused (`docs/security.md`,
/// "Not protected today": require both).
#[test]
fn requiring_signed_jobs_alone_leaves_deploys_unchecked() {
    let server = Server::start();
    let tenant = server.tenant("signed-jobs-only");
    let keys = TempDir::new("keys");
    let key = keygen(keys.path(), "op.key");
    let runner = Runner::trusting(&server, &tenant, &key, JOBS_SIGNED);
    let site = TempDir::new("site");
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/apps/site",
        Some(json!({ "runner": runner.id, "path": site.path() })),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = tenant.call("POST", "/api/v1/apps/site/deploy", None);
    assert_eq!(st, 201, "{v}");
    let v = wait_final(&tenant, v["id"].as_str().unwrap());
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        !v["reason"].as_str().unwrap().contains("signature_refused"),
        "{v}"
    );
    let made = TempDir::new("made");
    let file = made.path().join("job");
    let id = run_detached(
        &server,
        &tenant,
        &runner.id,
        &format!("touch {}", file.display()),
        &[],
    );
    assert_refused(&tenant, &id, "unsigned", &file);
}

/// `docker inspect -f FORMAT NAME`, `None` if there is no such object.
fn inspect(format: &str, name: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, name])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Removes a test's containers and image tags (`NAME*`, `NAME:*`) on drop.
struct DockerCleanup(String);

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let ps = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("name={}", self.0)])
            .output();
        if let Ok(out) = ps {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        for tag in image_tags(&self.0) {
            let _ = Command::new("docker").args(["rmi", &tag]).output();
        }
    }
}

/// `REPO:TAG` of every image of repository `repo`.
fn image_tags(repo: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}", repo])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `app deploy NAME --detach --json` (extra flags appended): the deployment.
fn app_cli(server: &Server, tenant: &Tenant, args: &[&str]) -> Value {
    let mut all = vec!["--json", "app"];
    all.extend_from_slice(args);
    all.push("--detach");
    let (ok, out) = cli(server, tenant, &all);
    assert!(ok, "{out}");
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

/// A deploy is refused with `reason`, and the host's Docker is as it was:
/// the same container (id) runs, no image was tagged for the deploy
/// (unless it is `existing`'s, as a replay's is).
fn assert_deploy_refused(
    tenant: &Tenant,
    d: &Value,
    reason: &str,
    (app, container, existing): (&str, &str, &str),
) {
    let id = d["id"].as_str().unwrap();
    let v = wait_final(tenant, id);
    assert_eq!(v["status"], "failed", "{v}");
    let why = v["reason"].as_str().unwrap();
    assert!(
        why.contains("signature_refused") && why.contains(reason),
        "want {reason:?}: {why}"
    );
    assert_eq!(
        inspect("{{.Id}}", app).as_deref(),
        Some(container),
        "the app's container was replaced"
    );
    let image = d["image"].as_str().unwrap();
    assert!(
        image == existing
            || !image_tags(image.split(':').next().unwrap()).contains(&image.to_owned()),
        "{image} was built"
    );
}

/// Signed deploys through the real server, runner and Docker engine: a
/// host requiring signed deploys runs one the CLI signed (`app deploy
/// --sign-key`: built, tagged with the signature's action id, running),
/// and refuses — with the reason, its running container untouched, no
/// image built — a deploy that is unsigned, signed by an unknown key,
/// expired, replayed, or signed and then altered in the server's database
/// one field at a time (source path, context, Dockerfile, image, build,
/// container, ports, volumes, restart, labels, env, secret names, health
/// check, env file, secrets delivery, timeout, the signature's not-after
/// and action id, and the runner it goes to). A signed rollback runs too.
#[test]
fn a_host_requiring_signed_deploys_runs_signed_ones_and_refuses_the_rest() {
    let _engine = crate::util::docker::ensure();
    let mut server = Server::start();
    let tenant = server.tenant("signed-deploys");
    let keys = TempDir::new("keys");
    let key = keygen(keys.path(), "op.key");
    let stranger = keygen(keys.path(), "stranger.key");
    let key_arg = key.to_str().unwrap().to_owned();
    let args = ["--heartbeat", "1s", "--require-signed", "deploys"];
    let mut runner = Runner::trusting(&server, &tenant, &key, &args);
    // A second host trusting the same key, for a deploy moved to it.
    let mut other = Runner::trusting(&server, &tenant, &key, &args);
    let app = format!("tether-signed-{}", std::process::id());
    let _cleanup = DockerCleanup(app.clone());
    let src = TempDir::new("site");
    std::fs::write(
        src.path().join("Dockerfile"),
        format!(
            "FROM {}\nCOPY . /ctx\nCMD [\"sleep\", \"3600\"]\n",
            crate::util::docker::IMAGE
        ),
    )
    .unwrap();
    std::fs::write(src.path().join("version.txt"), "signed\n").unwrap();
    let (st, _) = tenant.call(
        "PUT",
        "/api/v1/secrets/TOKEN",
        Some(json!({ "value": "not-signed-value" })),
    );
    assert_eq!(st, 204);
    let (st, v) = tenant.call(
        "PUT",
        &format!("/api/v1/apps/{app}"),
        Some(json!({
            "runner": runner.id,
            "path": src.path(),
            "env": {"MODE": "signed"},
            "secrets": ["TOKEN"],
            "secrets_delivery": "env",
            "labels": {"tier": "web"},
            "health": {"cmd": ["test", "-f", "/ctx/version.txt"], "timeout_s": 20},
        })),
    );
    assert_eq!(st, 200, "{v}");

    // Signed by the trusted key: built, tagged with the action id, running.
    let first = app_cli(&server, &tenant, &["deploy", &app, "--sign-key", &key_arg]);
    let v = wait_final(&tenant, first["id"].as_str().unwrap());
    assert_eq!(v["status"], "succeeded", "{v}");
    let action = v["signed"]["action_id"].as_str().unwrap().to_owned();
    assert_eq!(first["image"], format!("{app}:{action}"));
    assert_eq!(
        inspect("{{.Config.Image}}", &app).as_deref(),
        Some(first["image"].as_str().unwrap())
    );
    let container = inspect("{{.Id}}", &app).expect("the app runs");
    let existing = first["image"].as_str().unwrap().to_owned();
    let refused = |d: &Value, reason: &str| {
        assert_deploy_refused(&tenant, d, reason, (&app, &container, &existing));
    };

    // Unsigned (the API without a signature).
    let (st, d) = tenant.call("POST", &format!("/api/v1/apps/{app}/deploy"), None);
    assert_eq!(st, 201, "{d}");
    refused(&d, "unsigned");
    // Signed by a key the host does not trust.
    let d = app_cli(
        &server,
        &tenant,
        &["deploy", &app, "--sign-key", stranger.to_str().unwrap()],
    );
    refused(&d, "unknown key");
    // Replayed: the first deploy's signature sent again.
    let (st, d) = tenant.call(
        "POST",
        &format!("/api/v1/apps/{app}/deploy"),
        Some(json!({ "signed": v["signed"] })),
    );
    assert_eq!(st, 201, "{d}");
    assert_eq!(d["image"], first["image"]);
    refused(&d, "replayed");
    // A signature whose action id cannot tag an image: refused by the API.
    let mut bad = v["signed"].clone();
    bad["action_id"] = json!("sa/../x");
    let (st, e) = tenant.call(
        "POST",
        &format!("/api/v1/apps/{app}/deploy"),
        Some(json!({ "signed": bad })),
    );
    assert_eq!(st, 400, "{e}");

    // Expired: signed for 1 s while the host is away, delivered after.
    stop(&mut runner);
    let d = app_cli(
        &server,
        &tenant,
        &["deploy", &app, "--sign-key", &key_arg, "--sign-valid", "1s"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    runner.start(&args);
    refused(&d, "expired");

    // Altered: signed deploys changed in the server's database, one field
    // each, while the hosts are away (a stolen database, a compromised
    // server).
    stop(&mut runner);
    stop(&mut other);
    let alterations: &[(&str, &str)] = &[
        ("path", "json_set(spec, '$.deploy.path', '/')"),
        ("context", "json_set(spec, '$.deploy.context', 'sub')"),
        (
            "dockerfile",
            "json_set(spec, '$.deploy.dockerfile', 'Evil')",
        ),
        ("image", "json_set(spec, '$.deploy.image', 'evil:1')"),
        ("build", "json_set(spec, '$.deploy.build', json('false'))"),
        ("container", "json_set(spec, '$.deploy.container', 'other')"),
        (
            "ports",
            "json_set(spec, '$.deploy.ports', json('[{\"host\":2222,\"container\":22}]'))",
        ),
        (
            "volumes",
            "json_set(spec, '$.deploy.volumes', json('[\"/:/host\"]'))",
        ),
        ("restart", "json_set(spec, '$.deploy.restart', 'always')"),
        ("labels", "json_set(spec, '$.deploy.labels', json('[]'))"),
        ("env", "json_set(spec, '$.env[0][1]', 'evil')"),
        ("secrets", "json_set(spec, '$.secrets', json('[]'))"),
        ("health", "json_remove(spec, '$.deploy.health')"),
        ("env_file", "json_set(spec, '$.deploy.env_file', '/env')"),
        (
            "delivery",
            "json_set(spec, '$.deploy.secrets_delivery', 'env_file')",
        ),
        ("timeout", "json_set(spec, '$.timeout_s', 5)"),
    ];
    let mut altered = Vec::new();
    for (what, sql) in alterations {
        let d = app_cli(&server, &tenant, &["deploy", &app, "--sign-key", &key_arg]);
        altered.push((*what, d, format!("UPDATE jobs SET spec = {sql}")));
    }
    // The signature's own fields, and the host it goes to.
    for (what, sql) in [
        (
            "not_after",
            format!(
                "UPDATE jobs SET spec = json_set(spec, '$.signed.{0}.not_after_ms', \
                 json_extract(spec, '$.signed.{0}.not_after_ms') + 1000)",
                runner.id
            ),
        ),
        (
            "action_id",
            format!(
                "UPDATE jobs SET spec = json_set(spec, '$.signed.{0}.action_id', 'sa_0000000000000000')",
                runner.id
            ),
        ),
        (
            "runner",
            format!(
                "UPDATE jobs SET runner_id = '{1}', spec = json_set(spec, '$.signed.{1}', \
                 json_extract(spec, '$.signed.{0}'))",
                runner.id, other.id
            ),
        ),
    ] {
        let d = app_cli(&server, &tenant, &["deploy", &app, "--sign-key", &key_arg]);
        altered.push((what, d, sql));
    }
    server.stop();
    for (what, d, sql) in &altered {
        let sql = format!("{sql} WHERE id = '{}'", d["id"].as_str().unwrap());
        let out = Command::new("sqlite3")
            .arg(server.data.join("jobs.db"))
            .arg(&sql)
            .output()
            .expect("sqlite3 (packaging/dev-setup.sh installs it)");
        assert!(out.status.success(), "{what}: {sql}: {out:?}");
    }
    server.restart();
    runner.start(&args);
    other.start(&args);
    for (what, d, _) in &altered {
        let v = wait_final(&tenant, d["id"].as_str().unwrap());
        let why = v["reason"].as_str().unwrap_or_default();
        assert!(
            v["status"] == "failed" && why.contains("signature_refused") && why.contains("altered"),
            "{what}: {v}"
        );
        refused(d, "altered");
    }
    assert!(inspect("{{.Id}}", "other").is_none());

    // A second signed deploy, then a signed rollback to the first image.
    let second = app_cli(&server, &tenant, &["deploy", &app, "--sign-key", &key_arg]);
    let v = wait_final(&tenant, second["id"].as_str().unwrap());
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        inspect("{{.Config.Image}}", &app).as_deref(),
        Some(second["image"].as_str().unwrap())
    );
    let back = app_cli(
        &server,
        &tenant,
        &["rollback", &app, "--sign-key", &key_arg],
    );
    let v = wait_final(&tenant, back["id"].as_str().unwrap());
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        inspect("{{.Config.Image}}", &app).as_deref(),
        Some(first["image"].as_str().unwrap())
    );
    // An unsigned rollback is refused like an unsigned deploy.
    let (st, d) = tenant.call("POST", &format!("/api/v1/apps/{app}/rollback"), None);
    assert_eq!(st, 201, "{d}");
    let v = wait_final(&tenant, d["id"].as_str().unwrap());
    assert!(v["reason"].as_str().unwrap().contains("unsigned"), "{v}");
}

/// A limit of signing saved scripts: `run --script NAME --sign-key` signs
/// the body the server hands the CLI, so a server (or whoever edits its
/// database) that swaps the body before the operator signs gets its own
/// script signed and run (`docs/security.md`, "Not protected today").
#[test]
fn a_saved_script_is_signed_as_the_server_hands_it_to_the_cli() {
    let mut server = Server::start();
    let tenant = server.tenant("signed-script");
    let keys = TempDir::new("keys");
    let key = keygen(keys.path(), "op.key");
    let mut runner = Runner::trusting(&server, &tenant, &key, JOBS_SIGNED);
    let made = TempDir::new("made");
    let body = format!("touch {}", made.path().join("meant").display());
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/scripts/nightly",
        Some(json!({ "body": body })),
    );
    assert_eq!(st, 200, "{v}");
    // The body swapped behind the operator's back.
    stop(&mut runner);
    server.stop();
    let st = Command::new("sqlite3")
        .arg(server.data.join("jobs.db"))
        .arg("UPDATE scripts SET body = replace(body, 'meant', 'swapped') WHERE name = 'nightly'")
        .status()
        .expect("sqlite3 (packaging/dev-setup.sh installs it)");
    assert!(st.success());
    server.restart();
    runner.start(JOBS_SIGNED);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let (ok, out) = cli(
        &server,
        &tenant,
        &[
            "--json",
            "run",
            "--detach",
            &runner.id,
            "--script",
            "nightly",
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let v = wait_final(&tenant, v[0]["id"].as_str().unwrap());
    assert_eq!(v["status"], "succeeded", "the swapped body was signed: {v}");
    assert!(made.path().join("swapped").exists());
    assert!(!made.path().join("meant").exists());
}

/// The host's own record (`tether audit`, `<state-dir>/audit.log`): one
/// line per job with its id, kind, action id, the key id that signed it
/// (or `unsigned`) and the outcome, written by the runner — a signed job
/// that ran, an unsigned one and a stranger's that were refused.
#[test]
fn the_host_keeps_its_own_record_of_what_ran_and_on_whose_signature() {
    let server = Server::start();
    let tenant = server.tenant("audit");
    let keys = TempDir::new("keys");
    let key = keygen(keys.path(), "op.key");
    let stranger = keygen(keys.path(), "stranger.key");
    // `minisign public key ID` in each .pub file's comment.
    let key_id = |k: &Path| {
        let text = std::fs::read_to_string(k.with_extension("key.pub")).unwrap();
        let first = text.lines().next().unwrap().to_owned();
        first.rsplit(' ').next().unwrap().to_owned()
    };
    let (op_id, stranger_id) = (key_id(&key), key_id(&stranger));
    let mut runner = Runner::enroll(&server, &tenant);
    let audit = |runner: &Runner| {
        let out = runner.cmd().arg("audit").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Nothing yet: said on stderr, exit 0.
    let (code, text, err) = audit(&runner);
    assert_eq!((code, text.as_str()), (Some(0), ""), "{err}");
    assert!(err.contains("no actions recorded yet"), "{err}");
    runner.trust_key(&key);
    runner.start(JOBS_SIGNED);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let made = TempDir::new("made");
    let file = |n: &str| made.path().join(n);
    let touch = |n: &str| format!("touch {}", file(n).display());
    let signed = run_detached(
        &server,
        &tenant,
        &runner.id,
        &touch("signed"),
        &["--sign-key", key.to_str().unwrap()],
    );
    assert_eq!(wait_final(&tenant, &signed)["status"], "succeeded");
    let unsigned = run_detached(&server, &tenant, &runner.id, &touch("unsigned"), &[]);
    assert_refused(&tenant, &unsigned, "unsigned", &file("unsigned"));
    let strange = run_detached(
        &server,
        &tenant,
        &runner.id,
        &touch("stranger"),
        &["--sign-key", stranger.to_str().unwrap()],
    );
    assert_refused(&tenant, &strange, "unknown key", &file("stranger"));
    let action = job(&tenant, &signed)["signed"]["action_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (code, text, err) = audit(&runner);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let want = [
        format!("job={signed} kind=job action={action} signer={op_id} ran"),
        format!("job={unsigned} kind=job action=- signer=unsigned refused: unsigned"),
        format!("job={strange} kind=job action=sa_"),
    ];
    for (line, want) in lines.iter().zip(&want) {
        // `2026-12-06T15:04:05Z job=…`: the time, then the fields.
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(time.len() == 20 && time.ends_with('Z'), "{line}");
        assert!(rest.starts_with(want.as_str()), "want {want:?}: {line}");
    }
    assert!(
        lines[2].ends_with(&format!(
            "signer={stranger_id} refused: unknown key: not signed by a key this host trusts"
        )),
        "{}",
        lines[2]
    );
    // The record is the runner's file, readable with the runner stopped.
    stop(&mut runner);
    assert_eq!(audit(&runner).1, text);
    let out = runner.cmd().args(["audit", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("64 KiB"));
    let out = runner.cmd().args(["audit", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// An unknown word in `--require-signed` is refused when the runner
/// starts, naming it, with the usage exit code (2) — not ignored. No
/// server needed: the list is checked before the credential. Every kind
/// the runner checks is accepted.
#[test]
fn a_runner_asked_to_require_an_unknown_kind_does_not_start() {
    let state = TempDir::new("state");
    for (flag, env) in [
        (Some("terminal"), None),
        (Some("jobs,container"), None),
        (None, Some("all,everything")),
    ] {
        let mut cmd = Command::new(runner_bin());
        cmd.arg("--state-dir").arg(state.path()).arg("run");
        if let Some(f) = flag {
            cmd.args(["--require-signed", f]);
        }
        match env {
            Some(e) => cmd.env("TETHER_REQUIRE_SIGNED", e),
            None => cmd.env_remove("TETHER_REQUIRE_SIGNED"),
        };
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let word = flag.or(env).unwrap().rsplit(',').next().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag:?} {env:?}: {err}");
        assert!(
            err.contains(&format!("unknown {word:?}")),
            "{flag:?} {env:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(state.path()).unwrap().count(), 0);
    // The four kinds are words it knows: past the list, it asks for its
    // credential (not enrolled: exit 11).
    let out = Command::new(runner_bin())
        .arg("--state-dir")
        .arg(state.path())
        .args([
            "run",
            "--require-signed",
            "jobs,deploys,terminals,containers",
        ])
        .env_remove("TETHER_REQUIRE_SIGNED")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(2), "{out:?}");
}

/// A signature made here with Debian's minisign (not our CLI) over `bytes`.
fn minisign(key: &Path, bytes: &[u8], comment: &str) -> String {
    let dir = TempDir::new("sig");
    let msg = dir.path().join("msg");
    std::fs::write(&msg, bytes).unwrap();
    let sig = dir.path().join("msg.minisig");
    let out = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(key)
        .arg("-m")
        .arg(&msg)
        .arg("-x")
        .arg(&sig)
        .args(["-t", comment])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(&sig).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The three flat signature fields the terminal and container APIs take.
fn flat(action_id: &str, not_after_ms: u64, signature: &str) -> Value {
    json!({"action_id": action_id, "not_after_ms": not_after_ms, "signature": signature})
}

/// What a host terminal request carries and what is signed of it.
#[derive(Clone)]
struct TermReq {
    runner: String,
    container: Option<String>,
    command: Option<String>,
    user: Option<String>,
}

impl TermReq {
    /// The `term_open` the server makes of it (the fields signed).
    fn open(&self) -> tether::protocol::TermOpen {
        let cmd: Vec<String> = match (&self.command, &self.container) {
            (Some(c), Some(_)) => vec!["sh".into(), "-c".into(), c.clone()],
            (Some(c), None) => vec![c.clone()],
            (None, _) => Vec::new(),
        };
        tether::protocol::TermOpen {
            channel: 0,
            container: self.container.clone(),
            command: cmd,
            user: self.user.clone(),
            cols: 80,
            rows: 24,
            idle_timeout_s: 0,
            detach_timeout_s: 0,
            window: 0,
            signed: None,
        }
    }

    fn sign(&self, key: &Path, action_id: &str, not_after_ms: u64) -> Value {
        use tether::protocol::signed::{terminal_bytes, trusted_comment, Kind};
        let bytes = terminal_bytes(&self.runner, action_id, not_after_ms, &self.open());
        let sig = minisign(key, &bytes, &trusted_comment(Kind::Terminal, action_id));
        flat(action_id, not_after_ms, &sig)
    }

    /// POST /runners/{id}/terminals with `signed`'s fields.
    fn send(&self, tenant: &Tenant, signed: Option<&Value>) -> (u16, Value) {
        let mut body = signed.cloned().unwrap_or_else(|| json!({}));
        for (k, v) in [
            ("container", &self.container),
            ("command", &self.command),
            ("user", &self.user),
        ] {
            if let Some(v) = v {
                body[k] = json!(v);
            }
        }
        tenant.call(
            "POST",
            &format!("/api/v1/runners/{}/terminals", self.runner),
            Some(body),
        )
    }
}

/// Refused by the host: 403 `signature_refused` with `reason` first.
fn assert_api_refused(st: u16, v: &Value, reason: &str) {
    assert_eq!(st, 403, "want {reason:?}: {v}");
    assert_eq!(v["error"]["code"], "signature_refused", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with(reason), "want {reason:?}: {msg}");
}

/// Signed terminals through the real server and runner: a host requiring
/// them (`--require-signed terminals`) opens one the CLI signed
/// (`terminal --sign-key`: its command runs) and refuses — 403
/// `signature_refused` with the reason, the command never run (the file it
/// would make is not there) — one unsigned, signed by an unknown key,
/// expired, replayed, or signed for something else than what was sent,
/// one field at a time: the command, the target (host or a container),
/// the user, the runner, the not-after, the action id. Signatures other
/// than the CLI's are made with Debian's minisign over the canonical bytes.
#[test]
fn a_host_requiring_signed_terminals_opens_signed_ones_and_refuses_the_rest() {
    let server = Server::start();
    let tenant = server.tenant("signed-terms");
    let keys = TempDir::new("keys");
    let key = keygen(keys.path(), "op.key");
    let stranger = keygen(keys.path(), "stranger.key");
    let args = [
        "--heartbeat",
        "1s",
        "--docker-socket",
        "off",
        "--require-signed",
        "terminals",
    ];
    let mut runner = Runner::trusting(&server, &tenant, &key, &args);
    let mut other = Runner::trusting(&server, &tenant, &key, &args);
    let made = TempDir::new("made");
    let file = |n: &str| made.path().join(n);
    let touch = |n: &str| format!("touch {}", file(n).display());
    let appears = |n: &str| {
        wait_for(Duration::from_secs(15), &format!("{n} to be made"), || {
            file(n).exists().then_some(())
        })
    };

    // Signed by the CLI with the trusted key: the command runs (and lasts
    // long enough for the CLI to attach before it ends).
    let (ok, out) = cli(
        &server,
        &tenant,
        &[
            "terminal",
            &runner.id,
            "--command",
            &format!("{}; sleep 1", touch("cli")),
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    appears("cli");
    // The CLI without a key: refused, the host's reason shown.
    let (ok, out) = cli(
        &server,
        &tenant,
        &["terminal", &runner.id, "--command", &touch("cli-unsigned")],
    );
    assert!(!ok && out.contains("unsigned"), "{out}");

    let req = |name: &str| TermReq {
        runner: runner.id.clone(),
        container: None,
        command: Some(touch(name)),
        user: None,
    };
    let later = now_ms() + 600_000;
    // Signed here with minisign: opens.
    let r = req("minisigned");
    let good = r.sign(&key, "sa_t1", later);
    let (st, v) = r.send(&tenant, Some(&good));
    assert_eq!(st, 201, "{v}");
    appears("minisigned");
    // Replayed: the same request and signature again.
    std::fs::remove_file(file("minisigned")).unwrap();
    let (st, v) = r.send(&tenant, Some(&good));
    assert_api_refused(st, &v, "replayed");
    // Unsigned, a stranger's key, expired.
    let r = req("unsigned");
    let (st, v) = r.send(&tenant, None);
    assert_api_refused(st, &v, "unsigned");
    let r = req("stranger");
    let (st, v) = r.send(&tenant, Some(&r.sign(&stranger, "sa_t2", later)));
    assert_api_refused(st, &v, "unknown key");
    let r = req("expired");
    let (st, v) = r.send(&tenant, Some(&r.sign(&key, "sa_t3", now_ms() - 1000)));
    assert_api_refused(st, &v, "expired");

    // Altered: signed for one thing, sent as another, one field at a time.
    let meant = req("meant");
    let sig = |id: &str| meant.sign(&key, id, later);
    let altered = |sent: &TermReq, sig: &Value| {
        let (st, v) = sent.send(&tenant, Some(sig));
        assert_api_refused(st, &v, "altered");
    };
    altered(&req("evil"), &sig("sa_t4"));
    let mut host_user = meant.clone();
    host_user.user = Some("nobody".into());
    altered(&host_user, &sig("sa_t5"));
    let mut in_container = meant.clone();
    in_container.container = Some("web".into());
    altered(&in_container, &sig("sa_t6"));
    let mut elsewhere = meant.clone();
    elsewhere.runner = other.id.clone();
    altered(&elsewhere, &sig("sa_t7"));
    let mut s = sig("sa_t8");
    s["not_after_ms"] = json!(later + 1000);
    altered(&meant, &s);
    let mut s = sig("sa_t9");
    s["action_id"] = json!("sa_t9x");
    altered(&meant, &s);
    std::thread::sleep(Duration::from_millis(500));
    for f in [
        "cli-unsigned",
        "unsigned",
        "stranger",
        "expired",
        "evil",
        "meant",
    ] {
        assert!(!file(f).exists(), "{f} was made: a refused terminal ran");
    }
    assert!(!file("minisigned").exists(), "the replay ran");

    // The host's record: the signed terminal ran, the refusals with reasons.
    let out = runner.cmd().arg("audit").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("terminal=host kind=terminal action=sa_t1 signer=")
            && text.contains("refused: replayed"),
        "{text}"
    );
    assert!(
        text.contains("action=- signer=unsigned refused: unsigned"),
        "{text}"
    );
    stop(&mut runner);
    stop(&mut other);
}

/// `docker inspect -f '{{.State.Status}}' NAME`.
fn state_of(name: &str) -> String {
    inspect("{{.State.Status}}", name).unwrap_or_default()
}

/// Signed container operations through the real server, runner and Docker:
/// a host requiring them (`--require-signed containers`) stops a container
/// when the CLI signed the stop (`container stop --sign-key`) and refuses —
/// 403 `signature_refused` with the reason, the container left as it was —
/// a stop, kill, remove or prune that is unsigned, signed by an unknown key,
/// expired, replayed, or signed for something else (the operation, the
/// container, the timeout, the runner, the not-after, the action id).
/// Listing and inspecting need no signature. A container terminal on a
/// host requiring terminals opens signed and is refused unsigned.
#[test]
fn a_host_requiring_signed_container_operations_runs_signed_ones_and_refuses_the_rest() {
    use tether::protocol::signed::{container_bytes, trusted_comment, Kind};
    use tether::protocol::{DockerOp, DockerRequest};
    let _engine = crate::util::docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("signed-docker");
    let keys = TempDir::new("keys");
    let key = keygen(keys.path(), "op.key");
    let stranger = keygen(keys.path(), "stranger.key");
    let runner = Runner::trusting(
        &server,
        &tenant,
        &key,
        &[
            "--heartbeat",
            "1s",
            "--require-signed",
            "containers,terminals",
        ],
    );
    let name = format!("tether-signed-ops-{}", std::process::id());
    let _cleanup = DockerCleanup(name.clone());
    let out = Command::new("docker")
        .args(["run", "-d", "--name", &name, crate::util::docker::IMAGE])
        .args(["sleep", "300"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for(Duration::from_secs(15), "docker on the runner", || {
        let path = format!("/api/v1/runners/{}/docker", runner.id);
        let (st, v) = tenant.call("GET", &path, None);
        (st == 200 && v["available"] == true).then_some(())
    });
    let id_before = inspect("{{.Id}}", &name).unwrap();
    // Reads need no signature.
    let (st, v) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{}/containers/{name}", runner.id),
        None,
    );
    assert_eq!(st, 200, "{v}");

    let later = now_ms() + 600_000;
    let stop_req = |container: &str, timeout: Option<u32>| DockerRequest {
        op: DockerOp::Stop,
        container: Some(container.to_owned()),
        timeout_s: timeout,
        signal: None,
        force: false,
        volumes: false,
        filters: None,
        signed: None,
    };
    let sign = |k: &Path, runner: &str, r: &DockerRequest, id: &str, not_after: u64| {
        let bytes = container_bytes(runner, id, not_after, r);
        (
            id.to_owned(),
            not_after,
            minisign(k, &bytes, &trusted_comment(Kind::Container, id)),
        )
    };
    // POST …/containers/NAME/OP?timeout=…&action_id=…&not_after_ms=…&signature=…
    let call = |op: &str, query: &str, s: Option<&(String, u64, String)>| {
        let mut q = query.to_owned();
        if let Some((id, na, sig)) = s {
            let enc: String = sig
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            q.push_str(&format!(
                "&action_id={id}&not_after_ms={na}&signature={enc}"
            ));
        }
        let (method, path) = match op {
            "remove" => ("DELETE", String::new()),
            op => ("POST", format!("/{op}")),
        };
        tenant.call(
            method,
            &format!(
                "/api/v1/runners/{}/containers/{name}{path}?{}",
                runner.id,
                q.trim_start_matches('&')
            ),
            None,
        )
    };
    let unchanged = |what: &str| {
        assert_eq!(state_of(&name), "running", "{what}: the container changed");
        assert_eq!(inspect("{{.Id}}", &name).unwrap(), id_before, "{what}");
    };

    // Unsigned stop, kill, remove, prune: refused, the container runs on.
    for op in ["stop", "kill", "remove"] {
        let (st, v) = call(op, "force=true", None);
        assert_api_refused(st, &v, "unsigned");
        unchanged(op);
    }
    let (st, v) = tenant.call(
        "POST",
        &format!("/api/v1/runners/{}/containers/prune", runner.id),
        None,
    );
    assert_api_refused(st, &v, "unsigned");
    // A stranger's key; expired.
    let r = stop_req(&name, Some(1));
    let (st, v) = call(
        "stop",
        "timeout=1",
        Some(&sign(&stranger, &runner.id, &r, "sa_c1", later)),
    );
    assert_api_refused(st, &v, "unknown key");
    let (st, v) = call(
        "stop",
        "timeout=1",
        Some(&sign(&key, &runner.id, &r, "sa_c2", now_ms() - 1000)),
    );
    assert_api_refused(st, &v, "expired");
    unchanged("stranger, expired");
    // Altered, one field at a time: signed a stop of NAME with timeout 1.
    let meant = |id: &str| sign(&key, &runner.id, &r, id, later);
    let (st, v) = call("kill", "", Some(&meant("sa_c3")));
    assert_api_refused(st, &v, "altered");
    let (st, v) = call("stop", "timeout=2", Some(&meant("sa_c4")));
    assert_api_refused(st, &v, "altered");
    let (st, v) = call("stop", "", Some(&meant("sa_c5")));
    assert_api_refused(st, &v, "altered");
    let mut s = meant("sa_c6");
    s.1 += 1000;
    let (st, v) = call("stop", "timeout=1", Some(&s));
    assert_api_refused(st, &v, "altered");
    let mut s = meant("sa_c7");
    s.0 = "sa_c7x".into();
    let (st, v) = call("stop", "timeout=1", Some(&s));
    assert_api_refused(st, &v, "altered");
    let other_name = stop_req("another", Some(1));
    let s = sign(&key, "rn_another_runner", &r, "sa_c8", later);
    let (st, v) = call("stop", "timeout=1", Some(&s));
    assert_api_refused(st, &v, "altered");
    let s = sign(&key, &runner.id, &other_name, "sa_c9", later);
    let (st, v) = call("stop", "timeout=1", Some(&s));
    assert_api_refused(st, &v, "altered");
    unchanged("altered");

    // A container terminal: refused unsigned, opens signed by the CLI.
    let (ok, out) = cli(
        &server,
        &tenant,
        &["terminal", &runner.id, &name, "--command", "touch /signed"],
    );
    assert!(!ok && out.contains("unsigned"), "{out}");
    let (ok, out) = cli(
        &server,
        &tenant,
        &[
            "terminal",
            &runner.id,
            &name,
            "--command",
            // Long enough for the CLI to attach before it ends.
            "touch /signed; sleep 1",
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    wait_for(Duration::from_secs(15), "/signed in the container", || {
        let out = Command::new("docker")
            .args(["exec", &name, "test", "-f", "/signed"])
            .output()
            .unwrap();
        out.status.success().then_some(())
    });

    // Signed by the CLI: stopped. Replayed (the same signed stop after a
    // start, signed too): refused, the container runs on.
    let (ok, out) = cli(
        &server,
        &tenant,
        &[
            "container",
            "stop",
            &runner.id,
            &name,
            "--timeout",
            "1",
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(state_of(&name), "exited");
    let (ok, out) = cli(
        &server,
        &tenant,
        &[
            "container",
            "start",
            &runner.id,
            &name,
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(state_of(&name), "running");
    let s = meant("sa_c10");
    let (st, v) = call("stop", "timeout=1", Some(&s));
    assert_eq!(st, 200, "{v}");
    assert_eq!(state_of(&name), "exited");
    let (ok, out) = cli(
        &server,
        &tenant,
        &[
            "container",
            "start",
            &runner.id,
            &name,
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let (st, v) = call("stop", "timeout=1", Some(&s));
    assert_api_refused(st, &v, "replayed");
    assert_eq!(state_of(&name), "running");
    // Prune, signed by the CLI with a filter: carried out (nothing matches).
    let (ok, out) = cli(
        &server,
        &tenant,
        &[
            "prune",
            &runner.id,
            "--filter",
            "label=tether-signed-test=none",
            "--sign-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(state_of(&name), "running");
}
