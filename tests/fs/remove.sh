#!/usr/bin/env bash
# Removing restore points through the mount: `rm restore/T.img` removes point
# T from every disk of the VM while every other point keeps its bytes; the
# newest point is refused (EPERM); a point whose FULL must be rewritten in
# place is refused (EBUSY) while a reader has it open and that reader keeps
# reading it; a middle point can go while being read and its reader keeps
# reading the right bytes; other changes answer EPERM (EROFS in files/);
# `-o keep=` prunes after each backup; `-o ro` mounts restore-only.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp md5sum
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store"
qb_vm_start vm1 drive0:qcow2:16M data1:raw:8M
qb_qmp vm1 cont >/dev/null
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
C=$mnt/vm1/backup
points=()
backup() {        # backup LEVEL: take a backup, capture both disks as point N
  local n=${#points[@]} d
  [ "$(qb_fs_control "$C" "$1")" = OK ] || qb_die "backup $1 failed: $(cat "$mnt/vm1/status")"
  points+=("$(readlink "$mnt/vm1/drive0/restore/latest.img")")
  for d in drive0 data1; do qb_capture vm1 "$d" "$T/p$n.$d.raw"; done
}
check() {         # check N...: point N of both disks reads as captured
  for n in "$@"; do
    for d in drive0 data1; do
      cmp -s "$mnt/vm1/$d/restore/${points[$n]}" "$T/p$n.$d.raw" \
        || qb_die "point $n (${points[$n]}) of $d differs"
    done
  done
}
listed() { ls "$mnt/vm1/$1/restore/" | grep -qx -- "$2"; }
errno_of() { python3 -c '
import errno, os, sys
try:
    getattr(os, sys.argv[1])(*sys.argv[2:])
    print("OK")
except OSError as e:
    print(errno.errorcode[e.errno])' "$@"; }

qb_guest_write vm1 drive0 "write -P 0x11 0 4M"
qb_guest_write vm1 data1 "write -P 0x12 0 2M"
backup full
for i in 1 2 3 4; do
  qb_guest_write vm1 drive0 "write -P $((0x20 + i)) $((i * 1024 * 1024)) 128k"
  qb_guest_write vm1 data1 "write -P $((0x30 + i)) $((i * 256 * 1024)) 64k"
  backup inc
done
check 0 1 2 3 4

# The newest point is refused; latest.img and other names are refused.
[ "$(errno_of unlink "$mnt/vm1/drive0/restore/${points[4]}")" = EPERM ] || qb_die "rm of the newest point was not EPERM"
[ "$(errno_of unlink "$mnt/vm1/drive0/restore/latest.img")" = EPERM ] || qb_die "rm latest.img was not EPERM"
[ "$(errno_of mkdir "$mnt/vm1/drive0/restore/x")" = EPERM ] || qb_die "mkdir in restore/ was not EPERM"
[ "$(errno_of rename "$mnt/vm1/drive0/restore/${points[1]}" "$mnt/vm1/drive0/restore/x.img")" = EPERM ] \
  || qb_die "rename of a restore image was not EPERM"
[ "$(errno_of unlink "$mnt/vm1/status")" = EPERM ] || qb_die "rm status was not EPERM"
ls "$mnt/vm1/drive0/files/${points[1]%.img}/" >/dev/null 2>&1 || true
[ "$(errno_of mkdir "$mnt/vm1/drive0/files/x")" = EROFS ] || qb_die "mkdir in files/ was not EROFS"
check 0 1 2 3 4
echo "refusals: EPERM for the tree, EROFS for files/, nothing changed"

# A middle point goes while a reader has it open: the reader still reads it
# (one process reads the first 64 KiB, waits while the point is removed,
# then reads the rest; every byte is compared with the capture).
python3 - "$mnt/vm1/data1/restore/${points[2]}" "$T/p2.data1.raw" "$T/go" "$T/ready" <<'PY' &
import os, sys, time
img, ref, go, ready = sys.argv[1:]
fd = os.open(img, os.O_RDONLY)
first = os.pread(fd, 65536, 0)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
rest = b""
off = len(first)
while True:
    b = os.pread(fd, 1 << 20, off)
    if not b:
        break
    rest += b
    off += len(b)
want = open(ref, "rb").read()
sys.exit(0 if first + rest == want else 1)
PY
reader=$!
for _ in $(seq 200); do [ -e "$T/ready" ] && break; sleep 0.05; done
[ -e "$T/ready" ] || qb_die "the reader did not open point 2"
rm "$mnt/vm1/drive0/restore/${points[2]}"
listed drive0 "${points[2]}" && qb_die "point 2 still listed for drive0"
listed data1 "${points[2]}" && qb_die "point 2 still listed for data1 (a point is all disks)"
touch "$T/go"
wait $reader || qb_die "the open reader of point 2 read wrong bytes"
check 0 1 3 4
grep -q "removed restore point" "$mnt/vm1/status" || qb_die "status does not tell the removal: $(cat "$mnt/vm1/status")"
echo "rm of a middle point: gone from both disks, its open reader unharmed, others exact"

# The oldest point (its FULL is rewritten in place) is refused while open.
exec 3<"$mnt/vm1/drive0/restore/${points[0]}"
[ "$(errno_of unlink "$mnt/vm1/drive0/restore/${points[0]}")" = EBUSY ] || qb_die "rm of an open FULL point was not EBUSY"
cmp -s - "$T/p0.drive0.raw" <&3 || qb_die "the reader of point 0 read wrong bytes"
exec 3<&-
grep -q "open for reading" "$mnt/vm1/status" || qb_die "status does not say why: $(cat "$mnt/vm1/status")"
rm "$mnt/vm1/drive0/restore/${points[0]}"
listed drive0 "${points[0]}" && qb_die "point 0 still listed"
check 1 3 4
echo "rm of the oldest point: EBUSY while open, then folded into the next, others exact"

# The next backup continues the chain.
qb_guest_write vm1 drive0 "write -P 0x77 5M 64k"
backup inc
check 1 3 4 5
qb_fs_unmount "$mnt"

# -o keep=: prune after each backup (fuse_opt splits the option at commas).
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,keep=last=2,hourly=1"
check 1 3 4 5
backup inc
n=$(ls "$mnt/vm1/drive0/restore/" | grep -vc '^latest.img$')
[ "$n" -eq 2 ] || qb_die "keep=last=2: $n points left: $(ls "$mnt/vm1/drive0/restore/")"
check 5 6
grep -q "prune (keep=)" "$mnt/vm1/status" || qb_die "status does not tell the prune"
qb_fs_unmount "$mnt"
echo "-o keep=last=2: two points after the next backup, both exact"

# -o ro: restore only.
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,ro"
check 5 6
[ "$(qb_fs_control "$C" full)" = EROFS ] || qb_die "a backup on a read-only mount was not EROFS"
[ "$(errno_of unlink "$mnt/vm1/drive0/restore/${points[5]}")" = EROFS ] || qb_die "rm on -o ro was not EROFS"
qb_fs_unmount "$mnt"
echo "-o ro: restore images readable, backups and removals EROFS"
