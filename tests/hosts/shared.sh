#!/usr/bin/env bash
# One store on a GlusterFS volume shared by two hosts: host A and host B each
# mount the volume with a client of their own and run qmpbackupfs for their
# own VMs; a restore host mounts it a third time, read-only (glusterfs
# --read-only), and runs qmpbackupfs -o ro without any socket (restore only).
#  - every backup of both hosts reads back exactly (against qemu-img convert -U
#    of the disk at that moment) through all three mounts;
#  - a point committed on A is listed on B and on the restore host within a
#    bound (measured, printed);
#  - readers on B and the restore host, reading every listed point in a loop
#    while A and B back up, never see a point that is not whole;
#  - the per-VM lock holds across hosts: a lock held through B's client makes
#    A's backup fail with EBUSY; a backup of VM "mig" running on A makes B's
#    (same VM folder, another QEMU) fail with EBUSY;
#  - host A (its daemon and its GlusterFS client) killed -9 mid-backup
#    releases the lock: B backs the VM up after it moved (stop on A, start on
#    B with the same disk), the leftovers of A are cleaned, every earlier
#    point still reads exactly, and B continues A's chain (QEMU saved the
#    persistent bitmap into the qcow2 at the stop);
#  - B's QEMU killed -9 and the VM back on A (mounted again): the bitmap was
#    not saved, so A starts a new chain with the reason in its status.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/hosts/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp md5sum
qb_need_fuse
qb_tmpdir
gl_need

# Visibility bound (seconds) asserted for a committed point on another host:
# the GlusterFS attribute cache (1 s) plus the mount's own scan recheck, with
# a wide margin for a loaded machine.
LIMIT=30

gl_brick_start b1
gl_mount "$T/hostA" b1
gl_mount "$T/hostB" b1
GL_CLIENT_OPTS=--read-only gl_mount "$T/hostR" b1    # the restore host cannot write
mkdir -m 0700 "$T/hostA/store"
! touch "$T/hostR/store/x" 2>/dev/null || qb_die "the restore host's mount is writable"

qb_vm_start vmA drive0:qcow2:16M
qb_vm_start vmB drive0:qcow2:16M
qb_vm_start migA drive0:qcow2:32M
qb_vm_start migB drive0:qcow2:32M
S=$T/sockets
# speed: A's jobs last long enough for the test to catch one and hold it
gl_fs_mount PID_A "$T/hostA/store" "$T/mntA" -o speed=4M -o "vm=vmA:$S/vmA.qmp" -o "vm=mig:$S/migA.qmp"
gl_fs_mount PID_B "$T/hostB/store" "$T/mntB" -o "vm=vmB:$S/vmB.qmp" -o "vm=mig:$S/migB.qmp"
gl_fs_mount PID_R "$T/hostR/store" "$T/mntR" -o ro
MNTS="$T/mntA $T/mntB $T/mntR"

declare -A sum       # "vm/point" -> md5 of the disk captured for it
maxvis=0             # slowest listing on another host (ms)

# Back up VM (on the host mounted at MNT) with TEXT ("full", "inc", ...): capture
# the disk first (the VM is paused: it stays put), then check the point shows
# on the other mounts within LIMIT s; remembers the capture's md5.
backup_on() {
  local mnt=$1 vm=$2 text=$3 qvm=${4:-$2} r p t0 ms m
  qb_capture "$qvm" drive0 "$T/cap.raw"
  r=$(qb_fs_control "$mnt/$vm/backup" "$text")
  [ "$r" = OK ] || qb_die "$text backup of $vm on $mnt: $r: $(cat "$mnt/$vm/status")"
  t0=$(gl_now_ms)
  p=$(readlink "$mnt/$vm/drive0/restore/latest.img")
  sum[$vm/$p]=$(gl_md5 "$T/cap.raw")
  for m in $MNTS; do
    [ "$m" = "$mnt" ] && continue
    ms=$(gl_wait_listed "$m/$vm/drive0/restore" "$p" "$t0" "$LIMIT") \
      || qb_die "$vm/$p committed on $mnt is not listed on $m after ${LIMIT}s"
    (( ms > maxvis )) && maxvis=$ms
  done
  LAST=$p
}

# Check every remembered point of VM on mount MNT byte for byte.
check_points() {
  local mnt=$1 vm=$2 k p got
  for k in "${!sum[@]}"; do
    [ "${k%%/*}" = "$vm" ] || continue
    p=${k#*/}
    got=$(gl_md5 "$mnt/$vm/drive0/restore/$p") || qb_die "$vm/$p unreadable on $mnt"
    [ "$got" = "${sum[$k]}" ] || qb_die "$vm/$p on $mnt differs from the disk captured for it"
  done
}

# Read every listed point of VM on MNT in a loop until $T/stop exists; one
# line "POINT MD5" (or "POINT ERROR") per read into FILE.
reader() {
  local mnt=$1 vm=$2 out=$3 f n
  while [ -d "$T" ] && [ ! -e "$T/stop" ]; do
    for f in "$mnt/$vm/drive0/restore/"*.img; do
      n=${f##*/}
      [ "$n" = latest.img ] || [ ! -e "$f" ] && continue
      if m=$(gl_md5 "$f" 2>/dev/null); then echo "$n $m"; else echo "$n ERROR"; fi
    done
    sleep 0.05
  done > "$out"
}

# ---- 1. two hosts, one store, a restore host; readers during backups ----
qb_guest_write vmA drive0 "write -P 0x41 0 4M"
qb_guest_write vmB drive0 "write -P 0x42 1M 4M"
backup_on "$T/mntA" vmA full
backup_on "$T/mntB" vmB full
reader "$T/mntR" vmA "$T/reads-R" & RD1=$!
reader "$T/mntB" vmA "$T/reads-B" & RD2=$!
reader "$T/mntA" vmB "$T/reads-A" & RD3=$!
qb_register_pid "$RD1"; qb_register_pid "$RD2"; qb_register_pid "$RD3"   # stopped on a failure
for i in 1 2 3 4 5 6; do
  qb_guest_write vmA drive0 "write -P $((0x50 + i)) $((i * 1024 * 1024)) 1M"
  qb_guest_write vmB drive0 "write -P $((0x60 + i)) $((i * 512 * 1024)) 256k"
  (( i % 3 == 0 )) && qb_guest_write vmA drive0 "write -z $(((i - 1) * 1024 * 1024)) 512k"
  (( i % 3 == 1 )) && qb_guest_write vmB drive0 "discard 1M 64k"
  backup_on "$T/mntA" vmA inc
  backup_on "$T/mntB" vmB inc
done
touch "$T/stop"
wait "$RD1" "$RD2" "$RD3"
r=$(qb_fs_control "$T/mntR/vmA/backup" full)
[ "$r" = EROFS ] || qb_die "a backup through the read-only restore mount: $r (expected EROFS)"
nreads=0
for f in reads-R:vmA reads-B:vmA reads-A:vmB; do
  while read -r p m; do
    [ "$m" != ERROR ] || qb_die "${f#*:}/$p listed on ${f%%:*} could not be read"
    [ "$m" = "${sum[${f#*:}/$p]:-}" ] || qb_die "${f#*:}/$p read on ${f%%:*} while backups ran is not the point committed"
    nreads=$((nreads + 1))
  done < "$T/${f%%:*}"
done
(( nreads > 0 )) || qb_die "the readers read nothing"
for m in $MNTS; do
  check_points "$m" vmA
  check_points "$m" vmB
done
[ "$(qb_json /dev/stdin 'd["last"]["level"]' < "$T/mntA/vmA/status")" = inc ] \
  || qb_die "A's chain did not continue: $(cat "$T/mntA/vmA/status")"
qb_log "${#sum[@]} points exact on 3 mounts; $nreads reads during backups all whole;" \
       "slowest listing on another host ${maxvis} ms"
echo "visibility_max_ms=$maxvis"

# ---- 2. the per-VM lock across hosts ----
qb_guest_write migA drive0 "write -P 0x71 0 8M"
backup_on "$T/mntA" mig full migA
qb_guest_write migA drive0 "write -P 0x72 4M 2M"
backup_on "$T/mntA" mig inc migA

# A lock held through host B's client: A's backup is refused.
python3 -c '
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
sys.stdin.read()
' "$T/hostB/store/mig/.lock" < <(while [ -d "$T" ] && [ ! -e "$T/unlock" ]; do sleep 0.1; done) > "$T/locker.out" &
LOCKER=$!
qb_register_pid "$LOCKER"
for ((i = 0; i < 100; i++)); do grep -q locked "$T/locker.out" && break; sleep 0.1; done
grep -q locked "$T/locker.out" || qb_die "the test could not take the lock through host B"
r=$(qb_fs_control "$T/mntA/mig/backup" inc)
[ "$r" = EBUSY ] || qb_die "A's backup while B holds the lock: $r (expected EBUSY)"
grep -q "already running" "$T/mntA/mig/status" || qb_die "A's status does not say why: $(cat "$T/mntA/mig/status")"
touch "$T/unlock"
wait "$LOCKER"

# A backup running on A (its job, slowed by speed=4M, held paused through
# A's QEMU as soon as the test sees it): B's backup of
# the same VM folder, from another QEMU, is refused.
qb_guest_write migA drive0 "write -P 0x73 10M 6M"
qb_guest_write migB drive0 "write -P 0x74 0 1M"
qb_fs_control "$T/mntA/mig/backup" full > "$T/a-bg.out" & BG=$!
job=""
for ((i = 0; i < 300; i++)); do
  job=$(qb_qmp migA query-block-jobs | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j[0]["device"] if j else "")')
  [ -n "$job" ] && break
  sleep 0.05
done
[ -n "$job" ] || qb_die "A's backup job did not start: $(cat "$T/a-bg.out")"
qb_qmp migA block-job-pause "{\"device\":\"$job\"}" >/dev/null \
  || qb_die "could not pause A's job (it ended before the test could hold it)"
r=$(qb_fs_control "$T/mntB/mig/backup" full)
[ "$r" = EBUSY ] || qb_die "B's backup while A's runs: $r (expected EBUSY)"
ls -a "$T/hostR/store/mig/drive0" | grep -q '^\.tmp-' || qb_die "A's backup wrote no temp file"

# Host A dies mid-backup: its daemon and its GlusterFS client, killed -9.
CLIENT_A=$(gl_client_pid "$T/hostA") || qb_die "no GlusterFS client for host A"
kill -9 "$PID_A" "$CLIENT_A"
wait "$BG" 2>/dev/null || true
_qb_wait_gone "$PID_A"
_qb_wait_gone "$CLIENT_A"
ls -a "$T/hostR/store/mig/drive0" | grep -q '^\.tmp-' || qb_die "the temp file vanished before recovery"
# The VM moves: stopped on A, started on B with the same disk (same name).
qb_vm_stop migA
qb_vm_stop migB
awk '{ $4 = "'"$(qb_vm_image migA drive0)"'"; print }' "$T/vm/migA.disks" > "$T/vm/migB.disks"
_qb_vm_launch migB
qb_guest_write migB drive0 "write -P 0x75 20M 1M"
MNTS="$T/mntB $T/mntR"
# The qcow2 disk carries the persistent bitmap QEMU saved at its clean stop on
# A: B continues the chain A left (an incremental), and reads back exactly.
backup_on "$T/mntB" mig auto migB
cat "$T/mntB/mig/status" > "$T/mig-status.json"
lvl=$(qb_json "$T/mig-status.json" 'd["last"]["level"]')
[ "$lvl" = inc ] || qb_die "after a clean move B took a $lvl backup: $(cat "$T/mig-status.json")"
if ls -a "$T/hostR/store/mig/drive0" "$T/hostR/store/mig" | grep -q '^\.tmp-'; then
  qb_die "A's leftovers were not cleaned: $(ls -a "$T/hostR/store/mig/drive0")"
fi
check_points "$T/mntR" mig

# Host B's QEMU crashes; the VM comes back on host A (its daemon restarted):
# the bitmap in the disk was not saved, so A starts a new chain and says why.
qb_guest_write migB drive0 "write -P 0x76 2M 1M"
qb_vm_kill migB
_qb_vm_launch migA
gl_mount "$T/hostA2" b1
gl_fs_mount PID_A "$T/hostA2/store" "$T/mntA2" -o "vm=mig:$S/migA.qmp"
MNTS="$T/mntA2 $T/mntB $T/mntR"
backup_on "$T/mntA2" mig auto migA
cat "$T/mntA2/mig/status" > "$T/mig-status.json"
lvl=$(qb_json "$T/mig-status.json" 'd["last"]["level"]')
why=$(qb_json "$T/mig-status.json" 'd["last"].get("reason","")')
[ "$lvl" = full ] || qb_die "after a crash A took a $lvl backup: $(cat "$T/mig-status.json")"
case $why in
  *inconsistent*|*"no bitmap"*) ;;
  *) qb_die "the new chain after the crash gives no clear reason: '$why'" ;;
esac
qb_log "after the crash and the move back: $lvl backup, reason: $why"
qb_guest_write migA drive0 "write -P 0x77 3M 1M"
backup_on "$T/mntA2" mig inc migA
[ "$(qb_json /dev/stdin 'd["last"]["level"]' < "$T/mntA2/mig/status")" = inc ] \
  || qb_die "A does not continue its new chain"
for m in $MNTS; do
  check_points "$m" mig
  check_points "$m" vmA
done
n=$(ls "$T/mntR/mig/drive0/restore" | grep -vc latest.img)
[ "$n" = 5 ] || qb_die "mig has $n points, expected 5 (A: 2, B: 1, A again: 2): $(ls "$T/mntR/mig/drive0/restore")"
qb_log "lock across hosts, kill -9 mid-backup and the move: all mig points exact"
