/* qmpbackupfs — internal declarations of files.c and files-io.c. */
#ifndef QB_FILES_INT_H
#define QB_FILES_INT_H

#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>

#include "fs/files-ntfs.h"
#include "fs/fs.h"

typedef struct files_io_target {
  chain_image *ci;                /* the restore point (owned by the caller) */
  uint64_t start, length;         /* the partition's bytes in it */
} files_io_target;

/* Open the ext2/3/4 file system of T read-only (no journal replay) through
 * the chain reader: 0 and *FS, or a libext2fs error code. */
errcode_t files_io_open (const files_io_target *t, ext2_filsys *fs);

/* One opened file system (or the reason it could not be opened). */
typedef struct fsent {
  uint32_t slot;
  pthread_mutex_t lock;           /* every libext2fs call on fs */
  int refs;                       /* under cache_lock */
  uint64_t used;                  /* LRU tick, under cache_lock */
  bool opened;                    /* under lock: ci/fs/note are final */
  chain_image *ci;
  ext2_filsys fs;                 /* ext, or */
  files_ntfs *ntfs;               /* NTFS */
  char *note;                     /* NULL: fs usable; else NOT-SUPPORTED/ERROR text */
  const char *note_name;
} fsent;

/* An open guest file (fi->fh of files_open). */
typedef struct fhandle {
  fsent *e;                       /* referenced while open (never evicted) */
  ext2_file_t f;                  /* NULL (and NF NULL): a note file */
  files_ntfs_file *nf;            /* an NTFS file */
  const char *text;               /* a note file's text (lives as long as E) */
} fhandle;

/* The cache entry of guest inode INO, referenced, opened and locked, or
 * NULL after replying the error to REQ.  Put it back with fsent_put. */
fsent *entry_or_reply (fuse_req_t req, fuse_ino_t ino);

/* Unlock E and drop the reference of entry_or_reply. */
void fsent_put (fsent *e);

/* Read up to SIZE bytes at OFF of regular file F of E (E locked) straight
 * through the block map, contiguous blocks in one read: 0 and the bytes in
 * *DONE (short only at the end of the file), -errno, or 1 when F needs
 * ext2fs_file_read (inline data, encrypted). */
int ext_read_direct (fsent *e, ext2_file_t f, char *buf, size_t size, uint64_t off,
                     size_t *done);

/* The errno for libext2fs error RC: system errors as they are, the rest EIO. */
int ext_errno (errcode_t rc);

#endif
