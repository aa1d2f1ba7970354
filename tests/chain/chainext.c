/* chainext — test program for chain_extend: the points of a chain opened
 * one on top of the other must read exactly as the same points opened from
 * their base.
 *
 *   chainext FILE...   FILEs are the layers, base first
 *
 * Point 0 is opened with chain_open; each point K > 0 with chain_extend on
 * point K - 1 (when it refuses with QB_EINVAL, another size or finer
 * clusters, point K is opened from its base and "fallback K" is printed).
 * Every point is compared with chain_open of the same layers: size,
 * allocated bytes, every byte (chain_pread in odd pieces) and the kind of
 * every extent.  Prints "ok N extended M" and exits 0, or exits 1 naming
 * the first difference. */
#include "store/chain.h"
#include "common/error.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PIECE 1048573u

/* Print the last error about WHAT and exit 1. */
static void __attribute__ ((noreturn))
die (const char *what)
{
  fprintf (stderr, "chainext: %s: %s (%s)\n", what, qb_error_msg (),
           qb_err_name (qb_error_code ()));
  exit (1);
}

/* Exit 1 unless A and B (point K) read the same. */
static void
same_point (chain_image *a, chain_image *b, int k)
{
  if (chain_size (a) != chain_size (b) || chain_allocated_bytes (a) != chain_allocated_bytes (b)) {
    fprintf (stderr, "chainext: point %d: size %llu/%llu, allocated %llu/%llu\n", k,
             (unsigned long long) chain_size (a), (unsigned long long) chain_size (b),
             (unsigned long long) chain_allocated_bytes (a),
             (unsigned long long) chain_allocated_bytes (b));
    exit (1);
  }
  static char x[PIECE], y[PIECE];
  uint64_t size = chain_size (a);
  for (uint64_t off = 0; off < size; off += PIECE) {
    size_t len = size - off < PIECE ? size - off : PIECE;
    if (chain_pread (a, x, len, off) != (ssize_t) len)
      die ("read of the extended point");
    if (chain_pread (b, y, len, off) != (ssize_t) len)
      die ("read of the point opened from its base");
    if (memcmp (x, y, len) != 0) {
      fprintf (stderr, "chainext: point %d: bytes differ in [%llu, +%zu)\n", k,
               (unsigned long long) off, len);
      exit (1);
    }
  }
  for (uint64_t off = 0; off < size;) {
    chain_extent ea, eb;
    if (chain_extent_at (a, off, size - off, &ea) < 0 || chain_extent_at (b, off, size - off, &eb) < 0)
      die ("extent");
    if (ea.kind != eb.kind || ea.length != eb.length) {
      fprintf (stderr, "chainext: point %d: extent at %llu differs\n", k, (unsigned long long) off);
      exit (1);
    }
    off += ea.length;
  }
}

int
main (int argc, char **argv)
{
  if (argc < 2) {
    fprintf (stderr, "usage: chainext FILE...\n");
    return 2;
  }
  const char *const *files = (const char *const *) argv + 1;
  int n = argc - 1, extended = 0;
  chain_image *ci = chain_open (files, 1);
  if (!ci)
    die (files[0]);
  for (int k = 1; k < n; k++) {
    int fd = open (files[k], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      perror (files[k]);
      return 1;
    }
    chain_image *next = chain_extend (ci, fd, files[k]);
    if (!next && qb_error_code () == QB_EINVAL) {
      printf ("fallback %d\n", k);
      next = chain_open (files, (size_t) k + 1);
    }
    else if (next)
      extended++;
    if (!next)
      die (files[k]);
    chain_close (ci);
    ci = next;
    chain_image *ref = chain_open (files, (size_t) k + 1);
    if (!ref)
      die ("chain_open");
    same_point (ci, ref, k);
    chain_close (ref);
  }
  chain_close (ci);
  printf ("ok %d extended %d\n", n, extended);
  return 0;
}
