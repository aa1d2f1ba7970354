#!/usr/bin/env bash
# qmpbackupfs benchmark of a big store: VMS VMs x POINTS restore points, one
# disk each, every VM one chain (a FULL and POINTS-1 INCs, so the newest point
# reads through POINTS layers).  The layers are hard links of two tiny qcow2
# files named like the Python qmpbackup's (FULL-<epoch>-drive0.qcow2, chain
# order from the names), so the store costs seconds to build and little disk.
# Measures: time to mount, stat of every restore image right after it (each
# restore/ folder listed, each image looked up), then of every name but the
# files/ view (restore/, points/<T>/ and chain/: four names per point), the first
# 4 KiB read of the newest point (the cluster map of POINTS layers is built)
# and of the oldest, the daemon's RSS after each; against the targets.
#
# Then, on a fresh mount, `ls -R` of the whole tree including every files/
# folder (each point's partitions are read); --lsr-vms N limits that row to
# the first N VMs (a subtree walk of vm0..vmN-1), 0 leaves it out.
#
# With --base DIR, the daemon of another build (DIR/fs/qmpbackupfs, e.g. of
# the previous commit) is measured in the same runs, on the same store, the
# two taking turns; its figures are the "peer" column.
#
# Usage: contrib/bench/scale.sh [--vms N] [--points N] [--runs N] [--lsr-vms N]
#                               [--base DIR] [--build DIR] [--out FILE]
#   defaults: 200 VMs x 1000 points, 3 runs (a fresh mount each), ls -R of all VMs
# Needs root (FUSE), qemu-img, qemu-io, fusermount3.  Not part of `meson test`.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$SRC/build-bench
VMS=200 POINTS=1000 RUNS=3 OUT= LSR_VMS= BASE=
while [ $# -gt 0 ]; do
  case $1 in
    --vms) VMS=$2; shift ;;
    --points) POINTS=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --lsr-vms) LSR_VMS=$2; shift ;;
    --base) BASE=$(realpath "$2")/fs/qmpbackupfs; shift ;;
    --build) BUILD=$(realpath "$2"); shift ;;
    --out) OUT=$(realpath -m "$2"); shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scale.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
LSR_VMS=${LSR_VMS:-$VMS}; ((LSR_VMS <= VMS)) || LSR_VMS=$VMS
((VMS >= 1 && POINTS >= 2 && RUNS >= 1)) || { echo "scale.sh: need --vms >= 1, --points >= 2, --runs >= 1" >&2; exit 2; }

export QB_BUILD_DIR=$BUILD
. "$SRC/tests/lib/vm.sh"
. "$SRC/contrib/bench/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "scale.sh: needs root (FUSE mounts)" >&2; exit 2; }
[ -z "$BASE" ] || [ -x "$BASE" ] || { echo "scale.sh: $BASE missing" >&2; exit 2; }
[ -x "$QMPBACKUPFS" ] || { echo "scale.sh: $QMPBACKUPFS missing: meson setup build-bench --buildtype=release && ninja -C build-bench" >&2; exit 2; }
qb_need qemu-img qemu-io fusermount3

[ -n "$OUT" ] && : > "$OUT"
qb_tmpdir
qb_on_exit bench_cleanup
trap 'exit 130' INT TERM HUP
S=$T/store MNT=$T/mnt
mkdir -p "$S" "$MNT"
say "# qmpbackupfs scale benchmark ($(date -u +%Y-%m-%dT%H:%M:%SZ)): $VMS VMs x $POINTS points, chains of $POINTS, medians of $RUNS runs"
say "# commit $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs, $(uname -r)"

a=$(now)
qemu-img create -q -f qcow2 -o compat=1.1 "$T/full.qcow2" 16M
qio "$T/full.qcow2" "write -P 1 0 1M"
qemu-img create -q -f qcow2 -o compat=1.1 "$T/inc.qcow2" 16M
qio "$T/inc.qcow2" "write -P 2 64k 64k"
# Groups of GROUP VMs share one FULL and one INC inode (ext4 allows 65,000
# links to a file).
GROUP=$((60000 / POINTS)); ((GROUP >= 1)) || GROUP=1
for ((v = 0; v < VMS; v++)); do
  if ((v % GROUP == 0)); then
    g=$T/tmpl$v
    mkdir -p "$g/drive0"
    cp "$T/full.qcow2" "$g/full.qcow2"
    cp "$T/inc.qcow2" "$g/inc.qcow2"
    for ((i = 0; i < POINTS; i++)); do
      e=$((1500000000 + i * 3600))
      if ((i == 0)); then ln "$g/full.qcow2" "$g/drive0/FULL-$e-drive0.qcow2"
      else ln "$g/inc.qcow2" "$g/drive0/INC-$e-drive0.qcow2"; fi
    done
  fi
  mkdir "$S/vm$v"
  cp -al "$g/drive0" "$S/vm$v/drive0"
done
sync
note "built $((VMS * POINTS)) layers in $(printf '%.1f' "$(tdiff "$a" "$(now)")") s"

rss() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$FS_PID/status"; }
# Seconds for the first 4 KiB read of restore image IMG (opens its chain).
first_read() { timeit dd if="$1" of=/dev/null bs=4k count=1 status=none; }

# measure P: one run of every figure with the daemon $QMPBACKUPFS, appended
# to the arrays P_SM, P_SL, ... (P: "O" ours, "B" the base build).
measure() {
  local p=$1 d newest oldest a v dirs
  fs_mount "$S" "$MNT"
  eval "${p}_SM+=(\"\$MOUNT_SECS\")"
  # Right after mounting, nothing cached: the size and blocks of every
  # restore image (each restore/ folder listed, each image looked up once).
  a=$(now)
  NIMG=$(find "$MNT"/*/*/restore -name '*Z.img' -printf '%s %b\n' | wc -l)
  eval "${p}_SS+=(\"$(tdiff "$a" "$(now)")\")"
  eval "${p}_R1+=(\"$(rss)\")"
  # Then every name of the tree but files/ (the row below walks it), each
  # with its attributes: restore/, points/<T>/ (a folder and an image per
  # point) and chain/ (a file per layer): four names per point.
  eval "${p}_SL+=(\"$(timeit find "$MNT" -path '*/files' -prune -o -printf '%s %b\n')\")"
  d=$MNT/vm$((run % VMS))/drive0/restore
  newest=$(ls "$d" | grep -E 'Z(-[0-9]+)?\.img$' | sort | tail -n 1)
  oldest=$(ls "$d" | grep -E 'Z(-[0-9]+)?\.img$' | sort | sed -n 1p)   # all read: no SIGPIPE
  eval "${p}_SN+=(\"$(first_read "$d/$newest")\")"
  eval "${p}_SO+=(\"$(first_read "$d/$oldest")\")"
  if [ "$run" = 0 ]; then
    # The newest point reads the INC's cluster over the FULL's data.
    want=$(printf '\002%.0s' $(seq 1 16) | od -An -tx1)
    got=$(dd if="$d/$newest" bs=16 count=1 skip=$((65536 / 16)) status=none | od -An -tx1)
    [ "$got" = "$want" ] || { note "WRONG BYTES in the newest point of a $POINTS-deep chain"; exit 1; }
  fi
  eval "${p}_R2+=(\"$(rss)\")"
  fs_umount "$MNT"
  if ((LSR_VMS > 0)); then
    # A fresh mount: ls -R into every files/<T>/ folder (the partitions of
    # every point are read), of all VMs or of the first LSR_VMS.
    fs_mount "$S" "$MNT"
    if ((LSR_VMS == VMS)); then a=$(timeit ls -R "$MNT")
    else
      dirs=()
      for ((v = 0; v < LSR_VMS; v++)); do dirs+=("$MNT/vm$v"); done
      a=$(timeit ls -R "${dirs[@]}")
    fi
    eval "${p}_LR+=(\"$a\")"
    eval "${p}_R3+=(\"$(rss)\")"
    fs_umount "$MNT"
  fi
}

for p in O B; do
  for f in SM SL SS SN SO R1 R2 LR R3; do eval "${p}_$f=()"; done
done
NIMG=0 OURS=$QMPBACKUPFS
for ((run = 0; run < RUNS; run++)); do
  # with --base, the two builds take turns (first in odd runs: the base)
  if [ -n "$BASE" ] && ((run % 2 == 1)); then QMPBACKUPFS=$BASE; measure B; fi
  QMPBACKUPFS=$OURS; measure O
  if [ -n "$BASE" ] && ((run % 2 == 0)); then QMPBACKUPFS=$BASE; measure B; fi
done
QMPBACKUPFS=$OURS
[ "$NIMG" = $((VMS * POINTS)) ] || note "WARNING: $NIMG restore images seen, $((VMS * POINTS)) expected"
# row LABEL ARRAY UNIT CHECK TARGET: the medians of ours and of the base.
row() {
  local o b
  eval "o=\$(median \"\${O_$2[@]}\")"
  b=-
  if [ -n "$BASE" ]; then eval "b=\$(median \"\${B_$2[@]}\")"; fi
  fig "$1" "$o" "$b" "$3" lo "$4" "$5"
}
row "scale: mount, $VMS VMs x $POINTS points (s)" SM s "o < 0.1" "< 0.1 s"
row "scale: stat of all $NIMG restore images, fresh mount (s)" SS s "o < 10" "< 10 s"
row "scale: daemon RSS after the stat walk (MiB)" R1 MiB "o < 128" "< 128 MiB"
row "scale: stat of every name but files/ ($((VMS * POINTS * 4)) names) (s)" SL s "" ""
row "scale: first read, newest point ($POINTS layers) (s)" SN s "o < 1" "< 1 s"
row "scale: first read, oldest point (1 layer) (s)" SO s "" ""
row "scale: daemon RSS after the reads (MiB)" R2 MiB "o < 128" "< 128 MiB"
if ((LSR_VMS > 0)); then
  row "scale: ls -R with files/, $LSR_VMS VMs x $POINTS points (s)" LR s "" ""
  row "scale: daemon RSS after ls -R with files/ (MiB)" R3 MiB "o < 128" "< 128 MiB"
fi
fig_table
