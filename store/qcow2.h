/* qmpbackupfs — reading qcow2 metadata directly (docs/interop/qcow2.txt):
 * header, L1 and L2 tables, for the chain reader's cluster map.  Every
 * offset and size read from a file is checked against the file before use. */
#ifndef QB_QCOW2_H
#define QB_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Read the virtual size from the qcow2 header of the file at PATH.
 * 0, or -1 (QB_EDAMAGED if not a qcow2 image, QB_EIO/QB_ENOENT otherwise). */
int qcow2_virtual_size (const char *path, uint64_t *size);

/* Bytes of a file that hold every header field this module reads. */
#define QCOW2_HEADER_BYTES 112

/* The header fields the chain reader needs, in host byte order. */
typedef struct qcow2_header {
  uint32_t version;        /* 2 or 3 */
  uint64_t backing_offset; /* where the backing file name is, 0 if none */
  uint32_t backing_size;   /* its length */
  uint32_t cluster_bits;   /* 9 .. 21 */
  uint64_t size;           /* virtual size in bytes */
  uint32_t crypt_method;
  uint32_t l1_size;        /* entries in the active L1 table */
  uint64_t l1_offset;
  uint64_t refcount_offset;   /* the refcount table */
  uint32_t refcount_clusters; /* its length in clusters */
  uint64_t incompatible;   /* v3 incompatible feature bits (0 for v2) */
  uint32_t header_length;  /* 72 for v2 */
  uint8_t compression_type;/* 0 = zlib */
} qcow2_header;

/* Decode the header in BUF (the first LEN bytes of a file) and check what
 * every qcow2 file must satisfy: magic, version 2/3, cluster bits, header
 * length.  NAME is used in messages.  0, or -1 with QB_EDAMAGED. */
int qcow2_header_parse (const uint8_t *buf, size_t len, const char *name, qcow2_header *h);

/* Check that this reader can read the image whose header is H, in a file of
 * FILE_SIZE bytes: not encrypted, not marked corrupt, no external data file,
 * no extended L2 entries, zlib compression, no unknown incompatible feature,
 * an L1 table large enough for the virtual size and inside the file, a
 * refcount table inside the file.
 * 0, or -1 with QB_EDAMAGED and a message that names NAME. */
int qcow2_header_check (const qcow2_header *h, uint64_t file_size, const char *name);

/* Read and parse the header of the open file FD; sets *FILE_SIZE too.
 * 0, or -1 (QB_EIO, or QB_EDAMAGED from qcow2_header_parse). */
int qcow2_header_read (int fd, const char *name, qcow2_header *h, uint64_t *file_size);

/* L1 entries needed to cover the virtual size of H. */
uint64_t qcow2_l1_needed (const qcow2_header *h);

/* Decode L1 entry E (host byte order) of image H in a file of FILE_SIZE
 * bytes: *L2_OFFSET = the L2 table's offset, or 0 when the range has no L2
 * table.  0, or -1 when the entry is invalid (reserved bits, misaligned,
 * table outside the file); no error is recorded. */
int qcow2_l1_decode (uint64_t e, const qcow2_header *h, uint64_t file_size, uint64_t *l2_offset);

/* What an L2 entry says about one guest cluster. */
typedef enum qcow2_kind {
  QCOW2_UNALLOCATED,  /* read from the layer below */
  QCOW2_ZERO,         /* reads as zeros */
  QCOW2_DATA,         /* uncompressed, at *HOST in this file */
  QCOW2_COMPRESSED,   /* compressed, starting at *HOST in this file */
  QCOW2_BAD,          /* invalid entry: reading this cluster must fail */
} qcow2_kind;

/* Decode L2 entry E (host byte order) of image H in a file of FILE_SIZE
 * bytes, for a guest cluster of which NEEDED bytes lie inside the virtual
 * size.  Sets *HOST for DATA and COMPRESSED. */
qcow2_kind qcow2_l2_decode (uint64_t e, const qcow2_header *h, uint64_t file_size,
                            uint64_t needed, uint64_t *host);

/* Where the compressed bytes of a COMPRESSED cluster (L2 entry E, host
 * offset HOST from qcow2_l2_decode) lie: *LEN bytes from HOST, clipped to
 * the file of FILE_SIZE bytes. */
void qcow2_compressed_span (uint64_t e, const qcow2_header *h, uint64_t host,
                            uint64_t file_size, uint64_t *len);

/* Called by qcow2_walk for each guest cluster its image allocates: GUEST
 * (cluster aligned), LEN guest bytes inside the virtual size, KIND (never
 * UNALLOCATED), HOST (DATA, COMPRESSED) and the raw L2 entry E.  A non-zero
 * return stops the walk and is returned by it. */
typedef int (*qcow2_walk_fn) (void *opaque, uint64_t guest, uint64_t len, qcow2_kind kind,
                              uint64_t host, uint64_t e);

/* Walk the L1/L2 tables of the qcow2 image H in the open file FD (NAME in
 * messages, FILE_SIZE bytes; H passed qcow2_header_check), in guest order,
 * calling FN for every cluster that is not unallocated.  An invalid L1
 * entry is reported once as QCOW2_BAD at the start of its range, with LEN
 * the range.  Memory: one L1 table (inside the file) and one cluster.
 * 0, FN's non-zero value, or -1 (QB_EIO, QB_ENOMEM). */
int qcow2_walk (int fd, const char *name, const qcow2_header *h, uint64_t file_size,
                qcow2_walk_fn fn, void *opaque);

/* For tests and diagnostics of the chain reader (implemented in chain.c):
 * bytes of memory its cluster map uses, and how many clusters it covers. */
struct chain_image;
size_t chain_map_bytes (const struct chain_image *ci);
uint64_t chain_map_clusters (const struct chain_image *ci);

/* Whether qcow2_create_empty makes the image for these parameters: SIZE a
 * non-zero multiple of 512 within qcow2's L1 limit, CLUSTER_SIZE 64 KiB,
 * BACKING (or NULL) 1 .. 1023 bytes with a format name BACKING_FMT of
 * 1 .. 31 bytes.  1 or 0 (then QEMU's blockdev-create must make it). */
int qcow2_create_supported (uint64_t size, uint64_t cluster_size, const char *backing,
                            const char *backing_fmt);

/* Format the empty regular file at PATH (opened without following links)
 * as an empty qcow2 v3 image of SIZE bytes, byte for byte what QEMU's
 * `qemu-img create -f qcow2 -o compat=1.1[,backing_file=BACKING,
 * backing_fmt=BACKING_FMT]` writes (16-bit refcounts, zlib, no lazy
 * refcounts).  Implemented in qcow2-create.c.  0; 1 when
 * qcow2_create_supported says no (nothing written); -1 with QB_ENOSPC
 * (no room), QB_EIO or QB_ENOENT (the file may hold part of an image). */
int qcow2_create_empty (const char *path, uint64_t size, uint64_t cluster_size,
                        const char *backing, const char *backing_fmt);

#endif
