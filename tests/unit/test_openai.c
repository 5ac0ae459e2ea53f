/* test_openai.c - the OpenAI Images adapter: size mapping, the generations body
 * read back with jansson, the edits form description, hand-written upstream
 * answers of every kind (from shared/reference/upstreams.md) through the parser,
 * and the provider glue over a stand-in curl loop, including real transfers to a
 * local server to check the JSON and multipart bytes on the wire. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>

#include "adapter_testutil.h"
#include "upstream/adapter.h"
#include "upstream/openai.h"

/* ================= helpers ================= */

static provider_request base_request(void) {
  return (provider_request){
      .task_id = "t1",
      .model = "gpt-image-1",
      .upstream_model = "gpt-image-1",
      .prompt = "a lighthouse at dusk",
      .aspect_ratio = "1:1",
      .resolution = "1K",
      .quantity = 1,
  };
}

static provider_outcome *parse(long status, const char *body, const char *ra, const char *ra_ms) {
  provider_outcome *o =
      openai_parse_response(status, body, body ? strlen(body) : 0, ra, ra_ms);
  assert_non_null(o);
  return o;
}

static void assert_failure(const provider_outcome *o, provider_error_class cls, bool retryable,
                           const char *code) {
  assert_int_equal(o->status, cls == PROVIDER_ERR_MODERATED ? PROVIDER_MODERATED : PROVIDER_FAILED);
  assert_int_equal(o->error_class, cls);
  assert_int_equal(o->retryable, retryable);
  assert_string_equal(o->error_code, code);
  assert_int_equal(o->n_images, 0);
  assert_memory_equal(o->error_message, "openai:", 7);
}

/* A 200 answer like the reference's, with these data[] entries. */
static char *images_answer(const char *entries) {
  return tu_printf("{\"created\":1713833628,\"background\":\"opaque\",\"output_format\":\"png\","
                   "\"quality\":\"low\",\"size\":\"1024x1024\",\"data\":[%s],"
                   "\"usage\":{\"input_tokens\":5,\"output_tokens\":272,\"total_tokens\":277,"
                   "\"input_tokens_details\":{\"text_tokens\":5,\"image_tokens\":0}}}",
                   entries);
}

static char *two_images_answer(void) {
  char *a = tu_png_b64("one", 32, 32);
  char *b = tu_png_b64("two", 48, 32);
  char *entries = tu_printf("{\"b64_json\":\"%s\"},{\"b64_json\":\"%s\"}", a, b);
  char *body = images_answer(entries);
  free(entries);
  free(b);
  free(a);
  return body;
}

static char *error_body(const char *message, const char *type, const char *code) {
  return tu_printf("{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,"
                   "\"code\":%s%s%s}}",
                   message, type, code ? "\"" : "", code ? code : "null", code ? "\"" : "");
}

/* ================= requests ================= */

static void test_size_mapping(void **state) {
  (void)state;
  assert_string_equal(openai_size("1:1"), "1024x1024");
  assert_string_equal(openai_size("3:2"), "1536x1024");
  assert_string_equal(openai_size("2:3"), "1024x1536");
  assert_string_equal(openai_size("auto"), "auto");
  assert_string_equal(openai_size(NULL), "auto");
  assert_string_equal(openai_size(""), "auto");
  assert_null(openai_size("16:9"));
  assert_null(openai_size("1:1 "));
}

static void test_generations_body(void **state) {
  (void)state;
  provider_request req = base_request();
  req.quantity = 3;
  req.aspect_ratio = "3:2";
  req.prompt = "quote \" backslash \\ newline \n caf\xc3\xa9";
  char *body = openai_build_generations(&req);
  json_error_t err;
  json_t *j = json_loads(body, 0, &err);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "model")), "gpt-image-1");
  assert_string_equal(json_string_value(json_object_get(j, "prompt")), req.prompt);
  assert_int_equal(json_integer_value(json_object_get(j, "n")), 3);
  assert_string_equal(json_string_value(json_object_get(j, "size")), "1536x1024");
  assert_string_equal(json_string_value(json_object_get(j, "quality")), "auto");
  assert_string_equal(json_string_value(json_object_get(j, "output_format")), "png");
  /* The background, "auto" when not asked: said explicitly, as the quality. */
  assert_string_equal(json_string_value(json_object_get(j, "background")), "auto");
  assert_null(json_object_get(j, "response_format")); /* a DALL-E parameter */
  assert_int_equal(json_object_size(j), 7);
  json_decref(j);
  free(body);

  req.aspect_ratio = "auto";
  req.quality = "high";
  req.background = "transparent";
  body = openai_build_generations(&req);
  j = json_loads(body, 0, &err);
  assert_string_equal(json_string_value(json_object_get(j, "quality")), "high");
  assert_string_equal(json_string_value(json_object_get(j, "size")), "auto");
  assert_string_equal(json_string_value(json_object_get(j, "background")), "transparent");
  json_decref(j);
  free(body);

  req.quality = ""; /* as NULL: "auto", sent explicitly */
  req.background = "opaque";
  /* A mask goes with an edit only: a generation never carries one. */
  const uint8_t mask_bytes[] = "not looked at here";
  provider_input mask = {mask_bytes, sizeof mask_bytes, "image/png"};
  req.mask = &mask;
  body = openai_build_generations(&req);
  j = json_loads(body, 0, &err);
  assert_string_equal(json_string_value(json_object_get(j, "quality")), "auto");
  assert_string_equal(json_string_value(json_object_get(j, "background")), "opaque");
  assert_null(json_object_get(j, "mask"));
  assert_int_equal(json_object_size(j), 7);
  json_decref(j);
  free(body);

  req.aspect_ratio = "16:9";
  assert_null(openai_build_generations(&req));
  req = base_request();
  req.upstream_model = NULL;
  assert_null(openai_build_generations(&req));
}

/* The format asked of GPT Image: the task's, with its quality for the lossy
 * ones; PNG (and no quality) otherwise. */
static void test_output_format_asked(void **state) {
  (void)state;
  provider_request req = base_request();
  static const struct {
    const char *want;
    int compression;
    const char *sent;
    int sent_compression; /* -1: none sent */
  } cases[] = {{NULL, 100, "png", -1},    {"png", 100, "png", -1},   {"jpeg", 40, "jpeg", 40},
               {"webp", 0, "webp", 0},    {"webp", 100, "webp", 100}, {"gif", 50, "png", -1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    req.output_format = cases[i].want;
    req.output_compression = cases[i].compression;
    char *body = openai_build_generations(&req);
    json_error_t err;
    json_t *j = json_loads(body, 0, &err);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "output_format")), cases[i].sent);
    json_t *c = json_object_get(j, "output_compression");
    if (cases[i].sent_compression < 0) {
      assert_null(c);
    } else {
      assert_int_equal(json_integer_value(c), cases[i].sent_compression);
    }
    json_decref(j);
    free(body);

    /* The edits form says the same, as text fields after output_format
     * (the background comes last of them). */
    openai_form form;
    assert_int_equal(openai_describe_edits(&req, &form), 0);
    assert_string_equal(form.parts[5].name, "output_format");
    assert_string_equal(form.parts[5].text, cases[i].sent);
    if (cases[i].sent_compression < 0) {
      assert_int_equal(form.n_parts, 7);
    } else {
      char text[8];
      snprintf(text, sizeof text, "%d", cases[i].sent_compression);
      assert_int_equal(form.n_parts, 8);
      assert_string_equal(form.parts[6].name, "output_compression");
      assert_string_equal(form.parts[6].text, text);
    }
    assert_string_equal(form.parts[form.n_parts - 1].name, "background");
    openai_form_free(&form);
  }
}

static void test_edits_form_description(void **state) {
  (void)state;
  size_t png_len = 0;
  uint8_t *png = tu_png("ref", 20, 20, &png_len);
  const uint8_t jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1};
  const uint8_t junk[] = "just some bytes!";
  provider_input inputs[4] = {
      {png, png_len, "application/octet-stream"}, /* as the Node SDK types its parts */
      {jpeg, sizeof jpeg, "image/jpeg"},
      {junk, 16, "image/webp"},
      {junk, 16, NULL},
  };
  provider_request req = base_request();
  req.inputs = inputs;
  req.n_inputs = 4;
  req.quantity = 2;
  req.aspect_ratio = "2:3";
  openai_form form;
  assert_int_equal(openai_describe_edits(&req, &form), 0);
  assert_int_equal(form.n_parts, 11);
  const char *names[7] = {"prompt", "model", "n", "size", "quality", "output_format",
                          "background"};
  const char *values[7] = {"a lighthouse at dusk", "gpt-image-1", "2", "1024x1536", "auto", "png",
                           "auto"};
  for (size_t i = 0; i < 7; i++) {
    assert_string_equal(form.parts[i].name, names[i]);
    assert_string_equal(form.parts[i].text, values[i]);
    assert_string_equal(form.parts[i].filename, "");
  }
  const char *files[4] = {"image-1.png", "image-2.jpg", "image-3.webp", "image-4.bin"};
  const char *types[4] = {"image/png", "image/jpeg", "image/webp", "application/octet-stream"};
  for (size_t i = 0; i < 4; i++) {
    const openai_part *p = &form.parts[7 + i];
    assert_string_equal(p->name, "image[]");
    assert_null(p->text);
    assert_ptr_equal(p->data, inputs[i].data); /* borrowed, not copied */
    assert_int_equal(p->len, inputs[i].len);
    assert_string_equal(p->filename, files[i]);
    assert_string_equal(p->type, types[i]);
  }
  openai_form_free(&form);
  assert_null(form.parts);

  req.quality = "low";
  assert_int_equal(openai_describe_edits(&req, &form), 0);
  assert_string_equal(form.parts[4].text, "low");
  openai_form_free(&form);

  /* A mask: the last part, the file "mask", borrowed as given; the
   * background as asked. */
  size_t mask_len = 0;
  uint8_t *mask_png = tu_png("mask", 20, 20, &mask_len);
  provider_input mask = {mask_png, mask_len, "application/octet-stream"};
  req.mask = &mask;
  req.background = "transparent";
  assert_int_equal(openai_describe_edits(&req, &form), 0);
  assert_int_equal(form.n_parts, 12);
  assert_string_equal(form.parts[6].name, "background");
  assert_string_equal(form.parts[6].text, "transparent");
  const openai_part *m = &form.parts[11];
  assert_string_equal(m->name, "mask");
  assert_null(m->text);
  assert_ptr_equal(m->data, mask_png);
  assert_int_equal(m->len, mask_len);
  assert_string_equal(m->filename, "mask.png");
  assert_string_equal(m->type, "image/png");
  for (size_t i = 0; i < 11; i++) assert_string_not_equal(form.parts[i].name, "mask");
  openai_form_free(&form);
  /* Without images there is nothing for a mask to apply to: none is sent. */
  req.n_inputs = 0;
  req.inputs = NULL;
  assert_int_equal(openai_describe_edits(&req, &form), 0);
  assert_int_equal(form.n_parts, 7);
  openai_form_free(&form);
  free(mask_png);
  req.inputs = inputs;
  req.n_inputs = 4;

  req.aspect_ratio = "4:3";
  assert_int_equal(openai_describe_edits(&req, &form), -1);
  assert_null(form.parts);
  free(png);
}

static void test_request_url(void **state) {
  (void)state;
  char *u = openai_request_url("https://api.openai.com", false);
  assert_string_equal(u, "https://api.openai.com/v1/images/generations");
  free(u);
  u = openai_request_url("https://api.openai.com", true);
  assert_string_equal(u, "https://api.openai.com/v1/images/edits");
  free(u);
  assert_null(openai_request_url(NULL, true));
}

/* ================= answers ================= */

static void test_parse_images(void **state) {
  (void)state;
  char *body = two_images_answer();
  provider_outcome *o = parse(200, body, NULL, NULL);
  assert_int_equal(o->status, PROVIDER_OK);
  assert_int_equal(o->error_class, PROVIDER_ERR_NONE);
  assert_int_equal(o->http_status, 200);
  assert_int_equal(o->n_images, 2);
  assert_string_equal(o->images[0].mime, "image/png");
  assert_int_equal(o->images[0].width, 32);
  assert_int_equal(o->images[1].width, 48);
  assert_int_equal(o->images[1].height, 32);
  size_t len = 0;
  uint8_t *png = tu_png("two", 48, 32, &len);
  assert_int_equal(o->images[1].len, len);
  assert_memory_equal(o->images[1].data, png, len);
  free(png);
  assert_string_equal(o->quality, "low"); /* the answer's own report, for the core to price */
  assert_string_equal(o->background, "opaque"); /* and the background it made */
  provider_outcome_free(o);

  /* A quality that is not one the core prices by, or none: not reported. */
  char *a = tu_png_b64("one", 32, 32);
  static const char *const unknown[] = {"\"quality\":\"ultra\",\"background\":\"auto\",",
                                        "\"quality\":7,\"background\":1,", ""};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    char *other = tu_printf("{\"created\":1,%s\"data\":[{\"b64_json\":\"%s\"}]}", unknown[i], a);
    o = parse(200, other, NULL, NULL);
    assert_int_equal(o->n_images, 1);
    assert_string_equal(o->quality, "");
    assert_string_equal(o->background, "");
    provider_outcome_free(o);
    free(other);
  }
  free(a);

  /* Truncated JSON. */
  o = openai_parse_response(200, body, strlen(body) / 3, NULL, NULL);
  assert_non_null(o);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  provider_outcome_free(o);
  free(body);
}

static void test_parse_bad_images(void **state) {
  (void)state;
  char *good = tu_png_b64("good", 8, 8);
  char *text = base64_encode((const uint8_t *)"this is not an image at all", 27);
  struct {
    char *entries;
    const char *why;
  } cases[] = {
      {tu_printf("{\"b64_json\":\"%s\"},{\"b64_json\":\"%%%%garbage%%%%\"}", good), "base64"},
      {tu_printf("{\"b64_json\":\"%s\"}", text), "not a known image format"},
      {tu_printf("{\"url\":\"https://cdn.example/x.png\"}"), "URL"},
      {tu_printf("{\"revised_prompt\":\"x\"}"), "no b64_json"},
      {tu_printf("42"), "no b64_json"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *body = images_answer(cases[i].entries);
    provider_outcome *o = parse(200, body, NULL, NULL);
    assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
    assert_non_null(strstr(o->error_message, cases[i].why));
    provider_outcome_free(o);
    free(body);
    free(cases[i].entries);
  }
  free(text);
  free(good);

  const char *shapes[] = {"", "nope", "[]", "{}", "{\"data\":{}}", "{\"data\":null}"};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    provider_outcome *o = parse(200, shapes[i], NULL, NULL);
    assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
    provider_outcome_free(o);
  }
  /* An empty list: the model made nothing. */
  provider_outcome *o = parse(200, "{\"created\":1,\"data\":[]}", NULL, NULL);
  assert_failure(o, PROVIDER_ERR_NO_IMAGE, true, "no_image");
  provider_outcome_free(o);
}

static void test_parse_moderation(void **state) {
  (void)state;
  const char *msg = "Your request was rejected as a result of our safety system.";
  char *body = error_body(msg, "image_generation_user_error", "moderation_blocked");
  provider_outcome *o = parse(400, body, NULL, NULL);
  assert_failure(o, PROVIDER_ERR_MODERATED, false, "content_moderated");
  assert_int_equal(o->http_status, 400);
  assert_non_null(strstr(o->error_message, msg));
  assert_non_null(strstr(o->error_message, "moderation_blocked"));
  provider_outcome_free(o);
  free(body);

  /* Another moderation code under the image-generation type. */
  body = error_body("blocked", "image_generation_user_error", "output_moderation");
  o = parse(400, body, NULL, NULL);
  assert_failure(o, PROVIDER_ERR_MODERATED, false, "content_moderated");
  provider_outcome_free(o);
  free(body);
  /* The DALL-E spelling, and a reseller answering 422. */
  body = error_body("blocked", "invalid_request_error", "content_policy_violation");
  o = parse(422, body, NULL, NULL);
  assert_failure(o, PROVIDER_ERR_MODERATED, false, "content_moderated");
  provider_outcome_free(o);
  free(body);
  /* Inside a 200. */
  body = error_body("blocked", "image_generation_user_error", "moderation_blocked");
  o = parse(200, body, NULL, NULL);
  assert_failure(o, PROVIDER_ERR_MODERATED, false, "content_moderated");
  provider_outcome_free(o);
  free(body);
  /* "moderation" in the code of another type is not a refusal. */
  body = error_body("bad value", "invalid_request_error", "invalid_moderation_value");
  o = parse(400, body, NULL, NULL);
  assert_failure(o, PROVIDER_ERR_BAD_REQUEST, false, "upstream_bad_request");
  provider_outcome_free(o);
  free(body);
}

static void test_parse_errors(void **state) {
  (void)state;
  const struct {
    int status;
    const char *type, *code;
    provider_error_class cls;
    bool retryable;
    const char *slug;
  } cases[] = {
      {400, "invalid_request_error", "invalid_value", PROVIDER_ERR_BAD_REQUEST, false,
       "upstream_bad_request"},
      {400, "invalid_request_error", NULL, PROVIDER_ERR_BAD_REQUEST, false, "upstream_bad_request"},
      {400, "billing_error", "billing_hard_limit_reached", PROVIDER_ERR_CREDIT, true,
       "upstream_credit"},
      {401, "invalid_request_error", "invalid_api_key", PROVIDER_ERR_AUTH, true, "upstream_auth"},
      {403, "invalid_request_error", "unsupported_country_region_territory", PROVIDER_ERR_AUTH,
       true, "upstream_auth"},
      {402, "billing_error", NULL, PROVIDER_ERR_CREDIT, true, "upstream_credit"},
      {404, "invalid_request_error", "model_not_found", PROVIDER_ERR_AUTH, true,
       "upstream_model_not_found"},
      {408, "timeout", NULL, PROVIDER_ERR_TIMEOUT, true, "upstream_timeout"},
      {409, "conflict", NULL, PROVIDER_ERR_SERVER, true, "upstream_unavailable"},
      {413, "invalid_request_error", NULL, PROVIDER_ERR_BAD_REQUEST, false, "upstream_bad_request"},
      {429, "requests", "rate_limit_exceeded", PROVIDER_ERR_RATE_LIMITED, true,
       "upstream_rate_limited"},
      {429, "insufficient_quota", "insufficient_quota", PROVIDER_ERR_CREDIT, true,
       "upstream_credit"},
      {500, "server_error", NULL, PROVIDER_ERR_SERVER, true, "upstream_unavailable"},
      {502, "server_error", NULL, PROVIDER_ERR_SERVER, true, "upstream_unavailable"},
      {503, "server_error", NULL, PROVIDER_ERR_SERVER, true, "upstream_unavailable"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *body = error_body("upstream explains", cases[i].type, cases[i].code);
    provider_outcome *o = parse(cases[i].status, body, NULL, NULL);
    assert_failure(o, cases[i].cls, cases[i].retryable, cases[i].slug);
    assert_int_equal(o->http_status, cases[i].status);
    assert_non_null(strstr(o->error_message, "upstream explains"));
    provider_outcome_free(o);
    free(body);
  }
  /* No JSON at all. */
  provider_outcome *o = parse(503, "upstream connect error", NULL, NULL);
  assert_failure(o, PROVIDER_ERR_SERVER, true, "upstream_unavailable");
  assert_non_null(strstr(o->error_message, "no error details"));
  provider_outcome_free(o);
  o = parse(301, "", NULL, NULL);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  provider_outcome_free(o);
  /* A 200 error that is not a refusal. */
  o = parse(200, "{\"error\":{\"message\":\"odd\",\"type\":\"server_error\"}}", NULL, NULL);
  assert_failure(o, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  provider_outcome_free(o);
}

static void test_parse_rate_limit_headers(void **state) {
  (void)state;
  char *body = error_body("Rate limit reached for images per minute.", "requests",
                          "rate_limit_exceeded");
  provider_outcome *o = parse(429, body, NULL, "1500");
  assert_failure(o, PROVIDER_ERR_RATE_LIMITED, true, "upstream_rate_limited");
  assert_int_equal(o->retry_after_ms, 1500);
  provider_outcome_free(o);
  /* retry-after-ms wins over retry-after. */
  o = parse(429, body, "20", "250");
  assert_int_equal(o->retry_after_ms, 250);
  provider_outcome_free(o);
  o = parse(429, body, "2", NULL);
  assert_int_equal(o->retry_after_ms, 2000);
  provider_outcome_free(o);
  o = parse(429, body, "", "");
  assert_int_equal(o->retry_after_ms, 0);
  provider_outcome_free(o);
  /* An HTTP date a minute ahead (the clock moves on while the test runs). */
  char date[64];
  time_t at = time(NULL) + 60;
  struct tm tm;
  gmtime_r(&at, &tm);
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  o = parse(429, body, date, NULL);
  assert_true(o->retry_after_ms > 50000 && o->retry_after_ms <= 60000);
  provider_outcome_free(o);
  free(body);
}

/* ================= provider glue (stand-in loop) ================= */

static provider *make_provider(const char *base_url) {
  provider_instance_config cfg = {.name = "oai", .kind = "openai", .base_url = base_url,
                                  .api_key = "sk-test", .timeout_ms = 30000};
  provider *p = openai_provider_create(&cfg, FAKE_LOOP);
  assert_non_null(p);
  assert_string_equal(p->ops->kind, "openai");
  assert_string_equal(p->name, "oai");
  return p;
}

static void test_create_refuses_bad_config(void **state) {
  (void)state;
  provider_instance_config cfg = {.name = "oai", .kind = "gemini",
                                  .base_url = "https://x.test", .api_key = "k"};
  assert_null(openai_provider_create(&cfg, FAKE_LOOP));
  cfg.kind = "openai";
  assert_null(openai_provider_create(&cfg, NULL));
  cfg.base_url = "x.test";
  assert_null(openai_provider_create(&cfg, FAKE_LOOP));
}

static void test_glue_outcomes(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  req.quantity = 2;

  fake_reset(FAKE_QUEUE);
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  assert_int_equal(fake.n_subs, 1); /* one call for both images: the API takes n */
  assert_int_equal(fake.subs[0].max_bytes, ADAPTER_MAX_RESPONSE_BYTES);
  char *body = two_images_answer();
  fake_answer(0, 200, body, NULL, NULL);
  openai_provider_drain(p);
  free(body);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->n_images, 2);
  provider_outcome_free(d.outcome);

  /* Headers reach the parser. */
  fake_reset(FAKE_QUEUE);
  d = (tu_done){0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_answer(0, 429, "{\"error\":{\"message\":\"slow\",\"type\":\"requests\"}}", "3", "1200");
  openai_provider_drain(p);
  assert_failure(d.outcome, PROVIDER_ERR_RATE_LIMITED, true, "upstream_rate_limited");
  assert_int_equal(d.outcome->retry_after_ms, 1200);
  provider_outcome_free(d.outcome);

  /* Transport failures. */
  const struct {
    CURLcode code;
    bool truncated;
    provider_error_class cls;
    const char *error_code;
  } transport[] = {
      {CURLE_OPERATION_TIMEDOUT, false, PROVIDER_ERR_TIMEOUT, "upstream_timeout"},
      {CURLE_RECV_ERROR, false, PROVIDER_ERR_NETWORK, "upstream_unavailable"},
      {CURLE_WRITE_ERROR, true, PROVIDER_ERR_BAD_RESPONSE, "upstream_bad_response"},
  };
  for (size_t i = 0; i < sizeof transport / sizeof transport[0]; i++) {
    fake_reset(FAKE_QUEUE);
    d = (tu_done){0};
    assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
    fake_end(0, transport[i].code, transport[i].truncated, false);
    openai_provider_drain(p);
    assert_failure(d.outcome, transport[i].cls, true, transport[i].error_code);
    provider_outcome_free(d.outcome);
  }
  p->ops->destroy(p);
}

/* Two images in one answer, cut at every point: both, byte for byte. */
static void test_glue_pieces_cut_everywhere(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  req.quantity = 2;
  char *body = two_images_answer();
  size_t len = strlen(body);
  size_t one_len = 0, two_len = 0;
  uint8_t *one = tu_png("one", 32, 32, &one_len);
  uint8_t *two = tu_png("two", 48, 32, &two_len);
  for (size_t a = 1; a < len; a++) {
    fake_reset(FAKE_QUEUE);
    tu_done d = {0};
    assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
    size_t cuts[2] = {a, a + (a * 104729) % (len - a)};
    assert_false(fake_answer_cut(0, 200, body, cuts, 2, NULL, NULL));
    openai_provider_drain(p);
    assert_int_equal(d.calls, 1);
    if (d.outcome->status != PROVIDER_OK) fail_msg("cut at %zu: %s", a, d.outcome->error_message);
    assert_int_equal(d.outcome->n_images, 2);
    assert_int_equal(d.outcome->images[0].len, one_len);
    assert_memory_equal(d.outcome->images[0].data, one, one_len);
    assert_int_equal(d.outcome->images[1].len, two_len);
    assert_memory_equal(d.outcome->images[1].data, two, two_len);
    provider_outcome_free(d.outcome);
  }
  /* A broken second image stops the reading and fails the whole answer. */
  char *broken = strdup(body);
  char *second = strstr(strstr(broken, "b64_json") + 12, "b64_json");
  assert_non_null(second);
  second[40] = '*';
  fake_reset(FAKE_QUEUE);
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  size_t cuts[1] = {(size_t)(second - broken)};
  assert_true(fake_answer_cut(0, 200, broken, cuts, 1, NULL, NULL));
  openai_provider_drain(p);
  assert_failure(d.outcome, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response");
  assert_non_null(strstr(d.outcome->error_message, "base64"));
  provider_outcome_free(d.outcome);
  free(broken);
  free(two);
  free(one);
  free(body);
  p->ops->destroy(p);
}

/* cancel(): the transfer is asked to stop and the call ends canceled; one
 * that has ended, or a ctx with no call, is left alone. */
static void test_glue_cancel(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  provider_request req = base_request();
  tu_done d = {0}, other = {0};

  fake_reset(FAKE_QUEUE);
  p->ops->cancel(p, &d); /* never started */
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  p->ops->cancel(p, &other);
  assert_int_equal(fake.n_cancels, 0);
  p->ops->cancel(p, &d);
  assert_int_equal(fake.n_cancels, 1);
  assert_int_equal(fake.cancels[0], 1);
  assert_int_equal(fake_apply_cancels(), 1);
  openai_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_failure(d.outcome, PROVIDER_ERR_CANCELED, false, PROVIDER_CANCELED_CODE);
  assert_int_equal(d.outcome->http_status, 0);
  provider_outcome_free(d.outcome);
  p->ops->cancel(p, &d); /* ended: nothing */
  assert_int_equal(fake.n_cancels, 0);
  assert_int_equal(d.calls, 1);

  /* The answer beats the cancel: delivered as usual. */
  fake_reset(FAKE_QUEUE);
  d = (tu_done){0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  p->ops->cancel(p, &d);
  char *body = two_images_answer();
  fake_answer(0, 200, body, NULL, NULL);
  assert_int_equal(fake_apply_cancels(), 0);
  openai_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->n_images, 2);
  provider_outcome_free(d.outcome);
  free(body);
  p->ops->destroy(p);
}

static void test_glue_cancel_and_refusals(void **state) {
  (void)state;
  provider *p = make_provider("https://x.test");
  size_t png_len = 0;
  uint8_t *png = tu_png("ref", 16, 16, &png_len);
  provider_input in = {png, png_len, "image/png"};
  provider_request req = base_request();
  req.inputs = &in;
  req.n_inputs = 1;

  /* Cancelled (the loop shutting down): done() never runs; ASan checks the call is freed. */
  fake_reset(FAKE_QUEUE);
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_end(0, CURLE_OK, false, true);
  openai_provider_drain(p);
  assert_int_equal(d.calls, 0);

  /* A refused submission: -1 and nothing leaks. */
  fake_reset(FAKE_QUEUE);
  fake.accept_limit = 0;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  req.n_inputs = 0;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);

  /* Requests that cannot be made. */
  fake_reset(FAKE_QUEUE);
  req.aspect_ratio = "21:9";
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  req.aspect_ratio = "1:1";
  req.quantity = 0;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  req.quantity = 11;
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), -1);
  assert_int_equal(fake.n_subs, 0);
  assert_int_equal(d.calls, 0);
  free(png);
  p->ops->destroy(p);
}

/* ================= on the wire ================= */

static void test_wire_generations(void **state) {
  (void)state;
  fake_reset(FAKE_PERFORM);
  capsrv srv = {0};
  char *answer = two_images_answer();
  srv.answers[0] = capsrv_answer(200, "x-request-id: req_1\r\n", answer);
  free(answer);
  capsrv_start(&srv, 1);
  /* The SDK-style base URL with /v1 must not turn into /v1/v1. */
  char *base = tu_printf("http://127.0.0.1:%d/v1", srv.port);
  provider *p = make_provider(base);
  provider_request req = base_request();
  req.quantity = 2;
  req.aspect_ratio = "2:3";
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_perform_all();
  capsrv_finish(&srv);
  openai_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.outcome->status, PROVIDER_OK);
  assert_int_equal(d.outcome->n_images, 2);
  provider_outcome_free(d.outcome);

  const char *line = "POST /v1/images/generations HTTP/1.1\r\n";
  assert_memory_equal(srv.requests[0], line, strlen(line));
  assert_true(capsrv_has_header(&srv, 0, "Authorization", "Bearer sk-test"));
  assert_true(capsrv_has_header(&srv, 0, "Content-Type", "application/json"));
  size_t len = 0;
  const char *body = capsrv_body(&srv, 0, &len);
  json_error_t err;
  json_t *j = json_loadb(body, len, 0, &err);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "size")), "1024x1536");
  assert_int_equal(json_integer_value(json_object_get(j, "n")), 2);
  assert_string_equal(json_string_value(json_object_get(j, "prompt")), "a lighthouse at dusk");
  json_decref(j);
  capsrv_free(&srv);
  free(base);
  p->ops->destroy(p);
}

/* Finds `needle` in the request body. */
static const char *find_bytes(const char *hay, size_t hay_len, const void *needle, size_t n) {
  return memmem(hay, hay_len, needle, n);
}

static void test_wire_edits_multipart(void **state) {
  (void)state;
  fake_reset(FAKE_PERFORM);
  capsrv srv = {0};
  srv.answers[0] = capsrv_answer(400, NULL,
                                 "{\"error\":{\"message\":\"Your request was rejected by the "
                                 "safety system.\",\"type\":\"image_generation_user_error\","
                                 "\"param\":null,\"code\":\"moderation_blocked\"}}");
  capsrv_start(&srv, 1);
  char *base = tu_printf("http://127.0.0.1:%d", srv.port);
  provider *p = make_provider(base);
  size_t png_len = 0;
  uint8_t *png = tu_png("edit-ref", 24, 24, &png_len);
  const uint8_t jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1};
  provider_input inputs[2] = {{png, png_len, "image/png"}, {jpeg, sizeof jpeg, "image/jpeg"}};
  size_t mask_len = 0;
  uint8_t *mask_png = tu_png("edit-mask", 24, 24, &mask_len);
  provider_input mask = {mask_png, mask_len, "image/png"};
  provider_request req = base_request();
  req.inputs = inputs;
  req.n_inputs = 2;
  req.prompt = "make it night";
  req.background = "transparent";
  req.mask = &mask;
  tu_done d = {0};
  assert_int_equal(p->ops->start(p, &req, tu_done_fn, &d), 0);
  fake_perform_all();
  capsrv_finish(&srv);
  openai_provider_drain(p);
  assert_int_equal(d.calls, 1);
  assert_failure(d.outcome, PROVIDER_ERR_MODERATED, false, "content_moderated");
  provider_outcome_free(d.outcome);

  const char *line = "POST /v1/images/edits HTTP/1.1\r\n";
  assert_memory_equal(srv.requests[0], line, strlen(line));
  assert_true(capsrv_has_header(&srv, 0, "Authorization", "Bearer sk-test"));
  assert_non_null(strcasestr(srv.requests[0], "\r\nContent-Type: multipart/form-data; boundary="));
  size_t len = 0;
  const char *body = capsrv_body(&srv, 0, &len);
  const char *expect[] = {
      "Content-Disposition: form-data; name=\"prompt\"\r\n\r\nmake it night\r\n",
      "Content-Disposition: form-data; name=\"model\"\r\n\r\ngpt-image-1\r\n",
      "Content-Disposition: form-data; name=\"n\"\r\n\r\n1\r\n",
      "Content-Disposition: form-data; name=\"size\"\r\n\r\n1024x1024\r\n",
      "Content-Disposition: form-data; name=\"image[]\"; filename=\"image-1.png\"\r\n"
      "Content-Type: image/png\r\n\r\n",
      "Content-Disposition: form-data; name=\"image[]\"; filename=\"image-2.jpg\"\r\n"
      "Content-Type: image/jpeg\r\n\r\n",
      "Content-Disposition: form-data; name=\"background\"\r\n\r\ntransparent\r\n",
  };
  for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
    if (!find_bytes(body, len, expect[i], strlen(expect[i])))
      fail_msg("multipart body lacks: %s", expect[i]);
  /* The files' bytes, unchanged. */
  assert_non_null(find_bytes(body, len, png, png_len));
  assert_non_null(find_bytes(body, len, jpeg, sizeof jpeg));
  /* The mask: its own part, named mask, its bytes unchanged right after its head. */
  const char *mask_head = "Content-Disposition: form-data; name=\"mask\"; filename=\"mask.png\"\r\n"
                          "Content-Type: image/png\r\n\r\n";
  const char *at = find_bytes(body, len, mask_head, strlen(mask_head));
  assert_non_null(at);
  at += strlen(mask_head);
  assert_true((size_t)(body + len - at) >= mask_len);
  assert_memory_equal(at, mask_png, mask_len);
  capsrv_free(&srv);
  free(mask_png);
  free(png);
  free(base);
  p->ops->destroy(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_size_mapping),
      cmocka_unit_test(test_generations_body),
      cmocka_unit_test(test_edits_form_description),
      cmocka_unit_test(test_output_format_asked),
      cmocka_unit_test(test_request_url),
      cmocka_unit_test(test_parse_images),
      cmocka_unit_test(test_parse_bad_images),
      cmocka_unit_test(test_parse_moderation),
      cmocka_unit_test(test_parse_errors),
      cmocka_unit_test(test_parse_rate_limit_headers),
      cmocka_unit_test(test_create_refuses_bad_config),
      cmocka_unit_test(test_glue_outcomes),
      cmocka_unit_test(test_glue_pieces_cut_everywhere),
      cmocka_unit_test(test_glue_cancel),
      cmocka_unit_test(test_glue_cancel_and_refusals),
      cmocka_unit_test(test_wire_generations),
      cmocka_unit_test(test_wire_edits_multipart),
  };
  return cmocka_run_group_tests(tests, tu_setup_curl, tu_teardown_curl);
}
