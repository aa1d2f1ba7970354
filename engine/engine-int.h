/* qmpbackupfs — the backup engine's own state, shared by its files
 * (engine.c runs a backup; quiesce.c freezes, thaws and pauses the guest).
 * Nothing outside engine/ includes this. */
#ifndef QB_ENGINE_INT_H
#define QB_ENGINE_INT_H

#include "engine/engine.h"
#include "engine/disks.h"
#include "engine/thawguard.h"
#include "qmp/qga.h"
#include "store/store.h"

#define ENGINE_THAW_BUDGET_MS 30000   /* our own thaw attempts, then the guard's turn */
#define ENGINE_THAW_TRIES 3

/* One disk of a backup run. */
typedef struct eng_disk {
  const vm_disk *vd;
  const store_layer *prev;   /* the layer an INC continues (healthy chains only) */
  const char *health;        /* "ok", "none", "missing", "inconsistent", "resized", ... */
  char *reason;              /* why the chain cannot continue (NULL when healthy) */
  char *chain;               /* chain of this backup's layer (NULL for a copy) */
  char *bitmap;              /* "qmpbackup-<target>-<chain>" (or an older version's name) */
  char *next;                /* INC: "qmpbackup-next-<target>-<chain>", records writes after the point */
  char job[48];              /* job id */
  char tnode[48], fnode[48];  /* target and its file */
  const char *tmp;           /* temporary target path (owned by the txn) */
  bool node_added;
  /* Fleecing (fleece.c): the fleece image, the copy-before-write filter
   * above the disk's node, the snapshot-access node the job reads. */
  char flnode[48], cbwnode[48], snapnode[48], flbitmap[48];
  char *flpath;              /* the fleece image (NULL: no fleecing of this disk) */
  char *qdev;                /* the device whose drive the filter replaces */
  bool fl_added, cbw_added, swapped, snap_added;
} eng_disk;

/* State of one engine_backup call. */
typedef struct eng_run {
  store *st;
  const char *vm;
  const backup_opts *opts;
  backup_result *res;
  char target[STORE_TARGET_ID_LEN + 1]; /* this store folder's target id */
  qmp *q;
  qga *g;
  thawguard *guard;          /* thaws the guest if we die while it may be frozen */
  bool frozen;               /* a freeze may have been sent and no thaw confirmed */
  bool thaw_failed;          /* our thaw failed: the guest may still be frozen */
  char thaw_warning[400];
  store_vm *scan;
  store_txn *txn;
  vm_disk *all;
  size_t nall;
  eng_disk *d;
  size_t n;
  backup_level level;
  char month[8];
  bool bitmaps_added;        /* the transaction ran: new (FULL) or "next" (INC) bitmaps exist */
  bool jobs_started;
  uint64_t start_ms;
  uint64_t last_ms, last_done;
  double rate;
  uint64_t done, total;
  bool paused;               /* opts->pause sent "stop": "cont" is owed (pause_resume) */
  bool fleecing;             /* the jobs read from snapshot-access nodes (fleece.c) */
  bool fl_stopped;           /* fleece_insert sent "stop": "cont" is owed (fleece_resume) */
  bool unchanged;            /* an INC of disks whose chain bitmaps were empty: no job */
  int64_t discovered_us;     /* wall clock just before the disks (and bitmaps) were read */
} eng_run;

/* ---- QEMU jobs (jobs.c) ---- */

/* The one wait for QEMU jobs (jobs_wait is it without a time limit and
 * reading first): until every job in IDS (N) has status WANT ("pending",
 * or "concluded", which a dismissed job's "null" also satisfies).
 * query-jobs decides; it is read first (with EVENT_FIRST only after the
 * first waking event, for jobs just started, which are not there yet), and
 * again when a JOB_STATUS_CHANGE event of one of the jobs names WANT or an
 * end ("aborting", "concluded", "null"), on BLOCK_JOB_ERROR, and at least
 * every second.  TICK (may be NULL) gets the progress after each read.
 * TIMEOUT_MS > 0 bounds the wait (QB_ETIMEDOUT).  With LAST non-NULL, on
 * success *LAST is the final query-jobs list (new reference), so a caller
 * reads the jobs' errors without another round trip.  -1 when a job
 * disappears or, waiting for "pending", ends early (its error in the
 * message), the VM goes away (QB_EHOSTDOWN) or the wait is canceled
 * (QB_ECANCELED). */
int jobs_await (qmp *q, char *const *ids, size_t n, const char *want, int timeout_ms,
                bool event_first, jobs_tick_fn tick, void *opaque, json_object **last);

/* Report progress PHASE to the caller (opts->progress). */
void eng_report (eng_run *r, const char *phase);

/* Append to the result's quiesce note ("; " between parts). */
void eng_quiesce_note (eng_run *r, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Freeze the guest's filesystems as the options ask (a thaw guard is
 * started first); 0 also when a default quiesce fell back to
 * crash-consistent (noted), -1 when an explicit one failed or on cancel. */
int eng_quiesce (eng_run *r, const char *qga_path);

/* Thaw the guest if a freeze may have been sent: not cancelable, bounded,
 * confirmed; hands over to the thaw guard when it fails.  Keeps the error. */
void eng_thaw (eng_run *r);

/* With --pause, stop the VM if it runs; "cont" is then owed (eng_resume). */
int eng_pause (eng_run *r);

/* When a job failed because the fleecing snapshot broke (the fleece image
 * could not take the old data), say so in the error. */
void fleece_explain (eng_run *r);

/* Send the owed "cont" (not cancelable): NULL, or the WARNING noted. */
const char *eng_resume (eng_run *r);

/* ---- Fleecing (fleece.c) ---- */

#define FLEECE_FILE_PREFIX ".qmpbackup-fleece-"   /* fleece images: PREFIX<target8>-<n>.qcow2 */

/* Decide whether this run fleeces (opts->fleece: NULL, "" or "off" = no,
 * else a directory), sweep leftover fleece images
 * of this target from the directory, create and attach one fleece image per
 * disk.  0 or -1 (a directory that cannot be used is an error). */
int fleece_prepare (eng_run *r);

/* Put the copy-before-write filter above every disk's node and a
 * snapshot-access node on it, with the VM stopped (when it ran) so that no
 * write passes between the filter's snapshot and the transaction; "cont" is
 * then owed (fleece_resume).  0 or -1. */
int fleece_insert (eng_run *r);

/* The node DISK's job reads: its snapshot-access node, or its own node. */
const char *fleece_source (const eng_run *r, const eng_disk *d);

/* The bitmap an INC job of DISK uses (on fleece_source's node). */
const char *fleece_bitmap (const eng_run *r, const eng_disk *d);

/* Append to ACTIONS what DISK's job needs before it in the transaction:
 * for an INC from a snapshot-access node, a temporary bitmap on that node
 * holding the chain bitmap's bits. */
void fleece_txn_actions (const eng_run *r, const eng_disk *d, json_object *actions);

/* Call when the jobs IDS (one per disk) reached "pending" (they read all
 * they need): when fleecing, finalize them and copy the clusters each
 * fleece image holds (what the guest changed during the jobs, as it was at
 * the point) over the target with a new job of the same id, which is then
 * "pending" too.  Mends QEMU 7.2's snapshot-access, whose block status can
 * report such clusters as zeros.  0 or -1. */
int fleece_repair (eng_run *r, char *const *ids);

/* Send the "cont" fleece_insert owes (not cancelable).  Keeps the error. */
void fleece_resume (eng_run *r);

/* Restore every disk's graph (device back on its node), delete the
 * snapshot-access, filter and fleece nodes and the fleece images.  Call
 * after the jobs are gone.  Not cancelable; keeps the current error; 0, or
 * -1 when the graph could not be restored (error set when none was). */
int fleece_remove (eng_run *r);

/* Remove a crashed run's fleecing from QEMU: devices back on their nodes,
 * snapshot-access, filter and fleece nodes deleted, the fleece images QEMU
 * held unlinked.  TARGET as jobs_cleanup; REMOVED is told of each node.
 * The number of nodes removed, or -1. */
int fleece_cleanup (qmp *q, const char *target, engine_removed_fn removed, void *opaque);

#endif
