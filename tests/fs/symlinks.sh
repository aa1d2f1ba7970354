#!/usr/bin/env bash
# The mount never serves a file from outside the store: a layer file that is a
# symlink to a qcow2 image outside (full of a marker), a disk folder and a VM
# folder that are symlinks to folders outside.  No read through the mount
# (restore images, latest.img, chain/, status) ever yields the marker; the
# symlinked layer is left out of the store's listing (its point is not
# shown) and the VM's status says why; the other point stays exact and the
# daemon keeps running.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-io python3 cmp
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
out=$T/outside
epoch=1700000000
size=$((32 << 20))
mkdir -p "$out/vmdir/disk0" "$out/diskdir"

# Write a qcow2 image PATH of SIZE full of the marker byte 0x4d.
marker_image() {
  qemu-img create -q -f qcow2 "$1" $size
  qemu-io -f qcow2 -c "write -P 0x4d 0 $size" "$1" > /dev/null
}

qb_seed_full "$store/vm1/disk0" $epoch disk0 $size "$T/ref.raw"
marker_image "$out/INC-outside.qcow2"
ln -s "$out/INC-outside.qcow2" "$store/vm1/disk0/INC-$((epoch + 3600))-disk0.qcow2"
marker_image "$out/diskdir/FULL-$epoch-disk1.qcow2"
ln -s "$out/diskdir" "$store/vm1/disk1"
marker_image "$out/vmdir/disk0/FULL-$epoch-disk0.qcow2"
ln -s "$out/vmdir" "$store/evilvm"
ln -s "$out/vmdir" "$store/evil2"

qb_fs_mount "$store" "$mnt" -o "vm=evil2:$T/nosuch.qmp"
ls "$mnt" > "$T/ls.out"
! grep -qx evilvm "$T/ls.out" || qb_die "a symlinked VM folder is shown: $(cat "$T/ls.out")"
[ ! -e "$mnt/vm1/disk1" ] || qb_die "a symlinked disk folder is shown"
[ -z "$(ls "$mnt/evil2")" ] || [ "$(ls "$mnt/evil2")" = "$(printf 'backup\npoints\nstatus')" ] \
  || qb_die "evil2 (-o vm=, symlinked folder) shows disks: $(ls "$mnt/evil2")"

p1=$(qb_fs_points "$mnt/vm1/disk0/restore" | head -1)
qb_cmp "$mnt/vm1/disk0/restore/$p1" "$T/ref.raw"

# Read every file of the mount (and the names it might have); none holds the marker.
python3 - "$mnt" "$epoch" <<'PY' || qb_die "a read through the mount returned data from outside the store"
import os, sys
m, epoch = sys.argv[1], int(sys.argv[2])
marker = b"\x4d" * 4096
paths = set()
for d, dirs, files in os.walk(m):
    for f in files:
        paths.add(os.path.join(d, f))
for p in ["vm1/disk0/chain/INC-%d-disk0.qcow2" % (epoch + 3600),
          "vm1/disk1/chain/FULL-%d-disk1.qcow2" % epoch,
          "evilvm/disk0/chain/FULL-%d-disk0.qcow2" % epoch,
          "evil2/disk0/chain/FULL-%d-disk0.qcow2" % epoch,
          "evilvm/disk0/restore/latest.img", "evil2/disk0/restore/latest.img",
          "vm1/disk0/restore/latest.img"]:
    paths.add(os.path.join(m, p))
refused = 0
for p in sorted(paths):
    if p.endswith("/backup"):
        continue
    try:
        with open(p, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                if marker in b:
                    print("MARKER in", p)
                    sys.exit(1)
    except OSError as e:
        refused += 1
        print("refused:", p, e.strerror)
print(len(paths), "paths,", refused, "refused")
PY
# the point on the symlinked layer is not shown; status says why
[ "$(qb_fs_points "$mnt/vm1/disk0/restore" | wc -l)" = 1 ] \
  || qb_die "the point on the symlinked layer is listed: $(ls "$mnt/vm1/disk0/restore")"
[ ! -e "$mnt/vm1/disk0/chain/INC-$((epoch + 3600))-disk0.qcow2" ] || qb_die "the symlinked layer is in chain/"
cat "$mnt/vm1/status" > "$T/status.json"
python3 - "$T/status.json" <<'PY' || qb_die "status does not report the symlinks: $(cat "$T/status.json")"
import json, sys
d = json.load(open(sys.argv[1]))
sk = " | ".join(d["store_skipped"])
assert "INC-" in sk and "symbolic link" in sk, sk
assert "disk1" in sk, sk
PY
_qb_alive "$FS_PID" || qb_die "the daemon died"
[ "$(readlink "$mnt/vm1/disk0/restore/latest.img")" = "$p1" ] || qb_die "latest.img is not the good point"
qb_cmp "$mnt/vm1/disk0/restore/latest.img" "$T/ref.raw"
qb_fs_unmount "$mnt"
echo "symlinks: ok"
