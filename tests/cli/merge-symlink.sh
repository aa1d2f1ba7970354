#!/usr/bin/env bash
# `qmprebase merge` into a folder someone else can write: symlinks planted at
# every temporary name the merge ever used (and plausible others), and at the
# target itself, pointing to files outside, are never followed; the outside
# files keep their bytes; the result is a regular file, mode 0600, and equal
# byte for byte to the restore point; no temporary is left behind, also when
# the conversion fails.  `rebase` refuses a disk folder others can write.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-io "$QMPREBASE"
qb_tmpdir

dir=$T/store/symvm/disk0
size=$((32 << 20))
epoch=1700000000
qb_seed_full "$dir" $epoch disk0 $size "$T/ref.raw"
inc=$dir/INC-$((epoch + 3600))-disk0.qcow2
qemu-img create -q -f qcow2 -b "FULL-$epoch-disk0.qcow2" -F qcow2 "$inc"
qb_seed_write "$T/ref.raw" "$inc" "write -P 0x5a 1M 3M"
qb_seed_write "$T/ref.raw" "$inc" "write -z 17M 1M"

out=$T/out          # the folder another user can write into
mkdir -p "$out" "$T/outside"
chmod 0777 "$out"

# Outside files the planted links point to, and their pristine copies.
victims=()
plant() {  # plant NAME: a symlink out/NAME -> a fresh outside file
  local v
  v=$T/outside/victim-${#victims[@]}
  printf 'precious %s\n' "$1" > "$v"
  cp "$v" "$v.orig"
  victims+=("$v")
  ln -s "$v" "$out/$1"
}
check_victims() {
  local v
  for v in "${victims[@]}"; do
    [ ! -L "$v" ] && cmp -s "$v" "$v.orig" || qb_die "outside file $v was changed through a planted symlink"
  done
}
# Check result FILE: regular, mode 600, bytes equal to the restore point.
check_result() {
  local f=$1 fmt=$2
  [ -f "$f" ] && [ ! -L "$f" ] || qb_die "$f is not a regular file"
  [ "$(stat -c %a "$f")" = 600 ] || qb_die "$f has mode $(stat -c %a "$f"), expected 600"
  qemu-img convert -f "$fmt" -O raw "$f" "$T/check.raw"
  qb_cmp "$T/ref.raw" "$T/check.raw" || qb_die "$f differs from the restore point"
  rm -f "$T/check.raw"
}
check_no_temp() {
  local left
  left=$(find "$out" -mindepth 1 \( -name '*merge*' -o -name '*.tmp*' \) ! -type l)
  [ -z "$left" ] || qb_die "temporaries left in $out: $left"
}

for t in X.qcow2 X.raw; do
  for n in "$t.tmp-qcow2" "$t.tmp" "$t.tmp-raw" "$t.part" "$t~" ".$t.tmp" ".$t.swp" \
           "$t.merge" ".$t.merge"; do
    plant "$n"
  done
done

# qcow2 and raw results, through the planted names.
"$QMPREBASE" merge --dir "$dir" --targetfile "$out/X.qcow2" >/dev/null \
  || qb_die "merge to X.qcow2 failed"
check_victims
check_result "$out/X.qcow2" qcow2
"$QMPREBASE" merge --dir "$dir" --targetfile "$out/X.raw" >/dev/null \
  || qb_die "merge to X.raw failed"
check_victims
check_result "$out/X.raw" raw
check_no_temp

# A symlink at the target itself: refused without --force, replaced (not
# followed) with it.
plant Y.qcow2
if "$QMPREBASE" merge --dir "$dir" --targetfile "$out/Y.qcow2" >/dev/null 2>"$T/err"; then
  qb_die "merge over an existing name without --force succeeded"
fi
grep -q "exists; use --force" "$T/err" || qb_die "unexpected error: $(cat "$T/err")"
"$QMPREBASE" merge --dir "$dir" --targetfile "$out/Y.qcow2" --force >/dev/null \
  || qb_die "merge --force over a symlink failed"
check_victims
check_result "$out/Y.qcow2" qcow2

# The conversion fails: nothing is left behind, no target appears.
mkdir -p "$T/bin"
printf '#!/bin/sh\necho "qemu-img: simulated failure" >&2\nexit 1\n' > "$T/bin/qemu-img"
chmod +x "$T/bin/qemu-img"
if PATH="$T/bin:$PATH" "$QMPREBASE" merge --dir "$dir" --targetfile "$out/Z.qcow2" \
     >/dev/null 2>"$T/err"; then
  qb_die "merge with a failing qemu-img succeeded"
fi
grep -q "simulated failure" "$T/err" || qb_die "qemu-img's error not shown: $(cat "$T/err")"
[ ! -e "$out/Z.qcow2" ] || qb_die "a failed merge left $out/Z.qcow2"
check_no_temp
# A target folder that does not exist is created (as the seed does), private.
"$QMPREBASE" merge --dir "$dir" --targetfile "$T/nowhere/W.raw" >/dev/null 2>"$T/err" \
  || qb_die "merge into a missing folder failed: $(cat "$T/err")"
[ "$(stat -c %a "$T/nowhere")" = 700 ] && [ -f "$T/nowhere/W.raw" ] \
  || qb_die "merge into a missing folder: $(ls -ld "$T/nowhere")"
# A target folder that cannot be made (a file is in the way): a clear error.
touch "$T/afile"
if "$QMPREBASE" merge --dir "$dir" --targetfile "$T/afile/W.raw" >/dev/null 2>"$T/err"; then
  qb_die "merge below a regular file succeeded"
fi
grep -q "afile" "$T/err" || qb_die "unexpected error: $(cat "$T/err")"
check_victims

# `rebase` renames and writes in place in the disk folder: one that other
# users can write is refused, with the way out, and nothing changes.
sums=$(cd "$dir" && md5sum ./* | sort)
chmod 0777 "$dir"
if "$QMPREBASE" rebase --dir "$dir" >/dev/null 2>"$T/err"; then
  qb_die "rebase in a folder writable by others succeeded"
fi
grep -q "writable by other users" "$T/err" && grep -q "chmod go-w" "$T/err" \
  || qb_die "unexpected error: $(cat "$T/err")"
[ "$(cd "$dir" && md5sum ./* | sort)" = "$sums" ] || qb_die "a refused rebase changed the chain"
chmod 0700 "$dir"
"$QMPREBASE" rebase --dir "$dir" >/dev/null || qb_die "rebase in a private folder failed"
qb_check_merge "$dir" "$((epoch + 3600))" "$T/ref.raw"
qb_log "ok: planted symlinks not followed, results 0600 and exact, no temporaries left"
