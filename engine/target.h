/* qmpbackupfs — backup target images: the store writes the empty qcow2 v3
 * image itself (byte for byte what QEMU would write) and QEMU only attaches
 * it, all disks in one round trip; what the store's writer does not make,
 * QEMU's blockdev-create does.  Used by engine.c. */
#ifndef QB_ENGINE_TARGET_H
#define QB_ENGINE_TARGET_H

#include "qmp/qmp.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Format the existing empty 0600 file PATH (not followed if a link) as the
 * empty qcow2 v3 image of SIZE bytes with 64 KiB clusters that
 * target_image_create would make, with BACKING (relative to PATH's folder,
 * format qcow2) when non-NULL, without QEMU.  0; 1 when the store's
 * writer does not make such an image (nothing written: use
 * target_image_create; always with QB_TARGET_CREATE_IN_QEMU=1 in the
 * environment, for tests); -1 with the error set (QB_ENOSPC, QB_EIO). */
int target_image_write (const char *path, uint64_t size, const char *backing);

/* Attach the N images whose blockdev-add arguments are ATTACH[i] (each
 * consumed; NULL entries skipped), QMP_BATCH_MAX per round trip.  Sets
 * ADDED[i] for each attached.  0, or -1 with the error of the first that
 * failed and *FAILED its index (the others still attached as ADDED says). */
int target_attach_all (qmp *q, json_object **attach, size_t n, bool *added, size_t *failed);

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
