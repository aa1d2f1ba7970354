/* qmpbackupfs — bounded reader of newline-separated JSON objects from a
 * socket, shared by the QMP and guest-agent clients.  Every read is bounded
 * in time, size and nesting; garbage, partial lines, oversized or deeply
 * nested input, a peer that closes or stalls: each gives a clear error. */
#ifndef QB_JSONIO_H
#define QB_JSONIO_H

#include <json-c/json.h>
#include <stdatomic.h>
#include <stddef.h>

#define JSONIO_MAX_MESSAGE (64u << 20)  /* one message may not exceed this */
#define JSONIO_MAX_DEPTH 64             /* nesting limit */

typedef struct jsonio jsonio;

/* Wrap connected socket FD (owned: closed by jsonio_free). */
jsonio *jsonio_new (int fd);

/* Close the socket and free. NULL is fine. */
void jsonio_free (jsonio *j);

/* The socket. */
int jsonio_fd (jsonio *j);

/* While *CANCEL is non-zero, waits return QB_ECANCELED (checked at least every 100 ms). */
void jsonio_set_cancel (jsonio *j, const atomic_int *cancel);

/* Send OBJ (not consumed) followed by "\n", within TIMEOUT_MS. */
int jsonio_send (jsonio *j, json_object *obj, int timeout_ms);

/* Send raw bytes within TIMEOUT_MS. */
int jsonio_send_raw (jsonio *j, const void *buf, size_t len, int timeout_ms);

/* Read the next complete JSON object (new reference) within TIMEOUT_MS.
 * NULL with QB_ETIMEDOUT, QB_EHOSTDOWN (peer closed), QB_EPROTO (garbage,
 * not an object, too big, too deep) or QB_ECANCELED. */
json_object *jsonio_recv (jsonio *j, int timeout_ms);

/* Discard input up to and including the first byte 0xFF (guest-agent
 * delimiter), within TIMEOUT_MS; resets the parser. */
int jsonio_skip_to_delimiter (jsonio *j, int timeout_ms);

/* Connect to the unix stream socket at PATH (non-blocking, close-on-exec),
 * retrying within TIMEOUT_MS while its backlog is full.  Returns the fd, or
 * -1: QB_EHOSTDOWN when nobody listens (refused, missing), QB_EPERM, QB_EBUSY. */
int jsonio_connect_unix (const char *path, int timeout_ms);

/* Render LEN bytes of BUF printable into OUT (OUTLEN bytes, NUL-terminated,
 * truncated): control and non-ASCII bytes become \xNN, '"' and '\\' escaped. */
void jsonio_sanitize (const void *buf, size_t len, char *out, size_t outlen);

#endif
