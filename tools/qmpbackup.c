/* qmpbackup — live full and incremental backups of a running QEMU VM, the
 * seed-compatible command line of qmpbackupfs (same engine and store as the
 * mount).  See usage() for the interface and the exit codes. */
#include "engine/engine.h"
#include "store/store.h"
#include "common/error.h"
#include "common/util.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum {
  EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3, EXIT_BUSY = 4,
  EXIT_NOCHAIN = 5, EXIT_CANCELED = 130,
};

static atomic_int cancel_flag;

static const char main_usage[] =
  "usage: qmpbackup --socket SOCK [--agent-socket QGA] COMMAND [OPTIONS]\n"
  "\n"
  "Live backups of a running QEMU VM through its QMP socket.\n"
  "\n"
  "Commands:\n"
  "  backup    take a backup (full, incremental, auto or copy) into a store\n"
  "  info      show the VM's disks and bitmaps as JSON (with --target: chain health)\n"
  "  cleanup   cancel leftover backup jobs; --remove-bitmaps also drops the bitmaps\n"
  "\n"
  "Options:\n"
  "  --socket SOCK        the VM's QMP unix socket (required)\n"
  "  --agent-socket QGA   the VM's guest agent socket (enables quiescing)\n"
  "  --help, --version\n"
  "\n"
  "`qmpbackup COMMAND --help` describes each command.\n"
  "\n"
  "Exit codes: 0 ok, 1 backup failed, 2 usage error, 3 VM unreachable,\n"
  "4 busy (another backup of this VM runs, or its socket is held),\n"
  "5 incremental impossible (no healthy chain: take a full), 130 canceled.\n";

static const char backup_usage[] =
  "usage: qmpbackup --socket SOCK [--agent-socket QGA] backup --level LEVEL --target DIR\n"
  "                 [--monthly] [--quiesce | --no-quiesce] [--include DISK,...]\n"
  "                 [--exclude DISK,...] [--speed BYTES] [--compress] [--quiet]\n"
  "\n"
  "  --level full|inc|auto|copy  full starts a new chain, inc continues it, auto\n"
  "                              takes inc when every disk has a healthy chain and\n"
  "                              full otherwise (and says why), copy is a full copy\n"
  "                              that starts no chain\n"
  "  --target DIR      STORE/<vm>: the store is DIR's parent, the VM name its last part\n"
  "  --monthly         chains in YYYY-MM folders; auto starts each month with a full\n"
  "  --quiesce         freeze the guest's filesystems (fail if the agent does not answer)\n"
  "  --no-quiesce      never freeze (default: freeze when --agent-socket is given and\n"
  "                    fall back to a crash-consistent backup if the agent fails)\n"
  "  --include DISK,.. back up only these disks\n"
  "  --exclude DISK,.. skip these disks\n"
  "  --speed BYTES     limit each disk's copy to BYTES per second (k/M/G suffixes)\n"
  "  --compress        compress the backup images\n"
  "  --quiet           no progress output\n"
  "\n"
  "On success prints one line: the restore point id, the level, and why auto\n"
  "took a full.  Ctrl-C cancels cleanly: nothing new appears in the store.\n";

static const char info_usage[] =
  "usage: qmpbackup --socket SOCK info [--target DIR]\n"
  "\n"
  "Prints the VM's disks (name, node, format, size, dirty bitmaps) as JSON; with\n"
  "--target STORE/<vm> also each disk's chain and its health.\n";

static const char cleanup_usage[] =
  "usage: qmpbackup --socket SOCK cleanup [--remove-bitmaps]\n"
  "\n"
  "Cancels leftover qmpbackup jobs and target nodes in QEMU; with --remove-bitmaps\n"
  "also removes every qmpbackup-* dirty bitmap (the next backup is then a full).\n";

/* Length of the valid UTF-8 sequence at S that encodes a printable
 * character (not a C1 control U+0080..U+009F), or 0. */
static size_t
utf8_printable (const unsigned char *s)
{
  size_t n = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
  if (n == 0 || s[0] > 0xf4)
    return 0;
  for (size_t i = 1; i < n; i++)
    if ((s[i] & 0xc0) != 0x80)
      return 0;
  if (n == 2 && s[0] == 0xc2 && s[1] < 0xa0)
    return 0;                                   /* C1 control */
  if ((n == 3 && s[0] == 0xe0 && s[1] < 0xa0) || (n == 4 && s[0] == 0xf0 && s[1] < 0x90)
      || (n == 4 && s[0] == 0xf4 && s[1] > 0x8f) || (n == 3 && s[0] == 0xed && s[1] > 0x9f))
    return 0;                                   /* overlong, beyond U+10FFFF, surrogate */
  return n;
}

/* S made safe for a terminal or a log (malloc'd): control bytes (ESC,
 * newline...), DEL, C1 controls and invalid UTF-8 become \xNN, or \u00NN
 * when JSON is set (then newlines and tabs, which json-c only emits as
 * layout, stay).  Text from the VM, its guest or QEMU goes through this. */
static char *
term_text (const char *s, bool json)
{
  const unsigned char *p = (const unsigned char *) s;
  size_t len = strlen (s), o = 0;
  char *out = qb_calloc (len * 6 + 1, 1);
  for (size_t i = 0; i < len;) {
    size_t n = p[i] >= 0x80 ? utf8_printable (p + i) : 0;
    if (n > 0 || (p[i] >= 0x20 && p[i] < 0x7f) || (json && (p[i] == '\n' || p[i] == '\t'))) {
      n = n ? n : 1;
      memcpy (out + o, p + i, n);
      o += n;
      i += n;
      continue;
    }
    o += (size_t) sprintf (out + o, json ? "\\u%04x" : "\\x%02x", p[i]);
    i++;
  }
  out[o] = '\0';
  return out;
}

/* fprintf (F, "qmpbackup: %s\n", S) with S made safe by term_text. */
static void
print_safe (FILE *f, const char *s)
{
  char *t = term_text (s, false);
  fprintf (f, "qmpbackup: %s\n", t);
  free (t);
}

/* Print USAGE to stderr and return the usage exit code. */
static int
usage_error (const char *usage, const char *fmt, const char *arg)
{
  if (fmt) {
    char *msg = qb_asprintf (fmt, arg);
    print_safe (stderr, msg);
    free (msg);
  }
  fputs (usage, stderr);
  return EXIT_USAGE;
}

/* The exit code for the current error. */
static int
exit_code (void)
{
  switch (qb_error_code ()) {
  case QB_EINVAL: return EXIT_USAGE;
  case QB_EHOSTDOWN: return EXIT_UNREACHABLE;
  case QB_EBUSY: return EXIT_BUSY;
  case QB_ENOCHAIN: return EXIT_NOCHAIN;
  case QB_ECANCELED: return EXIT_CANCELED;
  default: return EXIT_FAILED;
  }
}

/* Print the current error and return its exit code. */
static int
fail (const char *what)
{
  char *msg = qb_asprintf ("%s: %s", what, qb_error_msg ());
  print_safe (stderr, msg);
  free (msg);
  return exit_code ();
}

/* Signal handler: ask the engine to cancel. */
static void
on_signal (int sig)
{
  (void) sig;
  atomic_store (&cancel_flag, 1);
}

/* Split "a,b,c" into a NULL-terminated array (malloc'd; strings point into a copy). */
static const char **
split_list (const char *s)
{
  char *copy = qb_strdup (s);
  size_t n = 1;
  for (const char *p = s; *p; p++)
    n += *p == ',';
  const char **out = qb_calloc (n + 2, sizeof *out);
  size_t k = 0;
  for (char *save = NULL, *tok = strtok_r (copy, ",", &save); tok; tok = strtok_r (NULL, ",", &save))
    out[k++] = tok;
  out[n + 1] = copy;           /* kept for freeing */
  return out;
}

/* Free an array from split_list. NULL is fine. */
static void
free_list (const char **list)
{
  if (!list)
    return;
  size_t n = 0;
  while (list[n])
    n++;
  /* The copy sits after the terminator: find it at the slot split_list used. */
  for (size_t k = n + 1; ; k++)
    if (list[k]) {
      free ((void *) list[k]);
      break;
    }
  free (list);
}

/* Split --target DIR into the store root and the VM name (malloc'd). */
static int
split_target (const char *target, char **root, char **vm)
{
  char *t = qb_strdup (target);
  size_t len = strlen (t);
  while (len > 1 && t[len - 1] == '/')
    t[--len] = '\0';
  char *slash = strrchr (t, '/');
  const char *name = slash ? slash + 1 : t;
  if (!qb_name_is_safe (name)) {
    free (t);
    return qb_error_set (QB_EINVAL, "--target %s: its last part must be the VM's name "
                         "(no leading dot, no control characters)", target);
  }
  *vm = qb_strdup (name);
  if (!slash)
    *root = qb_strdup (".");
  else if (slash == t)
    *root = qb_strdup ("/");
  else {
    *slash = '\0';
    *root = qb_strdup (t);
  }
  free (t);
  return 0;
}

typedef struct progress_state {
  bool tty;
  uint64_t last_ms;
  const char *last_phase;
  bool drawn;
} progress_state;

/* Progress callback: a bar on a terminal, plain lines otherwise. */
static void
on_progress (void *opaque, const backup_progress *p)
{
  progress_state *s = opaque;
  uint64_t now = qb_mono_ms ();
  bool phase_changed = !s->last_phase || strcmp (s->last_phase, p->phase) != 0;
  if (!phase_changed && now - s->last_ms < (s->tty ? 200u : 5000u))
    return;
  s->last_ms = now;
  s->last_phase = p->phase;
  char done[32], total[32], rate[32];
  qb_format_bytes (p->done, done, sizeof done);
  qb_format_bytes (p->total, total, sizeof total);
  qb_format_bytes ((uint64_t) p->rate, rate, sizeof rate);
  double pct = p->total ? 100.0 * (double) p->done / (double) p->total : 0;
  if (s->tty) {
    int width = 30, fill = (int) (pct * width / 100.0);
    char bar[64];
    for (int i = 0; i < width; i++)
      bar[i] = i < fill ? '#' : '-';
    bar[width] = '\0';
    fprintf (stderr, "\r%-4s %-10s [%s] %5.1f%% %s/%s %s/s   ", backup_level_name (p->level),
             p->phase, bar, pct, done, total, rate);
    s->drawn = true;
  }
  else if (strcmp (p->phase, "copying") == 0)
    fprintf (stderr, "qmpbackup: %s: copying %.1f%% (%s of %s, %s/s)\n",
             backup_level_name (p->level), pct, done, total, rate);
  else
    fprintf (stderr, "qmpbackup: %s: %s\n", backup_level_name (p->level), p->phase);
}

/* The backup subcommand. */
static int
cmd_backup (int argc, char **argv, const char *sock, const char *agent)
{
  static const struct option opts[] = {
    { "level", required_argument, NULL, 'l' },
    { "target", required_argument, NULL, 't' },
    { "monthly", no_argument, NULL, 'm' },
    { "quiesce", no_argument, NULL, 'Q' },
    { "no-quiesce", no_argument, NULL, 'N' },
    { "include", required_argument, NULL, 'i' },
    { "exclude", required_argument, NULL, 'e' },
    { "speed", required_argument, NULL, 's' },
    { "compress", no_argument, NULL, 'c' },
    { "quiet", no_argument, NULL, 'q' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  backup_opts o = { .level = BACKUP_AUTO, .quiesce = QUIESCE_DEFAULT, .cancel = &cancel_flag };
  const char *target = NULL, *level = NULL;
  const char **inc = NULL, **exc = NULL;
  bool quiet = false;
  int c;
  while ((c = getopt_long (argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'l': level = optarg; break;
    case 't': target = optarg; break;
    case 'm': o.monthly = true; break;
    case 'Q': o.quiesce = QUIESCE_ON; break;
    case 'N': o.quiesce = QUIESCE_OFF; break;
    case 'i': inc = split_list (optarg); break;
    case 'e': exc = split_list (optarg); break;
    case 's':
      if (qb_parse_size (optarg, &o.speed) < 0)
        return usage_error (backup_usage, "bad --speed \"%s\"", optarg);
      break;
    case 'c': o.compress = true; break;
    case 'q': quiet = true; break;
    case 'h': fputs (backup_usage, stdout); return EXIT_OK;
    default: return usage_error (backup_usage, NULL, NULL);
    }
  }
  if (optind < argc)
    return usage_error (backup_usage, "unexpected argument \"%s\"", argv[optind]);
  if (!level)
    return usage_error (backup_usage, "--level is required%s", "");
  if (!target)
    return usage_error (backup_usage, "--target is required%s", "");
  if (backup_level_parse (level, &o.level) < 0)
    return usage_error (backup_usage, "%s", qb_error_msg ());
  o.include = inc;
  o.exclude = exc;
  char *root, *vm;
  if (split_target (target, &root, &vm) < 0)
    return usage_error (backup_usage, "%s", qb_error_msg ());
  progress_state ps = { .tty = isatty (2) };
  if (!quiet) {
    o.progress = on_progress;
    o.opaque = &ps;
  }
  struct sigaction sa = { .sa_handler = on_signal };
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);

  int rc = EXIT_OK;
  store *st = store_open (root, true);
  backup_result res;
  if (!st)
    rc = fail ("opening the store");
  else if (engine_backup (st, vm, sock, agent, &o, &res) < 0) {
    if (ps.drawn)
      fputc ('\n', stderr);
    rc = fail ("backup failed");
  }
  else {
    if (ps.drawn)
      fputc ('\n', stderr);
    /* A warning (the guest may not have been thawed) is shown even with --quiet. */
    if (res.quiesce_note[0] && (!quiet || strncmp (res.quiesce_note, "WARNING", 7) == 0))
      print_safe (stderr, res.quiesce_note);
    char stored[32];
    qb_format_bytes (res.bytes_stored, stored, sizeof stored);
    if (res.reason[0]) {
      char *reason = term_text (res.reason, false);
      printf ("%s %s (auto took a full: %s)\n", res.id, backup_level_name (res.level), reason);
      free (reason);
    }
    else
      printf ("%s %s\n", res.id, backup_level_name (res.level));
    if (!quiet)
      fprintf (stderr, "qmpbackup: %zu disk(s), %s stored, %.1f s%s\n", res.ndisks, stored,
               res.seconds, res.quiesced ? ", quiesced" : "");
  }
  store_close (st);
  free (root);
  free (vm);
  free_list (inc);
  free_list (exc);
  return rc;
}

/* The info subcommand. */
static int
cmd_info (int argc, char **argv, const char *sock)
{
  static const struct option opts[] = {
    { "target", required_argument, NULL, 't' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *target = NULL;
  int c;
  while ((c = getopt_long (argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 't': target = optarg; break;
    case 'h': fputs (info_usage, stdout); return EXIT_OK;
    default: return usage_error (info_usage, NULL, NULL);
    }
  }
  if (optind < argc)
    return usage_error (info_usage, "unexpected argument \"%s\"", argv[optind]);
  char *root = NULL, *vm = NULL;
  store *st = NULL;
  if (target) {
    if (split_target (target, &root, &vm) < 0)
      return usage_error (info_usage, "%s", qb_error_msg ());
    st = store_open (root, false);
    if (!st) {
      free (root);
      free (vm);
      return fail ("opening the store");
    }
  }
  json_object *info = engine_info (st, vm, sock);
  int rc = EXIT_OK;
  if (!info)
    rc = fail ("info");
  else {
    char *text = term_text (json_object_to_json_string_ext (info, JSON_C_TO_STRING_PRETTY
                                                            | JSON_C_TO_STRING_SPACED), true);
    printf ("%s\n", text);
    free (text);
    json_object_put (info);
  }
  store_close (st);
  free (root);
  free (vm);
  return rc;
}

/* engine_cleanup_report callback: "Removing bitmap: NAME", as the Python qmpbackup prints. */
static void
on_removed (void *opaque, const char *kind, const char *disk, const char *name)
{
  (void) opaque, (void) disk;
  char *t = strcmp (kind, "bitmap") == 0 ? term_text (name, false) : NULL;
  if (t)
    printf ("Removing bitmap: %s\n", t);
  free (t);
}

/* The cleanup subcommand. */
static int
cmd_cleanup (int argc, char **argv, const char *sock)
{
  static const struct option opts[] = {
    { "remove-bitmaps", no_argument, NULL, 'r' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  bool remove = false;
  int c;
  while ((c = getopt_long (argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'r': remove = true; break;
    case 'h': fputs (cleanup_usage, stdout); return EXIT_OK;
    default: return usage_error (cleanup_usage, NULL, NULL);
    }
  }
  if (optind < argc)
    return usage_error (cleanup_usage, "unexpected argument \"%s\"", argv[optind]);
  int n = engine_cleanup_report (sock, remove, on_removed, NULL);
  if (n < 0)
    return fail ("cleanup");
  printf ("removed %d leftover(s)%s\n", n, remove ? " including bitmaps" : "");
  return EXIT_OK;
}

int
main (int argc, char **argv)
{
  static const struct option opts[] = {
    { "socket", required_argument, NULL, 's' },
    { "agent-socket", required_argument, NULL, 'a' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  const char *sock = NULL, *agent = NULL;
  int c;
  while ((c = getopt_long (argc, argv, "+", opts, NULL)) != -1) {
    switch (c) {
    case 's': sock = optarg; break;
    case 'a': agent = optarg; break;
    case 'h': fputs (main_usage, stdout); return EXIT_OK;
    case 'V': printf ("qmpbackup %s\n", QB_VERSION); return EXIT_OK;
    default: return usage_error (main_usage, NULL, NULL);
    }
  }
  if (optind >= argc)
    return usage_error (main_usage, "no command given%s", "");
  const char *cmd = argv[optind];
  int sub_argc = argc - optind;
  char **sub_argv = argv + optind;
  bool help = false;
  for (int i = 1; i < sub_argc; i++)
    help |= strcmp (sub_argv[i], "--help") == 0;
  optind = 1;
  if (!sock && !help && (!strcmp (cmd, "backup") || !strcmp (cmd, "info") || !strcmp (cmd, "cleanup")))
    return usage_error (main_usage, "--socket is required%s", "");
  if (strcmp (cmd, "backup") == 0)
    return cmd_backup (sub_argc, sub_argv, sock, agent);
  if (strcmp (cmd, "info") == 0)
    return cmd_info (sub_argc, sub_argv, sock);
  if (strcmp (cmd, "cleanup") == 0)
    return cmd_cleanup (sub_argc, sub_argv, sock);
  return usage_error (main_usage, "unknown command \"%s\"", cmd);
}
