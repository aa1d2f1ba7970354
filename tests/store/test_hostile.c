/* Hostile stores: symbolic links anywhere in a VM's folder are never
 * followed (scan, layer opens, writers, recovery), a seed layer without a
 * valid header is damaged, and running out of file descriptors while
 * opening a long chain or scanning is a transient error (QB_EAGAIN), never
 * damage: the same chain opens once descriptors are back.
 * Needs qemu-img (exit 77 without it). */
#include "store/store.h"
#include "store/store-int.h"   /* white box: records */
#include "store/chain.h"
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storecheck.h"
#define CHAIN_LEN 40

static char *root;

static bool
exists (const char *path)
{
  struct stat sb;
  return lstat (path, &sb) == 0;
}

/* A real qcow2 image of SIZE at PATH. */
static void
make_image (const char *path, const char *size)
{
  char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1",
                   (char *) path, (char *) size, NULL };
  REQUIRE (qb_run (argv, NULL) == 0);
}

/* Write LEN bytes of BYTE at OFF of the file at PATH. */
static void
poke (const char *path, off_t off, int byte, size_t len)
{
  char buf[4096];
  memset (buf, byte, sizeof buf);
  int fd = open (path, O_WRONLY);
  REQUIRE (fd >= 0 && len <= sizeof buf);
  REQUIRE (pwrite (fd, buf, len, off) == (ssize_t) len);
  close (fd);
}

static int
rm_one (const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
  (void) sb; (void) flag; (void) ftw;
  return remove (p);
}

/* Commit one point of VM with DISK of KIND after PREV (a real 1 MiB image). */
static void
commit_point (store *st, const char *vm, const char *disk, int64_t t, store_kind kind,
              const store_layer *prev, bool monthly)
{
  store_txn *tx = store_txn_begin (st, vm, t, monthly);
  REQUIRE (tx);
  const char *tmp = store_txn_add_disk (tx, disk, kind, prev, NULL, 1 << 20);
  REQUIRE (tmp);
  make_image (tmp, "1M");
  REQUIRE (store_txn_commit (tx, NULL) == 0);
  store_txn_free (tx);
}

/* True if one of V's skipped notes contains WORD. */
static bool
skipped_has (const store_vm *v, const char *word)
{
  for (size_t i = 0; i < v->nskipped; i++)
    if (strstr (v->skipped[i], word))
      return true;
  return false;
}

/* Number of open descriptors of this process; the highest into *MAX. */
static int
open_fds (int *max)
{
  int n = 0;
  for (int fd = 0; fd < 4096; fd++)
    if (fcntl (fd, F_GETFD) >= 0) {
      n++;
      if (max)
        *max = fd;
    }
  return n;
}

/* ---- Symbolic links ---- */

static void
test_links (void)
{
  char *sroot = qb_asprintf ("%s/store", root);
  char *out = qb_asprintf ("%s/outside", root);
  store *st = store_open (sroot, true);
  REQUIRE (st);
  /* Outside the store: a valid qcow2 image, a secret text file, and a VM
     folder shape with a disk folder holding a FULL and a temp. */
  REQUIRE (qb_mkdir_p (out, 0700) == 0);
  char *secret_img = qb_asprintf ("%s/secret.qcow2", out);
  char *secret_txt = qb_asprintf ("%s/shadow", out);
  make_image (secret_img, "1M");
  FILE *f = fopen (secret_txt, "w");
  REQUIRE (f);
  fputs ("root:secret-hash:19000:0:99999:7:::\n", f);
  fclose (f);
  char *odisk = qb_asprintf ("%s/vm/sda", out);
  REQUIRE (qb_mkdir_p (odisk, 0700) == 0);
  char *ofull = qb_asprintf ("%s/FULL-1700000000-sda.qcow2", odisk);
  make_image (ofull, "1M");
  char *otmp = qb_asprintf ("%s/.tmp-FULL-20261126T045000Z", odisk);
  make_image (otmp, "1M");
  char *omonth = qb_asprintf ("%s/month", out);
  char *omdisk = qb_asprintf ("%s/month/sdb", out);
  REQUIRE (qb_mkdir_p (omdisk, 0700) == 0);
  char *omfull = qb_asprintf ("%s/FULL-1700000000-sdb.qcow2", omdisk);
  make_image (omfull, "1M");
  char *orec = qb_asprintf ("%s/rec.json", out);

  /* A real VM: FULL + INC of drive0, and a monthly FULL of drive1. */
  commit_point (st, "web1", "drive0", T0, STORE_FULL, NULL, false);
  store_vm *v = store_scan_vm (st, "web1");
  REQUIRE (v && v->ndisks == 1);
  store_layer full = v->disks[0].chains[0].layers[0];
  commit_point (st, "web1", "drive0", T0 + 1000000, STORE_INC, &full, false);
  store_vm_free (v);
  commit_point (st, "web1", "drive1", T0 + 2000000, STORE_FULL, NULL, true);

  char *vmdir = qb_asprintf ("%s/web1", sroot);
  char *p;
  /* A linked VM folder, disk folder, month folder, disk folder in a real
     month folder, layer files (a valid image and a secret), and a record. */
  p = qb_asprintf ("%s/evil", sroot);
  char *ovm = qb_asprintf ("%s/vm", out);
  REQUIRE (symlink (ovm, p) == 0);
  free (ovm);
  free (p);
  p = qb_asprintf ("%s/drive9", vmdir);
  REQUIRE (symlink (odisk, p) == 0);
  free (p);
  p = qb_asprintf ("%s/2026-10", vmdir);
  REQUIRE (symlink (omonth, p) == 0);
  free (p);
  p = qb_asprintf ("%s/2026-11/drive8", vmdir);
  REQUIRE (symlink (odisk, p) == 0);
  free (p);
  p = qb_asprintf ("%s/drive0/FULL-1600000000-x.qcow2", vmdir);
  REQUIRE (symlink (secret_img, p) == 0);
  free (p);
  p = qb_asprintf ("%s/drive0/COPY-1600000001-x.qcow2", vmdir);
  REQUIRE (symlink (secret_txt, p) == 0);
  free (p);
  /* An INC of ours whose record is a link to a record outside. */
  char *inc = qb_asprintf ("%s/drive0/INC-20261126T045010Z", vmdir);
  make_image (inc, "1M");
  f = fopen (orec, "w");
  REQUIRE (f);
  fputs ("{ \"id\": \"20261126T045010Z\", \"disks\": [ { \"name\": \"drive0\", \"file\": "
         "\"drive0/INC-20261126T045010Z\", \"kind\": \"inc\", \"prev\": \"20261126T045001Z\" } ] }\n", f);
  fclose (f);
  p = qb_asprintf ("%s/.points/20261126T045010Z.json", vmdir);
  REQUIRE (symlink (orec, p) == 0);
  free (p);

  /* The VM list and the scan: nothing linked is listed or served. */
  char **names;
  size_t n;
  REQUIRE (store_list_vms (st, &names, &n) == 0);
  CHECK (n == 1 && strcmp (names[0], "web1") == 0);
  store_names_free (names, n);
  qb_error_clear ();
  CHECK (store_scan_vm (st, "evil") == NULL && qb_error_code () == QB_EPERM
         && strstr (qb_error_msg (), "symbolic link"));
  fprintf (stderr, "linked VM folder: %s\n", qb_error_msg ());
  v = store_scan_vm (st, "web1");
  REQUIRE (v);
  CHECK (v->ndisks == 2);
  CHECK (store_vm_disk (v, "drive0") && store_vm_disk (v, "drive1"));
  CHECK (!store_vm_disk (v, "drive8") && !store_vm_disk (v, "drive9") && !store_vm_disk (v, "sdb"));
  for (size_t i = 0; i < v->nskipped; i++)
    fprintf (stderr, "skipped: %s\n", v->skipped[i]);
  CHECK (skipped_has (v, "web1/drive9 is a symbolic link"));
  CHECK (skipped_has (v, "web1/2026-10 is a symbolic link"));
  CHECK (skipped_has (v, "web1/2026-11/drive8 is a symbolic link"));
  CHECK (skipped_has (v, "FULL-1600000000-x.qcow2 is a symbolic link"));
  CHECK (skipped_has (v, "COPY-1600000001-x.qcow2 is a symbolic link"));
  CHECK (skipped_has (v, "20261126T045010Z.json is a symbolic link"));
  const store_disk *d = store_vm_disk (v, "drive0");
  REQUIRE (d);
  size_t nlayers = 0;
  for (size_t c = 0; c < d->nchains; c++)
    for (size_t i = 0; i < d->chains[c].n; i++) {
      const store_layer *l = &d->chains[c].layers[i];
      nlayers++;
      CHECK (strstr (l->name, "1600000000") == NULL && strstr (l->name, "1600000001") == NULL);
      if (strcmp (l->name, "INC-20261126T045010Z") == 0)
        CHECK (l->damage && strstr (l->damage, "has no record"));
      else
        CHECK (l->damage == NULL);
    }
  CHECK (nlayers == 3);

  /* Opening: a layer swapped for a link after the scan is never followed. */
  const store_chain *c0 = &d->chains[0];
  REQUIRE (c0->n == 2);
  int fd = store_layer_open (st, &c0->layers[1]);
  CHECK (fd >= 0);
  if (fd >= 0)
    close (fd);
  chain_image *ci = store_point_open (st, c0, 1);
  CHECK (ci != NULL);
  chain_close (ci);
  char *real = qb_asprintf ("%s.real", c0->layers[0].path);
  REQUIRE (rename (c0->layers[0].path, real) == 0);
  REQUIRE (symlink (secret_img, c0->layers[0].path) == 0);
  qb_error_clear ();
  CHECK (store_layer_open (st, &c0->layers[0]) < 0 && qb_error_code () == QB_EDAMAGED
         && strstr (qb_error_msg (), "symbolic link"));
  CHECK (store_point_open (st, c0, 1) == NULL && qb_error_code () == QB_EDAMAGED);
  const char *paths[] = { c0->layers[0].path, c0->layers[1].path };
  CHECK (chain_open (paths, 2) == NULL && qb_error_code () == QB_EDAMAGED
         && strstr (qb_error_msg (), "symbolic link"));
  fprintf (stderr, "linked layer: %s\n", qb_error_msg ());
  REQUIRE (unlink (c0->layers[0].path) == 0 && rename (real, c0->layers[0].path) == 0);
  free (real);
  /* ... and a disk folder swapped for a link to a copy of itself. */
  char *ddir = qb_asprintf ("%s/drive0", vmdir), *dcopy = qb_asprintf ("%s/drive0.copy", out);
  char *cp[] = { "cp", "-a", ddir, dcopy, NULL };
  REQUIRE (qb_run (cp, NULL) == 0);
  char *dreal = qb_asprintf ("%s/drive0.real", root);
  REQUIRE (rename (ddir, dreal) == 0 && symlink (dcopy, ddir) == 0);
  CHECK (store_layer_open (st, &c0->layers[1]) < 0 && qb_error_code () == QB_EDAMAGED);
  CHECK (store_point_open (st, c0, 1) == NULL && qb_error_code () == QB_EDAMAGED);
  REQUIRE (unlink (ddir) == 0 && rename (dreal, ddir) == 0);
  CHECK ((ci = store_point_open (st, c0, 1)) != NULL);
  chain_close (ci);
  free (ddir);
  free (dcopy);
  free (dreal);

  /* Writers: nothing is created or removed through a link. */
  CHECK (store_txn_begin (st, "evil", T0, false) == NULL && qb_error_code () == QB_EPERM);
  CHECK (store_lock_vm (st, "evil", 0) == NULL && qb_error_code () == QB_EPERM);
  json_object *rec = json_object_new_object ();
  CHECK (store_record_write (st, "evil", "20261126T045000Z", rec, false) < 0);
  json_object_put (rec);
  CHECK (store_recover (st, "evil") < 0);
  store_txn *tx = store_txn_begin (st, "web1", T0 + 5000000, false);
  REQUIRE (tx);
  CHECK (store_txn_add_disk (tx, "drive9", STORE_FULL, NULL, NULL, 1 << 20) == NULL
         && qb_error_code () == QB_EPERM);
  store_txn_free (tx);
  tx = store_txn_begin (st, "web1", T0 + 6000000, true);
  REQUIRE (tx);
  CHECK (store_txn_add_disk (tx, "drive8", STORE_FULL, NULL, NULL, 1 << 20) == NULL
         && qb_error_code () == QB_EPERM);
  store_txn_free (tx);
  CHECK (store_recover (st, "web1") >= 0);
  CHECK (exists (otmp) && exists (ofull) && exists (omfull));
  p = qb_asprintf ("%s/vm/.lock", out);
  CHECK (!exists (p));
  free (p);
  p = qb_asprintf ("%s/vm/.points", out);
  CHECK (!exists (p));
  free (p);
  p = qb_asprintf ("%s/FULL-20261126T045006Z", odisk);
  CHECK (!exists (p));
  free (p);
  store_vm_free (v);
  printf ("ok: links are never followed\n");

  free (inc);
  free (vmdir);
  free (orec);
  free (omfull);
  free (omdisk);
  free (omonth);
  free (otmp);
  free (ofull);
  free (odisk);
  free (secret_txt);
  free (secret_img);
  free (out);
  free (sroot);
  store_close (st);
}

/* ---- A seed layer that is not an image ---- */

static void
test_wiped_seed (void)
{
  char *sroot = qb_asprintf ("%s/seed", root);
  store *st = store_open (sroot, true);
  REQUIRE (st);
  char *dir = qb_asprintf ("%s/vm/sda", sroot);
  REQUIRE (qb_mkdir_p (dir, 0700) == 0);
  char *full = qb_asprintf ("%s/FULL-1700000000-sda.qcow2", dir);
  char *inc = qb_asprintf ("%s/INC-1700000100-sda.qcow2", dir);
  char *full2 = qb_asprintf ("%s/FULL-1700000200-sda.qcow2", dir);
  char *copy = qb_asprintf ("%s/COPY-1700000300-sda.qcow2", dir);
  make_image (full, "2M");
  make_image (inc, "2M");
  make_image (full2, "2M");
  make_image (copy, "2M");
  poke (full, 0, 0, 512);          /* the header wiped */
  REQUIRE (truncate (copy, 0) == 0);
  store_vm *v = store_scan_vm (st, "vm");
  REQUIRE (v);
  const store_disk *d = store_vm_disk (v, "sda");
  REQUIRE (d && d->nchains == 3);
  const store_chain *c = &d->chains[0];
  REQUIRE (c->n == 2);
  CHECK (c->layers[0].damage && strstr (c->layers[0].damage, "not a valid qcow2 image")
         && strstr (c->layers[0].damage, "FULL-1700000000-sda.qcow2"));
  CHECK (c->layers[1].damage != NULL);
  fprintf (stderr, "wiped seed FULL: %s\n", c->layers[0].damage ? c->layers[0].damage : "-");
  CHECK (d->chains[1].layers[0].damage == NULL && d->chains[1].layers[0].virtual_size == 2 << 20);
  CHECK (d->chains[2].layers[0].damage && strstr (d->chains[2].layers[0].damage, "not a valid"));
  qb_error_clear ();
  CHECK (store_point_open (st, c, 0) == NULL && qb_error_code () == QB_EDAMAGED);
  chain_image *ci = store_point_open (st, &d->chains[1], 0);
  CHECK (ci && chain_size (ci) == 2 << 20);
  chain_close (ci);
  store_vm_free (v);
  printf ("ok: seed layers without a valid header are damaged\n");
  free (full);
  free (inc);
  free (full2);
  free (copy);
  free (dir);
  free (sroot);
  store_close (st);
}

/* ---- Running out of descriptors ---- */

/* Fill every free descriptor below the soft limit LIMIT but SPARE; the
 * fillers go to FILL (count in *NFILL). */
static void
fds_fill (rlim_t limit, int spare, int *fill, int *nfill)
{
  struct rlimit rl;
  REQUIRE (getrlimit (RLIMIT_NOFILE, &rl) == 0);
  rl.rlim_cur = limit;
  REQUIRE (setrlimit (RLIMIT_NOFILE, &rl) == 0);
  *nfill = 0;
  int fd;
  while ((fd = open ("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
    fill[(*nfill)++] = fd;
  REQUIRE (errno == EMFILE);
  for (int i = 0; i < spare && *nfill > 0; i++)
    close (fill[--*nfill]);
}

/* Close the fillers and restore the soft limit to SAVED. */
static void
fds_release (const struct rlimit *saved, int *fill, int nfill)
{
  for (int i = 0; i < nfill; i++)
    close (fill[i]);
  REQUIRE (setrlimit (RLIMIT_NOFILE, saved) == 0);
}

static void
test_emfile (void)
{
  char *sroot = qb_asprintf ("%s/long", root);
  store *st = store_open (sroot, true);
  REQUIRE (st);
  commit_point (st, "vm", "sda", T0, STORE_FULL, NULL, false);
  for (int i = 1; i < CHAIN_LEN; i++) {
    store_vm *v = store_scan_vm (st, "vm");
    REQUIRE (v);
    const store_chain *c = &v->disks[0].chains[0];
    store_layer prev = c->layers[c->n - 1];
    commit_point (st, "vm", "sda", T0 + (int64_t) i * 1000000, STORE_INC, &prev, false);
    store_vm_free (v);
  }
  store_vm *v = store_scan_vm (st, "vm");
  REQUIRE (v && v->ndisks == 1 && v->disks[0].nchains == 1);
  const store_chain *c = &v->disks[0].chains[0];
  REQUIRE (c->n == CHAIN_LEN);

  struct rlimit saved;
  REQUIRE (getrlimit (RLIMIT_NOFILE, &saved) == 0);
  int maxfd = 0;
  int before = open_fds (&maxfd);
  static int fill[8192];
  int nfill;
  rlim_t limit = (rlim_t) maxfd + 65;
  REQUIRE (limit <= saved.rlim_cur);

  /* A long chain with 10 descriptors to spare: transient, no damage. */
  fds_fill (limit, 10, fill, &nfill);
  qb_error_clear ();
  chain_image *ci = store_point_open (st, c, CHAIN_LEN - 1);
  qb_err code = qb_error_code ();
  char msg[1024];
  snprintf (msg, sizeof msg, "%s", qb_error_msg ());
  const char **paths = calloc (CHAIN_LEN, sizeof *paths);
  for (int i = 0; i < CHAIN_LEN; i++)
    paths[i] = c->layers[i].path;
  qb_error_clear ();
  chain_image *ci2 = chain_open (paths, CHAIN_LEN);
  qb_err code2 = qb_error_code ();
  /* A scan with 2 to spare: it fails as a whole, transient. */
  fds_release (&saved, fill, nfill);
  fds_fill (limit, 2, fill, &nfill);
  qb_error_clear ();
  store_vm *v2 = store_scan_vm (st, "vm");
  qb_err code3 = qb_error_code ();
  char msg3[1024];
  snprintf (msg3, sizeof msg3, "%s", qb_error_msg ());
  fds_release (&saved, fill, nfill);

  CHECK (ci == NULL && code == QB_EAGAIN && qb_err_is_transient (code));
  CHECK (strstr (msg, "nothing is damaged") != NULL);
  fprintf (stderr, "chain of %d layers, 10 descriptors: %s: %s\n", CHAIN_LEN,
           qb_err_name (code), msg);
  CHECK (ci2 == NULL && code2 == QB_EAGAIN);
  CHECK (v2 == NULL && qb_err_is_transient (code3));
  fprintf (stderr, "scan with 2 descriptors: %s: %s\n", qb_err_name (code3), msg3);
  store_vm_free (v2);
  CHECK (open_fds (NULL) == before);
  for (size_t i = 0; i < c->n; i++)
    CHECK (c->layers[i].damage == NULL);

  /* Descriptors back: the same chain opens and verifies, a new scan is clean. */
  ci = store_point_open (st, c, CHAIN_LEN - 1);
  CHECK (ci != NULL && chain_verify (ci) == 0 && chain_size (ci) == 1 << 20);
  chain_close (ci);
  ci = chain_open (paths, CHAIN_LEN);
  CHECK (ci != NULL);
  chain_close (ci);
  store_vm *v3 = store_scan_vm (st, "vm");
  REQUIRE (v3 && v3->disks[0].nchains == 1 && v3->disks[0].chains[0].n == CHAIN_LEN);
  for (size_t i = 0; i < CHAIN_LEN; i++)
    CHECK (v3->disks[0].chains[0].layers[i].damage == NULL);
  store_vm_free (v3);
  CHECK (open_fds (NULL) == before);
  printf ("ok: running out of descriptors is transient, the chain opens afterwards\n");
  free (paths);
  store_vm_free (v);
  free (sroot);
  store_close (st);
}

int
main (void)
{
  char *argv[] = { "qemu-img", "--version", NULL };
  if (qb_run (argv, NULL) != 0) {
    printf ("SKIP: qemu-img is not installed\n");
    return 77;
  }
  char tmpl[] = "/tmp/qb-hostile-test.XXXXXX";
  root = mkdtemp (tmpl);
  REQUIRE (root);
  test_links ();
  test_wiped_seed ();
  test_emfile ();
  nftw (root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  if (failures) {
    fprintf (stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf ("all hostile-store tests passed\n");
  return 0;
}
