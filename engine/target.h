/* qmpbackupfs — backup target images created inside QEMU: blockdev-create
 * writes the empty qcow2 v3 image with QEMU's own code, so a backup spawns
 * no qemu-img.  Used by engine.c before it attaches the target. */
#ifndef QB_ENGINE_TARGET_H
#define QB_ENGINE_TARGET_H

#include "qmp/qmp.h"

#include <stdint.h>

/* Format the existing (empty) file PATH as a qcow2 v3 image of SIZE bytes
 * with 64 KiB clusters (QEMU's defaults otherwise, like `qemu-img create -f
 * qcow2 -o compat=1.1`); with BACKING non-NULL, its header names BACKING
 * (relative to PATH's folder) as a qcow2 backing file.  Runs the
 * blockdev-create job JOB on a temporary file node NODE and removes both
 * again, also on failure.  0, or -1 with the error set (QEMU's reason for a
 * failed job). */
int target_image_create (qmp *q, const char *job, const char *node, const char *path,
                         uint64_t size, const char *backing);

#endif
