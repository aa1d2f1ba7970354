/* qmprebase sync — copy new restore points from one store to another (see sync.h).
 *
 * The source is read through the store's read API: store_scan_vm finds the
 * layers, store_layer_open opens them (never through a link),
 * store_record_read gives the point records.  The destination is written
 * beneath descriptors opened without following links: every file goes to a
 * ".tmp-" name (0600, O_EXCL), is fsynced, and gets its final name by a
 * hard link (which never replaces a file) and an unlink of the temp;
 * folders are 0700 and fsynced after each new name. */
#include "sync.h"
#include "sync-int.h"

#include "store/store.h"
#include "common/error.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The command line. */
typedef struct sync_opts {
  const char *from;
  const char *to;
  const char *vm;
  bool dry_run;
} sync_opts;

/* What a run did. */
typedef struct sync_stats {
  size_t points;          /* points copied */
  size_t points_there;    /* points already at the destination */
  size_t layers;          /* layer files copied */
  size_t layers_there;    /* layer files already there, the same */
  uint64_t bytes;         /* bytes of layer data copied */
  size_t damaged;         /* points left out: damaged in the source */
} sync_stats;

/* Print the help of `qmprebase sync`. */
static void
sync_help (void)
{
  printf ("usage: qmprebase sync --from STORE --to STORE2 [--vm NAME] [--dry-run]\n"
          "\n"
          "Copy the restore points of STORE that STORE2 does not have yet, oldest first:\n"
          "each point's layer files (holes stay holes; read back and compared after\n"
          "writing), their .chain records, then the point's record last, so STORE2 only\n"
          "ever lists complete points.  Layers already in STORE2 with the same size and\n"
          "record are skipped; a layer there with other content is an error, never\n"
          "overwritten.  Holds each destination VM's lock.  Run it again after an\n"
          "interruption: it removes what the interrupted run left and carries on.\n"
          "STORE2 is created (0700) when missing; it can be mounted on its own.\n"
          "\n"
          "  --from STORE          the store to copy from (read only)\n"
          "  --to STORE2           the store to copy to (another volume, a plain folder)\n"
          "  --vm NAME             only this VM (default: every VM of STORE)\n"
          "  --dry-run             say what would be copied, change nothing\n"
          "  -h, --help            this help\n"
          "\n"
          "Exit codes: 0 ok, 1 failed, 2 usage error.\n");
}

/* A usage error: the message, the hint; returns exit code 2. */
static int
sync_usage (const char *msg, const char *arg)
{
  fprintf (stderr, "qmprebase sync: %s%s\n\nTry 'qmprebase sync --help'.\n", msg, arg ? arg : "");
  return 2;
}

/* Compare two strings through pointers (qsort). */
static int
sync_str_cmp (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* True for a layer's path below its VM folder: 2 or 3 safe components ("disk/FILE",
 * "YYYY-MM/disk/FILE"). */
static bool
sync_rel_ok (const char *rel)
{
  char *copy = qb_strdup (rel), *save = NULL;
  size_t n = 0;
  bool ok = rel[0] != '/' && rel[strlen (rel) - 1] != '/' && !strstr (rel, "//");
  for (char *c = strtok_r (copy, "/", &save); c && ok; c = strtok_r (NULL, "/", &save)) {
    ok = qb_name_is_safe (c) && c[0] != '.';
    n++;
  }
  free (copy);
  return ok && (n == 2 || n == 3);
}

/* The ids of VM's point records in store folder ROOTFD (ROOT in messages),
 * sorted (commit order); *N of them.  NULL with *N = 0 when there are none;
 * sets the error and returns NULL with *N = (size_t) -1 on failure. */
static char **
sync_point_ids (int rootfd, const char *root, const char *vm, size_t *n)
{
  char *rel = qb_asprintf ("%s/" SYNC_POINTS, vm);
  char *where = qb_asprintf ("%s/%s", root, rel);
  *n = 0;
  int pfd = qb_openat_nofollow (rootfd, rel, O_RDONLY | O_DIRECTORY);
  if (pfd < 0) {
    if (errno != ENOENT) {
      qb_error_set_errno (errno, "open %s", where);
      *n = (size_t) -1;
    }
    free (rel);
    free (where);
    return NULL;
  }
  DIR *d = fdopendir (pfd);
  char **ids = NULL;
  size_t k = 0;
  struct dirent *de;
  while (d && (de = readdir (d)) != NULL) {
    size_t l = strlen (de->d_name);
    if (de->d_name[0] == '.' || l <= 5 || l > 60 || strcmp (de->d_name + l - 5, ".json") != 0)
      continue;
    char *id = qb_strdup (de->d_name);
    id[l - 5] = '\0';
    int64_t t;
    int seq;
    if (store_id_parse (id, &t, &seq) != 0 || !qb_name_is_safe (id)) {
      free (id);
      continue;
    }
    ids = qb_realloc (ids, (k + 1) * sizeof *ids);
    ids[k++] = id;
  }
  if (d)
    closedir (d);
  else
    close (pfd);
  qsort (ids, k, sizeof *ids, sync_str_cmp);
  *n = k;
  free (rel);
  free (where);
  return ids;
}

/* True when disk folder DFD holds a temp of a layer of point ID. */
static bool
sync_has_temp (int dfd, const char *id)
{
  static const char *const kinds[] = { "FULL", "INC", "COPY" };
  for (size_t k = 0; k < 3; k++) {
    char *t = qb_asprintf (SYNC_TMP "%s-%s", kinds[k], id);
    bool yes = faccessat (dfd, t, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
    free (t);
    if (yes)
      return true;
  }
  return false;
}

/* True when point ID of VM is being committed in the source store at
 * SRCFD right now: a temp of one of its layers is in a disk folder (a
 * backup names its layers after writing the record). */
static bool
sync_committing (int srcfd, const char *vm, const char *id)
{
  int vfd = qb_openat_nofollow (srcfd, vm, O_RDONLY | O_DIRECTORY);
  DIR *d = vfd >= 0 ? fdopendir (vfd) : NULL;
  if (!d && vfd >= 0)
    close (vfd);
  bool yes = false;
  struct dirent *de;
  while (d && !yes && (de = readdir (d)) != NULL) {
    if (de->d_name[0] == '.' || !qb_name_is_safe (de->d_name))
      continue;
    int dfd = openat (dirfd (d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
      continue;
    yes = sync_has_temp (dfd, id);
    if (!yes && store_is_month (de->d_name)) {
      DIR *m = fdopendir (dup (dfd));
      struct dirent *me;
      while (m && !yes && (me = readdir (m)) != NULL) {
        if (me->d_name[0] == '.' || !qb_name_is_safe (me->d_name))
          continue;
        int mfd = openat (dirfd (m), me->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (mfd >= 0) {
          yes = sync_has_temp (mfd, id);
          close (mfd);
        }
      }
      if (m)
        closedir (m);
    }
    close (dfd);
  }
  if (d)
    closedir (d);
  return yes;
}

/* The layers of point ID in scan V (one per disk that has one), *N of
 * them: a malloc'd array of pointers into V. */
static const store_layer **
sync_point_layers (const store_vm *v, const char *id, size_t *n)
{
  const store_layer **out = NULL;
  size_t k = 0;
  for (size_t d = 0; d < v->ndisks; d++)
    for (size_t c = 0; c < v->disks[d].nchains; c++)
      for (size_t l = 0; l < v->disks[d].chains[c].n; l++)
        if (strcmp (v->disks[d].chains[c].layers[l].id, id) == 0) {
          out = qb_realloc (out, (k + 1) * sizeof *out);
          out[k++] = &v->disks[d].chains[c].layers[l];
        }
  *n = k;
  return out;
}

/* Copy the record of point ID of VM (.points/ID.json, its bytes as they
 * are) from SRCFD to DSTFD (DROOT in messages), through a temp.  0 or -1. */
static int
sync_record (int srcfd, const char *sroot, int dstfd, const char *droot, const char *vm,
             const char *id)
{
  char *rel = qb_asprintf ("%s/" SYNC_POINTS, vm);
  char *sw = qb_asprintf ("%s/%s", sroot, rel), *dw = qb_asprintf ("%s/%s", droot, rel);
  char *name = qb_asprintf ("%s.json", id);
  char *sp = qb_asprintf ("%s/%s", sw, name), *dp = qb_asprintf ("%s/%s", dw, name);
  char *data = NULL;
  size_t len = 0;
  int ret = -1;
  int sfd = sync_dir_open (srcfd, rel, false, sw);
  int dfd = sfd < 0 ? -1 : sync_dir_open (dstfd, rel, true, dw);
  int r = dfd < 0 ? -1 : sync_small_read (sfd, name, &data, &len, sp);
  if (r == 0)
    qb_error_set (QB_ENOENT, "%s is gone (the point was removed in the source meanwhile)", sp);
  else if (r == 1)
    ret = sync_small_write (dfd, name, data, len, dp);
  if (sfd >= 0)
    close (sfd);
  if (dfd >= 0)
    close (dfd);
  free (data);
  free (rel);
  free (sw);
  free (dw);
  free (name);
  free (sp);
  free (dp);
  return ret;
}

/* Copy (or with DRY_RUN, describe) point ID of VM: every disk's layer and
 * .chain files, then the record.  The destination store's root DROOT is open
 * at DSTFD (-1 in a dry run into a store that does not exist yet).  The
 * point's layers are those of the scan V with its id.  0; 1 when the point
 * is still being committed in the source (stop here, no error); 2 when it
 * is not copied (damaged in the source: warned, go on); or -1. */
static int
sync_point (store *src, int srcfd, const char *droot, int dstfd, const store_vm *v,
            const char *id, bool dry_run, sync_stats *stats)
{
  const char *vm = v->name;
  int ret = 0;
  size_t copied = 0, nl = 0;
  uint64_t bytes0 = stats->bytes;
  char *prefix = qb_asprintf ("%s/%s/", store_root (src), vm);
  const store_layer **ls = sync_point_layers (v, id, &nl);
  /* Decide before copying anything: the point is copied whole or not at all. */
  if (sync_committing (srcfd, vm, id)) {
    printf ("%s: point %s is still being committed in the source: it is copied next time\n",
            vm, id);
    ret = 1;
  }
  else if (nl == 0) {
    fprintf (stderr, "qmprebase sync: warning: %s: point %s has a record but no layer in the "
             "source: not copied\n", vm, id);
    ret = 2;
  }
  for (size_t i = 0; i < nl && ret == 0; i++) {
    const store_layer *L = ls[i];
    if (L->busy)
      ret = qb_error_set (QB_EBUSY, "a removal of restore points is under way or was "
                          "interrupted in the source (%s%s): copied up to the point before "
                          "%s; the next backup, mount or qmprebase run on the source finishes "
                          "it, then run sync again", prefix, ".rewrite.json", id);
    else if (L->damage) {
      fprintf (stderr, "qmprebase sync: warning: %s: point %s is damaged in the source (%s): "
               "not copied\n", vm, id, L->damage);
      stats->damaged++;
      ret = 2;
    }
    else if (strncmp (L->path, prefix, strlen (prefix)) != 0
             || !sync_rel_ok (L->path + strlen (prefix)))
      ret = qb_error_set (QB_EDAMAGED, "%s: an unexpected layer path", L->path);
  }
  for (size_t i = 0; i < nl && ret == 0; i++) {
    const store_layer *L = ls[i];
    const char *rel = L->path + strlen (prefix);
    char *dirrel = qb_strdup (rel);
    *strrchr (dirrel, '/') = '\0';
    const char *name = strrchr (rel, '/') + 1;
    char *svm = qb_asprintf ("%s/%s", vm, dirrel);
    char *sdir = qb_asprintf ("%s/%s", store_root (src), svm);
    char *ddir = qb_asprintf ("%s/%s", droot, svm);
    char *dpath = qb_asprintf ("%s/%s", ddir, name);
    int sdfd = sync_dir_open (srcfd, svm, false, sdir);
    int ddfd = dstfd < 0 ? -1 : sync_dir_open (dstfd, svm, !dry_run, ddir);
    int sfd = sdfd < 0 ? -1 : store_layer_open (src, L);
    if (sdfd < 0 || sfd < 0)
      ret = -1;
    if (dry_run && ddfd < 0)
      qb_error_clear ();
    else if (ddfd < 0)
      ret = -1;
    struct stat ss, ds;
    int dfd = ret == 0 && ddfd >= 0 ? openat (ddfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
    if (ret == 0 && dfd < 0 && ddfd >= 0 && errno != ENOENT)
      ret = qb_error_set_errno (errno, "open %s%s", dpath,
                                errno == ELOOP ? " (a symbolic link is never followed)" : "");
    if (ret == 0 && fstat (sfd, &ss) == -1)
      ret = qb_error_set_errno (errno, "stat %s", L->path);
    if (ret == 0 && dfd >= 0) {
      /* Already there: the same size and the same record, or the same bytes. */
      bool dst_rec = false;
      if (fstat (dfd, &ds) == -1)
        ret = qb_error_set_errno (errno, "stat %s", dpath);
      else if (!S_ISREG (ds.st_mode))
        ret = qb_error_set (QB_EDAMAGED, "%s is not a regular file: not overwritten", dpath);
      else if (ds.st_size != ss.st_size)
        ret = qb_error_set (QB_EDAMAGED, "%s (%lld bytes) differs from %s (%lld bytes): not "
                            "overwritten (move the destination's file away if it is wrong)",
                            dpath, (long long) ds.st_size, L->path, (long long) ss.st_size);
      else if (!sync_same_record (sdfd, ddfd, name, &dst_rec)) {
        int same = dst_rec ? 0 : sync_same_content (sfd, L->path, dfd, dpath, (uint64_t) ss.st_size);
        if (same == 0)
          ret = qb_error_set (QB_EDAMAGED, "%s differs from %s (%s): not overwritten (move "
                              "the destination's file away if it is wrong)", dpath, L->path,
                              dst_rec ? "their .chain records differ" : "other bytes");
        else if (same < 0)
          ret = -1;
      }
      if (ret == 0) {
        stats->layers_there++;
        if (dry_run)
          printf ("%s: point %s: %s is already there\n", vm, id, dpath);
      }
    }
    else if (ret == 0 && dry_run) {
      printf ("%s: point %s: would copy %s (%lld bytes)\n", vm, id, L->path, (long long) ss.st_size);
      stats->bytes += (uint64_t) ss.st_blocks * 512 < (uint64_t) ss.st_size
                      ? (uint64_t) ss.st_blocks * 512 : (uint64_t) ss.st_size;
    }
    else if (ret == 0) {
      ret = sync_copy_layer (sfd, L->path, ddfd, name, ddir, &stats->bytes);
      if (ret == 0) {
        stats->layers++;
        copied++;
      }
    }
    if (ret == 0 && (!dry_run || ddfd >= 0))
      ret = sync_chain_files (sdfd, sdir, ddfd, ddir, name, dry_run || ddfd < 0);
    if (dfd >= 0)
      close (dfd);
    if (sfd >= 0)
      close (sfd);
    if (sdfd >= 0)
      close (sdfd);
    if (ddfd >= 0)
      close (ddfd);
    free (dirrel);
    free (svm);
    free (sdir);
    free (ddir);
    free (dpath);
  }
  /* The record last: the commit point of the copy. */
  if (ret == 0 && !dry_run)
    ret = sync_record (srcfd, store_root (src), dstfd, droot, vm, id);
  if (ret == 0) {
    stats->points++;
    if (!dry_run) {
      char b[32];
      qb_format_bytes (stats->bytes - bytes0, b, sizeof b);
      printf ("%s: point %s copied (%zu layer%s, %s)\n", vm, id, copied, copied == 1 ? "" : "s", b);
    }
  }
  free (ls);
  free (prefix);
  return ret;
}

/* True when destination DSTFD has the record of point ID of VM. */
static bool
sync_has_point (int dstfd, const char *vm, const char *id)
{
  char *rel = qb_asprintf ("%s/" SYNC_POINTS "/%s.json", vm, id);
  int fd = qb_openat_nofollow (dstfd, rel, O_RDONLY);
  free (rel);
  if (fd >= 0)
    close (fd);
  return fd >= 0;
}

/* Sync VM: lock the destination VM, clean what an interrupted run left,
 * copy every point the destination lacks in commit order.  0 or -1. */
static int
sync_vm (store *src, int srcfd, store *dst, const char *droot, int dstfd, const char *vm,
         bool dry_run, sync_stats *stats)
{
  /* The records first, then the scan: every layer of a listed point is
   * committed (or being named) by the time the scan looks. */
  size_t n;
  char **ids = sync_point_ids (srcfd, store_root (src), vm, &n);
  if (n == (size_t) -1)
    return -1;
  store_vm *v = store_scan_vm (src, vm);
  if (!v) {
    sync_strv_free (ids, n);
    return -1;
  }
  for (size_t i = 0; i < v->nskipped; i++)
    fprintf (stderr, "qmprebase sync: warning: %s\n", v->skipped[i]);
  store_lock *lk = NULL;
  if (!dry_run) {
    lk = store_lock_vm (dst, vm, 0);
    if (!lk || store_recover (dst, vm) < 0) {
      store_unlock (lk);
      store_vm_free (v);
      sync_strv_free (ids, n);
      return -1;
    }
  }
  int ret = 0;
  for (size_t i = 0; i < n && ret == 0; i++) {
    if (dstfd >= 0 && sync_has_point (dstfd, vm, ids[i])) {
      stats->points_there++;
      continue;
    }
    ret = sync_point (src, srcfd, droot, dstfd, v, ids[i], dry_run, stats);
    if (ret == 2)
      ret = 0;                   /* damaged in the source: warned, the next point */
  }
  if (ret == 1)
    ret = 0;
  store_unlock (lk);
  store_vm_free (v);
  sync_strv_free (ids, n);
  return ret;
}

/* Open the store folder PATH as a directory, never through a link at its end. */
static int
sync_root_open (const char *path)
{
  int fd = open (path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    qb_error_set_errno (errno, "open store %s", path);
  return fd;
}

/* Run the sync of O; the exit code. */
static int
sync_run (const sync_opts *o)
{
  int64_t t0 = qb_now_us ();
  store *src = store_open (o->from, false);
  if (!src) {
    fprintf (stderr, "qmprebase sync: %s\n", qb_error_msg ());
    return 1;
  }
  store *dst = NULL;
  if (o->dry_run) {
    struct stat sb;
    if (stat (o->to, &sb) == 0)
      dst = store_open (o->to, false);
  }
  else
    dst = store_open (o->to, true);
  if (!dst && !o->dry_run) {
    fprintf (stderr, "qmprebase sync: %s\n", qb_error_msg ());
    store_close (src);
    return 1;
  }
  int srcfd = sync_root_open (store_root (src));
  int dstfd = dst ? sync_root_open (store_root (dst)) : -1;
  char **vms = NULL;
  size_t nvms = 0;
  int rc = 0;
  if (srcfd < 0 || (dst && dstfd < 0))
    rc = 1;
  else if (o->vm) {
    vms = qb_calloc (1, sizeof *vms);
    vms[0] = qb_strdup (o->vm);
    nvms = 1;
  }
  else if (store_list_vms (src, &vms, &nvms) == -1)
    rc = 1;
  if (rc)
    fprintf (stderr, "qmprebase sync: %s\n", qb_error_msg ());
  sync_stats st = { 0 };
  for (size_t i = 0; i < nvms; i++) {
    int r = sync_vm (src, srcfd, dst, dst ? store_root (dst) : o->to, dstfd, vms[i], o->dry_run,
                     &st);
    if (r < 0) {
      fprintf (stderr, "qmprebase sync: %s: %s\n", vms[i], qb_error_msg ());
      rc = 1;
    }
  }
  double secs = (qb_now_us () - t0) / 1e6;
  char b[32];
  qb_format_bytes (st.bytes, b, sizeof b);
  if (o->dry_run)
    printf ("sync (dry run): %zu point%s to copy (%s), %zu already there\n",
            st.points, st.points == 1 ? "" : "s", b, st.points_there);
  else
    printf ("sync: %zu point%s copied (%zu layer%s, %s) in %.1f s (%.0f MB/s), %zu already there,"
            " %zu layer%s already there\n",
            st.points, st.points == 1 ? "" : "s", st.layers, st.layers == 1 ? "" : "s", b, secs,
            secs > 0 ? st.bytes / 1e6 / secs : 0.0, st.points_there, st.layers_there,
            st.layers_there == 1 ? "" : "s");
  if (st.damaged) {
    fprintf (stderr, "qmprebase sync: %zu point%s damaged in the source %s not copied "
             "(see the warnings; qmprebase list --dir shows why)\n", st.damaged,
             st.damaged == 1 ? "" : "s", st.damaged == 1 ? "was" : "were");
    rc = 1;
  }
  sync_strv_free (vms, nvms);
  if (srcfd >= 0)
    close (srcfd);
  if (dstfd >= 0)
    close (dstfd);
  store_close (src);
  store_close (dst);
  return rc;
}

/* Entry point of `qmprebase sync` (see sync.h). */
int
sync_main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "from", required_argument, NULL, 'f' },
    { "to", required_argument, NULL, 't' },
    { "vm", required_argument, NULL, 'v' },
    { "dry-run", no_argument, NULL, 'n' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  sync_opts o = { 0 };
  int c;
  opterr = 0;
  optind = 1;
  while ((c = getopt_long (argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
    case 'f': o.from = optarg; break;
    case 't': o.to = optarg; break;
    case 'v': o.vm = optarg; break;
    case 'n': o.dry_run = true; break;
    case 'h': sync_help (); return 0;
    case ':': return sync_usage ("option needs a value: ", argv[optind - 1]);
    default: return sync_usage ("unknown option ", argv[optind - 1]);
    }
  }
  if (optind < argc)
    return sync_usage ("unexpected argument ", argv[optind]);
  if (!o.from || !o.to)
    return sync_usage ("sync needs --from STORE and --to STORE2", NULL);
  if (o.vm && !qb_name_is_safe (o.vm))
    return sync_usage ("not a VM name: ", o.vm);
  char *a = realpath (o.from, NULL), *b = realpath (o.to, NULL);
  bool same = a && b && strcmp (a, b) == 0;
  free (a);
  free (b);
  if (same)
    return sync_usage ("--from and --to are the same store", NULL);
  return sync_run (&o);
}
