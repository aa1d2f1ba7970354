#!/usr/bin/env bash
# Scripts written for the Python qmpbackup run unchanged: its flag spellings
# (-l, -t, -i, -e, --speed-limit, --include-raw, --debug, -L/--logfile,
# --syslog, info --show blockdev|bitmaps) take real full and inc backups that
# equal the disks byte for byte; the log file gets one line per start, end
# and failure and is created 0600, a symbolic link is refused; the trace
# escapes what QEMU sends; syslog lines are caught on a private /dev/log; and
# `info --target` shows the store's points when the VM is gone.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf python3 "$QMPCMD"
qb_need_cli
qb_tmpdir
qb_vm_start vm1 drive0:qcow2:64M data1:raw:32M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 8M"
qb_guest_write vm1 data1 "write -P 0x22 1M 4M"
S=$(qb_vm_socket vm1)
mkdir -m 0700 "$T/log"
LOG=$T/log/qb.log

# A dirty bitmap whose name carries an escape sequence: QEMU repeats it in
# its replies, so the trace and the bitmap listing must escape it.
qb_qmp vm1 block-dirty-bitmap-add '{"node":"drive0","name":"evil\u001b[31m"}' >/dev/null \
  || qb_die "could not add the test bitmap"

# Full: global flags before the command, upstream's spellings after it.
rc=0
"$QMPBACKUP" --socket "$S" --debug -L "$LOG" backup -l full -t "$T/store/vm1" \
  -i drive0,data1 --include-raw --speed-limit 512M >"$T/full.out" 2>"$T/full.err" || rc=$?
[ $rc -eq 0 ] || qb_die "full with upstream flags exited $rc: $(grep -v trace: "$T/full.err" | tail -5)"
[ "$(grep -c -- '--include-raw' "$T/full.err")" -eq 1 ] || qb_die "--include-raw note not said once"
grep -q '^trace: fd [0-9]* > {"execute": *"qmp_capabilities"' "$T/full.err" \
  || grep -q '^trace: fd [0-9]* > {"execute":"qmp_capabilities"' "$T/full.err" || qb_die "--debug traced no command"
grep -q '^trace: fd [0-9]* < .*"return"' "$T/full.err" || qb_die "--debug traced no reply"
grep -q 'evil\\u001b\[31m' "$T/full.err" || qb_die "the hostile bitmap name is not in the trace, escaped"
! grep -q $'\e' "$T/full.err" || qb_die "a raw escape byte reached stderr"
full_id=$(awk '{ print $1 }' "$T/full.out")
qb_capture vm1 drive0 "$T/d0.raw"; qb_capture vm1 data1 "$T/d1.raw"
qb_check_merge "$T/store/vm1/drive0" "$full_id" "$T/d0.raw"
qb_check_merge "$T/store/vm1/data1" "$full_id" "$T/d1.raw"

# Inc of drive0 only (-e data1), options after the command, --logfile spelled out.
qb_guest_write vm1 drive0 "write -P 0x33 2M 1M"
qb_guest_write vm1 data1 "write -P 0x44 0 1M"
"$QMPBACKUP" backup --socket "$S" --level inc --target "$T/store/vm1" -e data1 --logfile "$LOG" \
  --quiet >"$T/inc1.out" || qb_die "inc -e data1 failed"
inc1=$(awk '{ print $1 }' "$T/inc1.out")
[ "$(qb_newest_layer "$T/store/vm1/data1")" = "FULL-$full_id" ] || qb_die "-e data1 backed up data1"
qb_capture vm1 drive0 "$T/d0b.raw"
qb_check_merge "$T/store/vm1/drive0" "$inc1" "$T/d0b.raw"

# Inc of both: data1's change since the full is kept by its bitmap.
qb_guest_write vm1 drive0 "write -z 2M 512k"
"$QMPBACKUP" --socket "$S" -L "$LOG" backup -l inc -t "$T/store/vm1" >"$T/inc2.out" 2>/dev/null \
  || qb_die "inc of both disks failed"
inc2=$(awk '{ print $1 }' "$T/inc2.out")
qb_capture vm1 drive0 "$T/d0c.raw"; qb_capture vm1 data1 "$T/d1c.raw"
qb_check_merge "$T/store/vm1/drive0" "$inc2" "$T/d0c.raw"
qb_check_merge "$T/store/vm1/data1" "$inc2" "$T/d1c.raw"
qb_check_qemu_img "$T/store/vm1/data1" "$(qb_newest_layer "$T/store/vm1/data1")" "$T/d1c.raw"

# A failure is logged with its reason.
rc=0; "$QMPBACKUP" --socket "$S" -L "$LOG" backup -l inc -t "$T/store/vm1" -e drive0,data1 \
  2>/dev/null || rc=$?
[ $rc -eq 2 ] || qb_die "a backup with every disk excluded exited $rc, expected 2"

# The log: 0600, one line per start and end, a failed line with the reason.
[ "$(stat -c %a "$LOG")" = 600 ] || qb_die "log file mode $(stat -c %a "$LOG"), expected 600"
cat "$LOG" >&2
[ "$(grep -c ' event=start vm=vm1 ' "$LOG")" -eq 4 ] || qb_die "expected 4 start lines"
[ "$(grep -c ' event=end vm=vm1 ' "$LOG")" -eq 3 ] || qb_die "expected 3 end lines"
grep -Eq "^[0-9T:-]+Z qmpbackup\[[0-9]+\]: event=end vm=vm1 level=full point=$full_id bytes=[1-9][0-9]* seconds=[0-9.]+$" "$LOG" \
  || qb_die "no end line for the full with point, bytes and seconds"
grep -q "event=end vm=vm1 level=inc point=$inc2 bytes=" "$LOG" || qb_die "no end line for inc $inc2"
grep -q 'event=failed vm=vm1 level=inc bytes=0 seconds=[0-9.]* reason=".*all excluded' "$LOG" \
  || qb_die "no failed line with the reason"
# A log path that is a symbolic link is refused, and nothing is written through it.
ln -s "$T/log/elsewhere" "$T/log/link.log"
rc=0; "$QMPBACKUP" --socket "$S" -L "$T/log/link.log" backup -l inc -t "$T/store/vm1" \
  2>"$T/err" || rc=$?
[ $rc -eq 1 ] && grep -q "symbolic link" "$T/err" || qb_die "symlinked log: exit $rc: $(cat "$T/err")"
[ ! -e "$T/log/elsewhere" ] || qb_die "the log was written through a symbolic link"

# info --show blockdev|bitmaps: text, one line per disk / bitmap, escaped.
"$QMPBACKUP" --socket "$S" info --show blockdev >"$T/bd.txt" || qb_die "info --show blockdev failed"
cat "$T/bd.txt" >&2
grep -q '^drive0: node=.* format=qcow2 size=67108864 file=' "$T/bd.txt" || qb_die "blockdev: no drive0 line"
grep -q '^data1: node=.* format=raw size=33554432 file=' "$T/bd.txt" || qb_die "blockdev: no data1 line"
"$QMPBACKUP" --socket "$S" info --show bitmaps >"$T/bm.txt" || qb_die "info --show bitmaps failed"
cat "$T/bm.txt" >&2
grep -q '^drive0: qmpbackup-[^ ]* granularity=[0-9]* persistent=yes recording=yes busy=no inconsistent=no$' "$T/bm.txt" \
  || qb_die "bitmaps: no qmpbackup bitmap of drive0"
grep -q '^drive0: evil\\x1b\[31m ' "$T/bm.txt" || qb_die "bitmaps: hostile name not escaped"
grep -q '^data1: qmpbackup-' "$T/bm.txt" || qb_die "bitmaps: no bitmap of data1"
"$QMPBACKUP" --socket "$S" info --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert len(d["disks"]) == 2' \
  || qb_die "info --json is not the disks as JSON"

# --syslog: the same lines, caught on a private /dev/log (a mount namespace).
if [ "$(id -u)" -eq 0 ] && unshare -m true 2>/dev/null; then
  mkdir -p "$T/dev"
  python3 - "$T/dev/log" "$T/syslog.txt" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
open(sys.argv[2] + ".ready", "w").close()
with open(sys.argv[2], "ab", buffering=0) as f:
    while True:
        f.write(s.recv(65536).replace(b"\n", b" ") + b"\n")
PY
  qb_register_pid $!
  for ((i = 0; i < 100; i++)); do [ -e "$T/syslog.txt.ready" ] && break; sleep 0.1; done
  qb_guest_write vm1 drive0 "write -P 0x55 5M 64k"
  # The private /dev: our log socket, and the host's null, zero and urandom.
  touch "$T/dev/null" "$T/dev/zero" "$T/dev/urandom"
  unshare -m sh -c 'mount --make-rprivate / && for d in null zero urandom; do
      mount --bind "/dev/$d" "$1/dev/$d" || exit 1; done &&
    mount --bind "$1/dev" /dev && shift && exec "$@"' sh "$T" \
    "$QMPBACKUP" --socket "$S" --syslog backup -l inc -t "$T/store/vm1" --quiet >"$T/inc3.out" \
    || qb_die "inc with --syslog failed"
  inc3=$(awk '{ print $1 }' "$T/inc3.out")
  for ((i = 0; i < 100; i++)); do grep -q "event=end" "$T/syslog.txt" 2>/dev/null && break; sleep 0.1; done
  cat "$T/syslog.txt" >&2
  grep -q 'qmpbackup\[[0-9]*\]: event=start vm=vm1 level=inc' "$T/syslog.txt" || qb_die "no syslog start line"
  grep -q "qmpbackup\[[0-9]*\]: event=end vm=vm1 level=inc point=$inc3 bytes=" "$T/syslog.txt" || qb_die "no syslog end line"
  echo "syslog lines caught on a private /dev/log"
else
  echo "syslog part skipped: needs root and unshare -m for a private /dev/log"
fi

# The VM is gone: info --target shows the store alone (exit 0), text and JSON.
npoints=$(( $(qb_layers "$T/store/vm1/drive0" | wc -l) + $(qb_layers "$T/store/vm1/data1" | wc -l) ))
qb_vm_stop vm1
for sock in "" "--socket $S"; do
  # shellcheck disable=SC2086
  "$QMPBACKUP" $sock info --target "$T/store/vm1" >"$T/st.txt" 2>"$T/st.err" \
    || qb_die "info --target with the VM stopped ($sock) failed: $(cat "$T/st.err")"
  cat "$T/st.txt" >&2
  grep -q "^VM vm1 is not reachable" "$T/st.txt" || qb_die "info --target does not say the VM is gone"
  grep -q "^store .*, VM vm1: $npoints point(s) in 2 disk(s)" "$T/st.txt" || qb_die "info --target: wrong totals"
  grep -q '^disk drive0: chain .*: 4 point(s), .* stored, disk size 64 MiB, health ok$' "$T/st.txt" \
    || grep -q '^disk drive0: chain .*: [34] point(s), .* health ok$' "$T/st.txt" || qb_die "info --target: no drive0 chain line"
  grep -q "^  $(echo "$full_id" | sed 's/\(....\)\(..\)\(..\)T\(......\)Z/\1-\2-\3T\4Z/') *full " "$T/st.txt" \
    || qb_die "info --target: the full point is not listed"
done
"$QMPBACKUP" info --target "$T/store/vm1" --json >"$T/st.json" || qb_die "info --target --json failed"
python3 - "$T/st.json" "$npoints" <<'PY' || qb_die "info --target --json: wrong content"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["vm_reachable"] is False
st = d["store"]
assert st["points"] == int(sys.argv[2]), st["points"]
names = sorted(x["name"] for x in st["disks"])
assert names == ["data1", "drive0"], names
for disk in st["disks"]:
    for c in disk["chains"]:
        assert c["health"] == "ok" and c["bytes"] > 0
        assert c["points"][0]["kind"] == "full"
PY
echo "upstream flags: full and incs byte-exact; log, trace, syslog, info ok"
