#!/usr/bin/env bash
# The control file while a backup runs: a second request is EBUSY (the CLI is
# refused too), status shows the running job; interrupting the writer cancels
# the backup cleanly (no new point, no temporary files, no QEMU job left); a
# VM whose QEMU is gone is EHOSTDOWN; SIGTERM of the daemon during a backup
# cancels it, unmounts and exits 0.  The mount limits jobs to 1 MiB/s
# (-o speed=1M) so nothing races; the test lets a job run at full speed with
# block-job-set-speed through its own monitor when it wants it done.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store"
qb_vm_start vm2 drive0:qcow2:128M
qb_guest_write vm2 drive0 "write -P 0x55 0 128M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,speed=1M"
C=$mnt/vm2/backup

# Start writing LINE to the control file in the background; sets WRITER and
# the file $T/writer.out gets "OK" or the errno name.
start_writer() {
  rm -f "$T/writer.out"
  (exec python3 -c "$QB_FS_WRITER" "$C" "$1" > "$T/writer.out") &
  WRITER=$!
}

# Wait (bounded) for the backup job in QEMU; set JOB to its id.
wait_job() {
  local i jobs
  for ((i = 0; i < 100; i++)); do
    jobs=$(qb_qmp vm2 query-block-jobs)
    JOB=$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j[0]["device"] if j else "")' "$jobs")
    [ -n "$JOB" ] && return 0
    sleep 0.05
  done
  qb_die "no backup job appeared"
}

# Let the running job go at full speed and wait for the writer; fail unless it saw OK.
finish_job() {
  wait_job
  qb_qmp vm2 block-job-set-speed "{\"device\":\"$JOB\",\"speed\":0}" >/dev/null
  wait "$WRITER" || true
  [ "$(cat "$T/writer.out")" = OK ] || qb_die "backup failed: $(cat "$T/writer.out") $(cat "$mnt/vm2/status")"
}

# Wait (bounded) for process PID to end.
wait_gone() {
  local i
  for ((i = 0; i < 200; i++)); do _qb_alive "$1" || return 0; sleep 0.05; done
  qb_die "process $1 did not end"
}

# Fail if the store holds temporary files or QEMU still has a job.
assert_clean() {
  local tmp
  tmp=$(find "$store" -name '.tmp-*')
  [ -z "$tmp" ] || qb_die "temporary files left ($1): $tmp"
  [ "$(qb_qmp vm2 query-block-jobs)" = "[]" ] || qb_die "QEMU jobs left ($1): $(qb_qmp vm2 query-block-jobs)"
}

# The sockets dir is watched: a VM started after the mount appears, and goes
# away with its socket when it has nothing in the store.
qb_vm_start vm3 drive0:qcow2:1M
for ((i = 0; i < 50; i++)); do ls "$mnt" | grep -qx vm3 && break; sleep 0.1; done
[ "$(ls "$mnt" | tr '\n' ' ')" = "vm2 vm3 " ] || qb_die "new VM not shown: $(ls "$mnt")"
qb_vm_stop vm3
rm -f "$(qb_vm_socket vm3)"
for ((i = 0; i < 50; i++)); do ls "$mnt" | grep -qx vm3 || break; sleep 0.1; done
[ "$(ls "$mnt")" = vm2 ] || qb_die "stopped VM still shown: $(ls "$mnt")"
[ ! -e "$mnt/vm3" ] || qb_die "stopped VM still reachable by name"

# A first full backup to have a chain.
start_writer "full\n"
finish_job
[ "$(qb_fs_points "$mnt/vm2/drive0/restore" | wc -l)" = 1 ] || qb_die "no first point"

# Unknown words and near misses are EINVAL and start nothing: no new point, no
# store file, no QEMU job, state and last result unchanged; the rejection is
# explained in status.
cat "$mnt/vm2/status" > "$T/status.json"
before_status=$(qb_json "$T/status.json" '(d["state"], d.get("last"))')
before_store=$(cd "$store" && find . | LC_ALL=C sort)
long=$(printf 'full%.0s' {1..70})
huge=$(printf 'x%.0s' {1..5000})
pad=$(printf ' %.0s' {1..300})
for line in "ful\n" "fulll\n" "Full\n" "AUTO\n" "INC\n" "full extra\n" "inc quiesce junk\n" \
    "copy noquiesce extra\n" "auto quiesced\n" "quiesce\n" "noquiesce full\n" "incremental\n" \
    "-full\n" "full,\n" "inc\nfull\n" "full\n\n" "\n" "   \n" " \t  \t\n" "\r\n" \
    "full\x00\n" "auto\xff\n" "$long\n" "$huge" "full$pad\n" "${huge}full\n"; do
  r=$(qb_fs_control "$C" "$line")
  [ "$r" = EINVAL ] || qb_die "control write '${line:0:40}' gave $r, expected EINVAL"
done
cat "$mnt/vm2/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" '(d["state"], d.get("last"))')" = "$before_status" ] ||
  qb_die "a refused control write changed the status: $(cat "$T/status.json")"
qb_json "$T/status.json" 'd["last_rejected"]["error"]' | grep -q . ||
  qb_die "the refusal is not explained: $(cat "$T/status.json")"
[ "$(cd "$store" && find . | LC_ALL=C sort)" = "$before_store" ] || qb_die "a refused control write changed the store"
[ "$(qb_qmp vm2 query-block-jobs)" = "[]" ] || qb_die "a refused control write started a job"
[ "$(qb_fs_points "$mnt/vm2/drive0/restore" | wc -l)" = 1 ] || qb_die "a refused control write made a point"

# EBUSY while a backup runs; status shows the job.
qb_guest_write vm2 drive0 "write -P 0x56 0 32M"
start_writer "inc\n"
wait_job
cat "$mnt/vm2/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["state"]')" = running ] || qb_die "status while running: $(cat "$T/status.json")"
[ "$(qb_json "$T/status.json" 'd["job"]["level"]')" = inc ] || qb_die "job level: $(cat "$T/status.json")"
r=$(qb_fs_control "$C" "full\n")
[ "$r" = EBUSY ] || qb_die "second backup while one runs: $r"
err=$(touch "$C" 2>&1) && qb_die "touch while a backup runs succeeded"
case $err in *"busy"*) ;; *) qb_die "touch while running: $err" ;; esac
rc=0
"$QMPBACKUP" --socket "$(qb_vm_socket vm2)" backup --level inc --target "$store/vm2" \
  >"$T/cli.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || qb_die "the CLI backed up while the mount's backup ran"
_qb_alive "$WRITER" || qb_die "the throttled backup ended too early"

# Interrupt the writer: the backup is cancelled, nothing is published.
kill -TERM "$WRITER"
wait_gone "$WRITER"
wait "$WRITER" 2>/dev/null || true
for ((i = 0; i < 100; i++)); do
  cat "$mnt/vm2/status" > "$T/status.json"
  [ "$(qb_json "$T/status.json" 'd["state"]')" = running ] || break
  sleep 0.05
done
[ "$(qb_json "$T/status.json" 'd["state"]')" = failed ] || qb_die "after cancel: $(cat "$T/status.json")"
qb_json "$T/status.json" 'd["last"]["error"]' | grep -qi cancel || qb_die "status: $(cat "$T/status.json")"
[ "$(qb_fs_points "$mnt/vm2/drive0/restore" | wc -l)" = 1 ] || qb_die "a cancelled backup made a point"
assert_clean "after cancel"

# The next inc works and holds the changes the cancelled one would have had.
qb_capture vm2 drive0 "$T/d0.raw"
start_writer "inc\n"
finish_job
qb_cmp "$T/d0.raw" "$mnt/vm2/drive0/restore/latest.img"

# A backup by the CLI holds the socket and the store lock: the mount says EBUSY.
"$QMPBACKUP" --socket "$(qb_vm_socket vm2)" backup --level full --target "$store/vm2" \
  --speed 1M --quiet >"$T/cli.out" 2>&1 &
CLI=$!
wait_job
r=$(qb_fs_control "$C" "inc\n")
[ "$r" = EBUSY ] || qb_die "backup while the CLI backs up: $r"
cat "$mnt/vm2/status" > "$T/status.json"
qb_json "$T/status.json" 'd["last"]["error"]' | grep -q . || qb_die "EBUSY not explained: $(cat "$T/status.json")"
kill -INT "$CLI"
wait_gone "$CLI"
wait "$CLI" 2>/dev/null || true
assert_clean "after the CLI was interrupted"

# SIGTERM during a backup: cancelled, unmounted, exit 0, nothing left behind.
qb_guest_write vm2 drive0 "write -P 0x57 0 32M"
start_writer "inc\n"
wait_job
kill -TERM "$FS_PID"
wait_gone "$FS_PID"
rc=0; wait "$FS_PID" || rc=$?
[ $rc -eq 0 ] || qb_die "qmpbackupfs exited $rc on SIGTERM during a backup"
wait_gone "$WRITER"
mountpoint -q "$mnt" && qb_die "still mounted after SIGTERM"
[ "$(cat "$T/writer.out")" != OK ] || qb_die "the writer saw success for a cancelled backup"
assert_clean "after SIGTERM"
[ "$(ls "$store/vm2/drive0" | wc -l)" = 2 ] || qb_die "store after SIGTERM: $(ls "$store/vm2/drive0")"

# A VM whose QEMU is gone: EHOSTDOWN, explained in status; its points stay readable.
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
qb_vm_kill vm2
r=$(qb_fs_control "$C" "inc\n")
[ "$r" = EHOSTDOWN ] || [ "$r" = ENOTCONN ] || qb_die "backup of a dead VM: $r"
cat "$mnt/vm2/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["qmp"]["reachable"]')" = False ] || qb_die "reachable: $(cat "$T/status.json")"
qb_json "$T/status.json" 'd["last"]["error"]' | grep -q . || qb_die "no error text"
qb_cmp "$T/d0.raw" "$mnt/vm2/drive0/restore/latest.img"
rm -f "$(qb_vm_socket vm2)"
r=$(qb_fs_control "$C" "inc\n")
[ "$r" = EHOSTDOWN ] || [ "$r" = ENOTCONN ] || qb_die "backup of a VM without socket: $r"
echo "control: ok"
