/* qmpbackupfs — the checks shared by the store's unit tests: CHECK counts a
 * failure and goes on, REQUIRE stops the test; both print the last error. */
#ifndef QB_TESTS_STORECHECK_H
#define QB_TESTS_STORECHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "common/error.h"

static int failures;

#define CHECK(cond) do {                                                \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: CHECK failed: %s (last error: %s: %s)\n", \
               __FILE__, __LINE__, #cond, qb_err_name (qb_error_code ()), \
               qb_error_msg ());                                        \
      failures++;                                                       \
    }                                                                   \
  } while (0)

#define REQUIRE(cond) do {                                              \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: REQUIRE failed: %s (last error: %s)\n",  \
               __FILE__, __LINE__, #cond, qb_error_msg ());             \
      exit (1);                                                         \
    }                                                                   \
  } while (0)

/* 2026-11-26T04:50:00Z */
#define T0 ((int64_t) 1795668600 * 1000000)

#endif
