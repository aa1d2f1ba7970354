#!/usr/bin/env bash
# block_resize between backups: the disk's size changed, so `inc` exits 5 and
# `auto` starts a new chain with a full of the new size; old points stay exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"
dir=$T/store/rs/drive0

qb_vm_start rs drive0:qcow2:32M
qb_guest_random_writes rs drive0 8 "$seed"
qb_backup_expect 0 rs full
f0=$(qb_newest_layer "$dir"); qb_capture rs drive0 "$T/p0.raw"
qb_guest_random_writes rs drive0 4 $((seed + 1))
qb_backup_expect 0 rs inc
f1=$(qb_newest_layer "$dir"); qb_capture rs drive0 "$T/p1.raw"

qb_vm_resize rs drive0 48M
qb_guest_write rs drive0 "write -P 0x66 40M 2M"
rc=0; qb_backup rs inc || rc=$?
[ $rc -eq 5 ] || qb_die "inc after block_resize exited $rc, expected 5"
qb_backup_expect 0 rs auto
f2=$(qb_newest_layer "$dir"); qb_capture rs drive0 "$T/p2.raw"
[[ $f2 == FULL-* ]] || qb_die "auto after block_resize made $f2, expected a FULL"
[ "$(stat -c %s "$T/p2.raw")" -eq $((48 << 20)) ] || qb_die "capture has the wrong size"
qb_guest_random_writes rs drive0 4 $((seed + 2))
qb_backup_expect 0 rs inc
f3=$(qb_newest_layer "$dir"); qb_capture rs drive0 "$T/p3.raw"
[[ $f3 == INC-* ]] || qb_die "inc after the new full made $f3"

i=0
for f in "$f0" "$f1" "$f2" "$f3"; do
  qb_check_merge "$dir" "$(qb_layer_id "$f")" "$T/p$i.raw"
  i=$((i + 1))
done
echo "resize: new chain of the new size, 4 points exact"
