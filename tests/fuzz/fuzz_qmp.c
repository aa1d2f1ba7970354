/* Fuzz target: the QMP client (qmp/qmp.c over qmp/jsonio.c).
 *
 * Input: one mode byte, then everything a QMP server says before closing:
 * greeting, replies (the client numbers its commands "qb-1", "qb-2", ...)
 * and events, sent from a thread so megabytes of events or an amplifying
 * reply reach the client's limits.  After the handshake the client runs a few commands, one HMP
 * command, and drains the events, as the backup engine does.  Invariants:
 * no crash, errors are recorded with a message, results have the promised
 * types, the error class is always a terminated short string. */
#include "fuzz-feed.h"
#include "common/error.h"
#include "qmp/qmp.h"

#include <string.h>

#define MAX_INPUT (8u << 20)
#define TIMEOUT_MS 5000     /* the peer always closes: no wait lasts */

/* An error was recorded, of a kind a peer can cause. */
static void
check_error (const char *what)
{
  qb_err e = qb_error_code ();
  FUZZ_CHECK (*qb_error_msg () != '\0', "%s: error without a message", what);
  FUZZ_CHECK (e == QB_EHOSTDOWN || e == QB_EPROTO || e == QB_EQMP || e == QB_EBUSY
              || e == QB_ETIMEDOUT, "%s: unexpected error %s: %s",
              what, qb_err_name (e), qb_error_msg ());
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 1 || size > MAX_INPUT)
    return 0;
  unsigned mode = data[0];
  data++, size--;
  fuzz_feed f;
  fuzz_feed_start (&f, data, size);
  qb_error_clear ();
  qmp *q = qmp_new_fd (f.sv[0], "fuzz", TIMEOUT_MS);
  if (!q) {
    check_error ("handshake");
    fuzz_feed_stop (&f);
    return 0;
  }
  unsigned ncmd = 1 + (mode & 7);
  for (unsigned i = 0; i < ncmd; i++) {
    qb_error_clear ();
    json_object *r;
    if (i == 1 && (mode & 8)) {
      char *out = qmp_hmp (q, "info block", TIMEOUT_MS);
      if (!out) {
        check_error ("hmp");
        if (qb_error_code () == QB_EHOSTDOWN)
          break;
      }
      free (out);
      continue;
    }
    json_object *args = NULL;
    if (mode & 16) {
      args = json_object_new_object ();
      json_object_object_add (args, "device", json_object_new_string ("drive0"));
    }
    r = qmp_execute (q, i & 1 ? "query-block-jobs" : "query-status", args, TIMEOUT_MS);
    const char *cls = qmp_last_error_class (q);
    FUZZ_CHECK (strlen (cls) < 64, "error class too long");
    if (r) {
      json_object_put (r);
      continue;
    }
    check_error ("execute");
    if (qb_error_code () == QB_EHOSTDOWN)
      break;
  }
  for (;;) {
    json_object *ev = qmp_next_event (q, TIMEOUT_MS);
    if (!ev)
      break;
    FUZZ_CHECK (json_object_object_get_ex (ev, "event", NULL), "event without \"event\"");
    json_object_put (ev);
  }
  (void) qmp_events_lost (q);
  qmp_close (q);
  fuzz_feed_stop (&f);
  return 0;
}
