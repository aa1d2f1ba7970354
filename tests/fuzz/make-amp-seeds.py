#!/usr/bin/env python3
"""Write the amplification seeds into CORPUS/{jsonio,qmp,qga}: replies and
event floods that json-c would blow up (about 800 bytes of heap per "{}"),
sized to cross the per-connection value limits of qmp/jsonio.h.
Usage: make-amp-seeds.py CORPUS   (called by make-seeds.sh)"""
import sys

c = sys.argv[1]
greet = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
         b'"package": "Debian 1:7.2"}, "capabilities": ["oob"]}}\n')


def amp(n):
    """{"return": [{},{},...]} with N + 1 empty objects (2 values each)."""
    return b'{"return": [' + b'{},' * n + b'{}]'


def write(path, data):
    with open(path, 'wb') as f:
        f.write(data)


# jsonio: QMP limits (100000 values), agent limits (4096), tiny limits (64).
write(c + '/jsonio/amplify', b'\x00' + amp(51000) + b'}\n')
write(c + '/jsonio/amplify-agent', b'\x01\xff' + amp(2100) + b'}\n\xff{"return": 1}\n')
write(c + '/jsonio/amplify-tiny',
      b'\x80{"a": [' + b'1,' * 70 + b'1]}\n{"b": "' + b'x' * 5000 + b'"}\n{"c": 1}\n')
# qmp: an amplifying reply to the first command; a flood of events, some big.
write(c + '/qmp/amplify', b'\x01' + greet + b'{"return": {}, "id": "qb-1"}\n'
      + amp(51000) + b', "id": "qb-2"}\n')
ev = (b'{"event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "job%d"}, '
      b'"timestamp": {"seconds": 1, "microseconds": 2}}\n')
big = b'{"event": "BLOCK_JOB_ERROR", "data": {"s": "' + b'x' * 20000 + b'"}}\n'
flood = b''.join(ev % i for i in range(400)) + big * 3 + b'{"event": "X", "data": ' \
    + amp(2000) + b'}}\n'
write(c + '/qmp/event-flood', b'\x00' + greet + flood + b'{"return": {}, "id": "qb-1"}\n'
      + flood)
# qga: the ping reply amplifies (agent limit 4096 values).
write(c + '/qga/amplify', b'\x00\xff{"return": 1}\n' + amp(2100) + b'}\n')
write(c + '/qga/amplify-freeze', b'\x01\xff{"return": 1}\n{"return": {}}\n' + amp(2100) + b'}\n')
