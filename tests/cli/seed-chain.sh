#!/usr/bin/env bash
# A chain written the way the Python qmpbackup writes it — FULL-<epoch>-<name>
# and standalone INC-<epoch>-<name> qcow2 files with NO backing name — is read
# correctly by `qmprebase merge` at every point (order from the names' times,
# not from the images), and `qmprebase rebase --until` merges it in place.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-io "$QMPREBASE"
qb_tmpdir

dir=$T/store/seedvm/disk0
size=$((32 << 20))
ref=$T/ref.raw
epoch=1700000000

# Apply qemu-io command CMD to layer LAYER and to the reference.
both() { qb_seed_write "$ref" "$1" "$2"; }

# FULL: data everywhere we will later change.
qb_seed_full "$dir" $epoch disk0 $size "$ref"
full=$dir/FULL-$epoch-disk0.qcow2
cp "$ref" "$T/expect-0.raw"
ids=("$epoch")
layers=("FULL-$epoch-disk0.qcow2")

# Seven standalone INCs, each with data, zeroed ranges (zero clusters) and new data.
RANDOM=42
for i in 1 2 3 4 5 6 7; do
  e=$((epoch + i * 3600))
  inc=$dir/INC-$e-disk0.qcow2
  # Written on top of the previous layer (as a backup job writes it), then made
  # standalone like the seed's files: no backing name.
  qemu-img create -q -f qcow2 -b "${layers[$((i - 1))]}" -F qcow2 "$inc"
  for j in 1 2 3; do
    off=$(( (RANDOM % 500) * 64 * 1024 ))
    len=$(( (RANDOM % 16 + 1) * 64 * 1024 ))
    both "$inc" "write -P $((i * 16 + j)) $off $len"
  done
  off=$(( (RANDOM % 500) * 64 * 1024 ))
  both "$inc" "write -z $off 512k"                   # a zeroed range over older data
  both "$inc" "write -P 0x7$i $((i * 1024 * 1024 + 4096)) 12k"   # unaligned to clusters
  cp "$ref" "$T/expect-$i.raw"
  ids+=("$e")
  layers+=("INC-$e-disk0.qcow2")
done
for l in "${layers[@]:1}"; do qemu-img rebase -q -u -b "" "$dir/$l"; done
[ -z "$(qemu-img info "$dir/${layers[3]}" | grep -i 'backing file')" ] \
  || qb_die "the seed INC should have no backing name"

# Every point through our chain reader, by epoch and by layer name.
for i in "${!ids[@]}"; do
  qb_check_merge "$dir" "${ids[$i]}" "$T/expect-$i.raw"
done
qb_check_merge "$dir" "${layers[5]}" "$T/expect-5.raw"
# A time between two points picks the older one.
qb_check_merge "$dir" "$((epoch + 4 * 3600 + 100))" "$T/expect-4.raw"
# No --until: the newest point; qcow2 output.
"$QMPREBASE" merge --dir "$dir" --targetfile "$T/newest.qcow2" >/dev/null
qemu-img convert -O raw "$T/newest.qcow2" "$T/newest.raw"
qb_cmp "$T/expect-7.raw" "$T/newest.raw"
# merge refuses to overwrite without --force, and exits 2 on bad usage.
rc=0; "$QMPREBASE" merge --dir "$dir" --targetfile "$T/newest.qcow2" 2>/dev/null || rc=$?
[ $rc -eq 1 ] || qb_die "merge over an existing file exited $rc, expected 1"
rc=0; "$QMPREBASE" merge --dir "$dir" 2>/dev/null || rc=$?
[ $rc -eq 2 ] || qb_die "merge without --targetfile exited $rc, expected 2"

# rebase --dry-run changes nothing.
before=$(ls "$dir" | sort)
"$QMPREBASE" rebase --dir "$dir" --until "${ids[4]}" --dry-run
[ "$(ls "$dir" | sort)" = "$before" ] || qb_die "--dry-run changed the directory"

# rebase --until point 4: FULL takes point 4's name, points 0..3 go, 5..7 still read right.
"$QMPREBASE" rebase --dir "$dir" --until "${ids[4]}"
qb_layers "$dir" > "$T/after.txt"
expect_layers=$(printf '%s\n' "FULL-${ids[4]}-disk0.qcow2" "${layers[@]:5}")
[ "$(cat "$T/after.txt")" = "$expect_layers" ] \
  || qb_die "after rebase the layers are $(tr '\n' ' ' < "$T/after.txt")"
qb_check_qemu_img "$dir" "FULL-${ids[4]}-disk0.qcow2" "$T/expect-4.raw"
for i in 4 5 6 7; do
  qb_check_merge "$dir" "${ids[$i]}" "$T/expect-$i.raw"
done
# The INC above the merged FULL now names it as its backing file.
qb_check_qemu_img "$dir" "${layers[5]}" "$T/expect-5.raw"

# rebase of everything left.
"$QMPREBASE" rebase --dir "$dir"
[ "$(qb_layers "$dir")" = "FULL-${ids[7]}-disk0.qcow2" ] || qb_die "full rebase left $(qb_layers "$dir")"
qb_check_merge "$dir" "${ids[7]}" "$T/expect-7.raw"
echo "seed chain: 8 points read correctly, rebased in place twice"
