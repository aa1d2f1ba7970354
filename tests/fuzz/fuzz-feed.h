/* qmpbackupfs fuzz targets — a fake peer thread that can send inputs larger
 * than the socket buffers (amplification payloads of megabytes), used by the
 * QMP and JSON-reader targets. */
#ifndef QB_FUZZ_FEED_H
#define QB_FUZZ_FEED_H

#include "fuzz.h"

#include <pthread.h>

typedef struct fuzz_feed {
  int sv[2];          /* sv[0] for the code under test, sv[1] the peer */
  const uint8_t *data;
  size_t len;
  pthread_t thread;
} fuzz_feed;

/* Thread: send all of the data (blocking), then shut the write side; stop
 * early when the reader goes away. */
static void *
fuzz_feed_main (void *arg)
{
  fuzz_feed *f = arg;
  size_t done = 0;
  while (done < f->len) {
    ssize_t n = send (f->sv[1], f->data + done, f->len - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    done += (size_t) n;
  }
  shutdown (f->sv[1], SHUT_WR);
  return NULL;
}

/* Connect a socketpair and start sending LEN bytes of DATA from a thread. */
static inline void
fuzz_feed_start (fuzz_feed *f, const uint8_t *data, size_t len)
{
  if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->sv) < 0)
    abort ();
  f->data = data;
  f->len = len;
  if (pthread_create (&f->thread, NULL, fuzz_feed_main, f) != 0)
    abort ();
}

/* After the code under test closed sv[0]: stop the sender and reap it. */
static inline void
fuzz_feed_stop (fuzz_feed *f)
{
  shutdown (f->sv[1], SHUT_RDWR);
  pthread_join (f->thread, NULL);
  close (f->sv[1]);
}

#endif
