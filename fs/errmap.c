/* qmpbackupfs — the one place where the project's error codes become errno
 * values for the kernel. */
#include <errno.h>

#include "common/error.h"
#include "fs/fs.h"

/* The errno for the current thread's last qb error (EIO when none is set). */
int
fs_errno (void)
{
  int e = qb_err_to_errno (qb_error_code ());
  return e > 0 ? e : EIO;
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
