//! What checking one signed action costs a host (issue 19's figure):
//! `make bench` (BENCH_ONLY=trust, `tests/bench/trust.rs`) builds this
//! with `build.sh`'s flags for x86_64, armv7 and mips and runs it, the
//! last two under qemu-user. An example of the runner's library, so it
//! never enters the runner's binary.
//!
//! Each round is what the runner does with a signed `job_start` on a
//! host that requires signed jobs (`trust::Verifier::check`): decode the
//! minisign signature, build the canonical bytes, BLAKE2b-512 them, two
//! Ed25519 verifications (the signature and its trusted comment), the
//! expiry and replay checks. The signature is Debian minisign's (the
//! fixtures of `src/trust/tests.rs`). A fresh verifier each round (the
//! action id would be a replay otherwise), made outside the timing.
//!
//! `trust_verify [ROUNDS]` prints `rounds=N median_us=… p99_us=… min_us=…`.

use std::time::{Duration, Instant};

use tether::protocol::signed::{job_bytes, job_kind, Signed};
use tether::protocol::JobStart;
use tether::trust::{Require, TrustConfig, Verifier};

const OPERATOR: &str = include_str!("../src/trust/testdata/operator.pub");
const VALID: &str = include_str!("../src/trust/testdata/valid.minisig");
/// The fixtures' not-after, and a day before it.
const FAR: u64 = 4_102_444_800_000;
const NOW: u64 = FAR - 86_400_000;

fn job() -> JobStart {
    JobStart {
        job_id: "jb_1".into(),
        channel: 7,
        program: "/bin/sh".into(),
        args: vec!["a".into(), "b c".into()],
        script: Some("echo hi > /tmp/x\n".into()),
        env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
        secrets: vec![("TOKEN".into(), "s3cret".into())],
        timeout_s: 60,
        deploy: None,
        signed: Some(Signed {
            action_id: "sa_0000000000000001".into(),
            not_after_ms: FAR,
            signature: VALID.into(),
        }),
    }
}

fn verifier() -> Verifier {
    Verifier::new(
        TrustConfig {
            require: Require::parse("jobs").expect("a known kind"),
            keys: vec![OPERATOR.to_owned()],
            runner_id: "rn_test".into(),
            state_dir: None,
        },
        NOW,
    )
}

fn check(v: &mut Verifier, j: &JobStart) -> bool {
    v.check(
        job_kind(j),
        j.signed.as_ref(),
        |s| job_bytes("rn_test", &s.action_id, s.not_after_ms, j),
        NOW,
    )
    .is_ok()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200)
        .max(1);
    let j = job();
    // The check is real: one byte changed and it fails.
    let mut altered = job();
    altered.timeout_s = 61;
    if check(&mut verifier(), &altered) {
        eprintln!("trust_verify: an altered job passed");
        std::process::exit(1);
    }
    let mut times: Vec<Duration> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut v = verifier();
        let t = Instant::now();
        let ok = check(&mut v, &j);
        times.push(t.elapsed());
        if !ok {
            eprintln!("trust_verify: the signed job was refused");
            std::process::exit(1);
        }
    }
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let p99 = times[((rounds * 99).div_ceil(100)).saturating_sub(1)];
    println!(
        "rounds={rounds} median_us={:.1} p99_us={:.1} min_us={:.1}",
        us(times[rounds / 2]),
        us(p99),
        us(times[0])
    );
}
