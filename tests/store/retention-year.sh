#!/bin/bash
# The retention policy over a simulated year, checked against an independent
# model: for several seeds, a year of restore point times (hourly backups
# with random jitter, gaps of days, bursts of several a minute, equal
# times) is fed in time order, newest first or shuffled to retention_dump
# (store/retention.c) and to retention_ref.py (Python, datetime and
# zoneinfo), for several policies and time zones; their answers must be
# the same line for line.  A few counts are checked outright as well.
#
# Needs QB_BUILD_DIR and QB_SOURCE_DIR (set by meson); python3 with zoneinfo.
set -euo pipefail

DUMP=${QB_BUILD_DIR:?}/tests/store/retention_dump
REF=${QB_SOURCE_DIR:?}/tests/store/retention_ref.py

if ! command -v python3 > /dev/null; then
  echo "SKIP: python3 is not installed (the reference model is written in Python)"
  exit 77
fi
if ! python3 -c 'import zoneinfo; zoneinfo.ZoneInfo("Europe/Berlin")' 2> /dev/null; then
  echo "SKIP: python3 has no zoneinfo or no time zone data (Python >= 3.9 and tzdata needed)"
  exit 77
fi
[ -x "$DUMP" ] || { echo "FAIL: $DUMP not built"; exit 1; }

T=$(mktemp -d /tmp/qb-retention-year.XXXXXX)
trap 'rm -rf "$T"' EXIT

# Print a year of point times (microseconds) starting at epoch second START,
# using bash's generator seeded with SEED: one backup an hour at a random
# minute, 2 in 1000 hours begin a gap of 1 to 5 days, 3 in 100 add a burst
# of 2 to 6 points within one minute (a quarter of them at the same second
# as the one before), and a point at every DST change and at midnight.
gen_year() {
  local start=$1 seed=$2 h t k burst gap=0
  RANDOM=$seed
  for ((h = 0; h < 366 * 24; h++)); do
    if ((gap > 0)); then gap=$((gap - 1)); continue; fi
    if ((RANDOM % 1000 < 2)); then gap=$((24 + RANDOM % (4 * 24 + 1))); continue; fi
    t=$((start + h * 3600 + RANDOM % 3600))
    echo "$((t * 1000000 + RANDOM % 1000000))"
    if ((RANDOM % 100 < 3)); then
      burst=$((1 + RANDOM % 5))
      for ((k = 0; k < burst; k++)); do
        ((RANDOM % 4 == 0)) || t=$((t + 1 + RANDOM % 9))
        echo "$((t * 1000000))"
      done
    fi
  done
  # Edges: midnights of new year in UTC, Berlin and New York; the 2026
  # DST changes of Europe (03-29 01:00Z, 10-25 01:00Z) and the US
  # (03-08 07:00Z, 11-01 06:00Z), a second either side.
  for t in 1798761600 1798758000 1798779600 1774746000 1792890000 1772953200 1793512800; do
    echo "$(((t - 1) * 1000000))"
    echo "$((t * 1000000))"
    echo "$(((t + 1) * 1000000))"
  done
}

POLICIES=(
  "last=3,hourly=24,daily=7,weekly=4,monthly=12,yearly=5"
  "daily=30"
  "weekly=60"
  "hourly=100,monthly=6"
  "last=10,within=3d,weekly=8"
  "within=45d"
  "yearly=2,monthly=3,weekly=3,daily=3,hourly=3"
  "monthly=13,weekly=2"
  "weekly=10,monthly=6"
  "weekly=9,monthly=4,yearly=1"
  "last=1"
  "daily=400,within=1w"
  ""
)
ZONES=(Europe/Berlin America/New_York Australia/Lord_Howe)

fails=0 runs=0
for seed in 1 2 3; do
  # Seed 1 and 3 run through 2026, seed 2 from mid-2026 into 2027 (ISO
  # week 2026-W53 holds 2027-01-01).
  case $seed in
    2) start=1781481600 ;;   # 2026-06-15T00:00:00Z
    *) start=1767225600 ;;   # 2026-01-01T00:00:00Z
  esac
  gen_year "$start" "$seed" | sort -n > "$T/times.$seed"
  # Points exactly 3 days, 1 week and 45 days (the withins below) before
  # the newest, and a microsecond further back.
  newest=$(tail -n 1 "$T/times.$seed")
  for d in 3 7 45; do
    echo "$((newest - d * 86400000000))"
    echo "$((newest - d * 86400000000 - 1))"
  done | sort -n -m - "$T/times.$seed" > "$T/t" && mv "$T/t" "$T/times.$seed"
  case $seed in
    1) cp "$T/times.$seed" "$T/in.$seed" ;;
    2) tac "$T/times.$seed" > "$T/in.$seed" ;;
    3) shuf --random-source=<(yes 3) "$T/times.$seed" > "$T/in.$seed" ;;
  esac
  npts=$(wc -l < "$T/in.$seed")
  for tz in "${ZONES[@]}"; do
    for pol in "${POLICIES[@]}"; do
      runs=$((runs + 1))
      TZ=$tz "$DUMP" "$pol" < "$T/in.$seed" > "$T/c.out"
      TZ=$tz python3 "$REF" "$pol" < "$T/in.$seed" > "$T/py.out"
      if ! cmp -s "$T/c.out" "$T/py.out"; then
        fails=$((fails + 1))
        echo "FAIL: seed $seed ($npts points), TZ=$tz, policy \"$pol\": C and Python differ"
        echo "  (line: time in us | local time | C | Python)"
        paste -d '|' "$T/in.$seed" "$T/c.out" "$T/py.out" | awk -F'|' '$2 != $3 { print NR }' |
          head -n 10 | while read -r ln; do
            us=$(sed -n "${ln}p" "$T/in.$seed")
            printf '  %s: %s | %s | %s | %s\n' "$ln" "$us" \
              "$(TZ=$tz date -d "@$((us / 1000000))" '+%F %T %Z %G-W%V')" \
              "$(sed -n "${ln}p" "$T/c.out")" "$(sed -n "${ln}p" "$T/py.out")"
          done
        continue
      fi
      kept=$(grep -c '^keep' "$T/c.out" || true)
      # Counts that follow from the rules directly.
      want=""
      case $pol in
        last=1) want=1 ;;
        "") want=$npts ;;
        daily=30) want=30 ;;
      esac
      if [ -n "$want" ] && [ "$kept" != "$want" ]; then
        echo "FAIL: seed $seed, TZ=$tz, policy \"$pol\": $kept kept, want $want"
        fails=$((fails + 1))
      fi
      # The newest point (the last line in time order; of equal times the
      # one given last) is always kept.
      newest=$(awk '{ if (NR == 1 || $1 >= m) { m = $1; l = NR } } END { print l }' "$T/in.$seed")
      if ! sed -n "${newest}p" "$T/c.out" | grep -q '^keep'; then
        echo "FAIL: seed $seed, TZ=$tz, policy \"$pol\": the newest point (line $newest) was not kept"
        fails=$((fails + 1))
      fi
      echo "ok: seed $seed ($npts points), TZ=$tz, \"$pol\": $kept kept"
    done
  done
done

# A bad policy is refused by both, with a message.
if "$DUMP" "daily=7,fortnightly=2" < /dev/null 2> "$T/err"; then
  echo "FAIL: retention_dump accepted an unknown key"; fails=$((fails + 1))
elif ! grep -q 'unknown key "fortnightly"' "$T/err"; then
  echo "FAIL: the message does not name the bad key: $(cat "$T/err")"; fails=$((fails + 1))
fi

echo "$runs runs, $fails failed"
[ "$fails" -eq 0 ]
