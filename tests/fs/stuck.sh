#!/usr/bin/env bash
# A VM whose QMP monitor never answers blocks nobody else: beside a real VM,
# one fake monitor greets and accepts capabilities but never answers a
# command (status refreshes hang on it for the QMP timeouts).  While 100
# readers keep reading its status, the tree is listed, the other VM's status,
# .status and .metrics are read, a backup of the real VM runs and a restore
# image reads byte-exact; the stuck VM's status says its refresh is pending.
# A second fake monitor answers every command with an error holding ESC, CR
# and newlines: the daemon's log line for it is escaped (no forged line, no
# raw control byte) and its status stays valid JSON.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp timeout
qb_need_fuse
qb_tmpdir

fake=$QB_SOURCE_DIR/tests/fs/fakeqmp.py
store=$T/store
mnt=$T/mnt
mkdir -p "$store"

# Start fake peer MODE on socket PATH; wait (bounded) until it listens.
fake_start() {
  python3 "$fake" "$1" "$2" 2>>"$T/fake.log" &
  qb_register_pid $!
  for ((i = 0; i < 100; i++)); do [ -S "$2" ] && return 0; sleep 0.1; done
  qb_die "fake QMP peer on $2 did not start"
}

qb_vm_start good drive0:qcow2:32M
qb_guest_write good drive0 "write -P 0x5a 0 6M"
qb_capture good drive0 "$T/good-1.raw"
fake_start slow "$T/stuck.qmp"
fake_start evil "$T/evil.qmp"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets" -o "vm=stuck:$T/stuck.qmp" \
  -o "vm=evil:$T/evil.qmp"

[ "$(qb_fs_control "$mnt/good/backup" full)" = OK ] || qb_die "first full of good failed: $(cat "$mnt/good/status")"
p1=$(qb_fs_points "$mnt/good/drive0/restore" | tail -1)

# 100 readers of stuck/status, each in a loop until $T/stop exists; each
# counts its reads and keeps the last text.
timeout 600 python3 - "$mnt/stuck/status" "$T/stop" "$T/readers.out" <<'PY' &
import json, os, sys, threading, time
path, stop, out = sys.argv[1:4]
counts = [0] * 100
errors = []
last = [None]
def reader(i):
    while not os.path.exists(stop):
        try:
            with open(path) as f:
                t = f.read()
            json.loads(t)
            last[0] = t
            counts[i] += 1
        except Exception as e:
            errors.append(repr(e))
        time.sleep(0.05)
ts = [threading.Thread(target=reader, args=(i,)) for i in range(100)]
for t in ts: t.start()
for t in ts: t.join()
with open(out, "w") as f:
    f.write("%d %d %d\n" % (min(counts), sum(counts), len(errors)))
    f.write("\n".join(errors[:5]) + "\n")
PY
readers=$!

# Wait (bounded) until a stuck status shows the refresh pending on QEMU.
seen=0
for ((i = 0; i < 300; i++)); do
  r=$(qb_json <(timeout 60 cat "$mnt/stuck/status") 'd["qmp"]["refreshing"]')
  [ "$r" = True ] && { seen=1; break; }
  sleep 0.1
done
[ $seen = 1 ] || qb_die "stuck/status never said its refresh is pending"

# Everything else works meanwhile (generous bounds: a hang is a failure).
ok() { timeout 120 "$@" || qb_die "did not complete while the stuck VM was read: $*"; }
ok ls "$mnt" > "$T/ls.out"
grep -qx good "$T/ls.out" && grep -qx stuck "$T/ls.out" || qb_die "ls: $(cat "$T/ls.out")"
ok ls -l "$mnt/good/drive0/restore" > /dev/null
ok stat "$mnt/good/drive0/restore/$p1" > /dev/null
# good/status: reachable once its own refresh is through (bounded: 60 s)
for ((i = 0; i < 600; i++)); do
  ok cat "$mnt/good/status" > "$T/good.json"
  [ "$(qb_json "$T/good.json" 'd["qmp"]["reachable"]')" = True ] && break
  sleep 0.1
done
[ "$(qb_json "$T/good.json" 'd["qmp"]["reachable"]')" = True ] || qb_die "good/status: $(cat "$T/good.json")"
ok cat "$mnt/.status" > "$T/all.json"
qb_json "$T/all.json" 'len(d["vms"])' > /dev/null || qb_die ".status is not JSON"
ok cat "$mnt/.metrics" > "$T/metrics.txt"
grep -q 'qmpbackupfs_backup_running{vm="stuck"} 0' "$T/metrics.txt" || qb_die ".metrics: $(cat "$T/metrics.txt")"
ok cmp "$mnt/good/drive0/restore/$p1" "$T/good-1.raw"
qb_guest_write good drive0 "write -P 0x6b 2M 1M"
qb_capture good drive0 "$T/good-2.raw"
r=$(timeout 300 python3 -c "$QB_FS_WRITER" "$mnt/good/backup" inc) || qb_die "inc of good did not complete"
[ "$r" = OK ] || qb_die "inc of good: $r: $(cat "$mnt/good/status")"
p2=$(qb_fs_points "$mnt/good/drive0/restore" | tail -1)
[ "$p2" != "$p1" ] || qb_die "no new point after the inc"
ok cmp "$mnt/good/drive0/restore/$p2" "$T/good-2.raw"

# The readers were still going all along: stop them now.
kill -0 $readers 2>/dev/null || qb_die "the readers ended before they were told to"
touch "$T/stop"
wait $readers || qb_die "the readers of stuck/status failed or hung"
read -r least total nerr < "$T/readers.out"
qb_log "readers: $total reads of stuck/status, each reader at least $least, $nerr errors"
[ "$nerr" = 0 ] || qb_die "reads of stuck/status failed: $(tail -n +2 "$T/readers.out")"
[ "$least" -ge 1 ] || qb_die "a reader of stuck/status never completed a read"

# The evil peer: a backup fails (EIO), the log line is escaped, status is JSON.
r=$(timeout 120 python3 -c "$QB_FS_WRITER" "$mnt/evil/backup" full)
[ "$r" = EIO ] || [ "$r" = EHOSTDOWN ] || qb_die "backup of the evil peer: $r"
qb_json <(cat "$mnt/evil/status") 'd["last"]["error"]' > /dev/null || qb_die "evil/status is not JSON"
grep -q 'FORGED LOG LINE' "$T/fs.log" || qb_die "the evil peer's error is not in the log: $(tail -5 "$T/fs.log")"
! grep -q '^qmpbackupfs: FORGED' "$T/fs.log" || qb_die "a peer forged a log line: $(grep -n FORGED "$T/fs.log")"
! grep -q $'\x1b' "$T/fs.log" || qb_die "a raw ESC reached the log"
! grep -q $'\r' "$T/fs.log" || qb_die "a raw CR reached the log"
grep -q 'FORGED' <(grep -F '\x1b' "$T/fs.log") || qb_die "the escape is not shown as \\x1b"

qb_fs_unmount "$mnt"
echo "stuck: ok"
