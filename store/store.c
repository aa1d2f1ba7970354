/* qmpbackupfs — the store: opening, names and ids, locks, change stamps (see store.h;
 * records.c reads and writes records, open.c opens layers for reading). */
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

/* The mount's name of ID in STYLE (see store.h): the one formatter of restore
 * point names. */
int
store_id_display (const char *id, store_names style, char *buf, size_t len)
{
  int64_t t;
  int seq;
  if (!parse_our_id (id, &t, &seq))
    return -1;
  time_t secs = (time_t) (t / 1000000);
  struct tm tm;
  gmtime_r (&secs, &tm);
  char base[32];
  strftime (base, sizeof base,
            style == STORE_NAMES_ISO ? "%Y-%m-%dT%H:%M:%SZ" : "%Y-%m-%dT%H%M%SZ", &tm);
  if (seq > 1)
    snprintf (buf, len, "%s_%02d", base, seq);
  else
    snprintf (buf, len, "%s", base);
  return 0;
}

/* The style named WORD ("safe" or "iso") into *STYLE; 0, or -1 (QB_EINVAL). */
int
store_names_parse (const char *word, store_names *style)
{
  if (word && strcmp (word, "safe") == 0)
    *style = STORE_NAMES_SAFE;
  else if (word && strcmp (word, "iso") == 0)
    *style = STORE_NAMES_ISO;
  else
    return qb_error_set (QB_EINVAL, "names=%s: expected safe (2026-11-26T045000Z.img, "
                         "the default) or iso (2026-11-26T04:50:00Z.img)", word ? word : "");
  return 0;
}

/* Name restore points of ST in STYLE from now on (before any scan). */
void
store_set_names (store *st, store_names style)
{
  st->names = style;
}

/* The style restore points of ST are named in. */
store_names
store_get_names (const store *st)
{
  return st->names;
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

/* ---- Change stamps (for readers that cache scans) ---- */

/* Append "REL mtime ino;" of REL beneath DIRFD (no link followed) to *S. */
static void
stamp_add (char **s, int dirfd, const char *rel)
{
  struct stat sb;
  if (fstatat (dirfd, rel, &sb, AT_SYMLINK_NOFOLLOW) == -1)
    memset (&sb, 0, sizeof sb);
  char *n = qb_asprintf ("%s%s %lld.%09ld %llu;", *s ? *s : "", rel,
                         (long long) sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec,
                         (unsigned long long) sb.st_ino);
  free (*s);
  *s = n;
}

/* Append the stamp of the layers' records folder of disk folder REL beneath
 * VMFD (a verify's result there changes the scan: sums.h), when REL is a
 * folder and not a link. */
static void
stamp_add_chain (char **s, int vmfd, const char *rel)
{
  struct stat sb;
  if (fstatat (vmfd, rel, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR (sb.st_mode))
    return;
  char *c = qb_asprintf ("%s/" STORE_SIDECAR_DIR, rel);
  stamp_add (s, vmfd, c);
  free (c);
}

/* The newest mtime of VM's folder and its records folder (see store.h):
 * two stats beneath the root (it runs on every request of the mount).  A
 * VM folder that is a link or no folder has no time; a link swapped in
 * between the two stats only changes the stamp, never what is read. */
struct timespec
store_vm_changed (store *st, const char *vm)
{
  struct timespec t = { 0, 0 };
  struct stat a, b;
  if (!qb_name_is_safe (vm) || fstatat (st->rootfd, vm, &a, AT_SYMLINK_NOFOLLOW) < 0
      || !S_ISDIR (a.st_mode))
    return t;
  t = a.st_mtim;
  char rel[NAME_MAX + sizeof "/" STORE_POINTS_DIR];
  if ((size_t) snprintf (rel, sizeof rel, "%s/" STORE_POINTS_DIR, vm) < sizeof rel
      && fstatat (st->rootfd, rel, &b, AT_SYMLINK_NOFOLLOW) == 0
      && (b.st_mtim.tv_sec > t.tv_sec
          || (b.st_mtim.tv_sec == t.tv_sec && b.st_mtim.tv_nsec > t.tv_nsec)))
    t = b.st_mtim;
  return t;
}

/* Call FN for every folder of the VM folder VMFD that may hold a disk (see store-int.h). */
void
store_vm_walk_dirs (int vmfd, void (*fn) (int vmfd, const char *rel, void *opaque),
                    void *opaque)
{
  int dfd = openat (vmfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = dfd >= 0 ? fdopendir (dfd) : NULL;
  if (!d && dfd >= 0)
    close (dfd);
  struct dirent *de;
  while (d && (de = readdir (d)) != NULL) {
    struct stat sb;
    if (!qb_name_is_safe (de->d_name)
        || fstatat (vmfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR (sb.st_mode))
      continue;
    fn (vmfd, de->d_name, opaque);
    if (!store_is_month (de->d_name))
      continue;
    int mfd = qb_openat_nofollow (vmfd, de->d_name, O_RDONLY | O_DIRECTORY);
    DIR *m = mfd >= 0 ? fdopendir (mfd) : NULL;
    if (!m && mfd >= 0)
      close (mfd);
    struct dirent *me;
    while (m && (me = readdir (m)) != NULL) {
      if (!qb_name_is_safe (me->d_name))
        continue;
      char *rel = qb_asprintf ("%s/%s", de->d_name, me->d_name);
      fn (vmfd, rel, opaque);
      free (rel);
    }
    if (m)
      closedir (m);
  }
  if (d)
    closedir (d);
}

static void
stamp_dir (int vmfd, const char *rel, void *opaque)
{
  stamp_add (opaque, vmfd, rel);
  stamp_add_chain (opaque, vmfd, rel);
}

/* A string that changes whenever any folder of VM changes (see store.h). */
char *
store_vm_stamp (store *st, const char *vm)
{
  char *s = qb_strdup ("");
  int vmfd = store_vm_open (st, vm);
  if (vmfd < 0) {
    qb_error_clear ();
    return s;
  }
  stamp_add (&s, vmfd, ".");
  stamp_add (&s, vmfd, STORE_POINTS_DIR);
  store_vm_walk_dirs (vmfd, stamp_dir, &s);
  close (vmfd);
  return s;
}

/* ---- Telling folders apart (for tools given a path) ---- */

/* True if directory PATH holds a layer file (FULL-/INC-/COPY-...). */
static bool
dir_has_layers (const char *path)
{
  DIR *d = opendir (path);
  if (!d)
    return false;
  bool found = false;
  struct dirent *de;
  while (!found && (de = readdir (d)) != NULL)
    found = strncmp (de->d_name, "FULL-", 5) == 0 || strncmp (de->d_name, "INC-", 4) == 0
      || strncmp (de->d_name, "COPY-", 5) == 0;
  closedir (d);
  return found;
}

/* True if PATH/NAME exists (not following a link). */
static bool
has_entry (const char *path, const char *name)
{
  char *p = qb_asprintf ("%s/%s", path, name);
  struct stat sb;
  bool r = lstat (p, &sb) == 0;
  free (p);
  return r;
}

/* True if folder PATH holds a VM's records or lock (see store.h). */
bool
store_path_has_vm_state (const char *path)
{
  return has_entry (path, STORE_POINTS_DIR) || has_entry (path, STORE_LOCK_FILE);
}

/* True if PATH looks like a VM folder (see store.h). */
bool
store_path_is_vm (const char *path)
{
  if (store_path_has_vm_state (path))
    return !dir_has_layers (path);
  if (dir_has_layers (path))
    return false;
  DIR *d = opendir (path);
  if (!d)
    return false;
  bool found = false;
  struct dirent *de;
  while (!found && (de = readdir (d)) != NULL) {
    if (!qb_name_is_safe (de->d_name))
      continue;
    char *sub = qb_asprintf ("%s/%s", path, de->d_name);
    found = dir_has_layers (sub);
    if (!found && store_is_month (de->d_name)) {
      DIR *m = opendir (sub);
      struct dirent *me;
      while (m && !found && (me = readdir (m)) != NULL)
        if (qb_name_is_safe (me->d_name)) {
          char *mm = qb_asprintf ("%s/%s", sub, me->d_name);
          found = dir_has_layers (mm);
          free (mm);
        }
      if (m)
        closedir (m);
    }
    free (sub);
  }
  closedir (d);
  return found;
}

