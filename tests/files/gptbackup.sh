#!/usr/bin/env bash
# files/ of a GPT disk whose primary GPT is damaged (the header's CRC32 does
# not match): the partitions come from the backup GPT at the end of the
# disk, GPT-BACKUP.txt in the point folder says so, status lists it, and p1
# equals a root loop mount of the restore image.  A second point with both
# GPTs damaged has no partition table (fs/ with NOT-SUPPORTED.txt), never
# partitions read from a table whose checksums fail.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/files/lib.sh"
qb_need qemu-img python3 mkfs.ext4 mount umount
qb_need_fuse
[ "$(id -u)" = 0 ] || { echo "SKIP: the loop mount that gives the truth needs root"; exit 77; }
qb_tmpdir
store=$T/store mnt=$T/mnt epoch=1700000000
qb_files_tree "$T/tree" 100
qb_files_mkfs "$T/fs.img" 40 "$T/tree"
python3 "$QB_FILES_DIR/mkdisk.py" "$T/d1.raw" 48 gpt "1:$T/fs.img"
# point 1: a byte of the primary header changed (its CRC32 fails)
printf '\x07' | dd of="$T/d1.raw" bs=1 seek=$((512 + 40)) conv=notrunc status=none
# point 2: the backup header (last sector) damaged as well
cp "$T/d1.raw" "$T/d2.raw"
printf '\x07' | dd of="$T/d2.raw" bs=1 seek=$(( (48 << 20) - 512 + 40 )) conv=notrunc status=none
dir=$store/vm1/disk
mkdir -p "$dir"
qemu-img convert -f raw -O qcow2 "$T/d1.raw" "$dir/FULL-$epoch-disk.qcow2"
qb_files_inc "$dir/FULL-$epoch-disk.qcow2" "$T/d2.raw" "$dir/INC-$((epoch + 3600))-disk.qcow2"
qb_fs_mount "$store" "$mnt"
mapfile -t pts < <(ls "$mnt/vm1/disk/files" | grep -v '^latest$')
[ "${#pts[@]}" = 2 ] || qb_die "points: ${pts[*]}"
v1=$mnt/vm1/disk/files/${pts[0]} v2=$mnt/vm1/disk/files/${pts[1]}
[ "$(ls "$v1" | tr '\n' ' ')" = "GPT-BACKUP.txt p1 " ] || qb_die "point 1 lists: $(ls "$v1")"
grep -q "come from the backup GPT" "$v1/GPT-BACKUP.txt" || qb_die "GPT-BACKUP.txt: $(cat "$v1/GPT-BACKUP.txt")"
qb_files_loop_mount "$mnt/vm1/disk/restore/${pts[0]}.img" $((1 << 20)) $((40 << 20)) "$T/truth"
python3 "$QB_FILES_DIR/compare.py" "$T/truth" "$v1/p1" > "$T/cmp.out" \
  || { cat "$T/cmp.out" >&2; qb_die "p1 from the backup GPT differs from the loop mount"; }
tail -n 1 "$T/cmp.out"
qb_files_loop_unmount "$T/truth"
grep -q "files: ${pts[0]}: primary GPT damaged: partitions read from the backup GPT" "$mnt/vm1/status" \
  || qb_die "status does not list the backup GPT: $(grep files: "$mnt/vm1/status")"
[ "$(ls "$v2" | tr '\n' ' ')" = "fs " ] || qb_die "point 2 (both GPTs bad) lists: $(ls "$v2")"
[ -f "$v2/fs/NOT-SUPPORTED.txt" ] || qb_die "point 2: fs/ lists $(ls "$v2/fs")"
qb_fs_unmount "$mnt"
echo PASS
