#!/usr/bin/env bash
# A chain file deleted behind the program's back: `inc` exits 5 (inc impossible),
# qmprebase refuses to rebase or merge points that need the lost layer (and
# never writes other bytes), points below it stay readable, `auto` starts a new
# chain with a full that is exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"
dir=$T/store/dm/drive0

qb_vm_start dm drive0:qcow2:32M
qb_guest_random_writes dm drive0 8 "$seed"
qb_backup_expect 0 dm full
files=("$(qb_newest_layer "$dir")"); qb_capture dm drive0 "$T/p0.raw"
for i in 1 2 3; do
  qb_guest_random_writes dm drive0 4 $((seed + i))
  qb_backup_expect 0 dm inc
  files+=("$(qb_newest_layer "$dir")"); qb_capture dm drive0 "$T/p$i.raw"
done

rm "$dir/${files[2]}"                         # the middle INC is lost
qb_guest_random_writes dm drive0 4 $((seed + 9))
rc=0; qb_backup dm inc || rc=$?
[ $rc -eq 5 ] || qb_die "inc on a damaged chain exited $rc, expected 5"
[ "$(qb_newest_layer "$dir")" = "${files[3]}" ] || qb_die "the failed inc left a layer"

rc=0; "$QMPREBASE" rebase --dir "$dir" 2> "$T/err" || rc=$?
[ $rc -eq 1 ] || qb_die "rebase of a damaged chain exited $rc, expected 1"
grep -qi damaged "$T/err" || qb_die "rebase did not say the chain is damaged: $(cat "$T/err")"
[ "$(qb_layers "$dir" | tr '\n' ' ')" = "${files[0]} ${files[1]} ${files[3]} " ] \
  || qb_die "the refused rebase changed the chain: $(qb_layers "$dir" | tr '\n' ' ')"
rc=0; "$QMPREBASE" merge --dir "$dir" --until "$(qb_layer_id "${files[3]}")" \
  --targetfile "$T/bad.raw" 2>/dev/null || rc=$?
[ $rc -eq 1 ] && [ ! -e "$T/bad.raw" ] || qb_die "merge of a point above the lost layer: exit $rc"
qb_check_merge "$dir" "$(qb_layer_id "${files[0]}")" "$T/p0.raw"
qb_check_merge "$dir" "$(qb_layer_id "${files[1]}")" "$T/p1.raw"

qb_backup_expect 0 dm auto
f=$(qb_newest_layer "$dir")
[[ $f == FULL-* ]] || qb_die "auto on a damaged chain made $f, expected a FULL"
qb_capture dm drive0 "$T/p4.raw"
qb_check_merge "$dir" "$(qb_layer_id "$f")" "$T/p4.raw"
qb_guest_random_writes dm drive0 4 $((seed + 10))
qb_backup_expect 0 dm inc
f=$(qb_newest_layer "$dir"); qb_capture dm drive0 "$T/p5.raw"
qb_check_merge "$dir" "$(qb_layer_id "$f")" "$T/p5.raw"
echo "damaged chain: refused, new chain exact"
