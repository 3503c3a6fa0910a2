//! `make bench` trust section (BENCH_ONLY=trust; issue 19's figures):
//!
//! - what checking one signed action costs a host: `examples/trust_verify.rs`
//!   (the runner's own `trust::Verifier` on a Debian-minisign-signed job)
//!   built with `build.sh`'s release flags (`BUILD_EXAMPLE=trust_verify`)
//!   for x86_64, armv7 and mips, run natively and under qemu-user with the
//!   CPU models `tests/cross_arch.rs` uses (qemu's speed is not the
//!   board's: the emulated figures are upper bounds of a sort, read them as
//!   "well under a millisecond" or not);
//! - what the audit trail adds to each mutating API call: the append the
//!   audit layer awaits before answering, timed on the server's SQLite trail
//!   in a file (`server/examples/trail_append.rs`, release build), p50 and
//!   p99 (goal: p99 ≤ 1 ms).

use std::path::PathBuf;
use std::process::Command;

use super::Row;

/// (target, qemu program and CPU model, or none: native).
const TARGETS: [(&str, Option<(&str, &str)>); 3] = [
    ("x86_64-unknown-linux-musl", None),
    (
        "armv7-unknown-linux-musleabihf",
        Some(("qemu-arm-static", "cortex-a7")),
    ),
    (
        "mips-unknown-linux-musl",
        Some(("qemu-mips-static", "24Kc")),
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `key=value` pairs of a line the examples print.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn run(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!(
            "bench trust: {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run_all(rows: &mut Vec<Row>) {
    verification(rows);
    trail(rows);
}

fn verification(rows: &mut Vec<Row>) {
    let targets: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
    let built = Command::new(root().join("build.sh"))
        .args(&targets)
        .env("BUILD_EXAMPLE", "trust_verify")
        .current_dir(root())
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!(
            "bench trust: BUILD_EXAMPLE=trust_verify ./build.sh failed; no verification rows"
        );
        return;
    }
    for (target, qemu) in TARGETS {
        let bin = root().join("dist").join(target).join("trust_verify");
        // Fewer rounds under emulation: each is ~100× slower.
        let rounds = if qemu.is_some() { "200" } else { "2000" };
        let mut cmd = match qemu {
            None => Command::new(&bin),
            Some((q, cpu)) => {
                let mut c = Command::new(q);
                c.args(["-cpu", cpu]).arg(&bin);
                c
            }
        };
        cmd.arg(rounds);
        let Some(line) = run(&mut cmd) else { continue };
        let how = match qemu {
            None => format!("BUILD_EXAMPLE=trust_verify ./build.sh {target}; dist/{target}/trust_verify {rounds}"),
            Some((q, cpu)) => format!("{q} -cpu {cpu} dist/{target}/trust_verify {rounds} (emulated)"),
        };
        for (key, what) in [("median_us", "median"), ("p99_us", "p99")] {
            if let Some(v) = field(&line, key) {
                rows.push(Row {
                    what: format!("trust: signed job check on the host, {what}, {target}"),
                    value: v,
                    unit: "µs",
                    goal: None,
                    how: how.clone(),
                });
            }
        }
    }
}

fn trail(rows: &mut Vec<Row>) {
    let built = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "tether-server",
            "--example",
            "trail_append",
        ])
        .current_dir(root())
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("bench trust: building the trail_append example failed; no audit rows");
        return;
    }
    let bin = super::util::target_dir().join("release/examples/trail_append");
    let dir = super::util::TempDir::new("bench-trail");
    let n = 5000;
    let Some(line) = run(Command::new(&bin).arg(dir.path()).arg(n.to_string())) else {
        return;
    };
    let how = format!(
        "cargo build --release -p tether-server --example trail_append; trail_append DIR {n} (SQLite file, WAL)"
    );
    for (key, what, goal) in [("p50_us", "p50", None), ("p99_us", "p99", Some(1.0))] {
        if let Some(v) = field(&line, key) {
            rows.push(Row {
                what: format!("audit: trail append per mutating API call, {what}"),
                value: v / 1000.0,
                unit: "ms",
                goal,
                how: how.clone(),
            });
        }
    }
    if let Some(v) = field(&line, "verify_ms") {
        rows.push(Row {
            what: format!("audit: `audit verify` of the {n}-entry chain"),
            value: v,
            unit: "ms",
            goal: None,
            how,
        });
    }
}
