/* qmpbackupfs — `qmprebase prune`: apply a retention policy to one VM. */
#ifndef QB_TOOLS_PRUNE_H
#define QB_TOOLS_PRUNE_H

#include "store/store.h"

#include <stdbool.h>

/* Prune the VM folder DIR (STORE/<vm>) by POLICY: print one line per
 * restore point ("keep T (rule)" / "remove T"), then the space freed (with
 * DRY_RUN: what would be done), or one JSON object with JSON.  The exit
 * code: 0 done, 1 failed. */
int prune_run (const char *dir, const store_retention *policy, bool dry_run, bool json);

/* Remove the restore points NAMES[0..N-1] (ids or the mount's names, with
 * or without ".img") of the VM folder DIR on every disk, as one journaled
 * store operation; with DRY_RUN only check and say what would be done.
 * The exit code: 0 done, 1 failed. */
int prune_remove_run (const char *dir, char *const *names, size_t n, bool dry_run);

#endif
