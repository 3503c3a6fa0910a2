#!/bin/sh
# Fill server/web/dist/ with the dashboard's third-party libraries from npm
# (versions pinned by package-lock.json), for build.rs to embed. Our own
# files in src/ need no build step. Without npm it warns and leaves dist/
# empty: the server still builds and serves the dashboard without charts.
set -eu
cd "$(dirname "$0")"
if ! command -v npm >/dev/null 2>&1; then
    echo "web/build.sh: npm not found; the dashboard is built without its chart library (apt-get install npm)" >&2
    exit 0
fi
# npm ci only when the lockfile changed since the last install (a copy of
# the lockfile it installed is kept beside the packages).
if ! cmp -s package-lock.json node_modules/.tether-installed-lock.json; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.tether-installed-lock.json
fi
mkdir -p dist/vendor
for f in node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css \
    node_modules/uplot/LICENSE; do
    # cmp first: an unchanged copy must not touch the mtime (cargo would rebuild).
    dest="dist/vendor/$(basename "$f")"
    [ "$(basename "$f")" = LICENSE ] && dest=dist/vendor/uPlot.LICENSE
    cmp -s "$f" "$dest" 2>/dev/null || cp "$f" "$dest"
done
