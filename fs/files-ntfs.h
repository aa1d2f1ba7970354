/* qmpbackupfs — NTFS of a guest partition read with libntfs-3g over a
 * caller's read function (read-only device operations: writes fail with
 * EROFS).  Standalone (no FUSE), so the fuzzer links it alone.
 *
 * Inodes are "guest inode numbers" as files.c uses them: the MFT record
 * number, except that the root folder (record 5) is 2 like ext's root, and
 * record 2 is 5.  System files (records below 16, the root aside) are never
 * listed nor found, as ntfs-3g hides them.  Owners are not NTFS's (SIDs):
 * the caller fills uid/gid; files are 0444, folders 0555, symbolic links
 * (NTFS symlinks and junctions ntfs-3g can translate, and the Interix
 * symlinks ntfs-3g writes for `ln -s`) 0777.  Other reparse
 * points are listed but their stat fails with EOPNOTSUPP (`ls` shows "?"),
 * as with ntfs-3g without its plugins.  Named data streams are the xattrs
 * user.<stream name>, as ntfs-3g's streams_interface=xattr shows them.
 *
 * libntfs-3g keeps state per volume that is not safe for concurrent use,
 * and its few globals are not documented as thread-safe: every call into it
 * is made under one lock shared by all volumes (NTFS reads are serialised
 * across the daemon; ext is not affected). */
#ifndef QB_FILES_NTFS_H
#define QB_FILES_NTFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "fs/parttab.h"

#define FILES_NTFS_ROOT 2u              /* the guest inode of the root folder */
#define FILES_NTFS_XATTR_MAX (1u << 16) /* bytes of one stream read as an xattr */

typedef struct files_ntfs files_ntfs;           /* one mounted volume */
typedef struct files_ntfs_file files_ntfs_file; /* one opened file */

/* Mount the NTFS at bytes [START, START+LENGTH) of the disk read by RD
 * read-only: the volume, or NULL with a malloc'd reason in *WHY. */
files_ntfs *files_ntfs_open (parttab_read_fn rd, void *opaque, uint64_t start,
                             uint64_t length, char **why);

/* Unmount V (NULL is fine). */
void files_ntfs_close (files_ntfs *v);

/* Fill ST (mode, size, blocks, nlink, times; st_ino, uid, gid are the
 * caller's) for guest inode INO: 0 or -errno. */
int files_ntfs_stat (files_ntfs *v, uint32_t ino, struct stat *st);

/* The guest inode of NAME in folder DIR: 0 and *INO, or -errno. */
int files_ntfs_lookup (files_ntfs *v, uint32_t dir, const char *name, uint32_t *ino);

/* Called per entry of a listing; nonzero stops it. */
typedef int (*files_ntfs_dirent_fn) (void *priv, const char *name, uint32_t ino, mode_t type);

/* List folder DIR (no "." and ".."): 0 or -errno. */
int files_ntfs_readdir (files_ntfs *v, uint32_t dir, files_ntfs_dirent_fn fn, void *priv);

/* The target of symbolic link INO, malloc'd in *TARGET: 0 or -errno. */
int files_ntfs_readlink (files_ntfs *v, uint32_t ino, char **target);

/* Open the unnamed data of regular file INO: 0 and *F, or -errno. */
int files_ntfs_file_open (files_ntfs *v, uint32_t ino, files_ntfs_file **f);

/* Read up to LEN bytes at OFF of F: bytes read (0 at the end), or -errno. */
ssize_t files_ntfs_file_pread (files_ntfs_file *f, void *buf, size_t len, uint64_t off);

/* The size of F's data. */
uint64_t files_ntfs_file_size (files_ntfs_file *f);

/* Close F. */
void files_ntfs_file_close (files_ntfs_file *f);

/* The xattr names of INO ("user.<stream>\0"...), malloc'd in *LIST with
 * *LEN bytes (at most FILES_NTFS_XATTR_MAX): 0 or -errno. */
int files_ntfs_listxattr (files_ntfs *v, uint32_t ino, char **list, size_t *len);

/* The value of xattr NAME of INO, malloc'd in *VAL: 0 and *LEN, or -errno
 * (-ENODATA: no such stream; -E2BIG: larger than FILES_NTFS_XATTR_MAX). */
int files_ntfs_getxattr (files_ntfs *v, uint32_t ino, const char *name, char **val, size_t *len);

#endif
