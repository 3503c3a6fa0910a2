#!/bin/sh
# packaging/dev-run.sh — what `make run` does: a dev server on 127.0.0.1 with a
# fresh data dir and its own dev certificate, a tenant with an API token, and
# a local runner enrolled and connected to it. Ctrl-C stops both.
#
# It also publishes a dev release, so the dashboard's "Add a server" command
# and install.sh work against this server: a minisign key is made on the
# spot in the dev dir and trusted by the server (--release-keys); once the
# server is up, the static runners are built in the background (x86_64, and
# aarch64 when its cross gcc works), signed with that key and uploaded. A line
# on stdout says when the install one-liner works.
#
# Env: TETHER_DEV_PORT (default 8443), TETHER_DEV_DIR (default .run),
# TETHER_DEV_RELEASE=0 skips the dev release.
set -eu

port=${TETHER_DEV_PORT:-8443}
dir=${TETHER_DEV_DIR:-.run}
bin=${CARGO_TARGET_DIR:-target}/debug
server="$bin/tether-server"
runner="$bin/tether"

release=${TETHER_DEV_RELEASE:-1}

rm -rf "$dir"
mkdir -p "$dir/server" "$dir/runner"

# The dev release key: made here, trusted by this server only.
set --
if [ "$release" != 0 ]; then
    if minisign -G -W -f -p "$dir/release.pub" -s "$dir/release.key" >/dev/null 2>"$dir/release.log"; then
        set -- --release-keys "$dir/release.pub"
    else
        echo "make run: minisign could not make a dev release key (see $dir/release.log); no dev release" >&2
        release=0
    fi
fi

"$server" serve --listen "127.0.0.1:$port" --data-dir "$dir/server" "$@" 2>"$dir/server.log" &
server_pid=$!
runner_pid=
release_pid=
# Each kill may find its process gone already: never a reason to stop (set -e).
cleanup() {
    if [ -n "$release_pid" ]; then kill -- "-$release_pid" 2>/dev/null || true; fi
    if [ -n "$runner_pid" ]; then kill "$runner_pid" 2>/dev/null || true; fi
    kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

i=0
while [ ! -s "$dir/server/server.url" ]; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 "$server_pid" 2>/dev/null; then
        echo "make run: the server did not start; its log:" >&2
        cat "$dir/server.log" >&2
        exit 1
    fi
    sleep 0.1
done

url=$(cat "$dir/server/server.url")
ca="$dir/server/tls/ca.pem"
export TETHER_API="$url" TETHER_CA_FILE="$ca"

# Pull one string field out of a flat JSON object (the CLI's --json output).
field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p"; }

TETHER_TOKEN=$(cat "$dir/server/admin.token") \
    "$server" tenant create dev --json >"$dir/tenant.json"
api_token=$(field api_token <"$dir/tenant.json")
# A dashboard login for the dev tenant (random password, printed below).
dash_password=$(od -An -N9 -tx1 /dev/urandom | tr -d ' \n')
echo "$dash_password" | TETHER_TOKEN=$(cat "$dir/server/admin.token") \
    "$server" user add dev admin --role admin >/dev/null
export TETHER_TOKEN="$api_token"
enroll_token=$("$server" token create --ttl 10m --json | field token)

"$runner" --state-dir "$dir/runner" enroll --server "$url" --token "$enroll_token" --ca-file "$ca" >/dev/null
"$runner" --state-dir "$dir/runner" run 2>"$dir/runner.log" &
runner_pid=$!

i=0
until "$runner" --state-dir "$dir/runner" status >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
        echo "make run: the runner did not connect; its log:" >&2
        cat "$dir/runner.log" >&2
        exit 1
    fi
    sleep 0.1
done

runner_id=$(field runner_id <"$dir/runner/credential.json")

cat <<MSG

Tether is running.

  API        $url
  dashboard  $url/   (tenant dev, user admin, password $dash_password)
  API token  $api_token
  CA file    $ca   (the dev certificate's CA)
  logs       $dir/server.log  $dir/runner.log

Runners and their health:
MSG
"$server" runners
cat <<MSG

Try (in another shell):
  export TETHER_API=$url TETHER_CA_FILE=$ca TETHER_TOKEN=$api_token
  $server runners
  $server events
  $server metrics $runner_id --since 5m
  $server containers $runner_id --all
  $server run $runner_id -c 'uname -a; df -h /'
  $server logs $runner_id CONTAINER --follow
  curl --cacert $ca -H "Authorization: Bearer \$TETHER_TOKEN" $url/api/v1/runners

Ctrl-C stops the server and the runner.
MSG
if [ "$release" != 0 ]; then
    echo
    echo "Building a dev release of the static runner in the background (log: $dir/release.log);"
    echo "the dashboard's Add a server command works once it is published (a line below says so)."
    # Its own session, so Ctrl-C's cleanup stops the whole build (cargo too).
    setsid sh packaging/dev-release.sh "$dir" "$server" &
    release_pid=$!
else
    echo
    echo "No dev release (TETHER_DEV_RELEASE=0): Add a server's command fails until a release is uploaded."
fi
wait "$server_pid"
