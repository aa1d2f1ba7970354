/* qmpbackupfs — prune: apply a retention policy to one VM's restore points
 * (the policy from retention.c, the removal from rewrite.c). */
#include "store-int.h"
#include "retention.h"
#include "common/error.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
cmp_point (const void *a, const void *b)
{
  const store_prune_point *x = a, *y = b;
  return strcmp (x->id, y->id);
}

/* Append one entry for layer L (an entry per layer: points that span several
 * disks are merged after sorting, see points_merge); its index. */
static size_t
point_add (store_prune_point **pts, size_t *n, size_t *cap, const store_layer *l)
{
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 64;
    *pts = qb_realloc (*pts, *cap * sizeof **pts);
  }
  store_prune_point *p = &(*pts)[(*n)++];
  memset (p, 0, sizeof *p);
  snprintf (p->id, sizeof p->id, "%s", l->id);
  snprintf (p->display, sizeof p->display, "%s", l->display);
  p->time_us = l->time_us;
  return *n - 1;
}

/* Sort PTS[0..*N-1] by id and fold entries of the same point into one
 * (bytes summed, damaged and pinned if any of its layers is). */
static void
points_merge (store_prune_point *pts, size_t *n)
{
  if (*n < 2)
    return;
  qsort (pts, *n, sizeof *pts, cmp_point);
  size_t w = 0;
  for (size_t i = 1; i < *n; i++) {
    if (strcmp (pts[w].id, pts[i].id) == 0) {
      pts[w].bytes += pts[i].bytes;
      pts[w].damaged |= pts[i].damaged;
      pts[w].pinned |= pts[i].pinned;
    }
    else
      pts[++w] = pts[i];
  }
  *n = w + 1;
}

int
store_prune (store *st, const char *vm, const store_retention *policy,
             const store_remove_opts *o, store_prune_point **out, size_t *nout,
             store_remove_result *res)
{
  *out = NULL;
  *nout = 0;
  if (store_retention_empty (policy))
    return qb_error_set (QB_EINVAL, "no retention option given: prune needs at least one "
                         "(it never removes everything by default)");
  if (!(o && o->dry_run) && store_rewrite_resume (st, vm) < 0)
    return -1;
  store_vm *v = store_scan_vm (st, vm);
  if (!v)
    return -1;
  store_prune_point *pts = NULL;
  size_t n = 0, cap = 0;
  for (size_t d = 0; d < v->ndisks; d++) {
    const store_disk *sd = &v->disks[d];
    for (size_t c = 0; c < sd->nchains; c++) {
      bool chain_damaged = false;
      for (size_t i = 0; i < sd->chains[c].n; i++)
        chain_damaged |= sd->chains[c].layers[i].damage && !sd->chains[c].layers[i].busy;
      for (size_t i = 0; i < sd->chains[c].n; i++) {
        const store_layer *l = &sd->chains[c].layers[i];
        if (l->removing)
          continue;
        size_t k = point_add (&pts, &n, &cap, l);
        pts[k].bytes += l->file_size;
        if (chain_damaged)
          pts[k].damaged = true;
        if (c + 1 == sd->nchains && i + 1 == sd->chains[c].n)
          pts[k].pinned = true;       /* the disk's newest layer */
      }
    }
  }
  points_merge (pts, &n);
  /* The policy judges the healthy points only: a damaged point must never
     take the slot of a healthy one (it is kept anyway, below). */
  int64_t *times = qb_calloc (n ? n : 1, sizeof *times);
  uint8_t *keep = qb_calloc (n ? n : 1, 1);
  const char **why = qb_calloc (n ? n : 1, sizeof *why);
  size_t *map = qb_calloc (n ? n : 1, sizeof *map), nh = 0;
  for (size_t i = 0; i < n; i++)
    if (!pts[i].damaged) {
      map[nh] = i;
      times[nh++] = pts[i].time_us;
    }
  int ret = -1;
  if (nh && store_retention_select (times, nh, policy, keep, why) < 0)
    goto out;
  for (size_t h = 0; h < nh; h++) {
    pts[map[h]].keep = keep[h] != 0;
    pts[map[h]].why = why[h];
  }
  char **ids = qb_calloc (n ? n : 1, sizeof *ids);
  size_t nids = 0;
  for (size_t i = 0; i < n; i++) {
    if (!pts[i].keep && pts[i].damaged) {
      /* never rewritten: a damaged chain is left as it is for an admin */
      pts[i].keep = true;
      pts[i].why = "in a damaged chain: left as it is";
    }
    if (!pts[i].keep && pts[i].pinned) {
      pts[i].keep = true;
      pts[i].why = "newest of a disk";
    }
    if (!pts[i].keep)
      ids[nids++] = pts[i].id;
  }
  ret = 0;
  if (nids)
    ret = store_points_remove (st, vm, ids, nids, NULL, o, res);
  else if (res)
    memset (res, 0, sizeof *res);
  free (ids);
 out:
  free (times);
  free (keep);
  free (why);
  free (map);
  store_vm_free (v);
  if (ret < 0) {
    free (pts);
    return -1;
  }
  *out = pts;
  *nout = n;
  return 0;
}
