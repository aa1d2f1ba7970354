#!/usr/bin/env python3
"""Run a shell script inside the test guest through its qemu-ga (guest-exec).

usage: qga.py SOCKET SCRIPT [TIMEOUT]      run `sh -c SCRIPT`, wait for it
       qga.py SOCKET --spawn SCRIPT        start it and return (its pid printed)

Prints the script's stdout, its stderr to stderr, and exits with its exit
code (124 when it did not finish within TIMEOUT seconds, default 300).
The agent's socket serves one client at a time: this connects, does its
work and disconnects, so the daemon under test can use it between runs."""
import base64
import json
import random
import socket
import sys
import time


class Agent:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(60)
        self.s.connect(path)
        self.buf = b""
        # guest-sync-delimited: skip anything an earlier client left behind
        tok = random.randrange(1 << 30)
        self.s.sendall(b"\xff" + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": tok}}).encode())
        while True:
            r = self.reply()
            if r.get("return") == tok:
                break

    def reply(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise SystemExit("qga.py: the agent closed the connection")
            self.buf += d
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.lstrip(b"\xff").strip()
        if not line:
            return self.reply()
        return json.loads(line)

    def call(self, cmd, **args):
        self.s.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        r = self.reply()
        if "error" in r:
            raise SystemExit("qga.py: %s: %s" % (cmd, r["error"]))
        return r["return"]


def main():
    spawn = sys.argv[2] == "--spawn"
    script = sys.argv[3] if spawn else sys.argv[2]
    limit = float(sys.argv[3]) if not spawn and len(sys.argv) > 3 else 300
    a = Agent(sys.argv[1])
    pid = a.call("guest-exec", path="/bin/sh", arg=["-c", script],
                 **({} if spawn else {"capture-output": True}))["pid"]
    if spawn:
        print(pid)
        return 0
    end = time.monotonic() + limit
    while True:
        st = a.call("guest-exec-status", pid=pid)
        if st.get("exited"):
            break
        if time.monotonic() > end:
            print("qga.py: the script did not finish within %d s" % limit, file=sys.stderr)
            return 124
        time.sleep(0.2)
    sys.stdout.buffer.write(base64.b64decode(st.get("out-data", "")))
    sys.stderr.buffer.write(base64.b64decode(st.get("err-data", "")))
    if st.get("out-truncated") or st.get("err-truncated"):
        print("qga.py: the agent truncated the output", file=sys.stderr)
        return 125
    return st.get("exitcode", 126 if "signal" in st else 0)


sys.exit(main())
