# qmpbackupfs test library for the command-line programs (qmpbackup, qmprebase).
# Source after vm.sh.  The store is $T/store; VM NAME backs up to $T/store/NAME.

# The store directory of VM NAME.
qb_store_vm() { echo "$T/store/$1"; }

# Run qmpbackup for VM NAME: qb_backup NAME LEVEL [EXTRA ARGS...]; output goes to
# $T/last-backup.out (and stderr); returns qmpbackup's exit code.
qb_backup() {
  local name=$1 level=$2 rc=0
  shift 2
  "$QMPBACKUP" --socket "$T/sockets/$name.qmp" backup --level "$level" \
    --target "$T/store/$name" "$@" > "$T/last-backup.out" 2>&1 || rc=$?
  sed "s/^/  qmpbackup: /" "$T/last-backup.out" >&2
  return $rc
}

# Like qb_backup, but fail the test unless qmpbackup exits with EXPECTED.
qb_backup_expect() {
  local expected=$1 rc=0
  shift
  qb_backup "$@" || rc=$?
  [ "$rc" -eq "$expected" ] || qb_die "qmpbackup $* exited $rc, expected $expected"
}

# Print the layer files (FULL-/INC-/COPY-) of store disk directory DIR in id order.
qb_layers() {
  local f
  for f in "$1"/FULL-* "$1"/INC-* "$1"/COPY-*; do
    [ -f "$f" ] || continue
    f=${f##*/}
    echo "${f#*-} $f"
  done | sort | awk '{ print $2 }'
}

# Print the newest layer file name in store disk directory DIR.
qb_newest_layer() { qb_layers "$1" | tail -n 1; }

# Print the restore point id of layer file name FILE ("INC-20261126T045000Z_02" -> "20261126T045000Z_02").
qb_layer_id() { echo "${1#*-}"; }

# Check restore point ID of disk directory DIR (STORE/<vm>[/<month>]/<disk>) against
# raw file EXPECT through `qmprebase merge` (the store's chain reader).
qb_check_merge() {
  local dir=$1 id=$2 expect=$3 out
  out=$T/merge-$$.raw
  rm -f "$out"
  "$QMPREBASE" merge --dir "$dir" --targetfile "$out" --until "$id" >/dev/null \
    || qb_die "qmprebase merge --until $id failed"
  qb_cmp "$expect" "$out" || qb_die "restore point $id (qmprebase merge) differs from the VM's disk"
  rm -f "$out"
}

# Check layer file DIR/FILE against raw EXPECT through qemu-img, following the
# backing names inside the images.
qb_check_qemu_img() {
  local dir=$1 file=$2 expect=$3 out
  out=$T/qimg-$$.raw
  rm -f "$out"
  qemu-img convert -O raw "$dir/$file" "$out" || qb_die "qemu-img convert $file failed"
  qb_cmp "$expect" "$out" || qb_die "layer $file read by qemu-img differs from the VM's disk"
  rm -f "$out"
}

# Print VM's block graph as the guest sees it: each device's qdev path and
# node, then every node name that is not an automatic one (sorted).
qb_block_graph() {
  python3 -c '
import json, sys
for b in json.loads(sys.argv[1]):
    print(b.get("qdev"), b.get("inserted", {}).get("node-name"))
for n in sorted(n["node-name"] for n in json.loads(sys.argv[2])):
    if not n.startswith("#"):
        print(n)' "$(qb_qmp "$1" query-block)" "$(qb_qmp "$1" query-named-block-nodes '{"flat":true}')"
}

# Exit 77 unless qmpbackup and qmprebase answer --version (not yet built: skip).
qb_need_cli() {
  qb_need "$QMPBACKUP" "$QMPREBASE"
  "$QMPBACKUP" --version >/dev/null 2>&1 || { echo "SKIP: $QMPBACKUP does not work yet"; exit 77; }
  "$QMPREBASE" --version >/dev/null 2>&1 || { echo "SKIP: $QMPREBASE does not work"; exit 77; }
}
