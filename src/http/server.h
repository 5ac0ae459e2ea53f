/* server.h - the HTTP server: our own HTTP/1.1 connections over epoll, with
 * llhttp parsing them, and handlers on top.
 *
 * The server reads the whole request body (up to a limit) before it calls a
 * handler, so handlers see a complete request and never touch a socket. A
 * route may have a guard (authentication) that runs on the headers alone,
 * before any of the body is read; bodies held by all requests together have a
 * budget, taken as a body arrives. A handler fills in the response through
 * http_reply_*(); when it returns, the server sends it with X-Request-Id
 * added and writes one access-log line.
 *
 * Every answer is the handler's or, for what the server refuses itself
 * (malformed requests, unknown paths, bodies too large, timeouts), the JSON
 * of the error hook (http_error_fn): never a library's HTML page.
 *
 * Threads: a pool of worker threads, each with its own epoll loop; a handler
 * runs on one of them and must not block for longer than a database write. */
#ifndef IMGATE_HTTP_SERVER_H
#define IMGATE_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define HTTP_MAX_PARAMS 8
#define HTTP_MAX_RESPONSE_HEADERS 16

typedef struct http_request http_request;

/* Handler for a route. ctx is what was given to http_router_add. */
typedef void (*http_handler_fn)(http_request *req, void *ctx);

/* A route's guard: checks a request on its headers alone, before any of its
 * body is read (typically authentication). Returns true to go on; false after
 * setting a reply (e.g. 401), which is sent without reading the body, so an
 * unauthenticated client cannot make the server buffer a large upload. It
 * may leave something for the handler in req->guard_data (malloc'd; freed
 * with the request). ctx is the route's, as for the handler. */
typedef bool (*http_guard_fn)(http_request *req, void *ctx);

typedef struct http_param {
  const char *name;  /* static, from the route pattern */
  char *value;       /* percent-decoded copy, owned by the request */
} http_param;

typedef struct http_header {
  char *name;
  char *value;
} http_header;

struct http_request {
  /* --- filled by the server --- */
  const char *method;      /* "GET", "POST", ... */
  const char *path;        /* URL path without the query string, not decoded */
  const char *body;        /* NUL-terminated copy of the body ("" when none) */
  size_t body_len;
  char request_id[65];     /* from a well-formed incoming X-Request-Id, else generated */
  char client_ip[64];
  int64_t start_mono_ms;
  http_param params[HTTP_MAX_PARAMS]; /* path parameters from the matched route */
  int n_params;
  void *conn;              /* the server's own state of this request; NULL in a request built by hand */
  void *guard_data;        /* left by the route's guard for the handler; free()d with the request */

  /* --- filled by the handler through http_reply_* --- */
  int status;                   /* 0 until a reply is set */
  char *resp_body;              /* malloc'd, owned by the request */
  size_t resp_len;
  int resp_fd;                  /* >= 0: send resp_fd_size bytes from this fd (closed by the server) */
  uint64_t resp_fd_size;
  http_header resp_headers[HTTP_MAX_RESPONSE_HEADERS];
  int n_resp_headers;

  /* --- free for the handler and the access log --- */
  char log_account[32];         /* account id once authenticated, for the access log */
  char log_error[48];           /* error slug of an error reply, for the access log */
};

/* Request header (case-insensitive name) or NULL. */
const char *http_header_get(http_request *req, const char *name);
/* Query-string argument (decoded) or NULL. */
const char *http_query_get(http_request *req, const char *name);
/* Path parameter by name (decoded) or NULL. */
const char *http_param_get(http_request *req, const char *name);

/* Replies with a JSON document; takes the reference to body (json_decref'd).
 * Sets Content-Type: application/json. */
void http_reply_json(http_request *req, int status, json_t *body);
/* Replies with bytes (copied). */
void http_reply_bytes(http_request *req, int status, const char *content_type, const void *data,
                      size_t len);
/* Replies with a file: the server sends size bytes from fd and closes it. */
void http_reply_fd(http_request *req, int status, const char *content_type, int fd, uint64_t size);
/* Replies with no body (204, 304, ...). */
void http_reply_empty(http_request *req, int status);
/* Adds a response header (copied). Call before or after setting the reply. */
void http_reply_header(http_request *req, const char *name, const char *value);

/* --- requests that wait, and answers that stream ---
 *
 * A handler may leave a request unanswered and let it wait: for a task to
 * finish (a synchronous wait), or between the events of a stream (SSE). A
 * waiting request holds no thread, only its connection and a little memory.
 *
 *   http_wait(req, on_resume, on_gone, ctx, deadline): called from the
 *     handler (or from on_resume), makes the request wait. It returns a waker
 *     that any thread may use to wake it (http_wake); the caller holds one
 *     reference and gives it back with http_waker_release.
 *   on_resume(req, ctx, why) runs on the request's own worker thread when
 *     the request is woken (HTTP_RESUME_WOKEN), its deadline passes
 *     (HTTP_RESUME_DEADLINE), or the server is stopping (HTTP_RESUME_STOPPING:
 *     answer now with what there is, end a stream). It may answer (http_reply_*), write to a stream, end it, or set a
 *     new deadline (http_wait_until) and return having answered nothing: the
 *     request then goes on waiting.
 *   on_end(ctx, answered) runs exactly once when the wait is over: right
 *     after an answer was set (answered true), or when the request can no
 *     longer be answered (false: the client closed its connection, or shut
 *     its sending side, a stream fell too far behind, the server is cutting
 *     it). It frees ctx; neither
 *     callback runs again. Wakers may still be held elsewhere: waking them
 *     does nothing.
 *
 * Wakes are collapsed: several before the worker gets to it give one
 * on_resume; a wake between resumes is never lost. */
typedef struct http_waker http_waker;
typedef enum {
  HTTP_RESUME_WOKEN,    /* http_wake */
  HTTP_RESUME_DEADLINE, /* its deadline passed */
  HTTP_RESUME_STOPPING, /* the server stops: answer now (end a stream); no more waiting */
} http_resume_reason;
typedef void (*http_resume_fn)(http_request *req, void *ctx, http_resume_reason why);
typedef void (*http_end_fn)(void *ctx, bool answered);

/* Makes req wait (see above). deadline_mono_ms: time_mono_ms() at which
 * on_resume runs with HTTP_RESUME_DEADLINE (0: none). NULL when memory runs
 * out: the request then does not wait (and is answered 500 if the handler
 * sets no answer). Only for a request whose handler or on_resume is
 * running; a second call from on_resume replaces the callbacks. */
http_waker *http_wait(http_request *req, http_resume_fn on_resume, http_end_fn on_end, void *ctx,
                      int64_t deadline_mono_ms);
/* A new deadline for a waiting request (0: none); from on_resume. */
void http_wait_until(http_request *req, int64_t deadline_mono_ms);
/* Wakes the request behind w (any thread; nothing once it is answered or gone). */
void http_wake(http_waker *w);
/* Gives back a reference taken by http_wait (any thread). NULL is fine. */
void http_waker_release(http_waker *w);

/* Starts an answer whose body goes out in pieces, as they come (chunked
 * transfer coding; for an HTTP/1.0 client, until the connection closes).
 * Headers set with http_reply_header so far go out with it. From a handler or
 * on_resume; the request should then wait (http_wait) for what comes next. */
void http_stream_start(http_request *req, int status, const char *content_type);
/* Queues a piece of a started stream. False (and the stream is cut, the
 * connection closed, on_gone called) when the client has fallen more than
 * HTTP_STREAM_MAX_QUEUED bytes behind (what is queued before this piece; a
 * piece itself may be larger, so a stream holds at most the cap plus one
 * piece). */
bool http_stream_write(http_request *req, const void *data, size_t len);
/* Ends a started stream; the request is complete once it is written. */
void http_stream_end(http_request *req);
/* How far a stream's reader may fall behind before it is cut. */
#define HTTP_STREAM_MAX_QUEUED (1u << 20)

/* Errors the server itself produces go through this hook, so they come out
 * in the right dialect. (status, slug): (400, "bad_request") a malformed
 * request, (404, "not_found"), (405, "method_not_allowed"), (408,
 * "request_timeout"), (413, "payload_too_large"), (414, "uri_too_long"), (431,
 * "headers_too_large"), (500, "internal_error"), (503, "server_busy"), (505,
 * "http_version_not_supported"). req->path is "" when the request was too
 * malformed to have one. When no hook is set, a plain
 * {"error":{"code","message","param":null}} is sent. */
typedef void (*http_error_fn)(http_request *req, int status, const char *slug, const char *message);

typedef struct http_router http_router;

http_router *http_router_new(void);
void http_router_free(http_router *r);
/* Adds a route. pattern is a path of '/'-separated segments; a segment is
 * literal text, or "{name}" (any non-empty text without '/'), or "{name}" then
 * a literal suffix: "{model}:generateContent" matches "gemini-2.5:generateContent"
 * with model="gemini-2.5". When several patterns match a path, the most
 * specific decides (literal text beats "{name}suffix" beats "{name}",
 * segment by segment from the left), and only routes of that pattern count
 * for the method; among equals, the first added wins.
 * Returns false when the pattern is malformed or has too many parameters. */
bool http_router_add(http_router *r, const char *method, const char *pattern, http_handler_fn fn,
                     void *ctx);
/* The same, with a guard that runs when the headers are in (see http_guard_fn). */
bool http_router_add_guarded(http_router *r, const char *method, const char *pattern,
                             http_guard_fn guard, http_handler_fn fn, void *ctx);

/* Outcome of a lookup: a handler; or no route for the path (404); or routes for
 * the path but none with this method (405, *allow set to e.g. "GET, POST"). */
typedef enum { HTTP_ROUTE_FOUND, HTTP_ROUTE_NOT_FOUND, HTTP_ROUTE_BAD_METHOD } http_route_result;

/* Matches method and path; on FOUND sets *fn, *guard (NULL when the route has
 * none), *ctx and the path parameters in out_params/out_n (each out pointer
 * may be NULL). */
http_route_result http_router_match(http_router *r, const char *method, const char *path,
                                    http_handler_fn *fn, http_guard_fn *guard, void **ctx,
                                    http_param *out_params, int *out_n, char *allow,
                                    size_t allow_size);

/* A bound, listening socket that serves nothing yet: connections wait in the
 * kernel's queue until a server takes it over. Lets a program claim its port,
 * and fail fast when it is taken, before slow start-up work. */
typedef struct http_listener http_listener;

/* Binds host:port (port 0 picks a free one) and listens. "::" listens on
 * IPv6 and IPv4. NULL with err on failure, e.g. "Address already in use". */
http_listener *http_listen(const char *host, int port, char *err, size_t err_size);
/* The port actually bound. */
int http_listener_port(const http_listener *l);
/* Closes a listener that was never handed to a server. */
void http_listener_close(http_listener *l);

typedef struct http_server_config {
  /* A listener from http_listen, taken over by http_server_start (also when
   * it fails); NULL: listen_host and listen_port are bound at start. */
  http_listener *listener;
  const char *listen_host; /* "127.0.0.1", "0.0.0.0", "::" ... */
  int listen_port;         /* 0 = pick a free port (see http_server_port) */
  int threads;             /* worker threads; <= 0 means the number of cores */
  size_t max_body_bytes;   /* larger bodies get 413 without being read (whole) */
  /* A kept-alive connection with no request on its way is closed after this
   * (0: 60 s). */
  unsigned connection_timeout_s;
  /* From a request's first byte (for a connection's first request: from its
   * accept) to the end of its head; else 408 and the connection closes. The
   * clock is not restarted by bytes arriving (0: 10 s). */
  int header_timeout_ms;
  /* A body must not pause for longer than this, and must average at least
   * body_min_rate bytes per second after the first body_timeout_ms: each
   * second's worth of bytes at the minimum rate moves the deadline on by a
   * second, never beyond body_timeout_ms from now (0: 10 s, 4096 B/s). */
  int body_timeout_ms;
  unsigned body_min_rate;
  /* The same for a response the client reads (0: 30 s, 4096 B/s). */
  int send_timeout_ms;
  unsigned send_min_rate;
  /* Request line and header fields together (0: 32 KiB); more gets 431
   * (414 when the target alone is longer than 8 KiB). */
  size_t max_header_bytes;
  /* Connections open at once (0: 16384). At the limit the server stops
   * accepting: new clients wait in the kernel's listen queue until a
   * connection closes. */
  unsigned max_connections;
  /* Connections open at once from one client address (an IPv4 address or an
   * IPv6 /64; 0 = no limit); over it a new connection gets 429
   * too_many_connections and is closed. */
  unsigned max_connections_per_ip;
  /* Request bodies held in memory by all connections together (0 = no
   * budget). A body that would go over it gets 503 server_busy with
   * Retry-After: at once when Content-Length announces it, else as soon as
   * it outgrows what is left. */
  size_t max_buffered_body_bytes;
  /* How long http_server_stop waits for requests in progress (0: it does
   * not wait). */
  int shutdown_timeout_ms;
  http_error_fn on_error;
} http_server_config;

typedef struct http_server http_server;

/* Starts listening and serving. NULL with err on failure (port in use, ...). */
http_server *http_server_start(const http_server_config *cfg, http_router *router, char *err,
                               size_t err_size);
/* The port actually bound. */
int http_server_port(http_server *s);
/* Stops gracefully: new connections are closed as soon as they are
 * accepted; requests in progress (headers received, response not yet sent)
 * get up to shutdown_timeout_ms to finish, their responses saying
 * Connection: close; then every connection and the listen socket are closed
 * and s is freed. An idle kept-alive connection, or one whose request head
 * has not fully arrived, is simply closed, as HTTP allows. */
void http_server_stop(http_server *s);

#endif
