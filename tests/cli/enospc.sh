#!/usr/bin/env bash
# A backup that fails (the store, a small tmpfs, fills up) leaves no restore
# point and no stray files, and the next inc still captures every change made
# before the failed one (the bitmap kept them).
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_need_root
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"
mkdir -p "$T/store"
mount -t tmpfs -o size=12M,mode=0700 qbtest "$T/store" || { echo "SKIP: cannot mount tmpfs"; exit 77; }
qb_register_mount "$T/store"
dir=$T/store/ns/drive0

qb_vm_start ns drive0:qcow2:64M
qb_guest_write ns drive0 "write -P 0x11 0 4M"
qb_backup_expect 0 ns full
f0=$(qb_newest_layer "$dir"); qb_capture ns drive0 "$T/p0.raw"

qb_guest_write ns drive0 "write -P 0x22 8M 24M"          # does not fit in what is left
qb_guest_write ns drive0 "write -z 1M 1M"
qb_guest_random_writes ns drive0 4 "$seed"
rc=0; qb_backup ns inc || rc=$?
[ $rc -eq 1 ] || qb_die "inc into a full store exited $rc, expected 1"
[ "$(qb_layers "$dir")" = "$f0" ] || qb_die "the failed inc left layers: $(qb_layers "$dir" | tr '\n' ' ')"
stray=$(find "$T/store" -name '.tmp-*')
[ -z "$stray" ] || qb_die "the failed inc left temporary files: $stray"
[ "$(ls "$T/store/ns/.points" | wc -l)" -eq 1 ] || qb_die "the failed inc left a record"

mount -o remount,size=96M "$T/store"
qb_backup_expect 0 ns inc
f1=$(qb_newest_layer "$dir"); qb_capture ns drive0 "$T/p1.raw"
[[ $f1 == INC-* ]] || qb_die "the inc after the failure made $f1"
qb_check_merge "$dir" "$(qb_layer_id "$f0")" "$T/p0.raw"
qb_check_merge "$dir" "$(qb_layer_id "$f1")" "$T/p1.raw"
echo "failed inc published nothing; the next inc has every change"
