/* Unit test of the QMP client against a scripted fake server thread on a
 * socketpair: handshake, id matching, error replies, events queued while a
 * reply is awaited, queue overflow, a silent or non-QMP server. */
#include "qmp/qmp.h"
#include "qmp/jsonio.h"
#include "testlib.h"

#include <pthread.h>
#include <sys/socket.h>

typedef void (*script_fn) (jsonio *srv);

struct server {
  int fd;
  script_fn script;
  pthread_t thread;
};

/* Server side: read one command, return it (new reference) or NULL. */
static json_object *
srv_read (jsonio *srv, const char *want_cmd, char *id, size_t idlen)
{
  json_object *m = jsonio_recv (srv, 5000), *ex, *jid;
  if (!m)
    return NULL;
  if (!json_object_object_get_ex (m, "execute", &ex)
      || strcmp (json_object_get_string (ex), want_cmd) != 0) {
    fprintf (stderr, "fake server: expected %s, got %s\n", want_cmd,
             json_object_to_json_string (m));
    json_object_put (m);
    return NULL;
  }
  id[0] = '\0';
  if (json_object_object_get_ex (m, "id", &jid))
    snprintf (id, idlen, "%s", json_object_get_string (jid));
  return m;
}

/* Server side: send the text FMT (one %s for the id) plus newline. */
static void
srv_send (jsonio *srv, const char *fmt, const char *id)
{
  char *s = qb_asprintf (fmt, id);
  size_t n = strlen (s);
  jsonio_send_raw (srv, s, n, 5000);
  jsonio_send_raw (srv, "\n", 1, 5000);
  free (s);
}

/* Thread: greeting, capabilities, then the script. */
static void *
server_main (void *arg)
{
  struct server *s = arg;
  jsonio *srv = jsonio_new (s->fd);
  char id[64];
  srv_send (srv, "{\"QMP\": {\"version\": {}, \"capabilities\": []}}%s", "");
  json_object *m = srv_read (srv, "qmp_capabilities", id, sizeof id);
  if (m) {
    srv_send (srv, "{\"return\": {}, \"id\": \"%s\"}", id);
    json_object_put (m);
    if (s->script)
      s->script (srv);
  }
  jsonio_free (srv);
  return NULL;
}

/* Start a fake server running SCRIPT; return the connected client. */
static qmp *
start (struct server *s, script_fn script)
{
  int sv[2];
  CHECK (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  s->fd = sv[1];
  s->script = script;
  CHECK (pthread_create (&s->thread, NULL, server_main, s) == 0);
  qmp *q = qmp_new_fd (sv[0], "fake", 2000);
  CHECK (q != NULL);
  return q;
}

/* Script: a stale reply and an event before the real reply. */
static void
script_ids (jsonio *srv)
{
  char id[64];
  json_object *m = srv_read (srv, "query-status", id, sizeof id);
  if (!m)
    return;
  srv_send (srv, "{\"return\": {\"status\": \"stale\"}, \"id\": \"qb-old-%s\"}", id);
  srv_send (srv, "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}%s}", "");
  srv_send (srv, "{\"return\": {\"status\": \"running\"}, \"id\": \"%s\"}", id);
  json_object_put (m);
  /* Second command: QEMU's empty return. */
  m = srv_read (srv, "stop", id, sizeof id);
  if (m)
    srv_send (srv, "{\"return\": {}, \"id\": \"%s\"}", id);
  json_object_put (m);
  /* Third command: the server goes away without answering. */
  json_object_put (srv_read (srv, "quit", id, sizeof id));
}

static void
test_ids (void)
{
  struct server s;
  qmp *q = start (&s, script_ids);
  json_object *r = qmp_execute (q, "query-status", NULL, 2000), *st;
  CHECK (r && json_object_object_get_ex (r, "status", &st));
  CHECK (strcmp (json_object_get_string (st), "running") == 0);
  json_object_put (r);
  r = qmp_execute (q, "stop", NULL, 2000);
  CHECK (r && json_object_is_type (r, json_type_object) && json_object_object_length (r) == 0);
  json_object_put (r);
  /* The event that arrived meanwhile was queued. */
  json_object *ev = qmp_next_event (q, 0), *name;
  CHECK (ev && json_object_object_get_ex (ev, "event", &name));
  CHECK (strcmp (json_object_get_string (name), "RESUME") == 0);
  json_object_put (ev);
  CHECK (!qmp_events_lost (q));
  CHECK (qmp_next_event (q, 100) == NULL);
  CHECK (qb_error_code () == QB_ETIMEDOUT);
  /* The server closes instead of answering. */
  CHECK (qmp_execute (q, "quit", NULL, 1000) == NULL);
  CHECK (qb_error_code () == QB_EHOSTDOWN);
  pthread_join (s.thread, NULL);
  qmp_close (q);
}

/* Script: an error reply, then an error without id (unparsable request). */
static void
script_errors (jsonio *srv)
{
  char id[64];
  json_object *m = srv_read (srv, "block-dirty-bitmap-add", id, sizeof id), *a;
  if (!m)
    return;
  /* The arguments arrive as sent. */
  if (json_object_object_get_ex (m, "arguments", &a))
    srv_send (srv, "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": "
              "\"Cannot find device='nosuch' nor node-name='nosuch'\"}, \"id\": \"%s\"}", id);
  json_object_put (m);
  m = srv_read (srv, "query-block", id, sizeof id);
  if (m)
    srv_send (srv, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error%s\"}}", "");
  json_object_put (m);
  m = srv_read (srv, "query-block", id, sizeof id);
  if (m)
    srv_send (srv, "{\"id\": \"%s\"}", id);
  json_object_put (m);
}

static void
test_errors (void)
{
  struct server s;
  qmp *q = start (&s, script_errors);
  CHECK (strcmp (qmp_last_error_class (q), "") == 0);
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "node", json_object_new_string ("nosuch"));
  json_object_object_add (args, "name", json_object_new_string ("b0"));
  CHECK (qmp_run (q, "block-dirty-bitmap-add", args, 2000) < 0);
  CHECK_ERR (QB_EQMP, "DeviceNotFound: Cannot find device='nosuch'");
  CHECK (strcmp (qmp_last_error_class (q), "DeviceNotFound") == 0);
  CHECK (qmp_execute (q, "query-block", NULL, 2000) == NULL);
  CHECK_ERR (QB_EQMP, "GenericError: JSON parse error");
  CHECK (qmp_execute (q, "query-block", NULL, 2000) == NULL);
  CHECK_ERR (QB_EPROTO, "neither");
  pthread_join (s.thread, NULL);
  qmp_close (q);
}

/* Script: 1100 events, then the reply. */
static void
script_flood (jsonio *srv)
{
  char id[64];
  json_object *m = srv_read (srv, "cont", id, sizeof id);
  if (!m)
    return;
  for (int i = 0; i < 1100; i++) {
    char n[16];
    snprintf (n, sizeof n, "%d", i);
    srv_send (srv, "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"n\": %s}}", n);
  }
  srv_send (srv, "{\"return\": {}, \"id\": \"%s\"}", id);
  json_object_put (m);
}

static void
test_flood (void)
{
  struct server s;
  qmp *q = start (&s, script_flood);
  CHECK (qmp_run (q, "cont", NULL, 5000) == 0);
  CHECK (qmp_events_lost (q));
  /* The oldest were dropped: 1100 - QMP_EVENT_QUEUE_MAX is the first kept. */
  for (int i = 1100 - QMP_EVENT_QUEUE_MAX; i < 1100; i++) {
    json_object *ev = qmp_next_event (q, 0), *d, *n;
    CHECK (ev && json_object_object_get_ex (ev, "data", &d)
           && json_object_object_get_ex (d, "n", &n) && json_object_get_int (n) == i);
    json_object_put (ev);
  }
  CHECK (qmp_next_event (q, 0) == NULL);
  pthread_join (s.thread, NULL);
  qmp_close (q);
}

/* Thread: accept nothing, say nothing, until the peer closes. */
static void *
silent_main (void *arg)
{
  int fd = *(int *) arg;
  char c;
  while (read (fd, &c, 1) > 0)
    ;
  return NULL;
}

/* A server that never greets is "busy"; one that greets oddly is not QMP. */
static void
test_greeting (void)
{
  int sv[2];
  CHECK (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  pthread_t t;
  CHECK (pthread_create (&t, NULL, silent_main, &sv[1]) == 0);
  uint64_t t0 = qb_mono_ms ();
  CHECK (qmp_new_fd (sv[0], "held.sock", 300) == NULL);
  uint64_t dt = qb_mono_ms () - t0;
  CHECK_ERR (QB_EBUSY, "another client holds the QMP socket held.sock");
  CHECK (dt >= 290 && dt < 1500);
  pthread_join (t, NULL);
  close (sv[1]);

  CHECK (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  const char *g = "{\"hello\": 1}\n";
  CHECK (write (sv[1], g, strlen (g)) == (ssize_t) strlen (g));
  CHECK (qmp_new_fd (sv[0], "odd.sock", 1000) == NULL);
  CHECK_ERR (QB_EPROTO, "does not speak QMP");
  close (sv[1]);

  CHECK (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  g = "SSH-2.0-OpenSSH_9.2\r\n";
  CHECK (write (sv[1], g, strlen (g)) == (ssize_t) strlen (g));
  CHECK (qmp_new_fd (sv[0], "ssh.sock", 1000) == NULL);
  CHECK_ERR (QB_EPROTO, "SSH-2.0");
  close (sv[1]);
}

int
main (void)
{
  test_ids ();
  test_errors ();
  test_flood ();
  test_greeting ();
  printf ("qmp (fake server): all checks passed\n");
  return 0;
}
