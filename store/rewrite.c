/* qmpbackupfs — chain rewrites with an intent journal (see store.h).
 *
 * Removing restore points from qcow2 chains changes files in place, so it
 * is done as one journaled operation per VM folder (or per disk folder
 * outside a store):
 *
 *   1. plan: from a scan, the list of steps (each one idempotent: running a
 *      step again after it completed changes nothing);
 *   2. lock: every restore point that goes and whose layers are rewritten in
 *      place (the FULL a fold commits into) is locked exclusively against
 *      readers (store_point_open holds a shared lock on a point's top layer);
 *   3. journal: <unit>/.rewrite.json (tmp, fsync, rename, fsync) with the
 *      steps, the layers that go ("hide") and the layers of every chain the
 *      operation touches ("busy"); from here on the scan serves none of them;
 *   4. steps, with the count of finished steps written back after each one
 *      that rewrites data or names (rebase, commit, rename, new records);
 *      a run of steps that only set a header or record field or remove
 *      something (backing, side_prev, record prev/drop, unlink, side_rm)
 *      writes the count once, before the next other step, after one fsync
 *      of each folder the run removed files from: rerunning such a run
 *      from its start after a crash changes nothing, since no step of it
 *      sets anything that a later step of the run removed (the run is cut
 *      before such a step) and removals commute;
 *   5. the journal is removed.
 *
 * A crash at any point leaves the journal; store_rewrite_resume (run by
 * the next backup, mount, qmpbackup and qmprebase under the VM lock) runs
 * the remaining steps again from the first unfinished one.  Data only ever
 * moves into layers that stay before the layers it came from are removed,
 * so every kept point reads exactly as before, at every step. */
#include "store-int.h"
#include "qcow2.h"
#include "sums.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define JOURNAL_VERSION 1

/* Where an operation works: a VM folder of a store, or a disk folder alone. */
typedef struct rw_unit {
  store *st;             /* NULL for a disk folder outside a store */
  const char *vm;        /* the VM (store), or NULL */
  int dfd;               /* the unit's folder */
  char *path;            /* its absolute path (messages, qemu-img) */
  struct rw_defer *defer; /* the run of batched steps, while one runs */
} rw_unit;

/* Folders (relative to the unit) a run of batched steps removed files
 * from without syncing them: synced once, before the run's progress is
 * written (a crash before reruns the removals, which changes nothing). */
typedef struct rw_defer {
  bool active;           /* the step running is part of the run */
  char **dirs;
  size_t n;
} rw_defer;

/* After a removal in folder DIR of the unit: sync DIR now, or note it for
 * the run.  0 or -1. */
static int
unit_removed (const rw_unit *u, int dfd, const char *dir)
{
  if (u->defer && u->defer->active) {
    for (size_t i = 0; i < u->defer->n; i++)
      if (strcmp (u->defer->dirs[i], dir) == 0)
        return 0;
    u->defer->dirs = qb_realloc (u->defer->dirs, (u->defer->n + 1) * sizeof *u->defer->dirs);
    u->defer->dirs[u->defer->n++] = qb_strdup (dir);
    return 0;
  }
  return fsync (dfd) < 0 ? qb_error_set_errno (errno, "fsync %s/%s", u->path, dir) : 0;
}

/* ---- small helpers ---- */


/* True when REL is a relative path of safe components (at most three). */
static bool
rel_ok (const char *rel)
{
  if (!rel || !*rel || rel[0] == '/' || strlen (rel) > 1024)
    return false;
  char *c = qb_strdup (rel), *save = NULL;
  int parts = 0;
  bool ok = true;
  for (char *t = strtok_r (c, "/", &save); t; t = strtok_r (NULL, "/", &save))
    if (++parts > 3 || !qb_name_is_safe (t))
      ok = false;
  free (c);
  return ok && parts >= 1 && !strstr (rel, "//") && rel[strlen (rel) - 1] != '/';
}

/* Split REL into its folder (malloc'd, "." when none) and base name (inside REL). */
static char *
rel_split (const char *rel, const char **base)
{
  const char *s = strrchr (rel, '/');
  *base = s ? s + 1 : rel;
  return s ? qb_asprintf ("%.*s", (int) (s - rel), rel) : qb_strdup (".");
}

/* Open folder DIR of the unit without following a link, or -1. */
static int
unit_opendir (const rw_unit *u, const char *dir)
{
  if (strcmp (dir, ".") == 0)
    return openat (u->dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int fd = qb_openat_nofollow (u->dfd, dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0)
    store_fs_error (errno, "open", dir);
  return fd;
}

/* Absolute path of REL in the unit (malloc'd). */
static char *
unit_abs (const rw_unit *u, const char *rel)
{
  return qb_asprintf ("%s/%s", u->path, rel);
}

/* stat of REL in the unit without following a link: 0, or -1 with errno. */
static int
unit_stat (const rw_unit *u, const char *rel, struct stat *sb)
{
  const char *base;
  char *dir = rel_split (rel, &base);
  int dfd = strcmp (dir, ".") == 0 ? dup (u->dfd) : qb_openat_nofollow (u->dfd, dir, O_RDONLY | O_DIRECTORY);
  int r = -1, e = errno;
  if (dfd >= 0) {
    r = fstatat (dfd, base, sb, AT_SYMLINK_NOFOLLOW);
    e = errno;
    close (dfd);
  }
  free (dir);
  errno = e;
  if (r == 0 && !S_ISREG (sb->st_mode)) {
    errno = EPERM;
    return -1;
  }
  return r;
}

/* ---- steps ---- */

/* True when the header of FILE already names the backing file TO ("" for
 * none), read without following a link: then nothing needs rewriting. */
static bool
backing_is (const rw_unit *u, const char *file, const char *to)
{
  const char *base;
  char *dir = rel_split (file, &base);
  int dfd = unit_opendir (u, dir);
  free (dir);
  if (dfd < 0) {
    qb_error_clear ();
    return false;
  }
  int fd = openat (dfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  close (dfd);
  if (fd < 0)
    return false;
  qcow2_header h;
  uint64_t fsize;
  bool same = false;
  if (qcow2_header_read (fd, file, &h, &fsize) == 0) {
    size_t want = strlen (to);
    if (h.backing_offset == 0 || h.backing_size == 0)
      same = want == 0;
    else if (h.backing_size == want && h.backing_offset <= fsize
             && want <= fsize - h.backing_offset && want <= 4096) {
      char buf[4097];
      same = pread (fd, buf, want, (off_t) h.backing_offset) == (ssize_t) want
        && memcmp (buf, to, want) == 0;
    }
  }
  qb_error_clear ();
  close (fd);
  return same;
}

/* qemu-img rebase of FILE onto backing name TO ("" for none); UNSAFE only
 * rewrites the header (nothing to do when it names TO already), else the
 * data that differs moves into FILE. */
static int
step_qemu_rebase (const rw_unit *u, const char *file, const char *to, bool unsafe)
{
  if (unsafe && backing_is (u, file, to))
    return 0;
  char *abs = unit_abs (u, file);
  char *argv[16];
  int n = 0;
  argv[n++] = "qemu-img";
  argv[n++] = "rebase";
  argv[n++] = "-q";
  if (unsafe)
    argv[n++] = "-u";
  argv[n++] = "-f";
  argv[n++] = "qcow2";
  argv[n++] = "-b";
  argv[n++] = (char *) to;
  if (to[0]) {
    argv[n++] = "-F";
    argv[n++] = "qcow2";
  }
  argv[n++] = abs;
  argv[n] = NULL;
  int r = qb_run (argv, NULL);
  if (r < 0)
    qb_error_prefix ("%s %s onto %s", unsafe ? "set the backing file of" : "rebase",
                     abs, to[0] ? to : "nothing");
  else if (!unsafe && qb_fsync_path (abs) < 0)
    r = -1;
  free (abs);
  return r;
}

/* qemu-img commit of TOP (and every layer between) into BASE, then fsync BASE. */
static int
step_commit (const rw_unit *u, const char *base, const char *top)
{
  char *b = unit_abs (u, base), *t = unit_abs (u, top);
  char *argv[] = { "qemu-img", "commit", "-q", "-d", "-f", "qcow2", "-b", b, t, NULL };
  int r = qb_run (argv, NULL);
  if (r < 0)
    qb_error_prefix ("commit %s into %s", t, b);
  else
    r = qb_fsync_path (b);
  free (b);
  free (t);
  return r;
}

/* Rename FROM to TO (same folder); done already (FROM gone, TO there) is fine. */
static int
step_rename (const rw_unit *u, const char *from, const char *to)
{
  const char *fb, *tb;
  char *fd_dir = rel_split (from, &fb), *td_dir = rel_split (to, &tb);
  int ret = -1, dfd = -1;
  if (strcmp (fd_dir, td_dir) != 0) {
    qb_error_set (QB_EINVAL, "rename %s to %s: not in one folder", from, to);
    goto out;
  }
  if ((dfd = unit_opendir (u, fd_dir)) < 0)
    goto out;
  struct stat sb;
  bool has_from = fstatat (dfd, fb, &sb, AT_SYMLINK_NOFOLLOW) == 0;
  bool has_to = fstatat (dfd, tb, &sb, AT_SYMLINK_NOFOLLOW) == 0;
  if (!has_from && has_to)
    ret = 0;
  else if (has_from && has_to)
    qb_error_set (QB_EDAMAGED, "%s/%s and %s/%s both exist: the rewrite cannot go on; "
                  "move one of them away (check which one is newer) and run it again",
                  u->path, from, u->path, to);
  else if (!has_from)
    qb_error_set (QB_EDAMAGED, "%s/%s is missing: the rewrite cannot go on", u->path, from);
  else if (renameat (dfd, fb, dfd, tb) < 0)
    qb_error_set_errno (errno, "rename %s/%s to %s", u->path, from, tb);
  else
    ret = fsync (dfd) < 0 ? qb_error_set_errno (errno, "fsync %s/%s", u->path, fd_dir) : 0;
 out:
  if (dfd >= 0)
    close (dfd);
  free (fd_dir);
  free (td_dir);
  return ret;
}

/* Remove FILE (gone already is fine). */
static int
step_unlink (const rw_unit *u, const char *file)
{
  const char *base;
  char *dir = rel_split (file, &base);
  int ret = -1, dfd = unit_opendir (u, dir);
  if (dfd >= 0) {
    if (unlinkat (dfd, base, 0) < 0 && errno != ENOENT)
      qb_error_set_errno (errno, "remove %s/%s", u->path, file);
    else
      ret = unit_removed (u, dfd, dir);
    close (dfd);
  }
  free (dir);
  return ret;
}

/* Set the size fields of disk entry D from file REL. */
static void
entry_sizes (const rw_unit *u, json_object *d, const char *rel)
{
  struct stat sb;
  if (unit_stat (u, rel, &sb) == 0) {
    json_object_object_add (d, "bytes", json_object_new_int64 ((int64_t) sb.st_blocks * 512));
    json_object_object_add (d, "size", json_object_new_int64 ((int64_t) sb.st_size));
  }
}

/* Turn disk entry D into the FULL at FILE (a path relative to the VM folder,
 * kept in the folder form the entry had), sizes from REL in the unit. */
static void
entry_make_full (const rw_unit *u, json_object *d, const char *newname, const char *rel)
{
  const char *old = store_json_str (d, "file");
  const char *sl = old ? strrchr (old, '/') : NULL;
  char *file = sl ? qb_asprintf ("%.*s/%s", (int) (sl - old), old, newname) : qb_strdup (newname);
  json_object_object_add (d, "file", json_object_new_string (file));
  free (file);
  json_object_object_add (d, "kind", json_object_new_string ("full"));
  json_object_object_del (d, "prev");
  entry_sizes (u, d, rel);
}

/* The .chain record of layer NAME in unit folder DIR: a new reference or NULL. */
static json_object *
side_load (const rw_unit *u, const char *dir, const char *name, int *dfd_out)
{
  int dfd = unit_opendir (u, dir);
  if (dfd < 0)
    return NULL;
  json_object *o = store_sidecar_read (dfd, name);
  qb_error_clear ();
  if (dfd_out)
    *dfd_out = dfd;
  else
    close (dfd);
  return o;
}

/* The entry of DISK in record OBJ (borrowed), its index in *IDX. */
static json_object *
rec_entry (json_object *obj, const char *disk, size_t *idx)
{
  json_object *disks;
  if (!json_object_object_get_ex (obj, "disks", &disks) || !json_object_is_type (disks, json_type_array))
    return NULL;
  for (size_t i = 0; i < json_object_array_length (disks); i++) {
    json_object *d = json_object_array_get_idx (disks, i);
    const char *n = store_json_str (d, "name");
    if (n && strcmp (n, disk) == 0) {
      if (idx)
        *idx = i;
      return d;
    }
  }
  return NULL;
}

/* Checksums of layer NAME in disk folder DFD, whose bytes a step changed
 * (sums.h): the old ones would call it damaged.  A layer that is no qcow2
 * image gets none (the scan reports it).  0 or -1. */
static int
step_sums (int dfd, const char *name)
{
  if (store_sums_write (dfd, name) == 0)
    return 0;
  if (qb_error_code () != QB_EDAMAGED)
    return -1;
  qb_error_clear ();
  return store_sums_remove (dfd, name);
}

/* The new FULL NEWNAME's own record, made from the record of layer FROM
 * (its .chain record, else its entry in point ID's record); no record at
 * all (a seed layer) is fine. */
static int
step_side_full (const rw_unit *u, const char *dir, const char *from, const char *newname,
                const char *id, const char *disk)
{
  int dfd = -1;
  json_object *side = side_load (u, dir, from, &dfd);
  if (dfd < 0)
    return -1;
  if (!side && u->st) {
    json_object *rec = store_record_read (u->st, u->vm, id);
    qb_error_clear ();
    json_object *d = rec ? rec_entry (rec, disk, NULL) : NULL;
    if (d) {
      json_object *one = json_object_new_array ();
      json_object_deep_copy (rec, &side, NULL);
      json_object_array_add (one, json_object_get (d));
      json_object_object_add (side, "disks", one);
    }
    json_object_put (rec);
  }
  int r = 0;
  json_object *disks;
  if (side && json_object_object_get_ex (side, "disks", &disks)
      && json_object_is_type (disks, json_type_array) && json_object_array_length (disks) == 1) {
    char *rel = strcmp (dir, ".") == 0 ? qb_strdup (newname) : qb_asprintf ("%s/%s", dir, newname);
    entry_make_full (u, json_object_array_get_idx (disks, 0), newname, rel);
    free (rel);
    json_object_object_add (side, "layer", json_object_new_string (newname));
    r = store_sidecar_write (dfd, newname, side);
  }
  json_object_put (side);
  if (r == 0)
    r = step_sums (dfd, newname);
  close (dfd);
  return r;
}

/* Layer NAME's own record now names PREV as its previous layer. */
static int
step_side_prev (const rw_unit *u, const char *dir, const char *name, const char *prev)
{
  int dfd = -1;
  json_object *side = side_load (u, dir, name, &dfd);
  if (dfd < 0)
    return -1;
  int r = 0;
  json_object *disks;
  if (side && json_object_object_get_ex (side, "disks", &disks)
      && json_object_is_type (disks, json_type_array) && json_object_array_length (disks) == 1) {
    json_object_object_add (json_object_array_get_idx (disks, 0), "prev",
                            json_object_new_string (prev));
    r = store_sidecar_write (dfd, name, side);
  }
  json_object_put (side);
  if (r == 0)                   /* the rebase before this step wrote into the layer */
    r = step_sums (dfd, name);
  close (dfd);
  return r;
}

/* Remove layer NAME's own record, sums and verify record. */
static int
step_side_rm (const rw_unit *u, const char *dir, const char *name)
{
  if (!(u->defer && u->defer->active)) {
    int dfd = unit_opendir (u, dir);
    if (dfd < 0)
      return -1;
    int r = store_sidecar_remove (dfd, name);
    if (r == 0)
      r = store_sums_remove (dfd, name);
    close (dfd);
    return r;
  }
  /* part of a run: removed here, .chain synced with the run */
  char *cdir = strcmp (dir, ".") == 0 ? qb_strdup (STORE_SIDECAR_DIR)
    : qb_asprintf ("%s/" STORE_SIDECAR_DIR, dir);
  int r = 0, cfd = qb_openat_nofollow (u->dfd, cdir, O_RDONLY | O_DIRECTORY);
  if (cfd < 0 && errno != ENOENT)
    r = store_fs_error (errno, "open", cdir);
  const char *suffix[] = { ".json", ".sums", ".verify.json" };
  for (size_t i = 0; cfd >= 0 && r == 0 && i < 3; i++) {
    char *f = qb_asprintf ("%s%s", name, suffix[i]);
    if (unlinkat (cfd, f, 0) < 0 && errno != ENOENT)
      r = qb_error_set_errno (errno, "remove %s/%s/%s", u->path, cdir, f);
    free (f);
  }
  if (cfd >= 0 && r == 0)
    r = unit_removed (u, cfd, cdir);
  if (cfd >= 0)
    close (cfd);
  free (cdir);
  return r;
}

/* Point ID's record, changed by KIND for DISK: "full" (entry becomes the
 * FULL NEWNAME, file REL), "prev" (entry's previous layer is PREV), "drop"
 * (entry removed; a record without disks goes).  No record (seed layers,
 * a folder outside a store) or no entry (done already) is fine. */
static int
step_record (const rw_unit *u, const char *kind, const char *id, const char *disk,
             const char *arg, const char *rel)
{
  if (!u->st)
    return 0;
  json_object *rec = store_record_read (u->st, u->vm, id);
  if (!rec) {
    if (qb_error_code () == QB_ENOENT) {
      qb_error_clear ();
      return 0;
    }
    return -1;
  }
  size_t idx;
  json_object *d = rec_entry (rec, disk, &idx);
  int r = 0;
  if (d && strcmp (kind, "full") == 0) {
    entry_make_full (u, d, arg, rel);
    r = store_record_write (u->st, u->vm, id, rec, true);
  } else if (d && strcmp (kind, "prev") == 0) {
    json_object_object_add (d, "prev", json_object_new_string (arg));
    r = store_record_write (u->st, u->vm, id, rec, true);
  } else if (d && strcmp (kind, "drop") == 0) {
    json_object *disks;
    json_object_object_get_ex (rec, "disks", &disks);
    if (json_object_array_length (disks) == 1) {
      char *prel = qb_asprintf (STORE_POINTS_DIR "/%s.json", id);
      r = step_unlink (u, prel);
      free (prel);
    } else {
      json_object_array_del_idx (disks, idx, 1);
      r = store_record_write (u->st, u->vm, id, rec, true);
    }
  }
  json_object_put (rec);
  return r;
}

/* Run step S; 0 or -1. */
static int
step_run (const rw_unit *u, json_object *s)
{
  const char *op = store_json_str (s, "do");
  const char *file = store_json_str (s, "file"), *to = store_json_str (s, "to"), *dir = store_json_str (s, "dir");
  const char *name = store_json_str (s, "layer"), *id = store_json_str (s, "id"), *disk = store_json_str (s, "disk");
  const char *arg = store_json_str (s, "arg");
  if (!op)
    return qb_error_set (QB_EDAMAGED, "a step of the rewrite journal has no \"do\"");
  if ((file && !rel_ok (file)) || (dir && strcmp (dir, ".") != 0 && !rel_ok (dir))
      || (name && !qb_name_is_safe (name)) || (id && !store_id_valid (id))
      || (disk && !qb_name_is_safe (disk)))
    return qb_error_set (QB_EDAMAGED, "step \"%s\" of the rewrite journal names an unsafe path",
                         op);
  if (strcmp (op, "backing") == 0 && file && to)
    return (to[0] && !qb_name_is_safe (to)) ? qb_error_set (QB_EDAMAGED, "unsafe backing name")
      : step_qemu_rebase (u, file, to, true);
  if (strcmp (op, "rebase") == 0 && file && to && qb_name_is_safe (to))
    return step_qemu_rebase (u, file, to, false);
  if (strcmp (op, "commit") == 0 && file && to && rel_ok (to))
    return step_commit (u, to, file);
  if (strcmp (op, "rename") == 0 && file && to && rel_ok (to))
    return step_rename (u, file, to);
  if (strcmp (op, "unlink") == 0 && file)
    return step_unlink (u, file);
  if (strcmp (op, "side_full") == 0 && dir && name && to && qb_name_is_safe (to) && disk)
    return step_side_full (u, dir, name, to, id ? id : "", disk);
  if (strcmp (op, "side_prev") == 0 && dir && name && arg && store_id_valid (arg))
    return step_side_prev (u, dir, name, arg);
  if (strcmp (op, "side_rm") == 0 && dir && name)
    return step_side_rm (u, dir, name);
  if (strcmp (op, "record") == 0 && id && disk && to) {
    if (strcmp (to, "full") == 0 && arg && qb_name_is_safe (arg) && file)
      return step_record (u, to, id, disk, arg, file);
    if (strcmp (to, "prev") == 0 && arg && store_id_valid (arg))
      return step_record (u, to, id, disk, arg, NULL);
    if (strcmp (to, "drop") == 0)
      return step_record (u, to, id, disk, NULL, NULL);
  }
  return qb_error_set (QB_EDAMAGED, "step \"%s\" of the rewrite journal is not understood "
                       "(made by a newer version?)", op);
}

/* ---- the journal ---- */

/* Write journal J of the unit (atomically). */
static int
journal_write (const rw_unit *u, json_object *j)
{
  return store_json_write_at (u->st, u->dfd, u->path, STORE_REWRITE_JOURNAL, j);
}

/* Read the journal of the unit: a new reference; NULL with QB_ENOENT when
 * there is none, QB_EDAMAGED when it is unreadable. */
static json_object *
journal_read (const rw_unit *u)
{
  int e;
  json_object *j = store_json_load_at (u->dfd, STORE_REWRITE_JOURNAL, &e);
  if (!j) {
    if (e == ENOENT)
      qb_error_set (QB_ENOENT, "no rewrite journal");
    else
      qb_error_set (QB_EDAMAGED, "%s/" STORE_REWRITE_JOURNAL " (an interrupted removal of "
                    "restore points) cannot be read (%s): its chains are not served; look "
                    "at it, and remove it only once the files it names are as they should be",
                    u->path, e ? strerror (e) : "not valid JSON");
    return NULL;
  }
  json_object *steps, *v;
  if (!json_object_object_get_ex (j, "steps", &steps) || !json_object_is_type (steps, json_type_array)
      || !json_object_object_get_ex (j, "version", &v) || json_object_get_int (v) != JOURNAL_VERSION) {
    json_object_put (j);
    qb_error_set (QB_EDAMAGED, "%s/" STORE_REWRITE_JOURNAL " is not a rewrite journal of "
                  "this version: its chains are not served", u->path);
    return NULL;
  }
  return j;
}

/* Locks taken on the layers of points that go (see store_point_open). */
typedef struct rw_locks {
  int *fds;
  size_t n;
} rw_locks;

static void
locks_release (rw_locks *l)
{
  for (size_t i = 0; i < l->n; i++)
    close (l->fds[i]);
  free (l->fds);
  l->fds = NULL;
  l->n = 0;
}

/* Lock every file of J's "lock" list exclusively, without waiting:
 * QB_EBUSY when a reader has one of those points open. */
static int
locks_take (const rw_unit *u, json_object *j, rw_locks *l)
{
  json_object *arr;
  if (!json_object_object_get_ex (j, "lock", &arr) || !json_object_is_type (arr, json_type_array))
    return 0;
  for (size_t i = 0; i < json_object_array_length (arr); i++) {
    const char *rel = json_object_get_string (json_object_array_get_idx (arr, i));
    if (!rel_ok (rel))
      continue;
    const char *base;
    char *dir = rel_split (rel, &base);
    int dfd = unit_opendir (u, dir);
    free (dir);
    if (dfd < 0) {
      qb_error_clear ();
      continue;
    }
    /* writable: an exclusive OFD lock (STORE_POINT_LOCK_BYTE) needs it */
    int fd = openat (dfd, base, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    close (dfd);
    if (fd < 0)
      continue;          /* gone already: nobody can open it any more */
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
                        .l_start = STORE_POINT_LOCK_BYTE, .l_len = 1 };
    if (fcntl (fd, F_OFD_SETLK, &fl) < 0) {
      close (fd);
      locks_release (l);
      return qb_error_set (QB_EBUSY, "restore point file %s/%s is open for reading (a "
                           "restore image or files/ view in use): close it and try again",
                           u->path, rel);
    }
    l->fds = qb_realloc (l->fds, (l->n + 1) * sizeof *l->fds);
    l->fds[l->n++] = fd;
  }
  return 0;
}

/* The step to stop at for crash tests (QB_REWRITE_KILL_AFTER=K: the process
 * kills itself with SIGKILL after step K ran and before it is marked done;
 * 0 right after the journal is written), or -1. */
static long
kill_after (void)
{
  const char *s = getenv ("QB_REWRITE_KILL_AFTER");
  if (!s || !*s)
    return -1;
  char *end;
  long k = strtol (s, &end, 10);
  return *end || k < 0 ? -1 : k;
}

/* Steps a run may hold before its progress is written: a crash makes the
 * next resume rerun at most this many cheap steps. */
#define RUN_MAX 32

/* What step S touches, as the run of batched steps sees it: *KEY (malloc'd:
 * the layer path relative to the unit, or "id:<id>" for a record) and
 * *REMOVES (it removes KEY).  False for steps that must be marked done one
 * by one (they rewrite data or names, or make new records). */
static bool
step_batchable (json_object *s, char **key, bool *removes)
{
  const char *op = store_json_str (s, "do"), *file = store_json_str (s, "file");
  const char *dir = store_json_str (s, "dir"), *name = store_json_str (s, "layer");
  const char *id = store_json_str (s, "id"), *to = store_json_str (s, "to");
  *key = NULL;
  *removes = false;
  if (!op)
    return false;
  if ((strcmp (op, "backing") == 0 || strcmp (op, "unlink") == 0) && file) {
    *removes = op[0] == 'u';
    *key = qb_strdup (file);
  } else if ((strcmp (op, "side_rm") == 0 || strcmp (op, "side_prev") == 0) && dir && name) {
    *removes = strcmp (op, "side_rm") == 0;
    *key = strcmp (dir, ".") == 0 ? qb_strdup (name) : qb_asprintf ("%s/%s", dir, name);
  } else if (strcmp (op, "record") == 0 && id && to
             && (strcmp (to, "prev") == 0 || strcmp (to, "drop") == 0)) {
    *removes = strcmp (to, "drop") == 0;
    *key = qb_asprintf ("id:%s", id);
  }
  return *key != NULL;
}

/* Sync the folders of U's run; forget them.  0 or -1. */
static int
defer_sync (const rw_unit *u)
{
  int ret = 0;
  for (size_t i = 0; i < u->defer->n; i++) {
    int fd = unit_opendir (u, u->defer->dirs[i]);
    if (fd < 0 && qb_error_code () != QB_ENOENT)
      ret = -1;
    else if (fd < 0)
      qb_error_clear ();         /* a later step removed the folder itself */
    else if (fsync (fd) < 0 && ret == 0)
      ret = qb_error_set_errno (errno, "fsync %s/%s", u->path, u->defer->dirs[i]);
    if (fd >= 0)
      close (fd);
    free (u->defer->dirs[i]);
  }
  u->defer->n = 0;
  return ret;
}

/* Write J's progress as DONE finished steps, once the run's removals are durable. */
static int
journal_done (const rw_unit *u, json_object *j, size_t done)
{
  if (defer_sync (u) < 0)
    return -1;
  json_object_object_add (j, "done", json_object_new_int64 ((int64_t) done));
  return journal_write (u, j);
}

/* Run J's steps from its "done" count to the end, recording progress,
 * then remove the journal. */
static int
journal_run (const rw_unit *u, json_object *j)
{
  json_object *steps, *v;
  json_object_object_get_ex (j, "steps", &steps);
  size_t n = json_object_array_length (steps);
  size_t done = json_object_object_get_ex (j, "done", &v) ? (size_t) json_object_get_int64 (v) : 0;
  long stop = kill_after ();
  if (stop == 0 && done == 0)
    raise (SIGKILL);
  /* the run of batched steps since DONE was last written: what they removed */
  char *removed[RUN_MAX];
  size_t nrun = 0, nremoved = 0;
  int ret = 0;
  rw_defer defer = { false, NULL, 0 };
  rw_unit ru = *u;               /* U with the run */
  ru.defer = &defer;
  u = &ru;
  for (size_t i = done; i < n && ret == 0; i++) {
    json_object *s = json_object_array_get_idx (steps, i);
    char *key;
    bool removes;
    bool batch = step_batchable (s, &key, &removes);
    /* a step that sets what the run removed would undo the removal if the
       run were rerun: the run ends before it */
    for (size_t k = 0; batch && !removes && k < nremoved; k++)
      batch = strcmp (removed[k], key) != 0;
    if ((!batch || nrun == RUN_MAX) && nrun > 0) {
      if (journal_done (u, j, i) < 0)
        ret = -1;
      for (size_t k = 0; k < nremoved; k++)
        free (removed[k]);
      nrun = nremoved = 0;
    }
    defer.active = batch;
    if (ret == 0 && step_run (u, s) < 0) {
      qb_error_prefix ("removing restore points (step %zu of %zu; the journal %s/"
                       STORE_REWRITE_JOURNAL " finishes it at the next backup, mount or "
                       "qmprebase run once the cause is fixed)", i + 1, n, u->path);
      ret = -1;
    }
    if (ret == 0 && stop > 0 && (size_t) stop == i + 1)
      raise (SIGKILL);
    if (ret == 0 && batch) {
      nrun++;
      if (removes)
        removed[nremoved++] = key, key = NULL;
    } else if (ret == 0 && journal_done (u, j, i + 1) < 0)
      ret = -1;
    free (key);
  }
  for (size_t k = 0; k < nremoved; k++)
    free (removed[k]);
  /* the last run's removals durable before the journal goes */
  if (ret == 0 && defer_sync (u) < 0)
    ret = -1;
  for (size_t k = 0; k < defer.n; k++)
    free (defer.dirs[k]);
  free (defer.dirs);
  if (ret < 0)
    return -1;
  /* every step's changes are durable: the journal can go */
  if (unlinkat (u->dfd, STORE_REWRITE_JOURNAL, 0) < 0 && errno != ENOENT)
    return qb_error_set_errno (errno, "remove %s/" STORE_REWRITE_JOURNAL, u->path);
  fsync (u->dfd);
  return 0;
}

/* ---- planning ---- */

typedef struct plan {
  json_object *steps, *hide, *busy, *lock;
  uint64_t bytes_before;     /* blocks of every file of the touched chains */
  size_t npoints;
} plan;

static void
plan_step (plan *p, const char *op, const char *k1, const char *v1, const char *k2,
           const char *v2, const char *k3, const char *v3, const char *k4, const char *v4)
{
  json_object *s = json_object_new_object ();
  json_object_object_add (s, "do", json_object_new_string (op));
  const char *k[] = { k1, k2, k3, k4 }, *val[] = { v1, v2, v3, v4 };
  for (int i = 0; i < 4; i++)
    if (k[i] && val[i])
      json_object_object_add (s, k[i], json_object_new_string (val[i]));
  json_object_array_add (p->steps, s);
}

/* Relative path of layer L in the unit (malloc'd). */
static char *
layer_rel_unit (const rw_unit *u, const store_layer *l)
{
  size_t n = strlen (u->path);
  if (strncmp (l->path, u->path, n) == 0 && l->path[n] == '/')
    return qb_strdup (l->path + n + 1);
  return qb_strdup (l->name);
}

/* REL's folder part (malloc'd, "." when none). */
static char *
rel_dir (const char *rel)
{
  const char *b;
  return rel_split (rel, &b);
}

/* The name a FULL takes when it absorbs layer TOP ("INC-x" -> "FULL-x"). */
char *
store_fold_name (const store_layer *top)
{
  const char *rest = strchr (top->name, '-');
  return qb_asprintf ("FULL%s", rest ? rest : "-");
}

/* Plan the removal of the layers of chain C with GO[i] set, for DISK. */
static int
plan_chain (const rw_unit *u, plan *p, const char *disk, const store_chain *c, const bool *go)
{
  size_t n = c->n, f = 0;
  while (f < n && go[f])
    f++;
  char **rel = qb_calloc (n, sizeof *rel), **name = qb_calloc (n, sizeof *name);
  for (size_t i = 0; i < n; i++) {
    rel[i] = layer_rel_unit (u, &c->layers[i]);
    name[i] = qb_strdup (c->layers[i].name);
    json_object_array_add (p->busy, json_object_new_string (rel[i]));
    p->bytes_before += c->layers[i].file_size;
    if (go[i])
      json_object_array_add (p->hide, json_object_new_string (rel[i]));
  }
  char *dir = rel_dir (rel[0]);

  if (f == n) {
    /* The whole chain goes. */
    for (size_t i = 0; i < n; i++) {
      plan_step (p, "record", "to", "drop", "id", c->layers[i].id, "disk", disk, NULL, NULL);
      plan_step (p, "unlink", "file", rel[i], NULL, NULL, NULL, NULL, NULL, NULL);
      plan_step (p, "side_rm", "dir", dir, "layer", name[i], NULL, NULL, NULL, NULL);
    }
    goto out;
  }
  if (f > 0) {
    /* Fold layers 1..f into the FULL, which takes point f's name.  The FULL
       changes in place: readers of the points that go are locked out. */
    char *newname = store_fold_name (&c->layers[f]);
    char *newrel = strcmp (dir, ".") == 0 ? qb_strdup (newname) : qb_asprintf ("%s/%s", dir, newname);
    json_object_array_add (p->busy, json_object_new_string (newrel));
    for (size_t i = 0; i < f; i++)
      json_object_array_add (p->lock, json_object_new_string (rel[i]));
    for (size_t i = 1; i <= f; i++)
      plan_step (p, "backing", "file", rel[i], "to", name[i - 1], NULL, NULL, NULL, NULL);
    plan_step (p, "commit", "file", rel[f], "to", rel[0], NULL, NULL, NULL, NULL);
    plan_step (p, "rename", "file", rel[0], "to", newrel, NULL, NULL, NULL, NULL);
    plan_step (p, "side_full", "dir", dir, "layer", name[f], "to", newname, "id", c->layers[f].id);
    json_object_object_add (json_object_array_get_idx (p->steps, json_object_array_length (p->steps) - 1),
                            "disk", json_object_new_string (disk));
    plan_step (p, "record", "to", "full", "id", c->layers[f].id, "disk", disk, "arg", newname);
    json_object_object_add (json_object_array_get_idx (p->steps, json_object_array_length (p->steps) - 1),
                            "file", json_object_new_string (newrel));
    for (size_t i = 0; i < f; i++)
      plan_step (p, "record", "to", "drop", "id", c->layers[i].id, "disk", disk, NULL, NULL);
    for (size_t i = 1; i <= f; i++)
      plan_step (p, "unlink", "file", rel[i], NULL, NULL, NULL, NULL, NULL, NULL);
    for (size_t i = 0; i <= f; i++)
      plan_step (p, "side_rm", "dir", dir, "layer", name[i], NULL, NULL, NULL, NULL);
    if (f + 1 < n)
      plan_step (p, "backing", "file", rel[f + 1], "to", newname, NULL, NULL, NULL, NULL);
    free (rel[f]);
    rel[f] = newrel;
    free (name[f]);
    name[f] = newname;
  }
  /* Runs of layers that go above a kept layer P: their changes move into
     the next kept layer M (qemu-img's safe rebase writes into M every
     cluster where the old and the new backing chains differ). */
  size_t pk = f;
  for (size_t i = f + 1; i < n;) {
    if (!go[i]) {
      pk = i++;
      continue;
    }
    size_t j = i;
    while (j < n && go[j])
      j++;
    if (j < n) {
      for (size_t k = pk + 1; k <= j; k++)
        plan_step (p, "backing", "file", rel[k], "to", name[k - 1], NULL, NULL, NULL, NULL);
      plan_step (p, "rebase", "file", rel[j], "to", name[pk], NULL, NULL, NULL, NULL);
      plan_step (p, "side_prev", "dir", dir, "layer", name[j], "arg", c->layers[pk].id, NULL, NULL);
      plan_step (p, "record", "to", "prev", "id", c->layers[j].id, "disk", disk, "arg",
                 c->layers[pk].id);
    }
    for (size_t k = i; k < j; k++) {
      plan_step (p, "record", "to", "drop", "id", c->layers[k].id, "disk", disk, NULL, NULL);
      plan_step (p, "unlink", "file", rel[k], NULL, NULL, NULL, NULL, NULL, NULL);
      plan_step (p, "side_rm", "dir", dir, "layer", name[k], NULL, NULL, NULL, NULL);
    }
    i = j;
  }
 out:
  for (size_t i = 0; i < n; i++) {
    free (rel[i]);
    free (name[i]);
  }
  free (rel);
  free (name);
  free (dir);
  return 0;
}

static bool
id_in (const char *id, char *const *ids, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp (id, ids[i]) == 0)
      return true;
  return false;
}

/* The newest point id of scan V (over every disk), or "". */
static const char *
newest_id (const store_vm *v)
{
  const char *best = "";
  for (size_t d = 0; d < v->ndisks; d++)
    for (size_t c = 0; c < v->disks[d].nchains; c++)
      for (size_t i = 0; i < v->disks[d].chains[c].n; i++)
        if (strcmp (v->disks[d].chains[c].layers[i].id, best) > 0)
          best = v->disks[d].chains[c].layers[i].id;
  return best;
}

/* Plan the removal of points IDS from scan V (only DISK when non-NULL). */
static int
plan_build (const rw_unit *u, const store_vm *v, const char *disk, char *const *ids, size_t n,
            plan *p)
{
  const char *newest = newest_id (v);
  for (size_t i = 0; i < n; i++) {
    if (strcmp (ids[i], newest) == 0)
      return qb_error_set (QB_EINVAL, "restore point %s is the newest one: it is never "
                           "removed (the next incremental continues it)", ids[i]);
    bool found = false;
    for (size_t d = 0; d < v->ndisks && !found; d++)
      for (size_t c = 0; c < v->disks[d].nchains && !found; c++)
        for (size_t k = 0; k < v->disks[d].chains[c].n && !found; k++)
          found = strcmp (v->disks[d].chains[c].layers[k].id, ids[i]) == 0
            && (!disk || strcmp (v->disks[d].name, disk) == 0);
    if (!found)
      return qb_error_set (QB_ENOENT, "no restore point %s%s%s", ids[i],
                           disk ? " of disk " : "", disk ? disk : "");
  }
  for (size_t d = 0; d < v->ndisks; d++) {
    const store_disk *sd = &v->disks[d];
    if (disk && strcmp (sd->name, disk) != 0)
      continue;
    for (size_t c = 0; c < sd->nchains; c++) {
      const store_chain *ch = &sd->chains[c];
      bool *go = qb_calloc (ch->n ? ch->n : 1, sizeof *go);
      bool any = false, all = true, damaged = false;
      for (size_t k = 0; k < ch->n; k++) {
        go[k] = id_in (ch->layers[k].id, ids, n);
        any |= go[k];
        all &= go[k];
        if (ch->layers[k].busy) {
          free (go);
          return qb_error_set (QB_EBUSY, "disk %s is being rewritten (%s): try again when "
                               "that has finished", sd->name, ch->layers[k].damage);
        }
        damaged |= ch->layers[k].damage != NULL;
      }
      if (any && c + 1 == sd->nchains && go[ch->n - 1]) {
        free (go);
        return qb_error_set (QB_EINVAL, "restore point %s holds the newest layer of disk %s, "
                             "which the next incremental continues: it is never removed",
                             ch->layers[ch->n - 1].id, sd->name);
      }
      if (any && damaged && !all) {
        free (go);
        return qb_error_set (QB_EDAMAGED, "chain of disk %s starting at %s is damaged: its "
                             "points can only be removed all together (%s)", sd->name,
                             ch->layers[0].display, ch->layers[ch->n - 1].damage
                             ? ch->layers[ch->n - 1].damage : "see status");
      }
      if (any)
        plan_chain (u, p, sd->name, ch, go);
      free (go);
    }
  }
  p->npoints = n;
  return 0;
}

/* ---- entry points ---- */

/* Open the unit of VM in ST, or of the disk folder DIR outside a store. */
static int
unit_open (rw_unit *u, store *st, const char *vm, const char *dir)
{
  memset (u, 0, sizeof *u);
  u->st = st;
  u->vm = vm;
  if (st) {
    u->dfd = store_vm_open (st, vm);
    u->path = qb_asprintf ("%s/%s", store_root (st), vm);
  } else if (!dir) {
    u->dfd = -1;
    return qb_error_set (QB_EINVAL, "a chain rewrite needs a store or a disk folder");
  } else {
    u->dfd = open (dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (u->dfd < 0)
      qb_error_set_errno (errno, "%s", dir);
    char *real = u->dfd >= 0 ? realpath (dir, NULL) : NULL;
    u->path = real ? real : qb_strdup (dir);
  }
  return u->dfd < 0 ? -1 : 0;
}

static void
unit_close (rw_unit *u)
{
  if (u->dfd >= 0)
    close (u->dfd);
  free (u->path);
}

/* Finish the unit's interrupted rewrite, if any (see store_rewrite_resume). */
static int
unit_resume (const rw_unit *u)
{
  json_object *j = journal_read (u);
  if (!j)
    return qb_error_code () == QB_ENOENT ? (qb_error_clear (), 0) : -1;
  rw_locks l = { 0 };
  int r = locks_take (u, j, &l);
  if (r == 0)
    r = journal_run (u, j);
  locks_release (&l);
  json_object_put (j);
  return r < 0 ? -1 : 1;
}

/* Sum of the blocks of the files the plan names that still exist. */
static uint64_t
plan_bytes_now (const rw_unit *u, json_object *busy)
{
  uint64_t sum = 0;
  for (size_t i = 0; i < json_object_array_length (busy); i++) {
    struct stat sb;
    const char *rel = json_object_get_string (json_object_array_get_idx (busy, i));
    if (rel_ok (rel) && unit_stat (u, rel, &sb) == 0)
      sum += (uint64_t) sb.st_blocks * 512;
  }
  return sum;
}

/* Plan and run (or with DRY_RUN only plan) the removal in unit U. */
static int
unit_remove (const rw_unit *u, const store_vm *v, const char *disk, char *const *ids, size_t n,
             const store_remove_opts *o, store_remove_result *res)
{
  plan p = { json_object_new_array (), json_object_new_array (), json_object_new_array (),
             json_object_new_array (), 0, 0 };
  json_object *j = json_object_new_object ();
  rw_locks l = { 0 };
  int ret = -1;
  if (plan_build (u, v, disk, ids, n, &p) < 0)
    goto out;
  if (res) {
    res->steps = json_object_array_length (p.steps);
    res->bytes_before = p.bytes_before;
  }
  if (o && o->dry_run) {
    ret = 0;
    goto out;
  }
  if (res->steps == 0) {
    ret = 0;
    goto out;
  }
  json_object_object_add (j, "version", json_object_new_int (JOURNAL_VERSION));
  json_object_object_add (j, "op", json_object_new_string (o && o->why ? o->why : "remove"));
  json_object_object_add (j, "started", json_object_new_int64 ((int64_t) time (NULL)));
  json_object *pts = json_object_new_array ();
  for (size_t i = 0; i < n; i++)
    json_object_array_add (pts, json_object_new_string (ids[i]));
  json_object_object_add (j, "points", pts);
  json_object_object_add (j, "hide", json_object_get (p.hide));
  json_object_object_add (j, "busy", json_object_get (p.busy));
  json_object_object_add (j, "lock", json_object_get (p.lock));
  json_object_object_add (j, "steps", json_object_get (p.steps));
  json_object_object_add (j, "done", json_object_new_int64 (0));
  if (locks_take (u, j, &l) < 0)
    goto out;
  if (journal_write (u, j) < 0)
    goto out;
  if (journal_run (u, j) < 0)
    goto out;
  if (res)
    res->bytes_after = plan_bytes_now (u, p.busy);
  ret = 0;
 out:
  locks_release (&l);
  json_object_put (j);
  json_object_put (p.steps);
  json_object_put (p.hide);
  json_object_put (p.busy);
  json_object_put (p.lock);
  return ret;
}

/* Remove points IDS of VM in ST, or of the disk folder DIR when ST is NULL. */
static int
points_remove (store *st, const char *vm, const char *dir, const char *disk,
               char *const *ids, size_t n, const store_remove_opts *o,
               store_remove_result *res)
{
  store_remove_result dummy;
  if (!res)
    res = &dummy;
  memset (res, 0, sizeof *res);
  rw_unit u;
  if (unit_open (&u, st, vm, dir) < 0) {
    unit_close (&u);
    return -1;
  }
  int ret = -1;
  if (!(o && o->dry_run) && unit_resume (&u) < 0)
    goto out;
  store_vm *v = st ? store_scan_vm (st, vm) : store_scan_folder (dir);
  if (!v)
    goto out;
  ret = unit_remove (&u, v, disk, ids, n, o, res);
  store_vm_free (v);
 out:
  unit_close (&u);
  return ret;
}

int
store_points_remove (store *st, const char *vm, char *const *ids, size_t n, const char *disk,
                     const store_remove_opts *o, store_remove_result *res)
{
  return points_remove (st, vm, NULL, disk, ids, n, o, res);
}

int
store_folder_points_remove (const char *dir, char *const *ids, size_t n,
                            const store_remove_opts *o, store_remove_result *res)
{
  return points_remove (NULL, NULL, dir, NULL, ids, n, o, res);
}

/* Finish the interrupted rewrite of VM in ST, or of the folder DIR. */
static int
rewrite_resume (store *st, const char *vm, const char *dir)
{
  rw_unit u;
  if (unit_open (&u, st, vm, dir) < 0) {
    unit_close (&u);
    return st && qb_error_code () == QB_ENOENT ? (qb_error_clear (), 0) : -1;
  }
  int r = unit_resume (&u);
  unit_close (&u);
  return r;
}

int
store_rewrite_resume (store *st, const char *vm)
{
  return rewrite_resume (st, vm, NULL);
}

int
store_folder_rewrite_resume (const char *dir)
{
  return rewrite_resume (NULL, NULL, dir);
}
