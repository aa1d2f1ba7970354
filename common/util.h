/* qmpbackupfs — small helpers shared by every part: names, files, time,
 * child processes.  All follow error.h: -1/NULL plus a message on failure. */
#ifndef QB_UTIL_H
#define QB_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* True if NAME can be used as one path component as it is: 1..200 bytes,
 * no '/', not "." or "..", no leading '.', no control characters. */
bool qb_name_is_safe (const char *name);

/* A malloc'd copy of NAME made safe for a path component: '/', control
 * characters and other bytes outside [A-Za-z0-9._+-@:] become '_', a leading
 * '.' becomes '_', length capped at 200.  NULL (QB_EINVAL) for an empty name. */
char *qb_name_sanitize (const char *name);

/* fsync the directory at PATH (makes renames/creations in it durable). */
int qb_fsync_dir (const char *path);

/* fsync the file at PATH. */
int qb_fsync_path (const char *path);

/* mkdir -p with MODE for every created component. */
int qb_mkdir_p (const char *path, mode_t mode);

/* malloc'd printf; aborts on out-of-memory (callers never see NULL). */
char *qb_asprintf (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* strdup that aborts on out-of-memory; NULL in, NULL out. */
char *qb_strdup (const char *s);

/* calloc that aborts on out-of-memory. */
void *qb_calloc (size_t n, size_t size);

/* realloc that aborts on out-of-memory. */
void *qb_realloc (void *p, size_t size);

/* Run ARGV[0] (searched in PATH) with ARGV, wait for it.  Returns 0 when it
 * exits 0; otherwise -1 with QB_EIO and its first line of stderr in the
 * message.  Standard output is discarded unless OUT is non-NULL, in which
 * case it is captured (malloc'd, NUL-terminated, up to 16 MiB). */
int qb_run (char *const argv[], char **out);

/* Parse a byte count "N" with an optional k/M/G suffix (powers of 1024)
 * into *OUT; -1 (QB_EINVAL) if malformed or out of range. */
int qb_parse_size (const char *s, uint64_t *out);

/* Wall-clock time, microseconds since the epoch (UTC). */
int64_t qb_now_us (void);

/* Monotonic time in milliseconds. */
uint64_t qb_mono_ms (void);

/* Format T_US as "YYYY-MM-DDTHH:MM:SSZ" into BUF (at least 21 bytes). */
void qb_format_utc (int64_t t_us, char *buf, size_t len);

/* Human-readable byte count ("1.5 GiB") into BUF. */
void qb_format_bytes (uint64_t bytes, char *buf, size_t len);

/* Open REL (relative, '/'-separated, no empty, "." or ".." component)
 * beneath the directory DIRFD without following any symbolic link: each
 * directory is opened O_DIRECTORY|O_NOFOLLOW, the last component with
 * FLAGS|O_NOFOLLOW|O_CLOEXEC (a file it creates gets mode 0600).  The
 * fd, or -1 with errno set (ELOOP: a
 * component is a symbolic link; EINVAL: REL is not such a path); no error
 * is recorded, the caller words it. */
int qb_openat_nofollow (int dirfd, const char *rel, int flags);

/* True for errno values that say a resource ran out for a moment (EMFILE,
 * ENFILE, ENOMEM, ENOBUFS, EAGAIN, EINTR): never a sign of damage. */
bool qb_errno_is_transient (int errnum);

#endif
