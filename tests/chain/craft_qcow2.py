#!/usr/bin/env python3
"""Write hand-made qcow2 v3 images, valid ones and hostile ones.

    craft_qcow2.py KIND OUT [CLUSTER_BITS [L1_ENTRIES]]

Layout: cluster 0 the header, 1 the refcount table, 2 a refcount block, 3..
the L1 table, then the L2 tables, then data clusters.  Kinds:

  valid           16 MiB, data (0x5a) in clusters 0 and 3, zero cluster 5
  zero-stripes    12 L2 tables of alternating zero and unallocated entries
  shared-l2       ~800 KiB file whose 100,000 L1 entries (or L1_ENTRIES) all
                  name one L2 table of zero clusters (a virtual size of ~50 TB)
  overlap-l1      the L2 table of L1 entry 0 is the L1 table's own cluster
  overlap-refcount the L2 table of L1 entry 0 is the refcount table
  overlap-data    L1 entry 1's L2 table is a data cluster of L1 entry 0
  huge-l1-size    l1_size 0x7fffffff
  huge-size       a virtual size of 2^61 bytes (4 billion L1 entries)
  l1-past-eof     the L1 table at 1 TiB
  l2-past-eof     L1 entry 0 names an L2 table at 1 TiB
  refcount-past-eof the refcount table at 1 TiB
  cluster-bits    cluster_bits 30
  data-past-eof   L2 entry 1 names data at 1 TiB
  data-shared     L2 entries 0 and 1 name the same data cluster
  sparse-data     valid: one data cluster every 4096 clusters, each with its
                  own L2 table (in 512-byte clusters the chain reader's map
                  needs 32 KiB per 1 KiB of file: 64 MiB for 2048 of them)
"""
import struct
import sys

MAGIC = 0x514649FB


def header(cb, size, l1_size, l1_off, rt_off, rt_clusters):
    h = struct.pack(">IIQIIQIIQQIIQQQQII",
                    MAGIC, 3, 0, 0, cb, size, 0, l1_size, l1_off,
                    rt_off, rt_clusters, 0, 0,
                    0, 0, 0,     # incompatible, compatible, autoclear features
                    4, 104)      # refcount order (16 bits), header length
    assert len(h) == 104
    return h


class Image:
    def __init__(self, cb, size, n_l1=None):
        self.cb = cb
        self.c = 1 << cb
        self.size = size
        span = 1 << (2 * cb - 3)
        self.n_l1 = n_l1 if n_l1 is not None else max(1, (size + span - 1) // span)
        self.l1_off = 3 * self.c
        l1_clusters = (self.n_l1 * 8 + self.c - 1) // self.c
        self.next = self.l1_off + l1_clusters * self.c
        self.l1 = [0] * self.n_l1
        self.tables = {}        # offset -> list of 64-bit entries
        self.data = {}          # offset -> bytes
        self.hdr = dict(l1_size=self.n_l1, l1_off=self.l1_off, rt_off=self.c, rt_clusters=1,
                        cb=cb, size=size)

    def alloc(self):
        off = self.next
        self.next += self.c
        return off

    def l2(self, i):
        """A new L2 table for L1 entry I."""
        off = self.alloc()
        self.tables[off] = [0] * (self.c // 8)
        self.l1[i] = off | (1 << 63)
        return self.tables[off]

    def put_data(self, fill):
        off = self.alloc()
        self.data[off] = bytes([fill]) * self.c
        return off

    def write(self, path, truncate_to=None):
        h = self.hdr
        end = self.next
        buf = bytearray(end)
        buf[0:104] = header(h["cb"], h["size"], h["l1_size"], h["l1_off"], h["rt_off"],
                            h["rt_clusters"])
        # refcount table -> block at cluster 2, block counts every cluster once
        struct.pack_into(">Q", buf, self.c, 2 * self.c)
        for k in range(min(end // self.c, self.c // 2)):
            struct.pack_into(">H", buf, 2 * self.c + 2 * k, 1)
        for i, e in enumerate(self.l1):
            struct.pack_into(">Q", buf, self.l1_off + 8 * i, e)
        for off, ents in self.tables.items():
            if off + self.c <= end:
                buf[off:off + self.c] = struct.pack(">%dQ" % len(ents), *ents)
        for off, d in self.data.items():
            buf[off:off + self.c] = d
        with open(path, "wb") as f:
            f.write(bytes(buf[:truncate_to] if truncate_to else buf))


TIB = 1 << 40


def craft(kind, cb, n_shared=100000):
    c = 1 << cb
    if kind == "valid":
        im = Image(cb, 16 << 20)
        t = im.l2(0)
        t[0] = im.put_data(0x5A) | (1 << 63)
        t[3] = im.put_data(0x5A) | (1 << 63)
        t[5] = 1
        return im
    if kind == "zero-stripes":
        span = 1 << (2 * cb - 3)
        im = Image(cb, 12 * span)
        for i in range(12):
            t = im.l2(i)
            for j in range(0, len(t), 2):
                t[j] = 1
        return im
    if kind == "sparse-data":
        span = 1 << (2 * cb - 3)
        step = max(1, (4096 << cb) // span)   # L1 entries per 4096 clusters
        im = Image(cb, 2048 * step * span)
        for i in range(2048):
            im.l2(i * step)[0] = im.put_data(0x42) | (1 << 63)
        return im
    if kind == "shared-l2":
        n = n_shared
        span = 1 << (2 * cb - 3)
        im = Image(cb, n * span, n)
        t = im.l2(0)
        for j in range(len(t)):
            t[j] = 1
        for i in range(1, n):
            im.l1[i] = im.l1[0]
        return im
    im = Image(cb, 16 << 20)
    t = im.l2(0)
    t[0] = im.put_data(0x11) | (1 << 63)
    t[1] = im.put_data(0x22) | (1 << 63)
    if kind == "overlap-l1":
        im.l1[0] = im.l1_off | (1 << 63)
    elif kind == "overlap-refcount":
        im.l1[0] = c | (1 << 63)
    elif kind == "overlap-data":
        im = Image(cb, 2 << (2 * cb - 3))
        t = im.l2(0)
        d = im.put_data(0x33)
        t[0] = d | (1 << 63)
        im.l1[1] = d | (1 << 63)
    elif kind == "huge-l1-size":
        im.hdr["l1_size"] = 0x7FFFFFFF
    elif kind == "huge-size":
        im.hdr["size"] = 1 << 61
        im.hdr["l1_size"] = 0x7FFFFFFF
    elif kind == "l1-past-eof":
        im.hdr["l1_off"] = TIB
    elif kind == "l2-past-eof":
        im.l1[0] = TIB | (1 << 63)
    elif kind == "refcount-past-eof":
        im.hdr["rt_off"] = TIB
    elif kind == "cluster-bits":
        im.hdr["cb"] = 30
    elif kind == "data-past-eof":
        t[1] = TIB | (1 << 63)
    elif kind == "data-shared":
        t[1] = t[0]
    else:
        sys.exit("craft_qcow2.py: unknown kind " + kind)
    return im


def main():
    if len(sys.argv) not in (3, 4, 5):
        sys.exit(__doc__)
    cb = int(sys.argv[3]) if len(sys.argv) >= 4 else 16
    n = int(sys.argv[4]) if len(sys.argv) == 5 else 100000
    craft(sys.argv[1], cb, n).write(sys.argv[2])


if __name__ == "__main__":
    main()
