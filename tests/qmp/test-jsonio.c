/* Unit test of the bounded JSON reader: bytes are fed through a socketpair
 * in every shape a peer can produce — split anywhere, batched, garbage,
 * oversized, too deep, not an object, closed mid-message, stalled. */
#include "qmp/jsonio.h"
#include "testlib.h"

#include <pthread.h>
#include <sys/socket.h>

/* A socketpair: sv[0] wrapped in a jsonio (returned), sv[1] in *PEER. */
static jsonio *
pair (int *peer)
{
  int sv[2];
  CHECK (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  *peer = sv[1];
  return jsonio_new (sv[0]);
}

/* Write all of BUF to FD (blocking). */
static void
put (int fd, const void *buf, size_t len)
{
  const char *p = buf;
  while (len > 0) {
    ssize_t n = send (fd, p, len, MSG_NOSIGNAL);
    CHECK (n > 0);
    p += n;
    len -= (size_t) n;
  }
}

/* Every split position of a two-message stream gives the same two objects,
 * including when the reader timed out holding half a message. */
static void
test_splits (void)
{
  static const char stream[] =
    "{\"return\": {\"a\": [1, 2.5, {\"b\": \"x\\u00e9\\\"}\"}], \"c\": true}, \"id\": \"qb-1\"}\r\n"
    "{\"event\":\"STOP\",\"data\":null}\n";
  json_object *want1 = json_tokener_parse
    ("{\"return\": {\"a\": [1, 2.5, {\"b\": \"x\\u00e9\\\"}\"}], \"c\": true}, \"id\": \"qb-1\"}");
  json_object *want2 = json_tokener_parse ("{\"event\":\"STOP\",\"data\":null}");
  size_t len = sizeof stream - 1;
  for (size_t k = 1; k < len; k++) {
    int peer;
    jsonio *j = pair (&peer);
    put (peer, stream, k);
    json_object *got1 = jsonio_recv (j, 0);
    if (!got1)
      CHECK (qb_error_code () == QB_ETIMEDOUT);
    put (peer, stream + k, len - k);
    if (!got1)
      got1 = jsonio_recv (j, 1000);
    CHECK (got1 && json_object_equal (got1, want1));
    json_object *got2 = jsonio_recv (j, 1000);
    CHECK (got2 && json_object_equal (got2, want2));
    /* Nothing else is there. */
    CHECK (jsonio_recv (j, 0) == NULL);
    CHECK (qb_error_code () == QB_ETIMEDOUT);
    json_object_put (got1);
    json_object_put (got2);
    jsonio_free (j);
    close (peer);
  }
  json_object_put (want1);
  json_object_put (want2);
}

/* Several messages in one write all come out, in order. */
static void
test_batch (void)
{
  int peer;
  jsonio *j = pair (&peer);
  const char *s = "{\"n\":1}{\"n\":2}\n\n{\"n\":3}\r\n  {\"n\":4}\n";
  put (peer, s, strlen (s));
  for (int i = 1; i <= 4; i++) {
    json_object *o = jsonio_recv (j, 1000), *n;
    CHECK (o && json_object_object_get_ex (o, "n", &n) && json_object_get_int (n) == i);
    json_object_put (o);
  }
  jsonio_free (j);
  close (peer);
}

/* Garbage gives QB_EPROTO quoting a sanitised snippet. */
static void
test_garbage (void)
{
  int peer;
  jsonio *j = pair (&peer);
  const char *s = "hello \x01\x1b[31m world\n";
  put (peer, s, strlen (s));
  CHECK (jsonio_recv (j, 1000) == NULL);
  CHECK_ERR (QB_EPROTO, "invalid data");
  CHECK (strstr (qb_error_msg (), "hello") != NULL);
  CHECK (strstr (qb_error_msg (), "\\x1b") != NULL);
  for (const char *p = qb_error_msg (); *p; p++)
    CHECK ((unsigned char) *p >= 0x20 && (unsigned char) *p < 0x7f);
  jsonio_free (j);
  close (peer);

  /* Garbage inside an otherwise fine object. */
  j = pair (&peer);
  s = "{\"a\": 1, \"b\": nope}\n";
  put (peer, s, strlen (s));
  CHECK (jsonio_recv (j, 1000) == NULL);
  CHECK_ERR (QB_EPROTO, "{\\\"a\\\": 1");
  jsonio_free (j);
  close (peer);
}

/* Top-level values that are not objects are refused. */
static void
test_not_object (void)
{
  const char *cases[] = { "[1, 2]\n", "42\n", "\"text\"\n", "null\n" };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int peer;
    jsonio *j = pair (&peer);
    put (peer, cases[i], strlen (cases[i]));
    CHECK (jsonio_recv (j, 1000) == NULL);
    CHECK_ERR (QB_EPROTO, "not a JSON object");
    jsonio_free (j);
    close (peer);
  }
}

struct feeder {
  int fd;
  const char *prefix, *suffix;
  char fill;
  size_t count;
};

/* Thread: write PREFIX, COUNT bytes of FILL, SUFFIX; stop quietly when the
 * reader goes away. */
static void *
feeder_main (void *arg)
{
  struct feeder *f = arg;
  char buf[65536];
  memset (buf, f->fill, sizeof buf);
  if (send (f->fd, f->prefix, strlen (f->prefix), MSG_NOSIGNAL) < 0)
    return NULL;
  for (size_t left = f->count; left > 0;) {
    size_t n = left < sizeof buf ? left : sizeof buf;
    ssize_t w = send (f->fd, buf, n, MSG_NOSIGNAL);
    if (w <= 0)
      return NULL;
    left -= (size_t) w;
  }
  send (f->fd, f->suffix, strlen (f->suffix), MSG_NOSIGNAL);
  return NULL;
}

/* Feed PREFIX + COUNT x FILL + SUFFIX from a thread; expect QB_EPROTO
 * mentioning WHY. */
static void
expect_rejected (const char *prefix, char fill, size_t count, const char *suffix,
                 const char *why)
{
  int peer;
  jsonio *j = pair (&peer);
  struct feeder f = { peer, prefix, suffix, fill, count };
  pthread_t t;
  CHECK (pthread_create (&t, NULL, feeder_main, &f) == 0);
  uint64_t t0 = qb_mono_ms ();
  json_object *o = jsonio_recv (j, 30000);
  CHECK (o == NULL);
  CHECK_ERR (QB_EPROTO, why);
  fprintf (stderr, "rejected after %llu ms: %s\n",
           (unsigned long long) (qb_mono_ms () - t0), qb_error_msg ());
  CHECK (qb_mono_ms () - t0 < 30000);
  jsonio_free (j);          /* the feeder's next send fails */
  shutdown (peer, SHUT_RDWR);
  pthread_join (t, NULL);
  close (peer);
}

/* A 70 MiB message and nesting 100000 deep are refused. */
static void
test_limits (void)
{
  expect_rejected ("{\"return\": \"", 'x', 70u << 20, "\"}\n", "larger than the limit");
  expect_rejected ("{\"return\": ", '[', 100000, "\n", "nesting deeper than the limit");
  /* Exactly at the depth limit is fine. */
  int peer;
  jsonio *j = pair (&peer);
  char buf[4 * JSONIO_MAX_DEPTH];
  size_t n = 0;
  buf[n++] = '{'; buf[n++] = '"'; buf[n++] = 'a'; buf[n++] = '"'; buf[n++] = ':';
  for (int i = 0; i < JSONIO_MAX_DEPTH - 1; i++) buf[n++] = '[';
  for (int i = 0; i < JSONIO_MAX_DEPTH - 1; i++) buf[n++] = ']';
  buf[n++] = '}'; buf[n++] = '\n';
  put (peer, buf, n);
  json_object *o = jsonio_recv (j, 1000);
  CHECK (o != NULL);
  json_object_put (o);
  jsonio_free (j);
  close (peer);
}

/* The peer closing — cleanly or mid-message — gives QB_EHOSTDOWN. */
static void
test_close (void)
{
  int peer;
  jsonio *j = pair (&peer);
  put (peer, "{\"a\": [1,", 9);
  close (peer);
  CHECK (jsonio_recv (j, 1000) == NULL);
  CHECK_ERR (QB_EHOSTDOWN, "in the middle of a message");
  jsonio_free (j);

  j = pair (&peer);
  put (peer, "{\"a\":1}\n", 8);
  close (peer);
  json_object *o = jsonio_recv (j, 1000);
  CHECK (o != NULL);
  json_object_put (o);
  CHECK (jsonio_recv (j, 1000) == NULL);
  CHECK_ERR (QB_EHOSTDOWN, "closed the connection");
  /* Sending to a closed peer is an error, not SIGPIPE. */
  json_object *m = json_tokener_parse ("{\"execute\":\"x\"}");
  CHECK (jsonio_send (j, m, 1000) < 0);
  CHECK (qb_error_code () == QB_EHOSTDOWN);
  json_object_put (m);
  jsonio_free (j);
}

/* A stalled peer gives QB_ETIMEDOUT in time; a cancel flag stops a wait. */
static void
test_stall_cancel (void)
{
  int peer;
  jsonio *j = pair (&peer);
  put (peer, "{\"a\":", 5);
  uint64_t t0 = qb_mono_ms ();
  CHECK (jsonio_recv (j, 200) == NULL);
  uint64_t dt = qb_mono_ms () - t0;
  CHECK (qb_error_code () == QB_ETIMEDOUT);
  CHECK (dt >= 190 && dt < 1000);
  /* The half message survives the timeout. */
  put (peer, "2}\n", 3);
  json_object *o = jsonio_recv (j, 1000), *a;
  CHECK (o && json_object_object_get_ex (o, "a", &a) && json_object_get_int (a) == 2);
  json_object_put (o);

  atomic_int cancel = 1;
  jsonio_set_cancel (j, &cancel);
  t0 = qb_mono_ms ();
  CHECK (jsonio_recv (j, 10000) == NULL);
  CHECK (qb_error_code () == QB_ECANCELED);
  CHECK (qb_mono_ms () - t0 < 500);
  jsonio_free (j);
  close (peer);

  /* A full send buffer that never drains times out too. */
  j = pair (&peer);
  static char big[1 << 20];
  t0 = qb_mono_ms ();
  int r;
  do
    r = jsonio_send_raw (j, big, sizeof big, 200);
  while (r == 0 && qb_mono_ms () - t0 < 5000);
  CHECK (r < 0 && qb_error_code () == QB_ETIMEDOUT);
  jsonio_free (j);
  close (peer);
}

/* The guest-agent delimiter: junk before 0xFF is skipped. */
static void
test_delimiter (void)
{
  int peer;
  jsonio *j = pair (&peer);
  const char *s = "{\"return\": 7}\n{\"half\": \xff{\"return\": 8}\n";
  put (peer, s, strlen (s));
  CHECK (jsonio_skip_to_delimiter (j, 1000) == 0);
  json_object *o = jsonio_recv (j, 1000), *r;
  CHECK (o && json_object_object_get_ex (o, "return", &r) && json_object_get_int (r) == 8);
  json_object_put (o);
  CHECK (jsonio_skip_to_delimiter (j, 100) < 0);
  CHECK (qb_error_code () == QB_ETIMEDOUT);
  jsonio_free (j);
  close (peer);
}

int
main (void)
{
  test_splits ();
  test_batch ();
  test_garbage ();
  test_not_object ();
  test_limits ();
  test_close ();
  test_stall_cancel ();
  test_delimiter ();
  printf ("jsonio: all checks passed\n");
  return 0;
}
