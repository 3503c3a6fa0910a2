//! Jobs through the real server and runner: commands and saved scripts with
//! their output and exit codes, loss-free output across connection cuts
//! (byte-identical), sealed secrets that never reach a disk in the clear,
//! cancel, timeout, the concurrency limit, a runner restart mid-job, and
//! the host owner's `--no-jobs`.

use crate::util::proxy::{Mode, TcpProxy};
use crate::util::*;
use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;

fn run(tenant: &Tenant, body: Value) -> Vec<String> {
    let (st, v) = tenant.call("POST", "/api/v1/jobs", Some(body));
    assert_eq!(st, 201, "run: {v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect()
}

fn job(tenant: &Tenant, id: &str) -> Value {
    let (st, v) = tenant.call("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

/// Wait until the job is over and all its output stored.
fn wait_complete(tenant: &Tenant, id: &str, limit: Duration) -> Value {
    wait_for(limit, &format!("job {id} to complete"), || {
        let v = job(tenant, id);
        (v["complete"] == true).then_some(v)
    })
}

fn output(tenant: &Tenant, id: &str, stream: &str) -> Vec<u8> {
    let mut r = tenant.api.stream(
        &format!("/api/v1/jobs/{id}/output?stream={stream}"),
        &tenant.token,
    );
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

fn runner_with(server: &Server, tenant: &Tenant, args: &[&str]) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    let mut all = vec!["--heartbeat", "1s", "--docker-socket", "off"];
    all.extend_from_slice(args);
    runner.start(&all);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    runner
}

#[test]
fn commands_and_saved_scripts_run_with_output_and_exit_codes() {
    let server = Server::start();
    let tenant = server.tenant("jobs");
    let runner = runner_with(&server, &tenant, &["--max-jobs", "1"]);
    let id = &runner.id;

    let ids = run(
        &tenant,
        json!({ "runners": [id], "command": "echo out; echo err >&2; exit 3" }),
    );
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(20));
    assert_eq!(
        (v["status"].as_str(), v["exit_code"].as_i64()),
        (Some("failed"), Some(3)),
        "{v}"
    );
    assert_eq!(output(&tenant, &ids[0], "stdout"), b"out\n");
    assert_eq!(output(&tenant, &ids[0], "stderr"), b"err\n");
    let all = String::from_utf8(output(&tenant, &ids[0], "all")).unwrap();
    assert!(all.contains("[tether] failed: exit code 3"), "{all}");

    // A saved script with an interpreter, arguments and env; three at once
    // on a runner that runs one at a time: they queue and all finish.
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/scripts/greet",
        Some(json!({ "body": "sleep 0.3; echo \"hello $1 from $WHO\"", "args": ["world"] })),
    );
    assert_eq!(st, 200, "{v}");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.extend(run(
            &tenant,
            json!({ "runners": [id], "script": "greet", "env": { "WHO": "tests" } }),
        ));
    }
    let statuses: Vec<String> = ids
        .iter()
        .map(|j| job(&tenant, j)["status"].as_str().unwrap().to_owned())
        .collect();
    for j in &ids {
        let v = wait_complete(&tenant, j, Duration::from_secs(20));
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(output(&tenant, j, "stdout"), b"hello world from tests\n");
    }
    let (_, list) = tenant.call("GET", &format!("/api/v1/jobs?runner={id}"), None);
    assert_eq!(list.as_array().unwrap().len(), 4);
    // At least one of them had to wait for another.
    let max_running = ids
        .iter()
        .map(|j| job(&tenant, j))
        .filter(|v| v["started_ms"].is_i64())
        .count();
    assert_eq!(max_running, 3, "{statuses:?}");

    // The CLI runs one and exits with its code.
    let out = std::process::Command::new(server_bin())
        .args(["--api", &server.url, "--ca-file"])
        .arg(&server.ca)
        .args([
            "--token",
            &tenant.token,
            "run",
            id,
            "-c",
            "echo via-cli; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-cli\n");

    // Bad input: a clear error, no job.
    let (st, _) = tenant.call("POST", "/api/v1/jobs", Some(json!({ "runners": [id] })));
    assert_eq!(st, 400);
    let (st, _) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": ["rn_nope"], "command": "true" })),
    );
    assert_eq!(st, 404);
    let (st, _) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [id], "script": "missing" })),
    );
    assert_eq!(st, 404);
}

#[test]
fn output_is_byte_identical_after_the_connection_is_cut_again_and_again() {
    let server = Server::start();
    let tenant = server.tenant("jobs-cut");
    let proxy = TcpProxy::to(&server.addr());
    let url = proxy.url("https");
    let runner = runner_with(&server, &tenant, &["--server", &url]);
    let script = "i=0; while [ $i -lt 200000 ]; do echo \"line $i\"; i=$((i+1)); case $i in *000) sleep 0.05;; esac; done";
    let ids = run(
        &tenant,
        json!({ "runners": [runner.id], "command": script }),
    );
    // Four cuts while the job prints, each after the runner reconnected.
    for n in 0..4 {
        let seen = proxy.accepted();
        std::thread::sleep(Duration::from_millis(700));
        assert_ne!(
            job(&tenant, &ids[0])["complete"],
            true,
            "the job outran cut {n}"
        );
        proxy.cut();
        wait_for(Duration::from_secs(20), "the runner to reconnect", || {
            (proxy.accepted() > seen).then_some(())
        });
    }
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(120));
    assert_eq!(v["status"], "succeeded", "{v}");
    let got = output(&tenant, &ids[0], "stdout");
    let mut want = String::new();
    for i in 0..200_000 {
        want.push_str(&format!("line {i}\n"));
    }
    assert_eq!(got.len(), want.len(), "stored bytes");
    assert!(
        got == want.as_bytes(),
        "stored output differs from what the script printed"
    );
    assert!(
        proxy.accepted() >= 5,
        "the connection was really cut ({} connections)",
        proxy.accepted()
    );
}

#[test]
fn secrets_are_sealed_masked_and_never_on_disk_in_the_clear() {
    let server = Server::start();
    let tenant = server.tenant("jobs-secrets");
    let runner = runner_with(&server, &tenant, &[]);
    let secret = "s3cr3t-Value-6f1c9e";
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/secrets/API_TOKEN",
        Some(json!({ "value": secret })),
    );
    assert_eq!(st, 204, "{v}");
    let (_, list) = tenant.call("GET", "/api/v1/secrets", None);
    assert!(!list.to_string().contains(secret), "values are write-only");
    assert_eq!(list[0]["name"], "API_TOKEN");

    let ids = run(
        &tenant,
        json!({
            "runners": [runner.id],
            "command": "echo \"token=$API_TOKEN\"; printf '%s' \"$API_TOKEN\" | cut -c1-6; echo \"$API_TOKEN\" >&2",
            "secrets": ["API_TOKEN"],
        }),
    );
    // Watch it live too: the streamed output is masked as well.
    let mut live = tenant.api.stream(
        &format!("/api/v1/jobs/{}/output?follow=1&format=ndjson", ids[0]),
        &tenant.token,
    );
    let mut streamed = String::new();
    live.read_to_string(&mut streamed).unwrap();
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(20));
    assert_eq!(v["status"], "succeeded", "{v}");
    let out = String::from_utf8(output(&tenant, &ids[0], "all")).unwrap();
    assert!(out.contains("token=***\n"), "{out}");
    assert!(
        out.contains("s3cr3t\n"),
        "only the whole value is masked: {out}"
    );
    assert!(
        !out.contains(secret) && !streamed.contains(secret),
        "{out}\n{streamed}"
    );
    assert!(streamed.contains("token=***"), "{streamed}");

    // Byte by byte: not in the runner's state dir, not in any server file.
    let hits = grep_dir(runner.dir.path(), secret.as_bytes());
    assert!(
        hits.is_empty(),
        "secret found in the runner's state dir: {hits:?}"
    );
    let hits = grep_dir(server.dir.path(), secret.as_bytes());
    assert!(
        hits.is_empty(),
        "secret found in the server's data dir: {hits:?}"
    );

    // A deleted secret: the job fails with the reason, nothing runs.
    let (st, _) = tenant.call("DELETE", "/api/v1/secrets/API_TOKEN", None);
    assert_eq!(st, 204);
    let (st, _) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [runner.id], "command": "true", "secrets": ["API_TOKEN"] })),
    );
    assert_eq!(st, 404);
}

/// Files under `dir` (recursively) containing `needle`.
fn grep_dir(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
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
fn cancel_timeout_restart_and_the_owners_veto() {
    let server = Server::start();
    let tenant = server.tenant("jobs-stop");
    let mut runner = runner_with(&server, &tenant, &[]);
    let id = runner.id.clone();

    let ids = run(
        &tenant,
        json!({ "runners": [id], "command": "echo started; sleep 60" }),
    );
    wait_for(Duration::from_secs(10), "the job to start", || {
        (job(&tenant, &ids[0])["status"] == "running").then_some(())
    });
    let (st, v) = tenant.call("POST", &format!("/api/v1/jobs/{}/cancel", ids[0]), None);
    assert_eq!(st, 200, "{v}");
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(15));
    assert_eq!(v["status"], "cancelled", "{v}");
    let (st, _) = tenant.call("POST", &format!("/api/v1/jobs/{}/cancel", ids[0]), None);
    assert_eq!(st, 409, "a final job cannot be cancelled");

    let ids = run(
        &tenant,
        json!({ "runners": [id], "command": "sleep 60", "timeout_s": 1 }),
    );
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(15));
    assert_eq!(v["status"], "timed_out", "{v}");

    // A runner killed mid-job: on restart the job is reported failed.
    let ids = run(
        &tenant,
        json!({ "runners": [id], "command": "echo begun; sleep 60" }),
    );
    wait_for(Duration::from_secs(10), "output stored", || {
        (output(&tenant, &ids[0], "stdout") == b"begun\n").then_some(())
    });
    signal(runner.child(), libc::SIGKILL);
    wait_exit(runner.child(), Duration::from_secs(5)).expect("runner killed");
    runner.start(&["--heartbeat", "1s", "--docker-socket", "off"]);
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(20));
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("runner restart"),
        "{v}"
    );
    drop(runner);

    // The host owner switched jobs off: refused, with the reason.
    let vetoed = runner_with(&server, &tenant, &["--no-jobs"]);
    let ids = run(
        &tenant,
        json!({ "runners": [vetoed.id], "command": "true" }),
    );
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(15));
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("switched off"),
        "{v}"
    );
}

/// The runner's state dir on a 2 MiB filesystem. With the link cut, a job
/// printing ~5.4 MB fills memory (1 MiB), then the disk: the output is not
/// lost and the job not failed — the child waits on its pipe, its log says
/// why — and once the link is back everything arrives, byte-identical. A
/// job the ledger cannot record (disk full) is refused with the cause.
#[test]
fn a_full_disk_pauses_output_loses_nothing_and_refuses_unrecordable_jobs() {
    let server = Server::start();
    let tenant = server.tenant("jobs-full");
    let proxy = TcpProxy::to(&server.addr());
    let url = proxy.url("https");
    let mut runner = Runner::enroll(&server, &tenant);
    let disk = Tmpfs::mount("runner-state", "2m");
    for e in std::fs::read_dir(runner.dir.path()).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), disk.path().join(e.file_name())).unwrap();
        }
    }
    runner.state_dir = Some(disk.path().to_owned());
    runner.start(&[
        "--heartbeat",
        "1s",
        "--docker-socket",
        "off",
        "--server",
        &url,
    ]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    let idle_rss = rss_kib(runner.pid());

    let ids = run(
        &tenant,
        json!({ "runners": [runner.id], "command": "sleep 1; exec seq 0 799999" }),
    );
    wait_for(Duration::from_secs(10), "the job to start", || {
        (job(&tenant, &ids[0])["status"] == "running").then_some(())
    });
    proxy.set_mode(Mode::Refuse);
    proxy.cut();
    wait_for(
        Duration::from_secs(30),
        "the spool to fill the disk",
        || (disk.free() < 64 * 1024).then_some(()),
    );
    // Stalled, not failed: `seq` is still there, blocked on its pipe.
    std::thread::sleep(Duration::from_secs(1));
    let seq_alive = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == b"seq\x000\x00799999\x00")
    });
    assert!(seq_alive, "the job must wait for the disk, not end");
    let rss = rss_kib(runner.pid());
    assert!(
        rss < idle_rss + 8 * 1024,
        "the runner held the flood in memory: {idle_rss} KiB idle, {rss} KiB now"
    );

    proxy.set_mode(Mode::Forward);
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(90));
    assert_eq!(v["status"], "succeeded", "{v}");
    let got = output(&tenant, &ids[0], "stdout");
    let want: String = (0..800_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(got.len(), want.len(), "stored bytes");
    assert!(got == want.as_bytes(), "stored output differs from seq's");
    let all = String::from_utf8_lossy(&output(&tenant, &ids[0], "all")).to_lowercase();
    assert!(
        all.contains("no space left on device") && all.contains("output paused"),
        "the log says why the output paused"
    );

    // Nothing left for the spool now; fill the disk to the last byte: the
    // ledger cannot record a new job, so it is refused, saying why.
    disk.fill("filler");
    let ids = run(
        &tenant,
        json!({ "runners": [runner.id], "command": "echo refused" }),
    );
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(20));
    assert_eq!(v["status"], "failed", "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("job ledger") && reason.contains("No space left on device"),
        "{v}"
    );
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let ids = run(
        &tenant,
        json!({ "runners": [runner.id], "command": "echo fine" }),
    );
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(20));
    assert_eq!(v["status"], "succeeded", "the runner goes on: {v}");
    drop(runner);
}

/// The server's data dir on a small filesystem that fills up while a job
/// prints ~14 MB: output the server cannot store is never acknowledged
/// (the runner keeps it and sends it again), the API answers JSON errors
/// meanwhile, nothing panics, and once there is room again the stored log
/// is byte-identical.
#[test]
fn a_full_server_disk_acknowledges_nothing_unstored_and_loses_nothing() {
    let disk = Tmpfs::mount("server-data", "48m");
    let server = Server::start_on(disk.path(), &[]);
    let tenant = server.tenant("jobs-server-full");
    let runner = runner_with(&server, &tenant, &[]);
    let gate = TempDir::new("gate");
    let marker = gate.path().join("go");
    let cmd = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exec seq 0 1999999",
        marker.display()
    );
    let ids = run(&tenant, json!({ "runners": [runner.id], "command": cmd }));
    wait_for(Duration::from_secs(10), "the job to start", || {
        (job(&tenant, &ids[0])["status"] == "running").then_some(())
    });
    disk.fill("filler");
    std::fs::write(&marker, "").unwrap();
    wait_for(Duration::from_secs(60), "a failed store", || {
        server.log().contains("storing job output").then_some(())
    });
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [runner.id], "command": "true" })),
    );
    assert!(
        st >= 500 && v["error"]["message"].is_string(),
        "a JSON error while the disk is full: {st} {v}"
    );
    assert_ne!(job(&tenant, &ids[0])["complete"], true);

    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(180));
    assert_eq!(v["status"], "succeeded", "{v}");
    let got = output(&tenant, &ids[0], "stdout");
    let want: String = (0..2_000_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(got.len(), want.len(), "stored bytes");
    assert!(got == want.as_bytes(), "stored output differs from seq's");
    assert!(!server.log().contains("panicked"), "no panic");
}

/// Issue 15, item 5: a job whose `job_start` could not fit in one message
/// to the runner is refused at the API with 413 (and nothing is stored);
/// one that grew too large after it was accepted (its secrets were
/// replaced) fails once, is never sent, and the runner's connection does
/// not flap.
#[test]
fn jobs_that_cannot_fit_are_refused_at_the_api_and_never_resent() {
    let server = Server::start();
    let tenant = server.tenant("jobs-too-large");
    let runner = runner_with(&server, &tenant, &[]);
    let limit = tether::protocol::MAX_CONTROL_MESSAGE.to_string();
    let too_large = |st: u16, v: &Value| {
        assert_eq!(st, 413, "{v}");
        assert_eq!(v["error"]["code"], "too_large", "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(&limit), "names the limit: {msg}");
    };

    // One 300 KB env var (accepted with 201 before).
    let big = "x".repeat(300 * 1024);
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [runner.id], "command": "true", "env": { "BIG": big } })),
    );
    too_large(st, &v);
    let (_, list) = tenant.call("GET", "/api/v1/jobs", None);
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(0),
        "nothing stored: {list}"
    );
    // Saved scripts, apps and Docker calls with user-sized content too.
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/scripts/huge",
        Some(json!({ "body": "true", "args": [big] })),
    );
    too_large(st, &v);
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/apps/huge",
        Some(json!({ "runner": runner.id, "path": "/srv/huge", "env": { "BIG": big } })),
    );
    too_large(st, &v);
    let (st, v) = tenant.call(
        "POST",
        &format!("/api/v1/runners/{}/containers/prune", runner.id),
        Some(json!({ "filters": { "label": [big] } })),
    );
    too_large(st, &v);
    // 200 KiB in all still runs (Linux takes at most 128 KiB per variable).
    let half = "y".repeat(100 * 1024);
    let ids = run(
        &tenant,
        json!({ "runners": [runner.id], "command": "printf %s \"$FIT1$FIT2\" | wc -c", "env": { "FIT1": half, "FIT2": half } }),
    );
    let v = wait_complete(&tenant, &ids[0], Duration::from_secs(20));
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(output(&tenant, &ids[0], "stdout"), b"204800\n");

    // Accepted while small, too large when it is sent: the secrets it names
    // were replaced by larger values while its runner was away.
    let mut away = Runner::enroll(&server, &tenant);
    let names: Vec<String> = (0..5).map(|i| format!("GROWN_{i}")).collect();
    for n in &names {
        let (st, v) = tenant.call(
            "PUT",
            &format!("/api/v1/secrets/{n}"),
            Some(json!({ "value": "small" })),
        );
        assert_eq!(st, 204, "{v}");
    }
    let grown = run(
        &tenant,
        json!({ "runners": [away.id], "command": "true", "secrets": names }),
    );
    for n in &names {
        let (st, v) = tenant.call(
            "PUT",
            &format!("/api/v1/secrets/{n}"),
            Some(json!({ "value": "s".repeat(60 * 1024) })),
        );
        assert_eq!(st, 204, "{v}");
    }
    away.start(&["--heartbeat", "1s", "--docker-socket", "off"]);
    tenant.wait_health(&away.id, "active", Duration::from_secs(15));
    let v = wait_complete(&tenant, &grown[0], Duration::from_secs(20));
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["reason"].as_str().unwrap_or("").contains(&limit),
        "the reason names the limit: {v}"
    );
    // Stays connected: the job is not sent again and again.
    std::thread::sleep(Duration::from_secs(4));
    let (_, hist) = tenant.call("GET", &format!("/api/v1/runners/{}/health", away.id), None);
    let states: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["health"].as_str())
        .collect();
    assert_eq!(states, ["active"], "no flapping: {hist}");
    assert!(!away.log().contains("protocol violation"), "{}", away.log());
}
