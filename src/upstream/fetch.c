/* fetch.c - reference-image downloads through the curl loop, with an SSRF guard.
 *
 * The guard sits in CURLOPT_OPENSOCKETFUNCTION: libcurl hands over the exact
 * address it is about to connect to, after its own DNS resolution, so the
 * address checked is the address used. Redirects are followed here, one
 * transfer per hop, each on a fresh connection (see fetch.h for why libcurl's
 * own redirect following is not used). */
#include "upstream/fetch.h"

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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
  bool refused;
  char refused_addr[INET6_ADDRSTRLEN];
} fetch_job;

/* --- the address policy --- */

typedef struct v4_range {
  uint32_t net;
  int prefix;
} v4_range;

#define V4(a, b, c, d) \
  ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (uint32_t)(d))

static const v4_range v4_refused[] = {
    {V4(0, 0, 0, 0), 8},         /* "this network", includes 0.0.0.0 */
    {V4(10, 0, 0, 0), 8},        /* RFC 1918 */
    {V4(100, 64, 0, 0), 10},     /* CGNAT */
    {V4(127, 0, 0, 0), 8},       /* loopback */
    {V4(169, 254, 0, 0), 16},    /* link-local, cloud metadata */
    {V4(172, 16, 0, 0), 12},     /* RFC 1918 */
    {V4(192, 0, 0, 0), 24},      /* IETF protocol assignments */
    {V4(192, 0, 2, 0), 24},      /* TEST-NET-1 */
    {V4(192, 88, 99, 0), 24},    /* 6to4 relay anycast (deprecated): a tunnel into IPv6 */
    {V4(192, 168, 0, 0), 16},    /* RFC 1918 */
    {V4(198, 18, 0, 0), 15},     /* benchmarking */
    {V4(198, 51, 100, 0), 24},   /* TEST-NET-2 */
    {V4(203, 0, 113, 0), 24},    /* TEST-NET-3 */
    {V4(224, 0, 0, 0), 4},       /* multicast */
    {V4(240, 0, 0, 0), 4},       /* reserved, includes 255.255.255.255 broadcast */
};

static bool v4_is_private(uint32_t a) {
  for (size_t i = 0; i < sizeof v4_refused / sizeof v4_refused[0]; i++) {
    uint32_t mask = 0xffffffffu << (32 - v4_refused[i].prefix);
    if ((a & mask) == v4_refused[i].net) return true;
  }
  return false;
}

static uint32_t v4_at(const uint8_t *p) { return V4(p[0], p[1], p[2], p[3]); }

/* IPv6 prefixes by their leading bytes (the bytes past prefix/8 are zero). */
typedef struct v6_range {
  uint8_t net[6];
  int prefix; /* at most 48 */
} v6_range;

static bool v6_in(const uint8_t b[16], const v6_range *r) {
  assert(r->prefix > 0 && r->prefix <= 8 * (int)sizeof r->net);
  int whole = r->prefix / 8, rest = r->prefix % 8;
  if (memcmp(b, r->net, (size_t)whole) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (b[whole] & mask) == r->net[whole];
}

/* Inside 2000::/3 (the only block IANA has handed out for global unicast),
 * special-purpose prefixes no image host lives in. */
static const v6_range v6_refused[] = {
    {{0x20, 0x01, 0x00, 0x00}, 23}, /* IETF protocol assignments: Teredo 2001::/32,
                                       benchmarking, ORCHID, AMT, anycast */
    {{0x20, 0x01, 0x0d, 0xb8}, 32}, /* documentation */
    {{0x20, 0x02}, 16},             /* 6to4: a tunnel to any IPv4 address, 127.0.0.1 too */
    {{0x3f, 0xff, 0x00}, 20},       /* documentation (RFC 9637) */
};

static bool v6_is_private(const uint8_t b[16]) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const uint8_t compatible[12] = {0};
  static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  /* Forms that carry an IPv4 address in their last 32 bits are judged by it:
   * mapped ::ffff:0:0/96, compatible ::/96 (deprecated; it also covers :: and
   * ::1, which land in 0.0.0.0/8) and the well-known NAT64 prefix
   * 64:ff9b::/96, where a DNS64 resolver puts every public IPv4 host, so it
   * must stay usable. */
  if (memcmp(b, mapped, 12) == 0 || memcmp(b, compatible, 12) == 0 ||
      memcmp(b, nat64, 12) == 0)
    return v4_is_private(v4_at(b + 12));
  /* Everything outside 2000::/3 is refused: loopback and unspecified (above),
   * ULA fc00::/7, link-local fe80::/10, old site-local fec0::/10, multicast
   * ff00::/8, discard-only 100::/64, local-use NAT64 64:ff9b:1::/48, SRv6
   * 5f00::/16, and whatever IANA reserves there next. */
  if ((b[0] & 0xe0) != 0x20) return true;
  for (size_t i = 0; i < sizeof v6_refused / sizeof v6_refused[0]; i++)
    if (v6_in(b, &v6_refused[i])) return true;
  return false;
}

bool fetch_address_is_private(const struct sockaddr *addr) {
  if (!addr) return true;
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    return v4_is_private(ntohl(in->sin_addr.s_addr));
  }
  if (addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
    return v6_is_private(in6->sin6_addr.s6_addr);
  }
  return true;
}

static bool job_refuses(const fetch_job *job, const struct sockaddr *sa) {
  if (job->cfg.address_refused) return job->cfg.address_refused(sa, job->cfg.address_refused_ctx);
  return !job->cfg.allow_private && fetch_address_is_private(sa);
}

static void format_addr(const struct sockaddr *sa, char *out, size_t size) {
  const void *src = NULL;
  if (sa->sa_family == AF_INET) src = &((const struct sockaddr_in *)sa)->sin_addr;
  else if (sa->sa_family == AF_INET6) src = &((const struct sockaddr_in6 *)sa)->sin6_addr;
  if (!src || !inet_ntop(sa->sa_family, src, out, (socklen_t)size))
    snprintf(out, size, "(address family %d)", (int)sa->sa_family);
}

/* libcurl calls this for every address it tries, on every hop. Copying into a
 * sockaddr_storage gives an aligned, large enough object whatever the family. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  fetch_job *job = ud;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  size_t n = a->addrlen < sizeof ss ? a->addrlen : sizeof ss;
  memcpy(&ss, &a->addr, n);
  const struct sockaddr *sa = (const struct sockaddr *)&ss;
  if (job_refuses(job, sa)) {
    if (!job->refused) format_addr(sa, job->refused_addr, sizeof job->refused_addr);
    job->refused = true;
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
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

/* Parses url with libcurl's own parser (the one the transfer will use) and
 * returns its normalised form (curl_free it), or NULL with r filled. */
static char *checked_url(const fetch_config *cfg, const char *url, fetch_result *r) {
  CURLU *u = curl_url();
  if (!u) {
    result_set(r, FETCH_NETWORK_ERROR, "out of memory");
    return NULL;
  }
  char *scheme = NULL, *norm = NULL;
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (uc == CURLUE_OK) uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
  if (uc != CURLUE_OK) {
    result_set(r, FETCH_REFUSED_SCHEME, "not a usable URL: %s", curl_url_strerror(uc));
  } else if (strcmp(scheme, "https") != 0 && !(cfg->allow_http && strcmp(scheme, "http") == 0)) {
    result_set(r, FETCH_REFUSED_SCHEME, "%s URLs are not fetched (only %s)", scheme,
               cfg->allow_http ? "http and https" : "https");
  } else if ((uc = curl_url_get(u, CURLUPART_URL, &norm, 0)) != CURLUE_OK) {
    result_set(r, FETCH_REFUSED_SCHEME, "not a usable URL: %s", curl_url_strerror(uc));
    norm = NULL;
  }
  curl_free(scheme);
  curl_url_cleanup(u);
  return norm;
}

/* --- transfers --- */

static void on_hop_done(void *ctx, CURL *easy, curlloop_result *res);

static bool configure_easy(CURL *e, fetch_job *job) {
  const char *protocols = job->cfg.allow_http ? "http,https" : "https";
  bool ok = curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, protocols) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, protocols) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_PROXY, "") == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, job) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L) == CURLE_OK &&
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
  job->refused = false;
  job->refused_addr[0] = '\0';
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
  } else if (job->refused && res->code != CURLE_OK) {
    result_set(&r, FETCH_REFUSED_ADDRESS, "refused to connect to %s: not a public address",
               job->refused_addr);
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
