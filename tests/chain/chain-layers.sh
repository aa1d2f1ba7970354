#!/bin/sh
# The chain reader against qemu-img on chains that mix cluster sizes
# (512 B .. 2 MiB), change virtual size (smaller and larger, not
# cluster-aligned), and have many layers.
. "$(dirname "$0")/lib.sh"

# Cluster sizes 1M, 4k, 64k, 512, 2M in one chain.
mk m0 48M -o compat=1.1,cluster_size=1M
io m0 "write -P 0x01 0 48M"
mk m1 48M -o compat=1.1,cluster_size=4k
io m1 "write -P 0x02 4092k 12k" "write -z 10M 1M" "write -P 0x03 1048575 3" \
  "write -c -P 0x04 20M 64k"
mk m2 48M -o compat=0.10,cluster_size=64k
io m2 "write -P 0x05 10200k 200k" "write -c -P 0x06 30M 192k" "write -P 0x07 47M 1M"
mk m3 48M -o compat=1.1,cluster_size=512
io m3 "write -P 0x08 777k 1k" "write -z 47M 3k" "write -c -P 0x09 5M 8k"
mk m4 48M -o compat=1.1,cluster_size=2M
io m4 "write -z 12M 2M" "write -P 0x0a 16M 1k" "write -c -P 0x0b 24M 2M"
check mixed-clusters m0 m1 m2 m3 m4

# Virtual sizes: a smaller layer hides what lies beyond it in the layers
# below; a larger layer reads zeros there.  Sizes not cluster-aligned.
mk s0 64M -o compat=1.1
io s0 "write -P 0x21 0 64M"
mk s1 33554944 -o compat=1.1,cluster_size=1M
io s1 "write -P 0x22 31M 1M" "write -P 0x23 30M 512"
mk s2 100M -o compat=1.1,cluster_size=4k
io s2 "write -P 0x24 40M 64k" "write -P 0x25 1M 4k"
mk s3 99614720 -o compat=0.10,cluster_size=64k
io s3 "write -P 0x26 50M 1M" "write -P 0x27 33538048 8k"
check sizes s0 s1 s2 s3
check sizes-grow s0 s2
check sizes-shrink s0 s1

# Fourteen layers, each overwriting, zeroing and compressing a little;
# standalone v3 and v2 layers alternate.
set --
for i in 0 1 2 3 4 5 6 7 8 9 10 11 12 13; do
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
check fourteen-layers "$@"

# Compressed clusters in layers that name backing files of other sizes
# (the names themselves point nowhere: the store's order is what counts).
mk b0 64M -o compat=1.1
io b0 "write -P 0x31 0 64M"
qemu-img create -q -f qcow2 -o compat=1.1 -b "$T/b0" -F qcow2 "$T/b1" 32M
io b1 "write -c -P 0x32 1M 64k"
qemu-img create -q -f qcow2 -o compat=0.10 -b "$T/b1" -F qcow2 "$T/b2" 100M
io b2 "write -c -P 0x33 50M 64k" "write -c -P 0x34 2M 64k"
qemu-img rebase -q -u -f qcow2 -b /nonexistent/b0 -F qcow2 "$T/b1"
qemu-img rebase -q -u -f qcow2 -b /nonexistent/b1 -F qcow2 "$T/b2"
check linked-compressed-sizes b0 b1 b2
