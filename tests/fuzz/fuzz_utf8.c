/* fuzz_utf8.c - measuring, cutting and repairing UTF-8 (util/utf8.h).
 *
 * The reference here decodes a code point from the bit patterns of its
 * bytes and then refuses overlong forms, surrogates, values above U+10FFFF
 * and NUL; utf8.c instead bounds the second byte by the lead byte. The two
 * must agree on every input:
 * - utf8_valid says yes exactly when the reference decodes the whole input;
 * - utf8_sanitize replaces exactly the bytes the reference cannot place in a
 *   sequence (walking greedily, as a decoder would), reports how many, and
 *   leaves valid text that a second pass does not touch;
 * - utf8_length counts the reference's code points in valid text;
 * - utf8_cut keeps at most max_bytes, everything when it fits, ends on a
 *   character boundary, and of valid text keeps the longest valid prefix.
 * The first two bytes of the input are max_bytes for the cut, the rest is
 * the text. */
#include <stdbool.h>

#include "fuzz_check.h"
#include "util/utf8.h"

/* Length of the well-formed sequence at p (0 when there is none), by decoding. */
static size_t ref_sequence(const unsigned char *p, size_t avail, uint32_t *cp) {
  static const uint32_t min_value[] = {0, 0, 0x80, 0x800, 0x10000};
  unsigned char c = p[0];
  size_t n;
  uint32_t v;
  if (c < 0x80) {
    n = 1, v = c;
  } else if ((c & 0xe0) == 0xc0) {
    n = 2, v = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3, v = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4, v = c & 0x07;
  } else {
    return 0;
  }
  if (avail < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    v = v << 6 | (p[i] & 0x3f);
  }
  if (v == 0 || v < min_value[n] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  if (cp) *cp = v;
  return n;
}

static bool ref_valid(const unsigned char *s, size_t len, size_t *code_points) {
  size_t i = 0, n = 0;
  while (i < len) {
    size_t k = ref_sequence(s + i, len - i, NULL);
    if (k == 0) return false;
    i += k;
    n++;
  }
  if (code_points) *code_points = n;
  return true;
}

static bool is_continuation(unsigned char c) { return (c & 0xc0) == 0x80; }

static void check_sanitize(const char *s) {
  size_t len = strlen(s);
  char *fixed = (char *)fuzz_copy((const uint8_t *)s, len + 1);
  char *expected = (char *)fuzz_copy((const uint8_t *)s, len + 1);
  size_t expected_count = 0;
  for (size_t i = 0; i < len;) {
    size_t k = ref_sequence((const unsigned char *)expected + i, len - i, NULL);
    if (k) {
      i += k;
    } else {
      expected[i++] = '?';
      expected_count++;
    }
  }
  size_t count = utf8_sanitize(fixed);
  FUZZ_CHECK(count == expected_count);
  FUZZ_CHECK(memcmp(fixed, expected, len + 1) == 0);
  FUZZ_CHECK(utf8_valid(fixed, len));
  FUZZ_CHECK(utf8_sanitize(fixed) == 0);
  FUZZ_CHECK(strcmp(fixed, expected) == 0);
  free(expected);
  free(fixed);
}

static void check_cut(const char *s, size_t max_bytes, bool valid) {
  size_t len = strlen(s);
  size_t cut = utf8_cut(s, max_bytes);
  if (len <= max_bytes) {
    FUZZ_CHECK(cut == len);
    return;
  }
  FUZZ_CHECK(cut <= max_bytes);
  /* The first byte left out starts a character (or the text is not UTF-8
   * there, and a character has at most 3 continuation bytes to back over). */
  FUZZ_CHECK(!is_continuation((unsigned char)s[cut]) || max_bytes - cut == 3 || cut == 0);
  FUZZ_CHECK(max_bytes - cut <= 3);
  if (valid) {
    FUZZ_CHECK(!is_continuation((unsigned char)s[cut]));
    FUZZ_CHECK(ref_valid((const unsigned char *)s, cut, NULL));
    /* The longest: the next character does not fit. */
    size_t next = ref_sequence((const unsigned char *)s + cut, len - cut, NULL);
    FUZZ_CHECK(next > 0 && cut + next > max_bytes);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  size_t max_bytes = (size_t)data[0] << 8 | data[1];
  if (max_bytes == 0xffff) max_bytes = (size_t)-1; /* "no limit", which strnlen must survive */
  const uint8_t *text = data + 2;
  size_t len = size - 2;

  /* utf8_valid on the raw bytes, NULs included, from an exact-size copy. */
  uint8_t *raw = fuzz_copy(text, len);
  FUZZ_CHECK(utf8_valid((const char *)raw, len) == ref_valid(raw, len, NULL));
  free(raw);

  char *s = fuzz_cstring(text, len);
  size_t code_points = 0;
  bool valid = ref_valid((const unsigned char *)s, strlen(s), &code_points);
  FUZZ_CHECK(utf8_valid(s, strlen(s)) == valid);
  if (valid) FUZZ_CHECK(utf8_length(s) == code_points);
  check_sanitize(s);
  check_cut(s, max_bytes, valid);
  free(s);
  return 0;
}
