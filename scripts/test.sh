#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, end-to-end tests against real processes, and the
# browser tests (when Chromium and ChromeDriver are installed; required when CI=true).
#
# Tests that cannot run on this machine (no Chromium, no BERTH_TEST_DATABASE_URL, not root)
# report a skip into $BERTH_SKIP_LOG; the last line printed names every skipped suite and why,
# beside cargo's totals:
#   tests: 412 passed, 0 failed, 0 ignored; skipped: postgres (BERTH_TEST_DATABASE_URL unset, 14 tests)
# Under CI=true a skip fails the test itself (and is still named), and this script fails too.
set -euo pipefail
cd "$(dirname "$0")/.."

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export BERTH_SKIP_LOG="$work/skipped"
: >"$BERTH_SKIP_LOG"

set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$work/output"
status=${PIPESTATUS[0]}
set -e

# Totals over every test binary's "test result: ok. 3 passed; 0 failed; 1 ignored; ..." line.
totals="$(awk '/^test result:/ {
    for (i = 1; i < NF; i++) {
        if ($(i + 1) ~ /^passed/) p += $i
        if ($(i + 1) ~ /^failed/) f += $i
        if ($(i + 1) ~ /^ignored/) g += $i
    }
} END { printf "%d passed, %d failed, %d ignored", p, f, g }' "$work/output")"

# "suite (reason, N tests)", one per distinct skip.
skipped="$(sed -n 's/^BERTH-SKIP: \([^:]*\): \(.*\)$/\1\t\2/p' "$BERTH_SKIP_LOG" | sort | uniq -c |
    awk -F'\t' '{ n = $1 + 0; sub(/^ *[0-9]+ /, "", $1)
                  printf "%s%s (%s, %d test%s)", sep, $1, $2, n, (n > 1 ? "s" : ""); sep = ", " }')"

if [ "$status" -ne 0 ]; then
    totals="$totals (cargo test exited with $status)"
fi
echo "tests: $totals; skipped: ${skipped:-none}"
if [ "$status" -eq 0 ] && [ -n "$skipped" ] && [ "${CI:-}" = "true" ]; then
    echo "under CI=true no suite may be skipped" >&2
    status=1
fi
exit "$status"
