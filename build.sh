#!/usr/bin/env bash
# build.sh — static, stripped release builds of the runner, one per target.
#
#   ./build.sh                 x86_64 and aarch64 musl (the default targets)
#   ./build.sh --all           those and the four edge targets (armv7, armv6, mips, mipsel)
#   ./build.sh TARGET...       only these targets
#   ./build.sh release         all six targets, then a signed release in dist/release/
#   ./build.sh sign OUT VERSION BIN...   sign existing binaries named tether-<arch>
#   ./build.sh --help
#   BUILD_EXAMPLE=NAME ./build.sh TARGET...   examples/NAME.rs instead of the runner
#                              (same flags) into dist/<target>/NAME: make bench's trust part
#
# Binaries land in dist/<target>/tether; the sizes are printed at the end.
# Cargo builds them in ${CARGO_TARGET_DIR:-target}/static, apart from
# ordinary builds (RUSTC_BOOTSTRAP=1 would invalidate their proc macros).
# A release (dist/release/) holds tether-<arch> and tether-<arch>.minisig per
# architecture, and manifest.json (version; name, arch, size, sha256 of each
# file, one file per line) with manifest.json.minisig. Each binary's signed
# (trusted) comment is `tether-release version=V arch=A`: that is what the
# runner's updater checks. The secret key is never in the repo: its path
# comes from TETHER_SIGNING_KEY (a minisign key; Debian's `minisign`).
# Needs: rustup targets and the rust-src component, musl-tools (ring's C for
# x86_64 musl), and gcc-aarch64-linux-gnu for aarch64 (ring's C; the link
# itself uses rust-lld). `.ci/run` installs all of them on a fresh machine.
# The edge targets' toolchains (Debian cross gcc, musl sysroots) are set up
# by packaging/cross/setup.sh, which this script runs first (idempotent).
#
# Size: the standard library is rebuilt for each target (-Z build-std) with
# `optimize_for_size` and the `immediate-abort` panic strategy, which takes
# about 20 % off the binary (std's panic and formatting machinery goes).
# The runner never panics on input by design; a bug aborts without a message.
# RUSTC_BOOTSTRAP=1 lets the stable toolchain use these unstable flags.
set -euo pipefail
cd "$(dirname "$0")"

DEFAULT_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
# Routers and small boards. Rust ships no std for them, hence packaging/cross.
EDGE_TARGETS=(
    armv7-unknown-linux-musleabihf # ARMv7 hard-float: Raspberry Pi 2/3 in 32 bit, most ARM boards
    arm-unknown-linux-musleabi     # ARMv6 soft-float ABI: Raspberry Pi Zero/1
    mips-unknown-linux-musl        # MIPS32r2 big endian, soft-float: Atheros/QCA routers
    mipsel-unknown-linux-musl      # MIPS32r2 little endian, soft-float: MediaTek/Ralink routers
)

usage() {
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
}

# The name releases give a target's binary (tether-<arch>) and sign into its
# comment; the runner knows its own (src/sys.rs RELEASE_ARCH) and install.sh
# maps `uname -m` to it. uname cannot tell mips from mipsel, hence names.
release_arch() {
    case "$1" in
    x86_64-*) echo x86_64 ;;
    aarch64-*) echo aarch64 ;;
    armv7-*) echo armv7 ;;
    arm-*) echo armv6 ;;
    mipsel-*) echo mipsel ;;
    mips-*) echo mips ;;
    *) echo "build.sh: no release name for $1" >&2; return 1 ;;
    esac
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
    "$0" --all
    version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
    rm -rf dist/release.tmp && mkdir -p dist/release.tmp
    bins=()
    for t in "${DEFAULT_TARGETS[@]}" "${EDGE_TARGETS[@]}"; do
        arch=$(release_arch "$t")
        cp "dist/$t/tether" "dist/release.tmp/tether-$arch"
        bins+=("dist/release.tmp/tether-$arch")
    done
    sign_release dist/release.tmp "$version" "${bins[@]}"
    rm -rf dist/release && mv dist/release.tmp dist/release
    ls -l dist/release
    exit 0
    ;;
--all) set -- "${DEFAULT_TARGETS[@]}" "${EDGE_TARGETS[@]}" ;;
esac

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${DEFAULT_TARGETS[@]}")

# Per-target toolchain settings, one VAR=value per line (values may hold
# spaces). Exported only for the cargo call that needs them.
target_env() {
    case "$1" in
    x86_64-unknown-linux-musl)
        echo "CC_x86_64_unknown_linux_musl=musl-gcc"
        ;;
    aarch64-unknown-linux-musl)
        echo "CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc"
        echo "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld"
        ;;
    armv7-unknown-linux-musleabihf | arm-unknown-linux-musleabi | mips-unknown-linux-musl | mipsel-unknown-linux-musl)
        local gcc sysroot var cflags
        gcc=$(edge_gcc "$1")-gcc
        sysroot=$(packaging/cross/setup.sh --sysroot "$1")
        var=$(echo "$1" | tr 'a-z-' 'A-Z_')
        # ring's C: the cross gcc is built for glibc; musl's headers go first.
        cflags="-isystem $sysroot/include"
        case "$1" in
        mips*) cflags="-march=mips32r2 -msoft-float $cflags" ;;
        esac
        echo "CC_${1//-/_}=$gcc"
        echo "AR_${1//-/_}=$(edge_gcc "$1")-ar"
        echo "CFLAGS_${1//-/_}=$cflags"
        echo "CARGO_TARGET_${var}_LINKER=$gcc"
        ;;
    *)
        echo "build.sh: unknown target $1 (known: ${DEFAULT_TARGETS[*]} ${EDGE_TARGETS[*]})" >&2
        return 1
        ;;
    esac
}

edge_gcc() {
    case "$1" in
    armv7-*) echo arm-linux-gnueabihf ;;
    arm-*) echo arm-linux-gnueabi ;;
    mips-*) echo mips-linux-gnu ;;
    mipsel-*) echo mipsel-linux-gnu ;;
    esac
}

# Per-target rustflags, one per line, after the common size flags.
target_rustflags() {
    case "$1" in
    arm* | mips*)
        local sysroot
        sysroot=$(packaging/cross/setup.sh --sysroot "$1")
        # No Rust-shipped crt objects or libc exist for these targets: link
        # with the cross gcc against the musl sysroot instead. -B puts the
        # sysroot's crt1.o/crti.o/crtn.o (and, on MIPS, the soft-float
        # crtbeginT.o/crtend.o) before gcc's own, and adds it to -L.
        echo "-Clink-self-contained=no"
        echo "-Clink-arg=-B$sysroot/lib"
        ;;
    esac
    case "$1" in
    mips*)
        # The MIPS musl targets default to dynamic linking; routers have no
        # musl loader, so force a static binary.
        echo "-Ctarget-feature=+crt-static"
        # Position-independent MIPS code calls everything through the GOT
        # (several instructions a call): a static, non-PIE binary needs
        # none of it.
        echo "-Crelocation-model=static"
        ;;
    esac
    case "$1" in
    x86_64-*)
        # Linked by rust-lld (the aarch64 build's linker too) for two size
        # flags GNU ld lacks: identical code folding merges functions that
        # compiled to the same bytes (monomorphisations), and RELR packs
        # the static-pie's relative relocations (.rela.dyn, 24 bytes each)
        # into bitmaps; musl's start code applies them (since 1.2.4).
        echo "-Clinker-features=+lld"
        echo "-Clink-self-contained=+linker"
        echo "-Clink-arg=-Wl,--icf=all"
        echo "-Clink-arg=-Wl,-z,pack-relative-relocs"
        ;;
    esac
    # With immediate-abort panics nothing ever unwinds: no unwind tables
    # (.eh_frame is about 70 KiB on MIPS, more on x86_64), and no panic
    # locations (file names and lines nobody can see).
    echo "-Cforce-unwind-tables=no"
    echo "-Zlocation-detail=none"
    echo "-Zfmt-debug=shallow"
}

# Fail on an unknown target before building anything.
for t in "${targets[@]}"; do target_env "$t" >/dev/null; done

edge=()
for t in "${targets[@]}"; do
    case "$t" in arm* | mips*) edge+=("$t") ;; esac
done
[ ${#edge[@]} -eq 0 ] || packaging/cross/setup.sh "${edge[@]}"

# A target directory of its own. The host-side units (build scripts, proc
# macros in <target-dir>/release) are the same units for this build and an
# ordinary `cargo build --release`, and proc-macro2's and thiserror's build
# scripts say `rerun-if-env-changed=RUSTC_BOOTSTRAP`: sharing target/, each
# switch between the two reran them and rebuilt proc-macro2, syn, every
# derive macro and so the whole tree. The binaries still land in dist/.
target_dir=${CARGO_TARGET_DIR:-target}/static
what=(--bin tether)
name=tether
built=release/tether
if [ -n "${BUILD_EXAMPLE:-}" ]; then
    what=(--example "$BUILD_EXAMPLE")
    name=$BUILD_EXAMPLE
    built=release/examples/$BUILD_EXAMPLE
fi
for t in "${targets[@]}"; do
    mapfile -t envs <<<"$(target_env "$t")"
    mapfile -t extra <<<"$(target_rustflags "$t")"
    flags=(-Zunstable-options -Cpanic=immediate-abort)
    for f in "${extra[@]}"; do [ -z "$f" ] || flags+=("$f"); done
    echo "build.sh: building $t" >&2
    # CARGO_ENCODED_RUSTFLAGS (0x1f-separated) keeps paths with spaces whole.
    # Cargo prefers it to RUSTFLAGS; unset that too, so a stray RUSTFLAGS in
    # the caller's environment cannot look as if it applied.
    env -u RUSTFLAGS "${envs[@]}" RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$target_dir" \
        CARGO_ENCODED_RUSTFLAGS="$(IFS=$'\x1f'; echo "${flags[*]}")" \
        cargo build --locked --release -p tether "${what[@]}" --target "$t" \
        -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size
    mkdir -p "dist/$t"
    # Replaced whole (rename): tests and make run's dev release read it meanwhile.
    cp "$target_dir/$t/$built" "dist/$t/$name.tmp.$$"
    mv -f "dist/$t/$name.tmp.$$" "dist/$t/$name"
done

printf '\n%-32s %12s %10s\n' target bytes MiB
for t in "${targets[@]}"; do
    bytes=$(stat -c %s "dist/$t/$name")
    printf '%-32s %12d %10.2f\n' "$t" "$bytes" "$(awk "BEGIN{print $bytes/1048576}")"
done
