/* qmpbackupfs — one error model for every library in the project.
 *
 * A function that fails returns -1 (or NULL) and leaves a code and a
 * human-readable message in thread-local storage; the caller fetches them
 * with qb_error_code() / qb_error_msg().  Only the FUSE layer (fs/) maps
 * codes to errno values, and only the programs (tools/) map them to exit
 * codes.  Messages say what happened and, where possible, what to do.
 */
#ifndef QB_ERROR_H
#define QB_ERROR_H

#include <stdarg.h>

typedef enum qb_err {
  QB_OK = 0,
  QB_EINVAL,     /* bad input from the user or caller */
  QB_ENOENT,     /* no such VM, disk, restore point or file */
  QB_EIO,        /* I/O error on the store or an image */
  QB_EDAMAGED,   /* store data is damaged (missing layer, bad metadata) */
  QB_EBUSY,      /* lock held, socket held by another client, job running */
  QB_EHOSTDOWN,  /* the VM (its QMP socket) is unreachable */
  QB_ETIMEDOUT,  /* a bounded wait ran out */
  QB_ECANCELED,  /* the caller asked to stop */
  QB_EPROTO,     /* the peer sent something that is not valid QMP/JSON */
  QB_EQMP,       /* QEMU answered a command with an error */
  QB_ENOSPC,     /* the store is full */
  QB_ENOMEM,
  QB_ENOCHAIN,   /* an incremental is impossible (no healthy chain/bitmap) */
  QB_EPERM,      /* permission denied */
  QB_EAGAIN,     /* a resource ran out for a moment (file descriptors, kernel
                    memory): nothing is damaged, the same call may work later */
} qb_err;

/* Record an error for this thread; returns -1 so callers can `return qb_error_set(...)`. */
int qb_error_set (qb_err code, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Like qb_error_set, with the code derived from errnum and ": strerror" appended. */
int qb_error_set_errno (int errnum, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Prepend context ("while ...: ") to the current message, keeping the code. */
void qb_error_prefix (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));

/* The last error's message on this thread ("" if none). */
const char *qb_error_msg (void);

/* The last error's code on this thread (QB_OK if none). */
qb_err qb_error_code (void);

/* Forget the last error on this thread. */
void qb_error_clear (void);

/* Short lower-case name of a code, e.g. "busy". */
const char *qb_err_name (qb_err code);

/* The code that best describes an errno value. */
qb_err qb_err_from_errno (int errnum);

/* True for codes that say a resource ran out (QB_EAGAIN, QB_ENOMEM): the
 * operation may succeed later, so nothing may be recorded as damaged. */
int qb_err_is_transient (qb_err code);

#endif
