/* qmpbackupfs — QEMU block jobs and nodes of a backup: waiting, finalizing,
 * aborting, and cleaning up leftovers of a crashed run (see engine.h,
 * "Internals").  Job status is read from query-jobs, which is
 * authoritative; JOB_STATUS_CHANGE events only wake the wait up early. */
#include "engine/engine-int.h"
#include "common/error.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOBS_POLL_MS 1000
#define JOBS_ABORT_WAIT_MS 30000


/* The integer member KEY of OBJ, or 0. */
static uint64_t
u64_of (json_object *obj, const char *key)
{
  json_object *v;
  if (!obj || !json_object_object_get_ex (obj, key, &v))
    return 0;
  int64_t x = json_object_get_int64 (v);
  return x > 0 ? (uint64_t) x : 0;
}

/* The query-jobs entry with id ID in LIST, or NULL. */
static json_object *
find_job (json_object *list, const char *id)
{
  size_t n = json_object_array_length (list);
  for (size_t i = 0; i < n; i++) {
    json_object *j = json_object_array_get_idx (list, i);
    if (strcmp (qmp_str (j, "id"), id) == 0)
      return j;
  }
  return NULL;
}

/* query-jobs as an array (new reference), or NULL. */
static json_object *
query_jobs (qmp *q)
{
  json_object *r = qmp_execute (q, "query-jobs", NULL, QMP_COMMAND_TIMEOUT_MS);
  if (r && !json_object_is_type (r, json_type_array)) {
    json_object_put (r);
    qb_error_set (QB_EPROTO, "query-jobs did not return a list");
    return NULL;
  }
  return r;
}

/* Run CMD {"id": ID}; 0 or -1. */
static int
job_verb (qmp *q, const char *cmd, const char *id)
{
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "id", json_object_new_string (id));
  return qmp_run (q, cmd, args, QMP_COMMAND_TIMEOUT_MS);
}

/* Wait (bounded) until none of IDS is in a state other than "concluded"
 * (or gone); then set the error from the most telling job error. */
static void
collect_failure (qmp *q, char *const *ids, size_t n, const char *fallback)
{
  uint64_t deadline = qb_mono_ms () + JOBS_ABORT_WAIT_MS;
  char *msg = NULL;
  for (;;) {
    json_object *list = query_jobs (q);
    if (!list)
      break;
    bool busy = false;
    for (size_t i = 0; i < n; i++) {
      json_object *j = find_job (list, ids[i]);
      if (!j)
        continue;
      const char *st = qmp_str (j, "status");
      if (strcmp (st, "concluded") != 0 && strcmp (st, "null") != 0 && strcmp (st, "pending") != 0)
        busy = true;
      const char *err = qmp_str (j, "error");
      if (*err && (!msg || (strcasestr (msg, "cancel") && !strcasestr (err, "cancel")))) {
        free (msg);
        msg = qb_asprintf ("backup job %s failed: %s", ids[i], err);
      }
    }
    json_object_put (list);
    if (!busy || qb_mono_ms () > deadline)
      break;
    json_object *ev = qmp_next_event (q, 200);
    json_object_put (ev);
  }
  qb_error_set (QB_EIO, "%s", msg ? msg : fallback);
  free (msg);
}

/* True when event EV should wake a wait for status WANT of the jobs IDS
 * (N): a JOB_STATUS_CHANGE of one of them to WANT or to an end, a
 * BLOCK_JOB_ERROR, or an event whose data was dropped (it may have been
 * one of those).  Other status changes ("running", "waiting") need no
 * query-jobs. */
static bool
wakes (json_object *ev, char *const *ids, size_t n, const char *want)
{
  const char *name = qmp_str (ev, "event");
  if (strcmp (name, "BLOCK_JOB_ERROR") == 0)
    return true;
  if (strcmp (name, "JOB_STATUS_CHANGE") != 0)
    return false;
  json_object *data;
  if (!json_object_object_get_ex (ev, "data", &data))
    return true;
  const char *id = qmp_str (data, "id"), *st = qmp_str (data, "status");
  bool mine = false;
  for (size_t i = 0; i < n && !mine; i++)
    mine = strcmp (ids[i], id) == 0;
  return mine && (strcmp (st, want) == 0 || strcmp (st, "aborting") == 0
                  || strcmp (st, "concluded") == 0 || strcmp (st, "null") == 0);
}

/* Sleep until an event that wakes a wait for WANT of IDS (N), at most
 * JOBS_POLL_MS and not past DEADLINE (0: none); 0, or -1 when the VM went
 * away, the wait was canceled or the peer broke the protocol. */
static int
sleep_for_event (qmp *q, char *const *ids, size_t n, const char *want, uint64_t deadline)
{
  uint64_t until = qb_mono_ms () + JOBS_POLL_MS;
  if (deadline && until > deadline)
    until = deadline;
  for (;;) {
    uint64_t now = qb_mono_ms ();
    if (now >= until)
      return 0;
    json_object *ev = qmp_next_event (q, (int) (until - now));
    if (!ev)
      return qb_error_code () == QB_ETIMEDOUT ? 0 : -1;
    bool wake = wakes (ev, ids, n, want);
    json_object_put (ev);
    if (wake)
      return 0;
  }
}

/* Wait until every job in IDS has status WANT (see engine-int.h). */
int
jobs_await (qmp *q, char *const *ids, size_t n, const char *want, int timeout_ms,
            bool event_first, jobs_tick_fn tick, void *opaque, json_object **last)
{
  bool want_pending = strcmp (want, "pending") == 0;
  uint64_t deadline = timeout_ms > 0 ? qb_mono_ms () + (uint64_t) timeout_ms : 0;
  if (last)
    *last = NULL;
  if (event_first && sleep_for_event (q, ids, n, want, deadline) < 0)
    return -1;
  for (;;) {
    json_object *list = query_jobs (q);
    if (!list)
      return -1;
    size_t reached = 0;
    uint64_t done = 0, total = 0;
    char *failed = NULL;
    for (size_t i = 0; i < n; i++) {
      json_object *j = find_job (list, ids[i]);
      if (!j) {
        if (!failed)
          failed = qb_asprintf ("job %s disappeared", ids[i]);
        continue;
      }
      const char *st = qmp_str (j, "status");
      done += u64_of (j, "current-progress");
      total += u64_of (j, "total-progress");
      if (strcmp (st, want) == 0 || (!want_pending && strcmp (st, "null") == 0))
        reached++;
      else if (want_pending && (strcmp (st, "aborting") == 0 || strcmp (st, "concluded") == 0
                                || strcmp (st, "null") == 0)) {
        if (!failed)
          failed = qb_asprintf ("backup job %s was aborted%s%s", ids[i],
                                *qmp_str (j, "error") ? ": " : "", qmp_str (j, "error"));
      }
    }
    if (tick)
      tick (opaque, done, total);
    if (failed) {
      json_object_put (list);
      char *fb = failed;
      collect_failure (q, ids, n, fb);
      free (fb);
      return -1;
    }
    if (reached == n) {
      if (last)
        *last = list;
      else
        json_object_put (list);
      return 0;
    }
    json_object_put (list);
    uint64_t now = qb_mono_ms ();
    if (deadline && now >= deadline)
      return qb_error_set (QB_ETIMEDOUT, "job %s did not become %s within %d s", ids[0], want,
                           timeout_ms / 1000);
    if (sleep_for_event (q, ids, n, want, deadline) < 0)
      return -1;
  }
}

/* Wait until every job in IDS has status WANT. */
int
jobs_wait (qmp *q, char *const *ids, size_t n, const char *want,
           jobs_tick_fn tick, void *opaque)
{
  return jobs_await (q, ids, n, want, 0, false, tick, opaque, NULL);
}

/* Cancel, wait for and dismiss the jobs in IDS (best effort). */
void
jobs_abort (qmp *q, char *const *ids, size_t n)
{
  json_object *list = query_jobs (q);
  if (!list)
    return;
  for (size_t i = 0; i < n; i++) {
    json_object *j = find_job (list, ids[i]);
    if (j && strcmp (qmp_str (j, "status"), "concluded") != 0
        && strcmp (qmp_str (j, "status"), "aborting") != 0)
      job_verb (q, "job-cancel", ids[i]);
  }
  json_object_put (list);
  uint64_t deadline = qb_mono_ms () + JOBS_ABORT_WAIT_MS;
  for (;;) {
    list = query_jobs (q);
    if (!list)
      return;
    bool busy = false;
    for (size_t i = 0; i < n; i++) {
      json_object *j = find_job (list, ids[i]);
      if (!j)
        continue;
      if (strcmp (qmp_str (j, "status"), "concluded") == 0)
        job_verb (q, "job-dismiss", ids[i]);
      else
        busy = true;
    }
    json_object_put (list);
    if (!busy || qb_mono_ms () > deadline)
      return;
    json_object *ev = qmp_next_event (q, 200);
    if (!ev && qb_error_code () != QB_ETIMEDOUT)
      return;
    json_object_put (ev);
  }
}

/* Finalize the pending jobs in IDS, wait for them and dismiss them. */
int
jobs_finalize (qmp *q, char *const *ids, size_t n)
{
  json_object *list = NULL;
  if (n == 1) {
    /* One job: finalize it and read its status in one round trip (QEMU
     * finalizes a lone job before it answers). */
    const char *cmds[] = { "job-finalize", "query-jobs" };
    json_object *args[] = { json_object_new_object (), NULL };
    json_object_object_add (args[0], "id", json_object_new_string (ids[0]));
    json_object *res[2];
    int rc = qmp_execute_batch (q, cmds, args, 2, res, QMP_COMMAND_TIMEOUT_MS);
    json_object_put (res[0]);
    if (rc < 0) {
      json_object_put (res[1]);
      return -1;
    }
    json_object *j = json_object_is_type (res[1], json_type_array) ? find_job (res[1], ids[0]) : NULL;
    const char *st = qmp_str (j, "status");
    if (strcmp (st, "concluded") == 0 || strcmp (st, "null") == 0)
      list = res[1];
    else
      json_object_put (res[1]);
  }
  else {
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
      /* With grouped completion one finalize moves the whole group on. */
      json_object *now = query_jobs (q);
      if (!now)
        return -1;
      json_object *cur = find_job (now, ids[i]);
      if (cur && strcmp (qmp_str (cur, "status"), "pending") == 0
          && job_verb (q, "job-finalize", ids[i]) < 0)
        rc = -1;
      json_object_put (now);
    }
    if (rc < 0)
      return -1;
  }
  if (!list && jobs_await (q, ids, n, "concluded", 0, false, NULL, NULL, &list) < 0)
    return -1;
  char *err = NULL;
  const char *cmds[QMP_BATCH_MAX];
  json_object *args[QMP_BATCH_MAX], *res[QMP_BATCH_MAX];
  size_t nb = 0;
  for (size_t i = 0; i < n; i++) {
    json_object *j = find_job (list, ids[i]);
    if (j && *qmp_str (j, "error") && !err)
      err = qb_asprintf ("backup job %s failed while finalizing: %s", ids[i], qmp_str (j, "error"));
    if (!j)
      continue;
    /* Dismissed in batches: one round trip for up to QMP_BATCH_MAX jobs. */
    cmds[nb] = "job-dismiss";
    args[nb] = json_object_new_object ();
    json_object_object_add (args[nb], "id", json_object_new_string (ids[i]));
    if (++nb == QMP_BATCH_MAX || i + 1 == n) {
      qmp_execute_batch (q, cmds, args, nb, res, QMP_COMMAND_TIMEOUT_MS);
      for (size_t k = 0; k < nb; k++)
        json_object_put (res[k]);
      nb = 0;
    }
  }
  if (nb) {
    qmp_execute_batch (q, cmds, args, nb, res, QMP_COMMAND_TIMEOUT_MS);
    for (size_t k = 0; k < nb; k++)
      json_object_put (res[k]);
  }
  json_object_put (list);
  if (err) {
    qb_error_set (QB_EIO, "%s", err);
    free (err);
    return -1;
  }
  qb_error_clear ();
  return 0;
}

/* Delete block node NODE: 0 or -1. */
int
jobs_node_del (qmp *q, const char *node)
{
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "node-name", json_object_new_string (node));
  return qmp_run (q, "blockdev-del", args, QMP_COMMAND_TIMEOUT_MS);
}

/* True when S (after PREFIX) is "<TARGET's first 8 digits>-..." or, an
 * older version's name, all digits; with TARGET NULL, any S after PREFIX. */
static bool
leftover_of (const char *s, const char *prefix, const char *target)
{
  size_t plen = strlen (prefix);
  if (strncmp (s, prefix, plen) != 0)
    return false;
  s += plen;
  if (!target)
    return true;
  if (strlen (target) >= 8 && strncmp (s, target, 8) == 0 && s[8] == '-')
    return true;
  if (!*s)
    return false;
  for (; *s; s++)
    if (*s < '0' || *s > '9')
      return false;
  return true;
}

/* Remove leftover jobs, target nodes and (optionally) bitmaps. */
int
jobs_cleanup (qmp *q, const char *target, bool remove_bitmaps, engine_removed_fn removed,
              void *opaque)
{
  int count = 0;
  json_object *list = query_jobs (q);
  if (!list)
    return -1;
  size_t n = json_object_array_length (list);
  char **ids = qb_calloc (n ? n : 1, sizeof *ids);
  size_t nids = 0;
  for (size_t i = 0; i < n; i++) {
    const char *id = qmp_str (json_object_array_get_idx (list, i), "id");
    if (leftover_of (id, ENGINE_JOB_PREFIX, target))
      ids[nids++] = qb_strdup (id);
  }
  json_object_put (list);
  if (nids) {
    jobs_abort (q, ids, nids);
    count += (int) nids;
    for (size_t i = 0; removed && i < nids; i++)
      removed (opaque, "job", NULL, ids[i]);
  }
  for (size_t i = 0; i < nids; i++)
    free (ids[i]);
  free (ids);

  /* "flat": without it each node repeats its whole backing chain, and the
   * reply grows with the square of the chain's length. */
  json_object *qargs = json_object_new_object ();
  json_object_object_add (qargs, "flat", json_object_new_boolean (1));
  json_object *nodes = qmp_execute (q, "query-named-block-nodes", qargs, QMP_COMMAND_TIMEOUT_MS);
  if (!nodes)
    return -1;
  n = json_object_is_type (nodes, json_type_array) ? json_object_array_length (nodes) : 0;
  for (size_t i = 0; i < n; i++) {
    const char *node = qmp_str (json_object_array_get_idx (nodes, i), "node-name");
    if (leftover_of (node, ENGINE_TARGET_PREFIX, target)) {
      json_object *args = json_object_new_object ();
      json_object_object_add (args, "node-name", json_object_new_string (node));
      if (qmp_run (q, "blockdev-del", args, QMP_COMMAND_TIMEOUT_MS) == 0) {
        count++;
        if (removed)
          removed (opaque, "node", NULL, node);
      }
    }
  }
  json_object_put (nodes);

  if (remove_bitmaps) {
    vm_disk *disks;
    size_t nd;
    if (disks_query (q, &disks, &nd) < 0)
      return -1;
    for (size_t i = 0; i < nd; i++)
      for (size_t k = 0; k < disks[i].nbitmaps; k++) {
        const char *bm = disks[i].bitmaps[k].name;
        if (strncmp (bm, ENGINE_BITMAP_PREFIX, strlen (ENGINE_BITMAP_PREFIX)) != 0)
          continue;
        json_object *args = json_object_new_object ();
        json_object_object_add (args, "node", json_object_new_string (disks[i].node));
        json_object_object_add (args, "name", json_object_new_string (bm));
        if (qmp_run (q, "block-dirty-bitmap-remove", args, QMP_COMMAND_TIMEOUT_MS) < 0) {
          qb_error_prefix ("removing bitmap %s of disk %s", bm, disks[i].name);
          disks_free (disks, nd);
          return -1;
        }
        count++;
        if (removed)
          removed (opaque, "bitmap", disks[i].name, bm);
      }
    disks_free (disks, nd);
  }
  return count;
}

/* The id of a "qmpbackup-" job still in QEMU into ID: 1 when there is one,
 * 0 when none, -1 on errors. */
int
jobs_find_ours (qmp *q, char *id, size_t len)
{
  json_object *list = query_jobs (q);
  if (!list)
    return -1;
  int found = 0;
  size_t n = json_object_array_length (list);
  for (size_t i = 0; i < n && !found; i++) {
    const char *jid = qmp_str (json_object_array_get_idx (list, i), "id");
    if (strncmp (jid, ENGINE_JOB_PREFIX, strlen (ENGINE_JOB_PREFIX)) == 0) {
      snprintf (id, len, "%s", jid);
      found = 1;
    }
  }
  json_object_put (list);
  return found;
}
