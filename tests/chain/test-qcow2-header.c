/* Unit test of the qcow2 header parser and L1/L2 entry decoding on
 * hand-made buffers (no files, no QEMU). */
#include "store/qcow2.h"
#include "common/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond) do { if (!(cond)) { \
  fprintf (stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond, qb_error_msg ()); \
  failures++; } } while (0)

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

/* A valid header: version V, 64 KiB clusters, 1 GiB, L1 at 196608. */
static void
make_header (uint8_t *b, uint32_t v)
{
  memset (b, 0, QCOW2_HEADER_BYTES);
  put32 (b, 0x514649fb);
  put32 (b + 4, v);
  put32 (b + 20, 16);
  put64 (b + 24, 1ull << 30);
  put32 (b + 36, 2);
  put64 (b + 40, 196608);
  put64 (b + 48, 65536);
  put32 (b + 56, 1);
  if (v == 3) {
    put32 (b + 96, 4);
    put32 (b + 100, 112);
  }
}

int
main (void)
{
  uint8_t b[QCOW2_HEADER_BYTES];
  qcow2_header h;
  const uint64_t fsize = 1u << 20;
  uint64_t off;

  make_header (b, 2);
  CHECK (qcow2_header_parse (b, sizeof b, "v2", &h) == 0);
  CHECK (h.version == 2 && h.cluster_bits == 16 && h.size == 1ull << 30);
  CHECK (h.header_length == 72 && h.l1_size == 2 && h.l1_offset == 196608);
  CHECK (qcow2_l1_needed (&h) == 2);
  CHECK (qcow2_header_check (&h, fsize, "v2") == 0);
  CHECK (qcow2_header_parse (b, 71, "short", &h) < 0 && qb_error_code () == QB_EDAMAGED);

  make_header (b, 3);
  CHECK (qcow2_header_parse (b, sizeof b, "v3", &h) == 0);
  CHECK (h.version == 3 && h.header_length == 112);
  CHECK (qcow2_header_check (&h, fsize, "v3") == 0);
  CHECK (qcow2_header_parse (b, 100, "short v3", &h) < 0);

  /* Refusals in the header itself. */
  make_header (b, 3); b[0] = 'X';
  CHECK (qcow2_header_parse (b, sizeof b, "magic", &h) < 0 && qb_error_code () == QB_EDAMAGED);
  CHECK (strstr (qb_error_msg (), "magic") != NULL);
  make_header (b, 4);
  CHECK (qcow2_header_parse (b, sizeof b, "version", &h) < 0);
  make_header (b, 3); put32 (b + 20, 8);
  CHECK (qcow2_header_parse (b, sizeof b, "cbits", &h) < 0);
  make_header (b, 3); put32 (b + 20, 22);
  CHECK (qcow2_header_parse (b, sizeof b, "cbits", &h) < 0);
  make_header (b, 3); put32 (b + 100, 100);
  CHECK (qcow2_header_parse (b, sizeof b, "hlen", &h) < 0);

  /* Refusals of what the reader cannot read. */
  struct { int off; uint64_t v; int is64; const char *word; } bad[] = {
    { 32, 1, 0, "encrypted" },
    { 72, 2, 1, "corrupt" },
    { 72, 4, 1, "external data file" },
    { 72, 16, 1, "extended L2" },
    { 72, 1ull << 40, 1, "incompatible" },
    { 36, 1, 0, "L1 table size" },
    { 36, 0x7fffffff, 0, "L1 table size" },
    { 48, 65537, 1, "refcount table" },
    { 48, 1u << 20, 1, "refcount table" },
    { 56, 17, 0, "refcount table" },
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    make_header (b, 3);
    if (bad[i].is64)
      put64 (b + bad[i].off, bad[i].v);
    else
      put32 (b + bad[i].off, (uint32_t) bad[i].v);
    CHECK (qcow2_header_parse (b, sizeof b, "x", &h) == 0);
    CHECK (qcow2_header_check (&h, fsize, "x") < 0 && qb_error_code () == QB_EDAMAGED);
    CHECK (strstr (qb_error_msg (), bad[i].word) != NULL);
  }
  make_header (b, 3); put64 (b + 72, 8); b[104] = 1;   /* zstd */
  CHECK (qcow2_header_parse (b, sizeof b, "zstd", &h) == 0);
  CHECK (qcow2_header_check (&h, fsize, "zstd") < 0 && strstr (qb_error_msg (), "compression"));
  make_header (b, 3); put64 (b + 72, 8);                /* bit set, zlib */
  CHECK (qcow2_header_parse (b, sizeof b, "zlib", &h) == 0 && qcow2_header_check (&h, fsize, "zlib") == 0);
  make_header (b, 3); put64 (b + 72, 1);                /* dirty is fine */
  CHECK (qcow2_header_parse (b, sizeof b, "dirty", &h) == 0 && qcow2_header_check (&h, fsize, "dirty") == 0);
  make_header (b, 3);
  CHECK (qcow2_header_parse (b, sizeof b, "l1", &h) == 0);
  CHECK (qcow2_header_check (&h, 196608 + 8, "l1 beyond eof") < 0);
  h.l1_offset = 4096;
  CHECK (qcow2_header_check (&h, fsize, "l1 misaligned") < 0);

  /* L1 entries. */
  make_header (b, 3);
  qcow2_header_parse (b, sizeof b, "v3", &h);
  CHECK (qcow2_l1_decode (0, &h, fsize, &off) == 0 && off == 0);
  CHECK (qcow2_l1_decode ((1ull << 63) | 0x30000, &h, fsize, &off) == 0 && off == 0x30000);
  CHECK (qcow2_l1_decode (0x30001, &h, fsize, &off) < 0);            /* reserved bit */
  CHECK (qcow2_l1_decode (0x31000, &h, fsize, &off) < 0);            /* misaligned */
  CHECK (qcow2_l1_decode (fsize, &h, fsize, &off) < 0);              /* beyond EOF */
  CHECK (qcow2_l1_decode (fsize - 65536, &h, fsize, &off) == 0);     /* last cluster */

  /* L2 entries. */
  CHECK (qcow2_l2_decode (0, &h, fsize, 65536, &off) == QCOW2_UNALLOCATED);
  CHECK (qcow2_l2_decode (1, &h, fsize, 65536, &off) == QCOW2_ZERO);
  CHECK (qcow2_l2_decode (0x50000 | 1, &h, fsize, 65536, &off) == QCOW2_ZERO);
  CHECK (qcow2_l2_decode ((1ull << 63) | 0x50000, &h, fsize, 65536, &off) == QCOW2_DATA && off == 0x50000);
  CHECK (qcow2_l2_decode (0x50000 | (1ull << 56), &h, fsize, 65536, &off) == QCOW2_BAD);
  CHECK (qcow2_l2_decode (0x50000 | 2, &h, fsize, 65536, &off) == QCOW2_BAD);
  CHECK (qcow2_l2_decode (0x50200, &h, fsize, 65536, &off) == QCOW2_BAD);
  CHECK (qcow2_l2_decode (fsize, &h, fsize, 65536, &off) == QCOW2_BAD);
  CHECK (qcow2_l2_decode (fsize - 32768, &h, fsize, 65536, &off) == QCOW2_BAD);
  CHECK (qcow2_l2_decode (fsize - 65536, &h, fsize, 65536, &off) == QCOW2_DATA);
  /* Compressed, 64 KiB clusters: offset in bits 0..53, sectors above. */
  uint64_t c = (1ull << 62) | (3ull << 54) | 0x40123;
  CHECK (qcow2_l2_decode (c, &h, fsize, 65536, &off) == QCOW2_COMPRESSED && off == 0x40123);
  CHECK (qcow2_l2_decode ((1ull << 62) | fsize, &h, fsize, 65536, &off) == QCOW2_BAD);
  CHECK (qcow2_l2_decode (c | (1ull << 63), &h, fsize, 65536, &off) == QCOW2_BAD);

  if (failures)
    fprintf (stderr, "%d check(s) failed\n", failures);
  else
    printf ("qcow2 header and entry decoding: all checks passed\n");
  return failures ? 1 : 0;
}
