/* test_api_common.c - error replies always carry a JSON body, even when the
 * message is not UTF-8 or the document cannot be built; reference-image
 * arrays as the dialects read them. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "reply_testutil.h"

/* The reply's body as JSON, with its error code checked. */
static json_t *error_body(const http_request *req, const char *code) {
  assert_non_null(req->resp_body);
  assert_true(req->resp_len > 0);
  assert_string_equal(resp_header(req, "Content-Type"), "application/json");
  json_error_t jerr;
  json_t *doc = json_loadb(req->resp_body, req->resp_len, 0, &jerr);
  assert_non_null(doc);
  json_t *err = json_object_get(doc, "error");
  assert_string_equal(json_string_value(json_object_get(err, "code")), code);
  assert_non_null(json_string_value(json_object_get(err, "message")));
  assert_non_null(json_object_get(err, "param"));
  return doc;
}

static void test_plain_error(void **state) {
  (void)state;
  http_request req;
  request_init(&req);
  api_reply_error(&req, 400, "invalid_model", "unknown model \"x\"", "model");
  assert_int_equal(req.status, 400);
  json_t *doc = error_body(&req, "invalid_model");
  json_t *err = json_object_get(doc, "error");
  assert_string_equal(json_string_value(json_object_get(err, "param")), "model");
  assert_string_equal(json_string_value(json_object_get(err, "message")), "unknown model \"x\"");
  assert_string_equal(req.log_error, "invalid_model");
  json_decref(doc);
  request_clear(&req);
}

/* Half an "é" in the message used to give a 500 with an empty body. */
static void test_message_not_utf8(void **state) {
  (void)state;
  http_request req;
  request_init(&req);
  api_reply_error(&req, 400, "invalid_model", "unknown model \"a\xc3\"", "model");
  assert_int_equal(req.status, 400);
  json_t *doc = error_body(&req, "invalid_model");
  json_decref(doc);
  request_clear(&req);
}

static void test_param_not_utf8_and_odd_slug(void **state) {
  (void)state;
  http_request req;
  request_init(&req);
  api_reply_error(&req, 422, "Odd \"slug\"", "fine", "\xff");
  assert_int_equal(req.status, 422);
  json_t *doc = error_body(&req, "internal_error"); /* an unsafe slug is not pasted */
  json_decref(doc);
  request_clear(&req);
}

static void test_reply_json_failure_has_a_body(void **state) {
  (void)state;
  http_request req;
  request_init(&req);
  http_reply_json(&req, 200, NULL); /* what a failed json_pack hands over */
  assert_int_equal(req.status, 500);
  json_t *doc = error_body(&req, "internal_error");
  json_decref(doc);
  request_clear(&req);
}

static void test_json_text_repairs(void **state) {
  (void)state;
  json_t *j = api_json_text("caf\xc3 ok");
  assert_non_null(j);
  assert_string_equal(json_string_value(j), "caf? ok");
  json_decref(j);
  j = api_json_text("caf\xc3\xa9");
  assert_string_equal(json_string_value(j), "caf\xc3\xa9");
  json_decref(j);
  assert_null(api_json_text(NULL));
}

/* Reference-image arrays (api_json_image_list): what is taken, and each
 * refusal naming the member as the dialect spells it. */
static void test_image_list(void **state) {
  (void)state;
  json_error_t jerr;
  json_t *body = json_loads(
      "{\"urls\": [\"https://a.example/1.png\", \"data:image/png;base64,AAAA\", \"iVBORw0KGgo=\"],"
      " \"none\": null, \"text\": \"https://a.example/1.png\", \"mixed\": [\"x\", 1],"
      " \"many\": [\"a\", \"b\", \"c\", \"d\"], \"empty\": []}",
      0, &jerr);
  assert_non_null(body);
  const char *out[3] = {NULL, NULL, NULL};
  size_t n = 99;
  http_request req;
  request_init(&req);
  assert_int_equal(api_json_image_list(&req, body, "urls", out, 3, &n), 0);
  assert_int_equal(n, 3);
  assert_string_equal(out[0], "https://a.example/1.png");
  assert_string_equal(out[1], "data:image/png;base64,AAAA");
  assert_string_equal(out[2], "iVBORw0KGgo=");
  for (const char *const *f = (const char *const[]){"absent", "none", "empty", NULL}; *f; f++) {
    n = 99;
    assert_int_equal(api_json_image_list(&req, body, *f, out, 3, &n), 0);
    assert_int_equal(n, 0);
  }
  assert_int_equal(req.status, 0); /* nothing was answered */
  request_clear(&req);

  static const struct {
    const char *field, *code;
  } refused[] = {
      {"text", "invalid_type"},
      {"mixed", "invalid_type"},
      {"many", "too_many_images"}, /* 4 > 3 */
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    request_init(&req);
    n = 99;
    assert_int_equal(api_json_image_list(&req, body, refused[i].field, out, 3, &n), -1);
    assert_int_equal(n, 0);
    assert_int_equal(req.status, 400);
    json_t *doc = error_body(&req, refused[i].code);
    json_t *err = json_object_get(doc, "error");
    assert_string_equal(json_string_value(json_object_get(err, "param")), refused[i].field);
    json_decref(doc);
    request_clear(&req);
  }
  json_decref(body);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain_error),
      cmocka_unit_test(test_message_not_utf8),
      cmocka_unit_test(test_param_not_utf8_and_odd_slug),
      cmocka_unit_test(test_reply_json_failure_has_a_body),
      cmocka_unit_test(test_json_text_repairs),
      cmocka_unit_test(test_image_list),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
