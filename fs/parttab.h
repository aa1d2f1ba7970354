/* qmpbackupfs — partition tables (MBR, GPT) and file system probes of a
 * guest disk, read through a caller's read function.
 *
 * The guest is an adversary: every count, offset and length read from the
 * disk is checked against the disk size before use, GPT entry counts and
 * sizes are capped, the extended-partition chain is bounded, and nothing is
 * allocated from what the disk claims.  Sectors are 512 bytes. */
#ifndef QB_PARTTAB_H
#define QB_PARTTAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PARTTAB_MAX 128           /* partitions reported at most */

/* Read LEN bytes at OFF of the disk into BUF: 0, or -1 (unreadable). */
typedef int (*parttab_read_fn) (void *opaque, void *buf, size_t len, uint64_t off);

typedef struct parttab_part {
  int number;                     /* 1.. as Linux numbers them (MBR logical: 5..) */
  uint64_t start, length;         /* bytes, inside the disk */
} parttab_part;

/* PARTTAB_GPT_BACKUP: a GPT read from its backup header and array, the
 * primary one being damaged (bad CRC32 of its header or entry array). */
typedef enum parttab_kind { PARTTAB_NONE, PARTTAB_MBR, PARTTAB_GPT, PARTTAB_GPT_BACKUP } parttab_kind;

/* Read the partition table of a disk of DISK_SIZE bytes: fills PARTS (up to
 * PARTTAB_MAX, sorted by number) and returns how many, with the table's
 * kind in *KIND (PARTTAB_NONE and 0 partitions: no table, the disk is one
 * file system).  A GPT counts only with valid CRC32s (header and entry
 * array, as UEFI checks them); when the primary is bad the backup is used;
 * when both are bad the MBR entries (other than the protective one) are
 * read.  -1 when sector 0 or a GPT header or array cannot be read. */
int parttab_read (parttab_read_fn rd, void *opaque, uint64_t disk_size,
                  parttab_part *parts, parttab_kind *kind);

typedef struct parttab_probe_result {
  const char *fs;                 /* "ext2/3/4", "xfs", ..., or NULL: unknown */
  const char *ext_name;           /* ext: "ext4" (extents or 64bit), "ext3" (journal), "ext2" */
  bool is_ext;                    /* ext2/3/4: libext2fs can read it */
  bool is_ntfs;                   /* NTFS (boot sector magic): libntfs-3g may read it */
  bool needs_recovery;            /* ext: the journal has not been replayed */
  bool has_errors;                /* ext: the file system recorded errors */
  bool too_big;                   /* ext: its superblock claims more blocks than the
                                   * partition holds, or a bad block size */
} parttab_probe_result;

/* Probe the magic bytes of the LENGTH bytes at START: which file system (or
 * LVM, swap, LUKS) is there.  Never fails: unreadable is unknown. */
void parttab_probe (parttab_read_fn rd, void *opaque, uint64_t start, uint64_t length,
                    parttab_probe_result *res);

#endif
