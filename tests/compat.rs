//! A runner built before the server reshape (issue 16) still works against
//! the server after it: the wire did not change. The runner is built from
//! [`prev::PRE_RESHAPE`] (first run only, cached under
//! `target/bench-base/`) and run against this build's server: enrollment,
//! hello and health, metrics and the fingerprint, a job with its output
//! and exit code, a terminal that echoes.

use crate::util::prev;
use crate::util::term::TermClient;
use crate::util::*;
use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;

#[test]
fn a_runner_built_before_the_reshape_works_against_this_server() {
    let old = prev::runner(prev::PRE_RESHAPE);
    let server = Server::start();
    let tenant = server.tenant("compat");

    // Enroll with the old binary.
    let mut runner = Runner::new();
    runner.bin = old;
    let (_, token) = tenant.enrollment_token(600);
    let out = runner.enroll_at(&server.url, &server.ca, &token);
    assert!(
        out.status.success(),
        "the old runner's enroll failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let cred: Value =
        serde_json::from_slice(&std::fs::read(runner.dir.path().join("credential.json")).unwrap())
            .unwrap();
    runner.id = cred["runner_id"].as_str().unwrap().to_owned();

    // Hello, welcome, health.
    runner.start(&[
        "--heartbeat",
        "1s",
        "--metrics-interval",
        "1s",
        "--fingerprint-interval",
        "2s",
        "--docker-socket",
        "off",
    ]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(20));
    let shown = tenant.runner(&runner.id);
    assert!(
        shown["version"].is_string() && shown["arch"].is_string() && shown["protocol"] == 1,
        "hello's fields stored: {shown}"
    );

    // Metrics and the fingerprint arrive.
    let latest = wait_for(
        Duration::from_secs(20),
        "metrics from the old runner",
        || {
            let (st, v) = tenant.call(
                "GET",
                &format!("/api/v1/runners/{}/metrics/latest", runner.id),
                None,
            );
            (st == 200 && v.to_string().contains("mem.total")).then_some(v)
        },
    );
    assert!(latest.to_string().contains("load.1"), "{latest}");
    wait_for(Duration::from_secs(20), "a fingerprint", || {
        let (st, v) = tenant.call(
            "GET",
            &format!("/api/v1/runners/{}/fingerprint", runner.id),
            None,
        );
        (st == 200).then_some(v)
    });

    // A job: output on both streams, the exit code.
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [runner.id], "command": "echo out; echo err >&2; exit 3" })),
    );
    assert_eq!(st, 201, "{v}");
    let id = v[0]["id"].as_str().unwrap().to_owned();
    let job = wait_for(Duration::from_secs(30), "the job to complete", || {
        let (_, v) = tenant.call("GET", &format!("/api/v1/jobs/{id}"), None);
        (v["complete"] == true).then_some(v)
    });
    assert_eq!(
        (job["status"].as_str(), job["exit_code"].as_i64()),
        (Some("failed"), Some(3)),
        "{job}"
    );
    for (stream, want) in [("stdout", "out\n"), ("stderr", "err\n")] {
        let mut got = String::new();
        tenant
            .api
            .stream(
                &format!("/api/v1/jobs/{id}/output?stream={stream}"),
                &tenant.token,
            )
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, want, "{stream}");
    }

    // A terminal on the host: keystrokes there, the echo back.
    let mut t = TermClient::open(&server, &tenant.token, &runner.id, "cols=80&rows=24")
        .unwrap_or_else(|e| panic!("terminal on the old runner: {e:?}"));
    t.run("echo $((6*7))", "42\r\n");
    t.send(b"exit\n");
    assert_eq!(
        t.wait_end(Duration::from_secs(15)).as_deref(),
        Some("exited 0")
    );

    assert_eq!(tenant.health(&runner.id), "active", "{}", runner.log());
}
