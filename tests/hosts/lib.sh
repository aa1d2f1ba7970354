# qmpbackupfs test library for a store shared by several hosts: a GlusterFS
# volume run in user space (no glusterd: one glusterfsd per brick from a
# volfile, one `glusterfs -f client.vol MNT` per client mount), bound to
# 127.0.0.1 only.  Source after tests/lib/vm.sh and tests/fs/lib.sh.
#
#   gl_need                          # exit 77 with the reason when it cannot run
#   gl_brick_start b1                # brick $T/gl/b1, served on a free port
#   gl_mount "$T/hostA" b1           # a client mount of the single brick b1
#   gl_mount "$T/mntR" b1 b2         # a replica-2 volume of bricks b1 and b2
#   gl_brick_kill b1; gl_brick_start b1   # the brick goes away and comes back
#
# Layout under $T/gl: NAME/ (brick), NAME.vol, NAME.port, NAME.pid, NAME.log,
# client-N.vol/.log.

# Exit 77 with the reason unless GlusterFS can run here.
gl_need() {
  qb_need_root
  [ -c /dev/fuse ] || { echo "SKIP: /dev/fuse missing"; exit 77; }
  local b
  for b in glusterfsd glusterfs; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || {
      echo "SKIP: $b not found (apt-get install glusterfs-client glusterfs-server," \
           "or contrib/install-deps.sh)"; exit 77; }
  done
  PATH=$PATH:/usr/sbin
  qb_need python3 mountpoint fusermount3
  mkdir -p "$T/gl"
}

# Print a TCP port on 127.0.0.1 that is free now.
gl_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# True once something accepts TCP connections on 127.0.0.1:PORT.
_gl_listening() {
  python3 -c 'import socket,sys; s=socket.socket(); s.settimeout(1); s.connect(("127.0.0.1",int(sys.argv[1])))' \
    "$1" 2>/dev/null
}

# Start (or restart, on its old port) brick NAME: storage/posix on $T/gl/NAME,
# features/locks, io-threads, protocol/server on 127.0.0.1 only.  Waits
# (bounded, 10 s) until it listens.
gl_brick_start() {
  local n=$1 port i pid
  mkdir -p "$T/gl/$n"
  chmod 0700 "$T/gl/$n"
  [ -s "$T/gl/$n.port" ] || gl_free_port > "$T/gl/$n.port"
  port=$(cat "$T/gl/$n.port")
  cat > "$T/gl/$n.vol" <<EOF
volume $n-posix
  type storage/posix
  option directory $T/gl/$n
end-volume
volume $n-locks
  type features/locks
  subvolumes $n-posix
end-volume
volume $n
  type performance/io-threads
  subvolumes $n-locks
end-volume
volume $n-server
  type protocol/server
  option transport-type tcp
  option transport.socket.bind-address 127.0.0.1
  option transport.socket.listen-port $port
  option auth.addr.$n.allow 127.0.0.1
  subvolumes $n
end-volume
EOF
  glusterfsd -N -f "$T/gl/$n.vol" -l "$T/gl/$n.log" </dev/null >/dev/null 2>&1 &
  pid=$!
  echo "$pid" > "$T/gl/$n.pid"
  qb_register_pid "$pid"
  for ((i = 0; i < 100; i++)); do
    _gl_listening "$port" && return 0
    _qb_alive "$pid" || break
    sleep 0.1
  done
  tail -n 20 "$T/gl/$n.log" >&2
  qb_die "glusterfsd of brick $n did not listen on 127.0.0.1:$port"
}

# Kill brick NAME's glusterfsd with SIGKILL (a server that dies) and reap it.
gl_brick_kill() {
  local pid
  pid=$(cat "$T/gl/$1.pid")
  kill -9 "$pid" 2>/dev/null || true
  _qb_wait_gone "$pid"
}

# Write the client volfile for bricks BRICK... to stdout: one protocol/client
# each, under cluster/replicate when there are several.
_gl_client_vol() {
  local b subs="" pend=""
  for b in "$@"; do
    cat <<EOF
volume c-$b
  type protocol/client
  option transport-type tcp
  option remote-host 127.0.0.1
  option remote-port $(cat "$T/gl/$b.port")
  option remote-subvolume $b
  option ping-timeout 5
end-volume
EOF
    subs="$subs c-$b"
    pend="${pend:+$pend,}c-$b"
  done
  if [ $# -gt 1 ]; then
    cat <<EOF
volume rep
  type cluster/replicate
  option afr-pending-xattr $pend
  option data-self-heal on
  option metadata-self-heal on
  option entry-self-heal on
  subvolumes$subs
end-volume
EOF
  fi
}

_gl_nclients=0

# Mount the volume of bricks BRICK... on MNT with a client of its own (an
# independent host); waits (bounded, 10 s).  GL_CLIENT_OPTS adds options.
gl_mount() {
  local mnt=$1 vol log i pid
  shift
  _gl_nclients=$((_gl_nclients + 1))
  vol=$T/gl/client-$_gl_nclients.vol
  log=$T/gl/client-$_gl_nclients.log
  _gl_client_vol "$@" > "$vol"
  mkdir -p "$mnt"
  # shellcheck disable=SC2086
  glusterfs -N -f "$vol" -l "$log" ${GL_CLIENT_OPTS:-} "$mnt" </dev/null >/dev/null 2>&1 &
  pid=$!
  echo "$pid" > "$vol.pid"
  qb_register_mount "$mnt"
  qb_register_pid "$pid"
  # a client that was killed leaves a mount `mountpoint` cannot stat
  qb_on_exit "umount -l '$mnt' 2>/dev/null || true"
  for ((i = 0; i < 100; i++)); do
    if mountpoint -q "$mnt" && stat -f "$mnt" >/dev/null 2>&1; then
      # the first operations wait for the bricks' handshake
      for ((i = 0; i < 100; i++)); do
        ls "$mnt" >/dev/null 2>&1 && return 0
        sleep 0.1
      done
      break
    fi
    _qb_alive "$pid" || break
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  qb_die "glusterfs did not mount $mnt"
}

# The pid of the glusterfs client mounted on MNT.
gl_client_pid() {
  local f
  for f in "$T"/gl/client-*.vol; do
    if grep -q . "$f.pid" 2>/dev/null && \
       tr '\0' ' ' < "/proc/$(cat "$f.pid")/cmdline" 2>/dev/null | grep -q " $1\$\| $1 "; then
      cat "$f.pid"; return 0
    fi
  done
  return 1
}

# Start qmpbackupfs on STORE at MNT in the background (like qb_fs_mount, but
# several daemons may run: the pid goes to variable VAR).  Usage:
# gl_fs_mount VAR STORE MNT [ARGS...]
gl_fs_mount() {
  local var=$1
  qb_fs_mount "${@:2}"
  printf -v "$var" '%s' "$FS_PID"
}

# Print the milliseconds since the epoch.
gl_now_ms() { date +%s%3N; }

# Wait (bounded: LIMIT seconds) until restore point file POINT is listed in
# restore directory DIR; print the milliseconds it took since START_MS, or
# fail.  Usage: gl_wait_listed DIR POINT START_MS LIMIT
gl_wait_listed() {
  local dir=$1 point=$2 start=$3 limit=$4
  while :; do
    if ls "$dir" 2>/dev/null | grep -qxF "$point"; then
      echo $(( $(gl_now_ms) - start ))
      return 0
    fi
    (( $(gl_now_ms) - start > limit * 1000 )) && return 1
    sleep 0.05
  done
}

# Print the md5 of file F (or of stdin with -).
gl_md5() { md5sum < "$1" | cut -d' ' -f1; }

# True when GlusterFS can run here (root, /dev/fuse, the programs); else
# print the reason on stderr and return 1 (for tests with a part without it).
gl_available() {
  local why=""
  [ "$(id -u)" -eq 0 ] || why="not root"
  [ -c /dev/fuse ] || why="no /dev/fuse"
  PATH=$PATH:/usr/sbin
  command -v glusterfsd >/dev/null 2>&1 && command -v glusterfs >/dev/null 2>&1 \
    || why="glusterfsd/glusterfs not installed"
  if [ -n "$why" ]; then
    qb_log "GlusterFS part skipped: $why"
    return 1
  fi
  mkdir -p "$T/gl"
}
