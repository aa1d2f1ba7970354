#!/usr/bin/env bash
# files/<point>/ of every point of one chain whose partition tables change
# between points (GPT with ext4 p1 and xfs p2, then an MBR, a damaged ext
# superblock, the GPT again, a damaged primary GPT): the partitions are read
# once per point, a point whose layers above an earlier one leave the table
# and the probed bytes alone takes that point's table, and the next point
# of a chain is opened on top of the previous one.  Each listing must be
# what the point's own bytes say: walked oldest first (tables taken over,
# chains extended) and newest first on a fresh mount (each read from its
# base) they agree with each other and with the expected partitions, and
# p1's files read right.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/files/lib.sh"
qb_need qemu-img python3 mkfs.ext4 debugfs
qb_need_fuse
qb_tmpdir
store=$T/store mnt=$T/mnt epoch=1700000000
mkdir -p "$T/tree/etc"
echo restorehost > "$T/tree/etc/hostname"
qb_files_mkfs "$T/fs.img" 20 "$T/tree"
mk() { python3 "$QB_FILES_DIR/mkdisk.py" "$@"; }
# 1: GPT, p1 ext4, p2 xfs (magic only)
mk "$T/r1.raw" 48 gpt "1:$T/fs.img" "30:8:magic:0:XFSB"
# 2: the same table and probed bytes; data changed at 40 MiB (no partition)
cp "$T/r1.raw" "$T/r2.raw"
head -c 65536 /dev/urandom | dd of="$T/r2.raw" bs=1M seek=40 conv=notrunc status=none
# 3: an MBR with p1 only (the GPT gone)
mk "$T/r3.raw" 48 mbr "1:$T/fs.img"
# 4: p1's ext superblock magic damaged: p1 is no file system we know
cp "$T/r3.raw" "$T/r4.raw"
printf '\x00\x00' | dd of="$T/r4.raw" bs=1 seek=$(((1 << 20) + 1024 + 56)) conv=notrunc status=none
# 5: the GPT of 1 again
cp "$T/r1.raw" "$T/r5.raw"
# 6: its primary GPT header damaged: the partitions come from the backup
cp "$T/r5.raw" "$T/r6.raw"
printf '\x07' | dd of="$T/r6.raw" bs=1 seek=$((512 + 40)) conv=notrunc status=none
dir=$store/vm1/disk
mkdir -p "$dir"
qemu-img convert -f raw -O qcow2 "$T/r1.raw" "$dir/FULL-$epoch-disk.qcow2"
for i in 2 3 4 5 6; do
  qemu-img convert -f raw -O qcow2 "$T/r$((i - 1)).raw" "$T/prev.qcow2"
  qb_files_inc "$T/prev.qcow2" "$T/r$i.raw" "$dir/INC-$((epoch + 3600 * (i - 1)))-disk.qcow2"
done
want=("p1 p2" "p1 p2" "p1" "p1" "p1 p2" "GPT-BACKUP.txt p1 p2")

# What files/<T>/ and its partition folders list, one line per point.
listing() {
  local f=$mnt/vm1/disk/files/$1 p out
  out="$(ls "$f" | tr '\n' ' ')|"
  for p in $(ls "$f" | grep -v '\.txt$'); do out+="$p: $(ls "$f/$p" | tr '\n' ' ')|"; done
  printf '%s\n' "$out"
}

qb_fs_mount "$store" "$mnt"
mapfile -t pts < <(ls "$mnt/vm1/disk/files" | grep -v '^latest$')
[ "${#pts[@]}" = 6 ] || qb_die "points: ${pts[*]}"
: > "$T/fwd"
for ((i = 0; i < 6; i++)); do listing "${pts[i]}" >> "$T/fwd"; done
for ((i = 0; i < 6; i++)); do
  got=$(ls "$mnt/vm1/disk/files/${pts[i]}" | tr '\n' ' ')
  [ "$got" = "${want[i]} " ] || qb_die "point $((i + 1)) (oldest first) lists '$got', not '${want[i]}'"
done
for i in 0 1 2 4 5; do
  h=$(cat "$mnt/vm1/disk/files/${pts[i]}/p1/etc/hostname")
  [ "$h" = restorehost ] || qb_die "point $((i + 1)): p1/etc/hostname reads '$h'"
done
[ -f "$mnt/vm1/disk/files/${pts[3]}/p1/NOT-SUPPORTED.txt" ] \
  || qb_die "point 4 (damaged superblock): p1 lists $(ls "$mnt/vm1/disk/files/${pts[3]}/p1")"
[ -f "$mnt/vm1/disk/files/${pts[1]}/p2/NOT-SUPPORTED.txt" ] \
  || qb_die "point 2: p2 lists $(ls "$mnt/vm1/disk/files/${pts[1]}/p2")"
ls -R "$mnt/vm1/disk/files" > /dev/null
qb_fs_unmount "$mnt"

# newest first on a fresh mount: no earlier point was read before
qb_fs_mount "$store" "$mnt"
: > "$T/back"
for ((i = 5; i >= 0; i--)); do listing "${pts[i]}" > "$T/back.$i"; done
for ((i = 0; i < 6; i++)); do cat "$T/back.$i" >> "$T/back"; done
qb_fs_unmount "$mnt"
diff "$T/fwd" "$T/back" >&2 || qb_die "listings differ between the walk oldest first and newest first"
cat "$T/fwd"
echo PASS
