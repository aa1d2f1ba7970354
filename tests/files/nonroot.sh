#!/usr/bin/env bash
# files/ without root: qmpbackupfs runs as the unprivileged user nobody on a
# store nobody owns, and nobody reads, lists and copies (cp -a) a guest's
# files, including one only the guest's root may read, from a point of a GPT
# disk: the same bytes as the guest tree they were made from.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/files/lib.sh"
qb_need qemu-img python3 mkfs.ext4 debugfs setpriv cmp
qb_need_fuse
[ "$(id -u)" = 0 ] || { echo "SKIP: the test switches to user nobody, which needs root"; exit 77; }
id nobody >/dev/null 2>&1 || { echo "SKIP: no user nobody"; exit 77; }
fm=$(command -v fusermount3)
[ -u "$fm" ] || { echo "SKIP: $fm is not setuid: an unprivileged user cannot mount"; exit 77; }
qb_tmpdir
chmod 711 "$T"

as_nobody() { setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups -- "$@"; }

qb_files_tree "$T/tree" 200
qb_files_mkfs "$T/fs.img" 96 "$T/tree"
python3 "$QB_FILES_DIR/mkdisk.py" "$T/disk.raw" 100 gpt "2:$T/fs.img"
store=$T/store
mkdir -p "$store/vm1/drive0" "$T/mnt" "$T/copy"
qemu-img convert -f raw -O qcow2 "$T/disk.raw" "$store/vm1/drive0/FULL-1700000000-drive0.qcow2"
chown -R nobody "$store" "$T/mnt" "$T/copy"
chmod -R go-rwx "$store"

setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups -- "$QMPBACKUPFS" "$store" "$T/mnt" -f >>"$T/fs.log" 2>&1 &
FS_PID=$!
qb_register_pid "$FS_PID"
qb_register_mount "$T/mnt"
for ((i = 0; i < 100; i++)); do
  grep -q " $T/mnt fuse" /proc/mounts && break   # root may not stat a mount of nobody
  _qb_alive "$FS_PID" || { cat "$T/fs.log" >&2; qb_die "qmpbackupfs as nobody exited"; }
  sleep 0.1
done
grep -q " $T/mnt fuse" /proc/mounts || qb_die "qmpbackupfs as nobody did not mount"
[ "$(awk '/^Uid:/ {print $2}' /proc/$FS_PID/status)" = "$(id -u nobody)" ] || qb_die "the daemon does not run as nobody"

p=$T/mnt/vm1/drive0/files/latest/p1
[ "$(as_nobody cat "$p/etc/hostname")" = restorehost ] || qb_die "cat as nobody"
as_nobody cat "$p/home/user/secret" > "$T/secret.out" || qb_die "a guest root-only file is unreadable"
cmp "$T/secret.out" "$T/tree/home/user/secret" || qb_die "secret differs"
as_nobody cp -a "$p/home" "$T/copy/" 2>"$T/cp.err" || true   # owners and the device node cannot be made as nobody
grep -v -e "preserving" -e "failed to preserve ownership" -e "cannot create special file.*null-dev" "$T/cp.err" && qb_die "cp -a failed"
for f in user/big.bin user/sparse.img "résumé ✓ 日本語.txt" hard1; do
  cmp "$T/tree/home/$f" "$T/copy/home/$f" || qb_die "$f copied wrong"
done
[ "$(readlink "$T/copy/home/link-short")" = ../etc/hostname ] || qb_die "symlink copied wrong"
[ "$(as_nobody find "$p" | wc -l)" -gt 200 ] || qb_die "find as nobody"
ls "$p" >/dev/null 2>&1 && qb_die "root can read a mount of nobody without allow_other"
fusermount3 -u "$T/mnt"
echo "PASS"
