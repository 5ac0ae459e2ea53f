/* native_events.c - GET /api/banana/{uid}/events: a task's events as a
 * server-sent-event stream (text/event-stream).
 *
 * Every committed change of the task is an event, in order, with its
 * sequence number as its id:
 *
 *   id: 2
 *   event: task.running
 *   data: {"uid":"...","seq":2,"status":"running","at":"...","run":1,"provider":"gemini"}
 *
 * Kinds: task.queued, task.running, task.attempt (an upstream attempt
 * failed and will be retried), and the final task.succeeded, task.failed,
 * task.moderated, task.canceled, whose data is the whole task as GET shows
 * it; the stream ends after it. While the task runs, task.progress events
 * (id "<seq>-p<n>") carry an estimate of how far it is, from how long its
 * model has taken lately: an estimate, not a report from the upstream. A
 * comment line keeps an idle stream alive every http.stream_keepalive_ms
 * (15 s). A client that comes back with Last-Event-ID gets only what came
 * after that event.
 *
 * The stream holds no thread: it waits (http_wait) on a watch of its task
 * (core_watch_task) and on a timer for progress and keep-alives. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/follow.h"
#include "api/native_int.h"
#include "api/sse.h"
#include "util/timeutil.h"

#define SSE_PROGRESS_MS 2000   /* between progress estimates while running */
#define SSE_RETRY_MS 3000      /* what a browser waits before reconnecting */

/* The stream's state, as its follower (follow.h) keeps it. */
typedef struct sse {
  int last_seq;      /* the last stored event sent */
  int progress_n;    /* progress events sent since it */
  int last_percent;  /* the last estimate sent (-1: none) */
  bool running;      /* the last event said so */
  bool was_final;    /* the task had ended before the stream opened */
} sse;

static json_t *event_data(const api_follow *f, const task_event *ev) {
  task_state state;
  bool has_state = task_state_parse(task_event_kind_name(ev->kind), &state);
  json_t *d = json_pack("{s:s, s:i, s:s, s:o, s:i}", "uid", f->uid, "seq", ev->seq, "type",
                        task_event_kind_name(ev->kind), "at", api_json_time(ev->at_ms), "run",
                        ev->run);
  if (!d) return NULL;
  if (ev->kind == TASK_EVENT_ATTEMPT) json_object_set_new(d, "status", json_string("running"));
  else if (has_state) json_object_set_new(d, "status", json_string(task_state_name(state)));
  if (ev->provider[0]) json_object_set_new(d, "provider", api_json_text(ev->provider));
  if (ev->http_status) json_object_set_new(d, "http_status", json_integer(ev->http_status));
  if (ev->error_code[0]) json_object_set_new(d, "error_code", api_json_text(ev->error_code));
  return d;
}

static bool kind_is_final(task_event_kind k) {
  return k == TASK_EVENT_SUCCEEDED || k == TASK_EVENT_FAILED || k == TASK_EVENT_MODERATED ||
         k == TASK_EVENT_CANCELED;
}

/* Sends what happened since the last event sent; ends the stream after the
 * final one (its data: the whole task). True when the stream has ended. */
static bool flush_events(http_request *req, api_follow *f) {
  sse *s = f->state;
  task_event *evs = NULL;
  size_t n = 0;
  imgate_error err = {0};
  if (core_task_events(f->c, &f->acct, f->uid, s->last_seq, &evs, &n, &err) < 0) {
    http_stream_end(req); /* the task went away, or the store failed: nothing more to say */
    return true;
  }
  bool ended = false;
  for (size_t i = 0; i < n; i++) {
    const task_event *ev = &evs[i];
    char id[24];
    snprintf(id, sizeof id, "%d", ev->seq);
    char name[40];
    snprintf(name, sizeof name, "task.%s", task_event_kind_name(ev->kind));
    s->last_seq = ev->seq;
    s->progress_n = 0;
    s->last_percent = -1;
    s->running = ev->kind == TASK_EVENT_RUNNING || ev->kind == TASK_EVENT_ATTEMPT;
    if (kind_is_final(ev->kind)) {
      task *t = NULL;
      json_t *data = api_follow_read(f, &t, &err) == 0 ? native_render_task_for(req, f->c, t)
                                                       : event_data(f, ev);
      task_free(t);
      api_sse_event(req, id, name, data);
      http_stream_end(req);
      ended = true;
      break;
    }
    if (!api_sse_event(req, id, name, event_data(f, ev))) break;
  }
  free(evs);
  return ended;
}

/* While the task runs: how far it may be, when the estimate moved. */
static void send_progress(http_request *req, api_follow *f) {
  sse *s = f->state;
  task *t = NULL;
  imgate_error err = {0};
  if (api_follow_read(f, &t, &err) < 0) return;
  int pct = t->state == TASK_RUNNING ? core_progress_percent(f->c, t, time_now_ms()) : -1;
  task_free(t);
  if (pct < 0 || pct == s->last_percent) {
    api_sse_keepalive(req);
    return;
  }
  s->last_percent = pct;
  char id[40];
  snprintf(id, sizeof id, "%d-p%d", s->last_seq, ++s->progress_n);
  api_sse_event(req, id, "task.progress",
                json_pack("{s:s, s:i, s:b}", "uid", f->uid, "progress", pct, "estimated", 1));
}

static int64_t sse_look(http_request *req, api_follow *f, api_follow_why why) {
  sse *s = f->state;
  switch (why) {
  case API_FOLLOW_STOPPING:
  case API_FOLLOW_OVER: /* it is given no end of time: only for completeness */
    http_stream_end(req); /* the client reconnects, with Last-Event-ID, elsewhere */
    return API_FOLLOW_DONE;
  case API_FOLLOW_FIRST:
  case API_FOLLOW_UNWATCHED: {
    api_sse_start(req);
    char retry[32];
    int n = snprintf(retry, sizeof retry, "retry: %d\n\n", SSE_RETRY_MS);
    http_stream_write(req, retry, (size_t)n);
    if (flush_events(req, f)) return API_FOLLOW_DONE;
    /* A task that had ended before the stream opened, whose final event the
     * client already has (Last-Event-ID): nothing will come, so end now
     * rather than keep an idle stream open forever. Likewise a stream that
     * cannot be woken says what there is and ends. */
    if (s->was_final || why == API_FOLLOW_UNWATCHED) {
      http_stream_end(req);
      return API_FOLLOW_DONE;
    }
    break; /* progress soon if it is already running */
  }
  case API_FOLLOW_WOKEN:
    if (flush_events(req, f)) return API_FOLLOW_DONE;
    break;
  case API_FOLLOW_TICK:
    /* A tick only says how far the task may be: every change of the task
     * wakes the stream (the watch), so there is nothing new to read unless
     * it was woken. 10,000 streams on running tasks tick 5,000 times a
     * second. */
    send_progress(req, f);
    break;
  }
  return s->running ? SSE_PROGRESS_MS : core_stream_keepalive_ms(f->c);
}

/* The stored event a client last saw: the leading number of Last-Event-ID
 * ("7", or "7-p3" for a progress event after it); 0 for none. */
static int last_event_seq(http_request *req) {
  const char *h = http_header_get(req, "Last-Event-ID");
  if (!h || !isdigit((unsigned char)*h)) return 0;
  long v = strtol(h, NULL, 10);
  return v > 0 && v < 1000000000 ? (int)v : 0;
}

void native_handle_events(http_request *req, void *ctx) {
  core *c = ctx;
  store_account acct;
  if (api_authenticate(req, c, &acct) < 0) return;
  task *t = api_read_task(req, c, &acct, http_param_get(req, "uid"));
  if (!t) return;
  sse s = {.last_seq = last_event_seq(req), .last_percent = -1,
           .was_final = task_state_is_final(t->state)};
  if (!api_follow_start(req, c, &acct, t->id, 0, sse_look, &s, sizeof s))
    api_reply_error(req, 500, "internal_error", "out of memory", NULL);
  task_free(t);
}
