/* Hostile peers against the JSON reader, the QMP client and the guest-agent
 * client: amplification payloads ({"return":[{},{},...]} of 8 and 60 MB,
 * wide and deep arrays, huge strings), floods of large events, endless
 * streams and slow drips, control bytes in error texts.  Each case runs in
 * a child process whose peak RSS (VmHWM, reset through clear_refs) must grow
 * less than RSS_BOUND_MB, and must end with the documented error within its
 * timeout plus SLACK_MS (slack for a loaded machine, not a speed claim). */
#include "qmp/jsonio.h"
#include "qmp/qga.h"
#include "qmp/qmp.h"
#include "testlib.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/un.h>

#if defined(__SANITIZE_ADDRESS__)
/* Shadow memory and the allocator's quarantine inflate RSS under ASan. */
#define RSS_BOUND_MB 256
const char *__asan_default_options (void);
const char *
__asan_default_options (void)
{
  return "quarantine_size_mb=8";
}
#else
#define RSS_BOUND_MB 64
#endif
#define SLACK_MS 5000

/* ---- measuring ---- */

/* FIELD ("VmRSS:", "VmHWM:") of /proc/self/status in KiB, or -1. */
static long
status_kb (const char *field)
{
  FILE *f = fopen ("/proc/self/status", "r");
  char line[256];
  long v = -1;
  if (!f)
    return -1;
  while (fgets (line, sizeof line, f))
    if (strncmp (line, field, strlen (field)) == 0)
      v = strtol (line + strlen (field), NULL, 10);
  fclose (f);
  return v;
}

/* Reset the peak RSS to the current RSS (best effort). */
static void
reset_peak (void)
{
  int fd = open ("/proc/self/clear_refs", O_WRONLY);
  if (fd >= 0) {
    if (write (fd, "5", 1) < 0)
      perror ("clear_refs");
    close (fd);
  }
}

/* Run FN in a child process; the child checks that its peak RSS grew less
 * than RSS_BOUND_MB.  NAME labels the output. */
static void
run_case (const char *name, void (*fn) (void))
{
  fflush (stderr);
  pid_t pid = fork ();
  CHECK (pid >= 0);
  if (pid == 0) {
    reset_peak ();
    long base = status_kb ("VmRSS:");
    uint64_t t0 = qb_mono_ms ();
    fn ();
    long peak = status_kb ("VmHWM:");
    CHECK (base > 0 && peak > 0);
    long grew = peak - base;
    fprintf (stderr, "%-40s %6llu ms, peak RSS +%ld KiB\n", name,
             (unsigned long long) (qb_mono_ms () - t0), grew);
    CHECK (grew < RSS_BOUND_MB * 1024L);
    fflush (stderr);
    _exit (0);
  }
  int st;
  CHECK (waitpid (pid, &st, 0) == pid);
  if (!WIFEXITED (st) || WEXITSTATUS (st) != 0) {
    fprintf (stderr, "case %s failed\n", name);
    exit (1);
  }
}

/* ---- peers ---- */

/* What a feeder thread sends: PREFIX, then UNIT repeated until COUNT bytes
 * went (forever when COUNT is 0), each write of one UNIT followed by a
 * pause of DRIP_MS when that is set, then SUFFIX. */
typedef struct feed {
  int fd;
  const char *prefix, *unit, *suffix;
  size_t count;
  int drip_ms;
} feed;

/* Write all of BUF (waiting on a non-blocking FD); false once the reader
 * is gone. */
static bool
put (int fd, const void *buf, size_t len)
{
  const char *p = buf;
  while (len > 0) {
    ssize_t n = send (fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      struct pollfd pfd = { .fd = fd, .events = POLLOUT };
      poll (&pfd, 1, 1000);
      continue;
    }
    if (n <= 0)
      return false;
    p += n;
    len -= (size_t) n;
  }
  return true;
}

/* Thread: send a feed (see struct feed); stop quietly when the reader goes. */
static void *
feeder_main (void *arg)
{
  feed *f = arg;
  size_t ul = strlen (f->unit), bl = f->drip_ms ? ul : 65536 / ul * ul;
  char *buf = malloc (bl);
  for (size_t i = 0; i < bl; i += ul)
    memcpy (buf + i, f->unit, ul);
  if (!put (f->fd, f->prefix, strlen (f->prefix)))
    goto out;
  for (size_t sent = 0; f->count == 0 || sent < f->count; sent += bl) {
    if (!put (f->fd, buf, bl))
      goto out;
    if (f->drip_ms)
      poll (NULL, 0, f->drip_ms);
  }
  put (f->fd, f->suffix, strlen (f->suffix));
 out:
  free (buf);
  return NULL;
}

typedef struct feeding {
  feed f;
  pthread_t t;
  jsonio *j;
} feeding;

/* Start feeding F (its fd is set here) into a new jsonio with limits
 * MAX_BYTES/MAX_VALUES (0: the defaults). */
static void
feeding_start (feeding *fg, feed f, size_t max_bytes, size_t max_values)
{
  int sv[2];
  CHECK (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  fg->f = f;
  fg->f.fd = sv[1];
  fg->j = jsonio_new (sv[0]);
  jsonio_set_limits (fg->j, max_bytes, max_values);
  CHECK (pthread_create (&fg->t, NULL, feeder_main, &fg->f) == 0);
}

/* Close the reader, which stops the feeder, and reap it. */
static void
feeding_stop (feeding *fg)
{
  jsonio_free (fg->j);
  shutdown (fg->f.fd, SHUT_RDWR);
  pthread_join (fg->t, NULL);
  close (fg->f.fd);
}

/* ---- the reader ---- */

/* Read from a feed with a 10 s timeout; expect QB_EPROTO containing WHY,
 * in time, and (when BREAKS) a broken connection afterwards. */
static void
expect_refused (feed f, size_t max_bytes, size_t max_values, const char *why, bool breaks)
{
  feeding fg;
  feeding_start (&fg, f, max_bytes, max_values);
  uint64_t t0 = qb_mono_ms ();
  CHECK (jsonio_recv (fg.j, 10000) == NULL);
  CHECK_ERR (QB_EPROTO, why);
  CHECK (qb_mono_ms () - t0 < 10000 + SLACK_MS);
  if (breaks) {
    CHECK (strstr (qb_error_msg (), "hostile") != NULL);
    CHECK (jsonio_broken (fg.j));
    /* Every later call fails at once with the same error. */
    t0 = qb_mono_ms ();
    CHECK (jsonio_recv (fg.j, 10000) == NULL);
    CHECK_ERR (QB_EPROTO, why);
    CHECK (jsonio_skip_to_delimiter (fg.j, 10000) < 0 && qb_error_code () == QB_EPROTO);
    CHECK (jsonio_send_raw (fg.j, "{}\n", 3, 1000) < 0 && qb_error_code () == QB_EPROTO);
    CHECK (qb_mono_ms () - t0 < SLACK_MS);
  }
  for (const char *p = qb_error_msg (); *p; p++)
    CHECK ((unsigned char) *p >= 0x20 && (unsigned char) *p < 0x7f);
  feeding_stop (&fg);
}

#define AMP_PREFIX "{\"return\": ["
#define AMP_SUFFIX "{}]}\n"

static void
agent_8mb (void)
{
  feed f = { .prefix = AMP_PREFIX, .unit = "{},", .suffix = AMP_SUFFIX, .count = 8u << 20 };
  expect_refused (f, JSONIO_QGA_MAX_BYTES, JSONIO_QGA_MAX_VALUES, "JSON values", true);
}

static void
agent_60mb (void)
{
  feed f = { .prefix = AMP_PREFIX, .unit = "{},", .suffix = AMP_SUFFIX, .count = 60u << 20 };
  expect_refused (f, JSONIO_QGA_MAX_BYTES, JSONIO_QGA_MAX_VALUES, "JSON values", true);
}

static void
qmp_60mb_objects (void)
{
  feed f = { .prefix = AMP_PREFIX, .unit = "{},", .suffix = AMP_SUFFIX, .count = 60u << 20 };
  expect_refused (f, 0, 0, "more than 100000 JSON values", true);
}

static void
qmp_60mb_nested (void)
{
  feed f = { .prefix = AMP_PREFIX, .unit = "{\"a\":[{}]},", .suffix = AMP_SUFFIX,
             .count = 60u << 20 };
  expect_refused (f, 0, 0, "JSON values", true);
}

static void
qmp_60mb_wide (void)
{
  feed f = { .prefix = AMP_PREFIX, .unit = "1,", .suffix = "1]}\n", .count = 60u << 20 };
  expect_refused (f, 0, 0, "JSON values", true);
}

static void
qmp_60mb_string (void)
{
  feed f = { .prefix = "{\"return\": \"", .unit = "x", .suffix = "\"}\n", .count = 60u << 20 };
  expect_refused (f, 0, 0, "larger than the limit of 4194304 bytes", true);
}

static void
qmp_deep (void)
{
  /* json-c's depth limit refuses it; that is a plain protocol error. */
  feed f = { .prefix = "{\"return\": ", .unit = "[", .suffix = "\n", .count = 8u << 20 };
  expect_refused (f, 0, 0, "nesting deeper than the limit", false);
  feed g = { .prefix = "{\"return\": ", .unit = "{\"a\":", .suffix = "\n", .count = 8u << 20 };
  expect_refused (g, 0, 0, "nesting deeper than the limit", false);
}

/* Brackets and commas inside strings are not values; escapes are followed. */
static void
strings_not_counted (void)
{
  int sv[2];
  CHECK (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  jsonio *j = jsonio_new (sv[0]);
  jsonio_set_limits (j, 0, 8);
  const char *ok = "{\"a\": \"{[,:]}\\\"{,\\\\\", \"b\": [1, 2]}\n";
  const char *bad = "{\"a\": [1, 2, 3, 4, 5, 6, 7, 8]}\n";
  CHECK (put (sv[1], ok, strlen (ok)) && put (sv[1], bad, strlen (bad)));
  json_object *o = jsonio_recv (j, 1000), *a;
  CHECK (o && json_object_object_get_ex (o, "a", &a)
         && strcmp (json_object_get_string (a), "{[,:]}\"{,\\") == 0);
  size_t bytes, values;
  jsonio_last_size (j, &bytes, &values);
  CHECK (bytes == strlen (ok) - 1 && values == 6);
  json_object_put (o);
  CHECK (jsonio_recv (j, 1000) == NULL);
  CHECK_ERR (QB_EPROTO, "more than 8 JSON values");
  jsonio_free (j);
  close (sv[1]);
}

/* A message that keeps dripping never ends the wait late; its partial
 * state stays bounded. */
static void
slow_drip (void)
{
  feed f = { .prefix = AMP_PREFIX, .unit = "1,", .suffix = "", .count = 0, .drip_ms = 5 };
  feeding fg;
  feeding_start (&fg, f, 0, 0);
  for (int i = 0; i < 3; i++) {
    uint64_t t0 = qb_mono_ms ();
    CHECK (jsonio_recv (fg.j, 700) == NULL);
    CHECK (qb_error_code () == QB_ETIMEDOUT);
    CHECK (qb_mono_ms () - t0 < 700 + SLACK_MS);
  }
  feeding_stop (&fg);
}

/* Endless fast streams: whitespace between messages, and junk for a
 * caller that resynchronises on the agent delimiter in a loop. */
static void
endless_streams (void)
{
  feed f = { .prefix = "", .unit = " \r\n\t", .suffix = "", .count = 0 };
  feeding fg;
  feeding_start (&fg, f, 0, 0);
  uint64_t t0 = qb_mono_ms ();
  CHECK (jsonio_recv (fg.j, 500) == NULL);
  CHECK (qb_error_code () == QB_ETIMEDOUT);
  CHECK (qb_mono_ms () - t0 < 500 + SLACK_MS);
  feeding_stop (&fg);

  feed g = { .prefix = "", .unit = "\xffjunk", .suffix = "", .count = 0 };
  feeding_start (&fg, g, JSONIO_QGA_MAX_BYTES, JSONIO_QGA_MAX_VALUES);
  t0 = qb_mono_ms ();
  for (;;) {
    /* The loop of a guest-agent sync: skip to 0xFF, read, junk: again. */
    CHECK (qb_mono_ms () - t0 < 10000 + SLACK_MS);
    if (jsonio_skip_to_delimiter (fg.j, 10000) < 0)
      break;
    json_object *o = jsonio_recv (fg.j, 10000);
    CHECK (o == NULL);
    if (qb_error_code () != QB_EPROTO || jsonio_broken (fg.j))
      break;
  }
  CHECK_ERR (QB_EPROTO, "bytes of junk");
  CHECK (jsonio_broken (fg.j));
  feeding_stop (&fg);
}

/* ---- the guest-agent client against a fake agent ---- */

typedef struct agent {
  int lfd;
  const char *unit;   /* repeated in the reply to the first command after sync */
  size_t count;
  bool wrong_ids;     /* answer the sync with wrong ids, forever */
} agent;

/* Thread: accept one client, answer guest-sync-delimited, then answer the
 * next command with {"return": [UNIT x COUNT bytes {}]}. */
static void *
agent_main (void *arg)
{
  agent *a = arg;
  int fd = accept (a->lfd, NULL, NULL);
  if (fd < 0)
    return NULL;
  jsonio *j = jsonio_new (fd);
  json_object *m = NULL, *args, *id;
  if (jsonio_skip_to_delimiter (j, 5000) == 0)
    m = jsonio_recv (j, 5000);
  if (m && a->wrong_ids) {
    json_object_put (m);
    feed f = { .fd = fd, .prefix = "", .unit = "\xff{\"return\": 5}\n", .suffix = "" };
    feeder_main (&f);
  }
  else if (m) {
    if (json_object_object_get_ex (m, "arguments", &args)
        && json_object_object_get_ex (args, "id", &id)) {
      char *r = qb_asprintf ("\xff{\"return\": %lld}\n", (long long) json_object_get_int64 (id));
      jsonio_send_raw (j, r, strlen (r), 5000);
      free (r);
    }
    json_object_put (m);
    if ((m = jsonio_recv (j, 5000))) {
      json_object_put (m);
      feed f = { .fd = fd, .prefix = AMP_PREFIX, .unit = a->unit, .suffix = AMP_SUFFIX,
                 .count = a->count };
      feeder_main (&f);
    }
  }
  jsonio_free (j);
  return NULL;
}

/* Listen on a unix socket in the test directory: the fd; *PATH malloc'd. */
static int
listen_unix (const char *name, char **path)
{
  *path = qb_asprintf ("%s/%s", test_tmpdir (), name);
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  snprintf (sa.sun_path, sizeof sa.sun_path, "%s", *path);
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK (fd >= 0);
  CHECK (bind (fd, (struct sockaddr *) &sa, sizeof sa) == 0);
  CHECK (listen (fd, 4) == 0);
  return fd;
}

/* The agent answers guest-ping with SIZE bytes of "{}," amplification. */
static void
agent_client (size_t size)
{
  char *path;
  agent a = { .unit = "{},", .count = size };
  a.lfd = listen_unix ("qga.sock", &path);
  pthread_t t;
  CHECK (pthread_create (&t, NULL, agent_main, &a) == 0);
  qga *g = qga_connect (path, QGA_TIMEOUT_MS);
  CHECK (g != NULL);
  uint64_t t0 = qb_mono_ms ();
  CHECK (qga_ping (g, QGA_TIMEOUT_MS) < 0);
  CHECK_ERR (QB_EPROTO, "more than 4096 JSON values");
  CHECK (strstr (qb_error_msg (), "hostile") != NULL);
  CHECK (qb_mono_ms () - t0 < QGA_TIMEOUT_MS + SLACK_MS);
  fprintf (stderr, "  agent error: %s\n", qb_error_msg ());
  /* The connection stays refused, at once. */
  t0 = qb_mono_ms ();
  CHECK (qga_ping (g, QGA_TIMEOUT_MS) < 0);
  CHECK (qb_error_code () == QB_EPROTO);
  CHECK (qb_mono_ms () - t0 < SLACK_MS);
  qga_close (g);
  pthread_join (t, NULL);
  close (a.lfd);
  free (path);
  test_cleanup ();
}

static void agent_client_8mb (void) { agent_client (8u << 20); }

/* An agent that floods sync replies with the wrong id, fast and forever:
 * the connect gives up at its timeout. */
static void
agent_sync_flood (void)
{
  char *path;
  agent a = { .wrong_ids = true };
  a.lfd = listen_unix ("qga.sock", &path);
  pthread_t t;
  CHECK (pthread_create (&t, NULL, agent_main, &a) == 0);
  uint64_t t0 = qb_mono_ms ();
  CHECK (qga_connect (path, 1000) == NULL);
  CHECK_ERR (QB_ETIMEDOUT, "sync handshake");
  CHECK (qb_mono_ms () - t0 < 1000 + SLACK_MS);
  pthread_join (t, NULL);
  close (a.lfd);
  free (path);
  test_cleanup ();
}
static void agent_client_60mb (void) { agent_client (60u << 20); }

/* ---- the QMP client against a fake QEMU ---- */

typedef void (*script_fn) (jsonio *srv, const char *id);

typedef struct server {
  int fd;
  script_fn script;
  pthread_t thread;
} server;

/* Thread: greeting, capabilities, then SCRIPT for each further command
 * until the client goes away. */
static void *
server_main (void *arg)
{
  server *s = arg;
  jsonio *srv = jsonio_new (s->fd);
  const char *g = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";
  jsonio_send_raw (srv, g, strlen (g), 5000);
  json_object *m, *id;
  while ((m = jsonio_recv (srv, 30000))) {
    const char *sid = json_object_object_get_ex (m, "id", &id) ? json_object_get_string (id) : "";
    json_object *ex = NULL;
    json_object_object_get_ex (m, "execute", &ex);
    if (strcmp (json_object_get_string (ex), "qmp_capabilities") == 0) {
      char *r = qb_asprintf ("{\"return\": {}, \"id\": \"%s\"}\n", sid);
      jsonio_send_raw (srv, r, strlen (r), 5000);
      free (r);
    }
    else
      s->script (srv, sid);
    json_object_put (m);
  }
  jsonio_free (srv);
  return NULL;
}

/* A client connected to a fake server running SCRIPT. */
static qmp *
server_start (server *s, script_fn script)
{
  int sv[2];
  CHECK (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  s->fd = sv[1];
  s->script = script;
  CHECK (pthread_create (&s->thread, NULL, server_main, s) == 0);
  qmp *q = qmp_new_fd (sv[0], "fake", 5000);
  CHECK (q != NULL);
  return q;
}

/* Close the client, which ends the server, and reap it. */
static void
server_stop (server *s, qmp *q)
{
  qmp_close (q);
  pthread_join (s->thread, NULL);
}

/* Send COUNT events whose data holds a string, or an array of "{}", of
 * about BYTES bytes each; then the reply with ID (unless ID is NULL). */
static void
send_events (jsonio *srv, int count, size_t bytes, bool objects, const char *id)
{
  char *body = malloc (bytes + 1);
  if (objects) {
    for (size_t i = 0; i + 3 <= bytes; i += 3)
      memcpy (body + i, "{},", 3);
    body[bytes / 3 * 3 - 1] = '\0';
  }
  else {
    memset (body, 'x', bytes);
    body[bytes] = '\0';
  }
  for (int i = 0; i < count; i++) {
    char *e = qb_asprintf (objects
                           ? "{\"event\": \"BLOCK_JOB_ERROR\", \"data\": {\"n\": %d, \"a\": [%s]}}\n"
                           : "{\"event\": \"BLOCK_JOB_ERROR\", \"data\": {\"n\": %d, \"s\": \"%s\"}}\n",
                           i, body);
    bool ok = jsonio_send_raw (srv, e, strlen (e), 30000) == 0;
    free (e);
    if (!ok)
      break;
  }
  free (body);
  if (id) {
    char *r = qb_asprintf ("{\"return\": {}, \"id\": \"%s\"}\n", id);
    jsonio_send_raw (srv, r, strlen (r), 5000);
    free (r);
  }
}

static void
script_big_events (jsonio *srv, const char *id)
{
  send_events (srv, 1100, 64 << 10, false, id);
}

static void
script_amp_events (jsonio *srv, const char *id)
{
  send_events (srv, 300, 64 << 10, true, id);
}

/* Count the queued events, checking each; the first's "n" in *FIRST. */
static int
drain (qmp *q, int *first, bool *dropped)
{
  int n = 0;
  json_object *ev, *d, *v;
  *dropped = false;
  while ((ev = qmp_next_event (q, 0))) {
    CHECK (json_object_object_get_ex (ev, "event", NULL));
    if (json_object_object_get_ex (ev, "data-dropped", NULL))
      *dropped = true;
    else if (n == 0 && json_object_object_get_ex (ev, "data", &d)
             && json_object_object_get_ex (d, "n", &v))
      *first = json_object_get_int (v);
    json_object_put (ev);
    n++;
  }
  return n;
}

/* 1,100 events of 64 KB: the reply is seen, the queue keeps the newest
 * within its limits, memory stays bounded. */
static void
qmp_big_events (void)
{
  server s;
  qmp *q = server_start (&s, script_big_events);
  CHECK (qmp_run (q, "cont", NULL, 60000) == 0);
  CHECK (qmp_events_lost (q));
  int first = -1;
  bool dropped;
  int n = drain (q, &first, &dropped);
  /* 64 KB events are over QMP_EVENT_KEEP_BYTES: each kept without data. */
  CHECK (n == QMP_EVENT_QUEUE_MAX && dropped);
  server_stop (&s, q);
}

/* 300 events of 64 KB of "{}" (21,845 values each). */
static void
qmp_amp_events (void)
{
  server s;
  qmp *q = server_start (&s, script_amp_events);
  CHECK (qmp_run (q, "cont", NULL, 60000) == 0);
  int first = -1;
  bool dropped;
  int n = drain (q, &first, &dropped);
  CHECK (n > 0 && n <= QMP_EVENT_QUEUE_MAX && dropped);
  server_stop (&s, q);
}

static void
script_amp_stub (jsonio *srv, const char *id)
{
  /* The amplification where a stub might keep it: name and timestamp. */
  size_t n = 10000;
  char *amp = malloc (3 * n + 3);
  for (size_t i = 0; i + 1 < n; i++)
    memcpy (amp + 3 * i, "{},", 3);
  memcpy (amp + 3 * (n - 1), "{}", 3);
  char *e = qb_asprintf ("{\"event\": [%s], \"timestamp\": [%s], \"data\": 1}\n", amp, amp);
  for (int i = 0; i < 300; i++)
    if (jsonio_send_raw (srv, e, strlen (e), 30000) < 0)
      break;
  free (e);
  free (amp);
  char *r = qb_asprintf ("{\"return\": {}, \"id\": \"%s\"}\n", id);
  jsonio_send_raw (srv, r, strlen (r), 5000);
  free (r);
}

/* 300 events whose name and timestamp are 10,000 "{}" each: the queued
 * stubs keep neither. */
static void
qmp_amp_stub (void)
{
  server s;
  qmp *q = server_start (&s, script_amp_stub);
  CHECK (qmp_run (q, "cont", NULL, 60000) == 0);
  json_object *ev, *name;
  int n = 0;
  while ((ev = qmp_next_event (q, 0))) {
    CHECK (json_object_object_get_ex (ev, "event", &name)
           && json_object_is_type (name, json_type_string));
    CHECK (!json_object_object_get_ex (ev, "timestamp", NULL));
    CHECK (json_object_object_get_ex (ev, "data-dropped", NULL));
    json_object_put (ev);
    n++;
  }
  CHECK (n == QMP_EVENT_QUEUE_MAX);
  server_stop (&s, q);
}

static void
script_small_events (jsonio *srv, const char *id)
{
  send_events (srv, 5000, 10 << 10, false, id);
}

/* 5,000 events of 10 KB (kept whole): the byte limit of the queue holds. */
static void
qmp_many_events (void)
{
  server s;
  qmp *q = server_start (&s, script_small_events);
  CHECK (qmp_run (q, "cont", NULL, 60000) == 0);
  CHECK (qmp_events_lost (q));
  int first = -1;
  bool dropped;
  int n = drain (q, &first, &dropped);
  CHECK (!dropped && n > 0 && (size_t) n * (10 << 10) <= QMP_EVENT_QUEUE_BYTES);
  CHECK (first == 5000 - n);   /* the newest were kept, in order */
  server_stop (&s, q);
}

static void
script_endless_events (jsonio *srv, const char *id)
{
  (void) id;
  send_events (srv, 1 << 30, 4 << 10, false, NULL);
}

static void
script_endless_stale (jsonio *srv, const char *id)
{
  (void) id;
  const char *r = "{\"return\": {}, \"id\": \"stale\"}\n";
  while (jsonio_send_raw (srv, r, strlen (r), 30000) == 0)
    ;
}

/* A server that floods events, or stale replies, and never answers: the
 * wait ends at its timeout. */
static void
qmp_endless (void)
{
  server s;
  qmp *q = server_start (&s, script_endless_events);
  uint64_t t0 = qb_mono_ms ();
  CHECK (qmp_execute (q, "query-status", NULL, 1000) == NULL);
  CHECK_ERR (QB_ETIMEDOUT, "no reply within 1000 ms");
  CHECK (qb_mono_ms () - t0 < 1000 + SLACK_MS);
  t0 = qb_mono_ms ();
  server_stop (&s, q);

  q = server_start (&s, script_endless_stale);
  CHECK (qmp_execute (q, "query-status", NULL, 1000) == NULL);
  CHECK_ERR (QB_ETIMEDOUT, "no reply within 1000 ms");
  t0 = qb_mono_ms ();
  CHECK (qmp_next_event (q, 500) == NULL);
  CHECK_ERR (QB_ETIMEDOUT, "no QMP event");
  CHECK (qb_mono_ms () - t0 < 500 + SLACK_MS);
  server_stop (&s, q);
}

static void
script_amp_reply (jsonio *srv, const char *id)
{
  (void) id;
  feed f = { .fd = jsonio_fd (srv), .prefix = AMP_PREFIX, .unit = "{},", .suffix = AMP_SUFFIX,
             .count = 60u << 20 };
  feeder_main (&f);
}

/* A 60 MB amplification reply: QB_EPROTO, then the connection is refused
 * at once; the caller goes on. */
static void
qmp_amp_reply (void)
{
  server s;
  qmp *q = server_start (&s, script_amp_reply);
  uint64_t t0 = qb_mono_ms ();
  CHECK (qmp_execute (q, "query-named-block-nodes", NULL, 10000) == NULL);
  CHECK_ERR (QB_EPROTO, "JSON values");
  CHECK (strstr (qb_error_msg (), "query-named-block-nodes") != NULL);
  CHECK (strstr (qb_error_msg (), "hostile") != NULL);
  CHECK (qb_mono_ms () - t0 < 10000 + SLACK_MS);
  fprintf (stderr, "  qmp error: %s\n", qb_error_msg ());
  t0 = qb_mono_ms ();
  CHECK (qmp_execute (q, "query-status", NULL, 10000) == NULL);
  CHECK (qb_error_code () == QB_EPROTO);
  CHECK (qb_mono_ms () - t0 < SLACK_MS);
  server_stop (&s, q);
}

static void
script_nasty_error (jsonio *srv, const char *id)
{
  char *r = qb_asprintf ("{\"error\": {\"class\": \"Generic\\u001b]0;owned\\u0007Error\", "
                         "\"desc\": \"bad\\u001b[31m red\\nline2\\r\\u009b2J \\\"q\\\" é\"}, "
                         "\"id\": \"%s\"}\n", id);
  jsonio_send_raw (srv, r, strlen (r), 5000);
  free (r);
}

/* Peer text in errors never carries a control byte. */
static void
qmp_escape (void)
{
  server s;
  qmp *q = server_start (&s, script_nasty_error);
  CHECK (qmp_execute (q, "query-status", NULL, 5000) == NULL);
  CHECK (qb_error_code () == QB_EQMP);
  const char *msg = qb_error_msg ();
  fprintf (stderr, "  escaped: %s\n", msg);
  for (const char *p = msg; *p; p++)
    CHECK ((unsigned char) *p >= 0x20 && (unsigned char) *p < 0x7f);
  CHECK (strstr (msg, "bad\\x1b[31m red\\x0aline2\\x0d\\xc2\\x9b2J \\\"q\\\"") != NULL);
  const char *cls = qmp_last_error_class (q);
  for (const char *p = cls; *p; p++)
    CHECK ((unsigned char) *p >= 0x20 && (unsigned char) *p < 0x7f);
  CHECK (strstr (cls, "Generic\\x1b]0;owned\\x07") == cls);
  server_stop (&s, q);
}

int
main (void)
{
  run_case ("agent reader, 8 MB of {}", agent_8mb);
  run_case ("agent reader, 60 MB of {}", agent_60mb);
  run_case ("qmp reader, 60 MB of {}", qmp_60mb_objects);
  run_case ("qmp reader, 60 MB of {\"a\":[{}]}", qmp_60mb_nested);
  run_case ("qmp reader, 60 MB of 1,", qmp_60mb_wide);
  run_case ("qmp reader, 60 MB string", qmp_60mb_string);
  run_case ("qmp reader, 8 MB deep", qmp_deep);
  run_case ("strings are not counted", strings_not_counted);
  run_case ("slow drip", slow_drip);
  run_case ("endless streams", endless_streams);
  run_case ("guest agent client, 8 MB reply", agent_client_8mb);
  run_case ("guest agent client, 60 MB reply", agent_client_60mb);
  run_case ("guest agent client, endless wrong syncs", agent_sync_flood);
  run_case ("qmp client, 1100 events of 64 KB", qmp_big_events);
  run_case ("qmp client, 300 events of 64 KB {}", qmp_amp_events);
  run_case ("qmp client, 300 events, {} in name/time", qmp_amp_stub);
  run_case ("qmp client, 5000 events of 10 KB", qmp_many_events);
  run_case ("qmp client, endless events/replies", qmp_endless);
  run_case ("qmp client, 60 MB reply", qmp_amp_reply);
  run_case ("qmp client, escaped error text", qmp_escape);
  printf ("hostile peers: all checks passed\n");
  return 0;
}
