#!/usr/bin/env bash
# Benchmark (not a test): `qmprebase verify` throughput beside `cat` of the
# same layer files to /dev/null, in one run.
#
#   contrib/bench/verify.sh [BUILD_DIR] [--size 2G] [--incs 3]
#
# Builds, in a temporary directory removed at the end, a store holding a
# FULL of a fully written SIZE disk and INCS incrementals of 64 MiB of
# changes each, taken by qmpbackup from a paused QEMU VM (no guest OS: the
# writes are qemu-io through QMP).  Then, each from a cold page cache when
# this process may drop it (root), else from a warm one (said so):
#   verify  qmprebase verify --dir STORE/<vm>   (every layer, checksums + structure)
#   cat     cat of the same layer files to /dev/null
# and prints both rates (GB/s of layer bytes read) and verify/cat.  Also the
# time of the FULL's backup (its commit includes computing the checksums).
# Needs qemu-img, qemu-system-x86_64 and a build (default: ./build).
set -euo pipefail

src=$(cd "$(dirname "$0")/../.." && pwd)
build=$src/build
size=2G
incs=3
while [ $# -gt 0 ]; do
  case $1 in
    --size) size=$2; shift 2 ;;
    --incs) incs=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) build=$(cd "$1" && pwd); shift ;;
  esac
done
QMPBACKUP=$build/tools/qmpbackup
QMPREBASE=$build/tools/qmprebase
QMPCMD=$build/tests/tools/qmpcmd
export QB_SOURCE_DIR=$src QMPCMD
. "$src/tests/lib/vm.sh"
. "$src/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 python3 "$QMPBACKUP" "$QMPREBASE" "$QMPCMD"
qb_tmpdir

# Drop the page cache if allowed; print "cold" or "warm".
drop_caches() {
  sync
  if [ -w /proc/sys/vm/drop_caches ] && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
    echo cold
  else
    echo warm
  fi
}

bytes=$(qb_bytes "$size")
echo "verify bench: building a store of a $size FULL + $incs INCs in $T" >&2
qb_vm_start bv drive0:qcow2:"$size"
chunk=$((256 << 20))
for ((off = 0; off < bytes; off += chunk)); do
  len=$(( bytes - off < chunk ? bytes - off : chunk ))
  qb_guest_write bv drive0 "write -P $(( (off / chunk) % 250 + 1 )) $off $len"
done
t0=${EPOCHREALTIME/,/.}
qb_backup_expect 0 bv full
t1=${EPOCHREALTIME/,/.}
for ((i = 1; i <= incs; i++)); do
  for ((k = 0; k < 16; k++)); do
    qb_guest_write bv drive0 "write -P $((i + 100)) $(( (RANDOM * 32768 + RANDOM) % (bytes / (4 << 20)) * (4 << 20) )) 4M"
  done
  qb_backup_expect 0 bv inc
done
qb_vm_stop bv
dir=$T/store/bv/drive0
mapfile -t layers < <(qb_layers "$dir")
total=0
for f in "${layers[@]}"; do total=$(( total + $(stat -c %s "$dir/$f") )); done

cache=$(drop_caches)
a=${EPOCHREALTIME/,/.}
rc=0; "$QMPREBASE" verify --dir "$T/store/bv" --json > "$T/verify.json" || rc=$?
b=${EPOCHREALTIME/,/.}
[ $rc -eq 0 ] || { cat "$T/verify.json"; echo "verify bench: verify exited $rc" >&2; exit 1; }
vbytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$T/verify.json")

drop_caches >/dev/null
c=${EPOCHREALTIME/,/.}
( cd "$dir" && cat "${layers[@]}" > /dev/null )
d=${EPOCHREALTIME/,/.}

awk -v vb="$vbytes" -v tb="$total" \
    -v vs="$(awk -v a="$a" -v b="$b" 'BEGIN { print b - a }')" \
    -v cs="$(awk -v a="$c" -v b="$d" 'BEGIN { print b - a }')" \
    -v fs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    -v n="${#layers[@]}" -v cache="$cache" -v size="$size" 'BEGIN {
  printf "store: %s FULL + %d INCs, %d layer files, %.2f GB on disk, %.2f GB of clusters summed\n",
         size, n - 1, n, tb / 1e9, vb / 1e9
  printf "page cache: %s\n", cache
  printf "full backup (incl. checksums at commit): %.2f s\n", fs
  printf "verify: %.2f s, %.2f GB/s (of cluster bytes), %.2f GB/s (of file bytes)\n", vs, vb / vs / 1e9, tb / vs / 1e9
  printf "cat:    %.2f s, %.2f GB/s\n", cs, tb / cs / 1e9
  printf "verify/cat: %.2f (file bytes per second)\n", (tb / vs) / (tb / cs)
}'
