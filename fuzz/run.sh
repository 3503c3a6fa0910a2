#!/bin/sh
# Runs every fuzz target (or those in $FUZZ_TARGETS) for SECS seconds each,
# one libFuzzer process at a time (one core), starting from the committed
# seeds plus the corpus kept in fuzz/corpus/ (not committed). `make fuzz`
# and `make fuzz-ci` call this. A crash, a failed check or a timeout (an
# input taking over FUZZ_TIMEOUT seconds) stops that target and leaves the
# input in fuzz/artifacts/<target>/; the script goes on with the others and
# exits 1 at the end. Reproduce one: cargo +nightly fuzz run <target> <file>.
set -eu
cd "$(dirname "$0")"
secs=${1:-60}
cargo=${FUZZ_CARGO:-cargo +nightly}
targets=${FUZZ_TARGETS:-"frame control metrics_wire metrics_roundtrip docker_http docker_request docker_stream log_assembler log_time proc fingerprint http_response proxy_response tar_path update selector"}
timeout=${FUZZ_TIMEOUT:-10}

command -v cargo-fuzz >/dev/null || {
    echo "fuzz/run.sh: cargo-fuzz missing: cargo install --locked cargo-fuzz" >&2
    exit 1
}
# shellcheck disable=SC2086 # $cargo is a command with its arguments
$cargo fuzz build -O
# The binaries are run directly: `cargo fuzz run` would check the build
# again before each target.
bin="target/$(rustc -vV | sed -n 's/^host: //p')/release"
failed=""
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="target/fuzz-$t.log"
    if "$bin/$t" "corpus/$t" "seeds/$t" -artifact_prefix="artifacts/$t/" \
        -max_total_time="$secs" -timeout="$timeout" -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        echo "fuzz $t: ok, ${runs:-?} inputs in ${secs}s"
    else
        echo "fuzz $t: FAILED (log: fuzz/$log, input in fuzz/artifacts/$t/)" >&2
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -n 8 >&2 || true
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: failed:$failed" >&2
    exit 1
fi
