/* qmpbackupfs — thaw guard: a small process, started right before a guest
 * freeze, that thaws the guest if the process that froze it dies.
 *
 * The guard is a grandchild (reparented at once, never a zombie of the
 * caller), in its own session, ignoring SIGINT/SIGTERM/SIGHUP, holding no
 * file descriptor but its end of a socket pair (stdio on /dev/null): it keeps no
 * agent or QMP socket, no /dev/fuse, no terminal or log pipe open.  It
 * waits on that channel.  When the caller says "thawed" (thawguard_release with
 * THAWED true) it exits.  When the channel closes without that word (the
 * caller died, even by SIGKILL, or gave up its own thaw) it connects to the
 * agent socket itself (QEMU's chardev accepts the next client once the
 * caller's connection is gone), resynchronises (0xFF, guest-sync-delimited),
 * sends guest-fsfreeze-thaw at once, behind any freeze still running in the
 * guest, and repeats thaw until guest-fsfreeze-status answers "thawed" or
 * THAWGUARD_BUDGET_MS pass.  After fork it uses only async-signal-safe
 * system calls, so it is safe to start from a multi-threaded process. */
#ifndef QB_THAWGUARD_H
#define QB_THAWGUARD_H

#include <stdbool.h>

#define THAWGUARD_BUDGET_MS 120000   /* how long the guard keeps trying once on its own */

typedef struct thawguard thawguard;

/* Start a guard for the guest agent socket at AGENT_PATH that, once on its
 * own, tries for BUDGET_MS (THAWGUARD_BUDGET_MS when <= 0).  NULL with an
 * error (QB_EINVAL path too long, or the fork failed). */
thawguard *thawguard_start (const char *agent_path, int budget_ms);

/* Let go of guard TG: THAWED true tells it the guest is thawed (it exits);
 * false hands the thaw over to it (close the agent connection first, or it
 * cannot connect).  Frees TG; NULL is fine. */
void thawguard_release (thawguard *tg, bool thawed);

#endif
