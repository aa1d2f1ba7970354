#!/usr/bin/env python3
"""A fake QEMU guest agent on a unix socket, for tests that need an agent
without a guest.

    fakeqga.py SOCKET LOG [--freeze-delay SEC] [--freeze-count N]
               [--freeze-reply now|never] [--freeze-error TEXT] [--mute]

Like QEMU's chardev it serves one client at a time (the next connection
waits in the backlog until the current one closes), and like qemu-ga it runs
commands one after the other, in the order received, whichever connection
sent them: a thaw sent while a freeze is still running waits for the freeze.
Replies to a connection that is gone are dropped.

guest-fsfreeze-freeze marks the fake guest frozen at once (when it freezes
N > 0 filesystems), then answers N after SEC seconds; with "never" it never
answers (the reply is lost) but goes on with the next command; with
--freeze-error it answers that error (TEXT may hold any byte) and stays
thawed.  --mute reads and logs commands and never answers anything.

LOG gets one line per event, flushed: "recv CMD", "done CMD STATE",
"connect", "close".  LOG.state holds the state ("frozen" or "thawed"),
replaced atomically on every change.
"""
import argparse
import json
import os
import queue
import socket
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("socket")
ap.add_argument("log")
ap.add_argument("--freeze-delay", type=float, default=0.0)
ap.add_argument("--freeze-count", type=int, default=1)
ap.add_argument("--freeze-reply", choices=["now", "never"], default="now")
ap.add_argument("--freeze-error")
ap.add_argument("--mute", action="store_true")
opt = ap.parse_args()

log_lock = threading.Lock()
logf = open(opt.log, "a")
state = "thawed"
commands = queue.Queue()
current = None          # the connection being served


def log(line):
    with log_lock:
        logf.write("%.3f %s\n" % (time.monotonic(), line))
        logf.flush()


def set_state(s):
    global state
    state = s
    tmp = opt.log + ".state.tmp"
    with open(tmp, "w") as f:
        f.write(s + "\n")
    os.replace(tmp, opt.log + ".state")


def reply(conn, data):
    """Send DATA (bytes) to CONN if it is still the client being served."""
    if conn is not current:
        log("dropped reply")
        return
    try:
        conn.sendall(data)
    except OSError:
        pass


def answer(conn, obj):
    reply(conn, json.dumps(obj).encode() + b"\n")


def run(conn, msg):
    """Run one command as qemu-ga would."""
    cmd = msg.get("execute", "") if isinstance(msg, dict) else ""
    args = msg.get("arguments", {}) if isinstance(msg, dict) else {}
    if cmd == "guest-sync-delimited":
        reply(conn, b"\xff" + json.dumps({"return": args.get("id")}).encode() + b"\n")
    elif cmd == "guest-sync":
        answer(conn, {"return": args.get("id")})
    elif cmd == "guest-ping":
        answer(conn, {"return": {}})
    elif cmd == "guest-info":
        answer(conn, {"return": {"version": "fake"}})
    elif cmd == "guest-fsfreeze-freeze":
        if opt.freeze_error is not None:
            answer(conn, {"error": {"class": "GenericError", "desc": opt.freeze_error}})
            return
        if opt.freeze_count > 0:
            set_state("frozen")
        time.sleep(opt.freeze_delay)
        if opt.freeze_reply == "now":
            answer(conn, {"return": opt.freeze_count})
    elif cmd == "guest-fsfreeze-thaw":
        n = opt.freeze_count if state == "frozen" else 0
        set_state("thawed")
        answer(conn, {"return": n})
    elif cmd == "guest-fsfreeze-status":
        answer(conn, {"return": state})
    else:
        answer(conn, {"error": {"class": "CommandNotFound",
                                "desc": "The command %s has not been found" % cmd}})
    log("done %s %s" % (cmd, state))


def worker():
    while True:
        conn, msg = commands.get()
        run(conn, msg)


def serve(conn):
    """Read commands from CONN until it closes; 0xFF resets the parser."""
    buf = b""
    while True:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            return
        buf += data
        if b"\xff" in buf:
            buf = buf[buf.rindex(b"\xff") + 1:]
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                answer(conn, {"error": {"class": "GenericError", "desc": "invalid JSON"}})
                continue
            log("recv %s" % (msg.get("execute", "?") if isinstance(msg, dict) else "?"))
            if not opt.mute:
                commands.put((conn, msg))


set_state("thawed")
threading.Thread(target=worker, daemon=True).start()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(opt.socket)
srv.listen(4)
log("listening")
while True:
    c, _ = srv.accept()
    current = c
    log("connect")
    serve(c)
    current = None
    c.close()
    log("close")
