/* qmpbackupfs — shared helpers (see util.h). */
#include "util.h"
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>

extern char **environ;

#define QB_NAME_MAX 200

bool
qb_name_is_safe (const char *name)
{
  size_t len = name ? strlen (name) : 0;
  if (len == 0 || len > QB_NAME_MAX || name[0] == '.')
    return false;
  for (const unsigned char *p = (const unsigned char *) name; *p; p++)
    if (*p < 0x20 || *p == 0x7f || *p == '/')
      return false;
  return true;
}

static bool
name_char_ok (unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
    || c == '.' || c == '_' || c == '+' || c == '-' || c == '@' || c == ':';
}

char *
qb_name_sanitize (const char *name)
{
  size_t len = name ? strlen (name) : 0;
  if (len == 0) {
    qb_error_set (QB_EINVAL, "empty name");
    return NULL;
  }
  if (len > QB_NAME_MAX)
    len = QB_NAME_MAX;
  char *out = qb_calloc (1, len + 1);
  for (size_t i = 0; i < len; i++)
    out[i] = name_char_ok ((unsigned char) name[i]) ? name[i] : '_';
  if (out[0] == '.')
    out[0] = '_';
  return out;
}

int
qb_fsync_dir (const char *path)
{
  int fd = open (path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return qb_error_set_errno (errno, "open directory %s", path);
  if (fsync (fd) < 0) {
    int e = errno;
    close (fd);
    return qb_error_set_errno (e, "fsync directory %s", path);
  }
  close (fd);
  return 0;
}

int
qb_fsync_path (const char *path)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return qb_error_set_errno (errno, "open %s", path);
  if (fsync (fd) < 0) {
    int e = errno;
    close (fd);
    return qb_error_set_errno (e, "fsync %s", path);
  }
  close (fd);
  return 0;
}

int
qb_mkdir_p (const char *path, mode_t mode)
{
  char *p = qb_strdup (path);
  for (char *s = p + 1; ; s++) {
    if (*s == '/' || *s == '\0') {
      char c = *s;
      *s = '\0';
      if (mkdir (p, mode) < 0 && errno != EEXIST) {
        int e = errno;
        qb_error_set_errno (e, "create directory %s", p);
        free (p);
        return -1;
      }
      *s = c;
      if (c == '\0')
        break;
    }
  }
  free (p);
  return 0;
}

char *
qb_asprintf (const char *fmt, ...)
{
  va_list ap;
  char *s;
  va_start (ap, fmt);
  if (vasprintf (&s, fmt, ap) < 0)
    abort ();
  va_end (ap);
  return s;
}

char *
qb_strdup (const char *s)
{
  if (!s)
    return NULL;
  char *d = strdup (s);
  if (!d)
    abort ();
  return d;
}

void *
qb_calloc (size_t n, size_t size)
{
  void *p = calloc (n ? n : 1, size ? size : 1);
  if (!p)
    abort ();
  return p;
}

void *
qb_realloc (void *p, size_t size)
{
  void *q = realloc (p, size ? size : 1);
  if (!q)
    abort ();
  return q;
}

/* Read everything from FD into a growing buffer (up to LIMIT bytes kept). */
static void
drain_fd (int fd, char **buf, size_t *len, size_t limit)
{
  char tmp[65536];
  ssize_t r;
  while ((r = read (fd, tmp, sizeof tmp)) != 0) {
    if (r < 0) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (*len + (size_t) r > limit)
      continue;
    *buf = qb_realloc (*buf, *len + r + 1);
    memcpy (*buf + *len, tmp, r);
    *len += r;
    (*buf)[*len] = '\0';
  }
}

int
qb_run (char *const argv[], char **out)
{
  int errpipe[2], outpipe[2] = { -1, -1 };
  if (pipe2 (errpipe, O_CLOEXEC) < 0)
    return qb_error_set_errno (errno, "pipe");
  if (out && pipe2 (outpipe, O_CLOEXEC) < 0) {
    close (errpipe[0]); close (errpipe[1]);
    return qb_error_set_errno (errno, "pipe");
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init (&fa);
  posix_spawn_file_actions_addopen (&fa, 0, "/dev/null", O_RDONLY, 0);
  if (out)
    posix_spawn_file_actions_adddup2 (&fa, outpipe[1], 1);
  else
    posix_spawn_file_actions_addopen (&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2 (&fa, errpipe[1], 2);
  pid_t pid;
  int rc = posix_spawnp (&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy (&fa);
  close (errpipe[1]);
  if (out)
    close (outpipe[1]);
  if (rc != 0) {
    close (errpipe[0]);
    if (out)
      close (outpipe[0]);
    return qb_error_set_errno (rc, "cannot run %s (is it installed?)", argv[0]);
  }
  char *obuf = NULL, *ebuf = NULL;
  size_t olen = 0, elen = 0;
  if (out) {
    /* Read both pipes without deadlocking: poll until both close. */
    struct pollfd pf[2] = { { outpipe[0], POLLIN, 0 }, { errpipe[0], POLLIN, 0 } };
    int open_fds = 2;
    while (open_fds > 0) {
      if (poll (pf, 2, -1) < 0) {
        if (errno == EINTR)
          continue;
        break;
      }
      for (int i = 0; i < 2; i++) {
        if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
          continue;
        char tmp[65536];
        ssize_t r = read (pf[i].fd, tmp, sizeof tmp);
        if (r <= 0) {
          if (r < 0 && errno == EINTR)
            continue;
          close (pf[i].fd);
          pf[i].fd = -1;
          open_fds--;
          continue;
        }
        char **b = i == 0 ? &obuf : &ebuf;
        size_t *l = i == 0 ? &olen : &elen;
        size_t limit = i == 0 ? (16u << 20) : 65536;
        if (*l + (size_t) r > limit)
          continue;
        *b = qb_realloc (*b, *l + r + 1);
        memcpy (*b + *l, tmp, r);
        *l += r;
        (*b)[*l] = '\0';
      }
    }
  } else {
    drain_fd (errpipe[0], &ebuf, &elen, 65536);
    close (errpipe[0]);
  }
  int status;
  while (waitpid (pid, &status, 0) < 0 && errno == EINTR)
    ;
  if (WIFEXITED (status) && WEXITSTATUS (status) == 0) {
    free (ebuf);
    if (out)
      *out = obuf ? obuf : qb_strdup ("");
    return 0;
  }
  free (obuf);
  if (ebuf) {
    char *nl = strchr (ebuf, '\n');
    if (nl)
      *nl = '\0';
  }
  if (WIFEXITED (status))
    qb_error_set (QB_EIO, "%s failed (exit %d): %s", argv[0], WEXITSTATUS (status),
                  ebuf ? ebuf : "");
  else
    qb_error_set (QB_EIO, "%s killed by signal %d", argv[0],
                  WIFSIGNALED (status) ? WTERMSIG (status) : 0);
  free (ebuf);
  return -1;
}

int
qb_parse_size (const char *s, uint64_t *out)
{
  char *end;
  errno = 0;
  if (!s || *s < '0' || *s > '9')
    return qb_error_set (QB_EINVAL, "\"%s\" is not a byte count (N, Nk, NM or NG)", s ? s : "");
  unsigned long long v = strtoull (s, &end, 10);
  int shift = 0;
  switch (*end) {
  case 'k': case 'K': shift = 10; end++; break;
  case 'm': case 'M': shift = 20; end++; break;
  case 'g': case 'G': shift = 30; end++; break;
  default: break;
  }
  if (errno || *end || (shift && v > (UINT64_MAX >> shift)))
    return qb_error_set (QB_EINVAL, "\"%s\" is not a byte count (N, Nk, NM or NG)", s);
  *out = (uint64_t) v << shift;
  return 0;
}

int64_t
qb_now_us (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_REALTIME, &ts);
  return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint64_t
qb_mono_ms (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
qb_format_utc (int64_t t_us, char *buf, size_t len)
{
  time_t t = (time_t) (t_us / 1000000);
  struct tm tm;
  gmtime_r (&t, &tm);
  strftime (buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void
qb_format_bytes (uint64_t bytes, char *buf, size_t len)
{
  static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
  double v = (double) bytes;
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf (buf, len, "%llu B", (unsigned long long) bytes);
  else
    snprintf (buf, len, "%.1f %s", v, units[u]);
}

/* Open REL beneath DIRFD, component by component, never following a link. */
int
qb_openat_nofollow (int dirfd, const char *rel, int flags)
{
  size_t len = rel ? strlen (rel) : 0;
  if (len == 0 || len >= 4096 || rel[0] == '/') {
    errno = EINVAL;
    return -1;
  }
  char comp[256];
  int fd = dirfd;
  const char *p = rel;
  for (;;) {
    const char *slash = strchr (p, '/');
    size_t n = slash ? (size_t) (slash - p) : strlen (p);
    int next = -1, e = EINVAL;
    if (n > 0 && n < sizeof comp && !(n == 1 && p[0] == '.')
        && !(n == 2 && p[0] == '.' && p[1] == '.')) {
      memcpy (comp, p, n);
      comp[n] = '\0';
      next = slash
        ? openat (fd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        : openat (fd, comp, flags | O_NOFOLLOW | O_CLOEXEC, 0600);
      e = errno;
      struct stat sb;
      /* A symbolic link opened as a directory fails with ENOTDIR: say ELOOP. */
      if (next < 0 && e == ENOTDIR
          && fstatat (fd, comp, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK (sb.st_mode))
        e = ELOOP;
    }
    if (fd != dirfd)
      close (fd);
    if (next < 0) {
      errno = e;
      return -1;
    }
    fd = next;
    if (!slash)
      return fd;
    p = slash + 1;
  }
}

/* True for errno values of a passing resource shortage. */
bool
qb_errno_is_transient (int errnum)
{
  return errnum == EMFILE || errnum == ENFILE || errnum == ENOMEM || errnum == ENOBUFS
    || errnum == EAGAIN || errnum == EINTR;
}
