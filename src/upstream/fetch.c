/* fetch.c - reference-image downloads through the curl loop, with the SSRF
 * guard of netguard.h on every hop. Redirects are followed here, one
 * transfer per hop, each on a fresh connection (see fetch.h for why libcurl's
 * own redirect following is not used). */
#include "upstream/fetch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/imagefmt.h"
#include "util/timeutil.h"

#define FETCH_DEFAULT_TIMEOUT_MS 30000L

typedef struct fetch_job {
  curlloop *loop;
  fetch_config cfg;
  fetch_done_fn done;
  void *ctx;
  int64_t deadline_ms; /* time_mono_ms() */
  long hops;
  netguard guard; /* the open-socket hook's state: which address it refused */
} fetch_job;

bool fetch_address_is_private(const struct sockaddr *addr) {
  return netguard_address_is_private(addr);
}

/* --- results --- */

static void result_init(fetch_result *r) {
  memset(r, 0, sizeof *r);
}

static void result_set(fetch_result *r, fetch_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void result_set(fetch_result *r, fetch_status st, const char *fmt, ...) {
  r->status = st;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->message, sizeof r->message, fmt, ap);
  va_end(ap);
}

/* Ends the job: the easy handle goes (its OPENSOCKETDATA points at job), then
 * the owner hears the outcome. */
static void job_finish(fetch_job *job, CURL *easy, fetch_result *r) {
  curl_easy_cleanup(easy);
  fetch_done_fn done = job->done;
  void *ctx = job->ctx;
  free(job);
  done(ctx, r);
}

/* --- URLs --- */

static netguard_config guard_config(const fetch_config *cfg) {
  return (netguard_config){.allow_private = cfg->allow_private,
                           .allow_http = cfg->allow_http,
                           .address_refused = cfg->address_refused,
                           .address_refused_ctx = cfg->address_refused_ctx};
}

/* Parses url with libcurl's own parser (the one the transfer will use) and
 * returns its normalised form (curl_free it), or NULL with r filled. */
static char *checked_url(const fetch_config *cfg, const char *url, fetch_result *r) {
  netguard_config gc = guard_config(cfg);
  char *norm = NULL, detail[128];
  switch (netguard_check_url(&gc, url, &norm, detail, sizeof detail)) {
  case NETGUARD_URL_OK:
    return norm;
  case NETGUARD_URL_UNUSABLE:
    result_set(r, FETCH_REFUSED_SCHEME, "not a usable URL: %s", detail);
    break;
  case NETGUARD_URL_SCHEME:
    result_set(r, FETCH_REFUSED_SCHEME, "%s URLs are not fetched (only %s)", detail,
               cfg->allow_http ? "http and https" : "https");
    break;
  }
  return NULL;
}

/* --- transfers --- */

static void on_hop_done(void *ctx, CURL *easy, curlloop_result *res);

static bool configure_easy(CURL *e, fetch_job *job) {
  netguard_config gc = guard_config(&job->cfg);
  bool ok = netguard_apply(e, &job->guard, &gc) &&
            curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_USERAGENT, "imgate") == CURLE_OK;
  /* A declared Content-Length over the cap fails before the body is read; a
   * chunked answer is stopped by the loop's body cap instead. */
  if (ok && job->cfg.max_bytes > 0)
    ok = curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)job->cfg.max_bytes) ==
         CURLE_OK;
  return ok;
}

/* Starts the next hop on easy. False when it could not (r filled). */
static bool submit_hop(fetch_job *job, CURL *easy, const char *url, fetch_result *r) {
  int64_t left = job->deadline_ms - time_mono_ms();
  if (left <= 0) {
    result_set(r, FETCH_NETWORK_ERROR, "timed out after %ld ms", job->cfg.timeout_ms);
    return false;
  }
  netguard_forget(&job->guard);
  if (curl_easy_setopt(easy, CURLOPT_URL, url) != CURLE_OK ||
      curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long)left) != CURLE_OK) {
    result_set(r, FETCH_NETWORK_ERROR, "out of memory");
    return false;
  }
  if (curlloop_submit(job->loop, easy, job->cfg.max_bytes, on_hop_done, job) != 0) {
    result_set(r, FETCH_CANCELLED, "the download could not start (shutting down or out of memory)");
    return false;
  }
  return true;
}

/* Only these ask the client to fetch another URL. 300 offers choices, 304
 * answers a conditional request this client never makes, 305/306 are dead:
 * for a download they are plain failures, even with a Location. */
static bool is_redirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* A redirect status: true when the next hop is under way (then job and
 * easy belong to it); false with r filled otherwise. */
static bool follow(fetch_job *job, CURL *easy, long status, fetch_result *r) {
  char *next = NULL;
  curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &next);
  if (!next) {
    result_set(r, FETCH_HTTP_ERROR, "the server answered %ld without a Location", status);
    return false;
  }
  if (job->hops >= job->cfg.max_redirects) {
    result_set(r, FETCH_HTTP_ERROR, "more than %ld redirects", job->cfg.max_redirects);
    return false;
  }
  char *url = checked_url(&job->cfg, next, r);
  if (!url) return false;
  job->hops++;
  bool started = submit_hop(job, easy, url, r);
  curl_free(url);
  return started;
}

static void judge_body(curlloop_result *res, fetch_result *r) {
  imagefmt fmt = imagefmt_detect((const uint8_t *)res->body.data, res->body.len);
  if (fmt == IMAGEFMT_UNKNOWN) {
    result_set(r, FETCH_NOT_IMAGE, "not a PNG, JPEG, WebP or HEIC image (%zu bytes)",
               res->body.len);
    return;
  }
  r->len = res->body.len;
  r->data = (uint8_t *)buf_steal(&res->body);
  snprintf(r->mime, sizeof r->mime, "%s", imagefmt_mime(fmt));
  result_set(r, FETCH_OK, "ok");
}

static void on_hop_done(void *ctx, CURL *easy, curlloop_result *res) {
  fetch_job *job = ctx;
  fetch_result r;
  result_init(&r);
  r.http_status = res->http_status;
  if (res->cancelled) {
    result_set(&r, FETCH_CANCELLED, "cancelled: shutting down");
  } else if (netguard_refused_address(&job->guard) && res->code != CURLE_OK) {
    result_set(&r, FETCH_REFUSED_ADDRESS, "refused to connect to %s: not a public address",
               netguard_refused_address(&job->guard));
  } else if (res->body_truncated || res->code == CURLE_FILESIZE_EXCEEDED) {
    result_set(&r, FETCH_TOO_LARGE, "the image is larger than %zu bytes", job->cfg.max_bytes);
  } else if (res->code != CURLE_OK) {
    result_set(&r, FETCH_NETWORK_ERROR, "%s", res->error);
  } else if (is_redirect(res->http_status)) {
    if (follow(job, easy, res->http_status, &r)) return;
  } else if (res->http_status < 200 || res->http_status >= 300) {
    result_set(&r, FETCH_HTTP_ERROR, "the server answered %ld", res->http_status);
  } else {
    judge_body(res, &r);
  }
  job_finish(job, easy, &r);
}

int fetch_start(curlloop *loop, const fetch_config *cfg, const char *url, fetch_done_fn done,
                void *ctx, fetch_result *immediate) {
  fetch_result spare;
  fetch_result *r = immediate ? immediate : &spare;
  result_init(r);
  if (!loop || !cfg || !url || !done) {
    result_set(r, FETCH_NETWORK_ERROR, "fetch_start: missing argument");
    return -1;
  }
  char *norm = checked_url(cfg, url, r);
  if (!norm) return -1;
  fetch_job *job = calloc(1, sizeof *job);
  CURL *easy = job ? curlloop_easy_new(loop) : NULL;
  int rc = -1;
  if (!easy) {
    result_set(r, FETCH_NETWORK_ERROR, "out of memory");
  } else {
    job->loop = loop;
    job->cfg = *cfg;
    if (job->cfg.timeout_ms <= 0) job->cfg.timeout_ms = FETCH_DEFAULT_TIMEOUT_MS;
    job->done = done;
    job->ctx = ctx;
    job->deadline_ms = time_mono_ms() + job->cfg.timeout_ms;
    if (!configure_easy(easy, job)) result_set(r, FETCH_NETWORK_ERROR, "out of memory");
    else if (submit_hop(job, easy, norm, r)) rc = 0;
  }
  curl_free(norm);
  if (rc != 0) {
    if (easy) curl_easy_cleanup(easy);
    free(job);
  }
  return rc;
}
