/* qmpbackup — live full and incremental backups of a running QEMU VM, the
 * seed-compatible command line of qmpbackupfs (same engine and store as the
 * mount).  See usage() for the interface and the exit codes. */
#include "engine/engine.h"
#include "store/store.h"
#include "common/error.h"
#include "common/util.h"
#include "qmp/jsonio.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

enum {
  EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3, EXIT_BUSY = 4,
  EXIT_NOCHAIN = 5, EXIT_CANCELED = 130,
};

static atomic_int cancel_flag;

static const char main_usage[] =
  "usage: qmpbackup [GLOBAL OPTIONS] COMMAND [OPTIONS]\n"
  "\n"
  "Live backups of a running QEMU VM through its QMP socket.\n"
  "\n"
  "Commands:\n"
  "  backup    take a backup (full, incremental, auto or copy) into a store\n"
  "  info      the VM's disks and bitmaps; with --target the store's points,\n"
  "            chains, sizes and health (also when the VM is gone)\n"
  "  cleanup   cancel leftover backup jobs; --remove-bitmaps also drops the bitmaps\n"
  "\n"
  "Global options (also accepted after the command):\n"
  "  --socket ADDR        the VM's QMP socket: a unix socket path or tcp:HOST:PORT\n"
  "                       (IPv6: tcp:[ADDR]:PORT)\n"
  "  --agent-socket PATH  the VM's guest agent unix socket (enables quiescing)\n"
  "  --debug              trace the QMP and guest agent traffic on stderr (escaped)\n"
  "  -L, --logfile FILE   append one line per backup start, end, failure, cancel\n"
  "                       (created 0600; a symbolic link is refused)\n"
  "  --syslog             the same lines to syslog (facility user)\n"
  "  -h, --help           this help; `qmpbackup COMMAND --help` for a command\n"
  "  -V, --version        the version\n"
  "\n"
  "Exit codes: 0 ok, 1 backup failed, 2 usage error, 3 VM unreachable,\n"
  "4 busy (another backup of this VM runs, or its socket is held),\n"
  "5 incremental impossible (no healthy chain: take a full), 130 canceled.\n";

static const char backup_usage[] =
  "usage: qmpbackup --socket ADDR [--agent-socket PATH] backup -l LEVEL -t STORE/VM\n"
  "                 [--monthly] [--quiesce | --no-quiesce] [--pause] [-i DISK,...]\n"
  "                 [-e DISK,...] [--speed BYTES] [--fleece-dir DIR|off] [--compress]\n"
  "                 [--quiet]\n"
  "\n"
  "  -l, --level full|inc|auto|copy  full starts a new chain, inc continues it,\n"
  "                    auto takes inc when every disk has a healthy chain and full\n"
  "                    otherwise (and says why), copy is a full copy that starts\n"
  "                    no chain\n"
  "  -t, --target DIR  STORE/<vm>: the store is DIR's parent, the VM name its last part\n"
  "  --monthly         chains in YYYY-MM folders; auto starts each month with a full\n"
  "  --quiesce         freeze the guest's filesystems (fail if the agent does not answer;\n"
  "                    --quisce is accepted too)\n"
  "  --no-quiesce      never freeze (default: freeze when --agent-socket is given and\n"
  "                    fall back to a crash-consistent backup if the agent fails)\n"
  "  --pause           pause the VM (QMP stop) from before the backup starts until its\n"
  "                    copy is done, then resume it (cont) on every path, Ctrl-C and\n"
  "                    errors included; a VM that was paused stays paused.  No freeze:\n"
  "                    excludes --quiesce (a paused guest cannot thaw)\n"
  "  -i, --include DISK,..  back up only these disks\n"
  "  -e, --exclude DISK,..  skip these disks\n"
  "  --speed BYTES, --speed-limit BYTES  limit each disk's copy to BYTES per second\n"
  "                    (k/M/G suffixes)\n"
  "  --fleece-dir DIR|off  image fleecing: while the copy runs, old data of the blocks\n"
  "                    the guest overwrites goes to a temporary image in DIR (local\n"
  "                    disk), so guest writes do not wait for the store; off (the\n"
  "                    default): none\n"
  "  --compress        compress the backup images\n"
  "  --include-raw     accepted for compatibility: raw disks are always backed up\n"
  "  -q, --quiet       no progress output\n"
  "  (and the global options: qmpbackup --help)\n"
  "\n"
  "On success prints one line: the restore point id, the level, and why auto\n"
  "took a full.  Ctrl-C cancels cleanly: nothing new appears in the store.\n";

static const char info_usage[] =
  "usage: qmpbackup [--socket ADDR] info [-t STORE/VM] [--show blockdev|bitmaps|store]\n"
  "                 [--json]\n"
  "\n"
  "  --show blockdev   the VM's disks: name, node, format, size, file (text)\n"
  "  --show bitmaps    the VM's dirty bitmaps per disk (text)\n"
  "  --show store      with --target: the store's points, chains, sizes and health\n"
  "  -t, --target DIR  STORE/<vm>: also each disk's chain and its health; works\n"
  "                    without --socket or when the VM is gone (store only)\n"
  "  --json            machine output (JSON) instead of text\n"
  "\n"
  "Without --show: with --target, the VM's disks (if reachable) and the store as\n"
  "text; without --target, the VM's disks and bitmaps as JSON (as before).\n";

static const char cleanup_usage[] =
  "usage: qmpbackup --socket ADDR cleanup [--remove-bitmaps]\n"
  "\n"
  "Cancels leftover qmpbackup jobs and target nodes in QEMU, puts devices left on a\n"
  "fleecing filter back on their disks and deletes the fleecing nodes and images;\n"
  "with --remove-bitmaps\n"
  "(or --remove-bitmap) also removes every qmpbackup-* dirty bitmap (the next\n"
  "backup is then a full).\n";

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

/* Print "qmpbackup: MSG" (FMT with ARG, made safe) and a hint to the help of
 * command CMD (NULL: the program) on stderr; return the usage exit code. */
static int
usage_error (const char *cmd, const char *fmt, const char *arg)
{
  char *msg = qb_asprintf (fmt, arg);
  print_safe (stderr, msg);
  free (msg);
  fprintf (stderr, "Try 'qmpbackup%s%s --help' for more information.\n", cmd ? " " : "",
           cmd ? cmd : "");
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

/* ---- Options every command takes (before or after the command word) ---- */

enum {
  OPT_SOCKET = 256, OPT_AGENT, OPT_DEBUG, OPT_SYSLOG, OPT_MONTHLY, OPT_QUIESCE,
  OPT_NO_QUIESCE, OPT_SPEED, OPT_COMPRESS, OPT_INCLUDE_RAW, OPT_PAUSE, OPT_FLEECE_DIR, OPT_SHOW, OPT_JSON,
  OPT_REMOVE_BITMAPS, OPT_UUID,
};

#define COMMON_LONG_OPTS                                        \
  { "socket", required_argument, NULL, OPT_SOCKET },            \
  { "agent-socket", required_argument, NULL, OPT_AGENT },       \
  { "debug", no_argument, NULL, OPT_DEBUG },                    \
  { "logfile", required_argument, NULL, 'L' },                  \
  { "syslog", no_argument, NULL, OPT_SYSLOG },                  \
  { "help", no_argument, NULL, 'h' },                           \
  { "version", no_argument, NULL, 'V' }
#define COMMON_SHORT_OPTS "hVL:"

typedef struct common_opts {
  const char *sock, *agent, *logfile;
  bool debug, syslog;
} common_opts;

/* Handle option C of the common set (OPTARG its argument) into CO:
 * 1 if it was one, 0 if not, or an exit code + 1000 for help/version. */
static int
common_opt (int c, common_opts *co, const char *usage)
{
  switch (c) {
  case OPT_SOCKET: co->sock = optarg; return 1;
  case OPT_AGENT: co->agent = optarg; return 1;
  case OPT_DEBUG: co->debug = true; return 1;
  case 'L': co->logfile = optarg; return 1;
  case OPT_SYSLOG: co->syslog = true; return 1;
  case 'h': fputs (usage, stdout); return 1000 + EXIT_OK;
  case 'V': printf ("qmpbackup %s\n", QB_VERSION); return 1000 + EXIT_OK;
  default: return 0;
  }
}

/* The usage error for getopt's return C ('?' or ':') in ARGV (CMD: the
 * command, NULL for the program). */
static int
getopt_error (int c, char **argv, const char *cmd)
{
  const char *arg = argv[optind - 1];
  if (c == ':')
    return usage_error (cmd, "option '%s' needs an argument", arg);
  if (optopt && optopt != '?') {
    char o[3] = { '-', (char) optopt, '\0' };
    return usage_error (cmd, "unknown option '%s'", o);
  }
  return usage_error (cmd, "unknown or ambiguous option '%s'", arg);
}

/* ---- Log lines: --logfile and --syslog ---- */

typedef struct logsink {
  int fd;          /* --logfile, or -1 */
  bool syslog;
} logsink;

/* Open the sinks CO asks for: the log file with O_APPEND|O_NOFOLLOW, created
 * 0600.  0, or -1 with the reason. */
static int
log_open (logsink *ls, const common_opts *co)
{
  ls->fd = -1;
  ls->syslog = co->syslog;
  if (co->logfile) {
    ls->fd = open (co->logfile, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC
                   | O_NOCTTY, 0600);
    if (ls->fd < 0)
      return qb_error_set_errno (errno, "--logfile %s%s", co->logfile,
                                 errno == ELOOP ? " (a symbolic link: refused)" : "");
    struct stat sb;
    if (fstat (ls->fd, &sb) < 0 || !S_ISREG (sb.st_mode)) {
      close (ls->fd);
      ls->fd = -1;
      return qb_error_set (QB_EINVAL, "--logfile %s: not a regular file", co->logfile);
    }
  }
  if (ls->syslog)
    openlog ("qmpbackup", LOG_PID, LOG_USER);
  return 0;
}

/* Close the sinks. */
static void
log_close (logsink *ls)
{
  if (ls->fd >= 0)
    close (ls->fd);
  if (ls->syslog)
    closelog ();
}

/* One log line "event=EVENT vm=VM ..." (printf FMT, made safe) to every sink:
 * the file gets "TIME qmpbackup[PID]: " before it, syslog PRIO. */
static void __attribute__ ((format (printf, 3, 4)))
log_line (logsink *ls, int prio, const char *fmt, ...)
{
  if (ls->fd < 0 && !ls->syslog)
    return;
  va_list ap;
  va_start (ap, fmt);
  char *raw = NULL;
  if (vasprintf (&raw, fmt, ap) < 0)
    raw = NULL;
  va_end (ap);
  if (!raw)
    return;
  char *text = term_text (raw, false);
  free (raw);
  if (ls->fd >= 0) {
    char when[32];
    qb_format_utc (qb_now_us (), when, sizeof when);
    char *line = qb_asprintf ("%s qmpbackup[%ld]: %s\n", when, (long) getpid (), text);
    ssize_t w = write (ls->fd, line, strlen (line));   /* one write: O_APPEND keeps lines whole */
    (void) w;
    free (line);
  }
  if (ls->syslog)
    syslog (prio, "%s", text);
  free (text);
}

/* ---- backup ---- */

/* The backup subcommand. */
static int
cmd_backup (int argc, char **argv, common_opts *co)
{
  static const struct option opts[] = {
    { "level", required_argument, NULL, 'l' },
    { "target", required_argument, NULL, 't' },
    { "monthly", no_argument, NULL, OPT_MONTHLY },
    { "quiesce", no_argument, NULL, OPT_QUIESCE },
    { "quisce", no_argument, NULL, OPT_QUIESCE },      /* upstream's old spelling */
    { "no-quiesce", no_argument, NULL, OPT_NO_QUIESCE },
    { "include", required_argument, NULL, 'i' },
    { "exclude", required_argument, NULL, 'e' },
    { "speed", required_argument, NULL, OPT_SPEED },
    { "speed-limit", required_argument, NULL, OPT_SPEED },
    { "compress", no_argument, NULL, OPT_COMPRESS },
    { "include-raw", no_argument, NULL, OPT_INCLUDE_RAW },
    { "pause", no_argument, NULL, OPT_PAUSE },
    { "fleece-dir", required_argument, NULL, OPT_FLEECE_DIR },
    { "uuid", required_argument, NULL, OPT_UUID },
    { "quiet", no_argument, NULL, 'q' },
    COMMON_LONG_OPTS,
    { NULL, 0, NULL, 0 },
  };
  backup_opts o = { .level = BACKUP_AUTO, .quiesce = QUIESCE_DEFAULT, .cancel = &cancel_flag };
  const char *target = NULL, *level = NULL, *speed = NULL;
  const char *inc_arg = NULL, *exc_arg = NULL;
  bool quiet = false, include_raw = false;
  int c;
  while ((c = getopt_long (argc, argv, ":l:t:i:e:q" COMMON_SHORT_OPTS, opts, NULL)) != -1) {
    int k = common_opt (c, co, backup_usage);
    if (k >= 1000)
      return k - 1000;
    if (k)
      continue;
    switch (c) {
    case 'l': level = optarg; break;
    case 't': target = optarg; break;
    case OPT_MONTHLY: o.monthly = true; break;
    case OPT_QUIESCE: o.quiesce = QUIESCE_ON; break;
    case OPT_NO_QUIESCE: o.quiesce = QUIESCE_OFF; break;
    case 'i': inc_arg = optarg; break;
    case 'e': exc_arg = optarg; break;
    case OPT_SPEED: speed = optarg; break;
    case OPT_COMPRESS: o.compress = true; break;
    case OPT_INCLUDE_RAW: include_raw = true; break;
    case OPT_PAUSE: o.pause = true; break;
    case OPT_FLEECE_DIR: o.fleece = optarg; break;
    case OPT_UUID:
      return usage_error ("backup", "--uuid is not supported: each chain gets its own id and "
                          "bitmap, and \"-l inc\" finds the chain in the store%s", "");
    case 'q': quiet = true; break;
    default: return getopt_error (c, argv, "backup");
    }
  }
  if (optind < argc)
    return usage_error ("backup", "unexpected argument \"%s\"", argv[optind]);
  if (!co->sock)
    return usage_error ("backup", "--socket is required%s", "");
  if (!level)
    return usage_error ("backup", "--level is required%s", "");
  if (!target)
    return usage_error ("backup", "--target is required%s", "");
  if (backup_level_parse (level, &o.level) < 0)
    return usage_error ("backup", "%s", qb_error_msg ());
  if (speed && qb_parse_size (speed, &o.speed) < 0)
    return usage_error ("backup", "bad --speed \"%s\" (bytes per second, k/M/G suffixes)", speed);
  if (o.pause && o.quiesce == QUIESCE_ON)
    return usage_error ("backup", "--pause and --quiesce exclude each other: the guest agent "
                        "cannot thaw a paused guest%s", "");
  if (co->agent && strncmp (co->agent, "tcp:", 4) == 0)
    return usage_error ("backup", "--agent-socket %s: the guest agent must be a unix socket "
                        "(the thaw guard, which thaws the guest if qmpbackup dies, reaches it "
                        "by path)", co->agent);
  char *root, *vm;
  if (split_target (target, &root, &vm) < 0)
    return usage_error ("backup", "%s", qb_error_msg ());
  if (co->debug)
    jsonio_set_trace (2);
  if (include_raw)
    fputs ("qmpbackup: --include-raw: raw disks are always backed up, the flag changes nothing\n",
           stderr);
  logsink ls;
  if (log_open (&ls, co) < 0) {
    free (root);
    free (vm);
    return fail ("opening the log");
  }
  const char **inc = inc_arg ? split_list (inc_arg) : NULL;
  const char **exc = exc_arg ? split_list (exc_arg) : NULL;
  o.include = inc;
  o.exclude = exc;
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
  uint64_t t0 = qb_mono_ms ();
  log_line (&ls, LOG_INFO, "event=start vm=%s level=%s target=%s%s", vm, level, target,
            o.pause ? " pause=yes" : "");
  store *st = store_open (root, true);
  backup_result res;
  memset (&res, 0, sizeof res);
  if (!st || engine_backup (st, vm, co->sock, co->agent, &o, &res) < 0) {
    if (ps.drawn)
      fputc ('\n', stderr);
    qb_err code = qb_error_code ();
    double secs = (double) (qb_mono_ms () - t0) / 1000.0;
    log_line (&ls, code == QB_ECANCELED ? LOG_NOTICE : LOG_ERR,
              "event=%s vm=%s level=%s bytes=0 seconds=%.1f reason=\"%s\"",
              code == QB_ECANCELED ? "canceled" : "failed", vm, level, secs, qb_error_msg ());
    rc = fail (st ? "backup failed" : "opening the store");
  }
  else {
    if (ps.drawn)
      fputc ('\n', stderr);
    /* A warning (the guest may not have been thawed) is shown even with --quiet. */
    if (res.quiesce_note[0] && (!quiet || strncmp (res.quiesce_note, "WARNING", 7) == 0))
      print_safe (stderr, res.quiesce_note);
    if (res.pause_note[0])
      print_safe (stderr, res.pause_note);
    if (res.fleece_note[0] && (!quiet || strncmp (res.fleece_note, "WARNING", 7) == 0))
      print_safe (stderr, res.fleece_note);
    char stored[32];
    qb_format_bytes (res.bytes_stored, stored, sizeof stored);
    log_line (&ls, LOG_INFO, "event=end vm=%s level=%s point=%s bytes=%llu seconds=%.1f%s%s%s",
              vm, backup_level_name (res.level), res.id, (unsigned long long) res.bytes_stored,
              res.seconds, res.reason[0] ? " reason=\"auto took a full: " : "", res.reason,
              res.reason[0] ? "\"" : "");
    if (res.reason[0]) {
      char *reason = term_text (res.reason, false);
      printf ("%s %s (auto took a full: %s)\n", res.id, backup_level_name (res.level), reason);
      free (reason);
    }
    else
      printf ("%s %s\n", res.id, backup_level_name (res.level));
    if (!quiet)
      fprintf (stderr, "qmpbackup: %zu disk(s), %s stored, %.1f s%s%s\n", res.ndisks, stored,
               res.seconds, res.quiesced ? ", quiesced" : "", res.paused ? ", VM paused" : "");
  }
  log_close (&ls);
  store_close (st);
  free (root);
  free (vm);
  free_list (inc);
  free_list (exc);
  return rc;
}

/* ---- info ---- */

/* Print the VM's disks of INFO (engine_info's JSON) as text, one line each. */
static void
print_blockdev (json_object *info)
{
  json_object *disks = json_object_object_get (info, "disks");
  size_t n = disks ? json_object_array_length (disks) : 0;
  for (size_t i = 0; i < n; i++) {
    json_object *d = json_object_array_get_idx (disks, i);
    char *line = qb_asprintf ("%s: node=%s device=%s format=%s size=%lld file=%s",
                              json_object_get_string (json_object_object_get (d, "name")),
                              json_object_get_string (json_object_object_get (d, "node")),
                              json_object_get_string (json_object_object_get (d, "device")),
                              json_object_get_string (json_object_object_get (d, "format")),
                              (long long) json_object_get_int64 (json_object_object_get (d, "size")),
                              json_object_get_string (json_object_object_get (d, "file")));
    json_object *h = json_object_object_get (d, "health");
    char *t = term_text (line, false);
    printf ("%s", t);
    free (t);
    if (h) {
      char *why = term_text (json_object_get_string (json_object_object_get (d, "reason")) ?: "",
                             false);
      printf (" health=%s%s%s", json_object_get_string (h), *why ? " reason=" : "", why);
      free (why);
    }
    putchar ('\n');
    free (line);
  }
  if (n == 0)
    printf ("no disk that can be backed up\n");
}

/* Print the dirty bitmaps of each disk of INFO as text, one line each. */
static void
print_bitmaps (json_object *info)
{
  json_object *disks = json_object_object_get (info, "disks");
  size_t n = disks ? json_object_array_length (disks) : 0;
  for (size_t i = 0; i < n; i++) {
    json_object *d = json_object_array_get_idx (disks, i);
    const char *disk = json_object_get_string (json_object_object_get (d, "name"));
    json_object *bms = json_object_object_get (d, "bitmaps");
    size_t m = bms ? json_object_array_length (bms) : 0;
    for (size_t k = 0; k < m; k++) {
      json_object *b = json_object_array_get_idx (bms, k);
#define YN(f) (json_object_get_boolean (json_object_object_get (b, f)) ? "yes" : "no")
      char *line = qb_asprintf ("%s: %s granularity=%lld persistent=%s recording=%s busy=%s "
                                "inconsistent=%s", disk,
                                json_object_get_string (json_object_object_get (b, "name")),
                                (long long) json_object_get_int64 (json_object_object_get (b, "granularity")),
                                YN ("persistent"), YN ("recording"), YN ("busy"), YN ("inconsistent"));
#undef YN
      char *t = term_text (line, false);
      printf ("%s\n", t);
      free (t);
      free (line);
    }
    if (m == 0) {
      char *t = term_text (disk, false);
      printf ("%s: no bitmaps\n", t);
      free (t);
    }
  }
}

/* The word for KIND. */
static const char *
kind_name (store_kind kind)
{
  return kind == STORE_FULL ? "full" : kind == STORE_INC ? "inc" : "copy";
}

/* The store's view of VM (scan V, NULL: no backups yet) as JSON: per disk its
 * chains with points, sizes and health. */
static json_object *
store_json (store *st, const char *vm, const store_vm *v)
{
  json_object *out = json_object_new_object ();
  json_object_object_add (out, "root", json_object_new_string (store_root (st)));
  json_object_object_add (out, "vm", json_object_new_string (vm));
  json_object *disks = json_object_new_array ();
  size_t total_points = 0;
  uint64_t total_bytes = 0;
  for (size_t i = 0; v && i < v->ndisks; i++) {
    const store_disk *sd = &v->disks[i];
    json_object *jd = json_object_new_object ();
    json_object_object_add (jd, "name", json_object_new_string (sd->name));
    json_object *chains = json_object_new_array ();
    for (size_t k = 0; k < sd->nchains; k++) {
      const store_chain *c = &sd->chains[k];
      json_object *jc = json_object_new_object ();
      json_object_object_add (jc, "chain", c->chain_id ? json_object_new_string (c->chain_id) : NULL);
      json_object_object_add (jc, "month", c->month ? json_object_new_string (c->month) : NULL);
      json_object *pts = json_object_new_array ();
      uint64_t bytes = 0, vsize = 0;
      const store_layer *bad = NULL;
      for (size_t l = 0; l < c->n; l++) {
        const store_layer *ly = &c->layers[l];
        json_object *jl = json_object_new_object ();
        json_object_object_add (jl, "id", json_object_new_string (ly->id));
        json_object_object_add (jl, "point", json_object_new_string (ly->display));
        json_object_object_add (jl, "kind", json_object_new_string (kind_name (ly->kind)));
        json_object_object_add (jl, "file", json_object_new_string (ly->name));
        json_object_object_add (jl, "bytes", json_object_new_int64 ((int64_t) ly->file_size));
        json_object_object_add (jl, "virtual_size", json_object_new_int64 ((int64_t) ly->virtual_size));
        json_object_object_add (jl, "quiesced", json_object_new_boolean (ly->quiesced));
        json_object_object_add (jl, "damage", ly->damage ? json_object_new_string (ly->damage) : NULL);
        json_object_array_add (pts, jl);
        bytes += ly->file_size;
        if (ly->virtual_size)
          vsize = ly->virtual_size;
        if (ly->damage && !bad)
          bad = ly;
      }
      json_object_object_add (jc, "points", pts);
      json_object_object_add (jc, "bytes", json_object_new_int64 ((int64_t) bytes));
      json_object_object_add (jc, "virtual_size", json_object_new_int64 ((int64_t) vsize));
      json_object_object_add (jc, "health", json_object_new_string (bad ? "damaged" : "ok"));
      char *why = bad ? qb_asprintf ("point %s and every later point of this chain are unusable: %s",
                                     bad->display, bad->damage) : NULL;
      json_object_object_add (jc, "reason", why ? json_object_new_string (why) : NULL);
      free (why);
      json_object_array_add (chains, jc);
      total_points += c->n;
      total_bytes += bytes;
    }
    json_object_object_add (jd, "chains", chains);
    json_object_array_add (disks, jd);
  }
  json_object_object_add (out, "disks", disks);
  json_object_object_add (out, "points", json_object_new_int64 ((int64_t) total_points));
  json_object_object_add (out, "bytes", json_object_new_int64 ((int64_t) total_bytes));
  json_object *skipped = json_object_new_array ();
  for (size_t i = 0; v && i < v->nskipped; i++)
    json_object_array_add (skipped, json_object_new_string (v->skipped[i]));
  json_object_object_add (out, "skipped", skipped);
  return out;
}

/* Print the store part (store_json's J) as text. */
static void
print_store (json_object *j)
{
#define S(o, k) (json_object_get_string (json_object_object_get ((o), (k))) ?: "")
#define I(o, k) ((uint64_t) json_object_get_int64 (json_object_object_get ((o), (k))))
  char b[32], vs[32];
  qb_format_bytes (I (j, "bytes"), b, sizeof b);
  char *head = qb_asprintf ("store %s, VM %s: %llu point(s) in %zu disk(s), %s stored", S (j, "root"),
                            S (j, "vm"), (unsigned long long) I (j, "points"),
                            json_object_array_length (json_object_object_get (j, "disks")), b);
  char *t = term_text (head, false);
  printf ("%s\n", t);
  free (t);
  free (head);
  json_object *disks = json_object_object_get (j, "disks");
  for (size_t i = 0; i < json_object_array_length (disks); i++) {
    json_object *d = json_object_array_get_idx (disks, i);
    json_object *chains = json_object_object_get (d, "chains");
    for (size_t k = 0; k < json_object_array_length (chains); k++) {
      json_object *c = json_object_array_get_idx (chains, k);
      json_object *pts = json_object_object_get (c, "points");
      qb_format_bytes (I (c, "bytes"), b, sizeof b);
      qb_format_bytes (I (c, "virtual_size"), vs, sizeof vs);
      char *line = qb_asprintf ("disk %s: chain %s%s%s: %zu point(s), %s stored, disk size %s, "
                                "health %s%s%s", S (d, "name"),
                                *S (c, "chain") ? S (c, "chain") : "(seed)",
                                *S (c, "month") ? " month " : "", S (c, "month"),
                                json_object_array_length (pts), b, vs, S (c, "health"),
                                *S (c, "reason") ? ": " : "", S (c, "reason"));
      t = term_text (line, false);
      printf ("%s\n", t);
      free (t);
      free (line);
      for (size_t l = 0; l < json_object_array_length (pts); l++) {
        json_object *p = json_object_array_get_idx (pts, l);
        qb_format_bytes (I (p, "bytes"), b, sizeof b);
        line = qb_asprintf ("  %-24s %-4s %10s  %s%s%s", S (p, "point"), S (p, "kind"), b,
                            json_object_get_boolean (json_object_object_get (p, "quiesced"))
                            ? "quiesced" : "", *S (p, "damage") ? " DAMAGED: " : "",
                            S (p, "damage"));
        for (size_t e = strlen (line); e > 0 && line[e - 1] == ' '; e--)
          line[e - 1] = '\0';
        t = term_text (line, false);
        printf ("%s\n", t);
        free (t);
        free (line);
      }
    }
  }
  json_object *sk = json_object_object_get (j, "skipped");
  for (size_t i = 0; i < json_object_array_length (sk); i++) {
    t = term_text (json_object_get_string (json_object_array_get_idx (sk, i)), false);
    printf ("left out: %s\n", t);
    free (t);
  }
#undef S
#undef I
}

/* The info subcommand. */
static int
cmd_info (int argc, char **argv, common_opts *co)
{
  static const struct option opts[] = {
    { "target", required_argument, NULL, 't' },
    { "show", required_argument, NULL, OPT_SHOW },
    { "json", no_argument, NULL, OPT_JSON },
    COMMON_LONG_OPTS,
    { NULL, 0, NULL, 0 },
  };
  const char *target = NULL, *show = NULL;
  bool json = false;
  int c;
  while ((c = getopt_long (argc, argv, ":t:" COMMON_SHORT_OPTS, opts, NULL)) != -1) {
    int k = common_opt (c, co, info_usage);
    if (k >= 1000)
      return k - 1000;
    if (k)
      continue;
    switch (c) {
    case 't': target = optarg; break;
    case OPT_SHOW: show = optarg; break;
    case OPT_JSON: json = true; break;
    default: return getopt_error (c, argv, "info");
    }
  }
  if (optind < argc)
    return usage_error ("info", "unexpected argument \"%s\"", argv[optind]);
  if (show && strcmp (show, "blockdev") && strcmp (show, "bitmaps") && strcmp (show, "store"))
    return usage_error ("info", "--show %s: expected blockdev, bitmaps or store", show);
  bool need_vm = show && strcmp (show, "store") != 0;
  if (show && !strcmp (show, "store") && !target)
    return usage_error ("info", "--show store needs --target STORE/<vm>%s", "");
  if (!co->sock && (!target || need_vm))
    return usage_error ("info", "--socket is required (or --target STORE/<vm> for the store "
                        "alone)%s", "");
  if (co->debug)
    jsonio_set_trace (2);
  char *root = NULL, *vm = NULL;
  store *st = NULL;
  if (target) {
    if (split_target (target, &root, &vm) < 0)
      return usage_error ("info", "%s", qb_error_msg ());
    st = store_open (root, false);
    if (!st) {
      free (root);
      free (vm);
      return fail ("opening the store");
    }
  }
  int rc = EXIT_OK;
  json_object *info = NULL;
  char *vm_error = NULL;
  bool want_vm = co->sock && (!show || need_vm);
  if (want_vm) {
    info = engine_info (st, vm, co->sock);
    if (!info) {
      qb_err code = qb_error_code ();
      /* The store alone when the VM is gone or its socket is held. */
      if (!target || need_vm || (code != QB_EHOSTDOWN && code != QB_EBUSY && code != QB_ETIMEDOUT))
        rc = fail ("info");
      else
        vm_error = qb_strdup (qb_error_msg ());
    }
  }
  json_object *sj = NULL;
  if (rc == EXIT_OK && target && (!show || !strcmp (show, "store"))) {
    store_vm *v = store_scan_vm (st, vm);
    if (!v && qb_error_code () != QB_ENOENT)
      rc = fail ("reading the store");
    else
      sj = store_json (st, vm, v);
    store_vm_free (v);
  }
  if (rc == EXIT_OK) {
    if (json || (!show && !target)) {
      json_object *out = info ? json_object_get (info) : json_object_new_object ();
      if (!info && vm)
        json_object_object_add (out, "vm", json_object_new_string (vm));
      if (target || !co->sock) {
        json_object_object_add (out, "vm_reachable", json_object_new_boolean (info != NULL));
        if (vm_error)
          json_object_object_add (out, "vm_error", json_object_new_string (vm_error));
      }
      if (sj)
        json_object_object_add (out, "store", json_object_get (sj));
      char *text = term_text (json_object_to_json_string_ext (out, JSON_C_TO_STRING_PRETTY
                                                              | JSON_C_TO_STRING_SPACED
                                                              | JSON_C_TO_STRING_NOSLASHESCAPE), true);
      printf ("%s\n", text);
      free (text);
      json_object_put (out);
    }
    else if (show && !strcmp (show, "blockdev"))
      print_blockdev (info);
    else if (show && !strcmp (show, "bitmaps"))
      print_bitmaps (info);
    else {
      if (!show) {
        if (info) {
          char *t = term_text (vm, false);
          printf ("VM %s is reachable; its disks:\n", t);
          free (t);
          print_blockdev (info);
        }
        else {
          char *msg = qb_asprintf ("VM %s is not reachable (%s): the store alone", vm,
                                   vm_error ? vm_error : "no --socket given");
          char *t = term_text (msg, false);
          printf ("%s\n", t);
          free (t);
          free (msg);
        }
      }
      print_store (sj);
    }
  }
  json_object_put (info);
  json_object_put (sj);
  free (vm_error);
  store_close (st);
  free (root);
  free (vm);
  return rc;
}

/* ---- cleanup ---- */

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
cmd_cleanup (int argc, char **argv, common_opts *co)
{
  static const struct option opts[] = {
    { "remove-bitmaps", no_argument, NULL, OPT_REMOVE_BITMAPS },
    { "remove-bitmap", no_argument, NULL, OPT_REMOVE_BITMAPS },
    COMMON_LONG_OPTS,
    { NULL, 0, NULL, 0 },
  };
  bool remove = false;
  int c;
  while ((c = getopt_long (argc, argv, ":" COMMON_SHORT_OPTS, opts, NULL)) != -1) {
    int k = common_opt (c, co, cleanup_usage);
    if (k >= 1000)
      return k - 1000;
    if (k)
      continue;
    switch (c) {
    case OPT_REMOVE_BITMAPS: remove = true; break;
    default: return getopt_error (c, argv, "cleanup");
    }
  }
  if (optind < argc)
    return usage_error ("cleanup", "unexpected argument \"%s\"", argv[optind]);
  if (!co->sock)
    return usage_error ("cleanup", "--socket is required%s", "");
  if (co->debug)
    jsonio_set_trace (2);
  int n = engine_cleanup_report (co->sock, remove, on_removed, NULL);
  if (n < 0)
    return fail ("cleanup");
  printf ("removed %d leftover(s)%s\n", n, remove ? " including bitmaps" : "");
  return EXIT_OK;
}

int
main (int argc, char **argv)
{
  static const struct option opts[] = {
    COMMON_LONG_OPTS,
    { NULL, 0, NULL, 0 },
  };
  common_opts co = { 0 };
  opterr = 0;
  int c;
  while ((c = getopt_long (argc, argv, "+:" COMMON_SHORT_OPTS, opts, NULL)) != -1) {
    int k = common_opt (c, &co, main_usage);
    if (k >= 1000)
      return k - 1000;
    if (!k)
      return getopt_error (c, argv, NULL);
  }
  if (optind >= argc)
    return usage_error (NULL, "no command given (backup, info or cleanup)%s", "");
  const char *cmd = argv[optind];
  int sub_argc = argc - optind;
  char **sub_argv = argv + optind;
  optind = 0;              /* glibc: full reinitialisation for the command's options */
  int rc;
  if (strcmp (cmd, "backup") == 0 || strcmp (cmd, "info") == 0 || strcmp (cmd, "cleanup") == 0) {
    /* --debug may come after the command: the commands set the trace once parsed. */
    if (strcmp (cmd, "backup") == 0)
      rc = cmd_backup (sub_argc, sub_argv, &co);
    else if (strcmp (cmd, "info") == 0)
      rc = cmd_info (sub_argc, sub_argv, &co);
    else
      rc = cmd_cleanup (sub_argc, sub_argv, &co);
    return rc;
  }
  return usage_error (NULL, "unknown command \"%s\" (backup, info or cleanup)", cmd);
}
