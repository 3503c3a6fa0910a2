#!/bin/sh
# Tether one-line installer, served by tether-server at /install.sh:
#
#   curl -fsSL https://SERVER/install.sh | sh -s -- --token TOKEN
#   wget -qO- https://SERVER/install.sh | sh -s -- --token TOKEN
#
# Detects the architecture, downloads the runner and the signed release
# manifest from the server, checks the sha256 and size (and the minisign
# signatures when a `minisign` tool is installed), installs the binary in
# /usr/local/lib/tether/ (linked from /usr/local/bin/tether), writes the
# trusted update keys, writes the service for systemd, OpenRC or procd,
# enrolls and starts. `--uninstall` removes all of it.
#
# Trust: the first install trusts the HTTPS connection to the server (its
# certificate, or --ca-file): the binary and the update keys come from it.
# After that the runner installs only updates signed by those keys.
#
# Options:
#   --token TOKEN      enrollment token (tether-server token create)
#   --server URL       the server [default: @SERVER_URL@]
#   --ca-file PEM      trust this CA for the server (downloads and the runner)
#   --name NAME        register under this name [default: the host name]
#   --label KEY=VALUE  a label this host proposes (repeatable; shown as proposed
#                      until an operator accepts it)
#   --version V        install this release [default: latest]
#   --pubkey KEY       trusted minisign public key (repeatable) [default: the server's]
#   --operator-key FILE|KEY
#                      trust this operator's signing key (a minisign .pub file or
#                      its base64 line; repeatable): added to
#                      <state-dir>/operator-keys.pub, no duplicates
#   --require-signed LIST
#                      the runner runs only signed actions of these kinds: jobs,
#                      deploys, terminals, containers, all or none; needs an
#                      operator key (tether run --help)
#   --init SYSTEM      systemd, openrc, procd or none [default: detected]
#   --no-start         install and enroll, do not start
#   --uninstall        stop and remove the runner, its service and its state
#   -h, --help         this help
# Environment: TETHER_ROOT=DIR installs into a prefix (a fake root; nothing
# is started); TETHER_ARCH overrides `uname -m`.
set -eu

SERVER="@SERVER_URL@"
KEYS="@RELEASE_KEYS@"
TOKEN=""
CA_FILE=""
NAME=""
VERSION="latest"
INIT=""
START=1
UNINSTALL=0
ROOT="${TETHER_ROOT:-}"
PUBKEYS=""
LABELS=""
OPKEYS=""
REQUIRE=""

say() { printf 'tether-install: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
	sed -n '2,39p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' || true
}

while [ $# -gt 0 ]; do
	case "$1" in
	--token) TOKEN="${2:?--token needs a value}"; shift 2 ;;
	--server) SERVER="${2:?--server needs a value}"; shift 2 ;;
	--ca-file) CA_FILE="${2:?--ca-file needs a value}"; shift 2 ;;
	--name) NAME="${2:?--name needs a value}"; shift 2 ;;
	--label)
		case "${2:?--label needs KEY=VALUE}" in *=*) ;; *) die "--label $2: use KEY=VALUE" ;; esac
		LABELS="$LABELS$2
"
		shift 2
		;;
	--version) VERSION="${2:?--version needs a value}"; shift 2 ;;
	--pubkey) PUBKEYS="$PUBKEYS ${2:?--pubkey needs a value}"; shift 2 ;;
	--operator-key)
		# A .pub file: its key lines; else the key itself.
		if [ -f "${2:?--operator-key needs FILE or KEY}" ]; then
			K=$(grep -v -e '^untrusted comment:' -e '^#' -e '^[[:space:]]*$' "$2" || true)
		else
			K=$2
		fi
		for k in $K; do
			# A minisign public key: "Ed" and its id and key, 56 base64 chars.
			case "$k" in
			RW*) ;;
			*) die "--operator-key $2: not a minisign public key (file or base64 line)" ;;
			esac
			[ "${#k}" = 56 ] || die "--operator-key $2: not a minisign public key (56 base64 characters)"
			case "$k" in *[!A-Za-z0-9+/=]*) die "--operator-key $2: not base64" ;; esac
			OPKEYS="$OPKEYS $k"
		done
		[ -n "$K" ] || die "--operator-key $2: no key in it"
		shift 2
		;;
	--require-signed)
		# The words the runner enforces (tether run --help); checked here so
		# that a typo fails now, not at the service's start.
		REQUIRE="${2:?--require-signed needs a LIST}"
		_ifs=$IFS
		IFS=,
		for w in $REQUIRE; do
			case "$w" in
			jobs | deploys | terminals | containers | all | none) ;;
			*) die "--require-signed: unknown $w (jobs, deploys, terminals, containers, all or none)" ;;
			esac
		done
		IFS=$_ifs
		shift 2
		;;
	--init) INIT="${2:?--init needs a value}"; shift 2 ;;
	--no-start) START=0; shift ;;
	--uninstall) UNINSTALL=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
done

[ -n "$PUBKEYS" ] && KEYS="$PUBKEYS"
case "$SERVER" in
@*) die "no server URL: use --server URL (this copy of install.sh was not served by tether-server)" ;;
https://*) ;;
http://127.0.0.1:* | http://localhost:* | http://\[::1\]:*) ;;
*) die "refusing $SERVER: only https:// (or http:// to loopback)" ;;
esac
SERVER="${SERVER%/}"

LIB_DIR="$ROOT/usr/local/lib/tether"
BIN="$LIB_DIR/tether"
LINK="$ROOT/usr/local/bin/tether"
STATE_DIR="$ROOT/var/lib/tether"
SYSTEMD_UNIT="$ROOT/etc/systemd/system/tether.service"
INITD_SCRIPT="$ROOT/etc/init.d/tether"
[ -n "$ROOT" ] && START=0

detect_init() {
	if [ -n "$INIT" ]; then
		printf '%s' "$INIT"
	elif [ -d /run/systemd/system ]; then
		printf systemd
	elif [ -x /sbin/openrc-run ] || command -v openrc-run >/dev/null 2>&1; then
		printf openrc
	elif [ -x /sbin/procd ] || [ -f /etc/openwrt_release ]; then
		printf procd
	else
		printf none
	fi
}
INIT=$(detect_init)
# OpenWrt keeps /var in RAM: the credential must live on flash (sysupgrade
# keeps /etc).
if [ "$INIT" = procd ]; then
	STATE_DIR="$ROOT/etc/tether"
fi
case "$INIT" in
systemd | openrc | procd | none) ;;
*) die "--init must be systemd, openrc, procd or none" ;;
esac

stop_service() {
	[ "$START" = 1 ] || return 0
	case "$INIT" in
	systemd) systemctl disable --now tether >/dev/null 2>&1 || true ;;
	openrc)
		rc-service tether stop >/dev/null 2>&1 || true
		rc-update del tether default >/dev/null 2>&1 || true
		;;
	procd)
		"$INITD_SCRIPT" stop >/dev/null 2>&1 || true
		"$INITD_SCRIPT" disable >/dev/null 2>&1 || true
		;;
	none)
		if [ -f "$STATE_DIR/tether.pid" ]; then
			kill "$(cat "$STATE_DIR/tether.pid")" 2>/dev/null || true
		fi
		;;
	esac
}

if [ "$UNINSTALL" = 1 ]; then
	stop_service
	rm -f "$BIN" "$LIB_DIR/.tether.new" "$LIB_DIR/.tether.prev" "$LINK"
	rmdir "$LIB_DIR" 2>/dev/null || true
	if [ -f "$SYSTEMD_UNIT" ]; then
		rm -f "$SYSTEMD_UNIT"
		if [ "$START" = 1 ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
	fi
	if [ -f "$INITD_SCRIPT" ] && grep -q 'Tether runner' "$INITD_SCRIPT"; then
		rm -f "$INITD_SCRIPT"
	fi
	rm -rf "$STATE_DIR" "$ROOT/run/tether" "$ROOT/var/run/tether"
	say "removed the runner, its service and its state"
	exit 0
fi

[ -n "$TOKEN" ] || [ -f "$STATE_DIR/credential.json" ] || die "--token TOKEN is required (tether-server token create)"
OPFILE="$STATE_DIR/operator-keys.pub"
case "$REQUIRE" in
"" | none) ;;
*)
	if [ -z "$OPKEYS" ] && ! grep -q '^RW' "$OPFILE" 2>/dev/null; then
		die "--require-signed $REQUIRE needs an operator key (--operator-key FILE|KEY): the runner would refuse to start"
	fi
	;;
esac

# The release names (build.sh release_arch): uname says "mips" for both byte
# orders, so ask the CPU which one it is.
little_endian() {
	[ "$(printf '\001\000' | od -An -tu2 | tr -d ' ')" = 1 ]
}
case "${TETHER_ARCH:-$(uname -m)}" in
x86_64 | amd64) ARCH=x86_64 ;;
aarch64 | arm64) ARCH=aarch64 ;;
armv7* | armv8l) ARCH=armv7 ;;
armv6* | armv5*) ARCH=armv6 ;;
mips)
	if little_endian; then ARCH=mipsel; else ARCH=mips; fi
	;;
mipsel) ARCH=mipsel ;;
*) die "unsupported architecture $(uname -m) (built: x86_64, aarch64, armv7, armv6, mips, mipsel)" ;;
esac

# The first executable NAME in PATH, by path: busybox sh runs its own
# applets for bare names, and busybox's wget cannot check certificates.
find_tool() {
	_ifs=$IFS
	IFS=:
	for d in $PATH; do
		if [ -n "$d" ] && [ -x "$d/$1" ] && [ ! -d "$d/$1" ]; then
			IFS=$_ifs
			printf '%s' "$d/$1"
			return 0
		fi
	done
	IFS=$_ifs
	return 1
}

CURL=$(find_tool curl || true)
WGET=$(find_tool wget || true)
if [ -n "$CURL" ]; then
	fetch() {
		if [ -n "$CA_FILE" ]; then
			"$CURL" -fsSL --retry 2 --connect-timeout 10 --max-time 300 --cacert "$CA_FILE" -o "$2" "$1"
		else
			"$CURL" -fsSL --retry 2 --connect-timeout 10 --max-time 300 -o "$2" "$1"
		fi
	}
elif [ -n "$WGET" ]; then
	if "$WGET" --help 2>&1 | grep -qi busybox; then
		case "$SERVER" in
		https://*) die "busybox wget cannot check the server's certificate: install curl, GNU wget or uclient-fetch" ;;
		esac
	fi
	fetch() {
		if [ -n "$CA_FILE" ]; then
			"$WGET" -q -T 30 --ca-certificate="$CA_FILE" -O "$2" "$1"
		else
			"$WGET" -q -T 30 -O "$2" "$1"
		fi
	}
else
	die "neither curl nor wget is installed"
fi

sha256_of() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 "$1" | cut -d' ' -f1
	elif command -v openssl >/dev/null 2>&1; then
		openssl dgst -sha256 "$1" | sed 's/.*= *//'
	else
		die "no sha256sum, shasum or openssl to check the download"
	fi
}

# minisign -V with any of the trusted keys; 2 when there is no minisign.
verify_sig() {
	command -v minisign >/dev/null 2>&1 || return 2
	for k in $KEYS; do
		if minisign -Vq -P "$k" -m "$1" -x "$1.minisig" >/dev/null 2>&1; then
			return 0
		fi
	done
	return 1
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tether-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM

BASE="$SERVER/releases/$VERSION"
say "downloading tether for $ARCH from $BASE"
fetch "$BASE/manifest.json" "$TMP/manifest.json" || die "cannot download $BASE/manifest.json"
fetch "$BASE/manifest.json.minisig" "$TMP/manifest.json.minisig" || die "cannot download the manifest signature"
fetch "$BASE/tether-$ARCH" "$TMP/tether" || die "cannot download $BASE/tether-$ARCH"
fetch "$BASE/tether-$ARCH.minisig" "$TMP/tether.minisig" || die "cannot download the binary's signature"

# The manifest lists one file per line: {"name":…,"arch":…,"size":N,"sha256":"…"}.
LINE=$(grep "\"name\": *\"tether-$ARCH\"" "$TMP/manifest.json" || true)
[ -n "$LINE" ] || die "the manifest has no binary for $ARCH"
WANT_SHA=$(printf '%s' "$LINE" | sed -n 's/.*"sha256": *"\([0-9a-f]*\)".*/\1/p')
WANT_SIZE=$(printf '%s' "$LINE" | sed -n 's/.*"size": *\([0-9]*\).*/\1/p')
GOT_SHA=$(sha256_of "$TMP/tether")
GOT_SIZE=$(wc -c <"$TMP/tether" | tr -d ' ')
[ "$GOT_SIZE" = "$WANT_SIZE" ] || die "size mismatch: got $GOT_SIZE bytes, the manifest says $WANT_SIZE (truncated download?)"
[ "$GOT_SHA" = "$WANT_SHA" ] || die "sha256 mismatch: got $GOT_SHA, the manifest says $WANT_SHA"

set +e
verify_sig "$TMP/manifest.json"
M=$?
verify_sig "$TMP/tether"
B=$?
set -e
if [ "$M" = 2 ]; then
	say "no minisign tool here: trusting the HTTPS connection to $SERVER (sha256 checked)"
elif [ -z "$KEYS" ]; then
	say "no trusted keys known: trusting the HTTPS connection to $SERVER (sha256 checked)"
elif [ "$M" != 0 ] || [ "$B" != 0 ]; then
	die "minisign signature check failed: not installing"
else
	say "minisign signatures verified"
fi

umask 022
mkdir -p "$LIB_DIR" "$ROOT/usr/local/bin"
cp "$TMP/tether" "$LIB_DIR/.tether.install"
chmod 755 "$LIB_DIR/.tether.install"
mv -f "$LIB_DIR/.tether.install" "$BIN"
ln -sf ../lib/tether/tether "$LINK"
mkdir -p "$STATE_DIR"
chmod 700 "$STATE_DIR"
if [ -n "$KEYS" ]; then
	{
		echo "# Trusted minisign keys for self-update, written by install.sh."
		for k in $KEYS; do echo "$k"; done
	} >"$STATE_DIR/update-keys.pub"
	chmod 644 "$STATE_DIR/update-keys.pub"
else
	say "warning: no update keys: this runner will refuse every update until $STATE_DIR/update-keys.pub has one"
fi
if [ -n "$OPKEYS" ]; then
	[ -f "$OPFILE" ] || echo "# Trusted operator keys (tether run --require-signed), written by install.sh." >"$OPFILE"
	# A last line without its newline would be glued to the next key.
	[ -z "$(tail -c 1 "$OPFILE")" ] || echo >>"$OPFILE"
	for k in $OPKEYS; do
		grep -qxF "$k" "$OPFILE" || echo "$k" >>"$OPFILE"
	done
	chmod 644 "$OPFILE"
fi
if [ -n "$LABELS" ]; then
	# Read by `tether run` at each start (one KEY=VALUE a line).
	printf '%s' "$LABELS" >"$STATE_DIR/labels"
	chmod 644 "$STATE_DIR/labels"
fi
say "installed $("$BIN" version 2>/dev/null || echo tether) at $BIN"

# Add `--require-signed LIST` to the service's command line: sed EXPR on
# FILE, R standing for the list (checked above: letters and commas only).
with_require() {
	case "$REQUIRE" in "" | none) return 0 ;; esac
	sed "$(printf '%s' "$2" | sed "s/ R/ $REQUIRE/")" "$1" >"$1.new"
	grep -q -e "--require-signed $REQUIRE" "$1.new" || die "cannot add --require-signed to $1"
	mv -f "$1.new" "$1"
}

case "$INIT" in
systemd)
	mkdir -p "$(dirname "$SYSTEMD_UNIT")"
	cat >"$SYSTEMD_UNIT" <<'UNIT_EOF'
@SYSTEMD_UNIT@
UNIT_EOF
	with_require "$SYSTEMD_UNIT" 's|^ExecStart=.*/tether run$|& --require-signed R|'
	chmod 644 "$SYSTEMD_UNIT"
	;;
openrc)
	mkdir -p "$(dirname "$INITD_SCRIPT")"
	cat >"$INITD_SCRIPT" <<'OPENRC_EOF'
@OPENRC_SCRIPT@
OPENRC_EOF
	with_require "$INITD_SCRIPT" 's|^command_args="run"$|command_args="run --require-signed R"|'
	chmod 755 "$INITD_SCRIPT"
	;;
procd)
	mkdir -p "$(dirname "$INITD_SCRIPT")"
	cat >"$INITD_SCRIPT" <<'PROCD_EOF'
@PROCD_SCRIPT@
PROCD_EOF
	# shellcheck disable=SC2016 # sed's literal $PROG, not the shell's
	with_require "$INITD_SCRIPT" 's|command "\$PROG" run$|& --require-signed R|'
	chmod 755 "$INITD_SCRIPT"
	;;
none) ;;
esac

if [ -n "$TOKEN" ]; then
	set -- --state-dir "$STATE_DIR" enroll --server "$SERVER" --token "$TOKEN"
	[ -n "$CA_FILE" ] && set -- "$@" --ca-file "$CA_FILE"
	[ -n "$NAME" ] && set -- "$@" --name "$NAME"
	"$BIN" "$@" >/dev/null || die "enrollment failed (see above)"
	say "enrolled with $SERVER"
fi

if [ "$START" = 0 ]; then
	say "not started (--no-start or TETHER_ROOT); start it with your service manager"
	exit 0
fi
case "$INIT" in
systemd) systemctl daemon-reload && systemctl enable --now tether ;;
openrc) rc-update add tether default && rc-service tether start ;;
procd) "$INITD_SCRIPT" enable && "$INITD_SCRIPT" start ;;
none)
	# No service manager: the runner re-execs itself on update; restart it
	# from cron or rc.local after a reboot.
	TETHER_STATE_DIR="$STATE_DIR" TETHER_REQUIRE_SIGNED="$REQUIRE" nohup "$BIN" run >>/var/log/tether.log 2>&1 &
	echo $! >"$STATE_DIR/tether.pid"
	;;
esac
say "started ($INIT)"
