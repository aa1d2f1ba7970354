#!/bin/sh
# chain_extend: each point of a chain opened on top of the previous one
# reads exactly as the point opened from its base (bytes, extents,
# allocated bytes), and the top point as qemu-img reads the chain.  Layers
# of other sizes or finer clusters are opened from their base instead.
. "$(dirname "$0")/lib.sh"
CHAINEXT=${2:?usage: $0 CHAINCAT CHAINEXT}

# run NAME WANT_EXTENDED LAYER...: chainext passes, extends WANT_EXTENDED
# points, and its top point (chaincat) equals QEMU's view.
run () {
  name=$1 want=$2; shift 2
  out=$("$CHAINEXT" $(layers "$@")) || fail "$name: chainext failed"
  echo "$name: $out" | tr '\n' ' '; echo
  echo "$out" | grep -q "extended $want\$" || fail "$name: not $want points extended: $out"
  check "$name" "$@"
}

# Twelve layers, each overwriting, zeroing and compressing a little;
# standalone v3 and v2 layers alternate.
set --
for i in 0 1 2 3 4 5 6 7 8 9 10 11; do
  compat=1.1
  [ $((i % 3)) = 2 ] && compat=0.10
  mk l$i 32M -o compat=$compat
  if [ $i = 0 ]; then
    io l0 "write -P 0x80 0 32M"
  else
    a=$((i * 2)) b=$((i * 13 % 29)) c=$((i * 7 % 31))
    io l$i "write -c -P $((0xc0 + i)) ${c}M 64k" "write -P $((0x80 + i)) ${a}M 1M" \
      "write -P $((0xa0 + i)) ${b}M $((i * 5))k" "write -z $((c * 1024 + i * 3))k $((i * 9))k" \
      "write -P $((0xe0 + i)) $((i * 1000 + 1))k 1k"
  fi
  set -- "$@" l$i
done
run twelve-layers 11 "$@"

# Coarser clusters above finer ones extend; finer ones are opened from the base.
mk c0 16M -o compat=1.1,cluster_size=4k
io c0 "write -P 0x11 0 16M"
mk c1 16M -o compat=1.1,cluster_size=64k
io c1 "write -P 0x12 1M 64k" "write -z 3M 128k"
mk c2 16M -o compat=1.1,cluster_size=512
io c2 "write -P 0x13 5M 1k"
mk c3 16M -o compat=1.1,cluster_size=2M
io c3 "write -P 0x14 8M 2M"
run clusters 2 c0 c1 c2 c3

# Another virtual size: opened from the base.
mk s0 16M -o compat=1.1
io s0 "write -P 0x21 0 16M"
mk s1 8M -o compat=1.1
io s1 "write -P 0x22 1M 64k"
mk s2 8M -o compat=1.1
io s2 "write -P 0x23 2M 64k"
run sizes 1 s0 s1 s2
echo PASS
