/* sse_driver.c - many clients of GET /api/banana/{uid}/events at once, one
 * epoll thread, driven by bench/sse. Not installed.
 *
 *   sse_driver --port P --key KEY --n N [--rate R] [--window W]
 *              [--model M] [--resolution RES] [--expect STATUS]
 *              [--out FILE] [--timeout-s S]
 *
 * Each of the N clients opens its own connection to 127.0.0.1:P, submits a
 * task (POST /api/banana/create-async), then asks for its events on the same
 * connection and reads the stream until it ends. New clients start at R per
 * second (0: as fast as the server answers), at most W submitting at a time.
 *
 * Every stream is checked as it is read (HTTP parsed by llhttp, the SSE
 * lines here): 200 and text/event-stream; the stored events come in order
 * with ids 1, 2, 3, ... (task.queued first), each one's data naming the
 * stream's task; progress events carry the id of the last stored event and
 * count up ("3-p1", "3-p2"); the last stored event is the final one, its
 * status STATUS (default succeeded, with result_urls), and the stream then
 * ends (the chunked body's last chunk) with nothing after it. A stream cut
 * before that, or anything else, fails it with a reason.
 *
 * On SIGUSR2 the driver cancels every task whose stream has not ended
 * (POST /api/banana/{uid}/cancel on a connection of its own, at --rate, at
 * most --window at once; each must answer 200): with --expect canceled,
 * that is how streams on tasks that stay queued are brought to their end.
 *
 * Output, on stdout, one JSON object a line:
 *   {"phase":"all_open",...}  once every stream has had its first event;
 *   {"phase":"counters",...}  on each SIGUSR1 (what was received so far:
 *                             bench/sse brackets its idle window with it);
 *   {"phase":"cancelling",...} when SIGUSR2 came;
 *   {"phase":"done",...}      at the end: the counts, failures by reason.
 * --out FILE gets a line per stream: index, uid, final status, the
 * CLOCK_REALTIME microseconds at which the final event's last byte was read,
 * its finished_at (unix ms), progress events and keep-alives seen, and "ok"
 * or the reason it failed.
 *
 * Connects to 127.0.0.1 only. Exit status 0 when every stream passed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <llhttp.h>

typedef struct options {
  int port;
  const char *key, *model, *resolution, *expect, *out;
  long n, rate, window, timeout_s;
} options;

typedef enum {
  ST_WAITING,    /* not started yet */
  ST_CONNECTING, /* connect() under way, then the POST going out */
  ST_SUBMITTED,  /* the POST sent, its answer being read */
  ST_STREAMING,  /* the GET sent, its stream being read */
  ST_DONE,
  ST_FAILED,
} stream_state;

/* What an epoll registration points at: a stream's connection or its
 * cancel's (both structs begin with their kind). */
typedef enum { KIND_STREAM = 1, KIND_CANCEL } conn_kind;

struct stream;

/* POST /api/banana/{uid}/cancel on a connection of its own. */
typedef struct canceller {
  conn_kind kind; /* KIND_CANCEL */
  struct stream *owner;
  int fd;
  bool connecting, complete;
  int status;
  llhttp_t parser;
  char out[512];
  size_t out_len, out_off;
} canceller;

typedef struct stream {
  conn_kind kind; /* KIND_STREAM */
  long index;
  int fd;
  stream_state state;
  llhttp_t parser;
  /* the response being read */
  int status;
  char header_name[64];
  size_t header_name_len;
  bool header_is_ctype, value_started;
  char ctype[64];
  size_t ctype_len;
  char *body; /* the POST answer's body */
  size_t body_len;
  /* the request going out */
  char out[768];
  size_t out_len, out_off;
  /* the SSE stream */
  char uid[64];
  char line[8192];
  size_t line_len;
  bool line_too_long;
  char ev_id[48], ev_name[48];
  char *data;
  size_t data_len;
  bool ev_has_field;
  int last_seq, progress_n;
  long n_progress, n_keepalive;
  bool seen_first, got_final, ended;
  char final_status[16];
  int64_t final_rx_us, finished_at_ms;
  const char *error; /* why it failed (static text) */
  bool cancel_asked;
  canceller cancel;
} stream;

/* Run-wide figures. */
static struct {
  long started, pending, open, done, failed, finals; /* pending: started, no event yet */
  long cancels_sent, cancels_ok, cancels_pending;
  long progress, keepalives, comments, bytes;
  int64_t t0_ms;
  int64_t rx_us; /* CLOCK_REALTIME of the read being parsed */
} g;

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t real_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* "2026-12-03T11:41:53.540Z" -> unix ms; -1 when it is not that shape. */
static int64_t parse_iso_ms(const char *s) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  int ms = 0;
  if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
    return -1;
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return (int64_t)timegm(&tm) * 1000 + ms;
}

/* Fails the stream with its first reason; the caller closes it. */
static int fail(stream *s, const char *why) {
  if (!s->error) s->error = why;
  return -1;
}

/* --- the SSE side ------------------------------------------------------- */

static bool is_stored_kind(const char *name) {
  static const char *const kinds[] = {"task.queued",    "task.running", "task.attempt",
                                      "task.succeeded", "task.failed",  "task.moderated",
                                      "task.canceled",  NULL};
  for (const char *const *k = kinds; *k; k++)
    if (!strcmp(name, *k)) return true;
  return false;
}

static bool is_final_kind(const char *name) {
  return !strcmp(name, "task.succeeded") || !strcmp(name, "task.failed") ||
         !strcmp(name, "task.moderated") || !strcmp(name, "task.canceled");
}

/* Checks a final event's data: the whole task. */
static int check_final(stream *s, json_t *d, const options *o) {
  const char *status = json_string_value(json_object_get(d, "status"));
  snprintf(s->final_status, sizeof s->final_status, "%s", status ? status : "?");
  if (!status || strcmp(s->ev_name + 5, status) != 0) return fail(s, "final_status_mismatch");
  if (strcmp(status, o->expect) != 0) return fail(s, "unexpected_final_status");
  if (!strcmp(status, "succeeded")) {
    json_t *urls = json_object_get(d, "result_urls");
    if (!json_is_array(urls) || json_array_size(urls) == 0) return fail(s, "no_result_urls");
  }
  s->finished_at_ms = parse_iso_ms(json_string_value(json_object_get(d, "finished_at")));
  if (s->finished_at_ms < 0) return fail(s, "no_finished_at");
  return 0;
}

static int dispatch_event(stream *s, const options *o) {
  json_t *d = json_loadb(s->data ? s->data : "", s->data_len, 0, NULL);
  int rc = 0;
  const char *uid = json_string_value(json_object_get(d, "uid"));
  if (s->got_final) {
    rc = fail(s, "event_after_final");
  } else if (!d || !json_is_object(d)) {
    rc = fail(s, "data_not_json");
  } else if (!uid || strcmp(uid, s->uid) != 0) {
    rc = fail(s, "wrong_uid");
  } else if (!strcmp(s->ev_name, "task.progress")) {
    char want[48];
    snprintf(want, sizeof want, "%d-p%d", s->last_seq, s->progress_n + 1);
    json_t *p = json_object_get(d, "progress");
    if (strcmp(s->ev_id, want) != 0) rc = fail(s, "bad_progress_id");
    else if (!json_is_integer(p) || json_integer_value(p) < 0 || json_integer_value(p) > 100)
      rc = fail(s, "bad_progress_value");
    s->progress_n++;
    s->n_progress++;
    g.progress++;
  } else if (is_stored_kind(s->ev_name)) {
    char *end = NULL;
    long seq = strtol(s->ev_id, &end, 10);
    if (!*s->ev_id || *end || seq != s->last_seq + 1) {
      rc = fail(s, "stored_event_out_of_order");
    } else if (seq == 1 && strcmp(s->ev_name, "task.queued") != 0) {
      rc = fail(s, "first_event_not_queued");
    } else {
      s->last_seq = (int)seq;
      s->progress_n = 0;
      if (!s->seen_first) {
        s->seen_first = true;
        g.open++;
        g.pending--;
      }
      if (is_final_kind(s->ev_name)) {
        s->got_final = true;
        s->final_rx_us = g.rx_us;
        g.finals++;
        rc = check_final(s, d, o);
      } else {
        json_t *jseq = json_object_get(d, "seq");
        if (!json_is_integer(jseq) || json_integer_value(jseq) != seq) rc = fail(s, "bad_seq");
      }
    }
  } else {
    rc = fail(s, "unknown_event");
  }
  json_decref(d);
  return rc;
}

/* One line of the stream, without its line ending. */
static int sse_line(stream *s, const char *line, size_t len, const options *o) {
  if (len == 0) { /* the blank line: an event is complete */
    int rc = 0;
    if (s->ev_has_field && s->ev_name[0]) rc = dispatch_event(s, o);
    s->ev_id[0] = s->ev_name[0] = '\0';
    s->data_len = 0;
    s->ev_has_field = false;
    return rc;
  }
  if (line[0] == ':') {
    g.comments++;
    if (len == 12 && !memcmp(line, ": keep-alive", 12)) {
      s->n_keepalive++;
      g.keepalives++;
    }
    return 0;
  }
  const char *colon = memchr(line, ':', len);
  size_t nlen = colon ? (size_t)(colon - line) : len;
  const char *v = colon ? colon + 1 : line + len;
  if (v < line + len && *v == ' ') v++;
  size_t vlen = (size_t)(line + len - v);
  if (nlen == 2 && !memcmp(line, "id", 2)) {
    snprintf(s->ev_id, sizeof s->ev_id, "%.*s", (int)vlen, v);
  } else if (nlen == 5 && !memcmp(line, "event", 5)) {
    snprintf(s->ev_name, sizeof s->ev_name, "%.*s", (int)vlen, v);
  } else if (nlen == 4 && !memcmp(line, "data", 4)) {
    char *grown = realloc(s->data, s->data_len + vlen + 2);
    if (!grown) return fail(s, "out_of_memory");
    s->data = grown;
    if (s->data_len) s->data[s->data_len++] = '\n';
    memcpy(s->data + s->data_len, v, vlen);
    s->data_len += vlen;
  } else if (nlen == 5 && !memcmp(line, "retry", 5)) {
    return 0; /* not an event field */
  } else {
    return fail(s, "unknown_sse_field");
  }
  s->ev_has_field = true;
  return 0;
}

static int sse_bytes(stream *s, const char *at, size_t len, const options *o) {
  for (size_t i = 0; i < len; i++) {
    char ch = at[i];
    if (ch == '\n') {
      size_t l = s->line_len;
      if (l && s->line[l - 1] == '\r') l--;
      if (s->line_too_long) return fail(s, "sse_line_too_long");
      if (sse_line(s, s->line, l, o) < 0) return -1;
      s->line_len = 0;
    } else if (s->line_len < sizeof s->line) {
      s->line[s->line_len++] = ch;
    } else {
      s->line_too_long = true;
    }
  }
  return 0;
}

/* --- the HTTP side (llhttp callbacks) ----------------------------------- */

static const options *g_opts;

static int on_message_begin(llhttp_t *p) {
  stream *s = p->data;
  s->header_name_len = 0;
  s->ctype_len = 0;
  s->value_started = false;
  s->body_len = 0;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  stream *s = p->data;
  if (s->value_started) { /* a new field begins */
    s->header_name_len = 0;
    s->value_started = false;
  }
  size_t room = sizeof s->header_name - 1 - s->header_name_len;
  size_t take = len < room ? len : room;
  memcpy(s->header_name + s->header_name_len, at, take);
  s->header_name_len += take;
  s->header_name[s->header_name_len] = '\0';
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  stream *s = p->data;
  if (!s->value_started) {
    s->value_started = true;
    s->header_is_ctype = !strcasecmp(s->header_name, "Content-Type");
  }
  if (s->header_is_ctype) {
    size_t room = sizeof s->ctype - 1 - s->ctype_len;
    size_t take = len < room ? len : room;
    memcpy(s->ctype + s->ctype_len, at, take);
    s->ctype_len += take;
    s->ctype[s->ctype_len] = '\0';
  }
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  stream *s = p->data;
  s->status = llhttp_get_status_code(p);
  if (s->status != 200) return fail(s, s->state == ST_STREAMING ? "events_not_200" : "submit_not_200");
  if (s->state == ST_STREAMING && strncmp(s->ctype, "text/event-stream", 17) != 0)
    return fail(s, "not_event_stream");
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  stream *s = p->data;
  if (s->state == ST_STREAMING) return sse_bytes(s, at, len, g_opts);
  char *grown = realloc(s->body, s->body_len + len + 1);
  if (!grown) return fail(s, "out_of_memory");
  s->body = grown;
  memcpy(s->body + s->body_len, at, len);
  s->body_len += len;
  s->body[s->body_len] = '\0';
  return 0;
}

static void queue_events_request(stream *s);

static int on_message_complete(llhttp_t *p) {
  stream *s = p->data;
  if (s->state == ST_SUBMITTED) {
    json_t *b = json_loadb(s->body ? s->body : "", s->body_len, 0, NULL);
    const char *uid = json_string_value(json_object_get(b, "uid"));
    if (uid && strlen(uid) < sizeof s->uid) snprintf(s->uid, sizeof s->uid, "%s", uid);
    json_decref(b);
    free(s->body);
    s->body = NULL;
    s->body_len = 0;
    if (!s->uid[0]) return fail(s, "submit_without_uid");
    queue_events_request(s);
    return 0;
  }
  if (s->state == ST_STREAMING) {
    if (s->line_len || s->ev_has_field) return fail(s, "stream_ended_mid_event");
    if (!s->got_final) return fail(s, "stream_ended_without_final");
    s->ended = true;
    return HPE_PAUSED; /* nothing may follow: stop here and look */
  }
  return fail(s, "unexpected_response");
}

static llhttp_settings_t g_settings;

/* --- connections -------------------------------------------------------- */

static int g_ep;

static void queue_events_request(stream *s) {
  s->out_len = (size_t)snprintf(s->out, sizeof s->out,
                                "GET /api/banana/%s/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Authorization: Bearer %s\r\nAccept: text/event-stream\r\n\r\n",
                                s->uid, g_opts->key);
  s->out_off = 0;
  s->state = ST_STREAMING;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = s};
  epoll_ctl(g_ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static void close_stream(stream *s, bool ok) {
  if (s->fd >= 0) {
    epoll_ctl(g_ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->fd = -1;
  }
  free(s->data);
  s->data = NULL;
  free(s->body);
  s->body = NULL;
  if (s->state != ST_WAITING && !s->seen_first) g.pending--;
  if (ok) {
    s->state = ST_DONE;
    g.done++;
  } else {
    s->state = ST_FAILED;
    g.failed++;
  }
}

static bool start_stream(stream *s, const options *o) {
  s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->fd < 0) {
    fail(s, "socket_failed");
    return false;
  }
  s->state = ST_CONNECTING;
  g.started++;
  g.pending++;
  int one = 1;
  setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
    fail(s, "connect_failed");
    return false;
  }
  char body[256];
  int blen = snprintf(body, sizeof body,
                      "{\"prompt\":\"sse bench %ld\",\"model\":\"%s\",\"resolution\":\"%s\"}",
                      s->index, o->model, o->resolution);
  s->out_len = (size_t)snprintf(s->out, sizeof s->out,
                                "POST /api/banana/create-async HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                                "Content-Length: %d\r\n\r\n%s",
                                o->key, blen, body);
  s->out_off = 0;
  llhttp_init(&s->parser, HTTP_RESPONSE, &g_settings);
  s->parser.data = s;
  s->kind = KIND_STREAM;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = s};
  if (epoll_ctl(g_ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) {
    fail(s, "epoll_failed");
    return false;
  }
  return true;
}

static void on_writable(stream *s) {
  if (s->state == ST_CONNECTING) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) {
      fail(s, "connect_failed");
      close_stream(s, false);
      return;
    }
  }
  while (s->out_off < s->out_len) {
    ssize_t w = send(s->fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
    if (w < 0 && errno == EAGAIN) return;
    if (w <= 0) {
      fail(s, "send_failed");
      close_stream(s, false);
      return;
    }
    s->out_off += (size_t)w;
  }
  if (s->state == ST_CONNECTING) s->state = ST_SUBMITTED;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
  epoll_ctl(g_ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static void on_readable(stream *s) {
  char buf[65536];
  for (;;) {
    ssize_t r = recv(s->fd, buf, sizeof buf, 0);
    if (r < 0 && errno == EAGAIN) return;
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      fail(s, s->state == ST_STREAMING ? "closed_mid_stream" : "closed_before_answer");
      close_stream(s, false);
      return;
    }
    g.rx_us = real_us();
    g.bytes += r;
    llhttp_errno_t e = llhttp_execute(&s->parser, buf, (size_t)r);
    if (e == HPE_PAUSED && s->ended) {
      /* The stream ended; bytes after it in the same read are wrong. */
      const char *pos = llhttp_get_error_pos(&s->parser);
      bool extra = pos && pos < buf + r;
      if (extra) fail(s, "bytes_after_stream_end");
      close_stream(s, !extra);
      return;
    }
    if (e != HPE_OK) {
      fail(s, "http_parse_error");
      close_stream(s, false);
      return;
    }
    if (s->error) {
      close_stream(s, false);
      return;
    }
  }
}

/* --- cancels (after SIGUSR2) ------------------------------------------- */

static int on_cancel_headers(llhttp_t *p) {
  canceller *c = p->data;
  c->status = llhttp_get_status_code(p);
  return 0;
}

static int on_cancel_complete(llhttp_t *p) {
  canceller *c = p->data;
  c->complete = true;
  return HPE_PAUSED;
}

static llhttp_settings_t g_cancel_settings;

static void cancel_close(canceller *c) {
  if (c->fd >= 0) {
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    g.cancels_pending--;
  }
}

/* The cancel's answer decides nothing about the stream's checks but its own:
 * anything other than 200 fails the stream. */
static void cancel_done(canceller *c, const char *why) {
  cancel_close(c);
  if (why) {
    fail(c->owner, why);
    if (c->owner->fd >= 0) close_stream(c->owner, false);
  } else {
    g.cancels_ok++;
  }
}

static void start_cancel(stream *s, const options *o) {
  canceller *c = &s->cancel;
  s->cancel_asked = true;
  c->kind = KIND_CANCEL;
  c->owner = s;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) {
    fail(s, "cancel_socket_failed");
    close_stream(s, false);
    return;
  }
  g.cancels_pending++;
  g.cancels_sent++;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
    cancel_done(c, "cancel_connect_failed");
    return;
  }
  c->out_len = (size_t)snprintf(c->out, sizeof c->out,
                                "POST /api/banana/%s/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                "Authorization: Bearer %s\r\nContent-Length: 0\r\n"
                                "Connection: close\r\n\r\n",
                                s->uid, o->key);
  c->out_off = 0;
  c->connecting = true;
  llhttp_init(&c->parser, HTTP_RESPONSE, &g_cancel_settings);
  c->parser.data = c;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) cancel_done(c, "epoll_failed");
}

static void cancel_io(canceller *c, uint32_t events) {
  if ((events & (EPOLLOUT | EPOLLERR)) && c->out_off < c->out_len) {
    if (c->connecting) {
      int err = 0;
      socklen_t l = sizeof err;
      getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
      if (err) {
        cancel_done(c, "cancel_connect_failed");
        return;
      }
      c->connecting = false;
    }
    while (c->out_off < c->out_len) {
      ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
      if (w < 0 && errno == EAGAIN) return;
      if (w <= 0) {
        cancel_done(c, "cancel_send_failed");
        return;
      }
      c->out_off += (size_t)w;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
  }
  if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  char buf[4096];
  for (;;) {
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    if (r < 0 && errno == EAGAIN) return;
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      cancel_done(c, "cancel_closed_before_answer");
      return;
    }
    llhttp_errno_t e = llhttp_execute(&c->parser, buf, (size_t)r);
    if (c->complete) {
      cancel_done(c, c->status == 200 ? NULL : "cancel_not_200");
      return;
    }
    if (e != HPE_OK) {
      cancel_done(c, "cancel_parse_error");
      return;
    }
  }
}

/* --- reporting ---------------------------------------------------------- */

static void print_counters(const char *phase) {
  printf("{\"phase\":\"%s\",\"t_s\":%.3f,\"started\":%ld,\"open\":%ld,\"finals\":%ld,"
         "\"done\":%ld,\"failed\":%ld,\"progress\":%ld,\"keepalives\":%ld,\"comments\":%ld,"
         "\"bytes\":%ld,\"cancels_sent\":%ld,\"cancels_ok\":%ld}\n",
         phase, (double)(mono_ms() - g.t0_ms) / 1000.0, g.started, g.open, g.finals, g.done,
         g.failed, g.progress, g.keepalives, g.comments, g.bytes, g.cancels_sent, g.cancels_ok);
  fflush(stdout);
}

static void print_done(stream *all, long n) {
  /* failures by reason */
  const char *reasons[64];
  long counts[64];
  int nr = 0;
  for (long i = 0; i < n; i++) {
    if (all[i].state == ST_DONE) continue;
    const char *why = all[i].error ? all[i].error : "timeout";
    int k = 0;
    while (k < nr && strcmp(reasons[k], why) != 0) k++;
    if (k == nr && nr < 64) {
      reasons[nr] = why;
      counts[nr++] = 0;
    }
    if (k < nr) counts[k]++;
  }
  printf("{\"phase\":\"done\",\"t_s\":%.3f,\"n\":%ld,\"ok\":%ld,\"failed\":%ld,"
         "\"progress\":%ld,\"keepalives\":%ld,\"bytes\":%ld,\"cancels_ok\":%ld,"
         "\"failures\":{",
         (double)(mono_ms() - g.t0_ms) / 1000.0, n, g.done, n - g.done, g.progress,
         g.keepalives, g.bytes, g.cancels_ok);
  for (int k = 0; k < nr; k++) printf("%s\"%s\":%ld", k ? "," : "", reasons[k], counts[k]);
  printf("}}\n");
  fflush(stdout);
}

static bool write_out(const char *path, stream *all, long n) {
  FILE *f = fopen(path, "w");
  if (!f) return false;
  for (long i = 0; i < n; i++) {
    stream *s = &all[i];
    fprintf(f, "%ld %s %s %" PRId64 " %" PRId64 " %ld %ld %s\n", s->index,
            s->uid[0] ? s->uid : "-", s->final_status[0] ? s->final_status : "-",
            s->final_rx_us, s->finished_at_ms, s->n_progress, s->n_keepalive,
            s->state == ST_DONE ? "ok" : s->error ? s->error : "timeout");
  }
  return fclose(f) == 0;
}

/* --- main --------------------------------------------------------------- */

static int usage(void) {
  fprintf(stderr, "usage: sse_driver --port P --key KEY --n N [--rate R] [--window W] "
                  "[--model M] [--resolution RES] [--expect STATUS] [--out FILE] "
                  "[--timeout-s S]\n");
  return 2;
}

static bool parse(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->model = "nano-banana-2";
  o->resolution = "512";
  o->expect = "succeeded";
  o->window = 64;
  o->timeout_s = 170;
  if ((argc - 1) % 2) return false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *a = argv[i], *v = argv[i + 1];
    if (!strcmp(a, "--port")) o->port = atoi(v);
    else if (!strcmp(a, "--key")) o->key = v;
    else if (!strcmp(a, "--n")) o->n = atol(v);
    else if (!strcmp(a, "--rate")) o->rate = atol(v);
    else if (!strcmp(a, "--window")) o->window = atol(v);
    else if (!strcmp(a, "--model")) o->model = v;
    else if (!strcmp(a, "--resolution")) o->resolution = v;
    else if (!strcmp(a, "--expect")) o->expect = v;
    else if (!strcmp(a, "--out")) o->out = v;
    else if (!strcmp(a, "--timeout-s")) o->timeout_s = atol(v);
    else return false;
  }
  return o->port > 0 && o->key && o->n > 0 && o->rate >= 0 && o->window > 0 && o->timeout_s > 0;
}

/* One descriptor per stream and a few more. */
static bool raise_fd_limit(long n) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return false;
  rlim_t want = (rlim_t)n + 64;
  if (rl.rlim_cur >= want) return true;
  rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
  setrlimit(RLIMIT_NOFILE, &rl);
  return rl.rlim_cur >= want;
}

int main(int argc, char **argv) {
  options o;
  if (!parse(argc, argv, &o)) return usage();
  g_opts = &o;
  if (!raise_fd_limit(o.n)) {
    fprintf(stderr, "sse_driver: the open-files limit is below %ld (ulimit -Hn)\n", o.n + 64);
    return 1;
  }
  llhttp_settings_init(&g_settings);
  g_settings.on_message_begin = on_message_begin;
  g_settings.on_header_field = on_header_field;
  g_settings.on_header_value = on_header_value;
  g_settings.on_headers_complete = on_headers_complete;
  g_settings.on_body = on_body;
  g_settings.on_message_complete = on_message_complete;
  llhttp_settings_init(&g_cancel_settings);
  g_cancel_settings.on_headers_complete = on_cancel_headers;
  g_cancel_settings.on_message_complete = on_cancel_complete;

  stream *all = calloc((size_t)o.n, sizeof *all);
  g_ep = epoll_create1(EPOLL_CLOEXEC);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGUSR2);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  if (!all || g_ep < 0 || sfd < 0) {
    fprintf(stderr, "sse_driver: setup failed\n");
    return 1;
  }
  struct epoll_event sev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(g_ep, EPOLL_CTL_ADD, sfd, &sev);
  for (long i = 0; i < o.n; i++) {
    all[i].index = i;
    all[i].fd = -1;
    all[i].cancel.fd = -1;
  }

  g.t0_ms = mono_ms();
  int64_t deadline = g.t0_ms + o.timeout_s * 1000;
  long next = 0, next_cancel = 0;
  int64_t cancel_t0 = 0; /* when SIGUSR2 came; 0: not yet */
  bool said_open = false;
  struct epoll_event evs[256];
  while (g.done + g.failed < o.n || g.cancels_pending > 0) {
    int64_t now = mono_ms();
    if (now >= deadline) break;
    /* Start new clients: at most --rate per second since the start, at most
     * --window of them between connect and their first event. */
    long allowed = o.rate ? (long)((now - g.t0_ms) * o.rate / 1000) + 1 : o.n;
    while (next < o.n && next < allowed && g.pending < o.window) {
      if (!start_stream(&all[next], &o)) close_stream(&all[next], false);
      next++;
    }
    if (!said_open && next == o.n && g.pending == 0) {
      said_open = true;
      print_counters("all_open");
    }
    /* Cancels, once asked for: at --rate, at most --window at a time. */
    if (cancel_t0) {
      long callowed = o.rate ? (long)((now - cancel_t0) * o.rate / 1000) + 1 : o.n;
      while (next_cancel < o.n && next_cancel < callowed && g.cancels_pending < o.window) {
        stream *s = &all[next_cancel++];
        if (s->state == ST_STREAMING && !s->got_final && !s->cancel_asked) start_cancel(s, &o);
      }
    }
    bool feeding = next < o.n || (cancel_t0 && next_cancel < o.n);
    int timeout = feeding ? (o.rate ? 2 : 10) : 100;
    int k = epoll_wait(g_ep, evs, 256, timeout);
    for (int i = 0; i < k; i++) {
      conn_kind *kind = evs[i].data.ptr;
      if (!kind) {
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
          if (si.ssi_signo == SIGUSR2 && !cancel_t0) {
            cancel_t0 = mono_ms();
            print_counters("cancelling");
          } else {
            print_counters("counters");
          }
        }
        continue;
      }
      if (*kind == KIND_CANCEL) {
        canceller *c = (canceller *)kind;
        if (c->fd >= 0) cancel_io(c, evs[i].events);
        continue;
      }
      stream *s = (stream *)kind;
      if (s->fd < 0) continue;
      if ((evs[i].events & (EPOLLOUT | EPOLLERR)) && s->out_off < s->out_len) on_writable(s);
      if (s->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(s);
    }
  }
  for (long i = 0; i < o.n; i++) {
    if (all[i].cancel.fd >= 0) cancel_close(&all[i].cancel);
    if (all[i].state != ST_DONE && all[i].state != ST_FAILED) {
      fail(&all[i], all[i].state == ST_WAITING ? "never_started" : "timeout");
      close_stream(&all[i], false);
    }
  }
  print_done(all, o.n);
  if (o.out && !write_out(o.out, all, o.n)) {
    fprintf(stderr, "sse_driver: cannot write %s\n", o.out);
    return 1;
  }
  bool ok = g.done == o.n;
  free(all);
  return ok ? 0 : 1;
}
