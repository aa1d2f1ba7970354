#!/usr/bin/env bash
# Build the libFuzzer targets with clang straight from the project sources.
# Usage: tests/fuzz/build.sh OUTDIR [TARGET...]   (default: every target)
# Targets: jsonio qmp qga qcow2 chain control parttab ntfs sums.  A target is rebuilt only when one of its
# sources (or a header) is newer than its binary.  Exit 77 when clang or its
# libFuzzer runtime (Debian: clang, libclang-rt-dev) is missing.
# FUZZ_EXTRA_CFLAGS adds flags (use another OUTDIR), e.g. for line coverage:
#   FUZZ_EXTRA_CFLAGS="-fprofile-instr-generate -fcoverage-mapping" build.sh /tmp/cov chain
set -euo pipefail

src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: build.sh OUTDIR [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(jsonio qmp qga qcow2 chain control parttab ntfs sums)

CC=${FUZZ_CC:-clang}
if ! command -v "$CC" >/dev/null; then
  echo "fuzz: $CC not found (install clang and libclang-rt-dev)" >&2
  exit 77
fi
for pc in json-c libqcow; do
  pkg-config --exists "$pc" || { echo "fuzz: pkg-config $pc not found" >&2; exit 77; }
done
mkdir -p "$out"
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput (const char *d, unsigned long n) { (void) d; return (int) n & 0; }' \
  > "$probe/p.c"
if ! "$CC" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>"$probe/err"; then
  echo "fuzz: $CC cannot link -fsanitize=fuzzer (install libclang-rt-dev):" >&2
  head -3 "$probe/err" >&2
  exit 77
fi

cflags=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
        -fno-sanitize-recover=undefined -std=gnu11 -Wall -Wextra
        -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I"$src" $(pkg-config --cflags json-c libqcow))
# shellcheck disable=SC2206
cflags+=(${FUZZ_EXTRA_CFLAGS:-})
common=("$src/common/error.c" "$src/common/util.c")

for t in "${targets[@]}"; do
  extra=()
  case "$t" in
    jsonio) srcs=("$src/qmp/jsonio.c"); libs=(json-c) ;;
    qmp)    srcs=("$src/qmp/jsonio.c" "$src/qmp/qmp.c"); libs=(json-c) ;;
    qga)    srcs=("$src/qmp/jsonio.c" "$src/qmp/qga.c"); libs=(json-c)
            extra=(-Wl,--wrap=getrandom) ;;
    qcow2)  srcs=("$src/store/qcow2.c"); libs=() ;;
    chain)  srcs=("$src/store/qcow2.c" "$src/store/chain.c"); libs=(libqcow) ;;
    control) srcs=("$src/fs/control-parse.c"); libs=(json-c) ;;
    parttab) srcs=("$src/fs/parttab.c"); libs=(zlib) ;;
    ntfs)   srcs=("$src/fs/files-ntfs.c"); libs=(libntfs-3g) ;;
    sums)   srcs=("$src"/store/{store,records,open,scan,txn,target,rewrite,qcow2,chain,sums}.c); libs=(json-c libqcow libxxhash) ;;
    *) echo "fuzz: unknown target $t" >&2; exit 2 ;;
  esac
  all=("$src/tests/fuzz/fuzz_$t.c" "${srcs[@]}" "${common[@]}")
  bin="$out/fuzz_$t"
  if [ -x "$bin" ] && [ -z "$(find "${all[@]}" "$src"/common/*.h "$src"/qmp/*.h "$src"/engine/*.h "$src"/store/*.h "$src"/fs/*.h \
                               "$src/tests/fuzz/fuzz.h" "$src/tests/fuzz/fuzz-feed.h" "$0" -newer "$bin" 2>/dev/null)" ]; then
    continue
  fi
  echo "fuzz: building $bin"
  ldlibs=()
  [ ${#libs[@]} -gt 0 ] && read -ra ldlibs <<<"$(pkg-config --libs "${libs[@]}")"
  "$CC" "${cflags[@]}" "${all[@]}" -o "$bin.tmp.$$" "${ldlibs[@]}" \
    ${extra[@]+"${extra[@]}"} -lpthread
  mv -f "$bin.tmp.$$" "$bin"
done
