#!/usr/bin/env bash
# build.sh — static, stripped release builds of the runner, one per target.
#
#   ./build.sh                 x86_64 and aarch64 musl (the default targets)
#   ./build.sh TARGET...       only these targets
#   ./build.sh --help
#
# Binaries land in dist/<target>/tether; the sizes are printed at the end.
# Needs: rustup targets and the rust-src component, musl-tools (ring's C for
# x86_64 musl), and gcc-aarch64-linux-gnu for aarch64 (ring's C; the link
# itself uses rust-lld). `.ci/run` installs all of them on a fresh machine.
#
# Size: the standard library is rebuilt for each target (-Z build-std) with
# `optimize_for_size` and the `immediate-abort` panic strategy, which takes
# about 20 % off the binary (std's panic and formatting machinery goes).
# The runner never panics on input by design; a bug aborts without a message.
# RUSTC_BOOTSTRAP=1 lets the stable toolchain use these unstable flags.
set -euo pipefail
cd "$(dirname "$0")"

DEFAULT_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
esac

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${DEFAULT_TARGETS[@]}")

# Per-target toolchain settings. Exported only for the cargo call that needs them.
target_env() {
    case "$1" in
    x86_64-unknown-linux-musl)
        echo "CC_x86_64_unknown_linux_musl=musl-gcc"
        ;;
    aarch64-unknown-linux-musl)
        echo "CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc"
        echo "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld"
        ;;
    *)
        echo "build.sh: unknown target $1 (known: ${DEFAULT_TARGETS[*]})" >&2
        return 1
        ;;
    esac
}

for t in "${targets[@]}"; do
    envs=$(target_env "$t")
    echo "build.sh: building $t" >&2
    # shellcheck disable=SC2086 # word splitting of VAR=value pairs is intended
    env $envs RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort" \
        cargo build --locked --release -p tether --bin tether --target "$t" \
        -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size
    mkdir -p "dist/$t"
    cp "${CARGO_TARGET_DIR:-target}/$t/release/tether" "dist/$t/tether"
done

printf '\n%-32s %12s %10s\n' target bytes MiB
for t in "${targets[@]}"; do
    bytes=$(stat -c %s "dist/$t/tether")
    printf '%-32s %12d %10.2f\n' "$t" "$bytes" "$(awk "BEGIN{print $bytes/1048576}")"
done
