/* qmpbackupfs — the qcow2 chain reader (see chain.h).
 *
 * chain_open reads every layer's L1/L2 tables once, base first, and records
 * for each cluster of the finest cluster size in the chain which layer owns
 * it and how.  One map entry is 64 bits:
 *
 *   bits  0..2   kind (zeros: unallocated or zero cluster; data, compressed, damaged)
 *   bits  3..17  layer index (data, compressed, damaged)
 *   bits 18..63  host offset / 512 (data)
 *
 * Entries live in chunks of CHUNK_LEN; a chunk whose entries follow one
 * pattern (all the same, or data contiguous in one file) keeps one base entry
 * and no array, so sparse images and sequentially written layers cost almost
 * nothing.  The map never changes after chain_open, so reads need no lock;
 * only libqcow handles (compressed clusters) are guarded, one mutex a layer.
 *
 * Memory follows what the layers really hold, never what their tables claim:
 * every L2 table of a layer must be its own cluster inside the file (a
 * table shared by two L1 entries, or overlapping the header, the L1 or
 * refcount table or a data cluster, makes the layer damaged), chunks are
 * compacted after each L2 table, and the map may not grow past a budget of
 * MAP_BUDGET_BASE plus MAP_BUDGET_RATIO times the layers' file sizes.  No
 * allocation failure aborts: chain_open fails with QB_ENOMEM instead.
 *
 * Virtual sizes: a layer shows the layer below it only up to its own size,
 * so bytes owned by layer L read as zeros from LIM(L) = the smallest virtual
 * size of L and every layer above it. */
#include "chain.h"
#include "qcow2.h"
#include "common/error.h"
#include "common/util.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <libqcow.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK_BITS 12
#define CHUNK_LEN (1u << CHUNK_BITS)
#define CHUNK_MASK (CHUNK_LEN - 1)
#define CHUNK_BYTES (CHUNK_LEN * sizeof (uint64_t))
#define MAX_LAYERS 0x7fff
#define MAX_CHUNKS (1u << 24)
/* Map memory allowed: this much, plus MAP_BUDGET_RATIO bytes per byte of
 * the layer files (a real layer needs at most about 32: one 32 KiB chunk
 * array per 512-byte L2 table and data cluster, with 512-byte clusters). */
#define MAP_BUDGET_BASE ((uint64_t) 64 << 20)
#define MAP_BUDGET_RATIO 64
/* The chunk headers (16 bytes per 4096 clusters of virtual size) may take
 * this much, plus HEAD_BUDGET_RATIO bytes per byte of the layer files: 16
 * MiB cover a sparse 256 TiB disk in 64 KiB clusters (2 TiB in 512 bytes). */
#define HEAD_BUDGET_BASE ((uint64_t) 16 << 20)
#define HEAD_BUDGET_RATIO 8

/* Map entry kinds; K_ZERO is used for runs only: zero clusters are stored as
 * K_UNALLOC (both read as zeros), so they never make a chunk irregular. */
enum { K_UNALLOC = 0, K_ZERO = 1, K_DATA = 2, K_COMP = 3, K_DAMAGED = 4 };
#define E_ZEROS ((uint64_t) 0)

/* What a cluster of a layer file holds, for the checks of layer_apply. */
enum { U_FREE = 0, U_META = 1, U_L2 = 2, U_DATA = 3 };

#define E_KIND(e)  ((unsigned) ((e) & 7))
#define E_LAYER(e) ((unsigned) (((e) >> 3) & MAX_LAYERS))
#define E_HOST(e)  (((e) >> 18) << 9)

typedef struct layer {
  char *path;
  int fd;
  uint64_t file_size;
  uint64_t lim;            /* bytes of this layer visible from the top */
  qcow2_header h;
  pthread_mutex_t lock;    /* guards qf: libqcow handles are not thread-safe */
  libqcow_file_t *qf;      /* opened on the first compressed read */
} layer;

typedef struct chunk {
  uint64_t *e;             /* CHUNK_LEN entries, or NULL: see chunk_entry */
  uint64_t base;
} chunk;

struct chain_image {
  size_t n;
  layer *layers;
  uint64_t size;
  unsigned cbits;          /* the finest cluster size in the chain */
  uint64_t step;           /* entry difference of adjacent data clusters */
  uint64_t nentries;
  size_t nchunks;
  chunk *chunks;
  uint64_t allocated;
  uint64_t map_bytes;      /* chunk headers and arrays */
  uint64_t map_budget;
  const char *building;    /* path of the layer being applied (messages) */
};

/* Per-layer record of which file clusters hold what (2 bits a cluster). */
typedef struct usage {
  uint8_t *bits;
  uint64_t n;              /* clusters of the file */
} usage;

typedef struct run {
  unsigned kind;           /* K_ZERO, K_DATA, K_COMP or K_DAMAGED */
  unsigned layer;
  uint64_t host;           /* K_DATA: file offset of the first byte */
  uint64_t len;
} run;

/* Build a map entry. */
static inline uint64_t
entry_make (unsigned kind, unsigned layer, uint64_t host)
{
  return kind | ((uint64_t) layer << 3) | ((host >> 9) << 18);
}

/* Entry K of a chunk that has no array. */
static inline uint64_t
chunk_entry (const chain_image *ci, const chunk *c, uint64_t k)
{
  return E_KIND (c->base) == K_DATA ? c->base + k * ci->step : c->base;
}

/* The map entry of finest cluster IDX (< nentries). */
static inline uint64_t
map_get (const chain_image *ci, uint64_t idx)
{
  const chunk *c = &ci->chunks[idx >> CHUNK_BITS];
  if (c->e)
    return c->e[idx & CHUNK_MASK];
  return chunk_entry (ci, c, idx & CHUNK_MASK);
}

/* calloc that records QB_ENOMEM instead of aborting. */
static void *
try_calloc (size_t n, size_t size)
{
  void *p = calloc (n ? n : 1, size ? size : 1);
  if (!p)
    qb_error_set (QB_ENOMEM, "out of memory while opening a restore point "
                  "(%zu x %zu bytes): nothing is damaged, try again", n, size);
  return p;
}

/* Give chunk C an array holding its current entries; -1 past the budget
 * (QB_EDAMAGED) or out of memory (QB_ENOMEM). */
static int
chunk_expand (chain_image *ci, chunk *c)
{
  if (ci->map_bytes + CHUNK_BYTES > ci->map_budget)
    return qb_error_set (QB_EDAMAGED, "%s: its qcow2 tables need a cluster map of more "
                         "than %llu MiB, more than layers of this size can describe: "
                         "the metadata is damaged", ci->building ? ci->building : "chain",
                         (unsigned long long) (ci->map_budget >> 20));
  uint64_t *e = malloc (CHUNK_BYTES);
  if (!e)
    return qb_error_set (QB_ENOMEM, "out of memory for the cluster map of %s: "
                         "nothing is damaged, try again", ci->building ? ci->building : "chain");
  for (uint64_t k = 0; k < CHUNK_LEN; k++)
    e[k] = chunk_entry (ci, c, k);
  c->e = e;
  ci->map_bytes += CHUNK_BYTES;
  return 0;
}

/* Drop the array of chunk C, which then holds BASE as its pattern. */
static void
chunk_flatten (chain_image *ci, chunk *c, uint64_t base)
{
  if (c->e) {
    free (c->e);
    c->e = NULL;
    ci->map_bytes -= CHUNK_BYTES;
  }
  c->base = base;
}

/* Set entry IDX to V, giving its chunk an array if it needs one. */
static int
map_set (chain_image *ci, uint64_t idx, uint64_t v)
{
  chunk *c = &ci->chunks[idx >> CHUNK_BITS];
  if (!c->e) {
    if (chunk_entry (ci, c, idx & CHUNK_MASK) == v)
      return 0;
    if (chunk_expand (ci, c) < 0)
      return -1;
  }
  c->e[idx & CHUNK_MASK] = v;
  return 0;
}

/* Set entries [LO, HI) to V, V + D, V + 2D, ... (D: 0, or ci->step for
 * contiguous data); whole chunks get no array. */
static int
map_fill_run (chain_image *ci, uint64_t lo, uint64_t hi, uint64_t v, uint64_t d)
{
  uint64_t first = lo;
  if (hi > ci->nentries)
    hi = ci->nentries;
  while (lo < hi) {
    if ((lo & CHUNK_MASK) == 0 && (lo + CHUNK_LEN <= hi || hi == ci->nentries)) {
      chunk_flatten (ci, &ci->chunks[lo >> CHUNK_BITS], v + (lo - first) * d);
      lo += CHUNK_LEN;
      continue;
    }
    if (map_set (ci, lo, v + (lo - first) * d) < 0)
      return -1;
    lo++;
  }
  return 0;
}

/* Set entries [LO, HI) to the non-data entry V. */
static int
map_fill (chain_image *ci, uint64_t lo, uint64_t hi, uint64_t v)
{
  return map_fill_run (ci, lo, hi, v, 0);
}

/* Drop the array of chunk I if its entries follow one pattern. */
static void
chunk_compact (chain_image *ci, size_t i)
{
  chunk *c = &ci->chunks[i];
  if (!c->e)
    return;
  uint64_t cnt = CHUNK_LEN;
  if (i == ci->nchunks - 1 && (ci->nentries & CHUNK_MASK))
    cnt = ci->nentries & CHUNK_MASK;
  uint64_t b = c->e[0];
  uint64_t d = E_KIND (b) == K_DATA ? ci->step : 0;
  uint64_t k;
  for (k = 1; k < cnt; k++)
    if (c->e[k] != b + k * d)
      break;
  if (k == cnt)
    chunk_flatten (ci, c, b);
}

/* Compact the chunks holding entries [LO, HI). */
static void
map_compact_range (chain_image *ci, uint64_t lo, uint64_t hi)
{
  if (hi > ci->nentries)
    hi = ci->nentries;
  if (lo >= hi)
    return;
  for (size_t i = (size_t) (lo >> CHUNK_BITS); i <= (size_t) ((hi - 1) >> CHUNK_BITS); i++)
    chunk_compact (ci, i);
}

/* Read exactly LEN bytes at OFF of the layer's file; -1 with QB_EIO otherwise. */
static int
layer_read (const layer *ly, void *buf, size_t len, uint64_t off)
{
  char *p = buf;
  while (len > 0) {
    ssize_t r = pread (ly->fd, p, len, (off_t) off);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return qb_error_set (!qb_errno_is_transient (errno) ? QB_EIO
                           : errno == ENOMEM ? QB_ENOMEM : QB_EAGAIN,
                           "%s: read at offset %llu failed: %s", ly->path,
                           (unsigned long long) off, strerror (errno));
    if (r == 0)
      return qb_error_set (QB_EIO, "%s: unexpected end of file at offset %llu "
                           "(the layer is truncated)", ly->path, (unsigned long long) off);
    p += r;
    len -= (size_t) r;
    off += (uint64_t) r;
  }
  return 0;
}

/* What file cluster C of a layer holds (U_*). */
static unsigned
usage_get (const usage *u, uint64_t c)
{
  return (u->bits[c >> 2] >> ((c & 3) * 2)) & 3;
}

/* Note that file cluster C holds V. */
static void
usage_set (usage *u, uint64_t c, unsigned v)
{
  u->bits[c >> 2] = (uint8_t) ((u->bits[c >> 2] & ~(3u << ((c & 3) * 2))) | (v << ((c & 3) * 2)));
}

/* Note that bytes [OFF, OFF + LEN) of the file are metadata (clamped to the file). */
static void
usage_meta (usage *u, unsigned cbits, uint64_t off, uint64_t len)
{
  if (len == 0)
    return;
  for (uint64_t c = off >> cbits; c <= (off + len - 1) >> cbits && c < u->n; c++)
    usage_set (u, c, U_META);
}

/* Apply the L2 table L2 (covering guest bytes [G0, G1)) of layer L to the
 * map.  A data cluster that another entry or a table already uses is
 * damaged.  -1 only when memory runs out or the map outgrows its budget. */
static int
layer_apply_l2 (chain_image *ci, unsigned l, const uint64_t *l2, uint64_t g0, uint64_t g1,
                usage *u)
{
  layer *ly = &ci->layers[l];
  unsigned cb = ly->h.cluster_bits;
  uint64_t cl = 1ull << cb;
  uint64_t sub = 1ull << (cb - ci->cbits);   /* map entries per cluster */

  for (uint64_t j = 0, g = g0; g < g1 && g < ci->size; j++, g += cl) {
    uint64_t needed = ly->h.size - g < cl ? ly->h.size - g : cl;
    uint64_t host;
    uint64_t idx = g >> ci->cbits;
    int r = 0;
    switch (qcow2_l2_decode (be64toh (l2[j]), &ly->h, ly->file_size, needed, &host)) {
    case QCOW2_UNALLOCATED:
      break;
    case QCOW2_ZERO:
      r = map_fill (ci, idx, idx + sub, E_ZEROS);
      break;
    case QCOW2_COMPRESSED:
      r = map_fill (ci, idx, idx + sub, entry_make (K_COMP, l, 0));
      break;
    case QCOW2_BAD:
      r = map_fill (ci, idx, idx + sub, entry_make (K_DAMAGED, l, 0));
      break;
    case QCOW2_DATA:
      if (usage_get (u, host >> cb) != U_FREE) {
        /* the cluster is a table or another guest cluster's data */
        r = map_fill (ci, idx, idx + sub, entry_make (K_DAMAGED, l, 0));
        break;
      }
      usage_set (u, host >> cb, U_DATA);
      r = map_fill_run (ci, idx, idx + sub, entry_make (K_DATA, l, host), ci->step);
      break;
    }
    if (r < 0)
      return -1;
  }
  return 0;
}

/* Fail: the L2 table at L2_OFF named by L1 entry I of layer LY is not a
 * cluster of its own (USE says what else is there). */
static int
l2_shared (const layer *ly, uint64_t i, uint64_t l2_off, unsigned use)
{
  const char *what = use == U_L2 ? "is also the L2 table of an earlier L1 entry "
                                   "(shared or overlapping L2 tables)"
    : use == U_DATA ? "overlaps a data cluster"
    : "overlaps the header, the L1 table or the refcount table";
  return qb_error_set (QB_EDAMAGED, "%s: the L2 table at offset %llu of L1 entry %llu %s: "
                       "the qcow2 metadata is damaged", ly->path,
                       (unsigned long long) l2_off, (unsigned long long) i, what);
}

/* Lay layer L over the map built from the layers below it.  Invalid L1
 * entries and L2 tables that are not clusters of their own make the layer
 * damaged (-1, QB_EDAMAGED); invalid L2 entries mark their clusters damaged
 * (reads of them fail).  -1 also on I/O errors and when memory runs out. */
static int
layer_apply (chain_image *ci, unsigned l)
{
  layer *ly = &ci->layers[l];
  const qcow2_header *h = &ly->h;
  unsigned cb = h->cluster_bits;
  uint64_t cl = 1ull << cb;
  uint64_t span = 1ull << (2 * cb - 3);
  uint64_t nl1 = qcow2_l1_needed (h);   /* header check: nl1 * 8 bytes lie in the file */
  usage u = { NULL, (ly->file_size + cl - 1) >> cb };
  uint64_t *l1 = try_calloc (nl1, sizeof (uint64_t));
  uint64_t *l2 = l1 ? try_calloc (cl / 8, sizeof (uint64_t)) : NULL;
  int ret = -1;

  ci->building = ly->path;
  if (!l2 || !(u.bits = try_calloc ((size_t) ((u.n + 3) / 4), 1)))
    goto out;
  usage_meta (&u, cb, 0, cl);
  usage_meta (&u, cb, h->l1_offset, nl1 * 8);
  usage_meta (&u, cb, h->refcount_offset, (uint64_t) h->refcount_clusters << cb);
  if (nl1 && layer_read (ly, l1, nl1 * 8, h->l1_offset) < 0)
    goto out;
  for (uint64_t i = 0; i < nl1; i++) {
    uint64_t g0 = i * span, g1 = g0 + span, l2_off;
    if (g0 >= ci->size)
      break;
    if (g1 > h->size)
      g1 = h->size;
    if (qcow2_l1_decode (be64toh (l1[i]), h, ly->file_size, &l2_off) < 0) {
      qb_error_set (QB_EDAMAGED, "%s: L1 entry %llu (0x%016llx) is invalid: reserved bits, "
                    "a misaligned offset, or an L2 table outside the file (%llu bytes): "
                    "the file is truncated or damaged", ly->path, (unsigned long long) i,
                    (unsigned long long) be64toh (l1[i]), (unsigned long long) ly->file_size);
      goto out;
    }
    if (l2_off == 0)
      continue;
    unsigned use = usage_get (&u, l2_off >> cb);
    if (use != U_FREE) {
      l2_shared (ly, i, l2_off, use);
      goto out;
    }
    usage_set (&u, l2_off >> cb, U_L2);
    if (layer_read (ly, l2, cl, l2_off) < 0
        || layer_apply_l2 (ci, l, l2, g0, g1, &u) < 0)
      goto out;
    map_compact_range (ci, g0 >> ci->cbits, (g1 + (1ull << ci->cbits) - 1) >> ci->cbits);
  }
  /* Beyond this layer's end the layers below are not visible. */
  if (h->size < ci->size
      && map_fill (ci, (h->size + (1ull << ci->cbits) - 1) >> ci->cbits, ci->nentries,
                   E_ZEROS) < 0)
    goto out;
  map_compact_range (ci, 0, ci->nentries);
  ret = 0;
 out:
  ci->building = NULL;
  free (u.bits);
  free (l1);
  free (l2);
  return ret;
}

/* Whether entry E continues a run that started with entry FIRST (kind K). */
static inline bool
run_continues (unsigned k, uint64_t first, uint64_t expected, uint64_t e, bool by_class)
{
  unsigned k2 = E_KIND (e);
  if (k2 == K_UNALLOC)
    k2 = K_ZERO;
  if (k == K_ZERO || k2 == K_ZERO)
    return k == k2;
  if (by_class)
    return true;
  if (k == K_DATA)
    return e == expected;
  return k2 == k && E_LAYER (e) == E_LAYER (first);
}

/* The run of bytes starting at OFF (< size), at most MAXLEN, that read the
 * same way: zeros; data contiguous in one file; compressed or damaged in
 * one layer.  BY_CLASS merges every non-zero kind (for SEEK_DATA/HOLE). */
static void
map_run (const chain_image *ci, uint64_t off, uint64_t maxlen, bool by_class, run *r)
{
  uint64_t idx = off >> ci->cbits;
  uint64_t end = ci->size - off < maxlen ? ci->size : off + maxlen;
  uint64_t first = map_get (ci, idx);
  uint64_t pos = (idx + 1) << ci->cbits;
  unsigned k = E_KIND (first);

  if (k == K_UNALLOC)
    k = K_ZERO;
  r->kind = k;
  r->layer = E_LAYER (first);
  r->host = E_HOST (first) + (off & ((1ull << ci->cbits) - 1));
  if (k != K_ZERO) {
    uint64_t lim = ci->layers[r->layer].lim;
    if (off >= lim) {           /* past what the layers above show */
      r->kind = K_ZERO;
      r->len = (pos < end ? pos : end) - off;
      return;
    }
    if (lim < pos) {
      r->len = (lim < end ? lim : end) - off;
      return;
    }
  }
  uint64_t expected = first + ci->step;
  while (pos < end) {
    idx = pos >> ci->cbits;
    const chunk *c = &ci->chunks[idx >> CHUNK_BITS];
    uint64_t e = c->e ? c->e[idx & CHUNK_MASK] : chunk_entry (ci, c, idx & CHUNK_MASK);
    if (!run_continues (k, first, expected, e, by_class))
      break;
    unsigned k2 = E_KIND (e);
    uint64_t lim = (k2 == K_ZERO || k2 == K_UNALLOC) ? UINT64_MAX : ci->layers[E_LAYER (e)].lim;
    if (!c->e && (idx & CHUNK_MASK) == 0) {
      /* A whole patterned chunk continues the run. */
      uint64_t cend = pos + ((uint64_t) CHUNK_LEN << ci->cbits);
      if (cend <= lim) {
        pos = cend;
        expected += (uint64_t) CHUNK_LEN * ci->step;
        continue;
      }
    }
    pos += 1ull << ci->cbits;
    expected += ci->step;
    if (lim < pos) {
      pos = lim;
      break;
    }
  }
  r->len = (pos < end ? pos : end) - off;
}

/* Open layer L's libqcow handle if it has none; the caller holds L's lock.
 * libqcow reads nothing from a layer that names a backing file unless it has
 * a parent handle, so such a layer gets the handle of the layer below (lock
 * order: always from the higher layer to the lower).  Only compressed
 * clusters of L itself are ever read through it, so the parent is never
 * read; it just has to be there.  -1 with a libqcow message in MSG. */
static int
layer_qcow_open (chain_image *ci, unsigned l, char *msg, size_t msglen)
{
  layer *ly = &ci->layers[l];
  libqcow_error_t *err = NULL;
  libqcow_file_t *qf = NULL;

  if (ly->qf)
    return 0;
  /* libqcow opens by name: give it the name of our own descriptor, which
     nothing in the store can redirect. */
  char fdpath[64];
  snprintf (fdpath, sizeof fdpath, "/proc/self/fd/%d", ly->fd);
  if (libqcow_file_initialize (&qf, &err) != 1
      || libqcow_file_open (qf, fdpath, LIBQCOW_OPEN_READ, &err) != 1)
    goto fail;
  if (ly->h.backing_offset != 0 && ly->h.backing_size != 0) {
    if (l == 0) {
      snprintf (msg, msglen, "the base layer names a backing file");
      goto fail;
    }
    layer *below = &ci->layers[l - 1];
    pthread_mutex_lock (&below->lock);
    int r = layer_qcow_open (ci, l - 1, msg, msglen);
    libqcow_file_t *parent = below->qf;
    pthread_mutex_unlock (&below->lock);
    if (r < 0 || libqcow_file_set_parent_file (qf, parent, &err) != 1)
      goto fail;
  }
  ly->qf = qf;
  return 0;
 fail:
  if (err) {
    libqcow_error_sprint (err, msg, msglen);
    libqcow_error_free (&err);
  }
  if (qf)
    libqcow_file_free (&qf, NULL);
  return -1;
}

/* Read LEN bytes of the compressed clusters at guest offset OFF of layer L. */
static int
read_compressed (chain_image *ci, unsigned l, void *buf, size_t len, uint64_t off)
{
  layer *ly = &ci->layers[l];
  libqcow_error_t *err = NULL;
  char msg[256] = "";
  int ret = 0;

  pthread_mutex_lock (&ly->lock);
  if (layer_qcow_open (ci, l, msg, sizeof msg) < 0)
    ret = -1;
  else if (libqcow_file_read_buffer_at_offset (ly->qf, buf, len, (off64_t) off, &err)
           != (ssize_t) len) {
    if (err) {
      libqcow_error_sprint (err, msg, sizeof msg);
      libqcow_error_free (&err);
    }
    ret = -1;
  }
  pthread_mutex_unlock (&ly->lock);
  if (ret < 0)
    qb_error_set (QB_EIO, "%s: cannot read compressed data at guest offset %llu%s%s",
                  ly->path, (unsigned long long) off, *msg ? ": " : "", msg);
  return ret;
}

/* Sum the bytes of data and compressed runs. */
static uint64_t
map_allocated (const chain_image *ci)
{
  uint64_t sum = 0;
  for (uint64_t off = 0; off < ci->size; ) {
    run r;
    map_run (ci, off, ci->size - off, false, &r);
    if (r.kind == K_DATA || r.kind == K_COMP)
      sum += r.len;
    off += r.len;
  }
  return sum;
}

/* Take FD as layer I's file (NAME for messages) and check its header. */
static int
layer_init (chain_image *ci, size_t i, int fd, const char *name)
{
  layer *ly = &ci->layers[i];
  struct stat sb;

  ly->fd = fd;
  ly->path = strdup (name);
  if (!ly->path)
    return qb_error_set (QB_ENOMEM, "out of memory opening %s", name);
  if (fstat (fd, &sb) < 0)
    return qb_error_set_errno (errno, "stat layer %s", name);
  if (!S_ISREG (sb.st_mode))
    return qb_error_set (QB_EDAMAGED, "layer %s is not a regular file", name);
  if (qcow2_header_read (fd, name, &ly->h, &ly->file_size) < 0
      || qcow2_header_check (&ly->h, ly->file_size, name) < 0)
    return -1;
  return 0;
}

/* Word the error of a layer that could not be opened (see chain.h). */
int
chain_open_error (int errnum, size_t i, const char *path)
{
  if (errnum == ENOENT)
    return qb_error_set (QB_EDAMAGED, "layer %zu of the chain is missing: %s", i, path);
  if (errnum == ELOOP)
    return qb_error_set (QB_EDAMAGED, "layer %s is a symbolic link (or lies behind one): "
                         "links in the store are never followed; replace it with the file",
                         path);
  if (errnum == ENOTDIR)
    return qb_error_set (QB_EDAMAGED, "layer %s: a folder on its path is not a directory",
                         path);
  if (qb_errno_is_transient (errnum))
    return qb_error_set (errnum == ENOMEM ? QB_ENOMEM : QB_EAGAIN,
                         "cannot open layer %s now: %s (a temporary shortage of file "
                         "descriptors or memory: nothing is damaged, try again)",
                         path, strerror (errnum));
  return qb_error_set_errno (errnum, "open layer %s", path);
}

/* Open each layer file O_NOFOLLOW and build the map (see chain.h). */
chain_image *
chain_open (const char *const *files, size_t n)
{
  if (n == 0 || n > MAX_LAYERS) {
    qb_error_set (QB_EINVAL, "a chain needs 1 to %d layers, not %zu", MAX_LAYERS, n);
    return NULL;
  }
  int *fds = try_calloc (n, sizeof *fds);
  if (!fds)
    return NULL;
  for (size_t i = 0; i < n; i++) {
    /* O_NONBLOCK: a FIFO put in place of a layer must not hang the open */
    fds[i] = open (files[i], O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fds[i] < 0) {
      chain_open_error (errno, i, files[i]);
      while (i-- > 0)
        close (fds[i]);
      free (fds);
      return NULL;
    }
  }
  chain_image *ci = chain_open_fds (fds, files, n);
  free (fds);
  return ci;
}

/* Build the map of the open layer files FDS (see chain.h). */
chain_image *
chain_open_fds (const int *fds, const char *const *names, size_t n)
{
  chain_image *ci = NULL;
  size_t i = 0;

  if (n == 0 || n > MAX_LAYERS) {
    qb_error_set (QB_EINVAL, "a chain needs 1 to %d layers, not %zu", MAX_LAYERS, n);
    goto fail_fds;
  }
  if (!(ci = try_calloc (1, sizeof *ci)) || !(ci->layers = try_calloc (n, sizeof *ci->layers)))
    goto fail_fds;
  for (size_t k = 0; k < n; k++) {
    ci->layers[k].fd = -1;
    pthread_mutex_init (&ci->layers[k].lock, NULL);
  }
  ci->n = n;
  for (; i < n; i++)
    if (layer_init (ci, i, fds[i], names[i]) < 0) {
      i++;
      goto fail_fds;
    }

  ci->size = ci->layers[n - 1].h.size;
  ci->cbits = 21;
  uint64_t files = 0;
  for (size_t k = 0; k < n; k++) {
    const layer *ly = &ci->layers[k];
    if (ly->h.cluster_bits < ci->cbits)
      ci->cbits = ly->h.cluster_bits;
    files = ly->file_size > ((uint64_t) 1 << 56) - files ? (uint64_t) 1 << 56
      : files + ly->file_size;
  }
  ci->map_budget = MAP_BUDGET_BASE + files * MAP_BUDGET_RATIO;
  ci->step = (uint64_t) 1 << (ci->cbits - 9 + 18);
  ci->nentries = (ci->size + (1ull << ci->cbits) - 1) >> ci->cbits;
  uint64_t nchunks = (ci->nentries + CHUNK_MASK) >> CHUNK_BITS;
  if (nchunks > MAX_CHUNKS
      || nchunks * sizeof (chunk) > HEAD_BUDGET_BASE + files * HEAD_BUDGET_RATIO) {
    qb_error_set (QB_EDAMAGED, "%s: a virtual size of %llu bytes in clusters of %u bytes "
                  "is too big for the chain reader with layers of %llu bytes: the header "
                  "is damaged (or the disk is a huge, nearly empty one with tiny clusters)",
                  names[n - 1], (unsigned long long) ci->size, 1u << ci->cbits,
                  (unsigned long long) files);
    goto fail;
  }
  if (!(ci->chunks = try_calloc ((size_t) nchunks, sizeof *ci->chunks)))
    goto fail;
  ci->nchunks = (size_t) nchunks;
  ci->map_bytes = ci->nchunks * sizeof (chunk);

  uint64_t lim = UINT64_MAX;
  for (size_t k = n; k-- > 0; ) {
    if (ci->layers[k].h.size < lim)
      lim = ci->layers[k].h.size;
    ci->layers[k].lim = lim;
  }
  for (size_t k = 0; k < n; k++)
    if (layer_apply (ci, (unsigned) k) < 0)
      goto fail;
  ci->allocated = map_allocated (ci);
  return ci;

 fail_fds:
  /* the descriptors not yet taken by a layer */
  for (; i < n; i++)
    if (fds[i] >= 0)
      close (fds[i]);
 fail:
  chain_close (ci);
  return NULL;
}

/* See chain.h. */
chain_image *
chain_extend (const chain_image *prev, int fd, const char *name)
{
  size_t n = prev->n + 1;
  chain_image *ci = NULL;
  if (n > MAX_LAYERS) {
    qb_error_set (QB_EINVAL, "a chain needs 1 to %d layers, not %zu", MAX_LAYERS, n);
    close (fd);
    return NULL;
  }
  if (!(ci = try_calloc (1, sizeof *ci)) || !(ci->layers = try_calloc (n, sizeof *ci->layers))) {
    free (ci);
    close (fd);
    return NULL;
  }
  for (size_t k = 0; k < n; k++) {
    ci->layers[k].fd = -1;
    pthread_mutex_init (&ci->layers[k].lock, NULL);
  }
  ci->n = n;
  if (layer_init (ci, n - 1, fd, name) < 0)
    goto fail;
  layer *top = &ci->layers[n - 1];
  if (top->h.size != prev->size || top->h.cluster_bits < prev->cbits) {
    qb_error_set (QB_EINVAL, "%s: another size or finer clusters than the layers below: "
                  "the point is opened from its base", name);
    goto fail;
  }
  top->lim = prev->size;
  uint64_t files = top->file_size;
  for (size_t k = 0; k + 1 < n; k++) {
    const layer *p = &prev->layers[k];
    layer *ly = &ci->layers[k];
    ly->fd = fcntl (p->fd, F_DUPFD_CLOEXEC, 0);
    ly->path = strdup (p->path);
    if (ly->fd < 0 || !ly->path) {
      chain_open_error (ly->fd < 0 ? errno : ENOMEM, k, p->path);
      goto fail;
    }
    ly->file_size = p->file_size;
    ly->lim = p->lim;
    ly->h = p->h;
    files = p->file_size > ((uint64_t) 1 << 56) - files ? (uint64_t) 1 << 56
      : files + p->file_size;
  }
  ci->size = prev->size;
  ci->cbits = prev->cbits;
  ci->step = prev->step;
  ci->nentries = prev->nentries;
  ci->map_budget = MAP_BUDGET_BASE + files * MAP_BUDGET_RATIO;
  ci->map_bytes = prev->map_bytes;
  if (!(ci->chunks = try_calloc (prev->nchunks, sizeof *ci->chunks)))
    goto fail;
  ci->nchunks = prev->nchunks;
  for (size_t i = 0; i < prev->nchunks; i++) {
    ci->chunks[i].base = prev->chunks[i].base;
    if (prev->chunks[i].e) {
      if (!(ci->chunks[i].e = try_calloc (CHUNK_LEN, sizeof (uint64_t))))
        goto fail;
      memcpy (ci->chunks[i].e, prev->chunks[i].e, CHUNK_BYTES);
    }
  }
  if (layer_apply (ci, (unsigned) (n - 1)) < 0)
    goto fail;
  ci->allocated = map_allocated (ci);
  return ci;

 fail:
  chain_close (ci);
  return NULL;
}

/* See chain.h. */
size_t
chain_layers (const chain_image *ci)
{
  return ci->n;
}

/* See chain.h. */
int
chain_layer_fd (const chain_image *ci, size_t i)
{
  return i < ci->n ? ci->layers[i].fd : -1;
}

void
chain_close (chain_image *ci)
{
  if (!ci)
    return;
  for (size_t i = ci->n; i-- > 0; ) {    /* children before their parents */
    layer *ly = &ci->layers[i];
    if (ly->qf) {
      libqcow_file_close (ly->qf, NULL);
      libqcow_file_free (&ly->qf, NULL);
    }
    if (ly->fd >= 0)
      close (ly->fd);
    pthread_mutex_destroy (&ly->lock);
    free (ly->path);
  }
  for (size_t i = 0; i < ci->nchunks; i++)
    free (ci->chunks[i].e);
  free (ci->chunks);
  free (ci->layers);
  free (ci);
}

uint64_t
chain_size (const chain_image *ci)
{
  return ci->size;
}

uint64_t
chain_allocated_bytes (const chain_image *ci)
{
  return ci->allocated;
}

size_t
chain_map_bytes (const chain_image *ci)
{
  size_t sum = ci->nchunks * sizeof (chunk);
  for (size_t i = 0; i < ci->nchunks; i++)
    if (ci->chunks[i].e)
      sum += CHUNK_LEN * sizeof (uint64_t);
  return sum;
}

uint64_t
chain_map_clusters (const chain_image *ci)
{
  return ci->nentries;
}

/* Fail for damaged run R at guest offset OFF. */
static int
damaged (const chain_image *ci, const run *r, uint64_t off)
{
  return qb_error_set (QB_EDAMAGED, "%s: damaged qcow2 metadata for guest offset %llu (an invalid L2 entry, "
                       "or data outside the file or in a cluster that is also used elsewhere)",
                       ci->layers[r->layer].path, (unsigned long long) off);
}

ssize_t
chain_pread (chain_image *ci, void *buf, size_t len, uint64_t off)
{
  if (off >= ci->size || len == 0)
    return 0;
  if (len > ci->size - off)
    len = (size_t) (ci->size - off);
  if (len > SSIZE_MAX)
    len = SSIZE_MAX;
  size_t done = 0;
  while (done < len) {
    run r;
    char *p = (char *) buf + done;
    map_run (ci, off + done, len - done, false, &r);
    switch (r.kind) {
    case K_ZERO:
      memset (p, 0, r.len);
      break;
    case K_DATA:
      if (layer_read (&ci->layers[r.layer], p, r.len, r.host) < 0)
        return -1;
      break;
    case K_COMP:
      if (read_compressed (ci, r.layer, p, r.len, off + done) < 0)
        return -1;
      break;
    default:
      return damaged (ci, &r, off + done);
    }
    done += r.len;
  }
  return (ssize_t) len;
}

int
chain_extent_at (chain_image *ci, uint64_t off, uint64_t maxlen, chain_extent *ext)
{
  run r;

  if (off >= ci->size || maxlen == 0)
    return qb_error_set (QB_EINVAL, "extent at %llu (+%llu) is outside the image",
                         (unsigned long long) off, (unsigned long long) maxlen);
  map_run (ci, off, maxlen, false, &r);
  memset (ext, 0, sizeof *ext);
  ext->fd = -1;
  ext->length = r.len;
  switch (r.kind) {
  case K_ZERO:
    ext->kind = CHAIN_EXT_ZERO;
    return 0;
  case K_DATA:
    ext->kind = CHAIN_EXT_DATA;
    ext->fd = ci->layers[r.layer].fd;
    ext->fd_offset = r.host;
    return 0;
  case K_COMP:
    ext->kind = CHAIN_EXT_OTHER;
    return 0;
  default:
    return damaged (ci, &r, off);
  }
}

int64_t
chain_seek (chain_image *ci, uint64_t off, int whence)
{
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    qb_error_set (QB_EINVAL, "chain_seek: whence must be SEEK_DATA or SEEK_HOLE");
    return -1;
  }
  uint64_t pos = off;
  while (pos < ci->size) {
    run r;
    map_run (ci, pos, ci->size - pos, true, &r);
    bool hole = r.kind == K_ZERO;
    if (hole == (whence == SEEK_HOLE))
      return (int64_t) pos;
    pos += r.len;
  }
  if (whence == SEEK_HOLE && off < ci->size)
    return (int64_t) ci->size;
  qb_error_set (QB_ENOENT, "no %s at or after offset %llu",
                whence == SEEK_DATA ? "data" : "hole", (unsigned long long) off);
  return -1;
}

/* Check that every byte of the restore point resolves. */
int
chain_verify (chain_image *ci)
{
  uint64_t size = chain_size (ci);
  for (uint64_t off = 0; off < size;) {
    chain_extent e;
    if (chain_extent_at (ci, off, size - off, &e) < 0)
      return -1;
    if (e.length == 0)
      return qb_error_set (QB_EDAMAGED, "chain map has no extent at offset %llu",
                           (unsigned long long) off);
    off += e.length;
  }
  return 0;
}
