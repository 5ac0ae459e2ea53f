/* config.c - defaults, JSON file, environment. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

void config_defaults(imgate_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->listen, sizeof c->listen, "127.0.0.1:8080");
  snprintf(c->data_dir, sizeof c->data_dir, "./var");
  snprintf(c->log_level, sizeof c->log_level, "info");
  c->demo_account = true;
  c->retention_hours = 168;
  c->http_threads = 0;
  /* 10 reference images of a few MB each, base64-inflated, fit comfortably. */
  c->max_body_bytes = 32u << 20;
  c->connection_timeout_s = 60;
  c->max_prompt_chars = 32000;
  c->max_image_bytes = 7u << 20; /* Gemini's documented per-image ceiling */
  c->max_reference_images = 10;
  c->engine_max_in_flight = 256;
  c->engine_drain_timeout_ms = 10000;
  c->sim_delay_ms = 1500;
}

/* A table of the file's keys: where each lands and how it is typed. The
 * table keeps loading, validation messages and docs in one place. */
typedef enum { K_STR, K_INT, K_SIZE, K_BOOL, K_OBJ } key_kind;

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
    {"http", K_OBJ, 0, 0, 0, 0},
    {"http.threads", K_INT, F(http_threads), 0, 1024},
    {"http.max_body_bytes", K_SIZE, F(max_body_bytes), 1024, 1LL << 30},
    {"http.connection_timeout_s", K_INT, F(connection_timeout_s), 1, 3600},
    {"limits", K_OBJ, 0, 0, 0, 0},
    {"limits.max_prompt_chars", K_INT, F(max_prompt_chars), 1, 1000000},
    {"limits.max_image_bytes", K_SIZE, F(max_image_bytes), 1, 1LL << 30},
    {"limits.max_reference_images", K_INT, F(max_reference_images), 0, 10},
    {"engine", K_OBJ, 0, 0, 0, 0},
    {"engine.max_in_flight", K_INT, F(engine_max_in_flight), 1, 1000000},
    {"engine.drain_timeout_ms", K_INT, F(engine_drain_timeout_ms), 0, 3600000},
    {"sim", K_OBJ, 0, 0, 0, 0},
    {"sim.delay_ms", K_INT, F(sim_delay_ms), 0, 3600000},
    {"sim.fail_marker", K_STR, F(sim_fail_marker), 0, 0},
    {"sim.moderate_marker", K_STR, F(sim_moderate_marker), 0, 0},
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
    case K_SIZE:
      if (!json_is_integer(value)) goto wrong_type;
      if (set_int_field(c, k, json_integer_value(value), err, err_size) < 0) return -1;
      break;
    case K_BOOL:
      if (!json_is_boolean(value)) goto wrong_type;
      *(bool *)((char *)c + k->offset) = json_is_true(value);
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

int config_load_file(imgate_config *c, const char *path, char *err, size_t err_size) {
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    snprintf(err, err_size, "%s:%d: %s", path, jerr.line, jerr.text);
    return -1;
  }
  int rc = 0;
  if (!json_is_object(root)) {
    snprintf(err, err_size, "%s: the configuration must be a JSON object", path);
    rc = -1;
  } else {
    rc = apply_json(c, root, "", err, err_size);
  }
  json_decref(root);
  return rc;
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
  return 0;
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
  if (!c->data_dir[0]) {
    snprintf(err, err_size, "data_dir: must not be empty");
    return -1;
  }
  if (strcmp(c->log_level, "debug") && strcmp(c->log_level, "info") &&
      strcmp(c->log_level, "warn") && strcmp(c->log_level, "error")) {
    snprintf(err, err_size, "log_level: one of debug, info, warn, error");
    return -1;
  }
  return 0;
}
