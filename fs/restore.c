/* qmpbackupfs — restore images: a restore point read through the chain
 * reader, shared by every open of the same point, with data extents spliced
 * straight from the layer files. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/util.h"
#include "fs/fs.h"
#include "store/qcow2.h"

#define READ_SEGMENTS 64
#define ZERO_LEN (1u << 20)

/* One opened restore point, shared by concurrent opens (refcounted).  The
 * struct outlives its last open so the next open can tell whether the files
 * changed (keep_cache only when they did not). */
typedef struct point_entry {
  char *key;                /* "vm/disk/id" */
  char *sig;                /* identity of the layer files at the last open */
  int refs;
  pthread_mutex_t open_lock;
  chain_image *ci;
  char *error;              /* why chain_open failed (reads give EIO) */
  int err;
  bool priv;                /* not in the cache: freed with its last open */
} point_entry;

typedef struct restore_handle {
  point_entry *e;           /* NULL: damaged point, every read fails */
} restore_handle;

/* Damage found while reading (metadata the scan cannot check cheaply). */
typedef struct runtime_damage {
  char *key;                /* "vm/disk/id" of the layer found bad */
  char *msg;
  struct runtime_damage *next;
} runtime_damage;

static pthread_mutex_t damage_lock = PTHREAD_MUTEX_INITIALIZER;
static runtime_damage *damages;
static atomic_size_t ndamages;  /* entries of DAMAGES (read without the lock) */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static point_entry **cache;
static size_t ncache;
static const char zeros[ZERO_LEN];
/* Per-thread read buffers (no malloc per read), freed when the worker exits. */
typedef struct thread_bufs {
  char *buf;
  size_t len;
  struct fuse_bufvec *vec;
} thread_bufs;

static pthread_key_t bufs_key;
static pthread_once_t bufs_once = PTHREAD_ONCE_INIT;

/* Find restore point DISPLAY of DISK in V: its chain and layer index
 * (a binary search in the scan's index of the disk, no allocation). */
bool
restore_find (const store_vm *v, const char *disk, const char *display,
              const store_chain **chain, size_t *idx)
{
  const store_disk *d = v ? store_vm_disk (v, disk) : NULL;
  size_t c, i;
  if (!d || !store_disk_find (d, display, &c, &i))
    return false;
  *chain = &d->chains[c];
  *idx = i;
  return true;
}

/* Remember that the point KEY failed to read with MSG. */
static void
damage_note (const char *key, const char *msg)
{
  pthread_mutex_lock (&damage_lock);
  runtime_damage *d;
  for (d = damages; d; d = d->next)
    if (strcmp (d->key, key) == 0)
      break;
  if (!d) {
    d = qb_calloc (1, sizeof *d);
    d->key = qb_strdup (key);
    d->msg = qb_asprintf ("read failed: %s", msg);
    d->next = damages;
    damages = d;
    atomic_fetch_add (&ndamages, 1);
  }
  pthread_mutex_unlock (&damage_lock);
}

/* True when KEY is "VM/DISK/ID" (compared in place, nothing formatted). */
static bool
key_is (const char *key, const char *vm, const char *disk, const char *id)
{
  const char *parts[3] = { vm, disk, id };
  for (int i = 0; i < 3; i++) {
    size_t len = strlen (parts[i]);
    if (strncmp (key, parts[i], len) != 0)
      return false;
    key += len;
    if (i < 2 && *key++ != '/')
      return false;
  }
  return *key == '\0';
}

/* Damage found at run time for point ID of VM/DISK, or NULL.  Nothing is
 * locked or compared while no read ever failed (the usual case). */
static const char *
restore_runtime_damage (const char *vm, const char *disk, const char *id)
{
  if (atomic_load (&ndamages) == 0)
    return NULL;
  const char *msg = NULL;
  pthread_mutex_lock (&damage_lock);
  for (runtime_damage *d = damages; d && !msg; d = d->next)
    if (key_is (d->key, vm, disk, id))
      msg = d->msg;           /* never freed: stays valid */
  pthread_mutex_unlock (&damage_lock);
  return msg;
}

/* Damage text for point IDX of CHAIN (itself or a layer below), or NULL;
 * a layer busy in a chain rewrite is not damaged (restore_busy). */
const char *
restore_damage (const store_chain *c, size_t idx)
{
  for (size_t i = 0; i <= idx && i < c->n; i++)
    if (c->layers[i].damage && !c->layers[i].busy)
      return c->layers[i].damage;
  return NULL;
}

/* Why point IDX of CHAIN cannot be opened for a moment (a chain rewrite
 * under way), or NULL. */
const char *
restore_busy (const store_chain *c, size_t idx)
{
  for (size_t i = 0; i <= idx && i < c->n; i++)
    if (c->layers[i].busy)
      return c->layers[i].damage;
  return NULL;
}

/* Like restore_damage, plus damage found while reading point IDX of DISK of VM. */
const char *
restore_point_damage (const char *vm, const char *disk, const store_chain *c, size_t idx)
{
  const char *d = restore_damage (c, idx);
  /* a point below that failed to read has a bad layer this one shares */
  for (size_t i = 0; !d && i <= idx && i < c->n; i++)
    d = restore_runtime_damage (vm, disk, c->layers[i].id);
  return d;
}

/* The newest undamaged point of DISK, or NULL.  One pass over each chain:
 * once a layer is damaged, every point above it is too. */
const store_layer *
restore_latest (const store_vm *v, const char *disk)
{
  const store_disk *d = v ? store_vm_disk (v, disk) : NULL;
  const store_layer *best = NULL;
  if (!d)
    return NULL;
  for (size_t c = 0; c < d->nchains; c++)
    for (size_t i = 0; i < d->chains[c].n; i++) {
      const store_layer *l = &d->chains[c].layers[i];
      if ((l->damage && !l->busy) || restore_runtime_damage (v->name, disk, l->id))
        break;
      if (!best || l->time_us > best->time_us
          || (l->time_us == best->time_us && strcmp (l->id, best->id) > 0))
        best = l;
    }
  return best;
}

/* qsort: layers in time order (time, then id). */
static int
cmp_layer_time (const void *a, const void *b)
{
  const store_layer *x = *(const store_layer *const *) a, *y = *(const store_layer *const *) b;
  if (x->time_us != y->time_us)
    return x->time_us < y->time_us ? -1 : 1;
  return strcmp (x->id, y->id);
}

/* The points of V over all its disks in time order, one layer each. */
size_t
restore_vm_points (const store_vm *v, const store_layer ***out)
{
  size_t n = 0, total = 0;
  *out = NULL;
  for (size_t k = 0; v && k < v->ndisks; k++)
    for (size_t c = 0; c < v->disks[k].nchains; c++)
      total += v->disks[k].chains[c].n;
  if (total == 0)
    return 0;
  const store_layer **all = qb_calloc (total, sizeof *all);
  for (size_t k = 0; k < v->ndisks; k++)
    for (size_t c = 0; c < v->disks[k].nchains; c++)
      for (size_t i = 0; i < v->disks[k].chains[c].n; i++)
        if (!v->disks[k].chains[c].layers[i].removing)   /* going: not listed */
          all[n++] = &v->disks[k].chains[c].layers[i];
  if (n > 1)
    qsort (all, n, sizeof *all, cmp_layer_time);
  /* one entry per point: the disks of a point share its id (and display) */
  size_t u = 0;
  for (size_t i = 0; i < n; i++) {
    bool seen = false;
    for (size_t j = u; j-- > 0 && !seen && all[j]->time_us == all[i]->time_us;)
      seen = strcmp (all[j]->display, all[i]->display) == 0;
    if (!seen)
      all[u++] = all[i];
  }
  *out = all;
  return u;
}

/* The disks of point DISPLAY of V, in disk order. */
size_t
restore_point_refs (const store_vm *v, const char *display, point_ref **out)
{
  size_t n = 0;
  *out = NULL;
  for (size_t k = 0; v && k < v->ndisks; k++) {
    const store_chain *c;
    size_t idx;
    if (!restore_find (v, v->disks[k].name, display, &c, &idx))
      continue;
    *out = qb_realloc (*out, (n + 1) * sizeof **out);
    (*out)[n++] = (point_ref) { .disk = v->disks[k].name, .chain = c, .idx = idx };
  }
  return n;
}

/* The newest point of V no disk of which is damaged, or NULL. */
const store_layer *
restore_vm_latest (const store_vm *v)
{
  const store_layer **pts;
  size_t n = restore_vm_points (v, &pts);
  const store_layer *best = NULL;
  for (size_t i = n; i-- > 0 && !best;) {
    point_ref *refs;
    size_t nr = restore_point_refs (v, pts[i]->display, &refs);
    bool bad = false;
    for (size_t k = 0; k < nr && !bad; k++)
      bad = restore_point_damage (v->name, refs[k].disk, refs[k].chain, refs[k].idx) != NULL;
    if (!bad)
      best = pts[i];
    free (refs);
  }
  free (pts);
  return best;
}

/* Identity of the files of layers 0..IDX (path, inode, mtime, size). */
static char *
layers_sig (const store_chain *c, size_t idx)
{
  char *s = qb_strdup ("");
  for (size_t i = 0; i <= idx; i++) {
    struct stat sb;
    if (lstat (c->layers[i].path, &sb) == -1)
      memset (&sb, 0, sizeof sb);
    char *n = qb_asprintf ("%s%s:%llu:%lld.%09ld:%lld;", s, c->layers[i].path,
                           (unsigned long long) sb.st_ino, (long long) sb.st_mtim.tv_sec,
                           sb.st_mtim.tv_nsec, (long long) sb.st_size);
    free (s);
    s = n;
  }
  return s;
}

/* Open the restore image of point IDX in CHAIN: fills fi->fh; 0 or -errno. */
int
restore_open (const char *vm, const char *disk, const store_chain *c, size_t idx,
              struct fuse_file_info *fi)
{
  restore_handle *h = qb_calloc (1, sizeof *h);
  fi->fh = (uintptr_t) h;
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    free (h);
    return -EACCES;
  }
  if (restore_damage (c, idx)) {
    fi->direct_io = 1;
    return 0;
  }
  const char *busy = restore_busy (c, idx);
  if (busy) {
    free (h);
    fi->fh = 0;
    fs_log ("%s/%s/%s: cannot open now: %s", vm, disk, c->layers[idx].display, busy);
    return -EBUSY;
  }
  char *key = qb_asprintf ("%s/%s/%s", vm, disk, c->layers[idx].id);
  char *sig = layers_sig (c, idx);
  point_entry *e = NULL;
  bool same = false;
  pthread_mutex_lock (&cache_lock);
  for (size_t i = 0; i < ncache; i++)
    if (strcmp (cache[i]->key, key) == 0)
      e = cache[i];
  if (!e) {
    e = qb_calloc (1, sizeof *e);
    e->key = key;
    key = NULL;
    pthread_mutex_init (&e->open_lock, NULL);
    cache = qb_realloc (cache, (ncache + 1) * sizeof *cache);
    cache[ncache++] = e;
  }
  same = e->sig && strcmp (e->sig, sig) == 0;
  if (!same && e->refs > 0) {
    /* the files changed under open readers: this open gets its own image */
    point_entry *p = qb_calloc (1, sizeof *p);
    p->key = qb_strdup (e->key);
    p->priv = true;
    pthread_mutex_init (&p->open_lock, NULL);
    e = p;
  }
  if (!same) {
    free (e->sig);
    e->sig = sig;
    sig = NULL;
  }
  e->refs++;
  pthread_mutex_unlock (&cache_lock);
  free (key);
  free (sig);

  pthread_mutex_lock (&e->open_lock);
  int transient = 0;
  if (!e->ci && !e->error) {
    /* every layer is opened from the store root, no link followed */
    e->ci = store_point_open (fs_cfg.st, c, idx);
    if (!e->ci && !e->error) {
      int code = qb_error_code ();
      const char *msg = qb_error_msg ();
      if (fs_err_is_damage (code)) {
        e->error = qb_strdup (msg);
        e->err = fs_err_errno (code);
        damage_note (e->key, e->error);
        fs_log ("%s: %s", e->key, e->error);
      }
      else {
        /* out of memory or descriptors: this open fails, nothing is
         * remembered, the next open tries again */
        transient = fs_err_errno (code);
        fs_log ("%s: cannot open now (not damage, try again): %s", e->key, msg);
      }
    }
  }
  pthread_mutex_unlock (&e->open_lock);
  h->e = e;
  fi->keep_cache = same;
  if (transient) {
    restore_release (fi);
    fi->fh = 0;
    return -transient;
  }
  return 0;
}

/* Release an open restore image. */
void
restore_release (struct fuse_file_info *fi)
{
  restore_handle *h = (restore_handle *) (uintptr_t) fi->fh;
  if (!h)
    return;
  point_entry *e = h->e;
  if (e) {
    chain_image *close_ci = NULL;
    pthread_mutex_lock (&cache_lock);
    bool free_it = false;
    if (--e->refs == 0) {
      close_ci = e->ci;
      e->ci = NULL;
      free (e->error);
      e->error = NULL;
      free_it = e->priv;
    }
    pthread_mutex_unlock (&cache_lock);
    chain_close (close_ci);
    if (free_it) {
      pthread_mutex_destroy (&e->open_lock);
      free (e->key);
      free (e->sig);
      free (e);
    }
  }
  free (h);
}

/* Free a thread's read buffers (thread exit). */
static void
thread_bufs_free (void *p)
{
  thread_bufs *b = p;
  free (b->buf);
  free (b->vec);
  free (b);
}

/* Create the key of the per-thread buffers. */
static void
thread_bufs_key (void)
{
  pthread_key_create (&bufs_key, thread_bufs_free);
}

/* This thread's read buffers, holding at least LEN bytes. */
static thread_bufs *
thread_buffers (size_t len)
{
  pthread_once (&bufs_once, thread_bufs_key);
  thread_bufs *b = pthread_getspecific (bufs_key);
  if (!b) {
    b = qb_calloc (1, sizeof *b);
    b->vec = qb_calloc (1, sizeof *b->vec + READ_SEGMENTS * sizeof (struct fuse_buf));
    pthread_setspecific (bufs_key, b);
  }
  if (b->len < len) {
    free (b->buf);
    b->buf = qb_calloc (1, len);
    b->len = len;
  }
  return b;
}

/* Append a memory segment to V. */
static void
vec_mem (struct fuse_bufvec *v, const void *mem, size_t len)
{
  struct fuse_buf *b = &v->buf[v->count++];
  memset (b, 0, sizeof *b);
  b->size = len;
  b->mem = (void *) mem;
}

/* FUSE read of an open restore image. */
void
restore_read (fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
  restore_handle *h = (restore_handle *) (uintptr_t) fi->fh;
  if (!h->e || !h->e->ci) {
    fuse_reply_err (req, EIO);
    return;
  }
  chain_image *ci = h->e->ci;
  uint64_t vsize = chain_size (ci);
  if (off < 0 || (uint64_t) off >= vsize) {
    fuse_reply_buf (req, NULL, 0);
    return;
  }
  if (size > vsize - off)
    size = vsize - off;
  thread_bufs *tb = thread_buffers (size);
  char *tbuf = tb->buf;
  struct fuse_bufvec *v = tb->vec;
  v->count = 0;
  v->idx = 0;
  v->off = 0;
  size_t pos = 0;
  while (pos < size) {
    size_t want = size - pos;
    if (v->count == READ_SEGMENTS - 1) {
      /* out of segments: read the rest into memory */
      ssize_t r = chain_pread (ci, tbuf + pos, want, off + pos);
      if (r != (ssize_t) want)
        goto fail;
      vec_mem (v, tbuf + pos, want);
      pos = size;
      break;
    }
    chain_extent ext;
    if (chain_extent_at (ci, off + pos, want, &ext) == -1 || ext.length == 0)
      goto fail;
    size_t len = ext.length < want ? ext.length : want;
    switch (ext.kind) {
    case CHAIN_EXT_DATA: {
      struct fuse_buf *b = &v->buf[v->count++];
      memset (b, 0, sizeof *b);
      b->size = len;
      b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
      b->fd = ext.fd;
      b->pos = ext.fd_offset;
      break;
    }
    case CHAIN_EXT_ZERO:
      if (len > ZERO_LEN)
        len = ZERO_LEN;
      vec_mem (v, zeros, len);
      break;
    default: {
      ssize_t r = chain_pread (ci, tbuf + pos, len, off + pos);
      if (r != (ssize_t) len)
        goto fail;
      vec_mem (v, tbuf + pos, len);
      break;
    }
    }
    pos += len;
  }
  int r = fuse_reply_data (req, v, 0);
  if (r < 0 && r != -ENOENT)
    fs_log ("read reply: %s", strerror (-r));
  return;

 fail: {
    int code = qb_error_code ();
    bool damage = fs_err_is_damage (code);
    if (damage)
      damage_note (h->e->key, qb_error_msg ());
    fs_log ("%s: read at %lld%s: %s", h->e->key, (long long) off + (long long) pos,
            damage ? "" : " (not damage, try again)", qb_error_msg ());
    fuse_reply_err (req, damage ? EIO : fs_err_errno (code));
  }
}

/* FUSE lseek (SEEK_DATA / SEEK_HOLE) of an open restore image. */
void
restore_lseek (fuse_req_t req, off_t off, int whence, struct fuse_file_info *fi)
{
  restore_handle *h = (restore_handle *) (uintptr_t) fi->fh;
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err (req, EINVAL);
    return;
  }
  if (!h->e || !h->e->ci) {
    fuse_reply_err (req, EIO);
    return;
  }
  if (off < 0 || (uint64_t) off >= chain_size (h->e->ci)) {
    fuse_reply_err (req, ENXIO);
    return;
  }
  int64_t r = chain_seek (h->e->ci, off, whence);
  if (r < 0) {
    fuse_reply_err (req, fs_seek_errno (qb_error_code ()));
    return;
  }
  fuse_reply_lseek (req, r);
}
