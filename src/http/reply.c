/* reply.c - the handler-facing half of server.h (replies, request accessors)
 * and the response head that goes on the wire.
 *
 * The http_reply_* functions only touch the public fields of http_request, so
 * they also work on a request a test builds by hand. The accessors reach the
 * parsed request through req->conn (the exchange), and answer NULL without
 * one. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "http/internal.h"
#include "util/log.h"

static const char *const REQUEST_ID_HEADER = "X-Request-Id";

/* --- replies --- */

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

/* A header name is an RFC 9110 token. */
static bool token_ok(const char *s) {
  if (!*s) return false;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p <= ' ' || *p >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", *p)) return false;
  return true;
}

/* A value may not break the head: no CR, LF or NUL (a C string has no NUL). */
static bool value_ok(const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p == '\r' || *p == '\n' || (*p < ' ' && *p != '\t') || *p == 0x7f) return false;
  return true;
}

void http_reply_header(http_request *req, const char *name, const char *value) {
  if (!req || !name || !value) return;
  if (!token_ok(name) || !value_ok(value)) {
    /* A handler that passes on text from a client must not let it inject
     * headers or split the response. */
    char q[96];
    LOG_ERROR("http_response_header_invalid", "req=%s header=%s", req->request_id,
              log_quote(name, q, sizeof q));
    return;
  }
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

void reply_drop_body(http_request *req) {
  free(req->resp_body);
  req->resp_body = NULL;
  req->resp_len = 0;
  if (req->resp_fd >= 0) close(req->resp_fd);
  req->resp_fd = -1;
  req->resp_fd_size = 0;
}

/* Drops any earlier body, so a handler that replies twice leaks nothing. */
static void reply_reset(http_request *req, int status, const char *content_type) {
  reply_drop_body(req);
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

static void default_error(http_request *req, int status, const char *slug, const char *message) {
  json_t *doc = json_pack("{s:{s:s, s:s, s:n}}", "error", "code", slug, "message", message,
                          "param");
  http_reply_json(req, status, doc);
}

void reply_error(http_exchange *x, http_error_fn hook, int status, const char *slug,
                 const char *message) {
  http_request *req = &x->req;
  reply_reset(req, 0, NULL);
  if (hook) hook(req, status, slug, message);
  if (req->status == 0) default_error(req, status, slug, message);
  /* Whatever the hook wrote, the access log names the server's reason. */
  snprintf(req->log_error, sizeof req->log_error, "%s", slug);
}

typedef struct query_copy {
  struct query_copy *next;
  char value[];
} query_copy;

void reply_clear(http_exchange *x) {
  http_request *req = &x->req;
  for (int i = 0; i < req->n_params; i++) free(req->params[i].value);
  req->n_params = 0;
  for (int i = 0; i < req->n_resp_headers; i++) {
    free(req->resp_headers[i].name);
    free(req->resp_headers[i].value);
  }
  req->n_resp_headers = 0;
  reply_drop_body(req);
  while (x->queries) {
    query_copy *next = x->queries->next;
    free(x->queries);
    x->queries = next;
  }
  free(req->guard_data);
  req->guard_data = NULL;
}

/* --- request accessors --- */

static http_exchange *exchange_of(http_request *req) {
  return req ? (http_exchange *)req->conn : NULL;
}

const char *http_header_get(http_request *req, const char *name) {
  http_exchange *x = exchange_of(req);
  if (!x || !name) return NULL;
  for (int i = 0; i < x->n_hdr; i++)
    if (strcasecmp(x->head.data + x->hdr[i].name, name) == 0) return x->head.data + x->hdr[i].value;
  return NULL;
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

/* Decodes n bytes of a form-encoded query component into out ('+' is a
 * space, %XX a byte). A malformed escape, or one that would put a NUL into
 * the C string, stays as it was written. Returns the decoded length. */
static size_t form_decode(const char *p, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int hi = -1, lo = -1;
    if (p[i] == '%' && i + 2 < n) {
      hi = hex_value(p[i + 1]);
      lo = hex_value(p[i + 2]);
    }
    if (hi >= 0 && lo >= 0 && (hi | lo) != 0) {
      out[o++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      out[o++] = p[i] == '+' ? ' ' : p[i];
    }
  }
  out[o] = '\0';
  return o;
}

const char *http_query_get(http_request *req, const char *name) {
  http_exchange *x = exchange_of(req);
  if (!x || !name) return NULL;
  const char *target = x->head.data + x->target_off;
  const char *q = memchr(target, '?', x->target_len);
  if (!q) return NULL;
  const char *end = target + x->target_len;
  const char *hash = memchr(q, '#', (size_t)(end - q));
  if (hash) end = hash;
  size_t name_len = strlen(name);
  for (const char *p = q + 1; p < end;) {
    const char *amp = memchr(p, '&', (size_t)(end - p));
    const char *stop = amp ? amp : end;
    const char *eq = memchr(p, '=', (size_t)(stop - p));
    const char *key_end = eq ? eq : stop;
    size_t key_len = (size_t)(key_end - p);
    /* Keys are compared decoded, as clients may escape them too. */
    char keybuf[256];
    if (key_len < sizeof keybuf && form_decode(p, key_len, keybuf) == name_len &&
        memcmp(keybuf, name, name_len) == 0) {
      if (!eq) return ""; /* "?flag" without '=' */
      size_t vlen = (size_t)(stop - eq - 1);
      query_copy *copy = malloc(sizeof *copy + vlen + 1);
      if (!copy) {
        LOG_ERROR("http_query_out_of_memory", "req=%s", req->request_id);
        return NULL;
      }
      form_decode(eq + 1, vlen, copy->value);
      copy->next = x->queries;
      x->queries = copy;
      return copy->value;
    }
    p = stop + 1;
  }
  return NULL;
}

/* --- the response head --- */

const char *reply_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 402: return "Payment Required";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 416: return "Range Not Satisfiable";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 425: return "Too Early";
  case 428: return "Precondition Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

bool reply_status_has_body(int status) {
  return status >= 200 && status != 204 && status != 304;
}

/* Appending without printf: the head of every answer is written here, and
 * formatting it with buf_printf cost a tenth of a plain 404. */
static bool put(buf *b, const char *s) { return buf_append(b, s, strlen(s)); }

static bool put_u64(buf *b, uint64_t v) {
  char digits[24];
  size_t i = sizeof digits;
  do {
    digits[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return buf_append(b, digits + i, sizeof digits - i);
}

static bool put_header(buf *b, const char *name, const char *value) {
  return put(b, name) && buf_append(b, ": ", 2) && put(b, value) && buf_append(b, "\r\n", 2);
}

/* The head up to its length headers: status line, Date, the handler's headers. */
static bool head_start(http_exchange *x, const char *date, buf *out) {
  http_request *req = &x->req;
  bool ok = buf_reserve(out, 512) && buf_append(out, "HTTP/1.1 ", 9) &&
            put_u64(out, (uint64_t)req->status) && buf_append(out, " ", 1) &&
            put(out, reply_reason(req->status)) && buf_append(out, "\r\n", 2) &&
            put_header(out, "Date", date);
  for (int i = 0; ok && i < req->n_resp_headers; i++) {
    const http_header *h = &req->resp_headers[i];
    /* The server writes these itself, from what it really sends. */
    if (strcasecmp(h->name, REQUEST_ID_HEADER) == 0 || strcasecmp(h->name, "Content-Length") == 0 ||
        strcasecmp(h->name, "Connection") == 0 || strcasecmp(h->name, "Transfer-Encoding") == 0 ||
        strcasecmp(h->name, "Date") == 0)
      continue;
    ok = put_header(out, h->name, h->value);
  }
  return ok;
}

/* The head from its request id on. */
static bool head_end(http_exchange *x, bool close, bool keep_alive_10, buf *out) {
  bool ok = put_header(out, REQUEST_ID_HEADER, x->req.request_id);
  if (ok && close) ok = put(out, "Connection: close\r\n");
  else if (ok && keep_alive_10) ok = put(out, "Connection: keep-alive\r\n");
  return ok && buf_append(out, "\r\n", 2);
}

bool reply_write_head(http_exchange *x, const char *date, bool close, bool keep_alive_10,
                      buf *out) {
  http_request *req = &x->req;
  bool ok = head_start(x, date, out);
  if (ok && reply_status_has_body(req->status)) {
    uint64_t len = req->resp_fd >= 0 ? req->resp_fd_size : (uint64_t)req->resp_len;
    ok = put(out, "Content-Length: ") && put_u64(out, len) && buf_append(out, "\r\n", 2);
  }
  return ok && head_end(x, close, keep_alive_10, out);
}

bool reply_write_stream_head(http_exchange *x, const char *date, bool close, bool chunked,
                             buf *out) {
  bool ok = head_start(x, date, out);
  if (ok && chunked) ok = put(out, "Transfer-Encoding: chunked\r\n");
  return ok && head_end(x, close, false, out);
}
