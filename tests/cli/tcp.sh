#!/usr/bin/env bash
# QMP over TCP (QEMU's -qmp tcp:127.0.0.1:PORT,server=on,wait=off), loopback
# only: qmpbackup --socket tcp:127.0.0.1:PORT takes a full and an inc that
# equal the disk byte for byte (also by host name: tcp:localhost:PORT), info
# and cleanup work over TCP, and the mount backs up a VM given as
# -o vm=NAME:tcp:127.0.0.1:PORT.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf python3 "$QMPCMD"
qb_need_cli
qb_tmpdir
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TCP=tcp:127.0.0.1:$port
# QEMU with one more monitor: the product's, on TCP.
cat > "$T/qemu-tcp" <<SH
#!/bin/sh
exec qemu-system-x86_64 "\$@" -qmp $TCP,server=on,wait=off
SH
chmod +x "$T/qemu-tcp"
QB_QEMU=$T/qemu-tcp qb_vm_start vm1 drive0:qcow2:64M
qb_qmp vm1 cont >/dev/null
# Bounded wait until the TCP monitor listens.
python3 - "$port" <<'PY' || qb_die "QEMU's TCP monitor does not listen on port $port"
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
dir=$T/store/vm1/drive0

qb_guest_write vm1 drive0 "write -P 0x11 0 8M"
"$QMPBACKUP" --socket "$TCP" backup -l full -t "$T/store/vm1" >"$T/full.out" \
  || qb_die "full over TCP failed"
qb_capture vm1 drive0 "$T/p0.raw"
qb_check_merge "$dir" "$(awk '{ print $1 }' "$T/full.out")" "$T/p0.raw"
qb_guest_write vm1 drive0 "write -P 0x22 3M 1M"
qb_guest_write vm1 drive0 "write -z 5M 512k"
"$QMPBACKUP" --socket "tcp:localhost:$port" backup -l inc -t "$T/store/vm1" >"$T/inc.out" \
  || qb_die "inc over TCP (host name) failed"
f1=$(qb_newest_layer "$dir")
[[ $f1 == INC-* ]] || qb_die "the inc over TCP made $f1"
qb_capture vm1 drive0 "$T/p1.raw"
qb_check_merge "$dir" "$(awk '{ print $1 }' "$T/inc.out")" "$T/p1.raw"
qb_check_qemu_img "$dir" "$f1" "$T/p1.raw"
"$QMPBACKUP" --socket "$TCP" info --show bitmaps | grep -q '^drive0: qmpbackup-' \
  || qb_die "info over TCP shows no bitmap"
"$QMPBACKUP" --socket "$TCP" cleanup >/dev/null || qb_die "cleanup over TCP failed"
echo "qmpbackup over TCP: full and inc equal the disk"

# The mount: -o vm=NAME:tcp:HOST:PORT.
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
if [ ! -c /dev/fuse ] || ! command -v fusermount3 >/dev/null || [ ! -x "$QMPBACKUPFS" ]; then
  echo "mount part skipped: no /dev/fuse, fusermount3 or qmpbackupfs"
  exit 0
fi
mnt=$T/mnt
qb_fs_mount "$T/store" "$mnt" -o "vm=tvm:$TCP"
[ -d "$mnt/tvm" ] || qb_die "the mount shows no tvm: $(ls "$mnt")"
grep -q "$TCP" "$mnt/tvm/status" 2>/dev/null || grep -rq "$TCP" "$mnt/.status" 2>/dev/null \
  || qb_log "note: the status does not name the TCP address"
qb_guest_write vm1 drive0 "write -P 0x33 7M 256k"
r=$(qb_fs_control "$mnt/tvm/backup" "full\n")
[ "$r" = OK ] || qb_die "backup through the mount over TCP: $r: $(cat "$mnt/tvm/status" 2>/dev/null)"
qb_capture vm1 drive0 "$T/p2.raw"
qb_cmp "$T/p2.raw" "$mnt/tvm/drive0/restore/latest.img" || qb_die "the mount's point over TCP differs"
qb_guest_write vm1 drive0 "write -P 0x44 9M 64k"
r=$(qb_fs_control "$mnt/tvm/backup" "inc\n")
[ "$r" = OK ] || qb_die "inc through the mount over TCP: $r"
qb_capture vm1 drive0 "$T/p3.raw"
qb_cmp "$T/p3.raw" "$mnt/tvm/drive0/restore/latest.img" || qb_die "the mount's inc over TCP differs"
qb_fs_unmount "$mnt"
# A bad tcp address in -o vm= fails the mount with a clear message.
rc=0; "$QMPBACKUPFS" "$T/store" "$mnt" -f -o "vm=bad:tcp:127.0.0.1" 2>"$T/bad.err" || rc=$?
[ $rc -ne 0 ] && grep -q "tcp:HOST:PORT" "$T/bad.err" || qb_die "a bad tcp address was not refused: $rc $(cat "$T/bad.err")"
# The guest agent stays a unix socket (the thaw guard reaches it by path).
rc=0; "$QMPBACKUPFS" "$T/store" "$mnt" -f -o "vm=bad:$TCP:tcp:127.0.0.1:1" 2>"$T/bad.err" || rc=$?
[ $rc -ne 0 ] && grep -q "guest agent must be a unix socket" "$T/bad.err" \
  || qb_die "a tcp guest agent was not refused: $rc $(cat "$T/bad.err")"
echo "tcp: ok"
