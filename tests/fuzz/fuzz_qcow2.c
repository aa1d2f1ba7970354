/* Fuzz target: qcow2 header and table entry decoding (store/qcow2.c).
 *
 * Input: the start of a qcow2 file.  The file size the checks are made
 * against is the input's size, or (when the input ends in "SIZE" and 8
 * bytes) a size of the fuzzer's choice.  Invariants: whatever the header
 * check accepts and the entry decoders return lies inside that file, is
 * aligned as qcow2 requires, and covers the virtual size; an accepted L1
 * table has at most 4 Mi entries and a refcount table lies in the file. */
#include "fuzz.h"
#include "common/error.h"
#include "store/qcow2.h"

#include <string.h>

/* Big-endian 64-bit value at P. */
static uint64_t
be64 (const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v = v << 8 | p[i];
  return v;
}

/* Check the contract of qcow2_l2_decode for entry E. */
static void
check_l2 (uint64_t e, const qcow2_header *h, uint64_t fsize, uint64_t needed)
{
  uint64_t cluster = 1ull << h->cluster_bits, host = 12345;
  qcow2_kind k = qcow2_l2_decode (e, h, fsize, needed, &host);
  switch (k) {
  case QCOW2_DATA:
    FUZZ_CHECK (host != 0 && (host & (cluster - 1)) == 0, "data at %llu", (unsigned long long) host);
    FUZZ_CHECK (host <= fsize && needed <= fsize - host, "data cluster at %llu past the file (%llu)",
                (unsigned long long) host, (unsigned long long) fsize);
    break;
  case QCOW2_COMPRESSED:
    FUZZ_CHECK (host != 0 && host < fsize, "compressed data at %llu past the file (%llu)",
                (unsigned long long) host, (unsigned long long) fsize);
    break;
  case QCOW2_UNALLOCATED:
  case QCOW2_ZERO:
  case QCOW2_BAD:
    FUZZ_CHECK (host == 0, "host offset set for kind %d", k);
    break;
  default:
    FUZZ_CHECK (0, "unknown kind %d", k);
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  uint64_t fsize = size;
  if (size >= 12 && memcmp (data + size - 12, "SIZE", 4) == 0) {
    fsize = be64 (data + size - 8);
    size -= 12;
  }
  qcow2_header h;
  qb_error_clear ();
  if (qcow2_header_parse (data, size, "fuzz", &h) < 0) {
    FUZZ_CHECK (qb_error_code () == QB_EDAMAGED, "parse: %s", qb_error_msg ());
    return 0;
  }
  FUZZ_CHECK (h.version == 2 || h.version == 3, "version %u", h.version);
  FUZZ_CHECK (h.cluster_bits >= 9 && h.cluster_bits <= 21, "cluster bits %u", h.cluster_bits);
  FUZZ_CHECK (h.header_length <= (1u << h.cluster_bits), "header length %u", h.header_length);
  if (qcow2_header_check (&h, fsize, "fuzz") < 0) {
    FUZZ_CHECK (qb_error_code () == QB_EDAMAGED, "check: %s", qb_error_msg ());
    return 0;
  }
  uint64_t cluster = 1ull << h.cluster_bits;
  uint64_t span = 1ull << (2 * h.cluster_bits - 3);
  uint64_t need = qcow2_l1_needed (&h);
  FUZZ_CHECK (need <= h.l1_size, "L1 needs %llu entries, has %u", (unsigned long long) need, h.l1_size);
  FUZZ_CHECK (need * span >= h.size && (need == 0 || (need - 1) * span < h.size),
              "L1 of %llu entries does not just cover %llu bytes",
              (unsigned long long) need, (unsigned long long) h.size);
  FUZZ_CHECK (h.l1_size <= 4u * 1024 * 1024, "L1 table of %u entries accepted", h.l1_size);
  if (h.refcount_clusters > 0)
    FUZZ_CHECK (h.refcount_offset != 0 && (h.refcount_offset & (cluster - 1)) == 0
                && h.refcount_offset < fsize
                && h.refcount_clusters <= (fsize - h.refcount_offset + cluster - 1) / cluster,
                "refcount table at %llu (%u clusters) outside the file (%llu)",
                (unsigned long long) h.refcount_offset, h.refcount_clusters,
                (unsigned long long) fsize);
  if (need == 0)
    return 0;
  FUZZ_CHECK (h.l1_offset != 0 && (h.l1_offset & (cluster - 1)) == 0
              && h.l1_offset <= fsize && need * 8 <= fsize - h.l1_offset,
              "L1 at %llu (%llu entries) outside the file (%llu)",
              (unsigned long long) h.l1_offset, (unsigned long long) need,
              (unsigned long long) fsize);

  /* The L1 entries the input holds, then its words as L2 entries. */
  for (uint64_t i = 0; i < need && h.l1_offset + 8 * i + 8 <= size; i++) {
    uint64_t l2 = 1;
    if (qcow2_l1_decode (be64 (data + h.l1_offset + 8 * i), &h, fsize, &l2) < 0) {
      FUZZ_CHECK (l2 == 0, "rejected L1 entry gives an offset");
      continue;
    }
    FUZZ_CHECK ((l2 & (cluster - 1)) == 0 && (l2 == 0 || (l2 <= fsize && cluster <= fsize - l2)),
                "L2 table at %llu outside the file (%llu)", (unsigned long long) l2,
                (unsigned long long) fsize);
  }
  for (size_t off = 0; off + 8 <= size && off < 64 * 1024; off += 8) {
    uint64_t g = (off / 8) * cluster;
    uint64_t needed = g < h.size ? (h.size - g < cluster ? h.size - g : cluster) : cluster;
    check_l2 (be64 (data + off), &h, fsize, needed);
  }
  return 0;
}
