#!/usr/bin/env bash
# Bit rot in the store: every layer gets per-cluster checksums at commit;
# one flipped data byte in the middle of a data cluster of the FULL makes
# `qmprebase verify` report that layer damaged at the right guest offset
# (exit 1), `qmprebase list` then shows that point and every later point of
# the chain damaged, `inc` is refused (exit 5) and `auto` starts a new chain
# with a FULL that is exact.
# An intact store verifies ok (exit 0); a seed layer without checksums is
# unverifiable (exit 0, with a note); a damaged or truncated .sums file is
# reported as such, never as layer damage.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf python3 "$QMPCMD"
qb_need_cli
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"
vmdir=$T/store/vf
dir=$vmdir/drive0

# Value of the JSON path EXPR (python syntax on j) in file F.
jq_() { python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print($2)" "$1"; }

qb_vm_start vf drive0:qcow2:32M
qb_guest_write vf drive0 "write -P 0x5a 0 8M"
qb_guest_random_writes vf drive0 8 "$seed"
qb_backup_expect 0 vf full
files=("$(qb_newest_layer "$dir")"); qb_capture vf drive0 "$T/p0.raw"
for i in 1 2; do
  qb_guest_random_writes vf drive0 4 $((seed + i))
  qb_backup_expect 0 vf inc
  files+=("$(qb_newest_layer "$dir")"); qb_capture vf drive0 "$T/p$i.raw"
done

# Every committed layer has its checksums, private.
for f in "${files[@]}"; do
  s=$dir/.chain/$f.sums
  [ -f "$s" ] || qb_die "layer $f has no checksums $s"
  [ "$(stat -c %a "$s")" = 600 ] || qb_die "$s has mode $(stat -c %a "$s"), expected 600"
done

# An intact store verifies ok.
rc=0; "$QMPREBASE" verify --dir "$vmdir" > "$T/v0.out" 2>&1 || rc=$?
cat "$T/v0.out"
[ $rc -eq 0 ] || qb_die "verify of an intact store exited $rc"
[ "$(grep -c '^drive0 .* ok$' "$T/v0.out")" -eq 3 ] || qb_die "not 3 points ok"
grep -q 'GB/s' "$T/v0.out" || qb_die "verify printed no speed"
for f in "${files[@]}"; do
  [ "$(jq_ "$dir/.chain/$f.verify.json" "j['result']")" = ok ] \
    || qb_die "no ok verify record for $f"
done

# Flip one byte in the middle of a data cluster of the FULL (the layer alone).
full=$dir/${files[0]}
qemu-img map -f qcow2 --output=json "$full" > "$T/map.json"
read -r guest host < <(python3 - "$T/map.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
d = [e for e in m if e.get('data') and 'offset' in e and e['length'] >= 3 * 65536]
e = d[len(d) // 2]
g = e['start'] + 65536 * (e['length'] // 65536 // 2)   # a cluster in the middle of the run
print(g, e['offset'] + (g - e['start']))
EOF
)
echo "flipping a byte of guest cluster $guest (host $host) of ${files[0]}"
python3 - "$full" $((host + 32768)) <<'EOF'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0x01]))
EOF

rc=0; "$QMPREBASE" verify --dir "$vmdir" --json > "$T/v1.json" 2>"$T/v1.err" || rc=$?
[ $rc -eq 1 ] || { cat "$T/v1.json" "$T/v1.err"; qb_die "verify of a flipped byte exited $rc, expected 1"; }
[ "$(jq_ "$T/v1.json" "j['points'][0]['result']")" = damaged ] || qb_die "the FULL's point is not damaged"
[ "$(jq_ "$T/v1.json" "j['points'][0]['layers'][0]['layer']")" = "${files[0]}" ] || qb_die "wrong layer"
[ "$(jq_ "$T/v1.json" "j['points'][0]['layers'][0]['damaged_clusters']")" = 1 ] \
  || qb_die "not exactly one damaged cluster: $(cat "$T/v1.json")"
[ "$(jq_ "$T/v1.json" "j['points'][0]['layers'][0]['guest_offsets'][0]")" = "$guest" ] \
  || qb_die "wrong guest offset (expected $guest): $(cat "$T/v1.json")"
[ "$(jq_ "$T/v1.json" "j['points'][0]['layers'][0]['host_offsets'][0]")" = "$host" ] \
  || qb_die "wrong host offset (expected $host)"
[ "$(jq_ "$T/v1.json" "sum(p['result'] == 'damaged' for p in j['points'])")" = 3 ] \
  || qb_die "not every point of the chain is damaged"
[ "$(jq_ "$T/v1.json" "j['points'][1]['layers'][1]['result']")" = ok ] \
  || qb_die "the intact INC is not ok on its own"
rc=0; "$QMPREBASE" verify --dir "$vmdir" > "$T/v1.out" 2>&1 || rc=$?
cat "$T/v1.out"
[ $rc -eq 1 ] || qb_die "text verify exited $rc"
grep -q "layer ${files[0]}: 1 damaged cluster at guest offsets $guest (host offsets $host)" \
  "$T/v1.out" || qb_die "the text report does not name the layer and offsets"

# The result is kept: the scan (list, the mount, the engine) sees the damage.
"$QMPREBASE" list --dir "$vmdir" --json > "$T/list.json"
python3 - "$T/list.json" "$guest" <<'EOF' || qb_die "list does not show the verify damage"
import json, sys
s = json.dumps(json.load(open(sys.argv[1])))
assert s.count('verify at') >= 3, s
assert 'damaged cluster at guest offsets ' + sys.argv[2] in s, s
assert 'restore from another point' in s, s
EOF
cp -a "$dir" "$T/copy"                       # a copied disk folder keeps the finding
"$QMPREBASE" list --dir "$T/copy" > "$T/list-copy.out"
[ "$(grep -c 'damaged: verify at' "$T/list-copy.out")" -eq 3 ] \
  || qb_die "the copied folder lost the verify's finding: $(cat "$T/list-copy.out")"
rc=0; "$QMPREBASE" merge --dir "$dir" --targetfile "$T/bad.raw" 2>/dev/null || rc=$?
[ $rc -eq 1 ] && [ ! -e "$T/bad.raw" ] || qb_die "merge of a point on a damaged FULL: exit $rc"

# The next backup does not continue the damaged chain.
qb_guest_random_writes vf drive0 4 $((seed + 7))
rc=0; qb_backup vf inc || rc=$?
[ $rc -eq 5 ] || qb_die "inc on the chain verify found damaged exited $rc, expected 5"
[ "$(qb_newest_layer "$dir")" = "${files[2]}" ] || qb_die "the refused inc left a layer"
qb_backup_expect 0 vf auto
f=$(qb_newest_layer "$dir")
[[ $f == FULL-* ]] || qb_die "auto after verify found damage made $f, expected a FULL"
grep -q "damaged" "$T/last-backup.out" || qb_die "auto did not say why it took a full"
for f0 in "${files[@]}"; do                  # recovery at the backup's start kept them
  [ -f "$dir/.chain/$f0.verify.json" ] && [ -f "$dir/.chain/$f0.sums" ] \
    || qb_die "the verify record or sums of $f0 vanished"
done
qb_capture vf drive0 "$T/p3.raw"
qb_check_merge "$dir" "$(qb_layer_id "$f")" "$T/p3.raw"
id3=$(qb_layer_id "$f")
rc=0; "$QMPREBASE" verify --dir "$vmdir" --point "$id3" > "$T/v2.out" 2>&1 || rc=$?
cat "$T/v2.out"
[ $rc -eq 0 ] || qb_die "verify of the new FULL alone exited $rc"

# A damaged or truncated .sums file is told apart from a damaged layer.
sums=$dir/.chain/$f.sums
cp "$sums" "$T/sums.keep"
head -c $(( $(stat -c %s "$sums") - 5 )) "$T/sums.keep" > "$sums"
rc=0; "$QMPREBASE" verify --dir "$vmdir" --point "$id3" --json > "$T/v3.json" 2>&1 || rc=$?
[ $rc -eq 1 ] || qb_die "verify with truncated sums exited $rc, expected 1"
[ "$(jq_ "$T/v3.json" "j['points'][0]['result']")" = sums-damaged ] \
  || qb_die "truncated sums not reported as sums-damaged: $(cat "$T/v3.json")"
"$QMPREBASE" list --dir "$vmdir" > "$T/list2.out"
grep " $f " "$T/list2.out" | grep -qi damaged \
  && qb_die "damaged sums made the layer damaged: $(cat "$T/list2.out")"
cp "$T/sums.keep" "$sums"
printf 'X' | dd of="$sums" bs=1 seek=0 conv=notrunc status=none     # wrong magic
rc=0; "$QMPREBASE" verify --dir "$vmdir" --point "$id3" > "$T/v4.out" 2>&1 || rc=$?
cat "$T/v4.out"
[ $rc -eq 1 ] && grep -q "sums-damaged" "$T/v4.out" || qb_die "bad magic: exit $rc"
cp "$T/sums.keep" "$sums"
printf '\x01' | dd of="$sums" bs=1 seek=200 conv=notrunc status=none  # an entry flipped
rc=0; "$QMPREBASE" verify --dir "$vmdir" --point "$id3" > "$T/v5.out" 2>&1 || rc=$?
cat "$T/v5.out"
[ $rc -eq 1 ] && grep -q "own checksum" "$T/v5.out" || qb_die "flipped sums entry: exit $rc"
cp "$T/sums.keep" "$sums"
rc=0; "$QMPREBASE" verify --dir "$vmdir" --point "$id3" >/dev/null 2>&1 || rc=$?
[ $rc -eq 0 ] || qb_die "restored sums do not verify: $rc"

# Chain rewrites keep the checksums true: removing a middle INC moves its
# changes into the next layer (rewritten in place), removing the FULL's point
# folds it forward under a new name; both get fresh sums, removed layers
# lose theirs, and every kept point verifies ok and reads exactly.
ids=("$id3")
for i in 1 2 3; do
  qb_guest_random_writes vf drive0 4 $((seed + 20 + i))
  qb_backup_expect 0 vf inc
  ids+=("$(qb_layer_id "$(qb_newest_layer "$dir")")"); qb_capture vf drive0 "$T/q$i.raw"
done
"$QMPREBASE" remove --dir "$vmdir" --point "${ids[2]}" >/dev/null || qb_die "remove of a middle INC failed"
"$QMPREBASE" remove --dir "$vmdir" --point "${ids[0]}" >/dev/null || qb_die "remove of the FULL's point failed"
[ ! -e "$dir/.chain/INC-${ids[2]}.sums" ] && [ ! -e "$dir/.chain/FULL-${ids[0]}.sums" ] \
  || qb_die "removed layers kept their sums: $(ls -a "$dir/.chain")"
[ -f "$dir/.chain/FULL-${ids[1]}.sums" ] || qb_die "the folded FULL has no sums: $(ls -a "$dir/.chain")"
rc=0; "$QMPREBASE" verify --dir "$vmdir" --point "${ids[3]}" > "$T/v7.out" 2>&1 || rc=$?
cat "$T/v7.out"
[ $rc -eq 0 ] && [ "$(grep -c '^drive0 .* ok$' "$T/v7.out")" -eq 1 ] \
  && grep -q '^verified 2 layers' "$T/v7.out" \
  || qb_die "points after a chain rewrite do not verify ok (exit $rc)"
qb_check_merge "$dir" "${ids[1]}" "$T/q1.raw"
qb_check_merge "$dir" "${ids[3]}" "$T/q3.raw"

# A layer made by the Python qmpbackup has no checksums: unverifiable, exit 0.
qb_seed_full "$T/store/seedvm/drive0" 1764480000 drive0 32M "$T/seed.raw"
rc=0; "$QMPREBASE" verify --dir "$T/store/seedvm" > "$T/v6.out" 2>&1 || rc=$?
cat "$T/v6.out"
[ $rc -eq 0 ] || qb_die "verify of a seed store exited $rc, expected 0"
grep -q "^drive0 .* unverifiable$" "$T/v6.out" && grep -q "^note:" "$T/v6.out" \
  || qb_die "the seed layer is not reported unverifiable with a note"

# Usage errors exit 2.
rc=0; "$QMPREBASE" verify --bogus >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || qb_die "verify --bogus exited $rc"
rc=0; "$QMPREBASE" verify >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || qb_die "verify without --dir exited $rc"
echo "verify: bit rot found at guest offset $guest, chain refused, sums damage told apart"
