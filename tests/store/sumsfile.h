/* qmpbackupfs — helpers shared by the tests of the checksum files (sums.h):
 * a scratch folder DIR (open as DFD), shell commands run in it, whole files
 * read from it, little-endian numbers. */
#ifndef QB_TESTS_SUMSFILE_H
#define QB_TESTS_SUMSFILE_H

#include "storecheck.h"
#include "common/util.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];
static int dfd;

/* Run the shell command CMD (printf-style) in DIR; REQUIRE it exits 0. */
static void __attribute__ ((format (printf, 1, 2), unused))
sh (const char *fmt, ...)
{
  char cmd[2048];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (cmd, sizeof cmd, fmt, ap);
  va_end (ap);
  char *full = qb_asprintf ("cd '%s' && %s", dir, cmd);
  int r = system (full);
  if (r != 0)
    fprintf (stderr, "command failed (%d): %s\n", r, full);
  REQUIRE (r == 0);
  free (full);
}

/* The whole file REL of DIR into *LEN bytes (malloc'd). */
static __attribute__ ((unused)) uint8_t *
slurp (const char *rel, size_t *len)
{
  int fd = openat (dfd, rel, O_RDONLY);
  REQUIRE (fd >= 0);
  struct stat sb;
  REQUIRE (fstat (fd, &sb) == 0);
  uint8_t *p = malloc ((size_t) sb.st_size + 1);
  REQUIRE (p && pread (fd, p, (size_t) sb.st_size, 0) == sb.st_size);
  close (fd);
  *len = (size_t) sb.st_size;
  return p;
}

/* The little-endian 64-bit number at P. */
static __attribute__ ((unused)) uint64_t
get64 (const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

#endif
