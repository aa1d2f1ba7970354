#!/usr/bin/env bash
# Image fleecing (qmpbackup --fleece-dir): while a speed-limited job runs the
# guest's device sits on our copy-before-write filter, a fleece image exists
# in the fleece directory, and the guest writes (data, zeroes, discards) on
# clusters copied and not copied yet; each FULL and INC (and a compressed
# FULL) equals the disks at the moment of its transaction.  Afterwards
# QEMU's block graph is the one before (devices on their nodes, no node of
# ours) and no fleece image is left: after a success, after Ctrl-C (SIGINT), after a failure (the fleece
# directory fills up: the guest's writes still succeed, the backup fails),
# with an unusable fleece directory (a clear error, nothing changed).  A
# qmpbackup killed with SIGKILL mid-job leaves the filter and the image; the
# next backup removes them and is exact; so does `qmpbackup cleanup`.
# Without --fleece-dir there is no fleecing.  The guest's zero writes of
# part of a cluster not copied yet are the ones QEMU 7.2's snapshot-access
# reports as zeros: the points must still be exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp "$QMPCMD"
qb_need_cli
qb_tmpdir
FL=$T/fleece
mkdir -p "$FL" "$T/cap"

qb_vm_start vm1 drive0:qcow2:64M data1:raw:16M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 40M"
qb_guest_write vm1 data1 "write -P 0x12 0 12M"
DISKS="drive0 data1"

# Print how many devices of VM sit on our filter.
on_filter() { qb_block_graph "$1" | grep -c ' qmpbackup-cbw-' || true; }

# Print "N MIN_LEFT" for VM's jobs: their number and the largest shortfall below WANT bytes done.
jobs_progress() {
  python3 -c '
import json, sys
jobs = json.loads(sys.argv[1]); want = int(sys.argv[2])
left = [max(0, min(want, j["len"]) - j["offset"]) for j in jobs]
print(len(jobs), max(left) if left else want)' "$(qb_qmp "$1" query-block-jobs)" "$2"
}

# Set the speed of every block job of VM to BYTES per second (0: unlimited).
jobs_speed() {
  local id
  for id in $(python3 -c 'import json,sys; [print(j["device"]) for j in json.loads(sys.argv[1])]' \
      "$(qb_qmp "$1" query-block-jobs)"); do
    qb_qmp "$1" block-job-set-speed "{\"device\":\"$id\",\"speed\":$2}" >/dev/null 2>&1 || true
  done
}

# Print how many of VM's jobs still have bytes to copy.
jobs_unfinished() {
  python3 -c 'import json,sys; print(sum(1 for j in json.loads(sys.argv[1]) if j["offset"] < j["len"]))' \
    "$(qb_qmp "$1" query-block-jobs)"
}

# Fail unless VM runs.
assert_running() {
  qb_qmp "$1" query-status | grep -q '"running":true' || qb_die "VM $1 does not run ($2)"
}

# Fail unless VM's graph is BASE and the fleece directory DIR holds no image.
assert_clean() {
  local vm=$1 base=$2 dir=$3 what=$4 now
  now=$(qb_block_graph "$vm")
  [ "$now" = "$base" ] || qb_die "$what: the block graph changed:
before:
$base
after:
$now"
  [ -z "$(ls -A "$dir" | grep qmpbackup-fleece || true)" ] ||
    qb_die "$what: fleece images left: $(ls -la "$dir")"
  [ "$(qb_qmp "$vm" query-block-jobs)" = "[]" ] || qb_die "$what: jobs left"
}

# Start qmpbackup LEVEL of vm1 in the background (BPID) with ARGS.
start_backup() {
  local level=$1
  shift
  "$QMPBACKUP" --socket "$(qb_vm_socket vm1)" backup --level "$level" --target "$T/store/vm1" \
    --quiet "$@" >"$T/bg.out" 2>&1 &
  BPID=$!
  qb_register_pid "$BPID"
}

# Wait (bounded) until vm1 has one job per disk with DONE bytes copied (or all of its own).
wait_jobs() {
  local want=$1 i n left
  for ((i = 0; i < 600; i++)); do
    read -r n left < <(jobs_progress vm1 "$want")
    [ "$n" = 2 ] && [ "$left" = 0 ] && return 0
    _qb_alive "$BPID" || break
    sleep 0.05
  done
  qb_die "the jobs never got $want bytes done ($n jobs): $(cat "$T/bg.out")"
}

# Check the newest point of every disk of vm1 against the captures cap/DISK.raw.
check_newest() {
  local d dir id
  for d in $DISKS; do
    dir=$T/store/vm1/$d
    id=$(qb_layer_id "$(qb_newest_layer "$dir")")
    qb_check_merge "$dir" "$id" "$T/cap/$d.raw"
  done
}

# Print the number of layer files of vm1's drive0.
nlayers() { qb_layers "$T/store/vm1/drive0" | wc -l; }

BASE=$(qb_block_graph vm1)

LIVE_ARGS=()
# One backup at LEVEL (and LIVE_ARGS) while the guest writes "DISK:qemu-io command"...: the
# VM is stopped for the capture and until the jobs have copied 2 MiB, then
# the guest writes with the jobs slowed down.
live_round() {
  local level=$1 w d
  shift
  qb_qmp vm1 stop >/dev/null
  for d in $DISKS; do qb_capture vm1 "$d" "$T/cap/$d.raw"; done
  start_backup "$level" --fleece-dir "$FL" --speed 1M "${LIVE_ARGS[@]}"
  wait_jobs $((2 << 20))
  jobs_speed vm1 65536
  [ "$(on_filter vm1)" = 2 ] || qb_die "$level: the devices are not on the fleecing filter: $(qb_block_graph vm1)"
  [ "$(ls -A "$FL" | grep -c '^\.qmpbackup-fleece-' || true)" = 2 ] ||
    qb_die "$level: expected two fleece images in $FL: $(ls -la "$FL")"
  qb_qmp vm1 cont >/dev/null
  for w in "$@"; do qb_guest_write vm1 "${w%%:*}" "${w#*:}"; done
  [ "$(jobs_unfinished vm1)" -gt 0 ] ||
    qb_die "$level: the jobs finished before the guest's writes ended (nothing was tested)"
  jobs_speed vm1 0
  local rc=0
  wait "$BPID" || rc=$?
  [ $rc = 0 ] || qb_die "qmpbackup $level with fleecing exited $rc: $(cat "$T/bg.out")"
  check_newest
  assert_clean vm1 "$BASE" "$FL" "$level with fleecing"
  assert_running vm1 "after the $level"
}

live_round full \
  "drive0:write -P 0x21 0 256k" "drive0:write -z 512k 256k" "drive0:discard 1M 128k" \
  "drive0:write -P 0x22 48M 1M" "drive0:write -P 0x23 30M 1M" "drive0:write -z 32M 1M" \
  "drive0:discard 36M 1M" "drive0:write -z $((34 << 20 | 4096)) 64k" \
  "drive0:write -z $((38 << 20 | 12288)) 8k" "data1:write -P 0x24 0 64k" \
  "data1:write -P 0x25 12M 1M" "data1:write -z 8M 1M" "data1:discard 10M 1M" \
  "data1:write -z $((11 << 20 | 4096)) 64k"
qb_guest_write vm1 drive0 "write -P 0x31 4M 4M"
qb_guest_write vm1 drive0 "write -P 0x32 50M 2M"
qb_guest_write vm1 data1 "write -P 0x33 2M 4M"
live_round inc \
  "drive0:write -P 0x41 4M 64k" "drive0:write -P 0x42 51M 512k" "drive0:write -z 6M 1M" \
  "drive0:write -z 50M 64k" "drive0:discard 50.5M 64k" \
  "drive0:write -P 0x43 20M 1M" "drive0:discard 24M 1M" \
  "drive0:write -z $((7 << 20 | 4096)) 64k" "drive0:write -z $((51 << 20 | 4096)) 4k" \
  "data1:write -P 0x44 2M 64k" "data1:write -P 0x45 5M 1M" "data1:write -P 0x46 14M 1M" \
  "data1:write -z $((5 << 20 | 4096)) 64k"
# The next inc holds every write made during the previous job.
qb_qmp vm1 stop >/dev/null
for d in $DISKS; do qb_capture vm1 "$d" "$T/cap/$d.raw"; done
qb_backup_expect 0 vm1 inc --fleece-dir "$FL"
check_newest
qb_qmp vm1 cont >/dev/null
assert_clean vm1 "$BASE" "$FL" "the inc after the live inc"

# Compressed: the second job writes plain clusters over compressed ones.
LIVE_ARGS=(--compress)
live_round full \
  "drive0:write -z $((30 << 20 | 4096)) 64k" "drive0:discard 33M 1M" "drive0:write -P 0x47 36M 1M" \
  "data1:write -z $((9 << 20 | 8192)) 64k"
LIVE_ARGS=()

# Ctrl-C mid-job: exit 130, no new point, graph and directory as before.
n0=$(nlayers)
qb_guest_write vm1 drive0 "write -P 0x51 8M 8M"
start_backup inc --fleece-dir "$FL" --speed 64k
wait_jobs 65536
[ "$(on_filter vm1)" = 2 ] || qb_die "cancel: the devices are not on the filter"
kill -INT "$BPID"
rc=0; wait "$BPID" || rc=$?
[ $rc = 130 ] || qb_die "qmpbackup canceled with SIGINT exited $rc, expected 130: $(cat "$T/bg.out")"
[ "$(nlayers)" = "$n0" ] || qb_die "a canceled backup left a point"
assert_clean vm1 "$BASE" "$FL" "after SIGINT"
assert_running vm1 "after SIGINT"

# A fleece directory that cannot be used: a clear error (exit 2: a bad argument), nothing changed.
qb_backup_expect 2 vm1 inc --fleece-dir "$T/no-such-dir"
grep -q "no-such-dir" "$T/last-backup.out" && grep -q "fleec" "$T/last-backup.out" ||
  qb_die "the error does not name the fleece directory: $(cat "$T/last-backup.out")"
touch "$T/a-file"
qb_backup_expect 2 vm1 inc --fleece-dir "$T/a-file"
[ "$(nlayers)" = "$n0" ] || qb_die "a failed backup left a point"
assert_clean vm1 "$BASE" "$FL" "an unusable fleece directory"

# The fleece directory fills up mid-job (a 2 MiB tmpfs): the guest's writes
# succeed, the backup fails with the reason, everything is put back.
SMALL=$T/small
mkdir -p "$SMALL"
if mount -t tmpfs -o size=2m tmpfs "$SMALL" 2>/dev/null; then
  qb_on_exit umount "$SMALL"
  start_backup full --fleece-dir "$SMALL" --speed 64k
  wait_jobs 65536
  [ "$(on_filter vm1)" = 2 ] || qb_die "full fleece dir: the devices are not on the filter"
  qb_guest_write vm1 drive0 "write -P 0x61 20M 8M" ||
    qb_die "a guest write failed because the fleece directory is full"
  qb_guest_write vm1 data1 "write -P 0x62 0 4M"
  rc=0; wait "$BPID" || rc=$?
  [ $rc = 1 ] || qb_die "backup with a full fleece directory exited $rc, expected 1: $(cat "$T/bg.out")"
  [ "$(nlayers)" = "$n0" ] || qb_die "the failed backup left a point"
  assert_clean vm1 "$BASE" "$SMALL" "a full fleece directory"
  assert_running vm1 "after a full fleece directory"
  qb_log "full fleece directory: $(tail -n 1 "$T/bg.out")"
else
  qb_log "no tmpfs mount here: the full fleece directory case is not run"
fi

# The guest's data is all there: an exact inc (the cancel's and the failure's
# writes included).
qb_qmp vm1 stop >/dev/null
for d in $DISKS; do qb_capture vm1 "$d" "$T/cap/$d.raw"; done
qb_qmp vm1 cont >/dev/null
qb_backup_expect 0 vm1 auto --fleece-dir "$FL"
check_newest

# SIGKILL mid-job: the filter and the image stay; the next backup removes them and is exact.
qb_guest_write vm1 drive0 "write -P 0x71 30M 6M"
start_backup inc --fleece-dir "$FL" --speed 64k
wait_jobs 65536
kill -KILL "$BPID"
wait "$BPID" 2>/dev/null || true
[ "$(on_filter vm1)" = 2 ] || qb_die "after SIGKILL the filter is gone already (nothing tested): $(qb_block_graph vm1)"
[ -n "$(ls -A "$FL")" ] || qb_die "after SIGKILL no fleece image is left (nothing tested)"
qb_guest_write vm1 drive0 "write -P 0x72 33M 1M"
qb_qmp vm1 stop >/dev/null
for d in $DISKS; do qb_capture vm1 "$d" "$T/cap/$d.raw"; done
qb_backup_expect 0 vm1 inc --fleece-dir "$FL"
check_newest
qb_qmp vm1 cont >/dev/null
assert_clean vm1 "$BASE" "$FL" "the backup after a SIGKILL"

# The same leftovers removed by `qmpbackup cleanup`.
qb_guest_write vm1 drive0 "write -P 0x73 40M 8M"
start_backup inc --fleece-dir "$FL" --speed 64k
wait_jobs 65536
kill -KILL "$BPID"
wait "$BPID" 2>/dev/null || true
[ "$(on_filter vm1)" = 2 ] || qb_die "after the second SIGKILL the filter is gone already"
"$QMPBACKUP" --socket "$(qb_vm_socket vm1)" cleanup > "$T/cleanup.out" 2>&1 ||
  qb_die "qmpbackup cleanup failed: $(cat "$T/cleanup.out")"
n=$(sed -n 's/^removed \([0-9]*\) leftover.*/\1/p' "$T/cleanup.out")
# 2 jobs, 2 target nodes, and per disk the snapshot-access, filter and fleece nodes.
[ "${n:-0}" -ge 10 ] || qb_die "cleanup removed too little: $(cat "$T/cleanup.out")"
assert_clean vm1 "$BASE" "$FL" "qmpbackup cleanup after a SIGKILL"
assert_running vm1 "after qmpbackup cleanup"

# A -blockdev VM (its device by qdev id): the default and --fleece-dir off put no filter in.
qb_vm_start vm2 --blockdev drive0:qcow2:32M
qb_qmp vm2 cont >/dev/null
qb_guest_write vm2 drive0 "write -P 0x81 0 20M"
BASE2=$(qb_block_graph vm2)
for mode in default off; do
  args=()
  [ $mode = off ] && args=(--fleece-dir off)
  "$QMPBACKUP" --socket "$(qb_vm_socket vm2)" backup --level full --target "$T/store/vm2" \
    --quiet --speed 1M "${args[@]}" >"$T/bg.out" 2>&1 &
  BPID=$!
  qb_register_pid "$BPID"
  for ((i = 0; i < 600; i++)); do
    [ "$(qb_qmp vm2 query-block-jobs)" != "[]" ] && break
    _qb_alive "$BPID" || qb_die "vm2 $mode: qmpbackup ended early: $(cat "$T/bg.out")"
    sleep 0.05
  done
  f=$(on_filter vm2)
  imgs=$(ls -A "$T/img" | grep -c '^\.qmpbackup-fleece-' || true)
  [ "$f" = 0 ] && [ "$imgs" = 0 ] || qb_die "$mode: fleeced anyway: $(qb_block_graph vm2)"
  qb_qmp vm2 block-job-set-speed "{\"device\":\"$(qb_qmp vm2 query-block-jobs | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["device"])')\",\"speed\":0}" >/dev/null 2>&1 || true
  rc=0; wait "$BPID" || rc=$?
  [ $rc = 0 ] || qb_die "vm2 $mode exited $rc: $(cat "$T/bg.out")"
  assert_clean vm2 "$BASE2" "$T/img" "vm2 $mode"
done
echo "fleece: ok"
