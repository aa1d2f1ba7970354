/* qmpbackupfs — `qmprebase prune` (see prune.h). */
#include "tools/prune.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Split the VM folder DIR into its store root and VM name (malloc'd). */
static int
split_vm_dir (const char *dir, char **root, char **vm)
{
  char real[PATH_MAX];
  if (!realpath (dir, real))
    return qb_error_set_errno (errno, "--dir %s", dir);
  char *slash = strrchr (real, '/');
  if (!slash || !qb_name_is_safe (slash + 1))
    return qb_error_set (QB_EINVAL, "--dir %s: expected a VM folder STORE/<vm>", dir);
  *vm = qb_strdup (slash + 1);
  *slash = '\0';
  *root = qb_strdup (real[0] ? real : "/");
  return 0;
}

/* Print the decisions and the result as text. */
static void
print_text (const store_prune_point *p, size_t n, const store_remove_result *res, bool dry_run)
{
  size_t gone = 0;
  uint64_t gone_bytes = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i].keep)
      printf ("keep   %s (%s)\n", p[i].display, p[i].why ? p[i].why : "kept");
    else {
      printf ("%s %s\n", dry_run ? "remove" : "removed", p[i].display);
      gone++;
      gone_bytes += p[i].bytes;
    }
  }
  char a[32], b[32];
  if (!gone) {
    printf ("%zu restore point%s, all kept: nothing to do\n", n, n == 1 ? "" : "s");
    return;
  }
  if (dry_run) {
    qb_format_bytes (gone_bytes, a, sizeof a);
    printf ("would remove %zu of %zu restore points (%zu chain rewrite steps); their layers "
            "hold %s, less what moves into the points kept\n", gone, n, res->steps, a);
    return;
  }
  uint64_t freed = res->bytes_before > res->bytes_after ? res->bytes_before - res->bytes_after : 0;
  qb_format_bytes (freed, a, sizeof a);
  qb_format_bytes (res->bytes_after, b, sizeof b);
  printf ("removed %zu of %zu restore points: %s freed (the chains touched now hold %s)\n",
          gone, n, a, b);
}

/* Print the decisions and the result as one JSON object. */
static void
print_json (const store_prune_point *p, size_t n, const store_remove_result *res, bool dry_run)
{
  json_object *o = json_object_new_object (), *arr = json_object_new_array ();
  for (size_t i = 0; i < n; i++) {
    json_object *e = json_object_new_object ();
    json_object_object_add (e, "id", json_object_new_string (p[i].id));
    json_object_object_add (e, "name", json_object_new_string (p[i].display));
    json_object_object_add (e, "keep", json_object_new_boolean (p[i].keep));
    if (p[i].why)
      json_object_object_add (e, "rule", json_object_new_string (p[i].why));
    json_object_object_add (e, "bytes", json_object_new_int64 ((int64_t) p[i].bytes));
    json_object_array_add (arr, e);
  }
  json_object_object_add (o, "dry_run", json_object_new_boolean (dry_run));
  json_object_object_add (o, "points", arr);
  json_object_object_add (o, "steps", json_object_new_int64 ((int64_t) res->steps));
  json_object_object_add (o, "bytes_before", json_object_new_int64 ((int64_t) res->bytes_before));
  if (!dry_run)
    json_object_object_add (o, "bytes_after", json_object_new_int64 ((int64_t) res->bytes_after));
  printf ("%s\n", json_object_to_json_string_ext (o, JSON_C_TO_STRING_PRETTY
                                                  | JSON_C_TO_STRING_NOSLASHESCAPE));
  json_object_put (o);
}

int
prune_run (const char *dir, const store_retention *policy, bool dry_run, bool json)
{
  char *root = NULL, *vm = NULL;
  store *st = NULL;
  store_lock *lk = NULL;
  store_prune_point *pts = NULL;
  size_t n = 0;
  store_remove_result res = { 0 };
  int rc = 1;
  if (split_vm_dir (dir, &root, &vm) < 0 || !(st = store_open (root, false)))
    goto fail;
  if (!dry_run && !(lk = store_lock_vm (st, vm, 5000)))
    goto fail;
  store_remove_opts ro = { .dry_run = dry_run, .why = "prune" };
  if (store_prune (st, vm, policy, &ro, &pts, &n, &res) < 0)
    goto fail;
  if (json)
    print_json (pts, n, &res, dry_run);
  else
    print_text (pts, n, &res, dry_run);
  rc = 0;
  goto out;
 fail:
  fprintf (stderr, "qmprebase: prune: %s\n", qb_error_msg ());
 out:
  free (pts);
  store_unlock (lk);
  store_close (st);
  free (root);
  free (vm);
  return rc;
}

/* The id of the point called NAME in scan V (id, display name, ".img"
 * name), or NULL. */
static const char *
point_id (const store_vm *v, const char *name)
{
  size_t len = strlen (name);
  char *bare = len > 4 && strcmp (name + len - 4, ".img") == 0
    ? qb_asprintf ("%.*s", (int) (len - 4), name) : qb_strdup (name);
  const char *id = NULL;
  for (size_t d = 0; d < v->ndisks && !id; d++)
    for (size_t c = 0; c < v->disks[d].nchains && !id; c++)
      for (size_t i = 0; i < v->disks[d].chains[c].n && !id; i++) {
        const store_layer *l = &v->disks[d].chains[c].layers[i];
        if (strcmp (l->id, bare) == 0 || strcmp (l->display, bare) == 0)
          id = l->id;
      }
  free (bare);
  return id;
}

int
prune_remove_run (const char *dir, char *const *names, size_t n, bool dry_run)
{
  char *root = NULL, *vm = NULL;
  store *st = NULL;
  store_lock *lk = NULL;
  store_vm *v = NULL;
  char **ids = qb_calloc (n ? n : 1, sizeof *ids);
  int rc = 1;
  if (split_vm_dir (dir, &root, &vm) < 0 || !(st = store_open (root, false)))
    goto fail;
  if (!dry_run && (!(lk = store_lock_vm (st, vm, 5000)) || store_rewrite_resume (st, vm) < 0))
    goto fail;
  if (!(v = store_scan_vm (st, vm)))
    goto fail;
  for (size_t i = 0; i < n; i++) {
    const char *id = point_id (v, names[i]);
    if (!id) {
      qb_error_set (QB_ENOENT, "no restore point %s in %s", names[i], dir);
      goto fail;
    }
    ids[i] = qb_strdup (id);
  }
  store_remove_opts ro = { .dry_run = dry_run, .why = "remove" };
  store_remove_result res = { 0 };
  if (store_points_remove (st, vm, ids, n, NULL, &ro, &res) < 0)
    goto fail;
  char a[32];
  if (dry_run)
    printf ("would remove %zu restore point%s (%zu chain rewrite steps)\n", n,
            n == 1 ? "" : "s", res.steps);
  else {
    uint64_t freed = res.bytes_before > res.bytes_after ? res.bytes_before - res.bytes_after : 0;
    qb_format_bytes (freed, a, sizeof a);
    printf ("removed %zu restore point%s: %s freed\n", n, n == 1 ? "" : "s", a);
  }
  rc = 0;
  goto out;
 fail:
  fprintf (stderr, "qmprebase: remove: %s\n", qb_error_msg ());
 out:
  for (size_t i = 0; i < n; i++)
    free (ids[i]);
  free (ids);
  store_vm_free (v);
  store_unlock (lk);
  store_close (st);
  free (root);
  free (vm);
  return rc;
}
