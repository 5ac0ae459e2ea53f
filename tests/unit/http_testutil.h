/* http_testutil.h - a raw HTTP/1.1 client for the tests that must say bytes
 * no well-behaved client library would (test_http_server.c,
 * test_http_edge.c): connect, send, read a response head or a whole
 * response, tell whether the server closed. Every wait is bounded, so a
 * server that fails fails the test instead of hanging it. Include after
 * cmocka.h. */
#ifndef IMGATE_HTTP_TESTUTIL_H
#define IMGATE_HTTP_TESTUTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <jansson.h>

/* The longest a test waits for an answer that should come at once. */
#define HTTP_TEST_WAIT_MS 20000

/* True when s has something to read (or was closed) within ms. */
static inline bool readable_within(int s, int ms) {
  struct pollfd p = {.fd = s, .events = POLLIN};
  return poll(&p, 1, ms) == 1;
}

static inline int connect_local(int port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return -1;
  struct timeval tv = {.tv_sec = HTTP_TEST_WAIT_MS / 1000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    close(s);
    return -1;
  }
  return s;
}

/* Sends all of text; false when the server has closed. */
static inline bool send_all(int s, const char *text, size_t len) {
  while (len > 0) {
    ssize_t n = send(s, text, len, MSG_NOSIGNAL);
    if (n <= 0) return false;
    text += n;
    len -= (size_t)n;
  }
  return true;
}

/* Reads a response head (up to the blank line) into out; returns its status,
 * or -1 when the connection ends first. The body, if any, is left unread. */
static inline int read_head(int s, char *out, size_t size) {
  size_t got = 0;
  out[0] = '\0';
  while (!strstr(out, "\r\n\r\n")) {
    if (got + 1 >= size) return -1;
    ssize_t n = recv(s, out + got, 1, 0); /* byte by byte: nothing of the body is taken */
    if (n <= 0) return -1;
    got += (size_t)n;
    out[got] = '\0';
  }
  int status = -1;
  if (sscanf(out, "HTTP/1.%*d %d", &status) != 1) return -1;
  return status;
}

/* Reads a whole response: its head into head, its body (Content-Length
 * bytes) into body, NUL-terminated. Returns the status, or -1. */
static inline int read_response(int s, char *head, size_t head_size, char *body,
                                size_t body_size) {
  int status = read_head(s, head, head_size);
  if (status < 0) return -1;
  const char *cl = strcasestr(head, "\r\nContent-Length:");
  size_t len = cl ? strtoul(cl + 17, NULL, 10) : 0;
  if (len + 1 > body_size) return -1;
  size_t got = 0;
  while (got < len) {
    ssize_t n = recv(s, body + got, len - got, 0);
    if (n <= 0) return -1;
    got += (size_t)n;
  }
  body[got] = '\0';
  return status;
}

/* Waits for the server to close s; returns the bytes that came before the
 * end (0 for a clean close right after the last answer), or -1 when s is
 * still open after HTTP_TEST_WAIT_MS. A reset counts as the end. */
static inline long bytes_until_closed(int s) {
  char junk[4096];
  long total = 0;
  for (;;) {
    if (!readable_within(s, HTTP_TEST_WAIT_MS)) return -1;
    ssize_t n = recv(s, junk, sizeof junk, 0);
    if (n <= 0) return total;
    total += n;
  }
}

/* True when the server closes s within HTTP_TEST_WAIT_MS, after whatever
 * it still had to say. */
static inline bool closed_by_server(int s) { return bytes_until_closed(s) >= 0; }

/* Opens a connection and sends head; -1 when either fails. */
static inline int open_with(int port, const char *head) {
  int s = connect_local(port);
  if (s >= 0 && !send_all(s, head, strlen(head))) {
    close(s);
    return -1;
  }
  return s;
}

/* body is {"error":{"code":slug,"message":...,"param":null}}. */
static inline void assert_json_error(const char *body, const char *slug) {
  json_error_t jerr;
  json_t *j = json_loads(body, 0, &jerr);
  assert_non_null(j);
  json_t *e = json_object_get(j, "error");
  assert_string_equal(json_string_value(json_object_get(e, "code")), slug);
  assert_non_null(json_string_value(json_object_get(e, "message")));
  assert_true(json_is_null(json_object_get(e, "param")));
  json_decref(j);
}

#endif
