#!/usr/bin/env bash
# Restore images are usable as disks.  A VM's disk holds an ext4 filesystem
# (mkfs.ext4 -d on a raw file, converted to qcow2); a full, then an inc after
# the guest-visible blocks of a second filesystem version were written into
# the running VM.  Each point: `losetup -r -P` of the restore image, mount the
# loop device read-only, its files are the ones of that version.  Then the
# test guest boots with the inc point as its disk (format=raw, snapshot=on):
# it mounts /dev/vda and reports QB-GUEST-READY.  Skips without loop devices.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"
qb_need mkfs.ext4 debugfs losetup mount umount
[ "$(id -u)" = 0 ] || { echo "SKIP: loop devices need root"; exit 77; }
[ -e /dev/loop-control ] || { echo "SKIP: no /dev/loop-control"; exit 77; }
fault_init
loopdev=$(losetup -f 2>/dev/null) || { echo "SKIP: no free loop device"; exit 77; }
[ -b "$loopdev" ] || { echo "SKIP: loop device $loopdev missing"; exit 77; }

# Two versions of the filesystem: v2 = v1 + second.txt and a changed hello.txt.
mkdir -p "$T/fs1"
echo "hello from restore point one" > "$T/fs1/hello.txt"
head -c 3M /dev/urandom > "$T/fs1/big.bin"
truncate -s 64M "$T/v1.raw"
mkfs.ext4 -q -F -L qbdata -d "$T/fs1" "$T/v1.raw"
cp "$T/v1.raw" "$T/v2.raw"
echo "second file, written before the inc" > "$T/second.txt"
echo "hello from restore point two" > "$T/hello2.txt"
debugfs -w -R "write $T/second.txt second.txt" "$T/v2.raw" >/dev/null 2>&1
debugfs -w -R "rm hello.txt" "$T/v2.raw" >/dev/null 2>&1
debugfs -w -R "write $T/hello2.txt hello.txt" "$T/v2.raw" >/dev/null 2>&1
qemu-img convert -O qcow2 "$T/v1.raw" "$T/img/vm1-drive0.qcow2"

qb_vm_start vm1 drive0:qcow2:64M
qb_qmp vm1 cont >/dev/null
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
fault_backup vm1 full
p1=$(fault_newest vm1 drive0)

# The guest writes the 4 KiB blocks that differ between v1 and v2.
python3 - "$T/v1.raw" "$T/v2.raw" "$T/chunks" > "$T/chunks.list" <<'PY'
import os, sys
a, b, d = open(sys.argv[1], "rb"), open(sys.argv[2], "rb"), sys.argv[3]
os.makedirs(d, exist_ok=True)
off = 0
while True:
    x, y = a.read(4096), b.read(4096)
    if not y: break
    if x != y:
        p = os.path.join(d, str(off)); open(p, "wb").write(y); print(off, p)
    off += 4096
PY
[ -s "$T/chunks.list" ] || qb_die "the two filesystem versions do not differ"
while read -r off f; do qb_guest_write vm1 drive0 "write -s $f $off 4096"; done < "$T/chunks.list"
fault_backup vm1 inc
p2=$(fault_newest vm1 drive0)
qb_capture vm1 drive0 "$T/now.raw"
qb_cmp "$T/v2.raw" "$T/now.raw" || qb_die "the VM's disk is not filesystem version 2"
fault_check_points "ext4 points"

# Undo a loop mount a failure left (only ours: the device we attached).
LOOP= LOOP_MNT=
qb_on_exit '[ -n "$LOOP_MNT" ] && umount "$LOOP_MNT"; [ -n "$LOOP" ] && losetup -d "$LOOP"'

# Loop-mount restore image IMG read-only; fail unless file NAME holds TEXT.
loop_check() {
  local img=$1 name=$2 want=$3 dev got
  dev=$(losetup -r -P -f --show "$img") || qb_die "losetup -r -P $img failed"
  LOOP=$dev
  mkdir -p "$T/lm"
  mount -o ro,noload -t ext4 "$dev" "$T/lm" || qb_die "mount of $dev ($img) failed"
  LOOP_MNT=$T/lm
  got=$(cat "$T/lm/$name" 2>&1 || true)
  cmp -s "$T/fs1/big.bin" "$T/lm/big.bin" || qb_die "big.bin differs in $img"
  umount "$T/lm"
  LOOP_MNT=
  losetup -d "$dev"
  LOOP=
  [ "$got" = "$want" ] || qb_die "$name in $img: '$got', want '$want'"
}
loop_check "$mnt/vm1/drive0/restore/$p1" hello.txt "hello from restore point one"
loop_check "$mnt/vm1/drive0/restore/$p2" hello.txt "hello from restore point two"
loop_check "$mnt/vm1/drive0/restore/$p2" second.txt "second file, written before the inc"
qb_log "loop mounts of both points read their files"

# Boot the test guest from the inc point.
rc=0
guest=$("$QB_SOURCE_DIR/contrib/guest/build-guest.sh") || rc=$?
if [ $rc -eq 77 ]; then echo "SKIP: loop part passed; the test guest cannot be built here"; exit 77; fi
[ $rc -eq 0 ] || qb_die "build-guest.sh failed ($rc)"
eval "$guest"
console=$T/console.log
t0=$(date +%s)
qemu-system-x86_64 -machine q35,accel=tcg -nodefaults -display none -m 256 \
  -kernel "$QB_GUEST_KERNEL" -initrd "$QB_GUEST_INITRD" \
  -append "console=ttyS0 panic=-1" -serial "file:$console" -no-reboot \
  -drive "file=$mnt/vm1/drive0/restore/$p2,format=raw,if=virtio,snapshot=on" \
  -device virtio-serial -chardev "socket,path=$T/boot.qga,server=on,wait=off,id=qga0" \
  -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
  -qmp "unix:$T/boot.qmp,server=on,wait=off" </dev/null >"$T/boot.out" 2>&1 &
boot=$!
qb_register_pid $boot
for ((i = 0; i < 900; i++)); do
  grep -aq 'QB-GUEST-READY' "$console" 2>/dev/null && break
  if grep -aq 'QB-GUEST-FAILED\|Kernel panic' "$console" 2>/dev/null || ! _qb_alive $boot; then
    tail -n 20 "$console" >&2; cat "$T/boot.out" >&2
    qb_die "the guest booted from a restore image failed"
  fi
  sleep 0.1
done
grep -aq 'QB-GUEST-READY' "$console" || { tail -n 20 "$console" >&2; qb_die "no QB-GUEST-READY within 90 s"; }
grep -aq 'EXT4-fs (vda): mounted' "$console" || qb_log "note: no EXT4 mount line on the console"
qb_log "guest up from the restore image in $(( $(date +%s) - t0 )) s"
"$QMPCMD" --timeout 5 "$T/boot.qmp" quit >/dev/null 2>&1 || true
_qb_wait_gone $boot
# snapshot=on: the restore image is unchanged
qb_cmp "$T/v2.raw" "$mnt/vm1/drive0/restore/$p2"
fault_check_points "after the boot"
fault_assert_running vm1
echo "as-disk: ok"
