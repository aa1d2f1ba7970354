/* qmpbackupfs — internals shared by store.c, scan.c and txn.c (not for
 * other parts: they use store.h). */
#ifndef QB_STORE_INT_H
#define QB_STORE_INT_H

#include "store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_POINTS_DIR ".points"
#define STORE_SIDECAR_DIR ".chain"   /* <disk dir>/.chain/<layer>.json: the layer's own record */
#define STORE_LOCK_FILE ".lock"
#define STORE_TMP_PREFIX ".tmp-"
#define STORE_REWRITE_JOURNAL ".rewrite.json" /* <unit>/.rewrite.json: a chain rewrite under way */
#define STORE_ID_MAX 40
#define STORE_RECORD_MAX (1 << 20)   /* a record file bigger than this is not read */

/* The byte of a layer file that a reader of its point locks shared and a
 * chain rewrite exclusively, with open file description locks
 * (F_OFD_SETLK).  Not flock: where the file system turns flock into POSIX
 * locks on the whole file (GlusterFS, NFS), QEMU's image locking (bytes
 * 100-299) would see a reader's lock and refuse to open the layer as the
 * backing file of the next incremental.  This byte is far above QEMU's. */
#define STORE_POINT_LOCK_BYTE ((off_t) 1 << 40)

struct store {
  char *root;            /* absolute, no symbolic link in it */
  int rootfd;            /* O_PATH descriptor of the root: walks start here */
  store_names names;     /* how the mount and the tools name restore points */
};

/* One disk entry of a record. */
typedef struct store_rec_disk {
  char *name;
  char *file;            /* relative to STORE/<vm> */
  store_kind kind;
  char *chain;           /* NULL for copies and seed chains */
  char *prev;            /* id of the previous layer, or NULL */
  uint64_t virtual_size;
  uint64_t bytes;
  uint64_t size;         /* the file's length (st_size) at commit; 0 when unknown */
} store_rec_disk;

/* A parsed record of one restore point. */
typedef struct store_rec {
  char id[STORE_ID_MAX];
  int64_t time_us;
  bool quiesced;
  size_t ndisks;
  store_rec_disk *disks;
} store_rec;

/* "STORE/<vm>" (malloc'd); NULL with QB_EINVAL if VM is not a safe name. */
char *store_vm_dir (const store *st, const char *vm);

/* Format the id of second T_US with sequence SEQ (1: no suffix) into BUF. */
void store_id_format (int64_t t_us, int seq, char *buf, size_t len);


/* True for a well-formed id of this store ("YYYYMMDDTHHMMSSZ[_NN]"). */
bool store_id_valid (const char *id);


/* Parse a layer file name (FULL-/INC-/COPY- with an id or a seed epoch).
 * Fills KIND, ID (canonical id), TIME_US, SEQ.  False for anything else,
 * including seed names still being written (".partial"). */
bool store_layer_name_parse (const char *name, store_kind *kind, char id[STORE_ID_MAX],
                             int64_t *time_us, int *seq);

/* "FULL" / "INC" / "COPY", and the record spelling "full" / "inc" / "copy". */
const char *store_kind_prefix (store_kind k);
const char *store_kind_word (store_kind k);

/* Parse the record JSON OBJ into REC; false if it is not a usable record. */
bool store_rec_parse (json_object *obj, store_rec *rec);

/* The string member KEY of the JSON object O, or NULL (missing, not a
 * string, or O NULL). */
const char *store_json_str (json_object *o, const char *key);

/* The .chain folder of disk folder DIRFD, opened without following a link
 * (created 0700 with CREATE): the descriptor, or -1. */
int store_sidecar_dir (int dirfd, bool create);

/* Free a record's contents. */
void store_rec_clear (store_rec *rec);

/* Open VM's directory (O_RDONLY|O_DIRECTORY) beneath the root without
 * following a link: the descriptor, or -1 with QB_ENOENT (no such VM),
 * QB_EPERM (a symbolic link, or not a directory), QB_EAGAIN/QB_ENOMEM
 * (resources ran out), QB_EINVAL (unsafe name). */
int store_vm_open (const store *st, const char *vm);

/* Call FN (VMFD, REL, OPAQUE) for every folder of the VM folder VMFD that
 * may hold a disk: each safe-named folder ("disk" or "YYYY-MM"), and each
 * safe-named entry of a month folder ("YYYY-MM/disk").  No link is followed. */
void store_vm_walk_dirs (int vmfd, void (*fn) (int vmfd, const char *rel, void *opaque),
                         void *opaque);

/* Make the directories of REL (relative to the root, safe components)
 * with mode 0700, following no link: 0, or -1 (QB_EPERM when a component
 * is a symbolic link or not a directory). */
int store_mkdirs (const store *st, const char *rel);

/* Set the error for ERRNUM met on WHAT at PATH: a symbolic link is never
 * followed (QB_EPERM, "not followed"), EMFILE/ENFILE/ENOMEM/EAGAIN/EINTR are
 * QB_EAGAIN or QB_ENOMEM (nothing is damaged), others as qb_error_set_errno.
 * Returns -1. */
int store_fs_error (int errnum, const char *what, const char *path);

/* The JSON value in file NAME of directory DIRFD, opened without following
 * a link, at most STORE_RECORD_MAX bytes: a new reference, or NULL with
 * *ERRNUM set to the errno (0: the file is not valid JSON or too big). */
json_object *store_json_load_at (int dirfd, const char *name, int *errnum);

/* Append a malloc'd message to the list *NOTES (*N entries). */
void store_note (char ***notes, size_t *n, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* Load every record of VM whose directory is VMFD (unparseable ones
 * are skipped; links are not followed and are noted in NOTES when given),
 * sorted by id.  0 with *N = 0 when there is no .points directory; -1 on
 * errors (QB_EAGAIN/QB_ENOMEM when resources ran out: nothing skipped). */
int store_recs_load (int vmfd, const char *vm, store_rec **recs, size_t *n, char ***notes,
                     size_t *nnotes);

/* Free an array from store_recs_load. */
void store_recs_free (store_rec *recs, size_t n);

/* Write OBJ as file NAME of directory DFD (PATH in messages) atomically:
 * ".tmp-NAME" created 0600 with O_EXCL|O_NOFOLLOW, fsync, rename, fsync
 * the directory.  0, or -1 (nothing left behind but an old NAME). */
int store_json_write_at (const store *st, int dfd, const char *path, const char *name,
                         json_object *obj);

/* Set the error for a failed write: ENOSPC becomes the "store is full" message. */
int store_write_error (const store *st, int errnum, const char *what, const char *path);

/* What an unfinished chain rewrite (rewrite.c) means for readers. */
typedef struct store_rewrite_state {
  bool active;           /* a journal is present */
  bool all_busy;         /* it cannot be read: nothing of the unit is served */
  char **hide;           /* layers (relative to the unit) of points that go */
  size_t nhide;
  char **busy;           /* layers of every chain the rewrite touches */
  size_t nbusy;
  char *why;             /* the damage text of busy layers */
} store_rewrite_state;

/* Read the journal of the unit folder UNITFD (a VM folder, or a disk
 * folder outside a store) into RS: 0 (RS->active false when there is
 * none), or -1 for a shortage of descriptors or memory. */
int store_rewrite_state_load (int unitfd, store_rewrite_state *rs);

/* Free RS's contents. */
void store_rewrite_state_clear (store_rewrite_state *rs);

/* True when REL is one of the N entries of SET. */
bool store_rewrite_state_has (char *const *set, size_t n, const char *rel);

/* ---- Records (store.c): the on-disk JSON is known only inside store/ ---- */

/* The per-layer record of layer NAME ("<disk dir>/.chain/NAME.json") in the
 * disk folder DIRFD, read without following a link: a new reference, or
 * NULL (QB_ENOENT when there is none, QB_EIO when unreadable). */
json_object *store_sidecar_read (int dirfd, const char *name);

/* Write OBJ as the per-layer record of layer NAME in disk folder DIRFD,
 * atomically (0600 tmp with O_EXCL|O_NOFOLLOW, fsync, rename, fsync);
 * .chain is created 0700 when missing.  0, or -1. */
int store_sidecar_write (int dirfd, const char *name, json_object *obj);

/* Remove the per-layer record of layer NAME in disk folder DIRFD (none is fine). 0 or -1. */
int store_sidecar_remove (int dirfd, const char *name);

/* The record of restore point ID (new reference), or NULL (QB_ENOENT). */
json_object *store_record_read (store *st, const char *vm, const char *id);

/* Write REC as the record of restore point ID of VM, atomically (tmp file,
 * fsync, rename, fsync .points).  Without REPLACE an existing record is an
 * error (QB_EINVAL); tools that rewrite chains (qmprebase) replace. */
int store_record_write (store *st, const char *vm, const char *id, json_object *rec,
                        bool replace);

/* Remove restore point ID: first the files its record names, then the
 * record.  Only for points no other point depends on (a COPY).  Caller
 * holds the lock. */
int store_point_remove (store *st, const char *vm, const char *id);

#endif
