/* utf8.c - UTF-8 measuring, cutting and repair (RFC 3629, Unicode table 3-7). */
#include "util/utf8.h"

#include <string.h>

static bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

/* Length of the well-formed sequence that starts at p with avail bytes
 * available, or 0 when it is malformed, truncated or a NUL. The second byte's
 * range depends on the lead byte: that is what rules out overlong forms,
 * surrogates (ED A0..BF) and code points above U+10FFFF (F4 90..). */
static size_t sequence_length(const unsigned char *p, size_t avail) {
  unsigned char c = p[0];
  if (c == 0) return 0;
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0; /* a continuation byte, C0/C1 or F5..FF as a lead */
  }
  if (avail < len || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (!is_continuation(p[i])) return 0;
  return len;
}

size_t utf8_cut(const char *s, size_t max_bytes) {
  size_t n = strnlen(s, max_bytes == (size_t)-1 ? max_bytes : max_bytes + 1);
  if (n <= max_bytes) return n;
  /* s[max_bytes] is the first byte left out: if it continues a character,
   * that character started inside the kept part and must go too. A
   * character has at most 3 continuation bytes. */
  size_t cut = max_bytes;
  for (int i = 0; i < 3 && cut > 0 && is_continuation((unsigned char)s[cut]); i++) cut--;
  return cut;
}

size_t utf8_length(const char *s) {
  size_t n = 0;
  for (; *s; s++)
    if (!is_continuation((unsigned char)*s)) n++;
  return n;
}

bool utf8_valid(const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  while (i < len) {
    size_t n = sequence_length(p + i, len - i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

size_t utf8_sanitize(char *s) {
  unsigned char *p = (unsigned char *)s;
  size_t len = strlen(s), replaced = 0, i = 0;
  while (i < len) {
    size_t n = sequence_length(p + i, len - i);
    if (n == 0) {
      /* One byte at a time: the next byte may start a good sequence. */
      p[i++] = '?';
      replaced++;
    } else {
      i += n;
    }
  }
  return replaced;
}
