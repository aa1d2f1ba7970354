/* Integration test of the guest-agent client against a real qemu-ga
 * listening on a host unix socket (freeze blocked, so nothing on the host is
 * frozen), plus sockets that accept and never answer or answer garbage. */
#include "qmp/qga.h"
#include "qmp/qmp.h"
#include "testlib.h"

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
