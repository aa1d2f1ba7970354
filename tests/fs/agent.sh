#!/usr/bin/env bash
# Quiesce through the mount when NAME.qga sits beside NAME.qmp: here an agent
# socket whose agent never answers (as when the guest has no qemu-ga running).
# An explicit "full quiesce" fails with EIO and status says why; a default
# backup falls back to crash-consistent and says so in status and in the
# restore point's record; "noquiesce" does not try.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store"
qb_vm_start vm1 drive0:qcow2:8M
# A silent agent: accepts connections, reads, never answers.
python3 -c '
import socket, sys, threading
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
def drain(c):
    while c.recv(4096): pass
while True:
    c, _ = s.accept(); threading.Thread(target=drain, args=(c,), daemon=True).start()
' "$T/sockets/vm1.qga" &
qb_register_pid $!
for ((i = 0; i < 50; i++)); do [ -S "$T/sockets/vm1.qga" ] && break; sleep 0.1; done

qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
C=$mnt/vm1/backup
cat "$mnt/vm1/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["agent"]["present"]')" = True ] || qb_die "agent not seen: $(cat "$T/status.json")"

r=$(qb_fs_control "$C" "full quiesce\n")
[ "$r" = EIO ] || qb_die "explicit quiesce with a silent agent: $r"
cat "$mnt/vm1/status" > "$T/status.json"
qb_json "$T/status.json" 'd["last"]["error"]' | grep -qi -e agent -e quiesc -e freeze \
  || qb_die "quiesce failure not explained: $(cat "$T/status.json")"
[ -z "$(ls "$mnt/vm1" | grep -v -e backup -e status)" ] || qb_die "a failed quiesce made a point"

qb_guest_write vm1 drive0 "write -P 0x42 0 1M"
qb_capture vm1 drive0 "$T/d0.raw"
r=$(qb_fs_control "$C" "full\n")
[ "$r" = OK ] || qb_die "default quiesce did not fall back: $r $(cat "$mnt/vm1/status")"
cat "$mnt/vm1/status" > "$T/status.json"
[ -n "$(qb_json "$T/status.json" 'd["last"].get("quiesce_note", "")')" ] \
  || qb_die "fallback not explained: $(cat "$T/status.json")"
[ "$(qb_json "$T/status.json" 'd["latest_record"]["quiesced"]')" = False ] \
  || qb_die "record says quiesced: $(cat "$T/status.json")"
qb_cmp "$T/d0.raw" "$mnt/vm1/drive0/restore/latest.img"

r=$(qb_fs_control "$C" "inc noquiesce\n")
[ "$r" = OK ] || qb_die "noquiesce: $r"
cat "$mnt/vm1/status" > "$T/status.json"
[ -z "$(qb_json "$T/status.json" 'd["last"].get("quiesce_note", "")')" ] \
  || qb_die "noquiesce tried the agent: $(cat "$T/status.json")"
echo "agent: ok"
