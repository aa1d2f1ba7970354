#!/usr/bin/env bash
# Write the seed corpus of fuzz_ntfs into DIR (as root: it mounts with ntfs-3g):
# a 2 MiB mkntfs volume holding a folder, small and 100 KiB files, a hard
# link, a symbolic link and a named stream; and, with --regress, damaged
# copies of it (MFT records overwritten with random bytes, the boot sector's
# cluster size and MFT location changed).
#   usage: make-ntfs-seeds.sh [--regress] DIR
set -euo pipefail
regress=0
[ "${1:-}" = --regress ] && { regress=1; shift; }
out=${1:?usage: make-ntfs-seeds.sh [--regress] DIR}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'umount "$tmp/m" 2>/dev/null || true; rm -rf "$tmp"' EXIT
truncate -s 2M "$tmp/v.raw"
mkntfs -q -F -Q -c 512 -L seed "$tmp/v.raw" >/dev/null 2>&1
mkdir "$tmp/m"
ntfs-3g "$tmp/v.raw" "$tmp/m"
mkdir -p "$tmp/m/dir/sub"
echo hello > "$tmp/m/dir/a.txt"
head -c 102400 /dev/urandom > "$tmp/m/dir/sub/big.bin"
ln "$tmp/m/dir/a.txt" "$tmp/m/hard"
ln -s dir/a.txt "$tmp/m/link"
setfattr -n user.stream -v value "$tmp/m/dir/a.txt"
umount "$tmp/m"
if [ $regress = 0 ]; then
  cp "$tmp/v.raw" "$out/small"
  exit 0
fi
# the MFT's byte offset from the boot sector
mft=$(python3 -c 'import struct,sys; b=open(sys.argv[1],"rb").read(512); print(struct.unpack("<Q",b[48:56])[0]*b[13]*struct.unpack("<H",b[11:13])[0])' "$tmp/v.raw")
cp "$tmp/v.raw" "$out/mft-garbage"
dd if=/dev/urandom of="$out/mft-garbage" bs=1024 seek=$((mft / 1024 + 16)) count=8 conv=notrunc status=none
cp "$tmp/v.raw" "$out/mft-zeroed-root"
dd if=/dev/zero of="$out/mft-zeroed-root" bs=1024 seek=$((mft / 1024 + 5)) count=1 conv=notrunc status=none
cp "$tmp/v.raw" "$out/boot-bad-cluster"
printf '\x80' | dd of="$out/boot-bad-cluster" bs=1 seek=13 conv=notrunc status=none
cp "$tmp/v.raw" "$out/boot-mft-beyond"
printf '\xff\xff\xff\x7f' | dd of="$out/boot-mft-beyond" bs=1 seek=48 conv=notrunc status=none
