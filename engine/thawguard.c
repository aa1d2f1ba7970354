/* qmpbackupfs — thaw guard (see thawguard.h).
 *
 * Everything the guard sends is formatted before fork; after fork the guard
 * uses only system calls (poll, read, send, socket, connect, close, dup2,
 * open, sigaction, setsid, clock_gettime, _exit) and its own byte scanning:
 * no malloc, no stdio, no locks another thread of the parent could hold. */
#include "engine/thawguard.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GUARD_PIPE_FD 3          /* the guard's end of the channel after the fd shuffle */
#define GUARD_RETRY_MS 200       /* pause between connection attempts / thaw retries */
#define GUARD_THAWED_BYTE 'T'

struct thawguard {
  int wfd;                       /* our end of the channel */
};

/* What the guard needs, all prepared before fork. */
typedef struct guard_plan {
  struct sockaddr_un sa;
  char hello[192];               /* 0xFF, guest-sync-delimited with ID, thaw */
  size_t hello_len;
  int64_t id;
  int budget_ms;
} guard_plan;

static const char thaw_msg[] = "{\"execute\": \"guest-fsfreeze-thaw\"}\n";
static const char status_msg[] = "{\"execute\": \"guest-fsfreeze-status\"}\n";

/* ---- In the guard: async-signal-safe helpers only ---- */

/* Monotonic milliseconds. */
static uint64_t
g_now_ms (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/* Milliseconds left until DEADLINE, 0 when past. */
static int
g_left (uint64_t deadline)
{
  uint64_t now = g_now_ms ();
  return now >= deadline ? 0 : (int) (deadline - now);
}

/* Sleep MS milliseconds, at most until DEADLINE. */
static void
g_pause (int ms, uint64_t deadline)
{
  int left = g_left (deadline);
  poll (NULL, 0, ms < left ? ms : left);
}

/* Send LEN bytes of BUF on FD before DEADLINE: 0 or -1. */
static int
g_send (int fd, const char *buf, size_t len, uint64_t deadline)
{
  while (len > 0) {
    ssize_t n = send (fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      buf += n;
      len -= (size_t) n;
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR)
      return -1;
    int left = g_left (deadline);
    if (left == 0)
      return -1;
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    poll (&p, 1, left);
  }
  return 0;
}

/* Input buffer of one connection. */
typedef struct g_reader {
  char buf[4096];
  size_t len;
  int skipping;                  /* dropping the rest of an overlong line */
} g_reader;

/* The next line from FD (without its newline, truncated to CAP - 1 bytes,
 * NUL-terminated) before DEADLINE: its length, or -1 (EOF, error, time). */
static ssize_t
g_line (int fd, g_reader *rd, uint64_t deadline, char *out, size_t cap)
{
  for (;;) {
    char *nl = memchr (rd->buf, '\n', rd->len);
    if (nl) {
      size_t n = (size_t) (nl - rd->buf);
      size_t c = n < cap - 1 ? n : cap - 1;
      int skipped = rd->skipping;
      memcpy (out, rd->buf, c);
      out[c] = '\0';
      memmove (rd->buf, nl + 1, rd->len - n - 1);
      rd->len -= n + 1;
      rd->skipping = 0;
      if (!skipped)
        return (ssize_t) c;
      continue;
    }
    if (rd->len == sizeof rd->buf) {
      rd->len = 0;
      rd->skipping = 1;
    }
    int left = g_left (deadline);
    if (left == 0)
      return -1;
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r = poll (&p, 1, left);
    if (r < 0 && errno != EINTR)
      return -1;
    if (r <= 0)
      continue;
    ssize_t k = read (fd, rd->buf + rd->len, sizeof rd->buf - rd->len);
    if (k == 0)
      return -1;
    if (k < 0) {
      if (errno == EAGAIN || errno == EINTR)
        continue;
      return -1;
    }
    rd->len += (size_t) k;
  }
}

/* Where NEEDLE (NUL-terminated) occurs in the LEN bytes at HAY, or NULL. */
static const char *
g_find (const char *hay, size_t len, const char *needle)
{
  size_t nl = strlen (needle);
  for (size_t i = 0; nl <= len && i <= len - nl; i++)
    if (memcmp (hay + i, needle, nl) == 0)
      return hay + i;
  return NULL;
}

/* The integer of "return": N in LINE (LEN bytes, after its last 0xFF), or -1. */
static int64_t
g_return_int (const char *line, size_t len)
{
  for (size_t i = len; i-- > 0;)
    if ((unsigned char) line[i] == 0xff) {
      line += i + 1;
      len -= i + 1;
      break;
    }
  const char *p = g_find (line, len, "\"return\"");
  if (!p)
    return -1;
  const char *end = line + len;
  p += 8;
  while (p < end && (*p == ' ' || *p == '\t' || *p == ':'))
    p++;
  int64_t v = 0;
  int digits = 0;
  while (p < end && *p >= '0' && *p <= '9' && digits < 12) {
    v = v * 10 + (*p++ - '0');
    digits++;
  }
  return digits ? v : -1;
}

/* One connection: resynchronise, thaw, repeat thaw until the status says
 * thawed.  0 when it does, -1 to reconnect. */
static int
g_session (int fd, const guard_plan *p, uint64_t deadline)
{
  g_reader rd = { .len = 0 };
  char line[512];
  ssize_t n;
  if (g_send (fd, p->hello, p->hello_len, deadline) < 0)
    return -1;
  do {                            /* skip the agent's error for our 0xFF, stale replies */
    n = g_line (fd, &rd, deadline, line, sizeof line);
    if (n < 0)
      return -1;
  } while (g_return_int (line, (size_t) n) != p->id);
  if (g_line (fd, &rd, deadline, line, sizeof line) < 0)   /* the reply to the thaw */
    return -1;
  for (;;) {
    if (g_send (fd, status_msg, sizeof status_msg - 1, deadline) < 0)
      return -1;
    n = g_line (fd, &rd, deadline, line, sizeof line);
    if (n < 0)
      return -1;
    if (g_find (line, (size_t) n, "\"thawed\""))
      return 0;
    g_pause (GUARD_RETRY_MS, deadline);
    if (g_send (fd, thaw_msg, sizeof thaw_msg - 1, deadline) < 0
        || g_line (fd, &rd, deadline, line, sizeof line) < 0)
      return -1;
  }
}

/* The guard process: never returns. */
static void __attribute__ ((noreturn))
g_main (const guard_plan *p, int rfd)
{
  static const int ignored[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2,
                                 SIGTSTP, SIGTTIN, SIGTTOU };
  struct sigaction ign;
  memset (&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
    sigaction (ignored[i], &ign, NULL);
  sigset_t none;
  sigemptyset (&none);
  sigprocmask (SIG_SETMASK, &none, NULL);
  setsid ();
  prctl (PR_SET_NAME, "qb-thawguard", 0, 0, 0);

  /* Keep only the channel (as fd 3) and /dev/null on 0-2. */
  if (rfd != GUARD_PIPE_FD && dup2 (rfd, GUARD_PIPE_FD) < 0)
    _exit (1);
  int nul = open ("/dev/null", O_RDWR);
  if (nul >= 0)
    for (int fd = 0; fd < 3; fd++)
      if (nul != fd)
        dup2 (nul, fd);
  if (close_range (GUARD_PIPE_FD + 1, ~0U, 0) < 0)
    for (int fd = GUARD_PIPE_FD + 1; fd < 65536; fd++)
      close (fd);

  for (;;) {
    char b;
    ssize_t n = read (GUARD_PIPE_FD, &b, 1);
    if (n == 1 && b == GUARD_THAWED_BYTE)
      _exit (0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n != 1)
      break;                     /* EOF without "thawed": our turn */
  }
  close (GUARD_PIPE_FD);

  uint64_t deadline = g_now_ms () + (uint64_t) p->budget_ms;
  while (g_left (deadline) > 0) {
    int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0) {
      if (connect (fd, (const struct sockaddr *) &p->sa, sizeof p->sa) == 0
          && g_session (fd, p, deadline) == 0)
        _exit (0);
      close (fd);
    }
    g_pause (GUARD_RETRY_MS, deadline);
  }
  _exit (1);
}

/* ---- In the caller ---- */

thawguard *
thawguard_start (const char *agent_path, int budget_ms)
{
  guard_plan p;
  memset (&p, 0, sizeof p);
  p.sa.sun_family = AF_UNIX;
  if (!agent_path || strlen (agent_path) >= sizeof p.sa.sun_path) {
    qb_error_set (QB_EINVAL, "guest agent socket path too long: %s", agent_path ? agent_path : "");
    return NULL;
  }
  memcpy (p.sa.sun_path, agent_path, strlen (agent_path) + 1);
  uint32_t r = 0;
  if (getrandom (&r, sizeof r, GRND_NONBLOCK) != sizeof r)
    r = (uint32_t) (qb_now_us () ^ (uint64_t) getpid () << 16);
  p.id = (int64_t) (r & 0x7fffffff) + 1;
  p.budget_ms = budget_ms > 0 ? budget_ms : THAWGUARD_BUDGET_MS;
  int len = snprintf (p.hello, sizeof p.hello,
                      "\xff{\"execute\": \"guest-sync-delimited\", \"arguments\": {\"id\": %lld}}\n%s",
                      (long long) p.id, thaw_msg);
  if (len < 0 || (size_t) len >= sizeof p.hello) {
    qb_error_set (QB_EINVAL, "thaw guard: message too long");
    return NULL;
  }
  p.hello_len = (size_t) len;

  /* A socket pair rather than a pipe: sending to a dead guard must not
   * raise SIGPIPE in the caller. */
  int fds[2];
  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) {
    qb_error_set_errno (errno, "creating the thaw guard's channel");
    return NULL;
  }
  pid_t pid = fork ();
  if (pid < 0) {
    int e = errno;
    close (fds[0]);
    close (fds[1]);
    qb_error_set_errno (e, "starting the thaw guard (fork)");
    return NULL;
  }
  if (pid == 0) {
    /* Only async-signal-safe calls from here: the parent may have threads. */
    pid_t g = _Fork ();
    if (g == 0)
      g_main (&p, fds[0]);
    _exit (g < 0 ? 1 : 0);
  }
  close (fds[0]);
  int st = 0;
  pid_t w;
  while ((w = waitpid (pid, &st, 0)) < 0 && errno == EINTR)
    ;
  if (w == pid && !(WIFEXITED (st) && WEXITSTATUS (st) == 0)) {
    close (fds[1]);
    qb_error_set (QB_EIO, "starting the thaw guard: the second fork failed");
    return NULL;
  }
  thawguard *tg = qb_calloc (1, sizeof *tg);
  tg->wfd = fds[1];
  return tg;
}

void
thawguard_release (thawguard *tg, bool thawed)
{
  if (!tg)
    return;
  if (thawed) {
    static const char b = GUARD_THAWED_BYTE;
    ssize_t n;
    while ((n = send (tg->wfd, &b, 1, MSG_NOSIGNAL)) < 0 && errno == EINTR)
      ;
  }
  close (tg->wfd);
  free (tg);
}
