#!/usr/bin/env python3
"""Write a raw disk image with a partition table, for the files/ tests.

usage: mkdisk.py OUT SIZE_MIB TABLE PART...
  TABLE  gpt, mbr or none (PART is then the whole disk, written at 0)
  PART   START_MIB:FILE  copy FILE there (its size is the partition's)
         START_MIB:SIZE_MIB:magic:OFFSET:TEXT  an empty partition with TEXT at OFFSET
GPT tables carry correct CRCs (the kernel's loop -P reads them)."""
import struct
import sys
import uuid
import zlib

SECTOR = 512


def main():
    out, size_mib, table = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    size = size_mib << 20
    img = bytearray(size)
    parts = []
    for spec in sys.argv[4:]:
        f = spec.split(":")
        start = int(f[0]) << 20
        if len(f) == 2:
            data = open(f[1], "rb").read()
            length = len(data)
            img[start:start + length] = data
        else:
            length = int(f[1]) << 20
            off, text = int(f[3]), f[4].encode()
            img[start + off:start + off + len(text)] = text
        assert start + length <= size, spec
        parts.append((start // SECTOR, length // SECTOR))
    if table == "mbr":
        mbr = bytearray(SECTOR)
        for i, (lba, n) in enumerate(parts):
            mbr[446 + 16 * i:446 + 16 * i + 16] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83,
                                                              b"\0\0\0", lba, n)
        mbr[510:512] = b"\x55\xaa"
        img[0:SECTOR] = mbr
    elif table == "gpt":
        sectors = size // SECTOR
        mbr = bytearray(SECTOR)
        mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0xee, b"\0\0\0", 1,
                                   min(sectors - 1, 0xffffffff))
        mbr[510:512] = b"\x55\xaa"
        img[0:SECTOR] = mbr
        linux = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4").bytes_le
        entries = bytearray(128 * 128)
        for i, (lba, n) in enumerate(parts):
            entries[128 * i:128 * i + 56] = struct.pack("<16s16sQQQ", linux, uuid.uuid4().bytes_le,
                                                       lba, lba + n - 1, 0)
        ecrc = zlib.crc32(entries)

        def header(my, alt, elba):
            h = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, my,
                                      alt, 34, sectors - 34, uuid.uuid4().bytes_le, elba, 128,
                                      128, ecrc))
            h[16:20] = struct.pack("<I", zlib.crc32(h))
            return h + bytearray(SECTOR - len(h))
        img[SECTOR:2 * SECTOR] = header(1, sectors - 1, 2)
        img[2 * SECTOR:34 * SECTOR] = entries
        img[(sectors - 33) * SECTOR:(sectors - 1) * SECTOR] = entries
        img[(sectors - 1) * SECTOR:] = header(sectors - 1, 1, sectors - 33)
    open(out, "wb").write(img)


main()
