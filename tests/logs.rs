//! Container logs through the server, on a real Docker engine: live follow,
//! stored history with filters, continuous collection that resumes after
//! the runner is killed (no gap, no duplicate), a policy that leaves a
//! container out and chooses it again, and a follow that survives
//! dockerd restarting. `docker logs` is the reference every time.

use crate::util::docker::{self, IMAGE};
use crate::util::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A running container made by the test, removed on drop.
struct Writer {
    name: String,
}

impl Writer {
    /// A container running `script` under busybox sh.
    fn start(script: &str, extra: &[&str]) -> Writer {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tether-logs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut args = vec!["--name", &name, "--label", "tether-test=logs"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        docker::run_detached(&args);
        Writer { name }
    }

    /// `docker logs -t` lines of one stream: (timestamp, message).
    fn docker_logs(&self, stream: &str) -> Vec<(String, String)> {
        let out = Command::new("docker")
            .args(["logs", "-t", &self.name])
            .output()
            .unwrap();
        let text = if stream == "stderr" {
            out.stderr
        } else {
            out.stdout
        };
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, m)| (t.to_owned(), m.to_owned()))
            .collect()
    }

    fn stop(&self) {
        let out = Command::new("docker")
            .args(["stop", "-t", "1", &self.name])
            .output()
            .unwrap();
        assert!(out.status.success(), "docker stop");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

fn docker_runner(server: &Server, tenant: &Tenant) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    wait_for(Duration::from_secs(20), "docker available", || {
        let (st, v) = tenant.call(
            "GET",
            &format!("/api/v1/runners/{}/docker", runner.id),
            None,
        );
        (st == 200 && v["available"] == true).then_some(())
    });
    runner
}

/// An NDJSON answer as values.
fn ndjson(v: Value) -> Vec<Value> {
    match v {
        Value::Null => Vec::new(),
        Value::String(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect(),
        one => vec![one],
    }
}

fn history(tenant: &Tenant, runner: &str, container: &str, query: &str) -> Vec<Value> {
    let (st, v) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{runner}/containers/{container}/logs?limit=100000{query}"),
        None,
    );
    assert_eq!(st, 200, "history: {v}");
    ndjson(v)
}

fn messages(lines: &[Value], stream: &str) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l["stream"] == stream)
        .map(|l| {
            (
                l["ts"].as_str().unwrap().to_owned(),
                l["line"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Docker prints RFC3339Nano without trailing zeros; the runner passes
/// Docker's own text through, so they compare as they are.
fn assert_same(got: &[(String, String)], want: &[(String, String)], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} lines stored, {} in docker logs; first difference at {first:?}: {:?} vs {:?}",
            got.len(),
            want.len(),
            first.and_then(|i| got.get(i)),
            first.and_then(|i| want.get(i)),
        );
    }
}

#[test]
fn follow_live_and_query_stored_history_with_filters() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("logs");
    let runner = docker_runner(&server, &tenant);
    let w = Writer::start(
        "i=0; while true; do echo \"line $i\"; echo \"warn $i\" >&2; i=$((i+1)); sleep 0.05; done",
        &[],
    );
    let id = &runner.id;

    // Live: tail=2 then new lines as they come, stdout and stderr apart.
    let mut reader = BufReader::new(tenant.api.stream(
        &format!(
            "/api/v1/runners/{id}/containers/{}/logs?follow=1&tail=2",
            w.name
        ),
        &tenant.token,
    ));
    let mut live = Vec::new();
    while live.len() < 20 {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v["end"].is_null(), "ended: {v}");
        live.push(v);
    }
    for v in &live {
        let text = v["line"].as_str().unwrap();
        let want = if text.starts_with("line ") {
            "stdout"
        } else {
            "stderr"
        };
        assert_eq!(v["stream"], want, "{v}");
        assert!(v["ts_ns"].as_i64().unwrap() > 0);
    }
    let outs: Vec<u64> = live
        .iter()
        .filter_map(|v| v["line"].as_str().unwrap().strip_prefix("line "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        outs.windows(2).all(|p| p[1] == p[0] + 1),
        "live stdout in order: {outs:?}"
    );

    // Stored: the same lines as `docker logs`, per stream, after a moment.
    wait_for(Duration::from_secs(20), "40 stored stdout lines", || {
        (messages(&history(&tenant, id, &w.name, ""), "stdout").len() >= 40).then_some(())
    });
    w.stop();
    // Stopping ends the live follow, with the reason.
    let end = loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "no end line");
        let v: Value = serde_json::from_str(&line).unwrap();
        if !v["end"].is_null() {
            break v;
        }
    };
    assert_eq!(end["end"], "container stopped", "{end}");
    let want_out = w.docker_logs("stdout");
    let want_err = w.docker_logs("stderr");
    let stored = wait_for(Duration::from_secs(20), "every line stored", || {
        let all = history(&tenant, id, &w.name, "");
        (messages(&all, "stdout").len() >= want_out.len()
            && messages(&all, "stderr").len() >= want_err.len())
        .then_some(all)
    });
    assert_same(&messages(&stored, "stdout"), &want_out, "stdout");
    assert_same(&messages(&stored, "stderr"), &want_err, "stderr");

    // Filters: text (case-insensitive), stream, tail, time range.
    let hits = history(&tenant, id, &w.name, "&q=LINE%201&stream=stdout");
    assert!(!hits.is_empty());
    assert!(hits
        .iter()
        .all(|l| l["line"].as_str().unwrap().starts_with("line 1")));
    let tail = history(&tenant, id, &w.name, "&tail=3&stream=stderr");
    let want_tail: Vec<&str> = want_err[want_err.len() - 3..]
        .iter()
        .map(|l| l.1.as_str())
        .collect();
    let got_tail: Vec<&str> = tail.iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(got_tail, want_tail);
    let (from, to) = (&want_out[5].0, &want_out[9].0);
    let range = history(
        &tenant,
        id,
        &w.name,
        &format!("&stream=stdout&since={from}&until={to}"),
    );
    let got: Vec<&str> = range.iter().map(|l| l["line"].as_str().unwrap()).collect();
    assert_eq!(got, ["line 5", "line 6", "line 7", "line 8", "line 9"]);

    // The CLI prints the same; stderr lines go to stderr.
    let out = Command::new(server_bin())
        .args(["--api", &server.url, "--ca-file"])
        .arg(&server.ca)
        .args(["--token", &tenant.token, "logs", id, &w.name, "--tail", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout.lines().count() + stderr.lines().count(),
        4,
        "{stdout}{stderr}"
    );
    assert!(stdout.lines().all(|l| l.starts_with("line ")), "{stdout}");
    assert!(stderr.lines().all(|l| l.starts_with("warn ")), "{stderr}");

    // Bad input: a clear error, nothing else.
    let (st, v) = tenant.call(
        "GET",
        &format!("/api/v1/runners/{id}/containers/no-such-thing/logs?follow=1"),
        None,
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("no_such_container")),
        "{v}"
    );
    let (st, _) = tenant.call(
        "GET",
        &format!(
            "/api/v1/runners/{id}/containers/{}/logs?since=yesterday-ish",
            w.name
        ),
        None,
    );
    assert_eq!(st, 400);
}

#[test]
fn collection_resumes_without_gap_or_duplicate_after_the_runner_is_killed() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("logs-resume");
    let mut runner = docker_runner(&server, &tenant);
    let id = runner.id.clone();
    // Only labelled containers: the policy is honoured.
    let (st, v) = tenant.call(
        "PUT",
        &format!("/api/v1/runners/{id}/logs/collect"),
        Some(json!({ "policy": "label:collect=yes" })),
    );
    assert_eq!(
        (st, v["collect"].as_str()),
        (200, Some("label:collect=yes")),
        "{v}"
    );
    let script =
        "i=0; while [ $i -lt 400 ]; do echo \"seq $i\"; i=$((i+1)); sleep 0.02; done; sleep 300";
    let w = Writer::start(script, &["--label", "collect=yes"]);
    let other = Writer::start("echo ignored; sleep 300", &[]);

    wait_for(Duration::from_secs(20), "some lines collected", || {
        (history(&tenant, &id, &w.name, "").len() >= 30).then_some(())
    });
    signal(runner.child(), libc::SIGKILL);
    wait_exit(runner.child(), Duration::from_secs(5)).expect("runner killed");
    // Lines keep coming while nobody collects.
    std::thread::sleep(Duration::from_secs(2));
    runner.start(&["--heartbeat", "1s"]);
    tenant.wait_health(&id, "active", Duration::from_secs(20));

    let want = wait_for(Duration::from_secs(30), "all 400 lines written", || {
        let lines = w.docker_logs("stdout");
        (lines.len() == 400).then_some(lines)
    });
    let stored = wait_for(Duration::from_secs(30), "all 400 lines collected", || {
        let all = history(&tenant, &id, &w.name, "");
        (all.len() >= 400).then_some(all)
    });
    assert_same(&messages(&stored, "stdout"), &want, "after a runner kill");
    let numbers: Vec<String> = stored
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_owned())
        .collect();
    let expect: Vec<String> = (0..400).map(|i| format!("seq {i}")).collect();
    assert_eq!(numbers, expect);
    assert!(
        history(&tenant, &id, &other.name, "").is_empty(),
        "an unlabelled container is not collected"
    );

    // Settings are visible and retention can be set per container.
    let (st, v) = tenant.call(
        "PUT",
        &format!("/api/v1/runners/{id}/logs/retention"),
        Some(json!({ "container": w.name, "max_age": "2d", "max_bytes": "1M" })),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = tenant.call("GET", &format!("/api/v1/runners/{id}/logs"), None);
    assert_eq!(st, 200);
    let c = v["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == w.name.as_str())
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(c["retention"]["max_age_s"], 2 * 86_400);
    assert!(c["bytes"].as_i64().unwrap() > 400 * 30, "{c}");
    let (st, v) = tenant.call(
        "PUT",
        &format!("/api/v1/runners/{id}/logs/retention"),
        Some(json!({ "max_age": "30s", "max_bytes": "1M" })),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
}

#[test]
fn a_container_the_policy_leaves_out_stops_being_collected_until_chosen_again() {
    let _engine = docker::ensure();
    let server = Server::start();
    let tenant = server.tenant("logs-policy");
    let runner = docker_runner(&server, &tenant);
    let id = runner.id.clone();
    let collect = |policy: &str| {
        let path = format!("/api/v1/runners/{id}/logs/collect");
        let (st, v) = tenant.call("PUT", &path, Some(json!({ "policy": policy })));
        assert_eq!((st, v["collect"].as_str()), (200, Some(policy)), "{v}");
    };
    collect("label:collect=yes");
    let w = Writer::start(
        "i=0; while true; do echo \"tick $i\"; i=$((i+1)); sleep 0.05; done",
        &["--label", "collect=yes"],
    );
    let stored = || history(&tenant, &id, &w.name, "").len();
    wait_for(Duration::from_secs(20), "some lines collected", || {
        (stored() >= 20).then_some(())
    });

    // Left out: the count holds still while the container writes on.
    collect("none");
    let held = wait_for(Duration::from_secs(10), "collection stopped", || {
        let a = stored();
        std::thread::sleep(Duration::from_secs(1));
        (stored() == a).then_some(a)
    });
    let written = w.docker_logs("stdout").len();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        w.docker_logs("stdout").len() >= written + 20,
        "the container writes on"
    );
    assert_eq!(stored(), held, "nothing is collected while left out");

    // Chosen again: collection resumes from the stored cursor, so what was
    // written meanwhile is stored too, once.
    collect("label:collect=yes");
    wait_for(Duration::from_secs(20), "collection resumed", || {
        (stored() >= held + 60).then_some(())
    });
    w.stop();
    let want = w.docker_logs("stdout");
    let all = wait_for(Duration::from_secs(20), "every line collected", || {
        let all = history(&tenant, &id, &w.name, "");
        (all.len() >= want.len()).then_some(all)
    });
    assert_same(
        &messages(&all, "stdout"),
        &want,
        "after leaving out and choosing again",
    );
}

#[test]
fn a_follow_and_collection_survive_dockerd_restarting() {
    let _engine = docker::ensure_exclusive();
    let server = Server::start();
    let tenant = server.tenant("logs-dockerd");
    let runner = docker_runner(&server, &tenant);
    let id = runner.id.clone();
    let w = Writer::start(
        "i=0; while true; do echo \"tick $i\"; i=$((i+1)); sleep 0.1; done",
        &["--restart", "always"],
    );
    let mut reader = BufReader::new(tenant.api.stream(
        &format!("/api/v1/runners/{id}/containers/{}/logs?follow=1", w.name),
        &tenant.token,
    ));
    let mut followed: Vec<(String, String)> = Vec::new();
    let mut read_until = |followed: &mut Vec<(String, String)>, n: usize| {
        let limit = followed.len() + 5000;
        while followed.len() < n.min(limit) {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "follow ended");
            let v: Value = serde_json::from_str(&line).unwrap();
            assert!(v["end"].is_null(), "follow ended: {v}");
            followed.push((
                v["ts"].as_str().unwrap().to_owned(),
                v["line"].as_str().unwrap().to_owned(),
            ));
        }
    };
    read_until(&mut followed, 10);
    docker::restart_engine();
    // The container came back with the engine (a new process: its count
    // starts again) and the follow carries on with its new lines.
    // Lines written while the test waited for the restart come first.
    let before = followed.len();
    let restarted = loop {
        let n = followed.len();
        read_until(&mut followed, n + 1);
        if followed[n].1 == "tick 0" {
            break n;
        }
        assert!(n - before < 5000, "no line from after the restart");
    };
    read_until(&mut followed, restarted + 20);

    let want = w.docker_logs("stdout");
    assert!(want.len() >= followed.len());
    assert_same(
        &followed,
        &want[..followed.len()],
        "live follow across a dockerd restart",
    );
    // Collection too: every line docker has, once.
    let stored = wait_for(Duration::from_secs(30), "collection caught up", || {
        let all = messages(&history(&tenant, &id, &w.name, ""), "stdout");
        (all.len() >= followed.len()).then_some(all)
    });
    assert_same(
        &stored[..followed.len()],
        &want[..followed.len()],
        "collection across a dockerd restart",
    );
}
