/* qmprebase — merge a backup chain, seed-compatible.
 *
 *   qmprebase rebase --dir DIR/<disk> [--until ID-or-TIME] [--dry-run]
 *   qmprebase merge  --dir DIR/<disk> --targetfile FILE [--until ID-or-TIME] [--force]
 *
 * DIR is STORE/<vm> or STORE/<vm>/<YYYY-MM>.  `rebase` folds the INC layers of
 * a chain, up to the chosen restore point K, into the chain's FULL in place
 * (qemu-img commit) and gives the result K's name, so no name ever shows data
 * of another time: restore points older than K disappear for this disk, K
 * becomes the new FULL, and the INC above K is re-pointed at it.  `merge`
 * writes restore point K as a new raw (or, for FILE ending in .qcow2, qcow2)
 * image through the store's chain reader and leaves the chain alone.
 *
 * Exit codes: 0 ok, 1 failed, 2 usage. */
#include "store/store.h"
#include "store/chain.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define MERGING_PREFIX ".merging-"

/* What the command line asked for. */
typedef struct opts {
  const char *cmd;
  const char *dir;
  const char *until;
  const char *target;
  bool dry_run;
  bool force;
} opts;

/* Where --dir points: the store, the VM, the disk, and the directory itself. */
typedef struct where {
  char *root;      /* the store root (real path) */
  char *vm;
  char *disk;
  char *dir;       /* real path of DIR/<disk> */
  char *rel;       /* DIR/<disk> relative to STORE/<vm>: "<disk>" or "<YYYY-MM>/<disk>" */
} where;

/* Print usage to F. */
static void
usage (FILE *f)
{
  fprintf (f,
           "usage: qmprebase rebase --dir DIR/<disk> [--until ID-or-TIME] [--dry-run]\n"
           "       qmprebase merge --dir DIR/<disk> --targetfile FILE [--until ID-or-TIME] [--force]\n"
           "\n"
           "DIR is STORE/<vm> (or STORE/<vm>/<YYYY-MM> with monthly chains).\n"
           "rebase  merges the chain up to the restore point into its FULL, in place;\n"
           "        the merged FULL takes that point's name, older points of this disk go.\n"
           "merge   writes the restore point as a new image FILE (raw, or qcow2 if FILE\n"
           "        ends with .qcow2); the chain is left alone.\n"
           "--until a restore point id (20261126T045000Z), its time (2026-11-26T04:50:00Z),\n"
           "        a layer file name (INC-...), or a seed epoch; default: the newest point.\n"
           "        A time that names no point picks the newest point at or before it.\n");
}

/* Print the current error as "qmprebase: PREFIX: message" and return exit code 1. */
static int
fail (const char *prefix)
{
  fprintf (stderr, "qmprebase: %s%s%s\n", prefix ? prefix : "", prefix ? ": " : "",
           qb_error_msg ());
  return 1;
}

/* True for a "YYYY-MM" month folder name. */
static bool
is_month (const char *s)
{
  return strlen (s) == 7 && s[4] == '-'
    && strspn (s, "0123456789") == 4 && strspn (s + 5, "0123456789") == 2;
}

/* Free a where. */
static void
where_free (where *w)
{
  free (w->root);
  free (w->vm);
  free (w->disk);
  free (w->dir);
  free (w->rel);
}

/* Split --dir into store root, VM and disk; 0 or -1 with an error. */
static int
where_parse (const char *dir, where *w)
{
  memset (w, 0, sizeof *w);
  char real[PATH_MAX];
  if (!realpath (dir, real))
    return qb_error_set_errno (errno, "--dir %s", dir);
  struct stat sb;
  if (stat (real, &sb) < 0 || !S_ISDIR (sb.st_mode))
    return qb_error_set (QB_EINVAL, "--dir %s is not a directory", dir);
  w->dir = qb_strdup (real);
  char *slash = strrchr (real, '/');
  if (!slash || slash == real)
    return qb_error_set (QB_EINVAL, "--dir %s: expected STORE/<vm>/<disk>", dir);
  w->disk = qb_strdup (slash + 1);
  *slash = '\0';
  slash = strrchr (real, '/');
  if (!slash || slash == real)
    return qb_error_set (QB_EINVAL, "--dir %s: expected STORE/<vm>/<disk>", dir);
  char *month = NULL;
  if (is_month (slash + 1)) {
    /* STORE/<vm>/<YYYY-MM>/<disk> */
    month = qb_strdup (slash + 1);
    *slash = '\0';
    slash = strrchr (real, '/');
    if (!slash || slash == real) {
      free (month);
      return qb_error_set (QB_EINVAL, "--dir %s: expected STORE/<vm>/<YYYY-MM>/<disk>", dir);
    }
  }
  w->vm = qb_strdup (slash + 1);
  *slash = '\0';
  w->root = qb_strdup (real);
  w->rel = month ? qb_asprintf ("%s/%s", month, w->disk) : qb_strdup (w->disk);
  free (month);
  if (!qb_name_is_safe (w->vm) || !qb_name_is_safe (w->disk))
    return qb_error_set (QB_EINVAL, "--dir %s: VM or disk name is not a safe name", dir);
  return 0;
}

/* True if layer L's file lies directly in directory DIR. */
static bool
layer_in_dir (const store_layer *l, const char *dir)
{
  size_t n = strlen (dir);
  return strncmp (l->path, dir, n) == 0 && l->path[n] == '/' && !strchr (l->path + n + 1, '/');
}

/* Normalise a user's point name: drop ".img", turn "2026-11-26T04:50:00Z_02"
 * into "20261126T045000Z_02".  Malloc'd. */
static char *
until_normalise (const char *s)
{
  char *c = qb_strdup (s);
  size_t n = strlen (c);
  if (n > 4 && strcmp (c + n - 4, ".img") == 0)
    c[n - 4] = '\0';
  char *z = strchr (c, 'Z');
  if (z && strchr (c, 'T') && strchr (c, 'T') < z) {
    char *d = c;
    for (char *p = c; *p; p++)
      if (p > z || (*p != '-' && *p != ':'))
        *d++ = *p;
    *d = '\0';
  }
  return c;
}

/* Pick the chain and layer index K for --until (NULL: newest) among the chains
 * of DISK lying in DIR.  0, or -1 with an error. */
static int
pick_point (const store_disk *disk, const char *dir, const char *until,
            const store_chain **chain, size_t *k)
{
  *chain = NULL;
  const store_chain *best = NULL;
  size_t bestk = 0;
  char *norm = until ? until_normalise (until) : NULL;
  int64_t t = 0;
  bool by_time = false;

  /* Exact match of id, display name or file name first. */
  for (size_t c = 0; norm && c < disk->nchains && !best; c++) {
    const store_chain *ch = &disk->chains[c];
    if (ch->n == 0 || !layer_in_dir (&ch->layers[0], dir))
      continue;
    for (size_t i = 0; i < ch->n; i++)
      if (strcmp (ch->layers[i].id, norm) == 0 || strcmp (ch->layers[i].name, until) == 0
          || strcmp (ch->layers[i].display, until) == 0) {
        best = ch;
        bestk = i;
        break;
      }
  }
  if (norm && !best) {
    int seq = 1;
    if (store_id_parse (norm, &t, &seq) < 0) {
      free (norm);
      return qb_error_set (QB_EINVAL, "--until %s is neither a restore point nor a time", until);
    }
    by_time = true;
  }
  free (norm);
  if (!best) {
    /* The newest layer (at or before T). */
    for (size_t c = 0; c < disk->nchains; c++) {
      const store_chain *ch = &disk->chains[c];
      if (ch->n == 0 || !layer_in_dir (&ch->layers[0], dir))
        continue;
      for (size_t i = 0; i < ch->n; i++) {
        const store_layer *l = &ch->layers[i];
        if (by_time && l->time_us > t)
          continue;
        if (!best || l->time_us >= best->layers[bestk].time_us) {
          best = ch;
          bestk = i;
        }
      }
    }
  }
  if (!best)
    return qb_error_set (QB_ENOENT, "no restore point %s%s in %s",
                         until ? "at or before " : "", until ? until : "", dir);
  *chain = best;
  *k = bestk;
  return 0;
}

/* Scan the store for W and pick the point; the scan is returned in *V. */
static int
locate (const where *w, const char *until, store **st, store_vm **v,
        const store_chain **chain, size_t *k)
{
  *st = store_open (w->root, false);
  if (!*st)
    return -1;
  *v = store_scan_vm (*st, w->vm);
  if (!*v)
    return -1;
  const store_disk *d = store_vm_disk (*v, w->disk);
  if (!d)
    return qb_error_set (QB_ENOENT, "no backups of disk %s in %s", w->disk, w->dir);
  return pick_point (d, w->dir, until, chain, k);
}

/* Refuse a chain whose layers 0..K (or any layer, with ALL) are damaged. */
static int
check_damage (const store_chain *ch, size_t k, bool all)
{
  for (size_t i = 0; i < ch->n && (all || i <= k); i++)
    if (ch->layers[i].damage)
      return qb_error_set (QB_EDAMAGED, "the chain of %s is damaged (%s); refusing",
                           ch->layers[0].name, ch->layers[i].damage);
  return 0;
}

/* ---- merge: write a restore point as a new image ---- */

/* Write restore point CH[0..K] as raw into open FD, sparsely; 0 or -1. */
static int
write_raw (const store_chain *ch, size_t k, int fd, const char *path)
{
  const char **files = qb_calloc (k + 1, sizeof *files);
  for (size_t i = 0; i <= k; i++)
    files[i] = ch->layers[i].path;
  chain_image *ci = chain_open (files, k + 1);
  free (files);
  if (!ci)
    return -1;
  const size_t bufsz = 4 << 20;
  char *buf = malloc (bufsz);
  if (!buf) {
    chain_close (ci);
    return qb_error_set (QB_ENOMEM, "out of memory");
  }
  uint64_t size = chain_size (ci), off = 0;
  int ret = 0;
  while (off < size && ret == 0) {
    chain_extent ext;
    if (chain_extent_at (ci, off, size - off, &ext) < 0) {
      ret = -1;
      break;
    }
    uint64_t len = ext.length < size - off ? ext.length : size - off;
    if (len == 0) {
      ret = qb_error_set (QB_EIO, "chain reader returned an empty extent at %llu",
                          (unsigned long long) off);
      break;
    }
    if (ext.kind == CHAIN_EXT_ZERO) {
      off += len;
      continue;
    }
    for (uint64_t done = 0; done < len && ret == 0;) {
      size_t want = len - done < bufsz ? (size_t) (len - done) : bufsz;
      ssize_t r;
      if (ext.kind == CHAIN_EXT_DATA)
        r = pread (ext.fd, buf, want, (off_t) (ext.fd_offset + done));
      else
        r = chain_pread (ci, buf, want, off + done);
      if (r < 0) {
        if (ext.kind == CHAIN_EXT_DATA)
          qb_error_set_errno (errno, "read layer at %llu", (unsigned long long) (off + done));
        ret = -1;
        break;
      }
      if ((size_t) r != want) {
        ret = qb_error_set (QB_EIO, "short read of the chain at %llu",
                            (unsigned long long) (off + done));
        break;
      }
      for (size_t w = 0; w < want;) {
        ssize_t n = pwrite (fd, buf + w, want - w, (off_t) (off + done + w));
        if (n < 0) {
          if (errno == EINTR)
            continue;
          ret = qb_error_set_errno (errno, "write %s", path);
          break;
        }
        w += (size_t) n;
      }
      done += want;
    }
    off += len;
  }
  if (ret == 0 && ftruncate (fd, (off_t) size) < 0)
    ret = qb_error_set_errno (errno, "truncate %s", path);
  if (ret == 0 && fsync (fd) < 0)
    ret = qb_error_set_errno (errno, "fsync %s", path);
  free (buf);
  chain_close (ci);
  return ret;
}

/* The directory of PATH (malloc'd). */
static char *
dir_of (const char *path)
{
  char *c = qb_strdup (path);
  char *d = qb_strdup (dirname (c));
  free (c);
  return d;
}

/* A private directory beside the merge target: created by mkdtemp (0700,
 * unpredictable name), held open so the files in it are reached through the
 * directory itself even if its name is moved.  Nothing is ever written
 * through a name another user could have planted. */
typedef struct privdir {
  char *path;        /* the directory's name (for removal and messages) */
  int fd;            /* the directory, O_DIRECTORY | O_NOFOLLOW */
} privdir;

/* Make the private directory for TARGET in its folder: 0 or -1. */
static int
privdir_make (privdir *pd, const char *target)
{
  char *dir = dir_of (target);
  const char *base = strrchr (target, '/') ? strrchr (target, '/') + 1 : target;
  pd->path = qb_asprintf ("%s/.%s.merge-XXXXXX", dir, base);
  free (dir);
  pd->fd = -1;
  if (!mkdtemp (pd->path)) {
    int e = errno;
    free (pd->path);
    pd->path = NULL;
    return qb_error_set_errno (e, "create a private directory beside %s", target);
  }
  pd->fd = open (pd->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat sb;
  if (pd->fd < 0 || fstat (pd->fd, &sb) < 0 || !S_ISDIR (sb.st_mode)
      || sb.st_uid != geteuid () || (sb.st_mode & 077) != 0)
    return qb_error_set (QB_EPERM, "the private directory %s was replaced by someone else",
                         pd->path);
  return 0;
}

/* The name of file NAME inside PD for a child process: a path through our
 * open directory (/proc/self/fd), so a renamed directory does not matter.
 * The fd must then be inherited: the caller clears close-on-exec. */
static char *
privdir_child_path (const privdir *pd, const char *name)
{
  return qb_asprintf ("/proc/self/fd/%d/%s", pd->fd, name);
}

/* Remove files NAMES (NULL-terminated) from PD and PD itself; free it. */
static void
privdir_remove (privdir *pd, const char *const *names)
{
  if (pd->fd >= 0) {
    for (size_t i = 0; names[i]; i++)
      unlinkat (pd->fd, names[i], 0);
    close (pd->fd);
  }
  if (pd->path)
    rmdir (pd->path);
  free (pd->path);
  pd->path = NULL;
  pd->fd = -1;
}

/* Make file NAME in PD mode 0600 and flush it to disk: 0 or -1. */
static int
privdir_seal (const privdir *pd, const char *name)
{
  int fd = openat (pd->fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return qb_error_set_errno (errno, "open %s/%s", pd->path, name);
  int r = 0;
  if (fchmod (fd, 0600) < 0 || fsync (fd) < 0)
    r = qb_error_set_errno (errno, "chmod/fsync %s/%s", pd->path, name);
  close (fd);
  return r;
}

/* `merge`: write the point to o->target; exit code.  The image is written in
 * a private directory beside the target, then renamed over it: rename
 * replaces whatever sits at the target's name (a planted symlink too)
 * instead of following it.  The result is mode 0600. */
static int
cmd_merge (const opts *o)
{
  static const char *const names[] = { "image.raw", "image.qcow2", NULL };
  where w;
  store *st = NULL;
  store_vm *v = NULL;
  const store_chain *ch;
  size_t k;
  int rc = 1;
  char *tdir = NULL, *rawpath = NULL, *qcowpath = NULL;
  privdir pd = { NULL, -1 };
  int fd = -1;

  if (where_parse (o->dir, &w) < 0 || locate (&w, o->until, &st, &v, &ch, &k) < 0
      || check_damage (ch, k, false) < 0) {
    rc = fail ("merge");
    goto out;
  }
  struct stat sb;
  if (!o->force && lstat (o->target, &sb) == 0) {
    fprintf (stderr, "qmprebase: merge: %s exists; use --force to overwrite it\n", o->target);
    goto out;
  }
  size_t tl = strlen (o->target);
  bool qcow2 = tl > 6 && strcmp (o->target + tl - 6, ".qcow2") == 0;
  tdir = dir_of (o->target);
  if (privdir_make (&pd, o->target) < 0) {
    rc = fail ("merge");
    goto out;
  }
  fd = openat (pd.fd, names[0], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    qb_error_set_errno (errno, "create %s/%s", pd.path, names[0]);
    rc = fail ("merge");
    goto out;
  }
  printf ("writing restore point %s of %s/%s (%s) to %s\n", ch->layers[k].display, w.vm,
          w.disk, ch->layers[k].name, o->target);
  rawpath = qb_asprintf ("%s/%s", pd.path, names[0]);
  if (write_raw (ch, k, fd, rawpath) < 0) {
    rc = fail ("merge");
    goto out;
  }
  const char *result = names[0];
  if (qcow2) {
    /* qemu-img reads and writes inside the private directory only. */
    int fl = fcntl (pd.fd, F_GETFD);
    fcntl (pd.fd, F_SETFD, fl & ~FD_CLOEXEC);
    char *in = privdir_child_path (&pd, names[0]);
    qcowpath = privdir_child_path (&pd, names[1]);
    char *argv[] = { "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", in, qcowpath, NULL };
    mode_t old = umask (077);
    int r = qb_run (argv, NULL);
    umask (old);
    fcntl (pd.fd, F_SETFD, fl | FD_CLOEXEC);
    free (in);
    if (r < 0) {
      rc = fail ("merge");
      goto out;
    }
    result = names[1];
  }
  if (privdir_seal (&pd, result) < 0) {
    rc = fail ("merge");
    goto out;
  }
  if (renameat (pd.fd, result, AT_FDCWD, o->target) < 0) {
    qb_error_set_errno (errno, "rename %s/%s to %s", pd.path, result, o->target);
    rc = fail ("merge");
    goto out;
  }
  qb_fsync_dir (tdir);
  rc = 0;
 out:
  if (fd >= 0)
    close (fd);
  privdir_remove (&pd, names);
  free (rawpath);
  free (qcowpath);
  free (tdir);
  store_vm_free (v);
  store_close (st);
  where_free (&w);
  return rc;
}

/* ---- rebase: merge into the FULL in place ---- */

/* 0 if only we (or root) can change directory DIR, where rebase renames and
 * writes files in place; else -1 with QB_EPERM saying what to do. */
static int
dir_private (const char *dir)
{
  struct stat sb;
  if (stat (dir, &sb) < 0)
    return qb_error_set_errno (errno, "%s", dir);
  if (sb.st_mode & 022)
    return qb_error_set (QB_EPERM, "%s is writable by other users, who could plant files "
                         "where rebase writes; make it private (chmod go-w) and retry", dir);
  if (sb.st_uid != geteuid () && sb.st_uid != 0)
    return qb_error_set (QB_EPERM, "%s belongs to another user (uid %u); rebase works in "
                         "place and refuses it", dir, (unsigned) sb.st_uid);
  return 0;
}

/* Index of this disk's entry (file REL/NAME) in record OBJ's "disks", or -1. */
static int
record_disk_index (json_object *obj, const where *w, const char *name)
{
  json_object *disks;
  if (!json_object_object_get_ex (obj, "disks", &disks)
      || !json_object_is_type (disks, json_type_array))
    return -1;
  char *file = qb_asprintf ("%s/%s", w->rel, name);
  int found = -1;
  for (size_t i = 0; i < json_object_array_length (disks) && found < 0; i++) {
    json_object *d = json_object_array_get_idx (disks, i), *f, *n;
    if (json_object_object_get_ex (d, "file", &f) && json_object_object_get_ex (d, "name", &n)
        && strcmp (json_object_get_string (f), file) == 0
        && strcmp (json_object_get_string (n), w->disk) == 0)
      found = (int) i;
  }
  free (file);
  return found;
}

/* Records: points 0..K-1 lose this disk (a record left without disks goes),
 * point K's entry becomes the FULL NEWNAME.  Seed layers have no records. */
static int
records_update (store *st, const where *w, const store_chain *ch, size_t k,
                const char *newname, const char *newpath)
{
  for (size_t i = 0; i <= k; i++) {
    const store_layer *l = &ch->layers[i];
    json_object *obj = store_record_read (st, w->vm, l->id);
    if (!obj) {
      qb_error_clear ();
      continue;             /* a seed layer */
    }
    int idx = record_disk_index (obj, w, l->name);
    if (idx < 0) {
      json_object_put (obj);
      continue;
    }
    json_object *disks;
    json_object_object_get_ex (obj, "disks", &disks);
    int ret;
    if (i < k) {
      if (json_object_array_length (disks) == 1)
        ret = store_point_remove (st, w->vm, l->id);
      else {
        json_object_array_del_idx (disks, (size_t) idx, 1);
        ret = store_record_write (st, w->vm, l->id, obj, true);
      }
    } else {
      json_object *d = json_object_array_get_idx (disks, (size_t) idx);
      struct stat sb;
      json_object_object_add (d, "kind", json_object_new_string ("full"));
      char *file = qb_asprintf ("%s/%s", w->rel, newname);
      json_object_object_add (d, "file", json_object_new_string (file));
      free (file);
      json_object_object_add (d, "prev", NULL);
      if (stat (newpath, &sb) == 0)
        json_object_object_add (d, "bytes", json_object_new_int64 ((int64_t) sb.st_blocks * 512));
      ret = store_record_write (st, w->vm, l->id, obj, true);
    }
    json_object_put (obj);
    if (ret < 0)
      return -1;
  }
  return 0;
}

/* qemu-img rebase -u FILE onto BACKING (a name relative to FILE's directory). */
static int
set_backing (const char *file, const char *backing)
{
  char *argv[] = { "qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", (char *) backing,
                   "-F", "qcow2", (char *) file, NULL };
  if (qb_run (argv, NULL) < 0) {
    qb_error_prefix ("set the backing file of %s", file);
    return -1;
  }
  return 0;
}

/* `rebase`: merge layers 1..K into the FULL; exit code. */
static int
cmd_rebase (const opts *o)
{
  where w;
  store *st = NULL;
  store_vm *v = NULL;
  store_lock *lk = NULL;
  const store_chain *ch;
  size_t k;
  int rc = 1;
  char *newname = NULL, *newpath = NULL, *mpath = NULL, *mname = NULL;

  if (where_parse (o->dir, &w) < 0 || dir_private (w.dir) < 0) {
    rc = fail ("rebase");
    goto out;
  }
  if (!o->dry_run) {
    st = store_open (w.root, false);
    if (!st || !(lk = store_lock_vm (st, w.vm, 5000))) {
      rc = fail ("rebase");
      goto out;
    }
    store_close (st);
    st = NULL;
  }
  if (locate (&w, o->until, &st, &v, &ch, &k) < 0 || check_damage (ch, k, true) < 0) {
    rc = fail ("rebase");
    goto out;
  }
  const store_layer *full = &ch->layers[0], *top = &ch->layers[k];
  if (full->kind != STORE_FULL) {
    fprintf (stderr, "qmprebase: rebase: %s is a %s, not a chain; nothing to merge\n",
             full->name, full->kind == STORE_COPY ? "copy" : "layer without FULL");
    goto out;
  }
  if (k == 0) {
    printf ("%s: restore point %s is the FULL itself; nothing to merge\n", w.disk,
            full->display);
    rc = 0;
    goto out;
  }
  /* The merged FULL takes the name of point K ("INC-x" -> "FULL-x"). */
  newname = qb_asprintf ("FULL-%s", top->name + strlen ("INC-"));
  newpath = qb_asprintf ("%s/%s", w.dir, newname);
  mname = qb_asprintf (MERGING_PREFIX "%s", newname);
  mpath = qb_asprintf ("%s/%s", w.dir, mname);

  printf ("%s merge %zu INC%s into %s (restore point %s):\n", o->dry_run ? "would" : "will",
          k, k == 1 ? "" : "s", full->name, top->display);
  for (size_t i = 1; i <= k; i++)
    printf ("  commit %s\n", ch->layers[i].name);
  printf ("  %s becomes %s; restore points", full->name, newname);
  for (size_t i = 0; i < k; i++)
    printf (" %s", ch->layers[i].display);
  printf (" of %s go\n", w.disk);
  if (k + 1 < ch->n)
    printf ("  %s is rebased onto %s\n", ch->layers[k + 1].name, newname);
  if (o->dry_run) {
    rc = 0;
    goto out;
  }
  fflush (stdout);

  /* 1. Take the FULL's name away first: while it holds newer data, no name shows it. */
  if (rename (full->path, mpath) < 0) {
    qb_error_set_errno (errno, "rename %s", full->path);
    rc = fail ("rebase");
    goto out;
  }
  qb_fsync_dir (w.dir);
  /* 2. Link the layers by name (seed INCs are standalone; ours may name another path). */
  for (size_t i = 1; i <= k; i++)
    if (set_backing (ch->layers[i].path, i == 1 ? mname : ch->layers[i - 1].name) < 0) {
      fprintf (stderr, "qmprebase: rebase: %s; the data is intact in %s and the INC files\n",
               qb_error_msg (), mpath);
      goto out;
    }
  /* 3. Commit the whole chain into the FULL. */
  {
    char *argv[] = { "qemu-img", "commit", "-q", "-d", "-f", "qcow2", "-b", mpath,
                     (char *) top->path, NULL };
    if (qb_run (argv, NULL) < 0 || qb_fsync_path (mpath) < 0) {
      fprintf (stderr, "qmprebase: rebase: qemu-img commit failed: %s\n"
               "qmprebase: the chain is left as %s + %s..%s (data intact; not merged)\n",
               qb_error_msg (), mpath, ch->layers[1].name, top->name);
      goto out;
    }
  }
  /* 4. Records: older points lose this disk, point K's layer is the new FULL. */
  if (records_update (st, &w, ch, k, newname, mpath) < 0) {
    rc = fail ("rebase: update the restore point records");
    goto out;
  }
  /* 5. Files: merged INCs go, the FULL takes its new name. */
  for (size_t i = 1; i <= k; i++)
    if (unlink (ch->layers[i].path) < 0 && errno != ENOENT) {
      qb_error_set_errno (errno, "remove %s", ch->layers[i].path);
      rc = fail ("rebase");
      goto out;
    }
  if (rename (mpath, newpath) < 0) {
    qb_error_set_errno (errno, "rename %s to %s", mpath, newpath);
    rc = fail ("rebase");
    goto out;
  }
  qb_fsync_dir (w.dir);
  /* 6. The INC above K now continues the new FULL. */
  if (k + 1 < ch->n && set_backing (ch->layers[k + 1].path, newname) < 0) {
    rc = fail ("rebase");
    goto out;
  }
  printf ("%s: merged %zu INC%s; restore point %s is now %s\n", w.disk, k, k == 1 ? "" : "s",
          top->display, newname);
  rc = 0;
 out:
  free (newname);
  free (newpath);
  free (mname);
  free (mpath);
  store_vm_free (v);
  store_unlock (lk);
  store_close (st);
  where_free (&w);
  return rc;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "dir", required_argument, NULL, 'd' },
    { "until", required_argument, NULL, 'u' },
    { "targetfile", required_argument, NULL, 't' },
    { "dry-run", no_argument, NULL, 'n' },
    { "force", no_argument, NULL, 'f' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  opts o = { 0 };
  int c;
  while ((c = getopt_long (argc, argv, "hV", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': o.dir = optarg; break;
    case 'u': o.until = optarg; break;
    case 't': o.target = optarg; break;
    case 'n': o.dry_run = true; break;
    case 'f': o.force = true; break;
    case 'h': usage (stdout); return 0;
    case 'V': printf ("qmprebase %s\n", QB_VERSION); return 0;
    default: usage (stderr); return EXIT_USAGE;
    }
  }
  if (optind + 1 != argc) {
    usage (stderr);
    return EXIT_USAGE;
  }
  o.cmd = argv[optind];
  if (!o.dir) {
    fprintf (stderr, "qmprebase: --dir is required\n");
    return EXIT_USAGE;
  }
  if (strcmp (o.cmd, "rebase") == 0) {
    if (o.target || o.force) {
      fprintf (stderr, "qmprebase: rebase takes no --targetfile/--force\n");
      return EXIT_USAGE;
    }
    return cmd_rebase (&o);
  }
  if (strcmp (o.cmd, "merge") == 0) {
    if (!o.target || o.dry_run) {
      fprintf (stderr, "qmprebase: merge needs --targetfile FILE (and takes no --dry-run)\n");
      return EXIT_USAGE;
    }
    return cmd_merge (&o);
  }
  fprintf (stderr, "qmprebase: unknown command %s\n", o.cmd);
  usage (stderr);
  return EXIT_USAGE;
}
