#!/usr/bin/env bash
# The guest writes while backup jobs run: a full and an inc through the mount,
# an inc and a full through qmpbackup, each throttled so it lasts, on a VM with
# a qcow2 and a raw disk.  During each job the guest writes data, writes zeroes
# and discards, on clusters the job has already copied (it reported that many
# bytes done), on dirty clusters it has not copied yet and on clean ones.
# Every restore point equals the disk at the moment of its transaction (the VM
# is paused and nothing writes from the capture until the jobs exist), and the
# next backup holds every write made during the previous job.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init
qb_need "$QMPBACKUP"
# "fleece" as the third argument: every backup with image fleecing.
fleece_opt='' fleece_cli=()
if [ "${3:-}" = fleece ]; then
  mkdir -p "$T/fleece"
  fleece_opt=",fleece=$T/fleece" fleece_cli=(--fleece-dir "$T/fleece")
fi

qb_vm_start vm1 drive0:qcow2:64M data1:raw:16M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 40M"
qb_guest_write vm1 data1 "write -P 0x12 0 12M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,speed=1M$fleece_opt"
ndisks=2

# Print "N MIN_LEFT" for VM's block jobs: their number and the smallest
# "offset >= min(WANT, len)" shortfall (0 when every job did WANT bytes or all).
jobs_progress() {
  python3 -c '
import json, sys
jobs = json.loads(sys.argv[1]); want = int(sys.argv[2])
left = [max(0, min(want, j["len"]) - j["offset"]) for j in jobs]
print(len(jobs), max(left) if left else want)' "$(qb_qmp "$1" query-block-jobs)" "$2"
}

# Print how many of VM's block jobs still have bytes to copy.
jobs_unfinished() {
  python3 -c '
import json, sys
print(sum(1 for j in json.loads(sys.argv[1]) if j["offset"] < j["len"]))' \
    "$(qb_qmp "$1" query-block-jobs)"
}

# Set the speed of every block job of VM to BYTES per second.
jobs_speed() {
  local id
  for id in $(python3 -c 'import json,sys; [print(j["device"]) for j in json.loads(sys.argv[1])]' \
      "$(qb_qmp "$1" query-block-jobs)"); do
    qb_qmp "$1" block-job-set-speed "{\"device\":\"$id\",\"speed\":$2}" >/dev/null 2>&1 || true   # a pending job refuses
  done
}

# Start a backup of vm1 at LEVEL through VIA (mount|cli) in the background: BPID.
start_backup() {
  local via=$1 level=$2
  rm -f "$T/writer.out" "$T/cli.out"
  if [ "$via" = mount ]; then
    fault_start_writer vm1 "$level\n"
    BPID=$WRITER
  else
    "$QMPBACKUP" --socket "$(qb_vm_socket vm1)" backup --level "$level" \
      --target "$store/vm1" --speed 1M --quiet "${fleece_cli[@]}" >"$T/cli.out" 2>&1 &
    BPID=$!
  fi
}

# Wait for backup BPID started through VIA; fail unless it succeeded.
finish_backup() {
  local via=$1 level=$2 rc=0
  while _qb_alive "$BPID"; do fault_unthrottle vm1; sleep 0.05; done
  wait "$BPID" 2>/dev/null || rc=$?
  if [ "$via" = mount ]; then
    [ "$(cat "$T/writer.out")" = OK ] ||
      qb_die "$level through the mount: $(cat "$T/writer.out"): $(cat "$mnt/vm1/status")"
  else
    [ $rc -eq 0 ] || qb_die "qmpbackup $level exited $rc: $(cat "$T/cli.out")"
  fi
}

# One backup at LEVEL through VIA while the guest writes: capture the disks
# with the VM paused, trigger, wait until every job exists and did DONE bytes
# (or all of its own), slow them to 64 KiB/s, resume, run the guest writes "DISK:qemu-io command"...
# during the jobs, then let the jobs go.  The new point of each disk is
# remembered with the capture taken just before the trigger.
live_round() {
  local via=$1 level=$2 done_bytes=$3 d w i n left before
  shift 3
  qb_qmp vm1 stop >/dev/null
  for d in drive0 data1; do qb_capture vm1 "$d" "$T/cap/new-$d.raw"; done
  before=$(fault_newest vm1 drive0 2>/dev/null || true)
  start_backup "$via" "$level"
  for ((i = 0; i < 600; i++)); do
    read -r n left < <(jobs_progress vm1 "$done_bytes")
    [ "$n" = "$ndisks" ] && [ "$left" = 0 ] && break
    _qb_alive "$BPID" || break
    sleep 0.05
  done
  [ "$n" = "$ndisks" ] && [ "$left" = 0 ] ||
    qb_die "$level via $via: jobs never got $done_bytes bytes done ($n jobs, $left bytes short): $(qb_qmp vm1 query-block-jobs) $(cat "$T/writer.out" "$T/cli.out" 2>/dev/null)"
  [ -z "$fleece_opt" ] || qb_qmp vm1 query-block | grep -q '"node-name": *"qmpbackup-cbw-' ||
    qb_die "$level via $via: the devices are not on the fleecing filter: $(qb_qmp vm1 query-block)"
  jobs_speed vm1 65536    # slower still while the guest writes (a loaded machine is slow)
  qb_qmp vm1 cont >/dev/null
  for w in "$@"; do qb_guest_write vm1 "${w%%:*}" "${w#*:}"; done
  [ "$(jobs_unfinished vm1)" -gt 0 ] ||
    qb_die "$level via $via: the throttled jobs finished before the guest's writes ended (nothing was tested)"
  finish_backup "$via" "$level"
  for d in drive0 data1; do
    n=$(fault_newest vm1 "$d")
    [ -n "$n" ] && [ "$n" != "$before" ] || qb_die "$level via $via made no point on $d"
    fault_remember vm1 "$d" "$n" "$T/cap/new-$d.raw"
  done
  fault_check_points "$level via $via, guest writing during the jobs"
  fault_assert_qemu_clean vm1 "$level via $via"
}

# FULL through the mount.  drive0: copied, data over data, zero region, zeroes,
# discards on both sides of the job's position.
live_round mount full $((2 << 20)) \
  "drive0:write -P 0x21 0 256k" "drive0:write -z 512k 256k" "drive0:discard 1M 128k" \
  "drive0:write -P 0x22 48M 1M" "drive0:write -P 0x23 30M 1M" \
  "drive0:write -z 32M 1M" "drive0:discard 36M 1M" \
  "data1:write -P 0x24 0 64k" "data1:write -P 0x25 12M 1M" \
  "data1:write -z 8M 1M" "data1:discard 10M 1M"

# After the full, before the inc.
qb_guest_write vm1 drive0 "write -P 0x31 4M 1M"
qb_guest_write vm1 data1 "write -P 0x32 4M 512k"

# INC through the mount.  drive0's dirty set starts at 0 (the full's writes);
# 1.5M done covers 0-1.125M.  48M and 30M are dirty and not copied yet, 20M and
# 24M are clean; data1's dirty set is short and copied first.
live_round mount inc $((3 << 19)) \
  "drive0:write -P 0x41 0 64k" "drive0:write -z 512k 64k" \
  "drive0:write -P 0x42 48M 512k" "drive0:discard 30M 512k" \
  "drive0:write -P 0x43 20M 1M" "drive0:write -z 24M 1M" \
  "data1:write -P 0x44 0 64k" "data1:write -P 0x45 6M 1M" "data1:discard 2M 1M"

# The next inc (through the mount) holds every write of the inc's job.
qb_guest_write vm1 drive0 "write -P 0x51 60M 1M"
fault_backup vm1 inc
fault_check_points "inc after an inc during which the guest wrote"

# INC through qmpbackup while the guest writes, then the mount's next inc.
qb_guest_write vm1 drive0 "write -P 0x61 0 2M"
qb_guest_write vm1 drive0 "write -P 0x62 40M 2M"
qb_guest_write vm1 data1 "write -P 0x63 0 2M"
live_round cli inc $((1 << 20)) \
  "drive0:write -P 0x64 0 128k" "drive0:write -P 0x65 41M 64k" "drive0:write -z 40M 64k" \
  "drive0:discard 42M 1M" "drive0:write -P 0x66 12M 1M" \
  "data1:write -P 0x67 0 64k" "data1:write -P 0x68 1M 1M" "data1:write -z 14M 1M"
fault_backup vm1 auto
[ "$(fault_status vm1 'd["last"]["level"]')" = inc ] || qb_die "auto after the CLI's inc: $(cat "$T/status.json")"

# FULL through qmpbackup while the guest writes (a new chain), then the mount's inc.
live_round cli full $((2 << 20)) \
  "drive0:write -P 0x71 0 1M" "drive0:write -P 0x72 50M 1M" "drive0:discard 4M 1M" \
  "drive0:write -z 44M 1M" "data1:write -P 0x73 0 256k" "data1:write -P 0x74 15M 1M"
qb_guest_write vm1 data1 "write -P 0x75 9M 64k"
fault_backup vm1 inc
fault_check_points "after all rounds"
echo "live-writes: ok"
