/* Fuzz target: partition tables and file system probes (fs/parttab.c).
 *
 * Input: the first bytes of a guest disk; the disk is as long as the input
 * (reads past its end fail, as a short chain read would).  Invariants:
 * every partition returned lies inside the disk, is not empty, numbers rise
 * and there are at most PARTTAB_MAX; no read ever leaves the disk; the
 * number of reads is bounded (no loop on a cyclic extended chain); probes of
 * every partition and of the whole disk never fail. */
#include "fuzz.h"
#include "fs/parttab.h"

#include <string.h>

typedef struct disk {
  const uint8_t *data;
  size_t size;
  unsigned reads;
} disk;

/* parttab read callback over the input. */
static int
rd (void *opaque, void *buf, size_t len, uint64_t off)
{
  disk *d = opaque;
  d->reads++;
  FUZZ_CHECK (d->reads < 4000, "%u reads", d->reads);
  FUZZ_CHECK (len > 0 && len <= 65536, "read of %zu bytes", len);
  if (off > d->size || len > d->size - off)
    return -1;
  memcpy (buf, d->data + off, len);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  disk d = { data, size, 0 };
  parttab_part parts[PARTTAB_MAX];
  parttab_kind kind;
  int n = parttab_read (rd, &d, size, parts, &kind);
  FUZZ_CHECK (n >= -1 && n <= PARTTAB_MAX, "n=%d", n);
  FUZZ_CHECK ((n > 0) == (kind != PARTTAB_NONE), "n=%d kind=%d", n, (int) kind);
  for (int i = 0; i < n; i++) {
    FUZZ_CHECK (parts[i].length > 0 && parts[i].start < size
                && parts[i].length <= size - parts[i].start,
                "partition %d at %llu+%llu outside %zu", parts[i].number,
                (unsigned long long) parts[i].start, (unsigned long long) parts[i].length, size);
    FUZZ_CHECK (i == 0 || parts[i].number > parts[i - 1].number, "numbers not rising");
    parttab_probe_result pr;
    parttab_probe (rd, &d, parts[i].start, parts[i].length, &pr);
    FUZZ_CHECK (!pr.is_ext || pr.fs, "ext without a name");
  }
  parttab_probe_result pr;
  parttab_probe (rd, &d, 0, size, &pr);
  return 0;
}
