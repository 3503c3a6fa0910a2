#!/usr/bin/env bash
# packaging/fresh-check.sh — prove the set-up on a machine that has nothing:
# a clean Debian 12 root made with debootstrap, the host's Rust toolchain
# bind-mounted read-only into it, a fresh clone of this repository's HEAD,
# then (chrooted) `packaging/dev-setup.sh all`, `cargo build --workspace` and
# `./build.sh` — the build steps of `make test`. The last lines are the
# sizes of the two static runners built there.
#
#   packaging/fresh-check.sh [--keep]     (make fresh-check; as root; slow)
#
# --keep leaves the root (its path is printed) for a look afterwards.
# Not in CI: it downloads and builds everything from scratch (about 15 to 25
# minutes on 2 cores). The root is a chroot, not a container: it shares the
# host's network (apt, crates.io and npm are reached as on the host) and its
# kernel, so the set-up installs Docker there but does not start a second
# engine (TETHER_SETUP_DOCKER=0); `make test` itself is not run inside.
#
# Env: TETHER_FRESH_MIRROR (default: the host's first Debian URI),
# TETHER_FRESH_DIR (default: a new directory under /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

keep=0
case "${1:-}" in
-h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
--keep) keep=1 ;;
"") ;;
*) echo "usage: fresh-check.sh [--keep]" >&2; exit 2 ;;
esac

say() { echo "fresh-check: $*" >&2; }
die() {
    say "$*"
    exit 1
}
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts)"
started=$(date +%s)
stamp() { echo "$(($(date +%s) - started)) s"; }

# --- the host's tools --------------------------------------------------------

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt-get update -qq || say "apt-get update reported an error; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
        die "apt-get install debootstrap failed"
fi
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
if [ ! -d "$rustup_home/toolchains" ] || [ ! -x "$cargo_bin/cargo" ]; then
    die "no rustup toolchain at $rustup_home and $cargo_bin"
fi

# The machine's own Debian mirror (deb822 sources first, then sources.list).
mirror=${TETHER_FRESH_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
fi
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) bookworm .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1 || true)
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt; set TETHER_FRESH_MIRROR"

root=${TETHER_FRESH_DIR:-$(mktemp -d /var/tmp/tether-fresh.XXXXXX)}
mounts=()
cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
    if [ "$keep" = 1 ]; then
        say "root kept in $root"
    else
        rm -rf --one-file-system "$root"
    fi
}
trap cleanup EXIT
bind() { # bind SRC DEST [ro]: a directory or a single file
    if [ -d "$1" ]; then
        mkdir -p "$2"
    else
        mkdir -p "$(dirname "$2")"
        touch "$2"
    fi
    mount --bind "$1" "$2"
    mounts+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}

# --- a clean Debian 12 root ---------------------------------------------------

say "debootstrap --variant=minbase bookworm $root $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $root.debootstrap.log"
rm -f "$root.debootstrap.log"
say "root made ($(stamp))"

# The machine's apt sources and settings (a mirror, a proxy), its resolver.
rm -f "$root/etc/apt/sources.list"
cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/" 2>/dev/null || true
[ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"
for f in /etc/apt/apt.conf.d/*; do
    grep -q '^ *Acquire' "$f" 2>/dev/null && cp "$f" "$root/etc/apt/apt.conf.d/"
done
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The machine's own certificate authorities (a TLS-inspecting egress proxy
# here): a fresh machine of this kind has them, and the set-up's
# ca-certificates install adds them to the root's bundle.
mkdir -p "$root/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
# No service starts inside a chroot (docker.io's postinst would try).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

mount -t proc proc "$root/proc"
mounts+=("$root/proc")
bind /sys "$root/sys" ro
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
mount -t tmpfs tmpfs "$root/tmp"
mounts+=("$root/tmp")
# The host's Rust, read-only: nothing of it is downloaded again. The
# machine's cargo-nextest comes with it when it lives elsewhere.
bind "$rustup_home" "$root/opt/rustup" ro
bind "$cargo_bin" "$root/opt/cargo/bin" ro
nextest=$(command -v cargo-nextest || true)
if [ -n "$nextest" ] && [ "$nextest" != "$cargo_bin/cargo-nextest" ]; then
    bind "$nextest" "$root/usr/local/bin/cargo-nextest" ro
fi

# A fresh clone of what is committed here (HEAD), as a newcomer's checkout.
git clone --quiet --no-hardlinks "$repo" "$root/root/tether"
git -C "$root/root/tether" log --oneline -1 | sed 's/^/fresh-check: clone at /' >&2

# --- inside: the set-up, then make test's build steps ---------------------------

# The machine's environment that points TLS clients (npm, curl, git) at its
# bundle; the paths are the same inside once ca-certificates is installed.
tls_env=()
for v in SSL_CERT_FILE SSL_CERT_DIR NODE_EXTRA_CA_CERTS CURL_CA_BUNDLE GIT_SSL_CAINFO; do
    [ -n "${!v:-}" ] && tls_env+=("$v=${!v}")
done
inside() {
    chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "${tls_env[@]}" \
        PATH=/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/.cargo RUSTUP_AUTO_INSTALL=0 \
        TETHER_SETUP_DOCKER=0 \
        /bin/bash -c "cd /root/tether && $1"
}

say "packaging/dev-setup.sh all (inside)"
inside 'packaging/dev-setup.sh all' || die "the set-up failed inside the fresh root ($(stamp))"
say "set-up done ($(stamp)); its second run must be a quick no-op:"
inside 'time packaging/dev-setup.sh all' || die "the set-up's second run failed"
say "cargo build --workspace (inside)"
inside 'cargo build --workspace --quiet' || die "cargo build --workspace failed inside the fresh root ($(stamp))"
say "./build.sh (inside)"
inside './build.sh >/tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }' ||
    die "./build.sh failed inside the fresh root ($(stamp))"

say "passed in $(stamp): the set-up and make test's build steps on a fresh Debian 12 root"
printf '%-32s %12s %10s\n' target bytes MiB
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    bytes=$(stat -c %s "$root/root/tether/dist/$t/tether")
    printf '%-32s %12d %10.2f\n' "$t" "$bytes" "$(awk "BEGIN{print $bytes/1048576}")"
done
