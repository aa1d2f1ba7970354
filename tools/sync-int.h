/* qmprebase sync — the file operations of a sync (sync-io.c): copying a
 * layer's data extents and its .chain files into the destination through
 * temps, small files, folders opened without following links.  Used only
 * by sync.c. */
#ifndef QB_TOOLS_SYNC_INT_H
#define QB_TOOLS_SYNC_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The store's layout (store.h). */
#define SYNC_POINTS ".points"
#define SYNC_CHAIN ".chain"
#define SYNC_TMP ".tmp-"
#define SYNC_CHUNK (1024 * 1024)
#define SYNC_SMALL_MAX (16 * 1024 * 1024)   /* a .chain file larger than this is refused */

/* Copy layer LAYER's .chain files from source disk folder SDFD to
 * destination disk folder DDFD (paths SDIR/DDIR in messages): each one
 * missing is written, one present with the same bytes is kept, one with other
 * bytes is an error.  With DRY_RUN only compares.  0 or -1. */
int sync_chain_files (int sdfd, const char *sdir, int ddfd, const char *ddir, const char *layer, bool dry_run);

/* Copy the layer open at SFD (SNAME in messages) to NAME in destination
 * folder DFD (DNAME in messages): data extents only (SEEK_DATA/SEEK_HOLE),
 * into the temp (copy_file_range where the kernel can, else the bytes read),
 * fsync, read back and compare with the hash of what was read from the
 * source, then publish.  Adds the bytes copied to *BYTES.  0 or -1. */
int sync_copy_layer (int sfd, const char *sname, int dfd, const char *name, const char *dname, uint64_t *bytes);

/* Open (with CREATE: make, 0700) folder REL beneath BASE, one component at a
 * time, never through a link.  The descriptor, or -1 with the error set
 * (WHERE names the folder in messages). */
int sync_dir_open (int base, const char *rel, bool create, const char *where);

/* Compare the whole contents of descriptors A and B (same size known): 1 if
 * equal, 0 if not, -1 on a read error (set, naming AN or BN). */
int sync_same_content (int a, const char *an, int b, const char *bn, uint64_t size);

/* True when the per-layer records of LAYER in the two disk folders hold the
 * same bytes; *DST_HAS tells whether the destination has one. */
bool sync_same_record (int sdfd, int ddfd, const char *layer, bool *dst_has);

/* Read the small regular file NAME of folder DFD (never a link) into *DATA
 * (malloc'd) and *LEN: 1, 0 when it does not exist, -1 on error (WHERE names it). */
int sync_small_read (int dfd, const char *name, char **data, size_t *len, const char *where);

/* Write DATA (LEN bytes) as NAME in folder DFD through a temp (0600, fsync,
 * publish).  0 or -1 (WHERE names it). */
int sync_small_write (int dfd, const char *name, const char *data, size_t len, const char *where);

/* Free an array of N strings. */
void sync_strv_free (char **v, size_t n);

#endif
