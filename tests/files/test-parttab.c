/* Unit test of fs/parttab.c's GPT checks over the inputs of
 * tests/fuzz/regress/parttab and corpus/parttab (made by
 * make-parttab-seeds.py): a GPT with right CRC32s is read from its primary,
 * one whose primary header or entry array is damaged from its backup
 * (PARTTAB_GPT_BACKUP, same partitions), one with both damaged or an entry
 * array larger than the bound is not a GPT.
 *
 *   test-parttab SOURCE_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/parttab.h"

typedef struct disk {
  unsigned char *data;
  size_t size;
} disk;

/* parttab read callback over a file's bytes. */
static int
rd (void *opaque, void *buf, size_t len, uint64_t off)
{
  disk *d = opaque;
  if (off > d->size || len > d->size - off)
    return -1;
  memcpy (buf, d->data + off, len);
  return 0;
}

static int failures;

/* Read the table of file DIR/NAME: fail unless it has N partitions, of kind KIND. */
static void
check (const char *dir, const char *name, int want_n, parttab_kind want_kind)
{
  char path[4096];
  snprintf (path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen (path, "rb");
  if (!f) {
    perror (path);
    exit (1);
  }
  disk d = { malloc (1 << 20), 0 };
  d.size = fread (d.data, 1, 1 << 20, f);
  fclose (f);
  parttab_part parts[PARTTAB_MAX];
  parttab_kind kind;
  int n = parttab_read (rd, &d, d.size, parts, &kind);
  int ok = n == want_n && kind == want_kind;
  /* the partitions of the test GPT: 1 at sector 34, 2 at 41, 4 at 61 */
  if (ok && want_n == 3)
    ok = parts[0].number == 1 && parts[0].start == 34 * 512 && parts[1].number == 2
      && parts[2].number == 4 && parts[2].length == 30 * 512;
  printf ("%s %s: %d partitions, kind %d\n", ok ? "ok" : "FAIL", name, n, (int) kind);
  if (!ok)
    failures++;
  free (d.data);
}

int
main (int argc, char **argv)
{
  if (argc != 2) {
    fprintf (stderr, "usage: test-parttab SOURCE_DIR\n");
    return 2;
  }
  char corpus[4096], regress[4096];
  snprintf (corpus, sizeof corpus, "%s/tests/fuzz/corpus/parttab", argv[1]);
  snprintf (regress, sizeof regress, "%s/tests/fuzz/regress/parttab", argv[1]);
  check (corpus, "gpt-crc", 3, PARTTAB_GPT);
  check (corpus, "gpt-backup", 3, PARTTAB_GPT_BACKUP);
  check (corpus, "gpt", 0, PARTTAB_NONE);    /* CRC32s all zero: not a GPT */
  check (regress, "gpt-primary-header-crc", 3, PARTTAB_GPT_BACKUP);
  check (regress, "gpt-primary-entries-crc", 3, PARTTAB_GPT_BACKUP);
  check (regress, "gpt-both-bad", 0, PARTTAB_NONE);
  check (regress, "gpt-huge-array", 3, PARTTAB_GPT_BACKUP);
  check (corpus, "mbr-logical", 4, PARTTAB_MBR);
  return failures ? 1 : 0;
}
