#!/usr/bin/env bash
# files/ of points taken by the mount from a live QEMU VM: a GPT disk with
# an ext4 p1 and a disk that is ext4 without a table; a full backup, then
# the guest's disks changed through QEMU (the writes that turn one ext4
# state into the next, edited with debugfs) and two incrementals.  Every
# point's files/ view equals a read-only root loop mount of its restore
# image (names, modes, owners, sizes, mtimes, links, xattrs, bytes) and
# shows that point's own state.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/files/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 mkfs.ext4 debugfs losetup mount umount cmp
qb_need_fuse
[ "$(id -u)" = 0 ] || { echo "SKIP: the loop mounts that give the truth need root"; exit 77; }
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store" "$T/runs"
py=$QB_FILES_DIR/compare.py

qb_files_tree "$T/tree" 1000
qb_files_mkfs "$T/fs1.img" 96 "$T/tree"
# state 2: files changed, removed and added; state 3: more of it
cp "$T/fs1.img" "$T/fs2.img"
echo "second state" > "$T/s2"
head -c $((3 << 20)) /dev/urandom > "$T/s2big"
debugfs -w -f - "$T/fs2.img" >/dev/null 2>&1 <<EOC
rm /etc/hostname
write $T/s2 /etc/hostname
rm /many/1/f100
write $T/s2big /home/user/newbig.bin
EOC
cp "$T/fs2.img" "$T/fs3.img"
echo "third state" > "$T/s3"
debugfs -w -f - "$T/fs3.img" >/dev/null 2>&1 <<EOC
rm /etc/hostname
write $T/s3 /etc/hostname
rm /home/user/newbig.bin
mkdir /home/third
EOC
for s in 1 2 3; do
  python3 "$QB_FILES_DIR/mkdisk.py" "$T/drive0-$s.raw" 104 gpt "1:$T/fs$s.img"
  cp "$T/fs$s.img" "$T/data1-$s.raw"
done
qemu-img convert -f raw -O qcow2 "$T/drive0-1.raw" "$T/img/vm1-drive0.qcow2"
qemu-img convert -f raw -O qcow2 "$T/data1-1.raw" "$T/img/vm1-data1.qcow2"
qb_vm_start vm1 drive0:qcow2:104M data1:qcow2:96M
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
C=$mnt/vm1/backup

# Change disk D of the running VM from state S-1 to state S through QEMU.
guest_to_state() {
  local d=$1 s=$2 file off len
  rm -f "$T"/runs/*
  python3 "$QB_FILES_DIR/diffwrite.py" "$T/$d-$((s - 1)).raw" "$T/$d-$s.raw" "$T/runs" > "$T/runs.txt"
  [ -s "$T/runs.txt" ] || qb_die "no change from state $((s - 1)) to $s"
  while read -r file off len; do
    qb_guest_write vm1 "$d" "write -s $file $off $len"
  done < "$T/runs.txt"
  qb_capture vm1 "$d" "$T/cap.raw"
  cmp -s "$T/cap.raw" "$T/$d-$s.raw" || qb_die "$d did not reach state $s"
}

touch "$C" || qb_die "full backup failed: $(cat "$mnt/vm1/status")"
points=("$(readlink "$mnt/vm1/files/latest" 2>/dev/null || readlink "$mnt/vm1/drive0/files/latest")")
for s in 2 3; do
  guest_to_state drive0 $s
  guest_to_state data1 $s
  echo inc > "$C" || qb_die "inc failed: $(cat "$mnt/vm1/status")"
  points+=("$(readlink "$mnt/vm1/drive0/files/latest")")
done
[ "${#points[@]}" = 3 ] && [ "${points[0]}" != "${points[1]}" ] && [ "${points[1]}" != "${points[2]}" ] \
  || qb_die "points: ${points[*]}"
[ "$(ls "$mnt/vm1/drive0/files" | grep -vc '^latest$')" = 3 ] || qb_die "files/ lists $(ls "$mnt/vm1/drive0/files")"

want=("restorehost" "second state" "third state")
for i in 0 1 2; do
  p=${points[$i]}
  for d in drive0 data1; do
    if [ "$d" = drive0 ]; then start=$((1 << 20)); view=$mnt/vm1/$d/files/$p/p1
    else start=0; view=$mnt/vm1/$d/files/$p/fs; fi
    [ "$(cat "$view/etc/hostname")" = "${want[$i]}" ] || qb_die "$d $p: hostname $(cat "$view/etc/hostname")"
    qb_files_loop_mount "$mnt/vm1/$d/restore/$p.img" "$start" $((96 << 20)) "$T/truth"
    python3 "$py" "$T/truth" "$view" > "$T/cmp.out" || { cat "$T/cmp.out" >&2; qb_die "$d $p: files/ differs from the loop mount"; }
    tail -n 1 "$T/cmp.out"
    diff -r --no-dereference "$T/truth" "$view" > "$T/diff.out" 2>&1 || true
    grep -v -e "fifo" -e "character special" "$T/diff.out" && qb_die "$d $p: diff -r differs"
    qb_files_loop_unmount "$T/truth"
  done
done
[ -e "$mnt/vm1/drive0/files/${points[1]}/p1/home/user/newbig.bin" ] || qb_die "point 2 lacks newbig.bin"
[ ! -e "$mnt/vm1/drive0/files/${points[2]}/p1/home/user/newbig.bin" ] || qb_die "point 3 has newbig.bin"
cmp "$T/s2big" "$mnt/vm1/drive0/files/${points[1]}/p1/home/user/newbig.bin" || qb_die "newbig.bin bytes"

qb_fs_unmount "$mnt"
echo "PASS"
