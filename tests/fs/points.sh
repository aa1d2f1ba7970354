#!/usr/bin/env bash
# The point-centred view and the xattrs of a live two-disk VM with a full and
# two incrementals: points/<T>/ holds one <disk>.img per disk of point T that
# is byte-equal (cmp) to <disk>/restore/<T>.img and has its size and time;
# points/latest names the newest point.  getfattr -d shows user.qmpbackup.*
# on restore images, point images and point folders with the values of the
# point's record (.points/<id>.json); they cannot be set or removed (EPERM,
# ENOTSUP for other names).  With one disk's layer of the newest point cut short,
# points/<T>/ still shows both disks: the intact one reads exactly, the
# damaged one fails with EIO as in restore/ and says why in
# user.qmpbackup.damage; points/latest moves to the newest intact point.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp getfattr setfattr
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store"
qb_vm_start vm1 drive0:qcow2:16M data1:raw:8M
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
C=$mnt/vm1/backup
P=$mnt/vm1/points

qb_guest_write vm1 drive0 "write -P 0x11 0 4M"
qb_guest_write vm1 data1 "write -P 0x21 1M 1M"
touch "$C" || qb_die "full backup failed: $(cat "$mnt/vm1/status")"
qb_guest_write vm1 drive0 "write -P 0x12 4M 1M"
qb_guest_write vm1 data1 "write -z 1M 64k"
[ "$(qb_fs_control "$C" inc)" = OK ] || qb_die "inc 1 failed: $(cat "$mnt/vm1/status")"
qb_guest_write vm1 drive0 "write -P 0x13 6M 1M"
qb_guest_write vm1 data1 "write -P 0x23 3M 1M"
[ "$(qb_fs_control "$C" inc)" = OK ] || qb_die "inc 2 failed: $(cat "$mnt/vm1/status")"

mapfile -t pts < <(qb_fs_points "$mnt/vm1/drive0/restore")
[ ${#pts[@]} -eq 3 ] || qb_die "want 3 points, have: ${pts[*]}"
[ "$(qb_fs_points "$mnt/vm1/data1/restore")" = "$(printf '%s\n' "${pts[@]}")" ] \
  || qb_die "the disks have different points"

# points/: one folder per point, in the same order, plus latest.
want=$(printf '%s\n' "${pts[@]%.img}" latest)
[ "$(LC_ALL=C ls "$P")" = "$want" ] || qb_die "points/ lists $(ls "$P"), want $want"
[ -L "$P/latest" ] || qb_die "points/latest is not a symbolic link"
[ "$(readlink "$P/latest")" = "${pts[2]%.img}" ] || qb_die "points/latest -> $(readlink "$P/latest")"
[ "$(readlink "$P/latest")" = "$(readlink "$mnt/vm1/drive0/restore/latest.img" | sed 's/\.img$//')" ] \
  || qb_die "points/latest and restore/latest.img disagree"
[ "$(LC_ALL=C ls "$P/latest/")" = "$(printf 'data1.img\ndrive0.img')" ] || qb_die "points/latest/ lists $(ls "$P/latest/")"

# Every point image is the restore image, byte for byte, with its size and time.
for p in "${pts[@]}"; do
  t=${p%.img}
  [ "$(LC_ALL=C ls "$P/$t")" = "$(printf 'data1.img\ndrive0.img')" ] || qb_die "points/$t lists $(ls "$P/$t")"
  for d in drive0 data1; do
    cmp "$P/$t/$d.img" "$mnt/vm1/$d/restore/$p" || qb_die "points/$t/$d.img differs from $d/restore/$p"
    [ "$(stat -c '%s %Y %b %a' "$P/$t/$d.img")" = "$(stat -c '%s %Y %b %a' "$mnt/vm1/$d/restore/$p")" ] \
      || qb_die "points/$t/$d.img: stat $(stat -c '%s %Y %b %a' "$P/$t/$d.img") vs $(stat -c '%s %Y %b %a' "$mnt/vm1/$d/restore/$p")"
  done
  [ "$(stat -c %Y "$P/$t")" = "$(stat -c %Y "$mnt/vm1/drive0/restore/$p")" ] || qb_die "points/$t: folder time"
done
# ... and the disk as it was: the newest point against the VM's disks now.
qb_qmp vm1 stop >/dev/null
for d in drive0 data1; do
  qb_capture vm1 "$d" "$T/now-$d.raw"
  qb_cmp "$T/now-$d.raw" "$P/latest/$d.img"
done
qb_qmp vm1 cont >/dev/null
# Names that are no point, no disk of a point, or no image are not there.
for bad in "$P/2000-01-01T000000Z" "$P/latest/nodisk.img" "$P/latest/drive0" "$P/latest/drive0.qcow2"; do
  [ ! -e "$bad" ] || qb_die "$bad exists"
done
# The view is read-only like restore/.
! (echo x > "$P/latest/drive0.img") 2>/dev/null || qb_die "a point image was writable"

# ---- xattrs against the records ----
# check_xattrs FILE ID [DISK]: getfattr -d of FILE against record ID (DISK:
# that disk's layer; none: the point folder, all disks).
check_xattrs() {
  getfattr -d --absolute-names "$1" > "$T/xa.txt" || qb_die "getfattr -d $1 failed"
  python3 - "$T/xa.txt" "$store/vm1/.points/$2.json" "${3:-}" <<'PY' || qb_die "xattrs of $1 do not match record $2: $(cat "$T/xa.txt")"
import json, sys
got = {}
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if "=" in line and not line.startswith("#"):
        k, v = line.split("=", 1)
        got[k] = json.loads(v)          # getfattr quotes text values like JSON strings
rec = json.load(open(sys.argv[2]))
disk = sys.argv[3]
disks = [d for d in rec["disks"] if not disk or d["name"] == disk]
assert disks, "no such disk in the record"
kinds = {d["kind"] for d in disks}
chains = {d["chain"] for d in disks}
want = {
    "user.qmpbackup.level": kinds.pop() if len(kinds) == 1 else "mixed",
    "user.qmpbackup.quiesced": "yes" if rec.get("quiesced") else "no",
    "user.qmpbackup.bytes": str(sum(d["bytes"] for d in disks)),
    "user.qmpbackup.time": rec["time"],
    "user.qmpbackup.id": rec["id"],
}
if len(chains) == 1 and None not in chains:
    want["user.qmpbackup.chain"] = chains.pop()
assert rec["level"] == want["user.qmpbackup.level"], (rec["level"], kinds)
if got != want:
    print("got  %s\nwant %s" % (got, want), file=sys.stderr)
    sys.exit(1)
PY
}
for p in "${pts[@]}"; do
  t=${p%.img}
  id=$(getfattr --absolute-names --only-values -n user.qmpbackup.id "$P/$t")
  [ -f "$store/vm1/.points/$id.json" ] || qb_die "user.qmpbackup.id of $t is $id: no such record"
  for d in drive0 data1; do
    check_xattrs "$mnt/vm1/$d/restore/$p" "$id" "$d"
    check_xattrs "$P/$t/$d.img" "$id" "$d"
  done
  check_xattrs "$P/$t" "$id"
done
[ "$(getfattr --absolute-names --only-values -n user.qmpbackup.level "$P/${pts[0]%.img}")" = full ] || qb_die "the first point is no full"
[ "$(getfattr --absolute-names --only-values -n user.qmpbackup.level "$P/latest/drive0.img")" = inc ] || qb_die "the newest point is no inc"
[ "$(getfattr --absolute-names --only-values -n user.qmpbackup.chain "$P/latest/drive0.img")" \
  = "$(getfattr --absolute-names --only-values -n user.qmpbackup.chain "$mnt/vm1/data1/restore/${pts[0]}")" ] \
  || qb_die "the points of one chain name different chains"
# No attribute on the rest of the tree; nothing can be set or removed.
for f in "$mnt/vm1" "$mnt/vm1/status" "$mnt/vm1/drive0/restore" "$P"; do
  [ -z "$(getfattr -d --absolute-names "$f" 2>&1)" ] || qb_die "$f has attributes: $(getfattr -d "$f" 2>&1)"
done
python3 - "$P/latest/drive0.img" "$P/latest" "$mnt/vm1/status" <<'PY' || qb_die "xattrs could be changed"
import errno, os, sys
img, folder, other = sys.argv[1:]
def expect(call, want, what):
    try:
        call()
    except OSError as e:
        assert e.errno == want, "%s: %s, want %s" % (what, errno.errorcode[e.errno], errno.errorcode[want])
        return
    raise AssertionError("%s succeeded" % what)
for f in (img, folder):
    expect(lambda: os.setxattr(f, "user.qmpbackup.level", b"full"), errno.EPERM, "set level of " + f)
    expect(lambda: os.removexattr(f, "user.qmpbackup.id"), errno.EPERM, "remove id of " + f)
    expect(lambda: os.setxattr(f, "user.note", b"x"), errno.ENOTSUP, "set user.note on " + f)
    expect(lambda: os.getxattr(f, "user.qmpbackup.damage"), errno.ENODATA, "damage of an intact " + f)
expect(lambda: os.setxattr(other, "user.qmpbackup.level", b"full"), errno.ENOTSUP, "set on status")
assert os.getxattr(img, "user.qmpbackup.level") == b"inc"
PY

# ---- one disk of the newest point damaged (its layer cut short while unmounted) ----
newest=${pts[2]%.img}
id=$(getfattr --absolute-names --only-values -n user.qmpbackup.id "$P/$newest")
layer=$(python3 -c 'import json,sys; print([d["file"] for d in json.load(open(sys.argv[1]))["disks"] if d["name"] == "data1"][0])' \
  "$store/vm1/.points/$id.json")
qb_fs_unmount "$mnt"
truncate -s $(( $(stat -c %s "$store/vm1/$layer") / 2 )) "$store/vm1/$layer"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
[ "$(LC_ALL=C ls "$P/$newest")" = "$(printf 'data1.img\ndrive0.img')" ] \
  || qb_die "points/$newest with data1 damaged lists $(ls "$P/$newest")"
# the damage is found by reading (through points/ first): EIO, never other bytes
for f in "$P/$newest/data1.img" "$mnt/vm1/data1/restore/${pts[2]}"; do
  rc=0
  python3 -c '
import os, sys
f = os.open(sys.argv[1], os.O_RDONLY)
while os.read(f, 1 << 20):
    pass' "$f" 2> "$T/read.err" || rc=$?
  [ $rc -ne 0 ] && grep -q "Errno 5\]" "$T/read.err" || qb_die "reading $f: rc $rc, $(cat "$T/read.err")"
done
cmp "$P/$newest/drive0.img" "$mnt/vm1/drive0/restore/${pts[2]}" || qb_die "the intact disk of a damaged point differs"
qb_cmp "$T/now-drive0.raw" "$P/$newest/drive0.img"
[ "$(readlink "$P/latest")" = "${pts[1]%.img}" ] || qb_die "points/latest -> $(readlink "$P/latest") with $newest damaged"
dmg=$(getfattr --absolute-names --only-values -n user.qmpbackup.damage "$P/$newest/data1.img")
[ -n "$dmg" ] || qb_die "no damage attribute on the damaged image"
[ "$(getfattr --absolute-names --only-values -n user.qmpbackup.damage "$mnt/vm1/data1/restore/${pts[2]}")" = "$dmg" ] \
  || qb_die "restore/ and points/ give different damage"
[ "$(getfattr --absolute-names --only-values -n user.qmpbackup.damage "$P/$newest")" = "data1: $dmg" ] \
  || qb_die "folder damage: $(getfattr --absolute-names --only-values -n user.qmpbackup.damage "$P/$newest")"
! getfattr --absolute-names -n user.qmpbackup.damage "$P/$newest/drive0.img" >/dev/null 2>&1 || qb_die "the intact disk says it is damaged"
python3 - "$mnt/vm1/status" "${pts[2]%.img}" "$dmg" <<'PY' || qb_die "status does not report the damage as the xattr does: $(cat "$mnt/vm1/status")"
import json, sys
d = json.load(open(sys.argv[1]))
bad = [p for k in d["disks"] if k["name"] == "data1" for p in k.get("damage", [])]
assert any(p["restore_point"] == sys.argv[2] and p["damage"] == sys.argv[3] for p in bad), bad
PY

qb_fs_unmount "$mnt"
qb_log "points/ and xattrs: ${#pts[@]} points of 2 disks checked"
