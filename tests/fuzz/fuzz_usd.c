/* fuzz_usd.c - money as text (core/pricing.h: pricing_parse_usd, pricing_format_usd).
 *
 * Parsing is checked against a reference written from the header's grammar
 * ("-"? digits ("." 1..6 digits)?) that computes the amount in 128-bit
 * arithmetic: the parser must accept exactly what the grammar allows and what
 * fits in int64 micro-dollars, with the same amount, and leave *micros alone
 * when it refuses. Every accepted amount formats to text that parses back to
 * it. Formatting is also checked from the other side: the first 8 bytes as an
 * int64 format to "-"?digits"."6 digits, which parses back exactly, and a
 * short buffer gets the same text cut short, NUL-terminated. */
#include <stdbool.h>

#include "core/pricing.h"
#include "fuzz_check.h"

typedef unsigned __int128 u128;

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* The reference: true with the amount when text is in the grammar and fits. */
static bool ref_parse(const char *text, int64_t *micros) {
  /* Any magnitude beyond 2^64 is as good as infinite here; saturating keeps
   * a thousand leading digits from overflowing even 128 bits. */
  const u128 big = (u128)1 << 100;
  const char *p = text;
  bool negative = *p == '-';
  if (negative) p++;
  if (!is_digit(*p)) return false;
  u128 whole = 0;
  for (; is_digit(*p); p++) {
    whole = whole * 10 + (u128)(*p - '0');
    if (whole > big) whole = big;
  }
  u128 frac = 0;
  int decimals = 0;
  if (*p == '.') {
    for (p++; is_digit(*p); p++, decimals++) frac = frac * 10 + (u128)(*p - '0');
    if (decimals < 1 || decimals > 6) return false;
  }
  if (*p) return false;
  for (int i = decimals; i < 6; i++) frac *= 10;
  u128 mag = whole * 1000000 + frac;
  u128 limit = negative ? (u128)INT64_MAX + 1 : (u128)INT64_MAX;
  if (mag > limit) return false;
  *micros = negative ? (int64_t)(-(__int128)mag) : (int64_t)mag;
  return true;
}

/* "-"? digits "." six digits, nothing else. */
static bool well_formed(const char *s) {
  if (*s == '-') s++;
  if (!is_digit(*s)) return false;
  while (is_digit(*s)) s++;
  if (*s++ != '.') return false;
  for (int i = 0; i < 6; i++)
    if (!is_digit(*s++)) return false;
  return *s == '\0';
}

static void check_format(int64_t micros, size_t short_size) {
  char text[PRICING_USD_BUFSIZE];
  pricing_format_usd(micros, text, sizeof text);
  FUZZ_CHECK(well_formed(text));
  int64_t back = 0;
  FUZZ_CHECK(pricing_parse_usd(text, &back) == 0 && back == micros);

  /* A short buffer: snprintf's cut. Bytes past size stay as they were. */
  char cut[PRICING_USD_BUFSIZE + 1];
  memset(cut, '#', sizeof cut);
  pricing_format_usd(micros, cut, short_size);
  for (size_t i = short_size; i < sizeof cut; i++) FUZZ_CHECK(cut[i] == '#');
  if (short_size == 0) return;
  size_t keep = strlen(text) < short_size - 1 ? strlen(text) : short_size - 1;
  FUZZ_CHECK(memcmp(cut, text, keep) == 0 && cut[keep] == '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = fuzz_cstring(data, size);
  int64_t expected = 0;
  bool ok = ref_parse(text, &expected);
  int64_t micros = 0x5a5a5a5a;
  int rc = pricing_parse_usd(text, &micros);
  FUZZ_CHECK(rc == 0 || rc == -1);
  FUZZ_CHECK((rc == 0) == ok);
  if (ok) {
    FUZZ_CHECK(micros == expected);
    check_format(micros, size % (PRICING_USD_BUFSIZE + 1));
  } else {
    FUZZ_CHECK(micros == 0x5a5a5a5a);
  }
  free(text);

  if (size >= 8) {
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++) bits = bits << 8 | data[i];
    int64_t any;
    memcpy(&any, &bits, sizeof any);
    check_format(any, size > 8 ? data[8] % (PRICING_USD_BUFSIZE + 1) : PRICING_USD_BUFSIZE);
  }
  return 0;
}
