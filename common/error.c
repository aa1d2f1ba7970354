/* qmpbackupfs — thread-local error state (see error.h). */
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define QB_ERRMSG_MAX 1024

static _Thread_local qb_err last_code;
static _Thread_local char last_msg[QB_ERRMSG_MAX];

int
qb_error_set (qb_err code, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (last_msg, sizeof last_msg, fmt, ap);
  va_end (ap);
  last_code = code;
  return -1;
}

int
qb_error_set_errno (int errnum, const char *fmt, ...)
{
  char buf[QB_ERRMSG_MAX];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  snprintf (last_msg, sizeof last_msg, "%.900s: %.100s", buf, strerror (errnum));
  last_code = qb_err_from_errno (errnum);
  return -1;
}

void
qb_error_prefix (const char *fmt, ...)
{
  char pre[QB_ERRMSG_MAX], old[QB_ERRMSG_MAX];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (pre, sizeof pre, fmt, ap);
  va_end (ap);
  memcpy (old, last_msg, sizeof old);
  snprintf (last_msg, sizeof last_msg, "%.400s: %.600s", pre, old);
}

const char *
qb_error_msg (void)
{
  return last_msg;
}

qb_err
qb_error_code (void)
{
  return last_code;
}

void
qb_error_clear (void)
{
  last_code = QB_OK;
  last_msg[0] = '\0';
}

const char *
qb_err_name (qb_err code)
{
  switch (code) {
  case QB_OK: return "ok";
  case QB_EINVAL: return "invalid";
  case QB_ENOENT: return "not-found";
  case QB_EIO: return "io-error";
  case QB_EDAMAGED: return "damaged";
  case QB_EBUSY: return "busy";
  case QB_EHOSTDOWN: return "vm-unreachable";
  case QB_ETIMEDOUT: return "timeout";
  case QB_ECANCELED: return "canceled";
  case QB_EPROTO: return "protocol-error";
  case QB_EQMP: return "qemu-error";
  case QB_ENOSPC: return "no-space";
  case QB_ENOMEM: return "out-of-memory";
  case QB_ENOCHAIN: return "no-chain";
  case QB_EPERM: return "permission-denied";
  case QB_EAGAIN: return "temporary";
  }
  return "unknown";
}

qb_err
qb_err_from_errno (int errnum)
{
  switch (errnum) {
  case 0: return QB_OK;
  case EINVAL: return QB_EINVAL;
  case ENOENT: case ENOTDIR: return QB_ENOENT;
  case EBUSY: case EWOULDBLOCK: return QB_EBUSY;
  case EHOSTDOWN: case ECONNREFUSED: case ENOTCONN: case ECONNRESET: case EPIPE:
    return QB_EHOSTDOWN;
  case ETIMEDOUT: return QB_ETIMEDOUT;
  case ECANCELED: case EINTR: return QB_ECANCELED;
  case ENOSPC: case EDQUOT: return QB_ENOSPC;
  case ENOMEM: return QB_ENOMEM;
  case EMFILE: case ENFILE: case ENOBUFS: return QB_EAGAIN;
  case EACCES: case EPERM: case EROFS: return QB_EPERM;
  default: return QB_EIO;
  }
}

/* True for QB_EAGAIN and QB_ENOMEM. */
int
qb_err_is_transient (qb_err code)
{
  return code == QB_EAGAIN || code == QB_ENOMEM;
}
