/* qmpbackupfs — the qcow2 chain reader: a restore point as raw bytes.
 *
 * chain_open takes the layer files of one restore point, base first, in the
 * order the store gives (never from backing names inside the images), and
 * builds once, from the L1/L2 tables, a map of which layer owns each cluster
 * and how (data at a host offset, compressed, zero, unallocated).  Reads then
 * need no walk of the chain.  Uncompressed data is read with pread from the
 * layer's file; compressed clusters through libqcow; zero clusters (qcow2 v3,
 * which Debian's libqcow misreads as header bytes) and unallocated ranges read
 * as zeros.  Damaged metadata or an unreadable layer never yields other bytes:
 * chain_open or the read that needs it fails with QB_EDAMAGED/QB_EIO.
 *
 * Errors of chain_open/chain_open_fds: QB_EDAMAGED for bad content (not a
 * qcow2 image, tables outside the file or shared, a missing layer, a layer
 * that is a symbolic link or not a regular file); QB_EAGAIN or QB_ENOMEM
 * (qb_err_is_transient) when descriptors or memory ran out for a moment,
 * which is never damage: the same call may succeed later; QB_EIO for I/O
 * errors; QB_EINVAL for a bad layer count.  Memory is bounded by the layers'
 * file sizes, never by what their tables claim; no allocation failure aborts.
 *
 * A chain_image may be read from many threads at once. */
#ifndef QB_CHAIN_H
#define QB_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct chain_image chain_image;

/* Open the restore point made of FILES[0] (FULL or COPY) .. FILES[N-1] (the
 * point itself).  The last component of each path is opened O_NOFOLLOW (a
 * symbolic link is damage); the store's callers use store_point_open, which
 * follows no link anywhere below the store root. */
chain_image *chain_open (const char *const *files, size_t n);

/* Like chain_open, on the open files FDS[0..N-1] (read-only, regular files)
 * named NAMES[i] in messages.  Takes every descriptor, also on failure. */
chain_image *chain_open_fds (const int *fds, const char *const *names, size_t n);

/* The restore point PREV plus one layer on top: the open file FD (read-only,
 * a regular file, taken also on failure) named NAME.  Built from a copy of
 * PREV's map and the new layer's tables only, so opening the points of a
 * chain one after the other costs one layer each.  The new layer must have
 * PREV's virtual size and no finer clusters than PREV's layers (else
 * QB_EINVAL: open the point with chain_open_fds); PREV's descriptors are
 * duplicated, PREV stays open.  NULL with the errors of chain_open_fds. */
chain_image *chain_extend (const chain_image *prev, int fd, const char *name);

/* Number of layers of CI. */
size_t chain_layers (const chain_image *ci);

/* The descriptor of layer I of CI (owned by CI), or -1. */
int chain_layer_fd (const chain_image *ci, size_t i);

/* Record the error of layer I (PATH) that could not be opened with ERRNUM,
 * as chain_open words it (ENOENT, ELOOP: QB_EDAMAGED; EMFILE, ENFILE,
 * ENOMEM, EAGAIN, EINTR: QB_EAGAIN/QB_ENOMEM).  Returns -1. */
int chain_open_error (int errnum, size_t i, const char *path);

/* Close and free. NULL is fine. */
void chain_close (chain_image *ci);

/* Virtual size of the restore point (that of the top layer). */
uint64_t chain_size (const chain_image *ci);

/* Bytes of data the layers really store for this point (for st_blocks). */
uint64_t chain_allocated_bytes (const chain_image *ci);

/* Read LEN bytes at OFF into BUF (reads past the end are short).  Returns
 * the number of bytes read, or -1 (QB_EIO / QB_EDAMAGED).  Thread-safe. */
ssize_t chain_pread (chain_image *ci, void *buf, size_t len, uint64_t off);

typedef enum chain_extent_kind {
  CHAIN_EXT_DATA,     /* the bytes are in file FD at FD_OFFSET: may be spliced */
  CHAIN_EXT_ZERO,     /* reads as zeros (zero cluster, unallocated, past a layer's end) */
  CHAIN_EXT_OTHER,    /* needs chain_pread (e.g. compressed clusters) */
} chain_extent_kind;

typedef struct chain_extent {
  chain_extent_kind kind;
  uint64_t length;    /* bytes from the requested offset with this kind (> 0) */
  int fd;             /* CHAIN_EXT_DATA: the layer file (owned by the image) */
  uint64_t fd_offset; /* CHAIN_EXT_DATA: where the bytes start in FD */
} chain_extent;

/* Describe the bytes at OFF (< chain_size): the longest run up to MAXLEN of
 * one kind (for DATA: contiguous in one file).  0, or -1 (QB_EDAMAGED). */
int chain_extent_at (chain_image *ci, uint64_t off, uint64_t maxlen, chain_extent *ext);

/* SEEK_DATA / SEEK_HOLE semantics over the restore point: the first offset
 * >= OFF that is data (any kind but ZERO) or a hole.  -1 with QB_ENOENT when
 * there is no data at or after OFF (callers map that to ENXIO). */
int64_t chain_seek (chain_image *ci, uint64_t off, int whence);

/* Check that every byte of the restore point resolves (no damaged metadata,
 * no data outside a file).  0, or -1 with QB_EDAMAGED naming the first bad
 * offset.  Walks the map, not the data: it cannot see flipped data bytes. */
int chain_verify (chain_image *ci);

#endif
