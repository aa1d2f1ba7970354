/* qmpbackupfs — the FUSE filesystem: shared declarations of fs/.
 *
 * vms.c      the VM registry (sockets dir, -o vm=, store), per-VM state
 * tree.c     inode numbers, lookup/getattr/readdir/open/read/write dispatch
 * control.c  the control file <vm>/backup: parse, run the backup
 * status.c   <vm>/status, .status, .metrics
 * restore.c  restore images (chain reader), the chain/ view, the points of a VM
 * xattr.c    user.qmpbackup.* attributes of restore images and point folders
 * files.c    the guest's files inside restore points (files/, libext2fs)
 * parttab.c  partition tables and file system probes of guest disks
 * errmap.c   the only place where error codes become errno values
 * log.c      the daemon's log lines (escaped; stderr, syslog in the background)
 * main.c     options, session, signals, shutdown
 */
#ifndef QB_FS_H
#define QB_FS_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "engine/engine.h"
#include "store/store.h"
#include "store/chain.h"

/* ---- the mount's configuration (main.c) ---- */

typedef struct fs_config {
  store *st;
  char *store_root;
  char *sockets_dir;     /* NULL: none */
  bool monthly;
  bool compress;         /* compressed targets */
  uint64_t speed;        /* bytes/s per backup job, 0 = unlimited */
  char *fleece;          /* fleece=DIR|off (backup_opts.fleece), NULL: default */
  char **include;        /* NULL-terminated disk names, or NULL = all */
  char **exclude;        /* NULL-terminated disk names, or NULL = none */
  bool allow_other;
  char *on_success;      /* sh command after a backup that worked, NULL: none */
  char *on_failure;      /* sh command after a backup that failed or was cancelled */
  unsigned notify_timeout; /* seconds a notification may run (default 60) */
  struct fuse_session *se; /* the session (kernel cache invalidations) */
  store_retention keep;  /* -o keep=: prune after each backup that worked */
  bool keep_set;
  uid_t uid;
  gid_t gid;
} fs_config;

extern fs_config fs_cfg;

/* Non-zero once the daemon is shutting down (set from the signal path). */
extern atomic_int fs_terminating;

/* ---- the VM registry (vms.c) ---- */

typedef enum vm_state { VM_IDLE, VM_RUNNING, VM_FAILED } vm_state;

typedef struct vm_scan {          /* a refcounted snapshot of store_scan_vm */
  int refs;
  store_vm *v;                    /* NULL: the VM has nothing in the store */
} vm_scan;

typedef struct fs_vm {
  char *name;
  pthread_mutex_t lock;           /* guards every field below */
  char *qmp_path;                 /* NULL: restore only */
  char *qga_path;                 /* NULL: no agent */
  bool explicit_vm;               /* from -o vm= */
  bool in_sockets;                /* NAME.qmp seen in the sockets dir at the last scan */
  bool in_store;                  /* STORE/NAME exists */
  /* the running or last backup */
  vm_state state;
  atomic_int cancel;
  backup_level run_level;
  backup_progress progress;       /* phase points to a static string */
  char phase[32];
  int64_t run_start_us;
  bool has_last;
  bool last_ok;
  backup_level last_level;
  int64_t last_time_us;
  char last_id[40];
  char last_reason[512];
  char last_error[1024];
  char last_prune[512];           /* what -o keep= or rm did last, "" if nothing */
  char last_quiesce_note[256];
  double last_seconds;
  uint64_t last_bytes;
  char last_rejected[512];        /* the last request refused before it started */
  int64_t last_rejected_us;
  /* counters for .metrics */
  uint64_t n_ok[4], n_failed;
  uint64_t bytes_copied_total;
  /* store scan cache */
  vm_scan *scan;
  char *scan_stamp;
  uint64_t scan_checked_ms;
  struct timespec scan_points_mtime; /* store_vm_changed at the last check */
  /* engine_info cache, refreshed by one thread of its own per VM (never
   * a FUSE worker), so a VM whose QMP never answers holds no reader long */
  json_object *info;
  bool info_reachable;
  char info_error[512];
  uint64_t info_ms;               /* when fetched (0: never) */
  pthread_cond_t info_cond;       /* broadcast when a refresh ends */
  bool info_busy;                 /* a refresh is in flight */
  int info_waiters;               /* readers waiting for it (bounded) */
  uint64_t info_started_ms;       /* when the refresh in flight started */
  atomic_int notify_busy;         /* a notification process runs (notify.c) */
  /* the running or last verify of the store (verify.c) */
  bool verify_running;
  uint64_t verify_done, verify_total;   /* layers */
  bool has_verify;
  int64_t verify_time_us;
  double verify_seconds;
  uint64_t verify_bytes;
  uint64_t verify_layers, verify_damaged, verify_sums_damaged, verify_unverifiable;
  char verify_result[32];         /* ok, ok-with-unverifiable, damaged, failed */
  char verify_detail[1024];       /* the damaged layers, or why it failed */
} fs_vm;

/* Set up the registry (after fs_cfg is filled). */
void vms_init (void);

/* Register -o vm=NAME:QMP[:QGA]; -1 on a bad spec. */
int vms_add_explicit (const char *spec);

/* Refresh the list from the sockets dir and the store when they changed. */
void vms_refresh (void);

/* The sockets dir of -o sockets=DIR as an absolute path (malloc'd); a DIR
 * that does not exist yet is waited for (its VMs show once it appears).  NULL
 * with an error when DIR exists but is not a usable directory. */
char *vms_sockets_dir_resolve (const char *dir);

/* The current VM names (sorted, malloc'd array of malloc'd strings). */
size_t vms_list (char ***names);

/* The VM called NAME if it is currently visible, else NULL.  VMs are never
 * freed while the daemon runs, so the pointer stays valid. */
fs_vm *vms_find (const char *name);

/* Sockets of the sockets dir that were refused at the last scan (their
 * names collide after sanitising, or with a -o vm= name), as a JSON array of
 * {"socket", "name", "reason"} (new reference). */
json_object *vms_refused_json (void);

/* All VMs ever registered (visible or not), for shutdown; returns count. */
size_t vms_all (fs_vm ***vms);

/* Current store scan of VM (refreshed when its directories changed); put it back with vm_scan_put. */
vm_scan *vm_scan_get (fs_vm *vm);

/* Drop a reference from vm_scan_get. */
void vm_scan_put (vm_scan *s);

/* Force the next vm_scan_get to rescan. */
void vm_scan_invalidate (fs_vm *vm);

/* Set every VM's cancel flag (shutdown). */
void vms_cancel_all (void);

/* Wait until no VM has a backup running. */
void vms_wait_idle (void);

/* Wake vms_wait_idle (called when a backup ends). */
void vms_notify_idle (void);

/* ---- restore points (restore.c) ---- */

/* Find the restore point DISPLAY (without ".img") of DISK in SCAN: the chain
 * and layer index, or false. */
bool restore_find (const store_vm *v, const char *disk, const char *display,
                   const store_chain **chain, size_t *idx);

/* The newest undamaged point of DISK ("display" string), or NULL. */
const store_layer *restore_latest (const store_vm *v, const char *disk);


/* Damage text for point IDX of CHAIN (itself or a layer below), or NULL. */
const char *restore_damage (const store_chain *c, size_t idx);

/* Why point IDX of chain C cannot be opened for a moment (a chain rewrite
 * is under way: open answers EBUSY), or NULL. */
const char *restore_busy (const store_chain *c, size_t idx);

/* Like restore_damage, plus damage found while reading point IDX (EIO). */
const char *restore_point_damage (const char *vm, const char *disk, const store_chain *c,
                                  size_t idx);

/* Open the restore image of point IDX in CHAIN: fills fi->fh; 0 or -errno. */
int restore_open (const char *vm, const char *disk, const store_chain *c, size_t idx,
                  struct fuse_file_info *fi);

/* FUSE read of an open restore image. */
void restore_read (fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);

/* FUSE lseek of an open restore image. */
void restore_lseek (fuse_req_t req, off_t off, int whence, struct fuse_file_info *fi);

/* Release an open restore image. */
void restore_release (struct fuse_file_info *fi);

/* ---- the points of a VM: <vm>/points/<T>/<disk>.img (restore.c) ----
 *
 * A restore point is one backup transaction over all disks of the VM; each
 * disk it covers has a layer with the point's id. */

/* One disk's image of a point: point IDX of CHAIN of DISK (borrowed from a scan). */
typedef struct point_ref {
  const char *disk;
  const store_chain *chain;
  size_t idx;
} point_ref;

/* The points of V over all its disks in time order: one layer per point
 * (that of its first disk), a malloc'd array in *OUT; the count. */
size_t restore_vm_points (const store_vm *v, const store_layer ***out);

/* The disks of point DISPLAY of V, in disk order: a malloc'd array in *OUT
 * (NULL when none); the count (0: no such point). */
size_t restore_point_refs (const store_vm *v, const char *display, point_ref **out);

/* The newest point of V no disk of which is damaged, or NULL. */
const store_layer *restore_vm_latest (const store_vm *v);

/* ---- extended attributes of restore points (xattr.c) ---- */

/* What an inode with user.qmpbackup.* attributes shows: a restore image
 * (one ref, FOLDER false) or a point folder (a ref per disk, FOLDER true). */
typedef struct xattr_point {
  const point_ref *refs;
  size_t n;
  bool folder;
} xattr_point;

/* True if NAME is one of the user.qmpbackup.* names of a restore point. */
bool xattr_is_point_name (const char *name);

/* FUSE listxattr of point P of VM (SIZE 0: the length only). */
void xattr_point_list (fuse_req_t req, const char *vm, const xattr_point *p, size_t size);

/* FUSE getxattr NAME of point P of VM: the value without a NUL, or ENODATA. */
void xattr_point_get (fuse_req_t req, const char *vm, const xattr_point *p, const char *name,
                      size_t size);

/* ---- the guest's files (files.c) ---- */

/* Close the cached guest file systems of VM that nobody reads now, and the
 * points kept open after reading partition tables, so that they hold no
 * restore point open (a removal that rewrites a FULL in place waits for
 * readers). */
void files_cache_drop_idle (const char *vm);

/* FUSE inodes with this bit are guest files: bits 32..61 the (point,
 * partition) slot, bits 0..31 the guest inode. */
#define FILES_INO_BIT (UINT64_C (1) << 62)

typedef struct files_dirent {
  char name[32];                  /* "p1", ..., "fs" (no partition table), "p1.NOT-CLEAN.txt" */
  fuse_ino_t ino;                 /* the partition's root folder, or the note file */
  mode_t mode;                    /* S_IFDIR, or S_IFREG for a note */
} files_dirent;

/* True if INO is a guest file's inode (served by files_*). */
bool files_is_ino (fuse_ino_t ino);

/* The entries of files/DISPLAY/ of VM/DISK (reads the partition table and
 * probes each partition, nothing more): a folder per partition, and
 * pN.NOT-CLEAN.txt beside one whose journal was not replayed or that
 * recorded errors.  Count and a malloc'd array in *ENTS, or -errno. */
int files_point_list (const char *vm, const char *disk, const char *display,
                      files_dirent **ents);

/* The "files: ..." lines of VM/DISK for <vm>/status: each point and
 * partition already read whose ext file system is not clean (journal not
 * replayed, errors recorded), and points read from their backup GPT.
 * Point LATEST (may be NULL) is read first if it was not yet: a
 * crash-consistent newest point is always reported.  A new JSON array. */
json_object *files_status_notes (const char *vm, const char *disk, const char *latest);

/* FUSE lookup of NAME in files/DISPLAY/ of VM/DISK (a partition folder). */
void files_point_lookup (fuse_req_t req, const char *vm, const char *disk,
                         const char *display, const char *name);

/* FUSE lookup of NAME in the guest folder PARENT. */
void files_lookup (fuse_req_t req, fuse_ino_t parent, const char *name);

/* FUSE getattr of a guest inode. */
void files_getattr (fuse_req_t req, fuse_ino_t ino);

/* FUSE readlink of a guest symbolic link. */
void files_readlink (fuse_req_t req, fuse_ino_t ino);

/* FUSE opendir of a guest folder: the listing is built once per open. */
void files_opendir (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* FUSE readdir of a guest folder opened by files_opendir. */
void files_readdir (fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);

/* Free the listing of files_opendir. */
void files_releasedir (struct fuse_file_info *fi);

/* FUSE open of a guest file (read-only; EROFS for writes). */
void files_open (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);

/* FUSE read of a guest file opened by files_open. */
void files_read (fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);

/* FUSE lseek (SEEK_DATA / SEEK_HOLE) of a guest file opened by files_open. */
void files_lseek (fuse_req_t req, off_t off, int whence, struct fuse_file_info *fi);

/* Close a guest file opened by files_open. */
void files_release (struct fuse_file_info *fi);

/* FUSE listxattr of a guest inode. */
void files_listxattr (fuse_req_t req, fuse_ino_t ino, size_t size);

/* FUSE getxattr of a guest inode. */
void files_getxattr (fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);

/* ---- control file (control.c) ---- */

/* Handle a write of BUF to VM's control file; replies. */
void control_write (fuse_req_t req, fs_vm *vm, const char *buf, size_t size);

/* Handle touch (setattr with times) of VM's control file: an auto backup.
 * Returns 0 or -errno (the caller replies). */
int control_touch (fuse_req_t req, fs_vm *vm);

/* ---- removing restore points (remove.c) ---- */

/* rm of MOUNT/VM/DISK/restore/NAME: remove that restore point from the
 * store, on every disk of VM (a point is one transaction over all disks),
 * as one journaled store operation.  0, or -errno: ENOENT (no such point),
 * EBUSY (a backup or another removal runs, or the point must be rewritten
 * in place while a reader has it open), EPERM (the newest point, or a
 * disk's newest layer: the next incremental continues it), EIO (failed;
 * the reason is in the log and the VM's status). */
int remove_point (fs_vm *vm, const char *disk, const char *name);

/* After a backup of VM that worked, with -o keep=: remove the points the
 * policy does not keep.  Never fails the backup: what it did or why it
 * could not is logged and shown in status (tried again after the next). */
void remove_prune_after_backup (fs_vm *vm);

/* ---- status (status.c) ---- */

/* <vm>/status as a malloc'd JSON text. */
char *status_vm_text (fs_vm *vm);

/* .status as a malloc'd JSON text. */
char *status_all_text (void);

/* .metrics as a malloc'd Prometheus text. */
char *status_metrics_text (void);

/* Number of QEMU view refreshes still in flight (shutdown: the store must
 * stay open while one runs). */
int status_refreshes_active (void);

/* ---- verify of the store (verify.c) ---- */

/* Start verifying VM's restore points in a thread of its own: 0, or
 * -EBUSY (one runs already), -ESHUTDOWN, -EAGAIN (no thread). */
int verify_start (fs_vm *vm);

/* The "verify" object of <vm>/status (the caller holds VM's lock): a new
 * reference, or NULL when no verify ran since the mount. */
json_object *verify_status_json (const fs_vm *vm);

/* Number of verify threads still running (they use the store). */
int verify_active (void);

/* ---- error mapping (errmap.c) ---- */

/* The errno for qb error CODE: the one table of the project (EIO for codes
 * without a better errno, never 0 for a failure). */
int fs_err_errno (int code);

/* The errno for the current thread's last qb error. */
int fs_errno (void);

/* The errno for a failed SEEK_DATA/SEEK_HOLE with qb error CODE: ENXIO when
 * there is no such extent, else as fs_err_errno. */
int fs_seek_errno (int code);

/* True if a chain reader failure with CODE says the stored data is bad
 * (remembered as damage); false for failures that may pass (out of memory or
 * file descriptors, interrupted, busy), which are never recorded. */
bool fs_err_is_damage (int code);

/* The errno a failed backup returns to the writer: EBUSY, EHOSTDOWN, ENOSPC,
 * EINTR (cancelled) or EIO. */
int fs_backup_errno (int code);

/* The errno a failed removal of a restore point (rm) returns for CODE:
 * ENOENT, EBUSY (busy, try again), EPERM (never removed), else as fs_err_errno. */
int fs_remove_errno (int code);

/* ---- notifications (notify.c) ---- */

/* After a backup of VM at LEVEL ended with RESULT ("ok", "failed",
 * "canceled"), start fs_cfg.on_success or on_failure with /bin/sh -c in the
 * background, with QB_VM, QB_LEVEL, QB_POINT (POINT, "" if none),
 * QB_RESULT, QB_REASON (REASON, control bytes as \xNN), QB_BYTES and
 * QB_SECONDS in its environment, stdin and output on /dev/null.  At most one
 * runs per VM (a second is skipped and logged); one that overstays
 * fs_cfg.notify_timeout gets SIGTERM, 5 s later SIGKILL (its whole process
 * group).  Never waits for the command; failures are logged. */
void notify_backup_end (fs_vm *vm, const char *level, const char *point, const char *result,
                        const char *reason, uint64_t bytes, double seconds);

/* ---- the daemon's log (log.c) ---- */

/* Log in the background to syslog as well as stderr (from main). */
void fs_log_init (bool foreground);

/* Log one line: "qmpbackupfs: " + the formatted text, with every control
 * byte, DEL and byte >= 0x80 written as \xNN (text from guests and QMP
 * peers cannot forge lines or send terminal escapes). */
void fs_log (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* Copy IN into OUT (OUTLEN bytes) as the log writes text: control bytes, DEL
 * and bytes >= 0x80 as \xNN, "..." when it does not fit. */
void fs_log_escape (const char *in, char *out, size_t outlen);

/* ---- the tree (tree.c) ---- */

extern const struct fuse_lowlevel_ops fs_ops;

#endif
