/* qmpbackupfs — NTFS through libntfs-3g over a read function (see
 * files-ntfs.h).  The guest is an adversary: names are converted by the
 * library and checked here ('/' and empty names skipped), listings,
 * link targets and xattrs are bounded, and every call into the library is
 * made under ntfs_lock. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ntfs-3g/types.h>
#include <ntfs-3g/attrib.h>
#include <ntfs-3g/device.h>
#include <ntfs-3g/dir.h>
#include <ntfs-3g/inode.h>
#include <ntfs-3g/logging.h>
#include <ntfs-3g/ntfstime.h>
#include <ntfs-3g/reparse.h>
#include <ntfs-3g/unistr.h>
#include <ntfs-3g/volume.h>

#include "fs/files-ntfs.h"

#define NTFS_ROOT_MFT 5u                /* FILE_root */
#define NTFS_FIRST_USER 16u             /* FILE_first_user */
#define NTFS_LINK_MAX 4096
#define NTFS_DIR_MAX (1u << 20)         /* entries of one listing */

static pthread_mutex_t ntfs_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t ntfs_once = PTHREAD_ONCE_INIT;

/* The device: a window of the disk. */
typedef struct ndev {
  parttab_read_fn rd;
  void *opaque;
  uint64_t start, length, pos;
} ndev;

struct files_ntfs {
  ntfs_volume *vol;
  ndev dev;
};

struct files_ntfs_file {
  files_ntfs *v;
  ntfs_inode *ni;
  ntfs_attr *na;
};

/* Silence the library (it prints to stderr by default). */
static void
ntfs_init (void)
{
  ntfs_log_set_handler (ntfs_log_handler_null);
  ntfs_set_char_encoding ("utf8");     /* names as UTF-8, whatever the locale */
}

/* ---- device operations (read-only) ---- */

/* See struct ntfs_device_operations. */
static int
nd_open (struct ntfs_device *dev, int flags)
{
  if ((flags & O_ACCMODE) != O_RDONLY) {
    errno = EROFS;
    return -1;
  }
  NDevSetOpen (dev);
  NDevSetReadOnly (dev);
  return 0;
}

static int
nd_close (struct ntfs_device *dev)
{
  NDevClearOpen (dev);
  return 0;
}

static s64
nd_pread (struct ntfs_device *dev, void *buf, s64 count, s64 off)
{
  ndev *d = dev->d_private;
  if (count < 0 || off < 0) {
    errno = EINVAL;
    return -1;
  }
  if ((uint64_t) off >= d->length)
    return 0;
  if ((uint64_t) count > d->length - off)
    count = d->length - off;
  /* in pieces of 1 MiB: a hostile volume may ask for huge reads */
  for (s64 done = 0; done < count;) {
    size_t n = count - done > (1 << 20) ? (1 << 20) : (size_t) (count - done);
    if (d->rd (d->opaque, (char *) buf + done, n, d->start + off + done) < 0) {
      errno = EIO;
      return done ? done : -1;
    }
    done += n;
  }
  return count;
}

static s64
nd_seek (struct ntfs_device *dev, s64 off, int whence)
{
  ndev *d = dev->d_private;
  s64 base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? (s64) d->pos
    : whence == SEEK_END ? (s64) d->length : -1;
  if (base < 0 || (off < 0 && -off > base)) {
    errno = EINVAL;
    return -1;
  }
  d->pos = base + off;
  return d->pos;
}

static s64
nd_read (struct ntfs_device *dev, void *buf, s64 count)
{
  ndev *d = dev->d_private;
  s64 r = nd_pread (dev, buf, count, d->pos);
  if (r > 0)
    d->pos += r;
  return r;
}

static s64
nd_write (struct ntfs_device *dev, const void *buf, s64 count)
{
  (void) dev; (void) buf; (void) count;
  errno = EROFS;
  return -1;
}

static s64
nd_pwrite (struct ntfs_device *dev, const void *buf, s64 count, s64 off)
{
  (void) dev; (void) buf; (void) count; (void) off;
  errno = EROFS;
  return -1;
}

static int
nd_sync (struct ntfs_device *dev)
{
  (void) dev;
  return 0;
}

static int
nd_stat (struct ntfs_device *dev, struct stat *st)
{
  ndev *d = dev->d_private;
  memset (st, 0, sizeof *st);
  st->st_mode = S_IFREG | 0400;
  st->st_size = d->length;
  return 0;
}

static int
nd_ioctl (struct ntfs_device *dev, unsigned long request, void *argp)
{
  (void) dev; (void) request; (void) argp;
  errno = ENOTTY;
  return -1;
}

static struct ntfs_device_operations nd_ops = {
  .open = nd_open, .close = nd_close, .seek = nd_seek, .read = nd_read,
  .write = nd_write, .pread = nd_pread, .pwrite = nd_pwrite, .sync = nd_sync,
  .stat = nd_stat, .ioctl = nd_ioctl,
};

/* ---- inodes ---- */

/* The MFT record of guest inode INO, or 0 when it names no user file. */
static uint64_t
to_mft (uint32_t ino)
{
  uint64_t m = ino == FILES_NTFS_ROOT ? NTFS_ROOT_MFT : ino == NTFS_ROOT_MFT ? FILES_NTFS_ROOT : ino;
  return m == NTFS_ROOT_MFT || m >= NTFS_FIRST_USER ? m : 0;
}

/* The guest inode of MFT record M, or 0 when it is hidden or too big. */
static uint32_t
to_ino (uint64_t m)
{
  if (m != NTFS_ROOT_MFT && (m < NTFS_FIRST_USER || m >= UINT32_MAX - 1))
    return 0;
  return m == NTFS_ROOT_MFT ? FILES_NTFS_ROOT : m == FILES_NTFS_ROOT ? NTFS_ROOT_MFT : (uint32_t) m;
}

/* Open guest inode INO of V: the inode, or NULL with -errno in *R. */
static ntfs_inode *
inode_get (files_ntfs *v, uint32_t ino, int *r)
{
  uint64_t m = to_mft (ino);
  if (!m) {
    *r = -ENOENT;
    return NULL;
  }
  ntfs_inode *ni = ntfs_inode_open (v->vol, m);
  if (!ni)
    *r = errno == ENOENT ? -ENOENT : errno == ENOMEM ? -ENOMEM : -EIO;
  return ni;
}

/* True if NI is a reparse point (symlink, junction or another kind). */
static bool
is_reparse (ntfs_inode *ni)
{
  return (ni->flags & FILE_ATTR_REPARSE_POINT) != 0;
}

/* The symlink target of reparse point NI (malloc'd), or NULL. */
static char *
link_target (ntfs_inode *ni)
{
  char *t = ntfs_make_symlink (ni, ".");
  if (t && (t[0] == '\0' || strlen (t) >= NTFS_LINK_MAX)) {
    free (t);
    t = NULL;
  }
  return t;
}

/* The target of an Interix symlink (a system file holding "IntxLNK\1" and
 * the UTF-16 target: what ntfs-3g writes for `ln -s`), malloc'd, or NULL. */
static char *
intx_target (ntfs_inode *ni)
{
  if (!(ni->flags & FILE_ATTR_SYSTEM) || (ni->mrec->flags & MFT_RECORD_IS_DIRECTORY))
    return NULL;
  ntfs_attr *na = ntfs_attr_open (ni, AT_DATA, AT_UNNAMED, 0);
  if (!na)
    return NULL;
  char *t = NULL;
  s64 size = na->data_size;
  if (size > 8 && size <= 8 + 2 * NTFS_LINK_MAX && size % 2 == 0) {
    char *buf = malloc (size);
    if (buf && ntfs_attr_pread (na, 0, size, buf) == size && memcmp (buf, "IntxLNK\1", 8) == 0
        && (ntfs_ucstombs ((const ntfschar *) (buf + 8), (size - 8) / 2, &t, 0) < 0
            || !t || !*t || strlen (t) >= NTFS_LINK_MAX)) {
      free (t);
      t = NULL;
    }
    free (buf);
  }
  ntfs_attr_close (na);
  return t;
}

/* See files-ntfs.h. */
files_ntfs *
files_ntfs_open (parttab_read_fn rd, void *opaque, uint64_t start, uint64_t length, char **why)
{
  pthread_once (&ntfs_once, ntfs_init);
  files_ntfs *v = calloc (1, sizeof *v);
  if (!v) {
    *why = strdup ("out of memory");
    return NULL;
  }
  v->dev = (ndev) { rd, opaque, start, length, 0 };
  pthread_mutex_lock (&ntfs_lock);
  struct ntfs_device *dev = ntfs_device_alloc ("qmpbackupfs-ntfs", 0, &nd_ops, &v->dev);
  if (dev) {
    errno = 0;
    v->vol = ntfs_device_mount (dev, NTFS_MNT_RDONLY);
    if (!v->vol) {
      int e = errno;
      ntfs_device_free (dev);
      errno = e;
    }
  }
  int e = errno;
  pthread_mutex_unlock (&ntfs_lock);
  if (!v->vol) {
    char buf[256];
    snprintf (buf, sizeof buf, "libntfs-3g cannot mount it: %s",
              e ? strerror (e) : "not a valid NTFS");
    *why = strdup (buf);
    free (v);
    return NULL;
  }
  return v;
}

/* See files-ntfs.h. */
void
files_ntfs_close (files_ntfs *v)
{
  if (!v)
    return;
  pthread_mutex_lock (&ntfs_lock);
  ntfs_umount (v->vol, TRUE);
  pthread_mutex_unlock (&ntfs_lock);
  free (v);
}

/* Fill ST from NI (under ntfs_lock): 0 or -errno. */
static int
stat_locked (ntfs_inode *ni, struct stat *st)
{
  memset (st, 0, sizeof *st);
  st->st_atim = ntfs2timespec (ni->last_access_time);
  st->st_mtim = ntfs2timespec (ni->last_data_change_time);
  st->st_ctim = ntfs2timespec (ni->last_mft_change_time);
  st->st_nlink = le16_to_cpu (ni->mrec->link_count);
  if (is_reparse (ni)) {                /* symlinks and junctions, files or folders */
    char *t = link_target (ni);
    if (t) {
      st->st_mode = S_IFLNK | 0777;
      st->st_size = strlen (t);
      free (t);
      return 0;
    }
    if (!(ni->mrec->flags & MFT_RECORD_IS_DIRECTORY))
      return -EOPNOTSUPP;                 /* another kind of reparse point */
  }
  if (ni->mrec->flags & MFT_RECORD_IS_DIRECTORY) {
    st->st_mode = S_IFDIR | 0555;
    st->st_nlink = 1;
    ntfs_attr *na = ntfs_attr_open (ni, AT_INDEX_ALLOCATION, NTFS_INDEX_I30, 4);
    if (na) {
      st->st_size = na->data_size;
      st->st_blocks = na->allocated_size >> 9;
      ntfs_attr_close (na);
    }
    return 0;
  }
  char *t = intx_target (ni);
  if (t) {
    st->st_mode = S_IFLNK | 0777;
    st->st_size = strlen (t);
    free (t);
    return 0;
  }
  st->st_mode = S_IFREG | 0444;
  ntfs_attr *na = ntfs_attr_open (ni, AT_DATA, AT_UNNAMED, 0);
  if (!na)
    return errno == ENOENT ? 0 : -EIO;   /* no unnamed data: an empty file */
  st->st_size = na->data_size;
  st->st_blocks = ((NAttrCompressed (na) || NAttrSparse (na)) ? na->compressed_size
                   : na->allocated_size) >> 9;
  ntfs_attr_close (na);
  return 0;
}

/* See files-ntfs.h. */
int
files_ntfs_stat (files_ntfs *v, uint32_t ino, struct stat *st)
{
  int r = 0;
  pthread_mutex_lock (&ntfs_lock);
  ntfs_inode *ni = inode_get (v, ino, &r);
  if (ni) {
    r = stat_locked (ni, st);
    ntfs_inode_close (ni);
  }
  pthread_mutex_unlock (&ntfs_lock);
  return r;
}

/* See files-ntfs.h. */
int
files_ntfs_lookup (files_ntfs *v, uint32_t dir, const char *name, uint32_t *ino)
{
  int r = 0;
  if (!*name || strchr (name, '/') || strlen (name) > 255 * 4)
    return -ENOENT;
  ntfschar *uname = NULL;
  int ulen = ntfs_mbstoucs (name, &uname);
  if (ulen <= 0 || ulen > 255) {
    free (uname);
    return ulen > 255 ? -ENAMETOOLONG : -ENOENT;
  }
  pthread_mutex_lock (&ntfs_lock);
  ntfs_inode *ni = inode_get (v, dir, &r);
  if (ni) {
    errno = 0;
    u64 m = ntfs_inode_lookup_by_name (ni, uname, ulen);
    if (m == (u64) -1)
      r = errno == ENOENT || errno == 0 ? -ENOENT : -EIO;
    else if (!(*ino = to_ino (MREF (m))))
      r = -ENOENT;
    ntfs_inode_close (ni);
  }
  pthread_mutex_unlock (&ntfs_lock);
  free (uname);
  return r;
}

typedef struct dctx {
  files_ntfs_dirent_fn fn;
  void *priv;
  unsigned count;
  int stop;
} dctx;

/* ntfs_readdir callback: one name (DOS aliases and hidden records skipped). */
static int
dir_cb (void *priv, const ntfschar *uname, const int ulen, const int type, const s64 pos,
        const MFT_REF mref, const unsigned dt)
{
  (void) pos;
  dctx *c = priv;
  if (type == FILE_NAME_DOS)
    return 0;
  if (++c->count > NTFS_DIR_MAX) {
    c->stop = -EFBIG;
    return -1;
  }
  uint32_t ino = to_ino (MREF (mref));
  if (!ino)
    return 0;
  char *name = NULL;
  if (ntfs_ucstombs (uname, ulen, &name, 0) < 0 || !name)
    return 0;
  if (*name && !strchr (name, '/') && strcmp (name, ".") != 0 && strcmp (name, "..") != 0) {
    mode_t t = dt == NTFS_DT_DIR ? S_IFDIR : dt == NTFS_DT_LNK ? S_IFLNK : dt == NTFS_DT_REG
      ? S_IFREG : 0;
    if (c->fn (c->priv, name, ino, t)) {
      c->stop = -EFBIG;
      free (name);
      return -1;
    }
  }
  free (name);
  return 0;
}

/* See files-ntfs.h. */
int
files_ntfs_readdir (files_ntfs *v, uint32_t dir, files_ntfs_dirent_fn fn, void *priv)
{
  int r = 0;
  pthread_mutex_lock (&ntfs_lock);
  ntfs_inode *ni = inode_get (v, dir, &r);
  if (ni) {
    if (!(ni->mrec->flags & MFT_RECORD_IS_DIRECTORY))
      r = -ENOTDIR;
    else {
      dctx c = { fn, priv, 0, 0 };
      s64 pos = 0;
      if (ntfs_readdir (ni, &pos, &c, dir_cb) && !c.stop)
        r = -EIO;
      if (c.stop)
        r = c.stop;
    }
    ntfs_inode_close (ni);
  }
  pthread_mutex_unlock (&ntfs_lock);
  return r;
}

/* See files-ntfs.h. */
int
files_ntfs_readlink (files_ntfs *v, uint32_t ino, char **target)
{
  int r = 0;
  pthread_mutex_lock (&ntfs_lock);
  ntfs_inode *ni = inode_get (v, ino, &r);
  if (ni) {
    if (!(*target = is_reparse (ni) ? link_target (ni) : intx_target (ni)))
      r = -EINVAL;
    ntfs_inode_close (ni);
  }
  pthread_mutex_unlock (&ntfs_lock);
  return r;
}

/* See files-ntfs.h. */
int
files_ntfs_file_open (files_ntfs *v, uint32_t ino, files_ntfs_file **f)
{
  int r = 0;
  files_ntfs_file *h = calloc (1, sizeof *h);
  if (!h)
    return -ENOMEM;
  h->v = v;
  pthread_mutex_lock (&ntfs_lock);
  h->ni = inode_get (v, ino, &r);
  if (h->ni) {
    if (is_reparse (h->ni))
      r = -EACCES;
    else if (h->ni->mrec->flags & MFT_RECORD_IS_DIRECTORY)
      r = -EISDIR;
    else if (!(h->na = ntfs_attr_open (h->ni, AT_DATA, AT_UNNAMED, 0)) && errno != ENOENT)
      r = -EIO;
    if (r < 0)
      ntfs_inode_close (h->ni);
  }
  pthread_mutex_unlock (&ntfs_lock);
  if (r < 0) {
    free (h);
    return r;
  }
  *f = h;
  return 0;
}

/* See files-ntfs.h. */
ssize_t
files_ntfs_file_pread (files_ntfs_file *f, void *buf, size_t len, uint64_t off)
{
  if (!f->na)
    return 0;
  ssize_t done = 0;
  pthread_mutex_lock (&ntfs_lock);
  uint64_t size = f->na->data_size;
  if (off < size) {
    if (len > size - off)
      len = size - off;
    while ((size_t) done < len) {
      s64 n = ntfs_attr_pread (f->na, off + done, len - done, (char *) buf + done);
      if (n <= 0) {
        if (n < 0)
          done = -EIO;
        break;
      }
      done += n;
    }
  }
  pthread_mutex_unlock (&ntfs_lock);
  return done;
}

/* See files-ntfs.h. */
uint64_t
files_ntfs_file_size (files_ntfs_file *f)
{
  return f->na ? (uint64_t) f->na->data_size : 0;
}

/* See files-ntfs.h. */
void
files_ntfs_file_close (files_ntfs_file *f)
{
  pthread_mutex_lock (&ntfs_lock);
  if (f->na)
    ntfs_attr_close (f->na);
  ntfs_inode_close (f->ni);
  pthread_mutex_unlock (&ntfs_lock);
  free (f);
}

/* See files-ntfs.h. */
int
files_ntfs_listxattr (files_ntfs *v, uint32_t ino, char **list, size_t *len)
{
  int r = 0;
  *list = NULL;
  *len = 0;
  pthread_mutex_lock (&ntfs_lock);
  ntfs_inode *ni = inode_get (v, ino, &r);
  ntfs_attr_search_ctx *ctx = ni ? ntfs_attr_get_search_ctx (ni, NULL) : NULL;
  if (ni && !ctx)
    r = -ENOMEM;
  while (ctx && !ntfs_attr_lookup (AT_DATA, NULL, 0, CASE_SENSITIVE, 0, NULL, 0, ctx)) {
    const ATTR_RECORD *a = ctx->attr;
    if (!a->name_length)
      continue;
    char *name = NULL;
    if (ntfs_ucstombs ((const ntfschar *) ((const char *) a + le16_to_cpu (a->name_offset)),
                       a->name_length, &name, 0) < 0 || !name)
      continue;
    size_t n = strlen (name) + 6;
    if (*name && *len + n <= FILES_NTFS_XATTR_MAX) {
      char *p = realloc (*list, *len + n);
      if (p) {
        *list = p;
        memcpy (p + *len, "user.", 5);
        memcpy (p + *len + 5, name, n - 5);
        *len += n;
      }
    }
    free (name);
  }
  if (ctx)
    ntfs_attr_put_search_ctx (ctx);
  if (ni)
    ntfs_inode_close (ni);
  pthread_mutex_unlock (&ntfs_lock);
  return r;
}

/* See files-ntfs.h. */
int
files_ntfs_getxattr (files_ntfs *v, uint32_t ino, const char *name, char **val, size_t *len)
{
  if (strncmp (name, "user.", 5) != 0 || !name[5])
    return -ENODATA;
  ntfschar *uname = NULL;
  int ulen = ntfs_mbstoucs (name + 5, &uname);
  if (ulen <= 0)
    return -ENODATA;
  int r = 0;
  pthread_mutex_lock (&ntfs_lock);
  ntfs_inode *ni = inode_get (v, ino, &r);
  if (ni) {
    ntfs_attr *na = ntfs_attr_open (ni, AT_DATA, uname, ulen);
    if (!na)
      r = -ENODATA;
    else if (na->data_size < 0 || na->data_size > FILES_NTFS_XATTR_MAX)
      r = -E2BIG;
    else {
      *len = na->data_size;
      *val = malloc (*len ? *len : 1);
      if (!*val)
        r = -ENOMEM;
      else if (*len && ntfs_attr_pread (na, 0, *len, *val) != (s64) *len) {
        free (*val);
        *val = NULL;
        r = -EIO;
      }
    }
    if (na)
      ntfs_attr_close (na);
    ntfs_inode_close (ni);
  }
  pthread_mutex_unlock (&ntfs_lock);
  free (uname);
  return r;
}
