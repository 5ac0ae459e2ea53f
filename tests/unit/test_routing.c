/* test_routing.c - route choice, health and circuit breakers (time is injected). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "upstream/router.h"

static void noop_destroy(provider *p) { free(p); }
static int never_start(provider *p, const provider_request *r, provider_done_fn d, void *c) {
  (void)p, (void)r, (void)d, (void)c;
  return -1;
}
/* No calls, so none to cancel. */
static const provider_ops inert_ops = {"inert", never_start, noop_destroy, NULL};

static provider *inert(const char *name) {
  provider *p = calloc(1, sizeof *p);
  p->ops = &inert_ops;
  snprintf(p->name, sizeof p->name, "%s", name);
  return p;
}

static provider_outcome ok_outcome(void) { return (provider_outcome){.status = PROVIDER_OK}; }
static provider_outcome fail_outcome(provider_error_class c, int http) {
  return (provider_outcome){.status = PROVIDER_FAILED, .retryable = true, .error_class = c,
                            .http_status = http};
}

static router *two_routes(int wa, int wb, int cap_b) {
  router_config cfg = {.breaker_failures = 5, .breaker_open_ms = 1000};
  router *r = router_create(&cfg);
  assert_int_equal(router_add_provider(r, inert("a"), 0), 0);
  assert_int_equal(router_add_provider(r, inert("b"), cap_b), 0);
  provider *dup = inert("a");
  assert_int_equal(router_add_provider(r, dup, 0), -1); /* names are unique */
  dup->ops->destroy(dup); /* refused: the caller still owns it */
  assert_int_equal(router_add_route(r, "m", "a", "up-a", wa), 0);
  assert_int_equal(router_add_route(r, "m", "b", "up-b", wb), 0);
  assert_int_equal(router_add_route(r, "m", "nope", "x", 1), -1);
  return r;
}

static const char *name_of(router_route *rt) { return router_route_provider(rt)->name; }

static void test_weights(void **state) {
  (void)state;
  router *r = two_routes(3, 1, 0);
  int a = 0;
  provider_outcome ok = ok_outcome();
  for (int i = 0; i < 4000; i++) {
    router_route *rt = router_pick(r, "m", NULL, 0, 0, NULL);
    assert_non_null(rt);
    a += strcmp(name_of(rt), "a") == 0;
    router_report(r, rt, &ok, 10, 0);
  }
  assert_in_range(a, 2700, 3300); /* 3:1 -> 3000 expected */
  assert_true(router_serves(r, "m"));
  assert_false(router_serves(r, "other"));
  int64_t wait = 0;
  assert_null(router_pick(r, "other", NULL, 0, 0, &wait));
  router_destroy(r);
}

static router_route *route_other_than(router *r, const char *name, int64_t now) {
  /* The route that is not name: avoiding it makes a pick land on name while usable. */
  router_route *other = NULL;
  for (int i = 0; i < 100 && !other; i++) {
    router_route *rt = router_pick(r, "m", NULL, 0, now, NULL);
    provider_outcome ok = ok_outcome();
    if (strcmp(name_of(rt), name) != 0) other = rt;
    router_report(r, rt, &ok, 1, now);
  }
  assert_non_null(other);
  return other;
}

static const char *state_of(router *r, int idx, int64_t now) {
  static char state[16];
  char *json = router_health_json(r, now);
  json_t *doc = json_loads(json, 0, NULL);
  json_t *rt = json_array_get(json_object_get(doc, "routes"), (size_t)idx);
  snprintf(state, sizeof state, "%s", json_string_value(json_object_get(rt, "state")));
  json_decref(doc);
  free(json);
  return state;
}

static void test_failing_route_loses_traffic_and_breaker_cycle(void **state) {
  (void)state;
  router *r = two_routes(1, 1, 0);
  provider_outcome ok = ok_outcome(), bad = fail_outcome(PROVIDER_ERR_SERVER, 503);
  int64_t now = 1;
  /* Mixed traffic: a answers 503 to everything and quickly loses its share. */
  int a_late = 0;
  for (int i = 0; i < 200; i++) {
    router_route *rt = router_pick(r, "m", NULL, 0, now, NULL);
    bool is_a = strcmp(name_of(rt), "a") == 0;
    if (i >= 100) a_late += is_a;
    router_report(r, rt, is_a ? &bad : &ok, 5, now);
  }
  assert_true(a_late <= 10);

  /* Force a until its breaker opens: avoiding b lands the pick on a. */
  router_route *b = route_other_than(r, "a", now);
  /* One call to a stays out across the opening; it answers late, below. */
  router_route *stale = router_pick(r, "m", &b, 1, now, NULL);
  assert_string_equal(name_of(stale), "a");
  int64_t stale_started = now;
  now += 10;
  for (int i = 0; i < 5 && strcmp(state_of(r, 0, now), "open") != 0; i++) {
    router_route *rt = router_pick(r, "m", &b, 1, now, NULL);
    assert_string_equal(name_of(rt), "a");
    router_report(r, rt, &bad, 5, now);
  }
  assert_string_equal(state_of(r, 0, now), "open");
  /* Open: even a pick that avoids b gets b, never a. */
  for (int i = 0; i < 20; i++) {
    router_route *rt = router_pick(r, "m", &b, 1, now + 999, NULL);
    assert_string_equal(name_of(rt), "b");
    router_report(r, rt, &ok, 5, now + 999);
  }
  /* Time passes: half-open, exactly one probe at a time goes to a. */
  now += 1000;
  assert_string_equal(state_of(r, 0, now), "half_open");
  router_route *probe = router_pick(r, "m", &b, 1, now, NULL);
  assert_string_equal(name_of(probe), "a");
  for (int i = 0; i < 20; i++) {
    router_route *rt = router_pick(r, "m", &b, 1, now, NULL);
    assert_string_equal(name_of(rt), "b");
    router_report(r, rt, &ok, 5, now);
  }
  /* A late answer from a call started before the breaker opened (its
   * latency reaches back past the probe) is not the probe: it neither closes
   * the breaker nor lets a second probe out. */
  router_report(r, stale, &ok, now - stale_started, now);
  assert_string_equal(state_of(r, 0, now), "half_open");
  assert_string_equal(name_of(router_pick(r, "m", &b, 1, now, NULL)), "b");
  router_report(r, probe, &bad, 5, now); /* failed probe: open again */
  assert_string_equal(state_of(r, 0, now), "open");

  /* Recovery: the next probe succeeds and closes the breaker... */
  now += 1000;
  probe = router_pick(r, "m", &b, 1, now, NULL);
  assert_string_equal(name_of(probe), "a");
  router_report(r, probe, &ok, 5, now);
  assert_string_equal(state_of(r, 0, now), "closed");
  /* ...and once the failures have faded, a has its full share back. */
  now += 30000;
  int a_now = 0;
  for (int i = 0; i < 400; i++) {
    router_route *rt = router_pick(r, "m", NULL, 0, now, NULL);
    a_now += strcmp(name_of(rt), "a") == 0;
    router_report(r, rt, &ok, 5, now);
  }
  assert_in_range(a_now, 140, 260);
  router_destroy(r);
}

static void test_avoid_prefers_untried(void **state) {
  (void)state;
  router *r = two_routes(100, 1, 0);
  provider_outcome ok = ok_outcome();
  for (int i = 0; i < 50; i++) {
    router_route *first = router_pick(r, "m", NULL, 0, 0, NULL);
    router_route *avoid[1] = {first};
    router_route *second = router_pick(r, "m", avoid, 1, 0, NULL);
    assert_ptr_not_equal(first, second);
    router_report(r, first, &ok, 1, 0);
    router_report(r, second, &ok, 1, 0);
  }
  /* With every route tried, a tried one is still better than none. */
  router_route *a = router_pick(r, "m", NULL, 0, 0, NULL);
  router_route *b = router_pick(r, "m", (router_route *[]){a}, 1, 0, NULL);
  router_route *c = router_pick(r, "m", (router_route *[]){a, b}, 2, 0, NULL);
  assert_non_null(c);
  router_report(r, a, &ok, 1, 0);
  router_report(r, b, &ok, 1, 0);
  router_report(r, c, &ok, 1, 0);
  router_destroy(r);
}

static void test_concurrency_cap(void **state) {
  (void)state;
  router_config cfg = {0};
  router *r = router_create(&cfg);
  assert_int_equal(router_add_provider(r, inert("only"), 2), 0);
  assert_int_equal(router_add_route(r, "m", "only", "u", 1), 0);
  router_route *x = router_pick(r, "m", NULL, 0, 0, NULL);
  router_route *y = router_pick(r, "m", NULL, 0, 0, NULL);
  assert_non_null(x);
  assert_non_null(y);
  int64_t wait = 0;
  assert_null(router_pick(r, "m", NULL, 0, 0, &wait));
  assert_true(wait >= 1);
  provider_outcome ok = ok_outcome();
  router_report(r, x, &ok, 1, 0);
  assert_non_null(router_pick(r, "m", NULL, 0, 0, NULL));
  router_destroy(r);
}

static void test_rate_limit_cooldown(void **state) {
  (void)state;
  router *r = two_routes(1, 1, 0);
  provider_outcome limited = fail_outcome(PROVIDER_ERR_RATE_LIMITED, 429);
  limited.retry_after_ms = 3000;
  router_route *rt;
  do {
    rt = router_pick(r, "m", NULL, 0, 0, NULL);
    if (strcmp(name_of(rt), "a") != 0) {
      provider_outcome ok = ok_outcome();
      router_report(r, rt, &ok, 1, 0);
    }
  } while (strcmp(name_of(rt), "a") != 0);
  router_report(r, rt, &limited, 1, 0);
  provider_outcome ok = ok_outcome();
  for (int i = 0; i < 30; i++) { /* a rests for the 3 s it asked for */
    router_route *p = router_pick(r, "m", NULL, 0, 2999, NULL);
    assert_string_equal(name_of(p), "b");
    router_report(r, p, &ok, 1, 2999);
  }
  /* Rested: a may be picked again (its one failure still weighs a little). */
  router_route *again = router_pick(r, "m", (router_route *[]){route_other_than(r, "a", 3000)}, 1, 3000,
                                    NULL);
  assert_string_equal(name_of(again), "a");
  router_report(r, again, &ok, 1, 3000);
  router_destroy(r);
}

static void test_request_errors_do_not_hurt(void **state) {
  (void)state;
  router *r = two_routes(1, 1, 0);
  provider_outcome mod = {.status = PROVIDER_MODERATED, .error_class = PROVIDER_ERR_MODERATED};
  provider_outcome bad = fail_outcome(PROVIDER_ERR_BAD_REQUEST, 400);
  bad.retryable = false;
  for (int i = 0; i < 100; i++) {
    router_route *rt = router_pick(r, "m", NULL, 0, 0, NULL);
    router_report(r, rt, i % 2 ? &mod : &bad, 1, 0);
  }
  char *json = router_health_json(r, 0);
  json_t *doc = json_loads(json, 0, NULL);
  for (int i = 0; i < 2; i++) {
    json_t *rt = json_array_get(json_object_get(doc, "routes"), (size_t)i);
    assert_string_equal(json_string_value(json_object_get(rt, "state")), "closed");
    assert_true(json_real_value(json_object_get(rt, "success_rate")) == 1.0);
  }
  json_decref(doc);
  free(json);
  buf m = BUF_INIT;
  router_metrics(r, &m, 0);
  assert_non_null(strstr(m.data, "imgate_route_outcomes_total{model=\"m\",provider=\"a\",class=\"moderated\"}"));
  assert_non_null(strstr(m.data, "imgate_route_breaker_open{model=\"m\",provider=\"b\"} 0"));
  buf_free(&m);
  router_destroy(r);
}

/* A call we stopped says nothing about the route: it neither breaks nor
 * extends a failure streak, never moves the success rate, and a canceled
 * probe leaves the breaker half-open for the next probe. */
static void test_canceled_counts_neither_way(void **state) {
  (void)state;
  assert_string_equal(provider_error_class_name(PROVIDER_ERR_CANCELED), "canceled");
  assert_false(provider_error_class_hurts_route(PROVIDER_ERR_CANCELED));
  router *r = two_routes(1, 1, 0);
  provider_outcome bad = fail_outcome(PROVIDER_ERR_SERVER, 503);
  provider_outcome canceled = fail_outcome(PROVIDER_ERR_CANCELED, 0);
  canceled.retryable = false;
  int64_t now = 1;
  router_route *b = route_other_than(r, "a", now);
  provider_outcome ok = ok_outcome();
  router_report(r, router_pick(r, "m", &b, 1, now, NULL), &ok, 5, now); /* a success rate above 0 */

  /* Four failures on a (the breaker opens at five), a canceled call, one more failure. */
  for (int i = 0; i < 4; i++) router_report(r, router_pick(r, "m", &b, 1, now, NULL), &bad, 5, now);
  router_route *rt = router_pick(r, "m", &b, 1, now, NULL);
  assert_string_equal(name_of(rt), "a");
  router_report(r, rt, &canceled, 5, now);
  assert_string_equal(state_of(r, 0, now), "closed");
  router_report(r, router_pick(r, "m", &b, 1, now, NULL), &bad, 5, now);
  assert_string_equal(state_of(r, 0, now), "open"); /* the streak went on across the cancel */

  /* Half-open: a canceled probe frees the slot, the breaker stays half-open. */
  now += 1000;
  router_route *probe = router_pick(r, "m", &b, 1, now, NULL);
  assert_string_equal(name_of(probe), "a");
  /* One probe at a time. */
  assert_string_equal(name_of(router_pick(r, "m", &b, 1, now, NULL)), "b");
  router_report(r, probe, &canceled, 5, now);
  assert_string_equal(state_of(r, 0, now), "half_open");
  probe = router_pick(r, "m", &b, 1, now, NULL);
  assert_string_equal(name_of(probe), "a"); /* the next probe may go */

  /* Counted as canceled, never in the success rate: five failures in the window. */
  char *json = router_health_json(r, now);
  json_t *doc = json_loads(json, 0, NULL);
  json_t *a = json_array_get(json_object_get(doc, "routes"), 0);
  json_t *errors = json_object_get(a, "errors");
  assert_int_equal(json_integer_value(json_object_get(errors, "canceled")), 2);
  assert_int_equal(json_integer_value(json_object_get(a, "in_flight")), 1); /* the new probe */
  double rate = json_real_value(json_object_get(a, "success_rate"));
  json_decref(doc);
  free(json);
  router_report(r, probe, &bad, 5, now);
  json = router_health_json(r, now);
  doc = json_loads(json, 0, NULL);
  a = json_array_get(json_object_get(doc, "routes"), 0);
  /* A real failure moves it. */
  assert_true(json_real_value(json_object_get(a, "success_rate")) < rate);
  assert_string_equal(json_string_value(json_object_get(a, "state")), "open");
  json_decref(doc);
  free(json);
  buf m = BUF_INIT;
  router_metrics(r, &m, now);
  assert_non_null(strstr(
      m.data, "imgate_route_outcomes_total{model=\"m\",provider=\"a\",class=\"canceled\"} 2"));
  buf_free(&m);
  router_destroy(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_weights),
      cmocka_unit_test(test_failing_route_loses_traffic_and_breaker_cycle),
      cmocka_unit_test(test_avoid_prefers_untried),
      cmocka_unit_test(test_concurrency_cap),
      cmocka_unit_test(test_rate_limit_cooldown),
      cmocka_unit_test(test_request_errors_do_not_hurt),
      cmocka_unit_test(test_canceled_counts_neither_way),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
