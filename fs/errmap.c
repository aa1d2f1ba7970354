/* qmpbackupfs — the one place where the project's error codes become errno
 * values for the kernel, and where a failure is judged damage or passing. */
#include <errno.h>

#include "common/error.h"
#include "fs/fs.h"

/* The errno for qb error CODE (the one table). */
int
fs_err_errno (int code)
{
  switch ((qb_err) code) {
  case QB_OK: return EIO;         /* a failure without a code */
  case QB_EINVAL: return EINVAL;
  case QB_ENOENT: return ENOENT;
  case QB_EBUSY: return EBUSY;
  case QB_EHOSTDOWN: return EHOSTDOWN;
  case QB_ETIMEDOUT: return ETIMEDOUT;
  case QB_ECANCELED: return ECANCELED;
  case QB_ENOSPC: return ENOSPC;
  case QB_ENOMEM: return ENOMEM;
  case QB_EPERM: return EACCES;
  case QB_EAGAIN: return EAGAIN;
  case QB_EIO: case QB_EDAMAGED: case QB_EPROTO: case QB_EQMP: case QB_ENOCHAIN:
    return EIO;
  }
  return EIO;
}

/* The errno for the current thread's last qb error (EIO when none is set). */
int
fs_errno (void)
{
  return fs_err_errno (qb_error_code ());
}

/* The errno for a failed SEEK_DATA/SEEK_HOLE. */
int
fs_seek_errno (int code)
{
  return code == QB_ENOENT ? ENXIO : EIO;
}

/* True if a chain reader failure says the stored data is bad: damaged
 * content or an I/O error on a layer; never a resource shortage (out of
 * descriptors or memory), a cancel or a timeout, which may pass. */
bool
fs_err_is_damage (int code)
{
  return !qb_err_is_transient ((qb_err) code) && (code == QB_EDAMAGED || code == QB_EIO);
}

/* The errno a failed backup returns to the writer. */
int
fs_backup_errno (int code)
{
  switch ((qb_err) code) {
  case QB_EBUSY: return EBUSY;
  case QB_EHOSTDOWN: return EHOSTDOWN;
  case QB_ENOSPC: return ENOSPC;
  case QB_ECANCELED: return EINTR;
  default: return EIO;
  }
}

/* The errno a failed removal of a restore point (rm) returns. */
int
fs_remove_errno (int code)
{
  switch ((qb_err) code) {
  case QB_ENOENT: return ENOENT;
  case QB_EBUSY: case QB_EAGAIN: return EBUSY;
  case QB_EINVAL: return EPERM;      /* the newest point: never removed */
  default: return fs_err_errno (code);
  }
}
