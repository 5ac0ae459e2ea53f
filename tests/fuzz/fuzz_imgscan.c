/* fuzz_imgscan.c - the incremental image scanner (upstream/imgscan.h) against
 * jansson's full parse.
 *
 * Input: one byte of mode, then the answer. Bit 0 of the mode: an event
 * stream (SSE) instead of one JSON value. The rest of the mode and a hash of
 * the answer choose up to eight cut points; the scanner is fed the pieces,
 * with the Gemini and OpenAI image paths and a drop path.
 *
 * The oracle reads the same answer whole, independently: jansson parses it
 * (or, for a stream, each event's data, found by a plain line splitter
 * written from the SSE rules), a recursive walk finds the strings at the
 * paths, and the old two-pass decoder (base64_reference.h) decodes them. Then:
 * - jansson accepts, every image string decodes and nothing nests deeper than
 *   IMGSCAN_MAX_DEPTH: the scanner must succeed, with the same images in the
 *   same order, and jansson must read its rest as the same tree with each
 *   image string replaced by its marker and each dropped string by "";
 * - the scanner refused such an input only for what it may: DEPTH when the
 *   tree is deeper, BASE64 when an image string does not decode;
 * - whenever the scanner succeeds, jansson accepts its rest exactly when it
 *   accepts the answer (what the scanner leaves to the parser, such as UTF-8
 *   outside images or the range of numbers, the parser still refuses). */
#include <jansson.h>
#include <stdbool.h>
#include <strings.h>

#include "base64_reference.h"
#include "fuzz_check.h"
#include "upstream/imgscan.h"

#define MAX_IMAGES 64
#define JSON_FLAGS (JSON_DECODE_ANY | JSON_REJECT_DUPLICATES)

static const imgscan_path paths[] = {
    {"candidates[].content.parts[].inlineData.data", IMGSCAN_IMAGE},
    {"candidates[].content.parts[].inline_data.data", IMGSCAN_IMAGE},
    {"candidates[].content.parts[].thoughtSignature", IMGSCAN_DROP},
    {"data[].b64_json", IMGSCAN_IMAGE},
    {"b64_json", IMGSCAN_IMAGE},
    {"[].a", IMGSCAN_IMAGE},
};
#define N_PATHS (sizeof paths / sizeof paths[0])

/* ---- what the scanner gave ---- */

typedef struct scanned {
  uint8_t *bytes[MAX_IMAGES];
  size_t len[MAX_IMAGES];
  bool ended[MAX_IMAGES];
  size_t n;
} scanned;

static int on_begin(void *ctx, size_t image) {
  scanned *s = ctx;
  FUZZ_CHECK(image == s->n);
  if (s->n == MAX_IMAGES) return 1; /* more than the harness keeps: a sink refusal */
  s->n++;
  return 0;
}

static int on_write(void *ctx, size_t image, const uint8_t *bytes, size_t len) {
  scanned *s = ctx;
  FUZZ_CHECK(image + 1 == s->n && !s->ended[image] && len > 0);
  uint8_t *grown = realloc(s->bytes[image], s->len[image] + len);
  FUZZ_CHECK(grown);
  memcpy(grown + s->len[image], bytes, len);
  s->bytes[image] = grown;
  s->len[image] += len;
  return 0;
}

static int on_end(void *ctx, size_t image) {
  scanned *s = ctx;
  FUZZ_CHECK(image + 1 == s->n && !s->ended[image]);
  s->ended[image] = true;
  return 0;
}

/* ---- the oracle ---- */

typedef struct expected {
  uint8_t *bytes[MAX_IMAGES];
  size_t len[MAX_IMAGES];
  size_t n;
  bool bad_base64;  /* an image string does not decode */
  bool too_many;    /* more images than the harness keeps */
  size_t depth;     /* deepest nesting of containers */
} expected;

/* The reference's reading of an image string, data: URL prefix included. */
static bool oracle_decode(const char *b64, size_t len, uint8_t **out, size_t *out_len) {
  if (len >= 5 && strncasecmp(b64, "data:", 5) == 0) {
    size_t scan = len < 128 ? len : 128;
    for (size_t i = 5; i + 8 <= scan; i++) {
      if (memcmp(b64 + i, ";base64,", 8) == 0) {
        b64 += i + 8;
        len -= i + 8;
        break;
      }
    }
  }
  return ref_base64_decode(b64, len, SIZE_MAX, out, out_len) == 0;
}

/* Whether the path (names, NULL for an array element) is a pattern's, and of which kind. */
static int path_kind(const char *const *path, size_t n) {
  int kind = -1;
  for (size_t p = 0; p < N_PATHS; p++) {
    const char *s = paths[p].path;
    size_t k = 0;
    bool match = true;
    while (*s && match) {
      if (k == n) {
        match = false;
        break;
      }
      if (s[0] == '[') {
        match = path[k] == NULL;
        s += 2;
      } else {
        size_t len = strcspn(s, ".[");
        match = path[k] && strlen(path[k]) == len && memcmp(path[k], s, len) == 0;
        s += len;
      }
      k++;
      if (*s == '.') s++;
    }
    if (match && k == n) {
      if (paths[p].kind == IMGSCAN_IMAGE) return IMGSCAN_IMAGE;
      kind = IMGSCAN_DROP;
    }
  }
  return kind;
}

/* Nesting of containers in v, v included. */
static size_t tree_depth(json_t *v) {
  size_t most = 0;
  if (json_is_array(v)) {
    for (size_t i = 0; i < json_array_size(v); i++) {
      size_t d = tree_depth(json_array_get(v, i));
      if (d > most) most = d;
    }
  } else if (json_is_object(v)) {
    const char *key;
    json_t *member;
    json_object_foreach(v, key, member) {
      size_t d = tree_depth(member);
      if (d > most) most = d;
    }
  } else {
    return 0;
  }
  return most + 1;
}

/* Walks v (at path[0..n)) in document order: returns the tree the rest
 * should be, collecting the images. */
static json_t *oracle_walk(json_t *v, const char **path, size_t n, size_t depth, expected *e) {
  if (json_is_string(v)) {
    int kind = path_kind(path, n);
    if (kind == IMGSCAN_DROP) return json_string("");
    if (kind != IMGSCAN_IMAGE) return json_incref(v);
    if (e->n == MAX_IMAGES) {
      e->too_many = true;
      return json_incref(v);
    }
    uint8_t *out = NULL;
    size_t out_len = 0;
    if (!oracle_decode(json_string_value(v), json_string_length(v), &out, &out_len))
      e->bad_base64 = true;
    char marker[32];
    snprintf(marker, sizeof marker, IMGSCAN_MARKER "%zu", e->n);
    e->bytes[e->n] = out;
    e->len[e->n] = out_len;
    e->n++;
    return json_string(marker);
  }
  if (!json_is_array(v) && !json_is_object(v)) return json_incref(v);
  if (n == 32) { /* deeper than any pattern: nothing to replace, only the depth to know */
    size_t d = depth + tree_depth(v);
    if (d > e->depth) e->depth = d;
    return json_incref(v);
  }
  if (depth + 1 > e->depth) e->depth = depth + 1;
  if (json_is_array(v)) {
    json_t *copy = json_array();
    for (size_t i = 0; i < json_array_size(v); i++) {
      path[n] = NULL;
      json_array_append_new(copy, oracle_walk(json_array_get(v, i), path, n + 1, depth + 1, e));
    }
    return copy;
  }
  json_t *copy = json_object();
  const char *key;
  json_t *member;
  json_object_foreach(v, key, member) {
    path[n] = key;
    json_object_set_new(copy, key, oracle_walk(member, path, n + 1, depth + 1, e));
  }
  return copy;
}

static void expected_free(expected *e) {
  for (size_t i = 0; i < e->n; i++) free(e->bytes[i]);
}

/* ---- event streams, the plain way ---- */

/* The data of each event of an SSE text, as the scanner is documented to take
 * them (leading blanks and a byte order mark skipped; a final event without
 * its blank line kept). Returns the count; datas[i] is malloc'd. Events are
 * capped: the rest do not matter for the properties checked. */
static size_t sse_events(const char *t, size_t len, char **datas, size_t *lens, size_t max) {
  size_t i = 0;
  while (i < len && (t[i] == ' ' || t[i] == '\t' || t[i] == '\r' || t[i] == '\n')) i++;
  if (i == 0 && len >= 3 && memcmp(t, "\xef\xbb\xbf", 3) == 0) i = 3;
  size_t n = 0;
  char *data = NULL;
  size_t data_len = 0;
  bool has = false;
  while (i <= len) {
    size_t eol = i;
    while (eol < len && t[eol] != '\r' && t[eol] != '\n') eol++;
    bool at_end = eol == len;
    const char *line = t + i;
    size_t line_len = eol - i;
    if (line_len == 0 && !at_end) {
      if (has && n < max) {
        datas[n] = data;
        lens[n++] = data_len;
        data = NULL;
      }
      free(data);
      data = NULL;
      data_len = 0;
      has = false;
    } else if (line_len > 0 && line[0] != ':') {
      size_t colon = 0;
      while (colon < line_len && line[colon] != ':') colon++;
      if (colon == 4 && memcmp(line, "data", 4) == 0) {
        size_t v = colon < line_len ? colon + 1 : line_len;
        if (v < line_len && line[v] == ' ') v++;
        data = realloc(data, data_len + (line_len - v) + 2);
        FUZZ_CHECK(data);
        if (has) data[data_len++] = '\n';
        memcpy(data + data_len, line + v, line_len - v);
        data_len += line_len - v;
        has = true;
      }
    }
    if (at_end) break;
    i = eol + 1;
    if (t[eol] == '\r' && i < len && t[i] == '\n') i++;
  }
  if (has && n < max) {
    datas[n] = data;
    lens[n++] = data_len;
    data = NULL;
  }
  free(data);
  return n;
}

/* ---- the run ---- */

static uint64_t hash(const uint8_t *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static imgscan_status scan(const char *text, size_t len, bool sse, uint64_t seed, scanned *got,
                           char **rest, size_t *rest_len) {
  imgscan_config cfg = {
      .framing = sse ? IMGSCAN_SSE : IMGSCAN_JSON,
      .paths = paths,
      .n_paths = N_PATHS,
      .rest_max = len + 64 * 16 + 16, /* never the limit: markers and brackets fit */
      .sink = {on_begin, on_write, on_end, got},
  };
  imgscan *s = imgscan_new(&cfg);
  FUZZ_CHECK(s);
  size_t cuts[9], n_cuts = (size_t)(seed % 9);
  for (size_t i = 0; i < n_cuts; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    cuts[i] = len ? (size_t)(seed >> 33) % (len + 1) : 0;
  }
  for (size_t i = 1; i < n_cuts; i++) /* sorted */
    for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
      size_t t = cuts[j];
      cuts[j] = cuts[j - 1];
      cuts[j - 1] = t;
    }
  cuts[n_cuts] = len;
  size_t at = 0;
  imgscan_status st = IMGSCAN_OK;
  for (size_t i = 0; i <= n_cuts && st == IMGSCAN_OK; i++) {
    /* Each piece in a buffer of its own size: a read past it is caught. */
    uint8_t *piece = fuzz_copy((const uint8_t *)text + at, cuts[i] - at);
    st = imgscan_feed(s, (const char *)piece, cuts[i] - at);
    free(piece);
    at = cuts[i];
  }
  if (st == IMGSCAN_OK) st = imgscan_finish(s);
  FUZZ_CHECK(st == imgscan_status_of(s));
  FUZZ_CHECK((st == IMGSCAN_OK) == (imgscan_message(s)[0] == '\0'));
  FUZZ_CHECK(st != IMGSCAN_ERR_REST && st != IMGSCAN_ERR_NOMEM);
  *rest = NULL;
  if (st == IMGSCAN_OK) {
    const char *r = imgscan_rest(s, rest_len);
    *rest = (char *)fuzz_copy((const uint8_t *)r, *rest_len);
    FUZZ_CHECK(imgscan_images(s) == got->n);
    for (size_t i = 0; i < got->n; i++) FUZZ_CHECK(got->ended[i]);
  }
  imgscan_free(s);
  return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  bool sse = data[0] & 1;
  const char *text = (const char *)data + 1;
  size_t len = size - 1;

  scanned got = {0};
  char *rest = NULL;
  size_t rest_len = 0;
  imgscan_status st = scan(text, len, sse, hash(data, size), &got, &rest, &rest_len);

  /* The oracle: the tree (a stream: the array of the events' trees) or NULL. */
  expected e = {0};
  json_t *orig = NULL, *want = NULL;
  bool has_nul = false; /* in the JSON text (a stream: in an event's data) */
  const char *path[32];
  if (!sse) {
    json_error_t err;
    orig = json_loadb(text, len, JSON_FLAGS, &err);
    has_nul = memchr(text, 0, len) != NULL;
    if (orig) want = oracle_walk(orig, path, 0, 0, &e);
  } else {
    char *datas[16];
    size_t lens[16];
    size_t n = sse_events(text, len, datas, lens, 16);
    /* A stream starting with part of a byte order mark is refused by design. */
    bool half_bom = len > 0 && (unsigned char)text[0] == 0xef &&
                    (len < 3 || memcmp(text, "\xef\xbb\xbf", 3) != 0);
    orig = half_bom ? NULL : json_array();
    want = json_array();
    for (size_t i = 0; i < n; i++) {
      json_error_t err;
      json_t *v = orig ? json_loadb(datas[i], lens[i], JSON_FLAGS, &err) : NULL;
      if (memchr(datas[i], 0, lens[i])) has_nul = true;
      if (v) {
        json_array_append_new(want, oracle_walk(v, path, 0, 0, &e));
        json_array_append_new(orig, v);
      } else {
        json_decref(orig);
        orig = NULL;
      }
      free(datas[i]);
    }
    if (n == 16) { /* capped: compare nothing but the rest's parse */
      json_decref(orig);
      orig = NULL;
    }
  }

  /* jansson takes a NUL after a top-level number as the end ("0\0" loads);
   * the scanner refuses every raw NUL, as JSON has none. */
  if (has_nul) {
    FUZZ_CHECK(st != IMGSCAN_OK);
  } else if (orig && !e.bad_base64 && !e.too_many && e.depth <= IMGSCAN_MAX_DEPTH) {
    FUZZ_CHECK(st == IMGSCAN_OK);
    FUZZ_CHECK(got.n == e.n);
    for (size_t i = 0; i < e.n; i++)
      FUZZ_CHECK(got.len[i] == e.len[i] &&
                 (!e.len[i] || !memcmp(got.bytes[i], e.bytes[i], e.len[i])));
    json_error_t err;
    json_t *back = json_loadb(rest, rest_len, JSON_FLAGS, &err);
    FUZZ_CHECK(back && json_equal(back, want));
    json_decref(back);
  } else if (orig) {
    FUZZ_CHECK(st == IMGSCAN_OK || st == IMGSCAN_ERR_SINK ||
               (st == IMGSCAN_ERR_DEPTH && e.depth > IMGSCAN_MAX_DEPTH) ||
               (st == IMGSCAN_ERR_BASE64 && e.bad_base64));
  }
  if (st == IMGSCAN_OK && (!sse || orig)) {
    json_error_t err;
    json_t *back = json_loadb(rest, rest_len, JSON_FLAGS, &err);
    FUZZ_CHECK((back != NULL) == (orig != NULL));
    json_decref(back);
  }
  json_decref(want);
  json_decref(orig);
  expected_free(&e);
  for (size_t i = 0; i < got.n; i++) free(got.bytes[i]);
  free(rest);
  return 0;
}
