/* qmprebase sync — file operations (see sync-int.h): every file goes to a
 * ".tmp-" name (0600, O_EXCL), is fsynced, and gets its final name by a
 * hard link (which never replaces a file) and an unlink of the temp;
 * folders are opened one component at a time without following links. */
#include "sync-int.h"

#include "common/error.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Fold N bytes at P into the running 64-bit hash H (FNV-1a over 8-byte words). */
static uint64_t
sync_hash (uint64_t h, const unsigned char *p, size_t n)
{
  const uint64_t prime = 0x100000001b3ULL;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy (&w, p + i, 8);
    h = (h ^ w) * prime;
  }
  for (; i < n; i++)
    h = (h ^ p[i]) * prime;
  return h;
}

/* Read exactly N bytes at OFF of FD into BUF: 0, or -1 with errno (EIO at a short file). */
static int
sync_pread_full (int fd, void *buf, size_t n, off_t off)
{
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread (fd, (char *) buf + done, n - done, off + (off_t) done);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -1;
    if (r == 0) {
      errno = EIO;
      return -1;
    }
    done += (size_t) r;
  }
  return 0;
}

/* Write exactly N bytes of BUF at OFF of FD: 0, or -1 with errno. */
static int
sync_pwrite_full (int fd, const void *buf, size_t n, off_t off)
{
  size_t done = 0;
  while (done < n) {
    ssize_t r = pwrite (fd, (const char *) buf + done, n - done, off + (off_t) done);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -1;
    done += (size_t) r;
  }
  return 0;
}

/* Open (with CREATE: make, 0700) folder REL beneath BASE, one component at a
 * time, never through a link.  The descriptor, or -1 with the error set
 * (WHERE names the folder in messages). */
int
sync_dir_open (int base, const char *rel, bool create, const char *where)
{
  char *copy = qb_strdup (rel), *save = NULL;
  int fd = dup (base);
  for (char *c = strtok_r (copy, "/", &save); c && fd >= 0; c = strtok_r (NULL, "/", &save)) {
    if (create && mkdirat (fd, c, 0700) == 0)
      fsync (fd);
    int nfd = openat (fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close (fd);
    fd = nfd;
    errno = e;
  }
  free (copy);
  if (fd < 0)
    qb_error_set_errno (errno, "open folder %s%s", where,
                        errno == ELOOP || errno == ENOTDIR ? " (a symbolic link is never followed)" : "");
  return fd;
}

/* Give temp TMP in folder DFD its final name NAME without ever replacing a
 * file (hard link, then unlink the temp), and fsync the folder.  0 or -1. */
static int
sync_publish (int dfd, const char *tmp, const char *name, const char *where)
{
  if (linkat (dfd, tmp, dfd, name, 0) == -1)
    return qb_error_set_errno (errno, "name %s", where);
  if (unlinkat (dfd, tmp, 0) == -1)
    return qb_error_set_errno (errno, "remove the temp of %s", where);
  if (fsync (dfd) == -1)
    return qb_error_set_errno (errno, "fsync the folder of %s", where);
  return 0;
}

/* Compare the whole contents of descriptors A and B (same size known): 1 if
 * equal, 0 if not, -1 on a read error (set, naming AN or BN). */
int
sync_same_content (int a, const char *an, int b, const char *bn, uint64_t size)
{
  unsigned char *x = malloc (SYNC_CHUNK), *y = malloc (SYNC_CHUNK);
  if (!x || !y) {
    free (x);
    free (y);
    return qb_error_set (QB_ENOMEM, "out of memory comparing %s", an);
  }
  int ret = 1;
  for (uint64_t off = 0; off < size && ret == 1; off += SYNC_CHUNK) {
    size_t n = size - off < SYNC_CHUNK ? (size_t) (size - off) : SYNC_CHUNK;
    if (sync_pread_full (a, x, n, (off_t) off) == -1)
      ret = qb_error_set_errno (errno, "read %s", an);
    else if (sync_pread_full (b, y, n, (off_t) off) == -1)
      ret = qb_error_set_errno (errno, "read %s", bn);
    else if (memcmp (x, y, n) != 0)
      ret = 0;
  }
  free (x);
  free (y);
  return ret;
}

/* One data extent of a layer file. */
typedef struct sync_extent {
  uint64_t off, len;
} sync_extent;

/* Hash the extents EXT[0..N) of FD (offsets mixed in) into *H: 0, or -1 with errno. */
static int
sync_hash_extents (int fd, const sync_extent *ext, size_t n, unsigned char *buf, uint64_t *h)
{
  uint64_t hv = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) {
    hv = sync_hash (hv, (const unsigned char *) &ext[i].off, sizeof ext[i].off);
    for (uint64_t o = 0; o < ext[i].len; o += SYNC_CHUNK) {
      size_t k = ext[i].len - o < SYNC_CHUNK ? (size_t) (ext[i].len - o) : SYNC_CHUNK;
      if (sync_pread_full (fd, buf, k, (off_t) (ext[i].off + o)) == -1)
        return -1;
      hv = sync_hash (hv, buf, k);
    }
  }
  *h = hv;
  return 0;
}

/* Copy N bytes at OFF from SFD to the same offset of OUT in the kernel
 * (copy_file_range: a reflink or a server-side copy where the file systems
 * offer one) while *USE is set.  True when all N bytes were copied; false
 * when the caller must write them itself (then *USE is cleared for the rest
 * of the file when the kernel cannot do it for these two files). */
static bool
sync_copy_range (int sfd, int out, off_t off, size_t n, bool *use)
{
  if (!*use)
    return false;
  loff_t si = off, di = off;
  size_t done = 0;
  while (done < n) {
    ssize_t r = copy_file_range (sfd, &si, out, &di, n - done, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      *use = false;     /* EXDEV, EOPNOTSUPP, ...: read and write from here on */
      return false;     /* the caller rewrites the whole chunk */
    }
    done += (size_t) r;
  }
  return true;
}

/* Copy the layer open at SFD (SNAME in messages) to NAME in destination
 * folder DFD (DNAME in messages): data extents only (SEEK_DATA/SEEK_HOLE),
 * into the temp (copy_file_range where the kernel can, else the bytes read),
 * fsync, read back and compare with the hash of what was read from the
 * source, then publish.  Adds the bytes copied to *BYTES.  0 or -1. */
int
sync_copy_layer (int sfd, const char *sname, int dfd, const char *name, const char *dname,
                 uint64_t *bytes)
{
  struct stat before, after;
  if (fstat (sfd, &before) == -1)
    return qb_error_set_errno (errno, "stat %s", sname);
  uint64_t size = (uint64_t) before.st_size;
  char *tmp = qb_asprintf (SYNC_TMP "%s", name);
  unlinkat (dfd, tmp, 0);        /* a temp an interrupted run left (we hold the lock) */
  int out = openat (dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  unsigned char *buf = malloc (SYNC_CHUNK);
  sync_extent *ext = NULL;
  size_t next = 0, cap = 0;
  uint64_t h = 0xcbf29ce484222325ULL, copied = 0;
  int ret = -1, in = -1;
  bool use_cfr = true;
  if (out < 0) {
    qb_error_set_errno (errno, "create %s/%s", dname, tmp);
    goto done;
  }
  if (!buf) {
    qb_error_set (QB_ENOMEM, "out of memory copying %s", sname);
    goto done;
  }
  for (uint64_t off = 0; off < size;) {
    off_t d = lseek (sfd, (off_t) off, SEEK_DATA);
    if (d < 0 && errno == ENXIO)
      break;                     /* only a hole is left */
    off_t e = d < 0 ? (off_t) size : lseek (sfd, d, SEEK_HOLE);
    if (d < 0)
      d = (off_t) off;           /* no SEEK_DATA here: all of it is data */
    if (e < 0 || (uint64_t) e > size)
      e = (off_t) size;
    if (e <= d)
      break;
    if (next == cap) {
      cap = cap ? cap * 2 : 64;
      ext = qb_realloc (ext, cap * sizeof *ext);
    }
    ext[next++] = (sync_extent) { (uint64_t) d, (uint64_t) (e - d) };
    h = sync_hash (h, (const unsigned char *) &ext[next - 1].off, sizeof ext[next - 1].off);
    for (off_t o = d; o < e; o += SYNC_CHUNK) {
      size_t k = e - o < SYNC_CHUNK ? (size_t) (e - o) : SYNC_CHUNK;
      if (sync_pread_full (sfd, buf, k, o) == -1) {
        qb_error_set_errno (errno, "read %s", sname);
        goto done;
      }
      h = sync_hash (h, buf, k);
      if (!sync_copy_range (sfd, out, o, k, &use_cfr)
          && sync_pwrite_full (out, buf, k, o) == -1) {
        qb_error_set_errno (errno, "write %s/%s", dname, tmp);
        goto done;
      }
      copied += k;
    }
    off = (uint64_t) e;
  }
  if (ftruncate (out, (off_t) size) == -1 || fsync (out) == -1) {
    qb_error_set_errno (errno, "write %s/%s", dname, tmp);
    goto done;
  }
  if (fstat (sfd, &after) == -1 || after.st_size != before.st_size
      || after.st_mtim.tv_sec != before.st_mtim.tv_sec
      || after.st_mtim.tv_nsec != before.st_mtim.tv_nsec) {
    qb_error_set (QB_EIO, "%s changed while it was copied (is another program rewriting "
                  "the source chain?): run the sync again", sname);
    goto done;
  }
  /* Read back what was written, from the file system rather than from our cache. */
  posix_fadvise (out, 0, 0, POSIX_FADV_DONTNEED);
  in = openat (dfd, tmp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  struct stat ws;
  uint64_t back = 0;
  if (in < 0 || fstat (in, &ws) == -1 || sync_hash_extents (in, ext, next, buf, &back) == -1) {
    qb_error_set_errno (errno, "read back %s/%s", dname, tmp);
    goto done;
  }
  if ((uint64_t) ws.st_size != size || back != h) {
    qb_error_set (QB_EIO, "%s/%s reads back differently from %s: the destination does "
                  "not keep what is written; nothing was published", dname, tmp, sname);
    goto done;
  }
  close (out);
  out = -1;
  char *where = qb_asprintf ("%s/%s", dname, name);
  ret = sync_publish (dfd, tmp, name, where);
  free (where);
  if (ret == 0)
    *bytes += copied;
 done:
  if (ret != 0 && out >= 0)
    unlinkat (dfd, tmp, 0);
  if (out >= 0)
    close (out);
  if (in >= 0)
    close (in);
  free (ext);
  free (buf);
  free (tmp);
  return ret;
}

/* Read the small regular file NAME of folder DFD (never a link) into *DATA
 * (malloc'd) and *LEN: 1, 0 when it does not exist, -1 on error (WHERE names it). */
int
sync_small_read (int dfd, const char *name, char **data, size_t *len, const char *where)
{
  int fd = openat (dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT)
    return 0;
  struct stat sb;
  if (fd < 0 || fstat (fd, &sb) == -1) {
    int e = errno;
    if (fd >= 0)
      close (fd);
    return qb_error_set_errno (e, "read %s%s", where,
                               e == ELOOP ? " (a symbolic link is never followed)" : "");
  }
  if (!S_ISREG (sb.st_mode) || sb.st_size > SYNC_SMALL_MAX) {
    close (fd);
    return qb_error_set (QB_EDAMAGED, "%s is not a regular file of at most %d MiB: not copied",
                         where, SYNC_SMALL_MAX >> 20);
  }
  char *d = qb_calloc (1, (size_t) sb.st_size + 1);
  if (sync_pread_full (fd, d, (size_t) sb.st_size, 0) == -1) {
    int e = errno;
    close (fd);
    free (d);
    return qb_error_set_errno (e, "read %s", where);
  }
  close (fd);
  *data = d;
  *len = (size_t) sb.st_size;
  return 1;
}

/* Write DATA (LEN bytes) as NAME in folder DFD through a temp (0600, fsync,
 * publish).  0 or -1 (WHERE names it). */
int
sync_small_write (int dfd, const char *name, const char *data, size_t len, const char *where)
{
  char *tmp = qb_asprintf (SYNC_TMP "%s", name);
  unlinkat (dfd, tmp, 0);
  int fd = openat (dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  int ret = -1;
  if (fd < 0)
    qb_error_set_errno (errno, "create the temp of %s", where);
  else if (sync_pwrite_full (fd, data, len, 0) == -1 || fsync (fd) == -1) {
    qb_error_set_errno (errno, "write %s", where);
    unlinkat (dfd, tmp, 0);
  }
  else
    ret = 0;
  if (fd >= 0)
    close (fd);
  if (ret == 0)
    ret = sync_publish (dfd, tmp, name, where);
  free (tmp);
  return ret;
}

/* Compare a sort key: ".json" records last, the rest by name (qsort). */
static int
sync_chain_cmp (const void *a, const void *b)
{
  const char *x = *(char *const *) a, *y = *(char *const *) b;
  size_t lx = strlen (x), ly = strlen (y);
  bool jx = lx > 5 && strcmp (x + lx - 5, ".json") == 0;
  bool jy = ly > 5 && strcmp (y + ly - 5, ".json") == 0;
  if (jx != jy)
    return jx ? 1 : -1;
  return strcmp (x, y);
}

/* The names in folder SCFD that belong to layer LAYER ("LAYER.json",
 * "LAYER.<anything>"), records last; *N of them (malloc'd array). */
static char **
sync_chain_names (int scfd, const char *layer, size_t *n)
{
  char **names = NULL;
  size_t k = 0;
  int dfd = dup (scfd);
  DIR *d = dfd >= 0 ? fdopendir (dfd) : NULL;
  if (!d && dfd >= 0)
    close (dfd);
  struct dirent *de;
  size_t ll = strlen (layer);
  while (d && (de = readdir (d)) != NULL)
    if (strncmp (de->d_name, layer, ll) == 0 && de->d_name[ll] == '.' && de->d_name[ll + 1]
        && qb_name_is_safe (de->d_name)) {
      names = qb_realloc (names, (k + 1) * sizeof *names);
      names[k++] = qb_strdup (de->d_name);
    }
  if (d)
    closedir (d);
  if (k)
    qsort (names, k, sizeof *names, sync_chain_cmp);
  *n = k;
  return names;
}

/* Free an array of N strings. */
void
sync_strv_free (char **v, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free (v[i]);
  free (v);
}

/* Copy layer LAYER's .chain files from source disk folder SDFD to
 * destination disk folder DDFD (paths SDIR/DDIR in messages): each one
 * missing is written, one present with the same bytes is kept, one with other
 * bytes is an error.  With DRY_RUN only compares.  0 or -1. */
int
sync_chain_files (int sdfd, const char *sdir, int ddfd, const char *ddir, const char *layer,
                  bool dry_run)
{
  char *sw = qb_asprintf ("%s/" SYNC_CHAIN, sdir), *dw = qb_asprintf ("%s/" SYNC_CHAIN, ddir);
  int scfd = sync_dir_open (sdfd, SYNC_CHAIN, false, sw);
  int ret = 0;
  if (scfd < 0) {
    /* a layer without records (the disk folder has no .chain): nothing to copy */
    ret = qb_error_code () == QB_ENOENT ? (qb_error_clear (), 0) : -1;
    free (sw);
    free (dw);
    return ret;
  }
  int dcfd = dry_run ? -1 : sync_dir_open (ddfd, SYNC_CHAIN, true, dw);
  if (!dry_run && dcfd < 0)
    ret = -1;
  size_t n = 0;
  char **names = ret == 0 ? sync_chain_names (scfd, layer, &n) : NULL;
  for (size_t i = 0; i < n && ret == 0; i++) {
    char *sp = qb_asprintf ("%s/%s", sw, names[i]), *dp = qb_asprintf ("%s/%s", dw, names[i]);
    char *sd = NULL, *dd = NULL;
    size_t sl = 0, dl = 0;
    int have = sync_small_read (scfd, names[i], &sd, &sl, sp);
    int there = have <= 0 || dry_run ? 0 : sync_small_read (dcfd, names[i], &dd, &dl, dp);
    if (have < 0 || there < 0)
      ret = -1;
    else if (have == 0)
      ;                          /* gone meanwhile */
    else if (there == 1 && (sl != dl || memcmp (sd, dd, sl) != 0))
      ret = qb_error_set (QB_EDAMAGED, "%s differs from %s: not overwritten (remove or move "
                          "the destination's copy if it is wrong)", dp, sp);
    else if (there == 0 && !dry_run)
      ret = sync_small_write (dcfd, names[i], sd, sl, dp);
    free (sd);
    free (dd);
    free (sp);
    free (dp);
  }
  sync_strv_free (names, n);
  if (dcfd >= 0)
    close (dcfd);
  close (scfd);
  free (sw);
  free (dw);
  return ret;
}

/* True when the per-layer records of LAYER in the two disk folders hold the
 * same bytes; *DST_HAS tells whether the destination has one. */
bool
sync_same_record (int sdfd, int ddfd, const char *layer, bool *dst_has)
{
  char *name = qb_asprintf (SYNC_CHAIN "/%s.json", layer);
  char *a = NULL, *b = NULL;
  size_t al = 0, bl = 0;
  int ha = -1, hb = -1;
  int sc = openat (sdfd, SYNC_CHAIN, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  int dc = openat (ddfd, SYNC_CHAIN, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  char *rec = qb_asprintf ("%s.json", layer);
  if (sc >= 0)
    ha = sync_small_read (sc, rec, &a, &al, name);
  if (dc >= 0)
    hb = sync_small_read (dc, rec, &b, &bl, name);
  qb_error_clear ();
  *dst_has = hb == 1;
  bool same = ha == 1 && hb == 1 && al == bl && memcmp (a, b, al) == 0;
  if (sc >= 0)
    close (sc);
  if (dc >= 0)
    close (dc);
  free (a);
  free (b);
  free (rec);
  free (name);
  return same;
}
