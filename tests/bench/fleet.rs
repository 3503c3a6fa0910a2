//! The fleet at scale (issue 21): BENCH_FLEET_RUNNERS (default 10,000)
//! `tether-sim` runners on one server, a tenth of them labelled
//! `role=db`, then
//!
//! - `GET /api/v1/runners` with a selector, page 2 of 100 (fewer below 2,000 runners): p50 and p99 of
//!   BENCH_FLEET_CALLS (default 300) calls, one at a time;
//! - the dashboard's runners page in headless Chromium
//!   (`server/web/bench-runners.mjs`): from navigation to the first page
//!   of rows and the counts drawn, and the page's JS heap then;
//! - a wave rollout over every runner (waves of 10 %): the server's CPU
//!   time per runner from the start until every target has a job (the sim
//!   runners take no jobs: the jobs stay pending, so this is the rollout's
//!   own cost: planning, making jobs in waves, the driver's polling), then
//!   aborted;
//! - before it, an update rollout over every runner (one wave): the
//!   server's CPU time per runner from the start until every runner has
//!   its own desired version and was offered the release (the sim runners
//!   never install it, so every target stays `offered`), then the driver's
//!   CPU while it watches them all (two queries a second for the whole
//!   wave); they all fail at the reconnect bound and it ends. Before both,
//!   the server's CPU with the fleet and no rollout, which the driver
//!   figures include.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::util::*;
use super::{env_secs, percentile, ticks_per_sec, Row};

const PASSWORD: &str = "bench-password-1";

pub fn run(rows: &mut Vec<Row>) {
    let count = env_secs("BENCH_FLEET_RUNNERS", 10_000);
    let calls = env_secs("BENCH_FLEET_CALLS", 300) as usize;
    // Room for a job per runner (the rollout below).
    let server = Server::start_with(&["--enroll-rate", "0", "--max-jobs-per-tenant", "1000000"]);
    let tenant = server.tenant("fleet");
    let _sim = start_sims(&server, &tenant.token, count, "900s");
    eprintln!("bench: fleet of {count} simulated runners");
    let all = format!("/api/v1/runners?health=active&limit={}", count.min(10_000));
    let ids: Vec<String> = wait_for(Duration::from_secs(600), "the fleet active", || {
        let (_, list) = tenant.call("GET", &all, None);
        let list = list.as_array()?;
        (list.len() as u64 >= count).then(|| {
            list.iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect()
        })
    });
    // Every runner labelled, a tenth role=db.
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/labels",
        Some(json!({"selector": "", "set": {"role": "web", "region": "eu"}})),
    );
    assert_eq!(st, 200, "{v}");
    for id in ids.iter().step_by(10) {
        let (st, v) = tenant.call(
            "PATCH",
            &format!("/api/v1/runners/{id}/labels"),
            Some(json!({"set": {"role": "db"}})),
        );
        assert_eq!(st, 200, "{v}");
    }

    // The list with a selector.
    let path = "/api/v1/runners?selector=role%3Ddb%2Cregion%20in%20(eu%2Cus)%2C!canary&sort=-last_seen&page=2&limit=100";
    // Page 2 holds the 101st to 200th role=db runner: fewer in a small
    // fleet (BENCH_FLEET_RUNNERS below 2,000).
    let db = ids.len().div_ceil(10);
    let page = db.saturating_sub(100).min(100);
    let mut ms = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let (st, v) = tenant.call("GET", path, None);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v.as_array().unwrap().len(),
            page,
            "page 2 of {db} role=db runners"
        );
    }
    let (p50, p99) = (percentile(&mut ms, 0.50), percentile(&mut ms, 0.99));
    for (what, value, goal) in [("p50", p50, None), ("p99", p99, Some(50.0))] {
        rows.push(Row {
            what: format!("GET /runners?selector=… over {count} runners, {what}"),
            value,
            unit: "ms",
            goal,
            how: format!(
                "{calls} calls one at a time, a page of {page} of the {db} role=db runners"
            ),
        });
    }

    for r in rows.iter() {
        eprintln!("bench: {} = {:.3} {}", r.what, r.value, r.unit);
    }
    dashboard(&server, count, rows);
    // The update rollout first: it ends by itself (its runners never come
    // back at the version); the job rollout's driver never does (the sims
    // take no jobs and answer no cancel).
    // What the fleet costs with no rollout: the driver's figures below
    // are the server's whole CPU, this included.
    let pid = server.child.id();
    let c0 = cpu_ticks(pid) as f64 / ticks_per_sec();
    std::thread::sleep(Duration::from_secs(10));
    let rest = (cpu_ticks(pid) as f64 / ticks_per_sec() - c0) / 10.0;
    rows.push(Row {
        what: format!("server CPU with {count} runners and no rollout"),
        value: rest * 100.0,
        unit: "%",
        goal: None,
        how: "utime+stime of the server over 10 s before the rollouts (the driver figures below include it)".into(),
    });
    update_rollout_overhead(&server, &tenant, count, rows);
    rollout_overhead(&server, &tenant, count, rows);
    for r in rows.iter().rev().take(5) {
        eprintln!("bench: {} = {:.3} {}", r.what, r.value, r.unit);
    }
}

fn dashboard(server: &Server, count: u64, rows: &mut Vec<Row>) {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("server/web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() || !web.join("node_modules/playwright-core").exists() {
        eprintln!("bench: no chromium or server/web/node_modules: no dashboard figures");
        return;
    }
    let mut add = Command::new(server_bin())
        .args([
            "user",
            "add",
            "fleet",
            "ben",
            "--role",
            "admin",
            "--api",
            &server.url,
        ])
        .arg("--ca-file")
        .arg(&server.ca)
        .env("TETHER_TOKEN", &server.admin_token)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(add.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    assert!(add.wait().unwrap().success());
    // A failure's screenshot (e2e-common.mjs) goes here.
    let artifacts = target_dir().join("bench-runners");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new("node")
        .arg("bench-runners.mjs")
        .current_dir(&web)
        .env("TETHER_URL", &server.url)
        .env("TENANT", "fleet")
        .env("ADMIN_USER", "ben")
        .env("PASSWORD", PASSWORD)
        .env("EXPECT", count.to_string())
        .env("CHROMIUM", &chromium)
        .env("ARTIFACTS", &artifacts)
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let figure = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
    };
    if let Some(ms) = figure("first_render_ms") {
        rows.push(Row {
            what: format!("dashboard runners page, first render, {count} runners"),
            value: ms / 1000.0,
            unit: "s",
            goal: Some(2.0),
            how: "Chromium: navigation to the counts and 100 rows drawn (bench-runners.mjs)".into(),
        });
    }
    if let Some(b) = figure("js_heap_bytes") {
        rows.push(Row {
            what: format!("dashboard runners page, JS heap, {count} runners"),
            value: b / 1048576.0,
            unit: "MiB",
            goal: None,
            how: "Chromium Performance.getMetrics JSHeapUsedSize after the first render".into(),
        });
    }
}

fn rollout_overhead(server: &Server, tenant: &Tenant, count: u64, rows: &mut Vec<Row>) {
    // The sim runners take no job: pending jobs never end, so the rollout
    // would sit in its first wave. Make every wave 100 %: one wave of every
    // runner, all started at once, is the most the driver ever watches.
    let pid = server.child.id();
    let cpu_secs = |pid: u32| cpu_ticks(pid) as f64 / ticks_per_sec();
    let cpu0 = cpu_secs(pid);
    let t = Instant::now();
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/rollouts",
        Some(
            json!({"selector": "", "wave": "100%", "deadline_s": 3600, "job": {"command": "true"}}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(300), "every target started", || {
        let (_, v) = tenant.call("GET", &format!("/api/v1/rollouts/{id}"), None);
        (v["totals"]["running"].as_u64()? >= count).then_some(())
    });
    let started = t.elapsed();
    let cpu_start = cpu_secs(pid) - cpu0;
    // The driver's steady cost: watching every running target for 10 s.
    let c1 = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(10));
    let watch = (cpu_secs(pid) - c1) / 10.0;
    // The answer may not come in time with the driver at work: the
    // server goes away with the bench anyway.
    let abort = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tenant.call("POST", &format!("/api/v1/rollouts/{id}/abort"), None)
    }));
    eprintln!("bench: rollout abort: {:?}", abort.map(|(st, _)| st));
    rows.push(Row {
        what: format!("rollout over {count} runners: server CPU to start, per runner"),
        value: cpu_start * 1e6 / count as f64,
        unit: "us",
        goal: None,
        how: format!("utime+stime of the server (/proc/PID/stat), POST /rollouts until all {count} jobs made ({:.1} s)", started.as_secs_f64()),
    });
    rows.push(Row {
        what: format!("rollout over {count} runners: driver CPU while they run"),
        value: watch * 100.0,
        unit: "%",
        goal: None,
        how: "server CPU over 10 s with every target's job pending (the driver reads the running targets' jobs in one query, each second past 500 running)".into(),
    });
}

/// How long the update rollout's runners have to come back: past the
/// start and the 10 s watch; then they all fail and the rollout ends.
const RECONNECT_S: u64 = 60;

fn update_rollout_overhead(server: &Server, tenant: &Tenant, count: u64, rows: &mut Vec<Row>) {
    // A release the sims are offered (they ignore the offer): a binary
    // and a signature for their architecture, their bytes never checked.
    let arch = std::env::consts::ARCH;
    for file in [format!("tether-{arch}"), format!("tether-{arch}.minisig")] {
        let (st, v) = server.api().upload(
            &format!("/api/v1/releases/9.9.9/{file}"),
            &server.admin_token,
            b"not a binary",
        );
        assert_eq!(st, 201, "{v}");
    }
    let pid = server.child.id();
    let cpu_secs = |pid: u32| cpu_ticks(pid) as f64 / ticks_per_sec();
    let cpu0 = cpu_secs(pid);
    let t = Instant::now();
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/rollouts",
        Some(json!({"selector": "", "wave": "100%",
            "update": {"version": "9.9.9", "reconnect_s": RECONNECT_S}})),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(300), "every runner offered", || {
        let (_, v) = tenant.call("GET", &format!("/api/v1/rollouts/{id}"), None);
        (v["totals"]["running"].as_u64()? >= count).then_some(())
    });
    let started = t.elapsed();
    let cpu_start = cpu_secs(pid) - cpu0;
    let c1 = cpu_secs(pid);
    std::thread::sleep(Duration::from_secs(10));
    let watch = (cpu_secs(pid) - c1) / 10.0;
    let clean = started.as_secs() + 10 < RECONNECT_S;
    // At the reconnect bound every target fails and the driver stops, so
    // the job rollout's figures after are its driver's alone.
    let ended = wait_for_opt(Duration::from_secs(RECONNECT_S + 120), || {
        let (_, v) = tenant.call("GET", &format!("/api/v1/rollouts/{id}"), None);
        (v["over"] == true).then_some(v)
    });
    eprintln!(
        "bench: update rollout ended: {:?}",
        ended.map(|v| v["totals"].clone())
    );
    let note = if clean {
        ""
    } else {
        " (the start outlasted the reconnect bound: some targets failed in the watch)"
    };
    rows.push(Row {
        what: format!("update rollout over {count} runners: server CPU to start, per runner"),
        value: cpu_start * 1e6 / count as f64,
        unit: "us",
        goal: None,
        how: format!(
            "utime+stime of the server, POST /rollouts {{update}} until all {count} have their own desired version and an offer ({:.1} s){note}",
            started.as_secs_f64()
        ),
    });
    rows.push(Row {
        what: format!("update rollout over {count} runners: driver CPU while they update"),
        value: watch * 100.0,
        unit: "%",
        goal: None,
        how: format!("server CPU over 10 s with every target offered (the driver reads the running targets' versions and the newest reports every second){note}"),
    });
}

/// `wait_for` that gives up quietly.
fn wait_for_opt<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
