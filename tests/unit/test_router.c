/* test_router.c - pattern parsing, matching, parameter decoding, 405 Allow. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "http/server.h"

/* Distinct handlers, so a test can tell which route won. */
static void h_a(http_request *req, void *ctx) {}
static void h_b(http_request *req, void *ctx) {}
static void h_c(http_request *req, void *ctx) {}
static bool g_a(http_request *req, void *ctx) { return true; }

typedef struct match_out {
  http_route_result res;
  http_handler_fn fn;
  void *ctx;
  http_param params[HTTP_MAX_PARAMS];
  int n;
  char allow[128];
} match_out;

static void match(http_router *r, const char *method, const char *path, match_out *m) {
  memset(m, 0, sizeof *m);
  m->res = http_router_match(r, method, path, &m->fn, NULL, &m->ctx, m->params, &m->n, m->allow,
                             sizeof m->allow);
}

static void match_free(match_out *m) {
  for (int i = 0; i < m->n; i++) free(m->params[i].value);
  m->n = 0;
}

static const char *param(const match_out *m, const char *name) {
  for (int i = 0; i < m->n; i++)
    if (strcmp(m->params[i].name, name) == 0) return m->params[i].value;
  return NULL;
}

static void test_literals(void **state) {
  http_router *r = http_router_new();
  assert_non_null(r);
  int ctx_a = 1, ctx_b = 2;
  assert_true(http_router_add(r, "GET", "/", h_c, NULL));
  assert_true(http_router_add(r, "GET", "/v1/models", h_a, &ctx_a));
  assert_true(http_router_add(r, "GET", "/v1/models/", h_b, &ctx_b));
  match_out m;

  match(r, "GET", "/v1/models", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_ptr_equal(m.fn, h_a);
  assert_ptr_equal(m.ctx, &ctx_a);
  assert_int_equal(m.n, 0);

  /* The trailing slash is significant. */
  match(r, "GET", "/v1/models/", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_ptr_equal(m.fn, h_b);

  match(r, "GET", "/", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_ptr_equal(m.fn, h_c);

  match(r, "GET", "/v1/Models", &m); /* exact, case-sensitive */
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  match(r, "GET", "/v1/models/x", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  match(r, "GET", "/v1", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  match(r, "GET", "v1/models", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  match(r, "GET", "", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  http_router_free(r);
}

static void test_params(void **state) {
  http_router *r = http_router_new();
  assert_true(http_router_add(r, "GET", "/v1/tasks/{id}", h_a, NULL));
  assert_true(http_router_add(r, "GET", "/v1/accounts/{acct}/keys/{key_id}", h_b, NULL));
  match_out m;

  match(r, "GET", "/v1/tasks/abc-123", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_int_equal(m.n, 1);
  assert_string_equal(param(&m, "id"), "abc-123");
  match_free(&m);

  match(r, "GET", "/v1/accounts/a1/keys/k9", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_ptr_equal(m.fn, h_b);
  assert_int_equal(m.n, 2);
  assert_string_equal(param(&m, "acct"), "a1");
  assert_string_equal(param(&m, "key_id"), "k9");
  match_free(&m);

  /* A parameter is one non-empty segment. */
  match(r, "GET", "/v1/tasks/", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  match(r, "GET", "/v1/tasks/a/b", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  match(r, "GET", "/v1/accounts//keys/k", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  http_router_free(r);
}

static void test_suffix_params(void **state) {
  http_router *r = http_router_new();
  assert_true(http_router_add(r, "POST", "/v1beta/models/{model}:generateContent", h_a, NULL));
  assert_true(http_router_add(r, "POST", "/v1beta/models/{model}:streamGenerateContent", h_b,
                              NULL));
  match_out m;

  match(r, "POST", "/v1beta/models/gemini-2.5:generateContent", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_ptr_equal(m.fn, h_a);
  assert_string_equal(param(&m, "model"), "gemini-2.5");
  match_free(&m);

  match(r, "POST", "/v1beta/models/gemini-2.5:streamGenerateContent", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_ptr_equal(m.fn, h_b);
  assert_string_equal(param(&m, "model"), "gemini-2.5");
  match_free(&m);

  /* The value takes everything before the suffix, colons included. */
  match(r, "POST", "/v1beta/models/a:b:generateContent", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_string_equal(param(&m, "model"), "a:b");
  match_free(&m);

  match(r, "POST", "/v1beta/models/:generateContent", &m); /* empty value */
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  match(r, "POST", "/v1beta/models/gemini", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  match(r, "POST", "/v1beta/models/gemini:generateContentX", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  http_router_free(r);
}

static void test_percent_decoding(void **state) {
  http_router *r = http_router_new();
  assert_true(http_router_add(r, "GET", "/files/{name}", h_a, NULL));
  assert_true(http_router_add(r, "GET", "/m/{model}:run", h_b, NULL));
  match_out m;

  match(r, "GET", "/files/a%20b%2Bc%25d%3a", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_string_equal(param(&m, "name"), "a b+c%d:");
  match_free(&m);

  match(r, "GET", "/files/%C3%A9t%C3%A9", &m); /* UTF-8 bytes pass through */
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_string_equal(param(&m, "name"), "\xc3\xa9t\xc3\xa9");
  match_free(&m);

  /* The literal suffix is compared raw; only the value is decoded. */
  match(r, "GET", "/m/x%2Dy:run", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_string_equal(param(&m, "model"), "x-y");
  match_free(&m);
  match(r, "GET", "/m/xy%3Arun", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);

  /* A decoded '/' or NUL, or a malformed escape: no match. */
  const char *bad[] = {"/files/a%2Fb", "/files/a%2fb", "/files/a%00b", "/files/%",
                       "/files/ab%2",  "/files/%zz",   "/files/%2G"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    match(r, "GET", bad[i], &m);
    assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
    assert_int_equal(m.n, 0);
  }
  http_router_free(r);
}

static void test_order_and_no_params_wanted(void **state) {
  http_router *r = http_router_new();
  assert_true(http_router_add(r, "GET", "/v1/tasks/active", h_a, NULL));
  assert_true(http_router_add(r, "GET", "/v1/tasks/{id}", h_b, NULL));
  match_out m;
  match(r, "GET", "/v1/tasks/active", &m);
  assert_ptr_equal(m.fn, h_a); /* first added wins */
  match(r, "GET", "/v1/tasks/other", &m);
  assert_ptr_equal(m.fn, h_b);
  match_free(&m);

  /* Without out_params nothing is allocated, and the result is the same. */
  http_handler_fn fn = NULL;
  assert_int_equal(
      http_router_match(r, "GET", "/v1/tasks/x", &fn, NULL, NULL, NULL, NULL, NULL, 0),
      HTTP_ROUTE_FOUND);
  assert_ptr_equal(fn, h_b);
  http_router_free(r);
}

/* A literal route beats a parameter route on the paths it spells out,
 * whatever the order they were added in; the parameter route keeps the rest. */
static void test_literal_beats_parameter(void **state) {
  http_router *r = http_router_new();
  assert_true(http_router_add(r, "GET", "/api/t/{uid}", h_a, NULL));
  assert_true(http_router_add(r, "POST", "/api/t/create-async", h_b, NULL));
  assert_true(http_router_add(r, "GET", "/api/t/credits", h_c, NULL));
  assert_true(http_router_add(r, "POST", "/m/{model}:gen", h_a, NULL));
  assert_true(http_router_add(r, "GET", "/m/{model}", h_b, NULL));
  match_out m;
  match(r, "GET", "/api/t/create-async", &m); /* never the task "create-async" */
  assert_int_equal(m.res, HTTP_ROUTE_BAD_METHOD);
  assert_string_equal(m.allow, "POST");
  match(r, "POST", "/api/t/create-async", &m);
  assert_ptr_equal(m.fn, h_b);
  match(r, "GET", "/api/t/credits", &m);
  assert_ptr_equal(m.fn, h_c);
  match(r, "GET", "/api/t/0192f1e4-aaaa", &m);
  assert_ptr_equal(m.fn, h_a);
  assert_string_equal(m.params[0].value, "0192f1e4-aaaa");
  match_free(&m);
  match(r, "POST", "/api/t/0192f1e4-aaaa", &m);
  assert_int_equal(m.res, HTTP_ROUTE_BAD_METHOD);
  assert_string_equal(m.allow, "GET");
  /* A parameter with a literal suffix beats a bare one. */
  match(r, "GET", "/m/x:gen", &m);
  assert_int_equal(m.res, HTTP_ROUTE_BAD_METHOD);
  assert_string_equal(m.allow, "POST");
  match(r, "POST", "/m/x:gen", &m);
  assert_ptr_equal(m.fn, h_a);
  assert_string_equal(m.params[0].value, "x");
  match_free(&m);
  match(r, "GET", "/m/x:other", &m);
  assert_ptr_equal(m.fn, h_b);
  match_free(&m);
  http_router_free(r);
}

static void test_method_not_allowed(void **state) {
  http_router *r = http_router_new();
  assert_true(http_router_add(r, "GET", "/v1/items", h_a, NULL));
  assert_true(http_router_add(r, "POST", "/v1/items", h_b, NULL));
  assert_true(http_router_add(r, "GET", "/v1/{thing}", h_c, NULL)); /* same methods again */
  assert_true(http_router_add(r, "DELETE", "/v1/{thing}", h_c, NULL));
  assert_true(http_router_add(r, "PUT", "/v2/items", h_c, NULL)); /* other path: not listed */
  match_out m;

  /* /v1/items is spelled out by literal routes: those alone answer for it,
   * the {thing} routes (which would match too) do not. */
  match(r, "PATCH", "/v1/items", &m);
  assert_int_equal(m.res, HTTP_ROUTE_BAD_METHOD);
  assert_string_equal(m.allow, "GET, POST");
  assert_null(m.fn);
  assert_int_equal(m.n, 0);
  match(r, "DELETE", "/v1/items", &m);
  assert_int_equal(m.res, HTTP_ROUTE_BAD_METHOD);
  assert_string_equal(m.allow, "GET, POST");

  match(r, "POST", "/v1/other", &m);
  assert_int_equal(m.res, HTTP_ROUTE_BAD_METHOD);
  assert_string_equal(m.allow, "GET, DELETE");

  /* A small buffer keeps whole methods only. */
  char small[10];
  assert_int_equal(http_router_match(r, "PATCH", "/v1/items", NULL, NULL, NULL, NULL, NULL, small,
                                     sizeof small),
                   HTTP_ROUTE_BAD_METHOD);
  assert_string_equal(small, "GET, POST");

  /* Methods are case-sensitive. */
  match(r, "get", "/v1/items", &m);
  assert_int_equal(m.res, HTTP_ROUTE_BAD_METHOD);

  match(r, "GET", "/v3/items", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  assert_string_equal(m.allow, "");
  http_router_free(r);
}

static void test_head_falls_back_to_get(void **state) {
  http_router *r = http_router_new();
  assert_true(http_router_add(r, "POST", "/x/{id}", h_a, NULL));
  assert_true(http_router_add(r, "GET", "/x/{id}", h_b, NULL));
  assert_true(http_router_add(r, "HEAD", "/y", h_c, NULL));
  assert_true(http_router_add(r, "GET", "/y", h_a, NULL));
  assert_true(http_router_add(r, "POST", "/z", h_a, NULL));
  match_out m;

  match(r, "HEAD", "/x/42", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_ptr_equal(m.fn, h_b);
  assert_string_equal(param(&m, "id"), "42");
  match_free(&m);

  match(r, "HEAD", "/y", &m); /* an explicit HEAD route comes first */
  assert_ptr_equal(m.fn, h_c);

  match(r, "HEAD", "/z", &m);
  assert_int_equal(m.res, HTTP_ROUTE_BAD_METHOD);
  assert_string_equal(m.allow, "POST");
  http_router_free(r);
}

static void test_too_many_params(void **state) {
  http_router *r = http_router_new();
  assert_true(http_router_add(r, "GET", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", h_a, NULL));
  assert_false(http_router_add(r, "GET", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", h_a, NULL));
  match_out m;
  match(r, "GET", "/1/2/3/4/5/6/7/8", &m);
  assert_int_equal(m.res, HTTP_ROUTE_FOUND);
  assert_int_equal(m.n, HTTP_MAX_PARAMS);
  assert_string_equal(param(&m, "h"), "8");
  match_free(&m);
  /* The rejected route left nothing behind. */
  match(r, "GET", "/1/2/3/4/5/6/7/8/9", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  http_router_free(r);
}

static void test_malformed_patterns(void **state) {
  http_router *r = http_router_new();
  const char *bad[] = {
      "",          "v1/x",          "/a//b",      "/{}",        "/{id",        "/id}",
      "/x{id}",    "/{id}{other}",  "/{i d}",     "/{id}/{id}", "/{a-b}",      "/{id}:x}",
      "/a{",       "//",
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    assert_false(http_router_add(r, "GET", bad[i], h_a, NULL));
  assert_false(http_router_add(r, "", "/ok", h_a, NULL));
  assert_false(http_router_add(r, "G T", "/ok", h_a, NULL));
  assert_false(http_router_add(r, "GET", "/ok", NULL, NULL));
  assert_false(http_router_add(r, NULL, "/ok", h_a, NULL));
  assert_false(http_router_add(r, "GET", NULL, h_a, NULL));
  assert_false(http_router_add(NULL, "GET", "/ok", h_a, NULL));
  match_out m;
  match(r, "GET", "/a//b", &m);
  assert_int_equal(m.res, HTTP_ROUTE_NOT_FOUND);
  http_router_free(r);
  http_router_free(NULL);
}

static void test_guards(void **state) {
  http_router *r = http_router_new();
  int ctx = 7;
  assert_true(http_router_add_guarded(r, "POST", "/v1/tasks", g_a, h_a, &ctx));
  assert_true(http_router_add(r, "GET", "/v1/tasks/{id}", h_b, &ctx));
  assert_false(http_router_add_guarded(r, "GET", "bad", g_a, h_a, NULL));
  http_handler_fn fn = NULL;
  http_guard_fn guard = NULL;
  void *got = NULL;
  assert_int_equal(
      http_router_match(r, "POST", "/v1/tasks", &fn, &guard, &got, NULL, NULL, NULL, 0),
      HTTP_ROUTE_FOUND);
  assert_ptr_equal(fn, h_a);
  assert_ptr_equal(guard, g_a);
  assert_ptr_equal(got, &ctx);
  assert_int_equal(
      http_router_match(r, "GET", "/v1/tasks/x", &fn, &guard, &got, NULL, NULL, NULL, 0),
      HTTP_ROUTE_FOUND);
  assert_ptr_equal(fn, h_b);
  assert_null(guard); /* a route added without one has none */
  http_router_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_literals),
      cmocka_unit_test(test_params),
      cmocka_unit_test(test_suffix_params),
      cmocka_unit_test(test_percent_decoding),
      cmocka_unit_test(test_order_and_no_params_wanted),
      cmocka_unit_test(test_method_not_allowed),
      cmocka_unit_test(test_literal_beats_parameter),
      cmocka_unit_test(test_head_falls_back_to_get),
      cmocka_unit_test(test_too_many_params),
      cmocka_unit_test(test_malformed_patterns),
      cmocka_unit_test(test_guards),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
