/* qmpbackupfs tests — tiny helpers shared by the tests in this directory:
 * checks that abort the test with a message, spawning and reaping helper
 * processes, waiting for a socket file, temporary directories. */
#ifndef QB_TESTLIB_H
#define QB_TESTLIB_H

#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_cleanup (void);

#define CHECK(cond) do {                                                  \
    if (!(cond)) {                                                        \
      fprintf (stderr, "%s:%d: check failed: %s (last error: %s: %s)\n",  \
               __FILE__, __LINE__, #cond,                                 \
               qb_err_name (qb_error_code ()), qb_error_msg ());          \
      test_cleanup ();                                                    \
      exit (1);                                                           \
    }                                                                     \
  } while (0)

/* Check that the last error has code CODE and its message contains TEXT. */
#define CHECK_ERR(code, text) do {                                        \
    CHECK (qb_error_code () == (code));                                   \
    CHECK (strstr (qb_error_msg (), (text)) != NULL);                     \
  } while (0)

static pid_t test_pids[8];
static char *test_dir;

/* Kill (SIGKILL) and reap every process started with test_spawn, remove the
 * temporary directory.  Safe to call twice. */
static __attribute__ ((unused)) void
test_cleanup (void)
{
  for (size_t i = 0; i < sizeof test_pids / sizeof test_pids[0]; i++)
    if (test_pids[i] > 0) {
      kill (test_pids[i], SIGKILL);
      waitpid (test_pids[i], NULL, 0);
      test_pids[i] = 0;
    }
  if (test_dir) {
    char *argv[] = { "rm", "-rf", test_dir, NULL };
    qb_run (argv, NULL);
    free (test_dir);
    test_dir = NULL;
  }
}

/* Make the test's temporary directory (removed by test_cleanup). */
static __attribute__ ((unused)) const char *
test_tmpdir (void)
{
  const char *t = getenv ("TMPDIR");
  char *path = qb_asprintf ("%s/qbtest.XXXXXX", t && *t ? t : "/tmp");
  if (!mkdtemp (path)) {
    perror ("mkdtemp");
    exit (1);
  }
  test_dir = path;
  return path;
}

/* True if PROG is an executable file. */
static __attribute__ ((unused)) int
test_have (const char *prog)
{
  return access (prog, X_OK) == 0;
}

/* Start ARGV[0] (a path) with ARGV, its stdout and stderr sent to LOG (or
 * inherited when NULL); remember the pid for test_cleanup. */
static __attribute__ ((unused)) pid_t
test_spawn (char *const argv[], const char *log)
{
  pid_t pid = fork ();
  CHECK (pid >= 0);
  if (pid == 0) {
    if (log) {
      FILE *f = freopen (log, "w", stdout);
      if (f)
        dup2 (fileno (f), 2);
    }
    execv (argv[0], argv);
    _exit (127);
  }
  for (size_t i = 0; i < sizeof test_pids / sizeof test_pids[0]; i++)
    if (test_pids[i] == 0) {
      test_pids[i] = pid;
      break;
    }
  return pid;
}

/* Kill PID (started by test_spawn) with SIGKILL and reap it. */
static __attribute__ ((unused)) void
test_kill (pid_t pid)
{
  kill (pid, SIGKILL);
  waitpid (pid, NULL, 0);
  for (size_t i = 0; i < sizeof test_pids / sizeof test_pids[0]; i++)
    if (test_pids[i] == pid)
      test_pids[i] = 0;
}

/* True when a connection to the unix socket PATH is accepted (a socket
 * file exists a moment before its server listens); the probe is closed. */
static __attribute__ ((unused)) bool
test_socket_accepts (const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (strlen (path) >= sizeof sa.sun_path)
    return false;
  strcpy (sa.sun_path, path);
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return false;
  bool ok = connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0;
  close (fd);
  return ok;
}

/* Poll (every 20 ms, up to TIMEOUT_MS) until PATH is a socket that accepts
 * connections and process PID still runs: 0, or -1 after printing why. */
static __attribute__ ((unused)) int
test_wait_socket (const char *path, pid_t pid, int timeout_ms)
{
  uint64_t end = qb_mono_ms () + (uint64_t) timeout_ms;
  for (;;) {
    struct stat st;
    if (stat (path, &st) == 0 && S_ISSOCK (st.st_mode) && test_socket_accepts (path))
      return 0;
    if (pid > 0 && waitpid (pid, NULL, WNOHANG) == pid) {
      fprintf (stderr, "process %d exited before creating %s\n", (int) pid, path);
      for (size_t i = 0; i < sizeof test_pids / sizeof test_pids[0]; i++)
        if (test_pids[i] == pid)
          test_pids[i] = 0;
      return -1;
    }
    if (qb_mono_ms () >= end) {
      fprintf (stderr, "socket %s did not appear within %d ms\n", path, timeout_ms);
      return -1;
    }
    poll (NULL, 0, 20);
  }
}

#endif
