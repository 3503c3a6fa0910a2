//! Failures under a cluster (issue 18): two real `tether-server` replicas on
//! one real PostgreSQL and a real runner. The replica holding the runner is
//! `kill -9`ed mid-job, the runner reaching the other through HAProxy or
//! through its own list of URLs; and PostgreSQL itself is restarted under
//! both replicas. Each time the job's output is complete and byte-identical,
//! the runner is never linked to two replicas, and work goes on. A rollout
//! started on the replica holding the once-only lease is paused and resumed
//! through the other, and finishes there when its holder is `kill -9`ed.

use crate::reconnect::Haproxy;
use crate::replicas::{events_of, job, pair, through};
use crate::util::pg::Postgres;
use crate::util::*;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The job: `lines` numbered lines, a pause of 0.2 s every 100, then bytes
/// that are not UTF-8 (the output is relayed as bytes, not as text).
fn script(lines: u32) -> String {
    format!(
        "i=0; while [ $i -lt {lines} ]; do echo \"line $i\"; i=$((i+1)); \
         case $i in *00) sleep 0.2;; esac; done; printf '\\001\\377end'"
    )
}

fn expected(lines: u32) -> Vec<u8> {
    let mut want = Vec::new();
    for i in 0..lines {
        want.extend_from_slice(format!("line {i}\n").as_bytes());
    }
    want.extend_from_slice(b"\x01\xffend");
    want
}

/// Wait for the job to complete; its stored stdout fetched through `t`
/// equals what it printed, byte for byte.
fn assert_complete_and_identical(t: &Tenant, job_id: &str, lines: u32, limit: Duration) {
    let done = wait_for(limit, "the job to complete", || {
        let v = job(t, job_id);
        (v["complete"] == true).then_some(v)
    });
    assert_eq!(done["status"], "succeeded", "{done}");
    let mut got = Vec::new();
    t.api
        .stream(
            &format!("/api/v1/jobs/{job_id}/output?stream=stdout"),
            &t.token,
        )
        .read_to_end(&mut got)
        .unwrap();
    let want = expected(lines);
    assert_eq!(got.len(), want.len(), "stored bytes of {job_id}");
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        panic!(
            "output of {job_id} differs at byte {at}: got {:?}",
            String::from_utf8_lossy(&got[at.saturating_sub(40)..(at + 40).min(got.len())])
        );
    }
}

/// One GET that may fail (a replica just killed): the status and body.
fn try_get(api: &Api, path: &str, token: Option<&str>) -> Option<(u16, Value)> {
    let mut req = api.agent.get(format!("{}{}", api.base, path));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let mut resp = req
        .config()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .call()
        .ok()?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The links held by a replica, from its `/healthz` (None: it does not answer).
fn links(server: &Server) -> Option<u64> {
    links_at(&server.api())
}

fn links_at(api: &Api) -> Option<u64> {
    try_get(api, "/healthz", None).and_then(|(_, v)| v["links"].as_u64())
}

/// The runner's rows in the links table: `replica:generation` each.
fn link_rows(pg: &Postgres, db: &str, runner: &str) -> Vec<String> {
    let out = pg.query(
        db,
        &format!(
            "SELECT replica_id || ':' || generation FROM runner_links WHERE runner_id = '{runner}'"
        ),
    );
    out.lines().map(str::to_owned).collect()
}

/// One look, every ~100 ms, while the holder is killed and after.
struct Sample {
    at: Duration,
    /// The runner's health on the survivor ("no answer" when it did not).
    health: String,
    /// Links the holder's `/healthz` says it holds (None once killed).
    held: Option<u64>,
    /// Links the survivor's `/healthz` says it holds.
    survivor: Option<u64>,
    /// The runner's rows in the links table.
    rows: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Haproxy,
    Urls,
}

fn kill_9_of_the_replica_holding_the_runner(via: Via) {
    let pg = Postgres::start();
    let db = format!("kill_{via:?}").to_lowercase();
    let url = pg.database(&db);
    let p = pair(&url);
    let tenant = p.a.tenant("failover");
    let mut runner = Runner::enroll(&p.a, &tenant);
    let _lb;
    let server_arg = match via {
        Via::Haproxy => {
            let lb = Haproxy::start(&[&p.a.addr(), &p.b.addr()]);
            let u = lb.url.clone();
            _lb = lb;
            u
        }
        Via::Urls => format!("{},{}", p.a.url, p.b.url),
    };
    runner.start(&["--server", &server_arg, "--heartbeat", "1s"]);
    let id = runner.id.clone();
    // HAProxy picks the backend: the one holding the link is "the holder".
    let a_holds = wait_for(Duration::from_secs(20), "the runner linked", || {
        match (links(&p.a), links(&p.b)) {
            (Some(1), Some(0)) => Some(true),
            (Some(0), Some(1)) => Some(false),
            _ => None,
        }
    });
    let (mut holder, survivor) = if a_holds { (p.a, p.b) } else { (p.b, p.a) };
    let holder_id = if a_holds { "a" } else { "b" };
    let survivor_id = if a_holds { "b" } else { "a" };
    let on_s = through(&tenant, &survivor);
    on_s.wait_health(&id, "active", Duration::from_secs(10));
    let first = link_rows(&pg, &db, &id);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].starts_with(&format!("{holder_id}:")), "{first:?}");

    // ~6 s of numbered lines, made through the survivor.
    let lines = 3000;
    let (st, v) = on_s.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [id], "command": script(lines) })),
    );
    assert_eq!(st, 201, "{v}");
    let job_id = v[0]["id"].as_str().unwrap().to_owned();

    let holder_api = holder.api();
    let t0 = Instant::now();
    let mut relinked_at = Duration::ZERO;
    let holder_alive = AtomicBool::new(true);
    let done = AtomicBool::new(false);
    let samples = std::thread::scope(|s| {
        // Every ~100 ms: the runner's health on the survivor, the links
        // each replica says it holds, and the links table.
        let monitor = s.spawn(|| {
            let mut samples: Vec<Sample> = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let health = try_get(
                    &survivor.api(),
                    &format!("/api/v1/runners/{id}"),
                    Some(&tenant.token),
                )
                .map(|(_, v)| v["health"].as_str().unwrap_or("").to_owned())
                .unwrap_or_else(|| "no answer".into());
                let held = if holder_alive.load(Ordering::SeqCst) {
                    links_at(&holder_api)
                } else {
                    None
                };
                let rows = link_rows(&pg, &db, &id);
                samples.push(Sample {
                    at: t0.elapsed(),
                    health,
                    held,
                    survivor: links(&survivor),
                    rows,
                });
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });

        // Mid-job: some output stored, the job not complete.
        std::thread::sleep(Duration::from_secs(2));
        let v = job(&on_s, &job_id);
        assert_eq!(v["complete"], false, "still running before the kill: {v}");
        holder_alive.store(false, Ordering::SeqCst);
        let killed = Instant::now();
        signal(&holder.child, libc::SIGKILL);
        assert!(wait_exit(&mut holder.child, Duration::from_secs(5)).is_some());
        wait_for(
            Duration::from_secs(30),
            "the runner linked to the survivor",
            || (links(&survivor) == Some(1)).then_some(()),
        );
        relinked_at = t0.elapsed();
        eprintln!(
            "{via:?}: runner linked to replica {survivor_id} {:?} after kill -9 of {holder_id}",
            killed.elapsed()
        );
        on_s.wait_health(&id, "active", Duration::from_secs(10));
        assert_complete_and_identical(&on_s, &job_id, lines, Duration::from_secs(60));
        // Watching on past the survivor's reaper of silent replicas (STALE
        // 10 s, run every HEARTBEAT 2 s: `cluster/replica.rs`): it must not
        // take the relinked runner for one of the dead replica's.
        let past_reaper = Duration::from_secs(15);
        std::thread::sleep(past_reaper.saturating_sub(killed.elapsed()));
        done.store(true, Ordering::SeqCst);
        monitor.join().unwrap()
    });

    let mut healths: Vec<&str> = Vec::new();
    for Sample {
        at,
        health,
        held,
        survivor,
        rows,
    } in &samples
    {
        assert!(rows.len() <= 1, "at {at:?} the table links two: {rows:?}");
        assert!(
            !(held == &Some(1) && survivor == &Some(1)),
            "at {at:?} both replicas hold the runner"
        );
        assert!(
            health == "active" || health == "unreachable",
            "at {at:?} health {health:?}"
        );
        assert!(
            *at < relinked_at || health == "active",
            "at {at:?}, after the relink at {relinked_at:?}, health {health:?}"
        );
        if healths.last() != Some(&health.as_str()) {
            healths.push(health);
        }
    }
    eprintln!(
        "{via:?}: {} samples; health on the survivor went {healths:?}",
        samples.len()
    );
    assert!(samples.len() >= 20, "too few samples: {}", samples.len());
    let last = link_rows(&pg, &db, &id);
    assert_eq!(last.len(), 1, "{last:?}");
    // The row names the survivor now (a generation is per replica: the
    // pair identifies a link, and the dead replica's row was fenced).
    let (rep, _) = last[0].split_once(':').unwrap();
    assert_eq!(rep, survivor_id, "{first:?} → {last:?}");
    assert_eq!(healths.last(), Some(&"active"), "{healths:?}");
    // The reaper ran within the watched window: the dead replica is gone.
    let left = pg.query(
        &db,
        &format!("SELECT count(*) FROM cluster_replicas WHERE id = '{holder_id}'"),
    );
    assert_eq!(left, "0", "replica {holder_id} reaped");
    drop(runner);
}

#[test]
fn kill_9_of_the_replica_holding_a_runner_mid_job_loses_no_output_via_haproxy_and_via_urls() {
    for via in [Via::Haproxy, Via::Urls] {
        kill_9_of_the_replica_holding_the_runner(via);
    }
}

#[test]
fn postgres_restarted_under_two_replicas_loses_nothing_acknowledged_and_notify_works_again() {
    let pg = Postgres::start();
    let db = "restart";
    let url = pg.database(db);
    let p = pair(&url);
    let on_a = p.a.tenant("restart");
    let on_b = through(&on_a, &p.b);
    let mut runner = Runner::enroll(&p.a, &on_a);
    runner.start(&[
        "--server",
        &format!("{},{}", p.a.url, p.b.url),
        "--heartbeat",
        "1s",
    ]);
    let id = runner.id.clone();
    on_b.wait_health(&id, "active", Duration::from_secs(20));
    assert_eq!(links(&p.a), Some(1), "the runner on A, the first URL");

    // A job acknowledged (201) before the restart, still printing through it.
    let lines = 4000;
    let (st, v) = on_b.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [id], "command": script(lines) })),
    );
    assert_eq!(st, 201, "{v}");
    let job_id = v[0]["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(1));
    let stopped = Instant::now();
    pg.stop_fast();
    for s in [&p.a, &p.b] {
        let v = wait_for(Duration::from_secs(15), "503 from /healthz", || {
            try_get(&s.api(), "/healthz", None).and_then(|(st, v)| (st == 503).then_some(v))
        });
        assert_eq!(v["database"], "unreachable", "{v}");
    }
    eprintln!("both replicas 503 {:?} after the stop", stopped.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    pg.start_again();
    for s in [&p.a, &p.b] {
        wait_for(Duration::from_secs(30), "200 from /healthz", || {
            try_get(&s.api(), "/healthz", None).and_then(|(st, _)| (st == 200).then_some(()))
        });
    }
    eprintln!(
        "both replicas 200 {:?} after PostgreSQL started again",
        started.elapsed()
    );
    assert_complete_and_identical(&on_b, &job_id, lines, Duration::from_secs(60));
    on_b.wait_health(&id, "active", Duration::from_secs(20));
    let rows = link_rows(&pg, db, &id);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        links(&p.a).unwrap_or(0) + links(&p.b).unwrap_or(0),
        1,
        "one replica holds the runner"
    );

    // A new job made on B after the restart: A's LISTEN hears it (its
    // event stream shows it) and the runner runs it well before any
    // periodic recheck would have found it.
    let holder = if links(&p.a) == Some(1) { &p.a } else { &p.b };
    let other = if links(&p.a) == Some(1) { &p.b } else { &p.a };
    let on_other = through(&on_a, other);
    let seen = events_of(holder.api().stream("/api/v1/events", &on_a.token), "job");
    std::thread::sleep(Duration::from_millis(300));
    let made = Instant::now();
    let (st, v) = on_other.call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [id], "command": script(300) })),
    );
    assert_eq!(st, 201, "{v}");
    let new_id = v[0]["id"].as_str().unwrap().to_owned();
    let ev = loop {
        let data = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the holder's event stream shows the job made on the other replica");
        let ev: Value = serde_json::from_str(&data).unwrap();
        if ev["id"] == new_id.as_str() {
            break ev;
        }
    };
    assert_eq!(ev["change"], "created", "{ev}");
    assert_complete_and_identical(&on_other, &new_id, 300, Duration::from_secs(20));
    eprintln!(
        "new job after the restart complete {:?} after the POST",
        made.elapsed()
    );
    // And the other way: the other replica LISTENs again too.
    let seen = events_of(other.api().stream("/api/v1/events", &on_a.token), "job");
    std::thread::sleep(Duration::from_millis(300));
    let (st, v) = through(&on_a, holder).call(
        "POST",
        "/api/v1/jobs",
        Some(json!({ "runners": [id], "command": script(100) })),
    );
    assert_eq!(st, 201, "{v}");
    let back_id = v[0]["id"].as_str().unwrap().to_owned();
    loop {
        let data = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the other replica's event stream shows the job made on the holder");
        let ev: Value = serde_json::from_str(&data).unwrap();
        if ev["id"] == back_id.as_str() {
            break;
        }
    }
    assert_complete_and_identical(&on_other, &back_id, 100, Duration::from_secs(20));
    drop(runner);
}

/// The replica holding the once-only lease (empty: none yet).
fn lease_holder(pg: &Postgres, db: &str) -> String {
    pg.query(
        db,
        "SELECT holder FROM cluster_leases WHERE name = 'once-only'",
    )
}

#[test]
fn a_rollout_is_paused_through_the_other_replica_and_finishes_there_when_its_driver_is_killed() {
    let pg = Postgres::start();
    let db = "rollout_moves";
    let url = pg.database(db);
    let p = pair(&url);
    let tenant = p.a.tenant("rollouts");
    let holder_id = wait_for(Duration::from_secs(20), "a lease holder", || {
        Some(lease_holder(&pg, db)).filter(|h| !h.is_empty())
    });
    let (mut holder, other) = if holder_id == "a" {
        (p.a, p.b)
    } else {
        (p.b, p.a)
    };
    let other_id = if holder_id == "a" { "b" } else { "a" };
    let on_h = through(&tenant, &holder);
    let on_o = through(&tenant, &other);
    // Four runners r1..r4, each with both URLs (the holder's link moves).
    let mut runners = Vec::new();
    for n in 1..=4 {
        let mut r = Runner::enroll(&holder, &tenant);
        r.start(&[
            "--server",
            &format!("{},{}", holder.url, other.url),
            "--heartbeat",
            "1s",
            "--docker-socket",
            "off",
        ]);
        on_o.wait_health(&r.id, "active", Duration::from_secs(20));
        let (st, v) = on_o.call(
            "PUT",
            &format!("/api/v1/runners/{}/name", r.id),
            Some(json!({"name": format!("r{n}")})),
        );
        assert_eq!(st, 200, "{v}");
        runners.push(r);
    }
    let (st, v) = on_o.call(
        "POST",
        "/api/v1/labels",
        Some(json!({"selector": "", "set": {"fleet": "moves"}})),
    );
    assert_eq!((st, v["changed"].as_u64()), (200, Some(4)), "{v}");

    // Started on the lease holder: one runner per wave, ~3 s each.
    let (st, v) = on_h.call(
        "POST",
        "/api/v1/rollouts",
        Some(json!({"selector": "fleet=moves", "wave": "1",
                    "job": {"command": "sleep 3; echo ran"}})),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/rollouts/{id}");
    let target = |i: usize| {
        let (st, v) = on_o.call("GET", &path, None);
        assert_eq!(st, 200, "{v}");
        (v["targets"][i].clone(), v)
    };
    let running = |i: usize| {
        wait_for(
            Duration::from_secs(30),
            &format!("target {i} running"),
            || {
                let (t, _) = target(i);
                (t["state"] == "running" && t["job_id"].is_string()).then(|| t["job_id"].clone())
            },
        )
    };
    let first = running(0);

    // Paused through the other replica: the answer says so, the first job
    // finishes, and nothing new starts.
    let (st, v) = on_o.call("POST", &format!("{path}/pause"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "paused", "{v}");
    assert_eq!(v["targets"][0]["job_id"], first, "{v}");
    assert_eq!(v["targets"][1]["state"], "waiting", "{v}");
    let (st, again) = on_o.call("POST", &format!("{path}/pause"), None);
    assert_eq!(st, 409, "paused already: {again}");
    wait_for(Duration::from_secs(30), "the first job to finish", || {
        (target(0).0["state"] == "succeeded").then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (t1, v) = target(1);
    assert_eq!(
        (&v["state"], &t1["state"]),
        (&json!("paused"), &json!("waiting")),
        "{v}"
    );
    assert!(t1["job_id"].is_null(), "{v}");
    for r in &runners[1..] {
        let (_, jobs) = on_o.call("GET", &format!("/api/v1/jobs?runner={}", r.id), None);
        assert_eq!(jobs.as_array().unwrap().len(), 0, "nothing started: {jobs}");
    }
    let (st, v) = on_o.call("POST", &format!("{path}/resume"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let second = running(1);

    // kill -9 of the lease holder mid-job: the other takes the lease and
    // the rollout finishes there.
    signal(&holder.child, libc::SIGKILL);
    assert!(wait_exit(&mut holder.child, Duration::from_secs(5)).is_some());
    let killed = Instant::now();
    let v = wait_for(Duration::from_secs(120), "the rollout to finish", || {
        let (_, v) = target(0);
        (v["over"] == true).then_some(v)
    });
    eprintln!(
        "rollout done on replica {other_id} {:?} after kill -9 of {holder_id}",
        killed.elapsed()
    );
    assert_eq!(lease_holder(&pg, db), other_id, "the lease moved");
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["live"], false, "{v}");
    let t = &v["totals"];
    assert_eq!(
        (&t["succeeded"], &t["failed"], &t["skipped"], &t["waiting"]),
        (&json!(4), &json!(0), &json!(0), &json!(0)),
        "{v}"
    );
    assert_eq!(v["targets"][0]["job_id"], first, "{v}");
    assert_eq!(
        v["targets"][1]["job_id"], second,
        "kept across the move: {v}"
    );
    // Each runner ran exactly one job: the rollout's.
    for (i, r) in runners.iter().enumerate() {
        let (_, jobs) = on_o.call("GET", &format!("/api/v1/jobs?runner={}", r.id), None);
        let jobs = jobs.as_array().unwrap();
        assert_eq!(jobs.len(), 1, "r{}: {jobs:?}", i + 1);
        assert_eq!(jobs[0]["id"], v["targets"][i]["job_id"], "{v}");
        assert_eq!(
            job(&on_o, jobs[0]["id"].as_str().unwrap())["status"],
            "succeeded"
        );
    }
    let (st, v) = on_o.call("POST", &format!("{path}/abort"), None);
    assert_eq!(st, 409, "over: {v}");
    drop(runners);
}

/// A replica's figure from `/api/v1/replica/metrics` (None: no answer).
fn replica_metric(server: &Server, name: &str) -> Option<f64> {
    let (st, v) = server.api().call(
        "GET",
        "/api/v1/replica/metrics",
        Some(&server.admin_token),
        None,
    );
    if st != 200 {
        return None;
    }
    v.as_str()?
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

/// Many runners move to a replica at once (issue 18: the one they were
/// linked to is `kill -9`ed) while a metric rule reads what they send
/// every second: the survivor's alert engine owns every one of them
/// (their states read from the store in batches) within the limit, and
/// drops no observation. TETHER_TAKEOVER_RUNNERS simulated runners
/// (`tether-sim`, 300); the times are printed. Before the batched reads
/// (one query per runner, on the engine task), 500 runners were owned
/// 17 s after the last one linked; now 1 s (debug build, 2 shared cores).
#[test]
fn runners_moving_to_a_replica_at_once_are_taken_over_by_its_alert_engine() {
    let count: u64 = std::env::var("TETHER_TAKEOVER_RUNNERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let pg = Postgres::start();
    let p = crate::replicas::pair_with(&pg.database("takeover"), &["--enroll-rate", "0"]);
    let tenant = p.a.tenant("takeover");
    // Never fires: every record is evaluated, nothing is notified.
    let (st, v) = tenant.call(
        "POST",
        "/api/v1/alerts/rules",
        Some(json!({"name": "load", "kind": "metric", "series": "load.1", "op": "above", "threshold": 1e9})),
    );
    assert_eq!(st, 201, "{v}");
    // Everything to A while it is up, then to B.
    let lb = Haproxy::first(&[&p.a.addr(), &p.b.addr()], 4 * count as usize + 100);
    let sim = runner_bin().with_file_name("tether-sim");
    let mut child = std::process::Command::new(&sim)
        .args(["--api", &lb.url, "--token", &tenant.token, "--ca-file"])
        .arg(&p.a.ca)
        .args(["--count", &count.to_string(), "--heartbeat", "5s"])
        .args(["--duration", "600s", "--retries", "8", "--reconnect"])
        .args(["--metrics", "--metrics-interval", "1s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", sim.display()));
    let (mut a, b) = (p.a, p.b);
    let owned = |s: &Server| replica_metric(s, "tether_replica_alert_runners_owned").unwrap_or(0.0);
    let dropped = |s: &Server| replica_metric(s, "tether_replica_alert_observations_dropped_total");
    let start = Instant::now();
    wait_for(Duration::from_secs(300), "every runner linked to A", || {
        (links(&a) == Some(count)).then_some(())
    });
    let linked = start.elapsed();
    eprintln!("{count} runners linked to A in {linked:?}");
    wait_for(
        Duration::from_secs(120),
        "A's engine owning them all",
        || (owned(&a) as u64 == count).then_some(()),
    );
    let first_owned = start.elapsed();
    assert_eq!(owned(&b), 0.0);
    let dropped_b = dropped(&b).unwrap();

    eprintln!(
        "A's engine owns them all at {:?}; killing A",
        start.elapsed()
    );
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let relinked = wait_for(Duration::from_secs(120), "every runner linked to B", || {
        (links(&b) == Some(count)).then(|| killed.elapsed())
    });
    let took = wait_for(
        Duration::from_secs(120),
        "B's engine owning them all",
        || (owned(&b) as u64 == count).then(|| killed.elapsed()),
    );
    std::thread::sleep(Duration::from_secs(3));
    let lost = dropped(&b).unwrap() - dropped_b;
    eprintln!(
        "take-over of {count} runners: linked to A in {linked:?}, owned by A's engine at {first_owned:?}; \
         A killed: all linked to B in {relinked:?}, all owned by B's engine in {took:?}, \
         observations dropped on B: {lost}"
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lost, 0.0, "observations dropped on B");
    assert_eq!(owned(&b) as u64, count);
}
