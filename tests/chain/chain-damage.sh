#!/bin/sh
# Damaged chains: the reader fails with a clear message for the reads that
# need the damaged part, never returns other bytes, and reads the rest.
. "$(dirname "$0")/lib.sh"

# be64 FILE OFF: the big-endian 64-bit number at OFF, without its top byte
# (flags in L1/L2 entries; zero in the header fields read here).
be64 () {
  od -An -tu1 -j "$2" -N 8 "$1" | awk '{ v = 0; for (i = 2; i <= NF; i++) v = v * 256 + $i; printf "%.0f\n", v }'
}

# poke FILE OFF HEXBYTES: overwrite bytes at OFF ("ff00..." pairs).
poke () {
  esc=$(printf '%s\n' "$3" | awk '{ h = "0123456789abcdef"
    for (i = 1; i < length ($0); i += 2)
      printf "\\%03o", (index (h, substr ($0, i, 1)) - 1) * 16 + index (h, substr ($0, i + 1, 1)) - 1 }')
  printf "$esc" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# l2_entry_at FILE GUEST_OFF: file offset of the L2 entry of a 64 KiB-cluster
# image for guest offset GUEST_OFF (< 512 MiB, so L1 entry 0).
l2_entry_at () {
  l1=$(be64 "$1" 40)
  l2=$(( $(be64 "$1" "$l1") & 0xfffffffffffe00 ))
  [ "$l2" -ne 0 ] || fail "no L2 table in $1"
  echo $(( l2 + ($2 / 65536) * 8 ))
}

# expect_fail NAME WORD REF CHAINCAT-ARGS...: chaincat fails, says WORD on
# stderr, and what it wrote is a prefix of REF (an empty REF: nothing).
expect_fail () {
  name=$1 word=$2 ref=$3; shift 3
  if "$CHAINCAT" "$@" > "$T/$name.out" 2> "$T/$name.err"; then
    fail "$name: chaincat succeeded on a damaged chain"
  fi
  grep -q -- "$word" "$T/$name.err" || { cat "$T/$name.err" >&2; fail "$name: no '$word' in the message"; }
  if [ -n "$ref" ] && [ -s "$T/$name.out" ]; then
    cmp "$T/$name.out" "$ref" > "$T/$name.cmp" 2>&1 || true
    grep -q "EOF on $T/$name.out" "$T/$name.cmp" || { cat "$T/$name.cmp" >&2; fail "$name: wrote bytes that differ"; }
  elif [ -s "$T/$name.out" ]; then
    fail "$name: wrote bytes"
  fi
  echo "ok: $name: $(head -c 200 "$T/$name.err")"
}

mk d0 16M -o compat=1.1
io d0 "write -P 0x11 0 16M"
mk d1 16M -o compat=1.1
io d1 "write -P 0x22 1M 1M" "write -P 0x23 5M 64k" "write -c -P 0x24 9M 128k" "write -z 12M 1M"
reference good d0 d1
good=$T/good.raw
cp "$T/d1" "$T/d1.orig"; cp "$T/d0" "$T/d0.orig"
restore () { cp "$T/d1.orig" "$T/d1"; cp "$T/d0.orig" "$T/d0"; }

# An L2 entry pointing beyond the end of the file.
poke "$T/d1" "$(l2_entry_at "$T/d1" 5242880)" 8000010000000000
expect_fail l2-beyond-eof damaged "$good" "$T/d0" "$T/d1"
"$CHAINCAT" --range 0 5242880 "$T/d0" "$T/d1" | cmp - "$good" -n 5242880 || fail "bytes before the damage"
"$CHAINCAT" --range 5308416 11468800 "$T/d0" "$T/d1" | cmp -i 0:5308416 - "$good" || fail "bytes after the damage"
expect_fail l2-beyond-eof-range damaged "" --range 5308415 2 "$T/d0" "$T/d1"
expect_fail l2-beyond-eof-extents damaged "$good" --extents "$T/d0" "$T/d1"
"$CHAINCAT" --map "$T/d0" "$T/d1" > /dev/null || fail "map of a chain with a damaged cluster"

# Reserved bits and a misaligned offset in L2 entries.
restore
e=$(l2_entry_at "$T/d1" 1048576)
poke "$T/d1" $((e + 1)) 02
expect_fail l2-reserved-bits damaged "$good" "$T/d0" "$T/d1"
restore
poke "$T/d1" $((e + 6)) 12
expect_fail l2-misaligned damaged "$good" "$T/d0" "$T/d1"

# Damage below a cluster that a newer layer overwrote is never read.
restore
poke "$T/d0" "$(l2_entry_at "$T/d0" 1048576)" 8000010000000000
"$CHAINCAT" "$T/d0" "$T/d1" | cmp - "$good" || fail "damage hidden by a newer layer"
echo "ok: hidden damage"

# An L1 entry pointing beyond the end of the file: the whole range is damaged.
restore
l1=$(be64 "$T/d1" 40)
poke "$T/d1" "$l1" 8000020000000000
expect_fail l1-beyond-eof damaged "" "$T/d0" "$T/d1"

# A truncated layer: data and tables past the cut are damaged, the header
# still opens; a file cut inside its L1 table does not open.
restore
truncate -s $(( $(stat -c %s "$T/d1") - 65536 )) "$T/d1"
expect_fail truncated-data "truncated\|damaged" "$good" "$T/d0" "$T/d1"
truncate -s 100 "$T/d1"
expect_fail truncated-header "outside the file\|truncated" "" "$T/d0" "$T/d1"

# Headers: bad magic, corrupt bit, missing layer, unsupported features.
restore
poke "$T/d0" 0 51464900
expect_fail bad-magic magic "" "$T/d0" "$T/d1"
restore
poke "$T/d1" 79 02
expect_fail corrupt-bit corrupt "" "$T/d0" "$T/d1"
restore
expect_fail missing-layer missing "" "$T/d0" "$T/nonexistent" "$T/d1"
mk x-ext 16M -o compat=1.1,extended_l2=on,cluster_size=64k
expect_fail extended-l2 "extended L2" "" "$T/x-ext"
mk x-data 16M -o compat=1.1,data_file="$T/x-data.raw"
expect_fail data-file "external data file" "" "$T/x-data"
if qemu-img create -q -f qcow2 -o compat=1.1,compression_type=zstd "$T/x-zstd" 16M 2>/dev/null; then
  expect_fail zstd "compression type" "" "$T/x-zstd"
fi
if qemu-img create -q -f qcow2 --object secret,id=s0,data=pw \
     -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10 "$T/x-luks" 16M 2>/dev/null; then
  expect_fail encrypted "encrypted" "" "$T/x-luks"
fi
