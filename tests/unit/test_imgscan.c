/* test_imgscan.c - the incremental image scanner: Gemini and OpenAI answers and
 * their event streams cut at every point, JSON escapes in keys and in base64,
 * paths and nesting, every kind of malformed input, the limits (depth, rest),
 * sinks that refuse, and the rest read back with jansson. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/imgscan.h"
#include "util/base64.h"

/* ================= helpers ================= */

#define MAX_IMAGES 8

/* What the sink saw. */
typedef struct got {
  uint8_t *bytes[MAX_IMAGES];
  size_t len[MAX_IMAGES];
  bool ended[MAX_IMAGES];
  int begins, writes, ends;
  int refuse_begin, refuse_write, refuse_end; /* which call (1-based) answers "stop"; 0 never */
  bool calls_after_refusal;
  bool refused;
} got;

static int got_begin(void *ctx, size_t image) {
  got *g = ctx;
  if (g->refused) g->calls_after_refusal = true;
  assert_int_equal(image, (size_t)g->begins);
  assert_true(image < MAX_IMAGES);
  g->begins++;
  if (g->begins == g->refuse_begin) return g->refused = true, 1;
  return 0;
}

static int got_write(void *ctx, size_t image, const uint8_t *bytes, size_t len) {
  got *g = ctx;
  if (g->refused) g->calls_after_refusal = true;
  assert_true((int)image == g->begins - 1); /* only the image begun last */
  assert_false(g->ended[image]);
  assert_true(len > 0);
  g->bytes[image] = realloc(g->bytes[image], g->len[image] + len);
  assert_non_null(g->bytes[image]);
  memcpy(g->bytes[image] + g->len[image], bytes, len);
  g->len[image] += len;
  g->writes++;
  if (g->writes == g->refuse_write) return g->refused = true, 1;
  return 0;
}

static int got_end(void *ctx, size_t image) {
  got *g = ctx;
  if (g->refused) g->calls_after_refusal = true;
  assert_true((int)image == g->begins - 1);
  g->ended[image] = true;
  g->ends++;
  if (g->ends == g->refuse_end) return g->refused = true, 1;
  return 0;
}

static void got_free(got *g) {
  for (int i = 0; i < MAX_IMAGES; i++) free(g->bytes[i]);
  memset(g, 0, sizeof *g);
}

static const imgscan_path gemini_paths[] = {
    {"candidates[].content.parts[].inlineData.data", IMGSCAN_IMAGE},
    {"candidates[].content.parts[].inline_data.data", IMGSCAN_IMAGE},
    {"candidates[].content.parts[].thoughtSignature", IMGSCAN_DROP},
};
static const imgscan_path openai_paths[] = {
    {"data[].b64_json", IMGSCAN_IMAGE},
};
static const imgscan_path openai_stream_paths[] = {
    {"b64_json", IMGSCAN_IMAGE},
    {"partial_image_b64", IMGSCAN_IMAGE},
};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static imgscan *new_scanner(const imgscan_path *paths, size_t n, imgscan_framing framing,
                            size_t rest_max, got *g) {
  imgscan_config cfg = {
      .framing = framing,
      .paths = paths,
      .n_paths = n,
      .rest_max = rest_max,
      .sink = {got_begin, got_write, got_end, g},
  };
  imgscan *s = imgscan_new(&cfg);
  assert_non_null(s);
  return s;
}

/* Scans text cut at the given points; returns the final status. The rest
 * is copied into *rest (malloc'd) when rest is not NULL and it succeeded. */
static imgscan_status scan_cuts(const imgscan_path *paths, size_t n_paths, imgscan_framing framing,
                                const char *text, size_t len, const size_t *cuts, size_t n_cuts,
                                got *g, char **rest) {
  imgscan *s = new_scanner(paths, n_paths, framing, 1 << 20, g);
  size_t at = 0;
  imgscan_status st = IMGSCAN_OK;
  for (size_t k = 0; k <= n_cuts && st == IMGSCAN_OK; k++) {
    size_t next = k < n_cuts ? cuts[k] : len;
    st = imgscan_feed(s, text + at, next - at);
    at = next;
  }
  if (st == IMGSCAN_OK) st = imgscan_finish(s);
  assert_int_equal(st, imgscan_status_of(s));
  if (st != IMGSCAN_OK) assert_true(imgscan_message(s)[0] != '\0');
  if (rest) {
    size_t rlen = 0;
    const char *r = imgscan_rest(s, &rlen);
    *rest = st == IMGSCAN_OK ? strndup(r, rlen) : NULL;
  }
  imgscan_free(s);
  return st;
}

static imgscan_status scan_whole(const imgscan_path *paths, size_t n_paths,
                                 imgscan_framing framing, const char *text, got *g, char **rest) {
  return scan_cuts(paths, n_paths, framing, text, strlen(text), NULL, 0, g, rest);
}

static char *text_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *text_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  int n = vasprintf(&s, fmt, ap);
  va_end(ap);
  assert_true(n >= 0);
  return s;
}

static json_t *must_parse(const char *text) {
  json_error_t err;
  json_t *j = json_loads(text, 0, &err);
  if (!j) fail_msg("the rest is not JSON (%s): %.300s", err.text, text);
  return j;
}

/* Checks image i is exactly bytes. */
static void expect_image(const got *g, int i, const void *bytes, size_t len) {
  assert_true(g->ended[i]);
  assert_int_equal(g->len[i], len);
  if (len) assert_memory_equal(g->bytes[i], bytes, len);
}

/* A Gemini answer: a thought image, a text part, the final image, usage. */
static char *gemini_answer(const char *draft_b64, const char *final_b64) {
  return text_printf(
      "{\"candidates\": [{\"content\": {\"role\": \"model\", \"parts\": ["
      "{\"inlineData\": {\"mimeType\": \"image/png\", \"data\": \"%s\"}, \"thought\": true},"
      "{\"text\": \"Here is \\\"your\\\" fox \\u00e9.\"},"
      "{\"inlineData\": {\"mimeType\": \"image/png\", \"data\": \"%s\"},"
      " \"thoughtSignature\": \"c2lnbmF0dXJl\"}]},"
      " \"finishReason\": \"STOP\", \"index\": 0}],"
      " \"usageMetadata\": {\"promptTokenCount\": 12, \"totalTokenCount\": -1.5e+3},"
      " \"data\": \"aGVsbG8=\", \"modelVersion\": null, \"ok\": [true, false, {}, []]}",
      draft_b64, final_b64);
}

/* ================= whole answers ================= */

static void test_gemini_answer(void **state) {
  (void)state;
  got g = {0};
  char *text = gemini_answer("ZHJhZnQ=", "ZmluYWwgaW1hZ2U=");
  char *rest = NULL;
  assert_int_equal(scan_whole(gemini_paths, N_OF(gemini_paths), IMGSCAN_JSON, text, &g, &rest),
                   IMGSCAN_OK);
  assert_int_equal(g.begins, 2);
  assert_int_equal(g.ends, 2);
  expect_image(&g, 0, "draft", 5);
  expect_image(&g, 1, "final image", 11);
  /* The rest is the answer with the images replaced by markers and the
   * signature dropped; the same "data" key outside the path is kept. */
  json_t *j = must_parse(rest);
  json_t *parts =
      json_object_get(json_object_get(json_array_get(json_object_get(j, "candidates"), 0),
                                      "content"),
                      "parts");
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(json_array_get(parts, 0), "inlineData"),
                                        "data")),
      "imgscan:0");
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(json_array_get(parts, 2), "inlineData"),
                                        "data")),
      "imgscan:1");
  assert_string_equal(json_string_value(json_object_get(json_array_get(parts, 2),
                                                        "thoughtSignature")),
                      "");
  assert_string_equal(json_string_value(json_object_get(json_array_get(parts, 1), "text")),
                      "Here is \"your\" fox \xc3\xa9.");
  assert_string_equal(json_string_value(json_object_get(j, "data")), "aGVsbG8=");
  assert_true(json_is_true(json_object_get(json_array_get(parts, 0), "thought")));
  json_decref(j);
  /* Byte for byte, everything but the replaced strings is the answer. */
  char *expected = gemini_answer("imgscan:0", "imgscan:1");
  char *sig = strstr(expected, "c2lnbmF0dXJl");
  memmove(sig, sig + 12, strlen(sig + 12) + 1);
  assert_string_equal(rest, expected);
  free(expected);
  free(rest);
  free(text);
  got_free(&g);
}

static void test_openai_answer(void **state) {
  (void)state;
  got g = {0};
  const char *text = "{\"created\":1,\"data\":[{\"b64_json\":\"b25l\",\"revised_prompt\":\"x\"},"
                     "{\"url\":\"https://example.invalid/a.png\"},{\"b64_json\":\"dHdv\"}],"
                     "\"usage\":{\"total_tokens\":5,\"b64_json\":\"bm90IGFuIGltYWdl\"}}";
  char *rest = NULL;
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, text, &g, &rest), IMGSCAN_OK);
  assert_int_equal(g.begins, 2);
  expect_image(&g, 0, "one", 3);
  expect_image(&g, 1, "two", 3);
  assert_string_equal(rest,
                      "{\"created\":1,\"data\":[{\"b64_json\":\"imgscan:0\",\"revised_prompt\":"
                      "\"x\"},{\"url\":\"https://example.invalid/a.png\"},{\"b64_json\":"
                      "\"imgscan:1\"}],\"usage\":{\"total_tokens\":5,\"b64_json\":"
                      "\"bm90IGFuIGltYWdl\"}}");
  free(rest);
  got_free(&g);

  /* The paths say where: an array of arrays is not data[], an object is not a string. */
  const char *nested = "{\"data\":[[{\"b64_json\":\"b25l\"}],{\"b64_json\":{\"x\":\"b25l\"}},"
                       "{\"b64_json\":[\"b25l\"]},{\"b64_json\":7}]}";
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, nested, &g, &rest), IMGSCAN_OK);
  assert_int_equal(g.begins, 0);
  assert_string_equal(rest, nested);
  free(rest);
  got_free(&g);
}

/* Every cut into two and three pieces gives the same images and rest. */
static void test_every_split(void **state) {
  (void)state;
  char *text = gemini_answer("Zm9v\\/w==", "Zm\\u006cuYWwg aW1h\\nZ2U");
  size_t len = strlen(text);
  got want = {0};
  char *want_rest = NULL;
  assert_int_equal(scan_whole(gemini_paths, N_OF(gemini_paths), IMGSCAN_JSON, text, &want,
                              &want_rest),
                   IMGSCAN_OK);
  expect_image(&want, 0, "foo\xff", 4); /* an escaped '/' is a digit */
  expect_image(&want, 1, "final image", 11); /* an escaped 'l', a space, an escaped LF */
  size_t runs = 0;
  for (size_t a = 0; a <= len; a++) {
    for (size_t b = a; b <= len; b += (a % 7 == 0 ? 1 : 13)) { /* all pairs for some a */
      size_t cuts[2] = {a, b};
      got g = {0};
      char *rest = NULL;
      imgscan_status st =
          scan_cuts(gemini_paths, N_OF(gemini_paths), IMGSCAN_JSON, text, len, cuts, 2, &g, &rest);
      if (st != IMGSCAN_OK) fail_msg("cut at %zu and %zu: status %d", a, b, st);
      assert_int_equal(g.begins, 2);
      for (int i = 0; i < 2; i++) expect_image(&g, i, want.bytes[i], want.len[i]);
      assert_string_equal(rest, want_rest);
      free(rest);
      got_free(&g);
      runs++;
    }
  }
  assert_true(runs > len * 10);
  /* One byte at a time. */
  size_t *cuts = malloc(len * sizeof *cuts);
  assert_non_null(cuts);
  for (size_t i = 0; i < len; i++) cuts[i] = i;
  got g = {0};
  char *rest = NULL;
  assert_int_equal(scan_cuts(gemini_paths, N_OF(gemini_paths), IMGSCAN_JSON, text, len, cuts, len,
                             &g, &rest),
                   IMGSCAN_OK);
  assert_string_equal(rest, want_rest);
  for (int i = 0; i < 2; i++) expect_image(&g, i, want.bytes[i], want.len[i]);
  free(rest);
  got_free(&g);
  free(cuts);
  free(want_rest);
  got_free(&want);
  free(text);
}

/* A large image through pieces of odd sizes, as a socket delivers it. */
static void test_large_image_odd_pieces(void **state) {
  (void)state;
  size_t n = (1 << 20) + 2;
  uint8_t *img = malloc(n);
  assert_non_null(img);
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    img[i] = (uint8_t)x;
  }
  char *b64 = base64_encode(img, n);
  char *text = text_printf("{\"data\":[{\"b64_json\":\"%s\"}],\"usage\":{}}", b64);
  size_t len = strlen(text);
  static const size_t sizes[] = {1, 7, 4093, 16384, 65537, 1 << 22};
  for (size_t k = 0; k < N_OF(sizes); k++) {
    size_t step = sizes[k];
    if (step == 1) step = 3; /* a byte at a time is covered above; keep it quick */
    size_t n_cuts = len / step;
    size_t *cuts = malloc((n_cuts + 1) * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 0; i < n_cuts; i++) cuts[i] = (i + 1) * step;
    if (n_cuts && cuts[n_cuts - 1] >= len) n_cuts--;
    got g = {0};
    char *rest = NULL;
    assert_int_equal(scan_cuts(openai_paths, 1, IMGSCAN_JSON, text, len, cuts, n_cuts, &g, &rest),
                     IMGSCAN_OK);
    expect_image(&g, 0, img, n);
    /* Pieces of kilobytes reach the sink, not one per network piece or escape. */
    assert_true(g.writes <= (int)(n / 3000) + 2);
    assert_string_equal(rest, "{\"data\":[{\"b64_json\":\"imgscan:0\"}],\"usage\":{}}");
    free(rest);
    got_free(&g);
    free(cuts);
  }
  free(text);
  free(b64);
  free(img);
}

/* ================= escapes and prefixes ================= */

static void test_escapes_in_keys_and_images(void **state) {
  (void)state;
  got g = {0};
  char *rest = NULL;
  /* Keys compare after their escapes are undone; base64 reads through escapes. */
  const char *text = "{\"d\\u0061ta\":[{\"b64\\u005fjson\":\"\\u0062\\u00325l\"},"
                     "{\"b64_json\":\"d\\/\\/v\"},{\"b64_json\":\"d HdvA\\r\\nA=\\u003d\"}]}";
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, text, &g, &rest), IMGSCAN_OK);
  assert_int_equal(g.begins, 3);
  expect_image(&g, 0, "one", 3);
  expect_image(&g, 1, "w\xff\xef", 3);
  expect_image(&g, 2, "two\x00", 4);
  free(rest);
  got_free(&g);

  /* What an escape may not bring into base64, and a raw control byte. */
  const char *bad[] = {
      "{\"data\":[{\"b64_json\":\"b25l\\u00e9\"}]}", /* not a base64 digit */
      "{\"data\":[{\"b64_json\":\"b2!l\"}]}",
      "{\"data\":[{\"b64_json\":\"b25l\xc3\xa9\"}]}",
      "{\"data\":[{\"b64_json\":\"b25\"}]}", /* trailing bits */
      "{\"data\":[{\"b64_json\":\"b+5l-A==\"}]}", /* two alphabets */
      "{\"data\":[{\"b64_json\":\"b2==bA==\"}]}",
      "{\"data\":[{\"b64_json\":\"b\"}]}",
  };
  for (size_t i = 0; i < N_OF(bad); i++) {
    assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, bad[i], &g, NULL),
                     IMGSCAN_ERR_BASE64);
    assert_int_equal(g.ends, 0);
    got_free(&g);
  }
  /* A raw tab or newline is no JSON, even where base64 would skip it; nor is
   * \u0000 or bad UTF-8 (in jansson's reading). */
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON,
                              "{\"data\":[{\"b64_json\":\"b25l\\u0000\"}]}", &g, NULL),
                   IMGSCAN_ERR_SYNTAX);
  got_free(&g);
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON,
                              "{\"data\":[{\"b64_json\":\"b25l\x80\"}]}", &g, NULL),
                   IMGSCAN_ERR_SYNTAX);
  got_free(&g);
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON,
                              "{\"data\":[{\"b64_json\":\"b25l\tdHdv\"}]}", &g, NULL),
                   IMGSCAN_ERR_SYNTAX);
  got_free(&g);
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON,
                              "{\"data\":[{\"b64_json\":\"b25l\ndHdv\"}]}", &g, NULL),
                   IMGSCAN_ERR_SYNTAX);
  got_free(&g);
  /* Keys that cannot match: too long, or with bytes no pattern has. */
  char *long_key = text_printf("{\"data\":[{\"%064d\":\"!!\",\"b64_jso\\u00e9\":\"!!\"}]}", 0);
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, long_key, &g, NULL), IMGSCAN_OK);
  assert_int_equal(g.begins, 0);
  free(long_key);
  got_free(&g);
}

static void test_data_url_prefix(void **state) {
  (void)state;
  got g = {0};
  char *rest = NULL;
  const char *text = "{\"data\":[{\"b64_json\":\"data:image/png;base64,b25l\"},"
                     "{\"b64_json\":\"DATA:;base64,dHdv\"},{\"b64_json\":\"ZGF0\"},"
                     "{\"b64_json\":\"data\\u003aimage/png;base64,dGhyZWU=\"},{\"b64_json\":\"\"},"
                     "{\"b64_json\":"
                     "\"data:im\xc3\xa9ge/p\\u00e9ng\\ud83d\\ude00;base64,Zm91cg==\"}]}";
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, text, &g, &rest), IMGSCAN_OK);
  assert_int_equal(g.begins, 6);
  expect_image(&g, 0, "one", 3);
  expect_image(&g, 1, "two", 3);
  expect_image(&g, 2, "dat", 3); /* only looked like the start of a data URL */
  expect_image(&g, 3, "three", 5);
  expect_image(&g, 4, "", 0);
  expect_image(&g, 5, "four", 4); /* the media type skipped, whatever its characters */
  free(rest);
  got_free(&g);
  /* A data URL without ";base64," within 128 characters, or at all. */
  char *long_url = text_printf("{\"data\":[{\"b64_json\":\"data:%0130d;base64,b25l\"}]}", 0);
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, long_url, &g, NULL),
                   IMGSCAN_ERR_BASE64);
  free(long_url);
  got_free(&g);
  assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON,
                              "{\"data\":[{\"b64_json\":\"data:image/png\"}]}", &g, NULL),
                   IMGSCAN_ERR_BASE64);
  got_free(&g);
}

/* ================= refusals ================= */

static void test_malformed_json(void **state) {
  (void)state;
  static const struct {
    const char *text;
    imgscan_status status;
  } cases[] = {
      {"", IMGSCAN_ERR_TRUNCATED},
      {"  \n", IMGSCAN_ERR_TRUNCATED},
      {"{", IMGSCAN_ERR_TRUNCATED},
      {"{\"data\":[{\"b64_json\":\"b25l", IMGSCAN_ERR_TRUNCATED},
      {"{\"a\":1", IMGSCAN_ERR_TRUNCATED},
      {"[1,2", IMGSCAN_ERR_TRUNCATED},
      {"{\"a\":tru", IMGSCAN_ERR_TRUNCATED},
      {"{\"a\":\"\\u12", IMGSCAN_ERR_TRUNCATED},
      {"-", IMGSCAN_ERR_TRUNCATED},
      {"1.", IMGSCAN_ERR_TRUNCATED},
      {"1e+", IMGSCAN_ERR_TRUNCATED},
      {"{\"a\":}", IMGSCAN_ERR_SYNTAX},
      {"{\"a\" 1}", IMGSCAN_ERR_SYNTAX},
      {"{\"a\":1,}", IMGSCAN_ERR_SYNTAX},
      {"[1,]", IMGSCAN_ERR_SYNTAX},
      {"[1 2]", IMGSCAN_ERR_SYNTAX},
      {"{1:2}", IMGSCAN_ERR_SYNTAX},
      {"{\"a\":1]", IMGSCAN_ERR_SYNTAX},
      {"[1}", IMGSCAN_ERR_SYNTAX},
      {"{}{}", IMGSCAN_ERR_SYNTAX},
      {"{} x", IMGSCAN_ERR_SYNTAX},
      {"01", IMGSCAN_ERR_SYNTAX},
      {"[-a]", IMGSCAN_ERR_SYNTAX},
      {"[1.e5]", IMGSCAN_ERR_SYNTAX},
      {"[.5]", IMGSCAN_ERR_SYNTAX},
      {"[+1]", IMGSCAN_ERR_SYNTAX},
      {"[truth]", IMGSCAN_ERR_SYNTAX},
      {"[nul]", IMGSCAN_ERR_SYNTAX},
      {"['a']", IMGSCAN_ERR_SYNTAX},
      {"{\"a\":\"\\x\"}", IMGSCAN_ERR_SYNTAX},
      {"{\"a\":\"\\u12G4\"}", IMGSCAN_ERR_SYNTAX},
      {"{\"a\":\"tab\there\"}", IMGSCAN_ERR_SYNTAX},
      {"{\"a\\u00\":1}", IMGSCAN_ERR_SYNTAX},
      /* Strings as jansson reads them, dropped ones too (never parsed later). */
      {"[\"\xc3\"]", IMGSCAN_ERR_SYNTAX},          /* a sequence cut by the quote */
      {"[\"\xc0\xaf\"]", IMGSCAN_ERR_SYNTAX},      /* overlong */
      {"[\"\xed\xa0\x80\"]", IMGSCAN_ERR_SYNTAX},  /* a surrogate */
      {"[\"\xf4\x90\x80\x80\"]", IMGSCAN_ERR_SYNTAX}, /* above U+10FFFF */
      {"[\"\xff\"]", IMGSCAN_ERR_SYNTAX},
      {"[\"\\u0000\"]", IMGSCAN_ERR_SYNTAX},
      {"[\"\\ud800\"]", IMGSCAN_ERR_SYNTAX},       /* a lone high half */
      {"[\"\\ud800\\n\"]", IMGSCAN_ERR_SYNTAX},
      {"[\"\\ud800\\u0041\"]", IMGSCAN_ERR_SYNTAX},
      {"[\"\\udc00\"]", IMGSCAN_ERR_SYNTAX},       /* a lone low half */
      {"{\"candidates\":[{\"content\":{\"parts\":[{\"thoughtSignature\":\"\xe3(\"}]}}]}",
       IMGSCAN_ERR_SYNTAX},
      {"\xef\xbb\xbf{}", IMGSCAN_ERR_SYNTAX},
      {"]", IMGSCAN_ERR_SYNTAX},
      {"{\"a\":1}}", IMGSCAN_ERR_SYNTAX},
  };
  for (size_t i = 0; i < N_OF(cases); i++) {
    got g = {0};
    imgscan_status st = scan_whole(openai_paths, 1, IMGSCAN_JSON, cases[i].text, &g, NULL);
    if (st != cases[i].status)
      fail_msg("\"%s\": status %d, expected %d", cases[i].text, st, cases[i].status);
    got_free(&g);
  }
  /* What the grammar accepts (and jansson reads afterwards). */
  static const char *const fine[] = {
      "{}", "[]", " [ ] ", "0", "-0.5e-7", "[1E5,2e+3,-0,0.0]", "\"\\ud83d\\ude00\"",
      "[\"\xf0\x9f\x98\x80 \xe2\x82\xac \xc3\xa9\"]",
      "{\"a\":[{\"b\":[[],{}]},null,true,false,\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"]}",
  };
  for (size_t i = 0; i < N_OF(fine); i++) {
    got g = {0};
    char *rest = NULL;
    assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, fine[i], &g, &rest), IMGSCAN_OK);
    assert_string_equal(rest, fine[i]);
    free(rest);
    got_free(&g);
  }
}

static void test_syntax_message_names_the_byte(void **state) {
  (void)state;
  got g = {0};
  imgscan *s = new_scanner(openai_paths, 1, IMGSCAN_JSON, 1024, &g);
  assert_int_equal(imgscan_feed(s, "{\"a\":", 5), IMGSCAN_OK);
  assert_int_equal(imgscan_feed(s, "  ,", 3), IMGSCAN_ERR_SYNTAX);
  assert_non_null(strstr(imgscan_message(s), "at byte 7"));
  /* Failed for good: more input, or the end, changes nothing. */
  assert_int_equal(imgscan_feed(s, "1}", 2), IMGSCAN_ERR_SYNTAX);
  assert_int_equal(imgscan_finish(s), IMGSCAN_ERR_SYNTAX);
  imgscan_free(s);
  got_free(&g);
}

static void test_depth_limit(void **state) {
  (void)state;
  char deep[2 * IMGSCAN_MAX_DEPTH + 3];
  for (int extra = 0; extra <= 1; extra++) {
    size_t d = IMGSCAN_MAX_DEPTH + (size_t)extra;
    memset(deep, '[', d);
    memset(deep + d, ']', d);
    deep[2 * d] = '\0';
    got g = {0};
    assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, deep, &g, NULL),
                     extra ? IMGSCAN_ERR_DEPTH : IMGSCAN_OK);
    got_free(&g);
  }
}

static void test_rest_limit(void **state) {
  (void)state;
  /* The images do not count towards the rest, their markers do. */
  char *b64 = NULL;
  uint8_t img[3000] = {0};
  b64 = base64_encode(img, sizeof img);
  char *text = text_printf("{\"data\":[{\"b64_json\":\"%s\"}],\"x\":\"0123456789\"}", b64);
  for (int tight = 0; tight <= 1; tight++) {
    got g = {0};
    size_t rest_len = strlen("{\"data\":[{\"b64_json\":\"imgscan:0\"}],\"x\":\"0123456789\"}");
    imgscan *s = new_scanner(openai_paths, 1, IMGSCAN_JSON, rest_len - (size_t)tight, &g);
    imgscan_status st = imgscan_feed(s, text, strlen(text));
    if (st == IMGSCAN_OK) st = imgscan_finish(s);
    assert_int_equal(st, tight ? IMGSCAN_ERR_REST : IMGSCAN_OK);
    if (!tight) expect_image(&g, 0, img, sizeof img);
    imgscan_free(s);
    got_free(&g);
  }
  free(text);
  free(b64);
}

static void test_sink_refusals(void **state) {
  (void)state;
  uint8_t img[40000];
  memset(img, 0x5a, sizeof img);
  char *b64 = base64_encode(img, sizeof img);
  char *text = text_printf("{\"data\":[{\"b64_json\":\"%s\"},{\"b64_json\":\"%s\"}]}", b64, b64);
  for (int which = 0; which < 4; which++) {
    got g = {0};
    if (which == 0) g.refuse_begin = 2;
    if (which == 1) g.refuse_write = 2;
    if (which == 2) g.refuse_end = 1;
    if (which == 3) g.refuse_begin = 1;
    assert_int_equal(scan_whole(openai_paths, 1, IMGSCAN_JSON, text, &g, NULL), IMGSCAN_ERR_SINK);
    assert_true(g.refused);
    assert_false(g.calls_after_refusal); /* not a single call once refused */
    got_free(&g);
  }
  free(text);
  free(b64);
}

/* ================= event streams ================= */

static void test_gemini_sse(void **state) {
  (void)state;
  const char *text =
      "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"thinking\"}]}}]}\r\n\r\n"
      ": a comment\r\n"
      "data: {\"candidates\": [{\"content\": {\"parts\": [{\"inlineData\": {\"mimeType\": "
      "\"image/png\", \"data\": \"b25l\"}, \"thoughtSignature\": \"c2ln\"}]}, "
      "\"finishReason\": \"STOP\"}], \"usageMetadata\": {\"totalTokenCount\": 3}}\r\n\r\n"
      /* one value over two data lines, CRLF ends: the LF after a CR is no blank line */
      "data: {\"candidates\": [],\r\ndata: \"modelVersion\": \"m\"}\r\n\r\n";
  size_t len = strlen(text);
  got want = {0};
  char *want_rest = NULL;
  assert_int_equal(scan_whole(gemini_paths, N_OF(gemini_paths), IMGSCAN_SSE, text, &want,
                              &want_rest),
                   IMGSCAN_OK);
  expect_image(&want, 0, "one", 3);
  json_t *j = must_parse(want_rest);
  assert_int_equal(json_array_size(j), 3);
  assert_string_equal(json_string_value(json_object_get(json_array_get(j, 2), "modelVersion")),
                      "m");
  json_t *part = json_array_get(
      json_object_get(json_object_get(json_array_get(json_object_get(json_array_get(j, 1),
                                                                     "candidates"),
                                                     0),
                                      "content"),
                      "parts"),
      0);
  assert_string_equal(json_string_value(json_object_get(json_object_get(part, "inlineData"),
                                                        "data")),
                      "imgscan:0");
  assert_string_equal(json_string_value(json_object_get(part, "thoughtSignature")), "");
  json_decref(j);
  /* Cut anywhere (between CR and LF too), with AUTO deciding the framing. */
  for (size_t a = 0; a <= len; a++) {
    for (size_t b = a; b <= len; b += 17) {
      size_t cuts[2] = {a, b};
      got g = {0};
      char *rest = NULL;
      assert_int_equal(scan_cuts(gemini_paths, N_OF(gemini_paths), a % 2 ? IMGSCAN_AUTO
                                                                         : IMGSCAN_SSE,
                                 text, len, cuts, 2, &g, &rest),
                       IMGSCAN_OK);
      expect_image(&g, 0, "one", 3);
      assert_string_equal(rest, want_rest);
      free(rest);
      got_free(&g);
    }
  }
  free(want_rest);
  got_free(&want);
}

static void test_openai_sse(void **state) {
  (void)state;
  /* event: lines, LF and CR line ends, data split over two lines, an unknown
   * field, a final event without its blank line. */
  const char *text =
      "event: image_generation.partial_image\n"
      "id: 1\n"
      "data: {\"type\":\"image_generation.partial_image\",\"partial_image_index\":0,\n"
      "data:  \"b64_json\":\"cGFydA==\"}\n"
      "\n"
      "retry: 1000\r"
      "flavour: vanilla\r"
      "event: image_generation.completed\r"
      "data:{\"type\":\"image_generation.completed\",\"b64_json\":\"ZnVsbA==\","
      "\"usage\":{\"total_tokens\":9}}";
  got g = {0};
  char *rest = NULL;
  assert_int_equal(scan_whole(openai_stream_paths, 2, IMGSCAN_SSE, text, &g, &rest), IMGSCAN_OK);
  expect_image(&g, 0, "part", 4);
  expect_image(&g, 1, "full", 4);
  assert_string_equal(rest,
                      "[{\"type\":\"image_generation.partial_image\",\"partial_image_index\":0,\n"
                      " \"b64_json\":\"imgscan:0\"},{\"type\":\"image_generation.completed\","
                      "\"b64_json\":\"imgscan:1\",\"usage\":{\"total_tokens\":9}}]");
  free(rest);
  got_free(&g);

  /* An empty stream, and one of comments only. */
  assert_int_equal(scan_whole(openai_stream_paths, 2, IMGSCAN_SSE, "", &g, &rest), IMGSCAN_OK);
  assert_string_equal(rest, "[]");
  free(rest);
  assert_int_equal(scan_whole(openai_stream_paths, 2, IMGSCAN_SSE, ": hi\n\n: there\n", &g, &rest),
                   IMGSCAN_OK);
  assert_string_equal(rest, "[]");
  free(rest);
  /* A byte order mark before the first line. */
  assert_int_equal(scan_whole(openai_stream_paths, 2, IMGSCAN_AUTO,
                              "\xef\xbb\xbf" "data: {\"b64_json\":\"b25l\"}\n\n", &g, &rest),
                   IMGSCAN_OK);
  assert_string_equal(rest, "[{\"b64_json\":\"imgscan:0\"}]");
  free(rest);
  got_free(&g);
}

static void test_sse_refusals(void **state) {
  (void)state;
  static const struct {
    const char *text;
    imgscan_status status;
  } cases[] = {
      {"data: [DONE]\n\n", IMGSCAN_ERR_SYNTAX},              /* not JSON */
      {"data: {\"a\":1}\ndata: {\"b\":2}\n\n", IMGSCAN_ERR_SYNTAX}, /* two values, one event */
      {"data: {\"a\":\"x\ndata: y\"}\n\n", IMGSCAN_ERR_SYNTAX}, /* a line break in a string */
      {"data: {\"a\":1\n\n", IMGSCAN_ERR_TRUNCATED},         /* the event ends first */
      {"data: {\"b64_json\":\"b25\n\n", IMGSCAN_ERR_TRUNCATED}, /* ends inside the string */
      {"data: {\"b64_json\":\"b2!l\"}\n\n", IMGSCAN_ERR_BASE64},
      {"data: {\"a\":\n", IMGSCAN_ERR_TRUNCATED},            /* the stream ends first */
      {"data\n\n", IMGSCAN_ERR_TRUNCATED},                   /* empty data is no JSON */
      {"\xef\xbb" "data: {}\n\n", IMGSCAN_ERR_SYNTAX},       /* half a byte order mark */
  };
  for (size_t i = 0; i < N_OF(cases); i++) {
    got g = {0};
    imgscan_status st = scan_whole(openai_stream_paths, 2, IMGSCAN_SSE, cases[i].text, &g, NULL);
    if (st != cases[i].status)
      fail_msg("case %zu: status %d, expected %d", i, st, cases[i].status);
    got_free(&g);
  }
}

/* AUTO: a JSON error body where a stream was asked for is read as JSON. */
static void test_auto_framing(void **state) {
  (void)state;
  const char *err = "  {\"error\":{\"code\":429,\"message\":\"slow down\"}}";
  got g = {0};
  imgscan *s = new_scanner(gemini_paths, N_OF(gemini_paths), IMGSCAN_AUTO, 4096, &g);
  assert_int_equal(imgscan_framing_of(s), IMGSCAN_AUTO);
  assert_int_equal(imgscan_feed(s, err, 2), IMGSCAN_OK);
  assert_int_equal(imgscan_framing_of(s), IMGSCAN_AUTO); /* whitespace decides nothing */
  assert_int_equal(imgscan_feed(s, err + 2, strlen(err) - 2), IMGSCAN_OK);
  assert_int_equal(imgscan_framing_of(s), IMGSCAN_JSON);
  assert_int_equal(imgscan_finish(s), IMGSCAN_OK);
  assert_string_equal(imgscan_rest(s, NULL), err + 2);
  imgscan_free(s);
  s = new_scanner(gemini_paths, N_OF(gemini_paths), IMGSCAN_AUTO, 4096, &g);
  assert_int_equal(imgscan_feed(s, "data: {}\n\n", 10), IMGSCAN_OK);
  assert_int_equal(imgscan_framing_of(s), IMGSCAN_SSE);
  assert_int_equal(imgscan_finish(s), IMGSCAN_OK);
  assert_string_equal(imgscan_rest(s, NULL), "[{}]");
  imgscan_free(s);
  got_free(&g);
}

/* ================= small pieces ================= */

static void test_marker_index(void **state) {
  (void)state;
  assert_int_equal(imgscan_marker_index("imgscan:0"), 0);
  assert_int_equal(imgscan_marker_index("imgscan:17"), 17);
  assert_int_equal(imgscan_marker_index("imgscan:123456789"), 123456789);
  assert_int_equal(imgscan_marker_index("imgscan:1234567890"), -1);
  assert_int_equal(imgscan_marker_index("imgscan:"), -1);
  assert_int_equal(imgscan_marker_index("imgscan:01"), -1);
  assert_int_equal(imgscan_marker_index("imgscan:1x"), -1);
  assert_int_equal(imgscan_marker_index("imgscan:-1"), -1);
  assert_int_equal(imgscan_marker_index("b25l"), -1);
  assert_int_equal(imgscan_marker_index(NULL), -1);
}

static void test_bad_paths_refused(void **state) {
  (void)state;
  static const char *const bad[] = {
      "", ".a", "a.", "a..b", "a[", "a[0]", "a]", "a b", "[]x", "a.\xc3\xa9",
      "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q",
  };
  got g = {0};
  for (size_t i = 0; i < N_OF(bad); i++) {
    imgscan_path p = {bad[i], IMGSCAN_IMAGE};
    imgscan_config cfg = {.framing = IMGSCAN_JSON, .paths = &p, .n_paths = 1, .rest_max = 10,
                          .sink = {got_begin, got_write, got_end, &g}};
    if (imgscan_new(&cfg)) fail_msg("path \"%s\" accepted", bad[i]);
  }
  char name[IMGSCAN_MAX_NAME + 2];
  memset(name, 'a', sizeof name - 1);
  name[sizeof name - 1] = '\0';
  imgscan_path p = {name, IMGSCAN_IMAGE};
  imgscan_config cfg = {.framing = IMGSCAN_JSON, .paths = &p, .n_paths = 1, .rest_max = 10,
                        .sink = {got_begin, got_write, got_end, &g}};
  assert_null(imgscan_new(&cfg));
  name[IMGSCAN_MAX_NAME] = '\0';
  imgscan *s = imgscan_new(&cfg);
  assert_non_null(s);
  imgscan_free(s);
  /* "[]" at the root: a JSON array of answers (Gemini's stream without SSE). */
  imgscan_path root = {"[].candidates[].content.parts[].inlineData.data", IMGSCAN_IMAGE};
  char *rest = NULL;
  assert_int_equal(
      scan_whole(&root, 1, IMGSCAN_JSON,
                 "[{\"candidates\":[{\"content\":{\"parts\":"
                 "[{\"inlineData\":{\"data\":\"b25l\"}}]}}]},"
                 "{\"candidates\":[]}]",
                 &g, &rest),
      IMGSCAN_OK);
  expect_image(&g, 0, "one", 3);
  free(rest);
  got_free(&g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gemini_answer),
      cmocka_unit_test(test_openai_answer),
      cmocka_unit_test(test_every_split),
      cmocka_unit_test(test_large_image_odd_pieces),
      cmocka_unit_test(test_escapes_in_keys_and_images),
      cmocka_unit_test(test_data_url_prefix),
      cmocka_unit_test(test_malformed_json),
      cmocka_unit_test(test_syntax_message_names_the_byte),
      cmocka_unit_test(test_depth_limit),
      cmocka_unit_test(test_rest_limit),
      cmocka_unit_test(test_sink_refusals),
      cmocka_unit_test(test_gemini_sse),
      cmocka_unit_test(test_openai_sse),
      cmocka_unit_test(test_sse_refusals),
      cmocka_unit_test(test_auto_framing),
      cmocka_unit_test(test_marker_index),
      cmocka_unit_test(test_bad_paths_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
