/* fuzz_http.c - the HTTP server (src/http/) against any bytes a client sends.
 *
 * One server runs for the whole fuzzing session, on 127.0.0.1, with a few
 * routes of each kind (a plain GET, a body echo, a guarded route, a parameter
 * route, a route that streams a file). Each input is sent on a new connection,
 * which is then half-closed; everything the server says until it closes is
 * read and checked:
 *
 *   - it is a sequence of whole HTTP/1.1 answers: a status line with a known
 *     status, header lines, Content-Length (but for 1xx, 204, 304) and
 *     exactly that many body bytes (none for a HEAD), nothing after the
 *     last one;
 *   - every final answer carries X-Request-Id and Date (an interim 100
 *     Continue is a status line alone);
 *   - every 4xx and 5xx body is the JSON error shape, whatever layer
 *     produced it;
 *   - an answer that says "Connection: close" is the last one;
 *   - the server answers at most once per request it could have parsed
 *     (not more answers than request lines in the input).
 *
 * AddressSanitizer and UndefinedBehaviorSanitizer watch the server's threads
 * meanwhile; a crash there aborts the process like a broken property. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_check.h"
#include "http/server.h"

static void h_hello(http_request *req, void *ctx) {
  http_reply_json(req, 200, json_pack("{s:s}", "hello", "world"));
}

static void h_echo(http_request *req, void *ctx) {
  http_reply_bytes(req, 200, "application/octet-stream", req->body, req->body_len);
}

static void h_item(http_request *req, void *ctx) {
  const char *q = http_query_get(req, "q");
  http_reply_json(req, 200, json_pack("{s:s?, s:s?, s:s?}", "id", http_param_get(req, "id"), "q",
                                      q, "h", http_header_get(req, "X-Any")));
}

static void h_file(http_request *req, void *ctx) {
  int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    http_reply_empty(req, 503);
    return;
  }
  http_reply_fd(req, 200, "application/octet-stream", fd, 4096); /* its first 4 KiB */
}

static bool g_key(http_request *req, void *ctx) {
  const char *k = http_header_get(req, "X-Key");
  if (k && strcmp(k, "good") == 0) return true;
  http_reply_json(req, 401, json_pack("{s:{s:s, s:s, s:n}}", "error", "code", "unauthorized",
                                      "message", "no", "param"));
  return false;
}

static void error_hook(http_request *req, int status, const char *slug, const char *message) {
  http_reply_json(req, status, json_pack("{s:{s:s, s:s, s:n}}", "error", "code", slug,
                                         "message", message, "param"));
}

static int the_port(void) {
  static int port;
  if (port) return port;
  http_router *r = http_router_new();
  FUZZ_CHECK(r && http_router_add(r, "GET", "/hello", h_hello, NULL) &&
             http_router_add(r, "POST", "/echo", h_echo, NULL) &&
             http_router_add(r, "GET", "/items/{id}", h_item, NULL) &&
             http_router_add(r, "POST", "/items/new", h_echo, NULL) &&
             http_router_add(r, "GET", "/file", h_file, NULL) &&
             http_router_add_guarded(r, "POST", "/guarded", g_key, h_echo, NULL));
  /* Short deadlines: an input that leaves a request half sent ends at once
   * anyway (the connection is half-closed), but nothing may wait long. */
  http_server_config cfg = {.listen_host = "127.0.0.1",
                            .threads = 2,
                            .max_body_bytes = 64 * 1024,
                            .max_buffered_body_bytes = 1 << 20,
                            .max_header_bytes = 16 * 1024,
                            .header_timeout_ms = 2000,
                            .body_timeout_ms = 2000,
                            .on_error = error_hook};
  char err[256];
  http_server *s = http_server_start(&cfg, r, err, sizeof err);
  if (!s) fprintf(stderr, "fuzz_http: %s\n", err);
  FUZZ_CHECK(s);
  port = http_server_port(s); /* the server lives as long as the process */
  return port;
}

/* Connects fd; a connect cut short by a signal (libFuzzer's timers) goes on
 * in the background and is waited for. False when the address is taken. */
static bool connect_now(int fd, const struct sockaddr *a, socklen_t len) {
  if (connect(fd, a, len) == 0) return true;
  if (errno == EADDRINUSE || errno == EADDRNOTAVAIL) return false;
  FUZZ_CHECK(errno == EINTR || errno == EINPROGRESS);
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int rc;
  do rc = poll(&p, 1, 10000);
  while (rc < 0 && errno == EINTR);
  FUZZ_CHECK(rc == 1); /* the server's kernel answers a connect at once */
  int err = 0;
  socklen_t elen = sizeof err;
  FUZZ_CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0);
  return true;
}

/* Reads what the server says until it closes (or 10 s pass). */
static size_t read_all(int fd, char **out) {
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap + 1);
  FUZZ_CHECK(buf);
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int rc;
    do rc = poll(&p, 1, 10000);
    while (rc < 0 && errno == EINTR);
    FUZZ_CHECK(rc == 1); /* the server never leaves a client hanging */
    if (len == cap) {
      cap *= 2;
      buf = realloc(buf, cap + 1);
      FUZZ_CHECK(buf);
    }
    ssize_t n = recv(fd, buf + len, cap - len, 0);
    if (n <= 0) break;
    len += (size_t)n;
  }
  buf[len] = '\0';
  *out = buf;
  return len;
}

/* The value of header name in the head [h, h+n), or NULL. */
static const char *header(const char *h, size_t n, const char *name, size_t *vlen) {
  size_t nl = strlen(name);
  for (const char *line = strstr(h, "\r\n") + 2; line < h + n;) {
    const char *eol = strstr(line, "\r\n");
    if (!eol || eol == line) break;
    if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
      const char *v = line + nl + 1;
      while (*v == ' ') v++;
      *vlen = (size_t)(eol - v);
      return v;
    }
    line = eol + 2;
  }
  return NULL;
}

static void check_error_body(const char *body, size_t len) {
  json_error_t jerr;
  json_t *doc = json_loadb(body, len, 0, &jerr);
  FUZZ_CHECK(doc);
  json_t *e = json_object_get(doc, "error");
  FUZZ_CHECK(json_is_string(json_object_get(e, "code")));
  FUZZ_CHECK(json_is_string(json_object_get(e, "message")));
  json_decref(doc);
}

/* Checks the answers in out; returns how many there were. maybe_head: the
 * input holds a HEAD request, whose answer has a Content-Length but no body. */
static size_t check_answers(const char *out, size_t len, bool maybe_head) {
  size_t answers = 0;
  size_t pos = 0;
  while (pos < len) {
    const char *a = out + pos;
    FUZZ_CHECK(len - pos >= 12 && memcmp(a, "HTTP/1.1 ", 9) == 0);
    int status = atoi(a + 9);
    FUZZ_CHECK(status >= 100 && status <= 599 && a[12] == ' ');
    const char *end = strstr(a, "\r\n\r\n");
    FUZZ_CHECK(end);
    size_t head_len = (size_t)(end - a) + 4;
    size_t vlen;
    if (status < 200) { /* an interim answer (100 Continue): a status line alone */
      FUZZ_CHECK(status == 100 && head_len == strlen("HTTP/1.1 100 Continue\r\n\r\n"));
      pos += head_len;
      continue;
    }
    FUZZ_CHECK(header(a, head_len, "X-Request-Id", &vlen) && vlen > 0);
    FUZZ_CHECK(header(a, head_len, "Date", &vlen));
    size_t body_len = 0;
    const char *cl = header(a, head_len, "Content-Length", &vlen);
    if (status >= 200 && status != 204 && status != 304) {
      FUZZ_CHECK(cl);
      body_len = strtoul(cl, NULL, 10);
    } else {
      FUZZ_CHECK(!cl);
    }
    bool headless = maybe_head && body_len &&
                    (pos + head_len == len || (len - pos - head_len >= 9 &&
                                               memcmp(a + head_len, "HTTP/1.1 ", 9) == 0));
    if (headless) body_len = 0;
    FUZZ_CHECK(pos + head_len + body_len <= len);
    if (status >= 400 && !headless) check_error_body(a + head_len, body_len);
    pos += head_len + body_len;
    answers++;
    const char *conn = header(a, head_len, "Connection", &vlen);
    if (conn && vlen == 5 && strncasecmp(conn, "close", 5) == 0) FUZZ_CHECK(pos == len);
  }
  return answers;
}

/* Request lines the input could hold: an upper bound of the answers due. */
static size_t request_lines(const uint8_t *data, size_t size) {
  size_t n = 0;
  for (size_t i = 0; i + 5 <= size; i++)
    if (memcmp(data + i, "HTTP/", 5) == 0) n++;
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int port = the_port();
  /* Thousands of connections a second, and each leaves a TIME_WAIT on one
   * side or the other for a minute. The client's kernel does not see the
   * server side's TIME_WAITs when it picks a port, so a port it picked
   * could make a 4-tuple the server side still held: the SYN then met that
   * TIME_WAIT instead of the listener, and the connect stalled for a
   * second, or the connection never completed on the server's side (the
   * client sat in FIN_WAIT1 and the poll below timed out). So the harness
   * picks the tuple itself, never the same twice in a run: source address
   * 127.2.x.y (65,536 of them) and port 10000 + n (50,000), in turn. */
  static uint64_t turn;
  int fd = -1;
  for (int tries = 0; tries < 64 && fd < 0; tries++) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    turn++;
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl((127u << 24) | (2u << 16) | (uint32_t)(turn & 0xffff));
    src.sin_port = htons((uint16_t)(10000 + (turn >> 16) % 50000));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
        !connect_now(fd, (struct sockaddr *)&a, sizeof a)) {
      close(fd); /* that tuple is still taken on this side: the next one */
      fd = -1;
    }
  }
  if (fd < 0) return 0; /* 64 tuples in a row taken: the harness's limit, skip the input */
  /* The server may answer and close before all of it is sent: fine. */
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += (size_t)n;
  }
  shutdown(fd, SHUT_WR);
  char *out;
  size_t len = read_all(fd, &out);
  close(fd);
  size_t answers = check_answers(out, len, memmem(data, size, "HEAD", 4) != NULL);
  /* An error answer may come for bytes that hold no whole request line. */
  FUZZ_CHECK(answers <= request_lines(data, size) + 1);
  free(out);
  return 0;
}
