#!/usr/bin/env bash
# Writers trigger a backup of one VM at the same instant: exactly one backup
# runs, every other writer gets EBUSY (three rounds with two writers that
# opened the file before, eight with four writers that open it at once).  Then 1,000 control
# writes mixing random bytes, random words and valid lines, as fast as they
# come: invalid ones are EINVAL and change nothing, each accepted one made
# exactly one point, every point is exact, the daemon still serves and the
# next auto works.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
. "$QB_SOURCE_DIR/tests/faults/lib.sh"
fault_init

qb_vm_start vm1 drive0:qcow2:8M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x51 0 4M"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets,speed=256k"
C=$mnt/vm1/backup

# Processes released by one barrier each write LINE (MODE open-first: two, both
# have the file open before the barrier; open-then-write: four, each opens
# after it, as shells running `echo LINE > backup` at once); prints the
# results sorted; each result is also appended to $T/answers as it comes.
race() {
  python3 - "$C" "$1" "$T/answers" "$2" <<'PY'
import errno, multiprocessing as mp, os, sys, time
def w(path, line, bar, q, open_first):
    if open_first:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    bar.wait()
    if not open_first:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, line.encode()); r = "OK"
    except OSError as e:
        r = errno.errorcode[e.errno]
    finally:
        os.close(fd)
    with open(sys.argv[3], "a") as f:
        f.write("%s %.3f\n" % (r, time.time()))
    q.put(r)
nw = 2 if sys.argv[4] == "open-first" else 4
bar = mp.Barrier(nw, action=lambda: open(sys.argv[3].replace("answers", "released"), "w").write("%.3f" % time.time())); q = mp.Queue()
ps = [mp.Process(target=w, args=(sys.argv[1], sys.argv[2] + "\n", bar, q, sys.argv[4] == "open-first")) for _ in range(nw)]
for p in ps: p.start()
r = sorted(q.get(timeout=120) for _ in range(nw))
for p in ps: p.join()
print(" ".join(r))
PY
}

for round in full:open-first inc:open-first auto:open-first \
             inc:open-then-write auto:open-then-write inc:open-then-write auto:open-then-write \
             inc:open-then-write auto:open-then-write inc:open-then-write auto:open-then-write; do
  level=${round%%:*} mode=${round#*:}
  nw=2; [ "$mode" = open-first ] || nw=4
  qb_guest_write vm1 drive0 "write -P 0x5$((RANDOM % 10)) 0 4M"   # 16 s at 256 KiB/s
  [ "$level" != full ] || qb_guest_write vm1 drive0 "write -z 4M 4M"   # a full copies all 8M
  qb_capture vm1 drive0 "$T/cap/new.raw"
  n=$(ls "$mnt/vm1/drive0/restore" 2>/dev/null | grep -vc '^latest.img$' || true)
  rm -f "$T/answers"
  race "$level" "$mode" > "$T/race.out" &
  racer=$!
  # the job is throttled (16 s): let it go once every loser has its answer
  # (at most 5 s: a writer queued behind the running backup hears nothing)
  for ((i = 0; i < 100; i++)); do
    _qb_alive "$racer" || break
    [ -s "$T/answers" ] && [ "$(wc -l < "$T/answers")" -ge $((nw - 1)) ] && break
    sleep 0.05
  done
  while _qb_alive "$racer"; do fault_unthrottle vm1; sleep 0.05; done
  wait "$racer" || qb_die "race writer failed"
  want="EBUSY OK"; [ "$mode" = open-first ] || want="EBUSY EBUSY EBUSY OK"
  # (regression: concurrent lookups of the control file could get the same
  # inode of its pool; the kernel then queued the second write behind the
  # running backup, which afterwards ran a backup of its own, not EBUSY)
  [ "$(cat "$T/race.out")" = "$want" ] || qb_die "$level writers at once ($mode): $(cat "$T/race.out") (answers: $(cat "$T/answers" | tr '\n' ' ') released $(cat "$T/released"); points: $(qb_fs_points "$mnt/vm1/drive0/restore" | tr '\n' ' '))"
  [ "$(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l)" = $((n + 1)) ] || qb_die "two $level writers made $(( $(qb_fs_points "$mnt/vm1/drive0/restore" | wc -l) - n )) points"
  fault_remember vm1 drive0 "$(fault_newest vm1 drive0)" "$T/cap/new.raw"
done
fault_check_points "after the races"

# 1,000 writes of mixed input; the disk does not change meanwhile, so every new
# point must equal one capture.
qb_capture vm1 drive0 "$T/now.raw"
qb_fs_points "$mnt/vm1/drive0/restore" > "$T/before.list"
fusermount3 -u "$mnt"
fault_wait_gone "$FS_PID"
qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
timeout 120 python3 - "$C" > "$T/fuzz.out" <<'PY'
import errno, os, random, sys, time
random.seed(20261126)
valid = ["full", "inc", "auto", "copy"]
words = valid + ["quiesce", "noquiesce", "FULL", "Inc", "backup", "full,", "-", "", "\t",
                 "incc", "auto\x00", "0", "copy copy", "quiesce noquiesce", "\xff\xfe"]
counts = {}
t0 = time.time()
for i in range(1000):
    k = random.random()
    if k < 0.02:
        line = random.choice(valid) + random.choice(["\n", "", " noquiesce\n"])
        kind = "valid"
    elif k < 0.5:
        line = " ".join(random.choice(words) for _ in range(random.randint(1, 4))) + random.choice(["\n", "", "\n\n", "\r\n"])
        kind = "words"
    else:
        line = bytes(random.getrandbits(8) for _ in range(random.randint(1, 80))).decode("latin-1")
        kind = "bytes"
    data = line.encode("latin-1")
    try:
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, data); r = "OK"
        finally:
            os.close(fd)
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    counts[(kind, r)] = counts.get((kind, r), 0) + 1
    print(kind, r, repr(data))
print("SUMMARY", sorted(counts.items()), "seconds %.1f" % (time.time() - t0), file=sys.stderr)
PY
qb_log "$(grep -c . "$T/fuzz.out") writes: $(awk '{ print $1, $2 }' "$T/fuzz.out" | sort | uniq -c | tr '\n' ';')"
qb_log "accepted: $(awk '$2 == "OK" { $2 = ""; print }' "$T/fuzz.out" | sort | uniq -c | tr '\n' ';')"
[ "$(wc -l < "$T/fuzz.out")" = 1000 ] || qb_die "the fuzz run did not finish"
_qb_alive "$FS_PID" || qb_die "qmpbackupfs died under the fuzz run"
# an explicit quiesce with no agent fails (EIO) and makes nothing
bad=$(awk '$2 != "OK" && $2 != "EINVAL" && !($2 == "EIO" && / quiesce|.quiesce /)' "$T/fuzz.out" | head -5)
[ -z "$bad" ] || qb_die "unexpected results: $bad"
bad=$(awk '$1 == "valid" && $2 != "OK"' "$T/fuzz.out" | head -5)
[ -z "$bad" ] || qb_die "a valid line was refused: $bad"
# (an empty write never reaches the file system: OK, and nothing happens)
ok=$(awk '$2 == "OK" && $3 != "b'"''"'"' "$T/fuzz.out" | wc -l)
rej=$(awk '$2 == "EINVAL"' "$T/fuzz.out" | wc -l)
[ "$rej" -gt 900 ] || qb_die "only $rej of 1000 rejected"
qb_fs_points "$mnt/vm1/drive0/restore" > "$T/after.list"
new=$(comm -13 "$T/before.list" "$T/after.list")
[ "$(echo "$new" | grep -c .)" = "$ok" ] || qb_die "$ok accepted writes but $(echo "$new" | grep -c .) new points: $new"
[ "$(comm -23 "$T/before.list" "$T/after.list")" = "" ] || qb_die "points vanished"
for p in $new; do qb_cmp "$T/now.raw" "$mnt/vm1/drive0/restore/$p" || qb_die "point $p"; done
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$mnt/vm1/status" || qb_die "status is not JSON"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$mnt/.status" || qb_die ".status is not JSON"
fault_check_points "after the fuzz run"
qb_guest_write vm1 drive0 "write -P 0x5f 5M 1M"
fault_backup vm1 auto
fault_check_points "after the next auto"
fault_assert_qemu_clean vm1 "at the end"
fault_assert_running vm1
echo "control-race: ok"
