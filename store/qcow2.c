/* qmpbackupfs — qcow2 header and L1/L2 entry decoding (see qcow2.h).
 *
 * Layout from docs/interop/qcow2.txt in QEMU: all fields big-endian.  Nothing
 * read from a file is trusted: every offset is checked for alignment and
 * against the file size before the chain reader uses it. */
#include "qcow2.h"
#include "common/error.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QCOW2_MAGIC 0x514649fbu           /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LENGTH 72
#define QCOW2_V3_HEADER_MIN 104

/* Incompatible feature bits (v3). */
#define INCOMPAT_DIRTY        (1ull << 0)
#define INCOMPAT_CORRUPT      (1ull << 1)
#define INCOMPAT_DATA_FILE    (1ull << 2)
#define INCOMPAT_COMPRESSION  (1ull << 3)
#define INCOMPAT_EXTL2        (1ull << 4)
#define INCOMPAT_KNOWN        0x1full

/* Entry fields shared by L1 and L2 entries. */
#define ENTRY_OFFSET_MASK     0x00fffffffffffe00ull   /* bits 9..55 */
#define ENTRY_COPIED          (1ull << 63)
#define L2_COMPRESSED         (1ull << 62)
#define L2_ZERO               (1ull << 0)
#define L2_RESERVED           0x3f000000000001feull   /* bits 1..8, 56..61 */

/* The biggest L1 table QEMU accepts (32 MiB), in entries. */
#define L1_MAX_ENTRIES        (32u * 1024 * 1024 / 8)

/* Big-endian 32-bit value at P. */
static uint32_t
get_be32 (const uint8_t *p)
{
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3];
}

/* Big-endian 64-bit value at P. */
static uint64_t
get_be64 (const uint8_t *p)
{
  return ((uint64_t) get_be32 (p) << 32) | get_be32 (p + 4);
}

int
qcow2_header_parse (const uint8_t *buf, size_t len, const char *name, qcow2_header *h)
{
  memset (h, 0, sizeof *h);
  if (len < QCOW2_V2_HEADER_LENGTH || get_be32 (buf) != QCOW2_MAGIC)
    return qb_error_set (QB_EDAMAGED, "%s: not a qcow2 image (bad magic)", name);
  h->version = get_be32 (buf + 4);
  if (h->version != 2 && h->version != 3)
    return qb_error_set (QB_EDAMAGED, "%s: unsupported qcow2 version %u", name, h->version);
  h->backing_offset = get_be64 (buf + 8);
  h->backing_size = get_be32 (buf + 16);
  h->cluster_bits = get_be32 (buf + 20);
  if (h->cluster_bits < 9 || h->cluster_bits > 21)
    return qb_error_set (QB_EDAMAGED, "%s: invalid qcow2 cluster bits %u", name, h->cluster_bits);
  h->size = get_be64 (buf + 24);
  h->crypt_method = get_be32 (buf + 32);
  h->l1_size = get_be32 (buf + 36);
  h->l1_offset = get_be64 (buf + 40);
  h->refcount_offset = get_be64 (buf + 48);
  h->refcount_clusters = get_be32 (buf + 56);
  h->header_length = QCOW2_V2_HEADER_LENGTH;
  if (h->version == 3) {
    if (len < QCOW2_V3_HEADER_MIN)
      return qb_error_set (QB_EDAMAGED, "%s: qcow2 v3 header is truncated", name);
    h->incompatible = get_be64 (buf + 72);
    h->header_length = get_be32 (buf + 100);
    if (h->header_length < QCOW2_V3_HEADER_MIN
        || h->header_length > (1u << h->cluster_bits))
      return qb_error_set (QB_EDAMAGED, "%s: invalid qcow2 header length %u",
                           name, h->header_length);
    if (h->header_length > 104) {
      if (len < 105)
        return qb_error_set (QB_EDAMAGED, "%s: qcow2 v3 header is truncated", name);
      h->compression_type = buf[104];
    }
  }
  return 0;
}

uint64_t
qcow2_l1_needed (const qcow2_header *h)
{
  unsigned span_bits = 2 * h->cluster_bits - 3;  /* bytes covered by one L2 table */
  return (h->size >> span_bits) + ((h->size & ((1ull << span_bits) - 1)) != 0);
}

int
qcow2_header_check (const qcow2_header *h, uint64_t file_size, const char *name)
{
  uint64_t cluster = 1ull << h->cluster_bits;

  if (h->crypt_method != 0)
    return qb_error_set (QB_EDAMAGED, "%s: encrypted qcow2 images are not supported", name);
  if (h->incompatible & INCOMPAT_CORRUPT)
    return qb_error_set (QB_EDAMAGED, "%s: image is marked corrupt by QEMU "
                         "(check it with qemu-img check)", name);
  if (h->incompatible & INCOMPAT_DATA_FILE)
    return qb_error_set (QB_EDAMAGED, "%s: unsupported qcow2 feature: external data file", name);
  if (h->incompatible & INCOMPAT_EXTL2)
    return qb_error_set (QB_EDAMAGED, "%s: unsupported qcow2 feature: extended L2 entries", name);
  if ((h->incompatible & INCOMPAT_COMPRESSION) && h->compression_type != 0)
    return qb_error_set (QB_EDAMAGED, "%s: unsupported qcow2 compression type %u (only zlib)",
                         name, h->compression_type);
  if (h->incompatible & ~INCOMPAT_KNOWN)
    return qb_error_set (QB_EDAMAGED, "%s: unsupported qcow2 incompatible features 0x%llx",
                         name, (unsigned long long) (h->incompatible & ~INCOMPAT_KNOWN));
  if (h->size > (1ull << 62))
    return qb_error_set (QB_EDAMAGED, "%s: invalid virtual size %llu",
                         name, (unsigned long long) h->size);
  uint64_t need = qcow2_l1_needed (h);
  if (need > h->l1_size || h->l1_size > L1_MAX_ENTRIES)
    return qb_error_set (QB_EDAMAGED, "%s: invalid L1 table size %u for a virtual size of %llu",
                         name, h->l1_size, (unsigned long long) h->size);
  if (need > 0
      && (h->l1_offset == 0 || (h->l1_offset & (cluster - 1)) != 0
          || h->l1_offset > file_size || need * 8 > file_size - h->l1_offset))
    return qb_error_set (QB_EDAMAGED, "%s: L1 table at offset %llu lies outside the file "
                         "(%llu bytes): the file is truncated or damaged", name,
                         (unsigned long long) h->l1_offset, (unsigned long long) file_size);
  if (h->refcount_clusters > 0
      && ((h->refcount_offset & (cluster - 1)) != 0 || h->refcount_offset == 0 || h->refcount_offset >= file_size
          || h->refcount_clusters > (file_size - h->refcount_offset + cluster - 1) >> h->cluster_bits))
    return qb_error_set (QB_EDAMAGED, "%s: refcount table at offset %llu (%u clusters) lies "
                         "outside the file (%llu bytes): the file is truncated or damaged",
                         name, (unsigned long long) h->refcount_offset, h->refcount_clusters,
                         (unsigned long long) file_size);
  return 0;
}

int
qcow2_header_read (int fd, const char *name, qcow2_header *h, uint64_t *file_size)
{
  struct stat st;
  uint8_t buf[QCOW2_HEADER_BYTES];

  if (fstat (fd, &st) < 0)
    return qb_error_set_errno (errno, "%s: stat", name);
  *file_size = (uint64_t) st.st_size;
  size_t want = sizeof buf;
  if ((uint64_t) st.st_size < want)
    want = (size_t) st.st_size;
  size_t got = 0;
  while (got < want) {
    ssize_t r = pread (fd, buf + got, want - got, (off_t) got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return qb_error_set_errno (errno, "%s: read header", name);
    if (r == 0)
      break;
    got += (size_t) r;
  }
  return qcow2_header_parse (buf, got, name, h);
}

int
qcow2_virtual_size (const char *path, uint64_t *size)
{
  qcow2_header h;
  uint64_t file_size;
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);

  if (fd < 0)
    return qb_error_set_errno (errno, "open %s", path);
  int r = qcow2_header_read (fd, path, &h, &file_size);
  close (fd);
  if (r < 0)
    return -1;
  *size = h.size;
  return 0;
}

int
qcow2_l1_decode (uint64_t e, const qcow2_header *h, uint64_t file_size, uint64_t *l2_offset)
{
  uint64_t cluster = 1ull << h->cluster_bits;
  uint64_t off = e & ENTRY_OFFSET_MASK;

  *l2_offset = 0;
  if (e & ~(ENTRY_OFFSET_MASK | ENTRY_COPIED))
    return -1;
  if (off == 0)
    return 0;
  if ((off & (cluster - 1)) != 0 || off > file_size || cluster > file_size - off)
    return -1;
  *l2_offset = off;
  return 0;
}

qcow2_kind
qcow2_l2_decode (uint64_t e, const qcow2_header *h, uint64_t file_size,
                 uint64_t needed, uint64_t *host)
{
  uint64_t cluster = 1ull << h->cluster_bits;

  *host = 0;
  if (e & L2_COMPRESSED) {
    /* Compressed cluster descriptor: host offset in bits 0..x-1 and the
     * additional 512-byte sector count above it, x = 62 - (cluster_bits - 8). */
    unsigned x = 62 - (h->cluster_bits - 8);
    uint64_t off = e & ((1ull << x) - 1);
    if ((e & ENTRY_COPIED) || off == 0 || off >= file_size)
      return QCOW2_BAD;
    *host = off;
    return QCOW2_COMPRESSED;
  }
  if (e & L2_RESERVED)
    return QCOW2_BAD;
  if (e & L2_ZERO)
    return QCOW2_ZERO;    /* reads as zeros whatever the offset says */
  uint64_t off = e & ENTRY_OFFSET_MASK;
  if (off == 0)
    return QCOW2_UNALLOCATED;
  if ((off & (cluster - 1)) != 0 || off > file_size || needed > file_size - off)
    return QCOW2_BAD;
  *host = off;
  return QCOW2_DATA;
}

void
qcow2_compressed_span (uint64_t e, const qcow2_header *h, uint64_t host, uint64_t file_size,
                       uint64_t *len)
{
  unsigned x = 62 - (h->cluster_bits - 8);
  uint64_t sectors = ((e >> x) & ((1ull << (h->cluster_bits - 8)) - 1)) + 1;
  uint64_t end = (host & ~511ull) + sectors * 512;
  if (end > file_size)
    end = file_size;
  *len = end > host ? end - host : 0;
}

/* Read exactly LEN bytes at OFF of FD (NAME in messages): 0, or -1 (QB_EIO). */
static int
walk_read (int fd, const char *name, void *buf, size_t len, uint64_t off)
{
  char *p = buf;
  while (len > 0) {
    ssize_t r = pread (fd, p, len, (off_t) off);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return qb_error_set (QB_EIO, "%s: cannot read the qcow2 tables at offset %llu: %s",
                           name, (unsigned long long) off,
                           r < 0 ? strerror (errno) : "unexpected end of file");
    p += r;
    len -= (size_t) r;
    off += (uint64_t) r;
  }
  return 0;
}

int
qcow2_walk (int fd, const char *name, const qcow2_header *h, uint64_t file_size,
            qcow2_walk_fn fn, void *opaque)
{
  unsigned cb = h->cluster_bits;
  uint64_t cl = 1ull << cb;
  uint64_t span = 1ull << (2 * cb - 3);
  uint64_t nl1 = qcow2_l1_needed (h);   /* qcow2_header_check: inside the file */
  uint64_t *l1 = calloc (nl1 ? nl1 : 1, sizeof *l1);
  uint64_t *l2 = calloc (cl / 8, sizeof *l2);
  int ret = 0;

  if (!l1 || !l2) {
    ret = qb_error_set (QB_ENOMEM, "%s: out of memory for its qcow2 tables", name);
    goto out;
  }
  if (nl1 && (ret = walk_read (fd, name, l1, nl1 * 8, h->l1_offset)) < 0)
    goto out;
  for (uint64_t i = 0; i < nl1 && ret == 0; i++) {
    uint64_t g0 = i * span, g1 = g0 + span, l2_off;
    if (g1 > h->size)
      g1 = h->size;
    if (qcow2_l1_decode (be64toh (l1[i]), h, file_size, &l2_off) < 0) {
      ret = fn (opaque, g0, g1 - g0, QCOW2_BAD, 0, be64toh (l1[i]));
      continue;
    }
    if (l2_off == 0)
      continue;
    if ((ret = walk_read (fd, name, l2, cl, l2_off)) < 0)
      break;
    for (uint64_t j = 0, g = g0; g < g1 && ret == 0; j++, g += cl) {
      uint64_t needed = g1 - g < cl ? g1 - g : cl, host, e = be64toh (l2[j]);
      qcow2_kind k = qcow2_l2_decode (e, h, file_size, needed, &host);
      if (k != QCOW2_UNALLOCATED)
        ret = fn (opaque, g, needed, k, host, e);
    }
  }
 out:
  free (l1);
  free (l2);
  return ret;
}
