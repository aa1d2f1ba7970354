/* Fuzz target: partition tables and file system probes (fs/parttab.c).
 *
 * Input: the first bytes of a guest disk; the disk is as long as the input
 * (reads past its end fail, as a short chain read would).  Invariants:
 * every partition returned lies inside the disk, is not empty, numbers rise
 * and there are at most PARTTAB_MAX; no read ever leaves the disk; the
 * number of reads is bounded (no loop on a cyclic extended chain); probes of
 * every partition and of the whole disk never fail.  When the input's
 * byte 0 has its low bit set (sector 0's boot code: no parser looks at it),
 * the CRC32s of the GPT header at sector 1 and of its entry array are made
 * right first, so the fuzzer reaches the entries behind the checks. */
#include "fuzz.h"
#include "fs/parttab.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

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

/* Little-endian load and store. */
static uint32_t ld32 (const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t) p[3] << 24; }
static void st32 (uint8_t *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }

/* Make the CRC32s of the GPT at sector 1 of D (SIZE bytes) right, where
 * they lie inside D. */
static void
fix_gpt_crcs (uint8_t *d, size_t size)
{
  if (size < 1024)
    return;
  uint8_t *h = d + 512;
  uint64_t elba = ld32 (h + 72) | (uint64_t) ld32 (h + 76) << 32;
  uint64_t len = (uint64_t) ld32 (h + 80) * ld32 (h + 84);
  if (elba < size / 512 && len <= size - elba * 512)
    st32 (h + 88, crc32 (0, d + elba * 512, len));
  uint32_t hs = ld32 (h + 12);
  if (hs >= 92 && hs <= 512) {
    st32 (h + 16, 0);
    st32 (h + 16, crc32 (0, h, hs));
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  uint8_t *copy = NULL;
  if (size > 0 && (data[0] & 1)) {
    copy = malloc (size);
    if (!copy)
      return 0;
    memcpy (copy, data, size);
    fix_gpt_crcs (copy, size);
    data = copy;
  }
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
  free (copy);
  return 0;
}
