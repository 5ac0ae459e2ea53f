/* base64.c - RFC 4648 base64: strict decoding of both alphabets, one-shot and
 * streaming; standard encoding.
 *
 * Decoding is table driven. Each of the four positions of a group has its own
 * table of 256 words holding the character's six bits already shifted to
 * their place in the group's 24, or a marker bit above them for anything else;
 * so a group is four loads and three ORs, and one test of the marker tells
 * whether all four were plain digits. The main loop takes two groups (eight
 * characters, six bytes) per step. Whatever is not a plain digit (whitespace,
 * padding, the first '+/' or '-_' that settles the alphabet, a bad byte) drops
 * to a path that takes one character at a time and knows every rule; the fast
 * loop resumes at the next group boundary. There is one table set per
 * alphabet state: before the alphabet is known, '+/-_' are not plain digits
 * (the slow path settles it); after, the other alphabet's two are bad bytes. */
#include "util/base64.h"

#include <stdlib.h>
#include <string.h>

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Above the 24 bits of a group: set when a character is not a plain digit. */
#define B64_NOT_DIGIT 0xff000000u

enum { B64_ALPHA_UNKNOWN = 0, B64_ALPHA_STD = 1, B64_ALPHA_URL = 2 };

/* The digit value of c in alphabet state a, or -1. A constant expression, so
 * the tables below are built by the compiler. */
#define B64_VALUE(c, a)                                                                    \
  ((c) >= 'A' && (c) <= 'Z'   ? (c) - 'A'                                                  \
   : (c) >= 'a' && (c) <= 'z' ? (c) - 'a' + 26                                             \
   : (c) >= '0' && (c) <= '9' ? (c) - '0' + 52                                             \
   : (a) == B64_ALPHA_STD     ? ((c) == '+' ? 62 : (c) == '/' ? 63 : -1)                   \
   : (a) == B64_ALPHA_URL     ? ((c) == '-' ? 62 : (c) == '_' ? 63 : -1)                   \
                              : -1)
#define B64_ENTRY(c, a, shift) \
  (B64_VALUE(c, a) < 0 ? B64_NOT_DIGIT : (uint32_t)B64_VALUE(c, a) << (shift))
#define B64_ROW4(c, a, s) \
  B64_ENTRY(c, a, s), B64_ENTRY(c + 1, a, s), B64_ENTRY(c + 2, a, s), B64_ENTRY(c + 3, a, s)
#define B64_ROW16(c, a, s) \
  B64_ROW4(c, a, s), B64_ROW4(c + 4, a, s), B64_ROW4(c + 8, a, s), B64_ROW4(c + 12, a, s)
#define B64_ROW64(c, a, s) \
  B64_ROW16(c, a, s), B64_ROW16(c + 16, a, s), B64_ROW16(c + 32, a, s), B64_ROW16(c + 48, a, s)
#define B64_TABLE(a, s) \
  {B64_ROW64(0, a, s), B64_ROW64(64, a, s), B64_ROW64(128, a, s), B64_ROW64(192, a, s)}
#define B64_TABLES(a) {B64_TABLE(a, 18), B64_TABLE(a, 12), B64_TABLE(a, 6), B64_TABLE(a, 0)}

/* [alphabet state][position in the group][character] */
static const uint32_t b64_tables[3][4][256] = {
    B64_TABLES(B64_ALPHA_UNKNOWN),
    B64_TABLES(B64_ALPHA_STD),
    B64_TABLES(B64_ALPHA_URL),
};

/* Character classes beyond the 0..63 digit values, for the slow path. */
enum { B64_OTHER = -1, B64_SPACE = -2, B64_PAD = -3 };

/* The class of c; *alphabet says which alphabet a digit belongs to
 * (B64_ALPHA_UNKNOWN for the 62 both share). */
static int b64_class(unsigned char c, int *alphabet) {
  *alphabet = B64_ALPHA_UNKNOWN;
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
  default: return B64_OTHER;
  }
}

static inline void b64_put3(uint8_t *out, uint32_t group) {
  out[0] = (uint8_t)(group >> 16);
  out[1] = (uint8_t)(group >> 8);
  out[2] = (uint8_t)group;
}

/* Decodes whole groups of plain digits from the start of in; stops at the
 * first group holding anything else. Returns the characters consumed (a
 * multiple of 4) and adds the bytes written to *o. */
static size_t b64_fast(const uint32_t (*t)[256], const unsigned char *in, size_t len,
                       uint8_t *out, size_t *o) {
  size_t i = 0;
  uint8_t *w = out + *o;
  while (len - i >= 8) {
    const unsigned char *p = in + i;
    uint32_t a = t[0][p[0]] | t[1][p[1]] | t[2][p[2]] | t[3][p[3]];
    uint32_t b = t[0][p[4]] | t[1][p[5]] | t[2][p[6]] | t[3][p[7]];
    if ((a | b) & B64_NOT_DIGIT) break;
    b64_put3(w, a);
    b64_put3(w + 3, b);
    w += 6;
    i += 8;
  }
  while (len - i >= 4) {
    const unsigned char *p = in + i;
    uint32_t a = t[0][p[0]] | t[1][p[1]] | t[2][p[2]] | t[3][p[3]];
    if (a & B64_NOT_DIGIT) break;
    b64_put3(w, a);
    w += 3;
    i += 4;
  }
  *o = (size_t)(w - out);
  return i;
}

void base64_stream_init(base64_stream *s) {
  memset(s, 0, sizeof *s);
  s->table = b64_tables[B64_ALPHA_UNKNOWN];
}

/* The decoder both forms share. skip_space: feed (whitespace skipped, any
 * other byte a fault) or run (stop before whitespace or any other byte).
 * Returns the characters consumed; a fault sets s->failed and stops before
 * the faulty character. */
static size_t b64_decode_some(base64_stream *s, const char *text, size_t len, uint8_t *out,
                              size_t *out_len, bool skip_space) {
  const unsigned char *in = (const unsigned char *)text;
  size_t i = 0, o = 0;
  while (i < len && !s->failed) {
    if (s->n == 0 && s->pads == 0) {
      i += b64_fast(s->table, in + i, len - i, out, &o);
      if (i == len) break;
    }
    int alphabet;
    int v = b64_class(in[i], &alphabet);
    if (v >= 0) {
      if (s->pads) { /* data after padding */
        s->failed = true;
        break;
      }
      if (alphabet != B64_ALPHA_UNKNOWN) {
        if (s->alphabet != B64_ALPHA_UNKNOWN && s->alphabet != alphabet) { /* mixed */
          s->failed = true;
          break;
        }
        s->alphabet = (uint8_t)alphabet;
        s->table = b64_tables[alphabet];
      }
      s->acc = s->acc << 6 | (uint32_t)v;
      if (++s->n == 4) {
        b64_put3(out + o, s->acc);
        o += 3;
        s->n = 0;
        s->acc = 0;
      }
    } else if (v == B64_PAD) {
      /* Padding only completes a group of two or three characters, exactly. */
      if (s->n < 2 || s->n + s->pads + 1 > 4) {
        s->failed = true;
        break;
      }
      s->pads++;
    } else if (!skip_space) {
      break; /* the caller's character */
    } else if (v != B64_SPACE) {
      s->failed = true;
      break;
    }
    i++;
  }
  *out_len = o;
  return i;
}

int base64_stream_feed(base64_stream *s, const char *in, size_t len, uint8_t *out,
                       size_t *out_len) {
  *out_len = 0;
  if (s->failed) return -1;
  b64_decode_some(s, in, len, out, out_len, true);
  return s->failed ? -1 : 0;
}

size_t base64_stream_run(base64_stream *s, const char *in, size_t len, uint8_t *out,
                         size_t *out_len) {
  *out_len = 0;
  if (s->failed) return 0;
  return b64_decode_some(s, in, len, out, out_len, false);
}

/* Characters per piece of feed_to; its buffer holds what they decode to. */
#define B64_SINK_PIECE 16384

int base64_stream_feed_to(base64_stream *s, const char *in, size_t len, base64_sink_fn sink,
                          void *ctx) {
  uint8_t piece_out[BASE64_FEED_MAX(B64_SINK_PIECE)];
  size_t i = 0;
  while (i < len) {
    size_t piece = len - i < B64_SINK_PIECE ? len - i : B64_SINK_PIECE;
    size_t n = 0;
    int rc = base64_stream_feed(s, in + i, piece, piece_out, &n);
    if (n && sink(ctx, piece_out, n) != 0) return -2;
    if (rc != 0) return -1;
    i += piece;
  }
  return s->failed ? -1 : 0;
}

int base64_stream_finish(base64_stream *s, uint8_t tail[2], size_t *tail_len) {
  *tail_len = 0;
  if (s->failed) return -1;
  /* A group of one character carries no whole byte; padding must complete
   * the group exactly (pads > 0 implies n >= 2, checked as they came). */
  bool bad = s->n == 1 || (s->pads && s->n + s->pads != 4);
  /* The unused low bits of the last character must be zero, or two spellings
   * would decode to the same bytes. */
  if (s->n == 2 && (s->acc & 0x0f)) bad = true;
  if (s->n == 3 && (s->acc & 0x03)) bad = true;
  if (bad) {
    s->failed = true;
    return -1;
  }
  if (s->n == 2) {
    tail[0] = (uint8_t)(s->acc >> 4);
    *tail_len = 1;
  } else if (s->n == 3) {
    tail[0] = (uint8_t)(s->acc >> 10);
    tail[1] = (uint8_t)(s->acc >> 2);
    *tail_len = 2;
  }
  s->n = 0;
  s->acc = 0;
  return 0;
}

/* The one-shot form: the stream over the whole input, into a buffer of the
 * most the input can carry (or max_out, when smaller). Past max_out, the rest
 * is still decoded, into a scratch buffer, only to tell a malformed input
 * (-1) from an oversized one (-2), as the rules say malformed comes first. */
int base64_decode(const char *in, size_t in_len, size_t max_out, uint8_t **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  if (!in && in_len) return -1;
  size_t bound = in_len / 4 * 3 + 2; /* every character a digit, and a tail of 3 */
  size_t cap = bound < max_out ? bound : max_out;
  uint8_t *buf = malloc(cap ? cap : 1);
  if (!buf) return -1;
  base64_stream s;
  base64_stream_init(&s);
  uint8_t scratch[3 * 1024];
  size_t total = 0; /* bytes decoded; only the first cap are kept */
  size_t i = 0;
  while (i < in_len) {
    size_t room = total < cap ? cap - total : 0;
    uint8_t *dst = buf + total;
    size_t piece = room / 3 * 4; /* decodes to at most room bytes, whatever came before */
    if (piece == 0) {
      dst = scratch;
      piece = sizeof scratch / 3 * 4;
    }
    if (piece > in_len - i) piece = in_len - i;
    size_t n = 0;
    if (base64_stream_feed(&s, in + i, piece, dst, &n) != 0) {
      free(buf);
      return -1;
    }
    total += n;
    i += piece;
  }
  uint8_t tail[2];
  size_t tail_len = 0;
  if (base64_stream_finish(&s, tail, &tail_len) != 0) {
    free(buf);
    return -1;
  }
  if (total + tail_len > max_out) {
    free(buf);
    return -2;
  }
  memcpy(buf + total, tail, tail_len);
  total += tail_len;
  if (total < cap) { /* whitespace and padding took room; give it back */
    uint8_t *shrunk = realloc(buf, total ? total : 1);
    if (shrunk) buf = shrunk;
  }
  *out = buf;
  *out_len = total;
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
