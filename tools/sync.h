/* qmprebase sync — copy the new restore points of a store into another store.
 *
 *   qmprebase sync --from STORE --to STORE2 [--vm NAME] [--dry-run]
 *
 * Points are copied in commit order (their ids), one at a time: each disk's
 * layer file (sparse-aware, through a temp in the destination, fsynced,
 * then read back and compared with what was read from the source, then
 * renamed), then the layer's .chain/ records, and the point's record
 * (.points/<id>.json) last, so the destination only ever lists a point
 * whose layers are all there.  A layer already at the destination with the
 * same size and the same .chain record is skipped; one with other content
 * is an error naming both files and is never overwritten.  The destination
 * VM's store lock is held while copying; an interrupted run (kill -9 at
 * any moment) leaves temps only, which the next run removes before it
 * carries on. */
#ifndef QB_TOOLS_SYNC_H
#define QB_TOOLS_SYNC_H

/* Run `qmprebase sync` with ARGV[0] = "sync" and its options; prints what it
 * did on stdout and errors on stderr.  Returns the exit code: 0 ok, 1
 * failed, 2 usage error. */
int sync_main (int argc, char **argv);

#endif
