/* qmpbackupfs — QMP client (see qmp.h).  One connection, one command in
 * flight at a time; replies are matched by id, events are queued. */
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
  /* Event queue: a ring of at most QMP_EVENT_QUEUE_MAX events. */
  json_object *events[QMP_EVENT_QUEUE_MAX];
  size_t ev_head, ev_count;
  bool events_lost;
};

/* Milliseconds left until DEADLINE, at least 0. */
static int
left_ms (uint64_t deadline)
{
  uint64_t now = qb_mono_ms ();
  return now >= deadline ? 0 : (int) (deadline - now);
}

/* Append EV (consumed) to the queue, dropping the oldest when full. */
static void
queue_event (qmp *q, json_object *ev)
{
  if (q->ev_count == QMP_EVENT_QUEUE_MAX) {
    json_object_put (q->events[q->ev_head]);
    q->ev_head = (q->ev_head + 1) % QMP_EVENT_QUEUE_MAX;
    q->ev_count--;
    q->events_lost = true;
  }
  q->events[(q->ev_head + q->ev_count) % QMP_EVENT_QUEUE_MAX] = ev;
  q->ev_count++;
}

/* Read the greeting and negotiate capabilities within DEADLINE. */
static int
handshake (qmp *q, uint64_t deadline)
{
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
  json_object *r = qmp_execute (q, "qmp_capabilities", NULL, left_ms (deadline));
  if (!r) {
    qb_error_prefix ("negotiating QMP capabilities on %s", q->path);
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
  int fd = jsonio_connect_unix (path, timeout_ms);
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
  for (size_t i = 0; i < q->ev_count; i++)
    json_object_put (q->events[(q->ev_head + i) % QMP_EVENT_QUEUE_MAX]);
  free (q->path);
  free (q);
}

void
qmp_set_cancel (qmp *q, const atomic_int *cancel)
{
  jsonio_set_cancel (q->io, cancel);
}

/* Turn an {"error": {...}} reply into QB_EQMP "Class: desc"; returns NULL. */
static json_object *
reply_error (qmp *q, const char *cmd, json_object *err)
{
  json_object *cls = NULL, *desc = NULL;
  json_object_object_get_ex (err, "class", &cls);
  json_object_object_get_ex (err, "desc", &desc);
  const char *c = cls ? json_object_get_string (cls) : "GenericError";
  snprintf (q->last_class, sizeof q->last_class, "%s", c ? c : "GenericError");
  qb_error_set (QB_EQMP, "%s: %s", q->last_class,
                desc ? json_object_get_string (desc) : "(no description)");
  (void) cmd;
  return NULL;
}

json_object *
qmp_execute (qmp *q, const char *cmd, json_object *args, int timeout_ms)
{
  uint64_t deadline = qb_mono_ms () + (timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
  char id[32];
  snprintf (id, sizeof id, "qb-%llu", (unsigned long long) ++q->next_id);
  json_object *msg = json_object_new_object ();
  json_object_object_add (msg, "execute", json_object_new_string (cmd));
  if (args)
    json_object_object_add (msg, "arguments", args);
  json_object_object_add (msg, "id", json_object_new_string (id));
  int r = jsonio_send (q->io, msg, left_ms (deadline));
  json_object_put (msg);
  if (r < 0) {
    qb_error_prefix ("sending QMP command %s", cmd);
    return NULL;
  }
  for (;;) {
    json_object *m = jsonio_recv (q->io, left_ms (deadline));
    if (!m) {
      if (qb_error_code () == QB_ETIMEDOUT)
        qb_error_set (QB_ETIMEDOUT, "QMP command %s: no reply within %d ms", cmd, timeout_ms);
      else
        qb_error_prefix ("waiting for the reply to QMP command %s", cmd);
      return NULL;
    }
    if (json_object_object_get_ex (m, "event", NULL)) {
      queue_event (q, m);
      continue;
    }
    json_object *mid = NULL, *ret = NULL, *err = NULL;
    bool has_id = json_object_object_get_ex (m, "id", &mid);
    json_object_object_get_ex (m, "return", &ret);
    json_object_object_get_ex (m, "error", &err);
    /* A reply for an earlier command (one that timed out) is dropped.  An
     * error without id is QEMU failing to parse our request. */
    bool ours = has_id ? (json_object_is_type (mid, json_type_string)
                          && strcmp (json_object_get_string (mid), id) == 0)
                       : err != NULL;
    if (!ours) {
      json_object_put (m);
      continue;
    }
    if (err) {
      reply_error (q, cmd, err);
      json_object_put (m);
      return NULL;
    }
    if (!ret) {
      json_object_put (m);
      qb_error_set (QB_EPROTO, "QMP reply to %s has neither \"return\" nor \"error\"", cmd);
      return NULL;
    }
    json_object_get (ret);
    json_object_put (m);
    return ret;
  }
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
  if (q->ev_count > 0) {
    json_object *ev = q->events[q->ev_head];
    q->ev_head = (q->ev_head + 1) % QMP_EVENT_QUEUE_MAX;
    q->ev_count--;
    return ev;
  }
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
