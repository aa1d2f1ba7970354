#!/usr/bin/env bash
# Build the Debian package of qmpbackupfs from a clean copy of the source
# tree, in a temporary directory: the source tree is never written to.
#
# Usage: contrib/build-deb.sh [--out DIR] [--ref REF] [--no-install-deps] [--keep]
#   --out DIR          where the .deb goes (default: the current directory)
#   --ref REF          build the git commit REF (git archive) instead of the
#                      files as they are now (tracked and new, not ignored)
#   --no-install-deps  fail (exit 3) instead of installing missing build
#                      dependencies with apt-get
#   --keep             keep the temporary build directory (printed)
# Prints the path of the .deb on the last line.  Exit 0 ok, 1 build failed,
# 2 usage, 3 build dependencies missing.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
out=$PWD
ref=
install_deps=1
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    --no-install-deps) install_deps=0; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

# What packaging needs on top of what building needs (debian/control).
pkgs=(dpkg-dev debhelper build-essential meson ninja-build pkg-config
      libfuse3-dev libjson-c-dev libqcow-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ $install_deps = 0 ]; then
    echo "build-deb: missing build dependencies: ${missing[*]} (run without --no-install-deps to install them)" >&2
    exit 3
  fi
  echo "build-deb: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/qmpbackupfs-deb.XXXXXX")
if [ $keep = 1 ]; then
  echo "build-deb: building in $work" >&2
else
  trap 'rm -rf "$work"' EXIT
fi
tree=$work/qmpbackupfs

# A clean copy: git's files only (no build directories, no local leftovers).
mkdir -p "$tree"
if [ -n "$ref" ]; then
  git -C "$src" archive --format=tar "$ref" | tar -x -C "$tree"
elif git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$src" && git ls-files -z --cached --others --exclude-standard \
     | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
     | tar --null -T - -c) | tar -x -C "$tree"
else
  (cd "$src" && tar --exclude='./build*' --exclude=./debian/qmpbackupfs --exclude=./.git -c .) \
    | tar -x -C "$tree"
fi

(cd "$tree" && dpkg-buildpackage -us -uc -b) > "$work/build.log" 2>&1 || {
  tail -n 40 "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed (log above)" >&2
  exit 1
}
debs=("$work"/*.deb)
[ -e "${debs[0]}" ] || { echo "build-deb: no .deb produced" >&2; exit 1; }
cp "${debs[@]}" "$out/"
for d in "${debs[@]}"; do
  echo "$out/$(basename "$d")"
done
