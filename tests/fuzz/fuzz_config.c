/* fuzz_config.c - the JSON config file (config.h: config_load_json, config_validate,
 * config_split_listen).
 *
 * The input is a config file merged over the defaults. Loading either fails
 * with a message or yields a config whose invariants hold (every string
 * terminated inside its field, counts within their arrays, every provider
 * named and of a known kind, names unique, weights and prices in range) and
 * that config_validate judges, again with a message when it refuses. Loading
 * the same text twice gives the same config. The input is also given to
 * config_split_listen as a listen address. */
#include <stdbool.h>

#include "config.h"
#include "core/pricing.h"
#include "fuzz_check.h"

#define TERMINATED(field) FUZZ_CHECK(memchr((field), '\0', sizeof(field)) != NULL)

/* A message: non-empty and terminated inside the buffer, which the canary
 * byte after it shows was not overrun. */
static void check_message(const char *err, size_t err_size) {
  FUZZ_CHECK(err[0] != '\0');
  FUZZ_CHECK(memchr(err, '\0', err_size) != NULL);
  FUZZ_CHECK(err[err_size] == '#');
}

static void check_loaded(const imgate_config *c) {
  TERMINATED(c->listen);
  TERMINATED(c->data_dir);
  TERMINATED(c->public_url);
  TERMINATED(c->log_level);
  TERMINATED(c->sim_fail_marker);
  TERMINATED(c->sim_moderate_marker);
  TERMINATED(c->sqlite_synchronous);
  TERMINATED(c->admin_token);
  FUZZ_CHECK(c->n_providers >= 0 && c->n_providers <= CONFIG_MAX_PROVIDERS);
  FUZZ_CHECK(c->n_routes >= 0 && c->n_routes <= CONFIG_MAX_ROUTES);
  FUZZ_CHECK(c->n_prices >= 0 && c->n_prices <= CONFIG_MAX_PRICED_MODELS);
  for (int i = 0; i < c->n_providers; i++) {
    const config_provider *p = &c->providers[i];
    TERMINATED(p->name);
    TERMINATED(p->kind);
    TERMINATED(p->base_url);
    TERMINATED(p->api_key);
    FUZZ_CHECK(p->name[0]);
    FUZZ_CHECK(!strcmp(p->kind, "gemini") || !strcmp(p->kind, "openai") ||
               !strcmp(p->kind, "sim"));
    FUZZ_CHECK(p->timeout_ms >= 100 && p->connect_timeout_ms >= 100 && p->max_concurrency >= 0);
    for (int k = 0; k < i; k++) FUZZ_CHECK(strcmp(c->providers[k].name, p->name) != 0);
  }
  for (int i = 0; i < c->n_routes; i++) {
    const config_route *r = &c->routes[i];
    TERMINATED(r->model);
    TERMINATED(r->provider);
    TERMINATED(r->upstream_model);
    FUZZ_CHECK(r->provider[0] && r->weight >= 1);
  }
  for (int i = 0; i < c->n_prices; i++) {
    const config_price *p = &c->prices[i];
    TERMINATED(p->model);
    for (int s = 0; s < CONFIG_PRICE_SLOTS; s++)
      FUZZ_CHECK(p->unit[s] == -1 || (p->unit[s] >= 0 && p->unit[s] <= PRICING_MAX_UNIT_MICROS));
    FUZZ_CHECK(p->reference_image >= 0 && p->reference_image <= PRICING_MAX_UNIT_MICROS);
  }
  FUZZ_CHECK(c->n_webhook_retry_schedule >= 1 &&
             c->n_webhook_retry_schedule <= CONFIG_MAX_WEBHOOK_ATTEMPTS);
  FUZZ_CHECK(c->webhook_retry_schedule_ms[0] == 0);
  for (int i = 0; i < c->n_webhook_retry_schedule; i++)
    FUZZ_CHECK(c->webhook_retry_schedule_ms[i] >= 0 &&
               c->webhook_retry_schedule_ms[i] <= 7 * 86400000);
}

static void check_load(const uint8_t *data, size_t size) {
  /* Zeroed first so the two loads can be compared byte for byte, padding included. */
  static imgate_config a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  config_defaults(&a);
  config_defaults(&b);
  char err[256 + 1];
  memset(err, '#', sizeof err);
  int rc = config_load_json(&a, (const char *)data, size, err, sizeof err - 1);
  FUZZ_CHECK(rc == 0 || rc == -1);
  /* A short message buffer must be cut, not overrun. */
  char short_err[8 + 1];
  memset(short_err, '#', sizeof short_err);
  FUZZ_CHECK(config_load_json(&b, (const char *)data, size, short_err, sizeof short_err - 1) ==
             rc);
  if (rc < 0) {
    check_message(err, sizeof err - 1);
    check_message(short_err, sizeof short_err - 1);
    return;
  }
  FUZZ_CHECK(memcmp(&a, &b, sizeof a) == 0);
  check_loaded(&a);
  memset(err, '#', sizeof err);
  int valid = config_validate(&a, err, sizeof err - 1);
  FUZZ_CHECK(valid == 0 || valid == -1);
  if (valid < 0) check_message(err, sizeof err - 1);
}

/* Host and port from HOST:PORT, [v6]:PORT or :PORT. */
static void check_split_listen(const uint8_t *data, size_t size) {
  char *listen = fuzz_cstring(data, size);
  size_t len = strlen(listen);
  size_t host_size = len + 1 > 10 ? len + 1 : 10; /* room for any host and the default */
  char *host = malloc(host_size);
  FUZZ_CHECK(host);
  int port = -1;
  if (config_split_listen(listen, host, host_size, &port) == 0) {
    FUZZ_CHECK(port >= 0 && port <= 65535);
    FUZZ_CHECK(memchr(host, '\0', host_size) != NULL);
    /* The host is the text before the port's colon, without brackets. */
    const char *colon = listen[0] == '[' ? strchr(listen, ']') + 1 : strrchr(listen, ':');
    FUZZ_CHECK(colon && *colon == ':');
    const char *h = listen[0] == '[' ? listen + 1 : listen;
    size_t hlen = (size_t)(colon - h) - (listen[0] == '[' ? 1 : 0);
    if (hlen == 0) {
      FUZZ_CHECK(strcmp(host, "127.0.0.1") == 0);
    } else {
      FUZZ_CHECK(strlen(host) == hlen && memcmp(host, h, hlen) == 0);
      /* Without room for the host, a refusal, and nothing written past the buffer. */
      char *small = malloc(hlen);
      FUZZ_CHECK(small);
      FUZZ_CHECK(config_split_listen(listen, small, hlen, &port) == -1);
      free(small);
    }
  }
  free(host);
  free(listen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_load(data, size);
  check_split_listen(data, size);
  return 0;
}
