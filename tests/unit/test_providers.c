/* test_providers.c - the provider kinds found by name: the table, the
 * instances it makes, and configuration refusing a kind it does not hold. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "config.h"
#include "upstream/providers.h"

static void test_every_kind_is_found(void **state) {
  (void)state;
  const char *names[] = {"sim", "gemini", "openai"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    const provider_kind *k = provider_kind_find(names[i]);
    assert_non_null(k);
    assert_string_equal(k->kind, names[i]);
    assert_non_null(k->create);
  }
  assert_null(provider_kind_find("Gemini")); /* exact names only */
  assert_null(provider_kind_find("dalle"));
  assert_null(provider_kind_find(""));
  assert_null(provider_kind_find(NULL));
  char all[64];
  provider_kind_names(all, sizeof all);
  assert_string_equal(all, "sim, gemini, openai");
  char cut[8];
  provider_kind_names(cut, sizeof cut); /* cut short, still a string */
  assert_true(strlen(cut) < sizeof cut);
}

/* The simulated kind makes an instance named as configured; an unknown
 * kind makes nothing. */
static void test_create_by_kind(void **state) {
  (void)state;
  provider_env env = {.sim = {.delay_ms = 0, .render_threads = 1}};
  provider_instance_config pc = {.name = "drawing-board", .kind = "sim"};
  provider *p = provider_create(&pc, &env);
  assert_non_null(p);
  assert_string_equal(p->name, "drawing-board");
  assert_string_equal(p->ops->kind, "sim");
  p->ops->destroy(p);
  pc.kind = "dalle";
  assert_null(provider_create(&pc, &env));
}

/* Configuration takes the kinds the table holds, and names them when it
 * refuses another. */
static void test_config_refuses_an_unknown_kind(void **state) {
  (void)state;
  imgate_config c;
  char err[512];
  config_defaults(&c);
  const char *bad = "{\"providers\": [{\"name\": \"x\", \"kind\": \"dalle\"}]}";
  assert_int_equal(config_load_json(&c, bad, strlen(bad), err, sizeof err), -1);
  assert_non_null(strstr(err, "one of: sim, gemini, openai"));
  config_defaults(&c);
  const char *good = "{\"providers\": [{\"name\": \"x\", \"kind\": \"sim\"}]}";
  assert_int_equal(config_load_json(&c, good, strlen(good), err, sizeof err), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_kind_is_found),
      cmocka_unit_test(test_create_by_kind),
      cmocka_unit_test(test_config_refuses_an_unknown_kind),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
