#!/usr/bin/env bash
# packaging/cross/setup.sh — the cross toolchains for the edge targets.
#
#   packaging/cross/setup.sh [TARGET...]    default: all four edge targets
#   packaging/cross/setup.sh --sysroot TARGET   print TARGET's sysroot dir
#
# Targets: armv7-unknown-linux-musleabihf, arm-unknown-linux-musleabi,
# mips-unknown-linux-musl, mipsel-unknown-linux-musl.
#
# Idempotent: build.sh calls it before every edge build; a second run only
# checks. On a fresh Debian 12 machine it needs root once (apt-get) and
# then builds the MIPS C runtime (about a minute per endianness).
#
# Rust ships no standard library and no musl for these targets, so:
#   - std is rebuilt by build.sh (-Z build-std, needs the rust-src component);
#   - the linker and ring's C compiler are Debian's cross gcc (glibc-flavoured,
#     so build.sh points it at a musl sysroot with -B and -isystem);
#   - ARM: musl comes from Debian multiarch (musl-dev:armhf, musl-dev:armel);
#     std's `unwind` crate asks for a static libunwind.a, and on ARM gcc's
#     libgcc_eh.a is that unwinder (EHABI), so it is linked under that name;
#   - MIPS: Debian has no soft-float musl (its mips ports are hard-float), so
#     musl is built here from Debian's source package with -msoft-float, and
#     libunwind.a is LLVM libunwind from rust-src, also soft-float. gcc's own
#     crtbeginT.o/crtend.o are hard-float objects; linking them into a
#     soft-float binary draws ABI warnings, so small soft-float stand-ins are
#     put first on the -B path. Nothing in the result touches the FPU: the
#     24Kc routers these target have none (tests check it with objdump).
#
# Output, one sysroot per target (build.sh reads the same path):
#   $TETHER_CROSS_DIR/<target>/lib      crt1.o crti.o crtn.o libc.a libunwind.a ...
#   $TETHER_CROSS_DIR/<target>/include  musl's headers
# TETHER_CROSS_DIR defaults to ${XDG_CACHE_HOME:-~/.cache}/tether-cross: it
# is a cache (delete it to start over), kept out of the source tree.
set -euo pipefail

EDGE_TARGETS=(armv7-unknown-linux-musleabihf arm-unknown-linux-musleabi
    mips-unknown-linux-musl mipsel-unknown-linux-musl)
CROSS_DIR=${TETHER_CROSS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tether-cross}
# Debian 12's musl; the MIPS builds pin it so every machine makes the same libc.
MUSL_VERSION=1.2.3-1
# Bump when the recipe below changes, so cached sysroots are rebuilt.
RECIPE=3

die() {
    echo "cross/setup.sh: $*" >&2
    exit 1
}
say() { echo "cross/setup.sh: $*" >&2; }

# Debian names per target: gcc triple, multiarch arch (ARM), apt packages.
gnu_triple() {
    case "$1" in
    armv7-unknown-linux-musleabihf) echo arm-linux-gnueabihf ;;
    arm-unknown-linux-musleabi) echo arm-linux-gnueabi ;;
    mips-unknown-linux-musl) echo mips-linux-gnu ;;
    mipsel-unknown-linux-musl) echo mipsel-linux-gnu ;;
    *) die "unknown edge target $1 (known: ${EDGE_TARGETS[*]})" ;;
    esac
}
apt_packages() {
    case "$1" in
    armv7-unknown-linux-musleabihf) echo gcc-arm-linux-gnueabihf musl-dev:armhf ;;
    arm-unknown-linux-musleabi) echo gcc-arm-linux-gnueabi musl-dev:armel ;;
    mips*) echo "gcc-$(gnu_triple "$1") g++-$(gnu_triple "$1") dpkg-dev make" ;;
    esac
}

if [ "${1:-}" = --sysroot ]; then
    [ $# -eq 2 ] || die "usage: setup.sh --sysroot TARGET"
    gnu_triple "$2" >/dev/null
    echo "$CROSS_DIR/$2"
    exit 0
fi
case "${1:-}" in
-h | --help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${EDGE_TARGETS[@]}")
for t in "${targets[@]}"; do gnu_triple "$t" >/dev/null; done

# --- Debian packages -------------------------------------------------------

install_packages() {
    local want=() missing=() p
    for t in "${targets[@]}"; do
        read -r -a pk <<<"$(apt_packages "$t")"
        want+=("${pk[@]}")
    done
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages: ${missing[*]}
  as root: dpkg --add-architecture armhf; dpkg --add-architecture armel;
           apt-get update; apt-get install ${missing[*]}"
    fi
    local arches
    arches=$(dpkg --print-foreign-architectures)
    for a in armhf armel; do
        printf '%s\n' "${missing[@]}" | grep -q ":$a\$" || continue
        grep -qx "$a" <<<"$arches" || dpkg --add-architecture "$a"
    done
    say "installing ${missing[*]}"
    # A freshly added foreign architecture can make one index (often the
    # security suite's) fail, and apt-get update then exits 100 although
    # everything needed was fetched; the install below is the real check.
    apt-get update -qq || say "apt-get update reported an error; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

# --- ARM: Debian's multiarch musl ------------------------------------------

setup_arm() {
    local t=$1 triple musl_arch root
    triple=$(gnu_triple "$t")
    case "$t" in
    armv7*) musl_arch=arm-linux-musleabihf ;;
    *) musl_arch=arm-linux-musleabi ;;
    esac
    root="$CROSS_DIR/$t"
    rm -rf "$root"
    mkdir -p "$root/lib"
    local f
    for f in crt1.o crti.o crtn.o rcrt1.o Scrt1.o libc.a; do
        [ -e "/usr/lib/$musl_arch/$f" ] || die "/usr/lib/$musl_arch/$f missing (is musl-dev for $musl_arch installed?)"
        ln -s "/usr/lib/$musl_arch/$f" "$root/lib/$f"
    done
    # The multiarch headers hold musl's arch-specific bits; the generic ones
    # are shared under /usr/include/<musl_arch> too (musl-dev installs both).
    ln -s "/usr/include/$musl_arch" "$root/include"
    local eh
    eh=$("$triple-gcc" -print-file-name=libgcc_eh.a)
    [ -f "$eh" ] || die "$triple-gcc has no libgcc_eh.a"
    ln -s "$eh" "$root/lib/libunwind.a"
}

# --- MIPS: soft-float musl and libunwind, built here ------------------------

musl_source() {
    local src="$CROSS_DIR/src"
    if [ -d "$src/musl-${MUSL_VERSION%-*}" ]; then
        echo "$src/musl-${MUSL_VERSION%-*}"
        return
    fi
    mkdir -p "$src/apt/lists/partial" "$src/apt/sources"
    # A private deb-src list and index: the machine's apt configuration and
    # its package lists stay as they are.
    cat >"$src/apt/sources/debian-src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    local opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$src/apt/sources"
        -o "Dir::State::Lists=$src/apt/lists" -o APT::Sandbox::User=root)
    say "fetching Debian's musl $MUSL_VERSION source"
    apt-get "${opts[@]}" update -qq >&2 || die "apt-get update (deb-src) failed"
    (cd "$src" && apt-get "${opts[@]}" source -qq "musl=$MUSL_VERSION" >&2) ||
        die "apt-get source musl=$MUSL_VERSION failed"
    [ -d "$src/musl-${MUSL_VERSION%-*}" ] || die "musl source did not unpack"
    echo "$src/musl-${MUSL_VERSION%-*}"
}

SOFT_FLAGS=(-march=mips32r2 -msoft-float)

setup_mips() {
    local t=$1 triple root src build
    triple=$(gnu_triple "$t")
    root="$CROSS_DIR/$t"
    src=$(musl_source)
    build="$CROSS_DIR/build/$t"
    rm -rf "$root" "$build"
    mkdir -p "$build/musl" "$build/unwind" "$root"

    say "building soft-float musl for $t"
    # musl's configure reads the ABI from the compiler: -msoft-float makes it
    # pick the mips-sf / mipsel-sf sub-architecture.
    (cd "$build/musl" &&
        "$src/configure" --target="$triple" --prefix="$root" --disable-shared \
            CC="$triple-gcc" CFLAGS="${SOFT_FLAGS[*]} -Os" >config.log 2>&1 &&
        make -s -j"$(nproc)" >make.log 2>&1 && make -s install >>make.log 2>&1) ||
        die "musl build for $t failed; see $build/musl/config.log and make.log"
    if ! grep -q '^SUBARCH = .*sf' "$build/musl/config.mak"; then
        die "musl for $t was not configured soft-float (see $build/musl/config.mak)"
    fi

    say "building soft-float LLVM libunwind for $t"
    local rust_src lu
    rust_src="$(rustc --print sysroot)/lib/rustlib/src/rust"
    lu="$rust_src/src/llvm-project/libunwind"
    [ -d "$lu/src" ] || die "$lu missing: rustup component add rust-src"
    # The flags Rust's own bootstrap uses for its in-tree libunwind, with
    # musl's headers in front of the cross gcc's glibc ones.
    local common=("${SOFT_FLAGS[@]}" -Os -fPIC -fstrict-aliasing -funwind-tables -fvisibility=hidden
        -D_LIBUNWIND_DISABLE_VISIBILITY_ANNOTATIONS -DNDEBUG
        -isystem "$root/include" -I "$lu/include")
    local f objs=()
    for f in UnwindLevel1.c UnwindLevel1-gcc-ext.c; do
        "$triple-gcc" "${common[@]}" -std=c99 -c "$lu/src/$f" -o "$build/unwind/$f.o" || die "compile $f"
        objs+=("$build/unwind/$f.o")
    done
    for f in UnwindRegistersSave.S UnwindRegistersRestore.S; do
        "$triple-gcc" "${common[@]}" -c "$lu/src/$f" -o "$build/unwind/$f.o" || die "assemble $f"
        objs+=("$build/unwind/$f.o")
    done
    "$triple-g++" "${common[@]}" -std=c++17 -nostdinc++ -fno-exceptions -fno-rtti \
        -c "$lu/src/libunwind.cpp" -o "$build/unwind/libunwind.o" || die "compile libunwind.cpp"
    objs+=("$build/unwind/libunwind.o")
    "$triple-ar" rcs "$root/lib/libunwind.a" "${objs[@]}"

    # Stand-ins for gcc's hard-float crtbeginT.o / crtend.o (static links only).
    # The one symbol Rust needs from crtbegin is __dso_handle (std's thread-local
    # destructors pass it to __cxa_thread_atexit_impl); crtend closes .eh_frame
    # with a zero terminator.
    cat >"$build/crtbegin.c" <<'EOF'
/* Soft-float stand-in for gcc's crtbeginT.o: a static binary's DSO handle. */
__attribute__((visibility("hidden"))) void *__dso_handle = 0;
EOF
    cat >"$build/crtend.c" <<'EOF'
/* Soft-float stand-in for gcc's crtend.o: the .eh_frame terminator. */
__attribute__((section(".eh_frame"), aligned(4), used))
static const unsigned int frame_end[1] = {0};
EOF
    "$triple-gcc" "${SOFT_FLAGS[@]}" -Os -c "$build/crtbegin.c" -o "$root/lib/crtbeginT.o"
    "$triple-gcc" "${SOFT_FLAGS[@]}" -Os -c "$build/crtend.c" -o "$root/lib/crtend.o"
}

# --- main ------------------------------------------------------------------

install_packages
rustup component list --installed 2>/dev/null | grep -q '^rust-src' || rustup component add rust-src

for t in "${targets[@]}"; do
    stamp="$CROSS_DIR/$t/.tether-recipe"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$RECIPE" ]; then
        continue
    fi
    case "$t" in
    arm*) setup_arm "$t" ;;
    mips*) setup_mips "$t" ;;
    esac
    echo "$RECIPE" >"$stamp"
    say "$t sysroot ready in $CROSS_DIR/$t"
done
