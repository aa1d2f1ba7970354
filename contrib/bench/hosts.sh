#!/usr/bin/env bash
# Benchmark (not a test): the store on a GlusterFS volume beside the local
# store, in one run.
#
#   sudo contrib/bench/hosts.sh [--data MiB] [--samples N] [--build DIR]
#
# Starts its own GlusterFS volume in user space (one glusterfsd on 127.0.0.1,
# two client mounts "A" and "B", as tests/hosts/lib.sh does), one paused VM
# (KVM or TCG, no guest OS) whose disk holds --data MiB (default 512), and
# prints a markdown table:
#   - full backup throughput (qmpbackup) into the local store and the volume;
#   - restore read throughput (cat of the point's image through a fresh
#     qmpbackupfs mount) from each;
#   - the time from a point committed through A (qmpbackup returning) until
#     a qmpbackupfs mounted on B lists it (median and max of --samples, 5);
#   - qmprebase sync throughput local -> plain folder and local -> volume.
# Everything it starts is stopped by pid, every mount unmounted, at exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
data=512 samples=5 build=$src/build
while [ $# -gt 0 ]; do
  case $1 in
    --data) data=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "hosts.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
export QB_BUILD_DIR=$build QB_SOURCE_DIR=$src
. "$src/tests/lib/vm.sh"
. "$src/tests/fs/lib.sh"
. "$src/tests/hosts/lib.sh"
qb_need qemu-img qemu-system-x86_64 python3
qb_need_fuse
qb_tmpdir
gl_need

# Seconds (float) since the epoch.
now() { echo "${EPOCHREALTIME/,/.}"; }
# MB/s for BYTES in SECONDS.
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1e6 / s }'; }
# Time CMD... in seconds (its output dropped).
timeit() { local a b; a=$(now); "$@" > /dev/null; b=$(now); awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b - a }'; }
note() { printf '  .. %s\n' "$*" >&2; }

gl_brick_start b1
gl_mount "$T/A" b1
gl_mount "$T/B" b1
mkdir -m 0700 "$T/local" "$T/A/store"
size=$(( data * 2 ))M
qb_vm_start vm1 "drive0:qcow2:$size"
note "writing $data MiB into the VM's disk"
qb_guest_write vm1 drive0 "write -P 0x5a 0 ${data}M"
bytes=$(( data * 1024 * 1024 ))

declare -A fig
for where in local gluster; do
  st=$T/local
  [ "$where" = gluster ] && st=$T/A/store
  note "full backup into the $where store"
  t=$(timeit "$QMPBACKUP" --socket "$T/sockets/vm1.qmp" backup --level full --target "$st/vm1")
  fig[backup_$where]=$(rate "$bytes" "$t")
  qb_fs_mount "$st" "$T/mnt-$where"
  img=$(readlink "$T/mnt-$where/vm1/drive0/restore/latest.img")
  vsize=$(stat -c %s "$T/mnt-$where/vm1/drive0/restore/$img")
  note "restore read from the $where store"
  t=$(timeit cat "$T/mnt-$where/vm1/drive0/restore/$img")
  fig[restore_$where]=$(rate "$vsize" "$t")
  qb_fs_unmount "$T/mnt-$where"
done

note "visibility: points committed through A, listed by qmpbackupfs on B"
qb_fs_mount "$T/B/store" "$T/mntB"
ls "$T/mntB/vm1/drive0/restore" > /dev/null
vis=()
for ((i = 0; i < samples; i++)); do
  qb_guest_write vm1 drive0 "write -P $((i + 1)) $((i * 4))M 1M"
  "$QMPBACKUP" --socket "$T/sockets/vm1.qmp" backup --level inc --target "$T/A/store/vm1" > /dev/null
  t0=$(gl_now_ms)
  id=$(ls "$T/A/store/vm1/.points" | sort | tail -n 1)
  id=${id%.json}
  p=$(store_disp=$id python3 -c 'import os; i=os.environ["store_disp"]; s=i[:15]; print("%s-%s-%sT%s:%s:%sZ%s.img" % (s[0:4], s[4:6], s[6:8], s[9:11], s[11:13], s[13:15], i[16:]))')
  ms=$(gl_wait_listed "$T/mntB/vm1/drive0/restore" "$p" "$t0" 60) || { echo "point $p never listed on B" >&2; exit 1; }
  vis+=("$ms")
done
qb_fs_unmount "$T/mntB"
vis_sorted=$(printf '%s\n' "${vis[@]}" | sort -n)
vis_med=$(echo "$vis_sorted" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
vis_max=$(echo "$vis_sorted" | tail -n 1)

for where in plain gluster; do
  dst=$T/copy
  [ "$where" = gluster ] && dst=$T/A/store2
  note "qmprebase sync local -> $where"
  t=$(timeit "$QMPREBASE" sync --from "$T/local" --to "$dst")
  b=$(du -sb --apparent-size "$T/local/vm1" | cut -f1)
  fig[sync_$where]=$(rate "$b" "$t")
done

cat <<EOF

| figure | local store | GlusterFS store |
|---|---|---|
| full backup, $data MiB of data (qmpbackup) | ${fig[backup_local]} MB/s | ${fig[backup_gluster]} MB/s |
| restore read, cat of the point's $((vsize >> 20)) MiB image holding $data MiB (fresh mount) | ${fig[restore_local]} MB/s | ${fig[restore_gluster]} MB/s |
| point committed on A until listed on B ($samples samples) | - | median ${vis_med} ms, max ${vis_max} ms |
| qmprebase sync of the local store (every point), to a plain folder / to the volume | ${fig[sync_plain]} MB/s | ${fig[sync_gluster]} MB/s |

GlusterFS: one brick (glusterfsd from a volfile) on 127.0.0.1, FUSE clients
with default attribute caching (1 s); $(nproc) CPUs; QEMU $(qemu-system-x86_64 --version | head -n 1 | awk '{ print $4 }').
EOF
