# qmpbackupfs test library: temporary directories, QEMU VMs without a guest OS,
# guest writes through qemu-io, disk captures.  Source it from a bash test:
#
#   . "$QB_SOURCE_DIR/tests/lib/vm.sh"
#   qb_need qemu-img qemu-system-x86_64
#   qb_tmpdir                       # sets $T, cleans up on exit
#   qb_vm_start vm1 drive0:qcow2:64M data1:raw:32M
#   qb_guest_write vm1 drive0 "write -P 0x33 1M 1M"
#   qb_capture vm1 drive0 "$T/expect.raw"
#
# Layout under $T: sockets/NAME.qmp (the product's monitor), NAME.test.qmp (the
# test's private monitor), img/NAME-DISK.FMT (disk images), vm/NAME.* (pid, spec).
# Programs: $QMPCMD, $QMPBACKUP, $QMPREBASE, $QMPBACKUPFS (defaults below from
# $QB_BUILD_DIR).  Every function is `set -euo pipefail` friendly: it returns
# non-zero (or exits, for qb_need) with a message on stderr when something fails.

: "${QB_BUILD_DIR:=}"
if [ -n "$QB_BUILD_DIR" ]; then
  : "${QMPCMD:=$QB_BUILD_DIR/tests/tools/qmpcmd}"
  : "${QMPBACKUP:=$QB_BUILD_DIR/tools/qmpbackup}"
  : "${QMPREBASE:=$QB_BUILD_DIR/tools/qmprebase}"
  : "${QMPBACKUPFS:=$QB_BUILD_DIR/fs/qmpbackupfs}"
fi
: "${QMPCMD:=qmpcmd}" "${QMPBACKUP:=qmpbackup}" "${QMPREBASE:=qmprebase}"
: "${QMPBACKUPFS:=qmpbackupfs}"
: "${QB_QEMU:=qemu-system-x86_64}"
export QMPCMD QMPBACKUP QMPREBASE QMPBACKUPFS

# Print a message on stderr, prefixed with the test's name.
qb_log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# Print a message on stderr and exit 1.
qb_die() { qb_log "FAIL: $*"; exit 1; }

# Exit 77 (skip) with "SKIP: TOOL not found" unless every TOOL (name or path) is runnable.
qb_need() {
  local t
  for t in "$@"; do
    if ! command -v "$t" >/dev/null 2>&1; then
      echo "SKIP: $t not found"
      exit 77
    fi
  done
}

# Exit 77 with the reason unless we run as root (mounts, tmpfs, chattr need it).
qb_need_root() {
  [ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root"; exit 77; }
}

# Run CMD... at exit (after the tests's own commands, before $T is removed).
qb_on_exit() { _qb_exit_cmds+=("$*"); }

# Register mount point DIR: it is unmounted (fusermount3 -u, then umount -l) at exit.
qb_register_mount() { _qb_mounts+=("$1"); }

# Register PID: it is killed (TERM, then KILL after 5 s) at exit.
qb_register_pid() { _qb_pids+=("$1"); }

_qb_exit_cmds=()
_qb_mounts=()
_qb_pids=()
_qb_prev_trap=""

# The EXIT trap: registered commands, unmounts, kills, rm -rf $T, then the earlier trap.
_qb_cleanup() {
  local rc=$? c m p i
  set +e
  for c in "${_qb_exit_cmds[@]}"; do eval "$c"; done
  for m in "${_qb_mounts[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u "$m" 2>/dev/null || umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    fi
  done
  for p in "${_qb_pids[@]}"; do
    _qb_alive "$p" || continue
    kill "$p" 2>/dev/null || continue
    for ((i = 0; i < 50; i++)); do _qb_alive "$p" || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  if [ -n "${T:-}" ] && [ -d "$T" ]; then
    command -v chattr >/dev/null 2>&1 && chattr -R -i "$T" 2>/dev/null
    chmod -R u+rwx "$T" 2>/dev/null
    if [ -n "${QB_KEEP:-}" ]; then
      qb_log "kept $T"
    else
      rm -rf "$T"
    fi
  fi
  [ -n "$_qb_prev_trap" ] && eval "$_qb_prev_trap"
  return $rc
}

# Make a temporary directory $T (with sockets/ img/ vm/) and clean it up at exit,
# chaining any EXIT trap set before.  QB_KEEP=1 keeps the directory.
qb_tmpdir() {
  T=$(mktemp -d "${TMPDIR:-/tmp}/qb-test.XXXXXX")
  mkdir -p "$T/sockets" "$T/img" "$T/vm"
  local prev
  prev=$(trap -p EXIT)
  if [ -n "$prev" ]; then
    prev=${prev#trap -- \'}
    _qb_prev_trap=${prev%\' EXIT}
  fi
  trap _qb_cleanup EXIT
  export T
}

# Print SIZE (e.g. 64M, 1G, 4096) in bytes.
qb_bytes() {
  local s=$1 n
  case $s in
    *[kK]) n=$(( ${s%?} * 1024 )) ;;
    *M) n=$(( ${s%?} * 1024 * 1024 )) ;;
    *G) n=$(( ${s%?} * 1024 * 1024 * 1024 )) ;;
    *) n=$s ;;
  esac
  echo "$n"
}

# Print the image file of disk DISK of VM NAME.
qb_vm_image() {
  local f
  f=$(awk -v d="$2" '$1 == d { print $4 }' "$T/vm/$1.disks")
  [ -n "$f" ] || { qb_log "no disk $2 in VM $1"; return 1; }
  echo "$f"
}

# Print the virtual size in bytes of disk DISK of VM NAME.
qb_vm_disk_size() {
  local s
  s=$(awk -v d="$2" '$1 == d { print $3 }' "$T/vm/$1.disks")
  [ -n "$s" ] || { qb_log "no disk $2 in VM $1"; return 1; }
  echo "$s"
}

# Print the names of the disks of VM NAME, one per line.
qb_vm_disks() { awk '{ print $1 }' "$T/vm/$1.disks"; }

# Print the product's QMP socket of VM NAME.
qb_vm_socket() { echo "$T/sockets/$1.qmp"; }

# Start VM NAME, paused (-S), with disks DISKSPEC ("id:qcow2|raw:SIZE") created
# under $T/img (kept if they exist); --blockdev attaches them with -blockdev +
# -device id=DISK (node name DISK-node) instead of -drive id=DISK.
qb_vm_start() {
  local name=$1 blockdev=0 spec id fmt size img
  shift
  [ -n "${T:-}" ] || { qb_log "qb_vm_start: call qb_tmpdir first"; return 1; }
  qb_need "$QB_QEMU" qemu-img
  if [ "${1:-}" = "--blockdev" ]; then blockdev=1; shift; fi
  : > "$T/vm/$name.disks"
  echo "$blockdev" > "$T/vm/$name.blockdev"
  for spec in "$@"; do
    IFS=: read -r id fmt size <<< "$spec"
    [ -n "$id" ] && [ -n "$fmt" ] && [ -n "$size" ] || {
      qb_log "bad disk spec '$spec' (want id:qcow2|raw:SIZE)"; return 1; }
    img="$T/img/$name-$id.$fmt"
    [ -e "$img" ] || qemu-img create -q -f "$fmt" "$img" "$size" >/dev/null
    echo "$id $fmt $(qb_bytes "$size") $img" >> "$T/vm/$name.disks"
  done
  _qb_vm_launch "$name"
}

# Launch the QEMU process of VM NAME from its recorded disks (used by start/restart).
_qb_vm_launch() {
  local name=$1 blockdev id fmt size img args=() i pid
  blockdev=$(cat "$T/vm/$name.blockdev")
  while read -r id fmt size img; do
    if [ "$blockdev" = 1 ]; then
      args+=(-blockdev "driver=$fmt,node-name=$id-node,discard=unmap,cache.direct=off,cache.no-flush=on,file.driver=file,file.filename=$img"
             -device "virtio-blk-pci,drive=$id-node,id=$id,share-rw=on")
    else
      args+=(-drive "file=$img,format=$fmt,if=virtio,id=$id,discard=unmap,cache=unsafe")
    fi
  done < "$T/vm/$name.disks"
  rm -f "$T/sockets/$name.qmp" "$T/$name.test.qmp" "$T/vm/$name.pid"
  # Not daemonized: qemu-io (HMP) prints its results and errors on QEMU's stdout,
  # which goes line-buffered to vm/NAME.out where qb_guest_write reads them.
  stdbuf -oL "$QB_QEMU" -machine q35,accel=kvm:tcg -nodefaults -display none -S -m 128 \
    -name "$name" "${args[@]}" \
    -qmp "unix:$T/sockets/$name.qmp,server=on,wait=off" \
    -qmp "unix:$T/$name.test.qmp,server=on,wait=off" \
    </dev/null >>"$T/vm/$name.out" 2>&1 &
  pid=$!
  echo "$pid" > "$T/vm/$name.pid"
  qb_register_pid "$pid"
  for ((i = 0; i < 100; i++)); do
    [ -S "$T/sockets/$name.qmp" ] && [ -S "$T/$name.test.qmp" ] && return 0
    _qb_alive "$pid" || break
    sleep 0.1
  done
  qb_log "QMP sockets of $name did not appear:"
  tail -n 20 "$T/vm/$name.out" >&2
  return 1
}

# Print the pid of VM NAME's QEMU.
qb_vm_pid() { cat "$T/vm/$1.pid"; }

# True if process PID exists and is not a zombie.
_qb_alive() {
  local st
  st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

# Wait (bounded, 10 s) until process PID is gone (reaping it); fail if it is not.
_qb_wait_gone() {
  local i
  for ((i = 0; i < 100; i++)); do
    if ! _qb_alive "$1"; then wait "$1" 2>/dev/null || true; return 0; fi
    sleep 0.1
  done
  qb_log "process $1 did not exit"
  return 1
}

# Stop VM NAME cleanly: `quit` through the test monitor, wait for the process to end.
qb_vm_stop() {
  local pid
  pid=$(qb_vm_pid "$1")
  "$QMPCMD" "$T/$1.test.qmp" quit >/dev/null 2>&1 || true
  _qb_wait_gone "$pid"
}

# Kill VM NAME with SIGKILL (a crash: non-persistent state is lost) and wait for it.
qb_vm_kill() {
  local pid
  pid=$(qb_vm_pid "$1")
  kill -9 "$pid" 2>/dev/null || true
  _qb_wait_gone "$pid"
}

# Stop VM NAME (if running) and start it again with the same disks and sockets.
qb_vm_restart() {
  local pid
  pid=$(qb_vm_pid "$1")
  if _qb_alive "$pid"; then qb_vm_stop "$1"; fi
  _qb_vm_launch "$1"
}

# Run QMP command CMD [JSON-ARGS] on VM NAME's private monitor; prints the return JSON.
qb_qmp() {
  local name=$1
  shift
  "$QMPCMD" "$T/$name.test.qmp" "$@"
}

# Run HMP command line CMDLINE on VM NAME's private monitor; fails on error output.
qb_hmp() { "$QMPCMD" "$T/$1.test.qmp" --hmp "$2"; }

# Run qemu-io command CMD (e.g. "write -P 0x33 1M 1M") on disk DISK of VM NAME as
# a guest write; fails on an HMP error or a qemu-io error (read from QEMU's stdout).
qb_guest_write() {
  local name=$1 disk=$2 cmd=$3 target out before new
  if [ "$(cat "$T/vm/$name.blockdev")" = 1 ]; then
    target=$disk-node      # the device has share-rw=on, so a node write is allowed
  else
    target=$disk
  fi
  before=$(stat -c %s "$T/vm/$name.out")
  out=$(qb_hmp "$name" "qemu-io $target \"$cmd\"" 2>&1) || {
    qb_log "guest write '$cmd' on $name/$disk failed: $out"; return 1; }
  new=$(tail -c +$((before + 1)) "$T/vm/$name.out")
  case $new in
    *failed*|*rror*|*"out of bounds"*|*"Invalid"*|*"invalid"*)
      qb_log "guest write '$cmd' on $name/$disk failed: $new"; return 1 ;;
  esac
}

# N writes on disk DISK of VM NAME, deterministic from SEED: patterns, zeroes
# (write -z) and discards of 4 KiB..1 MiB at 4 KiB-aligned offsets within the disk.
qb_guest_random_writes() {
  local name=$1 disk=$2 n=$3 seed=$4 size blocks i off len kind pat
  size=$(qb_vm_disk_size "$name" "$disk")
  blocks=$((size / 4096))
  RANDOM=$seed
  for ((i = 0; i < n; i++)); do
    len=$(( (RANDOM % 256 + 1) * 4096 ))
    off=$(( ((RANDOM * 32768 + RANDOM) % blocks) * 4096 ))
    (( off + len > size )) && len=$(( size - off ))
    kind=$((RANDOM % 10))
    pat=$(( RANDOM % 255 + 1 ))
    if (( kind < 6 )); then
      qb_guest_write "$name" "$disk" "write -P $pat $off $len" || return 1
    elif (( kind < 8 )); then
      qb_guest_write "$name" "$disk" "write -z $off $len" || return 1
    else
      qb_guest_write "$name" "$disk" "discard $off $len" || return 1
    fi
  done
}

# Write disk DISK of VM NAME as it is now to raw file OUT: `stop` (if running),
# qemu-img convert -U, `cont` only if it was running.
qb_capture() {
  local name=$1 disk=$2 out=$3 img fmt running
  img=$(qb_vm_image "$name" "$disk")
  fmt=$(awk -v d="$disk" '$1 == d { print $2 }' "$T/vm/$name.disks")
  running=$(qb_qmp "$name" query-status)
  case $running in
    *'"running":true'*) running=1; qb_qmp "$name" stop >/dev/null ;;
    *) running=0 ;;
  esac
  # Flush what QEMU caches (cache=unsafe) so the image file holds the guest's view.
  qb_guest_write "$name" "$disk" flush
  rm -f "$out"
  qemu-img convert -U -f "$fmt" -O raw "$img" "$out"
  [ "$running" = 1 ] && qb_qmp "$name" cont >/dev/null
  return 0
}

# Resize disk DISK of VM NAME to SIZE through QMP block_resize (and record the new size).
qb_vm_resize() {
  local name=$1 disk=$2 bytes arg
  bytes=$(qb_bytes "$3")
  if [ "$(cat "$T/vm/$name.blockdev")" = 1 ]; then
    arg="{\"node-name\":\"$disk-node\",\"size\":$bytes}"
  else
    arg="{\"device\":\"$disk\",\"size\":$bytes}"
  fi
  qb_qmp "$name" block_resize "$arg" >/dev/null
  awk -v d="$disk" -v s="$bytes" '$1 == d { $3 = s } { print }' "$T/vm/$name.disks" \
    > "$T/vm/$name.disks.new"
  mv "$T/vm/$name.disks.new" "$T/vm/$name.disks"
}

# Compare files A and B byte for byte; on mismatch name both and the first difference.
qb_cmp() {
  local out
  if ! out=$(cmp "$1" "$2" 2>&1); then
    qb_log "MISMATCH: '$1' and '$2' differ: $out"
    return 1
  fi
}

# Apply qemu-io command CMD to the raw reference REF and to qcow2 layer LAYER.
qb_seed_write() {
  qemu-io -f raw -c "$3" "$1" >/dev/null
  qemu-io -f qcow2 -c "$3" "$2" >/dev/null
}

# Start a chain the way the Python qmpbackup names it, in DIR:
# FULL-EPOCH-NAME.qcow2 of SIZE bytes with data at 0-8M, 16-20M and 31-32M,
# and its raw reference REF (created here).
qb_seed_full() {
  local dir=$1 epoch=$2 name=$3 size=$4 ref=$5 full
  full=$dir/FULL-$epoch-$name.qcow2
  mkdir -p "$dir"
  truncate -s "$size" "$ref"
  qemu-img create -q -f qcow2 "$full" "$size"
  qb_seed_write "$ref" "$full" "write -P 0x11 0 8M"
  qb_seed_write "$ref" "$full" "write -P 0x12 16M 4M"
  qb_seed_write "$ref" "$full" "write -P 0x13 31M 1M"
}
