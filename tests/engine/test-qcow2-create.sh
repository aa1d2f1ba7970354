#!/bin/bash
# The store's qcow2 writer (qcow2_create_empty) must write, byte for byte,
# the file `qemu-img create -f qcow2 -o compat=1.1 [-b NAME -F qcow2]`
# writes: for edge sizes (tiny, odd multiples of 512, around each 512 MiB
# L1 entry and the 4 TiB point where the L1 table needs a second cluster,
# multi-TiB with a many-cluster L1 table, qcow2's largest size) and backing
# names (short, relative paths as the engine writes them, long, the
# 1023-byte maximum), then for a seeded random series (QB_FUZZ_COUNT cases,
# default 60; QB_FUZZ_SEED picks the series).  What the writer refuses
# (size 0, not a multiple of 512, beyond qcow2's L1 limit, names over 1023
# bytes) qemu-img must refuse too or the writer must say so (exit 3), and
# then nothing is written.  The refcount block of such an image covers
# 32768 clusters; the largest image has 3 + 512 clusters, so no size reaches
# a second refcount block.
#
# usage: test-qcow2-create.sh QCOW2_CREATE_TOOL
set -euo pipefail
TOOL=${1:?usage: test-qcow2-create.sh QCOW2_CREATE_TOOL}
. "${QB_SOURCE_DIR:?}/tests/lib/vm.sh"
qb_need qemu-img cmp
qb_tmpdir

COUNT=${QB_FUZZ_COUNT:-60}
SEED=${QB_FUZZ_SEED:-$$}
ncase=0

# Compare our image with qemu-img's for SIZE and backing NAME ("" for none).
check() {
  local size=$1 name=$2 rc=0 qrc=0
  local ours=$T/ours.qcow2 ref=$T/ref.qcow2
  rm -f "$ours" "$ref"
  ncase=$((ncase + 1))
  if [ -n "$name" ]; then
    "$TOOL" "$ours" "$size" "$name" || rc=$?
    qemu-img create -q -u -f qcow2 -o compat=1.1 -b "$name" -F qcow2 "$ref" "$size" \
      2>"$T/qerr" || qrc=$?
  else
    "$TOOL" "$ours" "$size" || rc=$?
    qemu-img create -q -f qcow2 -o compat=1.1 "$ref" "$size" 2>"$T/qerr" || qrc=$?
  fi
  case $rc in
    0) [ "$qrc" -eq 0 ] || qb_die "size $size name ${#name} bytes: written, qemu-img refused: $(cat "$T/qerr")"
       [ "$(stat -c %a "$ours")" = 600 ] || qb_die "size $size: mode $(stat -c %a "$ours")"
       cmp "$ours" "$ref" >"$T/cmp" 2>&1 \
         || qb_die "size $size name '${name:0:60}' (${#name} bytes): differs from qemu-img's: $(cat "$T/cmp")";;
    3) [ ! -e "$ours" ] || qb_die "size $size: refused but a file was written"
       refused=$((refused + 1));;
    *) qb_die "size $size name ${#name} bytes: the writer failed (exit $rc)";;
  esac
}
refused=0

K=1024 M=$((1 << 20)) G=$((1 << 30)) TB=$((1 << 40))
L1E=$((512 * M))                      # guest bytes per L1 entry
sizes=(512 1024 $((64 * K - 512)) $((64 * K)) $((64 * K + 512)) $((M + 512))
       67108352 104923648 $((8 * G)) 65536 $((3 * M + 7 * 512))
       $((L1E - 512)) $L1E $((L1E + 512)) $((2 * L1E)) $((2 * L1E + 512))
       $((TB)) $((4 * TB - 512)) $((4 * TB)) $((4 * TB + 512)) $((8 * TB + 512))
       $((64 * TB)) $((300 * TB + 4096)) $((1 << 50)) $((1 << 51)))
long=$(printf 'x%.0s' $(seq 200))
max=$(printf '%0.s0123456789abcdef/' $(seq 56))  # 56 * 17 = 952 bytes
max=$max$(printf 'y%.0s' $(seq $((1023 - ${#max}))))  # 1023 bytes
[ ${#max} -eq 1023 ] || qb_die "test bug: max name is ${#max} bytes"
names=("" "a" "../FULL-1764489600-0a1b2c3d/disk0" "INC-1764489600-0a1b2c3d" "$long" "$max")
for s in "${sizes[@]}"; do
  for n in "${names[@]}"; do check "$s" "$n"; done
done
[ "$refused" -eq 0 ] || qb_die "the writer refused $refused of the fixed cases"

# Refused: the writer says so and writes nothing (QEMU makes these).
for s in 0 511 513 $(( (1 << 51) + 512 )); do
  rc=0; "$TOOL" "$T/r.qcow2" "$s" || rc=$?
  [ "$rc" -eq 3 ] && [ ! -e "$T/r.qcow2" ] || qb_die "size $s: exit $rc, want a refusal (3)"
done
rc=0; "$TOOL" "$T/r.qcow2" 65536 "${max}z" || rc=$?
[ "$rc" -eq 3 ] && [ ! -e "$T/r.qcow2" ] || qb_die "a 1024-byte backing name: exit $rc, want 3"
# A link in place of the file is not followed.
ln -s "$T/elsewhere" "$T/link"
rc=0; "$TOOL" "$T/link" 65536 2>/dev/null || rc=$?
[ "$rc" -eq 1 ] && [ ! -e "$T/elsewhere" ] || qb_die "the writer followed a symbolic link (exit $rc)"
qb_log "fixed: $ncase cases identical to qemu-img create"

# Random sizes and names, RANDOM seeded: log-uniform sizes up to 2 PiB in
# 512-byte units (some not multiples of 512: qemu-img rounds those up, the
# writer refuses them), names of 1 .. 1023 bytes.
RANDOM=$SEED
chars='abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/ '
nfixed=$ncase
for ((i = 0; i < COUNT; i++)); do
  bits=$((9 + RANDOM % 43))
  size=$(( ((RANDOM << 30 | RANDOM << 15 | RANDOM) % (1 << (bits - 9)) + 1) * 512 ))
  ((RANDOM % 8 == 0)) && size=$((size + 1 + RANDOM % 511))
  name=""
  if ((RANDOM % 4)); then
    len=$((RANDOM % 3 ? 1 + RANDOM % 64 : 1 + RANDOM % 1023))
    for ((j = 0; j < len; j++)); do name+=${chars:RANDOM % ${#chars}:1}; done
  fi
  if ((size % 512)); then
    rc=0; "$TOOL" "$T/r.qcow2" "$size" ${name:+"$name"} || rc=$?
    [ "$rc" -eq 3 ] && [ ! -e "$T/r.qcow2" ] || qb_die "size $size: exit $rc, want a refusal (3)"
    continue
  fi
  check "$size" "$name"
done
[ "$refused" -eq 0 ] || qb_die "the writer refused $refused random cases qemu-img accepts"
qb_log "random (seed $SEED): $((ncase - nfixed)) cases identical to qemu-img create"
qb_log "PASS"
