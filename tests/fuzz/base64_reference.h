/* base64_reference.h - the decoder util/base64.c had before the table-driven
 * one, kept verbatim (only renamed, and static) as the reference the new one
 * is checked against: fuzz_base64 and test_base64 compare the two on every
 * input, and bench/decode times the old answer path with it.
 *
 * Two passes: the first validates every byte and counts the significant
 * characters, the second fills a buffer of the exact size, one character at a
 * time through a classifying switch. Same rules as base64.h documents. */
#ifndef IMGATE_BASE64_REFERENCE_H
#define IMGATE_BASE64_REFERENCE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Character classes beyond the 0..63 digit values. */
enum { REF_B64_BAD = -1, REF_B64_SPACE = -2, REF_B64_PAD = -3 };
/* Which alphabet a character belongs to, so one input cannot mix the two. */
enum { REF_B64_ALPHA_BOTH = 0, REF_B64_ALPHA_STD = 1, REF_B64_ALPHA_URL = 2 };

static int ref_b64_class(unsigned char c, int *alphabet) {
  *alphabet = REF_B64_ALPHA_BOTH;
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  switch (c) {
  case '+': *alphabet = REF_B64_ALPHA_STD; return 62;
  case '/': *alphabet = REF_B64_ALPHA_STD; return 63;
  case '-': *alphabet = REF_B64_ALPHA_URL; return 62;
  case '_': *alphabet = REF_B64_ALPHA_URL; return 63;
  case '=': return REF_B64_PAD;
  case ' ': case '\t': case '\r': case '\n': return REF_B64_SPACE;
  default: return REF_B64_BAD;
  }
}

/* Bytes carried by n significant characters (n % 4 != 1). Never exceeds n, so cannot overflow. */
static size_t ref_b64_decoded_size(size_t n) {
  size_t rem = n % 4;
  return n / 4 * 3 + (rem ? rem - 1 : 0);
}

/* Validates in and returns the number of significant characters in *count. */
static int ref_b64_scan(const char *in, size_t in_len, size_t *count) {
  size_t n = 0, pads = 0;
  int seen = REF_B64_ALPHA_BOTH;
  int last = 0;
  for (size_t i = 0; i < in_len; i++) {
    int alphabet;
    int v = ref_b64_class((unsigned char)in[i], &alphabet);
    if (v == REF_B64_SPACE) continue;
    if (v == REF_B64_BAD) return -1;
    if (v == REF_B64_PAD) {
      if (++pads > 2) return -1;
      continue;
    }
    if (pads) return -1; /* data after padding */
    if (alphabet != REF_B64_ALPHA_BOTH) {
      if (seen != REF_B64_ALPHA_BOTH && seen != alphabet) return -1;
      seen = alphabet;
    }
    last = v;
    n++;
  }
  size_t rem = n % 4;
  if (rem == 1) return -1;
  /* Padding, when present, must complete the final group exactly. */
  if (pads && (rem == 0 || rem + pads != 4)) return -1;
  /* The unused low bits of the last character must be zero, or two
   * encodings would decode to the same bytes. */
  if (rem == 2 && (last & 0x0f)) return -1;
  if (rem == 3 && (last & 0x03)) return -1;
  *count = n;
  return 0;
}

/* Decodes an input that ref_b64_scan accepted; out holds exactly the decoded size. */
static void ref_b64_fill(const char *in, size_t in_len, uint8_t *out) {
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  for (size_t i = 0; i < in_len; i++) {
    int alphabet;
    int v = ref_b64_class((unsigned char)in[i], &alphabet);
    if (v < 0) continue;
    acc = (acc << 6 | (uint32_t)v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
}

/* base64_decode as it was: 0, -1 malformed, -2 larger than max_out. */
static int ref_base64_decode(const char *in, size_t in_len, size_t max_out, uint8_t **out,
                             size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (!in && in_len) return -1;
  size_t n = 0;
  if (ref_b64_scan(in, in_len, &n) != 0) return -1;
  size_t size = ref_b64_decoded_size(n);
  if (size > max_out) return -2;
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return -1;
  ref_b64_fill(in, in_len, buf);
  *out = buf;
  *out_len = size;
  return 0;
}

#endif
