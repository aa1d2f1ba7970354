#!/bin/sh
# The chain reader against qemu-img on qcow2 v2 and v3 chains: overwrites,
# zero clusters above data (Debian's libqcow misreads them), discards,
# compressed clusters, sub-cluster writes at odd offsets.
. "$(dirname "$0")/lib.sh"

for compat in 0.10 1.1; do
  case $compat in 0.10) v=v2 ;; *) v=v3 ;; esac
  mk $v-full 64M -o compat=$compat
  io $v-full "write -P 0x11 0 16M" "write -P 0x22 20M 4M" "write -P 0x23 40M 1M"
  mk $v-inc1 64M -o compat=$compat
  io $v-inc1 "write -P 0x33 1M 64k" "write -z 4M 2M" "write -P 0x34 4100k 3k" \
    "write -P 0x35 20000k 5k" "write -c -P 0x36 30M 1M" "write -P 0x37 63M 1M"
  mk $v-inc2 64M -o compat=$compat
  io $v-inc2 "write -z 8M 256k" "write -P 0x44 8200k 1k" "write -c -P 0x45 41M 512k" \
    "write -P 0x46 30M 4k"
  # Standalone layers (linked only by the store's order).
  check $v-standalone $v-full $v-inc1 $v-inc2
  # The same layers, linked by backing names (the names do not matter).
  for f in inc1 inc2; do
    qemu-img rebase -q -u -f qcow2 -b /nonexistent/base -F qcow2 "$T/$v-$f"
  done
  check $v-linked $v-full $v-inc1 $v-inc2
done

# Zero clusters and discards on v3 layers with real backing files (the way
# QEMU writes them while it sees the chain).
mk z-full 32M -o compat=1.1
io z-full "write -P 0x51 0 32M"
qemu-img create -q -f qcow2 -o compat=1.1 -b "$T/z-full" -F qcow2 "$T/z-inc" 32M
io z-inc "write -z 1M 3M" "discard 8M 2M" "write -z 16M 64k" "write -z 17000k 4k" \
  "write -P 0x52 20M 100k" "write -z -u 24M 1M"
check v3-zero z-full z-inc
# A discard on a v3 layer that has no backing file.
mk d-full 16M -o compat=1.1
io d-full "write -P 0x61 0 16M"
mk d-inc 16M -o compat=1.1
io d-inc "write -P 0x62 0 8M" "discard 2M 2M" "write -z 5M 1M"
check v3-discard d-full d-inc

# A fully compressed FULL (qemu-img convert -c) under an INC.
qemu-img convert -c -O qcow2 -o compat=1.1 "$T/ref-v3-zero/1.qcow2" "$T/c-full"
mk c-inc 32M -o compat=1.1
io c-inc "write -P 0x71 3M 70k" "write -z 100k 50k"
check compressed-full c-full c-inc
qemu-img convert -c -O qcow2 -o compat=0.10 "$T/ref-v2-standalone/2.qcow2" "$T/c2-full"
check compressed-full-v2 c2-full
