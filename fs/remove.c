/* qmpbackupfs — removing restore points through the mount: rm of a restore
 * image, and -o keep= after each backup (the store does the work: see
 * store_points_remove and store_prune). */
#include "fs/fs.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Record TEXT as VM's last removal result (status). */
static void
remove_note (fs_vm *vm, const char *text)
{
  pthread_mutex_lock (&vm->lock);
  snprintf (vm->last_prune, sizeof vm->last_prune, "%s", text);
  pthread_mutex_unlock (&vm->lock);
}

/* VM's store lock, unless a backup runs (QB_EBUSY); NULL with the error. */
static store_lock *
remove_lock (fs_vm *vm)
{
  pthread_mutex_lock (&vm->lock);
  bool running = vm->state == VM_RUNNING;
  pthread_mutex_unlock (&vm->lock);
  if (running) {
    qb_error_set (QB_EBUSY, "a backup of VM %s is running: remove points when it is done",
                  vm->name);
    return NULL;
  }
  return store_lock_vm (fs_cfg.st, vm->name, 0);
}

int
remove_point (fs_vm *vm, const char *disk, const char *name)
{
  size_t len = strlen (name);
  if (len <= 4 || strcmp (name + len - 4, ".img") != 0)
    return -ENOENT;
  char *display = qb_asprintf ("%.*s", (int) (len - 4), name);
  vm_scan *s = vm_scan_get (vm);
  const store_chain *c;
  size_t idx;
  char id[40] = "";
  if (s && s->v && restore_find (s->v, disk, display, &c, &idx))
    snprintf (id, sizeof id, "%s", c->layers[idx].id);
  vm_scan_put (s);
  if (!id[0]) {
    free (display);
    return -ENOENT;
  }
  files_cache_drop_idle (vm->name);
  store_lock *lk = remove_lock (vm);
  int r = -1;
  if (lk) {
    char *ids[] = { id };
    store_remove_opts ro = { .why = "rm" };
    store_remove_result res;
    r = store_points_remove (fs_cfg.st, vm->name, ids, 1, NULL, &ro, &res);
    store_unlock (lk);
    if (r == 0) {
      uint64_t freed = res.bytes_before > res.bytes_after ? res.bytes_before - res.bytes_after : 0;
      char b[32];
      qb_format_bytes (freed, b, sizeof b);
      char *msg = qb_asprintf ("removed restore point %s (every disk, by rm): %s freed",
                               display, b);
      fs_log ("event=remove vm=%s point=%s bytes_freed=%llu", vm->name, display,
              (unsigned long long) freed);
      remove_note (vm, msg);
      free (msg);
    }
  }
  int err = 0;
  if (r < 0) {
    int code = qb_error_code ();
    err = fs_remove_errno (code);
    char *msg = qb_asprintf ("rm of restore point %s refused: %s", display, qb_error_msg ());
    fs_log ("event=remove-failed vm=%s point=%s reason=\"%s\"", vm->name, display,
            qb_error_msg ());
    remove_note (vm, msg);
    free (msg);
  }
  vm_scan_invalidate (vm);
  free (display);
  return -err;
}

void
remove_prune_after_backup (fs_vm *vm)
{
  if (!fs_cfg.keep_set)
    return;
  files_cache_drop_idle (vm->name);
  store_lock *lk = store_lock_vm (fs_cfg.st, vm->name, 0);
  if (!lk) {
    char *msg = qb_asprintf ("prune (keep=) postponed to the next backup: %s", qb_error_msg ());
    fs_log ("event=prune-postponed vm=%s reason=\"%s\"", vm->name, qb_error_msg ());
    remove_note (vm, msg);
    free (msg);
    return;
  }
  store_prune_point *pts = NULL;
  size_t n = 0;
  store_remove_opts ro = { .why = "prune" };
  store_remove_result res;
  int r = store_prune (fs_cfg.st, vm->name, &fs_cfg.keep, &ro, &pts, &n, &res);
  store_unlock (lk);
  char *msg;
  if (r < 0) {
    msg = qb_asprintf ("prune (keep=) failed, tried again after the next backup: %s",
                       qb_error_msg ());
    fs_log ("event=prune-failed vm=%s reason=\"%s\"", vm->name, qb_error_msg ());
  } else {
    size_t gone = 0;
    for (size_t i = 0; i < n; i++)
      gone += !pts[i].keep;
    uint64_t freed = res.bytes_before > res.bytes_after ? res.bytes_before - res.bytes_after : 0;
    char b[32];
    qb_format_bytes (freed, b, sizeof b);
    msg = qb_asprintf ("prune (keep=): %zu of %zu restore points removed, %s freed", gone, n, b);
    if (gone)
      fs_log ("event=prune vm=%s removed=%zu kept=%zu bytes_freed=%llu", vm->name, gone,
              n - gone, (unsigned long long) freed);
  }
  remove_note (vm, msg);
  free (msg);
  free (pts);
  vm_scan_invalidate (vm);
}
