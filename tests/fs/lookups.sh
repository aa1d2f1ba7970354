#!/usr/bin/env bash
# Lookups of names that do not exist allocate nothing in the daemon: 400,000
# stats of missing names (in the root, a VM folder, a disk folder, restore/
# and chain/) leave the daemon's resident memory within a few MiB of where it
# was, and the tree still reads byte-exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-io python3 cmp
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
qb_seed_full "$store/vm1/disk0" 1700000000 disk0 $((32 << 20)) "$T/ref.raw"
# In a sanitizer build freed memory waits in a quarantine (up to 256 MiB) to
# catch use after free; it would count as growth here: none for this test.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0:thread_local_quarantine_size_kb=0
qb_fs_mount "$store" "$mnt"
p=$(qb_fs_points "$mnt/vm1/disk0/restore" | head -1)
qb_cmp "$mnt/vm1/disk0/restore/$p" "$T/ref.raw"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$FS_PID/status"; }
before=$(rss)
python3 - "$mnt" <<'PY'
import os, sys
m = sys.argv[1]
dirs = [m, m + "/vm1", m + "/vm1/disk0", m + "/vm1/disk0/restore", m + "/vm1/disk0/chain"]
missing = 0
for i in range(400000):
    d = dirs[i % len(dirs)]
    name = "missing-%07d%s" % (i, ".img" if d.endswith("restore") else "")
    try:
        os.stat(d + "/" + name)
    except FileNotFoundError:
        missing += 1
assert missing == 400000, missing
PY
after=$(rss)
qb_log "daemon RSS: $before KiB before, $after KiB after 400,000 missing lookups"
[ $((after - before)) -lt $((16 * 1024)) ] || qb_die "daemon RSS grew by $(( (after - before) / 1024 )) MiB"
_qb_alive "$FS_PID" || qb_die "the daemon died"
qb_cmp "$mnt/vm1/disk0/restore/$p" "$T/ref.raw"
ls "$mnt/vm1/disk0/chain" | grep -q FULL || qb_die "chain/ lists no layer"
qb_fs_unmount "$mnt"
echo "lookups: ok"
