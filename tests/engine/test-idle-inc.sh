#!/bin/bash
# An INC of disks that did not change since the previous point runs no
# block job: the empty targets, whose headers name the previous layers, are
# committed as they are and no bitmap is touched.  Checked against a real
# QEMU with a qcow2 and a raw disk: the point is byte-exact, its layers hold
# no cluster and name their predecessors, `qemu-img check` is clean; QEMU
# saw no backup job for it (JOB_STATUS_CHANGE events on a second monitor);
# the chain bitmaps still record, so data, zeroes and discards written right
# after it are all in the next INC; an explicit quiesce without an agent
# still fails; nothing of ours is left in QEMU.
#
# usage: test-idle-inc.sh QMPBACKUP QMPCMD
set -euo pipefail
QMPBACKUP=${1:?usage: test-idle-inc.sh QMPBACKUP QMPCMD}
QMPCMD=${2:?usage: test-idle-inc.sh QMPBACKUP QMPCMD}
export QMPBACKUP QMPCMD
. "${QB_SOURCE_DIR:?}/tests/lib/vm.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp
qb_tmpdir

TGT=$T/store/vm1
# A third monitor for the event listener below (each serves one client).
cat > "$T/qemu" <<WRAP
#!/bin/sh
exec $QB_QEMU "\$@" -qmp "unix:$T/events.qmp,server=on,wait=off"
WRAP
chmod +x "$T/qemu"
QB_QEMU=$T/qemu
qb_vm_start vm1 drive0:qcow2:64M data1:raw:32M
SOCK=$(qb_vm_socket vm1)

# Run a backup at LEVEL (more ARGS after it); the point's id in $ID, the
# result line in $LINE, the exit code in $RC.
backup() {
  local level=$1 out
  shift
  RC=0
  out=$("$QMPBACKUP" --socket "$SOCK" backup --level "$level" --target "$TGT" --quiet \
        --no-quiesce "$@" 2>"$T/err") || RC=$?
  ID=${out%% *}
  LINE=$out
}

# Expect the last backup to have made a LEVEL point.
expect_ok() {
  [ "$RC" -eq 0 ] || qb_die "backup failed (exit $RC): $(cat "$T/err")"
  [ "$(awk '{ print $2 }' <<< "$LINE")" = "$1" ] || qb_die "expected a $1 backup, got: $LINE"
}

# The layer file of point ID of DISK.
layer() {
  local f
  for f in "$TGT/$1"/FULL-"$2" "$TGT/$1"/INC-"$2"; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  qb_die "no layer file of restore point $2 for disk $1"
}

# Check point ID of DISK against the VM's disk as it is now.
check_point() {
  qb_capture vm1 "$1" "$T/expect.raw"
  rm -f "$T/got.raw"
  qemu-img convert -O raw "$(layer "$1" "$2")" "$T/got.raw"
  qb_cmp "$T/expect.raw" "$T/got.raw" || qb_die "restore point $2 of $1 differs from the VM's disk"
}

# The bitmaps of the VM as "disk name count recording" lines.
bitmaps() {
  qb_qmp vm1 query-block | python3 -c '
import json, sys
for d in json.load(sys.stdin):
    for b in d.get("inserted", {}).get("dirty-bitmaps", []):
        print(d["device"], b["name"], b["count"], b["recording"])' | sort
}

# Check that the layer of point ID of DISK is empty and names PREV.
check_empty_layer() {
  local f prev=$3 map
  f=$(layer "$1" "$2")
  qemu-img check -q "$f" || qb_die "$f: qemu-img check found errors"
  [ "$(qemu-img info --output=json "$f" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("backing-filename",""))')" \
    = "$(basename "$prev")" ] || qb_die "$f does not name $prev as its backing file"
  map=$(qemu-img map --output=json \
        "json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$f\"}}")
  ! grep -q '"present": true' <<< "$map" || qb_die "$f holds clusters although nothing changed: $map"
}

# Record JOB_STATUS_CHANGE events of the VM (events go to every monitor) in
# $T/events until a backup job whose id does not start with the prefix in
# $T/stop-at (written later) concludes.
python3 - "$T/events.qmp" "$T/events" "$T/stop-at" > "$T/listener.out" 2>&1 <<'PY' &
import json, os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
json.loads(f.readline())
f.write('{"execute": "qmp_capabilities"}\n'); f.flush()
json.loads(f.readline())
open(sys.argv[2] + ".ready", "w").close()
out = open(sys.argv[2], "w")
deadline = time.time() + 240
while time.time() < deadline:
    m = json.loads(f.readline())
    if m.get("event") != "JOB_STATUS_CHANGE":
        continue
    d = m["data"]
    out.write("%s %s\n" % (d["id"], d["status"])); out.flush()
    if os.path.exists(sys.argv[3]) and d["status"] == "concluded" \
       and not d["id"].startswith(open(sys.argv[3]).read().strip()) \
       and not d["id"].endswith("-create"):
        break
PY
LISTENER=$!
qb_register_pid "$LISTENER"
for ((i = 0; i < 200; i++)); do [ -e "$T/events.ready" ] && break; sleep 0.05; done
[ -e "$T/events.ready" ] || qb_die "the event listener did not start: $(cat "$T/listener.out")"

# --- a full, then an INC of unchanged disks --------------------------------
qb_guest_write vm1 drive0 "write -P 0x33 1M 3M"
qb_guest_write vm1 data1 "write -P 0x44 2M 1M"
backup full
expect_ok full
FULL=$ID
bitmaps > "$T/bitmaps.before"
backup inc
expect_ok inc
IDLE=$ID
for d in drive0 data1; do
  check_point "$d" "$IDLE"
  check_empty_layer "$d" "$IDLE" "$(layer "$d" "$FULL")"
done
bitmaps > "$T/bitmaps.after"
cmp -s "$T/bitmaps.before" "$T/bitmaps.after" \
  || qb_die "an unchanged INC touched the bitmaps: $(cat "$T/bitmaps.before") -> $(cat "$T/bitmaps.after")"
grep -q ' 0 True$' "$T/bitmaps.after" || qb_die "no empty recording chain bitmap: $(cat "$T/bitmaps.after")"

# An explicit quiesce without an agent is still refused, and takes no point.
n=$(find "$TGT/.points" -name '*.json' | wc -l)
RC=0
"$QMPBACKUP" --socket "$SOCK" backup --level inc --target "$TGT" --quiet --quiesce \
  >/dev/null 2>"$T/err" || RC=$?
[ "$RC" -ne 0 ] || qb_die "an inc with --quiesce and no agent succeeded"
[ "$(find "$TGT/.points" -name '*.json' | wc -l)" = "$n" ] || qb_die "a refused inc left a point"

# --- writes right after it are all in the next INC --------------------------
qb_guest_write vm1 drive0 "write -z 1M 1M"
qb_guest_write vm1 drive0 "discard 2M 1M"
qb_guest_write vm1 drive0 "write -P 0x35 10M 512k"
qb_guest_write vm1 data1 "write -z 2M 64k"
qb_guest_write vm1 data1 "write -P 0x45 20M 64k"
backup inc
expect_ok inc
NEXT=$ID
for d in drive0 data1; do check_point "$d" "$NEXT"; done
# Every earlier point is still exact (each layer's chain read from the store).
qb_guest_write vm1 drive0 "write -P 0x36 30M 64k"
backup inc
expect_ok inc
check_point drive0 "$ID"

# --- QEMU saw no backup job for the unchanged INC ---------------------------
# Job ids are "qmpbackup-<first 8 digits of the store's target id>-<disk
# index>", and "...-create" for target images.  A full into a second store
# (other job ids) marks the end: the listener stops when its job concludes.
prefix=qmpbackup-$(head -c 8 "$TGT/.target-id")-
echo "$prefix" > "$T/stop-at"
TGT=$T/store2/vm1
backup full
expect_ok full
for ((i = 0; i < 600; i++)); do kill -0 "$LISTENER" 2>/dev/null || break; sleep 0.05; done
kill -0 "$LISTENER" 2>/dev/null && qb_die "the event listener did not see the marker job end"
wait "$LISTENER" || qb_die "the event listener failed: $(cat "$T/listener.out")"
created=$(awk -v p="$prefix" 'index($1, p) == 1 && $1 !~ /-create$/ && $2 == "created"' "$T/events" | wc -l)
# FULL 2, then the INCs with writes 2 + 2; the unchanged INC none.
[ "$created" -eq 6 ] \
  || qb_die "expected 6 backup jobs of the first store (none for the unchanged INC), saw $created: $(cat "$T/events")"
# The store writes every target image: QEMU ran no blockdev-create job.
creates=$(awk '$1 ~ /-create$/ && $2 == "created"' "$T/events" | wc -l)
[ "$creates" -eq 0 ] || qb_die "QEMU created $creates target images (the store writes them): $(cat "$T/events")"

# Nothing of ours is left in QEMU.
jobs=$(qb_qmp vm1 query-jobs)
! grep -q '"id": *"qmpbackup-' <<< "$jobs" || qb_die "a job is left in QEMU: $jobs"
nodes=$(qb_qmp vm1 query-named-block-nodes)
! grep -q '"node-name": *"qmpbackup-' <<< "$nodes" || qb_die "a node is left in QEMU: $nodes"
qb_log "ok: unchanged INC without a job, exact, bitmaps untouched; later writes all in the next INC"
