/* Unit test of qmp_execute_batch against a scripted fake server thread on a
 * socketpair: every command of a batch is on the wire before the first
 * reply (the server reads all of them first, and would wait forever for a
 * client that waits for a reply in between), replies are matched by id
 * whatever their order, with events and stale replies among them, a failed
 * command fails only itself and the batch reports it, a server that leaves
 * mid-batch fails the unanswered ones, a duplicate answer, an answer to an
 * id not sent and a late one are dropped (an error without id goes to the
 * first command still waiting), and a batch over QMP_BATCH_MAX is refused
 * (its arguments freed). */
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

/* Server side: read one command named WANT_CMD; its id into ID.  False on
 * anything else. */
static bool
srv_read (jsonio *srv, const char *want_cmd, char *id, size_t idlen)
{
  json_object *m = jsonio_recv (srv, 5000), *ex, *jid;
  if (!m)
    return false;
  bool ok = json_object_object_get_ex (m, "execute", &ex)
    && strcmp (json_object_get_string (ex), want_cmd) == 0;
  if (!ok)
    fprintf (stderr, "fake server: expected %s, got %s\n", want_cmd,
             json_object_to_json_string (m));
  id[0] = '\0';
  if (json_object_object_get_ex (m, "id", &jid))
    snprintf (id, idlen, "%s", json_object_get_string (jid));
  json_object_put (m);
  return ok;
}

/* Server side: send the text FMT (one %s for the id) plus newline. */
static void
srv_send (jsonio *srv, const char *fmt, const char *id)
{
  char *s = qb_asprintf (fmt, id);
  jsonio_send_raw (srv, s, strlen (s), 5000);
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
  if (srv_read (srv, "qmp_capabilities", id, sizeof id)) {
    srv_send (srv, "{\"return\": {}, \"id\": \"%s\"}", id);
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

/* Script: read three commands, then answer the last first, an event and a
 * stale reply between, the middle one with an error. */
static void
script_order (jsonio *srv)
{
  char a[64], b[64], c[64];
  if (!srv_read (srv, "query-jobs", a, sizeof a) || !srv_read (srv, "job-dismiss", b, sizeof b)
      || !srv_read (srv, "query-block", c, sizeof c))
    return;
  srv_send (srv, "{\"return\": [{\"device\": \"d0\"}], \"id\": \"%s\"}", c);
  srv_send (srv, "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": \"j\", \"status\": "
            "\"null\"}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}%s}", "");
  srv_send (srv, "{\"return\": {}, \"id\": \"qb-999%s\"}", "");
  srv_send (srv, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no job j\"}, "
            "\"id\": \"%s\"}", b);
  srv_send (srv, "{\"return\": [], \"id\": \"%s\"}", a);
  /* A single command afterwards still works. */
  if (srv_read (srv, "query-status", a, sizeof a))
    srv_send (srv, "{\"return\": {\"status\": \"running\"}, \"id\": \"%s\"}", a);
}

static void
test_order (void)
{
  struct server s;
  qmp *q = start (&s, script_order);
  const char *cmds[] = { "query-jobs", "job-dismiss", "query-block" };
  json_object *args[] = { NULL, json_object_new_object (), NULL }, *res[3];
  json_object_object_add (args[1], "id", json_object_new_string ("j"));
  CHECK (qmp_execute_batch (q, cmds, args, 3, res, 4000) == -1);
  CHECK (qb_error_code () == QB_EQMP);
  CHECK (strstr (qb_error_msg (), "no job j") != NULL);
  CHECK (strcmp (qmp_last_error_class (q), "GenericError") == 0);
  CHECK (res[0] && json_object_is_type (res[0], json_type_array)
         && json_object_array_length (res[0]) == 0);
  CHECK (res[1] == NULL);
  CHECK (res[2] && json_object_is_type (res[2], json_type_array)
         && json_object_array_length (res[2]) == 1);
  for (int i = 0; i < 3; i++)
    json_object_put (res[i]);
  json_object *ev = qmp_next_event (q, 0), *name;
  CHECK (ev && json_object_object_get_ex (ev, "event", &name));
  CHECK (strcmp (json_object_get_string (name), "JOB_STATUS_CHANGE") == 0);
  json_object_put (ev);
  json_object *r = qmp_execute (q, "query-status", NULL, 4000);
  CHECK (r && strcmp (qmp_str (r, "status"), "running") == 0);
  json_object_put (r);
  pthread_join (s.thread, NULL);
  qmp_close (q);
}

/* Script: read two commands, answer the first, leave. */
static void
script_leave (jsonio *srv)
{
  char a[64], b[64];
  if (!srv_read (srv, "blockdev-add", a, sizeof a) || !srv_read (srv, "blockdev-create", b, sizeof b))
    return;
  srv_send (srv, "{\"return\": {}, \"id\": \"%s\"}", a);
}

static void
test_leave (void)
{
  struct server s;
  qmp *q = start (&s, script_leave);
  const char *cmds[] = { "blockdev-add", "blockdev-create" };
  json_object *args[] = { json_object_new_object (), json_object_new_object () }, *res[2];
  CHECK (qmp_execute_batch (q, cmds, args, 2, res, 4000) == -1);
  CHECK (qb_error_code () == QB_EHOSTDOWN);
  CHECK (strstr (qb_error_msg (), "blockdev-create") != NULL);
  CHECK (res[0] != NULL && res[1] == NULL);
  json_object_put (res[0]);
  pthread_join (s.thread, NULL);
  qmp_close (q);
}

/* Script: read two commands; answer the first twice (the second answer
 * must be dropped), send an error without id (QEMU's answer to a request
 * it could not parse: it goes to the first command still waiting, the
 * second), a reply to an id not sent yet; then, for the next single
 * command, a late duplicate of the first answer before its own. */
static void
script_dup (jsonio *srv)
{
  char a[64], b[64], c[64];
  if (!srv_read (srv, "query-jobs", a, sizeof a) || !srv_read (srv, "query-block", b, sizeof b))
    return;
  srv_send (srv, "{\"return\": [1], \"id\": \"%s\"}", a);
  srv_send (srv, "{\"return\": [2], \"id\": \"%s\"}", a);
  srv_send (srv, "{\"return\": [3], \"id\": \"qb-12345%s\"}", "");
  srv_send (srv, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}%s}", "");
  srv_send (srv, "{\"return\": [4], \"id\": \"%s\"}", b);   /* too late: already failed */
  if (!srv_read (srv, "query-status", c, sizeof c))
    return;
  srv_send (srv, "{\"return\": [5], \"id\": \"%s\"}", a);
  srv_send (srv, "{\"return\": {\"status\": \"paused\"}, \"id\": \"%s\"}", c);
}

static void
test_dup (void)
{
  struct server s;
  qmp *q = start (&s, script_dup);
  const char *cmds[] = { "query-jobs", "query-block" };
  json_object *args[] = { NULL, NULL }, *res[2];
  CHECK (qmp_execute_batch (q, cmds, args, 2, res, 4000) == -1);
  CHECK_ERR (QB_EQMP, "JSON parse error");
  CHECK (res[0] && json_object_is_type (res[0], json_type_array)
         && json_object_array_length (res[0]) == 1
         && json_object_get_int (json_object_array_get_idx (res[0], 0)) == 1);
  CHECK (res[1] == NULL);
  json_object_put (res[0]);
  json_object *r = qmp_execute (q, "query-status", NULL, 4000);
  CHECK (r && strcmp (qmp_str (r, "status"), "paused") == 0);
  json_object_put (r);
  pthread_join (s.thread, NULL);
  qmp_close (q);
}

/* Script: nothing (the batch below is refused before it is sent). */
static void
script_none (jsonio *srv)
{
  (void) srv;
}

static void
test_too_many (void)
{
  struct server s;
  qmp *q = start (&s, script_none);
  const char *cmds[QMP_BATCH_MAX + 1];
  json_object *args[QMP_BATCH_MAX + 1], *res[QMP_BATCH_MAX + 1];
  for (int i = 0; i <= QMP_BATCH_MAX; i++) {
    cmds[i] = "query-jobs";
    args[i] = json_object_new_object ();   /* freed by the refusal (ASan checks) */
  }
  CHECK (qmp_execute_batch (q, cmds, args, QMP_BATCH_MAX + 1, res, 1000) == -1);
  CHECK (qb_error_code () == QB_EINVAL);
  for (int i = 0; i <= QMP_BATCH_MAX; i++)
    CHECK (res[i] == NULL);
  pthread_join (s.thread, NULL);
  qmp_close (q);
}

int
main (void)
{
  test_order ();
  test_leave ();
  test_dup ();
  test_too_many ();
  printf ("qmp (batches): all checks passed\n");
  return 0;
}
