/* qmpbackupfs — files of the store opened without following symlinks: every
 * component below the store root is opened with O_NOFOLLOW, so a layer file,
 * disk folder or VM folder that is a symlink never makes the mount serve a
 * file from outside the store. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "fs/fs.h"

/* Open PATH (inside the store) read-only, no symlink followed below the root. */
int
storefile_open (const char *path)
{
  size_t rl = strlen (fs_cfg.store_root);
  if (strncmp (path, fs_cfg.store_root, rl) != 0 || path[rl] != '/') {
    errno = EXDEV;
    return -1;
  }
  int dfd = open (fs_cfg.store_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd == -1)
    return -1;
  char *rel = qb_strdup (path + rl + 1), *save = NULL;
  int fd = -1, err = 0;
  char *comp = strtok_r (rel, "/", &save);
  while (comp) {
    char *next = strtok_r (NULL, "/", &save);
    if (strcmp (comp, "..") == 0 || strcmp (comp, ".") == 0) {
      err = EXDEV;
      break;
    }
    int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | (next ? O_DIRECTORY : 0);
    int nfd = openat (dfd, comp, flags);
    if (nfd == -1) {
      /* a symlinked folder gives ENOTDIR with O_DIRECTORY on some kernels */
      struct stat sb;
      err = errno;
      if (fstatat (dfd, comp, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK (sb.st_mode))
        err = ELOOP;
      break;
    }
    close (dfd);
    dfd = -1;
    if (!next) {
      fd = nfd;
      break;
    }
    dfd = nfd;
    comp = next;
  }
  if (dfd != -1)
    close (dfd);
  free (rel);
  if (fd == -1) {
    errno = err ? err : ENOENT;
    return -1;
  }
  struct stat sb;
  if (fstat (fd, &sb) == -1 || !S_ISREG (sb.st_mode)) {
    close (fd);
    errno = EINVAL;
    return -1;
  }
  return fd;
}

/* fstat of PATH opened as by storefile_open; 0 or -1 with errno. */
int
storefile_stat (const char *path, struct stat *sb)
{
  int fd = storefile_open (path);
  if (fd == -1)
    return -1;
  int r = fstat (fd, sb);
  int err = errno;
  close (fd);
  errno = err;
  return r;
}

/* True if STORE/NAME is a symlink. */
bool
storefile_vm_is_link (const char *name)
{
  char *p = qb_asprintf ("%s/%s", fs_cfg.store_root, name);
  struct stat sb;
  bool link = lstat (p, &sb) == 0 && S_ISLNK (sb.st_mode);
  free (p);
  return link;
}
