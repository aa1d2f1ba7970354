/* qmpbackupfs — extended attributes of restore images and point folders:
 * user.qmpbackup.* tell what a restore point is (level, chain, quiesced,
 * bytes, time, id, damage) straight from the store's scan, read-only.
 *
 * One table (point_xattrs) names every attribute and the function that
 * computes it, so `getfattr -d` and a script see the same values as
 * .points/<id>.json and <vm>/status. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/util.h"
#include "fs/fs.h"

#define XATTR_PREFIX "user.qmpbackup."
#define XATTR_VALUE_MAX 4096          /* a damage text longer than this is cut */

/* The attributes of the point P (one layer per disk it covers) as seen by
 * VM: write the value into BUF (LEN bytes) and return true, or return false
 * when the point has no such attribute. */
typedef bool (*xattr_fn) (const char *vm, const xattr_point *p, char *buf, size_t len);

/* "full", "inc" or "copy": the record's spelling of a layer kind. */
static const char *
kind_word (store_kind k)
{
  switch (k) {
  case STORE_FULL: return "full";
  case STORE_INC: return "inc";
  default: return "copy";
  }
}

/* The top layer of P's disk I. */
static const store_layer *
ref_layer (const xattr_point *p, size_t i)
{
  return &p->refs[i].chain->layers[p->refs[i].idx];
}

/* user.qmpbackup.level: the kind of the layer ("mixed" if the disks differ). */
static bool
x_level (const char *vm, const xattr_point *p, char *buf, size_t len)
{
  (void) vm;
  store_kind k = ref_layer (p, 0)->kind;
  for (size_t i = 1; i < p->n; i++)
    if (ref_layer (p, i)->kind != k) {
      snprintf (buf, len, "mixed");
      return true;
    }
  snprintf (buf, len, "%s", kind_word (k));
  return true;
}

/* user.qmpbackup.chain: the chain id from the record (absent for files of
 * the Python qmpbackup, which have none, and for a folder whose disks lie
 * in different chains). */
static bool
x_chain (const char *vm, const xattr_point *p, char *buf, size_t len)
{
  (void) vm;
  const char *c = ref_layer (p, 0)->chain_id;
  for (size_t i = 1; c && i < p->n; i++)
    if (!ref_layer (p, i)->chain_id || strcmp (ref_layer (p, i)->chain_id, c) != 0)
      c = NULL;
  if (!c)
    return false;
  snprintf (buf, len, "%s", c);
  return true;
}

/* user.qmpbackup.quiesced: "yes" when the guest's file systems were frozen. */
static bool
x_quiesced (const char *vm, const xattr_point *p, char *buf, size_t len)
{
  (void) vm;
  bool q = true;
  for (size_t i = 0; i < p->n; i++)
    q &= ref_layer (p, i)->quiesced;
  snprintf (buf, len, "%s", q ? "yes" : "no");
  return true;
}

/* user.qmpbackup.bytes: bytes the layer stores (a folder: of all its disks). */
static bool
x_bytes (const char *vm, const xattr_point *p, char *buf, size_t len)
{
  (void) vm;
  uint64_t b = 0;
  for (size_t i = 0; i < p->n; i++)
    b += ref_layer (p, i)->file_size;
  snprintf (buf, len, "%llu", (unsigned long long) b);
  return true;
}

/* user.qmpbackup.time: the backup time, "2026-11-26T04:50:00Z" as in the record. */
static bool
x_time (const char *vm, const xattr_point *p, char *buf, size_t len)
{
  (void) vm;
  qb_format_utc (ref_layer (p, 0)->time_us, buf, len);
  return true;
}

/* user.qmpbackup.id: the store's id of the point (the name of .points/<id>.json). */
static bool
x_id (const char *vm, const xattr_point *p, char *buf, size_t len)
{
  (void) vm;
  snprintf (buf, len, "%s", ref_layer (p, 0)->id);
  return true;
}

/* user.qmpbackup.damage: why reads fail, as <vm>/status says (a folder:
 * "DISK: why" for each damaged disk, "; " between); absent when intact. */
static bool
x_damage (const char *vm, const xattr_point *p, char *buf, size_t len)
{
  size_t off = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < p->n; i++) {
    const char *d = restore_point_damage (vm, p->refs[i].disk, p->refs[i].chain, p->refs[i].idx);
    if (!d || off >= len)
      continue;
    int w = p->folder ? snprintf (buf + off, len - off, "%s%s: %s", off ? "; " : "",
                                  p->refs[i].disk, d)
                      : snprintf (buf + off, len - off, "%s", d);
    off += w > 0 ? (size_t) w : 0;
  }
  return buf[0] != '\0';
}

/* Every attribute, in the order listxattr gives them.  A verification state
 * of the stored data (user.qmpbackup.verify: checksums checked, when, with
 * what result) belongs here once the store's layers carry one. */
static const struct {
  const char *name;
  xattr_fn fn;
} point_xattrs[] = {
  { XATTR_PREFIX "level", x_level },
  { XATTR_PREFIX "chain", x_chain },
  { XATTR_PREFIX "quiesced", x_quiesced },
  { XATTR_PREFIX "bytes", x_bytes },
  { XATTR_PREFIX "time", x_time },
  { XATTR_PREFIX "id", x_id },
  { XATTR_PREFIX "damage", x_damage },
};

#define NXATTRS (sizeof point_xattrs / sizeof point_xattrs[0])

/* Reply to a getxattr/listxattr of SIZE with the LEN bytes at DATA. */
static void
reply_sized (fuse_req_t req, const char *data, size_t len, size_t size)
{
  if (size == 0)
    fuse_reply_xattr (req, len);
  else if (len > size)
    fuse_reply_err (req, ERANGE);
  else
    fuse_reply_buf (req, data, len);
}

/* True if NAME is one of the attributes of a restore point (set or not). */
bool
xattr_is_point_name (const char *name)
{
  for (size_t i = 0; i < NXATTRS; i++)
    if (strcmp (point_xattrs[i].name, name) == 0)
      return true;
  return false;
}

/* FUSE listxattr of point P of VM: the names that have a value. */
void
xattr_point_list (fuse_req_t req, const char *vm, const xattr_point *p, size_t size)
{
  char names[512];
  size_t len = 0;
  char *val = qb_calloc (1, XATTR_VALUE_MAX);
  for (size_t i = 0; p->n > 0 && i < NXATTRS; i++)
    if (point_xattrs[i].fn (vm, p, val, XATTR_VALUE_MAX)) {
      size_t n = strlen (point_xattrs[i].name) + 1;
      memcpy (names + len, point_xattrs[i].name, n);   /* the table fits 512 bytes */
      len += n;
    }
  free (val);
  reply_sized (req, names, len, size);
}

/* FUSE getxattr NAME of point P of VM: the value (no trailing NUL), or ENODATA. */
void
xattr_point_get (fuse_req_t req, const char *vm, const xattr_point *p, const char *name,
                 size_t size)
{
  for (size_t i = 0; p->n > 0 && i < NXATTRS; i++) {
    if (strcmp (point_xattrs[i].name, name) != 0)
      continue;
    char *val = qb_calloc (1, XATTR_VALUE_MAX);
    if (point_xattrs[i].fn (vm, p, val, XATTR_VALUE_MAX))
      reply_sized (req, val, strlen (val), size);
    else
      fuse_reply_err (req, ENODATA);
    free (val);
    return;
  }
  fuse_reply_err (req, ENODATA);
}
