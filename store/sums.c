/* qmpbackupfs — per-cluster checksums of a layer and verifying them (see
 * sums.h).  The clusters are walked with the store's own qcow2 reader
 * (qcow2_walk); the structure is checked by chain_verify. */
#include "sums.h"
#include "store-int.h"
#include "qcow2.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <xxhash.h>

#define SUMS_MAGIC "QBSUMS\r\n"
#define SUMS_VERSION 1
#define SUMS_HEADER 128
#define SUMS_ENTRY 24
#define SUMS_TRAILER 8
#define SUMS_NAME_MAX 64
#define SUMS_SUFFIX ".sums"
#define VERIFY_SUFFIX ".verify.json"

enum { S_DATA = 0, S_ZERO = 1, S_COMP = 2, S_BAD = 3 };
#define KIND_MASK 0x1ffull

/* Bytes read from a layer at once: long sequential reads that still fit in
 * the CPU cache (the bytes are hashed right after the copy), and at least
 * the biggest compressed cluster of the layer (twice the cluster, in sectors). */
#define READ_CHUNK ((size_t) 1 << 20)

/* The read window for clusters of 2^CBITS bytes. */
static size_t
read_chunk (unsigned cbits)
{
  size_t need = ((size_t) 2 << cbits) + 512;
  return need > READ_CHUNK ? need : READ_CHUNK;
}
#define IO_BUF ((size_t) 64 << 10)

static void
put_le64 (uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t) (v >> (8 * i));
}

static void
put_le32 (uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t
get_le64 (const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

static uint32_t
get_le32 (const uint8_t *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

/* ---- reading a layer's clusters ---- */

/* A read-ahead window over a layer file. */
typedef struct reader {
  int fd;
  const char *name;
  uint64_t fsize;
  uint8_t *buf;          /* CAP bytes */
  size_t cap;
  uint64_t off;          /* file offset of buf[0] */
  size_t len;            /* valid bytes in buf */
  uint64_t bytes;        /* bytes handed out */
} reader;

/* LEN bytes at HOST of the layer, or NULL (QB_EIO: unreadable or past the end). */
static const uint8_t *
reader_get (reader *r, uint64_t host, uint64_t len)
{
  if (len > r->cap || host > r->fsize || len > r->fsize - host) {
    qb_error_set (QB_EIO, "%s: %llu bytes at offset %llu lie outside the file", r->name,
                  (unsigned long long) len, (unsigned long long) host);
    return NULL;
  }
  if (host < r->off || host + len > r->off + r->len) {
    size_t want = r->fsize - host < r->cap ? (size_t) (r->fsize - host) : r->cap;
    size_t got = 0;
    r->len = 0;
    while (got < want) {
      ssize_t n = pread (r->fd, r->buf + got, want - got, (off_t) (host + got));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      got += (size_t) n;
    }
    if (got < len) {
      qb_error_set (QB_EIO, "%s: cannot read %llu bytes at offset %llu: %s", r->name,
                    (unsigned long long) len, (unsigned long long) host,
                    got < want && errno ? strerror (errno) : "short read");
      return NULL;
    }
    r->off = host;
    r->len = got;
  }
  r->bytes += len;
  return r->buf + (host - r->off);
}

/* The sum entry for one cluster the walk met: *KIND, *HASH; -1 when its
 * bytes cannot be read (QB_EIO). */
static int
cluster_sum (reader *r, const qcow2_header *h, uint64_t len, qcow2_kind k, uint64_t host,
             uint64_t e, unsigned *kind, uint64_t *hash)
{
  const uint8_t *p;
  *hash = 0;
  switch (k) {
  case QCOW2_DATA:
    *kind = S_DATA;
    if (!(p = reader_get (r, host, len)))
      return -1;
    *hash = XXH3_64bits (p, len);
    return 0;
  case QCOW2_COMPRESSED: {
    uint64_t clen;
    *kind = S_COMP;
    qcow2_compressed_span (e, h, host, r->fsize, &clen);
    if (!(p = reader_get (r, host, clen)))
      return -1;
    *hash = XXH3_64bits (p, clen);
    return 0;
  }
  case QCOW2_ZERO:
    *kind = S_ZERO;
    return 0;
  default:
    *kind = S_BAD;
    return 0;
  }
}

/* Open layer FILE of DIRFD (no link) and read its header: the descriptor,
 * or -1 (errno kept in *ERRNUM for open failures, else 0 with an error). */
static int
layer_open (int dirfd, const char *file, qcow2_header *h, uint64_t *fsize, struct stat *sb,
            int *errnum)
{
  *errnum = 0;
  int fd = openat (dirfd, file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    *errnum = errno;
    return store_fs_error (errno, "open layer", file);
  }
  if (fstat (fd, sb) < 0 || !S_ISREG (sb->st_mode)) {
    close (fd);
    return qb_error_set (QB_EDAMAGED, "layer %s is not a regular file", file);
  }
  fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK);
  if (qcow2_header_read (fd, file, h, fsize) < 0 || qcow2_header_check (h, *fsize, file) < 0) {
    close (fd);
    return -1;
  }
  posix_fadvise (fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return fd;
}

/* ---- writing ---- */

/* Clusters met by the walk and summed together: the batch is cut into
 * slices of about equal bytes, each read and hashed by its own thread with
 * its own read window, so summing a layer costs about its bytes divided by
 * the CPUs (the walk's memory stays bounded: one batch). */
#define BATCH_MAX 8192
/* Below this many bytes in a batch, one thread sums it: a thread costs more. */
#define PAR_MIN ((uint64_t) 1 << 20)
#define SLICES_MAX 4

/* One cluster the walk met, and its sum once hashed. */
typedef struct sums_item {
  uint64_t guest, len, host, e;
  qcow2_kind k;
  unsigned kind;         /* S_*, set when hashed */
  uint64_t hash;
} sums_item;

/* A part of a batch summed by one thread. */
typedef struct sums_slice {
  reader r;              /* its own window over the layer */
  const qcow2_header *h;
  sums_item *items;
  size_t n;
  bool failed;
  char msg[512];         /* the error of a failed slice (errors are per thread) */
} sums_slice;

typedef struct writer {
  int fd;
  uint8_t buf[IO_BUF];
  size_t len;
  int err;               /* first errno */
  XXH3_state_t *xs;      /* hash of the entry bytes */
  const qcow2_header *h;
  uint64_t count;
  int rerr;              /* the layer could not be read */
  sums_item items[BATCH_MAX];
  size_t nitems;
  uint64_t weight;       /* bytes the batch reads */
  sums_slice slices[SLICES_MAX];
  size_t nslices;
  uint64_t bytes;        /* bytes summed so far */
} writer;

/* Write W's buffer at the file's current position; errors kept in W->err. */
static void
writer_flush (writer *w)
{
  size_t done = 0;
  while (done < w->len && !w->err) {
    ssize_t n = write (w->fd, w->buf + done, w->len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      w->err = errno;
    else
      done += (size_t) n;
  }
  w->len = 0;
}

/* Hash the clusters of slice S (run by any thread); a failure sets S->failed and S->msg. */
static void *
slice_run (void *opaque)
{
  sums_slice *s = opaque;
  for (size_t i = 0; i < s->n && !s->failed; i++) {
    sums_item *it = &s->items[i];
    if (cluster_sum (&s->r, s->h, it->len, it->k, it->host, it->e, &it->kind, &it->hash) < 0) {
      s->failed = true;
      snprintf (s->msg, sizeof s->msg, "%s", qb_error_msg ());
    }
  }
  return NULL;
}

/* The bytes item IT makes its reader read (a compressed cluster: at most
 * two clusters). */
static uint64_t
item_weight (const sums_item *it, const qcow2_header *h)
{
  if (it->k == QCOW2_DATA)
    return it->len;
  if (it->k == QCOW2_COMPRESSED)
    return (uint64_t) 1 << h->cluster_bits;
  return 0;
}

/* Hash W's batch in up to W->nslices threads, then append its entries in
 * guest order: 0, or -1 (W->rerr set, the first failing cluster's error). */
static int
writer_batch (writer *w)
{
  size_t ns = w->weight >= PAR_MIN ? w->nslices : 1;
  /* cut the batch into NS runs of about W->weight / NS bytes each */
  size_t at = 0;
  uint64_t acc = 0;
  for (size_t s = 0; s < ns; s++) {
    sums_slice *sl = &w->slices[s];
    sl->items = w->items + at;
    sl->failed = false;
    uint64_t goal = w->weight * (s + 1) / ns;
    size_t end = at;
    if (s == ns - 1)
      end = w->nitems;
    else
      while (end < w->nitems && acc < goal)
        acc += item_weight (&w->items[end++], w->h);
    sl->n = end - at;
    at = end;
  }
  pthread_t th[SLICES_MAX];
  bool started[SLICES_MAX] = { false };
  for (size_t s = 1; s < ns; s++)
    if (w->slices[s].n)
      started[s] = pthread_create (&th[s], NULL, slice_run, &w->slices[s]) == 0;
  slice_run (&w->slices[0]);
  for (size_t s = 1; s < ns; s++) {
    if (started[s])
      pthread_join (th[s], NULL);
    else
      slice_run (&w->slices[s]);     /* no thread to be had: sum it here */
  }
  for (size_t s = 0; s < ns; s++)
    if (w->slices[s].failed) {
      qb_error_set (QB_EIO, "%s", w->slices[s].msg);
      w->rerr = 1;
      return -1;
    }
  for (size_t i = 0; i < w->nitems; i++) {
    sums_item *it = &w->items[i];
    uint64_t host = it->kind == S_BAD ? 0 : it->host;
    if (w->len + SUMS_ENTRY > sizeof w->buf)
      writer_flush (w);
    uint8_t *p = w->buf + w->len;
    put_le64 (p, (it->guest & ~KIND_MASK) | it->kind);
    put_le64 (p + 8, host);
    put_le64 (p + 16, it->hash);
    XXH3_64bits_update (w->xs, p, SUMS_ENTRY);
    w->len += SUMS_ENTRY;
    w->count++;
  }
  w->nitems = 0;
  w->weight = 0;
  return 0;
}

/* qcow2_walk callback of store_sums_write: note one cluster; a full batch is summed. */
static int
sums_entry (void *opaque, uint64_t guest, uint64_t len, qcow2_kind k, uint64_t host, uint64_t e)
{
  writer *w = opaque;
  sums_item *it = &w->items[w->nitems++];
  *it = (sums_item) { .guest = guest, .len = len, .host = host, .e = e, .k = k };
  w->weight += item_weight (it, w->h);
  if (w->nitems == BATCH_MAX || w->weight >= ((uint64_t) 256 << 20))
    return writer_batch (w);
  return 0;
}

/* The threads that sum a layer: the CPUs online, at most SLICES_MAX. */
static size_t
sums_threads (void)
{
  long n = sysconf (_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > SLICES_MAX ? SLICES_MAX : (size_t) n;
}

/* Fill the 128-byte header HDR. */
static void
header_make (uint8_t *hdr, const qcow2_header *h, uint64_t fsize, uint64_t count,
             uint64_t bytes, const char *layer)
{
  memset (hdr, 0, SUMS_HEADER);
  memcpy (hdr, SUMS_MAGIC, 8);
  put_le32 (hdr + 8, SUMS_VERSION);
  put_le32 (hdr + 12, h->cluster_bits);
  put_le64 (hdr + 16, h->size);
  put_le64 (hdr + 24, fsize);
  put_le64 (hdr + 32, count);
  put_le64 (hdr + 40, bytes);
  put_le64 (hdr + 48, (uint64_t) qb_now_us ());
  size_t nl = strlen (layer);
  memcpy (hdr + 56, layer, nl < SUMS_NAME_MAX - 1 ? nl : SUMS_NAME_MAX - 1);
}

/* Remove file NAME of folder CFD; ENOENT is fine.  0 or -1. */
static int
remove_at (int cfd, const char *name)
{
  if (unlinkat (cfd, name, 0) < 0 && errno != ENOENT)
    return qb_error_set_errno (errno, "remove %s/%s", STORE_SIDECAR_DIR, name);
  return 0;
}

/* store_sums_write_file, and store_sums_write_unsynced when !SYNC. */
static int
sums_write (int dirfd, const char *file, const char *layer, bool sync)
{
  /* FILE may be the layer's temp (".tmp-NAME"): one component, not "." or ".." */
  if (!qb_name_is_safe (layer) || !file || !*file || strchr (file, '/')
      || strcmp (file, ".") == 0 || strcmp (file, "..") == 0)
    return qb_error_set (QB_EINVAL, "invalid layer name \"%s\"", layer ? layer : "");
  qcow2_header h;
  uint64_t fsize;
  struct stat sb;
  int errnum;
  int lfd = layer_open (dirfd, file, &h, &fsize, &sb, &errnum);
  if (lfd < 0)
    return -1;
  int ret = -1, cfd = -1;
  char *name = qb_asprintf ("%s" SUMS_SUFFIX, layer);
  char *tmp = qb_asprintf (STORE_TMP_PREFIX "%s" SUMS_SUFFIX, layer);
  char *vname = qb_asprintf ("%s" VERIFY_SUFFIX, layer);
  size_t cap = read_chunk (h.cluster_bits);
  writer *w = calloc (1, sizeof *w);
  bool nomem = !w || !(w->xs = XXH3_createState ());
  if (w) {
    w->fd = -1;
    w->nslices = sums_threads ();
    for (size_t s = 0; s < w->nslices; s++) {
      w->slices[s].r = (reader) { lfd, file, fsize, malloc (cap), cap, 0, 0, 0 };
      w->slices[s].h = &h;
      nomem |= !w->slices[s].r.buf;
    }
  }
  if (nomem) {
    qb_error_set (QB_ENOMEM, "out of memory summing layer %s", layer);
    goto out;
  }
  if ((cfd = store_sidecar_dir (dirfd, true)) < 0)
    goto out;
  unlinkat (cfd, tmp, 0);
  w->fd = openat (cfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (w->fd < 0) {
    store_fs_error (errno, "create", tmp);
    goto out;
  }
  uint8_t hdr[SUMS_HEADER];
  memset (hdr, 0, sizeof hdr);
  memcpy (w->buf, hdr, SUMS_HEADER);      /* placeholder, rewritten below */
  w->len = SUMS_HEADER;
  XXH3_64bits_reset (w->xs);
  w->h = &h;
  int wr = qcow2_walk (lfd, file, &h, fsize, sums_entry, w);
  if (wr == 0 && w->nitems)
    wr = writer_batch (w);
  if (wr != 0) {
    if (!w->rerr && wr > 0)
      qb_error_set (QB_EIO, "summing layer %s failed", layer);
    qb_error_prefix ("summing layer %s", layer);
    goto fail_tmp;
  }
  uint8_t trailer[SUMS_TRAILER];
  uint64_t bytes = 0;
  for (size_t s = 0; s < w->nslices; s++)
    bytes += w->slices[s].r.bytes;
  header_make (hdr, &h, fsize, w->count, bytes, layer);
  put_le64 (trailer, XXH3_64bits_withSeed (hdr, SUMS_HEADER, XXH3_64bits_digest (w->xs)));
  if (w->len + SUMS_TRAILER > sizeof w->buf)
    writer_flush (w);
  memcpy (w->buf + w->len, trailer, SUMS_TRAILER);
  w->len += SUMS_TRAILER;
  writer_flush (w);
  if (!w->err && pwrite (w->fd, hdr, SUMS_HEADER, 0) != SUMS_HEADER)
    w->err = errno ? errno : EIO;
  if (!w->err && sync && fsync (w->fd) < 0)
    w->err = errno;
  if (w->err) {
    if (w->err == ENOSPC || w->err == EDQUOT)
      qb_error_set (QB_ENOSPC, "the store is full writing the checksums of layer %s: "
                    "free space and run the backup again", layer);
    else
      qb_error_set_errno (w->err, "write %s/%s", STORE_SIDECAR_DIR, tmp);
    goto fail_tmp;
  }
  close (w->fd);
  w->fd = -1;
  if (renameat (cfd, tmp, cfd, name) < 0) {
    qb_error_set_errno (errno, "rename %s/%s", STORE_SIDECAR_DIR, tmp);
    goto fail_tmp;
  }
  /* an earlier verify judged other bytes */
  remove_at (cfd, vname);
  if (sync && fsync (cfd) < 0) {
    qb_error_set_errno (errno, "fsync %s", STORE_SIDECAR_DIR);
    goto out;
  }
  ret = 0;
  goto out;
 fail_tmp:
  unlinkat (cfd, tmp, 0);
 out:
  if (w) {
    if (w->fd >= 0)
      close (w->fd);
    if (w->xs)
      XXH3_freeState (w->xs);
    for (size_t s = 0; s < w->nslices; s++)
      free (w->slices[s].r.buf);
    free (w);
  }
  if (cfd >= 0)
    close (cfd);
  close (lfd);
  free (name);
  free (tmp);
  free (vname);
  return ret;
}

int
store_sums_write_file (int dirfd, const char *file, const char *layer)
{
  return sums_write (dirfd, file, layer, true);
}

int
store_sums_write_unsynced (int dirfd, const char *file, const char *layer)
{
  return sums_write (dirfd, file, layer, false);
}

int
store_sums_write (int dirfd, const char *layer)
{
  return store_sums_write_file (dirfd, layer, layer);
}

int
store_sums_remove (int dirfd, const char *layer)
{
  if (!qb_name_is_safe (layer))
    return qb_error_set (QB_EINVAL, "invalid layer name \"%s\"", layer ? layer : "");
  int cfd = store_sidecar_dir (dirfd, false);
  if (cfd < 0)
    return qb_error_code () == QB_ENOENT ? (qb_error_clear (), 0) : -1;
  char *a = qb_asprintf ("%s" SUMS_SUFFIX, layer);
  char *b = qb_asprintf ("%s" VERIFY_SUFFIX, layer);
  int r = remove_at (cfd, a) < 0 || remove_at (cfd, b) < 0 ? -1 : 0;
  fsync (cfd);
  free (a);
  free (b);
  close (cfd);
  return r;
}

/* ---- verifying ---- */

const char *
store_verify_result_word (store_verify_result r)
{
  switch (r) {
  case STORE_VERIFY_OK: return "ok";
  case STORE_VERIFY_DAMAGED: return "damaged";
  case STORE_VERIFY_UNVERIFIABLE: return "unverifiable";
  case STORE_VERIFY_SUMS_DAMAGED: return "sums-damaged";
  case STORE_VERIFY_GONE: return "gone";
  }
  return "?";
}

/* A sequential reader of a .sums file's entries. */
typedef struct sums_in {
  int fd;
  uint64_t pos, end;     /* next entry's offset; where the entries end */
  uint8_t buf[IO_BUF];
  size_t have, at;
} sums_in;

/* The next entry into P (24 bytes): 1, 0 at the end, -1 on a read error. */
static int
sums_next (sums_in *s, const uint8_t **p)
{
  if (s->at + SUMS_ENTRY > s->have) {
    if (s->pos >= s->end)
      return 0;
    size_t want = s->end - s->pos < IO_BUF ? (size_t) (s->end - s->pos) : IO_BUF;
    want -= want % SUMS_ENTRY;
    size_t got = 0;
    while (got < want) {
      ssize_t n = pread (s->fd, s->buf + got, want - got, (off_t) (s->pos + got));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return -1;
      got += (size_t) n;
    }
    s->pos += got;
    s->have = got;
    s->at = 0;
  }
  *p = s->buf + s->at;
  s->at += SUMS_ENTRY;
  return 1;
}

/* Note damaged cluster GUEST (HOST) in REP. */
static void
note_damage (store_verify_report *rep, uint64_t guest, uint64_t host)
{
  if (rep->nlisted < STORE_VERIFY_LISTED) {
    rep->guest[rep->nlisted] = guest;
    rep->host[rep->nlisted] = host;
    rep->nlisted++;
  }
  rep->damaged++;
}

/* State of the comparison walk. */
typedef struct cmp_state {
  sums_in *in;
  const uint8_t *cur;    /* the current entry, NULL at the end */
  reader *r;
  const qcow2_header *h;
  store_verify_report *rep;
  int ioerr;             /* the .sums file could not be read */
} cmp_state;

static void
cmp_advance (cmp_state *cs)
{
  int k = sums_next (cs->in, &cs->cur);
  if (k <= 0)
    cs->cur = NULL;
  if (k < 0)
    cs->ioerr = 1;
}

/* qcow2_walk callback of store_verify_layer: compare one cluster. */
static int
cmp_entry (void *opaque, uint64_t guest, uint64_t len, qcow2_kind k, uint64_t host, uint64_t e)
{
  cmp_state *cs = opaque;
  /* clusters the sums list but the layer no longer allocates */
  while (cs->cur && (get_le64 (cs->cur) & ~KIND_MASK) < guest) {
    note_damage (cs->rep, get_le64 (cs->cur) & ~KIND_MASK, get_le64 (cs->cur + 8));
    cmp_advance (cs);
  }
  if (cs->ioerr)
    return 1;
  unsigned kind;
  uint64_t hash;
  if (k == QCOW2_BAD) {
    note_damage (cs->rep, guest, 0);
    if (cs->cur && (get_le64 (cs->cur) & ~KIND_MASK) == guest)
      cmp_advance (cs);
    return 0;
  }
  qb_error_clear ();
  int rd = cluster_sum (cs->r, cs->h, len, k, host, e, &kind, &hash);
  if (rd < 0 && qb_err_is_transient (qb_error_code ()))
    return -1;
  if (!cs->cur || (get_le64 (cs->cur) & ~KIND_MASK) != guest) {
    note_damage (cs->rep, guest, host);      /* allocated since the commit */
    return 0;
  }
  if (kind == S_DATA || kind == S_COMP)
    cs->rep->clusters++;
  if (rd < 0 || (get_le64 (cs->cur) & KIND_MASK) != kind || get_le64 (cs->cur + 16) != hash)
    note_damage (cs->rep, guest, host);
  cmp_advance (cs);
  return 0;
}

/* Check the .sums file SFD for layer LAYER with header H: 0 with *COUNT,
 * or -1 with the reason in REP->why (sums damaged). */
static int
sums_check (int sfd, const char *layer, const qcow2_header *h, store_verify_report *rep,
            uint64_t *count, sums_in *in)
{
  struct stat sb;
  uint8_t hdr[SUMS_HEADER];
  if (fstat (sfd, &sb) < 0 || !S_ISREG (sb.st_mode)) {
    snprintf (rep->why, sizeof rep->why, "%s" SUMS_SUFFIX " is not a regular file", layer);
    return -1;
  }
  uint64_t size = (uint64_t) sb.st_size;
  /* the most entries a layer of this virtual size can have */
  uint64_t maxn = (h->size >> h->cluster_bits) + 2;
  if (size < SUMS_HEADER + SUMS_TRAILER || (size - SUMS_HEADER - SUMS_TRAILER) % SUMS_ENTRY
      || (size - SUMS_HEADER - SUMS_TRAILER) / SUMS_ENTRY > maxn) {
    snprintf (rep->why, sizeof rep->why, "%s" SUMS_SUFFIX " has %llu bytes, not the length "
              "of a sums file for this layer (truncated or damaged)", layer,
              (unsigned long long) size);
    return -1;
  }
  if (pread (sfd, hdr, SUMS_HEADER, 0) != SUMS_HEADER) {
    snprintf (rep->why, sizeof rep->why, "%s" SUMS_SUFFIX " cannot be read", layer);
    return -1;
  }
  uint64_t n = (size - SUMS_HEADER - SUMS_TRAILER) / SUMS_ENTRY;
  char nm[SUMS_NAME_MAX];
  memcpy (nm, hdr + 56, SUMS_NAME_MAX);
  nm[SUMS_NAME_MAX - 1] = '\0';
  const char *bad = NULL;
  if (memcmp (hdr, SUMS_MAGIC, 8) != 0)
    bad = "bad magic";
  else if (get_le32 (hdr + 8) != SUMS_VERSION)
    bad = "unknown version";
  else if (get_le64 (hdr + 32) != n)
    bad = "its entry count does not match its length";
  else if (strncmp (nm, layer, SUMS_NAME_MAX - 1) != 0)
    bad = "it names another layer";
  if (bad) {
    snprintf (rep->why, sizeof rep->why, "%s" SUMS_SUFFIX " is damaged (%s)", layer, bad);
    return -1;
  }
  /* the checksum of the file, and the order of its entries */
  XXH3_state_t *xs = XXH3_createState ();
  if (!xs) {
    qb_error_set (QB_ENOMEM, "out of memory verifying %s", layer);
    return -2;
  }
  XXH3_64bits_reset (xs);
  in->fd = sfd;
  in->pos = SUMS_HEADER;
  in->end = SUMS_HEADER + n * SUMS_ENTRY;
  in->have = in->at = 0;
  const uint8_t *p;
  int k;
  uint64_t prev = 0, i = 0;
  bool order = true;
  while ((k = sums_next (in, &p)) == 1) {
    uint64_t g = get_le64 (p) & ~KIND_MASK;
    if ((i > 0 && g <= prev) || (get_le64 (p) & KIND_MASK) > S_BAD)
      order = false;
    prev = g;
    i++;
    XXH3_64bits_update (xs, p, SUMS_ENTRY);
  }
  uint64_t seed = XXH3_64bits_digest (xs);
  XXH3_freeState (xs);
  uint8_t tr[SUMS_TRAILER];
  if (k < 0 || pread (sfd, tr, SUMS_TRAILER, (off_t) (size - SUMS_TRAILER)) != SUMS_TRAILER) {
    snprintf (rep->why, sizeof rep->why, "%s" SUMS_SUFFIX " cannot be read", layer);
    return -1;
  }
  if (get_le64 (tr) != XXH3_64bits_withSeed (hdr, SUMS_HEADER, seed)) {
    snprintf (rep->why, sizeof rep->why, "%s" SUMS_SUFFIX " is damaged (its own checksum "
              "does not match)", layer);
    return -1;
  }
  if (!order) {
    snprintf (rep->why, sizeof rep->why, "%s" SUMS_SUFFIX " is damaged (entries out of "
              "order)", layer);
    return -1;
  }
  if (get_le32 (hdr + 12) != h->cluster_bits) {
    /* the sums are whole: the layer's header changed since its commit */
    snprintf (rep->why, sizeof rep->why, "its header says clusters of %u bytes, but they "
              "were %u bytes when it was committed", 1u << h->cluster_bits,
              get_le32 (hdr + 12) <= 21 ? 1u << get_le32 (hdr + 12) : 0);
    return 1;
  }
  *count = n;
  in->pos = SUMS_HEADER;
  in->have = in->at = 0;
  return 0;
}

/* The qcow2 structure check of the open layer LFD (chain_verify on it
 * alone): 0 when whole, 1 with REP->why when damaged, -1 on shortages. */
static int
structure_check (int lfd, const char *layer, store_verify_report *rep)
{
  int fd = fcntl (lfd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0)
    return store_fs_error (errno, "duplicate", layer);
  const char *names[1] = { layer };
  chain_image *ci = chain_open_fds (&fd, names, 1);
  if (ci && chain_verify (ci) == 0) {
    chain_close (ci);
    return 0;
  }
  chain_close (ci);
  if (qb_err_is_transient (qb_error_code ()))
    return -1;
  snprintf (rep->why, sizeof rep->why, "%s", qb_error_msg ());
  qb_error_clear ();
  return 1;
}

int
store_verify_layer (int dirfd, const char *layer, store_verify_report *rep)
{
  memset (rep, 0, sizeof *rep);
  if (!qb_name_is_safe (layer))
    return qb_error_set (QB_EINVAL, "invalid layer name \"%s\"", layer ? layer : "");
  qcow2_header h;
  uint64_t fsize;
  int errnum;
  int lfd = layer_open (dirfd, layer, &h, &fsize, &rep->sb, &errnum);
  if (lfd < 0) {
    if (errnum == ENOENT) {
      rep->result = STORE_VERIFY_GONE;
      snprintf (rep->why, sizeof rep->why, "layer %s was removed meanwhile", layer);
      qb_error_clear ();
      return 0;
    }
    if (qb_err_is_transient (qb_error_code ()))
      return -1;
    rep->result = STORE_VERIFY_DAMAGED;
    snprintf (rep->why, sizeof rep->why, "%s", qb_error_msg ());
    qb_error_clear ();
    return 0;
  }
  int ret = 0;
  sums_in *in = NULL;
  reader r = { lfd, layer, fsize, NULL, 0, 0, 0, 0 };
  int sc = structure_check (lfd, layer, rep);
  if (sc < 0) {
    ret = -1;
    goto out;
  }
  char structure[512] = "";
  if (sc > 0)
    snprintf (structure, sizeof structure, "%s", rep->why);
  rep->why[0] = '\0';

  char *sname = qb_asprintf (STORE_SIDECAR_DIR "/%s" SUMS_SUFFIX, layer);
  int sfd = qb_openat_nofollow (dirfd, sname, O_RDONLY | O_NONBLOCK);
  int serr = errno;
  free (sname);
  uint64_t count = 0;
  if (sfd < 0) {
    struct stat sb;
    if (qb_errno_is_transient (serr)) {
      store_fs_error (serr, "open the sums of", layer);
      ret = -1;
      goto out;
    }
    if (fstatat (dirfd, layer, &sb, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT) {
      rep->result = STORE_VERIFY_GONE;
      snprintf (rep->why, sizeof rep->why, "layer %s was removed meanwhile", layer);
      goto out;
    }
    rep->result = STORE_VERIFY_UNVERIFIABLE;
    snprintf (rep->why, sizeof rep->why, serr == ENOENT
              ? "layer %s has no checksums (made before they were kept, or by another program)"
              : serr == ELOOP ? "the checksums of layer %s are a symbolic link: not followed"
              : "the checksums of layer %s cannot be opened", layer);
  } else {
    in = malloc (sizeof *in);
    if (!in) {
      close (sfd);
      ret = qb_error_set (QB_ENOMEM, "out of memory verifying %s", layer);
      goto out;
    }
    int k = sums_check (sfd, layer, &h, rep, &count, in);
    if (k == -2) {
      close (sfd);
      ret = -1;
      goto out;
    }
    if (k == -1)
      rep->result = STORE_VERIFY_SUMS_DAMAGED;
    else if (k == 1)
      rep->result = STORE_VERIFY_DAMAGED;
    else {
      r.cap = read_chunk (h.cluster_bits);
      if (!(r.buf = malloc (r.cap))) {
        close (sfd);
        ret = qb_error_set (QB_ENOMEM, "out of memory verifying %s", layer);
        goto out;
      }
      cmp_state cs = { in, NULL, &r, &h, rep, 0 };
      cmp_advance (&cs);
      int wr = qcow2_walk (lfd, layer, &h, fsize, cmp_entry, &cs);
      if (wr < 0 && qb_err_is_transient (qb_error_code ())) {
        close (sfd);
        ret = -1;
        goto out;
      }
      if (wr < 0 && !structure[0])
        snprintf (structure, sizeof structure, "%s", qb_error_msg ());
      qb_error_clear ();
      while (wr == 0 && cs.cur && !cs.ioerr) {
        note_damage (rep, get_le64 (cs.cur) & ~KIND_MASK, get_le64 (cs.cur + 8));
        cmp_advance (&cs);
      }
      if (cs.ioerr) {
        rep->result = STORE_VERIFY_SUMS_DAMAGED;
        snprintf (rep->why, sizeof rep->why, "%s" SUMS_SUFFIX " cannot be read", layer);
      } else
        rep->result = rep->damaged ? STORE_VERIFY_DAMAGED : STORE_VERIFY_OK;
    }
    close (sfd);
  }
  if (structure[0]) {
    if (rep->why[0] && rep->result != STORE_VERIFY_DAMAGED)
      snprintf (rep->why + strlen (rep->why), sizeof rep->why - strlen (rep->why),
                "; and %s", structure);
    else if (rep->why[0])
      snprintf (rep->why + strlen (rep->why), sizeof rep->why - strlen (rep->why), "; %s",
                structure);
    else
      snprintf (rep->why, sizeof rep->why, "%s", structure);
    rep->result = STORE_VERIFY_DAMAGED;
  }
 out:
  rep->bytes = r.bytes;
  free (r.buf);
  free (in);
  close (lfd);
  return ret;
}

/* The damage text of REP made at TIME_US (malloc'd). */
static char *
damage_text (const char *when, uint64_t damaged, json_object *offsets, const char *why)
{
  size_t n = offsets ? json_object_array_length (offsets) : 0;
  char list[256] = "";
  for (size_t i = 0; i < n && i < 8; i++)
    snprintf (list + strlen (list), sizeof list - strlen (list), "%s%lld", i ? ", " : "",
              (long long) json_object_get_int64 (json_object_array_get_idx (offsets, i)));
  if (n > 8)
    snprintf (list + strlen (list), sizeof list - strlen (list), ", ...");
  if (damaged && n)
    return qb_asprintf ("verify at %s found %llu damaged cluster%s at guest offsets %s%s%s; "
                        "restore from another point", when, (unsigned long long) damaged,
                        damaged == 1 ? "" : "s", list, why && *why ? " (" : "",
                        why && *why ? ")" : "");
  return qb_asprintf ("verify at %s found the layer damaged (%s); restore from another point",
                      when, why && *why ? why : "no detail");
}

int
store_verify_save (int dirfd, const char *layer, const store_verify_report *rep,
                   int64_t time_us)
{
  if (rep->result == STORE_VERIFY_GONE)
    return 0;
  if (!qb_name_is_safe (layer))
    return qb_error_set (QB_EINVAL, "invalid layer name \"%s\"", layer ? layer : "");
  char when[40];
  qb_format_utc (time_us, when, sizeof when);
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "layer", json_object_new_string (layer));
  json_object_object_add (o, "time", json_object_new_string (when));
  json_object_object_add (o, "time_us", json_object_new_int64 (time_us));
  json_object_object_add (o, "result",
                          json_object_new_string (store_verify_result_word (rep->result)));
  json_object_object_add (o, "clusters", json_object_new_int64 ((int64_t) rep->clusters));
  json_object_object_add (o, "bytes", json_object_new_int64 ((int64_t) rep->bytes));
  json_object_object_add (o, "damaged_clusters", json_object_new_int64 ((int64_t) rep->damaged));
  json_object *g = json_object_new_array (), *hs = json_object_new_array ();
  for (size_t i = 0; i < rep->nlisted; i++) {
    json_object_array_add (g, json_object_new_int64 ((int64_t) rep->guest[i]));
    json_object_array_add (hs, json_object_new_int64 ((int64_t) rep->host[i]));
  }
  json_object_object_add (o, "guest_offsets", g);
  json_object_object_add (o, "host_offsets", hs);
  if (rep->why[0])
    json_object_object_add (o, "detail", json_object_new_string (rep->why));
  json_object_object_add (o, "file_size", json_object_new_int64 ((int64_t) rep->sb.st_size));
  json_object_object_add (o, "file_ino", json_object_new_int64 ((int64_t) rep->sb.st_ino));
  json_object_object_add (o, "file_mtime_ns",
                          json_object_new_int64 ((int64_t) rep->sb.st_mtim.tv_sec * 1000000000
                                                 + rep->sb.st_mtim.tv_nsec));
  int ret = -1;
  int cfd = store_sidecar_dir (dirfd, true);
  if (cfd >= 0) {
    if (rep->result == STORE_VERIFY_DAMAGED) {
      char *t = damage_text (when, rep->damaged, g, rep->why);
      json_object_object_add (o, "damage", json_object_new_string (t));
      free (t);
    }
    char *name = qb_asprintf ("%s" VERIFY_SUFFIX, layer);
    ret = store_json_write_at (NULL, cfd, STORE_SIDECAR_DIR, name, o);
    free (name);
    close (cfd);
  }
  json_object_put (o);
  return ret;
}

/* Integer member KEY of O, or -1. */
static int64_t
get_int (json_object *o, const char *key)
{
  json_object *v;
  if (!json_object_object_get_ex (o, key, &v) || !json_object_is_type (v, json_type_int))
    return -1;
  return json_object_get_int64 (v);
}

char *
store_verify_damage (int dirfd, const char *layer, const struct stat *sb)
{
  if (!qb_name_is_safe (layer))
    return NULL;
  int cfd = openat (dirfd, STORE_SIDECAR_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (cfd < 0)
    return NULL;
  char *name = qb_asprintf ("%s" VERIFY_SUFFIX, layer);
  int e;
  json_object *o = store_json_load_at (cfd, name, &e);
  free (name);
  close (cfd);
  char *text = NULL;
  json_object *v;
  if (o && json_object_object_get_ex (o, "result", &v)
      && strcmp (json_object_get_string (v), "damaged") == 0
      && get_int (o, "file_size") == (int64_t) sb->st_size
      && get_int (o, "file_mtime_ns") == (int64_t) sb->st_mtim.tv_sec * 1000000000
                                         + sb->st_mtim.tv_nsec) {
    if (json_object_object_get_ex (o, "damage", &v) && json_object_is_type (v, json_type_string)
        && json_object_get_string_len (v) > 0 && json_object_get_string_len (v) < 2048)
      text = qb_strdup (json_object_get_string (v));
    else
      text = qb_strdup ("a verify found this layer damaged; restore from another point");
  }
  json_object_put (o);
  qb_error_clear ();
  return text;
}

int
store_verify_store_layer (store *st, const store_layer *l, store_verify_report *rep)
{
  size_t rl = strlen (st->root);
  memset (rep, 0, sizeof *rep);
  if (!l->path || strncmp (l->path, st->root, rl) != 0 || l->path[rl] != '/')
    return qb_error_set (QB_EINVAL, "layer %s is not in the store %s",
                         l->path ? l->path : "?", st->root);
  char *dir = qb_strdup (l->path + rl + 1);
  char *slash = strrchr (dir, '/');
  if (!slash) {
    free (dir);
    return qb_error_set (QB_EINVAL, "layer %s is not in a disk folder", l->path);
  }
  *slash = '\0';
  int dfd = qb_openat_nofollow (st->rootfd, dir, O_RDONLY | O_DIRECTORY);
  free (dir);
  if (dfd < 0) {
    if (errno == ENOENT) {
      rep->result = STORE_VERIFY_GONE;
      snprintf (rep->why, sizeof rep->why, "layer %s was removed meanwhile", l->name);
      return 0;
    }
    return store_fs_error (errno, "open the folder of", l->path);
  }
  int r = store_verify_layer (dfd, l->name, rep);
  if (r == 0 && store_verify_save (dfd, l->name, rep, qb_now_us ()) < 0) {
    /* the result stands; keeping it failed (reported, not fatal) */
    snprintf (rep->why + strlen (rep->why), sizeof rep->why - strlen (rep->why),
              "%s(the result could not be kept: %s)", rep->why[0] ? " " : "", qb_error_msg ());
    qb_error_clear ();
  }
  close (dfd);
  return r;
}
