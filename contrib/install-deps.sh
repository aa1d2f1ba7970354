#!/usr/bin/env bash
# Install what building and testing qmpbackupfs needs on Debian 12, if missing.
# Usage: contrib/install-deps.sh [--bench]   (--bench adds the benchmark tools)
set -euo pipefail

pkgs=(gcc pkg-config meson ninja-build libjson-c-dev libqcow-dev libfuse3-dev fuse3 libext2fs-dev libxxhash-dev
      zlib1g-dev ntfs-3g-dev ntfs-3g
      qemu-system-x86 qemu-utils qemu-guest-agent util-linux e2fsprogs
      linux-image-amd64 busybox-static kmod cpio clang libclang-rt-14-dev python3
      systemd debhelper dpkg-dev man-db groff-base bash-completion rsync attr openssh-client faketime
      glusterfs-client)   # glusterfs and glusterfsd (no glusterd needed): the hosts tests
[ "${1:-}" = "--bench" ] && pkgs+=(fio qemu-system-common libguestfs-tools)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: everything is installed"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
