/* test_gemini.c - the Gemini adapter: the request body read back with jansson,
 * hand-written upstream answers of every kind (from shared/reference/upstreams.md)
 * through the parser, and the provider glue over a stand-in curl loop: joins of
 * parallel calls, transport failures, cancellation, refused submissions, and
 * real transfers to a local server to check the bytes on the wire. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>

#include "adapter_testutil.h"
#include "upstream/adapter.h"
#include "upstream/gemini.h"

/* ================= helpers ================= */

static json_t *must_parse(const char *text) {
  assert_non_null(text);
  json_error_t err;
  json_t *j = json_loads(text, 0, &err);
  if (!j) fail_msg("not JSON (%s): %.200s", err.text, text);
  return j;
}

static provider_request base_request(void) {
  return (provider_request){
      .task_id = "t1",
      .model = "nano-banana-pro",
      .upstream_model = "gemini-3-pro-image-preview",
      .prompt = "a red fox",
      .aspect_ratio = "auto",
      .resolution = "1K",
      .quantity = 1,
  };
}

static provider_outcome *parse(long status, const char *body, const char *retry_after) {
  provider_outcome *o = gemini_parse_response(status, body, body ? strlen(body) : 0, retry_after);
  assert_non_null(o);
  return o;
}

/* A 200 answer holding one candidate with these parts (JSON fragments). */
static char *answer_with_parts(const char *parts, const char *finish_reason) {
  return tu_printf("{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[%s]},"
                   "\"finishReason\":\"%s\",\"index\":0}],"
                   "\"usageMetadata\":{\"promptTokenCount\":12,\"candidatesTokenCount\":1290,"
                   "\"totalTokenCount\":1302},"
                   "\"modelVersion\":\"gemini-3-pro-image-preview\",\"responseId\":\"r1\"}",
                   parts, finish_reason);
}

/* An image part; extra is appended inside the part object (",\"thought\":true"). */
static char *image_part(const char *b64, const char *extra) {
  return tu_printf("{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":\"%s\"}%s}", b64,
                   extra ? extra : "");
}

/* An answer with one final PNG of w x h. */
static char *image_answer(int w, int h) {
  char *b64 = tu_png_b64("final", w, h);
  char *part = image_part(b64, ",\"thoughtSignature\":\"c2ln\"");
  char *body = answer_with_parts(part, "STOP");
  free(part);
  free(b64);
  return body;
}

static void assert_failure(const provider_outcome *o, provider_error_class cls, bool retryable,
                           const char *code) {
  assert_int_equal(o->status, cls == PROVIDER_ERR_MODERATED ? PROVIDER_MODERATED : PROVIDER_FAILED);
  assert_int_equal(o->error_class, cls);
  assert_int_equal(o->retryable, retryable);
  assert_string_equal(o->error_code, code);
  assert_int_equal(o->n_images, 0);
  assert_null(o->images);
  assert_memory_equal(o->error_message, "gemini:", 7);
}

/* ================= request ================= */

static void test_request_text_only(void **state) {
  (void)state;
  provider_request req = base_request();
  char *body = gemini_build_request(&req, true);
  json_t *j = must_parse(body);
  json_t *contents = json_object_get(j, "contents");
  assert_int_equal(json_array_size(contents), 1);
  json_t *turn = json_array_get(contents, 0);
  assert_string_equal(json_string_value(json_object_get(turn, "role")), "user");
  json_t *parts = json_object_get(turn, "parts");
  assert_int_equal(json_array_size(parts), 1);
  assert_string_equal(json_string_value(json_object_get(json_array_get(parts, 0), "text")),
                      "a red fox");
  json_t *gc = json_object_get(j, "generationConfig");
  json_t *modalities = json_object_get(gc, "responseModalities");
  assert_int_equal(json_array_size(modalities), 1);
  assert_string_equal(json_string_value(json_array_get(modalities, 0)), "IMAGE");
  /* "auto": no aspectRatio; 3 Pro: imageSize. */
  json_t *ic = json_object_get(gc, "imageConfig");
  assert_null(json_object_get(ic, "aspectRatio"));
  assert_string_equal(json_string_value(json_object_get(ic, "imageSize")), "1K");
  assert_int_equal(json_object_size(j), 2);
  json_decref(j);
  free(body);

  /* Auto and no image size: no imageConfig at all. */
  body = gemini_build_request(&req, false);
  j = must_parse(body);
  assert_null(json_object_get(json_object_get(j, "generationConfig"), "imageConfig"));
  json_decref(j);
  free(body);
}

static void test_request_inputs_round_trip(void **state) {
  (void)state;
  size_t png_len = 0;
  uint8_t *png = tu_png("input", 24, 16, &png_len);
  const uint8_t junk[] = {0x00, 0x01, 0x02, 0xfe, 0xff, 0x10, 0x20, 0x30,
                          0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0};
  provider_input inputs[3] = {
      {png, png_len, "image/png"},
      {png, png_len, "image/jpeg"},   /* declared wrong: the bytes say PNG */
      {junk, sizeof junk, "image/webp"}, /* unknown bytes: the declared type stands */
  };
  provider_request req = base_request();
  req.inputs = inputs;
  req.n_inputs = 3;
  req.aspect_ratio = "16:9";
  req.resolution = "2K";
  char *body = gemini_build_request(&req, true);
  json_t *j = must_parse(body);
  json_t *parts = json_object_get(json_array_get(json_object_get(j, "contents"), 0), "parts");
  assert_int_equal(json_array_size(parts), 4);
  assert_non_null(json_object_get(json_array_get(parts, 0), "text")); /* text first */
  const char *want_mime[3] = {"image/png", "image/png", "image/webp"};
  for (size_t i = 0; i < 3; i++) {
    json_t *inl = json_object_get(json_array_get(parts, i + 1), "inlineData");
    assert_non_null(inl);
    assert_string_equal(json_string_value(json_object_get(inl, "mimeType")), want_mime[i]);
    const char *data = json_string_value(json_object_get(inl, "data"));
    assert_non_null(data);
    assert_null(strchr(data, ':')); /* plain base64, no data: prefix */
    uint8_t *dec = NULL;
    size_t dec_len = 0;
    assert_int_equal(base64_decode(data, strlen(data), SIZE_MAX, &dec, &dec_len), 0);
    assert_int_equal(dec_len, inputs[i].len);
    assert_memory_equal(dec, inputs[i].data, dec_len);
    free(dec);
  }
  json_t *ic = json_object_get(json_object_get(j, "generationConfig"), "imageConfig");
  assert_string_equal(json_string_value(json_object_get(ic, "aspectRatio")), "16:9");
  assert_string_equal(json_string_value(json_object_get(ic, "imageSize")), "2K");
  json_decref(j);
  free(body);
  free(png);
}

static void test_request_image_size_per_model(void **state) {
  (void)state;
  provider_request req = base_request();
  req.model = "nano-banana";
  req.upstream_model = "gemini-2.5-flash-image";
  assert_false(gemini_sends_image_size(&req));
  req.upstream_model = "reseller-banana-v1"; /* unknown id: the catalog family decides */
  assert_false(gemini_sends_image_size(&req));
  req.model = "some-new-model";
  req.upstream_model = "google/gemini-2.5-flash-image-preview";
  assert_false(gemini_sends_image_size(&req));
  req.model = "nano-banana-pro";
  req.upstream_model = "gemini-3-pro-image-preview";
  assert_true(gemini_sends_image_size(&req));
  req.model = "nano-banana-2";
  req.upstream_model = "gemini-3.1-flash-image-preview";
  assert_true(gemini_sends_image_size(&req));

  /* Nano Banana 2's tiers, in the API's spelling. */
  assert_string_equal(gemini_image_size("512"), "512");
  assert_string_equal(gemini_image_size("1k"), "1K");
  assert_string_equal(gemini_image_size("4K"), "4K");
  assert_null(gemini_image_size("8K"));
  assert_null(gemini_image_size(NULL));

  req.aspect_ratio = "8:1";
  req.resolution = "512";
  char *body = gemini_build_request(&req, gemini_sends_image_size(&req));
  json_t *j = must_parse(body);
  json_t *ic = json_object_get(json_object_get(j, "generationConfig"), "imageConfig");
  assert_string_equal(json_string_value(json_object_get(ic, "aspectRatio")), "8:1");
  assert_string_equal(json_string_value(json_object_get(ic, "imageSize")), "512");
  json_decref(j);
  free(body);

  /* Nano Banana: a ratio but never imageSize. */
  req.model = "nano-banana";
  req.upstream_model = "gemini-2.5-flash-image";
  req.aspect_ratio = "3:2";
  req.resolution = "1K";
  body = gemini_build_request(&req, gemini_sends_image_size(&req));
  j = must_parse(body);
  ic = json_object_get(json_object_get(j, "generationConfig"), "imageConfig");
  assert_string_equal(json_string_value(json_object_get(ic, "aspectRatio")), "3:2");
  assert_null(json_object_get(ic, "imageSize"));
  assert_int_equal(json_object_size(ic), 1);
  json_decref(j);
  free(body);
}

static void test_request_prompt_escaping(void **state) {
  (void)state;
  const char *prompt = "say \"hi\" \\ back\nslash / tab\t bell\x01 caf\xc3\xa9 \xf0\x9f\x8d\x8c";
  provider_request req = base_request();
  req.prompt = prompt;
  char *body = gemini_build_request(&req, false);
  json_t *j = must_parse(body);
  json_t *parts = json_object_get(json_array_get(json_object_get(j, "contents"), 0), "parts");
  assert_string_equal(json_string_value(json_object_get(json_array_get(parts, 0), "text")), prompt);
  json_decref(j);
  free(body);

  req.prompt = NULL;
  body = gemini_build_request(&req, false);
  j = must_parse(body);
  parts = json_object_get(json_array_get(json_object_get(j, "contents"), 0), "parts");
  assert_string_equal(json_string_value(json_object_get(json_array_get(parts, 0), "text")), "");
  json_decref(j);
  free(body);
  assert_null(gemini_build_request(NULL, false));
}

static void test_request_url(void **state) {
  (void)state;
  char *url = gemini_request_url("https://generativelanguage.googleapis.com",
                                 "gemini-3.1-flash-image-preview");
  assert_string_equal(url, "https://generativelanguage.googleapis.com/v1beta/models/"
                           "gemini-3.1-flash-image-preview:generateContent");
  free(url);
  url = gemini_request_url("http://h", "models/gemini-2.5-flash-image");
  assert_string_equal(url, "http://h/v1beta/models/gemini-2.5-flash-image:generateContent");
  free(url);
  url = gemini_request_url("http://h", "we ird/id?x");
  assert_string_equal(url, "http://h/v1beta/models/we%20ird%2Fid%3Fx:generateContent");
  free(url);
  assert_null(gemini_request_url("http://h", ""));
  assert_null(gemini_request_url("http://h", NULL));
}

/* ================= answers: images ================= */

static void test_parse_final_image_after_thoughts(void **state) {
  (void)state;
  char *draft_b64 = tu_png_b64("draft", 8, 8);
  char *final_b64 = tu_png_b64("final", 48, 32);
  char *draft1 = image_part(draft_b64, ",\"thought\":true");
  char *draft2 = image_part(draft_b64, ",\"thought\":true");
  char *final = image_part(final_b64, ",\"thoughtSignature\":\"c2ln\"");
  char *parts = tu_printf("%s,{\"text\":\"thinking about foxes\",\"thought\":true},%s,"
                          "{\"text\":\"Here is your fox.\"},%s",
                          draft1, draft2, final);
  char *body = answer_with_parts(parts, "STOP");
  provider_outcome *o = parse(200, body, NULL);
  assert_int_equal(o->status, PROVIDER_OK);
  assert_int_equal(o->error_class, PROVIDER_ERR_NONE);
  assert_int_equal(o->http_status, 200);
  assert_int_equal(o->n_images, 1);
  assert_string_equal(o->images[0].mime, "image/png");
  assert_int_equal(o->images[0].width, 48);
  assert_int_equal(o->images[0].height, 32);
  provider_outcome_free(o);

  /* A thought draft after the final image does not replace it. */
  free(parts);
  free(body);
  parts = tu_printf("%s,%s", final, draft1);
  body = answer_with_parts(parts, "STOP");
  o = parse(200, body, NULL);
  assert_int_equal(o->n_images, 1);
  assert_int_equal(o->images[0].width, 48);
  provider_outcome_free(o);

  free(parts);
  free(body);
  free(final);
  free(draft2);
  free(draft1);
  free(final_b64);
  free(draft_b64);
}

static void test_parse_last_of_two_finals(void **state) {
  (void)state;
  char *a = tu_png_b64("a", 10, 10);
  char *b = tu_png_b64("b", 20, 12);
  char *pa = image_part(a, NULL);
  char *pb = image_part(b, NULL);
  char *parts = tu_printf("%s,%s", pa, pb);
  char *body = answer_with_parts(parts, "STOP");
  provider_outcome *o = parse(200, body, NULL);
  assert_int_equal(o->status, PROVIDER_OK);
  assert_int_equal(o->images[0].width, 20);
  assert_int_equal(o->images[0].height, 12);
  provider_outcome_free(o);
  free(body);
  free(parts);
  free(pb);
  free(pa);
  free(b);
  free(a);
}

static void test_parse_snake_case_and_mime_from_bytes(void **state) {
  (void)state;
  char *b64 = tu_png_b64("snake", 30, 20);
  /* snake_case spelling, and a declared type that the bytes contradict. */
  char *parts = tu_printf("{\"inline_data\":{\"mime_type\":\"image/jpeg\",\"data\":\"%s\"}}", b64);
  char *body = answer_with_parts(parts, "STOP");
  provider_outcome *o = parse(200, body, NULL);
  assert_int_equal(o->status, PROVIDER_OK);
  assert_string_equal(o->images[0].mime, "image/png");
  assert_int_equal(o->images[0].width, 30);
  assert_int_equal(o->images[0].height, 20);
  size_t png_len = 0;
  uint8_t *png = tu_png("snake", 30, 20, &png_len);
  assert_int_equal(o->images[0].len, png_len);
  assert_memory_equal(o->images[0].data, png, png_len);
  free(png);
  provider_outcome_free(o);
  free(body);
  free(parts);
  free(b64);
}

static void test_parse_bad_image_data(void **state) {
  (void)state;
  /* base64 garbage */
  char *part = image_part("@@@@not-base64@@@@", NULL);
  char *body = answer_with_parts(part, "STOP");
  provider_outcome *o = parse(200, body, NULL);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  assert_non_null(strstr(o->error_message, "base64"));
  assert_int_equal(o->http_status, 200);
  provider_outcome_free(o);
  free(body);
  free(part);

  /* valid base64 whose bytes are not an image */
  char *text = base64_encode((const uint8_t *)"I am not a picture, just text.", 30);
  part = image_part(text, NULL);
  body = answer_with_parts(part, "STOP");
  o = parse(200, body, NULL);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  assert_non_null(strstr(o->error_message, "not a known image format"));
  provider_outcome_free(o);
  free(body);
  free(part);
  free(text);
}

static void test_parse_malformed_answers(void **state) {
  (void)state;
  char *full = image_answer(16, 16);
  size_t len = strlen(full);
  /* Truncated mid-way, as when a connection drops. */
  provider_outcome *o = gemini_parse_response(200, full, len / 2, NULL);
  assert_non_null(o);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  provider_outcome_free(o);
  /* The last byte missing. */
  o = gemini_parse_response(200, full, len - 1, NULL);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  provider_outcome_free(o);
  free(full);

  const char *bodies[] = {"", "not json", "[1,2]", "{}", "{\"candidates\":[]}",
                          "{\"candidates\":[42]}", "{\"candidates\":\"x\"}"};
  for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
    o = parse(200, bodies[i], NULL);
    assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
    provider_outcome_free(o);
  }
  o = gemini_parse_response(200, NULL, 0, NULL);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  provider_outcome_free(o);
}

/* ================= answers: no image ================= */

static void test_parse_prompt_blocked(void **state) {
  (void)state;
  const char *reasons[] = {"SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"};
  for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
    char *body = tu_printf("{\"promptFeedback\":{\"blockReason\":\"%s\","
                           "\"blockReasonMessage\":\"The prompt could not be submitted.\"},"
                           "\"usageMetadata\":{\"promptTokenCount\":9},\"modelVersion\":\"m\"}",
                           reasons[i]);
    provider_outcome *o = parse(200, body, NULL);
    assert_failure(o, PROVIDER_ERR_MODERATED, false, "content_moderated");
    assert_non_null(strstr(o->error_message, reasons[i]));
    assert_non_null(strstr(o->error_message, "The prompt could not be submitted."));
    assert_int_equal(o->http_status, 200);
    provider_outcome_free(o);
    free(body);
  }
  /* snake_case, empty candidates. */
  provider_outcome *o =
      parse(200, "{\"candidates\":[],\"prompt_feedback\":{\"block_reason\":\"SAFETY\"}}", NULL);
  assert_failure(o, PROVIDER_ERR_MODERATED, false, "content_moderated");
  provider_outcome_free(o);
}

/* The three shapes a candidate without an image takes: no content, empty
 * parts, content without parts. */
static char *no_image_answer(size_t shape, const char *reason) {
  if (shape == 0)
    return tu_printf("{\"candidates\":[{\"finishReason\":\"%s\",\"index\":0}]}", reason);
  if (shape == 1)
    return tu_printf("{\"candidates\":[{\"content\":{\"parts\":[]},\"finishReason\":\"%s\"}]}",
                     reason);
  return tu_printf("{\"candidates\":[{\"content\":{\"role\":\"model\"},\"finishReason\":\"%s\"}]}",
                   reason);
}

static void test_parse_finish_reasons(void **state) {
  (void)state;
  const char *moderated[] = {"IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
                             "IMAGE_OTHER",  "SAFETY",  "PROHIBITED_CONTENT",
                             "RECITATION",   "BLOCKLIST", "SPII"};
  const char *no_image[] = {"NO_IMAGE", "MAX_TOKENS", "OTHER", "STOP", "FINISH_REASON_UNKNOWN"};
  for (size_t s = 0; s < 3; s++) {
    for (size_t i = 0; i < sizeof moderated / sizeof moderated[0]; i++) {
      char *body = no_image_answer(s, moderated[i]);
      provider_outcome *o = parse(200, body, NULL);
      assert_failure(o, PROVIDER_ERR_MODERATED, false, "content_moderated");
      assert_non_null(strstr(o->error_message, moderated[i]));
      provider_outcome_free(o);
      free(body);
    }
    for (size_t i = 0; i < sizeof no_image / sizeof no_image[0]; i++) {
      char *body = no_image_answer(s, no_image[i]);
      provider_outcome *o = parse(200, body, NULL);
      assert_failure(o, PROVIDER_ERR_NO_IMAGE, true, "no_image");
      assert_non_null(strstr(o->error_message, no_image[i]));
      provider_outcome_free(o);
      free(body);
    }
  }
  /* No finishReason at all. */
  provider_outcome *o = parse(200, "{\"candidates\":[{\"content\":{\"parts\":[]}}]}", NULL);
  assert_failure(o, PROVIDER_ERR_NO_IMAGE, true, "no_image");
  provider_outcome_free(o);
}

static void test_parse_text_refusal(void **state) {
  (void)state;
  const char *body =
      "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":["
      "{\"text\":\"I can't create images of that person.\"}]},\"finishReason\":\"STOP\"}]}";
  provider_outcome *o = parse(200, body, NULL);
  assert_failure(o, PROVIDER_ERR_NO_IMAGE, true, "no_image");
  assert_non_null(strstr(o->error_message, "I can't create images of that person."));
  provider_outcome_free(o);

  /* finishMessage is preferred to the text when both exist; only drafts = no image. */
  char *draft = tu_png_b64("draft", 8, 8);
  char *part = image_part(draft, ",\"thought\":true");
  char *b = tu_printf("{\"candidates\":[{\"content\":{\"parts\":[%s,{\"text\":\"sorry\"}]},"
                      "\"finishReason\":\"IMAGE_SAFETY\",\"finishMessage\":\"Unsafe output.\"}]}",
                      part);
  o = parse(200, b, NULL);
  assert_failure(o, PROVIDER_ERR_MODERATED, false, "content_moderated");
  assert_non_null(strstr(o->error_message, "Unsafe output."));
  provider_outcome_free(o);
  free(b);
  free(part);
  free(draft);
}

/* ================= answers: errors ================= */

static char *error_body(int code, const char *status, const char *message, const char *details) {
  return tu_printf("{\"error\":{\"code\":%d,\"message\":\"%s\",\"status\":\"%s\"%s%s%s}}", code,
                   message, status, details ? ",\"details\":[" : "", details ? details : "",
                   details ? "]" : "");
}

static void test_parse_error_400(void **state) {
  (void)state;
  char *body = error_body(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", NULL);
  provider_outcome *o = parse(400, body, NULL);
  assert_failure(o, PROVIDER_ERR_BAD_REQUEST, false, "upstream_bad_request");
  assert_int_equal(o->http_status, 400);
  assert_non_null(strstr(o->error_message, "INVALID_ARGUMENT"));
  assert_non_null(strstr(o->error_message, "Request contains an invalid argument."));
  provider_outcome_free(o);
  free(body);

  /* A bad key shows as 400: by its message, */
  body = error_body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                    NULL);
  o = parse(400, body, NULL);
  assert_failure(o, PROVIDER_ERR_AUTH, true, "upstream_auth");
  provider_outcome_free(o);
  free(body);
  /* or by its ErrorInfo reason. */
  body = error_body(400, "INVALID_ARGUMENT", "Bad key.",
                    "{\"@type\":\"type.googleapis.com/google.rpc.ErrorInfo\","
                    "\"reason\":\"API_KEY_INVALID\",\"domain\":\"googleapis.com\"}");
  o = parse(400, body, NULL);
  assert_failure(o, PROVIDER_ERR_AUTH, true, "upstream_auth");
  provider_outcome_free(o);
  free(body);

  /* FAILED_PRECONDITION is about the key's project (region, billing): another route. */
  body = error_body(400, "FAILED_PRECONDITION",
                    "User location is not supported for the API use.", NULL);
  o = parse(400, body, NULL);
  assert_failure(o, PROVIDER_ERR_AUTH, true, "upstream_auth");
  provider_outcome_free(o);
  free(body);

  /* Other 4xx: the request. */
  o = parse(413, "{\"error\":{\"code\":413,\"message\":\"too big\"}}", NULL);
  assert_failure(o, PROVIDER_ERR_BAD_REQUEST, false, "upstream_bad_request");
  provider_outcome_free(o);
}

static void test_parse_error_route(void **state) {
  (void)state;
  const struct {
    int status;
    const char *gstatus;
    provider_error_class cls;
    const char *code;
  } cases[] = {
      {401, "UNAUTHENTICATED", PROVIDER_ERR_AUTH, "upstream_auth"},
      {403, "PERMISSION_DENIED", PROVIDER_ERR_AUTH, "upstream_auth"},
      {402, "RESOURCE_EXHAUSTED", PROVIDER_ERR_CREDIT, "upstream_credit"},
      {404, "NOT_FOUND", PROVIDER_ERR_AUTH, "upstream_model_not_found"},
      {408, "DEADLINE_EXCEEDED", PROVIDER_ERR_TIMEOUT, "upstream_timeout"},
      {409, "ABORTED", PROVIDER_ERR_SERVER, "upstream_unavailable"},
      {500, "INTERNAL", PROVIDER_ERR_SERVER, "upstream_unavailable"},
      {503, "UNAVAILABLE", PROVIDER_ERR_SERVER, "upstream_unavailable"},
      {504, "DEADLINE_EXCEEDED", PROVIDER_ERR_SERVER, "upstream_unavailable"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *body = error_body(cases[i].status, cases[i].gstatus, "upstream says no", NULL);
    provider_outcome *o = parse(cases[i].status, body, NULL);
    assert_failure(o, cases[i].cls, true, cases[i].code);
    assert_int_equal(o->http_status, cases[i].status);
    assert_non_null(strstr(o->error_message, "upstream says no"));
    assert_int_equal(o->retry_after_ms, 0);
    provider_outcome_free(o);
    free(body);
  }
  /* A proxy's HTML page instead of JSON. */
  provider_outcome *o = parse(502, "<html><body>Bad Gateway</body></html>", NULL);
  assert_failure(o, PROVIDER_ERR_SERVER, true, "upstream_unavailable");
  assert_non_null(strstr(o->error_message, "HTTP 502"));
  assert_non_null(strstr(o->error_message, "no error details"));
  provider_outcome_free(o);
  /* Statuses that make no sense for this API. */
  o = parse(302, "", NULL);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  provider_outcome_free(o);
}

static void test_parse_rate_limited(void **state) {
  (void)state;
  const char *retry19 = "{\"@type\":\"type.googleapis.com/google.rpc.QuotaFailure\","
                        "\"violations\":[{\"quotaMetric\":\"m\"}]},"
                        "{\"@type\":\"type.googleapis.com/google.rpc.Help\",\"links\":[]},"
                        "{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\","
                        "\"retryDelay\":\"19s\"}";
  char *body = error_body(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", retry19);
  provider_outcome *o = parse(429, body, NULL);
  assert_failure(o, PROVIDER_ERR_RATE_LIMITED, true, "upstream_rate_limited");
  assert_int_equal(o->retry_after_ms, 19000);
  assert_non_null(strstr(o->error_message, "RESOURCE_EXHAUSTED"));
  provider_outcome_free(o);
  /* RetryInfo wins over a Retry-After header. */
  o = parse(429, body, "3");
  assert_int_equal(o->retry_after_ms, 19000);
  provider_outcome_free(o);
  free(body);

  body = error_body(429, "RESOURCE_EXHAUSTED", "slow down",
                    "{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\","
                    "\"retryDelay\":\"1.5s\"}");
  o = parse(429, body, NULL);
  assert_int_equal(o->retry_after_ms, 1500);
  provider_outcome_free(o);
  free(body);

  /* No RetryInfo: the header; neither: 0. */
  body = error_body(429, "RESOURCE_EXHAUSTED", "slow down", NULL);
  o = parse(429, body, "7");
  assert_failure(o, PROVIDER_ERR_RATE_LIMITED, true, "upstream_rate_limited");
  assert_int_equal(o->retry_after_ms, 7000);
  provider_outcome_free(o);
  o = parse(429, body, NULL);
  assert_int_equal(o->retry_after_ms, 0);
  provider_outcome_free(o);
  o = parse(429, body, "");
  assert_int_equal(o->retry_after_ms, 0);
  provider_outcome_free(o);
  free(body);

  /* An unreadable retryDelay falls back to the header. */
  body = error_body(429, "RESOURCE_EXHAUSTED", "slow down",
                    "{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\","
                    "\"retryDelay\":\"soon\"}");
  o = parse(429, body, "2");
  assert_int_equal(o->retry_after_ms, 2000);
  provider_outcome_free(o);
  free(body);

  /* A 503 with Retry-After keeps the hint too. */
  o = parse(503, "{\"error\":{\"code\":503,\"message\":\"The model is overloaded.\","
                 "\"status\":\"UNAVAILABLE\"}}", "5");
  assert_failure(o, PROVIDER_ERR_SERVER, true, "upstream_unavailable");
  assert_int_equal(o->retry_after_ms, 5000);
  provider_outcome_free(o);
}

static void test_parse_error_shapes(void **state) {
  (void)state;
  /* An error wrapped in an array. */
  provider_outcome *o =
      parse(400, "[{\"error\":{\"code\":400,\"message\":\"API key not valid.\","
                 "\"status\":\"INVALID_ARGUMENT\"}}]", NULL);
  assert_failure(o, PROVIDER_ERR_AUTH, true, "upstream_auth");
  provider_outcome_free(o);
  /* An error object inside a 200 (as inside a stream) is classed by its own code. */
  o = parse(200, "{\"error\":{\"code\":429,\"message\":\"quota\",\"status\":\"RESOURCE_EXHAUSTED\","
                 "\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\","
                 "\"retryDelay\":\"4s\"}]}}", NULL);
  assert_failure(o, PROVIDER_ERR_RATE_LIMITED, true, "upstream_rate_limited");
  assert_int_equal(o->http_status, 200);
  assert_int_equal(o->retry_after_ms, 4000);
  provider_outcome_free(o);
  o = parse(200, "{\"error\":{\"message\":\"something\"}}", NULL);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  provider_outcome_free(o);

  /* A long upstream message is truncated and stays valid UTF-8. */
  char msg[2000] = "";
  for (int i = 0; i < 400; i++) strcat(msg, "\xc3\xa9");
  char *body = error_body(400, "INVALID_ARGUMENT", msg, NULL);
  o = parse(400, body, NULL);
  assert_true(strlen(o->error_message) < sizeof o->error_message);
  json_t *check = json_string(o->error_message);
  assert_non_null(check);
  json_decref(check);
  provider_outcome_free(o);
  free(body);
}

/* ================= provider glue (stand-in loop) ================= */

static provider *make_provider(const char *base_url) {
  provider_instance_config cfg = {.name = "gem", .kind = "gemini", .base_url = base_url,
                                  .api_key = "test-key", .timeout_ms = 30000,
                                  .connect_timeout_ms = 2000};
  provider *p = gemini_provider_create(&cfg, FAKE_LOOP);
  assert_non_null(p);
  assert_string_equal(p->ops->kind, "gemini");
  assert_string_equal(p->name, "gem");
  return p;
}

static void test_create_refuses_bad_config(void **state) {
  (void)state;
  provider_instance_config cfg = {.name = "gem", .kind = "gemini",
                                  .base_url = "https://x.test", .api_key = "k"};
  assert_null(gemini_provider_create(&cfg, NULL));
  assert_null(gemini_provider_create(NULL, FAKE_LOOP));
  cfg.kind = "openai";
  assert_null(gemini_provider_create(&cfg, FAKE_LOOP));
  cfg.kind = "gemini";
  cfg.api_key = NULL;
  assert_null(gemini_provider_create(&cfg, FAKE_LOOP));
}

static void test_glue_single_call(void **state) {
  (void)state;
  fake_reset(FAKE_QUEUE);
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  assert_int_equal(fake.n_subs, 1);
  assert_int_equal(fake.subs[0].max_bytes, ADAPTER_MAX_RESPONSE_BYTES);
  assert_int_equal(d.calls, 0);
  char *body = image_answer(64, 40);
  fake_answer(0, 200, body, NULL, NULL);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->n_images, 1);
  assert_int_equal(d.outcome->images[0].width, 64);
  assert_int_equal(d.outcome->images[0].height, 40);
  provider_outcome_free(d.outcome);
  free(body);
  p->ops->destroy(p);
}

static void test_glue_quantity_joins(void **state) {
  (void)state;
  fake_reset(FAKE_QUEUE);
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  req.quantity = 3;
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  assert_int_equal(fake.n_subs, 3);
  char *a = image_answer(10, 10);
  char *b = image_answer(30, 20);
  /* Calls end out of order; one of them is rate limited. */
  fake_answer(2, 200, b, NULL, NULL);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 0);
  fake_answer(0, 429, "{\"error\":{\"code\":429,\"message\":\"slow\"}}", "9", NULL);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 0);
  fake_answer(1, 200, a, NULL, NULL);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  /* The images that were made are delivered, in call order. */
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->error_class, PROVIDER_ERR_NONE);
  assert_string_equal(d.outcome->error_code, "");
  assert_int_equal(d.outcome->n_images, 2);
  assert_int_equal(d.outcome->images[0].width, 10);
  assert_int_equal(d.outcome->images[1].width, 30);
  provider_outcome_free(d.outcome);
  d = (tu_done){0};

  /* All succeed: all images. */
  fake_reset(FAKE_QUEUE);
  req.quantity = 2;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_answer(0, 200, a, NULL, NULL);
  gemini_provider_drain(p);
  fake_answer(1, 200, b, NULL, NULL);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->n_images, 2);
  provider_outcome_free(d.outcome);
  d = (tu_done){0};

  /* The most calls at once, answered back to back: parsed in parallel, joined once. */
  fake_reset(FAKE_QUEUE);
  req.quantity = ADAPTER_MAX_QUANTITY;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  assert_int_equal(fake.n_subs, ADAPTER_MAX_QUANTITY);
  for (int i = 0; i < ADAPTER_MAX_QUANTITY; i++) fake_answer(i, 200, i % 2 ? a : b, NULL, NULL);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->n_images, ADAPTER_MAX_QUANTITY);
  for (int i = 0; i < ADAPTER_MAX_QUANTITY; i++)
    assert_int_equal(d.outcome->images[i].width, i % 2 ? 10 : 30);
  provider_outcome_free(d.outcome);
  free(a);
  free(b);
  p->ops->destroy(p);
}

static void test_glue_all_fail_first_failure(void **state) {
  (void)state;
  fake_reset(FAKE_QUEUE);
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  req.quantity = 2;
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_end(1, CURLE_OPERATION_TIMEDOUT, false, false);
  gemini_provider_drain(p);
  fake_answer(0, 503, "{\"error\":{\"code\":503,\"message\":\"overloaded\"}}", NULL, NULL);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  /* The first call's failure (by order), not the first to arrive. */
  assert_failure(d.outcome, PROVIDER_ERR_SERVER, true, "upstream_unavailable");
  assert_int_equal(d.outcome->http_status, 503);
  provider_outcome_free(d.outcome);
  p->ops->destroy(p);
}

static void test_glue_transport_failures(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  const struct {
    CURLcode code;
    bool truncated;
    provider_error_class cls;
  } cases[] = {
      {CURLE_OPERATION_TIMEDOUT, false, PROVIDER_ERR_TIMEOUT},
      {CURLE_COULDNT_CONNECT, false, PROVIDER_ERR_NETWORK},
      {CURLE_COULDNT_RESOLVE_HOST, false, PROVIDER_ERR_NETWORK},
      {CURLE_SSL_CONNECT_ERROR, false, PROVIDER_ERR_NETWORK},
      {CURLE_WRITE_ERROR, true, PROVIDER_ERR_BAD_RESPONSE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fake_reset(FAKE_QUEUE);
    tu_done d = {0};
    assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
    fake_end(0, cases[i].code, cases[i].truncated, false);
    gemini_provider_drain(p);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.outcome->error_class, cases[i].cls);
    assert_true(d.outcome->retryable);
    assert_int_equal(d.outcome->status, PROVIDER_FAILED);
    provider_outcome_free(d.outcome);
  }
  p->ops->destroy(p);
}

static void test_glue_cancelled_calls_are_dropped(void **state) {
  (void)state;
  fake_reset(FAKE_QUEUE);
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  req.quantity = 3;
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  char *a = image_answer(10, 10);
  fake_answer(0, 200, a, NULL, NULL);
  gemini_provider_drain(p);
  fake_end(1, CURLE_OK, false, true);
  gemini_provider_drain(p);
  fake_answer(2, 200, a, NULL, NULL);
  gemini_provider_drain(p);
  /* The loop was shutting down: the job ends without done(); ASan checks nothing leaks. */
  assert_int_equal(d.calls, 0);
  assert_null(d.outcome);
  free(a);
  p->ops->destroy(p);
}

/* cancel(): the calls still on the wire are asked to stop; one aborted call
 * makes the whole job canceled, even with an image already in. */
static void test_glue_cancel_in_flight(void **state) {
  (void)state;
  fake_reset(FAKE_QUEUE);
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  req.quantity = 3;
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  char *a = image_answer(10, 10);
  fake_answer(1, 200, a, NULL, NULL); /* this one is home: the register forgets it */
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 0);

  p->ops->cancel(p, &d);
  assert_int_equal(fake.n_cancels, 2);
  bool asked[4] = {false};
  for (int k = 0; k < fake.n_cancels; k++) {
    assert_in_range(fake.cancels[k], 1, 3);
    asked[fake.cancels[k]] = true;
  }
  assert_true(asked[1] && asked[3] && !asked[2]); /* ids of calls 0 and 2, not 1 */
  assert_int_equal(d.calls, 0); /* nothing before the loop ends them */
  assert_int_equal(fake_apply_cancels(), 2);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_failure(d.outcome, PROVIDER_ERR_CANCELED, false, PROVIDER_CANCELED_CODE);
  assert_int_equal(d.outcome->http_status, 0);

  /* Ended: a second cancel finds nothing to stop, and done is not called again. */
  p->ops->cancel(p, &d);
  assert_int_equal(fake.n_cancels, 0);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  provider_outcome_free(d.outcome);
  free(a);
  p->ops->destroy(p);
}

/* Answers that beat the cancel are delivered as usual; a ctx with no call
 * in flight cancels nothing. */
static void test_glue_cancel_too_late_or_elsewhere(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  char *a = image_answer(20, 10);
  tu_done d = {0}, other = {0};

  /* Never started, or another call's ctx: not a single request to the loop. */
  fake_reset(FAKE_QUEUE);
  p->ops->cancel(p, &other);
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  p->ops->cancel(p, &other);
  assert_int_equal(fake.n_cancels, 0);

  /* The answer arrives before the loop takes the cancel: the call ends normally. */
  p->ops->cancel(p, &d);
  assert_int_equal(fake.n_cancels, 1);
  fake_answer(0, 200, a, NULL, NULL);
  assert_int_equal(fake_apply_cancels(), 0);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->images[0].width, 20);
  provider_outcome_free(d.outcome);

  /* An answer being read (handed to the parser) is out of cancel's reach. */
  fake_reset(FAKE_QUEUE);
  d = (tu_done){0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_answer(0, 200, a, NULL, NULL);
  p->ops->cancel(p, &d);
  assert_int_equal(fake.n_cancels, 0);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  provider_outcome_free(d.outcome);

  /* After done: nothing. */
  p->ops->cancel(p, &d);
  assert_int_equal(fake.n_cancels, 0);
  assert_int_equal(d.calls, 1);
  free(a);
  p->ops->destroy(p);
}

static void test_glue_submit_refused(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  tu_done d = {0};
  /* Refused at once: -1, nothing to free later. */
  fake_reset(FAKE_QUEUE);
  fake.accept_limit = 0;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  assert_int_equal(fake.n_subs, 0);

  /* Refused after one of three went out: -1, the one in flight is asked to
   * stop, and whether it stops or answers first, it must not call done. */
  fake_reset(FAKE_QUEUE);
  fake.accept_limit = 1;
  req.quantity = 3;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  assert_int_equal(fake.n_subs, 1);
  assert_int_equal(fake.n_cancels, 1);
  assert_int_equal(fake.cancels[0], 1);
  char *a = image_answer(10, 10);
  fake_answer(0, 200, a, NULL, NULL);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 0);
  fake_reset(FAKE_QUEUE);
  fake.accept_limit = 2;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  assert_int_equal(fake_apply_cancels(), 2);
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 0);
  free(a);

  /* Bad quantities never start. */
  fake_reset(FAKE_QUEUE);
  req.quantity = 0;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  req.quantity = ADAPTER_MAX_QUANTITY + 1;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  assert_int_equal(fake.n_subs, 0);
  assert_int_equal(p->ops->start(p, &req, NULL, &d), -1);
  p->ops->destroy(p);
}

/* ================= answers delivered in pieces ================= */

/* b64 as a JSON string body the way some encoders write it: every '/'
 * escaped as "\/", and the first character as a \u escape. */
static char *escaped_b64(const char *b64) {
  buf out = BUF_INIT;
  assert_true(buf_printf(&out, "\\u%04x", (unsigned char)b64[0]));
  for (const char *c = b64 + 1; *c; c++)
    assert_true(*c == '/' ? buf_append_str(&out, "\\/") : buf_append(&out, c, 1));
  return buf_steal(&out);
}

/* Starts one call and answers it with body cut at cuts; returns the outcome. */
static provider_outcome *answer_in_pieces(provider *p, long status, const char *body,
                                          const size_t *cuts, size_t n_cuts, bool *refused) {
  fake_reset(FAKE_QUEUE);
  provider_request req = base_request();
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  bool r = fake_answer_cut(0, status, body, cuts, n_cuts, NULL, NULL);
  if (refused) *refused = r;
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_non_null(d.outcome);
  return d.outcome;
}

/* The answer cut anywhere (inside "data":", inside a base64 group, inside an
 * escape, inside a key, in a draft): the same final image, byte for byte. */
static void test_glue_pieces_cut_everywhere(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  char *b64 = tu_png_b64("pieces", 24, 16);
  char *esc = escaped_b64(b64);
  char *draft_b64 = tu_png_b64("draft", 4, 4);
  char *draft = image_part(draft_b64, ",\"thought\":true");
  char *final = image_part(esc, ",\"thoughtSignature\":\"c2lnbmF0dXJl\"");
  char *parts = tu_printf("%s,{\"text\":\"a \\\"fox\\\"\"},%s", draft, final);
  char *body = answer_with_parts(parts, "STOP");
  size_t png_len = 0;
  uint8_t *png = tu_png("pieces", 24, 16, &png_len);
  size_t len = strlen(body);
  for (size_t a = 1; a < len; a++) {
    size_t cuts[2] = {a, a + (a * 7919) % (len - a)}; /* and a second cut after it */
    provider_outcome *o = answer_in_pieces(p, 200, body, cuts, 2, NULL);
    if (o->status != PROVIDER_OK)
      fail_msg("cut at %zu, %zu: %s", cuts[0], cuts[1], o->error_message);
    assert_int_equal(o->n_images, 1);
    assert_int_equal(o->images[0].width, 24);
    assert_int_equal(o->images[0].len, png_len);
    assert_memory_equal(o->images[0].data, png, png_len);
    provider_outcome_free(o);
  }
  free(png);
  free(body);
  free(parts);
  free(final);
  free(draft);
  free(draft_b64);
  free(esc);
  free(b64);
  p->ops->destroy(p);
}

/* A 3 MiB image (a real PNG header, then noise) in pieces of odd sizes. */
static void test_glue_large_answer_odd_pieces(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  size_t head_len = 0;
  uint8_t *head = tu_png("large", 2048, 1536, &head_len);
  size_t n = (size_t)3 << 20;
  uint8_t *img = malloc(n);
  assert_non_null(img);
  memcpy(img, head, head_len < n ? head_len : n);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = head_len; i < n; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    img[i] = (uint8_t)x;
  }
  char *b64 = base64_encode(img, n);
  char *part = image_part(b64, NULL);
  char *body = answer_with_parts(part, "STOP");
  size_t len = strlen(body);
  static const size_t steps[] = {997, 4093, 16385, 65537};
  size_t *cuts = malloc((len / 997 + 1) * sizeof *cuts);
  assert_non_null(cuts);
  for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
    size_t n_cuts = 0;
    for (size_t at = steps[k]; at < len; at += steps[k]) cuts[n_cuts++] = at;
    provider_outcome *o = answer_in_pieces(p, 200, body, cuts, n_cuts, NULL);
    assert_int_equal(o->status, PROVIDER_OK);
    assert_int_equal(o->images[0].width, 2048);
    assert_int_equal(o->images[0].height, 1536);
    assert_int_equal(o->images[0].len, n);
    assert_memory_equal(o->images[0].data, img, n);
    provider_outcome_free(o);
  }
  free(cuts);
  free(body);
  free(part);
  free(b64);
  free(img);
  free(head);
  p->ops->destroy(p);
}

/* Bad base64 stops the reading where it is found; a body that ends early,
 * or a proxy's HTML page, is judged as before. */
static void test_glue_pieces_refused(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  char *b64 = tu_png_b64("bad", 200, 200);
  char *broken = strdup(b64);
  broken[strlen(broken) / 2] = '!';
  char *part = image_part(broken, NULL);
  char *body = answer_with_parts(part, "STOP");
  size_t len = strlen(body);
  size_t cuts[64], n_cuts = 0;
  for (size_t at = 37; at < len && n_cuts < 64; at += len / 40 + 1) cuts[n_cuts++] = at;
  bool refused = false;
  provider_outcome *o = answer_in_pieces(p, 200, body, cuts, n_cuts, &refused);
  assert_true(refused); /* the transfer was stopped there, the rest never read */
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  assert_non_null(strstr(o->error_message, "not valid base64"));
  assert_int_equal(o->http_status, 200);
  provider_outcome_free(o);
  free(body);
  free(part);

  /* The body ends in the middle of the image. */
  part = image_part(b64, NULL);
  body = answer_with_parts(part, "STOP");
  body[strlen(body) * 2 / 3] = '\0';
  o = answer_in_pieces(p, 200, body, cuts, 3, &refused);
  assert_false(refused);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  assert_non_null(strstr(o->error_message, "truncated"));
  provider_outcome_free(o);

  /* Not JSON at all, under an error status: the status decides. */
  size_t html_cut[1] = {5};
  o = answer_in_pieces(p, 502, "<html><body>Bad Gateway</body></html>", html_cut, 1, &refused);
  assert_true(refused);
  assert_failure(o, PROVIDER_ERR_SERVER, true, "upstream_unavailable");
  assert_int_equal(o->http_status, 502);
  provider_outcome_free(o);
  free(body);
  free(part);
  free(broken);
  free(b64);
  p->ops->destroy(p);
}

/* ================= provider glue on the wire ================= */

static void test_wire_request_and_answer(void **state) {
  (void)state;
  fake_reset(FAKE_PERFORM);
  capsrv srv = {0};
  char *answer = image_answer(96, 64);
  srv.answers[0] = capsrv_answer(200, NULL, answer);
  free(answer);
  capsrv_start(&srv, 1);
  /* A base_url written with the API version is accepted too. */
  char *base = tu_printf("http://127.0.0.1:%d/v1beta/", srv.port);
  provider *p = make_provider(base);

  /* A reference over 1 MiB, where curl would otherwise send "Expect: 100-continue". */
  size_t big_len = (size_t)1 << 21;
  uint8_t *big = malloc(big_len);
  assert_non_null(big);
  for (size_t i = 0; i < big_len; i++) big[i] = (uint8_t)(i * 31 + 7);
  provider_input in = {big, big_len, "image/webp"};
  provider_request req = base_request();
  req.aspect_ratio = "21:9";
  req.resolution = "4K";
  req.inputs = &in;
  req.n_inputs = 1;
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_perform_all();
  capsrv_finish(&srv);
  gemini_provider_drain(p);

  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->images[0].width, 96);
  assert_int_equal(d.outcome->images[0].height, 64);
  provider_outcome_free(d.outcome);

  const char *line = "POST /v1beta/models/gemini-3-pro-image-preview:generateContent HTTP/1.1\r\n";
  assert_memory_equal(srv.requests[0], line, strlen(line));
  assert_true(capsrv_has_header(&srv, 0, "x-goog-api-key", "test-key"));
  assert_true(capsrv_has_header(&srv, 0, "Content-Type", "application/json"));
  const char *head_end = strstr(srv.requests[0], "\r\n\r\n");
  const char *expect = strcasestr(srv.requests[0], "\r\nExpect:");
  assert_true(expect == NULL || expect > head_end);
  size_t body_len = 0;
  const char *body = capsrv_body(&srv, 0, &body_len);
  json_error_t err;
  json_t *j = json_loadb(body, body_len, 0, &err);
  assert_non_null(j);
  json_t *ic = json_object_get(json_object_get(j, "generationConfig"), "imageConfig");
  assert_string_equal(json_string_value(json_object_get(ic, "aspectRatio")), "21:9");
  assert_string_equal(json_string_value(json_object_get(ic, "imageSize")), "4K");
  json_t *parts = json_object_get(json_array_get(json_object_get(j, "contents"), 0), "parts");
  const char *data =
      json_string_value(json_object_get(json_object_get(json_array_get(parts, 1), "inlineData"),
                                        "data"));
  assert_int_equal(strlen(data), base64_encoded_len(big_len));
  json_decref(j);
  capsrv_free(&srv);
  free(big);
  free(base);
  p->ops->destroy(p);
}

static void test_wire_parallel_and_headers(void **state) {
  (void)state;
  fake_reset(FAKE_PERFORM);
  capsrv srv = {0};
  char *ok = image_answer(12, 12);
  srv.answers[0] = capsrv_answer(200, NULL, ok);
  srv.answers[1] = capsrv_answer(429, "Retry-After: 6\r\n",
                                 "{\"error\":{\"code\":429,\"message\":\"Resource exhausted.\","
                                 "\"status\":\"RESOURCE_EXHAUSTED\"}}");
  free(ok);
  capsrv_start(&srv, 2);
  char *base = tu_printf("http://127.0.0.1:%d", srv.port);
  provider *p = make_provider(base);
  provider_request req = base_request();
  req.quantity = 2;
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_perform_all();
  capsrv_finish(&srv);
  gemini_provider_drain(p);
  assert_int_equal(srv.served, 2);
  /* Both calls carried the same body. */
  size_t l0 = 0, l1 = 0;
  const char *b0 = capsrv_body(&srv, 0, &l0);
  const char *b1 = capsrv_body(&srv, 1, &l1);
  assert_int_equal(l0, l1);
  assert_memory_equal(b0, b1, l0);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->n_images, 1);
  provider_outcome_free(d.outcome);

  /* The Retry-After header reaches the outcome through curl. */
  fake_reset(FAKE_PERFORM);
  capsrv srv2 = {0};
  srv2.answers[0] = capsrv_answer(429, "Retry-After: 6\r\n",
                                  "{\"error\":{\"code\":429,\"message\":\"Resource exhausted.\"}}");
  capsrv_start(&srv2, 1);
  char *base2 = tu_printf("http://127.0.0.1:%d", srv2.port);
  provider *p2 = make_provider(base2);
  req.quantity = 1;
  d = (tu_done){0};
  assert_int_equal(p2->ops->start(p2, &req, tu_done_fn, &d), 0);
  fake_perform_all();
  capsrv_finish(&srv2);
  gemini_provider_drain(p2);
  assert_int_equal(d.calls, 1);
  assert_failure(d.outcome, PROVIDER_ERR_RATE_LIMITED, true, "upstream_rate_limited");
  assert_int_equal(d.outcome->retry_after_ms, 6000);
  provider_outcome_free(d.outcome);
  p2->ops->destroy(p2);
  capsrv_free(&srv2);
  capsrv_free(&srv);
  free(base2);
  free(base);
  p->ops->destroy(p);
}

static void test_wire_connection_refused(void **state) {
  (void)state;
  fake_reset(FAKE_PERFORM);
  /* A port that was just free: nothing listens there. */
  int port = closed_port();
  assert_true(port > 0);
  char *base = tu_printf("http://127.0.0.1:%d", port);
  provider *p = make_provider(base);
  provider_request req = base_request();
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_perform_all();
  gemini_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_failure(d.outcome, PROVIDER_ERR_NETWORK, true, "upstream_unavailable");
  assert_int_equal(d.outcome->http_status, 0);
  provider_outcome_free(d.outcome);
  free(base);
  p->ops->destroy(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_request_text_only),
      cmocka_unit_test(test_request_inputs_round_trip),
      cmocka_unit_test(test_request_image_size_per_model),
      cmocka_unit_test(test_request_prompt_escaping),
      cmocka_unit_test(test_request_url),
      cmocka_unit_test(test_parse_final_image_after_thoughts),
      cmocka_unit_test(test_parse_last_of_two_finals),
      cmocka_unit_test(test_parse_snake_case_and_mime_from_bytes),
      cmocka_unit_test(test_parse_bad_image_data),
      cmocka_unit_test(test_parse_malformed_answers),
      cmocka_unit_test(test_parse_prompt_blocked),
      cmocka_unit_test(test_parse_finish_reasons),
      cmocka_unit_test(test_parse_text_refusal),
      cmocka_unit_test(test_parse_error_400),
      cmocka_unit_test(test_parse_error_route),
      cmocka_unit_test(test_parse_rate_limited),
      cmocka_unit_test(test_parse_error_shapes),
      cmocka_unit_test(test_create_refuses_bad_config),
      cmocka_unit_test(test_glue_single_call),
      cmocka_unit_test(test_glue_quantity_joins),
      cmocka_unit_test(test_glue_all_fail_first_failure),
      cmocka_unit_test(test_glue_transport_failures),
      cmocka_unit_test(test_glue_cancelled_calls_are_dropped),
      cmocka_unit_test(test_glue_cancel_in_flight),
      cmocka_unit_test(test_glue_cancel_too_late_or_elsewhere),
      cmocka_unit_test(test_glue_submit_refused),
      cmocka_unit_test(test_glue_pieces_cut_everywhere),
      cmocka_unit_test(test_glue_large_answer_odd_pieces),
      cmocka_unit_test(test_glue_pieces_refused),
      cmocka_unit_test(test_wire_request_and_answer),
      cmocka_unit_test(test_wire_parallel_and_headers),
      cmocka_unit_test(test_wire_connection_refused),
  };
  return cmocka_run_group_tests(tests, tu_setup_curl, tu_teardown_curl);
}
