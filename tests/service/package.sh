#!/usr/bin/env bash
# The Debian package: contrib/build-deb.sh builds it with dpkg-buildpackage
# from a clean copy of the source tree (which stays untouched), and the .deb
# holds what it should: the three programs, the systemd units (pointing at
# /usr/bin and the installed helper), the settings files as conffiles, the
# copyright (GPL-2+).  Unpacked into a scratch root, the programs run
# (--version, --help) and the units pass `systemd-analyze verify`; lintian,
# when installed, finds no error.  Skips (77) when dpkg-buildpackage or
# debhelper is not installed (contrib/build-deb.sh installs them).
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
qb_need dpkg-deb
command -v dpkg-buildpackage >/dev/null 2>&1 && command -v dh >/dev/null 2>&1 || {
  echo "SKIP: dpkg-buildpackage or debhelper not installed (contrib/build-deb.sh installs them)"
  exit 77
}
qb_tmpdir

src=$QB_SOURCE_DIR
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  before=$(git -C "$src" status --porcelain --ignored | grep -v '^!! build' || true)
fi

rc=0
"$src/contrib/build-deb.sh" --no-install-deps --out "$T/out" > "$T/build.out" 2> "$T/build.err" || rc=$?
if [ $rc = 3 ]; then
  echo "SKIP: $(cat "$T/build.err")"
  exit 77
fi
[ $rc = 0 ] || qb_die "contrib/build-deb.sh failed ($rc): $(tail -n 30 "$T/build.err")"
deb=$(grep '/qmpbackupfs_[^/]*\.deb$' "$T/build.out" | tail -1)
[ -f "$deb" ] || qb_die "no qmpbackupfs .deb among: $(cat "$T/build.out")"

if [ -n "${before+x}" ]; then
  after=$(git -C "$src" status --porcelain --ignored | grep -v '^!! build' || true)
  [ "$before" = "$after" ] || qb_die "the package build changed the source tree: $(diff <(echo "$before") <(echo "$after"))"
fi

# Contents.
dpkg-deb -c "$deb" | awk '{ print $NF }' | sed 's|^\./|/|' > "$T/files"
for f in /usr/bin/qmpbackupfs /usr/bin/qmpbackup /usr/bin/qmprebase \
         /lib/systemd/system/qmpbackupfs.service /lib/systemd/system/qmpbackup@.service \
         /lib/systemd/system/qmpbackup@.timer /usr/libexec/qmpbackupfs/qmpbackup-vm \
         /etc/default/qmpbackupfs /etc/default/qmpbackup /usr/share/doc/qmpbackupfs/copyright; do
  grep -qx "$f" "$T/files" || qb_die "$f missing from the package: $(cat "$T/files")"
done
dpkg-deb -e "$deb" "$T/control"
for f in /etc/default/qmpbackupfs /etc/default/qmpbackup; do
  grep -qx "$f" "$T/control/conffiles" || qb_die "$f is not a conffile"
done
grep -q '^Depends:.*fuse3' "$T/control/control" || qb_die "no dependency on fuse3: $(cat "$T/control/control")"
grep -q '^Depends:.*libfuse3' "$T/control/control" || qb_die "shared library dependencies missing"

root=$T/root
dpkg-deb -x "$deb" "$root"
grep -q 'GNU General Public License' "$root/usr/share/doc/qmpbackupfs/copyright" \
  || qb_die "copyright does not name the GPL"
grep -qx 'ExecStart=/usr/bin/qmpbackupfs ${STORE} ${MOUNTPOINT} $OPTIONS' \
  "$root/lib/systemd/system/qmpbackupfs.service" || qb_die "the mount unit does not run /usr/bin/qmpbackupfs"
grep -qx 'ExecStart=/usr/libexec/qmpbackupfs/qmpbackup-vm %i' \
  "$root/lib/systemd/system/qmpbackup@.service" || qb_die "the backup unit does not run the installed helper"
grep -q '^exec /usr/bin/qmpbackup ' "$root/usr/libexec/qmpbackupfs/qmpbackup-vm" \
  || qb_die "the helper does not run /usr/bin/qmpbackup"

# The man pages are in the package.
for m in man1/qmpbackup.1 man1/qmprebase.1 man8/qmpbackupfs.8; do
  [ -f "$root/usr/share/man/$m.gz" ] || qb_die "the package has no usr/share/man/$m.gz"
done

# The unpacked programs run.
"$root/usr/bin/qmpbackupfs" --version > "$T/v" 2>&1 || qb_die "qmpbackupfs --version: $(cat "$T/v")"
grep -q '^qmpbackupfs [0-9]' "$T/v" || qb_die "qmpbackupfs --version says: $(cat "$T/v")"
for p in qmpbackupfs qmpbackup qmprebase; do
  "$root/usr/bin/$p" --help > "$T/h" 2>&1 || qb_die "$p --help failed: $(cat "$T/h")"
  grep -qi usage "$T/h" || qb_die "$p --help prints no usage: $(cat "$T/h")"
done
out=$(STORE=$T/s SOCKETS=$T/none "$root/usr/libexec/qmpbackupfs/qmpbackup-vm" '../x' 2>&1) \
  && qb_die "the helper accepted the VM name ../x"
case $out in *"not a VM name"*) ;; *) qb_die "the helper's refusal of ../x: $out" ;; esac

# The packaged units, with their programs pointed into the scratch root.
if command -v systemd-analyze >/dev/null 2>&1; then
  mkdir -p "$T/units"
  for u in qmpbackupfs.service qmpbackup@.service qmpbackup@.timer; do
    sed "s|/usr/|$root/usr/|g" "$root/lib/systemd/system/$u" > "$T/units/$u"
  done
  out=$(cd "$T/units" && MANPATH=$root/usr/share/man systemd-analyze verify ./qmpbackupfs.service ./qmpbackup@vm1.service \
        ./qmpbackup@vm1.timer 2>&1) || qb_die "systemd-analyze verify: $out"
  [ -z "$out" ] || qb_die "systemd-analyze verify has something to say: $out"
fi

if command -v lintian >/dev/null 2>&1; then
  lintian --fail-on error --tag-display-limit 0 "$deb" > "$T/lintian" 2>&1 \
    || qb_die "lintian found errors: $(cat "$T/lintian")"
  qb_log "lintian: $(grep -c '^[WI]:' "$T/lintian" || true) warnings/notes, no errors"
else
  qb_log "lintian not installed: not run"
fi
echo "package: ok ($(basename "$deb"), $(stat -c %s "$deb") bytes)"
