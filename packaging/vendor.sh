#!/usr/bin/env bash
# packaging/vendor.sh — the offline source bundle (what `make vendor` runs).
#
# Fills vendor/ with every crate the workspace needs on Linux, plus the crates
# of Rust's own standard library (build.sh rebuilds std with -Z build-std, and
# cargo fetches std's dependencies from crates.io like any other), and writes
# vendor/config.toml. Then packs the sources, vendor/ and a .cargo/config.toml
# that points cargo at it into dist/tether-<version>-vendored.tar.gz.
#
# An air-gapped site unpacks the bundle and runs ./build.sh (or cargo build)
# with no network and an empty cargo home. tests/packages.rs checks that.
#
# Filtered to Linux: crates that only Windows, macOS, wasm ... builds use
# (windows-sys and its import libraries are most of the 300 MB) are replaced
# by empty stubs. Cargo still needs them to exist, because it resolves the
# whole lock file before it looks at the target; it never compiles them.
#
# vendor/ is never committed (.gitignore); only vendor/README.md is.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "vendor.sh: $*" >&2
    exit 1
}
python3 -c "import tomllib" 2>/dev/null || die "python3 (3.11 or later) is needed to filter the vendored crates"

# Linux targets whose dependencies are kept: the six we ship, the hosts that
# build them, and the other Linux targets distributions build for (Alpine).
PLATFORMS=(x86_64-unknown-linux-gnu x86_64-unknown-linux-musl
    aarch64-unknown-linux-gnu aarch64-unknown-linux-musl
    armv7-unknown-linux-musleabihf armv7-unknown-linux-gnueabihf arm-unknown-linux-musleabi
    arm-unknown-linux-musleabihf mips-unknown-linux-musl mipsel-unknown-linux-musl
    i686-unknown-linux-musl powerpc64le-unknown-linux-musl riscv64gc-unknown-linux-musl)

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"
std_manifest="$(rustc --print sysroot)/lib/rustlib/src/rust/library/Cargo.toml"
[ -f "$std_manifest" ] || die "$std_manifest missing: rustup component add rust-src"

# The standard library's workspace uses a nightly cargo feature; this lets
# the stable cargo read it, as build.sh does for build-std.
export RUSTC_BOOTSTRAP=1

rm -rf vendor/crates vendor/config.toml
echo "vendor.sh: cargo vendor (workspace + std)" >&2
cargo vendor --quiet --locked --versioned-dirs -s "$std_manifest" vendor/crates >/dev/null

# Keep what some Linux platform needs, in either workspace; stub the rest.
filters=()
for p in "${PLATFORMS[@]}"; do filters+=(--filter-platform "$p"); done
{
    cargo metadata --locked --format-version 1 "${filters[@]}"
    echo
    cargo metadata --locked --format-version 1 "${filters[@]}" --manifest-path "$std_manifest"
} | python3 -c '
import json, os, sys, shutil, tomllib
keep = set()
for line in sys.stdin:
    if line.strip():
        meta = json.loads(line)
        keep |= {(p["name"], p["version"]) for p in meta["packages"] if p["source"]}
stubbed = 0
root = "vendor/crates"
for d in sorted(os.listdir(root)):
    path = os.path.join(root, d)
    with open(os.path.join(path, ".cargo-checksum.json")) as f:
        checksum = json.load(f)
    with open(os.path.join(path, "Cargo.toml"), "rb") as f:
        pkg = tomllib.load(f)["package"]
    if (pkg["name"], pkg["version"]) in keep:
        continue
    for entry in os.listdir(path):
        if entry != "Cargo.toml":
            p = os.path.join(path, entry)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    os.makedirs(os.path.join(path, "src"))
    open(os.path.join(path, "src", "lib.rs"), "w").close()
    # An empty file list: cargo checks no file sums, only the package sum
    # against Cargo.lock.
    with open(os.path.join(path, ".cargo-checksum.json"), "w") as f:
        json.dump({"files": {}, "package": checksum.get("package")}, f)
    stubbed += 1
print(f"vendor.sh: {len(os.listdir(root))} crates, {stubbed} stubbed (not used on Linux)", file=sys.stderr)
'

cat >vendor/config.toml <<'EOF'
# Use the crates in vendor/crates instead of crates.io:
#   cargo build --offline --config vendor/config.toml
# (the bundle from `make vendor` carries this as .cargo/config.toml).
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "vendor/crates"
EOF

# The bundle: tracked and new (not ignored) files as they are in the work
# tree, plus vendor/ and the cargo config.
bundle="dist/tether-$version-vendored.tar.gz"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir="$stage/tether-$version"
mkdir -p "$dir/.cargo" dist
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf - | tar -xf - -C "$dir"
cp -r vendor/crates vendor/config.toml "$dir/vendor/"
{
    [ -f "$dir/.cargo/config.toml" ] && cat "$dir/.cargo/config.toml" && echo
    cat vendor/config.toml
} >"$dir/.cargo/config.toml.new"
mv "$dir/.cargo/config.toml.new" "$dir/.cargo/config.toml"
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$stage" -czf "$bundle" "tether-$version"
echo "vendor.sh: vendor/ ($(du -sh vendor/crates | cut -f1)) and $bundle ($(du -h "$bundle" | cut -f1))" >&2
echo "vendor.sh: offline build: tar xf $bundle && cd tether-$version && ./build.sh" >&2
