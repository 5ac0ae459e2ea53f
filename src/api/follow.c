/* follow.c - a request that follows its task (see follow.h). */
#include "api/follow.h"

#include <assert.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/timeutil.h"

/* A following request; lives from http_wait to follow_end. */
typedef struct follower {
  api_follow pub; /* what the look sees */
  api_follow_look_fn look;
  int64_t until_mono; /* OVER from then on (0: never) */
  http_waker *waker;
  core_watch *watch;
  alignas(max_align_t) unsigned char state[]; /* pub.state points here */
} follower;

/* The next deadline: the look's tick, never past the end of its time. */
static void schedule(http_request *req, const follower *f, int64_t tick_ms) {
  int64_t due = tick_ms > 0 ? time_mono_ms() + tick_ms : 0;
  if (f->until_mono && (!due || due > f->until_mono)) due = f->until_mono;
  http_wait_until(req, due);
}

static void look(http_request *req, follower *f, api_follow_why why) {
  int64_t tick = f->look(req, &f->pub, why);
  /* Done means answered: a stream was started (and ended) or a reply set. */
  assert(tick != API_FOLLOW_DONE || req->status != 0);
  assert(tick == API_FOLLOW_DONE || (why != API_FOLLOW_OVER && why != API_FOLLOW_STOPPING));
  if (tick != API_FOLLOW_DONE) schedule(req, f, tick);
}

/* A change of the task was committed (any thread): the request looks again. */
static void follow_wake(void *ctx) { http_wake(((follower *)ctx)->waker); }

static void follow_resume(http_request *req, void *ctx, http_resume_reason why) {
  follower *f = ctx;
  /* The end of its time is checked on every resume: a wake that comes after
   * it is answered as the deadline would have been. */
  api_follow_why w;
  if (why == HTTP_RESUME_STOPPING) w = API_FOLLOW_STOPPING;
  else if (f->until_mono && time_mono_ms() >= f->until_mono) w = API_FOLLOW_OVER;
  else w = why == HTTP_RESUME_WOKEN ? API_FOLLOW_WOKEN : API_FOLLOW_TICK;
  look(req, f, w);
}

static void follow_end(void *ctx, bool answered) {
  (void)answered;
  follower *f = ctx;
  core_unwatch(f->pub.c, f->watch); /* after this, follow_wake no longer runs */
  http_waker_release(f->waker);
  free(f);
}

bool api_follow_start(http_request *req, core *c, const store_account *acct, const char *uid,
                      int seconds, api_follow_look_fn look_fn, const void *state,
                      size_t state_size) {
  assert(look_fn && (state || !state_size));
  follower *f = calloc(1, sizeof *f + state_size);
  if (!f) return false;
  f->pub.c = c;
  f->pub.acct = *acct;
  snprintf(f->pub.uid, sizeof f->pub.uid, "%s", uid);
  f->pub.state = f->state;
  if (state_size) memcpy(f->state, state, state_size);
  f->look = look_fn;
  f->until_mono = seconds > 0 ? time_mono_ms() + (int64_t)seconds * 1000 : 0;
  f->waker = http_wait(req, follow_resume, follow_end, f, f->until_mono);
  if (!f->waker) {
    free(f);
    return false;
  }
  f->watch = core_watch_task(c, f->pub.uid, follow_wake, f);
  /* Now that the watch is on, the first look: a change committed before it
   * is seen here, one after it wakes the request. */
  look(req, f, f->watch ? API_FOLLOW_FIRST : API_FOLLOW_UNWATCHED);
  return true;
}

int api_follow_read(const api_follow *f, task **out, imgate_error *err) {
  return core_get_task(f->c, &f->acct, f->uid, out, err);
}
