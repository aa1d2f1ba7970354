#!/usr/bin/env bash
# qmpbackupfs benchmark of a big store: VMS VMs x POINTS restore points, one
# disk each, every VM one chain (a FULL and POINTS-1 INCs, so the newest point
# reads through POINTS layers).  The layers are hard links of two tiny qcow2
# files named like the Python qmpbackup's (FULL-<epoch>-drive0.qcow2, chain
# order from the names), so the store costs seconds to build and little disk.
# Measures: time to mount, a listing of every name (find, as `ls -R` but not
# into the files/ view), stat of every restore image, the first
# 4 KiB read of the newest point (the cluster map of POINTS layers is built)
# and of the oldest, the daemon's RSS after each; against the targets.
#
# Then, on a fresh mount, `ls -R` of the whole tree including every files/
# folder (each point's partitions are read); --lsr-vms N limits that row to
# the first N VMs (a subtree walk of vm0..vmN-1), 0 leaves it out.
#
# Usage: contrib/bench/scale.sh [--vms N] [--points N] [--runs N] [--lsr-vms N]
#                               [--build DIR] [--out FILE]
#   defaults: 200 VMs x 1000 points, 3 runs (a fresh mount each), ls -R of all VMs
# Needs root (FUSE), qemu-img, qemu-io, fusermount3.  Not part of `meson test`.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$SRC/build-bench
VMS=200 POINTS=1000 RUNS=3 OUT= LSR_VMS=
while [ $# -gt 0 ]; do
  case $1 in
    --vms) VMS=$2; shift ;;
    --points) POINTS=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --lsr-vms) LSR_VMS=$2; shift ;;
    --build) BUILD=$(realpath "$2"); shift ;;
    --out) OUT=$(realpath -m "$2"); shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

SM=() SL=() SS=() SN=() SO=() R1=() R2=() LR=() R3=() NIMG=0
for ((run = 0; run < RUNS; run++)); do
  fs_mount "$S" "$MNT"
  SM+=("$MOUNT_SECS")
  # Not into files/: listing a point's files/ folder opens that point's
  # chain to read the guest's partitions, so a walk of every files/ folder
  # opens POINTS chains of up to POINTS layers (see the README's figures).
  SL+=("$(timeit find "$MNT" -path '*/files' -prune -o -print)")
  a=$(now)
  NIMG=$(find "$MNT" -path '*/files' -prune -o -name '*Z.img' -printf '%s %b\n' | wc -l)
  SS+=("$(tdiff "$a" "$(now)")")
  R1+=("$(rss)")
  d=$MNT/vm$((run % VMS))/drive0/restore
  newest=$(ls "$d" | grep -E 'Z(-[0-9]+)?\.img$' | sort | tail -n 1)
  oldest=$(ls "$d" | grep -E 'Z(-[0-9]+)?\.img$' | sort | head -n 1)
  SN+=("$(first_read "$d/$newest")")
  SO+=("$(first_read "$d/$oldest")")
  if [ "$run" = 0 ]; then
    # The newest point reads the INC's cluster over the FULL's data.
    want=$(printf '\002%.0s' $(seq 1 16) | od -An -tx1)
    got=$(dd if="$d/$newest" bs=16 count=1 skip=$((65536 / 16)) status=none | od -An -tx1)
    [ "$got" = "$want" ] || { note "WRONG BYTES in the newest point of a $POINTS-deep chain"; exit 1; }
  fi
  R2+=("$(rss)")
  fs_umount "$MNT"
  if ((LSR_VMS > 0)); then
    # A fresh mount: ls -R into every files/<T>/ folder (the partitions of
    # every point are read), of all VMs or of the first LSR_VMS.
    fs_mount "$S" "$MNT"
    if ((LSR_VMS == VMS)); then LR+=("$(timeit ls -R "$MNT")")
    else
      dirs=()
      for ((v = 0; v < LSR_VMS; v++)); do dirs+=("$MNT/vm$v"); done
      LR+=("$(timeit ls -R "${dirs[@]}")")
    fi
    R3+=("$(rss)")
    fs_umount "$MNT"
  fi
done
[ "$NIMG" = $((VMS * POINTS)) ] || note "WARNING: $NIMG restore images seen, $((VMS * POINTS)) expected"
fig "scale: mount, $VMS VMs x $POINTS points (s)" "$(median "${SM[@]}")" - s - "o < 0.1" "< 0.1 s"
fig "scale: list every name but files/ (s)" "$(median "${SL[@]}")" - s - "" ""
fig "scale: stat of all $NIMG images (s)" "$(median "${SS[@]}")" - s - "o < 10" "< 10 s"
fig "scale: daemon RSS after the stat walk (MiB)" "$(median "${R1[@]}")" - MiB - "o < 128" "< 128 MiB"
fig "scale: first read, newest point ($POINTS layers) (s)" "$(median "${SN[@]}")" - s - "o < 1" "< 1 s"
fig "scale: first read, oldest point (1 layer) (s)" "$(median "${SO[@]}")" - s - "" ""
fig "scale: daemon RSS after the reads (MiB)" "$(median "${R2[@]}")" - MiB - "o < 128" "< 128 MiB"
if ((LSR_VMS > 0)); then
  fig "scale: ls -R with files/, $LSR_VMS VMs x $POINTS points (s)" "$(median "${LR[@]}")" - s - "" ""
  fig "scale: daemon RSS after ls -R with files/ (MiB)" "$(median "${R3[@]}")" - MiB - "o < 128" "< 128 MiB"
fi
fig_table
