/* qmpbackupfs — the retention policy: which restore points a prune keeps.
 *
 * A pure module: it sees only the points' times and the policy, never the
 * store.  The removal itself (rewriting qcow2 chains) is done elsewhere.
 *
 * Rules (the same as Proxmox Backup Server's prune for the counting
 * options, restic's --keep-within for WITHIN):
 *
 *  - Points are taken newest first.  Points with equal times are ordered
 *    by their index: the later one in the caller's array counts as newer.
 *  - The options are applied in the order last, hourly, daily, weekly,
 *    monthly, yearly.  LAST keeps the N newest points not yet decided.
 *    Each time-bucket option walks the points newest first and keeps the
 *    newest point of each of the N most recent buckets that hold no point
 *    kept by an earlier option; a further point in a bucket it keeps is
 *    marked removed there and then, and later options skip it.
 *  - Buckets are calendar periods in LOCAL time (the TZ environment):
 *    hour = Y-m-d H, day = Y-m-d, week = ISO 8601 week (%G-%V, Monday to
 *    Sunday, week 1 holds the year's first Thursday), month = Y-m, year = Y.
 *  - WITHIN keeps, in addition, every point no more than WITHIN_US older
 *    than the newest point (not than now); it neither uses nor fills
 *    buckets.
 *  - The newest point is always kept.
 *  - An empty policy keeps every point.
 */
#ifndef QB_STORE_RETENTION_H
#define QB_STORE_RETENTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A retention policy; 0 in a field means the option was not given. */
typedef struct store_retention {
  unsigned last, hourly, daily, weekly, monthly, yearly;
  int64_t within_us;    /* WITHIN as microseconds; 0: not given */
} store_retention;

/* True if P gives no option (such a policy keeps everything). */
bool store_retention_empty (const store_retention *p);

/* Parse a policy in mount-option form, "last=3,hourly=24,daily=7,weekly=4,
 * monthly=12,yearly=5,within=30d", into *P (cleared first): keys in any
 * order, each at most once, separated by single commas, values decimal
 * integers from 1 to 4294967295; WITHIN is a duration as
 * store_retention_parse_duration reads it.  0, or -1 with QB_EINVAL and a
 * message naming the bad part and the accepted keys (*P is then cleared). */
int store_retention_parse (const char *spec, store_retention *p);

/* Parse a duration: one or more NUMBER UNIT groups with units in the order
 * y, m, w, d, h, each at most once ("30d", "2w", "1y6m", "36h"), where
 * h = 3600 s, d = 24 h, w = 7 d, m = 30 d and y = 365 d (fixed lengths:
 * elapsed time, not calendar months).  Result > 0 in *US.  0, or -1 with
 * QB_EINVAL (empty, zero, unknown or repeated unit, out of range). */
int store_retention_parse_duration (const char *s, int64_t *us);

/* Write P in the form store_retention_parse reads ("" for an empty policy;
 * WITHIN in days, hours and seconds, rounded up to whole seconds, e.g.
 * "within=30d", "within=1d12h") into BUF of LEN bytes, NUL-terminated when
 * LEN > 0.  The length it needed
 * (as snprintf), or -1 (QB_EINVAL) for a NULL argument. */
int store_retention_format (const store_retention *p, char *buf, size_t len);

/* Decide which of N restore points to keep under policy P.  TIMES[i] is
 * point i's UTC time in microseconds since the epoch (any order, equal
 * times allowed).  Sets KEEP[i] to 1 (kept) or 0 (removed) and, if WHY is
 * not NULL, WHY[i] to a static string naming the first rule that kept it
 * ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within",
 * "newest" for the newest point when no option kept it, "all" for every
 * point under an empty policy) or NULL if removed.  O(n log n) time, about
 * 20 bytes of memory per point.  0, or -1: QB_EINVAL (NULL argument, a time
 * the C library cannot convert to local time), QB_ENOMEM; on error KEEP is
 * all 1 and WHY all NULL, so nothing is ever removed by mistake. */
int store_retention_select (const int64_t *times_us, size_t n, const store_retention *p,
                            uint8_t *keep, const char **why);

#endif
