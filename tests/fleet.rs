//! Fleet operations through the real server and runners: labels a host
//! proposes and an operator accepts, jobs addressed by selector, jobs that
//! wait for an offline runner (and one that expires at its deadline), and
//! a wave rollout that halts on a failure, and a rollout that goes on
//! where it was after the server is killed and started again.

use crate::util::*;
use serde_json::{json, Value};
use std::time::Duration;

fn started(server: &Server, tenant: &Tenant, args: &[&str]) -> Runner {
    let mut runner = Runner::enroll(server, tenant);
    let mut all = vec!["--heartbeat", "1s", "--docker-socket", "off"];
    all.extend_from_slice(args);
    runner.start(&all);
    tenant.wait_health(&runner.id, "active", Duration::from_secs(15));
    runner
}

fn stop(runner: &mut Runner) {
    signal(runner.child(), libc::SIGTERM);
    assert!(wait_exit(runner.child(), Duration::from_secs(10)).is_some());
}

fn job(tenant: &Tenant, id: &str) -> Value {
    let (st, v) = tenant.call("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

fn wait_final(tenant: &Tenant, id: &str, limit: Duration) -> Value {
    wait_for(limit, &format!("job {id} to end"), || {
        let v = job(tenant, id);
        (v["complete"] == true).then_some(v)
    })
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn runners_matching(tenant: &Tenant, selector: &str) -> Vec<String> {
    let path = format!(
        "/api/v1/runners?selector={}",
        selector
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    );
    let (st, v) = tenant.call("GET", &path, None);
    assert_eq!(st, 200, "{path}: {v}");
    ids(&v)
}

#[test]
fn labels_proposed_by_the_host_wait_for_acceptance_and_a_selector_picks_the_runners() {
    let server = Server::start();
    let tenant = server.tenant("fleet-labels");
    let db = started(
        &server,
        &tenant,
        &["--label", "role=db", "--label", "env=prod"],
    );
    let web = started(&server, &tenant, &["--label", "role=web"]);

    // Proposed, not yet labels: no selector sees them.
    let (st, v) = tenant.call("GET", &format!("/api/v1/runners/{}/labels", db.id), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["proposed"], json!({"env": "prod", "role": "db"}), "{v}");
    assert_eq!(v["labels"], json!({}), "{v}");
    assert!(runners_matching(&tenant, "role=db").is_empty());

    // The operator accepts one key on `db`, and all of `web`'s.
    let (st, v) = tenant.call(
        "POST",
        &format!("/api/v1/runners/{}/labels/accept", db.id),
        Some(json!({"keys": ["role"]})),
    );
    assert_eq!((st, &v["labels"]), (200, &json!({"role": "db"})), "{v}");
    assert_eq!(v["proposed"], json!({"env": "prod"}), "{v}");
    let (st, _) = tenant.call(
        "POST",
        &format!("/api/v1/runners/{}/labels/accept", web.id),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(runners_matching(&tenant, "role=db"), [db.id.as_str()]);
    let mut both = vec![db.id.clone(), web.id.clone()];
    both.sort();
    let mut got = runners_matching(&tenant, "role in (db,web),!canary");
    got.sort();
    assert_eq!(got, both);

    // In bulk, by selector; then a bad selector says where.
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/labels",
        Some(json!({"selector": "role", "set": {"region": "eu"}})),
    );
    assert_eq!((st, v["changed"].as_u64()), (200, Some(2)), "{v}");
    let (st, v) = tenant.call("GET", "/api/v1/runners?selector=role%20in%20(db", None);
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at byte 11"),
        "{v}"
    );
    let (st, v) = tenant.call(
        "PATCH",
        &format!("/api/v1/runners/{}/labels", web.id),
        Some(json!({"set": {"bad key": "x"}})),
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(runners_matching(&tenant, "region=eu").len(), 2, "unchanged");

    // The older group API is a label now, and the other way round.
    let (st, v) = tenant.call(
        "PUT",
        &format!("/api/v1/runners/{}/group", web.id),
        Some(json!({"group": "canary"})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(runners_matching(&tenant, "group=canary"), [web.id.as_str()]);
    assert_eq!(runners_matching(&tenant, "role,!group"), [db.id.as_str()]);
    let (st, _) = tenant.call(
        "PATCH",
        &format!("/api/v1/runners/{}/labels", db.id),
        Some(json!({"set": {"group": "stable"}})),
    );
    assert_eq!(st, 200);
    let (_, v) = tenant.call("GET", &format!("/api/v1/runners/{}/updates", db.id), None);
    assert_eq!(v["group"], "stable", "{v}");

    // A job by selector runs on the chosen runner only.
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({"selector": "role=db,env!=test", "command": "echo on-db"})),
    );
    assert_eq!(st, 201, "{v}");
    let jobs = v.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{v}");
    assert_eq!(jobs[0]["runner_id"], db.id.as_str());
    let done = wait_final(
        &tenant,
        jobs[0]["id"].as_str().unwrap(),
        Duration::from_secs(20),
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({"selector": "role=nothing", "command": "true"})),
    );
    assert_eq!(st, 404, "{v}");

    // The tenant's policy accepts `zone` from hosts without review.
    let (st, v) = tenant.call(
        "PUT",
        "/api/v1/fleet-policy",
        Some(json!({"auto_accept": ["zone"]})),
    );
    assert_eq!(st, 200, "{v}");
    let auto = started(
        &server,
        &tenant,
        &["--label", "zone=a", "--label", "role=cache"],
    );
    let (_, v) = tenant.call("GET", &format!("/api/v1/runners/{}/labels", auto.id), None);
    assert_eq!(v["labels"], json!({"zone": "a"}), "{v}");
    assert_eq!(v["proposed"], json!({"role": "cache"}), "{v}");
}

#[test]
fn a_job_waits_for_an_offline_runner_and_another_expires_at_its_deadline() {
    let server = Server::start();
    let tenant = server.tenant("fleet-queue");
    let mut runner = started(&server, &tenant, &["--max-jobs", "1"]);
    stop(&mut runner);
    tenant.wait_health(&runner.id, "unreachable", Duration::from_secs(15));

    // Two jobs wait, in order, for the runner; a third expires first.
    let mut waiting = Vec::new();
    for n in 1..=2 {
        let (st, v) = tenant.call(
            "POST",
            "/api/v1/jobs",
            Some(
                json!({"runners": [runner.id], "command": format!("echo {n}"), "deadline_s": 120}),
            ),
        );
        assert_eq!(st, 201, "{v}");
        waiting.push(ids(&v).remove(0));
    }
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({"runners": [runner.id], "command": "echo late", "deadline_s": 2})),
    );
    assert_eq!(st, 201, "{v}");
    let late = ids(&v).remove(0);
    assert_eq!(job(&tenant, &waiting[0])["status"], "pending");
    let expired = wait_final(&tenant, &late, Duration::from_secs(10));
    assert_eq!(expired["status"], "expired", "{expired}");
    assert!(
        expired["reason"]
            .as_str()
            .unwrap()
            .contains("did not connect within 2s"),
        "{expired}"
    );
    assert_eq!(job(&tenant, &waiting[0])["status"], "pending");

    runner.start(&[
        "--heartbeat",
        "1s",
        "--docker-socket",
        "off",
        "--max-jobs",
        "1",
    ]);
    let first = wait_final(&tenant, &waiting[0], Duration::from_secs(20));
    let second = wait_final(&tenant, &waiting[1], Duration::from_secs(20));
    assert_eq!(
        (first["status"].as_str(), second["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    assert!(
        first["started_at"].as_str() <= second["started_at"].as_str(),
        "in order: {first} {second}"
    );
    // The expired one was never sent.
    assert_eq!(job(&tenant, &late)["status"], "expired");
    assert!(!runner.log().contains(&late), "{}", runner.log());

    // Bad deadlines change nothing.
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({"runners": [runner.id], "command": "true", "deadline_s": 999_999_999u64})),
    );
    assert_eq!(st, 400, "{v}");
}

#[test]
fn a_wave_rollout_halts_after_the_wave_holding_a_failure_and_resume_runs_the_rest() {
    let server = Server::start();
    let tenant = server.tenant("fleet-waves");
    // Six runners named r1..r6 (a rollout goes in name order); r3 refuses
    // jobs (its host owner's --no-jobs), so its job fails.
    let mut runners = Vec::new();
    for n in 1..=6 {
        let extra: &[&str] = if n == 3 { &["--no-jobs"] } else { &[] };
        let r = started(&server, &tenant, extra);
        let (st, v) = tenant.call(
            "PUT",
            &format!("/api/v1/runners/{}/name", r.id),
            Some(json!({"name": format!("r{n}")})),
        );
        assert_eq!(st, 200, "{v}");
        runners.push(r);
    }
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/labels",
        Some(json!({"selector": "", "set": {"fleet": "wave"}})),
    );
    assert_eq!((st, v["changed"].as_u64()), (200, Some(6)), "{v}");

    // The CLI follows the rollout and exits non-zero when it halts.
    let out = std::process::Command::new(server_bin())
        .args(["--api", &server.url, "--ca-file"])
        .arg(&server.ca)
        .args([
            "--token",
            &tenant.token,
            "run",
            "--selector",
            "fleet=wave",
            "--wave",
            "2",
            "--max-failures",
            "1",
            "-c",
            "echo done",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("halted: 3 succeeded, 1 failed, 0 skipped, 2 not started of 6"),
        "{stdout}"
    );

    let (_, list) = tenant.call("GET", "/api/v1/rollouts", None);
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let (_, v) = tenant.call("GET", &format!("/api/v1/rollouts/{id}"), None);
    assert_eq!(v["state"], "halted", "{v}");
    let targets = v["targets"].as_array().unwrap();
    let states: Vec<&str> = targets
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "succeeded",
            "succeeded",
            "failed",
            "succeeded",
            "waiting",
            "waiting"
        ],
        "{v}"
    );
    assert_eq!(targets[2]["name"], "r3");
    assert!(
        targets[4]["job_id"].is_null() && targets[5]["job_id"].is_null(),
        "untouched: {v}"
    );
    assert_eq!(targets[0]["exit_code"], 0);
    // The untouched runners have no job at all.
    for r in &runners[4..] {
        let (_, jobs) = tenant.call("GET", &format!("/api/v1/jobs?runner={}", r.id), None);
        assert_eq!(jobs.as_array().unwrap().len(), 0, "{jobs}");
    }

    // Resume: the last wave runs, the rollout is done.
    let (st, v) = tenant.call("POST", &format!("/api/v1/rollouts/{id}/resume"), None);
    assert_eq!(st, 200, "{v}");
    let v = wait_for(Duration::from_secs(30), "the rollout to finish", || {
        let (_, v) = tenant.call("GET", &format!("/api/v1/rollouts/{id}"), None);
        (v["over"] == true).then_some(v)
    });
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["totals"]["succeeded"], 5, "{v}");
    assert_eq!(v["totals"]["failed"], 1, "{v}");
    let (st, v) = tenant.call("POST", &format!("/api/v1/rollouts/{id}/pause"), None);
    assert_eq!(st, 409, "over: {v}");

    // Bad input: a clear error, nothing started.
    for body in [
        json!({"selector": "fleet=wave", "wave": "0%", "job": {"command": "true"}}),
        json!({"selector": "fleet in (", "job": {"command": "true"}}),
        json!({"selector": "fleet=wave", "job": {"command": "true", "runners": ["x"]}}),
        json!({"selector": "fleet=wave", "max_failures": 0, "job": {"command": "true"}}),
    ] {
        let (st, v) = tenant.call("POST", "/api/v1/rollouts", Some(body.clone()));
        assert_eq!(st, 400, "{body}: {v}");
    }
    let (_, list) = tenant.call("GET", "/api/v1/rollouts", None);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

/// The runners of `tenant` named r1..rN in order, labelled `fleet=<label>`.
fn named(server: &Server, tenant: &Tenant, n: usize, label: &str) -> Vec<Runner> {
    let mut runners = Vec::new();
    for i in 1..=n {
        let r = started(server, tenant, &[]);
        let (st, v) = tenant.call(
            "PUT",
            &format!("/api/v1/runners/{}/name", r.id),
            Some(json!({"name": format!("r{i}")})),
        );
        assert_eq!(st, 200, "{v}");
        runners.push(r);
    }
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/labels",
        Some(json!({"selector": "", "set": {"fleet": label}})),
    );
    assert_eq!((st, v["changed"].as_u64()), (200, Some(n as u64)), "{v}");
    runners
}

/// The ids of the jobs each runner was given.
fn jobs_of(tenant: &Tenant, runner: &str) -> Vec<String> {
    let (st, v) = tenant.call("GET", &format!("/api/v1/jobs?runner={runner}"), None);
    assert_eq!(st, 200, "{v}");
    ids(&v)
}

#[test]
fn a_rollout_goes_on_where_it_was_after_the_server_is_killed_and_started_again() {
    let mut server = Server::start();
    let tenant = server.tenant("fleet-restart");
    let runners = named(&server, &tenant, 3, "restart");
    // One runner at a time, each job ~2 s.
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/rollouts",
        Some(json!({"selector": "fleet=restart", "wave": "1",
                    "job": {"command": "sleep 2; echo ran"}})),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/rollouts/{id}");
    let first = wait_for(Duration::from_secs(20), "the first target running", || {
        let (_, v) = tenant.call("GET", &path, None);
        let t = &v["targets"][0];
        (t["state"] == "running" && t["job_id"].is_string()).then(|| t["job_id"].clone())
    });

    // kill -9 mid-job, started again on the same address and data.
    let addr = server.addr();
    server.kill_and_start_at(&addr);
    let (st, v) = tenant.call("GET", &path, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["live"], true, "driven again after the restart: {v}");
    assert_eq!(v["targets"][0]["job_id"], first, "{v}");

    let v = wait_for(Duration::from_secs(90), "the rollout to finish", || {
        let (_, v) = tenant.call("GET", &path, None);
        (v["over"] == true).then_some(v)
    });
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["live"], false, "{v}");
    let t = &v["totals"];
    assert_eq!(
        (&t["succeeded"], &t["failed"], &t["waiting"], &t["running"]),
        (&json!(3), &json!(0), &json!(0), &json!(0)),
        "{v}"
    );
    assert_eq!(
        v["targets"][0]["job_id"], first,
        "the started job kept: {v}"
    );
    // Every runner ran it exactly once: one job each, the rollout's.
    for (i, r) in runners.iter().enumerate() {
        let jobs = jobs_of(&tenant, &r.id);
        assert_eq!(jobs.len(), 1, "r{}: {jobs:?}", i + 1);
        assert_eq!(v["targets"][i]["job_id"], jobs[0], "{v}");
        assert_eq!(job(&tenant, &jobs[0])["status"], "succeeded");
    }
    // Over: an action is refused with the reason.
    let (st, v) = tenant.call("POST", &format!("{path}/resume"), None);
    assert_eq!(st, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("is over (done)"),
        "{v}"
    );
    let other = server.tenant("fleet-restart-other");
    let (st, v) = other.call("POST", &format!("{path}/pause"), None);
    assert_eq!(st, 404, "another tenant's: {v}");
    let (st, v) = other.call("GET", &path, None);
    assert_eq!(st, 404, "{v}");

    // Aborted mid-job: the answer says so, the waiting runners are
    // skipped, the running job is cancelled, and the rollout closes.
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/rollouts",
        Some(json!({"selector": "fleet=restart", "wave": "1",
                    "job": {"command": "sleep 60"}})),
    );
    assert_eq!(st, 201, "{v}");
    let path = format!("/api/v1/rollouts/{}", v["id"].as_str().unwrap());
    let running = wait_for(Duration::from_secs(20), "the first target running", || {
        let (_, v) = tenant.call("GET", &path, None);
        let t = &v["targets"][0];
        (t["state"] == "running" && t["job_id"].is_string())
            .then(|| t["job_id"].as_str().unwrap().to_owned())
    });
    let (st, v) = tenant.call("POST", &format!("{path}/abort"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "aborted", "{v}");
    assert_eq!(v["totals"]["skipped"], 2, "{v}");
    assert_eq!(v["live"], true, "its job still runs: {v}");
    let v = wait_for(
        Duration::from_secs(30),
        "the aborted rollout to close",
        || {
            let (_, v) = tenant.call("GET", &path, None);
            (v["live"] == false).then_some(v)
        },
    );
    assert_eq!(v["totals"]["failed"], 1, "{v}");
    assert_eq!(job(&tenant, &running)["status"], "cancelled");
    assert_eq!(jobs_of(&tenant, &runners[1].id).len(), 1, "no second job");
}

#[test]
fn the_runners_list_filters_sorts_pages_and_counts_and_names_a_bad_parameter() {
    let server = Server::start();
    let tenant = server.tenant("fleet-list");
    let mut made = Vec::new();
    for role in ["db", "db", "web"] {
        let r = started(&server, &tenant, &[]);
        let (st, v) = tenant.call(
            "PATCH",
            &format!("/api/v1/runners/{}/labels", r.id),
            Some(json!({"set": {"role": role}})),
        );
        assert_eq!(st, 200, "{v}");
        made.push(r);
    }
    // One goes away: unreachable.
    stop(&mut made[2]);
    tenant.wait_health(&made[2].id, "unreachable", Duration::from_secs(20));
    let list = |q: &str| -> Vec<String> {
        let (st, v) = tenant.call("GET", &format!("/api/v1/runners?{q}"), None);
        assert_eq!(st, 200, "{q}: {v}");
        ids(&v)
    };
    let (_, one) = tenant.call("GET", &format!("/api/v1/runners/{}", made[0].id), None);
    let (arch, version) = (
        one["arch"].as_str().unwrap().to_owned(),
        one["version"].as_str().unwrap().to_owned(),
    );
    assert_eq!(list(&format!("arch={arch}")).len(), 3);
    assert!(list("arch=mips").is_empty());
    assert_eq!(
        list(&format!("version={version}&selector=role%3Ddb")).len(),
        2
    );
    assert_eq!(list("health=unreachable"), [made[2].id.as_str()]);
    // A label is found by the search too.
    assert_eq!(list("q=role%3Dweb"), [made[2].id.as_str()]);
    // Sorted by id, both ways; pages of one do not overlap.
    let mut by_id: Vec<String> = made.iter().map(|r| r.id.clone()).collect();
    by_id.sort();
    assert_eq!(list("sort=id"), by_id);
    let mut rev = by_id.clone();
    rev.reverse();
    assert_eq!(list("sort=-id"), rev);
    let pages: Vec<String> = (1..=3)
        .flat_map(|p| list(&format!("sort=id&limit=1&page={p}")))
        .collect();
    assert_eq!(pages, by_id);
    assert!(list("sort=id&limit=2&page=3").is_empty());
    // Counts by health, arch and version of the same filter.
    let (st, c) = tenant.call("GET", "/api/v1/runners/counts?selector=role", None);
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["total"], 3, "{c}");
    assert_eq!(c["health"]["active"], 2, "{c}");
    assert_eq!(c["health"]["unreachable"], 1, "{c}");
    assert_eq!(c["arch"][&arch], 3, "{c}");
    let (_, c) = tenant.call("GET", "/api/v1/runners/counts?q=web", None);
    assert_eq!(c["total"], 1, "{c}");
    // A bad parameter is named.
    for (q, says) in [
        ("sort=cpu", "sort:"),
        ("page=0", "page:"),
        ("limit=0", "limit:"),
        ("limit=10001", "limit:"),
        ("page=2&offset=1", "offset or page"),
        ("health=sleepy", "health:"),
        ("selector=role%20in%20(a", "selector: at byte"),
        ("colour=red", "colour"),
        ("page=x", "page"),
    ] {
        let (st, v) = tenant.call("GET", &format!("/api/v1/runners?{q}"), None);
        assert_eq!(st, 400, "{q}: {v}");
        let m = v["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(says), "{q}: {m}");
    }
}
