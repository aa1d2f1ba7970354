/* Fuzz target: the qcow2 chain reader (store/chain.c, store/qcow2.c, and
 * libqcow for compressed clusters) over damaged or hostile layer files.
 *
 * Input: one mode byte.  Mode bit 0 clear: the rest is one layer.  Set: the
 * next two bytes (big-endian) give the length of the base layer, which
 * follows, and the remaining bytes are the top layer.  Layers are memfds
 * handed to chain_open_fds.  Invariants: chain_open_fds fails with a
 * recorded error (damage, I/O, or a shortage of memory) or gives an image
 * whose cluster map stays within its budget (64 MiB plus 64 bytes per byte
 * of the layers: never what the tables claim), and whose reads either fail
 * or return all the bytes asked for; extents agree with the bytes read
 * (zero extents read as zeros, data extents equal the layer file's bytes);
 * SEEK_DATA/SEEK_HOLE stay inside the image and move forward. */
#include "fuzz.h"
#include "common/error.h"
#include "store/chain.h"
#include "store/qcow2.h"

#include <string.h>
#include <sys/mman.h>

#define MAX_INPUT (1024 * 1024)
#define READ_LEN 8192

static int layer_fd[2] = { -1, -1 };
static char layer_path[2][64];     /* names in messages */

/* Make layer I hold exactly LEN bytes of DATA. */
static void
layer_fill (int i, const uint8_t *data, size_t len)
{
  if (layer_fd[i] < 0) {
    layer_fd[i] = memfd_create ("fuzz-layer", MFD_CLOEXEC);
    if (layer_fd[i] < 0)
      abort ();
    snprintf (layer_path[i], sizeof layer_path[i], "/proc/self/fd/%d", layer_fd[i]);
  }
  if (ftruncate (layer_fd[i], 0) < 0 || ftruncate (layer_fd[i], (off_t) len) < 0)
    abort ();
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite (layer_fd[i], data + done, len - done, (off_t) done);
    if (n <= 0)
      abort ();
    done += (size_t) n;
  }
}

/* Read at OFF and check the bytes against the extent there. */
static void
check_read (chain_image *ci, uint64_t off, uint8_t *buf, uint8_t *cmp)
{
  uint64_t size = chain_size (ci);
  if (off >= size)
    return;
  size_t len = size - off < READ_LEN ? (size_t) (size - off) : READ_LEN;
  qb_error_clear ();
  ssize_t r = chain_pread (ci, buf, len, off);
  FUZZ_CHECK (r == -1 || r == (ssize_t) len, "read of %zu at %llu gave %zd",
              len, (unsigned long long) off, r);
  if (r < 0) {
    qb_err e = qb_error_code ();
    FUZZ_CHECK (e == QB_EDAMAGED || e == QB_EIO, "read error %s: %s",
                qb_err_name (e), qb_error_msg ());
  }
  chain_extent ext;
  qb_error_clear ();
  if (chain_extent_at (ci, off, len, &ext) < 0) {
    FUZZ_CHECK (qb_error_code () == QB_EDAMAGED, "extent error: %s", qb_error_msg ());
    FUZZ_CHECK (r < 0, "read succeeded where the extent is damaged at %llu",
                (unsigned long long) off);
    return;
  }
  FUZZ_CHECK (ext.length > 0 && ext.length <= len, "extent of %llu for %zu",
              (unsigned long long) ext.length, len);
  if (r < 0)
    return;
  if (ext.kind == CHAIN_EXT_ZERO) {
    for (uint64_t i = 0; i < ext.length; i++)
      FUZZ_CHECK (buf[i] == 0, "zero extent read byte 0x%02x at %llu",
                  buf[i], (unsigned long long) (off + i));
  }
  else if (ext.kind == CHAIN_EXT_DATA) {
    ssize_t n = pread (ext.fd, cmp, ext.length, (off_t) ext.fd_offset);
    FUZZ_CHECK (n == (ssize_t) ext.length, "data extent at file offset %llu (+%llu) "
                "is not in the file", (unsigned long long) ext.fd_offset,
                (unsigned long long) ext.length);
    FUZZ_CHECK (memcmp (buf, cmp, ext.length) == 0, "data extent and read disagree at %llu",
                (unsigned long long) off);
  }
  else
    FUZZ_CHECK (ext.kind == CHAIN_EXT_OTHER, "extent kind %d", ext.kind);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 1 || size > MAX_INPUT)
    return 0;
  unsigned mode = data[0];
  data++, size--;
  size_t n = 1;
  const char *paths[2] = { layer_path[0], layer_path[1] };
  size_t total = size;
  if (mode & 1) {
    if (size < 2)
      return 0;
    size_t base = (size_t) data[0] << 8 | data[1];
    data += 2, size -= 2;
    if (base > size)
      base = size;
    layer_fill (0, data, base);
    layer_fill (1, data + base, size - base);
    n = 2;
  }
  else
    layer_fill (0, data, size);

  qb_error_clear ();
  int fds[2] = { dup (layer_fd[0]), n > 1 ? dup (layer_fd[1]) : -1 };
  if (fds[0] < 0 || (n > 1 && fds[1] < 0))
    abort ();
  chain_image *ci = chain_open_fds (fds, paths, n);
  if (!ci) {
    qb_err e = qb_error_code ();
    FUZZ_CHECK (e == QB_EDAMAGED || e == QB_EIO || e == QB_EINVAL || e == QB_ENOMEM,
                "chain_open error %s: %s", qb_err_name (e), qb_error_msg ());
    return 0;
  }
  FUZZ_CHECK (chain_map_bytes (ci) <= ((size_t) 64 << 20) + 64 * total,
              "cluster map of %zu bytes for %zu bytes of layers", chain_map_bytes (ci), total);
  uint64_t vsize = chain_size (ci);
  FUZZ_CHECK (chain_allocated_bytes (ci) <= vsize, "allocated %llu of %llu",
              (unsigned long long) chain_allocated_bytes (ci), (unsigned long long) vsize);
  static uint8_t buf[READ_LEN], cmp[READ_LEN];
  uint64_t offs[] = { 0, 512, 4096, 65536 - 512, vsize / 2, vsize - 1, vsize - 4096,
                      vsize - READ_LEN, vsize };
  for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++)
    check_read (ci, offs[i], buf, cmp);
  /* Walk the first data/hole runs. */
  uint64_t pos = 0;
  for (int i = 0; i < 64 && pos < vsize; i++) {
    int64_t d = chain_seek (ci, pos, SEEK_DATA);
    if (d < 0) {
      FUZZ_CHECK (qb_error_code () == QB_ENOENT, "SEEK_DATA: %s", qb_error_msg ());
      break;
    }
    FUZZ_CHECK ((uint64_t) d >= pos && (uint64_t) d < vsize, "SEEK_DATA %llu gave %lld",
                (unsigned long long) pos, (long long) d);
    int64_t hpos = chain_seek (ci, (uint64_t) d, SEEK_HOLE);
    FUZZ_CHECK (hpos > d && (uint64_t) hpos <= vsize, "SEEK_HOLE %lld gave %lld",
                (long long) d, (long long) hpos);
    check_read (ci, (uint64_t) d, buf, cmp);
    pos = (uint64_t) hpos;
  }
  chain_close (ci);
  return 0;
}
