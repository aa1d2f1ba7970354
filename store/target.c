/* qmpbackupfs — the target id of a VM's folder in a store (see store.h,
 * "Target id").
 *
 * One VM may be backed up into several stores (a daily and a weekly one, a
 * local and an offsite one).  Each keeps its own chains, so each needs its
 * own dirty bitmaps in QEMU; the engine names them after this id.  The id
 * lives in STORE/<vm>/.target-id: 16 hex digits and a newline, written
 * once.  It is written to a fresh file (O_EXCL, O_NOFOLLOW, mode 0600),
 * fsynced, and linked into place, so a reader never sees a partial id and
 * two writers agree on the first one linked.  No symbolic link is followed
 * on the way from the store root. */
#include "store-int.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TARGET_FILE ".target-id"
#define TARGET_MAX_BYTES 64      /* a bigger file is not an id */

/* True when S is STORE_TARGET_ID_LEN lowercase hex digits. */
bool
store_target_id_valid (const char *s)
{
  size_t i = 0;
  for (; s && s[i]; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return i == STORE_TARGET_ID_LEN;
}

/* Read the id in file TARGET_FILE of VM's folder into OUT; -1 (QB_ENOENT
 * when there is none, QB_EDAMAGED when it holds no id). */
static int
target_read (store *st, const char *vm, char *out, size_t len)
{
  char *rel = qb_asprintf ("%s/" TARGET_FILE, vm);
  int fd = qb_openat_nofollow (st->rootfd, rel, O_RDONLY | O_NONBLOCK);
  int e = errno;
  int ret = 0;
  if (fd < 0) {
    if (e == ENOENT)
      ret = qb_error_set (QB_ENOENT, "%s/%s has no target id yet", st->root, rel);
    else
      ret = store_fs_error (e, "target id", rel);
    free (rel);
    return ret;
  }
  struct stat sb;
  char buf[TARGET_MAX_BYTES + 1];
  ssize_t got = -1;
  if (fstat (fd, &sb) == 0 && S_ISREG (sb.st_mode))
    got = pread (fd, buf, TARGET_MAX_BYTES, 0);
  e = errno;
  close (fd);
  if (got < 0 && S_ISREG (sb.st_mode)) {
    ret = store_fs_error (e, "read target id", rel);
    free (rel);
    return ret;
  }
  if (got >= 0) {
    buf[got] = '\0';
    if (got > 0 && buf[got - 1] == '\n')
      buf[got - 1] = '\0';
  }
  if (got < 0 || !store_target_id_valid (buf)) {
    ret = qb_error_set (QB_EDAMAGED, "%s/%s does not hold a target id (16 hex digits): "
                        "remove it, and the next backup into this store takes a full "
                        "under a new id", st->root, rel);
    free (rel);
    return ret;
  }
  snprintf (out, len, "%s", buf);
  free (rel);
  return 0;
}

/* Create VM's id file (first writer wins), then read it into OUT. */
static int
target_create (store *st, const char *vm, char *out, size_t len)
{
  if (store_mkdirs (st, vm) < 0)
    return -1;
  int vfd = qb_openat_nofollow (st->rootfd, vm, O_RDONLY | O_DIRECTORY);
  if (vfd < 0)
    return store_fs_error (errno, "VM folder", vm);
  char id[32], tag[32], tmp[64];
  store_new_chain_id (id, sizeof id);
  store_new_chain_id (tag, sizeof tag);
  snprintf (tmp, sizeof tmp, TARGET_FILE ".new-%s", tag);
  char line[48];
  snprintf (line, sizeof line, "%s\n", id);
  int ret = 0;
  int fd = openat (vfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    ret = store_write_error (st, errno, "create", tmp);
    close (vfd);
    return ret;
  }
  size_t n = strlen (line);
  ssize_t w = write (fd, line, n);
  if (w < 0)
    ret = store_write_error (st, errno, "write", tmp);
  else if ((size_t) w != n)
    ret = store_write_error (st, ENOSPC, "write", tmp);   /* a short write: no room */
  else if (fsync (fd) < 0)
    ret = store_write_error (st, errno, "write", tmp);
  close (fd);
  if (ret == 0 && linkat (vfd, tmp, vfd, TARGET_FILE, 0) < 0 && errno != EEXIST)
    ret = store_write_error (st, errno, "create", TARGET_FILE);
  unlinkat (vfd, tmp, 0);
  if (ret == 0)
    fsync (vfd);
  close (vfd);
  if (ret < 0)
    return -1;
  return target_read (st, vm, out, len);
}

/* VM's target id in ST, created once with CREATE. */
int
store_target_id (store *st, const char *vm, bool create, char *out, size_t len)
{
  if (!st || !out || len < STORE_TARGET_ID_LEN + 1)
    return qb_error_set (QB_EINVAL, "store_target_id: bad arguments");
  out[0] = '\0';
  if (!qb_name_is_safe (vm))
    return qb_error_set (QB_EINVAL, "invalid VM name \"%s\"", vm ? vm : "");
  if (target_read (st, vm, out, len) == 0)
    return 0;
  if (qb_error_code () != QB_ENOENT || !create)
    return -1;
  return target_create (st, vm, out, len);
}
