# Shared helpers for the chain reader tests (sourced by chain-*.sh).
# Usage: . lib.sh; the test's first argument is the chaincat program.
set -eu

CHAINCAT=${1:?usage: $0 CHAINCAT}
for tool in qemu-img qemu-io cmp jq awk; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIP: $tool is not installed"
    exit 77
  fi
done
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
nchecks=0

fail () { echo "FAIL: $*" >&2; exit 1; }

# mk FILE SIZE [OPTIONS]: a new standalone qcow2 image.
mk () {
  f=$1 size=$2; shift 2
  qemu-img create -q -f qcow2 "$@" "$T/$f" "$size"
}

# io FILE CMD...: run qemu-io commands on a layer.
io () {
  f=$1; shift
  for c in "$@"; do
    set -- "$@" -c "$c"
    shift
  done
  qemu-io -f qcow2 "$@" "$T/$f" >/dev/null || fail "qemu-io $* on $f"
}

# reference NAME LAYER...: $T/NAME.raw, what QEMU reads from the chain.  The
# layers are copied and linked with `qemu-img rebase -u` (the layers
# themselves may be standalone, as the store keeps them).
reference () {
  name=$1; shift
  prev=""
  i=0
  mkdir -p "$T/ref-$name"
  for f in "$@"; do
    c="$T/ref-$name/$i.qcow2"
    cp --sparse=always "$T/$f" "$c"
    if [ -n "$prev" ]; then
      qemu-img rebase -q -u -f qcow2 -b "$prev" -F qcow2 "$c"
    else
      qemu-img rebase -q -u -f qcow2 -b "" "$c"
    fi
    prev=$c
    i=$((i + 1))
  done
  qemu-img convert -O raw "$prev" "$T/$name.raw"
  qemu-img map --output=json "$prev" > "$T/$name.qmap"
}

# layers LAYER...: the full paths of the layers.
layers () {
  for f in "$@"; do printf '%s\n' "$T/$f"; done
}

# merge_map: merge consecutive "OFF LEN kind" lines of one kind.
merge_map () {
  awk '{ if (n && $3 == k) { len += $2 } else { if (n) print off, len, k; off = $1; len = $2; k = $3; n = 1 } }
       END { if (n) print off, len, k }'
}

# check NAME LAYER...: chaincat's bytes (pread, extents, threads) and map
# equal QEMU's for the chain, and --verify passes.
check () {
  name=$1; shift
  reference "$name" "$@"
  set -- $(layers "$@")
  "$CHAINCAT" "$@" > "$T/$name.out" || fail "$name: chaincat failed"
  cmp "$T/$name.out" "$T/$name.raw" || fail "$name: chaincat bytes differ from qemu-img convert"
  "$CHAINCAT" --extents "$@" | cmp - "$T/$name.raw" || fail "$name: --extents bytes differ"
  "$CHAINCAT" --threads 3 "$@" > "$T/$name.thr" || fail "$name: --threads failed"
  cmp "$T/$name.thr" "$T/$name.raw" || fail "$name: --threads bytes differ"
  "$CHAINCAT" --verify "$T/$name.raw" "$@" >/dev/null || fail "$name: --verify failed"
  check_map "$name" "$@"
  rm -f "$T/$name.out" "$T/$name.thr"
  echo "ok: $name"
}

# check_map NAME PATH...: chaincat --map equals qemu-img map's data/hole runs,
# and chain_allocated_bytes equals the data qemu-img map reports.
check_map () {
  name=$1; shift
  jq -r '.[] | "\(.start) \(.length) \(if .data then "data" else "hole" end)"' \
    "$T/$name.qmap" | merge_map > "$T/$name.qmap.txt"
  "$CHAINCAT" --map "$@" | merge_map > "$T/$name.map.txt" || fail "$name: --map failed"
  cmp -s "$T/$name.map.txt" "$T/$name.qmap.txt" || {
    diff "$T/$name.map.txt" "$T/$name.qmap.txt" | head -20 >&2
    fail "$name: --map differs from qemu-img map"
  }
  want=$(jq '[.[] | select(.data) | .length] | add // 0' "$T/$name.qmap")
  got=$("$CHAINCAT" --stats "$@" | awk '$1 == "allocated" { print $2 }')
  [ "$got" = "$want" ] || fail "$name: allocated bytes $got, qemu-img map says $want"
}
