#!/usr/bin/env bash
# Every way the mount is run as a system service waits longer at stop than the
# thaw guard may need (THAWGUARD_BUDGET_MS in engine/thawguard.h) before it
# SIGKILLs what is left, so a guard still thawing a frozen guest is never
# killed: the fstab line of qmpbackupfs(8), turned into a mount unit by
# systemd's own fstab generator, has a TimeoutSec (x-systemd.mount-timeout=)
# above the budget and `systemd-analyze verify` finds nothing to say about it;
# qmpbackupfs.service and qmpbackup@.service (as meson configured them) have
# TimeoutStopSec above it and KillMode=control-group (mixed would SIGKILL the
# guard as soon as the daemon is gone).
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
qb_need python3 systemd-analyze systemd-escape
gen=/lib/systemd/system-generators/systemd-fstab-generator
[ -x "$gen" ] || { echo "SKIP: $gen not installed: no mount unit to check"; exit 77; }
qb_tmpdir

budget_ms=$(sed -n 's/^#define THAWGUARD_BUDGET_MS \([0-9]*\).*/\1/p' "$QB_SOURCE_DIR/engine/thawguard.h")
[ -n "$budget_ms" ] || qb_die "no THAWGUARD_BUDGET_MS in engine/thawguard.h"
budget=$((budget_ms / 1000))

# Print the seconds of systemd time span SPAN ("150", "2min 30s", "90s").
secs() {
  python3 - "$1" <<'PY'
import re, sys
units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001, "us": 1e-6}
total = 0
for n, u in re.findall(r"(\d+)\s*([a-z]*)", sys.argv[1]):
    total += int(n) * units[u]
print(int(total))
PY
}

# The fstab line of the man page's EXAMPLES (joined where it continues with \).
line=$(python3 - "$QB_SOURCE_DIR/doc/qmpbackupfs.8" <<'PY'
import re, sys
src = open(sys.argv[1]).read().replace("\\-", "-").replace("\\e\n", " ")
for l in src.splitlines():
    if "fuse.qmpbackupfs" in l and not l.startswith("."):
        print(re.sub(r"\s+", " ", l.strip()))
        break
PY
)
[ -n "$line" ] || qb_die "no fstab line in qmpbackupfs(8)"
qb_log "fstab line of qmpbackupfs(8): $line"
read -r what where type opts _ <<< "$line"
[ "$type" = fuse.qmpbackupfs ] || qb_die "the fstab line has type $type"
[[ ,$opts, == *,x-systemd.mount-timeout=* ]] || qb_die "the fstab line sets no x-systemd.mount-timeout: $line"
echo "$line" > "$T/fstab"
mkdir -p "$T/gen/normal" "$T/gen/early" "$T/gen/late"
SYSTEMD_FSTAB=$T/fstab SYSTEMD_PROC_CMDLINE="" "$gen" "$T/gen/normal" "$T/gen/early" "$T/gen/late" \
  2> "$T/gen.err" || qb_die "fstab generator failed: $(cat "$T/gen.err")"
unit=$(systemd-escape -p --suffix=mount "$where")
[ -f "$T/gen/normal/$unit" ] || qb_die "no $unit generated: $(find "$T/gen")"
to=$(sed -n 's/^TimeoutSec=//p' "$T/gen/normal/$unit")
[ -n "$to" ] || qb_die "the mount unit has no TimeoutSec (default 90 s): $(cat "$T/gen/normal/$unit")"
[ "$(secs "$to")" -gt "$budget" ] \
  || qb_die "the mount unit waits $to at stop, the thaw guard may need ${budget}s"
out=$(cd "$T/gen/normal" && systemd-analyze verify "./$unit" 2>&1) || qb_die "systemd-analyze verify $unit: $out"
[ -z "$out" ] || qb_die "systemd-analyze verify $unit has something to say: $out"

# The service units as built.
units=$QB_BUILD_DIR/contrib/systemd
for u in qmpbackupfs.service qmpbackup@.service; do
  [ -f "$units/$u" ] || qb_die "$units/$u not built"
  to=$(sed -n 's/^TimeoutStopSec=//p' "$units/$u")
  [ -n "$to" ] && [ "$(secs "$to")" -gt "$budget" ] \
    || qb_die "$u: TimeoutStopSec=${to:-default 90s}, the thaw guard may need ${budget}s"
  [ "$(sed -n 's/^KillMode=//p' "$units/$u")" = control-group ] || qb_die "$u: KillMode is not control-group"
done
qb_log "thaw guard budget ${budget}s: the mount unit and both services wait longer"
