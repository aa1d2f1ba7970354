/* qmprebase sync — copy new restore points from one store to another (see sync.h).
 *
 * The source is read through the store's read API: store_scan_vm finds the
 * layers, store_layer_open opens them (never through a link),
 * store_record_read gives the point records.  The destination is written
 * beneath descriptors opened without following links: every file goes to a
 * ".tmp-" name (0600, O_EXCL), is fsynced, and gets its final name by a
 * hard link (which never replaces a file) and an unlink of the temp;
 * folders are 0700 and fsynced after each new name. */
#include "sync.h"

#include "store/store.h"
#include "common/error.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The store's layout (store.h). */
#define SYNC_POINTS ".points"
#define SYNC_CHAIN ".chain"
#define SYNC_TMP ".tmp-"
#define SYNC_CHUNK (1024 * 1024)
#define SYNC_SMALL_MAX (16 * 1024 * 1024)   /* a .chain file larger than this is refused */

/* The command line. */
typedef struct sync_opts {
  const char *from;
  const char *to;
  const char *vm;
  bool dry_run;
} sync_opts;

/* What a run did. */
typedef struct sync_stats {
  size_t points;          /* points copied */
  size_t points_there;    /* points already at the destination */
  size_t layers;          /* layer files copied */
  size_t layers_there;    /* layer files already there, the same */
  uint64_t bytes;         /* bytes of layer data copied */
  size_t damaged;         /* points left out: damaged in the source */
} sync_stats;

/* Print the help of `qmprebase sync`. */
static void
sync_help (void)
{
  printf ("usage: qmprebase sync --from STORE --to STORE2 [--vm NAME] [--dry-run]\n"
          "\n"
          "Copy the restore points of STORE that STORE2 does not have yet, oldest first:\n"
          "each point's layer files (holes stay holes; read back and compared after\n"
          "writing), their .chain records, then the point's record last, so STORE2 only\n"
          "ever lists complete points.  Layers already in STORE2 with the same size and\n"
          "record are skipped; a layer there with other content is an error, never\n"
          "overwritten.  Holds each destination VM's lock.  Run it again after an\n"
          "interruption: it removes what the interrupted run left and carries on.\n"
          "STORE2 is created (0700) when missing; it can be mounted on its own.\n"
          "\n"
          "  --from STORE          the store to copy from (read only)\n"
          "  --to STORE2           the store to copy to (another volume, a plain folder)\n"
          "  --vm NAME             only this VM (default: every VM of STORE)\n"
          "  --dry-run             say what would be copied, change nothing\n"
          "  -h, --help            this help\n"
          "\n"
          "Exit codes: 0 ok, 1 failed, 2 usage error.\n");
}

/* A usage error: the message, the hint; returns exit code 2. */
static int
sync_usage (const char *msg, const char *arg)
{
  fprintf (stderr, "qmprebase sync: %s%s\n\nTry 'qmprebase sync --help'.\n", msg, arg ? arg : "");
  return 2;
}

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
static int
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
static int
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
static int
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
static int
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
static int
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

/* Compare two strings through pointers (qsort). */
static int
sync_str_cmp (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
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
static void
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
static int
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
static bool
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

/* True for a layer's path below its VM folder: 2 or 3 safe components ("disk/FILE",
 * "YYYY-MM/disk/FILE"). */
static bool
sync_rel_ok (const char *rel)
{
  char *copy = qb_strdup (rel), *save = NULL;
  size_t n = 0;
  bool ok = rel[0] != '/' && rel[strlen (rel) - 1] != '/' && !strstr (rel, "//");
  for (char *c = strtok_r (copy, "/", &save); c && ok; c = strtok_r (NULL, "/", &save)) {
    ok = qb_name_is_safe (c) && c[0] != '.';
    n++;
  }
  free (copy);
  return ok && (n == 2 || n == 3);
}

/* The ids of VM's point records in store folder ROOTFD (ROOT in messages),
 * sorted (commit order); *N of them.  NULL with *N = 0 when there are none;
 * sets the error and returns NULL with *N = (size_t) -1 on failure. */
static char **
sync_point_ids (int rootfd, const char *root, const char *vm, size_t *n)
{
  char *rel = qb_asprintf ("%s/" SYNC_POINTS, vm);
  char *where = qb_asprintf ("%s/%s", root, rel);
  *n = 0;
  int pfd = qb_openat_nofollow (rootfd, rel, O_RDONLY | O_DIRECTORY);
  if (pfd < 0) {
    if (errno != ENOENT) {
      qb_error_set_errno (errno, "open %s", where);
      *n = (size_t) -1;
    }
    free (rel);
    free (where);
    return NULL;
  }
  DIR *d = fdopendir (pfd);
  char **ids = NULL;
  size_t k = 0;
  struct dirent *de;
  while (d && (de = readdir (d)) != NULL) {
    size_t l = strlen (de->d_name);
    if (de->d_name[0] == '.' || l <= 5 || l > 60 || strcmp (de->d_name + l - 5, ".json") != 0)
      continue;
    char *id = qb_strdup (de->d_name);
    id[l - 5] = '\0';
    int64_t t;
    int seq;
    if (store_id_parse (id, &t, &seq) != 0 || !qb_name_is_safe (id)) {
      free (id);
      continue;
    }
    ids = qb_realloc (ids, (k + 1) * sizeof *ids);
    ids[k++] = id;
  }
  if (d)
    closedir (d);
  else
    close (pfd);
  qsort (ids, k, sizeof *ids, sync_str_cmp);
  *n = k;
  free (rel);
  free (where);
  return ids;
}

/* True when disk folder DFD holds a temp of a layer of point ID. */
static bool
sync_has_temp (int dfd, const char *id)
{
  static const char *const kinds[] = { "FULL", "INC", "COPY" };
  for (size_t k = 0; k < 3; k++) {
    char *t = qb_asprintf (SYNC_TMP "%s-%s", kinds[k], id);
    bool yes = faccessat (dfd, t, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
    free (t);
    if (yes)
      return true;
  }
  return false;
}

/* True when point ID of VM is being committed in the source store at
 * SRCFD right now: a temp of one of its layers is in a disk folder (a
 * backup names its layers after writing the record). */
static bool
sync_committing (int srcfd, const char *vm, const char *id)
{
  int vfd = qb_openat_nofollow (srcfd, vm, O_RDONLY | O_DIRECTORY);
  DIR *d = vfd >= 0 ? fdopendir (vfd) : NULL;
  if (!d && vfd >= 0)
    close (vfd);
  bool yes = false;
  struct dirent *de;
  while (d && !yes && (de = readdir (d)) != NULL) {
    if (de->d_name[0] == '.' || !qb_name_is_safe (de->d_name))
      continue;
    int dfd = openat (dirfd (d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
      continue;
    yes = sync_has_temp (dfd, id);
    if (!yes && store_is_month (de->d_name)) {
      DIR *m = fdopendir (dup (dfd));
      struct dirent *me;
      while (m && !yes && (me = readdir (m)) != NULL) {
        if (me->d_name[0] == '.' || !qb_name_is_safe (me->d_name))
          continue;
        int mfd = openat (dirfd (m), me->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (mfd >= 0) {
          yes = sync_has_temp (mfd, id);
          close (mfd);
        }
      }
      if (m)
        closedir (m);
    }
    close (dfd);
  }
  if (d)
    closedir (d);
  return yes;
}

/* The layers of point ID in scan V (one per disk that has one), *N of
 * them: a malloc'd array of pointers into V. */
static const store_layer **
sync_point_layers (const store_vm *v, const char *id, size_t *n)
{
  const store_layer **out = NULL;
  size_t k = 0;
  for (size_t d = 0; d < v->ndisks; d++)
    for (size_t c = 0; c < v->disks[d].nchains; c++)
      for (size_t l = 0; l < v->disks[d].chains[c].n; l++)
        if (strcmp (v->disks[d].chains[c].layers[l].id, id) == 0) {
          out = qb_realloc (out, (k + 1) * sizeof *out);
          out[k++] = &v->disks[d].chains[c].layers[l];
        }
  *n = k;
  return out;
}

/* Copy the record of point ID of VM (.points/ID.json, its bytes as they
 * are) from SRCFD to DSTFD (DROOT in messages), through a temp.  0 or -1. */
static int
sync_record (int srcfd, const char *sroot, int dstfd, const char *droot, const char *vm,
             const char *id)
{
  char *rel = qb_asprintf ("%s/" SYNC_POINTS, vm);
  char *sw = qb_asprintf ("%s/%s", sroot, rel), *dw = qb_asprintf ("%s/%s", droot, rel);
  char *name = qb_asprintf ("%s.json", id);
  char *sp = qb_asprintf ("%s/%s", sw, name), *dp = qb_asprintf ("%s/%s", dw, name);
  char *data = NULL;
  size_t len = 0;
  int ret = -1;
  int sfd = sync_dir_open (srcfd, rel, false, sw);
  int dfd = sfd < 0 ? -1 : sync_dir_open (dstfd, rel, true, dw);
  int r = dfd < 0 ? -1 : sync_small_read (sfd, name, &data, &len, sp);
  if (r == 0)
    qb_error_set (QB_ENOENT, "%s is gone (the point was removed in the source meanwhile)", sp);
  else if (r == 1)
    ret = sync_small_write (dfd, name, data, len, dp);
  if (sfd >= 0)
    close (sfd);
  if (dfd >= 0)
    close (dfd);
  free (data);
  free (rel);
  free (sw);
  free (dw);
  free (name);
  free (sp);
  free (dp);
  return ret;
}

/* Copy (or with DRY_RUN, describe) point ID of VM: every disk's layer and
 * .chain files, then the record.  The destination store's root DROOT is open
 * at DSTFD (-1 in a dry run into a store that does not exist yet).  The
 * point's layers are those of the scan V with its id.  0; 1 when the point
 * is still being committed in the source (stop here, no error); 2 when it
 * is not copied (damaged in the source: warned, go on); or -1. */
static int
sync_point (store *src, int srcfd, const char *droot, int dstfd, const store_vm *v,
            const char *id, bool dry_run, sync_stats *stats)
{
  const char *vm = v->name;
  int ret = 0;
  size_t copied = 0, nl = 0;
  uint64_t bytes0 = stats->bytes;
  char *prefix = qb_asprintf ("%s/%s/", store_root (src), vm);
  const store_layer **ls = sync_point_layers (v, id, &nl);
  /* Decide before copying anything: the point is copied whole or not at all. */
  if (sync_committing (srcfd, vm, id)) {
    printf ("%s: point %s is still being committed in the source: it is copied next time\n",
            vm, id);
    ret = 1;
  }
  else if (nl == 0) {
    fprintf (stderr, "qmprebase sync: warning: %s: point %s has a record but no layer in the "
             "source: not copied\n", vm, id);
    ret = 2;
  }
  for (size_t i = 0; i < nl && ret == 0; i++) {
    const store_layer *L = ls[i];
    if (L->busy)
      ret = qb_error_set (QB_EBUSY, "a removal of restore points is under way or was "
                          "interrupted in the source (%s%s): copied up to the point before "
                          "%s; the next backup, mount or qmprebase run on the source finishes "
                          "it, then run sync again", prefix, ".rewrite.json", id);
    else if (L->damage) {
      fprintf (stderr, "qmprebase sync: warning: %s: point %s is damaged in the source (%s): "
               "not copied\n", vm, id, L->damage);
      stats->damaged++;
      ret = 2;
    }
    else if (strncmp (L->path, prefix, strlen (prefix)) != 0
             || !sync_rel_ok (L->path + strlen (prefix)))
      ret = qb_error_set (QB_EDAMAGED, "%s: an unexpected layer path", L->path);
  }
  for (size_t i = 0; i < nl && ret == 0; i++) {
    const store_layer *L = ls[i];
    const char *rel = L->path + strlen (prefix);
    char *dirrel = qb_strdup (rel);
    *strrchr (dirrel, '/') = '\0';
    const char *name = strrchr (rel, '/') + 1;
    char *svm = qb_asprintf ("%s/%s", vm, dirrel);
    char *sdir = qb_asprintf ("%s/%s", store_root (src), svm);
    char *ddir = qb_asprintf ("%s/%s", droot, svm);
    char *dpath = qb_asprintf ("%s/%s", ddir, name);
    int sdfd = sync_dir_open (srcfd, svm, false, sdir);
    int ddfd = dstfd < 0 ? -1 : sync_dir_open (dstfd, svm, !dry_run, ddir);
    int sfd = sdfd < 0 ? -1 : store_layer_open (src, L);
    if (sdfd < 0 || sfd < 0)
      ret = -1;
    if (dry_run && ddfd < 0)
      qb_error_clear ();
    else if (ddfd < 0)
      ret = -1;
    struct stat ss, ds;
    int dfd = ret == 0 && ddfd >= 0 ? openat (ddfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
    if (ret == 0 && dfd < 0 && ddfd >= 0 && errno != ENOENT)
      ret = qb_error_set_errno (errno, "open %s%s", dpath,
                                errno == ELOOP ? " (a symbolic link is never followed)" : "");
    if (ret == 0 && fstat (sfd, &ss) == -1)
      ret = qb_error_set_errno (errno, "stat %s", L->path);
    if (ret == 0 && dfd >= 0) {
      /* Already there: the same size and the same record, or the same bytes. */
      bool dst_rec = false;
      if (fstat (dfd, &ds) == -1)
        ret = qb_error_set_errno (errno, "stat %s", dpath);
      else if (!S_ISREG (ds.st_mode))
        ret = qb_error_set (QB_EDAMAGED, "%s is not a regular file: not overwritten", dpath);
      else if (ds.st_size != ss.st_size)
        ret = qb_error_set (QB_EDAMAGED, "%s (%lld bytes) differs from %s (%lld bytes): not "
                            "overwritten (move the destination's file away if it is wrong)",
                            dpath, (long long) ds.st_size, L->path, (long long) ss.st_size);
      else if (!sync_same_record (sdfd, ddfd, name, &dst_rec)) {
        int same = dst_rec ? 0 : sync_same_content (sfd, L->path, dfd, dpath, (uint64_t) ss.st_size);
        if (same == 0)
          ret = qb_error_set (QB_EDAMAGED, "%s differs from %s (%s): not overwritten (move "
                              "the destination's file away if it is wrong)", dpath, L->path,
                              dst_rec ? "their .chain records differ" : "other bytes");
        else if (same < 0)
          ret = -1;
      }
      if (ret == 0) {
        stats->layers_there++;
        if (dry_run)
          printf ("%s: point %s: %s is already there\n", vm, id, dpath);
      }
    }
    else if (ret == 0 && dry_run) {
      printf ("%s: point %s: would copy %s (%lld bytes)\n", vm, id, L->path, (long long) ss.st_size);
      stats->bytes += (uint64_t) ss.st_blocks * 512 < (uint64_t) ss.st_size
                      ? (uint64_t) ss.st_blocks * 512 : (uint64_t) ss.st_size;
    }
    else if (ret == 0) {
      ret = sync_copy_layer (sfd, L->path, ddfd, name, ddir, &stats->bytes);
      if (ret == 0) {
        stats->layers++;
        copied++;
      }
    }
    if (ret == 0 && (!dry_run || ddfd >= 0))
      ret = sync_chain_files (sdfd, sdir, ddfd, ddir, name, dry_run || ddfd < 0);
    if (dfd >= 0)
      close (dfd);
    if (sfd >= 0)
      close (sfd);
    if (sdfd >= 0)
      close (sdfd);
    if (ddfd >= 0)
      close (ddfd);
    free (dirrel);
    free (svm);
    free (sdir);
    free (ddir);
    free (dpath);
  }
  /* The record last: the commit point of the copy. */
  if (ret == 0 && !dry_run)
    ret = sync_record (srcfd, store_root (src), dstfd, droot, vm, id);
  if (ret == 0) {
    stats->points++;
    if (!dry_run) {
      char b[32];
      qb_format_bytes (stats->bytes - bytes0, b, sizeof b);
      printf ("%s: point %s copied (%zu layer%s, %s)\n", vm, id, copied, copied == 1 ? "" : "s", b);
    }
  }
  free (ls);
  free (prefix);
  return ret;
}

/* True when destination DSTFD has the record of point ID of VM. */
static bool
sync_has_point (int dstfd, const char *vm, const char *id)
{
  char *rel = qb_asprintf ("%s/" SYNC_POINTS "/%s.json", vm, id);
  int fd = qb_openat_nofollow (dstfd, rel, O_RDONLY);
  free (rel);
  if (fd >= 0)
    close (fd);
  return fd >= 0;
}

/* Sync VM: lock the destination VM, clean what an interrupted run left,
 * copy every point the destination lacks in commit order.  0 or -1. */
static int
sync_vm (store *src, int srcfd, store *dst, const char *droot, int dstfd, const char *vm,
         bool dry_run, sync_stats *stats)
{
  /* The records first, then the scan: every layer of a listed point is
   * committed (or being named) by the time the scan looks. */
  size_t n;
  char **ids = sync_point_ids (srcfd, store_root (src), vm, &n);
  if (n == (size_t) -1)
    return -1;
  store_vm *v = store_scan_vm (src, vm);
  if (!v) {
    sync_strv_free (ids, n);
    return -1;
  }
  for (size_t i = 0; i < v->nskipped; i++)
    fprintf (stderr, "qmprebase sync: warning: %s\n", v->skipped[i]);
  store_lock *lk = NULL;
  if (!dry_run) {
    lk = store_lock_vm (dst, vm, 0);
    if (!lk || store_recover (dst, vm) < 0) {
      store_unlock (lk);
      store_vm_free (v);
      sync_strv_free (ids, n);
      return -1;
    }
  }
  int ret = 0;
  for (size_t i = 0; i < n && ret == 0; i++) {
    if (dstfd >= 0 && sync_has_point (dstfd, vm, ids[i])) {
      stats->points_there++;
      continue;
    }
    ret = sync_point (src, srcfd, droot, dstfd, v, ids[i], dry_run, stats);
    if (ret == 2)
      ret = 0;                   /* damaged in the source: warned, the next point */
  }
  if (ret == 1)
    ret = 0;
  store_unlock (lk);
  store_vm_free (v);
  sync_strv_free (ids, n);
  return ret;
}

/* Open the store folder PATH as a directory, never through a link at its end. */
static int
sync_root_open (const char *path)
{
  int fd = open (path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    qb_error_set_errno (errno, "open store %s", path);
  return fd;
}

/* Run the sync of O; the exit code. */
static int
sync_run (const sync_opts *o)
{
  int64_t t0 = qb_now_us ();
  store *src = store_open (o->from, false);
  if (!src) {
    fprintf (stderr, "qmprebase sync: %s\n", qb_error_msg ());
    return 1;
  }
  store *dst = NULL;
  if (o->dry_run) {
    struct stat sb;
    if (stat (o->to, &sb) == 0)
      dst = store_open (o->to, false);
  }
  else
    dst = store_open (o->to, true);
  if (!dst && !o->dry_run) {
    fprintf (stderr, "qmprebase sync: %s\n", qb_error_msg ());
    store_close (src);
    return 1;
  }
  int srcfd = sync_root_open (store_root (src));
  int dstfd = dst ? sync_root_open (store_root (dst)) : -1;
  char **vms = NULL;
  size_t nvms = 0;
  int rc = 0;
  if (srcfd < 0 || (dst && dstfd < 0))
    rc = 1;
  else if (o->vm) {
    vms = qb_calloc (1, sizeof *vms);
    vms[0] = qb_strdup (o->vm);
    nvms = 1;
  }
  else if (store_list_vms (src, &vms, &nvms) == -1)
    rc = 1;
  if (rc)
    fprintf (stderr, "qmprebase sync: %s\n", qb_error_msg ());
  sync_stats st = { 0 };
  for (size_t i = 0; i < nvms; i++) {
    int r = sync_vm (src, srcfd, dst, dst ? store_root (dst) : o->to, dstfd, vms[i], o->dry_run,
                     &st);
    if (r < 0) {
      fprintf (stderr, "qmprebase sync: %s: %s\n", vms[i], qb_error_msg ());
      rc = 1;
    }
  }
  double secs = (qb_now_us () - t0) / 1e6;
  char b[32];
  qb_format_bytes (st.bytes, b, sizeof b);
  if (o->dry_run)
    printf ("sync (dry run): %zu point%s to copy (%s), %zu already there\n",
            st.points, st.points == 1 ? "" : "s", b, st.points_there);
  else
    printf ("sync: %zu point%s copied (%zu layer%s, %s) in %.1f s (%.0f MB/s), %zu already there,"
            " %zu layer%s already there\n",
            st.points, st.points == 1 ? "" : "s", st.layers, st.layers == 1 ? "" : "s", b, secs,
            secs > 0 ? st.bytes / 1e6 / secs : 0.0, st.points_there, st.layers_there,
            st.layers_there == 1 ? "" : "s");
  if (st.damaged) {
    fprintf (stderr, "qmprebase sync: %zu point%s damaged in the source %s not copied "
             "(see the warnings; qmprebase list --dir shows why)\n", st.damaged,
             st.damaged == 1 ? "" : "s", st.damaged == 1 ? "was" : "were");
    rc = 1;
  }
  sync_strv_free (vms, nvms);
  if (srcfd >= 0)
    close (srcfd);
  if (dstfd >= 0)
    close (dstfd);
  store_close (src);
  store_close (dst);
  return rc;
}

/* Entry point of `qmprebase sync` (see sync.h). */
int
sync_main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "from", required_argument, NULL, 'f' },
    { "to", required_argument, NULL, 't' },
    { "vm", required_argument, NULL, 'v' },
    { "dry-run", no_argument, NULL, 'n' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  sync_opts o = { 0 };
  int c;
  opterr = 0;
  optind = 1;
  while ((c = getopt_long (argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
    case 'f': o.from = optarg; break;
    case 't': o.to = optarg; break;
    case 'v': o.vm = optarg; break;
    case 'n': o.dry_run = true; break;
    case 'h': sync_help (); return 0;
    case ':': return sync_usage ("option needs a value: ", argv[optind - 1]);
    default: return sync_usage ("unknown option ", argv[optind - 1]);
    }
  }
  if (optind < argc)
    return sync_usage ("unexpected argument ", argv[optind]);
  if (!o.from || !o.to)
    return sync_usage ("sync needs --from STORE and --to STORE2", NULL);
  if (o.vm && !qb_name_is_safe (o.vm))
    return sync_usage ("not a VM name: ", o.vm);
  char *a = realpath (o.from, NULL), *b = realpath (o.to, NULL);
  bool same = a && b && strcmp (a, b) == 0;
  free (a);
  free (b);
  if (same)
    return sync_usage ("--from and --to are the same store", NULL);
  return sync_run (&o);
}
