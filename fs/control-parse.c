/* qmpbackupfs — the control file's grammar (SPEC.md "The control file"):
 * "full|inc|auto|copy [quiesce|noquiesce]", one line.  Pure: no FUSE, no I/O,
 * so it can be fuzzed on its own. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "fs/control-parse.h"

/* Parse a control line: "full|inc|auto|copy [quiesce|noquiesce]" with an
 * optional trailing newline.  0, or -1 with the reason in WHY. */
int
control_parse (const char *buf, size_t size, backup_level *level, quiesce_mode *q,
               char *why, size_t whylen)
{
  if (size == 0) {
    snprintf (why, whylen, "empty write to the control file");
    return -1;
  }
  if (size > CONTROL_MAX) {
    snprintf (why, whylen, "control write of %zu bytes is too long (expected a line "
              "like \"full\", \"inc\", \"auto\" or \"copy\" [quiesce|noquiesce])", size);
    return -1;
  }
  char line[CONTROL_MAX + 1];
  memcpy (line, buf, size);
  line[size] = '\0';
  if (size > 0 && line[size - 1] == '\n')
    line[--size] = '\0';
  if (size > 0 && line[size - 1] == '\r')
    line[--size] = '\0';
  for (size_t i = 0; i < size; i++) {
    unsigned char c = line[i];
    if ((c < 0x20 && c != '\t') || c >= 0x7f) {
      snprintf (why, whylen, "control write contains binary data (byte 0x%02x at %zu)", c, i);
      return -1;
    }
  }
  char *words[3];
  int n = 0;
  char *save = NULL;
  for (char *w = strtok_r (line, " \t", &save); w; w = strtok_r (NULL, " \t", &save)) {
    if (n == 2) {
      snprintf (why, whylen, "too many words in control write (expected LEVEL [quiesce|noquiesce])");
      return -1;
    }
    words[n++] = w;
  }
  if (n == 0) {
    snprintf (why, whylen, "blank control write (expected full, inc, auto or copy)");
    return -1;
  }
  backup_level l;
  quiesce_mode m = QUIESCE_DEFAULT;
  if (strcmp (words[0], "full") == 0) l = BACKUP_FULL;
  else if (strcmp (words[0], "inc") == 0) l = BACKUP_INC;
  else if (strcmp (words[0], "auto") == 0) l = BACKUP_AUTO;
  else if (strcmp (words[0], "copy") == 0) l = BACKUP_COPY;
  else {
    snprintf (why, whylen, "unknown backup level \"%.40s\" (expected full, inc, auto or copy)",
              words[0]);
    return -1;
  }
  if (n == 2) {
    if (strcmp (words[1], "quiesce") == 0) m = QUIESCE_ON;
    else if (strcmp (words[1], "noquiesce") == 0) m = QUIESCE_OFF;
    else {
      snprintf (why, whylen, "unknown word \"%.40s\" (expected quiesce or noquiesce)", words[1]);
      return -1;
    }
  }
  *level = l;
  *q = m;
  return 0;
}

/* "verify", optionally followed by a newline (or CR LF). */
bool
control_is_verify (const char *buf, size_t size)
{
  if (size > 0 && buf[size - 1] == '\n')
    size--;
  if (size > 0 && buf[size - 1] == '\r')
    size--;
  return size == 6 && memcmp (buf, "verify", 6) == 0;
}
