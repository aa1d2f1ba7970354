/* qmpbackupfs — QEMU guest agent client (unix socket on the host side of the
 * virtio-serial port).  Handshake with guest-sync-delimited; every call has a
 * timeout; a stalled or garbage-speaking agent is an error, never a hang. */
#ifndef QB_QGA_H
#define QB_QGA_H

#include <json-c/json.h>
#include <stdatomic.h>

#define QGA_TIMEOUT_MS 10000
#define QGA_TEXT_MAX 256          /* guest text kept in a message, escaped */

typedef struct qga qga;

/* Connect to the agent socket at PATH and synchronise within TIMEOUT_MS. */
qga *qga_connect (const char *path, int timeout_ms);

/* Close and free. NULL is fine. */
void qga_close (qga *g);

/* While *CANCEL is non-zero, waits return QB_ECANCELED. */
void qga_set_cancel (qga *g, const atomic_int *cancel);

/* guest-ping: 0 when the agent answered. */
int qga_ping (qga *g, int timeout_ms);

/* guest-fsfreeze-freeze: number of filesystems frozen, or -1. */
int qga_freeze (qga *g, int timeout_ms);

/* guest-fsfreeze-thaw: number of filesystems thawed, or -1. */
int qga_thaw (qga *g, int timeout_ms);

/* guest-fsfreeze-status: 1 frozen, 0 thawed, -1 error. */
int qga_frozen (qga *g, int timeout_ms);

/* Run agent command CMD with ARGS (consumed; may be NULL) within TIMEOUT_MS:
 * the "return" value (new reference), or NULL with QB_EQMP "guest agent:
 * CMD: Class: desc" (the guest's class and desc escaped: no control byte,
 * ESC, newline or non-ASCII byte, at most QGA_TEXT_MAX) or a transport
 * error.  Resynchronises first when an earlier reply was lost. */
json_object *qga_execute (qga *g, const char *cmd, json_object *args, int timeout_ms);

#endif
