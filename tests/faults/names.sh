#!/usr/bin/env bash
# Hostile names never escape the store or the mount.  VM names from socket file
# names in the sockets dir (symlinks to real QEMU sockets: "..", ".", leading
# dots, a newline, control bytes, 250 characters) and from -o vm= ("../../x",
# "..", ".", "a/b", a newline, 300 characters); disk ids as QEMU allows them
# ("d..x", "d.", 300 characters; and two 300-character ids that differ only at
# the end: refused, as they would share a directory).  Backups of
# each through the mount land in sanitised directories under the store, the
# mount shows sanitised or no entries, nothing is created outside the store,
# two names never share one directory.  With allow_other, a user outside the
# group can neither read images, chain files or status nor write the control
# file, and nobody creates files in the mount.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init

long250=$(printf 'L%.0s' $(seq 250))
long300=$(printf 'M%.0s' $(seq 300))
did1=d$(printf 'x%.0s' $(seq 299))
did2=d$(printf 'x%.0s' $(seq 298))y

# VMs: q1 is reached through the hostile socket names, q2..q5 through -o vm=,
# q6 has hostile disk ids.
for q in q1 q2 q3 q4 q5; do qb_vm_start $q drive0:qcow2:4M; done
qb_guest_write q1 drive0 "write -P 0x81 0 1M"
# Start QEMU NAME (sockets $T/NAME.qmp, $T/NAME.test.qmp) with disks ID=IMAGE...
start_ids() {
  local name=$1 spec pid i args=()
  shift
  for spec in "$@"; do
    qemu-img create -q -f qcow2 "${spec#*=}" 4M
    args+=(-drive "file=${spec#*=},format=qcow2,if=virtio,id=${spec%%=*}")
  done
  qemu-system-x86_64 -machine q35,accel=kvm:tcg -nodefaults -display none -S -m 64 "${args[@]}" \
    -qmp "unix:$T/$name.qmp,server=on,wait=off" -qmp "unix:$T/$name.test.qmp,server=on,wait=off" \
    </dev/null >"$T/vm/$name.out" 2>&1 &
  pid=$!
  qb_register_pid $pid
  for ((i = 0; i < 100; i++)); do [ -S "$T/$name.test.qmp" ] && break; _qb_alive $pid || break; sleep 0.1; done
  [ -S "$T/$name.test.qmp" ] || qb_die "QEMU with drive ids $* did not start: $(cat "$T/vm/$name.out")"
  for spec in "$@"; do
    "$QMPCMD" "$T/$name.test.qmp" --hmp "qemu-io ${spec%%=*} \"write -P $((RANDOM % 200 + 1)) 0 1M\"" >/dev/null
    "$QMPCMD" "$T/$name.test.qmp" --hmp "qemu-io ${spec%%=*} flush" >/dev/null
  done
}
start_ids q6 "d..x=$T/img/q6-a.qcow2" "d.=$T/img/q6-b.qcow2" "$did1=$T/img/q6-c.qcow2"
start_ids q7 "$did1=$T/img/q7-c.qcow2" "$did2=$T/img/q7-d.qcow2"

hs=$T/hostile
mkdir -p "$hs"
for n in . .. .hidden "nl
name" "$(printf 'ctl\001\033[31m')" "$long250" "a..b" "sp ace" "-o"; do
  ln -s "$T/sockets/q1.qmp" "$hs/$n.qmp"
done
ln -s "$T/q6.qmp" "$hs/disks.qmp"
ln -s "$T/q7.qmp" "$hs/clash.qmp"

touch "$T/marker"
sleep 1
qb_fs_mount "$store" "$mnt" -o "sockets=$hs" \
  -o "vm=../../escape:$T/sockets/q2.qmp" -o "vm=..:$T/sockets/q3.qmp" \
  -o "vm=a/b:$T/sockets/q4.qmp" -o "vm=$long300:$T/sockets/q5.qmp"

# A name is sane: no '/', not "." or "..", no leading dot, no control bytes, <= 255 bytes.
sane() {
  case $1 in ''|.*|*/*) return 1 ;; esac
  [ "${#1}" -le 255 ] || return 1
  ! printf '%s' "$1" | LC_ALL=C grep -q '[[:cntrl:]]'
}
mapfile -t entries < <(ls -A "$mnt" | grep -v '^\.status$\|^\.metrics$')
qb_log "mount entries: $(printf '%q ' "${entries[@]}")"
for e in "${entries[@]}"; do sane "$e" || qb_die "unsafe entry in the mount: $(printf '%q' "$e")"; done
[ "$(ls -A "$mnt" | grep -c '^\.')" = 2 ] || qb_die "hidden entries: $(ls -A "$mnt" | grep '^\.')"

# Back up every VM the mount shows (one at a time: several names lead to q1).
# (a socket path longer than a unix address holds cannot be connected to: that
# backup must fail and say why)
for e in "${entries[@]}"; do
  r=$(qb_fs_control "$mnt/$e/backup" "full\n")
  if [ "$e" = clash ]; then
    # two ids that are one name once shortened: refused, said, nothing written
    [ "$r" = EIO ] && grep -q "same name" "$mnt/$e/status" || qb_die "two disks with one name: $r: $(cat "$mnt/$e/status")"
    [ ! -e "$store/clash" ] || [ -z "$(find "$store/clash" -type f -name 'FULL-*')" ] || qb_die "a clashing VM wrote a backup"
    continue
  fi
  if [ "$e" = "${long250:0:200}" ]; then
    [ "$r" != OK ] && grep -q "too long" "$mnt/$e/status" && continue
    [ "$r" = OK ] && continue
  fi
  [ "$r" = OK ] || qb_die "backup of $(printf '%q' "$e"): $r: $(cat "$mnt/$e/status")"
done
# The -o vm= names all got a VM (sanitised), the 300-character one shortened.
[ "${#entries[@]}" -ge 4 ] || qb_die "too few VMs: $(printf '%q ' "${entries[@]}")"

# Nothing outside the store and the mount was created or changed.
out=$(find "$T" -newer "$T/marker" -not -path "$store" -not -path "$store/*" -not -path "$mnt" \
        -not -path "$mnt/*" -not -path "$T/vm/*" -not -path "$T/fs.log" -not -path "$T/img/*" \
        -not -path "$T/vm" -not -path "$T" 2>/dev/null || true)
[ -z "$out" ] || qb_die "files created outside the store: $out"
out=$(find "$(dirname "$T")" -maxdepth 2 -name '*escape*' 2>/dev/null || true)
[ -z "$out" ] || qb_die "a name escaped the store: $out"
# Every path under the store is made of sane names (the product's own dot files aside).
while IFS= read -r -d '' p; do
  rel=${p#"$store"/}
  IFS=/ read -r -a parts <<< "$rel"
  for c in "${parts[@]}"; do
    case $c in .points|.chain|.lock|.target-id|.*.lock|.*.json) continue ;; esac
    sane "$c" || qb_die "unsafe store path: $(printf '%q' "$rel")"
  done
done < <(find "$store" -mindepth 1 -print0)
qb_log "store: $(cd "$store" && find . -maxdepth 2 -type d | sort | cut -c1-60 | tr '\n' ' ')"

# Disk ids: three disks, three directories, each point exact.
mapfile -t dd < <(ls "$mnt/disks" | grep -v '^backup$\|^status$\|^points$')
qb_log "disk dirs: $(printf '%.20s ' "${dd[@]}")"
[ ${#dd[@]} = 3 ] || qb_die "3 disks became ${#dd[@]} directories: ${dd[*]}"
for d in "${dd[@]}"; do sane "$d" || qb_die "unsafe disk dir $(printf '%q' "$d")"; done
for img in a b c; do qemu-img convert -U -O raw "$T/img/q6-$img.qcow2" "$T/q6-$img.raw"; done
for d in "${dd[@]}"; do
  ok=0
  for img in a b c; do cmp -s "$T/q6-$img.raw" "$mnt/disks/$d/restore/latest.img" && ok=1; done
  [ $ok = 1 ] || qb_die "disk dir $d holds none of the disks"
done

# allow_other: the kernel enforces the modes.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  fusermount3 -u "$mnt"
  fault_wait_gone "$FS_PID"
  chmod 711 "$T"
  qb_fs_mount "$store" "$mnt" -o "sockets=$hs,allow_other"
  other() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
  member() { setpriv --reuid=65534 --regid=0 --clear-groups "$@"; }
  v=$mnt/disks
  p=$(readlink "$v/${dd[0]}/restore/latest.img")
  c=$(ls "$v/${dd[0]}/chain" | head -n 1)
  other cat "$v/${dd[0]}/restore/$p" >/dev/null 2>&1 && qb_die "another user read an image"
  other cat "$v/points/latest/${dd[0]}.img" >/dev/null 2>&1 && qb_die "another user read a point image"
  other cat "$v/${dd[0]}/chain/$c" >/dev/null 2>&1 && qb_die "another user read a chain file"
  other cat "$v/status" >/dev/null 2>&1 && qb_die "another user read status"
  other sh -c "echo full > '$v/backup'" 2>/dev/null && qb_die "another user wrote the control file"
  other touch "$v/backup" 2>/dev/null && qb_die "another user touched the control file"
  member sh -c "echo full > '$v/backup'" 2>/dev/null && qb_die "a group member wrote the control file"
  member cat "$v/${dd[0]}/restore/$p" | cmp -s - "$mnt/disks/${dd[0]}/restore/latest.img" \
    || qb_die "a group member cannot read an image"
  member cat "$v/points/latest/${dd[0]}.img" | cmp -s - "$mnt/disks/${dd[0]}/restore/latest.img" \
    || qb_die "a group member cannot read a point image"
  for who in other member; do
    $who touch "$v/new" 2>/dev/null && qb_die "$who created a file in the mount"
    $who mkdir "$mnt/newvm" 2>/dev/null && qb_die "$who created a directory in the mount"
  done
  touch "$v/${dd[0]}/restore/new.img" 2>/dev/null && qb_die "root created a restore image"
  mkdir "$mnt/newvm" 2>/dev/null && qb_die "root created a directory in the mount"
  rm -f "$v/${dd[0]}/restore/$p" 2>/dev/null || true
  [ -e "$v/${dd[0]}/restore/$p" ] || qb_die "a restore point was deleted through the mount"
  [ "$(ls "$store/disks/${dd[0]}" | grep -c '^FULL-')" = 1 ] || qb_die "the store changed"
else
  qb_log "not root or no setpriv: allow_other checks skipped"
fi
_qb_alive "$FS_PID" || qb_die "qmpbackupfs died"
echo "names: ok"
