/* fuzz_base64.c - base64 decoding and encoding (util/base64.h).
 *
 * Two directions:
 * - The input decoded as text. When the decoder accepts it, the input must be
 *   a spelling of exactly one byte string: encoding the result gives back the
 *   input with whitespace dropped, the URL-safe alphabet mapped to the
 *   standard one and padding restored (the decoder refuses non-zero trailing
 *   bits, so no two spellings decode alike). The size must respect the cap:
 *   the exact size decodes, one byte less answers -2.
 * - The input (after one byte of flags) encoded as bytes: the encoding has
 *   the announced length, and decodes back, also once re-spelled in the
 *   URL-safe alphabet, without padding, or with whitespace in between. */
#include <stdbool.h>

#include "fuzz_check.h"
#include "util/base64.h"

/* The one canonical spelling of a text the decoder accepted. */
static char *canonical(const uint8_t *in, size_t len) {
  char *out = malloc(len + 4);
  FUZZ_CHECK(out);
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    char c = (char)in[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '=') continue;
    out[n++] = c == '-' ? '+' : c == '_' ? '/' : c;
  }
  while (n % 4) out[n++] = '=';
  out[n] = '\0';
  return out;
}

static bool is_alphabet_or_space(uint8_t c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '+' || c == '/' || c == '-' || c == '_' || c == '=' || c == ' ' || c == '\t' ||
         c == '\r' || c == '\n';
}

static void check_decode(const uint8_t *data, size_t size) {
  uint8_t *out = NULL;
  size_t out_len = 0;
  int rc = base64_decode((const char *)data, size, SIZE_MAX, &out, &out_len);
  FUZZ_CHECK(rc == 0 || rc == -1);
  if (rc != 0) {
    FUZZ_CHECK(out == NULL && out_len == 0);
    return;
  }
  FUZZ_CHECK(out != NULL);
  bool std = false, url = false;
  for (size_t i = 0; i < size; i++) {
    FUZZ_CHECK(is_alphabet_or_space(data[i]));
    std = std || data[i] == '+' || data[i] == '/';
    url = url || data[i] == '-' || data[i] == '_';
  }
  FUZZ_CHECK(!(std && url)); /* one input, one alphabet */

  char *enc = base64_encode(out, out_len);
  char *canon = canonical(data, size);
  FUZZ_CHECK(enc && strcmp(enc, canon) == 0);
  FUZZ_CHECK(strlen(enc) == base64_encoded_len(out_len));
  free(enc);
  free(canon);

  /* The cap: the exact size passes, one less is refused before any output. */
  uint8_t *again = NULL;
  size_t again_len = 0;
  FUZZ_CHECK(base64_decode((const char *)data, size, out_len, &again, &again_len) == 0);
  FUZZ_CHECK(again_len == out_len && memcmp(again, out, out_len) == 0);
  free(again);
  if (out_len > 0) {
    FUZZ_CHECK(base64_decode((const char *)data, size, out_len - 1, &again, &again_len) == -2);
    FUZZ_CHECK(again == NULL && again_len == 0);
  }
  free(out);
}

/* Re-spells a standard encoding as flags ask: bit 0 URL-safe alphabet, bit 1
 * no padding, bit 2 a blank after every few characters. */
static char *respell(const char *enc, uint8_t flags) {
  size_t len = strlen(enc);
  char *out = malloc(len * 2 + 1);
  FUZZ_CHECK(out);
  static const char blanks[] = " \t\r\n";
  size_t every = (size_t)(flags >> 4) + 1, n = 0;
  for (size_t i = 0; i < len; i++) {
    char c = enc[i];
    if (c == '=' && (flags & 2)) continue;
    if (flags & 1) c = c == '+' ? '-' : c == '/' ? '_' : c;
    out[n++] = c;
    if ((flags & 4) && (i + 1) % every == 0) out[n++] = blanks[i % 4];
  }
  out[n] = '\0';
  return out;
}

static void check_encode(const uint8_t *data, size_t size) {
  if (size == 0) return;
  uint8_t flags = data[0];
  const uint8_t *raw = data + 1;
  size_t raw_len = size - 1;
  char *enc = base64_encode(raw, raw_len);
  FUZZ_CHECK(enc != NULL);
  FUZZ_CHECK(strlen(enc) == base64_encoded_len(raw_len));
  char *text = respell(enc, flags);
  uint8_t *out = NULL;
  size_t out_len = 0;
  FUZZ_CHECK(base64_decode(text, strlen(text), raw_len, &out, &out_len) == 0);
  FUZZ_CHECK(out_len == raw_len && memcmp(out, raw, raw_len) == 0);
  free(out);
  free(text);
  free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_decode(data, size);
  check_encode(data, size);
  return 0;
}
