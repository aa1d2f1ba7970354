#!/usr/bin/env bash
# A failure that may pass is never recorded as damage: with the daemon's file
# descriptor limit lowered (prlimit on the running daemon) below what a
# 100-layer chain needs, opening its newest point fails with an error; once
# the limit is back, the same point reads byte-exact, status shows no damage
# and latest.img still names the newest point.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-io python3 cmp prlimit
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
dir=$store/deep/disk0
epoch=1700000000
size=$((8 << 20))
ref=$T/ref.raw
layers=100

# A chain of $layers layers: FULL then INCs, each writing 64 KiB of its own.
mkdir -p "$dir"
truncate -s $size "$ref"
prev=FULL-$epoch-disk0.qcow2
qemu-img create -q -f qcow2 "$dir/$prev" $size
qb_seed_write "$ref" "$dir/$prev" "write -P 0x01 0 1M"
for ((i = 1; i < layers; i++)); do
  inc=INC-$((epoch + i * 60))-disk0.qcow2
  qemu-img create -q -f qcow2 -b "$prev" -F qcow2 "$dir/$inc"
  qb_seed_write "$ref" "$dir/$inc" "write -P $((i % 250 + 2)) $(( (i * 37 % 120) * 65536 )) 64k"
  prev=$inc
done

qb_fs_mount "$store" "$mnt"
restore=$mnt/deep/disk0/restore
n=$(qb_fs_points "$restore" | wc -l)
[ "$n" = $layers ] || qb_die "want $layers points, the mount shows $n"
newest=$(qb_fs_points "$restore" | tail -1)
latest=$(readlink "$restore/latest.img")
[ "$latest" = "$newest" ] || qb_die "latest.img is $latest, want $newest"

# Lower the daemon's soft limit to what it uses now plus a little: far below
# the $layers descriptors the newest point needs.
hard=$(prlimit --pid "$FS_PID" --nofile --output HARD --noheadings)
soft=$(prlimit --pid "$FS_PID" --nofile --output SOFT --noheadings)
used=$(ls "/proc/$FS_PID/fd" | wc -l)
prlimit --pid "$FS_PID" --nofile=$((used + 30)):"$hard"
qb_on_exit "prlimit --pid $FS_PID --nofile=$soft:$hard 2>/dev/null || true"
r=$(python3 - "$restore/$newest" <<'PY'
import errno, sys
try:
    with open(sys.argv[1], "rb") as f:
        f.read(1 << 20)
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
PY
)
qb_log "open of the $layers-layer point with $((used + 30)) descriptors: $r"
[ "$r" != OK ] || qb_die "the point opened with too few descriptors: the test did not lower the limit"
[ "$r" = EIO ] || [ "$r" = ENOMEM ] || [ "$r" = EAGAIN ] || qb_die "want EIO, got $r"
cat "$mnt/deep/status" > "$T/status-low.json"
prlimit --pid "$FS_PID" --nofile="$soft":"$hard"

# Back to normal: the same point is exact, nothing is marked damaged.
qb_cmp "$restore/$newest" "$ref"
cat "$mnt/deep/status" > "$T/status.json"
for s in "$T/status-low.json" "$T/status.json"; do
  dmg=$(qb_json "$s" 'd["disks"][0]["damaged_points"]')
  [ "$dmg" = 0 ] || qb_die "a transient failure was recorded as damage: $(cat "$s")"
done
[ "$(qb_json "$T/status.json" 'd["disks"][0]["latest"]')" = "${newest%.img}" ] || qb_die "status latest changed"
[ "$(readlink "$restore/latest.img")" = "$newest" ] || qb_die "latest.img changed to $(readlink "$restore/latest.img")"
grep -q "not damage, try again" "$T/fs.log" || qb_die "the log does not say the failure may pass: $(tail -5 "$T/fs.log")"
_qb_alive "$FS_PID" || qb_die "the daemon died"
qb_fs_unmount "$mnt"
echo "transient: ok"
