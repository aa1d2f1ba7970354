/* qmpbackupfs — the VM registry: which VMs the mount shows, where their
 * sockets are, what they are doing, and a cached scan of their store. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "qmp/jsonio.h"
#include "common/util.h"
#include "fs/fs.h"

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cond = PTHREAD_COND_INITIALIZER;
static fs_vm **reg;
static size_t nreg;
static struct timespec sock_mtime, store_mtime;
static uint64_t last_refresh_ms;
static bool refreshed_once;
static int sockets_dir_state = -1;   /* 1 there, 0 missing, -1 unknown (reg_lock) */

/* Find a VM by name in the registry (caller holds reg_lock). */
static fs_vm *
reg_find_locked (const char *name)
{
  for (size_t i = 0; i < nreg; i++)
    if (strcmp (reg[i]->name, name) == 0)
      return reg[i];
  return NULL;
}

/* Find or create the VM NAME (caller holds reg_lock). */
static fs_vm *
reg_get_locked (const char *name)
{
  fs_vm *vm = reg_find_locked (name);
  if (vm)
    return vm;
  vm = qb_calloc (1, sizeof *vm);
  vm->name = qb_strdup (name);
  pthread_mutex_init (&vm->lock, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);   /* status.c waits with it */
  pthread_cond_init (&vm->info_cond, &ca);
  pthread_condattr_destroy (&ca);
  vm->state = VM_IDLE;
  reg = qb_realloc (reg, (nreg + 1) * sizeof *reg);
  reg[nreg++] = vm;
  return vm;
}

/* Set up the registry (after fs_cfg is filled). */
void
vms_init (void)
{
  vms_refresh ();
}

/* If S (in place) starts "tcp:HOST:PORT" (HOST may be "[IPV6]"), end it
 * there and point *REST past a following ':' (the QGA part, "" when absent);
 * *REST stays NULL for a socket path.  -1 (QB_EINVAL) on a bad address. */
static int
tcp_split (char *s, char **rest)
{
  *rest = NULL;
  if (strncmp (s, "tcp:", 4) != 0)
    return 0;
  char *p = s + 4;
  if (*p == '[') {
    p = strchr (p, ']');
    if (!p)
      return qb_error_set (QB_EINVAL, "expected tcp:[IPV6]:PORT");
  }
  p = strchr (p, ':');                           /* before the port */
  if (!p)
    return qb_error_set (QB_EINVAL, "expected tcp:HOST:PORT");
  char *end = strchr (p + 1, ':');               /* before the QGA part */
  if (end)
    *end = '\0';
  char *host, *port;
  if (jsonio_parse_tcp (s, &host, &port) < 0)
    return -1;
  free (host);
  free (port);
  *rest = end ? end + 1 : p + strlen (p);
  return 0;
}

/* Register -o vm=NAME:QMP[:QGA] (QMP a socket path or tcp:HOST:PORT); -1 on a bad spec. */
int
vms_add_explicit (const char *spec)
{
  char *copy = qb_strdup (spec);
  char *name = copy, *qmp = strchr (copy, ':'), *qga = NULL;
  if (!qmp || qmp == copy || qmp[1] == '\0') {
    free (copy);
    return qb_error_set (QB_EINVAL, "vm=%s: expected NAME:QMP_SOCKET[:QGA_SOCKET]", spec);
  }
  *qmp++ = '\0';
  if (tcp_split (qmp, &qga) < 0) {
    qb_error_prefix ("vm=%s", spec);
    free (copy);
    return -1;
  }
  if (!qga) {
    qga = strchr (qmp, ':');
    if (qga)
      *qga++ = '\0';
  }
  if (qga && strncmp (qga, "tcp:", 4) == 0) {
    /* The thaw guard (engine/thawguard.h) reaches the agent by unix socket only. */
    qb_error_set (QB_EINVAL, "vm=%s: the guest agent must be a unix socket (QMP may be "
                  "tcp:HOST:PORT)", spec);
    free (copy);
    return -1;
  }
  char *safe = qb_name_sanitize (name);
  if (!safe) {
    free (copy);
    return -1;
  }
  /* absolute: the daemon changes to / when it goes to the background */
  char cwd[4096];
  if (!getcwd (cwd, sizeof cwd))
    strcpy (cwd, "/");
  pthread_mutex_lock (&reg_lock);
  fs_vm *vm = reg_find_locked (safe);
  if (vm && vm->explicit_vm) {
    pthread_mutex_unlock (&reg_lock);
    qb_error_set (QB_EINVAL, "vm=%s: the VM name %s is already given by another -o vm= "
                  "(names are made safe for paths: other bytes become '_'); use distinct names",
                  spec, safe);
    free (safe);
    free (copy);
    return -1;
  }
  vm = reg_get_locked (safe);
  pthread_mutex_lock (&vm->lock);
  vm->explicit_vm = true;
  free (vm->qmp_path);
  vm->qmp_path = qmp[0] == '/' || strncmp (qmp, "tcp:", 4) == 0 ? qb_strdup (qmp)
    : qb_asprintf ("%s/%s", cwd, qmp);
  free (vm->qga_path);
  vm->qga_path = !qga || !*qga ? NULL
    : qga[0] == '/' ? qb_strdup (qga) : qb_asprintf ("%s/%s", cwd, qga);
  pthread_mutex_unlock (&vm->lock);
  pthread_mutex_unlock (&reg_lock);
  free (safe);
  free (copy);
  return 0;
}

/* True if PATH is a unix socket. */
static bool
is_socket (const char *path)
{
  struct stat sb;
  return stat (path, &sb) == 0 && S_ISSOCK (sb.st_mode);
}

/* A socket of the sockets dir the last scan did not make a VM, and why. */
typedef struct refused_sock {
  char *socket, *name, *reason;
} refused_sock;

static refused_sock *refused;   /* guarded by reg_lock */
static size_t nrefused;

/* One NAME.qmp found in the sockets dir. */
typedef struct sock_entry {
  char *base;                   /* NAME as found */
  char *safe;                   /* NAME made safe: the VM's name */
  char *qmp;
  bool refuse;
  char *reason;
} sock_entry;

/* True if SOCKET was refused at the previous scan (caller holds reg_lock). */
static bool
was_refused_locked (const char *socket)
{
  for (size_t i = 0; i < nrefused; i++)
    if (strcmp (refused[i].socket, socket) == 0)
      return true;
  return false;
}

/* Decide which of the N entries E become VMs: names that collide after
 * sanitising are never merged into one VM.  When one of them is already
 * safe as it is, it keeps the name and the others are refused; otherwise all
 * are.  A name given by -o vm= is refused for sockets too (caller holds
 * reg_lock). */
static void
sockets_judge_locked (sock_entry *e, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    fs_vm *vm = reg_find_locked (e[i].safe);
    if (vm && vm->explicit_vm) {
      e[i].refuse = true;
      e[i].reason = qb_asprintf ("VM name %s is already given by -o vm=%s:...", e[i].safe, e[i].safe);
      continue;
    }
    size_t same = 0, exact = n;
    for (size_t k = 0; k < n; k++)
      if (strcmp (e[k].safe, e[i].safe) == 0) {
        same++;
        if (strcmp (e[k].base, e[k].safe) == 0)
          exact = k;
      }
    if (same == 1 || exact == i)
      continue;
    e[i].refuse = true;
    if (exact < n)
      e[i].reason = qb_asprintf ("the name becomes %s when made safe for paths, which is the "
                                 "VM of %s: rename the socket", e[i].safe, e[exact].qmp);
    else
      e[i].reason = qb_asprintf ("%zu sockets' names become %s when made safe for paths: "
                                 "none is used; rename them", same, e[i].safe);
  }
}

/* The sockets dir of -o sockets=DIR as an absolute path.  When DIR exists
 * it is resolved (symlinks followed once, here) and must be a directory.
 * When it does not exist yet (/run/qemu before the first VM starts) the path
 * as given, made absolute, is returned and the mount waits for it: every
 * refresh of the VM list stats it (vms_refresh), so the directory and its
 * sockets show at the first access after it appears.  NULL with an error when
 * DIR exists but is not a directory or cannot be looked at. */
char *
vms_sockets_dir_resolve (const char *dir)
{
  char *r = realpath (dir, NULL);
  if (r) {
    struct stat sb;
    if (stat (r, &sb) == -1) {
      qb_error_set_errno (errno, "sockets=%s", dir);
      free (r);
      return NULL;
    }
    if (!S_ISDIR (sb.st_mode)) {
      qb_error_set (QB_EINVAL, "sockets=%s: not a directory (give the directory that "
                    "holds the VMs' NAME.qmp sockets)", dir);
      free (r);
      return NULL;
    }
    sockets_dir_state = 1;
    return r;
  }
  if (errno != ENOENT) {
    qb_error_set_errno (errno, "sockets=%s", dir);
    return NULL;
  }
  if (dir[0] == '/')
    r = qb_strdup (dir);
  else {
    char cwd[4096];
    if (!getcwd (cwd, sizeof cwd)) {
      qb_error_set_errno (errno, "sockets=%s: a relative path needs the current directory", dir);
      return NULL;
    }
    r = qb_asprintf ("%s/%s", cwd, dir);
  }
  sockets_dir_state = 0;
  fs_log ("sockets dir %s does not exist yet: its VMs show once it appears", r);
  return r;
}

/* Note (and log) whether the sockets dir could be opened at this scan: D is
 * the result of opendir, ERR its errno (caller holds reg_lock). */
static void
sockets_dir_note_locked (const DIR *d, int err)
{
  int now = d ? 1 : err == ENOENT || err == ENOTDIR ? 0 : sockets_dir_state;
  if (now == 1 && sockets_dir_state == 0)
    fs_log ("sockets dir %s appeared: watching it", fs_cfg.sockets_dir);
  else if (now == 0 && sockets_dir_state == 1)
    fs_log ("sockets dir %s is gone: its VMs show again once it is back", fs_cfg.sockets_dir);
  sockets_dir_state = now;
}

/* Rescan the sockets dir (caller holds reg_lock). */
static void
scan_sockets_locked (void)
{
  for (size_t i = 0; i < nreg; i++)
    reg[i]->in_sockets = false;
  sock_entry *e = NULL;
  size_t n = 0;
  DIR *d = fs_cfg.sockets_dir ? opendir (fs_cfg.sockets_dir) : NULL;
  if (fs_cfg.sockets_dir)
    sockets_dir_note_locked (d, errno);
  struct dirent *de;
  while (d && (de = readdir (d)) != NULL) {
    size_t len = strlen (de->d_name);
    if (len <= 4 || strcmp (de->d_name + len - 4, ".qmp") != 0 || de->d_name[0] == '.')
      continue;
    char *qmp = qb_asprintf ("%s/%s", fs_cfg.sockets_dir, de->d_name);
    char *base = qb_strdup (de->d_name);
    base[len - 4] = '\0';
    char *safe = qb_name_sanitize (base);
    if (!safe || !is_socket (qmp)) {
      qb_error_clear ();
      free (safe);
      free (base);
      free (qmp);
      continue;
    }
    e = qb_realloc (e, (n + 1) * sizeof *e);
    e[n++] = (sock_entry) { .base = base, .safe = safe, .qmp = qmp };
  }
  if (d)
    closedir (d);
  sockets_judge_locked (e, n);

  refused_sock *nr = NULL;
  size_t nnr = 0;
  for (size_t i = 0; i < n; i++) {
    if (e[i].refuse) {
      if (!was_refused_locked (e[i].qmp))
        fs_log ("socket %s refused: %s", e[i].qmp, e[i].reason);
      nr = qb_realloc (nr, (nnr + 1) * sizeof *nr);
      nr[nnr++] = (refused_sock) { .socket = e[i].qmp, .name = e[i].safe, .reason = e[i].reason };
      free (e[i].base);
      continue;
    }
    char *qga = qb_asprintf ("%s/%s.qga", fs_cfg.sockets_dir, e[i].base);
    fs_vm *vm = reg_get_locked (e[i].safe);
    pthread_mutex_lock (&vm->lock);
    vm->in_sockets = true;
    free (vm->qmp_path);
    vm->qmp_path = e[i].qmp;
    free (vm->qga_path);
    vm->qga_path = NULL;
    if (is_socket (qga)) {
      vm->qga_path = qga;
      qga = NULL;
    }
    pthread_mutex_unlock (&vm->lock);
    free (qga);
    free (e[i].base);
    free (e[i].safe);
  }
  free (e);
  for (size_t i = 0; i < nrefused; i++) {
    free (refused[i].socket);
    free (refused[i].name);
    free (refused[i].reason);
  }
  free (refused);
  refused = nr;
  nrefused = nnr;

  for (size_t i = 0; i < nreg; i++) {
    fs_vm *vm = reg[i];
    pthread_mutex_lock (&vm->lock);
    if (!vm->explicit_vm && !vm->in_sockets) {
      free (vm->qmp_path);
      free (vm->qga_path);
      vm->qmp_path = vm->qga_path = NULL;
    }
    pthread_mutex_unlock (&vm->lock);
  }
}

/* Refused sockets of the last scan as JSON (new reference). */
json_object *
vms_refused_json (void)
{
  vms_refresh ();
  json_object *arr = json_object_new_array ();
  pthread_mutex_lock (&reg_lock);
  for (size_t i = 0; i < nrefused; i++) {
    json_object *j = json_object_new_object ();
    json_object_object_add (j, "socket", json_object_new_string (refused[i].socket));
    json_object_object_add (j, "name", json_object_new_string (refused[i].name));
    json_object_object_add (j, "reason", json_object_new_string (refused[i].reason));
    json_object_array_add (arr, j);
  }
  pthread_mutex_unlock (&reg_lock);
  return arr;
}

/* Rescan the store's VM list (caller holds reg_lock). */
static void
scan_store_locked (void)
{
  char **names = NULL;
  size_t n = 0;
  for (size_t i = 0; i < nreg; i++)
    reg[i]->in_store = false;
  if (store_list_vms (fs_cfg.st, &names, &n) == -1) {
    qb_error_clear ();
    return;
  }
  for (size_t i = 0; i < n; i++)
    reg_get_locked (names[i])->in_store = true;   /* linked folders are not listed */
  store_names_free (names, n);
}

/* True if the mtime of PATH differs from *TS (and updates *TS). */
static bool
mtime_changed (const char *path, struct timespec *ts)
{
  struct stat sb;
  if (stat (path, &sb) == -1)
    memset (&sb, 0, sizeof sb);
  if (sb.st_mtim.tv_sec == ts->tv_sec && sb.st_mtim.tv_nsec == ts->tv_nsec)
    return false;
  *ts = sb.st_mtim;
  return true;
}

/* Refresh the list from the sockets dir and the store when they changed. */
void
vms_refresh (void)
{
  pthread_mutex_lock (&reg_lock);
  uint64_t now = qb_mono_ms ();
  bool force = !refreshed_once || now - last_refresh_ms > 2000;
  bool s = fs_cfg.sockets_dir && mtime_changed (fs_cfg.sockets_dir, &sock_mtime);
  bool t = mtime_changed (fs_cfg.store_root, &store_mtime);
  if (force || s)
    scan_sockets_locked ();
  if (force || t)
    scan_store_locked ();
  if (force)
    last_refresh_ms = now;
  refreshed_once = true;
  pthread_mutex_unlock (&reg_lock);
}

/* True if VM is shown (caller holds reg_lock). */
static bool
vm_visible (fs_vm *vm)
{
  return vm->explicit_vm || vm->in_sockets || vm->in_store;
}

/* Compare two strings through pointers (qsort). */
static int
cmp_str (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

/* The current VM names (sorted, malloc'd array of malloc'd strings). */
size_t
vms_list (char ***names)
{
  vms_refresh ();
  pthread_mutex_lock (&reg_lock);
  char **out = qb_calloc (nreg + 1, sizeof *out);
  size_t n = 0;
  for (size_t i = 0; i < nreg; i++)
    if (vm_visible (reg[i]))
      out[n++] = qb_strdup (reg[i]->name);
  pthread_mutex_unlock (&reg_lock);
  qsort (out, n, sizeof *out, cmp_str);
  *names = out;
  return n;
}

/* The VM called NAME if it is currently visible, else NULL. */
fs_vm *
vms_find (const char *name)
{
  vms_refresh ();
  pthread_mutex_lock (&reg_lock);
  fs_vm *vm = reg_find_locked (name);
  if (vm && !vm_visible (vm))
    vm = NULL;
  pthread_mutex_unlock (&reg_lock);
  return vm;
}

/* All VMs ever registered (visible or not); returns a malloc'd array. */
size_t
vms_all (fs_vm ***vms)
{
  pthread_mutex_lock (&reg_lock);
  fs_vm **out = qb_calloc (nreg + 1, sizeof *out);
  memcpy (out, reg, nreg * sizeof *out);
  size_t n = nreg;
  pthread_mutex_unlock (&reg_lock);
  *vms = out;
  return n;
}

/* Drop a reference from vm_scan_get. */
void
vm_scan_put (vm_scan *s)
{
  if (!s)
    return;
  if (__atomic_sub_fetch (&s->refs, 1, __ATOMIC_ACQ_REL) == 0) {
    store_vm_free (s->v);
    free (s);
  }
}

/* How long a store scan is trusted without looking at all the directories
 * again, as long as store_vm_changed did not change (a walk over thousands of images
 * must not re-stat the store each time).  Points committed by qmpbackup or
 * the mount show at once; files dropped in by other tools within this time. */
#define SCAN_RECHECK_MS 500

/* Current store scan of VM, rescanned when its directories changed. */
vm_scan *
vm_scan_get (fs_vm *vm)
{
  uint64_t now = qb_mono_ms ();
  struct timespec pm = store_vm_changed (fs_cfg.st, vm->name);
  pthread_mutex_lock (&vm->lock);
  if (vm->scan && vm->scan_stamp && now - vm->scan_checked_ms < SCAN_RECHECK_MS
      && pm.tv_sec == vm->scan_points_mtime.tv_sec && pm.tv_nsec == vm->scan_points_mtime.tv_nsec) {
    vm_scan *s = vm->scan;
    __atomic_add_fetch (&s->refs, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_unlock (&vm->lock);
    return s;
  }
  pthread_mutex_unlock (&vm->lock);
  char *stamp = store_vm_stamp (fs_cfg.st, vm->name);
  pthread_mutex_lock (&vm->lock);
  vm->scan_checked_ms = now;
  vm->scan_points_mtime = pm;
  if (!vm->scan || !vm->scan_stamp || strcmp (stamp, vm->scan_stamp) != 0) {
    pthread_mutex_unlock (&vm->lock);
    vm_scan *ns = qb_calloc (1, sizeof *ns);
    ns->refs = 1;
    ns->v = store_scan_vm (fs_cfg.st, vm->name);   /* NULL when nothing stored */
    /* Descriptors or memory ran out: nothing may be concluded from this scan
     * (nothing is damaged, nothing was removed): keep the last one and scan
     * again next time. */
    bool transient = !ns->v && qb_err_is_transient (qb_error_code ());
    if (transient)
      fs_log ("%s: store scan failed for now, keeping the last one: %s", vm->name,
              qb_error_msg ());
    else if (!ns->v && qb_error_code () == QB_EPERM)
      /* a symlinked VM folder may point anywhere: never read through it */
      fs_log ("%s: %s (restore points come only from inside the store)", vm->name,
              qb_error_msg ());
    pthread_mutex_lock (&vm->lock);
    free (vm->scan_stamp);
    vm->scan_stamp = NULL;
    if (transient && vm->scan)
      free (ns);
    else {
      vm_scan *old = vm->scan;
      vm->scan = ns;
      if (!transient) {
        vm->scan_stamp = stamp;
        stamp = NULL;
      }
      vm_scan_put (old);
    }
  }
  vm_scan *s = vm->scan;
  __atomic_add_fetch (&s->refs, 1, __ATOMIC_ACQ_REL);
  pthread_mutex_unlock (&vm->lock);
  free (stamp);
  return s;
}

/* Force the next vm_scan_get to rescan. */
void
vm_scan_invalidate (fs_vm *vm)
{
  pthread_mutex_lock (&vm->lock);
  free (vm->scan_stamp);
  vm->scan_stamp = NULL;
  pthread_mutex_unlock (&vm->lock);
}

/* Set every VM's cancel flag (shutdown). */
void
vms_cancel_all (void)
{
  pthread_mutex_lock (&reg_lock);
  for (size_t i = 0; i < nreg; i++)
    atomic_store (&reg[i]->cancel, 1);
  pthread_mutex_unlock (&reg_lock);
}

/* Wake vms_wait_idle (called when a backup ends). */
void
vms_notify_idle (void)
{
  pthread_mutex_lock (&reg_lock);
  pthread_cond_broadcast (&idle_cond);
  pthread_mutex_unlock (&reg_lock);
}

/* Wait until no VM has a backup running. */
void
vms_wait_idle (void)
{
  pthread_mutex_lock (&reg_lock);
  for (;;) {
    bool busy = false;
    for (size_t i = 0; i < nreg; i++) {
      pthread_mutex_lock (&reg[i]->lock);
      busy |= reg[i]->state == VM_RUNNING;
      pthread_mutex_unlock (&reg[i]->lock);
    }
    if (!busy)
      break;
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_sec += 1;
    pthread_cond_timedwait (&idle_cond, &reg_lock, &ts);
  }
  pthread_mutex_unlock (&reg_lock);
}
