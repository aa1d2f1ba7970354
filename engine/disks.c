/* qmpbackupfs — discovery of a VM's backup-able disks (see disks.h).
 *
 * query-block lists every drive with its device name, qdev path and the
 * inserted medium (format node, image, dirty bitmaps).  A disk is named by
 * its drive id when it has one (`-drive id=`), else by its device id taken
 * from the qdev path (`-device ...,id=`), else by a user-given node name;
 * an anonymous disk with an automatic node name ("#block123") has no stable
 * name and is skipped, because its name would change on every QEMU start.
 *
 * Besides that id a disk answers to every name a user knows it by (its
 * drive id, qdev id and path, user-given node names of its format and
 * protocol nodes, its image's path and basename), so --include/--exclude
 * accept what the Python qmpbackup accepted.  The protocol node is found
 * in query-named-block-nodes as the node on the same image file. */
#include "engine/disks.h"
#include "common/error.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The string member KEY of OBJ, or NULL. */
static const char *
get_str (json_object *obj, const char *key)
{
  json_object *v;
  if (!obj || !json_object_object_get_ex (obj, key, &v) || !json_object_is_type (v, json_type_string))
    return NULL;
  return json_object_get_string (v);
}

/* The boolean member KEY of OBJ, or false. */
static bool
get_bool (json_object *obj, const char *key)
{
  json_object *v;
  if (!obj || !json_object_object_get_ex (obj, key, &v))
    return false;
  return json_object_get_boolean (v);
}

/* The member KEY of OBJ, or NULL. */
static json_object *
get_obj (json_object *obj, const char *key)
{
  json_object *v;
  if (!obj || !json_object_object_get_ex (obj, key, &v))
    return NULL;
  return v;
}

/* The device id in a qdev path: "/machine/peripheral/ID/virtio-backend" →
 * "ID"; a path without '/' is the id itself; anonymous devices → NULL.
 * Returns a malloc'd string. */
static char *
qdev_id (const char *qdev)
{
  if (!qdev || !*qdev)
    return NULL;
  if (!strchr (qdev, '/'))
    return qb_strdup (qdev);
  static const char prefix[] = "/machine/peripheral/";
  if (strncmp (qdev, prefix, strlen (prefix)) != 0)
    return NULL;
  const char *id = qdev + strlen (prefix);
  const char *end = strchr (id, '/');
  size_t len = end ? (size_t) (end - id) : strlen (id);
  if (len == 0)
    return NULL;
  char *out = qb_calloc (1, len + 1);
  memcpy (out, id, len);
  return out;
}

/* Fill B's fields from the query-block bitmap object JB. */
static void
bitmap_parse (json_object *jb, vm_bitmap *b)
{
  b->name = qb_strdup (get_str (jb, "name"));
  json_object *g = get_obj (jb, "granularity");
  b->granularity = g ? (uint64_t) json_object_get_int64 (g) : 0;
  b->persistent = get_bool (jb, "persistent");
  b->recording = get_bool (jb, "recording");
  b->busy = get_bool (jb, "busy");
  b->inconsistent = get_bool (jb, "inconsistent");
  /* Only a JSON integer >= 0 is a count: json-c would read a string,
   * boolean, fraction or null as 0, that is "nothing changed" (an INC
   * without a job).  Anything else is unknown: dirty. */
  json_object *c = get_obj (jb, "count");
  int64_t cv = c && json_object_is_type (c, json_type_int) ? json_object_get_int64 (c) : -1;
  b->count = cv >= 0 ? (uint64_t) cv : UINT64_MAX;
}

/* Add NAME to DISK's names unless it is NULL, empty, an automatic node
 * name ("#block123": it changes on every start) or there already. */
static void
names_add (vm_disk *disk, const char *name)
{
  if (!name || !*name || name[0] == '#')
    return;
  for (size_t i = 0; i < disk->nnames; i++)
    if (strcmp (disk->names[i], name) == 0)
      return;
  disk->names = qb_realloc (disk->names, (disk->nnames + 1) * sizeof *disk->names);
  disk->names[disk->nnames++] = qb_strdup (name);
}

/* Fill DISK's names from query-block entry E and the flat node list NODES
 * (may be NULL). */
static void
names_fill (vm_disk *disk, json_object *e, json_object *nodes)
{
  json_object *ins = get_obj (e, "inserted");
  names_add (disk, disk->name);
  names_add (disk, get_str (e, "device"));
  char *id = qdev_id (get_str (e, "qdev"));
  names_add (disk, id);
  if (id)
    names_add (disk, get_str (e, "qdev"));   /* not the path of an anonymous device */
  free (id);
  names_add (disk, disk->node);
  /* The protocol node (and any other named node) on the same image file. */
  const char *file = get_str (ins, "file");
  size_t n = nodes && json_object_is_type (nodes, json_type_array)
    ? json_object_array_length (nodes) : 0;
  for (size_t i = 0; file && *file && i < n; i++) {
    json_object *nd = json_object_array_get_idx (nodes, i);
    const char *nf = get_str (nd, "file");
    if (nf && strcmp (nf, file) == 0)
      names_add (disk, get_str (nd, "node-name"));
  }
  if (file && *file && strncmp (file, "json:", 5) != 0) {
    names_add (disk, file);
    const char *base = strrchr (file, '/');
    if (base && base[1])
      names_add (disk, base + 1);
  }
}

/* Fill DISK from one query-block entry E whose stable name is NAME (owned
 * by DISK afterwards), NODES the flat query-named-block-nodes list; false
 * when the entry has no usable medium. */
static bool
disk_parse (json_object *e, json_object *nodes, char *name, vm_disk *disk)
{
  json_object *ins = get_obj (e, "inserted");
  json_object *img = get_obj (ins, "image");
  const char *node = get_str (ins, "node-name");
  if (!ins || !img || !node) {
    free (name);
    return false;
  }
  memset (disk, 0, sizeof *disk);
  disk->name = name;
  const char *dev = get_str (e, "device");
  if (dev && *dev)
    disk->device = qb_strdup (dev);
  else
    disk->device = qdev_id (get_str (e, "qdev"));
  if (!disk->device)
    disk->device = qb_strdup ("");
  disk->node = qb_strdup (node);
  disk->format = qb_strdup (get_str (ins, "drv") ? get_str (ins, "drv") : "");
  disk->file = qb_strdup (get_str (ins, "file") ? get_str (ins, "file") : "");
  json_object *vs = get_obj (img, "virtual-size");
  disk->size = vs ? (uint64_t) json_object_get_int64 (vs) : 0;
  json_object *bms = get_obj (ins, "dirty-bitmaps");
  if (bms && json_object_is_type (bms, json_type_array)) {
    size_t n = json_object_array_length (bms);
    disk->bitmaps = qb_calloc (n ? n : 1, sizeof *disk->bitmaps);
    for (size_t i = 0; i < n; i++) {
      json_object *jb = json_object_array_get_idx (bms, i);
      if (!get_str (jb, "name"))
        continue;
      bitmap_parse (jb, &disk->bitmaps[disk->nbitmaps++]);
    }
  }
  names_fill (disk, e, nodes);
  return true;
}

/* The stable name of query-block entry E (malloc'd, sanitised), or NULL
 * when it has none; *WHY says why. */
static char *
entry_name (json_object *e, const char **why)
{
  json_object *ins = get_obj (e, "inserted");
  const char *dev = get_str (e, "device");
  char *raw = NULL;
  if (dev && *dev)
    raw = qb_strdup (dev);
  else
    raw = qdev_id (get_str (e, "qdev"));
  if (!raw) {
    const char *node = get_str (ins, "node-name");
    if (node && *node && node[0] != '#')
      raw = qb_strdup (node);
  }
  if (!raw) {
    *why = "it has no drive id, device id or node name (give it -device ...,id=NAME)";
    return NULL;
  }
  char *name = qb_name_sanitize (raw);
  free (raw);
  if (!name)
    *why = "its id is empty";
  return name;
}

/* Query the VM's writable disks with media: query-block and
 * query-named-block-nodes in one round trip. */
int
disks_query (qmp *q, vm_disk **disks, size_t *n)
{
  *disks = NULL;
  *n = 0;
  const char *cmds[] = { "query-block", "query-named-block-nodes" };
  json_object *args[] = { NULL, disks_nodes_args () };
  json_object *res[2];
  int rc = qmp_execute_batch (q, cmds, args, 2, res, QMP_COMMAND_TIMEOUT_MS);
  if (rc == 0)
    rc = disks_parse (res[0], res[1], disks, n);
  json_object_put (res[0]);
  json_object_put (res[1]);
  return rc;
}

/* The arguments of query-named-block-nodes (new object): "flat", without
 * which each node repeats its whole backing chain. */
json_object *
disks_nodes_args (void)
{
  json_object *qargs = json_object_new_object ();
  json_object_object_add (qargs, "flat", json_object_new_boolean (1));
  return qargs;
}

/* The VM's writable disks with media from the replies BLOCKS and NODES. */
int
disks_parse (json_object *blocks, json_object *nodes, vm_disk **disks, size_t *n)
{
  *disks = NULL;
  *n = 0;
  if (!json_object_is_type (blocks, json_type_array))
    return qb_error_set (QB_EPROTO, "query-block did not return a list");
  size_t len = json_object_array_length (blocks);
  vm_disk *out = qb_calloc (len ? len : 1, sizeof *out);
  size_t count = 0;
  for (size_t i = 0; i < len; i++) {
    json_object *e = json_object_array_get_idx (blocks, i);
    json_object *ins = get_obj (e, "inserted");
    if (!ins)
      continue;                         /* empty drive */
    const char *type = get_str (e, "type");
    if (type && strcmp (type, "cdrom") == 0)
      continue;
    if (get_bool (e, "removable") && (get_bool (e, "tray_open") || (type && strcmp (type, "floppy") == 0)))
      continue;
    if (get_bool (ins, "ro"))
      continue;
    const char *why = NULL;
    char *name = entry_name (e, &why);
    if (!name) {
      fprintf (stderr, "qmpbackup: skipping a disk (%s): %s\n",
               get_str (ins, "file") ? get_str (ins, "file") : "?", why);
      continue;
    }
    bool dup = false;
    for (size_t k = 0; k < count; k++)
      dup |= strcmp (out[k].name, name) == 0;
    if (dup) {
      disks_free (out, count);
      qb_error_set (QB_EINVAL, "two disks of the VM have the same name \"%s\"", name);
      free (name);
      return -1;
    }
    if (disk_parse (e, nodes, name, &out[count]))
      count++;
  }
  *disks = out;
  *n = count;
  return 0;
}

/* Free an array from disks_query. */
void
disks_free (vm_disk *disks, size_t n)
{
  if (!disks)
    return;
  for (size_t i = 0; i < n; i++) {
    vm_disk *d = &disks[i];
    free (d->name);
    free (d->device);
    free (d->node);
    free (d->format);
    free (d->file);
    for (size_t k = 0; k < d->nnames; k++)
      free (d->names[k]);
    free (d->names);
    for (size_t k = 0; k < d->nbitmaps; k++)
      free (d->bitmaps[k].name);
    free (d->bitmaps);
  }
  free (disks);
}

/* The bitmap called NAME on DISK, or NULL. */
const vm_bitmap *
disks_find_bitmap (const vm_disk *disk, const char *name)
{
  for (size_t i = 0; i < disk->nbitmaps; i++)
    if (strcmp (disk->bitmaps[i].name, name) == 0)
      return &disk->bitmaps[i];
  return NULL;
}

/* "ID (known as A, B, ...)" for DISK. */
char *
disks_describe (const vm_disk *disk)
{
  size_t len = strlen (disk->name) + 16;
  for (size_t i = 0; i < disk->nnames; i++)
    len += strlen (disk->names[i]) + 2;
  char *out = qb_calloc (1, len + 16);
  strcpy (out, disk->name);
  bool first = true;
  for (size_t i = 0; i < disk->nnames; i++) {
    if (strcmp (disk->names[i], disk->name) == 0)
      continue;
    strcat (out, first ? " (known as " : ", ");
    strcat (out, disk->names[i]);
    first = false;
  }
  if (!first)
    strcat (out, ")");
  return out;
}

/* DESC (malloc'd, freed) appended to *LIST with SEP between entries. */
static void
list_append (char **list, const char *sep, char *desc)
{
  char *old = *list;
  *list = old ? qb_asprintf ("%s%s%s", old, sep, desc) : qb_strdup (desc);
  free (old);
  free (desc);
}

/* The disk that USER_NAME names, or -1 (QB_EINVAL) when none or several. */
int
disks_match (const vm_disk *disks, size_t n, const char *user_name, const char *what,
             const char *vm)
{
  int found = -1, count = 0;
  char *which = NULL;
  /* A disk's id (unique) wins: names that worked before still pick the same disk. */
  for (size_t i = 0; i < n; i++)
    if (strcmp (disks[i].name, user_name) == 0)
      return (int) i;
  for (size_t i = 0; i < n; i++)
    for (size_t k = 0; k < disks[i].nnames; k++)
      if (strcmp (disks[i].names[k], user_name) == 0) {
        found = (int) i;
        count++;
        list_append (&which, "; ", disks_describe (&disks[i]));
        break;
      }
  if (count == 1) {
    free (which);
    return found;
  }
  if (count > 1) {
    qb_error_set (QB_EINVAL, "%s: \"%s\" names %d disks of VM %s: %s; name one of them "
                  "by a name only it has (its id, the first name given)", what, user_name,
                  count, vm, which);
    free (which);
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    list_append (&which, "; ", disks_describe (&disks[i]));
  qb_error_set (QB_EINVAL, "%s: VM %s has no disk \"%s\" (it may be read-only, a CD-ROM or "
                "empty: those are never backed up); its disks: %s", what, vm, user_name,
                which ? which : "none");
  free (which);
  return -1;
}
