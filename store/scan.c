/* qmpbackupfs — scanning one VM's directory into disks, chains and layers.
 *
 * One readdir per directory and one parse per record per scan.  Layers are
 * ordered by id (time); chains are built per disk: a FULL or COPY starts
 * one, an INC with a record joins the chain its record names and must
 * follow the layer the record names, an INC without a record joins the
 * current FULL chain of its directory.  Anything that does not fit marks
 * that layer and every later layer of its chain damaged; it never attaches
 * an INC to a chain it does not belong to.
 *
 * Every folder and file is opened relative to the VM's folder with
 * O_NOFOLLOW: symbolic links are never followed, only listed in skipped.
 * A shortage of descriptors or memory fails the whole scan (QB_EAGAIN /
 * QB_ENOMEM) rather than leaving out what could not be read. */
#include "store-int.h"
#include "qcow2.h"
#include "sums.h"
#include "common/error.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A directory holding layer files of one disk. */
typedef struct scan_dir {
  char *rel;             /* "disk" or "YYYY-MM/disk" */
  char *disk;
  char *month;           /* NULL outside the monthly layout */
} scan_dir;

/* A layer file found on disk, before chains are built. */
typedef struct scan_file {
  char *name;
  size_t dir;            /* index into the dirs */
  store_kind kind;
  char id[STORE_ID_MAX];
  int64_t id_time_us;
  int seq;
  uint64_t file_size;
  const store_rec *rec;  /* NULL: no record names this file */
  const store_rec_disk *rd;
  bool ours;             /* named with our id format (so it must have a record) */
  uint64_t hdr_size;     /* virtual size from the header (read when no record gives it) */
  char *hdr_damage;      /* why the header is not that of a readable qcow2 image */
  bool sidecar;          /* REC/RD come from the layer's own .chain/<name>.json */
  uint64_t st_size;      /* the file's length */
  char *backing;         /* base name of the backing file its header names (sidecar layers) */
  char *verify_damage;   /* what its last verify found (sums.h), NULL: nothing */
} scan_file;

/* A layer that a record names but that is not on disk. */
typedef struct scan_missing {
  const char *id;
  const char *chain;
  const char *file;      /* relative path */
} scan_missing;

typedef struct scan_chain {
  store_chain c;
  size_t dir;
  char *damage;          /* first damage in the chain (owned by a layer) */
} scan_chain;

typedef struct scan_ctx {
  const char *vm;
  const char *vmdir;
  int vmfd;
  scan_dir *dirs;
  size_t ndirs;
  store_rec *recs;
  size_t nrecs;
  char **notes;          /* what was left out, and why */
  size_t nnotes;
  int err;               /* first resource shortage (errno), 0 if none */
  store_names names;     /* style of the layers' display names */
  store_rec **side;      /* the per-layer records read from .chain folders */
  size_t nside;
  bool folder;           /* a disk folder outside a store (dirs[0]) */
} scan_ctx;

/* Note errno E met on WHAT: a shortage fails the scan, a link is noted. */
static void
scan_errno (scan_ctx *cx, int e, const char *what)
{
  if (qb_errno_is_transient (e)) {
    if (!cx->err)
      cx->err = e;
  } else if (e == ELOOP)
    store_note (&cx->notes, &cx->nnotes, "%s/%s is a symbolic link: not followed", cx->vm, what);
}

/* 'd' for a directory, 'l' for a symbolic link, 'f' for a regular file,
 * 'o' for anything else, 0 when it cannot be told (errno noted). */
static char
entry_type (scan_ctx *cx, int dfd, struct dirent *de, const char *rel)
{
  switch (de->d_type) {
  case DT_DIR: return 'd';
  case DT_LNK: return 'l';
  case DT_REG: return 'f';
  case DT_UNKNOWN: break;
  default: return 'o';
  }
  struct stat sb;
  if (fstatat (dfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
    scan_errno (cx, errno, rel);
    return 0;
  }
  return S_ISDIR (sb.st_mode) ? 'd' : S_ISLNK (sb.st_mode) ? 'l' : S_ISREG (sb.st_mode) ? 'f' : 'o';
}

/* Open directory REL of the VM without following links, for readdir. */
static DIR *
scan_opendir (scan_ctx *cx, const char *rel)
{
  int fd = rel ? qb_openat_nofollow (cx->vmfd, rel, O_RDONLY | O_DIRECTORY)
    : openat (cx->vmfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = fd >= 0 ? fdopendir (fd) : NULL;
  if (!d) {
    int e = errno;
    if (fd >= 0)
      close (fd);
    if (e != ENOENT)
      scan_errno (cx, e, rel ? rel : ".");
  }
  return d;
}

static void
add_dir (scan_ctx *cx, const char *month, const char *disk)
{
  cx->dirs = qb_realloc (cx->dirs, (cx->ndirs + 1) * sizeof *cx->dirs);
  scan_dir *d = &cx->dirs[cx->ndirs++];
  d->disk = qb_strdup (disk);
  d->month = qb_strdup (month);
  d->rel = month ? qb_asprintf ("%s/%s", month, disk) : qb_strdup (disk);
}

/* Find the candidate disk directories: safe subdirs, and safe subdirs of
 * month dirs; symbolic links among them are noted and left out. */
static int
find_dirs (scan_ctx *cx)
{
  DIR *d = scan_opendir (cx, NULL);
  if (!d)
    return cx->err ? 0 : qb_error_set_errno (errno, "read %s", cx->vmdir);
  struct dirent *de;
  while ((de = readdir (d)) != NULL) {
    if (!qb_name_is_safe (de->d_name))
      continue;
    char t = entry_type (cx, dirfd (d), de, de->d_name);
    if (t == 'l')
      store_note (&cx->notes, &cx->nnotes, "%s/%s is a symbolic link: not followed",
                  cx->vm, de->d_name);
    if (t != 'd')
      continue;
    add_dir (cx, NULL, de->d_name);
    if (!store_is_month (de->d_name))
      continue;
    DIR *m = scan_opendir (cx, de->d_name);
    if (!m)
      continue;
    struct dirent *me;
    while ((me = readdir (m)) != NULL) {
      if (!qb_name_is_safe (me->d_name))
        continue;
      char *rel = qb_asprintf ("%s/%s", de->d_name, me->d_name);
      char mt = entry_type (cx, dirfd (m), me, rel);
      if (mt == 'l')
        store_note (&cx->notes, &cx->nnotes, "%s/%s is a symbolic link: not followed",
                    cx->vm, rel);
      else if (mt == 'd')
        add_dir (cx, de->d_name, me->d_name);
      free (rel);
    }
    closedir (m);
  }
  closedir (d);
  return 0;
}

/* The record (and its disk entry) naming file DIR/NAME with ID, if any. */
static void
find_record (scan_ctx *cx, const scan_dir *dir, const char *name, const char *id,
             const store_rec **rec, const store_rec_disk **rd)
{
  *rec = NULL;
  *rd = NULL;
  size_t lo = 0, hi = cx->nrecs;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp (cx->recs[mid].id, id);
    if (c == 0) {
      const store_rec *r = &cx->recs[mid];
      size_t rl = strlen (dir->rel);
      for (size_t i = 0; i < r->ndisks; i++) {
        const char *f = r->disks[i].file;
        if (strcmp (r->disks[i].name, dir->disk) == 0 && strncmp (f, dir->rel, rl) == 0
            && f[rl] == '/' && strcmp (f + rl + 1, name) == 0) {
          *rec = r;
          *rd = &r->disks[i];
          return;
        }
      }
      return;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
}

/* Read the base name of the backing file the header H of open layer FD
 * names into F->backing ("" when it names none; NULL when unreadable). */
static void
read_backing (int fd, const qcow2_header *h, uint64_t fsize, scan_file *f)
{
  if (h->backing_offset == 0 || h->backing_size == 0) {
    f->backing = qb_strdup ("");
    return;
  }
  if (h->backing_size > 4096 || h->backing_offset > fsize
      || h->backing_size > fsize - h->backing_offset)
    return;
  char buf[4097];
  ssize_t r = pread (fd, buf, h->backing_size, (off_t) h->backing_offset);
  if (r != (ssize_t) h->backing_size)
    return;
  buf[r] = '\0';
  if (strlen (buf) != (size_t) r)
    return;
  const char *b = strrchr (buf, '/');
  f->backing = qb_strdup (b ? b + 1 : buf);
}

/* The per-layer record of F in disk folder DFD (its .chain folder opened
 * into *CFD on first use; -2 when there is none): F->rec/F->rd when it is
 * valid and describes this very file (id, kind, name). */
static void
find_sidecar (scan_ctx *cx, int dfd, int *cfd, const scan_dir *sd, scan_file *f)
{
  if (*cfd == -1) {
    *cfd = openat (dfd, STORE_SIDECAR_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (*cfd < 0) {
      if (errno != ENOENT) {
        char *rel = qb_asprintf ("%s/" STORE_SIDECAR_DIR, sd->rel);
        scan_errno (cx, errno, rel);
        free (rel);
      }
      *cfd = -2;
    }
  }
  if (*cfd < 0)
    return;
  char *file = qb_asprintf ("%s.json", f->name);
  int e;
  json_object *o = store_json_load_at (*cfd, file, &e);
  free (file);
  if (!o) {
    if (e && e != ENOENT) {
      char *rel = qb_asprintf ("%s/" STORE_SIDECAR_DIR "/%s.json", sd->rel, f->name);
      scan_errno (cx, e, rel);
      free (rel);
    }
    return;
  }
  store_rec *rec = qb_calloc (1, sizeof *rec);
  bool ok = store_rec_parse (o, rec) && rec->ndisks == 1 && strcmp (rec->id, f->id) == 0
    && rec->disks[0].kind == f->kind;
  if (ok) {
    const char *b = strrchr (rec->disks[0].file, '/');
    ok = b && strcmp (b + 1, f->name) == 0;
  }
  json_object_put (o);
  if (!ok) {
    store_rec_clear (rec);
    free (rec);
    return;
  }
  /* The folder may have been copied under another name: it is this disk. */
  free (rec->disks[0].name);
  rec->disks[0].name = qb_strdup (sd->disk);
  cx->side = qb_realloc (cx->side, (cx->nside + 1) * sizeof *cx->side);
  cx->side[cx->nside++] = rec;
  f->rec = rec;
  f->rd = &rec->disks[0];
  f->sidecar = true;
}

/* Read the qcow2 header of layer file NAME in directory DFD (REL in
 * messages) when no record gives its virtual size: F->hdr_size, or
 * F->hdr_damage when it is not a valid image. */
static void
read_header (scan_ctx *cx, int dfd, const char *rel, scan_file *f)
{
  int fd = openat (dfd, f->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    scan_errno (cx, errno, rel);
    return;
  }
  qcow2_header h;
  uint64_t fsize;
  char *what = qb_asprintf ("%s/%s", cx->vm, rel);
  if (qcow2_header_read (fd, what, &h, &fsize) == 0 && qcow2_header_check (&h, fsize, what) == 0) {
    f->hdr_size = h.size;
    if (f->sidecar)
      read_backing (fd, &h, fsize, f);
  } else if (qb_err_is_transient (qb_error_code ())) {
    if (!cx->err)
      cx->err = qb_error_code () == QB_ENOMEM ? ENOMEM : EMFILE;
  } else
    f->hdr_damage = qb_asprintf ("layer %s is not a valid qcow2 image (%s)", f->name,
                                 qb_error_msg ());
  qb_error_clear ();
  free (what);
  close (fd);
}

static int
cmp_str (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* The layers of disk folder DFD whose .chain folder holds a verify's
 * finding ("<layer>.verify.json"), from one listing: *NAMES (sorted,
 * malloc'd, store_names_free), 0; -1 when the folder could not be listed
 * (then every layer is to be asked). */
static int
verified_layers (int dfd, char ***names, size_t *n)
{
  static const char suffix[] = ".verify.json";
  const size_t sl = sizeof suffix - 1;
  *names = NULL;
  *n = 0;
  int cfd = openat (dfd, STORE_SIDECAR_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (cfd < 0)
    return errno == ENOENT ? 0 : -1;
  DIR *c = fdopendir (cfd);
  if (!c) {
    close (cfd);
    return -1;
  }
  struct dirent *de;
  while ((de = readdir (c)) != NULL) {
    size_t len = strlen (de->d_name);
    if (len <= sl || strcmp (de->d_name + len - sl, suffix) != 0)
      continue;
    *names = qb_realloc (*names, (*n + 1) * sizeof **names);
    (*names)[(*n)++] = qb_asprintf ("%.*s", (int) (len - sl), de->d_name);
  }
  closedir (c);
  if (*n > 1)
    qsort (*names, *n, sizeof **names, cmp_str);
  return 0;
}

/* Read directory DIRIDX and append its layer files to *FILES. */
static void
read_dir_files (scan_ctx *cx, size_t diridx, scan_file **files, size_t *n)
{
  const scan_dir *sd = &cx->dirs[diridx];
  DIR *d = scan_opendir (cx, sd->rel);
  if (!d)
    return;
  int cfd = -1;
  /* Only the layers a verify kept a finding for are asked about it. */
  char **verified;
  size_t nverified;
  bool listed = verified_layers (dirfd (d), &verified, &nverified) == 0;
  struct dirent *de;
  while ((de = readdir (d)) != NULL) {
    store_kind kind;
    char id[STORE_ID_MAX];
    int64_t t;
    int seq;
    if (!store_layer_name_parse (de->d_name, &kind, id, &t, &seq))
      continue;
    char *rel = qb_asprintf ("%s/%s", sd->rel, de->d_name);
    struct stat sb;
    if (fstatat (dirfd (d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
      scan_errno (cx, errno, rel);
      free (rel);
      continue;
    }
    if (S_ISLNK (sb.st_mode))
      store_note (&cx->notes, &cx->nnotes, "%s/%s is a symbolic link: not followed, "
                  "the layer is not served", cx->vm, rel);
    if (!S_ISREG (sb.st_mode)) {
      free (rel);
      continue;
    }
    *files = qb_realloc (*files, (*n + 1) * sizeof **files);
    scan_file *f = &(*files)[(*n)++];
    memset (f, 0, sizeof *f);
    f->name = qb_strdup (de->d_name);
    f->dir = diridx;
    f->kind = kind;
    memcpy (f->id, id, sizeof f->id);
    f->id_time_us = t;
    f->seq = seq;
    f->file_size = (uint64_t) sb.st_blocks * 512;
    const char *rest = strchr (de->d_name, '-') + 1;
    f->ours = strlen (rest) >= 16 && rest[8] == 'T' && rest[15] == 'Z';
    f->st_size = (uint64_t) sb.st_size;
    find_record (cx, sd, f->name, f->id, &f->rec, &f->rd);
    if (!f->rd)
      find_sidecar (cx, dirfd (d), &cfd, sd, f);
    if (!f->rd || f->rd->virtual_size == 0 || f->sidecar)
      read_header (cx, dirfd (d), rel, f);
    if (f->sidecar && !f->hdr_damage && f->rd->virtual_size && f->hdr_size
        && f->rd->virtual_size != f->hdr_size)
      f->hdr_damage = qb_asprintf ("layer %s holds a disk of %llu bytes but was a disk of "
                                   "%llu bytes when it was backed up: replaced", f->name,
                                   (unsigned long long) f->hdr_size,
                                   (unsigned long long) f->rd->virtual_size);
    if (f->sidecar && !f->hdr_damage && f->rd->size && f->rd->size != f->st_size)
      f->hdr_damage = qb_asprintf ("layer %s is %llu bytes long but was %llu bytes when it "
                                   "was backed up: truncated or replaced", f->name,
                                   (unsigned long long) f->st_size,
                                   (unsigned long long) f->rd->size);
    const char *key = f->name;
    if (!listed || (nverified && bsearch (&key, verified, nverified, sizeof *verified, cmp_str)))
      f->verify_damage = store_verify_damage (dirfd (d), f->name, &sb);
    free (rel);
  }
  store_names_free (verified, nverified);
  if (cfd >= 0)
    close (cfd);
  closedir (d);
}

static int
cmp_file (const void *a, const void *b)
{
  const scan_file *x = a, *y = b;
  if (x->id_time_us != y->id_time_us)
    return x->id_time_us < y->id_time_us ? -1 : 1;
  if (x->seq != y->seq)
    return x->seq < y->seq ? -1 : 1;
  int kx = x->kind == STORE_INC, ky = y->kind == STORE_INC;
  if (kx != ky)
    return kx - ky;
  return strcmp (x->name, y->name);
}

static bool
str_eq (const char *a, const char *b)
{
  return a && b && strcmp (a, b) == 0;
}

static const char *
base_name (const char *rel)
{
  const char *s = strrchr (rel, '/');
  return s ? s + 1 : rel;
}

/* The records' layers of DISK (chain CHAIN) whose files are missing, between ids AFTER and BEFORE. */
static const scan_missing *
missing_between (const scan_missing *m, size_t nm, const char *chain, const char *after,
                 const char *before)
{
  for (size_t i = 0; i < nm; i++)
    if (str_eq (m[i].chain, chain) && (!after || strcmp (m[i].id, after) > 0)
        && strcmp (m[i].id, before) < 0)
      return &m[i];
  return NULL;
}

static const scan_missing *
missing_id (const scan_missing *m, size_t nm, const char *id)
{
  for (size_t i = 0; i < nm && id; i++)
    if (strcmp (m[i].id, id) == 0)
      return &m[i];
  return NULL;
}

/* Fill layer L from file F. */
static void
fill_layer (scan_ctx *cx, const scan_file *f, store_layer *l)
{
  memset (l, 0, sizeof *l);
  l->path = qb_asprintf ("%s/%s/%s", cx->vmdir, cx->dirs[f->dir].rel, f->name);
  l->name = l->path + strlen (l->path) - strlen (f->name);   /* its tail: one allocation */
  snprintf (l->id, sizeof l->id, "%s", f->id);
  if (store_id_display (f->id, cx->names, l->display, sizeof l->display) < 0)
    snprintf (l->display, sizeof l->display, "%s", f->id);
  l->kind = f->kind;
  l->time_us = f->rec ? f->rec->time_us : f->id_time_us;
  l->file_size = f->file_size;
  l->quiesced = f->rec ? f->rec->quiesced : false;
  l->chain_id = f->rd ? qb_strdup (f->rd->chain) : NULL;
  l->virtual_size = f->rd ? f->rd->virtual_size : 0;
  if (l->virtual_size == 0)
    l->virtual_size = f->hdr_size;
}

static scan_chain *
new_chain (scan_chain **chains, size_t *n, const char *chain_id, const scan_dir *dir, size_t diridx)
{
  *chains = qb_realloc (*chains, (*n + 1) * sizeof **chains);
  scan_chain *c = &(*chains)[(*n)++];
  memset (c, 0, sizeof *c);
  c->c.chain_id = qb_strdup (chain_id);
  c->c.month = qb_strdup (dir->month);
  c->dir = diridx;
  return c;
}

static store_layer *
chain_append (scan_chain *c)
{
  c->c.layers = qb_realloc (c->c.layers, (c->c.n + 1) * sizeof *c->c.layers);
  return &c->c.layers[c->c.n++];
}

/* Cross-check a layer known by its own record only (a copied folder)
 * against the backing file its qcow2 header names: an INC must name the
 * layer before it in chain C, a FULL or COPY none.  NULL, or why not. */
static char *
check_backing (const scan_file *f, const scan_chain *c)
{
  if (!f->backing)
    return qb_asprintf ("layer %s: the backing file name in its header cannot be read", f->name);
  if (f->kind != STORE_INC) {
    if (f->backing[0])
      return qb_asprintf ("layer %s is a %s but its header names the backing file %s: "
                          "it is not the file that was backed up", f->name,
                          f->kind == STORE_FULL ? "FULL" : "COPY", f->backing);
    return NULL;
  }
  if (c->c.n == 0)
    return NULL;
  const char *want = c->c.layers[c->c.n - 1].name;
  if (strcmp (f->backing, want) != 0)
    return qb_asprintf ("layer %s names the backing file %s, but the layer before it in its "
                        "chain is %s: it belongs to another chain", f->name,
                        f->backing[0] ? f->backing : "(none)", want);
  return NULL;
}

/* Build the chains of one disk from its files FILES (sorted). */
static void
build_chains (scan_ctx *cx, const char *disk, scan_file *files, size_t nf, store_disk *out)
{
  /* Layers the records name for this disk but which are not on disk. */
  scan_missing *miss = NULL;
  size_t nmiss = 0;
  for (size_t r = 0; r < cx->nrecs; r++)
    for (size_t i = 0; i < cx->recs[r].ndisks; i++) {
      const store_rec_disk *rd = &cx->recs[r].disks[i];
      if (strcmp (rd->name, disk) != 0)
        continue;
      bool found = false;
      for (size_t k = 0; k < nf && !found; k++)
        found = files[k].rd == rd;
      if (found)
        continue;
      miss = qb_realloc (miss, (nmiss + 1) * sizeof *miss);
      miss[nmiss++] = (scan_missing) { cx->recs[r].id, rd->chain, rd->file };
    }

  scan_chain *chains = NULL;
  size_t nch = 0;
  /* Per directory: index of its current FULL chain, or -1. */
  long *current = qb_calloc (cx->ndirs, sizeof *current);
  for (size_t i = 0; i < cx->ndirs; i++)
    current[i] = -1;

  for (size_t k = 0; k < nf; k++) {
    scan_file *f = &files[k];
    const scan_dir *sd = &cx->dirs[f->dir];
    scan_chain *c = NULL;
    char *damage = NULL;

    if (f->ours && !f->rd && f->kind == STORE_INC) {
      /* Our INCs are always committed with a record; without it the
         layer cannot be placed in a chain safely. */
      c = new_chain (&chains, &nch, NULL, sd, f->dir);
      damage = qb_asprintf ("layer %s has no record (neither .points/%s.json nor "
                            "%s/" STORE_SIDECAR_DIR "/%s.json is present and readable), so its "
                            "chain cannot be trusted", f->name, f->id, sd->rel, f->name);
    } else if (f->kind != STORE_INC) {
      c = new_chain (&chains, &nch, f->rd ? f->rd->chain : NULL, sd, f->dir);
      if (f->kind == STORE_FULL)
        current[f->dir] = (long) (nch - 1);
    } else {
      const char *want = f->rd ? f->rd->chain : NULL;
      const char *prev = f->rd ? f->rd->prev : NULL;
      if (want) {
        for (size_t j = nch; j-- > 0 && !c;)
          if (str_eq (chains[j].c.chain_id, want))
            c = &chains[j];
      } else if (current[f->dir] >= 0)
        c = &chains[current[f->dir]];

      if (!c) {
        const scan_missing *m = missing_id (miss, nmiss, prev);
        if (!m && want)
          m = missing_between (miss, nmiss, want, NULL, f->id);
        c = new_chain (&chains, &nch, want, sd, f->dir);
        if (m)
          damage = qb_asprintf ("%s is missing", base_name (m->file));
        else if (want)
          damage = qb_asprintf ("layer %s belongs to chain %s after %s, but no layer of "
                                "that chain is present", f->name, want, prev ? prev : "?");
        else
          damage = qb_asprintf ("layer %s has no FULL before it in %s", f->name, sd->rel);
      } else if (c->damage) {
        damage = qb_strdup (c->damage);
      } else {
        const store_layer *last = &c->c.layers[c->c.n - 1];
        const scan_missing *m = c->c.chain_id
          ? missing_between (miss, nmiss, c->c.chain_id, last->id, f->id) : NULL;
        if (!m && prev && strcmp (last->id, prev) != 0)
          m = missing_id (miss, nmiss, prev);
        if (m)
          damage = qb_asprintf ("%s is missing", base_name (m->file));
        else if (f->sidecar && prev && strcmp (last->id, prev) != 0)
          damage = qb_asprintf ("layer %s continues the layer of restore point %s, which is "
                                "missing from %s (the previous layer present is %s)", f->name,
                                prev, sd->rel, last->name);
        else if (f->rd && (!prev || strcmp (last->id, prev) != 0))
          damage = qb_asprintf ("layer %s belongs to chain %s after %s, but the previous "
                                "layer present is %s", f->name, want ? want : "(seed)",
                                prev ? prev : "(none)", last->name);
      }
    }
    if (!damage && f->sidecar && !f->hdr_damage)
      damage = check_backing (f, c);
    store_layer *l = chain_append (c);
    fill_layer (cx, f, l);
    if (!damage && f->hdr_damage)
      damage = qb_strdup (f->hdr_damage);
    if (!damage && f->verify_damage) {
      damage = f->verify_damage;
      f->verify_damage = NULL;
    }
    if (damage) {
      l->damage = damage;
      if (!c->damage)
        c->damage = damage;
    }
  }

  /* Kept for store_vm_lost_after (records are in id order, so are these). */
  for (size_t i = 0; i < nmiss; i++) {
    if (!miss[i].chain)
      continue;
    out->lost = qb_realloc (out->lost, (out->nlost + 1) * sizeof *out->lost);
    out->lost[out->nlost++] = (store_lost) { qb_strdup (miss[i].id), qb_strdup (miss[i].chain),
                                             qb_strdup (miss[i].file) };
  }
  out->nchains = nch;
  out->chains = qb_calloc (nch, sizeof *out->chains);
  for (size_t i = 0; i < nch; i++)
    out->chains[i] = chains[i].c;
  free (chains);
  free (current);
  free (miss);
}

static int
cmp_file_disk (const void *a, const void *b, void *arg)
{
  const scan_ctx *cx = arg;
  const scan_file *x = a, *y = b;
  int c = strcmp (cx->dirs[x->dir].disk, cx->dirs[y->dir].disk);
  return c ? c : cmp_file (a, b);
}

/* Mark the layers an unfinished chain rewrite of the unit touches (see
 * store.h): busy, and removing for the points that go.  -1 on a shortage. */
static int
rewrite_apply (scan_ctx *cx, store_vm *v)
{
  int ufd = cx->folder && cx->ndirs
    ? qb_openat_nofollow (cx->vmfd, cx->dirs[0].rel, O_RDONLY | O_DIRECTORY)
    : dup (cx->vmfd);
  if (ufd < 0)
    return 0;            /* the folder went away: the layers will fail to open */
  store_rewrite_state rs;
  int r = store_rewrite_state_load (ufd, &rs);
  close (ufd);
  if (r < 0 || !rs.active)
    return r;
  size_t ul = cx->folder && cx->ndirs
    ? strlen (cx->vmdir) + 1 + strlen (cx->dirs[0].rel) : strlen (cx->vmdir);
  for (size_t d = 0; d < v->ndisks; d++)
    for (size_t c = 0; c < v->disks[d].nchains; c++)
      for (size_t i = 0; i < v->disks[d].chains[c].n; i++) {
        store_layer *l = &v->disks[d].chains[c].layers[i];
        const char *rel = strlen (l->path) > ul ? l->path + ul + 1 : l->name;
        bool hide = store_rewrite_state_has (rs.hide, rs.nhide, rel);
        if (!hide && !rs.all_busy && !store_rewrite_state_has (rs.busy, rs.nbusy, rel))
          continue;
        free (l->damage);
        l->damage = qb_strdup (rs.why);
        l->busy = true;
        l->removing = hide;
      }
  store_rewrite_state_clear (&rs);
  return 0;
}

/* qsort_r: index entries by display name, then chain order. */
static int
cmp_ix (const void *a, const void *b, void *arg)
{
  const store_disk *d = arg;
  const store_layer_ix *x = a, *y = b;
  int c = strcmp (d->chains[x->chain].layers[x->idx].display,
                  d->chains[y->chain].layers[y->idx].display);
  if (c)
    return c;
  if (x->chain != y->chain)
    return x->chain < y->chain ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Build D's index of its layers by display name (store_disk_find). */
static void
disk_index (store_disk *d)
{
  size_t n = 0;
  for (size_t c = 0; c < d->nchains; c++)
    n += d->chains[c].n;
  if (n == 0 || n > UINT32_MAX || d->nchains > UINT32_MAX)
    return;
  d->ix = qb_calloc (n, sizeof *d->ix);
  for (size_t c = 0; c < d->nchains; c++)
    for (size_t i = 0; i < d->chains[c].n; i++)
      d->ix[d->nix++] = (store_layer_ix) { (uint32_t) c, (uint32_t) i };
  qsort_r (d->ix, d->nix, sizeof *d->ix, cmp_ix, d);
}

/* Read the directories of CX (found already), build disks and chains,
 * and free CX: the scan, or NULL with an error.  With FAILED (an error is
 * set already) only free CX. */
static store_vm *
scan_run (scan_ctx *cx, bool failed)
{
  store_vm *v = NULL;
  scan_file *files = NULL;
  size_t nf = 0;
  if (failed)
    goto out;
  for (size_t i = 0; i < cx->ndirs && !cx->err; i++)
    read_dir_files (cx, i, &files, &nf);
  if (cx->err) {
    store_fs_error (cx->err, "scanning VM", cx->vm);
    goto out;
  }
  if (nf > 1)
    qsort_r (files, nf, sizeof *files, cmp_file_disk, cx);

  v = qb_calloc (1, sizeof *v);
  v->name = qb_strdup (cx->vm);
  for (size_t i = 0; i < nf;) {
    const char *disk = cx->dirs[files[i].dir].disk;
    size_t j = i;
    while (j < nf && strcmp (cx->dirs[files[j].dir].disk, disk) == 0)
      j++;
    v->disks = qb_realloc (v->disks, (v->ndisks + 1) * sizeof *v->disks);
    store_disk *d = &v->disks[v->ndisks++];
    memset (d, 0, sizeof *d);
    d->name = qb_strdup (disk);
    build_chains (cx, disk, files + i, j - i, d);
    i = j;
  }
  if (rewrite_apply (cx, v) < 0) {
    store_vm_free (v);
    v = NULL;
    goto out;
  }
  for (size_t i = 0; i < v->ndisks; i++)
    disk_index (&v->disks[i]);
  v->skipped = cx->notes;
  v->nskipped = cx->nnotes;
  cx->notes = NULL;
  cx->nnotes = 0;
 out:
  for (size_t i = 0; i < nf; i++) {
    free (files[i].name);
    free (files[i].hdr_damage);
    free (files[i].backing);
    free (files[i].verify_damage);
  }
  free (files);
  for (size_t i = 0; i < cx->ndirs; i++) {
    free (cx->dirs[i].rel);
    free (cx->dirs[i].disk);
    free (cx->dirs[i].month);
  }
  free (cx->dirs);
  store_names_free (cx->notes, cx->nnotes);
  store_recs_free (cx->recs, cx->nrecs);
  for (size_t i = 0; i < cx->nside; i++) {
    store_rec_clear (cx->side[i]);
    free (cx->side[i]);
  }
  free (cx->side);
  return v;
}

/* The modification time of folder FD (zero when it cannot be read). */
static struct timespec
folder_mtime (int fd)
{
  struct stat sb;
  if (fstat (fd, &sb) < 0)
    return (struct timespec) { 0, 0 };
  return sb.st_mtim;
}

/* Scan VM into disks, chains and layers. */
store_vm *
store_scan_vm (store *st, const char *vm)
{
  int vmfd = store_vm_open (st, vm);
  if (vmfd < 0)
    return NULL;
  char *vmdir = qb_asprintf ("%s/%s", store_root (st), vm);
  store_vm *v = NULL;
  /* A chain rewrite changes the VM folder (its journal) at every step: a
     scan that overlapped one is done again, so that no half-rewritten
     state is ever taken for damage. */
  for (int tries = 0; tries < 3; tries++) {
    struct timespec before = folder_mtime (vmfd);
    scan_ctx cx = { .vm = vm, .vmdir = vmdir, .vmfd = vmfd, .names = store_get_names (st) };
    bool failed = store_recs_load (vmfd, vm, &cx.recs, &cx.nrecs, &cx.notes, &cx.nnotes) < 0
      || find_dirs (&cx) < 0;
    if (failed)
      qb_error_prefix ("scanning VM %s", vm);
    v = scan_run (&cx, failed);
    struct timespec after = folder_mtime (vmfd);
    if (!v || (before.tv_sec == after.tv_sec && before.tv_nsec == after.tv_nsec))
      break;
    if (tries < 2) {
      store_vm_free (v);
      v = NULL;
    }
  }
  close (vmfd);
  free (vmdir);
  return v;
}

/* Scan the disk folder PATH alone, outside a store. */
store_vm *
store_scan_folder (const char *path)
{
  char *real = realpath (path, NULL);
  if (!real) {
    qb_error_set_errno (errno, "%s", path);
    return NULL;
  }
  char *slash = strrchr (real, '/');
  if (!slash || !qb_name_is_safe (slash + 1)) {
    qb_error_set (QB_EINVAL, "%s: not a disk folder", path);
    free (real);
    return NULL;
  }
  *slash = '\0';
  const char *parent = real[0] ? real : "/";
  int pfd = open (parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (pfd < 0) {
    qb_error_set_errno (errno, "%s", parent);
    free (real);
    return NULL;
  }
  struct stat sb;
  if (fstatat (pfd, slash + 1, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR (sb.st_mode)) {
    qb_error_set (QB_ENOENT, "%s is not a folder", path);
    close (pfd);
    free (real);
    return NULL;
  }
  const char *pname = strrchr (parent, '/') ? strrchr (parent, '/') + 1 : parent;
  char *vmname = qb_strdup (pname[0] ? pname : "/");
  int ufd = qb_openat_nofollow (pfd, slash + 1, O_RDONLY | O_DIRECTORY);
  store_vm *v = NULL;
  for (int tries = 0; tries < 3; tries++) {
    struct timespec before = ufd >= 0 ? folder_mtime (ufd) : (struct timespec) { 0, 0 };
    scan_ctx cx = { .vm = vmname, .vmdir = parent, .vmfd = pfd, .folder = true };
    add_dir (&cx, NULL, slash + 1);
    v = scan_run (&cx, false);
    struct timespec after = ufd >= 0 ? folder_mtime (ufd) : (struct timespec) { 0, 0 };
    if (!v || (before.tv_sec == after.tv_sec && before.tv_nsec == after.tv_nsec))
      break;
    if (tries < 2) {
      store_vm_free (v);
      v = NULL;
    }
  }
  if (ufd >= 0)
    close (ufd);
  close (pfd);
  free (vmname);
  free (real);
  return v;
}

/* Free a scan. */
void
store_vm_free (store_vm *v)
{
  if (!v)
    return;
  for (size_t i = 0; i < v->ndisks; i++) {
    store_disk *d = &v->disks[i];
    for (size_t j = 0; j < d->nchains; j++) {
      store_chain *c = &d->chains[j];
      for (size_t k = 0; k < c->n; k++) {
        store_layer *l = &c->layers[k];
        free (l->path);         /* name is its tail */
        free (l->chain_id);
        free (l->damage);
      }
      free (c->layers);
      free (c->chain_id);
      free (c->month);
    }
    free (d->chains);
    free (d->ix);
    free (d->name);
    for (size_t j = 0; j < d->nlost; j++) {
      free (d->lost[j].id);
      free (d->lost[j].chain);
      free (d->lost[j].file);
    }
    free (d->lost);
  }
  free (v->disks);
  store_names_free (v->skipped, v->nskipped);
  free (v->name);
  free (v);
}

/* The disk NAME of a scan, or NULL. */
const store_disk *
store_vm_disk (const store_vm *v, const char *name)
{
  for (size_t i = 0; v && name && i < v->ndisks; i++)
    if (strcmp (v->disks[i].name, name) == 0)
      return &v->disks[i];
  return NULL;
}

/* See store.h. */
bool
store_disk_find (const store_disk *d, const char *display, size_t *chain, size_t *idx)
{
  if (!d->ix) {
    for (size_t c = 0; c < d->nchains; c++)
      for (size_t i = 0; i < d->chains[c].n; i++)
        if (!d->chains[c].layers[i].removing
            && strcmp (d->chains[c].layers[i].display, display) == 0) {
          *chain = c;
          *idx = i;
          return true;
        }
    return false;
  }
  size_t lo = 0, hi = d->nix;           /* the first entry >= DISPLAY */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const store_layer_ix *e = &d->ix[mid];
    if (strcmp (d->chains[e->chain].layers[e->idx].display, display) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (; lo < d->nix; lo++) {
    const store_layer_ix *e = &d->ix[lo];
    const store_layer *l = &d->chains[e->chain].layers[e->idx];
    if (strcmp (l->display, display) != 0)
      break;
    if (!l->removing) {
      *chain = e->chain;
      *idx = e->idx;
      return true;
    }
  }
  return false;
}

/* A newer recorded layer of D in CHAIN than AFTER_ID that the scan lost (see store.h). */
char *
store_disk_lost_after (const store_disk *d, const char *chain, const char *after_id)
{
  for (size_t i = 0; d && chain && after_id && i < d->nlost; i++) {
    const store_lost *l = &d->lost[i];
    if (strcmp (l->id, after_id) > 0 && strcmp (l->chain, chain) == 0)
      return qb_asprintf ("restore point %s of disk %s is lost (%s is missing or unreadable)",
                          l->id, d->name, l->file);
  }
  return NULL;
}
