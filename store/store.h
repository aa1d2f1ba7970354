/* qmpbackupfs — the on-disk backup store.
 *
 * Layout (the seed qmpbackup's shape, plus records and locks beside it):
 *
 *   STORE/<vm>/<disk>/FULL-<id>          qcow2, starts a chain
 *   STORE/<vm>/<disk>/INC-<id>           qcow2, the changes since the previous layer
 *   STORE/<vm>/<disk>/COPY-<id>          qcow2, a full copy that starts no chain
 *   STORE/<vm>/<YYYY-MM>/<disk>/...      the same with --monthly
 *   STORE/<vm>/.points/<id>.json         one record per restore point (all disks)
 *   <disk dir>/.chain/<layer>.json       the layer's own record (chain, previous
 *                                        layer, sizes): a disk folder copied
 *                                        anywhere still proves its chain
 *   STORE/<vm>/.lock                     flock: one backup per VM across processes
 *   <disk dir>/.tmp-<FILE>               a file being written (never visible as a layer)
 *   STORE/<vm>/.rewrite.json             intent journal of a chain rewrite under way
 *
 * <id> is the UTC time of the backup transaction, "YYYYMMDDTHHMMSSZ", with
 * "_02", "_03", ... appended for further points of the same VM in the same
 * second, so ids are unique per VM and sort in time order.  (No colons: QEMU
 * would parse "FULL-2026-11-26T04:..." as a protocol prefix.)  Files written by
 * the Python qmpbackup ("FULL-<epoch>-<name>", "INC-<epoch>-<name>") are read
 * as well; their id is derived from the epoch.
 *
 * Commit protocol: targets are written to .tmp-<FILE>; when every job has
 * completed, the temps are fsynced, each layer's .chain/<FILE>.json is
 * written (tmp, fsync, rename, fsync .chain), the record is written (tmp, fsync,
 * rename, fsync .points) — that is the commit point — then every temp is
 * renamed to its final name and the disk directories fsynced.  store_recover
 * rolls committed points forward and deletes uncommitted temps.
 *
 * Chain order comes from the ids (time), never from backing names inside
 * the images.  A layer's record names its chain id and its previous layer,
 * so an INC can never be read on top of the wrong FULL: a gap makes the
 * rest of that chain damaged instead.
 *
 * Data flows one way: qmp/ writes through store_txn_*; fs/ and tools/ read
 * through store_scan_vm.  Nothing here talks QMP.
 */
#ifndef QB_STORE_H
#define QB_STORE_H

#include "chain.h"
#include "retention.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef enum store_kind { STORE_FULL, STORE_INC, STORE_COPY } store_kind;

typedef struct store store;

/* How restore points are named in the mount and in the tools' output
 * (store_id_display).  Both sort in time order under byte order.
 * STORE_NAMES_SAFE, the default: "2026-11-26T045000Z[_02]", no colon, so
 * qemu-img, rsync, scp and shell completion take the name as a plain file
 * name.  STORE_NAMES_ISO: "2026-11-26T04:50:00Z[_02]", the names of
 * earlier versions, for scripts written against them. */
typedef enum store_names { STORE_NAMES_SAFE = 0, STORE_NAMES_ISO } store_names;

/* Open the store at ROOT; with CREATE, make the directory (mode 0700) if missing. */
store *store_open (const char *root, bool create);

/* Free. NULL is fine. */
void store_close (store *st);

/* The store's root directory. */
const char *store_root (const store *st);

/* Names of the VMs in the store (directories with a safe name, never a
 * symbolic link), sorted.
 * *NAMES is a malloc'd array of malloc'd strings; free with store_names_free. */
int store_list_vms (store *st, char ***names, size_t *n);

/* Free an array from store_list_vms. */
void store_names_free (char **names, size_t n);

/* ---- Reading: a snapshot of one VM's restore points ---- */

typedef struct store_layer {
  char *path;          /* absolute path of the qcow2 file */
  char *name;          /* base name, e.g. "INC-20261126T045000Z" (the tail of
                          path, not allocated on its own) */
  char id[40];         /* restore point id, e.g. "20261126T045000Z_02" */
  char display[48];    /* mount name without ".img": "2026-11-26T045000Z_02"
                          (store_id_display in the store's style) */
  store_kind kind;
  int64_t time_us;     /* backup time, UTC microseconds since the epoch */
  uint64_t virtual_size; /* from the record; 0 when unknown (seed files) */
  uint64_t file_size;  /* bytes on disk (st_blocks * 512) */
  bool quiesced;       /* from the record */
  char *chain_id;      /* from the record; NULL for seed files */
  char *damage;        /* non-NULL: why this layer (and every point above it) is unusable */
  bool busy;           /* damage is not damage: a chain rewrite (removal of restore
                          points) is under way or was interrupted; try again later */
  bool removing;       /* busy, and this layer's point is being removed: not listed */
} store_layer;

/* When a chain's FULL is gone (or an INC's record names a chain that is not
 * present), its INCs form a chain of their own whose layers[0] is an INC:
 * every layer of such a chain has damage set.  An INC is never placed behind
 * a layer other than the one its record names. */
typedef struct store_chain {
  size_t n;            /* layers[0] is the FULL (or COPY), then the INCs in time order */
  store_layer *layers;
  char *chain_id;      /* NULL for seed chains */
  char *month;         /* "YYYY-MM" with --monthly layout, else NULL */
} store_chain;

/* One entry of a disk's index of its layers by display name. */
typedef struct store_layer_ix {
  uint32_t chain, idx;
} store_layer_ix;

/* A layer of the disk that a restore point's record names (in a chain)
 * but whose file the scan did not find. */
typedef struct store_lost {
  char *id;            /* the point's id */
  char *chain;         /* the chain its record puts it in */
  char *file;          /* its path relative to the VM folder, from the record */
} store_lost;

typedef struct store_disk {
  char *name;
  size_t nchains;      /* in time order (months merged) */
  store_chain *chains;
  size_t nix;          /* every layer of the disk, sorted by display (then */
  store_layer_ix *ix;  /* chain order), for store_disk_find; NULL: none built */
  size_t nlost;        /* recorded layers that are missing, in id order */
  store_lost *lost;    /* (NULL when none: the usual case) */
} store_disk;

typedef struct store_vm {
  char *name;
  size_t ndisks;
  store_disk *disks;   /* sorted by name */
  size_t nskipped;
  char **skipped;      /* why entries were left out: symbolic links (never
                          followed), e.g. "web1/drive0/FULL-... is a symbolic
                          link: not followed" */
} store_vm;

/* Scan one VM's directory: disks, chains, layers, records.  Damage is
 * reported in store_layer.damage, not as an error; a layer that is not a
 * valid qcow2 image (read when no record gives its size) is damaged.
 * Symbolic links are never followed: a linked month/disk folder, layer or
 * record is left out and listed in skipped.  Errors: QB_ENOENT if no such
 * VM, QB_EPERM if its folder is a symbolic link, QB_EAGAIN/QB_ENOMEM when
 * descriptors or memory ran out (nothing may be concluded from such a scan:
 * try again later; no layer is ever marked damaged for it). */
store_vm *store_scan_vm (store *st, const char *vm);

/* The newest modification time of VM's folder and of its records: it
 * changes whenever a restore point is committed or removed and at every
 * step of a chain rewrite (zero when the VM has no folder).  A cheap test
 * for "scan again". */
struct timespec store_vm_changed (store *st, const char *vm);

/* A string (malloc'd) that changes whenever any folder of VM changes: the
 * VM folder, its records, each disk folder and its layers' records (.chain:
 * a verify's findings), each month folder and its disk folders (the lock
 * file excluded).  Catches layer files dropped in by other tools, which
 * store_vm_changed does not. */
char *store_vm_stamp (store *st, const char *vm);

/* Free a scan. NULL is fine. */
void store_vm_free (store_vm *v);

/* The disk called NAME in a scan, or NULL. */
const store_disk *store_vm_disk (const store_vm *v, const char *name);

/* The restore point of D whose display name is DISPLAY, leaving out layers
 * being removed: its chain (*CHAIN) and layer index (*IDX), the first in
 * chain order when several match.  A binary search in the scan's index
 * (O(log n), nothing allocated); a disk without one is searched linearly. */
bool store_disk_find (const store_disk *d, const char *display, size_t *chain, size_t *idx);

/* Open the file of LAYER (a layer of a scan of ST) for reading, walking
 * from the store root with O_NOFOLLOW|O_DIRECTORY per folder, so no
 * symbolic link is ever followed.  The descriptor (a regular file, the
 * caller closes it), or -1: QB_ENOENT (gone), QB_EDAMAGED (a symbolic link,
 * or not a regular file), QB_EAGAIN/QB_ENOMEM (resources ran out for a
 * moment: not damage), QB_EPERM/QB_EIO otherwise. */
int store_layer_open (store *st, const store_layer *layer);

/* Open restore point IDX of chain C (layers 0..IDX) for reading through
 * the chain reader, every layer opened as store_layer_open does.  NULL with
 * the errors of chain_open_fds (QB_EDAMAGED for bad content, a missing
 * layer or a link; QB_EAGAIN/QB_ENOMEM for resource shortages, which are
 * never damage). */
chain_image *store_point_open (store *st, const store_chain *c, size_t idx);

/* Restore point IDX of chain C opened on top of PREV, the open point
 * IDX - 1 of the same chain (chain_extend): only layer IDX is opened (as
 * store_layer_open does), locked and checked as store_point_open does (the
 * point not being removed, the layer still the file its name holds) and
 * read.  PREV keeps its point's lock, so it reads as it did; the new image
 * holds PREV's lock too (shared descriptors) until store_point_unlock_below.
 * NULL with store_point_open's errors, or QB_EINVAL when PREV does not fit
 * (then use store_point_open). */
chain_image *store_point_extend (store *st, const chain_image *prev, const store_chain *c,
                                 size_t idx);

/* Let go of the read lock on the layer below the top of CI (the lock of
 * the point CI was extended from), once that point is closed. */
void store_point_unlock_below (chain_image *ci);

/* A byte range of a restore point. */
typedef struct store_range {
  uint64_t off, len;
} store_range;

/* True when point TO of chain C reads the same bytes as point FROM - 1 in
 * each of the N ranges R: layers FROM..TO all have virtual size SIZE, are
 * neither damaged nor busy, open (as store_layer_open), and their tables
 * (qcow2) allocate no cluster in any of the ranges (no data, zero or
 * compressed cluster, and no invalid entry anywhere).  False when they do
 * or when that cannot be told (errors are cleared).  Reads only the
 * layers' headers and L1/L2 tables. */
bool store_layers_untouched (store *st, const store_chain *c, size_t from, size_t to,
                             uint64_t size, const store_range *r, size_t n);

/* Scan the disk folder PATH on its own, outside any store (a copy of
 * STORE/<vm>/<disk> or STORE/<vm>/<YYYY-MM>/<disk> made anywhere): one disk,
 * named after the folder, whose chains are checked against the layers'
 * own records in PATH/.chain/ (see store_scan_vm).  Errors as
 * store_scan_vm, QB_ENOENT/QB_EPERM when PATH is no folder or a link. */
store_vm *store_scan_folder (const char *path);

/* Why disk DISK of VM cannot continue chain CHAIN after its layer of point
 * AFTER_ID: a newer point's record puts the disk in that chain, but the
 * scan ends the chain before it (its file is gone, and the bitmap was
 * reset when it was taken).  The reason (malloc'd), or NULL when no newer
 * point of that chain is recorded. */
char *store_chain_lost_after (store *st, const char *vm, const char *disk, const char *chain,
                              const char *after_id);

/* store_chain_lost_after answered from D, a disk of a scan
 * (store_scan_vm), without reading any record again: the reason
 * (malloc'd) when a point newer than AFTER_ID records D in chain CHAIN
 * but the scan found no file of it, else NULL (also for D NULL). */
char *store_disk_lost_after (const store_disk *d, const char *chain, const char *after_id);

/* The newest record of VM as JSON (new reference), for display only (the
 * mount's status shows it as it is); NULL when it has none.  Everything
 * else reads the store through store_scan_vm. */
json_object *store_record_latest (store *st, const char *vm);

/* ---- Locking ---- */

typedef struct store_lock store_lock;

/* Take VM's backup lock, waiting up to TIMEOUT_MS (0: try once).
 * QB_EBUSY when another process or thread holds it. */
store_lock *store_lock_vm (store *st, const char *vm, int timeout_ms);

/* Release. NULL is fine. */
void store_unlock (store_lock *l);

/* ---- Writing: one restore point ---- */

typedef struct store_txn store_txn;

/* Begin a restore point of VM at time NOW_US (the caller holds the lock).
 * Picks the id (unique: bumps the _NN suffix if the second is taken).
 * MONTHLY selects the STORE/<vm>/<YYYY-MM>/ layout. */
store_txn *store_txn_begin (store *st, const char *vm, int64_t now_us, bool monthly);

/* The id chosen for this restore point. */
const char *store_txn_id (const store_txn *t);

/* Add DISK with layer KIND; returns the temporary path (owned by the txn)
 * (QB_EINVAL: unsafe name, disk added twice, INC without PREV or on a COPY)
 * where the caller creates the target image.  For STORE_INC, PREV is the
 * layer it continues (its record fields chain_id/id are used); for FULL the
 * caller passes CHAIN_ID of the new chain (see store_new_chain_id), for COPY
 * NULL.  Creates the disk directory (0700). */
const char *store_txn_add_disk (store_txn *t, const char *disk, store_kind kind,
                                const store_layer *prev, const char *chain_id,
                                uint64_t virtual_size);

/* Create DISK's temporary path as an empty file of mode 0600 (O_EXCL,
 * O_NOFOLLOW), for a program that writes the image over it and keeps the
 * mode (qemu-img create does): the store's files are never readable by
 * others, not even while being written.  0, or -1. */
int store_txn_create_target (store_txn *t, const char *disk);

/* The final path DISK's layer will have once committed (owned by the txn);
 * INC targets name it as the backing file of the next INC. */
const char *store_txn_final_path (const store_txn *t, const char *disk);

/* Commit: fsync temps, write the record (EXTRA's keys are merged into it:
 * level, reason, quiesced, ...; not consumed), rename, fsync directories.
 * On failure nothing is visible and the temps are removed. */
int store_txn_commit (store_txn *t, json_object *extra);

/* Remove the temps and free.  After a commit, only frees.  NULL is fine. */
void store_txn_free (store_txn *t);

/* A new random chain id (16 hex digits) into BUF (>= 17 bytes). */
void store_new_chain_id (char *buf, size_t len);

/* Recovery at start-up for VM (caller holds the lock): finish an
 * interrupted chain rewrite (store_rewrite_resume), roll committed points
 * forward, delete temps that no record names.  When no folder of the VM
 * holds a temp or a layer record whose layer is absent (a clean store),
 * only folder listings are read, no record.  Returns the number of files
 * removed or renamed (a finished rewrite counts one), or -1. */
int store_recover (store *st, const char *vm);

/* ---- Rewriting chains: removing restore points (rewrite.c) ----
 *
 * A restore point is one transaction over all of a VM's disks; removing it
 * removes its layer on every disk (or on DISK only, for qmprebase rebase).
 * Every other point keeps reading exactly as before: a FULL that goes is
 * folded forward (the INCs up to the first kept point are committed into
 * it and it takes that point's name, FULL-<id>); an INC that goes has its
 * changes moved into the next kept layer (qemu-img's safe rebase); a chain
 * whose points all go is deleted.  The newest point of the VM and the
 * newest layer of each disk are never removed (the next incremental
 * continues them, so the VM's bitmap always names a chain that exists).
 *
 * The operation is journaled (STORE/<vm>/.rewrite.json): a crash at any
 * step is rolled forward by store_rewrite_resume, which the next backup,
 * mount and qmprebase run.  While it runs, the scan marks every layer of
 * the chains it touches busy (not served, not damage) and the layers of
 * points that go removing.  Readers already holding a point open keep
 * reading it: a point whose FULL is rewritten in place can only be removed
 * when nobody has it open (QB_EBUSY otherwise); other points can always
 * be removed, their open readers keep the removed files' data. */

typedef struct store_remove_opts {
  bool dry_run;        /* plan only */
  const char *why;     /* recorded in the journal: "prune", "rebase", "rm" */
} store_remove_opts;

typedef struct store_remove_result {
  size_t steps;        /* steps of the plan */
  uint64_t bytes_before; /* bytes of the files of the chains touched, before */
  uint64_t bytes_after;  /* the same after (0 for a dry run) */
} store_remove_result;

/* Remove restore points IDS[0..N-1] of VM (ids as in store_layer.id; on
 * DISK only when non-NULL), the caller holding the VM's lock.  Finishes an
 * interrupted rewrite first.  0, or -1: QB_ENOENT (no such point),
 * QB_EINVAL (the newest point or a disk's newest layer), QB_EDAMAGED (a
 * damaged chain can only be removed whole), QB_EBUSY (a point whose FULL
 * is rewritten in place is open for reading; or another rewrite is busy),
 * or the errors of the steps (the journal then finishes it later). */
int store_points_remove (store *st, const char *vm, char *const *ids, size_t n,
                         const char *disk, const store_remove_opts *o,
                         store_remove_result *res);

/* The same for the disk folder DIR outside a store (see store_scan_folder);
 * the journal is DIR/.rewrite.json.  The caller locks DIR. */
int store_folder_points_remove (const char *dir, char *const *ids, size_t n,
                                const store_remove_opts *o, store_remove_result *res);

/* One restore point as prune judged it. */
typedef struct store_prune_point {
  char id[40];
  char display[48];
  int64_t time_us;
  uint64_t bytes;      /* bytes of its layer files (all disks) */
  bool keep;
  const char *why;     /* the rule that kept it (static), NULL when it goes */
  bool pinned;         /* holds a disk's newest layer: always kept */
  bool damaged;        /* a layer of it lies in a damaged chain: kept, left as it is */
} store_prune_point;

/* Apply retention POLICY (retention.h) to VM's restore points, the caller
 * holding the VM's lock: every point the policy does not keep is removed
 * as store_points_remove does (O->dry_run: only decided); points in a
 * damaged chain are kept and left as they are.  *PTS (malloc'd,
 * *N entries, oldest first) says what was decided for each point.  0, or
 * -1 (QB_EINVAL for an empty policy, or store_points_remove's errors). */
int store_prune (store *st, const char *vm, const store_retention *policy,
                 const store_remove_opts *o, store_prune_point **pts, size_t *n,
                 store_remove_result *res);

/* The name (malloc'd) a chain's FULL takes when the layers up to TOP are
 * folded into it: TOP's name with "FULL" for "INC" (FULL-<id of TOP>). */
char *store_fold_name (const store_layer *top);

/* Finish VM's interrupted chain rewrite, if any (caller holds the lock):
 * 0 when there was none, 1 when one was finished, -1 when it cannot go on
 * yet (QB_EBUSY: a reader holds a point that goes; or the step's error). */
int store_rewrite_resume (store *st, const char *vm);

/* The same for a disk folder outside a store. */
int store_folder_rewrite_resume (const char *dir);

/* True if folder PATH holds the records or the lock of a VM of a store
 * (so PATH is a VM folder, not a disk folder copied somewhere). */
bool store_path_has_vm_state (const char *path);

/* True if PATH looks like a VM folder: it holds a VM's records or lock and
 * no layer files, or disk folders (possibly in month folders) below it
 * hold layer files. */
bool store_path_is_vm (const char *path);

/* True for a "YYYY-MM" month folder name (the monthly layout). */
bool store_is_month (const char *name);

/* The mount's name of restore point ID without ".img" into BUF, in STYLE;
 * -1 if ID is not one of ours.  This is the only place a name is formatted:
 * store_layer.display of a scan of ST is store_id_display (id, store_get_names
 * (st), ...), a scan of a folder uses STORE_NAMES_SAFE. */
int store_id_display (const char *id, store_names style, char *buf, size_t len);

/* Parse the option value WORD ("safe" or "iso") into *STYLE; 0, or -1
 * (QB_EINVAL, the message lists both). */
int store_names_parse (const char *word, store_names *style);

/* Name ST's restore points in STYLE from now on (call before the first
 * scan; the default is STORE_NAMES_SAFE). */
void store_set_names (store *st, store_names style);

/* The style ST's restore points are named in. */
store_names store_get_names (const store *st);

/* Parse "YYYYMMDDTHHMMSSZ[_NN]" or a seed epoch name part; 0 on success. */
int store_id_parse (const char *id, int64_t *time_us, int *seq);

/* ---- Target id (target.c) ----
 *
 * Each VM folder of a store has its own id, STORE/<vm>/.target-id (16 hex
 * digits, mode 0600, written once).  The engine names the dirty bitmaps of
 * this folder's chains after it, so several stores of one VM keep their
 * own bitmaps and chains. */

#define STORE_TARGET_ID_LEN 16

/* VM's target id in ST into OUT (LEN >= STORE_TARGET_ID_LEN + 1).  With
 * CREATE a folder without one gets a random one (the first writer wins,
 * no symbolic link is followed).  -1 with QB_ENOENT (none yet, CREATE
 * false), QB_EDAMAGED (the file holds no id: the message says to remove
 * it), QB_EINVAL (unsafe VM name) or the store's I/O errors. */
int store_target_id (store *st, const char *vm, bool create, char *out, size_t len);

/* True when S is a well-formed target id (STORE_TARGET_ID_LEN lowercase hex digits). */
bool store_target_id_valid (const char *s);

#endif
