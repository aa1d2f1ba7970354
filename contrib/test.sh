#!/usr/bin/env bash
# Install what is missing, build, and run the whole test suite with `meson test`,
# then the same suite again in an AddressSanitizer + UndefinedBehaviorSanitizer build
# (but for the Debian package build, which does not use the build's programs, and
# the `long` suite: minutes-long runs of code that other tests drive in both
# builds, kept under the 30 minutes a 2-core CI machine allows).
# Usage: contrib/test.sh [--no-asan] [meson test args...]
# Ends with one line "N passed, N failed, N skipped" summing both runs.
set -euo pipefail
cd "$(dirname "$0")/.."

asan=1
if [ "${1:-}" = "--no-asan" ]; then asan=0; shift; fi

contrib/install-deps.sh

# Summarise a meson test log as "passed failed skipped".
count() {
  local log=$1/meson-logs/testlog.json
  [ -f "$log" ] || { echo "0 0 0"; return; }
  local p f s
  p=$(grep -c '"result": "OK"' "$log" || true)
  s=$(grep -c '"result": "SKIP"' "$log" || true)
  f=$(grep -cE '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log" || true)
  echo "$p $f $s"
}

rc=0
[ -d build ] || meson setup build
ninja -C build
meson test -C build --print-errorlogs "$@" || rc=1
read -r p f s < <(count build)

if [ $asan -eq 1 ]; then
  [ -d build-asan ] || meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false
  ninja -C build-asan
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --print-errorlogs --no-suite package --no-suite long "$@" || rc=1
  read -r p2 f2 s2 < <(count build-asan)
  p=$((p + p2)); f=$((f + f2)); s=$((s + s2))
fi

echo "$p passed, $f failed, $s skipped"
[ "$p" -gt 0 ] || rc=1
exit $rc
