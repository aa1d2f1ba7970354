#!/usr/bin/env bash
# The daemon's log lines (qmpbackupfs -f, stderr): one line per backup start,
# end, failure and cancel, with the VM, level, restore point, bytes, seconds
# and reason, for real backups of a live VM through the control file.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store"
qb_vm_start vm1 drive0:qcow2:32M
qb_guest_write vm1 drive0 "write -P 0x5a 0 32M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,speed=1M"
C=$mnt/vm1/backup

# Print the log lines of events (event=...) from line N on.
events_from() { tail -n "+$1" "$T/fs.log" | grep '^qmpbackupfs: event=' || true; }
# The number of lines in the log now.
log_lines() { wc -l < "$T/fs.log"; }

# Wait (bounded) for a backup job of vm1 in QEMU; set JOB to its id.
wait_job() {
  local i jobs
  for ((i = 0; i < 200; i++)); do
    jobs=$(qb_qmp vm1 query-block-jobs)
    JOB=$(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j[0]["device"] if j else "")' "$jobs")
    [ -n "$JOB" ] && return 0
    sleep 0.05
  done
  qb_die "no backup job appeared"
}

# Write LINE to the control file in the background; WRITER, $T/writer.out.
start_writer() {
  rm -f "$T/writer.out"
  (exec python3 -c "$QB_FS_WRITER" "$C" "$1" > "$T/writer.out") &
  WRITER=$!
}

# 1. An incremental with no chain fails (EIO): a start and a failed line.
n=$(($(log_lines) + 1))
r=$(qb_fs_control "$C" "inc\n")
[ "$r" = EIO ] || qb_die "inc without a chain gave $r, expected EIO"
events_from "$n" > "$T/ev"
[ "$(wc -l < "$T/ev")" = 2 ] || qb_die "want 2 lines for a failed backup: $(cat "$T/ev")"
grep -qx 'qmpbackupfs: event=start vm=vm1 level=inc' <(sed -n 1p "$T/ev") ||
  qb_die "start line: $(cat "$T/ev")"
grep -qE '^qmpbackupfs: event=failed vm=vm1 level=inc bytes=0 seconds=[0-9]+\.[0-9] reason=".+"$' \
  <(sed -n 2p "$T/ev") || qb_die "failed line: $(cat "$T/ev")"

# 2. A full asking for a freeze that cannot happen, then a full (let run at
# full speed): start and end with the point, bytes, seconds.
n=$(($(log_lines) + 1))
# no agent: an explicit quiesce fails before any copy; the failure says why
r=$(qb_fs_control "$C" "full quiesce\n")
[ "$r" = EIO ] || qb_die "full quiesce without an agent gave $r, expected EIO"
events_from "$n" > "$T/ev"
grep -qx 'qmpbackupfs: event=start vm=vm1 level=full quiesce=yes' "$T/ev" || qb_die "start: $(cat "$T/ev")"
grep -qE '^qmpbackupfs: event=failed vm=vm1 level=full bytes=0 seconds=[0-9.]+ reason=".*agent.*"$' "$T/ev" ||
  qb_die "failed (quiesce): $(cat "$T/ev")"

n=$(($(log_lines) + 1))
start_writer "full\n"
wait_job
qb_qmp vm1 block-job-set-speed "{\"device\":\"$JOB\",\"speed\":0}" >/dev/null
wait "$WRITER" || true
[ "$(cat "$T/writer.out")" = OK ] || qb_die "full backup: $(cat "$T/writer.out") $(cat "$mnt/vm1/status")"
point=$(qb_json <(cat "$mnt/vm1/status") 'd["last"]["restore_point"]')
events_from "$n" > "$T/ev"
[ "$(wc -l < "$T/ev")" = 2 ] || qb_die "want 2 lines for a backup: $(cat "$T/ev")"
grep -qx 'qmpbackupfs: event=start vm=vm1 level=full' <(sed -n 1p "$T/ev") || qb_die "start: $(cat "$T/ev")"
line=$(sed -n 2p "$T/ev")
[[ $line =~ ^qmpbackupfs:\ event=end\ vm=vm1\ level=full\ point=([^ ]+)\ bytes=([0-9]+)\ seconds=[0-9]+\.[0-9]$ ]] ||
  qb_die "end line: $line"
[ "${BASH_REMATCH[1]}" = "$point" ] || qb_die "logged point ${BASH_REMATCH[1]}, status says $point"
# the guest wrote 32 MiB of non-zero data: the full stores at least that
[ "${BASH_REMATCH[2]}" -ge $((32 << 20)) ] || qb_die "bytes=${BASH_REMATCH[2]} for a 32 MiB full"

# 3. An incremental interrupted by a signal to the writer: a canceled line.
qb_guest_write vm1 drive0 "write -P 0x66 0 16M"
n=$(($(log_lines) + 1))
start_writer "inc\n"
wait_job
kill -TERM "$WRITER"
wait "$WRITER" 2>/dev/null || true
for ((i = 0; i < 200; i++)); do
  [ "$(qb_json <(cat "$mnt/vm1/status") 'd["state"]')" = running ] || break
  sleep 0.05
done
events_from "$n" > "$T/ev"
grep -qx 'qmpbackupfs: event=start vm=vm1 level=inc' "$T/ev" || qb_die "start: $(cat "$T/ev")"
grep -qE '^qmpbackupfs: event=canceled vm=vm1 level=inc bytes=0 seconds=[0-9.]+ reason=".+"$' "$T/ev" ||
  qb_die "canceled line: $(cat "$T/ev")"

# 4. touch (auto) after the cancel: an incremental, logged as level=inc.
n=$(($(log_lines) + 1))
start_writer "auto\n"
wait_job
qb_qmp vm1 block-job-set-speed "{\"device\":\"$JOB\",\"speed\":0}" >/dev/null
wait "$WRITER" || true
[ "$(cat "$T/writer.out")" = OK ] || qb_die "auto backup: $(cat "$T/writer.out")"
events_from "$n" > "$T/ev"
grep -qx 'qmpbackupfs: event=start vm=vm1 level=auto' "$T/ev" || qb_die "start: $(cat "$T/ev")"
grep -qE '^qmpbackupfs: event=end vm=vm1 level=inc point=[0-9TZ_]+ bytes=[1-9][0-9]* seconds=[0-9.]+$' "$T/ev" ||
  qb_die "end (auto): $(cat "$T/ev")"

qb_fs_unmount "$mnt"
echo "fs-log: start, end, failed and canceled lines checked"
