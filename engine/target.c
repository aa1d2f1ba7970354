/* qmpbackupfs — backup target images created by QEMU's blockdev-create (see
 * target.h).  The job's status is read from query-jobs; JOB_STATUS_CHANGE
 * events only wake the wait up early. */
#include "engine/target.h"
#include "engine/engine.h"
#include "common/error.h"
#include "common/util.h"

#include <stdlib.h>
#include <string.h>

#define TARGET_CLUSTER_SIZE 65536
#define TARGET_POLL_MS 200


/* Wait until job ID has concluded: 0 when it succeeded, -1 with its error
 * (or a transport error, a timeout after QMP_COMMAND_TIMEOUT_MS). */
static int
job_wait_concluded (qmp *q, const char *id)
{
  uint64_t deadline = qb_mono_ms () + QMP_COMMAND_TIMEOUT_MS;
  for (;;) {
    json_object *list = qmp_execute (q, "query-jobs", NULL, QMP_COMMAND_TIMEOUT_MS);
    if (!list)
      return -1;
    json_object *job = NULL;
    size_t n = json_object_is_type (list, json_type_array) ? json_object_array_length (list) : 0;
    for (size_t i = 0; i < n && !job; i++)
      if (strcmp (qmp_str (json_object_array_get_idx (list, i), "id"), id) == 0)
        job = json_object_array_get_idx (list, i);
    if (!job) {
      json_object_put (list);
      return qb_error_set (QB_EQMP, "QEMU lost the job %s that creates the image", id);
    }
    const char *st = qmp_str (job, "status");
    if (strcmp (st, "concluded") == 0 || strcmp (st, "null") == 0) {
      int rc = 0;
      if (*qmp_str (job, "error"))
        rc = qb_error_set (QB_EIO, "QEMU could not create the image: %s", qmp_str (job, "error"));
      json_object_put (list);
      return rc;
    }
    json_object_put (list);
    uint64_t now = qb_mono_ms ();
    if (now >= deadline)
      return qb_error_set (QB_ETIMEDOUT, "QEMU did not create the image within %d s",
                           QMP_COMMAND_TIMEOUT_MS / 1000);
    /* Sleep until the job's next status change or the next poll. */
    uint64_t until = now + TARGET_POLL_MS;
    for (;;) {
      now = qb_mono_ms ();
      if (now >= until)
        break;
      json_object *ev = qmp_next_event (q, (int) (until - now));
      if (!ev) {
        if (qb_error_code () == QB_ETIMEDOUT)
          break;
        return -1;                     /* VM gone, canceled, protocol error */
      }
      bool wake = strcmp (qmp_str (ev, "event"), "JOB_STATUS_CHANGE") == 0;
      json_object_put (ev);
      if (wake)
        break;
    }
  }
}

/* Run CMD {KEY: VALUE}, keeping the error already set (best effort). */
static void
run_quietly (qmp *q, const char *cmd, const char *key, const char *value)
{
  qb_err code = qb_error_code ();
  char *msg = qb_strdup (qb_error_msg ());
  json_object *args = json_object_new_object ();
  json_object_object_add (args, key, json_object_new_string (value));
  qmp_run (q, cmd, args, QMP_COMMAND_TIMEOUT_MS);
  qb_error_set (code, "%s", msg);
  free (msg);
}

int
target_image_create (qmp *q, const char *job, const char *node, const char *path,
                     uint64_t size, const char *backing)
{
  json_object *file = json_object_new_object ();
  json_object_object_add (file, "driver", json_object_new_string ("file"));
  json_object_object_add (file, "node-name", json_object_new_string (node));
  json_object_object_add (file, "filename", json_object_new_string (path));
  /* No fdatasync per metadata write: the store fsyncs the target when it
   * commits the point, and an uncommitted target is thrown away. */
  json_object *cache = json_object_new_object ();
  json_object_object_add (cache, "no-flush", json_object_new_boolean (true));
  json_object_object_add (file, "cache", cache);
  if (qmp_run (q, "blockdev-add", file, QMP_COMMAND_TIMEOUT_MS) < 0)
    return -1;

  json_object *opts = json_object_new_object ();
  json_object_object_add (opts, "driver", json_object_new_string ("qcow2"));
  json_object_object_add (opts, "file", json_object_new_string (node));
  json_object_object_add (opts, "size", json_object_new_int64 ((int64_t) size));
  json_object_object_add (opts, "version", json_object_new_string ("v3"));
  json_object_object_add (opts, "cluster-size", json_object_new_int64 (TARGET_CLUSTER_SIZE));
  if (backing) {
    json_object_object_add (opts, "backing-file", json_object_new_string (backing));
    json_object_object_add (opts, "backing-fmt", json_object_new_string ("qcow2"));
  }
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "job-id", json_object_new_string (job));
  json_object_object_add (args, "options", opts);
  int rc = qmp_run (q, "blockdev-create", args, QMP_COMMAND_TIMEOUT_MS);
  if (rc == 0) {
    rc = job_wait_concluded (q, job);
    run_quietly (q, "job-dismiss", "id", job);
  }
  if (rc == 0) {
    json_object *del = json_object_new_object ();
    json_object_object_add (del, "node-name", json_object_new_string (node));
    return qmp_run (q, "blockdev-del", del, QMP_COMMAND_TIMEOUT_MS);
  }
  run_quietly (q, "blockdev-del", "node-name", node);
  return -1;
}
