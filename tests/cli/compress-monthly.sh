#!/usr/bin/env bash
# Compressed backups (--compress) read back exactly and really hold compressed
# clusters; --monthly puts the chain in STORE/<vm>/<YYYY-MM>/<disk>, and
# qmprebase merge and rebase work on that layout.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"

# --- compressed -------------------------------------------------------------
dir=$T/store/cz/drive0
qb_vm_start cz drive0:qcow2:32M
qb_guest_write cz drive0 "write -P 0x41 0 8M"
qb_guest_random_writes cz drive0 6 "$seed"
qb_backup_expect 0 cz full --compress
files=("$(qb_newest_layer "$dir")"); qb_capture cz drive0 "$T/c0.raw"
for i in 1 2; do
  qb_guest_write cz drive0 "write -P $((0x50 + i)) $((i * 4 * 1024 * 1024)) 2M"
  qb_guest_write cz drive0 "write -z $((i * 1024 * 1024)) 64k"
  qb_guest_random_writes cz drive0 4 $((seed + i))
  qb_backup_expect 0 cz inc --compress
  files+=("$(qb_newest_layer "$dir")"); qb_capture cz drive0 "$T/c$i.raw"
done
qemu-img check "$dir/${files[0]}" | grep -Eq '[1-9][0-9.]*% compressed' \
  || qb_die "the compressed full holds no compressed clusters: $(qemu-img check "$dir/${files[0]}")"
for i in 0 1 2; do
  qb_check_merge "$dir" "$(qb_layer_id "${files[$i]}")" "$T/c$i.raw"
  qb_check_qemu_img "$dir" "${files[$i]}" "$T/c$i.raw"
done
echo "compressed: 3 points exact"

# --- monthly ----------------------------------------------------------------
qb_vm_start mo drive0:qcow2:32M
qb_guest_random_writes mo drive0 8 $((seed + 7))
qb_backup_expect 0 mo full --monthly
month=$(ls "$T/store/mo" | grep -E '^[0-9]{4}-[0-9]{2}$' | tail -n 1)
[ -n "$month" ] || qb_die "no YYYY-MM folder in $(ls -A "$T/store/mo" | tr '\n' ' ')"
[ ! -e "$T/store/mo/drive0" ] || qb_die "--monthly also wrote STORE/mo/drive0"
dir=$T/store/mo/$month/drive0
files=("$(qb_newest_layer "$dir")"); qb_capture mo drive0 "$T/m0.raw"
for i in 1 2 3; do
  qb_guest_random_writes mo drive0 4 $((seed + 10 + i))
  qb_backup_expect 0 mo auto --monthly
  f=$(qb_newest_layer "$dir")
  [[ $f == INC-* ]] || qb_die "monthly auto in the same month made $f"
  files+=("$f"); qb_capture mo drive0 "$T/m$i.raw"
done
for i in 0 1 2 3; do
  qb_check_merge "$dir" "$(qb_layer_id "${files[$i]}")" "$T/m$i.raw"
done
"$QMPREBASE" rebase --dir "$dir" --until "$(qb_layer_id "${files[2]}")" >/dev/null
[ "$(qb_layers "$dir" | tr '\n' ' ')" = "FULL-$(qb_layer_id "${files[2]}") ${files[3]} " ] \
  || qb_die "monthly rebase left $(qb_layers "$dir" | tr '\n' ' ')"
qb_check_merge "$dir" "$(qb_layer_id "${files[2]}")" "$T/m2.raw"
qb_check_merge "$dir" "$(qb_layer_id "${files[3]}")" "$T/m3.raw"
echo "monthly: layout STORE/mo/$month/drive0, 4 points exact, rebase in the month folder"
