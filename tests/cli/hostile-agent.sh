#!/usr/bin/env bash
# A hostile guest agent against `qmpbackup backup` of a real VM: (1) its freeze
# error carries terminal escapes (ESC sequences, BEL, newline, CR, a C1 CSI):
# none reaches qmpbackup's output raw; (2) it answers the freeze with 8 MB of
# {"return":[{},{},...]}: qmpbackup refuses it at once, says the agent may be
# hostile, takes a crash-consistent backup within the agent timeout, and its
# peak RSS stays within 64 MiB of a backup without the agent.  Both backups
# are exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 python3 /usr/bin/time "$QMPCMD"
qb_need_cli
qb_tmpdir

# The fake agent: answers guest-sync-delimited properly; MODE picks the
# answer to guest-fsfreeze-freeze.
start_agent() {
  local sock=$1 mode=$2
  rm -f "$sock"
  python3 -c '
import json, socket, sys, threading
sock, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX); s.bind(sock); s.listen(8)
def reply(c, obj, prefix=b""):
    c.sendall(prefix + json.dumps(obj).encode() + b"\n")
def serve(c):
    buf = b""
    try:
        while True:
            d = c.recv(65536)
            if not d:
                return
            buf = (buf + d).replace(b"\xff", b"")
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                m = json.loads(line)
                cmd = m.get("execute")
                if cmd == "guest-sync-delimited":
                    reply(c, {"return": m["arguments"]["id"]}, b"\xff")
                elif cmd == "guest-fsfreeze-freeze" and mode == "escape":
                    reply(c, {"error": {"class": "Generic\x1b[5mError",
                                        "desc": "no\x1b[2J\x1b]0;owned\x07\nFAKE: line\r\u009b31m"}})
                elif cmd == "guest-fsfreeze-freeze":
                    c.sendall(b"{\"return\": [" + b"{}," * ((8 << 20) // 3) + b"{}]}\n")
                elif cmd == "guest-fsfreeze-thaw":
                    reply(c, {"return": 0})
                elif cmd == "guest-fsfreeze-status":
                    reply(c, {"return": "thawed"})
                else:
                    reply(c, {"return": {}})
    except (BrokenPipeError, ConnectionResetError):
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
' "$sock" "$mode" &
  qb_register_pid $!
  for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && return 0; sleep 0.1; done
  qb_die "the fake agent did not start"
}

# Run qmpbackup for VM NAME with EXTRA args before `backup`; output in
# $T/out.NAME-TAG (stdout+stderr), peak RSS (KiB) in $T/rss.TAG; exit code.
run_backup() {
  local tag=$1 level=$2 rc=0
  shift 2
  /usr/bin/time -o "$T/rss.$tag" -f %M "$QMPBACKUP" --socket "$T/sockets/hv.qmp" "$@" \
    backup --level "$level" --target "$T/store/hv" > "$T/out.$tag" 2>&1 || rc=$?
  sed "s/^/  qmpbackup: /" "$T/out.$tag" | cat -v >&2
  return $rc
}

# No raw control byte (other than newline) in FILE, no C1 CSI, no injected line.
check_clean() {
  local f=$1
  if LC_ALL=C grep -q $'[\x01-\x09\x0b-\x1f\x7f]' "$f"; then
    qb_die "raw control bytes in qmpbackup's output: $(cat -v "$f")"
  fi
  if LC_ALL=C grep -q $'\xc2\x9b' "$f"; then
    qb_die "raw C1 CSI in qmpbackup's output: $(cat -v "$f")"
  fi
  if grep -q '^FAKE: line' "$f"; then
    qb_die "the agent injected a line into qmpbackup's output"
  fi
}

qb_vm_start hv drive0:qcow2:32M
qb_guest_write hv drive0 "write -P 0x21 0 4M"

# Baseline: no agent.
run_backup base full || qb_die "baseline backup failed"
base_rss=$(cat "$T/rss.base")
qb_capture hv drive0 "$T/d0.raw"
id0=$(qb_layer_id "$(qb_newest_layer "$T/store/hv/drive0")")

# (1) escapes in the agent's error text.
start_agent "$T/agent-esc.sock" escape
qb_guest_write hv drive0 "write -P 0x22 1M 2M"
run_backup esc inc --agent-socket "$T/agent-esc.sock" \
  || qb_die "backup with an agent whose freeze fails did not fall back"
check_clean "$T/out.esc"
grep -q 'not quiesced' "$T/out.esc" || qb_die "no crash-consistent note: $(cat -v "$T/out.esc")"
grep -qF 'no\x1b[2J\x1b]0;owned\x07' "$T/out.esc" \
  || grep -qF 'no\u001b' "$T/out.esc" \
  || qb_die "the agent's text is not shown escaped: $(cat -v "$T/out.esc")"
qb_capture hv drive0 "$T/d1.raw"
id1=$(qb_layer_id "$(qb_newest_layer "$T/store/hv/drive0")")

# (2) amplification: 8 MB of {} in the freeze reply.
start_agent "$T/agent-amp.sock" amplify
qb_guest_write hv drive0 "write -P 0x23 5M 1M"
t0=$SECONDS
run_backup amp inc --agent-socket "$T/agent-amp.sock" \
  || qb_die "backup with an amplifying agent did not fall back"
dt=$((SECONDS - t0))
check_clean "$T/out.amp"
grep -q 'JSON values' "$T/out.amp" && grep -q 'hostile' "$T/out.amp" \
  || qb_die "the refusal is not explained: $(cat -v "$T/out.amp")"
amp_rss=$(cat "$T/rss.amp")
echo "peak RSS: baseline $base_rss KiB, amplifying agent $amp_rss KiB; $dt s"
[ $((amp_rss - base_rss)) -lt $((64 * 1024)) ] \
  || qb_die "peak RSS grew by $((amp_rss - base_rss)) KiB with the amplifying agent"
# The agent timeout is 10 s; slack for a loaded machine.
[ "$dt" -lt 40 ] || qb_die "the backup took $dt s with the amplifying agent"
qb_capture hv drive0 "$T/d2.raw"
id2=$(qb_layer_id "$(qb_newest_layer "$T/store/hv/drive0")")

qb_check_merge "$T/store/hv/drive0" "$id0" "$T/d0.raw"
qb_check_merge "$T/store/hv/drive0" "$id1" "$T/d1.raw"
qb_check_merge "$T/store/hv/drive0" "$id2" "$T/d2.raw"
echo "hostile agent: escapes shown escaped, amplification refused, 3 points exact"
