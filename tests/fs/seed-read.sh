#!/usr/bin/env bash
# The mount reads a store it did not write: a seed-style chain (FULL-<epoch>-*,
# standalone INC-<epoch>-* with zeroed and discarded ranges) gives every restore
# point byte for byte; a large sparse image copies sparse (SEEK_DATA/SEEK_HOLE);
# chain/ shows the qcow2 files; a damaged layer fails reads with EIO and the
# daemon keeps serving; bad control input is EINVAL; a VM without a socket is
# EHOSTDOWN; remount gives the same bytes; SIGTERM unmounts cleanly.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-io python3 cmp
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
dir=$store/seedvm/disk0
size=$((32 << 20))
ref=$T/ref.raw
epoch=1700000000

# Apply qemu-io command CMD to layer LAYER and to the reference.
both() { qb_seed_write "$ref" "$1" "$2"; }

qb_seed_full "$dir" $epoch disk0 $size "$ref"
full=$dir/FULL-$epoch-disk0.qcow2
cp "$ref" "$T/expect-0.raw"
layers=("FULL-$epoch-disk0.qcow2")
RANDOM=7
for i in 1 2 3 4 5; do
  e=$((epoch + i * 3600))
  inc=$dir/INC-$e-disk0.qcow2
  qemu-img create -q -f qcow2 -b "${layers[$((i - 1))]}" -F qcow2 "$inc"
  for j in 1 2; do
    off=$(( (RANDOM % 500) * 64 * 1024 ))
    both "$inc" "write -P $((i * 16 + j)) $off $(( (RANDOM % 8 + 1) * 64 * 1024 ))"
  done
  both "$inc" "write -z $(( (RANDOM % 500) * 64 * 1024 )) 512k"   # zero clusters over old data
  both "$inc" "write -P 0x7$i $((i * 1024 * 1024 + 4096)) 12k"
  cp "$ref" "$T/expect-$i.raw"
  layers+=("INC-$e-disk0.qcow2")
done
for l in "${layers[@]:1}"; do qemu-img rebase -q -u -b "" "$dir/$l"; done

# A large sparse disk: 2 GiB with three small data ranges.
big=$store/bigvm/disk0
mkdir -p "$big"
qemu-img create -q -f qcow2 "$big/FULL-$epoch-disk0.qcow2" 2G
qemu-io -f qcow2 -c "write -P 0x21 0 1M" -c "write -P 0x22 1G 64k" -c "write -P 0x23 2047M 1M" \
  "$big/FULL-$epoch-disk0.qcow2" >/dev/null
qemu-img convert -O raw "$big/FULL-$epoch-disk0.qcow2" "$T/big.raw"

# A damaged chain: the INC's file is cut short.
bad=$store/seedvm/disk1
mkdir -p "$bad"
qemu-img create -q -f qcow2 "$bad/FULL-$epoch-disk1.qcow2" 4M
qemu-io -f qcow2 -c "write -P 0x44 0 4M" "$bad/FULL-$epoch-disk1.qcow2" >/dev/null
qemu-img convert -O raw "$bad/FULL-$epoch-disk1.qcow2" "$T/bad-full.raw"
qemu-img create -q -f qcow2 "$bad/INC-$((epoch + 3600))-disk1.qcow2" 4M
qemu-io -f qcow2 -c "write -P 0x45 0 4M" "$bad/INC-$((epoch + 3600))-disk1.qcow2" >/dev/null
truncate -s 300000 "$bad/INC-$((epoch + 3600))-disk1.qcow2"

qb_fs_mount "$store" "$mnt"
[ "$(ls "$mnt")" = "$(printf 'bigvm\nseedvm')" ] || qb_die "VM dirs: $(ls "$mnt" | tr '\n' ' ')"
[ "$(ls -A "$mnt" | head -2 | tr '\n' ' ')" = ".metrics .status " ] || qb_die "root: $(ls -A "$mnt")"
[ "$(ls "$mnt/seedvm" | tr '\n' ' ')" = "backup disk0 disk1 points status " ] || qb_die "vm dir: $(ls "$mnt/seedvm")"

R=$mnt/seedvm/disk0/restore
mapfile -t points < <(qb_fs_points "$R")
[ ${#points[@]} -eq 6 ] || qb_die "expected 6 restore points, got ${points[*]}"
[ "${points[0]}" = "2023-11-14T221320Z.img" ] || qb_die "first point is ${points[0]}"
for i in "${!points[@]}"; do
  qb_cmp "$T/expect-$i.raw" "$R/${points[$i]}"
  [ "$(stat -c %s "$R/${points[$i]}")" = $size ] || qb_die "size of ${points[$i]}"
  [ "$(stat -c %Y "$R/${points[$i]}")" = $((epoch + i * 3600)) ] || qb_die "mtime of ${points[$i]}"
  [ "$(stat -c %a "$R/${points[$i]}")" = 440 ] || qb_die "mode of ${points[$i]}"
done
[ "$(readlink "$R/latest.img")" = "${points[5]}" ] || qb_die "latest.img -> $(readlink "$R/latest.img")"
qb_cmp "$T/expect-5.raw" "$R/latest.img"
[ "$(stat -c %a "$mnt/seedvm/backup")" = 200 ] || qb_die "control file mode"

# Concurrent readers of the same and of different points.
for i in 0 3 5 5; do cmp "$T/expect-$i.raw" "$R/${points[$i]}" & done
for j in 1 2 3 4; do wait -n || qb_die "a concurrent read differed"; done

# chain/: the qcow2 files as they are in the store.
for l in "${layers[@]}"; do qb_cmp "$dir/$l" "$mnt/seedvm/disk0/chain/$l"; done

# SEEK_DATA / SEEK_HOLE and a sparse copy of the large image.
B=$mnt/bigvm/disk0/restore/latest.img
out=$(python3 - "$B" <<'PY'
import os, sys, errno
fd = os.open(sys.argv[1], os.O_RDONLY)
r = [os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE),
     os.lseek(fd, 2 << 20, os.SEEK_DATA), os.lseek(fd, (1 << 30) + 100, os.SEEK_DATA),
     os.lseek(fd, (1 << 30) + 100, os.SEEK_HOLE), os.lseek(fd, (1 << 30) + (1 << 20), os.SEEK_DATA)]
try:
    os.lseek(fd, 2 << 30, os.SEEK_DATA); r.append("no ENXIO")
except OSError as e:
    r.append(errno.errorcode[e.errno])
print(" ".join(str(x) for x in r))
PY
)
exp="0 $((1 << 20)) $((1 << 30)) $(( (1 << 30) + 100 )) $(( (1 << 30) + (1 << 16) )) $((2047 << 20)) ENXIO"
[ "$out" = "$exp" ] || qb_die "lseek: got '$out', expected '$exp'"
t0=$(date +%s%N)
cp --sparse=always "$B" "$T/big-copy.raw"
t1=$(date +%s%N)
qb_cmp "$T/big.raw" "$T/big-copy.raw"
used=$(du -k "$T/big-copy.raw" | cut -f1)
[ "$used" -lt 8192 ] || qb_die "sparse copy uses $used KiB"
qb_log "sparse copy of a 2 GiB image: $(( (t1 - t0) / 1000000 )) ms, $used KiB"

# Restore images work as they are: qemu-img reads them, QEMU boots from one.
qemu-img convert -f raw -O qcow2 "$R/latest.img" "$T/latest.qcow2"
qemu-img compare -f qcow2 -F raw "$T/latest.qcow2" "$T/expect-5.raw" >/dev/null \
  || qb_die "qemu-img convert of a restore image differs"
if command -v qemu-system-x86_64 >/dev/null; then
  qemu-system-x86_64 -machine q35,accel=kvm:tcg -nodefaults -display none -S -m 64 \
    -drive "file=$R/latest.img,format=raw,if=virtio,id=restored,snapshot=on" \
    -qmp "unix:$T/boot.qmp,server=on,wait=off" </dev/null >"$T/boot.out" 2>&1 &
  boot=$!
  qb_register_pid "$boot"
  for ((i = 0; i < 100; i++)); do [ -S "$T/boot.qmp" ] && break; _qb_alive $boot || break; sleep 0.1; done
  "$QMPCMD" --timeout 5 "$T/boot.qmp" query-block | grep -q '"device":"restored"' \
    || qb_die "QEMU did not open a restore image: $(cat "$T/boot.out")"
  "$QMPCMD" --timeout 5 "$T/boot.qmp" quit >/dev/null 2>&1 || true
  _qb_wait_gone $boot
fi

# Damage: the cut INC fails with EIO, the FULL below it still reads, the daemon lives.
D=$mnt/seedvm/disk1/restore
mapfile -t dpoints < <(qb_fs_points "$D")
[ ${#dpoints[@]} -eq 2 ] || qb_die "damaged disk: points ${dpoints[*]}"
qb_cmp "$T/bad-full.raw" "$D/${dpoints[0]}"
err=$(cat "$D/${dpoints[1]}" 2>&1 >/dev/null) && qb_die "reading a damaged point succeeded"
case $err in *"Input/output error"*) ;; *) qb_die "damaged read: $err" ;; esac
[ "$(readlink "$D/latest.img")" = "${dpoints[0]}" ] || qb_die "latest.img of a damaged chain"
cat "$mnt/seedvm/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" '[x["damaged_points"] for x in d["disks"]]')" = "[0, 1]" ] \
  || qb_die "status damage: $(cat "$T/status.json")"
qb_cmp "$T/expect-2.raw" "$R/${points[2]}"

# Control input: EINVAL for garbage, and EHOSTDOWN (nothing to connect to) for a valid line.
C=$mnt/seedvm/backup
# (an empty write never reaches the file system: nothing happens)
r=$(qb_fs_control "$C" "")
[ "$r" = OK ] || [ "$r" = EINVAL ] || qb_die "empty control write: $r"
for bad_input in "garbage\n" "full extra\n" "\n" "\x00\x01\x02full" "inc quiesce now\n" "FULL\n"; do
  r=$(qb_fs_control "$C" "$bad_input")
  [ "$r" = EINVAL ] || qb_die "control '$bad_input': $r, expected EINVAL"
done
r=$( (head -c 1M /dev/zero | tr '\0' 'f' > "$C") 2>&1 && echo OK || true)
case $r in *"Invalid argument"*) ;; *) qb_die "1 MiB control write: $r" ;; esac
r=$(qb_fs_control "$C" "full\n")
[ "$r" = EHOSTDOWN ] || qb_die "backup of a VM without socket: $r"
err=$(touch "$C" 2>&1) && qb_die "touch of a VM without socket succeeded"
case $err in *"Host is down"*) ;; *) qb_die "touch: $err" ;; esac
cat "$mnt/seedvm/status" > "$T/status.json"
qb_json "$T/status.json" 'd["last"]["error"]' | grep -q "no QMP socket" || qb_die "status: $(cat "$T/status.json")"
qb_json "$T/status.json" 'd["last_rejected"]["error"]' | grep -q . || qb_die "status lacks rejection"
[ "$(qb_fs_points "$R" | wc -l)" = 6 ] || qb_die "a refused request made a point"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$mnt/.status"
grep -q '^qmpbackupfs_restore_points{vm="seedvm",disk="disk0"} 6$' "$mnt/.metrics" \
  || qb_die ".metrics: $(cat "$mnt/.metrics")"

# Remount with allow_other: the same points, the same bytes, and the kernel
# enforces the modes (images/status for owner and group, control for the owner).
sums=$(cd "$R" && md5sum "${points[@]}")
as_user() { local g=$1; shift; setpriv --reuid=65534 --regid="$g" --clear-groups "$@"; }
chmod 711 "$T"
can_switch=0
[ "$(id -u)" = 0 ] && command -v setpriv >/dev/null && can_switch=1
if [ $can_switch = 1 ]; then
  as_user 0 ls "$mnt" >/dev/null 2>&1 && qb_die "another user entered a mount without allow_other"
fi
qb_fs_unmount "$mnt"
qb_fs_mount "$store" "$mnt" -o allow_other
[ "$(cd "$R" && md5sum "${points[@]}")" = "$sums" ] || qb_die "remount changed the bytes"
if [ $can_switch = 1 ]; then
  as_user 0 cat "$R/${points[2]}" | cmp - "$T/expect-2.raw" || qb_die "group member cannot read an image"
  as_user 0 cat "$mnt/seedvm/status" >/dev/null || qb_die "group member cannot read status"
  as_user 0 sh -c "echo full > '$C'" 2>/dev/null && qb_die "group member wrote the control file"
  as_user 65534 cat "$R/${points[2]}" >/dev/null 2>&1 && qb_die "another user read an image"
else
  qb_log "not root or no setpriv: permission checks skipped"
fi

# SIGTERM: the daemon unmounts and exits 0.
kill -TERM "$FS_PID"
for ((i = 0; i < 100; i++)); do _qb_alive "$FS_PID" || break; sleep 0.1; done
rc=0; wait "$FS_PID" || rc=$?
[ $rc -eq 0 ] || qb_die "qmpbackupfs exited $rc on SIGTERM"
mountpoint -q "$mnt" && qb_die "still mounted after SIGTERM"
echo "seed-read: ok"
