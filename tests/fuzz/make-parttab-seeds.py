#!/usr/bin/env python3
"""Write the seed corpus of fuzz_parttab into DIR: small disks (64 KiB) with
an MBR with logical partitions, a cyclic extended chain, a GPT, an ext
superblock without a table, and an NTFS boot sector.

usage: make-parttab-seeds.py DIR"""
import os
import struct
import sys

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


def main():
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
