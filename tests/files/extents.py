#!/usr/bin/env python3
"""Print the data extents of FILE as SEEK_DATA/SEEK_HOLE report them, one
"start end" line each.

usage: extents.py FILE"""
import errno
import os
import sys


def main():
    fd = os.open(sys.argv[1], os.O_RDONLY)
    size = os.fstat(fd).st_size
    off = 0
    while off < size:
        try:
            start = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        print(start, end)
        off = end
    os.close(fd)


main()
