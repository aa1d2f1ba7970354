#!/usr/bin/env bash
# files/ of an NTFS partition (libntfs-3g inside the daemon).  An NTFS made
# by mkntfs is filled through a root ntfs-3g FUSE mount (big and small
# files, a sparse file, hard links, symbolic links, unicode names, mtimes,
# named streams), put as p1 of a GPT disk of a live QEMU VM (p2: ext4), a
# full backup is taken through the mount; then the NTFS is changed (files
# rewritten, removed, added, a stream changed), the VM's disk is brought to
# that state through QEMU and an incremental is taken.  Each point's
# files/<T>/p1 equals a read-only ntfs-3g mount of the point's restore image
# (names, types, modes, sizes, mtimes, link counts, symlink targets,
# hard-link groups, streams as user.* xattrs, bytes) and shows that point's
# own state; p2 (ext4) equals its loop mount.  A damaged NTFS shows ERROR.txt.
# Skips (77) without root, /dev/fuse, loop devices or ntfs-3g.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/files/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"
qb_need qemu-img qemu-system-x86_64 python3 mkfs.ext4 mount umount cmp
qb_need_fuse
[ "$(id -u)" = 0 ] || { echo "SKIP: ntfs-3g and loop mounts need root"; exit 77; }
[ -e /dev/loop-control ] || { echo "SKIP: no loop devices (/dev/loop-control)"; exit 77; }
for p in mkntfs ntfs-3g setfattr; do
  command -v $p >/dev/null || { echo "SKIP: $p missing (Debian ntfs-3g, attr)"; exit 77; }
done
qb_tmpdir
store=$T/store mnt=$T/mnt py=$QB_FILES_DIR
mkdir -p "$store" "$T/w" "$T/runs"
NTOPTS=ro,uid=0,gid=0,fmask=0333,dmask=0222

truncate -s 64M "$T/ntfs1.raw"
mkntfs -q -F -Q -L guestntfs "$T/ntfs1.raw" >/dev/null 2>&1 || qb_die "mkntfs failed"
ntfs-3g "$T/ntfs1.raw" "$T/w" || qb_die "ntfs-3g mount of the new NTFS failed"
qb_on_exit "umount '$T/w' 2>/dev/null || true"
(
  cd "$T/w"
  mkdir -p etc home/user/docs "empty dir" deep/a/b many
  echo ntfshost > etc/hostname
  printf 'line1\nline2\n' > home/user/docs/notes.txt
  head -c $((6 << 20)) /dev/urandom > home/user/big.bin
  : > home/user/empty
  truncate -s 20M home/user/sparse.img
  printf 'in the middle' | dd of=home/user/sparse.img bs=1 seek=$((9 << 20)) conv=notrunc status=none
  ln home/user/docs/notes.txt home/hard1
  ln home/user/docs/notes.txt deep/a/b/hard2
  ln -s ../etc/hostname home/link-rel
  ln -s docs home/user/dirlink
  echo unicode > "home/résumé ✓ 日本語.txt"
  echo spaces > "home/name with spaces & 'quotes'"
  touch -d '2001-02-03 04:05:06.789' home/user/docs/notes.txt
  setfattr -n user.Zone.Identifier -v "[ZoneTransfer] ZoneId=3" home/user/big.bin
  setfattr -n user.comment -v hello-stream etc/hostname
  for i in $(seq 0 299); do echo "file $i" > "many/f$i"; done
)
umount "$T/w"
cp "$T/ntfs1.raw" "$T/ntfs2.raw"
ntfs-3g "$T/ntfs2.raw" "$T/w" || qb_die "ntfs-3g mount (state 2) failed"
(
  cd "$T/w"
  echo ntfshost-2 > etc/hostname
  rm many/f7 home/user/big.bin
  head -c $((1 << 20)) /dev/urandom > home/user/new.bin
  mv deep/a/b renamed-b
  setfattr -n user.comment -v changed etc/hostname
)
umount "$T/w"
mkfs.ext4 -q -F -L extp2 "$T/p2.raw" 16M
nt_size=$(stat -c %s "$T/ntfs1.raw")
nt_mib=$(( (nt_size + (1 << 20) - 1) >> 20 ))
p2_at=$((1 + nt_mib + 1))
disk_mib=$((p2_at + 16 + 2))
for s in 1 2; do
  python3 "$py/mkdisk.py" "$T/drive0-$s.raw" "$disk_mib" gpt "1:$T/ntfs$s.raw" "$p2_at:$T/p2.raw"
done
qemu-img convert -f raw -O qcow2 "$T/drive0-1.raw" "$T/img/vm1-drive0.qcow2"
qb_vm_start vm1 "drive0:qcow2:${disk_mib}M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
touch "$mnt/vm1/backup" || qb_die "full backup failed: $(cat "$mnt/vm1/status")"
points=("$(readlink "$mnt/vm1/drive0/files/latest")")
python3 "$py/diffwrite.py" "$T/drive0-1.raw" "$T/drive0-2.raw" "$T/runs" > "$T/runs.txt"
while read -r file off len; do
  qb_guest_write vm1 drive0 "write -s $file $off $len"
done < "$T/runs.txt"
qb_capture vm1 drive0 "$T/cap.raw"
cmp -s "$T/cap.raw" "$T/drive0-2.raw" || qb_die "drive0 did not reach state 2"
echo inc > "$mnt/vm1/backup" || qb_die "inc failed: $(cat "$mnt/vm1/status")"
points+=("$(readlink "$mnt/vm1/drive0/files/latest")")

for i in 0 1; do
  p=${points[$i]} v=$mnt/vm1/drive0/files/${points[$i]}
  [ "$(ls "$v" | tr '\n' ' ')" = "p1 p2 " ] || qb_die "files/$p lists: $(ls "$v")"
  mkdir -p "$T/truth"
  mount -t ntfs-3g -o "$NTOPTS,loop,offset=$((1 << 20)),sizelimit=$nt_size" \
    "$mnt/vm1/drive0/restore/$p.img" "$T/truth" || qb_die "ntfs-3g mount of the restore image failed"
  qb_on_exit "umount '$T/truth' 2>/dev/null || true"
  python3 "$py/compare.py" "$T/truth" "$v/p1" > "$T/cmp.out" \
    || { cat "$T/cmp.out" >&2; qb_die "point $((i + 1)) p1 (NTFS): files/ differs from ntfs-3g"; }
  echo "point $((i + 1)) p1 (NTFS) vs ntfs-3g: $(tail -n 1 "$T/cmp.out")"
  umount "$T/truth"
  qb_files_loop_mount "$mnt/vm1/drive0/restore/$p.img" $((p2_at << 20)) $((16 << 20)) "$T/truth"
  python3 "$py/compare.py" --layout "$T/truth" "$v/p2" > "$T/cmp.out" \
    || { cat "$T/cmp.out" >&2; qb_die "point $((i + 1)) p2 (ext4): files/ differs"; }
  qb_files_loop_unmount "$T/truth"
done
v1=$mnt/vm1/drive0/files/${points[0]}/p1 v2=$mnt/vm1/drive0/files/${points[1]}/p1
[ "$(cat "$v1/etc/hostname")" = ntfshost ] && [ "$(cat "$v2/etc/hostname")" = ntfshost-2 ] \
  || qb_die "hostnames: $(cat "$v1/etc/hostname") / $(cat "$v2/etc/hostname")"
[ "$(readlink "$v1/home/link-rel")" = ../etc/hostname ] || qb_die "symlink target: $(readlink "$v1/home/link-rel")"
[ "$(stat -c %i "$v1/home/hard1")" = "$(stat -c %i "$v1/deep/a/b/hard2")" ] || qb_die "hard links"
[ "$(python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "user.comment").decode())' "$v2/etc/hostname")" = changed ] \
  || qb_die "stream as xattr"
[ -e "$v1/home/user/big.bin" ] && [ ! -e "$v2/home/user/big.bin" ] && [ -e "$v2/renamed-b/hard2" ] \
  || qb_die "point 2 does not show the changes"
grep -rq . "$v1/many" && cp -a "$v1/home" "$T/copy" && diff -r --no-dereference "$v1/home" "$T/copy" > /dev/null \
  || qb_die "cp -a of an NTFS folder"
[ "$(echo x 2>&1 > "$v1/etc/new" || true)" != "" ] || [ ! -e "$v1/etc/new" ] || qb_die "a write succeeded"

# A damaged NTFS (its MFT overwritten): ERROR.txt, the daemon keeps serving.
cp "$T/ntfs1.raw" "$T/bad.raw"
mft=$(python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(512); print(struct.unpack("<Q",b[48:56])[0]*b[13]*struct.unpack("<H",b[11:13])[0])' "$T/bad.raw")
dd if=/dev/urandom of="$T/bad.raw" bs=4096 seek=$((mft / 4096)) count=64 conv=notrunc status=none
dd if=/dev/zero of="$T/bad.raw" bs=512 count=1 seek=$(( $(stat -c %s "$T/bad.raw") / 512 - 1 )) conv=notrunc status=none
python3 "$py/mkdisk.py" "$T/drive0-3.raw" "$disk_mib" gpt "1:$T/bad.raw" "$p2_at:$T/p2.raw"
mkdir -p "$T/runs3"
python3 "$py/diffwrite.py" "$T/drive0-2.raw" "$T/drive0-3.raw" "$T/runs3" > "$T/runs.txt"
while read -r file off len; do
  qb_guest_write vm1 drive0 "write -s $file $off $len"
done < "$T/runs.txt"
echo inc > "$mnt/vm1/backup" || qb_die "inc 3 failed"
p3=$(readlink "$mnt/vm1/drive0/files/latest")
if [ -e "$mnt/vm1/drive0/files/$p3/p1/ERROR.txt" ]; then
  grep -q "could not be read" "$mnt/vm1/drive0/files/$p3/p1/ERROR.txt" || qb_die "ERROR.txt: $(cat "$mnt/vm1/drive0/files/$p3/p1/ERROR.txt")"
  echo "damaged NTFS: ERROR.txt: $(sed -n 2p "$mnt/vm1/drive0/files/$p3/p1/ERROR.txt")"
else
  # libntfs-3g may still mount it (the MFT mirror): then reads fail cleanly or succeed
  rc=0
  find "$mnt/vm1/drive0/files/$p3/p1" > /dev/null 2>&1 || rc=$?
  echo "damaged NTFS: mounted by libntfs-3g, find exit $rc"
fi
[ "$(cat "$v2/etc/hostname")" = ntfshost-2 ] || qb_die "the daemon stopped serving after the damaged NTFS"

qb_fs_unmount "$mnt"
echo PASS
