#!/bin/sh
# Fill server/web/dist/ with the dashboard's third-party libraries from npm
# (versions pinned by package-lock.json), for build.rs to embed. Our own
# files in src/ need no build step. Without npm it warns and leaves dist/
# empty: the server still builds and serves the dashboard without charts,
# terminal and recording player.
set -eu
cd "$(dirname "$0")"
if ! command -v npm >/dev/null 2>&1; then
    echo "web/build.sh: npm not found; the dashboard is built without its chart and terminal libraries (apt-get install npm)" >&2
    exit 0
fi
# npm ci only when the lockfile changed since the last install (a copy of
# the lockfile it installed is kept beside the packages).
if ! cmp -s package-lock.json node_modules/.tether-installed-lock.json; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.tether-installed-lock.json
fi
mkdir -p dist/vendor
# Each library's file and the name it gets in dist/vendor/ (LICENSE files
# keep their library's name).
while read -r src dest; do
    # cmp first: an unchanged copy must not touch the mtime (cargo would rebuild).
    cmp -s "node_modules/$src" "dist/vendor/$dest" 2>/dev/null || cp "node_modules/$src" "dist/vendor/$dest"
done <<'FILES'
uplot/dist/uPlot.iife.min.js uPlot.iife.min.js
uplot/dist/uPlot.min.css uPlot.min.css
uplot/LICENSE uPlot.LICENSE
@xterm/xterm/lib/xterm.mjs xterm.mjs
@xterm/xterm/css/xterm.css xterm.css
@xterm/xterm/LICENSE xterm.LICENSE
@xterm/addon-fit/lib/addon-fit.mjs addon-fit.mjs
@xterm/addon-fit/LICENSE addon-fit.LICENSE
asciinema-player/dist/bundle/asciinema-player.min.js asciinema-player.min.js
asciinema-player/dist/bundle/asciinema-player.css asciinema-player.css
asciinema-player/LICENSE asciinema-player.LICENSE
FILES
