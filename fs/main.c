/* qmpbackupfs — mount the backup store: options, the FUSE session, signals
 * and a clean shutdown (running backups are cancelled and cleaned up before
 * the process exits). */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/util.h"
#include "fs/fs.h"

#define MAX_THREADS 64

fs_config fs_cfg;
atomic_int fs_terminating;

struct fs_opts {
  char *sockets;
  char *speed;
  char *fleece;
  char *include;
  char *exclude;
  char *on_success;
  char *on_failure;
  char *notify_timeout;
  char *names;
  int compress;
  int monthly;
  int allow_other;
  char *store;
  int bad_vm;
  char *keep;            /* keep=SPEC, with the parts fuse_opt split at commas */
  int bad_keep;
};

enum { KEY_VM, KEY_ALLOW_OTHER, KEY_KEEP, KEY_KEEP_PART, KEY_POSITIONAL_DONE };

static const struct fuse_opt fs_opt_spec[] = {
  { "sockets=%s", offsetof (struct fs_opts, sockets), 0 },
  { "monthly", offsetof (struct fs_opts, monthly), 1 },
  { "compress", offsetof (struct fs_opts, compress), 1 },
  { "speed=%s", offsetof (struct fs_opts, speed), 0 },
  { "fleece=%s", offsetof (struct fs_opts, fleece), 0 },
  { "include=%s", offsetof (struct fs_opts, include), 0 },
  { "exclude=%s", offsetof (struct fs_opts, exclude), 0 },
  { "on_success=%s", offsetof (struct fs_opts, on_success), 0 },
  { "on_failure=%s", offsetof (struct fs_opts, on_failure), 0 },
  { "notify_timeout=%s", offsetof (struct fs_opts, notify_timeout), 0 },
  { "names=%s", offsetof (struct fs_opts, names), 0 },
  FUSE_OPT_KEY ("vm=", KEY_VM),
  FUSE_OPT_KEY ("allow_other", KEY_ALLOW_OTHER),
  FUSE_OPT_KEY ("keep=", KEY_KEEP),
  /* -o keep=daily=7,weekly=4: fuse_opt splits at the commas */
  FUSE_OPT_KEY ("last=", KEY_KEEP_PART),
  FUSE_OPT_KEY ("hourly=", KEY_KEEP_PART),
  FUSE_OPT_KEY ("daily=", KEY_KEEP_PART),
  FUSE_OPT_KEY ("weekly=", KEY_KEEP_PART),
  FUSE_OPT_KEY ("monthly=", KEY_KEEP_PART),
  FUSE_OPT_KEY ("yearly=", KEY_KEEP_PART),
  FUSE_OPT_KEY ("within=", KEY_KEEP_PART),
  FUSE_OPT_END
};

/* fuse_opt callback: -o vm=..., allow_other, and the STORE argument. */
static int
fs_opt_proc (void *data, const char *arg, int key, struct fuse_args *outargs)
{
  (void) outargs;
  struct fs_opts *o = data;
  switch (key) {
  case KEY_VM:
    if (vms_add_explicit (arg + 3) == -1) {
      fs_log ("%s", qb_error_msg ());
      o->bad_vm = 1;
    }
    return 0;
  case KEY_ALLOW_OTHER:
    o->allow_other = 1;
    return 1;                 /* the kernel needs it too */
  case KEY_KEEP:
    if (o->keep) {
      fs_log ("keep= given twice: give one keep=RULE=N,RULE=N,... option");
      o->bad_keep = 1;
      return 0;
    }
    o->keep = qb_strdup (arg + 5);
    return 0;
  case KEY_KEEP_PART:
    if (!o->keep) {
      fs_log ("%s: a retention rule belongs to keep= (e.g. -o keep=daily=7,weekly=4)", arg);
      o->bad_keep = 1;
      return 0;
    }
    {
      char *n = qb_asprintf ("%s,%s", o->keep, arg);
      free (o->keep);
      o->keep = n;
    }
    return 0;
  case FUSE_OPT_KEY_NONOPT:
    if (!o->store) {
      o->store = strdup (arg);
      return 0;
    }
    return 1;                 /* the mount point, for fuse_parse_cmdline */
  default:
    return 1;
  }
}

/* Split "a:b:c" into a NULL-terminated array of names. */
static char **
split_names (const char *s)
{
  size_t n = 1;
  for (const char *p = s; *p; p++)
    n += *p == ':';
  char **v = qb_calloc (n + 1, sizeof *v);
  char *copy = qb_strdup (s), *save = NULL;
  size_t i = 0;
  for (char *w = strtok_r (copy, ":", &save); w; w = strtok_r (NULL, ":", &save))
    v[i++] = qb_strdup (w);
  free (copy);
  return v;
}

/* Print usage. */
static void
usage (const char *prog)
{
  printf ("usage: %s STORE MOUNTPOINT [options]\n\n"
          "Live backups of QEMU VMs over QMP, as a file system.\n\n"
          "  -o sockets=DIR          each DIR/NAME.qmp is VM NAME (DIR/NAME.qga its agent)\n"
          "  -o vm=NAME:QMP[:QGA]    a VM by its sockets (repeatable); QMP is a unix socket\n"
          "                          or tcp:HOST:PORT (IPv6: tcp:[ADDR]:PORT)\n"
          "  -o monthly              chains in YYYY-MM folders; a new month starts a full\n"
          "  -o speed=N[K|M|G]       limit each backup job to N bytes per second\n"
          "  -o fleece=DIR|off       image fleecing: old data the guest overwrites during a\n"
          "                          backup goes to a temporary image in DIR, not to the\n"
          "                          store; off (default): none\n"
          "  -o compress             compressed backup files\n"
          "  -o include=D1:D2        back up only these disks\n"
          "  -o exclude=D1:D2        never back up these disks\n"
          "  -o on_success=CMD       after each backup that worked, run CMD (/bin/sh)\n"
          "                          with QB_VM, QB_LEVEL, QB_POINT, QB_RESULT, QB_REASON,\n"
          "                          QB_BYTES, QB_SECONDS in its environment\n"
          "  -o on_failure=CMD       the same after a backup that failed or was cancelled\n"
          "                          (a comma inside CMD is written \\, a backslash \\\\)\n"
          "  -o notify_timeout=SECS  kill a notification running longer (default 60)\n"
          "  -o keep=RULE=N,...      after each backup that worked, prune the VM's points:\n"
          "                          last, hourly, daily, weekly, monthly, yearly=N,\n"
          "                          within=DURATION (the rules of qmprebase prune)\n"
          "  -o ro                   read-only: restore only (no backups, no removals)\n"
          "  -o names=safe|iso       restore point names: 2026-11-26T045000Z.img (safe,\n"
          "                          the default) or 2026-11-26T04:50:00Z.img (iso)\n"
          "  -o allow_other          let other users in (permissions enforced by the kernel)\n"
          "  -f                      stay in the foreground\n"
          "  -d                      debug output (implies -f)\n"
          "  -h, --help              this help\n"
          "  -V, --version           print the version\n\n"
          "In the mount: touch VM/backup (or echo full|inc|auto|copy > VM/backup) takes\n"
          "a backup; VM/status tells how it went; VM/DISK/restore/*.img are the disks.\n",
          prog);
}

static struct sigaction prev_act[3];
static const int term_signals[3] = { SIGTERM, SIGINT, SIGHUP };
static int sig_pipe[2] = { -1, -1 };

/* Signal handler: mark shutdown, wake the canceller, chain to libfuse's handler. */
static void
fs_on_signal (int sig)
{
  int saved = errno;
  atomic_store (&fs_terminating, 1);
  if (sig_pipe[1] >= 0) {
    ssize_t r = write (sig_pipe[1], "x", 1);
    (void) r;
  }
  for (int i = 0; i < 3; i++)
    if (term_signals[i] == sig && prev_act[i].sa_handler != SIG_DFL
        && prev_act[i].sa_handler != SIG_IGN)
      prev_act[i].sa_handler (sig);
  errno = saved;
}

/* Thread: on a termination signal, cancel every running backup. */
static void *
fs_canceller (void *arg)
{
  (void) arg;
  char c;
  while (read (sig_pipe[0], &c, 1) == -1 && errno == EINTR)
    ;
  vms_cancel_all ();
  return NULL;
}

/* Install our handlers on top of libfuse's (which end the session loop). */
static int
fs_signals_install (struct fuse_session *se)
{
  if (fuse_set_signal_handlers (se) != 0)
    return -1;
  if (pipe2 (sig_pipe, O_CLOEXEC) == -1)
    return -1;
  struct sigaction sa;
  memset (&sa, 0, sizeof sa);
  sa.sa_handler = fs_on_signal;
  sigemptyset (&sa.sa_mask);
  for (int i = 0; i < 3; i++)
    if (sigaction (term_signals[i], &sa, &prev_act[i]) == -1)
      return -1;
  return 0;
}

/* Start the canceller thread with termination signals blocked in it. */
static int
fs_canceller_start (void)
{
  sigset_t set, old;
  sigemptyset (&set);
  for (int i = 0; i < 3; i++)
    sigaddset (&set, term_signals[i]);
  pthread_sigmask (SIG_BLOCK, &set, &old);
  pthread_t t;
  int r = pthread_create (&t, NULL, fs_canceller, NULL);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (r == 0)
    pthread_detach (t);
  return r == 0 ? 0 : -1;
}

/* Parse options, mount, serve until unmounted or signalled; 0 on a clean end. */
int
main (int argc, char **argv)
{
  struct fuse_args args = FUSE_ARGS_INIT (argc, argv);
  struct fs_opts o;
  struct fuse_cmdline_opts co;
  memset (&o, 0, sizeof o);
  memset (&co, 0, sizeof co);
  int ret = 1;
  /* The worker threads share two malloc arenas instead of one each: the
   * scans and nodes of a big store are built by whichever thread asked, and
   * per-thread arenas kept their freed pages (tens of MiB at 200,000 points). */
  mallopt (M_ARENA_MAX, 2);

  if (fuse_opt_parse (&args, &o, fs_opt_spec, fs_opt_proc) == -1 || o.bad_vm)
    return 1;
  if (fuse_parse_cmdline (&args, &co) != 0)
    return 1;
  if (co.show_help) {
    usage (argv[0]);
    printf ("\nFUSE options:\n");
    fuse_cmdline_help ();
    fuse_lowlevel_help ();
    ret = 0;
    goto out;
  }
  if (co.show_version) {
    printf ("qmpbackupfs %s\n", QB_VERSION);
    fuse_lowlevel_version ();
    ret = 0;
    goto out;
  }
  if (!o.store || !co.mountpoint) {
    usage (argv[0]);
    return 1;
  }

  char *root = realpath (o.store, NULL);
  if (!root) {
    fs_log ("store %s: %s", o.store, strerror (errno));
    return 1;
  }
  fs_cfg.store_root = root;
  fs_cfg.st = store_open (root, false);
  if (!fs_cfg.st) {
    fs_log ("%s", qb_error_msg ());
    return 1;
  }
  if (o.sockets) {
    fs_cfg.sockets_dir = vms_sockets_dir_resolve (o.sockets);
    if (!fs_cfg.sockets_dir) {
      fs_log ("%s", qb_error_msg ());
      return 1;
    }
  }
  json_c_set_serialization_double_format ("%.3f", JSON_C_OPTION_GLOBAL);
  fs_cfg.monthly = o.monthly;
  fs_cfg.compress = o.compress;
  if (o.speed && qb_parse_size (o.speed, &fs_cfg.speed) == -1) {
    fs_log ("speed=%s: expected a number of bytes per second (K, M, G)",
             o.speed);
    return 1;
  }
  if (o.fleece && o.fleece[0] != '/' && strcmp (o.fleece, "off") != 0) {
    fs_log ("fleece=%s: expected an absolute directory or off", o.fleece);
    return 1;
  }
  fs_cfg.fleece = o.fleece;
  fs_cfg.include = o.include ? split_names (o.include) : NULL;
  fs_cfg.exclude = o.exclude ? split_names (o.exclude) : NULL;
  fs_cfg.allow_other = o.allow_other;
  if ((o.on_success && !o.on_success[0]) || (o.on_failure && !o.on_failure[0])) {
    fs_log ("%s=: empty command; give a command or leave the option out",
            o.on_success && !o.on_success[0] ? "on_success" : "on_failure");
    return 1;
  }
  fs_cfg.on_success = o.on_success;
  fs_cfg.on_failure = o.on_failure;
  fs_cfg.notify_timeout = 60;
  if (o.notify_timeout) {
    char *end;
    errno = 0;
    unsigned long v = strtoul (o.notify_timeout, &end, 10);
    if (errno || end == o.notify_timeout || *end || v < 1 || v > 86400) {
      fs_log ("notify_timeout=%s: expected a number of seconds from 1 to 86400",
              o.notify_timeout);
      return 1;
    }
    fs_cfg.notify_timeout = (unsigned) v;
  }
  if (o.bad_keep)
    return 1;
  if (o.keep) {
    if (store_retention_parse (o.keep, &fs_cfg.keep) < 0) {
      fs_log ("keep=%s: %s", o.keep, qb_error_msg ());
      return 1;
    }
    fs_cfg.keep_set = !store_retention_empty (&fs_cfg.keep);
  }
  if (o.names) {
    store_names style;
    if (store_names_parse (o.names, &style) == -1) {
      fs_log ("%s", qb_error_msg ());
      return 1;
    }
    store_set_names (fs_cfg.st, style);
  }
  fs_cfg.uid = getuid ();
  fs_cfg.gid = getgid ();
  vms_init ();

  char *fsname = qb_asprintf ("-ofsname=%s,subtype=qmpbackupfs", root);
  fuse_opt_add_arg (&args, fsname);
  free (fsname);
  if (o.allow_other)
    fuse_opt_add_arg (&args, "-odefault_permissions");
  /* files/ shows the guests' setuid programs and device nodes: never honoured */
  fuse_opt_add_arg (&args, "-onosuid,nodev");

  struct fuse_session *se = fuse_session_new (&args, &fs_ops, sizeof fs_ops, NULL);
  if (!se)
    goto out;
  fs_cfg.se = se;
  if (fs_signals_install (se) != 0) {
    fs_log ("cannot install signal handlers");
    goto out_session;
  }
  if (fuse_session_mount (se, co.mountpoint) != 0)
    goto out_signals;
  /* mounted: in the background the parent exits only now */
  if (fuse_daemonize (co.foreground) != 0)
    goto out_unmount;
  fs_log_init (co.foreground);
  if (fs_canceller_start () != 0)
    goto out_unmount;

  struct fuse_loop_config *cfg = fuse_loop_cfg_create ();
  fuse_loop_cfg_set_clone_fd (cfg, 1);
  fuse_loop_cfg_set_max_threads (cfg, MAX_THREADS);
  fuse_loop_cfg_set_idle_threads (cfg, MAX_THREADS);
  ret = fuse_session_loop_mt (se, cfg) != 0;
  fuse_loop_cfg_destroy (cfg);
  if (atomic_load (&fs_terminating))
    ret = 0;                  /* a termination signal is a clean shutdown */
  /* the loop has ended: no backup may outlive it */
  atomic_store (&fs_terminating, 1);
  vms_cancel_all ();
  vms_wait_idle ();

 out_unmount:
  fuse_session_unmount (se);
 out_signals:
  fuse_remove_signal_handlers (se);
 out_session:
  fuse_session_destroy (se);
 out:
  free (co.mountpoint);
  fuse_opt_free_args (&args);
  /* a status refresh still waiting on a VM's QMP uses the store: leave it
   * open (the process ends now) rather than pull it from under the thread */
  if (status_refreshes_active () == 0 && verify_active () == 0)
    store_close (fs_cfg.st);
  free (o.sockets);
  free (o.store);
  free (o.speed);
  free (o.fleece);
  free (o.include);
  free (o.exclude);
  free (o.notify_timeout);
  free (o.keep);
  free (o.names);
  for (char **p = fs_cfg.include; p && *p; p++)
    free (*p);
  for (char **p = fs_cfg.exclude; p && *p; p++)
    free (*p);
  free (fs_cfg.include);
  free (fs_cfg.exclude);
  return ret;
}
