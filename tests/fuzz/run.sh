#!/usr/bin/env bash
# Run one libFuzzer target for a bounded time over the committed corpus and
# the regression inputs.  Usage: tests/fuzz/run.sh TARGET SECONDS [LIBFUZZER-ARGS...]
#   TARGET   jsonio | qmp | qga | qcow2 | chain | control | parttab | sums
#   SECONDS  how long to fuzz (meson test runs 10 s; run 600 or more by hand)
# The binaries are built by build.sh into $QB_BUILD_DIR/tests/fuzz (default:
# a fuzz/ dir beside this script's build dir argument, or ./fuzz-bin).  New
# inputs found go to a work dir ($QB_FUZZ_WORK, else a temp dir removed at the
# end unless QB_FUZZ_KEEP=1); crashes are written there too and the path is
# printed.  A crash, leak, sanitizer report or timeout fails the run; after a
# fix, put the crashing input in tests/fuzz/regress/TARGET/.  Exit 77 (skip)
# when clang with libFuzzer is not installed.
#   Reproduce one input:  run.sh TARGET 0 path/to/crash-file
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
target=${1:?usage: run.sh TARGET SECONDS [LIBFUZZER-ARGS...]}
secs=${2:?usage: run.sh TARGET SECONDS [LIBFUZZER-ARGS...]}
shift 2
bindir=${QB_BUILD_DIR:-$PWD/fuzz-bin}/tests/fuzz
[ -n "${QB_BUILD_DIR:-}" ] || bindir=$PWD/fuzz-bin

rc=0
"$here/build.sh" "$bindir" "$target" || rc=$?
[ $rc -eq 0 ] || exit $rc
bin=$bindir/fuzz_$target

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

# Reproduce given files (seconds 0 and file arguments).
if [ "$secs" = 0 ] && [ $# -gt 0 ] && [ -f "$1" ]; then
  exec "$bin" "$@"
fi

work=${QB_FUZZ_WORK:-}
if [ -z "$work" ]; then
  work=$(mktemp -d)
  [ "${QB_FUZZ_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/corpus" "$work/artifacts"
dirs=("$work/corpus" "$here/corpus/$target")
[ -d "$here/regress/$target" ] && dirs+=("$here/regress/$target")

# libntfs-3g is not built with the sanitizers: leaks allocated inside it on
# damaged volumes are reported without the caller's frames (our objects are
# closed on every path); they are suppressed for the ntfs target only.
if [ "$target" = ntfs ]; then
  echo "leak:libntfs-3g.so" > "$work/lsan.supp"
  export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$work/lsan.supp"
fi

# The regression inputs must pass on their own first.
if [ -d "$here/regress/$target" ] && [ -n "$(ls -A "$here/regress/$target")" ]; then
  "$bin" -runs=0 "$here/regress/$target"/* >"$work/regress.log" 2>&1 || {
    cat "$work/regress.log"; echo "fuzz-$target: a regression input fails"; exit 1; }
fi

# The wire targets take inputs up to 8 MiB (amplification payloads) and must
# stay far below the RSS limit: a peer may not grow the process much.
case $target in
  jsonio|qmp|qga) max_len=$((8 << 20)); rss_mb=1024 ;;
  ntfs) max_len=$((2 << 20)); rss_mb=2048 ;;     # whole (small) volumes
  *) max_len=65536; rss_mb=2048 ;;
esac
echo "fuzz-$target: fuzzing for $secs s (work dir $work)"
set +e
"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=$rss_mb -max_len=$max_len \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$@" "${dirs[@]}" \
  >"$work/fuzz.log" 2>&1
rc=$?
set -e
grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb))' \
  "$work/fuzz.log" || true
if [ $rc -ne 0 ]; then
  tail -60 "$work/fuzz.log"
  ls -l "$work/artifacts" 2>/dev/null
  trap - EXIT
  echo "fuzz-$target: FAILED (exit $rc); inputs and log kept in $work"
  exit 1
fi
echo "fuzz-$target: no finding in $secs s"
