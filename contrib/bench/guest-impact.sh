#!/usr/bin/env bash
# What a running backup costs the guest: guest write latency (p50, p99) and
# write throughput while nothing runs, during a full and during an inc taken
# by qmpbackup without fleecing (the default) and with fleecing (--fleece-dir
# on local disk; a row whose backup failed says "failed").  The store is on
# local disk, the jobs speed-limited (--speed, default 0: none), and, when
# glusterfsd is installed, on a GlusterFS volume over loopback.  The backup
# time of a fleecing row includes the second job that copies what the guest
# changed meanwhile from the fleece image (see engine/fleece.c).
#
#   sudo contrib/bench/guest-impact.sh [--size MiB] [--speed BYTES] [--no-gluster] [--rows FILE]
#
# --rows FILE also writes the figures as records for run.sh's impact section:
# "cpu PERCENT", "idle - - - - P50 P99 MB/S N", "row STORE LEVEL FLEECE SECS
# P50 P99 MB/S N" (P50 "failed" when the backup failed), "skip STORE REASON".
#
# The VM runs no guest OS and stays paused (-S: it costs no CPU, under KVM
# or TCG, and the block layer works as when it runs); each guest write is a
# 64 KiB qemu-io write at a random 64 KiB-aligned offset, issued through HMP
# on a private QMP monitor and timed as one round trip (so the idle figure
# includes the monitor's own cost).  The writes run back to back for as long
# as the backup runs (the idle run: a fixed count of 3,000, so its p99 is not
# one stray write).  A job speed limit slows the job only: the
# copy-before-write of a guest write goes to the store at the store's speed
# without fleecing whatever the limit.  Not a test: figures vary with the
# machine's load.
set -euo pipefail
QB_SOURCE_DIR=${QB_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
QB_BUILD_DIR=${QB_BUILD_DIR:-$QB_SOURCE_DIR/build}
export QB_BUILD_DIR
QMPBACKUP=${QMPBACKUP:-$QB_BUILD_DIR/tools/qmpbackup}
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
SIZE_MB=1024
SPEED=0
GLUSTER=1
ROWS_OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --size) SIZE_MB=$2; shift 2 ;;
    --speed) SPEED=$2; shift 2 ;;
    --no-gluster) GLUSTER=0; shift ;;
    --rows) ROWS_OUT=$(realpath -m "$2"); shift 2 ;;
    *) echo "usage: $0 [--size MiB] [--speed BYTES] [--no-gluster] [--rows FILE]" >&2; exit 2 ;;
  esac
done
qb_need qemu-img qemu-system-x86_64 python3 "$QMPBACKUP" "$QMPCMD"
qb_tmpdir
# Append one record to the --rows file (if any).
record() { if [ -n "$ROWS_OUT" ]; then printf '%s\n' "$*" >> "$ROWS_OUT"; fi; }
[ -n "$ROWS_OUT" ] && : > "$ROWS_OUT"
if [ "$GLUSTER" = 0 ]; then
  record "skip gluster --no-gluster given"
elif ! command -v glusterfsd >/dev/null || ! command -v glusterfs >/dev/null; then
  GLUSTER=0
  record "skip gluster glusterfsd/glusterfs not installed"
fi

# The timed writer: WRITER SOCKET DEVICE DISK_BYTES COUNT|PID OUT -> "p50 p99 MB/s n" (ms).
cat > "$T/writer.py" <<'EOF'
import json, os, random, socket, sys, time
sock, dev, size, until, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
s = socket.socket(socket.AF_UNIX); s.connect(sock); f = s.makefile("rwb", buffering=0)
def cmd(c, a=None):
    m = {"execute": c}
    if a is not None: m["arguments"] = a
    f.write(json.dumps(m).encode() + b"\n")
    while True:
        r = json.loads(f.readline())
        if "return" in r: return r["return"]
        if "error" in r: raise SystemExit(str(r["error"]))
json.loads(f.readline()); cmd("qmp_capabilities")
rnd = random.Random(1); lat = []; blocks = size // 65536
def alive(pid):
    try: os.kill(pid, 0); return True
    except OSError: return False
count = int(until[1:]) if until.startswith("n") else None
pid = None if count else int(until)
t0 = time.monotonic()
while (count is not None and len(lat) < count) or (pid is not None and alive(pid)):
    off = rnd.randrange(blocks) * 65536
    a = time.monotonic()
    cmd("human-monitor-command", {"command-line": 'qemu-io %s "write -P 0x%02x %d 64k"' % (dev, rnd.randrange(1, 255), off)})
    lat.append((time.monotonic() - a) * 1000)
el = time.monotonic() - t0
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
with open(out, "w") as o:
    o.write("%.2f %.2f %.1f %d\n" % (q(0.5), q(0.99), len(lat) * 65536 / el / 1e6 if el else 0, len(lat)))
EOF

GL_PIDS=()
# Start a GlusterFS volume (one brick, server and client on loopback) mounted on DIR.
gluster_up() {
  local dir=$1 port=24099
  mkdir -p "$T/brick" "$dir"
  cat > "$T/server.vol" <<EOF
volume posix
  type storage/posix
  option directory $T/brick
end-volume
volume locks
  type features/locks
  subvolumes posix
end-volume
volume iot
  type performance/io-threads
  subvolumes locks
end-volume
volume server
  type protocol/server
  option transport-type tcp
  option transport.socket.bind-address 127.0.0.1
  option transport.socket.listen-port $port
  option auth.addr.iot.allow 127.0.0.1
  subvolumes iot
end-volume
EOF
  cat > "$T/client.vol" <<EOF
volume client
  type protocol/client
  option transport-type tcp
  option remote-host 127.0.0.1
  option remote-port $port
  option remote-subvolume iot
end-volume
EOF
  glusterfsd -f "$T/server.vol" -l "$T/glusterfsd.log" -p "$T/glusterfsd.pid" || return 1
  GL_PIDS+=("$(cat "$T/glusterfsd.pid")")
  sleep 0.5
  glusterfs -f "$T/client.vol" -l "$T/glusterfs.log" -p "$T/glusterfs.pid" "$dir" || return 1
  GL_PIDS+=("$(cat "$T/glusterfs.pid")")
  qb_on_exit gluster_down "$dir"
  for ((i = 0; i < 100; i++)); do
    awk -v m="$dir" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo && return 0
    sleep 0.1
  done
  return 1
}
# Unmount DIR and stop the Gluster processes we started (by pid).
gluster_down() {
  umount "$1" 2>/dev/null || true
  for p in "${GL_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}

qb_vm_start vm1 drive0:qcow2:${SIZE_MB}M
DISK=$((SIZE_MB << 20))
note() { printf '  .. %s\n' "$*" >&2; }
# What the (paused) VM itself costs, % of a core over 2 s: the figures below
# measure the backup, not a guest spinning in firmware.
vpid=$(qb_vm_pid vm1)
c0=$(awk '{ print $14 + $15 }' "/proc/$vpid/stat") a=$EPOCHREALTIME
sleep 2
c1=$(awk '{ print $14 + $15 }' "/proc/$vpid/stat") b=$EPOCHREALTIME
VMCPU=$(awk -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v a="${a/,/.}" -v b="${b/,/.}" \
  'BEGIN { printf "%.2f", 100 * c / hz / (b - a) }')
record "cpu $VMCPU"
note "filling $((SIZE_MB * 3 / 4)) MiB of the ${SIZE_MB} MiB disk"
qb_guest_write vm1 drive0 "write -P 0x11 0 $((SIZE_MB * 3 / 4))M"

# Run the writer against a fixed count or until PID ends; print its figures.
measure() { python3 "$T/writer.py" "$T/vm1.test.qmp" drive0 "$DISK" "$1" "$T/m.out"; cat "$T/m.out"; }

ROWS=()
# One row: STORE-NAME STOREDIR LEVEL FLEECE(off|on): backup in the background, writer meanwhile.
run_one() {
  local sname=$1 sdir=$2 level=$3 fl=$4 args=() t0 t1 pid fig rc=0
  if [ "$fl" = off ]; then args=(--fleece-dir off); else mkdir -p "$T/fleece"; args=(--fleece-dir "$T/fleece"); fi
  [ "$SPEED" != 0 ] && args+=(--speed "$SPEED")
  if [ "$level" = inc ]; then
    # Something to copy: half of the data rewritten since the last point.
    qb_guest_write vm1 drive0 "write -P 0x22 0 $((SIZE_MB * 3 / 8))M"
  fi
  t0=$EPOCHREALTIME
  "$QMPBACKUP" --socket "$(qb_vm_socket vm1)" backup --level "$level" --target "$sdir/vm1" \
    --quiet "${args[@]}" > "$T/b.out" 2>&1 &
  pid=$!
  qb_register_pid "$pid"
  fig=$(measure "$pid")
  wait "$pid" || rc=$?
  t1=$EPOCHREALTIME
  [ $rc = 0 ] || { note "backup failed: $(cat "$T/b.out")"; fig="failed"; }
  ROWS+=("$sname|$level|$fl|$fig|$(awk -v a="${t0/,/.}" -v b="${t1/,/.}" 'BEGIN { printf "%.1f", b - a }')")
  record "row $sname $level $fl ${ROWS[-1]##*|} $fig"
}

note "idle"
read -r ip50 ip99 ithr in < <(measure n3000)
record "idle - - - - $ip50 $ip99 $ithr $in"
stores=("local $T/store")
if [ "$GLUSTER" = 1 ]; then
  if gluster_up "$T/gl"; then stores+=("gluster $T/gl/store"); mkdir -p "$T/gl/store"
  else note "GlusterFS did not come up: local store only"; record "skip gluster the GlusterFS volume did not come up"; fi
fi
for s in "${stores[@]}"; do
  read -r sname sdir <<< "$s"
  mkdir -p "$sdir"
  for fl in off on; do
    note "$sname full, fleecing $fl"; run_one "$sname" "$sdir" full "$fl"
    note "$sname inc, fleecing $fl"; run_one "$sname" "$sdir" inc "$fl"
  done
done

printf '\nGuest 64 KiB random writes (HMP qemu-io round trips), disk %s MiB (3/4 written), job speed %s, paused VM %s%% of a core\n\n' "$SIZE_MB" "$SPEED" "$VMCPU"
printf '| store | backup | fleecing | p50 ms | p99 ms | MB/s | writes | p99 / idle p99 | backup s |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
printf '| - | none (idle) | - | %s | %s | %s | %s | 1.0x | - |\n' "$ip50" "$ip99" "$ithr" "$in"
for r in "${ROWS[@]}"; do
  IFS='|' read -r sname level fl fig secs <<< "$r"
  if [ "$fig" = failed ]; then
    printf '| %s | %s | %s | failed | | | | | %s |\n' "$sname" "$level" "$fl" "$secs"; continue
  fi
  read -r p50 p99 thr n <<< "$fig"
  printf '| %s | %s | %s | %s | %s | %s | %s | %sx | %s |\n' "$sname" "$level" "$fl" "$p50" "$p99" \
    "$thr" "$n" "$(awk -v a="$p99" -v b="$ip99" 'BEGIN { printf "%.1f", a / b }')" "$secs"
done
