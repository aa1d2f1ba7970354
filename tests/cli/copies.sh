#!/usr/bin/env bash
# The seed's restore recipe: a disk folder copied anywhere (cp -a
# STORE/<vm>/<disk> /tmp/r) restores on its own.  Real qmpbackup fulls and
# incs (data, zero writes, discards with discard=unmap) of a plain and a
# monthly chain; on copies of the disk folders `qmprebase merge` (every
# point, --until) and `qmprebase rebase` (--until and newest) give the disk
# captured at each point, byte for byte.  Copies that really are damaged (a
# truncated layer, a missing middle INC, an INC of another VM or of another
# chain of the same disk renamed into place) are refused with a clear message
# and nothing is written.  A store assembled from copied folders (with and
# without .points) is mounted and shows every point exact.
# QB_SEED=N replays one run; the seed is printed.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf cmp md5sum "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"

# Guest writes of round I on VM NAME: data, zeroes and discards over data the
# last point had, then random ones.
round() {
  local name=$1 i=$2
  qb_guest_write "$name" drive0 "write -P $((0x20 + i)) $((i * 1024 * 1024)) 192k"
  qb_guest_write "$name" drive0 "write -z $(( (i - 1) * 1024 * 1024 )) 128k"
  qb_guest_write "$name" drive0 "discard $(( (i - 1) * 1024 * 1024 + 512 * 1024 )) 256k"
  qb_guest_random_writes "$name" drive0 5 $((seed + i))
}

# Checksums of every file below DIR (names and contents): "nothing written" is
# this staying the same.
tree_sum() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum); }

# Expect `qmprebase ARGS...` to fail with exit 1 and an error matching RE,
# leaving the folder DIR untouched: refuse DIR RE ARGS...
refuse() {
  local dir=$1 re=$2 before rc=0
  shift 2
  before=$(tree_sum "$dir")
  "$QMPREBASE" "$@" > "$T/out" 2> "$T/err" || rc=$?
  [ $rc -eq 1 ] || qb_die "qmprebase $* exited $rc, expected 1: $(cat "$T/err")"
  grep -Eq -e "$re" "$T/err" || qb_die "qmprebase $* did not say /$re/: $(cat "$T/err")"
  [ "$(tree_sum "$dir")" = "$before" ] || qb_die "the refused qmprebase $* changed $dir"
  qb_log "refused as expected: $(head -n 1 "$T/err")"
}

# --- a plain chain: full + 4 incs -------------------------------------------
qb_vm_start vm1 drive0:qcow2:32M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 12M"
qb_guest_random_writes vm1 drive0 8 "$seed"
dir=$T/store/vm1/drive0
qb_backup_expect 0 vm1 full
files=("$(qb_newest_layer "$dir")")
qb_capture vm1 drive0 "$T/p0.raw"
for i in 1 2 3 4; do
  round vm1 $i
  qb_backup_expect 0 vm1 inc
  files+=("$(qb_newest_layer "$dir")")
  qb_capture vm1 drive0 "$T/p$i.raw"
done
[ "$(qb_layers "$dir" | wc -l)" -eq 5 ] || qb_die "expected 5 layers: $(qb_layers "$dir" | tr '\n' ' ')"
for f in "${files[@]}"; do
  [ -f "$dir/.chain/$f.json" ] || qb_die "no per-layer record $dir/.chain/$f.json"
  [ "$(stat -c %a "$dir/.chain/$f.json")" = 600 ] || qb_die "$dir/.chain/$f.json is not 0600"
done
[ "$(stat -c %a "$dir/.chain")" = 700 ] || qb_die "$dir/.chain is not 0700"

# --- the seed's recipe: cp -a of the disk folder, merge every point ------------
cp -a "$dir" "$T/r"
for i in "${!files[@]}"; do
  qb_check_merge "$T/r" "$(qb_layer_id "${files[$i]}")" "$T/p$i.raw"
done
# no --until: the newest point
"$QMPREBASE" merge --dir "$T/r" --targetfile "$T/newest.raw" >/dev/null
qb_cmp "$T/p4.raw" "$T/newest.raw" || qb_die "merge of the copy without --until is not the newest point"
echo "copy of the disk folder: merge of 5 points exact"

# rebase --until K on a copy: K becomes the FULL, K..4 stay exact; then rebase again (newest)
for k in 2 4; do
  rm -rf "$T/r"
  cp -a "$dir" "$T/r"
  kid=$(qb_layer_id "${files[$k]}")
  "$QMPREBASE" rebase --dir "$T/r" --until "$kid" >/dev/null || qb_die "rebase --until $kid of the copy failed"
  want=$(printf '%s\n' "FULL-$kid" "${files[@]:$((k + 1))}")
  [ "$(qb_layers "$T/r")" = "$want" ] || qb_die "after rebase --until $kid: $(qb_layers "$T/r" | tr '\n' ' ')"
  [ -f "$T/r/.chain/FULL-$kid.json" ] || qb_die "no per-layer record for the merged FULL-$kid"
  for ((i = 0; i <= k; i++)); do
    [ ! -e "$T/r/.chain/${files[$i]}.json" ] || qb_die "record of merged ${files[$i]} left behind"
  done
  for ((i = k; i <= 4; i++)); do
    qb_check_merge "$T/r" "$(qb_layer_id "${files[$i]}")" "$T/p$i.raw"
  done
  qb_check_qemu_img "$T/r" "FULL-$kid" "$T/p$k.raw"
  "$QMPREBASE" list --dir "$T/r" > "$T/list" || qb_die "list of the rebased copy failed"
  grep -q "DAMAGED\|damaged:" "$T/list" && qb_die "the rebased copy lists damage: $(cat "$T/list")"
  echo "copy rebased --until point $k: points $k..4 exact"
done
# the last one again, once more with the newest point (nothing left to merge on k=4)
rm -rf "$T/r"; cp -a "$dir" "$T/r"
"$QMPREBASE" rebase --dir "$T/r" --until "$(qb_layer_id "${files[1]}")" >/dev/null
"$QMPREBASE" rebase --dir "$T/r" >/dev/null || qb_die "second rebase of the copy failed"
[ "$(qb_layers "$T/r")" = "FULL-$(qb_layer_id "${files[4]}")" ] \
  || qb_die "after two rebases: $(qb_layers "$T/r" | tr '\n' ' ')"
qb_check_qemu_img "$T/r" "FULL-$(qb_layer_id "${files[4]}")" "$T/p4.raw"
qb_check_merge "$T/r" "$(qb_layer_id "${files[4]}")" "$T/p4.raw"
echo "copy rebased twice (until 1, then newest): exact"

# a copy somewhere else again (another machine: another path, deeper)
mkdir -p "$T/other/a/b"
cp -a "$dir" "$T/other/a/b/disk-copy"
qb_check_merge "$T/other/a/b/disk-copy" "$(qb_layer_id "${files[3]}")" "$T/p3.raw"
"$QMPREBASE" rebase --dir "$T/other/a/b/disk-copy" --until "$(qb_layer_id "${files[3]}")" >/dev/null
qb_check_qemu_img "$T/other/a/b/disk-copy" "FULL-$(qb_layer_id "${files[3]}")" "$T/p3.raw"
qb_check_merge "$T/other/a/b/disk-copy" "$(qb_layer_id "${files[4]}")" "$T/p4.raw"

# --- a monthly chain ----------------------------------------------------------
qb_vm_start mo drive0:qcow2:32M
qb_qmp mo cont >/dev/null
qb_guest_write mo drive0 "write -P 0x31 0 8M"
qb_guest_random_writes mo drive0 6 $((seed + 50))
qb_backup_expect 0 mo full --monthly
month=$(ls "$T/store/mo" | grep -E '^[0-9]{4}-[0-9]{2}$' | tail -n 1)
mdir=$T/store/mo/$month/drive0
mfiles=("$(qb_newest_layer "$mdir")")
qb_capture mo drive0 "$T/m0.raw"
for i in 1 2 3; do
  round mo $i
  qb_backup_expect 0 mo inc --monthly
  mfiles+=("$(qb_newest_layer "$mdir")")
  qb_capture mo drive0 "$T/m$i.raw"
done
cp -a "$mdir" "$T/m"
for i in "${!mfiles[@]}"; do
  qb_check_merge "$T/m" "$(qb_layer_id "${mfiles[$i]}")" "$T/m$i.raw"
done
mid=$(qb_layer_id "${mfiles[2]}")
"$QMPREBASE" rebase --dir "$T/m" --until "$mid" >/dev/null || qb_die "rebase of the monthly copy failed"
qb_check_qemu_img "$T/m" "FULL-$mid" "$T/m2.raw"
qb_check_merge "$T/m" "$mid" "$T/m2.raw"
qb_check_merge "$T/m" "$(qb_layer_id "${mfiles[3]}")" "$T/m3.raw"
echo "copy of the monthly disk folder: merge of 4 points and rebase --until exact"

# --- damaged copies: refused, clearly, nothing written ----------------------
# (the copies below also hold a second chain: every command names its point)
# another chain of the same disk, and another VM, to take INCs from
qb_backup_expect 0 vm1 full
qb_guest_random_writes vm1 drive0 4 $((seed + 70))
qb_backup_expect 0 vm1 inc
other_chain_inc=$(qb_newest_layer "$dir")
[[ $other_chain_inc == INC-* ]] || qb_die "second chain made $other_chain_inc"
qb_vm_start vm2 drive0:qcow2:32M
qb_guest_random_writes vm2 drive0 6 $((seed + 80))
qb_backup_expect 0 vm2 full
qb_guest_random_writes vm2 drive0 6 $((seed + 81))
qb_backup_expect 0 vm2 inc
other_vm_inc=$(qb_newest_layer "$T/store/vm2/drive0")

id2=$(qb_layer_id "${files[2]}"); id3=$(qb_layer_id "${files[3]}"); id4=$(qb_layer_id "${files[4]}")
fresh() { rm -rf "$T/d"; cp -a "$dir" "$T/d"; }

# 1. a truncated layer
fresh
size=$(stat -c %s "$T/d/${files[2]}")
truncate -s $((size - 65536)) "$T/d/${files[2]}"
refuse "$T/d" "truncated|damaged" rebase --dir "$T/d" --until "$id4"
refuse "$T/d" "truncated|damaged" merge --dir "$T/d" --until "$id3" --targetfile "$T/bad.raw"
[ ! -e "$T/bad.raw" ] || qb_die "a refused merge left $T/bad.raw"
qb_check_merge "$T/d" "$(qb_layer_id "${files[1]}")" "$T/p1.raw"   # below it: still exact

# 2. a missing middle INC (with and without its record)
fresh
rm "$T/d/${files[2]}"
refuse "$T/d" "restore point $id2, which is missing" merge --dir "$T/d" --until "$id3" --targetfile "$T/bad.raw"
refuse "$T/d" "restore point $id2, which is missing" rebase --dir "$T/d" --until "$id4"
rm -f "$T/d/.chain/${files[2]}.json"
refuse "$T/d" "damaged" merge --dir "$T/d" --until "$id4" --targetfile "$T/bad.raw"
refuse "$T/d" "damaged" rebase --dir "$T/d" --until "$id3"
[ ! -e "$T/bad.raw" ] || qb_die "a refused merge left $T/bad.raw"
qb_check_merge "$T/d" "$(qb_layer_id "${files[1]}")" "$T/p1.raw"

# 3. an INC of another chain of the same disk renamed into place
fresh
mv "$T/d/$other_chain_inc" "$T/d/${files[2]}"
refuse "$T/d" "another chain|replaced|damaged" merge --dir "$T/d" --until "$id2" --targetfile "$T/bad.raw"
refuse "$T/d" "another chain|replaced|damaged" rebase --dir "$T/d" --until "$id3"

# 4. an INC of another VM renamed into place, alone and with its record
fresh
cp -a "$T/store/vm2/drive0/$other_vm_inc" "$T/d/${files[3]}"
refuse "$T/d" "another chain|replaced|damaged" merge --dir "$T/d" --until "$id3" --targetfile "$T/bad.raw"
refuse "$T/d" "another chain|replaced|damaged" rebase --dir "$T/d" --until "$id4"
fresh
cp -a "$T/store/vm2/drive0/$other_vm_inc" "$T/d/${files[3]}"
sed "s/$(qb_layer_id "$other_vm_inc")/$id3/g" "$T/store/vm2/drive0/.chain/$other_vm_inc.json" \
  > "$T/d/.chain/${files[3]}.json"
refuse "$T/d" "chain|damaged" merge --dir "$T/d" --until "$id4" --targetfile "$T/bad.raw"
refuse "$T/d" "chain|damaged" rebase --dir "$T/d" --until "$id4"
# 5. the same, with the record's length forged to the foreign file's: the
#    backing file its header names gives it away
fresh
cp -a "$T/store/vm2/drive0/$other_vm_inc" "$T/d/${files[3]}"
sed -i -E "s/\"size\": [0-9]+/\"size\": $(stat -c %s "$T/d/${files[3]}")/" "$T/d/.chain/${files[3]}.json"
refuse "$T/d" "another chain" merge --dir "$T/d" --until "$id3" --targetfile "$T/bad.raw"
refuse "$T/d" "another chain" rebase --dir "$T/d" --until "$id4"
[ ! -e "$T/bad.raw" ] || qb_die "a refused merge left $T/bad.raw"
"$QMPREBASE" list --dir "$T/d" > "$T/list" || true
grep -q "damaged" "$T/list" || qb_die "list does not show the damage: $(cat "$T/list")"
echo "damaged copies refused (truncated, missing middle INC, other chain, other VM), nothing written"

# --- a store assembled from copied folders, mounted ---------------------------
if [ -c /dev/fuse ] && command -v fusermount3 >/dev/null && [ -x "${QMPBACKUPFS:-}" ]; then
  . "$QB_SOURCE_DIR/tests/fs/lib.sh"
  s2=$T/store2
  mkdir -p "$s2/vm1" "$s2/mo/$month" "$s2/vmx"
  cp -a "$dir" "$s2/vm1/drive0"                       # no .points
  cp -a "$mdir" "$s2/mo/$month/drive0"                # monthly, no .points
  cp -a "$T/store/mo/.points" "$s2/mo/.points"        # ...and then with them
  cp -a "$dir" "$s2/vmx/renamed"                      # under another VM and disk name
  chmod -R go-rwx "$s2"
  qb_fs_mount "$s2" "$T/mnt"
  check_mount() {  # VM DISK FILES-ARRAY-NAME PREFIX
    local vm=$1 disk=$2 prefix=$4 i f disp
    local -n arr=$3
    for i in "${!arr[@]}"; do
      f=$(qb_layer_id "${arr[$i]}")
      disp=$(echo "$f" | sed -E 's/^(....)(..)(..)T(......)Z/\1-\2-\3T\4Z/')
      qb_cmp "$T/$prefix$i.raw" "$T/mnt/$vm/$disk/restore/$disp.img" \
        || qb_die "mounted copy $vm/$disk point $disp differs"
    done
  }
  check_mount vm1 drive0 files p
  check_mount mo drive0 mfiles m
  check_mount vmx renamed files p
  qb_fs_unmount "$T/mnt"
  echo "store assembled from copied folders: every point of 3 disks exact through the mount"
else
  echo "mount part not run: no /dev/fuse, fusermount3 or qmpbackupfs"
  exit 77
fi
