/* imgscan.c - an incremental JSON (and event stream) scanner that decodes the
 * base64 strings at chosen paths as they pass, and copies the rest.
 *
 * Layers, bottom up:
 * - the rest: bytes outside image strings are copied in spans (one memcpy per
 *   run of ordinary bytes in a piece), each span from copy_from up to where
 *   copying stops or the piece ends;
 * - the JSON machine: what the grammar expects next (a value, a key, ':', ','
 *   or a closing bracket, the end), the token being read (string, number,
 *   literal) and its sub-state, kept between pieces so that a piece may end
 *   in the middle of anything; a stack of containers, each with the bit mask
 *   of the path patterns that still match down to it;
 * - image strings: base64_stream_run takes the longest run of base64
 *   characters at once, straight from the piece (the fast path: no copy, no
 *   per-byte loop here); what stops it (the closing quote, an escape, a
 *   space, a bad byte) is looked at here, one character at a time;
 * - event streams: lines are cut at CR, LF or CRLF (a CR at the end of one
 *   piece and its LF at the start of the next are one line end), "data:"
 *   lines go to the JSON machine, a blank line ends the event. */
#include "upstream/imgscan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/base64.h"
#include "util/buf.h"

/* Base64 characters handed to the decoder at once; the decode buffer holds
 * what they make. */
#define IMGSCAN_PIECE 16384
/* A "data:...;base64," prefix must end within this many characters. */
#define IMGSCAN_DATA_URL_MAX 128
/* Longest SSE field name told apart ("data"); longer ones are ignored. */
#define IMGSCAN_FIELD_MAX 8

typedef struct imgscan_segment {
  const char *name; /* into the caller's path text, which outlives the scanner */
  uint8_t name_len;
  bool any_index;   /* "[]" */
} imgscan_segment;

typedef struct imgscan_pattern {
  imgscan_segment seg[IMGSCAN_MAX_SEGMENTS];
  uint8_t n;
  imgscan_kind kind;
} imgscan_pattern;

/* What the grammar expects outside a token. */
typedef enum {
  X_VALUE,          /* a value (the document's, after ':', after ',' in an array) */
  X_VALUE_OR_CLOSE, /* after '[' */
  X_KEY_OR_CLOSE,   /* after '{' */
  X_KEY,            /* after ',' in an object */
  X_COLON,
  X_COMMA_OR_CLOSE, /* after a value inside a container */
  X_END,            /* after the document's value: whitespace only */
} imgscan_expect;

typedef enum { T_NONE, T_STRING, T_NUMBER, T_LITERAL } imgscan_token;
typedef enum { R_KEY, R_PLAIN, R_IMAGE, R_DROP } imgscan_role;
typedef enum { ESC_NONE, ESC_BACKSLASH, ESC_HEX } imgscan_escape;
/* Number grammar states; the accepting ones can end the number. */
typedef enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_E_SIGN, N_EXP } imgscan_number_state;
/* Event stream line states. */
typedef enum { L_START, L_FIELD, L_DATA_SPACE, L_DATA, L_SKIP } imgscan_line;

typedef struct imgscan_frame {
  uint32_t alive; /* patterns matching the path down to this container, and longer */
  bool object;
} imgscan_frame;

struct imgscan {
  imgscan_framing framing; /* AUTO until decided */
  imgscan_sink sink;
  size_t rest_max;
  size_t n_patterns;
  uint32_t all_patterns;

  imgscan_status status;
  char message[160];
  uint64_t fed;          /* bytes fed before the current piece */
  const char *piece;     /* the current piece, for offsets in messages */
  size_t piece_len;

  /* the JSON machine */
  imgscan_frame frames[IMGSCAN_MAX_DEPTH];
  size_t depth;
  imgscan_expect expect;
  imgscan_token token;
  bool seen_value;       /* a value has begun in this document */
  uint32_t value_alive;  /* patterns matching the path of the value about to begin */
  imgscan_role role;     /* of the string being read */
  imgscan_escape esc;
  uint8_t hex_digits;
  uint32_t hex_code;
  bool high_surrogate;   /* a \uD800-\uDBFF came: its low half must follow at once */
  uint32_t high_code;
  uint8_t utf8_need;     /* continuation bytes still due in a UTF-8 sequence */
  uint8_t utf8_lo, utf8_hi; /* the range of the next one */
  imgscan_number_state number;
  const char *literal;   /* "true", "false" or "null" being read */
  uint8_t literal_pos;
  char key[IMGSCAN_MAX_NAME + 1]; /* the member name being read, unescaped */
  uint8_t key_len;
  bool key_unmatchable;  /* too long, or holds what no pattern name can */

  /* the image string being read */
  base64_stream b64;
  size_t n_images;
  size_t image;          /* the current one's number */
  bool in_prefix;        /* still looking at its first characters for "data:" */
  uint8_t prefix_len;
  char prefix[IMGSCAN_DATA_URL_MAX];

  /* the rest */
  buf rest;
  const char *copy_from; /* start of the span not yet copied; NULL while skipping */

  /* the event stream */
  imgscan_line line;
  bool after_cr;         /* the last byte was a CR: an LF now is part of its line end */
  bool event_has_data;
  size_t events;
  uint8_t field_len;
  char field[IMGSCAN_FIELD_MAX];
  uint8_t bom_seen;      /* bytes of a leading UTF-8 byte order mark matched */
  bool started;          /* a byte other than leading whitespace or BOM came */

  size_t out_len;         /* decoded bytes in out, not yet given to the sink */
  uint8_t out[BASE64_FEED_MAX(IMGSCAN_PIECE)];

  imgscan_pattern patterns[]; /* n_patterns */
};

/* ================= patterns ================= */

static bool imgscan_name_byte(unsigned char c) {
  return c > 0x20 && c < 0x7f && c != '.' && c != '[' && c != ']';
}

static bool imgscan_parse_path(const char *text, imgscan_pattern *p) {
  memset(p, 0, sizeof *p);
  const char *s = text;
  if (!s || !*s) return false;
  while (*s) {
    if (p->n == IMGSCAN_MAX_SEGMENTS) return false;
    imgscan_segment *seg = &p->seg[p->n];
    if (s[0] == '[') {
      if (s[1] != ']') return false;
      seg->any_index = true;
      s += 2;
    } else {
      size_t len = 0;
      while (imgscan_name_byte((unsigned char)s[len])) len++;
      if (len == 0 || len > IMGSCAN_MAX_NAME) return false;
      seg->name = s;
      seg->name_len = (uint8_t)len;
      s += len;
    }
    p->n++;
    if (*s == '.') {
      s++;
      if (!*s || *s == '.') return false; /* "a." or "a..b" */
    } else if (*s && *s != '[') {
      return false;
    }
  }
  return true;
}

/* Of the patterns in alive, those whose segment at level matches a member
 * named key (key_len bytes) or, when key is NULL, an array element. */
static uint32_t imgscan_step(const imgscan *s, uint32_t alive, size_t level, const char *key,
                             size_t key_len) {
  uint32_t next = 0;
  for (size_t i = 0; alive; i++, alive >>= 1) {
    if (!(alive & 1)) continue;
    const imgscan_pattern *p = &s->patterns[i];
    if (level >= p->n) continue;
    const imgscan_segment *seg = &p->seg[level];
    bool match = key ? !seg->any_index && seg->name_len == key_len &&
                           memcmp(seg->name, key, key_len) == 0
                     : seg->any_index;
    if (match) next |= 1u << i;
  }
  return next;
}

/* The patterns in alive that end at a path of length len, or are longer. */
static uint32_t imgscan_ending(const imgscan *s, uint32_t alive, size_t len, bool longer) {
  uint32_t out = 0;
  for (size_t i = 0; i < s->n_patterns; i++)
    if ((alive >> i & 1) && (longer ? s->patterns[i].n > len : s->patterns[i].n == len))
      out |= 1u << i;
  return out;
}

/* ================= faults and the rest ================= */

static uint64_t imgscan_offset(const imgscan *s, const char *at) {
  if (at && s->piece && at >= s->piece && at <= s->piece + s->piece_len)
    return s->fed + (uint64_t)(at - s->piece);
  return s->fed;
}

static void imgscan_fail(imgscan *s, imgscan_status status, const char *at, const char *what) {
  if (s->status != IMGSCAN_OK) return;
  s->status = status;
  if (status == IMGSCAN_ERR_SYNTAX)
    snprintf(s->message, sizeof s->message, "%s at byte %llu", what,
             (unsigned long long)imgscan_offset(s, at));
  else
    snprintf(s->message, sizeof s->message, "%s", what);
}

static void imgscan_rest_append(imgscan *s, const char *bytes, size_t n) {
  if (s->status != IMGSCAN_OK || n == 0) return;
  if (n > s->rest_max - s->rest.len) {
    imgscan_fail(s, IMGSCAN_ERR_REST, NULL, "the JSON around the images is too large");
    return;
  }
  if (!buf_append(&s->rest, bytes, n)) imgscan_fail(s, IMGSCAN_ERR_NOMEM, NULL, "out of memory");
}

/* Copies what is pending up to (not including) upto, and goes on copying from there. */
static void imgscan_flush(imgscan *s, const char *upto) {
  if (!s->copy_from) return;
  imgscan_rest_append(s, s->copy_from, (size_t)(upto - s->copy_from));
  s->copy_from = upto;
}

/* ================= the JSON machine ================= */

static bool imgscan_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void imgscan_json_reset(imgscan *s) {
  s->depth = 0;
  s->expect = X_VALUE;
  s->token = T_NONE;
  s->seen_value = false;
  s->value_alive = s->all_patterns;
}

static void imgscan_value_done(imgscan *s) {
  s->token = T_NONE;
  s->expect = s->depth ? X_COMMA_OR_CLOSE : X_END;
}

static void imgscan_push(imgscan *s, bool object, const char *at) {
  if (s->depth == IMGSCAN_MAX_DEPTH) {
    imgscan_fail(s, IMGSCAN_ERR_DEPTH, at, "the JSON nests too deep");
    return;
  }
  s->frames[s->depth].object = object;
  s->frames[s->depth].alive = imgscan_ending(s, s->value_alive, s->depth, true);
  s->depth++;
  s->expect = object ? X_KEY_OR_CLOSE : X_VALUE_OR_CLOSE;
}

static void imgscan_pop(imgscan *s) {
  s->depth--;
  imgscan_value_done(s);
}

/* --- image strings --- */

/* Decoded bytes wait in out until it is nearly full or the image ends, so
 * that the sink gets pieces of kilobytes even when escapes or spaces break
 * the base64 into short runs. */
static void imgscan_out_flush(imgscan *s) {
  if (s->out_len && s->status == IMGSCAN_OK &&
      s->sink.write(s->sink.ctx, s->image, s->out, s->out_len) != 0)
    imgscan_fail(s, IMGSCAN_ERR_SINK, NULL, "the image sink refused");
  s->out_len = 0;
}

/* Room for at least need more decoded bytes; returns how much there is. */
static size_t imgscan_out_room(imgscan *s, size_t need) {
  if (sizeof s->out - s->out_len < need) imgscan_out_flush(s);
  return sizeof s->out - s->out_len;
}

static void imgscan_bad_base64(imgscan *s) {
  imgscan_fail(s, IMGSCAN_ERR_BASE64, NULL, "the image data is not valid base64");
}

/* Characters of an image string that the fast path did not take (n <= 8): an
 * escaped one, a space, a bad byte, or what the prefix held. */
static void imgscan_b64_chars(imgscan *s, const char *chars, size_t n) {
  imgscan_out_room(s, BASE64_FEED_MAX(n));
  size_t out = 0;
  int rc = base64_stream_feed(&s->b64, chars, n, s->out + s->out_len, &out);
  s->out_len += out;
  if (rc != 0) imgscan_bad_base64(s);
}

static bool imgscan_prefix_is_data_url(const imgscan *s) {
  size_t n = s->prefix_len < 5 ? s->prefix_len : 5;
  return strncasecmp(s->prefix, "data:", n) == 0;
}

/* One decoded character of an image string. */
static void imgscan_image_char(imgscan *s, char c) {
  if (!s->in_prefix) {
    imgscan_b64_chars(s, &c, 1);
    return;
  }
  s->prefix[s->prefix_len++] = c;
  if (!imgscan_prefix_is_data_url(s)) { /* plain base64: replay what was held (<= 5) */
    s->in_prefix = false;
    imgscan_b64_chars(s, s->prefix, s->prefix_len);
    return;
  }
  static const char marker[] = ";base64,";
  const size_t mlen = sizeof marker - 1;
  if (s->prefix_len > 5 && s->prefix_len >= mlen &&
      memcmp(s->prefix + s->prefix_len - mlen, marker, mlen) == 0) {
    s->in_prefix = false; /* the payload starts after it */
    return;
  }
  if (s->prefix_len == IMGSCAN_DATA_URL_MAX) imgscan_bad_base64(s);
}

static void imgscan_image_begin(imgscan *s, const char *quote) {
  imgscan_flush(s, quote + 1);
  s->image = s->n_images++;
  char marker[sizeof IMGSCAN_MARKER + 24];
  int n = snprintf(marker, sizeof marker, IMGSCAN_MARKER "%zu", s->image);
  imgscan_rest_append(s, marker, (size_t)n);
  s->copy_from = NULL;
  base64_stream_init(&s->b64);
  s->out_len = 0;
  s->in_prefix = true;
  s->prefix_len = 0;
  if (s->status == IMGSCAN_OK && s->sink.begin(s->sink.ctx, s->image) != 0)
    imgscan_fail(s, IMGSCAN_ERR_SINK, NULL, "the image sink refused");
}

static void imgscan_image_end(imgscan *s) {
  if (s->in_prefix) {
    s->in_prefix = false;
    /* A data URL whose ";base64," never came is not base64; a short string
     * that only looked like the start of one is. */
    if (s->prefix_len >= 5 && imgscan_prefix_is_data_url(s)) {
      imgscan_bad_base64(s);
      return;
    }
    imgscan_b64_chars(s, s->prefix, s->prefix_len);
  }
  if (s->status != IMGSCAN_OK) return;
  imgscan_out_room(s, 2);
  size_t tail_len = 0;
  if (base64_stream_finish(&s->b64, s->out + s->out_len, &tail_len) != 0) {
    imgscan_bad_base64(s);
    return;
  }
  s->out_len += tail_len;
  imgscan_out_flush(s);
  if (s->status == IMGSCAN_OK && s->sink.end(s->sink.ctx, s->image) != 0)
    imgscan_fail(s, IMGSCAN_ERR_SINK, NULL, "the image sink refused");
}

/* --- strings --- */

static void imgscan_string_begin(imgscan *s, imgscan_role role, const char *quote) {
  s->token = T_STRING;
  s->role = role;
  s->esc = ESC_NONE;
  s->high_surrogate = false;
  s->utf8_need = 0;
  if (role == R_KEY) {
    s->key_len = 0;
    /* No pattern continues below this object: its names need no reading. */
    s->key_unmatchable = s->frames[s->depth - 1].alive == 0;
  } else if (role == R_IMAGE) {
    imgscan_image_begin(s, quote);
  } else if (role == R_DROP) {
    imgscan_flush(s, quote + 1);
    s->copy_from = NULL;
  }
}

/* One character of a string's value, escapes undone: a raw byte of the
 * string (raw: UTF-8 sequences come a byte at a time), or the code point of
 * an escape. */
static void imgscan_string_char(imgscan *s, uint32_t code, bool raw) {
  if (s->role == R_KEY) {
    if (s->key_unmatchable) return;
    /* Pattern names are printable ASCII: anything else never matches. */
    if (code < 0x20 || code >= 0x7f || s->key_len == IMGSCAN_MAX_NAME)
      s->key_unmatchable = true;
    else
      s->key[s->key_len++] = (char)code;
  } else if (s->role == R_IMAGE) {
    if (code < 0x80 || (raw && s->in_prefix)) {
      imgscan_image_char(s, (char)code);
    } else if (s->in_prefix) { /* a data URL's media type may hold any text: as UTF-8 */
      char utf8[4];
      size_t n = code < 0x800 ? 2 : code < 0x10000 ? 3 : 4;
      for (size_t i = n - 1; i > 0; i--, code >>= 6) utf8[i] = (char)(0x80 | (code & 0x3f));
      utf8[0] = (char)((n == 2 ? 0xc0 : n == 3 ? 0xe0 : 0xf0) | code);
      for (size_t i = 0; i < n && s->in_prefix && s->status == IMGSCAN_OK; i++)
        imgscan_image_char(s, utf8[i]);
      /* The payload cannot start inside a character: its bytes are no base64. */
      if (!s->in_prefix && s->status == IMGSCAN_OK) imgscan_bad_base64(s);
    } else {
      imgscan_bad_base64(s); /* no base64 digit */
    }
  }
}

/* The closing quote at quote. */
static void imgscan_string_end(imgscan *s, const char *quote) {
  switch (s->role) {
  case R_KEY:
    s->value_alive = s->key_unmatchable ? 0
                                        : imgscan_step(s, s->frames[s->depth - 1].alive,
                                                       s->depth - 1, s->key, s->key_len);
    s->token = T_NONE;
    s->expect = X_COLON;
    return;
  case R_IMAGE:
    imgscan_image_end(s);
    s->copy_from = quote;
    break;
  case R_DROP:
    s->copy_from = quote;
    break;
  case R_PLAIN:
    break;
  }
  imgscan_value_done(s);
}

static int imgscan_hex(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* A code point from a \uXXXX escape, with the rules jansson applies: no
 * \u0000, and surrogates only as a high half followed at once by a low half
 * (the pair is one character). */
static void imgscan_escaped_code(imgscan *s, uint32_t code, const char *at) {
  bool low = code >= 0xdc00 && code <= 0xdfff;
  if (s->high_surrogate != low || code == 0) {
    imgscan_fail(s, IMGSCAN_ERR_SYNTAX, at, "invalid JSON: a bad \\u escape");
    return;
  }
  s->high_surrogate = code >= 0xd800 && code <= 0xdbff;
  if (s->high_surrogate)
    s->high_code = code;
  else if (low)
    imgscan_string_char(s, 0x10000 + ((s->high_code - 0xd800) << 10) + (code - 0xdc00), false);
  else
    imgscan_string_char(s, code, false);
}

/* One byte of an escape sequence at p. */
static void imgscan_escape_byte(imgscan *s, const char *p) {
  unsigned char c = (unsigned char)*p;
  if (s->esc == ESC_HEX) {
    int v = imgscan_hex(c);
    if (v < 0) {
      imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: a bad \\u escape");
      return;
    }
    s->hex_code = s->hex_code << 4 | (uint32_t)v;
    if (++s->hex_digits == 4) {
      s->esc = ESC_NONE;
      imgscan_escaped_code(s, s->hex_code, p);
    }
    return;
  }
  static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
  const char *hit = c ? strchr(from, c) : NULL;
  if (c == 'u') {
    s->esc = ESC_HEX;
    s->hex_digits = 0;
    s->hex_code = 0;
  } else if (hit && !s->high_surrogate) {
    s->esc = ESC_NONE;
    imgscan_string_char(s, (unsigned char)to[hit - from], false);
  } else {
    imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: a bad escape in a string");
  }
}

/* Checks one raw byte of a string as UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF). false when bad. */
static bool imgscan_utf8_byte(imgscan *s, unsigned char c) {
  if (s->utf8_need) {
    if (c < s->utf8_lo || c > s->utf8_hi) return false;
    s->utf8_need--;
    s->utf8_lo = 0x80;
    s->utf8_hi = 0xbf;
    return true;
  }
  if (c < 0x80) return true;
  s->utf8_lo = 0x80;
  s->utf8_hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf) {
    s->utf8_need = 1;
  } else if (c >= 0xe0 && c <= 0xef) {
    s->utf8_need = 2;
    if (c == 0xe0) s->utf8_lo = 0xa0;
    if (c == 0xed) s->utf8_hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    s->utf8_need = 3;
    if (c == 0xf0) s->utf8_lo = 0x90;
    if (c == 0xf4) s->utf8_hi = 0x8f;
  } else {
    return false;
  }
  return true;
}

/* Reads string bytes from p; returns where it stopped (after the closing
 * quote, or end). */
static const char *imgscan_string(imgscan *s, const char *p, const char *end) {
  while (p < end && s->status == IMGSCAN_OK) {
    if (s->esc != ESC_NONE) {
      imgscan_escape_byte(s, p++);
      continue;
    }
    if (s->role == R_IMAGE && !s->in_prefix) {
      /* The fast path: a run of base64 straight from the piece. */
      size_t room = imgscan_out_room(s, BASE64_FEED_MAX(IMGSCAN_PIECE / 4));
      size_t avail = (size_t)(end - p);
      size_t most = (room / 3 - 1) * 4; /* BASE64_FEED_MAX(most) <= room */
      size_t take = avail < most ? avail : most;
      size_t out = 0;
      size_t used = base64_stream_run(&s->b64, p, take, s->out + s->out_len, &out);
      s->out_len += out;
      p += used;
      if (base64_stream_failed(&s->b64)) imgscan_bad_base64(s);
      if (used == take || s->status != IMGSCAN_OK) continue;
    }
    unsigned char c = (unsigned char)*p;
    if ((s->high_surrogate && c != '\\') || !imgscan_utf8_byte(s, c)) {
      imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p,
                   s->high_surrogate ? "invalid JSON: a bad \\u escape"
                                     : "invalid JSON: a string is not UTF-8");
      break;
    }
    if (c == '"') {
      imgscan_string_end(s, p);
      return p + 1;
    }
    if (c == '\\') {
      s->esc = ESC_BACKSLASH;
    } else if (c < 0x20) {
      imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: a control character in a string");
      break;
    } else if (s->role != R_PLAIN && s->role != R_DROP) {
      imgscan_string_char(s, c, true);
    }
    p++;
  }
  return p;
}

/* --- numbers and literals --- */

static bool imgscan_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static bool imgscan_number_complete(imgscan_number_state n) {
  return n == N_ZERO || n == N_INT || n == N_FRAC || n == N_EXP;
}

/* The next state of a number on c, or -1 when c does not continue it. */
static int imgscan_number_next(imgscan_number_state n, unsigned char c) {
  bool digit = imgscan_digit(c);
  switch (n) {
  case N_MINUS: return c == '0' ? N_ZERO : digit ? N_INT : -1;
  case N_ZERO: return c == '.' ? N_DOT : (c == 'e' || c == 'E') ? N_E : -1;
  case N_INT: return digit ? N_INT : c == '.' ? N_DOT : (c == 'e' || c == 'E') ? N_E : -1;
  case N_DOT: return digit ? N_FRAC : -1;
  case N_FRAC: return digit ? N_FRAC : (c == 'e' || c == 'E') ? N_E : -1;
  case N_E: return digit ? N_EXP : (c == '+' || c == '-') ? N_E_SIGN : -1;
  case N_E_SIGN: return digit ? N_EXP : -1;
  case N_EXP: return digit ? N_EXP : -1;
  }
  return -1;
}

static const char *imgscan_number(imgscan *s, const char *p, const char *end) {
  for (; p < end; p++) {
    int next = imgscan_number_next(s->number, (unsigned char)*p);
    if (next < 0) {
      if (imgscan_number_complete(s->number))
        imgscan_value_done(s); /* *p belongs to what follows */
      else
        imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: a malformed number");
      return p;
    }
    s->number = (imgscan_number_state)next;
  }
  return p;
}

static const char *imgscan_literal(imgscan *s, const char *p, const char *end) {
  for (; p < end; p++) {
    if (*p != s->literal[s->literal_pos]) {
      imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: an unknown word");
      return p;
    }
    if (s->literal[++s->literal_pos] == '\0') {
      imgscan_value_done(s);
      return p + 1;
    }
  }
  return p;
}

/* --- structure --- */

/* A value begins with c at p. */
static void imgscan_value_begin(imgscan *s, const char *p) {
  unsigned char c = (unsigned char)*p;
  if (s->depth > 0 && !s->frames[s->depth - 1].object)
    s->value_alive = imgscan_step(s, s->frames[s->depth - 1].alive, s->depth - 1, NULL, 0);
  s->seen_value = true;
  if (c == '"') {
    uint32_t here = imgscan_ending(s, s->value_alive, s->depth, false);
    imgscan_role role = R_PLAIN;
    for (size_t i = 0; i < s->n_patterns; i++) {
      if (!(here >> i & 1)) continue;
      if (s->patterns[i].kind == IMGSCAN_IMAGE) {
        role = R_IMAGE;
        break;
      }
      role = R_DROP;
    }
    imgscan_string_begin(s, role, p);
  } else if (c == '{' || c == '[') {
    imgscan_push(s, c == '{', p);
  } else if (c == '-' || imgscan_digit(c)) {
    s->token = T_NUMBER;
    s->number = c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT;
  } else if (c == 't' || c == 'f' || c == 'n') {
    s->token = T_LITERAL;
    s->literal = c == 't' ? "true" : c == 'f' ? "false" : "null";
    s->literal_pos = 1;
  } else {
    imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: a value was expected");
  }
}

/* One byte outside any token. */
static void imgscan_structure(imgscan *s, const char *p) {
  unsigned char c = (unsigned char)*p;
  if (imgscan_space(c)) return;
  bool in_object = s->depth > 0 && s->frames[s->depth - 1].object;
  switch (s->expect) {
  case X_VALUE_OR_CLOSE:
    if (c == ']') {
      imgscan_pop(s);
      return;
    }
    /* fall through */
  case X_VALUE:
    imgscan_value_begin(s, p);
    return;
  case X_KEY_OR_CLOSE:
    if (c == '}') {
      imgscan_pop(s);
      return;
    }
    /* fall through */
  case X_KEY:
    if (c == '"')
      imgscan_string_begin(s, R_KEY, p);
    else
      imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: a member name was expected");
    return;
  case X_COLON:
    if (c == ':')
      s->expect = X_VALUE;
    else
      imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: ':' was expected");
    return;
  case X_COMMA_OR_CLOSE:
    if (c == ',')
      s->expect = in_object ? X_KEY : X_VALUE;
    else if (c == (in_object ? '}' : ']'))
      imgscan_pop(s);
    else
      imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: ',' or a closing bracket was expected");
    return;
  case X_END:
    imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "invalid JSON: more after the end of the value");
    return;
  }
}

/* Scans a span of JSON text; what is copied to the rest is flushed at its end. */
static void imgscan_json(imgscan *s, const char *p, size_t len) {
  const char *end = p + len;
  bool skipping = s->token == T_STRING && (s->role == R_IMAGE || s->role == R_DROP);
  s->copy_from = skipping ? NULL : p;
  while (p < end && s->status == IMGSCAN_OK) {
    switch (s->token) {
    case T_STRING: p = imgscan_string(s, p, end); break;
    case T_NUMBER: p = imgscan_number(s, p, end); break;
    case T_LITERAL: p = imgscan_literal(s, p, end); break;
    case T_NONE: imgscan_structure(s, p++); break;
    }
  }
  imgscan_flush(s, end);
  s->copy_from = NULL;
}

/* The JSON value has ended (the end of the input, or of an event). */
static void imgscan_json_end(imgscan *s) {
  if (s->status != IMGSCAN_OK) return;
  if (s->token == T_NUMBER && imgscan_number_complete(s->number)) imgscan_value_done(s);
  if (s->expect != X_END || s->token != T_NONE)
    imgscan_fail(s, IMGSCAN_ERR_TRUNCATED, NULL,
                 s->seen_value ? "the JSON ends before its value does" : "no JSON value");
}

/* ================= event streams ================= */

static bool imgscan_field_is_data(const imgscan *s) {
  return s->field_len == 4 && memcmp(s->field, "data", 4) == 0;
}

static void imgscan_data_line_begin(imgscan *s) {
  if (!s->event_has_data) {
    s->event_has_data = true;
    imgscan_json_reset(s);
    if (s->events) imgscan_rest_append(s, ",", 1);
  } else {
    imgscan_json(s, "\n", 1); /* the lines of one event's data are joined with LF */
  }
}

static void imgscan_event_end(imgscan *s) {
  if (!s->event_has_data) return;
  imgscan_json_end(s);
  s->event_has_data = false;
  s->events++;
}

/* The first CR or LF in [p, end), or end. */
static const char *imgscan_line_end(const char *p, const char *end) {
  const char *lf = memchr(p, '\n', (size_t)(end - p));
  const char *limit = lf ? lf : end;
  const char *cr = memchr(p, '\r', (size_t)(limit - p));
  return cr ? cr : limit;
}

/* The line ended at the CR or LF at p; returns the byte after it. */
static const char *imgscan_line_break(imgscan *s, const char *p) {
  s->after_cr = *p == '\r';
  s->line = L_START;
  return p + 1;
}

static void imgscan_sse(imgscan *s, const char *p, size_t len) {
  const char *end = p + len;
  while (p < end && s->status == IMGSCAN_OK) {
    if (s->after_cr) {
      s->after_cr = false;
      if (*p == '\n') {
        p++;
        continue;
      }
    }
    char c = *p;
    switch (s->line) {
    case L_START:
      if (c == '\r' || c == '\n') {
        imgscan_event_end(s);
        p = imgscan_line_break(s, p);
      } else if (c == ':') { /* a comment */
        s->line = L_SKIP;
        p++;
      } else {
        s->line = L_FIELD;
        s->field_len = 0;
      }
      break;
    case L_FIELD:
      if (c == ':') {
        s->line = imgscan_field_is_data(s) ? L_DATA_SPACE : L_SKIP;
        if (s->line == L_DATA_SPACE) imgscan_data_line_begin(s);
        p++;
      } else if (c == '\r' || c == '\n') {
        if (imgscan_field_is_data(s)) imgscan_data_line_begin(s); /* "data" alone: no value */
        p = imgscan_line_break(s, p);
      } else {
        /* A name longer than the buffer is no name we know: it stays unmatched. */
        if (s->field_len < IMGSCAN_FIELD_MAX) s->field[s->field_len] = c;
        if (s->field_len < 255) s->field_len++;
        p++;
      }
      break;
    case L_DATA_SPACE:
      if (c == ' ') p++; /* one space after the colon is not part of the value */
      s->line = L_DATA;
      break;
    case L_DATA: {
      const char *eol = imgscan_line_end(p, end);
      imgscan_json(s, p, (size_t)(eol - p));
      p = eol < end ? imgscan_line_break(s, eol) : eol;
      break;
    }
    case L_SKIP: {
      const char *eol = imgscan_line_end(p, end);
      p = eol < end ? imgscan_line_break(s, eol) : eol;
      break;
    }
    }
  }
}

/* ================= the interface ================= */

imgscan *imgscan_new(const imgscan_config *cfg) {
  if (!cfg || cfg->n_paths > IMGSCAN_MAX_PATHS || (cfg->n_paths && !cfg->paths) ||
      !cfg->sink.begin || !cfg->sink.write || !cfg->sink.end)
    return NULL;
  if (cfg->framing != IMGSCAN_JSON && cfg->framing != IMGSCAN_SSE &&
      cfg->framing != IMGSCAN_AUTO)
    return NULL;
  imgscan *s = calloc(1, sizeof *s + cfg->n_paths * sizeof s->patterns[0]);
  if (!s) return NULL;
  for (size_t i = 0; i < cfg->n_paths; i++) {
    if (!imgscan_parse_path(cfg->paths[i].path, &s->patterns[i]) ||
        (cfg->paths[i].kind != IMGSCAN_IMAGE && cfg->paths[i].kind != IMGSCAN_DROP)) {
      free(s);
      return NULL;
    }
    s->patterns[i].kind = cfg->paths[i].kind;
    s->all_patterns |= 1u << i;
  }
  s->n_patterns = cfg->n_paths;
  s->framing = cfg->framing;
  s->sink = cfg->sink;
  s->rest_max = cfg->rest_max;
  s->line = L_START;
  imgscan_json_reset(s);
  return s;
}

void imgscan_free(imgscan *s) {
  if (!s) return;
  buf_free(&s->rest);
  free(s);
}

/* Leading whitespace, and a byte order mark as the very first bytes of an
 * event stream, before the framing is decided (or, for SSE, before the first
 * line). A stream that starts with a part of one is refused. Returns the
 * first byte not taken. */
static const char *imgscan_lead(imgscan *s, const char *p, const char *end) {
  static const char bom[] = "\xef\xbb\xbf";
  while (p < end && !s->started && s->status == IMGSCAN_OK) {
    unsigned char c = (unsigned char)*p;
    if (s->bom_seen > 0 && s->bom_seen < 3) {
      if (c != (unsigned char)bom[s->bom_seen]) {
        imgscan_fail(s, IMGSCAN_ERR_SYNTAX, p, "not JSON nor an event stream");
        return p;
      }
      s->bom_seen++;
      p++;
    } else if (c == 0xef && imgscan_offset(s, p) == 0 && s->framing != IMGSCAN_JSON) {
      s->bom_seen = 1;
      p++;
    } else if (s->framing == IMGSCAN_JSON) {
      s->started = true; /* JSON copies its own whitespace */
    } else if (imgscan_space(c) && s->bom_seen == 0) {
      p++; /* blank lines before the first event mean nothing */
    } else {
      if (s->framing == IMGSCAN_AUTO)
        s->framing = s->bom_seen == 0 && (c == '{' || c == '[') ? IMGSCAN_JSON : IMGSCAN_SSE;
      s->started = true;
    }
  }
  return p;
}

imgscan_status imgscan_feed(imgscan *s, const char *data, size_t len) {
  if (s->status != IMGSCAN_OK) return s->status;
  if (!data || len == 0) return IMGSCAN_OK;
  s->piece = data;
  s->piece_len = len;
  const char *p = imgscan_lead(s, data, data + len);
  if (p < data + len && s->status == IMGSCAN_OK) {
    if (s->framing == IMGSCAN_SSE) {
      if (s->rest.len == 0) imgscan_rest_append(s, "[", 1);
      imgscan_sse(s, p, (size_t)(data + len - p));
    } else {
      imgscan_json(s, p, (size_t)(data + len - p));
    }
  }
  s->fed += len;
  s->piece = NULL;
  s->piece_len = 0;
  return s->status;
}

imgscan_status imgscan_finish(imgscan *s) {
  if (s->status != IMGSCAN_OK) return s->status;
  if (s->bom_seen > 0 && s->bom_seen < 3) {
    imgscan_fail(s, IMGSCAN_ERR_TRUNCATED, NULL, "the input ends inside a byte order mark");
    return s->status;
  }
  if (s->framing == IMGSCAN_SSE || (s->framing == IMGSCAN_AUTO && s->bom_seen == 3)) {
    if (s->rest.len == 0) imgscan_rest_append(s, "[", 1);
    /* The end of the input ends the last line and event. */
    if (s->line == L_FIELD && imgscan_field_is_data(s)) imgscan_data_line_begin(s);
    s->line = L_START;
    imgscan_event_end(s);
    imgscan_rest_append(s, "]", 1);
    s->framing = IMGSCAN_SSE;
  } else {
    imgscan_json_end(s);
  }
  return s->status;
}

imgscan_status imgscan_status_of(const imgscan *s) { return s->status; }

const char *imgscan_message(const imgscan *s) { return s->message; }

const char *imgscan_rest(const imgscan *s, size_t *len) {
  if (len) *len = s->rest.len;
  return s->rest.data ? s->rest.data : "";
}

imgscan_framing imgscan_framing_of(const imgscan *s) { return s->framing; }

size_t imgscan_images(const imgscan *s) { return s->n_images; }

long imgscan_marker_index(const char *text) {
  size_t plen = sizeof IMGSCAN_MARKER - 1;
  if (!text || strncmp(text, IMGSCAN_MARKER, plen) != 0) return -1;
  const char *d = text + plen;
  if (!imgscan_digit((unsigned char)d[0]) || (d[0] == '0' && d[1] != '\0')) return -1;
  long v = 0;
  for (size_t n = 0; d[n]; n++) {
    if (!imgscan_digit((unsigned char)d[n]) || n == 9) return -1; /* no overflow */
    v = v * 10 + (d[n] - '0');
  }
  return v;
}
