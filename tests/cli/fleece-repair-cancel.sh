#!/usr/bin/env bash
# Image fleecing, the second job per disk (the one that copies the clusters
# the fleece image saved over the target): a Ctrl-C (SIGINT) while those
# jobs copy, on a VM with a qcow2 and a raw disk, exits 130 and leaves
# everything as before the backup: no new point and no file of it in the
# store, QEMU's block graph as before (devices on their nodes, no node of
# ours), no job, no fleece image, the same bitmaps (no "next" bitmap left,
# the chain bitmaps still recording), the VM running.  The next INC is
# exact: the chain bitmaps kept every write since the last point.  QEMU
# killed there: the backup fails, the store is as before, and the next
# backup after a restart (auto: a full) is exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp "$QMPCMD"
qb_need_cli
qb_tmpdir
FL=$T/fleece
mkdir -p "$FL" "$T/cap"

qb_vm_start vm1 drive0:qcow2:32M data1:raw:16M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 24M"
qb_guest_write vm1 data1 "write -P 0x12 0 12M"
DISKS="drive0 data1"

# Print VM's dirty bitmaps as "device name recording" lines (no counts:
# the guest writes during the test).
bitmaps() {
  qb_qmp "$1" query-block | python3 -c '
import json, sys
for d in json.load(sys.stdin):
    for b in d.get("inserted", {}).get("dirty-bitmaps", []):
        print(d["device"], b["name"], b["recording"])' | sort
}

# Print "N UNFINISHED" for VM's block jobs: their number and how many still have bytes to copy.
jobs_state() {
  python3 -c '
import json, sys
jobs = json.loads(sys.argv[1])
print(len(jobs), sum(1 for j in jobs if j["offset"] < j["len"]))' "$(qb_qmp "$1" query-block-jobs)"
}

# Set the speed of every block job of VM to BYTES per second (0: unlimited).
jobs_speed() {
  local id
  for id in $(python3 -c 'import json,sys; [print(j["device"]) for j in json.loads(sys.argv[1])]' \
      "$(qb_qmp "$1" query-block-jobs)"); do
    qb_qmp "$1" block-job-set-speed "{\"device\":\"$id\",\"speed\":$2}" >/dev/null 2>&1 || true
  done
}

# Print the store's files of vm1 (layers, records, anything else), sorted.
store_files() { (cd "$T/store/vm1" && find . -type f | sort); }

qb_backup_expect 0 vm1 full
BASE=$(qb_block_graph vm1)
BITMAPS=$(bitmaps vm1)
grep -q ' True$' <<< "$BITMAPS" || qb_die "no recording chain bitmap after the full: $BITMAPS"

# Changes since the full, for the INC to copy.
qb_guest_write vm1 drive0 "write -P 0x21 0 8M"
qb_guest_write vm1 data1 "write -P 0x22 0 8M"
FILES=$(store_files)

# Start an INC with fleecing (BPID) and return once its second jobs copy:
# its first jobs are held back (stopped VM, then a low speed) while the
# guest rewrites 2 MiB per disk, so each fleece image saves 2 MiB; then they
# run free; the second jobs run at --speed 64k (about 30 s for 2 MiB), time
# enough to interrupt them.
to_second_jobs() {
  local i n=0 left=0
  qb_qmp vm1 stop >/dev/null
  "$QMPBACKUP" --socket "$(qb_vm_socket vm1)" backup --level inc --target "$T/store/vm1" \
    --fleece-dir "$FL" --speed 64k >"$T/bg.out" 2>&1 &
  BPID=$!
  qb_register_pid "$BPID"
  for ((i = 0; i < 600; i++)); do
    read -r n left < <(jobs_state vm1)
    [ "$n" = 2 ] && break
    _qb_alive "$BPID" || break
    sleep 0.05
  done
  [ "$n" = 2 ] || qb_die "the backup jobs never started: $(cat "$T/bg.out")"
  qb_qmp vm1 cont >/dev/null
  qb_guest_write vm1 drive0 "write -P 0x31 4M 2M"
  qb_guest_write vm1 data1 "write -P 0x32 4M 2M"
  [ "$(jobs_state vm1 | awk '{ print $2 }')" -gt 0 ] ||
    qb_die "the first jobs finished before the guest's writes ended (nothing was tested)"
  jobs_speed vm1 0
  # The phase line, then two jobs copying.
  for ((i = 0; i < 1200; i++)); do
    if grep -q 'copying the blocks changed meanwhile' "$T/bg.out"; then
      read -r n left < <(jobs_state vm1)
      [ "$n" = 2 ] && [ "$left" = 2 ] && break
    fi
    _qb_alive "$BPID" || break
    sleep 0.05
  done
  grep -q 'copying the blocks changed meanwhile' "$T/bg.out" ||
    qb_die "the backup never reached the second jobs: $(cat "$T/bg.out")"
  read -r n left < <(jobs_state vm1)
  [ "$n" = 2 ] && [ "$left" = 2 ] ||
    qb_die "expected two second jobs with bytes left, saw $n jobs, $left unfinished: $(cat "$T/bg.out")"
}

# Check the newest point of every disk against the VM's disks (stopped meanwhile).
check_next_inc() {
  local d dir
  qb_qmp vm1 stop >/dev/null
  for d in $DISKS; do qb_capture vm1 "$d" "$T/cap/$d.raw"; done
  qb_backup_expect 0 vm1 "$@"
  for d in $DISKS; do
    dir=$T/store/vm1/$d
    qb_check_merge "$dir" "$(qb_layer_id "$(qb_newest_layer "$dir")")" "$T/cap/$d.raw"
  done
  qb_qmp vm1 cont >/dev/null
}

# --- Ctrl-C ------------------------------------------------------------------
to_second_jobs
kill -INT "$BPID"
rc=0; wait "$BPID" || rc=$?
[ $rc = 130 ] || qb_die "qmpbackup canceled in its second jobs exited $rc, expected 130: $(cat "$T/bg.out")"
sed 's/^/  interrupted: /' "$T/bg.out" >&2

[ "$(store_files)" = "$FILES" ] || qb_die "the canceled backup changed the store:
before:
$FILES
after:
$(store_files)"
now=$(qb_block_graph vm1)
[ "$now" = "$BASE" ] || qb_die "the block graph changed:
before:
$BASE
after:
$now"
[ "$(qb_qmp vm1 query-block-jobs)" = "[]" ] || qb_die "jobs left: $(qb_qmp vm1 query-jobs)"
[ -z "$(ls -A "$FL")" ] || qb_die "fleece images left: $(ls -la "$FL")"
now=$(bitmaps vm1)
[ "$now" = "$BITMAPS" ] || qb_die "the bitmaps changed:
before:
$BITMAPS
after:
$now"
qb_qmp vm1 query-status | grep -q '"running":true' || qb_die "VM vm1 does not run after the cancel"

# The next INC equals the disks.
check_next_inc inc

# --- QEMU killed -----------------------------------------------------------
# The backup fails, the store is as before; QEMU started again on the same
# images has lost the raw disk's bitmap: auto takes a full (sweeping the
# fleece images QEMU left), exact.
qb_guest_write vm1 drive0 "write -P 0x41 0 8M"
qb_guest_write vm1 data1 "write -P 0x42 0 8M"
FILES=$(store_files)
to_second_jobs
qb_vm_kill vm1
rc=0; wait "$BPID" || rc=$?
[ $rc != 0 ] || qb_die "qmpbackup succeeded although QEMU died in its second jobs: $(cat "$T/bg.out")"
sed 's/^/  QEMU killed: /' "$T/bg.out" >&2
[ "$(store_files)" = "$FILES" ] || qb_die "the backup QEMU died in changed the store:
before:
$FILES
after:
$(store_files)"
qb_vm_restart vm1
qb_qmp vm1 cont >/dev/null
check_next_inc auto --fleece-dir "$FL"
[ -z "$(ls -A "$FL")" ] || qb_die "fleece images left after the next backup: $(ls -la "$FL")"
qb_log "ok: SIGINT and QEMU's death in the fleece second jobs: store (and graph, jobs, fleece dir, bitmaps) as before; the next backups exact"
