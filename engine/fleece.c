/* qmpbackupfs — image fleecing (see engine-int.h, "Fleecing").
 *
 * Without fleecing a guest write to a cluster the job has not copied yet
 * waits until QEMU has copied the old data to the backup target, so the
 * guest writes at the store's speed.  With fleecing the old data goes to a
 * local temporary qcow2 image instead:
 *
 *   device --> copy-before-write (target: fleece image) --> disk node
 *                      ^
 *   job reads <-- snapshot-access
 *
 * The filter is put above the disk's node by setting the device's "drive"
 * property (QEMU >= 6.2 allows that on a realized device), which keeps the
 * BlockBackend and its name.  The filter's snapshot is taken when it is
 * added, and writes between that and the device's switch would bypass it,
 * so the VM is stopped (when it ran) from before the filter is added until
 * the transaction has run: the snapshot, the new bitmaps and the jobs'
 * start are one point in time.  Dirty bitmaps stay on the disk's node,
 * where the guest's writes still land; an INC's job reads through a
 * temporary bitmap on the snapshot-access node that holds the chain
 * bitmap's bits (QEMU looks the bitmap up on the job's source node).
 *
 * QEMU 7.2's snapshot-access reads the right bytes but can report the
 * wrong block status: a range the guest changed during the job (seen with
 * zero writes of part of a cluster) is reported as zeros, and the job
 * writes zeros where the point in time had data.  Every cluster the guest
 * changed during the job is one the filter copied into the fleece image
 * first, and every other cluster the job read from the unchanged disk.  So
 * once the jobs have read everything (fleece_repair), a second job per
 * disk, with the same id, copies the clusters allocated in the fleece image
 * (sync "top": the image has no backing) over the target: the point in
 * time's bytes where the first job may have stored zeros.  One path for
 * every QEMU version: the tested path is the path used.
 *
 * Node names carry the first 8 digits of the target id like the target
 * nodes, so a crashed run's leftovers are found and removed by the next
 * backup into the same store (fleece_cleanup), and leftover fleece images
 * in the fleece directories are deleted by the next fleece_prepare. */
#include "engine/engine-int.h"
#include "engine/target.h"
#include "common/error.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FLEECE_NODE_PREFIX "qmpbackup-fl-"
#define FLEECE_CBW_PREFIX "qmpbackup-cbw-"
#define FLEECE_SNAP_PREFIX "qmpbackup-snap-"


/* True when NAME is PREFIX<TARGET's first 8 digits>-... (TARGET NULL: any). */
static bool
ours (const char *name, const char *prefix, const char *target)
{
  size_t plen = strlen (prefix);
  if (strncmp (name, prefix, plen) != 0)
    return false;
  return !target || (strlen (target) >= 8 && strncmp (name + plen, target, 8) == 0
                     && name[plen + 8] == '-');
}

/* Run CMD with ARGS ignoring the cancel flag; 0 or -1. */
static int
run_uncancelable (qmp *q, const char *cmd, json_object *args)
{
  qmp_set_cancel (q, NULL);
  return qmp_run (q, cmd, args, QMP_COMMAND_TIMEOUT_MS);
}

/* blockdev-del NODE; 0 or -1. */
static int
node_del (qmp *q, const char *node)
{
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "node-name", json_object_new_string (node));
  return run_uncancelable (q, "blockdev-del", args);
}

/* qom-set QDEV's "drive" to NODE; 0 or -1. */
static int
set_drive (qmp *q, const char *qdev, const char *node)
{
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "path", json_object_new_string (qdev));
  json_object_object_add (args, "property", json_object_new_string ("drive"));
  json_object_object_add (args, "value", json_object_new_string (node));
  return qmp_run (q, "qom-set", args, QMP_COMMAND_TIMEOUT_MS);
}

/* Delete the fleece images of TARGET left in DIR (best effort). */
static void
sweep_dir (const char *dir, const char *target)
{
  DIR *dh = opendir (dir);
  if (!dh)
    return;
  char prefix[64];
  snprintf (prefix, sizeof prefix, FLEECE_FILE_PREFIX "%.8s-", target);
  struct dirent *de;
  while ((de = readdir (dh)))
    if (strncmp (de->d_name, prefix, strlen (prefix)) == 0)
      unlinkat (dirfd (dh), de->d_name, 0);
  closedir (dh);
}

/* Unlink PATH when its name is a fleece image's (never anything else). */
static void
unlink_fleece (const char *path)
{
  const char *base = strrchr (path, '/');
  base = base ? base + 1 : path;
  if (strncmp (base, FLEECE_FILE_PREFIX, strlen (FLEECE_FILE_PREFIX)) == 0)
    unlink (path);
}

/* The qdev path of the device on NODE from query-block (new string), or NULL. */
static char *
qdev_of (qmp *q, const char *node)
{
  json_object *list = qmp_execute (q, "query-block", NULL, QMP_COMMAND_TIMEOUT_MS);
  if (!list)
    return NULL;
  char *res = NULL;
  size_t n = json_object_is_type (list, json_type_array) ? json_object_array_length (list) : 0;
  for (size_t i = 0; i < n && !res; i++) {
    json_object *b = json_object_array_get_idx (list, i), *ins;
    if (json_object_object_get_ex (b, "inserted", &ins) && strcmp (qmp_str (ins, "node-name"), node) == 0
        && *qmp_str (b, "qdev"))
      res = qb_strdup (qmp_str (b, "qdev"));
  }
  json_object_put (list);
  if (!res)
    qb_error_set (QB_EQMP, "no device uses node %s (a disk without a device cannot be fleeced)", node);
  return res;
}

/* The directory for DISK's fleece image (new string): one for all disks. */
static char *
fleece_dir_of (const eng_run *r, const eng_disk *d)
{
  (void) d;
  return qb_strdup (r->opts->fleece);
}

/* Create DISK's fleece image in DIR and attach it; 0 or -1. */
static int
fleece_add (eng_run *r, eng_disk *d, const char *dir, size_t i)
{
  struct stat sb;
  if (stat (dir, &sb) < 0)
    return qb_error_set (QB_EINVAL, "fleece directory %s: %s", dir, strerror (errno));
  if (!S_ISDIR (sb.st_mode))
    return qb_error_set (QB_EINVAL, "fleece directory %s: not a directory", dir);
  snprintf (d->flnode, sizeof d->flnode, FLEECE_NODE_PREFIX "%.8s-%u", r->target, (unsigned) i);
  snprintf (d->cbwnode, sizeof d->cbwnode, FLEECE_CBW_PREFIX "%.8s-%u", r->target, (unsigned) i);
  snprintf (d->snapnode, sizeof d->snapnode, FLEECE_SNAP_PREFIX "%.8s-%u", r->target, (unsigned) i);
  snprintf (d->flbitmap, sizeof d->flbitmap, "qmpbackup-fleece-%.8s-%u", r->target, (unsigned) i);
  d->flpath = qb_asprintf ("%s/" FLEECE_FILE_PREFIX "%.8s-%u-%ld.qcow2", dir, r->target,
                           (unsigned) i, (long) getpid ());
  /* An empty 0600 file first: qemu-img keeps the mode of a file it writes over. */
  int fd = open (d->flpath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    qb_error_set (errno == ENOSPC ? QB_ENOSPC : QB_EIO, "creating fleece image %s: %s",
                  d->flpath, strerror (errno));
    free (d->flpath);
    d->flpath = NULL;
    return -1;
  }
  close (fd);
  /* The store's writer makes the same empty image qemu-img would (see
     target_image_write); qemu-img only for what it does not make. */
  int w = target_image_write (d->flpath, d->vd->size, NULL);
  char size[32];
  snprintf (size, sizeof size, "%llu", (unsigned long long) d->vd->size);
  char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1",
                   d->flpath, size, NULL };
  if (w < 0 || (w == 1 && qb_run (argv, NULL) < 0)) {
    qb_error_prefix ("creating the fleece image of disk %s in %s", d->vd->name, dir);
    return -1;
  }
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "driver", json_object_new_string ("qcow2"));
  json_object_object_add (args, "node-name", json_object_new_string (d->flnode));
  json_object *file = json_object_new_object ();
  json_object_object_add (file, "driver", json_object_new_string ("file"));
  json_object_object_add (file, "filename", json_object_new_string (d->flpath));
  json_object_object_add (args, "file", file);
  json_object_object_add (args, "backing", NULL);
  json_object_object_add (args, "discard", json_object_new_string ("unmap"));
  if (qmp_run (r->q, "blockdev-add", args, QMP_COMMAND_TIMEOUT_MS) < 0) {
    qb_error_prefix ("attaching the fleece image of disk %s", d->vd->name);
    return -1;
  }
  d->fl_added = true;
  d->qdev = qdev_of (r->q, d->vd->node);
  return d->qdev ? 0 : -1;
}

/* Decide on fleecing and create the fleece images. */
int
fleece_prepare (eng_run *r)
{
  const char *f = r->opts->fleece;
  r->fleecing = false;
  /* Off unless asked for. */
  if (!f || !*f || strcmp (f, "off") == 0 || r->opts->pause)
    return 0;                /* (a paused guest does not feel the backup) */
  /* A crashed run's images first (the store lock keeps this target's runs apart). */
  for (size_t i = 0; i < r->n; i++) {
    char *dir = fleece_dir_of (r, &r->d[i]);
    if (dir)
      sweep_dir (dir, r->target);
    free (dir);
  }
  qb_error_clear ();
  for (size_t i = 0; i < r->n; i++) {
    eng_disk *d = &r->d[i];
    char *dir = fleece_dir_of (r, d);
    int rc = dir ? fleece_add (r, d, dir, i) : -1;
    free (dir);
    if (rc < 0) {
      fleece_remove (r);
      qb_error_prefix ("fleecing (--fleece-dir %s; \"off\" backs up without it)", f);
      return -1;
    }
  }
  r->fleecing = true;
  if (r->res)
    r->res->fleeced = true;
  return 0;
}

/* Insert the filters and snapshot-access nodes with the VM stopped. */
int
fleece_insert (eng_run *r)
{
  if (!r->fleecing)
    return 0;
  json_object *st = qmp_execute (r->q, "query-status", NULL, QMP_COMMAND_TIMEOUT_MS);
  if (!st)
    return -1;
  json_object *running;
  bool run = json_object_object_get_ex (st, "running", &running) && json_object_get_boolean (running);
  json_object_put (st);
  if (run) {
    r->fl_stopped = true;      /* "cont" owed from here on, even if "stop" seems to fail */
    if (qmp_run (r->q, "stop", NULL, QMP_COMMAND_TIMEOUT_MS) < 0) {
      qb_error_prefix ("stopping VM %s for the moment the fleecing filter goes in", r->vm);
      return -1;
    }
  }
  for (size_t i = 0; i < r->n; i++) {
    eng_disk *d = &r->d[i];
    json_object *args = json_object_new_object ();
    json_object_object_add (args, "driver", json_object_new_string ("copy-before-write"));
    json_object_object_add (args, "node-name", json_object_new_string (d->cbwnode));
    json_object_object_add (args, "file", json_object_new_string (d->vd->node));
    json_object_object_add (args, "target", json_object_new_string (d->flnode));
    /* A fleece image that cannot take the old data (full, I/O error) fails
     * the backup, never the guest's write (QEMU's default). */
    json_object_object_add (args, "on-cbw-error", json_object_new_string ("break-snapshot"));
    if (qmp_run (r->q, "blockdev-add", args, QMP_COMMAND_TIMEOUT_MS) < 0) {
      qb_error_prefix ("adding the fleecing filter of disk %s", d->vd->name);
      return -1;
    }
    d->cbw_added = true;
    if (set_drive (r->q, d->qdev, d->cbwnode) < 0) {
      qb_error_prefix ("putting the fleecing filter under device %s of disk %s", d->qdev,
                       d->vd->name);
      return -1;
    }
    d->swapped = true;
    args = json_object_new_object ();
    json_object_object_add (args, "driver", json_object_new_string ("snapshot-access"));
    json_object_object_add (args, "node-name", json_object_new_string (d->snapnode));
    json_object_object_add (args, "file", json_object_new_string (d->cbwnode));
    if (qmp_run (r->q, "blockdev-add", args, QMP_COMMAND_TIMEOUT_MS) < 0) {
      qb_error_prefix ("adding the snapshot-access node of disk %s", d->vd->name);
      return -1;
    }
    d->snap_added = true;
  }
  return 0;
}

/* The node DISK's job reads. */
const char *
fleece_source (const eng_run *r, const eng_disk *d)
{
  return r->fleecing ? d->snapnode : d->vd->node;
}

/* The bitmap an INC job of DISK uses. */
const char *
fleece_bitmap (const eng_run *r, const eng_disk *d)
{
  return r->fleecing ? d->flbitmap : d->bitmap;
}

/* Append one transaction action TYPE with DATA to ACTIONS. */
static void
action (json_object *actions, const char *type, json_object *data)
{
  json_object *a = json_object_new_object ();
  json_object_object_add (a, "type", json_object_new_string (type));
  json_object_object_add (a, "data", data);
  json_object_array_add (actions, a);
}

/* The temporary bitmap of an INC from a snapshot-access node. */
void
fleece_txn_actions (const eng_run *r, const eng_disk *d, json_object *actions)
{
  if (!r->fleecing || r->level != BACKUP_INC)
    return;
  const vm_bitmap *b = disks_find_bitmap (d->vd, d->bitmap);
  json_object *add = json_object_new_object ();
  json_object_object_add (add, "node", json_object_new_string (d->snapnode));
  json_object_object_add (add, "name", json_object_new_string (d->flbitmap));
  if (b && b->granularity)
    json_object_object_add (add, "granularity", json_object_new_int64 ((int64_t) b->granularity));
  json_object_object_add (add, "persistent", json_object_new_boolean (false));
  json_object_object_add (add, "disabled", json_object_new_boolean (true));
  action (actions, "block-dirty-bitmap-add", add);
  json_object *m = json_object_new_object ();
  json_object_object_add (m, "node", json_object_new_string (d->snapnode));
  json_object_object_add (m, "target", json_object_new_string (d->flbitmap));
  json_object *src = json_object_new_object ();
  json_object_object_add (src, "node", json_object_new_string (d->vd->node));
  json_object_object_add (src, "name", json_object_new_string (d->bitmap));
  json_object *srcs = json_object_new_array ();
  json_object_array_add (srcs, src);
  json_object_object_add (m, "bitmaps", srcs);
  action (actions, "block-dirty-bitmap-merge", m);
}

/* After the jobs reached "pending": finalize them, then copy each fleece
 * image's allocated clusters over its target with a job of the same id. */
int
fleece_repair (eng_run *r, char *const *ids)
{
  if (!r->fleecing)
    return 0;
  eng_report (r, "copying the blocks changed meanwhile from the fleece images");
  if (jobs_finalize (r->q, ids, r->n) < 0)
    return -1;
  for (size_t i = 0; i < r->n; i++) {
    eng_disk *d = &r->d[i];
    json_object *args = json_object_new_object ();
    json_object_object_add (args, "job-id", json_object_new_string (d->job));
    json_object_object_add (args, "device", json_object_new_string (d->flnode));
    json_object_object_add (args, "target", json_object_new_string (d->tnode));
    /* "top": only what the filter saved (the image has no backing).  Never
     * compressed: QEMU writes compressed clusters only where none is. */
    json_object_object_add (args, "sync", json_object_new_string ("top"));
    json_object_object_add (args, "auto-finalize", json_object_new_boolean (false));
    json_object_object_add (args, "auto-dismiss", json_object_new_boolean (false));
    if (r->opts->speed)
      json_object_object_add (args, "speed", json_object_new_int64 ((int64_t) r->opts->speed));
    if (qmp_run (r->q, "blockdev-backup", args, QMP_COMMAND_TIMEOUT_MS) < 0) {
      qb_error_prefix ("copying the blocks disk %s changed during the backup from its fleece "
                       "image", d->vd->name);
      return -1;
    }
  }
  if (jobs_wait (r->q, ids, r->n, "pending", NULL, NULL) < 0) {
    qb_error_prefix ("copying the blocks changed during the backup from the fleece images");
    return -1;
  }
  return 0;
}

/* Send the owed "cont". */
void
fleece_resume (eng_run *r)
{
  if (!r->fl_stopped)
    return;
  r->fl_stopped = false;
  qb_err code = qb_error_code ();
  char *msg = qb_strdup (qb_error_msg ());
  if ((!r->q || run_uncancelable (r->q, "cont", NULL) < 0) && r->res)
    snprintf (r->res->pause_note, sizeof r->res->pause_note, "WARNING: VM %s stays paused, "
              "resuming it failed (%s); resume it with the QMP command \"cont\"", r->vm,
              r->q ? qb_error_msg () : "no QMP connection");
  if (code != QB_OK)
    qb_error_set (code, "%s", msg);
  else
    qb_error_clear ();
  free (msg);
}

/* Restore the graph and delete the fleece nodes and images. */
int
fleece_remove (eng_run *r)
{
  qb_err code = qb_error_code ();
  char *msg = qb_strdup (qb_error_msg ());
  char *fail = NULL;
  fleece_resume (r);
  for (size_t i = 0; r->q && i < r->n; i++) {
    eng_disk *d = &r->d[i];
    if (d->snap_added && node_del (r->q, d->snapnode) == 0)
      d->snap_added = false;
    if (d->swapped) {
      qmp_set_cancel (r->q, NULL);
      if (set_drive (r->q, d->qdev, d->vd->node) == 0)
        d->swapped = false;
      else if (!fail)
        fail = qb_asprintf ("putting device %s back on node %s: %s", d->qdev, d->vd->node,
                            qb_error_msg ());
    }
    if (d->cbw_added && !d->swapped && node_del (r->q, d->cbwnode) == 0)
      d->cbw_added = false;
    if (d->fl_added && !d->cbw_added && node_del (r->q, d->flnode) == 0)
      d->fl_added = false;
  }
  for (size_t i = 0; i < r->n; i++) {
    eng_disk *d = &r->d[i];
    if (d->flpath)
      unlink (d->flpath);
    free (d->flpath);
    d->flpath = NULL;
    free (d->qdev);
    d->qdev = NULL;
  }
  r->fleecing = false;
  if (fail)
    qb_error_set (code != QB_OK ? code : QB_EQMP, "%s%s%s", code != QB_OK ? msg : "",
                  code != QB_OK ? "; " : "", fail);
  else if (code != QB_OK)
    qb_error_set (code, "%s", msg);
  else
    qb_error_clear ();
  free (msg);
  free (fail);
  return fail ? -1 : 0;
}

/* The node name of NODE's child CHILD in GRAPH (x-debug-query-block-graph), or NULL. */
static const char *
graph_child (json_object *graph, const char *node, const char *child)
{
  json_object *nodes, *edges;
  if (!json_object_object_get_ex (graph, "nodes", &nodes)
      || !json_object_object_get_ex (graph, "edges", &edges))
    return NULL;
  int64_t pid = -1;
  size_t nn = json_object_array_length (nodes);
  for (size_t i = 0; i < nn; i++) {
    json_object *n = json_object_array_get_idx (nodes, i), *id;
    if (strcmp (qmp_str (n, "type"), "block-driver") == 0 && strcmp (qmp_str (n, "name"), node) == 0
        && json_object_object_get_ex (n, "id", &id))
      pid = json_object_get_int64 (id);
  }
  size_t ne = json_object_array_length (edges);
  for (size_t i = 0; pid >= 0 && i < ne; i++) {
    json_object *e = json_object_array_get_idx (edges, i), *p, *c;
    if (json_object_object_get_ex (e, "parent", &p) && json_object_get_int64 (p) == pid
        && strcmp (qmp_str (e, "name"), child) == 0 && json_object_object_get_ex (e, "child", &c)) {
      int64_t cid = json_object_get_int64 (c);
      for (size_t k = 0; k < nn; k++) {
        json_object *n = json_object_array_get_idx (nodes, k), *id;
        if (json_object_object_get_ex (n, "id", &id) && json_object_get_int64 (id) == cid)
          return qmp_str (n, "name");
      }
    }
  }
  return NULL;
}

/* Delete the nodes of TARGET named PREFIX...; the fleece images' files too.
 * Adds the number deleted to *COUNT; 0 or -1. */
static int
del_prefixed (qmp *q, const char *target, const char *prefix, int *count,
              engine_removed_fn removed, void *opaque)
{
  json_object *qargs = json_object_new_object ();
  json_object_object_add (qargs, "flat", json_object_new_boolean (1));
  json_object *nodes = qmp_execute (q, "query-named-block-nodes", qargs, QMP_COMMAND_TIMEOUT_MS);
  if (!nodes)
    return -1;
  bool image = strcmp (prefix, FLEECE_NODE_PREFIX) == 0;
  size_t n = json_object_is_type (nodes, json_type_array) ? json_object_array_length (nodes) : 0;
  for (size_t i = 0; i < n; i++) {
    json_object *nd = json_object_array_get_idx (nodes, i);
    const char *name = qmp_str (nd, "node-name");
    if (!ours (name, prefix, target))
      continue;
    char *file = image ? qb_strdup (qmp_str (nd, "file")) : NULL;
    if (node_del (q, name) == 0) {
      (*count)++;
      if (file)
        unlink_fleece (file);
      if (removed)
        removed (opaque, "node", NULL, name);
    }
    free (file);
  }
  json_object_put (nodes);
  return 0;
}

/* Remove a crashed run's fleecing from QEMU. */
int
fleece_cleanup (qmp *q, const char *target, engine_removed_fn removed, void *opaque)
{
  int count = 0;
  /* The snapshot-access nodes first: while one exists the filter does not
   * share writes on its disk node, and the device could not go back. */
  if (del_prefixed (q, target, FLEECE_SNAP_PREFIX, &count, removed, opaque) < 0)
    return -1;
  json_object *blocks = qmp_execute (q, "query-block", NULL, QMP_COMMAND_TIMEOUT_MS);
  if (!blocks)
    return -1;
  json_object *graph = NULL;
  size_t nb = json_object_is_type (blocks, json_type_array) ? json_object_array_length (blocks) : 0;
  for (size_t i = 0; i < nb; i++) {
    json_object *b = json_object_array_get_idx (blocks, i), *ins;
    if (!json_object_object_get_ex (b, "inserted", &ins))
      continue;
    const char *top = qmp_str (ins, "node-name");
    if (!ours (top, FLEECE_CBW_PREFIX, target) || !*qmp_str (b, "qdev"))
      continue;
    if (!graph && !(graph = qmp_execute (q, "x-debug-query-block-graph", NULL, QMP_COMMAND_TIMEOUT_MS))) {
      json_object_put (blocks);
      return -1;
    }
    const char *below = graph_child (graph, top, "file");
    if (!below || set_drive (q, qmp_str (b, "qdev"), below) < 0) {
      char *why = qb_strdup (below ? qb_error_msg () : "its disk's node was not found");
      qb_error_set (QB_EQMP, "device %s is still on the fleecing filter %s of a crashed "
                    "backup, and putting it back on its disk failed: %s", qmp_str (b, "qdev"),
                    top, why);
      free (why);
      json_object_put (graph);
      json_object_put (blocks);
      return -1;
    }
  }
  json_object_put (graph);
  json_object_put (blocks);
  /* Then the filters, then the fleece images. */
  if (del_prefixed (q, target, FLEECE_CBW_PREFIX, &count, removed, opaque) < 0
      || del_prefixed (q, target, FLEECE_NODE_PREFIX, &count, removed, opaque) < 0)
    return -1;
  return count;
}

/* Say what a job's failure means when the fleecing snapshot broke. */
void
fleece_explain (eng_run *r)
{
  if (!r->fleecing || !strstr (qb_error_msg (), "Permission denied"))
    return;
  char *dir = r->n ? qb_strdup (r->d[0].flpath) : NULL;
  qb_error_prefix ("the fleecing snapshot broke: a fleece image in %s could not take the "
                   "old data (full, or an I/O error), so the backup stopped and the guest "
                   "went on; free space there, give another --fleece-dir, or \"off\"",
                   dir ? dirname (dir) : "the fleece directory");
  free (dir);
}
