//! Deployments through the real server and runner, with real git and a real
//! Docker engine: a repository made by the test with a Dockerfile `FROM` the
//! locally imported busybox image is deployed (container running with its
//! env and secret), redeployed (replaced), broken in several ways (the old
//! container keeps running), cancelled, timed out and rolled back; a
//! directory on the host deploys without git, and a host without git says so. The
//! docker CLI is used only by the tests, to check.

use crate::util::docker::{self, IMAGE};
use crate::util::git::sh;
use crate::util::*;
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Containers and images a test made, removed on drop.
struct Cleanup {
    name: String,
    image: String,
}

impl Cleanup {
    fn new(tag: &str) -> Cleanup {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tether-d-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Cleanup {
            image: name.clone(),
            name,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("name={}", self.name)])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        // By tag, never `rmi -f ID`: the build cache gives another test's
        // identical context the same image id, and removing the id by force
        // would take that test's tags with it.
        let out = Command::new("docker")
            .args([
                "images",
                "--format",
                "{{.Repository}}:{{.Tag}}",
                &self.image,
            ])
            .output();
        if let Ok(out) = out {
            for tag in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rmi", tag]).output();
            }
        }
    }
}

/// A git repository with a Dockerfile that copies the context to /ctx.
fn repo(dir: &Path, version: &str) {
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY . /ctx\nCMD [\"sleep\", \"3600\"]\n"),
    )
    .unwrap();
    std::fs::write(dir.join(".dockerignore"), "ignored.txt\n.git\n").unwrap();
    std::fs::write(dir.join("ignored.txt"), "must not reach the image\n").unwrap();
    std::fs::write(dir.join("ok"), "").unwrap();
    std::fs::write(dir.join("version.txt"), format!("{version}\n")).unwrap();
    sh(
        dir,
        "git init -q -b main . && git add -A && git commit -qm v1",
    );
}

fn commit(dir: &Path, msg: &str) {
    sh(dir, &format!("git add -A && git commit -qm {msg}"));
}

fn docker_out(args: &[&str]) -> Option<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn container_id(name: &str) -> Option<String> {
    docker_out(&["inspect", "-f", "{{.Id}}", name])
}

fn running(name: &str) -> bool {
    docker_out(&["inspect", "-f", "{{.State.Running}}", name]).as_deref() == Some("true")
}

fn cat(name: &str, file: &str) -> String {
    docker_out(&["exec", name, "cat", file]).unwrap_or_default()
}

/// Containers whose name starts with `name` (a parked `-old-` one left
/// behind would show here).
fn containers_named(name: &str) -> Vec<String> {
    docker_out(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name={name}"),
    ])
    .unwrap_or_default()
    .lines()
    .map(str::to_owned)
    .collect()
}

fn setup(server: &Server, tenant: &Tenant) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    runner
}

fn put_app(tenant: &Tenant, name: &str, def: Value) {
    let (st, v) = tenant.call("PUT", &format!("/api/v1/apps/{name}"), Some(def));
    assert_eq!(st, 200, "put app: {v}");
}

fn deploy(tenant: &Tenant, app: &str, body: Option<Value>) -> String {
    let (st, v) = tenant.call("POST", &format!("/api/v1/apps/{app}/deploy"), body);
    assert_eq!(st, 201, "deploy: {v}");
    v["id"].as_str().unwrap().to_owned()
}

/// The job, polled: a kept-alive connection the server closed between two
/// polls (seen once under a loaded full run: "Peer disconnected") is a
/// transport hiccup, not the behaviour under test, so it is retried a few
/// times before it fails the test.
fn job(tenant: &Tenant, id: &str) -> Value {
    let mut attempt = 0;
    loop {
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tenant.call("GET", &format!("/api/v1/jobs/{id}"), None)
        }));
        match got {
            Ok((st, v)) => {
                assert_eq!(st, 200, "{v}");
                return v;
            }
            Err(e) if attempt >= 3 => std::panic::resume_unwind(e),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn wait_complete(tenant: &Tenant, id: &str) -> Value {
    wait_for(
        Duration::from_secs(120),
        &format!("deploy {id} to complete"),
        || {
            // A deploy takes seconds: no need to poll every 20 ms.
            std::thread::sleep(Duration::from_millis(100));
            let v = job(tenant, id);
            (v["complete"] == true).then_some(v)
        },
    )
}

fn output(tenant: &Tenant, id: &str, query: &str) -> String {
    let mut r = tenant
        .api
        .stream(&format!("/api/v1/jobs/{id}/output?{query}"), &tenant.token);
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    out
}

fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(grep_dir(&p, needle));
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[test]
fn deploy_runs_the_app_with_its_env_redeploy_replaces_it_and_rollback_restores_it() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("deploy-main");
    let runner = setup(&server, &tenant);
    let src = TempDir::new("deploy-src");
    repo(src.path(), "v1");
    let c = Cleanup::new("main");
    let secret = "s3cr3t-Deploy-9a7f";
    let (st, _) = tenant.call(
        "PUT",
        "/api/v1/secrets/DB_PASSWORD",
        Some(json!({ "value": secret })),
    );
    assert_eq!(st, 204);
    put_app(
        &tenant,
        &c.name,
        json!({
            "runner": runner.id,
            "git_url": src.path(),
            "git_ref": "main",
            "image": c.image,
            "env": {"GREETING": "hello"},
            "secrets": ["DB_PASSWORD"],
            "secrets_delivery": "env",
            "labels": {"tier": "web"},
            "restart": "unless-stopped",
            "health": {"cmd": ["test", "-f", "/ctx/ok"], "timeout_s": 20},
        }),
    );

    // Deploy: built, running with its env, the secret and its labels.
    let first = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &first);
    let log = output(&tenant, &first, "stream=all");
    assert_eq!(v["status"], "succeeded", "{v}\n{log}");
    assert!(running(&c.name), "the app runs");
    let env = docker_out(&["inspect", "-f", "{{json .Config.Env}}", &c.name]).unwrap();
    assert!(env.contains("GREETING=hello"), "{env}");
    assert!(
        env.contains(&format!("DB_PASSWORD={secret}")),
        "secret passed in the create call"
    );
    let labels = docker_out(&["inspect", "-f", "{{json .Config.Labels}}", &c.name]).unwrap();
    assert!(labels.contains("\"tier\":\"web\""), "{labels}");
    assert!(
        labels.contains(&format!("\"tether.deployment\":\"{first}\"")),
        "{labels}"
    );
    assert_eq!(
        docker_out(&[
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}}",
            &c.name
        ])
        .unwrap(),
        "unless-stopped"
    );
    assert_eq!(cat(&c.name, "/ctx/version.txt"), "v1");
    assert!(
        docker_out(&["exec", &c.name, "test", "-e", "/ctx/ignored.txt"]).is_none(),
        ".dockerignore honoured"
    );
    // Every step spoke, tagged with its number.
    let nd = output(&tenant, &first, "stream=all&format=ndjson");
    for s in 1..=3 {
        assert!(nd.contains(&format!("\"step\":{s}")), "step {s} in\n{nd}");
    }
    assert!(log.contains("checked out"), "{log}");
    assert!(
        log.contains("Step 1/3 : FROM"),
        "build progress relayed: {log}"
    );
    assert!(log.contains("healthy"), "{log}");

    // Redeploy a new commit: replaced, the old container gone.
    let id1 = container_id(&c.name).unwrap();
    std::fs::write(src.path().join("version.txt"), "v2\n").unwrap();
    commit(src.path(), "v2");
    let second = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &second);
    assert_eq!(
        v["status"],
        "succeeded",
        "{v}\n{}",
        output(&tenant, &second, "stream=all")
    );
    let id2 = container_id(&c.name).unwrap();
    assert_ne!(id1, id2, "a new container");
    assert!(running(&c.name));
    assert_eq!(cat(&c.name, "/ctx/version.txt"), "v2");
    assert_eq!(
        containers_named(&c.name),
        vec![c.name.clone()],
        "old one removed"
    );

    // Roll back: the first deployment's image again, no build.
    let (st, v) = tenant.call("POST", &format!("/api/v1/apps/{}/rollback", c.name), None);
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["image"], format!("{}:{first}", c.image));
    let back = v["id"].as_str().unwrap().to_owned();
    let v = wait_complete(&tenant, &back);
    let log = output(&tenant, &back, "stream=all");
    assert_eq!(v["status"], "succeeded", "{v}\n{log}");
    assert!(
        !log.contains("Step 1/3"),
        "a rollback builds nothing: {log}"
    );
    assert_eq!(cat(&c.name, "/ctx/version.txt"), "v1");
    assert_eq!(containers_named(&c.name), vec![c.name.clone()]);

    // History: newest first, each with its image and status.
    let (st, h) = tenant.call("GET", &format!("/api/v1/apps/{}/deployments", c.name), None);
    assert_eq!(st, 200);
    let h = h.as_array().unwrap();
    let kinds: Vec<_> = h.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rollback", "deploy", "deploy"]);
    assert!(h.iter().all(|d| d["status"] == "succeeded"));

    // The CLI: a deploy watched live exits 0; the history lists it.
    let cli = |args: &[&str]| {
        Command::new("timeout")
            .arg("60")
            .arg(server_bin())
            .args(["--api", &server.url, "--ca-file"])
            .arg(&server.ca)
            .args(["--token", &tenant.token])
            .args(args)
            .output()
            .unwrap()
    };
    let o = cli(&["app", "deploy", &c.name]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "{err}\n{}",
        tenant
            .call("GET", &format!("/api/v1/apps/{}/deployments", c.name), None)
            .1
    );
    assert!(err.contains("healthy"), "step output printed live: {err}");
    let o = cli(&["app", "history", &c.name]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert_eq!(
        text.lines().filter(|l| l.contains("succeeded")).count(),
        4,
        "{text}"
    );
    assert!(text.contains("rollback"), "{text}");

    // The secret is in no log, stored or streamed, and on no disk.
    for id in [&first, &second, &back] {
        assert!(!output(&tenant, id, "stream=all").contains(secret));
    }
    let hits = grep_dir(runner.dir.path(), secret.as_bytes());
    assert!(
        hits.is_empty(),
        "secret in the runner's state dir: {hits:?}"
    );
    let hits = grep_dir(server.dir.path(), secret.as_bytes());
    assert!(hits.is_empty(), "secret in the server's data dir: {hits:?}");
}

#[test]
fn a_failed_deploy_keeps_the_running_app() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("deploy-fail");
    let runner = setup(&server, &tenant);
    let src = TempDir::new("deploy-src");
    repo(src.path(), "v1");
    let c = Cleanup::new("fail");
    put_app(
        &tenant,
        &c.name,
        json!({
            "runner": runner.id,
            "git_url": src.path(),
            "git_ref": "main",
            "image": c.image,
            "health": {"cmd": ["test", "-f", "/ctx/ok"], "timeout_s": 4},
        }),
    );
    let first = deploy(&tenant, &c.name, None);
    assert_eq!(wait_complete(&tenant, &first)["status"], "succeeded");
    let id1 = container_id(&c.name).unwrap();
    let unchanged = |what: &str| {
        assert_eq!(
            container_id(&c.name).as_deref(),
            Some(id1.as_str()),
            "{what}: same container"
        );
        assert!(running(&c.name), "{what}: still running");
        assert_eq!(
            containers_named(&c.name),
            vec![c.name.clone()],
            "{what}: nothing left over"
        );
    };

    // A bad ref: git says why.
    let bad = deploy(&tenant, &c.name, Some(json!({"ref": "no-such-branch"})));
    let v = wait_complete(&tenant, &bad);
    let log = output(&tenant, &bad, "stream=all");
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("git failed"), "{v}");
    assert!(log.contains("no-such-branch"), "{log}");
    unchanged("bad ref");

    // A Dockerfile error.
    std::fs::write(
        src.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nNOTANINSTRUCTION x\n"),
    )
    .unwrap();
    commit(src.path(), "broken");
    let broken = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &broken);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("build failed"),
        "{v}"
    );
    unchanged("Dockerfile error");

    // A build that fails halfway: a later step exits non-zero.
    std::fs::write(
        src.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nRUN echo first-step-ran\nRUN exit 3\nCMD [\"sleep\", \"3600\"]\n"),
    )
    .unwrap();
    commit(src.path(), "halfway");
    let halfway = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &halfway);
    let log = output(&tenant, &halfway, "stream=all");
    assert_eq!(v["status"], "failed", "{v}");
    assert!(log.contains("first-step-ran"), "{log}");
    assert!(
        v["reason"].as_str().unwrap().contains("non-zero code: 3"),
        "{v}"
    );
    unchanged("failing build");

    // It builds and starts, but never becomes healthy: the old one comes back.
    std::fs::write(
        src.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY . /ctx\nCMD [\"sleep\", \"3600\"]\n"),
    )
    .unwrap();
    std::fs::remove_file(src.path().join("ok")).unwrap();
    commit(src.path(), "unhealthy");
    let sick = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &sick);
    let log = output(&tenant, &sick, "stream=all");
    assert_eq!(v["status"], "failed", "{v}\n{log}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("not healthy within 4 s"), "{reason}");
    assert!(reason.contains("previous container runs again"), "{reason}");
    unchanged("failing health check");

    // A port already taken: start fails, the old one comes back.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::fs::write(src.path().join("ok"), "").unwrap();
    commit(src.path(), "healthy-again");
    put_app(
        &tenant,
        &c.name,
        json!({
            "runner": runner.id,
            "git_url": src.path(),
            "git_ref": "main",
            "image": c.image,
            "ports": [{"host": port, "container": 80}],
        }),
    );
    let taken = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &taken);
    let log = output(&tenant, &taken, "stream=all");
    assert_eq!(v["status"], "failed", "{v}\n{log}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("start the new container"),
        "{v}"
    );
    unchanged("port taken");
    drop(listener);
}

#[test]
fn cancel_and_timeout_stop_a_deploy_and_keep_the_app() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("deploy-stop");
    let runner = setup(&server, &tenant);
    let src = TempDir::new("deploy-src");
    repo(src.path(), "v1");
    let c = Cleanup::new("stop");
    let def = |timeout_s: u64, health: Value| {
        json!({
            "runner": runner.id,
            "git_url": src.path(),
            "git_ref": "main",
            "image": c.image,
            "timeout_s": timeout_s,
            "health": health,
        })
    };
    put_app(
        &tenant,
        &c.name,
        def(600, json!({"cmd": ["true"], "timeout_s": 10})),
    );
    let first = deploy(&tenant, &c.name, None);
    assert_eq!(wait_complete(&tenant, &first)["status"], "succeeded");
    let id1 = container_id(&c.name).unwrap();

    // Cancel during a long build.
    std::fs::write(
        src.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nRUN echo building-slowly && sleep 60\nCMD [\"sleep\", \"3600\"]\n"),
    )
    .unwrap();
    commit(src.path(), "slow");
    let slow = deploy(&tenant, &c.name, None);
    wait_for(Duration::from_secs(60), "the build to start", || {
        output(&tenant, &slow, "stream=all")
            .contains("building-slowly")
            .then_some(())
    });
    let (st, v) = tenant.call("POST", &format!("/api/v1/jobs/{slow}/cancel"), None);
    assert_eq!(st, 200, "{v}");
    let v = wait_complete(&tenant, &slow);
    assert_eq!(v["status"], "cancelled", "{v}");
    assert!(
        v["finished_ms"].as_i64().unwrap() - v["started_ms"].as_i64().unwrap() < 30_000,
        "stopped well before the build would end: {v}"
    );
    assert_eq!(container_id(&c.name).as_deref(), Some(id1.as_str()));
    assert!(running(&c.name));

    // Timeout during the same build.
    put_app(
        &tenant,
        &c.name,
        def(4, json!({"cmd": ["true"], "timeout_s": 10})),
    );
    let late = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &late);
    assert_eq!(v["status"], "timed_out", "{v}");
    assert_eq!(container_id(&c.name).as_deref(), Some(id1.as_str()));
    assert!(running(&c.name));

    // Cancel while the new container is waited for: the old one comes back.
    std::fs::write(
        src.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY . /ctx\nCMD [\"sleep\", \"3600\"]\n"),
    )
    .unwrap();
    commit(src.path(), "fast");
    put_app(
        &tenant,
        &c.name,
        def(600, json!({"cmd": ["false"], "timeout_s": 120})),
    );
    let waiting = deploy(&tenant, &c.name, None);
    wait_for(Duration::from_secs(60), "the health wait", || {
        output(&tenant, &waiting, "stream=all")
            .contains("waiting up to 120 s")
            .then_some(())
    });
    assert_ne!(
        container_id(&c.name).as_deref(),
        Some(id1.as_str()),
        "the new container holds the name while it is checked"
    );
    assert!(!running(&id1), "the old one is stopped meanwhile");
    tenant.call("POST", &format!("/api/v1/jobs/{waiting}/cancel"), None);
    let v = wait_complete(&tenant, &waiting);
    let log = output(&tenant, &waiting, "stream=all");
    assert_eq!(v["status"], "cancelled", "{v}\n{log}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("previous container runs again"),
        "{v}"
    );
    assert_eq!(container_id(&c.name).as_deref(), Some(id1.as_str()));
    assert!(running(&c.name));
    assert_eq!(containers_named(&c.name), vec![c.name.clone()]);
}

#[test]
fn a_host_without_git_fails_the_deploy_saying_so() {
    let server = Server::start();
    let tenant = server.tenant("deploy-nogit");
    // A runner whose PATH has a shell and mkdir, but no git.
    let mut runner = Runner::enroll(&server, &tenant);
    let bin = TempDir::new("nogit-path");
    for p in ["sh", "mkdir"] {
        let found = ["/bin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(p))
            .find(|x| x.exists())
            .unwrap();
        std::os::unix::fs::symlink(found, bin.path().join(p)).unwrap();
    }
    let log = std::fs::File::create(runner.dir.path().join("runner.log")).unwrap();
    let child = runner
        .cmd()
        .env("PATH", bin.path())
        .args(["run", "--heartbeat", "1s", "--docker-socket", "off"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    runner.child = Some(child);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let src = TempDir::new("deploy-src");
    put_app(
        &tenant,
        "nogit",
        json!({ "runner": runner.id, "git_url": src.path(), "git_ref": "main" }),
    );
    let id = deploy(&tenant, "nogit", None);
    let v = wait_complete(&tenant, &id);
    let log = output(&tenant, &id, "stream=all");
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("git: not found"),
        "{v}"
    );
    assert!(log.contains("git is not installed on this host"), "{log}");
}

#[test]
fn a_directory_on_the_host_deploys_without_git() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("deploy-path");
    let runner = setup(&server, &tenant);
    let src = TempDir::new("deploy-dir");
    std::fs::create_dir_all(src.path().join("app/docker")).unwrap();
    std::fs::write(
        src.path().join("app/docker/Dockerfile.web"),
        format!("FROM {IMAGE}\nCOPY . /ctx\nCMD [\"sleep\", \"3600\"]\n"),
    )
    .unwrap();
    std::fs::write(src.path().join("app/version.txt"), "from-a-dir\n").unwrap();
    let c = Cleanup::new("path");
    put_app(
        &tenant,
        &c.name,
        json!({
            "runner": runner.id,
            "path": src.path(),
            "context": "app",
            "dockerfile": "docker/Dockerfile.web",
            "image": c.image,
        }),
    );
    let id = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &id);
    let log = output(&tenant, &id, "stream=all");
    assert_eq!(v["status"], "succeeded", "{v}\n{log}");
    assert!(!log.contains("fetching"), "no git step: {log}");
    assert_eq!(cat(&c.name, "/ctx/version.txt"), "from-a-dir");
    // A ref makes no sense for a directory.
    let (st, _) = tenant.call(
        "POST",
        &format!("/api/v1/apps/{}/deploy", c.name),
        Some(json!({"ref": "main"})),
    );
    assert_eq!(st, 400);
}

/// The runner's state dir (where the checkout lives) on a 4 MiB
/// filesystem: a commit adding 6 MB that does not compress makes git's
/// fetch hit ENOSPC; the deploy fails with that cause in its log and its
/// reason, and the running app is untouched.
#[test]
fn a_full_disk_fails_the_deploy_and_keeps_the_running_app() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("deploy-full");
    let mut runner = Runner::enroll(&server, &tenant);
    let disk = Tmpfs::mount("deploy-state", "4m");
    for e in std::fs::read_dir(runner.dir.path()).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), disk.path().join(e.file_name())).unwrap();
        }
    }
    runner.state_dir = Some(disk.path().to_owned());
    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let src = TempDir::new("deploy-src");
    repo(src.path(), "v1");
    let c = Cleanup::new("full");
    put_app(
        &tenant,
        &c.name,
        json!({
            "runner": runner.id,
            "git_url": src.path(),
            "git_ref": "main",
            "image": c.image,
            "health": {"cmd": ["test", "-f", "/ctx/ok"], "timeout_s": 4},
        }),
    );
    let first = deploy(&tenant, &c.name, None);
    assert_eq!(wait_complete(&tenant, &first)["status"], "succeeded");
    let id1 = container_id(&c.name).unwrap();

    sh(
        src.path(),
        "head -c 6000000 /dev/urandom > big.bin && git add -A && git commit -qm big",
    );
    let big = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &big);
    let log = output(&tenant, &big, "stream=all");
    assert_eq!(v["status"], "failed", "{v}\n{log}");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("git failed") && reason.contains("No space left on device"),
        "the reason names the cause: {reason}\n{log}"
    );
    assert!(log.contains("No space left on device"), "{log}");
    assert_eq!(container_id(&c.name), Some(id1), "same container");
    assert!(running(&c.name), "still running");
    assert_eq!(containers_named(&c.name), vec![c.name.clone()]);
    assert!(
        runner.child().try_wait().unwrap().is_none(),
        "the runner goes on"
    );
}

/// SIGKILL of the runner while the new container is in its health wait
/// (the old one renamed aside and stopped): the next start removes the
/// unproven new container, puts the old one back under its name, starts
/// it, and reports the deploy failed saying so.
#[test]
fn a_runner_killed_mid_replacement_restores_the_old_container_on_restart() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("deploy-crash");
    let mut runner = setup(&server, &tenant);
    let src = TempDir::new("deploy-src");
    repo(src.path(), "v1");
    let c = Cleanup::new("crash");
    let app = |timeout: u32| {
        json!({
            "runner": runner.id,
            "git_url": src.path(),
            "git_ref": "main",
            "image": c.image,
            "health": {"cmd": ["test", "-f", "/ctx/ok"], "timeout_s": timeout},
        })
    };
    put_app(&tenant, &c.name, app(4));
    let first = deploy(&tenant, &c.name, None);
    assert_eq!(wait_complete(&tenant, &first)["status"], "succeeded");
    let id1 = container_id(&c.name).unwrap();

    // v2 never becomes healthy; a long health timeout is where the kill lands.
    std::fs::remove_file(src.path().join("ok")).unwrap();
    commit(src.path(), "sick");
    put_app(&tenant, &c.name, app(120));
    let second = deploy(&tenant, &c.name, None);
    wait_for(Duration::from_secs(90), "the health wait", || {
        std::thread::sleep(Duration::from_millis(100));
        output(&tenant, &second, "stream=all")
            .contains("waiting up to 120 s")
            .then_some(())
    });
    let names = containers_named(&c.name);
    assert_eq!(names.len(), 2, "old one parked beside the new: {names:?}");
    assert_ne!(container_id(&c.name).as_deref(), Some(id1.as_str()));
    assert!(!running(&id1), "the old one was stopped");
    signal(runner.child(), libc::SIGKILL);
    wait_exit(runner.child(), Duration::from_secs(5)).expect("runner killed");

    runner.start(&["--heartbeat", "1s"]);
    let v = wait_complete(&tenant, &second);
    assert_eq!(v["status"], "failed", "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("runner restart"), "{reason}");
    assert!(
        reason.contains("the old container was restored and runs again"),
        "{reason}"
    );
    assert_eq!(container_id(&c.name), Some(id1), "the old one is back");
    assert!(running(&c.name), "and runs");
    assert_eq!(
        containers_named(&c.name),
        vec![c.name.clone()],
        "nothing left over"
    );
    assert!(
        !runner
            .dir
            .path()
            .join("deploy")
            .join(&c.name)
            .join("parked.json")
            .exists(),
        "the recovery file is gone"
    );
}

/// An app that asks for an env file gets one inside its container, mode
/// 0600, with its env and secrets, before it starts (the health check sees
/// it); nothing is written on the runner's disk, the secret stays out of
/// every log, and the file survives a restart of the container. A path the
/// image has no directory for fails the deploy and keeps the old one.
#[test]
fn an_env_file_is_written_into_the_container_and_never_on_the_host() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("deploy-envfile");
    let runner = setup(&server, &tenant);
    let src = TempDir::new("deploy-src");
    repo(src.path(), "v1");
    let c = Cleanup::new("envfile");
    let secret = "s3cr3t-EnvFile-41d2";
    let (st, _) = tenant.call(
        "PUT",
        "/api/v1/secrets/DB_PASSWORD",
        Some(json!({ "value": secret })),
    );
    assert_eq!(st, 204);
    let app = |env_file: &str| {
        json!({
            "runner": runner.id,
            "git_url": src.path(),
            "git_ref": "main",
            "image": c.image,
            "env": {"GREETING": "hello"},
            "secrets": ["DB_PASSWORD"],
            "secrets_delivery": "env_file",
            "env_file": env_file,
            "health": {"cmd": ["test", "-f", env_file], "timeout_s": 20},
        })
    };
    put_app(&tenant, &c.name, app("/etc/app.env"));
    let first = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &first);
    let log = output(&tenant, &first, "stream=all");
    assert_eq!(v["status"], "succeeded", "{v}\n{log}");
    let file = cat(&c.name, "/etc/app.env");
    let lines: Vec<&str> = file.lines().collect();
    let pw = format!("DB_PASSWORD={secret}");
    assert!(lines.contains(&"GREETING=hello"), "{file}");
    assert!(lines.contains(&pw.as_str()), "{file}");
    let mode = docker_out(&["exec", &c.name, "stat", "-c", "%a %u", "/etc/app.env"]).unwrap();
    assert_eq!(mode, "600 0", "mode 0600, owned by root");
    assert!(log.contains("wrote 2 variable(s) to /etc/app.env"), "{log}");
    assert!(!log.contains(secret), "{log}");
    let hits = grep_dir(runner.dir.path(), secret.as_bytes());
    assert!(hits.is_empty(), "secret on the runner's disk: {hits:?}");
    docker_out(&["restart", "-t", "0", &c.name]).expect("restart");
    assert!(running(&c.name));
    assert!(
        cat(&c.name, "/etc/app.env").contains("GREETING=hello"),
        "the file survives a restart"
    );

    let id1 = container_id(&c.name).unwrap();
    put_app(&tenant, &c.name, app("/no/such/dir/app.env"));
    let bad = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &bad);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("write the env file"),
        "{v}"
    );
    assert_eq!(container_id(&c.name), Some(id1));
    assert!(running(&c.name));
    assert_eq!(containers_named(&c.name), vec![c.name.clone()]);

    let (st, v) = tenant.call(
        "PUT",
        &format!("/api/v1/apps/{}", c.name),
        Some(json!({"runner": runner.id, "path": "/srv", "env_file": "relative.env"})),
    );
    assert_eq!(st, 400, "{v}");
}

// ---- secrets: write-only in every inspect answer, in memory on the host ----------------

const PASSWORD: &str = "deploy-secrets-pw-1";

/// A tenant user with `role`, added through the CLI as an operator would.
fn add_user(server: &Server, tenant: &str, name: &str, role: &str) {
    use std::io::Write;
    let mut child = Command::new(server_bin())
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
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A GET with the dashboard's session cookie of `name`: the route a
/// browser takes.
fn get_as_user(server: &Server, tenant: &str, name: &str, path: &str) -> (u16, String) {
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
        .timeout_global(Some(Duration::from_secs(40)))
        .build()
        .new_agent();
    let resp = agent
        .post(format!("{}/api/v1/session", server.url))
        .send(json!({"tenant": tenant, "name": name, "password": PASSWORD}).to_string())
        .unwrap();
    assert_eq!(resp.status(), 200, "login {name}");
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let mut resp = agent
        .get(format!("{}{path}", server.url))
        .header("Cookie", &cookie)
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// A secret delivered as env (the explicit choice) is in the engine's
/// config, as Docker keeps it; but no container inspect answer carries
/// it, whoever asks and by whatever route: viewer, operator and admin
/// with the dashboard's cookie, the tenant's API token, the CLI. The
/// container is labelled with the secret's name (never its value), the
/// runner masks by that label before the answer leaves the host, and the
/// server masks again by the tenant's secret names, which also covers a
/// container a script started with `docker run -e` under a secret's
/// name. The container list, the event history and the deploy's output
/// carry no value either.
#[test]
fn secrets_in_env_are_masked_in_every_inspect_answer_for_every_role() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant_name = "deploy-mask";
    let tenant = server.tenant(tenant_name);
    let runner = setup(&server, &tenant);
    for (user, role) in [("vic", "viewer"), ("olga", "operator"), ("ada", "admin")] {
        add_user(&server, tenant_name, user, role);
    }
    let c = Cleanup::new("mask");
    let src = TempDir::new("deploy-src");
    // Content of its own: its image is its own, not shared through the cache.
    repo(src.path(), &c.name);
    let secret = "s3cr3t-Mask-77c1";
    let (st, _) = tenant.call(
        "PUT",
        "/api/v1/secrets/DB_PW",
        Some(json!({ "value": secret })),
    );
    assert_eq!(st, 204);
    put_app(
        &tenant,
        &c.name,
        json!({
            "runner": runner.id,
            "path": src.path(),
            "image": c.image,
            "env": {"GREETING": "hello"},
            "secrets": ["DB_PW"],
            "secrets_delivery": "env",
        }),
    );
    let id = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &id);
    let log = output(&tenant, &id, "stream=all");
    assert_eq!(v["status"], "succeeded", "{v}\n{log}");
    assert!(!log.contains(secret), "{log}");
    let env = docker_out(&["inspect", "-f", "{{json .Config.Env}}", &c.name]).unwrap();
    assert!(
        env.contains(&format!("DB_PW={secret}")),
        "env delivery: in the container's config, as Docker keeps it: {env}"
    );
    let label = docker_out(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"tether.secrets\"}}",
        &c.name,
    ])
    .unwrap();
    assert_eq!(label, "DB_PW", "names only in the label");

    // A container a script started with the secret under its own name.
    let stray = format!("{}-stray", c.name);
    docker_out(&[
        "run",
        "-d",
        "--name",
        &stray,
        "-e",
        &format!("DB_PW={secret}"),
        IMAGE,
        "sleep",
        "3600",
    ])
    .expect("docker run");

    let masked = |what: &str, body: &str| {
        assert!(!body.contains(secret), "{what}: the value leaked: {body}");
        let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: {body}"));
        let env: Vec<&str> = v["Config"]["Env"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no Config.Env in {body}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(env.contains(&"DB_PW=***"), "{what}: {env:?}");
    };
    for container in [&c.name, &stray] {
        let path = format!("/api/v1/runners/{}/containers/{container}", runner.id);
        for user in ["vic", "olga", "ada"] {
            let (st, body) = get_as_user(&server, tenant_name, user, &path);
            assert_eq!(st, 200, "{user}: {body}");
            masked(&format!("{user} on {container}"), &body);
        }
        let (st, v) = tenant.call("GET", &path, None);
        assert_eq!(st, 200, "{v}");
        masked(&format!("API token on {container}"), &v.to_string());
        let o = Command::new(server_bin())
            .args(["--api", &server.url, "--ca-file"])
            .arg(&server.ca)
            .args([
                "--token",
                &tenant.token,
                "container",
                "inspect",
                &runner.id,
                container,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        masked(
            &format!("CLI on {container}"),
            &String::from_utf8_lossy(&o.stdout),
        );
    }
    let app_env = {
        let path = format!("/api/v1/runners/{}/containers/{}", runner.id, c.name);
        let (_, v) = tenant.call("GET", &path, None);
        v["Config"]["Env"].clone()
    };
    assert!(
        app_env.to_string().contains("GREETING=hello"),
        "plain env stays readable: {app_env}"
    );
    for path in [
        format!("/api/v1/runners/{}/containers?all=true", runner.id),
        format!("/api/v1/runners/{}/containers?cached=true", runner.id),
        format!("/api/v1/runners/{}/containers/events", runner.id),
        format!("/api/v1/jobs/{id}"),
    ] {
        let (st, v) = tenant.call("GET", &path, None);
        assert_eq!(st, 200, "{path}: {v}");
        assert!(!v.to_string().contains(secret), "{path}: {v}");
    }
    let _ = docker_out(&["rm", "-f", &stray]);
}

/// Mount points under `dir` (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Every file under `dir` holding `needle`, staying on `dir`'s own
/// filesystems (`grep -r` on the disk; the secrets tmpfs is RAM, and is
/// checked apart).
fn grep_disk(dir: &Path, needle: &str, skip: &[String]) -> Vec<String> {
    let mut cmd = Command::new("grep");
    cmd.args(["-rlF", "--no-messages", "--", needle]).arg(dir);
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !skip.iter().any(|s| l.starts_with(s.as_str())))
        .map(str::to_owned)
        .collect()
}

/// A new app gets files delivery: each secret is `/run/secrets/NAME` in the
/// container (0400, owned by `secrets_uid`), read from a host tmpfs bound read-only; the
/// value is in no `Env`, on no disk of the engine (its whole data root) nor
/// in the runner's state dir, and it survives `docker restart`. Then a
/// reboot, as the host sees it: the memory is gone (the tmpfs unmounted)
/// and Docker cannot start the container (it never runs without its
/// secrets); the runner, started again, finds it and asks the server,
/// which deploys the same image again with the secrets: the app runs and
/// reads them.
#[test]
fn secrets_as_files_stay_in_memory_survive_a_restart_and_come_back_after_a_reboot() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("deploy-files");
    let mut runner = setup(&server, &tenant);
    let c = Cleanup::new("files");
    let src = TempDir::new("deploy-src");
    // Content of its own: its image is its own, not shared through the cache.
    repo(src.path(), &c.name);
    let secret = "s3cr3t-Files-5be0";
    let (st, _) = tenant.call(
        "PUT",
        "/api/v1/secrets/DB_PW",
        Some(json!({ "value": secret })),
    );
    assert_eq!(st, 204);
    put_app(
        &tenant,
        &c.name,
        json!({
            "runner": runner.id,
            "path": src.path(),
            "image": c.image,
            "env": {"GREETING": "hello"},
            "secrets": ["DB_PW"],
            "restart": "always",
            "secrets_uid": 1000,
            "health": {"cmd": ["test", "-s", "/run/secrets/DB_PW"], "timeout_s": 20},
        }),
    );
    let (_, app) = tenant.call("GET", &format!("/api/v1/apps/{}", c.name), None);
    assert_eq!(
        app["secrets_delivery"], "files",
        "the default for a new app"
    );

    let first = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &first);
    let log = output(&tenant, &first, "stream=all");
    assert_eq!(v["status"], "succeeded", "{v}\n{log}");
    assert!(
        log.contains("1 secret(s) as files in /run/secrets (in memory"),
        "{log}"
    );
    assert!(!log.contains(secret), "{log}");
    assert_eq!(cat(&c.name, "/run/secrets/DB_PW"), secret);
    let mode = docker_out(&["exec", &c.name, "stat", "-c", "%a %u", "/run/secrets/DB_PW"]).unwrap();
    assert_eq!(mode, "400 1000", "mode 0400, the app user's (secrets_uid)");
    let as_user =
        |uid: &str| docker_out(&["exec", "-u", uid, &c.name, "cat", "/run/secrets/DB_PW"]);
    assert_eq!(
        as_user("1000").as_deref(),
        Some(secret),
        "the app's user reads it"
    );
    assert_eq!(as_user("1001"), None, "another user does not");
    assert!(
        docker_out(&["exec", &c.name, "sh", "-c", "echo x > /run/secrets/DB_PW"]).is_none(),
        "read-only in the container"
    );
    let env = docker_out(&["inspect", "-f", "{{json .Config.Env}}", &c.name]).unwrap();
    assert!(
        env.contains("GREETING=hello") && !env.contains(secret),
        "{env}"
    );

    // Where it lives on the host: a tmpfs.
    let source = docker_out(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{if eq .Destination \"/run/secrets\"}}{{.Source}}{{end}}{{end}}",
        &c.name,
    ])
    .unwrap();
    assert!(!source.is_empty(), "a bind at /run/secrets");
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&source)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fs.stdout).trim(),
        "tmpfs",
        "{source}"
    );

    // No disk holds it: the engine's whole data root, the runner's state
    // dir (its secrets tmpfs aside), the server's data dir.
    let root = docker_out(&["info", "-f", "{{.DockerRootDir}}"]).unwrap();
    let in_memory = mounts_under(runner.dir.path());
    assert!(
        !in_memory.is_empty(),
        "the runner mounted its secrets tmpfs"
    );
    let hits = grep_disk(Path::new(&root), secret, &[]);
    assert!(
        hits.is_empty(),
        "secret in the engine's data root: {hits:?}"
    );
    let hits = grep_disk(runner.dir.path(), secret, &in_memory);
    assert!(
        hits.is_empty(),
        "secret in the runner's state dir: {hits:?}"
    );
    let hits = grep_dir(server.dir.path(), secret.as_bytes());
    assert!(hits.is_empty(), "secret in the server's data dir: {hits:?}");

    // docker restart: the bind is made again from the same memory.
    docker_out(&["restart", "-t", "0", &c.name]).expect("restart");
    assert!(running(&c.name));
    assert_eq!(
        cat(&c.name, "/run/secrets/DB_PW"),
        secret,
        "after docker restart"
    );

    // A redeploy replaces the directory; the old deployment's goes.
    let second = deploy(&tenant, &c.name, None);
    let v = wait_complete(&tenant, &second);
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(cat(&c.name, "/run/secrets/DB_PW"), secret);
    let app_dir = Path::new(&source).parent().unwrap().to_owned();
    let dirs: Vec<String> = std::fs::read_dir(&app_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, vec![second.clone()], "only the running deployment's");

    // The reboot: runner down, memory gone, Docker tries to start the
    // container (restart: always) and cannot.
    signal(runner.child(), libc::SIGTERM);
    wait_exit(runner.child(), Duration::from_secs(10)).expect("runner stopped");
    docker_out(&["stop", "-t", "0", &c.name]).expect("stop");
    for m in mounts_under(runner.dir.path()) {
        let out = Command::new("umount").arg("-l").arg(&m).output().unwrap();
        assert!(out.status.success(), "umount {m}");
    }
    let start = Command::new("docker")
        .args(["start", &c.name])
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&start.stderr);
    assert!(
        !start.status.success() && why.contains("does not exist"),
        "Docker refuses to start it without its secrets: {why}"
    );
    assert!(!running(&c.name));

    runner.start(&["--heartbeat", "1s"]);
    let redeliver = wait_for(Duration::from_secs(30), "a redeliver deployment", || {
        std::thread::sleep(Duration::from_millis(200));
        let (_, h) = tenant.call("GET", &format!("/api/v1/apps/{}/deployments", c.name), None);
        h.as_array()
            .and_then(|h| h.first().cloned())
            .filter(|d| d["kind"] == "redeliver")
    });
    assert_eq!(
        redeliver["image"],
        format!("{}:{second}", c.image),
        "no rebuild"
    );
    let v = wait_complete(&tenant, redeliver["id"].as_str().unwrap());
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(running(&c.name));
    assert_eq!(
        cat(&c.name, "/run/secrets/DB_PW"),
        secret,
        "delivered again"
    );
    assert!(
        runner.log().contains("in-memory secrets of"),
        "the runner said so"
    );
    // A second loss right after: the server pauses between two
    // redeliveries of one app (a runner restarting in a loop, or lying,
    // cannot redeploy it over and over).
    signal(runner.child(), libc::SIGTERM);
    wait_exit(runner.child(), Duration::from_secs(10)).expect("runner stopped");
    docker_out(&["stop", "-t", "0", &c.name]).expect("stop");
    for m in mounts_under(runner.dir.path()) {
        let _ = Command::new("umount").arg("-l").arg(&m).output();
    }
    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    wait_for(Duration::from_secs(15), "the server to refuse", || {
        std::thread::sleep(Duration::from_millis(200));
        server
            .log()
            .contains("redelivered a moment ago")
            .then_some(())
    });
    let (_, h) = tenant.call("GET", &format!("/api/v1/apps/{}/deployments", c.name), None);
    assert_eq!(
        h.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "redeliver")
            .count(),
        1,
        "{h}"
    );
}

/// The choice is the app's: `env_file` needs a path, an unknown mode is
/// refused with a clear error and changes nothing, an existing app keeps
/// its mode when a PUT leaves it out.
#[test]
fn secrets_delivery_is_validated_and_kept() {
    let server = Server::start();
    let tenant = server.tenant("deploy-delivery");
    let runner = Runner::enroll(&server, &tenant);
    let app = |extra: Value| {
        let mut d = json!({"runner": runner.id, "path": "/srv"});
        for (k, v) in extra.as_object().unwrap() {
            d[k] = v.clone();
        }
        tenant.call("PUT", "/api/v1/apps/web", Some(d))
    };
    let (st, v) = app(json!({"secrets_delivery": "disk"}));
    assert_eq!(st, 400, "{v}");
    let (st, v) = app(json!({"secrets_delivery": "env_file"}));
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains("needs env_file"), "{v}");
    let (st, _) = tenant.call("GET", "/api/v1/apps/web", None);
    assert_eq!(st, 404, "nothing stored");
    let (st, v) = app(json!({"secrets_delivery": "env"}));
    assert_eq!((st, &v["secrets_delivery"]), (200, &json!("env")), "{v}");
    let (st, v) = app(json!({"restart": "always"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["secrets_delivery"], "env", "kept when left out");
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/apps/other",
        Some(json!({"runner": runner.id, "path": "/srv"})),
    );
    assert_eq!((st, &v["secrets_delivery"]), (200, &json!("files")), "{v}");
}

/// `GET /apps/{name}/signable`: what a signed deploy or rollback will be
/// (the page signs it, `server/web/src/signing.js`): the `job_start` with
/// the image tagged with the action id, only in the caller's tenant; bad
/// input is a clear 400 (404 for another tenant's app) and changes nothing.
#[test]
fn signable_answers_what_a_signed_deploy_will_be_and_refuses_bad_input() {
    let server = Server::start();
    let tenant = server.tenant("deploy-signable");
    let other = server.tenant("deploy-signable-other");
    let runner = Runner::enroll(&server, &tenant);
    let def = json!({"runner": runner.id, "path": "/srv/web", "env": {"MODE": "prod"},
        "labels": {"tier": "front"}, "ports": [{"host": 8080, "container": 80}]});
    let (st, v) = tenant.call("PUT", "/api/v1/apps/web", Some(def));
    assert_eq!(st, 200, "{v}");
    let path = "/api/v1/apps/web/signable";
    let (st, v) = tenant.call(
        "GET",
        &format!("{path}?action_id=sa_0123456789abcdef"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["kind"], "deploy", "{v}");
    assert_eq!(v["runner"], runner.id.as_str(), "{v}");
    assert!(v["to"].is_null(), "{v}");
    let start = &v["job_start"];
    assert_eq!(start["program"], "deploy", "{v}");
    assert_eq!(start["env"], json!([["MODE", "prod"]]), "{v}");
    assert!(start.get("signed").is_none(), "{v}");
    let d = &start["deploy"];
    assert_eq!(
        d["image"], "web:sa_0123456789abcdef",
        "tagged with the action id: {v}"
    );
    assert_eq!(
        (&d["build"], &d["path"]),
        (&json!(true), &json!("/srv/web")),
        "{v}"
    );
    assert_eq!(d["labels"], json!([["tier", "front"]]), "{v}");
    assert_eq!(d["ports"][0]["proto"], "tcp", "{v}");

    for (query, status, says) in [
        ("", 400, "action_id"),
        ("?action_id=", 400, "action_id"),
        ("?action_id=..%2Fx", 400, "action_id"),
        (&format!("?action_id={}", "a".repeat(65)), 400, "action_id"),
        ("?action_id=sa_1&kind=bogus", 400, "kind"),
        ("?action_id=sa_1&ref=main", 400, "path, not git"),
        ("?action_id=sa_1&kind=rollback&ref=main", 400, "kind"),
        ("?action_id=sa_1&kind=deploy&to=jb_1", 400, "kind"),
        ("?action_id=sa_1&extra=1", 400, "extra"),
        (
            "?action_id=sa_1&kind=rollback",
            409,
            "no successful deployment",
        ),
        ("?action_id=sa_1&kind=rollback&to=jb_none", 404, "jb_none"),
    ] {
        let (st, v) = tenant.call("GET", &format!("{path}{query}"), None);
        assert_eq!(st, status, "{query}: {v}");
        assert!(v.to_string().contains(says), "{query}: {v}");
    }
    let (st, v) = tenant.call("GET", "/api/v1/apps/nope/signable?action_id=sa_1", None);
    assert_eq!(st, 404, "{v}");
    // Another tenant's app does not exist for this one.
    let (st, v) = other.call("GET", &format!("{path}?action_id=sa_1"), None);
    assert_eq!(st, 404, "{v}");
    // Asking made nothing.
    let (st, h) = tenant.call("GET", "/api/v1/apps/web/deployments", None);
    assert_eq!((st, h), (200, json!([])));
}
