/* Fuzz target: the bounded JSON stream reader (qmp/jsonio.c).
 *
 * Input: one mode byte, then the bytes a peer sends before closing (from a
 * thread, so inputs of megabytes reach the limits).  Mode bit 0 reads like
 * the guest-agent client (skip to a 0xFF delimiter before each message, with
 * the agent's limits); bit 7 sets tiny limits (4 KiB, 64 values) so small
 * inputs reach them too; bits 1..7 also pick the output size for
 * jsonio_sanitize, which is run over the whole input as well.  Invariants:
 * every jsonio_recv gives an object within the limits or a recorded error
 * of the documented kinds, each call makes progress, a refused message
 * breaks the connection for good, and the end of input is always seen as
 * the peer closing. */
#include "fuzz-feed.h"
#include "common/error.h"
#include "qmp/jsonio.h"

#include <string.h>

#define MAX_INPUT (8u << 20)
#define TIMEOUT_MS 5000     /* the peer always closes: no wait lasts */

/* Check jsonio_sanitize's output contract on BUF. */
static void
check_sanitize (const uint8_t *buf, size_t len, size_t outlen)
{
  char *out = malloc (outlen + 1);
  out[outlen] = 'Z';              /* a byte past OUTLEN must stay untouched */
  jsonio_sanitize (buf, len, out, outlen);
  FUZZ_CHECK (out[outlen] == 'Z', "sanitize wrote past its buffer");
  if (outlen > 0) {
    size_t n = strlen (out);
    FUZZ_CHECK (n < outlen, "sanitize output not terminated within %zu bytes", outlen);
    for (size_t i = 0; i < n; i++)
      FUZZ_CHECK (out[i] >= 0x20 && out[i] < 0x7f, "sanitize left byte 0x%02x",
                  (unsigned char) out[i]);
  }
  free (out);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  if (size < 1 || size > MAX_INPUT)
    return 0;
  unsigned mode = data[0];
  data++, size--;
  check_sanitize (data, size, mode >> 1);
  check_sanitize (data, size, 4 * size + 1);

  fuzz_feed f;
  fuzz_feed_start (&f, data, size);
  jsonio *j = jsonio_new (f.sv[0]);
  bool agent = mode & 1;
  size_t max_bytes = JSONIO_QMP_MAX_BYTES, max_values = JSONIO_QMP_MAX_VALUES;
  if (agent)
    max_bytes = JSONIO_QGA_MAX_BYTES, max_values = JSONIO_QGA_MAX_VALUES;
  if (mode & 0x80)
    max_bytes = 4096, max_values = 64;
  jsonio_set_limits (j, max_bytes, max_values);
  /* Each call consumes at least one byte or ends the stream. */
  size_t calls = 0, limit = 2 * size + 4;
  for (;;) {
    FUZZ_CHECK (++calls <= limit, "no progress after %zu calls on %zu bytes", calls, size);
    qb_error_clear ();
    if (agent && jsonio_skip_to_delimiter (j, TIMEOUT_MS) < 0) {
      /* The peer closed, or sent too much junk: the connection is broken. */
      FUZZ_CHECK (qb_error_code () == QB_EHOSTDOWN
                  || (qb_error_code () == QB_EPROTO && jsonio_broken (j)),
                  "skip_to_delimiter: %s", qb_error_msg ());
      break;
    }
    json_object *o = jsonio_recv (j, TIMEOUT_MS);
    if (o) {
      FUZZ_CHECK (json_object_is_type (o, json_type_object), "recv gave a non-object");
      size_t bytes, values;
      jsonio_last_size (j, &bytes, &values);
      FUZZ_CHECK (bytes <= max_bytes && values <= max_values,
                  "message of %zu bytes, %zu values passed the limits", bytes, values);
      const char *s = json_object_to_json_string_ext (o, JSON_C_TO_STRING_PLAIN);
      FUZZ_CHECK (s && s[0] == '{', "object does not serialise");
      json_object_put (o);
      continue;
    }
    qb_err e = qb_error_code ();
    FUZZ_CHECK (*qb_error_msg () != '\0', "error without a message");
    if (e == QB_EHOSTDOWN)
      break;
    FUZZ_CHECK (e == QB_EPROTO, "unexpected error %s: %s", qb_err_name (e), qb_error_msg ());
    if (jsonio_broken (j)) {
      /* Refused for good: every call fails at once, nothing more is read. */
      FUZZ_CHECK (strstr (qb_error_msg (), "hostile"), "refusal without a reason: %s",
                  qb_error_msg ());
      FUZZ_CHECK (jsonio_recv (j, TIMEOUT_MS) == NULL && qb_error_code () == QB_EPROTO,
                  "a broken connection still reads");
      FUZZ_CHECK (jsonio_skip_to_delimiter (j, TIMEOUT_MS) < 0 && qb_error_code () == QB_EPROTO,
                  "a broken connection still skips");
      break;
    }
  }
  jsonio_free (j);
  fuzz_feed_stop (&f);
  return 0;
}
