#!/bin/sh
# packaging/dev-release.sh DIR SERVER — what `make run` does in the background
# once its dev server is up: build the static runners (x86_64, and aarch64
# when its cross gcc works), sign them with the dev key DIR/release.key that
# the server trusts (--release-keys DIR/release.pub), upload them as a release
# and print the install one-liner. Build output goes to DIR/release.log; one
# message on stdout says how it ended (exit 1 when it failed).
#
# Env (set by dev-run.sh): TETHER_API, TETHER_CA_FILE, TETHER_TOKEN (an API
# token of the dev tenant, for a fresh enrollment token).
set -eu
[ $# -eq 2 ] || { echo "usage: dev-release.sh DIR SERVER" >&2; exit 2; }
dir=$1
server=$2
cd "$(dirname "$0")/.."

fail() {
    echo
    echo "make run: $1 (see $dir/release.log); the install one-liner fails until a release is uploaded"
    exit 1
}

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
targets=x86_64-unknown-linux-musl
# aarch64 only where its cross gcc compiles (make test's set-up installs it).
if printf '#include <stdint.h>\nint main(void){return 0;}\n' |
    aarch64-linux-gnu-gcc -x c -c -o /dev/null - 2>/dev/null; then
    targets="$targets aarch64-unknown-linux-musl"
fi
# shellcheck disable=SC2086 # a list of targets
./build.sh $targets >>"$dir/release.log" 2>&1 || fail "the dev release did not build"

rm -rf "$dir/release"
mkdir -p "$dir/release"
bins=
arches=
for t in $targets; do
    arch=${t%%-*}
    cp "dist/$t/tether" "$dir/release/tether-$arch"
    bins="$bins $dir/release/tether-$arch"
    arches="$arches $arch"
done
# shellcheck disable=SC2086 # a list of files
TETHER_SIGNING_KEY="$dir/release.key" ./build.sh sign "$dir/release" "$version" $bins >>"$dir/release.log" 2>&1 ||
    fail "the dev release could not be signed"
TETHER_TOKEN=$(cat "$dir/server/admin.token") "$server" release upload "$dir/release" >>"$dir/release.log" 2>&1 ||
    fail "the dev release could not be uploaded"
# A fresh enrollment token for the one-liner (one use, an hour).
token=$("$server" token create --ttl 1h --json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
[ -n "$token" ] || fail "no enrollment token for the install one-liner"

cat <<MSG

Dev release $version published (${arches# }): the install one-liner works now.
  Add a host (as root; TETHER_ROOT=DIR installs into a prefix, --init none leaves it unstarted):
  curl -fsSL --cacert $TETHER_CA_FILE $TETHER_API/install.sh | sh -s -- --token $token --ca-file $TETHER_CA_FILE
MSG
