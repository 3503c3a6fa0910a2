#!/usr/bin/env bash
# build.sh — static, stripped release builds of the runner, one per target.
#
#   ./build.sh                 x86_64 and aarch64 musl (the default targets)
#   ./build.sh TARGET...       only these targets
#   ./build.sh release         both targets, then a signed release in dist/release/
#   ./build.sh sign OUT VERSION BIN...   sign existing binaries named tether-<arch>
#   ./build.sh --help
#
# Binaries land in dist/<target>/tether; the sizes are printed at the end.
# A release (dist/release/) holds tether-<arch> and tether-<arch>.minisig per
# architecture, and manifest.json (version; name, arch, size, sha256 of each
# file, one file per line) with manifest.json.minisig. Each binary's signed
# (trusted) comment is `tether-release version=V arch=A`: that is what the
# runner's updater checks. The secret key is never in the repo: its path
# comes from TETHER_SIGNING_KEY (a minisign key; Debian's `minisign`).
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
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
}

# sign OUT VERSION BIN...: copy, sign, write and sign the manifest.
sign_release() {
    local out=$1 version=$2
    shift 2
    local key=${TETHER_SIGNING_KEY:-}
    [ -n "$key" ] || { echo "build.sh: set TETHER_SIGNING_KEY to the minisign secret key's path" >&2; return 1; }
    [ -r "$key" ] || { echo "build.sh: cannot read the signing key $key" >&2; return 1; }
    command -v minisign >/dev/null || { echo "build.sh: minisign is not installed" >&2; return 1; }
    mkdir -p "$out"
    local lines=() bin name arch size sha
    for bin in "$@"; do
        name=$(basename "$bin")
        arch=${name#tether-}
        [ "$arch" != "$name" ] || { echo "build.sh: $bin is not named tether-<arch>" >&2; return 1; }
        [ "$bin" -ef "$out/$name" ] || cp "$bin" "$out/$name"
        minisign -S -s "$key" -m "$out/$name" -x "$out/$name.minisig" \
            -t "tether-release version=$version arch=$arch" </dev/null >/dev/null
        size=$(stat -c %s "$out/$name")
        sha=$(sha256sum "$out/$name" | cut -d' ' -f1)
        lines+=("    {\"name\": \"$name\", \"arch\": \"$arch\", \"size\": $size, \"sha256\": \"$sha\"}")
    done
    {
        printf '{\n  "version": "%s",\n  "files": [\n' "$version"
        local i
        for i in "${!lines[@]}"; do
            if [ "$i" -lt $((${#lines[@]} - 1)) ]; then printf '%s,\n' "${lines[$i]}"; else printf '%s\n' "${lines[$i]}"; fi
        done
        printf '  ]\n}\n'
    } >"$out/manifest.json"
    minisign -S -s "$key" -m "$out/manifest.json" -x "$out/manifest.json.minisig" \
        -t "tether-release-manifest version=$version" </dev/null >/dev/null
    echo "build.sh: signed release $version in $out" >&2
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
sign)
    shift
    [ $# -ge 3 ] || { echo "usage: build.sh sign OUT VERSION BIN..." >&2; exit 2; }
    sign_release "$@"
    exit 0
    ;;
release)
    shift
    [ -n "${TETHER_SIGNING_KEY:-}" ] || { echo "build.sh: set TETHER_SIGNING_KEY to the minisign secret key's path" >&2; exit 1; }
    "$0" "${DEFAULT_TARGETS[@]}"
    version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
    rm -rf dist/release.tmp && mkdir -p dist/release.tmp
    bins=()
    for t in "${DEFAULT_TARGETS[@]}"; do
        arch=${t%%-*}
        cp "dist/$t/tether" "dist/release.tmp/tether-$arch"
        bins+=("dist/release.tmp/tether-$arch")
    done
    sign_release dist/release.tmp "$version" "${bins[@]}"
    rm -rf dist/release && mv dist/release.tmp dist/release
    ls -l dist/release
    exit 0
    ;;
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
