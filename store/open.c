/* qmpbackupfs — opening layers and restore points for reading, never
 * following a link, and the reader's side of chain rewrites (see store.h). */
#include "store-int.h"
#include "chain.h"
#include "qcow2.h"
#include "common/error.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


/* ---- Opening layers for reading ---- */

/* LAYER's path relative to the root, or NULL if it is not under the root. */
static const char *
layer_rel (const store *st, const store_layer *l)
{
  size_t rl = strlen (st->root);
  if (!l->path || strncmp (l->path, st->root, rl) != 0 || l->path[rl] != '/')
    return NULL;
  return l->path + rl + 1;
}

/* LAYER's file, opened beneath the root without following any link. */
int
store_layer_open (store *st, const store_layer *l)
{
  const char *rel = layer_rel (st, l);
  if (!rel)
    return qb_error_set (QB_EINVAL, "layer %s is not in the store %s",
                         l->path ? l->path : "?", st->root);
  int fd = qb_openat_nofollow (st->rootfd, rel, O_RDONLY | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT)
      return qb_error_set (QB_ENOENT, "layer %s is gone", l->path);
    if (errno == ELOOP)
      return qb_error_set (QB_EDAMAGED, "layer %s is a symbolic link (or lies behind one): "
                           "links in the store are never followed", l->path);
    return store_fs_error (errno, "open layer", l->path);
  }
  struct stat sb;
  if (fstat (fd, &sb) < 0 || !S_ISREG (sb.st_mode)) {
    close (fd);
    return qb_error_set (QB_EDAMAGED, "layer %s is not a regular file", l->path);
  }
  /* regular file: O_NONBLOCK (there against FIFOs) is of no use any more */
  fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

/* The reader's side of chain rewrites (rewrite.c): hold a shared lock (OFD,
 * on STORE_POINT_LOCK_BYTE) on the point's top layer FDS[IDX] (a rewrite
 * that changes this point's layers in place takes it exclusively), then make sure no rewrite is
 * removing the point and every layer name still is the file opened.
 * 0, or -1 with QB_EAGAIN (try again: the chain is being rewritten). */
static int
point_guard (store *st, const store_chain *c, size_t idx, const int *fds, size_t from)
{
  const store_layer *top = &c->layers[idx];
  struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
                      .l_start = STORE_POINT_LOCK_BYTE, .l_len = 1 };
  if (fcntl (fds[idx], F_OFD_SETLK, &fl) < 0)
    return qb_error_set (QB_EAGAIN, "restore point %s is being removed or its chain "
                         "rewritten: try again in a moment", top->display);
  const char *rel = layer_rel (st, top);
  const char *slash = rel ? strchr (rel, '/') : NULL;
  if (!slash)
    return 0;
  char *vm = qb_asprintf ("%.*s", (int) (slash - rel), rel);
  int vmfd = store_vm_open (st, vm);
  free (vm);
  if (vmfd < 0)
    return qb_error_set (QB_EAGAIN, "restore point %s: its VM folder is gone", top->display);
  store_rewrite_state rs;
  int r = store_rewrite_state_load (vmfd, &rs);
  close (vmfd);
  if (r < 0)
    return -1;
  bool hidden = rs.active && (rs.all_busy || store_rewrite_state_has (rs.hide, rs.nhide, slash + 1));
  store_rewrite_state_clear (&rs);
  if (hidden)
    return qb_error_set (QB_EAGAIN, "restore point %s is being removed", top->display);
  for (size_t i = from; i <= idx; i++) {
    struct stat a, b;
    const char *lr = layer_rel (st, &c->layers[i]);
    if (!lr || fstat (fds[i], &a) < 0 || fstatat (st->rootfd, lr, &b, AT_SYMLINK_NOFOLLOW) < 0
        || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
      return qb_error_set (QB_EAGAIN, "restore point %s: its chain was rewritten while it "
                           "was being opened: try again", top->display);
  }
  return 0;
}

/* Restore point IDX of C through the chain reader, layers opened safely. */
chain_image *
store_point_open (store *st, const store_chain *c, size_t idx)
{
  if (!c || idx >= c->n) {
    qb_error_set (QB_EINVAL, "no restore point %zu in this chain", idx);
    return NULL;
  }
  int *fds = calloc (idx + 1, sizeof *fds);
  const char **names = calloc (idx + 1, sizeof *names);
  if (!fds || !names) {
    free (fds);
    free (names);
    qb_error_set (QB_ENOMEM, "out of memory opening a restore point: nothing is damaged, "
                  "try again");
    return NULL;
  }
  for (size_t i = 0; i <= idx; i++) {
    names[i] = c->layers[i].path;
    fds[i] = store_layer_open (st, &c->layers[i]);
    if (fds[i] < 0) {
      /* The scan said it was there: it went since (a point removed, a
         chain rewritten).  Missing layers are damage only when the scan
         says so. */
      if (qb_error_code () == QB_ENOENT)
        qb_error_set (QB_EAGAIN, "layer %s went away since the store was read (a restore "
                      "point was removed or its chain rewritten): look again",
                      c->layers[i].path);
      while (i-- > 0)
        close (fds[i]);
      free (fds);
      free (names);
      return NULL;
    }
  }
  if (point_guard (st, c, idx, fds, 0) < 0) {
    for (size_t i = 0; i <= idx; i++)
      close (fds[i]);
    free (fds);
    free (names);
    return NULL;
  }
  chain_image *ci = chain_open_fds (fds, names, idx + 1);
  free (fds);
  free (names);
  return ci;
}

/* See store.h. */
chain_image *
store_point_extend (store *st, const chain_image *prev, const store_chain *c, size_t idx)
{
  if (!prev || !c || idx == 0 || idx >= c->n || chain_layers (prev) != idx) {
    qb_error_set (QB_EINVAL, "no open point below restore point %zu", idx);
    return NULL;
  }
  for (size_t i = 0; i <= idx; i++)
    if (c->layers[i].busy) {
      qb_error_set (QB_EAGAIN, "restore point %s: its chain is being rewritten: try again",
                    c->layers[idx].display);
      return NULL;
    }
  int *fds = calloc (idx + 1, sizeof *fds);
  if (!fds) {
    qb_error_set (QB_ENOMEM, "out of memory opening a restore point: nothing is damaged, "
                  "try again");
    return NULL;
  }
  for (size_t i = 0; i < idx; i++)
    fds[i] = chain_layer_fd (prev, i);
  fds[idx] = store_layer_open (st, &c->layers[idx]);
  if (fds[idx] < 0) {
    if (qb_error_code () == QB_ENOENT)
      qb_error_set (QB_EAGAIN, "layer %s went away since the store was read (a restore "
                    "point was removed or its chain rewritten): look again",
                    c->layers[idx].path);
    free (fds);
    return NULL;
  }
  /* Only the new layer is checked: PREV holds its own point (locked, so
     no rewrite changes its files in place) and reads as it did, whatever
     happened to the names of its layers since. */
  int fd = fds[idx];
  int r = point_guard (st, c, idx, fds, idx);
  free (fds);
  if (r < 0) {
    close (fd);
    return NULL;
  }
  return chain_extend (prev, fd, c->layers[idx].path);
}

/* See store.h. */
void
store_point_unlock_below (chain_image *ci)
{
  size_t n = ci ? chain_layers (ci) : 0;
  struct flock fl = { .l_type = F_UNLCK, .l_whence = SEEK_SET,
                      .l_start = STORE_POINT_LOCK_BYTE, .l_len = 1 };
  if (n >= 2)
    (void) fcntl (chain_layer_fd (ci, n - 2), F_OFD_SETLK, &fl);
}

/* The ranges qcow2_walk checks a layer against. */
typedef struct touch_ctx {
  const store_range *r;
  size_t n;
} touch_ctx;

/* qcow2_walk: 1 when the cluster at GUEST (LEN bytes) overlaps a range, or
 * is invalid (the point cannot be read as it is), else 0. */
static int
touch_cb (void *opaque, uint64_t guest, uint64_t len, qcow2_kind kind, uint64_t host, uint64_t e)
{
  (void) host;
  (void) e;
  const touch_ctx *t = opaque;
  if (kind == QCOW2_BAD)
    return 1;
  for (size_t i = 0; i < t->n; i++)
    if (guest < t->r[i].off + t->r[i].len && t->r[i].off < guest + len)
      return 1;
  return 0;
}

/* See store.h. */
bool
store_layers_untouched (store *st, const store_chain *c, size_t from, size_t to,
                        uint64_t size, const store_range *r, size_t n)
{
  if (!c || from == 0 || to >= c->n || from > to)
    return false;
  for (size_t i = from; i <= to; i++) {
    const store_layer *l = &c->layers[i];
    if (l->damage || l->busy)
      return false;
    int fd = store_layer_open (st, l);
    if (fd < 0) {
      qb_error_clear ();
      return false;
    }
    qcow2_header h;
    uint64_t fsize;
    touch_ctx t = { r, n };
    bool ok = qcow2_header_read (fd, l->name, &h, &fsize) == 0
      && qcow2_header_check (&h, fsize, l->name) == 0 && h.size == size
      && qcow2_walk (fd, l->name, &h, fsize, touch_cb, &t) == 0;
    close (fd);
    qb_error_clear ();
    if (!ok)
      return false;
  }
  return true;
}


/* ---- what readers see (scan.c, store_point_open) ---- */

/* Add the strings of array KEY of J to the set *S (*N entries). */
static void
set_add (json_object *j, const char *key, char ***s, size_t *n)
{
  json_object *arr;
  if (!json_object_object_get_ex (j, key, &arr) || !json_object_is_type (arr, json_type_array))
    return;
  for (size_t i = 0; i < json_object_array_length (arr); i++) {
    json_object *e = json_object_array_get_idx (arr, i);
    if (!json_object_is_type (e, json_type_string))
      continue;
    *s = qb_realloc (*s, (*n + 1) * sizeof **s);
    (*s)[(*n)++] = qb_strdup (json_object_get_string (e));
  }
}

int
store_rewrite_state_load (int unitfd, store_rewrite_state *rs)
{
  memset (rs, 0, sizeof *rs);
  int e;
  json_object *j = store_json_load_at (unitfd, STORE_REWRITE_JOURNAL, &e);
  if (!j) {
    if (e == ENOENT)
      return 0;
    if (e == EMFILE || e == ENFILE || e == ENOMEM || e == EAGAIN || e == EINTR)
      return store_fs_error (e, "read", STORE_REWRITE_JOURNAL);
    rs->active = true;
    rs->all_busy = true;
    rs->why = qb_asprintf ("the rewrite journal " STORE_REWRITE_JOURNAL " cannot be read (%s): "
                           "an interrupted removal of restore points cannot finish; look at "
                           "it, and remove it only once the files it names are as they "
                           "should be", e ? strerror (e) : "not valid JSON");
    return 0;
  }
  rs->active = true;
  set_add (j, "hide", &rs->hide, &rs->nhide);
  set_add (j, "busy", &rs->busy, &rs->nbusy);
  const char *op = store_json_str (j, "op");
  rs->why = qb_asprintf ("being rewritten (%s of restore points in progress, or interrupted: "
                         "it finishes at the next backup, mount or qmprebase run): try again "
                         "in a moment", op ? op : "removal");
  json_object_put (j);
  return 0;
}

void
store_rewrite_state_clear (store_rewrite_state *rs)
{
  store_names_free (rs->hide, rs->nhide);
  store_names_free (rs->busy, rs->nbusy);
  free (rs->why);
  memset (rs, 0, sizeof *rs);
}

bool
store_rewrite_state_has (char *const *set, size_t n, const char *rel)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp (set[i], rel) == 0)
      return true;
  return false;
}
