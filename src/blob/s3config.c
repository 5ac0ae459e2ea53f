/* s3config.c - the S3 configuration: defaults, JSON, environment, checks. */
#include "blob/s3config.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void s3_config_defaults(s3_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->region, sizeof c->region, "us-east-1");
  c->addressing = S3_PATH_STYLE;
  c->connect_timeout_ms = 10000;
  c->request_timeout_ms = 30000;
  c->stall_timeout_s = 30;
  c->part_size = (uint64_t)16 << 20;
  c->max_parts_in_flight = 4;
}

#define FAIL(...)                            \
  do {                                       \
    snprintf(err, err_size, __VA_ARGS__);    \
    return -1;                               \
  } while (0)

/* --- sources --- */

static int set_text(char *dst, size_t size, const char *v, const char *name, char *err,
                    size_t err_size) {
  size_t n = strlen(v);
  if (n >= size) FAIL("%s: longer than %zu bytes", name, size - 1);
  memcpy(dst, v, n + 1);
  return 0;
}

static int parse_addressing(const char *v, s3_addressing *out) {
  if (strcmp(v, "path") == 0) *out = S3_PATH_STYLE;
  else if (strcmp(v, "virtual-host") == 0) *out = S3_VIRTUAL_HOST;
  else return -1;
  return 0;
}

typedef enum { K_TEXT, K_INT, K_U64, K_ADDRESSING } key_kind;

typedef struct key_spec {
  const char *name;
  key_kind kind;
  size_t offset, size;
} key_spec;

#define TEXT(n, f) {n, K_TEXT, offsetof(s3_config, f), sizeof(((s3_config *)0)->f)}
#define INT(n, f) {n, K_INT, offsetof(s3_config, f), sizeof(int)}
static const key_spec keys[] = {
    TEXT("endpoint", endpoint),
    TEXT("bucket", bucket),
    TEXT("region", region),
    TEXT("access_key_id", access_key),
    TEXT("secret_access_key", secret_key),
    TEXT("session_token", session_token),
    TEXT("resolve", resolve),
    {"addressing", K_ADDRESSING, offsetof(s3_config, addressing), sizeof(s3_addressing)},
    INT("connect_timeout_ms", connect_timeout_ms),
    INT("request_timeout_ms", request_timeout_ms),
    INT("stall_timeout_s", stall_timeout_s),
    {"part_size_bytes", K_U64, offsetof(s3_config, part_size), sizeof(uint64_t)},
    INT("max_parts_in_flight", max_parts_in_flight),
};
#undef TEXT
#undef INT

int s3_config_from_json(s3_config *c, const json_t *obj, const char *where, char *err,
                        size_t err_size) {
  if (!json_is_object(obj)) FAIL("%s: must be an object", where);
  const char *name;
  json_t *v;
  json_object_foreach((json_t *)obj, name, v) {
    const key_spec *k = NULL;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
      if (strcmp(keys[i].name, name) == 0) k = &keys[i];
    if (!k) FAIL("%s: unknown key \"%s\"", where, name);
    char *field = (char *)c + k->offset;
    char label[160];
    snprintf(label, sizeof label, "%s.%s", where, name);
    switch (k->kind) {
    case K_TEXT:
      if (!json_is_string(v)) FAIL("%s: must be a string", label);
      if (set_text(field, k->size, json_string_value(v), label, err, err_size) != 0) return -1;
      break;
    case K_ADDRESSING:
      if (!json_is_string(v) || parse_addressing(json_string_value(v), (s3_addressing *)field) != 0)
        FAIL("%s: must be \"path\" or \"virtual-host\"", label);
      break;
    case K_INT:
      if (!json_is_integer(v)) FAIL("%s: must be an integer", label);
      if (json_integer_value(v) < 0 || json_integer_value(v) > 0x7fffffff)
        FAIL("%s: out of range", label);
      *(int *)field = (int)json_integer_value(v);
      break;
    case K_U64:
      if (!json_is_integer(v) || json_integer_value(v) < 0)
        FAIL("%s: must be a non-negative integer", label);
      *(uint64_t *)field = (uint64_t)json_integer_value(v);
      break;
    }
  }
  return 0;
}

int s3_config_from_env(s3_config *c, char *err, size_t err_size) {
  static const struct {
    const char *env;
    size_t offset, size;
  } texts[] = {
      {"IMGATE_S3_ENDPOINT", offsetof(s3_config, endpoint), sizeof c->endpoint},
      {"IMGATE_S3_BUCKET", offsetof(s3_config, bucket), sizeof c->bucket},
      {"IMGATE_S3_REGION", offsetof(s3_config, region), sizeof c->region},
      {"AWS_ACCESS_KEY_ID", offsetof(s3_config, access_key), sizeof c->access_key},
      {"AWS_SECRET_ACCESS_KEY", offsetof(s3_config, secret_key), sizeof c->secret_key},
      {"AWS_SESSION_TOKEN", offsetof(s3_config, session_token), sizeof c->session_token},
  };
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
    const char *v = getenv(texts[i].env);
    if (v && set_text((char *)c + texts[i].offset, texts[i].size, v, texts[i].env, err,
                      err_size) != 0)
      return -1;
  }
  const char *style = getenv("IMGATE_S3_ADDRESSING");
  if (style && parse_addressing(style, &c->addressing) != 0)
    FAIL("IMGATE_S3_ADDRESSING: must be \"path\" or \"virtual-host\"");
  return 0;
}

/* --- checks --- */

static bool is_lower_alnum(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'); }

/* AWS's rules for new buckets (R2, MinIO and Ceph follow them): 3..63 of
 * [a-z0-9.-], a letter or digit at both ends, no "..", not an IPv4 address. */
static int check_bucket(const char *b, char *err, size_t err_size) {
  size_t n = strlen(b);
  if (n == 0) FAIL("s3 bucket: missing");
  if (n < 3 || n > 63) FAIL("s3 bucket \"%s\": must be 3 to 63 characters", b);
  for (size_t i = 0; i < n; i++)
    if (!is_lower_alnum(b[i]) && b[i] != '.' && b[i] != '-')
      FAIL("s3 bucket \"%s\": only lower-case letters, digits, '.' and '-'", b);
  if (!is_lower_alnum(b[0]) || !is_lower_alnum(b[n - 1]))
    FAIL("s3 bucket \"%s\": must start and end with a letter or digit", b);
  if (strstr(b, "..")) FAIL("s3 bucket \"%s\": no \"..\"", b);
  struct in_addr a;
  if (inet_pton(AF_INET, b, &a) == 1) FAIL("s3 bucket \"%s\": must not look like an IP address", b);
  return 0;
}

static int check_region(const char *r, char *err, size_t err_size) {
  if (!r[0]) FAIL("s3 region: missing");
  for (const char *p = r; *p; p++)
    if (!is_lower_alnum(*p) && *p != '-')
      FAIL("s3 region \"%s\": only lower-case letters, digits and '-'", r);
  return 0;
}

/* Credentials go into a header and a signing scope: no control characters,
 * no blanks; an access key also never holds '/', which separates the scope. */
static int check_credential(const char *v, const char *name, bool is_access_key, char *err,
                            size_t err_size) {
  if (!v[0]) FAIL("s3 %s: missing", name);
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    if (*p <= ' ' || *p == 0x7f) FAIL("s3 %s: no blanks or control characters", name);
    if (is_access_key && *p == '/') FAIL("s3 %s: no '/'", name);
  }
  return 0;
}

static bool host_is_ip(const char *host) {
  struct in_addr a;
  return host[0] == '[' || inet_pton(AF_INET, host, &a) == 1;
}

/* Parses and rewrites c->endpoint as scheme://host[:port] (no default port,
 * no trailing '/'); the host part alone goes to host. */
static int normalise_endpoint(s3_config *c, char *host_out, size_t host_size, char *err,
                              size_t err_size) {
  if (!c->endpoint[0]) {
    int n = snprintf(c->endpoint, sizeof c->endpoint, "https://s3.%s.amazonaws.com", c->region);
    if (n < 0 || (size_t)n >= sizeof c->endpoint) FAIL("s3 region: too long for an endpoint");
  }
  CURLU *u = curl_url();
  if (!u) FAIL("s3 endpoint: out of memory");
  char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *query = NULL, *user = NULL,
       *fragment = NULL;
  int rc = -1;
  if (curl_url_set(u, CURLUPART_URL, c->endpoint, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
    snprintf(err, err_size, "s3 endpoint \"%s\": not a URL (want https://host[:port])",
             c->endpoint);
    goto out;
  }
  curl_url_get(u, CURLUPART_PORT, &port, CURLU_NO_DEFAULT_PORT);
  curl_url_get(u, CURLUPART_PATH, &path, 0);
  curl_url_get(u, CURLUPART_QUERY, &query, 0);
  curl_url_get(u, CURLUPART_USER, &user, 0);
  curl_url_get(u, CURLUPART_FRAGMENT, &fragment, 0);
  if (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0) {
    snprintf(err, err_size, "s3 endpoint \"%s\": the scheme must be https or http", c->endpoint);
  } else if (user || query || fragment || (path && strcmp(path, "/") != 0)) {
    snprintf(err, err_size,
             "s3 endpoint \"%s\": only scheme://host[:port], no path, query or user name",
             c->endpoint);
  } else if (strlen(host) >= host_size) {
    snprintf(err, err_size, "s3 endpoint \"%s\": host name too long", c->endpoint);
  } else {
    char norm[sizeof c->endpoint];
    int n = snprintf(norm, sizeof norm, "%s://%s%s%s", scheme, host, port ? ":" : "",
                     port ? port : "");
    if (n < 0 || (size_t)n >= sizeof norm) {
      snprintf(err, err_size, "s3 endpoint: too long");
    } else {
      memcpy(c->endpoint, norm, (size_t)n + 1);
      snprintf(host_out, host_size, "%s", host);
      rc = 0;
    }
  }
out:
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_free(path);
  curl_free(query);
  curl_free(user);
  curl_free(fragment);
  curl_url_cleanup(u);
  return rc;
}

int s3_config_check(s3_config *c, char *err, size_t err_size) {
  if (check_bucket(c->bucket, err, err_size) != 0 || check_region(c->region, err, err_size) != 0 ||
      check_credential(c->access_key, "access key id", true, err, err_size) != 0 ||
      check_credential(c->secret_key, "secret access key", false, err, err_size) != 0)
    return -1;
  if (c->session_token[0] &&
      check_credential(c->session_token, "session token", false, err, err_size) != 0)
    return -1;
  char host[256];
  if (normalise_endpoint(c, host, sizeof host, err, err_size) != 0) return -1;
  if (c->addressing == S3_VIRTUAL_HOST) {
    if (host_is_ip(host))
      FAIL("s3 addressing virtual-host: the endpoint's host %s is an IP address, which cannot "
           "take the bucket as a subdomain (use path)", host);
    /* A dotted bucket name breaks the store's wildcard certificate
     * (*.s3.amazonaws.com covers one label only). */
    if (strchr(c->bucket, '.') && strncmp(c->endpoint, "https:", 6) == 0)
      FAIL("s3 addressing virtual-host: bucket \"%s\" has a '.', which the store's TLS "
           "certificate cannot cover (use path)", c->bucket);
  }
  if (c->resolve[0]) {
    const char *first = strchr(c->resolve, ':');
    const char *second = first ? strchr(first + 1, ':') : NULL;
    if (!first || first == c->resolve || !second || second == first + 1 || !second[1])
      FAIL("s3 resolve \"%s\": must be HOST:PORT:ADDRESS", c->resolve);
  }
  if (c->connect_timeout_ms < 1 || c->connect_timeout_ms > 600000)
    FAIL("s3 connect_timeout_ms: must be 1..600000");
  if (c->request_timeout_ms < 1 || c->request_timeout_ms > 3600000)
    FAIL("s3 request_timeout_ms: must be 1..3600000");
  if (c->stall_timeout_s < 1 || c->stall_timeout_s > 3600)
    FAIL("s3 stall_timeout_s: must be 1..3600");
  if (c->part_size < S3_MIN_PART_SIZE || c->part_size > S3_MAX_PART_SIZE)
    FAIL("s3 part_size_bytes: must be 5 MiB..5 GiB (%llu..%llu)",
         (unsigned long long)S3_MIN_PART_SIZE, (unsigned long long)S3_MAX_PART_SIZE);
  if (c->max_parts_in_flight < 1 || c->max_parts_in_flight > 64)
    FAIL("s3 max_parts_in_flight: must be 1..64");
  return 0;
}
