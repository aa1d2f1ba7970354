#!/usr/bin/env bash
# The store damaged under a live mount, one VM per kind of damage, each with a
# chain FULL, INC1, INC2, INC3 whose layers hold distinct ranges (so every point
# above INC1 needs INC1): INC1's data cut off (truncated), INC1's L2 entries
# for its data flipped (found through the qcow2 header and L1 table with od),
# INC1 deleted.  Reads that need the bad part fail with EIO and never give
# other bytes, status marks the points damaged, the FULL and the other VMs read
# fine, the daemon keeps running, and `auto` starts a new chain that is exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init
qb_need od dd truncate

MiB=$((1 << 20))
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
for vm in vt vl vd; do
  qb_vm_start $vm drive0:qcow2:16M
  qb_qmp $vm cont >/dev/null
  qb_guest_write $vm drive0 "write -P 0x71 0 4M"
  fault_backup $vm full
  qb_guest_write $vm drive0 "write -P 0x72 4M 1M"
  fault_backup $vm inc
  qb_guest_write $vm drive0 "write -P 0x73 6M 1M"
  fault_backup $vm inc
  qb_guest_write $vm drive0 "write -P 0x74 8M 1M"
  fault_backup $vm inc
done
fault_check_points "before the damage"

# The store file of layer N (0 = FULL) of VM, and the point names of VM in order.
layer() { LC_ALL=C ls "$store/$1/drive0" | grep -E '^(FULL|INC)-' | sed -n "$(($2 + 1))p"; }
points() { awk -v v="$1" '$1 == v { print $3 }' "$T/cap/index"; }
capture() { awk -v v="$1" -v p="$2" '$1 == v && $3 == p { print $4 }' "$T/cap/index"; }

# Print the big-endian unsigned integer of LEN bytes at OFFSET in FILE.
# (64-bit values wrap to negative in bash; masks still work on them)
be() { echo $((16#$(od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'))); }

# Truncate: cut INC1 of vt just after the first cluster of its data at 4 MiB.
f=$store/vt/drive0/$(layer vt 1)
off=$(qemu-img map -f qcow2 --output=json "$f" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["data"] and e["start"] <= 4 << 20 < e["start"] + e["length"] and "offset" in e:
        print(e["offset"] + (4 << 20) - e["start"]); break')
[ -n "$off" ] || qb_die "no data at 4 MiB in $f"
truncate -s $((off + 65536)) "$f"

# L2: XOR the 16 L2 entries of guest 4 MiB..5 MiB of INC1 of vl with 0xff.
f=$store/vl/drive0/$(layer vl 1)
[ "$(be "$f" 0 4)" = $((0x514649fb)) ] || qb_die "not a qcow2 file: $f"
cbits=$(be "$f" 20 4)
l1=$(be "$f" 40 8)
l2=$(( $(be "$f" "$l1" 8) & 0x00fffffffffffe00 ))
[ "$l2" -gt 0 ] || qb_die "INC1 has no L2 table for its first 512 MiB"
first=$(( (4 << 20) >> cbits ))
n=$(( MiB >> cbits ))
qb_log "INC1 of vl: cluster bits $cbits, L1 at $l1, L2 at $l2; flipping entries $first..$((first + n - 1))"
python3 - "$f" $((l2 + first * 8)) $((n * 8)) <<'PY'
import sys
path, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "r+b") as f:
    f.seek(off); b = f.read(n)
    assert any(b), "the L2 entries to flip are empty"
    f.seek(off); f.write(bytes(x ^ 0xff for x in b))
PY

# Delete: INC1 of vd.
rm "$store/vd/drive0/$(layer vd 1)"

# Read LEN bytes at OFF of point P of VM: print OK when they equal the
# capture, EIO on an I/O error; anything else (other bytes) is a failure.
read_range() {
  local vm=$1 p=$2 off=$3 len=$4 cap
  cap=$(capture "$vm" "$p")
  python3 - "$mnt/$vm/drive0/restore/$p" "$cap" "$off" "$len" <<'PY'
import errno, os, sys
img, cap, off, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(cap, "rb") as f:
    f.seek(off); want = f.read(n)
try:
    fd = os.open(img, os.O_RDONLY)
    try:
        got = b""
        while len(got) < n:
            b = os.pread(fd, min(n - len(got), 1 << 20), off + len(got))
            if not b: break
            got += b
    finally:
        os.close(fd)
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno))); sys.exit(0)
print("OK" if got == want else "WRONG-BYTES")
PY
}

# Read all of point P of VM: OK (exact), EIO, or a failure for other bytes.
read_all() { read_range "$1" "$2" 0 $((16 * MiB)); }

sleep 1    # the mount trusts a scan of the store for a moment
for vm in vt vl vd; do
  mapfile -t P < <(points $vm)
  [ "$(read_all $vm "${P[0]}")" = OK ] || qb_die "$vm: the FULL point does not read exactly"
  [ "$(read_range $vm "${P[3]}" $((8 * MiB)) $MiB)" != WRONG-BYTES ] || qb_die "$vm: INC3's own range gave wrong bytes"
  for k in 1 2 3; do
    p=${P[$k]}
    if [ ! -e "$mnt/$vm/drive0/restore/$p" ]; then
      [ $vm = vd ] && [ $k = 1 ] || qb_die "$vm: point $p vanished"
      continue
    fi
    r=$(read_all $vm "$p")
    [ "$r" = EIO ] || qb_die "$vm: whole read of damaged point $p (layer $k): $r, want EIO"
    r=$(read_range $vm "$p" $((4 * MiB + 512 * 1024)) 65536)
    [ "$r" = EIO ] || qb_die "$vm: read of INC1's range through point $p: $r, want EIO"
    r=$(read_range $vm "$p" $((2 * MiB)) 65536)
    [ "$r" != WRONG-BYTES ] || qb_die "$vm: read of the FULL's range through point $p gave wrong bytes"
  done
  l=$(readlink "$mnt/$vm/drive0/restore/latest.img")
  [ "$(read_all $vm "$l")" = OK ] || qb_die "$vm: latest.img -> $l does not read exactly"
  dmg=$(fault_status $vm 'd["disks"][0]["damaged_points"]')
  want=3; [ $vm = vd ] && want=2
  [ "$dmg" -ge $want ] || qb_die "$vm: status marks $dmg points damaged, want $want: $(cat "$T/status.json")"
  m=$(sed -n "s/^qmpbackupfs_damaged_points{vm=\"$vm\",disk=\"drive0\"} //p" "$mnt/.metrics")
  [ "$m" = "$dmg" ] || qb_die "$vm: .metrics says ${m:-nothing} damaged points, status $dmg"
  qb_log "$vm: $dmg points damaged: $(fault_status $vm '[x["damage"] for x in d["disks"][0]["damage"]][:1]')"
  _qb_alive "$FS_PID" || qb_die "qmpbackupfs died"
done

# The next auto of each VM starts a new chain (a damaged layer is never built on) and is exact.
for vm in vt vl vd; do
  qb_guest_write $vm drive0 "write -P 0x75 10M 1M"
  fault_backup $vm auto
  lvl=$(fault_status $vm 'd["last"]["level"]')
  p=$(fault_newest $vm drive0)
  r=$(read_all $vm "$p")
  # (regression: auto once continued a chain whose damage only a read had
  # found; the new point needed the damaged layer and was lost as well)
  [ "$lvl" = full ] || qb_die "$vm: auto after the damage took an $lvl on top of a damaged chain (its point reads $r): $(cat "$T/status.json")"
  [ "$r" = OK ] || qb_die "$vm: the new point is not exact ($r)"
  qb_guest_write $vm drive0 "write -P 0x76 11M 1M"
  fault_backup $vm auto
  p=$(fault_newest $vm drive0)
  [ "$(read_all $vm "$p")" = OK ] || qb_die "$vm: the inc after the new full is not exact"
  fault_assert_running $vm
done
_qb_alive "$FS_PID" || qb_die "qmpbackupfs died"
echo "damage: ok"
