/* await.c - a request that waits for its task (see await.h). */
#include "api/await.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "util/ids.h"
#include "util/timeutil.h"

/* A parked request; lives from http_wait to await_end. */
typedef struct await_state {
  core *c;
  store_account acct;
  char uid[IDS_UUID_LEN + 1];
  api_ready_fn ready;
  unsigned char arg[API_AWAIT_ARG_MAX];
  http_waker *waker;
  core_watch *watch;
} await_state;

/* Reads the task and hands it to ready when it is final or the wait is
 * over; false when it goes on waiting. */
static bool look(http_request *req, await_state *w, bool over) {
  task *t = NULL;
  imgate_error err = {0};
  if (core_get_task(w->c, &w->acct, w->uid, &t, &err) < 0) {
    w->ready(req, w->c, NULL, false, &err, w->arg);
    return true;
  }
  bool final = task_state_is_final(t->state);
  if (final || over) w->ready(req, w->c, t, final, NULL, w->arg);
  task_free(t);
  return final || over;
}

/* A change of the task was committed (any thread): the request looks again. */
static void await_wake(void *ctx) { http_wake(((await_state *)ctx)->waker); }

static void await_resume(http_request *req, void *ctx, http_resume_reason why) {
  look(req, ctx, why != HTTP_RESUME_WOKEN);
}

static void await_end(void *ctx, bool answered) {
  await_state *w = ctx;
  core_unwatch(w->c, w->watch); /* after this, await_wake no longer runs */
  http_waker_release(w->waker);
  free(w);
}

void api_await_task(http_request *req, core *c, const store_account *acct, const task *t,
                    int seconds, api_ready_fn ready, const void *arg, size_t arg_size) {
  assert(arg_size <= API_AWAIT_ARG_MAX);
  unsigned char copy[API_AWAIT_ARG_MAX] = {0};
  if (arg_size > sizeof copy) arg_size = sizeof copy; /* callers use API_AWAIT_TASK */
  if (arg_size) memcpy(copy, arg, arg_size);
  bool final = task_state_is_final(t->state);
  if (seconds <= 0 || final) {
    ready(req, c, t, final, NULL, copy);
    return;
  }
  await_state *w = calloc(1, sizeof *w);
  if (!w) {
    ready(req, c, t, false, NULL, copy);
    return;
  }
  w->c = c;
  w->acct = *acct;
  w->ready = ready;
  memcpy(w->arg, copy, sizeof w->arg);
  memcpy(w->uid, t->id, sizeof w->uid);
  w->waker = http_wait(req, await_resume, await_end, w, time_mono_ms() + (int64_t)seconds * 1000);
  if (!w->waker) {
    free(w);
    ready(req, c, t, false, NULL, copy);
    return;
  }
  w->watch = core_watch_task(c, t->id, await_wake, w);
  if (!w->watch) {
    ready(req, c, t, false, NULL, w->arg); /* answering ends the wait: await_end frees w */
    return;
  }
  /* Read again now that the watch is on: a finish committed between the
   * first read and the watch is seen here, one after it wakes the request. */
  look(req, w, false);
}
