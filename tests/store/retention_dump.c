/* qmpbackupfs — a driver for the retention policy: reads restore point times
 * (UTC microseconds since the epoch, one decimal integer a line) on stdin,
 * applies the policy given as argv[1] (store_retention_parse form; "" for
 * the empty policy) and prints one line per point, in input order:
 * "keep WHY" or "remove".  Local time comes from TZ.
 *
 *   retention_dump POLICY < times
 *   retention_dump --bench N POLICY   N points (one an hour with a few
 *                                     bursts), prints the time select took
 * Exit 0, 1 on a parse or selection error (message on stderr), 2 on usage. */
#include "store/retention.h"
#include "common/error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Parse POLICY into *P ("" is the empty policy); false after a message. */
static bool
dump_policy (const char *policy, store_retention *p)
{
  memset (p, 0, sizeof *p);
  if (*policy == '\0')
    return true;
  if (store_retention_parse (policy, p) == -1) {
    fprintf (stderr, "retention_dump: %s\n", qb_error_msg ());
    return false;
  }
  return true;
}

/* Time store_retention_select on N synthetic points; print the figures. */
static int
dump_bench (size_t n, const store_retention *p)
{
  int64_t *t = malloc (n * sizeof *t);
  uint8_t *keep = malloc (n);
  if (!t || !keep) {
    fprintf (stderr, "retention_dump: out of memory for %zu points\n", n);
    return 1;
  }
  int64_t t0 = INT64_C(1767225600) * 1000000;   /* 2026-01-01T00:00:00Z */
  for (size_t i = 0; i < n; i++)
    t[i] = t0 + (int64_t) i * 3600 * 1000000 - (int64_t) (i % 7 == 0) * 1000000;
  struct timespec a, b;
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1)   /* the same points in reverse: the sorting path */
      for (size_t i = 0; i < n / 2; i++) {
        int64_t x = t[i];
        t[i] = t[n - 1 - i];
        t[n - 1 - i] = x;
      }
    clock_gettime (CLOCK_MONOTONIC, &a);
    if (store_retention_select (t, n, p, keep, NULL) == -1) {
      fprintf (stderr, "retention_dump: %s\n", qb_error_msg ());
      return 1;
    }
    clock_gettime (CLOCK_MONOTONIC, &b);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
      kept += keep[i];
    printf ("%zu points, %s order: %zu kept, %.3f s\n", n, pass ? "newest-first" : "time",
            kept, (double) (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
  }
  free (t);
  free (keep);
  return 0;
}

int
main (int argc, char **argv)
{
  store_retention p;

  if (argc == 4 && strcmp (argv[1], "--bench") == 0) {
    if (!dump_policy (argv[3], &p))
      return 1;
    return dump_bench ((size_t) strtoull (argv[2], NULL, 10), &p);
  }
  if (argc != 2) {
    fprintf (stderr, "usage: retention_dump POLICY < times\n"
             "       retention_dump --bench N POLICY\n");
    return 2;
  }
  if (!dump_policy (argv[1], &p))
    return 1;

  size_t n = 0, cap = 0;
  int64_t *t = NULL;
  char line[64];
  while (fgets (line, sizeof line, stdin)) {
    char *end;
    errno = 0;
    long long v = strtoll (line, &end, 10);
    if (end == line || errno || (*end != '\n' && *end != '\0')) {
      fprintf (stderr, "retention_dump: line %zu is not a time in microseconds\n", n + 1);
      return 1;
    }
    if (n == cap) {
      cap = cap ? 2 * cap : 1024;
      if (!(t = realloc (t, cap * sizeof *t))) {
        fprintf (stderr, "retention_dump: out of memory\n");
        return 1;
      }
    }
    t[n++] = v;
  }
  uint8_t *keep = malloc (n ? n : 1);
  const char **why = malloc ((n ? n : 1) * sizeof *why);
  if (!keep || !why) {
    fprintf (stderr, "retention_dump: out of memory\n");
    return 1;
  }
  if (store_retention_select (t, n, &p, keep, why) == -1) {
    fprintf (stderr, "retention_dump: %s\n", qb_error_msg ());
    return 1;
  }
  for (size_t i = 0; i < n; i++) {
    if (keep[i])
      printf ("keep %s\n", why[i]);
    else
      printf ("remove\n");
  }
  free (t);
  free (keep);
  free (why);
  return fflush (stdout) == 0 ? 0 : 1;
}
