/* peer_testutil.h - raw local peers for the tests that talk to real sockets
 * (test_curlloop.c, test_fetch.c): a listener on 127.0.0.1 that plays one
 * canned answer to every connection or accepts and never answers, a port
 * nothing listens on, and a bounded wait on a counter under a condition
 * variable. Static inline functions, so a test may use only some of them. */
#ifndef IMGATE_PEER_TESTUTIL_H
#define IMGATE_PEER_TESTUTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The longest any test waits for something that should come at once. */
#define WAIT_LIMIT_MS 30000

static inline struct timespec deadline_in(int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

/* Waits (at most WAIT_LIMIT_MS) until *count, guarded by mu and signalled
 * on cv, reaches n. */
static inline bool wait_count(pthread_mutex_t *mu, pthread_cond_t *cv, const int *count,
                              int n) {
  struct timespec until = deadline_in(WAIT_LIMIT_MS);
  pthread_mutex_lock(mu);
  int rc = 0;
  while (*count < n && rc == 0) rc = pthread_cond_timedwait(cv, mu, &until);
  bool ok = *count >= n;
  pthread_mutex_unlock(mu);
  return ok;
}

/* A listening socket on 127.0.0.1 at a free port; -1 on failure. */
static inline int listen_local(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 512) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

/* A port nothing listens on: bound, read, released. */
static inline int closed_port(void) {
  int port = 0;
  int fd = listen_local(&port);
  if (fd < 0) return -1;
  close(fd);
  return port;
}

/* ---- a raw peer: a canned answer to every connection, or silence ---- */

typedef struct raw_peer {
  int lfd;
  int port;
  int stop_pipe[2];
  pthread_t thread;
  const char *reply; /* NULL: accept and never answer */
  size_t reply_len;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int accepted;
  int held[256]; /* silent connections, kept open until raw_stop */
  int n_held;
} raw_peer;

/* Reads the request head (bounded, with a time limit) so the client sees a
 * normal exchange rather than a reset. */
static inline void raw_read_head(int fd) {
  char head[4096];
  size_t have = 0;
  while (have < sizeof head - 1) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0) return;
    ssize_t n = read(fd, head + have, sizeof head - 1 - have);
    if (n <= 0) return;
    have += (size_t)n;
    head[have] = '\0';
    if (strstr(head, "\r\n\r\n")) return;
  }
}

static inline void raw_answer(raw_peer *p, int fd) {
  raw_read_head(fd);
  size_t off = 0;
  while (off < p->reply_len) {
    ssize_t n = send(fd, p->reply + off, p->reply_len - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += (size_t)n;
  }
  shutdown(fd, SHUT_WR);
  close(fd);
}

static inline void *raw_main(void *arg) {
  raw_peer *p = arg;
  for (;;) {
    struct pollfd fds[2] = {{p->lfd, POLLIN, 0}, {p->stop_pipe[0], POLLIN, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
    if (fds[1].revents) break;
    if (!(fds[0].revents & POLLIN)) continue;
    int fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) continue;
    if (p->reply) raw_answer(p, fd);
    pthread_mutex_lock(&p->mu);
    if (!p->reply && p->n_held < (int)(sizeof p->held / sizeof p->held[0]))
      p->held[p->n_held++] = fd;
    else if (!p->reply)
      close(fd);
    p->accepted++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
  }
  return NULL;
}

/* Starts a peer that sends reply (reply_len bytes) to every connection, or
 * with reply NULL accepts and never answers. */
static inline bool raw_start(raw_peer *p, const char *reply, size_t reply_len) {
  memset(p, 0, sizeof *p);
  p->reply = reply;
  p->reply_len = reply_len;
  p->lfd = listen_local(&p->port);
  if (p->lfd < 0 || pipe2(p->stop_pipe, O_CLOEXEC) != 0) return false;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  return pthread_create(&p->thread, NULL, raw_main, p) == 0;
}

static inline void raw_stop(raw_peer *p) {
  if (write(p->stop_pipe[1], "x", 1) != 1) return;
  pthread_join(p->thread, NULL);
  for (int i = 0; i < p->n_held; i++) close(p->held[i]);
  close(p->lfd);
  close(p->stop_pipe[0]);
  close(p->stop_pipe[1]);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

/* Connections the peer has accepted so far. */
static inline int raw_accepted(raw_peer *p) {
  pthread_mutex_lock(&p->mu);
  int n = p->accepted;
  pthread_mutex_unlock(&p->mu);
  return n;
}

/* Waits until the peer has accepted n connections in total. */
static inline bool raw_wait_accepted(raw_peer *p, int n) {
  return wait_count(&p->mu, &p->cv, &p->accepted, n);
}

#endif
