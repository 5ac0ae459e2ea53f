/* test_config.c - defaults, file merging, environment, validation. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

static char *write_temp(const char *text) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/imgate-config-XXXXXX");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  return path;
}

static int load_text(imgate_config *c, const char *text, char *err, size_t n) {
  char *path = write_temp(text);
  int rc = config_load_file(c, path, err, n);
  unlink(path);
  return rc;
}

static void test_defaults(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_string_equal(c.listen, "127.0.0.1:8080");
  assert_string_equal(c.data_dir, "./var");
  assert_int_equal(c.retention_hours, 168);
  assert_int_equal(c.retention_orphan_min_age_s, 3600);
  assert_int_equal(c.retention_orphan_interval_ms, 3600000);
  assert_true(c.demo_account);
  assert_int_equal(config_validate(&c, err, sizeof err), 0);
}

static void test_file_merges(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(load_text(&c,
                             "{\"listen\":\"0.0.0.0:9000\",\"http\":{\"max_body_bytes\":65536},"
                             "\"sim\":{\"delay_ms\":5,\"fail_marker\":\"FAIL\"},"
                             "\"demo_account\":false}",
                             err, sizeof err),
                   0);
  assert_string_equal(c.listen, "0.0.0.0:9000");
  assert_int_equal(c.max_body_bytes, 65536);
  assert_int_equal(c.sim_delay_ms, 5);
  assert_string_equal(c.sim_fail_marker, "FAIL");
  assert_false(c.demo_account);
  assert_int_equal(c.engine_max_in_flight, 256); /* untouched keys keep defaults */
}

static void test_file_errors_name_the_key(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(load_text(&c, "{\"http\":{\"treads\":4}}", err, sizeof err), -1);
  assert_non_null(strstr(err, "http.treads"));
  assert_int_equal(load_text(&c, "{\"sim\":{\"delay_ms\":\"5\"}}", err, sizeof err), -1);
  assert_non_null(strstr(err, "sim.delay_ms"));
  assert_int_equal(load_text(&c, "{\"engine\":{\"max_in_flight\":0}}", err, sizeof err), -1);
  assert_non_null(strstr(err, "engine.max_in_flight"));
  assert_int_equal(load_text(&c, "[1,2]", err, sizeof err), -1);
  /* The orphan collector's age guard has a floor: a submit in progress must never look old. */
  assert_int_equal(load_text(&c, "{\"retention_orphan_min_age_s\":59}", err, sizeof err), -1);
  assert_non_null(strstr(err, "retention_orphan_min_age_s"));
  assert_int_equal(load_text(&c, "{\"retention_orphan_min_age_s\":60}", err, sizeof err), 0);
  assert_int_equal(c.retention_orphan_min_age_s, 60);
  assert_int_equal(load_text(&c, "{\"listen\":", err, sizeof err), -1);
  assert_int_equal(load_text(&c, "{\"listen\":\"a:1\",\"listen\":\"b:2\"}", err, sizeof err), -1);
}

/* The same loader from memory: only len bytes are read, and messages name "config". */
static void test_json_text(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  const char text[] = "{\"listen\":\"0.0.0.0:9000\",\"sim\":{\"delay_ms\":7}}garbage";
  assert_int_equal(config_load_json(&c, text, strlen(text) - strlen("garbage"), err, sizeof err),
                   0);
  assert_string_equal(c.listen, "0.0.0.0:9000");
  assert_int_equal(c.sim_delay_ms, 7);
  assert_int_equal(config_load_json(&c, text, strlen(text), err, sizeof err), -1);
  assert_true(strncmp(err, "config:1:", 9) == 0);
  assert_int_equal(config_load_json(&c, "[1]", 3, err, sizeof err), -1);
  assert_string_equal(err, "config: the configuration must be a JSON object");
  assert_int_equal(config_load_json(&c, "{\"sim\":{\"delay_ms\":-1}}", 23, err, sizeof err), -1);
  assert_non_null(strstr(err, "sim.delay_ms"));
  assert_int_equal(c.sim_delay_ms, 7);
}

static void test_env_overrides(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  setenv("IMGATE_LISTEN", "127.0.0.1:0", 1);
  setenv("IMGATE_SIM_DELAY_MS", "42", 1);
  assert_int_equal(config_load_env(&c, err, sizeof err), 0);
  assert_string_equal(c.listen, "127.0.0.1:0");
  assert_int_equal(c.sim_delay_ms, 42);
  setenv("IMGATE_SIM_DELAY_MS", "42ms", 1);
  assert_int_equal(config_load_env(&c, err, sizeof err), -1);
  assert_non_null(strstr(err, "IMGATE_SIM_DELAY_MS"));
  unsetenv("IMGATE_LISTEN");
  unsetenv("IMGATE_SIM_DELAY_MS");
}

static void test_split_listen(void **state) {
  (void)state;
  char host[64];
  int port;
  assert_int_equal(config_split_listen("127.0.0.1:8080", host, sizeof host, &port), 0);
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(port, 8080);
  assert_int_equal(config_split_listen("[::1]:0", host, sizeof host, &port), 0);
  assert_string_equal(host, "::1");
  assert_int_equal(port, 0);
  assert_int_equal(config_split_listen(":9000", host, sizeof host, &port), 0);
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(config_split_listen("localhost", host, sizeof host, &port), -1);
  assert_int_equal(config_split_listen("h:70000", host, sizeof host, &port), -1);
  assert_int_equal(config_split_listen("h:", host, sizeof host, &port), -1);
  assert_int_equal(config_split_listen("[::1]8080", host, sizeof host, &port), -1);
}

static void test_validate(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  snprintf(c.public_url, sizeof c.public_url, "ftp://x");
  assert_int_equal(config_validate(&c, err, sizeof err), -1);
  config_defaults(&c);
  snprintf(c.log_level, sizeof c.log_level, "loud");
  assert_int_equal(config_validate(&c, err, sizeof err), -1);
  config_defaults(&c);
  assert_string_equal(c.sqlite_synchronous, "full");
  assert_int_equal(load_text(&c, "{\"store\": {\"sqlite_synchronous\": \"normal\"}}", err,
                             sizeof err), 0);
  assert_string_equal(c.sqlite_synchronous, "normal");
  assert_int_equal(config_validate(&c, err, sizeof err), 0);
  assert_int_equal(load_text(&c, "{\"store\": {\"sqlite_synchronous\": \"off\"}}", err,
                             sizeof err), 0);
  assert_int_equal(config_validate(&c, err, sizeof err), -1);
  assert_non_null(strstr(err, "store.sqlite_synchronous"));
  assert_int_equal(load_text(&c, "{\"fetch\": {\"allow_http\": true}}", err, sizeof err), 0);
  assert_true(c.fetch_allow_http);
}

static void test_http_limits(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(c.max_connections, 16384); /* 10,000 pollers and room */
  assert_int_equal(c.max_connections_per_ip, 256);
  assert_int_equal(c.http_header_timeout_ms, 10000);
  assert_int_equal(c.http_body_timeout_ms, 10000);
  assert_int_equal(c.http_body_min_rate, 4096);
  assert_int_equal(c.http_send_timeout_ms, 30000);
  assert_int_equal(c.http_send_min_rate, 4096);
  assert_int_equal(c.http_max_header_bytes, 32768);
  assert_int_equal(c.max_buffered_body_bytes, 512u << 20);
  assert_int_equal(c.http_shutdown_timeout_ms, 10000);
  assert_int_equal(load_text(&c,
                             "{\"http\":{\"max_connections\":20000,"
                             "\"max_connections_per_ip\":64,"
                             "\"max_buffered_body_bytes\":1073741824,"
                             "\"shutdown_timeout_ms\":0}}",
                             err, sizeof err),
                   0);
  assert_int_equal(c.max_connections, 20000);
  assert_int_equal(c.max_connections_per_ip, 64);
  assert_int_equal(c.max_buffered_body_bytes, 1u << 30);
  assert_int_equal(c.http_shutdown_timeout_ms, 0);
  assert_int_equal(config_validate(&c, err, sizeof err), 0);

  assert_int_equal(load_text(&c, "{\"http\":{\"max_connections\":0}}", err, sizeof err), -1);
  assert_non_null(strstr(err, "http.max_connections"));
  assert_int_equal(
      load_text(&c, "{\"http\":{\"max_connections_per_ip\":-1}}", err, sizeof err), -1);
  assert_non_null(strstr(err, "http.max_connections_per_ip"));
  assert_int_equal(
      load_text(&c, "{\"http\":{\"max_buffered_body_bytes\":1000}}", err, sizeof err), -1);
  assert_non_null(strstr(err, "http.max_buffered_body_bytes"));
  assert_int_equal(
      load_text(&c, "{\"http\":{\"shutdown_timeout_ms\":-5}}", err, sizeof err), -1);
  assert_non_null(strstr(err, "http.shutdown_timeout_ms"));

  /* The deadlines of a slow client, and the size of a request's head. */
  assert_int_equal(load_text(&c,
                             "{\"http\":{\"header_timeout_ms\":2500,\"body_timeout_ms\":3000,"
                             "\"body_min_rate\":100,\"send_timeout_ms\":4000,"
                             "\"send_min_rate\":200,\"max_header_bytes\":65536}}",
                             err, sizeof err),
                   0);
  assert_int_equal(c.http_header_timeout_ms, 2500);
  assert_int_equal(c.http_body_timeout_ms, 3000);
  assert_int_equal(c.http_body_min_rate, 100);
  assert_int_equal(c.http_send_timeout_ms, 4000);
  assert_int_equal(c.http_send_min_rate, 200);
  assert_int_equal(c.http_max_header_bytes, 65536);
  static const char *const refused[] = {
      "{\"http\":{\"header_timeout_ms\":0}}", "{\"http\":{\"body_timeout_ms\":99}}",
      "{\"http\":{\"body_min_rate\":0}}",     "{\"http\":{\"send_timeout_ms\":700000}}",
      "{\"http\":{\"send_min_rate\":-1}}",    "{\"http\":{\"max_header_bytes\":4096}}",
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    assert_int_equal(load_text(&c, refused[i], err, sizeof err), -1);

  /* A budget smaller than one body at the limit could never let it in. */
  config_defaults(&c);
  assert_int_equal(load_text(&c, "{\"http\":{\"max_buffered_body_bytes\":16777216}}", err,
                             sizeof err),
                   0);
  assert_int_equal(config_validate(&c, err, sizeof err), -1);
  assert_non_null(strstr(err, "http.max_buffered_body_bytes"));
}

static void test_billing_keys(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(c.signup_bonus_micros, 1000000); /* $1.00 */
  assert_int_equal(c.max_keys_per_account, 5);
  assert_int_equal(c.default_max_concurrency, 0);    /* unlimited */
  assert_int_equal(c.default_qps_per_key, 0);        /* unlimited */
  assert_int_equal(load_text(&c,
                             "{\"billing\":{\"signup_bonus_micros\":1000000000000,"
                             "\"max_keys_per_account\":1000,\"default_max_concurrency\":1,"
                             "\"default_qps_per_key\":100}}",
                             err, sizeof err),
                   0);
  assert_true(c.signup_bonus_micros == 1000000000000LL); /* beyond int: stored as int64 */
  assert_int_equal(c.max_keys_per_account, 1000);
  assert_int_equal(c.default_max_concurrency, 1);
  assert_int_equal(c.default_qps_per_key, 100);
  assert_int_equal(load_text(&c, "{\"billing\":{\"signup_bonus_micros\":0}}", err, sizeof err),
                   0);
  assert_int_equal(c.signup_bonus_micros, 0);
  assert_int_equal(config_validate(&c, err, sizeof err), 0);

  static const char *const refused[][2] = {
      {"{\"billing\":{\"signup_bonus_micros\":-1}}", "billing.signup_bonus_micros"},
      {"{\"billing\":{\"signup_bonus_micros\":1000000000001}}", "billing.signup_bonus_micros"},
      {"{\"billing\":{\"signup_bonus_micros\":1.5}}", "billing.signup_bonus_micros"},
      {"{\"billing\":{\"max_keys_per_account\":0}}", "billing.max_keys_per_account"},
      {"{\"billing\":{\"max_keys_per_account\":1001}}", "billing.max_keys_per_account"},
      {"{\"billing\":{\"default_max_concurrency\":-1}}", "billing.default_max_concurrency"},
      {"{\"billing\":{\"default_max_concurrency\":1000001}}",
       "billing.default_max_concurrency"},
      {"{\"billing\":{\"default_qps_per_key\":\"10\"}}", "billing.default_qps_per_key"},
      {"{\"billing\":{\"default_qps_per_key\":1000001}}", "billing.default_qps_per_key"},
      {"{\"billing\":{\"bonus\":1}}", "billing.bonus"},
      {"{\"billing\":5}", "\"billing\" must be an object"},
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    config_defaults(&c);
    assert_int_equal(load_text(&c, refused[i][0], err, sizeof err), -1);
    if (!strstr(err, refused[i][1])) fail_msg("%s: error \"%s\"", refused[i][0], err);
  }
}

static void test_webhook_keys(void **state) {
  (void)state;
  imgate_config c;
  char err[256];
  config_defaults(&c);
  assert_int_equal(c.webhook_timeout_ms, 10000);
  assert_int_equal(c.webhook_connect_timeout_ms, 5000);
  static const int spec[] = {0, 5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000};
  assert_int_equal(c.n_webhook_retry_schedule, 8);
  assert_memory_equal(c.webhook_retry_schedule_ms, spec, sizeof spec);
  assert_int_equal(c.webhook_rotation_window_s, 86400);
  assert_false(c.webhook_allow_private_networks);
  assert_false(c.webhook_allow_http);
  assert_int_equal(c.webhook_max_in_flight, 1024);

  assert_int_equal(load_text(&c,
                             "{\"webhooks\":{\"timeout_ms\":300,\"connect_timeout_ms\":200,"
                             "\"retry_schedule_ms\":[0,50,100],\"rotation_window_s\":0,"
                             "\"allow_private_networks\":true,\"allow_http\":true,"
                             "\"max_in_flight\":8}}",
                             err, sizeof err),
                   0);
  assert_int_equal(c.webhook_timeout_ms, 300);
  assert_int_equal(c.webhook_connect_timeout_ms, 200);
  assert_int_equal(c.n_webhook_retry_schedule, 3);
  assert_int_equal(c.webhook_retry_schedule_ms[0], 0);
  assert_int_equal(c.webhook_retry_schedule_ms[1], 50);
  assert_int_equal(c.webhook_retry_schedule_ms[2], 100);
  assert_int_equal(c.webhook_rotation_window_s, 0);
  assert_true(c.webhook_allow_private_networks);
  assert_true(c.webhook_allow_http);
  assert_int_equal(c.webhook_max_in_flight, 8);
  assert_false(c.allow_private_networks); /* the reference-image switches are separate */
  assert_false(c.fetch_allow_http);
  assert_int_equal(config_validate(&c, err, sizeof err), 0);

  /* A single attempt is a schedule too; sixteen is the most. */
  assert_int_equal(load_text(&c, "{\"webhooks\":{\"retry_schedule_ms\":[0]}}", err, sizeof err),
                   0);
  assert_int_equal(c.n_webhook_retry_schedule, 1);
  assert_int_equal(
      load_text(&c, "{\"webhooks\":{\"retry_schedule_ms\":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}}",
                err, sizeof err),
      0);
  assert_int_equal(c.n_webhook_retry_schedule, 16);
  assert_int_equal(c.webhook_retry_schedule_ms[15], 15);

  static const char *const refused[][2] = {
      {"{\"webhooks\":{\"timeout_ms\":99}}", "webhooks.timeout_ms"},
      {"{\"webhooks\":{\"timeout_ms\":300001}}", "webhooks.timeout_ms"},
      {"{\"webhooks\":{\"connect_timeout_ms\":0}}", "webhooks.connect_timeout_ms"},
      {"{\"webhooks\":{\"rotation_window_s\":-1}}", "webhooks.rotation_window_s"},
      {"{\"webhooks\":{\"rotation_window_s\":2592001}}", "webhooks.rotation_window_s"},
      {"{\"webhooks\":{\"max_in_flight\":0}}", "webhooks.max_in_flight"},
      {"{\"webhooks\":{\"allow_http\":1}}", "webhooks.allow_http"},
      {"{\"webhooks\":{\"retry_schedule_ms\":[]}}", "webhooks.retry_schedule_ms"},
      {"{\"webhooks\":{\"retry_schedule_ms\":5000}}", "webhooks.retry_schedule_ms"},
      {"{\"webhooks\":{\"retry_schedule_ms\":[5000]}}", "webhooks.retry_schedule_ms[0] must be 0"},
      {"{\"webhooks\":{\"retry_schedule_ms\":[0,-1]}}", "webhooks.retry_schedule_ms[1]"},
      {"{\"webhooks\":{\"retry_schedule_ms\":[0,604800001]}}", "webhooks.retry_schedule_ms[1]"},
      {"{\"webhooks\":{\"retry_schedule_ms\":[0,\"5s\"]}}", "webhooks.retry_schedule_ms[1]"},
      {"{\"webhooks\":{\"retry_schedule_ms\":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}}",
       "webhooks.retry_schedule_ms"},
      {"{\"webhooks\":{\"secret\":\"x\"}}", "webhooks.secret"},
      {"{\"webhooks\":[]}", "\"webhooks\" must be an object"},
  };
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    config_defaults(&c);
    assert_int_equal(load_text(&c, refused[i][0], err, sizeof err), -1);
    if (!strstr(err, refused[i][1])) fail_msg("%s: error \"%s\"", refused[i][0], err);
    /* A refused list leaves the schedule as it was. */
    assert_int_equal(c.n_webhook_retry_schedule, 8);
    assert_memory_equal(c.webhook_retry_schedule_ms, spec, sizeof spec);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults),       cmocka_unit_test(test_file_merges),
      cmocka_unit_test(test_file_errors_name_the_key), cmocka_unit_test(test_json_text),
      cmocka_unit_test(test_env_overrides),
      cmocka_unit_test(test_split_listen),   cmocka_unit_test(test_validate),
      cmocka_unit_test(test_http_limits),    cmocka_unit_test(test_billing_keys),
      cmocka_unit_test(test_webhook_keys),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
