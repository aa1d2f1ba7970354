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
 * again, also on failure.  With ATTACH non-NULL (blockdev-add arguments of
 * the image, consumed) the image is then attached in the same round trip
 * as that removal.  0 (the image attached when asked), or -1 with the
 * error set (QEMU's reason for a failed job; "attaching it: ..." when only
 * the attach failed) and nothing of it left in QEMU. */
int target_image_create (qmp *q, const char *job, const char *node, const char *path,
                         uint64_t size, const char *backing, json_object *attach);

#endif
