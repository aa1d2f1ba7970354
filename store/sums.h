/* qmpbackupfs — per-cluster checksums of a layer, and verifying a layer
 * against them.
 *
 * The qcow2 reader (chain.c) notices damaged METADATA; a flipped byte inside
 * a data cluster reads back as wrong bytes without any error.  So every
 * layer gets, when it is committed, a checksum (XXH3-64) of each cluster its
 * own L1/L2 tables allocate, in a file beside its record:
 *
 *   <disk dir>/.chain/<layer>.sums         the checksums (format below)
 *   <disk dir>/.chain/<layer>.verify.json  the result of the last verify
 *
 * A verify re-reads every allocated cluster of the layer, compares it with
 * the sums, and checks the qcow2 structure as chain_verify does; the result
 * is kept in <layer>.verify.json, which store_scan_vm reads: a layer whose
 * last verify found damage is damaged (and so is every later point of its
 * chain), so it is never served and never continued by an incremental.
 *
 * .sums format, version 1 (all integers little-endian):
 *
 *   header, 128 bytes:
 *     0   magic "QBSUMS\r\n"
 *     8   u32 version (1)
 *     12  u32 cluster_bits of the layer
 *     16  u64 virtual size of the layer
 *     24  u64 the layer file's length when summed
 *     32  u64 count: entries that follow
 *     40  u64 bytes summed (data and compressed)
 *     48  i64 when written, UTC microseconds since the epoch
 *     56  char[64] the layer's name, NUL-padded (truncated to 63 bytes)
 *     120 u64 reserved (0)
 *   count entries, 24 bytes each, in strictly ascending guest order:
 *     0   u64 guest offset of the cluster | kind in the low 9 bits
 *         (0 data, 1 zero, 2 compressed, 3 invalid L2 entry)
 *     8   u64 host offset in the layer file (0 for zero / invalid)
 *     16  u64 XXH3-64 of the bytes (0 for zero / invalid)
 *   trailer, 8 bytes: XXH3-64 (seed: XXH3-64 of all entry bytes) of the
 *     header.  A file whose trailer does not match is "sums damaged", told
 *     apart from a damaged layer.
 *
 * A data cluster is summed over the guest bytes it holds (the cluster, or
 * less for the last one of a virtual size that is no multiple of it).  A
 * compressed cluster is summed over its COMPRESSED bytes as stored: they
 * are what can rot, checking them needs no decompression and no layer
 * below (an INC's compressed clusters can only be decompressed through its
 * backing chain), and any flip in them changes the sum.  The bytes are those
 * its L2 entry names (whole 512-byte sectors, as QEMU reads them), which may
 * hold the start of the next compressed cluster: a flip there marks both.  Zero clusters hold
 * no data and are recorded as zero; unallocated clusters are not listed.
 *
 * Writing sums reads and hashes the layer in batches of clusters, each cut
 * into slices hashed by one thread each (up to the CPUs online, at most 4):
 * the bytes hashed are always those read back from the layer file.
 *
 * Reading a .sums file is streamed with fixed buffers: memory never depends
 * on what the file claims, and a file bigger than the layer's virtual size
 * could need is refused as damaged. */
#ifndef QB_SUMS_H
#define QB_SUMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "store.h"

/* Compute the sums of layer NAME (a qcow2 file) in disk folder DIRFD and
 * write them as .chain/NAME.sums, atomically (0600 temp with O_EXCL and
 * O_NOFOLLOW, fsync, rename, fsync .chain; .chain made 0700 if missing);
 * a previous verify record of NAME is removed (it judged other bytes).
 * No link is followed.  0, or -1 (QB_EDAMAGED when NAME is no readable
 * qcow2 image, the store's I/O errors otherwise). */
int store_sums_write (int dirfd, const char *layer);

/* Like store_sums_write, computed from FILE in DIRFD (e.g. the temporary
 * ".tmp-NAME" being committed) and recorded as layer NAME. */
int store_sums_write_file (int dirfd, const char *file, const char *layer);

/* Like store_sums_write_file, but nothing is fsynced: the sums are written
 * and renamed into place, and the caller makes them durable (fsync of
 * .chain/NAME.sums and of .chain) before anything relies on them.  Only for
 * a layer not committed yet: a crash before those fsyncs may leave a
 * partial .sums, which recovery removes with the uncommitted layer. */
int store_sums_write_unsynced (int dirfd, const char *file, const char *layer);

/* Remove .chain/NAME.sums and .chain/NAME.verify.json of disk folder
 * DIRFD (none is fine).  0, or -1. */
int store_sums_remove (int dirfd, const char *layer);

/* What a verify found in one layer. */
typedef enum store_verify_result {
  STORE_VERIFY_OK,            /* every cluster matches its sum, structure whole */
  STORE_VERIFY_DAMAGED,       /* clusters differ, or the qcow2 structure is damaged */
  STORE_VERIFY_UNVERIFIABLE,  /* no sums (older layers, the Python qmpbackup's) */
  STORE_VERIFY_SUMS_DAMAGED,  /* the .sums file itself is damaged: the layer is not judged */
  STORE_VERIFY_GONE,          /* the layer vanished (a rewrite removed it): no damage */
} store_verify_result;

#define STORE_VERIFY_LISTED 16        /* damaged clusters listed by offset */

typedef struct store_verify_report {
  store_verify_result result;
  uint64_t clusters;          /* clusters compared with their sums */
  uint64_t bytes;             /* bytes read from the layer to do so */
  uint64_t damaged;           /* damaged clusters */
  size_t nlisted;             /* the first ones: */
  uint64_t guest[STORE_VERIFY_LISTED];   /* guest offset */
  uint64_t host[STORE_VERIFY_LISTED];    /* host offset in the layer (0: none) */
  char why[512];              /* structure damage, sums damage, or why unverifiable */
  struct stat sb;             /* the layer file as verified */
} store_verify_report;

/* The word for R: "ok", "damaged", "unverifiable", "sums-damaged", "gone". */
const char *store_verify_result_word (store_verify_result r);

/* Verify layer NAME of disk folder DIRFD: re-read every cluster its tables
 * allocate and compare with .chain/NAME.sums, and check its qcow2 structure
 * (chain_verify on the layer alone).  Needs no lock: a layer removed
 * meanwhile is GONE, not damaged.  0 with *REP filled, or -1 only when
 * descriptors or memory ran out (QB_EAGAIN/QB_ENOMEM: nothing judged). */
int store_verify_layer (int dirfd, const char *layer, store_verify_report *rep);

/* Keep REP (made at TIME_US) as .chain/NAME.verify.json of disk folder
 * DIRFD, atomically.  GONE is not kept.  0, or -1. */
int store_verify_save (int dirfd, const char *layer, const store_verify_report *rep,
                       int64_t time_us);

/* The damage text of layer NAME of disk folder DIRFD when its last kept
 * verify found damage and SB (the layer file now) is the file it judged
 * (same length and modification time; not the inode, so a copy made with
 * cp -a or rsync -a keeps the finding, and a layer put back from elsewhere
 * stays damaged until a verify finds it whole): "verify at <time> found N
 * damaged clusters at guest offsets ...; restore from another point"
 * (malloc'd); else NULL (no error recorded). */
char *store_verify_damage (int dirfd, const char *layer, const struct stat *sb);

/* Verify LAYER of a scan of ST (its folder opened beneath the root with no
 * link followed) and keep the result as store_verify_save does.  0 with
 * *REP filled, or -1 (resources ran out, or the folder is not reachable). */
int store_verify_store_layer (store *st, const store_layer *layer, store_verify_report *rep);

#endif
