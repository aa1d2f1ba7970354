/* qmprebase — merge a backup chain, seed-compatible; inspect a store.
 *
 *   qmprebase rebase --dir DIR/<disk> [--until ID-or-TIME] [--dry-run]
 *   qmprebase merge  --dir DIR/<disk> --targetfile FILE [--until ID-or-TIME] [--force]
 *   qmprebase list   --dir STORE/<vm> | DIR/<disk> [--json]
 *   qmprebase prune  --dir STORE/<vm> --keep-last N ... [--dry-run] [--json]
 *   qmprebase remove --dir STORE/<vm> --point T [--point T2 ...] [--dry-run]
 *   qmprebase sync   --from STORE --to STORE2 [--vm NAME] [--dry-run]
 *
 * DIR/<disk> may also be a copy of a disk folder made anywhere (cp -a): the
 * chain is then proved by the layers' own records in DIR/<disk>/.chain/.
 *
 * DIR is STORE/<vm> or STORE/<vm>/<YYYY-MM>.  `rebase` folds the INC layers of
 * a chain, up to the chosen restore point K, into the chain's FULL in place
 * (qemu-img commit) and gives the result K's name, so no name ever shows data
 * of another time: restore points older than K disappear for this disk, K
 * becomes the new FULL, and the INC above K is re-pointed at it.  `merge`
 * writes restore point K as a new raw (or, for FILE ending in .qcow2, qcow2)
 * image through the store's chain reader and leaves the chain alone.
 *
 * Exit codes: 0 ok, 1 failed, 2 usage. */
#include "store/store.h"
#include "store/chain.h"
#include "tools/prune.h"
#include "tools/sync.h"
#include "tools/verify.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <stdarg.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_USAGE 2

/* What the command line asked for. */
typedef struct opts {
  const char *cmd;
  const char *dir;
  const char *until;
  const char *target;
  bool dry_run;
  bool force;
  bool json;
  store_retention keep;  /* prune */
  bool keep_given;
  char **points;         /* remove: --point, in order */
  size_t npoints;
} opts;

/* Where --dir points: the store, the VM, the disk, and the directory itself. */
typedef struct where {
  char *root;      /* the store root (real path) */
  char *vm;
  char *disk;
  char *dir;       /* real path of DIR/<disk> */
  char *rel;       /* DIR/<disk> relative to STORE/<vm>: "<disk>" or "<YYYY-MM>/<disk>" */
  bool alone;      /* a disk folder outside a store (no .points/.lock beside it) */
} where;

/* Print the help of command CMD (NULL: the program's) to stdout. */
static void
help (const char *cmd)
{
  if (cmd && strcmp (cmd, "rebase") == 0)
    printf ("usage: qmprebase rebase --dir DIR/<disk> [--until ID-or-TIME] [--dry-run]\n"
            "\n"
            "Merge the chain of DIR/<disk> up to a restore point into its FULL, in place\n"
            "(qemu-img commit); the merged FULL takes that point's name and the older\n"
            "points of this disk go.  DIR/<disk> is STORE/<vm>/<disk>,\n"
            "STORE/<vm>/<YYYY-MM>/<disk>, or a copy of such a folder made anywhere.\n"
            "\n"
            "  --dir DIR/<disk>      the disk folder\n"
            "  --until ID-or-TIME    the restore point (default: the newest)\n"
            "  --dry-run             say what would be done, change nothing\n"
            "  -h, --help            this help\n"
            "  -V, --version         the version\n");
  else if (cmd && strcmp (cmd, "merge") == 0)
    printf ("usage: qmprebase merge --dir DIR/<disk> --targetfile FILE [--until ID-or-TIME] [--force]\n"
            "\n"
            "Write a restore point as a new image FILE: raw, or qcow2 if FILE ends with\n"
            ".qcow2 (mode 0600; a missing folder of FILE is created, mode 0700).  The\n"
            "chain is left alone.\n"
            "\n"
            "  --dir DIR/<disk>      the disk folder (also a copy made anywhere)\n"
            "  --targetfile FILE     the image to write\n"
            "  --until ID-or-TIME    the restore point (default: the newest)\n"
            "  --force               replace FILE if it exists\n"
            "  -h, --help            this help\n"
            "  -V, --version         the version\n");
  else if (cmd && strcmp (cmd, "list") == 0)
    printf ("usage: qmprebase list --dir STORE/<vm> | DIR/<disk> [--json]\n"
            "\n"
            "Print the restore points of a VM folder or of one disk folder: chains,\n"
            "points, sizes and health (damaged points say why).  Needs no VM.\n"
            "\n"
            "  --dir FOLDER          a VM folder or a disk folder (also a copy)\n"
            "  --json                one JSON object instead of text\n"
            "  -h, --help            this help\n"
            "  -V, --version         the version\n");
  else if (cmd && strcmp (cmd, "prune") == 0)
    printf ("usage: qmprebase prune --dir STORE/<vm> [--keep-last N] [--keep-hourly N]\n"
            "       [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--keep-yearly N]\n"
            "       [--keep-within DURATION] [--dry-run] [--json]\n"
            "\n"
            "Remove the restore points of a VM that the retention policy does not keep,\n"
            "over every disk and chain (monthly folders included).  A point in the middle\n"
            "of a chain has its changes merged into the next point; the oldest points of\n"
            "a chain are folded into its FULL; every point kept reads exactly as before.\n"
            "The newest point is always kept.  Rules as Proxmox Backup Server's prune:\n"
            "options apply in the order last, hourly, daily, weekly, monthly, yearly;\n"
            "each keeps the newest point of each of its N most recent periods (local\n"
            "time; ISO weeks) that holds no point kept already.  --keep-within keeps\n"
            "every point within DURATION (e.g. 30d, 2w, 1y6m, 36h) of the newest one.\n"
            "\n"
            "  --dir STORE/<vm>          the VM folder\n"
            "  --keep-last N             the N newest points\n"
            "  --keep-hourly N           one point for each of the last N hours\n"
            "  --keep-daily N            one point for each of the last N days\n"
            "  --keep-weekly N           one point for each of the last N weeks\n"
            "  --keep-monthly N          one point for each of the last N months\n"
            "  --keep-yearly N           one point for each of the last N years\n"
            "  --keep-within DURATION    every point within DURATION of the newest\n"
            "  --dry-run                 say what would be removed, change nothing\n"
            "  --json                    one JSON object instead of text\n"
            "  -h, --help                this help\n"
            "  -V, --version             the version\n");
  else if (cmd && strcmp (cmd, "remove") == 0)
    printf ("usage: qmprebase remove --dir STORE/<vm> --point T [--point T2 ...] [--dry-run]\n"
            "\n"
            "Remove restore points of a VM, on all of its disks (a point is one\n"
            "transaction over all disks), as prune removes them: every other point\n"
            "reads exactly as before.  The newest point is never removed.\n"
            "\n"
            "  --dir STORE/<vm>      the VM folder\n"
            "  --point T             a restore point: its id, or its name under restore/\n"
            "  --dry-run             check and say what would be done, change nothing\n"
            "  -h, --help            this help\n"
            "  -V, --version         the version\n");
  else
    printf ("usage: qmprebase COMMAND --dir FOLDER [OPTIONS]\n"
            "\n"
            "Commands:\n"
            "  rebase  merge a disk's chain up to a restore point into its FULL, in place\n"
            "  merge   write a restore point as a new raw or qcow2 image\n"
            "  list    show the restore points, chains, sizes and health of a folder\n"
            "  prune   remove the restore points a retention policy does not keep\n"
            "  remove  remove chosen restore points\n"
            "  sync    copy a store's new restore points into another store\n"
            "  verify  re-read a VM's points and compare them with their checksums\n"
            "\n"
            "  qmprebase rebase --dir DIR/<disk> [--until ID-or-TIME] [--dry-run]\n"
            "  qmprebase merge  --dir DIR/<disk> --targetfile FILE [--until ID-or-TIME] [--force]\n"
            "  qmprebase list   --dir STORE/<vm> | DIR/<disk> [--json]\n"
            "  qmprebase prune  --dir STORE/<vm> [--keep-last N] [--keep-hourly N]\n"
            "                   [--keep-daily N] [--keep-weekly N] [--keep-monthly N]\n"
            "                   [--keep-yearly N] [--keep-within DURATION] [--dry-run] [--json]\n"
            "  qmprebase remove --dir STORE/<vm> --point T [--point T2 ...] [--dry-run]\n"
            "  qmprebase sync   --from STORE --to STORE2 [--vm NAME] [--dry-run]\n"
            "  qmprebase verify --dir STORE/<vm> [--point TIME] [--json]\n"
            "\n"
            "DIR is STORE/<vm> (or STORE/<vm>/<YYYY-MM> with monthly chains); a disk folder\n"
            "copied anywhere (cp -a STORE/<vm>/<disk> /tmp/r) works on its own.\n"
            "--until takes a restore point id (20261126T045000Z), its time\n"
            "(2026-11-26T04:50:00Z), a layer file name (INC-...), or a seed epoch; a time\n"
            "that names no point picks the newest point at or before it.\n"
            "'qmprebase COMMAND --help' describes one command.\n"
            "\n"
            "Exit codes: 0 ok, 1 failed, 2 usage error.\n");
}

/* A usage error: one line, the hint, exit code 2. */
static int
usage_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
static int
usage_error (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  fputs ("qmprebase: ", stderr);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fputs ("\nTry 'qmprebase --help'.\n", stderr);
  return EXIT_USAGE;
}

/* Print the current error as "qmprebase: PREFIX: message" and return exit code 1. */
static int
fail (const char *prefix)
{
  fprintf (stderr, "qmprebase: %s%s%s\n", prefix ? prefix : "", prefix ? ": " : "",
           qb_error_msg ());
  return 1;
}

/* Free a where. */
static void
where_free (where *w)
{
  free (w->root);
  free (w->vm);
  free (w->disk);
  free (w->dir);
  free (w->rel);
}

/* Scan the VM folder at real path REAL (store root = its parent): NULL with an error. */
static store_vm *
scan_vm_folder (const char *real, store **st)
{
  char *c = qb_strdup (real);
  char *slash = strrchr (c, '/');
  *st = NULL;
  store_vm *v = NULL;
  if (slash && qb_name_is_safe (slash + 1)) {
    *slash = '\0';
    *st = store_open (c[0] ? c : "/", false);
    if (*st)
      v = store_scan_vm (*st, slash + 1);
  } else
    qb_error_set (QB_EINVAL, "%s is not a VM folder", real);
  free (c);
  return v;
}

/* The error for --dir DIR naming a VM folder: say so and list its disks. */
static int
vm_folder_error (const char *dir, const char *real)
{
  store *st;
  store_vm *v = scan_vm_folder (real, &st);
  size_t len = 0;
  char *list = qb_strdup ("");
  for (size_t i = 0; v && i < v->ndisks; i++) {
    const store_disk *d = &v->disks[i];
    for (size_t c = 0; c < d->nchains; c++) {
      char *one = d->chains[c].month ? qb_asprintf ("%s/%s", d->chains[c].month, d->name)
        : qb_strdup (d->name);
      char *pat = qb_asprintf (" %s,", one);
      char *hay = qb_asprintf (" %s", list);
      if (!strstr (hay, pat)) {
        char *n = qb_asprintf ("%s%s%s,", list, len ? " " : "", one);
        free (list);
        list = n;
        len++;
      }
      free (hay);
      free (pat);
      free (one);
    }
  }
  if (len)
    list[strlen (list) - 1] = '\0';
  qb_error_clear ();
  qb_error_set (QB_EINVAL, "--dir %s is a VM folder, not a disk folder; its disks: %s "
                "(use --dir %s/<disk>)", dir, len ? list : "(none)", dir);
  free (list);
  store_vm_free (v);
  store_close (st);
  return -1;
}

/* Split --dir into store root, VM and disk; 0 or -1 with an error.  A disk
 * folder whose VM folder holds no records and no lock is taken alone. */
static int
where_parse (const char *dir, where *w)
{
  memset (w, 0, sizeof *w);
  char real[PATH_MAX];
  if (!realpath (dir, real))
    return qb_error_set_errno (errno, "--dir %s", dir);
  struct stat sb;
  if (stat (real, &sb) < 0 || !S_ISDIR (sb.st_mode))
    return qb_error_set (QB_EINVAL, "--dir %s is not a directory", dir);
  if (store_path_is_vm (real))
    return vm_folder_error (dir, real);
  w->dir = qb_strdup (real);
  char *slash = strrchr (real, '/');
  if (!slash || !qb_name_is_safe (slash + 1))
    return qb_error_set (QB_EINVAL, "--dir %s: expected a disk folder such as STORE/<vm>/<disk>",
                         dir);
  w->disk = qb_strdup (slash + 1);
  *slash = '\0';
  slash = strrchr (real, '/');
  char *month = NULL;
  if (slash && slash != real && store_is_month (slash + 1)) {
    char *vmdir = qb_strdup (real);
    *strrchr (vmdir, '/') = '\0';
    if (store_path_has_vm_state (vmdir)) {
      month = qb_strdup (slash + 1);
      *slash = '\0';
      slash = strrchr (real, '/');
    }
    free (vmdir);
  }
  if (!slash || slash == real || (!month && !store_path_has_vm_state (real))) {
    /* Outside a store: the folder alone, proved by its own .chain records. */
    free (month);
    w->alone = true;
    w->vm = qb_strdup (slash && slash[1] ? slash + 1 : "/");
    w->root = qb_strdup (real[0] ? real : "/");
    w->rel = qb_strdup (w->disk);
    return 0;
  }
  w->vm = qb_strdup (slash + 1);
  *slash = '\0';
  w->root = qb_strdup (real[0] ? real : "/");
  w->rel = month ? qb_asprintf ("%s/%s", month, w->disk) : qb_strdup (w->disk);
  free (month);
  if (!qb_name_is_safe (w->vm))
    return qb_error_set (QB_EINVAL, "--dir %s: VM name is not a safe name", dir);
  return 0;
}

/* True if layer L's file lies directly in directory DIR. */
static bool
layer_in_dir (const store_layer *l, const char *dir)
{
  size_t n = strlen (dir);
  return strncmp (l->path, dir, n) == 0 && l->path[n] == '/' && !strchr (l->path + n + 1, '/');
}

/* Normalise a user's point name: drop ".img", turn "2026-11-26T04:50:00Z_02"
 * into "20261126T045000Z_02".  Malloc'd. */
static char *
until_normalise (const char *s)
{
  char *c = qb_strdup (s);
  size_t n = strlen (c);
  if (n > 4 && strcmp (c + n - 4, ".img") == 0)
    c[n - 4] = '\0';
  char *z = strchr (c, 'Z');
  if (z && strchr (c, 'T') && strchr (c, 'T') < z) {
    char *d = c;
    for (char *p = c; *p; p++)
      if (p > z || (*p != '-' && *p != ':'))
        *d++ = *p;
    *d = '\0';
  }
  return c;
}

/* Pick the chain and layer index K for --until (NULL: newest) among the chains
 * of DISK lying in DIR.  0, or -1 with an error. */
static int
pick_point (const store_disk *disk, const char *dir, const char *until,
            const store_chain **chain, size_t *k)
{
  *chain = NULL;
  const store_chain *best = NULL;
  size_t bestk = 0;
  char *norm = until ? until_normalise (until) : NULL;
  int64_t t = 0;
  bool by_time = false;

  /* Exact match of id, display name or file name first. */
  for (size_t c = 0; norm && c < disk->nchains && !best; c++) {
    const store_chain *ch = &disk->chains[c];
    if (ch->n == 0 || !layer_in_dir (&ch->layers[0], dir))
      continue;
    for (size_t i = 0; i < ch->n; i++)
      if (strcmp (ch->layers[i].id, norm) == 0 || strcmp (ch->layers[i].name, until) == 0
          || strcmp (ch->layers[i].display, until) == 0) {
        best = ch;
        bestk = i;
        break;
      }
  }
  if (norm && !best) {
    int seq = 1;
    if (store_id_parse (norm, &t, &seq) < 0) {
      free (norm);
      return qb_error_set (QB_EINVAL, "--until %s is neither a restore point nor a time", until);
    }
    by_time = true;
  }
  free (norm);
  if (!best) {
    /* The newest layer (at or before T). */
    for (size_t c = 0; c < disk->nchains; c++) {
      const store_chain *ch = &disk->chains[c];
      if (ch->n == 0 || !layer_in_dir (&ch->layers[0], dir))
        continue;
      for (size_t i = 0; i < ch->n; i++) {
        const store_layer *l = &ch->layers[i];
        if (by_time && l->time_us > t)
          continue;
        if (!best || l->time_us >= best->layers[bestk].time_us) {
          best = ch;
          bestk = i;
        }
      }
    }
  }
  if (!best)
    return qb_error_set (QB_ENOENT, "no restore point %s%s in %s",
                         until ? "at or before " : "", until ? until : "", dir);
  *chain = best;
  *k = bestk;
  return 0;
}

/* Scan the store for W and pick the point; the scan is returned in *V. */
static int
locate (const where *w, const char *until, store **st, store_vm **v,
        const store_chain **chain, size_t *k)
{
  if (w->alone) {
    *st = NULL;
    *v = store_scan_folder (w->dir);
  } else {
    *st = store_open (w->root, false);
    if (!*st)
      return -1;
    *v = store_scan_vm (*st, w->vm);
  }
  if (!*v)
    return -1;
  const store_disk *d = store_vm_disk (*v, w->disk);
  if (!d)
    return qb_error_set (QB_ENOENT, "no backups of disk %s in %s", w->disk, w->dir);
  return pick_point (d, w->dir, until, chain, k);
}

/* Refuse a chain whose layers 0..K (or any layer, with ALL) are damaged. */
static int
check_damage (const store_chain *ch, size_t k, bool all)
{
  for (size_t i = 0; i < ch->n && (all || i <= k); i++)
    if (ch->layers[i].damage)
      return qb_error_set (QB_EDAMAGED, "the chain of %s is damaged (%s); refusing",
                           ch->layers[0].name, ch->layers[i].damage);
  return 0;
}

/* ---- merge: write a restore point as a new image ---- */

/* Write restore point CH[0..K] as raw into open FD, sparsely; 0 or -1. */
static int
write_raw (const store_chain *ch, size_t k, int fd, const char *path)
{
  const char **files = qb_calloc (k + 1, sizeof *files);
  for (size_t i = 0; i <= k; i++)
    files[i] = ch->layers[i].path;
  chain_image *ci = chain_open (files, k + 1);
  free (files);
  if (!ci)
    return -1;
  const size_t bufsz = 4 << 20;
  char *buf = malloc (bufsz);
  if (!buf) {
    chain_close (ci);
    return qb_error_set (QB_ENOMEM, "out of memory");
  }
  uint64_t size = chain_size (ci), off = 0;
  int ret = 0;
  while (off < size && ret == 0) {
    chain_extent ext;
    if (chain_extent_at (ci, off, size - off, &ext) < 0) {
      ret = -1;
      break;
    }
    uint64_t len = ext.length < size - off ? ext.length : size - off;
    if (len == 0) {
      ret = qb_error_set (QB_EIO, "chain reader returned an empty extent at %llu",
                          (unsigned long long) off);
      break;
    }
    if (ext.kind == CHAIN_EXT_ZERO) {
      off += len;
      continue;
    }
    for (uint64_t done = 0; done < len && ret == 0;) {
      size_t want = len - done < bufsz ? (size_t) (len - done) : bufsz;
      ssize_t r;
      if (ext.kind == CHAIN_EXT_DATA)
        r = pread (ext.fd, buf, want, (off_t) (ext.fd_offset + done));
      else
        r = chain_pread (ci, buf, want, off + done);
      if (r < 0) {
        if (ext.kind == CHAIN_EXT_DATA)
          qb_error_set_errno (errno, "read layer at %llu", (unsigned long long) (off + done));
        ret = -1;
        break;
      }
      if ((size_t) r != want) {
        ret = qb_error_set (QB_EIO, "short read of the chain at %llu",
                            (unsigned long long) (off + done));
        break;
      }
      for (size_t w = 0; w < want;) {
        ssize_t n = pwrite (fd, buf + w, want - w, (off_t) (off + done + w));
        if (n < 0) {
          if (errno == EINTR)
            continue;
          ret = qb_error_set_errno (errno, "write %s", path);
          break;
        }
        w += (size_t) n;
      }
      done += want;
    }
    off += len;
  }
  if (ret == 0 && ftruncate (fd, (off_t) size) < 0)
    ret = qb_error_set_errno (errno, "truncate %s", path);
  if (ret == 0 && fsync (fd) < 0)
    ret = qb_error_set_errno (errno, "fsync %s", path);
  free (buf);
  chain_close (ci);
  return ret;
}

/* The directory of PATH (malloc'd). */
static char *
dir_of (const char *path)
{
  char *c = qb_strdup (path);
  char *d = qb_strdup (dirname (c));
  free (c);
  return d;
}

/* mkdir -p DIR with mode 0700 for the folders it creates (as the seed's
 * merge creates the target's folder); existing ones are left alone.  0 or -1. */
static int
mkdirs_private (const char *dir)
{
  char *p = qb_strdup (dir);
  int ret = 0;
  for (char *s = p + 1;; s++) {
    if (*s != '/' && *s != '\0')
      continue;
    char save = *s;
    *s = '\0';
    if (mkdir (p, 0700) < 0 && errno != EEXIST) {
      ret = qb_error_set_errno (errno, "create the folder %s", p);
      break;
    }
    *s = save;
    if (!save)
      break;
  }
  free (p);
  struct stat sb;
  if (ret == 0 && (stat (dir, &sb) < 0 || !S_ISDIR (sb.st_mode)))
    ret = qb_error_set (QB_EINVAL, "%s is not a folder", dir);
  return ret;
}

/* A private directory beside the merge target: created by mkdtemp (0700,
 * unpredictable name), held open so the files in it are reached through the
 * directory itself even if its name is moved.  Nothing is ever written
 * through a name another user could have planted. */
typedef struct privdir {
  char *path;        /* the directory's name (for removal and messages) */
  int fd;            /* the directory, O_DIRECTORY | O_NOFOLLOW */
} privdir;

/* Make the private directory for TARGET in its folder: 0 or -1. */
static int
privdir_make (privdir *pd, const char *target)
{
  char *dir = dir_of (target);
  const char *base = strrchr (target, '/') ? strrchr (target, '/') + 1 : target;
  pd->path = qb_asprintf ("%s/.%s.merge-XXXXXX", dir, base);
  free (dir);
  pd->fd = -1;
  if (!mkdtemp (pd->path)) {
    int e = errno;
    free (pd->path);
    pd->path = NULL;
    return qb_error_set_errno (e, "create a private directory beside %s", target);
  }
  pd->fd = open (pd->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat sb;
  if (pd->fd < 0 || fstat (pd->fd, &sb) < 0 || !S_ISDIR (sb.st_mode)
      || sb.st_uid != geteuid () || (sb.st_mode & 077) != 0)
    return qb_error_set (QB_EPERM, "the private directory %s was replaced by someone else",
                         pd->path);
  return 0;
}

/* The name of file NAME inside PD for a child process: a path through our
 * open directory (/proc/self/fd), so a renamed directory does not matter.
 * The fd must then be inherited: the caller clears close-on-exec. */
static char *
privdir_child_path (const privdir *pd, const char *name)
{
  return qb_asprintf ("/proc/self/fd/%d/%s", pd->fd, name);
}

/* Remove files NAMES (NULL-terminated) from PD and PD itself; free it. */
static void
privdir_remove (privdir *pd, const char *const *names)
{
  if (pd->fd >= 0) {
    for (size_t i = 0; names[i]; i++)
      unlinkat (pd->fd, names[i], 0);
    close (pd->fd);
  }
  if (pd->path)
    rmdir (pd->path);
  free (pd->path);
  pd->path = NULL;
  pd->fd = -1;
}

/* Make file NAME in PD mode 0600 and flush it to disk: 0 or -1. */
static int
privdir_seal (const privdir *pd, const char *name)
{
  int fd = openat (pd->fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return qb_error_set_errno (errno, "open %s/%s", pd->path, name);
  int r = 0;
  if (fchmod (fd, 0600) < 0 || fsync (fd) < 0)
    r = qb_error_set_errno (errno, "chmod/fsync %s/%s", pd->path, name);
  close (fd);
  return r;
}

/* `merge`: write the point to o->target; exit code.  The image is written in
 * a private directory beside the target, then renamed over it: rename
 * replaces whatever sits at the target's name (a planted symlink too)
 * instead of following it.  The result is mode 0600. */
static int
cmd_merge (const opts *o)
{
  static const char *const names[] = { "image.raw", "image.qcow2", NULL };
  where w;
  store *st = NULL;
  store_vm *v = NULL;
  const store_chain *ch;
  size_t k;
  int rc = 1;
  char *tdir = NULL, *rawpath = NULL, *qcowpath = NULL;
  privdir pd = { NULL, -1 };
  int fd = -1;

  if (where_parse (o->dir, &w) < 0 || locate (&w, o->until, &st, &v, &ch, &k) < 0
      || check_damage (ch, k, false) < 0) {
    rc = fail ("merge");
    goto out;
  }
  struct stat sb;
  if (!o->force && lstat (o->target, &sb) == 0) {
    fprintf (stderr, "qmprebase: merge: %s exists; use --force to overwrite it\n", o->target);
    goto out;
  }
  size_t tl = strlen (o->target);
  bool qcow2 = tl > 6 && strcmp (o->target + tl - 6, ".qcow2") == 0;
  tdir = dir_of (o->target);
  if (mkdirs_private (tdir) < 0 || privdir_make (&pd, o->target) < 0) {
    rc = fail ("merge");
    goto out;
  }
  fd = openat (pd.fd, names[0], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    qb_error_set_errno (errno, "create %s/%s", pd.path, names[0]);
    rc = fail ("merge");
    goto out;
  }
  printf ("writing restore point %s of %s/%s (%s) to %s\n", ch->layers[k].display, w.vm,
          w.disk, ch->layers[k].name, o->target);
  rawpath = qb_asprintf ("%s/%s", pd.path, names[0]);
  if (write_raw (ch, k, fd, rawpath) < 0) {
    rc = fail ("merge");
    goto out;
  }
  const char *result = names[0];
  if (qcow2) {
    /* qemu-img reads and writes inside the private directory only. */
    int fl = fcntl (pd.fd, F_GETFD);
    fcntl (pd.fd, F_SETFD, fl & ~FD_CLOEXEC);
    char *in = privdir_child_path (&pd, names[0]);
    qcowpath = privdir_child_path (&pd, names[1]);
    char *argv[] = { "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", in, qcowpath, NULL };
    mode_t old = umask (077);
    int r = qb_run (argv, NULL);
    umask (old);
    fcntl (pd.fd, F_SETFD, fl | FD_CLOEXEC);
    free (in);
    if (r < 0) {
      rc = fail ("merge");
      goto out;
    }
    result = names[1];
  }
  if (privdir_seal (&pd, result) < 0) {
    rc = fail ("merge");
    goto out;
  }
  if (renameat (pd.fd, result, AT_FDCWD, o->target) < 0) {
    qb_error_set_errno (errno, "rename %s/%s to %s", pd.path, result, o->target);
    rc = fail ("merge");
    goto out;
  }
  qb_fsync_dir (tdir);
  rc = 0;
 out:
  if (fd >= 0)
    close (fd);
  privdir_remove (&pd, names);
  free (rawpath);
  free (qcowpath);
  free (tdir);
  store_vm_free (v);
  store_close (st);
  where_free (&w);
  return rc;
}

/* ---- rebase: merge into the FULL in place ---- */

/* 0 if only we (or root) can change directory DIR, where rebase renames and
 * writes files in place; else -1 with QB_EPERM saying what to do. */
static int
dir_private (const char *dir)
{
  struct stat sb;
  if (stat (dir, &sb) < 0)
    return qb_error_set_errno (errno, "%s", dir);
  if (sb.st_mode & 022)
    return qb_error_set (QB_EPERM, "%s is writable by other users, who could plant files "
                         "where rebase writes; make it private (chmod go-w) and retry", dir);
  if (sb.st_uid != geteuid () && sb.st_uid != 0)
    return qb_error_set (QB_EPERM, "%s belongs to another user (uid %u); rebase works in "
                         "place and refuses it", dir, (unsigned) sb.st_uid);
  return 0;
}

/* `rebase`: merge layers 1..K into the FULL; exit code. */
static int
cmd_rebase (const opts *o)
{
  where w;
  store *st = NULL;
  store_vm *v = NULL;
  store_lock *lk = NULL;
  const store_chain *ch;
  size_t k;
  int rc = 1;
  char *newname = NULL;
  int dfd = -1;

  if (where_parse (o->dir, &w) < 0 || dir_private (w.dir) < 0) {
    rc = fail ("rebase");
    goto out;
  }
  dfd = open (w.dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dfd < 0) {
    qb_error_set_errno (errno, "%s", w.dir);
    rc = fail ("rebase");
    goto out;
  }
  if (w.alone && !o->dry_run && flock (dfd, LOCK_EX | LOCK_NB) < 0) {
    qb_error_set (QB_EBUSY, "%s is being rebased by another process", w.dir);
    rc = fail ("rebase");
    goto out;
  }
  if (!o->dry_run && !w.alone) {
    st = store_open (w.root, false);
    if (!st || !(lk = store_lock_vm (st, w.vm, 5000))) {
      rc = fail ("rebase");
      goto out;
    }
    /* An interrupted rewrite is finished first. */
    if (store_rewrite_resume (st, w.vm) < 0) {
      rc = fail ("rebase");
      goto out;
    }
    store_close (st);
    st = NULL;
  } else if (!o->dry_run && store_folder_rewrite_resume (w.dir) < 0) {
    rc = fail ("rebase");
    goto out;
  }
  if (locate (&w, o->until, &st, &v, &ch, &k) < 0 || check_damage (ch, k, true) < 0) {
    rc = fail ("rebase");
    goto out;
  }
  const store_layer *full = &ch->layers[0], *top = &ch->layers[k];
  if (full->kind != STORE_FULL) {
    fprintf (stderr, "qmprebase: rebase: %s is a %s, not a chain; nothing to merge\n",
             full->name, full->kind == STORE_COPY ? "copy" : "layer without FULL");
    goto out;
  }
  if (k == 0) {
    printf ("%s: restore point %s is the FULL itself; nothing to merge\n", w.disk,
            full->display);
    rc = 0;
    goto out;
  }
  /* The merged FULL takes the name of point K ("INC-x" -> "FULL-x"). */
  newname = store_fold_name (top);

  printf ("%s merge %zu INC%s into %s (restore point %s):\n", o->dry_run ? "would" : "will",
          k, k == 1 ? "" : "s", full->name, top->display);
  for (size_t i = 1; i <= k; i++)
    printf ("  commit %s\n", ch->layers[i].name);
  printf ("  %s becomes %s; restore points", full->name, newname);
  for (size_t i = 0; i < k; i++)
    printf (" %s", ch->layers[i].display);
  printf (" of %s go\n", w.disk);
  if (k + 1 < ch->n)
    printf ("  %s is rebased onto %s\n", ch->layers[k + 1].name, newname);
  if (o->dry_run) {
    rc = 0;
    goto out;
  }
  fflush (stdout);

  /* One journaled store operation: a crash at any step is finished by the
     next backup, mount or qmprebase run. */
  {
    char **ids = qb_calloc (k, sizeof *ids);
    for (size_t i = 0; i < k; i++)
      ids[i] = ch->layers[i].id;
    store_remove_opts ro = { .why = "rebase" };
    int r = w.alone ? store_folder_points_remove (w.dir, ids, k, &ro, NULL)
      : store_points_remove (st, w.vm, ids, k, w.disk, &ro, NULL);
    free (ids);
    if (r < 0) {
      rc = fail ("rebase");
      goto out;
    }
  }
  printf ("%s: merged %zu INC%s; restore point %s is now %s\n", w.disk, k, k == 1 ? "" : "s",
          top->display, newname);
  rc = 0;
 out:
  free (newname);
  store_vm_free (v);
  store_unlock (lk);
  store_close (st);
  where_free (&w);
  if (dfd >= 0)
    close (dfd);
  return rc;
}

/* ---- list: the points of a folder, without a VM ---- */

static const char *
kind_word (store_kind k)
{
  return k == STORE_FULL ? "full" : k == STORE_INC ? "inc" : "copy";
}

/* Print scan V (only the disk DISK's folder DIR when given) as text or JSON. */
static void
list_print (const store_vm *v, const char *disk, const char *dir, bool json)
{
  json_object *jv = json_object_new_object (), *jd = json_object_new_array ();
  json_object_object_add (jv, "vm", json_object_new_string (v->name));
  size_t nlayers = 0, ndamaged = 0, npoints = 0;
  const char **ids = NULL;
  for (size_t i = 0; i < v->ndisks; i++) {
    const store_disk *d = &v->disks[i];
    if (disk && strcmp (d->name, disk) != 0)
      continue;
    json_object *od = json_object_new_object (), *jc = json_object_new_array ();
    json_object_object_add (od, "name", json_object_new_string (d->name));
    if (!json)
      printf ("disk %s\n", d->name);
    for (size_t c = 0; c < d->nchains; c++) {
      const store_chain *ch = &d->chains[c];
      if (ch->n == 0 || (dir && !layer_in_dir (&ch->layers[0], dir)))
        continue;
      uint64_t bytes = 0;
      bool bad = false;
      json_object *oc = json_object_new_object (), *jp = json_object_new_array ();
      for (size_t k = 0; k < ch->n; k++) {
        const store_layer *l = &ch->layers[k];
        bytes += l->file_size;
        bad |= l->damage != NULL;
        nlayers++;
        ndamaged += l->damage != NULL;
        bool seen = false;
        for (size_t x = 0; x < npoints && !seen; x++)
          seen = strcmp (ids[x], l->id) == 0;
        if (!seen) {
          ids = qb_realloc (ids, (npoints + 1) * sizeof *ids);
          ids[npoints++] = l->id;
        }
        json_object *op = json_object_new_object ();
        json_object_object_add (op, "id", json_object_new_string (l->id));
        json_object_object_add (op, "time", json_object_new_string (l->display));
        json_object_object_add (op, "kind", json_object_new_string (kind_word (l->kind)));
        json_object_object_add (op, "file", json_object_new_string (l->name));
        json_object_object_add (op, "bytes", json_object_new_int64 ((int64_t) l->file_size));
        json_object_object_add (op, "virtual_size",
                                json_object_new_int64 ((int64_t) l->virtual_size));
        json_object_object_add (op, "quiesced", json_object_new_boolean (l->quiesced));
        json_object_object_add (op, "health", json_object_new_string (l->damage ? "damaged" : "ok"));
        json_object_object_add (op, "damage", l->damage ? json_object_new_string (l->damage) : NULL);
        json_object_array_add (jp, op);
      }
      json_object_object_add (oc, "chain", ch->chain_id ? json_object_new_string (ch->chain_id)
                              : NULL);
      json_object_object_add (oc, "month", ch->month ? json_object_new_string (ch->month) : NULL);
      json_object_object_add (oc, "bytes", json_object_new_int64 ((int64_t) bytes));
      json_object_object_add (oc, "health", json_object_new_string (bad ? "damaged" : "ok"));
      json_object_object_add (oc, "points", jp);
      json_object_array_add (jc, oc);
      if (json)
        continue;
      printf ("  chain %s%s%s: %zu point%s, %.1f MiB, %s\n",
              ch->chain_id ? ch->chain_id : "(seed)", ch->month ? " in " : "",
              ch->month ? ch->month : "", ch->n, ch->n == 1 ? "" : "s",
              (double) bytes / (1 << 20), bad ? "DAMAGED" : "ok");
      for (size_t k = 0; k < ch->n; k++) {
        const store_layer *l = &ch->layers[k];
        printf ("    %-26s %-4s %-34s %10.1f MiB  size %llu  %s%s\n", l->display,
                kind_word (l->kind), l->name, (double) l->file_size / (1 << 20),
                (unsigned long long) l->virtual_size, l->damage ? "damaged: " : "ok",
                l->damage ? l->damage : "");
      }
    }
    json_object_object_add (od, "chains", jc);
    json_object_array_add (jd, od);
  }
  json_object_object_add (jv, "disks", jd);
  json_object *js = json_object_new_array ();
  for (size_t i = 0; i < v->nskipped; i++) {
    json_object_array_add (js, json_object_new_string (v->skipped[i]));
    if (!json)
      printf ("left out: %s\n", v->skipped[i]);
  }
  json_object_object_add (jv, "skipped", js);
  json_object_object_add (jv, "points", json_object_new_int64 ((int64_t) npoints));
  json_object_object_add (jv, "layers", json_object_new_int64 ((int64_t) nlayers));
  json_object_object_add (jv, "damaged", json_object_new_int64 ((int64_t) ndamaged));
  free (ids);
  if (json)
    printf ("%s\n", json_object_to_json_string_ext (jv, JSON_C_TO_STRING_PRETTY
                                                    | JSON_C_TO_STRING_SPACED
                                                    | JSON_C_TO_STRING_NOSLASHESCAPE));
  else
    printf ("%zu restore point%s, %zu layer%s, %zu damaged\n", npoints, npoints == 1 ? "" : "s",
            nlayers, nlayers == 1 ? "" : "s", ndamaged);
  json_object_put (jv);
}

/* `list`: print the points of a VM folder or a disk folder; exit code. */
static int
cmd_list (const opts *o)
{
  char real[PATH_MAX];
  struct stat sb;
  if (!realpath (o->dir, real)) {
    qb_error_set_errno (errno, "--dir %s", o->dir);
    return fail ("list");
  }
  if (stat (real, &sb) < 0 || !S_ISDIR (sb.st_mode)) {
    qb_error_set (QB_EINVAL, "--dir %s is not a directory", o->dir);
    return fail ("list");
  }
  store *st = NULL;
  store_vm *v = NULL;
  where w;
  memset (&w, 0, sizeof w);
  int rc = 1;
  if (store_path_is_vm (real)) {
    v = scan_vm_folder (real, &st);
    if (!v) {
      rc = fail ("list");
      goto out;
    }
    list_print (v, NULL, NULL, o->json);
  } else {
    if (where_parse (o->dir, &w) < 0) {
      rc = fail ("list");
      goto out;
    }
    if (w.alone)
      v = store_scan_folder (w.dir);
    else if ((st = store_open (w.root, false)))
      v = store_scan_vm (st, w.vm);
    if (!v) {
      rc = fail ("list");
      goto out;
    }
    list_print (v, w.disk, w.dir, o->json);
  }
  rc = 0;
 out:
  store_vm_free (v);
  store_close (st);
  where_free (&w);
  return rc;
}

/* True for a command this program has. */
static bool
known_command (const char *c)
{
  return strcmp (c, "rebase") == 0 || strcmp (c, "merge") == 0 || strcmp (c, "list") == 0
    || strcmp (c, "prune") == 0 || strcmp (c, "remove") == 0 || strcmp (c, "sync") == 0
    || strcmp (c, "verify") == 0;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "dir", required_argument, NULL, 'd' },
    { "until", required_argument, NULL, 'u' },
    { "targetfile", required_argument, NULL, 't' },
    { "dry-run", no_argument, NULL, 'n' },
    { "force", no_argument, NULL, 'f' },
    { "json", no_argument, NULL, 'j' },
    { "keep-last", required_argument, NULL, 'L' },
    { "keep-hourly", required_argument, NULL, 'H' },
    { "keep-daily", required_argument, NULL, 'D' },
    { "keep-weekly", required_argument, NULL, 'W' },
    { "keep-monthly", required_argument, NULL, 'M' },
    { "keep-yearly", required_argument, NULL, 'Y' },
    { "keep-within", required_argument, NULL, 'I' },
    { "point", required_argument, NULL, 'p' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  if (argc > 1 && strcmp (argv[1], "sync") == 0)
    return sync_main (argc - 1, argv + 1);
  if (argc > 1 && strcmp (argv[1], "verify") == 0)
    return verify_main (argc - 1, argv + 1);
  opts o = { 0 };
  bool want_help = false, want_version = false;
  int c;
  opterr = 0;
  while ((c = getopt_long (argc, argv, ":hV", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': o.dir = optarg; break;
    case 'u': o.until = optarg; break;
    case 't': o.target = optarg; break;
    case 'n': o.dry_run = true; break;
    case 'f': o.force = true; break;
    case 'j': o.json = true; break;
    case 'L': case 'H': case 'D': case 'W': case 'M': case 'Y': {
      char *end;
      errno = 0;
      unsigned long v = strtoul (optarg, &end, 10);
      if (errno || *end || !*optarg || optarg[0] == '-' || v == 0 || v > 4294967295UL)
        return usage_error ("%s needs a whole number from 1 up, not \"%s\"",
                            argv[optind - 1], optarg);
      unsigned *f = c == 'L' ? &o.keep.last : c == 'H' ? &o.keep.hourly : c == 'D'
        ? &o.keep.daily : c == 'W' ? &o.keep.weekly : c == 'M' ? &o.keep.monthly : &o.keep.yearly;
      *f = (unsigned) v;
      o.keep_given = true;
      break;
    }
    case 'p':
      o.points = qb_realloc (o.points, (o.npoints + 1) * sizeof *o.points);
      o.points[o.npoints++] = optarg;
      break;
    case 'I':
      if (store_retention_parse_duration (optarg, &o.keep.within_us) < 0)
        return usage_error ("--keep-within %s: %s", optarg, qb_error_msg ());
      o.keep_given = true;
      break;
    case 'h': want_help = true; break;
    case 'V': want_version = true; break;
    case ':':
      return usage_error ("option %s needs a value", argv[optind - 1]);
    default:
      if (optopt)
        return usage_error ("unknown option -%c", optopt);
      return usage_error ("unknown option %s", argv[optind - 1]);
    }
  }
  if (optind < argc)
    o.cmd = argv[optind];
  if (o.cmd && !known_command (o.cmd))
    return usage_error ("unknown command %s (commands: rebase, merge, list, prune, remove, sync, verify)", o.cmd);
  if (want_help) {
    help (o.cmd);
    return 0;
  }
  if (want_version) {
    printf ("qmprebase %s\n", QB_VERSION);
    return 0;
  }
  if (!o.cmd)
    return usage_error ("no command given (rebase, merge, list, prune, remove or sync)");
  if (optind + 1 < argc)
    return usage_error ("unexpected argument %s", argv[optind + 1]);
  if (!o.dir)
    return usage_error ("%s needs --dir", o.cmd);
  if (o.keep_given && strcmp (o.cmd, "prune") != 0)
    return usage_error ("--keep-... options belong to prune");
  if (o.npoints && strcmp (o.cmd, "remove") != 0)
    return usage_error ("--point belongs to remove");
  if (strcmp (o.cmd, "remove") == 0) {
    if (o.until || o.target || o.force || o.json)
      return usage_error ("remove takes only --dir, --point and --dry-run");
    if (!o.npoints)
      return usage_error ("remove needs --point T (one or more)");
    int r = prune_remove_run (o.dir, o.points, o.npoints, o.dry_run);
    free (o.points);
    return r;
  }
  if (strcmp (o.cmd, "prune") == 0) {
    if (o.until || o.target || o.force)
      return usage_error ("prune takes no %s", o.until ? "--until" : o.target ? "--targetfile"
                          : "--force");
    if (!o.keep_given)
      return usage_error ("prune needs at least one --keep-... option (it never removes "
                          "everything by default)");
    return prune_run (o.dir, &o.keep, o.dry_run, o.json);
  }
  if (strcmp (o.cmd, "rebase") == 0) {
    if (o.target || o.force || o.json)
      return usage_error ("rebase takes no %s", o.target ? "--targetfile" : o.force ? "--force"
                          : "--json");
    return cmd_rebase (&o);
  }
  if (strcmp (o.cmd, "merge") == 0) {
    if (!o.target)
      return usage_error ("merge needs --targetfile FILE");
    if (o.dry_run || o.json)
      return usage_error ("merge takes no %s", o.dry_run ? "--dry-run" : "--json");
    return cmd_merge (&o);
  }
  if (o.until || o.target || o.force || o.dry_run)
    return usage_error ("list takes only --dir and --json");
  return cmd_list (&o);
}
