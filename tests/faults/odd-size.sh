#!/usr/bin/env bash
# Disks whose size is not a multiple of 4096 and reads across the end of a
# restore image.  QEMU counts sizes in 512-byte sectors (a raw file of 1000001
# bytes is a 1000448-byte disk; qemu-img rounds a qcow2 up the same way), so a
# VM with such disks (qcow2, raw made by qemu-img, raw file of odd length) is
# backed up full and inc with writes on the last bytes; a store image whose
# qcow2 header says 1000001 bytes (hand-made: QEMU never writes one) is read
# too.  Each point has the disk's size and bytes; pread, O_DIRECT preadv and
# dd ranges that cross the end give exactly the bytes up to the end, reads at
# or past the end give nothing; the same holds on a point whose chain is
# damaged elsewhere, where the damaged range fails with EIO.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init
qb_need dd qemu-io

S=1000448                 # 1954 sectors: 244 pages and 1 KiB
B=$(( (8 << 20) + 512 ))  # 8 MiB and one sector: a partial cluster after a full L2 range
truncate -s 1000001 "$T/img/vm1-oddfile.raw"
qb_vm_start vm1 drive0:qcow2:$S data1:raw:$B oddfile:raw:$S
qb_qmp vm1 cont >/dev/null
qb_qmp vm1 query-block > "$T/block.json"
python3 - "$T/block.json" <<'PY'
import json, sys
got = {b["device"]: b["inserted"]["image"]["virtual-size"] for b in json.load(open(sys.argv[1]))}
want = {"drive0": 1000448, "data1": (8 << 20) + 512, "oddfile": 1000448}
assert got == want, "QEMU's disk sizes: %r, expected %r" % (got, want)
PY

qb_guest_write vm1 drive0 "write -P 0x41 0 $S"
qb_guest_write vm1 drive0 "write -P 0x42 $((S - 512)) 512"
qb_guest_write vm1 data1 "write -P 0x43 $((B - (1 << 20))) 1M"
qb_guest_write vm1 oddfile "write -P 0x44 $((S - 4096)) 4096"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
fault_backup vm1 full
qb_guest_write vm1 drive0 "write -P 0x51 $((S - 1536)) 1536"
qb_guest_write vm1 data1 "write -z $((B - 1024)) 1024"
qb_guest_write vm1 oddfile "write -P 0x52 $((S - 512)) 512"
fault_backup vm1 inc
qb_guest_write vm1 drive0 "discard $((S - 1024)) 1024"
qb_guest_write vm1 data1 "write -P 0x53 $((B - 512)) 512"
qb_guest_write vm1 oddfile "write -z $((S - 1024)) 1024"
fault_backup vm1 inc
fault_check_points "odd sizes"

# Python: check restore image IMG against raw capture CAP around its end
# (sizes equal, preads crossing the end, at and past it; O_DIRECT preadv of
# aligned ranges).  With BAD set (a damaged 64 KiB cluster), reads that touch
# it are left out and a read of [BAD, BAD+4096) must fail with EIO.
CHECK_END='
import errno, mmap, os, sys
img, cap = sys.argv[1], sys.argv[2]
bad = int(sys.argv[3]) if len(sys.argv) > 3 else -1
want = open(cap, "rb").read()
size = len(want)
st = os.stat(img).st_size
assert st == size, "%s: st_size %d, the disk had %d" % (img, st, size)
fd = os.open(img, os.O_RDONLY)
for k in (1, 2, 100, 511, 512, 513, 1024, 1025, 4095, 4096, 4097, 65536 + 7, size):
    for n in (1, 512, 4096, 65536, 1 << 20):
        off = size - k
        if bad >= 0 and off < bad + 65536:
            continue            # the damaged cluster: checked below
        got = os.pread(fd, n, off)
        exp = want[off:off + n]
        assert got == exp, "%s: pread(%d at %d) gave %d bytes, %s" % (
            img, n, off, len(got), "expected %d" % len(exp) if len(got) != len(exp) else "other bytes")
for off in (size, size + 1, size + 4096, size + (1 << 30)):
    assert os.pread(fd, 4096, off) == b"", "%s: pread at %d (past the end) gave bytes" % (img, off)
os.close(fd)
fd = os.open(img, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
for off in (size // 4096 * 4096, size // 4096 * 4096 - 4096, (size - 65536) // 4096 * 4096):
    for n in (4096, 65536, 1 << 20):
        m = memoryview(buf)[:n]
        r = os.preadv(fd, [m], off)
        exp = want[off:off + n]
        assert r == len(exp) and bytes(m[:r]) == exp, \
            "%s: O_DIRECT preadv(%d at %d) gave %d bytes, expected %d" % (img, n, off, r, len(exp))
if bad >= 0:
    try:
        os.preadv(fd, [memoryview(buf)[:4096]], bad)
        raise AssertionError("%s: the damaged range at %d read without error" % (img, bad))
    except OSError as e:
        assert e.errno == errno.EIO, "%s: damaged range: %s" % (img, e)
os.close(fd)
'

# Check the end of point P of VM/DISK against CAP [BAD]; also dd with skip.
check_end() {
  local img=$mnt/$1/$2/restore/$3 cap=$4 size tail
  python3 -c "$CHECK_END" "$img" "$cap" ${5:+"$5"} || qb_die "reads across the end of $1/$2/$3"
  size=$(stat -c %s "$cap")
  tail=$((size % 4096))
  [ "$tail" -gt 0 ] || tail=4096
  dd if="$img" bs=4096 skip=$(( (size - tail) / 4096 )) count=8 status=none > "$T/dd.out" ||
    qb_die "dd across the end of $1/$2/$3 failed"
  tail -c "$tail" "$cap" | cmp - "$T/dd.out" || qb_die "dd across the end of $1/$2/$3: other bytes"
  dd if="$img" bs=512 skip=$(( (size + 511) / 512 )) count=4 status=none iflag=direct > "$T/dd.out" ||
    qb_die "dd iflag=direct at the end of $1/$2/$3 failed"
  [ ! -s "$T/dd.out" ] || qb_die "dd iflag=direct past the end of $1/$2/$3 gave bytes"
}

while read -r vm disk point file; do check_end "$vm" "$disk" "$point" "$file"; done < "$T/cap/index"
qb_log "good points: reads across the end exact"

# A store image of 1000001 bytes (header size edited; QEMU rounds to 1000448):
# a seed-style FULL and a standalone INC that writes the last bytes.
sd=$store/seedvm/disk0
mkdir -p "$sd"
qemu-img create -q -f qcow2 -o compat=1.1 "$sd/FULL-1700000000-disk0.qcow2" $S
qemu-io -f qcow2 -c "write -P 0x61 0 $S" "$sd/FULL-1700000000-disk0.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b FULL-1700000000-disk0.qcow2 -F qcow2 "$sd/INC-1700003600-disk0.qcow2"
qemu-io -f qcow2 -c "write -P 0x62 $((S - 4096)) 4096" -c "write -z 4096 4096" \
  "$sd/INC-1700003600-disk0.qcow2" >/dev/null
for f in FULL-1700000000 INC-1700003600; do
  qemu-img convert -O raw "$sd/$f-disk0.qcow2" "$T/seed-$f.raw"
  truncate -s 1000001 "$T/seed-$f.raw"
done
qemu-img rebase -q -u -b "" "$sd/INC-1700003600-disk0.qcow2"
for f in "$sd"/*.qcow2; do
  python3 -c '
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(24); f.write(struct.pack(">Q", 1000001))' "$f"
done
mapfile -t seedpts < <(for ((i = 0; i < 50; i++)); do
  qb_fs_points "$mnt/seedvm/disk0/restore" 2>/dev/null | grep -q . && break; sleep 0.1; done
  qb_fs_points "$mnt/seedvm/disk0/restore")
[ "${#seedpts[@]}" = 2 ] || qb_die "seed points of 1000001 bytes: ${seedpts[*]:-none}"
qb_cmp "$T/seed-FULL-1700000000.raw" "$mnt/seedvm/disk0/restore/${seedpts[0]}" || qb_die "seed FULL of 1000001 bytes"
qb_cmp "$T/seed-INC-1700003600.raw" "$mnt/seedvm/disk0/restore/${seedpts[1]}" || qb_die "seed INC of 1000001 bytes"
check_end seedvm disk0 "${seedpts[0]}" "$T/seed-FULL-1700000000.raw"
check_end seedvm disk0 "${seedpts[1]}" "$T/seed-INC-1700003600.raw"
qb_log "store images of 1000001 bytes: exact, reads across the end exact"

# Damage elsewhere: flip the L2 entry of guest cluster 0 of drive0's FULL.
# Every point of drive0 then fails reads of [0, 4096) with EIO and still
# reads exactly across its end.
f=$store/vm1/drive0/$(LC_ALL=C ls "$store/vm1/drive0" | grep '^FULL-' | head -n 1)
python3 - "$f" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    h = f.read(48)
    assert h[:4] == b"QFI\xfb", "not a qcow2 file"
    l1 = struct.unpack(">Q", h[40:48])[0]
    f.seek(l1); l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    assert l2, "the FULL has no L2 table"
    f.seek(l2); e = f.read(8)
    assert any(e), "cluster 0 of the FULL is not allocated"
    f.seek(l2); f.write(bytes(x ^ 0xff for x in e))
PY
n=0
while read -r vm disk point file; do
  [ "$disk" = drive0 ] || continue
  check_end "$vm" "$disk" "$point" "$file" 0
  n=$((n + 1))
done < "$T/cap/index"
[ $n = 3 ] || qb_die "expected 3 damaged points of drive0, checked $n"
qb_log "damaged points: EIO on the damage, reads across the end exact"

echo "odd-size: ok"
