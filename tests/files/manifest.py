#!/usr/bin/env python3
"""Check a folder against what the guest listed of its own filesystem.

usage: manifest.py STATS SUMS VIEW [--exclude REL]...

STATS: lines "./REL|size|rawmode(hex)|uid|gid|mtime(s)|nlink|type" printed
in the guest by `find . -exec stat -c '%n|%s|%f|%u|%g|%Y|%h|%F' {} +`;
SUMS: `find . -type f -exec md5sum {} +` of the guest.  Every entry the
guest had is in VIEW with those attributes and bytes, and VIEW has nothing
more.  Exit 0: equal; 1: differences, printed."""
import hashlib
import os
import sys


def main():
    stats, sums, view = sys.argv[1:4]
    excl = sys.argv[5::2] if len(sys.argv) > 4 else []

    def keep(rel):
        return not any(rel == x or rel.startswith(x + "/") for x in excl)
    want = {}
    for line in open(stats, "rb").read().decode().splitlines():
        name, size, mode, uid, gid, mtime, nlink, _ = line.rsplit("|", 7)
        rel = os.path.normpath(name)
        if rel == "." or not keep(rel):
            continue
        want[rel] = (int(mode, 16), int(uid), int(gid), int(mtime), int(nlink),
                     None if int(mode, 16) & 0o170000 == 0o040000 else int(size))
    md5 = {}
    for line in open(sums, "rb").read().decode().splitlines():
        h, name = line.split("  ", 1)
        rel = os.path.normpath(name)
        if keep(rel):
            md5[rel] = h
    have = {}
    for d, dirs, files in os.walk(view):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, view)
            if keep(rel):
                have[rel] = p
    bad = 0
    for rel in sorted(set(want) ^ set(have)):
        print("only in %s: %s" % ("guest" if rel in want else "view", rel))
        bad += 1
    for rel in sorted(set(want) & set(have)):
        st = os.lstat(have[rel])
        got = (st.st_mode, st.st_uid, st.st_gid, int(st.st_mtime), st.st_nlink,
               None if os.path.isdir(have[rel]) and not os.path.islink(have[rel]) else st.st_size)
        if got != want[rel]:
            print("differs: %s\n  guest %s\n  view  %s" % (rel, want[rel], got))
            bad += 1
        if rel in md5:
            with open(have[rel], "rb") as f:
                h = hashlib.md5()
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            if h.hexdigest() != md5[rel]:
                print("bytes differ: %s" % rel)
                bad += 1
    print("checked %d guest entries (%d with bytes), %d differences" % (len(want), len(md5), bad))
    return 1 if bad else 0


sys.exit(main())
