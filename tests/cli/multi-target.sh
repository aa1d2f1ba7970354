#!/usr/bin/env bash
# One VM backed up into two stores (a "daily" A and a "weekly" B): each store
# folder has its own target id and its own bitmaps, so a full into one never
# breaks the other's chain.  Interleaved full/inc/auto on both with guest
# writes between; auto on A after a full on B is still an inc; every point of
# both stores equals the disks captured at its moment (qmprebase merge and
# qemu-img down the backing chain).  `info` shows which bitmap belongs to which
# target; a crashed run's "next" bitmap is cleaned up only by its own target;
# a store written by an older version (bitmap "qmpbackup-<chain>", no target
# id) goes on with an inc, and its bitmap survives a full into another store;
# another store's leftover job is never canceled by a backup (exit 4 until
# `cleanup`), an older version's is;
# `cleanup --remove-bitmaps` removes every one of ours and prints
# "Removing bitmap: NAME" for each.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf python3 "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"

qb_vm_start mt drive0:qcow2:32M data1:raw:16M
SOCK=$(qb_vm_socket mt)
declare -a checks=()   # "store disk id" of every point taken

# Back up mt into store S (A|B|C) at LEVEL; expect level GOT; capture both disks.
take() {
  local s=$1 level=$2 want=$3 out id d
  out=$("$QMPBACKUP" --socket "$SOCK" backup --level "$level" --target "$T/store$s/mt" --quiet \
        2> "$T/err") || qb_die "backup $level into store $s failed: $(cat "$T/err")"
  id=${out%% *}
  [ "$(awk '{ print $2 }' <<< "$out")" = "$want" ] \
    || qb_die "backup $level into store $s: expected a $want, got: $out"
  for d in drive0 data1; do
    qb_capture mt "$d" "$T/cap-$s-$d-$id.raw"
    checks+=("$s $d $id")
  done
  echo "store $s: $level -> $out"
}

# Guest writes on both disks (deterministic from step N).
writes() {
  qb_guest_random_writes mt drive0 4 $((seed + $1))
  qb_guest_random_writes mt data1 3 $((seed + 100 + $1))
}

# The qmpbackup bitmaps (names) of disk D in QEMU, sorted.
bitmaps_of() {
  qb_qmp mt query-block | python3 -c 'import json,sys
for b in json.load(sys.stdin):
    if b.get("device") == sys.argv[1]:
        for m in b.get("inserted", {}).get("dirty-bitmaps", []):
            if m["name"].startswith("qmpbackup-"): print(m["name"])' "$1" | sort
}

writes 1; take A full full
writes 2; take B full full
writes 3; take A inc inc          # B's full left A's bitmap alone
writes 4; take A auto inc
writes 5; take B inc inc
writes 6; take A full full        # a new chain in A: only A's old bitmap goes
writes 7; take B auto inc
writes 8; take A auto inc
writes 9; take B full full
writes 10; take A auto inc        # auto on A after a full on B: an inc
writes 11; take B auto inc

tA=$(cat "$T/storeA/mt/.target-id"); tB=$(cat "$T/storeB/mt/.target-id")
[[ $tA =~ ^[0-9a-f]{16}$ && $tB =~ ^[0-9a-f]{16}$ && $tA != "$tB" ]] \
  || qb_die "target ids: A '$tA', B '$tB'"
[ "$(stat -c %a "$T/storeA/mt/.target-id")" = 600 ] || qb_die ".target-id is not 0600"
# Exactly one chain bitmap per store and disk.
for d in drive0 data1; do
  bm=$(bitmaps_of "$d")
  [ "$(grep -c "^qmpbackup-$tA-" <<< "$bm")" -eq 1 ] || qb_die "disk $d: A's bitmaps: $bm"
  [ "$(grep -c "^qmpbackup-$tB-" <<< "$bm")" -eq 1 ] || qb_die "disk $d: B's bitmaps: $bm"
  [ "$(wc -l <<< "$bm")" -eq 2 ] || qb_die "disk $d: unexpected bitmaps: $bm"
done

# info --target A: each of ours names its target; A's are this target's, B's not.
"$QMPBACKUP" --socket "$SOCK" info --json --target "$T/storeA/mt" > "$T/info.json"
python3 - "$T/info.json" "$tA" "$tB" <<'EOF' || qb_die "info does not tell the targets apart: $(cat "$T/info.json")"
import json, sys
d = json.load(open(sys.argv[1])); a, b = sys.argv[2], sys.argv[3]
assert d["target_id"] == a, d["target_id"]
for disk in d["disks"]:
    assert disk["health"] == "ok", disk
    assert disk["bitmap"].startswith("qmpbackup-%s-" % a), disk["bitmap"]
    seen = set()
    for m in disk["bitmaps"]:
        if not m["qmpbackup"]:
            continue
        assert m["target"] in (a, b), m
        assert m["this_target"] == (m["target"] == a), m
        assert m["role"] == "chain", m
        seen.add(m["target"])
    assert seen == {a, b}, seen
EOF
echo "info: bitmaps per target shown"

# A crashed run's "next" bitmap: B's own is removed by B's next backup, never by A's.
chainB=$(bitmaps_of drive0 | grep "^qmpbackup-$tB-" | sed "s/^qmpbackup-$tB-//")
qb_qmp mt block-dirty-bitmap-add "{\"node\": \"drive0\", \"name\": \"qmpbackup-next-$tB-$chainB\"}" >/dev/null
writes 12; take A inc inc
bitmaps_of drive0 | grep -q "^qmpbackup-next-$tB-" || qb_die "a backup into A removed B's next bitmap"
writes 13; take B inc inc
! bitmaps_of drive0 | grep -q "^qmpbackup-next-" || qb_die "B's stale next bitmap was left: $(bitmaps_of drive0)"

# --- a store of an older version: bitmap "qmpbackup-<chain>", no .target-id ---
writes 14; take C full full
tC=$(cat "$T/storeC/mt/.target-id")
qb_qmp mt stop >/dev/null
for d in drive0 data1; do
  old=$(bitmaps_of "$d" | grep "^qmpbackup-$tC-")
  chain=${old#qmpbackup-$tC-}
  persist=false; [ "$d" = drive0 ] && persist=true
  qb_qmp mt block-dirty-bitmap-add "{\"node\": \"$d\", \"name\": \"qmpbackup-$chain\", \"persistent\": $persist}" >/dev/null
  qb_qmp mt block-dirty-bitmap-merge "{\"node\": \"$d\", \"target\": \"qmpbackup-$chain\", \"bitmaps\": [\"$old\"]}" >/dev/null
  qb_qmp mt block-dirty-bitmap-remove "{\"node\": \"$d\", \"name\": \"$old\"}" >/dev/null
done
qb_qmp mt cont >/dev/null
rm "$T/storeC/mt/.target-id"
legacy=qmpbackup-$chain
writes 15; take C inc inc          # goes on with the older name
bitmaps_of drive0 | grep -qx "$legacy" || qb_die "the older version's bitmap is gone after an inc"
"$QMPBACKUP" --socket "$SOCK" info --json --target "$T/storeC/mt" > "$T/infoC.json"
grep -q '"legacy_name": true' "$T/infoC.json" || qb_die "info does not mark the older name: $(cat "$T/infoC.json")"
writes 16; take A full full         # another store's full leaves the older name alone
bitmaps_of drive0 | grep -qx "$legacy" || qb_die "a full into A removed store C's (older-named) bitmap"
writes 17; take C auto inc
writes 18; take C full full         # C's own full replaces it with a new-style name
! bitmaps_of drive0 | grep -qx "$legacy" || qb_die "C's full left its older bitmap"
tC2=$(cat "$T/storeC/mt/.target-id")
[ "$(bitmaps_of drive0 | grep -c "^qmpbackup-$tC2-")" -eq 1 ] || qb_die "C's new bitmap: $(bitmaps_of drive0)"
writes 19; take A auto inc
writes 20; take B auto inc

# --- leftover jobs: an older version's are cleaned up, another store's are not
# canceled (it may be running through another QMP socket): exit 4, then cleanup.
# Start a slow backup job ID into node NODE on drive0, as a run that died would leave it.
leftover_job() {
  qemu-img create -q -f qcow2 "$T/$2.qcow2" 32M
  qb_qmp mt blockdev-add "{\"driver\": \"qcow2\", \"node-name\": \"$2\", \"file\": {\"driver\": \"file\", \"filename\": \"$T/$2.qcow2\"}}" >/dev/null
  qb_qmp mt blockdev-backup "{\"job-id\": \"$1\", \"device\": \"drive0\", \"target\": \"$2\", \"sync\": \"full\", \"auto-finalize\": false, \"auto-dismiss\": false, \"speed\": 4096}" >/dev/null
}
leftover_job qmpbackup-0 qmpbackup-tgt-0
writes 22; take A auto inc           # an older version's leftover: removed, backup runs
qb_qmp mt query-jobs | grep -q qmpbackup-0 && qb_die "the older version's leftover job is still there"
leftover_job "qmpbackup-${tB:0:8}-0" "qmpbackup-tgt-${tB:0:8}-0"
rc=0
"$QMPBACKUP" --socket "$SOCK" backup --level auto --target "$T/storeA/mt" --quiet 2> "$T/err" || rc=$?
[ $rc -eq 4 ] || qb_die "backup beside another store's job exited $rc, expected 4: $(cat "$T/err")"
grep -q "backup job qmpbackup-${tB:0:8}-0 of another store" "$T/err" || qb_die "unclear: $(cat "$T/err")"
qb_qmp mt query-jobs | grep -q "qmpbackup-${tB:0:8}-0" || qb_die "another store's job was canceled"
"$QMPBACKUP" --socket "$SOCK" cleanup > "$T/cleanup.out" || qb_die "cleanup failed"
! qb_qmp mt query-jobs | grep -q qmpbackup || qb_die "cleanup left the job"
writes 23; take A auto inc
writes 24; take B auto inc
echo "leftover jobs: older version's cleaned, another store's refused (exit 4) until cleanup"

# --- every point of every store equals its capture ---------------------------
n=0
for c in "${checks[@]}"; do
  read -r s d id <<< "$c"
  qb_check_merge "$T/store$s/mt/$d" "$id" "$T/cap-$s-$d-$id.raw"
  f=FULL-$id; [ -f "$T/store$s/mt/$d/$f" ] || f=INC-$id
  qb_check_qemu_img "$T/store$s/mt/$d" "$f" "$T/cap-$s-$d-$id.raw"
  n=$((n + 1))
done
echo "$n disk restore points of 3 stores equal the captured disks"

# --- cleanup --remove-bitmaps removes every one of ours, one line each ---------
before=$( (bitmaps_of drive0; bitmaps_of data1) | sort)
qb_qmp mt block-dirty-bitmap-add '{"node": "drive0", "name": "users-own"}' >/dev/null
"$QMPBACKUP" --socket "$SOCK" cleanup --remove-bitmaps > "$T/cleanup.out" \
  || qb_die "cleanup failed: $(cat "$T/cleanup.out")"
cat "$T/cleanup.out"
printed=$(sed -n 's/^Removing bitmap: //p' "$T/cleanup.out" | sort)
[ "$printed" = "$before" ] || qb_die "cleanup printed '$printed', expected '$before'"
[ -z "$( (bitmaps_of drive0; bitmaps_of data1) )" ] || qb_die "cleanup left bitmaps of ours"
qb_qmp mt query-block | grep -q users-own || qb_die "cleanup removed a bitmap that is not ours"
# With the bitmaps gone, both stores say why they take a full.
writes 21
out=$("$QMPBACKUP" --socket "$SOCK" backup --level auto --target "$T/storeA/mt" --quiet)
[[ $out == *"full (auto took a full: "*"has no bitmap"* ]] || qb_die "auto after cleanup: $out"
echo "PASS"
