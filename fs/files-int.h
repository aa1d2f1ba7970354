/* qmpbackupfs — internal declarations of files.c and files-io.c. */
#ifndef QB_FILES_INT_H
#define QB_FILES_INT_H

#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>

#include "fs/fs.h"

typedef struct files_io_target {
  chain_image *ci;                /* the restore point (owned by the caller) */
  uint64_t start, length;         /* the partition's bytes in it */
} files_io_target;

/* Open the ext2/3/4 file system of T read-only (no journal replay) through
 * the chain reader: 0 and *FS, or a libext2fs error code. */
errcode_t files_io_open (const files_io_target *t, ext2_filsys *fs);

#endif
