/* qmpbackupfs — the path tree: inode numbers, lookup, getattr, readdir, and
 * the dispatch of open/read/write/release to the file kinds.
 *
 * Every node is (kind, vm, disk, name); it gets an inode number the first
 * time it is found to exist and keeps it for the life of the daemon, so
 * numbers are stable and never reused (lookups of missing names allocate
 * nothing).  Whether a node still exists is decided on every
 * request against the VM registry and the store scan.
 *
 * Restore images appear twice: <vm>/<disk>/restore/<T>.img (N_IMG) and
 * <vm>/points/<T>/<disk>.img (N_PIMG); both are found by img_find and served
 * by the same stat (img_stat), open (img_open) and restore_* calls. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/error.h"
#include "common/util.h"
#include "fs/fs.h"

typedef enum node_kind {
  N_ROOT = 1, N_STATUS_ALL, N_METRICS, N_VM, N_CONTROL, N_VMSTATUS,
  N_DISK, N_RESTORE, N_IMG, N_LATEST, N_CHAIN, N_CHAINFILE,
  N_FILES, N_FPOINT, N_FLATEST,   /* files/, files/<point>/, files/latest */
  N_POINTS, N_POINT, N_PIMG, N_PLATEST, /* points/, points/<T>/, points/<T>/<disk>.img, points/latest */
} node_kind;

typedef struct node {
  node_kind kind;
  char *vm, *disk, *name;   /* N_IMG: name "<T>.img"; N_POINT: name <T>; N_PIMG: disk, name <T> */
  fuse_ino_t ino;
  atomic_int opens;         /* N_CONTROL: open handles and requests in flight */
  _Atomic uint64_t listing; /* folders: dirbuf.sum of the last listing served */
  struct node *next;        /* hash chain */
} node;

/* The kernel serialises writes and setattr on one inode (i_rwsem), so a
 * second `echo full > backup` would wait behind a running backup instead of
 * hearing EBUSY.  Each VM's control file is therefore served by a small pool
 * of inodes: a lookup gets one that nobody has open, and control entries are
 * never cached (entry timeout 0), so concurrent writers reach the daemon on
 * different inodes. */
#define CONTROL_INSTANCES 64

#define HASH_MIN 4096     /* buckets at first; doubled to keep chains short */
#define SLAB_BITS 12      /* nodes live in slabs of 4096, never freed nor moved */
#define SLAB_SIZE ((size_t) 1 << SLAB_BITS)
#define ARENA_CHUNK 65536 /* interned strings are carved from chunks this big */
static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;
static node **slabs;        /* node of inode I: slabs[I >> SLAB_BITS][I % SLAB_SIZE] */
static size_t nslabs, nnodes; /* inode 0 unused */
static node **hash;         /* hash_size buckets, a power of two */
static size_t hash_size;
static char **strs;         /* interned strings: open addressing, strs_size slots */
static size_t strs_size, nstrs;
static char *arena;         /* the rest of the current chunk */
static size_t arena_left;
static time_t mount_time;

#define TIMEOUT_SHORT 1.0
#define TIMEOUT_IMG_ENTRY 60.0
#define TIMEOUT_IMG_ATTR 3600.0

/* FNV-1a of S, continuing from H. */
static unsigned
str_hash (unsigned h, const char *s)
{
  for (const char *p = s ? s : ""; *p; p++)
    h = (h ^ (unsigned char) *p) * 16777619u;
  return h;
}

/* Hash of a node's identity. */
static unsigned
node_hash (node_kind k, const char *vm, const char *disk, const char *name)
{
  unsigned h = 2166136261u ^ k;
  const char *parts[3] = { vm, disk, name };
  for (int i = 0; i < 3; i++)
    h = (str_hash (h, parts[i]) ^ 0x1f) * 16777619u;
  return h;
}

/* The one stored copy of S (NULL for NULL), under nodes_lock: a node's
 * strings are shared with every other node naming the same VM, disk or
 * point, and carved from big chunks (no allocation of their own). */
static char *
intern (const char *s)
{
  if (!s)
    return NULL;
  if (2 * (nstrs + 1) > strs_size) {
    size_t size = strs_size ? 2 * strs_size : 1024;
    char **t = qb_calloc (size, sizeof *t);
    for (size_t i = 0; i < strs_size; i++)
      if (strs[i]) {
        size_t b = str_hash (2166136261u, strs[i]) & (size - 1);
        while (t[b])
          b = (b + 1) & (size - 1);
        t[b] = strs[i];
      }
    free (strs);
    strs = t;
    strs_size = size;
  }
  size_t b = str_hash (2166136261u, s) & (strs_size - 1);
  for (; strs[b]; b = (b + 1) & (strs_size - 1))
    if (strcmp (strs[b], s) == 0)
      return strs[b];
  size_t len = strlen (s) + 1;
  char *copy;
  if (len > ARENA_CHUNK / 16)
    copy = qb_strdup (s);
  else {
    if (len > arena_left) {
      arena = qb_calloc (1, ARENA_CHUNK);
      arena_left = ARENA_CHUNK;
    }
    copy = memcpy (arena, s, len);
    arena += len;
    arena_left -= len;
  }
  nstrs++;
  return strs[b] = copy;
}

/* The node with inode I (I < nnodes), under nodes_lock. */
static node *
node_at (size_t i)
{
  return &slabs[i >> SLAB_BITS][i & (SLAB_SIZE - 1)];
}

/* Make the hash table at least twice as big as the node count (a store of
 * 200,000 restore images has more than a million nodes), under nodes_lock. */
static void
hash_grow (void)
{
  if (hash && nnodes < 2 * hash_size)
    return;
  size_t size = hash ? 4 * hash_size : HASH_MIN;
  node **h = qb_calloc (size, sizeof *h);
  for (size_t i = 1; i < nnodes; i++) {
    node *n = node_at (i);
    size_t b = node_hash (n->kind, n->vm, n->disk, n->name) & (size - 1);
    n->next = h[b];
    h[b] = n;
  }
  free (hash);
  hash = h;
  hash_size = size;
}

/* Compare two optional strings. */
static bool
same (const char *a, const char *b)
{
  return strcmp (a ? a : "", b ? b : "") == 0;
}

/* The node (kind, vm, disk, name), created with a new inode number if new. */
static node *
node_get (node_kind k, const char *vm, const char *disk, const char *name)
{
  unsigned hv = node_hash (k, vm, disk, name);
  pthread_mutex_lock (&nodes_lock);
  hash_grow ();
  size_t h = hv & (hash_size - 1);
  node *n;
  for (n = hash[h]; n; n = n->next)
    if (n->kind == k && same (n->vm, vm) && same (n->disk, disk) && same (n->name, name))
      break;
  if (!n) {
    if (nnodes == 0)
      nnodes = 1;           /* inode 0 is invalid */
    if ((nnodes >> SLAB_BITS) >= nslabs) {
      slabs = qb_realloc (slabs, (nslabs + 1) * sizeof *slabs);
      slabs[nslabs++] = qb_calloc (SLAB_SIZE, sizeof (node));
    }
    n = node_at (nnodes);
    n->kind = k;
    n->vm = intern (vm);
    n->disk = intern (disk);
    n->name = intern (name);
    n->ino = nnodes++;
    n->next = hash[h];
    hash[h] = n;
  }
  pthread_mutex_unlock (&nodes_lock);
  return n;
}

/* The node with inode INO, or NULL. */
static node *
node_by_ino (fuse_ino_t ino)
{
  node *n = NULL;
  pthread_mutex_lock (&nodes_lock);
  if (ino > 0 && ino < nnodes)
    n = node_at (ino);
  pthread_mutex_unlock (&nodes_lock);
  return n;
}

/* Fill common attributes. */
static void
attr_base (struct stat *st, node *n, mode_t mode)
{
  memset (st, 0, sizeof *st);
  st->st_ino = n->ino;
  st->st_mode = mode;
  st->st_nlink = S_ISDIR (mode) ? 2 : 1;
  st->st_uid = fs_cfg.uid;
  st->st_gid = fs_cfg.gid;
  st->st_blksize = 65536;
  st->st_atime = st->st_mtime = st->st_ctime = mount_time;
}

/* Find layer file NAME among DISK's chains in V. */
static const store_layer *
chain_file_find (const store_vm *v, const char *disk, const char *name)
{
  const store_disk *d = v ? store_vm_disk (v, disk) : NULL;
  if (!d)
    return NULL;
  for (size_t c = 0; c < d->nchains; c++)
    for (size_t i = 0; i < d->chains[c].n; i++)
      if (strcmp (d->chains[c].layers[i].name, name) == 0)
        return &d->chains[c].layers[i];
  return NULL;
}

/* The restore point an image node N (N_IMG or N_PIMG) shows: its chain and
 * layer index in V, or false. */
static bool
img_find (const node *n, const store_vm *v, const store_chain **c, size_t *idx)
{
  if (n->kind == N_PIMG)
    return restore_find (v, n->disk, n->name, c, idx);
  char display[256];
  size_t len = strlen (n->name);
  if (len <= 4 || len - 4 >= sizeof display)
    return false;
  memcpy (display, n->name, len - 4);      /* "<T>.img" */
  display[len - 4] = '\0';
  return restore_find (v, n->disk, display, c, idx);
}

/* Attributes of image node N showing point IDX of chain C. */
static void
img_stat (node *n, const store_chain *c, size_t idx, struct stat *st, double *entry_to,
          double *attr_to)
{
  const store_layer *l = &c->layers[idx];
  attr_base (st, n, S_IFREG | 0440);
  st->st_size = l->virtual_size;   /* from the record or the qcow2 header (scan) */
  st->st_mtime = st->st_ctime = st->st_atime = l->time_us / 1000000;
  uint64_t stored = 0;
  for (size_t i = 0; i <= idx; i++)
    stored += c->layers[i].file_size;
  if (stored > (uint64_t) st->st_size)
    stored = st->st_size;
  st->st_blocks = (stored + 511) / 512;
  *entry_to = TIMEOUT_IMG_ENTRY;
  *attr_to = TIMEOUT_IMG_ATTR;
}

/* Check that node N of points/ (N_POINTS, N_POINT, N_PLATEST) exists in V
 * and fill ST and the timeouts; 0 or -errno. */
static int
points_stat (node *n, const store_vm *v, struct stat *st, double *entry_to)
{
  switch (n->kind) {
  case N_POINTS:
    attr_base (st, n, S_IFDIR | 0550);
    return 0;
  case N_POINT: {
    point_ref *refs;
    size_t nr = restore_point_refs (v, n->name, &refs);
    if (nr == 0)
      return -ENOENT;
    attr_base (st, n, S_IFDIR | 0550);
    st->st_mtime = st->st_ctime = st->st_atime
      = refs[0].chain->layers[refs[0].idx].time_us / 1000000;
    free (refs);
    *entry_to = TIMEOUT_IMG_ENTRY;
    return 0;
  }
  case N_PLATEST: {
    const store_layer *l = restore_vm_latest (v);
    if (!l)
      return -ENOENT;
    attr_base (st, n, S_IFLNK | 0777);
    st->st_size = strlen (l->display);
    st->st_mtime = l->time_us / 1000000;
    return 0;
  }
  default:
    return -ENOENT;
  }
}

/* Check that N exists now and fill ST and the timeouts; 0 or -errno.
 * GIVEN, when not NULL, is a current scan of N's VM, known to be visible
 * (a listing checks its entries against one scan). */
static int
node_stat_in (node *n, vm_scan *given, struct stat *st, double *entry_to, double *attr_to)
{
  *entry_to = *attr_to = TIMEOUT_SHORT;
  if (n->kind == N_ROOT) {
    attr_base (st, n, S_IFDIR | 0550);
    return 0;
  }
  if (n->kind == N_STATUS_ALL || n->kind == N_METRICS) {
    attr_base (st, n, S_IFREG | 0440);
    st->st_mtime = time (NULL);
    return 0;
  }
  fs_vm *vm = NULL;
  if (!given || n->kind == N_CONTROL) {
    vm = vms_find (n->vm);
    if (!vm)
      return -ENOENT;
  }
  switch (n->kind) {
  case N_VM:
    attr_base (st, n, S_IFDIR | 0550);
    return 0;
  case N_CONTROL:
    attr_base (st, n, S_IFREG | 0200);
    pthread_mutex_lock (&vm->lock);
    if (vm->has_last)
      st->st_mtime = vm->last_time_us / 1000000;
    pthread_mutex_unlock (&vm->lock);
    return 0;
  case N_VMSTATUS:
    attr_base (st, n, S_IFREG | 0440);
    st->st_mtime = time (NULL);
    return 0;
  default:
    break;
  }
  vm_scan *s = given ? given : vm_scan_get (vm);
  int r = 0;
  if (n->kind == N_POINTS || n->kind == N_POINT || n->kind == N_PLATEST) {
    r = points_stat (n, s->v, st, entry_to);
    goto out;
  }
  const store_disk *d = s->v ? store_vm_disk (s->v, n->disk) : NULL;
  if (!d) {
    r = -ENOENT;
    goto out;
  }
  switch (n->kind) {
  case N_DISK: case N_RESTORE: case N_CHAIN: case N_FILES:
    attr_base (st, n, S_IFDIR | 0550);
    break;
  case N_FPOINT: {
    const store_chain *c;
    size_t idx;
    if (!restore_find (s->v, n->disk, n->name, &c, &idx)) {
      r = -ENOENT;
      break;
    }
    attr_base (st, n, S_IFDIR | 0555);
    st->st_mtime = st->st_ctime = st->st_atime = c->layers[idx].time_us / 1000000;
    *entry_to = TIMEOUT_IMG_ENTRY;
    break;
  }
  case N_FLATEST: {
    const store_layer *l = restore_latest (s->v, n->disk);
    if (!l) {
      r = -ENOENT;
      break;
    }
    attr_base (st, n, S_IFLNK | 0777);
    st->st_size = strlen (l->display);
    st->st_mtime = l->time_us / 1000000;
    break;
  }
  case N_IMG: case N_PIMG: {
    const store_chain *c;
    size_t idx;
    if (!img_find (n, s->v, &c, &idx))
      r = -ENOENT;
    else
      img_stat (n, c, idx, st, entry_to, attr_to);
    break;
  }
  case N_LATEST: {
    const store_layer *l = restore_latest (s->v, n->disk);
    if (!l) {
      r = -ENOENT;
      break;
    }
    attr_base (st, n, S_IFLNK | 0777);
    st->st_size = strlen (l->display) + 4;
    st->st_mtime = l->time_us / 1000000;
    break;
  }
  case N_CHAINFILE: {
    const store_layer *l = chain_file_find (s->v, n->disk, n->name);
    struct stat fsb;
    int fd = l ? store_layer_open (fs_cfg.st, l) : -1;   /* no link followed */
    int sr = fd >= 0 ? fstat (fd, &fsb) : -1;
    if (fd >= 0)
      close (fd);
    qb_error_clear ();
    if (sr == -1) {
      r = -ENOENT;
      break;
    }
    attr_base (st, n, S_IFREG | 0440);
    st->st_size = fsb.st_size;
    st->st_blocks = fsb.st_blocks;
    st->st_mtim = fsb.st_mtim;
    st->st_ctim = fsb.st_ctim;
    st->st_atim = fsb.st_mtim;
    *entry_to = TIMEOUT_IMG_ENTRY;
    *attr_to = TIMEOUT_SHORT;
    break;
  }
  default:
    r = -ENOENT;
  }
 out:
  if (!given)
    vm_scan_put (s);
  return r;
}

/* Check that N exists now and fill ST and the timeouts; 0 or -errno. */
static int
node_stat (node *n, struct stat *st, double *entry_to, double *attr_to)
{
  return node_stat_in (n, NULL, st, entry_to, attr_to);
}

/* An inode of VM's control file that nobody has open.  Lookups start at a
 * rotating instance, so lookups racing ahead of their opens get different
 * inodes too (instance 0 if all are busy). */
static node *
control_instance (const char *vm)
{
  static atomic_uint rotor;
  unsigned start = atomic_fetch_add (&rotor, 1);
  for (unsigned k = 0; k < CONTROL_INSTANCES; k++) {
    unsigned i = (start + k) % CONTROL_INSTANCES;
    char name[16];
    snprintf (name, sizeof name, "%u", i);
    node *n = node_get (N_CONTROL, vm, NULL, name);
    if (atomic_load (&n->opens) == 0)
      return n;
  }
  return node_get (N_CONTROL, vm, NULL, "0");
}

/* Fill *T as the node (KIND, VM, DISK, NAME), strings borrowed, not interned. */
static bool
node_tmpl (node *t, node_kind k, const char *vm, const char *disk, const char *name)
{
  memset (t, 0, sizeof *t);
  t->kind = k;
  t->vm = (char *) vm;
  t->disk = (char *) disk;
  t->name = (char *) name;
  return true;
}

/* The child NAME of a points/ folder P as a template in *T, or false.  The
 * disk name of points/<T>/<disk>.img lives in a buffer of the calling
 * thread until its next call. */
static bool
points_child (node *p, const char *name, node *t)
{
  static __thread char disk[256];
  if (p->kind == N_POINTS) {
    if (strcmp (name, "latest") == 0)
      return node_tmpl (t, N_PLATEST, p->vm, NULL, NULL);
    return qb_name_is_safe (name) && node_tmpl (t, N_POINT, p->vm, NULL, name);
  }
  size_t len = strlen (name);
  if (len <= 4 || len - 4 >= sizeof disk || strcmp (name + len - 4, ".img") != 0)
    return false;
  memcpy (disk, name, len - 4);
  disk[len - 4] = '\0';
  return qb_name_is_safe (disk) && node_tmpl (t, N_PIMG, p->vm, disk, p->name);
}

/* The child NAME of P as a template in *T (not interned: a lookup of a name
 * that does not exist allocates nothing), or false if no such child can
 * exist.  The control file is an interned instance, returned in *CTL. */
static bool
node_child (node *p, const char *name, node *t, node **ctl)
{
  *ctl = NULL;
  switch (p->kind) {
  case N_ROOT:
    if (strcmp (name, ".status") == 0)
      return node_tmpl (t, N_STATUS_ALL, NULL, NULL, NULL);
    if (strcmp (name, ".metrics") == 0)
      return node_tmpl (t, N_METRICS, NULL, NULL, NULL);
    if (!qb_name_is_safe (name))
      return false;
    return node_tmpl (t, N_VM, name, NULL, NULL);
  case N_VM:
    if (strcmp (name, "backup") == 0) {
      if (!vms_find (p->vm))
        return false;
      *ctl = control_instance (p->vm);
      return true;
    }
    if (strcmp (name, "status") == 0)
      return node_tmpl (t, N_VMSTATUS, p->vm, NULL, NULL);
    if (strcmp (name, "points") == 0)
      return node_tmpl (t, N_POINTS, p->vm, NULL, NULL);
    if (!qb_name_is_safe (name))
      return false;
    return node_tmpl (t, N_DISK, p->vm, name, NULL);
  case N_POINTS: case N_POINT:
    return points_child (p, name, t);
  case N_DISK:
    if (strcmp (name, "restore") == 0)
      return node_tmpl (t, N_RESTORE, p->vm, p->disk, NULL);
    if (strcmp (name, "chain") == 0)
      return node_tmpl (t, N_CHAIN, p->vm, p->disk, NULL);
    if (strcmp (name, "files") == 0)
      return node_tmpl (t, N_FILES, p->vm, p->disk, NULL);
    return false;
  case N_FILES:
    if (strcmp (name, "latest") == 0)
      return node_tmpl (t, N_FLATEST, p->vm, p->disk, NULL);
    if (!qb_name_is_safe (name))
      return false;
    return node_tmpl (t, N_FPOINT, p->vm, p->disk, name);
  case N_RESTORE: {
    if (strcmp (name, "latest.img") == 0)
      return node_tmpl (t, N_LATEST, p->vm, p->disk, NULL);
    size_t len = strlen (name);
    if (len <= 4 || strcmp (name + len - 4, ".img") != 0 || !qb_name_is_safe (name))
      return false;
    return node_tmpl (t, N_IMG, p->vm, p->disk, name);
  }
  case N_CHAIN:
    if (!qb_name_is_safe (name))
      return false;
    return node_tmpl (t, N_CHAINFILE, p->vm, p->disk, name);
  default:
    return false;
  }
}

/* FUSE init: capabilities and sizes. */
static void
op_init (void *userdata, struct fuse_conn_info *conn)
{
  (void) userdata;
  mount_time = time (NULL);
  node_get (N_ROOT, NULL, NULL, NULL);      /* the first node: inode 1 */
  unsigned want = FUSE_CAP_SPLICE_WRITE | FUSE_CAP_ATOMIC_O_TRUNC;
  conn->want |= want & conn->capable;
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;   /* images are immutable */
  conn->max_write = 1u << 20;
  conn->max_read = 0;
  conn->max_readahead = 1u << 20;
  conn->max_background = 64;
}

/* FUSE lookup: the node is interned (gets its inode number) only once it
 * is known to exist; a missing name is a plain ENOENT. */
static void
op_lookup (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  if (files_is_ino (parent)) {
    files_lookup (req, parent, name);
    return;
  }
  node *p = node_by_ino (parent);
  if (p && p->kind == N_FPOINT) {
    struct stat st;
    double et, at;
    int r = node_stat (p, &st, &et, &at);
    if (r < 0)
      fuse_reply_err (req, -r);
    else
      files_point_lookup (req, p->vm, p->disk, p->name, name);
    return;
  }
  node tmpl, *ctl = NULL;
  if (!p || !node_child (p, name, &tmpl, &ctl)) {
    fuse_reply_err (req, ENOENT);
    return;
  }
  struct fuse_entry_param e;
  memset (&e, 0, sizeof e);
  int r = node_stat (ctl ? ctl : &tmpl, &e.attr, &e.entry_timeout, &e.attr_timeout);
  if (r < 0) {
    fuse_reply_err (req, -r);
    return;
  }
  node *n = ctl ? ctl : node_get (tmpl.kind, tmpl.vm, tmpl.disk, tmpl.name);
  e.ino = e.attr.st_ino = n->ino;
  if (n->kind == N_CONTROL)
    e.entry_timeout = 0;    /* every open looks up again: see control_instance */
  fuse_reply_entry (req, &e);
}

/* FUSE forget: inode numbers of existing nodes live as long as the daemon
 * (they are bounded by what the store and the sockets dir ever held). */
static void
op_forget (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
  (void) ino;
  (void) nlookup;
  fuse_reply_none (req);
}

/* The node of INO with its attributes in *ST and their timeout in *AT, or
 * NULL after replying the error to REQ. */
static node *
node_stat_or_reply (fuse_req_t req, fuse_ino_t ino, struct stat *st, double *at)
{
  node *n = node_by_ino (ino);
  double et;
  int r = n ? node_stat (n, st, &et, at) : -ENOENT;
  if (r < 0) {
    fuse_reply_err (req, -r);
    return NULL;
  }
  return n;
}

/* FUSE getattr. */
static void
op_getattr (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  (void) fi;
  struct stat st;
  double at;
  if (files_is_ino (ino))
    files_getattr (req, ino);
  else if (node_stat_or_reply (req, ino, &st, &at))
    fuse_reply_attr (req, &st, at);
}

/* FUSE setattr: only times (touch: a backup) and size (O_TRUNC) of the control file. */
static void
op_setattr (fuse_req_t req, fuse_ino_t ino, struct stat *attr, int valid,
            struct fuse_file_info *fi)
{
  (void) attr;
  (void) fi;
  struct stat st;
  double at;
  if (files_is_ino (ino)) {
    fuse_reply_err (req, EROFS);
    return;
  }
  node *n = node_stat_or_reply (req, ino, &st, &at);
  if (!n)
    return;
  if (n->kind != N_CONTROL) {
    fuse_reply_err (req, S_ISDIR (st.st_mode) ? EPERM : EACCES);
    return;
  }
  int times = FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME
    | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW;
  int allowed = times | FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_CTIME;
  if (valid & ~allowed) {
    fuse_reply_err (req, EPERM);
    return;
  }
  if ((valid & times) && !(valid & FUSE_SET_ATTR_SIZE)) {
    fs_vm *vm = vms_find (n->vm);
    atomic_fetch_add (&n->opens, 1);
    int r = vm ? control_touch (req, vm) : -ENOENT;
    atomic_fetch_sub (&n->opens, 1);
    if (r < 0) {
      fuse_reply_err (req, -r);
      return;
    }
    double et;
    node_stat (n, &st, &et, &at);
  }
  fuse_reply_attr (req, &st, at);
}

/* FUSE readlink: latest.img, files/latest, points/latest, guest links. */
static void
op_readlink (fuse_req_t req, fuse_ino_t ino)
{
  if (files_is_ino (ino)) {
    files_readlink (req, ino);
    return;
  }
  node *n = node_by_ino (ino);
  if (n && (n->kind == N_FLATEST || n->kind == N_PLATEST)) {
    fs_vm *fvm = vms_find (n->vm);
    vm_scan *fs = fvm ? vm_scan_get (fvm) : NULL;
    const store_layer *l = !fs ? NULL : n->kind == N_FLATEST ? restore_latest (fs->v, n->disk)
                                                          : restore_vm_latest (fs->v);
    if (!l)
      fuse_reply_err (req, ENOENT);
    else
      fuse_reply_readlink (req, l->display);
    vm_scan_put (fs);
    return;
  }
  fs_vm *vm = n && n->kind == N_LATEST ? vms_find (n->vm) : NULL;
  if (!vm) {
    fuse_reply_err (req, n && n->kind != N_LATEST ? EINVAL : ENOENT);
    return;
  }
  vm_scan *s = vm_scan_get (vm);
  const store_layer *l = restore_latest (s->v, n->disk);
  if (!l)
    fuse_reply_err (req, ENOENT);
  else {
    char *target = qb_asprintf ("%s.img", l->display);
    fuse_reply_readlink (req, target);
    free (target);
  }
  vm_scan_put (s);
}

/* One entry of a listing built at opendir (a plain readdir: listing a
 * name never makes the kernel cache it, so a name that goes is gone at
 * once for the next lookup, as before). */
typedef struct dirent_e {
  char *name;
  struct stat st;           /* inode number and type */
} dirent_e;

typedef struct dirbuf {
  dirent_e *e;
  size_t n, cap;
  vm_scan *scan;            /* while it is built: the scan of its VM, or NULL */
  uint64_t sum;             /* hash of the names, inode numbers and types */
} dirbuf;

/* Append NAME with attributes ST to B. */
static void
dirbuf_push (dirbuf *b, const char *name, const struct stat *st)
{
  if (b->n == b->cap) {
    b->cap = b->cap ? 2 * b->cap : 16;
    b->e = qb_realloc (b->e, b->cap * sizeof *b->e);
  }
  b->e[b->n++] = (dirent_e) { qb_strdup (name), *st };
  uint64_t h = b->sum ^ 0x9e3779b97f4a7c15ull;
  for (const char *p = name; *p; p++)
    h = (h ^ (unsigned char) *p) * 1099511628211ull;
  h = (h ^ (uint64_t) st->st_ino) * 1099511628211ull;
  b->sum = (h ^ (uint64_t) (st->st_mode & S_IFMT)) * 1099511628211ull;
}

/* Add NAME (node N, or NULL for . and .. with inode INO) to a listing,
 * when N exists now (checked against B's scan when it has one). */
static void
dirbuf_add (fuse_req_t req, dirbuf *b, const char *name, node *n, fuse_ino_t ino)
{
  (void) req;
  struct stat st;
  double et = 0, at = 0;
  memset (&st, 0, sizeof st);
  st.st_ino = n ? n->ino : ino;
  if (n) {
    if (node_stat_in (n, b->scan, &st, &et, &at) < 0)
      return;
  }
  else
    st.st_mode = S_IFDIR;
  dirbuf_push (b, name, &st);
}

/* Free a listing. */
static void
dirbuf_free (dirbuf *b)
{
  if (!b)
    return;
  for (size_t i = 0; i < b->n; i++)
    free (b->e[i].name);
  free (b->e);
  free (b);
}

/* Add the entries of points/ or points/<T>/ (node N, scan V) to B. */
static void
points_list (fuse_req_t req, dirbuf *b, node *n, const store_vm *v)
{
  if (n->kind == N_POINTS) {
    const store_layer **pts;
    size_t np = restore_vm_points (v, &pts);
    for (size_t i = 0; i < np; i++)
      dirbuf_add (req, b, pts[i]->display, node_get (N_POINT, n->vm, NULL, pts[i]->display), 0);
    free (pts);
    if (restore_vm_latest (v))
      dirbuf_add (req, b, "latest", node_get (N_PLATEST, n->vm, NULL, NULL), 0);
    return;
  }
  point_ref *refs;
  size_t nr = restore_point_refs (v, n->name, &refs);
  for (size_t i = 0; i < nr; i++) {
    char name[NAME_MAX + 1];
    if ((size_t) snprintf (name, sizeof name, "%s.img", refs[i].disk) >= sizeof name)
      continue;
    dirbuf_add (req, b, name, node_get (N_PIMG, n->vm, refs[i].disk, n->name), 0);
  }
  free (refs);
}

/* FUSE opendir: the listing is built once per open. */
static void
op_opendir (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct stat st;
  double at;
  if (files_is_ino (ino)) {
    files_opendir (req, ino, fi);
    return;
  }
  node *n = node_stat_or_reply (req, ino, &st, &at);
  if (!n)
    return;
  if (!S_ISDIR (st.st_mode)) {
    fuse_reply_err (req, ENOTDIR);
    return;
  }
  dirbuf *b = qb_calloc (1, sizeof *b);
  dirbuf_add (req, b, ".", NULL, ino);
  dirbuf_add (req, b, "..", NULL, 1);
  if (n->kind == N_ROOT) {
    dirbuf_add (req, b, ".status", node_get (N_STATUS_ALL, NULL, NULL, NULL), 0);
    dirbuf_add (req, b, ".metrics", node_get (N_METRICS, NULL, NULL, NULL), 0);
    char **names;
    size_t nn = vms_list (&names);
    for (size_t i = 0; i < nn; i++) {
      dirbuf_add (req, b, names[i], node_get (N_VM, names[i], NULL, NULL), 0);
      free (names[i]);
    }
    free (names);
  }
  else if (n->kind == N_DISK) {
    dirbuf_add (req, b, "restore", node_get (N_RESTORE, n->vm, n->disk, NULL), 0);
    dirbuf_add (req, b, "chain", node_get (N_CHAIN, n->vm, n->disk, NULL), 0);
    dirbuf_add (req, b, "files", node_get (N_FILES, n->vm, n->disk, NULL), 0);
  }
  else if (n->kind == N_FPOINT) {
    files_dirent *ents = NULL;
    int fn = files_point_list (n->vm, n->disk, n->name, &ents);
    for (int i = 0; i < fn; i++) {
      struct stat dst;
      memset (&dst, 0, sizeof dst);
      dst.st_ino = ents[i].ino;
      dst.st_mode = ents[i].mode;
      dirbuf_push (b, ents[i].name, &dst);
    }
    free (ents);
    if (fn < 0) {
      dirbuf_free (b);
      fuse_reply_err (req, -fn);
      return;
    }
  }
  else {
    fs_vm *vm = vms_find (n->vm);
    vm_scan *s = vm ? vm_scan_get (vm) : NULL;
    const store_vm *v = s ? s->v : NULL;
    b->scan = s;             /* every entry is checked against this one scan */
    if (n->kind == N_VM) {
      dirbuf_add (req, b, "backup", node_get (N_CONTROL, n->vm, NULL, "0"), 0);
      dirbuf_add (req, b, "status", node_get (N_VMSTATUS, n->vm, NULL, NULL), 0);
      dirbuf_add (req, b, "points", node_get (N_POINTS, n->vm, NULL, NULL), 0);
      for (size_t i = 0; v && i < v->ndisks; i++)
        if (strcmp (v->disks[i].name, "points") != 0)   /* shown in points/<T>/ only */
          dirbuf_add (req, b, v->disks[i].name, node_get (N_DISK, n->vm, v->disks[i].name, NULL), 0);
    }
    else if (n->kind == N_POINTS || n->kind == N_POINT)
      points_list (req, b, n, v);
    else if (v) {
      const store_disk *d = store_vm_disk (v, n->disk);
      for (size_t c = 0; d && c < d->nchains; c++)
        for (size_t i = 0; i < d->chains[c].n; i++) {
          const store_layer *l = &d->chains[c].layers[i];
          if (l->removing)
            continue;          /* a point being removed is no longer listed */
          if (n->kind == N_RESTORE) {
            char name[sizeof l->display + 4];
            snprintf (name, sizeof name, "%s.img", l->display);
            dirbuf_add (req, b, name, node_get (N_IMG, n->vm, n->disk, name), 0);
          }
          else if (n->kind == N_FILES)
            dirbuf_add (req, b, l->display, node_get (N_FPOINT, n->vm, n->disk, l->display), 0);
          else
            dirbuf_add (req, b, l->name, node_get (N_CHAINFILE, n->vm, n->disk, l->name), 0);
        }
      if (n->kind == N_RESTORE && restore_latest (v, n->disk))
        dirbuf_add (req, b, "latest.img", node_get (N_LATEST, n->vm, n->disk, NULL), 0);
      if (n->kind == N_FILES && restore_latest (v, n->disk))
        dirbuf_add (req, b, "latest", node_get (N_FLATEST, n->vm, n->disk, NULL), 0);
    }
    b->scan = NULL;
    vm_scan_put (s);
  }
  /* The kernel keeps the listing of the last open when this one is the
   * same (every open builds it afresh, so a change is never missed): a walk
   * over thousands of point folders then reads each folder once. */
  fi->cache_readdir = 1;
  fi->keep_cache = atomic_exchange (&n->listing, b->sum) == b->sum;
  fi->fh = (uintptr_t) b;
  if (fuse_reply_open (req, fi) != 0)
    dirbuf_free (b);
}

/* Reply LEN bytes of a buffer owned by an open handle.  The reply is sent
 * from a copy: once the kernel has the reply, the process may close the file
 * and another thread free the handle while this one is still returning. */
static void
reply_copy (fuse_req_t req, const char *p, size_t len)
{
  char *copy = len ? qb_calloc (1, len) : NULL;
  if (len)
    memcpy (copy, p, len);
  fuse_reply_buf (req, copy, len);
  free (copy);
}

/* Reply to a readdir of listing B from entry OFF on, at most SIZE bytes
 * (offsets are entry numbers).  The reply is built in a buffer of its own:
 * once the kernel has it, the process may close the folder and another
 * thread free B. */
static void
dirbuf_reply (fuse_req_t req, const dirbuf *b, size_t size, off_t off)
{
  char *buf = size ? qb_calloc (1, size) : NULL;
  size_t used = 0;
  for (size_t i = off < 0 ? 0 : (size_t) off; i < b->n; i++) {
    const dirent_e *d = &b->e[i];
    size_t len = fuse_add_direntry (req, buf + used, size - used, d->name, &d->st, i + 1);
    if (len > size - used)
      break;
    used += len;
  }
  fuse_reply_buf (req, buf, used);
  free (buf);
}

/* FUSE readdir: a slice of the listing built at opendir. */
static void
op_readdir (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
  if (files_is_ino (ino)) {
    files_readdir (req, size, off, fi);
    return;
  }
  dirbuf_reply (req, (dirbuf *) (uintptr_t) fi->fh, size, off);
}

/* FUSE releasedir. */
static void
op_releasedir (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  if (files_is_ino (ino)) {
    files_releasedir (fi);
    fuse_reply_err (req, 0);
    return;
  }
  dirbuf_free ((dirbuf *) (uintptr_t) fi->fh);
  fuse_reply_err (req, 0);
}

typedef struct text_handle {
  char *text;
  size_t len;
} text_handle;

/* Open image node N (N_IMG or N_PIMG) through restore_open; 0 or -errno. */
static int
img_open (node *n, struct fuse_file_info *fi)
{
  fs_vm *vm = vms_find (n->vm);
  if (!vm)
    return -ENOENT;
  vm_scan *s = vm_scan_get (vm);
  const store_chain *c;
  size_t idx;
  int r = img_find (n, s->v, &c, &idx) ? restore_open (n->vm, n->disk, c, idx, fi) : -ENOENT;
  vm_scan_put (s);
  return r;
}

/* FUSE open: per kind. */
static void
op_open (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct stat st;
  double at;
  if (files_is_ino (ino)) {
    files_open (req, ino, fi);
    return;
  }
  node *n = node_stat_or_reply (req, ino, &st, &at);
  if (!n)
    return;
  int acc = fi->flags & O_ACCMODE;
  switch (n->kind) {
  case N_STATUS_ALL: case N_METRICS: case N_VMSTATUS: {
    if (acc != O_RDONLY) {
      fuse_reply_err (req, EACCES);
      return;
    }
    text_handle *h = qb_calloc (1, sizeof *h);
    if (n->kind == N_STATUS_ALL)
      h->text = status_all_text ();
    else if (n->kind == N_METRICS)
      h->text = status_metrics_text ();
    else {
      fs_vm *vm = vms_find (n->vm);
      h->text = vm ? status_vm_text (vm) : qb_strdup ("{}\n");
    }
    h->len = strlen (h->text);
    fi->fh = (uintptr_t) h;
    fi->direct_io = 1;
    fuse_reply_open (req, fi);
    return;
  }
  case N_CONTROL:
    if (acc == O_RDONLY) {
      fuse_reply_err (req, EACCES);
      return;
    }
    fi->fh = 0;
    fi->direct_io = 1;
    fi->nonseekable = 1;
    atomic_fetch_add (&n->opens, 1);
    if (fuse_reply_open (req, fi) != 0)
      atomic_fetch_sub (&n->opens, 1);
    return;
  case N_IMG: case N_PIMG: {
    int r = img_open (n, fi);
    if (r < 0)
      fuse_reply_err (req, -r);
    else
      fuse_reply_open (req, fi);
    return;
  }
  case N_CHAINFILE: {
    if (acc != O_RDONLY) {
      fuse_reply_err (req, EACCES);
      return;
    }
    fs_vm *vm = vms_find (n->vm);
    vm_scan *s = vm ? vm_scan_get (vm) : NULL;
    const store_layer *l = s ? chain_file_find (s->v, n->disk, n->name) : NULL;
    int fd = l ? store_layer_open (fs_cfg.st, l) : -1;   /* no link followed */
    int err = ENOENT;
    if (l && fd == -1) {
      err = qb_error_code () == QB_EDAMAGED ? EACCES : fs_errno ();
      if (qb_error_code () == QB_EDAMAGED)
        fs_log ("%s: refused: %s (files outside the store are never served)", l->name,
                qb_error_msg ());
    }
    vm_scan_put (s);
    if (fd == -1) {
      fuse_reply_err (req, err);
      return;
    }
    fi->fh = fd;
    fi->keep_cache = 1;
    fuse_reply_open (req, fi);
    return;
  }
  default:
    fuse_reply_err (req, EISDIR);
  }
}

/* FUSE read: per kind. */
static void
op_read (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
  if (files_is_ino (ino)) {
    files_read (req, size, off, fi);
    return;
  }
  node *n = node_by_ino (ino);
  if (!n) {
    fuse_reply_err (req, EBADF);
    return;
  }
  switch (n->kind) {
  case N_STATUS_ALL: case N_METRICS: case N_VMSTATUS: {
    text_handle *h = (text_handle *) (uintptr_t) fi->fh;
    if ((size_t) off >= h->len)
      fuse_reply_buf (req, NULL, 0);
    else
      reply_copy (req, h->text + off, h->len - off < size ? h->len - off : size);
    return;
  }
  case N_IMG: case N_PIMG:
    restore_read (req, size, off, fi);
    return;
  case N_CHAINFILE: {
    struct fuse_bufvec v = FUSE_BUFVEC_INIT (size);
    v.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    v.buf[0].fd = fi->fh;
    v.buf[0].pos = off;
    fuse_reply_data (req, &v, 0);
    return;
  }
  default:
    fuse_reply_err (req, EBADF);
  }
}

/* FUSE write: only the control file. */
static void
op_write (fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
          struct fuse_file_info *fi)
{
  (void) off;
  (void) fi;
  node *n = node_by_ino (ino);
  fs_vm *vm = n && n->kind == N_CONTROL ? vms_find (n->vm) : NULL;
  if (!vm) {
    fuse_reply_err (req, n && n->kind != N_CONTROL ? EBADF : ENOENT);
    return;
  }
  control_write (req, vm, buf, size);
}

/* FUSE flush. */
static void
op_flush (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  (void) ino;
  (void) fi;
  fuse_reply_err (req, 0);
}

/* FUSE release: per kind. */
static void
op_release (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  if (files_is_ino (ino)) {
    files_release (fi);
    fuse_reply_err (req, 0);
    return;
  }
  node *n = node_by_ino (ino);
  if (n) {
    switch (n->kind) {
    case N_STATUS_ALL: case N_METRICS: case N_VMSTATUS: {
      text_handle *h = (text_handle *) (uintptr_t) fi->fh;
      if (h)
        free (h->text);
      free (h);
      break;
    }
    case N_IMG: case N_PIMG:
      restore_release (fi);
      break;
    case N_CHAINFILE:
      close (fi->fh);
      break;
    case N_CONTROL:
      atomic_fetch_sub (&n->opens, 1);
      break;
    default:
      break;
    }
  }
  fuse_reply_err (req, 0);
}

/* FUSE lseek: SEEK_DATA / SEEK_HOLE. */
static void
op_lseek (fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi)
{
  if (files_is_ino (ino)) {
    files_lseek (req, off, whence, fi);
    return;
  }
  node *n = node_by_ino (ino);
  if (n && (n->kind == N_IMG || n->kind == N_PIMG))
    restore_lseek (req, off, whence, fi);
  else if (n && n->kind == N_CHAINFILE) {
    off_t r = lseek (fi->fh, off, whence);
    if (r == -1)
      fuse_reply_err (req, errno);
    else
      fuse_reply_lseek (req, r);
  }
  else
    fuse_reply_err (req, EINVAL);
}

/* The point whose user.qmpbackup.* attributes node N shows (restore images
 * and point folders) in scan V, into *P with its refs in *REFS (free them);
 * false for nodes without such attributes (or gone). */
static bool
xattr_point_of (node *n, const store_vm *v, xattr_point *p, point_ref **refs)
{
  *refs = NULL;
  memset (p, 0, sizeof *p);
  if (n->kind == N_POINT) {
    p->n = restore_point_refs (v, n->name, refs);
    p->folder = true;
  }
  else if (n->kind == N_IMG || n->kind == N_PIMG) {
    const store_chain *c;
    size_t idx;
    if (img_find (n, v, &c, &idx)) {
      *refs = qb_calloc (1, sizeof **refs);
      **refs = (point_ref) { .disk = n->disk, .chain = c, .idx = idx };
      p->n = 1;
    }
  }
  p->refs = *refs;
  return p->n > 0;
}

typedef enum xattr_op { XA_GET, XA_LIST, XA_SET } xattr_op;

/* Serve xattr operation OP on the tree's inode INO (NAME and SIZE as the
 * FUSE call gives them).  Restore images and point folders answer from
 * their point; every other inode has no attributes.  Nothing can be set:
 * EPERM for an attribute a point has, ENOTSUP for any other name. */
static void
xattr_dispatch (fuse_req_t req, fuse_ino_t ino, xattr_op op, const char *name, size_t size)
{
  node *n = node_by_ino (ino);
  fs_vm *vm = n && n->vm ? vms_find (n->vm) : NULL;
  vm_scan *s = vm ? vm_scan_get (vm) : NULL;
  xattr_point p;
  point_ref *refs = NULL;
  bool has = s && xattr_point_of (n, s->v, &p, &refs);
  if (!n)
    fuse_reply_err (req, ENOENT);
  else if (op == XA_SET)
    fuse_reply_err (req, has && xattr_is_point_name (name) ? EPERM : ENOTSUP);
  else if (op == XA_GET && has)
    xattr_point_get (req, n->vm, &p, name, size);
  else if (op == XA_GET)
    fuse_reply_err (req, ENODATA);
  else if (has)
    xattr_point_list (req, n->vm, &p, size);
  else if (size == 0)
    fuse_reply_xattr (req, 0);
  else
    fuse_reply_buf (req, NULL, 0);
  free (refs);
  vm_scan_put (s);
}

/* FUSE getxattr: guest files, restore images and point folders. */
static void
op_getxattr (fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
  if (files_is_ino (ino))
    files_getxattr (req, ino, name, size);
  else
    xattr_dispatch (req, ino, XA_GET, name, size);
}

/* FUSE listxattr: guest files, restore images and point folders. */
static void
op_listxattr (fuse_req_t req, fuse_ino_t ino, size_t size)
{
  if (files_is_ino (ino))
    files_listxattr (req, ino, size);
  else
    xattr_dispatch (req, ino, XA_LIST, NULL, size);
}

/* FUSE setxattr: attributes are read-only (EPERM for ours, else ENOTSUP;
 * guest files are a read-only file system: EROFS). */
static void
op_setxattr (fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
             size_t size, int flags)
{
  (void) value;
  (void) size;
  (void) flags;
  if (files_is_ino (ino))
    fuse_reply_err (req, EROFS);
  else
    xattr_dispatch (req, ino, XA_SET, name, 0);
}

/* FUSE removexattr: as setxattr. */
static void
op_removexattr (fuse_req_t req, fuse_ino_t ino, const char *name)
{
  if (files_is_ino (ino))
    fuse_reply_err (req, EROFS);
  else
    xattr_dispatch (req, ino, XA_SET, name, 0);
}

/* FUSE statfs: the store's file system. */
static void
op_statfs (fuse_req_t req, fuse_ino_t ino)
{
  (void) ino;
  struct statvfs sv;
  if (statvfs (fs_cfg.store_root, &sv) == -1)
    memset (&sv, 0, sizeof sv);
  sv.f_namemax = 255;
  fuse_reply_statfs (req, &sv);
}

/* ---- changing the tree: only rm of a restore image removes something ---- */

/* The errno for an operation the tree does not support under PARENT: EROFS
 * inside files/ (a read-only view of the guest's files), EPERM elsewhere
 * (the tree is made by the program; remove restore points with rm). */
static int
tree_refuse (fuse_ino_t parent)
{
  if (files_is_ino (parent))
    return EROFS;
  node *p = node_by_ino (parent);
  return p && (p->kind == N_FILES || p->kind == N_FPOINT) ? EROFS : EPERM;
}

/* FUSE unlink: rm MOUNT/VM/DISK/restore/T.img removes restore point T (all
 * of the VM's disks); everything else is refused. */
static void
op_unlink (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  node *p = files_is_ino (parent) ? NULL : node_by_ino (parent);
  if (!p || p->kind != N_RESTORE || strcmp (name, "latest.img") == 0) {
    fuse_reply_err (req, tree_refuse (parent));
    return;
  }
  fs_vm *vm = vms_find (p->vm);
  int r = vm ? remove_point (vm, p->disk, name) : -ENOENT;
  fuse_reply_err (req, -r);
  if (r == 0 && vm) {
    /* the point went from every disk: drop the kernel's cached names */
    vm_scan *s = vm_scan_get (vm);
    size_t len = strlen (name);
    for (size_t i = 0; s && s->v && i < s->v->ndisks; i++) {
      node *rd = node_get (N_RESTORE, p->vm, s->v->disks[i].name, NULL);
      if (fs_cfg.se && strcmp (s->v->disks[i].name, p->disk) != 0)
        fuse_lowlevel_notify_inval_entry (fs_cfg.se, rd->ino, name, len);
      node *fd = node_get (N_FILES, p->vm, s->v->disks[i].name, NULL);
      if (fs_cfg.se && len > 4)          /* files/<T>, listed with the point */
        fuse_lowlevel_notify_inval_entry (fs_cfg.se, fd->ino, name, len - 4);
    }
    node *pd = node_get (N_POINTS, p->vm, NULL, NULL);
    if (fs_cfg.se && len > 4)            /* points/<T> */
      fuse_lowlevel_notify_inval_entry (fs_cfg.se, pd->ino, name, len - 4);
    vm_scan_put (s);
  }
}

static void
op_rmdir (fuse_req_t req, fuse_ino_t parent, const char *name)
{
  (void) name;
  fuse_reply_err (req, tree_refuse (parent));
}

static void
op_mkdir (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
  (void) name;
  (void) mode;
  fuse_reply_err (req, tree_refuse (parent));
}

static void
op_mknod (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
  (void) name;
  (void) mode;
  (void) rdev;
  fuse_reply_err (req, tree_refuse (parent));
}

static void
op_symlink (fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
  (void) link;
  (void) name;
  fuse_reply_err (req, tree_refuse (parent));
}

static void
op_link (fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
  (void) ino;
  (void) newname;
  fuse_reply_err (req, tree_refuse (newparent));
}

static void
op_rename (fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
           const char *newname, unsigned int flags)
{
  (void) name;
  (void) newparent;
  (void) newname;
  (void) flags;
  fuse_reply_err (req, tree_refuse (parent));
}

static void
op_create (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
           struct fuse_file_info *fi)
{
  (void) name;
  (void) mode;
  (void) fi;
  fuse_reply_err (req, tree_refuse (parent));
}

const struct fuse_lowlevel_ops fs_ops = {
  .init = op_init,
  .lookup = op_lookup,
  .forget = op_forget,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .readlink = op_readlink,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .releasedir = op_releasedir,
  .open = op_open,
  .read = op_read,
  .write = op_write,
  .flush = op_flush,
  .release = op_release,
  .lseek = op_lseek,
  .statfs = op_statfs,
  .getxattr = op_getxattr,
  .listxattr = op_listxattr,
  .unlink = op_unlink,
  .rmdir = op_rmdir,
  .mkdir = op_mkdir,
  .mknod = op_mknod,
  .symlink = op_symlink,
  .link = op_link,
  .rename = op_rename,
  .create = op_create,
  .setxattr = op_setxattr,
  .removexattr = op_removexattr,
};
