/* chaincat — test program for the chain reader.
 *
 *   chaincat [--extents | --threads N] FILE...   raw image of the chain on stdout
 *   chaincat --map FILE...                       "OFFSET LENGTH data|hole" lines
 *   chaincat --stats FILE...                     size, allocated bytes, map size
 *   chaincat --range OFF LEN FILE...             LEN bytes at OFF on stdout
 *   chaincat --verify REF FILE...                compare with the raw file REF:
 *       every data extent, samples of holes, and random reads near boundaries
 *   chaincat --check FILE...                     chain_verify: "ok" or the error
 *
 * FILEs are the layers, base first.  The default mode reads with chain_pread
 * in odd-sized pieces; --extents copies through chain_extent_at (pread from
 * the layer for data extents); --threads reads stripes from N threads at once
 * and needs stdout to be a regular file.  Exit 1 with the error on failure.
 * With CHAINCAT_PEAK_RSS set in the environment, the peak resident memory
 * of the process ("peak_rss_kib N", from VmHWM) goes to stderr at exit. */
#include "store/chain.h"
#include "store/qcow2.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUF_MAX (4u << 20)

static const size_t pieces[] = { 1, 511, 4097, 65535, 3, 1048573, 131073, 777, 2097169, 65536 };

/* Print "peak_rss_kib N" (VmHWM of this process) to stderr. */
static void
print_peak_rss (void)
{
  FILE *f = fopen ("/proc/self/status", "r");
  char line[256];
  while (f && fgets (line, sizeof line, f))
    if (strncmp (line, "VmHWM:", 6) == 0)
      fprintf (stderr, "peak_rss_kib %lld\n", strtoll (line + 6, NULL, 10));
  if (f)
    fclose (f);
}

/* Print the last error and exit 1. */
static void __attribute__ ((noreturn))
die (const char *what)
{
  fprintf (stderr, "chaincat: %s: %s (%s)\n", what, qb_error_msg (),
           qb_err_name (qb_error_code ()));
  exit (1);
}

/* Write LEN bytes of BUF to stdout or exit. */
static void
out_write (const void *buf, size_t len)
{
  if (len && fwrite (buf, 1, len, stdout) != len) {
    perror ("chaincat: write");
    exit (1);
  }
}

/* The raw image through chain_pread in odd-sized pieces. */
static void
cat_pread (chain_image *ci, char *buf)
{
  uint64_t size = chain_size (ci), off = 0;
  for (size_t i = 0; off < size; i++) {
    size_t want = pieces[i % (sizeof pieces / sizeof pieces[0])];
    ssize_t r = chain_pread (ci, buf, want, off);
    if (r < 0)
      die ("read");
    if (r == 0 || (size_t) r != (want < size - off ? want : size - off)) {
      fprintf (stderr, "chaincat: short read at %llu\n", (unsigned long long) off);
      exit (1);
    }
    out_write (buf, (size_t) r);
    off += (uint64_t) r;
  }
  if (chain_pread (ci, buf, 10, size) != 0) {
    fprintf (stderr, "chaincat: read at the end did not return 0\n");
    exit (1);
  }
}

/* The raw image through chain_extent_at. */
static void
cat_extents (chain_image *ci, char *buf)
{
  uint64_t size = chain_size (ci), off = 0;
  while (off < size) {
    chain_extent ext;
    if (chain_extent_at (ci, off, BUF_MAX - 12345, &ext) < 0)
      die ("extent");
    if (ext.length == 0 || ext.length > BUF_MAX - 12345 || ext.length > size - off) {
      fprintf (stderr, "chaincat: bad extent length %llu at %llu\n",
               (unsigned long long) ext.length, (unsigned long long) off);
      exit (1);
    }
    size_t len = (size_t) ext.length;
    switch (ext.kind) {
    case CHAIN_EXT_ZERO:
      memset (buf, 0, len);
      break;
    case CHAIN_EXT_DATA:
      if (pread (ext.fd, buf, len, (off_t) ext.fd_offset) != (ssize_t) len) {
        perror ("chaincat: pread extent");
        exit (1);
      }
      break;
    case CHAIN_EXT_OTHER:
      if (chain_pread (ci, buf, len, off) != (ssize_t) len)
        die ("read");
      break;
    }
    out_write (buf, len);
    off += len;
  }
}

/* SEEK_DATA/SEEK_HOLE extents, merged. */
static void
print_map (chain_image *ci)
{
  uint64_t size = chain_size (ci), off = 0;
  while (off < size) {
    int64_t d = chain_seek (ci, off, SEEK_DATA);
    if (d < 0) {
      if (qb_error_code () != QB_ENOENT)
        die ("seek data");
      d = (int64_t) size;
    }
    if ((uint64_t) d > off)
      printf ("%llu %llu hole\n", (unsigned long long) off, (unsigned long long) (d - off));
    if ((uint64_t) d >= size)
      break;
    int64_t h = chain_seek (ci, (uint64_t) d, SEEK_HOLE);
    if (h < 0)
      die ("seek hole");
    if (h <= d) {
      fprintf (stderr, "chaincat: SEEK_HOLE from %lld returned %lld\n",
               (long long) d, (long long) h);
      exit (1);
    }
    printf ("%lld %lld data\n", (long long) d, (long long) (h - d));
    off = (uint64_t) h;
  }
}

/* LEN bytes at OFF in one chain_pread. */
static void
cat_range (chain_image *ci, uint64_t off, size_t len)
{
  char *buf = malloc (len ? len : 1);
  if (!buf)
    abort ();
  ssize_t r = chain_pread (ci, buf, len, off);
  if (r < 0)
    die ("read");
  out_write (buf, (size_t) r);
  free (buf);
}

static uint64_t rng_state = 88172645463325252ull;

/* A deterministic pseudo-random number (xorshift64). */
static uint64_t
rng (void)
{
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* Compare LEN bytes at OFF of the chain with the raw file REF; exit on a difference. */
static void
verify_at (chain_image *ci, int ref, char *a, char *b, uint64_t off, size_t len)
{
  ssize_t r = chain_pread (ci, a, len, off);
  if (r < 0)
    die ("read");
  ssize_t q = pread (ref, b, len, (off_t) off);
  if (r != q) {
    fprintf (stderr, "chaincat: verify: %zd bytes at %llu, reference gives %zd\n",
             r, (unsigned long long) off, q);
    exit (1);
  }
  if (memcmp (a, b, (size_t) r) != 0) {
    size_t i = 0;
    while (a[i] == b[i])
      i++;
    fprintf (stderr, "chaincat: verify: bytes differ at %llu (read of %zu at %llu)\n",
             (unsigned long long) (off + i), len, (unsigned long long) off);
    exit (1);
  }
}

/* The --verify mode (see the top of the file). */
static void
verify (chain_image *ci, const char *refpath, char *a)
{
  uint64_t size = chain_size (ci);
  uint64_t bounds[4096];
  size_t nb = 0;
  char *b = malloc (BUF_MAX);
  int ref = open (refpath, O_RDONLY);
  if (ref < 0 || !b) {
    perror (refpath);
    exit (1);
  }
  if ((uint64_t) lseek (ref, 0, SEEK_END) != size) {
    fprintf (stderr, "chaincat: verify: reference size differs from chain size %llu\n",
             (unsigned long long) size);
    exit (1);
  }
  uint64_t off = 0, data_bytes = 0;
  while (off < size) {
    int64_t d = chain_seek (ci, off, SEEK_DATA);
    if (d < 0 && qb_error_code () != QB_ENOENT)
      die ("seek data");
    uint64_t hole_end = d < 0 ? size : (uint64_t) d;
    /* Samples of the hole [off, hole_end). */
    for (uint64_t s = off; s < hole_end; s += (hole_end - off) / 3 + 1)
      verify_at (ci, ref, a, b, s, hole_end - s < 4096 ? (size_t) (hole_end - s) : 4096);
    if (nb < 4096)
      bounds[nb++] = hole_end;
    if (d < 0)
      break;
    int64_t h = chain_seek (ci, (uint64_t) d, SEEK_HOLE);
    if (h < 0)
      die ("seek hole");
    for (uint64_t p = (uint64_t) d; p < (uint64_t) h; ) {
      size_t len = (uint64_t) h - p < 1048583 ? (size_t) ((uint64_t) h - p) : 1048583;
      verify_at (ci, ref, a, b, p, len);
      p += len;
    }
    data_bytes += (uint64_t) (h - d);
    if (nb < 4096)
      bounds[nb++] = (uint64_t) h;
    off = (uint64_t) h;
  }
  static const uint64_t grains[] = { 512, 4096, 65536, 1048576, 2097152 };
  for (int i = 0; i < 3000 && size > 0; i++) {
    uint64_t base;
    if (nb && rng () % 2)
      base = bounds[rng () % nb];
    else {
      uint64_t g = grains[rng () % 5];
      base = (rng () % (size / g + 1)) * g;
    }
    uint64_t delta = rng () % 1201;
    off = base + delta >= 600 ? base + delta - 600 : 0;
    if (off >= size)
      off = size - 1;
    static const size_t lens[] = { 1, 511, 4093, 4099, 65537, 1048577, 3 };
    size_t len = rng () % 3 ? lens[rng () % 7] : (size_t) (rng () % 300000) + 1;
    verify_at (ci, ref, a, b, off, len);
  }
  printf ("verified: %llu data bytes, %zu boundaries, 3000 random reads\n",
          (unsigned long long) data_bytes, nb);
  free (b);
  close (ref);
}

typedef struct worker {
  chain_image *ci;
  int id, n;
  int failed;
} worker;

/* Read stripes ID, ID+N, ... and pwrite them to stdout. */
static void *
worker_run (void *arg)
{
  worker *w = arg;
  const uint64_t stripe = 1048576 + 4099;
  uint64_t size = chain_size (w->ci);
  char *buf = malloc (stripe);
  if (!buf)
    abort ();
  for (uint64_t s = (uint64_t) w->id; s * stripe < size; s += (uint64_t) w->n) {
    uint64_t off = s * stripe;
    size_t len = size - off < stripe ? (size_t) (size - off) : (size_t) stripe;
    ssize_t r = chain_pread (w->ci, buf, len, off);
    if (r != (ssize_t) len) {
      fprintf (stderr, "chaincat: thread %d: read at %llu: %s\n", w->id,
               (unsigned long long) off, qb_error_msg ());
      w->failed = 1;
      break;
    }
    if (pwrite (STDOUT_FILENO, buf, len, (off_t) off) != (ssize_t) len) {
      perror ("chaincat: pwrite");
      w->failed = 1;
      break;
    }
  }
  free (buf);
  return NULL;
}

/* The raw image read by N threads at once. */
static void
cat_threads (chain_image *ci, int n)
{
  pthread_t th[64];
  worker w[64];
  if (ftruncate (STDOUT_FILENO, (off_t) chain_size (ci)) < 0) {
    perror ("chaincat: --threads needs stdout to be a regular file");
    exit (1);
  }
  for (int i = 0; i < n; i++) {
    w[i] = (worker) { ci, i, n, 0 };
    pthread_create (&th[i], NULL, worker_run, &w[i]);
  }
  int failed = 0;
  for (int i = 0; i < n; i++) {
    pthread_join (th[i], NULL);
    failed |= w[i].failed;
  }
  if (failed)
    exit (1);
}

int
main (int argc, char **argv)
{
  enum { CAT, EXTENTS, MAP, STATS, THREADS, RANGE, VERIFY, CHECK } mode = CAT;
  int nthreads = 0, i = 1;
  uint64_t range_off = 0, range_len = 0;
  const char *ref = NULL;

  if (getenv ("CHAINCAT_PEAK_RSS"))
    atexit (print_peak_rss);
  for (; i < argc && strncmp (argv[i], "--", 2) == 0; i++) {
    if (strcmp (argv[i], "--map") == 0)
      mode = MAP;
    else if (strcmp (argv[i], "--extents") == 0)
      mode = EXTENTS;
    else if (strcmp (argv[i], "--check") == 0)
      mode = CHECK;
    else if (strcmp (argv[i], "--stats") == 0)
      mode = STATS;
    else if (strcmp (argv[i], "--threads") == 0 && i + 1 < argc) {
      mode = THREADS;
      nthreads = atoi (argv[++i]);
      if (nthreads < 1 || nthreads > 64)
        nthreads = 4;
    } else if (strcmp (argv[i], "--range") == 0 && i + 2 < argc) {
      mode = RANGE;
      range_off = strtoull (argv[++i], NULL, 0);
      range_len = strtoull (argv[++i], NULL, 0);
    } else if (strcmp (argv[i], "--verify") == 0 && i + 1 < argc) {
      mode = VERIFY;
      ref = argv[++i];
    } else {
      fprintf (stderr, "usage: chaincat [--map|--extents|--stats|--check|--threads N|--range OFF LEN|--verify REF] FILE...\n");
      return 2;
    }
  }
  if (i >= argc) {
    fprintf (stderr, "usage: chaincat [--map|--extents|--stats|--check|--threads N|--range OFF LEN|--verify REF] FILE...\n");
    return 2;
  }
  chain_image *ci = chain_open ((const char *const *) argv + i, (size_t) (argc - i));
  if (!ci)
    die ("open");
  char *buf = malloc (BUF_MAX);
  if (!buf)
    abort ();
  switch (mode) {
  case CAT: cat_pread (ci, buf); break;
  case EXTENTS: cat_extents (ci, buf); break;
  case MAP: print_map (ci); break;
  case THREADS: cat_threads (ci, nthreads); break;
  case RANGE: cat_range (ci, range_off, (size_t) range_len); break;
  case VERIFY: verify (ci, ref, buf); break;
  case CHECK:
    if (chain_verify (ci) < 0)
      die ("check");
    printf ("ok\n");
    break;
  case STATS:
    printf ("size %llu\nallocated %llu\nmap_bytes %zu\nmap_clusters %llu\n",
            (unsigned long long) chain_size (ci),
            (unsigned long long) chain_allocated_bytes (ci), chain_map_bytes (ci),
            (unsigned long long) chain_map_clusters (ci));
    break;
  }
  if (fflush (stdout) != 0) {
    perror ("chaincat: write");
    return 1;
  }
  free (buf);
  chain_close (ci);
  return 0;
}
