#!/usr/bin/env bash
# Mounting the way an admin does: an /etc/fstab-style line read by mount(8)
# (here from a private fstab file with `mount --fstab`), the filesystem type
# "fuse" with the program named in the source ("PROGRAM#STORE"), options
# passed through, then `umount`.  The installed form of the line,
# "STORE MNT fuse.qmpbackupfs sockets=DIR 0 0", needs qmpbackupfs on root's
# PATH and is the same code path inside mount.fuse3.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 mount umount mount.fuse3 cmp
qb_need_fuse
qb_need_root
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store" "$mnt"
qb_vm_start vm3 drive0:qcow2:32M
qb_guest_write vm3 drive0 "write -P 0x42 1M 2M"

printf '%s#%s %s fuse sockets=%s 0 0\n' "$QMPBACKUPFS" "$store" "$mnt" "$T/sockets" > "$T/fstab"
mount --fstab "$T/fstab" "$mnt" || qb_die "mount --fstab failed: $(cat "$T/fstab")"
qb_on_exit "umount '$mnt' 2>/dev/null || true"
mountpoint -q "$mnt" || qb_die "mount returned but $mnt is not mounted"
grep -q " $mnt fuse.qmpbackupfs " /proc/mounts || qb_die "$mnt is not a qmpbackupfs mount: $(grep " $mnt " /proc/mounts)"

[ -d "$mnt/vm3" ] || qb_die "the VM from the sockets option is not in the mount: $(ls -a "$mnt")"
touch "$mnt/vm3/backup" || qb_die "backup through the fstab mount failed: $(cat "$mnt/vm3/status")"
qb_capture vm3 drive0 "$T/expect.raw"
p=$(qb_fs_points "$mnt/vm3/drive0/restore" | tail -1)
[ -n "$p" ] || qb_die "no restore point after the backup"
qb_cmp "$mnt/vm3/drive0/restore/$p" "$T/expect.raw"

umount "$mnt" || qb_die "umount $mnt failed"
! mountpoint -q "$mnt" || qb_die "$mnt still mounted after umount"
echo "fstab: ok"
