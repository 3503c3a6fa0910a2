//! `make bench BENCH_BASE=<rev>`: the same measurements for this build and
//! for revision `rev`, printed side by side with the ratio.
//!
//! `rev`'s tree is extracted and built once under `target/bench-base/<rev>`
//! (`tests/util/prev.rs`): its release server and simulator, its static
//! x86_64 runner (its own `./build.sh`), its footprint bench. Then, for
//! each of BENCH_ROUNDS rounds (default 1), `rev`'s bench and this one run
//! one after the other as child processes with the same knobs (BENCH_ONLY,
//! BENCH_IDLE_SECS, ...), each measuring its own server and runner; a
//! figure is the median over the rounds. Each side prints its usual table;
//! this reads the tables back by row name, so rows only one side has are
//! shown with a dash on the other.
//!
//! The first build of a revision takes several minutes (release server
//! with LTO, static runner, bench); later runs reuse it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::util::prev;

/// One side's figures: row name → (value, unit), in the order printed.
type Table = Vec<(String, f64, String)>;

pub fn run(rev: &str) {
    let rounds = super::env_secs("BENCH_ROUNDS", 1).max(1);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only.split(',').any(|p| p == name);
    build_base(rev);
    let (mut before, mut after): (Vec<Table>, Vec<Table>) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("bench: round {} of {rounds}: {rev}", round + 1);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut base = Command::new(cargo);
        base.args(["bench", "--locked", "--bench", "footprint"])
            .current_dir(prev::tree(rev))
            .env("CARGO_TARGET_DIR", prev::base_dir(rev).join("target"));
        before.push(table_of(base, rev));
        eprintln!("bench: round {} of {rounds}: this build", round + 1);
        let mut now = Command::new(std::env::current_exe().unwrap());
        now.arg("--bench").current_dir(env!("CARGO_MANIFEST_DIR"));
        after.push(table_of(now, "this build"));
        if part("sim") {
            let release = prev::base_dir(rev).join("target/release");
            let this = crate::util::runner_bin().with_file_name("tether-server");
            let this = this.parent().unwrap().to_owned();
            before
                .last_mut()
                .unwrap()
                .extend(steady_idle(&release, rev));
            after
                .last_mut()
                .unwrap()
                .extend(steady_idle(&this, "this build"));
        }
    }
    print(rev, rounds, &median_table(&before), &median_table(&after));
}

/// `rev`'s server, simulator, static runner and bench, built when missing.
fn build_base(rev: &str) {
    let dir = prev::base_dir(rev);
    let src = prev::tree(rev);
    let release = dir.join("target/release");
    if !release.join("tether-server").exists() || !release.join("tether-sim").exists() {
        eprintln!("bench: building {rev}'s server (release; first time only)");
        prev::cargo(
            rev,
            &[
                "build",
                "--locked",
                "--release",
                "-p",
                "tether-server",
                "--bins",
            ],
        );
    }
    // The static runner only for the parts that run it (BENCH_ONLY).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runs_runner = only.is_empty()
        || only
            .split(',')
            .any(|p| matches!(p, "idle" | "logs" | "jobs" | "term" | "update" | "attack"));
    let musl = src.join("dist/x86_64-unknown-linux-musl/tether");
    if runs_runner && !musl.exists() {
        eprintln!("bench: building {rev}'s static runner (./build.sh x86_64-unknown-linux-musl)");
        let st = Command::new("./build.sh")
            .arg("x86_64-unknown-linux-musl")
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .stdin(Stdio::null())
            .status()
            .expect("run build.sh");
        assert!(st.success() && musl.exists(), "{rev}'s ./build.sh failed");
    }
    // Cheap when built: cargo only checks.
    eprintln!("bench: building {rev}'s footprint bench");
    prev::cargo(
        rev,
        &["bench", "--locked", "--bench", "footprint", "--no-run"],
    );
}

/// Run one side's bench (its progress to our stderr) and read its table.
fn table_of(mut cmd: Command, label: &str) -> Table {
    cmd.env_remove("BENCH_BASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start the bench of {label}: {e}"));
    let mut table = Vec::new();
    let mut in_table = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("measure ") {
            in_table = true;
        } else if in_table {
            if let Some(row) = parse_row(&line) {
                table.push(row);
            }
        }
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "the bench of {label} failed: {st}");
    assert!(!table.is_empty(), "the bench of {label} printed no table");
    table
}

/// A row of the table `main` prints: the name, then the value with three
/// decimals (`{:>10.3}`), then the unit in six columns (`{:<6}`).
fn parse_row(line: &str) -> Option<(String, f64, String)> {
    let mut search = 0;
    while let Some(off) = line[search..].find(|c: char| c.is_ascii_digit() || c == '-') {
        let at = search + off;
        let end = line[at..].find(' ').map_or(line.len(), |e| at + e);
        let token = &line[at..end];
        let three_decimals = token
            .split_once('.')
            .is_some_and(|(_, d)| d.len() == 3 && d.bytes().all(|b| b.is_ascii_digit()));
        if three_decimals && line[..at].ends_with(' ') {
            if let Ok(value) = token.parse::<f64>() {
                let name = line[..at].trim_end().to_owned();
                let unit: String = line[end..].chars().skip(1).take(6).collect();
                return Some((name, value, unit.trim().to_owned()));
            }
        }
        search = end;
        if search >= line.len() {
            break;
        }
    }
    None
}

/// Per row, the median over the rounds (rows in the first round's order).
fn median_table(rounds: &[Table]) -> Table {
    let mut values: HashMap<&str, Vec<f64>> = HashMap::new();
    for t in rounds {
        for (name, v, _) in t {
            values.entry(name).or_default().push(*v);
        }
    }
    let mut out = Table::new();
    let mut seen = std::collections::HashSet::new();
    for t in rounds {
        for (name, _, unit) in t {
            if seen.insert(name.clone()) {
                let mut v = values[name.as_str()].clone();
                out.push((name.clone(), super::median(&mut v), unit.clone()));
            }
        }
    }
    out
}

fn print(rev: &str, rounds: u64, before: &Table, after: &Table) {
    let base: HashMap<&str, f64> = before.iter().map(|(n, v, _)| (n.as_str(), *v)).collect();
    let now: HashMap<&str, f64> = after.iter().map(|(n, v, _)| (n.as_str(), *v)).collect();
    println!();
    println!(
        "{:<66} {:>12} {:>12} {:<6} {:>7}",
        "measure", rev, "this build", "unit", "now/base"
    );
    let fmt = |v: Option<&f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    let mut rows: Vec<(&str, &str)> = after
        .iter()
        .map(|(n, _, u)| (n.as_str(), u.as_str()))
        .collect();
    rows.extend(
        before
            .iter()
            .filter(|(n, _, _)| !now.contains_key(n.as_str()))
            .map(|(n, _, u)| (n.as_str(), u.as_str())),
    );
    for (name, unit) in rows {
        let (b, a) = (base.get(name), now.get(name));
        let ratio = match (b, a) {
            (Some(b), Some(a)) if *b != 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "{:<66} {:>12} {:>12} {:<6} {:>7}",
            name,
            fmt(b),
            fmt(a),
            unit,
            ratio
        );
    }
    println!(
        "\nmedian of {rounds} round(s) per side, {rev} then this build in each round; \
         now/base above 1.00 is more (worse for sizes, times and RSS, better for MB/s)."
    );
}

/// An idle fleet measured the same way for both sides, by this harness
/// (each side's own bench measures CPU from the moment all are active,
/// which catches the tail of the connect storm: work a server defers past
/// the hello lands in that window). Here `bin`'s server and simulator run
/// BENCH_STEADY_RUNNERS (1,000) runners with a 5 s heartbeat; after all
/// are active and BENCH_STEADY_SETTLE_SECS (10) more, CPU over
/// BENCH_STEADY_SECS (30), and RSS.
fn steady_idle(bin: &std::path::Path, label: &str) -> Table {
    use crate::util::{rss_kib, wait_for, Api, TempDir};
    use std::time::{Duration, Instant};
    let count = super::env_secs("BENCH_STEADY_RUNNERS", 1000);
    let settle = super::env_secs("BENCH_STEADY_SETTLE_SECS", 10);
    let window = super::env_secs("BENCH_STEADY_SECS", 30);
    eprintln!("bench: {label}: {count} idle simulated runners, steady state");
    let dir = TempDir::new("steady");
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let mut server = Command::new(bin.join("tether-server"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--enroll-rate",
            "0",
            "--data-dir",
        ])
        .arg(&data)
        .env("TETHER_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start {label}'s server: {e}"));
    let url = wait_for(Duration::from_secs(30), "server.url", || {
        std::fs::read_to_string(data.join("server.url"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let ca = data.join("tls/ca.pem");
    let api = Api::new(&url, &ca);
    let (st, v) = api.call(
        "POST",
        "/api/v1/tenants",
        Some(admin.trim()),
        Some(serde_json::json!({ "name": "steady" })),
    );
    assert_eq!(st, 201, "create tenant: {v}");
    let token = v["api_token"].as_str().unwrap().to_owned();
    let rss0 = rss_kib(server.id());
    let mut sim = Command::new(bin.join("tether-sim"))
        .args(["--api", &url, "--token", &token, "--ca-file"])
        .arg(&ca)
        .args(["--count", &count.to_string(), "--heartbeat", "5s"])
        .args(["--duration", &format!("{}s", 120 + settle + window)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {label}'s tether-sim: {e}"));
    let list = format!("/api/v1/runners?health=active&limit={}", count.min(10_000));
    wait_for(
        Duration::from_secs(120),
        "all simulated runners active",
        || {
            let (_, v) = api.call("GET", &list, Some(&token), None);
            (v.as_array()?.len() as u64 >= count).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(settle));
    let pid = server.id();
    let cpu0 = thread_cpu_secs(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(window));
    let cpu = thread_cpu_secs(pid) - cpu0;
    let secs = t0.elapsed().as_secs_f64();
    let rss1 = rss_kib(pid);
    let _ = sim.kill();
    let _ = sim.wait();
    let _ = server.kill();
    let _ = server.wait();
    vec![
        (
            format!("server CPU, {count} idle runners, steady ({settle} s after all active)"),
            cpu / secs * 100.0,
            "% core".into(),
        ),
        (
            format!("server RSS per runner, {count} runners, steady"),
            rss1.saturating_sub(rss0) as f64 / count as f64,
            "KiB".into(),
        ),
    ]
}

/// CPU seconds `pid` has used, threads that ended included (the blocking
/// pool's come and go): utime+stime in 10 ms ticks, fine over a 30 s window.
fn thread_cpu_secs(pid: u32) -> f64 {
    crate::util::cpu_ticks(pid) as f64 / super::ticks_per_sec()
}
