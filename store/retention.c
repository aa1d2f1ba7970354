/* qmpbackupfs — the retention policy: parsing it and selecting the points
 * it keeps (rules in retention.h).
 *
 * Selection sorts the points newest first (a reversal when they come in
 * time order, as scans give them), converts each time to local time once,
 * packed into 64 bits, then makes one linear pass per option with a hash
 * table of the buckets seen.  Nothing is quadratic; memory is about
 * 17 bytes per point plus the tables. */
#include "retention.h"
#include "common/error.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define US_PER_S INT64_C(1000000)

/* The accepted keys, for messages. */
#define RET_KEYS "last, hourly, daily, weekly, monthly, yearly, within"

/* The counting rules in the order they are applied. */
enum { R_LAST, R_HOURLY, R_DAILY, R_WEEKLY, R_MONTHLY, R_YEARLY, R_NRULES };

static const char *const rule_names[R_NRULES] = {
  "last", "hourly", "daily", "weekly", "monthly", "yearly",
};

/* A point's state during selection (one byte per point). */
enum {
  S_OPEN = 0,            /* not decided yet */
  /* 1 .. R_NRULES: kept by rule state-1 */
  S_WITHIN = R_NRULES + 1,
  S_NEWEST,
  S_REMOVED = 0x80,      /* passed over inside a bucket an option kept */
};

/* The count a rule keeps in P (0: not given). */
static unsigned
rule_count (const store_retention *p, int r)
{
  switch (r) {
  case R_LAST: return p->last;
  case R_HOURLY: return p->hourly;
  case R_DAILY: return p->daily;
  case R_WEEKLY: return p->weekly;
  case R_MONTHLY: return p->monthly;
  default: return p->yearly;
  }
}

/* Store N as rule R's count in P. */
static void
rule_set (store_retention *p, int r, unsigned n)
{
  switch (r) {
  case R_LAST: p->last = n; break;
  case R_HOURLY: p->hourly = n; break;
  case R_DAILY: p->daily = n; break;
  case R_WEEKLY: p->weekly = n; break;
  case R_MONTHLY: p->monthly = n; break;
  default: p->yearly = n; break;
  }
}

bool
store_retention_empty (const store_retention *p)
{
  if (!p)
    return true;
  for (int r = 0; r < R_NRULES; r++)
    if (rule_count (p, r))
      return false;
  return p->within_us <= 0;
}

/* ---- parsing ---- */

/* Copy at most 48 bytes of S[0..LEN) into BUF (64 bytes) for a message,
 * with bytes outside printable ASCII shown as '?' and "..." when cut. */
static const char *
ret_quote (const char *s, size_t len, char buf[64])
{
  size_t k = 0;
  for (size_t i = 0; i < len && k < 48; i++)
    buf[k++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
  if (len > 48) {
    memcpy (buf + k, "...", 3);
    k += 3;
  }
  buf[k] = '\0';
  return buf;
}

/* Parse decimal digits S[0..LEN) into *V (at most MAX); false if empty,
 * not all digits, or above MAX. */
static bool
ret_digits (const char *s, size_t len, uint64_t max, uint64_t *v)
{
  uint64_t x = 0;
  if (len == 0)
    return false;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return false;
    unsigned d = (unsigned) (s[i] - '0');
    if (x > (max - d) / 10)
      return false;
    x = x * 10 + d;
  }
  *v = x;
  return true;
}

/* Parse the duration S[0..LEN) into *US (see store_retention_parse_duration). */
static int
ret_duration (const char *s, size_t len, int64_t *us)
{
  static const char units[] = "ymwdhs";
  static const int64_t unit_s[] = {
    365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 1,
  };
  char q[64], q2[64];
  size_t i = 0;
  int next_unit = 0;           /* units before this one are no longer allowed */
  int64_t total = 0;           /* seconds */

  if (len == 0)
    return qb_error_set (QB_EINVAL, "empty duration: give NUMBER UNIT, e.g. 30d "
                         "(units y=365d, m=30d, w=7d, d, h, s)");
  while (i < len) {
    size_t d0 = i;
    while (i < len && s[i] >= '0' && s[i] <= '9')
      i++;
    uint64_t v;
    if (i == d0 || i == len) {
      return qb_error_set (QB_EINVAL, "bad duration \"%s\": give NUMBER UNIT groups, "
                           "e.g. 30d, 2w, 1y6m (units y=365d, m=30d, w=7d, d, h, s)",
                           ret_quote (s, len, q));
    }
    const char *u = memchr (units, s[i], sizeof units - 1);
    if (!u)
      return qb_error_set (QB_EINVAL, "bad duration \"%s\": unknown unit '%c' "
                           "(units y=365d, m=30d, w=7d, d, h, s)",
                           ret_quote (s, len, q),
                           (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?');
    int k = (int) (u - units);
    if (k < next_unit)
      return qb_error_set (QB_EINVAL, "bad duration \"%s\": each unit at most once, "
                           "in the order y, m, w, d, h, s", ret_quote (s, len, q));
    if (!ret_digits (s + d0, i - d0, INT64_MAX, &v) || v == 0)
      return qb_error_set (QB_EINVAL, "bad duration \"%s\": \"%s\" must be a number "
                           "from 1 up", ret_quote (s, len, q),
                           ret_quote (s + d0, i - d0 + 1, q2));
    if ((int64_t) v > (INT64_MAX / US_PER_S - total) / unit_s[k])
      return qb_error_set (QB_EINVAL, "duration \"%s\" is too long",
                           ret_quote (s, len, q));
    total += (int64_t) v * unit_s[k];
    next_unit = k + 1;
    i++;
  }
  *us = total * US_PER_S;
  return 0;
}

int
store_retention_parse_duration (const char *s, int64_t *us)
{
  if (!s || !us)
    return qb_error_set (QB_EINVAL, "store_retention_parse_duration: NULL argument");
  int64_t v;
  if (ret_duration (s, strlen (s), &v) == -1)
    return -1;
  *us = v;
  return 0;
}

int
store_retention_parse (const char *spec, store_retention *p)
{
  char q[64];
  store_retention r = { 0 };
  unsigned seen = 0;

  if (!spec || !p)
    return qb_error_set (QB_EINVAL, "store_retention_parse: NULL argument");
  memset (p, 0, sizeof *p);
  if (*spec == '\0')
    return qb_error_set (QB_EINVAL, "empty retention policy: give KEY=VALUE items "
                         "separated by commas, e.g. daily=7,weekly=4 (keys: " RET_KEYS ")");

  const char *s = spec;
  for (;;) {
    const char *end = strchr (s, ',');
    size_t len = end ? (size_t) (end - s) : strlen (s);
    const char *eq = memchr (s, '=', len);

    if (len == 0)
      return qb_error_set (QB_EINVAL, "retention policy \"%s\": empty item at offset %zu "
                           "(items are KEY=VALUE separated by single commas; keys: "
                           RET_KEYS ")", ret_quote (spec, strlen (spec), q),
                           (size_t) (s - spec));
    if (!eq)
      return qb_error_set (QB_EINVAL, "retention policy: \"%s\" is not KEY=VALUE "
                           "(keys: " RET_KEYS ")", ret_quote (s, len, q));

    size_t klen = (size_t) (eq - s);
    const char *val = eq + 1;
    size_t vlen = len - klen - 1;
    int key = -1;
    for (int k = 0; k < R_NRULES; k++)
      if (klen == strlen (rule_names[k]) && memcmp (s, rule_names[k], klen) == 0)
        key = k;
    if (key == -1 && klen == 6 && memcmp (s, "within", 6) == 0)
      key = R_NRULES;
    if (key == -1)
      return qb_error_set (QB_EINVAL, "retention policy: unknown key \"%s\" "
                           "(keys: " RET_KEYS ")", ret_quote (s, klen, q));
    if (seen & (1u << key))
      return qb_error_set (QB_EINVAL, "retention policy: \"%s\" is given twice",
                           ret_quote (s, klen, q));
    seen |= 1u << key;

    if (key == R_NRULES) {
      if (ret_duration (val, vlen, &r.within_us) == -1) {
        qb_error_prefix ("retention policy, within");
        return -1;
      }
    }
    else {
      uint64_t v;
      if (!ret_digits (val, vlen, UINT_MAX, &v) || v == 0)
        return qb_error_set (QB_EINVAL, "retention policy: %s=\"%s\": the value must be a "
                             "whole number from 1 to %u", rule_names[key],
                             ret_quote (val, vlen, q), UINT_MAX);
      rule_set (&r, key, (unsigned) v);
    }
    if (!end)
      break;
    s = end + 1;
  }
  *p = r;
  return 0;
}

int
store_retention_format (const store_retention *p, char *buf, size_t len)
{
  static const struct { char u; int64_t s; } units[] = {
    { 'd', 86400 }, { 'h', 3600 }, { 's', 1 },
  };
  char out[256];
  size_t k = 0;

  if (!p || (!buf && len))
    return qb_error_set (QB_EINVAL, "store_retention_format: NULL argument");
  out[0] = '\0';
  for (int r = 0; r < R_NRULES; r++)
    if (rule_count (p, r))
      k += (size_t) snprintf (out + k, sizeof out - k, "%s%s=%u", k ? "," : "",
                              rule_names[r], rule_count (p, r));
  if (p->within_us > 0) {
    /* Whole seconds, rounded up, as days, hours and seconds (the exact units). */
    int64_t sec = p->within_us / US_PER_S + (p->within_us % US_PER_S != 0);
    k += (size_t) snprintf (out + k, sizeof out - k, "%swithin=", k ? "," : "");
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++)
      if (sec >= units[u].s) {
        k += (size_t) snprintf (out + k, sizeof out - k, "%" PRId64 "%c",
                                sec / units[u].s, units[u].u);
        sec %= units[u].s;
      }
  }
  if (len)
    snprintf (buf, len, "%s", out);
  return (int) k;
}

/* ---- local time, packed ----
 *
 * bits 63..32  year + 2^31 (as uint32)
 * bits 31..28  month (1..12)
 * bits 27..23  day of month (1..31)
 * bits 22..18  hour (0..23)
 * bits  7..6   ISO week-year minus year, plus 1 (0, 1 or 2)
 * bits  5..0   ISO week (1..53)
 *
 * so that a right shift gives the hour, day, month and year buckets.
 */

/* Days in Gregorian year Y. */
static int
year_days (int64_t y)
{
  return (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 366 : 365;
}

/* Convert T_US to local time and pack it into *OUT; -1 (QB_EINVAL) if the
 * C library cannot. */
static int
ret_local (int64_t t_us, uint64_t *out)
{
  time_t sec = (time_t) (t_us / US_PER_S - (t_us % US_PER_S < 0));
  struct tm tm;
  char b[32];

  if (!localtime_r (&sec, &tm))
    goto bad;
  int64_t y = (int64_t) tm.tm_year + 1900;
  if (y < INT32_MIN + 1 || y > INT32_MAX - 1)
    goto bad;
  /* The ISO week is the week of its Thursday: its year is the Thursday's,
   * its number the Thursday's day of that year / 7 + 1. */
  int wday = (tm.tm_wday + 6) % 7;           /* Monday 0 .. Sunday 6 */
  int64_t thu = (int64_t) tm.tm_yday - wday + 3, gy = y;
  if (thu < 0) {
    gy = y - 1;
    thu += year_days (gy);
  }
  else if (thu >= year_days (y)) {
    thu -= year_days (y);
    gy = y + 1;
  }
  uint64_t week = (uint64_t) (thu / 7 + 1);
  *out = ((uint64_t) (uint32_t) ((int64_t) y + INT64_C(0x80000000)) << 32)
    | ((uint64_t) (tm.tm_mon + 1) << 28)
    | ((uint64_t) tm.tm_mday << 23)
    | ((uint64_t) tm.tm_hour << 18)
    | ((uint64_t) (gy - y + 1) << 6)
    | week;
  return 0;

 bad:
  snprintf (b, sizeof b, "%" PRId64, t_us);
  return qb_error_set (QB_EINVAL, "restore point time %s us cannot be converted "
                       "to local time", b);
}

/* The bucket of packed local time L for counting rule R (hourly..yearly). */
static uint64_t
ret_bucket (uint64_t l, int r)
{
  switch (r) {
  case R_HOURLY: return l >> 18;
  case R_DAILY: return l >> 23;
  case R_WEEKLY:                  /* (week-year, week) */
    return ((((l >> 32) + ((l >> 6) & 3)) - 1) << 6) | (l & 63);
  case R_MONTHLY: return l >> 28;
  default: return l >> 32;
  }
}

/* ---- a hash table of buckets ---- */

enum { B_EMPTY = 0, B_ALREADY, B_TAKEN };

typedef struct ret_slot {
  uint64_t key;
  uint8_t flag;
} ret_slot;

typedef struct ret_table {
  ret_slot *slots;
  size_t cap;            /* a power of two */
  size_t used;
} ret_table;

/* Mix K into a table index. */
static size_t
ret_hash (uint64_t k)
{
  k ^= k >> 33;
  k *= UINT64_C(0xff51afd7ed558ccd);
  k ^= k >> 33;
  k *= UINT64_C(0xc4ceb9fe1a85ec53);
  k ^= k >> 33;
  return (size_t) k;
}

/* The slot of KEY in T (empty if absent; T has at least one slot). */
static ret_slot *
ret_find (ret_table *t, uint64_t key)
{
  size_t m = t->cap - 1, i = ret_hash (key) & m;
  while (t->slots[i].flag != B_EMPTY && t->slots[i].key != key)
    i = (i + 1) & m;
  return &t->slots[i];
}

/* Add KEY with FLAG to T (KEY absent), growing at half load.  0 or -1 (QB_ENOMEM). */
static int
ret_add (ret_table *t, uint64_t key, uint8_t flag)
{
  if (2 * (t->used + 1) > t->cap) {
    size_t ncap = 2 * t->cap;
    ret_slot *ns = calloc (ncap, sizeof *ns);
    if (!ns)
      return qb_error_set (QB_ENOMEM, "out of memory for the retention buckets");
    ret_table nt = { ns, ncap, 0 };
    for (size_t i = 0; i < t->cap; i++)
      if (t->slots[i].flag != B_EMPTY)
        *ret_find (&nt, t->slots[i].key) = t->slots[i];
    nt.used = t->used;
    free (t->slots);
    *t = nt;
  }
  ret_slot *s = ret_find (t, key);
  s->key = key;
  s->flag = flag;
  t->used++;
  return 0;
}

/* Empty T, keeping its memory. */
static void
ret_clear (ret_table *t)
{
  if (t->slots)
    memset (t->slots, 0, t->cap * sizeof *t->slots);
  t->used = 0;
}

/* ---- selection ---- */

/* qsort_r order: newest first, the later index first among equal times. */
static int
ret_cmp (const void *a, const void *b, void *arg)
{
  const int64_t *t = arg;
  size_t i = *(const size_t *) a, j = *(const size_t *) b;
  if (t[i] != t[j])
    return t[i] > t[j] ? -1 : 1;
  return i > j ? -1 : (i < j);
}

/* Apply counting rule R, keeping up to N buckets, to the points in newest-
 * first order (LOC their packed local times, ST their states).  0 or -1. */
static int
ret_rule (int r, unsigned n, size_t np, const uint64_t *loc, uint8_t *st, ret_table *t)
{
  if (r == R_LAST) {
    for (size_t k = 0, c = 0; k < np && c < n; k++)
      if (st[k] == S_OPEN) {
        st[k] = (uint8_t) (R_LAST + 1);
        c++;
      }
    return 0;
  }
  ret_clear (t);
  for (size_t k = 0; k < np; k++)
    if (st[k] >= 1 && st[k] <= R_NRULES) {
      ret_slot *s = ret_find (t, ret_bucket (loc[k], r));
      if (s->flag == B_EMPTY && ret_add (t, ret_bucket (loc[k], r), B_ALREADY) == -1)
        return -1;
    }
  unsigned c = 0;
  for (size_t k = 0; k < np; k++) {
    if (st[k] != S_OPEN)
      continue;
    uint64_t b = ret_bucket (loc[k], r);
    ret_slot *s = ret_find (t, b);
    if (s->flag == B_ALREADY)
      continue;
    if (s->flag == B_EMPTY) {
      if (c >= n)
        break;
      if (ret_add (t, b, B_TAKEN) == -1)
        return -1;
      c++;
      st[k] = (uint8_t) (r + 1);
    }
    else
      st[k] = S_REMOVED;
  }
  return 0;
}

/* The WHY string of state S (NULL: removed). */
static const char *
ret_why (uint8_t s)
{
  if (s >= 1 && s <= R_NRULES)
    return rule_names[s - 1];
  if (s == S_WITHIN)
    return "within";
  if (s == S_NEWEST)
    return "newest";
  return NULL;
}

int
store_retention_select (const int64_t *times_us, size_t n, const store_retention *p,
                        uint8_t *keep, const char **why)
{
  size_t *order = NULL;
  uint64_t *loc = NULL;
  uint8_t *st = NULL;
  ret_table t = { 0 };
  int ret = -1;

  if (n == 0)
    return 0;
  if (!keep)
    return qb_error_set (QB_EINVAL, "store_retention_select: NULL argument");
  /* Until decided, everything is kept. */
  memset (keep, 1, n);
  if (why)
    for (size_t i = 0; i < n; i++)
      why[i] = NULL;
  if (!times_us || !p)
    return qb_error_set (QB_EINVAL, "store_retention_select: NULL argument");

  if (store_retention_empty (p)) {
    if (why)
      for (size_t i = 0; i < n; i++)
        why[i] = "all";
    return 0;
  }

  if (n > SIZE_MAX / sizeof *order
      || !(order = malloc (n * sizeof *order))
      || !(loc = malloc (n * sizeof *loc))
      || !(st = calloc (n, 1))) {
    qb_error_set (QB_ENOMEM, "out of memory selecting among %zu restore points", n);
    goto out;
  }

  bool ascending = true;
  for (size_t i = 1; i < n && ascending; i++)
    ascending = times_us[i - 1] <= times_us[i];
  for (size_t k = 0; k < n; k++)
    order[k] = n - 1 - k;
  if (!ascending)
    qsort_r (order, n, sizeof *order, ret_cmp, (void *) times_us);

  bool buckets = p->hourly || p->daily || p->weekly || p->monthly || p->yearly;
  if (buckets && !(t.slots = calloc (t.cap = 64, sizeof *t.slots))) {
    qb_error_set (QB_ENOMEM, "out of memory for the retention buckets");
    goto out;
  }
  if (buckets)
    for (size_t k = 0; k < n; k++)
      if (ret_local (times_us[order[k]], &loc[k]) == -1)
        goto out;

  for (int r = 0; r < R_NRULES; r++)
    if (rule_count (p, r) && ret_rule (r, rule_count (p, r), n, loc, st, &t) == -1)
      goto out;

  if (p->within_us > 0) {
    int64_t newest = times_us[order[0]], from;
    if (__builtin_sub_overflow (newest, p->within_us, &from))
      from = INT64_MIN;
    for (size_t k = 0; k < n && times_us[order[k]] >= from; k++)
      if (!(st[k] >= 1 && st[k] <= R_NRULES))
        st[k] = S_WITHIN;
  }
  if (!(st[0] >= 1 && st[0] <= S_WITHIN))
    st[0] = S_NEWEST;

  for (size_t k = 0; k < n; k++) {
    const char *w = ret_why (st[k]);
    keep[order[k]] = w != NULL;
    if (why)
      why[order[k]] = w;
  }
  ret = 0;

 out:
  free (order);
  free (loc);
  free (st);
  free (t.slots);
  return ret;
}
