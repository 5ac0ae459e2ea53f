/* await.c - a request that waits for its task (see await.h), as a follower
 * of it (follow.h) whose only rendering is the dialect's ready function. */
#include "api/await.h"

#include <assert.h>
#include <string.h>

#include "api/follow.h"

/* The follower's state: the dialect's answer and its bytes. */
typedef struct await_state {
  api_ready_fn ready;
  unsigned char arg[API_AWAIT_ARG_MAX];
} await_state;

/* Answers once the task is final, or when there is nothing more to wait
 * for (its time ran out, the server stops, no change would wake it). */
static int64_t await_look(http_request *req, api_follow *f, api_follow_why why) {
  await_state *w = f->state;
  task *t = NULL;
  imgate_error err = {0};
  if (api_follow_read(f, &t, &err) < 0) {
    w->ready(req, f->c, NULL, false, &err, w->arg);
    return API_FOLLOW_DONE;
  }
  bool final = task_state_is_final(t->state);
  bool answer = final || (why != API_FOLLOW_FIRST && why != API_FOLLOW_WOKEN);
  if (answer) w->ready(req, f->c, t, final, NULL, w->arg);
  task_free(t);
  return answer ? API_FOLLOW_DONE : 0; /* no ticks: a change or the end of its time */
}

void api_await_task(http_request *req, core *c, const store_account *acct, const task *t,
                    int seconds, api_ready_fn ready, const void *arg, size_t arg_size) {
  assert(arg_size <= API_AWAIT_ARG_MAX);
  await_state w = {.ready = ready};
  if (arg_size > sizeof w.arg) arg_size = sizeof w.arg; /* callers use API_AWAIT_TASK */
  if (arg_size) memcpy(w.arg, arg, arg_size);
  bool final = task_state_is_final(t->state);
  /* At once when there is nothing to wait for, or the request cannot wait. */
  if (seconds <= 0 || final ||
      !api_follow_start(req, c, acct, t->id, seconds, await_look, &w, sizeof w))
    ready(req, c, t, final, NULL, w.arg);
}
