#!/usr/bin/env bash
# The newest INC of a chain deleted behind the program's back: its point's
# record still names it, and the bitmap was reset when it was taken, so an
# INC on top of the layer before it would miss that point's changes.  `inc`
# exits 5 and names the lost point, leaves no layer; `auto` starts a new
# chain whose FULL is exact, and the next INC is exact.  The same with the
# lost layer's own record (.chain) deleted too.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"
dir=$T/store/ln/drive0

qb_vm_start ln drive0:qcow2:32M
n=0
for round in plain sidecar; do
  qb_guest_random_writes ln drive0 8 $((seed + n)); n=$((n + 1))
  qb_backup_expect 0 ln full
  for i in 1 2; do
    qb_guest_random_writes ln drive0 4 $((seed + n)); n=$((n + 1))
    qb_backup_expect 0 ln inc
  done
  lost=$(qb_newest_layer "$dir")
  [[ $lost == INC-* ]] || qb_die "$round: the newest layer is $lost, expected an INC"
  rm "$dir/$lost"
  [ "$round" = plain ] || rm -f "$dir/.chain/$lost.json" "$dir/.chain/$lost.sums"
  before=$(qb_layers "$dir" | tr '\n' ' ')
  qb_guest_random_writes ln drive0 4 $((seed + n)); n=$((n + 1))
  rc=0; qb_backup ln inc 2> "$T/err" || rc=$?
  [ $rc -eq 5 ] || qb_die "$round: inc after the newest INC was lost exited $rc, expected 5"
  grep -q "is lost" "$T/err" || qb_die "$round: inc did not say a point is lost: $(cat "$T/err")"
  [ "$(qb_layers "$dir" | tr '\n' ' ')" = "$before" ] || qb_die "$round: the refused inc left a layer"

  qb_backup_expect 0 ln auto
  f=$(qb_newest_layer "$dir")
  [[ $f == FULL-* ]] || qb_die "$round: auto after a lost INC made $f, expected a FULL"
  qb_capture ln drive0 "$T/full.raw"
  qb_check_merge "$dir" "$(qb_layer_id "$f")" "$T/full.raw"
  qb_guest_random_writes ln drive0 4 $((seed + n)); n=$((n + 1))
  qb_backup_expect 0 ln inc
  f=$(qb_newest_layer "$dir")
  qb_capture ln drive0 "$T/inc.raw"
  qb_check_merge "$dir" "$(qb_layer_id "$f")" "$T/inc.raw"
done
echo "lost newest INC: refused, new chain exact"
