#!/usr/bin/env bash
# QEMU killed with SIGKILL in the middle of a FULL and, later, of an INC taken
# through the mount.  The failed backup publishes nothing and leaves no file;
# QEMU started again on the same images has no persistent bitmap (killed in the
# first full of a chain) or an inconsistent one (killed while an inc ran after a
# clean restart had stored it): status says so, `inc` is refused, `auto` takes a full and status
# says why; every earlier point stays exact and the chain goes on after it.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init

qb_vm_start vm1 drive0:qcow2:64M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x21 0 32M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,speed=1M"
fault_backup vm1 full
qb_guest_write vm1 drive0 "write -P 0x22 1M 1M"
fault_backup vm1 inc

# Kill QEMU while the job of LEVEL runs; then start it again on the same images
# and expect the bitmap health WANT (missing|inconsistent).
kill_during() {
  local level=$1 want=$2 n r
  n=$(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l)
  fault_start_writer vm1 "$level\n"
  fault_wait_job vm1
  sleep 0.3
  qb_vm_kill vm1
  fault_wait_gone "$WRITER"
  wait "$WRITER" 2>/dev/null || true
  r=$(cat "$T/writer.out")
  case $r in EIO|EHOSTDOWN|ENOTCONN) ;; *) qb_die "$level with QEMU killed: writer saw $r" ;; esac
  fault_status vm1 'd["last"]["error"]' | grep -q . || qb_die "the failure is not explained: $(cat "$T/status.json")"
  qb_log "$level killed: $r, status: $(fault_status vm1 'd["last"]["error"]')"
  [ "$(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l)" = "$n" ] || qb_die "a killed $level made a point"
  fault_check_points "after QEMU was killed during a $level"
  qb_vm_restart vm1
  qb_qmp vm1 cont >/dev/null
  local health
  fault_wait_status vm1 'd["qmp"]["reachable"] and d["disks"][0].get("health")'
  health=$(fault_status vm1 '[(x.get("health"), x.get("health_reason")) for x in d["disks"]]')
  qb_log "bitmap after the restart: $health"
  case $health in *"'$want'"*) ;; *) qb_die "bitmap after a crash: $health, want $want: $(cat "$T/status.json")" ;; esac
  # inc is refused and publishes nothing; auto takes a full and says why.
  qb_guest_write vm1 drive0 "write -P 0x2f 8M 1M"
  r=$(qb_fs_control "$mnt/vm1/backup" "inc\n")
  [ "$r" = EIO ] || qb_die "inc with a bad bitmap: $r"
  [ "$(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l)" = "$n" ] || qb_die "a refused inc made a point"
  fault_backup vm1 auto
  [ "$(fault_status vm1 'd["last"]["level"]')" = full ] || qb_die "auto after the crash: $(cat "$T/status.json")"
  qb_log "auto: $(fault_status vm1 'd["last"]')"
  r=$(fault_status vm1 'd["last"].get("reason", "")')
  case $want:$r in inconsistent:*inconsistent*|missing:*"no bitmap"*|missing:*missing*) ;;
    *) false ;; esac \
    || qb_die "status does not say why auto took a full: $(cat "$T/status.json")"
  fault_assert_qemu_clean vm1 "after the full"
  qb_guest_write vm1 drive0 "write -z 2M 512k"
  fault_backup vm1 auto
  [ "$(fault_status vm1 'd["last"]["level"]')" = inc ] || qb_die "the chain did not go on: $(cat "$T/status.json")"
  fault_check_points "after the new chain"
  fault_assert_running vm1
}

# Killed during a full: the new bitmap never reached the image: missing.
qb_guest_write vm1 drive0 "write -P 0x23 0 24M"
kill_during full missing
# A clean restart stores the bitmap in the qcow2 file and the chain goes on;
# QEMU killed while it has the bitmap loaded leaves it marked in use: inconsistent.
qb_vm_restart vm1
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x25 3M 1M"
fault_backup vm1 auto
[ "$(fault_status vm1 'd["last"]["level"]')" = inc ] || qb_die "after a clean restart: $(cat "$T/status.json")"
qb_guest_write vm1 drive0 "write -P 0x24 0 24M"
kill_during inc inconsistent
echo "kill-qemu: ok"
