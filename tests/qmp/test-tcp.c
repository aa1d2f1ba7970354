/* QMP over TCP on loopback: address parsing (tcp:HOST:PORT, IPv6 in
 * brackets, bad forms refused), a fake QMP server on 127.0.0.1 and on ::1
 * (when the host has IPv6), a host name resolved with getaddrinfo, a refused
 * port (QB_EHOSTDOWN), a listener that never greets (bounded: QB_EBUSY), and
 * the protocol trace escaping what the peer sends. */
#include "qmp/qmp.h"
#include "qmp/jsonio.h"
#include "testlib.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>

/* A listening TCP socket on loopback (IPv6 when V6) with a free port: the
 * fd, its port in *PORT; -1 when the family is not available. */
static int
listen_loopback (bool v6, int *port)
{
  int fd = socket (v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  struct sockaddr_storage ss = { 0 };
  socklen_t len;
  if (v6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *) &ss;
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  }
  else {
    struct sockaddr_in *a = (struct sockaddr_in *) &ss;
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    len = sizeof *a;
  }
  if (bind (fd, (struct sockaddr *) &ss, len) < 0 || listen (fd, 4) < 0
      || getsockname (fd, (struct sockaddr *) &ss, &len) < 0) {
    close (fd);
    return -1;
  }
  *port = ntohs (v6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                 : ((struct sockaddr_in *) &ss)->sin_port);
  return fd;
}

/* Fake QMP server thread: accept one client, greet, answer qmp_capabilities
 * and one more command with a reply carrying an escape byte. */
static void *
server_main (void *arg)
{
  int lfd = *(int *) arg;
  int fd = accept (lfd, NULL, NULL);
  if (fd < 0)
    return NULL;
  jsonio *io = jsonio_new (fd);
  const char *greet = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";
  jsonio_send_raw (io, greet, strlen (greet), 5000);
  for (int i = 0; i < 2; i++) {
    json_object *m = jsonio_recv (io, 5000), *id = NULL;
    if (!m)
      break;
    json_object_object_get_ex (m, "id", &id);
    char *reply = qb_asprintf ("{\"return\": {\"status\": \"x\\u001by\"}, \"id\": \"%s\"}\n",
                               id ? json_object_get_string (id) : "");
    jsonio_send_raw (io, reply, strlen (reply), 5000);
    free (reply);
    json_object_put (m);
  }
  jsonio_free (io);
  return NULL;
}

/* Connect to ADDR (a fake server on LFD answers) and run one command. */
static void
check_session (int lfd, const char *addr)
{
  pthread_t t;
  CHECK (pthread_create (&t, NULL, server_main, &lfd) == 0);
  qmp *q = qmp_connect (addr, 5000);
  CHECK (q != NULL);
  json_object *r = qmp_execute (q, "query-status", NULL, 5000);
  CHECK (r != NULL);
  CHECK (strcmp (json_object_get_string (json_object_object_get (r, "status")), "x\033y") == 0);
  json_object_put (r);
  qmp_close (q);
  pthread_join (t, NULL);
}

int
main (void)
{
  /* Parsing. */
  const char *good[][3] = {
    { "tcp:127.0.0.1:4444", "127.0.0.1", "4444" },
    { "tcp:[::1]:5", "::1", "5" },
    { "tcp:localhost:65535", "localhost", "65535" },
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    char *h, *p;
    CHECK (jsonio_parse_tcp (good[i][0], &h, &p) == 0);
    CHECK (strcmp (h, good[i][1]) == 0 && strcmp (p, good[i][2]) == 0);
    free (h);
    free (p);
  }
  const char *bad[] = { "tcp:", "tcp:host", "tcp:host:", "tcp:host:0", "tcp:host:65536",
                        "tcp:host:12a", "tcp:::1:5", "tcp:[::1]5", "tcp::5", "tcp:[::1]:",
                        "tcp:h:123456", "unix:/x" };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *h, *p;
    CHECK (jsonio_parse_tcp (bad[i], &h, &p) < 0);
    CHECK (qb_error_code () == QB_EINVAL);
    CHECK (jsonio_connect (bad[i], 100) < 0 || strncmp (bad[i], "unix:", 5) == 0);
  }

  /* IPv4 loopback, with the trace on a pipe. */
  int port, pfd[2];
  int lfd = listen_loopback (false, &port);
  CHECK (lfd >= 0);
  CHECK (pipe (pfd) == 0);
  jsonio_set_trace (pfd[1]);
  char *addr = qb_asprintf ("tcp:127.0.0.1:%d", port);
  check_session (lfd, addr);
  jsonio_set_trace (-1);
  close (pfd[1]);
  char buf[16384];
  ssize_t n = read (pfd[0], buf, sizeof buf - 1);
  CHECK (n > 0);
  buf[n] = '\0';
  close (pfd[0]);
  CHECK (strstr (buf, "> {\"execute\":\"qmp_capabilities\"") != NULL);
  CHECK (strstr (buf, "< {\"return\":{\"status\":\"x\\u001by\"}") != NULL);
  CHECK (memchr (buf, 033, (size_t) n) == NULL);
  free (addr);

  /* A host name, resolved with getaddrinfo (localhost may give ::1 first:
   * each address is tried in turn). */
  addr = qb_asprintf ("tcp:localhost:%d", port);
  check_session (lfd, addr);
  free (addr);

  /* Refused: nobody listens any more on that port. */
  close (lfd);
  addr = qb_asprintf ("tcp:127.0.0.1:%d", port);
  CHECK (qmp_connect (addr, 2000) == NULL);
  CHECK_ERR (QB_EHOSTDOWN, "is the VM running?");
  free (addr);

  /* A listener that accepts (the kernel does) but never greets: bounded,
   * QB_EBUSY like a held unix socket. */
  lfd = listen_loopback (false, &port);
  CHECK (lfd >= 0);
  addr = qb_asprintf ("tcp:127.0.0.1:%d", port);
  CHECK (qmp_connect (addr, 300) == NULL);
  CHECK (qb_error_code () == QB_EBUSY || qb_error_code () == QB_ETIMEDOUT);
  free (addr);
  close (lfd);

  /* IPv6 loopback in brackets, when the host has it. */
  lfd = listen_loopback (true, &port);
  if (lfd >= 0) {
    addr = qb_asprintf ("tcp:[::1]:%d", port);
    check_session (lfd, addr);
    free (addr);
    close (lfd);
  }
  else
    fprintf (stderr, "no IPv6 loopback here: the [::1] case is left out\n");

  /* An unknown host name: QB_EHOSTDOWN saying it cannot be resolved. */
  CHECK (jsonio_connect ("tcp:no-such-host.invalid:1", 2000) < 0);
  CHECK_ERR (QB_EHOSTDOWN, "cannot resolve");
  printf ("tcp: ok\n");
  return 0;
}
