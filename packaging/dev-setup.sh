#!/usr/bin/env bash
# packaging/dev-setup.sh — install and prove what building, running and
# testing Tether needs on a Debian 12 machine that has Rust (rustup).
#
#   packaging/dev-setup.sh [run|test|all]     default: all
#   packaging/dev-setup.sh --list             print what each level installs, and why
#   packaging/dev-setup.sh --help
#
# Levels (each includes the one before):
#   run   `make run`: the server and runner build, the dashboard's npm
#         libraries, and the static x86_64 runner make run publishes
#   test  `make test` and `make lint`: cross gcc for aarch64 and its libc
#         headers, qemu, Docker (installed and started), Chromium, the tools
#         the tests call, cargo-nextest
#   all   `make setup`, `.ci/run`, `make edge`: the edge targets' cross gcc and
#         musl sysroots (packaging/cross/setup.sh)
#
# Idempotent. With everything present it installs nothing, runs the doctor
# (which proves each toolchain by compiling and linking, rather than asking
# dpkg) and prints one line. Each failure names what is missing and the
# command that fixes it; exit status 1.
#
# Env: TETHER_SETUP_DOCKER=0 installs the engine but neither starts nor asks
# it (make fresh-check: a chroot shares the host's network and cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s%N)
say() { echo "dev-setup: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# --- what each level needs ---------------------------------------------------
# One Debian package a line, by its own name, with why. Never rely on a
# package's Recommends: the cross gcc's libc headers are their own line.
# (The edge targets' packages are packaging/cross/setup.sh's list.)
PKGS_RUN=$(
    cat <<'EOF'
gcc               the host C compiler: ring, SQLite (bundled) and the linker
libc6-dev         the host C library headers gcc compiles against
make              the Makefile
git               the deploy tests and make fresh-check clone with it
ca-certificates   HTTPS to the registries (cargo, npm, apt)
curl              the dev install one-liner (make run) and install.sh tests
musl-tools        musl-gcc: ring for the static x86_64 runner (build.sh)
minisign          signs the dev release make run publishes, and real releases
EOF
)
PKGS_TEST=$(
    cat <<'EOF'
gcc-aarch64-linux-gnu    the aarch64 cross gcc: ring for the static aarch64 runner
libc6-dev-arm64-cross    its libc headers (stdint.h); only a Recommends of the gcc
binutils                 strip, objdump: release and size checks
qemu-user-static         runs the aarch64 (and edge) runners in tests
docker.io                the Docker engine the container, deploy and log tests use
containerd               the engine's container runtime daemon
runc                     the engine's OCI runtime
iptables                 the engine's networking, and the network-cut tests
nftables                 the network-cut tests (nft)
busybox-static           the test images (docker import) and install.sh under busybox
wget                     install.sh without curl
shellcheck               make lint checks every shell script
procps                   pgrep, pidof-like checks in tests
sqlite3                  the signed-job tests tamper with a stored job as a stolen database would; the retention test reads recordings.db
dpkg-dev                 the package tests (dpkg-deb, dpkg-architecture)
python3                  the package tests
python3-aiosmtpd         the alert email test: a local SMTP server with STARTTLS and AUTH
systemd                  systemd-analyze verify of the unit file
chromium                 the dashboard test drives it headless (playwright-core)
postgresql               the PostgreSQL backend tests start a private cluster (initdb, pg_ctl)
haproxy                  the fail-over tests put a TCP load balancer in front of two servers
EOF
)

# rustup targets and components per level.
TARGETS_RUN=(x86_64-unknown-linux-musl)
TARGETS_TEST=(aarch64-unknown-linux-musl)
COMPONENTS_RUN=(rust-src)         # -Z build-std in build.sh
COMPONENTS_TEST=(rustfmt clippy) # make lint

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

level=all
case "${1:-all}" in
-h | --help) usage; exit 0 ;;
--list)
    echo "Debian packages (make run):"; echo "$PKGS_RUN" | sed '/^$/d; s/^/  /'
    echo "Debian packages (make test):"; echo "$PKGS_TEST" | sed '/^$/d; s/^/  /'
    echo "  nodejs, npm              only when node/npm are missing: the dashboard's libraries and its browser test"
    echo "  (make setup: the edge targets' packages, see packaging/cross/setup.sh)"
    echo "rustup: targets ${TARGETS_RUN[*]} ${TARGETS_TEST[*]}; components ${COMPONENTS_RUN[*]} ${COMPONENTS_TEST[*]}"
    echo "cargo: cargo-nextest (the test runner), when missing"
    echo "rustup nightly and cargo-fuzz (make setup: make fuzz, make fuzz-ci), when missing"
    echo "npm: server/web's locked packages (npm ci); tests/oidc's (make test: the SSO test's provider)"
    exit 0
    ;;
run | test | all) level=$1 ;;
*) usage >&2; exit 2 ;;
esac
at_least() { # at_least test: is the level test or above?
    case "$1:$level" in
    run:*) return 0 ;;
    test:test | test:all | all:all) return 0 ;;
    *) return 1 ;;
    esac
}

done_steps=()

# --- Debian packages ---------------------------------------------------------

names() { echo "$1" | awk 'NF { print $1 }'; }
wanted=$(names "$PKGS_RUN")
at_least test && wanted="$wanted $(names "$PKGS_TEST")"
# Node.js: the machine's own (often newer) is kept; Debian's is the fallback.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    wanted="$wanted nodejs npm"
fi

missing_pkgs() {
    # One dpkg-query for all (fast enough for the no-op run); it exits 1
    # when any is unknown, which is the case being asked about.
    local have p
    # shellcheck disable=SC2086
    have=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' $wanted 2>/dev/null | awk '$2 == "installed" { print $1 }' || true)
    for p in $wanted; do grep -qx "$p" <<<"$have" || echo "$p"; done
}

mapfile -t missing < <(missing_pkgs)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: ${missing[*]}
  fix (as root): apt-get update && apt-get install --no-install-recommends ${missing[*]}"
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # One index failing to download (a mirror mid-sync, a foreign index) makes
    # apt-get update exit non-zero although the rest was fetched: the install
    # is the real check, tried twice.
    apt-get update -qq || say "apt-get update reported an error; trying the install anyway"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        say "apt-get install failed once; updating the indexes again and retrying"
        sleep 5
        apt-get update -qq || true
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed"
    fi
    done_steps+=("${#missing[@]} packages")
fi

# --- Rust: targets, components, cargo-nextest --------------------------------

command -v rustup >/dev/null || die "rustup not found: install Rust with rustup first (https://rustup.rs), then run this again"
targets=("${TARGETS_RUN[@]}")
components=("${COMPONENTS_RUN[@]}")
if at_least test; then
    targets+=("${TARGETS_TEST[@]}")
    components+=("${COMPONENTS_TEST[@]}")
fi
installed_targets=$(rustup target list --installed 2>/dev/null)
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed_targets" && continue
    say "rustup target add $t"
    rustup target add "$t" >/dev/null 2>&1 || die "rustup target add $t failed"
    done_steps+=("target $t")
done
installed_components=$(rustup component list --installed 2>/dev/null)
for c in "${components[@]}"; do
    grep -q "^$c\\(-\\|\$\\)" <<<"$installed_components" && continue
    say "rustup component add $c"
    rustup component add "$c" >/dev/null 2>&1 || die "rustup component add $c failed"
    done_steps+=("component $c")
done
if at_least test && ! cargo nextest --version >/dev/null 2>&1; then
    say "cargo install cargo-nextest (a few minutes, once)"
    cargo install --locked --quiet cargo-nextest || die "cargo install cargo-nextest failed"
    done_steps+=("cargo-nextest")
fi

# Fuzzing (make fuzz, make fuzz-ci): libFuzzer needs nightly's sanitizers.
if at_least all && ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    say "rustup toolchain install nightly --profile minimal (make fuzz)"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || die "rustup toolchain install nightly failed"
    done_steps+=("nightly toolchain")
fi
if at_least all && ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo install cargo-fuzz (a few minutes, once)"
    cargo install --locked --quiet cargo-fuzz || die "cargo install cargo-fuzz failed"
    done_steps+=("cargo-fuzz")
fi

# --- the edge targets' cross toolchains ---------------------------------------

if at_least all; then
    packaging/cross/setup.sh 2>&1 | sed 's/^/  /' >&2
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "packaging/cross/setup.sh failed (see above)"
fi

# --- the dashboard's npm packages ---------------------------------------------

if ! cmp -s server/web/package-lock.json server/web/node_modules/.tether-installed-lock.json; then
    sh server/web/build.sh >&2 || die "npm ci in server/web failed: check that the npm registry is reachable"
    done_steps+=("npm ci")
fi
# The OpenID Connect provider of the single sign-on test (server/tests/server/sso.rs).
if at_least test && ! cmp -s tests/oidc/package-lock.json tests/oidc/node_modules/.tether-installed-lock.json; then
    (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error >&2 \
        && cp package-lock.json node_modules/.tether-installed-lock.json) \
        || die "npm ci in tests/oidc failed: check that the npm registry is reachable"
    done_steps+=("npm ci (tests/oidc)")
fi

# --- a Docker engine -----------------------------------------------------------

if at_least test && [ "${TETHER_SETUP_DOCKER:-1}" != 0 ] && ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || die "no Docker engine answers: start one as root (dockerd &)"
    say "starting dockerd (log: /tmp/tether-dockerd.log)"
    setsid dockerd >/tmp/tether-dockerd.log 2>&1 </dev/null &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    done_steps+=("dockerd started")
fi

# --- the doctor: prove the toolchains work -----------------------------------
# Compile and link rather than ask dpkg: a package can be installed and its
# headers still missing (gcc-aarch64-linux-gnu without libc6-dev-arm64-cross).

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
problems=()
problem() { problems+=("$1"$'\n'"    fix: $2"); }

printf '#include <stdint.h>\n#include <stdio.h>\nint main(void) { uint32_t x = 1; printf("%%u\\n", x); return 0; }\n' >"$work/t.c"
printf 'fn main() { println!("hello"); }\n' >"$work/hello.rs"

# cc_check NAME FIX CC [FLAGS...]: compile and link t.c with CC.
cc_check() {
    local name=$1 fix=$2
    shift 2
    if ! "$@" "$work/t.c" -o "$work/t.$name" >"$work/cc.$name.log" 2>&1; then
        problem "$name: cannot compile and link a C file with <stdint.h>: $(grep -m1 -i error "$work/cc.$name.log" || head -1 "$work/cc.$name.log")" "$fix"
    fi
}
# rust_check TARGET FIX [RUSTC FLAGS...]: link a Rust hello for TARGET.
rust_check() {
    local t=$1 fix=$2
    shift 2
    if ! rustc --edition 2021 --target "$t" "$@" "$work/hello.rs" -o "$work/hello.$t" >"$work/rs.$t.log" 2>&1; then
        problem "Rust for $t: cannot link a hello world: $(grep -m1 -i error "$work/rs.$t.log" || head -1 "$work/rs.$t.log")" "$fix"
    fi
}

cc_check host "apt-get install gcc libc6-dev" cc
cc_check musl "apt-get install musl-tools" musl-gcc -static
rust_check x86_64-unknown-linux-musl "rustup target add x86_64-unknown-linux-musl; apt-get install musl-tools"
if [ -x "$work/hello.x86_64-unknown-linux-musl" ] && ! out=$("$work/hello.x86_64-unknown-linux-musl" 2>&1); then
    problem "the static x86_64 hello does not run: $out" "rustup target add x86_64-unknown-linux-musl"
fi
[ -d "$(rustc --print sysroot)/lib/rustlib/src/rust/library" ] ||
    problem "the rust-src component is missing (build.sh rebuilds std)" "rustup component add rust-src"
command -v minisign >/dev/null || problem "minisign is missing" "apt-get install minisign"

node_major=$(node --version 2>/dev/null | sed 's/^v\([0-9]*\).*/\1/')
if [ -z "$node_major" ] || [ "$node_major" -lt 18 ]; then
    problem "Node.js 18 or later is needed (found: $(node --version 2>/dev/null || echo none))" "apt-get install nodejs npm"
fi
[ -d server/web/node_modules/@xterm/xterm ] || problem "the dashboard's npm packages are missing" "sh server/web/build.sh"
if at_least test; then
    [ -d tests/oidc/node_modules/oidc-provider ] || problem "the SSO test's provider is missing" "(cd tests/oidc && npm ci)"
fi

if at_least test; then
    cc_check aarch64 "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross" aarch64-linux-gnu-gcc
    rust_check aarch64-unknown-linux-musl "rustup target add aarch64-unknown-linux-musl" -C linker=rust-lld
    if [ -x "$work/hello.aarch64-unknown-linux-musl" ]; then
        out=$(qemu-aarch64-static "$work/hello.aarch64-unknown-linux-musl" 2>&1) ||
            problem "qemu-aarch64-static cannot run the aarch64 hello: $out" "apt-get install qemu-user-static"
    fi
    if [ "${TETHER_SETUP_DOCKER:-1}" != 0 ]; then
        docker info >/dev/null 2>&1 ||
            problem "no Docker engine answers (docker info)" "apt-get install docker.io; dockerd >/tmp/tether-dockerd.log 2>&1 &  (log of the last try: /tmp/tether-dockerd.log)"
    else
        command -v dockerd >/dev/null || problem "dockerd is not installed" "apt-get install docker.io"
    fi
    chromium --version >/dev/null 2>&1 || problem "chromium --version fails" "apt-get install chromium"
    [ -d server/web/node_modules/playwright-core ] || problem "playwright-core (the dashboard test's driver) is missing" "sh server/web/build.sh"
    cargo nextest --version >/dev/null 2>&1 || problem "cargo-nextest is missing" "cargo install --locked cargo-nextest"
    for c in rustfmt clippy; do
        grep -q "^$c" <<<"$installed_components" || rustup component list --installed 2>/dev/null | grep -q "^$c" ||
            problem "the $c component is missing" "rustup component add $c"
    done
    for tool in shellcheck busybox wget strip iptables nft dpkg-deb python3 systemd-analyze git curl; do
        command -v "$tool" >/dev/null || problem "$tool is missing" "packaging/dev-setup.sh test (as root)"
    done
fi

if at_least all; then
    cargo fuzz --version >/dev/null 2>&1 || problem "cargo-fuzz is missing (make fuzz)" "cargo install --locked cargo-fuzz"
    rustup toolchain list 2>/dev/null | grep -q '^nightly' || problem "no nightly toolchain (make fuzz)" "rustup toolchain install nightly --profile minimal"
    # The edge targets: each cross gcc against the musl sysroot build.sh uses.
    for t in armv7-unknown-linux-musleabihf arm-unknown-linux-musleabi mips-unknown-linux-musl mipsel-unknown-linux-musl; do
        sysroot=$(packaging/cross/setup.sh --sysroot "$t")
        case "$t" in
        armv7-*) gcc=arm-linux-gnueabihf-gcc flags=() ;;
        arm-*) gcc=arm-linux-gnueabi-gcc flags=() ;;
        mipsel-*) gcc=mipsel-linux-gnu-gcc flags=(-march=mips32r2 -msoft-float) ;;
        mips-*) gcc=mips-linux-gnu-gcc flags=(-march=mips32r2 -msoft-float) ;;
        esac
        # Compile against the sysroot's musl headers, then link statically
        # with its crt files and libc.a, as build.sh's links do.
        fix="packaging/cross/setup.sh $t  (delete $sysroot to rebuild it)"
        if ! "$gcc" "${flags[@]}" -nostdinc -isystem "$sysroot/include" \
            -isystem "$("$gcc" -print-file-name=include)" -c "$work/t.c" -o "$work/t.$t.o" >"$work/cc.$t.log" 2>&1; then
            problem "$t: $gcc cannot compile <stdint.h> against $sysroot: $(grep -m1 -i error "$work/cc.$t.log")" "$fix"
        elif ! "$gcc" "${flags[@]}" -static -nostdlib "$sysroot/lib/crt1.o" "$sysroot/lib/crti.o" "$work/t.$t.o" \
            -Wl,--start-group "$sysroot/lib/libc.a" "$("$gcc" "${flags[@]}" -print-libgcc-file-name)" -Wl,--end-group "$sysroot/lib/crtn.o" \
            -o "$work/t.$t" >"$work/ld.$t.log" 2>&1; then
            problem "$t: $gcc cannot link statically against $sysroot/lib: $(grep -m1 -i -E 'error|undefined' "$work/ld.$t.log")" "$fix"
        fi
    done
fi

if [ ${#problems[@]} -gt 0 ]; then
    say "the doctor found ${#problems[@]} problem(s):"
    for p in "${problems[@]}"; do echo "  - $p" >&2; done
    exit 1
fi

ms=$((($(date +%s%N) - started) / 1000000))
if [ ${#done_steps[@]} -eq 0 ]; then
    echo "dev-setup: $level ready, nothing to install; toolchains proved ($ms ms)"
else
    echo "dev-setup: $level ready after: ${done_steps[*]}; toolchains proved ($ms ms)"
fi
