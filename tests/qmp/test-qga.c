/* Integration test of the guest-agent client against a real qemu-ga
 * listening on a host unix socket (freeze blocked, so nothing on the host is
 * frozen), plus sockets that accept and never answer or answer garbage, a
 * hostile agent whose text must come out escaped, and the thaw guard
 * against a scripted agent. */
#include "qmp/qga.h"
#include "qmp/qmp.h"
#include "engine/thawguard.h"
#include "testlib.h"

#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>

#define QEMU_GA "/usr/bin/qemu-ga"
#define QEMU_GA_ALT "/usr/sbin/qemu-ga"

/* Listen on PATH without ever answering; the kernel completes connects. */
static int
mute_listener (const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  snprintf (sa.sun_path, sizeof sa.sun_path, "%s", path);
  int fd = socket (AF_UNIX, SOCK_STREAM, 0);
  CHECK (fd >= 0);
  CHECK (bind (fd, (struct sockaddr *) &sa, sizeof sa) == 0);
  CHECK (listen (fd, 4) == 0);
  return fd;
}

/* Thread: accept one client and answer everything with garbage. */
static void *
garbage_main (void *arg)
{
  int lfd = *(int *) arg;
  int c = accept (lfd, NULL, NULL);
  if (c < 0)
    return NULL;
  char buf[256];
  static const char junk[] = "\xff" "BANNER not json\n\xff{\"return\": \"wrong\"}\n";
  while (read (c, buf, sizeof buf) > 0)
    if (send (c, junk, sizeof junk - 1, MSG_NOSIGNAL) < 0)
      break;
  close (c);
  return NULL;
}

/* Read from FD into BUF (CAP bytes, NUL-terminated, appended at *LEN) until
 * it holds NEEDLE; 0, or -1 on EOF or after 10 s. */
static int
read_until (int fd, char *buf, size_t cap, size_t *len, const char *needle)
{
  for (int i = 0; i < 100; i++) {
    buf[*len] = '\0';
    if (memmem (buf, *len, needle, strlen (needle)))
      return 0;
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll (&p, 1, 100) <= 0)
      continue;
    ssize_t n = read (fd, buf + *len, cap - 1 - *len);
    if (n <= 0)
      return -1;
    *len += (size_t) n;
  }
  return -1;
}

/* Send the string S on FD. */
static void
say (int fd, const char *s)
{
  CHECK (send (fd, s, strlen (s), MSG_NOSIGNAL) == (ssize_t) strlen (s));
}

/* Thread: a hostile agent on listener *ARG: answers the sync properly, then
 * every freeze with an error and the status with a string full of control
 * bytes, ESC sequences and newlines. */
static void *
hostile_main (void *arg)
{
  int c = accept (*(int *) arg, NULL, NULL);
  if (c < 0)
    return NULL;
  char buf[4096];
  size_t len = 0;
  for (;;) {
    char *nl;
    while (!(nl = memchr (buf, '\n', len))) {
      ssize_t n = read (c, buf + len, sizeof buf - 1 - len);
      if (n <= 0) {
        close (c);
        return NULL;
      }
      len += (size_t) n;
    }
    *nl = '\0';
    char *line = buf;
    for (char *p = buf; p < nl; p++)
      if ((unsigned char) *p == 0xff)
        line = p + 1;
    json_object *m = json_tokener_parse (line), *cmd = NULL, *args, *id;
    const char *name = m && json_object_object_get_ex (m, "execute", &cmd)
      ? json_object_get_string (cmd) : "";
    char out[512];
    if (strcmp (name, "guest-sync-delimited") == 0
        && json_object_object_get_ex (m, "arguments", &args)
        && json_object_object_get_ex (args, "id", &id))
      snprintf (out, sizeof out, "\xff{\"return\": %lld}\n", (long long) json_object_get_int64 (id));
    else if (strcmp (name, "guest-fsfreeze-status") == 0)
      snprintf (out, sizeof out, "{\"return\": \"fro\\u001b[2Jzen\\nX\\u0007\"}\n");
    else
      snprintf (out, sizeof out, "{\"error\": {\"class\": \"Generic\\u001bError\", "
                "\"desc\": \"evil\\u001b[2J\\u001b]0;owned\\u0007\\nline2\\r\\u00ff\"}}\n");
    json_object_put (m);
    send (c, out, strlen (out), MSG_NOSIGNAL);
    memmove (buf, nl + 1, len - (size_t) (nl + 1 - buf));
    len -= (size_t) (nl + 1 - buf);
  }
}

/* Fail unless MSG has no control byte, DEL or non-ASCII byte. */
static void
check_printable (const char *msg)
{
  for (const unsigned char *p = (const unsigned char *) msg; *p; p++)
    CHECK (*p >= 0x20 && *p < 0x7f);
}

/* The thaw guard: released with "thawed" it stays away; released without it
 * (as when its parent dies) it connects, resynchronises, thaws, and repeats
 * thaw until the status says thawed, then leaves. */
static void
check_guard (const char *dir)
{
  char *p1 = qb_asprintf ("%s/guard1.sock", dir), *p2 = qb_asprintf ("%s/guard2.sock", dir);
  int l1 = mute_listener (p1), l2 = mute_listener (p2);
  thawguard *tg1 = thawguard_start (p1, 20000);
  thawguard *tg2 = thawguard_start (p2, 20000);
  CHECK (tg1 && tg2);
  thawguard_release (tg1, true);
  thawguard_release (tg2, false);

  struct pollfd p = { .fd = l2, .events = POLLIN };
  CHECK (poll (&p, 1, 10000) == 1);
  int c = accept (l2, NULL, NULL);
  CHECK (c >= 0);
  char buf[4096];
  size_t len = 0;
  /* 0xFF, the sync, and the thaw sent at once, without waiting for the sync. */
  CHECK (read_until (c, buf, sizeof buf, &len, "guest-fsfreeze-thaw") == 0);
  CHECK ((unsigned char) buf[0] == 0xff);
  char *ids = strstr (buf, "\"id\": ");
  CHECK (ids && strstr (buf, "guest-sync-delimited") && strstr (buf, "guest-sync-delimited") < strstr (buf, "thaw"));
  long long id = strtoll (ids + 6, NULL, 10);
  char out[256];
  /* A stale reply (a freeze finishing), our 0xFF and sync reply, the thaw's. */
  snprintf (out, sizeof out, "{\"return\": 7}\n\xff{\"return\": %lld}\n{\"return\": 1}\n", id);
  say (c, out);
  len = 0;
  CHECK (read_until (c, buf, sizeof buf, &len, "guest-fsfreeze-status") == 0);
  say (c, "{\"return\": \"frozen\"}\n");            /* still frozen: thaw again */
  len = 0;
  CHECK (read_until (c, buf, sizeof buf, &len, "guest-fsfreeze-thaw") == 0);
  say (c, "{\"return\": 1}\n");
  len = 0;
  CHECK (read_until (c, buf, sizeof buf, &len, "guest-fsfreeze-status") == 0);
  say (c, "{\"return\": \"thawed\"}\n");
  len = 0;
  CHECK (read_until (c, buf, sizeof buf, &len, "never sent") == -1);   /* it left: EOF */
  close (c);
  /* The released guard never came. */
  p.fd = l1;
  CHECK (poll (&p, 1, 0) == 0);
  close (l1);
  close (l2);
  free (p1);
  free (p2);
}

int
main (void)
{
  const char *ga = test_have (QEMU_GA) ? QEMU_GA : test_have (QEMU_GA_ALT) ? QEMU_GA_ALT : NULL;
  const char *dir = test_tmpdir ();

  /* An agent socket that accepts and never answers: a bounded timeout. */
  char *mute = qb_asprintf ("%s/mute.sock", dir);
  int lfd = mute_listener (mute);
  uint64_t t0 = qb_mono_ms ();
  CHECK (qga_connect (mute, 500) == NULL);
  uint64_t dt = qb_mono_ms () - t0;
  CHECK_ERR (QB_ETIMEDOUT, "did not answer");
  CHECK (dt >= 450 && dt < 2000);
  /* The same for QMP: a greeting that never comes reads as "busy". */
  CHECK (qmp_connect (mute, 300) == NULL);
  CHECK (qb_error_code () == QB_EBUSY);
  close (lfd);

  /* An agent that speaks garbage: an error within the timeout, no hang. */
  char *junk = qb_asprintf ("%s/junk.sock", dir);
  lfd = mute_listener (junk);
  pthread_t t;
  CHECK (pthread_create (&t, NULL, garbage_main, &lfd) == 0);
  t0 = qb_mono_ms ();
  CHECK (qga_connect (junk, 500) == NULL);
  CHECK (qb_error_code () == QB_ETIMEDOUT);
  CHECK (qb_mono_ms () - t0 < 2000);
  pthread_join (t, NULL);
  close (lfd);

  /* Nobody listening. */
  CHECK (qga_connect (junk, 500) == NULL);
  CHECK (qb_error_code () == QB_EHOSTDOWN);

  /* A hostile agent: its error text and status string come out escaped. */
  char *evil = qb_asprintf ("%s/evil.sock", dir);
  lfd = mute_listener (evil);
  CHECK (pthread_create (&t, NULL, hostile_main, &lfd) == 0);
  qga *h = qga_connect (evil, 5000);
  CHECK (h != NULL);
  CHECK (qga_freeze (h, 5000) == -1);
  CHECK_ERR (QB_EQMP, "guest-fsfreeze-freeze");
  check_printable (qb_error_msg ());
  CHECK (strstr (qb_error_msg (), "evil\\x1b[2J\\x1b]0;owned\\x07\\x0aline2\\x0d") != NULL);
  CHECK (strstr (qb_error_msg (), "Generic\\x1bError") != NULL);
  CHECK (qga_frozen (h, 5000) == -1);
  CHECK_ERR (QB_EPROTO, "fsfreeze status");
  check_printable (qb_error_msg ());
  CHECK (strstr (qb_error_msg (), "fro\\x1b[2Jzen\\x0aX\\x07") != NULL);
  qga_close (h);
  pthread_join (t, NULL);
  close (lfd);
  free (evil);

  check_guard (dir);

  if (!ga) {
    printf ("SKIP: qemu-ga not installed (package qemu-guest-agent); "
            "the timeout checks passed\n");
    test_cleanup ();
    return 77;
  }
  char *sock = qb_asprintf ("%s/agent.sock", dir);
  char *log = qb_asprintf ("%s/qga.log", dir);
  char *argv[] = { (char *) ga, "-m", "unix-listen", "-p", sock, "-t", (char *) dir,
                   "-b", "guest-fsfreeze-freeze,guest-fsfreeze-freeze-list", NULL };
  pid_t pid = test_spawn (argv, log);
  CHECK (test_wait_socket (sock, pid, 10000) == 0);

  qga *g = qga_connect (sock, QGA_TIMEOUT_MS);
  CHECK (g != NULL);
  CHECK (qga_ping (g, 5000) == 0);
  CHECK (qga_frozen (g, 5000) == 0);
  /* Freeze is blocked on this agent: a clear error naming the command. */
  CHECK (qga_freeze (g, 5000) == -1);
  CHECK_ERR (QB_EQMP, "guest-fsfreeze-freeze");
  CHECK (strstr (qb_error_msg (), "disabled") != NULL);
  /* The connection stays usable after an error. */
  CHECK (qga_ping (g, 5000) == 0);
  json_object *info = qga_execute (g, "guest-info", NULL, 5000), *ver;
  CHECK (info && json_object_object_get_ex (info, "version", &ver));
  json_object_put (info);
  qga_close (g);

  /* The agent serves the next client after the first left, and a fresh
   * handshake skips whatever the previous client left behind. */
  g = qga_connect (sock, QGA_TIMEOUT_MS);
  CHECK (g != NULL);
  CHECK (qga_ping (g, 5000) == 0);

  /* The agent goes away. */
  test_kill (pid);
  CHECK (qga_ping (g, 5000) == -1);
  CHECK (qb_error_code () == QB_EHOSTDOWN);
  qga_close (g);

  free (mute);
  free (junk);
  free (sock);
  free (log);
  test_cleanup ();
  printf ("qga: all checks passed\n");
  return 0;
}
