/* qmpbackupfs — bounded reader/writer of newline-separated JSON objects
 * (see jsonio.h).  The socket is non-blocking; every wait is a poll with a
 * deadline, sliced into steps of at most 100 ms so a cancel flag is seen. */
#include "jsonio.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define RBUF_SIZE (64 * 1024)
#define HEAD_SIZE 40          /* bytes of a message kept for error messages */
#define POLL_SLICE_MS 100
#define TOKENER_KEEP (256 * 1024) /* after a bigger message, a fresh tokener frees its buffer */
#define TRACE_MAX 4096            /* bytes of one message a trace line shows */

static atomic_int trace_fd = -1;  /* jsonio_set_trace */

/* What the value scanner knows about the current message. */
typedef struct scan {
  bool in_str, esc;         /* inside a string; after a backslash in it */
  size_t depth;             /* open containers */
  size_t values;            /* '{' '[' ',' ':' seen outside strings */
} scan;

struct jsonio {
  int fd;
  const atomic_int *cancel;
  json_tokener *tok;
  unsigned char *rbuf;
  size_t rpos, rlen;        /* unread bytes are rbuf[rpos..rlen) */
  size_t msg_bytes;         /* bytes of the current message fed so far */
  scan sc;                  /* scanner state after those bytes */
  size_t max_bytes, max_values;
  size_t last_bytes, last_values;
  size_t junk;              /* bytes skipped or refused since the last good message */
  bool broken;              /* a message was refused: no more traffic */
  char broken_why[400];
  unsigned char head[HEAD_SIZE];
  size_t head_len;
};

/* A tokener with our depth limit and strict JSON, trailing input allowed. */
static json_tokener *
tokener_make (void)
{
  json_tokener *tok = json_tokener_new_ex (JSONIO_MAX_DEPTH);
  if (!tok)
    abort ();
  json_tokener_set_flags (tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
  return tok;
}

jsonio *
jsonio_new (int fd)
{
  jsonio *j = qb_calloc (1, sizeof *j);
  int fl = fcntl (fd, F_GETFL);
  if (fl >= 0)
    fcntl (fd, F_SETFL, fl | O_NONBLOCK);
  fcntl (fd, F_SETFD, FD_CLOEXEC);
  j->fd = fd;
  j->tok = tokener_make ();
  j->rbuf = qb_calloc (1, RBUF_SIZE);
  j->max_bytes = JSONIO_QMP_MAX_BYTES;
  j->max_values = JSONIO_QMP_MAX_VALUES;
  return j;
}

void
jsonio_set_limits (jsonio *j, size_t max_bytes, size_t max_values)
{
  if (max_bytes)
    j->max_bytes = max_bytes;
  if (max_values)
    j->max_values = max_values;
}

void
jsonio_last_size (jsonio *j, size_t *bytes, size_t *values)
{
  if (bytes)
    *bytes = j->last_bytes;
  if (values)
    *values = j->last_values;
}

bool
jsonio_broken (jsonio *j)
{
  return j->broken;
}

/* The error of a call on a broken connection: -1 with QB_EPROTO. */
static int
broken_error (jsonio *j)
{
  return qb_error_set (QB_EPROTO, "%s", j->broken_why);
}

void
jsonio_free (jsonio *j)
{
  if (!j)
    return;
  if (j->fd >= 0)
    close (j->fd);
  json_tokener_free (j->tok);
  free (j->rbuf);
  free (j);
}

int
jsonio_fd (jsonio *j)
{
  return j->fd;
}

void
jsonio_set_cancel (jsonio *j, const atomic_int *cancel)
{
  j->cancel = cancel;
}

/* Render up to LEN bytes of BUF printable into OUT (size OUTLEN): control
 * and non-ASCII bytes become \xNN, quotes and backslashes are escaped. */
void
jsonio_sanitize (const void *buf, size_t len, char *out, size_t outlen)
{
  const unsigned char *p = buf;
  size_t o = 0;
  if (outlen == 0)
    return;
  for (size_t i = 0; i < len; i++) {
    char tmp[8];
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\')
      tmp[0] = p[i], tmp[1] = '\0';
    else if (p[i] == '"' || p[i] == '\\')
      snprintf (tmp, sizeof tmp, "\\%c", p[i]);
    else
      snprintf (tmp, sizeof tmp, "\\x%02x", p[i]);
    size_t tl = strlen (tmp);
    if (o + tl + 1 > outlen)
      break;
    memcpy (out + o, tmp, tl);
    o += tl;
  }
  out[o] = '\0';
}

/* Milliseconds left until DEADLINE (a qb_mono_ms value), at least 0. */
static int
remaining_ms (uint64_t deadline)
{
  uint64_t now = qb_mono_ms ();
  if (now >= deadline)
    return 0;
  uint64_t left = deadline - now;
  return left > 1000000000 ? 1000000000 : (int) left;
}

/* Deadline for a wait of TIMEOUT_MS from now (negative counts as 0). */
static uint64_t
deadline_of (int timeout_ms)
{
  return qb_mono_ms () + (timeout_ms > 0 ? (uint64_t) timeout_ms : 0);
}

/* Wait until the socket is ready for EVENTS or DEADLINE passes: 0 ready,
 * -1 with QB_ETIMEDOUT, QB_ECANCELED or an I/O error.  WHAT names the wait. */
static int
wait_fd (jsonio *j, short events, uint64_t deadline, const char *what)
{
  for (;;) {
    if (j->cancel && atomic_load (j->cancel))
      return qb_error_set (QB_ECANCELED, "canceled while %s", what);
    int left = remaining_ms (deadline);
    struct pollfd pfd = { .fd = j->fd, .events = events };
    int slice = left < POLL_SLICE_MS ? left : POLL_SLICE_MS;
    int r = poll (&pfd, 1, slice);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return qb_error_set_errno (errno, "poll while %s", what);
    }
    if (r > 0)
      return 0;   /* ready, or POLLHUP/POLLERR: the read/send will tell */
    if (left == 0)
      return qb_error_set (QB_ETIMEDOUT, "no answer from the peer while %s", what);
  }
}

void
jsonio_set_trace (int fd)
{
  atomic_store (&trace_fd, fd);
}

/* One trace line for LEN bytes of BUF on J's socket, DIR ">" sent or "<"
 * received, control and non-ASCII bytes as \xNN, cut at TRACE_MAX bytes; written
 * with one write(2) so lines of several threads do not mix. */
static void
trace (jsonio *j, const char *dir, const void *buf, size_t len)
{
  int fd = atomic_load (&trace_fd);
  if (fd < 0)
    return;
  while (len > 0 && ((const char *) buf)[len - 1] == '\n')
    len--;
  size_t cut = len > TRACE_MAX ? TRACE_MAX : len, o = 0;
  char *text = malloc (cut * 4 + 1);
  if (!text)
    return;
  const unsigned char *b = buf;
  for (size_t i = 0; i < cut; i++)    /* control and non-ASCII bytes as \xNN */
    if (b[i] >= 0x20 && b[i] < 0x7f)
      text[o++] = (char) b[i];
    else
      o += (size_t) sprintf (text + o, "\\x%02x", b[i]);
  text[o] = '\0';
  char *line = qb_asprintf ("trace: fd %d %s %s%s\n", j->fd, dir, text,
                            cut < len ? " ..." : "");
  ssize_t w = write (fd, line, strlen (line));
  (void) w;
  free (line);
  free (text);
}

int
jsonio_send_raw (jsonio *j, const void *buf, size_t len, int timeout_ms)
{
  const char *p = buf;
  uint64_t deadline = deadline_of (timeout_ms);
  if (j->broken)
    return broken_error (j);
  trace (j, ">", buf, len);
  while (len > 0) {
    ssize_t n = send (j->fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == ENOTSOCK)
      n = write (j->fd, p, len);
    if (n > 0) {
      p += n;
      len -= (size_t) n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (wait_fd (j, POLLOUT, deadline, "sending") < 0)
        return -1;
      continue;
    }
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN))
      return qb_error_set (QB_EHOSTDOWN, "the peer closed the connection while we were sending");
    return qb_error_set_errno (n < 0 ? errno : EIO, "send");
  }
  return 0;
}

int
jsonio_send (jsonio *j, json_object *obj, int timeout_ms)
{
  size_t len;
  const char *s = json_object_to_json_string_length (obj, JSON_C_TO_STRING_PLAIN, &len);
  char *line = malloc (len + 2);
  if (!line)
    return qb_error_set (QB_ENOMEM, "out of memory");
  memcpy (line, s, len);
  line[len] = '\n';
  int r = jsonio_send_raw (j, line, len + 1, timeout_ms);
  free (line);
  return r;
}

/* Forget any partial message: fresh tokener, empty head.  After a big
 * message the tokener is replaced so its grown buffer is freed. */
static void
reset_message (jsonio *j)
{
  if (j->msg_bytes > TOKENER_KEEP) {
    json_tokener_free (j->tok);
    j->tok = tokener_make ();
  }
  else
    json_tokener_reset (j->tok);
  j->msg_bytes = 0;
  j->head_len = 0;
  memset (&j->sc, 0, sizeof j->sc);
}

/* Run the scanner SC over up to N bytes of P, a continuation of the current
 * message of which MSG_BYTES were fed already.  Stops after the byte that
 * closes the outermost container.  Returns the bytes that may be fed; sets
 * *OVER to "bytes" or "values" (else NULL) when the byte after those would
 * cross the limit. */
static size_t
scan_run (const jsonio *j, scan *sc, const unsigned char *p, size_t n, const char **over)
{
  *over = NULL;
  size_t room = j->max_bytes > j->msg_bytes ? j->max_bytes - j->msg_bytes : 0;
  for (size_t i = 0; i < n; i++) {
    if (i >= room) {
      *over = "bytes";
      return i;
    }
    unsigned char c = p[i];
    if (sc->in_str) {
      if (sc->esc)
        sc->esc = false;
      else if (c == '\\')
        sc->esc = true;
      else if (c == '"')
        sc->in_str = false;
      continue;
    }
    switch (c) {
    case '"':
      sc->in_str = true;
      break;
    case '{': case '[':
      sc->depth++;
      /* fall through */
    case ',': case ':':
      if (++sc->values > j->max_values) {
        sc->values--;
        *over = "values";
        return i;
      }
      break;
    case '}': case ']':
      if (sc->depth > 0 && --sc->depth == 0)
        return i + 1;
      break;
    default:
      break;
    }
  }
  return n;
}

/* Copy up to the head's free room from P (N bytes) into the head. */
static void
head_add (jsonio *j, const unsigned char *p, size_t n)
{
  size_t k = n < HEAD_SIZE - j->head_len ? n : HEAD_SIZE - j->head_len;
  memcpy (j->head + j->head_len, p, k);
  j->head_len += k;
}

/* Refuse the current message for crossing the OVER limit ("bytes" or
 * "values"), P/N being the unfed rest of the buffer: break the connection
 * (shut down, buffer dropped) and set QB_EPROTO.  Returns NULL. */
static json_object *
limit_error (jsonio *j, const char *over, const unsigned char *p, size_t n)
{
  char snip[HEAD_SIZE * 4 + 1];
  head_add (j, p, n);
  jsonio_sanitize (j->head, j->head_len, snip, sizeof snip);
  if (strcmp (over, "bytes") == 0)
    snprintf (j->broken_why, sizeof j->broken_why,
              "refused a message larger than the limit of %zu bytes from a possibly hostile "
              "peer; connection closed (message start: \"%s...\")", j->max_bytes, snip);
  else
    snprintf (j->broken_why, sizeof j->broken_why,
              "refused a message of more than %zu JSON values (the limit) from a possibly "
              "hostile peer; connection closed (message start: \"%s...\")",
              j->max_values, snip);
  j->broken = true;
  shutdown (j->fd, SHUT_RDWR);
  j->rpos = j->rlen = 0;
  reset_message (j);
  broken_error (j);
  return NULL;
}

/* Read more bytes into the buffer, waiting until DEADLINE: 0 or -1
 * (QB_EHOSTDOWN when the peer closed, QB_ETIMEDOUT, QB_ECANCELED). */
static int
fill (jsonio *j, uint64_t deadline, const char *what)
{
  if (j->rpos == j->rlen)
    j->rpos = j->rlen = 0;
  else if (j->rpos > 0 && j->rlen == RBUF_SIZE) {
    memmove (j->rbuf, j->rbuf + j->rpos, j->rlen - j->rpos);
    j->rlen -= j->rpos;
    j->rpos = 0;
  }
  for (;;) {
    ssize_t n = read (j->fd, j->rbuf + j->rlen, RBUF_SIZE - j->rlen);
    if (n > 0) {
      j->rlen += (size_t) n;
      return 0;
    }
    if (n == 0 || (errno == ECONNRESET || errno == EPIPE))
      return qb_error_set (QB_EHOSTDOWN, "the peer closed the connection%s",
                           j->msg_bytes ? " in the middle of a message" : "");
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return qb_error_set_errno (errno, "read");
    if (wait_fd (j, POLLIN, deadline, what) < 0)
      return -1;
  }
}

/* Set QB_EPROTO naming WHY and quoting the start of the current message. */
static json_object *
proto_error (jsonio *j, const char *why)
{
  char snip[HEAD_SIZE * 4 + 1];
  jsonio_sanitize (j->head, j->head_len, snip, sizeof snip);
  qb_error_set (QB_EPROTO, "the peer sent invalid data (%s): \"%s%s\"",
                why, snip, j->msg_bytes > j->head_len ? "..." : "");
  j->junk += j->msg_bytes;
  reset_message (j);
  return NULL;
}

json_object *
jsonio_recv (jsonio *j, int timeout_ms)
{
  uint64_t deadline = deadline_of (timeout_ms);
  if (j->broken) {
    broken_error (j);
    return NULL;
  }
  for (bool first = true;; first = false) {
    /* A peer that keeps sending must not hold us past the deadline. */
    if (!first) {
      if (j->cancel && atomic_load (j->cancel)) {
        qb_error_set (QB_ECANCELED, "canceled while waiting for a message");
        return NULL;
      }
      if (remaining_ms (deadline) == 0) {
        qb_error_set (QB_ETIMEDOUT, "no complete message from the peer within %d ms",
                      timeout_ms);
        return NULL;
      }
    }
    /* Between messages, whitespace (" \t\r\n") is skipped. */
    if (j->msg_bytes == 0)
      while (j->rpos < j->rlen && strchr (" \t\r\n", j->rbuf[j->rpos]) && j->rbuf[j->rpos])
        j->rpos++;
    if (j->rpos == j->rlen) {
      if (fill (j, deadline, "waiting for a message") < 0)
        return NULL;
      continue;
    }
    const unsigned char *p = j->rbuf + j->rpos;
    size_t n = j->rlen - j->rpos;
    /* Count what json-c would build before it sees a byte of it. */
    scan sc = j->sc;
    const char *over;
    size_t feed = scan_run (j, &sc, p, n, &over);
    if (over && feed == 0)
      return limit_error (j, over, p, n);
    json_object *obj = json_tokener_parse_ex (j->tok, (const char *) p, (int) feed);
    enum json_tokener_error err = json_tokener_get_error (j->tok);
    size_t used = obj || err == json_tokener_continue || err == json_tokener_success
      ? json_tokener_get_parse_end (j->tok) : feed;
    if (used > feed)
      used = feed;
    if (j->head_len < HEAD_SIZE) {
      size_t k = used;
      if (err != json_tokener_success && err != json_tokener_continue && k == 0)
        k = n;
      head_add (j, p, k);
    }
    j->msg_bytes += used;
    j->rpos += used;
    if (obj) {
      if (!json_object_is_type (obj, json_type_object)) {
        json_object_put (obj);
        return proto_error (j, "not a JSON object");
      }
      j->last_bytes = j->msg_bytes;
      j->last_values = sc.values;
      j->junk = 0;
      reset_message (j);
      if (atomic_load (&trace_fd) >= 0) {
        size_t tl;
        const char *t = json_object_to_json_string_length (obj, JSON_C_TO_STRING_PLAIN
                                                           | JSON_C_TO_STRING_NOSLASHESCAPE, &tl);
        trace (j, "<", t, tl);
      }
      return obj;
    }
    if (err == json_tokener_success) {
      /* A complete top-level "null". */
      return proto_error (j, "not a JSON object");
    }
    if (err == json_tokener_continue) {
      j->sc = sc;
      if (over)
        return limit_error (j, over, p + used, n - used);
      continue;
    }
    /* A syntax error desynchronises the stream: drop what is buffered. */
    j->junk += n - used;
    j->rpos = j->rlen = 0;
    char why[128];
    snprintf (why, sizeof why, "%s", err == json_tokener_error_depth
              ? "nesting deeper than the limit" : json_tokener_error_desc (err));
    return proto_error (j, why);
  }
}

int
jsonio_skip_to_delimiter (jsonio *j, int timeout_ms)
{
  uint64_t deadline = deadline_of (timeout_ms);
  if (j->broken)
    return broken_error (j);
  /* Resynchronising is never instant: a caller looping on it with what is
   * left of a deadline stops once nothing is left, however fast junk comes. */
  if (timeout_ms <= 0)
    return qb_error_set (QB_ETIMEDOUT, "no time left to wait for the 0xFF delimiter");
  reset_message (j);
  for (bool first = true;; first = false) {
    if (!first && remaining_ms (deadline) == 0)
      return qb_error_set (QB_ETIMEDOUT, "no 0xFF delimiter from the peer within %d ms",
                           timeout_ms);
    unsigned char *ff = memchr (j->rbuf + j->rpos, 0xff, j->rlen - j->rpos);
    size_t skip = ff ? (size_t) (ff - j->rbuf) + 1 - j->rpos : j->rlen - j->rpos;
    j->junk += skip;
    j->rpos += skip;
    if (j->junk > 2 * j->max_bytes) {
      /* Bounds also a caller that resynchronises in a loop on junk. */
      snprintf (j->broken_why, sizeof j->broken_why,
                "refused more than %zu bytes of junk (garbage, or data without the 0xFF "
                "delimiter) from a possibly hostile peer; connection closed",
                2 * j->max_bytes);
      j->broken = true;
      shutdown (j->fd, SHUT_RDWR);
      j->rpos = j->rlen = 0;
      return broken_error (j);
    }
    if (ff)
      return 0;
    if (fill (j, deadline, "waiting for the 0xFF delimiter") < 0)
      return -1;
  }
}
int
jsonio_connect_unix (const char *path, int timeout_ms)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (strlen (path) >= sizeof sa.sun_path)
    return qb_error_set (QB_EINVAL, "socket path too long: %s", path);
  strcpy (sa.sun_path, path);
  uint64_t deadline = deadline_of (timeout_ms);
  for (;;) {
    int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return qb_error_set_errno (errno, "socket");
    if (connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0)
      return fd;
    int e = errno;
    close (fd);
    if (e == EINTR)
      continue;
    if (e == ECONNREFUSED || e == ENOENT || e == ENOTSOCK)
      return qb_error_set (QB_EHOSTDOWN, "is the VM running? socket %s: %s",
                           path, strerror (e));
    if (e == EACCES || e == EPERM)
      return qb_error_set (QB_EPERM, "permission denied on socket %s", path);
    if (e == EAGAIN && remaining_ms (deadline) > 0) {
      /* Listen backlog full: retry shortly. */
      poll (NULL, 0, 20);
      continue;
    }
    if (e == EAGAIN)
      return qb_error_set (QB_EBUSY, "socket %s accepts no more connections (backlog full)", path);
    return qb_error_set_errno (e, "connect to socket %s", path);
  }
}

/* Wait until the non-blocking connect on FD finishes or DEADLINE passes:
 * 0, or -1 with errno set (ETIMEDOUT when time ran out). */
static int
connect_wait (int fd, uint64_t deadline)
{
  for (;;) {
    struct pollfd pfd = { .fd = fd, .events = POLLOUT };
    int left = (int) remaining_ms (deadline);
    if (left == 0) {
      errno = ETIMEDOUT;
      return -1;
    }
    int r = poll (&pfd, 1, left);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return -1;
    if (r == 0)
      continue;
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt (fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
      return -1;
    if (err) {
      errno = err;
      return -1;
    }
    return 0;
  }
}

int
jsonio_parse_tcp (const char *addr, char **host, char **port)
{
  if (strncmp (addr, "tcp:", 4) != 0)
    return qb_error_set (QB_EINVAL, "%s: not a tcp:HOST:PORT address", addr);
  const char *h = addr + 4, *colon;
  size_t hlen;
  if (*h == '[') {
    const char *close = strchr (h, ']');
    if (!close || close[1] != ':')
      return qb_error_set (QB_EINVAL, "%s: expected tcp:[IPV6]:PORT", addr);
    h++;
    hlen = (size_t) (close - h);
    colon = close + 1;
  }
  else {
    colon = strrchr (h, ':');
    if (!colon || memchr (h, ':', (size_t) (colon - h)))
      return qb_error_set (QB_EINVAL, "%s: expected tcp:HOST:PORT (an IPv6 address in "
                           "brackets: tcp:[::1]:PORT)", addr);
    hlen = (size_t) (colon - h);
  }
  const char *p = colon + 1;
  size_t plen = strlen (p);
  bool digits = plen > 0 && plen <= 5;
  for (size_t i = 0; i < plen; i++)
    digits &= p[i] >= '0' && p[i] <= '9';
  if (hlen == 0 || !digits || atoi (p) < 1 || atoi (p) > 65535)
    return qb_error_set (QB_EINVAL, "%s: expected tcp:HOST:PORT with a port 1-65535", addr);
  *host = qb_calloc (hlen + 1, 1);
  memcpy (*host, h, hlen);
  *port = qb_strdup (p);
  return 0;
}

/* Connect to HOST:PORT over TCP (each address getaddrinfo gives, in turn)
 * within TIMEOUT_MS; ADDR names it in messages.  The fd or -1. */
static int
connect_tcp (const char *addr, int timeout_ms)
{
  char *host, *port;
  if (jsonio_parse_tcp (addr, &host, &port) < 0)
    return -1;
  uint64_t deadline = deadline_of (timeout_ms);
  struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG };
  struct addrinfo *res = NULL;
  int gai = getaddrinfo (host, port, &hints, &res);
  free (host);
  free (port);
  if (gai != 0)
    return qb_error_set (QB_EHOSTDOWN, "%s: cannot resolve the host: %s", addr,
                         gai == EAI_SYSTEM ? strerror (errno) : gai_strerror (gai));
  int e = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    int fd = socket (ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                     ai->ai_protocol);
    if (fd < 0) {
      e = errno;
      continue;
    }
    int one = 1;
    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect (fd, ai->ai_addr, ai->ai_addrlen) == 0
        || ((errno == EINPROGRESS || errno == EINTR) && connect_wait (fd, deadline) == 0)) {
      freeaddrinfo (res);
      return fd;
    }
    e = errno;
    close (fd);
    if (e == ETIMEDOUT && remaining_ms (deadline) == 0)
      break;
  }
  freeaddrinfo (res);
  if (e == ECONNREFUSED || e == ENETUNREACH || e == EHOSTUNREACH)
    return qb_error_set (QB_EHOSTDOWN, "is the VM running? %s: %s", addr, strerror (e));
  if (e == ETIMEDOUT)
    return qb_error_set (QB_EHOSTDOWN, "is the VM running? %s: no answer within %d ms",
                         addr, timeout_ms);
  return qb_error_set_errno (e ? e : EIO, "connect to %s", addr);
}

int
jsonio_connect (const char *addr, int timeout_ms)
{
  if (strncmp (addr, "tcp:", 4) == 0)
    return connect_tcp (addr, timeout_ms);
  if (strncmp (addr, "unix:", 5) == 0)
    addr += 5;
  return jsonio_connect_unix (addr, timeout_ms);
}
