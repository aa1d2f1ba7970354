/* qmpbackupfs — the guest's files inside every restore point:
 * <vm>/<disk>/files/<point>/p1/... (or .../fs/ for a disk without a
 * partition table), read-only, without root and without the kernel mounting
 * anything.  ext2/3/4 are read in-process with libext2fs through an I/O
 * manager of our own over the chain reader (writes refused), NTFS with
 * libntfs-3g over read-only device operations (files-ntfs.c); other file
 * systems show a folder holding NOT-SUPPORTED.txt.
 *
 * Inode numbers: every (point, partition) gets a slot number the first time
 * it is looked up (slots live as long as the daemon, bounded by what the
 * store ever held); a guest file's FUSE inode is
 * FILES_INO_BIT | slot << 32 | guest inode, so hard links share it, nothing
 * is allocated per guest file and forget has nothing to free.
 *
 * Opened file systems are cached (FILES_CACHE_MAX, least recently used
 * evicted when nobody uses it); libext2fs is not thread-safe per handle, so
 * every call on one is made under that handle's lock.  Guest data is
 * hostile: every libext2fs error becomes EIO, directory listings and link
 * targets are bounded, names holding '/' are skipped. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "common/error.h"
#include "common/util.h"
#include "fs/files-int.h"
#include "fs/parttab.h"

#define FILES_CACHE_MAX 16
#define DIR_MAX_ENTRIES (1u << 20)
#define DIR_MAX_BYTES (64u << 20)     /* of one folder's listing */
#define LINK_MAX_LEN 4096
#define TIMEOUT_GUEST 3600.0
#define NOTE_INO 1                /* the note file of a folder we cannot read */
#define CLEAN_INO 0               /* files/<point>/pN.NOT-CLEAN.txt (no guest inode 0) */
#define TABLE_INO UINT32_MAX      /* files/<point>/GPT-BACKUP.txt (of the point's first slot) */
#define TABLE_NOTE_NAME "GPT-BACKUP.txt"
#define ROOT_INO EXT2_ROOT_INO

/* One (point, partition): where it is and what it holds. */
typedef struct fslot {
  char *vm, *disk, *display;
  char name[16];                  /* "p1", "fs" */
  uint64_t start, length;
  parttab_probe_result probe;
  char *clean_note;               /* NULL: clean; else why the fs is shown "not clean" */
  char *table_note;               /* NULL, or why the partitions come from the backup GPT */
} fslot;


static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static fslot **slots;
static size_t nslots, cap_slots;
static uint32_t *slot_ix;         /* slot numbers by (vm, disk, display, name): open
                                     addressing, slot_ix_size slots, under slots_lock */
static size_t slot_ix_size;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static fsent *cache[FILES_CACHE_MAX * 4];
static size_t ncache;
static uint64_t tick;

/* ---- slots ---- */

/* Hash of a slot's identity. */
static size_t
slot_key_hash (const char *vm, const char *disk, const char *display, const char *name)
{
  uint64_t h = 1469598103934665603ull;
  const char *parts[4] = { vm, disk, display, name };
  for (int i = 0; i < 4; i++) {
    for (const char *p = parts[i]; *p; p++)
      h = (h ^ (unsigned char) *p) * 1099511628211ull;
    h = (h ^ 0x1f) * 1099511628211ull;
  }
  return (size_t) h;
}

/* Enter slot number R (already in SLOTS) into the index, which stays at
 * most half full; under slots_lock. */
static void
slot_ix_add (uint32_t r)
{
  if (2 * nslots > slot_ix_size) {
    size_t size = slot_ix_size ? 2 * slot_ix_size : 1024;
    uint32_t *t = qb_calloc (size, sizeof *t);
    for (size_t i = 0; i < nslots; i++) {
      const fslot *s = slots[i];
      size_t b = slot_key_hash (s->vm, s->disk, s->display, s->name) & (size - 1);
      while (t[b])
        b = (b + 1) & (size - 1);
      t[b] = i + 1;
    }
    free (slot_ix);
    slot_ix = t;
    slot_ix_size = size;
    return;                     /* R was entered with the rest */
  }
  const fslot *s = slots[r - 1];
  size_t b = slot_key_hash (s->vm, s->disk, s->display, s->name) & (slot_ix_size - 1);
  while (slot_ix[b])
    b = (b + 1) & (slot_ix_size - 1);
  slot_ix[b] = r;
}

/* The slot (VM, DISK, DISPLAY, NAME) if it exists, else created from PART,
 * PROBE and the table's KIND when they are given; its number, or 0 (none). */
static uint32_t
slot_get (const char *vm, const char *disk, const char *display, const char *name,
          const parttab_part *part, const parttab_probe_result *probe, parttab_kind kind)
{
  uint32_t r = 0;
  size_t b = 0;
  pthread_mutex_lock (&slots_lock);
  if (slot_ix_size) {
    b = slot_key_hash (vm, disk, display, name) & (slot_ix_size - 1);
    for (; slot_ix[b]; b = (b + 1) & (slot_ix_size - 1)) {
      const fslot *s = slots[slot_ix[b] - 1];
      if (strcmp (s->name, name) == 0 && strcmp (s->display, display) == 0
          && strcmp (s->disk, disk) == 0 && strcmp (s->vm, vm) == 0) {
        r = slot_ix[b];
        break;
      }
    }
  }
  if (!r && part && nslots < (1u << 29)) {
    fslot *s = qb_calloc (1, sizeof *s);
    s->vm = qb_strdup (vm);
    s->disk = qb_strdup (disk);
    s->display = qb_strdup (display);
    snprintf (s->name, sizeof s->name, "%s", name);
    s->start = part->start;
    s->length = part->length;
    s->probe = *probe;
    if (probe->is_ext && (probe->needs_recovery || probe->has_errors))
      s->clean_note = qb_asprintf (
        "The ext2/3/4 file system of %s is not clean in this restore point:\n%s%s"
        "Its files are shown as the disk holds them: a journal that was not\n"
        "replayed (the guest was not frozen when the point was taken) may hold\n"
        "changes of the last seconds that are missing here, and what was being\n"
        "written may read inconsistent.  Backups taken with the guest agent\n"
        "(quiesced) are clean.\n",
        name, probe->needs_recovery ? "  - its journal needs recovery (not replayed here)\n" : "",
        probe->has_errors ? "  - the file system recorded errors (e2fsck not run)\n" : "");
    if (kind == PARTTAB_GPT_BACKUP)
      s->table_note = qb_asprintf (
        "The primary GPT of this disk (sector 1 and its partition entries) is\n"
        "damaged in this restore point: its CRC32 does not match.  The partitions\n"
        "shown here come from the backup GPT at the end of the disk, which is\n"
        "intact.  The guest's firmware and kernel do the same; gdisk or sgdisk\n"
        "can rewrite the primary from the backup on a restored copy.\n");
    if (nslots == cap_slots) {
      cap_slots = cap_slots ? cap_slots * 2 : 64;
      slots = qb_realloc (slots, cap_slots * sizeof *slots);
    }
    slots[nslots++] = s;
    r = nslots;
    slot_ix_add (r);
  }
  pthread_mutex_unlock (&slots_lock);
  return r;
}

/* The slot numbered N (never freed), or NULL. */
static fslot *
slot_by_num (uint32_t n)
{
  fslot *s = NULL;
  pthread_mutex_lock (&slots_lock);
  if (n >= 1 && n <= nslots)
    s = slots[n - 1];
  pthread_mutex_unlock (&slots_lock);
  return s;
}

/* The FUSE inode of guest inode GINO in slot SLOT. */
static fuse_ino_t
files_ino (uint32_t slot, uint32_t gino)
{
  return FILES_INO_BIT | (uint64_t) slot << 32 | gino;
}

/* True if INO is an inode of a guest file. */
bool
files_is_ino (fuse_ino_t ino)
{
  return (ino & FILES_INO_BIT) != 0;
}

/* ---- opening restore points and file systems ---- */

/* Open point DISPLAY of VM/DISK through the chain reader (OPEN), or only
 * check that it exists and is not damaged (!OPEN: returns NULL).  *ERR is
 * the errno of a failure, 0 when there is none. */
static chain_image *
point_get (const char *vmname, const char *disk, const char *display, bool open, int *err)
{
  *err = 0;
  fs_vm *vm = vms_find (vmname);
  if (!vm) {
    *err = ENOENT;
    return NULL;
  }
  vm_scan *s = vm_scan_get (vm);
  const store_chain *c;
  size_t idx;
  chain_image *ci = NULL;
  if (!restore_find (s->v, disk, display, &c, &idx))
    *err = ENOENT;
  else if (restore_point_damage (vmname, disk, c, idx))
    *err = EIO;
  else if (open && !(ci = store_point_open (fs_cfg.st, c, idx))) {
    *err = fs_errno ();
    fs_log ("%s/%s/files/%s: %s", vmname, disk, display, qb_error_msg ());
  }
  vm_scan_put (s);
  return ci;
}


/* Read callback of parttab over a chain image. */
static int
chain_rd (void *opaque, void *buf, size_t len, uint64_t off)
{
  ssize_t r = chain_pread (opaque, buf, len, off);
  qb_error_clear ();
  return r == (ssize_t) len ? 0 : -1;
}

/* Open E's file system (under E's lock); 0, or -errno for a failure that
 * may pass (the next use tries again).  A file system that cannot be read
 * gets a note instead. */
static int
fsent_open (fsent *e)
{
  fslot *s = slot_by_num (e->slot);
  int err = 0;
  /* A partition shown as a note (a file system we do not read, or a
     damaged ext superblock) needs no chain: the point is only checked. */
  bool need_chain = s->probe.is_ntfs || (s->probe.is_ext && !s->probe.too_big);
  chain_image *ci = point_get (s->vm, s->disk, s->display, need_chain, &err);
  if (err)
    return -err;
  e->ci = ci;
  if (s->probe.is_ntfs) {
    char *why = NULL;
    e->ntfs = files_ntfs_open (chain_rd, ci, s->start, s->length, &why);
    if (!e->ntfs) {
      e->note_name = "ERROR.txt";
      e->note = qb_asprintf (
        "The NTFS file system of this partition could not be read:\n  %s\n"
        "The restore image MOUNT/%s/%s/restore/%s.img holds the raw bytes;\n"
        "ntfsfix -n or ntfs-3g on a copy of them may tell more.\n",
        why ? why : "unknown error", s->vm, s->disk, s->display);
      fs_log ("%s/%s/files/%s/%s: cannot read the NTFS: %s", s->vm, s->disk, s->display,
              s->name, why ? why : "unknown error");
    }
    free (why);
    e->opened = true;
    return 0;
  }
  if (!s->probe.is_ext) {
    e->note_name = "NOT-SUPPORTED.txt";
    e->note = qb_asprintf (
      "This partition holds %s%s%s, which qmpbackupfs cannot show as files\n"
      "(it reads ext2, ext3, ext4 and NTFS).\n\n"
      "To restore from it as root, attach the restore image read-only and\n"
      "mount it read-only:\n"
      "  dev=$(losetup -r -P -f --show MOUNT/%s/%s/restore/%s.img)\n"
      "  mount -o ro ${dev}p%s /mnt\n"
      "  ... copy what you need ...\n"
      "  umount /mnt; losetup -d $dev\n",
      s->probe.fs ? "a file system of type " : "no file system qmpbackupfs recognises",
      s->probe.fs ? s->probe.fs : "", s->probe.fs ? "" : " (unknown type)",
      s->vm, s->disk, s->display, s->name[0] == 'p' ? s->name + 1 : "");
    e->opened = true;
    return 0;
  }
  if (s->probe.too_big) {
    e->note_name = "ERROR.txt";
    e->note = qb_asprintf (
      "The ext2/3/4 superblock of this partition claims more blocks than the\n"
      "partition holds (or a bad block size): it is damaged and not read.\n"
      "The restore image MOUNT/%s/%s/restore/%s.img holds the raw bytes;\n"
      "e2fsck -n on a copy of them may tell more.\n", s->vm, s->disk, s->display);
    e->opened = true;
    return 0;
  }
  files_io_target io = { ci, s->start, s->length };
  ext2_filsys fs = NULL;
  errcode_t rc = files_io_open (&io, &fs);
  if (rc) {
    e->note_name = "ERROR.txt";
    e->note = qb_asprintf (
      "The ext2/3/4 file system of this partition could not be read:\n  %s\n"
      "The restore image MOUNT/%s/%s/restore/%s.img holds the raw bytes;\n"
      "e2fsck -n on a copy of them may tell more.\n",
      error_message (rc), s->vm, s->disk, s->display);
    fs_log ("%s/%s/files/%s/%s: cannot read the file system: %s", s->vm, s->disk,
            s->display, s->name, error_message (rc));
    e->opened = true;
    return 0;
  }
  e->fs = fs;
  e->opened = true;
  return 0;
}

/* Close E's file system and chain (nobody uses it). */
static void
fsent_free (fsent *e)
{
  if (e->fs)
    ext2fs_close_free (&e->fs);
  files_ntfs_close (e->ntfs);
  chain_close (e->ci);
  free (e->note);
  pthread_mutex_destroy (&e->lock);
  free (e);
}

/* The cache entry of SLOT, referenced and opened, locked; NULL with
 * -errno in *ERR.  Put it back with fsent_put. */
static fsent *
fsent_get (uint32_t slot, int *err)
{
  fsent *e = NULL, *evict = NULL;
  pthread_mutex_lock (&cache_lock);
  for (size_t i = 0; i < ncache; i++)
    if (cache[i]->slot == slot) {
      e = cache[i];
      break;
    }
  if (!e) {
    if (ncache >= FILES_CACHE_MAX) {
      size_t victim = ncache;
      for (size_t i = 0; i < ncache; i++)
        if (cache[i]->refs == 0 && (victim == ncache || cache[i]->used < cache[victim]->used))
          victim = i;
      if (victim < ncache) {
        evict = cache[victim];
        cache[victim] = cache[--ncache];
      }
    }
    if (ncache >= sizeof cache / sizeof cache[0]) {
      pthread_mutex_unlock (&cache_lock);
      *err = -EAGAIN;
      return NULL;
    }
    e = qb_calloc (1, sizeof *e);
    e->slot = slot;
    pthread_mutex_init (&e->lock, NULL);
    cache[ncache++] = e;
  }
  e->refs++;
  e->used = ++tick;
  pthread_mutex_unlock (&cache_lock);
  if (evict)
    fsent_free (evict);
  pthread_mutex_lock (&e->lock);
  if (!e->opened) {
    int r = fsent_open (e);
    if (r < 0) {
      pthread_mutex_unlock (&e->lock);
      pthread_mutex_lock (&cache_lock);
      e->refs--;
      pthread_mutex_unlock (&cache_lock);
      *err = r;
      return NULL;
    }
  }
  return e;
}

static void last_drop_all (void);

/* Close the cached file systems of VM that nobody uses now (see fs.h). */
void
files_cache_drop_idle (const char *vm)
{
  last_drop_all ();             /* their point locks would make a removal wait */
  fsent *drop[sizeof cache / sizeof cache[0]];
  size_t nd = 0;
  pthread_mutex_lock (&cache_lock);
  for (size_t i = 0; i < ncache;) {
    const fslot *sl = slot_by_num (cache[i]->slot);
    if (cache[i]->refs == 0 && sl && strcmp (sl->vm, vm) == 0) {
      drop[nd++] = cache[i];
      cache[i] = cache[--ncache];
    } else
      i++;
  }
  pthread_mutex_unlock (&cache_lock);
  for (size_t i = 0; i < nd; i++)
    fsent_free (drop[i]);
}

/* See files-int.h. */
void
fsent_put (fsent *e)
{
  pthread_mutex_unlock (&e->lock);
  pthread_mutex_lock (&cache_lock);
  e->refs--;
  pthread_mutex_unlock (&cache_lock);
}

/* Drop a reference of an entry that is not locked (open files). */
static void
fsent_unref (fsent *e)
{
  pthread_mutex_lock (&cache_lock);
  e->refs--;
  pthread_mutex_unlock (&cache_lock);
}

/* See files-int.h. */
int
ext_errno (errcode_t rc)
{
  if (rc == EXT2_ET_FILE_NOT_FOUND)
    return ENOENT;
  if (rc > 0 && rc < 4096)
    return (int) rc;
  return EIO;
}

/* ---- the point folder: files/<point>/ ---- */

/* ---- partition tables of points, read once ----
 *
 * What files/<point>/ lists comes from the point's partition table and the
 * probes of its partitions: a few KiB of the disk.  It is read once per
 * point and kept (ptable).  The reads are recorded; a point whose layers
 * above an already read point of the same chain allocate nothing in the
 * recorded ranges (store_layers_untouched: their L1/L2 tables only) reads
 * the same bytes there, so it has the same table and the same probes and
 * its chain is not opened at all.  Listing every point of a chain of N
 * layers thus opens the chain once instead of N times. */

#define PT_RANGES_MAX 64          /* ranges recorded per table read */
#define PT_BASE_BACK 64           /* earlier points of the chain tried as a base */

/* The byte ranges one table read (with its probes) looked at: up to
 * PT_RANGES_MAX while it is read, then kept in as little memory as they
 * need (N entries). */
typedef struct prange_set {
  size_t n;
  store_range r[];
} prange_set;

/* The partitions of one point (never freed: bounded by the points read). */
typedef struct ptable {
  struct ptable *next;            /* hash chain */
  const char *vm, *disk;          /* shared with the table it was derived from */
  char *display;
  const char *base;               /* path of layer 0 of its chain (its identity) */
  size_t idx;                     /* its layer in that chain */
  uint64_t size;                  /* the disk's virtual size */
  const prange_set *ranges;       /* what was read (shared); NULL: not recorded */
  int n;
  uint32_t slots[];               /* N slot numbers, in table order */
} ptable;

static ptable **pt_hash;          /* PT_HASH_SIZE buckets, under slots_lock */
#define PT_HASH_SIZE 65536

/* A chain image whose reads are recorded (parttab's read callback). */
typedef struct rec_reader {
  chain_image *ci;
  prange_set *set;                /* NULL once too many ranges were read */
} rec_reader;

/* Hash of a point's identity. */
static size_t
pt_key_hash (const char *vm, const char *disk, const char *display)
{
  return slot_key_hash (vm, disk, display, "") & (PT_HASH_SIZE - 1);
}

/* The table of point DISPLAY of VM/DISK if it was read, else NULL. */
static ptable *
pt_find (const char *vm, const char *disk, const char *display)
{
  ptable *t = NULL;
  pthread_mutex_lock (&slots_lock);
  for (t = pt_hash ? pt_hash[pt_key_hash (vm, disk, display)] : NULL; t; t = t->next)
    if (strcmp (t->display, display) == 0 && strcmp (t->disk, disk) == 0
        && strcmp (t->vm, vm) == 0)
      break;
  pthread_mutex_unlock (&slots_lock);
  return t;
}

/* Keep table T (its identity from its fields) in place of one of the same
 * point read in another chain (the chain was rewritten since: that one
 * stays allocated, a reader may hold it); of two tables of the same chain
 * the one kept first wins.  Returns the table to use (T is freed when
 * another came first). */
static ptable *
pt_insert (ptable *t)
{
  pthread_mutex_lock (&slots_lock);
  if (!pt_hash)
    pt_hash = qb_calloc (PT_HASH_SIZE, sizeof *pt_hash);
  size_t b = pt_key_hash (t->vm, t->disk, t->display);
  ptable *o, **pp;
  for (pp = &pt_hash[b]; (o = *pp); pp = &o->next)
    if (strcmp (o->display, t->display) == 0 && strcmp (o->disk, t->disk) == 0
        && strcmp (o->vm, t->vm) == 0)
      break;
  if (o && (o->idx != t->idx || strcmp (o->base, t->base) != 0)) {
    *pp = o->next;                /* another chain: replaced */
    o = NULL;
  }
  if (!o) {
    t->next = pt_hash[b];
    pt_hash[b] = t;
  }
  pthread_mutex_unlock (&slots_lock);
  if (o) {
    free (t->display);
    free (t);
    return o;
  }
  return t;
}

/* A new table of N slots for point DISPLAY (strings VM, DISK, BASE kept). */
static ptable *
pt_new (const char *vm, const char *disk, const char *display, const char *base, size_t idx,
        uint64_t size, int n)
{
  ptable *t = qb_calloc (1, sizeof *t + (size_t) n * sizeof t->slots[0]);
  t->vm = vm;
  t->disk = disk;
  t->display = qb_strdup (display);
  t->base = base;
  t->idx = idx;
  t->size = size;
  t->n = n;
  return t;
}

/* Read callback of parttab that records the range read. */
static int
rec_rd (void *opaque, void *buf, size_t len, uint64_t off)
{
  rec_reader *rr = opaque;
  if (rr->set && len) {
    prange_set *p = rr->set;
    size_t i;
    for (i = 0; i < p->n; i++)         /* grow a range it touches */
      if (off <= p->r[i].off + p->r[i].len && p->r[i].off <= off + len) {
        uint64_t end = p->r[i].off + p->r[i].len > off + len ? p->r[i].off + p->r[i].len
          : off + len;
        p->r[i].off = p->r[i].off < off ? p->r[i].off : off;
        p->r[i].len = end - p->r[i].off;
        break;
      }
    if (i == p->n) {
      if (p->n < PT_RANGES_MAX)
        p->r[p->n++] = (store_range) { off, len };
      else {
        free (rr->set);                 /* too many: this table is no base */
        rr->set = NULL;
      }
    }
  }
  return chain_rd (rr->ci, buf, len, off);
}

/* The last points whose tables were read, kept open for a short while (as
 * readers of their points, holding the point's lock like any open image),
 * so that the next point of the same chain is opened as one more layer
 * (store_point_extend).  A thread of their own closes them once idle. */
#define LAST_MAX 4
#define LAST_IDLE_MS 2000
typedef struct last_point {
  char *base;                     /* path of layer 0 of its chain */
  size_t idx;
  chain_image *ci;
  uint64_t used_ms;
} last_point;

static pthread_mutex_t last_lock = PTHREAD_MUTEX_INITIALIZER;
static last_point last[LAST_MAX];
static bool reaper_running;       /* under last_lock */

/* Close kept point L. */
static void
last_drop (last_point *l)
{
  chain_close (l->ci);
  free (l->base);
  memset (l, 0, sizeof *l);
}

/* Close every kept point (a removal is about to need their locks). */
static void
last_drop_all (void)
{
  pthread_mutex_lock (&last_lock);
  for (int i = 0; i < LAST_MAX; i++)
    if (last[i].ci)
      last_drop (&last[i]);
  pthread_mutex_unlock (&last_lock);
}

/* Point IDX of chain C opened: on top of a kept point IDX - 1 of C when
 * there is one, else from its base.  Under last_lock.  NULL with an error. */
static chain_image *
last_open (const store_chain *c, size_t idx)
{
  uint64_t now = qb_mono_ms ();
  chain_image *ci = NULL;
  for (int i = 0; i < LAST_MAX; i++) {
    last_point *l = &last[i];
    if (l->ci && now - l->used_ms > LAST_IDLE_MS)
      last_drop (l);
    else if (l->ci && !ci && idx > 0 && l->idx == idx - 1
             && strcmp (l->base, c->layers[0].path) == 0) {
      ci = store_point_extend (fs_cfg.st, l->ci, c, idx);
      if (!ci)
        qb_error_clear ();      /* opened from its base below */
    }
  }
  return ci ? ci : store_point_open (fs_cfg.st, c, idx);
}

/* Close the kept points idle for LAST_IDLE_MS, every second, until none is
 * left (then the thread ends; last_keep starts another). */
static void *
last_reaper (void *arg)
{
  (void) arg;
  pthread_mutex_lock (&last_lock);
  for (;;) {
    uint64_t now = qb_mono_ms ();
    bool any = false;
    for (int i = 0; i < LAST_MAX; i++)
      if (last[i].ci && now - last[i].used_ms > LAST_IDLE_MS)
        last_drop (&last[i]);
      else
        any |= last[i].ci != NULL;
    if (!any)
      break;
    pthread_mutex_unlock (&last_lock);
    sleep (1);
    pthread_mutex_lock (&last_lock);
  }
  reaper_running = false;
  pthread_mutex_unlock (&last_lock);
  return NULL;
}

/* Keep CI, point IDX of chain C, whose reading is over (under last_lock),
 * in place of the point it was built on or else the oldest kept point. */
static void
last_keep (const store_chain *c, size_t idx, chain_image *ci)
{
  last_point *o = &last[0];
  for (int i = 0; i < LAST_MAX; i++) {
    last_point *l = &last[i];
    if (l->ci && l->idx + 1 == idx && strcmp (l->base, c->layers[0].path) == 0) {
      o = l;                    /* the point it was built on: replaced */
      break;
    }
    if (!l->ci || l->used_ms < o->used_ms)
      o = l;
  }
  last_drop (o);
  /* the point below is closed now (or was never ours): its lock goes */
  store_point_unlock_below (ci);
  o->base = qb_strdup (c->layers[0].path);
  o->idx = idx;
  o->ci = ci;
  o->used_ms = qb_mono_ms ();
  if (!reaper_running) {
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init (&a);
    pthread_attr_setdetachstate (&a, PTHREAD_CREATE_DETACHED);
    if (pthread_create (&t, &a, last_reaper, NULL) == 0)
      reaper_running = true;
    else
      last_drop (o);            /* nobody would close it: not kept */
    pthread_attr_destroy (&a);
  }
}

static ptable *pt_read_locked (const char *vm, const char *disk, const char *display,
                               const store_chain *c, size_t idx, int *err);

/* Read the table of point IDX of chain C (DISPLAY of VM/DISK) through the
 * chain reader: a new table (not kept yet), or NULL with -errno in *ERR. */
static ptable *
pt_read (const char *vm, const char *disk, const char *display, const store_chain *c,
         size_t idx, int *err)
{
  pthread_mutex_lock (&last_lock);
  ptable *t = pt_read_locked (vm, disk, display, c, idx, err);
  pthread_mutex_unlock (&last_lock);
  return t;
}

/* pt_read under last_lock. */
static ptable *
pt_read_locked (const char *vm, const char *disk, const char *display, const store_chain *c,
                size_t idx, int *err)
{
  chain_image *ci = last_open (c, idx);
  if (!ci) {
    *err = -fs_errno ();
    fs_log ("%s/%s/files/%s: %s", vm, disk, display, qb_error_msg ());
    return NULL;
  }
  rec_reader rr = { ci, qb_calloc (1, sizeof (prange_set) + PT_RANGES_MAX * sizeof (store_range)) };
  parttab_part parts[PARTTAB_MAX];
  parttab_kind kind;
  uint64_t size = chain_size (ci);
  int n = parttab_read (rec_rd, &rr, size, parts, &kind);
  if (n < 0) {
    chain_close (ci);
    free (rr.set);
    *err = -EIO;
    return NULL;
  }
  ptable *t = pt_new (qb_strdup (vm), qb_strdup (disk), display,
                      qb_strdup (c->layers[0].path), idx, size, n ? n : 1);
  int k = 0;
  if (n == 0) {
    parttab_part whole = { 0, 0, size };
    parttab_probe_result pr;
    parttab_probe (rec_rd, &rr, 0, size, &pr);
    t->slots[k] = slot_get (vm, disk, display, "fs", &whole, &pr, kind);
    k += t->slots[k] != 0;
  }
  for (int i = 0; i < n; i++) {
    char name[16];
    snprintf (name, sizeof name, "p%d", parts[i].number);
    /* always probed, so that the reads of the probes are recorded */
    parttab_probe_result pr;
    parttab_probe (rec_rd, &rr, parts[i].start, parts[i].length, &pr);
    t->slots[k] = slot_get (vm, disk, display, name, &parts[i], &pr, kind);
    k += t->slots[k] != 0;
  }
  t->n = k;
  if (rr.set)                   /* kept in the memory it needs */
    rr.set = qb_realloc (rr.set, sizeof (prange_set) + rr.set->n * sizeof (store_range));
  t->ranges = rr.set;
  last_keep (c, idx, ci);
  return t;
}

/* The table of point IDX of chain C (DISPLAY of VM/DISK) derived from the
 * table of an earlier point of C whose bytes it shares where the table and
 * probes were read, or NULL when there is no such point. */
static ptable *
pt_derive (const char *vm, const char *disk, const char *display, const store_chain *c,
           size_t idx)
{
  for (size_t k = idx; k-- > 0 && idx - k <= PT_BASE_BACK;) {
    const ptable *b = pt_find (vm, disk, c->layers[k].display);
    if (!b || b->idx != k || strcmp (b->base, c->layers[0].path) != 0)
      continue;
    if (!b->ranges
        || !store_layers_untouched (fs_cfg.st, c, k + 1, idx, b->size, b->ranges->r,
                                    b->ranges->n))
      return NULL;
    ptable *t = pt_new (b->vm, b->disk, display, b->base, idx, b->size, b->n);
    t->ranges = b->ranges;
    int j = 0;
    for (int i = 0; i < b->n; i++) {
      const fslot *s = slot_by_num (b->slots[i]);
      parttab_part part = { 0, s->start, s->length };
      parttab_kind kind = s->table_note ? PARTTAB_GPT_BACKUP : PARTTAB_NONE;
      t->slots[j] = slot_get (vm, disk, display, s->name, &part, &s->probe, kind);
      j += t->slots[j] != 0;
    }
    t->n = j;
    return t;
  }
  return NULL;
}

/* The partitions of point DISPLAY of VM/DISK: its table (read once, or
 * derived from an earlier point of its chain), or NULL with -errno in
 * *ERR.  The point is checked to exist and not to be damaged every time. */
static const ptable *
point_table (const char *vm, const char *disk, const char *display, int *err)
{
  *err = 0;
  fs_vm *fv = vms_find (vm);
  if (!fv) {
    *err = -ENOENT;
    return NULL;
  }
  vm_scan *s = vm_scan_get (fv);
  const store_chain *c;
  size_t idx;
  ptable *t = NULL;
  if (!restore_find (s->v, disk, display, &c, &idx))
    *err = -ENOENT;
  else if (restore_point_damage (vm, disk, c, idx))
    *err = -EIO;
  else if (!(t = pt_find (vm, disk, display)) || t->idx != idx
           || strcmp (t->base, c->layers[0].path) != 0) {
    t = pt_derive (vm, disk, display, c, idx);
    if (!t)
      t = pt_read (vm, disk, display, c, idx, err);
    if (t)
      t = pt_insert (t);
  }
  vm_scan_put (s);
  return t;
}

/* Fill ST as the root folder of slot SL. */
static void
attr_slot_root (struct stat *st, uint32_t sl)
{
  memset (st, 0, sizeof *st);
  st->st_ino = files_ino (sl, ROOT_INO);
  st->st_mode = S_IFDIR | 0555;
  st->st_nlink = 2;
  st->st_uid = fs_cfg.uid;
  st->st_gid = fs_cfg.gid;
}

/* See fs.h. */
int
files_point_list (const char *vm, const char *disk, const char *display,
                  files_dirent **ents)
{
  int err;
  const ptable *t = point_table (vm, disk, display, &err);
  if (!t)
    return err;
  int n = t->n;
  const uint32_t *sl = t->slots;
  *ents = qb_calloc (2 * n + 2, sizeof **ents);
  int k = 0;
  for (int i = 0; i < n; i++) {
    fslot *s = slot_by_num (sl[i]);
    if (i == 0 && s->table_note) {
      snprintf ((*ents)[k].name, sizeof (*ents)[k].name, "%s", TABLE_NOTE_NAME);
      (*ents)[k].ino = files_ino (sl[i], TABLE_INO);
      (*ents)[k++].mode = S_IFREG;
    }
    snprintf ((*ents)[k].name, sizeof (*ents)[k].name, "%s", s->name);
    (*ents)[k].ino = files_ino (sl[i], ROOT_INO);
    (*ents)[k++].mode = S_IFDIR;
    if (s->clean_note) {
      snprintf ((*ents)[k].name, sizeof (*ents)[k].name, "%s.NOT-CLEAN.txt", s->name);
      (*ents)[k].ino = files_ino (sl[i], CLEAN_INO);
      (*ents)[k++].mode = S_IFREG;
    }
  }
  return k;
}

/* ---- guest inodes ---- */

/* Seconds and nanoseconds of an ext4 time with its extra field. */
static void
ext_time (struct timespec *ts, uint32_t lo, const struct ext2_inode_large *in,
          size_t extra_off, uint32_t extra)
{
  ts->tv_sec = (int32_t) lo;
  ts->tv_nsec = 0;
  if (in->i_extra_isize >= extra_off + 4 - EXT2_GOOD_OLD_INODE_SIZE) {
    ts->tv_sec += (int64_t) (extra & 3) << 32;
    ts->tv_nsec = (extra >> 2) % 1000000000;
  }
}

/* Fill ST from guest inode GINO of E's file system; 0 or -errno. */
static int
attr_guest (fsent *e, uint32_t gino, struct stat *st)
{
  struct ext2_inode_large in;
  memset (&in, 0, sizeof in);
  errcode_t rc = ext2fs_read_inode_full (e->fs, gino, (struct ext2_inode *) &in, sizeof in);
  if (rc)
    return -ext_errno (rc);
  if (in.i_links_count == 0 && in.i_mode == 0)
    return -ENOENT;
  memset (st, 0, sizeof *st);
  st->st_ino = files_ino (e->slot, gino);
  st->st_mode = in.i_mode;
  st->st_nlink = in.i_links_count ? in.i_links_count : 1;
  st->st_uid = inode_uid (in);
  st->st_gid = inode_gid (in);
  st->st_size = EXT2_I_SIZE (&in);
  st->st_blocks = ext2fs_get_stat_i_blocks (e->fs, (struct ext2_inode *) &in);
  st->st_blksize = e->fs->blocksize;
  if (S_ISCHR (in.i_mode) || S_ISBLK (in.i_mode)) {
    uint32_t old = in.i_block[0], new = in.i_block[1];
    st->st_rdev = old ? makedev ((old >> 8) & 255, old & 255)
      : makedev ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00));
  }
  size_t base = EXT2_GOOD_OLD_INODE_SIZE;
  size_t ext = e->fs->super->s_inode_size > base ? in.i_extra_isize : 0;
  in.i_extra_isize = ext;
  ext_time (&st->st_ctim, in.i_ctime, &in, base + 4, in.i_ctime_extra);
  ext_time (&st->st_mtim, in.i_mtime, &in, base + 8, in.i_mtime_extra);
  ext_time (&st->st_atim, in.i_atime, &in, base + 12, in.i_atime_extra);
  return 0;
}

/* The text of note file INO of E (NOT-SUPPORTED, ERROR, NOT-CLEAN), or NULL. */
static const char *
note_text (fsent *e, fuse_ino_t ino)
{
  if ((uint32_t) ino == CLEAN_INO)
    return slot_by_num (e->slot)->clean_note;
  if ((uint32_t) ino == TABLE_INO)
    return slot_by_num (e->slot)->table_note;
  return e->note && (uint32_t) ino == NOTE_INO ? e->note : NULL;
}

/* Fill ST for INO (a guest inode or a note file); 0 or -errno.  E locked. */
static int
attr_ino (fsent *e, fuse_ino_t ino, struct stat *st)
{
  uint32_t gino = (uint32_t) ino;
  const char *text = note_text (e, ino);
  if (text) {
    memset (st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_uid = fs_cfg.uid;
    st->st_gid = fs_cfg.gid;
    st->st_size = strlen (text);
    return 0;
  }
  if (gino == CLEAN_INO || gino == TABLE_INO)
    return -ENOENT;
  if (e->note) {
    if (gino == ROOT_INO) {
      attr_slot_root (st, e->slot);
      return 0;
    }
    return -ENOENT;
  }
  if (e->ntfs) {
    int r = files_ntfs_stat (e->ntfs, gino, st);
    st->st_ino = files_ino (e->slot, gino);
    st->st_uid = fs_cfg.uid;
    st->st_gid = fs_cfg.gid;
    return r;
  }
  return attr_guest (e, gino, st);
}

/* See files-int.h. */
fsent *
entry_or_reply (fuse_req_t req, fuse_ino_t ino)
{
  uint32_t sl = (uint32_t) ((ino & ~FILES_INO_BIT) >> 32);
  int err = -ENOENT;
  fsent *e = slot_by_num (sl) ? fsent_get (sl, &err) : NULL;
  if (!e)
    fuse_reply_err (req, -err);
  return e;
}

/* See fs.h. */
void
files_getattr (fuse_req_t req, fuse_ino_t ino)
{
  fsent *e = entry_or_reply (req, ino);
  if (!e)
    return;
  struct stat st;
  int r = attr_ino (e, ino, &st);
  fsent_put (e);
  if (r < 0)
    fuse_reply_err (req, -r);
  else
    fuse_reply_attr (req, &st, TIMEOUT_GUEST);
}

/* See fs.h. */
void
files_lookup (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  fsent *e = entry_or_reply (req, parent);
  if (!e)
    return;
  struct fuse_entry_param ep;
  memset (&ep, 0, sizeof ep);
  int r;
  uint32_t gino = 0;
  size_t len = strlen (name);
  if (e->note)
    r = (uint32_t) parent == ROOT_INO && strcmp (name, e->note_name) == 0 ? 0 : -ENOENT,
      gino = NOTE_INO;
  else if (e->ntfs)
    r = files_ntfs_lookup (e->ntfs, (uint32_t) parent, name, &gino);
  else if (len > EXT2_NAME_LEN)
    r = -ENAMETOOLONG;
  else {
    ext2_ino_t found = 0;
    errcode_t rc = ext2fs_lookup (e->fs, (uint32_t) parent, name, len, NULL, &found);
    r = rc ? -ext_errno (rc) : 0;
    gino = found;
  }
  if (r == 0)
    r = attr_ino (e, files_ino (e->slot, gino), &ep.attr);
  fsent_put (e);
  if (r < 0) {
    fuse_reply_err (req, -r);
    return;
  }
  ep.ino = ep.attr.st_ino;
  ep.entry_timeout = ep.attr_timeout = TIMEOUT_GUEST;
  fuse_reply_entry (req, &ep);
}

/* See fs.h. */
void
files_readlink (fuse_req_t req, fuse_ino_t ino)
{
  fsent *e = entry_or_reply (req, ino);
  if (!e)
    return;
  char *buf = NULL;
  int r = 0;
  if (e->ntfs) {
    r = files_ntfs_readlink (e->ntfs, (uint32_t) ino, &buf);
    fsent_put (e);
    if (r < 0)
      fuse_reply_err (req, -r);
    else
      fuse_reply_readlink (req, buf);
    free (buf);
    return;
  }
  struct ext2_inode in;
  errcode_t rc = e->note ? EXT2_ET_FILE_NOT_FOUND : ext2fs_read_inode (e->fs, (uint32_t) ino, &in);
  uint64_t size = rc ? 0 : EXT2_I_SIZE (&in);
  if (rc)
    r = -ext_errno (rc);
  else if (!LINUX_S_ISLNK (in.i_mode))
    r = -EINVAL;
  else if (size == 0 || size >= LINK_MAX_LEN)
    r = -EIO;
  else {
    buf = qb_calloc (1, size + 1);
    if (ext2fs_is_fast_symlink (&in))
      memcpy (buf, in.i_block, size < sizeof in.i_block ? size : sizeof in.i_block);
    else {
      ext2_file_t f;
      unsigned got = 0;
      rc = ext2fs_file_open2 (e->fs, (uint32_t) ino, &in, 0, &f);
      if (!rc) {
        rc = ext2fs_file_read (f, buf, size, &got);
        ext2fs_file_close (f);
      }
      if (rc || got != size)
        r = -EIO;
    }
  }
  fsent_put (e);
  if (r < 0)
    fuse_reply_err (req, -r);
  else
    fuse_reply_readlink (req, buf);
  free (buf);
}

/* ---- directories ---- */

typedef struct dirlist {
  fuse_req_t req;
  uint32_t slot;
  char *p;
  size_t size, cap;
  unsigned count;
  bool too_big;
} dirlist;

/* Add NAME (inode INO, mode MODE) to the listing L. */
static void
dirlist_add (dirlist *l, const char *name, fuse_ino_t ino, mode_t mode)
{
  struct stat st;
  memset (&st, 0, sizeof st);
  st.st_ino = ino;
  st.st_mode = mode;
  size_t need = fuse_add_direntry (l->req, NULL, 0, name, NULL, 0);
  if (l->size + need > l->cap) {
    l->cap = (l->size + need) * 2;
    l->p = qb_realloc (l->p, l->cap);
  }
  fuse_add_direntry (l->req, l->p + l->size, need, name, &st, l->size + need);
  l->size += need;
}

/* dir_iterate callback: one guest entry (bounded, names with '/' skipped). */
static int
dirlist_cb (ext2_ino_t dir, int entry, struct ext2_dir_entry *d, int offset, int blocksize,
            char *buf, void *priv)
{
  (void) dir; (void) entry; (void) offset; (void) blocksize; (void) buf;
  dirlist *l = priv;
  int len = ext2fs_dirent_name_len (d);
  if (l->count >= DIR_MAX_ENTRIES || l->size >= DIR_MAX_BYTES) {
    l->too_big = true;
    return DIRENT_ABORT;
  }
  if (len == 0 || d->inode == 0)
    return 0;
  char name[EXT2_NAME_LEN + 1];
  memcpy (name, d->name, len);
  name[len] = '\0';
  if (strlen (name) != (size_t) len || strchr (name, '/')
      || strcmp (name, ".") == 0 || strcmp (name, "..") == 0)
    return 0;
  static const mode_t types[] = {
    [EXT2_FT_REG_FILE] = S_IFREG, [EXT2_FT_DIR] = S_IFDIR, [EXT2_FT_CHRDEV] = S_IFCHR,
    [EXT2_FT_BLKDEV] = S_IFBLK, [EXT2_FT_FIFO] = S_IFIFO, [EXT2_FT_SOCK] = S_IFSOCK,
    [EXT2_FT_SYMLINK] = S_IFLNK,
  };
  int ft = ext2fs_dirent_file_type (d);
  mode_t mode = ft > 0 && ft < (int) (sizeof types / sizeof types[0]) ? types[ft] : 0;
  dirlist_add (l, name, files_ino (l->slot, d->inode), mode);
  l->count++;
  return 0;
}

/* files_ntfs_readdir callback: one NTFS entry (bounded like ext's). */
static int
dirlist_ntfs_cb (void *priv, const char *name, uint32_t gino, mode_t type)
{
  dirlist *l = priv;
  if (l->count >= DIR_MAX_ENTRIES || l->size >= DIR_MAX_BYTES) {
    l->too_big = true;
    return 1;
  }
  dirlist_add (l, name, files_ino (l->slot, gino), type);
  l->count++;
  return 0;
}

/* See fs.h. */
void
files_opendir (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  fsent *e = entry_or_reply (req, ino);
  if (!e)
    return;
  dirlist *l = qb_calloc (1, sizeof *l);
  l->req = req;
  l->slot = e->slot;
  struct stat st;
  int r = attr_ino (e, ino, &st);
  if (r == 0 && !S_ISDIR (st.st_mode))
    r = -ENOTDIR;
  if (r == 0) {
    dirlist_add (l, ".", ino, S_IFDIR);
    dirlist_add (l, "..", ino, S_IFDIR);
    if (e->note)
      dirlist_add (l, e->note_name, files_ino (e->slot, NOTE_INO), S_IFREG);
    else if (e->ntfs) {
      r = files_ntfs_readdir (e->ntfs, (uint32_t) ino, dirlist_ntfs_cb, l);
      if (r == -EFBIG || l->too_big)
        r = -EFBIG;
    }
    else {
      errcode_t rc = ext2fs_dir_iterate2 (e->fs, (uint32_t) ino, 0, NULL, dirlist_cb, l);
      if (rc)
        r = -ext_errno (rc);
      else if (l->too_big)
        r = -EFBIG;
    }
  }
  fsent_put (e);
  if (r < 0) {
    fslot *s = slot_by_num (l->slot);
    if (r == -EIO || r == -EFBIG)
      fs_log ("%s/%s/files/%s/%s: directory inode %u: %s", s->vm, s->disk, s->display,
              s->name, (unsigned) (uint32_t) ino, r == -EFBIG ? "too many entries" : "unreadable");
    free (l->p);
    free (l);
    fuse_reply_err (req, -r);
    return;
  }
  fi->fh = (uintptr_t) l;
  fi->keep_cache = 1;
  fi->cache_readdir = 1;
  if (fuse_reply_open (req, fi) != 0) {
    free (l->p);
    free (l);
  }
}

/* See fs.h. */
void
files_readdir (fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
  dirlist *l = (dirlist *) (uintptr_t) fi->fh;
  if ((size_t) off >= l->size) {
    fuse_reply_buf (req, NULL, 0);
    return;
  }
  /* reply from a copy: once the kernel has part of the listing, the
   * process may close the folder and another thread free it */
  size_t len = l->size - off < size ? l->size - off : size;
  char *copy = qb_calloc (1, len);
  memcpy (copy, l->p + off, len);
  fuse_reply_buf (req, copy, len);
  free (copy);
}

/* See fs.h. */
void
files_releasedir (struct fuse_file_info *fi)
{
  dirlist *l = (dirlist *) (uintptr_t) fi->fh;
  if (l)
    free (l->p);
  free (l);
}

/* ---- regular files ---- */


/* See fs.h. */
void
files_open (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err (req, EROFS);
    return;
  }
  fsent *e = entry_or_reply (req, ino);
  if (!e)
    return;
  struct stat st;
  int r = attr_ino (e, ino, &st);
  fhandle *h = NULL;
  if (r == 0 && S_ISDIR (st.st_mode))
    r = -EISDIR;
  else if (r == 0 && !S_ISREG (st.st_mode))
    r = -EACCES;
  if (r == 0) {
    h = qb_calloc (1, sizeof *h);
    h->e = e;
    h->text = note_text (e, ino);
    if (!h->text && e->ntfs) {
      r = files_ntfs_file_open (e->ntfs, (uint32_t) ino, &h->nf);
      if (r < 0) {
        free (h);
        h = NULL;
      }
    }
    else if (!h->text) {
      errcode_t rc = ext2fs_file_open (e->fs, (uint32_t) ino, 0, &h->f);
      if (rc) {
        r = -ext_errno (rc);
        free (h);
        h = NULL;
      }
    }
  }
  pthread_mutex_unlock (&e->lock);   /* keep the reference while open */
  if (r < 0) {
    fsent_unref (e);
    fuse_reply_err (req, -r);
    return;
  }
  fi->fh = (uintptr_t) h;
  fi->keep_cache = 1;
  if (fuse_reply_open (req, fi) != 0)
    files_release (fi);
}

/* See fs.h. */
void
files_read (fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
  fhandle *h = (fhandle *) (uintptr_t) fi->fh;
  fsent *e = h->e;
  if (size > (1u << 20))
    size = 1u << 20;
  char *buf = malloc (size ? size : 1);
  if (!buf) {
    fuse_reply_err (req, ENOMEM);
    return;
  }
  size_t done = 0;
  int err = 0, direct;
  pthread_mutex_lock (&e->lock);
  if (h->nf) {
    ssize_t n = files_ntfs_file_pread (h->nf, buf, size, off);
    if (n < 0)
      err = -n;
    else
      done = n;
  }
  else if (!h->f) {
    size_t len = strlen (h->text);
    if ((size_t) off < len)
      done = len - off < size ? len - off : size;
    memcpy (buf, h->text + (off < (off_t) len ? off : 0), done);
  }
  else if ((direct = ext_read_direct (e, h->f, buf, size, off, &done)) <= 0)
    err = -direct;              /* read straight through the block map, or failed */
  else {
    done = 0;
    errcode_t rc = ext2fs_file_llseek (h->f, off, EXT2_SEEK_SET, NULL);
    while (!rc && done < size) {
      unsigned got = 0;
      rc = ext2fs_file_read (h->f, buf + done, size - done, &got);
      if (got == 0)
        break;
      done += got;
    }
    if (rc)
      err = ext_errno (rc);
  }
  pthread_mutex_unlock (&e->lock);
  if (err) {
    fslot *s = slot_by_num (e->slot);
    fs_log ("%s/%s/files/%s/%s: read of inode %u failed", s->vm, s->disk, s->display,
            s->name, h->f ? (unsigned) ext2fs_file_get_inode_num (h->f) : 0u);
    fuse_reply_err (req, err);
  }
  else
    fuse_reply_buf (req, buf, done);
  free (buf);
}

/* See fs.h. */
void
files_release (struct fuse_file_info *fi)
{
  fhandle *h = (fhandle *) (uintptr_t) fi->fh;
  if (!h)
    return;
  if (h->f || h->nf) {
    pthread_mutex_lock (&h->e->lock);
    if (h->f)
      ext2fs_file_close (h->f);
    else
      files_ntfs_file_close (h->nf);
    pthread_mutex_unlock (&h->e->lock);
  }
  fsent_unref (h->e);
  free (h);
}

/* See fs.h. */
void
files_point_lookup (fuse_req_t req, const char *vm, const char *disk, const char *display,
                    const char *name)
{
  files_dirent *ents = NULL;
  int n = files_point_list (vm, disk, display, &ents);
  if (n < 0) {
    fuse_reply_err (req, -n);
    return;
  }
  fuse_ino_t ino = 0;
  for (int i = 0; i < n; i++)
    if (strcmp (ents[i].name, name) == 0)
      ino = ents[i].ino;
  free (ents);
  bool is_note = ino && ((uint32_t) ino == CLEAN_INO || (uint32_t) ino == TABLE_INO);
  if (!ino) {
    fuse_reply_err (req, ENOENT);
    return;
  }
  fsent *e = entry_or_reply (req, ino);
  if (!e)
    return;
  struct fuse_entry_param ep;
  memset (&ep, 0, sizeof ep);
  int r = attr_ino (e, ino, &ep.attr);
  fsent_put (e);
  if (r < 0 && !is_note) {
    /* the root inode itself is unreadable: still show the folder */
    attr_slot_root (&ep.attr, (uint32_t) ((ino & ~FILES_INO_BIT) >> 32));
  }
  ep.ino = ep.attr.st_ino = ino;
  ep.entry_timeout = ep.attr_timeout = TIMEOUT_GUEST;
  fuse_reply_entry (req, &ep);
}

/* See fs.h. */
json_object *
files_status_notes (const char *vm, const char *disk, const char *latest)
{
  if (latest && !pt_find (vm, disk, latest)) {
    int err;
    if (!point_table (vm, disk, latest, &err))
      qb_error_clear ();
  }
  json_object *a = json_object_new_array ();
  pthread_mutex_lock (&slots_lock);
  for (size_t i = 0; i < nslots; i++) {
    const fslot *s = slots[i];
    if (strcmp (s->disk, disk) != 0 || strcmp (s->vm, vm) != 0)
      continue;
    char *line = NULL;
    if (s->table_note && (i == 0 || strcmp (slots[i - 1]->display, s->display) != 0)) {
      line = qb_asprintf ("files: %s: primary GPT damaged: partitions read from the backup GPT",
                          s->display);
      json_object_array_add (a, json_object_new_string (line));
      free (line);
    }
    if (!s->clean_note)
      continue;
    line = qb_asprintf ("files: %s %s: %s not clean (%s%s%s): shown as on disk", s->display,
                        s->name, s->probe.ext_name ? s->probe.ext_name : "ext",
                        s->probe.needs_recovery ? "journal not replayed" : "",
                        s->probe.needs_recovery && s->probe.has_errors ? ", " : "",
                        s->probe.has_errors ? "errors recorded" : "");
    json_object_array_add (a, json_object_new_string (line));
    free (line);
  }
  pthread_mutex_unlock (&slots_lock);
  return a;
}
