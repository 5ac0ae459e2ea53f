/* fuzz_email.c - email normalisation (core/accounts.h: accounts_normalize_email).
 *
 * The input (cut at its first NUL, as a C caller sees it) is the address.
 * The function must accept exactly the shape its header documents, write
 * nothing past out_size (the output buffers here are exact-size heap blocks),
 * give the address lower-cased and otherwise unchanged, and be idempotent:
 * what it returns normalises to itself. */
#include <ctype.h>
#include <stdbool.h>

#include "core/accounts.h"
#include "fuzz_check.h"

/* The documented shape: 3 to 254 bytes of printable ASCII other than space,
 * '"', '\\' and ','; exactly one '@', with text before and after it. */
static bool ref_shape(const char *s) {
  size_t len = strlen(s), at = 0, at_pos = 0;
  if (len < 3 || len > 254) return false;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c > '~' || c == '"' || c == '\\' || c == ',') return false;
    if (c == '@') at++, at_pos = i;
  }
  return at == 1 && at_pos > 0 && at_pos < len - 1;
}

/* Normalises into an exact-size buffer of out_size bytes. */
static bool normalize(const char *email, size_t out_size, char **out) {
  *out = malloc(out_size);
  FUZZ_CHECK(*out);
  return accounts_normalize_email(email, *out, out_size);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *email = fuzz_cstring(data, size);
  size_t len = strlen(email);
  bool shape = ref_shape(email);

  char *out;
  bool ok = normalize(email, len + 1, &out);
  FUZZ_CHECK(ok == shape);
  if (ok) {
    FUZZ_CHECK(strlen(out) == len);
    for (size_t i = 0; i < len; i++)
      FUZZ_CHECK(out[i] == (char)tolower((unsigned char)email[i]) && !isupper((unsigned char)out[i]));
    FUZZ_CHECK(ref_shape(out));
    char *again;
    FUZZ_CHECK(normalize(out, len + 1, &again));
    FUZZ_CHECK(strcmp(again, out) == 0);
    free(again);
  }
  free(out);

  /* One byte short of room for the NUL: refused, and nothing written past it. */
  if (len > 0) {
    FUZZ_CHECK(!normalize(email, len, &out));
    free(out);
  }
  /* The size the callers use. */
  FUZZ_CHECK(normalize(email, 256, &out) == shape);
  free(out);
  free(email);
  return 0;
}
