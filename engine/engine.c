/* qmpbackupfs — the backup engine: one restore point of a running VM (see
 * engine.h and SPEC.md "Backup semantics").
 *
 * Order of a backup, and why:
 *   lock the VM in the store, recover leftovers of a crashed run, connect,
 *   cancel leftover jobs/nodes, discover the disks, decide the level;
 *   create the qcow2 v3 targets under temporary names (an INC target's
 *   header names the previous layer, but it is attached without that
 *   chain: zeroed ranges become v3 zero clusters either way) and attach
 *   them; freeze; ONE transaction; thaw; wait until every job is
 *   "pending" (all data copied, nothing finalized, so any failure still
 *   cancels every disk); flush the targets (blockdev-reopen flushes QEMU's
 *   qcow2 metadata caches and reports errors — until a flush the files on
 *   disk lack their L2 tables); finalize, dismiss and detach the targets
 *   (QEMU must not hold a file we rename: it may reopen it by name); commit
 *   the restore point in the store; only then reset the chain's bitmap.
 *   An INC whose disks' chain bitmaps are all empty when the disks are
 *   read (and that freezes, pauses and fleeces nothing) runs no job: its
 *   empty targets are committed as they are and no bitmap is touched.
 *
 *   Bitmaps: a FULL adds "qmpbackup-<target>-<new chain>" in its
 *   transaction, <target> being the store folder's target id (store.h), so
 *   every store a VM is backed up into keeps its own bitmaps.  An INC runs
 *   with bitmap-mode "never", so the job leaves the chain's bitmap alone,
 *   and adds "qmpbackup-next-<target>-<chain>" in the same transaction; after
 *   the commit one transaction clears the chain's bitmap and merges the
 *   "next" bitmap into it.  Any failure before that leaves the chain's
 *   bitmap with every change since the previous layer (or more): always
 *   safe for the next incremental.  (QEMU allows bitmap-mode "never" only
 *   with sync "bitmap", which copies exactly what sync "incremental" does.)
 *   A committed point then drops this target's bitmaps of older chains,
 *   never another target's.  Names of older versions, "qmpbackup-<chain>",
 *   still count as the bitmap of that chain in the store that has it, so an
 *   upgrade does not force a full.  Job ids and target node names carry the
 *   first 8 digits of the target id: the leftovers a backup cleans up at
 *   its start are its own target's, never a running backup's of another. */
#include "engine/engine-int.h"
#include "engine/target.h"
#include "store/chain.h"
#include "common/error.h"
#include "common/util.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* "full", "inc", "auto", "copy" → level. */
int
backup_level_parse (const char *word, backup_level *level)
{
  static const char *const words[] = { "full", "inc", "auto", "copy" };
  static const backup_level levels[] = { BACKUP_FULL, BACKUP_INC, BACKUP_AUTO, BACKUP_COPY };
  for (size_t i = 0; word && i < 4; i++)
    if (strcmp (word, words[i]) == 0) {
      *level = levels[i];
      return 0;
    }
  return qb_error_set (QB_EINVAL, "unknown backup level \"%s\" (use full, inc, auto or copy)",
                       word ? word : "");
}

/* The word for LEVEL. */
const char *
backup_level_name (backup_level level)
{
  switch (level) {
  case BACKUP_FULL: return "full";
  case BACKUP_INC: return "inc";
  case BACKUP_AUTO: return "auto";
  case BACKUP_COPY: return "copy";
  }
  return "?";
}

/* ---- Bitmap names ---- */

/* One of our bitmap names, parsed. */
typedef struct bitmap_owner {
  bool next;                 /* "qmpbackup-next-...": the writes during an INC */
  bool legacy;               /* an older version's name: no target in it */
  char target[STORE_TARGET_ID_LEN + 1]; /* "" when legacy */
  const char *chain;         /* points into the name */
} bitmap_owner;

/* True for 16 lowercase hex digits at S (not necessarily NUL-terminated). */
static bool
hex16 (const char *s)
{
  for (int i = 0; i < STORE_TARGET_ID_LEN; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return true;
}

/* Parse NAME as "qmpbackup-[next-]<target>-<chain>" or an older version's
 * "qmpbackup-[next-]<chain>"; false for a name that is not ours. */
static bool
bitmap_owner_parse (const char *name, bitmap_owner *o)
{
  memset (o, 0, sizeof *o);
  size_t plen = strlen (ENGINE_BITMAP_PREFIX);
  if (strncmp (name, ENGINE_BITMAP_PREFIX, plen) != 0)
    return false;
  const char *rest = name + plen;
  if (strncmp (rest, "next-", 5) == 0) {
    o->next = true;
    rest += 5;
  }
  if (strlen (rest) == 2 * STORE_TARGET_ID_LEN + 1 && rest[STORE_TARGET_ID_LEN] == '-'
      && hex16 (rest) && hex16 (rest + STORE_TARGET_ID_LEN + 1)) {
    memcpy (o->target, rest, STORE_TARGET_ID_LEN);
    o->chain = rest + STORE_TARGET_ID_LEN + 1;
  }
  else {
    o->legacy = true;
    o->chain = rest;
  }
  return true;
}

/* The bitmap of chain CHAIN in target TARGET (malloc'd). */
static char *
bitmap_name (const char *target, const char *chain)
{
  return qb_asprintf (ENGINE_BITMAP_PREFIX "%s-%s", target, chain);
}

/* True when disk DISK of scan V has a chain CHAIN. */
static bool
scan_has_chain (const store_vm *v, const char *disk, const char *chain)
{
  const store_disk *sd = v ? store_vm_disk (v, disk) : NULL;
  for (size_t i = 0; sd && i < sd->nchains; i++)
    if (sd->chains[i].chain_id && strcmp (sd->chains[i].chain_id, chain) == 0)
      return true;
  return false;
}

/* True when bitmap O (parsed) of disk DISK belongs to the store folder of
 * target TARGET ("" when unknown) whose scan is V: its target is TARGET, or
 * it is an older version's name for one of V's chains. */
static bool
bitmap_is_ours (const bitmap_owner *o, const char *target, const store_vm *v, const char *disk)
{
  if (!o->legacy)
    return target[0] && strcmp (o->target, target) == 0;
  return scan_has_chain (v, disk, o->chain);
}

/* ---- Chain health ---- */

/* The chain a new INC of SD would continue: the newest chain that is not a
 * copy (with MONTH non-NULL: only if it lives in that month's folder). */
static const store_chain *
last_chain (const store_disk *sd, const char *month, bool *other_month)
{
  *other_month = false;
  if (!sd)
    return NULL;
  for (size_t i = sd->nchains; i-- > 0;) {
    const store_chain *c = &sd->chains[i];
    if (c->n == 0 || c->layers[0].kind == STORE_COPY)
      continue;
    if (month && (!c->month || strcmp (c->month, month) != 0)) {
      *other_month = true;
      return NULL;
    }
    return c;
  }
  return NULL;
}

/* Judge whether disk VD can continue its chain in SD, whose bitmap is
 * "qmpbackup-<TARGET>-<chain>" (TARGET "" when the folder has no id yet) or
 * an older version's "qmpbackup-<chain>": returns the health word; sets
 * *PREV (the layer to continue, when "ok") and *REASON (malloc'd, when not
 * "ok"); *CHAIN_OUT the chain (or NULL); *BITMAP_OUT (may be NULL) the
 * chain's bitmap name, found or expected (malloc'd, NULL without a chain). */
static const char *
disk_health (const char *target, const vm_disk *vd,
             const store_disk *sd, const char *month, const store_layer **prev, char **reason,
             const store_chain **chain_out, char **bitmap_out)
{
  *prev = NULL;
  *reason = NULL;
  if (bitmap_out)
    *bitmap_out = NULL;
  bool other_month;
  const store_chain *c = last_chain (sd, month, &other_month);
  if (chain_out)
    *chain_out = c;
  if (!c) {
    if (other_month)
      *reason = qb_asprintf ("disk %s has no chain in this month's folder (%s) yet", vd->name, month);
    else
      *reason = qb_asprintf ("disk %s has no backup chain in the store yet", vd->name);
    return "none";
  }
  if (!c->chain_id || c->layers[0].kind != STORE_FULL) {
    *reason = qb_asprintf ("the newest chain of disk %s was not written by this program "
                           "(it has no chain id)", vd->name);
    return "none";
  }
  for (size_t i = 0; i < c->n; i++)
    if (c->layers[i].damage) {
      *reason = qb_asprintf ("restore point %s of disk %s is damaged (%s)",
                             c->layers[i].display, vd->name, c->layers[i].damage);
      return "damaged";
    }
  const store_layer *last = &c->layers[c->n - 1];
  *reason = store_disk_lost_after (sd, c->chain_id, last->id);
  if (*reason)
    return "damaged";
  if (last->virtual_size != vd->size) {
    char a[32], b[32];
    qb_format_bytes (last->virtual_size, a, sizeof a);
    qb_format_bytes (vd->size, b, sizeof b);
    *reason = qb_asprintf ("disk %s changed size since its last backup (%s, now %s)",
                           vd->name, a, b);
    return "resized";
  }
  char *bm = target[0] ? bitmap_name (target, c->chain_id) : NULL;
  const vm_bitmap *b = bm ? disks_find_bitmap (vd, bm) : NULL;
  if (!b) {
    char *legacy = qb_asprintf (ENGINE_BITMAP_PREFIX "%s", c->chain_id);
    b = disks_find_bitmap (vd, legacy);
    if (b || !bm) {
      free (bm);
      bm = legacy;
    }
    else
      free (legacy);
  }
  const char *health = "ok";
  if (!b) {
    *reason = qb_asprintf ("disk %s has no bitmap %s (%s)", vd->name, bm,
                           strcmp (vd->format, "qcow2") == 0
                           ? "the VM was restarted without it, or it was removed"
                           : "bitmaps of non-qcow2 disks do not survive a VM restart, "
                           "or it was removed");
    health = "missing";
  }
  else if (b->inconsistent) {
    *reason = qb_asprintf ("bitmap %s of disk %s is inconsistent (QEMU stopped without "
                           "saving it)", bm, vd->name);
    health = "inconsistent";
  }
  else if (!b->recording) {
    *reason = qb_asprintf ("bitmap %s of disk %s is disabled (it does not record changes)",
                           bm, vd->name);
    health = "disabled";
  }
  else if (b->busy) {
    *reason = qb_asprintf ("bitmap %s of disk %s is in use by another job", bm, vd->name);
    health = "busy";
  }
  if (bitmap_out)
    *bitmap_out = bm;
  else
    free (bm);
  if (strcmp (health, "ok") == 0)
    *prev = last;
  return health;
}

/* ---- Helpers ---- */

/* The relative path from directory FROM_DIR to file TO (both absolute). */
static char *
rel_path (const char *from_dir, const char *to)
{
  size_t i = 0, common = 0;
  while (from_dir[i] && to[i] && from_dir[i] == to[i]) {
    if (from_dir[i] == '/')
      common = i + 1;
    i++;
  }
  const char *rest;
  if (from_dir[i] == '\0' && to[i] == '/') {
    common = i + 1;            /* TO lies inside FROM_DIR */
    rest = "";
  }
  else
    rest = from_dir + common;
  size_t ups = 0;
  if (*rest) {
    ups = 1;
    for (const char *p = rest; *p; p++)
      if (*p == '/' && p[1])
        ups++;
  }
  size_t len = ups * 3 + strlen (to + common) + 1;
  char *out = qb_calloc (1, len);
  for (size_t k = 0; k < ups; k++)
    strcat (out, "../");
  strcat (out, to + common);
  return out;
}

/* Report progress PHASE to the caller. */
void
eng_report (eng_run *r, const char *phase)
{
  if (!r->opts->progress)
    return;
  backup_progress p = {
    .level = r->level, .phase = phase, .done = r->done, .total = r->total, .rate = r->rate,
  };
  r->opts->progress (r->opts->opaque, &p);
}

/* jobs_wait callback: update the counters and the smoothed rate. */
static void
tick (void *opaque, uint64_t done, uint64_t total)
{
  eng_run *r = opaque;
  uint64_t now = qb_mono_ms ();
  if (r->last_ms && now > r->last_ms && done >= r->last_done) {
    double inst = (double) (done - r->last_done) * 1000.0 / (double) (now - r->last_ms);
    r->rate = r->rate > 0 ? 0.7 * r->rate + 0.3 * inst : inst;
  }
  r->last_ms = now;
  r->last_done = done;
  r->done = done;
  r->total = total;
  eng_report (r, "copying");
}

/* Mark in PICK (one per disk of the VM) the disks that the names in LIST
 * (NULL-terminated, each any name of a disk: disks_match) name; -1
 * (QB_EINVAL) for a name that names no disk or several. */
static int
pick_disks (const eng_run *r, const char *const *list, const char *what, bool *pick)
{
  for (; list && *list; list++) {
    int k = disks_match (r->all, r->nall, *list, what, r->vm);
    if (k < 0)
      return -1;
    pick[k] = true;
  }
  return 0;
}

/* Remove bitmap NAME from NODE; 0 or -1. */
static int
bitmap_remove (qmp *q, const char *node, const char *name)
{
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "node", json_object_new_string (node));
  json_object_object_add (args, "name", json_object_new_string (name));
  return qmp_run (q, "block-dirty-bitmap-remove", args, QMP_COMMAND_TIMEOUT_MS);
}

/* ---- The steps of a backup ---- */

/* Set *WHY to why the newest point of chain C cannot be built on (its qcow2
 * metadata is damaged, or a layer is cut short), or NULL when it reads whole;
 * -1 only for a transient shortage (descriptors, memory), which is no damage. */
static int
chain_problem (store *st, const store_chain *c, const char *disk, char **why)
{
  *why = NULL;
  chain_image *ci = store_point_open (st, c, c->n - 1);
  if (!ci || chain_verify (ci) < 0) {
    if (qb_err_is_transient (qb_error_code ())) {
      chain_close (ci);
      qb_error_prefix ("checking the chain of disk %s (nothing is damaged; try again)", disk);
      return -1;
    }
    *why = qb_asprintf ("the chain of disk %s is damaged (%s)", disk, qb_error_msg ());
  }
  chain_close (ci);
  qb_error_clear ();
  return 0;
}

/* Decide the level and each disk's chain; fills r->level and the reason. */
static int
decide_level (eng_run *r)
{
  const char *month = r->opts->monthly ? r->month : NULL;
  bool all_ok = true;
  char reasons[2048] = "";
  for (size_t i = 0; i < r->n; i++) {
    eng_disk *d = &r->d[i];
    const store_disk *sd = r->scan ? store_vm_disk (r->scan, d->vd->name) : NULL;
    const store_chain *chain = NULL;
    char *bm = NULL;
    d->health = disk_health (r->target, d->vd, sd, month, &d->prev, &d->reason,
                             &chain, &bm);
    if (!d->reason)
      d->bitmap = bm;         /* the healthy chain's bitmap, by whatever name it has */
    else
      free (bm);
    /* Never build on a chain whose layers do not read whole. */
    if (!d->reason && r->opts->level != BACKUP_FULL && r->opts->level != BACKUP_COPY) {
      if (chain_problem (r->st, chain, d->vd->name, &d->reason) < 0)
        return -1;
      if (d->reason) {
        d->health = "damaged";
        d->prev = NULL;
      }
    }
    if (d->reason) {
      free (d->bitmap);
      d->bitmap = NULL;
      all_ok = false;
      snprintf (reasons + strlen (reasons), sizeof reasons - strlen (reasons), "%s%s",
                reasons[0] ? "; " : "", d->reason);
    }
  }
  backup_level want = r->opts->level;
  if (want == BACKUP_INC && !all_ok)
    return qb_error_set (QB_ENOCHAIN, "an incremental backup is impossible: %s: take a full backup",
                         reasons);
  if (want == BACKUP_AUTO) {
    want = all_ok ? BACKUP_INC : BACKUP_FULL;
    if (!all_ok && r->res)
      snprintf (r->res->reason, sizeof r->res->reason, "%s", reasons);
  }
  r->level = want;
  char chain[32];
  store_new_chain_id (chain, sizeof chain);
  for (size_t i = 0; i < r->n; i++) {
    eng_disk *d = &r->d[i];
    if (want != BACKUP_INC) {
      free (d->bitmap);
      d->bitmap = NULL;
    }
    if (want == BACKUP_FULL) {
      d->chain = qb_strdup (chain);
      d->bitmap = bitmap_name (r->target, d->chain);
    }
    else if (want == BACKUP_INC) {
      d->chain = qb_strdup (d->prev->chain_id);
      d->next = qb_asprintf (ENGINE_BITMAP_PREFIX "next-%s-%s", r->target, d->chain);
    }
    /* Node names are at most 31 characters: 8 digits of the target id. */
    snprintf (d->job, sizeof d->job, ENGINE_JOB_PREFIX "%.8s-%u", r->target, (unsigned) i);
    snprintf (d->tnode, sizeof d->tnode, ENGINE_TARGET_PREFIX "%.8s-%u", r->target, (unsigned) i);
    snprintf (d->fnode, sizeof d->fnode, ENGINE_JOB_PREFIX "file-%.8s-%u", r->target, (unsigned) i);
  }
  return 0;
}

/* The blockdev-add arguments that attach DISK's target (new object). */
static json_object *
target_attach_args (const eng_disk *d, store_kind kind)
{
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "driver", json_object_new_string ("qcow2"));
  json_object_object_add (args, "node-name", json_object_new_string (d->tnode));
  json_object *file = json_object_new_object ();
  json_object_object_add (file, "driver", json_object_new_string ("file"));
  json_object_object_add (file, "filename", json_object_new_string (d->tmp));
  json_object_object_add (file, "node-name", json_object_new_string (d->fnode));
  json_object_object_add (args, "file", file);
  /* An INC target is opened without its backing chain (its header still
   * names the previous layer): the job writes every cluster of the bitmap,
   * data as data and zeroes as qcow2 v3 zero clusters (the image is v3
   * for that reason), so nothing is read from below, and opening the
   * chain would cost a node per layer. */
  if (kind == STORE_INC)
    json_object_object_add (args, "backing", NULL);
  return args;
}

/* Create DISK's target image: the store writes it and *ATTACH is set to
 * its blockdev-add arguments (NULL when r->unchanged: no job writes it),
 * for targets_attach; or, for an image the store does not write, QEMU's
 * blockdev-create makes it and attaches it here. */
static int
target_create (eng_run *r, eng_disk *d, json_object **attach)
{
  store_kind kind = r->level == BACKUP_FULL ? STORE_FULL
    : r->level == BACKUP_INC ? STORE_INC : STORE_COPY;
  d->tmp = store_txn_add_disk (r->txn, d->vd->name, kind, d->prev, d->chain, d->vd->size);
  if (!d->tmp)
    return -1;
  char *backing = NULL;
  if (kind == STORE_INC) {
    char *dir = qb_strdup (d->tmp);
    backing = rel_path (dirname (dir), d->prev->path);
    free (dir);
  }
  /* An empty 0600 file first, which the store (or QEMU) then formats. */
  if (store_txn_create_target (r->txn, d->vd->name) < 0) {
    free (backing);
    return -1;
  }
  json_object *args = r->unchanged ? NULL : target_attach_args (d, kind);  /* NULL: no job writes it */
  int rc = target_image_write (d->tmp, d->vd->size, backing);
  if (rc == 1) {
    char job[64], node[64];
    snprintf (job, sizeof job, "%s-create", d->job);
    snprintf (node, sizeof node, "%s-c", d->tnode);
    rc = target_image_create (r->q, job, node, d->tmp, d->vd->size, backing, args);
    args = NULL;
    if (rc == 0)
      d->node_added = !r->unchanged;
  }
  free (backing);
  if (rc < 0) {
    json_object_put (args);
    qb_error_prefix ("creating the target image of disk %s", d->vd->name);
    return -1;
  }
  *attach = args;
  return 0;
}

/* Create every disk's target image and attach those the store wrote, all
 * in one round trip (QMP_BATCH_MAX per round trip). */
static int
targets_create (eng_run *r)
{
  json_object **attach = qb_calloc (r->n, sizeof *attach);
  bool *added = qb_calloc (r->n, sizeof *added);
  int rc = 0;
  for (size_t i = 0; i < r->n && rc == 0; i++)
    rc = target_create (r, &r->d[i], &attach[i]);
  size_t failed = 0;
  if (rc == 0) {
    rc = target_attach_all (r->q, attach, r->n, added, &failed);
    for (size_t i = 0; i < r->n; i++)
      if (added[i])
        r->d[i].node_added = true;
    if (rc < 0)
      qb_error_prefix ("attaching the target image of disk %s", r->d[failed].vd->name);
  }
  for (size_t i = 0; i < r->n; i++)
    json_object_put (attach[i]);
  free (attach);
  free (added);
  return rc;
}

/* Flush DISK's target through blockdev-reopen (QEMU flushes a node before
 * reopening it), so the file holds every cluster and table on disk. */
static int
target_flush (eng_run *r, eng_disk *d)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "driver", json_object_new_string ("qcow2"));
  json_object_object_add (o, "node-name", json_object_new_string (d->tnode));
  json_object_object_add (o, "file", json_object_new_string (d->fnode));
  if (r->level == BACKUP_INC)
    json_object_object_add (o, "backing", NULL);   /* as attached: none */
  json_object *opts = json_object_new_array ();
  json_object_array_add (opts, o);
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "options", opts);
  if (qmp_run (r->q, "blockdev-reopen", args, QMP_COMMAND_TIMEOUT_MS) < 0) {
    qb_error_prefix ("flushing the target of disk %s", d->vd->name);
    return -1;
  }
  return 0;
}

/* Run the one transaction over every disk. */
static int
transaction (eng_run *r)
{
  json_object *actions = json_object_new_array ();
  for (size_t i = 0; i < r->n; i++) {
    eng_disk *d = &r->d[i];
    if (r->level != BACKUP_COPY) {
      json_object *a = json_object_new_object ();
      bool persist = r->level == BACKUP_FULL && strcmp (d->vd->format, "qcow2") == 0;
      json_object_object_add (a, "node", json_object_new_string (d->vd->node));
      json_object_object_add (a, "name", json_object_new_string (r->level == BACKUP_FULL
                                                                   ? d->bitmap : d->next));
      json_object_object_add (a, "persistent", json_object_new_boolean (persist));
      json_object *act = json_object_new_object ();
      json_object_object_add (act, "type", json_object_new_string ("block-dirty-bitmap-add"));
      json_object_object_add (act, "data", a);
      json_object_array_add (actions, act);
    }
    json_object *b = json_object_new_object ();
    json_object_object_add (b, "job-id", json_object_new_string (d->job));
    fleece_txn_actions (r, d, actions);
    json_object_object_add (b, "device", json_object_new_string (fleece_source (r, d)));
    json_object_object_add (b, "target", json_object_new_string (d->tnode));
    json_object_object_add (b, "sync", json_object_new_string (r->level == BACKUP_INC
                                                                  ? "bitmap" : "full"));
    if (r->level == BACKUP_INC) {
      json_object_object_add (b, "bitmap", json_object_new_string (fleece_bitmap (r, d)));
      json_object_object_add (b, "bitmap-mode", json_object_new_string ("never"));
    }
    json_object_object_add (b, "auto-finalize", json_object_new_boolean (false));
    json_object_object_add (b, "auto-dismiss", json_object_new_boolean (false));
    if (r->opts->speed)
      json_object_object_add (b, "speed", json_object_new_int64 ((int64_t) r->opts->speed));
    if (r->opts->compress)
      json_object_object_add (b, "compress", json_object_new_boolean (true));
    json_object *act = json_object_new_object ();
    json_object_object_add (act, "type", json_object_new_string ("blockdev-backup"));
    json_object_object_add (act, "data", b);
    json_object_array_add (actions, act);
  }
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "actions", actions);
  /* QEMU refuses grouped completion with block-dirty-bitmap-add; full and
   * inc get the same all-or-nothing from auto-finalize=false: no job
   * finalizes until every job is pending, and any failure cancels all. */
  if (r->level == BACKUP_COPY) {
    json_object *props = json_object_new_object ();
    json_object_object_add (props, "completion-mode", json_object_new_string ("grouped"));
    json_object_object_add (args, "properties", props);
  }
  eng_report (r, "copying");
  int rc = qmp_run (r->q, "transaction", args, QMP_COMMAND_TIMEOUT_MS);
  if (rc == 0) {
    r->jobs_started = true;
    r->bitmaps_added = r->level != BACKUP_COPY;
  }
  else if (qb_error_code () == QB_ETIMEDOUT || qb_error_code () == QB_ECANCELED) {
    /* The transaction may have run after all: clean up as if it did. */
    r->jobs_started = true;
    r->bitmaps_added = r->level != BACKUP_COPY;
  }
  return rc;
}

/* The record's extra keys. */
static json_object *
record_extra (eng_run *r)
{
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "level", json_object_new_string (backup_level_name (r->level)));
  json_object_object_add (o, "requested", json_object_new_string (backup_level_name (r->opts->level)));
  json_object_object_add (o, "reason", json_object_new_string (r->res ? r->res->reason : ""));
  json_object_object_add (o, "quiesced", json_object_new_boolean (r->res && r->res->quiesced));
  json_object_object_add (o, "quiesce_note", json_object_new_string (r->res ? r->res->quiesce_note : ""));
  json_object_object_add (o, "quiesced_filesystems",
                          json_object_new_int (r->res && r->res->quiesced ? r->res->frozen_fs : 0));
  json_object_object_add (o, "bytes_copied", json_object_new_int64 ((int64_t) r->total));
  json_object_object_add (o, "seconds",
                          json_object_new_double ((double) (qb_mono_ms () - r->start_ms) / 1000.0));
  json_object_object_add (o, "compressed", json_object_new_boolean (r->opts->compress));
  json_object *q = json_object_new_object ();
  for (size_t i = 0; i < r->n; i++) {
    eng_disk *d = &r->d[i];
    json_object *jd = json_object_new_object ();
    json_object_object_add (jd, "device", json_object_new_string (d->vd->device));
    json_object_object_add (jd, "node", json_object_new_string (d->vd->node));
    json_object_object_add (jd, "format", json_object_new_string (d->vd->format));
    json_object_object_add (jd, "file", json_object_new_string (d->vd->file));
    json_object_object_add (jd, "bitmap", d->bitmap ? json_object_new_string (d->bitmap) : NULL);
    json_object_object_add (q, d->vd->name, jd);
  }
  json_object_object_add (o, "qemu", q);
  return o;
}

/* Undo everything not committed: jobs, nodes, new bitmaps, temps.  Keeps
 * the current error. */
static void
rollback (eng_run *r)
{
  qb_err code = qb_error_code ();
  char *msg = qb_strdup (qb_error_msg ());
  if (r->q)
    qmp_set_cancel (r->q, NULL);
  fleece_resume (r);
  eng_thaw (r);
  if (r->q) {
    if (r->jobs_started) {
      char **ids = qb_calloc (r->n ? r->n : 1, sizeof *ids);
      for (size_t i = 0; i < r->n; i++)
        ids[i] = r->d[i].job;
      jobs_abort (r->q, ids, r->n);
      free (ids);
    }
    fleece_remove (r);
    for (size_t i = 0; i < r->n; i++)
      if (r->d[i].node_added)
        jobs_node_del (r->q, r->d[i].tnode);
    if (r->bitmaps_added)
      for (size_t i = 0; i < r->n; i++)
        bitmap_remove (r->q, r->d[i].vd->node,
                       r->level == BACKUP_FULL ? r->d[i].bitmap : r->d[i].next);
  }
  store_txn_free (r->txn);
  r->txn = NULL;
  if (r->thaw_failed && !strstr (msg, r->thaw_warning)) {
    char *m = qb_asprintf ("%s; %s", msg, r->thaw_warning);
    free (msg);
    msg = m;
  }
  qb_error_set (code, "%s", msg);
  free (msg);
}

/* After a committed FULL or INC: remove this disk's bitmaps of this
 * target's other chains (another target's bitmaps are left alone: that
 * store's chains go on with them). */
static void
drop_old_bitmaps (eng_run *r)
{
  if (r->level == BACKUP_COPY)
    return;
  for (size_t i = 0; i < r->n; i++) {
    const vm_disk *vd = r->d[i].vd;
    for (size_t k = 0; k < vd->nbitmaps; k++) {
      const char *bm = vd->bitmaps[k].name;
      bitmap_owner o;
      if (bitmap_owner_parse (bm, &o) && !o.next && strcmp (bm, r->d[i].bitmap) != 0
          && bitmap_is_ours (&o, r->target, r->scan, vd->name))
        bitmap_remove (r->q, vd->node, bm);
    }
  }
}

/* Remove this target's "next" bitmaps a crashed run left behind (it died
 * after its commit, before merging them): the chain's bitmap still holds
 * every change since the previous point, so they carry nothing the next
 * INC needs.  Another target's belong to its own (maybe running) backup. */
static void
drop_stale_next_bitmaps (eng_run *r)
{
  for (size_t i = 0; i < r->nall; i++)
    for (size_t k = 0; k < r->all[i].nbitmaps; k++) {
      bitmap_owner o;
      if (bitmap_owner_parse (r->all[i].bitmaps[k].name, &o) && o.next
          && bitmap_is_ours (&o, r->target, r->scan, r->all[i].name))
        bitmap_remove (r->q, r->all[i].node, r->all[i].bitmaps[k].name);
    }
}

/* True when LIST (a query-jobs or query-named-block-nodes reply) may hold
 * something of ours: an entry whose KEY starts with "qmpbackup-" (jobs,
 * target and fleecing nodes all do), or a reply that is no list. */
static bool
holds_ours (json_object *list, const char *key)
{
  if (!json_object_is_type (list, json_type_array))
    return true;
  size_t n = json_object_array_length (list);
  for (size_t i = 0; i < n; i++)
    if (strncmp (qmp_str (json_object_array_get_idx (list, i), key), ENGINE_JOB_PREFIX,
                 strlen (ENGINE_JOB_PREFIX)) == 0)
      return true;
  return false;
}

/* Clean this target's leftovers of a crashed run (jobs, target and
 * fleecing nodes), refuse when another store's backup job is in QEMU, and
 * read the disks into r->all.  One round trip when QEMU holds no job or
 * node of ours, the usual case; else the full cleanup first. */
static int
discover (eng_run *r)
{
  const char *cmds[] = { "query-jobs", "query-named-block-nodes", "query-block" };
  json_object *args[] = { NULL, disks_nodes_args (), NULL };
  json_object *res[3];
  int rc = qmp_execute_batch (r->q, cmds, args, 3, res, QMP_COMMAND_TIMEOUT_MS);
  bool clean = rc == 0 && !holds_ours (res[0], "id") && !holds_ours (res[1], "node-name");
  if (clean)
    rc = disks_parse (res[2], res[1], &r->all, &r->nall);
  for (size_t i = 0; i < 3; i++)
    json_object_put (res[i]);
  if (rc < 0 || clean)
    return rc;
  if (jobs_cleanup (r->q, r->target, false, NULL, NULL) < 0
      || fleece_cleanup (r->q, r->target, NULL, NULL) < 0)
    return -1;
  /* Another store's backup job: QEMU runs one backup job per disk at a
   * time, and it is never canceled from here (it may be running through
   * another QMP socket of this VM). */
  char other[128];
  int busy = jobs_find_ours (r->q, other, sizeof other);
  if (busy < 0)
    return -1;
  if (busy)
    return qb_error_set (QB_EBUSY, "VM %s has the backup job %s of another store: a backup "
                         "into that store runs, or one died and left it; wait for it, or, "
                         "when none runs, remove it with `qmpbackup --socket SOCKET cleanup`",
                         r->vm, other);
  return disks_query (r->q, &r->all, &r->nall);
}

/* True when this INC needs no job: every disk's chain bitmap was empty
 * when the disks were read (one query-block, one instant for all disks), so
 * the disks then equalled their previous points and the empty targets,
 * whose headers name those points, are this point; writes since then stay
 * in the chain bitmaps for the next INC (no bitmap is touched).  Only when
 * nothing must come before the point: no freeze, no --pause, no fleecing. */
static bool
nothing_changed (const eng_run *r, const char *qga_path)
{
  const backup_opts *o = r->opts;
  if (r->level != BACKUP_INC || o->pause || o->quiesce == QUIESCE_ON
      || (o->quiesce == QUIESCE_DEFAULT && qga_path)
      || (o->fleece && *o->fleece && strcmp (o->fleece, "off") != 0))
    return false;
  for (size_t i = 0; i < r->n; i++) {
    const eng_disk *d = &r->d[i];
    const vm_bitmap *b = d->bitmap ? disks_find_bitmap (d->vd, d->bitmap) : NULL;
    if (!b || b->count != 0 || !b->recording || b->busy || b->inconsistent)
      return false;
  }
  return true;
}

/* Commit an INC of unchanged disks (nothing_changed): no job ran. */
static int
commit_unchanged (eng_run *r)
{
  if (r->opts->cancel && atomic_load (r->opts->cancel))
    return qb_error_set (QB_ECANCELED, "the backup was canceled");
  eng_report (r, "committing");
  json_object *extra = record_extra (r);
  int rc = store_txn_commit (r->txn, extra);
  json_object_put (extra);
  return rc;
}

/* The steps from connecting to the commit; -1 leaves cleanup to the caller. */
static int
run_backup (eng_run *r, const char *qmp_path, const char *qga_path)
{
  const backup_opts *o = r->opts;
  eng_report (r, "connecting");
  if (store_recover (r->st, r->vm) < 0 && qb_error_code () != QB_ENOENT)
    return -1;
  if (store_target_id (r->st, r->vm, true, r->target, sizeof r->target) < 0)
    return -1;
  r->q = qmp_connect (qmp_path, QMP_CONNECT_TIMEOUT_MS);
  if (!r->q)
    return -1;
  qmp_set_cancel (r->q, o->cancel);
  r->discovered_us = qb_now_us ();
  if (discover (r) < 0)
    return -1;
  bool *inc = qb_calloc (r->nall ? r->nall : 1, sizeof *inc);
  bool *exc = qb_calloc (r->nall ? r->nall : 1, sizeof *exc);
  int picked = pick_disks (r, o->include, "--include", inc);
  if (picked == 0)
    picked = pick_disks (r, o->exclude, "--exclude", exc);
  r->d = qb_calloc (r->nall ? r->nall : 1, sizeof *r->d);
  for (size_t i = 0; picked == 0 && i < r->nall; i++)
    if ((!o->include || inc[i]) && !exc[i])
      r->d[r->n++].vd = &r->all[i];
  free (inc);
  free (exc);
  if (picked < 0)
    return -1;
  if (r->n == 0)
    return qb_error_set (QB_EINVAL, "VM %s has no disk to back up%s", r->vm,
                         r->nall ? " (all excluded)" : " (no writable disk with media)");
  for (size_t i = 0; i < r->n; i++)
    if (r->d[i].vd->size == 0)
      return qb_error_set (QB_EQMP, "QEMU reports no size for disk %s", r->d[i].vd->name);
  r->scan = store_scan_vm (r->st, r->vm);
  if (!r->scan && qb_error_code () != QB_ENOENT)
    return -1;
  drop_stale_next_bitmaps (r);
  int64_t now = qb_now_us ();
  char when[32];
  qb_format_utc (now, when, sizeof when);
  snprintf (r->month, sizeof r->month, "%.7s", when);
  if (decide_level (r) < 0)
    return -1;
  r->unchanged = nothing_changed (r, qga_path);
  /* An unchanged point is the disks as they were read: it takes the time
     from before that read (a write after it is in the next INC). */
  if (r->unchanged && r->discovered_us < now) {
    char then[32];
    qb_format_utc (r->discovered_us, then, sizeof then);
    if (strncmp (then, when, 7) == 0)         /* the same month folder */
      now = r->discovered_us;
  }
  r->txn = store_txn_begin (r->st, r->vm, now, o->monthly);
  if (!r->txn)
    return -1;
  if (targets_create (r) < 0)
    return -1;
  if (r->unchanged)
    return commit_unchanged (r);
  if (fleece_prepare (r) < 0)
    return -1;
  if (eng_pause (r) < 0)
    return -1;
  /* A paused guest cannot answer its agent: --pause takes no freeze. */
  if (o->pause && qga_path && o->quiesce == QUIESCE_DEFAULT)
    eng_quiesce_note (r, "not quiesced: the VM is paused for the backup instead (--pause)");
  if (eng_quiesce (r, o->pause ? NULL : qga_path) < 0)
    return -1;
  if (fleece_insert (r) < 0)
    return -1;
  int rc = transaction (r);
  fleece_resume (r);
  eng_thaw (r);
  if (rc < 0) {
    qb_error_prefix ("starting the backup transaction");
    return -1;
  }
  char **ids = qb_calloc (r->n, sizeof *ids);
  for (size_t i = 0; i < r->n; i++)
    ids[i] = r->d[i].job;
  rc = jobs_await (r->q, ids, r->n, "pending", 0, true, tick, r, NULL);
  if (rc < 0)
    fleece_explain (r);
  if (rc == 0)
    rc = fleece_repair (r, ids);
  if (rc == 0) {
    eng_report (r, "committing");
    for (size_t i = 0; i < r->n && rc == 0; i++)
      rc = target_flush (r, &r->d[i]);
  }
  if (rc == 0 && o->cancel && atomic_load (o->cancel))
    rc = qb_error_set (QB_ECANCELED, "the backup was canceled");
  if (rc == 0)
    rc = jobs_finalize (r->q, ids, r->n);
  free (ids);
  if (rc < 0)
    return -1;
  eng_resume (r);   /* the jobs are done: the VM may run again */
  r->jobs_started = false;
  if (fleece_remove (r) < 0) {
    if (r->res)
      snprintf (r->res->fleece_note, sizeof r->res->fleece_note,
                "WARNING: %s (the next backup puts it back)", qb_error_msg ());
    qb_error_clear ();
  }
  for (size_t i = 0; i < r->n; i++) {
    if (jobs_node_del (r->q, r->d[i].tnode) < 0) {
      qb_error_prefix ("detaching the target of disk %s", r->d[i].vd->name);
      return -1;
    }
    r->d[i].node_added = false;
  }
  json_object *extra = record_extra (r);
  rc = store_txn_commit (r->txn, extra);
  json_object_put (extra);
  return rc;
}

/* After the commit: reset the chain bitmaps of an INC to the writes since
 * its point, drop bitmaps of older chains.  Errors here leave bitmaps with
 * more bits than needed, never fewer: the restore point stands. */
static void
finish (eng_run *r)
{
  qmp_set_cancel (r->q, NULL);
  if (r->level == BACKUP_INC && !r->unchanged) {
    json_object *actions = json_object_new_array ();
    for (size_t i = 0; i < r->n; i++) {
      eng_disk *d = &r->d[i];
      json_object *c = json_object_new_object ();
      json_object_object_add (c, "node", json_object_new_string (d->vd->node));
      json_object_object_add (c, "name", json_object_new_string (d->bitmap));
      json_object *a = json_object_new_object ();
      json_object_object_add (a, "type", json_object_new_string ("block-dirty-bitmap-clear"));
      json_object_object_add (a, "data", c);
      json_object_array_add (actions, a);
      json_object *m = json_object_new_object ();
      json_object_object_add (m, "node", json_object_new_string (d->vd->node));
      json_object_object_add (m, "target", json_object_new_string (d->bitmap));
      json_object *srcs = json_object_new_array ();
      json_object_array_add (srcs, json_object_new_string (d->next));
      json_object_object_add (m, "bitmaps", srcs);
      a = json_object_new_object ();
      json_object_object_add (a, "type", json_object_new_string ("block-dirty-bitmap-merge"));
      json_object_object_add (a, "data", m);
      json_object_array_add (actions, a);
    }
    json_object *args = json_object_new_object ();
    json_object_object_add (args, "actions", actions);
    /* The transaction and the removals of the "next" bitmaps in one round
     * trip.  QEMU runs the removals also when the transaction failed: the
     * chain's bitmap then still holds every change the "next" one does. */
    const char *cmds[QMP_BATCH_MAX];
    json_object *argv[QMP_BATCH_MAX], *res[QMP_BATCH_MAX];
    size_t nb = 0;
    cmds[nb] = "transaction";
    argv[nb++] = args;
    for (size_t i = 0; i < r->n; i++) {
      if (nb == QMP_BATCH_MAX) {
        qmp_execute_batch (r->q, cmds, argv, nb, res, QMP_COMMAND_TIMEOUT_MS);
        for (size_t k = 0; k < nb; k++)
          json_object_put (res[k]);
        nb = 0;
      }
      cmds[nb] = "block-dirty-bitmap-remove";
      argv[nb] = json_object_new_object ();
      json_object_object_add (argv[nb], "node", json_object_new_string (r->d[i].vd->node));
      json_object_object_add (argv[nb++], "name", json_object_new_string (r->d[i].next));
    }
    qmp_execute_batch (r->q, cmds, argv, nb, res, QMP_COMMAND_TIMEOUT_MS);
    for (size_t k = 0; k < nb; k++)
      json_object_put (res[k]);
  }
  drop_old_bitmaps (r);
  qb_error_clear ();
}

/* Take one backup of VM into ST. */
int
engine_backup (store *st, const char *vm, const char *qmp_path, const char *qga_path,
               const backup_opts *opts, backup_result *res)
{
  if (res)
    memset (res, 0, sizeof *res);
  if (!st || !vm || !qmp_path || !opts)
    return qb_error_set (QB_EINVAL, "engine_backup: missing argument");
  if (opts->pause && opts->quiesce == QUIESCE_ON)
    return qb_error_set (QB_EINVAL, "--pause and --quiesce exclude each other: the guest "
                         "agent cannot thaw a paused guest; take one of them");
  eng_run r = { .st = st, .vm = vm, .opts = opts, .res = res, .start_ms = qb_mono_ms () };
  r.level = opts->level == BACKUP_AUTO ? BACKUP_FULL : opts->level;
  store_lock *lock = store_lock_vm (st, vm, opts->lock_timeout_ms);
  if (!lock)
    return -1;
  int rc = run_backup (&r, qmp_path, qga_path);
  if (rc < 0)
    rollback (&r);
  else {
    if (res) {
      snprintf (res->id, sizeof res->id, "%s", store_txn_id (r.txn));
      res->level = r.level;
      res->ndisks = r.n;
      res->bytes_copied = r.total;
      for (size_t i = 0; i < r.n; i++) {
        struct stat sb;
        const char *fin = store_txn_final_path (r.txn, r.d[i].vd->name);
        if (fin && stat (fin, &sb) == 0)
          res->bytes_stored += (uint64_t) sb.st_blocks * 512;
      }
    }
    finish (&r);
    store_txn_free (r.txn);
    if (res)
      res->seconds = (double) (qb_mono_ms () - r.start_ms) / 1000.0;
  }
  const char *unpaused = eng_resume (&r);   /* every path resumes a VM --pause stopped */
  qb_err code = qb_error_code ();
  char *msg = rc < 0 ? qb_strdup (qb_error_msg ()) : NULL;
  if (msg && unpaused) {
    char *m = qb_asprintf ("%s; %s", msg, unpaused);
    free (msg);
    msg = m;
  }
  eng_thaw (&r);            /* no-op: every path has thawed already */
  thawguard_release (r.guard, !r.thaw_failed);
  qmp_close (r.q);
  for (size_t i = 0; i < r.n; i++) {
    free (r.d[i].reason);
    free (r.d[i].chain);
    free (r.d[i].bitmap);
    free (r.d[i].next);
  }
  free (r.d);
  disks_free (r.all, r.nall);
  store_vm_free (r.scan);
  store_unlock (lock);
  if (rc < 0) {
    qb_error_set (code, "%s", msg);
    free (msg);
  }
  return rc;
}

/* ---- info and cleanup ---- */

/* The JSON description of bitmap B of disk D; TARGET ("" when unknown) and
 * SCAN (may be NULL) say which bitmaps are this store folder's; WITH_STORE
 * adds "this_target". */
static json_object *
info_bitmap (const vm_disk *d, const vm_bitmap *b, const char *target, const store_vm *scan,
             bool with_store)
{
  json_object *jb = json_object_new_object ();
  json_object_object_add (jb, "name", json_object_new_string (b->name));
  json_object_object_add (jb, "granularity", json_object_new_int64 ((int64_t) b->granularity));
  json_object_object_add (jb, "persistent", json_object_new_boolean (b->persistent));
  json_object_object_add (jb, "recording", json_object_new_boolean (b->recording));
  json_object_object_add (jb, "busy", json_object_new_boolean (b->busy));
  json_object_object_add (jb, "inconsistent", json_object_new_boolean (b->inconsistent));
  bitmap_owner o;
  bool ours = bitmap_owner_parse (b->name, &o);
  json_object_object_add (jb, "qmpbackup", json_object_new_boolean (ours));
  if (!ours)
    return jb;
  bool mine = with_store && bitmap_is_ours (&o, target, scan, d->name);
  /* An older version's name has no target in it: it is this folder's when
   * one of its chains has that id, else it belongs to a store unknown here. */
  json_object_object_add (jb, "target", !o.legacy ? json_object_new_string (o.target)
                          : mine && target[0] ? json_object_new_string (target) : NULL);
  json_object_object_add (jb, "chain", json_object_new_string (o.chain));
  json_object_object_add (jb, "role", json_object_new_string (o.next ? "next" : "chain"));
  if (o.legacy)
    json_object_object_add (jb, "legacy_name", json_object_new_boolean (true));
  if (with_store)
    json_object_object_add (jb, "this_target", json_object_new_boolean (mine));
  return jb;
}

/* Describe VM's disks as JSON: {"vm": VM, "target_id": ID, "disks": [...]}. */
json_object *
engine_info (store *st, const char *vm, const char *qmp_path)
{
  qmp *q = qmp_connect (qmp_path, QMP_CONNECT_TIMEOUT_MS);
  if (!q)
    return NULL;
  vm_disk *disks;
  size_t n;
  int rc = disks_query (q, &disks, &n);
  qmp_close (q);
  if (rc < 0)
    return NULL;
  store_vm *scan = NULL;
  char target[STORE_TARGET_ID_LEN + 1] = "";
  bool with_store = st && vm;
  if (with_store) {
    scan = store_scan_vm (st, vm);
    if (!scan && qb_error_code () != QB_ENOENT) {
      disks_free (disks, n);
      return NULL;
    }
    /* Read only: info never creates the id (the first backup does). */
    if (store_target_id (st, vm, false, target, sizeof target) < 0
        && qb_error_code () != QB_ENOENT) {
      store_vm_free (scan);
      disks_free (disks, n);
      return NULL;
    }
    qb_error_clear ();
  }
  json_object *out = json_object_new_object ();
  if (vm)
    json_object_object_add (out, "vm", json_object_new_string (vm));
  if (with_store)
    json_object_object_add (out, "target_id", target[0] ? json_object_new_string (target) : NULL);
  json_object *arr = json_object_new_array ();
  for (size_t i = 0; i < n; i++) {
    const vm_disk *d = &disks[i];
    json_object *jd = json_object_new_object ();
    json_object_object_add (jd, "name", json_object_new_string (d->name));
    json_object *names = json_object_new_array ();
    for (size_t k = 0; k < d->nnames; k++)
      json_object_array_add (names, json_object_new_string (d->names[k]));
    json_object_object_add (jd, "names", names);
    json_object_object_add (jd, "device", json_object_new_string (d->device));
    json_object_object_add (jd, "node", json_object_new_string (d->node));
    json_object_object_add (jd, "format", json_object_new_string (d->format));
    json_object_object_add (jd, "file", json_object_new_string (d->file));
    json_object_object_add (jd, "size", json_object_new_int64 ((int64_t) d->size));
    json_object *bms = json_object_new_array ();
    const char *ours = NULL;
    for (size_t k = 0; k < d->nbitmaps; k++) {
      const vm_bitmap *b = &d->bitmaps[k];
      json_object_array_add (bms, info_bitmap (d, b, target, scan, with_store));
      bitmap_owner o;
      if (bitmap_owner_parse (b->name, &o) && !o.next
          && (!with_store || bitmap_is_ours (&o, target, scan, d->name)))
        ours = b->name;
    }
    json_object_object_add (jd, "bitmaps", bms);
    if (with_store) {
      const store_disk *sd = scan ? store_vm_disk (scan, d->name) : NULL;
      const store_layer *prev;
      const store_chain *c;
      char *reason, *bm;
      const char *health = disk_health (target, d, sd, NULL, &prev, &reason, &c, &bm);
      json_object_object_add (jd, "health", json_object_new_string (health));
      json_object_object_add (jd, "reason", reason ? json_object_new_string (reason) : NULL);
      if (c && c->chain_id) {
        json_object_object_add (jd, "bitmap", bm ? json_object_new_string (bm) : NULL);
        json_object_object_add (jd, "chain", json_object_new_string (c->chain_id));
      }
      else
        json_object_object_add (jd, "bitmap", ours ? json_object_new_string (ours) : NULL);
      json_object_object_add (jd, "chain_length", json_object_new_int ((int) (c ? c->n : 0)));
      if (c && c->n)
        json_object_object_add (jd, "last", json_object_new_string (c->layers[c->n - 1].display));
      free (reason);
      free (bm);
    }
    else
      json_object_object_add (jd, "bitmap", ours ? json_object_new_string (ours) : NULL);
    json_object_array_add (arr, jd);
  }
  json_object_object_add (out, "disks", arr);
  store_vm_free (scan);
  disks_free (disks, n);
  return out;
}

/* Cancel leftover jobs, delete leftover nodes, optionally remove bitmaps. */
int
engine_cleanup (const char *qmp_path, bool remove_bitmaps)
{
  return engine_cleanup_report (qmp_path, remove_bitmaps, NULL, NULL);
}

/* engine_cleanup, telling REMOVED about each thing removed. */
int
engine_cleanup_report (const char *qmp_path, bool remove_bitmaps, engine_removed_fn removed,
                       void *opaque)
{
  qmp *q = qmp_connect (qmp_path, QMP_CONNECT_TIMEOUT_MS);
  if (!q)
    return -1;
  /* Jobs first (they hold the fleecing nodes), then the fleecing (the
   * devices back on their disks' nodes, where the bitmaps are), then bitmaps. */
  int rc = jobs_cleanup (q, NULL, false, removed, opaque);
  int fl = rc < 0 ? -1 : fleece_cleanup (q, NULL, removed, opaque);
  int bm = fl < 0 || !remove_bitmaps ? 0 : jobs_cleanup (q, NULL, true, removed, opaque);
  rc = rc < 0 || fl < 0 || bm < 0 ? -1 : rc + fl + bm;
  qmp_close (q);
  return rc;
}
