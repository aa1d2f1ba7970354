#!/usr/bin/env bash
# qmprebase sync: a two-disk VM's chain (full + incrementals, writes, zeroes,
# discards) copied from a store to a plain folder.  A dry run changes nothing;
# runs killed -9 at many moments never leave a listed point incomplete and a
# rerun converges; a stale temp and a layer published without its record are
# picked up; a point the source is still committing waits for the next run; a destination layer of other size or another record is an error
# naming both files and is not overwritten; a linked destination folder is
# never followed; a second run copies nothing; the monthly layout is copied;
# the copy, mounted on its own,
# reads every point exactly.  Then the same into a GlusterFS volume (when it
# can run here), interrupted and rerun.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/hosts/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp md5sum timeout
qb_need_fuse
qb_tmpdir

declare -A sum      # "disk/id" -> md5 of the capture
qb_vm_start vm1 drive0:qcow2:48M data1:raw:16M
mkdir -m 0700 "$T/store"
backup() {
  local d id
  for d in drive0 data1; do qb_capture vm1 "$d" "$T/cap-$d.raw"; done
  qb_backup vm1 "$1" >/dev/null 2>&1 || qb_die "qmpbackup $1 failed: $(cat "$T/last-backup.out")"
  id=$(qb_layer_id "$(qb_newest_layer "$T/store/vm1/drive0")")
  for d in drive0 data1; do sum[$d/$id]=$(gl_md5 "$T/cap-$d.raw"); done
}
qb_guest_write vm1 drive0 "write -P 0x11 0 40M"
qb_guest_write vm1 data1 "write -P 0x21 0 8M"
backup full
for i in 1 2 3 4; do
  qb_guest_write vm1 drive0 "write -P $((0x30 + i)) $((i * 4))M 3M"
  qb_guest_write vm1 drive0 "write -z $((i * 8))M 1M"
  qb_guest_write vm1 data1 "discard $((i * 2))M 512k"
  qb_guest_write vm1 data1 "write -P $((0x40 + i)) $((i * 3))M 64k"
  backup inc
done
npoints=$(ls "$T/store/vm1/.points" | wc -l)
[ "$npoints" = 5 ] || qb_die "expected 5 points in the source, got $npoints"

# Every point listed by a record in store DIR has all its layers, whole.
check_complete() {
  python3 - "$1" "$T/store" <<'EOF'
import json, os, sys
dst, src = sys.argv[1], sys.argv[2]
pts = os.path.join(dst, "vm1", ".points")
for f in os.listdir(pts) if os.path.isdir(pts) else []:
    if f.startswith("."):
        continue
    rec = json.load(open(os.path.join(pts, f)))
    for d in rec["disks"]:
        a, b = os.path.join(dst, "vm1", d["file"]), os.path.join(src, "vm1", d["file"])
        if not os.path.isfile(a) or open(a, "rb").read() != open(b, "rb").read():
            sys.exit("point %s is listed but its layer %s is not whole" % (f, a))
EOF
}

# ---- dry run ----
out=$("$QMPREBASE" sync --from "$T/store" --to "$T/copy" --dry-run)
echo "$out" | grep -q "5 points to copy" || qb_die "dry run said: $out"
[ ! -e "$T/copy" ] || qb_die "the dry run created the destination"

# ---- killed at many moments, rerun until done ----
# Each run is killed a little later than the last; whatever it left, no point
# is listed without all its layers.
kills=0
for delay in 0.02 0.05 0.1 0.15 0.2 0.3 0.4 0.6 0.8 1 1.5 2 3 5 8 30; do
  rc=0
  timeout -s KILL "$delay" "$QMPREBASE" sync --from "$T/store" --to "$T/copy" --vm vm1 \
    > "$T/sync.out" 2>&1 || rc=$?
  check_complete "$T/copy" || qb_die "after a run killed at ${delay}s"
  [ "$rc" = 137 ] && { kills=$((kills + 1)); continue; }
  [ "$rc" = 0 ] || qb_die "sync exited $rc: $(cat "$T/sync.out")"
  break
done
[ "$rc" = 0 ] || qb_die "sync never finished"
qb_log "converged after $kills runs killed -9"
[ "$(ls "$T/copy/vm1/.points" | wc -l)" = 5 ] || qb_die "copy has $(ls "$T/copy/vm1/.points")"
if find "$T/copy" -name '.tmp-*' | grep -q .; then qb_die "temps left: $(find "$T/copy" -name '.tmp-*')"; fi
[ "$(stat -c %a "$T/copy/vm1")" = 700 ] || qb_die "VM folder mode $(stat -c %a "$T/copy/vm1")"
bad=$(find "$T/copy/vm1" -type f ! -name .lock ! -perm 0600 | head -3)
[ -z "$bad" ] || qb_die "files not 0600: $bad"

# A second run copies nothing.
out=$("$QMPREBASE" sync --from "$T/store" --to "$T/copy")
echo "$out" | grep -q "^sync: 0 points copied .* 5 already there" || qb_die "second run: $out"

# ---- a new point; a stale temp and a layer published without its record ----
qb_guest_write vm1 drive0 "write -P 0x55 20M 2M"
backup inc
last=$(qb_layer_id "$(qb_newest_layer "$T/store/vm1/drive0")")
head -c 12345 /dev/urandom > "$T/copy/vm1/drive0/.tmp-INC-$last"
chmod 0600 "$T/copy/vm1/drive0/.tmp-INC-$last"
cp -p "$T/store/vm1/data1/INC-$last" "$T/copy/vm1/data1/INC-$last"
cp -p "$T/store/vm1/data1/.chain/INC-$last.json" "$T/copy/vm1/data1/.chain/"
out=$("$QMPREBASE" sync --from "$T/store" --to "$T/copy")
echo "$out" | grep -q "^sync: 1 point copied (1 layer,.*1 layer already there" || qb_die "resume: $out"
[ ! -e "$T/copy/vm1/drive0/.tmp-INC-$last" ] || qb_die "the stale temp is still there"
check_complete "$T/copy"

# ---- conflicts: never overwritten ----
qb_guest_write vm1 data1 "write -P 0x66 0 1M"
backup inc
last=$(qb_layer_id "$(qb_newest_layer "$T/store/vm1/drive0")")
mkdir -p "$T/copy/vm1/drive0"
head -c 4096 /dev/zero > "$T/copy/vm1/drive0/INC-$last"
rc=0
"$QMPREBASE" sync --from "$T/store" --to "$T/copy" > "$T/sync.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || qb_die "a conflicting layer: sync exited $rc"
grep -q "$T/copy/vm1/drive0/INC-$last.*differs from $T/store/vm1/drive0/INC-$last" "$T/sync.out" \
  || qb_die "the conflict does not name both files: $(cat "$T/sync.out")"
[ "$(stat -c %s "$T/copy/vm1/drive0/INC-$last")" = 4096 ] || qb_die "the conflicting file was overwritten"
[ ! -e "$T/copy/vm1/.points/$last.json" ] || qb_die "a point was listed despite the conflict"
rm "$T/copy/vm1/drive0/INC-$last"
# the same size, another .chain record
cp -p "$T/store/vm1/drive0/INC-$last" "$T/copy/vm1/drive0/INC-$last"
sed 's/"vm"/"vm" /' "$T/store/vm1/drive0/.chain/INC-$last.json" > "$T/copy/vm1/drive0/.chain/INC-$last.json"
rc=0
"$QMPREBASE" sync --from "$T/store" --to "$T/copy" > "$T/sync.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "records differ" "$T/sync.out" || qb_die "another record: $rc $(cat "$T/sync.out")"
rm "$T/copy/vm1/drive0/INC-$last" "$T/copy/vm1/drive0/.chain/INC-$last.json"
"$QMPREBASE" sync --from "$T/store" --to "$T/copy" > "$T/sync.out" || qb_die "after the fix: $(cat "$T/sync.out")"

# ---- a point still being committed in the source (record written, layer
# not yet named): left for the next run, no error ----
qb_guest_write vm1 drive0 "write -P 0x77 30M 1M"
backup inc
last=$(qb_layer_id "$(qb_newest_layer "$T/store/vm1/drive0")")
mv "$T/store/vm1/drive0/INC-$last" "$T/store/vm1/drive0/.tmp-INC-$last"
out=$("$QMPREBASE" sync --from "$T/store" --to "$T/copy") || qb_die "sync during a commit: $out"
echo "$out" | grep -q "point $last is still being committed" || qb_die "during a commit: $out"
[ ! -e "$T/copy/vm1/.points/$last.json" ] || qb_die "a point being committed was listed"
mv "$T/store/vm1/drive0/.tmp-INC-$last" "$T/store/vm1/drive0/INC-$last"
out=$("$QMPREBASE" sync --from "$T/store" --to "$T/copy") || qb_die "sync after the commit: $out"
[ -e "$T/copy/vm1/.points/$last.json" ] || qb_die "the committed point was not copied: $out"

# ---- a linked destination folder is never followed ----
mkdir -p "$T/elsewhere" "$T/copy2"
ln -s "$T/elsewhere" "$T/copy2/vm1"
rc=0
"$QMPREBASE" sync --from "$T/store" --to "$T/copy2" > "$T/sync.out" 2>&1 || rc=$?
[ "$rc" = 1 ] || qb_die "a linked VM folder: sync exited $rc"
[ -z "$(ls -A "$T/elsewhere")" ] || qb_die "sync wrote through a link: $(ls -A "$T/elsewhere")"

# ---- the copy on its own: mounted, every point exact ----
check_mount() {
  local store=$1 mnt=$2 k d id n=0
  qb_fs_mount "$store" "$mnt"
  for k in "${!sum[@]}"; do
    d=${k%%/*}; id=${k#*/}
    p=$(ls "$mnt/vm1/$d/restore" | grep -v latest.img | python3 -c '
import sys
want = sys.argv[1]
for l in sys.stdin:
    l = l.strip()
    x = l[:-4].replace("-", "").replace(":", "")
    if x == want: print(l)' "$id")
    [ -n "$p" ] || qb_die "point $id of $d is not listed in the copy at $store"
    [ "$(gl_md5 "$mnt/vm1/$d/restore/$p")" = "${sum[$k]}" ] || qb_die "$d/$p of the copy at $store is not the disk captured"
    n=$((n + 1))
  done
  qb_fs_unmount "$mnt"
  qb_log "copy at $store: $n disk points exact"
}
check_mount "$T/copy" "$T/mnt"

# ---- the monthly layout (STORE/<vm>/<YYYY-MM>/<disk>) ----
pat=0x78
for lvl in full inc; do
  pat=$((pat + 1))
  qb_guest_write vm1 drive0 "write -P $pat 2M 1M"
  "$QMPBACKUP" --socket "$T/sockets/vm1.qmp" backup --level $lvl --monthly --target "$T/mstore/vm1" \
    > "$T/last-backup.out" 2>&1 || qb_die "monthly $lvl: $(cat "$T/last-backup.out")"
done
qb_capture vm1 drive0 "$T/cap-m.raw"
"$QMPREBASE" sync --from "$T/mstore" --to "$T/mcopy" > "$T/sync.out" || qb_die "monthly sync: $(cat "$T/sync.out")"
mdir=$(find "$T/mcopy/vm1" -mindepth 2 -maxdepth 2 -name drive0)
id=$(ls "$T/mcopy/vm1/.points" | sort | tail -n 1)
qb_check_merge "$mdir" "${id%.json}" "$T/cap-m.raw"

# ---- into a GlusterFS volume, interrupted and rerun ----
if gl_available; then
  gl_brick_start b2
  gl_mount "$T/gl2" b2
  rc=0
  timeout -s KILL 0.3 "$QMPREBASE" sync --from "$T/store" --to "$T/gl2/store2" >/dev/null 2>&1 || rc=$?
  check_complete "$T/gl2/store2" || qb_die "GlusterFS destination after a kill"
  t0=$(gl_now_ms)
  out=$("$QMPREBASE" sync --from "$T/store" --to "$T/gl2/store2") || qb_die "sync to GlusterFS: $out"
  qb_log "to GlusterFS (first run exited $rc): $out ($(( $(gl_now_ms) - t0 )) ms)"
  check_complete "$T/gl2/store2"
  check_mount "$T/gl2/store2" "$T/mnt2"
fi
