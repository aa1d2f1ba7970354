/* qmpbackupfs fuzz targets — helpers shared by the libFuzzer entry points. */
#ifndef QB_FUZZ_H
#define QB_FUZZ_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* Abort (a finding for libFuzzer) with MSG when COND does not hold. */
#define FUZZ_CHECK(cond, ...)                                           \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "fuzz invariant failed at %s:%d: %s: ",          \
               __FILE__, __LINE__, #cond);                              \
      fprintf (stderr, __VA_ARGS__);                                    \
      fputc ('\n', stderr);                                             \
      abort ();                                                         \
    }                                                                   \
  } while (0)

/* A connected stream socketpair: SV[0] for the code under test, SV[1] the
 * fake peer, which has sent all LEN bytes of DATA and shut its write side.
 * Inputs larger than the socket buffers are refused (returns -1). */
static inline int
fuzz_peer (const uint8_t *data, size_t len, int sv[2])
{
  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
    abort ();
  int big = 1 << 20;
  setsockopt (sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt (sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  size_t done = 0;
  while (done < len) {
    ssize_t n = send (sv[1], data + done, len - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      close (sv[0]);
      close (sv[1]);
      return -1;
    }
    done += (size_t) n;
  }
  shutdown (sv[1], SHUT_WR);
  return 0;
}

#endif
