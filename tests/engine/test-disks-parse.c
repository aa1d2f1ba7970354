/* Unit test of disks_parse's reading of dirty bitmaps: a bitmap's dirty
 * byte count decides whether an INC needs a job at all (an INC of disks
 * whose chain bitmaps are all empty commits empty layers), so only a JSON
 * integer >= 0 counts; any other "count" (missing, a string, a boolean, a
 * fraction, negative, null) reads as unknown, that is dirty (UINT64_MAX),
 * never as 0. */
#include "engine/disks.h"
#include "common/error.h"
#include "common/util.h"

#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond) do {                                                  \
    if (!(cond)) {                                                        \
      fprintf (stderr, "%s:%d: check failed: %s (last error: %s)\n",      \
               __FILE__, __LINE__, #cond, qb_error_msg ());               \
      exit (1);                                                           \
    }                                                                     \
  } while (0)

/* The count disks_parse gives a bitmap whose "count" member is the JSON
 * text COUNT (NULL: no such member). */
static uint64_t
count_of (const char *count)
{
  char *text = qb_asprintf (
    "[{\"device\": \"drive0\", \"qdev\": \"/machine/peripheral/d0/virtio-backend\","
    " \"inserted\": {\"node-name\": \"n0\", \"drv\": \"qcow2\", \"file\": \"/x.qcow2\","
    " \"image\": {\"virtual-size\": 1048576},"
    " \"dirty-bitmaps\": [{\"name\": \"b\", \"granularity\": 65536, \"recording\": true,"
    " \"busy\": false, \"persistent\": true%s%s}]}}]",
    count ? ", \"count\": " : "", count ? count : "");
  json_object *blocks = json_tokener_parse (text);
  free (text);
  CHECK (blocks != NULL);
  vm_disk *disks = NULL;
  size_t n = 0;
  CHECK (disks_parse (blocks, NULL, &disks, &n) == 0);
  CHECK (n == 1);
  const vm_bitmap *b = disks_find_bitmap (&disks[0], "b");
  CHECK (b != NULL);
  CHECK (b->recording);
  uint64_t c = b->count;
  disks_free (disks, n);
  json_object_put (blocks);
  return c;
}

int
main (void)
{
  CHECK (count_of ("0") == 0);
  CHECK (count_of ("196608") == 196608);
  CHECK (count_of ("9007199254740992") == 9007199254740992ULL);
  static const char *const odd[] = { NULL, "\"0\"", "\"abc\"", "false", "true", "0.0",
                                     "0.5", "-1", "-65536", "null", "{}", "[]" };
  for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
    uint64_t c = count_of (odd[i]);
    if (c != UINT64_MAX) {
      fprintf (stderr, "a bitmap with \"count\": %s reads as %llu, not as unknown (dirty)\n",
               odd[i] ? odd[i] : "(missing)", (unsigned long long) c);
      return 1;
    }
  }
  printf ("disks: bitmap counts other than a JSON integer >= 0 read as dirty\n");
  return 0;
}
