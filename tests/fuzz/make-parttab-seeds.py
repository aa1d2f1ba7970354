#!/usr/bin/env python3
"""Write the seed corpus of fuzz_parttab into DIR: small disks (64 KiB) with
an MBR with logical partitions, a cyclic extended chain, a GPT (its CRC32s
wrong, and right), a GPT whose primary is damaged and backup is good, an
ext superblock without a table, and an NTFS boot sector.  With --regress it
writes the GPT CRC cases into DIR instead (tests/fuzz/regress/parttab).

usage: make-parttab-seeds.py [--regress] DIR"""
import os
import struct
import sys
import zlib

S = 512
SIZE = 64 << 10


def mbr_entry(ptype, lba, n, status=0):
    return struct.pack("<B3sB3sII", status, b"\0\0\0", ptype, b"\0\0\0", lba, n)


def disk():
    return bytearray(SIZE)


def put_mbr(d, entries, at=0):
    for i, e in enumerate(entries):
        d[at + 446 + 16 * i:at + 462 + 16 * i] = e
    d[at + 510:at + 512] = b"\x55\xaa"


def gpt_disk(bad_primary_header=False, bad_primary_entries=False, count=4, esize=128):
    """A disk with a protective MBR and a GPT with right CRC32s (primary at
    sector 1, entries at 2; backup entries at the end, backup header last)."""
    d = disk()
    sectors = SIZE // S
    put_mbr(d, [mbr_entry(0xee, 1, sectors - 1)])
    ents = bytearray(count * esize)
    for i, (a, b) in enumerate([(34, 40), (41, 60), (0, 0), (61, 90)][:count]):
        e = struct.pack("<16s16sQQQ", b"t" * 16 if a else b"\0" * 16, b"u" * 16, a, b, 0)
        ents[esize * i:esize * i + len(e)] = e
    ecrc = zlib.crc32(ents)
    blba = sectors - 1 - (len(ents) + S - 1) // S

    def header(my, alt, elba):
        h = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, my, alt,
                                  34, blba - 1, b"g" * 16, elba, count, esize, ecrc))
        h[16:20] = struct.pack("<I", zlib.crc32(h))
        return h
    h = header(1, sectors - 1, 2)
    if bad_primary_header:
        h[40] ^= 1
    d[S:S + len(h)] = h
    d[2 * S:2 * S + len(ents)] = ents
    if bad_primary_entries:
        d[2 * S + 40] ^= 1
    d[blba * S:blba * S + len(ents)] = ents
    h = header(sectors - 1, 1, blba)
    d[(sectors - 1) * S:(sectors - 1) * S + len(h)] = h
    d[34 * S + 1024 + 0x38:34 * S + 1024 + 0x3a] = b"\x53\xef"
    return d


def regress(out):
    os.makedirs(out, exist_ok=True)
    cases = {
        "gpt-primary-header-crc": gpt_disk(bad_primary_header=True),
        "gpt-primary-entries-crc": gpt_disk(bad_primary_entries=True),
        "gpt-both-bad": gpt_disk(bad_primary_header=True),
        "gpt-huge-array": gpt_disk(),
    }
    h = cases["gpt-huge-array"]      # claims 2^20 entries of 4 KiB, header CRC right
    h[S + 80:S + 88] = struct.pack("<II", 1 << 20, 4096)
    h[S + 16:S + 20] = b"\0\0\0\0"
    h[S + 16:S + 20] = struct.pack("<I", zlib.crc32(h[S:S + 92]))
    d = cases["gpt-both-bad"]
    d[SIZE - S + 40] ^= 1
    for name, data in cases.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


def main():
    if sys.argv[1] == "--regress":
        regress(sys.argv[2])
        return
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    seeds = {}
    d = disk()
    put_mbr(d, [mbr_entry(0x83, 2, 10, 0x80), mbr_entry(0x05, 20, 80), mbr_entry(0x82, 100, 20)])
    put_mbr(d, [mbr_entry(0x83, 1, 10), mbr_entry(0x05, 20, 20)], at=20 * S)
    put_mbr(d, [mbr_entry(0x83, 1, 10)], at=40 * S)
    seeds["mbr-logical"] = d
    d = disk()
    put_mbr(d, [mbr_entry(0x0f, 4, 40)])
    put_mbr(d, [mbr_entry(0x83, 1, 2), mbr_entry(0x05, 0, 40)], at=4 * S)
    seeds["ebr-cycle"] = d
    d = disk()
    put_mbr(d, [mbr_entry(0xee, 1, SIZE // S - 1)])
    h = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, 1, SIZE // S - 1,
                    34, SIZE // S - 34, b"g" * 16, 2, 4, 128, 0)
    d[S:S + len(h)] = h
    for i, (a, b) in enumerate([(34, 40), (41, 60), (0, 0), (61, 200)]):
        e = struct.pack("<16s16sQQQ", b"t" * 16 if a else b"\0" * 16, b"u" * 16, a, b, 0)
        d[2 * S + 128 * i:2 * S + 128 * i + len(e)] = e
    d[34 * S + 1024 + 0x38:34 * S + 1024 + 0x3a] = b"\x53\xef"
    seeds["gpt"] = d
    seeds["gpt-crc"] = gpt_disk()
    seeds["gpt-backup"] = gpt_disk(bad_primary_entries=True)
    d = disk()
    d[1024 + 0x38:1024 + 0x3a] = b"\x53\xef"
    d[1024 + 0x60] = 0x4
    seeds["ext-whole"] = d
    d = disk()
    d[3:11] = b"NTFS    "
    d[510:512] = b"\x55\xaa"
    seeds["ntfs"] = d
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


main()
