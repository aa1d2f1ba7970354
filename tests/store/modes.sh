#!/usr/bin/env bash
# The store holds every VM's disks: after real backups (full, inc, monthly
# full and inc, copy) taken with a permissive umask, and after qmprebase
# rebase and merge, every file of the store is 0600 and every folder 0700,
# and a raw image written by qmprebase merge is 0600.
set -euo pipefail
. "$QB_SOURCE_DIR/tests/lib/vm.sh"
. "$QB_SOURCE_DIR/tests/lib/cli.sh"
qb_need qemu-img qemu-system-x86_64 stdbuf "$QMPCMD"
qb_need_cli
qb_tmpdir
umask 022

qb_vm_start vm1 drive0:qcow2:16M drive1:raw:8M
qb_qmp vm1 cont >/dev/null
qb_guest_write vm1 drive0 "write -P 0x11 0 1M"
qb_backup_expect 0 vm1 full
qb_guest_write vm1 drive0 "write -P 0x22 2M 1M"
qb_backup_expect 0 vm1 inc
qb_backup_expect 0 vm1 full --monthly
qb_guest_write vm1 drive1 "write -P 0x33 0 64k"
qb_backup_expect 0 vm1 inc --monthly
qb_backup_expect 0 vm1 copy

# check_modes: every file 0600, every folder 0700 under the VM's folder.
check_modes() {
  local what=$1 bad
  bad=$(find "$T/store/vm1" \( -type f ! -perm 0600 \) -o \( -type d ! -perm 0700 \) \
          -printf '%m %p\n')
  [ -z "$bad" ] || qb_die "$what: files not 0600 or folders not 0700:
$bad"
  [ "$(stat -c %a "$T/store")" = 700 ] || qb_die "$what: the store root is $(stat -c %a "$T/store")"
  echo "ok: $what: $(find "$T/store/vm1" -type f | wc -l) files 0600, $(find "$T/store/vm1" -type d | wc -l) folders 0700"
}
check_modes "after full, inc, monthly full and inc, copy"
[ -f "$T/store/vm1/.lock" ] || qb_die "no lock file"
ls "$T/store/vm1/.points/"*.json >/dev/null || qb_die "no records"
find "$T/store/vm1" -maxdepth 1 -type d -name '20[0-9][0-9]-[0-9][0-9]' | grep -q . \
  || qb_die "no month folder"

inc=$(qb_layers "$T/store/vm1/drive0" | grep '^INC-' | tail -n 1)
[ -n "$inc" ] || qb_die "no INC in drive0: $(qb_layers "$T/store/vm1/drive0" | tr '\n' ' ')"
id=$(qb_layer_id "$inc")
"$QMPREBASE" rebase --dir "$T/store/vm1/drive0" --until "$id" >/dev/null
check_modes "after qmprebase rebase"
"$QMPREBASE" merge --dir "$T/store/vm1/drive0" --targetfile "$T/merged.raw" --until "$id" >/dev/null
[ "$(stat -c %a "$T/merged.raw")" = 600 ] || qb_die "raw merge output is $(stat -c %a "$T/merged.raw")"
check_modes "after qmprebase merge"
echo "ok: raw merge output 0600"
echo "modes: ok"
