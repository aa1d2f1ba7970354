#!/usr/bin/env bash
# Build (or find in the cache) a small Linux guest for qmpbackupfs's tests and
# demo: the host's Debian kernel plus an initramfs holding busybox, qemu-ga and
# the virtio/ext4 modules, with contrib/guest/init as its /init.
#
# Usage: contrib/guest/build-guest.sh [--install] [CACHE_DIR]
#
#   CACHE_DIR defaults to $QB_GUEST_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/qmpbackupfs-guest.
#   The guest lands in CACHE_DIR/<key>/{vmlinuz,initrd.gz}, where <key> is a hash
#   of this script, the init, the kernel version and the busybox/qemu-ga builds.
#   On success it prints two shell assignments (use: eval "$(build-guest.sh)"):
#     QB_GUEST_KERNEL=<path of vmlinuz>
#     QB_GUEST_INITRD=<path of initrd.gz>
#
#   Needs the Debian packages linux-image-amd64, busybox-static, qemu-guest-agent,
#   kmod and cpio.  When one is missing it exits 77 with a message, unless
#   --install is given: then it installs them with apt-get.
#   Runs unprivileged (the archive is written with cpio -R 0:0), except that
#   Debian's /boot/vmlinuz-* is readable by root only.  Two builds at once are
#   safe: each builds in a temporary directory and renames it into place.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
init_src="$here/init"
modules=(virtio_pci virtio_blk virtio_console ext4)
# crc32c-intel fails to load under TCG (no SSE4.2 there): crc32c_generic serves ext4.
skip_modules='crc32c-intel|crc32c_intel'
packages=(linux-image-amd64 busybox-static qemu-guest-agent kmod cpio)

install=0
cache=""
for a in "$@"; do
  case $a in
    --install) install=1 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$self"; exit 0 ;;
    -*) echo "build-guest: unknown option $a" >&2; exit 2 ;;
    *) cache=$a ;;
  esac
done
[ -n "$cache" ] || cache=${QB_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qmpbackupfs-guest}

log() { echo "build-guest: $*" >&2; }

# Print the newest kernel version that has both /boot/vmlinuz-VER and its modules.
find_kernel() {
  local f v best=""
  for f in /boot/vmlinuz-*; do
    [ -e "$f" ] || continue
    v=${f#/boot/vmlinuz-}
    [ -f "/lib/modules/$v/modules.dep" ] || continue
    best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n 1)
  done
  echo "$best"
}

# Print the path of program NAME (PATH plus the sbin directories), or nothing.
find_prog() {
  PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$1" 2>/dev/null || true
}

# Print what is missing for a build, one word per line.
missing_parts() {
  [ -n "$(find_kernel)" ] || echo linux-image-amd64
  [ -x /bin/busybox ] && file_is_static /bin/busybox || echo busybox-static
  [ -n "$(find_prog qemu-ga)" ] || echo qemu-guest-agent
  [ -n "$(find_prog modprobe)" ] || echo kmod
  command -v cpio >/dev/null 2>&1 || echo cpio
  command -v gzip >/dev/null 2>&1 || echo gzip
}

# True if ELF file F has no program interpreter (is statically linked).
file_is_static() {
  ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter' \
    && LC_ALL=C readelf -h "$1" >/dev/null 2>&1
}

missing=$(missing_parts)
if [ -n "$missing" ]; then
  if [ "$install" = 1 ]; then
    log "installing ${packages[*]}"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${packages[@]}" >&2
    missing=$(missing_parts)
  fi
  if [ -n "$missing" ]; then
    log "missing: ${missing//$'\n'/ } (Debian packages ${packages[*]}; run with --install)"
    exit 77
  fi
fi

kver=$(find_kernel)
vmlinuz=/boot/vmlinuz-$kver
if [ ! -r "$vmlinuz" ]; then
  log "cannot read $vmlinuz (Debian makes it readable by root only)"
  exit 77
fi
qga=$(find_prog qemu-ga)
modprobe=$(find_prog modprobe)

# The cache key: everything the result depends on.
key=$( {
  cat "$self" "$init_src"
  echo "$kver"
  stat -L -c '%s %Y' "$vmlinuz" /bin/busybox "$qga"
} | sha256sum | cut -c1-16)
out="$cache/$key"

print_paths() {
  printf 'QB_GUEST_KERNEL=%q\nQB_GUEST_INITRD=%q\n' "$out/vmlinuz" "$out/initrd.gz"
}

if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.gz" ]; then
  print_paths
  exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,data,etc,tmp,var/run,var/lib,var/log,lib/modules}
chmod 1777 "$root/tmp"
log "building the guest for kernel $kver in $out"

# busybox and one symlink per applet (never over a real file).
cp /bin/busybox "$root/bin/busybox"
/bin/busybox --list-full | while read -r p; do
  [ -e "$root/$p" ] || [ -L "$root/$p" ] && continue
  mkdir -p "$root/$(dirname "$p")"
  ln -s /bin/busybox "$root/$p"
done

# qemu-ga and the libraries it loads, at the paths the loader asks for.
cp "$qga" "$root/usr/sbin/qemu-ga"
ldd "$qga" | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }' | while read -r lib; do
  mkdir -p "$root/$(dirname "$lib")"
  cp -L "$lib" "$root/$lib"
done
[ -e "$root/lib64" ] || { log "qemu-ga has no /lib64 loader?"; exit 1; }

# Kernel modules in dependency order; compressed ones are unpacked here.
: > "$root/etc/modules.order"
for m in "${modules[@]}"; do
  "$modprobe" -S "$kver" --show-depends "$m"
done | awk '$1 == "insmod"' | while read -r _ path args; do
  base=$(basename "$path")
  case $base in *.ko.xz|*.ko.zst|*.ko.gz) ;; *.ko) ;; *) log "odd module $path"; exit 1 ;; esac
  name=${base%%.ko*}
  if echo "$name" | grep -Eqx "$skip_modules"; then continue; fi
  grep -q "^$name.ko " "$root/etc/modules.order" 2>/dev/null && continue
  grep -qx "$name.ko" "$root/etc/modules.order" 2>/dev/null && continue
  case $path in
    *.xz) xz -dc "$path" > "$root/lib/modules/$name.ko" ;;
    *.zst) zstd -qdc "$path" > "$root/lib/modules/$name.ko" ;;
    *.gz) gzip -dc "$path" > "$root/lib/modules/$name.ko" ;;
    *) cp "$path" "$root/lib/modules/$name.ko" ;;
  esac
  echo "$name.ko${args:+ $args}" >> "$root/etc/modules.order"
done
[ -s "$root/etc/modules.order" ] || { log "no modules found for ${modules[*]}"; exit 1; }

cp "$init_src" "$root/init"
chmod 755 "$root/init"
echo "qmpbackupfs-guest" > "$root/etc/hostname"

# The archive: newc, owned by root whoever builds it.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) \
  | gzip -6 > "$tmp/initrd.gz"
cp "$vmlinuz" "$tmp/vmlinuz"
rm -rf "$root"

# Publish: a rename that fails means another build got there first, which is fine.
if mv -T "$tmp" "$out" 2>/dev/null; then
  trap - EXIT
  # Drop guests built from older inputs.
  for d in "$cache"/*; do
    [ "$d" != "$out" ] && [ -f "$d/initrd.gz" ] && rm -rf "$d"
  done
fi
[ -f "$out/initrd.gz" ] || { log "build failed"; exit 1; }
print_paths
