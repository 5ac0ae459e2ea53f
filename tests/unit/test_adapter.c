/* test_adapter.c - helpers shared by the provider adapters: message cleaning,
 * image decoding, Retry-After and Duration parsing, transport failures and
 * instance configuration. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "upstream/adapter.h"
#include "upstream/simpng.h"
#include "util/base64.h"

static char loop_storage;
#define LOOP ((curlloop *)(void *)&loop_storage)

/* jansson accepts only valid UTF-8: a cheap validator. */
static bool valid_utf8(const char *s) {
  json_t *j = json_string(s);
  json_decref(j);
  return j != NULL;
}

static void test_clean_text_cuts_on_character_boundary(void **state) {
  (void)state;
  char out[32];
  /* "aé" is 61 C3 A9: a 2-byte limit would split the é. */
  assert_string_equal(adapter_clean_text(out, sizeof out, "a\xc3\xa9z", 2), "a");
  assert_string_equal(adapter_clean_text(out, sizeof out, "a\xc3\xa9z", 3), "a\xc3\xa9");
  /* A 4-byte emoji cut anywhere inside disappears whole. */
  const char *emoji = "ok\xf0\x9f\x98\x80!";
  for (size_t lim = 3; lim <= 5; lim++) {
    adapter_clean_text(out, sizeof out, emoji, lim);
    assert_string_equal(out, "ok");
  }
  adapter_clean_text(out, sizeof out, emoji, 6);
  assert_string_equal(out, "ok\xf0\x9f\x98\x80");
  /* The destination size limits too. */
  char small[4];
  assert_string_equal(adapter_clean_text(small, sizeof small, "ab\xc3\xa9", 100), "ab");
}

static void test_clean_text_controls_and_null(void **state) {
  (void)state;
  char out[32];
  assert_string_equal(adapter_clean_text(out, sizeof out, "a\nb\r\tc\x7f", 100), "a b  c ");
  assert_string_equal(adapter_clean_text(out, sizeof out, NULL, 100), "");
}

static void test_error_outcomes(void **state) {
  (void)state;
  provider_outcome *o =
      adapter_error(400, PROVIDER_ERR_MODERATED, true, "content_moderated", "blocked %d", 7);
  assert_non_null(o);
  assert_int_equal(o->status, PROVIDER_MODERATED);
  assert_false(o->retryable); /* a moderated outcome is never retryable */
  assert_int_equal(o->error_class, PROVIDER_ERR_MODERATED);
  assert_int_equal(o->http_status, 400);
  assert_string_equal(o->error_code, "content_moderated");
  assert_string_equal(o->error_message, "blocked 7");
  provider_outcome_free(o);

  /* A long message of 2-byte characters is cut to fit and stays valid UTF-8. */
  char longmsg[1200] = "";
  for (int i = 0; i < 500; i++) strcat(longmsg, "\xc3\xa9");
  o = adapter_error(503, PROVIDER_ERR_SERVER, true, "upstream_unavailable", "x%s", longmsg);
  assert_int_equal(o->status, PROVIDER_FAILED);
  assert_true(o->retryable);
  assert_true(strlen(o->error_message) <= sizeof o->error_message - 1);
  assert_true(strlen(o->error_message) >= sizeof o->error_message - 3);
  assert_true(valid_utf8(o->error_message));
  provider_outcome_free(o);

  o = adapter_spare_outcome();
  assert_int_equal(o->error_class, PROVIDER_ERR_INTERNAL);
  assert_int_equal(o->status, PROVIDER_FAILED);
  assert_string_equal(o->error_code, "internal_error");
  provider_outcome_free(o);
}

static void test_decode_image(void **state) {
  (void)state;
  uint8_t *png = NULL;
  size_t len = 0;
  assert_true(simpng_render("decode", 40, 30, &png, &len));
  char *b64 = base64_encode(png, len);
  provider_image img;
  const char *why = NULL;
  assert_int_equal(adapter_decode_image(b64, strlen(b64), &img, &why), 0);
  assert_string_equal(img.mime, "image/png");
  assert_int_equal(img.width, 40);
  assert_int_equal(img.height, 30);
  assert_int_equal(img.len, len);
  assert_memory_equal(img.data, png, len);
  free(img.data);

  /* A data: URL wrapper is tolerated. */
  char *url = NULL;
  assert_true(asprintf(&url, "data:image/png;base64,%s", b64) > 0);
  assert_int_equal(adapter_decode_image(url, strlen(url), &img, &why), 0);
  assert_int_equal(img.width, 40);
  free(img.data);
  free(url);

  /* Not base64. */
  assert_int_equal(adapter_decode_image("!!!not base64", 13, &img, &why), -1);
  assert_non_null(strstr(why, "base64"));
  assert_null(img.data);
  /* Base64, but not an image. */
  char *text = base64_encode((const uint8_t *)"hello, world", 12);
  assert_int_equal(adapter_decode_image(text, strlen(text), &img, &why), -1);
  assert_non_null(strstr(why, "not a known image format"));
  free(text);
  /* A PNG cut inside its header. */
  char *cut = base64_encode(png, 20);
  assert_int_equal(adapter_decode_image(cut, strlen(cut), &img, &why), -1);
  assert_non_null(strstr(why, "truncated"));
  free(cut);
  /* Nothing at all. */
  assert_int_equal(adapter_decode_image(NULL, 0, &img, &why), -1);
  assert_int_equal(adapter_decode_image("", 0, &img, &why), -1);
  free(b64);
  free(png);
}

static void test_input_format(void **state) {
  (void)state;
  const uint8_t jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0, 1};
  /* The bytes win over the declared type. */
  provider_input in = {jpeg, sizeof jpeg, "image/png"};
  assert_int_equal(adapter_input_format(&in), IMAGEFMT_JPEG);
  /* Unknown bytes: the declared type. */
  const uint8_t junk[] = "0123456789abcdef";
  in = (provider_input){junk, 16, "image/webp"};
  assert_int_equal(adapter_input_format(&in), IMAGEFMT_WEBP);
  in = (provider_input){junk, 16, NULL};
  assert_int_equal(adapter_input_format(&in), IMAGEFMT_UNKNOWN);
}

static void test_duration(void **state) {
  (void)state;
  assert_int_equal(adapter_duration_ms("19s"), 19000);
  assert_int_equal(adapter_duration_ms("1.5s"), 1500);
  assert_int_equal(adapter_duration_ms("0.250s"), 250);
  assert_int_equal(adapter_duration_ms("0s"), 0);
  assert_int_equal(adapter_duration_ms("0.0001s"), 1); /* rounded up, never to "no wait" */
  assert_int_equal(adapter_duration_ms("2.000000001s"), 2001);
  assert_int_equal(adapter_duration_ms("99999999999999s"), ADAPTER_MAX_RETRY_AFTER_MS);
  assert_int_equal(adapter_duration_ms("19"), -1);
  assert_int_equal(adapter_duration_ms("s"), -1);
  assert_int_equal(adapter_duration_ms("1.s"), -1);
  assert_int_equal(adapter_duration_ms("19 s"), -1);
  assert_int_equal(adapter_duration_ms("19ss"), -1);
  assert_int_equal(adapter_duration_ms("-1s"), -1);
  assert_int_equal(adapter_duration_ms(""), -1);
  assert_int_equal(adapter_duration_ms(NULL), -1);
}

static void http_date(time_t t, char *out, size_t size) {
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, size, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

static void test_retry_after(void **state) {
  (void)state;
  time_t now = 1700000000;
  assert_int_equal(adapter_retry_after_ms(NULL, NULL, now), 0);
  assert_int_equal(adapter_retry_after_ms("", "", now), 0);
  assert_int_equal(adapter_retry_after_ms("3", NULL, now), 3000);
  assert_int_equal(adapter_retry_after_ms(" 3 ", NULL, now), 3000);
  assert_int_equal(adapter_retry_after_ms("1.5", NULL, now), 1500);
  /* retry-after-ms wins, and may be fractional. */
  assert_int_equal(adapter_retry_after_ms("3", "1500", now), 1500);
  assert_int_equal(adapter_retry_after_ms(NULL, "2.5", now), 3);
  /* An unreadable retry-after-ms falls back to Retry-After. */
  assert_int_equal(adapter_retry_after_ms("4", "soon", now), 4000);
  /* An HTTP date, relative to now. */
  char date[64];
  http_date(now + 30, date, sizeof date);
  assert_int_equal(adapter_retry_after_ms(date, NULL, now), 30000);
  http_date(now - 30, date, sizeof date);
  assert_int_equal(adapter_retry_after_ms(date, NULL, now), 0);
  http_date(now + 10 * 86400, date, sizeof date);
  assert_int_equal(adapter_retry_after_ms(date, NULL, now), ADAPTER_MAX_RETRY_AFTER_MS);
  /* Garbage. */
  assert_int_equal(adapter_retry_after_ms("-5", NULL, now), 0);
  assert_int_equal(adapter_retry_after_ms("3 seconds", NULL, now), 0);
  assert_int_equal(adapter_retry_after_ms("whenever", NULL, now), 0);
  assert_int_equal(adapter_retry_after_ms("999999999999", NULL, now), ADAPTER_MAX_RETRY_AFTER_MS);
}

static void test_transport(void **state) {
  (void)state;
  curlloop_result res;
  memset(&res, 0, sizeof res);
  res.code = CURLE_OK;
  res.http_status = 200;
  assert_true(adapter_transport_ok(&res));

  res.cancelled = true;
  assert_false(adapter_transport_ok(&res));
  res.cancelled = false;

  res.code = CURLE_OPERATION_TIMEDOUT;
  res.http_status = 0;
  snprintf(res.error, sizeof res.error, "Operation timed out after 120000 milliseconds");
  assert_false(adapter_transport_ok(&res));
  provider_outcome *o = adapter_transport_outcome(&res, "gemini");
  assert_int_equal(o->error_class, PROVIDER_ERR_TIMEOUT);
  assert_true(o->retryable);
  assert_string_equal(o->error_code, "upstream_timeout");
  assert_non_null(strstr(o->error_message, "gemini: timed out: Operation timed out"));
  provider_outcome_free(o);

  res.code = CURLE_COULDNT_CONNECT;
  res.error[0] = '\0';
  o = adapter_transport_outcome(&res, "openai");
  assert_int_equal(o->error_class, PROVIDER_ERR_NETWORK);
  assert_true(o->retryable);
  assert_int_equal(o->http_status, 0);
  assert_string_equal(o->error_code, "upstream_unavailable");
  assert_non_null(strstr(o->error_message, curl_easy_strerror(CURLE_COULDNT_CONNECT)));
  provider_outcome_free(o);

  res.code = CURLE_WRITE_ERROR;
  res.body_truncated = true;
  res.http_status = 200;
  o = adapter_transport_outcome(&res, "gemini");
  assert_int_equal(o->error_class, PROVIDER_ERR_BAD_RESPONSE);
  assert_int_equal(o->http_status, 200);
  assert_non_null(strstr(o->error_message, "larger than 64 MiB"));
  provider_outcome_free(o);

  /* Aborted by a cancel: canceled, never retried, whatever the code says. */
  memset(&res, 0, sizeof res);
  res.code = CURLE_ABORTED_BY_CALLBACK;
  res.aborted = true;
  assert_false(adapter_transport_ok(&res));
  res.code = CURLE_OK; /* even with a code that looks fine */
  res.http_status = 200;
  assert_false(adapter_transport_ok(&res));
  o = adapter_transport_outcome(&res, "openai");
  assert_int_equal(o->status, PROVIDER_FAILED);
  assert_int_equal(o->error_class, PROVIDER_ERR_CANCELED);
  assert_false(o->retryable);
  assert_int_equal(o->http_status, 0);
  assert_string_equal(o->error_code, PROVIDER_CANCELED_CODE);
  assert_string_equal(o->error_message, "openai: the call was canceled");
  provider_outcome_free(o);

  /* A spare that held images becomes a canceled outcome without them. */
  o = adapter_spare_outcome();
  o->images = calloc(2, sizeof *o->images);
  assert_non_null(o->images);
  o->images[0].data = malloc(8);
  o->n_images = 1;
  o->retry_after_ms = 500;
  adapter_set_canceled(o, "gemini");
  assert_int_equal(o->error_class, PROVIDER_ERR_CANCELED);
  assert_int_equal(o->n_images, 0);
  assert_null(o->images);
  assert_int_equal(o->retry_after_ms, 0);
  assert_false(o->retryable);
  assert_string_equal(o->error_code, PROVIDER_CANCELED_CODE);
  provider_outcome_free(o);
}

static void test_instance_config(void **state) {
  (void)state;
  provider base = {0};
  adapter_instance ai;
  provider_instance_config cfg = {.name = "reseller", .kind = "gemini",
                                  .base_url = "https://example.test/v1beta//", .api_key = "k1"};
  assert_true(adapter_instance_init(&ai, &base, &cfg, "gemini", "/v1beta", LOOP));
  assert_string_equal(ai.base_url, "https://example.test");
  assert_string_equal(ai.api_key, "k1");
  assert_string_equal(base.name, "reseller");
  assert_int_equal(ai.timeout_ms, ADAPTER_DEFAULT_TIMEOUT_MS);
  assert_int_equal(ai.connect_timeout_ms, ADAPTER_DEFAULT_CONNECT_TIMEOUT_MS);
  assert_ptr_equal(ai.loop, LOOP);
  adapter_instance_free(&ai);

  cfg.base_url = "http://127.0.0.1:9000/proxy/";
  cfg.kind = NULL;
  cfg.timeout_ms = 5000;
  cfg.connect_timeout_ms = 700;
  assert_true(adapter_instance_init(&ai, &base, &cfg, "gemini", "/v1beta", LOOP));
  assert_string_equal(ai.base_url, "http://127.0.0.1:9000/proxy");
  assert_int_equal(ai.timeout_ms, 5000);
  assert_int_equal(ai.connect_timeout_ms, 700);
  adapter_instance_free(&ai);
}

static void test_instance_config_refused(void **state) {
  (void)state;
  provider base = {0};
  adapter_instance ai;
  const provider_instance_config good = {.name = "g", .kind = "gemini",
                                         .base_url = "https://x.test", .api_key = "k"};
  provider_instance_config cfg = good;
  assert_false(adapter_instance_init(&ai, &base, NULL, "gemini", NULL, LOOP));
  assert_false(adapter_instance_init(&ai, &base, &cfg, "gemini", NULL, NULL));
  cfg.kind = "openai";
  assert_false(adapter_instance_init(&ai, &base, &cfg, "gemini", NULL, LOOP));
  cfg = good;
  cfg.base_url = "ftp://x.test";
  assert_false(adapter_instance_init(&ai, &base, &cfg, "gemini", NULL, LOOP));
  cfg.base_url = NULL;
  assert_false(adapter_instance_init(&ai, &base, &cfg, "gemini", NULL, LOOP));
  cfg = good;
  cfg.api_key = "";
  assert_false(adapter_instance_init(&ai, &base, &cfg, "gemini", NULL, LOOP));
  cfg.api_key = "k\r\nX-Injected: 1"; /* would smuggle a header */
  assert_false(adapter_instance_init(&ai, &base, &cfg, "gemini", NULL, LOOP));
  cfg = good;
  cfg.name = "";
  assert_false(adapter_instance_init(&ai, &base, &cfg, "gemini", NULL, LOOP));
  char longname[100];
  memset(longname, 'n', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  cfg.name = longname;
  assert_false(adapter_instance_init(&ai, &base, &cfg, "gemini", NULL, LOOP));
  assert_null(ai.base_url);
}

static void test_add_header(void **state) {
  (void)state;
  struct curl_slist *list = NULL;
  assert_true(adapter_add_header(&list, "x-goog-api-key", "secret"));
  assert_true(adapter_add_header(&list, "Content-Type", "application/json"));
  assert_string_equal(list->data, "x-goog-api-key: secret");
  assert_string_equal(list->next->data, "Content-Type: application/json");
  assert_null(list->next->next);
  curl_slist_free_all(list);
}

/* ---- the parsing pool ---- */

typedef struct item {
  workpool_item work; /* first */
  int id;
  int *order;          /* where run() records its id */
  atomic_int *n_order;
  atomic_int *runs, *drops;
  pthread_mutex_t *gate_lock; /* when set, run() waits for *gate_open */
  pthread_cond_t *gate_cond;
  bool *gate_open;
  bool *started;       /* set (under gate_lock) once run() has begun */
} item;

static void item_run(workpool_item *w) {
  item *it = (item *)w;
  if (it->gate_lock) {
    pthread_mutex_lock(it->gate_lock);
    *it->started = true;
    pthread_cond_broadcast(it->gate_cond);
    while (!*it->gate_open) pthread_cond_wait(it->gate_cond, it->gate_lock);
    pthread_mutex_unlock(it->gate_lock);
  }
  if (it->order) it->order[atomic_fetch_add(it->n_order, 1)] = it->id;
  atomic_fetch_add(it->runs, 1);
}

static void item_drop(workpool_item *w) { atomic_fetch_add(((item *)w)->drops, 1); }

static void test_pool_runs_everything_in_order(void **state) {
  (void)state;
  enum { N = 64 };
  item items[N];
  int order[N];
  atomic_int n_order = 0, runs = 0, drops = 0;
  /* One thread: first in, first run. */
  workpool *p = workpool_create(1, NULL);
  assert_non_null(p);
  for (int i = 0; i < N; i++) {
    items[i] = (item){.work = {item_run, item_drop, NULL}, .id = i, .order = order,
                      .n_order = &n_order, .runs = &runs, .drops = &drops};
    workpool_submit(p, &items[i].work);
  }
  workpool_drain(p);
  assert_int_equal(atomic_load(&runs), N);
  for (int i = 0; i < N; i++) assert_int_equal(order[i], i);
  workpool_destroy(p);
  assert_int_equal(atomic_load(&drops), 0);

  /* Several threads: everything runs once. */
  atomic_store(&runs, 0);
  p = workpool_create(ADAPTER_POOL_THREADS, NULL);
  for (int i = 0; i < N; i++) {
    items[i] = (item){.work = {item_run, item_drop, NULL}, .id = i, .runs = &runs, .drops = &drops};
    workpool_submit(p, &items[i].work);
  }
  workpool_drain(p);
  assert_int_equal(atomic_load(&runs), N);
  workpool_destroy(p);
}

typedef struct destroyer {
  workpool *p;
} destroyer;

static void *destroy_main(void *arg) {
  workpool_destroy(((destroyer *)arg)->p);
  return NULL;
}

static void test_pool_destroy_finishes_running_drops_queued(void **state) {
  (void)state;
  pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
  bool gate_open = false, started = false;
  atomic_int runs = 0, drops = 0;
  workpool *p = workpool_create(1, NULL);
  item blocker = {.work = {item_run, item_drop, NULL}, .runs = &runs, .drops = &drops,
                  .gate_lock = &gate_lock, .gate_cond = &gate_cond, .gate_open = &gate_open,
                  .started = &started};
  item queued[3];
  workpool_submit(p, &blocker.work);
  for (int i = 0; i < 3; i++) {
    queued[i] = (item){.work = {item_run, item_drop, NULL}, .runs = &runs, .drops = &drops};
    workpool_submit(p, &queued[i].work);
  }
  /* The only thread is inside the blocker. */
  pthread_mutex_lock(&gate_lock);
  while (!started) pthread_cond_wait(&gate_cond, &gate_lock);
  pthread_mutex_unlock(&gate_lock);
  destroyer d = {p};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, destroy_main, &d), 0);
  pthread_mutex_lock(&gate_lock);
  gate_open = true;
  pthread_cond_broadcast(&gate_cond);
  pthread_mutex_unlock(&gate_lock);
  pthread_join(t, NULL);
  /* The running item finished; every queued one was either run (if it was
   * taken before destroy began) or dropped, exactly once. */
  assert_true(atomic_load(&runs) >= 1);
  assert_int_equal(atomic_load(&runs) + atomic_load(&drops), 4);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_clean_text_cuts_on_character_boundary),
      cmocka_unit_test(test_clean_text_controls_and_null),
      cmocka_unit_test(test_error_outcomes),
      cmocka_unit_test(test_decode_image),
      cmocka_unit_test(test_input_format),
      cmocka_unit_test(test_duration),
      cmocka_unit_test(test_retry_after),
      cmocka_unit_test(test_transport),
      cmocka_unit_test(test_instance_config),
      cmocka_unit_test(test_instance_config_refused),
      cmocka_unit_test(test_add_header),
      cmocka_unit_test(test_pool_runs_everything_in_order),
      cmocka_unit_test(test_pool_destroy_finishes_running_drops_queued),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
