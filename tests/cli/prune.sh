#!/usr/bin/env bash
# Removing restore points from qcow2 chains: `qmprebase remove` of points in
# the middle of a chain and at its start (a fold into the FULL), `qmprebase
# prune --keep-last`, both on a two-disk VM, and a crash matrix: the removal
# killed with SIGKILL after every step of its journal, then finished by the
# next qmprebase run.  At every moment each point that stays reads exactly
# the disk captured when it was taken (or is refused while busy, never
# wrong); at the end no file is left over and the next backup continues.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"

qb_vm_start vm1 drive0:qcow2:16M data1:raw:8M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 6M"
qb_guest_write vm1 data1 "write -P 0x22 0 3M"
vmdir=$T/store/vm1
ids=()
capture_point() {          # capture_point I: references of point I of both disks
  qb_capture vm1 drive0 "$T/p$1.drive0.raw"
  qb_capture vm1 data1 "$T/p$1.data1.raw"
  ids+=("$(qb_layer_id "$(qb_newest_layer "$vmdir/drive0")")")
}
qb_backup_expect 0 vm1 full
capture_point 0
for i in 1 2 3 4 5 6 7; do
  qb_guest_write vm1 drive0 "write -P $((0x30 + i)) $((i * 1024 * 1024)) 256k"
  qb_guest_write vm1 drive0 "write -z $(( (i - 1) * 1024 * 1024 )) 64k"
  qb_guest_write vm1 data1 "write -P $((0x50 + i)) $((i * 512 * 1024)) 64k"
  qb_guest_random_writes vm1 drive0 4 $((seed + i))
  qb_backup_expect 0 vm1 inc
  capture_point "$i"
done

# check_points STORE_VM_DIR I...: each point I of both disks equals its capture.
check_points() {
  local d=$1; shift
  for i in "$@"; do
    qb_check_merge "$d/drive0" "${ids[$i]}" "$T/p$i.drive0.raw"
    qb_check_merge "$d/data1" "${ids[$i]}" "$T/p$i.data1.raw"
  done
}
# gone STORE_VM_DIR I...: point I is no longer listed for either disk.
gone() {
  local d=$1; shift
  for i in "$@"; do
    ! ls "$d/drive0" "$d/data1" | grep -q -- "-${ids[$i]}\$" \
      || qb_die "point $i (${ids[$i]}) still has a layer file"
    [ ! -e "$d/.points/${ids[$i]}.json" ] || qb_die "point $i still has a record"
  done
}
# leftovers STORE_VM_DIR: no journal, no temp, no orphan .chain record.
leftovers() {
  local d=$1
  [ ! -e "$d/.rewrite.json" ] || qb_die "the rewrite journal is left over"
  ! find "$d" -name '.tmp-*' | grep -q . || qb_die "temps left: $(find "$d" -name '.tmp-*')"
  for disk in drive0 data1; do
    for rec in "$d/$disk"/.chain/*.json; do
      [ -e "$d/$disk/$(basename "$rec" .json)" ] || qb_die "orphan record $rec"
    done
  done
}

# The newest point is never removed; unknown points are refused; dry run changes nothing.
rc=0; "$QMPREBASE" remove --dir "$vmdir" --point "${ids[7]}" 2>"$T/err" || rc=$?
[ $rc -eq 1 ] && grep -q "newest" "$T/err" || qb_die "removing the newest point: rc $rc, $(cat "$T/err")"
rc=0; "$QMPREBASE" remove --dir "$vmdir" --point 20010101T000000Z 2>"$T/err" || rc=$?
[ $rc -eq 1 ] && grep -q "no restore point" "$T/err" || qb_die "unknown point: rc $rc"
before=$(cd "$vmdir" && find . -type f | sort | xargs md5sum)
"$QMPREBASE" remove --dry-run --dir "$vmdir" --point "${ids[1]}" --point "${ids[4]}" >/dev/null
"$QMPREBASE" prune --dry-run --dir "$vmdir" --keep-last 2 >"$T/dry"
grep -q "^remove" "$T/dry" || qb_die "prune --dry-run names nothing to remove: $(cat "$T/dry")"
[ "$(cd "$vmdir" && find . -type f | sort | xargs md5sum)" = "$before" ] || qb_die "a dry run changed the store"
echo "refusals and dry runs: nothing changed"

# The crash matrix, on copies of a one-disk VM's store: remove point 0 (a fold
# into point 1) and point 3 (merged into point 4).
qb_vm_start vm2 disk0:qcow2:8M
qb_qmp vm2 cont >/dev/null
qb_guest_write vm2 disk0 "write -P 0x61 0 3M"
mids=()
for i in 0 1 2 3 4 5; do
  if [ $i -gt 0 ]; then
    qb_guest_write vm2 disk0 "write -P $((0x62 + i)) $((i * 1024 * 1024 + i * 4096)) 192k"
    qb_guest_write vm2 disk0 "write -z $(( (i - 1) * 1024 * 1024 )) 64k"
  fi
  qb_backup_expect 0 vm2 $([ $i -eq 0 ] && echo full || echo inc)
  qb_capture vm2 disk0 "$T/m$i.raw"
  mids+=("$(qb_layer_id "$(qb_newest_layer "$T/store/vm2/disk0")")")
done
pristine=$T/pristine
cp -a "$T/store/vm2" "$pristine"
steps=-1
for ((k = 0; ; k++)); do
  rm -rf "$T/c"; mkdir "$T/c"; cp -a "$pristine" "$T/c/vm2"
  cvm=$T/c/vm2
  rc=0
  QB_REWRITE_KILL_AFTER=$k "$QMPREBASE" remove --dir "$cvm" --point "${mids[0]}" \
    --point "${mids[3]}" >/dev/null 2>"$T/err" || rc=$?
  if [ $rc -eq 0 ]; then
    steps=$((k - 1)); break                  # ran to the end: k exceeded the step count
  fi
  [ $rc -eq 137 ] || qb_die "remove killed after step $k: exit $rc ($(cat "$T/err"))"
  [ -e "$cvm/.rewrite.json" ] || qb_die "killed after step $k but no journal"
  # Interrupted: the fold's and the merge's targets read exactly, or are refused; never wrong.
  for i in 1 4; do
    rc=0; "$QMPREBASE" merge --dir "$cvm/disk0" --until "${mids[$i]}" \
      --targetfile "$T/read.raw" --force >/dev/null 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then
      cmp -s "$T/read.raw" "$T/m$i.raw" || qb_die "after step $k point $i reads WRONG bytes"
    fi
  done
  # The next qmprebase run finishes the removal (prune keeping everything).
  "$QMPREBASE" prune --dir "$cvm" --keep-last 100 >/dev/null
  for i in 1 2 4 5; do qb_check_merge "$cvm/disk0" "${mids[$i]}" "$T/m$i.raw"; done
  for i in 0 3; do
    ! ls "$cvm/disk0" | grep -q -- "-${mids[$i]}\$" || qb_die "after step $k point $i still has a layer"
    [ ! -e "$cvm/.points/${mids[$i]}.json" ] || qb_die "after step $k point $i still has a record"
  done
  [ ! -e "$cvm/.rewrite.json" ] || qb_die "after step $k the journal is left over"
  ! find "$cvm" -name '.tmp-*' | grep -q . || qb_die "after step $k temps are left"
  for rec in "$cvm/disk0"/.chain/*.json; do
    [ -e "$cvm/disk0/$(basename "$rec" .json)" ] || qb_die "after step $k orphan record $rec"
  done
  [ $k -lt 200 ] || qb_die "the journal never ends"
done
[ $steps -ge 10 ] || qb_die "the removal had only $steps steps: the matrix proves little"
echo "crash matrix: killed after each of $steps steps, finished by the next run, points exact"

# Killed in the real store, finished by the next backup (qmpbackup takes the
# lock and rolls the journal forward before it starts).
rc=0
QB_REWRITE_KILL_AFTER=$((steps / 2)) "$QMPREBASE" remove --dir "$T/store/vm2" \
  --point "${mids[0]}" --point "${mids[3]}" >/dev/null 2>&1 || rc=$?
[ $rc -eq 137 ] && [ -e "$T/store/vm2/.rewrite.json" ] || qb_die "the kill in the real store did not happen (rc $rc)"
qb_guest_write vm2 disk0 "write -P 0x7e 5M 64k"
qb_backup_expect 0 vm2 auto
[ ! -e "$T/store/vm2/.rewrite.json" ] || qb_die "the backup did not finish the interrupted removal"
f=$(qb_newest_layer "$T/store/vm2/disk0")
[[ $f == INC-* ]] || qb_die "the backup after the interrupted removal made $f"
qb_capture vm2 disk0 "$T/m6.raw"
mids+=("$(qb_layer_id "$f")")
for i in 1 2 4 5 6; do qb_check_merge "$T/store/vm2/disk0" "${mids[$i]}" "$T/m$i.raw"; done
echo "an interrupted removal is finished by the next backup, which continues the chain"

# In the real store: the same removal, then prune, then the next backup continues.
"$QMPREBASE" remove --dir "$vmdir" --point "${ids[0]}" --point "${ids[1]}" \
  --point "${ids[4]}" --point "${ids[5]}" >"$T/out"
grep -q "removed 4 restore points" "$T/out" || qb_die "remove said: $(cat "$T/out")"
check_points "$vmdir" 2 3 6 7
gone "$vmdir" 0 1 4 5
leftovers "$vmdir"
"$QMPREBASE" prune --dir "$vmdir" --keep-last 2 >"$T/out"
grep -q "^removed" "$T/out" || qb_die "prune removed nothing: $(cat "$T/out")"
check_points "$vmdir" 6 7
gone "$vmdir" 2 3
leftovers "$vmdir"
qb_guest_write vm1 drive0 "write -P 0x99 3M 64k"
qb_guest_write vm1 data1 "write -P 0x98 1M 64k"
qb_backup_expect 0 vm1 auto
f=$(qb_newest_layer "$vmdir/drive0")
[[ $f == INC-* ]] || qb_die "the backup after prune made $f, not an INC continuing the chain"
capture_point 8
check_points "$vmdir" 6 7 8
echo "remove and prune in place: kept points exact, the next inc continues the chain"

# Damaged points never take a healthy point's place in the policy: a new
# chain whose FULL is lost (its INC is damaged) is kept as it is, and
# --keep-last 2 still keeps the two newest healthy points.
qb_backup_expect 0 vm2 full
qb_guest_write vm2 disk0 "write -P 0x7f 6M 64k"
qb_backup_expect 0 vm2 inc
rm -rf "$T/d"; mkdir "$T/d"; cp -a "$T/store/vm2" "$T/d/vm2"
newfull=$(qb_layers "$T/d/vm2/disk0" | grep '^FULL-' | tail -n 1)
rm "$T/d/vm2/disk0/$newfull"
"$QMPREBASE" prune --dir "$T/d/vm2" --keep-last 2 >"$T/out"
for i in 5 6; do
  grep -q "^keep .*(last)" "$T/out" || qb_die "prune kept no healthy point by last: $(cat "$T/out")"
  qb_check_merge "$T/d/vm2/disk0" "${mids[$i]}" "$T/m$i.raw"
done
[ "$(grep -c '(last)' "$T/out")" -eq 2 ] || qb_die "expected two points kept by last: $(cat "$T/out")"
grep -q "damaged chain" "$T/out" || qb_die "the damaged chain's point is not said to be left alone: $(cat "$T/out")"
echo "damaged points are kept as they are and take no healthy point's place"

# A hostile or damaged journal in the store: paths out of the VM folder are
# refused before anything runs, an oversized or broken journal is not
# guessed at; its chains are not served and nothing outside is touched.
rm -rf "$T/h"; mkdir "$T/h"; cp -a "$T/store/vm2" "$T/h/vm2"
echo keep > "$T/outside"
cat > "$T/h/vm2/.rewrite.json" <<'JSON'
{ "version": 1, "op": "prune", "hide": [], "busy": [], "lock": [],
  "steps": [ { "do": "unlink", "file": "../../outside" } ], "done": 0 }
JSON
rc=0; "$QMPREBASE" prune --dir "$T/h/vm2" --keep-last 100 >/dev/null 2>"$T/err" || rc=$?
[ $rc -eq 1 ] && grep -q "unsafe path" "$T/err" || qb_die "a journal step out of the VM folder: rc $rc, $(cat "$T/err")"
[ -e "$T/outside" ] || qb_die "a journal step removed a file outside the store"
head -c 2000000 /dev/zero | tr '\0' '{' > "$T/h/vm2/.rewrite.json"
rc=0; "$QMPREBASE" prune --dir "$T/h/vm2" --keep-last 100 >/dev/null 2>"$T/err" || rc=$?
[ $rc -eq 1 ] && grep -q "cannot be read" "$T/err" || qb_die "an oversized journal: rc $rc, $(cat "$T/err")"
rc=0; "$QMPREBASE" merge --dir "$T/h/vm2/disk0" --until "${mids[6]}" --targetfile "$T/read.raw" \
  --force >/dev/null 2>&1 || rc=$?
[ $rc -ne 0 ] || qb_die "a point was served while an unreadable journal may be rewriting its chain"
echo "hostile and oversized journals: refused, nothing outside touched, chains not served"
