#!/usr/bin/env python3
"""A hostile QMP peer for tests: listens on the unix socket PATH and serves
every connection in a thread of its own, forever (until killed).

  fakeqmp.py silent PATH   accept, never send a byte
  fakeqmp.py slow PATH     greeting, answer qmp_capabilities, never answer more
  fakeqmp.py evil PATH     greeting, capabilities, then every command fails
                           with a description holding ESC, CR and newlines
The socket is created under a temporary name and renamed into place, so the
path exists only once the peer is listening."""
import json
import os
import socket
import sys
import threading

mode, path = sys.argv[1], sys.argv[2]
GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                "package": ""}, "capabilities": []}}
EVIL = "peer says \x1b[31mred\x1b[0m\r\nqmpbackupfs: FORGED LOG LINE\n\x07end"


def send(conn, obj):
    conn.sendall(json.dumps(obj).encode() + b"\r\n")


def serve(conn):
    try:
        if mode == "silent":
            while conn.recv(4096):
                pass
            return
        send(conn, GREETING)
        text = ""
        dec = json.JSONDecoder()
        while True:
            data = conn.recv(4096)
            if not data:
                return
            text += data.decode(errors="replace")
            while True:
                text = text.lstrip()
                try:
                    cmd, end = dec.raw_decode(text)
                except ValueError:
                    break
                text = text[end:]
                reply = {"id": cmd["id"]} if "id" in cmd else {}
                if cmd.get("execute") == "qmp_capabilities":
                    reply["return"] = {}
                elif mode == "slow":
                    continue                        # never answered
                else:
                    reply["error"] = {"class": "GenericError", "desc": EVIL}
                send(conn, reply)
    except OSError:
        pass
    finally:
        if mode != "slow":
            conn.close()


tmp = path + ".tmp"
try:
    os.unlink(tmp)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(tmp)
srv.listen(256)
os.rename(tmp, path)
held = []
while True:
    c, _ = srv.accept()
    held.append(c)                                  # slow/silent: never closed
    threading.Thread(target=serve, args=(c,), daemon=True).start()
