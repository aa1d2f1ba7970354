#!/usr/bin/env bash
# Restore point names.  By default they hold no colon ("2026-11-26T045000Z.img",
# "_02" for a second point in the same second): qemu-img info/convert take a
# relative name as a file (a colon makes it a protocol), rsync and scp copy it
# as a local file (a colon makes it host:path), and bash completes it as one
# word (':' is in COMP_WORDBREAKS).  The same name is in restore/, files/,
# points/, latest links, <vm>/status, .status and QB_POINT of a notification
# (whose command holds a comma, written "\," in -o).  A second mount of the
# same store with -o names=iso shows "2026-11-26T04:50:00Z.img" names for the
# same bytes; each mount finds only its own style's names.  names=bogus is
# refused before mounting.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp rsync scp bash getfattr
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
iso=$T/mnt-iso
mkdir -p "$store"
SAFE_RE='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{6}Z(_[0-9]{2})?$'
ISO_RE='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z(_[0-9]{2})?$'

# A bad style is refused with a message naming both, and nothing is mounted.
mkdir -p "$T/mnt-bad"
rc=0
"$QMPBACKUPFS" "$store" "$T/mnt-bad" -f -o names=bogus > "$T/bad.out" 2>&1 || rc=$?
[ $rc -ne 0 ] || qb_die "-o names=bogus was accepted"
grep -q 'names=bogus: expected safe .* or iso' "$T/bad.out" || qb_die "no clear message: $(cat "$T/bad.out")"
! mountpoint -q "$T/mnt-bad" || qb_die "mounted with names=bogus"

qb_vm_start vm1 drive0:qcow2:16M data1:raw:8M
# the notification command holds a comma: written \, inside -o
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets" \
  -o "on_success=echo \"\$QB_POINT\"\\,\"\$QB_RESULT\" >> '$T/hook.log'"
C=$mnt/vm1/backup
qb_guest_write vm1 drive0 "write -P 0x31 0 2M"
qb_guest_write vm1 data1 "write -P 0x41 0 1M"
touch "$C" || qb_die "full failed: $(cat "$mnt/vm1/status")"
# three more at once: some may share a second (the _02 names)
for i in 1 2 3; do
  qb_guest_write vm1 drive0 "write -P 0x3$((i + 1)) ${i}M 1M"
  [ "$(qb_fs_control "$C" inc)" = OK ] || qb_die "inc $i failed: $(cat "$mnt/vm1/status")"
done
main_pid=$FS_PID
mapfile -t pts < <(qb_fs_points "$mnt/vm1/drive0/restore")
[ ${#pts[@]} -eq 4 ] || qb_die "want 4 points: ${pts[*]}"

# ---- the names, everywhere ----
for p in "${pts[@]}"; do
  t=${p%.img}
  [[ $p == *.img && $t =~ $SAFE_RE ]] || qb_die "restore point name $p is not YYYY-MM-DDTHHMMSSZ[_NN].img"
  # it is the record's time without the colons
  when=$(getfattr --absolute-names --only-values -n user.qmpbackup.time "$mnt/vm1/drive0/restore/$p")
  [ "${t%%_*}" = "${when//:/}" ] || qb_die "$p is not the point's time $when"
  [ -d "$mnt/vm1/points/$t" ] || qb_die "points/$t missing"
  [ -e "$mnt/vm1/data1/restore/$p" ] || qb_die "data1/restore/$p missing"
done
[ "$(LC_ALL=C ls "$mnt/vm1/drive0/files" | grep -v '^latest$')" = "$(printf '%s\n' "${pts[@]%.img}")" ] \
  || qb_die "files/ lists $(ls "$mnt/vm1/drive0/files")"
[ "$(LC_ALL=C ls "$mnt/vm1/points" | grep -v '^latest$')" = "$(printf '%s\n' "${pts[@]%.img}")" ] \
  || qb_die "points/ lists $(ls "$mnt/vm1/points")"
newest=${pts[3]}
[ "$(readlink "$mnt/vm1/drive0/restore/latest.img")" = "$newest" ] || qb_die "latest.img"
[ "$(readlink "$mnt/vm1/drive0/files/latest")" = "${newest%.img}" ] || qb_die "files/latest"
[ "$(readlink "$mnt/vm1/points/latest")" = "${newest%.img}" ] || qb_die "points/latest"
cat "$mnt/vm1/status" > "$T/status.json"
cat "$mnt/.status" > "$T/all.json"
[ "$(qb_json "$T/status.json" 'd["last"]["restore_image"]')" = "$newest" ] || qb_die "status last.restore_image"
[ "$(qb_json "$T/status.json" '[k["latest"] for k in d["disks"] if k["name"] == "drive0"][0]')" = "${newest%.img}" ] \
  || qb_die "status disks[].latest"
python3 - "$T/all.json" "$newest" <<'PY' || qb_die ".status does not name the point as the mount does: $(cat "$T/all.json")"
import json, sys
d = json.load(open(sys.argv[1]))
found = []
def walk(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "restore_image":
                found.append(v)
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(d)
assert sys.argv[2] in found, found
PY
# QB_POINT of every backup, from a command with a comma in it
for ((i = 0; i < 300; i++)); do
  [ -f "$T/hook.log" ] && [ "$(wc -l < "$T/hook.log")" -ge 4 ] && break
  sleep 0.1
done
[ "$(cat "$T/hook.log")" = "$(printf '%s,ok\n' "${pts[@]%.img}")" ] \
  || qb_die "notifications: $(cat "$T/hook.log"), want the points with ,ok"

# ---- the names in tools, relative to the restore folder ----
cd "$mnt/vm1/drive0/restore"
qemu-img info "$newest" > "$T/info.txt" 2>&1 || qb_die "qemu-img info $newest: $(cat "$T/info.txt")"
grep -q "^file format: raw" "$T/info.txt" && grep -q "^virtual size: 16 MiB" "$T/info.txt" \
  || qb_die "qemu-img info $newest: $(cat "$T/info.txt")"
qemu-img convert -O raw "$newest" "$T/conv.raw" || qb_die "qemu-img convert $newest failed"
qb_cmp "$T/conv.raw" "$newest"
mkdir -p "$T/rsync"
rsync "${pts[0]}" "$newest" "$T/rsync/" 2> "$T/rsync.err" || qb_die "rsync of relative names: $(cat "$T/rsync.err")"
for p in "${pts[0]}" "$newest"; do
  cmp "$T/rsync/$p" "$p" || qb_die "rsync copy of $p differs"
done
scp "$newest" "$T/scp.img" 2> "$T/scp.err" || qb_die "scp of $newest: $(cat "$T/scp.err")"
cmp "$T/scp.img" "$newest" || qb_die "scp copy differs"
cd "$T"

# ---- bash completes a name as one word ----
# complete DIR PREFIX: the word interactive bash (no completion scripts, its
# own COMP_WORDBREAKS) makes of PREFIX<TAB> in DIR.
complete_in() {
  python3 - "$1" "$2" <<'PY'
import os, pty, re, select, sys
d, prefix = sys.argv[1], sys.argv[2]
pid, fd = pty.fork()
if pid == 0:
    os.chdir(d)
    env = dict(os.environ, PS1="$ ", INPUTRC="/dev/null", TERM="dumb", HISTFILE="/dev/null")
    os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
os.write(fd, ("printf 'WORD<%%s>\\n' %s\t\n" % prefix).encode())
out = b""
while True:
    r, _, _ = select.select([fd], [], [], 60)
    if not r:
        sys.exit("no answer from bash: %r" % out)
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    m = re.search(rb"WORD<([^%>]*)>\r?\n", out)
    if m:
        print(m.group(1).decode())
        break
os.write(fd, b"exit\n")
os.waitpid(pid, 0)
PY
}
# a name that no other name starts with: the prefix without ".img" completes to it
for p in "${pts[@]}"; do
  [ "$(printf '%s\n' "${pts[@]}" | grep -c "^${p%.img}")" -eq 1 ] && break
done
qb_log "COMP_WORDBREAKS of bash: $(bash -ic 'printf %q "$COMP_WORDBREAKS"' 2>/dev/null </dev/null)"
got=$(complete_in "$mnt/vm1/drive0/restore" "${p%.img}")
[ "$got" = "$p" ] || qb_die "bash completed ${p%.img} to '$got', want $p"
got=$(complete_in "$mnt/vm1/points" "${p%.img}")
[ "$got" = "${p%.img}/" ] || [ "$got" = "${p%.img}" ] || qb_die "bash completed points/${p%.img} to '$got'"

# ---- -o names=iso: the same store, the names of earlier versions ----
qb_fs_mount "$store" "$iso" -o names=iso
mapfile -t ipts < <(qb_fs_points "$iso/vm1/drive0/restore")
[ ${#ipts[@]} -eq ${#pts[@]} ] || qb_die "iso mount: ${ipts[*]}"
for i in "${!pts[@]}"; do
  ip=${ipts[$i]} t=${ipts[$i]%.img}
  [[ $t =~ $ISO_RE ]] || qb_die "iso name $ip"
  [ "${t//:/}.img" = "${pts[$i]}" ] || qb_die "iso name $ip is not ${pts[$i]} with colons"
  for d in drive0 data1; do
    cmp "$iso/vm1/$d/restore/$ip" "$mnt/vm1/$d/restore/${pts[$i]}" || qb_die "$d: $ip and ${pts[$i]} differ"
  done
  cmp "$iso/vm1/points/$t/data1.img" "$mnt/vm1/points/${pts[$i]%.img}/data1.img" || qb_die "points/$t differs"
  [ -d "$iso/vm1/drive0/files/$t" ] || qb_die "iso files/$t missing"
  # each mount knows its own style's names only
  [ ! -e "$iso/vm1/drive0/restore/${pts[$i]}" ] || qb_die "the iso mount also finds ${pts[$i]}"
  [ ! -e "$mnt/vm1/drive0/restore/$ip" ] || qb_die "the default mount also finds $ip"
  [ ! -e "$iso/vm1/points/${pts[$i]%.img}" ] || qb_die "the iso mount also finds points/${pts[$i]%.img}"
  [ ! -e "$mnt/vm1/points/$t" ] || qb_die "the default mount also finds points/$t"
done
[ "$(readlink "$iso/vm1/drive0/restore/latest.img")" = "${ipts[3]}" ] || qb_die "iso latest.img"
[ "$(readlink "$iso/vm1/points/latest")" = "${ipts[3]%.img}" ] || qb_die "iso points/latest"
[ "$(qb_json <(cat "$iso/vm1/status") '[k["latest"] for k in d["disks"] if k["name"] == "drive0"][0]')" \
  = "${ipts[3]%.img}" ] || qb_die "iso status latest"
# what the colons do to tools (logged), and the ./ that avoids it
cd "$iso/vm1/drive0/restore"
qb_log "qemu-img info on an iso name: $(qemu-img info "${ipts[0]}" 2>&1 | head -1)"
qemu-img info "./${ipts[0]}" > "$T/info-iso.txt" 2>&1 || qb_die "qemu-img info ./${ipts[0]}: $(cat "$T/info-iso.txt")"
cd "$T"
qb_fs_unmount "$iso"

FS_PID=$main_pid
qb_fs_unmount "$mnt"
qb_log "names: ${pts[*]}"
