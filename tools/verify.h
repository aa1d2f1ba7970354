/* qmprebase verify — re-read a VM's restore points and compare every data
 * cluster with the checksums kept at commit (store/sums.h). */
#ifndef QB_TOOLS_VERIFY_H
#define QB_TOOLS_VERIFY_H

/* Run "qmprebase verify" with ARGV[0] = "verify" and its options
 * (--dir STORE/<vm> [--point T] [--json], -h/--help).  Exit code: 0 every
 * point ok (unverifiable ones are noted), 1 damage found or the check could
 * not be done, 2 usage. */
int verify_main (int argc, char **argv);

/* Print the help of "qmprebase verify" to stdout. */
void verify_help (void);

#endif
