/* qmpbackupfs — writing a restore point atomically, and recovery.
 *
 * Targets are written to <disk dir>/.tmp-<FINAL>.  Commit, in this order:
 *   1. fsyncs the targets in a thread while the sums of each are computed
 *      from the target file (sums.h) and written to .chain unsynced;
 *   2. writes every small file unsynced: each layer's .chain record (temp,
 *      renamed into place) and the point's record as a temp in .points;
 *   3. starts the writeback of all small files, then fsyncs, all at once
 *      (a few threads), each of them, each .chain folder, each disk folder
 *      (its .tmp entry) and the parent of every folder this commit made:
 *      from here everything the record names is durable;
 *   4. renames the record's temp to its name and fsyncs .points: the
 *      commit point;
 *   5. renames each temp to its final name and fsyncs the disk folders.
 * A crash before 4 leaves temps and .chain files of a layer no record
 * names: store_recover deletes them.  After 4, store_recover rolls the
 * renames forward. */
#include "store-int.h"
#include "sums.h"
#include "common/error.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct txn_disk {
  char *name;
  store_kind kind;
  char *dir;             /* absolute disk directory */
  char *rel;             /* file path relative to STORE/<vm> */
  char *final;           /* absolute final path */
  char *tmp;             /* absolute temporary path */
  char *chain;
  char *prev;
  uint64_t virtual_size;
  uint64_t bytes;
  uint64_t size;         /* the file's length at commit */
  bool sidecar;          /* DIR/.chain/<final>.json was written by this txn */
  bool sums;             /* DIR/.chain/<final>.sums was written by this txn */
  bool made_dir;         /* this txn created DIR */
} txn_disk;

struct store_txn {
  store *st;
  char *vm;
  char *vmdir;
  char id[STORE_ID_MAX];
  int64_t time_us;
  char *month;           /* NULL unless monthly */
  bool made_month;
  size_t ndisks;
  txn_disk *disks;
  bool committed;
};

/* Note the id of every layer file and temp in directory PATH into *IDS. */
static void
collect_dir_ids (const char *path, char ***ids, size_t *n)
{
  DIR *d = opendir (path);
  if (!d)
    return;
  struct dirent *de;
  while ((de = readdir (d)) != NULL) {
    const char *name = de->d_name;
    if (strncmp (name, STORE_TMP_PREFIX, strlen (STORE_TMP_PREFIX)) == 0)
      name += strlen (STORE_TMP_PREFIX);
    store_kind k;
    char id[STORE_ID_MAX];
    int64_t t;
    int seq;
    if (!store_layer_name_parse (name, &k, id, &t, &seq))
      continue;
    *ids = qb_realloc (*ids, (*n + 1) * sizeof **ids);
    (*ids)[(*n)++] = qb_strdup (id);
  }
  closedir (d);
}

/* Every id in use in VMDIR: records, layer files and temps in all disk dirs. */
static void
collect_ids (const char *vmdir, char ***ids, size_t *n)
{
  *ids = NULL;
  *n = 0;
  char *pdir = qb_asprintf ("%s/" STORE_POINTS_DIR, vmdir);
  DIR *d = opendir (pdir);
  if (d) {
    struct dirent *de;
    while ((de = readdir (d)) != NULL) {
      char id[STORE_ID_MAX];
      const char *name = de->d_name;
      if (strncmp (name, STORE_TMP_PREFIX, strlen (STORE_TMP_PREFIX)) == 0)
        name += strlen (STORE_TMP_PREFIX);
      size_t len = strlen (name);
      if (len < 6 || len - 5 >= sizeof id || strcmp (name + len - 5, ".json") != 0)
        continue;
      memcpy (id, name, len - 5);
      id[len - 5] = '\0';
      if (!store_id_valid (id))
        continue;
      *ids = qb_realloc (*ids, (*n + 1) * sizeof **ids);
      (*ids)[(*n)++] = qb_strdup (id);
    }
    closedir (d);
  }
  free (pdir);
  d = opendir (vmdir);
  if (!d)
    return;
  struct dirent *de;
  while ((de = readdir (d)) != NULL) {
    if (!qb_name_is_safe (de->d_name))
      continue;
    char *sub = qb_asprintf ("%s/%s", vmdir, de->d_name);
    collect_dir_ids (sub, ids, n);
    if (store_is_month (de->d_name)) {
      DIR *m = opendir (sub);
      struct dirent *me;
      while (m && (me = readdir (m)) != NULL) {
        if (!qb_name_is_safe (me->d_name))
          continue;
        char *dd = qb_asprintf ("%s/%s", sub, me->d_name);
        collect_dir_ids (dd, ids, n);
        free (dd);
      }
      if (m)
        closedir (m);
    }
    free (sub);
  }
  closedir (d);
}

/* Begin a restore point of VM at NOW_US with a fresh id. */
store_txn *
store_txn_begin (store *st, const char *vm, int64_t now_us, bool monthly)
{
  char *vmdir = store_vm_dir (st, vm);
  if (!vmdir)
    return NULL;
  if (store_mkdirs (st, vm) < 0) {
    free (vmdir);
    return NULL;
  }
  char **ids;
  size_t nids;
  collect_ids (vmdir, &ids, &nids);
  int64_t sec_us = now_us - now_us % 1000000;
  if (now_us < 0 && now_us % 1000000)
    sec_us -= 1000000;
  int seq = 1;
  for (size_t i = 0; i < nids; i++) {
    int64_t t;
    int s;
    if (store_id_parse (ids[i], &t, &s) == 0 && t == sec_us && s >= seq)
      seq = s + 1;
  }
  store_names_free (ids, nids);
  if (seq > 99) {
    qb_error_set (QB_EBUSY, "too many restore points of VM %s in one second", vm);
    free (vmdir);
    return NULL;
  }
  store_txn *t = qb_calloc (1, sizeof *t);
  t->st = st;
  t->vm = qb_strdup (vm);
  t->vmdir = vmdir;
  t->time_us = now_us;
  store_id_format (sec_us, seq, t->id, sizeof t->id);
  if (monthly) {
    char buf[32];
    qb_format_utc (now_us, buf, sizeof buf);
    t->month = qb_asprintf ("%.7s", buf);
  }
  return t;
}

/* The id of the point being written. */
const char *
store_txn_id (const store_txn *t)
{
  return t->id;
}

static txn_disk *
txn_find (const store_txn *t, const char *disk)
{
  for (size_t i = 0; i < t->ndisks; i++)
    if (strcmp (t->disks[i].name, disk) == 0)
      return &t->disks[i];
  return NULL;
}

/* Add DISK's layer; returns the temp path the caller writes the image to. */
const char *
store_txn_add_disk (store_txn *t, const char *disk, store_kind kind,
                    const store_layer *prev, const char *chain_id, uint64_t virtual_size)
{
  if (t->committed) {
    qb_error_set (QB_EINVAL, "restore point %s is already committed", t->id);
    return NULL;
  }
  if (!qb_name_is_safe (disk)) {
    qb_error_set (QB_EINVAL, "invalid disk name \"%s\"", disk ? disk : "");
    return NULL;
  }
  if (txn_find (t, disk)) {
    qb_error_set (QB_EINVAL, "disk %s added twice to restore point %s", disk, t->id);
    return NULL;
  }
  if (kind == STORE_INC && !prev) {
    qb_error_set (QB_EINVAL, "an incremental layer of disk %s needs its previous layer", disk);
    return NULL;
  }
  if (kind == STORE_INC && prev->kind == STORE_COPY) {
    qb_error_set (QB_EINVAL, "an incremental layer cannot continue the copy %s", prev->name);
    return NULL;
  }
  if (kind == STORE_FULL && chain_id && !qb_name_is_safe (chain_id)) {
    qb_error_set (QB_EINVAL, "invalid chain id \"%s\"", chain_id);
    return NULL;
  }
  char *mdir = t->month ? qb_asprintf ("%s/%s", t->vmdir, t->month) : NULL;
  struct stat sb;
  if (mdir && !t->made_month && lstat (mdir, &sb) < 0)
    t->made_month = true;
  char *rdir = t->month ? qb_asprintf ("%s/%s", t->month, disk) : qb_strdup (disk);
  char *dir = qb_asprintf ("%s/%s", t->vmdir, rdir);
  char *srel = qb_asprintf ("%s/%s", t->vm, rdir);
  bool made = lstat (dir, &sb) < 0;
  free (mdir);
  /* 0700, and never through a symbolic link */
  int mk = store_mkdirs (t->st, srel);
  free (srel);
  if (mk < 0) {
    free (rdir);
    free (dir);
    return NULL;
  }
  t->disks = qb_realloc (t->disks, (t->ndisks + 1) * sizeof *t->disks);
  txn_disk *d = &t->disks[t->ndisks++];
  memset (d, 0, sizeof *d);
  d->name = qb_strdup (disk);
  d->kind = kind;
  d->dir = dir;
  d->made_dir = made;
  d->rel = qb_asprintf ("%s/%s-%s", rdir, store_kind_prefix (kind), t->id);
  d->final = qb_asprintf ("%s/%s-%s", dir, store_kind_prefix (kind), t->id);
  d->tmp = qb_asprintf ("%s/" STORE_TMP_PREFIX "%s-%s", dir, store_kind_prefix (kind), t->id);
  free (rdir);
  d->virtual_size = virtual_size;
  if (kind == STORE_FULL) {
    char buf[32];
    if (!chain_id) {
      store_new_chain_id (buf, sizeof buf);
      chain_id = buf;
    }
    d->chain = qb_strdup (chain_id);
  } else if (kind == STORE_INC) {
    d->chain = qb_strdup (prev->chain_id);
    d->prev = qb_strdup (prev->id);
  }
  /* A leftover of an earlier attempt with this id must not be mistaken for our target. */
  unlink (d->tmp);
  return d->tmp;
}

/* Create DISK's temp as an empty 0600 file of ours. */
int
store_txn_create_target (store_txn *t, const char *disk)
{
  txn_disk *d = disk ? txn_find (t, disk) : NULL;
  if (!d)
    return qb_error_set (QB_ENOENT, "disk %s is not part of restore point %s",
                         disk ? disk : "", t->id);
  int fd = open (d->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return store_write_error (t->st, errno, "create", d->tmp);
  close (fd);
  return 0;
}

/* The final path of DISK's layer. */
const char *
store_txn_final_path (const store_txn *t, const char *disk)
{
  txn_disk *d = disk ? txn_find (t, disk) : NULL;
  if (!d) {
    qb_error_set (QB_ENOENT, "disk %s is not part of restore point %s", disk ? disk : "", t->id);
    return NULL;
  }
  return d->final;
}

static const char *core_keys[] = { "version", "id", "time", "time_us", "vm", "month", "disks", NULL };

/* The record object of T. */
static json_object *
txn_record (const store_txn *t, json_object *extra)
{
  json_object *o = json_object_new_object ();
  char when[32];
  qb_format_utc (t->time_us, when, sizeof when);
  json_object_object_add (o, "version", json_object_new_int (1));
  json_object_object_add (o, "id", json_object_new_string (t->id));
  json_object_object_add (o, "time", json_object_new_string (when));
  json_object_object_add (o, "time_us", json_object_new_int64 (t->time_us));
  json_object_object_add (o, "vm", json_object_new_string (t->vm));
  json_object_object_add (o, "month", t->month ? json_object_new_string (t->month) : NULL);
  json_object *arr = json_object_new_array ();
  for (size_t i = 0; i < t->ndisks; i++) {
    const txn_disk *d = &t->disks[i];
    json_object *jd = json_object_new_object ();
    json_object_object_add (jd, "name", json_object_new_string (d->name));
    json_object_object_add (jd, "file", json_object_new_string (d->rel));
    json_object_object_add (jd, "kind", json_object_new_string (store_kind_word (d->kind)));
    json_object_object_add (jd, "chain", d->chain ? json_object_new_string (d->chain) : NULL);
    json_object_object_add (jd, "prev", d->prev ? json_object_new_string (d->prev) : NULL);
    json_object_object_add (jd, "virtual_size", json_object_new_int64 ((int64_t) d->virtual_size));
    json_object_object_add (jd, "bytes", json_object_new_int64 ((int64_t) d->bytes));
    json_object_object_add (jd, "size", json_object_new_int64 ((int64_t) d->size));
    json_object_array_add (arr, jd);
  }
  json_object_object_add (o, "disks", arr);
  if (extra && json_object_is_type (extra, json_type_object)) {
    json_object_object_foreach (extra, key, val) {
      bool core = false;
      for (int k = 0; core_keys[k]; k++)
        core |= strcmp (core_keys[k], key) == 0;
      if (!core)
        json_object_object_add (o, key, json_object_get (val));
    }
  }
  return o;
}

/* The JSON text of a record as the store writes it. */
static const char *
txn_json_text (json_object *o)
{
  return json_object_to_json_string_ext (o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED
                                         | JSON_C_TO_STRING_NOSLASHESCAPE);
}

/* Write all of LEN bytes of BUF to FD: 0, or -1 with errno set. */
static int
txn_write_all (int fd, const char *buf, size_t len)
{
  while (len > 0) {
    ssize_t w = write (fd, buf, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -1;
    buf += w;
    len -= (size_t) w;
  }
  return 0;
}

/* Create NAME in folder DFD (WHERE in messages) as a new 0600 file
 * (O_EXCL, no link followed) holding O's text, unsynced: its descriptor
 * (the caller fsyncs and closes it), or -1 (the file removed). */
static int
txn_json_create (store_txn *t, int dfd, const char *where, const char *name, json_object *o)
{
  const char *text = txn_json_text (o);
  unlinkat (dfd, name, 0);
  int fd = openat (dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0)
    return store_write_error (t->st, errno, "create", where);
  if (txn_write_all (fd, text, strlen (text)) < 0 || txn_write_all (fd, "\n", 1) < 0) {
    int e = errno;
    close (fd);
    unlinkat (dfd, name, 0);
    return store_write_error (t->st, e, "write", where);
  }
  return fd;
}

/* The files and folders a commit makes durable at once (step 3). */
typedef struct txn_sync {
  int *fds;              /* files, then folders: each synced, then closed */
  char **what;           /* for messages */
  size_t n, nfiles;
} txn_sync;

/* Keep FD (WHAT in messages) to be synced; a folder after all files. */
static void
txn_sync_add (txn_sync *s, int fd, bool folder, const char *what)
{
  s->fds = qb_realloc (s->fds, (s->n + 1) * sizeof *s->fds);
  s->what = qb_realloc (s->what, (s->n + 1) * sizeof *s->what);
  size_t at = s->n;
  if (!folder) {
    /* files first: their writeback is started before the first fsync */
    memmove (s->fds + s->nfiles + 1, s->fds + s->nfiles, (s->n - s->nfiles) * sizeof *s->fds);
    memmove (s->what + s->nfiles + 1, s->what + s->nfiles,
             (s->n - s->nfiles) * sizeof *s->what);
    at = s->nfiles++;
  }
  s->fds[at] = fd;
  s->what[at] = qb_strdup (what);
  s->n++;
}

/* Threads that fsync the files and folders of a commit at once: the
 * filesystem joins concurrent fsyncs into one journal commit and one cache
 * flush where it can, where one after the other each pays its own. */
#define SYNC_THREADS 8

typedef struct txn_syncer {
  txn_sync *s;
  size_t next;           /* the next entry to take (atomic) */
  int *errs;             /* errno of each entry, 0 when synced */
} txn_syncer;

/* Thread: fsync the entries of Y not taken yet. */
static void *
txn_syncer_run (void *opaque)
{
  txn_syncer *y = opaque;
  size_t i;
  while ((i = __atomic_fetch_add (&y->next, 1, __ATOMIC_RELAXED)) < y->s->n)
    y->errs[i] = fsync (y->s->fds[i]) < 0 ? errno : 0;
  return NULL;
}

/* Make everything in S durable: the writeback of all files started, then
 * every file and folder fsynced at once (nothing in S must be durable
 * before anything else in S).  0, or -1. */
static int
txn_sync_run (store_txn *t, txn_sync *s)
{
  for (size_t i = 0; i < s->nfiles; i++)
    sync_file_range (s->fds[i], 0, 0, SYNC_FILE_RANGE_WRITE);
  txn_syncer y = { s, 0, qb_calloc (s->n ? s->n : 1, sizeof (int)) };
  pthread_t th[SYNC_THREADS];
  size_t nth = 0;
  while (nth < SYNC_THREADS && nth + 1 < s->n
         && pthread_create (&th[nth], NULL, txn_syncer_run, &y) == 0)
    nth++;
  txn_syncer_run (&y);
  for (size_t i = 0; i < nth; i++)
    pthread_join (th[i], NULL);
  int ret = 0;
  for (size_t i = 0; i < s->n && ret == 0; i++)
    if (y.errs[i])
      ret = store_write_error (t->st, y.errs[i], "fsync", s->what[i]);
  free (y.errs);
  return ret;
}

/* Close and forget everything in S. */
static void
txn_sync_free (txn_sync *s)
{
  for (size_t i = 0; i < s->n; i++) {
    close (s->fds[i]);
    free (s->what[i]);
  }
  free (s->fds);
  free (s->what);
  memset (s, 0, sizeof *s);
}

/* Open folder REL of the VM (no link followed) into S to be synced: 0, or -1. */
static int
txn_sync_dir (store_txn *t, txn_sync *s, const char *rel)
{
  char *srel = *rel ? qb_asprintf ("%s/%s", t->vm, rel) : qb_strdup (t->vm);
  int fd = qb_openat_nofollow (t->st->rootfd, srel, O_RDONLY | O_DIRECTORY);
  int r = fd < 0 ? store_fs_error (errno, "open", srel) : 0;
  if (fd >= 0)
    txn_sync_add (s, fd, true, srel);
  free (srel);
  return r;
}

/* The targets being fsynced by a thread while their sums are computed. */
typedef struct txn_flusher {
  store_txn *t;
  int *fds;
  int err;               /* the first fsync's errno */
  size_t bad;            /* which target */
} txn_flusher;

/* Thread: fsync every target of F. */
static void *
txn_flush_run (void *opaque)
{
  txn_flusher *f = opaque;
  for (size_t i = 0; i < f->t->ndisks && !f->err; i++)
    if (fsync (f->fds[i]) < 0) {
      f->err = errno;
      f->bad = i;
    }
  return NULL;
}

/* Open DISK's temp PATH as the target to commit: a regular file, made
 * 0600 whoever created it.  The descriptor, or -1. */
static int
txn_open_target (const char *path)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT)
      return qb_error_set (QB_ENOENT, "the backup target %s was not written", path);
    return qb_error_set_errno (errno, "open %s", path);
  }
  struct stat sb;
  if (fstat (fd, &sb) < 0) {
    int e = errno;
    close (fd);
    return qb_error_set_errno (e, "stat %s", path);
  }
  if (!S_ISREG (sb.st_mode)) {
    close (fd);
    return qb_error_set (QB_EIO, "the backup target %s is not a regular file", path);
  }
  /* the store holds every VM's disks: owner only, whoever created the file */
  if ((sb.st_mode & 07777) != 0600 && fchmod (fd, 0600) < 0) {
    int e = errno;
    close (fd);
    return qb_error_set_errno (e, "chmod 0600 %s", path);
  }
  return fd;
}

/* The base name of PATH. */
static const char *
txn_base (const char *path)
{
  const char *s = strrchr (path, '/');
  return s ? s + 1 : path;
}

/* The folder of DISK's layer relative to the VM (malloc'd). */
static char *
txn_disk_rel (const txn_disk *d)
{
  char *rdir = qb_strdup (d->rel);
  *strrchr (rdir, '/') = '\0';
  return rdir;
}

/* Write the per-layer record of every disk of T (REC is the point's
 * record: each disk gets a copy holding only its own entry) into
 * <disk dir>/.chain/, unsynced, and note in S what makes them durable:
 * 0 or -1. */
static int
txn_write_sidecars (store_txn *t, json_object *rec, txn_sync *s)
{
  json_object *disks;
  json_object_object_get_ex (rec, "disks", &disks);
  for (size_t i = 0; i < t->ndisks; i++) {
    txn_disk *d = &t->disks[i];
    char *rdir = txn_disk_rel (d);
    char *crel = qb_asprintf ("%s/%s/" STORE_SIDECAR_DIR, t->vm, rdir);
    free (rdir);
    int r = store_mkdirs (t->st, crel);
    int cfd = r < 0 ? -1 : qb_openat_nofollow (t->st->rootfd, crel, O_RDONLY | O_DIRECTORY);
    if (r == 0 && cfd < 0)
      r = store_fs_error (errno, "open", crel);
    if (r == 0) {
      json_object *side = NULL;
      json_object_deep_copy (rec, &side, NULL);
      json_object *one = json_object_new_array ();
      json_object_array_add (one, json_object_get (json_object_array_get_idx (disks, i)));
      json_object_object_add (side, "disks", one);
      json_object_object_add (side, "layer", json_object_new_string (txn_base (d->final)));
      char *name = qb_asprintf ("%s.json", txn_base (d->final));
      char *tmp = qb_asprintf (STORE_TMP_PREFIX "%s", name);
      char *what = qb_asprintf ("%s/%s", crel, name);
      int fd = txn_json_create (t, cfd, what, tmp, side);
      /* named before it is synced: no record names this layer before step 3 */
      if (fd >= 0 && renameat (cfd, tmp, cfd, name) < 0) {
        r = store_write_error (t->st, errno, "rename", what);
        close (fd);
        unlinkat (cfd, tmp, 0);
      } else if (fd < 0)
        r = -1;
      else {
        d->sidecar = true;
        txn_sync_add (s, fd, false, what);
      }
      free (what);
      free (tmp);
      free (name);
      json_object_put (side);
    }
    if (cfd >= 0) {
      if (r == 0)
        txn_sync_add (s, cfd, true, crel);
      else
        close (cfd);
    }
    free (crel);
    if (r < 0)
      return -1;
  }
  return 0;
}

/* Write the checksums of every layer of T (sums.h) beside its record,
 * computed from its temp, unsynced, and note in S what makes them durable
 * (a target that is no qcow2 image gets none: the scan reports it
 * damaged): 0 or -1. */
static int
txn_write_sums (store_txn *t, txn_sync *s)
{
  for (size_t i = 0; i < t->ndisks; i++) {
    txn_disk *d = &t->disks[i];
    char *rdir = txn_disk_rel (d);
    char *drel = qb_asprintf ("%s/%s", t->vm, rdir);
    free (rdir);
    int dfd = qb_openat_nofollow (t->st->rootfd, drel, O_RDONLY | O_DIRECTORY);
    int r = dfd < 0 ? store_fs_error (errno, "open", drel)
      : store_sums_write_unsynced (dfd, txn_base (d->tmp), txn_base (d->final));
    if (r == 0) {
      d->sums = true;
      char *name = qb_asprintf (STORE_SIDECAR_DIR "/%s.sums", txn_base (d->final));
      char *what = qb_asprintf ("%s/%s", drel, name);
      int fd = qb_openat_nofollow (dfd, name, O_RDONLY);
      if (fd < 0)
        r = store_fs_error (errno, "open", what);
      else
        txn_sync_add (s, fd, false, what);
      free (name);
      free (what);
    } else if (qb_error_code () == QB_EDAMAGED) {
      /* not a readable qcow2 image: the scan reports it; nothing to sum */
      qb_error_clear ();
      r = 0;
    }
    if (dfd >= 0)
      close (dfd);
    free (drel);
    if (r < 0)
      return -1;
  }
  return 0;
}

/* Remove temps and any directories this txn created (if empty). */
static void
txn_discard (store_txn *t)
{
  for (size_t i = 0; i < t->ndisks; i++) {
    if (t->disks[i].sums) {
      char *sums = qb_asprintf ("%s/" STORE_SIDECAR_DIR "/%s.sums", t->disks[i].dir,
                                txn_base (t->disks[i].final));
      unlink (sums);
      free (sums);
      t->disks[i].sums = false;
    }
    if (t->disks[i].sidecar) {
      char *side = qb_asprintf ("%s/" STORE_SIDECAR_DIR "/%s.json", t->disks[i].dir,
                                txn_base (t->disks[i].final));
      unlink (side);
      free (side);
      t->disks[i].sidecar = false;
      if (t->disks[i].made_dir) {
        char *cdir = qb_asprintf ("%s/" STORE_SIDECAR_DIR, t->disks[i].dir);
        rmdir (cdir);
        free (cdir);
      }
    }
    unlink (t->disks[i].tmp);
    if (t->disks[i].made_dir)
      rmdir (t->disks[i].dir);
  }
  if (t->made_month) {
    char *mdir = qb_asprintf ("%s/%s", t->vmdir, t->month);
    rmdir (mdir);
    free (mdir);
  }
}

/* Create the point's record of T as a temp in .points, unsynced, into S:
 * the temp's descriptor is kept in S; *PFD gets .points.  0, or -1. */
static int
txn_write_record (store_txn *t, json_object *rec, txn_sync *s, int *pfd)
{
  char *prel = qb_asprintf ("%s/" STORE_POINTS_DIR, t->vm);
  char *final = qb_asprintf ("%s.json", t->id);
  char *tmp = qb_asprintf (STORE_TMP_PREFIX "%s.json", t->id);
  char *what = qb_asprintf ("%s/%s", prel, tmp);
  int ret = -1;
  struct stat sb;
  *pfd = -1;
  if (store_mkdirs (t->st, prel) < 0)
    goto out;
  *pfd = qb_openat_nofollow (t->st->rootfd, prel, O_RDONLY | O_DIRECTORY);
  if (*pfd < 0) {
    store_fs_error (errno, "open", prel);
    goto out;
  }
  if (fstatat (*pfd, final, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
    qb_error_set (QB_EINVAL, "restore point %s of VM %s exists already", t->id, t->vm);
    goto out;
  }
  int fd = txn_json_create (t, *pfd, what, tmp, rec);
  if (fd < 0)
    goto out;
  txn_sync_add (s, fd, false, what);
  ret = 0;
 out:
  free (prel);
  free (final);
  free (tmp);
  free (what);
  return ret;
}

/* Commit (see the top of this file): targets synced while summed, small
 * files written, all synced at once, the record renamed (commit point),
 * the temps renamed, the folders synced. */
int
store_txn_commit (store_txn *t, json_object *extra)
{
  if (t->committed)
    return qb_error_set (QB_EINVAL, "restore point %s is already committed", t->id);
  if (t->ndisks == 0)
    return qb_error_set (QB_EINVAL, "restore point %s has no disks", t->id);
  txn_sync s = { 0 };
  int pfd = -1, r = 0, ret = 0;
  char *ptmp = qb_asprintf (STORE_TMP_PREFIX "%s.json", t->id);
  char *pname = qb_asprintf ("%s.json", t->id);
  txn_flusher f = { t, qb_calloc (t->ndisks, sizeof *f.fds), 0, 0 };
  size_t nopen = 0;
  for (; nopen < t->ndisks && r == 0; nopen++)
    if ((f.fds[nopen] = txn_open_target (t->disks[nopen].tmp)) < 0)
      r = -1;
  if (r < 0) {
    nopen--;
    goto fail;
  }
  /* 1. targets synced by a thread while summed here */
  pthread_t th;
  json_object *rec;
  bool threaded = pthread_create (&th, NULL, txn_flush_run, &f) == 0;
  if (!threaded)
    txn_flush_run (&f);
  r = txn_write_sums (t, &s);
  if (threaded)
    pthread_join (th, NULL);
  if (r == 0 && f.err)
    r = store_write_error (t->st, f.err, "fsync", t->disks[f.bad].tmp);
  for (size_t i = 0; i < t->ndisks && r == 0; i++) {
    struct stat sb;
    if (fstat (f.fds[i], &sb) < 0) {
      r = qb_error_set_errno (errno, "stat %s", t->disks[i].tmp);
      break;
    }
    /* after the fsync: the blocks it allocated are counted */
    t->disks[i].bytes = (uint64_t) sb.st_blocks * 512;
    t->disks[i].size = (uint64_t) sb.st_size;
  }
  if (r < 0)
    goto fail;
  /* 2. the small files: the layers' own records, the point's record's temp */
  rec = txn_record (t, extra);
  r = txn_write_sidecars (t, rec, &s);
  if (r == 0)
    r = txn_write_record (t, rec, &s, &pfd);
  json_object_put (rec);
  /* 3. all durable: the small files, .chain folders (in S already), the
     disk folders holding the temps, and the parents of new folders */
  for (size_t i = 0; i < t->ndisks && r == 0; i++) {
    char *rdir = txn_disk_rel (&t->disks[i]);
    r = txn_sync_dir (t, &s, rdir);
    if (r == 0 && t->disks[i].made_dir) {
      char *slash = strrchr (rdir, '/');
      if (slash)
        *slash = '\0';
      r = txn_sync_dir (t, &s, slash ? rdir : "");
    }
    free (rdir);
  }
  if (r == 0 && t->made_month)
    r = txn_sync_dir (t, &s, "");
  if (r == 0)
    r = txn_sync_run (t, &s);
  /* 4. the commit point */
  if (r == 0 && renameat (pfd, ptmp, pfd, pname) < 0)
    r = store_write_error (t->st, errno, "rename", ptmp);
  else if (r == 0 && fsync (pfd) < 0) {
    r = qb_error_set_errno (errno, "fsync directory %s/" STORE_POINTS_DIR, t->vm);
    /* the record may or may not survive a crash: take it back */
    unlinkat (pfd, pname, 0);
  }
  if (r < 0) {
    if (pfd >= 0)
      unlinkat (pfd, ptmp, 0);
    goto fail;
  }
  t->committed = true;          /* the commit point: from here on, only roll forward */
  txn_sync_free (&s);
  /* 5. the final names */
  for (size_t i = 0; i < t->ndisks; i++)
    if (rename (t->disks[i].tmp, t->disks[i].final) < 0 && ret == 0) {
      ret = qb_error_set_errno (errno, "restore point %s is committed but %s could not be "
                                "renamed (the next start finishes it)", t->id,
                                t->disks[i].tmp);
    }
  for (size_t i = 0; i < t->ndisks; i++) {
    char *rdir = txn_disk_rel (&t->disks[i]);
    if (txn_sync_dir (t, &s, rdir) < 0 && ret == 0)
      ret = -1;
    free (rdir);
  }
  for (size_t i = 0; i < s.n; i++)
    if (fsync (s.fds[i]) < 0 && ret == 0)
      ret = qb_error_set_errno (errno, "fsync directory %s", s.what[i]);
  txn_sync_free (&s);
  goto out;
 fail:
  txn_sync_free (&s);
  txn_discard (t);
  ret = -1;
 out:
  for (size_t i = 0; i < nopen; i++)
    close (f.fds[i]);
  free (f.fds);
  if (pfd >= 0)
    close (pfd);
  free (ptmp);
  free (pname);
  return ret;
}

/* Free; removes the temps unless committed. */
void
store_txn_free (store_txn *t)
{
  if (!t)
    return;
  if (!t->committed)
    txn_discard (t);
  for (size_t i = 0; i < t->ndisks; i++) {
    txn_disk *d = &t->disks[i];
    free (d->name);
    free (d->dir);
    free (d->rel);
    free (d->final);
    free (d->tmp);
    free (d->chain);
    free (d->prev);
  }
  free (t->disks);
  free (t->month);
  free (t->vm);
  free (t->vmdir);
  free (t);
}

/* ---- Recovery ---- */

/* True if some record names DIRREL/NAME. */
static bool
named_by_record (const store_rec *recs, size_t n, const char *dirrel, const char *name)
{
  size_t rl = strlen (dirrel);
  for (size_t r = 0; r < n; r++)
    for (size_t i = 0; i < recs[r].ndisks; i++) {
      const char *f = recs[r].disks[i].file;
      if (strncmp (f, dirrel, rl) == 0 && f[rl] == '/' && strcmp (f + rl + 1, name) == 0)
        return true;
    }
  return false;
}

/* In disk folder DFD (DIRREL of the VM), delete the per-layer records of
 * layers that neither exist nor are named by a record (a commit that
 * crashed before its record), and their temps; count them. */
static int
recover_sidecars (int dfd, const char *dirrel, const store_rec *recs, size_t n)
{
  int cfd = openat (dfd, STORE_SIDECAR_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  DIR *c = cfd >= 0 ? fdopendir (cfd) : NULL;
  if (!c) {
    if (cfd >= 0)
      close (cfd);
    return 0;
  }
  int count = 0;
  size_t pl = strlen (STORE_TMP_PREFIX);
  struct dirent *de;
  while ((de = readdir (c)) != NULL) {
    size_t len = strlen (de->d_name);
    /* <layer>.json, <layer>.sums, <layer>.verify.json (sums.h) */
    size_t sl = len > 12 && strcmp (de->d_name + len - 12, ".verify.json") == 0 ? 12 : 5;
    bool drop;
    if (strncmp (de->d_name, STORE_TMP_PREFIX, pl) == 0)
      drop = true;
    else if (de->d_name[0] == '.' || len < 6 || (strcmp (de->d_name + len - 5, ".json") != 0
                                                  && strcmp (de->d_name + len - 5, ".sums") != 0))
      continue;
    else {
      char *layer = qb_asprintf ("%.*s", (int) (len - sl), de->d_name);
      struct stat sb;
      drop = fstatat (dfd, layer, &sb, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT
        && !named_by_record (recs, n, dirrel, layer);
      free (layer);
    }
    if (drop && unlinkat (dirfd (c), de->d_name, 0) == 0)
      count++;
  }
  if (count)
    fsync (dirfd (c));
  closedir (c);
  return count;
}

/* In disk dir DIRREL of the VM folder VMFD, delete temps that no record
 * names (the folder is opened without following links); count them. */
static int
recover_dir (int vmfd, const char *dirrel, const store_rec *recs, size_t n)
{
  int fd = qb_openat_nofollow (vmfd, dirrel, O_RDONLY | O_DIRECTORY);
  DIR *d = fd >= 0 ? fdopendir (fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close (fd);
    return 0;
  }
  int count = 0;
  size_t pl = strlen (STORE_TMP_PREFIX);
  struct dirent *de;
  while ((de = readdir (d)) != NULL) {
    if (strncmp (de->d_name, STORE_TMP_PREFIX, pl) != 0)
      continue;
    const char *final = de->d_name + pl;
    bool keep = false;
    if (named_by_record (recs, n, dirrel, final)) {
      /* Named: it was rolled forward already unless the final exists too. */
      struct stat sb;
      keep = fstatat (dirfd (d), final, &sb, AT_SYMLINK_NOFOLLOW) < 0;
    }
    if (!keep && unlinkat (dirfd (d), de->d_name, 0) == 0)
      count++;
  }
  if (count)
    fsync (dirfd (d));
  count += recover_sidecars (dirfd (d), dirrel, recs, n);
  closedir (d);
  return count;
}

/* Roll the layer REL (relative to the VM folder VMFD) of a committed
 * record forward: rename its temp when the final file is missing.
 * 1 when renamed, 0 when nothing to do, -1 on errors. */
static int
recover_layer (int vmfd, const char *rel)
{
  char *dir = qb_strdup (rel);
  char *slash = strrchr (dir, '/');
  int ret = 0;
  *slash = '\0';
  int dfd = qb_openat_nofollow (vmfd, dir, O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    const char *base = slash + 1;
    char *tmp = qb_asprintf (STORE_TMP_PREFIX "%s", base);
    struct stat sb;
    if (fstatat (dfd, base, &sb, AT_SYMLINK_NOFOLLOW) < 0
        && fstatat (dfd, tmp, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG (sb.st_mode)) {
      if (renameat (dfd, tmp, dfd, base) < 0)
        ret = qb_error_set_errno (errno, "rename %s/%s", dir, tmp);
      else {
        fsync (dfd);
        ret = 1;
      }
    }
    free (tmp);
    close (dfd);
  }
  free (dir);
  return ret;
}

typedef struct recover_ctx {
  store_rec *recs;
  size_t n;
  int count;
} recover_ctx;

/* store_vm_walk_dirs callback: recover_dir on one folder. */
static void
recover_walk (int vmfd, const char *rel, void *opaque)
{
  recover_ctx *rc = opaque;
  rc->count += recover_dir (vmfd, rel, rc->recs, rc->n);
}

/* A sorted list of the names in one folder. */
typedef struct name_set {
  char **v;
  size_t n;
} name_set;

static int
cmp_name (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* True when NAME is in S (sorted). */
static bool
name_set_has (const name_set *s, const char *name)
{
  return s->n && bsearch (&name, s->v, s->n, sizeof *s->v, cmp_name) != NULL;
}

typedef struct recover_probe {
  bool needed;
} recover_probe;

/* store_vm_walk_dirs callback: does folder REL hold anything recover_dir
 * would act on (a temp, or a per-layer record whose layer is not there)?
 * Only directory listings: no record is read.  Anything that cannot be
 * listed counts as needed (the full recovery then decides). */
static void
probe_walk (int vmfd, const char *rel, void *opaque)
{
  recover_probe *p = opaque;
  if (p->needed)
    return;
  int fd = qb_openat_nofollow (vmfd, rel, O_RDONLY | O_DIRECTORY);
  DIR *d = fd >= 0 ? fdopendir (fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close (fd);
    p->needed = !(fd < 0 && errno == ENOENT);
    return;
  }
  size_t pl = strlen (STORE_TMP_PREFIX);
  name_set names = { NULL, 0 };
  size_t cap = 0;
  struct dirent *de;
  while (!p->needed && (de = readdir (d)) != NULL) {
    if (strncmp (de->d_name, STORE_TMP_PREFIX, pl) == 0)
      p->needed = true;
    else if (de->d_name[0] != '.') {
      if (names.n == cap) {
        cap = cap ? 2 * cap : 64;
        names.v = qb_realloc (names.v, cap * sizeof *names.v);
      }
      names.v[names.n++] = qb_strdup (de->d_name);
    }
  }
  if (names.n > 1)
    qsort (names.v, names.n, sizeof *names.v, cmp_name);
  int cfd = p->needed ? -1 : openat (dirfd (d), STORE_SIDECAR_DIR,
                                     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  DIR *c = cfd >= 0 ? fdopendir (cfd) : NULL;
  if (!c && cfd >= 0) {
    close (cfd);
    p->needed = true;
  } else if (!p->needed && cfd < 0 && errno != ENOENT)
    p->needed = true;
  /* The same test as recover_sidecars, against the listing. */
  while (c && !p->needed && (de = readdir (c)) != NULL) {
    size_t len = strlen (de->d_name);
    if (strncmp (de->d_name, STORE_TMP_PREFIX, pl) == 0) {
      p->needed = true;
      break;
    }
    if (de->d_name[0] == '.' || len < 6 || (strcmp (de->d_name + len - 5, ".json") != 0
                                            && strcmp (de->d_name + len - 5, ".sums") != 0))
      continue;
    size_t sl = len > 12 && strcmp (de->d_name + len - 12, ".verify.json") == 0 ? 12 : 5;
    char *layer = qb_asprintf ("%.*s", (int) (len - sl), de->d_name);
    if (!name_set_has (&names, layer))
      p->needed = true;
    free (layer);
  }
  if (c)
    closedir (c);
  closedir (d);
  store_names_free (names.v, names.n);
}

/* True when VMFD's folder may hold something for store_recover to do:
 * a record temp in .points, or in some disk folder a temp or a per-layer
 * record of a layer that is not there.  Everything store_recover changes
 * is one of these (a committed point whose file is missing is rolled
 * forward from its temp), so without them it has nothing to do and no
 * record needs reading. */
static bool
recover_needed (int vmfd)
{
  int pfd = openat (vmfd, STORE_POINTS_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  DIR *d = pfd >= 0 ? fdopendir (pfd) : NULL;
  if (!d) {
    if (pfd >= 0)
      close (pfd);
    else if (errno != ENOENT)
      return true;
  }
  bool needed = false;
  struct dirent *de;
  size_t pl = strlen (STORE_TMP_PREFIX);
  while (d && !needed && (de = readdir (d)) != NULL)
    needed = strncmp (de->d_name, STORE_TMP_PREFIX, pl) == 0;
  if (d)
    closedir (d);
  if (needed)
    return true;
  recover_probe p = { false };
  store_vm_walk_dirs (vmfd, probe_walk, &p);
  return p.needed;
}

/* Roll committed points of VM forward and delete uncommitted temps. */
int
store_recover (store *st, const char *vm)
{
  int rw = store_rewrite_resume (st, vm);
  if (rw < 0)
    return -1;
  int vmfd = store_vm_open (st, vm);
  if (vmfd < 0)
    return qb_error_code () == QB_ENOENT ? (qb_error_clear (), 0) : -1;
  if (!recover_needed (vmfd)) {
    close (vmfd);
    return rw;
  }
  store_rec *recs;
  size_t n;
  if (store_recs_load (vmfd, vm, &recs, &n, NULL, NULL) < 0) {
    close (vmfd);
    return -1;
  }
  int count = 0, ret = 0;
  /* Roll forward: a record whose final file is missing but whose temp exists. */
  for (size_t r = 0; r < n; r++)
    for (size_t i = 0; i < recs[r].ndisks; i++) {
      int k = recover_layer (vmfd, recs[r].disks[i].file);
      if (k < 0)
        ret = -1;
      else
        count += k;
    }
  /* Delete temps no record names, in every disk directory (never a link). */
  recover_ctx rc = { recs, n, 0 };
  store_vm_walk_dirs (vmfd, recover_walk, &rc);
  count += rc.count;
  struct dirent *de;
  DIR *d;
  /* Stale record temps. */
  int pfd = openat (vmfd, STORE_POINTS_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  d = pfd >= 0 ? fdopendir (pfd) : NULL;
  if (!d && pfd >= 0)
    close (pfd);
  int pc = 0;
  while (d && (de = readdir (d)) != NULL)
    if (strncmp (de->d_name, STORE_TMP_PREFIX, strlen (STORE_TMP_PREFIX)) == 0
        && unlinkat (dirfd (d), de->d_name, 0) == 0)
      pc++;
  if (d && pc)
    fsync (dirfd (d));
  if (d)
    closedir (d);
  count += pc;
  store_recs_free (recs, n);
  close (vmfd);
  return ret < 0 ? -1 : count + rw;
}
