#!/usr/bin/env bash
# A store on a replica-2 GlusterFS volume (two bricks, no glusterd, so no
# self-heal daemon).  One brick's glusterfsd is killed -9 while a backup
# runs: the backup completes or fails cleanly (nothing half-written listed);
# a backup with the brick down reads exactly; the brick comes back and is
# healed from the client side (every file of the store looked up and read
# through a fresh client mount that caches nothing, until both bricks hold
# the same files); then the brick
# that never went away is killed and every point reads exactly from the
# healed one alone.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/hosts/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp md5sum diff
qb_need_fuse
qb_tmpdir
gl_need

gl_brick_start r1
gl_brick_start r2
gl_mount "$T/host" r1 r2
mkdir -m 0700 "$T/host/store"
qb_vm_start vm1 drive0:qcow2:32M
# speed: the backup the brick dies under lasts long enough to be caught
gl_fs_mount PID "$T/host/store" "$T/mnt" -o speed=4M -o "vm=vm1:$T/sockets/vm1.qmp"

declare -A sum
# Back up with TEXT; remember the capture of the point it made.
backup() {
  local r p
  qb_capture vm1 drive0 "$T/cap.raw"
  r=$(qb_fs_control "$T/mnt/vm1/backup" "$1")
  [ "$r" = OK ] || qb_die "$1 backup: $r: $(cat "$T/mnt/vm1/status")"
  p=$(readlink "$T/mnt/vm1/drive0/restore/latest.img")
  sum[$p]=$(gl_md5 "$T/cap.raw")
}
# Check every remembered point (WHY in messages).
check_all() {
  local p got
  for p in "${!sum[@]}"; do
    got=$(gl_md5 "$T/mnt/vm1/drive0/restore/$p" 2>"$T/md5.err") \
      || qb_die "$p cannot be read ($1): $(cat "$T/md5.err")"
    [ "$got" = "${sum[$p]}" ] || qb_die "$p differs ($1)"
  done
}

qb_guest_write vm1 drive0 "write -P 0x11 0 4M"
backup full
qb_guest_write vm1 drive0 "write -P 0x12 4M 2M"
backup inc

# ---- brick r2 killed -9 while a backup runs ----
qb_guest_write vm1 drive0 "write -P 0x13 8M 16M"
qb_capture vm1 drive0 "$T/cap.raw"
before=$(ls "$T/mnt/vm1/drive0/restore" | wc -l)
qb_fs_control "$T/mnt/vm1/backup" inc > "$T/bg.out" & BG=$!
for ((i = 0; i < 300; i++)); do
  [ "$(qb_qmp vm1 query-block-jobs)" != "[]" ] && break
  sleep 0.05
done
gl_brick_kill r2
wait "$BG" || true
r=$(cat "$T/bg.out")
if [ "$r" = OK ]; then
  p=$(readlink "$T/mnt/vm1/drive0/restore/latest.img")
  sum[$p]=$(gl_md5 "$T/cap.raw")
  qb_log "the backup during the brick's death completed"
else
  [ "$(ls "$T/mnt/vm1/drive0/restore" | wc -l)" = "$before" ] || qb_die "a failed backup left a point"
  grep -q '"ok":false' "$T/mnt/vm1/status" || qb_die "a failed backup is not reported: $(cat "$T/mnt/vm1/status")"
  qb_log "the backup during the brick's death failed cleanly: $r"
fi
check_all "one brick down"
qb_guest_write vm1 drive0 "write -P 0x14 1M 1M"
backup auto
check_all "one brick down, a backup since"

# ---- the brick returns; heal from the client side ----
gl_brick_start r2
# A client of its own that caches nothing: every stat is a fresh lookup,
# and a lookup that finds a file blamed by the other brick heals it (the
# long-running mount's cached lookups heal only slowly, in tens of seconds).
GL_CLIENT_OPTS="--entry-timeout=0 --attribute-timeout=0" gl_mount "$T/heal" r1 r2
healed=0
for ((i = 0; i < 120; i++)); do
  # a lookup and a full read of every file makes the client heal it
  find "$T/heal/store" -exec stat {} + >/dev/null 2>&1 || true
  find "$T/heal/store" -type f -exec cat {} + >/dev/null 2>&1 || true
  if diff -r -q --no-dereference -x .glusterfs "$T/gl/r1/store" "$T/gl/r2/store" >/dev/null 2>&1; then
    healed=1; break
  fi
  sleep 0.5
done
[ "$healed" = 1 ] || qb_die "brick r2 was not healed: $(diff -r -q -x .glusterfs "$T/gl/r1/store" "$T/gl/r2/store" 2>&1 | head -5)"
qb_log "brick r2 healed after $((i + 1)) passes of a fresh client"

# ---- every point from the healed brick alone ----
gl_brick_kill r1
# A scan that runs while the client notices the brick's death can miss
# points; the mount scans again within a few seconds (bounded wait, logged).
for ((w = 0; w < 200; w++)); do
  missing=0
  for p in "${!sum[@]}"; do [ -e "$T/mnt/vm1/drive0/restore/$p" ] || missing=1; done
  [ "$missing" = 0 ] && break
  sleep 0.1
done
[ "$missing" = 0 ] || qb_die "points not listed 20 s after brick r1 died: $(ls "$T/mnt/vm1/drive0/restore")"
[ "$w" = 0 ] || qb_log "every point listed again $((w * 100)) ms after brick r1 died"
check_all "read from the healed brick alone"
qb_log "${#sum[@]} points exact from the healed brick alone"
