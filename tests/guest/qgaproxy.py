#!/usr/bin/env python3
"""A relay between a guest agent client and a real agent socket, for tests.

    qgaproxy.py UPSTREAM LISTEN LOG [--hold-freeze-reply]

Serves one client at a time on LISTEN; for each, connects to UPSTREAM (the
agent's chardev socket) and relays both ways until the client closes, then
closes the upstream connection too (so QEMU accepts the next client).  With
--hold-freeze-reply, for the first client only, the reply to its
guest-fsfreeze-freeze is kept back (logged as "held freeze reply: LINE") and
nothing more is sent to that client: the guest is frozen and the client is
still waiting, the moment a test kills the client.  LOG gets one line per
event, flushed.
"""
import argparse
import os
import select
import socket

ap = argparse.ArgumentParser()
ap.add_argument("upstream")
ap.add_argument("listen")
ap.add_argument("log")
ap.add_argument("--hold-freeze-reply", action="store_true")
opt = ap.parse_args()
logf = open(opt.log, "a")


def log(s):
    logf.write(s + "\n")
    logf.flush()


def relay(c, hold):
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.connect(opt.upstream)
    froze = False       # the client sent guest-fsfreeze-freeze
    held = False        # its reply was kept back: forward nothing more
    seen = b""          # upstream bytes since the freeze went up
    while True:
        r, _, _ = select.select([c, u], [], [])
        if c in r:
            d = c.recv(65536)
            if not d:
                break
            if hold and b"guest-fsfreeze-freeze" in d:
                froze = True
                log("freeze sent")
            u.sendall(d)
        if u in r:
            d = u.recv(65536)
            if not d:
                break
            if held:
                continue
            if froze:
                seen += d
                if b"\n" in seen:
                    line = seen.split(b"\n", 1)[0]
                    log("held freeze reply: " + line.decode("latin-1"))
                    held = True
                    continue
            c.sendall(d)
    u.close()


srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(opt.listen)
srv.listen(4)
log("listening")
first = True
while True:
    c, _ = srv.accept()
    log("client")
    try:
        relay(c, opt.hold_freeze_reply and first)
    except OSError as e:
        log("error: %s" % e)
    first = False
    c.close()
    log("client gone")
