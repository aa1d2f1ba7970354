/* qmpbackupfs — the libext2fs I/O manager of files/: a partition of a
 * restore point read through the chain reader.  Reads outside the partition
 * or that the chain reader fails are errors (never other bytes); every
 * write is refused (EROFS). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "fs/files-int.h"

static __thread const files_io_target *io_pending;   /* handed from files_io_open to qbio_open */
static struct struct_io_manager qbio_manager;

/* Open: takes the pending chain of this thread; write access refused. */
static errcode_t
qbio_open (const char *name, int flags, io_channel *channel)
{
  if (flags & IO_FLAG_RW)
    return EROFS;
  if (!io_pending)
    return EXT2_ET_BAD_DEVICE_NAME;
  io_channel io = calloc (1, sizeof *io);
  files_io_target *d = malloc (sizeof *d);
  char *n = strdup (name);
  if (!io || !d || !n) {
    free (io);
    free (d);
    free (n);
    return ENOMEM;
  }
  *d = *io_pending;
  io->magic = EXT2_ET_MAGIC_IO_CHANNEL;
  io->manager = &qbio_manager;
  io->name = n;
  io->block_size = 1024;
  io->refcount = 1;
  io->private_data = d;
  *channel = io;
  return 0;
}

/* Close: frees the channel (the chain belongs to the cache entry). */
static errcode_t
qbio_close (io_channel io)
{
  if (--io->refcount > 0)
    return 0;
  free (io->private_data);
  free (io->name);
  free (io);
  return 0;
}

/* Set the block size. */
static errcode_t
qbio_set_blksize (io_channel io, int blksize)
{
  if (blksize <= 0 || blksize > (1 << 20))
    return EXT2_ET_INVALID_ARGUMENT;
  io->block_size = blksize;
  return 0;
}

/* Read COUNT blocks (or -COUNT bytes) at BLOCK; a read outside the
 * partition or a failed chain read is an error, never other bytes. */
static errcode_t
qbio_read_blk64 (io_channel io, unsigned long long block, int count, void *data)
{
  files_io_target *d = io->private_data;
  uint64_t size = count < 0 ? (uint64_t) -(int64_t) count : (uint64_t) count * io->block_size;
  if (block > UINT64_MAX / io->block_size)
    return EXT2_ET_LLSEEK_FAILED;
  uint64_t off = block * io->block_size;
  if (off > d->length || size > d->length - off)
    return EXT2_ET_SHORT_READ;
  ssize_t r = chain_pread (d->ci, data, size, d->start + off);
  qb_error_clear ();
  if (r < 0)
    return EIO;
  if ((uint64_t) r != size)
    return EXT2_ET_SHORT_READ;
  return 0;
}

/* Read, 32-bit block numbers. */
static errcode_t
qbio_read_blk (io_channel io, unsigned long block, int count, void *data)
{
  return qbio_read_blk64 (io, block, count, data);
}

/* Writes are refused: the restore points are read-only. */
static errcode_t
qbio_write_blk64 (io_channel io, unsigned long long block, int count, const void *data)
{
  (void) io; (void) block; (void) count; (void) data;
  return EROFS;
}

/* Writes are refused (32-bit). */
static errcode_t
qbio_write_blk (io_channel io, unsigned long block, int count, const void *data)
{
  return qbio_write_blk64 (io, block, count, data);
}

/* Writes are refused (bytes). */
static errcode_t
qbio_write_byte (io_channel io, unsigned long off, int count, const void *data)
{
  (void) io; (void) off; (void) count; (void) data;
  return EROFS;
}

/* Nothing to flush. */
static errcode_t
qbio_flush (io_channel io)
{
  (void) io;
  return 0;
}

/* No options. */
static errcode_t
qbio_set_option (io_channel io, const char *option, const char *arg)
{
  (void) io; (void) option; (void) arg;
  return EXT2_ET_INVALID_ARGUMENT;
}

static struct struct_io_manager qbio_manager = {
  .magic = EXT2_ET_MAGIC_IO_MANAGER,
  .name = "qmpbackupfs chain reader",
  .open = qbio_open,
  .close = qbio_close,
  .set_blksize = qbio_set_blksize,
  .read_blk = qbio_read_blk,
  .write_blk = qbio_write_blk,
  .flush = qbio_flush,
  .write_byte = qbio_write_byte,
  .set_option = qbio_set_option,
  .read_blk64 = qbio_read_blk64,
  .write_blk64 = qbio_write_blk64,
};

/* See files-int.h. */
errcode_t
files_io_open (const files_io_target *t, ext2_filsys *fs)
{
  io_pending = t;
  errcode_t rc = ext2fs_open2 ("qmpbackupfs", NULL, EXT2_FLAG_64BITS, 0, 0, &qbio_manager, fs);
  io_pending = NULL;
  return rc;
}
