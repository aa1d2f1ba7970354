#!/usr/bin/env bash
# The main job, end to end, on a demo VM this script starts itself:
# install what is missing, build, start a small QEMU VM with a real qcow2 disk,
# mount qmpbackupfs, take a full backup with `touch`, let the VM write, take an
# incremental with `echo inc`, list the restore points, copy one out with
# `cp --sparse=always`, and check it byte for byte against the VM's disk.
#
# Usage: contrib/demo.sh [--keep]
#   --keep   leave the VM running and the filesystem mounted afterwards
#            (the script prints how to tear them down)
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
keep=0
[ "${1:-}" = "--keep" ] && keep=1

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "Installing what is missing and building"
contrib/install-deps.sh
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
fs=$src/build/fs/qmpbackupfs
qmpcmd=$src/build/tests/tools/qmpcmd

demo=$(mktemp -d "${TMPDIR:-/tmp}/qmpbackupfs-demo.XXXXXX")
store=$demo/store mnt=$demo/mnt sockets=$demo/sockets
mkdir -p "$store" "$mnt" "$sockets"
qemu_pid=""
cleanup() {
  [ $keep -eq 1 ] && return
  mountpoint -q "$mnt" && fusermount3 -u "$mnt" || true
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$demo"
}
trap cleanup EXIT

say "Starting a demo VM 'web1' with a 256 MiB qcow2 disk (drive0)"
qemu-img create -q -f qcow2 "$demo/web1.qcow2" 256M
qemu-system-x86_64 -machine q35,accel=kvm:tcg -nodefaults -display none -m 128 \
  -drive file="$demo/web1.qcow2",format=qcow2,if=virtio,id=drive0,discard=unmap \
  -qmp unix:"$sockets/web1.qmp",server=on,wait=off \
  -qmp unix:"$demo/admin.qmp",server=on,wait=off \
  -daemonize -pidfile "$demo/qemu.pid"
qemu_pid=$(cat "$demo/qemu.pid")
guest_write() { "$qmpcmd" "$demo/admin.qmp" --hmp "qemu-io drive0 \"$1\"" >/dev/null; }
guest_write "write -P 0x11 0 64M"

say "Mounting: qmpbackupfs $store $mnt -o sockets=$sockets"
"$fs" "$store" "$mnt" -o sockets="$sockets"
run ls -l "$mnt" "$mnt/web1"

say "Full backup: touch web1/backup"
run touch "$mnt/web1/backup"
"$qmpcmd" "$demo/admin.qmp" stop >/dev/null
qemu-img convert -U -O raw "$demo/web1.qcow2" "$demo/expect-full.raw"
"$qmpcmd" "$demo/admin.qmp" cont >/dev/null

say "The VM writes 16 MiB, zeroes 1 MiB, discards 1 MiB"
guest_write "write -P 0x22 100M 16M"
guest_write "write -z 8M 1M"
guest_write "discard 16M 1M"

say "Incremental backup: echo inc > web1/backup"
printf '$ echo inc > %s\n' "$mnt/web1/backup"
echo inc > "$mnt/web1/backup"
"$qmpcmd" "$demo/admin.qmp" stop >/dev/null
qemu-img convert -U -O raw "$demo/web1.qcow2" "$demo/expect-inc.raw"
"$qmpcmd" "$demo/admin.qmp" cont >/dev/null

say "Restore points"
run ls -l "$mnt/web1/drive0/restore/"
run cat "$mnt/web1/status"

say "Copying the restore points out and checking them against the VM's disk"
points=( $(cd "$mnt/web1/drive0/restore" && ls -1 | grep -v '^latest' | LC_ALL=C sort) )
run cp --sparse=always "$mnt/web1/drive0/restore/${points[0]}" "$demo/full.img"
run cp --sparse=always "$mnt/web1/drive0/restore/${points[1]}" "$demo/inc.img"
run cmp "$demo/full.img" "$demo/expect-full.raw"
run cmp "$demo/inc.img" "$demo/expect-inc.raw"
du -h --apparent-size "$demo/inc.img" | sed 's/^/apparent size: /'
du -h "$demo/inc.img" | sed 's/^/on disk:       /'

say "Demo passed: both restore points are byte-exact"
if [ $keep -eq 1 ]; then
  echo "Left running: VM pid $qemu_pid, mount $mnt (store $store)."
  echo "Tear down: fusermount3 -u $mnt; kill $qemu_pid; rm -rf $demo"
fi
