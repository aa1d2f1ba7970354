/* Unit tests of the backup store: ids, commit and abort, crash recovery,
 * locks, scans of monthly and seed layouts, damage detection, unsafe names.
 * Needs no QEMU; qemu-img (if installed) makes small real qcow2 images. */
#include "store/store.h"
#include "store/store-int.h"   /* white box: records */
#include "common/error.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "storecheck.h"

static char *root;
static bool have_qemu_img;

static bool
exists (const char *path)
{
  struct stat sb;
  return lstat (path, &sb) == 0;
}

static void
touch (const char *path)
{
  int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  REQUIRE (fd >= 0);
  REQUIRE (write (fd, "data", 4) == 4);
  close (fd);
}

/* A real qcow2 image of SIZE at PATH when qemu-img is there, else a small file. */
static void
make_image (const char *path, const char *size)
{
  if (have_qemu_img) {
    char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", (char *) path,
                     (char *) size, NULL };
    REQUIRE (qb_run (argv, NULL) == 0);
  } else
    touch (path);
}

static int
rm_one (const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
  (void) sb; (void) flag; (void) ftw;
  return remove (p);
}

static void
rm_rf (const char *p)
{
  nftw (p, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh empty store in its own directory. */
static store *
fresh_store (const char *name)
{
  char *p = qb_asprintf ("%s/%s", root, name);
  store *st = store_open (p, true);
  REQUIRE (st);
  struct stat sb;
  REQUIRE (stat (p, &sb) == 0);
  CHECK ((sb.st_mode & 0777) == 0700);
  free (p);
  return st;
}

/* Commit one point of VM with DISK of KIND after PREV; returns the id in ID. */
static void
commit_point (store *st, const char *vm, const char *disk, int64_t t, store_kind kind,
              const store_layer *prev, const char *chain, bool monthly, char *id)
{
  store_txn *tx = store_txn_begin (st, vm, t, monthly);
  REQUIRE (tx);
  const char *tmp = store_txn_add_disk (tx, disk, kind, prev, chain, 1 << 20);
  REQUIRE (tmp);
  make_image (tmp, "1M");
  REQUIRE (store_txn_commit (tx, NULL) == 0);
  if (id)
    strcpy (id, store_txn_id (tx));
  store_txn_free (tx);
}

/* The last layer of the last chain of DISK in a fresh scan (copied into OUT). */
static store_layer
last_layer (store *st, const char *vm, const char *disk, store_vm **keep)
{
  store_vm *v = store_scan_vm (st, vm);
  REQUIRE (v);
  const store_disk *d = store_vm_disk (v, disk);
  REQUIRE (d && d->nchains > 0);
  const store_chain *c = &d->chains[d->nchains - 1];
  *keep = v;
  return c->layers[c->n - 1];
}

static void
test_unsafe_names (void)
{
  store *st = fresh_store ("unsafe");
  char longname[301];
  memset (longname, 'a', 300);
  longname[300] = '\0';
  const char *bad[] = { "../x", ".hidden", "a/b", "x\ny", longname, "", "..", NULL };
  for (int i = 0; bad[i]; i++) {
    qb_error_clear ();
    CHECK (store_scan_vm (st, bad[i]) == NULL && qb_error_code () == QB_EINVAL);
    CHECK (store_lock_vm (st, bad[i], 0) == NULL && qb_error_code () == QB_EINVAL);
    CHECK (store_txn_begin (st, bad[i], T0, false) == NULL && qb_error_code () == QB_EINVAL);
    CHECK (store_record_read (st, bad[i], "20261126T045000Z") == NULL
           && qb_error_code () == QB_EINVAL);
    CHECK (store_record_latest (st, bad[i]) == NULL && qb_error_code () == QB_EINVAL);
    CHECK (store_recover (st, bad[i]) == -1 && qb_error_code () == QB_EINVAL);
    CHECK (store_point_remove (st, bad[i], "20261126T045000Z") == -1
           && qb_error_code () == QB_EINVAL);
    store_txn *tx = store_txn_begin (st, "vm", T0, false);
    REQUIRE (tx);
    CHECK (store_txn_add_disk (tx, bad[i], STORE_FULL, NULL, NULL, 0) == NULL
           && qb_error_code () == QB_EINVAL);
    store_txn_free (tx);
  }
  /* Ids from outside are checked as well. */
  CHECK (store_record_read (st, "vm", "../../etc/passwd") == NULL
         && qb_error_code () == QB_EINVAL);
  /* Nothing was created outside the store, and only "vm" inside it. */
  char *outside = qb_asprintf ("%s/x", root);
  CHECK (!exists (outside));
  free (outside);
  char **names;
  size_t n;
  CHECK (store_list_vms (st, &names, &n) == 0 && n == 1 && strcmp (names[0], "vm") == 0);
  store_names_free (names, n);
  char *hidden = qb_asprintf ("%s/.hidden", store_root (st));
  CHECK (!exists (hidden));
  free (hidden);
  store_close (st);
}

static void
test_ids_and_commit (void)
{
  store *st = fresh_store ("ids");
  char id1[40], id2[40], id3[40];
  int64_t t;
  int seq;

  /* Before anything: no records, scan says no VM. */
  CHECK (store_scan_vm (st, "web1") == NULL && qb_error_code () == QB_ENOENT);

  store_txn *tx = store_txn_begin (st, "web1", T0 + 123456, false);
  REQUIRE (tx);
  CHECK (strcmp (store_txn_id (tx), "20261126T045000Z") == 0);
  char chain[17];
  store_new_chain_id (chain, sizeof chain);
  CHECK (strlen (chain) == 16 && strspn (chain, "0123456789abcdef") == 16);
  const char *tmp = store_txn_add_disk (tx, "drive0", STORE_FULL, NULL, chain, 1 << 20);
  REQUIRE (tmp);
  CHECK (strstr (tmp, "/web1/drive0/.tmp-FULL-20261126T045000Z") != NULL);
  const char *fin = store_txn_final_path (tx, "drive0");
  REQUIRE (fin);
  char *want = qb_asprintf ("%s/web1/drive0/FULL-20261126T045000Z", store_root (st));
  CHECK (strcmp (fin, want) == 0);
  make_image (tmp, "1M");
  /* Not visible before the commit. */
  store_vm *v = store_scan_vm (st, "web1");
  REQUIRE (v);
  CHECK (v->ndisks == 0);
  store_vm_free (v);
  CHECK (store_record_read (st, "web1", "20261126T045000Z") == NULL
         && qb_error_code () == QB_ENOENT);
  json_object *extra = json_object_new_object ();
  json_object_object_add (extra, "level", json_object_new_string ("full"));
  json_object_object_add (extra, "quiesced", json_object_new_boolean (1));
  json_object_object_add (extra, "id", json_object_new_string ("forged"));
  CHECK (store_txn_commit (tx, extra) == 0);
  json_object_put (extra);
  CHECK (store_txn_commit (tx, NULL) == -1);
  strcpy (id1, store_txn_id (tx));
  store_txn_free (tx);
  CHECK (exists (want));
  char *tmppath = qb_asprintf ("%s/web1/drive0/.tmp-FULL-20261126T045000Z", store_root (st));
  CHECK (!exists (tmppath));
  free (tmppath);

  /* The record. */
  json_object *rec = store_record_read (st, "web1", id1), *o;
  REQUIRE (rec);
  CHECK (json_object_object_get_ex (rec, "version", &o) && json_object_get_int (o) == 1);
  CHECK (json_object_object_get_ex (rec, "id", &o)
         && strcmp (json_object_get_string (o), "20261126T045000Z") == 0);
  CHECK (json_object_object_get_ex (rec, "time", &o)
         && strcmp (json_object_get_string (o), "2026-11-26T04:50:00Z") == 0);
  CHECK (json_object_object_get_ex (rec, "time_us", &o)
         && json_object_get_int64 (o) == T0 + 123456);
  CHECK (json_object_object_get_ex (rec, "vm", &o)
         && strcmp (json_object_get_string (o), "web1") == 0);
  CHECK (json_object_object_get_ex (rec, "month", &o) && o == NULL);
  CHECK (json_object_object_get_ex (rec, "level", &o)
         && strcmp (json_object_get_string (o), "full") == 0);
  json_object *disks;
  CHECK (json_object_object_get_ex (rec, "disks", &disks)
         && json_object_array_length (disks) == 1);
  json_object *d0 = json_object_array_get_idx (disks, 0);
  CHECK (json_object_object_get_ex (d0, "name", &o)
         && strcmp (json_object_get_string (o), "drive0") == 0);
  CHECK (json_object_object_get_ex (d0, "file", &o)
         && strcmp (json_object_get_string (o), "drive0/FULL-20261126T045000Z") == 0);
  CHECK (json_object_object_get_ex (d0, "kind", &o)
         && strcmp (json_object_get_string (o), "full") == 0);
  CHECK (json_object_object_get_ex (d0, "chain", &o)
         && strcmp (json_object_get_string (o), chain) == 0);
  CHECK (json_object_object_get_ex (d0, "prev", &o) && o == NULL);
  CHECK (json_object_object_get_ex (d0, "virtual_size", &o)
         && json_object_get_int64 (o) == 1 << 20);
  CHECK (json_object_object_get_ex (d0, "bytes", &o) && json_object_get_int64 (o) > 0);
  json_object_put (rec);
  char *rpath = qb_asprintf ("%s/web1/.points/%s.json", store_root (st), id1);
  struct stat sb;
  CHECK (stat (rpath, &sb) == 0 && (sb.st_mode & 0777) == 0600);
  free (rpath);
  rpath = qb_asprintf ("%s/web1/.points", store_root (st));
  CHECK (stat (rpath, &sb) == 0 && (sb.st_mode & 0777) == 0700);
  free (rpath);

  /* Two more points in the same second: _02, _03; they sort in time order. */
  store_vm *keep;
  store_layer prev = last_layer (st, "web1", "drive0", &keep);
  CHECK (prev.quiesced);
  commit_point (st, "web1", "drive0", T0 + 500000, STORE_INC, &prev, NULL, false, id2);
  store_vm_free (keep);
  prev = last_layer (st, "web1", "drive0", &keep);
  commit_point (st, "web1", "drive0", T0 + 900000, STORE_INC, &prev, NULL, false, id3);
  store_vm_free (keep);
  CHECK (strcmp (id2, "20261126T045000Z_02") == 0);
  CHECK (strcmp (id3, "20261126T045000Z_03") == 0);
  CHECK (strcmp (id1, id2) < 0 && strcmp (id2, id3) < 0);
  CHECK (store_id_parse (id3, &t, &seq) == 0 && t == T0 && seq == 3);
  CHECK (store_id_parse (id1, &t, &seq) == 0 && t == T0 && seq == 1);
  CHECK (store_id_parse ("1700000000-disk.qcow2", &t, &seq) == 0
         && t == (int64_t) 1700000000 * 1000000);
  CHECK (store_id_parse ("20261132T045000Z", &t, &seq) == -1);
  CHECK (store_id_parse ("20261126T045000Z_01", &t, &seq) == -1);
  CHECK (store_id_parse ("garbage", &t, &seq) == -1);

  /* Names: the one formatter, in both styles; the default is colon-free. */
  char disp[48];
  store_names style;
  CHECK (store_get_names (st) == STORE_NAMES_SAFE);
  CHECK (store_id_display (id1, STORE_NAMES_SAFE, disp, sizeof disp) == 0
         && strcmp (disp, "2026-11-26T045000Z") == 0);
  CHECK (store_id_display (id3, STORE_NAMES_SAFE, disp, sizeof disp) == 0
         && strcmp (disp, "2026-11-26T045000Z_03") == 0);
  CHECK (store_id_display (id1, STORE_NAMES_ISO, disp, sizeof disp) == 0
         && strcmp (disp, "2026-11-26T04:50:00Z") == 0);
  CHECK (store_id_display (id3, STORE_NAMES_ISO, disp, sizeof disp) == 0
         && strcmp (disp, "2026-11-26T04:50:00Z_03") == 0);
  CHECK (store_id_display ("garbage", STORE_NAMES_SAFE, disp, sizeof disp) == -1);
  CHECK (store_names_parse ("iso", &style) == 0 && style == STORE_NAMES_ISO);
  CHECK (store_names_parse ("safe", &style) == 0 && style == STORE_NAMES_SAFE);
  CHECK (store_names_parse ("ISO", &style) == -1 && qb_error_code () == QB_EINVAL);
  CHECK (store_names_parse ("", &style) == -1);

  v = store_scan_vm (st, "web1");
  REQUIRE (v);
  CHECK (v->ndisks == 1);
  const store_disk *d = store_vm_disk (v, "drive0");
  REQUIRE (d);
  CHECK (store_vm_disk (v, "nope") == NULL);
  CHECK (d->nchains == 1);
  REQUIRE (d->chains[0].n == 3);
  const store_chain *c = &d->chains[0];
  CHECK (strcmp (c->chain_id, chain) == 0 && c->month == NULL);
  CHECK (c->layers[0].kind == STORE_FULL && c->layers[1].kind == STORE_INC);
  CHECK (strcmp (c->layers[0].display, "2026-11-26T045000Z") == 0);
  CHECK (strcmp (c->layers[1].display, "2026-11-26T045000Z_02") == 0);
  CHECK (strcmp (c->layers[2].display, "2026-11-26T045000Z_03") == 0);
  CHECK (strcmp (c->layers[2].name, "INC-20261126T045000Z_03") == 0);
  /* The mount's names ("<display>.img") sort in time order byte by byte. */
  for (size_t i = 0; i + 1 < 3; i++) {
    char *a = qb_asprintf ("%s.img", c->layers[i].display);
    char *b = qb_asprintf ("%s.img", c->layers[i + 1].display);
    CHECK (strcmp (a, b) < 0);
    free (a);
    free (b);
  }
  CHECK (c->layers[2].time_us == T0 + 900000);
  CHECK (c->layers[1].virtual_size == 1 << 20);
  CHECK (c->layers[0].file_size > 0);
  for (size_t i = 0; i < 3; i++) {
    CHECK (c->layers[i].damage == NULL);
    CHECK (c->layers[i].chain_id && strcmp (c->layers[i].chain_id, chain) == 0);
    CHECK (exists (c->layers[i].path) && c->layers[i].path[0] == '/');
  }
  store_vm_free (v);

  json_object *latest = store_record_latest (st, "web1");
  REQUIRE (latest);
  CHECK (json_object_object_get_ex (latest, "id", &o)
         && strcmp (json_object_get_string (o), id3) == 0);
  json_object_put (latest);

  /* Abort: nothing visible, no temps, no new directories. */
  tx = store_txn_begin (st, "web1", T0 + 2000000, false);
  REQUIRE (tx);
  const char *ta = store_txn_add_disk (tx, "drive1", STORE_FULL, NULL, NULL, 1 << 20);
  REQUIRE (ta);
  char *ta_copy = qb_strdup (ta);
  touch (ta);
  char *abort_id = qb_strdup (store_txn_id (tx));
  store_txn_free (tx);
  CHECK (!exists (ta_copy));
  char *d1 = qb_asprintf ("%s/web1/drive1", store_root (st));
  CHECK (!exists (d1));
  CHECK (store_record_read (st, "web1", abort_id) == NULL && qb_error_code () == QB_ENOENT);
  free (ta_copy);

  /* Commit with a target that was never written: error, nothing visible. */
  tx = store_txn_begin (st, "web1", T0 + 3000000, false);
  REQUIRE (tx);
  const char *ok = store_txn_add_disk (tx, "drive1", STORE_FULL, NULL, NULL, 1 << 20);
  REQUIRE (ok);
  touch (ok);
  char *ok_copy = qb_strdup (ok);
  CHECK (store_txn_add_disk (tx, "drive1", STORE_FULL, NULL, NULL, 0) == NULL);
  CHECK (store_txn_add_disk (tx, "drive2", STORE_INC, NULL, NULL, 0) == NULL);
  CHECK (store_txn_add_disk (tx, "drive3", STORE_FULL, NULL, NULL, 1 << 20) != NULL);
  char *fail_id = qb_strdup (store_txn_id (tx));
  CHECK (store_txn_commit (tx, NULL) == -1 && qb_error_code () == QB_ENOENT);
  CHECK (!exists (ok_copy));
  CHECK (store_record_read (st, "web1", fail_id) == NULL);
  store_txn_free (tx);
  CHECK (!exists (d1));
  v = store_scan_vm (st, "web1");
  REQUIRE (v);
  CHECK (v->ndisks == 1);
  store_vm_free (v);
  free (ok_copy);
  free (fail_id);
  free (d1);
  free (abort_id);
  free (want);

  /* store_point_remove deletes the record and its files. */
  char *f3 = qb_asprintf ("%s/web1/drive0/INC-%s", store_root (st), id3);
  CHECK (exists (f3));
  CHECK (store_point_remove (st, "web1", id3) == 0);
  CHECK (!exists (f3));
  CHECK (store_record_read (st, "web1", id3) == NULL);
  free (f3);
  latest = store_record_latest (st, "web1");
  CHECK (latest && json_object_object_get_ex (latest, "id", &o)
         && strcmp (json_object_get_string (o), id2) == 0);
  json_object_put (latest);
  /* The next point in that second does not reuse an id a file still has. */
  tx = store_txn_begin (st, "web1", T0, false);
  CHECK (tx && strcmp (store_txn_id (tx), "20261126T045000Z_03") == 0);
  store_txn_free (tx);
  store_close (st);
}

static void
test_recover (void)
{
  store *st = fresh_store ("recover");
  char chain[17];
  store_new_chain_id (chain, sizeof chain);
  /* A two-disk point, committed; then put it back in the state of a crash
   * after the record was written but before the temps were renamed. */
  store_txn *tx = store_txn_begin (st, "vm", T0, false);
  REQUIRE (tx);
  const char *a = store_txn_add_disk (tx, "a", STORE_FULL, NULL, chain, 1 << 20);
  const char *b = store_txn_add_disk (tx, "b", STORE_FULL, NULL, NULL, 1 << 20);
  REQUIRE (a && b);
  make_image (a, "1M");
  make_image (b, "1M");
  char *ta = qb_strdup (a), *tb = qb_strdup (b);
  char *fa = qb_strdup (store_txn_final_path (tx, "a"));
  char *fb = qb_strdup (store_txn_final_path (tx, "b"));
  REQUIRE (store_txn_commit (tx, NULL) == 0);
  store_txn_free (tx);
  REQUIRE (rename (fa, ta) == 0 && rename (fb, tb) == 0);

  /* A temp no record names, a stale record temp, and foreign files. */
  char *orphan = qb_asprintf ("%s/vm/a/.tmp-INC-20261126T050000Z", store_root (st));
  touch (orphan);
  char *mdir = qb_asprintf ("%s/vm/2026-11/a", store_root (st));
  REQUIRE (qb_mkdir_p (mdir, 0700) == 0);
  char *orphan2 = qb_asprintf ("%s/.tmp-FULL-20261126T060000Z", mdir);
  touch (orphan2);
  char *rtmp = qb_asprintf ("%s/vm/.points/.tmp-20261126T050000Z.json", store_root (st));
  touch (rtmp);
  char *foreign = qb_asprintf ("%s/vm/a/notes.txt", store_root (st));
  touch (foreign);

  store_vm *v = store_scan_vm (st, "vm");
  REQUIRE (v);
  CHECK (store_vm_disk (v, "a") == NULL);
  store_vm_free (v);

  CHECK (store_recover (st, "vm") == 5);
  CHECK (exists (fa) && exists (fb) && !exists (ta) && !exists (tb));
  CHECK (!exists (orphan) && !exists (orphan2) && !exists (rtmp) && exists (foreign));
  v = store_scan_vm (st, "vm");
  REQUIRE (v);
  CHECK (v->ndisks == 2);
  const store_disk *d = store_vm_disk (v, "a");
  CHECK (d && d->nchains == 1 && d->chains[0].n == 1 && !d->chains[0].layers[0].damage);
  store_vm_free (v);
  CHECK (store_recover (st, "vm") == 0);
  CHECK (store_recover (st, "novm") == 0);
  free (ta); free (tb); free (fa); free (fb);
  free (orphan); free (orphan2); free (mdir); free (rtmp); free (foreign);
  store_close (st);
}

struct lock_arg {
  store *st;
  int timeout;
  qb_err code;
  uint64_t waited;
  bool got;
};

static void *
lock_thread (void *p)
{
  struct lock_arg *a = p;
  uint64_t t0 = qb_mono_ms ();
  store_lock *l = store_lock_vm (a->st, "vm", a->timeout);
  a->waited = qb_mono_ms () - t0;
  a->got = l != NULL;
  a->code = l ? QB_OK : qb_error_code ();
  store_unlock (l);
  return NULL;
}

static void
test_lock (void)
{
  store *st = fresh_store ("lock");
  store_lock *l = store_lock_vm (st, "vm", 0);
  REQUIRE (l);
  char *lp = qb_asprintf ("%s/vm/.lock", store_root (st));
  struct stat sb;
  CHECK (stat (lp, &sb) == 0 && (sb.st_mode & 0777) == 0600);
  free (lp);

  struct lock_arg a = { st, 300, QB_OK, 0, false };
  pthread_t th;
  REQUIRE (pthread_create (&th, NULL, lock_thread, &a) == 0);
  pthread_join (th, NULL);
  CHECK (!a.got && a.code == QB_EBUSY && a.waited >= 300 && a.waited < 3000);

  struct lock_arg b = { st, 0, QB_OK, 0, false };
  REQUIRE (pthread_create (&th, NULL, lock_thread, &b) == 0);
  pthread_join (th, NULL);
  CHECK (!b.got && b.code == QB_EBUSY);

  /* Another VM is not blocked. */
  store_lock *other = store_lock_vm (st, "vm2", 0);
  CHECK (other != NULL);
  store_unlock (other);

  /* Released while the other thread waits: it gets the lock. */
  struct lock_arg c = { st, 5000, QB_OK, 0, false };
  REQUIRE (pthread_create (&th, NULL, lock_thread, &c) == 0);
  struct timespec ts = { 0, 100 * 1000000L };
  nanosleep (&ts, NULL);   /* only makes the waiter likely to be polling; not needed for correctness */
  store_unlock (l);
  pthread_join (th, NULL);
  CHECK (c.got && c.waited < 5000);
  store_close (st);
}

static void
test_monthly (void)
{
  store *st = fresh_store ("monthly");
  char chain1[17], chain2[17], id[40];
  store_new_chain_id (chain1, sizeof chain1);
  store_new_chain_id (chain2, sizeof chain2);
  int64_t nov = T0, dec = T0 + (int64_t) 10 * 86400 * 1000000;   /* 2026-12-06 */
  store_vm *keep;
  commit_point (st, "vm", "drive0", nov, STORE_FULL, NULL, chain1, true, id);
  char *p = qb_asprintf ("%s/vm/2026-11/drive0/FULL-%s", store_root (st), id);
  CHECK (exists (p));
  free (p);
  store_layer prev = last_layer (st, "vm", "drive0", &keep);
  commit_point (st, "vm", "drive0", nov + 60000000, STORE_INC, &prev, NULL, true, NULL);
  store_vm_free (keep);
  commit_point (st, "vm", "drive0", dec, STORE_FULL, NULL, chain2, true, id);
  prev = last_layer (st, "vm", "drive0", &keep);
  commit_point (st, "vm", "drive0", dec + 60000000, STORE_INC, &prev, NULL, true, NULL);
  store_vm_free (keep);
  /* A second disk only in December, and a month dir that holds no disk dirs. */
  commit_point (st, "vm", "drive1", dec + 120000000, STORE_COPY, NULL, NULL, true, NULL);
  p = qb_asprintf ("%s/vm/2027-01", store_root (st));
  REQUIRE (mkdir (p, 0700) == 0);
  free (p);

  json_object *rec = store_record_read (st, "vm", id), *o;
  CHECK (rec && json_object_object_get_ex (rec, "month", &o)
         && strcmp (json_object_get_string (o), "2026-12") == 0);
  json_object_put (rec);

  store_vm *v = store_scan_vm (st, "vm");
  REQUIRE (v);
  CHECK (v->ndisks == 2);
  CHECK (strcmp (v->disks[0].name, "drive0") == 0 && strcmp (v->disks[1].name, "drive1") == 0);
  const store_disk *d = store_vm_disk (v, "drive0");
  REQUIRE (d && d->nchains == 2);
  CHECK (strcmp (d->chains[0].month, "2026-11") == 0 && strcmp (d->chains[1].month, "2026-12") == 0);
  CHECK (d->chains[0].n == 2 && d->chains[1].n == 2);
  CHECK (strcmp (d->chains[0].chain_id, chain1) == 0 && strcmp (d->chains[1].chain_id, chain2) == 0);
  CHECK (d->chains[0].layers[0].time_us < d->chains[1].layers[0].time_us);
  CHECK (strstr (d->chains[1].layers[1].path, "/vm/2026-12/drive0/INC-") != NULL);
  for (size_t i = 0; i < 2; i++)
    for (size_t j = 0; j < 2; j++)
      CHECK (d->chains[i].layers[j].damage == NULL);
  d = store_vm_disk (v, "drive1");
  CHECK (d && d->nchains == 1 && d->chains[0].n == 1 && d->chains[0].layers[0].kind == STORE_COPY);
  store_vm_free (v);
  store_close (st);
}

static void
test_seed (void)
{
  store *st = fresh_store ("seed");
  char *dir = qb_asprintf ("%s/vm/sda", store_root (st));
  REQUIRE (qb_mkdir_p (dir, 0700) == 0);
  const char *files[] = { "FULL-1700000000-sda.qcow2", "INC-1700000100-sda.qcow2",
                          "COPY-1700000150-sda.qcow2", "INC-1700000200-sda.qcow2", NULL };
  for (int i = 0; files[i]; i++) {
    char *p = qb_asprintf ("%s/%s", dir, files[i]);
    make_image (p, "2M");
    free (p);
  }
  const char *ignored[] = { "INC-1700000300-sda.qcow2.partial", "notes.txt", "FULL-abc",
                            "INC-", ".tmp-INC-1700000400-sda.qcow2", NULL };
  for (int i = 0; ignored[i]; i++) {
    char *p = qb_asprintf ("%s/%s", dir, ignored[i]);
    touch (p);
    free (p);
  }
  /* A directory with nothing but foreign files is not a disk. */
  char *other = qb_asprintf ("%s/vm/junk", store_root (st));
  REQUIRE (mkdir (other, 0700) == 0);
  free (other);

  store_vm *v = store_scan_vm (st, "vm");
  REQUIRE (v);
  CHECK (v->ndisks == 1);
  const store_disk *d = store_vm_disk (v, "sda");
  REQUIRE (d && d->nchains == 2);
  const store_chain *c = &d->chains[0];
  REQUIRE (c->n == 3);
  CHECK (c->chain_id == NULL && c->month == NULL);
  CHECK (strcmp (c->layers[0].name, "FULL-1700000000-sda.qcow2") == 0);
  CHECK (strcmp (c->layers[1].name, "INC-1700000100-sda.qcow2") == 0);
  /* The INC after the COPY continues the FULL's chain, never the COPY. */
  CHECK (strcmp (c->layers[2].name, "INC-1700000200-sda.qcow2") == 0);
  CHECK (strcmp (c->layers[0].id, "20231114T221320Z") == 0);
  CHECK (strcmp (c->layers[0].display, "2023-11-14T221320Z") == 0);
  CHECK (c->layers[1].time_us == (int64_t) 1700000100 * 1000000);
  for (size_t i = 0; i < 3; i++)
    CHECK (c->layers[i].damage == NULL && c->layers[i].chain_id == NULL);
  if (have_qemu_img)
    CHECK (c->layers[0].virtual_size == 2 << 20 && c->layers[2].virtual_size == 2 << 20);
  CHECK (d->chains[1].n == 1 && d->chains[1].layers[0].kind == STORE_COPY);
  store_vm_free (v);

  /* An INC never continues a COPY. */
  store_vm *keep;
  store_layer copy = last_layer (st, "vm", "sda", &keep);
  CHECK (copy.kind == STORE_COPY);
  store_txn *tx = store_txn_begin (st, "vm", T0, false);
  REQUIRE (tx);
  CHECK (store_txn_add_disk (tx, "sda", STORE_INC, &copy, NULL, 0) == NULL
         && qb_error_code () == QB_EINVAL);
  store_txn_free (tx);
  store_vm_free (keep);

  /* A new point on a seed chain continues it, and the scan accepts it. */
  v = store_scan_vm (st, "vm");
  REQUIRE (v);
  store_layer prev = store_vm_disk (v, "sda")->chains[0].layers[2];
  char id[40];
  commit_point (st, "vm", "sda", T0, STORE_INC, &prev, NULL, false, id);
  store_vm_free (v);
  v = store_scan_vm (st, "vm");
  REQUIRE (v);
  d = store_vm_disk (v, "sda");
  REQUIRE (d && d->nchains == 2 && d->chains[0].n == 4);
  CHECK (strcmp (d->chains[0].layers[3].id, id) == 0 && d->chains[0].layers[3].damage == NULL);
  store_vm_free (v);
  free (dir);
  store_close (st);
}

static void
test_damage (void)
{
  store *st = fresh_store ("damage");
  char chain[17], ids[5][40];
  store_new_chain_id (chain, sizeof chain);
  store_vm *keep;
  commit_point (st, "vm", "d", T0, STORE_FULL, NULL, chain, false, ids[0]);
  for (int i = 1; i < 5; i++) {
    store_layer prev = last_layer (st, "vm", "d", &keep);
    commit_point (st, "vm", "d", T0 + i * 60000000LL, STORE_INC, &prev, NULL, false, ids[i]);
    store_vm_free (keep);
  }
  /* Delete the middle INC (ids[2]) behind the store's back. */
  char *mid = qb_asprintf ("%s/vm/d/INC-%s", store_root (st), ids[2]);
  REQUIRE (unlink (mid) == 0);
  free (mid);
  store_vm *v = store_scan_vm (st, "vm");
  REQUIRE (v);
  const store_disk *d = store_vm_disk (v, "d");
  REQUIRE (d && d->nchains == 1);
  const store_chain *c = &d->chains[0];
  REQUIRE (c->n == 4);
  CHECK (c->layers[0].damage == NULL && c->layers[1].damage == NULL);
  char *want = qb_asprintf ("INC-%s is missing", ids[2]);
  CHECK (c->layers[2].damage && strcmp (c->layers[2].damage, want) == 0);
  CHECK (c->layers[3].damage && strcmp (c->layers[3].damage, want) == 0);
  CHECK (strcmp (c->layers[2].id, ids[3]) == 0);
  free (want);
  store_vm_free (v);

  /* A second chain Y; then an INC whose record names an unknown chain, and
   * one whose record says chain Y but after a layer of the first chain. */
  store_recover (st, "vm");
  char chain2[17], y0[40], bad1[40], bad2[40], good[40];
  store_new_chain_id (chain2, sizeof chain2);
  commit_point (st, "vm", "d", T0 + 3600000000LL, STORE_FULL, NULL, chain2, false, y0);
  store_layer fullY = last_layer (st, "vm", "d", &keep);
  store_layer fake = fullY;
  fake.chain_id = (char *) "0123456789abcdef";
  commit_point (st, "vm", "d", T0 + 3660000000LL, STORE_INC, &fake, NULL, false, bad1);
  store_layer wrong = fullY;
  snprintf (wrong.id, sizeof wrong.id, "%s", ids[1]);
  commit_point (st, "vm", "d", T0 + 3720000000LL, STORE_INC, &wrong, NULL, false, bad2);
  store_vm_free (keep);

  v = store_scan_vm (st, "vm");
  REQUIRE (v);
  d = store_vm_disk (v, "d");
  REQUIRE (d);
  const store_chain *y = NULL, *z = NULL;
  for (size_t i = 0; i < d->nchains; i++) {
    if (d->chains[i].chain_id && strcmp (d->chains[i].chain_id, chain2) == 0)
      y = &d->chains[i];
    if (d->chains[i].chain_id && strcmp (d->chains[i].chain_id, "0123456789abcdef") == 0)
      z = &d->chains[i];
    /* No chain holds the unknown-chain INC behind a FULL. */
    for (size_t k = 1; k < d->chains[i].n; k++)
      CHECK (strcmp (d->chains[i].layers[k].id, bad1) != 0);
  }
  REQUIRE (y && z);
  CHECK (z->n == 1 && strcmp (z->layers[0].id, bad1) == 0 && z->layers[0].damage != NULL);
  REQUIRE (y->n == 2);
  CHECK (y->layers[0].damage == NULL);
  CHECK (strcmp (y->layers[1].id, bad2) == 0 && y->layers[1].damage
         && strstr (y->layers[1].damage, "but the previous layer present is FULL-") != NULL);
  fprintf (stderr, "damage messages: \"%s\" / \"%s\"\n", z->layers[0].damage, y->layers[1].damage);
  /* A correct INC after it stays damaged: the chain is broken from there on. */
  store_layer last = y->layers[1];
  last.damage = NULL;
  commit_point (st, "vm", "d", T0 + 3780000000LL, STORE_INC, &last, NULL, false, good);
  store_vm_free (v);
  v = store_scan_vm (st, "vm");
  REQUIRE (v);
  d = store_vm_disk (v, "d");
  for (size_t i = 0; d && i < d->nchains; i++)
    if (d->chains[i].chain_id && strcmp (d->chains[i].chain_id, chain2) == 0) {
      CHECK (d->chains[i].n == 3 && d->chains[i].layers[2].damage != NULL);
    }
  store_vm_free (v);

  /* An INC of ours whose record is gone is never attached by time order:
     its own record in .chain/ places it (and its header, which names no
     backing file here, is checked against the layer before it); without
     that one too it has no record at all. */
  char *rec = qb_asprintf ("%s/vm/.points/%s.json", store_root (st), ids[4]);
  REQUIRE (unlink (rec) == 0);
  free (rec);
  v = store_scan_vm (st, "vm");
  REQUIRE (v);
  d = store_vm_disk (v, "d");
  REQUIRE (d);
  for (size_t i = 0; i < d->nchains; i++)
    for (size_t k = 0; k < d->chains[i].n; k++)
      if (strcmp (d->chains[i].layers[k].id, ids[4]) == 0)
        CHECK (d->chains[i].layers[k].damage != NULL);
  store_vm_free (v);
  char *side = qb_asprintf ("%s/vm/d/.chain/INC-%s.json", store_root (st), ids[4]);
  REQUIRE (unlink (side) == 0);
  free (side);
  v = store_scan_vm (st, "vm");
  REQUIRE (v);
  d = store_vm_disk (v, "d");
  REQUIRE (d);
  bool seen = false;
  for (size_t i = 0; i < d->nchains; i++)
    for (size_t k = 0; k < d->chains[i].n; k++)
      if (strcmp (d->chains[i].layers[k].id, ids[4]) == 0) {
        seen = true;
        CHECK (d->chains[i].layers[k].damage
               && strstr (d->chains[i].layers[k].damage, "has no record") != NULL);
      }
  CHECK (seen);
  store_vm_free (v);
  store_close (st);
}

static void
test_scan_cost (void)
{
  store *st = fresh_store ("cost");
  bool saved = have_qemu_img;
  have_qemu_img = false;        /* contents do not matter here */
  char chain[17];
  store_vm *keep;
  int points = 0;
  for (int f = 0; f < 4; f++) {
    store_new_chain_id (chain, sizeof chain);
    commit_point (st, "vm", "d", T0 + (int64_t) points++ * 1000000, STORE_FULL, NULL, chain,
                  false, NULL);
    for (int i = 0; i < 49; i++) {
      store_layer prev = last_layer (st, "vm", "d", &keep);
      commit_point (st, "vm", "d", T0 + (int64_t) points++ * 1000000, STORE_INC, &prev, NULL,
                    false, NULL);
      store_vm_free (keep);
    }
  }
  uint64_t t0 = qb_mono_ms ();
  int rounds = 10;
  for (int r = 0; r < rounds; r++) {
    store_vm *v = store_scan_vm (st, "vm");
    REQUIRE (v);
    const store_disk *d = store_vm_disk (v, "d");
    CHECK (d && d->nchains == 4 && d->chains[3].n == 50 && !d->chains[3].layers[49].damage);
    store_vm_free (v);
  }
  uint64_t ms = (qb_mono_ms () - t0) / rounds;
  fprintf (stderr, "scan of %d points: %llu ms\n", points, (unsigned long long) ms);
  CHECK (ms < 500);
  have_qemu_img = saved;
  store_close (st);
}

/* In a child with a private mount namespace: a store on a tiny tmpfs that
 * fills up during the commit reports QB_ENOSPC and publishes nothing. */
static void
test_enospc (void)
{
  pid_t pid = fork ();
  REQUIRE (pid >= 0);
  if (pid == 0) {
    char *dir = qb_asprintf ("%s/full", root);
    REQUIRE (mkdir (dir, 0700) == 0);
    if (unshare (CLONE_NEWNS) < 0 || mount (NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0
        || mount ("tmpfs", dir, "tmpfs", 0, "size=256k,mode=0700") < 0) {
      fprintf (stderr, "cannot mount a small tmpfs (%s): ENOSPC check not run\n",
               strerror (errno));
      _exit (77);
    }
    have_qemu_img = false;
    char *sroot = qb_asprintf ("%s/store", dir);
    store *st = store_open (sroot, true);
    REQUIRE (st);
    commit_point (st, "vm", "d", T0, STORE_FULL, NULL, NULL, false, NULL);
    store_txn *tx = store_txn_begin (st, "vm", T0 + 60000000, false);
    REQUIRE (tx);
    const char *tmp = store_txn_add_disk (tx, "d", STORE_FULL, NULL, NULL, 1 << 20);
    REQUIRE (tmp);
    char *tcopy = qb_strdup (tmp);
    /* The target takes all the space that is left. */
    int fd = open (tmp, O_WRONLY | O_CREAT, 0600);
    REQUIRE (fd >= 0);
    char buf[4096];
    memset (buf, 0x33, sizeof buf);
    while (write (fd, buf, sizeof buf) > 0)
      ;
    close (fd);
    char *id = qb_strdup (store_txn_id (tx));
    CHECK (store_txn_commit (tx, NULL) == -1 && qb_error_code () == QB_ENOSPC);
    char *want = qb_asprintf ("the store %s is full: free space and run the backup again", sroot);
    CHECK (strcmp (qb_error_msg (), want) == 0);
    store_txn_free (tx);
    CHECK (!exists (tcopy));
    CHECK (store_record_read (st, "vm", id) == NULL && qb_error_code () == QB_ENOENT);
    char *pt = qb_asprintf ("%s/vm/.points/.tmp-%s.json", sroot, id);
    CHECK (!exists (pt));
    store_vm *v = store_scan_vm (st, "vm");
    CHECK (v && v->ndisks == 1 && v->disks[0].nchains == 1);
    store_vm_free (v);
    store_close (st);
    umount (dir);
    _exit (failures ? 1 : 0);
  }
  int status;
  REQUIRE (waitpid (pid, &status, 0) == pid);
  REQUIRE (WIFEXITED (status));
  if (WEXITSTATUS (status) == 1)
    failures++;
}

/* Commit a FULL and an INC of disk "d" of VM whose INC image names the
 * FULL as its backing file, as the engine makes them; ids into F and I. */
static void
commit_real_chain (store *st, const char *vm, int64_t t, char *f, char *i)
{
  char chain[17];
  store_new_chain_id (chain, sizeof chain);
  commit_point (st, vm, "d", t, STORE_FULL, NULL, chain, false, f);
  store_vm *keep;
  store_layer prev = last_layer (st, vm, "d", &keep);
  store_txn *tx = store_txn_begin (st, vm, t + 60000000, false);
  REQUIRE (tx);
  const char *tmp = store_txn_add_disk (tx, "d", STORE_INC, &prev, NULL, 1 << 20);
  REQUIRE (tmp);
  char *argv[] = { "qemu-img", "create", "-q", "-f", "qcow2", "-b", prev.name, "-F", "qcow2",
                   (char *) tmp, "1M", NULL };
  REQUIRE (qb_run (argv, NULL) == 0);
  REQUIRE (store_txn_commit (tx, NULL) == 0);
  strcpy (i, store_txn_id (tx));
  store_txn_free (tx);
  store_vm_free (keep);
}

/* The one chain of the only disk of scan V (NULL unless exactly that). */
static const store_chain *
only_chain (const store_vm *v)
{
  return v && v->ndisks == 1 && v->disks[0].nchains == 1 ? &v->disks[0].chains[0] : NULL;
}

static void
test_sidecars (void)
{
  if (!have_qemu_img) {
    fprintf (stderr, "sidecar tests need qemu-img: not run\n");
    return;
  }
  store *st = fresh_store ("side");
  char f[40], i[40];
  commit_real_chain (st, "vm", T0, f, i);
  char *cdir = qb_asprintf ("%s/vm/d/.chain", store_root (st));
  char *sf = qb_asprintf ("%s/FULL-%s.json", cdir, f);
  char *si = qb_asprintf ("%s/INC-%s.json", cdir, i);
  struct stat sb;
  CHECK (stat (cdir, &sb) == 0 && (sb.st_mode & 0777) == 0700);
  CHECK (stat (sf, &sb) == 0 && (sb.st_mode & 0777) == 0600);
  CHECK (stat (si, &sb) == 0 && (sb.st_mode & 0777) == 0600);
  json_object *o = json_object_from_file (si), *disks, *d, *x;
  REQUIRE (o);
  CHECK (json_object_object_get_ex (o, "disks", &disks) && json_object_array_length (disks) == 1);
  d = json_object_array_get_idx (disks, 0);
  CHECK (json_object_object_get_ex (d, "prev", &x) && strcmp (json_object_get_string (x), f) == 0);
  CHECK (json_object_object_get_ex (d, "size", &x) && json_object_get_int64 (x) > 0);
  json_object_put (o);

  /* A copy of the disk folder, elsewhere and renamed, is its own proof. */
  char *copy = qb_asprintf ("%s/side-copy/r", root);
  char *src = qb_asprintf ("%s/vm/d", store_root (st));
  char *pdir = qb_asprintf ("%s/side-copy", root);
  REQUIRE (mkdir (pdir, 0700) == 0);
  char *cp[] = { "cp", "-a", src, copy, NULL };
  REQUIRE (qb_run (cp, NULL) == 0);
  store_vm *v = store_scan_folder (copy);
  const store_chain *c = only_chain (v);
  REQUIRE (c);
  CHECK (strcmp (v->disks[0].name, "r") == 0 && c->n == 2 && c->chain_id);
  CHECK (c->n == 2 && !c->layers[0].damage && !c->layers[1].damage);
  CHECK (c->n == 2 && strcmp (c->layers[1].id, i) == 0 && c->layers[1].virtual_size == 1 << 20);
  store_vm_free (v);
  /* ...and a truncated layer in it is damage that says so. */
  char *incp = qb_asprintf ("%s/INC-%s", copy, i);
  REQUIRE (stat (incp, &sb) == 0 && truncate (incp, sb.st_size - 512) == 0);
  v = store_scan_folder (copy);
  c = only_chain (v);
  REQUIRE (c);
  CHECK (c->n == 2 && c->layers[1].damage && strstr (c->layers[1].damage, "truncated"));
  CHECK (c->n == 2 && !c->layers[0].damage);
  store_vm_free (v);
  /* An INC whose header names another backing file is of another chain. */
  REQUIRE (truncate (incp, sb.st_size) == 0);
  char *rb[] = { "qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", "FULL-20200101T000000Z",
                 "-F", "qcow2", incp, NULL };
  REQUIRE (qb_run (rb, NULL) == 0);
  v = store_scan_folder (copy);
  c = only_chain (v);
  REQUIRE (c);
  CHECK (c->n == 2 && c->layers[1].damage && strstr (c->layers[1].damage, "another chain"));
  store_vm_free (v);
  CHECK (store_scan_folder ("/nonexistent/folder") == NULL);

  /* Without the VM's records the store's scan uses the layers' own. */
  char *points = qb_asprintf ("%s/vm/.points", store_root (st));
  char *rm[] = { "rm", "-r", points, NULL };
  REQUIRE (qb_run (rm, NULL) == 0);
  v = store_scan_vm (st, "vm");
  c = only_chain (v);
  REQUIRE (c);
  CHECK (c->n == 2 && !c->layers[0].damage && !c->layers[1].damage);
  store_vm_free (v);

  /* Recovery drops records of layers that were never committed, keeps the others. */
  char *orphan = qb_asprintf ("%s/INC-20261126T060000Z.json", cdir);
  char *otmp = qb_asprintf ("%s/.tmp-INC-20261126T060000Z.json", cdir);
  /* ...also when no temp is left anywhere to tell of the crash. */
  touch (orphan);
  CHECK (store_recover (st, "vm") == 1);
  CHECK (!exists (orphan) && exists (sf) && exists (si));
  CHECK (store_recover (st, "vm") == 0);
  touch (orphan);
  touch (otmp);
  CHECK (store_recover (st, "vm") == 2);
  CHECK (!exists (orphan) && !exists (otmp) && exists (sf) && exists (si));

  /* A commit that fails before its record leaves no layer record behind. */
  char *vm2 = qb_asprintf ("%s/vm2", store_root (st));
  REQUIRE (mkdir (vm2, 0700) == 0);
  char *p2 = qb_asprintf ("%s/.points", vm2);
  touch (p2);                               /* the record cannot be written */
  store_txn *tx = store_txn_begin (st, "vm2", T0, false);
  REQUIRE (tx);
  const char *tmp = store_txn_add_disk (tx, "d", STORE_FULL, NULL, NULL, 1 << 20);
  REQUIRE (tmp);
  make_image (tmp, "1M");
  char *fin = qb_strdup (store_txn_final_path (tx, "d"));
  CHECK (store_txn_commit (tx, NULL) < 0);
  store_txn_free (tx);
  char *s2 = qb_asprintf ("%s/d/.chain/%s.json", vm2, strrchr (fin, '/') + 1);
  CHECK (!exists (s2) && !exists (fin));

  free (s2); free (fin); free (p2); free (vm2);
  free (orphan); free (otmp); free (points); free (incp);
  free (copy); free (src); free (pdir);
  free (cdir); free (sf); free (si);
  store_close (st);
}

/* The newest INC deleted behind the store's back: the scan ends the chain
 * before it, and store_disk_lost_after says so from the scan alone, as
 * store_chain_lost_after does from the records. */
static void
test_lost_newest (void)
{
  store *st = fresh_store ("lost");
  char chain[17], ids[3][40];
  store_new_chain_id (chain, sizeof chain);
  store_vm *keep;
  commit_point (st, "vm", "d", T0, STORE_FULL, NULL, chain, false, ids[0]);
  for (int i = 1; i < 3; i++) {
    store_layer prev = last_layer (st, "vm", "d", &keep);
    commit_point (st, "vm", "d", T0 + i * 60000000LL, STORE_INC, &prev, NULL, false, ids[i]);
    store_vm_free (keep);
  }
  store_vm *v = store_scan_vm (st, "vm");
  REQUIRE (v);
  const store_disk *d = store_vm_disk (v, "d");
  REQUIRE (d);
  CHECK (d->nlost == 0 && store_disk_lost_after (d, chain, ids[1]) == NULL);
  store_vm_free (v);

  char *newest = qb_asprintf ("%s/vm/d/INC-%s", store_root (st), ids[2]);
  REQUIRE (unlink (newest) == 0);
  CHECK (store_recover (st, "vm") == 0);      /* nothing to recover: no temp */
  v = store_scan_vm (st, "vm");
  REQUIRE (v);
  d = store_vm_disk (v, "d");
  REQUIRE (d && d->nchains == 1 && d->chains[0].n == 2);
  CHECK (strcmp (d->chains[0].layers[1].id, ids[1]) == 0 && !d->chains[0].layers[1].damage);
  char *a = store_disk_lost_after (d, chain, ids[1]);
  char *b = store_chain_lost_after (st, "vm", "d", chain, ids[1]);
  CHECK (a && b && strcmp (a, b) == 0 && strstr (a, ids[2]) && strstr (a, "is lost"));
  CHECK (store_disk_lost_after (d, chain, ids[2]) == NULL);
  CHECK (store_disk_lost_after (d, "0123456789abcdef", ids[1]) == NULL);
  CHECK (store_disk_lost_after (NULL, chain, ids[1]) == NULL);
  free (a);
  free (b);
  store_vm_free (v);
  free (newest);
  store_close (st);
}

int
main (void)
{
  char tmpl[] = "/tmp/qb-store-test.XXXXXX";
  root = mkdtemp (tmpl);
  REQUIRE (root);
  char *argv[] = { "qemu-img", "--version", NULL };
  have_qemu_img = qb_run (argv, NULL) == 0;
  if (!have_qemu_img)
    fprintf (stderr, "qemu-img not found: using plain files instead of qcow2 images\n");

  test_unsafe_names ();
  test_ids_and_commit ();
  test_recover ();
  test_lock ();
  test_monthly ();
  test_seed ();
  test_damage ();
  test_scan_cost ();
  test_enospc ();
  test_sidecars ();
  test_lost_newest ();

  rm_rf (root);
  if (failures) {
    fprintf (stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf ("all store tests passed\n");
  return 0;
}
