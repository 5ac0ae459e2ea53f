/* test_dialects.c - the dialect seam (api/dialect.h): which dialect owns a
 * path (longest prefix, the first as default), the table's entries complete,
 * refusals in the owning dialect's shape, and the fields of the core's errors
 * under each dialect's own names (api_dialect.field_names). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "reply_testutil.h"

static const char *const p_native[] = {"/api/banana/", "/api/account/", NULL};
static const char *const p_wide[] = {"/api/v1/", "/v1/", NULL};
static const char *const p_narrow[] = {"/api/v1/images/nanobanana/", NULL};
static const api_dialect d_native = {.name = "native", .prefixes = p_native};
static const api_dialect d_wide = {.name = "wide", .prefixes = p_wide};
static const api_dialect d_narrow = {.name = "narrow", .prefixes = p_narrow};

static void test_longest_prefix_wins(void **state) {
  (void)state;
  const api_dialect *const t[] = {&d_native, &d_wide, &d_narrow};
  static const struct {
    const char *path, *owner;
  } cases[] = {
      {"/api/banana/create-async", "native"},
      {"/api/account/webhook-secret", "native"},
      {"/v1/images/generations", "wide"},
      {"/api/v1/generate", "wide"},
      {"/api/v1/images/nanobanana/generate", "narrow"},
      {"/api/v1/images/nanobanana", "wide"}, /* a prefix is a prefix: no trailing slash, no match */
      {"/healthz", "native"},                 /* nobody's: the first, the default */
      {"", "native"},
      {"/V1/images", "native"},               /* paths are case-sensitive */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const api_dialect *d = api_dialect_choose(t, 3, cases[i].path);
    assert_non_null(d);
    if (strcmp(d->name, cases[i].owner) != 0)
      fail_msg("%s: %s, not %s", cases[i].path, d->name, cases[i].owner);
  }
  assert_string_equal(api_dialect_choose(t, 3, NULL)->name, "native");
  assert_null(api_dialect_choose(t, 0, "/v1/x"));
}

/* Every dialect of the real table is complete, named once, and found by
 * name and by its own prefixes. */
static void test_table_is_complete(void **state) {
  (void)state;
  size_t n = 0;
  const api_dialect *const *t = api_dialects(&n);
  assert_true(n >= 1);
  assert_string_equal(t[0]->name, "native");
  for (size_t i = 0; i < n; i++) {
    const api_dialect *d = t[i];
    assert_non_null(d->name);
    assert_non_null(d->register_routes);
    assert_non_null(d->read_key);
    assert_non_null(d->reply_error);
    assert_non_null(d->render_webhook);
    assert_ptr_equal(api_dialect_named(d->name), d);
    for (const char *const *p = d->prefixes; p && *p; p++) {
      char path[256];
      snprintf(path, sizeof path, "%sanything", *p);
      assert_ptr_equal(api_dialect_for_path(path), d);
    }
  }
  assert_null(api_dialect_named("no-such-dialect"));
  assert_null(api_dialect_named(NULL));
}

/* A refusal goes out in the shape of the path's owner: the native shape for
 * a native path. */
static void test_refusal_in_owner_shape(void **state) {
  (void)state;
  http_request req;
  memset(&req, 0, sizeof req);
  req.resp_fd = -1;
  strcpy(req.request_id, "t");
  req.path = "/api/banana/nope";
  api_server_error_hook(&req, 405, "method_not_allowed", "no");
  assert_int_equal(req.status, 405);
  assert_non_null(req.resp_body);
  assert_non_null(strstr(req.resp_body, "\"error\":{\"code\":\"method_not_allowed\""));
  assert_string_equal(req.log_error, "method_not_allowed");
  free(req.resp_body);
  for (int i = 0; i < req.n_resp_headers; i++) {
    free(req.resp_headers[i].name);
    free(req.resp_headers[i].value);
  }
}

/* A request on path, answered only in memory. */
static void request_on(http_request *req, const char *path) {
  request_init(req);
  req->path = path;
}

/* Whether the reply's body (not NUL-terminated) holds text as a JSON
 * string ("text"). */
static bool body_names(const http_request *req, const char *text) {
  char quoted[160];
  int n = snprintf(quoted, sizeof quoted, "\"%s\"", text);
  for (size_t i = 0; req->resp_body && i + (size_t)n <= req->resp_len; i++)
    if (memcmp(req->resp_body + i, quoted, (size_t)n) == 0) return true;
  return false;
}

/* Every dialect's names for the core's fields: only CORE_FIELD_* names, each
 * once, each to a name of its own; what is not listed keeps its name. */
static void test_field_names_are_core_fields(void **state) {
  (void)state;
  static const char *const core_fields[] = {
      CORE_FIELD_PROMPT,          CORE_FIELD_MODEL,          CORE_FIELD_ASPECT_RATIO,
      CORE_FIELD_RESOLUTION,      CORE_FIELD_QUALITY,        CORE_FIELD_IMAGES,
      CORE_FIELD_WEBHOOK,         CORE_FIELD_IDEMPOTENCY_KEY, CORE_FIELD_OUTPUT_FORMAT,
      CORE_FIELD_OUTPUT_COMPRESSION, CORE_FIELD_QUANTITY,    CORE_FIELD_DEADLINE,
      CORE_FIELD_WEBHOOK_EVENTS,
  };
  size_t n = 0;
  const api_dialect *const *t = api_dialects(&n);
  for (size_t i = 0; i < n; i++) {
    for (const api_field_name *f = t[i]->field_names; f && f->core; f++) {
      bool known = false;
      for (size_t k = 0; k < sizeof core_fields / sizeof core_fields[0]; k++)
        known = known || strcmp(f->core, core_fields[k]) == 0;
      if (!known) fail_msg("%s renames \"%s\", which the core never names", t[i]->name, f->core);
      assert_non_null(f->own);
      assert_true(f->own[0] && strcmp(f->own, f->core) != 0);
      for (const api_field_name *g = t[i]->field_names; g != f; g++)
        if (strcmp(g->core, f->core) == 0) fail_msg("%s renames %s twice", t[i]->name, f->core);
      assert_string_equal(api_dialect_field(t[i], f->core), f->own);
    }
    assert_string_equal(api_dialect_field(t[i], "no_such_field"), "no_such_field");
  }
  assert_string_equal(api_dialect_field(&d_native, CORE_FIELD_IMAGES), CORE_FIELD_IMAGES);
}

/* An error a core call returned names its field as the path's dialect does;
 * one a dialect raised itself keeps the name it was given. */
static void test_core_error_named_by_path(void **state) {
  (void)state;
  static const struct {
    const char *path, *own;
  } cases[] = {
      {"/api/banana/create-async", "image_urls"},
      {"/v1/images/generations", "reference_images"},
      {"/api/v1/images/nanobanana/generate", "urls"},
      {"/api/v1/generate", "referenceImageUrls"},
      {"/v1beta/models/nano-banana:generateContent", "contents.parts.inlineData"},
  };
  imgate_error err = {0};
  err_set(&err, ERR_INVALID, "too_many_images", CORE_FIELD_IMAGES, "at most 10 reference images");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    http_request req;
    request_on(&req, cases[i].path);
    api_reply_from_core(&req, &err);
    assert_int_equal(req.status, 400);
    if (!body_names(&req, cases[i].own) || body_names(&req, CORE_FIELD_IMAGES))
      fail_msg("%s: %.*s", cases[i].path, (int)req.resp_len, req.resp_body ? req.resp_body : "");
    assert_string_equal(req.log_error, "too_many_images");
    request_clear(&req);

    request_on(&req, cases[i].path);
    api_reply_error(&req, 400, "invalid_type", "raised by the dialect", CORE_FIELD_IMAGES);
    if (!body_names(&req, CORE_FIELD_IMAGES))
      fail_msg("%s renamed a dialect's own field: %.*s", cases[i].path, (int)req.resp_len,
               req.resp_body ? req.resp_body : "");
    request_clear(&req);
  }

  /* A field the dialect does not list keeps the core's name. */
  http_request req;
  imgate_error prompt = {0};
  err_set(&prompt, ERR_INVALID, "missing_field", CORE_FIELD_PROMPT, "prompt is required");
  request_on(&req, "/api/banana/create-async");
  api_reply_from_core(&req, &prompt);
  assert_true(body_names(&req, CORE_FIELD_PROMPT));
  request_clear(&req);
}

/* The shared path of a core error: the status of its code and the headers
 * that go with it (Retry-After for a rate limit; seed 004's Retry-After: 1
 * for a busy server, which a 503 of the HTTP layer does not get). */
static void test_core_error_status_and_headers(void **state) {
  (void)state;
  http_request req;
  imgate_error limited = {0};
  err_set(&limited, ERR_RATE_LIMITED, "rate_limited", NULL, "slow down");
  limited.retry_after_s = 3;
  request_on(&req, "/v1/images/generations");
  api_reply_from_core(&req, &limited);
  assert_int_equal(req.status, 429);
  assert_string_equal(resp_header(&req, "Retry-After"), "3");
  request_clear(&req);

  imgate_error busy = {0};
  err_set(&busy, ERR_UNAVAILABLE, "server_busy", NULL, "come back");
  request_on(&req, "/api/v1/generate");
  api_reply_from_core(&req, &busy);
  assert_int_equal(req.status, 503);
  assert_string_equal(resp_header(&req, "Retry-After"), "1");
  request_clear(&req);

  request_on(&req, "/api/v1/generate");
  api_server_error_hook(&req, 503, "server_busy", "too many connections");
  assert_int_equal(req.status, 503);
  assert_null(resp_header(&req, "Retry-After"));
  request_clear(&req);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_longest_prefix_wins),
      cmocka_unit_test(test_table_is_complete),
      cmocka_unit_test(test_refusal_in_owner_shape),
      cmocka_unit_test(test_field_names_are_core_fields),
      cmocka_unit_test(test_core_error_named_by_path),
      cmocka_unit_test(test_core_error_status_and_headers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
