#!/usr/bin/env bash
# --pause, as the Python qmpbackup has it: the VM is stopped while the backup
# copies (seen on a second, private QMP monitor while a speed-limited job
# runs) and running again after a success, after Ctrl-C (SIGINT) and after a
# failure (the store fills up mid-copy); a VM that was already paused stays
# paused.  Every restore point taken equals the disk.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
qb_vm_start vm1 drive0:qcow2:32M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 24M"
S=$(qb_vm_socket vm1)
dir=$T/store/vm1/drive0

# True if a backup job of ours runs on VM NAME (its private monitor).
job_running() {
  local jobs
  local j
  jobs=$(qb_qmp "$1" query-jobs | tr -d ' \n' | sed 's/},{/}\n{/g')
  # A backup job, not the short job that creates a target image.
  while read -r j; do
    [[ $j == *'"id":"qmpbackup-'* && $j == *'"type":"backup"'* && $j == *'"status":"running"'* ]] \
      && return 0
  done <<< "$jobs"
  return 1
}

# Print "true" or "false": whether VM NAME runs, from the private monitor.
running() {
  case $(qb_qmp "$1" query-status) in
    *'"running":true'*|*'"running": true'*) echo true ;;
    *) echo false ;;
  esac
}

# Start qmpbackup --pause in the background (BG_PID); wait (bounded) until a
# backup job of ours runs, then print whether the VM runs meanwhile.
start_paused_backup() {
  local i
  "$QMPBACKUP" --socket "$S" -L "$T/qb.log" backup --pause "$@" >"$T/bg.out" 2>"$T/bg.err" &
  BG_PID=$!
  qb_register_pid "$BG_PID"
  for ((i = 0; i < 600; i++)); do
    if job_running vm1; then ST=$(running vm1); return 0; fi
    _qb_alive "$BG_PID" || break
    sleep 0.1
  done
  qb_die "no backup job of ours appeared: $(cat "$T/bg.err")"
}

# Wait for BG_PID; fail unless it exits EXPECTED.
wait_bg() {
  local rc=0
  wait "$BG_PID" || rc=$?
  [ $rc -eq "$1" ] || qb_die "qmpbackup --pause exited $rc, expected $1: $(cat "$T/bg.err")"
}

# 1. Success: paused while the job copies (32 MiB at 4 MiB/s), running after.
[ "$(running vm1)" = true ] || qb_die "the VM does not run before the test"
start_paused_backup -l full -t "$T/store/vm1" --speed 4M
[ "$ST" = false ] || qb_die "the VM ran while the --pause backup copied"
wait_bg 0
[ "$(running vm1)" = true ] || qb_die "the VM was not resumed after a successful --pause backup"
grep -q "VM paused" "$T/bg.err" || qb_die "the summary does not say the VM was paused"
f0=$(qb_newest_layer "$dir")
qb_capture vm1 drive0 "$T/p0.raw"
qb_check_merge "$dir" "$(qb_layer_id "$f0")" "$T/p0.raw"
echo "success: paused during the copy, resumed after"

# 2. Ctrl-C: SIGINT while the job copies: canceled (130), nothing new, running.
qb_guest_write vm1 drive0 "write -P 0x22 0 20M"
start_paused_backup -l inc -t "$T/store/vm1" --speed 2M
[ "$ST" = false ] || qb_die "the VM ran while the --pause inc copied"
kill -INT "$BG_PID"
wait_bg 130
[ "$(running vm1)" = true ] || qb_die "the VM was not resumed after Ctrl-C"
[ "$(qb_newest_layer "$dir")" = "$f0" ] || qb_die "a canceled backup left a layer"
grep -q 'event=canceled vm=vm1 level=inc' "$T/qb.log" || qb_die "no canceled line in the log"
echo "Ctrl-C: canceled, resumed"

# 3. A VM that was already paused stays paused; the inc still has every change.
qb_qmp vm1 stop >/dev/null
"$QMPBACKUP" --socket "$S" backup --pause -l inc -t "$T/store/vm1" >"$T/inc.out" 2>"$T/inc.err" \
  || qb_die "--pause on a paused VM failed: $(cat "$T/inc.err")"
[ "$(running vm1)" = false ] || qb_die "--pause resumed a VM that was paused before"
! grep -q "VM paused" "$T/inc.err" || qb_die "the summary claims a pause on a VM that was already paused"
f1=$(qb_newest_layer "$dir")
[[ $f1 == INC-* ]] || qb_die "the inc made $f1"
qb_capture vm1 drive0 "$T/p1.raw"
qb_check_merge "$dir" "$(qb_layer_id "$f1")" "$T/p1.raw"
qb_qmp vm1 cont >/dev/null
echo "already paused: left paused"

# 4. A failure mid-copy: the store (a small tmpfs) fills up; resumed after.
if [ "$(id -u)" -eq 0 ]; then
  mkdir -p "$T/small"
  if mount -t tmpfs -o size=6M,mode=0700 qbtest "$T/small"; then
    qb_register_mount "$T/small"
    start_paused_backup -l full -t "$T/small/vm1" --speed 2M
    [ "$ST" = false ] || qb_die "the VM ran while the failing --pause backup copied"
    wait_bg 1
    [ "$(running vm1)" = true ] || qb_die "the VM was not resumed after a failed backup"
    grep -q 'event=failed vm=vm1 level=full' "$T/qb.log" || qb_die "no failed line in the log"
    echo "failure (store full): resumed"
  else
    echo "failure part skipped: cannot mount a tmpfs"
  fi
else
  echo "failure part skipped: needs root for a small tmpfs store"
fi

# 5. Without --pause the VM keeps running during the copy.
qb_guest_write vm1 drive0 "write -P 0x33 0 16M"
"$QMPBACKUP" --socket "$S" backup -l inc -t "$T/store/vm1" --speed 4M >/dev/null 2>&1 &
BG_PID=$!
qb_register_pid "$BG_PID"
for ((i = 0; i < 600; i++)); do
  job_running vm1 && break
  _qb_alive "$BG_PID" || qb_die "the plain backup ended before its job was seen"
  sleep 0.1
done
[ "$(running vm1)" = true ] || qb_die "the VM was stopped by a backup without --pause"
wait_bg 0
echo "pause: ok"
