/* qmprebase verify — check a VM's restore points against the checksums kept
 * at commit (see verify.h, store/sums.h).
 *
 * Every layer of the chosen points is verified once (store_verify_store_layer,
 * which keeps the result in <disk dir>/.chain/<layer>.verify.json), then the
 * VM is scanned again, so a point is reported as the mount and the engine
 * will see it: damaged when a layer of it (its own or one below) is.  Needs
 * no lock: a layer a concurrent rewrite removed is "gone", not damage. */
#include "tools/verify.h"
#include "store/store.h"
#include "store/sums.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXIT_USAGE 2

void
verify_help (void)
{
  printf ("usage: qmprebase verify --dir STORE/<vm> [--point TIME] [--json]\n"
          "\n"
          "Re-read every data cluster of the VM's restore points and compare it with\n"
          "the checksums kept when the point was committed; check the qcow2 structure\n"
          "too.  Prints per point: ok, damaged (layer, guest offsets), unverifiable\n"
          "(layers made before checksums were kept, or by another program) or\n"
          "sums-damaged (the checksum file itself), and the speed in GB/s; points of\n"
          "a chain being rewritten (prune, remove, rebase) are skipped as busy.  Each\n"
          "layer's result is kept beside it: the mount then serves a damaged point as\n"
          "an I/O error, and the next backup starts a new chain.  Needs no VM and no\n"
          "lock.\n"
          "\n"
          "  --dir STORE/<vm>      the VM folder\n"
          "  --point TIME          only this restore point (its time or id) and the\n"
          "                        layers below it\n"
          "  --json                one JSON object instead of text\n"
          "  -h, --help            this help\n"
          "\n"
          "Exit codes: 0 every point ok (unverifiable alone is 0, with a note),\n"
          "1 damage found (or the check failed), 2 usage error.\n");
}

/* A usage error: one line, the hint, exit code 2. */
static int
verify_usage (const char *what, const char *arg)
{
  fprintf (stderr, "qmprebase: verify: %s%s\nTry 'qmprebase verify --help'.\n", what,
           arg ? arg : "");
  return EXIT_USAGE;
}

/* A verified layer: its result, found by its path. */
typedef struct vlayer {
  const char *path;
  const char *name;
  store_verify_report rep;
  bool done;
} vlayer;

/* The layer result for PATH in the list L of N. */
static vlayer *
vlayer_find (vlayer *l, size_t n, const char *path)
{
  for (size_t i = 0; i < n; i++)
    if (strcmp (l[i].path, path) == 0)
      return &l[i];
  return NULL;
}

/* True when layer I of chain C is (or lies below) the point POINT, or POINT is NULL. */
static bool
point_wanted (const store_chain *c, size_t i, const char *point)
{
  if (!point)
    return true;
  for (size_t k = i; k < c->n; k++)
    if (strcmp (c->layers[k].id, point) == 0 || strcmp (c->layers[k].display, point) == 0
        || strcmp (c->layers[k].name, point) == 0)
      return true;
  return false;
}

/* Offsets of REP as "a, b, c" into BUF (HOST: host offsets). */
static void
offsets_text (const store_verify_report *r, bool host, char *buf, size_t len)
{
  buf[0] = '\0';
  for (size_t i = 0; i < r->nlisted; i++)
    snprintf (buf + strlen (buf), len - strlen (buf), "%s%llu", i ? ", " : "",
              (unsigned long long) (host ? r->host[i] : r->guest[i]));
  if (r->damaged > r->nlisted)
    snprintf (buf + strlen (buf), len - strlen (buf), ", ...");
}

/* JSON of one layer's result (new reference). */
static json_object *
layer_json (const vlayer *vl)
{
  const store_verify_report *r = &vl->rep;
  json_object *o = json_object_new_object ();
  json_object_object_add (o, "layer", json_object_new_string (vl->name));
  json_object_object_add (o, "result", json_object_new_string (store_verify_result_word (r->result)));
  json_object_object_add (o, "clusters", json_object_new_int64 ((int64_t) r->clusters));
  json_object_object_add (o, "bytes", json_object_new_int64 ((int64_t) r->bytes));
  json_object_object_add (o, "damaged_clusters", json_object_new_int64 ((int64_t) r->damaged));
  json_object *g = json_object_new_array (), *h = json_object_new_array ();
  for (size_t i = 0; i < r->nlisted; i++) {
    json_object_array_add (g, json_object_new_int64 ((int64_t) r->guest[i]));
    json_object_array_add (h, json_object_new_int64 ((int64_t) r->host[i]));
  }
  json_object_object_add (o, "guest_offsets", g);
  json_object_object_add (o, "host_offsets", h);
  if (r->why[0])
    json_object_object_add (o, "detail", json_object_new_string (r->why));
  return o;
}

/* One line about layer VL for a point's text report (damaged / sums-damaged). */
static void
layer_print (const vlayer *vl)
{
  const store_verify_report *r = &vl->rep;
  char g[512], h[512];
  offsets_text (r, false, g, sizeof g);
  offsets_text (r, true, h, sizeof h);
  if (r->result == STORE_VERIFY_DAMAGED && r->nlisted && (r->guest[0] || r->host[0]))
    printf ("    layer %s: %llu damaged cluster%s at guest offsets %s (host offsets %s)%s%s\n",
            vl->name, (unsigned long long) r->damaged, r->damaged == 1 ? "" : "s", g, h,
            r->why[0] ? "; " : "", r->why);
  else
    printf ("    layer %s: %s%s%s\n", vl->name, store_verify_result_word (r->result),
            r->why[0] ? ": " : "", r->why);
}

/* Rank of a result for a point: the worst layer decides. */
static int
rank (store_verify_result r)
{
  switch (r) {
  case STORE_VERIFY_DAMAGED: return 4;
  case STORE_VERIFY_SUMS_DAMAGED: return 3;
  case STORE_VERIFY_UNVERIFIABLE: return 2;
  case STORE_VERIFY_GONE: return 1;
  default: return 0;
  }
}

/* The VM folder DIR: store root and VM name into *ST / *VM.  0 or -1. */
static int
open_vm (const char *dir, store **st, char **vm)
{
  char real[PATH_MAX];
  struct stat sb;
  if (!realpath (dir, real))
    return qb_error_set_errno (errno, "--dir %s", dir);
  if (stat (real, &sb) < 0 || !S_ISDIR (sb.st_mode))
    return qb_error_set (QB_EINVAL, "--dir %s is not a directory", dir);
  char *slash = strrchr (real, '/');
  if (!slash || !qb_name_is_safe (slash + 1))
    return qb_error_set (QB_EINVAL, "--dir %s: expected a VM folder STORE/<vm>", dir);
  *slash = '\0';
  *vm = qb_strdup (slash + 1);
  *st = store_open (real[0] ? real : "/", false);
  if (!*st) {
    free (*vm);
    *vm = NULL;
    return -1;
  }
  return 0;
}

int
verify_main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "dir", required_argument, NULL, 'd' },
    { "point", required_argument, NULL, 'p' },
    { "json", no_argument, NULL, 'j' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const char *dir = NULL, *point = NULL;
  bool json = false;
  int c;
  opterr = 0;
  optind = 1;
  while ((c = getopt_long (argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
    case 'd': dir = optarg; break;
    case 'p': point = optarg; break;
    case 'j': json = true; break;
    case 'h': verify_help (); return 0;
    case ':': return verify_usage ("option needs a value: ", argv[optind - 1]);
    default: return verify_usage ("unknown option ", argv[optind - 1]);
    }
  }
  if (optind < argc)
    return verify_usage ("unexpected argument ", argv[optind]);
  if (!dir)
    return verify_usage ("needs --dir STORE/<vm>", NULL);

  store *st = NULL;
  char *vm = NULL;
  store_vm *v = NULL, *after = NULL;
  vlayer *ls = NULL;
  size_t nl = 0;
  int rc = 1;
  if (open_vm (dir, &st, &vm) < 0 || !(v = store_scan_vm (st, vm))) {
    fprintf (stderr, "qmprebase: verify: %s\n", qb_error_msg ());
    goto out;
  }
  /* The layers to verify, each once. */
  bool found = !point;
  for (size_t d = 0; d < v->ndisks; d++)
    for (size_t ch = 0; ch < v->disks[d].nchains; ch++) {
      const store_chain *cn = &v->disks[d].chains[ch];
      for (size_t i = 0; i < cn->n; i++)
        if (point_wanted (cn, i, point) && !cn->layers[i].busy
            && !vlayer_find (ls, nl, cn->layers[i].path)) {
          ls = qb_realloc (ls, (nl + 1) * sizeof *ls);
          memset (&ls[nl], 0, sizeof *ls);
          ls[nl].path = cn->layers[i].path;
          ls[nl].name = cn->layers[i].name;
          nl++;
          found = true;
        }
    }
  if (!found) {
    fprintf (stderr, "qmprebase: verify: VM %s has no restore point %s (see qmprebase list "
             "--dir %s)\n", vm, point, dir);
    goto out;
  }
  struct timespec t0, t1;
  clock_gettime (CLOCK_MONOTONIC, &t0);
  uint64_t bytes = 0;
  for (size_t d = 0; d < v->ndisks; d++)
    for (size_t ch = 0; ch < v->disks[d].nchains; ch++) {
      const store_chain *cn = &v->disks[d].chains[ch];
      for (size_t i = 0; i < cn->n; i++) {
        vlayer *vl = vlayer_find (ls, nl, cn->layers[i].path);
        if (!vl || vl->done)
          continue;
        if (store_verify_store_layer (st, &cn->layers[i], &vl->rep) < 0) {
          fprintf (stderr, "qmprebase: verify: %s: %s\n", vl->name, qb_error_msg ());
          goto out;
        }
        vl->done = true;
        bytes += vl->rep.bytes;
      }
    }
  clock_gettime (CLOCK_MONOTONIC, &t1);
  double secs = (double) (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  double gbps = secs > 0 ? bytes / secs / 1e9 : 0;

  /* The points as the store now sees them. */
  if (!(after = store_scan_vm (st, vm))) {
    fprintf (stderr, "qmprebase: verify: %s\n", qb_error_msg ());
    goto out;
  }
  size_t nok = 0, ndam = 0, nunv = 0, nsums = 0, nbusy = 0;
  json_object *jpoints = json_object_new_array ();
  for (size_t d = 0; d < after->ndisks; d++)
    for (size_t ch = 0; ch < after->disks[d].nchains; ch++) {
      const store_chain *cn = &after->disks[d].chains[ch];
      for (size_t i = 0; i < cn->n; i++) {
        if (!point_wanted (cn, i, NULL) || (point && strcmp (cn->layers[i].id, point) != 0
                                            && strcmp (cn->layers[i].display, point) != 0
                                            && strcmp (cn->layers[i].name, point) != 0))
          continue;
        /* the worst of its layers, and the scan's own damage */
        int worst = 0;
        for (size_t k = 0; k <= i; k++) {
          vlayer *vl = vlayer_find (ls, nl, cn->layers[k].path);
          if (vl && vl->done && rank (vl->rep.result) > worst)
            worst = rank (vl->rep.result);
        }
        const char *damage = NULL;
        for (size_t k = 0; k <= i && !damage; k++)
          damage = cn->layers[k].damage;
        bool busy = false;
        for (size_t k = 0; k <= i; k++)
          busy |= cn->layers[k].busy;
        const char *word = busy ? "busy" : damage || worst == 4 ? "damaged"
          : worst == 3 ? "sums-damaged" : worst == 2 ? "unverifiable" : "ok";
        if (busy) nbusy++;
        else if (strcmp (word, "damaged") == 0) ndam++;
        else if (strcmp (word, "sums-damaged") == 0) nsums++;
        else if (strcmp (word, "unverifiable") == 0) nunv++;
        else nok++;
        json_object *jp = json_object_new_object ();
        json_object_object_add (jp, "disk", json_object_new_string (after->disks[d].name));
        json_object_object_add (jp, "point", json_object_new_string (cn->layers[i].display));
        json_object_object_add (jp, "id", json_object_new_string (cn->layers[i].id));
        json_object_object_add (jp, "result", json_object_new_string (word));
        if (damage)
          json_object_object_add (jp, "damage", json_object_new_string (damage));
        json_object *jl = json_object_new_array ();
        for (size_t k = 0; k <= i; k++) {
          vlayer *vl = vlayer_find (ls, nl, cn->layers[k].path);
          if (vl && vl->done)
            json_object_array_add (jl, layer_json (vl));
        }
        json_object_object_add (jp, "layers", jl);
        json_object_array_add (jpoints, jp);
        if (json)
          continue;
        printf ("%s %s %s\n", after->disks[d].name, cn->layers[i].display, word);
        for (size_t k = 0; k <= i; k++) {
          vlayer *vl = vlayer_find (ls, nl, cn->layers[k].path);
          if (vl && vl->done && vl->rep.result != STORE_VERIFY_OK
              && vl->rep.result != STORE_VERIFY_GONE)
            layer_print (vl);
        }
        if (busy)
          printf ("    a chain rewrite (removal of restore points) is under way: verify "
                  "again when it has ended\n");
        else if (damage && worst != 4)
          printf ("    %s\n", damage);
      }
    }
  rc = ndam || nsums ? 1 : 0;
  if (json) {
    json_object *o = json_object_new_object ();
    json_object_object_add (o, "vm", json_object_new_string (vm));
    json_object_object_add (o, "points", jpoints);
    json_object_object_add (o, "layers", json_object_new_int64 ((int64_t) nl));
    json_object_object_add (o, "bytes", json_object_new_int64 ((int64_t) bytes));
    json_object_object_add (o, "seconds", json_object_new_double (secs));
    json_object_object_add (o, "gb_per_second", json_object_new_double (gbps));
    json_object_object_add (o, "ok", json_object_new_int64 ((int64_t) nok));
    json_object_object_add (o, "damaged", json_object_new_int64 ((int64_t) ndam));
    json_object_object_add (o, "sums_damaged", json_object_new_int64 ((int64_t) nsums));
    json_object_object_add (o, "unverifiable", json_object_new_int64 ((int64_t) nunv));
    json_object_object_add (o, "busy", json_object_new_int64 ((int64_t) nbusy));
    printf ("%s\n", json_object_to_json_string_ext (o, JSON_C_TO_STRING_PRETTY
                                                    | JSON_C_TO_STRING_SPACED
                                                    | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put (o);
  } else {
    json_object_put (jpoints);
    printf ("verified %zu layer%s, %.2f GB in %.2f s: %.2f GB/s; %zu point%s ok, %zu damaged, "
            "%zu with damaged checksums, %zu unverifiable\n", nl, nl == 1 ? "" : "s",
            bytes / 1e9, secs, gbps, nok, nok == 1 ? "" : "s", ndam, nsums, nunv);
    if (nbusy)
      printf ("note: %zu point%s not verified: a chain rewrite is under way\n", nbusy,
              nbusy == 1 ? "" : "s");
    if (nunv)
      printf ("note: unverifiable points have layers without checksums (made before they "
              "were kept, or by another program); only their qcow2 structure was checked\n");
    if (ndam || nsums)
      printf ("damage found: restore from another point; the next backup starts a new "
              "chain\n");
  }
 out:
  free (ls);
  store_vm_free (v);
  store_vm_free (after);
  store_close (st);
  free (vm);
  return rc;
}
