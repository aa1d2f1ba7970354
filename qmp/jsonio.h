/* qmpbackupfs — bounded reader of newline-separated JSON objects from a
 * socket, shared by the QMP and guest-agent clients.  Every read is bounded
 * in time, size, nesting and in the number of values json-c would build;
 * garbage, partial lines, oversized or deeply nested input, a peer that
 * closes or stalls: each gives a clear error.
 *
 * Values are counted before bytes reach json-c: a small scanner follows
 * strings and escapes and counts each '{', '[', ',' and ':' outside strings.
 * json-c spends up to ~800 bytes of heap on an empty object ("{}" costs
 * 264 heap bytes per wire byte), so the byte limit alone does not bound
 * memory; bytes and values together do (about 400 heap bytes per counted
 * value plus 3 per byte).  A message over either limit is refused before
 * json-c sees the byte that crosses it, and the connection is then broken:
 * every later call fails with QB_EPROTO, the peer is treated as hostile. */
#ifndef QB_JSONIO_H
#define QB_JSONIO_H

#include <json-c/json.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#define JSONIO_MAX_DEPTH 64             /* nesting limit */

/* Per-connection limits on one message (see jsonio_set_limits).
 * QMP: a VM with 16 disks, 4-layer backing chains and 2 bitmaps each
 * answers query-named-block-nodes with 106 KB / 11,744 values,
 * query-block with 35 KB / 3,632 (QEMU 7.2); a 100-layer chain with
 * "flat": true gives 198 KB / 21,102.  The limits leave 20x and 8x margin
 * and keep one message under ~52 MiB of heap.  The default of jsonio_new. */
#define JSONIO_QMP_MAX_BYTES (4u << 20)
#define JSONIO_QMP_MAX_VALUES 100000
/* Guest agent: its replies are counts, short strings, guest-info (~450
 * values); the agent is the guest, an adversary. */
#define JSONIO_QGA_MAX_BYTES (1u << 20)
#define JSONIO_QGA_MAX_VALUES 4096

typedef struct jsonio jsonio;

/* Wrap connected socket FD (owned: closed by jsonio_free), with the QMP
 * limits JSONIO_QMP_MAX_BYTES / JSONIO_QMP_MAX_VALUES. */
jsonio *jsonio_new (int fd);

/* Limit each message read from J to MAX_BYTES bytes and MAX_VALUES counted
 * values (0 keeps the current limit).  A guest-agent connection uses
 * jsonio_set_limits (j, JSONIO_QGA_MAX_BYTES, JSONIO_QGA_MAX_VALUES). */
void jsonio_set_limits (jsonio *j, size_t max_bytes, size_t max_values);

/* Size of the last message jsonio_recv returned: wire bytes and counted
 * values (either pointer may be NULL). */
void jsonio_last_size (jsonio *j, size_t *bytes, size_t *values);

/* True once the connection was broken by a refused message; every later
 * read or send then fails with QB_EPROTO. */
bool jsonio_broken (jsonio *j);

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
 * not an object, too deep; too big or too many values, which also breaks
 * the connection) or QB_ECANCELED.  A message already buffered is returned
 * even with TIMEOUT_MS 0; a peer that keeps sending never holds the call
 * past its deadline (a partial message survives a timeout). */
json_object *jsonio_recv (jsonio *j, int timeout_ms);

/* Discard input up to and including the first byte 0xFF (guest-agent
 * delimiter), within TIMEOUT_MS; resets the parser.  TIMEOUT_MS <= 0 fails
 * at once with QB_ETIMEDOUT (so a resync loop ends at its deadline).  More
 * than twice the byte limit of junk since the last good message breaks the
 * connection (QB_EPROTO). */
int jsonio_skip_to_delimiter (jsonio *j, int timeout_ms);

/* Connect to the unix stream socket at PATH (non-blocking, close-on-exec),
 * retrying within TIMEOUT_MS while its backlog is full.  Returns the fd, or
 * -1: QB_EHOSTDOWN when nobody listens (refused, missing), QB_EPERM, QB_EBUSY. */
int jsonio_connect_unix (const char *path, int timeout_ms);

/* Connect to ADDR within TIMEOUT_MS: "tcp:HOST:PORT" (HOST a name resolved
 * with getaddrinfo, an IPv4 address, or an IPv6 address in brackets:
 * "tcp:[::1]:4444"), "unix:PATH", or a unix socket PATH.  Returns the fd
 * (non-blocking, close-on-exec) or -1: QB_EHOSTDOWN when nobody listens,
 * the host is unknown or does not answer in time; QB_EINVAL for a bad
 * address; as jsonio_connect_unix otherwise. */
int jsonio_connect (const char *addr, int timeout_ms);

/* Split "tcp:HOST:PORT" (or "tcp:[IPV6]:PORT") into HOST and PORT
 * (malloc'd, brackets removed): 0, or -1 with QB_EINVAL saying what is wrong. */
int jsonio_parse_tcp (const char *addr, char **host, char **port);

/* Trace every message sent and received by any connection to FD (a line
 * "trace: fd N > MSG" or "< MSG"; control and non-ASCII bytes
 * as \xNN (a received message as json-c writes it again), at most 4 KiB
 * of each message); FD -1 stops.  For debugging: includes all QMP and
 * guest-agent traffic. */
void jsonio_set_trace (int fd);

/* Render LEN bytes of BUF printable into OUT (OUTLEN bytes, NUL-terminated,
 * truncated): control and non-ASCII bytes become \xNN, '"' and '\\' escaped. */
void jsonio_sanitize (const void *buf, size_t len, char *out, size_t outlen);

#endif
