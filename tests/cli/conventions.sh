#!/usr/bin/env bash
# qmprebase's conventions: --help/-V on the program and on each command; a
# usage error is one line and the hint, exit 2; an unknown command says so;
# --dir on a VM folder says so and lists its disks; merge creates a missing
# target folder (0700) and writes the exact point; `list` shows points,
# chains, sizes and health of a VM folder, a disk folder and a copy, as text
# and as JSON, without any VM running.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf python3 "$QMPCMD"
qb_need_cli
qb_tmpdir

# Run qmprebase ARGS, expecting exit code WANT: expect WANT ARGS...; output in $T/out, $T/err.
expect() {
  local want=$1 rc=0
  shift
  "$QMPREBASE" "$@" > "$T/out" 2> "$T/err" || rc=$?
  [ $rc -eq "$want" ] || qb_die "qmprebase $* exited $rc, expected $want: $(cat "$T/err")"
}

# A usage error: exit 2, exactly one line of error and the hint, no help text.
usage_err() {
  local re=$1
  shift
  expect 2 "$@"
  [ "$(wc -l < "$T/err")" -eq 2 ] || qb_die "qmprebase $*: not two lines: $(cat "$T/err")"
  [ "$(sed -n 2p "$T/err")" = "Try 'qmprebase --help'." ] || qb_die "qmprebase $*: no hint: $(cat "$T/err")"
  grep -Eq -e "$re" "$T/err" || qb_die "qmprebase $* did not say /$re/: $(cat "$T/err")"
  [ ! -s "$T/out" ] || qb_die "qmprebase $* printed on stdout"
}

# --- help and version ----------------------------------------------------------
for h in --help -h; do
  expect 0 $h
  grep -q "^Commands:" "$T/out" && grep -q "list" "$T/out" || qb_die "qmprebase $h: $(cat "$T/out")"
done
for v in --version -V; do
  expect 0 $v
  grep -Eq "^qmprebase [0-9]" "$T/out" || qb_die "qmprebase $v: $(cat "$T/out")"
done
for c in rebase merge list; do
  for h in --help -h; do
    expect 0 $c $h
    grep -q "^usage: qmprebase $c " "$T/out" || qb_die "qmprebase $c $h: $(cat "$T/out")"
    grep -q "^Commands:" "$T/out" && qb_die "qmprebase $c $h printed the program's help"
  done
  for v in --version -V; do
    expect 0 $c $v
    grep -Eq "^qmprebase [0-9]" "$T/out" || qb_die "qmprebase $c $v: $(cat "$T/out")"
  done
done

# --- usage errors ----------------------------------------------------------------
usage_err "no command" 
usage_err "unknown command frob" frob --dir "$T"
usage_err "unknown command frob" frob
usage_err "unknown option --bogus" rebase --bogus --dir "$T"
usage_err "unknown option -x" -x
usage_err "rebase needs --dir" rebase
usage_err "--dir needs a value" rebase --dir
usage_err "merge needs --targetfile" merge --dir "$T"
usage_err "merge takes no --dry-run" merge --dir "$T" --targetfile "$T/x" --dry-run
usage_err "rebase takes no --targetfile" rebase --dir "$T" --targetfile "$T/x"
usage_err "list takes only" list --dir "$T" --until x
usage_err "unexpected argument extra" list --dir "$T" extra

# --- a store of a VM with two disks ------------------------------------------------
qb_vm_start cv drive0:qcow2:16M drive1:qcow2:16M
qb_qmp cv cont >/dev/null
qb_guest_random_writes cv drive0 6 11
qb_guest_random_writes cv drive1 6 12
qb_backup_expect 0 cv full
qb_capture cv drive0 "$T/a0.raw"
qb_guest_write cv drive0 "write -P 0x5a 1M 256k"
qb_guest_write cv drive0 "write -z 0 64k"
qb_backup_expect 0 cv inc
qb_capture cv drive0 "$T/a1.raw"
vmdir=$T/store/cv
inc=$(qb_newest_layer "$vmdir/drive0")

# --dir on the VM folder: says so, lists the disks
for c in rebase "merge --targetfile $T/x.raw"; do
  expect 1 $c --dir "$vmdir"
  grep -q "is a VM folder, not a disk folder" "$T/err" && grep -q "drive0" "$T/err" \
    && grep -q "drive1" "$T/err" || qb_die "qmprebase $c on a VM folder: $(cat "$T/err")"
done
[ ! -e "$T/x.raw" ] || qb_die "merge on a VM folder wrote a file"

# merge into a missing folder: created 0700, image 0600, exact
expect 0 merge --dir "$vmdir/drive0" --targetfile "$T/new/sub/disk.raw"
[ "$(stat -c %a "$T/new")" = 700 ] && [ "$(stat -c %a "$T/new/sub")" = 700 ] \
  || qb_die "merge made folders of mode $(stat -c %a "$T/new") $(stat -c %a "$T/new/sub")"
[ "$(stat -c %a "$T/new/sub/disk.raw")" = 600 ] || qb_die "merged image is not 0600"
qb_cmp "$T/a1.raw" "$T/new/sub/disk.raw" || qb_die "merge into a new folder is not the newest point"
expect 1 merge --dir "$vmdir/drive0" --targetfile "$T/new/sub/disk.raw"
grep -q "exists; use --force" "$T/err" || qb_die "merge over an existing file: $(cat "$T/err")"
expect 0 merge --dir "$vmdir/drive0" --targetfile "$T/new/sub/disk.raw" --force --until "$(qb_layer_id "$(qb_layers "$vmdir/drive0" | head -n 1)")"
qb_cmp "$T/a0.raw" "$T/new/sub/disk.raw" || qb_die "merge --force --until the full is not point 0"

# --- list, with the VM gone ----------------------------------------------------------
qb_vm_stop cv
expect 0 list --dir "$vmdir"
grep -q "^disk drive0" "$T/out" && grep -q "^disk drive1" "$T/out" \
  && grep -q "^2 restore points, 4 layers, 0 damaged" "$T/out" || qb_die "list of the VM folder: $(cat "$T/out")"
grep -q "$inc" "$T/out" || qb_die "list does not show $inc: $(cat "$T/out")"
expect 0 list --dir "$vmdir" --json
python3 - "$T/out" "$inc" <<'EOF' || qb_die "list --json of the VM folder: $(cat "$T/out")"
import json, sys
v = json.load(open(sys.argv[1]))
assert v["vm"] == "cv" and v["points"] == 2 and v["layers"] == 4 and v["damaged"] == 0, v
disks = {d["name"]: d for d in v["disks"]}
assert sorted(disks) == ["drive0", "drive1"], disks
ch = disks["drive0"]["chains"]
assert len(ch) == 1 and ch[0]["health"] == "ok" and ch[0]["chain"], ch
pts = ch[0]["points"]
assert [p["kind"] for p in pts] == ["full", "inc"], pts
assert pts[1]["file"] == sys.argv[2] and pts[1]["bytes"] > 0 and pts[1]["virtual_size"] == 16 << 20, pts
assert all(p["health"] == "ok" and p["damage"] is None for p in pts), pts
EOF
expect 0 list --dir "$vmdir/drive1" --json
python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); assert [d["name"] for d in v["disks"]]==["drive1"] and v["points"]==2, v' "$T/out" \
  || qb_die "list --json of a disk folder: $(cat "$T/out")"
# a copy, then damaged: list says where
cp -a "$vmdir/drive0" "$T/copy"
expect 0 list --dir "$T/copy"
grep -q "^2 restore points, 2 layers, 0 damaged" "$T/out" || qb_die "list of a copy: $(cat "$T/out")"
truncate -s 4096 "$T/copy/$inc"
expect 0 list --dir "$T/copy" --json
python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); p=v["disks"][0]["chains"][0]["points"]; assert v["damaged"]==1 and p[1]["health"]=="damaged" and p[1]["damage"], v' "$T/out" \
  || qb_die "list --json of a damaged copy: $(cat "$T/out")"
expect 1 list --dir "$T/nonexistent"
grep -q "nonexistent" "$T/err" || qb_die "list of a missing folder: $(cat "$T/err")"
echo "qmprebase conventions: help, version, usage errors, VM folder, merge folder, list"
