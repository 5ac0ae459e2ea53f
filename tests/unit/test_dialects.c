/* test_dialects.c - the dialect seam (api/dialect.h): which dialect owns a
 * path (longest prefix, the first as default), the table's entries complete,
 * and refusals in the owning dialect's shape. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "api/api.h"

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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_longest_prefix_wins),
      cmocka_unit_test(test_table_is_complete),
      cmocka_unit_test(test_refusal_in_owner_shape),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
