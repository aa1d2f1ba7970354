/* qmpbackupfs — the control file <vm>/backup: parse what is written, run the
 * backup in the worker thread serving the request, answer when it is done. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/util.h"
#include "fs/fs.h"
#include "fs/control-parse.h"

/* Record that a request to VM was refused before anything started. */
static void
control_reject (fs_vm *vm, const char *why)
{
  pthread_mutex_lock (&vm->lock);
  snprintf (vm->last_rejected, sizeof vm->last_rejected, "%s", why);
  vm->last_rejected_us = qb_now_us ();
  pthread_mutex_unlock (&vm->lock);
}

/* Engine progress callback: publish into the VM's state. */
static void
control_progress (void *opaque, const backup_progress *p)
{
  fs_vm *vm = opaque;
  pthread_mutex_lock (&vm->lock);
  vm->progress = *p;
  snprintf (vm->phase, sizeof vm->phase, "%s", p->phase ? p->phase : "");
  vm->progress.phase = NULL;
  vm->run_level = p->level;
  pthread_mutex_unlock (&vm->lock);
}

/* FUSE interrupt (the writer got a signal): cancel the VM's backup. */
static void
control_interrupt (fuse_req_t req, void *data)
{
  (void) req;
  fs_vm *vm = data;
  atomic_store (&vm->cancel, 1);
}

/* Log the end of one backup of VM asked at LEVEL: "event=end" with the point,
 * bytes stored and seconds when R is 0, else "event=failed" or
 * "event=canceled" (CODE) with the reason ERR. */
static void
control_log_result (const fs_vm *vm, backup_level level, int r, int code,
                    const backup_result *res, double secs, const char *err)
{
  if (r == 0)
    fs_log ("event=end vm=%s level=%s point=%s bytes=%llu seconds=%.1f%s%s%s", vm->name,
            backup_level_name (res->level), res->id, (unsigned long long) res->bytes_stored,
            secs, res->reason[0] ? " reason=\"auto took a full: " : "", res->reason,
            res->reason[0] ? "\"" : "");
  else
    fs_log ("event=%s vm=%s level=%s bytes=0 seconds=%.1f reason=\"%s\"",
            code == QB_ECANCELED ? "canceled" : "failed", vm->name, backup_level_name (level),
            secs, err);
}

/* Start the notification for the end of one backup of VM (arguments as
 * control_log_result); never waits for it. */
static void
control_notify (fs_vm *vm, backup_level level, int r, int code,
                const backup_result *res, double secs, const char *err)
{
  if (r == 0) {
    char disp[64] = "";
    if (store_id_display (res->id, store_get_names (fs_cfg.st), disp, sizeof disp) == -1)
      snprintf (disp, sizeof disp, "%s", res->id);
    notify_backup_end (vm, backup_level_name (res->level), disp, "ok", res->reason,
                       res->bytes_stored, secs);
  }
  else
    notify_backup_end (vm, backup_level_name (level), "",
                       code == QB_ECANCELED ? "canceled" : "failed", err, 0, secs);
}

/* Run one backup of VM at LEVEL; 0 or -errno.  Blocks until it finished. */
static int
control_run (fuse_req_t req, fs_vm *vm, backup_level level, quiesce_mode q)
{
  pthread_mutex_lock (&vm->lock);
  if (vm->state == VM_RUNNING) {
    pthread_mutex_unlock (&vm->lock);
    control_reject (vm, "refused a backup: one is already running for this VM");
    return -EBUSY;
  }
  if (atomic_load (&fs_terminating)) {
    pthread_mutex_unlock (&vm->lock);
    control_reject (vm, "refused a backup: the file system is shutting down");
    return -ESHUTDOWN;
  }
  char *qmp = qb_strdup (vm->qmp_path);
  char *qga = qb_strdup (vm->qga_path);
  vm->state = VM_RUNNING;
  atomic_store (&vm->cancel, 0);
  vm->run_level = level;
  memset (&vm->progress, 0, sizeof vm->progress);
  snprintf (vm->phase, sizeof vm->phase, "starting");
  int64_t t0 = qb_now_us ();
  vm->run_start_us = t0;
  pthread_mutex_unlock (&vm->lock);
  fs_log ("event=start vm=%s level=%s%s", vm->name, backup_level_name (level),
          q == QUIESCE_ON ? " quiesce=yes" : q == QUIESCE_OFF ? " quiesce=no" : "");

  backup_result res;
  memset (&res, 0, sizeof res);
  int r, code;
  char err[1024] = "";
  if (!qmp) {
    r = qb_error_set (QB_EHOSTDOWN, "VM %s has no QMP socket (restore only): "
                      "start it with -qmp unix:%s/%s.qmp,server=on,wait=off or mount with -o vm=",
                      vm->name, fs_cfg.sockets_dir ? fs_cfg.sockets_dir : "DIR", vm->name);
  }
  else {
    fuse_req_interrupt_func (req, control_interrupt, vm);
    backup_opts o;
    memset (&o, 0, sizeof o);
    o.level = level;
    o.quiesce = q;
    o.monthly = fs_cfg.monthly;
    o.compress = fs_cfg.compress;
    o.speed = fs_cfg.speed;
    o.fleece = fs_cfg.fleece;
    o.include = (const char *const *) fs_cfg.include;
    o.exclude = (const char *const *) fs_cfg.exclude;
    o.cancel = &vm->cancel;
    o.progress = control_progress;
    o.opaque = vm;
    o.lock_timeout_ms = 0;
    if (atomic_load (&fs_terminating))
      atomic_store (&vm->cancel, 1);
    r = engine_backup (fs_cfg.st, vm->name, qmp, qga, &o, &res);
  }
  code = r == 0 ? QB_OK : (int) qb_error_code ();
  if (r != 0)
    snprintf (err, sizeof err, "%s", qb_error_msg ());
  bool cancelled = atomic_load (&vm->cancel) != 0;
  if (r != 0 && cancelled && code != QB_EHOSTDOWN)
    code = QB_ECANCELED;

  if (r == 0 && fs_cfg.keep_set) {
    /* still "running": no other backup starts while the chains change */
    pthread_mutex_lock (&vm->lock);
    snprintf (vm->phase, sizeof vm->phase, "pruning");
    pthread_mutex_unlock (&vm->lock);
    remove_prune_after_backup (vm);
  }
  int64_t now = qb_now_us ();
  pthread_mutex_lock (&vm->lock);
  vm->has_last = true;
  vm->last_ok = r == 0;
  vm->last_time_us = now;
  vm->last_seconds = (now - t0) / 1e6;
  if (r == 0) {
    vm->state = VM_IDLE;
    vm->last_level = res.level;
    snprintf (vm->last_id, sizeof vm->last_id, "%s", res.id);
    snprintf (vm->last_reason, sizeof vm->last_reason, "%s", res.reason);
    snprintf (vm->last_quiesce_note, sizeof vm->last_quiesce_note, "%s", res.quiesce_note);
    vm->last_error[0] = '\0';
    vm->last_bytes = res.bytes_copied;
    vm->bytes_copied_total += res.bytes_copied;
    vm->n_ok[res.level & 3]++;
  }
  else {
    vm->state = VM_FAILED;
    vm->last_level = vm->run_level;
    vm->last_id[0] = '\0';
    vm->last_reason[0] = '\0';
    vm->last_quiesce_note[0] = '\0';
    snprintf (vm->last_error, sizeof vm->last_error, "%s backup %s: %s", backup_level_name (level),
              code == QB_ECANCELED ? "cancelled" : "failed", err);
    vm->last_bytes = 0;
    vm->n_failed++;
  }
  vm->info_ms = 0;            /* bitmaps and reachability changed: ask QEMU again */
  pthread_mutex_unlock (&vm->lock);
  vm_scan_invalidate (vm);
  vms_notify_idle ();
  control_log_result (vm, level, r, code, &res, (now - t0) / 1e6, err);
  control_notify (vm, level, r, code, &res, (now - t0) / 1e6, err);
  free (qmp);
  free (qga);
  return r == 0 ? 0 : -fs_backup_errno (code);
}

/* Handle a write of BUF to VM's control file; replies. */
void
control_write (fuse_req_t req, fs_vm *vm, const char *buf, size_t size)
{
  backup_level level;
  quiesce_mode q;
  char why[256];
  if (control_is_verify (buf, size)) {
    int r = verify_start (vm);
    if (r < 0) {
      control_reject (vm, r == -EBUSY ? "refused a verify: one is already running for this VM"
                      : "refused a verify: it cannot start now");
      fuse_reply_err (req, -r);
    } else
      fuse_reply_write (req, size);
    return;
  }
  if (control_parse (buf, size, &level, &q, why, sizeof why) == -1) {
    control_reject (vm, why);
    fuse_reply_err (req, EINVAL);
    return;
  }
  int r = control_run (req, vm, level, q);
  if (r < 0)
    fuse_reply_err (req, -r);
  else
    fuse_reply_write (req, size);
}

/* Handle touch of VM's control file: an auto backup.  0 or -errno. */
int
control_touch (fuse_req_t req, fs_vm *vm)
{
  return control_run (req, vm, BACKUP_AUTO, QUIESCE_DEFAULT);
}
