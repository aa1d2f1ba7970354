/* qmpbackupfs — unit test of the per-cluster checksums (store/sums.c) on real
 * qcow2 layers made by qemu-img/qemu-io: data, zero and compressed clusters
 * summed and verified; a flipped data byte found at its guest and host
 * offset; a damaged, truncated, hostile or foreign .sums file reported as
 * sums-damaged (never as layer damage) with bounded memory (a 1 TiB sparse
 * .sums file, a huge claimed count); a linked .sums file not followed; a
 * layer without sums unverifiable; a layer removed meanwhile "gone"; the
 * verify record turned into scan damage only for the very file it judged. */
#include "storecheck.h"
#include "sumsfile.h"
#include "store/store.h"
#include "store/sums.h"
#include "common/util.h"

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define LAYER "FULL-20261126T045000Z"
#define SUMS ".chain/" LAYER ".sums"

/* Replace file REL of DIR with LEN bytes of P. */
static void
spit (const char *rel, const uint8_t *p, size_t len)
{
  unlinkat (dfd, rel, 0);
  int fd = openat (dfd, rel, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  REQUIRE (fd >= 0 && write (fd, p, len) == (ssize_t) len);
  close (fd);
}

static void
put64 (uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t) (v >> (8 * i));
}

/* Recompute the trailer of sums file image P (LEN bytes), as a forger would. */
static void
reseal (uint8_t *p, size_t len)
{
  uint64_t seed = XXH3_64bits (p + 128, len - 136);
  put64 (p + len - 8, XXH3_64bits_withSeed (p, 128, seed));
}

/* Verify LAYER and return its result; *REP filled. */
static store_verify_result
verify (store_verify_report *rep)
{
  qb_error_clear ();
  REQUIRE (store_verify_layer (dfd, LAYER, rep) == 0);
  CHECK (rep->nlisted <= STORE_VERIFY_LISTED && rep->damaged >= rep->nlisted);
  return rep->result;
}

/* Peak resident memory of this process, KiB. */
static long
maxrss_kib (void)
{
  struct rusage ru;
  getrusage (RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

int
main (void)
{
  if (system ("command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") != 0) {
    printf ("SKIP: qemu-img or qemu-io missing\n");
    return 77;
  }
  snprintf (dir, sizeof dir, "%s/qb-sums-XXXXXX", getenv ("TMPDIR") ? getenv ("TMPDIR") : "/tmp");
  REQUIRE (mkdtemp (dir));
  dfd = open (dir, O_RDONLY | O_DIRECTORY);
  REQUIRE (dfd >= 0);
  store_verify_report rep;

  /* A layer with data, a zero cluster and compressed clusters. */
  sh ("qemu-img create -q -f qcow2 -o compat=1.1 " LAYER " 8M");
  sh ("qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -z 1M 64k' -c 'write -P 0x22 3M 64k' "
      "-c 'write -c -P 0x33 4M 128k' " LAYER " >/dev/null");

  /* No sums yet: unverifiable, not damage. */
  CHECK (verify (&rep) == STORE_VERIFY_UNVERIFIABLE);
  CHECK (strstr (rep.why, "no checksums") != NULL);

  REQUIRE (store_sums_write (dfd, LAYER) == 0);
  struct stat sb;
  REQUIRE (fstatat (dfd, SUMS, &sb, AT_SYMLINK_NOFOLLOW) == 0);
  CHECK ((sb.st_mode & 0777) == 0600);
  CHECK (verify (&rep) == STORE_VERIFY_OK);
  /* 16 data + 1 zero + 2 compressed clusters of 64 KiB */
  CHECK (rep.clusters == 16 + 1 + 2);
  CHECK (rep.damaged == 0);
  size_t slen;
  uint8_t *good = slurp (SUMS, &slen);
  CHECK (slen == 128 + 24 * 20 + 8);

  /* A flipped byte in a compressed cluster's stored bytes is found too. */
  /* (its host offset is in the entry for guest 4M) */
  uint64_t comp_host = 0, data_host = 0;
  for (size_t i = 0; i < (slen - 136) / 24; i++) {
    uint64_t g = get64 (good + 128 + 24 * i);
    if ((g & ~0x1ffull) == (4u << 20) && (g & 0x1ff) == 2)
      comp_host = get64 (good + 128 + 24 * i + 8);
    if ((g & ~0x1ffull) == (3u << 20) && (g & 0x1ff) == 0)
      data_host = get64 (good + 128 + 24 * i + 8);
  }
  CHECK (comp_host != 0 && data_host != 0);

  /* One flipped data byte in the middle of guest cluster 3M. */
  int lfd = openat (dfd, LAYER, O_RDWR);
  REQUIRE (lfd >= 0);
  uint8_t b;
  REQUIRE (pread (lfd, &b, 1, (off_t) data_host + 30000) == 1);
  b ^= 4;
  REQUIRE (pwrite (lfd, &b, 1, (off_t) data_host + 30000) == 1);
  CHECK (verify (&rep) == STORE_VERIFY_DAMAGED);
  CHECK (rep.damaged == 1 && rep.guest[0] == (3u << 20) && rep.host[0] == data_host);
  b ^= 4;
  REQUIRE (pwrite (lfd, &b, 1, (off_t) data_host + 30000) == 1);
  REQUIRE (pread (lfd, &b, 1, (off_t) comp_host + 10) == 1);
  b ^= 1;
  REQUIRE (pwrite (lfd, &b, 1, (off_t) comp_host + 10) == 1);
  CHECK (verify (&rep) == STORE_VERIFY_DAMAGED);
  /* the sectors of a compressed cluster may hold the start of the next one
     (QEMU allocates them in either order): a flip there marks both */
  CHECK (rep.damaged >= 1 && rep.damaged <= 2
         && (rep.guest[0] == (4u << 20) || rep.guest[rep.nlisted - 1] == (4u << 20)));
  b ^= 1;
  REQUIRE (pwrite (lfd, &b, 1, (off_t) comp_host + 10) == 1);
  CHECK (verify (&rep) == STORE_VERIFY_OK);

  /* The kept record becomes scan damage only for the file it judged. */
  REQUIRE (pread (lfd, &b, 1, (off_t) data_host + 1) == 1);
  b ^= 8;
  REQUIRE (pwrite (lfd, &b, 1, (off_t) data_host + 1) == 1);
  CHECK (verify (&rep) == STORE_VERIFY_DAMAGED);
  CHECK (store_verify_save (dfd, LAYER, &rep, T0) == 0);
  struct stat lsb;
  REQUIRE (fstatat (dfd, LAYER, &lsb, AT_SYMLINK_NOFOLLOW) == 0);
  char *dmg = store_verify_damage (dfd, LAYER, &lsb);
  CHECK (dmg && strstr (dmg, "verify at 2026-11-26T04:50:00Z found 1 damaged cluster at guest "
                        "offsets 3145728") && strstr (dmg, "restore from another point"));
  free (dmg);
  lsb.st_mtim.tv_nsec ^= 1;     /* another file (replaced since): not judged */
  CHECK (store_verify_damage (dfd, LAYER, &lsb) == NULL);
  b ^= 8;
  REQUIRE (pwrite (lfd, &b, 1, (off_t) data_host + 1) == 1);
  close (lfd);
  CHECK (verify (&rep) == STORE_VERIFY_OK);

  /* Hostile or damaged .sums files: told apart, bounded. */
  uint8_t *p = malloc (slen);
  memcpy (p, good, slen);
  spit (SUMS, p, slen - 5);                                  /* truncated */
  CHECK (verify (&rep) == STORE_VERIFY_SUMS_DAMAGED && rep.damaged == 0);
  spit (SUMS, p, 0);                                         /* empty */
  CHECK (verify (&rep) == STORE_VERIFY_SUMS_DAMAGED);
  p[0] = 'X';                                                /* wrong magic */
  spit (SUMS, p, slen);
  CHECK (verify (&rep) == STORE_VERIFY_SUMS_DAMAGED && strstr (rep.why, "magic"));
  memcpy (p, good, slen);
  put64 (p + 32, UINT64_MAX / 2);                            /* a huge claimed count */
  reseal (p, slen);
  spit (SUMS, p, slen);
  CHECK (verify (&rep) == STORE_VERIFY_SUMS_DAMAGED && strstr (rep.why, "count"));
  memcpy (p, good, slen);
  p[128 + 24 * 3 + 17] ^= 1;                                 /* an entry flipped */
  spit (SUMS, p, slen);
  CHECK (verify (&rep) == STORE_VERIFY_SUMS_DAMAGED && strstr (rep.why, "own checksum"));
  memcpy (p, good, slen);
  memcpy (p + 128, good + 128 + 24, 24);                     /* out of order, resealed */
  memcpy (p + 128 + 24, good + 128, 24);
  reseal (p, slen);
  spit (SUMS, p, slen);
  CHECK (verify (&rep) == STORE_VERIFY_SUMS_DAMAGED && strstr (rep.why, "order"));
  memcpy (p, good, slen);
  memcpy (p + 56, "INC-20261126T045000Z", 21);               /* another layer's sums */
  reseal (p, slen);
  spit (SUMS, p, slen);
  CHECK (verify (&rep) == STORE_VERIFY_SUMS_DAMAGED && strstr (rep.why, "another layer"));
  memcpy (p, good, slen);
  put64 (p + 128 + 16, get64 (p + 128 + 16) ^ 1);            /* a forged sum, resealed */
  reseal (p, slen);
  spit (SUMS, p, slen);
  CHECK (verify (&rep) == STORE_VERIFY_DAMAGED && rep.damaged == 1 && rep.guest[0] == 0);

  /* A 1 TiB sparse .sums file: refused by its length, nothing read. */
  long rss0 = maxrss_kib ();
  unlinkat (dfd, SUMS, 0);
  int sfd = openat (dfd, SUMS, O_WRONLY | O_CREAT, 0600);
  REQUIRE (sfd >= 0 && ftruncate (sfd, (off_t) 1 << 40) == 0 && pwrite (sfd, good, 128, 0) == 128);
  close (sfd);
  CHECK (verify (&rep) == STORE_VERIFY_SUMS_DAMAGED && strstr (rep.why, "length"));
  CHECK (maxrss_kib () - rss0 < 64 * 1024);

  /* A linked .sums file is not followed. */
  spit ("elsewhere.sums", good, slen);
  unlinkat (dfd, SUMS, 0);
  REQUIRE (symlinkat ("../elsewhere.sums", dfd, SUMS) == 0);
  CHECK (verify (&rep) == STORE_VERIFY_UNVERIFIABLE && strstr (rep.why, "symbolic link"));
  unlinkat (dfd, SUMS, 0);

  /* Rewriting the sums drops the old verify record; remove takes both. */
  REQUIRE (store_sums_write (dfd, LAYER) == 0);
  CHECK (faccessat (dfd, ".chain/" LAYER ".verify.json", F_OK, AT_SYMLINK_NOFOLLOW) < 0);
  CHECK (verify (&rep) == STORE_VERIFY_OK);
  CHECK (store_verify_save (dfd, LAYER, &rep, T0) == 0);
  CHECK (store_sums_remove (dfd, LAYER) == 0);
  CHECK (faccessat (dfd, SUMS, F_OK, AT_SYMLINK_NOFOLLOW) < 0);
  CHECK (faccessat (dfd, ".chain/" LAYER ".verify.json", F_OK, AT_SYMLINK_NOFOLLOW) < 0);
  CHECK (store_sums_remove (dfd, LAYER) == 0);               /* none is fine */
  CHECK (store_sums_remove (dfd, "../x") == -1);

  /* Damaged metadata: the structure check speaks. */
  REQUIRE (store_sums_write (dfd, LAYER) == 0);
  sh ("printf '\\377\\377\\377\\377\\377\\377\\377\\377' | dd of=" LAYER
      " bs=1 seek=$(( $(od -An -tu8 -j40 -N8 --endian=big " LAYER ") )) conv=notrunc status=none");
  CHECK (verify (&rep) == STORE_VERIFY_DAMAGED && rep.why[0]);

  /* A layer removed meanwhile is gone, not damaged; a non-qcow2 file is damaged. */
  unlinkat (dfd, LAYER, 0);
  CHECK (verify (&rep) == STORE_VERIFY_GONE);
  CHECK (store_verify_save (dfd, LAYER, &rep, T0) == 0);
  spit (LAYER, (const uint8_t *) "not a qcow2 image", 17);
  CHECK (verify (&rep) == STORE_VERIFY_DAMAGED);
  CHECK (store_sums_write (dfd, LAYER) == -1 && qb_error_code () == QB_EDAMAGED);

  free (p);
  free (good);
  sh ("rm -rf '%s'", dir);
  if (failures)
    fprintf (stderr, "%d check(s) failed\n", failures);
  else
    printf ("sums: all checks passed\n");
  return failures ? 1 : 0;
}
