#!/usr/bin/env bash
# Mutation testing of qmpbackupfs: is the test suite able to see real bugs?
#
#   tests/mutants/run.sh --list            the mutants, "ok" or "STALE" against this tree
#   tests/mutants/run.sh [NAME...]         run all (or the named) mutants
#     --keep                  keep the scratch tree and the logs
#     --no-baseline           skip the run of the tests on the unmutated tree
#     --timeout-multiplier N  passed to meson test (default 3)
#
# The mutants are in tests/mutants/mutants.txt: a file, an exact source fragment
# (which must occur exactly once, else the mutant is reported "stale", never
# "caught"), its replacement, and the meson tests expected to catch it.  The
# tracked (and untracked, not ignored) files are copied to a scratch directory
# under ${TMPDIR:-/tmp}, built there once; then for each mutant the fragment is
# replaced, the tree rebuilt and its tests run until one fails (caught) or none
# does (SURVIVED).  Prints one line per mutant, then the score and the time.
# Exit 0 only when every mutant was caught.  It is CPU-heavy (several real
# QEMU/FUSE tests per mutant) and not part of `meson test`.
set -euo pipefail
exec python3 "$(dirname "$0")/mutants.py" "$@"
