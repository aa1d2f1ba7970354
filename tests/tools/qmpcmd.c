/* qmpcmd — run one QMP command (or HMP command line, or wait for one event)
 * against a QMP unix socket; a helper for tests.
 *
 *   qmpcmd [--timeout SEC] SOCKET COMMAND [JSON-ARGS]
 *   qmpcmd [--timeout SEC] SOCKET --hmp 'CMDLINE'
 *   qmpcmd [--timeout SEC] SOCKET --wait-event NAME
 *
 * Prints the "return" value (one line of JSON), the HMP output, or the whole
 * event on stdout and exits 0.  A QMP error prints "Class: desc" on stderr and
 * exits 1; so does HMP output that reports a failure. */
#include "qmp/qmp.h"
#include "common/error.h"
#include "common/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Print usage on stderr and exit 2. */
static void
usage (void)
{
  fprintf (stderr,
           "usage: qmpcmd [--timeout SEC] SOCKET COMMAND [JSON-ARGS]\n"
           "       qmpcmd [--timeout SEC] SOCKET --hmp 'CMDLINE'\n"
           "       qmpcmd [--timeout SEC] SOCKET --wait-event NAME\n");
  exit (2);
}

/* True if HMP output TEXT reports a failure.  Note: QEMU 7.2 prints the
 * output of `qemu-io` to its own stdout, not into the HMP reply; only
 * failures such as an unknown device reach the reply. */
static bool
hmp_failed (const char *text)
{
  static const char *const marks[] = {
    "error:", "failed", "unknown command", "not found", "no such", "could not",
    "cannot ", "request out of bounds", "permission denied", "input/output error",
  };
  for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++)
    if (strcasestr (text, marks[i]))
      return true;
  return false;
}

/* Print a failure from the error state and return exit code 1. */
static int
fail (const char *what)
{
  fprintf (stderr, "%s%s%s\n", what ? what : "", what ? ": " : "", qb_error_msg ());
  return 1;
}

int
main (int argc, char **argv)
{
  int timeout_s = 30;
  const char *sock = NULL, *cmd = NULL, *args = NULL, *hmp = NULL, *event = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp (argv[i], "--timeout") == 0 && i + 1 < argc)
      timeout_s = atoi (argv[++i]);
    else if (strcmp (argv[i], "--hmp") == 0 && i + 1 < argc)
      hmp = argv[++i];
    else if (strcmp (argv[i], "--wait-event") == 0 && i + 1 < argc)
      event = argv[++i];
    else if (strncmp (argv[i], "--", 2) == 0)
      usage ();
    else if (!sock)
      sock = argv[i];
    else if (!cmd)
      cmd = argv[i];
    else if (!args)
      args = argv[i];
    else
      usage ();
  }
  if (!sock || (!cmd && !hmp && !event) || (cmd && (hmp || event)) || (hmp && event)
      || timeout_s <= 0)
    usage ();
  int timeout_ms = timeout_s * 1000;

  json_object *jargs = NULL;
  if (args) {
    enum json_tokener_error e;
    jargs = json_tokener_parse_verbose (args, &e);
    if (!jargs || !json_object_is_type (jargs, json_type_object)) {
      fprintf (stderr, "qmpcmd: JSON-ARGS is not a JSON object: %s\n", args);
      return 2;
    }
  }

  qmp *q = qmp_connect (sock, timeout_ms < QMP_CONNECT_TIMEOUT_MS ? timeout_ms
                                                                 : QMP_CONNECT_TIMEOUT_MS);
  if (!q) {
    json_object_put (jargs);
    return fail ("qmpcmd");
  }

  int rc = 0;
  if (cmd) {
    json_object *r = qmp_execute (q, cmd, jargs, timeout_ms);
    if (!r)
      rc = fail (NULL);
    else {
      printf ("%s\n", json_object_to_json_string_ext (r, JSON_C_TO_STRING_PLAIN));
      json_object_put (r);
    }
  }
  else if (hmp) {
    char *out = qmp_hmp (q, hmp, timeout_ms);
    if (!out)
      rc = fail (NULL);
    else {
      /* HMP output uses "\r\n". */
      for (char *s = out, *d = out;; s++) {
        if (*s != '\r')
          *d++ = *s;
        if (!*s)
          break;
      }
      fputs (out, stdout);
      if (hmp_failed (out)) {
        fprintf (stderr, "qmpcmd: HMP command failed: %s\n", hmp);
        rc = 1;
      }
      free (out);
    }
  }
  else {
    uint64_t deadline = qb_mono_ms () + (uint64_t) timeout_ms;
    for (;;) {
      uint64_t now = qb_mono_ms ();
      json_object *ev = qmp_next_event (q, now >= deadline ? 0 : (int) (deadline - now));
      if (!ev) {
        if (qb_error_code () == QB_ETIMEDOUT)
          fprintf (stderr, "qmpcmd: no %s event within %d s\n", event, timeout_s);
        else
          fail ("qmpcmd");
        rc = 1;
        break;
      }
      json_object *name = NULL;
      json_object_object_get_ex (ev, "event", &name);
      if (name && strcmp (json_object_get_string (name), event) == 0) {
        printf ("%s\n", json_object_to_json_string_ext (ev, JSON_C_TO_STRING_PLAIN));
        json_object_put (ev);
        break;
      }
      json_object_put (ev);
    }
  }
  fflush (stdout);
  qmp_close (q);
  return rc;
}
