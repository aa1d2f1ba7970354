#!/usr/bin/env bash
# Store entries are the owner's only whatever the umask (022 here): layers made
# through the mount and through qmpbackup (full, inc, copy, monthly), with the
# directories (0700), records and locks (0600) checked by `store-perms` and the
# layer files by `store-perms-layers`.  The third argument picks the check.
# KNOWN BUG (faults-store-perms-layers is registered should_fail): the target
# images are made by `qemu-img create` with the process umask, so under 022
# every FULL/INC/COPY file is 0644.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
what=${3:?usage: store-perms.sh QMPBACKUPFS QMPCMD others|layers}
fault_init
qb_need "$QMPBACKUP"
umask 022

qb_vm_start vm1 drive0:qcow2:4M data1:raw:1M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 1M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
fault_backup vm1 full
qb_guest_write vm1 drive0 "write -P 0x12 0 64k"
fault_backup vm1 inc
qb_guest_write vm1 drive0 "write -P 0x13 0 64k"
for level in inc copy; do
  "$QMPBACKUP" --socket "$(qb_vm_socket vm1)" backup --level "$level" --target "$store/vm1" --quiet ||
    qb_die "qmpbackup $level failed"
done
"$QMPBACKUP" --socket "$(qb_vm_socket vm1)" backup --level full --monthly --target "$store/vm2" --quiet ||
  qb_die "qmpbackup full --monthly failed"
fault_check_points "before the permission check"
[ -n "$(find "$store/vm1" -name 'INC-*')" ] && [ -n "$(find "$store/vm2" -name 'FULL-*')" ] ||
  qb_die "the backups made no layer files: $(find "$store")"

if [ "$what" = layers ]; then
  leaky=$(find "$store" -type f \( -name 'FULL-*' -o -name 'INC-*' -o -name 'COPY-*' \) -perm /077)
else
  leaky=$(find "$store" -mindepth 1 \( -type d -perm /077 \) -o \
    \( -type f ! -name 'FULL-*' ! -name 'INC-*' ! -name 'COPY-*' -perm /077 \))
  [ -n "$(find "$store/vm1/.points" -type f)" ] || qb_die "no records in $store/vm1/.points"
fi
if [ -n "$leaky" ]; then
  ls -ld $leaky >&2
  qb_die "store entries open to group or others under umask 022 ($what): $(echo $leaky)"
fi
echo "store-perms ($what): ok"
