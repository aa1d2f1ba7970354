#!/bin/bash
# The backup engine end to end through `qmpbackup`, against a real QEMU:
# full, inc, auto; zeroed/discarded ranges between backups (an INC must hold
# zero clusters there); auto after a QEMU restart (qcow2 bitmap persists, raw
# does not); a resized disk; a deleted INC; a failure in the middle of the
# jobs (store full) that must publish nothing and lose no change; two backups
# in one second; stable disk names for -blockdev disks; the store folder's
# target id (a link or garbage in its place is refused, nothing is lost).
#
# Every restore point is checked byte for byte: the VM's disk (paused,
# flushed, `qemu-img convert -U`) against `qemu-img convert` of the store's
# layer file, whose backing names lead qemu-img down the chain.
#
# usage: test-engine.sh QMPBACKUP QMPCMD
set -euo pipefail
QMPBACKUP=${1:?usage: test-engine.sh QMPBACKUP QMPCMD}
QMPCMD=${2:?usage: test-engine.sh QMPBACKUP QMPCMD}
export QMPBACKUP QMPCMD
. "${QB_SOURCE_DIR:?}/tests/lib/vm.sh"
qb_need qemu-img qemu-system-x86_64 cmp
qb_tmpdir

STORE=$T/store
TGT=$STORE/vm1
qb_vm_start vm1 drive0:qcow2:64M data1:raw:32M
SOCK=$(qb_vm_socket vm1)

# Run a backup of vm1 with ARGS...; prints qmpbackup's result line; keeps its exit code in $RC.
backup() {
  local out
  RC=0
  out=$("$QMPBACKUP" --socket "$SOCK" backup --target "$TGT" --quiet "$@" 2>"$T/err") || RC=$?
  LAST_ID=${out%% *}
  LAST_LINE=$out
  [ -z "$out" ] || qb_log "backup $*: $out"
  return 0
}

# Expect the last backup to have succeeded with level LEVEL.
expect_ok() {
  [ "$RC" -eq 0 ] || qb_die "backup failed (exit $RC): $(cat "$T/err")"
  local level
  level=$(awk '{ print $2 }' <<< "$LAST_LINE")
  [ "$level" = "$1" ] || qb_die "expected a $1 backup, got: $LAST_LINE"
}

# The layer file of restore point ID for DISK (FULL-, INC- or COPY-).
layer() {
  local f
  for f in "$TGT/$1"/FULL-"$2" "$TGT/$1"/INC-"$2" "$TGT/$1"/COPY-"$2"; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  qb_die "no layer file of restore point $2 for disk $1"
}

# Check restore point ID of DISK against the VM's disk as it is now.
check_point() {
  local disk=$1 id=$2 f
  f=$(layer "$disk" "$id")
  qb_capture vm1 "$disk" "$T/expect.raw"
  rm -f "$T/got.raw"
  qemu-img convert -O raw "$f" "$T/got.raw"
  qb_cmp "$T/expect.raw" "$T/got.raw" || qb_die "restore point $id of $disk differs from the VM's disk"
}

# Number of committed restore points of vm1.
npoints() { find "$TGT/.points" -maxdepth 1 -name '*.json' | wc -l; }

# --- full, then inc with data, zeroes and discards -------------------------
qb_guest_write vm1 drive0 "write -P 0x33 1M 3M"
qb_guest_write vm1 drive0 "write -P 0x34 40M 2M"
qb_guest_write vm1 data1 "write -P 0x44 2M 1M"
backup --level full
expect_ok full
FULL1=$LAST_ID
check_point drive0 "$FULL1"
check_point data1 "$FULL1"

qb_guest_write vm1 drive0 "write -z 1M 1M"         # trap 1: zeroed since the FULL
qb_guest_write vm1 drive0 "discard 40M 1M"         # discarded since the FULL
qb_guest_write vm1 drive0 "write -P 0x35 10M 512k"
qb_guest_write vm1 data1 "write -z 2M 64k"
backup --level inc
expect_ok inc
INC1=$LAST_ID
check_point drive0 "$INC1"
check_point data1 "$INC1"
# The INC must itself say "zero" at 1M (a zero cluster), not leave it to the FULL.
map=$(qemu-img map --output=json "$(layer drive0 "$INC1")")
grep -q '"start": 1048576, "length": [0-9]*, "depth": 0, "present": true, "zero": true' <<< "$map" \
  || qb_die "the INC holds no zero cluster for the range zeroed since the FULL: $map"
# The chain's bitmap now counts only what changed after the INC: an auto with no
# writes is an inc, and qemu-img sees nothing new in it.
backup --level auto
expect_ok inc
check_point drive0 "$LAST_ID"
[ "$(qemu-img map --output=json "$(layer drive0 "$LAST_ID")" | grep -c '"depth": 0, "present": true, "zero": false')" -eq 0 ] \
  || qb_die "an INC without guest writes carries data"
# No helper bitmaps or target nodes are left behind in QEMU.
bitmaps=$(qb_qmp vm1 query-block)
[ "$(grep -o '"name": *"qmpbackup-[^"]*"' <<< "$bitmaps" | sort -u | wc -l)" -eq 1 ] \
  || qb_die "expected exactly one qmpbackup bitmap name, got: $bitmaps"
nodes=$(qb_qmp vm1 query-named-block-nodes)
! grep -q "\"node-name\": *\"qmpbackup-" <<< "$nodes" || qb_die "target nodes were left behind: $nodes"
# A run that died after its commit leaves its "next" bitmap in QEMU; the next
# inc must clean it up and still capture every write.
bm=$(grep -o '"name": *"qmpbackup-[^"]*"' <<< "$bitmaps" | head -1 | sed 's/.*"\(qmpbackup-[^"]*\)"/\1/')
qb_qmp vm1 block-dirty-bitmap-add "{\"node\": \"drive0\", \"name\": \"qmpbackup-next-${bm#qmpbackup-}\"}" >/dev/null
qb_guest_write vm1 drive0 "write -P 0x5a 5M 256k"
backup --level inc
expect_ok inc
check_point drive0 "$LAST_ID"

# --- restart: the qcow2 bitmap persists, the raw one does not --------------
qb_guest_write vm1 drive0 "write -P 0x36 5M 1M"
qb_vm_restart vm1
SOCK=$(qb_vm_socket vm1)
backup --level auto --include drive0
expect_ok inc
check_point drive0 "$LAST_ID"
backup --level inc
[ "$RC" -eq 5 ] || qb_die "inc without data1's bitmap: expected exit 5, got $RC"
grep -q "data1 has no bitmap" "$T/err" || qb_die "unclear error: $(cat "$T/err")"
qb_guest_write vm1 data1 "write -P 0x45 8M 1M"
backup --level auto
expect_ok full
grep -q "data1 has no bitmap" <<< "$LAST_LINE" || qb_die "auto full without the reason: $LAST_LINE"
check_point drive0 "$LAST_ID"
check_point data1 "$LAST_ID"

# --- a resized disk starts a new chain --------------------------------------
qb_vm_resize vm1 drive0 80M
qb_guest_write vm1 drive0 "write -P 0x37 70M 1M"
backup --level auto
expect_ok full
grep -q "changed size" <<< "$LAST_LINE" || qb_die "auto full without the resize reason: $LAST_LINE"
check_point drive0 "$LAST_ID"

# --- a deleted INC: no inc on top of the gap ---------------------------------
qb_guest_write vm1 drive0 "write -P 0x38 12M 1M"
backup --level inc
expect_ok inc
rm -f "$(layer drive0 "$LAST_ID")"
qb_guest_write vm1 drive0 "write -P 0x39 13M 1M"
backup --level inc
[ "$RC" -eq 5 ] || qb_die "inc after a deleted INC: expected exit 5, got $RC ($(cat "$T/err"))"
backup --level auto
expect_ok full
check_point drive0 "$LAST_ID"

# --- a failure in the middle of the jobs publishes nothing, loses nothing ---
if [ "$(id -u)" -eq 0 ]; then
  qb_guest_write vm1 drive0 "write -P 0x3a 20M 6M"   # more than the small store can take
  before=$(npoints)
  save=$T/save-drive0
  cp -a "$TGT/drive0" "$save"
  used=$(du -sk "$save" | awk '{ print $1 }')
  mount -t tmpfs -o size=$((used + 1024))k tmpfs "$TGT/drive0"
  qb_register_mount "$TGT/drive0"
  cp -a "$save"/. "$TGT/drive0"/
  backup --level inc
  [ "$RC" -eq 1 ] || qb_die "backup into a full store: expected exit 1, got $RC"
  qb_log "expected failure: $(cat "$T/err")"
  [ "$(npoints)" -eq "$before" ] || qb_die "a failed backup left a restore point"
  ! ls -A "$TGT/drive0" | grep -q '^\.tmp-' || qb_die "a failed backup left temporary files"
  ! ls -A "$TGT/data1" | grep -q '^\.tmp-' || qb_die "a failed backup left temporary files"
  umount "$TGT/drive0"
  backup --level inc
  expect_ok inc
  check_point drive0 "$LAST_ID"       # holds the 6M written before the failed run
  check_point data1 "$LAST_ID"
else
  qb_log "not root: skipping the full-store failure case"
fi

# --- two backups in one second both survive ----------------------------------
same=0
for attempt in 1 2 3 4 5; do
  backup --level copy
  expect_ok copy
  a=$LAST_ID
  backup --level copy
  expect_ok copy
  b=$LAST_ID
  if [ "${a:0:16}" = "${b:0:16}" ]; then same=1; break; fi
done
[ "$same" = 1 ] || qb_die "could not take two backups within one second"
[ "$a" != "$b" ] || qb_die "two backups got the same id $a"
check_point drive0 "$a"
check_point drive0 "$b"

# --- Ctrl-C cancels cleanly; a VM that dies mid-backup leaves nothing ------

# Start a slow backup (ARGS...) in the background; wait until its job runs.
slow_backup() {
  "$QMPBACKUP" --socket "$SOCK" backup --target "$TGT" --quiet --speed 1M "$@" \
    >"$T/bg.out" 2>"$T/bg.err" &
  BG=$!
  local i
  for ((i = 0; i < 100; i++)); do
    qb_qmp vm1 query-jobs | grep -q '"status":"running"' && return 0
    sleep 0.1
  done
  qb_die "the backup job did not start: $(cat "$T/bg.err")"
}

# No temporary files, qmpbackup jobs or target nodes are left.
expect_clean() {
  ! find "$TGT" -name '.tmp-*' | grep -q . || qb_die "$1 left temporary files"
  [ "$(npoints)" -eq "$2" ] || qb_die "$1 left a restore point"
}

qb_guest_write vm1 drive0 "write -P 0x3b 30M 8M"
before=$(npoints)
slow_backup --level inc
kill -INT "$BG"
rc=0; wait "$BG" || rc=$?
[ "$rc" -eq 130 ] || qb_die "canceled backup: expected exit 130, got $rc ($(cat "$T/bg.err"))"
expect_clean "a canceled backup" "$before"
! qb_qmp vm1 query-jobs | grep -q qmpbackup || qb_die "a canceled backup left a job"
nodes=$(qb_qmp vm1 query-named-block-nodes)
! grep -q "\"node-name\": *\"qmpbackup-" <<< "$nodes" || qb_die "a canceled backup left nodes"
backup --level inc
expect_ok inc
check_point drive0 "$LAST_ID"          # the 8M written before the canceled run

qb_guest_write vm1 drive0 "write -P 0x3c 30M 8M"
before=$(npoints)
slow_backup --level inc
qb_vm_kill vm1
rc=0; wait "$BG" || rc=$?
[ "$rc" -eq 3 ] || qb_die "VM killed mid-backup: expected exit 3, got $rc ($(cat "$T/bg.err"))"
expect_clean "a backup whose VM died" "$before"
qb_vm_restart vm1
SOCK=$(qb_vm_socket vm1)
backup --level auto
expect_ok full
# A bitmap added in this QEMU run was never written to the image: it is gone
# ("no bitmap"); one loaded from the image at start is flagged inconsistent.
grep -Eq "drive0 has no bitmap|of disk drive0 is inconsistent" <<< "$LAST_LINE" \
  || qb_die "after a crash: expected a missing or inconsistent bitmap, got $LAST_LINE"
check_point drive0 "$LAST_ID"

# --- exit codes ----------------------------------------------------------------
"$QMPBACKUP" --socket "$T/nonexistent.qmp" backup --level full --target "$TGT" --quiet 2>/dev/null \
  && qb_die "backup of a missing VM succeeded" || rc=$?
[ "$rc" -eq 3 ] || qb_die "unreachable VM: expected exit 3, got $rc"
"$QMPBACKUP" --socket "$SOCK" backup --level sideways --target "$TGT" 2>/dev/null && rc=0 || rc=$?
[ "$rc" -eq 2 ] || qb_die "bad level: expected exit 2, got $rc"

# --- -blockdev disks are named by their device id, across restarts ------------
qb_vm_start vm2 --blockdev disk1:qcow2:16M
SOCK2=$(qb_vm_socket vm2)
"$QMPBACKUP" --socket "$SOCK2" info | grep -q '"name": "disk1"' || qb_die "-blockdev disk not named disk1"
"$QMPBACKUP" --socket "$SOCK2" backup --level full --target "$STORE/vm2" --quiet >/dev/null
qb_guest_write vm2 disk1 "write -P 0x51 1M 1M"
qb_vm_restart vm2
out=$("$QMPBACKUP" --socket "$SOCK2" backup --level auto --target "$STORE/vm2" --quiet)
[ "$(awk '{ print $2 }' <<< "$out")" = inc ] || qb_die "vm2 after restart: expected inc, got $out"
[ -d "$STORE/vm2/disk1" ] || qb_die "vm2's disk directory is not disk1"

# --- the store folder's target id: written once, never through a link ---------
TID=$STORE/vm2/.target-id
[ -f "$TID" ] && [ ! -L "$TID" ] || qb_die "vm2 has no target id file"
tid=$(cat "$TID")
[[ $tid =~ ^[0-9a-f]{16}$ ]] || qb_die "target id '$tid'"
# Count vm2's restore points.
npoints2() { find "$STORE/vm2/.points" -maxdepth 1 -name '*.json' | wc -l; }
before=$(npoints2)
echo "0123456789abcdef" > "$T/outside-id"
mv "$TID" "$T/saved-id"
ln -s "$T/outside-id" "$TID"
rc=0
"$QMPBACKUP" --socket "$SOCK2" backup --level auto --target "$STORE/vm2" --quiet 2>"$T/err" || rc=$?
[ "$rc" -eq 1 ] || qb_die "backup with a linked target id: expected exit 1, got $rc ($(cat "$T/err"))"
grep -q "symbolic link" "$T/err" || qb_die "linked target id: unclear error: $(cat "$T/err")"
[ "$(npoints2)" -eq "$before" ] || qb_die "a backup with a linked target id made a point"
[ "$(cat "$T/outside-id")" = 0123456789abcdef ] || qb_die "the file behind the link was changed"
rm "$TID"
printf 'not an id\n' > "$TID"
rc=0
"$QMPBACKUP" --socket "$SOCK2" backup --level auto --target "$STORE/vm2" --quiet 2>"$T/err" || rc=$?
[ "$rc" -eq 1 ] || qb_die "backup with a damaged target id: expected exit 1, got $rc"
grep -q "does not hold a target id" "$T/err" || qb_die "damaged target id: unclear error: $(cat "$T/err")"
"$QMPBACKUP" --socket "$SOCK2" info --target "$STORE/vm2" >/dev/null 2>"$T/err" \
  && qb_die "info accepted a damaged target id"
mv "$T/saved-id" "$TID"
qb_guest_write vm2 disk1 "write -P 0x52 2M 1M"
out=$("$QMPBACKUP" --socket "$SOCK2" backup --level auto --target "$STORE/vm2" --quiet)
[ "$(awk '{ print $2 }' <<< "$out")" = inc ] || qb_die "vm2 with its target id back: expected inc, got $out"
[ "$(cat "$TID")" = "$tid" ] || qb_die "the target id changed"
qb_log "PASS"
