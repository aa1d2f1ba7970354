/* qgastatus — talk to a guest agent socket once; a helper for the guest tests.
 *
 *   qgastatus [--timeout SEC] SOCKET status|freeze|thaw|ping
 *
 * status prints "frozen" or "thawed"; freeze and thaw print the number of
 * filesystems they froze or thawed; ping prints "ok".  Exits 0 on success,
 * 1 (with the reason on stderr) when the agent fails or does not answer. */
#include "qmp/qga.h"
#include "common/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Print usage on stderr and exit 2. */
static void
usage (void)
{
  fprintf (stderr, "usage: qgastatus [--timeout SEC] SOCKET status|freeze|thaw|ping\n");
  exit (2);
}

int
main (int argc, char **argv)
{
  int timeout_s = 10;
  int i = 1;
  if (i + 1 < argc && strcmp (argv[i], "--timeout") == 0) {
    timeout_s = atoi (argv[i + 1]);
    i += 2;
  }
  if (argc - i != 2 || timeout_s <= 0)
    usage ();
  const char *sock = argv[i], *what = argv[i + 1];
  int timeout_ms = timeout_s * 1000;

  qga *g = qga_connect (sock, timeout_ms);
  if (!g) {
    fprintf (stderr, "qgastatus: %s: %s\n", sock, qb_error_msg ());
    return 1;
  }
  int r;
  if (strcmp (what, "status") == 0) {
    r = qga_frozen (g, timeout_ms);
    if (r >= 0)
      printf ("%s\n", r ? "frozen" : "thawed");
  }
  else if (strcmp (what, "freeze") == 0 || strcmp (what, "thaw") == 0) {
    r = what[0] == 'f' ? qga_freeze (g, timeout_ms) : qga_thaw (g, timeout_ms);
    if (r >= 0)
      printf ("%d\n", r);
  }
  else if (strcmp (what, "ping") == 0) {
    r = qga_ping (g, timeout_ms);
    if (r == 0)
      printf ("ok\n");
  }
  else {
    qga_close (g);
    usage ();
  }
  if (r < 0)
    fprintf (stderr, "qgastatus: %s: %s\n", what, qb_error_msg ());
  qga_close (g);
  return r < 0 ? 1 : 0;
}
