#!/usr/bin/env bash
# files/ of a real Linux guest (contrib/guest) that writes its own files.
#
# The guest boots under TCG with two disks: `data` (ext4, its /data, holding
# the host's setfattr: busybox has none) and `disk`, a GPT disk with two
# partitions (ext4 on both).  Through its agent (guest-exec) the guest mounts
# disk's partitions and writes a tree: symbolic links, hard links, sparse and
# preallocated files, big and small files, unicode names, owners, modes,
# mtimes, xattrs (small in the inode, large in a block).  Backups are taken
# through the mount (touch backup, quiesced by the agent) between changes:
#   point 1: the tree; point 2: files changed, removed, added, renamed;
#   point 3: crash-consistent (noquiesce) while the guest writes busily.
# Every point's files/<T>/p1 and p2 then equal
#   - a read-only root loop mount (ro,noload) of the point's restore image:
#     names, sizes, modes, owners, mtimes (ns), symlink targets, hard-link
#     groups, st_blocks and the SEEK_DATA/SEEK_HOLE map, xattrs, bytes;
#   - what the guest itself listed just before the backup (stat + md5sum in
#     the guest), points 1 and 2.
# Point 3 (journal not replayed) has p1.NOT-CLEAN.txt and a line in status;
# its files are shown as the disk holds them (equal to the noload loop mount
# outside the folder being written).
# Skips (77) without root (loop mounts), /dev/fuse, or the test guest.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/files/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"
qb_need "$QB_QEMU" qemu-img python3 mkfs.ext4 mount umount
qb_need_fuse
[ "$(id -u)" = 0 ] || { echo "SKIP: the loop mounts that give the truth need root"; exit 77; }
[ -e /dev/loop-control ] || { echo "SKIP: no loop devices (/dev/loop-control)"; exit 77; }
setfattr=$(command -v setfattr) || { echo "SKIP: no setfattr on the host to give the guest (package attr)"; exit 77; }
rc=0
guest=$("$QB_SOURCE_DIR/contrib/guest/build-guest.sh") || rc=$?
[ $rc -eq 77 ] && { echo "SKIP: the test guest cannot be built here (see above)"; exit 77; }
[ $rc -eq 0 ] || qb_die "build-guest.sh failed ($rc)"
eval "$guest"

qb_tmpdir
store=$T/store mnt=$T/mnt console=$T/console.log
qga=$T/sockets/vm.qga
mkdir -p "$store" "$T/tools"
py=$QB_FILES_DIR

# The guest's tools disk (its /data): setfattr runs on the initramfs's libc.
cp "$setfattr" "$T/tools/setfattr"
mkfs.ext4 -q -F -d "$T/tools" "$T/data.raw" 16M
qemu-img convert -f raw -O qcow2 "$T/data.raw" "$T/img/vm-data.qcow2"
# The disk the guest writes: GPT, p1 ext4 (120 MiB), p2 ext4 (24 MiB).
mkfs.ext4 -q -F -b 4096 -I 256 -L guestp1 "$T/p1.raw" 120M
mkfs.ext4 -q -F -L guestp2 "$T/p2.raw" 24M
python3 "$py/mkdisk.py" "$T/disk.raw" 150 gpt "1:$T/p1.raw" "122:$T/p2.raw"
qemu-img convert -f raw -O qcow2 "$T/disk.raw" "$T/img/vm-disk.qcow2"
rm -f "$T/p1.raw" "$T/p2.raw" "$T/disk.raw" "$T/data.raw"

"$QB_QEMU" -machine q35,accel=tcg -nodefaults -display none -m 256 -name vm \
  -kernel "$QB_GUEST_KERNEL" -initrd "$QB_GUEST_INITRD" \
  -append "console=ttyS0 panic=-1" -serial "file:$console" -no-reboot \
  -drive "file=$T/img/vm-data.qcow2,format=qcow2,if=virtio,id=data" \
  -drive "file=$T/img/vm-disk.qcow2,format=qcow2,if=virtio,id=disk" \
  -device virtio-serial \
  -chardev "socket,path=$qga,server=on,wait=off,id=qga0" \
  -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
  -qmp "unix:$T/sockets/vm.qmp,server=on,wait=off" \
  </dev/null >"$T/vm/vm.out" 2>&1 &
qemu_pid=$!
qb_register_pid "$qemu_pid"
for ((i = 0; i < 1800; i++)); do
  grep -aq QB-GUEST-READY "$console" 2>/dev/null && break
  if grep -aq 'QB-GUEST-FAILED\|Kernel panic' "$console" 2>/dev/null || ! _qb_alive "$qemu_pid"; then
    tail -n 20 "$console" >&2; qb_die "the guest failed to boot"
  fi
  sleep 0.1
done
grep -aq QB-GUEST-READY "$console" || { tail -n 20 "$console" >&2; qb_die "the guest did not boot in 180 s"; }

# Run SCRIPT in the guest (sh -c), its output on stdout; fail if it fails.
guest() { python3 "$py/qga.py" "$qga" "$1" 600 || qb_die "guest script failed: $1"; }

# The guest's own listing of /mnt/pN into $T/guest-N.{stats,sums}.
guest_manifest() {
  local n=$1 p
  for p in p1 p2; do
    guest "cd /mnt/$p && find . -exec stat -c '%n|%s|%f|%u|%g|%Y|%h|%F' {} +" > "$T/guest-$n-$p.stats"
    guest "cd /mnt/$p && find . -type f -exec md5sum {} +" > "$T/guest-$n-$p.sums"
  done
}

guest 'mkdir -p /mnt/p1 /mnt/p2 && mount -t ext4 /dev/vdb1 /mnt/p1 && mount -t ext4 /dev/vdb2 /mnt/p2'
long=$(printf 'x%.0s' {1..150})
big=$(printf 'v%.0s' {1..3000})
guest "set -e; cd /mnt/p1
mkdir -p etc home/user/docs 'empty dir' deep/a/b/c/d many
echo guest-host-1 > etc/hostname
printf 'line1\nline2\n' > home/user/docs/notes.txt
head -c 5000000 /dev/urandom > home/user/big.bin
dd if=/dev/urandom of=home/user/big2.bin bs=1048576 count=12 2>/dev/null
: > home/user/empty
truncate -s 30M home/user/sparse.img
printf 'in the middle' | dd of=home/user/sparse.img bs=1 seek=17825792 conv=notrunc 2>/dev/null
printf 'at the end' | dd of=home/user/tail-only bs=1 seek=9000000 2>/dev/null
fallocate -l 4194304 home/user/prealloc
ln -s ../etc/hostname home/link-short
ln -s /very/long/target/$long/end home/link-long
ln -s nowhere home/link-dangling
ln home/user/docs/notes.txt home/hard1
ln home/user/docs/notes.txt deep/a/b/c/d/hard2
echo unicode > 'home/résumé ✓ 日本語.txt'
echo spaces > \"home/name with spaces & 'quotes'\"
mkfifo home/fifo
echo secret > home/user/secret; chmod 0600 home/user/secret
echo tool > home/tool; chmod 4755 home/tool
chown -R 1234:5678 home/user
touch -d '2001-02-03 04:05:06' home/user/docs/notes.txt
/data/setfattr -n user.comment -v hello-xattr etc/hostname
/data/setfattr -n user.big -v $big home/user/big.bin
/data/setfattr -n trusted.guest -v only-root home/tool
i=0; while [ \$i -lt 2000 ]; do d=many/\$((i / 100)); mkdir -p \$d; echo \"file \$i\" > \$d/f\$i; i=\$((i + 1)); done
cd /mnt/p2; mkdir -p srv; echo second-partition > srv/p2.txt; ln -s p2.txt srv/p2.link
sync"
guest_manifest 1
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
touch "$mnt/vm/backup" || qb_die "backup 1 failed: $(cat "$mnt/vm/status")"
points=("$(readlink "$mnt/vm/disk/files/latest")")

guest "set -e; cd /mnt/p1
echo guest-host-2 > etc/hostname
rm home/user/big2.bin many/3/f300
mv deep/a/b renamed-b
ln -sf ../../etc/hostname home/user/link-new
head -c 70000 /dev/urandom >> home/user/big.bin
printf 'later' | dd of=home/user/sparse.img bs=1 seek=29000000 conv=notrunc 2>/dev/null
/data/setfattr -n user.comment -v changed etc/hostname
/data/setfattr -x user.big home/user/big.bin
chmod 0751 home/user/docs; chown 42:43 home/user/empty
mkdir -p new/dir; echo added > new/dir/added.txt; ln new/dir/added.txt new/hardlink
sync"
guest_manifest 2
echo inc > "$mnt/vm/backup" || qb_die "backup 2 failed: $(cat "$mnt/vm/status")"
points+=("$(readlink "$mnt/vm/disk/files/latest")")

# Point 3: crash-consistent while the guest writes (the journal is dirty).
guest 'mkdir -p /mnt/p1/busy && sync'
wpid=$(python3 "$py/qga.py" "$qga" --spawn 'i=0; while :; do i=$((i + 1)); dd if=/dev/urandom of=/mnt/p1/busy/f$((i % 200)) bs=65536 count=2 2>/dev/null; done')
echo "inc noquiesce" > "$mnt/vm/backup" || qb_die "backup 3 failed: $(cat "$mnt/vm/status")"
points+=("$(readlink "$mnt/vm/disk/files/latest")")
guest "kill $wpid"
[ "${#points[@]}" = 3 ] && [ "${points[0]}" != "${points[1]}" ] && [ "${points[1]}" != "${points[2]}" ] \
  || qb_die "points: ${points[*]}"

# Partition offsets as the kernel will use them (mkdisk: p1 at 1 MiB, p2 at 122 MiB).
for i in 0 1 2; do
  p=${points[$i]} v=$mnt/vm/disk/files/${points[$i]}
  # quiesced points are clean; point 3 has p1 (and p2, mounted too) not clean
  want='p1 p2 '
  [ $i = 2 ] && want='p1 p1.NOT-CLEAN.txt p2 p2.NOT-CLEAN.txt '
  [ "$(ls "$v" | tr '\n' ' ')" = "$want" ] || qb_die "point $((i + 1)): files/$p lists: $(ls "$v")"
  for part in p1 p2; do
    if [ $part = p1 ]; then off=$((1 << 20)) len=$((120 << 20)); else off=$((122 << 20)) len=$((24 << 20)); fi
    qb_files_loop_mount "$mnt/vm/disk/restore/$p.img" "$off" "$len" "$T/truth"
    excl=()
    [ $i = 2 ] && [ $part = p1 ] && excl=(--exclude busy --exclude lost+found)
    python3 "$py/compare.py" --layout "${excl[@]}" "$T/truth" "$v/$part" > "$T/cmp.out" \
      || { cat "$T/cmp.out" >&2; qb_die "point $((i + 1)) $part: files/ differs from the loop mount"; }
    echo "point $((i + 1)) $part vs loop mount: $(tail -n 1 "$T/cmp.out")"
    qb_files_loop_unmount "$T/truth"
    if [ $i -lt 2 ]; then
      python3 "$py/manifest.py" "$T/guest-$((i + 1))-$part.stats" "$T/guest-$((i + 1))-$part.sums" "$v/$part" \
        > "$T/man.out" || { cat "$T/man.out" >&2; qb_die "point $((i + 1)) $part: files/ differs from what the guest had"; }
      echo "point $((i + 1)) $part vs the guest: $(tail -n 1 "$T/man.out")"
    fi
  done
done

v1=$mnt/vm/disk/files/${points[0]}/p1 v2=$mnt/vm/disk/files/${points[1]}/p1
[ "$(cat "$v1/etc/hostname")" = guest-host-1 ] && [ "$(cat "$v2/etc/hostname")" = guest-host-2 ] \
  || qb_die "hostnames: $(cat "$v1/etc/hostname") / $(cat "$v2/etc/hostname")"
[ "$(python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "user.comment").decode())' "$v1/etc/hostname")" = hello-xattr ] \
  || qb_die "point 1: user.comment xattr"
[ "$(python3 -c 'import os,sys; print(len(os.getxattr(sys.argv[1], "user.big")))' "$v1/home/user/big.bin")" = 3000 ] \
  || qb_die "point 1: the 3000-byte xattr"
[ -e "$v1/home/user/big2.bin" ] && [ ! -e "$v2/home/user/big2.bin" ] && [ -d "$v2/renamed-b/c/d" ] \
  || qb_die "point 2 does not show the guest's changes"
[ "$(stat -c %i "$v2/new/hardlink")" = "$(stat -c %i "$v2/new/dir/added.txt")" ] || qb_die "hard link inode"
diff -r --no-dereference "$v1/etc" "$v2/etc" > "$T/diff.out" 2>&1 && qb_die "diff -r of two points found no change"
grep -q hostname "$T/diff.out" || qb_die "diff -r: $(cat "$T/diff.out")"

# Point 3: not clean, said in the folder and in status; its files as on disk.
v3=$mnt/vm/disk/files/${points[2]}
grep -q "journal needs recovery" "$v3/p1.NOT-CLEAN.txt" || qb_die "NOT-CLEAN.txt: $(cat "$v3/p1.NOT-CLEAN.txt")"
grep -q "${points[2]} p1: ext4 not clean (journal not replayed): shown as on disk" "$mnt/vm/status" \
  || qb_die "status does not say point 3 p1 is not clean: $(grep -A3 files_not_clean "$mnt/vm/status")"
grep -q "${points[0]} p1" "$mnt/vm/status" && qb_die "status calls the quiesced point 1 not clean"
[ "$(cat "$v3/p1/etc/hostname")" = guest-host-2 ] || qb_die "point 3 hostname"
ls "$v3/p1/busy" > /dev/null || qb_die "point 3: busy/ cannot be listed"

qb_fs_unmount "$mnt"
echo PASS
