/* qmpbackupfs — the backup engine: one restore point of a running VM.
 *
 * engine_backup connects to the VM's QMP socket, takes the store lock,
 * cleans leftovers of a crashed run, decides the level (auto), quiesces
 * through the guest agent if asked, runs ONE QMP transaction over all disks
 * (block-dirty-bitmap-add/clear + blockdev-backup, grouped completion,
 * auto-finalize off), waits for every job, flushes and detaches the targets,
 * commits the restore point through store_txn_* and only then resets the
 * chain's bitmap (details in engine.c).  Once a freeze may have been sent
 * it thaws on every path (cancel, timeout, error: not subject to the cancel
 * flag, bounded, confirmed with guest-fsfreeze-status), and a thaw guard
 * process (thawguard.h) thaws if this process dies meanwhile; a thaw that
 * failed is a WARNING in quiesce_note and in the error.  It lets go of the
 * sockets when done.  With backup_opts.fleece the jobs read through image
 * fleecing (fleece.c): a copy-before-write filter above each
 * disk saves old data to a local temporary image, so guest writes do not
 * wait for the store; the graph is put back on every path.  Semantics: see SPEC.md "Backup
 * semantics".  Bitmaps are named "qmpbackup-<target id>-<chain id>", the
 * target id being the store folder's (store_target_id), so each store a VM
 * is backed up into keeps its own bitmaps; an older version's
 * "qmpbackup-<chain id>" still serves the store that has that chain. */
#ifndef QB_ENGINE_H
#define QB_ENGINE_H

#include <json-c/json.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

#define ENGINE_BITMAP_PREFIX "qmpbackup-"
#define ENGINE_JOB_PREFIX "qmpbackup-"   /* job ids and target node names */

typedef enum backup_level { BACKUP_FULL, BACKUP_INC, BACKUP_AUTO, BACKUP_COPY } backup_level;
typedef enum quiesce_mode { QUIESCE_DEFAULT, QUIESCE_ON, QUIESCE_OFF } quiesce_mode;

typedef struct backup_progress {
  backup_level level;   /* the level being taken (never AUTO) */
  const char *phase;    /* "connecting", "quiescing", "copying", "committing" */
  uint64_t done;        /* bytes copied so far, all disks */
  uint64_t total;       /* bytes to copy, all disks (may grow) */
  double rate;          /* bytes per second, smoothed */
} backup_progress;

typedef struct backup_opts {
  backup_level level;
  quiesce_mode quiesce;      /* DEFAULT: quiesce when QGA_PATH is given, fall back if it fails */
  bool monthly;              /* STORE/<vm>/<YYYY-MM>/ layout; auto starts a full each month */
  bool compress;             /* compressed targets */
  uint64_t speed;            /* bytes/s per job, 0 = unlimited */
  const char *fleece;        /* image fleecing: NULL, "" or "off" = none (the default);
                              * else the directory for the fleece images (an error
                              * when it cannot be used, and QB_EINVAL with QEMU <= 7.2,
                              * whose snapshot-access reports the live disk's zeroed
                              * ranges: wrong restores).  With fleecing, guest writes
                              * during the job wait for a local copy of the old data,
                              * not for the store. */
  const char *const *include; /* NULL-terminated disk names to back up; NULL = all.
                              * Any name a disk is known by (disk id, drive id,
                              * qdev id or path, node name, image path or
                              * basename); a name of several disks or of none
                              * is an error (QB_EINVAL) listing the disks */
  const char *const *exclude; /* NULL-terminated disk names to skip; NULL = none */
  const atomic_int *cancel;  /* non-zero cancels the backup cleanly; may be NULL */
  void (*progress) (void *opaque, const backup_progress *p); /* may be NULL */
  void *opaque;
  int lock_timeout_ms;       /* wait for the store lock; 0 = fail at once with QB_EBUSY */
  bool pause;                /* stop the VM (QMP "stop") from before the transaction until
                              * the jobs are done, then "cont" on every path; a VM that
                              * was not running is left as it was.  Needs quiesce OFF or
                              * DEFAULT (then no freeze: a paused guest cannot thaw). */
} backup_opts;

typedef struct backup_result {
  char id[40];              /* the new restore point's id */
  backup_level level;       /* the level taken (FULL, INC or COPY) */
  char reason[512];         /* why auto took a full ("" otherwise) */
  bool quiesced;            /* at least one guest filesystem was frozen */
  int frozen_fs;            /* how many the guest agent froze (0 when not quiesced) */
  char quiesce_note[256];   /* any WARNING that the guest may still be frozen, then
                             * why not quiesced (a default quiesce fell back) */
  size_t ndisks;
  uint64_t bytes_copied;    /* bytes the jobs copied */
  uint64_t bytes_stored;    /* bytes the new files take in the store */
  double seconds;
  bool paused;              /* opts->pause stopped the VM for the backup */
  char pause_note[256];     /* WARNING when the VM could not be resumed ("" otherwise) */
  bool fleeced;             /* the jobs read through image fleecing (opts->fleece) */
  char fleece_note[256];    /* WARNING that the fleecing filter could not be removed
                             * ("" otherwise) */
} backup_result;

/* "full", "inc", "auto", "copy" → level; -1 (QB_EINVAL) otherwise. */
int backup_level_parse (const char *word, backup_level *level);

/* The word for LEVEL. */
const char *backup_level_name (backup_level level);

/* Take one backup of VM (its QMP socket QMP_PATH, guest agent QGA_PATH or
 * NULL) into ST.  Fills RES (may be NULL).  0 on success; -1 with the reason:
 * QB_EHOSTDOWN (no VM), QB_EBUSY (backup of this VM running, socket held),
 * QB_ENOCHAIN (inc impossible), QB_ECANCELED, QB_ENOSPC, QB_EQMP, QB_EIO.
 * On failure nothing new is visible in the store and the bitmaps still hold
 * every change for the next incremental. */
int engine_backup (store *st, const char *vm, const char *qmp_path, const char *qga_path,
                   const backup_opts *opts, backup_result *res);

/* Describe VM's disks as JSON (new reference), {"vm": VM, "disks": [...]}:
 * for each disk its name, "names" (every name it is known by and can be
 * included or excluded by), device, node, format, file, size, bitmaps (each
 * with "qmpbackup": whether it is ours, and for ours "target" (the target
 * id it belongs to; null for an older version's name of an unknown
 * store), "chain", "role" ("chain" or "next"), and with ST
 * "this_target"), and, when ST is non-NULL, "target_id" (the store
 * folder's, null before its first backup), the store chain it continues and
 * its health: "ok", "missing" (no bitmap for the chain),
 * "inconsistent" (QEMU marked it so), "none" (no chain yet), "resized",
 * "damaged" (a layer of the chain is damaged), "disabled", "busy"; "reason"
 * says it in words, "bitmap" names the chain's bitmap. */
json_object *engine_info (store *st, const char *vm, const char *qmp_path);

/* Cancel leftover qmpbackup jobs and delete leftover target nodes (of every
 * target); with REMOVE_BITMAPS also remove every "qmpbackup-*" bitmap.
 * Returns the number of things removed, or -1. */
int engine_cleanup (const char *qmp_path, bool remove_bitmaps);

/* Told about each thing engine_cleanup_report removed: KIND is "job",
 * "node" or "bitmap"; DISK the disk a bitmap was on (NULL otherwise); NAME
 * the job id, node name or bitmap name (text from QEMU: make it safe
 * before printing it). */
typedef void (*engine_removed_fn) (void *opaque, const char *kind, const char *disk,
                                   const char *name);

/* engine_cleanup, calling REMOVED (may be NULL) with OPAQUE after each
 * thing it removed, in order (the qmpbackup tool prints "Removing bitmap:
 * NAME" for each bitmap, as the Python qmpbackup does). */
int engine_cleanup_report (const char *qmp_path, bool remove_bitmaps, engine_removed_fn removed,
                           void *opaque);

/* ---- Internals shared by engine.c and jobs.c (QEMU job and node handling) ---- */

#include "qmp/qmp.h"

#define ENGINE_TARGET_PREFIX "qmpbackup-tgt-"   /* target node names */

/* Called while jobs run: bytes DONE of TOTAL over all jobs. */
typedef void (*jobs_tick_fn) (void *opaque, uint64_t done, uint64_t total);

/* Wait until every job in IDS (N) has status WANT ("pending" or "concluded"),
 * following JOB_STATUS_CHANGE events and polling query-jobs every second,
 * calling TICK (may be NULL) with the progress.  -1 when a job fails (its
 * error in the message), the VM goes away (QB_EHOSTDOWN) or the wait is
 * canceled (QB_ECANCELED). */
int jobs_wait (qmp *q, char *const *ids, size_t n, const char *want,
               jobs_tick_fn tick, void *opaque);

/* Cancel the jobs in IDS (N) that still exist, wait (bounded) for them to
 * conclude and dismiss them.  Errors are ignored: best effort. */
void jobs_abort (qmp *q, char *const *ids, size_t n);

/* Finalize the pending jobs in IDS (N), wait for them to conclude and
 * dismiss them.  -1 when one concluded with an error. */
int jobs_finalize (qmp *q, char *const *ids, size_t n);

/* Delete block node NODE: 0 or -1. */
int jobs_node_del (qmp *q, const char *node);

/* Cancel and dismiss leftover "qmpbackup-" jobs and delete leftover target
 * nodes: with TARGET (a target id) only that target's and those named by
 * older versions (no target in the name), with TARGET NULL all of ours;
 * with REMOVE_BITMAPS also remove every "qmpbackup-" bitmap.  REMOVED (may
 * be NULL) is told about each thing removed.  The number of things
 * removed, or -1. */
int jobs_cleanup (qmp *q, const char *target, bool remove_bitmaps, engine_removed_fn removed,
                  void *opaque);

/* The id of a "qmpbackup-" job still in QEMU (after jobs_cleanup of one
 * target: another target's) into ID (LEN bytes): 1 when there is one, 0
 * when none, -1 on errors. */
int jobs_find_ours (qmp *q, char *id, size_t len);

#endif
