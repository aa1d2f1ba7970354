#!/usr/bin/env bash
# A VM whose disks are attached with -blockdev + -device (no drive id): the disk
# is named by its device id, never by the node name, and its points are exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"

qb_vm_start bd --blockdev vda:qcow2:48M vdb:raw:16M
qb_guest_random_writes bd vda 8 "$seed"
qb_guest_write bd vdb "write -P 0x21 0 4M"
qb_backup_expect 0 bd full
for d in vda vdb; do
  [ -d "$T/store/bd/$d" ] || qb_die "no store directory for disk $d: $(ls "$T/store/bd")"
done
[ ! -e "$T/store/bd/vda-node" ] || qb_die "the disk was named after its node name"
ids=("$(qb_layer_id "$(qb_newest_layer "$T/store/bd/vda")")")
qb_capture bd vda "$T/vda-0.raw"
qb_capture bd vdb "$T/vdb-0.raw"
for i in 1 2 3; do
  qb_guest_random_writes bd vda 5 $((seed + i))
  qb_guest_write bd vdb "write -z $((i * 1024 * 1024)) 64k"
  qb_guest_write bd vdb "write -P $((0x30 + i)) $((i * 3 * 1024 * 1024)) 512k"
  qb_backup_expect 0 bd inc
  ids+=("$(qb_layer_id "$(qb_newest_layer "$T/store/bd/vda")")")
  qb_capture bd vda "$T/vda-$i.raw"
  qb_capture bd vdb "$T/vdb-$i.raw"
done
for i in 0 1 2 3; do
  qb_check_merge "$T/store/bd/vda" "${ids[$i]}" "$T/vda-$i.raw"
  qb_check_merge "$T/store/bd/vdb" "${ids[$i]}" "$T/vdb-$i.raw"
done
echo "-blockdev VM: 4 points of 2 disks exact"
