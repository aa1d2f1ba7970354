#!/usr/bin/env bash
# Application-consistent backups of a real Linux guest with a real qemu-ga.
#
#   quiesce.sh QMPBACKUP QMPCMD QGASTATUS
#
# Boots the test guest (contrib/guest/build-guest.sh) under TCG on an ext4
# qcow2 disk; its /init writes /data/f1, f2, ... for ever (file N: the line N
# 512 times, fsynced, then "QB-WROTE N" on the serial console).
#  1. The agent client alone: freeze stops the writer, a copy of the disk
#     taken while frozen is a clean filesystem, thaw lets the writer go on.
#  2. qmpbackup full and inc with --quiesce while the writer runs: each
#     restore point is a clean ext4 (no needs_recovery, e2fsck -fn passes)
#     holding every file the guest had made durable before the backup, and
#     any later file only as a prefix of its content; the guest is thawed.
#  3. A crash-consistent inc (no agent): the image needs recovery; after the
#     journal replay (on a copy) it is clean and holds every durable file.
#  4. With QMPBACKUPFS: the same through the mount (`touch` quiesces by
#     default, then "inc quiesce"); each restore image is clean, holds the
#     files, and loop-mounts read-only.
#  5. qmpbackup SIGKILLed while the guest is frozen (a relay keeps back the
#     freeze's reply): its thaw guard thaws the guest; the writer goes on.
# Skips (77) when the guest cannot be built or qmpbackup is not built yet.
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: quiesce.sh QMPBACKUP QMPCMD QGASTATUS [QMPBACKUPFS]" >&2; exit 2; }
# meson passes built programs relative to the build directory.
QMPBACKUP=$(realpath -m "$1") QMPCMD=$(realpath -m "$2") QGASTATUS=$(realpath -m "$3")
FSBIN=${4:+$(realpath -m "$4")}
: "${QB_SOURCE_DIR:?QB_SOURCE_DIR must be set}"
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
export PATH="$PATH:/usr/sbin:/sbin"

qb_need "$QB_QEMU" qemu-img mkfs.ext4 dumpe2fs e2fsck debugfs "$QMPCMD" "$QGASTATUS"

rc=0
guest=$("$QB_SOURCE_DIR/contrib/guest/build-guest.sh") || rc=$?
if [ $rc -eq 77 ]; then echo "SKIP: the test guest cannot be built here (see above)"; exit 77; fi
[ $rc -eq 0 ] || qb_die "build-guest.sh failed ($rc)"
eval "$guest"

qb_tmpdir
mkdir -p "$T/store" "$T/scratch"
console=$T/console.log
img=$T/img/vm-drive0.qcow2
qmp=$T/sockets/vm.qmp
qga=$T/sockets/vm.qga
testqmp=$T/vm.test.qmp
disk_dir=$T/store/vm/drive0

# ---- the guest ------------------------------------------------------------

# The highest N of a "QB-WROTE N" line on the console so far (0 if none).
wrote_max() {
  local n
  n=$(grep -ao 'QB-WROTE [0-9]*' "$console" 2>/dev/null | tail -n 1 | cut -d' ' -f2)
  echo "${n:-0}"
}

# Fail with the end of the console if the guest reported a failure or QEMU died.
check_guest() {
  if grep -aq 'QB-GUEST-FAILED\|QB-WRITER-FAILED\|Kernel panic' "$console" 2>/dev/null \
     || ! _qb_alive "$qemu_pid"; then
    tail -n 30 "$console" >&2 || true
    cat "$T/vm/vm.out" >&2 || true
    qb_die "the guest failed"
  fi
}

# Wait (at most SECONDS) until the console has a line matching PATTERN.
wait_console() {
  local pat=$1 limit=$(( $2 * 10 )) i
  for ((i = 0; i < limit; i++)); do
    grep -aq "$pat" "$console" 2>/dev/null && return 0
    check_guest
    sleep 0.1
  done
  tail -n 30 "$console" >&2
  qb_die "no '$pat' on the guest console within $2 s"
}

# Wait (at most 30 s) until the writer has made a file beyond N durable.
wait_wrote_beyond() {
  local n=$1 i
  for ((i = 0; i < 300; i++)); do
    [ "$(wrote_max)" -gt "$n" ] && return 0
    check_guest
    sleep 0.1
  done
  tail -n 10 "$console" >&2
  qb_die "the guest writer is stuck at $n (still frozen?)"
}

# Fail unless the guest agent reports the filesystems thawed.
assert_thawed() {
  local s
  s=$("$QGASTATUS" "$qga" status) || qb_die "guest agent did not answer: $s"
  [ "$s" = thawed ] || qb_die "guest is '$s' after $1, want thawed"
}

truncate -s 64M "$T/scratch/fs.raw"
mkfs.ext4 -q -F -L qbdata "$T/scratch/fs.raw"
qemu-img convert -O qcow2 "$T/scratch/fs.raw" "$img"
rm -f "$T/scratch/fs.raw"

t0=$(date +%s%N)
"$QB_QEMU" -machine q35,accel=tcg -nodefaults -display none -m 256 -name vm \
  -kernel "$QB_GUEST_KERNEL" -initrd "$QB_GUEST_INITRD" \
  -append "console=ttyS0 panic=-1 qb.writer=1 qb.delay=0.1" \
  -serial "file:$console" -no-reboot \
  -drive "file=$img,format=qcow2,if=virtio,id=drive0" \
  -device virtio-serial \
  -chardev "socket,path=$qga,server=on,wait=off,id=qga0" \
  -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
  -qmp "unix:$qmp,server=on,wait=off" \
  -qmp "unix:$testqmp,server=on,wait=off" \
  </dev/null >"$T/vm/vm.out" 2>&1 &
qemu_pid=$!
qb_register_pid "$qemu_pid"
wait_console QB-GUEST-READY 90
qb_log "guest ready after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
wait_wrote_beyond 2

# ---- checks on a raw image of the guest's filesystem -----------------------

# The expected content of file N.
expect_file() { awk -v n="$1" 'BEGIN { for (i = 0; i < 512; i++) print n }'; }

# Check filesystem image RAW: files f1..fN must hold their full content; with
# PREFIX=prefix any other fK may only hold a prefix of its content (a frozen
# filesystem stops a write between two write() calls).  WHAT names it.
check_files() {
  local raw=$1 n=$2 what=$3 prefix=${4:-} dump f k size
  dump=$T/scratch/dump
  rm -rf "$dump"
  mkdir -p "$dump"
  debugfs -R "rdump / $dump" "$raw" >/dev/null 2>&1 || qb_die "$what: debugfs rdump failed"
  # f1..fN: each present, 512 lines, every line its number (one awk for all).
  for ((k = 1; k <= n; k++)); do
    [ -f "$dump/f$k" ] || qb_die "$what: /f$k missing, though durable before the backup"
  done
  if [ "$n" -gt 0 ]; then
    # Sizes first (an empty file would escape the line check), then lines.
    (cd "$dump" && seq 1 "$n" | sed 's/^/f/' | xargs stat -c '%n %s' | awk '
      { want = 512 * (length(substr($1, 2)) + 1)
        if ($2 != want) { print $1 ": " $2 " bytes, want " want; bad = 1 } }
      END { exit bad }') >"$T/scratch/bad" 2>&1 \
      || { head "$T/scratch/bad" >&2; qb_die "$what: truncated files"; }
    (cd "$dump" && seq 1 "$n" | sed 's/^/f/' | xargs awk '
      FNR == 1 && NR > 1 { if (lines != 512) { print prev ": " lines " lines"; bad = 1 } }
      FNR == 1 { lines = 0; prev = FILENAME; want = substr(FILENAME, 2) }
      { lines++; if ($0 != want) { print FILENAME ": line " FNR " is \"" $0 "\""; bad = 1; nextfile } }
      END { if (lines != 512) { print prev ": " lines " lines"; bad = 1 } exit bad }') \
      >"$T/scratch/bad" 2>&1 || { head "$T/scratch/bad" >&2; qb_die "$what: wrong file contents"; }
  fi
  # Later files: a prefix of what the guest was writing.
  if [ "$prefix" = prefix ]; then
    for f in "$dump"/f*; do
      k=${f##*/f}
      [ "$k" -gt "$n" ] || continue
      size=$(stat -c %s "$f")
      expect_file "$k" > "$T/scratch/expect"
      cmp -s -n "$size" "$f" "$T/scratch/expect" || qb_die "$what: /f$k is not a prefix of its content"
    done
  fi
  qb_log "$what: f1..f$n intact, $(find "$dump" -maxdepth 1 -name 'f*' | wc -l) files in all"
}

# Check that RAW is a cleanly frozen ext4: no journal to replay, e2fsck -fn clean.
check_clean() {
  local raw=$1 what=$2 out
  out=$(dumpe2fs -h "$raw" 2>/dev/null) || qb_die "$what: dumpe2fs failed"
  grep -q '^Filesystem features:' <<< "$out" || qb_die "$what: no ext4 superblock"
  if grep '^Filesystem features:' <<< "$out" | grep -qw needs_recovery; then
    qb_die "$what: the filesystem needs recovery: not quiesced"
  fi
  e2fsck -fn "$raw" >"$T/scratch/fsck.out" 2>&1 || {
    cat "$T/scratch/fsck.out" >&2; qb_die "$what: e2fsck -fn found errors"; }
}

# ---- 1. the agent client against the real agent ----------------------------

assert_thawed "boot"
[ "$("$QGASTATUS" "$qga" ping)" = ok ] || qb_die "guest-ping failed"
frozen=$("$QGASTATUS" "$qga" freeze) || qb_die "freeze failed: $frozen"
[ "$frozen" = 1 ] || { "$QGASTATUS" "$qga" thaw; qb_die "froze $frozen filesystems, want 1"; }
[ "$("$QGASTATUS" "$qga" status)" = frozen ] || { "$QGASTATUS" "$qga" thaw; qb_die "status not frozen"; }
n1=$(wrote_max)
# While frozen the disk holds still: a copy of it is a clean filesystem.
qemu-img convert -U -O raw "$img" "$T/scratch/frozen.raw"
sleep 1   # the writer gets time to move, which it must not
n2=$(wrote_max)
thawed=$("$QGASTATUS" "$qga" thaw) || qb_die "thaw failed: $thawed"
[ "$thawed" = 1 ] || qb_die "thawed $thawed filesystems, want 1"
# One "QB-WROTE" may still come out after the freeze (its fsync was done).
[ "$n2" -le $((n1 + 1)) ] || qb_die "the writer went on from $n1 to $n2 while frozen"
assert_thawed "thaw"
wait_wrote_beyond "$n2"
check_clean "$T/scratch/frozen.raw" "frozen copy"
check_files "$T/scratch/frozen.raw" "$n1" "frozen copy" prefix
rm -f "$T/scratch/frozen.raw"

# ---- 2. and 3. qmpbackup ---------------------------------------------------

if [ ! -x "$QMPBACKUP" ] || [ -z "$("$QMPBACKUP" --help 2>&1 || true)" ]; then
  echo "SKIP: qmpbackup is not built yet ($QMPBACKUP); the agent part passed"
  exit 77
fi

# The names of the layers in the disk's store directory, one a line.
store_files() {
  [ -d "$disk_dir" ] || return 0
  find "$disk_dir" -maxdepth 1 -type f \( -name 'FULL-*' -o -name 'INC-*' -o -name 'COPY-*' \) \
    -printf '%f\n' | sort
}

# Run one backup with qmpbackup ARGS... while the writer runs; sets NEWFILE to
# the store file it added and BEFORE to the last file the guest had made
# durable when it started.
run_backup() {
  local what=$1 old new
  shift
  old=$(store_files)
  BEFORE=$(wrote_max)
  "$QMPBACKUP" --socket "$qmp" "$@" >"$T/scratch/backup.out" 2>&1 || {
    cat "$T/scratch/backup.out" >&2; qb_die "$what: qmpbackup $* failed"; }
  new=$(store_files | grep -vxF "$old" || true)
  [ "$(echo "$new" | grep -c .)" = 1 ] || qb_die "$what: want one new store file, got '$new'"
  NEWFILE=$disk_dir/$new
  qb_log "$what: $new (guest had written f$BEFORE)"
}

# Fail unless the record of the restore point of NEWFILE says quiesced WANT.
check_record() {
  local want=$1 what=$2 rec id
  id=${NEWFILE##*/}
  id=${id#*-}
  rec=$T/store/vm/.points/$id.json
  [ -f "$rec" ] || qb_die "$what: no restore point record $rec"
  grep -Eq "\"quiesced\" *: *$want" "$rec" || qb_die "$what: record $rec does not say quiesced=$want"
}

# Materialise store file FILE as raw OUT: an INC names its backing chain
# (the layers before it), so qemu-img reads the whole restore point.
materialise() {
  local layers
  case ${1##*/} in
    INC-*)
      layers=$(qemu-img info --backing-chain "$1" | grep -c '^image:')
      [ "$layers" -ge 2 ] || qb_die "${1##*/} has no backing chain: cannot materialise it"
      ;;
  esac
  rm -f "$2"
  qemu-img convert -O raw "$1" "$2"
}

for level in full inc; do
  run_backup "quiesced $level" --agent-socket "$qga" \
    backup --level "$level" --target "$T/store/vm" --quiesce
  assert_thawed "the $level backup"
  wait_wrote_beyond "$(wrote_max)"
  check_record true "quiesced $level"
  materialise "$NEWFILE" "$T/scratch/rp.raw"
  check_clean "$T/scratch/rp.raw" "quiesced $level"
  check_files "$T/scratch/rp.raw" "$BEFORE" "quiesced $level" prefix
done

run_backup "crash-consistent inc" backup --level inc --target "$T/store/vm"
assert_thawed "the crash-consistent backup"
check_record false "crash-consistent inc"
materialise "$NEWFILE" "$T/scratch/rp.raw"
dumpe2fs -h "$T/scratch/rp.raw" 2>/dev/null | grep '^Filesystem features:' | grep -qw needs_recovery \
  || qb_die "crash-consistent inc: no needs_recovery, yet the guest had it mounted and was writing"
rc=0
e2fsck -fy "$T/scratch/rp.raw" >"$T/scratch/fsck.out" 2>&1 || rc=$?
[ $rc -le 1 ] || { cat "$T/scratch/fsck.out" >&2; qb_die "crash-consistent inc: e2fsck -fy failed ($rc)"; }
check_clean "$T/scratch/rp.raw" "crash-consistent inc after journal replay"
check_files "$T/scratch/rp.raw" "$BEFORE" "crash-consistent inc after journal replay"

# ---- 4. through the mount: touch (quiesce by default), loop-mounted --------

QMPBACKUPFS=$FSBIN
if [ -n "$QMPBACKUPFS" ] && [ -x "$QMPBACKUPFS" ] && [ -c /dev/fuse ]; then
  . "$QB_SOURCE_DIR/tests/fs/lib.sh" "$QMPBACKUPFS" "$QMPCMD"
  mnt=$T/mnt
  mkdir -p "$mnt"
  qb_fs_mount "$T/store" "$mnt" -o "sockets=$T/sockets"
  for how in touch "inc quiesce"; do
    BEFORE=$(wrote_max)
    if [ "$how" = touch ]; then
      touch "$mnt/vm/backup" || qb_die "mount: touch backup failed: $(cat "$mnt/vm/status")"
    else
      r=$(qb_fs_control "$mnt/vm/backup" "$how")
      [ "$r" = OK ] || qb_die "mount: '$how' failed ($r): $(cat "$mnt/vm/status")"
    fi
    assert_thawed "the mount's $how backup"
    wait_wrote_beyond "$(wrote_max)"
    rec=$(ls "$T/store/vm/.points/"*.json | LC_ALL=C sort | tail -1)
    grep -Eq '"quiesced" *: *true' "$rec" || qb_die "mount: $how: record $rec does not say quiesced"
    p=$(qb_fs_points "$mnt/vm/drive0/restore" | tail -1)
    cp --sparse=always "$mnt/vm/drive0/restore/$p" "$T/scratch/rp.raw"
    check_clean "$T/scratch/rp.raw" "mount $how ($p)"
    check_files "$T/scratch/rp.raw" "$BEFORE" "mount $how ($p)" prefix
    # Loop-mount the restore image itself, read-only: no journal to replay.
    if loop=$(losetup -r -f --show "$mnt/vm/drive0/restore/$p" 2>/dev/null); then
      mkdir -p "$T/loopmnt"
      if mount -o ro "$loop" "$T/loopmnt" 2>"$T/scratch/mount.err"; then
        expect_file 1 | cmp -s - "$T/loopmnt/f1" || { umount "$T/loopmnt"; losetup -d "$loop";
          qb_die "mount $how: /f1 on the loop-mounted image differs"; }
        umount "$T/loopmnt"
      else
        losetup -d "$loop"
        qb_die "mount $how: the restore image does not mount read-only: $(cat "$T/scratch/mount.err")"
      fi
      losetup -d "$loop"
      qb_log "mount $how: $p loop-mounted read-only, /f1 intact"
    else
      qb_log "mount $how: no loop device here: loop-mount check not run"
    fi
  done
  qb_fs_unmount "$mnt"
else
  qb_log "qmpbackupfs or /dev/fuse missing: the mount part was not run"
fi

# ---- 5. qmpbackup killed with SIGKILL while the guest is frozen ------------
# A relay (qgaproxy.py) between qmpbackup and the agent keeps back the reply
# to the freeze: the guest is frozen and qmpbackup waits.  SIGKILL it then:
# its thaw guard must connect (through the relay, a new connection to the
# chardev) and thaw the real guest; the writer goes on.

proxy=$T/sockets/proxy.qga
python3 "$QB_SOURCE_DIR/tests/guest/qgaproxy.py" "$qga" "$proxy" "$T/proxy.log" \
  --hold-freeze-reply 2>>"$T/proxy.err" &
qb_register_pid $!
for ((i = 0; i < 100; i++)); do [ -S "$proxy" ] && break; sleep 0.1; done
[ -S "$proxy" ] || qb_die "the agent relay did not start: $(cat "$T/proxy.err")"
"$QMPBACKUP" --socket "$qmp" --agent-socket "$proxy" backup --level inc --target "$T/store/vm" \
  --quiesce >"$T/scratch/backup.out" 2>&1 &
cli=$!
for ((i = 0; i < 600; i++)); do
  grep -q 'held freeze reply' "$T/proxy.log" 2>/dev/null && break
  _qb_alive "$cli" || break
  sleep 0.1
done
grep -q 'held freeze reply: {"return": 1}' "$T/proxy.log" \
  || qb_die "SIGKILL case: the guest did not freeze: $(cat "$T/proxy.log" "$T/scratch/backup.out")"
n1=$(wrote_max)
kill -KILL "$cli"
wait "$cli" 2>/dev/null || true
t_kill=$(date +%s%N)
# The guest stays frozen until the guard thaws it: ask the agent (a third
# client: it waits while the guard is connected).
s=frozen
for ((i = 0; i < 60; i++)); do
  s=$("$QGASTATUS" "$qga" status 2>/dev/null) || s=error
  [ "$s" = thawed ] && break
  check_guest
  sleep 1
done
[ "$s" = thawed ] || qb_die "SIGKILL of qmpbackup during the freeze left the guest $s for 60 s"
qb_log "SIGKILL during the freeze: thawed by the guard after" \
  "$(( ($(date +%s%N) - t_kill) / 1000000 )) ms; relay log: $(tr '\n' ';' < "$T/proxy.log")"
wait_wrote_beyond "$((n1 + 1))"
# The next backup cleans what the killed one left and is quiesced.
run_backup "quiesced inc after the kill" --agent-socket "$qga" \
  backup --level inc --target "$T/store/vm" --quiesce
assert_thawed "the inc after the kill"
check_record true "quiesced inc after the kill"

"$QMPCMD" "$testqmp" quit >/dev/null 2>&1 || true
_qb_wait_gone "$qemu_pid"
qb_log "PASS ($(( ($(date +%s%N) - t0) / 1000000 )) ms from boot)"
