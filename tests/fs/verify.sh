#!/usr/bin/env bash
# `echo verify > MOUNT/<vm>/backup`: the mount verifies the VM's restore
# points in the background.  An intact store verifies ok (status, .status,
# .metrics); after one data byte of the FULL is flipped on disk, a verify
# finds the layer damaged: status and .metrics say so, the point and every
# later point of its chain are damaged and read as EIO, points of another
# chain still read exactly, the result survives a remount, and the next
# `touch backup` takes a FULL instead of continuing the damaged chain.  A
# verify by qmprebase beside the mount is seen by it, and a repaired layer
# that verifies ok again is served again.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
dir=$store/vv/drive0
mkdir -p "$store"
qb_vm_start vv drive0:qcow2:32M
qb_guest_write vv drive0 "write -P 0x5a 0 8M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
C=$mnt/vv/backup

newest() { readlink "$mnt/vv/drive0/restore/latest.img"; }

# Write "verify" to the control file and wait (bounded) until it has ended;
# the verify's state is then in $T/status.json.
verify_now() {
  local r i st
  r=$(qb_fs_control "$C" 'verify\n')
  [ "$r" = OK ] || qb_die "echo verify > backup: $r"
  for ((i = 0; i < 600; i++)); do
    cat "$mnt/vv/status" > "$T/status.json"
    st=$(qb_json "$T/status.json" '(d.get("verify") or {}).get("state", "")')
    case $st in verifying*|"") sleep 0.1 ;; *) return 0 ;; esac
  done
  qb_die "the verify did not end: $(cat "$T/status.json")"
}

# Value of metric LINE-PREFIX in .metrics (empty if absent).
metric() { grep -F "$1" "$mnt/.metrics" | awk '{ print $2 }'; }

touch "$C"; qb_capture vv drive0 "$T/p0.raw"; p0=$(newest)
for i in 1 2; do
  qb_guest_random_writes vv drive0 4 $((i * 31))
  touch "$C"; qb_capture vv drive0 "$T/p$i.raw"
done
p2=$(newest)
full=$(ls "$dir" | grep '^FULL-')

verify_now
[ "$(qb_json "$T/status.json" 'd["verify"]["state"]')" = ok ] || qb_die "intact: $(cat "$T/status.json")"
[ "$(qb_json "$T/status.json" 'd["verify"]["last"]["layers"]')" = 3 ] || qb_die "not 3 layers verified"
[ "$(metric 'qmpbackupfs_verify_damaged_layers{vm="vv"}')" = 0 ] || qb_die "metrics: $(cat "$mnt/.metrics")"
[ -n "$(metric 'qmpbackupfs_last_verify_timestamp_seconds{vm="vv"}')" ] || qb_die "no verify timestamp"
grep -q '"verify"' "$mnt/.status" || qb_die ".status has no verify"
[ "$(qb_json "$dir/.chain/$full.verify.json" 'd["result"]')" = ok ] || qb_die "no verify record"

# One flipped byte in the middle of a data cluster of the FULL.
read -r guest host < <(qemu-img map -f qcow2 --output=json "$dir/$full" | python3 -c '
import json, sys
d = [e for e in json.load(sys.stdin) if e.get("data") and e["length"] >= 3 * 65536]
e = d[0]; g = e["start"] + 65536 * (e["length"] // 65536 // 2)
print(g, e["offset"] + g - e["start"])')
python3 - "$dir/$full" $((host + 40000)) <<'EOF'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x80]))
EOF
# unnoticed before a verify: the byte is data, not metadata
verify_now
[ "$(qb_json "$T/status.json" 'd["verify"]["state"]')" = damaged ] || qb_die "flip: $(cat "$T/status.json")"
qb_json "$T/status.json" 'd["verify"]["last"]["detail"]' | grep -q "$full: 1 damaged cluster at guest offset $guest" \
  || qb_die "status does not name the layer and offset: $(cat "$T/status.json")"
[ "$(metric 'qmpbackupfs_verify_damaged_layers{vm="vv"}')" = 1 ] || qb_die "metrics damaged layers"
[ "$(metric 'qmpbackupfs_damaged_points{vm="vv",disk="drive0"}')" = 3 ] \
  || qb_die "not every point of the chain is damaged: $(grep damaged_points "$mnt/.metrics")"
grep -q "verify at .* found 1 damaged cluster at guest offsets $guest" "$mnt/vv/status" \
  || qb_die "the points' damage does not come from the verify: $(cat "$mnt/vv/status")"
for p in "$p0" "$p2"; do
  err=$(cat "$mnt/vv/drive0/restore/$p" 2>&1 >/dev/null) && qb_die "damaged point $p was served"
  [[ $err == *"Input/output error"* ]] || qb_die "reading damaged point $p: $err"
done

# The next backup starts a new chain, which reads exactly.
qb_guest_random_writes vv drive0 4 99
touch "$C"
p3=$(newest)
[[ $(ls "$dir" | grep -c '^FULL-') = 2 ]] || qb_die "touch after damage did not take a FULL: $(ls "$dir")"
qb_json <(cat "$mnt/vv/status") 'd["last"]["level"]' | grep -qx full || qb_die "last level not full"
qb_capture vv drive0 "$T/p3.raw"
qb_cmp "$T/p3.raw" "$mnt/vv/drive0/restore/$p3" || qb_die "the new FULL differs"

# A verify by qmprebase beside the mount is seen by it (bounded wait).
full2=$(ls "$dir" | grep '^FULL-' | tail -n 1)
read -r host2 < <(qemu-img map -f qcow2 --output=json "$dir/$full2" | python3 -c '
import json, sys
d = [e for e in json.load(sys.stdin) if e.get("data")]
print(d[-1]["offset"] + d[-1]["length"] // 2)')
python3 - "$dir/$full2" "$host2" <<'EOF2'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x10]))
EOF2
rc=0; "$QMPREBASE" verify --dir "$store/vv" > "$T/cli.out" 2>&1 || rc=$?
[ $rc -eq 1 ] || qb_die "qmprebase verify beside the mount exited $rc: $(cat "$T/cli.out")"
for ((i = 0; i < 100; i++)); do
  [ "$(metric 'qmpbackupfs_damaged_points{vm="vv",disk="drive0"}')" = 4 ] && break
  sleep 0.1
done
[ "$(metric 'qmpbackupfs_damaged_points{vm="vv",disk="drive0"}')" = 4 ] \
  || qb_die "the mount did not see the CLI verify: $(grep damaged_points "$mnt/.metrics")"
cat "$mnt/vv/drive0/restore/$p3" >/dev/null 2>&1 && qb_die "point $p3 served after the CLI found damage"
python3 - "$dir/$full2" "$host2" <<'EOF2'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x10]))
EOF2
"$QMPREBASE" verify --dir "$store/vv" --point "${full2#FULL-}" >/dev/null \
  || qb_die "the repaired FULL does not verify"
for ((i = 0; i < 100; i++)); do
  [ "$(metric 'qmpbackupfs_damaged_points{vm="vv",disk="drive0"}')" = 3 ] && break
  sleep 0.1
done
qb_cmp "$T/p3.raw" "$mnt/vv/drive0/restore/$p3" || qb_die "the repaired FULL is not served again"

# The result survives a remount (the layers' verify records).
qb_fs_unmount "$mnt"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
cat "$mnt/vv/drive0/restore/$p2" >/dev/null 2>&1 && qb_die "damaged point served after remount"
[ "$(metric 'qmpbackupfs_damaged_points{vm="vv",disk="drive0"}')" = 3 ] || qb_die "remount forgot"
qb_cmp "$T/p3.raw" "$mnt/vv/drive0/restore/$p3" || qb_die "the new FULL differs after remount"
qb_fs_unmount "$mnt"
echo "mount verify: found the flipped byte at $guest, points refused, new chain exact"
