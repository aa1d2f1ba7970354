#!/usr/bin/env bash
# Regenerate the committed seed corpus in tests/fuzz/corpus/ (needs qemu-img
# and qemu-io for the qcow2 seeds).  Usage: tests/fuzz/make-seeds.sh
# Seeds start with the mode byte each target documents at its top.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
c=$here/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$c"
mkdir -p "$c"/{jsonio,qmp,qga,qcow2,chain,sums}

greet='{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}, "capabilities": ["oob"]}}'
ev='{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "BLOCK_JOB_COMPLETED", "data": {"device": "job0", "len": 65536, "offset": 65536, "speed": 0, "type": "backup"}}'
seed () { printf "$2" > "$1"; }   # FILE FORMAT-with-escapes

# jsonio: mode byte, then the stream (bit 0 of the mode: agent, 0xFF delimited).
seed "$c/jsonio/greeting" "\x00$greet\r\n"
seed "$c/jsonio/replies" '\x08{"return": {}, "id": "qb-1"}\n{"return": [{"device": "drive0", "inserted": {"node-name": "#block123"}}], "id": "qb-2"}\n'
seed "$c/jsonio/event" "\x10$ev\n"
seed "$c/jsonio/garbage-then-object" '\x00{"a": tru}\n{"b": 1.5e300, "c": "\\u00e9\\ud83d\\ude00", "d": null}\n'
seed "$c/jsonio/split" '\x00{"return":\n {"status": "running",\n "running": true}}'
seed "$c/jsonio/not-object" '\x00[1, 2]\n"str"\nnull\n42\n{"x": -0}\n'
seed "$c/jsonio/agent" '\x01junk\xff{"return": 1234}\n\xff{"return": {}}\n'
seed "$c/jsonio/agent-noise" '\x01{"return": 9}\xff\xff  \n{"error": {"class": "GenericError", "desc": "x"}}'
printf '\x00' > "$c/jsonio/deep"
printf '{"a":%.0s' $(seq 70) >> "$c/jsonio/deep"
printf '1' >> "$c/jsonio/deep"
printf '}%.0s' $(seq 70) >> "$c/jsonio/deep"

# qmp: mode byte (bits 0-2: commands-1, bit 3: one HMP command, bit 4: arguments),
# then the server's side of the conversation; commands are numbered qb-1, qb-2, ...
seed "$c/qmp/handshake" "\x00$greet\n{\"return\": {}, \"id\": \"qb-1\"}\n"
seed "$c/qmp/commands" "\x03$greet\n{\"return\": {}, \"id\": \"qb-1\"}\n{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": \"qb-2\"}\n$ev\n{\"return\": [], \"id\": \"qb-3\"}\n{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'drive0' not found\"}, \"id\": \"qb-4\"}\n{\"return\": {}, \"id\": \"qb-5\"}\n"
seed "$c/qmp/hmp" "\x19$greet\n{\"return\": {}, \"id\": \"qb-1\"}\n{\"return\": {}, \"id\": \"qb-2\"}\n{\"return\": \"drive0: disk.qcow2 (qcow2)\\\\r\\\\n\", \"id\": \"qb-3\"}\n"
seed "$c/qmp/events" "\x01$greet\n$ev\n{\"return\": {}, \"id\": \"qb-1\"}\n{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"status\": \"concluded\", \"id\": \"job0\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n{\"return\": {}, \"id\": \"qb-0\"}\n{\"return\": {}, \"id\": \"qb-2\"}\n$ev\n"
seed "$c/qmp/error-noid" "\x00$greet\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n"
seed "$c/qmp/no-return" "\x01$greet\n{\"return\": {}, \"id\": \"qb-1\"}\n{\"id\": \"qb-2\"}\n{\"return\": 5, \"id\": 2}\n"

# qga: mode byte (bit 0 freeze, 1 status, 2 thaw; ping always), then the agent's
# side: the sync reply carries id 1 after a 0xFF delimiter.
seed "$c/qga/ping" '\x00\xff{"return": 1}\n{"return": {}}\n'
seed "$c/qga/freeze-thaw" '\x07junk\xff{"return": 1}\n{"return": {}}\n{"return": 2}\n{"return": "frozen"}\n{"return": 2}\n'
seed "$c/qga/error" '\x03\xff{"return": 7}\n\xff{"return": 1}\n{"error": {"class": "CommandDisabled", "desc": "no"}}\n\xff{"return": 1}\n{"return": "thawed"}\n'
seed "$c/qga/resync" '\x01\xff{"return": 1}\n{"return": {}}\n{"return": 3}\n'

# Amplification payloads (megabyte-class heap from kilobytes of JSON).
python3 "$here/make-amp-seeds.py" "$c"

# qcow2 images: 512-byte clusters, 64 KiB virtual size, a few KB each.
img () { qemu-img create -q -f qcow2 -o "cluster_size=512,$1" "$2" 64K ${3:+-b "$3" -F qcow2}; }
io () { local f=$1 cmd; shift; local a=(); for cmd in "$@"; do a+=(-c "$cmd"); done; qemu-io -f qcow2 "${a[@]}" "$f" >/dev/null; }
img compat=0.10 "$tmp/v2.qcow2"
io "$tmp/v2.qcow2" "write -P 0x11 0 1k" "write -P 0x22 40k 512"
img compat=1.1 "$tmp/v3.qcow2"
io "$tmp/v3.qcow2" "write -P 0x33 512 1k" "write -z 4k 2k" "write -P 0x44 63k 1k"
img compat=1.1 "$tmp/comp.qcow2"
io "$tmp/comp.qcow2" "write -c -P 0x55 0 512" "write -c -P 0x66 32k 512" "write -P 0x77 1k 512"
img compat=1.1 "$tmp/empty.qcow2"
img compat=1.1 "$tmp/zero.qcow2"
io "$tmp/zero.qcow2" "write -z 0 64k"
# An overlay on v3 (zero and data clusters over data) and a smaller one.
img compat=1.1 "$tmp/top.qcow2" v3.qcow2
io "$tmp/top.qcow2" "write -P 0x88 512 512" "write -z 1k 512" "write -c -P 0x99 8k 512"
qemu-img create -q -f qcow2 -o cluster_size=1024,compat=1.1 -b v2.qcow2 -F qcow2 "$tmp/small.qcow2" 40K
io "$tmp/small.qcow2" "write -P 0xaa 2k 1k"
# 4 MiB: runs longer than one chunk (4096 clusters) of the chain reader's map.
qemu-img create -q -f qcow2 -o cluster_size=512,compat=1.1 "$tmp/big.qcow2" 4M
io "$tmp/big.qcow2" "write -P 0x12 0 1k" "write -z 1M 32k" "write -P 0x13 4095k 1k"

for f in v2 v3 comp empty zero big; do
  cp "$tmp/$f.qcow2" "$c/qcow2/$f"
  { printf '\x00'; cat "$tmp/$f.qcow2"; } > "$c/chain/$f"
done
# Two layers: mode 1, base length (big-endian 16 bits), base, top.
pair () {
  local n; n=$(stat -c %s "$tmp/$1.qcow2")
  { printf '\x01'; printf "\\x$(printf %02x $((n >> 8)))\\x$(printf %02x $((n & 255)))";
    cat "$tmp/$1.qcow2" "$tmp/$2.qcow2"; } > "$c/chain/$1+$2"
}
pair v3 top
pair v2 small
pair comp top
pair big v3
# Hostile tables made by tests/chain/craft_qcow2.py (512-byte clusters, a few
# KB each): every L1 entry naming one L2 table, L2 tables overlapping the L1
# or refcount table or a data cluster, shared data clusters, tables and data
# past the end; with valid and zero-striped ones to mutate from.
craft=$here/../chain/craft_qcow2.py
for k in valid zero-stripes shared-l2 overlap-l1 overlap-refcount overlap-data data-shared \
         data-past-eof l2-past-eof; do
  python3 "$craft" "$k" "$tmp/$k.qcow2" 9 64
  cp "$tmp/$k.qcow2" "$c/qcow2/$k"
  { printf '\x00'; cat "$tmp/$k.qcow2"; } > "$c/chain/$k"
done
pair valid shared-l2
pair shared-l2 valid
pair v3 overlap-data
# sums: mode byte (bit 0: the .sums file is written from the layer, then the
# rest XORed into it at the big-endian offset it starts with), layer length
# (big-endian 16 bits), the layer (512-byte clusters: data, zero, compressed).
mkdir -p "$c/sums"
qemu-img create -q -f qcow2 -o cluster_size=512,compat=1.1 "$tmp/s.qcow2" 64k
qemu-io -f qcow2 -c 'write -P 0x41 0 4k' -c 'write -z 8k 1k' -c 'write -c -P 0x42 16k 2k' \
  "$tmp/s.qcow2" >/dev/null
n=$(stat -c %s "$tmp/s.qcow2")
len16 () { printf "\\x$(printf %02x $((n >> 8)))\\x$(printf %02x $((n & 255)))"; }
{ printf '\x01'; len16; cat "$tmp/s.qcow2"; } > "$c/sums/fresh"
{ printf '\x01'; len16; cat "$tmp/s.qcow2"; printf '\x00\x00X'; } > "$c/sums/bad-magic"
{ printf '\x01'; len16; cat "$tmp/s.qcow2"; printf '\x00\x90\x01'; } > "$c/sums/entry-flip"
{ printf '\x01'; len16; cat "$tmp/s.qcow2"; printf '\x00\x20\xff\xff\xff\xff'; } > "$c/sums/huge-count"
{ printf '\x00'; len16; cat "$tmp/s.qcow2"; printf 'QBSUMS\r\n\x01\x00\x00\x00\x09'; } > "$c/sums/truncated"
ls -l "$c"/*

# parttab: small guest disks (partition tables, probes).
python3 "$here/make-parttab-seeds.py" "$c/parttab"
