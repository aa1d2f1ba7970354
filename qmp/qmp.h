/* qmpbackupfs — QMP client over a unix socket or TCP (tcp:HOST:PORT).
 *
 * A QMP socket serves one client at a time: a second client's connect
 * succeeds but it hears no greeting until the first leaves.  Connect for the
 * work, close right after.  A socket held by someone else gives QB_EBUSY after
 * the connect timeout; a socket nobody listens on gives QB_EHOSTDOWN. */
#ifndef QB_QMP_H
#define QB_QMP_H

#include <json-c/json.h>
#include <stdatomic.h>
#include <stdbool.h>

#define QMP_CONNECT_TIMEOUT_MS 5000
#define QMP_COMMAND_TIMEOUT_MS 30000
/* Events that arrive while a command waits for its reply are queued.  The
 * queue keeps at most QMP_EVENT_QUEUE_MAX events, QMP_EVENT_QUEUE_BYTES wire
 * bytes and QMP_EVENT_QUEUE_VALUES JSON values (about 7 MiB of heap at
 * most); beyond that the oldest are dropped.  QEMU's job events are ~100
 * to 300 bytes; one bigger than QMP_EVENT_KEEP_BYTES or
 * QMP_EVENT_KEEP_VALUES is queued without its "data" and with
 * "data-dropped": true. */
#define QMP_EVENT_QUEUE_MAX 256
#define QMP_EVENT_QUEUE_BYTES (1u << 20)
#define QMP_EVENT_QUEUE_VALUES 16384
#define QMP_EVENT_KEEP_BYTES (16u << 10)
#define QMP_EVENT_KEEP_VALUES 1024

typedef struct qmp qmp;

/* Connect to the QMP socket at PATH (a unix socket path, or "tcp:HOST:PORT"
 * as jsonio_connect takes it), read the greeting and negotiate
 * capabilities, all within TIMEOUT_MS.  Each message from QEMU is limited
 * to JSONIO_QMP_MAX_BYTES / JSONIO_QMP_MAX_VALUES (jsonio.h); a bigger one
 * breaks the connection (QB_EPROTO on this and every later call). */
qmp *qmp_connect (const char *path, int timeout_ms);

/* Disconnect and free. NULL is fine. */
void qmp_close (qmp *q);

/* While *CANCEL is non-zero, waits return QB_ECANCELED. */
void qmp_set_cancel (qmp *q, const atomic_int *cancel);

/* Run CMD with ARGS (consumed; may be NULL) and wait up to TIMEOUT_MS for its
 * reply.  Returns the "return" value (new reference; an empty object when
 * QEMU returns {}), or NULL: QB_EQMP with "CLASS: desc" from QEMU (both
 * escaped: control and non-ASCII bytes as \xNN), or a transport error.
 * Events that arrive meanwhile are queued.  A peer flooding events or
 * stale replies does not hold the call past TIMEOUT_MS. */
json_object *qmp_execute (qmp *q, const char *cmd, json_object *args, int timeout_ms);

/* At most this many commands in one qmp_execute_batch: QEMU reads no
 * further requests while 8 wait in its queue. */
#define QMP_BATCH_MAX 8

/* Send the N (<= QMP_BATCH_MAX) commands CMDS with ARGS (each consumed; may
 * be NULL) at once, then read every reply (matched by id) within
 * TIMEOUT_MS; QEMU runs them in order, each whether or not an earlier one
 * failed.  RESULTS[i] is command i's "return" value (new reference) or
 * NULL when it failed.  0 when all succeeded; -1 with the error of the
 * first that failed (as qmp_execute reports it), the others' results still
 * filled in.  One round trip instead of N. */
int qmp_execute_batch (qmp *q, const char *const *cmds, json_object **args, size_t n,
                       json_object **results, int timeout_ms);

/* The string member KEY of the reply object OBJ, or "" (missing, not a
 * string, or OBJ NULL): never NULL, so it can be compared directly. */
const char *qmp_str (json_object *obj, const char *key);

/* Like qmp_execute, but discards the returned value: 0 or -1. */
int qmp_run (qmp *q, const char *cmd, json_object *args, int timeout_ms);

/* Class of the last QMP error reply on this connection ("" if none),
 * e.g. "GenericError", "DeviceNotFound"; escaped like the description. */
const char *qmp_last_error_class (qmp *q);

/* The next event (queued first, else read) within TIMEOUT_MS: the whole
 * event object {"event":..., "data":..., "timestamp":...}, new reference.
 * NULL with QB_ETIMEDOUT when none arrived (also when only stale replies
 * kept coming), or another transport error. */
json_object *qmp_next_event (qmp *q, int timeout_ms);

/* Human monitor command via QMP; returns the text output (malloc'd), raw:
 * escape it (jsonio_sanitize) before it reaches a terminal or a log. */
char *qmp_hmp (qmp *q, const char *cmdline, int timeout_ms);

/* Like qmp_connect on an already connected FD (owned), for tests and
 * callers that connect themselves; NAME is used in messages. */
qmp *qmp_new_fd (int fd, const char *name, int timeout_ms);

/* True once the event queue overflowed and events were dropped (or an
 * oversized event lost its "data"). */
bool qmp_events_lost (qmp *q);

#endif
