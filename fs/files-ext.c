/* qmpbackupfs — files/: extended attributes and SEEK_DATA/SEEK_HOLE of
 * guest files (the rest is in files.c; NTFS's in files-ntfs.c). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "fs/files-int.h"

#define XATTR_MAX_LIST (1u << 16)     /* bytes of names listxattr returns at most */
#define SEEK_SCAN_MAX (1u << 20)      /* blocks of the map one lseek looks at */

typedef struct xlist {
  char *p;
  size_t len;
  bool too_big;
} xlist;

/* xattrs_iterate callback: append NAME\0. */
static int
xlist_cb (char *name, char *value, size_t value_len, void *data)
{
  (void) value; (void) value_len;
  xlist *l = data;
  size_t n = strlen (name) + 1;
  if (l->len + n > XATTR_MAX_LIST) {
    l->too_big = true;
    return XATTR_ABORT;
  }
  l->p = qb_realloc (l->p, l->len + n);
  memcpy (l->p + l->len, name, n);
  l->len += n;
  return 0;
}

/* Open and read the xattrs of guest inode INO of E; NULL and -errno in *R. */
static struct ext2_xattr_handle *
xattrs_load (fsent *e, fuse_ino_t ino, int *r)
{
  struct ext2_xattr_handle *xh = NULL;
  *r = 0;
  if (e->note)
    return NULL;
  errcode_t rc = ext2fs_xattrs_open (e->fs, (uint32_t) ino, &xh);
  if (!rc)
    rc = ext2fs_xattrs_read (xh);
  if (rc) {
    if (xh)
      ext2fs_xattrs_close (&xh);
    *r = rc == EXT2_ET_NO_INLINE_DATA ? 0 : -ext_errno (rc);
    return NULL;
  }
  return xh;
}

/* Reply to a getxattr/listxattr asking SIZE bytes with the LEN bytes of
 * BUF, or the error -R when R < 0 (size 0: the length; too small: ERANGE). */
static void
xattr_reply (fuse_req_t req, int r, const void *buf, size_t len, size_t size)
{
  if (r < 0)
    fuse_reply_err (req, -r);
  else if (size == 0)
    fuse_reply_xattr (req, len);
  else if (len > size)
    fuse_reply_err (req, ERANGE);
  else
    fuse_reply_buf (req, buf, len);
}

/* See fs.h. */
void
files_listxattr (fuse_req_t req, fuse_ino_t ino, size_t size)
{
  fsent *e = entry_or_reply (req, ino);
  if (!e)
    return;
  int r;
  xlist l = { 0 };
  if (e->ntfs)
    r = files_ntfs_listxattr (e->ntfs, (uint32_t) ino, &l.p, &l.len);
  else {
    struct ext2_xattr_handle *xh = xattrs_load (e, ino, &r);
    if (xh) {
      errcode_t rc = ext2fs_xattrs_iterate (xh, xlist_cb, &l);
      if (rc)
        r = -ext_errno (rc);
      else if (l.too_big)
        r = -E2BIG;
      ext2fs_xattrs_close (&xh);
    }
  }
  fsent_put (e);
  xattr_reply (req, r, l.p, l.len, size);
  free (l.p);
}

/* See fs.h. */
void
files_getxattr (fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
  fsent *e = entry_or_reply (req, ino);
  if (!e)
    return;
  int r;
  void *val = NULL;
  size_t vlen = 0;
  if (e->ntfs) {
    char *nval = NULL;
    r = files_ntfs_getxattr (e->ntfs, (uint32_t) ino, name, &nval, &vlen);
    fsent_put (e);
    xattr_reply (req, r, nval, vlen, size);
    free (nval);
    return;
  }
  struct ext2_xattr_handle *xh = xattrs_load (e, ino, &r);
  if (xh) {
    errcode_t rc = ext2fs_xattr_get (xh, name, &val, &vlen);
    if (rc == EXT2_ET_EA_KEY_NOT_FOUND)
      r = -ENODATA;
    else if (rc)
      r = -ext_errno (rc);
    ext2fs_xattrs_close (&xh);
  }
  else if (r == 0)
    r = -ENODATA;
  fsent_put (e);
  xattr_reply (req, r, val, vlen, size);
  if (val)
    ext2fs_free_mem (&val);
}

/* See fs.h.  Scans the block map from OFF, at most SEEK_SCAN_MAX blocks a
 * call: past that, SEEK_DATA answers the scan's end (holes may be reported
 * as data) and SEEK_HOLE the end of the file (data is never reported as a
 * hole).  Unwritten extents read as zeros: holes. */
void
files_lseek (fuse_req_t req, off_t off, int whence, struct fuse_file_info *fi)
{
  fhandle *h = (fhandle *) (uintptr_t) fi->fh;
  fsent *e = h->e;
  if (off < 0 || (whence != SEEK_DATA && whence != SEEK_HOLE)) {
    fuse_reply_err (req, EINVAL);
    return;
  }
  pthread_mutex_lock (&e->lock);
  uint64_t size = h->f ? EXT2_I_SIZE (ext2fs_file_get_inode (h->f))
    : h->nf ? files_ntfs_file_size (h->nf) : strlen (h->text);
  int64_t res = -1;
  if ((uint64_t) off >= size)
    res = -1;
  else if (!h->f)                 /* notes and NTFS: all data (no hole map) */
    res = whence == SEEK_DATA ? off : (int64_t) size;
  else {
    ext2_ino_t ino = ext2fs_file_get_inode_num (h->f);
    struct ext2_inode *in = ext2fs_file_get_inode (h->f);
    uint64_t bs = e->fs->blocksize;
    uint64_t blk = off / bs, last = (size - 1) / bs;
    res = whence == SEEK_DATA ? off : (int64_t) size;   /* when the map cannot tell */
    for (uint64_t n = 0; blk <= last && n < SEEK_SCAN_MAX; blk++, n++) {
      blk64_t phys = 0;
      int flags = 0;
      if (ext2fs_bmap2 (e->fs, ino, in, NULL, 0, blk, &flags, &phys) != 0)
        break;                  /* inline data or a bad map: all data */
      bool data = phys != 0 && !(flags & BMAP_RET_UNINIT);
      if (data == (whence == SEEK_DATA)) {
        uint64_t at = blk * bs;
        res = at > (uint64_t) off ? (int64_t) at : off;
        break;
      }
      if (blk == last)
        res = whence == SEEK_DATA ? -1 : (int64_t) size;
      else if (n + 1 == SEEK_SCAN_MAX && whence == SEEK_DATA)
        res = (blk + 1) * bs;
    }
  }
  pthread_mutex_unlock (&e->lock);
  if (res < 0)
    fuse_reply_err (req, ENXIO);
  else
    fuse_reply_lseek (req, res);
}

/* See files-int.h.  The block map is looked up block by block (ext2fs_bmap2
 * handles extents, indirect blocks and bigalloc alike); runs of physically
 * contiguous blocks are read with one call of the I/O manager (which keeps
 * every read inside the partition); holes and unwritten extents are zeros. */
int
ext_read_direct (fsent *e, ext2_file_t f, char *buf, size_t size, uint64_t off, size_t *done)
{
  ext2_filsys fs = e->fs;
  struct ext2_inode *in = ext2fs_file_get_inode (f);
  ext2_ino_t ino = ext2fs_file_get_inode_num (f);
  *done = 0;
  if (in->i_flags & (EXT4_INLINE_DATA_FL | EXT4_ENCRYPT_FL) || !LINUX_S_ISREG (in->i_mode))
    return 1;
  uint64_t isize = EXT2_I_SIZE (in), bs = fs->blocksize;
  if (off >= isize || size == 0)
    return 0;
  if (size > isize - off)
    size = isize - off;
  uint64_t end = off + size;
  char *bb = malloc (3 * bs);
  char *tmp = malloc (size + 2 * bs);
  if (!bb || !tmp) {
    free (bb);
    free (tmp);
    return -ENOMEM;
  }
  int r = 0;
  for (uint64_t pos = off; pos < end && r == 0;) {
    blk64_t lblk = pos / bs, phys = 0;
    int flags = 0;
    if (ext2fs_bmap2 (fs, ino, in, bb, 0, lblk, &flags, &phys)) {
      r = -EIO;
      break;
    }
    bool data = phys != 0 && !(flags & BMAP_RET_UNINIT);
    uint64_t n = 1;                       /* blocks in this run */
    while ((lblk + n) * bs < end) {
      blk64_t p2 = 0;
      int f2 = 0;
      if (ext2fs_bmap2 (fs, ino, in, bb, 0, lblk + n, &f2, &p2))
        break;                            /* the next round reports it */
      bool d2 = p2 != 0 && !(f2 & BMAP_RET_UNINIT);
      if (d2 != data || (data && p2 != phys + n))
        break;
      n++;
    }
    uint64_t run_end = (lblk + n) * bs < end ? (lblk + n) * bs : end;
    size_t chunk = run_end - pos;
    if (!data)
      memset (buf + (pos - off), 0, chunk);
    else {
      /* whole blocks into TMP, then the bytes wanted */
      uint64_t nb = (run_end - lblk * bs + bs - 1) / bs;
      if (io_channel_read_blk64 (fs->io, phys, (int) nb, tmp) != 0)
        r = -EIO;
      else
        memcpy (buf + (pos - off), tmp + (pos - lblk * bs), chunk);
    }
    pos = run_end;
    *done = pos - off;
  }
  free (bb);
  free (tmp);
  return r;
}
