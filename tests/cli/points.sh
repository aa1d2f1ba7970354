#!/usr/bin/env bash
# The issue's proof: a full, then guest writes (data, zeroes, discards with
# discard=unmap) and an incremental, eight times over.  Every restore point must
# equal the VM's disk captured at that moment — read through `qmprebase merge`
# (our chain reader), through qemu-img on the INC file (backing names), and
# after `qmprebase rebase --until` on a copy of the store.
# QB_SEED=N replays one run; the seed is printed.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"

qb_vm_start vm1 drive0:qcow2:64M
qb_qmp vm1 cont >/dev/null                 # a running VM: captures stop and continue it
qb_guest_write vm1 drive0 "write -P 0x11 0 16M"
qb_guest_random_writes vm1 drive0 10 "$seed"
dir=$T/store/vm1/drive0

qb_backup_expect 0 vm1 full
files=("$(qb_newest_layer "$dir")")
[[ ${files[0]} == FULL-* ]] || qb_die "the full backup made ${files[0]}"
qb_capture vm1 drive0 "$T/p0.raw"

for i in 1 2 3 4 5 6 7 8; do
  # Fixed cases each round (overwrite, zero and discard data the last point had),
  # then random ones.
  qb_guest_write vm1 drive0 "write -P $((0x20 + i)) $((i * 1024 * 1024)) 192k"
  qb_guest_write vm1 drive0 "write -z $(( (i - 1) * 1024 * 1024 )) 128k"
  qb_guest_write vm1 drive0 "discard $(( (i - 1) * 1024 * 1024 + 512 * 1024 )) 256k"
  qb_guest_write vm1 drive0 "write -P $((0x40 + i)) $((40 * 1024 * 1024 + i * 4096)) 4k"
  qb_guest_random_writes vm1 drive0 6 $((seed + i))
  qb_backup_expect 0 vm1 inc
  f=$(qb_newest_layer "$dir")
  [[ $f == INC-* ]] && [ "$f" != "${files[-1]}" ] || qb_die "inc $i made $f"
  files+=("$f")
  qb_capture vm1 drive0 "$T/p$i.raw"
  ! cmp -s "$T/p$((i - 1)).raw" "$T/p$i.raw" || qb_die "round $i changed nothing: the checks would prove little"
done
[ "$(qb_layers "$dir" | wc -l)" -eq 9 ] || qb_die "expected 9 layers, have: $(qb_layers "$dir" | tr '\n' ' ')"

for i in "${!files[@]}"; do
  qb_check_merge "$dir" "$(qb_layer_id "${files[$i]}")" "$T/p$i.raw"
  qb_check_qemu_img "$dir" "${files[$i]}" "$T/p$i.raw"
done
echo "9 restore points equal the disk: qmprebase merge and qemu-img"

# rebase --until on copies of the store: point K becomes the FULL, K..8 stay right.
for k in 3 8; do
  rm -rf "$T/copy"
  cp -a "$T/store" "$T/copy"
  cdir=$T/copy/vm1/drive0
  kid=$(qb_layer_id "${files[$k]}")
  "$QMPREBASE" rebase --dir "$cdir" --until "$kid" >/dev/null
  want=$(printf '%s\n' "FULL-$kid" "${files[@]:$((k + 1))}")
  [ "$(qb_layers "$cdir")" = "$want" ] || qb_die "after rebase --until $kid: $(qb_layers "$cdir" | tr '\n' ' ')"
  for ((i = k; i <= 8; i++)); do
    qb_check_merge "$cdir" "$(qb_layer_id "${files[$i]}")" "$T/p$i.raw"
  done
  qb_check_qemu_img "$cdir" "FULL-$kid" "$T/p$k.raw"
  [ $k -lt 8 ] && qb_check_qemu_img "$cdir" "${files[$((k + 1))]}" "$T/p$((k + 1)).raw"
  # The points before K are gone for this disk.
  rc=0; "$QMPREBASE" merge --dir "$cdir" --until "$(qb_layer_id "${files[0]}")" \
    --targetfile "$T/gone.raw" 2>/dev/null || rc=$?
  [ $rc -ne 0 ] || qb_die "point 0 still readable after rebase --until $kid"
  echo "rebase --until point $k: points $k..8 still equal the disk"
done

# The original store is untouched, and the backup continues after a rebase in place.
"$QMPREBASE" rebase --dir "$dir" --until "$(qb_layer_id "${files[5]}")" >/dev/null
qb_guest_write vm1 drive0 "write -P 0x77 2M 64k"
qb_backup_expect 0 vm1 inc
f=$(qb_newest_layer "$dir")
qb_capture vm1 drive0 "$T/p9.raw"
qb_check_merge "$dir" "$(qb_layer_id "$f")" "$T/p9.raw"
qb_check_merge "$dir" "$(qb_layer_id "${files[6]}")" "$T/p6.raw"
echo "an inc after rebase in place continues the chain"
