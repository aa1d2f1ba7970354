/* qmpbackupfs — parsing what is written to <vm>/backup. */
#ifndef QB_CONTROL_PARSE_H
#define QB_CONTROL_PARSE_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/engine.h"

#define CONTROL_MAX 256   /* longest control write accepted, in bytes */

/* Parse a control write BUF of SIZE bytes: "full|inc|auto|copy
 * [quiesce|noquiesce]" with an optional trailing newline.  0 with *LEVEL and
 * *Q set, or -1 with the reason in WHY (nothing else is touched). */
int control_parse (const char *buf, size_t size, backup_level *level, quiesce_mode *q,
                   char *why, size_t whylen);

/* True when the control write BUF of SIZE bytes is "verify" (with an
 * optional trailing newline): verify the VM's restore points. */
bool control_is_verify (const char *buf, size_t size);

#endif
