#!/usr/bin/env bash
# Eight readers compare older restore images with their captures in a loop
# (cmp of the whole image, over and over) while three incs of the same disk are taken
# through the mount: every read is exact, and the new points are exact too.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init

qb_vm_start vm1 drive0:qcow2:64M
qb_qmp vm1 cont >/dev/null
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
qb_guest_random_writes vm1 drive0 20 61
fault_backup vm1 full
for s in 62 63; do
  qb_guest_random_writes vm1 drive0 12 $s
  fault_backup vm1 inc
done
cp "$T/cap/index" "$T/old.index"

# Reader K: cmp every old point against its capture until $T/stop appears;
# counts rounds in $T/reader-K.rounds, writes the failure to $T/reader-K.fail.
reader() {
  local k=$1 rounds=0 vm disk point file
  while [ ! -e "$T/stop" ]; do
    while read -r vm disk point file; do
      if ! cmp "$file" "$mnt/$vm/$disk/restore/$point" > "$T/reader-$k.cmp" 2>&1; then
        { echo "reader $k round $rounds: $point"; cat "$T/reader-$k.cmp"; } > "$T/reader-$k.fail"
        return 1
      fi
    done < "$T/old.index"
    rounds=$((rounds + 1))
    echo "$rounds" > "$T/reader-$k.rounds"
  done
}
pids=()
for k in 1 2 3 4 5 6 7 8; do
  reader "$k" &
  pids+=($!)
done
for s in 64 65 66; do
  qb_guest_random_writes vm1 drive0 12 $s
  fault_backup vm1 inc
done
# every reader did at least one full round while the backups ran or after
for ((i = 0; i < 600; i++)); do
  done_all=1
  for k in 1 2 3 4 5 6 7 8; do [ -s "$T/reader-$k.rounds" ] || done_all=0; done
  [ $done_all = 1 ] && break
  ls "$T"/reader-*.fail >/dev/null 2>&1 && break
  sleep 0.1
done
touch "$T/stop"
fails=0
for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
[ $fails = 0 ] || qb_die "$fails readers saw wrong bytes: $(cat "$T"/reader-*.fail)"
qb_log "reader rounds: $(cat "$T"/reader-*.rounds | tr '\n' ' ')"
fault_check_points "after the incs"
fault_assert_running vm1
echo "readers: ok"
