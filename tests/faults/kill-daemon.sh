#!/usr/bin/env bash
# qmpbackupfs killed with SIGKILL in the middle of a backup through the mount
# (the job throttled with -o speed so it is surely running): the QEMU job, its
# target node and the .tmp- file stay behind.  Mounted again: no half restore
# point is visible, the next inc removes the leftovers, captures every change
# made before and after the kill, and `auto` goes on from there; every earlier
# point stays exact and the VM keeps running.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init

qb_vm_start vm1 drive0:qcow2:64M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 16M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,speed=1M"
fault_backup vm1 full
qb_guest_write vm1 drive0 "write -P 0x12 4M 2M"
qb_guest_write vm1 drive0 "write -z 8M 1M"
fault_backup vm1 inc

# The changes the killed backup was copying.
qb_guest_write vm1 drive0 "write -P 0x13 16M 24M"
qb_guest_write vm1 drive0 "discard 0 1M"
fault_start_writer vm1 "inc\n"
fault_wait_job vm1
sleep 0.3    # the job has copied a little into its target
kill -9 "$FS_PID"
fault_wait_gone "$FS_PID"
wait "$FS_PID" 2>/dev/null || true
fault_wait_gone "$WRITER"
[ "$(cat "$T/writer.out")" != OK ] || qb_die "the writer saw success from a killed daemon"
fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt"

# What the dead daemon left: a job (or at least a target) in QEMU, a .tmp- file.
left_jobs=$(qb_qmp vm1 query-block-jobs)
left_tmp=$(find "$store" -name '.tmp-*')
qb_log "left behind: jobs $left_jobs; files: ${left_tmp:-none}"
[ -n "$left_tmp" ] || qb_die "no temporary file left by the killed backup (was it mid-job?)"
fault_assert_running vm1

# Mounted again: only the two finished points, no temporary name anywhere.
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
[ "$(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l)" = 2 ] \
  || qb_die "points after the kill: $(qb_fs_points "$mnt/vm1/drive0/restore" | tr '\n' ' ')"
ls -A "$mnt/vm1/drive0/chain" "$mnt/vm1/drive0/restore" "$mnt/vm1" | grep -q '^\.tmp' \
  && qb_die "a temporary file is visible in the mount: $(ls -A "$mnt/vm1/drive0/chain")"
FAULT_STORE_TMP_OK=1 fault_check_points "after remount"

# More changes, then the next inc: leftovers cleaned, every change captured.
qb_guest_write vm1 drive0 "write -P 0x14 40M 2M"
qb_guest_write vm1 drive0 "write -z 17M 1M"
fault_backup vm1 inc
[ "$(fault_status vm1 'd["last"]["level"]')" = inc ] || qb_die "not an inc: $(cat "$T/status.json")"
fault_assert_qemu_clean vm1 "after the next inc"
[ -z "$(find "$store" -name '.tmp-*')" ] || qb_die "temporary files survive the next backup: $(find "$store" -name '.tmp-*')"
qb_guest_write vm1 drive0 "write -P 0x15 60M 1M"
fault_backup vm1 auto
[ "$(fault_status vm1 'd["last"]["level"]')" = inc ] || qb_die "auto after the recovery was not an inc: $(cat "$T/status.json")"
fault_check_points "after the next inc and auto"
fault_assert_qemu_clean vm1 "at the end"
fault_assert_running vm1
echo "kill-daemon: ok"
