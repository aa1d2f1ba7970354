# qmpbackupfs test library for the mounted file system.  Source after vm.sh.
# Arguments of every fs test: $1 qmpbackupfs, $2 qmpcmd (set by meson).

[ -n "${1:-}" ] && QMPBACKUPFS=$1
[ -n "${2:-}" ] && QMPCMD=$2
export QMPBACKUPFS QMPCMD

# Exit 77 unless FUSE mounts can work here.
qb_need_fuse() {
  [ -c /dev/fuse ] || { echo "SKIP: /dev/fuse missing"; exit 77; }
  qb_need fusermount3 mountpoint "$QMPBACKUPFS"
}

# Mount STORE on MNT in the foreground (in the background of the test) with
# more ARGS; wait (bounded, 10 s) until the mount is there.  Sets FS_PID.
qb_fs_mount() {
  local store=$1 mnt=$2 i
  shift 2
  mkdir -p "$mnt"
  "$QMPBACKUPFS" "$store" "$mnt" -f "$@" >>"$T/fs.log" 2>&1 &
  FS_PID=$!
  qb_register_pid "$FS_PID"
  qb_register_mount "$mnt"
  # a daemon that died leaves a mount `mountpoint` cannot stat: detach it lazily
  qb_on_exit "fusermount3 -u -z '$mnt' 2>/dev/null || true"
  for ((i = 0; i < 100; i++)); do
    mountpoint -q "$mnt" && return 0
    _qb_alive "$FS_PID" || break
    sleep 0.1
  done
  tail -n 20 "$T/fs.log" >&2
  qb_die "qmpbackupfs did not mount $mnt"
}

# Unmount MNT and wait (bounded) for the daemon FS_PID to exit with status 0.
qb_fs_unmount() {
  local rc=0
  fusermount3 -u "$1" || qb_die "fusermount3 -u $1 failed"
  for ((i = 0; i < 100; i++)); do _qb_alive "$FS_PID" || break; sleep 0.1; done
  wait "$FS_PID" || rc=$?
  [ $rc -eq 0 ] || qb_die "qmpbackupfs exited $rc after unmount"
}

# Python program: write argv[2] (with \n, \xNN escapes) to control file argv[1];
# print "OK" or the errno name of the failure.
QB_FS_WRITER='
import errno, os, sys
try:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, sys.argv[2].encode("latin-1").decode("unicode_escape").encode("latin-1"))
    finally:
        os.close(fd)
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
'

# Write TEXT to control file FILE; print the errno name of the failure ("OK" on success).
qb_fs_control() { python3 -c "$QB_FS_WRITER" "$1" "$2"; }

# Print the value at PATH (python expression on `d`) of JSON file FILE.
qb_json() {
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# Print the names in restore dir DIR (without latest.img) in time order: the
# byte order, which is time order ("...Z.img" before "...Z_02.img").
qb_fs_points() { LC_ALL=C ls "$1" | grep -v "^latest.img$"; }
