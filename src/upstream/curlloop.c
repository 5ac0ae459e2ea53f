/* curlloop.c - one thread driving libcurl's multi interface.
 *
 * Event-driven: libcurl tells us which sockets it waits on (socket callback)
 * and when its next timer is due (timer callback); the loop waits on an epoll
 * set and hands each ready socket to curl_multi_socket_action(). So an idle
 * loop sleeps in epoll_wait, and one ready socket costs O(1) whatever the
 * number of transfers in flight (curl_multi_perform/poll would walk all of
 * them on every wakeup: ~10,000 syscalls per event at 10,000 in flight).
 *
 * Threads: submitters and cancellers only touch the queues (under mu) and
 * write the eventfd that wakes the loop. Everything else on the multi handle,
 * the share handle, the epoll set, the active list and the id table happens
 * on the loop thread, or on the destroying thread after the loop thread has
 * been joined. That single-owner rule is why the share handle needs no lock
 * callbacks, and why a cancel can never race a transfer's end: both are
 * decided on the loop thread, one after the other. */
#include "upstream/curlloop.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/log.h"
#include "util/timeutil.h"

#define CURLLOOP_DEFAULT_CONNECT_MS 10000L
/* Upper bound of one wait; libcurl shortens it to its own next timer. */
#define CURLLOOP_POLL_MS 1000
#define CURLLOOP_EVENTS 256
/* Buckets of the id table to start with; it doubles as transfers pile up. */
#define CURLLOOP_ID_BUCKETS 256

typedef struct transfer {
  curlloop_transfer_id id;
  CURL *easy;
  size_t cap;
  curlloop_done_fn done;
  void *ctx;
  curlloop_sink sink;   /* write NULL: the body is collected in res.body */
  size_t received;      /* bytes handed to the sink */
  bool oom;
  curlloop_result res;
  struct transfer *next, *prev;
  struct transfer *id_next; /* chain in the id table */
} transfer;

struct curlloop {
  CURLM *multi;
  CURLSH *share;
  long connect_timeout_ms;
  pthread_t thread;
  pthread_mutex_t mu;
  transfer *queue_head, *queue_tail; /* under mu */
  curlloop_transfer_id last_id;      /* under mu: the last id handed out */
  curlloop_transfer_id *cancels;     /* under mu: ids to stop, in request order */
  size_t n_cancels, cap_cancels;     /* under mu */
  bool stopping;                     /* under mu */
  atomic_bool stop;                  /* read by the loop thread without mu */
  atomic_size_t in_flight;
  transfer *active; /* in the multi handle; loop thread only */
  transfer **by_id; /* the active transfers by id, chained; loop thread only */
  size_t id_buckets; /* a power of two */
  size_t n_active;
  int epfd;         /* the sockets libcurl waits on, plus wakefd */
  int wakefd;       /* eventfd: new work, or stop */
  int64_t timer_due_ms; /* libcurl's next timeout (monotonic ms); -1 = none */
};

/* --- process-wide libcurl initialisation --- */

static pthread_once_t curlloop_once = PTHREAD_ONCE_INIT;
static CURLcode curlloop_init_code = CURLE_FAILED_INIT;

static void curlloop_global_init(void) { curlloop_init_code = curl_global_init(CURL_GLOBAL_ALL); }

/* --- per-transfer callbacks --- */

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  transfer *t = ud;
  size_t len = size * n;
  if (t->sink.write) {
    if (len > t->cap - t->received) {
      t->res.body_truncated = true;
      return 0;
    }
    t->received += len;
    if (!t->sink.write(t->sink.ctx, data, len)) {
      t->res.sink_refused = true;
      return 0; /* less than len: libcurl stops with CURLE_WRITE_ERROR */
    }
    return len;
  }
  size_t room = t->cap - t->res.body.len;
  size_t take = len < room ? len : room;
  if (take && !buf_append(&t->res.body, data, take)) {
    t->oom = true;
    return 0;
  }
  if (take < len) {
    /* Returning less than len makes libcurl stop with CURLE_WRITE_ERROR. */
    t->res.body_truncated = true;
    return 0;
  }
  return len;
}

static void copy_value(char *dst, size_t size, const char *v, size_t n) {
  if (n >= size) n = size - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

static void forget_headers(curlloop_result *r) {
  r->content_type[0] = r->retry_after[0] = r->retry_after_ms[0] = r->request_id[0] = '\0';
}

/* Header lines arrive one by one, status lines included. A status line opens
 * a new response (after a 100 Continue, a redirect, an auth round), whose
 * headers replace what an earlier one said. */
static size_t on_header(char *line, size_t size, size_t n, void *ud) {
  transfer *t = ud;
  size_t len = size * n;
  if (len >= 5 && strncmp(line, "HTTP/", 5) == 0) {
    forget_headers(&t->res);
    return len;
  }
  const char *colon = memchr(line, ':', len);
  if (!colon) return len;
  size_t name_len = (size_t)(colon - line);
  const char *v = colon + 1;
  const char *end = line + len;
  while (v < end && is_space(*v)) v++;
  while (end > v && is_space(end[-1])) end--;
  size_t vlen = (size_t)(end - v);
#define WANTED(name, field) \
  {name, sizeof name - 1, offsetof(curlloop_result, field), sizeof t->res.field}
  static const struct {
    const char *name;
    size_t name_len, offset, size;
  } wanted[] = {
      WANTED("content-type", content_type),
      WANTED("retry-after", retry_after),
      WANTED("retry-after-ms", retry_after_ms),
      WANTED("x-request-id", request_id),
  };
#undef WANTED
  for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
    if (wanted[i].name_len == name_len && strncasecmp(line, wanted[i].name, name_len) == 0) {
      copy_value((char *)&t->res + wanted[i].offset, wanted[i].size, v, vlen);
      break;
    }
  }
  return len;
}

/* --- submission (any thread) --- */

static void wake(curlloop *l) {
  uint64_t one = 1;
  /* EAGAIN means the counter is already non-zero: a wakeup is pending. */
  if (write(l->wakefd, &one, sizeof one) < 0) return;
}

static bool prepare_easy(curlloop *l, transfer *t) {
  CURL *e = t->easy;
  return curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_WRITEDATA, t) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_HEADERDATA, t) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_PRIVATE, t) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->res.error) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "") == CURLE_OK;
}

/* The connect timeout is a default set at creation, not at submit: set at
 * submit it overwrote what the owner had chosen (a provider's own
 * connect_timeout_ms was silently ignored). */
CURL *curlloop_easy_new(curlloop *l) {
  CURL *e = curl_easy_init();
  if (e && l && curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, l->connect_timeout_ms) != CURLE_OK) {
    curl_easy_cleanup(e);
    return NULL;
  }
  return e;
}

/* Undoes what would dangle once t is freed (the caller may keep easy). */
static void release_easy(CURL *e) {
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
  curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
}

/* Whether the loop has nothing queued since its last drain: then no wakeup
 * is pending and the next request must write one. Under mu. */
static bool queues_empty(const curlloop *l) { return !l->queue_head && l->n_cancels == 0; }

int curlloop_submit_sink(curlloop *l, CURL *easy, size_t max_response_bytes,
                         const curlloop_sink *sink, curlloop_done_fn done, void *ctx,
                         curlloop_transfer_id *id_out) {
  if (id_out) *id_out = 0;
  if (!l || !easy || !done || (sink && !sink->write)) return -1;
  transfer *t = calloc(1, sizeof *t);
  if (!t) return -1;
  t->easy = easy;
  t->cap = max_response_bytes;
  t->done = done;
  t->ctx = ctx;
  if (sink) t->sink = *sink;
  if (!prepare_easy(l, t)) {
    release_easy(easy);
    free(t);
    return -1;
  }
  pthread_mutex_lock(&l->mu);
  if (l->stopping) {
    pthread_mutex_unlock(&l->mu);
    release_easy(easy);
    free(t);
    return -1;
  }
  t->id = ++l->last_id;
  /* Before the loop can see t: its callback may run before we return. */
  if (id_out) *id_out = t->id;
  bool was_empty = queues_empty(l);
  if (l->queue_head) l->queue_tail->next = t;
  else l->queue_head = t;
  l->queue_tail = t;
  atomic_fetch_add(&l->in_flight, 1);
  /* A non-empty queue means a wakeup is already pending since the last drain.
   * Waking under mu keeps destroy from freeing the multi handle under us. */
  if (was_empty) wake(l);
  pthread_mutex_unlock(&l->mu);
  return 0;
}

int curlloop_submit_with_id(curlloop *l, CURL *easy, size_t max_response_bytes,
                            curlloop_done_fn done, void *ctx, curlloop_transfer_id *id_out) {
  return curlloop_submit_sink(l, easy, max_response_bytes, NULL, done, ctx, id_out);
}

int curlloop_submit(curlloop *l, CURL *easy, size_t max_response_bytes, curlloop_done_fn done,
                    void *ctx) {
  return curlloop_submit_with_id(l, easy, max_response_bytes, done, ctx, NULL);
}

int curlloop_cancel(curlloop *l, curlloop_transfer_id id) {
  if (!l) return -1;
  pthread_mutex_lock(&l->mu);
  int rc = 0;
  if (l->stopping) {
    rc = -1;
  } else if (id != 0 && id <= l->last_id) { /* an id never handed out names nothing */
    if (l->n_cancels == l->cap_cancels) {
      size_t cap = l->cap_cancels ? l->cap_cancels * 2 : 16;
      curlloop_transfer_id *grown = realloc(l->cancels, cap * sizeof *grown);
      if (grown) {
        l->cancels = grown;
        l->cap_cancels = cap;
      }
    }
    if (l->n_cancels < l->cap_cancels) {
      bool was_empty = queues_empty(l);
      l->cancels[l->n_cancels++] = id;
      if (was_empty) wake(l);
    } else {
      rc = -1;
    }
  }
  pthread_mutex_unlock(&l->mu);
  return rc;
}

size_t curlloop_in_flight(curlloop *l) { return l ? atomic_load(&l->in_flight) : 0; }

/* --- the active transfers: a list, and a table by id that says which one an
 * id names (loop thread, or the destroying thread after the join) --- */

static transfer **id_slot(curlloop *l, curlloop_transfer_id id) {
  return &l->by_id[id & (l->id_buckets - 1)];
}

/* Ids are consecutive, so their low bits spread them evenly: no hashing. */
static void id_grow(curlloop *l) {
  size_t n = l->id_buckets * 2;
  transfer **grown = calloc(n, sizeof *grown);
  if (!grown) return; /* longer chains, still correct */
  for (size_t i = 0; i < l->id_buckets; i++) {
    transfer *t = l->by_id[i];
    while (t) {
      transfer *next = t->id_next;
      transfer **slot = &grown[t->id & (n - 1)];
      t->id_next = *slot;
      *slot = t;
      t = next;
    }
  }
  free(l->by_id);
  l->by_id = grown;
  l->id_buckets = n;
}

static transfer *id_find(curlloop *l, curlloop_transfer_id id) {
  transfer *t = *id_slot(l, id);
  while (t && t->id != id) t = t->id_next;
  return t;
}

static void active_link(curlloop *l, transfer *t) {
  t->prev = NULL;
  t->next = l->active;
  if (l->active) l->active->prev = t;
  l->active = t;
  if (++l->n_active > 2 * l->id_buckets) id_grow(l);
  transfer **slot = id_slot(l, t->id);
  t->id_next = *slot;
  *slot = t;
}

static void active_unlink(curlloop *l, transfer *t) {
  if (t->prev) t->prev->next = t->next;
  else l->active = t->next;
  if (t->next) t->next->prev = t->prev;
  t->next = t->prev = NULL;
  transfer **p = id_slot(l, t->id);
  while (*p != t) p = &(*p)->id_next;
  *p = t->id_next;
  t->id_next = NULL;
  l->n_active--;
}

/* --- completion (loop thread, or the destroying thread after the join) --- */

static void fill_outcome(transfer *t, CURLcode code) {
  curlloop_result *r = &t->res;
  r->code = code;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &r->http_status);
  curl_off_t us = 0;
  if (curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &us) == CURLE_OK)
    r->total_ms = (double)us / 1000.0;
  if (r->body_truncated) {
    r->code = CURLE_WRITE_ERROR;
    snprintf(r->error, sizeof r->error, "response body larger than %zu bytes", t->cap);
  } else if (t->oom) {
    snprintf(r->error, sizeof r->error, "out of memory storing the response body");
  } else if (r->sink_refused) {
    snprintf(r->error, sizeof r->error, "the receiver of the response body stopped it");
  } else if (code != CURLE_OK && r->error[0] == '\0') {
    snprintf(r->error, sizeof r->error, "%s", curl_easy_strerror(code));
  }
}

/* Hands t back to its owner and frees it. easy must already be out of the multi. */
static void finish(curlloop *l, transfer *t) {
  curl_easy_setopt(t->easy, CURLOPT_SHARE, NULL);
  release_easy(t->easy);
  atomic_fetch_sub(&l->in_flight, 1);
  t->done(t->ctx, t->easy, &t->res);
  buf_free(&t->res.body);
  free(t);
}

static void finish_cancelled(curlloop *l, transfer *t) {
  t->res.cancelled = true;
  t->res.code = CURLE_ABORTED_BY_CALLBACK;
  t->res.http_status = 0;
  buf_free(&t->res.body);
  snprintf(t->res.error, sizeof t->res.error, "cancelled: the curl loop is shutting down");
  finish(l, t);
}

/* Its owner asked to stop it: what had arrived is dropped (libcurl has already
 * closed the connection, or reset the stream of a multiplexed one). */
static void finish_aborted(curlloop *l, transfer *t) {
  curl_off_t us = 0;
  if (curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &us) == CURLE_OK)
    t->res.total_ms = (double)us / 1000.0;
  t->res.aborted = true;
  t->res.code = CURLE_ABORTED_BY_CALLBACK;
  t->res.http_status = 0;
  t->res.body_truncated = false;
  t->res.sink_refused = false;
  buf_free(&t->res.body);
  forget_headers(&t->res);
  snprintf(t->res.error, sizeof t->res.error, "aborted: cancelled by its owner");
  finish(l, t);
}

/* --- the loop thread --- */

static void start_transfer(curlloop *l, transfer *t) {
  if (l->share) curl_easy_setopt(t->easy, CURLOPT_SHARE, l->share);
  CURLMcode mc = curl_multi_add_handle(l->multi, t->easy);
  if (mc != CURLM_OK) {
    snprintf(t->res.error, sizeof t->res.error, "cannot start the transfer: %s",
             curl_multi_strerror(mc));
    t->res.code = CURLE_FAILED_INIT;
    finish(l, t);
    return;
  }
  active_link(l, t);
}

/* A transfer the table does not know has ended already (or never started):
 * its callback ran, so the request comes too late and is dropped. */
static void cancel_transfer(curlloop *l, curlloop_transfer_id id) {
  transfer *t = id_find(l, id);
  if (!t) return;
  active_unlink(l, t);
  curl_multi_remove_handle(l->multi, t->easy);
  finish_aborted(l, t);
}

/* Both queues are taken in one critical section: a cancel requested after
 * its submit is then always applied after that transfer has started, never
 * looked up (and lost) before it is in the table. */
static void drain_queues(curlloop *l) {
  pthread_mutex_lock(&l->mu);
  transfer *t = l->queue_head;
  l->queue_head = l->queue_tail = NULL;
  curlloop_transfer_id *cancels = l->cancels;
  size_t n_cancels = l->n_cancels;
  l->cancels = NULL;
  l->n_cancels = l->cap_cancels = 0;
  pthread_mutex_unlock(&l->mu);
  while (t) {
    transfer *next = t->next;
    t->next = NULL;
    start_transfer(l, t);
    t = next;
  }
  for (size_t i = 0; i < n_cancels; i++) cancel_transfer(l, cancels[i]);
  free(cancels);
}

static void reap_done(curlloop *l) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(l->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    /* m is invalid once the handle leaves the multi: copy what is needed. */
    CURL *e = m->easy_handle;
    CURLcode code = m->data.result;
    char *priv = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
    transfer *t = (transfer *)priv;
    curl_multi_remove_handle(l->multi, e);
    if (!t) continue;
    active_unlink(l, t);
    fill_outcome(t, code);
    finish(l, t);
  }
}

/* libcurl: start, change or stop watching socket s. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
  (void)easy, (void)socketp;
  curlloop *l = userp;
  if (what == CURL_POLL_REMOVE) {
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, s, NULL); /* ENOENT/EBADF: closed already, fine */
    return 0;
  }
  struct epoll_event ev = {.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) |
                                     ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u),
                           .data.fd = s};
  if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, s, &ev) == 0) return 0;
  if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, s, &ev) == 0) return 0;
  LOG_ERROR("curlloop_epoll_ctl_failed", "fd=%d", (int)s);
  return -1;
}

/* libcurl: its next timeout is timeout_ms from now (-1: none). */
static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  curlloop *l = userp;
  l->timer_due_ms = timeout_ms < 0 ? -1 : time_mono_ms() + timeout_ms;
  return 0;
}

static int wait_ms(const curlloop *l) {
  if (l->timer_due_ms < 0) return CURLLOOP_POLL_MS;
  int64_t left = l->timer_due_ms - time_mono_ms();
  if (left <= 0) return 0;
  return left < CURLLOOP_POLL_MS ? (int)left : CURLLOOP_POLL_MS;
}

static void *loop_main(void *arg) {
  curlloop *l = arg;
  struct epoll_event evs[CURLLOOP_EVENTS];
  while (!atomic_load(&l->stop)) {
    drain_queues(l);
    int n = epoll_wait(l->epfd, evs, CURLLOOP_EVENTS, wait_ms(l));
    if (atomic_load(&l->stop)) break;
    int running = 0;
    for (int i = 0; i < n; i++) {
      if (evs[i].data.fd == l->wakefd) {
        uint64_t count;
        if (read(l->wakefd, &count, sizeof count) < 0) { /* EAGAIN: already drained */ }
        continue;
      }
      int flags = ((evs[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                  ((evs[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                  ((evs[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
      CURLMcode mc = curl_multi_socket_action(l->multi, evs[i].data.fd, flags, &running);
      if (mc != CURLM_OK) LOG_ERROR("curlloop_socket_action_failed", "err=%d", (int)mc);
    }
    if (l->timer_due_ms >= 0 && l->timer_due_ms <= time_mono_ms()) {
      l->timer_due_ms = -1; /* libcurl sets the next one from inside the call */
      CURLMcode mc = curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
      if (mc != CURLM_OK) LOG_ERROR("curlloop_timeout_action_failed", "err=%d", (int)mc);
    }
    reap_done(l);
  }
  return NULL;
}

/* --- life cycle --- */

static bool configure_multi(curlloop *l, const curlloop_config *cfg) {
  return curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_socket) == CURLM_OK &&
         curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l) == CURLM_OK &&
         curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, on_timer) == CURLM_OK &&
         curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, l) == CURLM_OK &&
         curl_multi_setopt(l->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, cfg->max_total_connections) ==
             CURLM_OK &&
         curl_multi_setopt(l->multi, CURLMOPT_MAX_HOST_CONNECTIONS, cfg->max_host_connections) ==
             CURLM_OK &&
         curl_multi_setopt(l->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) == CURLM_OK &&
         (cfg->max_connects <= 0 ||
          curl_multi_setopt(l->multi, CURLMOPT_MAXCONNECTS, cfg->max_connects) == CURLM_OK);
}

/* TLS session resumption across transfers to the same host. The multi handle
 * already shares its DNS cache and connection pool among its transfers; TLS
 * sessions are per easy handle unless shared. Optional: without it, only
 * resumption is lost. */
static CURLSH *make_share(void) {
  CURLSH *sh = curl_share_init();
  if (!sh) return NULL;
  if (curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
    curl_share_cleanup(sh);
    return NULL;
  }
  return sh;
}

/* Signals go to the other threads: blocking them here also turns a SIGPIPE
 * from a write on a dead TLS connection into a plain EPIPE. */
static int start_thread(curlloop *l) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(&l->thread, NULL, loop_main, l);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc == 0) pthread_setname_np(l->thread, "curlloop");
  return rc;
}

static void free_loop(curlloop *l) {
  if (l->multi) curl_multi_cleanup(l->multi);
  if (l->epfd >= 0) close(l->epfd);
  if (l->wakefd >= 0) close(l->wakefd);
  if (l->share) curl_share_cleanup(l->share);
  free(l->by_id);
  free(l->cancels);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

curlloop *curlloop_create(const curlloop_config *cfg) {
  pthread_once(&curlloop_once, curlloop_global_init);
  if (curlloop_init_code != CURLE_OK) {
    LOG_ERROR("curlloop_global_init_failed", "err=%d", (int)curlloop_init_code);
    return NULL;
  }
  curlloop_config none = {0};
  if (!cfg) cfg = &none;
  curlloop *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  if (pthread_mutex_init(&l->mu, NULL) != 0) {
    free(l);
    return NULL;
  }
  atomic_init(&l->stop, false);
  atomic_init(&l->in_flight, 0);
  l->connect_timeout_ms =
      cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : CURLLOOP_DEFAULT_CONNECT_MS;
  l->timer_due_ms = -1;
  l->id_buckets = CURLLOOP_ID_BUCKETS;
  l->by_id = calloc(l->id_buckets, sizeof *l->by_id);
  l->epfd = epoll_create1(EPOLL_CLOEXEC);
  l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct epoll_event wake_ev = {.events = EPOLLIN, .data.fd = l->wakefd};
  if (!l->by_id || l->epfd < 0 || l->wakefd < 0 ||
      epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &wake_ev) != 0) {
    free_loop(l);
    return NULL;
  }
  l->multi = curl_multi_init();
  if (!l->multi || !configure_multi(l, cfg)) {
    free_loop(l);
    return NULL;
  }
  l->share = make_share();
  if (!l->share) LOG_WARN("curlloop_no_tls_session_sharing", NULL);
  if (start_thread(l) != 0) {
    free_loop(l);
    return NULL;
  }
  return l;
}

void curlloop_destroy(curlloop *l) {
  if (!l) return;
  pthread_mutex_lock(&l->mu);
  l->stopping = true;
  atomic_store(&l->stop, true);
  wake(l);
  pthread_mutex_unlock(&l->mu);
  pthread_join(l->thread, NULL);

  /* From here this thread owns everything. stopping stays set, so a callback
   * that submits again is refused instead of queueing work nobody runs. */
  while (l->active) {
    transfer *t = l->active;
    active_unlink(l, t);
    curl_multi_remove_handle(l->multi, t->easy);
    finish_cancelled(l, t);
  }
  pthread_mutex_lock(&l->mu);
  transfer *q = l->queue_head;
  l->queue_head = l->queue_tail = NULL;
  pthread_mutex_unlock(&l->mu);
  while (q) {
    transfer *next = q->next;
    q->next = NULL;
    finish_cancelled(l, q);
    q = next;
  }
  free_loop(l);
}
