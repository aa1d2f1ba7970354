#!/usr/bin/env bash
# A year of real restore points pruned by a retention policy.  qmpbackup
# takes about 125 backups of a running QEMU (four chains, guest writes,
# zeroes and discards between them) with its clock set by libfaketime to
# times spread over thirteen months: every few days, a burst of two in one
# second, then every few hours at the end.  Then `qmprebase prune` (dry run first,
# then for real, TZ=Europe/Berlin) must keep exactly the points the
# independent model retention_ref.py keeps, for the same reasons; the
# dry run must change nothing; and every point kept must read byte for byte
# as before the prune (qemu-img convert of the point taken before, checked
# against the VM's disk when the point was taken), through our chain reader
# and through qemu-img on the layer files.  The next backup continues.
# QB_SEED=N replays one run; the seed is printed.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf sha256sum "$QMPCMD"
qb_need_cli
command -v python3 > /dev/null || { echo "SKIP: python3 is not installed (the reference model)"; exit 77; }
# libfaketime is preloaded: in a sanitizer build the ASan runtime is then not
# first in the library list, which is harmless for this program.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
command -v faketime > /dev/null || {
  echo "SKIP: faketime is not installed (libfaketime sets qmpbackup's clock to a year of times; contrib/install-deps.sh installs it)"
  exit 77
}
"$QMPREBASE" prune --help > /dev/null 2>&1 || { echo "SKIP: $QMPREBASE has no prune command"; exit 77; }
qb_tmpdir
seed=${QB_SEED:-$RANDOM}
echo "seed $seed"
REF=$QB_SOURCE_DIR/tests/store/retention_ref.py
export TZ=Europe/Berlin
# The policy, as qmprebase options and as the model's spec.
KEEP=(--keep-last 3 --keep-daily 4 --keep-weekly 3 --keep-monthly 5 --keep-yearly 1 --keep-within 12h)
SPEC="last=3,daily=4,weekly=3,monthly=5,yearly=1,within=12h"

# The schedule: epoch seconds (UTC) of the backups and their level.
RANDOM=$seed
sched=()
t=$((1764547200 + RANDOM % 86400))                 # 2025-12-01
while ((t < 1796083200)); do                        # 2026-12-01
  sched+=("$t")
  t=$((t + (2 + RANDOM % 5) * 86400 + RANDOM % 43200 - 21600))
done
mid=$(( ${#sched[@]} / 2 ))
# A burst: two backups in the same second (the second gets id ..._02), one
# more a few seconds later.
sched=("${sched[@]:0:$mid}" "${sched[$mid]}" "${sched[$mid]}" "$((sched[mid] + 7))"
       "${sched[@]:$((mid + 1))}")
# December: every day, then the last two days every 2 to 4 hours.
t=1796083200
while ((t < 1797724800)); do sched+=("$((t + RANDOM % 86400))"); t=$((t + 86400)); done
t=1797724800                                        # 2026-12-20
while ((t < 1797897600)); do sched+=("$t"); t=$((t + 7200 + RANDOM % 7200)); done
echo "${#sched[@]} backups from $(date -u -d "@${sched[0]}" +%F) to $(date -u -d "@${sched[-1]}" +%F)"

qb_vm_start vm1 drive0:qcow2:32M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 12M"
vmdir=$T/store/vm1
dir=$vmdir/drive0

# backup_at EPOCH LEVEL: a backup whose clock reads EPOCH (UTC) at its start.
backup_at() {
  local when
  when=$(date -u -d "@$1" '+%Y-%m-%d %H:%M:%S')
  TZ=UTC faketime -f "@$when" "$QMPBACKUP" --socket "$T/sockets/vm1.qmp" backup \
    --level "$2" --target "$vmdir" > "$T/last-backup.out" 2>&1 \
    || { cat "$T/last-backup.out" >&2; qb_die "backup at $when ($2) failed"; }
}

# The VM's disk at each point: sha256 of a capture, by id.
declare -A disk_sum
for i in "${!sched[@]}"; do
  level=inc
  # Four chains: the second (January to March) loses all its points, the
  # first all but its last point of 2025 (yearly), the third its start.
  ((i == 0 || i == 12 || i == 24 || i == mid + 20)) && level=full
  if ((i > 0)); then
    qb_guest_random_writes vm1 drive0 3 $((seed + i))
    qb_guest_write vm1 drive0 "write -P $((i % 200 + 20)) $(( (i % 30) * 1024 * 1024 )) 64k"
  fi
  backup_at "${sched[$i]}" "$level"
  id=$(qb_layer_id "$(qb_newest_layer "$dir")")
  [ -z "${disk_sum[$id]:-}" ] || { cat "$T/last-backup.out" >&2; ls "$vmdir/.points" >&2; qb_die "backup $i at ${sched[$i]} made no new point (newest is still $id)"; }
  qb_capture vm1 drive0 "$T/now.raw"
  disk_sum[$id]=$(sha256sum < "$T/now.raw" | cut -d' ' -f1)
done
rm -f "$T/now.raw"
npoints=${#disk_sum[@]}
[ "$(ls "$vmdir/.points" | wc -l)" -eq "$npoints" ] || qb_die "expected $npoints point records"
grep -q '_02' <(ls "$vmdir/.points") || qb_die "the burst made no second point in one second"
nchains=$(ls "$dir" | grep -c '^FULL-')
[ "$nchains" -eq 4 ] || qb_die "expected 4 chains, have $nchains"
echo "$npoints restore points in $nchains chains"

# The points' times from their records, in id order (equal times: the later id is newer).
python3 - "$vmdir/.points" > "$T/points" <<'EOF'
import json, os, sys
d = sys.argv[1]
for name in sorted(os.listdir(d)):
    if name.endswith(".json"):
        with open(os.path.join(d, name)) as f:
            print(json.load(f)["time_us"], name[:-5])
EOF
cut -d' ' -f1 "$T/points" | python3 "$REF" "$SPEC" > "$T/ref.out"
paste -d' ' <(cut -d' ' -f2 "$T/points") "$T/ref.out" | awk '{ print $1, $2, ($3 == "" ? "-" : $3) }' \
  > "$T/want"                                       # id keep|remove rule
nkeep=$(grep -c ' keep ' "$T/want")
echo "the model keeps $nkeep of $npoints: $(awk '$2 == "keep" { printf "%s(%s) ", $1, $3 }' "$T/want")"
((nkeep > 10 && nkeep < npoints / 2)) || qb_die "the policy should keep some but not most points"

# References of the points that stay, taken before the prune, each checked
# against the VM's disk when it was taken.
while read -r id verdict _; do
  [ "$verdict" = keep ] || continue
  f=$(cd "$dir" && ls -d FULL-"$id" INC-"$id" 2>/dev/null || true)
  qemu-img convert -U -O raw "$dir/$f" "$T/ref-$id.raw"
  [ "$(sha256sum < "$T/ref-$id.raw" | cut -d' ' -f1)" = "${disk_sum[$id]}" ] \
    || qb_die "before the prune, point $id already differs from the VM's disk"
done < "$T/want"

# decisions JSON: "id keep|remove rule" lines from qmprebase prune --json.
decisions() {
  python3 -c '
import json, sys
for p in json.load(sys.stdin)["points"]:
    print(p["id"], "keep" if p["keep"] else "remove", p.get("rule") or "-")'
}
state() { (cd "$vmdir" && find . -printf '%P %s %T@ %m\n' | sort); }

# Dry run: the decisions of the model, and nothing changes.
state > "$T/state.before"
"$QMPREBASE" prune --dir "$vmdir" "${KEEP[@]}" --dry-run --json > "$T/dry.json"
decisions < "$T/dry.json" | sort > "$T/dry"
sort "$T/want" > "$T/want.sorted"
diff -u "$T/want.sorted" "$T/dry" || qb_die "prune --dry-run decided otherwise than the model (- model, + qmprebase)"
state > "$T/state.after"
diff -u "$T/state.before" "$T/state.after" || qb_die "prune --dry-run changed the store"
echo "dry run: the model's decisions, store untouched"

# Text output: one line per point, keep with its rule, remove otherwise.
"$QMPREBASE" prune --dir "$vmdir" "${KEEP[@]}" --dry-run > "$T/dry.txt"
[ "$(grep -c '^keep ' "$T/dry.txt")" -eq "$nkeep" ] \
  && [ "$(grep -c '^remove ' "$T/dry.txt")" -eq $((npoints - nkeep)) ] \
  || { cat "$T/dry.txt" >&2; qb_die "prune --dry-run text output does not list every point"; }

# The prune.
"$QMPREBASE" prune --dir "$vmdir" "${KEEP[@]}" --json > "$T/real.json"
decisions < "$T/real.json" | sort > "$T/real"
diff -u "$T/want.sorted" "$T/real" || qb_die "prune decided otherwise than the model (- model, + qmprebase)"

# What is left: exactly the kept points, one layer file each, no leftovers.
awk '$2 == "keep" { print $1 }' "$T/want" | sort > "$T/kept.want"
ls "$vmdir/.points" | sed 's/\.json$//' | sort > "$T/kept.records"
diff -u "$T/kept.want" "$T/kept.records" || qb_die "the point records left are not the points kept"
qb_layers "$dir" | while read -r f; do qb_layer_id "$f"; done | sort > "$T/kept.layers"
diff -u "$T/kept.want" "$T/kept.layers" || qb_die "the layer files left are not the points kept"
leftover=$(cd "$vmdir" && find . \( -name '.tmp-*' -o -name '.rewrite*' \) -print)
[ -z "$leftover" ] || qb_die "files left over after the prune: $leftover"

# Every kept point reads as before: our chain reader and qemu-img on the layer.
while read -r id; do
  qb_check_merge "$dir" "$id" "$T/ref-$id.raw"
  f=$(cd "$dir" && ls -d FULL-"$id" INC-"$id" 2>/dev/null || true)
  qemu-img check -q "$dir/$f" || qb_die "qemu-img check of $f after the prune failed"
  qb_check_qemu_img "$dir" "$f" "$T/ref-$id.raw"
done < "$T/kept.want"
echo "all $nkeep points kept read byte for byte as before (qmprebase merge, qemu-img)"
grep -q ' keep yearly$' "$T/want" || qb_die "the schedule should make yearly keep a point of 2025"
[ "$(ls "$dir" | grep -c '^FULL-')" -eq 3 ] || qb_die "the second chain should be gone, have: $(ls "$dir" | tr '\n' ' ')"

# The same policy again, with no new point, removes nothing.
"$QMPREBASE" prune --dir "$vmdir" "${KEEP[@]}" --dry-run > "$T/again.txt"
grep -q 'all kept: nothing to do' "$T/again.txt" \
  || { cat "$T/again.txt" >&2; qb_die "a second prune with the same policy would remove more"; }

# The next backup continues the chain.
qb_guest_write vm1 drive0 "write -P 0x99 3M 128k"
backup_at 1797904800 inc                            # 2026-12-22T02:00:00Z
id=$(qb_layer_id "$(qb_newest_layer "$dir")")
[ "$id" = 20261222T020000Z ] || qb_die "the backup after the prune made $id"
qb_capture vm1 drive0 "$T/next.raw"
qb_check_merge "$dir" "$id" "$T/next.raw"
echo "the next backup continues the chain"
