#!/usr/bin/env bash
# The QMP socket goes away and comes back under the same path, without a
# remount: while QEMU is gone (quit: the socket file is removed; SIGKILL: a
# stale socket file stays) a backup is EHOSTDOWN and status says unreachable,
# the points stay readable; when QEMU is back, status says reachable and
# backups work again (an inc after a clean quit: the qcow2 bitmap persisted;
# a full after the kill).
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init

qb_vm_start vm1 drive0:qcow2:32M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x41 0 8M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
fault_backup vm1 full

# Fail unless a backup of vm1 is refused as unreachable and status agrees (WHAT: the case).
assert_unreachable() {
  local r n
  n=$(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l)
  [ -d "$mnt/vm1" ] || qb_die "$1: the VM with backups vanished from the mount"
  r=$(qb_fs_control "$mnt/vm1/backup" "auto\n")
  [ "$r" = EHOSTDOWN ] || [ "$r" = ENOTCONN ] || qb_die "$1: backup while QEMU is gone: $r"
  err=$(touch "$mnt/vm1/backup" 2>&1) && qb_die "$1: touch while QEMU is gone succeeded"
  fault_wait_status vm1 'not d["qmp"]["reachable"]'
  fault_status vm1 'd["last"]["error"]' | grep -q . || qb_die "$1: no error text: $(cat "$T/status.json")"
  [ "$(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l)" = "$n" ] || qb_die "$1: a refused backup made a point"
  fault_check_points "$1"
}

# Bring vm1 back on the same socket path; fail unless the mount sees it and LEVEL follows.
assert_back() {
  _qb_vm_launch vm1
  qb_qmp vm1 cont >/dev/null
  fault_wait_status vm1 'd["qmp"]["reachable"]'
  qb_guest_write vm1 drive0 "write -P 0x4$2 $2M 1M"
  fault_backup vm1 auto
  [ "$(fault_status vm1 'd["last"]["level"]')" = "$3" ] || qb_die "$1: auto is not $3: $(cat "$T/status.json")"
  fault_check_points "$1"
  fault_assert_qemu_clean vm1 "$1"
}

qb_guest_write vm1 drive0 "write -P 0x42 1M 1M"
qb_vm_stop vm1
[ -e "$(qb_vm_socket vm1)" ] && qb_log "note: QEMU left its socket file after quit"
assert_unreachable "after quit"
assert_back "back after quit" 3 inc

qb_guest_write vm1 drive0 "write -P 0x44 5M 1M"
qb_vm_kill vm1
[ -S "$(qb_vm_socket vm1)" ] || qb_die "a killed QEMU removed its socket file?"
assert_unreachable "after SIGKILL (stale socket)"
assert_back "back after SIGKILL" 6 full
fault_assert_running vm1
echo "socket-gone: ok"
