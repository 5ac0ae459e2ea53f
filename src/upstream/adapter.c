/* adapter.c - helpers shared by the HTTP provider adapters: error outcomes,
 * image decoding, Retry-After, transport failures, the parsing threads,
 * instance settings and the transfers in flight that cancel() reaches. */
#include "upstream/adapter.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/base64.h"
#include "util/log.h"
#include "util/utf8.h"

/* ---- messages ---- */

char *adapter_clean_text(char *dst, size_t dst_size, const char *src, size_t max_bytes) {
  if (!dst || dst_size == 0) return dst;
  if (!src) src = "";
  /* Cut on a character boundary: jansson refuses strings that are not UTF-8. */
  size_t n = utf8_cut(src, dst_size - 1 < max_bytes ? dst_size - 1 : max_bytes);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)src[i];
    dst[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
  }
  dst[n] = '\0';
  return dst;
}

provider_outcome *adapter_error(int http_status, provider_error_class cls, bool retryable,
                                const char *code, const char *fmt, ...) {
  bool moderated = cls == PROVIDER_ERR_MODERATED;
  provider_outcome *o = provider_outcome_new(moderated ? PROVIDER_MODERATED : PROVIDER_FAILED);
  if (!o) return NULL;
  o->error_class = cls;
  o->retryable = moderated ? false : retryable;
  o->http_status = http_status;
  snprintf(o->error_code, sizeof o->error_code, "%s", code);
  char text[2 * sizeof o->error_message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  adapter_clean_text(o->error_message, sizeof o->error_message, text, sizeof o->error_message);
  return o;
}

provider_outcome *adapter_spare_outcome(void) {
  return adapter_error(0, PROVIDER_ERR_INTERNAL, true, "internal_error",
                       "out of memory while reading the upstream answer");
}

/* ---- images ---- */

/* Resellers sometimes wrap base64 as a data: URL; the payload is the same. */
static void adapter_skip_data_url(const char **b64, size_t *len) {
  if (*len < 5 || strncasecmp(*b64, "data:", 5) != 0) return;
  size_t scan = *len < 128 ? *len : 128;
  static const char marker[] = ";base64,";
  for (size_t i = 5; i + sizeof marker - 1 <= scan; i++) {
    if (memcmp(*b64 + i, marker, sizeof marker - 1) == 0) {
      *b64 += i + sizeof marker - 1;
      *len -= i + sizeof marker - 1;
      return;
    }
  }
}

int adapter_image_from_bytes(uint8_t *data, size_t n, provider_image *img, const char **why) {
  memset(img, 0, sizeof *img);
  imagefmt fmt = data ? imagefmt_detect(data, n) : IMAGEFMT_UNKNOWN;
  int w = 0, h = 0;
  if (fmt == IMAGEFMT_UNKNOWN) {
    *why = "the image data is not a known image format";
    return -1;
  }
  if (!imagefmt_dimensions(data, n, &w, &h) && fmt != IMAGEFMT_HEIC) {
    *why = "the image header is truncated or malformed";
    return -1;
  }
  img->data = data;
  img->len = n;
  snprintf(img->mime, sizeof img->mime, "%s", imagefmt_mime(fmt));
  img->width = w;
  img->height = h;
  return 0;
}

int adapter_decode_image(const char *b64, size_t len, provider_image *img, const char **why) {
  memset(img, 0, sizeof *img);
  if (!b64) {
    *why = "no image data";
    return -1;
  }
  adapter_skip_data_url(&b64, &len);
  uint8_t *data = NULL;
  size_t n = 0;
  int rc = base64_decode(b64, len, ADAPTER_MAX_IMAGE_BYTES, &data, &n);
  if (rc != 0) {
    *why = rc == -2 ? "the image is larger than 64 MiB" : "the image data is not valid base64";
    return -1;
  }
  if (adapter_image_from_bytes(data, n, img, why) != 0) {
    free(data);
    return -1;
  }
  return 0;
}

imagefmt adapter_input_format(const provider_input *in) {
  imagefmt fmt = in->data ? imagefmt_detect(in->data, in->len) : IMAGEFMT_UNKNOWN;
  if (fmt == IMAGEFMT_UNKNOWN && in->mime) fmt = imagefmt_from_mime(in->mime);
  return fmt;
}

/* ---- waiting times ---- */

/* Reads a non-negative decimal ("12", "1.5") at *s counting unit_ms
 * milliseconds per unit, rounding up, clamped to the maximum; advances *s
 * past it. -1 when there is no number there. */
static int64_t adapter_decimal_ms(const char **s, int64_t unit_ms) {
  const char *p = *s;
  if (!isdigit((unsigned char)*p)) return -1;
  int64_t whole = 0;
  for (; isdigit((unsigned char)*p); p++)
    if (whole <= ADAPTER_MAX_RETRY_AFTER_MS) whole = whole * 10 + (*p - '0');
  int64_t ms = whole * unit_ms; /* whole stays below 1e10 and unit_ms <= 1000: no overflow */
  if (*p == '.') {
    p++;
    if (!isdigit((unsigned char)*p)) return -1;
    int64_t frac = 0, scale = 1;
    bool rest = false;
    for (; isdigit((unsigned char)*p); p++) {
      if (scale < 1000000000) {
        frac = frac * 10 + (*p - '0');
        scale *= 10;
      } else if (*p != '0') {
        rest = true;
      }
    }
    int64_t num = frac * unit_ms;
    ms += num / scale + ((num % scale || rest) ? 1 : 0);
  }
  *s = p;
  return ms > ADAPTER_MAX_RETRY_AFTER_MS ? ADAPTER_MAX_RETRY_AFTER_MS : ms;
}

int64_t adapter_duration_ms(const char *s) {
  if (!s) return -1;
  int64_t ms = adapter_decimal_ms(&s, 1000);
  if (ms < 0 || s[0] != 's' || s[1] != '\0') return -1;
  return ms;
}

/* A whole header value as a decimal in unit_ms units, surrounding blanks allowed; -1 otherwise. */
static int64_t adapter_header_decimal(const char *v, int64_t unit_ms) {
  while (*v == ' ' || *v == '\t') v++;
  int64_t ms = adapter_decimal_ms(&v, unit_ms);
  while (*v == ' ' || *v == '\t') v++;
  return ms >= 0 && *v == '\0' ? ms : -1;
}

int64_t adapter_retry_after_ms(const char *retry_after, const char *retry_after_ms, time_t now) {
  if (retry_after_ms && *retry_after_ms) {
    int64_t ms = adapter_header_decimal(retry_after_ms, 1);
    if (ms >= 0) return ms;
  }
  if (!retry_after || !*retry_after) return 0;
  const char *v = retry_after;
  while (*v == ' ' || *v == '\t') v++;
  if (isdigit((unsigned char)*v)) {
    int64_t ms = adapter_header_decimal(v, 1000);
    return ms >= 0 ? ms : 0;
  }
  if (!isalpha((unsigned char)*v)) return 0; /* "-5" and the like: not a date either */
  time_t at = curl_getdate(v, NULL);
  if (at == (time_t)-1 || at <= now) return 0;
  int64_t secs = (int64_t)(at - now);
  if (secs > ADAPTER_MAX_RETRY_AFTER_MS / 1000) return ADAPTER_MAX_RETRY_AFTER_MS;
  return secs * 1000;
}

/* ---- classes ---- */

adapter_class adapter_status_class(int status) {
  if (status == 401 || status == 403)
    return (adapter_class){PROVIDER_ERR_AUTH, true, "upstream_auth"};
  if (status == 402) return (adapter_class){PROVIDER_ERR_CREDIT, true, "upstream_credit"};
  if (status == 404)
    return (adapter_class){PROVIDER_ERR_AUTH, true, "upstream_model_not_found"};
  if (status == 408) return (adapter_class){PROVIDER_ERR_TIMEOUT, true, "upstream_timeout"};
  if (status == 429)
    return (adapter_class){PROVIDER_ERR_RATE_LIMITED, true, "upstream_rate_limited"};
  if (status == 409 || (status >= 500 && status <= 599))
    return (adapter_class){PROVIDER_ERR_SERVER, true, "upstream_unavailable"};
  if (status >= 400 && status <= 499)
    return (adapter_class){PROVIDER_ERR_BAD_REQUEST, false, "upstream_bad_request"};
  return (adapter_class){PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response"};
}

/* ---- transport ---- */

bool adapter_transport_ok(const curlloop_result *res) {
  return !res->cancelled && !res->aborted && !res->body_truncated &&
         (res->code == CURLE_OK || res->sink_refused) && res->http_status > 0;
}

void adapter_set_canceled(provider_outcome *o, const char *who) {
  for (size_t i = 0; i < o->n_images; i++) {
    free(o->images[i].data);
    blob_stream_abort(o->images[i].staged);
  }
  free(o->images);
  o->images = NULL;
  o->n_images = 0;
  o->status = PROVIDER_FAILED;
  o->error_class = PROVIDER_ERR_CANCELED;
  o->retryable = false;
  o->http_status = 0;
  o->retry_after_ms = 0;
  snprintf(o->error_code, sizeof o->error_code, "%s", PROVIDER_CANCELED_CODE);
  snprintf(o->error_message, sizeof o->error_message, "%s: the call was canceled", who);
}

provider_outcome *adapter_transport_outcome(const curlloop_result *res, const char *who) {
  int status = (int)res->http_status;
  if (res->aborted) {
    provider_outcome *o = provider_outcome_new(PROVIDER_FAILED);
    if (o) adapter_set_canceled(o, who);
    return o;
  }
  if (res->body_truncated)
    return adapter_error(status, PROVIDER_ERR_BAD_RESPONSE, true, "upstream_bad_response",
                         "%s: the answer is larger than %zu MiB", who,
                         ADAPTER_MAX_RESPONSE_BYTES >> 20);
  const char *detail = res->error[0] ? res->error : curl_easy_strerror(res->code);
  if (res->code == CURLE_OPERATION_TIMEDOUT)
    return adapter_error(status, PROVIDER_ERR_TIMEOUT, true, "upstream_timeout",
                         "%s: timed out: %s", who, detail);
  if (res->code == CURLE_OK) detail = "no HTTP answer";
  return adapter_error(status, PROVIDER_ERR_NETWORK, true, "upstream_unavailable",
                       "%s: could not reach the upstream: %s", who, detail);
}

void adapter_take_answer(curlloop_result *dst, curlloop_result *res) {
  *dst = *res;
  res->body = (buf)BUF_INIT; /* the body now belongs to dst */
}

/* ---- transfers in flight ---- */

static adapter_flights *adapter_flights_new(void) {
  adapter_flights *fl = calloc(1, sizeof *fl);
  if (fl && pthread_mutex_init(&fl->lock, NULL) != 0) {
    free(fl);
    return NULL;
  }
  return fl;
}

/* The loop must be gone, or idle, by now: its callbacks unregister. */
static void adapter_flights_free(adapter_flights *fl) {
  if (!fl) return;
  pthread_mutex_destroy(&fl->lock);
  free(fl);
}

static adapter_flight **adapter_flight_bucket(adapter_flights *fl, const void *ctx) {
  uint64_t h = (uint64_t)(uintptr_t)ctx * 0x9e3779b97f4a7c15u; /* Fibonacci hashing */
  return &fl->buckets[h >> 56]; /* the top 8 bits: ADAPTER_FLIGHT_BUCKETS is 256 */
}

_Static_assert(ADAPTER_FLIGHT_BUCKETS == 256, "adapter_flight_bucket takes 8 bits");

static void adapter_flight_unlink(adapter_flights *fl, adapter_flight *f) {
  if (f->prev)
    f->prev->next = f->next;
  else
    *adapter_flight_bucket(fl, f->ctx) = f->next;
  if (f->next) f->next->prev = f->prev;
  f->prev = f->next = NULL;
  f->registered = false;
}

int adapter_flight_submit(adapter_instance *ai, adapter_flight *f, void *ctx, CURL *easy,
                          const curlloop_sink *sink, curlloop_done_fn on_done, void *done_ctx) {
  adapter_flights *fl = ai->flights;
  f->ctx = ctx;
  f->id = 0;
  f->prev = NULL;
  pthread_mutex_lock(&fl->lock);
  adapter_flight **bucket = adapter_flight_bucket(fl, ctx);
  f->next = *bucket;
  if (f->next) f->next->prev = f;
  *bucket = f;
  f->registered = true;
  /* Submitted under the lock: the callback may run on the loop thread before
   * the submit returns, and its adapter_flight_landed must find f complete,
   * id included (the loop writes it before the transfer can start). */
  int rc = curlloop_submit_sink(ai->loop, easy, ADAPTER_MAX_RESPONSE_BYTES, sink, on_done, done_ctx,
                                &f->id);
  if (rc != 0) adapter_flight_unlink(fl, f);
  pthread_mutex_unlock(&fl->lock);
  return rc;
}

void adapter_flight_landed(adapter_instance *ai, adapter_flight *f) {
  adapter_flights *fl = ai->flights;
  pthread_mutex_lock(&fl->lock);
  if (f->registered) adapter_flight_unlink(fl, f);
  pthread_mutex_unlock(&fl->lock);
}

void adapter_flights_cancel(adapter_instance *ai, void *ctx) {
  adapter_flights *fl = ai->flights;
  int refused = 0;
  pthread_mutex_lock(&fl->lock);
  for (adapter_flight *f = *adapter_flight_bucket(fl, ctx); f; f = f->next)
    if (f->ctx == ctx && curlloop_cancel(ai->loop, f->id) != 0) refused++;
  pthread_mutex_unlock(&fl->lock);
  if (refused) LOG_WARN("adapter_cancel_refused", "transfers=%d", refused);
}

/* ---- instances ---- */

static bool adapter_has_control(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s <= 0x20 || *s == 0x7f) return true;
  return false;
}

static bool adapter_ends_with(const char *s, size_t len, const char *suffix) {
  size_t n = strlen(suffix);
  return len >= n && strcmp(s + len - n, suffix) == 0;
}

/* Why cfg cannot be used, or NULL when it can. */
static const char *adapter_config_problem(const provider_instance_config *cfg, const char *kind,
                                          size_t name_size) {
  if (!cfg->name || !*cfg->name || strlen(cfg->name) >= name_size) return "bad name";
  if (cfg->kind && strcmp(cfg->kind, kind) != 0) return "wrong kind";
  if (!cfg->base_url || adapter_has_control(cfg->base_url) ||
      (strncasecmp(cfg->base_url, "http://", 7) != 0 &&
       strncasecmp(cfg->base_url, "https://", 8) != 0))
    return "base_url must be an http:// or https:// URL";
  /* The key goes into a request header: a line break there would inject headers. */
  if (!cfg->api_key || !*cfg->api_key || adapter_has_control(cfg->api_key))
    return "api_key is missing or holds spaces or control characters";
  return NULL;
}

bool adapter_instance_init(adapter_instance *ai, provider *base,
                           const provider_instance_config *cfg, const char *kind,
                           const char *version_suffix, curlloop *loop) {
  memset(ai, 0, sizeof *ai);
  const char *problem = !cfg    ? "no configuration"
                        : !loop ? "no curl loop"
                                : adapter_config_problem(cfg, kind, sizeof base->name);
  if (problem) {
    char qname[80];
    LOG_ERROR("provider_bad_config", "kind=%s name=%s reason=\"%s\"", kind,
              log_quote(cfg && cfg->name ? cfg->name : "", qname, sizeof qname), problem);
    return false;
  }
  ai->base_url = strdup(cfg->base_url);
  ai->api_key = strdup(cfg->api_key);
  ai->pool = workpool_create(ADAPTER_POOL_THREADS, NULL);
  ai->flights = adapter_flights_new();
  if (!ai->base_url || !ai->api_key || !ai->pool || !ai->flights) {
    adapter_instance_free(ai);
    return false;
  }
  size_t len = strlen(ai->base_url);
  while (len > 0 && ai->base_url[len - 1] == '/') ai->base_url[--len] = '\0';
  if (version_suffix && adapter_ends_with(ai->base_url, len, version_suffix)) {
    len -= strlen(version_suffix);
    ai->base_url[len] = '\0';
    while (len > 0 && ai->base_url[len - 1] == '/') ai->base_url[--len] = '\0';
  }
  ai->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : ADAPTER_DEFAULT_TIMEOUT_MS;
  ai->connect_timeout_ms =
      cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : ADAPTER_DEFAULT_CONNECT_TIMEOUT_MS;
  ai->loop = loop;
  snprintf(base->name, sizeof base->name, "%s", cfg->name);
  return true;
}

void adapter_instance_free(adapter_instance *ai) {
  if (!ai) return;
  workpool_destroy(ai->pool);
  ai->pool = NULL;
  adapter_flights_free(ai->flights);
  ai->flights = NULL;
  free(ai->base_url);
  free(ai->api_key);
  ai->base_url = ai->api_key = NULL;
}

provider *adapter_provider_create(const provider_instance_config *cfg, const provider_ops *ops,
                                  const char *version_suffix, curlloop *loop) {
  adapter_provider *ap = calloc(1, sizeof *ap);
  if (!ap) return NULL;
  ap->base.ops = ops;
  if (!adapter_instance_init(&ap->inst, &ap->base, cfg, ops->kind, version_suffix, loop)) {
    free(ap);
    return NULL;
  }
  return &ap->base;
}

void adapter_provider_destroy(provider *p) {
  adapter_provider *ap = (adapter_provider *)p;
  if (!ap) return;
  adapter_instance_free(&ap->inst);
  free(ap);
}

void adapter_provider_drain(provider *p, const provider_ops *ops) {
  if (p && p->ops == ops) workpool_drain(((adapter_provider *)p)->inst.pool);
}

void adapter_provider_cancel(provider *p, void *ctx) {
  if (p) adapter_flights_cancel(&((adapter_provider *)p)->inst, ctx);
}

CURL *adapter_easy_new(const adapter_instance *ai, const char *url, long timeout_ms) {
  CURL *easy = curlloop_easy_new(ai->loop);
  if (!easy) return NULL;
  /* The caller's budget (what is left of the task's deadline) narrows the
   * instance's own timeout; it never lengthens it. */
  long budget = timeout_ms > 0 && timeout_ms < ai->timeout_ms ? timeout_ms : ai->timeout_ms;
  bool ok = curl_easy_setopt(easy, CURLOPT_URL, url) == CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_POST, 1L) == CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, budget) == CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, ai->connect_timeout_ms) == CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
            curl_easy_setopt(easy, CURLOPT_USERAGENT, "imgate") == CURLE_OK;
  if (!ok) {
    curl_easy_cleanup(easy);
    return NULL;
  }
  return easy;
}

bool adapter_add_header(struct curl_slist **list, const char *name, const char *value) {
  size_t n = strlen(name) + (value ? strlen(value) : 0) + 3;
  char *line = malloc(n);
  if (!line) return false;
  if (value)
    snprintf(line, n, "%s: %s", name, value);
  else
    snprintf(line, n, "%s:", name);
  struct curl_slist *l = curl_slist_append(*list, line);
  free(line);
  if (!l) return false;
  *list = l;
  return true;
}
