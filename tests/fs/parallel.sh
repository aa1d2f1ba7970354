#!/usr/bin/env bash
# Backups of different VMs run in parallel through one mount: two full
# backups triggered at once (jobs limited to 4 MiB/s so they overlap) are
# both running at the same moment, both succeed, and both restore images are
# byte-exact, and status names each new restore image; meanwhile the mount
# keeps answering (ls, status).
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store"
for vm in pa pb; do
  qb_vm_start $vm drive0:qcow2:32M
  qb_guest_write $vm drive0 "write -P 0x$([ $vm = pa ] && echo 61 || echo 62) 0 12M"
  qb_capture $vm drive0 "$T/$vm.raw"      # the VMs are paused: the disks stay put
done
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,speed=4M"

for vm in pa pb; do
  (exec python3 -c "$QB_FS_WRITER" "$mnt/$vm/backup" full > "$T/$vm.out") &
  eval "w_$vm=\$!"
done

# Both VMs must be seen running at the same time (bounded: 20 s).
both=0
for ((i = 0; i < 200; i++)); do
  a=$(qb_json <(cat "$mnt/pa/status") 'd["state"]')
  b=$(qb_json <(cat "$mnt/pb/status") 'd["state"]')
  if [ "$a" = running ] && [ "$b" = running ]; then both=1; break; fi
  ls "$mnt" > /dev/null || qb_die "the mount stopped answering during the backups"
  sleep 0.1
done
wait "$w_pa" "$w_pb"
[ $both = 1 ] || qb_die "the two backups never ran at the same time (last states: $a, $b)"
for vm in pa pb; do
  [ "$(cat "$T/$vm.out")" = OK ] || qb_die "$vm: backup failed ($(cat "$T/$vm.out")): $(cat "$mnt/$vm/status")"
  p=$(qb_fs_points "$mnt/$vm/drive0/restore" | tail -1)
  [ -n "$p" ] || qb_die "$vm: no restore point"
  qb_cmp "$mnt/$vm/drive0/restore/$p" "$T/$vm.raw"
  img=$(qb_json <(cat "$mnt/$vm/status") 'd["last"]["restore_image"]')
  [ "$img" = "$p" ] || qb_die "$vm: status names the new point $img, the mount $p"
done
qb_fs_unmount "$mnt"
echo "parallel: ok"
