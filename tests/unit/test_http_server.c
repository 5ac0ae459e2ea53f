/* test_http_server.c - the server over real sockets, driven by libcurl. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "http/server.h"
#include "util/buf.h"
#include "http_testutil.h"

#define BODY_LIMIT (2u * 1024 * 1024)
#define FILE_SIZE (200 * 1024 + 7)

typedef struct fixture {
  http_router *router;
  http_server *server;
  int port;
  char dir[64];
  char file_path[128];
} fixture;

typedef struct response {
  CURLcode rc;
  long status;
  buf body;
  buf headers;
} response;

/* --- handlers --- */

static void h_hello(http_request *req, void *ctx) {
  http_reply_json(req, 200, json_pack("{s:s}", "hello", "world"));
}

static void h_item(http_request *req, void *ctx) {
  http_reply_json(req, 200, json_pack("{s:s, s:s, s:s}", "id", http_param_get(req, "id"), "path",
                                      req->path, "method", req->method));
}

static void h_model(http_request *req, void *ctx) {
  http_reply_json(req, 200, json_pack("{s:s}", "model", http_param_get(req, "model")));
}

static void h_query(http_request *req, void *ctx) {
  http_reply_json(req, 200,
                  json_pack("{s:s?, s:s?, s:s?, s:s?}", "a", http_query_get(req, "a"), "b",
                            http_query_get(req, "b"), "flag", http_query_get(req, "flag"),
                            "missing", http_query_get(req, "missing")));
}

static void h_echo(http_request *req, void *ctx) {
  char len[32];
  snprintf(len, sizeof len, "%zu", req->body_len);
  http_reply_header(req, "X-Body-Len", len);
  http_reply_bytes(req, 200, "application/octet-stream", req->body, req->body_len);
}

static void h_header(http_request *req, void *ctx) {
  http_reply_json(req, 200, json_pack("{s:s?}", "v", http_header_get(req, "x-test-header")));
}

static void h_noreply(http_request *req, void *ctx) {}

static void h_file(http_request *req, void *ctx) {
  const fixture *f = ctx;
  int fd = open(f->file_path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    if (fd >= 0) close(fd);
    http_reply_empty(req, 503);
    return;
  }
  http_reply_fd(req, 200, "image/png", fd, (uint64_t)st.st_size);
}

static void h_empty(http_request *req, void *ctx) {
  http_reply_header(req, "X-Custom", "yes");
  http_reply_json(req, 200, json_pack("{s:b}", "replaced", 1)); /* a second reply wins */
  http_reply_empty(req, 204);
}

static void h_account(http_request *req, void *ctx) {
  snprintf(req->log_account, sizeof req->log_account, "acct_42");
  http_reply_empty(req, 204);
}

/* Lets a request through only with "X-Key: good", and hands the handler a
 * note through guard_data. */
static bool g_key(http_request *req, void *ctx) {
  const char *k = http_header_get(req, "X-Key");
  if (!k || strcmp(k, "good") != 0) {
    http_reply_header(req, "WWW-Authenticate", "Bearer");
    http_reply_json(req, 401, json_pack("{s:{s:s, s:s, s:n}}", "error", "code", "unauthorized",
                                        "message", "no", "param"));
    return false;
  }
  req->guard_data = strdup("from-the-guard");
  return true;
}

/* A broken guard: refuses without a reply. */
static bool g_silent(http_request *req, void *ctx) { return false; }

static void h_guarded(http_request *req, void *ctx) {
  http_reply_json(req, 200, json_pack("{s:s, s:I}", "note", (const char *)req->guard_data,
                                      "len", (json_int_t)req->body_len));
}

static bool add_routes(http_router *r, fixture *f) {
  return http_router_add(r, "GET", "/hello", h_hello, NULL) &&
         http_router_add(r, "GET", "/items", h_hello, NULL) &&
         http_router_add(r, "POST", "/items", h_hello, NULL) &&
         http_router_add(r, "GET", "/items/{id}", h_item, NULL) &&
         http_router_add(r, "GET", "/m/{model}:gen", h_model, NULL) &&
         http_router_add(r, "GET", "/query", h_query, NULL) &&
         http_router_add(r, "POST", "/echo", h_echo, NULL) &&
         http_router_add(r, "GET", "/hdr", h_header, NULL) &&
         http_router_add(r, "GET", "/noreply", h_noreply, NULL) &&
         http_router_add(r, "GET", "/file", h_file, f) &&
         http_router_add(r, "GET", "/empty", h_empty, NULL) &&
         http_router_add(r, "GET", "/account", h_account, NULL) &&
         http_router_add_guarded(r, "POST", "/guarded", g_key, h_guarded, NULL) &&
         http_router_add_guarded(r, "GET", "/guarded", g_key, h_guarded, NULL) &&
         http_router_add_guarded(r, "GET", "/silent", g_silent, h_hello, NULL);
}

static http_server *start(http_router *r, const char *host, http_error_fn on_error) {
  http_server_config cfg = {.listen_host = host,
                            .listen_port = 0,
                            .threads = 4,
                            .max_body_bytes = BODY_LIMIT,
                            .connection_timeout_s = 30,
                            .on_error = on_error};
  char err[256];
  http_server *s = http_server_start(&cfg, r, err, sizeof err);
  if (!s) fprintf(stderr, "start failed: %s\n", err);
  return s;
}

static bool write_test_file(const char *path) {
  FILE *fp = fopen(path, "wb");
  if (!fp) return false;
  for (int i = 0; i < FILE_SIZE; i++) fputc((i * 7 + i / 251) & 0xff, fp);
  return fclose(fp) == 0;
}

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f) return -1;
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-http-XXXXXX");
  if (!mkdtemp(f->dir)) return -1;
  snprintf(f->file_path, sizeof f->file_path, "%s/blob.bin", f->dir);
  if (!write_test_file(f->file_path)) return -1;
  f->router = http_router_new();
  if (!f->router || !add_routes(f->router, f)) return -1;
  f->server = start(f->router, "127.0.0.1", NULL);
  if (!f->server) return -1;
  f->port = http_server_port(f->server);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  http_server_stop(f->server);
  http_router_free(f->router);
  unlink(f->file_path);
  rmdir(f->dir);
  free(f);
  return 0;
}

/* --- client side --- */

static size_t on_data(char *p, size_t size, size_t n, void *ud) {
  return buf_append(ud, p, size * n) ? size * n : 0;
}

typedef struct request_spec {
  const char *method; /* NULL: GET */
  const char *path;
  const void *body;
  size_t body_len;
  const char *header; /* one extra request header, or NULL */
} request_spec;

static CURL *easy_for(int port, const char *path, response *out, struct curl_slist *hdrs) {
  CURL *e = curl_easy_init();
  if (!e) return NULL;
  char url[512];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &out->body);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_data);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &out->headers);
  curl_easy_setopt(e, CURLOPT_TIMEOUT, 60L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  if (hdrs) curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
  return e;
}

static void perform(CURL *e, response *out) {
  out->rc = curl_easy_perform(e);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &out->status);
  curl_easy_cleanup(e);
}

static void request(int port, const request_spec *spec, response *out) {
  memset(out, 0, sizeof *out);
  struct curl_slist *hdrs = spec->header ? curl_slist_append(NULL, spec->header) : NULL;
  CURL *e = easy_for(port, spec->path, out, hdrs);
  assert_non_null(e);
  const char *method = spec->method ? spec->method : "GET";
  if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "GET") != 0) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  if (spec->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, spec->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)spec->body_len);
  }
  perform(e, out);
  curl_slist_free_all(hdrs);
}

static void get(int port, const char *path, response *out) {
  request_spec spec = {.path = path};
  request(port, &spec, out);
}

static void response_free(response *r) {
  buf_free(&r->body);
  buf_free(&r->headers);
}

/* Value of the last header called name (the final response's), or NULL. */
static const char *header_of(const response *r, const char *name, char *out, size_t out_size) {
  const char *found = NULL;
  size_t nlen = strlen(name);
  for (const char *line = r->headers.data; line && *line;) {
    const char *eol = strstr(line, "\r\n");
    size_t len = eol ? (size_t)(eol - line) : strlen(line);
    if (len > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
      const char *v = line + nlen + 1;
      while (*v == ' ') v++;
      snprintf(out, out_size, "%.*s", (int)(len - (size_t)(v - line)), v);
      found = out;
    }
    line = eol ? eol + 2 : line + len;
  }
  return found;
}

static json_t *body_json(const response *r) {
  json_error_t jerr;
  json_t *j = r->body.data ? json_loadb(r->body.data, r->body.len, 0, &jerr) : NULL;
  assert_non_null(j);
  return j;
}

static void assert_error_body(const response *r, const char *slug) {
  json_t *j = body_json(r);
  json_t *e = json_object_get(j, "error");
  assert_string_equal(json_string_value(json_object_get(e, "code")), slug);
  assert_non_null(json_string_value(json_object_get(e, "message")));
  assert_true(json_is_null(json_object_get(e, "param")));
  json_decref(j);
}

static bool is_hex32(const char *s) {
  if (!s || strlen(s) != 32) return false;
  for (; *s; s++)
    if (!isxdigit((unsigned char)*s) || isupper((unsigned char)*s)) return false;
  return true;
}

/* --- tests --- */

static void test_json_ok(void **state) {
  fixture *f = *state;
  assert_true(f->port > 0);
  response r;
  get(f->port, "/hello", &r);
  assert_int_equal(r.rc, CURLE_OK);
  assert_int_equal(r.status, 200);
  char v[128];
  assert_non_null(header_of(&r, "Content-Type", v, sizeof v));
  assert_string_equal(v, "application/json");
  json_t *j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "hello")), "world");
  json_decref(j);
  response_free(&r);
}

static void test_request_id(void **state) {
  fixture *f = *state;
  char v[128];
  response r;
  get(f->port, "/hello", &r);
  assert_true(is_hex32(header_of(&r, "X-Request-Id", v, sizeof v)));
  response_free(&r);

  request_spec spec = {.path = "/hello", .header = "X-Request-Id: Abc.123_x-Y"};
  request(f->port, &spec, &r);
  assert_string_equal(header_of(&r, "X-Request-Id", v, sizeof v), "Abc.123_x-Y");
  response_free(&r);

  char hdr[128], id64[65];
  memset(id64, 'a', 64);
  id64[64] = '\0';
  snprintf(hdr, sizeof hdr, "X-Request-Id: %s", id64);
  spec.header = hdr;
  request(f->port, &spec, &r);
  assert_string_equal(header_of(&r, "X-Request-Id", v, sizeof v), id64);
  response_free(&r);

  char too_long[128];
  snprintf(too_long, sizeof too_long, "X-Request-Id: %sb", id64); /* 65 characters */
  const char *bad[] = {"X-Request-Id: bad id", "X-Request-Id: a/b", "X-Request-Id: \xc3\xa9",
                       too_long};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    spec.header = bad[i];
    request(f->port, &spec, &r);
    assert_int_equal(r.status, 200);
    assert_true(is_hex32(header_of(&r, "X-Request-Id", v, sizeof v)));
    response_free(&r);
  }
}

static void test_not_found_and_method(void **state) {
  fixture *f = *state;
  char v[128];
  response r;
  get(f->port, "/nope", &r);
  assert_int_equal(r.status, 404);
  assert_string_equal(header_of(&r, "Content-Type", v, sizeof v), "application/json");
  assert_true(is_hex32(header_of(&r, "X-Request-Id", v, sizeof v)));
  assert_error_body(&r, "not_found");
  response_free(&r);

  get(f->port, "/hello/", &r); /* trailing slash is another path */
  assert_int_equal(r.status, 404);
  response_free(&r);

  request_spec spec = {.method = "DELETE", .path = "/items"};
  request(f->port, &spec, &r);
  assert_int_equal(r.status, 405);
  assert_string_equal(header_of(&r, "Allow", v, sizeof v), "GET, POST");
  assert_true(is_hex32(header_of(&r, "X-Request-Id", v, sizeof v)));
  assert_error_body(&r, "method_not_allowed");
  response_free(&r);

  /* A 405 for a request with a body, answered before the body is read. */
  spec = (request_spec){.method = "PUT", .path = "/echo", .body = "abc", .body_len = 3};
  request(f->port, &spec, &r);
  assert_int_equal(r.status, 405);
  assert_string_equal(header_of(&r, "Allow", v, sizeof v), "POST");
  response_free(&r);
}

/* An error answered without a body in flight keeps the connection open. */
static void test_keepalive_after_error(void **state) {
  fixture *f = *state;
  response r;
  memset(&r, 0, sizeof r);
  CURL *e = easy_for(f->port, "/nope", &r, NULL);
  assert_non_null(e);
  assert_int_equal(curl_easy_perform(e), CURLE_OK);
  long status = 0, connects = -1;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  assert_int_equal(status, 404);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/items", f->port);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PATCH");
  assert_int_equal(curl_easy_perform(e), CURLE_OK);
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &connects);
  assert_int_equal(status, 405);
  assert_int_equal(connects, 0); /* the first connection was reused */
  curl_easy_cleanup(e);
  response_free(&r);
}

static void test_head(void **state) {
  fixture *f = *state;
  char v[128];
  response r;
  request_spec spec = {.method = "HEAD", .path = "/hello"};
  request(f->port, &spec, &r);
  assert_int_equal(r.rc, CURLE_OK);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body.len, 0);
  assert_true(is_hex32(header_of(&r, "X-Request-Id", v, sizeof v)));
  response_free(&r);
}

static void test_path_params(void **state) {
  fixture *f = *state;
  response r;
  get(f->port, "/items/caf%C3%A9%20au%25lait", &r);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "id")), "caf\xc3\xa9 au%lait");
  assert_string_equal(json_string_value(json_object_get(j, "path")),
                      "/items/caf%C3%A9%20au%25lait"); /* the path itself stays raw */
  assert_string_equal(json_string_value(json_object_get(j, "method")), "GET");
  json_decref(j);
  response_free(&r);

  get(f->port, "/items/a%2Fb", &r); /* an encoded '/' never lands in a parameter */
  assert_int_equal(r.status, 404);
  response_free(&r);

  get(f->port, "/m/gemini-2.5:gen", &r);
  assert_int_equal(r.status, 200);
  j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "model")), "gemini-2.5");
  json_decref(j);
  response_free(&r);
}

static void test_query_args(void **state) {
  fixture *f = *state;
  response r;
  get(f->port, "/query?a=hello%20w%C3%B6rld%2F%25&b=x+y&flag", &r);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "a")), "hello w\xc3\xb6rld/%");
  assert_string_equal(json_string_value(json_object_get(j, "b")), "x y");
  assert_string_equal(json_string_value(json_object_get(j, "flag")), "");
  assert_true(json_is_null(json_object_get(j, "missing")));
  json_decref(j);
  response_free(&r);

  get(f->port, "/query?a=%zz%00&b=plain", &r); /* bad escapes stay as written */
  j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "a")), "%zz%00");
  assert_string_equal(json_string_value(json_object_get(j, "b")), "plain");
  json_decref(j);
  response_free(&r);
}

static void test_request_header(void **state) {
  fixture *f = *state;
  response r;
  request_spec spec = {.path = "/hdr", .header = "X-TEST-Header: some value"};
  request(f->port, &spec, &r);
  json_t *j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "v")), "some value");
  json_decref(j);
  response_free(&r);
}

static char *pattern_bytes(size_t n) {
  char *p = malloc(n ? n : 1);
  assert_non_null(p);
  uint32_t x = 2463534242u;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    p[i] = (char)(x & 0xff);
  }
  return p;
}

static void post_echo(int port, size_t n, response *r) {
  char *data = pattern_bytes(n);
  request_spec spec = {.method = "POST", .path = "/echo", .body = data, .body_len = n};
  request(port, &spec, r);
  if (r->status == 200) {
    assert_int_equal(r->body.len, n);
    assert_memory_equal(r->body.data ? r->body.data : "", data, n);
  }
  free(data);
}

static void test_post_body(void **state) {
  fixture *f = *state;
  char v[64];
  response r;
  post_echo(f->port, 1024 * 1024, &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(header_of(&r, "X-Body-Len", v, sizeof v), "1048576");
  response_free(&r);

  post_echo(f->port, BODY_LIMIT, &r); /* exactly the limit is fine */
  assert_int_equal(r.status, 200);
  response_free(&r);

  post_echo(f->port, 0, &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(header_of(&r, "X-Body-Len", v, sizeof v), "0");
  response_free(&r);

  post_echo(f->port, BODY_LIMIT + 1, &r);
  assert_int_equal(r.status, 413);
  assert_error_body(&r, "payload_too_large");
  response_free(&r);
}

typedef struct feeder {
  size_t limit; /* bytes to offer in total */
  size_t sent;
} feeder;

static size_t feed(char *p, size_t size, size_t n, void *ud) {
  feeder *fd = ud;
  size_t want = size * n;
  if (want > fd->limit - fd->sent) want = fd->limit - fd->sent;
  memset(p, 'z', want);
  fd->sent += want;
  return want;
}

/* POSTs fd->limit bytes from a callback: chunked when declared < 0. */
static void post_streamed(int port, feeder *fd, curl_off_t declared, const char *header,
                          response *out) {
  memset(out, 0, sizeof *out);
  struct curl_slist *hdrs = curl_slist_append(NULL, header ? header : "X-Nothing: 1");
  CURL *e = easy_for(port, "/echo", out, hdrs);
  assert_non_null(e);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_READFUNCTION, feed);
  curl_easy_setopt(e, CURLOPT_READDATA, fd);
  if (declared >= 0) curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, declared);
  perform(e, out);
  curl_slist_free_all(hdrs);
}

static void test_content_length_over_limit(void **state) {
  fixture *f = *state;
  char v[128];
  response r;
  feeder fd = {.limit = 64u * 1024 * 1024};
  post_streamed(f->port, &fd, (curl_off_t)fd.limit, "Expect: 100-continue", &r);
  assert_int_equal(r.status, 413);
  assert_true(fd.sent < fd.limit); /* refused on the headers alone */
  assert_true(is_hex32(header_of(&r, "X-Request-Id", v, sizeof v)));
  assert_error_body(&r, "payload_too_large");
  response_free(&r);

  get(f->port, "/hello", &r); /* and the server is fine */
  assert_int_equal(r.status, 200);
  response_free(&r);
}

static void test_content_length_answered_before_body(void **state) {
  fixture *f = *state;
  int s = connect_local(f->port);
  assert_true(s >= 0);
  /* No Expect header: a client that will send 64 MiB, of which it sent 5 bytes. */
  const char head[] = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 67108864\r\n\r\nhello";
  assert_int_equal(send(s, head, sizeof head - 1, MSG_NOSIGNAL), (ssize_t)(sizeof head - 1));
  char reply[64] = {0};
  size_t got = 0;
  while (got < 12) {
    ssize_t n = recv(s, reply + got, sizeof reply - 1 - got, 0);
    assert_true(n > 0);
    got += (size_t)n;
  }
  assert_memory_equal(reply, "HTTP/1.1 413", 12);
  close(s);
}

/* A guard refuses on the headers: the client that announced 2 MB and sent
 * none of it still gets its 401, and the handler never runs. */
static void test_guard_refuses_before_the_body(void **state) {
  fixture *f = *state;
  static const char *const heads[] = {
      "POST /guarded HTTP/1.1\r\nHost: t\r\nX-Key: bad\r\nContent-Length: 2000000\r\n\r\n",
      "POST /guarded HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n"
      "Expect: 100-continue\r\n\r\n",
      "POST /guarded HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
    int s = connect_local(f->port);
    assert_true(s >= 0);
    assert_true(send_all(s, heads[i], strlen(heads[i])));
    char head[2048];
    assert_int_equal(read_head(s, head, sizeof head), 401);
    assert_non_null(strcasestr(head, "WWW-Authenticate: Bearer"));
    assert_non_null(strcasestr(head, "X-Request-Id: "));
    close(s);
  }
}

static void test_guard_lets_through(void **state) {
  fixture *f = *state;
  response r;
  request_spec spec = {.method = "POST", .path = "/guarded", .body = "12345", .body_len = 5,
                       .header = "X-Key: good"};
  request(f->port, &spec, &r);
  assert_int_equal(r.status, 200);
  json_t *j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "note")), "from-the-guard");
  assert_int_equal(json_integer_value(json_object_get(j, "len")), 5);
  json_decref(j);
  response_free(&r);

  /* Without a body, a refusal keeps the connection usable. */
  spec = (request_spec){.path = "/guarded", .header = "X-Key: bad"};
  request(f->port, &spec, &r);
  assert_int_equal(r.status, 401);
  assert_error_body(&r, "unauthorized");
  response_free(&r);

  get(f->port, "/silent", &r); /* a guard that forgets to reply gives a 500, not a hang */
  assert_int_equal(r.status, 500);
  assert_error_body(&r, "internal_error");
  response_free(&r);
}

static void test_chunked_over_limit(void **state) {
  fixture *f = *state;
  char v[128];
  response r;
  feeder fd = {.limit = BODY_LIMIT + BODY_LIMIT / 2};
  post_streamed(f->port, &fd, -1, "Transfer-Encoding: chunked", &r);
  assert_int_equal(r.rc, CURLE_OK);
  assert_int_equal(r.status, 413);
  assert_true(is_hex32(header_of(&r, "X-Request-Id", v, sizeof v)));
  assert_error_body(&r, "payload_too_large");
  response_free(&r);

  /* Within the limit, chunked works. */
  fd = (feeder){.limit = 300000};
  post_streamed(f->port, &fd, -1, "Transfer-Encoding: chunked", &r);
  assert_int_equal(r.status, 200);
  assert_int_equal(r.body.len, 300000);
  response_free(&r);
}

static void test_chunked_endless_is_cut(void **state) {
  fixture *f = *state;
  response r;
  feeder fd = {.limit = 256u * 1024 * 1024};
  post_streamed(f->port, &fd, -1, "Transfer-Encoding: chunked", &r);
  assert_true(r.rc != CURLE_OK || r.status != 200);
  assert_true(fd.sent < fd.limit); /* the server stopped reading long before the end */
  response_free(&r);

  get(f->port, "/hello", &r);
  assert_int_equal(r.status, 200);
  response_free(&r);
}

static void test_no_reply_is_500(void **state) {
  fixture *f = *state;
  char v[128];
  response r;
  get(f->port, "/noreply", &r);
  assert_int_equal(r.status, 500);
  assert_true(is_hex32(header_of(&r, "X-Request-Id", v, sizeof v)));
  assert_error_body(&r, "internal_error");
  response_free(&r);
}

static void test_fd_reply(void **state) {
  fixture *f = *state;
  char v[128];
  response r;
  get(f->port, "/file", &r);
  assert_int_equal(r.status, 200);
  assert_string_equal(header_of(&r, "Content-Type", v, sizeof v), "image/png");
  assert_int_equal(r.body.len, FILE_SIZE);
  for (int i = 0; i < FILE_SIZE; i++)
    if ((unsigned char)r.body.data[i] != ((i * 7 + i / 251) & 0xff)) fail_msg("byte %d differs", i);
  response_free(&r);
}

static void test_empty_reply_and_headers(void **state) {
  fixture *f = *state;
  char v[128];
  response r;
  get(f->port, "/empty", &r);
  assert_int_equal(r.status, 204);
  assert_int_equal(r.body.len, 0);
  assert_string_equal(header_of(&r, "X-Custom", v, sizeof v), "yes");
  assert_null(header_of(&r, "Content-Type", v, sizeof v)); /* dropped with the JSON reply */
  response_free(&r);
}

typedef struct worker {
  int port;
  int first;
  int count;
  int ok;
} worker;

static void *worker_run(void *arg) {
  worker *w = arg;
  for (int i = w->first; i < w->first + w->count; i++) {
    char path[64], want[32];
    snprintf(path, sizeof path, "/items/n%d", i);
    snprintf(want, sizeof want, "\"id\":\"n%d\"", i);
    response r;
    memset(&r, 0, sizeof r);
    CURL *e = easy_for(w->port, path, &r, NULL);
    if (!e) continue;
    perform(e, &r);
    if (r.rc == CURLE_OK && r.status == 200 && r.body.data && strstr(r.body.data, want)) w->ok++;
    response_free(&r);
  }
  return NULL;
}

static void test_concurrent(void **state) {
  fixture *f = *state;
  enum { THREADS = 5, EACH = 20 };
  pthread_t t[THREADS];
  worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (worker){.port = f->port, .first = i * EACH, .count = EACH};
    assert_int_equal(pthread_create(&t[i], NULL, worker_run, &w[i]), 0);
  }
  int ok = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    ok += w[i].ok;
  }
  assert_int_equal(ok, THREADS * EACH);
}

static http_server *start_with(http_router *r, http_server_config cfg) {
  cfg.listen_host = "127.0.0.1";
  cfg.connection_timeout_s = 30;
  if (!cfg.max_body_bytes) cfg.max_body_bytes = BODY_LIMIT;
  char err[256];
  http_server *s = http_server_start(&cfg, r, err, sizeof err);
  if (!s) fprintf(stderr, "start failed: %s\n", err);
  return s;
}

static const char *const HOLD_HEAD = /* 1,800,000 bytes announced */
    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1800000\r\nExpect: 100-continue\r\n\r\n";
static const char *const SECOND_HEAD = /* 1,500,000: fits beside 1 MiB of a 3 MiB budget, not 1.8 */
    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1500000\r\nConnection: close\r\n\r\n";

/* Sends n bytes of 'z'. */
static void send_body(int s, size_t n) {
  char chunk[8192];
  memset(chunk, 'z', sizeof chunk);
  while (n > 0) {
    size_t k = n < sizeof chunk ? n : sizeof chunk;
    assert_true(send_all(s, chunk, k));
    n -= k;
  }
}

/* Opens SECOND_HEAD until the server answers it 503 at once, that is until
 * it has read enough of another body that this one no longer fits; -1 when
 * that does not happen within the deadline. */
static int poll_for_busy(int port, char *head, size_t size) {
  for (int i = 0; i < 2000; i++) {
    int s = open_with(port, SECOND_HEAD);
    if (readable_within(s, 5)) {
      int status = read_head(s, head, size);
      close(s);
      if (status == 503) return 503;
    } else {
      close(s); /* accepted: the budget still had room; look again */
    }
  }
  return -1;
}

/* The bodies held by all requests together have a budget, counted as their
 * buffers are allocated: a declared body takes its first megabyte when it
 * starts and the rest once it is over that. Over the budget, a new body gets
 * 503 with Retry-After, at once when its announced length no longer fits. */
static void test_body_budget(void **state) {
  fixture *f = *state;
  http_server *srv = start_with(f->router, (http_server_config){
                                               .threads = 2, .max_buffered_body_bytes = 3 << 20});
  assert_non_null(srv);
  int port = http_server_port(srv);
  char head[2048];

  /* A body that has barely started holds 1 MiB: another large one fits. */
  int first = open_with(port, HOLD_HEAD);
  assert_int_equal(read_head(first, head, sizeof head), 100);
  send_body(first, 1000);
  int second = open_with(port, SECOND_HEAD);
  send_body(second, 1500000);
  assert_int_equal(read_head(second, head, sizeof head), 200);
  close(second);

  /* Once more than a megabyte of the first body is in, its buffer is its
   * whole 1,800,000 bytes, and 1,500,000 more no longer fit. */
  send_body(first, 1200000);
  assert_int_equal(poll_for_busy(port, head, sizeof head), 503);
  assert_non_null(strcasestr(head, "Retry-After: 2"));

  response r; /* small bodies still fit, and body-less requests are untouched */
  post_echo(port, 100000, &r);
  assert_int_equal(r.status, 200);
  response_free(&r);
  feeder fd = {.limit = 1300000}; /* a chunked body is refused once it outgrows the rest */
  post_streamed(port, &fd, -1, "Transfer-Encoding: chunked", &r);
  assert_int_equal(r.status, 503);
  assert_error_body(&r, "server_busy");
  response_free(&r);

  send_body(first, 1800000 - 1201000);
  assert_int_equal(read_head(first, head, sizeof head), 200);
  close(first);

  /* The handler has run: its budget is back, whatever the client does now. */
  second = open_with(port, SECOND_HEAD);
  send_body(second, 1500000);
  assert_int_equal(read_head(second, head, sizeof head), 200);
  close(second);
  http_server_stop(srv);
}

static const char *const HELLO = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";

/* Over max_connections, the server stops accepting: the next client waits
 * in the listen queue until a connection closes, then is served. */
static void test_connection_limit(void **state) {
  fixture *f = *state;
  http_server *srv =
      start_with(f->router, (http_server_config){.threads = 1, .max_connections = 2});
  assert_non_null(srv);
  int port = http_server_port(srv);
  char head[2048];
  int a = open_with(port, HELLO), b = open_with(port, HELLO);
  assert_int_equal(read_head(a, head, sizeof head), 200);
  assert_int_equal(read_head(b, head, sizeof head), 200); /* both kept alive */
  int c = open_with(port, HELLO);
  /* A bounded look for an answer that must not come while a and b are open. */
  assert_false(readable_within(c, 300));
  close(a);
  assert_int_equal(read_head(c, head, sizeof head), 200);
  close(b);
  close(c);
  http_server_stop(srv);
}

/* Over max_connections_per_ip, a new connection from that address is closed
 * at once. */
static void test_connection_limit_per_ip(void **state) {
  fixture *f = *state;
  http_server *srv =
      start_with(f->router, (http_server_config){.threads = 2, .max_connections_per_ip = 2});
  assert_non_null(srv);
  int port = http_server_port(srv);
  char head[2048];
  int a = open_with(port, HELLO), b = open_with(port, HELLO);
  assert_int_equal(read_head(a, head, sizeof head), 200);
  assert_int_equal(read_head(b, head, sizeof head), 200);
  int c = open_with(port, HELLO);
  char body[512];
  assert_int_equal(read_response(c, head, sizeof head, body, sizeof body), 429);
  assert_non_null(strcasestr(head, "Connection: close"));
  assert_json_error(body, "too_many_connections");
  assert_true(closed_by_server(c));
  close(c);
  close(a);
  /* The server notices a's close on its own time: poll, with a deadline. */
  int served = 0;
  for (int i = 0; i < 2000 && served != 200; i++) {
    int d = open_with(port, HELLO);
    served = read_head(d, head, sizeof head);
    close(d);
    if (served != 200) usleep(10000);
  }
  assert_int_equal(served, 200);
  close(b);
  http_server_stop(srv);
}

static void *stopper(void *srv) {
  http_server_stop(srv);
  return NULL;
}

/* GET /hello on a new connection: its status, or -1 when the server closed
 * the connection without an answer (the request may not even go out). */
static int hello_status(int port) {
  int s = connect_local(port);
  if (s < 0) return -1;
  char head[2048];
  int status = send_all(s, HELLO, strlen(HELLO)) ? read_head(s, head, sizeof head) : -1;
  close(s);
  return status;
}

static const char *const SLOW_HEAD =
    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n";

/* A stop closes new connections at once but waits for the request in
 * progress, which gets its whole answer. */
static void test_stop_waits_for_requests(void **state) {
  fixture *f = *state;
  http_server *srv =
      start_with(f->router, (http_server_config){.threads = 2, .shutdown_timeout_ms = 60000});
  assert_non_null(srv);
  int port = http_server_port(srv);
  char head[2048];
  int s = open_with(port, SLOW_HEAD);
  assert_int_equal(read_head(s, head, sizeof head), 100); /* in progress now */
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, stopper, srv), 0);
  int turned_away = 0; /* poll, with a deadline, for new clients to be turned away */
  for (int i = 0; i < 2000 && !turned_away; i++) {
    turned_away = hello_status(port) == -1;
    if (!turned_away) usleep(10000);
  }
  assert_true(turned_away);
  assert_true(send_all(s, "0123456789", 10));
  assert_int_equal(read_head(s, head, sizeof head), 200);
  assert_non_null(strcasestr(head, "Connection: close"));
  char body[16] = {0};
  ssize_t n = recv(s, body, 10, MSG_WAITALL);
  assert_int_equal(n, 10);
  assert_string_equal(body, "0123456789");
  close(s);
  pthread_join(t, NULL);
}

/* ...but not longer than shutdown_timeout_ms. */
static void test_stop_gives_up(void **state) {
  fixture *f = *state;
  http_server *srv =
      start_with(f->router, (http_server_config){.threads = 2, .shutdown_timeout_ms = 100});
  assert_non_null(srv);
  char head[2048];
  int s = open_with(http_server_port(srv), SLOW_HEAD);
  assert_int_equal(read_head(s, head, sizeof head), 100);
  http_server_stop(srv); /* returns: the request that never sends its body is cut */
  assert_int_equal(read_head(s, head, sizeof head), -1);
  close(s);
}

/* A listener claims the port before the server exists: a second claim
 * fails, and a client that connects meanwhile waits and is then served. */
static void test_listener_before_server(void **state) {
  fixture *f = *state;
  char err[256] = "";
  http_listener *l = http_listen("127.0.0.1", 0, err, sizeof err);
  assert_non_null(l);
  int port = http_listener_port(l);
  assert_true(port > 0);
  assert_null(http_listen("127.0.0.1", port, err, sizeof err));
  assert_non_null(strstr(err, "in use"));
  int early = open_with(port, HELLO); /* queued by the kernel, nobody serves it yet */
  http_server *srv = start_with(f->router, (http_server_config){.listener = l, .threads = 2});
  assert_non_null(srv);
  assert_int_equal(http_server_port(srv), port);
  char head[2048];
  assert_int_equal(read_head(early, head, sizeof head), 200);
  close(early);
  http_server_stop(srv);

  l = http_listen("127.0.0.1", 0, err, sizeof err); /* never served: closed as is */
  assert_non_null(l);
  http_listener_close(l);
  assert_null(http_listen("127.0.0.1", 70000, err, sizeof err));
  assert_null(http_listen("no-such-host.invalid", 0, err, sizeof err));
}

/* "::" takes IPv4 clients too, as before. */
static void test_listen_dual_stack(void **state) {
  fixture *f = *state;
  char err[256] = "";
  http_listener *l = http_listen("::", 0, err, sizeof err);
  if (!l) skip(); /* no IPv6 in this sandbox */
  http_server *srv = start_with(f->router, (http_server_config){.listener = l, .threads = 1});
  assert_non_null(srv);
  response r;
  get(http_server_port(srv), "/hello", &r); /* over 127.0.0.1 */
  assert_int_equal(r.status, 200);
  response_free(&r);
  http_server_stop(srv);
}

static void custom_error(http_request *req, int status, const char *slug, const char *message) {
  http_reply_json(req, status, json_pack("{s:s, s:i}", "custom", slug, "status", status));
}

static void test_error_hook(void **state) {
  fixture *f = *state;
  http_server *s = start(f->router, "127.0.0.1", custom_error);
  assert_non_null(s);
  response r;
  get(http_server_port(s), "/nope", &r);
  assert_int_equal(r.status, 404);
  json_t *j = body_json(&r);
  assert_string_equal(json_string_value(json_object_get(j, "custom")), "not_found");
  assert_int_equal(json_integer_value(json_object_get(j, "status")), 404);
  json_decref(j);
  response_free(&r);
  http_server_stop(s);
}

static void test_start_errors(void **state) {
  fixture *f = *state;
  char err[256] = "";
  http_server_config cfg = {.listen_host = "127.0.0.1", .listen_port = f->port, .threads = 1,
                            .max_body_bytes = 10, .connection_timeout_s = 5};
  assert_null(http_server_start(&cfg, f->router, err, sizeof err)); /* port in use */
  assert_non_null(strstr(err, "in use")); /* the system's reason reaches the caller */
  cfg.listen_host = "no-such-host.invalid";
  cfg.listen_port = 0;
  err[0] = '\0';
  assert_null(http_server_start(&cfg, f->router, err, sizeof err));
  assert_true(strlen(err) > 0);
  cfg.listen_host = "127.0.0.1";
  cfg.listen_port = 70000;
  assert_null(http_server_start(&cfg, f->router, err, sizeof err));
  assert_null(http_server_start(NULL, f->router, err, sizeof err));
  http_server_stop(NULL);
}

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  int n = 0;
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

static void test_localhost_and_stop_idle(void **state) {
  fixture *f = *state;
  http_server *s = start(f->router, "localhost", NULL);
  assert_non_null(s);
  assert_true(http_server_port(s) > 0);
  assert_int_not_equal(http_server_port(s), f->port);
  response r;
  get(http_server_port(s), "/hello", &r);
  assert_int_equal(r.status, 200);
  response_free(&r);
  http_server_stop(s);

  /* Started and stopped without ever serving: no memory (ASan checks) and no
   * descriptor (the listen socket handed back by the quiesce) is left behind. */
  int fds = count_fds();
  s = start(f->router, "127.0.0.1", NULL);
  assert_non_null(s);
  assert_true(count_fds() > fds);
  http_server_stop(s);
  assert_int_equal(count_fds(), fds);
}

/* Reads what was written to fd into a NUL-terminated malloc'd string. */
static char *slurp(int fd) {
  buf b = BUF_INIT;
  char chunk[4096];
  ssize_t n;
  lseek(fd, 0, SEEK_SET);
  while ((n = read(fd, chunk, sizeof chunk)) > 0) assert_true(buf_append(&b, chunk, (size_t)n));
  assert_true(buf_append(&b, "", 0));
  return buf_steal(&b);
}

static void test_access_log(void **state) {
  fixture *f = *state;
  char path[128];
  snprintf(path, sizeof path, "%s/log.txt", f->dir);
  int logfd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(logfd >= 0);
  int saved = dup(STDERR_FILENO);
  assert_true(saved >= 0);
  http_server *s = start(f->router, "127.0.0.1", NULL);
  assert_non_null(s);
  int port = http_server_port(s);
  assert_true(dup2(logfd, STDERR_FILENO) >= 0);
  response r;
  request_spec spec = {.path = "/account", .header = "X-Request-Id: log-test-1"};
  request(port, &spec, &r);
  response_free(&r);
  spec = (request_spec){.path = "/no%20such", .header = "X-Request-Id: log-test-2"};
  request(port, &spec, &r);
  response_free(&r);
  http_server_stop(s); /* every completion has been logged once this returns */
  dup2(saved, STDERR_FILENO);
  close(saved);
  char *text = slurp(logfd);
  close(logfd);
  unlink(path);
  const char *a = strstr(text, "msg=http method=GET path=/account status=204 dur_ms=");
  assert_non_null(a);
  assert_non_null(strstr(a, " bytes=0 req=log-test-1 ip=127.0.0.1 account=acct_42\n"));
  const char *b = strstr(text, "msg=http method=GET path=/no%20such status=404 dur_ms=");
  assert_non_null(b);
  assert_non_null(strstr(b, " req=log-test-2 ip=127.0.0.1 err=not_found\n"));
  free(text);
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_json_ok),
      cmocka_unit_test(test_request_id),
      cmocka_unit_test(test_not_found_and_method),
      cmocka_unit_test(test_keepalive_after_error),
      cmocka_unit_test(test_head),
      cmocka_unit_test(test_path_params),
      cmocka_unit_test(test_query_args),
      cmocka_unit_test(test_request_header),
      cmocka_unit_test(test_post_body),
      cmocka_unit_test(test_content_length_over_limit),
      cmocka_unit_test(test_content_length_answered_before_body),
      cmocka_unit_test(test_guard_refuses_before_the_body),
      cmocka_unit_test(test_guard_lets_through),
      cmocka_unit_test(test_chunked_over_limit),
      cmocka_unit_test(test_chunked_endless_is_cut),
      cmocka_unit_test(test_no_reply_is_500),
      cmocka_unit_test(test_fd_reply),
      cmocka_unit_test(test_empty_reply_and_headers),
      cmocka_unit_test(test_concurrent),
      cmocka_unit_test(test_error_hook),
      cmocka_unit_test(test_body_budget),
      cmocka_unit_test(test_connection_limit),
      cmocka_unit_test(test_connection_limit_per_ip),
      cmocka_unit_test(test_stop_waits_for_requests),
      cmocka_unit_test(test_stop_gives_up),
      cmocka_unit_test(test_listener_before_server),
      cmocka_unit_test(test_listen_dual_stack),
      cmocka_unit_test(test_start_errors),
      cmocka_unit_test(test_localhost_and_stop_idle),
      cmocka_unit_test(test_access_log),
  };
  int failed = cmocka_run_group_tests(tests, setup, teardown);
  curl_global_cleanup();
  return failed;
}
