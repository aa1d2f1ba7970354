/* Fuzz target: verifying a layer against its checksums (store/sums.c) with a
 * hostile layer file and a hostile .sums file.
 *
 * Input: one mode byte, two bytes (big-endian) giving the length of the
 * layer, the layer, then the rest.  Mode bit 0 clear: the rest is the .sums
 * file as it is.  Set: the .sums file is written by store_sums_write from the
 * layer, then the rest is XORed into it from the offset given by its first
 * two bytes (big-endian).  Invariants: store_verify_layer answers (no crash,
 * memory bounded by the layer's size, never what the .sums file claims),
 * fails only for a shortage (QB_EAGAIN/QB_ENOMEM), lists at most
 * STORE_VERIFY_LISTED offsets and no more than it counts; a layer whose own
 * freshly written sums are left alone is never "sums-damaged" nor
 * "unverifiable". */
#include "fuzz.h"
#include "common/error.h"
#include "store/sums.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_INPUT (1024 * 1024)
#define LAYER "FULL-20261126T045000Z"
#define SUMS ".chain/" LAYER ".sums"

static int dfd = -1;
static char dir[] = "/tmp/qb-fuzz-sums-XXXXXX";

/* Remove the work folder (at exit). */
static void
cleanup (void)
{
  char cmd[64];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system (cmd) != 0)
    fprintf (stderr, "fuzz-sums: could not remove %s\n", dir);
}

/* Replace file REL of the work folder with LEN bytes of DATA. */
static void
put_file (const char *rel, const uint8_t *data, size_t len)
{
  unlinkat (dfd, rel, 0);
  int fd = openat (dfd, rel, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    abort ();
  size_t done = 0;
  while (done < len) {
    ssize_t n = write (fd, data + done, len - done);
    if (n <= 0)
      abort ();
    done += (size_t) n;
  }
  close (fd);
}

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 3 || size > MAX_INPUT)
    return 0;
  if (dfd < 0) {
    if (!mkdtemp (dir))
      abort ();
    atexit (cleanup);
    dfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || mkdirat (dfd, ".chain", 0700) < 0)
      abort ();
  }
  unsigned mode = data[0];
  size_t llen = (size_t) data[1] << 8 | data[2];
  data += 3, size -= 3;
  if (llen > size)
    llen = size;
  put_file (LAYER, data, llen);
  data += llen, size -= llen;

  bool fresh = false;
  if (mode & 1) {
    unlinkat (dfd, SUMS, 0);
    qb_error_clear ();
    if (store_sums_write (dfd, LAYER) < 0) {
      qb_err e = qb_error_code ();
      FUZZ_CHECK (e == QB_EDAMAGED || e == QB_EIO || e == QB_ENOMEM,
                  "sums write error %s: %s", qb_err_name (e), qb_error_msg ());
    } else if (size >= 2) {
      size_t off = (size_t) data[0] << 8 | data[1];
      int fd = openat (dfd, SUMS, O_RDWR | O_CLOEXEC);
      struct stat sb;
      if (fd < 0 || fstat (fd, &sb) < 0)
        abort ();
      for (size_t i = 2; i < size && off + i - 2 < (size_t) sb.st_size; i++) {
        uint8_t b;
        if (pread (fd, &b, 1, (off_t) (off + i - 2)) != 1)
          abort ();
        b ^= data[i];
        if (pwrite (fd, &b, 1, (off_t) (off + i - 2)) != 1)
          abort ();
      }
      close (fd);
    } else
      fresh = true;
  } else
    put_file (SUMS, data, size);

  store_verify_report rep;
  qb_error_clear ();
  if (store_verify_layer (dfd, LAYER, &rep) < 0) {
    qb_err e = qb_error_code ();
    FUZZ_CHECK (e == QB_EAGAIN || e == QB_ENOMEM, "verify error %s: %s", qb_err_name (e),
                qb_error_msg ());
    return 0;
  }
  FUZZ_CHECK (rep.result <= STORE_VERIFY_GONE, "result %d", (int) rep.result);
  FUZZ_CHECK (rep.nlisted <= STORE_VERIFY_LISTED && rep.damaged >= rep.nlisted,
              "listed %zu of %llu", rep.nlisted, (unsigned long long) rep.damaged);
  FUZZ_CHECK (rep.result != STORE_VERIFY_GONE, "the layer is there");
  if (fresh)
    FUZZ_CHECK (rep.result == STORE_VERIFY_OK || rep.result == STORE_VERIFY_DAMAGED,
                "fresh sums judged %s: %s", store_verify_result_word (rep.result), rep.why);
  return 0;
}
