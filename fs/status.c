/* qmpbackupfs — what the mount says about itself: <vm>/status (JSON),
 * .status (JSON, every VM) and .metrics (Prometheus text format).
 *
 * The mount never sits on a VM's QMP socket: the QEMU side of <vm>/status
 * (reachability, bitmaps, health) is fetched by connecting and letting go,
 * at most once per INFO_TTL_MS per VM, never while a backup of that VM runs,
 * by a thread of its own: a VM whose QMP never answers holds at most
 * INFO_WAITERS_MAX readers for at most INFO_WAIT_MS, and .status and
 * .metrics never wait on QMP at all. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/util.h"
#include "fs/fs.h"
#include "qmp/qmp.h"

#define INFO_TTL_MS 3000
#define PROBE_TIMEOUT_MS 1000
#define INFO_WAIT_MS 2000       /* longest a reader waits for a refresh */
#define INFO_WAITERS_MAX 4      /* readers of one VM that may wait at once */

/* The name of STATE. */
static const char *
state_name (vm_state s)
{
  return s == VM_RUNNING ? "running" : s == VM_FAILED ? "failed" : "idle";
}

/* The word for LEVEL. */
static const char *
level_name (backup_level l)
{
  switch (l) {
  case BACKUP_FULL: return "full";
  case BACKUP_INC: return "inc";
  case BACKUP_AUTO: return "auto";
  case BACKUP_COPY: return "copy";
  }
  return "?";
}

/* A JSON string for "YYYY-MM-DDTHH:MM:SSZ" of T_US. */
static json_object *
json_time (int64_t t_us)
{
  char buf[32];
  qb_format_utc (t_us, buf, sizeof buf);
  return json_object_new_string (buf);
}

static atomic_int refreshes_active;

/* Number of QEMU view refreshes still in flight. */
int
status_refreshes_active (void)
{
  return atomic_load (&refreshes_active);
}

/* Thread: ask QEMU about VM (probe, then engine_info), publish the result,
 * end the refresh in flight and wake the readers waiting for it.  Only this
 * thread waits on the VM's QMP; its time is bounded by the QMP timeouts. */
static void *
status_refresh_thread (void *arg)
{
  fs_vm *vm = arg;
  pthread_mutex_lock (&vm->lock);
  char *qmp = qb_strdup (vm->qmp_path);
  pthread_mutex_unlock (&vm->lock);
  json_object *info = NULL;
  bool reachable = false;
  char err[512] = "";
  if (!qmp)
    snprintf (err, sizeof err, "no QMP socket (restore only)");
  else {
    struct qmp *q = qmp_connect (qmp, PROBE_TIMEOUT_MS);
    if (!q)
      snprintf (err, sizeof err, "%s", qb_error_msg ());
    else {
      qmp_close (q);
      reachable = true;
      if (!atomic_load (&fs_terminating)) {
        info = engine_info (fs_cfg.st, vm->name, qmp);
        if (!info)
          snprintf (err, sizeof err, "%s", qb_error_msg ());
      }
    }
  }
  pthread_mutex_lock (&vm->lock);
  json_object_put (vm->info);
  vm->info = info;
  vm->info_reachable = reachable;
  snprintf (vm->info_error, sizeof vm->info_error, "%s", err);
  vm->info_ms = qb_mono_ms ();
  vm->info_busy = false;
  pthread_cond_broadcast (&vm->info_cond);
  pthread_mutex_unlock (&vm->lock);
  free (qmp);
  qb_error_clear ();
  atomic_fetch_sub (&refreshes_active, 1);
  return NULL;
}

/* Start a refresh of VM unless one is in flight (caller holds vm->lock). */
static void
status_refresh_start_locked (fs_vm *vm)
{
  if (vm->info_busy)
    return;
  pthread_attr_t attr;
  pthread_attr_init (&attr);
  pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  vm->info_busy = true;
  vm->info_started_ms = qb_mono_ms ();
  atomic_fetch_add (&refreshes_active, 1);
  if (pthread_create (&t, &attr, status_refresh_thread, vm) != 0) {
    vm->info_busy = false;
    atomic_fetch_sub (&refreshes_active, 1);
    snprintf (vm->info_error, sizeof vm->info_error,
              "cannot start a status refresh thread (out of resources)");
  }
  pthread_attr_destroy (&attr);
}

/* Refresh VM's cached QEMU view if it is older than INFO_TTL_MS: at most one
 * refresh per VM is in flight (single-flight); at most INFO_WAITERS_MAX
 * readers wait for it, each at most INFO_WAIT_MS; everyone else goes on with
 * the last known view, which the status marks as refreshing. */
static void
status_refresh_info (fs_vm *vm)
{
  pthread_mutex_lock (&vm->lock);
  bool running = vm->state == VM_RUNNING;
  bool fresh = vm->info_ms && qb_mono_ms () - vm->info_ms < INFO_TTL_MS;
  if (running || fresh || atomic_load (&fs_terminating)) {
    pthread_mutex_unlock (&vm->lock);
    return;
  }
  status_refresh_start_locked (vm);
  if (vm->info_busy && vm->info_waiters < INFO_WAITERS_MAX) {
    vm->info_waiters++;
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    ts.tv_sec += INFO_WAIT_MS / 1000;
    ts.tv_nsec += (INFO_WAIT_MS % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    while (vm->info_busy)
      if (pthread_cond_timedwait (&vm->info_cond, &vm->lock, &ts) == ETIMEDOUT)
        break;
    vm->info_waiters--;
  }
  pthread_mutex_unlock (&vm->lock);
}

/* The engine_info entry for disk NAME, borrowed from INFO, or NULL. */
static json_object *
info_disk (json_object *info, const char *name)
{
  json_object *arr = info;
  if (info && json_object_is_type (info, json_type_object))
    json_object_object_get_ex (info, "disks", &arr);
  if (!arr || !json_object_is_type (arr, json_type_array))
    return NULL;
  for (size_t i = 0; i < json_object_array_length (arr); i++) {
    json_object *d = json_object_array_get_idx (arr, i), *n;
    if (json_object_object_get_ex (d, "name", &n)
        && strcmp (json_object_get_string (n), name) == 0)
      return d;
  }
  return NULL;
}

/* Copy KEY from SRC into DST if present. */
static void
copy_key (json_object *dst, json_object *src, const char *key, const char *as)
{
  json_object *v;
  if (src && json_object_object_get_ex (src, key, &v))
    json_object_object_add (dst, as ? as : key, json_object_get (v));
}

/* The running job of VM as JSON (caller holds vm->lock), or NULL. */
static json_object *
status_job (fs_vm *vm)
{
  if (vm->state != VM_RUNNING)
    return NULL;
  json_object *j = json_object_new_object ();
  const backup_progress *p = &vm->progress;
  double elapsed = (qb_now_us () - vm->run_start_us) / 1e6;
  json_object_object_add (j, "level", json_object_new_string (level_name (vm->run_level)));
  json_object_object_add (j, "phase", json_object_new_string (vm->phase));
  json_object_object_add (j, "started", json_time (vm->run_start_us));
  json_object_object_add (j, "elapsed_seconds", json_object_new_double (elapsed));
  json_object_object_add (j, "bytes_done", json_object_new_int64 (p->done));
  json_object_object_add (j, "bytes_total", json_object_new_int64 (p->total));
  double pct = p->total ? 100.0 * p->done / p->total : 0;
  json_object_object_add (j, "percent", json_object_new_double ((int) (pct * 10) / 10.0));
  json_object_object_add (j, "rate_bytes_per_second", json_object_new_double (p->rate));
  if (p->rate > 0 && p->total >= p->done)
    json_object_object_add (j, "eta_seconds",
                            json_object_new_double ((int) ((p->total - p->done) / p->rate)));
  else
    json_object_object_add (j, "eta_seconds", NULL);
  return j;
}

/* Add "restore_image": the mount's file name of restore point ID, to J. */
static void
add_restore_image (json_object *j, const char *id)
{
  char disp[64];
  if (id && store_id_display (id, store_get_names (fs_cfg.st), disp, sizeof disp) == 0) {
    char name[80];
    snprintf (name, sizeof name, "%s.img", disp);
    json_object_object_add (j, "restore_image", json_object_new_string (name));
  }
}

/* The last result of VM as JSON (caller holds vm->lock), or NULL. */
static json_object *
status_last (fs_vm *vm)
{
  if (!vm->has_last)
    return NULL;
  json_object *j = json_object_new_object ();
  json_object_object_add (j, "ok", json_object_new_boolean (vm->last_ok));
  json_object_object_add (j, "level", json_object_new_string (level_name (vm->last_level)));
  json_object_object_add (j, "time", json_time (vm->last_time_us));
  json_object_object_add (j, "seconds", json_object_new_double (vm->last_seconds));
  if (vm->last_ok) {
    json_object_object_add (j, "restore_point", json_object_new_string (vm->last_id));
    add_restore_image (j, vm->last_id);
    json_object_object_add (j, "bytes_copied", json_object_new_int64 (vm->last_bytes));
    if (vm->last_reason[0])
      json_object_object_add (j, "reason", json_object_new_string (vm->last_reason));
    if (vm->last_quiesce_note[0])
      json_object_object_add (j, "quiesce_note", json_object_new_string (vm->last_quiesce_note));
  }
  else
    json_object_object_add (j, "error", json_object_new_string (vm->last_error));
  return j;
}

/* Per-disk JSON of VM from the store scan V and the QEMU view INFO. */
static json_object *
status_disks (const store_vm *v, json_object *info)
{
  json_object *arr = json_object_new_array ();
  for (size_t i = 0; v && i < v->ndisks; i++) {
    const store_disk *d = &v->disks[i];
    json_object *j = json_object_new_object ();
    json_object_object_add (j, "name", json_object_new_string (d->name));
    json_object *q = info_disk (info, d->name);
    copy_key (j, q, "node", NULL);
    copy_key (j, q, "bitmap", NULL);
    copy_key (j, q, "health", NULL);
    copy_key (j, q, "reason", "health_reason");
    if (q)
      json_object_object_add (j, "qemu", json_object_get (q));
    size_t points = 0, damaged = 0, busy = 0;
    uint64_t stored = 0;
    json_object *dmg = json_object_new_array ();
    /* the chain the next incremental continues: not a copy, newest layer last */
    const store_chain *last = NULL;
    for (size_t c = 0; c < d->nchains; c++) {
      const store_chain *ch = &d->chains[c];
      if (ch->n == 0 || ch->layers[0].kind == STORE_COPY)
        continue;
      if (!last || ch->layers[ch->n - 1].time_us >= last->layers[last->n - 1].time_us)
        last = ch;
    }
    for (size_t c = 0; c < d->nchains; c++)
      for (size_t k = 0; k < d->chains[c].n; k++) {
        const store_layer *l = &d->chains[c].layers[k];
        if (l->removing)
          continue;
        points++;
        stored += l->file_size;
        if (restore_busy (&d->chains[c], k))
          busy++;
        const char *why = restore_point_damage (v->name, d->name, &d->chains[c], k);
        if (why) {
          json_object *e = json_object_new_object ();
          json_object_object_add (e, "restore_point", json_object_new_string (l->display));
          json_object_object_add (e, "file", json_object_new_string (l->name));
          json_object_object_add (e, "damage", json_object_new_string (why));
          json_object_array_add (dmg, e);
          damaged++;
        }
      }
    json_object_object_add (j, "chains", json_object_new_int64 (d->nchains));
    json_object_object_add (j, "chain_length", json_object_new_int64 (last ? last->n : 0));
    json_object_object_add (j, "restore_points", json_object_new_int64 (points));
    json_object_object_add (j, "damaged_points", json_object_new_int64 (damaged));
    if (busy)
      json_object_object_add (j, "busy_points", json_object_new_int64 (busy));
    json_object_object_add (j, "bytes_stored", json_object_new_int64 (stored));
    const store_layer *lt = restore_latest (v, d->name);
    json_object_object_add (j, "latest", lt ? json_object_new_string (lt->display) : NULL);
    json_object_object_add (j, "damage", dmg);
    json_object_object_add (j, "files_notes", files_status_notes (v->name, d->name,
                                                                  lt ? lt->display : NULL));
    json_object_array_add (arr, j);
  }
  /* disks QEMU has that the store does not know yet */
  json_object *qarr = info;
  if (info && json_object_is_type (info, json_type_object))
    json_object_object_get_ex (info, "disks", &qarr);
  if (qarr && json_object_is_type (qarr, json_type_array))
    for (size_t i = 0; i < json_object_array_length (qarr); i++) {
      json_object *q = json_object_array_get_idx (qarr, i), *n;
      if (!json_object_object_get_ex (q, "name", &n))
        continue;
      if (v && store_vm_disk (v, json_object_get_string (n)))
        continue;
      json_object *j = json_object_new_object ();
      copy_key (j, q, "name", NULL);
      copy_key (j, q, "node", NULL);
      copy_key (j, q, "bitmap", NULL);
      copy_key (j, q, "health", NULL);
      copy_key (j, q, "reason", "health_reason");
      json_object_object_add (j, "qemu", json_object_get (q));
      json_object_object_add (j, "chain_length", json_object_new_int64 (0));
      json_object_object_add (j, "restore_points", json_object_new_int64 (0));
      json_object_object_add (j, "bytes_stored", json_object_new_int64 (0));
      json_object_array_add (arr, j);
    }
  return arr;
}

/* The VM part shared by <vm>/status and .status; FULL adds QEMU and disks. */
static json_object *
status_vm_json (fs_vm *vm, bool full)
{
  if (full)
    status_refresh_info (vm);
  vm_scan *s = full ? vm_scan_get (vm) : NULL;
  json_object *j = json_object_new_object ();
  pthread_mutex_lock (&vm->lock);
  json_object_object_add (j, "vm", json_object_new_string (vm->name));
  json_object_object_add (j, "state", json_object_new_string (state_name (vm->state)));
  json_object *q = json_object_new_object ();
  json_object_object_add (q, "socket", vm->qmp_path ? json_object_new_string (vm->qmp_path) : NULL);
  if (vm->state == VM_RUNNING)
    json_object_object_add (q, "reachable", json_object_new_boolean (true));
  else if (vm->info_ms)
    json_object_object_add (q, "reachable", json_object_new_boolean (vm->info_reachable));
  else
    json_object_object_add (q, "reachable", NULL);
  if (vm->info_ms && vm->info_error[0] && vm->state != VM_RUNNING)
    json_object_object_add (q, "error", json_object_new_string (vm->info_error));
  /* how old the QEMU view is, and whether a refresh is still waiting on QEMU */
  uint64_t now_ms = qb_mono_ms ();
  json_object_object_add (q, "checked_seconds_ago", vm->info_ms
                          ? json_object_new_double ((now_ms - vm->info_ms) / 1000.0) : NULL);
  json_object_object_add (q, "refreshing", json_object_new_boolean (vm->info_busy));
  if (vm->info_busy)
    json_object_object_add (q, "refresh_waiting_seconds",
                            json_object_new_double ((now_ms - vm->info_started_ms) / 1000.0));
  json_object_object_add (j, "qmp", q);
  json_object *a = json_object_new_object ();
  json_object_object_add (a, "socket", vm->qga_path ? json_object_new_string (vm->qga_path) : NULL);
  json_object_object_add (a, "present", json_object_new_boolean (vm->qga_path != NULL));
  json_object_object_add (j, "agent", a);
  json_object_object_add (j, "job", status_job (vm));
  json_object_object_add (j, "last", status_last (vm));
  if (vm->last_prune[0])
    json_object_object_add (j, "last_removal", json_object_new_string (vm->last_prune));
  json_object_object_add (j, "verify", verify_status_json (vm));
  if (vm->last_rejected_us) {
    json_object *r = json_object_new_object ();
    json_object_object_add (r, "time", json_time (vm->last_rejected_us));
    json_object_object_add (r, "error", json_object_new_string (vm->last_rejected));
    json_object_object_add (j, "last_rejected", r);
  }
  json_object *info = full ? json_object_get (vm->info) : NULL;
  pthread_mutex_unlock (&vm->lock);
  if (full) {
    json_object_object_add (j, "disks", status_disks (s ? s->v : NULL, info));
    /* entries of the store left out (symbolic links are never followed) */
    json_object *skipped = json_object_new_array ();
    for (size_t i = 0; s && s->v && i < s->v->nskipped; i++)
      json_object_array_add (skipped, json_object_new_string (s->v->skipped[i]));
    json_object_object_add (j, "store_skipped", skipped);
    json_object *rec = store_record_latest (fs_cfg.st, vm->name);
    if (!rec)
      qb_error_clear ();
    json_object *last;
    if (rec && json_object_object_get_ex (j, "last", &last) && !last) {
      /* nothing ran since the mount: the newest restore point's record speaks */
      last = json_object_new_object ();
      json_object_object_add (last, "ok", json_object_new_boolean (true));
      copy_key (last, rec, "level", NULL);
      copy_key (last, rec, "time", NULL);
      copy_key (last, rec, "seconds", NULL);
      copy_key (last, rec, "id", "restore_point");
      json_object *idv;
      if (json_object_object_get_ex (rec, "id", &idv))
        add_restore_image (last, json_object_get_string (idv));
      copy_key (last, rec, "bytes_copied", NULL);
      copy_key (last, rec, "reason", NULL);
      copy_key (last, rec, "quiesced", NULL);
      copy_key (last, rec, "quiesce_note", NULL);
      json_object_object_add (j, "last", last);
    }
    json_object_object_add (j, "latest_record", rec);
  }
  json_object_put (info);
  vm_scan_put (s);
  return j;
}

/* Serialise J (consumed) as pretty text with a final newline. */
static char *
json_text (json_object *j)
{
  char *t = qb_asprintf ("%s\n", json_object_to_json_string_ext (j, JSON_C_TO_STRING_PRETTY
                                                                | JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put (j);
  return t;
}

/* <vm>/status as a malloc'd JSON text. */
char *
status_vm_text (fs_vm *vm)
{
  return json_text (status_vm_json (vm, true));
}

/* .status as a malloc'd JSON text. */
char *
status_all_text (void)
{
  json_object *j = json_object_new_object ();
  json_object_object_add (j, "store", json_object_new_string (fs_cfg.store_root));
  json_object_object_add (j, "sockets", fs_cfg.sockets_dir
                          ? json_object_new_string (fs_cfg.sockets_dir) : NULL);
  json_object_object_add (j, "version", json_object_new_string (QB_VERSION));
  json_object *arr = json_object_new_array ();
  char **names;
  size_t n = vms_list (&names);
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (vm)
      json_object_array_add (arr, status_vm_json (vm, false));
    free (names[i]);
  }
  free (names);
  json_object_object_add (j, "vms", arr);
  json_object_object_add (j, "refused_sockets", vms_refused_json ());
  return json_text (j);
}

/* Append printf text to *BUF. */
static void __attribute__ ((format (printf, 2, 3)))
append (char **buf, const char *fmt, ...)
{
  va_list ap;
  char *add;
  va_start (ap, fmt);
  if (vasprintf (&add, fmt, ap) < 0)
    abort ();
  va_end (ap);
  char *n = qb_asprintf ("%s%s", *buf ? *buf : "", add);
  free (add);
  free (*buf);
  *buf = n;
}

/* .metrics as a malloc'd Prometheus text. */
char *
status_metrics_text (void)
{
  char *t = NULL;
  char **names;
  size_t n = vms_list (&names);
  append (&t, "# HELP qmpbackupfs_backups_total Backups taken through the mount since it started.\n"
          "# TYPE qmpbackupfs_backups_total counter\n");
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    pthread_mutex_lock (&vm->lock);
    for (int l = 0; l < 4; l++)
      if (l != BACKUP_AUTO)
        append (&t, "qmpbackupfs_backups_total{vm=\"%s\",level=\"%s\",result=\"ok\"} %llu\n",
                vm->name, level_name (l), (unsigned long long) vm->n_ok[l]);
    append (&t, "qmpbackupfs_backups_total{vm=\"%s\",level=\"any\",result=\"failed\"} %llu\n",
            vm->name, (unsigned long long) vm->n_failed);
    pthread_mutex_unlock (&vm->lock);
  }
  append (&t, "# HELP qmpbackupfs_backup_failures_total Failed backups since the mount started.\n"
          "# TYPE qmpbackupfs_backup_failures_total counter\n");
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    pthread_mutex_lock (&vm->lock);
    append (&t, "qmpbackupfs_backup_failures_total{vm=\"%s\"} %llu\n", vm->name,
            (unsigned long long) vm->n_failed);
    pthread_mutex_unlock (&vm->lock);
  }
  append (&t, "# HELP qmpbackupfs_backup_bytes_copied_total Bytes copied by backup jobs.\n"
          "# TYPE qmpbackupfs_backup_bytes_copied_total counter\n");
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    pthread_mutex_lock (&vm->lock);
    append (&t, "qmpbackupfs_backup_bytes_copied_total{vm=\"%s\"} %llu\n", vm->name,
            (unsigned long long) vm->bytes_copied_total);
    pthread_mutex_unlock (&vm->lock);
  }
  append (&t, "# HELP qmpbackupfs_last_backup_duration_seconds Duration of the last backup.\n"
          "# TYPE qmpbackupfs_last_backup_duration_seconds gauge\n");
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    pthread_mutex_lock (&vm->lock);
    if (vm->has_last)
      append (&t, "qmpbackupfs_last_backup_duration_seconds{vm=\"%s\"} %.3f\n", vm->name,
              vm->last_seconds);
    pthread_mutex_unlock (&vm->lock);
  }
  append (&t, "# HELP qmpbackupfs_backup_running 1 while a backup of the VM runs.\n"
          "# TYPE qmpbackupfs_backup_running gauge\n");
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    pthread_mutex_lock (&vm->lock);
    append (&t, "qmpbackupfs_backup_running{vm=\"%s\"} %d\n", vm->name, vm->state == VM_RUNNING);
    pthread_mutex_unlock (&vm->lock);
  }
  append (&t, "# HELP qmpbackupfs_verify_running 1 while a verify of the VM's points runs.\n"
          "# TYPE qmpbackupfs_verify_running gauge\n");
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    pthread_mutex_lock (&vm->lock);
    append (&t, "qmpbackupfs_verify_running{vm=\"%s\"} %d\n", vm->name, vm->verify_running);
    pthread_mutex_unlock (&vm->lock);
  }
  append (&t, "# HELP qmpbackupfs_verify_damaged_layers Layers the last verify found damaged "
          "(data or checksums).\n# TYPE qmpbackupfs_verify_damaged_layers gauge\n");
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    pthread_mutex_lock (&vm->lock);
    if (vm->has_verify)
      append (&t, "qmpbackupfs_verify_damaged_layers{vm=\"%s\"} %llu\n", vm->name,
              (unsigned long long) (vm->verify_damaged + vm->verify_sums_damaged));
    pthread_mutex_unlock (&vm->lock);
  }
  append (&t, "# HELP qmpbackupfs_last_verify_timestamp_seconds When the last verify ended.\n"
          "# TYPE qmpbackupfs_last_verify_timestamp_seconds gauge\n");
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    pthread_mutex_lock (&vm->lock);
    if (vm->has_verify)
      append (&t, "qmpbackupfs_last_verify_timestamp_seconds{vm=\"%s\"} %lld\n", vm->name,
              (long long) (vm->verify_time_us / 1000000));
    pthread_mutex_unlock (&vm->lock);
  }
  append (&t, "# HELP qmpbackupfs_restore_points Restore points in the store.\n"
          "# TYPE qmpbackupfs_restore_points gauge\n");
  char *stored = NULL, *newest = NULL, *damaged = NULL;
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = vms_find (names[i]);
    if (!vm) continue;
    vm_scan *s = vm_scan_get (vm);
    for (size_t d = 0; s->v && d < s->v->ndisks; d++) {
      const store_disk *dk = &s->v->disks[d];
      size_t pts = 0, bad = 0;
      uint64_t bytes = 0;
      int64_t t_us = 0;
      for (size_t c = 0; c < dk->nchains; c++)
        for (size_t k = 0; k < dk->chains[c].n; k++) {
          if (dk->chains[c].layers[k].removing)
            continue;
          pts++;
          if (restore_point_damage (vm->name, dk->name, &dk->chains[c], k))
            bad++;
          bytes += dk->chains[c].layers[k].file_size;
          if (dk->chains[c].layers[k].time_us > t_us)
            t_us = dk->chains[c].layers[k].time_us;
        }
      append (&t, "qmpbackupfs_restore_points{vm=\"%s\",disk=\"%s\"} %zu\n", vm->name, dk->name, pts);
      append (&stored, "qmpbackupfs_stored_bytes{vm=\"%s\",disk=\"%s\"} %llu\n", vm->name,
              dk->name, (unsigned long long) bytes);
      append (&newest, "qmpbackupfs_last_restore_point_timestamp_seconds{vm=\"%s\",disk=\"%s\"} %lld\n",
              vm->name, dk->name, (long long) (t_us / 1000000));
      append (&damaged, "qmpbackupfs_damaged_points{vm=\"%s\",disk=\"%s\"} %zu\n", vm->name,
              dk->name, bad);
    }
    vm_scan_put (s);
  }
  append (&t, "# HELP qmpbackupfs_stored_bytes Bytes the store holds per disk.\n"
          "# TYPE qmpbackupfs_stored_bytes gauge\n%s", stored ? stored : "");
  append (&t, "# HELP qmpbackupfs_last_restore_point_timestamp_seconds Time of the newest restore point.\n"
          "# TYPE qmpbackupfs_last_restore_point_timestamp_seconds gauge\n%s", newest ? newest : "");
  append (&t, "# HELP qmpbackupfs_damaged_points Restore points that cannot be read whole.\n"
          "# TYPE qmpbackupfs_damaged_points gauge\n%s", damaged ? damaged : "");
  free (stored);
  free (newest);
  free (damaged);
  for (size_t i = 0; i < n; i++)
    free (names[i]);
  free (names);
  return t;
}
