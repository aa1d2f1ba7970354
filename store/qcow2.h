/* qmpbackupfs — reading qcow2 metadata directly (docs/interop/qcow2.txt):
 * header, L1 and L2 tables, for the chain reader's cluster map.  Every
 * offset and size read from a file is checked against the file before use. */
#ifndef QB_QCOW2_H
#define QB_QCOW2_H

#include <stdint.h>

/* Read the virtual size from the qcow2 header of the file at PATH.
 * 0, or -1 (QB_EDAMAGED if not a qcow2 image, QB_EIO/QB_ENOENT otherwise). */
int qcow2_virtual_size (const char *path, uint64_t *size);

#endif
