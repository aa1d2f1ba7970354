#!/usr/bin/env python3
"""Print the guest writes that turn raw disk OLD into raw disk NEW: one line
"FILE OFFSET LENGTH" per changed run (64 KiB granularity, runs up to 1 MiB),
with the run's new bytes written to FILE under DIR.

usage: diffwrite.py OLD NEW DIR"""
import os
import sys

CHUNK = 64 << 10
RUN_MAX = 1 << 20


def main():
    old, new, d = sys.argv[1], sys.argv[2], sys.argv[3]
    assert os.path.getsize(old) == os.path.getsize(new)
    runs = []
    with open(old, "rb") as a, open(new, "rb") as b:
        off = 0
        while True:
            x, y = a.read(CHUNK), b.read(CHUNK)
            if not y:
                break
            if x != y:
                if runs and runs[-1][0] + runs[-1][1] == off and runs[-1][1] < RUN_MAX:
                    runs[-1][1] += len(y)
                else:
                    runs.append([off, len(y)])
            off += len(y)
    with open(new, "rb") as b:
        for i, (off, length) in enumerate(runs):
            b.seek(off)
            path = os.path.join(d, "run%d" % i)
            with open(path, "wb") as f:
                f.write(b.read(length))
            print(path, off, length)


main()
