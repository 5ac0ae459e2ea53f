/* s3client.c - S3 requests on a curl loop: URLs, signing, bodies, answers.
 *
 * One request = one easy handle and one `request` (its URL, headers, body
 * source and callback), freed when the loop calls back. Answers are read in
 * that callback: the status, S3's error document, and the few response
 * headers wanted, through curl's header API (the loop owns the header
 * callback). s3_put_file's multipart upload is a small state machine driven
 * by those callbacks, so it too runs on the loop thread only. */
#include "blob/s3client.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "blob/s3sign.h"
#include "util/ids.h"
#include "util/log.h"

/* Answers without object bytes (errors, listings, results) are small; a
 * listing of 1,000 long keys stays well under this. */
#define S3_SMALL_ANSWER_MAX ((size_t)1 << 20)
#define S3_LIST_ANSWER_MAX ((size_t)8 << 20)
/* A transfer of object bytes fails when slower than this for stall_timeout_s. */
#define S3_STALL_BYTES_PER_S 1024L
#define S3_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct s3_client {
  s3_config cfg;
  curlloop *loop;
  char scheme[8];          /* "https" | "http" */
  char authority[300];     /* the endpoint's host[:port] */
  char sigv4[96];          /* "aws:amz:REGION:s3" */
  struct curl_slist *resolve; /* CURLOPT_RESOLVE's list: read-only, shared by every handle */
  atomic_size_t in_flight;
};

const char *s3_status_name(s3_status s) {
  switch (s) {
  case S3_OK: return "ok";
  case S3_NOT_FOUND: return "not_found";
  case S3_DENIED: return "denied";
  case S3_RETRYABLE: return "retryable";
  case S3_FAILED: return "failed";
  }
  return "failed";
}

void s3_result_free(s3_result *r) {
  if (!r) return;
  buf_free(&r->body);
  s3xml_list_page_free(&r->list);
  free(r->upload_id);
  memset(r, 0, sizeof *r);
}

void s3_result_move(s3_result *dst, s3_result *src) {
  *dst = *src;
  memset(src, 0, sizeof *src);
}

/* --- the client --- */

s3_client *s3_client_new(const s3_config *cfg, curlloop *loop, char *err, size_t err_size) {
  s3_client *c = calloc(1, sizeof *c);
  if (!c) {
    snprintf(err, err_size, "s3: out of memory");
    return NULL;
  }
  c->cfg = *cfg;
  if (s3_config_check(&c->cfg, err, err_size) != 0) {
    free(c);
    return NULL;
  }
  c->loop = loop;
  const char *sep = strstr(c->cfg.endpoint, "://");
  assert(sep); /* s3_config_check normalised it to scheme://authority */
  snprintf(c->scheme, sizeof c->scheme, "%.*s", (int)(sep - c->cfg.endpoint), c->cfg.endpoint);
  snprintf(c->authority, sizeof c->authority, "%s", sep + 3);
  snprintf(c->sigv4, sizeof c->sigv4, "aws:amz:%s:s3", c->cfg.region);
  if (c->cfg.resolve[0] && !(c->resolve = curl_slist_append(NULL, c->cfg.resolve))) {
    snprintf(err, err_size, "s3: out of memory");
    free(c);
    return NULL;
  }
  atomic_init(&c->in_flight, 0);
  return c;
}

const s3_config *s3_client_config(const s3_client *c) { return &c->cfg; }

size_t s3_client_in_flight(const s3_client *c) { return atomic_load(&c->in_flight); }

void s3_client_free(s3_client *c) {
  if (!c) return;
  assert(atomic_load(&c->in_flight) == 0);
  curl_slist_free_all(c->resolve);
  OPENSSL_cleanse(c->cfg.secret_key, sizeof c->cfg.secret_key);
  OPENSSL_cleanse(c->cfg.session_token, sizeof c->cfg.session_token);
  free(c);
}

bool s3_key_valid(const char *key) {
  size_t n = key ? strlen(key) : 0;
  return n >= 1 && n <= S3_KEY_MAX;
}

/* --- URLs --- */

/* The request's URL: the bucket's (key NULL) or an object's, with query, a
 * canonical query string (names in byte order, values S3-encoded): curl 7.88
 * signs the query as it is written, without sorting it. */
static bool build_url(const s3_client *c, buf *url, const char *key, const char *query) {
  bool ok;
  if (c->cfg.addressing == S3_VIRTUAL_HOST)
    ok = buf_printf(url, "%s://%s.%s/", c->scheme, c->cfg.bucket, c->authority);
  else
    ok = buf_printf(url, "%s://%s/%s%s", c->scheme, c->authority, c->cfg.bucket, key ? "/" : "");
  if (ok && key) ok = s3sign_uri_encode(url, key, strlen(key), true);
  if (ok && query) ok = buf_printf(url, "?%s", query);
  return ok;
}

/* --- one request --- */

typedef enum { OP_PUT, OP_GET, OP_HEAD, OP_DELETE, OP_LIST, OP_CREATE, OP_PART, OP_COMPLETE, OP_ABORT } op_kind;

typedef struct request {
  s3_client *c;
  op_kind op;
  s3_done_fn done;
  void *ctx;
  char *url;
  struct curl_slist *headers;
  /* The body: bytes in memory (mem), or len bytes of fd from offset. */
  const uint8_t *mem;
  int fd;
  uint64_t offset, len, pos;
  buf owned;   /* a body the request made itself (complete's XML) */
  int read_errno; /* the read callback gave up: errno, or -1 for a short file */
} request;

static void request_free(request *r) {
  free(r->url);
  curl_slist_free_all(r->headers);
  buf_free(&r->owned);
  free(r);
}

static size_t on_read(char *dst, size_t size, size_t nitems, void *ud) {
  request *r = ud;
  size_t room = size * nitems;
  uint64_t left = r->len - r->pos;
  size_t take = left < room ? (size_t)left : room;
  if (take == 0) return 0;
  if (r->mem) {
    memcpy(dst, r->mem + r->pos, take);
    r->pos += take;
    return take;
  }
  for (;;) {
    ssize_t got = pread(r->fd, dst, take, (off_t)(r->offset + r->pos));
    if (got > 0) {
      r->pos += (uint64_t)got;
      return (size_t)got;
    }
    if (got < 0 && errno == EINTR) continue;
    /* A file shorter than promised would make the request hang waiting for
     * bytes: give up on it instead. */
    r->read_errno = got < 0 ? errno : -1;
    return CURL_READFUNC_ABORT;
  }
}

/* libcurl rewinds a body it must send again (a redirect, a retried
 * connection); every source here can start over. */
static int on_seek(void *ud, curl_off_t offset, int origin) {
  request *r = ud;
  if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > r->len) return CURL_SEEKFUNC_FAIL;
  r->pos = (uint64_t)offset;
  return CURL_SEEKFUNC_OK;
}

/* Adds "name: value". */
static bool add_header(request *r, const char *name, const char *value) {
  char line[2300];
  int n = snprintf(line, sizeof line, "%s: %s", name, value);
  if (n < 0 || (size_t)n >= sizeof line) return false;
  struct curl_slist *l = curl_slist_append(r->headers, line);
  if (!l) return false;
  r->headers = l;
  return true;
}

static bool body_request(op_kind op) {
  return op == OP_PUT || op == OP_GET || op == OP_PART;
}

/* Everything but the method-specific options. payload_hash is what
 * x-amz-content-sha256 says (SHA-256 hex or UNSIGNED-PAYLOAD). */
static CURL *make_easy(request *r, const char *payload_hash) {
  s3_client *c = r->c;
  if (!add_header(r, "x-amz-content-sha256", payload_hash)) return NULL;
  if (c->cfg.session_token[0] && !add_header(r, "x-amz-security-token", c->cfg.session_token))
    return NULL;
  CURL *e = curlloop_easy_new(c->loop);
  if (!e) return NULL;
  bool ok =
      curl_easy_setopt(e, CURLOPT_URL, r->url) == CURLE_OK &&
      curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
      /* The key is already encoded as it is signed: curl must not resolve
       * "./" and "../" in it, or the request would name another object. */
      curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L) == CURLE_OK &&
      curl_easy_setopt(e, CURLOPT_AWS_SIGV4, c->sigv4) == CURLE_OK &&
      curl_easy_setopt(e, CURLOPT_USERNAME, c->cfg.access_key) == CURLE_OK &&
      curl_easy_setopt(e, CURLOPT_PASSWORD, c->cfg.secret_key) == CURLE_OK &&
      curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers) == CURLE_OK &&
      curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->cfg.connect_timeout_ms) == CURLE_OK &&
      /* Object bytes come as stored: never decoded on the way. */
      curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L) == CURLE_OK &&
      curl_easy_setopt(e, CURLOPT_FILETIME, 1L) == CURLE_OK &&
      (!c->resolve || curl_easy_setopt(e, CURLOPT_RESOLVE, c->resolve) == CURLE_OK);
  if (ok && body_request(r->op)) {
    ok = curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, S3_STALL_BYTES_PER_S) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)c->cfg.stall_timeout_s) == CURLE_OK;
  } else if (ok) {
    ok = curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->cfg.request_timeout_ms) == CURLE_OK;
  }
  if (!ok) {
    curl_easy_cleanup(e);
    return NULL;
  }
  return e;
}

/* A request body through the read callback (memory or file alike). */
static bool set_upload(CURL *e, request *r, bool post) {
  bool ok = curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_READDATA, r) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_SEEKDATA, r) == CURLE_OK;
  if (!ok) return false;
  if (post)
    return curl_easy_setopt(e, CURLOPT_POST, 1L) == CURLE_OK &&
           curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->len) == CURLE_OK;
  return curl_easy_setopt(e, CURLOPT_UPLOAD, 1L) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->len) == CURLE_OK;
}

/* --- answers --- */

static bool code_is(const char *code, const char *const *list) {
  for (; *list; list++)
    if (strcmp(code, *list) == 0) return true;
  return false;
}

s3_status s3_status_of(long http_status, const char *code) {
  static const char *const not_found[] = {"NoSuchKey", "NoSuchBucket", "NoSuchUpload", NULL};
  static const char *const denied[] = {
      "AccessDenied",  "SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken",
      "InvalidToken",  "TokenRefreshRequired",  "RequestTimeTooSkewed", "AccountProblem",
      "AllAccessDisabled", "InvalidSecurity", NULL};
  static const char *const retryable[] = {"SlowDown", "InternalError", "ServiceUnavailable",
                                          "RequestTimeout", "OperationAborted", NULL};
  if (code[0]) {
    if (code_is(code, not_found)) return S3_NOT_FOUND;
    if (code_is(code, denied)) return S3_DENIED;
    if (code_is(code, retryable)) return S3_RETRYABLE;
  }
  if (http_status == 404) return S3_NOT_FOUND;
  if (http_status == 401 || http_status == 403) return S3_DENIED;
  if (http_status >= 500 || http_status == 429) return S3_RETRYABLE;
  return S3_FAILED;
}

static void header_value(CURL *e, const char *name, char *dst, size_t size) {
  struct curl_header *h = NULL;
  if (curl_easy_header(e, name, 0, CURLH_HEADER, -1, &h) == CURLHE_OK && h && h->value)
    snprintf(dst, size, "%s", h->value);
}

/* "bytes START-END/TOTAL" (TOTAL may be "*"). */
static void parse_content_range(const char *v, s3_result *out) {
  unsigned long long start, end, total;
  if (sscanf(v, "bytes %llu-%llu/%llu", &start, &end, &total) == 3) {
    out->range_start = start;
    out->object_size = total;
  } else if (sscanf(v, "bytes %llu-%llu/*", &start, &end) == 2) {
    out->range_start = start;
  }
}

static void fill_metadata(request *r, CURL *e, curlloop_result *lr, s3_result *out) {
  header_value(e, "ETag", out->etag, sizeof out->etag);
  snprintf(out->content_type, sizeof out->content_type, "%s", lr->content_type);
  curl_off_t t = -1;
  if (curl_easy_getinfo(e, CURLINFO_FILETIME_T, &t) == CURLE_OK && t >= 0)
    out->last_modified_ms = (int64_t)t * 1000;
  curl_off_t len = -1;
  curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
  if (r->op == OP_HEAD) {
    if (len >= 0) out->object_size = (uint64_t)len;
  } else if (lr->http_status == 206) {
    char range[128] = "";
    header_value(e, "Content-Range", range, sizeof range);
    parse_content_range(range, out);
  } else {
    out->object_size = len >= 0 ? (uint64_t)len : lr->body.len;
  }
}

/* Fills out from a 2xx answer; a body that does not say what it should is a
 * failure (S3_FAILED, or what an <Error> inside a 200 says). */
static void read_success(request *r, CURL *e, curlloop_result *lr, s3_result *out) {
  out->status = S3_OK;
  switch (r->op) {
  case OP_GET:
    fill_metadata(r, e, lr, out);
    out->body = lr->body;
    memset(&lr->body, 0, sizeof lr->body); /* taken: the loop frees an empty buf */
    break;
  case OP_HEAD:
    fill_metadata(r, e, lr, out);
    break;
  case OP_PUT:
  case OP_PART:
    header_value(e, "ETag", out->etag, sizeof out->etag);
    if (!out->etag[0]) {
      out->status = S3_FAILED;
      snprintf(out->message, sizeof out->message, "the store's answer carries no ETag");
    }
    break;
  case OP_LIST:
    if (s3xml_parse_list(lr->body.data, lr->body.len, &out->list, out->message,
                         sizeof out->message) != 0)
      out->status = S3_FAILED;
    break;
  case OP_CREATE:
    out->upload_id = s3xml_parse_upload_id(lr->body.data, lr->body.len);
    if (!out->upload_id) {
      out->status = S3_FAILED;
      snprintf(out->message, sizeof out->message, "the store's answer names no UploadId");
    }
    break;
  case OP_COMPLETE:
    if (!s3xml_parse_complete(lr->body.data, lr->body.len, out->etag, sizeof out->etag)) {
      /* S3 can fail a completion after it answered 200: the error is the body. */
      if (s3xml_parse_error(lr->body.data, lr->body.len, out->error_code, sizeof out->error_code,
                            out->message, sizeof out->message)) {
        out->status = s3_status_of(500, out->error_code);
      } else {
        out->status = S3_FAILED;
        snprintf(out->message, sizeof out->message,
                 "the store's answer to a completion is not a CompleteMultipartUploadResult");
      }
    }
    break;
  case OP_DELETE:
  case OP_ABORT:
    break;
  }
}

static void read_answer(request *r, CURL *e, curlloop_result *lr, s3_result *out) {
  out->http_status = lr->http_status;
  if (lr->cancelled || lr->aborted) {
    out->status = S3_RETRYABLE;
    snprintf(out->message, sizeof out->message, "%s", lr->error);
    return;
  }
  if (lr->code != CURLE_OK) {
    if (r->read_errno) {
      out->status = S3_FAILED;
      snprintf(out->message, sizeof out->message, "reading the body from its file: %s",
               r->read_errno > 0 ? strerror(r->read_errno) : "the file is shorter than said");
    } else if (lr->body_truncated) {
      out->status = S3_FAILED;
      snprintf(out->message, sizeof out->message, "%s", lr->error);
    } else {
      out->status = S3_RETRYABLE; /* connect, TLS, timeout, reset: the network */
      snprintf(out->message, sizeof out->message, "%s", lr->error);
    }
    return;
  }
  header_value(e, "x-amz-request-id", out->request_id, sizeof out->request_id);
  if (lr->http_status >= 200 && lr->http_status < 300) {
    read_success(r, e, lr, out);
    return;
  }
  if (!s3xml_parse_error(lr->body.data, lr->body.len, out->error_code, sizeof out->error_code,
                         out->message, sizeof out->message) ||
      !out->message[0])
    snprintf(out->message, sizeof out->message, "HTTP %ld from the store%s%s", lr->http_status,
             out->error_code[0] ? ": " : "", out->error_code);
  out->status = s3_status_of(lr->http_status, out->error_code);
}

static void on_done(void *ud, CURL *e, curlloop_result *lr) {
  request *r = ud;
  s3_client *c = r->c;
  s3_result res = {0};
  read_answer(r, e, lr, &res);
  curl_easy_cleanup(e);
  s3_done_fn done = r->done;
  void *ctx = r->ctx;
  request_free(r);
  /* Out of the count before the callback: a waiter it wakes may free the
   * client at once, so c is not touched after done. */
  atomic_fetch_sub(&c->in_flight, 1);
  done(ctx, &res);
  s3_result_free(&res);
}

/* Hands the request to the loop; on failure frees it and returns -1. */
static int submit(request *r, CURL *e, size_t max_answer) {
  s3_client *c = r->c;
  atomic_fetch_add(&c->in_flight, 1);
  if (curlloop_submit(c->loop, e, max_answer, on_done, r) != 0) {
    atomic_fetch_sub(&c->in_flight, 1);
    curl_easy_cleanup(e);
    request_free(r);
    return -1;
  }
  return 0;
}

/* A request with its URL; NULL when the key is invalid or memory runs out. */
static request *request_new(s3_client *c, op_kind op, const char *key, const char *query,
                            s3_done_fn done, void *ctx) {
  if (!c || !c->loop || !done || (key && !s3_key_valid(key))) return NULL;
  request *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->c = c;
  r->op = op;
  r->done = done;
  r->ctx = ctx;
  r->fd = -1;
  buf url = BUF_INIT;
  if (!build_url(c, &url, key, query)) {
    buf_free(&url);
    free(r);
    return NULL;
  }
  r->url = buf_steal(&url);
  return r;
}

static const char *type_or_default(const char *content_type) {
  return content_type && content_type[0] ? content_type : "application/octet-stream";
}

/* --- operations --- */

static int start_upload(request *r, const char *payload_hash, const char *content_type, bool post,
                        size_t max_answer) {
  CURL *e = NULL;
  if ((content_type && !add_header(r, "Content-Type", content_type)) ||
      !(e = make_easy(r, payload_hash)) || !set_upload(e, r, post)) {
    if (e) curl_easy_cleanup(e);
    request_free(r);
    return -1;
  }
  return submit(r, e, max_answer);
}

int s3_put_object(s3_client *c, const char *key, const void *data, size_t len,
                  const char *content_type, s3_done_fn done, void *ctx) {
  if (!key || (!data && len)) return -1;
  request *r = request_new(c, OP_PUT, key, NULL, done, ctx);
  if (!r) return -1;
  r->mem = data ? data : (const uint8_t *)"";
  r->len = len;
  char hash[65];
  ids_sha256_hex(r->mem, len, hash);
  return start_upload(r, hash, type_or_default(content_type), false, S3_SMALL_ANSWER_MAX);
}

int s3_put_object_fd(s3_client *c, const char *key, int fd, uint64_t offset, uint64_t len,
                     const char *content_type, s3_done_fn done, void *ctx) {
  if (!key || fd < 0) return -1;
  request *r = request_new(c, OP_PUT, key, NULL, done, ctx);
  if (!r) return -1;
  r->fd = fd;
  r->offset = offset;
  r->len = len;
  return start_upload(r, "UNSIGNED-PAYLOAD", type_or_default(content_type), false,
                      S3_SMALL_ANSWER_MAX);
}

/* A request without a body: GET, HEAD, DELETE. */
static int start_plain(request *r, const char *method, size_t max_answer) {
  CURL *e = make_easy(r, S3_EMPTY_SHA256);
  bool ok = e != NULL;
  if (ok && strcmp(method, "HEAD") == 0) ok = curl_easy_setopt(e, CURLOPT_NOBODY, 1L) == CURLE_OK;
  else if (ok && strcmp(method, "DELETE") == 0)
    ok = curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE") == CURLE_OK;
  if (!ok) {
    if (e) curl_easy_cleanup(e);
    request_free(r);
    return -1;
  }
  return submit(r, e, max_answer);
}

int s3_get_object(s3_client *c, const char *key, uint64_t range_start, uint64_t range_len,
                  size_t max_bytes, s3_done_fn done, void *ctx) {
  if (!key || (range_len && range_start > UINT64_MAX - range_len)) return -1;
  request *r = request_new(c, OP_GET, key, NULL, done, ctx);
  if (!r) return -1;
  if (range_len) {
    char range[64];
    snprintf(range, sizeof range, "bytes=%" PRIu64 "-%" PRIu64, range_start,
             range_start + range_len - 1);
    if (!add_header(r, "Range", range)) {
      request_free(r);
      return -1;
    }
  }
  return start_plain(r, "GET", max_bytes);
}

int s3_head_object(s3_client *c, const char *key, s3_done_fn done, void *ctx) {
  if (!key) return -1;
  request *r = request_new(c, OP_HEAD, key, NULL, done, ctx);
  return r ? start_plain(r, "HEAD", 0) : -1;
}

int s3_delete_object(s3_client *c, const char *key, s3_done_fn done, void *ctx) {
  if (!key) return -1;
  request *r = request_new(c, OP_DELETE, key, NULL, done, ctx);
  return r ? start_plain(r, "DELETE", S3_SMALL_ANSWER_MAX) : -1;
}

/* "&name=value" (or without '&' first), value S3-encoded. */
static bool query_param(buf *q, const char *name, const char *value) {
  return buf_printf(q, "%s%s=", q->len ? "&" : "", name) &&
         s3sign_uri_encode(q, value, strlen(value), false);
}

int s3_list_objects(s3_client *c, const char *prefix, const char *continuation_token,
                    int max_keys, s3_done_fn done, void *ctx) {
  if (max_keys < 0 || max_keys > 1000) return -1;
  buf q = BUF_INIT;
  char mk[16];
  snprintf(mk, sizeof mk, "%d", max_keys);
  /* In byte order of the names: continuation-token, list-type, max-keys, prefix. */
  bool ok = (!continuation_token || query_param(&q, "continuation-token", continuation_token)) &&
            query_param(&q, "list-type", "2") && (max_keys == 0 || query_param(&q, "max-keys", mk)) &&
            (!prefix || !prefix[0] || query_param(&q, "prefix", prefix));
  request *r = ok ? request_new(c, OP_LIST, NULL, q.data, done, ctx) : NULL;
  buf_free(&q);
  return r ? start_plain(r, "GET", S3_LIST_ANSWER_MAX) : -1;
}

int s3_multipart_create(s3_client *c, const char *key, const char *content_type, s3_done_fn done,
                        void *ctx) {
  if (!key) return -1;
  /* "uploads=" rather than "uploads": SigV4's canonical query always has the '='. */
  request *r = request_new(c, OP_CREATE, key, "uploads=", done, ctx);
  if (!r) return -1;
  r->mem = (const uint8_t *)"";
  return start_upload(r, S3_EMPTY_SHA256, type_or_default(content_type), true,
                      S3_SMALL_ANSWER_MAX);
}

int s3_multipart_upload_part(s3_client *c, const char *key, const char *upload_id,
                             int part_number, int fd, uint64_t offset, uint64_t len,
                             s3_done_fn done, void *ctx) {
  if (!key || !upload_id || !upload_id[0] || part_number < 1 || part_number > S3_MAX_PARTS ||
      fd < 0)
    return -1;
  buf q = BUF_INIT;
  char pn[16];
  snprintf(pn, sizeof pn, "%d", part_number);
  bool ok = query_param(&q, "partNumber", pn) && query_param(&q, "uploadId", upload_id);
  request *r = ok ? request_new(c, OP_PART, key, q.data, done, ctx) : NULL;
  buf_free(&q);
  if (!r) return -1;
  r->fd = fd;
  r->offset = offset;
  r->len = len;
  return start_upload(r, "UNSIGNED-PAYLOAD", NULL, false, S3_SMALL_ANSWER_MAX);
}

int s3_multipart_complete(s3_client *c, const char *key, const char *upload_id,
                          const char *const *etags, size_t n, s3_done_fn done, void *ctx) {
  if (!key || !upload_id || !upload_id[0] || !etags || n == 0 || n > S3_MAX_PARTS) return -1;
  buf q = BUF_INIT;
  bool ok = query_param(&q, "uploadId", upload_id);
  request *r = ok ? request_new(c, OP_COMPLETE, key, q.data, done, ctx) : NULL;
  buf_free(&q);
  if (!r) return -1;
  if (!s3xml_build_complete(&r->owned, etags, n)) {
    request_free(r);
    return -1;
  }
  r->mem = (const uint8_t *)r->owned.data;
  r->len = r->owned.len;
  char hash[65];
  ids_sha256_hex(r->mem, r->len, hash);
  return start_upload(r, hash, "application/xml", true, S3_SMALL_ANSWER_MAX);
}

int s3_multipart_abort(s3_client *c, const char *key, const char *upload_id, s3_done_fn done,
                       void *ctx) {
  if (!key || !upload_id || !upload_id[0]) return -1;
  buf q = BUF_INIT;
  bool ok = query_param(&q, "uploadId", upload_id);
  request *r = ok ? request_new(c, OP_ABORT, key, q.data, done, ctx) : NULL;
  buf_free(&q);
  return r ? start_plain(r, "DELETE", S3_SMALL_ANSWER_MAX) : -1;
}

/* --- a file, whole or in parts --- */

typedef struct upload {
  s3_client *c;
  char *key;
  char *content_type;
  int fd;
  uint64_t len, part_size;
  size_t n_parts, next_part, parts_done, in_flight;
  char **etags;        /* one per part, as each part's answer gave it */
  char *upload_id;
  bool failed;
  s3_result failure;   /* the first failure, reported once the upload is aborted */
  s3_done_fn done;
  void *ctx;
} upload;

typedef struct part_ctx {
  upload *up;
  size_t index;
} part_ctx;

static void upload_free(upload *up) {
  if (up->etags)
    for (size_t i = 0; i < up->n_parts; i++) free(up->etags[i]);
  free(up->etags);
  free(up->key);
  free(up->content_type);
  free(up->upload_id);
  s3_result_free(&up->failure);
  free(up);
}

static void upload_finish(upload *up, s3_result *res) {
  s3_done_fn done = up->done;
  void *ctx = up->ctx;
  atomic_fetch_sub(&up->c->in_flight, 1); /* before done: see on_done */
  if (res == &up->failure) {
    s3_result failure;
    s3_result_move(&failure, &up->failure);
    upload_free(up);
    done(ctx, &failure);
    s3_result_free(&failure);
    return;
  }
  upload_free(up);
  done(ctx, res);
}

static void upload_fail(upload *up, s3_result *res) {
  if (up->failed) return; /* the first failure is the one reported */
  up->failed = true;
  s3_result_move(&up->failure, res);
}

static void upload_fail_local(upload *up, const char *what) {
  s3_result r = {.status = S3_FAILED};
  snprintf(r.message, sizeof r.message, "%s", what);
  upload_fail(up, &r);
}

static void on_aborted(void *ud, s3_result *res) {
  upload *up = ud;
  if (res->status != S3_OK && res->status != S3_NOT_FOUND) {
    char q[200];
    LOG_WARN("s3_abort_failed", "key=%s upload_id=%s error=%s",
             log_quote(up->key, q, sizeof q), up->upload_id, s3_status_name(res->status));
  }
  upload_finish(up, &up->failure);
}

/* Every part has called back and one failed: drop what was sent, then report. */
static void upload_abort(upload *up) {
  if (s3_multipart_abort(up->c, up->key, up->upload_id, on_aborted, up) != 0) {
    char q[200];
    /* The store keeps the parts until a lifecycle rule removes them. */
    LOG_WARN("s3_abort_not_started", "key=%s upload_id=%s", log_quote(up->key, q, sizeof q),
             up->upload_id);
    upload_finish(up, &up->failure);
  }
}

static void on_completed(void *ud, s3_result *res) {
  upload *up = ud;
  if (res->status == S3_OK) {
    upload_finish(up, res);
    return;
  }
  upload_fail(up, res);
  upload_abort(up);
}

static void on_part(void *ud, s3_result *res);

/* Sends parts while there is room, then completes or aborts once all are in. */
static void upload_pump(upload *up) {
  int max = up->c->cfg.max_parts_in_flight;
  while (!up->failed && up->in_flight < (size_t)max && up->next_part < up->n_parts) {
    size_t i = up->next_part;
    uint64_t off = (uint64_t)i * up->part_size;
    uint64_t n = up->len - off < up->part_size ? up->len - off : up->part_size;
    part_ctx *pc = malloc(sizeof *pc);
    if (!pc) {
      upload_fail_local(up, "out of memory starting a part");
      break;
    }
    *pc = (part_ctx){up, i};
    if (s3_multipart_upload_part(up->c, up->key, up->upload_id, (int)i + 1, up->fd, off, n,
                                 on_part, pc) != 0) {
      free(pc);
      upload_fail_local(up, "could not start a part (out of memory, or the loop is stopping)");
      break;
    }
    up->next_part++;
    up->in_flight++;
  }
  if (up->in_flight > 0) return;
  if (up->failed) {
    upload_abort(up);
  } else if (up->parts_done == up->n_parts) {
    if (s3_multipart_complete(up->c, up->key, up->upload_id, (const char *const *)up->etags,
                              up->n_parts, on_completed, up) != 0) {
      upload_fail_local(up, "could not start the completion (out of memory, or the loop is stopping)");
      upload_abort(up);
    }
  }
}

static void on_part(void *ud, s3_result *res) {
  part_ctx *pc = ud;
  upload *up = pc->up;
  size_t i = pc->index;
  free(pc);
  up->in_flight--;
  if (res->status == S3_OK) {
    if ((up->etags[i] = strdup(res->etag))) up->parts_done++;
    else upload_fail_local(up, "out of memory keeping a part's ETag");
  } else {
    upload_fail(up, res);
  }
  upload_pump(up);
}

static void on_created(void *ud, s3_result *res) {
  upload *up = ud;
  if (res->status != S3_OK) {
    upload_finish(up, res);
    return;
  }
  up->upload_id = res->upload_id;
  res->upload_id = NULL;
  upload_pump(up);
}

int s3_put_file(s3_client *c, const char *key, int fd, uint64_t len, const char *content_type,
                s3_done_fn done, void *ctx) {
  if (!c || !key || fd < 0 || !done) return -1;
  if (len <= c->cfg.part_size) return s3_put_object_fd(c, key, fd, 0, len, content_type, done, ctx);
  upload *up = calloc(1, sizeof *up);
  if (!up) return -1;
  /* S3 takes at most 10,000 parts: a larger object gets larger parts, whole MiB. */
  uint64_t part = c->cfg.part_size;
  if ((len + part - 1) / part > S3_MAX_PARTS) {
    uint64_t mib = (uint64_t)1 << 20;
    part = ((len + S3_MAX_PARTS - 1) / S3_MAX_PARTS + mib - 1) / mib * mib;
  }
  up->c = c;
  up->fd = fd;
  up->len = len;
  up->part_size = part;
  up->n_parts = (size_t)((len + part - 1) / part);
  up->done = done;
  up->ctx = ctx;
  up->key = strdup(key);
  up->content_type = strdup(type_or_default(content_type));
  up->etags = calloc(up->n_parts, sizeof *up->etags);
  if (!up->key || !up->content_type || !up->etags || up->part_size > S3_MAX_PART_SIZE) {
    upload_free(up);
    return -1;
  }
  /* The upload counts as in flight from here to its final callback. */
  atomic_fetch_add(&c->in_flight, 1);
  if (s3_multipart_create(c, key, up->content_type, on_created, up) != 0) {
    atomic_fetch_sub(&c->in_flight, 1);
    upload_free(up);
    return -1;
  }
  return 0;
}

/* --- presigned URLs --- */

char *s3_presign_get(const s3_client *c, const char *key, int expires_s, int64_t now_s) {
  if (!c || !s3_key_valid(key)) return NULL;
  buf path = BUF_INIT;
  char authority[sizeof c->authority + 80];
  bool ok;
  if (c->cfg.addressing == S3_VIRTUAL_HOST) {
    snprintf(authority, sizeof authority, "%s.%s", c->cfg.bucket, c->authority);
    ok = buf_append_str(&path, "/");
  } else {
    snprintf(authority, sizeof authority, "%s", c->authority);
    ok = buf_printf(&path, "/%s/", c->cfg.bucket);
  }
  char *url = NULL;
  if (ok && s3sign_uri_encode(&path, key, strlen(key), true)) {
    s3sign_presign_args a = {.method = "GET",
                             .scheme = c->scheme,
                             .authority = authority,
                             .path = path.data,
                             .region = c->cfg.region,
                             .access_key = c->cfg.access_key,
                             .secret_key = c->cfg.secret_key,
                             .session_token = c->cfg.session_token,
                             .now_s = now_s,
                             .expires_s = expires_s};
    url = s3sign_presign(&a);
  }
  buf_free(&path);
  return url;
}
