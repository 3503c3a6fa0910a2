//! What the audit trail adds to a mutating API call (issue 19's figure):
//! the append the audit layer awaits before answering (`audit/mod.rs`),
//! timed on the server's own SQLite trail store in a file (WAL, as
//! `--data-dir` makes it), with entries the size of a real call's. Run by
//! `make bench` (BENCH_ONLY=trust, `tests/bench/trust.rs`); an example, so
//! nothing of it is in the server binary.
//!
//! `trail_append DIR [N]` prints `appends=N p50_us=… p99_us=… max_us=…
//! verify_ms=…` (the chain is verified at the end: the appends were real).

use std::time::{Duration, Instant};

use tether_server::db::trail::NewEntry;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: trail_append DIR [N]");
        std::process::exit(2);
    };
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000)
        .max(1);
    let path = std::path::Path::new(&dir).join("audit.db");
    let trail = tether_server::db::sqlite::open_trail(&path).unwrap_or_else(|e| {
        eprintln!("trail_append: {}: {e}", path.display());
        std::process::exit(1);
    });
    let mut times: Vec<Duration> = Vec::with_capacity(n);
    for i in 0..n {
        // A `POST /api/v1/jobs` as the audit layer records it.
        let entry = NewEntry {
            at_ms: 1_800_000_000_000 + i as i64,
            tenant_id: Some("tn_3f392fca8449".into()),
            actor_kind: "user".into(),
            actor_id: "us_5d1c0b9e2f7a4c11".into(),
            actor_label: "ada".into(),
            client: "192.0.2.17".into(),
            action: "POST /api/v1/jobs".into(),
            target: "/api/v1/jobs".into(),
            params: format!(
                r#"{{"runners":["rn_e80009204ee8"],"script":"backup-{i}","env":{{"MODE":"full"}},"secrets":["DB_PASSWORD"]}}"#
            ),
            result: 201,
            detail: String::new(),
        };
        let t = Instant::now();
        if let Err(e) = trail.append(entry).await {
            eprintln!("trail_append: append: {e}");
            std::process::exit(1);
        }
        times.push(t.elapsed());
    }
    let t = Instant::now();
    let v = trail.verify().await.expect("verify");
    let verify = t.elapsed();
    if !v.ok {
        eprintln!("trail_append: the chain does not verify");
        std::process::exit(1);
    }
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p99 = times[(n * 99).div_ceil(100).saturating_sub(1)];
    println!(
        "appends={n} p50_us={:.1} p99_us={:.1} max_us={:.1} verify_ms={:.1}",
        us(times[n / 2]),
        us(p99),
        us(times[n - 1]),
        verify.as_secs_f64() * 1e3
    );
}
