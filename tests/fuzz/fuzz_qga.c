/* Fuzz target: the guest-agent client (qmp/qga.c over qmp/jsonio.c).
 *
 * Input: one mode byte, then everything the agent says before closing.  A
 * server thread accepts the client's connection on a unix socket, sends the
 * input and shuts its side.  The sync id is made predictable by linking with
 * --wrap=getrandom: it is always 1, so replies like {"return": 1} after a
 * 0xFF byte complete the handshake.  Mode bits 0..2 pick the commands run
 * after it.  Invariants: results are -1 with a recorded error, or in range. */
#include "fuzz.h"
#include "common/error.h"
#include "qmp/qga.h"

#include <pthread.h>
#include <string.h>
#include <sys/un.h>

#define MAX_INPUT (8u << 20)   /* megabytes reach the agent limits */
#define TIMEOUT_MS 50

/* Every random id qga.c asks for is 1. */
ssize_t __wrap_getrandom (void *buf, size_t len, unsigned flags);
ssize_t
__wrap_getrandom (void *buf, size_t len, unsigned flags)
{
  (void) flags;
  memset (buf, 0, len);
  return (ssize_t) len;
}

static int listen_fd = -1;
static char sock_path[108];

typedef struct server { const uint8_t *data; size_t len; } server;

/* Accept one client, send the input, shut the write side, drain until EOF. */
static void *
server_run (void *opaque)
{
  server *s = opaque;
  int fd = accept (listen_fd, NULL, NULL);
  if (fd < 0)
    abort ();
  int big = 1 << 20;
  setsockopt (fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  size_t done = 0;
  while (done < s->len) {
    ssize_t n = send (fd, s->data + done, s->len - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    done += (size_t) n;
  }
  shutdown (fd, SHUT_WR);
  char sink[4096];
  while (read (fd, sink, sizeof sink) > 0)
    ;
  close (fd);
  return NULL;
}

/* Check a result of a count-returning call. */
static void
check_result (int r, const char *what)
{
  FUZZ_CHECK (r >= -1, "%s returned %d", what, r);
  if (r == -1) {
    qb_err e = qb_error_code ();
    FUZZ_CHECK (e != QB_OK && *qb_error_msg () != '\0', "%s failed without an error", what);
    FUZZ_CHECK (e == QB_EHOSTDOWN || e == QB_EPROTO || e == QB_EQMP || e == QB_ETIMEDOUT,
                "%s: unexpected error %s: %s", what, qb_err_name (e), qb_error_msg ());
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 1 || size > MAX_INPUT)
    return 0;
  if (listen_fd < 0) {
    char dir[] = "/tmp/qbfuzz.XXXXXX";
    if (!mkdtemp (dir))
      abort ();
    snprintf (sock_path, sizeof sock_path, "%s/qga", dir);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    strcpy (sa.sun_path, sock_path);
    listen_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listen_fd < 0 || bind (listen_fd, (struct sockaddr *) &sa, sizeof sa) < 0
        || listen (listen_fd, 4) < 0)
      abort ();
  }
  unsigned mode = data[0];
  server s = { data + 1, size - 1 };
  pthread_t th;
  if (pthread_create (&th, NULL, server_run, &s) != 0)
    abort ();
  qb_error_clear ();
  qga *g = qga_connect (sock_path, TIMEOUT_MS);
  if (!g) {
    check_result (-1, "connect");
    /* The server may still wait in accept if the connect itself failed. */
    if (qb_error_code () != QB_EHOSTDOWN && qb_error_code () != QB_EPROTO
        && qb_error_code () != QB_ETIMEDOUT)
      abort ();
  }
  else {
    qb_error_clear ();
    check_result (qga_ping (g, TIMEOUT_MS), "ping");
    if (mode & 1) {
      qb_error_clear ();
      check_result (qga_freeze (g, TIMEOUT_MS), "freeze");
    }
    if (mode & 2) {
      qb_error_clear ();
      int f = qga_frozen (g, TIMEOUT_MS);
      check_result (f, "frozen");
      FUZZ_CHECK (f <= 1, "frozen returned %d", f);
    }
    if (mode & 4) {
      qb_error_clear ();
      check_result (qga_thaw (g, TIMEOUT_MS), "thaw");
    }
    qga_close (g);
  }
  pthread_join (th, NULL);
  return 0;
}
