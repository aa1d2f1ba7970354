/* Fuzz target: the bounded JSON stream reader (qmp/jsonio.c).
 *
 * Input: one mode byte, then the bytes a peer sends before closing.  Mode
 * bit 0 reads like the guest-agent client (skip to a 0xFF delimiter before
 * each message); bits 1..7 pick the output size for jsonio_sanitize, which
 * is run over the whole input as well.  Invariants: every jsonio_recv gives
 * an object or a recorded error of the documented kinds, each call makes
 * progress, and the end of input is always seen as the peer closing. */
#include "fuzz.h"
#include "common/error.h"
#include "qmp/jsonio.h"

#include <string.h>

#define MAX_INPUT (256 * 1024)
#define TIMEOUT_MS 50

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

  int sv[2];
  if (fuzz_peer (data, size, sv) < 0)
    return 0;
  jsonio *j = jsonio_new (sv[0]);
  bool agent = mode & 1;
  /* Each call consumes at least one byte or ends the stream. */
  size_t calls = 0, limit = 2 * size + 4;
  for (;;) {
    FUZZ_CHECK (++calls <= limit, "no progress after %zu calls on %zu bytes", calls, size);
    qb_error_clear ();
    if (agent && jsonio_skip_to_delimiter (j, TIMEOUT_MS) < 0) {
      FUZZ_CHECK (qb_error_code () == QB_EHOSTDOWN, "skip_to_delimiter: %s", qb_error_msg ());
      break;
    }
    json_object *o = jsonio_recv (j, TIMEOUT_MS);
    if (o) {
      FUZZ_CHECK (json_object_is_type (o, json_type_object), "recv gave a non-object");
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
  }
  jsonio_free (j);
  close (sv[1]);
  return 0;
}
