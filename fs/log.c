/* qmpbackupfs — the daemon's log: one escaped line per event, on stderr
 * (seen with -f) and, once the daemon is in the background, in syslog.
 * Messages carry text from guests, QMP peers and the store; nothing in them
 * may start a new line or reach a terminal as a control sequence. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "fs/fs.h"

#define LOG_LINE_MAX 2048

static bool log_syslog;

/* Log in the background to syslog as well as stderr. */
void
fs_log_init (bool foreground)
{
  if (!foreground) {
    openlog ("qmpbackupfs", LOG_PID, LOG_DAEMON);
    log_syslog = true;
  }
}

/* Copy IN to OUT (OUTLEN bytes), control bytes, DEL and bytes >= 0x80 as
 * \xNN; truncated with "..." when it does not fit.  (Backslashes stay: text
 * from peers arrives already escaped by the wire clients, and a backslash
 * cannot forge a line or drive a terminal.) */
void
fs_log_escape (const char *in, char *out, size_t outlen)
{
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *) in; *p; p++) {
    if (o + 8 >= outlen) {
      memcpy (out + o, "...", 3);
      o += 3;
      break;
    }
    if (*p < 0x20 || *p >= 0x7f) {
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
    }
    else
      out[o++] = *p;
  }
  out[o] = '\0';
}

/* Log one escaped line. */
void
fs_log (const char *fmt, ...)
{
  char raw[LOG_LINE_MAX], line[LOG_LINE_MAX];
  va_list ap;
  va_start (ap, fmt);
  vsnprintf (raw, sizeof raw, fmt, ap);
  va_end (ap);
  fs_log_escape (raw, line, sizeof line);
  fprintf (stderr, "qmpbackupfs: %s\n", line);
  if (log_syslog)
    syslog (LOG_WARNING, "%s", line);
}
