#!/usr/bin/env bash
# The guest is never left frozen: every way a backup can end while
# guest-fsfreeze-freeze is pending must still thaw the guest.  A fake guest
# agent (fakeqga.py: freezes at once, answers only after a delay, runs
# commands in order like qemu-ga) stands in for the guest; QEMU is real.
#
#   freeze-cancel.sh QMPBACKUPFS QMPCMD QGASTATUS
#
# qmpbackup --agent-socket: SIGINT during the freeze (exit 130, thawed);
# SIGKILL during the freeze (the thaw guard thaws, holding no inherited
# descriptor); a freeze that never answers (timeout, thawed, crash-consistent
# with a note); a freeze of 0 filesystems (not quiesced, count 0 in the
# record; --quiesce fails); an agent error with ESC/newlines (escaped).
# The mount (-o vm=NAME:QMP:QGA): the writer of `backup` killed, a lazy
# unmount, SIGTERM and SIGKILL of the daemon during the freeze; a freeze of 0 filesystems (status
# and record say not quiesced, "full quiesce" is EIO).  Each case asserts that
# a thaw reached the agent after the freeze and that it reports "thawed"
# within a bounded time.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh" "$1" "$2"
QGASTATUS=$(realpath -m "$3")
. "$QB_SOURCE_DIR/tests/guest/fakeqga.sh"
qb_need qemu-img qemu-system-x86_64 python3 "$QMPBACKUP" "$QGASTATUS"
qb_tmpdir

DELAY=6                      # seconds the fake's freeze takes to answer
store=$T/store
mkdir -p "$store" "$T/agent"
agent=$T/agent/vm1.qga
qmp=$(qb_vm_socket vm1)
qb_vm_start vm1 drive0:qcow2:8M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x31 0 1M"

# The number of restore point records of vm1.
npoints() { { find "$store/vm1/.points" -name '*.json' 2>/dev/null || true; } | wc -l; }

# The newest restore point record of vm1.
newest_record() { ls "$store/vm1/.points/"*.json | LC_ALL=C sort | tail -n 1; }

# Start qmpbackup ARGS... in the background on vm1 with the agent; sets CLI.
cli_start() {
  "$QMPBACKUP" --socket "$qmp" --agent-socket "$agent" backup --target "$store/vm1" "$@" \
    >"$T/cli.out" 2>&1 &
  CLI=$!
}

# Wait (bounded) for process PID to end; its exit status in RC.
reap() {
  local i
  for ((i = 0; i < 600; i++)); do _qb_alive "$1" || break; sleep 0.1; done
  _qb_alive "$1" && qb_die "process $1 did not end within 60 s"
  RC=0; wait "$1" 2>/dev/null || RC=$?
}

# ---- qmpbackup ----------------------------------------------------------

# SIGINT while the freeze is pending: canceled, and thawed.
fake_start "$agent" --freeze-delay "$DELAY"
n0=$(npoints)
cli_start --level full
fake_wait 'recv guest-fsfreeze-freeze'
kill -INT "$CLI"
reap "$CLI"
[ "$RC" = 130 ] || qb_die "qmpbackup after SIGINT during the freeze: exit $RC: $(cat "$T/cli.out")"
fake_assert_thawed "qmpbackup SIGINT during the freeze"
[ "$(npoints)" = "$n0" ] || qb_die "a canceled backup made a restore point"

# SIGKILL while the freeze is pending: the thaw guard connects and thaws.
fake_start "$agent" --freeze-delay "$DELAY"
cli_start --level full
fake_wait 'recv guest-fsfreeze-freeze'
kill -KILL "$CLI"
reap "$CLI"
fake_wait close 10
fake_check_guards
fake_assert_thawed "qmpbackup SIGKILL during the freeze"
[ "$(grep -c '^[0-9.]* connect' "$FAKE_LOG")" -ge 2 ] \
  || qb_die "the thaw did not come over a new connection: $(cat "$FAKE_LOG")"

# A freeze whose answer never comes: the default falls back to
# crash-consistent after the timeout, says why, and thaws.
fake_start "$agent" --freeze-reply never
n0=$(npoints)
"$QMPBACKUP" --socket "$qmp" --agent-socket "$agent" backup --target "$store/vm1" --level full \
  >"$T/cli.out" 2>&1 || qb_die "default quiesce with an unanswered freeze failed: $(cat "$T/cli.out")"
fake_assert_thawed "freeze never answered"
[ "$(npoints)" = $((n0 + 1)) ] || qb_die "no restore point after the fallback"
rec=$(newest_record)
[ "$(qb_json "$rec" 'd["quiesced"]')" = False ] || qb_die "unanswered freeze recorded as quiesced: $(cat "$rec")"
qb_json "$rec" 'd["quiesce_note"]' | grep -q 'crash-consistent' || qb_die "no note: $(cat "$rec")"

# A freeze of 0 filesystems is not a quiesce.
fake_start "$agent" --freeze-count 0
"$QMPBACKUP" --socket "$qmp" --agent-socket "$agent" backup --target "$store/vm1" --level inc \
  >"$T/cli.out" 2>&1 || qb_die "default quiesce, 0 frozen: failed: $(cat "$T/cli.out")"
rec=$(newest_record)
[ "$(qb_json "$rec" 'd["quiesced"]')" = False ] || qb_die "0 frozen recorded as quiesced: $(cat "$rec")"
[ "$(qb_json "$rec" 'd["quiesced_filesystems"]')" = 0 ] || qb_die "count: $(cat "$rec")"
qb_json "$rec" 'd["quiesce_note"]' | grep -q 'froze no filesystem' || qb_die "no reason: $(cat "$rec")"
grep -q 'froze no filesystem' "$T/cli.out" || qb_die "qmpbackup did not say why: $(cat "$T/cli.out")"
fake_assert_thawed "0 frozen"
n0=$(npoints)
rc=0
"$QMPBACKUP" --socket "$qmp" --agent-socket "$agent" backup --target "$store/vm1" --level inc \
  --quiesce >"$T/cli.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || qb_die "--quiesce with 0 filesystems frozen succeeded"
grep -q 'froze no filesystem' "$T/cli.out" || qb_die "--quiesce, 0 frozen: $(cat "$T/cli.out")"
[ "$(npoints)" = "$n0" ] || qb_die "a failed --quiesce made a restore point"

# A normal quiesce records the count.
fake_start "$agent" --freeze-count 2
"$QMPBACKUP" --socket "$qmp" --agent-socket "$agent" backup --target "$store/vm1" --level inc \
  --quiesce >"$T/cli.out" 2>&1 || qb_die "--quiesce failed: $(cat "$T/cli.out")"
rec=$(newest_record)
[ "$(qb_json "$rec" 'd["quiesced"]')" = True ] || qb_die "not quiesced: $(cat "$rec")"
[ "$(qb_json "$rec" 'd["quiesced_filesystems"]')" = 2 ] || qb_die "count: $(cat "$rec")"
fake_assert_thawed "quiesced inc"

# The guest is thawed right after the transaction, while the (slowed) job
# still copies: never only when the backup ends.
fake_start "$agent"
qb_guest_write vm1 drive0 "write -P 0x32 1M 4M"
cli_start --level full --quiesce --speed 512K
jobs_now() { python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])))' "$(qb_qmp vm1 query-block-jobs)"; }
for ((i = 0; i < 300; i++)); do [ "$(jobs_now)" -gt 0 ] && break; sleep 0.1; done
[ "$(jobs_now)" -gt 0 ] || qb_die "the slowed backup job never showed up: $(cat "$T/cli.out")"
thawed_during=no
for ((i = 0; i < 600; i++)); do
  st=$(cat "$FAKE_LOG.state" 2>/dev/null || true)
  jobs=$(jobs_now)
  if [ "$st" = thawed ] && [ "$jobs" -gt 0 ]; then thawed_during=yes; break; fi
  [ "$jobs" -gt 0 ] || break
  sleep 0.1
done
[ "$thawed_during" = yes ] || qb_die "the guest was still frozen while the backup job ran (state: $st, jobs: $jobs)"
reap "$CLI"
[ "$RC" = 0 ] || qb_die "slowed quiesced full: exit $RC: $(cat "$T/cli.out")"
fake_assert_thawed "thawed while the job runs"

# Hostile agent text: an error desc with ESC, newlines and a quote is escaped.
fake_start "$agent" --freeze-error $'evil\e[2J\e]0;owned\a\nline2\r"x'
rc=0
"$QMPBACKUP" --socket "$qmp" --agent-socket "$agent" backup --target "$store/vm1" --level inc \
  --quiesce >"$T/cli.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || qb_die "a freeze error did not fail --quiesce"
LC_ALL=C grep -q $'[\x01-\x09\x0b-\x1f\x7f]' "$T/cli.out" && qb_die "raw control bytes reached the terminal: $(od -c "$T/cli.out" | head)"
grep -q 'evil\\x1b\[2J' "$T/cli.out" || qb_die "agent text not shown escaped: $(cat "$T/cli.out")"
grep -q '^line2' "$T/cli.out" && qb_die "a newline from the agent split the message: $(cat "$T/cli.out")"
grep -q '\\x0aline2' "$T/cli.out" || qb_die "the agent's newline not shown escaped: $(cat "$T/cli.out")"
fake_assert_thawed "agent error"

# ---- the mount ------------------------------------------------------------

mnt=$T/mnt
C=$mnt/vm1/backup

# Start writing LINE to the control file in the background; sets WRITER.
start_writer() {
  rm -f "$T/writer.out"
  (exec python3 -c "$QB_FS_WRITER" "$C" "$1" > "$T/writer.out") &
  WRITER=$!
}

# The writer killed while the freeze is pending.
fake_start "$agent" --freeze-delay "$DELAY"
qb_fs_mount "$store" "$mnt" -o "vm=vm1:$qmp:$agent"
n0=$(npoints)
start_writer "inc\n"
fake_wait 'recv guest-fsfreeze-freeze'
kill -TERM "$WRITER"
reap "$WRITER"
fake_assert_thawed "writer of backup killed during the freeze"
for ((i = 0; i < 600; i++)); do
  cat "$mnt/vm1/status" > "$T/status.json"
  [ "$(qb_json "$T/status.json" 'd["state"]')" = running ] || break
  sleep 0.1
done
qb_json "$T/status.json" 'd["last"]["error"]' | grep -qi cancel || qb_die "status: $(cat "$T/status.json")"
[ "$(npoints)" = "$n0" ] || qb_die "a canceled backup made a restore point"

# 0 filesystems frozen through the mount: status and record say not quiesced.
fake_start "$agent" --freeze-count 0
r=$(qb_fs_control "$C" "inc\n")
[ "$r" = OK ] || qb_die "default quiesce, 0 frozen, through the mount: $r: $(cat "$mnt/vm1/status")"
cat "$mnt/vm1/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["latest_record"]["quiesced"]')" = False ] \
  || qb_die "status says quiesced: $(cat "$T/status.json")"
qb_json "$T/status.json" 'd["last"]["quiesce_note"]' | grep -q 'froze no filesystem' \
  || qb_die "status does not say why: $(cat "$T/status.json")"
r=$(qb_fs_control "$C" "inc quiesce\n")
[ "$r" = EIO ] || qb_die "explicit quiesce, 0 frozen, through the mount: $r"
fake_assert_thawed "mount, 0 frozen"

# A hostile agent error through the mount: status JSON carries it escaped.
fake_start "$agent" --freeze-error $'evil\e[2J\nline2'
r=$(qb_fs_control "$C" "inc quiesce\n")
[ "$r" = EIO ] || qb_die "explicit quiesce, agent error, through the mount: $r"
cat "$mnt/vm1/status" > "$T/status.json"
python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["last"]["error"]
assert "evil" in e, e
assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in e), repr(e)
' "$T/status.json" || qb_die "agent text in status not escaped: $(cat "$T/status.json")"
LC_ALL=C grep -q $'\e' "$T/fs.log" && qb_die "raw ESC from the agent reached the daemon's log"

# Unmounted (lazily: the writer holds the control file) while the freeze is
# pending: the daemon ends once the backup is over, and the guest is thawed.
fake_start "$agent" --freeze-delay "$DELAY"
start_writer "inc\n"
fake_wait 'recv guest-fsfreeze-freeze'
fusermount3 -u -z "$mnt"
reap "$WRITER"
reap "$FS_PID"
[ "$RC" = 0 ] || qb_die "qmpbackupfs exited $RC after an unmount during a freeze"
fake_assert_thawed "unmount during the freeze"

# SIGTERM of the daemon while the freeze is pending: clean exit, thawed.
fake_start "$agent" --freeze-delay "$DELAY"
qb_fs_mount "$store" "$mnt" -o "vm=vm1:$qmp:$agent"
start_writer "inc\n"
fake_wait 'recv guest-fsfreeze-freeze'
kill -TERM "$FS_PID"
reap "$FS_PID"
[ "$RC" = 0 ] || qb_die "qmpbackupfs exited $RC on SIGTERM during a freeze"
reap "$WRITER"
fake_assert_thawed "daemon SIGTERM during the freeze"
mountpoint -q "$mnt" && qb_die "still mounted after SIGTERM"

# SIGKILL of the daemon while the freeze is pending: the guard thaws.
fake_start "$agent" --freeze-delay "$DELAY"
qb_fs_mount "$store" "$mnt" -o "vm=vm1:$qmp:$agent"
start_writer "inc\n"
fake_wait 'recv guest-fsfreeze-freeze'
kill -KILL "$FS_PID"
reap "$FS_PID"
reap "$WRITER"
fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
fake_check_guards
fake_assert_thawed "daemon SIGKILL during the freeze"
qb_log "thaw guards inspected while running: ${GUARDS_SEEN:-0}"

# After all that, a quiesced backup still works.
fake_start "$agent"
"$QMPBACKUP" --socket "$qmp" --agent-socket "$agent" backup --target "$store/vm1" --level auto \
  --quiesce >"$T/cli.out" 2>&1 || qb_die "quiesced backup after the faults failed: $(cat "$T/cli.out")"
fake_assert_thawed "final quiesced backup"
echo "freeze-cancel: ok"
