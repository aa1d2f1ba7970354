/* Fuzz target: NTFS volumes read by libntfs-3g through fs/files-ntfs.c.
 *
 * Input: a damaged NTFS partition (the seeds are small mkntfs volumes with
 * files, links and streams); reads past its end fail, as a short chain read
 * would.  The volume is mounted, the root and up to 64 of its entries (one
 * level deeper for folders) are listed, stat'ed, read (first 64 KiB),
 * readlink'd and their xattrs listed and read.  Invariants: nothing crashes,
 * every read of the device stays inside the input and is at most 1 MiB,
 * the device is never written, listings and link targets stay bounded.  A
 * hang is caught by run.sh's per-input time limit (-timeout). */
#include "fuzz.h"
#include "fs/files-ntfs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct disk {
  const uint8_t *data;
  size_t size;
} disk;

/* Read callback over the input. */
static int
rd (void *opaque, void *buf, size_t len, uint64_t off)
{
  disk *d = opaque;
  FUZZ_CHECK (len > 0 && len <= (1u << 20), "read of %zu bytes", len);
  if (off > d->size || len > d->size - off)
    return -1;
  memcpy (buf, d->data + off, len);
  return 0;
}

typedef struct ents {
  uint32_t ino[64];
  mode_t type[64];
  int n;
} ents;

/* Keep up to 64 entries of a listing. */
static int
keep (void *priv, const char *name, uint32_t ino, mode_t type)
{
  ents *e = priv;
  FUZZ_CHECK (*name && !strchr (name, '/'), "bad name '%s'", name);
  if (e->n < 64) {
    e->ino[e->n] = ino;
    e->type[e->n++] = type;
  }
  return 0;
}

/* Stat, read, readlink and the xattrs of INO; folders listed when DEPTH > 0. */
static void
visit (files_ntfs *v, uint32_t ino, int depth)
{
  struct stat st;
  if (files_ntfs_stat (v, ino, &st) < 0)
    return;
  if (S_ISDIR (st.st_mode)) {
    ents e = { .n = 0 };
    if (depth > 0 && files_ntfs_readdir (v, ino, keep, &e) == 0)
      for (int i = 0; i < e.n; i++)
        visit (v, e.ino[i], depth - 1);
    return;
  }
  char *t = NULL;
  if (S_ISLNK (st.st_mode) && files_ntfs_readlink (v, ino, &t) == 0) {
    FUZZ_CHECK (strlen (t) < 4096, "link of %zu bytes", strlen (t));
    free (t);
  }
  files_ntfs_file *f;
  if (S_ISREG (st.st_mode) && files_ntfs_file_open (v, ino, &f) == 0) {
    static char buf[65536];
    ssize_t n = files_ntfs_file_pread (f, buf, sizeof buf, 0);
    FUZZ_CHECK (n <= (ssize_t) sizeof buf, "read %zd", n);
    files_ntfs_file_close (f);
  }
  char *list = NULL;
  size_t len = 0;
  if (files_ntfs_listxattr (v, ino, &list, &len) == 0 && len) {
    FUZZ_CHECK (len <= FILES_NTFS_XATTR_MAX, "xattr list of %zu", len);
    char *val = NULL;
    size_t vlen = 0;
    if (files_ntfs_getxattr (v, ino, list, &val, &vlen) == 0)
      free (val);
  }
  free (list);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  disk d = { data, size };
  char *why = NULL;
  files_ntfs *v = files_ntfs_open (rd, &d, 0, size, &why);
  if (!v) {
    FUZZ_CHECK (why != NULL, "no reason");
    free (why);
    return 0;
  }
  visit (v, FILES_NTFS_ROOT, 2);
  files_ntfs_close (v);
  return 0;
}
