/* conn.c - one client connection, from its first byte to its close.
 *
 * States, and the deadline each one runs against:
 *
 *   IDLE    no request yet: header_timeout from accept for the first request,
 *           idle_timeout between requests of a kept-alive connection
 *   HEAD    a request's head is arriving: header_timeout from its first byte
 *           (for the first request: from accept). The clock is not restarted
 *           by the bytes that trickle in, so a client sending a header line
 *           every few seconds is cut like one sending nothing.
 *   BODY    its body is arriving: body_timeout, extended by one second per
 *           body_min_rate bytes received but never further than body_timeout
 *           from now. A body must keep coming, and on average at least at
 *           the minimum rate.
 *   SEND    the response is going out: the same rule with send_timeout and
 *           send_min_rate (a client that does not read is cut).
 *   WAIT    the handler let the request wait (server.h: http_wait) for a
 *           task, or between the pieces of a streamed answer: the handler's
 *           own deadline. Nothing is read; the client closing its side ends
 *           the wait (on_end) and the connection. A stream's pieces go out as
 *           they are written; a reader more than HTTP_STREAM_MAX_QUEUED behind
 *           is cut.
 *   LINGER  answered before the request was read (early refusal, parse error):
 *           the write side is shut, and what the client still sends is read
 *           and dropped for a moment, so that closing does not reset the
 *           connection and destroy the answer on its way.
 *
 * Parsing is llhttp's (Node.js's parser, in its strict mode), fed from the
 * worker's read buffer. Its callbacks copy the head into the exchange's arena;
 * on_headers_complete routes the request, runs the route's guard and decides
 * whether the body is read at all; on_message_complete pauses the parser so
 * that bytes of a pipelined next request wait until this one is answered.
 *
 * What llhttp refuses (and so what a request smuggler cannot use): two
 * Content-Length headers, Content-Length with Transfer-Encoding, a space
 * before a header's colon, a malformed or negative Content-Length, a
 * Transfer-Encoding that does not end in chunked, bare CR or LF line ends,
 * NUL or control bytes in header values. On top of that this file refuses any
 * Transfer-Encoding but exactly "chunked", HTTP versions other than 1.x, and an
 * HTTP/1.1 request without exactly one Host. Every refusal is one JSON error
 * and a closed connection.
 *
 * Readiness is edge-triggered: can_read / can_write remember an edge until a
 * read or write comes back EAGAIN. Closing marks the connection dead; it is
 * freed when the event that closed it has been handled (nothing below the
 * entry points frees it). */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "http/internal.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/timeutil.h"

typedef enum { CONN_IDLE, CONN_HEAD, CONN_BODY, CONN_SEND, CONN_WAIT, CONN_LINGER } conn_state;

struct http_conn {
  dheap_node deadline;      /* first: conn_of_deadline casts back */
  http_worker *w;
  http_server *s;
  int fd;
  conn_state state;
  http_conn *prev, *next;   /* the worker's list */
  bool can_read, can_write; /* an edge not yet used up */
  bool peer_eof;            /* the client has shut its side */
  bool peer_hup;            /* epoll said so (EPOLLRDHUP), maybe before it was read */
  bool close_after;         /* close once the response in progress is out */
  bool served_one;          /* a request has been answered on this connection */
  bool dead;                /* closed: free once the current event is handled */
  bool again_queued;        /* on the worker's list of connections with work left */
  http_conn *again_next;
  llhttp_t parser;
  http_exchange *x;         /* the request in progress, or NULL */
  /* Bytes read but not parsed yet: what followed a request in the same read
   * (pipelining), kept while that request is answered. */
  char *pending;
  size_t pending_len, pending_off;
  /* Output: heads (and an interim 100 Continue) in out, then the body. */
  buf out;
  size_t out_off;
  size_t body_off;          /* of x->req.resp_body, or of the file */
  size_t lingered;          /* bytes dropped while lingering */
  const char *feed;         /* the bytes llhttp is being fed, and the byte before them */
  char feed_before;
  uint8_t ip_key[16];
  bool ip_counted;
  char ip[64];
};

static llhttp_settings_t parser_settings;
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;

http_conn *conn_of_deadline(dheap_node *n) { return (http_conn *)(void *)n; }
http_conn *conn_next(http_conn *c) { return c->next; }
http_conn *conn_again_next(http_conn *c) { return c->again_next; }

/* --- small helpers --- */

static void set_deadline(http_conn *c, int64_t due) {
  if (!dheap_set(&c->w->deadlines, &c->deadline, due)) {
    /* Without memory for its deadline a connection could live forever. */
    LOG_ERROR("http_deadline_out_of_memory", "ip=%s", c->ip);
    c->close_after = true;
  }
}

static void set_timeout(http_conn *c, int64_t ms) { set_deadline(c, time_mono_ms() + ms); }

/* n more bytes moved: the deadline moves on by what they are worth at the
 * minimum rate, but never further than window from now. */
static void credit_deadline(http_conn *c, size_t n, uint64_t rate, int64_t window) {
  int64_t now = time_mono_ms();
  int64_t due = c->deadline.due + (int64_t)((uint64_t)n * 1000u / rate);
  if (due > now + window) due = now + window;
  if (due != c->deadline.due) set_deadline(c, due);
}

static void active_add(http_server *s, int delta) {
  pthread_mutex_lock(&s->drain_lock);
  s->active += delta;
  if (s->active == 0) pthread_cond_broadcast(&s->drained);
  pthread_mutex_unlock(&s->drain_lock);
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- the exchange (one request and its response) --- */

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

static void request_id_init(http_exchange *x) {
  const char *given = http_header_get(&x->req, "X-Request-Id");
  if (request_id_ok(given)) {
    snprintf(x->req.request_id, sizeof x->req.request_id, "%s", given);
    return;
  }
  http_worker_request_id(x->conn->w, x->req.request_id);
}

static http_exchange *exchange_new(http_conn *c) {
  http_exchange *x = calloc(1, sizeof *x);
  if (!x) return NULL;
  x->conn = c;
  x->req.conn = x;
  x->req.method = "";
  x->req.path = "";
  x->req.body = "";
  x->req.resp_fd = -1;
  x->req.start_mono_ms = time_mono_ms();
  x->started_ns = mono_ns();
  snprintf(x->req.client_ip, sizeof x->req.client_ip, "%s", c->ip);
  return x;
}

/* Gives the body's memory and its share of the budget back. */
static void body_release(http_exchange *x) {
  http_server *s = x->conn->s;
  buf_free(&x->body);
  x->req.body = "";
  x->req.body_len = 0;
  if (x->budget) atomic_fetch_sub(&s->buffered, x->budget);
  x->budget = 0;
}

static const char *termination_slug(http_conn *c) {
  if (c->s->quit || atomic_load(&c->s->stopping)) return "conn_shutdown";
  return c->peer_eof ? "conn_client_abort" : "conn_error";
}

static void access_log(http_exchange *x) {
  const http_request *req = &x->req;
  /* Tenths of a millisecond in integers: a float format costs a lot per request. */
  long long tenths = (long long)((mono_ns() - x->started_ns) / 100000);
  char qmethod[64], qpath[1024], qacct[80], qerr[112];
  char acct[96] = "", err[128] = "";
  if (req->log_account[0])
    snprintf(acct, sizeof acct, " account=%s", log_quote(req->log_account, qacct, sizeof qacct));
  if (req->log_error[0])
    snprintf(err, sizeof err, " err=%s", log_quote(req->log_error, qerr, sizeof qerr));
  LOG_INFO("http", "method=%s path=%s status=%d dur_ms=%lld.%lld bytes=%zu req=%s ip=%s%s%s",
           log_quote(req->method, qmethod, sizeof qmethod),
           log_quote(req->path, qpath, sizeof qpath), req->status, tenths / 10, tenths % 10,
           x->resp_bytes,
           req->request_id, req->client_ip, acct, err);
}

/* Ends the exchange: logged when it got as far as a request (or an answer),
 * then freed. */
/* The wait of x is over (answered or not): on_end runs once, and wakers
 * left elsewhere find nobody any more. */
static void wait_over(http_exchange *x, bool answered) {
  if (!x->waiting) return;
  x->waiting = false;
  if (x->waker) {
    x->waker->x = NULL;
    http_waker_release(x->waker);
    x->waker = NULL;
  }
  if (x->on_end) x->on_end(x->wait_ctx, answered);
}

static void exchange_end(http_conn *c, bool cut) {
  http_exchange *x = c->x;
  if (!x) return;
  wait_over(x, false); /* still waiting: the request is gone unanswered */
  c->x = NULL;
  if (cut && !x->req.log_error[0])
    snprintf(x->req.log_error, sizeof x->req.log_error, "%s", termination_slug(c));
  if (x->counted || x->req.status) access_log(x);
  body_release(x);
  reply_clear(x);
  buf_free(&x->head);
  bool counted = x->counted;
  free(x);
  if (counted) active_add(c->s, -1);
}

/* --- closing --- */

static void conn_kill(http_conn *c) {
  if (c->dead) return;
  exchange_end(c, true);
  c->dead = true;
  dheap_remove(&c->w->deadlines, &c->deadline);
  close(c->fd); /* also takes it out of the epoll set */
  c->fd = -1;
}

/* Frees a dead connection and gives its slots back. */
static void conn_free(http_conn *c) {
  http_worker *w = c->w;
  http_server *s = c->s;
  if (c->prev) c->prev->next = c->next;
  else w->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  if (c->ip_counted) iplimit_release(s->per_ip, c->ip_key);
  atomic_fetch_sub(&s->connections, 1);
  free(c->pending);
  buf_free(&c->out);
  free(c);
}

/* Answers have gone out and the connection ends: at once when nothing more
 * can come from the client, else after lingering (see the top). */
static void conn_finish_close(http_conn *c) {
  bool unread = c->pending_len > c->pending_off;
  if (!unread && c->can_read && !c->peer_eof) {
    /* One look: the usual client that sent one request has nothing more. */
    ssize_t n = recv(c->fd, c->w->scratch, HTTP_READ_CHUNK, 0);
    if (n == 0) c->peer_eof = true;
    else if (n > 0) unread = true;
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) c->peer_eof = true;
  }
  if (c->peer_eof || !unread) {
    conn_kill(c);
    return;
  }
  shutdown(c->fd, SHUT_WR);
  c->state = CONN_LINGER;
  c->lingered = 0;
  set_timeout(c, HTTP_LINGER_MS);
}

/* --- sending --- */

/* Queues the exchange's reply (its head in out, its body after it) and
 * switches to SEND. */
static void conn_send(http_conn *c) {
  http_exchange *x = c->x;
  http_request *req = &x->req;
  if (!req->request_id[0]) request_id_init(x); /* refused before its head was whole */
  if (req->status < 100 || req->status > 599) {
    LOG_ERROR("http_handler_set_an_invalid_status", "req=%s status=%d", req->request_id,
              req->status);
    http_reply_empty(req, 500);
  }
  if (!llhttp_should_keep_alive(&c->parser) || x->answer_early || atomic_load(&c->s->stopping))
    c->close_after = true;
  bool ka10 = !c->close_after && c->parser.http_major == 1 && c->parser.http_minor == 0;
  char date[40];
  http_worker_date(c->w, date);
  if (!reply_write_head(x, date, c->close_after, ka10, &c->out)) {
    LOG_ERROR("http_response_out_of_memory", "req=%s", req->request_id);
    conn_kill(c);
    return;
  }
  /* Nothing of the body goes out (HEAD keeps its Content-Length). */
  if (!reply_status_has_body(req->status) || x->head_only) reply_drop_body(req);
  x->resp_bytes = req->resp_fd >= 0 ? (size_t)req->resp_fd_size : req->resp_len;
  c->body_off = 0;
  c->state = CONN_SEND;
  set_timeout(c, c->s->lim.send_timeout_ms);
}

/* The error of the server's own (404, 413, 400 ...), in the dialect's shape. */
static void conn_send_error(http_conn *c, int status, const char *slug, const char *message) {
  if (!c->x->req.request_id[0]) request_id_init(c->x);
  reply_error(c->x, c->s->on_error, status, slug, message);
  conn_send(c);
}

/* Writes out what it can. Returns true when the whole response is out. */
static bool write_some(http_conn *c) {
  http_exchange *x = c->x;
  http_request *req = &x->req;
  for (;;) {
    size_t head_left = c->out.len - c->out_off;
    ssize_t n;
    if (head_left == 0 && req->resp_fd >= 0) {
      uint64_t left = req->resp_fd_size - c->body_off;
      if (left == 0) break;
      off_t off = (off_t)c->body_off;
      n = sendfile(c->fd, req->resp_fd, &off, left > (1u << 20) ? (1u << 20) : (size_t)left);
      if (n == 0) { /* the file is shorter than it said: nothing more can come */
        LOG_ERROR("http_file_shorter_than_announced", "req=%s", req->request_id);
        conn_kill(c);
        return false;
      }
    } else {
      size_t body_left = req->resp_body ? req->resp_len - c->body_off : 0;
      if (head_left == 0 && body_left == 0) break;
      struct iovec iov[2];
      int k = 0;
      if (head_left) iov[k++] = (struct iovec){c->out.data + c->out_off, head_left};
      if (body_left) iov[k++] = (struct iovec){req->resp_body + c->body_off, body_left};
      struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)k};
      n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        c->can_write = false;
        return false;
      }
      conn_kill(c); /* the client is gone */
      return false;
    }
    size_t moved = (size_t)n;
    size_t from_head = moved < head_left ? moved : head_left;
    c->out_off += from_head;
    c->body_off += moved - from_head;
    credit_deadline(c, moved, c->s->lim.send_min_rate, c->s->lim.send_timeout_ms);
  }
  return true;
}

/* Writes an interim response (100 Continue) queued while reading. */
static void flush_interim(http_conn *c) {
  while (c->out_off < c->out.len && c->can_write) {
    ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) c->can_write = false;
      else conn_kill(c);
      return;
    }
    c->out_off += (size_t)n;
  }
}

/* The response is out: the connection waits for the next request, or ends. */
static void response_done(http_conn *c) {
  exchange_end(c, false);
  c->out.len = 0;
  c->out_off = 0;
  c->served_one = true;
  if (c->close_after) {
    conn_finish_close(c);
    return;
  }
  c->state = CONN_IDLE;
  set_timeout(c, c->s->lim.idle_timeout_ms);
  llhttp_resume(&c->parser);
}

/* --- the request: llhttp callbacks --- */

static http_conn *conn_of(llhttp_t *p) { return p->data; }

/* Refuses the request now (its body, if any, is not read) and closes after. */
static int refuse(http_conn *c, int status, const char *slug, const char *message) {
  http_exchange *x = c->x;
  x->pending_status = status;
  x->pending_slug = slug;
  x->pending_message = message;
  x->answer_early = true;
  return HPE_USER;
}

static int on_message_begin(llhttp_t *p) {
  http_conn *c = conn_of(p);
  if (c->x) return HPE_INTERNAL; /* cannot happen: the parser pauses after each message */
  c->x = exchange_new(c);
  if (!c->x) return HPE_INTERNAL;
  c->state = CONN_HEAD;
  /* The first request's clock started at accept; a later one's starts now. */
  if (c->served_one) set_timeout(c, c->s->lim.header_timeout_ms);
  return 0;
}

/* Appends head bytes to the arena, within max_header_bytes. */
static int head_append(http_conn *c, const char *at, size_t len) {
  http_exchange *x = c->x;
  if (x->head.len + len + 1 > c->s->lim.max_header_bytes) {
    if (!x->target_done)
      return refuse(c, 414, "uri_too_long", "the request target is too long");
    return refuse(c, 431, "headers_too_large", "the request's header fields are too large");
  }
  if (!buf_append(&x->head, at, len)) return refuse(c, 500, "internal_error", "out of memory");
  return 0;
}

static int head_end_string(http_conn *c) {
  /* buf keeps a NUL after the data; one more byte makes it part of the arena. */
  return head_append(c, "", 1);
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  if (c->x->head.len + len > HTTP_MAX_URI_BYTES)
    return refuse(c, 414, "uri_too_long", "the request target is longer than 8192 bytes");
  return head_append(c, at, len);
}

static int on_url_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  http_exchange *x = c->x;
  x->target_off = 0;
  x->target_len = x->head.len;
  x->target_done = true;
  return head_end_string(c);
}

/* Header fields after a chunked body's last chunk (trailers): nothing here
 * reads them, so they are counted against the head's limit and dropped. The
 * arena stays as it was: req->path and the header values point into it. */
static int trailer_bytes(http_conn *c, size_t len) {
  http_exchange *x = c->x;
  x->trailer_len += len;
  if (x->trailer_len > c->s->lim.max_header_bytes)
    return refuse(c, 431, "headers_too_large", "the request's trailer fields are too large");
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  http_exchange *x = c->x;
  if (x->head_done) return trailer_bytes(c, len);
  if (!x->in_value && x->hdr[x->n_hdr].name == 0) {
    if (x->n_hdr >= HTTP_MAX_HEADERS - 1)
      return refuse(c, 431, "headers_too_large", "the request has more than 99 header fields");
    x->hdr[x->n_hdr].name = (uint32_t)x->head.len;
  }
  return head_append(c, at, len);
}

static int on_header_field_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  http_exchange *x = c->x;
  if (x->head_done) return 0;
  if (x->hdr[x->n_hdr].name == 0) x->hdr[x->n_hdr].name = (uint32_t)x->head.len;
  x->hdr[x->n_hdr].value = 0;
  x->in_value = false;
  return head_end_string(c);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  http_exchange *x = c->x;
  /* A value that goes on after a line end is an obsolete folded line, which
   * llhttp joins on without a word. RFC 9112 lets a server refuse it, and a
   * proxy in front may not have joined it the same way: refused. */
  if (x->head_done) return trailer_bytes(c, len);
  char before = at > c->feed ? at[-1] : c->feed_before;
  if (x->in_value && before == '\n')
    return refuse(c, 400, "bad_request", "malformed request: a header field is folded over lines");
  if (!x->in_value) {
    x->hdr[x->n_hdr].value = (uint32_t)x->head.len;
    x->in_value = true;
  }
  return head_append(c, at, len);
}

static int on_header_value_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  http_exchange *x = c->x;
  if (x->head_done) return 0;
  if (!x->in_value) x->hdr[x->n_hdr].value = (uint32_t)x->head.len; /* an empty value */

  /* Trailing spaces and tabs are not part of a field value. */
  while (x->head.len > x->hdr[x->n_hdr].value &&
         (x->head.data[x->head.len - 1] == ' ' || x->head.data[x->head.len - 1] == '\t'))
    x->head.len--;
  x->in_value = false;
  x->n_hdr++;
  x->hdr[x->n_hdr].name = 0;
  return head_end_string(c);
}

/* Counts the header fields called name. */
static int header_count(http_exchange *x, const char *name) {
  int n = 0;
  for (int i = 0; i < x->n_hdr; i++)
    if (strcasecmp(x->head.data + x->hdr[i].name, name) == 0) n++;
  return n;
}

/* The path of the target, without query or fragment; for an absolute-form
 * target ("http://host/p?q"), its path. Written into the arena. */
static int set_path(http_conn *c) {
  http_exchange *x = c->x;
  size_t start = x->target_off, end = x->target_off + x->target_len;
  const char *t = x->head.data;
  if (x->target_len > 7 && (strncasecmp(t + start, "http://", 7) == 0 ||
                            (x->target_len > 8 && strncasecmp(t + start, "https://", 8) == 0))) {
    const char *auth = strstr(t + start, "://") + 3;
    const char *slash = memchr(auth, '/', (size_t)(t + end - auth));
    start = slash ? (size_t)(slash - t) : end;
  }
  size_t stop = start;
  while (stop < end && t[stop] != '?' && t[stop] != '#') stop++;
  size_t path_off = x->head.len;
  int rc;
  if (stop > start) {
    /* The copy comes from the arena itself: make room first, so that the
     * source does not move under the copy. */
    if (!buf_reserve(&x->head, stop - start + 1)) return refuse(c, 500, "internal_error", "out of memory");
    rc = head_append(c, x->head.data + start, stop - start);
  } else {
    rc = head_append(c, "/", 1);
  }
  if (rc == 0) rc = head_end_string(c);
  if (rc == 0) x->req.path = x->head.data + path_off; /* the arena is final now */
  return rc;
}

static bool method_takes_body(const char *m) {
  return !strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH");
}

/* The request is refused with status (404, 405, 401 ...): with no body on
 * its way the answer waits for the end of the request and the connection
 * stays; with a body it goes out now, and the connection closes. */
static int refuse_later(http_conn *c, bool has_body, int status, const char *slug,
                        const char *message) {
  http_exchange *x = c->x;
  x->pending_status = status;
  x->pending_slug = slug;
  x->pending_message = message;
  if (!has_body) return 0;
  x->answer_early = true;
  return HPE_PAUSED;
}

/* Runs the route's guard; false when it refused (its reply is then ready). */
static bool guard_passes(http_exchange *x) {
  if (x->guard(&x->req, x->fn_ctx)) return true;
  if (x->req.status == 0) {
    LOG_ERROR("http_guard_set_no_reply", "req=%s method=%s", x->req.request_id, x->req.method);
    x->pending_status = 500;
    x->pending_slug = "internal_error";
    x->pending_message = "the request guard produced no response";
  } else {
    x->reply_ready = true;
  }
  return false;
}

static bool budget_available(http_server *s, size_t n) {
  size_t cur = atomic_load(&s->buffered);
  return cur <= s->lim.max_buffered_body_bytes && n <= s->lim.max_buffered_body_bytes - cur;
}

/* How a client refused for want of body budget is asked to wait: bodies are
 * held only while they arrive and their handler runs. */
static const char *const BUSY_RETRY_AFTER_S = "2";

/* The head is in: checks what the wire format leaves to the server, routes,
 * guards, and decides whether the body is read. Checks without a database
 * lookup come first; the guard (authentication) runs before any of the body
 * is read or any budget is taken. */
static int on_headers_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  http_server *s = c->s;
  http_exchange *x = c->x;
  http_request *req = &x->req;
  req->method = llhttp_method_name((llhttp_method_t)p->method);
  x->head_only = p->method == HTTP_HEAD;
  x->head_done = true; /* the arena is final: trailers are not kept in it */
  if (set_path(c) != 0) return HPE_USER;
  request_id_init(x);
  x->counted = true;
  active_add(s, 1);

  if (p->http_major != 1)
    return refuse(c, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
  if ((p->flags & F_TRANSFER_ENCODING) &&
      (header_count(x, "Transfer-Encoding") != 1 ||
       strcasecmp(http_header_get(req, "Transfer-Encoding"), "chunked") != 0))
    return refuse(c, 400, "bad_request", "Transfer-Encoding must be exactly \"chunked\"");
  int hosts = header_count(x, "Host");
  if (hosts > 1 || (hosts == 0 && p->http_minor >= 1))
    return refuse(c, 400, "bad_request", "an HTTP/1.1 request needs exactly one Host header");

  bool chunked = (p->flags & F_CHUNKED) != 0;
  bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  bool has_body = chunked || (has_length && p->content_length > 0);
  char allow[128];
  http_route_result r =
      http_router_match(s->router, req->method, req->path, &x->fn, &x->guard, &x->fn_ctx,
                        req->params, &req->n_params, allow, sizeof allow);
  if (r == HTTP_ROUTE_NOT_FOUND)
    return refuse_later(c, has_body, 404, "not_found", "no such path");
  if (r == HTTP_ROUTE_BAD_METHOD) {
    http_reply_header(req, "Allow", allow);
    return refuse_later(c, has_body, 405, "method_not_allowed", "method not allowed for this path");
  }
  if (has_body && !method_takes_body(req->method))
    return refuse_later(c, has_body, 413, "payload_too_large",
                        "this request takes no body; send it without one");
  if (has_length && p->content_length > s->lim.max_body_bytes)
    return refuse_later(c, has_body, 413, "payload_too_large", "request body is too large");
  if (x->guard && !guard_passes(x)) {
    if (!has_body) return 0;
    x->answer_early = true;
    return HPE_PAUSED;
  }
  if (has_length && !budget_available(s, (size_t)p->content_length)) {
    http_reply_header(req, "Retry-After", BUSY_RETRY_AFTER_S);
    return refuse_later(c, has_body, 503, "server_busy",
                        "the server holds too many request bodies; retry shortly");
  }
  if (!has_body) return 0;
  const char *expect = http_header_get(req, "Expect");
  if (expect && strcasecmp(expect, "100-continue") == 0 && p->http_minor >= 1)
    buf_append_str(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
  c->state = CONN_BODY;
  set_timeout(c, s->lim.body_timeout_ms);
  return 0;
}

/* The first allocation for a body; a declared body that outgrows it gets
 * its whole length next, a chunked one doubles. */
#define BODY_FIRST_DECLARED (1u << 20)
#define BODY_FIRST_CHUNKED (64u << 10)

/* Makes room for need body bytes. The server's budget counts what is
 * allocated, as it is allocated: a body that trickles in holds at most its
 * first megabyte until more of it has really come. Two steps at most for a
 * declared length keep copies (and an allocator's freed blocks) few. */
static int body_room(http_conn *c, size_t need) {
  http_exchange *x = c->x;
  http_server *s = c->s;
  if (need + 1 <= x->body.cap) return 0;
  bool declared = (c->parser.flags & F_CONTENT_LENGTH) != 0;
  size_t limit = s->lim.max_body_bytes;
  /* llhttp counts content_length down before it hands over the bytes: what
   * is left after the ones being added now. */
  if (declared && need + c->parser.content_length < limit)
    limit = need + (size_t)c->parser.content_length;
  size_t cap;
  if (!x->body.cap) cap = declared ? BODY_FIRST_DECLARED : BODY_FIRST_CHUNKED;
  else cap = declared ? limit + 1 : x->body.cap * 2;
  if (cap > limit + 1) cap = limit + 1;
  if (cap < need + 1) cap = need + 1;
  size_t more = cap - x->body.cap;
  size_t cur = atomic_load(&s->buffered);
  do {
    if (cur > s->lim.max_buffered_body_bytes || more > s->lim.max_buffered_body_bytes - cur) {
      http_reply_header(&x->req, "Retry-After", BUSY_RETRY_AFTER_S);
      return refuse(c, 503, "server_busy",
                    "the server holds too many request bodies; retry shortly");
    }
  } while (!atomic_compare_exchange_weak(&s->buffered, &cur, cur + more));
  x->budget += more;
  /* A declared body is allocated at most twice (its first megabyte, then
   * all of it): more would mean its length is misread, and copies grow
   * with the square of the body. */
  x->body_grows++;
  assert(!declared || x->body_grows <= 2);
  char *data = realloc(x->body.data, cap);
  if (!data) {
    LOG_ERROR("http_body_out_of_memory", "req=%s len=%zu", x->req.request_id, need);
    return refuse(c, 500, "internal_error", "out of memory");
  }
  x->body.data = data;
  x->body.cap = cap;
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  http_conn *c = conn_of(p);
  http_exchange *x = c->x;
  if (len > c->s->lim.max_body_bytes - x->body.len)
    return refuse(c, 413, "payload_too_large", "request body is too large");
  int rc = body_room(c, x->body.len + len);
  if (rc) return rc;
  memcpy(x->body.data + x->body.len, at, len);
  x->body.len += len;
  x->body.data[x->body.len] = '\0';
  credit_deadline(c, len, c->s->lim.body_min_rate, c->s->lim.body_timeout_ms);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  http_conn *c = conn_of(p);
  c->x->complete = true;
  /* After an Upgrade (or CONNECT) request, what follows is not HTTP. */
  if (p->upgrade) c->close_after = true;
  return HPE_PAUSED; /* anything after it waits until this request is answered */
}

static void settings_init(void) {
  llhttp_settings_init(&parser_settings);
  parser_settings.on_message_begin = on_message_begin;
  parser_settings.on_url = on_url;
  parser_settings.on_url_complete = on_url_complete;
  parser_settings.on_header_field = on_header_field;
  parser_settings.on_header_field_complete = on_header_field_complete;
  parser_settings.on_header_value = on_header_value;
  parser_settings.on_header_value_complete = on_header_value_complete;
  parser_settings.on_headers_complete = on_headers_complete;
  parser_settings.on_body = on_body;
  parser_settings.on_message_complete = on_message_complete;
}

/* --- waiting requests and streams --- */

static http_exchange *exchange_of(http_request *req) {
  return req ? (http_exchange *)req->conn : NULL;
}

http_waker *http_wait(http_request *req, http_resume_fn on_resume, http_end_fn on_end, void *ctx,
                      int64_t deadline_mono_ms) {
  http_exchange *x = exchange_of(req);
  assert(x && on_resume && on_end);
  if (!x->waker) {
    http_waker *wk = calloc(1, sizeof *wk);
    if (!wk) {
      LOG_ERROR("http_wait_out_of_memory", "req=%s", req->request_id);
      return NULL;
    }
    atomic_init(&wk->refs, 1); /* the exchange's */
    wk->mb = x->conn->w->mailbox;
    atomic_fetch_add(&wk->mb->refs, 1);
    wk->x = x;
    x->waker = wk;
  }
  atomic_fetch_add(&x->waker->refs, 1); /* the caller's */
  x->waiting = true;
  x->on_resume = on_resume;
  x->on_end = on_end;
  x->wait_ctx = ctx;
  x->wait_deadline = deadline_mono_ms;
  return x->waker;
}

void http_wait_until(http_request *req, int64_t deadline_mono_ms) {
  http_exchange *x = exchange_of(req);
  if (x && x->waiting) x->wait_deadline = deadline_mono_ms;
}

/* A streamed answer's head: chunked for HTTP/1.1, else the body ends with
 * the connection. */
void http_stream_start(http_request *req, int status, const char *content_type) {
  http_exchange *x = exchange_of(req);
  if (!x || x->streaming) return;
  http_conn *c = x->conn;
  http_reply_empty(req, status);
  if (content_type) http_reply_header(req, "Content-Type", content_type);
  x->streaming = true;
  x->stream_chunked = c->parser.http_minor >= 1;
  /* As for any answer: a client that asked to close (or HTTP/1.0 without
   * keep-alive) has its connection closed once the stream has ended. */
  if (!x->stream_chunked || !llhttp_should_keep_alive(&c->parser) ||
      atomic_load(&c->s->stopping))
    c->close_after = true;
  char date[40];
  http_worker_date(c->w, date);
  if (!reply_write_stream_head(x, date, c->close_after, x->stream_chunked, &c->out))
    x->stream_cut = true;
}

/* Drops what has been written from the front of out, so that a long stream
 * does not grow its buffer forever. */
static void out_compact(http_conn *c) {
  if (c->out_off == 0) return;
  memmove(c->out.data, c->out.data + c->out_off, c->out.len - c->out_off);
  c->out.len -= c->out_off;
  c->out_off = 0;
}

bool http_stream_write(http_request *req, const void *data, size_t len) {
  http_exchange *x = exchange_of(req);
  if (!x || !x->streaming || x->stream_ended || x->stream_cut) return false;
  if (len == 0 || x->head_only) return true;
  http_conn *c = x->conn;
  out_compact(c);
  /* The backlog already queued is what says the reader is behind; a single
   * piece may be larger than the cap (an image inline in one event), and is
   * taken when the reader has kept up. */
  if (c->out.len > HTTP_STREAM_MAX_QUEUED) {
    LOG_INFO("http_stream_reader_behind", "req=%s queued=%zu", req->request_id, c->out.len);
    x->stream_cut = true;
    return false;
  }
  char size[24];
  int n = x->stream_chunked ? snprintf(size, sizeof size, "%zx\r\n", len) : 0;
  bool ok = buf_append(&c->out, size, (size_t)n) && buf_append(&c->out, data, len) &&
            (!x->stream_chunked || buf_append(&c->out, "\r\n", 2));
  if (!ok) x->stream_cut = true;
  else x->resp_bytes += len;
  return ok;
}

void http_stream_end(http_request *req) {
  http_exchange *x = exchange_of(req);
  if (!x || !x->streaming || x->stream_ended) return;
  x->stream_ended = true;
  if (x->stream_chunked && !x->head_only && !buf_append_str(&x->conn->out, "0\r\n\r\n"))
    x->stream_cut = true;
}

/* The handler or on_resume has returned: an answer goes out, a stream's
 * pieces go out, or the request waits. */
static void after_handler(http_conn *c) {
  http_exchange *x = c->x;
  http_request *req = &x->req;
  if (x->stream_cut) {
    conn_kill(c); /* runs on_end(false) through exchange_end */
    return;
  }
  if (x->streaming) {
    if (c->peer_hup && !x->stream_ended) { /* the client is gone: nobody reads the stream */
      c->peer_eof = true;
      conn_kill(c);
      return;
    }
    if (x->stream_ended) wait_over(x, true);
    c->state = CONN_WAIT;
    if (x->waiting && x->wait_deadline) set_deadline(c, x->wait_deadline);
    else if (x->waiting) dheap_remove(&c->w->deadlines, &c->deadline);
    else set_timeout(c, c->s->lim.send_timeout_ms); /* ended: what is left must go out */
    return;
  }
  if (req->status != 0) {
    wait_over(x, true);
    conn_send(c);
    return;
  }
  if (x->waiting) {
    if (c->peer_hup) { /* the client closed right after asking: nobody to wait for */
      c->peer_eof = true;
      conn_kill(c);
      return;
    }
    c->state = CONN_WAIT;
    if (x->wait_deadline) set_deadline(c, x->wait_deadline);
    else dheap_remove(&c->w->deadlines, &c->deadline);
    return;
  }
  LOG_ERROR("http_handler_set_no_reply", "req=%s method=%s", req->request_id, req->method);
  conn_send_error(c, 500, "internal_error", "the handler produced no response");
}

/* Runs a waiting request's on_resume, then acts on what it did. */
static void resume(http_conn *c, http_resume_reason why) {
  http_exchange *x = c->x;
  assert(x && x->waiting && c->state == CONN_WAIT);
  x->on_resume(&x->req, x->wait_ctx, why);
  if (why != HTTP_RESUME_WOKEN && x->waiting && x->wait_deadline <= time_mono_ms())
    x->wait_deadline = 0; /* it chose to go on waiting, with no deadline */
  after_handler(c);
}

/* WAIT: a stream's queued pieces go out. True when an ended stream is all out. */
static bool write_stream(http_conn *c) {
  while (c->out_off < c->out.len && c->can_write) {
    ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) c->can_write = false;
      else conn_kill(c); /* the client is gone: on_end(false) */
      return false;
    }
    c->out_off += (size_t)n;
  }
  if (c->out_off < c->out.len) return false;
  c->out.len = c->out_off = 0;
  return c->x->stream_ended;
}

/* --- dispatch --- */

/* The request is whole: its handler runs (or its refusal is sent). */
static void dispatch(http_conn *c) {
  http_exchange *x = c->x;
  http_request *req = &x->req;
  if (x->reply_ready) {
    conn_send(c);
    return;
  }
  if (x->pending_status) {
    conn_send_error(c, x->pending_status, x->pending_slug, x->pending_message);
    return;
  }
  if (x->body.data) {
    req->body = x->body.data;
    req->body_len = x->body.len;
  }
  x->fn(req, x->fn_ctx);
  /* The handler is done with the body: its budget goes back now rather than
   * when the response has gone out to a possibly slow client. */
  body_release(x);
  after_handler(c);
}

/* A request refused before its end: the answer goes now, then the
 * connection closes (its body is never read). */
static void answer_early(http_conn *c) {
  http_exchange *x = c->x;
  x->answer_early = true;
  body_release(x);
  if (x->reply_ready) conn_send(c);
  else conn_send_error(c, x->pending_status, x->pending_slug, x->pending_message);
}

/* What the parser's refusal means for the client. */
static void parse_failed(http_conn *c, llhttp_errno_t e) {
  if (!c->x) c->x = exchange_new(c);
  if (!c->x) {
    conn_kill(c);
    return;
  }
  c->x->answer_early = true;
  if (e == HPE_INVALID_VERSION || e == HPE_PAUSED_H2_UPGRADE) {
    conn_send_error(c, 505, "http_version_not_supported",
                    "only HTTP/1.0 and HTTP/1.1 are served");
    return;
  }
  /* llhttp's reasons are fixed texts ("Invalid header value char"). */
  char message[160];
  snprintf(message, sizeof message, "malformed request: %s", llhttp_get_error_reason(&c->parser));
  conn_send_error(c, 400, "bad_request", message);
}

/* Feeds bytes to the parser and acts on where it stopped. Returns how many
 * were consumed. */
static size_t parse(http_conn *c, const char *data, size_t len) {
  c->feed = data;
  llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
  if (e == HPE_OK) {
    if (len) c->feed_before = data[len - 1];
    return len;
  }
  const char *pos = llhttp_get_error_pos(&c->parser);
  size_t used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
  if (used) c->feed_before = data[used - 1];
  if (c->dead) return used;
  http_exchange *x = c->x;
  if (x && x->answer_early) {
    /* Refused by this file's callbacks; llhttp reports that as a pause, a
     * user error or a callback error depending on the callback. */
    answer_early(c);
  } else if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && x && x->complete) {
    /* After an Upgrade or CONNECT the rest is not HTTP: answer, then close. */
    if (e == HPE_PAUSED_UPGRADE) c->close_after = true;
    dispatch(c);
  } else {
    parse_failed(c, e);
  }
  return used;
}

/* Feeds freshly read bytes; what the parser did not take (it paused after a
 * request) is kept for later. */
static void parse_fresh(http_conn *c, const char *data, size_t len) {
  size_t used = parse(c, data, len);
  if (used >= len || c->dead || c->state == CONN_LINGER) return;
  if (c->x && c->x->answer_early) return; /* closing: the rest is never parsed */
  char *keep = malloc(len - used);
  if (!keep) {
    LOG_ERROR("http_pipeline_out_of_memory", "ip=%s", c->ip);
    conn_kill(c);
    return;
  }
  memcpy(keep, data + used, len - used);
  free(c->pending);
  c->pending = keep;
  c->pending_len = len - used;
  c->pending_off = 0;
}

static void parse_pending(http_conn *c) {
  size_t used = parse(c, c->pending + c->pending_off, c->pending_len - c->pending_off);
  if (c->dead) return;
  c->pending_off += used;
  if (c->pending_off >= c->pending_len) {
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
  }
}

/* --- reading --- */

/* The client closed its side. */
static void on_eof(http_conn *c) {
  c->peer_eof = true;
  c->can_read = false;
  if (c->state == CONN_SEND) return; /* a half-closed client may still read the answer */
  conn_kill(c);
}

/* Reads once into the worker's buffer. Returns the count, 0 when nothing
 * came (EAGAIN, EOF, error: c's state tells). */
static size_t read_some(http_conn *c) {
  for (;;) {
    ssize_t n = recv(c->fd, c->w->scratch, HTTP_READ_CHUNK, 0);
    if (n > 0) return (size_t)n;
    if (n == 0) {
      on_eof(c);
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      c->can_read = false;
      return 0;
    }
    c->peer_eof = true;
    conn_kill(c);
    return 0;
  }
}

/* LINGER: drops what comes until the client closes, for a bounded time and
 * amount. */
static void linger_read(http_conn *c) {
  while (!c->dead && c->can_read) {
    size_t n = read_some(c);
    if (n == 0) {
      if (c->peer_eof) conn_kill(c);
      return;
    }
    c->lingered += n;
    if (c->lingered > HTTP_LINGER_MAX_BYTES) conn_kill(c);
  }
}

/* Reads this many times at most per turn, so that one busy client does not
 * keep a worker from its other connections. */
#define CONN_READS_PER_TURN 16

/* Moves the connection on as far as its readiness allows. Returns true when
 * it stopped with work left (it should get another turn soon). */
static bool conn_run(http_conn *c) {
  int reads = 0;
  while (!c->dead) {
    switch (c->state) {
    case CONN_IDLE:
    case CONN_HEAD:
    case CONN_BODY:
      if (c->out_off < c->out.len) {
        flush_interim(c);
        if (c->dead) return false;
      }
      if (c->pending_off < c->pending_len) {
        parse_pending(c);
        continue;
      }
      if (!c->can_read) return false;
      if (reads++ == CONN_READS_PER_TURN) return true;
      {
        size_t n = read_some(c);
        if (n == 0) return false;
        parse_fresh(c, c->w->scratch, n);
      }
      continue;
    case CONN_SEND:
      if (!c->can_write) return false;
      if (write_some(c)) response_done(c);
      continue;
    case CONN_WAIT:
      if (!c->x->streaming || !write_stream(c)) return false;
      response_done(c);
      continue;
    case CONN_LINGER:
      linger_read(c);
      return false;
    }
  }
  return false;
}

/* --- entry points --- */

static void conn_turn(http_conn *c) {
  http_worker *w = c->w;
  bool more = conn_run(c);
  if (c->dead) {
    if (!c->again_queued) conn_free(c);
    return;
  }
  if (more && !c->again_queued) {
    /* Another turn after this round of events (see server.c). */
    c->again_queued = true;
    c->again_next = w->again;
    w->again = c;
  }
}

bool conn_open(http_worker *w, int fd, const struct sockaddr_storage *peer,
               const uint8_t ip_key[16]) {
  pthread_once(&settings_once, settings_init);
  http_conn *c = calloc(1, sizeof *c);
  if (!c) {
    close(fd);
    if (ip_key) iplimit_release(w->s->per_ip, ip_key);
    atomic_fetch_sub(&w->s->connections, 1);
    return false;
  }
  c->w = w;
  c->s = w->s;
  c->fd = fd;
  c->state = CONN_IDLE;
  dheap_node_init(&c->deadline);
  if (ip_key) {
    memcpy(c->ip_key, ip_key, 16);
    c->ip_counted = true;
  }
  snprintf(c->ip, sizeof c->ip, "-");
  if (peer->ss_family == AF_INET) {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)peer)->sin_addr, c->ip,
              sizeof c->ip);
  } else if (peer->ss_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)(const void *)peer)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) /* a dual-stack socket: log the IPv4 address people know */
      inet_ntop(AF_INET, &a6->s6_addr[12], c->ip, sizeof c->ip);
    else
      inet_ntop(AF_INET6, a6, c->ip, sizeof c->ip);
  }
  llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
  c->parser.data = c;
  c->next = w->conns;
  if (w->conns) w->conns->prev = c;
  w->conns = c;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
  set_timeout(c, c->s->lim.header_timeout_ms);
  if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    LOG_ERROR("http_epoll_add_failed", "errno=%d", errno);
    conn_kill(c);
    conn_free(c);
    return false;
  }
  return true;
}

void conn_on_events(http_conn *c, uint32_t events) {
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->can_read = true;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->can_write = true;
  if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->peer_hup = true;
  /* A waiting request reads nothing; the client closing is what it hears. */
  if (c->state == CONN_WAIT && c->peer_hup) {
    c->peer_eof = true;
    conn_kill(c);
  }
  conn_turn(c);
}

void conn_again(http_conn *c) {
  c->again_queued = false;
  if (c->dead) {
    conn_free(c);
    return;
  }
  conn_turn(c);
}

void conn_on_deadline(http_conn *c) {
  dheap_remove(&c->w->deadlines, &c->deadline);
  switch (c->state) {
  case CONN_HEAD:
  case CONN_BODY:
    if (c->x && !c->x->answer_early) {
      LOG_INFO("http_request_timeout", "ip=%s state=%s", c->ip,
               c->state == CONN_HEAD ? "head" : "body");
      c->x->answer_early = true;
      body_release(c->x);
      conn_send_error(c, 408, "request_timeout",
                      c->state == CONN_HEAD ? "the request's head did not arrive in time"
                                            : "the request's body did not arrive in time");
      /* The answer gets a short while to go out, then the connection goes. */
      if (!c->dead) set_timeout(c, HTTP_LINGER_MS);
      break;
    }
    conn_kill(c);
    break;
  case CONN_WAIT:
    if (c->x && c->x->waiting) {
      resume(c, HTTP_RESUME_DEADLINE);
      break;
    }
    conn_kill(c); /* an ended stream whose reader stopped reading */
    break;
  case CONN_IDLE:
  case CONN_SEND:
  case CONN_LINGER:
    conn_kill(c);
    break;
  }
  conn_turn(c);
}

void conn_resume_waker(http_waker *wk) {
  http_exchange *x = wk->x;
  if (!x || !x->waiting) return; /* answered, or gone, meanwhile */
  http_conn *c = x->conn;
  if (c->dead || c->state != CONN_WAIT) return;
  resume(c, HTTP_RESUME_WOKEN);
  conn_turn(c);
}

void conn_on_stop(http_conn *c) {
  bool in_progress = c->x && c->x->counted;
  if (!in_progress && c->state != CONN_SEND) {
    conn_kill(c); /* idle, or a head still arriving: nothing was accepted yet */
  } else {
    c->close_after = true;
    /* A waiting request answers now with what there is (a stream ends). */
    if (c->state == CONN_WAIT && c->x->waiting) resume(c, HTTP_RESUME_STOPPING);
  }
  conn_turn(c);
}

void conn_close_now(http_conn *c) {
  conn_kill(c);
  conn_free(c);
}
