/* qmpbackupfs — test driver for qcow2_create_empty: creates PATH (0600,
 * must not exist) and formats it as the empty qcow2 v3 image of SIZE bytes,
 * backed by BACKING (format qcow2) when given.
 * usage: qcow2_create_tool PATH SIZE [BACKING]
 * exit 0 written, 3 refused (QEMU must make this one), 1 error. */
#include "store/qcow2.h"
#include "common/error.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int
main (int argc, char **argv)
{
  if (argc < 3 || argc > 4) {
    fprintf (stderr, "usage: %s PATH SIZE [BACKING]\n", argv[0]);
    return 1;
  }
  char *end;
  uint64_t size = strtoull (argv[2], &end, 10);
  if (*end) {
    fprintf (stderr, "%s: bad size %s\n", argv[0], argv[2]);
    return 1;
  }
  const char *backing = argc == 4 ? argv[3] : NULL;
  if (!qcow2_create_supported (size, 65536, backing, backing ? "qcow2" : NULL))
    return 3;
  int fd = open (argv[1], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    perror (argv[1]);
    return 1;
  }
  close (fd);
  int rc = qcow2_create_empty (argv[1], size, 65536, backing, backing ? "qcow2" : NULL);
  if (rc < 0) {
    fprintf (stderr, "%s: %s\n", argv[0], qb_error_msg ());
    return 1;
  }
  return rc == 1 ? 3 : 0;
}
