/* qmpbackupfs — the store's records: restore point records (.points/<id>.json),
 * per-layer records (.chain/<layer>.json), bounded JSON reading and atomic
 * writing (see store-int.h). */
#include "store-int.h"
#include "chain.h"
#include "common/error.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


/* ---- Records ---- */

static int
cmp_name (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* A relative path inside the VM dir made only of safe components. */
static bool
rel_path_ok (const char *p)
{
  if (!p || !*p || strlen (p) > PATH_MAX / 2)
    return false;
  char *c = qb_strdup (p), *save = NULL;
  bool ok = true;
  int parts = 0;
  for (char *tok = strtok_r (c, "/", &save); tok; tok = strtok_r (NULL, "/", &save)) {
    parts++;
    if (!qb_name_is_safe (tok))
      ok = false;
  }
  free (c);
  return ok && parts >= 2 && p[0] != '/' && !strstr (p, "//") && p[strlen (p) - 1] != '/';
}

/* The string member KEY of O, or NULL (see store-int.h). */
const char *
store_json_str (json_object *o, const char *key)
{
  json_object *v;
  if (!o || !json_object_object_get_ex (o, key, &v) || !json_object_is_type (v, json_type_string))
    return NULL;
  return json_object_get_string (v);
}

static int64_t
jint (json_object *o, const char *key, int64_t dflt)
{
  json_object *v;
  if (!json_object_object_get_ex (o, key, &v) || !json_object_is_type (v, json_type_int))
    return dflt;
  return json_object_get_int64 (v);
}

/* Parse a record object into REC (false: unusable; REC is then empty). */
bool
store_rec_parse (json_object *obj, store_rec *rec)
{
  memset (rec, 0, sizeof *rec);
  if (!obj || !json_object_is_type (obj, json_type_object))
    return false;
  const char *id = store_json_str (obj, "id");
  int64_t t;
  int seq;
  if (!id || !store_id_valid (id) || store_id_parse (id, &t, &seq) < 0)
    return false;
  snprintf (rec->id, sizeof rec->id, "%s", id);
  rec->time_us = jint (obj, "time_us", t);
  json_object *q;
  if (json_object_object_get_ex (obj, "quiesced", &q) && json_object_is_type (q, json_type_boolean))
    rec->quiesced = json_object_get_boolean (q);
  json_object *disks;
  if (!json_object_object_get_ex (obj, "disks", &disks)
      || !json_object_is_type (disks, json_type_array))
    return false;
  size_t n = json_object_array_length (disks);
  rec->disks = qb_calloc (n, sizeof *rec->disks);
  for (size_t i = 0; i < n; i++) {
    json_object *d = json_object_array_get_idx (disks, i);
    if (!json_object_is_type (d, json_type_object))
      continue;
    const char *name = store_json_str (d, "name"), *file = store_json_str (d, "file"), *kind = store_json_str (d, "kind");
    if (!name || !qb_name_is_safe (name) || !rel_path_ok (file) || !kind)
      continue;
    store_rec_disk *rd = &rec->disks[rec->ndisks];
    if (strcmp (kind, "full") == 0)
      rd->kind = STORE_FULL;
    else if (strcmp (kind, "inc") == 0)
      rd->kind = STORE_INC;
    else if (strcmp (kind, "copy") == 0)
      rd->kind = STORE_COPY;
    else
      continue;
    rd->name = qb_strdup (name);
    rd->file = qb_strdup (file);
    rd->chain = qb_strdup (store_json_str (d, "chain"));
    const char *prev = store_json_str (d, "prev");
    rd->prev = prev && store_id_valid (prev) ? qb_strdup (prev) : NULL;
    int64_t vs = jint (d, "virtual_size", 0);
    rd->virtual_size = vs > 0 ? (uint64_t) vs : 0;
    int64_t by = jint (d, "bytes", 0);
    rd->bytes = by > 0 ? (uint64_t) by : 0;
    int64_t sz = jint (d, "size", 0);
    rd->size = sz > 0 ? (uint64_t) sz : 0;
    rec->ndisks++;
  }
  return true;
}

/* Free a record's contents. */
void
store_rec_clear (store_rec *rec)
{
  for (size_t i = 0; i < rec->ndisks; i++) {
    free (rec->disks[i].name);
    free (rec->disks[i].file);
    free (rec->disks[i].chain);
    free (rec->disks[i].prev);
  }
  free (rec->disks);
  memset (rec, 0, sizeof *rec);
}

static int
cmp_rec (const void *a, const void *b)
{
  return strcmp (((const store_rec *) a)->id, ((const store_rec *) b)->id);
}

/* The ids of the record files in the .points directory PFD (sorted; PFD
 * stays open).  Record files that are symbolic links are noted, not listed. */
static int
list_record_ids (int pfd, const char *pdir, char ***ids, size_t *n, char ***notes,
                 size_t *nnotes)
{
  *ids = NULL;
  *n = 0;
  int fd = openat (pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = fd >= 0 ? fdopendir (fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close (fd);
    return store_fs_error (errno, "read", pdir);
  }
  struct dirent *de;
  char **v = NULL;
  size_t cnt = 0;
  while ((de = readdir (d)) != NULL) {
    size_t len = strlen (de->d_name);
    if (de->d_name[0] == '.' || len < 6 || len - 5 >= STORE_ID_MAX
        || strcmp (de->d_name + len - 5, ".json") != 0)
      continue;
    char id[STORE_ID_MAX];
    memcpy (id, de->d_name, len - 5);
    id[len - 5] = '\0';
    if (!store_id_valid (id))
      continue;
    struct stat sb;
    if (de->d_type == DT_LNK || (de->d_type == DT_UNKNOWN
        && fstatat (pfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK (sb.st_mode))) {
      store_note (notes, nnotes, "%s/%s is a symbolic link: not followed, the record is "
                  "ignored", pdir, de->d_name);
      continue;
    }
    v = qb_realloc (v, (cnt + 1) * sizeof *v);
    v[cnt++] = qb_strdup (id);
  }
  closedir (d);
  if (cnt)
    qsort (v, cnt, sizeof *v, cmp_name);
  *ids = v;
  *n = cnt;
  return 0;
}

/* Open the .points directory of the VM directory VMFD: the descriptor, -2
 * when there is none (or it is a link, noted), or -1 with the error. */
static int
points_open (int vmfd, const char *vm, char ***notes, size_t *nnotes)
{
  int fd = openat (vmfd, STORE_POINTS_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0)
    return fd;
  int e = errno;
  struct stat sb;
  if (e == ENOENT)
    return -2;
  if ((e == ENOTDIR || e == ELOOP)
      && fstatat (vmfd, STORE_POINTS_DIR, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
    if (S_ISLNK (sb.st_mode))
      store_note (notes, nnotes, "%s/" STORE_POINTS_DIR " is a symbolic link: not followed, "
                  "no record is read", vm);
    return -2;
  }
  return store_fs_error (e, "read", STORE_POINTS_DIR);
}

/* Load and parse every record of the VM directory VMFD, sorted by id. */
int
store_recs_load (int vmfd, const char *vm, store_rec **recs, size_t *n, char ***notes,
                 size_t *nnotes)
{
  *recs = NULL;
  *n = 0;
  int pfd = points_open (vmfd, vm, notes, nnotes);
  if (pfd == -2)
    return 0;
  if (pfd < 0)
    return -1;
  char **ids;
  size_t nids;
  char *pdir = qb_asprintf ("%s/" STORE_POINTS_DIR, vm);
  int lr = list_record_ids (pfd, pdir, &ids, &nids, notes, nnotes);
  free (pdir);
  if (lr < 0) {
    close (pfd);
    return -1;
  }
  store_rec *v = qb_calloc (nids, sizeof *v);
  size_t cnt = 0;
  int ret = 0;
  for (size_t i = 0; i < nids && ret == 0; i++) {
    char name[STORE_ID_MAX + 8];
    int e;
    snprintf (name, sizeof name, "%s.json", ids[i]);
    json_object *o = store_json_load_at (pfd, name, &e);
    if (!o && e == ELOOP)
      store_note (notes, nnotes, "%s/" STORE_POINTS_DIR "/%s is a symbolic link: not followed, "
                  "the record is ignored", vm, name);
    else if (!o && e != 0 && e != ENOENT)
      /* never skip a record because descriptors or memory ran out */
      ret = store_fs_error (e, "read record", name);
    if (o && store_rec_parse (o, &v[cnt]) && strcmp (v[cnt].id, ids[i]) == 0)
      cnt++;
    else
      store_rec_clear (&v[cnt]);
    json_object_put (o);
  }
  store_names_free (ids, nids);
  close (pfd);
  if (ret < 0) {
    store_recs_free (v, cnt);
    return -1;
  }
  qsort (v, cnt, sizeof *v, cmp_rec);
  *recs = v;
  *n = cnt;
  return 0;
}

/* Free loaded records. */
void
store_recs_free (store_rec *recs, size_t n)
{
  for (size_t i = 0; i < n; i++)
    store_rec_clear (&recs[i]);
  free (recs);
}

/* The record of point ID (new reference), or NULL. */
json_object *
store_record_read (store *st, const char *vm, const char *id)
{
  if (!id || !store_id_valid (id)) {
    qb_error_set (QB_EINVAL, "invalid restore point id \"%s\"", id ? id : "");
    return NULL;
  }
  if (!qb_name_is_safe (vm)) {
    qb_error_set (QB_EINVAL, "invalid VM name \"%s\"", vm ? vm : "");
    return NULL;
  }
  char *rel = qb_asprintf ("%s/" STORE_POINTS_DIR, vm);
  char name[STORE_ID_MAX + 8];
  snprintf (name, sizeof name, "%s.json", id);
  json_object *o = NULL;
  int e = 0;
  int pfd = qb_openat_nofollow (st->rootfd, rel, O_RDONLY | O_DIRECTORY);
  if (pfd < 0)
    e = errno;
  else {
    o = store_json_load_at (pfd, name, &e);
    close (pfd);
  }
  if (!o) {
    if (e == ENOENT)
      qb_error_set (QB_ENOENT, "no restore point %s of VM %s", id, vm);
    else if (e != 0)
      store_fs_error (e, "read record", rel);
    else
      qb_error_set (QB_EDAMAGED, "record %s/%s/%s is not valid JSON", st->root, rel, name);
  } else if (!json_object_is_type (o, json_type_object)) {
    qb_error_set (QB_EDAMAGED, "record %s/%s/%s is not valid JSON", st->root, rel, name);
    json_object_put (o);
    o = NULL;
  }
  free (rel);
  return o;
}

/* A newer point of DISK in CHAIN than AFTER_ID that the scan lost (see store.h). */
char *
store_chain_lost_after (store *st, const char *vm, const char *disk, const char *chain,
                        const char *after_id)
{
  int vmfd = store_vm_open (st, vm);
  if (vmfd < 0) {
    qb_error_clear ();
    return NULL;
  }
  store_rec *recs;
  size_t n;
  char *reason = NULL;
  if (store_recs_load (vmfd, vm, &recs, &n, NULL, NULL) == 0) {
    for (size_t r = 0; r < n && !reason; r++) {
      if (strcmp (recs[r].id, after_id) <= 0)
        continue;
      for (size_t i = 0; i < recs[r].ndisks && !reason; i++) {
        const store_rec_disk *d = &recs[r].disks[i];
        if (strcmp (d->name, disk) == 0 && d->chain && strcmp (d->chain, chain) == 0)
          reason = qb_asprintf ("restore point %s of disk %s is lost (%s is missing or "
                                "unreadable)", recs[r].id, disk, d->file);
      }
    }
    store_recs_free (recs, n);
  } else
    qb_error_clear ();
  close (vmfd);
  return reason;
}

/* The newest record of VM by id, or NULL (QB_ENOENT when there is none). */
json_object *
store_record_latest (store *st, const char *vm)
{
  int vfd = store_vm_open (st, vm);
  if (vfd < 0)
    return NULL;
  int pfd = points_open (vfd, vm, NULL, NULL);
  close (vfd);
  char **ids = NULL;
  size_t n = 0;
  if (pfd == -1)
    return NULL;
  if (pfd >= 0) {
    int r = list_record_ids (pfd, STORE_POINTS_DIR, &ids, &n, NULL, NULL);
    close (pfd);
    if (r < 0)
      return NULL;
  }
  json_object *o = NULL;
  /* Newest first; skip records that cannot be read. */
  for (size_t i = n; i-- > 0 && !o;) {
    o = store_record_read (st, vm, ids[i]);
    if (!o && qb_err_is_transient (qb_error_code ())) {
      store_names_free (ids, n);
      return NULL;            /* never an older record for want of resources */
    }
  }
  store_names_free (ids, n);
  if (!o)
    qb_error_set (QB_ENOENT, "VM %s has no restore point records", vm);
  return o;
}

/* Set the error for a failed write, with the store-full message for ENOSPC. */
int
store_write_error (const store *st, int errnum, const char *what, const char *path)
{
  if (errnum == ENOSPC || errnum == EDQUOT)
    return qb_error_set (QB_ENOSPC, "the store %s is full: free space and run the backup again",
                         st->root);
  return qb_error_set_errno (errnum, "%s %s", what, path);
}

/* Write all of BUF to FD. */
static int
write_all (int fd, const char *buf, size_t len)
{
  while (len > 0) {
    ssize_t w = write (fd, buf, len);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    buf += w;
    len -= (size_t) w;
  }
  return 0;
}

/* Write OBJ as NAME in DFD atomically (tmp 0600 O_EXCL|O_NOFOLLOW, fsync, rename, fsync dir). */
int
store_json_write_at (const store *st, int dfd, const char *path, const char *name,
                     json_object *obj)
{
  const char *text = json_object_to_json_string_ext (obj, JSON_C_TO_STRING_PRETTY
                                                     | JSON_C_TO_STRING_SPACED
                                                     | JSON_C_TO_STRING_NOSLASHESCAPE);
  char *tmp = qb_asprintf (STORE_TMP_PREFIX "%s", name);
  int ret = -1, e = 0;
  unlinkat (dfd, tmp, 0);
  int fd = openat (dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    e = errno;
  else if (write_all (fd, text, strlen (text)) < 0 || write_all (fd, "\n", 1) < 0
           || fsync (fd) < 0)
    e = errno;
  if (fd >= 0 && close (fd) < 0 && !e)
    e = errno;
  if (!e && renameat (dfd, tmp, dfd, name) < 0)
    e = errno;
  if (!e && fsync (dfd) < 0) {
    qb_error_set_errno (errno, "fsync directory %s", path);
    goto out;
  }
  if (e) {
    unlinkat (dfd, tmp, 0);
    if (st)
      store_write_error (st, e, "write", path);
    else
      qb_error_set_errno (e, "write %s/%s", path, name);
    goto out;
  }
  ret = 0;
 out:
  free (tmp);
  return ret;
}

/* The .chain folder of disk folder DIRFD (see store-int.h). */
int
store_sidecar_dir (int dirfd, bool create)
{
  if (create && mkdirat (dirfd, STORE_SIDECAR_DIR, 0700) < 0 && errno != EEXIST)
    return qb_error_set_errno (errno, "create %s", STORE_SIDECAR_DIR);
  int fd = openat (dirfd, STORE_SIDECAR_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return store_fs_error (errno, "open", STORE_SIDECAR_DIR);
  return fd;
}

/* The per-layer record of layer NAME in disk folder DIRFD. */
json_object *
store_sidecar_read (int dirfd, const char *name)
{
  if (!qb_name_is_safe (name)) {
    qb_error_set (QB_EINVAL, "invalid layer name \"%s\"", name ? name : "");
    return NULL;
  }
  int cfd = store_sidecar_dir (dirfd, false);
  if (cfd < 0)
    return NULL;
  char *file = qb_asprintf ("%s.json", name);
  int e;
  json_object *o = store_json_load_at (cfd, file, &e);
  if (!o)
    qb_error_set (e == ENOENT ? QB_ENOENT : QB_EIO, "%s/%s: %s", STORE_SIDECAR_DIR, file,
                  e ? strerror (e) : "not a valid record");
  free (file);
  close (cfd);
  return o;
}

/* Write OBJ as the per-layer record of layer NAME in disk folder DIRFD. */
int
store_sidecar_write (int dirfd, const char *name, json_object *obj)
{
  if (!qb_name_is_safe (name))
    return qb_error_set (QB_EINVAL, "invalid layer name \"%s\"", name ? name : "");
  int cfd = store_sidecar_dir (dirfd, true);
  if (cfd < 0)
    return -1;
  char *file = qb_asprintf ("%s.json", name);
  int r = store_json_write_at (NULL, cfd, STORE_SIDECAR_DIR, file, obj);
  free (file);
  close (cfd);
  return r;
}

/* Remove the per-layer record of layer NAME in disk folder DIRFD (gone already is fine). */
int
store_sidecar_remove (int dirfd, const char *name)
{
  if (!qb_name_is_safe (name))
    return qb_error_set (QB_EINVAL, "invalid layer name \"%s\"", name ? name : "");
  int cfd = store_sidecar_dir (dirfd, false);
  if (cfd < 0)
    return qb_error_code () == QB_ENOENT ? (qb_error_clear (), 0) : -1;
  char *file = qb_asprintf ("%s.json", name);
  int r = 0;
  if (unlinkat (cfd, file, 0) < 0 && errno != ENOENT)
    r = qb_error_set_errno (errno, "remove %s/%s", STORE_SIDECAR_DIR, file);
  else
    fsync (cfd);
  free (file);
  close (cfd);
  return r;
}

/* Write record REC of restore point ID atomically (tmp, fsync, rename, fsync
 * dir), all relative to the .points directory opened without following links. */
int
store_record_write (store *st, const char *vm, const char *id, json_object *rec, bool replace)
{
  if (!store_id_valid (id))
    return qb_error_set (QB_EINVAL, "invalid restore point id \"%s\"", id ? id : "");
  if (!qb_name_is_safe (vm))
    return qb_error_set (QB_EINVAL, "invalid VM name \"%s\"", vm ? vm : "");
  char *prel = qb_asprintf ("%s/" STORE_POINTS_DIR, vm);
  char *pdir = qb_asprintf ("%s/%s", st->root, prel);
  char *tmp = qb_asprintf (STORE_TMP_PREFIX "%s.json", id);
  char *final = qb_asprintf ("%s.json", id);
  int ret = -1, fd = -1, pfd = -1;
  struct stat sb;
  if (store_mkdirs (st, prel) < 0)
    goto out;
  pfd = qb_openat_nofollow (st->rootfd, prel, O_RDONLY | O_DIRECTORY);
  if (pfd < 0) {
    store_fs_error (errno, "open", pdir);
    goto out;
  }
  if (!replace && fstatat (pfd, final, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
    qb_error_set (QB_EINVAL, "restore point %s of VM %s exists already", id, vm);
    goto out;
  }
  const char *text = json_object_to_json_string_ext (rec, JSON_C_TO_STRING_PRETTY
                                                     | JSON_C_TO_STRING_SPACED
                                                     | JSON_C_TO_STRING_NOSLASHESCAPE);
  unlinkat (pfd, tmp, 0);
  fd = openat (pfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    store_write_error (st, errno, "create", tmp);
    goto out;
  }
  if (write_all (fd, text, strlen (text)) < 0 || write_all (fd, "\n", 1) < 0
      || fsync (fd) < 0) {
    store_write_error (st, errno, "write", tmp);
    goto out_unlink;
  }
  if (close (fd) < 0) {
    fd = -1;
    store_write_error (st, errno, "write", tmp);
    goto out_unlink;
  }
  fd = -1;
  if (renameat (pfd, tmp, pfd, final) < 0) {
    store_write_error (st, errno, "rename", tmp);
    goto out_unlink;
  }
  if (fsync (pfd) < 0) {
    qb_error_set_errno (errno, "fsync directory %s", pdir);
    /* A new record may or may not survive a crash: take it back. */
    if (!replace)
      unlinkat (pfd, final, 0);
    goto out;
  }
  ret = 0;
  goto out;
 out_unlink:
  if (fd >= 0)
    close (fd);
  fd = -1;
  unlinkat (pfd, tmp, 0);
 out:
  if (fd >= 0)
    close (fd);
  if (pfd >= 0)
    close (pfd);
  free (prel);
  free (pdir);
  free (tmp);
  free (final);
  return ret;
}

