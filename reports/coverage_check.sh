#!/bin/sh
# reports/coverage_check.sh — the body of `make coverage-check`: per-directory lcov summaries of a tracefile and the
# acceptance thresholds.  Each RULE is DIR:LINES:BRANCHES:FUNCTIONS (minimum percentages; empty = not enforced).
# Prints one line per directory and per rule violated; exits 1 when a threshold is not met, 2 on a missing or
# unreadable tracefile.  Percentages compare exact counts (hit·100 >= min·total), not lcov's rounded figures.
# Usage: reports/coverage_check.sh TRACEFILE RULE...      e.g.  build-cov/coverage.info reference:95:90: engine:85::
set -u
INFO=${1:?usage: coverage_check.sh TRACEFILE DIR:LINES:BRANCHES:FUNCTIONS...}
shift
if [ ! -r "$INFO" ]; then
    echo "coverage-check: $INFO not found (run make coverage)"
    exit 2
fi
LCOV="lcov --rc lcov_branch_coverage=1"
TMP=$(mktemp -d) || exit 2
trap 'rm -rf "$TMP"' EXIT
fail=0
# $1 label, $2 tracefile, $3 $4 $5 minimum lines/branches/functions
report() {
    $LCOV --summary "$2" 2>/dev/null | awk -v label="$1" -v ml="$3" -v mb="$4" -v mf="$5" '
        function chk(kind, hit, tot, min) {
            if (min == "") return
            if (tot == 0 || hit * 100 < min * tot) { printf "coverage-check: %s %s %.2f%% < %s%%\n", label, kind, tot ? 100 * hit / tot : 0, min; bad = 1 }
        }
        /lines\.\.\.\.\.\.:/     { l = $2; lh = $3; lt = $5; sub(/^\(/, "", lh) }
        /functions\.\.:/         { f = $2; fh = $3; ft = $5; sub(/^\(/, "", fh) }
        /branches\.\.\.:/        { b = $2; bh = $3; bt = $5; sub(/^\(/, "", bh) }
        END {
            if (lt == "") { printf "coverage-check: %s: no data\n", label; exit 1 }
            printf "%-10s lines %6s (%s/%s)  branches %6s (%s/%s)  functions %6s (%s/%s)\n", label, l, lh, lt,
                   (b == "" ? "n/a" : b), bh + 0, bt + 0, (f == "" ? "n/a" : f), fh + 0, ft + 0
            chk("lines", lh, lt, ml); chk("branches", bh, bt, mb); chk("functions", fh, ft, mf)
            exit bad
        }' || fail=1
}
for rule in "$@"; do
    dir=${rule%%:*}; rest=${rule#*:}
    ml=${rest%%:*}; rest=${rest#*:}
    mb=${rest%%:*}; mf=${rest#*:}
    if ! $LCOV --extract "$INFO" "$PWD/$dir/*" --output-file "$TMP/$dir.info" --quiet >/dev/null 2>&1; then
        echo "coverage-check: $dir: no data"; fail=1; continue
    fi
    report "$dir/" "$TMP/$dir.info" "$ml" "$mb" "$mf"
done
report "total" "$INFO" "" "" ""
if [ $fail -ne 0 ]; then
    echo "coverage-check: FAILED (thresholds: $*)"
    exit 1
fi
echo "coverage-check: OK (thresholds: $*)"
