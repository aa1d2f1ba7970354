# qmpbackupfs test library for the files/ view.  Source after tests/fs/lib.sh.

QB_FILES_DIR=$QB_SOURCE_DIR/tests/files

# Fill DIR with the test tree: small and big (20 MiB) files, a sparse file,
# short and long symbolic links, hard links, unicode names, a fifo, a device
# node, odd modes and owners, and COUNT (default 3000) small files in many/.
qb_files_tree() {
  local dir=$1 count=${2:-3000} i
  mkdir -p "$dir/etc" "$dir/home/user/docs" "$dir/many" "$dir/empty dir" "$dir/deep/a/b/c/d"
  echo "restorehost" > "$dir/etc/hostname"
  printf 'line1\nline2\n' > "$dir/home/user/docs/notes.txt"
  head -c $((20 << 20)) /dev/urandom > "$dir/home/user/big.bin"
  : > "$dir/home/user/empty"
  truncate -s 40M "$dir/home/user/sparse.img"
  printf 'in the middle' | dd of="$dir/home/user/sparse.img" bs=1 seek=$((17 << 20)) conv=notrunc status=none
  ln -s ../etc/hostname "$dir/home/link-short"
  ln -s "/very/long/target/$(printf 'x%.0s' {1..150})/end" "$dir/home/link-long"
  ln -s nowhere "$dir/home/link-dangling"
  ln "$dir/home/user/docs/notes.txt" "$dir/home/hard1"
  ln "$dir/home/user/docs/notes.txt" "$dir/deep/a/b/c/d/hard2"
  echo "unicode" > "$dir/home/résumé ✓ 日本語.txt"
  echo "spaces" > "$dir/home/name with spaces & 'quotes'"
  mkfifo "$dir/home/fifo"
  mknod "$dir/home/null-dev" c 1 3
  echo secret > "$dir/home/user/secret"
  chmod 0600 "$dir/home/user/secret"
  echo tool > "$dir/home/tool"
  chmod 4755 "$dir/home/tool"
  chown -R 1234:5678 "$dir/home/user"
  touch -d '2001-02-03 04:05:06.789' "$dir/home/user/docs/notes.txt"
  touch -h -d '1999-12-31 23:59:59' "$dir/home/link-short"
  for ((i = 0; i < count; i++)); do
    mkdir -p "$dir/many/$((i / 100))"
    echo "file $i" > "$dir/many/$((i / 100))/f$i"
  done
}

# Make the ext4 image FS of SIZE MiB from DIR and put an xattr on two files.
qb_files_mkfs() {
  local fs=$1 size=$2 dir=$3
  mkfs.ext4 -q -F -I 256 -L guestroot -d "$dir" "$fs" "${size}M" \
    || qb_die "mkfs.ext4 -d failed"
  debugfs -w -R "ea_set /etc/hostname user.comment hello-xattr" "$fs" >/dev/null 2>&1
  debugfs -w -R "ea_set /home/user/big.bin user.origin generated" "$fs" >/dev/null 2>&1
}

# Make qcow2 INC (backing file name removed, like the store's layers) that
# holds the clusters where raw NEW differs from FULLQ (a qcow2 of the
# previous state with its own chain below).
qb_files_inc() {
  local prevq=$1 newraw=$2 inc=$3
  qemu-img convert -f raw -O qcow2 "$newraw" "$inc"
  qemu-img rebase -q -f qcow2 -b "$prevq" -F qcow2 "$inc"
  qemu-img rebase -q -u -b "" "$inc"
}

# Loop-mount bytes [START, START+LEN) of IMAGE read-only on DIR (as root,
# journal not replayed); mount(8) sets the loop device up (locked against
# other tests doing the same) and detaches it at umount.
qb_files_loop_mount() {
  local image=$1 start=$2 len=$3 dir=$4
  mkdir -p "$dir"
  mount -o "ro,noload,loop,offset=$start,sizelimit=$len" "$image" "$dir" \
    || qb_die "loop mount of $image failed"
  qb_on_exit "umount '$dir' 2>/dev/null || true"
}

# Unmount DIR (its loop device goes with it).
qb_files_loop_unmount() {
  umount "$1" || qb_die "umount $1 failed"
}
