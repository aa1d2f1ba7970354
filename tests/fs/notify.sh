#!/usr/bin/env bash
# Notifications: -o on_success= / on_failure= run after each control-file
# backup with QB_VM, QB_LEVEL, QB_POINT, QB_RESULT, QB_REASON, QB_BYTES,
# QB_SECONDS; an inc with no chain runs on_failure with the reason; a peer's
# error text with ESC and newlines reaches QB_REASON escaped as \xNN; a command
# that never ends does not hold the writer's answer and is killed after
# notify_timeout (logged); an empty command is refused at mount time.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3
qb_need_fuse
qb_tmpdir

fake=$QB_SOURCE_DIR/tests/fs/fakeqmp.py
store=$T/store
mnt=$T/mnt
mkdir -p "$store"

# The hook: one line per call with its environment, then, if asked, never end.
cat > "$T/hook.sh" <<HOOK
#!/bin/sh
printf 'vm=%s level=%s point=%s result=%s bytes=%s seconds=%s reason=%s\n' \
  "\$QB_VM" "\$QB_LEVEL" "\$QB_POINT" "\$QB_RESULT" "\$QB_BYTES" "\$QB_SECONDS" "\$QB_REASON" >> "$T/hook.log"
if [ -e "$T/sleep-\$QB_VM" ]; then
  echo \$\$ > "$T/sleep.pid"
  exec sleep 100000
fi
HOOK
chmod 755 "$T/hook.sh"
: > "$T/hook.log"

# Wait (bounded, 30 s) until the hook log has N lines.
wait_hook_lines() {
  local i
  for ((i = 0; i < 300; i++)); do
    [ "$(wc -l < "$T/hook.log")" -ge "$1" ] && return 0
    sleep 0.1
  done
  qb_die "the hook did not run (want $1 lines): $(cat "$T/hook.log"; tail -5 "$T/fs.log")"
}

# An empty command is refused with a clear message, nothing mounted.
mkdir -p "$T/mnt-empty"
rc=0
"$QMPBACKUPFS" "$store" "$T/mnt-empty" -f -o on_success= > "$T/empty.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || qb_die "-o on_success= (empty) was accepted"
grep -q 'on_success=: empty command' "$T/empty.out" || qb_die "no clear message for an empty command: $(cat "$T/empty.out")"
! mountpoint -q "$T/mnt-empty" || qb_die "mounted with an empty command"

qb_vm_start vm1 drive0:qcow2:32M
qb_guest_write vm1 drive0 "write -P 0x5a 0 4M"
python3 "$fake" evil "$T/evil.qmp" 2>>"$T/fake.log" &
qb_register_pid $!
for ((i = 0; i < 100; i++)); do [ -S "$T/evil.qmp" ] && break; sleep 0.1; done
[ -S "$T/evil.qmp" ] || qb_die "fake QMP peer did not start"

qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets" -o "vm=evil:$T/evil.qmp" \
  -o "vm=gone:$T/no"$'\x1b[31m'"such"$'\n'"socket.qmp" \
  -o "on_success=$T/hook.sh" -o "on_failure=$T/hook.sh" -o notify_timeout=2

# 1. inc with no chain: EIO, on_failure with result=failed and a reason.
r=$(qb_fs_control "$mnt/vm1/backup" inc)
[ "$r" = EIO ] || qb_die "inc without a chain: $r"
wait_hook_lines 1
l=$(sed -n 1p "$T/hook.log")
[[ $l == "vm=vm1 level=inc point= result=failed bytes=0 seconds="*" reason="?* ]] \
  || qb_die "on_failure environment: $l"

# 2. full: on_success with the point the mount shows, bytes > 0.
r=$(qb_fs_control "$mnt/vm1/backup" full)
[ "$r" = OK ] || qb_die "full: $r $(cat "$mnt/vm1/status")"
wait_hook_lines 2
l=$(sed -n 2p "$T/hook.log")
p=$(qb_fs_points "$mnt/vm1/drive0/restore" | tail -1)
[[ $l == "vm=vm1 level=full point=${p%.img} result=ok bytes="[1-9]*" seconds="[0-9]*.[0-9]" reason=" ]] \
  || qb_die "on_success environment: $l (point $p)"

# 3. a peer's error with ESC, CR and newlines: escaped in QB_REASON.
r=$(timeout 120 python3 -c "$QB_FS_WRITER" "$mnt/evil/backup" full)
[ "$r" = EIO ] || [ "$r" = EHOSTDOWN ] || qb_die "backup of the evil peer: $r"
wait_hook_lines 3
[ "$(wc -l < "$T/hook.log")" -eq 3 ] || qb_die "a raw newline reached QB_REASON: $(cat -A "$T/hook.log")"
! grep -q $'\x1b' "$T/hook.log" || qb_die "a raw ESC reached QB_REASON"
! grep -q $'\r' "$T/hook.log" || qb_die "a raw CR reached QB_REASON"
l=$(sed -n 3p "$T/hook.log")
[[ $l == "vm=evil level=full point= result=failed "*'\x1b[31mred\x1b[0m\x0d\x0aqmpbackupfs: FORGED'* ]] \
  || qb_die "QB_REASON not escaped: $l"

# 3b. a socket path with ESC and a newline in the error text: escaped too.
r=$(timeout 120 python3 -c "$QB_FS_WRITER" "$mnt/gone/backup" full)
[ "$r" != OK ] || qb_die "backup through a missing socket: $r"
wait_hook_lines 4
[ "$(wc -l < "$T/hook.log")" -eq 4 ] || qb_die "a raw newline reached QB_REASON: $(cat -A "$T/hook.log")"
! grep -q $'\x1b' "$T/hook.log" || qb_die "a raw ESC reached QB_REASON: $(cat -A "$T/hook.log")"
l=$(sed -n 4p "$T/hook.log")
[[ $l == "vm=gone level=full point= result=failed "*'no\x1b[31msuch\x0asocket.qmp'* ]] \
  || qb_die "QB_REASON not escaped: $l"

# 4. a hook that never ends: the writer still gets its answer, the hook is killed.
touch "$T/sleep-vm1"
r=$(timeout 120 python3 -c "$QB_FS_WRITER" "$mnt/vm1/backup" inc)
[ "$r" = OK ] || qb_die "inc with a hanging hook: $r"
wait_hook_lines 5
for ((i = 0; i < 300; i++)); do [ -s "$T/sleep.pid" ] && break; sleep 0.1; done
spid=$(cat "$T/sleep.pid")
for ((i = 0; i < 300; i++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$spid" 2>/dev/null || { kill "$spid"; qb_die "the hanging hook was not killed"; }
for ((i = 0; i < 100; i++)); do grep -q 'event=notify-killed vm=vm1 hook=on_success' "$T/fs.log" && break; sleep 0.1; done
grep -q 'event=notify-killed vm=vm1 hook=on_success reason="ran longer than 2 s' "$T/fs.log" \
  || qb_die "no log line for the killed hook: $(tail -5 "$T/fs.log")"
rm -f "$T/sleep-vm1"

# 5. contrib/monitoring: the textfile script copies .metrics, and every
# qmpbackupfs_* name the alert rules use is one the mount prints.
mon=$QB_SOURCE_DIR/contrib/monitoring
mkdir -p "$T/textfile"
sh "$mon/qmpbackupfs-textfile.sh" "$mnt" "$T/textfile" || qb_die "qmpbackupfs-textfile.sh failed"
grep -q '^qmpbackupfs_backups_total{vm="vm1",level="full",result="ok"} 1$' "$T/textfile/qmpbackupfs.prom" \
  || qb_die "the textfile is not the mount's .metrics: $(head -20 "$T/textfile/qmpbackupfs.prom")"
[ -z "$(ls -A "$T/textfile" | grep -v '^qmpbackupfs.prom$')" ] || qb_die "temporary files left: $(ls -A "$T/textfile")"
for m in $(grep -o 'qmpbackupfs_[a-z_]*' "$mon/qmpbackupfs-alerts.yml" | sort -u); do
  grep -q "^$m{" "$T/textfile/qmpbackupfs.prom" || qb_die "the alert rules use $m, which .metrics does not print"
done
if python3 -c 'import yaml' 2>/dev/null; then
  python3 -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert d["groups"][0]["rules"]' \
    "$mon/qmpbackupfs-alerts.yml" || qb_die "qmpbackupfs-alerts.yml is not valid YAML"
else
  qb_log "note: python3 yaml module missing, the YAML syntax of the alert rules is not checked"
fi

qb_fs_unmount "$mnt"
echo "notify: ok"
