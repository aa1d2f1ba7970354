#!/usr/bin/env bash
# Backups through the control file of a live two-disk VM: touch takes a full,
# `echo inc` incrementals, 30+ points in one chain with writes, zeroed and
# discarded ranges between them; every restore image equals the disk captured
# at its moment, and still does after the chain grew and after a remount.  The
# mount never sits on the QMP socket: the CLI and the test's own QMP client use
# the product socket while mounted.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp md5sum
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store"
qb_vm_start vm1 drive0:qcow2:16M data1:raw:8M
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
[ "$(ls "$mnt")" = vm1 ] || qb_die "VM dirs: $(ls "$mnt")"
C=$mnt/vm1/backup

declare -A sum     # "disk/point" -> md5 of the capture

# Capture both disks and remember their checksums for restore point POINT.
capture_for() {
  local point=$1 d
  for d in drive0 data1; do
    qb_capture vm1 "$d" "$T/cap-$d.raw"
    sum[$d/$point]=$(md5sum < "$T/cap-$d.raw" | cut -d' ' -f1)
  done
}

# The newest restore point of DISK (file name).
newest() { readlink "$mnt/vm1/$1/restore/latest.img"; }

# Check that every known point of both disks reads as captured.
check_all() {
  local k d p got
  for k in "${!sum[@]}"; do
    d=${k%%/*}; p=${k#*/}
    got=$(md5sum < "$mnt/vm1/$d/restore/$p" | cut -d' ' -f1)
    [ "$got" = "${sum[$k]}" ] || qb_die "$d/$p differs from its capture ($1)"
  done
}

qb_guest_write vm1 drive0 "write -P 0x11 0 4M"
qb_guest_write vm1 data1 "write -P 0x21 1M 1M"
qb_capture vm1 drive0 "$T/d0.raw"
qb_capture vm1 data1 "$T/d1.raw"
touch "$C" || qb_die "touch backup failed: $(cat "$mnt/vm1/status")"
p0=$(newest drive0)
[ "$(newest data1)" = "$p0" ] || qb_die "both disks share one restore point"
qb_cmp "$T/d0.raw" "$mnt/vm1/drive0/restore/$p0"
qb_cmp "$T/d1.raw" "$mnt/vm1/data1/restore/$p0"
sum[drive0/$p0]=$(md5sum < "$T/d0.raw" | cut -d' ' -f1)
sum[data1/$p0]=$(md5sum < "$T/d1.raw" | cut -d' ' -f1)
cat "$mnt/vm1/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["last"]["level"]')" = full ] || qb_die "touch took $(cat "$T/status.json")"
[ "$(qb_json "$T/status.json" 'd["state"]')" = idle ] || qb_die "state after backup"

# The product socket is free while mounted: our own QMP client and the CLI use it.
"$QMPCMD" --timeout 5 "$(qb_vm_socket vm1)" query-status >/dev/null \
  || qb_die "the product QMP socket is not free while mounted"

# 31 incrementals with writes, zeroes and discards in between.
RANDOM=11
for i in $(seq 1 31); do
  off=$(( (RANDOM % 240) * 64 * 1024 ))
  qb_guest_write vm1 drive0 "write -P $((i + 0x30)) $off $(( (RANDOM % 4 + 1) * 16 * 1024 ))"
  qb_guest_write vm1 data1 "write -P $((i + 0x60)) $(( (RANDOM % 120) * 64 * 1024 )) 4k"
  case $((i % 4)) in
    1) qb_guest_write vm1 drive0 "write -z $(( (RANDOM % 60) * 64 * 1024 )) 256k" ;;
    2) qb_guest_write vm1 drive0 "discard $(( (RANDOM % 60) * 64 * 1024 )) 128k" ;;
    3) qb_guest_write vm1 data1 "write -z $(( (RANDOM % 30) * 64 * 1024 )) 64k" ;;
  esac
  qb_capture vm1 drive0 "$T/d0.raw"
  qb_capture vm1 data1 "$T/d1.raw"
  if [ "$i" = 15 ]; then
    # one point taken by the CLI on the same socket, into the same store
    "$QMPBACKUP" --socket "$(qb_vm_socket vm1)" backup --level inc --target "$store/vm1" \
      >"$T/cli.out" 2>&1 || qb_die "qmpbackup while mounted: $(cat "$T/cli.out")"
  else
    echo inc > "$C" || qb_die "inc $i failed: $(cat "$mnt/vm1/status")"
  fi
  p=$(newest drive0)
  [ -z "${sum[drive0/$p]:-}" ] || qb_die "inc $i made no new point"
  qb_cmp "$T/d0.raw" "$mnt/vm1/drive0/restore/$p"
  qb_cmp "$T/d1.raw" "$mnt/vm1/data1/restore/$p"
  sum[drive0/$p]=$(md5sum < "$T/d0.raw" | cut -d' ' -f1)
  sum[data1/$p]=$(md5sum < "$T/d1.raw" | cut -d' ' -f1)
done
[ "$(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l)" = 32 ] || qb_die "expected 32 points"
cat "$mnt/vm1/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" '[x["chain_length"] for x in d["disks"]]')" = "[32, 32]" ] \
  || qb_die "chain length: $(cat "$T/status.json")"
check_all "after 32 points"

# A new chain with `full`, then `auto` continues it.
qb_guest_write vm1 drive0 "write -P 0x99 8M 1M"
capture_for pending
echo full > "$C"
p=$(newest drive0)
sum[drive0/$p]=${sum[drive0/pending]}; sum[data1/$p]=${sum[data1/pending]}
unset 'sum[drive0/pending]' 'sum[data1/pending]'
qb_guest_write vm1 data1 "write -P 0x98 0 64k"
capture_for pending
echo auto > "$C"
p=$(newest drive0)
sum[drive0/$p]=${sum[drive0/pending]}; sum[data1/$p]=${sum[data1/pending]}
unset 'sum[drive0/pending]' 'sum[data1/pending]'
cat "$mnt/vm1/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["last"]["level"]')" = inc ] || qb_die "auto after full: $(cat "$T/status.json")"
[ "$(qb_json "$T/status.json" '[x["chain_length"] for x in d["disks"]]')" = "[2, 2]" ] \
  || qb_die "new chain length: $(cat "$T/status.json")"
check_all "after a new chain"

# `copy` is a point of its own; the chain goes on after it.
qb_guest_write vm1 drive0 "write -P 0x97 2M 64k"
capture_for pending
echo copy > "$C"
p=$(newest drive0)
sum[drive0/$p]=${sum[drive0/pending]}; sum[data1/$p]=${sum[data1/pending]}
cat "$mnt/vm1/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["last"]["level"]')" = copy ] || qb_die "copy: $(cat "$T/status.json")"
ls "$store/vm1/drive0" | grep -q '^COPY-' || qb_die "no COPY file"
qb_guest_write vm1 data1 "write -P 0x96 64k 64k"
capture_for pending
echo auto > "$C"
p=$(newest drive0)
sum[drive0/$p]=${sum[drive0/pending]}; sum[data1/$p]=${sum[data1/pending]}
unset 'sum[drive0/pending]' 'sum[data1/pending]'
cat "$mnt/vm1/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["last"]["level"]')" = inc ] || qb_die "auto after copy: $(cat "$T/status.json")"
[ "$(qb_json "$T/status.json" '[x["chain_length"] for x in d["disks"]]')" = "[3, 3]" ] \
  || qb_die "chain after copy: $(cat "$T/status.json")"
check_all "after a copy"
grep -q '^qmpbackupfs_backups_total{vm="vm1",level="inc",result="ok"} 32$' "$mnt/.metrics" \
  || qb_die ".metrics: $(grep backups_total "$mnt/.metrics")"
"$QMPCMD" --timeout 5 "$(qb_vm_socket vm1)" query-status >/dev/null \
  || qb_die "the product QMP socket is not free after backups"

# Remount: the same points, the same bytes.
qb_fs_unmount "$mnt"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
check_all "after remount"
cat "$mnt/vm1/status" > "$T/status.json"
[ -n "$(qb_json "$T/status.json" 'd["last"]["restore_point"]')" ] \
  || qb_die "status after remount lacks the last restore point: $(cat "$T/status.json")"

# qmprebase rebase under the mount: the first chain of drive0 folded up to its
# 10th point.  Older points go, the rest read as before (the kernel's cached
# pages of a point whose files changed are not reused).
mapfile -t d0points < <(qb_fs_points "$mnt/vm1/drive0/restore")
k=${d0points[9]}
cat "$mnt/vm1/drive0/restore/$k" > /dev/null
cat "$mnt/vm1/drive0/restore/$k" > /dev/null
kid=$(echo "${k%.img}" | sed -E 's/^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z/\1\2\3T\4\5\6Z/')
"$QMPREBASE" rebase --dir "$store/vm1/drive0" --until "$kid" >"$T/rebase.out" 2>&1 \
  || qb_die "qmprebase rebase: $(cat "$T/rebase.out")"
for p in "${d0points[@]:0:9}"; do
  [ ! -e "$mnt/vm1/drive0/restore/$p" ] || qb_die "$p still shown after the rebase"
  unset "sum[drive0/$p]"
done
[ "$(qb_fs_points "$mnt/vm1/drive0/restore" | head -1)" = "$k" ] || qb_die "oldest point after rebase"
check_all "after qmprebase rebase"

# -o vm=NAME:QMP with -o monthly: a VM named on the command line, chains in YYYY-MM folders.
qb_fs_unmount "$mnt"
qb_fs_mount "$store" "$mnt" -o "vm=mvm:$(qb_vm_socket vm1),monthly"
[ "$(ls "$mnt" | tr '\n' ' ')" = "mvm vm1 " ] || qb_die "VM dirs with vm=: $(ls "$mnt")"
qb_capture vm1 drive0 "$T/d0.raw"
touch "$mnt/mvm/backup" || qb_die "monthly backup: $(cat "$mnt/mvm/status")"
ls -d "$store/mvm/"[0-9][0-9][0-9][0-9]-[0-9][0-9]/drive0 >/dev/null || qb_die "no month folder: $(find "$store/mvm")"
qb_cmp "$T/d0.raw" "$mnt/mvm/drive0/restore/latest.img"
r=$(qb_fs_control "$mnt/vm1/backup" "inc\n")
[ "$r" = EHOSTDOWN ] || qb_die "vm1 without sockets= should be restore only: $r"
check_all "restore-only view"
echo "backup: ok (${#sum[@]} images checked)"
