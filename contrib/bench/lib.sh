# qmpbackupfs benchmark helpers: timing, medians, figures and the final table,
# mounts of our daemon and of qemu-storage-daemon FUSE exports, test stores.
# Sourced by contrib/bench/run.sh after tests/lib/vm.sh (which gives $T and
# the EXIT cleanup); every mount and process started here is undone by
# bench_cleanup, registered with qb_on_exit.

BENCH_MOUNTS=()        # mount points / export files currently mounted by us
BENCH_PIDS=()          # daemons currently running (ours, qsd)

# Print a line on stdout and append it to $OUT (if set).
say() {
  printf '%s\n' "$*"
  if [ -n "${OUT:-}" ]; then printf '%s\n' "$*" >> "$OUT"; fi
}

# Print a progress note on stderr.
note() { printf '  .. %s\n' "$*" >&2; }

# Seconds (float) since the epoch, from bash's clock.
now() { echo "${EPOCHREALTIME/,/.}"; }

# Print B - A (floats) with millisecond precision.
tdiff() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }

# Evaluate awk expression EXPR (variables from NAME=VALUE args) and print it.
calc() {
  local expr=$1 args=()
  shift
  for a in "$@"; do args+=(-v "$a"); done
  awk "${args[@]}" "BEGIN { printf \"%.6g\", $expr }"
}

# Print the median of the numbers given.
median() {
  printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
    END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2];
          else printf "%.6g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# Run CMD... and print its wall time in seconds (its output goes to /dev/null);
# if CMD fails, print nothing, say so on stderr and return its status (a
# failed run is not a figure).
timeit() {
  local a b rc=0
  a=$(now)
  "$@" > /dev/null || rc=$?
  b=$(now)
  if ((rc)); then note "FAILED ($rc): $*"; return "$rc"; fi
  tdiff "$a" "$b"
}

# True if PATH is a mount point (directory or file) in this namespace.
is_mounted() {
  awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo
}

# Wait until PATH is mounted, polling; fail if process PID dies or 20 s pass.
wait_mounted() {
  local path=$1 pid=$2 i
  for ((i = 0; i < 10000; i++)); do
    is_mounted "$path" && return 0
    kill -0 "$pid" 2>/dev/null || { note "process $pid died before $path was mounted"; return 1; }
    sleep 0.002
  done
  note "$path was not mounted in time"
  return 1
}

# Forget PID / mount point M in the cleanup lists.
_forget_pid() { local p k=(); for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$1" ] || k+=("$p"); done; BENCH_PIDS=("${k[@]}"); }
_forget_mount() { local p k=(); for p in "${BENCH_MOUNTS[@]}"; do [ "$p" = "$1" ] || k+=("$p"); done; BENCH_MOUNTS=("${k[@]}"); }

# Stop process PID (TERM, then KILL after 5 s) and reap it.
stop_pid() {
  local pid=$1 i
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 500; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  _forget_pid "$pid"
}

# Unmount M (fusermount3, then a lazy umount) if it is mounted.
unmount() {
  if is_mounted "$1"; then
    fusermount3 -u "$1" 2>/dev/null || umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true
  fi
  _forget_mount "$1"
}

# Mount STORE on MNT with our daemon in the foreground; sets FS_PID and
# MOUNT_SECS (launch to mounted).  Extra args are passed on.
fs_mount() {
  local store=$1 mnt=$2 a
  shift 2
  mkdir -p "$mnt"
  a=$(now)
  "$QMPBACKUPFS" "$store" "$mnt" -f "$@" 2>> "$T/qmpbackupfs.log" &
  FS_PID=$!
  BENCH_PIDS+=("$FS_PID")
  BENCH_MOUNTS+=("$mnt")
  wait_mounted "$mnt" "$FS_PID"
  MOUNT_SECS=$(tdiff "$a" "$(now)")
}

# Unmount MNT and wait for daemon FS_PID to exit.
fs_umount() {
  unmount "$1"
  stop_pid "$FS_PID"
}

# Export the qcow2 chain whose top layer is TOP as raw file EXPFILE with
# qemu-storage-daemon (backing files from the images); sets QSD_PID.
qsd_start() {
  local top=$1 exp=$2
  : > "$exp"
  qemu-storage-daemon \
    --blockdev "driver=file,node-name=f0,filename=$top,read-only=on" \
    --blockdev "driver=qcow2,node-name=q0,file=f0,read-only=on" \
    --export "type=fuse,id=e0,node-name=q0,mountpoint=$exp" \
    >> "$T/qsd.log" 2>&1 &
  QSD_PID=$!
  BENCH_PIDS+=("$QSD_PID")
  BENCH_MOUNTS+=("$exp")
  wait_mounted "$exp" "$QSD_PID"
}

# Stop the qemu-storage-daemon QSD_PID serving EXPFILE.
qsd_stop() {
  stop_pid "$QSD_PID"
  unmount "$1"
}

# Cleanup (run at exit before $T is removed): unmount, stop daemons.
bench_cleanup() {
  local m p
  for m in "${BENCH_MOUNTS[@]}"; do unmount "$m"; done
  for p in "${BENCH_PIDS[@]}"; do stop_pid "$p"; done
}

# Read FILE whole into the page cache (no output).
warm() { cat "$@" > /dev/null; }

# Seconds to `cat` FILE to /dev/null.
cat_secs() { timeit cat "$1"; }

# ---- building stores without a VM ----

# Write into qcow2 IMG with qemu-io: each further arg is one command.
qio() {
  local img=$1 c args=()
  shift
  for c in "$@"; do args+=(-c "$c"); done
  qemu-io -f qcow2 "${args[@]}" "$img" > /dev/null
}

# Make a seed-style chain in DIR: FULL of SIZE bytes fully written (patterns
# by 64 MiB), then DEPTH-1 INCs (qcow2 v3, linked by backing name) that take
# turns over stripes of STRIPE bytes covering every other stripe.  Prints
# the top layer.  A FULL named FULL_SRC is hard-linked instead of written.
mk_chain() {
  local dir=$1 size=$2 depth=$3 stripe=$4 full_src=${5:-}
  local e=1700000000 prev cur i k nstripes cmds=()
  mkdir -p "$dir"
  prev="FULL-$e-drive0.qcow2"
  if [ -n "$full_src" ]; then
    ln "$full_src" "$dir/$prev"
  else
    qemu-img create -q -f qcow2 -o compat=1.1 "$dir/$prev" "$size"
    local chunk=$((64 << 20))
    ((chunk > size)) && chunk=$size
    for ((k = 0; k * chunk < size; k++)); do
      cmds+=("write -P $(( (k % 200) + 16 )) $((k * chunk)) $chunk")
    done
    qio "$dir/$prev" "${cmds[@]}"
  fi
  nstripes=$((size / stripe))
  for ((i = 1; i < depth; i++)); do
    cur="INC-$((e + i * 3600))-drive0.qcow2"
    (cd "$dir" && qemu-img create -q -f qcow2 -o compat=1.1 -b "$prev" -F qcow2 "$cur" "$size")
    cmds=()
    for ((k = 2 * (i - 1) + 1; k < nstripes; k += 2 * (depth - 1))); do
      cmds+=("write -P $(( (i % 250) + 1 )) $((k * stripe)) $stripe")
    done
    qio "$dir/$cur" "${cmds[@]}"
    prev=$cur
  done
  echo "$dir/$prev"
}

# The newest restore image under MNT/VM/DISK/restore (not latest.img).
restore_img() {
  local d=$1/$2/$3/restore f
  f=$(ls "$d" | grep -E 'Z(-[0-9]+)?\.img$' | sort | tail -n 1)
  [ -n "$f" ] || { note "no restore image in $d"; return 1; }
  echo "$d/$f"
}

# ---- figures ----

FIG_LABEL=() FIG_OURS=() FIG_PEER=() FIG_UNIT=() FIG_RATIO=() FIG_MET=() FIG_TARGET=()

# True if $1 is a plain number.
isnum() { [[ $1 =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]]; }

# Record a figure: LABEL OURS PEER UNIT BETTER(hi|lo|-) CHECK TARGET.
# Ratio is ours/peer for hi, peer/ours for lo (so > 1 is better for us).
# CHECK is an awk condition on o (ours), p (peer), r (ratio); "" = no target.
fig() {
  local label=$1 o=$2 p=$3 unit=$4 better=$5 check=$6 target=$7 r="-" met="-"
  if isnum "$o" && isnum "$p" && [ "$better" != - ]; then
    if [ "$better" = hi ]; then r=$(calc 'o / p' o="$o" p="$p"); else r=$(calc 'p / o' o="$o" p="$p"); fi
  fi
  if [ -n "$check" ]; then
    if [[ $check == *r* && $r == - ]] || [[ $check == *p* && ! $p =~ ^[0-9.eE+-]+$ ]]; then
      met="n/a"
    elif isnum "$o"; then
      if awk -v o="$o" -v p="$p" -v r="$r" "BEGIN { exit !($check) }"; then met="yes"; else met="NO"; fi
    else
      met="n/a"
    fi
    met="$met ($target)"
  fi
  FIG_LABEL+=("$label") FIG_OURS+=("$o") FIG_PEER+=("$p") FIG_UNIT+=("$unit")
  FIG_RATIO+=("$r") FIG_MET+=("$met") FIG_TARGET+=("$target")
  say "$(printf '%-44s ours %-10s peer %-10s %-6s ratio %-7s %s' "$label" "$o" "$p" "$unit" "$r" "$met")"
  # A script run by another one (run.sh's store section) also hands its
  # figures over as tab-separated records in $FIG_DUMP (see fig_import).
  if [ -n "${FIG_DUMP:-}" ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$o" "$p" "$unit" "$r" "$met" "$target" >> "$FIG_DUMP"
  fi
}

# Add the figures another bench script recorded in FILE (its FIG_DUMP) to
# this run's table, each label with a leading STRIP removed, then PREFIX put
# before it and SUFFIX after (e.g. the sizes of a --quick run); print them as
# fig does.  Fails if FILE holds no figure.
fig_import() {
  local file=$1 prefix=${2:-} suffix=${3:-} strip=${4:-} label o p unit r met target n=0
  [ -s "$file" ] || return 1
  while IFS=$'\t' read -r label o p unit r met target; do
    label=$prefix${label#"$strip"}$suffix
    FIG_LABEL+=("$label") FIG_OURS+=("$o") FIG_PEER+=("$p") FIG_UNIT+=("$unit")
    FIG_RATIO+=("$r") FIG_MET+=("$met") FIG_TARGET+=("$target")
    say "$(printf '%-44s ours %-10s peer %-10s %-6s ratio %-7s %s' "$label" "$o" "$p" "$unit" "$r" "$met")"
    n=$((n + 1))
  done < "$file"
  ((n > 0))
}

# A row that could not be measured: LABEL and the REASON in the ours column.
fig_skip() {
  FIG_LABEL+=("$1") FIG_OURS+=("not measured ($2)") FIG_PEER+=("-") FIG_UNIT+=("")
  FIG_RATIO+=("-") FIG_MET+=("-") FIG_TARGET+=("")
  say "$(printf '%-44s not measured: %s' "$1" "$2")"
}

# Round a number for the table (3 significant digits).
fmt() {
  if isnum "$1"; then
    awk -v v="$1" -v u="$2" 'BEGIN { printf (v >= 1000 ? "%.0f" : "%.3g"), v; if (u != "") printf " %s", u }'
  else
    printf '%s' "$1"
  fi
}

# Print the markdown table of every figure.
fig_table() {
  local i
  say ""
  say "| figure | ours | peer | ratio | target met? |"
  say "|---|---|---|---|---|"
  for i in "${!FIG_LABEL[@]}"; do
    say "| ${FIG_LABEL[$i]} | $(fmt "${FIG_OURS[$i]}" "${FIG_UNIT[$i]}") | $(fmt "${FIG_PEER[$i]}" "${FIG_UNIT[$i]}") | $(fmt "${FIG_RATIO[$i]}" x) | ${FIG_MET[$i]} |"
  done
}

# ---- the Python qmpbackup 0.67 as a peer ----

# Set PEER_CMD to the command that runs the peer's `qmpbackup` SCRIPT: a
# Python script (its first line names python) runs with /usr/bin/python3 and
# PYTHONPATH=PYPATH (Debian's python, not another one on PATH); anything else
# executable (a wrapper that sets its own paths) runs as it is.  Fails with
# the reason on stdout when it cannot run.
peer_cmd() {
  local script=$1 pypath=$2 first=
  PEER_CMD=()
  [ -r "$script" ] || { echo "$script missing"; return 1; }
  IFS= read -r first < "$script" || true
  if [[ $first == '#!'*python* ]]; then
    [ -x /usr/bin/python3 ] || { echo "/usr/bin/python3 missing"; return 1; }
    PEER_CMD=(env "PYTHONPATH=$pypath" /usr/bin/python3 "$script")
  elif [ -x "$script" ]; then
    PEER_CMD=("$script")
  else
    echo "$script is neither a Python script nor executable"
    return 1
  fi
}
