/* Integration test of the QMP client against a real, paused QEMU:
 * commands, error classes, events, busy detection, a VM that goes away. */
#include "qmp/qmp.h"
#include "testlib.h"

#define QEMU "/usr/bin/qemu-system-x86_64"

int
main (void)
{
  if (!test_have (QEMU)) {
    printf ("SKIP: %s not installed\n", QEMU);
    return 77;
  }
  const char *dir = test_tmpdir ();
  char *sock = qb_asprintf ("%s/vm.qmp", dir);
  char *qmparg = qb_asprintf ("unix:%s,server=on,wait=off", sock);
  char *log = qb_asprintf ("%s/qemu.log", dir);
  char *argv[] = { QEMU, "-machine", "q35,accel=kvm:tcg", "-S", "-display", "none",
                   "-nodefaults", "-qmp", qmparg, NULL };
  pid_t pid = test_spawn (argv, log);
  CHECK (test_wait_socket (sock, pid, 10000) == 0);

  /* A command and its value. */
  qmp *q = qmp_connect (sock, QMP_CONNECT_TIMEOUT_MS);
  CHECK (q != NULL);
  json_object *v = qmp_execute (q, "query-version", NULL, 5000), *qemu, *major;
  CHECK (v && json_object_object_get_ex (v, "qemu", &qemu)
         && json_object_object_get_ex (qemu, "major", &major)
         && json_object_get_int (major) >= 2);
  json_object_put (v);

  /* Error classes. */
  CHECK (qmp_execute (q, "no-such-command", NULL, 5000) == NULL);
  CHECK_ERR (QB_EQMP, "CommandNotFound: ");
  CHECK (strcmp (qmp_last_error_class (q), "CommandNotFound") == 0);
  json_object *args = json_object_new_object ();
  json_object_object_add (args, "node", json_object_new_string ("nosuch"));
  json_object_object_add (args, "name", json_object_new_string ("b0"));
  CHECK (qmp_run (q, "block-dirty-bitmap-add", args, 5000) < 0);
  CHECK (qb_error_code () == QB_EQMP);
  CHECK (strstr (qb_error_msg (), "nosuch") != NULL);

  /* HMP through QMP. */
  char *out = qmp_hmp (q, "info status", 5000);
  CHECK (out && strstr (out, "paused") != NULL);
  free (out);

  /* Events: RESUME arrives around the reply to "cont" and is not lost. */
  CHECK (qmp_run (q, "cont", NULL, 5000) == 0);
  json_object *ev = qmp_next_event (q, 5000), *name;
  CHECK (ev && json_object_object_get_ex (ev, "event", &name)
         && strcmp (json_object_get_string (name), "RESUME") == 0);
  json_object_put (ev);
  CHECK (qmp_run (q, "stop", NULL, 5000) == 0);
  ev = qmp_next_event (q, 5000);
  CHECK (ev && json_object_object_get_ex (ev, "event", &name)
         && strcmp (json_object_get_string (name), "STOP") == 0);
  json_object_put (ev);

  /* Busy: the socket serves one client; a second one waits, then gives up. */
  uint64_t t0 = qb_mono_ms ();
  qmp *q2 = qmp_connect (sock, 1000);
  uint64_t dt = qb_mono_ms () - t0;
  CHECK (q2 == NULL);
  CHECK_ERR (QB_EBUSY, "another client holds the QMP socket");
  CHECK (strstr (qb_error_msg (), sock) != NULL);
  CHECK (dt >= 950 && dt < 3000);
  /* Once the first client leaves, the socket is free again. */
  qmp_close (q);
  q = qmp_connect (sock, QMP_CONNECT_TIMEOUT_MS);
  CHECK (q != NULL);
  CHECK (qmp_run (q, "query-status", NULL, 5000) == 0);

  /* Cancel: a set flag stops a wait promptly. */
  atomic_int cancel = 1;
  qmp_set_cancel (q, &cancel);
  t0 = qb_mono_ms ();
  CHECK (qmp_next_event (q, 10000) == NULL);
  CHECK (qb_error_code () == QB_ECANCELED);
  CHECK (qb_mono_ms () - t0 < 1000);
  cancel = 0;

  /* The VM goes away: the open connection and new ones report it. */
  test_kill (pid);
  CHECK (qmp_execute (q, "query-status", NULL, 5000) == NULL);
  CHECK (qb_error_code () == QB_EHOSTDOWN);
  qmp_close (q);
  CHECK (qmp_connect (sock, 1000) == NULL);
  CHECK_ERR (QB_EHOSTDOWN, "is the VM running?");
  CHECK (strstr (qb_error_msg (), sock) != NULL);
  unlink (sock);
  CHECK (qmp_connect (sock, 1000) == NULL);
  CHECK_ERR (QB_EHOSTDOWN, "is the VM running?");

  free (sock);
  free (qmparg);
  free (log);
  test_cleanup ();
  printf ("qmp (real QEMU): all checks passed\n");
  return 0;
}
