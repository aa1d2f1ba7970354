/* qmpbackupfs — internals shared by store.c, scan.c and txn.c (not for
 * other parts: they use store.h). */
#ifndef QB_STORE_INT_H
#define QB_STORE_INT_H

#include "store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_POINTS_DIR ".points"
#define STORE_LOCK_FILE ".lock"
#define STORE_TMP_PREFIX ".tmp-"
#define STORE_ID_MAX 40

struct store {
  char *root;            /* absolute */
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

/* True for a "YYYY-MM" month folder name. */
bool store_is_month (const char *name);

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

/* Free a record's contents. */
void store_rec_clear (store_rec *rec);

/* Load every record of the VM at VMDIR (unparseable ones are skipped),
 * sorted by id.  0 with *N = 0 when there is no .points directory. */
int store_recs_load (const char *vmdir, store_rec **recs, size_t *n);

/* Free an array from store_recs_load. */
void store_recs_free (store_rec *recs, size_t n);

/* Set the error for a failed write: ENOSPC becomes the "store is full" message. */
int store_write_error (const store *st, int errnum, const char *what, const char *path);

#endif
