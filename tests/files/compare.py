#!/usr/bin/env python3
"""Compare two directory trees the way a restore must match: names, types,
modes, owners, sizes, mtimes (ns), link counts, symlink targets, xattrs,
file bytes, and which names are hard links of each other.

usage: compare.py [--layout] [--exclude REL]... TRUTH VIEW
                               (exit 0: equal; 1: differences, printed)
       compare.py --count DIR  (print the number of entries)
--layout also compares the sparse layout of regular files: st_blocks and
the data extents SEEK_DATA/SEEK_HOLE report.  --exclude leaves the entry
REL (and what is below it) out on both sides."""
import errno
import hashlib
import os
import stat
import sys


def walk(root):
    out = {}
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for n in dirs + sorted(files):
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = p
    return out


def xattrs(p):
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(p, n, follow_symlinks=False) for n in sorted(names)}


def digest(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def extents(p):
    out = []
    fd = os.open(p, os.O_RDONLY)
    try:
        size, off = os.fstat(fd).st_size, 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            off = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, off))
    finally:
        os.close(fd)
    return out


LAYOUT = False


def describe(root, rel, p):
    st = os.lstat(p)
    d = {
        "mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns, "nlink": st.st_nlink, "xattrs": xattrs(p),
    }
    if not stat.S_ISDIR(st.st_mode):
        d["size"] = st.st_size
    if stat.S_ISLNK(st.st_mode):
        d["target"] = os.readlink(p)
    if stat.S_ISREG(st.st_mode):
        # the map before the bytes: reading a preallocated (unwritten) range
        # puts pages in the kernel's cache, and then ext4 reports it as data
        if LAYOUT:
            d["blocks"] = st.st_blocks
            d["extents"] = extents(p)
        d["sha256"] = digest(p)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        d["rdev"] = st.st_rdev
    return d, st.st_ino


def main():
    if sys.argv[1] == "--count":
        print(len(walk(sys.argv[2])))
        return 0
    global LAYOUT
    args, excl = sys.argv[1:], []
    while args and args[0].startswith("--"):
        if args[0] == "--layout":
            LAYOUT = True
            args = args[1:]
        elif args[0] == "--exclude":
            excl.append(args[1])
            args = args[2:]
        else:
            raise SystemExit("compare.py: unknown option " + args[0])
    sys.argv[1:] = args

    def keep(rel):
        return not any(rel == x or rel.startswith(x + "/") for x in excl)
    a, b = walk(sys.argv[1]), walk(sys.argv[2])
    a = {k: v for k, v in a.items() if keep(k)}
    b = {k: v for k, v in b.items() if keep(k)}
    bad = 0
    for rel in sorted(set(a) ^ set(b)):
        print("only in %s: %s" % ("truth" if rel in a else "view", rel))
        bad += 1
    links_a, links_b = {}, {}
    for rel in sorted(set(a) & set(b)):
        da, ia = describe(sys.argv[1], rel, a[rel])
        db, ib = describe(sys.argv[2], rel, b[rel])
        if da != db:
            print("differs: %s\n  truth %s\n  view  %s" % (rel, da, db))
            bad += 1
        if da.get("nlink", 1) > 1 and "sha256" in da:
            links_a.setdefault(ia, []).append(rel)
            links_b.setdefault(ib, []).append(rel)
    ga = sorted(sorted(v) for v in links_a.values())
    gb = sorted(sorted(v) for v in links_b.values())
    if ga != gb:
        print("hard link groups differ:\n  truth %s\n  view  %s" % (ga, gb))
        bad += 1
    print("compared %d entries, %d hard link groups, %d differences" % (len(a), len(ga), bad))
    return 1 if bad else 0


sys.exit(main())
