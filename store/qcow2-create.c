/* qmpbackupfs — writing an empty qcow2 v3 image (docs/interop/qcow2.txt)
 * byte for byte as QEMU's qcow2 driver creates it (blockdev-create, or
 * `qemu-img create -f qcow2 -o compat=1.1`), so a backup target costs no
 * job in QEMU.  Layout of such an image with 64 KiB clusters:
 *
 *   cluster 0   header (112 bytes), header extensions (backing format,
 *               feature name table, end), backing file name
 *   cluster 1   refcount table: one entry, the refcount block
 *   cluster 2   refcount block: 16-bit refcount 1 for clusters 0 .. 2 and
 *               for every cluster of the L1 table
 *   cluster 3   L1 table, all zero: ceil(size / 512 MiB) entries; the file
 *               ends right after its last entry
 *
 * Every byte is written (no holes), as QEMU does, so a full store fails
 * here and not in the middle of the backup job. */
#include "store/qcow2.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QC_CLUSTER_BITS   16
#define QC_CLUSTER        (UINT64_C (1) << QC_CLUSTER_BITS)
#define QC_HEADER_LEN     112                 /* v3 header with compression type */
#define QC_MAX_L1_BYTES   (UINT64_C (32) << 20) /* QEMU's QCOW_MAX_L1_SIZE */
#define QC_MAX_BACKING    1023                /* QEMU's limit for the name */
#define QC_MAX_FMT        31                  /* longer format names: not ours */
#define QC_L1_OFFSET      (3 * QC_CLUSTER)
#define QC_EXT_BACKING_FMT 0xe2792acaU
#define QC_EXT_FEATURES    0x6803f857U

/* The feature name table QEMU writes into every v3 image it creates:
 * type (0 incompatible, 1 compatible, 2 autoclear), bit, name. */
static const struct { uint8_t type, bit; const char *name; } qc_features[] = {
  { 0, 0, "dirty bit" },
  { 0, 1, "corrupt bit" },
  { 0, 2, "external data file" },
  { 0, 3, "compression type" },
  { 0, 4, "extended L2 entries" },
  { 1, 0, "lazy refcounts" },
  { 2, 0, "bitmaps" },
  { 2, 1, "raw external data" },
};
#define QC_FEATURE_LEN 48                     /* 1 + 1 + 46 name bytes */

/* Store V big-endian at P. */
static void
put32 (uint8_t *p, uint32_t v)
{
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void
put64 (uint8_t *p, uint64_t v)
{
  put32 (p, v >> 32);
  put32 (p + 4, (uint32_t) v);
}

/* N rounded up to a multiple of 8. */
static size_t
pad8 (size_t n)
{
  return (n + 7) & ~(size_t) 7;
}

/* Write LEN bytes of BUF at OFF of FD (PATH in messages).  0, or -1 with
 * QB_ENOSPC (no room) or QB_EIO. */
static int
write_all (int fd, const char *path, const uint8_t *buf, size_t len, uint64_t off)
{
  while (len > 0) {
    ssize_t n = pwrite (fd, buf, len, (off_t) off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == ENOSPC || errno == EDQUOT))
      return qb_error_set (QB_ENOSPC, "no room for the new image %s: free space on the store", path);
    if (n <= 0)
      return qb_error_set (n == 0 ? QB_ENOSPC : QB_EIO, "writing the new image %s: %s", path,
                           n == 0 ? "no room" : strerror (errno));
    buf += n;
    len -= (size_t) n;
    off += (uint64_t) n;
  }
  return 0;
}

int
qcow2_create_supported (uint64_t size, uint64_t cluster_size, const char *backing,
                        const char *backing_fmt)
{
  if (cluster_size != QC_CLUSTER || size == 0 || size % 512 != 0 || size > (UINT64_MAX >> 1))
    return 0;
  uint64_t per_l1 = QC_CLUSTER * (QC_CLUSTER / 8);
  uint64_t l1 = size / per_l1 + (size % per_l1 != 0);
  if (l1 * 8 > QC_MAX_L1_BYTES)
    return 0;
  if (backing) {
    size_t n = strlen (backing), f = backing_fmt ? strlen (backing_fmt) : 0;
    if (n == 0 || n > QC_MAX_BACKING || f == 0 || f > QC_MAX_FMT)
      return 0;
  }
  else if (backing_fmt)
    return 0;
  return 1;
}

int
qcow2_create_empty (const char *path, uint64_t size, uint64_t cluster_size,
                    const char *backing, const char *backing_fmt)
{
  if (!qcow2_create_supported (size, cluster_size, backing, backing_fmt))
    return 1;
  uint64_t per_l1 = QC_CLUSTER * (QC_CLUSTER / 8);
  uint64_t l1 = size / per_l1 + (size % per_l1 != 0);
  uint64_t l1_bytes = l1 * 8;
  uint64_t l1_clusters = (l1_bytes + QC_CLUSTER - 1) / QC_CLUSTER;

  int fd = open (path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return qb_error_set (errno == ENOENT ? QB_ENOENT : QB_EIO, "opening the new image %s: %s",
                         path, strerror (errno));
  struct stat sb;
  if (fstat (fd, &sb) < 0 || !S_ISREG (sb.st_mode) || sb.st_size != 0) {
    close (fd);
    return qb_error_set (QB_EIO, "the new image %s is not an empty regular file", path);
  }

  /* Clusters 0 .. 2 (and the first cluster of the L1 table). */
  size_t head = 3 * QC_CLUSTER;
  uint8_t *buf = calloc (1, head);
  if (!buf) {
    close (fd);
    return qb_error_set (QB_ENOMEM, "out of memory formatting %s", path);
  }
  uint8_t *h = buf;
  put32 (h + 0, 0x514649fbU);                 /* "QFI\xfb" */
  put32 (h + 4, 3);                           /* version */
  put32 (h + 20, QC_CLUSTER_BITS);
  put64 (h + 24, size);
  put32 (h + 36, (uint32_t) l1);
  put64 (h + 40, QC_L1_OFFSET);
  put64 (h + 48, QC_CLUSTER);                 /* refcount table */
  put32 (h + 56, 1);                          /* its clusters */
  put32 (h + 96, 4);                          /* refcount order: 16 bits */
  put32 (h + 100, QC_HEADER_LEN);
  /* 104: compression type 0 (zlib) and padding */
  size_t off = QC_HEADER_LEN;
  if (backing) {
    size_t f = strlen (backing_fmt);
    put32 (h + off, QC_EXT_BACKING_FMT);
    put32 (h + off + 4, (uint32_t) f);
    memcpy (h + off + 8, backing_fmt, f);
    off += 8 + pad8 (f);
  }
  size_t nfeat = sizeof qc_features / sizeof qc_features[0];
  put32 (h + off, QC_EXT_FEATURES);
  put32 (h + off + 4, (uint32_t) (nfeat * QC_FEATURE_LEN));
  off += 8;
  for (size_t i = 0; i < nfeat; i++, off += QC_FEATURE_LEN) {
    h[off] = qc_features[i].type;
    h[off + 1] = qc_features[i].bit;
    memcpy (h + off + 2, qc_features[i].name, strlen (qc_features[i].name));
  }
  off += 8;                                   /* end of extensions */
  if (backing) {
    size_t n = strlen (backing);
    put64 (h + 8, off);
    put32 (h + 16, (uint32_t) n);
    memcpy (h + off, backing, n);
  }
  put64 (buf + QC_CLUSTER, 2 * QC_CLUSTER);   /* the refcount block */
  for (uint64_t c = 0; c < 3 + l1_clusters; c++) {
    buf[2 * QC_CLUSTER + 2 * c] = 0;
    buf[2 * QC_CLUSTER + 2 * c + 1] = 1;
  }

  int rc = write_all (fd, path, buf, head, 0);
  /* The L1 table: zeros up to its last entry. */
  memset (buf, 0, head);
  for (uint64_t done = 0; rc == 0 && done < l1_bytes; ) {
    size_t n = l1_bytes - done < head ? (size_t) (l1_bytes - done) : head;
    rc = write_all (fd, path, buf, n, QC_L1_OFFSET + done);
    done += n;
  }
  free (buf);
  if (close (fd) < 0 && rc == 0)
    rc = qb_error_set (errno == ENOSPC ? QB_ENOSPC : QB_EIO, "writing the new image %s: %s",
                       path, strerror (errno));
  return rc;
}
