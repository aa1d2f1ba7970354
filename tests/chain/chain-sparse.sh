#!/bin/sh
# A 64 GiB chain holding a few MB: reads, SEEK_DATA/SEEK_HOLE map and
# allocated bytes against qemu-img, and a small cluster map.
. "$(dirname "$0")/lib.sh"

mk big0 64G -o compat=1.1
io big0 "write -P 0x11 0 2M" "write -P 0x12 17G 1M" "write -c -P 0x13 40G 256k" \
  "write -P 0x14 68719411200 64k"
mk big1 64G -o compat=1.1,cluster_size=4k
io big1 "write -z 1M 512k" "write -P 0x21 18253615104 8k" "write -P 0x22 35433480192 4k" \
  "write -z 68719443968 8k" "write -P 0x23 50G 3M"
set -- big0 big1
reference big "$@"
set -- $(layers "$@")
[ "$("$CHAINCAT" --stats "$@" | awk '$1 == "size" { print $2 }')" = 68719476736 ] \
  || fail "chain size is not 64 GiB"
"$CHAINCAT" --verify "$T/big.raw" "$@" || fail "big: --verify failed"
check_map big "$@"
# The map of 16 Mi clusters of 4 KiB stays small: it keeps arrays only for
# the few chunks that hold data.
mapb=$("$CHAINCAT" --stats "$@" | awk '$1 == "map_bytes" { print $2 }')
[ "$mapb" -lt 2000000 ] || fail "cluster map of a sparse 64 GiB chain takes $mapb bytes"
# A read across the whole tail, and past the end.
"$CHAINCAT" --range 68719411200 200000 "$@" > "$T/tail"
[ "$(stat -c %s "$T/tail")" = 65536 ] || fail "read at the end is not short"
cmp -i 0:68719411200 -n 65536 "$T/tail" "$T/big.raw" || fail "tail bytes differ"
[ "$("$CHAINCAT" --range 68719476736 10 "$@" | wc -c)" = 0 ] || fail "read past the end returned bytes"
echo "ok: sparse 64 GiB (map $mapb bytes)"
