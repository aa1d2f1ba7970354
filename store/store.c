/* qmpbackupfs — the store: opening, names and ids, records, locks (see store.h). */
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

/* ---- Opening ---- */

/* Open the store at ROOT (made 0700 with CREATE); the root is kept absolute. */
store *
store_open (const char *root, bool create)
{
  if (!root || !*root) {
    qb_error_set (QB_EINVAL, "no store directory given");
    return NULL;
  }
  if (create && qb_mkdir_p (root, 0700) < 0)
    return NULL;
  char *abs = realpath (root, NULL);
  if (!abs) {
    qb_error_set_errno (errno, "store %s", root);
    return NULL;
  }
  struct stat sb;
  if (stat (abs, &sb) < 0 || !S_ISDIR (sb.st_mode)) {
    qb_error_set (QB_EINVAL, "store %s is not a directory", root);
    free (abs);
    return NULL;
  }
  int fd = open (abs, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    qb_error_set_errno (errno, "store %s", root);
    free (abs);
    return NULL;
  }
  store *st = qb_calloc (1, sizeof *st);
  st->root = abs;
  st->rootfd = fd;
  return st;
}

/* Free the handle. */
void
store_close (store *st)
{
  if (!st)
    return;
  close (st->rootfd);
  free (st->root);
  free (st);
}

/* The absolute root directory. */
const char *
store_root (const store *st)
{
  return st->root;
}

/* "STORE/<vm>", or NULL (QB_EINVAL) for an unsafe name. */
char *
store_vm_dir (const store *st, const char *vm)
{
  if (!qb_name_is_safe (vm)) {
    qb_error_set (QB_EINVAL, "invalid VM name \"%s\"", vm ? vm : "");
    return NULL;
  }
  return qb_asprintf ("%s/%s", st->root, vm);
}

/* The error for ERRNUM on WHAT at PATH: links and shortages worded (see store-int.h). */
int
store_fs_error (int errnum, const char *what, const char *path)
{
  if (errnum == ELOOP)
    return qb_error_set (QB_EPERM, "%s %s: it is a symbolic link (or lies behind one), "
                         "and links in the store are never followed: replace it with "
                         "the real file or folder", what, path);
  if (qb_errno_is_transient (errnum))
    return qb_error_set (errnum == ENOMEM ? QB_ENOMEM : QB_EAGAIN,
                         "%s %s: %s (a temporary shortage of file descriptors or memory: "
                         "nothing is damaged, try again)", what, path, strerror (errnum));
  return qb_error_set_errno (errnum, "%s %s", what, path);
}

/* VM's folder, opened beneath the root without following a link. */
int
store_vm_open (const store *st, const char *vm)
{
  if (!qb_name_is_safe (vm))
    return qb_error_set (QB_EINVAL, "invalid VM name \"%s\"", vm ? vm : "");
  int fd = openat (st->rootfd, vm, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0)
    return fd;
  int e = errno;
  struct stat sb;
  if (e == ENOENT)
    return qb_error_set (QB_ENOENT, "no VM %s in the store", vm);
  if ((e == ENOTDIR || e == ELOOP)
      && fstatat (st->rootfd, vm, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK (sb.st_mode))
    e = ELOOP;
  if (e == ENOTDIR)
    return qb_error_set (QB_EPERM, "%s/%s is not a directory", st->root, vm);
  return store_fs_error (e, "VM folder", vm);
}

/* mkdir -p of REL beneath the root, 0700, one component at a time, no link followed. */
int
store_mkdirs (const store *st, const char *rel)
{
  char *p = qb_strdup (rel), *save = NULL;
  int fd = st->rootfd, ret = 0;
  for (char *comp = strtok_r (p, "/", &save); comp; comp = strtok_r (NULL, "/", &save)) {
    if (!qb_name_is_safe (comp) && strcmp (comp, STORE_POINTS_DIR) != 0
        && strcmp (comp, STORE_SIDECAR_DIR) != 0) {
      ret = qb_error_set (QB_EINVAL, "invalid folder name \"%s\"", comp);
      break;
    }
    if (mkdirat (fd, comp, 0700) < 0 && errno != EEXIST) {
      ret = store_write_error (st, errno, "create directory", rel);
      break;
    }
    int next = openat (fd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    struct stat sb;
    if (next < 0 && e == ENOTDIR
        && fstatat (fd, comp, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK (sb.st_mode))
      e = ELOOP;
    if (fd != st->rootfd)
      close (fd);
    fd = st->rootfd;
    if (next < 0) {
      ret = e == ENOTDIR ? qb_error_set (QB_EPERM, "%s/%s: %s is not a directory",
                                         st->root, rel, comp)
        : store_fs_error (e, "folder", rel);
      break;
    }
    fd = next;
  }
  if (fd != st->rootfd)
    close (fd);
  free (p);
  return ret;
}

/* Append a formatted note to *NOTES. */
void
store_note (char ***notes, size_t *n, const char *fmt, ...)
{
  if (!notes)
    return;
  va_list ap;
  char *m;
  va_start (ap, fmt);
  if (vasprintf (&m, fmt, ap) < 0)
    m = NULL;
  va_end (ap);
  if (!m)
    return;
  *notes = qb_realloc (*notes, (*n + 1) * sizeof **notes);
  (*notes)[(*n)++] = m;
}

/* Parse the JSON file NAME of DIRFD, not following a link, bounded in size. */
json_object *
store_json_load_at (int dirfd, const char *name, int *errnum)
{
  *errnum = 0;
  int fd = openat (dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    *errnum = errno;
    return NULL;
  }
  struct stat sb;
  if (fstat (fd, &sb) < 0) {
    *errnum = errno;
    close (fd);
    return NULL;
  }
  if (!S_ISREG (sb.st_mode) || sb.st_size > STORE_RECORD_MAX) {
    close (fd);
    return NULL;
  }
  char *buf = malloc ((size_t) sb.st_size + 1);
  if (!buf) {
    *errnum = ENOMEM;
    close (fd);
    return NULL;
  }
  size_t got = 0;
  while (got < (size_t) sb.st_size) {
    ssize_t r = read (fd, buf + got, (size_t) sb.st_size - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      *errnum = errno;
      break;
    }
    if (r == 0)
      break;
    got += (size_t) r;
  }
  close (fd);
  buf[got] = '\0';
  json_object *o = NULL;
  if (*errnum == 0) {
    json_tokener *tok = json_tokener_new ();
    if (!tok)
      *errnum = ENOMEM;
    else {
      o = json_tokener_parse_ex (tok, buf, (int) got);
      if (o && json_tokener_get_error (tok) != json_tokener_success) {
        json_object_put (o);
        o = NULL;
      }
      json_tokener_free (tok);
    }
  }
  free (buf);
  return o;
}

static int
cmp_str (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* Sorted names of the safe-named directories directly under the root. */
int
store_list_vms (store *st, char ***names, size_t *n)
{
  *names = NULL;
  *n = 0;
  DIR *d = opendir (st->root);
  if (!d)
    return qb_error_set_errno (errno, "read store %s", st->root);
  char **v = NULL;
  size_t cnt = 0;
  struct dirent *de;
  while ((de = readdir (d)) != NULL) {
    if (!qb_name_is_safe (de->d_name))
      continue;
    struct stat sb;
    /* a link is never followed out of the store: not a VM */
    if (fstatat (dirfd (d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR (sb.st_mode))
      continue;
    v = qb_realloc (v, (cnt + 1) * sizeof *v);
    v[cnt++] = qb_strdup (de->d_name);
  }
  closedir (d);
  if (cnt)
    qsort (v, cnt, sizeof *v, cmp_str);
  *names = v;
  *n = cnt;
  return 0;
}

/* Free an array of names. */
void
store_names_free (char **names, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free (names[i]);
  free (names);
}

/* ---- Ids and names ---- */

/* Format second T_US (+ "_NN" for SEQ > 1) as an id. */
void
store_id_format (int64_t t_us, int seq, char *buf, size_t len)
{
  time_t t = (time_t) (t_us / 1000000);
  struct tm tm;
  gmtime_r (&t, &tm);
  char base[32];
  strftime (base, sizeof base, "%Y%m%dT%H%M%SZ", &tm);
  if (seq > 1)
    snprintf (buf, len, "%s_%02d", base, seq);
  else
    snprintf (buf, len, "%s", base);
}

static bool
all_digits (const char *s, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9')
      return false;
  return true;
}

static int
num (const char *s, size_t n)
{
  int v = 0;
  for (size_t i = 0; i < n; i++)
    v = v * 10 + (s[i] - '0');
  return v;
}

/* Parse our id form exactly; false if ID is anything else. */
static bool
parse_our_id (const char *id, int64_t *time_us, int *seq)
{
  size_t len = strlen (id);
  if (len != 16 && len != 19)
    return false;
  if (!all_digits (id, 8) || id[8] != 'T' || !all_digits (id + 9, 6) || id[15] != 'Z')
    return false;
  int s = 1;
  if (len == 19) {
    if (id[16] != '_' || !all_digits (id + 17, 2))
      return false;
    s = num (id + 17, 2);
    if (s < 2)
      return false;
  }
  struct tm tm = { 0 };
  tm.tm_year = num (id, 4) - 1900;
  tm.tm_mon = num (id + 4, 2) - 1;
  tm.tm_mday = num (id + 6, 2);
  tm.tm_hour = num (id + 9, 2);
  tm.tm_min = num (id + 11, 2);
  tm.tm_sec = num (id + 13, 2);
  struct tm want = tm;
  time_t t = timegm (&tm);
  if (t == (time_t) -1 || tm.tm_year != want.tm_year || tm.tm_mon != want.tm_mon
      || tm.tm_mday != want.tm_mday || tm.tm_hour != want.tm_hour
      || tm.tm_min != want.tm_min || tm.tm_sec != want.tm_sec)
    return false;
  if (time_us)
    *time_us = (int64_t) t * 1000000;
  if (seq)
    *seq = s;
  return true;
}

/* Parse a seed epoch name part ("1700000000-disk.qcow2" or "1700000000"). */
static bool
parse_seed_epoch (const char *s, int64_t *time_us)
{
  size_t n = strspn (s, "0123456789");
  if (n == 0 || n > 12 || (s[n] != '\0' && s[n] != '-'))
    return false;
  if (time_us)
    *time_us = (int64_t) strtoll (s, NULL, 10) * 1000000;
  return true;
}

/* Parse "YYYYMMDDTHHMMSSZ[_NN]" or a seed epoch name part; 0 on success. */
int
store_id_parse (const char *id, int64_t *time_us, int *seq)
{
  if (!id)
    return qb_error_set (QB_EINVAL, "no restore point id");
  if (parse_our_id (id, time_us, seq))
    return 0;
  if (parse_seed_epoch (id, time_us)) {
    if (seq)
      *seq = 1;
    return 0;
  }
  return qb_error_set (QB_EINVAL, "invalid restore point id \"%s\"", id);
}

/* True for a well-formed id of this store. */
bool
store_id_valid (const char *id)
{
  return id && parse_our_id (id, NULL, NULL);
}

/* "2026-11-26T04:50:00Z[_02]" for ID. */
int
store_id_display (const char *id, char *buf, size_t len)
{
  int64_t t;
  int seq;
  if (!parse_our_id (id, &t, &seq))
    return -1;
  char base[32];
  qb_format_utc (t, base, sizeof base);
  if (seq > 1)
    snprintf (buf, len, "%s_%02d", base, seq);
  else
    snprintf (buf, len, "%s", base);
  return 0;
}

/* True for "YYYY-MM". */
bool
store_is_month (const char *name)
{
  if (strlen (name) != 7 || !all_digits (name, 4) || name[4] != '-'
      || !all_digits (name + 5, 2))
    return false;
  int m = num (name + 5, 2);
  return m >= 1 && m <= 12;
}

/* File name prefix of a kind. */
const char *
store_kind_prefix (store_kind k)
{
  switch (k) {
  case STORE_FULL: return "FULL";
  case STORE_INC: return "INC";
  default: return "COPY";
  }
}

/* Record spelling of a kind. */
const char *
store_kind_word (store_kind k)
{
  switch (k) {
  case STORE_FULL: return "full";
  case STORE_INC: return "inc";
  default: return "copy";
  }
}

static bool
has_suffix (const char *s, const char *suf)
{
  size_t a = strlen (s), b = strlen (suf);
  return a >= b && strcmp (s + a - b, suf) == 0;
}

/* Parse a layer file name; false for anything that is not a finished layer. */
bool
store_layer_name_parse (const char *name, store_kind *kind, char id[STORE_ID_MAX],
                        int64_t *time_us, int *seq)
{
  const char *rest;
  store_kind k;
  if (strncmp (name, "FULL-", 5) == 0)
    k = STORE_FULL, rest = name + 5;
  else if (strncmp (name, "INC-", 4) == 0)
    k = STORE_INC, rest = name + 4;
  else if (strncmp (name, "COPY-", 5) == 0)
    k = STORE_COPY, rest = name + 5;
  else
    return false;
  if (has_suffix (name, ".partial"))
    return false;
  int64_t t;
  int s;
  if (!parse_our_id (rest, &t, &s)) {
    if (!parse_seed_epoch (rest, &t))
      return false;
    s = 1;
  }
  *kind = k;
  store_id_format (t, s, id, STORE_ID_MAX);
  *time_us = t;
  *seq = s;
  return true;
}

/* ---- Records ---- */

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
  return ok && parts >= 2 && p[0] != '/' && !strstr (p, "//") && !has_suffix (p, "/");
}

static const char *
jstr (json_object *o, const char *key)
{
  json_object *v;
  if (!json_object_object_get_ex (o, key, &v) || !json_object_is_type (v, json_type_string))
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
  const char *id = jstr (obj, "id");
  int64_t t;
  int seq;
  if (!id || !parse_our_id (id, &t, &seq))
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
    const char *name = jstr (d, "name"), *file = jstr (d, "file"), *kind = jstr (d, "kind");
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
    rd->chain = qb_strdup (jstr (d, "chain"));
    const char *prev = jstr (d, "prev");
    rd->prev = prev && parse_our_id (prev, NULL, NULL) ? qb_strdup (prev) : NULL;
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
        || !has_suffix (de->d_name, ".json"))
      continue;
    char id[STORE_ID_MAX];
    memcpy (id, de->d_name, len - 5);
    id[len - 5] = '\0';
    if (!parse_our_id (id, NULL, NULL))
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
    qsort (v, cnt, sizeof *v, cmp_str);
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
  if (!id || !parse_our_id (id, NULL, NULL)) {
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

/* The .chain folder of disk folder DIRFD (created 0700 with CREATE), or -1. */
static int
sidecar_dir (int dirfd, bool create)
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
  int cfd = sidecar_dir (dirfd, false);
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
  int cfd = sidecar_dir (dirfd, true);
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
  int cfd = sidecar_dir (dirfd, false);
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

/* ---- Locking ---- */

struct store_lock {
  int fd;
};

/* Take VM's lock (flock on its own open file description), polling up to TIMEOUT_MS. */
store_lock *
store_lock_vm (store *st, const char *vm, int timeout_ms)
{
  if (!qb_name_is_safe (vm)) {
    qb_error_set (QB_EINVAL, "invalid VM name \"%s\"", vm ? vm : "");
    return NULL;
  }
  if (store_mkdirs (st, vm) < 0)
    return NULL;
  char *rel = qb_asprintf ("%s/" STORE_LOCK_FILE, vm);
  char *path = qb_asprintf ("%s/%s", st->root, rel);
  int fd = qb_openat_nofollow (st->rootfd, rel, O_RDWR | O_CREAT);
  free (rel);
  if (fd < 0) {
    store_fs_error (errno, "open lock", path);
    free (path);
    return NULL;
  }
  uint64_t deadline = qb_mono_ms () + (timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
  for (;;) {
    if (flock (fd, LOCK_EX | LOCK_NB) == 0)
      break;
    if (errno != EWOULDBLOCK && errno != EINTR) {
      qb_error_set_errno (errno, "lock %s", path);
      goto fail;
    }
    uint64_t now = qb_mono_ms ();
    if (now >= deadline) {
      qb_error_set (QB_EBUSY, "a backup of VM %s is already running (lock %s is held)",
                    vm, path);
      goto fail;
    }
    uint64_t wait = deadline - now < 20 ? deadline - now : 20;
    struct timespec ts = { 0, (long) wait * 1000000L };
    nanosleep (&ts, NULL);
  }
  free (path);
  store_lock *l = qb_calloc (1, sizeof *l);
  l->fd = fd;
  return l;
 fail:
  close (fd);
  free (path);
  return NULL;
}

/* Release the lock. */
void
store_unlock (store_lock *l)
{
  if (!l)
    return;
  flock (l->fd, LOCK_UN);
  close (l->fd);
  free (l);
}

/* ---- Misc ---- */

/* 16 random hex digits. */
void
store_new_chain_id (char *buf, size_t len)
{
  unsigned char r[8];
  size_t got = 0;
  while (got < sizeof r) {
    ssize_t k = getrandom (r + got, sizeof r - got, 0);
    if (k < 0) {
      if (errno == EINTR)
        continue;
      /* No entropy source: fall back to time and pid, still unique enough per VM. */
      uint64_t x = (uint64_t) qb_now_us () ^ ((uint64_t) getpid () << 40);
      memcpy (r, &x, sizeof r);
      break;
    }
    got += (size_t) k;
  }
  char tmp[17];
  for (int i = 0; i < 8; i++)
    snprintf (tmp + 2 * i, 3, "%02x", r[i]);
  snprintf (buf, len, "%s", tmp);
}

/* Remove the file REL (relative to the root) and fsync its directory,
 * following no link on the way; a missing file is fine. */
static int
unlink_beneath (store *st, const char *rel)
{
  char *dir = qb_strdup (rel);
  char *slash = strrchr (dir, '/');
  int ret = 0;
  if (!slash) {
    free (dir);
    return qb_error_set (QB_EINVAL, "invalid path %s", rel);
  }
  *slash = '\0';
  int dfd = qb_openat_nofollow (st->rootfd, dir, O_RDONLY | O_DIRECTORY);
  if (dfd < 0) {
    if (errno != ENOENT)
      ret = store_fs_error (errno, "open", dir);
  } else {
    if (unlinkat (dfd, slash + 1, 0) < 0 && errno != ENOENT)
      ret = qb_error_set_errno (errno, "remove %s/%s", st->root, rel);
    else
      fsync (dfd);
    close (dfd);
  }
  free (dir);
  return ret;
}

/* Remove point ID: first the files its record names, then the record. */
int
store_point_remove (store *st, const char *vm, const char *id)
{
  json_object *o = store_record_read (st, vm, id);
  if (!o)
    return -1;
  store_rec rec;
  if (!store_rec_parse (o, &rec)) {
    json_object_put (o);
    return qb_error_set (QB_EDAMAGED, "record %s of VM %s is not valid", id, vm);
  }
  json_object_put (o);
  int ret = 0;
  for (size_t i = 0; i < rec.ndisks && ret == 0; i++) {
    char *rel = qb_asprintf ("%s/%s", vm, rec.disks[i].file);
    ret = unlink_beneath (st, rel);
    free (rel);
  }
  if (ret == 0) {
    char *rel = qb_asprintf ("%s/" STORE_POINTS_DIR "/%s.json", vm, id);
    ret = unlink_beneath (st, rel);
    free (rel);
  }
  store_rec_clear (&rec);
  return ret;
}

/* ---- Opening layers for reading ---- */

/* LAYER's path relative to the root, or NULL if it is not under the root. */
static const char *
layer_rel (const store *st, const store_layer *l)
{
  size_t rl = strlen (st->root);
  if (!l->path || strncmp (l->path, st->root, rl) != 0 || l->path[rl] != '/')
    return NULL;
  return l->path + rl + 1;
}

/* LAYER's file, opened beneath the root without following any link. */
int
store_layer_open (store *st, const store_layer *l)
{
  const char *rel = layer_rel (st, l);
  if (!rel)
    return qb_error_set (QB_EINVAL, "layer %s is not in the store %s",
                         l->path ? l->path : "?", st->root);
  int fd = qb_openat_nofollow (st->rootfd, rel, O_RDONLY | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT)
      return qb_error_set (QB_ENOENT, "layer %s is gone", l->path);
    if (errno == ELOOP)
      return qb_error_set (QB_EDAMAGED, "layer %s is a symbolic link (or lies behind one): "
                           "links in the store are never followed", l->path);
    return store_fs_error (errno, "open layer", l->path);
  }
  struct stat sb;
  if (fstat (fd, &sb) < 0 || !S_ISREG (sb.st_mode)) {
    close (fd);
    return qb_error_set (QB_EDAMAGED, "layer %s is not a regular file", l->path);
  }
  /* regular file: O_NONBLOCK (there against FIFOs) is of no use any more */
  fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

/* The reader's side of chain rewrites (rewrite.c): hold a shared lock on
 * the point's top layer FDS[IDX] (a rewrite that changes this point's
 * layers in place takes it exclusively), then make sure no rewrite is
 * removing the point and every layer name still is the file opened.
 * 0, or -1 with QB_EAGAIN (try again: the chain is being rewritten). */
static int
point_guard (store *st, const store_chain *c, size_t idx, const int *fds)
{
  const store_layer *top = &c->layers[idx];
  if (flock (fds[idx], LOCK_SH | LOCK_NB) < 0)
    return qb_error_set (QB_EAGAIN, "restore point %s is being removed or its chain "
                         "rewritten: try again in a moment", top->display);
  const char *rel = layer_rel (st, top);
  const char *slash = rel ? strchr (rel, '/') : NULL;
  if (!slash)
    return 0;
  char *vm = qb_asprintf ("%.*s", (int) (slash - rel), rel);
  int vmfd = store_vm_open (st, vm);
  free (vm);
  if (vmfd < 0)
    return qb_error_set (QB_EAGAIN, "restore point %s: its VM folder is gone", top->display);
  store_rewrite_state rs;
  int r = store_rewrite_state_load (vmfd, &rs);
  close (vmfd);
  if (r < 0)
    return -1;
  bool hidden = rs.active && (rs.all_busy || store_rewrite_state_has (rs.hide, rs.nhide, slash + 1));
  store_rewrite_state_clear (&rs);
  if (hidden)
    return qb_error_set (QB_EAGAIN, "restore point %s is being removed", top->display);
  for (size_t i = 0; i <= idx; i++) {
    struct stat a, b;
    const char *lr = layer_rel (st, &c->layers[i]);
    if (!lr || fstat (fds[i], &a) < 0 || fstatat (st->rootfd, lr, &b, AT_SYMLINK_NOFOLLOW) < 0
        || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
      return qb_error_set (QB_EAGAIN, "restore point %s: its chain was rewritten while it "
                           "was being opened: try again", top->display);
  }
  return 0;
}

/* Restore point IDX of C through the chain reader, layers opened safely. */
chain_image *
store_point_open (store *st, const store_chain *c, size_t idx)
{
  if (!c || idx >= c->n) {
    qb_error_set (QB_EINVAL, "no restore point %zu in this chain", idx);
    return NULL;
  }
  int *fds = calloc (idx + 1, sizeof *fds);
  const char **names = calloc (idx + 1, sizeof *names);
  if (!fds || !names) {
    free (fds);
    free (names);
    qb_error_set (QB_ENOMEM, "out of memory opening a restore point: nothing is damaged, "
                  "try again");
    return NULL;
  }
  for (size_t i = 0; i <= idx; i++) {
    names[i] = c->layers[i].path;
    fds[i] = store_layer_open (st, &c->layers[i]);
    if (fds[i] < 0) {
      /* The scan said it was there: it went since (a point removed, a
         chain rewritten).  Missing layers are damage only when the scan
         says so. */
      if (qb_error_code () == QB_ENOENT)
        qb_error_set (QB_EAGAIN, "layer %s went away since the store was read (a restore "
                      "point was removed or its chain rewritten): look again",
                      c->layers[i].path);
      while (i-- > 0)
        close (fds[i]);
      free (fds);
      free (names);
      return NULL;
    }
  }
  if (point_guard (st, c, idx, fds) < 0) {
    for (size_t i = 0; i <= idx; i++)
      close (fds[i]);
    free (fds);
    free (names);
    return NULL;
  }
  chain_image *ci = chain_open_fds (fds, names, idx + 1);
  free (fds);
  free (names);
  return ci;
}
