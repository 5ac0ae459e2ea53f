/* internal.h - what the HTTP server's files share; handlers never see it.
 *
 *   server.c   the listener, the worker threads and their event loops,
 *              accepting, connection limits, start and graceful stop
 *   conn.c     one connection: reading and parsing (llhttp), routing, guards,
 *              bodies, dispatch to the handler, writing, deadlines, closing
 *   reply.c    http_reply_* and the request accessors of server.h, and the
 *              response head written on the wire
 *   iplimit.c  connections per client address
 *
 * Threads: each worker owns its connections, its epoll set and its deadline
 * heap; nothing of a connection is touched by another thread. The shared
 * state is the server's counters (atomics), the per-address table (locked)
 * and the drain count (locked). */
#ifndef IMGATE_HTTP_INTERNAL_H
#define IMGATE_HTTP_INTERNAL_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include "http/iplimit.h"
#include "http/server.h"
#include "util/buf.h"
#include "util/dheap.h"

/* Fixed limits of the wire format (documented in docs/configuration.md). */
#define HTTP_MAX_URI_BYTES 8192   /* request target; longer: 414 */
#define HTTP_MAX_HEADERS 100      /* header fields per request; more: 431 */
#define HTTP_READ_CHUNK 65536     /* one read from a socket */
#define HTTP_LINGER_MS 2000       /* after an early answer: time to let the client finish sending */
#define HTTP_LINGER_MAX_BYTES (8u << 20) /* ... and how much of its body is read and dropped */

typedef struct http_worker http_worker;

typedef struct http_conn http_conn;
typedef struct http_exchange http_exchange;

/* Where other threads leave woken requests for a worker. Reference counted,
 * so that a waker held by another module after the server has stopped still
 * points at live memory (waking it then does nothing). */
typedef struct http_mailbox {
  pthread_mutex_t lock;
  atomic_int refs;      /* the worker's, and one per waker */
  bool closed;          /* the worker is gone: wakes do nothing (under lock) */
  int wake_fd;          /* the worker's eventfd; -1 once closed (under lock) */
  http_waker *head, *tail; /* woken, not yet resumed (under lock) */
} http_mailbox;

/* A waiting request's handle for other threads (server.h: http_wait). */
struct http_waker {
  atomic_int refs;
  http_mailbox *mb;     /* its worker's mailbox; fixed, referenced */
  http_exchange *x;     /* the waiting exchange; NULL once answered or gone (worker only) */
  bool queued;          /* in the mailbox (under mb->lock) */
  http_waker *next;     /* mailbox link (under mb->lock) */
};

/* Settings with their defaults applied (see http_server_config). */
typedef struct http_limits {
  size_t max_body_bytes;
  size_t max_buffered_body_bytes; /* SIZE_MAX: no budget */
  size_t max_header_bytes;
  int64_t idle_timeout_ms;
  int64_t header_timeout_ms;
  int64_t body_timeout_ms;
  uint64_t body_min_rate;
  int64_t send_timeout_ms;
  uint64_t send_min_rate;
  unsigned max_connections;
  unsigned max_connections_per_ip;
} http_limits;

struct http_server {
  http_router *router;
  http_limits lim;
  http_error_fn on_error;
  int listen_fd;
  int port;
  char host[128]; /* for messages */
  atomic_size_t buffered;    /* request-body bytes held by all requests */
  atomic_uint connections;   /* open client connections, all workers together */
  iplimit *per_ip;           /* NULL without a per-address limit */
  http_worker *workers;
  unsigned n_workers;
  atomic_bool stopping;      /* no new connections; close after each response */
  atomic_bool quit;          /* workers close everything and return */
  /* Requests between their headers and their completion, so that a stop can
   * wait for them. */
  pthread_mutex_t drain_lock;
  pthread_cond_t drained;
  int active;
  int shutdown_timeout_ms;
};

struct http_worker {
  http_server *s;
  pthread_t thread;
  bool started;
  int epfd;
  int wake_fd;         /* eventfd: another thread wants this worker's attention */
  bool listening;      /* the listen socket is in this worker's epoll set */
  int64_t listen_retry_ms; /* when a paused listener is tried again */
  dheap deadlines;     /* of this worker's connections */
  http_conn *conns;    /* every connection of this worker (doubly linked) */
  http_conn *again;    /* connections that stopped with work left, for another turn */
  /* Wakers other threads have woken (http_wake), for this worker to resume. */
  http_mailbox *mailbox;
  char *scratch;       /* HTTP_READ_CHUNK bytes: reads land here first */
  uint64_t id_prefix, id_counter; /* request ids (http_worker_request_id) */
  int64_t date_sec;    /* the second date[] was formatted for */
  char date[40];
};

/* --- server.c --- */

/* A fresh request id: 32 lower-case hex digits. */
void http_worker_request_id(http_worker *w, char out[33]);
/* Resumes what http_wake put in the worker's mailbox (worker thread). */
void http_worker_run_mailbox(http_worker *w);
/* The current time as an HTTP date, formatted once per second per worker. */
void http_worker_date(http_worker *w, char out[40]);

/* --- conn.c --- */

/* Takes over an accepted socket (non-blocking): registers it with w's epoll
 * set and starts waiting for its first request. Closes fd and returns false
 * when that fails. The connection slot and per-address count are already
 * taken; the connection gives them back when it closes. */
bool conn_open(http_worker *w, int fd, const struct sockaddr_storage *peer,
               const uint8_t ip_key[16]);
/* Handles epoll events for c (EPOLLIN/OUT/RDHUP/ERR bits). */
void conn_on_events(http_conn *c, uint32_t events);
/* Another turn for a connection from the worker's again list (see conn.c). */
void conn_again(http_conn *c);
/* The next connection of the worker's list, and of its again list. */
http_conn *conn_next(http_conn *c);
http_conn *conn_again_next(http_conn *c);
/* Its deadline passed: answers 408 where a request is on its way, else closes. */
void conn_on_deadline(http_conn *c);
/* The server started stopping: an idle connection closes now, one with a
 * request in progress closes after its response. */
void conn_on_stop(http_conn *c);
/* A woken request's on_resume runs (mailbox, worker thread). */
void conn_resume_waker(http_waker *wk);
/* Closes and frees c at once (the worker is quitting: its again list is no
 * longer looked at). A request in progress is logged as cut off. */
void conn_close_now(http_conn *c);
/* The connection that owns a deadline node. */
http_conn *conn_of_deadline(dheap_node *n);

/* --- reply.c --- */

/* The request part of an exchange, as conn.c keeps it. */
struct http_exchange {
  http_request req;        /* first: handlers get &x->req, reply.c gets back with a cast */
  http_conn *conn;
  /* Method, target and headers as parsed: NUL-terminated strings in one
   * arena, located by offsets while it grows. */
  buf head;
  size_t target_off, target_len;
  struct {
    uint32_t name, value;
  } hdr[HTTP_MAX_HEADERS];
  int n_hdr;
  bool in_value;           /* the last span was a header value */
  bool head_done;          /* the head is complete; later fields are trailers */
  size_t trailer_len;      /* bytes of trailer fields, dropped */
  bool target_done;
  /* The decoded query values handed out by http_query_get. */
  struct query_copy *queries;
  /* Routing. */
  http_handler_fn fn;
  http_guard_fn guard;
  void *fn_ctx;
  /* Body. */
  buf body;
  size_t budget;           /* bytes of the server's body budget this exchange holds */
  int body_grows;          /* allocations of the body so far (see conn.c) */
  /* An error decided before the handler runs (status 0: none), or the
   * guard's refusal (reply_ready), answered once the request is read, or at
   * once when its body is not going to be read. */
  int pending_status;
  const char *pending_slug;
  const char *pending_message;
  bool reply_ready;
  bool answer_early;       /* do not read the body: answer now and close */
  bool complete;           /* the whole request (and body) is in */
  bool counted;            /* counted in the server's active requests */
  bool head_only;          /* a HEAD request: no body goes out */
  /* A request that waits (server.h: http_wait). */
  bool waiting;
  http_resume_fn on_resume;
  http_end_fn on_end;
  void *wait_ctx;
  http_waker *waker;       /* the exchange's own reference */
  int64_t wait_deadline;   /* mono ms; 0: none */
  /* A streamed answer (server.h: http_stream_start). */
  bool streaming;          /* its head is written */
  bool stream_chunked;     /* HTTP/1.1: chunked; else the body ends with the connection */
  bool stream_ended;       /* http_stream_end was called */
  bool stream_cut;         /* its reader fell too far behind */
  size_t resp_bytes;       /* body bytes of the response, for the access log */
  int64_t started_ns;
};

/* Writes the response head of x into out (status line, Date, headers,
 * Content-Length, X-Request-Id, Connection). close says whether the
 * connection closes after it; keep_alive_10 adds "Connection: keep-alive"
 * for an HTTP/1.0 client that asked for it. False when memory runs out. */
bool reply_write_head(http_exchange *x, const char *date, bool close, bool keep_alive_10,
                      buf *out);
/* The same for a streamed answer: Transfer-Encoding: chunked when chunked,
 * else no length at all (the body ends with the connection). */
bool reply_write_stream_head(http_exchange *x, const char *date, bool close, bool chunked,
                             buf *out);
/* Frees what the exchange's reply holds (body, fd, headers, queries). */
void reply_clear(http_exchange *x);
/* Fills x's reply with the JSON error of the server's hook (or the default
 * shape) and records the slug for the access log. */
void reply_error(http_exchange *x, http_error_fn hook, int status, const char *slug,
                 const char *message);
/* Frees the body (bytes or file) of a reply; status and headers stay. */
void reply_drop_body(http_request *req);
/* False for 1xx, 204 and 304, which carry no body and no Content-Length. */
bool reply_status_has_body(int status);
/* The reason phrase of a status ("Not Found"); "Unknown" for others. */
const char *reply_reason(int status);

#endif
