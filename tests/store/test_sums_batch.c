/* qmpbackupfs — the checksums of layers big enough to be summed in several
 * batches and by several threads (store/sums.c): every entry's hash is that
 * of the bytes at its host offset, read back here independently; entries
 * strictly ascending and complete (data, zero, compressed); a flipped byte
 * in the first, a middle and the last data cluster found at its own guest
 * offset; the unsynced variant used by a commit writes the same entries. */
#include "storecheck.h"
#include "sumsfile.h"
#include "store/store.h"
#include "store/sums.h"
#include "common/util.h"

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

/* Check the sums of LAYER (clusters of 2^CBITS bytes) entry by
 * entry against the layer's bytes: DATA entries hash the bytes at their
 * host offset (up to the virtual size its header holds); return the count of data entries, their host offsets and
 * guest offsets in HOSTS/GUESTS (first, middle, last). */
static uint64_t
check_entries (const char *layer, unsigned cbits, uint64_t *counts,
               uint64_t hosts[3], uint64_t guests[3])
{
  char *rel = qb_asprintf (".chain/%s.sums", layer);
  size_t slen;
  uint8_t *s = slurp (rel, &slen);
  free (rel);
  REQUIRE (slen >= 136 && (slen - 136) % 24 == 0);
  uint64_t n = (slen - 136) / 24;
  CHECK (get64 (s + 32) == n);
  uint64_t vsize = get64 (s + 16);       /* qcow2 keeps the size in whole sectors */
  int lfd = openat (dfd, layer, O_RDONLY);
  REQUIRE (lfd >= 0);
  uint64_t csize = (uint64_t) 1 << cbits;
  uint8_t *buf = malloc (csize);
  REQUIRE (buf);
  uint64_t ndata = 0, prev = 0, bad = 0;
  uint64_t *dh = malloc (n * sizeof *dh), *dg = malloc (n * sizeof *dg);
  REQUIRE (dh && dg);
  memset (counts, 0, 4 * sizeof *counts);
  for (uint64_t i = 0; i < n; i++) {
    const uint8_t *e = s + 128 + 24 * i;
    uint64_t g = get64 (e) & ~0x1ffull, kind = get64 (e) & 0x1ff, host = get64 (e + 8);
    if (i > 0 && g <= prev)
      bad++;
    prev = g;
    REQUIRE (kind < 4);
    counts[kind]++;
    if (kind != 0)
      continue;
    uint64_t len = vsize - g < csize ? vsize - g : csize;
    REQUIRE (pread (lfd, buf, len, (off_t) host) == (ssize_t) len);
    if (XXH3_64bits (buf, len) != get64 (e + 16)) {
      if (bad < 5)
        fprintf (stderr, "entry %llu guest %llu host %llu: hash differs\n",
                 (unsigned long long) i, (unsigned long long) g, (unsigned long long) host);
      bad++;
    }
    dh[ndata] = host;
    dg[ndata++] = g;
  }
  CHECK (bad == 0);
  if (ndata) {
    uint64_t idx[3] = { 0, ndata / 2, ndata - 1 };
    for (int k = 0; k < 3; k++) {
      hosts[k] = dh[idx[k]];
      guests[k] = dg[idx[k]];
    }
  }
  free (dh);
  free (dg);
  free (buf);
  free (s);
  close (lfd);
  return ndata;
}

/* Flip one byte of LAYER at HOST + 7: verify finds exactly guest offset GUEST; flip back. */
static void
flip_found (const char *layer, uint64_t host, uint64_t guest)
{
  int lfd = openat (dfd, layer, O_RDWR);
  REQUIRE (lfd >= 0);
  uint8_t b;
  REQUIRE (pread (lfd, &b, 1, (off_t) host + 7) == 1);
  b ^= 0x40;
  REQUIRE (pwrite (lfd, &b, 1, (off_t) host + 7) == 1);
  store_verify_report rep;
  REQUIRE (store_verify_layer (dfd, layer, &rep) == 0);
  CHECK (rep.result == STORE_VERIFY_DAMAGED);
  CHECK (rep.damaged == 1 && rep.nlisted == 1 && rep.guest[0] == guest && rep.host[0] == host);
  b ^= 0x40;
  REQUIRE (pwrite (lfd, &b, 1, (off_t) host + 7) == 1);
  close (lfd);
  REQUIRE (store_verify_layer (dfd, layer, &rep) == 0);
  CHECK (rep.result == STORE_VERIFY_OK);
}

int
main (void)
{
  if (system ("command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") != 0) {
    printf ("SKIP: qemu-img or qemu-io missing\n");
    return 77;
  }
  snprintf (dir, sizeof dir, "%s/qb-sumsb-XXXXXX", getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp");
  REQUIRE (mkdtemp (dir));
  dfd = open (dir, O_RDONLY | O_DIRECTORY);
  REQUIRE (dfd >= 0);
  uint64_t counts[4], hosts[3], guests[3];
  store_verify_report rep;

  /* 512-byte clusters: 12 MiB of data are 24,576 clusters, several batches;
     zero and compressed clusters between them. */
  const char *small = "FULL-20261126T045000Z";
  uint64_t vsmall = (16u << 20) + 300;
  sh ("head -c 12582912 /dev/urandom > data.raw && "
      "qemu-img create -q -f qcow2 -o compat=1.1,cluster_size=512 %s %llu && "
      "qemu-io -f qcow2 -c 'write -P 0x44 12M 1M' -c 'write -z 13M 64k' "
      "-c 'write -c -P 0x55 14M 64k' -c 'write -P 0x66 16M 300' %s >/dev/null && "
      "qemu-io -f qcow2 -c 'write -s data.raw 0 12M' %s >/dev/null",
      small, (unsigned long long) vsmall, small, small);
  REQUIRE (store_sums_write (dfd, small) == 0);
  uint64_t nd = check_entries (small, 9, counts, hosts, guests);
  /* 12 MiB + 1 MiB + the last cluster of data, 128 zero, 128 compressed
     (a verify compares data and compressed clusters) */
  CHECK (nd == 24576 + 2048 + 1);
  CHECK (counts[1] == 128 && counts[2] == 128 && counts[3] == 0);
  REQUIRE (store_verify_layer (dfd, small, &rep) == 0);
  CHECK (rep.result == STORE_VERIFY_OK && rep.clusters == nd + 128);
  for (int k = 0; k < 3; k++)
    flip_found (small, hosts[k], guests[k]);

  /* 64 KiB clusters: 40 MiB of data, one batch cut into slices; a last
     cluster cut short by a virtual size that is no multiple of it. */
  const char *big = "FULL-20261126T045001Z";
  sh ("head -c 41943040 /dev/urandom > data.raw && "
      "qemu-img create -q -f qcow2 -o compat=1.1 %s 67113472 && "
      "qemu-io -f qcow2 -c 'write -s data.raw 8M 40M' -c 'write -z 0 1M' "
      "-c 'write -P 0x77 64M 4608' %s >/dev/null",
      big, big);
  /* the temp of a commit, summed unsynced under the layer's name */
  sh ("cp %s .tmp-%s", big, big);
  char *tmp = qb_asprintf (".tmp-%s", big);
  REQUIRE (store_sums_write_unsynced (dfd, tmp, big) == 0);
  free (tmp);
  size_t la, lb;
  char *rel = qb_asprintf (".chain/%s.sums", big);
  uint8_t *a = slurp (rel, &la);
  REQUIRE (store_sums_write (dfd, big) == 0);
  uint8_t *b = slurp (rel, &lb);
  free (rel);
  /* the same entries either way (the header's write time may differ) */
  CHECK (la == lb && la > 136 && memcmp (a + 128, b + 128, la - 136) == 0
         && memcmp (a, b, 48) == 0);
  free (a);
  free (b);
  nd = check_entries (big, 16, counts, hosts, guests);
  CHECK (nd == 641 && counts[1] == 16);
  REQUIRE (store_verify_layer (dfd, big, &rep) == 0);
  CHECK (rep.result == STORE_VERIFY_OK && rep.clusters == 641);
  for (int k = 0; k < 3; k++)
    flip_found (big, hosts[k], guests[k]);

  sh ("rm -rf '%s'", dir);
  if (failures)
    fprintf (stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
