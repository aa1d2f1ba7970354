/* qmpbackupfs — notifications: run -o on_success= / on_failure= after each
 * backup through the control file, in the background, bounded in number
 * (one per VM at a time) and in time (killed after fs_cfg.notify_timeout). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "fs/fs.h"

extern char **environ;

#define NOTIFY_KILL_GRACE_MS 5000   /* SIGTERM to SIGKILL */
#define NOTIFY_POLL_MS 100

typedef struct notify_job {
  fs_vm *vm;
  pid_t pid;                  /* also its process group */
  const char *hook;           /* "on_success" or "on_failure" */
} notify_job;

/* Sleep MS milliseconds. */
static void
notify_sleep_ms (unsigned ms)
{
  struct timespec ts = { ms / 1000, (long) (ms % 1000) * 1000000L };
  while (nanosleep (&ts, &ts) == -1 && errno == EINTR)
    ;
}

/* Thread: wait for the job's process, kill its group when it overstays,
 * log a failure, free the VM's notification slot. */
static void *
notify_wait (void *arg)
{
  notify_job *j = arg;
  uint64_t t0 = qb_mono_ms ();
  uint64_t limit = (uint64_t) fs_cfg.notify_timeout * 1000;
  int st = 0, sent = 0;
  for (;;) {
    pid_t r = waitpid (j->pid, &st, WNOHANG);
    if (r == j->pid || (r == -1 && errno != EINTR))
      break;
    uint64_t el = qb_mono_ms () - t0;
    if (sent == 0 && el >= limit) {
      kill (-j->pid, SIGTERM);
      sent = SIGTERM;
    }
    else if (sent == SIGTERM && el >= limit + NOTIFY_KILL_GRACE_MS) {
      kill (-j->pid, SIGKILL);
      sent = SIGKILL;
    }
    notify_sleep_ms (NOTIFY_POLL_MS);
  }
  if (sent)
    fs_log ("event=notify-killed vm=%s hook=%s reason=\"ran longer than %u s: sent %s\"",
            j->vm->name, j->hook, fs_cfg.notify_timeout,
            sent == SIGKILL ? "SIGTERM then SIGKILL" : "SIGTERM");
  else if (WIFEXITED (st) && WEXITSTATUS (st) != 0)
    fs_log ("event=notify-failed vm=%s hook=%s reason=\"exited with status %d\"",
            j->vm->name, j->hook, WEXITSTATUS (st));
  else if (WIFSIGNALED (st))
    fs_log ("event=notify-failed vm=%s hook=%s reason=\"killed by signal %d\"",
            j->vm->name, j->hook, WTERMSIG (st));
  atomic_store (&j->vm->notify_busy, 0);
  free (j);
  return NULL;
}

/* Build the child's environment: ours without QB_* plus the given ones. */
static char **
notify_env (char *const extra[], size_t n_extra)
{
  size_t n = 0;
  for (char **e = environ; e && *e; e++)
    n++;
  char **env = qb_calloc (n + n_extra + 1, sizeof *env);
  size_t k = 0;
  for (char **e = environ; e && *e; e++)
    if (strncmp (*e, "QB_", 3) != 0)
      env[k++] = *e;
  for (size_t i = 0; i < n_extra; i++)
    env[k++] = extra[i];
  return env;
}

/* Run the hook for a backup of VM that ended (see fs.h). */
void
notify_backup_end (fs_vm *vm, const char *level, const char *point, const char *result,
                   const char *reason, uint64_t bytes, double seconds)
{
  bool ok = strcmp (result, "ok") == 0;
  const char *cmd = ok ? fs_cfg.on_success : fs_cfg.on_failure;
  const char *hook = ok ? "on_success" : "on_failure";
  if (!cmd)
    return;
  if (atomic_exchange (&vm->notify_busy, 1)) {
    fs_log ("event=notify-skipped vm=%s hook=%s reason=\"the previous notification "
            "of this VM is still running\"", vm->name, hook);
    return;
  }
  const char *why = reason ? reason : "";
  size_t esclen = strlen (why) * 4 + 16;   /* room for every byte as \xNN: never cut */
  char *esc = qb_calloc (esclen, 1);
  fs_log_escape (why, esc, esclen);
  char *extra[7] = {
    qb_asprintf ("QB_VM=%s", vm->name),
    qb_asprintf ("QB_LEVEL=%s", level),
    qb_asprintf ("QB_POINT=%s", point ? point : ""),
    qb_asprintf ("QB_RESULT=%s", result),
    qb_asprintf ("QB_REASON=%s", esc),
    qb_asprintf ("QB_BYTES=%llu", (unsigned long long) bytes),
    qb_asprintf ("QB_SECONDS=%.1f", seconds),
  };
  free (esc);
  char **env = notify_env (extra, 7);
  char *argv[] = { (char *) "sh", (char *) "-c", (char *) cmd, NULL };

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init (&fa);
  posix_spawn_file_actions_addopen (&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen (&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen (&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawnattr_t at;
  posix_spawnattr_init (&at);
  sigset_t none, def;
  sigemptyset (&none);
  sigemptyset (&def);
  sigaddset (&def, SIGTERM);
  sigaddset (&def, SIGINT);
  sigaddset (&def, SIGHUP);
  sigaddset (&def, SIGPIPE);
  posix_spawnattr_setsigmask (&at, &none);
  posix_spawnattr_setsigdefault (&at, &def);
  posix_spawnattr_setpgroup (&at, 0);   /* its own group: a timeout kills all of it */
  posix_spawnattr_setflags (&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
                            | POSIX_SPAWN_SETPGROUP);
  pid_t pid;
  int rc = posix_spawn (&pid, "/bin/sh", &fa, &at, argv, env);
  posix_spawn_file_actions_destroy (&fa);
  posix_spawnattr_destroy (&at);
  free (env);
  for (int i = 0; i < 7; i++)
    free (extra[i]);
  if (rc != 0) {
    fs_log ("event=notify-failed vm=%s hook=%s reason=\"cannot start /bin/sh: %s\"",
            vm->name, hook, strerror (rc));
    atomic_store (&vm->notify_busy, 0);
    return;
  }

  notify_job *j = qb_calloc (1, sizeof *j);
  j->vm = vm;
  j->pid = pid;
  j->hook = hook;
  pthread_t t;
  pthread_attr_t ta;
  pthread_attr_init (&ta);
  pthread_attr_setdetachstate (&ta, PTHREAD_CREATE_DETACHED);
  rc = pthread_create (&t, &ta, notify_wait, j);
  pthread_attr_destroy (&ta);
  if (rc != 0) {
    /* no watcher: do not leave an unbounded process behind */
    kill (-pid, SIGKILL);
    while (waitpid (pid, NULL, 0) == -1 && errno == EINTR)
      ;
    fs_log ("event=notify-failed vm=%s hook=%s reason=\"cannot start a thread: %s\"",
            vm->name, hook, strerror (rc));
    free (j);
    atomic_store (&vm->notify_busy, 0);
  }
}
