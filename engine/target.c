/* qmpbackupfs — backup target images (see target.h): written by the store
 * (qcow2_create_empty) and attached in one round trip, or, for what the
 * store does not write, created by QEMU's blockdev-create in three round
 * trips (file node and job; the wait, jobs_await; dismiss, file node gone,
 * image attached). */
#include "engine/target.h"
#include "engine/engine-int.h"
#include "common/error.h"
#include "common/util.h"
#include "store/qcow2.h"

#include <stdlib.h>
#include <string.h>

#define TARGET_CLUSTER_SIZE 65536


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

/* {KEY: VALUE} (new object). */
static json_object *
obj1 (const char *key, const char *value)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, key, json_object_new_string (value));
  return o;
}

int
target_image_create (qmp *q, const char *job, const char *node, const char *path,
                     uint64_t size, const char *backing, json_object *attach)
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

  /* The file node and the job in one round trip (a create after a failed
   * add fails too: its node is missing). */
  const char *cmds[4] = { "blockdev-add", "blockdev-create" };
  json_object *argv[4] = { file, args }, *res[4];
  int rc = qmp_execute_batch (q, cmds, argv, 2, res, QMP_COMMAND_TIMEOUT_MS);
  json_object_put (res[0]);
  json_object_put (res[1]);
  if (rc < 0) {
    if (res[0])                       /* the node was added: remove it */
      run_quietly (q, "blockdev-del", "node-name", node);
    json_object_put (attach);
    return -1;
  }
  char *ids[] = { (char *) job };
  json_object *list = NULL;
  rc = jobs_await (q, ids, 1, "concluded", QMP_COMMAND_TIMEOUT_MS, true, NULL, NULL, &list);
  if (rc < 0 && qb_error_code () == QB_ETIMEDOUT)
    qb_error_set (QB_ETIMEDOUT, "QEMU did not create the image within %d s",
                  QMP_COMMAND_TIMEOUT_MS / 1000);
  if (rc == 0) {
    json_object *j = NULL;
    size_t n = json_object_array_length (list);
    for (size_t i = 0; i < n; i++)
      if (strcmp (qmp_str (json_object_array_get_idx (list, i), "id"), job) == 0)
        j = json_object_array_get_idx (list, i);
    if (*qmp_str (j, "error"))
      rc = qb_error_set (QB_EIO, "QEMU could not create the image: %s", qmp_str (j, "error"));
  }
  json_object_put (list);
  if (rc < 0) {
    run_quietly (q, "job-dismiss", "id", job);
    run_quietly (q, "blockdev-del", "node-name", node);
    json_object_put (attach);
    return -1;
  }
  /* Dismiss the job, drop the file node and attach the image: one round trip. */
  char *tnode = attach ? qb_strdup (qmp_str (attach, "node-name")) : NULL;
  size_t nc = 2;
  cmds[0] = "job-dismiss";
  argv[0] = obj1 ("id", job);
  cmds[1] = "blockdev-del";
  argv[1] = obj1 ("node-name", node);
  if (attach) {
    cmds[nc] = "blockdev-add";
    argv[nc++] = attach;
  }
  qmp_execute_batch (q, cmds, argv, nc, res, QMP_COMMAND_TIMEOUT_MS);
  rc = 0;
  if (!res[1]) {
    /* The file node stays (the next backup's cleanup removes it: its name
     * is a target's); the image is not left attached. */
    qb_error_prefix ("removing the node that created the image");
    if (attach && res[2])
      run_quietly (q, "blockdev-del", "node-name", tnode);
    rc = -1;
  }
  else if (attach && !res[2]) {
    qb_error_prefix ("attaching it");
    rc = -1;
  }
  else
    qb_error_clear ();                /* a failed dismiss leaves a concluded job: harmless */
  for (size_t i = 0; i < nc; i++)
    json_object_put (res[i]);
  free (tnode);
  return rc;
}

int
target_image_write (const char *path, uint64_t size, const char *backing)
{
  /* For tests: QB_TARGET_CREATE_IN_QEMU=1 has QEMU make every target. */
  const char *s = getenv ("QB_TARGET_CREATE_IN_QEMU");
  if (s && strcmp (s, "1") == 0)
    return 1;
  return qcow2_create_empty (path, size, TARGET_CLUSTER_SIZE, backing, backing ? "qcow2" : NULL);
}

int
target_attach_all (qmp *q, json_object **attach, size_t n, bool *added, size_t *failed)
{
  int ret = 0;
  for (size_t i = 0; i < n; ) {
    const char *cmds[QMP_BATCH_MAX];
    json_object *argv[QMP_BATCH_MAX], *res[QMP_BATCH_MAX];
    size_t idx[QMP_BATCH_MAX], nb = 0;
    for (; i < n && nb < QMP_BATCH_MAX; i++) {
      added[i] = false;
      if (!attach[i])
        continue;
      cmds[nb] = "blockdev-add";
      argv[nb] = attach[i];
      attach[i] = NULL;
      idx[nb++] = i;
    }
    if (nb == 0)
      continue;
    /* Keep the first error: a later batch's success must not clear it. */
    qb_err code = qb_error_code ();
    char *msg = ret < 0 ? qb_strdup (qb_error_msg ()) : NULL;
    int rc = qmp_execute_batch (q, cmds, argv, nb, res, QMP_COMMAND_TIMEOUT_MS);
    for (size_t k = 0; k < nb; k++) {
      added[idx[k]] = res[k] != NULL;
      if (!res[k] && ret == 0) {
        *failed = idx[k];
        ret = -1;
      }
      json_object_put (res[k]);
    }
    if (msg) {
      qb_error_set (code, "%s", msg);
      free (msg);
    }
    else if (rc < 0 && ret == 0) {  /* no reply at all (connection lost) */
      *failed = idx[0];
      ret = -1;
    }
  }
  return ret;
}
