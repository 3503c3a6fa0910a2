#!/usr/bin/env bash
# packaging/debian/build-deb.sh — a Debian/Ubuntu package of the static runner.
#
#   packaging/debian/build-deb.sh TARGET [DEB_ARCH]
#
# Packs dist/TARGET/tether (from ./build.sh TARGET) with its systemd unit into
# dist/tether_<version>-1_<arch>.deb (or $DEB_OUT_DIR/...). DEB_ARCH defaults from the target
# (x86_64 → amd64, aarch64 → arm64, armv7 → armhf, armv6 → armel, mips, mipsel);
# give it to package the ARMv6 binary as `armhf` for Raspberry Pi OS on a
# Pi Zero/1 (its armhf userland runs on ARMv6; Debian's armhf needs ARMv7).
#
# The binary is static, so the package depends on nothing. Built with plain
# dpkg-deb (no debhelper): the maintainer scripts are short enough to read.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() {
    echo "build-deb.sh: $*" >&2
    exit 1
}

case $# in
1 | 2) ;;
*) die "usage: build-deb.sh TARGET [DEB_ARCH]" ;;
esac
target=$1
case "$target" in
x86_64-unknown-linux-musl) arch=amd64 ;;
aarch64-unknown-linux-musl) arch=arm64 ;;
armv7-unknown-linux-musleabihf) arch=armhf ;;
arm-unknown-linux-musleabi) arch=armel ;;
mips-unknown-linux-musl) arch=mips ;;
mipsel-unknown-linux-musl) arch=mipsel ;;
*) die "unknown target $target" ;;
esac
arch=${2:-$arch}
bin="dist/$target/tether"
[ -x "$bin" ] || die "$bin is missing: run ./build.sh $target first"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"
out_dir=${DEB_OUT_DIR:-dist}
mkdir -p "$out_dir"
deb="$out_dir/tether_${version}-1_${arch}.deb"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root" # mktemp's 0700 would become the mode of / in the package
src=packaging/debian
install -D -m 0755 "$bin" "$root/usr/bin/tether"
install -D -m 0644 "$src/tether.service" "$root/lib/systemd/system/tether.service"
install -D -m 0644 "$src/default" "$root/etc/default/tether"
install -D -m 0644 /dev/stdin "$root/usr/share/doc/tether/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tether
License: $(sed -n 's/^license = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
 The runner statically links Rust crates under MIT, Apache-2.0, ISC and
 similar licenses (ring: ISC and OpenSSL-style; webpki-roots: MPL-2.0 data).
EOF
install -d -m 0755 "$root/DEBIAN"
install -m 0755 "$src/postinst" "$src/prerm" "$src/postrm" "$root/DEBIAN/"
echo /etc/default/tether >"$root/DEBIAN/conffiles"
(cd "$root" && find usr lib -type f -exec md5sum {} +) >"$root/DEBIAN/md5sums"
size_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: tether
Version: ${version}-1
Architecture: $arch
Maintainer: Tether developers <tether@example.com>
Installed-Size: $size_kib
Section: admin
Priority: optional
Homepage: https://github.com/tether/tether
Description: outbound-only agent for deploying to and operating a fleet
 tether keeps one outbound TLS WebSocket to a tether-server and is observed
 and operated over it: no inbound port is opened on the host. A static
 binary: no dependencies.
EOF
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
