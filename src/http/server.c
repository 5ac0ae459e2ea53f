/* server.c - libmicrohttpd (0.9.75) underneath, whole-request handlers on top.
 *
 * libmicrohttpd calls access_cb several times per request: once when the
 * headers are in, once per piece of body, and once more when the body is
 * complete. The request is routed on the first call, so when a body is on
 * its way, an unknown path, a wrong method or a declared Content-Length over
 * the limit is answered before any of it is read (libmicrohttpd then closes
 * the connection instead of reading the rest). The handler runs on the last
 * call, with the whole body in memory.
 *
 * Things about 0.9.75 this file is shaped by:
 * - MHD_queue_response() is refused while body data is being delivered, so a
 *   chunked body that outgrows the limit cannot be answered at once. It is read
 *   on and thrown away until it ends, then answered with 413; a client that
 *   keeps sending past twice the limit has its connection cut instead.
 * - By default the URL path is percent-decoded before the application sees it,
 *   which would turn "a%2Fb" into two segments. An identity unescape callback
 *   keeps path and query raw; the router decodes path parameters and
 *   http_query_get decodes query values.
 * - The listen socket is always bound here (http_listen), possibly long
 *   before the server starts, and handed over with MHD_OPTION_LISTEN_SOCKET;
 *   libmicrohttpd closes it when it stops.
 * - MHD_quiesce_daemon is not used: with epoll and a thread pool it races
 *   with the workers, which remove the listen socket from their epoll sets
 *   too, and the loser calls MHD_PANIC (abort) on ENOENT. A stopping server
 *   turns new connections away in its accept policy instead.
 * - MHD_USE_TURBO is left off: it skips shutdown() before close, which an
 *   early answer relies on to reach a client that is still sending.
 * - SIGPIPE: libmicrohttpd blocks it in its own threads where it can
 *   (MHD_FEATURE_AUTOSUPPRESS_SIGPIPE); where it cannot, the server start sets
 *   SIGPIPE to ignored for the process if nobody has installed a handler. */
#include "http/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "util/buf.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/timeutil.h"

struct http_server {
  struct MHD_Daemon *daemon;
  http_router *router;
  size_t max_body_bytes;
  size_t max_buffered_body_bytes; /* SIZE_MAX when there is no budget */
  atomic_size_t buffered;         /* request-body bytes held by all requests */
  http_error_fn on_error;
  int port;
  /* While starting, libmicrohttpd's complaints are also kept for the caller's
   * err; its threads may log at the same time, hence the lock. */
  pthread_mutex_t start_lock;
  bool capturing;
  char start_err[160];
  /* Requests between their headers and their completion, so that a stop can
   * wait for them; stopping also makes responses say Connection: close. */
  pthread_mutex_t drain_lock;
  pthread_cond_t drained;
  int active;
  atomic_bool stopping;
  int shutdown_timeout_ms;
};

/* A decoded query value, kept until the request ends. */
typedef struct query_copy {
  struct query_copy *next;
  char value[];
} query_copy;

/* Per-request state. req comes first: handlers get &c->req, and the server
 * gets back to the rest by a cast. */
typedef struct http_conn {
  http_request req;
  http_server *server;
  struct MHD_Connection *mhd;
  buf body;
  size_t budget; /* bytes of the server's body budget this request holds */
  http_handler_fn fn;
  http_guard_fn guard;
  void *fn_ctx;
  /* The guard refused and set the reply: any body is drained, then it goes. */
  bool reply_ready;
  /* An error decided before the handler ran (status 0: none). Once set, any
   * further body is read and dropped (drained) until it can be sent. */
  int pending_status;
  const char *pending_slug;
  const char *pending_message;
  size_t drained;
  size_t resp_bytes;
  struct timespec started;
  query_copy *queries;
  char strings[]; /* path, then method */
} http_conn;

static const char *const REQUEST_ID_HEADER = "X-Request-Id";

/* --- replies (they only touch the public fields of http_request) --- */

static void header_remove(http_request *req, const char *name) {
  int o = 0;
  for (int i = 0; i < req->n_resp_headers; i++) {
    if (strcasecmp(req->resp_headers[i].name, name) == 0) {
      free(req->resp_headers[i].name);
      free(req->resp_headers[i].value);
    } else {
      req->resp_headers[o++] = req->resp_headers[i];
    }
  }
  req->n_resp_headers = o;
}

void http_reply_header(http_request *req, const char *name, const char *value) {
  if (!req || !name || !value) return;
  if (req->n_resp_headers >= HTTP_MAX_RESPONSE_HEADERS) {
    LOG_WARN("http_too_many_response_headers", "req=%s header=%s", req->request_id, name);
    return;
  }
  char *n = strdup(name);
  char *v = strdup(value);
  if (!n || !v) {
    LOG_ERROR("http_response_header_out_of_memory", "req=%s", req->request_id);
    free(n);
    free(v);
    return;
  }
  req->resp_headers[req->n_resp_headers].name = n;
  req->resp_headers[req->n_resp_headers].value = v;
  req->n_resp_headers++;
}

/* Drops any earlier body, so a handler that replies twice leaks nothing. */
static void reply_reset(http_request *req, int status, const char *content_type) {
  free(req->resp_body);
  req->resp_body = NULL;
  req->resp_len = 0;
  if (req->resp_fd >= 0) close(req->resp_fd);
  req->resp_fd = -1;
  req->resp_fd_size = 0;
  req->status = status;
  header_remove(req, "Content-Type");
  if (content_type) http_reply_header(req, "Content-Type", content_type);
}

void http_reply_empty(http_request *req, int status) {
  if (req) reply_reset(req, status, NULL);
}

void http_reply_bytes(http_request *req, int status, const char *content_type, const void *data,
                      size_t len) {
  if (!req) return;
  char *copy = malloc(len ? len : 1);
  if (!copy) {
    LOG_ERROR("http_reply_out_of_memory", "req=%s len=%zu", req->request_id, len);
    reply_reset(req, 500, NULL);
    return;
  }
  if (len) memcpy(copy, data, len);
  reply_reset(req, status, content_type);
  req->resp_body = copy;
  req->resp_len = len;
}

void http_reply_json(http_request *req, int status, json_t *body) {
  if (!req) {
    json_decref(body);
    return;
  }
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  if (!text) {
    /* Usually a json_pack that failed on text that is not UTF-8. A client
     * reading JSON gets JSON even then, never an empty 500. */
    static const char fallback[] = "{\"error\":{\"code\":\"internal_error\",\"message\":"
                                   "\"the response could not be encoded\",\"param\":null}}";
    LOG_ERROR("http_reply_cannot_serialise_json", "req=%s", req->request_id);
    http_reply_bytes(req, 500, "application/json", fallback, sizeof fallback - 1);
    return;
  }
  reply_reset(req, status, "application/json");
  req->resp_body = text;
  req->resp_len = strlen(text);
}

void http_reply_fd(http_request *req, int status, const char *content_type, int fd, uint64_t size) {
  if (!req) {
    if (fd >= 0) close(fd);
    return;
  }
  reply_reset(req, status, content_type);
  req->resp_fd = fd;
  req->resp_fd_size = size;
}

/* --- request accessors --- */

const char *http_header_get(http_request *req, const char *name) {
  if (!req || !req->conn || !name) return NULL;
  return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *http_param_get(http_request *req, const char *name) {
  if (!req || !name) return NULL;
  for (int i = 0; i < req->n_params; i++)
    if (strcmp(req->params[i].name, name) == 0) return req->params[i].value;
  return NULL;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes %XX in place. A malformed escape, or one that would make a NUL the
 * C string cannot carry, stays as it was written. */
static void query_decode(char *s) {
  char *o = s;
  for (const char *p = s; *p; p++) {
    int hi = p[0] == '%' ? hex_value(p[1]) : -1;
    int lo = hi >= 0 ? hex_value(p[2]) : -1;
    if (lo >= 0 && (hi | lo) != 0) {
      *o++ = (char)(hi * 16 + lo);
      p += 2;
    } else {
      *o++ = *p;
    }
  }
  *o = '\0';
}

const char *http_query_get(http_request *req, const char *name) {
  if (!req || !req->conn || !name) return NULL;
  const char *raw = NULL;
  size_t raw_len = 0;
  if (MHD_lookup_connection_value_n(req->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), &raw,
                                    &raw_len) != MHD_YES)
    return NULL;
  if (!raw) return ""; /* "?flag" without '=' */
  if (!memchr(raw, '%', raw_len)) return raw;
  http_conn *c = (http_conn *)req;
  query_copy *q = malloc(sizeof *q + raw_len + 1);
  if (!q) {
    LOG_ERROR("http_query_out_of_memory", "req=%s", req->request_id);
    return NULL;
  }
  memcpy(q->value, raw, raw_len);
  q->value[raw_len] = '\0';
  query_decode(q->value);
  q->next = c->queries;
  c->queries = q;
  return q->value;
}

/* Keeps the raw path and query (see the top of the file). '+' in query values
 * has already become ' ' by the time libmicrohttpd calls this. */
static size_t unescape_identity(void *cls, struct MHD_Connection *conn, char *s) {
  return strlen(s);
}

/* --- per-request state --- */

static bool request_id_ok(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n < 1 || n > 64) return false;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-';
    if (!ok) return false;
  }
  return true;
}

static void request_id_init(http_conn *c) {
  const char *given = MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, REQUEST_ID_HEADER);
  if (request_id_ok(given)) {
    snprintf(c->req.request_id, sizeof c->req.request_id, "%s", given);
    return;
  }
  if (ids_random_hex(c->req.request_id, 16)) return;
  /* The random source failing is not a reason to refuse traffic. */
  LOG_ERROR("http_request_id_random_source_failed", NULL);
  snprintf(c->req.request_id, sizeof c->req.request_id, "t%016llx%016llx",
           (unsigned long long)time_now_ms(), (unsigned long long)(uintptr_t)c);
}

static void client_ip_init(http_conn *c) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(c->mhd, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  char *out = c->req.client_ip;
  size_t size = sizeof c->req.client_ip;
  snprintf(out, size, "-");
  if (!ci || !ci->client_addr) return;
  const struct sockaddr *sa = ci->client_addr;
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
              (socklen_t)size);
  } else if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) /* a dual-stack socket: log the IPv4 address people know */
      inet_ntop(AF_INET, &a6->s6_addr[12], out, (socklen_t)size);
    else
      inet_ntop(AF_INET6, a6, out, (socklen_t)size);
  }
}

static http_conn *conn_new(http_server *s, struct MHD_Connection *mhd, const char *url,
                           const char *method) {
  size_t plen = strlen(url);
  size_t mlen = strlen(method);
  http_conn *c = calloc(1, sizeof *c + plen + 1 + mlen + 1);
  if (!c) return NULL;
  clock_gettime(CLOCK_MONOTONIC, &c->started);
  c->server = s;
  c->mhd = mhd;
  memcpy(c->strings, url, plen + 1);
  memcpy(c->strings + plen + 1, method, mlen + 1);
  c->req.path = c->strings;
  c->req.method = c->strings + plen + 1;
  c->req.body = "";
  c->req.start_mono_ms = time_mono_ms();
  c->req.conn = mhd;
  c->req.resp_fd = -1;
  request_id_init(c);
  client_ip_init(c);
  return c;
}

/* Takes n bytes of the server-wide body budget for c; false when they are
 * not there. Lock-free: every upload chunk passes here. */
static bool budget_take(http_conn *c, size_t n) {
  http_server *s = c->server;
  size_t cur = atomic_load(&s->buffered);
  do {
    if (cur > s->max_buffered_body_bytes || n > s->max_buffered_body_bytes - cur) return false;
  } while (!atomic_compare_exchange_weak(&s->buffered, &cur, cur + n));
  c->budget += n;
  return true;
}

/* Frees the body and gives its budget back. */
static void body_release(http_conn *c) {
  buf_free(&c->body);
  c->req.body = "";
  c->req.body_len = 0;
  if (c->budget) atomic_fetch_sub(&c->server->buffered, c->budget);
  c->budget = 0;
}

static void conn_free(http_conn *c) {
  http_request *req = &c->req;
  for (int i = 0; i < req->n_params; i++) free(req->params[i].value);
  for (int i = 0; i < req->n_resp_headers; i++) {
    free(req->resp_headers[i].name);
    free(req->resp_headers[i].value);
  }
  free(req->resp_body);
  if (req->resp_fd >= 0) close(req->resp_fd);
  while (c->queries) {
    query_copy *next = c->queries->next;
    free(c->queries);
    c->queries = next;
  }
  body_release(c);
  free(req->guard_data);
  free(c);
}

/* --- sending --- */

static struct MHD_Response *response_create(http_request *req, size_t *bytes) {
  struct MHD_Response *resp;
  if (req->resp_fd >= 0) {
    resp = MHD_create_response_from_fd64(req->resp_fd_size, req->resp_fd);
    if (resp) req->resp_fd = -1; /* libmicrohttpd closes it now */
    *bytes = (size_t)req->resp_fd_size;
  } else if (req->resp_body) {
    resp = MHD_create_response_from_buffer(req->resp_len, req->resp_body, MHD_RESPMEM_MUST_FREE);
    if (resp) req->resp_body = NULL; /* libmicrohttpd frees it now */
    *bytes = req->resp_len;
  } else {
    resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    *bytes = 0;
  }
  return resp;
}

static void response_add_headers(http_conn *c, struct MHD_Response *resp) {
  http_request *req = &c->req;
  for (int i = 0; i < req->n_resp_headers; i++) {
    const http_header *h = &req->resp_headers[i];
    /* The server's request id is the one that reached the access log. */
    if (strcasecmp(h->name, REQUEST_ID_HEADER) == 0) continue;
    if (MHD_add_response_header(resp, h->name, h->value) != MHD_YES)
      LOG_WARN("http_response_header_refused", "req=%s header=%s", req->request_id, h->name);
  }
  if (MHD_add_response_header(resp, REQUEST_ID_HEADER, req->request_id) != MHD_YES)
    LOG_WARN("http_response_header_refused", "req=%s header=%s", req->request_id,
             REQUEST_ID_HEADER);
  /* While stopping, a kept-alive connection would only bring more requests
   * to wait for: the client is told to reconnect (to another instance). */
  if (atomic_load(&c->server->stopping) &&
      MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") != MHD_YES)
    LOG_WARN("http_response_header_refused", "req=%s header=Connection", req->request_id);
}

static enum MHD_Result conn_send(http_conn *c) {
  http_request *req = &c->req;
  if (req->status < 100 || req->status > 599) {
    LOG_ERROR("http_handler_set_an_invalid_status", "req=%s status=%d", req->request_id,
              req->status);
    http_reply_empty(req, 500);
  }
  struct MHD_Response *resp = response_create(req, &c->resp_bytes);
  if (!resp) {
    LOG_ERROR("http_cannot_create_response", "req=%s", req->request_id);
    return MHD_NO; /* libmicrohttpd closes the connection */
  }
  response_add_headers(c, resp);
  enum MHD_Result rc = MHD_queue_response(c->mhd, (unsigned)req->status, resp);
  MHD_destroy_response(resp);
  if (rc != MHD_YES) LOG_ERROR("http_cannot_queue_response", "req=%s", req->request_id);
  return rc;
}

static void default_error(http_request *req, int status, const char *slug, const char *message) {
  json_t *doc = json_pack("{s:{s:s, s:s, s:n}}", "error", "code", slug, "message", message,
                          "param");
  http_reply_json(req, status, doc);
}

static enum MHD_Result conn_send_error(http_conn *c, int status, const char *slug,
                                       const char *message) {
  http_request *req = &c->req;
  snprintf(req->log_error, sizeof req->log_error, "%s", slug);
  reply_reset(req, 0, NULL);
  if (c->server->on_error) c->server->on_error(req, status, slug, message);
  if (req->status == 0) default_error(req, status, slug, message);
  return conn_send(c);
}

/* --- the libmicrohttpd callbacks --- */

/* Content-Length as declared, or -1 when absent. libmicrohttpd has already
 * refused a malformed one; a value too big to parse counts as huge. */
static long long content_length(http_conn *c) {
  const char *cl = MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, "Content-Length");
  if (!cl) return -1;
  errno = 0;
  char *end = NULL;
  unsigned long long n = strtoull(cl, &end, 10);
  if (end == cl) return -1;
  return (errno == ERANGE || n > LLONG_MAX) ? LLONG_MAX : (long long)n;
}

static bool has_body(http_conn *c, long long declared) {
  return declared > 0 ||
         MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, "Transfer-Encoding") != NULL;
}

static void set_pending(http_conn *c, int status, const char *slug, const char *message) {
  c->pending_status = status;
  c->pending_slug = slug;
  c->pending_message = message;
}

/* How long a client refused for want of body budget is asked to wait: bodies
 * are held only while they arrive and their handler runs. */
static const char *const BUSY_RETRY_AFTER_S = "2";

static void set_busy(http_conn *c) {
  http_reply_header(&c->req, "Retry-After", BUSY_RETRY_AFTER_S);
  set_pending(c, 503, "server_busy", "the server holds too many request bodies; retry shortly");
}

/* Runs the route's guard; false when it refused (its reply is then ready). */
static bool guard_passes(http_conn *c) {
  if (c->guard(&c->req, c->fn_ctx)) return true;
  if (c->req.status == 0) {
    LOG_ERROR("http_guard_set_no_reply", "req=%s method=%s", c->req.request_id, c->req.method);
    set_pending(c, 500, "internal_error", "the request guard produced no response");
  } else {
    c->reply_ready = true;
  }
  return false;
}

/* A body of known length takes its whole share of the budget up front, and
 * its buffer is sized once: no doubling reallocations, and memory use is
 * what the budget counts. A failed pre-allocation is left to on_body. */
static bool reserve_declared(http_conn *c, long long declared) {
  if (!budget_take(c, (size_t)declared)) return false;
  buf_reserve(&c->body, (size_t)declared);
  return true;
}

/* Routes on the headers alone, then runs the route's guard (authentication)
 * and takes the body's share of the budget. An error found here is answered
 * at once when a body is on its way (libmicrohttpd then closes rather than
 * read it), and at the end otherwise, because 0.9.75 also closes after any
 * early answer and a body-less 404 should not cost the client its
 * connection. Checks without a database lookup come first. */
static enum MHD_Result on_headers(http_conn *c) {
  http_request *req = &c->req;
  char allow[128];
  http_route_result r =
      http_router_match(c->server->router, req->method, req->path, &c->fn, &c->guard, &c->fn_ctx,
                        req->params, &req->n_params, allow, sizeof allow);
  long long declared = content_length(c);
  bool body = has_body(c, declared);
  if (r == HTTP_ROUTE_NOT_FOUND) {
    set_pending(c, 404, "not_found", "no such path");
  } else if (r == HTTP_ROUTE_BAD_METHOD) {
    http_reply_header(req, "Allow", allow);
    set_pending(c, 405, "method_not_allowed", "method not allowed for this path");
  } else if (declared >= 0 && (unsigned long long)declared > c->server->max_body_bytes) {
    set_pending(c, 413, "payload_too_large", "request body is too large");
  } else if (c->guard && !guard_passes(c)) {
    if (c->reply_ready) return body ? conn_send(c) : MHD_YES;
  } else if (declared > 0 && !reserve_declared(c, declared)) {
    set_busy(c);
  }
  if (c->pending_status && body)
    return conn_send_error(c, c->pending_status, c->pending_slug, c->pending_message);
  return MHD_YES;
}

static enum MHD_Result on_body(http_conn *c, const char *data, size_t *size) {
  size_t n = *size;
  *size = 0;
  if (c->pending_status || c->reply_ready) {
    /* 0.9.75 cannot answer mid-body: read on and drop, but not forever. */
    c->drained += n;
    if (c->drained > c->server->max_body_bytes) {
      if (c->pending_slug)
        snprintf(c->req.log_error, sizeof c->req.log_error, "%s", c->pending_slug);
      LOG_WARN("http_body_over_the_limit_closing_connection", "req=%s drained=%zu",
               c->req.request_id, c->drained);
      return MHD_NO;
    }
    return MHD_YES;
  }
  if (n > c->server->max_body_bytes - c->body.len) {
    set_pending(c, 413, "payload_too_large", "request body is too large");
    c->drained = n;
    body_release(c);
    return MHD_YES;
  }
  /* A chunked body takes budget as it comes; a declared one took it all. */
  if (c->body.len + n > c->budget && !budget_take(c, c->body.len + n - c->budget)) {
    set_busy(c);
    c->drained = n;
    body_release(c);
    return MHD_YES;
  }
  if (!buf_append(&c->body, data, n)) {
    LOG_ERROR("http_body_out_of_memory", "req=%s len=%zu", c->req.request_id, c->body.len + n);
    set_pending(c, 500, "internal_error", "out of memory");
    c->drained = n;
    body_release(c);
  }
  return MHD_YES;
}

static enum MHD_Result on_complete(http_conn *c) {
  http_request *req = &c->req;
  if (c->reply_ready) return conn_send(c);
  if (c->pending_status)
    return conn_send_error(c, c->pending_status, c->pending_slug, c->pending_message);
  if (c->body.data) {
    req->body = c->body.data;
    req->body_len = c->body.len;
  }
  c->fn(req, c->fn_ctx);
  /* The handler is done with the body: its budget goes back now rather than
   * when the response has gone out to a possibly slow client. */
  body_release(c);
  if (req->status == 0) {
    LOG_ERROR("http_handler_set_no_reply", "req=%s method=%s", req->request_id, req->method);
    return conn_send_error(c, 500, "internal_error", "the handler produced no response");
  }
  return conn_send(c);
}

/* Counts requests in progress; wakes a waiting stop when the last one ends. */
static void active_add(http_server *s, int delta) {
  pthread_mutex_lock(&s->drain_lock);
  s->active += delta;
  if (s->active == 0) pthread_cond_broadcast(&s->drained);
  pthread_mutex_unlock(&s->drain_lock);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *mhd, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls) {
  http_server *s = cls;
  http_conn *c = *con_cls;
  if (!c) {
    c = conn_new(s, mhd, url, method);
    if (!c) {
      LOG_ERROR("http_request_out_of_memory", NULL);
      return MHD_NO;
    }
    *con_cls = c;
    active_add(s, 1);
    return on_headers(c);
  }
  if (*upload_data_size != 0) return on_body(c, upload_data, upload_data_size);
  return on_complete(c);
}

static const char *termination_slug(enum MHD_RequestTerminationCode toe) {
  switch (toe) {
  case MHD_REQUEST_TERMINATED_COMPLETED_OK: return NULL;
  case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "conn_timeout";
  case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "conn_shutdown";
  case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "conn_client_abort";
  case MHD_REQUEST_TERMINATED_READ_ERROR: return "conn_read_error";
  default: return "conn_error";
  }
}

static void access_log(http_conn *c) {
  const http_request *req = &c->req;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double dur_ms = (double)(now.tv_sec - c->started.tv_sec) * 1e3 +
                  (double)(now.tv_nsec - c->started.tv_nsec) / 1e6;
  char qmethod[64], qpath[1024], qacct[80], qerr[112];
  char acct[96] = "", err[128] = "";
  if (req->log_account[0])
    snprintf(acct, sizeof acct, " account=%s", log_quote(req->log_account, qacct, sizeof qacct));
  if (req->log_error[0])
    snprintf(err, sizeof err, " err=%s", log_quote(req->log_error, qerr, sizeof qerr));
  LOG_INFO("http", "method=%s path=%s status=%d dur_ms=%.1f bytes=%zu req=%s ip=%s%s%s",
           log_quote(req->method, qmethod, sizeof qmethod),
           log_quote(req->path, qpath, sizeof qpath), req->status, dur_ms, c->resp_bytes,
           req->request_id, req->client_ip, acct, err);
}

static void completed_cb(void *cls, struct MHD_Connection *mhd, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  http_conn *c = *con_cls;
  if (!c) return;
  *con_cls = NULL;
  const char *slug = termination_slug(toe);
  if (slug && !c->req.log_error[0])
    snprintf(c->req.log_error, sizeof c->req.log_error, "%s", slug);
  access_log(c);
  http_server *s = c->server;
  conn_free(c);
  active_add(s, -1);
}

__attribute__((format(printf, 2, 0))) static void mhd_logger(void *cls, const char *fmt,
                                                             va_list ap) {
  http_server *s = cls;
  char text[512];
  vsnprintf(text, sizeof text, fmt, ap);
  size_t n = strlen(text);
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r')) text[--n] = '\0';
  char q[600];
  LOG_WARN("libmicrohttpd", "detail=%s", log_quote(text, q, sizeof q));
  pthread_mutex_lock(&s->start_lock);
  if (s->capturing && !s->start_err[0])
    snprintf(s->start_err, sizeof s->start_err, "%.159s", text);
  pthread_mutex_unlock(&s->start_lock);
}

/* --- start and stop --- */

static bool resolve_host(const char *host, int port, struct sockaddr_storage *ss, char *err,
                         size_t err_size) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    return true;
  }
  if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    return true;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res = NULL;
  int rc = getaddrinfo(host, NULL, &hints, &res);
  if (rc != 0 || !res) {
    snprintf(err, err_size, "cannot resolve listen host %s: %s", host, gai_strerror(rc));
    return false;
  }
  /* "localhost" may list ::1 first; IPv4 is what most people mean by it. */
  const struct addrinfo *pick = res;
  for (const struct addrinfo *ai = res; ai; ai = ai->ai_next)
    if (ai->ai_family == AF_INET) {
      pick = ai;
      break;
    }
  memcpy(ss, pick->ai_addr, pick->ai_addrlen);
  if (pick->ai_family == AF_INET) a4->sin_port = htons((uint16_t)port);
  else a6->sin6_port = htons((uint16_t)port);
  freeaddrinfo(res);
  return true;
}

static void sigpipe_guard(void) {
  if (MHD_is_feature_supported(MHD_FEATURE_AUTOSUPPRESS_SIGPIPE) == MHD_YES) return;
  struct sigaction old;
  if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL) {
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, NULL);
  }
}

static unsigned pool_size(int threads) {
  if (threads > 0) return (unsigned)threads;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (unsigned)n : 1u;
}

struct http_listener {
  int fd;
  int port;
  char host[128]; /* for messages */
};

/* Dual-stack for "::" (IPv4 clients too), IPv6 only for a specific address,
 * as libmicrohttpd did when it bound the socket itself. */
static bool set_v6only(int fd, const struct sockaddr_storage *ss) {
  if (ss->ss_family != AF_INET6) return true;
  const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
  int only = IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr) ? 0 : 1;
  return setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &only, sizeof only) == 0;
}

static int bound_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
  if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

http_listener *http_listen(const char *host, int port, char *err, size_t err_size) {
  char dummy[1];
  if (!err || err_size == 0) {
    err = dummy;
    err_size = sizeof dummy;
  }
  err[0] = '\0';
  if (!host || !*host || port < 0 || port > 65535) {
    snprintf(err, err_size, "invalid listen address");
    return NULL;
  }
  struct sockaddr_storage ss;
  if (!resolve_host(host, port, &ss, err, err_size)) return NULL;
  /* Non-blocking: libmicrohttpd's worker threads all wait on it, and only
   * one of them gets each connection. */
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int on = 1;
  socklen_t len =
      ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  /* SO_REUSEADDR lets a restart bind while old connections sit in
   * TIME_WAIT; on Linux it does not let two servers share a port. */
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
      !set_v6only(fd, &ss) || bind(fd, (struct sockaddr *)&ss, len) != 0 ||
      listen(fd, SOMAXCONN) != 0) {
    snprintf(err, err_size, "%s", strerror(errno));
    if (fd >= 0) close(fd);
    return NULL;
  }
  http_listener *l = calloc(1, sizeof *l);
  if (!l) {
    snprintf(err, err_size, "out of memory");
    close(fd);
    return NULL;
  }
  l->fd = fd;
  l->port = bound_port(fd);
  snprintf(l->host, sizeof l->host, "%s", host);
  return l;
}

int http_listener_port(const http_listener *l) { return l ? l->port : 0; }

void http_listener_close(http_listener *l) {
  if (!l) return;
  close(l->fd);
  free(l);
}

/* libmicrohttpd's accept policy: a stopping server takes no new
 * connections (they are closed as soon as they are accepted). */
static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t len) {
  http_server *s = cls;
  return atomic_load(&s->stopping) ? MHD_NO : MHD_YES;
}

/* The logger goes first so it also hears complaints about the options after
 * it; the rest go in an array because a pool of one must be left out rather
 * than passed (libmicrohttpd warns about 1 and 0 alike). The socket is
 * always ours (http_listen): libmicrohttpd binds nothing itself. */
static struct MHD_Daemon *daemon_start(http_server *s, const http_server_config *cfg, int fd,
                                       unsigned threads) {
  struct MHD_OptionItem opts[12];
  int n = 0;
  opts[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL};
  opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                      (intptr_t)cfg->connection_timeout_s, NULL};
  opts[n++] =
      (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)completed_cb, s};
  opts[n++] =
      (struct MHD_OptionItem){MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)unescape_identity, NULL};
  if (threads > 1)
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)threads, NULL};
  if (cfg->max_connections > 0)
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                        (intptr_t)cfg->max_connections, NULL};
  if (cfg->max_connections_per_ip > 0)
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                        (intptr_t)cfg->max_connections_per_ip, NULL};
  opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
  return MHD_start_daemon(flags, (uint16_t)s->port, accept_policy, s, access_cb, s,
                          MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s, MHD_OPTION_ARRAY, opts,
                          MHD_OPTION_END);
}

static void server_free(http_server *s) {
  pthread_mutex_destroy(&s->start_lock);
  pthread_mutex_destroy(&s->drain_lock);
  pthread_cond_destroy(&s->drained);
  free(s);
}

/* The drain waits on CLOCK_MONOTONIC: a wall-clock step must not cut it
 * short or stretch it. */
static void drain_init(http_server *s) {
  pthread_mutex_init(&s->drain_lock, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&s->drained, &attr);
  pthread_condattr_destroy(&attr);
  atomic_init(&s->stopping, false);
}

/* The listener the configuration hands over, or one bound now. */
static http_listener *take_listener(const http_server_config *cfg, char *err, size_t err_size) {
  if (cfg->listener) return cfg->listener;
  http_listener *l = http_listen(cfg->listen_host, cfg->listen_port, err, err_size);
  if (!l && cfg->listen_host) {
    char reason[200];
    snprintf(reason, sizeof reason, "%s", err);
    snprintf(err, err_size, "cannot listen on %s port %d: %s", cfg->listen_host,
             cfg->listen_port, reason);
  }
  return l;
}

http_server *http_server_start(const http_server_config *cfg, http_router *router, char *err,
                               size_t err_size) {
  char dummy[1];
  if (!err || err_size == 0) {
    err = dummy;
    err_size = sizeof dummy;
  }
  err[0] = '\0';
  if (!cfg || !router) {
    snprintf(err, err_size, "invalid HTTP server configuration");
    if (cfg) http_listener_close(cfg->listener);
    return NULL;
  }
  http_listener *l = take_listener(cfg, err, err_size);
  if (!l) return NULL;
  http_server *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, err_size, "out of memory");
    http_listener_close(l);
    return NULL;
  }
  pthread_mutex_init(&s->start_lock, NULL);
  drain_init(s);
  s->shutdown_timeout_ms = cfg->shutdown_timeout_ms > 0 ? cfg->shutdown_timeout_ms : 0;
  s->router = router;
  s->max_body_bytes = cfg->max_body_bytes;
  s->max_buffered_body_bytes =
      cfg->max_buffered_body_bytes ? cfg->max_buffered_body_bytes : SIZE_MAX;
  atomic_init(&s->buffered, 0);
  s->on_error = cfg->on_error;
  s->port = l->port;
  s->capturing = true;
  sigpipe_guard();
  unsigned threads = pool_size(cfg->threads);
  s->daemon = daemon_start(s, cfg, l->fd, threads);
  pthread_mutex_lock(&s->start_lock);
  s->capturing = false;
  pthread_mutex_unlock(&s->start_lock);
  if (!s->daemon) {
    snprintf(err, err_size, "cannot serve on %s port %d: %s", l->host, l->port,
             s->start_err[0] ? s->start_err : "libmicrohttpd refused to start");
    /* Whether a failed start closed the socket it was given is not said;
     * closing it again could close a descriptor another thread just got.
     * The process is about to give up anyway: at worst one descriptor leaks. */
    free(l);
    server_free(s);
    return NULL;
  }
  /* The socket is libmicrohttpd's now; http_server_stop gets it back. */
  char qhost[128];
  LOG_INFO("http_listening", "host=%s port=%d threads=%u", log_quote(l->host, qhost, sizeof qhost),
           s->port, threads);
  free(l);
  return s;
}

int http_server_port(http_server *s) { return s ? s->port : 0; }

/* Waits until no request is in progress, or timeout_ms has passed; returns
 * how many are still in progress. */
static int drain_wait(http_server *s, int timeout_ms) {
  /* time_mono_ms() is CLOCK_MONOTONIC, the condition variable's clock. */
  int64_t due = time_mono_ms() + timeout_ms;
  struct timespec deadline = {.tv_sec = (time_t)(due / 1000),
                              .tv_nsec = (long)(due % 1000) * 1000000L};
  pthread_mutex_lock(&s->drain_lock);
  int rc = 0;
  while (s->active > 0 && rc != ETIMEDOUT)
    rc = pthread_cond_timedwait(&s->drained, &s->drain_lock, &deadline);
  int left = s->active;
  pthread_mutex_unlock(&s->drain_lock);
  return left;
}

void http_server_stop(http_server *s) {
  if (!s) return;
  /* From here on the accept policy closes every new connection at once; the
   * requests in progress get up to shutdown_timeout_ms, then every
   * connection and the listen socket are closed. */
  atomic_store(&s->stopping, true);
  pthread_mutex_lock(&s->drain_lock);
  int active = s->active;
  pthread_mutex_unlock(&s->drain_lock);
  if (active > 0) {
    LOG_INFO("http_draining", "requests=%d timeout_ms=%d", active, s->shutdown_timeout_ms);
    int left = drain_wait(s, s->shutdown_timeout_ms);
    if (left > 0) LOG_WARN("http_drain_timeout", "requests_cut=%d", left);
  }
  MHD_stop_daemon(s->daemon);
  LOG_INFO("http_stopped", "port=%d", s->port);
  server_free(s);
}
