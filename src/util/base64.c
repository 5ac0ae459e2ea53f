/* base64.c - RFC 4648 base64: strict decoding of both alphabets, standard encoding.
 *
 * Decoding runs in two passes over the input. The first validates every byte
 * and counts the significant characters without allocating, so an oversized or
 * malformed input costs no memory; the second fills a buffer of the exact size. */
#include "util/base64.h"

#include <stdlib.h>

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Character classes beyond the 0..63 digit values. */
enum { B64_BAD = -1, B64_SPACE = -2, B64_PAD = -3 };
/* Which alphabet a character belongs to, so one input cannot mix the two. */
enum { B64_ALPHA_BOTH = 0, B64_ALPHA_STD = 1, B64_ALPHA_URL = 2 };

static int b64_class(unsigned char c, int *alphabet) {
  *alphabet = B64_ALPHA_BOTH;
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  switch (c) {
  case '+': *alphabet = B64_ALPHA_STD; return 62;
  case '/': *alphabet = B64_ALPHA_STD; return 63;
  case '-': *alphabet = B64_ALPHA_URL; return 62;
  case '_': *alphabet = B64_ALPHA_URL; return 63;
  case '=': return B64_PAD;
  case ' ': case '\t': case '\r': case '\n': return B64_SPACE;
  default: return B64_BAD;
  }
}

/* Bytes carried by n significant characters (n % 4 != 1). Never exceeds n, so cannot overflow. */
static size_t b64_decoded_size(size_t n) {
  size_t rem = n % 4;
  return n / 4 * 3 + (rem ? rem - 1 : 0);
}

/* Validates in and returns the number of significant characters in *count. */
static int b64_scan(const char *in, size_t in_len, size_t *count) {
  size_t n = 0, pads = 0;
  int seen = B64_ALPHA_BOTH;
  int last = 0;
  for (size_t i = 0; i < in_len; i++) {
    int alphabet;
    int v = b64_class((unsigned char)in[i], &alphabet);
    if (v == B64_SPACE) continue;
    if (v == B64_BAD) return -1;
    if (v == B64_PAD) {
      if (++pads > 2) return -1;
      continue;
    }
    if (pads) return -1; /* data after padding */
    if (alphabet != B64_ALPHA_BOTH) {
      if (seen != B64_ALPHA_BOTH && seen != alphabet) return -1;
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

/* Decodes an input that b64_scan accepted; out holds exactly the decoded size. */
static void b64_fill(const char *in, size_t in_len, uint8_t *out) {
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  for (size_t i = 0; i < in_len; i++) {
    int alphabet;
    int v = b64_class((unsigned char)in[i], &alphabet);
    if (v < 0) continue;
    acc = (acc << 6 | (uint32_t)v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (uint8_t)(acc >> bits);
    }
  }
}

int base64_decode(const char *in, size_t in_len, size_t max_out, uint8_t **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (!in && in_len) return -1;
  size_t n = 0;
  if (b64_scan(in, in_len, &n) != 0) return -1;
  size_t size = b64_decoded_size(n);
  if (size > max_out) return -2;
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf) return -1;
  b64_fill(in, in_len, buf);
  *out = buf;
  *out_len = size;
  return 0;
}

/* Saturates at SIZE_MAX when the result would not fit, so callers can refuse it. */
size_t base64_encoded_len(size_t in_len) {
  size_t groups = in_len / 3 + (in_len % 3 ? 1 : 0);
  if (groups > SIZE_MAX / 4) return SIZE_MAX;
  return groups * 4;
}

char *base64_encode(const uint8_t *in, size_t in_len) {
  size_t len = base64_encoded_len(in_len);
  if (len == SIZE_MAX) return NULL; /* no room for the NUL either */
  char *out = malloc(len + 1);
  if (!out) return NULL;
  size_t o = 0, i = 0;
  for (; i + 3 <= in_len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = b64_std[v >> 18];
    out[o++] = b64_std[(v >> 12) & 63];
    out[o++] = b64_std[(v >> 6) & 63];
    out[o++] = b64_std[v & 63];
  }
  size_t rem = in_len - i;
  if (rem) {
    uint32_t v = (uint32_t)in[i] << 16 | (rem == 2 ? (uint32_t)in[i + 1] << 8 : 0);
    out[o++] = b64_std[v >> 18];
    out[o++] = b64_std[(v >> 12) & 63];
    out[o++] = rem == 2 ? b64_std[(v >> 6) & 63] : '=';
    out[o++] = '=';
  }
  out[o] = '\0';
  return out;
}
