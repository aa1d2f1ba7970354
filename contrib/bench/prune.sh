#!/usr/bin/env bash
# qmpbackupfs benchmark: `qmprebase prune --keep-last 1` of a 50-point chain
# beside `qemu-img commit` of the same layers onto a copy of the FULL.
#
# The chain is real: a paused QEMU VM with one 4 GiB qcow2 disk, about 1 GiB
# written, a full backup with qmpbackup, then 49 incrementals, each after
# 16 to 64 MiB of guest writes (4 MiB each at random offsets).  Each run
# copies the disk folder twice (sparse), prunes one copy's VM to its newest
# point (the FULL folded forward over all 49 INCs) and commits the other
# copy's INCs into its FULL with qemu-img; both are timed to the end of a
# sync, with the bytes they wrote (rusage, child processes included), the
# bytes freed on disk and the layers read (the prune reads the same data as
# the commit).  The results must read the same (qemu-img compare).
#
# Usage: contrib/bench/prune.sh [--quick] [--runs N] [--out FILE] [--build DIR]
#   --quick       a 1 GiB disk with 256 MiB written, 4 to 16 MiB per INC
#   --runs N      prune and commit N times each on fresh copies (default 1)
#   --out FILE    also write the figures and the table to FILE
#   --build DIR   build directory with the binaries (default: build-bench,
#                 made with `meson setup build-bench --buildtype=release`)
# Needs qemu-img, qemu-io, qemu-system-x86_64, /usr/bin/time; root only to
# drop the page cache before each timed step (else both run warm).  Not part
# of `meson test`.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$SRC/build-bench
QUICK=0 RUNS=1 OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --runs) RUNS=$2; shift ;;
    --out) OUT=$(realpath -m "$2"); shift ;;
    --build) BUILD=$(realpath "$2"); shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prune.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
((RUNS >= 1)) || { echo "prune.sh: --runs must be >= 1" >&2; exit 2; }

export QB_BUILD_DIR=$BUILD
. "$SRC/tests/lib/vm.sh"
. "$SRC/contrib/bench/lib.sh"
for t in "$QMPBACKUP" "$QMPREBASE" "$QMPCMD"; do
  [ -x "$t" ] || { echo "prune.sh: $t missing: meson setup build-bench --buildtype=release && ninja -C build-bench" >&2; exit 2; }
done
"$QMPREBASE" prune --help > /dev/null 2>&1 || { echo "prune.sh: $QMPREBASE has no prune command" >&2; exit 2; }
qb_need qemu-img qemu-io qemu-system-x86_64 /usr/bin/time

if [ "$QUICK" = 1 ]; then
  SIZE=1G DATA=$((256 << 20)) INC_MIN=4 INC_MAX=16
else
  SIZE=4G DATA=$((1 << 30)) INC_MIN=16 INC_MAX=64
fi
NPOINTS=50 CHUNK=$((4 << 20))

[ -n "$OUT" ] && : > "$OUT"
qb_tmpdir
qb_on_exit bench_cleanup
trap 'exit 130' INT TERM HUP
T0=$(now)
say "# qmpbackupfs prune benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ), $([ "$QUICK" = 1 ] && echo quick || echo full), $RUNS run(s))"
say "# commit $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs, $(uname -r), $(qemu-img --version | head -n 1)"

# ---- the chain ---------------------------------------------------------------
note "a paused VM with one $SIZE disk, $((DATA >> 20)) MiB written, a full backup and $((NPOINTS - 1)) incrementals"
qb_vm_start pvm "drive0:qcow2:$SIZE"
sock=$(qb_vm_socket pvm)
bytes=$(qb_bytes "$SIZE")
nchunks=$((bytes / CHUNK))
for ((o = 0; o < DATA; o += 64 << 20)); do
  qb_guest_write pvm drive0 "write -P $(( (o >> 26) % 200 + 16 )) $o $((64 << 20))"
done
STORE=$T/store
backup() {
  "$QMPBACKUP" --socket "$sock" backup --level "$1" --target "$STORE/pvm" --quiet --no-quiesce > /dev/null
}
a=$(now)
backup full
RANDOM=1
changed=0
for ((i = 1; i < NPOINTS; i++)); do
  n=$(( (INC_MIN + RANDOM % (INC_MAX - INC_MIN + 1)) / 4 ))
  for ((k = 0; k < n; k++)); do
    off=$(( ((RANDOM * 32768 + RANDOM) % nchunks) * CHUNK ))
    qb_guest_write pvm drive0 "write -P $(( (i * 7 + k) % 250 + 1 )) $off $CHUNK"
  done
  changed=$((changed + n * CHUNK))
  backup inc
done
qb_vm_stop pvm
sync
dir=$STORE/pvm/drive0
layers=$(ls "$dir" | grep -cE '^(FULL|INC)-')
[ "$layers" -eq "$NPOINTS" ] || { note "expected $NPOINTS layers, have $layers"; exit 1; }
full=$(ls "$dir" | grep '^FULL-')
top=$(ls "$dir" | grep '^INC-' | sort | tail -n 1)
chain_bytes=$(du -B1 -s --apparent-size "$dir" | cut -f1)
chain_alloc=$(du -B1 -s "$dir" | cut -f1)
say "chain: $layers layers, FULL $(du -B1 "$dir/$full" | cut -f1) bytes allocated, $((changed >> 20)) MiB written by the guest over the INCs, $chain_alloc bytes allocated in all (built in $(printf '%.0f' "$(tdiff "$a" "$(now)")") s)"

# Drop the page cache if we may (both sides start cold), else say so once.
if [ "$(id -u)" -eq 0 ]; then
  cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
else
  cold() { sync; }
  note "not root: the page cache is not dropped, both sides run warm"
fi

# run_io OUTFILE CMD...: run CMD with /usr/bin/time, output to /dev/null;
# OUTFILE gets "seconds blocks_written_512" (the sync after it included).
run_io() {
  local out=$1 a b
  shift
  a=$(now)
  /usr/bin/time -f '%O' -o "$out.io" "$@" > /dev/null
  sync
  b=$(now)
  echo "$(tdiff "$a" "$b") $(tail -n 1 "$out.io")" > "$out"
}

PT=() PW=() PF=() QT=() QW=() QF=()
for ((run = 0; run < RUNS; run++)); do
  note "run $((run + 1)) of $RUNS: copies of the store"
  rm -rf "$T/ours" "$T/peer"
  mkdir -p "$T/ours" "$T/peer"
  cp -a --sparse=always "$STORE/pvm" "$T/ours/pvm"
  cp -a --sparse=always "$dir" "$T/peer/drive0"
  before=$(du -B1 -s "$T/ours/pvm" | cut -f1)

  note "qmprebase prune --keep-last 1"
  cold
  run_io "$T/p.res" "$QMPREBASE" prune --dir "$T/ours/pvm" --keep-last 1
  read -r secs blocks < "$T/p.res"
  PT+=("$secs") PW+=("$((blocks * 512))")
  PF+=("$((before - $(du -B1 -s "$T/ours/pvm" | cut -f1)))")
  left=$(ls "$T/ours/pvm/drive0" | grep -cE '^(FULL|INC)-')
  [ "$left" -eq 1 ] || { note "prune left $left layers, expected 1"; exit 1; }

  note "qemu-img commit of the same layers onto a copy of the FULL"
  before=$(du -B1 -s "$T/peer" | cut -f1)
  cold
  run_io "$T/q.res" sh -c "cd '$T/peer/drive0' && qemu-img commit -q -d -f qcow2 -b '$full' '$top' && sync '$full'"
  read -r secs blocks < "$T/q.res"
  # The peer removes the committed INCs too (what a prune frees).
  (cd "$T/peer/drive0" && rm -f INC-*)
  QT+=("$secs") QW+=("$((blocks * 512))")
  QF+=("$((before - $(du -B1 -s "$T/peer" | cut -f1)))")

  note "the pruned point and the committed FULL must read the same"
  kept=$(ls "$T/ours/pvm/drive0" | grep -E '^(FULL|INC)-')
  qemu-img compare -q -f qcow2 -F qcow2 "$T/ours/pvm/drive0/$kept" "$T/peer/drive0/$full" \
    || { note "MISMATCH: the pruned point differs from qemu-img commit's result"; exit 1; }
done
rm -rf "$T/ours" "$T/peer"

mib() { calc 'b / 1048576' b="$1"; }
fig "prune --keep-last 1 of 50 points (s, vs qemu-img commit)" "$(median "${PT[@]}")" "$(median "${QT[@]}")" s lo "" ""
fig "bytes written (MiB, vs qemu-img commit)" "$(mib "$(median "${PW[@]}")")" "$(mib "$(median "${QW[@]}")")" MiB lo "" ""
fig "bytes freed on disk (MiB, vs commit + rm)" "$(mib "$(median "${PF[@]}")")" "$(mib "$(median "${QF[@]}")")" MiB hi "" ""
fig_table
say ""
say "total time $(printf '%.0f' "$(tdiff "$T0" "$(now)")") s"
