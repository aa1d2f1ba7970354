/* Fuzz target: the control-file grammar (fs/control-parse.c).
 *
 * Input: the bytes of one write to <vm>/backup.  Invariants: the parser
 * accepts exactly the lines SPEC.md allows — a level word, optionally one of
 * quiesce/noquiesce, blanks around, one trailing newline — and on rejection
 * leaves a reason and touches neither output. */
#include "fuzz.h"
#include "fs/control-parse.h"

#include <string.h>

/* True if WORD (LEN bytes) is one of the NULL-terminated WORDS. */
static bool
one_of (const char *word, size_t len, const char *const *words)
{
  for (; *words; words++)
    if (strlen (*words) == len && memcmp (word, *words, len) == 0)
      return true;
  return false;
}

/* The reference grammar, written independently of the parser. */
static bool
reference_accepts (const uint8_t *data, size_t size)
{
  static const char *const levels[] = { "full", "inc", "auto", "copy", NULL };
  static const char *const modes[] = { "quiesce", "noquiesce", NULL };
  if (size == 0 || size > CONTROL_MAX)
    return false;
  size_t end = size;
  if (end && data[end - 1] == '\n')
    end--;
  if (end && data[end - 1] == '\r')
    end--;
  const char *w[3];
  size_t wl[3];
  int n = 0;
  for (size_t i = 0; i < end;) {
    if (data[i] == ' ' || data[i] == '\t') {
      i++;
      continue;
    }
    size_t j = i;
    while (j < end && data[j] != ' ' && data[j] != '\t') {
      if (data[j] < 0x20 || data[j] >= 0x7f)
        return false;
      j++;
    }
    if (n == 2)
      return false;
    w[n] = (const char *) data + i;
    wl[n++] = j - i;
    i = j;
  }
  return n >= 1 && one_of (w[0], wl[0], levels) && (n == 1 || one_of (w[1], wl[1], modes));
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  backup_level level = (backup_level) 99;
  quiesce_mode q = (quiesce_mode) 99;
  char why[256] = "";
  int r = control_parse ((const char *) data, size, &level, &q, why, sizeof why);
  bool want = reference_accepts (data, size);
  FUZZ_CHECK ((r == 0) == want, "parser says %d, grammar says %d (why: %s)", r, want, why);
  if (r == 0) {
    FUZZ_CHECK (level <= BACKUP_COPY && q <= QUIESCE_OFF, "bad outputs %d %d", level, q);
  } else {
    FUZZ_CHECK (why[0] != '\0', "rejected without a reason");
    FUZZ_CHECK (level == (backup_level) 99 && q == (quiesce_mode) 99, "outputs touched on error");
  }
  return 0;
}
