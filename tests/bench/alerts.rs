//! `make bench` alerts part (BENCH_ONLY=alerts): what rule evaluation costs
//! the server (issue 20). BENCH_ALERT_RUNNERS (1,000) tether-sim runners
//! send metrics every 5 s (65 series each) for BENCH_ALERT_SECS (60 s),
//! three times against a fresh release server: with no alert rules, with
//! 50 rules and no channel, and with the same 50 rules notifying a webhook
//! (41 metric rules over every kind of series the sim sends, with globs
//! and ratios, and 9 of other kinds). The sim makes each runner's
//! `cpu.busy` jump to 99 % once a minute (`--spike-every 12`), which one of
//! the 50 rules fires on (`for_s` 0); in the third run to a webhook
//! receiver here that stamps each arrival.
//!
//! A spike a minute on every one of 1,000 runners is ~33 transitions a
//! second (firing, then resolved at the next record), ~29 of them sent: a
//! storm no real fleet's rules make (and that an operator would silence),
//! kept to measure the delay under load. So the cost is shown twice: rule
//! evaluation (every record judged, every transition stored, nothing
//! sent; the goal's figure) and with the delivery of that storm.
//!
//! Figures: the server's CPU (utime+stime over the same window of each
//! run) side by side and the differences, and the delay from the sim
//! sending the spiking record to the notification arriving (p50, p99,
//! and how many of the spikes were notified).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::util::hooks::{Hooks, RECEIVED_MS};
use super::util::*;
use super::{env_secs, percentile, ticks_per_sec, Row};

/// Records between two spikes of one runner (a minute at 5 s).
const SPIKE_EVERY: u64 = 12;
/// The rule the spikes fire.
const SPIKE_RULE: &str = "cpu-spike";

pub fn run(rows: &mut Vec<Row>) {
    let count = env_secs("BENCH_ALERT_RUNNERS", 1000);
    let hold = env_secs("BENCH_ALERT_SECS", 60).max(30);
    let bare = fleet(count, hold, None);
    let quiet = fleet(count, hold, Some(None));
    let hooks = Hooks::start();
    let ruled = fleet(count, hold, Some(Some(&hooks)));
    let rate = ruled.spikes.len() as f64 / hold as f64;

    for (name, f) in [
        ("no rules", &bare),
        ("50 rules, no channel", &quiet),
        ("50 rules, webhook", &ruled),
    ] {
        rows.push(Row {
            what: format!("alerts: server CPU, {count} runners, metrics 5 s, {name}"),
            value: f.cpu_pct,
            unit: "% core",
            goal: None,
            how: format!(
                "utime+stime over {:.0} s; tether-sim --metrics --spike-every {SPIKE_EVERY}",
                f.window_secs
            ),
        });
    }
    rows.push(Row {
        what: format!("alerts: server CPU added by 50 rules (evaluation), {count} runners"),
        value: quiet.cpu_pct - bare.cpu_pct,
        unit: "% core",
        goal: Some(5.0),
        how: "no channel minus no rules: records judged, transitions stored, nothing sent".into(),
    });
    rows.push(Row {
        what: format!(
            "alerts: server CPU added by 50 rules and ~{:.0} notifications/s, {count} runners",
            rate * 2.0
        ),
        value: ruled.cpu_pct - bare.cpu_pct,
        unit: "% core",
        goal: None,
        how: "webhook minus no rules (every runner spikes once a minute: a storm)".into(),
    });

    // Each spike against the first firing notification for its runner
    // that arrived after it (and before the runner's next spike).
    let got = hooks.drain_for(Duration::from_secs(3));
    let mut arrivals: HashMap<String, Vec<u64>> = HashMap::new();
    for n in got
        .iter()
        .filter(|n| n["rule_name"] == SPIKE_RULE && n["state"] == "firing")
    {
        if let (Some(name), Some(at)) = (n["runner_name"].as_str(), n[RECEIVED_MS].as_u64()) {
            arrivals.entry(name.to_owned()).or_default().push(at);
        }
    }
    let mut by_runner: HashMap<&str, Vec<u64>> = HashMap::new();
    for (name, sent) in &ruled.spikes {
        by_runner.entry(name).or_default().push(*sent);
    }
    let mut delays = Vec::new();
    for (name, sent) in &mut by_runner {
        sent.sort_unstable();
        let mut got = arrivals.remove(*name).unwrap_or_default();
        got.sort_unstable();
        for (i, s) in sent.iter().enumerate() {
            let next = sent.get(i + 1).copied().unwrap_or(u64::MAX);
            if let Some(at) = got.iter().find(|&&a| a >= *s && a < next) {
                delays.push((at - s) as f64);
            }
        }
    }
    let spikes = ruled.spikes.len();
    eprintln!(
        "bench alerts: {spikes} spikes sent, {} notified, {} notifications in all",
        delays.len(),
        got.len()
    );
    let notified_pct = if spikes == 0 {
        0.0
    } else {
        100.0 * delays.len() as f64 / spikes as f64
    };
    rows.push(Row {
        what: format!("alerts: spikes notified, {count} runners, 50 rules"),
        value: notified_pct,
        unit: "%",
        goal: None,
        how: format!(
            "{} of {spikes} spikes (~{:.0}/s) had a firing notification",
            delays.len(),
            spikes as f64 / hold as f64
        ),
    });
    if delays.is_empty() {
        return;
    }
    for (p, goal) in [(0.5, None), (0.99, Some(1000.0))] {
        rows.push(Row {
            what: format!("alerts: sample sent to notification received, p{:.0}", p * 100.0),
            value: percentile(&mut delays, p),
            unit: "ms",
            goal,
            how: "tether-sim's send time to the webhook receiver's arrival stamp (loopback, one clock)".into(),
        });
    }
}

struct Figures {
    cpu_pct: f64,
    window_secs: f64,
    /// (runner name, unix ms) of each spike sent.
    spikes: Vec<(String, u64)>,
}

/// One run: a fresh server, the sim fleet, and rules when `rules` is
/// given (notifying `hooks` when that is given too).
fn fleet(count: u64, hold: u64, rules: Option<Option<&Hooks>>) -> Figures {
    let server = Server::start_with(&["--enroll-rate", "0", "--alert-private-targets"]);
    let tenant = server.tenant("sim");
    if let Some(hooks) = rules {
        add_rules(&tenant, hooks.map(Hooks::url).as_deref());
    }
    std::thread::sleep(Duration::from_secs(1));
    let log = server.dir.path().join("spikes.log");
    let sim = runner_bin().with_file_name("tether-sim");
    let mut child = Command::new(&sim)
        .args(["--api", &server.url, "--token", &tenant.token, "--ca-file"])
        .arg(&server.ca)
        .args(["--count", &count.to_string(), "--heartbeat", "5s"])
        .args([
            "--duration",
            &format!("{hold}s"),
            "--metrics",
            "--metrics-interval",
            "5s",
        ])
        .args(["--spike-every", &SPIKE_EVERY.to_string(), "--spike-log"])
        .arg(&log)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", sim.display()));
    eprintln!(
        "bench alerts: {count} simulated runners for {hold} s ({})",
        match rules {
            None => "no rules",
            Some(None) => "50 rules, no channel",
            Some(Some(_)) => "50 rules, webhook",
        }
    );
    let list = format!("/api/v1/runners?health=active&limit={}", count.min(10_000));
    wait_for(
        Duration::from_secs(hold.max(120)),
        "all simulated runners active",
        || {
            let (_, list) = tenant.call("GET", &list, None);
            (list.as_array()?.len() as u64 >= count).then_some(())
        },
    );
    // Settle (schemas sent, runner lookups cached), then the window: the
    // same length in both runs.
    std::thread::sleep(Duration::from_secs(5));
    let spid = server.child.id();
    let cpu0 = cpu_ticks(spid);
    let t1 = Instant::now();
    let window = Duration::from_secs(hold.saturating_sub(10).max(10));
    std::thread::sleep(window);
    let cpu = (cpu_ticks(spid) - cpu0) as f64 / ticks_per_sec();
    let secs = t1.elapsed().as_secs_f64();
    let _ = child.wait();
    let spikes = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (name, ms) = l.split_once(' ')?;
            Some((name.to_owned(), ms.parse().ok()?))
        })
        .collect();
    Figures {
        cpu_pct: cpu / secs * 100.0,
        window_secs: secs,
        spikes,
    }
}

/// 50 rules, one of which the spikes fire, notifying one webhook channel
/// to `url` (none: the rules have no channel).
fn add_rules(tenant: &Tenant, url: Option<&str>) {
    let channels = match url {
        Some(url) => {
            let (st, ch) = tenant.call(
                "POST",
                "/api/v1/alerts/channels",
                Some(json!({"name": "bench", "config": {"kind": "webhook", "url": url}})),
            );
            assert_eq!(st, 201, "{ch}");
            json!([ch["id"]])
        }
        None => json!([]),
    };
    let mut rules: Vec<Value> = vec![json!({"name": SPIKE_RULE, "kind": "metric",
        "series": "cpu.busy", "op": "above", "threshold": 95, "resolve": 50})];
    // Metric rules that look at every record and never fire.
    let metric: [(&str, Option<&str>, &str, f64); 8] = [
        ("mem.available", Some("mem.total"), "below", 1.0),
        ("fs.*.avail", Some("fs.*.size"), "below", 2.0),
        ("fs.*.inodes_used", Some("fs.*.inodes"), "above", 95.0),
        ("swap.used", Some("swap.total"), "above", 90.0),
        ("load.*", None, "above", 50.0),
        ("cpu*.iowait", None, "above", 60.0),
        ("net.*.rx_errs", None, "above", 1000.0),
        ("tcp.time_wait", None, "above", 100_000.0),
    ];
    for i in 0..40 {
        let (series, per, op, base) = metric[i % metric.len()];
        let threshold = if op == "below" {
            base - i as f64 * 0.01
        } else {
            base + i as f64
        };
        let mut r = json!({"name": format!("metric-{i}"), "kind": "metric", "series": series,
            "op": op, "threshold": threshold, "for_s": 60 * (i % 3)});
        if let Some(p) = per {
            r["per"] = json!(p);
        }
        rules.push(r);
    }
    // Kinds that metrics do not reach (their cost is elsewhere).
    for (i, kind) in [
        json!({"kind": "unreachable", "for_s": 300}),
        json!({"kind": "drift", "paths": ["listening"]}),
        json!({"kind": "job_failed"}),
        json!({"kind": "deploy_failed"}),
        json!({"kind": "update_failed"}),
        json!({"kind": "container_restarts", "count": 5, "within_s": 600}),
        json!({"kind": "container_unhealthy"}),
        json!({"kind": "container_exit_nonzero"}),
        json!({"kind": "log_match", "pattern": "panic"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = kind;
        r["name"] = json!(format!("other-{i}"));
        rules.push(r);
    }
    assert_eq!(rules.len(), 50);
    for mut r in rules {
        r["channels"] = channels.clone();
        let (st, v) = tenant.call("POST", "/api/v1/alerts/rules", Some(r));
        assert_eq!(st, 201, "{v}");
    }
}
