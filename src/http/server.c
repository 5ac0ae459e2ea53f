/* server.c - the HTTP/1.1 server: a listener, worker threads with an epoll
 * loop each, and the limits that keep one client from taking the server.
 *
 * Why not a library server: libmicrohttpd 0.9.75 (Debian bookworm's) accepts
 * smuggling forms a front proxy may read differently (two Content-Lengths,
 * Content-Length with chunked, "Transfer-Encoding : chunked"), answers its own
 * errors as HTML, and restarts its idle clock on every byte; 1.0 fixes the
 * first but not the others, and has no hook for its error bodies. Parsing is
 * left to llhttp (Node.js's parser, from Debian's node-llhttp); this file and
 * conn.c own the sockets, so every answer is the dialect's JSON and every
 * deadline is ours. docs/architecture.md has the longer account.
 *
 * Threads: http_server_config.threads workers. Each has its own epoll set,
 * its connections (it accepted them; they never move) and a heap of their
 * deadlines. The listen socket is in every worker's set with EPOLLEXCLUSIVE,
 * so a new connection wakes one idle worker. A handler runs on its
 * connection's worker and must not block for longer than a database write.
 *
 * Connection limits: a slot of max_connections is taken before accept (a
 * compare-and-swap, so the limit is exact across workers); with none left a
 * worker takes the listen socket out of its set and new clients wait in the
 * kernel's listen queue. max_connections_per_ip is checked after accept: over
 * it the client gets a 429 at once and the connection is closed. */
#include "http/server.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http/internal.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/timeutil.h"

/* Defaults for the settings left at 0 (docs/configuration.md). */
#define DEFAULT_IDLE_TIMEOUT_S 60
#define DEFAULT_HEADER_TIMEOUT_MS 10000
#define DEFAULT_BODY_TIMEOUT_MS 10000
#define DEFAULT_BODY_MIN_RATE 4096
#define DEFAULT_SEND_TIMEOUT_MS 30000
#define DEFAULT_SEND_MIN_RATE 4096
#define DEFAULT_MAX_HEADER_BYTES 32768
#define DEFAULT_MAX_CONNECTIONS 16384
/* Accepted at once per wake of the listen socket, so that a burst of new
 * clients does not starve the connections the worker already has. */
#define ACCEPTS_PER_TURN 64
/* How soon a worker that stopped listening (no connection slot, no file
 * descriptor) tries again. */
#define LISTEN_RETRY_MS 50

/* epoll data for the two descriptors that are not connections. */
static char listen_tag, wake_tag;

void http_worker_request_id(http_worker *w, char out[33]) {
  /* A request id only has to be unique and say nothing: 64 random bits
   * drawn once per worker, then a counter, each as 16 hex digits. Drawing
   * 128 random bits per request cost 5 % of a plain 404. */
  static const char hex[] = "0123456789abcdef";
  uint64_t parts[2] = {w->id_prefix, w->id_counter++};
  for (int p = 0; p < 2; p++)
    for (int i = 0; i < 16; i++) out[p * 16 + i] = hex[(parts[p] >> (60 - 4 * i)) & 15];
  out[32] = '\0';
}

void http_worker_date(http_worker *w, char out[40]) {
  int64_t now = time_now_ms();
  if (now / 1000 != w->date_sec) {
    w->date_sec = now / 1000;
    time_format_http(now, w->date);
  }
  memcpy(out, w->date, 40);
}

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
  struct sigaction old;
  if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL) {
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, NULL);
  }
}


struct http_listener {
  int fd;
  int port;
  char host[128]; /* for messages */
};

/* Dual-stack for "::" (IPv4 clients too), IPv6 only for a specific address,
 * as servers usually do. */
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
  /* Non-blocking: every worker waits on it, and only one of them gets each
   * connection. */
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

/* --- accepting --- */

static void listen_pause(http_worker *w) {
  if (!w->listening) return;
  epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->s->listen_fd, NULL);
  w->listening = false;
  w->listen_retry_ms = time_mono_ms() + LISTEN_RETRY_MS;
}

static void listen_resume(http_worker *w) {
  http_server *s = w->s;
  if (w->listening || time_mono_ms() < w->listen_retry_ms) return;
  if (atomic_load(&s->connections) >= s->lim.max_connections) {
    w->listen_retry_ms = time_mono_ms() + LISTEN_RETRY_MS;
    return;
  }
  struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &listen_tag};
  if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, s->listen_fd, &ev) == 0) w->listening = true;
  else w->listen_retry_ms = time_mono_ms() + LISTEN_RETRY_MS;
}

/* Takes one of max_connections, or says there is none. */
static bool slot_take(http_server *s) {
  unsigned cur = atomic_load(&s->connections);
  do {
    if (cur >= s->lim.max_connections) return false;
  } while (!atomic_compare_exchange_weak(&s->connections, &cur, cur + 1));
  return true;
}

/* Over the per-address limit: the client hears why before the connection
 * closes (best effort: one non-blocking write, nothing is read). */
static void refuse_connection(http_worker *w, int fd) {
  char date[40], id[33], body[256], head[512];
  http_worker_date(w, date);
  http_worker_request_id(w, id);
  int blen = snprintf(body, sizeof body,
                      "{\"error\":{\"code\":\"too_many_connections\",\"message\":\"this address "
                      "has %u connections open, the most it may have\",\"param\":null}}",
                      w->s->lim.max_connections_per_ip);
  int hlen = snprintf(head, sizeof head,
                      "HTTP/1.1 429 Too Many Requests\r\nDate: %s\r\nContent-Type: "
                      "application/json\r\nContent-Length: %d\r\nRetry-After: 1\r\n"
                      "X-Request-Id: %s\r\nConnection: close\r\n\r\n",
                      date, blen, id);
  struct iovec iov[2] = {{head, (size_t)hlen}, {body, (size_t)blen}};
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
  ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
  (void)n;
  shutdown(fd, SHUT_WR);
  close(fd);
}

static void accept_some(http_worker *w) {
  http_server *s = w->s;
  for (int k = 0; k < ACCEPTS_PER_TURN; k++) {
    if (!slot_take(s)) {
      listen_pause(w);
      return;
    }
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    int fd = accept4(s->listen_fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      atomic_fetch_sub(&s->connections, 1);
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        /* Out of descriptors: a level-triggered listen socket would wake
         * this worker in a loop; wait a little instead. */
        LOG_WARN("http_accept_out_of_resources", "errno=%d", errno);
        listen_pause(w);
      }
      return;
    }
    if (atomic_load(&s->stopping)) { /* a stopping server takes no new connections */
      close(fd);
      atomic_fetch_sub(&s->connections, 1);
      continue;
    }
    uint8_t key[16];
    bool keyed = s->per_ip && iplimit_key((struct sockaddr *)&peer, key);
    if (keyed && !iplimit_acquire(s->per_ip, key)) {
      refuse_connection(w, fd);
      atomic_fetch_sub(&s->connections, 1);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conn_open(w, fd, &peer, keyed ? key : NULL);
  }
}

/* --- the worker loop --- */

/* --- waking waiting requests from other threads --- */

static http_mailbox *mailbox_new(int wake_fd) {
  http_mailbox *mb = calloc(1, sizeof *mb);
  if (!mb) return NULL;
  pthread_mutex_init(&mb->lock, NULL);
  atomic_init(&mb->refs, 1); /* the worker's */
  mb->wake_fd = wake_fd;
  return mb;
}

static void mailbox_release(http_mailbox *mb) {
  if (!mb || atomic_fetch_sub(&mb->refs, 1) != 1) return;
  pthread_mutex_destroy(&mb->lock);
  free(mb);
}

void http_waker_release(http_waker *wk) {
  if (!wk || atomic_fetch_sub(&wk->refs, 1) != 1) return;
  mailbox_release(wk->mb);
  free(wk);
}

/* The worker is going: later wakes do nothing, and what was woken and never
 * resumed is let go. The descriptor is the worker's to close after this. */
static void mailbox_close(http_mailbox *mb) {
  if (!mb) return;
  pthread_mutex_lock(&mb->lock);
  mb->closed = true;
  mb->wake_fd = -1;
  http_waker *list = mb->head;
  mb->head = mb->tail = NULL;
  for (http_waker *wk = list; wk; wk = wk->next) wk->queued = false;
  pthread_mutex_unlock(&mb->lock);
  while (list) {
    http_waker *next = list->next;
    http_waker_release(list);
    list = next;
  }
  mailbox_release(mb);
}

void http_wake(http_waker *wk) {
  if (!wk) return;
  http_mailbox *mb = wk->mb;
  pthread_mutex_lock(&mb->lock);
  if (!mb->closed && !wk->queued) {
    wk->queued = true;
    atomic_fetch_add(&wk->refs, 1); /* the mailbox's, until the worker has run it */
    wk->next = NULL;
    bool first = mb->head == NULL;
    if (mb->tail) mb->tail->next = wk;
    else mb->head = wk;
    mb->tail = wk;
    if (first) { /* the first of a batch rings the bell; under the lock, so the
                    descriptor cannot be closed and reused meanwhile */
      uint64_t one = 1;
      ssize_t n = write(mb->wake_fd, &one, sizeof one);
      (void)n;
    }
  }
  pthread_mutex_unlock(&mb->lock);
}

void http_worker_run_mailbox(http_worker *w) {
  http_mailbox *mb = w->mailbox;
  /* What is queued now is run; wakes that come meanwhile wait for the next
   * turn (the bell rings again for them), so other connections get theirs. */
  pthread_mutex_lock(&mb->lock);
  const http_waker *last = mb->tail;
  pthread_mutex_unlock(&mb->lock);
  bool more = last != NULL;
  while (more) {
    /* One entry at a time, taken off the queue under the lock: a waker is
     * either queued (its next belongs to the queue and http_wake leaves it
     * alone) or not (a wake queues it again). Taking the whole list at once
     * and marking it unqueued let a wake for an entry further down relink
     * its next while this loop still walked it: skipped wakes, and a waker
     * released twice. */
    pthread_mutex_lock(&mb->lock);
    http_waker *wk = mb->head;
    assert(wk); /* last is still queued until it is taken here */
    mb->head = wk->next;
    if (!mb->head) mb->tail = NULL;
    wk->next = NULL;
    wk->queued = false;
    pthread_mutex_unlock(&mb->lock);
    more = wk != last; /* compared before the release below may free it */
    conn_resume_waker(wk);
    http_waker_release(wk);
  }
  /* Wakes that came meanwhile found the queue not empty and did not ring
   * the bell (only the first of a batch does): ring it for them, so the
   * next turn of the loop runs them at once. */
  pthread_mutex_lock(&mb->lock);
  if (mb->head && mb->wake_fd >= 0) {
    uint64_t one = 1;
    ssize_t n = write(mb->wake_fd, &one, sizeof one);
    (void)n;
  }
  pthread_mutex_unlock(&mb->lock);
}

/* Another thread wrote to the wake descriptor. True when that was the
 * server starting to stop, seen for the first time. */
static bool on_wake(http_worker *w, bool *stop_seen) {
  uint64_t v;
  ssize_t n = read(w->wake_fd, &v, sizeof v);
  (void)n;
  if (!atomic_load(&w->s->stopping) || *stop_seen) return false;
  *stop_seen = true;
  return true;
}

/* The server is stopping: idle connections close, the others after their
 * answer. Runs after a batch of events, never inside one: it frees
 * connections that later events of the same batch would still name. */
static void stop_connections(http_worker *w) {
  for (http_conn *c = w->conns, *next; c; c = next) {
    next = conn_next(c);
    conn_on_stop(c);
  }
}

/* Milliseconds epoll may wait: until the earliest deadline, at once when
 * connections have work left, a little while when the listener waits for a
 * retry. */
static int wait_ms(http_worker *w) {
  if (w->again) return 0;
  int64_t now = time_mono_ms();
  int64_t until = INT64_MAX;
  dheap_node *top = dheap_top(&w->deadlines);
  if (top) until = top->due;
  if (!w->listening && w->listen_retry_ms < until) until = w->listen_retry_ms;
  if (until == INT64_MAX) return -1;
  int64_t ms = until - now;
  if (ms < 0) return 0;
  return ms > 60000 ? 60000 : (int)ms + 1; /* +1: never wake a hair before it */
}

static void run_deadlines(http_worker *w) {
  int64_t now = time_mono_ms();
  for (dheap_node *top; (top = dheap_top(&w->deadlines)) && top->due <= now;)
    conn_on_deadline(conn_of_deadline(top));
}

static void run_again(http_worker *w) {
  http_conn *list = w->again;
  w->again = NULL;
  while (list) {
    http_conn *next = conn_again_next(list);
    conn_again(list);
    list = next;
  }
}

static void *worker_main(void *arg) {
  http_worker *w = arg;
  http_server *s = w->s;
  struct epoll_event events[128];
  bool stop_seen = false;
  while (!atomic_load(&s->quit)) {
    if (!w->listening) listen_resume(w);
    int n = epoll_wait(w->epfd, events, 128, wait_ms(w));
    if (n < 0 && errno != EINTR) {
      LOG_ERROR("http_epoll_wait_failed", "errno=%d", errno);
      break;
    }
    bool stop_now = false;
    for (int i = 0; i < n; i++) {
      void *tag = events[i].data.ptr;
      if (tag == &listen_tag) accept_some(w);
      else if (tag == &wake_tag) stop_now |= on_wake(w, &stop_seen);
      else conn_on_events(tag, events[i].events);
    }
    /* From here on nothing of this batch is looked at: these may free
     * connections. */
    http_worker_run_mailbox(w);
    if (stop_now) stop_connections(w);
    run_again(w);
    run_deadlines(w);
  }
  while (w->conns) conn_close_now(w->conns);
  return NULL;
}

/* --- start and stop --- */

static void wake(http_worker *w) {
  uint64_t one = 1;
  ssize_t n = write(w->wake_fd, &one, sizeof one);
  (void)n;
}

static unsigned pool_size(int threads) {
  if (threads > 0) return (unsigned)threads;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (unsigned)n : 1u;
}

static void limits_from(const http_server_config *cfg, http_limits *l) {
  l->max_body_bytes = cfg->max_body_bytes;
  l->max_buffered_body_bytes =
      cfg->max_buffered_body_bytes ? cfg->max_buffered_body_bytes : SIZE_MAX;
  l->max_header_bytes = cfg->max_header_bytes ? cfg->max_header_bytes : DEFAULT_MAX_HEADER_BYTES;
  if (l->max_header_bytes < HTTP_MAX_URI_BYTES + 64) l->max_header_bytes = HTTP_MAX_URI_BYTES + 64;
  l->idle_timeout_ms =
      (int64_t)(cfg->connection_timeout_s ? cfg->connection_timeout_s : DEFAULT_IDLE_TIMEOUT_S) *
      1000;
  l->header_timeout_ms = cfg->header_timeout_ms > 0 ? cfg->header_timeout_ms
                                                    : DEFAULT_HEADER_TIMEOUT_MS;
  l->body_timeout_ms = cfg->body_timeout_ms > 0 ? cfg->body_timeout_ms : DEFAULT_BODY_TIMEOUT_MS;
  l->body_min_rate = cfg->body_min_rate ? cfg->body_min_rate : DEFAULT_BODY_MIN_RATE;
  l->send_timeout_ms = cfg->send_timeout_ms > 0 ? cfg->send_timeout_ms : DEFAULT_SEND_TIMEOUT_MS;
  l->send_min_rate = cfg->send_min_rate ? cfg->send_min_rate : DEFAULT_SEND_MIN_RATE;
  l->max_connections = cfg->max_connections ? cfg->max_connections : DEFAULT_MAX_CONNECTIONS;
  l->max_connections_per_ip = cfg->max_connections_per_ip;
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
}

static bool worker_init(http_server *s, http_worker *w) {
  w->s = s;
  w->epfd = epoll_create1(EPOLL_CLOEXEC);
  w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  w->scratch = malloc(HTTP_READ_CHUNK);
  w->date_sec = -1;
  char seed[17];
  if (!ids_random_hex(seed, 8)) return false;
  w->id_prefix = strtoull(seed, NULL, 16);
  if (w->epfd < 0 || w->wake_fd < 0 || !w->scratch) return false;
  w->mailbox = mailbox_new(w->wake_fd);
  if (!w->mailbox) return false;
  struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &wake_tag};
  struct epoll_event lev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &listen_tag};
  if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wake_fd, &wev) != 0 ||
      epoll_ctl(w->epfd, EPOLL_CTL_ADD, s->listen_fd, &lev) != 0)
    return false;
  w->listening = true;
  return true;
}

static void server_free(http_server *s) {
  for (unsigned i = 0; s->workers && i < s->n_workers; i++) {
    http_worker *w = &s->workers[i];
    mailbox_close(w->mailbox); /* before the descriptor it writes to goes */
    if (w->epfd >= 0) close(w->epfd);
    if (w->wake_fd >= 0) close(w->wake_fd);
    free(w->scratch);
    dheap_free(&w->deadlines);
  }
  free(s->workers);
  iplimit_destroy(s->per_ip);
  if (s->listen_fd >= 0) close(s->listen_fd);
  pthread_mutex_destroy(&s->drain_lock);
  pthread_cond_destroy(&s->drained);
  free(s);
}

/* Stops and joins the workers that were started. */
static void workers_quit(http_server *s) {
  atomic_store(&s->quit, true);
  for (unsigned i = 0; i < s->n_workers; i++)
    if (s->workers[i].started) wake(&s->workers[i]);
  for (unsigned i = 0; i < s->n_workers; i++)
    if (s->workers[i].started) pthread_join(s->workers[i].thread, NULL);
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
  /* From here on the socket is the server's. */
  s->listen_fd = l->fd;
  s->port = l->port;
  snprintf(s->host, sizeof s->host, "%s", l->host);
  free(l);
  drain_init(s);
  s->router = router;
  s->on_error = cfg->on_error;
  s->shutdown_timeout_ms = cfg->shutdown_timeout_ms > 0 ? cfg->shutdown_timeout_ms : 0;
  limits_from(cfg, &s->lim);
  atomic_init(&s->buffered, 0);
  atomic_init(&s->connections, 0);
  atomic_init(&s->stopping, false);
  atomic_init(&s->quit, false);
  sigpipe_guard();
  s->n_workers = pool_size(cfg->threads);
  s->workers = calloc(s->n_workers, sizeof *s->workers);
  bool ok = s->workers != NULL;
  if (ok && s->lim.max_connections_per_ip)
    ok = (s->per_ip = iplimit_create(s->lim.max_connections_per_ip)) != NULL;
  for (unsigned i = 0; s->workers && i < s->n_workers; i++) {
    s->workers[i].epfd = s->workers[i].wake_fd = -1;
  }
  for (unsigned i = 0; ok && i < s->n_workers; i++) {
    http_worker *w = &s->workers[i];
    ok = worker_init(s, w) && pthread_create(&w->thread, NULL, worker_main, w) == 0;
    w->started = ok;
  }
  if (!ok) {
    snprintf(err, err_size, "cannot serve on %s port %d: %s", s->host, s->port,
             errno ? strerror(errno) : "out of memory");
    if (s->workers) workers_quit(s);
    server_free(s);
    return NULL;
  }
  char qhost[128];
  LOG_INFO("http_listening", "host=%s port=%d threads=%u", log_quote(s->host, qhost, sizeof qhost),
           s->port, s->n_workers);
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
  /* From here on new connections are closed as soon as they are accepted,
   * idle ones are closed, and the requests in progress get up to
   * shutdown_timeout_ms; then every connection and the listen socket go. */
  atomic_store(&s->stopping, true);
  for (unsigned i = 0; i < s->n_workers; i++) wake(&s->workers[i]);
  pthread_mutex_lock(&s->drain_lock);
  int active = s->active;
  pthread_mutex_unlock(&s->drain_lock);
  if (active > 0) {
    LOG_INFO("http_draining", "requests=%d timeout_ms=%d", active, s->shutdown_timeout_ms);
    int left = drain_wait(s, s->shutdown_timeout_ms);
    if (left > 0) LOG_WARN("http_drain_timeout", "requests_cut=%d", left);
  }
  workers_quit(s);
  LOG_INFO("http_stopped", "port=%d", s->port);
  server_free(s);
}
