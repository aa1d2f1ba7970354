#!/usr/bin/env bash
# A sockets directory that does not exist at mount time (/run/qemu before the
# first VM starts) is waited for: the mount succeeds and shows the VMs that
# only have backups; once the directory appears, a real QEMU VM whose QMP
# socket is created in it shows up and is backed up through the control file,
# and its restore image equals the disk.  The directory going away and coming
# back is followed the same way.  A sockets path that exists but is not a
# directory is refused at mount time with a clear message.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 qemu-io python3 cmp
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
socks=$T/sockets
mkdir -p "$store"
rmdir "$socks"            # made by qb_tmpdir: the directory is not there yet

# A VM that only has backups (a chain written the way the Python qmpbackup does).
qb_seed_full "$store/old/drive0" 1700000000 drive0 33554432 "$T/old.raw"

qb_fs_mount "$store" "$mnt" -o "sockets=$socks"
[ "$(ls "$mnt")" = old ] || qb_die "before the sockets dir exists: want only 'old', got: $(ls "$mnt" | tr '\n' ' ')"
grep -q "sockets dir $socks does not exist yet" "$T/fs.log" \
  || qb_die "no log line about the missing sockets dir: $(cat "$T/fs.log")"
p=$(qb_fs_points "$mnt/old/drive0/restore" | head -1)
qb_cmp "$mnt/old/drive0/restore/$p" "$T/old.raw"

# The directory appears (still empty): nothing new, the daemon says it saw it.
mkdir "$socks"
[ "$(ls "$mnt")" = old ] || qb_die "empty sockets dir: want only 'old', got: $(ls "$mnt" | tr '\n' ' ')"
grep -q "sockets dir $socks appeared" "$T/fs.log" || qb_die "no log line about the sockets dir appearing"

# A VM starts with its QMP socket in it: it shows up, a backup through the mount works.
qb_vm_start vm1 drive0:qcow2:16M
qb_guest_write vm1 drive0 "write -P 0x5a 1M 3M"
[ "$(ls "$mnt" | tr '\n' ' ')" = "old vm1 " ] \
  || qb_die "after the VM started: want 'old vm1', got: $(ls "$mnt" | tr '\n' ' ')"
r=$(qb_fs_control "$mnt/vm1/backup" full)
[ "$r" = OK ] || qb_die "full backup through the mount: $r; status: $(cat "$mnt/vm1/status")"
qb_capture vm1 drive0 "$T/full.raw"
p=$(qb_fs_points "$mnt/vm1/drive0/restore" | tail -1)
qb_cmp "$mnt/vm1/drive0/restore/$p" "$T/full.raw"

# The directory goes away with the VM: vm1 stays (it has backups now), restore only.
qb_vm_stop vm1
rm -rf "$socks"
[ "$(ls "$mnt" | tr '\n' ' ')" = "old vm1 " ] || qb_die "after the dir went: $(ls "$mnt" | tr '\n' ' ')"
grep -q "sockets dir $socks is gone" "$T/fs.log" || qb_die "no log line about the sockets dir going"
r=$(qb_fs_control "$mnt/vm1/backup" inc)
[ "$r" = EHOSTDOWN ] || qb_die "backup of a VM without a socket: want EHOSTDOWN, got $r"

# ... and comes back with the VM: an incremental works, both points exact.
mkdir "$socks"
qb_vm_restart vm1
qb_guest_write vm1 drive0 "write -P 0x6b 8M 1M"
r=$(qb_fs_control "$mnt/vm1/backup" inc)
[ "$r" = OK ] || qb_die "incremental after the dir came back: $r; status: $(cat "$mnt/vm1/status")"
qb_capture vm1 drive0 "$T/inc.raw"
p=$(qb_fs_points "$mnt/vm1/drive0/restore" | tail -1)
qb_cmp "$mnt/vm1/drive0/restore/$p" "$T/inc.raw"
p=$(qb_fs_points "$mnt/vm1/drive0/restore" | head -1)
qb_cmp "$mnt/vm1/drive0/restore/$p" "$T/full.raw"
qb_fs_unmount "$mnt"

# A sockets path that is a file: refused at mount time, nothing mounted.
: > "$T/notadir"
mkdir -p "$T/mnt2"
if "$QMPBACKUPFS" "$store" "$T/mnt2" -f -o "sockets=$T/notadir" > "$T/bad.log" 2>&1; then
  qb_die "mount with sockets=<a file> succeeded"
fi
grep -q "not a directory" "$T/bad.log" || qb_die "unclear error for sockets=<a file>: $(cat "$T/bad.log")"
! mountpoint -q "$T/mnt2" || qb_die "mounted despite the error"
echo "sockets-wait: ok"
