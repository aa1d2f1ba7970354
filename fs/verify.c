/* qmpbackupfs — `echo verify > <vm>/backup`: verify the VM's restore points
 * against their checksums (store/sums.h) in a thread of its own.
 *
 * One verify at a time per VM; it takes no lock, so backups are never held
 * up (a layer a concurrent rewrite removed is "gone", not damage).  Progress
 * ("verifying N/M") and the result are published in the VM's state for
 * <vm>/status, .status and .metrics; each layer's result is kept beside it
 * (.chain/<layer>.verify.json), and the scan is refreshed at the end, so a
 * damaged point reads as EIO and is never continued by an incremental. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/util.h"
#include "fs/fs.h"
#include "store/sums.h"

static atomic_int verifies_active;

/* Number of verify threads still running. */
int
verify_active (void)
{
  return atomic_load (&verifies_active);
}

/* Append to BUF (LEN bytes) a note about layer NAME's report R. */
static void
verify_note (char *buf, size_t len, const char *name, const store_verify_report *r)
{
  size_t used = strlen (buf);
  if (used + 8 >= len)
    return;
  if (r->result == STORE_VERIFY_DAMAGED && r->nlisted && (r->guest[0] || r->host[0]))
    snprintf (buf + used, len - used, "%s%s: %llu damaged cluster%s at guest offset %llu%s",
              used ? "; " : "", name, (unsigned long long) r->damaged,
              r->damaged == 1 ? "" : "s", (unsigned long long) r->guest[0],
              r->damaged > 1 ? " ..." : "");
  else
    snprintf (buf + used, len - used, "%s%s: %s%s%s", used ? "; " : "", name,
              store_verify_result_word (r->result), r->why[0] ? " (" : "", r->why[0] ? ")" : "");
}

/* Thread: verify every layer of VM's scan (taken at the start). */
static void *
verify_thread (void *arg)
{
  fs_vm *vm = arg;
  vm_scan *s = vm_scan_get (vm);
  size_t total = 0;
  for (size_t d = 0; s->v && d < s->v->ndisks; d++)
    for (size_t c = 0; c < s->v->disks[d].nchains; c++)
      total += s->v->disks[d].chains[c].n;
  pthread_mutex_lock (&vm->lock);
  vm->verify_total = total;
  pthread_mutex_unlock (&vm->lock);
  fs_log ("event=verify-start vm=%s layers=%zu", vm->name, total);

  struct timespec t0, t1;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  uint64_t bytes = 0, damaged = 0, sums = 0, unverifiable = 0, gone = 0, busy = 0, done = 0;
  char notes[1024] = "", err[512] = "";
  for (size_t d = 0; s->v && d < s->v->ndisks; d++)
    for (size_t c = 0; c < s->v->disks[d].nchains; c++) {
      const store_chain *ch = &s->v->disks[d].chains[c];
      for (size_t k = 0; k < ch->n; k++) {
        if (atomic_load (&fs_terminating)) {
          snprintf (err, sizeof err, "stopped: the file system is shutting down");
          goto end;
        }
        store_verify_report r;
        if (ch->layers[k].busy) {     /* a chain rewrite is under way: not now */
          busy++;
          done++;
          continue;
        }
        if (store_verify_store_layer (fs_cfg.st, &ch->layers[k], &r) < 0) {
          snprintf (err, sizeof err, "%s: %s", ch->layers[k].name, qb_error_msg ());
          qb_error_clear ();
          goto end;
        }
        bytes += r.bytes;
        switch (r.result) {
        case STORE_VERIFY_DAMAGED: damaged++; break;
        case STORE_VERIFY_SUMS_DAMAGED: sums++; break;
        case STORE_VERIFY_UNVERIFIABLE: unverifiable++; break;
        case STORE_VERIFY_GONE: gone++; break;
        default: break;
        }
        if (r.result == STORE_VERIFY_DAMAGED || r.result == STORE_VERIFY_SUMS_DAMAGED)
          verify_note (notes, sizeof notes, ch->layers[k].name, &r);
        done++;
        pthread_mutex_lock (&vm->lock);
        vm->verify_done = done;
        pthread_mutex_unlock (&vm->lock);
      }
    }
 end:
  clock_gettime (CLOCK_MONOTONIC, &t1);
  vm_scan_put (s);
  double secs = (double) (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  const char *result = err[0] ? "failed" : damaged || sums ? "damaged"
    : unverifiable ? "ok-with-unverifiable" : "ok";
  pthread_mutex_lock (&vm->lock);
  vm->verify_running = false;
  vm->has_verify = true;
  vm->verify_time_us = qb_now_us ();
  vm->verify_seconds = secs;
  vm->verify_bytes = bytes;
  vm->verify_layers = done;
  vm->verify_damaged = damaged;
  vm->verify_sums_damaged = sums;
  vm->verify_unverifiable = unverifiable;
  snprintf (vm->verify_result, sizeof vm->verify_result, "%s", result);
  snprintf (vm->verify_detail, sizeof vm->verify_detail, "%s", err[0] ? err : notes);
  pthread_mutex_unlock (&vm->lock);
  vm_scan_invalidate (vm);     /* the verify records change what the scan says */
  char esc[2048];
  fs_log_escape (err[0] ? err : notes, esc, sizeof esc);
  fs_log ("event=verify-end vm=%s result=%s layers=%llu damaged=%llu sums_damaged=%llu "
          "unverifiable=%llu gone=%llu busy=%llu bytes=%llu seconds=%.1f%s%s%s", vm->name, result,
          (unsigned long long) done, (unsigned long long) damaged, (unsigned long long) sums,
          (unsigned long long) unverifiable, (unsigned long long) gone, (unsigned long long) busy,
          (unsigned long long) bytes, secs, err[0] || notes[0] ? " reason=\"" : "",
          esc, err[0] || notes[0] ? "\"" : "");
  atomic_fetch_sub (&verifies_active, 1);
  return NULL;
}

/* Start a verify of VM's restore points in the background. */
int
verify_start (fs_vm *vm)
{
  if (atomic_load (&fs_terminating))
    return -ESHUTDOWN;
  pthread_mutex_lock (&vm->lock);
  if (vm->verify_running) {
    pthread_mutex_unlock (&vm->lock);
    return -EBUSY;
  }
  vm->verify_running = true;
  vm->verify_done = vm->verify_total = 0;
  pthread_mutex_unlock (&vm->lock);
  atomic_fetch_add (&verifies_active, 1);
  pthread_attr_t a;
  pthread_t th;
  pthread_attr_init (&a);
  pthread_attr_setdetachstate (&a, PTHREAD_CREATE_DETACHED);
  int e = pthread_create (&th, &a, verify_thread, vm);
  pthread_attr_destroy (&a);
  if (e != 0) {
    atomic_fetch_sub (&verifies_active, 1);
    pthread_mutex_lock (&vm->lock);
    vm->verify_running = false;
    pthread_mutex_unlock (&vm->lock);
    return -EAGAIN;
  }
  return 0;
}

/* The "verify" part of <vm>/status (caller holds VM's lock): new reference,
 * or NULL when none ran since the mount. */
json_object *
verify_status_json (const fs_vm *vm)
{
  if (!vm->verify_running && !vm->has_verify)
    return NULL;
  json_object *j = json_object_new_object ();
  if (vm->verify_running) {
    char st[64];
    snprintf (st, sizeof st, "verifying %llu/%llu", (unsigned long long) vm->verify_done,
              (unsigned long long) vm->verify_total);
    json_object_object_add (j, "state", json_object_new_string (st));
    json_object_object_add (j, "done", json_object_new_int64 ((int64_t) vm->verify_done));
    json_object_object_add (j, "total", json_object_new_int64 ((int64_t) vm->verify_total));
  }
  if (vm->has_verify) {
    json_object *l = json_object_new_object ();
    char t[32];
    qb_format_utc (vm->verify_time_us, t, sizeof t);
    json_object_object_add (l, "result", json_object_new_string (vm->verify_result));
    json_object_object_add (l, "time", json_object_new_string (t));
    json_object_object_add (l, "seconds", json_object_new_double (vm->verify_seconds));
    json_object_object_add (l, "layers", json_object_new_int64 ((int64_t) vm->verify_layers));
    json_object_object_add (l, "damaged_layers", json_object_new_int64 ((int64_t) vm->verify_damaged));
    json_object_object_add (l, "sums_damaged_layers",
                            json_object_new_int64 ((int64_t) vm->verify_sums_damaged));
    json_object_object_add (l, "unverifiable_layers",
                            json_object_new_int64 ((int64_t) vm->verify_unverifiable));
    json_object_object_add (l, "bytes", json_object_new_int64 ((int64_t) vm->verify_bytes));
    json_object_object_add (l, "gb_per_second", json_object_new_double (
                              vm->verify_seconds > 0 ? vm->verify_bytes / vm->verify_seconds / 1e9 : 0));
    if (vm->verify_detail[0])
      json_object_object_add (l, "detail", json_object_new_string (vm->verify_detail));
    json_object_object_add (j, "last", l);
    if (!vm->verify_running)
      json_object_object_add (j, "state", json_object_new_string (vm->verify_result));
  }
  return j;
}
