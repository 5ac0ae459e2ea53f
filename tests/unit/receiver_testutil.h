/* receiver_testutil.h - a small webhook receiver on 127.0.0.1 for the unit
 * tests: HTTP/1.1 with keep-alive, one thread, answering each path by a
 * script (a status per hit, the last one repeating), or never (silent), or
 * when the test says so (held). It records every request (path, the three
 * webhook headers, the body, the connection it came on) and counts the
 * connections it accepted and the most requests it had unanswered at once.
 * Only what the tests send is parsed: a head, a Content-Length body. */
#ifndef IMGATE_RECEIVER_TESTUTIL_H
#define IMGATE_RECEIVER_TESTUTIL_H

#include <ctype.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "peer_testutil.h"

static inline int64_t rx_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define RX_SILENT 0 /* script entry: read the request, never answer */
#define RX_HOLD -1  /* script entry: answer 200 at rx_release */
#define RX_LATE(ms) (100000 + (ms)) /* script entry: answer 200 after ms */
#define RX_MAX_CONNS 256
#define RX_MAX_REQUESTS 4096
#define RX_MAX_ROUTES 16
#define RX_MAX_SCRIPT 16

typedef struct rx_request {
  char path[64];
  char id[64];
  char timestamp[32];
  char signature[160];
  char *body; /* NUL-terminated, malloc'd */
  size_t body_len;
  int conn;   /* which accepted connection (1, 2, ...) */
} rx_request;

typedef struct rx_route {
  char path[64];
  int script[RX_MAX_SCRIPT];
  int n_script;
  int hits;
} rx_route;

typedef struct rx_conn {
  int fd; /* -1: free slot */
  int no;
  char *in;
  size_t len, cap;
  int unanswered; /* requests read and not answered on this connection */
  bool stuck;     /* a silent request: nothing more is read or answered */
  int64_t answer_at; /* a late answer is due then (monotonic ms); 0: none */
} rx_conn;

typedef struct receiver {
  int lfd, port;
  int wake[2];
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop;
  bool release; /* answer held requests */
  rx_route routes[RX_MAX_ROUTES];
  int n_routes;
  rx_conn conns[RX_MAX_CONNS];
  int accepted;
  int outstanding, peak_outstanding;
  rx_request reqs[RX_MAX_REQUESTS];
  int n_reqs;
} receiver;

static inline void rx_wake(receiver *r) {
  if (write(r->wake[1], "x", 1) != 1) { /* the pipe is full: a wake is pending */ }
}

/* Sets (or replaces) the script of path: statuses per hit, the last repeats. */
static inline void rx_script(receiver *r, const char *path, const int *script, int n) {
  pthread_mutex_lock(&r->mu);
  rx_route *rt = NULL;
  for (int i = 0; i < r->n_routes; i++)
    if (strcmp(r->routes[i].path, path) == 0) rt = &r->routes[i];
  if (!rt && r->n_routes < RX_MAX_ROUTES) rt = &r->routes[r->n_routes++];
  if (rt) {
    memset(rt, 0, sizeof *rt);
    snprintf(rt->path, sizeof rt->path, "%s", path);
    rt->n_script = n < RX_MAX_SCRIPT ? n : RX_MAX_SCRIPT;
    memcpy(rt->script, script, (size_t)rt->n_script * sizeof *script);
  }
  pthread_mutex_unlock(&r->mu);
}

/* Under mu: the answer to the next hit of path (404 for an unknown path). */
static inline int rx_next_status(receiver *r, const char *path) {
  for (int i = 0; i < r->n_routes; i++) {
    rx_route *rt = &r->routes[i];
    if (strcmp(rt->path, path) != 0) continue;
    int k = rt->hits < rt->n_script ? rt->hits : rt->n_script - 1;
    rt->hits++;
    return rt->script[k];
  }
  return 404;
}

static inline void rx_send_status(int fd, int status) {
  char head[128];
  int n = status == 204 ? snprintf(head, sizeof head, "HTTP/1.1 204 No Content\r\n\r\n")
                        : snprintf(head, sizeof head,
                                   "HTTP/1.1 %d Status\r\nContent-Length: 2\r\n\r\nok", status);
  size_t off = 0;
  while (off < (size_t)n) {
    ssize_t w = send(fd, head + off, (size_t)n - off, MSG_NOSIGNAL);
    if (w <= 0) return;
    off += (size_t)w;
  }
}

static inline void rx_header(const char *head, const char *name, char *out, size_t size) {
  out[0] = '\0';
  size_t nl = strlen(name);
  for (const char *p = strstr(head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
    const char *line = p + 2;
    if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
      const char *v = line + nl + 1;
      while (*v == ' ') v++;
      const char *e = strstr(v, "\r\n");
      size_t len = e ? (size_t)(e - v) : strlen(v);
      if (len >= size) len = size - 1;
      memcpy(out, v, len);
      out[len] = '\0';
      return;
    }
  }
}

static inline void rx_close(receiver *r, rx_conn *c) {
  pthread_mutex_lock(&r->mu);
  r->outstanding -= c->unanswered;
  pthread_mutex_unlock(&r->mu);
  close(c->fd);
  free(c->in);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

/* Handles every complete request in c's buffer. */
static inline void rx_serve(receiver *r, rx_conn *c) {
  while (!c->stuck && c->unanswered == 0) {
    char *end = c->len ? memmem(c->in, c->len, "\r\n\r\n", 4) : NULL;
    if (!end) return;
    size_t head_len = (size_t)(end - c->in) + 4;
    char *head = strndup(c->in, head_len);
    if (!head) return;
    char cl[32];
    rx_header(head, "content-length", cl, sizeof cl);
    size_t body_len = (size_t)strtoul(cl, NULL, 10);
    if (c->len < head_len + body_len) {
      free(head);
      return;
    }
    rx_request q;
    memset(&q, 0, sizeof q);
    const char *sp = strchr(head, ' ');
    if (sp) sscanf(sp + 1, "%63s", q.path);
    rx_header(head, "webhook-id", q.id, sizeof q.id);
    rx_header(head, "webhook-timestamp", q.timestamp, sizeof q.timestamp);
    rx_header(head, "webhook-signature", q.signature, sizeof q.signature);
    free(head);
    q.body = malloc(body_len + 1);
    if (q.body) {
      memcpy(q.body, c->in + head_len, body_len);
      q.body[body_len] = '\0';
      q.body_len = body_len;
    }
    q.conn = c->no;
    memmove(c->in, c->in + head_len + body_len, c->len - head_len - body_len);
    c->len -= head_len + body_len;
    pthread_mutex_lock(&r->mu);
    int status = rx_next_status(r, q.path);
    if (r->n_reqs < RX_MAX_REQUESTS) r->reqs[r->n_reqs++] = q;
    else free(q.body);
    r->outstanding++;
    if (r->outstanding > r->peak_outstanding) r->peak_outstanding = r->outstanding;
    bool now = status > 0 && status < RX_LATE(0);
    if (now) r->outstanding--;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    c->unanswered = now ? 0 : 1;
    if (now) rx_send_status(c->fd, status);
    else if (status == RX_SILENT) c->stuck = true;
    else if (status >= RX_LATE(0)) c->answer_at = rx_mono_ms() + (status - RX_LATE(0));
  }
}

static inline void rx_read(receiver *r, rx_conn *c) {
  if (c->cap - c->len < 4096) {
    size_t cap = c->cap ? c->cap * 2 : 16384;
    char *grown = realloc(c->in, cap);
    if (!grown) {
      rx_close(r, c);
      return;
    }
    c->in = grown;
    c->cap = cap;
  }
  ssize_t n = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
  if (n <= 0) {
    rx_close(r, c);
    return;
  }
  c->len += (size_t)n;
  rx_serve(r, c);
}

/* Answers the held requests (release) and the late ones now due; returns the
 * poll timeout until the next late one (-1: none). */
static inline int rx_answer_held(receiver *r, bool release) {
  int timeout = -1;
  int64_t now = rx_mono_ms();
  for (int i = 0; i < RX_MAX_CONNS; i++) {
    rx_conn *c = &r->conns[i];
    if (c->fd < 0 || c->stuck || !c->unanswered) continue;
    if (c->answer_at && c->answer_at > now) {
      int left = (int)(c->answer_at - now);
      if (timeout < 0 || left < timeout) timeout = left;
      continue;
    }
    if (!c->answer_at && !release) continue;
    c->answer_at = 0;
    rx_send_status(c->fd, 200);
    c->unanswered = 0;
    pthread_mutex_lock(&r->mu);
    r->outstanding--;
    pthread_mutex_unlock(&r->mu);
    rx_serve(r, c);
  }
  return timeout;
}

static inline void *rx_main(void *arg) {
  receiver *r = arg;
  struct pollfd fds[RX_MAX_CONNS + 2];
  int idx[RX_MAX_CONNS + 2];
  for (;;) {
    pthread_mutex_lock(&r->mu);
    bool stop = r->stop, release = r->release;
    pthread_mutex_unlock(&r->mu);
    if (stop) break;
    int timeout = rx_answer_held(r, release);
    int n = 0;
    fds[n++] = (struct pollfd){r->wake[0], POLLIN, 0};
    fds[n++] = (struct pollfd){r->lfd, POLLIN, 0};
    for (int i = 0; i < RX_MAX_CONNS; i++) {
      if (r->conns[i].fd < 0) continue;
      idx[n] = i;
      fds[n++] = (struct pollfd){r->conns[i].fd, POLLIN, 0};
    }
    if (poll(fds, (nfds_t)n, timeout) <= 0) continue;
    if (fds[0].revents) {
      char buf[64];
      if (read(r->wake[0], buf, sizeof buf) < 0) { /* drained already */ }
    }
    if (fds[1].revents & POLLIN) {
      int fd = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
      int slot = -1;
      for (int i = 0; fd >= 0 && i < RX_MAX_CONNS && slot < 0; i++)
        if (r->conns[i].fd < 0) slot = i;
      if (slot < 0) {
        if (fd >= 0) close(fd);
      } else {
        pthread_mutex_lock(&r->mu);
        r->conns[slot].fd = fd;
        r->conns[slot].no = ++r->accepted;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
      }
    }
    for (int k = 2; k < n; k++)
      if (fds[k].revents && r->conns[idx[k]].fd == fds[k].fd) rx_read(r, &r->conns[idx[k]]);
  }
  return NULL;
}

static inline bool rx_start(receiver *r) {
  memset(r, 0, sizeof *r);
  for (int i = 0; i < RX_MAX_CONNS; i++) r->conns[i].fd = -1;
  r->lfd = listen_local(&r->port);
  if (r->lfd < 0 || pipe2(r->wake, O_CLOEXEC | O_NONBLOCK) != 0) return false;
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  return pthread_create(&r->thread, NULL, rx_main, r) == 0;
}

static inline void rx_stop(receiver *r) {
  pthread_mutex_lock(&r->mu);
  r->stop = true;
  pthread_mutex_unlock(&r->mu);
  rx_wake(r);
  pthread_join(r->thread, NULL);
  for (int i = 0; i < RX_MAX_CONNS; i++)
    if (r->conns[i].fd >= 0) rx_close(r, &r->conns[i]);
  for (int i = 0; i < r->n_reqs; i++) free(r->reqs[i].body);
  close(r->lfd);
  close(r->wake[0]);
  close(r->wake[1]);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
}

/* Held requests are answered 200 from now on (and new ones too). */
static inline void rx_release(receiver *r) {
  pthread_mutex_lock(&r->mu);
  r->release = true;
  pthread_mutex_unlock(&r->mu);
  rx_wake(r);
}

static inline int rx_count(receiver *r) {
  pthread_mutex_lock(&r->mu);
  int n = r->n_reqs;
  pthread_mutex_unlock(&r->mu);
  return n;
}

/* Waits (at most WAIT_LIMIT_MS) until n requests have come. */
static inline bool rx_wait_requests(receiver *r, int n) {
  return wait_count(&r->mu, &r->cv, &r->n_reqs, n);
}

/* Waits until n requests are unanswered at once. */
static inline bool rx_wait_outstanding(receiver *r, int n) {
  return wait_count(&r->mu, &r->cv, &r->outstanding, n);
}

/* A copy of request i (body included: free it). */
static inline rx_request rx_get(receiver *r, int i) {
  pthread_mutex_lock(&r->mu);
  rx_request q = r->reqs[i];
  q.body = q.body ? strdup(q.body) : NULL;
  pthread_mutex_unlock(&r->mu);
  return q;
}

static inline int rx_accepted(receiver *r) {
  pthread_mutex_lock(&r->mu);
  int n = r->accepted;
  pthread_mutex_unlock(&r->mu);
  return n;
}

static inline int rx_peak(receiver *r) {
  pthread_mutex_lock(&r->mu);
  int n = r->peak_outstanding;
  pthread_mutex_unlock(&r->mu);
  return n;
}

#endif
