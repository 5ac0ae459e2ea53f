/* config.c - defaults, JSON file, environment. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/catalog.h"
#include "core/pricing.h"
#include "core/transcode.h"
#include "upstream/providers.h"

void config_defaults(imgate_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->listen, sizeof c->listen, "127.0.0.1:8080");
  snprintf(c->data_dir, sizeof c->data_dir, "./var");
  snprintf(c->log_level, sizeof c->log_level, "info");
  c->demo_account = true;
  c->retention_hours = 168;
  c->retention_sweep_interval_ms = 60000;
  /* Far longer than a submit or a finish takes between writing an image and
   * committing its row (gc.h); an orphan waiting an hour costs only disk. */
  c->retention_orphan_min_age_s = 3600;
  c->retention_orphan_interval_ms = 3600000;
  c->http_threads = 0;
  /* Bounds the whole request, inline images included: about 24 MiB of image
   * data after base64's 4/3, so three images at the 7 MiB maximum but not
   * ten. Larger sets go by URL. Raising it to carry ten (~94 MiB) would let
   * each create hold ~250 MiB (body, parsed copy, decoded images). */
  c->max_body_bytes = 32u << 20;
  c->connection_timeout_s = 60;
  /* 10,000 clients polling at once, each on its own connection, plus room. */
  c->max_connections = 16384;
  /* One client may hold this many connections: far more than a browser or
   * an SDK's pool, far fewer than the server's. Behind a reverse proxy every
   * client has the proxy's address: set it to 0 there (docs/operations.md). */
  c->max_connections_per_ip = 256;
  c->http_header_timeout_ms = 10000;
  c->http_body_timeout_ms = 10000;
  c->http_body_min_rate = 4096;
  c->http_send_timeout_ms = 30000;
  c->http_send_min_rate = 4096;
  c->http_stream_keepalive_ms = 15000;
  c->http_max_header_bytes = 32768;
  /* Sixteen full-size bodies at once; what is held beyond that is a client
   * making the server buffer for it. */
  c->max_buffered_body_bytes = 512u << 20;
  /* Covers a large upload on a slow link; a load balancer's own drain is
   * usually in this range. */
  c->http_shutdown_timeout_ms = 10000;
  c->max_prompt_chars = 32000;
  c->max_image_bytes = 7u << 20; /* Gemini's documented per-image ceiling */
  c->max_reference_images = 10;
  c->engine_max_in_flight = 256;
  c->engine_drain_timeout_ms = 10000;
  c->sim_delay_ms = 1500;
  c->retry_max_attempts = 3;
  c->retry_deadline_ms = 300000;
  c->retry_backoff_base_ms = 500;
  c->retry_backoff_max_ms = 15000;
  c->breaker_failures = 5;
  c->breaker_open_ms = 5000;
  c->breaker_recovery_ms = 30000;
  c->fetch_timeout_ms = 20000;
  c->transcode_threads = 2;
  c->transcode_max_pixels = TRANSCODE_DEFAULT_MAX_PIXELS;
  snprintf(c->sqlite_synchronous, sizeof c->sqlite_synchronous, "full");
  pricing_defaults(c);
  c->signup_bonus_micros = 1000000; /* $1.00, seed 000's signup bonus */
  c->credit_micros = 10000;         /* $0.01: one credit (issue 9, item 2) */
  c->clamped_quantity_max = 4;      /* seed 004's default maximum */
  c->max_keys_per_account = 5;
  c->default_max_concurrency = 0; /* async submission is unlimited (seed 000) */
  c->default_qps_per_key = 0;
  c->idempotency_ttl_s = 86400; /* 24 h, the Stripe convention */
  c->webhook_timeout_ms = 10000;
  c->webhook_connect_timeout_ms = 5000;
  /* The Standard Webhooks schedule: at once, then 5 s, 5 min, 30 min, 2 h,
   * 5 h, 10 h and 10 h (about 27.6 hours in all). */
  static const int schedule[] = {0,       5000,     300000,   1800000,
                                 7200000, 18000000, 36000000, 36000000};
  memcpy(c->webhook_retry_schedule_ms, schedule, sizeof schedule);
  c->n_webhook_retry_schedule = (int)(sizeof schedule / sizeof schedule[0]);
  c->webhook_rotation_window_s = 86400;
  c->webhook_max_in_flight = 1024;
}

/* A table of the file's keys: where each lands and how it is typed. The
 * table keeps loading, validation messages and docs in one place. */
typedef enum {
  K_STR, K_INT, K_I64, K_SIZE, K_BOOL, K_OBJ, K_PROVIDERS, K_ROUTES, K_PRICES, K_SCHEDULE
} key_kind;

typedef struct key_spec {
  const char *path; /* "http.threads" */
  key_kind kind;
  size_t offset;
  size_t size;      /* for strings: capacity */
  long long min, max;
} key_spec;

#define F(field) offsetof(imgate_config, field), sizeof(((imgate_config *)0)->field)

static const key_spec keys[] = {
    {"listen", K_STR, F(listen), 0, 0},
    {"data_dir", K_STR, F(data_dir), 0, 0},
    {"public_url", K_STR, F(public_url), 0, 0},
    {"log_level", K_STR, F(log_level), 0, 0},
    {"demo_account", K_BOOL, F(demo_account), 0, 0},
    {"retention_hours", K_INT, F(retention_hours), 1, 24 * 365},
    {"retention_sweep_interval_ms", K_INT, F(retention_sweep_interval_ms), 50, 86400000},
    {"retention_orphan_min_age_s", K_INT, F(retention_orphan_min_age_s), 60, 30 * 86400},
    {"retention_orphan_interval_ms", K_INT, F(retention_orphan_interval_ms), 50, 86400000},
    {"http", K_OBJ, 0, 0, 0, 0},
    {"http.threads", K_INT, F(http_threads), 0, 1024},
    {"http.max_body_bytes", K_SIZE, F(max_body_bytes), 1024, 1LL << 30},
    {"http.connection_timeout_s", K_INT, F(connection_timeout_s), 1, 3600},
    {"http.max_connections", K_INT, F(max_connections), 1, 1000000},
    {"http.max_connections_per_ip", K_INT, F(max_connections_per_ip), 0, 1000000},
    {"http.max_buffered_body_bytes", K_SIZE, F(max_buffered_body_bytes), 1LL << 20, 1LL << 40},
    {"http.shutdown_timeout_ms", K_INT, F(http_shutdown_timeout_ms), 0, 3600000},
    {"http.header_timeout_ms", K_INT, F(http_header_timeout_ms), 100, 600000},
    {"http.body_timeout_ms", K_INT, F(http_body_timeout_ms), 100, 600000},
    {"http.body_min_rate", K_INT, F(http_body_min_rate), 1, 1 << 30},
    {"http.send_timeout_ms", K_INT, F(http_send_timeout_ms), 100, 600000},
    {"http.send_min_rate", K_INT, F(http_send_min_rate), 1, 1 << 30},
    {"http.max_header_bytes", K_SIZE, F(http_max_header_bytes), 8192 + 64, 1 << 20},
    {"http.stream_keepalive_ms", K_INT, F(http_stream_keepalive_ms), 100, 300000},
    {"limits", K_OBJ, 0, 0, 0, 0},
    {"limits.max_prompt_chars", K_INT, F(max_prompt_chars), 1, 1000000},
    {"limits.max_image_bytes", K_SIZE, F(max_image_bytes), 1, 1LL << 30},
    {"limits.max_reference_images", K_INT, F(max_reference_images), 0, 10},
    {"limits.clamped_quantity_max", K_INT, F(clamped_quantity_max), 1, 10},
    {"store", K_OBJ, 0, 0, 0, 0},
    {"store.sqlite_synchronous", K_STR, F(sqlite_synchronous), 0, 0},
    {"engine", K_OBJ, 0, 0, 0, 0},
    {"engine.max_in_flight", K_INT, F(engine_max_in_flight), 1, 1000000},
    {"engine.drain_timeout_ms", K_INT, F(engine_drain_timeout_ms), 0, 3600000},
    {"engine.max_queued", K_INT, F(engine_max_queued), 0, 100000000},
    {"transcode", K_OBJ, 0, 0, 0, 0},
    {"transcode.threads", K_INT, F(transcode_threads), 1, 64},
    {"transcode.max_pixels", K_I64, F(transcode_max_pixels), 1, 1000000000},
    {"sim", K_OBJ, 0, 0, 0, 0},
    {"sim.delay_ms", K_INT, F(sim_delay_ms), 0, 3600000},
    {"sim.fail_marker", K_STR, F(sim_fail_marker), 0, 0},
    {"sim.moderate_marker", K_STR, F(sim_moderate_marker), 0, 0},
    {"providers", K_PROVIDERS, 0, 0, 0, 0},
    {"routes", K_ROUTES, 0, 0, 0, 0},
    {"retry", K_OBJ, 0, 0, 0, 0},
    {"retry.max_attempts", K_INT, F(retry_max_attempts), 1, 20},
    {"retry.deadline_ms", K_INT, F(retry_deadline_ms), 1000, 86400000},
    {"retry.backoff_base_ms", K_INT, F(retry_backoff_base_ms), 1, 600000},
    {"retry.backoff_max_ms", K_INT, F(retry_backoff_max_ms), 1, 3600000},
    {"breaker", K_OBJ, 0, 0, 0, 0},
    {"breaker.failures", K_INT, F(breaker_failures), 1, 1000},
    {"breaker.open_ms", K_INT, F(breaker_open_ms), 1, 3600000},
    {"breaker.recovery_ms", K_INT, F(breaker_recovery_ms), 1, 3600000},
    {"allow_private_networks", K_BOOL, F(allow_private_networks), 0, 0},
    {"fetch", K_OBJ, 0, 0, 0, 0},
    {"fetch.timeout_ms", K_INT, F(fetch_timeout_ms), 100, 600000},
    {"fetch.allow_http", K_BOOL, F(fetch_allow_http), 0, 0},
    {"admin_token", K_STR, F(admin_token), 0, 0},
    {"prices", K_PRICES, 0, 0, 0, 0},
    {"billing", K_OBJ, 0, 0, 0, 0},
    {"billing.signup_bonus_micros", K_I64, F(signup_bonus_micros), 0, 1000000000000LL},
    {"billing.credit_micros", K_I64, F(credit_micros), 1, 100000000},
    {"billing.max_keys_per_account", K_INT, F(max_keys_per_account), 1, 1000},
    {"billing.default_max_concurrency", K_INT, F(default_max_concurrency), 0, 1000000},
    {"billing.default_qps_per_key", K_INT, F(default_qps_per_key), 0, 1000000},
    {"idempotency", K_OBJ, 0, 0, 0, 0},
    {"idempotency.ttl_s", K_INT, F(idempotency_ttl_s), 1, 30 * 86400},
    {"webhooks", K_OBJ, 0, 0, 0, 0},
    {"webhooks.timeout_ms", K_INT, F(webhook_timeout_ms), 100, 300000},
    {"webhooks.connect_timeout_ms", K_INT, F(webhook_connect_timeout_ms), 100, 300000},
    {"webhooks.retry_schedule_ms", K_SCHEDULE, F(webhook_retry_schedule_ms), 0, 7 * 86400000},
    {"webhooks.rotation_window_s", K_INT, F(webhook_rotation_window_s), 0, 30 * 86400},
    {"webhooks.allow_private_networks", K_BOOL, F(webhook_allow_private_networks), 0, 0},
    {"webhooks.allow_http", K_BOOL, F(webhook_allow_http), 0, 0},
    {"webhooks.max_in_flight", K_INT, F(webhook_max_in_flight), 1, 1000000},
};

static const key_spec *find_key(const char *path) {
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (strcmp(keys[i].path, path) == 0) return &keys[i];
  return NULL;
}

static int set_int_field(imgate_config *c, const key_spec *k, long long v, char *err,
                         size_t err_size) {
  if (v < k->min || v > k->max) {
    snprintf(err, err_size, "%s: %lld is out of range %lld..%lld", k->path, v, k->min, k->max);
    return -1;
  }
  char *field = (char *)c + k->offset;
  if (k->kind == K_SIZE)
    *(size_t *)field = (size_t)v;
  else if (k->kind == K_I64)
    *(int64_t *)field = (int64_t)v;
  else
    *(int *)field = (int)v;
  return 0;
}

static int set_str_field(imgate_config *c, const key_spec *k, const char *v, char *err,
                         size_t err_size) {
  if (strlen(v) >= k->size) {
    snprintf(err, err_size, "%s: value longer than %zu characters", k->path, k->size - 1);
    return -1;
  }
  memcpy((char *)c + k->offset, v, strlen(v) + 1);
  return 0;
}

/* Copies a JSON string member into dst; absent is fine. */
static int member_str(json_t *obj, const char *key, const char *where, char *dst, size_t size,
                      char *err, size_t err_size) {
  json_t *v = json_object_get(obj, key);
  if (!v) return 0;
  if (!json_is_string(v) || strlen(json_string_value(v)) >= size) {
    snprintf(err, err_size, "%s.%s must be a string of at most %zu characters", where, key,
             size - 1);
    return -1;
  }
  memcpy(dst, json_string_value(v), strlen(json_string_value(v)) + 1);
  return 0;
}

static int member_int(json_t *obj, const char *key, const char *where, int *dst, int min,
                      int max, char *err, size_t err_size) {
  json_t *v = json_object_get(obj, key);
  if (!v) return 0;
  if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
    snprintf(err, err_size, "%s.%s must be an integer from %d to %d", where, key, min, max);
    return -1;
  }
  *dst = (int)json_integer_value(v);
  return 0;
}

/* Refuses members a section does not know, naming the first one. */
static int only_members(json_t *obj, const char *const *known, const char *where, char *err,
                        size_t err_size) {
  const char *name;
  json_t *v;
  json_object_foreach(obj, name, v) {
    bool ok = false;
    for (const char *const *k = known; *k && !ok; k++) ok = strcmp(*k, name) == 0;
    if (!ok) {
      snprintf(err, err_size, "unknown configuration key \"%s.%s\"", where, name);
      return -1;
    }
  }
  return 0;
}

static int load_providers(imgate_config *c, json_t *arr, char *err, size_t err_size) {
  static const char *const known[] = {"name",       "kind",       "base_url",
                                      "api_key",    "api_key_env", "timeout_ms",
                                      "connect_timeout_ms", "max_concurrency", NULL};
  if (!json_is_array(arr)) {
    snprintf(err, err_size, "configuration key \"providers\" must be an array");
    return -1;
  }
  size_t i;
  json_t *p;
  json_array_foreach(arr, i, p) {
    char where[32];
    snprintf(where, sizeof where, "providers[%zu]", i);
    if (!json_is_object(p) || c->n_providers >= CONFIG_MAX_PROVIDERS) {
      snprintf(err, err_size, "%s must be an object (at most %d providers)", where,
               CONFIG_MAX_PROVIDERS);
      return -1;
    }
    config_provider *cp = &c->providers[c->n_providers];
    memset(cp, 0, sizeof *cp);
    cp->timeout_ms = 120000;
    cp->connect_timeout_ms = 10000;
    char key_env[128] = "";
    if (only_members(p, known, where, err, err_size) < 0 ||
        member_str(p, "name", where, cp->name, sizeof cp->name, err, err_size) < 0 ||
        member_str(p, "kind", where, cp->kind, sizeof cp->kind, err, err_size) < 0 ||
        member_str(p, "base_url", where, cp->base_url, sizeof cp->base_url, err, err_size) < 0 ||
        member_str(p, "api_key", where, cp->api_key, sizeof cp->api_key, err, err_size) < 0 ||
        member_str(p, "api_key_env", where, key_env, sizeof key_env, err, err_size) < 0 ||
        member_int(p, "timeout_ms", where, &cp->timeout_ms, 100, 3600000, err, err_size) < 0 ||
        member_int(p, "connect_timeout_ms", where, &cp->connect_timeout_ms, 100, 600000, err,
                   err_size) < 0 ||
        member_int(p, "max_concurrency", where, &cp->max_concurrency, 0, 1000000, err,
                   err_size) < 0)
      return -1;
    if (!cp->name[0] || !provider_kind_find(cp->kind)) {
      char kinds[128];
      provider_kind_names(kinds, sizeof kinds);
      snprintf(err, err_size, "%s needs a name and a kind (one of: %s)", where, kinds);
      return -1;
    }
    /* Keys in the environment keep secrets out of config files. */
    if (key_env[0] && getenv(key_env))
      snprintf(cp->api_key, sizeof cp->api_key, "%s", getenv(key_env));
    for (int k = 0; k < c->n_providers; k++)
      if (strcmp(c->providers[k].name, cp->name) == 0) {
        snprintf(err, err_size, "%s: the name \"%s\" is used twice", where, cp->name);
        return -1;
      }
    c->n_providers++;
  }
  return 0;
}

static int load_routes(imgate_config *c, json_t *obj, char *err, size_t err_size) {
  static const char *const known[] = {"provider", "upstream_model", "weight", NULL};
  if (!json_is_object(obj)) {
    snprintf(err, err_size, "configuration key \"routes\" must be an object of model: [routes]");
    return -1;
  }
  const char *model;
  json_t *list;
  json_object_foreach(obj, model, list) {
    if (!json_is_array(list)) {
      snprintf(err, err_size, "routes.%s must be an array", model);
      return -1;
    }
    size_t i;
    json_t *r;
    json_array_foreach(list, i, r) {
      char where[96];
      snprintf(where, sizeof where, "routes.%.48s[%zu]", model, i);
      if (!json_is_object(r) || c->n_routes >= CONFIG_MAX_ROUTES) {
        snprintf(err, err_size, "%s must be an object (at most %d routes)", where,
                 CONFIG_MAX_ROUTES);
        return -1;
      }
      config_route *cr = &c->routes[c->n_routes];
      memset(cr, 0, sizeof *cr);
      cr->weight = 1;
      if (strlen(model) >= sizeof cr->model) {
        snprintf(err, err_size, "%s: model name too long", where);
        return -1;
      }
      snprintf(cr->model, sizeof cr->model, "%s", model);
      if (only_members(r, known, where, err, err_size) < 0 ||
          member_str(r, "provider", where, cr->provider, sizeof cr->provider, err, err_size) < 0 ||
          member_str(r, "upstream_model", where, cr->upstream_model, sizeof cr->upstream_model,
                     err, err_size) < 0 ||
          member_int(r, "weight", where, &cr->weight, 1, 1000000, err, err_size) < 0)
        return -1;
      if (!cr->provider[0]) {
        snprintf(err, err_size, "%s needs a provider", where);
        return -1;
      }
      c->n_routes++;
    }
  }
  return 0;
}

/* A price value of a config file: an integer number of micro-dollars from 0
 * to PRICING_MAX_UNIT_MICROS; where names the key in the message. */
static int price_value(json_t *v, const char *where, int64_t *out, char *err, size_t err_size) {
  if (!json_is_integer(v) || json_integer_value(v) < 0 ||
      json_integer_value(v) > PRICING_MAX_UNIT_MICROS) {
    snprintf(err, err_size,
             "%s must be an integer number of micro-dollars from 0 to %lld (100 USD)", where,
             PRICING_MAX_UNIT_MICROS);
    return -1;
  }
  *out = json_integer_value(v);
  return 0;
}

/* One quality of GPT Image's grid (row q): an integer is that quality's
 * price at every size (what a file written before sizes were priced meant),
 * an object {size: price} overrides the sizes it names. */
static int load_quality_prices(config_price *p, int q, const char *name, json_t *v, char *err,
                               size_t err_size) {
  char where[160];
  snprintf(where, sizeof where, "prices.%s.%s", p->model, name);
  if (!json_is_object(v)) {
    int64_t price;
    if (price_value(v, where, &price, err, err_size) < 0) {
      snprintf(err, err_size,
               "%s must be an object of size: price (1024x1024, 1536x1024, 1024x1536), or one "
               "price for every size: an integer number of micro-dollars from 0 to %lld "
               "(100 USD)",
               where, PRICING_MAX_UNIT_MICROS);
      return -1;
    }
    for (int s = 0; s < PRICING_SIZES; s++) p->unit[pricing_cell(q, s)] = price;
    return 0;
  }
  const char *size;
  json_t *pv;
  json_object_foreach(v, size, pv) {
    int s = pricing_size_index(size);
    snprintf(where, sizeof where, "prices.%s.%s.%s", p->model, name, size);
    if (s < 0) {
      snprintf(err, err_size,
               "unknown configuration key \"%s\": not a size %s offers (1024x1024, 1536x1024, "
               "1024x1536)",
               where, p->model);
      return -1;
    }
    if (price_value(pv, where, &p->unit[pricing_cell(q, s)], err, err_size) < 0) return -1;
  }
  return 0;
}

/* One model's object under "prices": overrides only the entries it names. */
static int load_model_prices(config_price *p, json_t *obj, char *err, size_t err_size) {
  bool by_quality = pricing_by_quality(p->model);
  const char *name;
  json_t *v;
  json_object_foreach(obj, name, v) {
    char where[160];
    snprintf(where, sizeof where, "prices.%s.%s", p->model, name);
    if (strcmp(name, "reference_image") == 0) {
      if (price_value(v, where, &p->reference_image, err, err_size) < 0) return -1;
      continue;
    }
    int q = by_quality ? pricing_quality_index(name) : -1;
    if (q >= 0) {
      if (load_quality_prices(p, q, name, v, err, err_size) < 0) return -1;
      continue;
    }
    int slot = by_quality ? -1 : pricing_slot(p->model, name);
    if (slot < 0) {
      snprintf(err, err_size, "unknown configuration key \"%s\": not a %s %s offers", where,
               by_quality ? "quality (low, medium, high)" : "resolution", p->model);
      return -1;
    }
    if (price_value(v, where, &p->unit[slot], err, err_size) < 0) return -1;
  }
  return 0;
}

static int load_prices(imgate_config *c, json_t *obj, char *err, size_t err_size) {
  if (!json_is_object(obj)) {
    snprintf(err, err_size, "configuration key \"prices\" must be an object of model: {prices}");
    return -1;
  }
  const char *model;
  json_t *entry;
  json_object_foreach(obj, model, entry) {
    /* config_defaults gave every catalog model an entry; nothing else has one. */
    config_price *p = (config_price *)pricing_find(c, model);
    if (!p) {
      snprintf(err, err_size, "prices: unknown model \"%.64s\"", model);
      return -1;
    }
    if (!json_is_object(entry)) {
      snprintf(err, err_size, "configuration key \"prices.%s\" must be an object", p->model);
      return -1;
    }
    if (load_model_prices(p, entry, err, err_size) < 0) return -1;
  }
  return 0;
}

/* webhooks.retry_schedule_ms: 1..CONFIG_MAX_WEBHOOK_ATTEMPTS delays in
 * k->min..k->max ms, the first 0 (the outbox row is due when it is written,
 * so a first delay would be a promise nothing keeps). Replaces the whole list. */
static int load_schedule(imgate_config *c, const key_spec *k, json_t *arr, char *err,
                         size_t err_size) {
  size_t n = json_is_array(arr) ? json_array_size(arr) : 0;
  if (n < 1 || n > CONFIG_MAX_WEBHOOK_ATTEMPTS) {
    snprintf(err, err_size, "%s must be a list of 1 to %d delays in milliseconds", k->path,
             CONFIG_MAX_WEBHOOK_ATTEMPTS);
    return -1;
  }
  int delays[CONFIG_MAX_WEBHOOK_ATTEMPTS];
  for (size_t i = 0; i < n; i++) {
    json_t *v = json_array_get(arr, i);
    if (!json_is_integer(v) || json_integer_value(v) < k->min || json_integer_value(v) > k->max) {
      snprintf(err, err_size, "%s[%zu] must be an integer from %lld to %lld", k->path, i, k->min,
               k->max);
      return -1;
    }
    delays[i] = (int)json_integer_value(v);
  }
  if (delays[0] != 0) {
    snprintf(err, err_size, "%s[0] must be 0: the first attempt is made at once", k->path);
    return -1;
  }
  memcpy(c->webhook_retry_schedule_ms, delays, n * sizeof delays[0]);
  c->n_webhook_retry_schedule = (int)n;
  return 0;
}

static int apply_json(imgate_config *c, json_t *obj, const char *prefix, char *err,
                      size_t err_size) {
  const char *name;
  json_t *value;
  json_object_foreach(obj, name, value) {
    char path[128];
    snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", name);
    const key_spec *k = find_key(path);
    if (!k) {
      snprintf(err, err_size, "unknown configuration key \"%s\"", path);
      return -1;
    }
    switch (k->kind) {
    case K_OBJ:
      if (!json_is_object(value)) goto wrong_type;
      if (apply_json(c, value, path, err, err_size) < 0) return -1;
      break;
    case K_STR:
      if (!json_is_string(value)) goto wrong_type;
      if (set_str_field(c, k, json_string_value(value), err, err_size) < 0) return -1;
      break;
    case K_INT:
    case K_I64:
    case K_SIZE:
      if (!json_is_integer(value)) goto wrong_type;
      if (set_int_field(c, k, json_integer_value(value), err, err_size) < 0) return -1;
      break;
    case K_BOOL:
      if (!json_is_boolean(value)) goto wrong_type;
      *(bool *)((char *)c + k->offset) = json_is_true(value);
      break;
    case K_PROVIDERS:
      if (load_providers(c, value, err, err_size) < 0) return -1;
      break;
    case K_ROUTES:
      if (load_routes(c, value, err, err_size) < 0) return -1;
      break;
    case K_PRICES:
      if (load_prices(c, value, err, err_size) < 0) return -1;
      break;
    case K_SCHEDULE:
      if (load_schedule(c, k, value, err, err_size) < 0) return -1;
      break;
    }
    continue;
  wrong_type:
    snprintf(err, err_size, "configuration key \"%s\" must be %s", path,
             k->kind == K_OBJ    ? "an object"
             : k->kind == K_STR  ? "a string"
             : k->kind == K_BOOL ? "true or false"
                                 : "an integer");
    return -1;
  }
  return 0;
}

/* What loading a file and loading text share: root is the parsed document,
 * or NULL with jerr saying why; origin names the source in messages. */
static int load_root(imgate_config *c, json_t *root, const json_error_t *jerr, const char *origin,
                     char *err, size_t err_size) {
  if (!root) {
    snprintf(err, err_size, "%s:%d: %s", origin, jerr->line, jerr->text);
    return -1;
  }
  int rc = 0;
  if (!json_is_object(root)) {
    snprintf(err, err_size, "%s: the configuration must be a JSON object", origin);
    rc = -1;
  } else {
    rc = apply_json(c, root, "", err, err_size);
  }
  json_decref(root);
  return rc;
}

int config_load_file(imgate_config *c, const char *path, char *err, size_t err_size) {
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  return load_root(c, root, &jerr, path, err, err_size);
}

int config_load_json(imgate_config *c, const char *text, size_t len, char *err,
                     size_t err_size) {
  json_error_t jerr;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  return load_root(c, root, &jerr, "config", err, err_size);
}

static int env_int(imgate_config *c, const char *env, const char *key, char *err,
                   size_t err_size) {
  const char *v = getenv(env);
  if (!v || !*v) return 0;
  char *end;
  errno = 0;
  long long n = strtoll(v, &end, 10);
  if (errno || *end) {
    snprintf(err, err_size, "%s: \"%s\" is not an integer", env, v);
    return -1;
  }
  return set_int_field(c, find_key(key), n, err, err_size);
}

static int env_str(imgate_config *c, const char *env, const char *key, char *err,
                   size_t err_size) {
  const char *v = getenv(env);
  if (!v) return 0;
  return set_str_field(c, find_key(key), v, err, err_size);
}

int config_load_env(imgate_config *c, char *err, size_t err_size) {
  if (env_str(c, "IMGATE_LISTEN", "listen", err, err_size) < 0) return -1;
  if (env_str(c, "IMGATE_DATA", "data_dir", err, err_size) < 0) return -1;
  if (env_str(c, "IMGATE_PUBLIC_URL", "public_url", err, err_size) < 0) return -1;
  if (env_str(c, "IMGATE_LOG_LEVEL", "log_level", err, err_size) < 0) return -1;
  if (env_int(c, "IMGATE_SIM_DELAY_MS", "sim.delay_ms", err, err_size) < 0) return -1;
  if (env_str(c, "IMGATE_SIM_FAIL_MARKER", "sim.fail_marker", err, err_size) < 0) return -1;
  if (env_str(c, "IMGATE_SIM_MODERATE_MARKER", "sim.moderate_marker", err, err_size) < 0)
    return -1;
  if (env_str(c, "IMGATE_ADMIN_TOKEN", "admin_token", err, err_size) < 0) return -1;
  const char *priv = getenv("IMGATE_ALLOW_PRIVATE_NETWORKS");
  if (priv && *priv) c->allow_private_networks = strcmp(priv, "0") != 0;
  const char *plain = getenv("IMGATE_FETCH_ALLOW_HTTP");
  if (plain && *plain) c->fetch_allow_http = strcmp(plain, "0") != 0;
  return 0;
}

static int add_env_provider(imgate_config *c, const char *kind, const char *key_env,
                            const char *url_env, char *err, size_t err_size) {
  const char *key = getenv(key_env);
  if (!key || !*key) return 0;
  for (int i = 0; i < c->n_providers; i++)
    if (strcmp(c->providers[i].name, kind) == 0) return 0; /* the file says more */
  if (c->n_providers >= CONFIG_MAX_PROVIDERS) {
    snprintf(err, err_size, "%s: too many providers", key_env);
    return -1;
  }
  config_provider *cp = &c->providers[c->n_providers++];
  memset(cp, 0, sizeof *cp);
  snprintf(cp->name, sizeof cp->name, "%s", kind);
  snprintf(cp->kind, sizeof cp->kind, "%s", kind);
  snprintf(cp->api_key, sizeof cp->api_key, "%s", key);
  const char *url = getenv(url_env);
  if (url && *url) snprintf(cp->base_url, sizeof cp->base_url, "%s", url);
  cp->timeout_ms = 120000;
  cp->connect_timeout_ms = 10000;
  size_t n;
  const catalog_model *models = catalog_models(&n);
  for (size_t m = 0; m < n; m++) {
    if (strcmp(models[m].upstream_kind, kind) != 0) continue;
    bool routed = false;
    for (int r = 0; r < c->n_routes && !routed; r++)
      routed = strcmp(c->routes[r].model, models[m].name) == 0;
    if (routed || c->n_routes >= CONFIG_MAX_ROUTES) continue;
    config_route *cr = &c->routes[c->n_routes++];
    memset(cr, 0, sizeof *cr);
    snprintf(cr->model, sizeof cr->model, "%s", models[m].name);
    snprintf(cr->provider, sizeof cr->provider, "%s", kind);
    cr->weight = 1;
  }
  return 0;
}

int config_apply_provider_env(imgate_config *c, char *err, size_t err_size) {
  if (add_env_provider(c, "gemini", "GEMINI_API_KEY", "GEMINI_BASE_URL", err, err_size) < 0)
    return -1;
  return add_env_provider(c, "openai", "OPENAI_API_KEY", "OPENAI_BASE_URL", err, err_size);
}

int config_split_listen(const char *listen, char *host, size_t host_size, int *port) {
  const char *colon;
  const char *h = listen;
  size_t hlen;
  if (listen[0] == '[') {
    const char *close = strchr(listen, ']');
    if (!close || close[1] != ':') return -1;
    h = listen + 1;
    hlen = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(listen, ':');
    if (!colon) return -1;
    hlen = (size_t)(colon - listen);
  }
  char *end;
  errno = 0;
  long p = strtol(colon + 1, &end, 10);
  if (errno || *end || colon[1] == '\0' || p < 0 || p > 65535) return -1;
  if (hlen == 0) {
    snprintf(host, host_size, "127.0.0.1");
  } else {
    if (hlen >= host_size) return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
  }
  *port = (int)p;
  return 0;
}

int config_validate(const imgate_config *c, char *err, size_t err_size) {
  char host[256];
  int port;
  if (config_split_listen(c->listen, host, sizeof host, &port) < 0) {
    snprintf(err, err_size, "listen: \"%s\" is not HOST:PORT", c->listen);
    return -1;
  }
  if (c->public_url[0] && strncmp(c->public_url, "http://", 7) != 0 &&
      strncmp(c->public_url, "https://", 8) != 0) {
    snprintf(err, err_size, "public_url: must start with http:// or https://");
    return -1;
  }
  if (c->max_buffered_body_bytes < c->max_body_bytes) {
    snprintf(err, err_size,
             "http.max_buffered_body_bytes (%zu) must be at least http.max_body_bytes (%zu), "
             "or a body at the limit could never be read",
             c->max_buffered_body_bytes, c->max_body_bytes);
    return -1;
  }
  if (!c->data_dir[0]) {
    snprintf(err, err_size, "data_dir: must not be empty");
    return -1;
  }
  if (strcmp(c->sqlite_synchronous, "full") != 0 && strcmp(c->sqlite_synchronous, "normal") != 0) {
    snprintf(err, err_size, "store.sqlite_synchronous: must be \"full\" or \"normal\"");
    return -1;
  }
  for (int i = 0; i < c->n_routes; i++) {
    const config_route *r = &c->routes[i];
    bool known = false;
    for (int p = 0; p < c->n_providers && !known; p++)
      known = strcmp(c->providers[p].name, r->provider) == 0;
    if (!catalog_find(r->model)) {
      snprintf(err, err_size, "routes: unknown model \"%s\"", r->model);
      return -1;
    }
    if (!known && strcmp(r->provider, "sim") != 0) {
      snprintf(err, err_size, "routes.%s: unknown provider \"%s\"", r->model, r->provider);
      return -1;
    }
  }
  if (c->n_webhook_retry_schedule < 1 ||
      c->n_webhook_retry_schedule > CONFIG_MAX_WEBHOOK_ATTEMPTS ||
      c->webhook_retry_schedule_ms[0] != 0) {
    snprintf(err, err_size, "webhooks.retry_schedule_ms: 1 to %d delays, the first 0",
             CONFIG_MAX_WEBHOOK_ATTEMPTS);
    return -1;
  }
  if (strcmp(c->log_level, "debug") && strcmp(c->log_level, "info") &&
      strcmp(c->log_level, "warn") && strcmp(c->log_level, "error")) {
    snprintf(err, err_size, "log_level: one of debug, info, warn, error");
    return -1;
  }
  return 0;
}
