/* qmpbackupfs — partition tables (MBR with logical partitions, GPT) and
 * file system magic probes, bounded against hostile disks (see parttab.h). */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fs/parttab.h"

#define SECTOR 512u
#define GPT_MAX_ENTRIES 1024u      /* entries scanned at most */
#define GPT_MAX_ENTRY_SIZE 4096u
#define EBR_MAX 64                 /* logical partitions followed at most */
#define GPT_MAX_TABLE (1u << 20)   /* bytes of a GPT entry array (real ones: 16 KiB) */
#define GPT_READ_CHUNK 65536u

/* Little-endian loads. */
static uint16_t le16 (const unsigned char *p) { return p[0] | p[1] << 8; }
static uint32_t le32 (const unsigned char *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}
static uint64_t le64 (const unsigned char *p) { return le32 (p) | (uint64_t) le32 (p + 4) << 32; }

/* Add partition NUMBER at sectors [LBA, LBA+NSECT) if it lies inside the
 * disk and is not empty; returns the new count. */
static int
part_add (parttab_part *parts, int n, int number, uint64_t lba, uint64_t nsect,
          uint64_t disk_size)
{
  uint64_t sectors = disk_size / SECTOR;
  if (n >= PARTTAB_MAX || nsect == 0 || lba == 0 || lba >= sectors || nsect > sectors - lba)
    return n;
  parts[n].number = number;
  parts[n].start = lba * SECTOR;
  parts[n].length = nsect * SECTOR;
  return n + 1;
}

/* True for the MBR types of extended partitions. */
static bool
mbr_is_extended (unsigned type)
{
  return type == 0x05 || type == 0x0f || type == 0x85;
}

/* Follow the chain of extended boot records from sector EXT_LBA (size
 * EXT_NSECT): logical partitions 5.. into PARTS.  Bounded by EBR_MAX and by
 * the extended partition's bounds; a loop cannot go round. */
static int
mbr_logical (parttab_read_fn rd, void *opaque, uint64_t disk_size, uint64_t ext_lba,
             uint64_t ext_nsect, parttab_part *parts, int n)
{
  unsigned char s[SECTOR];
  uint64_t ebr = ext_lba;
  int number = 5;
  for (int k = 0; k < EBR_MAX; k++) {
    if (ebr < ext_lba || ebr - ext_lba >= ext_nsect)
      break;
    if (rd (opaque, s, SECTOR, ebr * SECTOR) < 0 || s[510] != 0x55 || s[511] != 0xaa)
      break;
    const unsigned char *e1 = s + 446, *e2 = s + 462;
    uint64_t lba = (uint64_t) le32 (e1 + 8), nsect = le32 (e1 + 12);
    if (e1[4] != 0 && !mbr_is_extended (e1[4]) && ebr + lba - ext_lba < ext_nsect
        && nsect <= ext_nsect - (ebr + lba - ext_lba))
      n = part_add (parts, n, number, ebr + lba, nsect, disk_size);
    number++;
    uint64_t next = le32 (e2 + 8);
    if (!mbr_is_extended (e2[4]) || next == 0)
      break;
    uint64_t nebr = ext_lba + next;
    if (nebr <= ebr)            /* only forward: no cycles */
      break;
    ebr = nebr;
  }
  return n;
}

/* The GPT header at sector LBA, checked (signature, sizes, header CRC32,
 * its own LBA, the entry array inside the disk and at most GPT_MAX_TABLE
 * bytes, the array's CRC32): the array in *TABLE (malloc'd), its entry
 * count and size, and the header's alternate LBA in *ALT (0 when the
 * header itself is bad).  1: valid; 0: not a valid GPT there; -1: a read
 * failed or no memory. */
static int
gpt_header (parttab_read_fn rd, void *opaque, uint64_t disk_size, uint64_t lba,
            unsigned char **table, uint32_t *count, uint32_t *esize, uint64_t *alt)
{
  unsigned char h[SECTOR];
  uint64_t sectors = disk_size / SECTOR;
  *alt = 0;
  if (lba >= sectors)
    return 0;
  if (rd (opaque, h, SECTOR, lba * SECTOR) < 0)
    return -1;
  if (memcmp (h, "EFI PART", 8) != 0)
    return 0;
  uint32_t hsize = le32 (h + 12), hcrc = le32 (h + 16);
  if (hsize < 92 || hsize > SECTOR)
    return 0;
  memset (h + 16, 0, 4);
  if ((uint32_t) crc32 (0, h, hsize) != hcrc || le64 (h + 24) != lba)
    return 0;
  *alt = le64 (h + 32);
  uint64_t entries_lba = le64 (h + 72);
  uint32_t n = le32 (h + 80), es = le32 (h + 84), ecrc = le32 (h + 88);
  if (es < 128 || es > GPT_MAX_ENTRY_SIZE || es % 8 != 0 || n == 0
      || (uint64_t) n * es > GPT_MAX_TABLE || entries_lba < 2 || entries_lba >= sectors
      || (uint64_t) n * es > disk_size - entries_lba * SECTOR)
    return 0;
  size_t len = (size_t) n * es;
  unsigned char *t = malloc (len);
  if (!t)
    return -1;
  for (size_t off = 0; off < len; off += GPT_READ_CHUNK) {
    size_t k = len - off < GPT_READ_CHUNK ? len - off : GPT_READ_CHUNK;
    if (rd (opaque, t + off, k, entries_lba * SECTOR + off) < 0) {
      free (t);
      return -1;
    }
  }
  if ((uint32_t) crc32 (0, t, len) != ecrc) {
    free (t);
    return 0;
  }
  *table = t;
  *count = n;
  *esize = es;
  return 1;
}

/* Read a GPT: the primary header at sector 1, else its backup (at the
 * primary's alternate LBA, else the disk's last sector), *BACKUP saying
 * which.  0 when neither is valid. */
static int
gpt_read (parttab_read_fn rd, void *opaque, uint64_t disk_size, parttab_part *parts,
          bool *backup)
{
  unsigned char *t = NULL;
  uint32_t count = 0, esize = 0;
  uint64_t alt = 0, sectors = disk_size / SECTOR, alt2;
  *backup = false;
  int r = gpt_header (rd, opaque, disk_size, 1, &t, &count, &esize, &alt);
  if (r == 0) {
    *backup = true;
    if (alt > 1 && alt < sectors)
      r = gpt_header (rd, opaque, disk_size, alt, &t, &count, &esize, &alt2);
    if (r == 0 && alt != sectors - 1)
      r = gpt_header (rd, opaque, disk_size, sectors - 1, &t, &count, &esize, &alt2);
  }
  if (r <= 0)
    return r;
  int n = 0;
  if (count > GPT_MAX_ENTRIES)
    count = GPT_MAX_ENTRIES;
  for (uint32_t i = 0; i < count && n < PARTTAB_MAX; i++) {
    const unsigned char *e = t + (size_t) i * esize;
    static const unsigned char zero[16];
    if (memcmp (e, zero, 16) == 0)
      continue;
    uint64_t first = le64 (e + 32), last = le64 (e + 40);
    if (last < first || last >= sectors)
      continue;
    n = part_add (parts, n, (int) i + 1, first, last - first + 1, disk_size);
  }
  free (t);
  return n;
}

/* Read the partition table: see parttab.h. */
int
parttab_read (parttab_read_fn rd, void *opaque, uint64_t disk_size,
              parttab_part *parts, parttab_kind *kind)
{
  unsigned char s[SECTOR];
  *kind = PARTTAB_NONE;
  if (disk_size < 2 * SECTOR)
    return 0;
  if (rd (opaque, s, SECTOR, 0) < 0)
    return -1;
  if (s[510] != 0x55 || s[511] != 0xaa)
    return 0;
  /* a FAT or NTFS boot sector carries the same signature: no table */
  if (memcmp (s + 3, "NTFS    ", 8) == 0 || memcmp (s + 54, "FAT", 3) == 0
      || memcmp (s + 82, "FAT32", 5) == 0)
    return 0;
  bool protective = false;
  for (int i = 0; i < 4; i++) {
    const unsigned char *e = s + 446 + 16 * i;
    if (e[0] != 0 && e[0] != 0x80)
      return 0;                 /* not a partition table */
    if (e[4] == 0xee)
      protective = true;
  }
  if (protective) {
    bool backup;
    int n = gpt_read (rd, opaque, disk_size, parts, &backup);
    if (n > 0 || n < 0) {
      *kind = n < 0 ? PARTTAB_NONE : backup ? PARTTAB_GPT_BACKUP : PARTTAB_GPT;
      return n;
    }
  }
  int n = 0;
  for (int i = 0; i < 4; i++) {
    const unsigned char *e = s + 446 + 16 * i;
    uint64_t lba = le32 (e + 8), nsect = le32 (e + 12);
    if (e[4] == 0 || e[4] == 0xee)
      continue;
    if (mbr_is_extended (e[4])) {
      if (lba > 0 && lba < disk_size / SECTOR && nsect <= disk_size / SECTOR - lba)
        n = mbr_logical (rd, opaque, disk_size, lba, nsect, parts, n);
      continue;
    }
    n = part_add (parts, n, i + 1, lba, nsect, disk_size);
  }
  /* keep numbers in order (logical partitions were added in between) */
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && parts[j - 1].number > parts[j].number; j--) {
      parttab_part t = parts[j];
      parts[j] = parts[j - 1];
      parts[j - 1] = t;
    }
  if (n > 0)
    *kind = PARTTAB_MBR;
  return n;
}

/* True if the LEN bytes at OFF (inside LENGTH) read and equal MAGIC. */
static bool
magic_at (parttab_read_fn rd, void *opaque, uint64_t start, uint64_t length, uint64_t off,
          const char *magic, size_t len)
{
  unsigned char buf[16];
  if (len > sizeof buf || off > length || len > length - off)
    return false;
  return rd (opaque, buf, len, start + off) == 0 && memcmp (buf, magic, len) == 0;
}

/* Probe the file system at START: see parttab.h. */
void
parttab_probe (parttab_read_fn rd, void *opaque, uint64_t start, uint64_t length,
               parttab_probe_result *res)
{
  memset (res, 0, sizeof *res);
  unsigned char sb[512];
  if (length >= 2048 && rd (opaque, sb, sizeof sb, start + 1024) == 0
      && le16 (sb + 0x38) == 0xef53) {
    res->fs = "ext2/3/4";
    res->is_ext = true;
    res->needs_recovery = (le32 (sb + 0x60) & 0x4) != 0;
    res->has_errors = (le16 (sb + 0x3a) & 0x2) != 0;
    res->ext_name = le32 (sb + 0x60) & (0x40 | 0x80) ? "ext4"   /* INCOMPAT_EXTENTS, 64BIT */
      : le32 (sb + 0x5c) & 0x4 ? "ext3" : "ext2";                  /* COMPAT_HAS_JOURNAL */
    uint32_t log_bs = le32 (sb + 0x18);
    uint64_t blocks = le32 (sb + 0x04);
    if (le32 (sb + 0x60) & 0x80)          /* INCOMPAT_64BIT */
      blocks |= (uint64_t) le32 (sb + 0x150) << 32;
    res->too_big = log_bs > 6 || blocks > (length >> (10 + log_bs));
    return;
  }
  static const struct {
    uint64_t off;
    const char *magic;
    size_t len;
    const char *name;
  } probes[] = {
    { 0, "XFSB", 4, "xfs" },
    { 65536 + 64, "_BHRfS_M", 8, "btrfs" },
    { 3, "NTFS    ", 8, "ntfs" },
    { 82, "FAT32   ", 8, "vfat (FAT32)" },
    { 54, "FAT16   ", 8, "vfat (FAT16)" },
    { 54, "FAT12   ", 8, "vfat (FAT12)" },
    { 0, "LUKS\xba\xbe", 6, "crypto_LUKS (encrypted)" },
    { 512 + 0, "LABELONE", 8, "LVM2 physical volume" },
    { 4096 - 10, "SWAPSPACE2", 10, "swap" },
    { 4096 - 10, "SWAP-SPACE", 10, "swap" },
    { 32768 + 1, "CD001", 5, "iso9660" },
    { 1024 + 0, "\x00\x00\x00\x00", 0, NULL },
  };
  for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
    if (probes[i].name
        && magic_at (rd, opaque, start, length, probes[i].off, probes[i].magic, probes[i].len)) {
      res->fs = probes[i].name;
      res->is_ntfs = strcmp (res->fs, "ntfs") == 0;
      return;
    }
}
