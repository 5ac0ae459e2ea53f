/* config.h - one configuration struct, from defaults, a JSON file and the environment.
 *
 * Precedence, lowest first: built-in defaults, the config file, IMGATE_*
 * environment variables, then command-line flags (applied by main.c). Every
 * key of the file is optional; unknown keys and wrong types are errors, so a
 * typo never silently leaves a default in force. docs/configuration.md lists
 * every key. */
#ifndef IMGATE_CONFIG_H
#define IMGATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_PROVIDERS 16
#define CONFIG_MAX_ROUTES 64
#define CONFIG_MAX_PRICED_MODELS 16
#define CONFIG_MAX_WEBHOOK_ATTEMPTS 16

/* The price slots of a model: the resolutions a Gemini model is priced by,
 * then GPT Image's grid of 3 qualities by 3 sizes (core/pricing.h names the
 * cells). A model uses one group or the other (core/pricing.c decides which). */
enum {
  CONFIG_PRICE_512,
  CONFIG_PRICE_1K,
  CONFIG_PRICE_2K,
  CONFIG_PRICE_4K,
  CONFIG_PRICE_GRID, /* the first cell of the quality x size grid */
  CONFIG_PRICE_SLOTS = CONFIG_PRICE_GRID + 3 * 3
};

/* An upstream instance. A reseller is another instance of a kind. */
typedef struct config_provider {
  char name[64];       /* unique; shown to users and in metrics */
  char kind[16];       /* "gemini" | "openai" | "sim" */
  char base_url[512];  /* "" = the kind's official endpoint */
  char api_key[512];
  int timeout_ms;      /* whole upstream call */
  int connect_timeout_ms;
  int max_concurrency; /* calls in flight at once; 0 = unlimited */
} config_provider;

/* One way to serve a catalog model. */
typedef struct config_route {
  char model[48];
  char provider[64];
  char upstream_model[128]; /* "" = the catalog's default id for the model */
  int weight;
} config_route;

/* What one catalog model costs, in micro-dollars (1 USD = 1,000,000). Kept
 * inline so imgate_config stays copyable by value. */
typedef struct config_price {
  char model[48];                    /* catalog name; "" = unused entry */
  int64_t unit[CONFIG_PRICE_SLOTS];  /* per image; -1 = not priced (not offered) */
  int64_t reference_image;           /* surcharge per reference image */
} config_price;

typedef struct imgate_config {
  char listen[256];     /* HOST:PORT, [v6]:PORT */
  char data_dir[1024];
  char public_url[512]; /* base of image URLs; "" = from the request's Host header */
  char log_level[16];
  bool demo_account;    /* create a demo account on an empty database */
  int retention_hours;  /* how long result images stay downloadable */
  int retention_sweep_interval_ms; /* how often expired result images are deleted */
  int retention_orphan_min_age_s;  /* orphans younger than this are never removed */
  int retention_orphan_interval_ms; /* how often the orphan collector runs */

  int http_threads;            /* 0 = number of cores */
  size_t max_body_bytes;
  int connection_timeout_s;
  int max_connections;         /* open at once, all clients together */
  int max_connections_per_ip;  /* 0 = no per-address limit */
  size_t max_buffered_body_bytes; /* request bodies held in memory at once */
  int http_shutdown_timeout_ms; /* how long shutdown waits for requests in progress */
  int http_header_timeout_ms;  /* a request's head must arrive within this */
  int http_body_timeout_ms;    /* a body may pause this long ... */
  int http_body_min_rate;      /* ... and must average this many bytes per second */
  int http_send_timeout_ms;    /* the same for an answer the client reads */
  int http_send_min_rate;
  size_t http_max_header_bytes; /* request line and header fields together */
  int http_stream_keepalive_ms; /* a quiet event stream sends a comment this often */

  int max_prompt_chars;
  size_t max_image_bytes;      /* per decoded reference image */
  int max_reference_images;    /* gateway-wide cap; models may allow fewer */
  int clamped_quantity_max;    /* images per task where a dialect clamps quantity (seed 004) */

  int engine_max_in_flight;    /* tasks running on providers at once */
  int engine_drain_timeout_ms; /* how long shutdown waits for running tasks */
  int engine_max_queued;       /* tasks waiting for the engine beyond which a submit that asks
                                  to be refused when busy is (503); 0 = no limit */

  int transcode_threads;          /* threads converting images to a task's output_format */
  int64_t transcode_max_pixels;   /* larger images are not converted (decompression bombs) */

  int sim_delay_ms;
  char sim_fail_marker[128];
  char sim_moderate_marker[128];

  config_provider providers[CONFIG_MAX_PROVIDERS];
  int n_providers;
  config_route routes[CONFIG_MAX_ROUTES];
  int n_routes;

  int retry_max_attempts;      /* upstream calls per task run, first included */
  int retry_deadline_ms;       /* a run stops retrying after this long */
  int retry_backoff_base_ms;
  int retry_backoff_max_ms;
  int breaker_failures;        /* consecutive route failures that open its breaker */
  int breaker_open_ms;
  int breaker_recovery_ms;

  char sqlite_synchronous[8];  /* "full" (default) or "normal" */
  bool allow_private_networks; /* reference-image URLs may point at private addresses */
  int fetch_timeout_ms;        /* per reference-image download */
  bool fetch_allow_http;       /* plain http:// reference URLs (tests only; https otherwise) */
  char admin_token[128];       /* "" = read or create DATA/admin_token */

  config_price prices[CONFIG_MAX_PRICED_MODELS]; /* one per catalog model; see core/pricing.h */
  int n_prices;
  int64_t signup_bonus_micros;   /* credit granted to a new account */
  int64_t credit_micros;         /* one credit, for the dialects that count credits (seed 004) */
  int max_keys_per_account;      /* active API keys at once */
  int default_max_concurrency;   /* tasks in flight per account; 0 = unlimited */
  int default_qps_per_key;       /* requests per second per key; 0 = unlimited */
  int idempotency_ttl_s;         /* how long an Idempotency-Key is remembered */

  /* Webhook deliveries (webhook/client.h turns these into a webhook_config). */
  int webhook_timeout_ms;         /* one attempt, connection included */
  int webhook_connect_timeout_ms;
  /* Delay before each attempt, after the previous one (the first: after the
   * event, always 0); the count is the number of attempts. */
  int webhook_retry_schedule_ms[CONFIG_MAX_WEBHOOK_ATTEMPTS];
  int n_webhook_retry_schedule;
  int webhook_rotation_window_s;  /* the previous secret still signs this long */
  bool webhook_allow_private_networks;
  bool webhook_allow_http;
  int webhook_max_in_flight;      /* deliveries at once */
} imgate_config;

/* Fills c with the built-in defaults. */
void config_defaults(imgate_config *c);
/* Merges a JSON config file into c. Returns 0, or -1 with err set. */
int config_load_file(imgate_config *c, const char *path, char *err, size_t err_size);
/* The same for len bytes of JSON text already in memory; messages name the
 * source "config". */
int config_load_json(imgate_config *c, const char *text, size_t len, char *err,
                     size_t err_size);
/* Applies IMGATE_* environment variables. Returns 0, or -1 with err set. */
int config_load_env(imgate_config *c, char *err, size_t err_size);
/* Checks ranges and splits listen into host and port. Returns 0, or -1 with err set. */
int config_validate(const imgate_config *c, char *err, size_t err_size);
/* Adds the providers and routes that GEMINI_API_KEY / GEMINI_BASE_URL and
 * OPENAI_API_KEY / OPENAI_BASE_URL ask for, unless the file already names a
 * provider "gemini" / "openai". Routes are added for every catalog model of
 * that kind that has none. Returns 0, or -1 with err set. */
int config_apply_provider_env(imgate_config *c, char *err, size_t err_size);
/* Splits "host:port", "[v6]:port" or ":port" into host (default 127.0.0.1) and port. */
int config_split_listen(const char *listen, char *host, size_t host_size, int *port);

#endif
