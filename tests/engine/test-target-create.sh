#!/bin/bash
# Backup targets are written by the store (QEMU only attaches them): for
# disks of many sizes (odd multiples of 512, not multiples of a cluster, one
# of 8 GiB) the FULL and INC images must be what `qemu-img create -f qcow2
# -o compat=1.1` makes, byte for byte (an INC of an idle VM runs no job, so
# its files are exactly what the store wrote: compared with cmp), and: qcow2 v3, 64 KiB clusters, zlib, 16-bit refcounts, the disk's exact
# virtual size, an INC naming its predecessor (relative, format qcow2), mode
# 0600, `qemu-img check` clean, and each restore point byte-identical to the
# VM's disk.  A target that QEMU cannot create (a full store) must fail the
# backup with a clear error, publish nothing, and leave no job or node in
# QEMU; the next backup then succeeds.
#
# usage: test-target-create.sh QMPBACKUP QMPCMD
set -euo pipefail
QMPBACKUP=${1:?usage: test-target-create.sh QMPBACKUP QMPCMD}
QMPCMD=${2:?usage: test-target-create.sh QMPBACKUP QMPCMD}
export QMPBACKUP QMPCMD
. "${QB_SOURCE_DIR:?}/tests/lib/vm.sh"
qb_need qemu-img qemu-system-x86_64 python3
qb_tmpdir

TGT=$T/store/vm1
SIZES=(d1:512 d2:1049088 d3:67108352 d4:104923648 d5:8G d6:65536)
specs=()
for s in "${SIZES[@]}"; do specs+=("${s%%:*}:qcow2:${s#*:}"); done
qb_vm_start vm1 "${specs[@]}"
SOCK=$(qb_vm_socket vm1)

# Run a backup at LEVEL; the new point's id in $ID (exit code in $RC).
backup() {
  local out
  RC=0
  out=$("$QMPBACKUP" --socket "$SOCK" backup --level "$1" --target "$TGT" --quiet --no-quiesce \
        2>"$T/err") || RC=$?
  ID=${out%% *}
}

# Check layer file F of disk DISK (level KIND, predecessor's name PREV or "").
check_image() {
  local disk=$1 f=$2 prev=$3 want size
  want=$(qb_vm_disk_size vm1 "$disk")
  [ "$(stat -c %a "$f")" = 600 ] || qb_die "$f: mode $(stat -c %a "$f"), want 600"
  qemu-img check -q "$f" || qb_die "$f: qemu-img check found errors"
  qemu-img info --output=json "$f" > "$T/info.json"
  python3 - "$T/info.json" "$want" "$prev" <<'PY' || qb_die "$f: wrong image (info above)"
import json, sys
i = json.load(open(sys.argv[1]))
want, prev = int(sys.argv[2]), sys.argv[3]
d = i["format-specific"]["data"]
bad = []
if i["format"] != "qcow2": bad.append("format " + i["format"])
if i["virtual-size"] != want: bad.append("virtual size %d, want %d" % (i["virtual-size"], want))
if i["cluster-size"] != 65536: bad.append("cluster size %d" % i["cluster-size"])
if d["compat"] != "1.1": bad.append("compat " + d["compat"])
if d.get("compression-type") != "zlib": bad.append("compression %s" % d.get("compression-type"))
if d.get("refcount-bits") != 16: bad.append("refcount bits %s" % d.get("refcount-bits"))
if d.get("lazy-refcounts"): bad.append("lazy refcounts")
if d.get("extended-l2"): bad.append("extended L2")
if prev:
    if i.get("backing-filename") != prev: bad.append("backing %s, want %s" % (i.get("backing-filename"), prev))
    if i.get("backing-filename-format") != "qcow2": bad.append("backing format %s" % i.get("backing-filename-format"))
elif "backing-filename" in i:
    bad.append("a FULL with a backing file " + i["backing-filename"])
if bad:
    print(json.dumps(i, indent=1), file=sys.stderr)
    print("; ".join(bad), file=sys.stderr)
    sys.exit(1)
PY
  # The VM stays paused (-S): flush QEMU's cache, then compare (sparse-aware,
  # so the 8 GiB disk costs little).
  qb_guest_write vm1 "$disk" flush
  qemu-img compare -U -q -f qcow2 -F qcow2 "$(qb_vm_image vm1 "$disk")" "$f" \
    || qb_die "$f: restore point differs from the VM's disk"
}

# No job and no node of ours may be left in QEMU.
check_no_leftovers() {
  local jobs nodes
  jobs=$(qb_qmp vm1 query-jobs)
  grep -q '"id": *"qmpbackup-' <<< "$jobs" && qb_die "a job is left in QEMU: $jobs"
  nodes=$(qb_qmp vm1 query-named-block-nodes)
  grep -q '"node-name": *"qmpbackup-' <<< "$nodes" && qb_die "a node is left in QEMU"
  return 0
}

for s in "${SIZES[@]}"; do
  d=${s%%:*}
  qb_guest_write vm1 "$d" "write -P 0x41 0 512"
done
backup full
[ "$RC" -eq 0 ] || qb_die "full backup failed: $(cat "$T/err")"
FULL=$ID
for s in "${SIZES[@]}"; do check_image "${s%%:*}" "$TGT/${s%%:*}/FULL-$FULL" ""; done
check_no_leftovers

prev=$FULL kind=FULL
for round in 1 2; do
  for s in "${SIZES[@]}"; do
    d=${s%%:*} size=$(qb_bytes "${s#*:}")
    qb_guest_write vm1 "$d" "write -P $((0x50 + round)) $(( size - 512 )) 512"
    ((size > 4 << 20)) && qb_guest_write vm1 "$d" "write -z 0 64k"
  done
  backup inc
  [ "$RC" -eq 0 ] || qb_die "inc backup failed: $(cat "$T/err")"
  for s in "${SIZES[@]}"; do
    d=${s%%:*}
    check_image "$d" "$TGT/$d/INC-$ID" "$kind-$prev"
  done
  prev=$ID kind=INC
  check_no_leftovers
done
qb_log "targets of ${#SIZES[@]} sizes: FULL and two INCs as qemu-img makes them"

# The INC files of the idle point $ID (predecessor $prev) must be byte for
# byte what qemu-img create writes for the same size and backing name.
cmp_idle() {
  local d f name
  for s in "${SIZES[@]}"; do
    d=${s%%:*}
    f=$TGT/$d/INC-$ID
    check_image "$d" "$f" "INC-$prev"
    name=$(qemu-img info --output=json "$f" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backing-filename"])')
    rm -f "$T/ref.qcow2"
    qemu-img create -q -u -f qcow2 -o compat=1.1 -b "$name" -F qcow2 "$T/ref.qcow2" \
      "$(qb_vm_disk_size vm1 "$d")"
    cmp "$f" "$T/ref.qcow2" || qb_die "$f: not byte for byte what qemu-img create writes"
  done
}

# An INC with no guest write since the last point: no job runs, so each new
# file is the empty image as written, and must equal qemu-img's byte for
# byte (same size, the same relative backing name, format qcow2).
backup inc
[ "$RC" -eq 0 ] || qb_die "idle inc backup failed: $(cat "$T/err")"
cmp_idle
prev=$ID
check_no_leftovers
qb_log "idle inc: ${#SIZES[@]} targets byte for byte as qemu-img create writes them"

# The same with every target made by QEMU's blockdev-create (the path for
# images the store does not write): an INC with writes, then an idle one,
# whose files must be byte for byte the same as qemu-img's (and so as the
# store's).
for s in "${SIZES[@]}"; do qb_guest_write vm1 "${s%%:*}" "write -P 0x61 0 512"; done
QB_TARGET_CREATE_IN_QEMU=1 backup inc
[ "$RC" -eq 0 ] || qb_die "inc with blockdev-create failed: $(cat "$T/err")"
for s in "${SIZES[@]}"; do check_image "${s%%:*}" "$TGT/${s%%:*}/INC-$ID" "INC-$prev"; done
prev=$ID
QB_TARGET_CREATE_IN_QEMU=1 backup inc
[ "$RC" -eq 0 ] || qb_die "idle inc with blockdev-create failed: $(cat "$T/err")"
cmp_idle
prev=$ID
check_no_leftovers
qb_log "blockdev-create: INC targets as qemu-img makes them, idle ones byte for byte"

# A target QEMU cannot write: disk d6's folder is on a full filesystem.
if [ "$(id -u)" -eq 0 ]; then
  save=$T/save-d6
  cp -a "$TGT/d6" "$save"
  used=$(du -sk "$save" | awk '{ print $1 }')
  mount -t tmpfs -o size=$((used + 64))k tmpfs "$TGT/d6"
  qb_register_mount "$TGT/d6"
  cp -a "$save"/. "$TGT/d6"/
  before=$(ls "$TGT/.points" | wc -l)
  backup inc
  [ "$RC" -ne 0 ] || qb_die "a backup into a full store succeeded"
  grep -q "target image of disk d6" "$T/err" || qb_die "the error does not say what failed: $(cat "$T/err")"
  qb_log "expected failure: $(cat "$T/err")"
  [ "$(ls "$TGT/.points" | wc -l)" -eq "$before" ] || qb_die "a failed backup published a point"
  for s in "${SIZES[@]}"; do
    ! ls -A "$TGT/${s%%:*}" | grep -q '^\.tmp-' || qb_die "a failed backup left temporary files"
  done
  check_no_leftovers
  umount "$TGT/d6"
  backup inc
  [ "$RC" -eq 0 ] || qb_die "inc after the failed one failed: $(cat "$T/err")"
  for s in "${SIZES[@]}"; do check_image "${s%%:*}" "$TGT/${s%%:*}/INC-$ID" "INC-$prev"; done
  check_no_leftovers
else
  qb_log "not root: skipping the full-store case"
fi
qb_log "PASS"
