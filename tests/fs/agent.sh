#!/usr/bin/env bash
# Quiesce through the mount when NAME.qga sits beside NAME.qmp, against fake
# guest agents (tests/guest/fakeqga.py), and after EVERY backup the guest's
# freeze state is checked: a missing thaw is a failure here, even where no
# real guest can be built.
#  vm1: an agent that never answers (as when the guest has no qemu-ga
#       running).  An explicit "full quiesce" fails with EIO and status says
#       why; a default backup falls back to crash-consistent and says so in
#       status and in the restore point's record; "noquiesce" does not try;
#       no freeze is ever sent to an agent that did not answer the handshake.
#  vm2: a working agent.  Default and explicit quiesce freeze one filesystem
#       (the record says quiesced, 1 filesystem) and the agent reports the
#       guest thawed afterwards; "noquiesce" sends no freeze; restores exact.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/fs/lib.sh"
QGASTATUS=${QGASTATUS:-$QB_BUILD_DIR/tests/guest/qgastatus}
. "$QB_SOURCE_DIR/tests/guest/fakeqga.sh"
qb_need qemu-img qemu-system-x86_64 python3 cmp "$QGASTATUS"
qb_need_fuse
qb_tmpdir

store=$T/store
mnt=$T/mnt
mkdir -p "$store"
qb_vm_start vm1 drive0:qcow2:8M
qb_vm_start vm2 drive0:qcow2:8M

# vm2's agent: freezes one filesystem, answers everything.
fake_start "$T/sockets/vm2.qga"
GOOD_LOG=$FAKE_LOG
FAKE_PID=            # keep it running: fake_start stops the previous fake
# vm1's agent: reads, never answers.
fake_start "$T/sockets/vm1.qga" --mute
MUTE_LOG=$FAKE_LOG

# Fail unless the silent agent never got a freeze (it never answered the
# handshake, so nothing can be frozen).  WHAT names the backup.
mute_not_frozen() {
  grep -q 'recv guest-fsfreeze-freeze' "$MUTE_LOG" \
    && qb_die "$1: a freeze was sent to an agent that never answered the handshake"
  return 0
}

# Fail unless vm2's agent ran a thaw after its last freeze and says thawed.
good_thawed() {
  FAKE_LOG=$GOOD_LOG FAKE_SOCK=$T/sockets/vm2.qga fake_assert_thawed "$1"
}

qb_fs_mount "$store" "$mnt" -o "sockets=$T/sockets"
C=$mnt/vm1/backup
cat "$mnt/vm1/status" > "$T/status.json"
[ "$(qb_json "$T/status.json" 'd["agent"]["present"]')" = True ] || qb_die "agent not seen: $(cat "$T/status.json")"

r=$(qb_fs_control "$C" "full quiesce\n")
[ "$r" = EIO ] || qb_die "explicit quiesce with a silent agent: $r"
mute_not_frozen "explicit quiesce, silent agent"
cat "$mnt/vm1/status" > "$T/status.json"
qb_json "$T/status.json" 'd["last"]["error"]' | grep -qi -e agent -e quiesc -e freeze \
  || qb_die "quiesce failure not explained: $(cat "$T/status.json")"
[ -z "$(ls "$mnt/vm1" | grep -v -e backup -e status -e points)" ] || qb_die "a failed quiesce made a point"
[ -z "$(ls "$mnt/vm1/points")" ] || qb_die "a failed quiesce made a point: points/ lists $(ls "$mnt/vm1/points")"

qb_guest_write vm1 drive0 "write -P 0x42 0 1M"
qb_capture vm1 drive0 "$T/d0.raw"
r=$(qb_fs_control "$C" "full\n")
[ "$r" = OK ] || qb_die "default quiesce did not fall back: $r $(cat "$mnt/vm1/status")"
mute_not_frozen "default quiesce, silent agent"
cat "$mnt/vm1/status" > "$T/status.json"
[ -n "$(qb_json "$T/status.json" 'd["last"].get("quiesce_note", "")')" ] \
  || qb_die "fallback not explained: $(cat "$T/status.json")"
[ "$(qb_json "$T/status.json" 'd["latest_record"]["quiesced"]')" = False ] \
  || qb_die "record says quiesced: $(cat "$T/status.json")"
qb_cmp "$T/d0.raw" "$mnt/vm1/drive0/restore/latest.img"

r=$(qb_fs_control "$C" "inc noquiesce\n")
[ "$r" = OK ] || qb_die "noquiesce: $r"
mute_not_frozen "noquiesce, silent agent"
cat "$mnt/vm1/status" > "$T/status.json"
[ -z "$(qb_json "$T/status.json" 'd["last"].get("quiesce_note", "")')" ] \
  || qb_die "noquiesce tried the agent: $(cat "$T/status.json")"

# vm2: a working agent, thawed after every backup.
C=$mnt/vm2/backup
n=0
for how in touch "inc quiesce" "full" "inc noquiesce" "auto quiesce"; do
  qb_guest_write vm2 drive0 "write -P 0x5$n ${n}M 1M"
  qb_capture vm2 drive0 "$T/d2.raw"
  freezes=$(grep -c 'recv guest-fsfreeze-freeze' "$GOOD_LOG" || true)
  if [ "$how" = touch ]; then
    touch "$C" || qb_die "vm2: touch failed: $(cat "$mnt/vm2/status")"
  else
    r=$(qb_fs_control "$C" "$how\n")
    [ "$r" = OK ] || qb_die "vm2: '$how': $r: $(cat "$mnt/vm2/status")"
  fi
  good_thawed "vm2 '$how'"
  cat "$mnt/vm2/status" > "$T/status.json"
  now=$(grep -c 'recv guest-fsfreeze-freeze' "$GOOD_LOG" || true)
  if [ "$how" = "inc noquiesce" ]; then
    [ "$now" = "$freezes" ] || qb_die "vm2: noquiesce sent a freeze"
    [ "$(qb_json "$T/status.json" 'd["latest_record"]["quiesced"]')" = False ] \
      || qb_die "vm2: noquiesce recorded as quiesced: $(cat "$T/status.json")"
  else
    [ "$now" = $((freezes + 1)) ] || qb_die "vm2: '$how' sent $((now - freezes)) freezes, want 1"
    [ "$(qb_json "$T/status.json" 'd["latest_record"]["quiesced"]')" = True ] \
      || qb_die "vm2: '$how' not recorded as quiesced: $(cat "$T/status.json")"
    rec=$(ls "$store/vm2/.points/"*.json | LC_ALL=C sort | tail -n 1)
    [ "$(qb_json "$rec" 'd["quiesced_filesystems"]')" = 1 ] \
      || qb_die "vm2: '$how': record does not count 1 frozen filesystem: $(cat "$rec")"
  fi
  # the point folder's xattr says the same as the record
  want=yes; [ "$how" = "inc noquiesce" ] && want=no
  q=$(python3 -c 'import os,sys; print(os.getxattr(sys.argv[1], "user.qmpbackup.quiesced").decode())' \
    "$mnt/vm2/points/latest")
  [ "$q" = $want ] || qb_die "vm2: '$how': user.qmpbackup.quiesced is $q, want $want"
  qb_cmp "$T/d2.raw" "$mnt/vm2/drive0/restore/latest.img"
  n=$((n + 1))
done
echo "agent: ok"
