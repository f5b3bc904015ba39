#!/bin/sh
# reports/report_check.sh — the body of `make report-check`: opens reports/out/index.html in headless Chromium,
# fails on console errors, uncaught exceptions or failed resource loads, checks that every plot's inline SVG is in
# the rendered DOM and that the page references nothing over the network, and saves reports/out/screenshot.png
# (a tall window).  Without Chromium it installs the Debian package when run as root; when that is impossible it
# prints why and exits 0 with "skipped".
# Usage: reports/report_check.sh [DIR]   (default reports/out)
set -u
DIR=${1:-reports/out}
HTML=$DIR/index.html
PNG=$DIR/screenshot.png

if [ ! -f "$HTML" ]; then
    echo "report-check: $HTML not found (make run writes it)"
    exit 2
fi

find_chromium() {
    for c in chromium chromium-browser google-chrome-stable google-chrome; do
        if command -v "$c" >/dev/null 2>&1; then command -v "$c"; return 0; fi
    done
    return 1
}

CHROME=$(find_chromium)
if [ -z "$CHROME" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "report-check: installing chromium (apt-get)"
        apt-get update -qq >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1
        CHROME=$(find_chromium)
    fi
    if [ -z "$CHROME" ]; then
        if [ "$(id -u)" = 0 ]; then why="apt-get could not install the chromium package"
        else why="chromium is not installed and this is not root (as root: apt-get install -y chromium)"; fi
        echo "report-check: skipped: $why"
        exit 0
    fi
fi

ABS=$(cd "$(dirname "$HTML")" && pwd)/$(basename "$HTML")
TMP=$(mktemp -d "${TMPDIR:-/tmp}/report-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM
FLAGS="--headless=new --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-extensions
       --user-data-dir=$TMP/profile --enable-logging=stderr --v=0"
fail=0

# 1. No network references in src/href (the page must be self-contained).
if grep -Eio '(src|href)[[:space:]]*=[[:space:]]*["'"'"']?(https?:)?//' "$HTML" >"$TMP/net.txt"; then
    echo "report-check: FAIL: network references in $HTML:"; sed 's/^/  /' "$TMP/net.txt"; fail=1
fi

# 2. Load the page: console messages and exceptions go to stderr with --enable-logging.
# shellcheck disable=SC2086
timeout 120 "$CHROME" $FLAGS --virtual-time-budget=3000 --dump-dom "file://$ABS" >"$TMP/dom.html" 2>"$TMP/console.log"
rc=$?
if [ "$rc" != 0 ]; then
    echo "report-check: FAIL: chromium exited with $rc"; tail -5 "$TMP/console.log"; fail=1
fi
if grep -E 'CONSOLE|Uncaught|net::ERR_|Not allowed to load' "$TMP/console.log" >"$TMP/errors.txt"; then
    echo "report-check: FAIL: console errors:"; sed 's/^/  /' "$TMP/errors.txt" | head -20; fail=1
fi

# 3. Every plot of the page is an inline SVG in the rendered DOM.
want=$(grep -o '<figure class="plot' "$HTML" | wc -l)
drawn=$(grep -o 'class="plot-svg"' "$HTML" | wc -l)
in_dom=$(grep -o 'class="plot-svg"' "$TMP/dom.html" | wc -l)
missing=$(grep -o 'class="plot plot-missing"' "$HTML" | wc -l)
echo "report-check: $want plots, $drawn drawn as SVG, $in_dom SVG in the rendered DOM, $missing not drawn"
if [ "$in_dom" -lt "$drawn" ] || [ "$drawn" -eq 0 ]; then
    echo "report-check: FAIL: the plot SVGs are not all in the DOM"; fail=1
fi

# 4. Screenshot: a window tall enough for the whole page (rows and plots estimate its height).
rows=$(grep -o '<tr>' "$HTML" | wc -l)
height=$((700 + 26 * rows + 560 * want))
[ "$height" -gt 16000 ] && height=16000
# shellcheck disable=SC2086
timeout 120 "$CHROME" $FLAGS --window-size=1400,$height --screenshot="$TMP/shot.png" "file://$ABS" \
    >/dev/null 2>>"$TMP/console.log"
if [ -s "$TMP/shot.png" ]; then
    cp "$TMP/shot.png" "$PNG"
    echo "report-check: screenshot $PNG (1400x$height)"
else
    echo "report-check: FAIL: no screenshot"; fail=1
fi

if [ "$fail" = 0 ]; then echo "report-check: ok ($CHROME)"; fi
exit "$fail"
