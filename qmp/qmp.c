/* qmpbackupfs — QMP client (see qmp.h).  One connection, one command in
 * flight at a time, or a batch of up to QMP_BATCH_MAX sent at once (QEMU runs
 * them in order); replies are matched by id, events are queued. */
#include "qmp.h"
#include "jsonio.h"
#include "common/error.h"
#include "common/util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qmp {
  jsonio *io;
  char *path;
  uint64_t next_id;
  char last_class[64];
  /* Event queue: a ring of at most QMP_EVENT_QUEUE_MAX events, with the
   * wire bytes and values each one cost, and their sums. */
  json_object *events[QMP_EVENT_QUEUE_MAX];
  size_t ev_bytes[QMP_EVENT_QUEUE_MAX], ev_values[QMP_EVENT_QUEUE_MAX];
  size_t ev_head, ev_count, ev_sum_bytes, ev_sum_values;
  bool events_lost;
};

/* Milliseconds left until DEADLINE, at least 0. */
static int
left_ms (uint64_t deadline)
{
  uint64_t now = qb_mono_ms ();
  return now >= deadline ? 0 : (int) (deadline - now);
}

/* Remove the oldest queued event and return it (the caller owns it). */
static json_object *
dequeue_event (qmp *q)
{
  json_object *ev = q->events[q->ev_head];
  q->ev_sum_bytes -= q->ev_bytes[q->ev_head];
  q->ev_sum_values -= q->ev_values[q->ev_head];
  q->ev_head = (q->ev_head + 1) % QMP_EVENT_QUEUE_MAX;
  q->ev_count--;
  return ev;
}

#define STUB_NAME_MAX 64   /* event names are short: QEMU's longest is ~30 */

/* EV (consumed) reduced to a small stub: {"event": its name (a string of
 * at most STUB_NAME_MAX bytes), "timestamp" (only when it is an object of
 * two integers, as QEMU sends it), "data-dropped": true}. */
static json_object *
event_stub (json_object *ev)
{
  json_object *stub = json_object_new_object (), *v, *sec, *usec;
  const char *name = "";
  if (json_object_object_get_ex (ev, "event", &v) && json_object_is_type (v, json_type_string))
    name = json_object_get_string (v);
  size_t len = strnlen (name, STUB_NAME_MAX);
  json_object_object_add (stub, "event", json_object_new_string_len (name, (int) len));
  if (json_object_object_get_ex (ev, "timestamp", &v) && json_object_is_type (v, json_type_object)
      && json_object_object_length (v) == 2
      && json_object_object_get_ex (v, "seconds", &sec) && json_object_is_type (sec, json_type_int)
      && json_object_object_get_ex (v, "microseconds", &usec)
      && json_object_is_type (usec, json_type_int))
    json_object_object_add (stub, "timestamp", json_object_get (v));
  json_object_object_add (stub, "data-dropped", json_object_new_boolean (1));
  json_object_put (ev);
  return stub;
}

/* Append EV (consumed, just read from the socket) to the queue: an
 * oversized event loses its data, the oldest go while the queue is over a
 * limit in events, bytes or values. */
static void
queue_event (qmp *q, json_object *ev)
{
  size_t bytes, values;
  jsonio_last_size (q->io, &bytes, &values);
  if (bytes > QMP_EVENT_KEEP_BYTES || values > QMP_EVENT_KEEP_VALUES) {
    ev = event_stub (ev);
    size_t len;
    json_object_to_json_string_length (ev, JSON_C_TO_STRING_PLAIN, &len);
    bytes = len;
    values = 8;
    q->events_lost = true;
  }
  while (q->ev_count > 0 && (q->ev_count == QMP_EVENT_QUEUE_MAX
                             || q->ev_sum_bytes + bytes > QMP_EVENT_QUEUE_BYTES
                             || q->ev_sum_values + values > QMP_EVENT_QUEUE_VALUES)) {
    json_object_put (dequeue_event (q));
    q->events_lost = true;
  }
  size_t slot = (q->ev_head + q->ev_count) % QMP_EVENT_QUEUE_MAX;
  q->events[slot] = ev;
  q->ev_bytes[slot] = bytes;
  q->ev_values[slot] = values;
  q->ev_sum_bytes += bytes;
  q->ev_sum_values += values;
  q->ev_count++;
}

static int send_command (qmp *q, const char *cmd, json_object *args, uint64_t deadline,
                         uint64_t *num);
static int read_replies (qmp *q, const char *const *cmds, size_t n, uint64_t first,
                         uint64_t deadline, int timeout_ms, json_object **out, char **errs,
                         qb_err *codes);

/* Read the greeting and negotiate capabilities within DEADLINE.  The
 * qmp_capabilities command goes out before the greeting is read (QEMU
 * reads it once it greeted us): one round trip less. */
static int
handshake (qmp *q, uint64_t deadline)
{
  uint64_t num;
  if (send_command (q, "qmp_capabilities", NULL, deadline, &num) < 0) {
    qb_error_prefix ("negotiating QMP capabilities on %s", q->path);
    return -1;
  }
  json_object *greet = jsonio_recv (q->io, left_ms (deadline));
  if (!greet) {
    if (qb_error_code () == QB_ETIMEDOUT)
      return qb_error_set (QB_EBUSY, "another client holds the QMP socket %s (it serves one "
                           "client at a time); try again when it is free", q->path);
    qb_error_prefix ("waiting for the QMP greeting on %s", q->path);
    return -1;
  }
  bool ok = json_object_object_get_ex (greet, "QMP", NULL);
  json_object_put (greet);
  if (!ok)
    return qb_error_set (QB_EPROTO, "%s does not speak QMP (no greeting)", q->path);
  static const char *const cmds[] = { "qmp_capabilities" };
  json_object *r = NULL;
  char *err = NULL;
  qb_err code = QB_OK;
  read_replies (q, cmds, 1, num, deadline, left_ms (deadline), &r, &err, &code);
  if (!r) {
    qb_error_set (code, "negotiating QMP capabilities on %s: %s", q->path, err ? err : "?");
    free (err);
    return -1;
  }
  json_object_put (r);
  return 0;
}

qmp *
qmp_new_fd (int fd, const char *name, int timeout_ms)
{
  uint64_t deadline = qb_mono_ms () + (timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
  qmp *q = qb_calloc (1, sizeof *q);
  q->io = jsonio_new (fd);
  q->path = qb_strdup (name ? name : "(fd)");
  if (handshake (q, deadline) < 0) {
    qmp_close (q);
    return NULL;
  }
  return q;
}

qmp *
qmp_connect (const char *path, int timeout_ms)
{
  uint64_t start = qb_mono_ms ();
  int fd = jsonio_connect (path, timeout_ms);
  if (fd < 0)
    return NULL;
  int used = (int) (qb_mono_ms () - start);
  return qmp_new_fd (fd, path, timeout_ms > used ? timeout_ms - used : 0);
}

void
qmp_close (qmp *q)
{
  if (!q)
    return;
  jsonio_free (q->io);
  while (q->ev_count > 0)
    json_object_put (dequeue_event (q));
  free (q->path);
  free (q);
}

void
qmp_set_cancel (qmp *q, const atomic_int *cancel)
{
  jsonio_set_cancel (q->io, cancel);
}

/* Peer string V (any JSON value, may be NULL) escaped into OUT (OUTLEN
 * bytes): control and non-ASCII bytes as \xNN; FALLBACK when V is absent. */
static void
peer_text (json_object *v, const char *fallback, char *out, size_t outlen)
{
  const char *s = v ? json_object_get_string (v) : NULL;
  if (!s)
    s = fallback;
  jsonio_sanitize (s, strlen (s), out, outlen);
}

/* Turn an {"error": {...}} reply into QB_EQMP "Class: desc", both escaped
 * so no peer byte reaches a terminal or log raw; returns NULL. */
static json_object *
reply_error (qmp *q, const char *cmd, json_object *err)
{
  json_object *cls = NULL, *desc = NULL;
  json_object_object_get_ex (err, "class", &cls);
  json_object_object_get_ex (err, "desc", &desc);
  char d[1024];
  peer_text (cls, "GenericError", q->last_class, sizeof q->last_class);
  peer_text (desc, "(no description)", d, sizeof d);
  qb_error_set (QB_EQMP, "%s: %s", q->last_class, d);
  (void) cmd;
  return NULL;
}

/* Send CMD with ARGS (consumed; may be NULL) under id "qb-<n>", its number
 * into *NUM, within DEADLINE; 0 or -1 (transport error). */
static int
send_command (qmp *q, const char *cmd, json_object *args, uint64_t deadline, uint64_t *num)
{
  char id[32];
  *num = ++q->next_id;
  snprintf (id, sizeof id, "qb-%llu", (unsigned long long) *num);
  json_object *msg = json_object_new_object ();
  json_object_object_add (msg, "execute", json_object_new_string (cmd));
  if (args)
    json_object_object_add (msg, "arguments", args);
  json_object_object_add (msg, "id", json_object_new_string (id));
  int r = jsonio_send (q->io, msg, left_ms (deadline));
  json_object_put (msg);
  if (r < 0) {
    qb_error_prefix ("sending QMP command %s", cmd);
    return -1;
  }
  return 0;
}

/* The number N of a reply id "qb-N" (a JSON string), or 0 for anything else. */
static uint64_t
reply_num (json_object *mid)
{
  if (!mid || !json_object_is_type (mid, json_type_string))
    return 0;
  const char *s = json_object_get_string (mid);
  if (strncmp (s, "qb-", 3) != 0 || s[3] < '1' || s[3] > '9')
    return 0;
  uint64_t n = 0;
  for (s += 3; *s; s++) {
    if (*s < '0' || *s > '9' || n > UINT64_MAX / 10 - 1)
      return 0;
    n = n * 10 + (uint64_t) (*s - '0');
  }
  return n;
}

/* Read the replies to the N commands CMDS numbered FIRST..FIRST+N-1 (sent in
 * that order) until DEADLINE: OUT[i] the "return" value (new reference) or
 * NULL, ERRS[i] (malloc'd) the error of command i when it failed.  Events
 * are queued, replies to other (earlier, timed-out) commands dropped.
 * 0 when every reply came (each a success or a QMP error), -1 with the
 * error set on a transport error or timeout (the rest get that error). */
static int
read_replies (qmp *q, const char *const *cmds, size_t n, uint64_t first, uint64_t deadline,
              int timeout_ms, json_object **out, char **errs, qb_err *codes)
{
  size_t left = n;
  bool *done = qb_calloc (n ? n : 1, sizeof *done);
  int rc = 0;
  while (left > 0) {
    json_object *m = jsonio_recv (q->io, left_ms (deadline));
    if (!m) {
      rc = -1;
      break;
    }
    if (json_object_object_get_ex (m, "event", NULL)) {
      queue_event (q, m);
    }
    else {
      json_object *mid = NULL, *ret = NULL, *err = NULL;
      bool has_id = json_object_object_get_ex (m, "id", &mid);
      json_object_object_get_ex (m, "return", &ret);
      json_object_object_get_ex (m, "error", &err);
      /* A reply for an earlier command (one that timed out) is dropped.  An
       * error without id is QEMU failing to parse a request: the first one
       * still waiting gets it. */
      size_t k = n;
      if (has_id) {
        uint64_t num = reply_num (mid);
        if (num >= first && num - first < n && !done[num - first])
          k = (size_t) (num - first);
      }
      else if (err)
        for (k = 0; k < n && done[k]; k++)
          ;
      if (k < n) {
        done[k] = true;
        left--;
        if (err) {
          reply_error (q, cmds[k], err);
          errs[k] = qb_strdup (qb_error_msg ());
          codes[k] = qb_error_code ();
        }
        else if (!ret) {
          errs[k] = qb_asprintf ("QMP reply to %s has neither \"return\" nor \"error\"", cmds[k]);
          codes[k] = QB_EPROTO;
        }
        else
          out[k] = json_object_get (ret);
      }
      json_object_put (m);
    }
    if (left > 0 && left_ms (deadline) == 0) {
      /* The peer kept talking, but not our replies. */
      qb_error_set (QB_ETIMEDOUT, "no reply within %d ms", timeout_ms);
      rc = -1;
      break;
    }
  }
  if (rc < 0) {
    if (qb_error_code () == QB_ETIMEDOUT)
      qb_error_set (QB_ETIMEDOUT, "no reply within %d ms", timeout_ms);
    for (size_t i = 0; i < n; i++)
      if (!done[i]) {
        errs[i] = qb_asprintf (qb_error_code () == QB_ETIMEDOUT
                               ? "QMP command %s: %s" : "waiting for the reply to QMP command %s: %s",
                               cmds[i], qb_error_msg ());
        codes[i] = qb_error_code ();
      }
  }
  free (done);
  return rc;
}

json_object *
qmp_execute (qmp *q, const char *cmd, json_object *args, int timeout_ms)
{
  json_object *ret = NULL;
  qmp_execute_batch (q, &cmd, &args, 1, &ret, timeout_ms);
  return ret;
}

int
qmp_execute_batch (qmp *q, const char *const *cmds, json_object **args, size_t n,
                   json_object **results, int timeout_ms)
{
  uint64_t deadline = qb_mono_ms () + (timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
  for (size_t i = 0; i < n; i++)
    results[i] = NULL;
  if (n == 0)
    return 0;
  if (n > QMP_BATCH_MAX) {
    for (size_t i = 0; i < n; i++)
      json_object_put (args[i]);
    return qb_error_set (QB_EINVAL, "qmp_execute_batch: %zu commands (at most %d)", n,
                         QMP_BATCH_MAX);
  }
  uint64_t first = 0;
  size_t sent = 0;
  int rc = 0;
  for (; sent < n; sent++) {
    uint64_t num;
    if (send_command (q, cmds[sent], args[sent], deadline, &num) < 0) {
      rc = -1;
      break;
    }
    if (sent == 0)
      first = num;
  }
  for (size_t i = sent + (rc < 0); i < n; i++)
    json_object_put (args[i]);    /* never sent */
  if (rc < 0 && sent == 0)
    return -1;
  char *errs[QMP_BATCH_MAX] = { 0 };
  qb_err codes[QMP_BATCH_MAX] = { 0 };
  qb_err send_code = qb_error_code ();
  char *send_msg = rc < 0 ? qb_strdup (qb_error_msg ()) : NULL;
  read_replies (q, cmds, sent, first, deadline, timeout_ms, results, errs, codes);
  /* The error of the first command that failed (or was never sent). */
  rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++)
    if (i >= sent) {
      qb_error_set (send_code, "%s", send_msg);
      rc = -1;
    }
    else if (errs[i]) {
      qb_error_set (codes[i], "%s", errs[i]);
      rc = -1;
    }
  for (size_t i = 0; i < n; i++)
    free (errs[i]);
  free (send_msg);
  return rc;
}

int
qmp_run (qmp *q, const char *cmd, json_object *args, int timeout_ms)
{
  json_object *r = qmp_execute (q, cmd, args, timeout_ms);
  if (!r)
    return -1;
  json_object_put (r);
  return 0;
}

const char *
qmp_last_error_class (qmp *q)
{
  return q->last_class;
}

bool
qmp_events_lost (qmp *q)
{
  return q->events_lost;
}

json_object *
qmp_next_event (qmp *q, int timeout_ms)
{
  if (q->ev_count > 0)
    return dequeue_event (q);
  uint64_t deadline = qb_mono_ms () + (timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
  for (;;) {
    json_object *m = jsonio_recv (q->io, left_ms (deadline));
    if (!m) {
      if (qb_error_code () == QB_ETIMEDOUT)
        qb_error_set (QB_ETIMEDOUT, "no QMP event within %d ms", timeout_ms);
      return NULL;
    }
    if (json_object_object_get_ex (m, "event", NULL))
      return m;
    json_object_put (m);   /* a late reply to a command that timed out */
    if (left_ms (deadline) == 0) {
      qb_error_set (QB_ETIMEDOUT, "no QMP event within %d ms", timeout_ms);
      return NULL;
    }
  }
}

char *
qmp_hmp (qmp *q, const char *cmdline, int timeout_ms)
{
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "command-line", json_object_new_string (cmdline));
  json_object *r = qmp_execute (q, "human-monitor-command", args, timeout_ms);
  if (!r)
    return NULL;
  char *out = qb_strdup (json_object_is_type (r, json_type_string)
                         ? json_object_get_string (r) : "");
  json_object_put (r);
  return out;
}

/* The string member KEY of OBJ, or "". */
const char *
qmp_str (json_object *obj, const char *key)
{
  json_object *v;
  if (!obj || !json_object_object_get_ex (obj, key, &v) || !json_object_is_type (v, json_type_string))
    return "";
  return json_object_get_string (v);
}
