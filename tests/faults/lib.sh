# qmpbackupfs fault tests: helpers shared by the scripts in this directory.
# Source after tests/lib/vm.sh and tests/fs/lib.sh.  Sets store=$T/store and
# mnt=$T/mnt (fault_init); every restore point taken with fault_backup is
# remembered with a capture of its disks and checked by fault_check_points.

# Common prerequisites and the temporary directory; sets store and mnt.
fault_init() {
  qb_need qemu-img qemu-system-x86_64 python3 cmp
  qb_need_fuse
  qb_tmpdir
  store=$T/store
  mnt=$T/mnt
  mkdir -p "$store" "$T/cap"
  : > "$T/cap/index"
}

# Start writing LINE to VM's control file in the background: sets WRITER;
# $T/writer.out gets "OK" or the errno name.
fault_start_writer() {
  rm -f "$T/writer.out"
  (exec python3 -c "$QB_FS_WRITER" "$mnt/$1/backup" "$2" > "$T/writer.out") &
  WRITER=$!
}

# Print the id of the first block job of VM (through the test monitor), or nothing.
fault_job_id() {
  python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(j[0]["device"] if j else "")' \
    "$(qb_qmp "$1" query-block-jobs)"
}

# Wait (bounded, 10 s) for a block job on VM; set JOB to its id.
fault_wait_job() {
  local i
  for ((i = 0; i < 200; i++)); do
    JOB=$(fault_job_id "$1")
    [ -n "$JOB" ] && return 0
    _qb_alive "$WRITER" || break
    sleep 0.05
  done
  qb_die "no backup job appeared on $1 (writer: $(cat "$T/writer.out" 2>/dev/null))"
}

# Let every job of VM go at full speed.
fault_unthrottle() {
  local ids id
  ids=$(python3 -c 'import json,sys; [print(j["device"]) for j in json.loads(sys.argv[1])]' \
    "$(qb_qmp "$1" query-block-jobs)")
  for id in $ids; do
    qb_qmp "$1" block-job-set-speed "{\"device\":\"$id\",\"speed\":0}" >/dev/null 2>&1 || true
  done
}

# Wait (bounded, 20 s) for process PID to end.
fault_wait_gone() {
  local i
  for ((i = 0; i < 400; i++)); do _qb_alive "$1" || return 0; sleep 0.05; done
  qb_die "process $1 did not end"
}

# Print the newest restore point name of VM/DISK (empty if none).
fault_newest() { qb_fs_points "$mnt/$1/$2/restore" | tail -n 1; }

# Remember capture FILE as the expected content of point POINT of VM/DISK.
fault_remember() {
  local vm=$1 disk=$2 point=$3 file=$4 keep
  keep=$T/cap/$vm-$disk-$point.raw
  mv "$file" "$keep"
  echo "$vm $disk $point $keep" >> "$T/cap/index"
}

# Back up VM at LEVEL through the mount after capturing all of its disks (jobs
# are let go at full speed when the mount throttles them); fail unless it
# succeeds and makes a new point on every disk; remember the captures.
fault_backup() {
  local vm=$1 level=$2 d r before after
  local -a disks
  mapfile -t disks < <(qb_vm_disks "$vm")
  for d in "${disks[@]}"; do qb_capture "$vm" "$d" "$T/cap/new-$d.raw"; done
  before=$(fault_newest "$vm" "${disks[0]}" 2>/dev/null || true)
  fault_start_writer "$vm" "$level\n"
  while _qb_alive "$WRITER"; do fault_unthrottle "$vm"; sleep 0.05; done
  wait "$WRITER" 2>/dev/null || true
  r=$(cat "$T/writer.out")
  [ "$r" = OK ] || qb_die "backup '$level' of $vm: $r: $(cat "$mnt/$vm/status")"
  for d in "${disks[@]}"; do
    after=$(fault_newest "$vm" "$d")
    [ -n "$after" ] && [ "$after" != "$before" ] || qb_die "backup '$level' of $vm made no point on $d"
    fault_remember "$vm" "$d" "$after" "$T/cap/new-$d.raw"
  done
}

# Fail unless every remembered restore point reads exactly as captured, the
# mount shows no temporary file and (unless FAULT_STORE_TMP_OK is set: a crash
# left some that the next backup removes) neither does the store.
fault_check_points() {
  local vm disk point file n=0 tmp
  while read -r vm disk point file; do
    [ -e "$mnt/$vm/$disk/restore/$point" ] || qb_die "restore point $vm/$disk/$point is gone"
    qb_cmp "$file" "$mnt/$vm/$disk/restore/$point" || qb_die "restore point $vm/$disk/$point is not exact"
    n=$((n + 1))
  done < "$T/cap/index"
  if [ -z "${FAULT_STORE_TMP_OK:-}" ]; then
    tmp=$(find "$store" -name '.tmp-*' 2>/dev/null)
    [ -z "$tmp" ] || qb_die "temporary files in the store: $tmp"
  fi
  tmp=$(find "$mnt" -name '.tmp-*' 2>/dev/null)
  [ -z "$tmp" ] || qb_die "temporary files visible in the mount: $tmp"
  qb_log "$n remembered restore points exact${1:+ ($1)}"
}

# Fail if VM's QEMU still has a block job or a product target node.
fault_assert_qemu_clean() {
  local jobs nodes
  jobs=$(qb_qmp "$1" query-block-jobs)
  [ "$jobs" = "[]" ] || qb_die "QEMU jobs left on $1 ($2): $jobs"
  nodes=$(qb_qmp "$1" query-named-block-nodes | grep -o '"node-name":"qmpbackup-[^"]*"' || true)
  [ -z "$nodes" ] || qb_die "target nodes left on $1 ($2): $nodes"
}

# Fail unless VM is running (query-status).
fault_assert_running() {
  qb_qmp "$1" query-status | grep -q '"running":true' || qb_die "VM $1 is not running: $(qb_qmp "$1" query-status)"
}

# Save VM's status JSON to $T/status.json and print the value of python expression EXPR on d.
fault_status() {
  cat "$mnt/$1/status" > "$T/status.json"
  qb_json "$T/status.json" "$2"
}

# Wait (bounded, 10 s: status caches QEMU's view for a few seconds) until python
# expression EXPR on VM's status JSON `d` is true; fail with the status if not.
fault_wait_status() {
  local i
  for ((i = 0; i < 100; i++)); do
    [ "$(fault_status "$1" "bool($2)")" = True ] && return 0
    sleep 0.1
  done
  qb_die "status of $1 never satisfied '$2': $(cat "$T/status.json")"
}
