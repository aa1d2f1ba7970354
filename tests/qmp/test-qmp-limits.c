/* The per-connection QMP limits (JSONIO_QMP_MAX_BYTES / _VALUES) against the
 * biggest replies the backup engine asks a real QEMU for: a VM with 16 disks,
 * each on a 4-layer backing chain with 2 dirty bitmaps (query-block,
 * query-named-block-nodes, query-jobs), then with a 30-layer backup chain
 * attached as a target node (query-named-block-nodes as the cleanup asks it,
 * and with "flat": true).  Every reply must pass, with a margin: the figures
 * are printed, a limit cut below 3x of them fails the test. */
#include "qmp/jsonio.h"
#include "qmp/qmp.h"
#include "testlib.h"

#define QEMU "/usr/bin/qemu-system-x86_64"
#define QEMU_IMG "/usr/bin/qemu-img"
#define DISKS 16
#define LAYERS 4
#define TARGET_LAYERS 30
#define MARGIN 3

/* Count what jsonio counts in the plain serialisation of V: '{' '[' ','
 * ':' outside strings; its length in *BYTES. */
static size_t
count_values (json_object *v, size_t *bytes)
{
  size_t len, n = 0;
  const char *s = json_object_to_json_string_length (v, JSON_C_TO_STRING_PLAIN, &len);
  bool in_str = false, esc = false;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (in_str) {
      if (esc)
        esc = false;
      else if (c == '\\')
        esc = true;
      else if (c == '"')
        in_str = false;
    }
    else if (c == '"')
      in_str = true;
    else if (c == '{' || c == '[' || c == ',' || c == ':')
      n++;
  }
  *bytes = len;
  return n;
}

/* Run CMD (ARGS consumed) and check its reply is within the limits with
 * MARGIN to spare; print the figures. */
static void
measure (qmp *q, const char *what, const char *cmd, json_object *args)
{
  json_object *r = qmp_execute (q, cmd, args, 30000);
  CHECK (r != NULL);
  size_t bytes, values = count_values (r, &bytes);
  printf ("%-52s %8zu bytes %7zu values\n", what, bytes, values);
  CHECK (bytes * MARGIN <= JSONIO_QMP_MAX_BYTES);
  CHECK (values * MARGIN <= JSONIO_QMP_MAX_VALUES);
  json_object_put (r);
}

/* qemu-img create -f qcow2 [-b BACKING -F qcow2] PATH 64M. */
static void
make_image (const char *path, const char *backing)
{
  char *a[] = { QEMU_IMG, "create", "-q", "-f", "qcow2", (char *) path, "64M", NULL };
  char *b[] = { QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", (char *) backing, "-F", "qcow2",
                (char *) path, NULL };
  CHECK (qb_run (backing ? b : a, NULL) == 0);
}

int
main (void)
{
  if (!test_have (QEMU) || !test_have (QEMU_IMG)) {
    printf ("SKIP: %s or %s not installed\n", QEMU, QEMU_IMG);
    return 77;
  }
  const char *dir = test_tmpdir ();
  char *sock = qb_asprintf ("%s/vm.qmp", dir);
  char *qmparg = qb_asprintf ("unix:%s,server=on,wait=off", sock);
  char *log = qb_asprintf ("%s/qemu.log", dir);
  char *argv[16 + 2 * DISKS] = { QEMU, "-machine", "q35,accel=kvm:tcg", "-S", "-display", "none",
                                 "-nodefaults", "-qmp", qmparg };
  int argc = 9;
  for (int d = 0; d < DISKS; d++) {
    char *prev = NULL;
    for (int l = 0; l < LAYERS; l++) {
      char *img = qb_asprintf ("%s/d%d-%d.qcow2", dir, d, l);
      make_image (img, prev);
      free (prev);
      prev = img;
    }
    argv[argc++] = "-drive";
    argv[argc++] = qb_asprintf ("file=%s,format=qcow2,if=virtio,id=disk%d,cache=unsafe", prev, d);
    free (prev);
  }
  argv[argc] = NULL;
  pid_t pid = test_spawn (argv, log);
  CHECK (test_wait_socket (sock, pid, 20000) == 0);
  qmp *q = qmp_connect (sock, QMP_CONNECT_TIMEOUT_MS);
  CHECK (q != NULL);
  for (int d = 0; d < DISKS; d++)
    for (int b = 0; b < 2; b++) {
      json_object *args = json_object_new_object ();
      char node[16], name[32];
      snprintf (node, sizeof node, "disk%d", d);
      snprintf (name, sizeof name, "qmpbackup-bitmap-%d", b);
      json_object_object_add (args, "node", json_object_new_string (node));
      json_object_object_add (args, "name", json_object_new_string (name));
      json_object_object_add (args, "persistent", json_object_new_boolean (1));
      CHECK (qmp_run (q, "block-dirty-bitmap-add", args, 10000) == 0);
    }
  measure (q, "query-block, 16 disks x 4 layers", "query-block", NULL);
  measure (q, "query-named-block-nodes, 16 disks x 4 layers", "query-named-block-nodes", NULL);
  measure (q, "query-jobs", "query-jobs", NULL);

  /* A long backup chain attached as a target node. */
  char *prev = NULL;
  for (int l = 0; l < TARGET_LAYERS; l++) {
    char *img = qb_asprintf ("%s/t-%d.qcow2", dir, l);
    make_image (img, prev);
    free (prev);
    prev = img;
  }
  json_object *args = json_object_new_object (), *file = json_object_new_object ();
  json_object_object_add (file, "driver", json_object_new_string ("file"));
  json_object_object_add (file, "filename", json_object_new_string (prev));
  json_object_object_add (args, "driver", json_object_new_string ("qcow2"));
  json_object_object_add (args, "node-name", json_object_new_string ("qbt-target"));
  json_object_object_add (args, "file", file);
  CHECK (qmp_run (q, "blockdev-add", args, 10000) == 0);
  free (prev);
  measure (q, "query-named-block-nodes, + 30-layer target", "query-named-block-nodes", NULL);
  args = json_object_new_object ();
  json_object_object_add (args, "flat", json_object_new_boolean (1));
  measure (q, "query-named-block-nodes flat, + 30-layer target", "query-named-block-nodes", args);

  qmp_close (q);
  test_cleanup ();
  for (int i = 9; i < argc; i++)
    if (strcmp (argv[i], "-drive") != 0)
      free (argv[i]);
  free (sock);
  free (qmparg);
  free (log);
  printf ("qmp limits: real replies pass with %dx margin\n", MARGIN);
  return 0;
}
