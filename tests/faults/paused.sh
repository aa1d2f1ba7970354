#!/usr/bin/env bash
# A VM paused (`stop`) while a backup through the mount runs, and a backup
# started while the VM is paused: both complete, their points are exact, the
# product leaves the VM paused as the admin left it; resumed, the next auto
# continues the chain.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init

qb_vm_start vm1 drive0:qcow2:64M data1:raw:16M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x31 0 32M"
qb_guest_write vm1 data1 "write -P 0x32 0 8M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,speed=1M"
fault_backup vm1 full

# Paused while the inc's jobs run (throttled: the jobs are surely mid-way).
qb_guest_write vm1 drive0 "write -P 0x33 0 24M"
qb_guest_write vm1 data1 "write -z 1M 2M"
qb_capture vm1 drive0 "$T/cap/new-drive0.raw"
qb_capture vm1 data1 "$T/cap/new-data1.raw"
fault_start_writer vm1 "inc\n"
fault_wait_job vm1
qb_qmp vm1 stop >/dev/null
sleep 0.5
_qb_alive "$WRITER" || qb_die "the throttled backup ended before it could be let go"
fault_unthrottle vm1
fault_wait_gone "$WRITER"
wait "$WRITER" 2>/dev/null || true
[ "$(cat "$T/writer.out")" = OK ] || qb_die "backup with the VM paused mid-way: $(cat "$T/writer.out"): $(cat "$mnt/vm1/status")"
for d in drive0 data1; do fault_remember vm1 "$d" "$(fault_newest vm1 "$d")" "$T/cap/new-$d.raw"; done
qb_qmp vm1 query-status | grep -q '"status":"paused"' || qb_die "the VM did not stay paused: $(qb_qmp vm1 query-status)"
fault_check_points "paused mid-way"
fault_assert_qemu_clean vm1 "paused mid-way"

# Started while paused (qb_capture keeps a paused VM paused).
qb_guest_write vm1 data1 "write -P 0x34 12M 1M"
fault_backup vm1 inc
qb_qmp vm1 query-status | grep -q '"status":"paused"' || qb_die "the VM did not stay paused: $(qb_qmp vm1 query-status)"

# Resumed: the chain goes on.
qb_qmp vm1 cont >/dev/null
fault_assert_running vm1
qb_guest_write vm1 drive0 "write -P 0x35 40M 1M"
fault_backup vm1 auto
[ "$(fault_status vm1 'd["last"]["level"]')" = inc ] || qb_die "auto after resume: $(cat "$T/status.json")"
fault_check_points "resumed"
fault_assert_running vm1
echo "paused: ok"
