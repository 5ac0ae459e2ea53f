/* utf8.c - UTF-8 measuring, cutting, decoding and repair (RFC 3629, Unicode table 3-7). */
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

size_t utf8_decode(const char *s, size_t avail, uint32_t *cp) {
  const unsigned char *p = (const unsigned char *)s;
  if (avail == 0) return 0;
  size_t n = sequence_length(p, avail);
  if (n == 0) return 0;
  /* The lead byte keeps 7, 5, 4 or 3 bits; each continuation byte adds 6. */
  static const unsigned char lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
  uint32_t c = p[0] & lead_mask[n];
  for (size_t i = 1; i < n; i++) c = c << 6 | (p[i] & 0x3F);
  *cp = c;
  return n;
}

bool utf8_is_invisible(uint32_t cp) {
  if (cp <= 0x7F) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x0085: /* next line */
    case 0x00A0: /* no-break space */
    case 0x00AD: /* soft hyphen */
    case 0x1680: /* ogham space mark */
    case 0x180E: /* Mongolian vowel separator (White_Space until Unicode 6.3) */
    case 0x2028: /* line separator */
    case 0x2029: /* paragraph separator */
    case 0x202F: /* narrow no-break space */
    case 0x205F: /* medium mathematical space */
    case 0x3000: /* ideographic space */
    case 0xFEFF: /* byte order mark, zero-width no-break space */
      return true;
    default:
      break;
  }
  return (cp >= 0x2000 && cp <= 0x200A) || /* en quad .. hair space */
         (cp >= 0x200B && cp <= 0x200F) || /* zero-width space, (non-)joiner, LRM, RLM */
         (cp >= 0x202A && cp <= 0x202E) || /* bidi embeddings and overrides */
         (cp >= 0x2060 && cp <= 0x2064) || /* word joiner, invisible operators */
         (cp >= 0x2066 && cp <= 0x2069);   /* bidi isolates */
}

bool utf8_is_blank(const char *s) {
  size_t len = strlen(s), i = 0;
  while (i < len) {
    uint32_t cp;
    size_t n = utf8_decode(s + i, len - i, &cp);
    if (n == 0 || !utf8_is_invisible(cp)) return false;
    i += n;
  }
  return true;
}
