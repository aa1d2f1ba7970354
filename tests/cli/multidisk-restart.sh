#!/usr/bin/env bash
# A two-disk VM (qcow2 + raw) backs up both disks as one point; every point of
# both disks equals the disks at that moment.  After a clean VM restart the
# qcow2 disk's persistent bitmap survives (a one-disk qcow2 VM continues its
# chain with an inc), while the raw disk's bitmap is gone: `inc` exits 5 and
# `auto` takes a full of the VM and says why.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"

# Back up VM LEVEL, then capture every disk as $T/NAME-DISK-<layer id>.raw and check
# that the newest layer of each disk has kind KIND (FULL/INC).
backup_and_capture() {
  local vm=$1 level=$2 kind=$3 d f
  qb_backup_expect 0 "$vm" "$level"
  for d in $(qb_vm_disks "$vm"); do
    f=$(qb_newest_layer "$T/store/$vm/$d")
    [[ $f == $kind-* ]] || qb_die "$level backup of $vm made $f for $d, expected a $kind"
    qb_capture "$vm" "$d" "$T/$vm-$d-$(qb_layer_id "$f").raw"
  done
}

# Check every captured point of VM against `qmprebase merge`.
check_all() {
  local vm=$1 c d id n=0
  for c in "$T/$vm"-*.raw; do
    c=${c##*/}; c=${c%.raw}; c=${c#"$vm"-}
    d=${c%%-*}; id=${c#*-}
    qb_check_merge "$T/store/$vm/$d" "$id" "$T/$vm-$c.raw"
    n=$((n + 1))
  done
  echo "$vm: $n disk restore points equal the disks"
}

# --- two disks: qcow2 + raw -------------------------------------------------
qb_vm_start two drive0:qcow2:48M data1:raw:32M
qb_guest_random_writes two drive0 8 "$seed"
qb_guest_random_writes two data1 8 $((seed + 1))
backup_and_capture two full FULL
for i in 1 2; do
  qb_guest_random_writes two drive0 6 $((seed + 10 * i))
  qb_guest_random_writes two data1 6 $((seed + 10 * i + 1))
  qb_guest_write two data1 "write -z $((i * 1024 * 1024)) 256k"
  qb_guest_write two data1 "discard $((i * 2 * 1024 * 1024)) 128k"
  backup_and_capture two inc INC
done
# One point, one record: the two disks' newest layers carry the same id.
[ "$(qb_layer_id "$(qb_newest_layer "$T/store/two/drive0")")" = \
  "$(qb_layer_id "$(qb_newest_layer "$T/store/two/data1")")" ] || qb_die "the disks' points differ"

qb_vm_restart two
qb_guest_write two drive0 "write -P 0x5a 1M 1M"
qb_guest_write two data1 "write -P 0x5b 3M 1M"
rc=0; qb_backup two inc || rc=$?
[ $rc -eq 5 ] || qb_die "inc after a restart with a raw disk exited $rc, expected 5 (inc impossible)"
grep -q . "$T/last-backup.out" || qb_die "the failed inc printed no reason"
backup_and_capture two auto FULL
grep -qi full "$T/last-backup.out" || qb_die "auto did not say it took a full"
echo "auto after restart: full, reason: $(tr '\n' ' ' < "$T/last-backup.out")"
qb_guest_random_writes two data1 5 $((seed + 99))
backup_and_capture two auto INC
check_all two

# --- one qcow2 disk: the persistent bitmap survives a clean restart -----------
qb_vm_start one drive0:qcow2:32M
qb_guest_random_writes one drive0 8 $((seed + 5))
backup_and_capture one full FULL
qb_guest_random_writes one drive0 4 $((seed + 6))
backup_and_capture one inc INC
qb_vm_restart one
qb_guest_random_writes one drive0 4 $((seed + 7))
backup_and_capture one auto INC
qb_vm_restart one
qb_guest_random_writes one drive0 4 $((seed + 8))
backup_and_capture one inc INC
[ "$(qb_layers "$T/store/one/drive0" | wc -l)" -eq 4 ] || qb_die "one chain of 4 layers expected"
check_all one
