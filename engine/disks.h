/* qmpbackupfs — discovery of a VM's backup-able disks through QMP.
 *
 * Writable disks with media, from `-drive` and `-blockdev`+`-device` alike;
 * CD-ROMs, read-only and empty drives skipped.  Each disk is named by its
 * stable id: the drive id (QMP "device") when it has one, else the device id
 * taken from the qdev path — never an automatic node name ("#block123").
 * Users may name a disk by any name it is known by (vm_disk.names): the
 * name Python qmpbackup users match is the node name, or the image file. */
#ifndef QB_DISKS_H
#define QB_DISKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qmp/qmp.h"

typedef struct vm_bitmap {
  char *name;
  uint64_t granularity;
  bool persistent;
  bool recording;
  bool busy;
  bool inconsistent;
  uint64_t count;    /* dirty bytes when queried (QMP "count") */
} vm_bitmap;

typedef struct vm_disk {
  char *name;        /* stable id, sanitised (qb_name_sanitize) */
  char *device;      /* QMP device name ("" for -blockdev) or qdev id */
  char *node;        /* node name of the format (top) node; jobs and bitmaps use it */
  char *format;      /* "qcow2", "raw", ... */
  char *file;        /* image filename as QEMU reports it */
  uint64_t size;     /* virtual size in bytes */
  size_t nnames;
  char **names;      /* every name it is known by, unique: NAME, the drive id,
                        the qdev id and path, its user-given node names (format
                        and protocol nodes), the image path and its basename */
  size_t nbitmaps;
  vm_bitmap *bitmaps; /* dirty bitmaps on NODE */
} vm_disk;

/* Query the VM's disks (query-block + query-named-block-nodes, one round trip). */
int disks_query (qmp *q, vm_disk **disks, size_t *n);

/* Like disks_query, from replies already read: BLOCKS (query-block) and
 * NODES (query-named-block-nodes with disks_nodes_args; may be NULL), not
 * consumed.  0, or -1 (QB_EPROTO, QB_EINVAL) with *DISKS NULL. */
int disks_parse (json_object *blocks, json_object *nodes, vm_disk **disks, size_t *n);

/* The arguments disks_parse expects query-named-block-nodes to have had
 * (new reference): {"flat": true}. */
json_object *disks_nodes_args (void);

/* Free an array from disks_query. */
void disks_free (vm_disk *disks, size_t n);

/* The index in DISKS (N) of the disk that USER_NAME names (its id first,
 * else any of its names), or -1 with QB_EINVAL: several disks have that
 * name and none has it as its id (the message
 * lists them with their names: use one that is unique) or none has (the
 * message lists every disk with its names).  WHAT ("--exclude") and VM
 * start the message. */
int disks_match (const vm_disk *disks, size_t n, const char *user_name, const char *what,
                 const char *vm);

/* "ID (known as A, B, ...)" for DISK (malloc'd). */
char *disks_describe (const vm_disk *disk);

/* The bitmap called NAME on DISK, or NULL. */
const vm_bitmap *disks_find_bitmap (const vm_disk *disk, const char *name);

#endif
