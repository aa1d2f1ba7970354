#!/usr/bin/env bash
# The shipped systemd units, as configured by meson: `systemd-analyze verify`
# finds nothing to say about them, and the commands they run (read from the
# unit files, with the install paths pointed at this build and /etc at a
# scratch directory, run by unitrun.py the way systemd runs them, each unit in
# a cgroup of its own) do what the units promise, against a real QEMU VM and a
# real mount:
# - qmpbackupfs.service: "started" means mounted (the mount is there the moment
#   the start returns); its settings file is read; a backup through the mount
#   works; stop (SIGTERM to the group) during a running backup cancels it,
#   unmounts, and every process ends by itself well before TimeoutStopSec
#   (no SIGKILL); a mount left dead by a daemon killed -9 does not stop the
#   next start.
#   A stop while a backup has frozen the guest (a fake agent) thaws it; so
#   does a stop after the daemon died during a freeze: the thaw guard left
#   in the group ignores SIGTERM, thaws, and exits before TimeoutStopSec.
# - qmpbackup@VM.service: /etc/default/qmpbackup and /etc/qmpbackup/VM.conf are
#   read, a full then an auto (incremental) backup, each restore image exact;
#   an unreachable VM fails the unit (exit 3).
# systemd is not PID 1 in every test environment, so the units are not started
# by systemd itself here.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
QGASTATUS=${3:+$(realpath -m "$3")}
qb_need_root
fault_init
qb_need fusermount3 stat qemu-io
: "${QB_UNIT_BINDIR:?set by meson}" "${QB_UNIT_LIBEXECDIR:?set by meson}"
units=$QB_BUILD_DIR/contrib/systemd
run=$QB_SOURCE_DIR/tests/service/unitrun.py
cgroot=/sys/fs/cgroup/unified
[ -w "$cgroot/cgroup.procs" ] || cgroot=/sys/fs/cgroup
if ! grep -q " $cgroot cgroup2 " /proc/mounts || ! [ -w "$cgroot/cgroup.procs" ]; then
  echo "SKIP: no writable cgroup v2 hierarchy to hold the units' processes"
  exit 77
fi

# The install paths of this build's units point at the build's programs.
bin=$T/bin
libexec=$T/libexec
mkdir -p "$bin" "$libexec" "$T/etc/default" "$T/etc/qmpbackup" "$T/units"
ln -s "$QMPBACKUPFS" "$bin/qmpbackupfs"
ln -s "$QMPBACKUP" "$bin/qmpbackup"
R=(--replace "$QB_UNIT_LIBEXECDIR=$libexec" --replace "$QB_UNIT_BINDIR=$bin" --replace "/etc/=$T/etc/")
for u in qmpbackupfs.service qmpbackup@.service; do
  sed -e "s|$QB_UNIT_LIBEXECDIR|$libexec|g" -e "s|$QB_UNIT_BINDIR|$bin|g" "$units/$u" > "$T/units/$u"
done
cp "$QB_SOURCE_DIR/contrib/systemd/qmpbackup@.timer" "$T/units/"
sed -e "s|$QB_UNIT_BINDIR|$bin|g" "$units/qmpbackup-vm" > "$libexec/qmpbackup-vm"
chmod 755 "$libexec/qmpbackup-vm"

# The units' Documentation= pages, from the source tree (verify runs man on them).
mkdir -p "$T/man/man1" "$T/man/man8"
cp "$QB_SOURCE_DIR"/doc/*.1 "$T/man/man1/"
cp "$QB_SOURCE_DIR"/doc/*.8 "$T/man/man8/"

if command -v systemd-analyze >/dev/null 2>&1; then
  out=$(cd "$T/units" && MANPATH=$T/man systemd-analyze verify ./qmpbackupfs.service ./qmpbackup@vm1.service \
        ./qmpbackup@vm1.timer 2>&1) || qb_die "systemd-analyze verify failed: $out"
  [ -z "$out" ] || qb_die "systemd-analyze verify has something to say: $out"
  qb_log "systemd-analyze verify: clean"
else
  qb_log "systemd-analyze not installed: unit syntax not verified"
fi

cg_fs=$cgroot/qb-test-fs.$$
cg_bk=$cgroot/qb-test-backup.$$
# At exit: the mount detached, every process left in a unit's group (all
# started by this test) killed, the groups removed.
units_cleanup() {
  local g p i
  fusermount3 -u -z "$mnt" 2>/dev/null
  for g in "$cg_fs" "$cg_bk"; do
    [ -d "$g" ] || continue
    for p in $(cat "$g/cgroup.procs"); do kill -9 "$p" 2>/dev/null; done
    for ((i = 0; i < 50; i++)); do [ -z "$(cat "$g/cgroup.procs")" ] && break; sleep 0.1; done
    rmdir "$g" 2>/dev/null
  done
  return 0
}
qb_on_exit units_cleanup

fs_unit() { python3 "$run" "${R[@]}" --cgroup "$cg_fs" "$T/units/qmpbackupfs.service" "$@"; }
bk_unit() { python3 "$run" "${R[@]}" --instance "$1" --cgroup "$cg_bk" "$T/units/qmpbackup@.service" start; }
cg_count() { wc -w < "$1/cgroup.procs"; }

qb_vm_start vm1 drive0:qcow2:32M
qb_guest_write vm1 drive0 "write -P 0x21 0 4M"

# --- the mount service
rmdir "$store"                                   # the unit makes it
cat > "$T/etc/default/qmpbackupfs" <<CONF
# test settings
STORE=$store
MOUNTPOINT=$mnt
OPTIONS="-o sockets=$T/sockets"
CONF
fs_unit start > "$T/fs-start.log" 2>&1 || qb_die "qmpbackupfs.service start failed: $(cat "$T/fs-start.log")"
mountpoint -q "$mnt" || qb_die "the start returned but $mnt is not mounted"
[ "$(ls "$mnt")" = vm1 ] || qb_die "mount shows: $(ls "$mnt")"
[ "$(stat -c %a "$store")" = 700 ] || qb_die "store made with mode $(stat -c %a "$store")"
[ "$(cg_count "$cg_fs")" = 1 ] || qb_die "want the daemon alone in the group: $(cat "$cg_fs/cgroup.procs")"
fault_backup vm1 full
fault_check_points "through the service's mount"

# --- the backup service, settings from both files
printf 'STORE=%s\nSOCKETS=%s\n' "$store" "$T/sockets" > "$T/etc/default/qmpbackup"
echo "LEVEL=full" > "$T/etc/qmpbackup/vm1.conf"
qb_guest_write vm1 drive0 "write -P 0x22 8M 2M"
qb_capture vm1 drive0 "$T/cap/new-drive0.raw"
before=$(fault_newest vm1 drive0)
bk_unit vm1 > "$T/bk.log" 2>&1 || qb_die "qmpbackup@vm1 (full) failed: $(cat "$T/bk.log")"
p=$(fault_newest vm1 drive0)
[ "$p" != "$before" ] || qb_die "qmpbackup@vm1 made no restore point"
fault_remember vm1 drive0 "$p" "$T/cap/new-drive0.raw"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d["level"] != "full")' \
  "$(ls -t "$store"/vm1/.points/*.json | head -1)" || qb_die "LEVEL=full of vm1.conf not used"

: > "$T/etc/qmpbackup/vm1.conf"                # default level: auto -> an incremental
qb_guest_write vm1 drive0 "write -z 8M 1M"
qb_capture vm1 drive0 "$T/cap/new-drive0.raw"
bk_unit vm1 > "$T/bk.log" 2>&1 || qb_die "qmpbackup@vm1 (auto) failed: $(cat "$T/bk.log")"
p=$(fault_newest vm1 drive0)
fault_remember vm1 drive0 "$p" "$T/cap/new-drive0.raw"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(d["level"] != "inc")' \
  "$(ls -t "$store"/vm1/.points/*.json | head -1)" || qb_die "auto after a full was not an incremental"
fault_check_points "after the backup service"

rc=0
bk_unit nosuch > "$T/bk.log" 2>&1 || rc=$?
[ "$rc" = 3 ] || qb_die "backup of a VM without a socket: want exit 3, got $rc: $(cat "$T/bk.log")"
[ "$(cg_count "$cg_bk")" = 0 ] || qb_die "processes left after the backup unit: $(cat "$cg_bk/cgroup.procs")"

# --- stop during a running backup: cancelled, unmounted, no SIGKILL needed
qb_guest_write vm1 drive0 "write -P 0x23 0 32M"
fs_unit stop || qb_die "stop needed SIGKILL"
! mountpoint -q "$mnt" || qb_die "still mounted after stop"
sed -i 's|^OPTIONS=.*|OPTIONS="-o sockets='"$T"'/sockets -o speed=1M"|' "$T/etc/default/qmpbackupfs"
fs_unit start > "$T/fs-start.log" 2>&1 || qb_die "restart failed: $(cat "$T/fs-start.log")"
fault_start_writer vm1 "full\n"
fault_wait_job vm1
fs_unit stop || qb_die "stop during a backup needed SIGKILL"
fault_wait_gone "$WRITER"
[ "$(cat "$T/writer.out")" != OK ] || qb_die "the backup interrupted by the stop reported success"
! mountpoint -q "$mnt" || qb_die "still mounted after the stop"
[ "$(cg_count "$cg_fs")" = 0 ] || qb_die "processes left after stop"
fault_assert_qemu_clean vm1 "after stop during a backup"

# --- a daemon killed -9 leaves a dead mount; the next start copes
sed -i 's|^OPTIONS=.*|OPTIONS="-o sockets='"$T"'/sockets"|' "$T/etc/default/qmpbackupfs"
fs_unit start > "$T/fs-start.log" 2>&1 || qb_die "start failed: $(cat "$T/fs-start.log")"
kill -9 "$(cat "$cg_fs/cgroup.procs")"
for ((i = 0; i < 100; i++)); do [ "$(cg_count "$cg_fs")" = 0 ] && break; sleep 0.1; done
! stat "$mnt" >/dev/null 2>&1 || qb_die "expected a dead mount after kill -9"
fs_unit start > "$T/fs-start.log" 2>&1 || qb_die "start after a crash failed: $(cat "$T/fs-start.log")"
mountpoint -q "$mnt" || qb_die "not mounted after the start that followed a crash"
fault_backup vm1 auto
fault_check_points "after stop, crash and restart"
fault_assert_qemu_clean vm1 "after stop, crash and restart"

# --- the guest is never left frozen by a stop (a fake agent beside the VM's
# QMP socket: its freeze answers after a delay)
if [ -n "$QGASTATUS" ]; then
  . "$QB_SOURCE_DIR/tests/guest/fakeqga.sh"
  # stop while the freeze is pending: the daemon thaws, every process ends by itself
  fake_start "$T/sockets/vm1.qga" --freeze-delay 5
  fault_start_writer vm1 "inc\n"
  fake_wait 'recv guest-fsfreeze-freeze'
  fs_unit stop || qb_die "stop during a freeze needed SIGKILL"
  fault_wait_gone "$WRITER"
  fake_assert_thawed "stop during the freeze" 5
  ! mountpoint -q "$mnt" || qb_die "still mounted after a stop during a freeze"

  # the daemon killed -9 during the freeze: its thaw guard is left alone in
  # the group, ignores the stop's SIGTERM, thaws the guest and exits before
  # TimeoutStopSec (with KillMode=mixed it would be SIGKILLed at once)
  fs_unit start > "$T/fs-start.log" 2>&1 || qb_die "start failed: $(cat "$T/fs-start.log")"
  fake_start "$T/sockets/vm1.qga" --freeze-delay 5
  fault_start_writer vm1 "inc\n"
  fake_wait 'recv guest-fsfreeze-freeze'
  daemon=
  for p in $(cat "$cg_fs/cgroup.procs"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = qmpbackupfs ] && daemon=$p
  done
  [ -n "$daemon" ] || qb_die "no daemon in the group: $(cat "$cg_fs/cgroup.procs")"
  [ "$(cg_count "$cg_fs")" = 2 ] || qb_die "want the daemon and its thaw guard in the group: $(cat "$cg_fs/cgroup.procs")"
  kill -9 "$daemon"
  fault_wait_gone "$WRITER"
  fs_unit stop || qb_die "the stop after a crash during a freeze needed SIGKILL"
  fake_assert_thawed "stop after the daemon died during the freeze" 5
  fs_unit start > "$T/fs-start.log" 2>&1 || qb_die "start after the crash failed: $(cat "$T/fs-start.log")"
  kill "$FAKE_PID"; wait "$FAKE_PID" 2>/dev/null || true
  rm -f "$T/sockets/vm1.qga"
  fault_backup vm1 auto
  fault_check_points "after the freezes"
else
  qb_log "qgastatus not built: stops during a guest freeze not checked"
fi
fault_assert_qemu_clean vm1 "at the end"
fs_unit stop || qb_die "final stop needed SIGKILL"
! mountpoint -q "$mnt" || qb_die "still mounted after the final stop"
echo "units: ok"
