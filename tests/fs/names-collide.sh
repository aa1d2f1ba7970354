#!/usr/bin/env bash
# Socket names that become the same VM name once made safe for paths are
# never merged into one VM: `a b.qmp` beside `a_b.qmp` is refused (a_b keeps
# its name), `x y.qmp` beside `x<TAB>y.qmp` are both refused; each refusal is
# logged once (escaped) and listed in .status with the reason.  A lone
# `solo z.qmp` is VM solo_z.  Two -o vm= with colliding names fail the mount.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need python3 timeout
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
socks=$T/socks
mkdir -p "$store" "$socks"
names=("a b" "a_b" "x y" $'x\ty' "solo z")
python3 - "$socks" "${names[@]}" <<'PY' &
import os, socket, sys, time
d = sys.argv[1]
held = []
for n in sys.argv[2:]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.join(d, n + ".qmp"))
    s.listen(8)
    held.append(s)
open(os.path.join(d, ".ready"), "w").close()
while True:
    time.sleep(3600)
PY
qb_register_pid $!
for ((i = 0; i < 100; i++)); do [ -e "$socks/.ready" ] && break; sleep 0.1; done
[ -e "$socks/.ready" ] || qb_die "the sockets were not created"

qb_fs_mount "$store" "$mnt" -o "sockets=$socks"
ls "$mnt" > "$T/ls.out"
grep -qx a_b "$T/ls.out" || qb_die "a_b is not shown: $(cat "$T/ls.out")"
grep -qx solo_z "$T/ls.out" || qb_die "solo_z is not shown: $(cat "$T/ls.out")"
! grep -qx x_y "$T/ls.out" || qb_die "x_y is shown although two sockets claim it: $(cat "$T/ls.out")"
sock=$(qb_json <(cat "$mnt/a_b/status") 'd["qmp"]["socket"]')
[ "$sock" = "$socks/a_b.qmp" ] || qb_die "a_b is served by $sock, want $socks/a_b.qmp"

cat "$mnt/.status" > "$T/status.json"
python3 - "$T/status.json" "$socks" <<'PY' || qb_die ".status does not list the refused sockets: $(cat "$T/status.json")"
import json, os, sys
d = json.load(open(sys.argv[1]))
socks = sys.argv[2]
ref = {os.path.basename(r["socket"]): r for r in d["refused_sockets"]}
want = {"a b.qmp": "a_b", "x y.qmp": "x_y", "x\ty.qmp": "x_y"}
assert set(ref) == set(want), ref
for s, n in want.items():
    assert ref[s]["name"] == n, ref[s]
    assert "made safe" in ref[s]["reason"], ref[s]
assert "a_b.qmp" in ref["a b.qmp"]["reason"], ref["a b.qmp"]
PY
# once per socket in the log, the tab escaped
cat "$mnt/.status" > /dev/null
n=$(grep -c "refused" "$T/fs.log" || true)
[ "$n" = 3 ] || qb_die "want 3 refusal lines in the log, got $n: $(cat "$T/fs.log")"
grep -qF 'x\x09y.qmp refused' "$T/fs.log" || qb_die "the tab is not escaped in the log: $(cat "$T/fs.log")"
qb_fs_unmount "$mnt"

# two -o vm= that collide: the mount is refused with the reason
mkdir -p "$T/mnt2"
if timeout 60 "$QMPBACKUPFS" "$store" "$T/mnt2" -f -o "vm=p q:$socks/a_b.qmp" -o "vm=p_q:$socks/solo z.qmp" \
     > "$T/dup.out" 2>&1; then
  fusermount3 -u "$T/mnt2" || true
  qb_die "two -o vm= named p_q were accepted"
fi
grep -q "already given" "$T/dup.out" || qb_die "no reason for the refused -o vm=: $(cat "$T/dup.out")"
echo "names-collide: ok"
