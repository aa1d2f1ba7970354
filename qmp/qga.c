/* qmpbackupfs — QEMU guest agent client (see qga.h).  The agent has no
 * command ids: replies come in order.  Before the first command, and after
 * any command whose reply we did not read, the stream is resynchronised with
 * guest-sync-delimited and a random id. */
#include "qga.h"
#include "jsonio.h"
#include "common/error.h"
#include "common/util.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

struct qga {
  jsonio *io;
  char *path;
  bool in_sync;     /* false until a sync succeeds, and after a lost reply */
};

/* Milliseconds left until DEADLINE, at least 0. */
static int
left_ms (uint64_t deadline)
{
  uint64_t now = qb_mono_ms ();
  return now >= deadline ? 0 : (int) (deadline - now);
}

/* A random positive id that fits a JSON int. */
static int64_t
random_id (void)
{
  uint32_t r = 0;
  if (getrandom (&r, sizeof r, GRND_NONBLOCK) != sizeof r)
    r = (uint32_t) (qb_now_us () ^ (uint64_t) getpid () << 16);
  return (int64_t) (r & 0x7fffffff) + 1;
}

/* Resynchronise: send 0xFF and guest-sync-delimited with a random id, skip
 * input to the agent's 0xFF, and read replies until one carries our id. */
static int
qga_sync (qga *g, uint64_t deadline)
{
  int64_t id = random_id ();
  static const unsigned char ff = 0xff;
  json_object *msg = json_object_new_object ();
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "id", json_object_new_int64 (id));
  json_object_object_add (msg, "execute", json_object_new_string ("guest-sync-delimited"));
  json_object_object_add (msg, "arguments", args);
  int r = jsonio_send_raw (g->io, &ff, 1, left_ms (deadline));
  if (r == 0)
    r = jsonio_send (g->io, msg, left_ms (deadline));
  json_object_put (msg);
  if (r < 0)
    goto fail;
  for (;;) {
    if (jsonio_skip_to_delimiter (g->io, left_ms (deadline)) < 0)
      goto fail;
    json_object *m = jsonio_recv (g->io, left_ms (deadline));
    if (!m) {
      if (qb_error_code () == QB_EPROTO)
        continue;   /* junk after a delimiter: look for the next one */
      goto fail;
    }
    json_object *ret = NULL;
    bool match = json_object_object_get_ex (m, "return", &ret)
      && json_object_is_type (ret, json_type_int) && json_object_get_int64 (ret) == id;
    json_object_put (m);
    if (match) {
      g->in_sync = true;
      return 0;
    }
  }
 fail:
  if (qb_error_code () == QB_ETIMEDOUT)
    qb_error_set (QB_ETIMEDOUT, "the guest agent on %s did not answer the sync handshake "
                  "in time (is the agent running in the guest?)", g->path);
  else
    qb_error_prefix ("synchronising with the guest agent on %s", g->path);
  return -1;
}

qga *
qga_connect (const char *path, int timeout_ms)
{
  uint64_t deadline = qb_mono_ms () + (timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
  int fd = jsonio_connect_unix (path, timeout_ms);
  if (fd < 0)
    return NULL;
  qga *g = qb_calloc (1, sizeof *g);
  g->io = jsonio_new (fd);
  jsonio_set_limits (g->io, JSONIO_QGA_MAX_BYTES, JSONIO_QGA_MAX_VALUES);
  g->path = qb_strdup (path);
  if (qga_sync (g, deadline) < 0) {
    qga_close (g);
    return NULL;
  }
  return g;
}

void
qga_close (qga *g)
{
  if (!g)
    return;
  jsonio_free (g->io);
  free (g->path);
  free (g);
}

void
qga_set_cancel (qga *g, const atomic_int *cancel)
{
  jsonio_set_cancel (g->io, cancel);
}

/* Render guest-sent string S (any JSON value; DFLT when NULL) printable
 * into OUT (OUTLEN bytes): control bytes, ESC, newlines, non-ASCII escaped. */
static void
guest_text (json_object *s, const char *dflt, char *out, size_t outlen)
{
  const char *t = s ? json_object_get_string (s) : dflt;
  size_t len = s && json_object_is_type (s, json_type_string)
    ? (size_t) json_object_get_string_len (s) : strlen (t ? t : "");
  jsonio_sanitize (t ? t : "", len, out, outlen);
}

json_object *
qga_execute (qga *g, const char *cmd, json_object *args, int timeout_ms)
{
  uint64_t deadline = qb_mono_ms () + (timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
  if (!g->in_sync && qga_sync (g, deadline) < 0) {
    json_object_put (args);
    return NULL;
  }
  json_object *msg = json_object_new_object ();
  json_object_object_add (msg, "execute", json_object_new_string (cmd));
  if (args)
    json_object_object_add (msg, "arguments", args);
  g->in_sync = false;     /* until the reply is read */
  int r = jsonio_send (g->io, msg, left_ms (deadline));
  json_object_put (msg);
  if (r < 0) {
    qb_error_prefix ("sending %s to the guest agent on %s", cmd, g->path);
    return NULL;
  }
  json_object *m = jsonio_recv (g->io, left_ms (deadline));
  if (!m) {
    if (qb_error_code () == QB_ETIMEDOUT)
      qb_error_set (QB_ETIMEDOUT, "guest agent on %s: no reply to %s within %d ms",
                    g->path, cmd, timeout_ms);
    else
      qb_error_prefix ("guest agent on %s, command %s", g->path, cmd);
    return NULL;
  }
  g->in_sync = true;
  json_object *ret = NULL, *err = NULL;
  if (json_object_object_get_ex (m, "error", &err)) {
    json_object *cls = NULL, *desc = NULL;
    json_object_object_get_ex (err, "class", &cls);
    json_object_object_get_ex (err, "desc", &desc);
    /* Guest text: escaped before it reaches any message, log or terminal. */
    char cbuf[64], dbuf[QGA_TEXT_MAX];
    guest_text (cls, "GenericError", cbuf, sizeof cbuf);
    guest_text (desc, "(no description)", dbuf, sizeof dbuf);
    qb_error_set (QB_EQMP, "guest agent: %s: %s: %s", cmd, cbuf, dbuf);
    json_object_put (m);
    return NULL;
  }
  if (!json_object_object_get_ex (m, "return", &ret) || !ret) {
    json_object_put (m);
    qb_error_set (QB_EPROTO, "guest agent: reply to %s has neither \"return\" nor \"error\"", cmd);
    return NULL;
  }
  json_object_get (ret);
  json_object_put (m);
  return ret;
}

int
qga_ping (qga *g, int timeout_ms)
{
  json_object *r = qga_execute (g, "guest-ping", NULL, timeout_ms);
  if (!r)
    return -1;
  json_object_put (r);
  return 0;
}

/* Run a freeze/thaw CMD that returns a count: the count, or -1. */
static int
count_command (qga *g, const char *cmd, int timeout_ms)
{
  json_object *r = qga_execute (g, cmd, NULL, timeout_ms);
  if (!r)
    return -1;
  if (!json_object_is_type (r, json_type_int) || json_object_get_int64 (r) < 0
      || json_object_get_int64 (r) > INT32_MAX) {
    json_object_put (r);
    return qb_error_set (QB_EPROTO, "guest agent: %s returned no count", cmd);
  }
  int n = json_object_get_int (r);
  json_object_put (r);
  return n;
}

int
qga_freeze (qga *g, int timeout_ms)
{
  return count_command (g, "guest-fsfreeze-freeze", timeout_ms);
}

int
qga_thaw (qga *g, int timeout_ms)
{
  return count_command (g, "guest-fsfreeze-thaw", timeout_ms);
}

int
qga_frozen (qga *g, int timeout_ms)
{
  json_object *r = qga_execute (g, "guest-fsfreeze-status", NULL, timeout_ms);
  if (!r)
    return -1;
  const char *s = json_object_is_type (r, json_type_string) ? json_object_get_string (r) : "";
  int v = strcmp (s, "frozen") == 0 ? 1 : strcmp (s, "thawed") == 0 ? 0 : -2;
  if (v == -2) {
    char buf[QGA_TEXT_MAX];
    guest_text (r, "", buf, sizeof buf);
    qb_error_set (QB_EPROTO, "guest agent: unexpected fsfreeze status \"%s\"", buf);
  }
  json_object_put (r);
  return v < 0 ? -1 : v;
}
