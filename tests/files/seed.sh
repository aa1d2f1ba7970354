#!/usr/bin/env bash
# files/: the guest's files of every restore point of stores written by
# qemu-img (no VM): a GPT disk (ext4 p1 + an xfs p2 that gets
# NOT-SUPPORTED.txt), an MBR disk and a disk that is ext4 without a table,
# each with a full and an incremental point made by editing the file system
# between them.  Every point's files/ view equals a read-only root loop mount
# of the point's restore image: names, types, modes, owners, sizes, mtimes,
# link counts, hard link groups, symlink targets, xattrs and bytes.  A
# corrupted superblock gives ERROR.txt, a corrupted directory EIO, and the
# daemon keeps serving the other points; a journal that needs recovery is
# shown unreplayed with pN.NOT-CLEAN.txt beside.  Writes are refused; the
# mount is nosuid,nodev.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/files/lib.sh"
qb_need qemu-img python3 mkfs.ext4 debugfs losetup mount umount cmp
qb_need_fuse
[ "$(id -u)" = 0 ] || { echo "SKIP: the loop mounts that give the truth need root"; exit 77; }
qb_tmpdir

store=$T/store
mnt=$T/mnt
epoch=1700000000
py=$QB_FILES_DIR/compare.py

qb_files_tree "$T/tree" 3000
qb_files_mkfs "$T/fs1.img" 96 "$T/tree"
# point 2: the same file system edited (a file changed, one removed, one added)
cp "$T/fs1.img" "$T/fs2.img"
echo "changed host" > "$T/newhost"
echo "a new file" > "$T/added"
debugfs -w -f - "$T/fs2.img" >/dev/null 2>&1 <<EOC
rm /etc/hostname
write $T/newhost /etc/hostname
rm /many/3/f300
write $T/added /home/added.txt
mkdir /home/newdir
EOC
debugfs -R "stat /home/added.txt" "$T/fs2.img" 2>/dev/null | grep -q "Type: regular" \
  || qb_die "debugfs did not edit the image"

# Make the three disks of both states.
for s in 1 2; do
  python3 "$QB_FILES_DIR/mkdisk.py" "$T/gpt-$s.raw" 104 gpt "1:$T/fs$s.img" 98:4:magic:0:XFSB
  python3 "$QB_FILES_DIR/mkdisk.py" "$T/mbr-$s.raw" 100 mbr "2:$T/fs$s.img"
  cp "$T/fs$s.img" "$T/whole-$s.raw"
done
declare -A start=([gpt]=$((1 << 20)) [mbr]=$((2 << 20)) [whole]=0)
declare -A part=([gpt]=p1 [mbr]=p1 [whole]=fs)
fslen=$((96 << 20))
for d in gpt mbr whole; do
  dir=$store/vm1/$d
  mkdir -p "$dir"
  qemu-img convert -f raw -O qcow2 "$T/$d-1.raw" "$dir/FULL-$epoch-$d.qcow2"
  qb_files_inc "$dir/FULL-$epoch-$d.qcow2" "$T/$d-2.raw" "$dir/INC-$((epoch + 3600))-$d.qcow2"
done
# a third point of the gpt disk with a corrupted superblock (a byte of the
# volume name: its checksum fails), a fourth with a block count far larger
# than the partition
cp "$T/gpt-2.raw" "$T/gpt-3.raw"
printf 'X' | dd of="$T/gpt-3.raw" bs=1 seek=$(((1 << 20) + 1024 + 0x78)) conv=notrunc status=none
qb_files_inc "$store/vm1/gpt/INC-$((epoch + 3600))-gpt.qcow2" "$T/gpt-3.raw" \
  "$store/vm1/gpt/INC-$((epoch + 7200))-gpt.qcow2"
cp "$T/gpt-2.raw" "$T/gpt-4.raw"
printf '\xff\xff\xff\x7f' | dd of="$T/gpt-4.raw" bs=1 seek=$(((1 << 20) + 1024 + 4)) conv=notrunc status=none
qb_files_inc "$store/vm1/gpt/INC-$((epoch + 7200))-gpt.qcow2" "$T/gpt-4.raw" \
  "$store/vm1/gpt/INC-$((epoch + 10800))-gpt.qcow2"
# (the third layer's backing is the second; rebase -u above cut the names)
# a third point of the mbr disk whose /home directory block is garbage
cp "$T/mbr-2.raw" "$T/mbr-3.raw"
blk=$(debugfs -R "blocks /home" "$T/fs2.img" 2>/dev/null | awk '{print $1}')
[ -n "$blk" ] || qb_die "no block for /home"
bs=$(debugfs -R "stats" "$T/fs2.img" 2>/dev/null | awk -F: '/^Block size/ {print $2+0}')
head -c "$bs" /dev/urandom | dd of="$T/mbr-3.raw" bs=1 seek=$(((2 << 20) + blk * bs)) conv=notrunc status=none
qb_files_inc "$store/vm1/mbr/INC-$((epoch + 3600))-mbr.qcow2" "$T/mbr-3.raw" \
  "$store/vm1/mbr/INC-$((epoch + 7200))-mbr.qcow2"

# a third point of the unpartitioned disk whose journal "needs recovery"
cp "$T/whole-2.raw" "$T/whole-3.raw"
debugfs -w -R "feature needs_recovery" "$T/whole-3.raw" >/dev/null 2>&1
debugfs -R "features" "$T/whole-3.raw" 2>/dev/null | grep -q needs_recovery || qb_die "no needs_recovery"
qb_files_inc "$store/vm1/whole/INC-$((epoch + 3600))-whole.qcow2" "$T/whole-3.raw" \
  "$store/vm1/whole/INC-$((epoch + 7200))-whole.qcow2"

qb_fs_mount "$store" "$mnt"
p1=2023-11-14T221320Z
p2=2023-11-14T231320Z
p3=2023-11-15T001320Z
p4=2023-11-15T011320Z

# Every good point equals a root loop mount of its restore image.
for d in gpt mbr whole; do
  for p in $p1 $p2; do
    img=$mnt/vm1/$d/restore/$p.img
    view=$mnt/vm1/$d/files/$p/${part[$d]}
    [ -d "$view" ] || qb_die "$view missing: $(ls "$mnt/vm1/$d/files/$p" 2>&1)"
    qb_files_loop_mount "$img" "${start[$d]}" "$fslen" "$T/truth"
    python3 "$py" "$T/truth" "$view" > "$T/cmp.out" || { cat "$T/cmp.out" >&2; qb_die "$d $p: files/ differs from the loop mount"; }
    tail -n 1 "$T/cmp.out"
    # diff -r (fifo and device node: diff cannot compare them, says so, exit 2)
    diff -r --no-dereference "$T/truth" "$view" > "$T/diff.out" 2>&1 || true
    grep -v -e "fifo" -e "character special" "$T/diff.out" && qb_die "$d $p: diff -r differs"
    # sparse files: the same data extents (SEEK_DATA/SEEK_HOLE) as the kernel's ext4
    for f in home/user/sparse.img home/user/big.bin etc/hostname; do
      python3 "$QB_FILES_DIR/extents.py" "$T/truth/$f" > "$T/ext-truth"
      python3 "$QB_FILES_DIR/extents.py" "$view/$f" > "$T/ext-view"
      cmp -s "$T/ext-truth" "$T/ext-view" || qb_die "$d $p $f extents: $(cat "$T/ext-view") not $(cat "$T/ext-truth")"
    done
    qb_files_loop_unmount "$T/truth"
  done
done

v=$mnt/vm1/gpt/files
[ "$(readlink "$v/latest")" = "$p4" ] || qb_die "files/latest is $(readlink "$v/latest"), not $p4"
[ "$(readlink "$mnt/vm1/whole/files/latest")" = "$p3" ] || qb_die "whole: files/latest"
[ "$(cat "$v/$p1/p1/etc/hostname")" = restorehost ] || qb_die "point 1 hostname"
[ "$(cat "$mnt/vm1/whole/files/$p2/fs/etc/hostname")" = "changed host" ] || qb_die "point 2 hostname"
[ -e "$v/$p1/p1/many/3/f300" ] && [ ! -e "$v/$p2/p1/many/3/f300" ] || qb_die "removed file"
# the partition folders of a GPT disk, and the note of a partition not read
[ "$(ls "$v/$p1")" = "$(printf 'p1\np2')" ] || qb_die "gpt point lists $(ls "$v/$p1")"
[ "$(ls "$v/$p1/p2")" = NOT-SUPPORTED.txt ] || qb_die "p2 lists $(ls "$v/$p1/p2")"
grep -q "type xfs" "$v/$p1/p2/NOT-SUPPORTED.txt" || qb_die "note does not name xfs"
grep -q "losetup -r -P" "$v/$p1/p2/NOT-SUPPORTED.txt" || qb_die "note has no workaround"
[ "$(ls "$mnt/vm1/whole/files/$p1")" = fs ] || qb_die "a disk without a table shows $(ls "$mnt/vm1/whole/files/$p1")"
# the same guest file in two points has two inode numbers; hard links one
i1=$(stat -c %i "$v/$p1/p1/home/hard1")
i2=$(stat -c %i "$v/$p2/p1/home/hard1")
i3=$(stat -c %i "$v/$p1/p1/deep/a/b/c/d/hard2")
[ "$i1" != "$i2" ] && [ "$i1" = "$i3" ] || qb_die "inode numbers: $i1 $i2 $i3"
getfattr --version >/dev/null 2>&1 || true
python3 -c 'import os,sys; v=os.getxattr(sys.argv[1],"user.comment"); sys.exit(v!=b"hello-xattr")' \
  "$v/$p1/p1/etc/hostname" || qb_die "xattr user.comment"
# read-only
python3 -c 'import os,sys; os.open(sys.argv[1], os.O_WRONLY)' "$v/$p1/p1/etc/hostname" 2>/dev/null \
  && qb_die "open for writing succeeded"
touch "$v/$p1/p1/etc/hostname" 2>/dev/null && qb_die "touch succeeded"
grep " $mnt " /proc/mounts | grep -q "nosuid,nodev" || qb_die "mount options: $(grep " $mnt " /proc/mounts)"
[ "$(stat -c %a "$v/$p1/p1/home/tool")" = 4755 ] || qb_die "setuid bit not shown"
mkdir "$v/$p1/p1/newdir" 2>/dev/null && qb_die "mkdir succeeded"

# Hostile: a corrupted superblock gives ERROR.txt, a garbage directory EIO.
[ "$(ls "$v/$p3/p1")" = ERROR.txt ] || qb_die "corrupt superblock: p1 lists $(ls "$v/$p3/p1")"
grep -q "could not be read" "$v/$p3/p1/ERROR.txt" || qb_die "ERROR.txt: $(cat "$v/$p3/p1/ERROR.txt")"
[ "$(ls "$v/$p4/p1")" = ERROR.txt ] || qb_die "huge block count: p1 lists $(ls "$v/$p4/p1")"
grep -q "claims more blocks" "$v/$p4/p1/ERROR.txt" || qb_die "ERROR.txt: $(cat "$v/$p4/p1/ERROR.txt")"
[ "$(ls "$v/$p4/p2")" = NOT-SUPPORTED.txt ] || qb_die "p4/p2 lists $(ls "$v/$p4/p2")"
out=$(ls "$mnt/vm1/mbr/files/$p3/p1/home" 2>&1) && qb_die "garbage directory listed: $out"
echo "$out" | grep -q "Input/output error" || qb_die "garbage directory: $out"
[ "$(cat "$mnt/vm1/mbr/files/$p3/p1/etc/hostname")" = "changed host" ] || qb_die "rest of point 3"
[ "$(cat "$v/$p1/p1/etc/hostname")" = restorehost ] || qb_die "point 1 after the damage"
_qb_alive "$FS_PID" || qb_die "the daemon died"

# A journal not replayed: the files as the disk holds them, and a note beside.
w=$mnt/vm1/whole/files/$p3
[ "$(ls "$w")" = "$(printf 'fs\nfs.NOT-CLEAN.txt')" ] || qb_die "not clean point lists $(ls "$w")"
grep -q "journal needs recovery" "$w/fs.NOT-CLEAN.txt" || qb_die "NOT-CLEAN: $(cat "$w/fs.NOT-CLEAN.txt")"
[ "$(cat "$w/fs/etc/hostname")" = "changed host" ] || qb_die "not clean point hostname"
[ "$(ls "$mnt/vm1/whole/files/$p2")" = fs ] || qb_die "a clean point lists $(ls "$mnt/vm1/whole/files/$p2")"

# More open file systems than the cache holds (16): points of all disks in
# turn, twice; each answers right.
for r in 1 2; do
  for d in gpt mbr whole; do
    for p in $p1 $p2; do
      cmp -s "$mnt/vm1/$d/files/$p/${part[$d]}/home/user/big.bin" "$T/tree/home/user/big.bin" \
        || qb_die "$d $p big.bin differs"
    done
  done
done

qb_fs_unmount "$mnt"
echo "PASS"
