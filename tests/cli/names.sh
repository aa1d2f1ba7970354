#!/usr/bin/env bash
# A disk is included or excluded by any name it is known by: the disk id, the
# drive id, the qdev id or path, the node names of its format and protocol
# nodes, the image's path or basename (what the Python qmpbackup's users pass).
# A VM with a -blockdev disk (named nodes), a -drive disk with a node name and
# a device of its own, a plain -drive, and a drive whose id is another disk's
# device id (a disk's own id wins: names that worked before still pick the
# same disk): each kind of name picks the right disk through `qmpbackup backup --include/--exclude` and through the mount's
# -o include=/-o exclude=; a name two disks share is an error listing both
# (with their names), an unknown name an error listing every disk; `info`
# lists each disk's names.  Backed-up disks are compared byte for byte.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf python3 "$QMPCMD"
qb_need_cli
qb_tmpdir

# Images: two with the same basename in different folders, and a raw one.
mkdir -p "$T/img/x" "$T/img/y"
A=$T/img/x/same.qcow2
B=$T/img/y/same.qcow2
R=$T/img/data.raw
qemu-img create -q -f qcow2 "$A" 16M
qemu-img create -q -f qcow2 "$B" 8M
qemu-img create -q -f raw "$R" 4M
Z=$T/img/z.raw
qemu-img create -q -f raw "$Z" 2M

# The VM "nm" (not started by qb_vm_start: it needs its own -blockdev/-drive mix).
stdbuf -oL qemu-system-x86_64 -machine q35,accel=kvm:tcg -nodefaults -display none -S -m 64 \
  -name nm \
  -blockdev "driver=file,node-name=proto1,filename=$A,cache.direct=off,cache.no-flush=on" \
  -blockdev "driver=qcow2,node-name=disk1,file=proto1" \
  -device "virtio-blk-pci,drive=disk1,id=vda,share-rw=on" \
  -drive "file=$B,format=qcow2,if=none,id=drv2,node-name=fmt2,cache=unsafe" \
  -device "virtio-blk-pci,drive=drv2,id=vdb" \
  -drive "file=$R,format=raw,if=virtio,id=data,cache=unsafe" \
  -drive "file=$Z,format=raw,if=none,id=vdb,cache=unsafe" \
  -device "virtio-blk-pci,drive=vdb,id=vdc" \
  -qmp "unix:$T/sockets/nm.qmp,server=on,wait=off" \
  -qmp "unix:$T/nm.test.qmp,server=on,wait=off" \
  </dev/null >>"$T/vm/nm.out" 2>&1 &
echo $! > "$T/vm/nm.pid"
qb_register_pid "$(cat "$T/vm/nm.pid")"
echo 0 > "$T/vm/nm.blockdev"
printf 'disk1 qcow2 16777216 %s\ndrv2 qcow2 8388608 %s\ndata raw 4194304 %s\nvdb raw 2097152 %s\n' \
  "$A" "$B" "$R" "$Z" \
  > "$T/vm/nm.disks"
for ((i = 0; i < 100; i++)); do
  [ -S "$T/sockets/nm.qmp" ] && [ -S "$T/nm.test.qmp" ] && break
  sleep 0.1
done
[ -S "$T/nm.test.qmp" ] || qb_die "QEMU did not start: $(cat "$T/vm/nm.out")"
SOCK=$T/sockets/nm.qmp

# Guest writes (qemu-io on the -blockdev node disk1, the drives drv2 and data).
qb_guest_write nm disk1 "write -P 0x11 1M 2M"
qb_guest_write nm drv2 "write -P 0x22 0 1M"
qb_guest_write nm data "write -P 0x33 512k 1M"

# --- info lists every name of each disk --------------------------------------
"$QMPBACKUP" --socket "$SOCK" info > "$T/info.json"
names_of() { qb_json_names "$T/info.json" "$1"; }
qb_json_names() {
  python3 -c 'import json,sys
d=json.load(open(sys.argv[1]))
print(" ".join(x for k in d["disks"] if k["name"] == sys.argv[2] for x in k["names"]))' "$1" "$2"
}
for want in "vda:disk1 proto1 $A same.qcow2 /machine/peripheral/vda/virtio-backend" \
            "drv2:vdb fmt2 $B same.qcow2 /machine/peripheral/vdb/virtio-backend" \
            "data:$R data.raw" "vdb:vdc z.raw"; do
  disk=${want%%:*}
  got=" $(names_of "$disk") "
  for n in $disk ${want#*:}; do
    [[ $got == *" $n "* ]] || qb_die "info: disk $disk is not known as $n (names:$got)"
  done
done
echo "info: names listed"

# Take a copy of nm into store folder DIR with ARGS...; print the disks it holds.
copy_disks() {
  local dir=$1
  shift
  "$QMPBACKUP" --socket "$SOCK" backup --level copy --target "$dir/nm" --quiet "$@" \
    > "$T/out" 2> "$T/err" || { cat "$T/err" >&2; return 1; }
  (cd "$dir/nm" && ls -d */ | tr -d / | sort | tr '\n' ' ')
}

# Every kind of name, excluded, leaves exactly that disk out; included, takes only it.
n=0
for pair in vda:vda disk1:vda proto1:vda "$A:vda" /machine/peripheral/vda/virtio-backend:vda \
            drv2:drv2 fmt2:drv2 "$B:drv2" /machine/peripheral/vdb/virtio-backend:drv2 \
            data:data data.raw:data "$R:data" vdb:vdb vdc:vdb z.raw:vdb; do
  name=${pair%:*}; disk=${pair##*:}
  n=$((n + 1))
  all="data drv2 vda vdb "
  want=${all/$disk /}
  got=$(copy_disks "$T/ex$n" --exclude "$name") || qb_die "--exclude $name failed: $(cat "$T/err")"
  [ "$got" = "$want" ] || qb_die "--exclude $name backed up '$got', expected '$want'"
  got=$(copy_disks "$T/in$n" --include "$name") || qb_die "--include $name failed: $(cat "$T/err")"
  [ "$got" = "$disk " ] || qb_die "--include $name backed up '$got', expected '$disk '"
done
echo "include/exclude: $n names, each picks its disk"
# Several names, of different kinds, in one list.
got=$(copy_disks "$T/multi" --exclude proto1,data.raw,vdc) || qb_die "--exclude proto1,data.raw,vdc: $(cat "$T/err")"
[ "$got" = "drv2 " ] || qb_die "--exclude proto1,data.raw,vdc backed up '$got'"

# The copies hold the right bytes (a disk picked by a node name is that disk).
qb_capture nm disk1 "$T/cap-vda.raw"
qb_capture nm drv2 "$T/cap-drv2.raw"
qb_capture nm data "$T/cap-data.raw"
for d in vda drv2 data; do
  f=$(ls "$T/in1/nm/vda"/COPY-* 2>/dev/null | head -1)
  [ "$d" = vda ] || f=$(ls "$T/multi/nm/drv2"/COPY-* 2>/dev/null | head -1)
  [ "$d" != data ] || f=$(ls "$T/in10/nm/data"/COPY-* 2>/dev/null | head -1)
  [ -n "$f" ] || qb_die "no copy of $d"
  qemu-img convert -O raw "$f" "$T/got.raw"
  qb_cmp "$T/cap-$d.raw" "$T/got.raw" || qb_die "the copy of $d picked by name differs from the disk"
done
echo "copies picked by name: bytes equal"

# --- a name of two disks, a name of none ---------------------------------------
rc=0
"$QMPBACKUP" --socket "$SOCK" backup --level full --target "$T/amb/nm" --quiet --exclude same.qcow2 \
  2> "$T/err" || rc=$?
[ $rc -eq 2 ] || qb_die "ambiguous --exclude same.qcow2 exited $rc, expected 2"
for w in '"same.qcow2" names 2 disks' "vda (known as" "drv2 (known as" "$A" "$B" proto1 fmt2; do
  grep -qF -- "$w" "$T/err" || qb_die "ambiguous name: the error lacks '$w': $(cat "$T/err")"
done
[ ! -d "$T/amb/nm/.points" ] || [ -z "$(ls "$T/amb/nm/.points")" ] || qb_die "an ambiguous name still made a point"
rc=0
"$QMPBACKUP" --socket "$SOCK" backup --level full --target "$T/amb/nm" --quiet --include nosuch \
  2> "$T/err" || rc=$?
[ $rc -eq 2 ] || qb_die "unknown --include nosuch exited $rc, expected 2"
for w in 'no disk "nosuch"' "vda (known as" "drv2 (known as" "data (known as" data.raw "vdb (known as vdc"; do
  grep -qF -- "$w" "$T/err" || qb_die "unknown name: the error lacks '$w': $(cat "$T/err")"
done
echo "ambiguous and unknown names: errors list the disks: $(head -c 300 "$T/err")"

# --- the mount's -o include= / -o exclude= take the same names ---------------
if [ -c /dev/fuse ] && command -v fusermount3 >/dev/null && [ -x "$QMPBACKUPFS" ]; then
  . "$QB_SOURCE_DIR/tests/fs/lib.sh"
  # mount_copy TAG OPTION: mount with OPTION, take a copy through the control
  # file, unmount; sets $got to the disks backed up (or ERR:<errno>).
  mount_copy() {
    local tag=$1 opt=$2 r
    mkdir -p "$T/fs$tag"
    qb_fs_mount "$T/fs$tag" "$T/mnt$tag" -o "vm=nm:$SOCK" -o "$opt"
    r=$(qb_fs_control "$T/mnt$tag/nm/backup" copy)
    cat "$T/mnt$tag/nm/status" > "$T/status$tag.json"
    qb_fs_unmount "$T/mnt$tag"
    if [ "$r" = OK ]; then
      got=$(cd "$T/fs$tag/nm" && ls -d */ | tr -d / | sort | tr '\n' ' ')
    else
      got=ERR:$r
    fi
  }
  mount_copy 1 "exclude=proto1:data.raw:z.raw"
  [ "$got" = "drv2 " ] || qb_die "-o exclude=proto1:data.raw:z.raw backed up '$got'"
  mount_copy 2 "include=fmt2"
  [ "$got" = "drv2 " ] || qb_die "-o include=fmt2 backed up '$got'"
  mount_copy 3 "include=$A:/machine/peripheral/vdb/virtio-backend"
  [ "$got" = "drv2 vda " ] || qb_die "-o include=$A:/machine/.../vdb backed up '$got'"
  mount_copy 5 "include=vdb"           # the disk whose id it is, not drv2's device
  [ "$got" = "vdb " ] || qb_die "-o include=vdb backed up '$got'"
  mount_copy 4 "exclude=same.qcow2"
  [[ $got == ERR:* ]] || qb_die "-o exclude=same.qcow2 (ambiguous) backed up '$got'"
  grep -q 'names 2 disks' "$T/status4.json" || qb_die "mount: ambiguous name not explained: $(cat "$T/status4.json")"
  echo "mount: -o include/-o exclude by node name, path, qdev id: right disks; ambiguous refused"
else
  echo "mount part not run: no /dev/fuse, fusermount3 or qmpbackupfs"
fi
echo "PASS"
