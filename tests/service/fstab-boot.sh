#!/usr/bin/env bash
# The fstab line for mounting at boot:
#   STORE MNT fuse.qmpbackupfs sockets=DIR,nofail,x-systemd.requires-mounts-for=STORE 0 0
# - systemd's own fstab generator turns it into a mount unit that local-fs.target
#   only wants (nofail: a failed mount does not stop the boot) and that waits
#   for the store's file system (RequiresMountsFor);
# - mount(8) with these options (here the build-tree form "fuse" +
#   "PROGRAM#STORE") mounts at a time the sockets directory does not exist
#   yet (/run/qemu at boot); the boot-only options never reach the daemon;
#   once the directory and a real VM's socket appear the VM is backed up
#   through the mount and its restore image is exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 qemu-io mount umount mount.fuse3 cmp
qb_need_fuse
qb_need_root
qb_tmpdir

store=$T/store
mnt=$T/mnt
socks=$T/sockets
rmdir "$socks"
mkdir -p "$store" "$mnt"
opts="sockets=$socks,nofail,x-systemd.requires-mounts-for=$store"

gen=/lib/systemd/system-generators/systemd-fstab-generator
if [ -x "$gen" ]; then
  printf '%s %s fuse.qmpbackupfs %s 0 0\n' "$store" "$mnt" "$opts" > "$T/fstab.installed"
  mkdir -p "$T/gen/normal" "$T/gen/early" "$T/gen/late"
  SYSTEMD_FSTAB=$T/fstab.installed SYSTEMD_PROC_CMDLINE="" \
    "$gen" "$T/gen/normal" "$T/gen/early" "$T/gen/late" 2> "$T/gen.err" \
    || qb_die "fstab generator failed: $(cat "$T/gen.err")"
  unit=$(systemd-escape -p --suffix=mount "$mnt")
  [ -f "$T/gen/normal/$unit" ] || qb_die "no $unit generated: $(find "$T/gen")"
  [ -e "$T/gen/normal/local-fs.target.wants/$unit" ] \
    || qb_die "local-fs.target does not want $unit: $(find "$T/gen")"
  [ ! -e "$T/gen/normal/local-fs.target.requires/$unit" ] \
    || qb_die "local-fs.target requires $unit: a failed mount would stop the boot"
  grep -qx "RequiresMountsFor=$store" "$T/gen/normal/$unit" \
    || qb_die "the mount unit does not wait for the store: $(cat "$T/gen/normal/$unit")"
  grep -qx "Type=fuse.qmpbackupfs" "$T/gen/normal/$unit" || qb_die "wrong type: $(cat "$T/gen/normal/$unit")"
else
  qb_log "systemd-fstab-generator not installed: generated unit not checked"
fi

printf '%s#%s %s fuse %s 0 0\n' "$QMPBACKUPFS" "$store" "$mnt" "$opts" > "$T/fstab"
mount --fstab "$T/fstab" "$mnt" 2> "$T/mount.err" || qb_die "mount failed: $(cat "$T/mount.err")"
qb_on_exit "umount '$mnt' 2>/dev/null || true"
mountpoint -q "$mnt" || qb_die "mount returned but $mnt is not mounted"
grep -q "sockets dir $socks does not exist yet" "$T/mount.err" \
  || qb_die "no word about the missing sockets dir: $(cat "$T/mount.err")"
[ -z "$(ls "$mnt")" ] || qb_die "VMs before any socket: $(ls "$mnt")"

mkdir "$socks"
qb_vm_start vm1 drive0:qcow2:16M
qb_guest_write vm1 drive0 "write -P 0x77 2M 2M"
[ "$(ls "$mnt")" = vm1 ] || qb_die "the VM did not show up: $(ls "$mnt")"
touch "$mnt/vm1/backup" || qb_die "backup failed: $(cat "$mnt/vm1/status")"
qb_capture vm1 drive0 "$T/expect.raw"
p=$(qb_fs_points "$mnt/vm1/drive0/restore" | tail -1)
[ -n "$p" ] || qb_die "no restore point after the backup"
qb_cmp "$mnt/vm1/drive0/restore/$p" "$T/expect.raw"
umount "$mnt" || qb_die "umount failed"
! mountpoint -q "$mnt" || qb_die "still mounted after umount"
echo "fstab-boot: ok"
