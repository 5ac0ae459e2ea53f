/* follow.h - a request that follows its task without holding a thread: what
 * every wait for a final task (await.h) and every stream of a task's progress
 * (the native events, apistor's progress objects, the Gemini and
 * nananobanana streams) share.
 *
 * The request parks (http_wait) with a watch on its task (core_watch_task);
 * each committed change of the task wakes it, and the dialect's look function
 * looks again and renders what it sees. The mechanism owns the rest: the
 * order that misses no change (watch first, then the first look), the
 * dialect's timer (progress, keep-alives), the end of its time, the server
 * stopping, and the clean-up when the answer is given or the client goes. */
#ifndef IMGATE_API_FOLLOW_H
#define IMGATE_API_FOLLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "http/server.h"
#include "util/ids.h"

/* Why the look function runs. */
typedef enum {
  API_FOLLOW_FIRST,     /* the watch is on: what changed before shows now, later changes wake it */
  API_FOLLOW_UNWATCHED, /* the first look, but no watch could be made: no change will wake it */
  API_FOLLOW_WOKEN,     /* a change of the task was committed */
  API_FOLLOW_TICK,      /* the look's own timer ran out (the delay it returned) */
  API_FOLLOW_OVER,      /* the time given to api_follow_start has run out */
  API_FOLLOW_STOPPING,  /* the server stops: answer, or end the stream, now */
} api_follow_why;

/* What the look function sees. */
typedef struct api_follow {
  core *c;
  store_account acct;         /* the account the task is read for */
  char uid[IDS_UUID_LEN + 1]; /* the task */
  void *state;                /* the dialect's own: a copy of what api_follow_start got */
} api_follow;

/* What a look function returns once it has answered or ended its stream. */
#define API_FOLLOW_DONE ((int64_t)-1)

/* Looks at the task for why, on the request's worker thread. Returns
 * API_FOLLOW_DONE once it has answered or ended its stream (f is freed after
 * it returns); otherwise it has answered nothing (or only written to its
 * stream) and returns the milliseconds until its next API_FOLLOW_TICK, or 0
 * for none (it waits for a change, or for its time to run out). On OVER and
 * STOPPING it must answer (or end its stream): the wait is over. */
typedef int64_t (*api_follow_look_fn)(http_request *req, api_follow *f, api_follow_why why);

/* Makes req follow task uid of acct for at most seconds (0: for as long as
 * the look goes on), with state_size bytes of state copied in for look. The
 * first look (FIRST, or UNWATCHED) runs before it returns. False when the
 * request cannot wait (out of memory): then nothing was looked at or
 * answered, and the caller answers. */
bool api_follow_start(http_request *req, core *c, const store_account *acct, const char *uid,
                      int seconds, api_follow_look_fn look, const void *state,
                      size_t state_size);

/* Reads the task again (core_get_task for f's account): 0 with *out
 * (task_free it), or -1 with err. */
int api_follow_read(const api_follow *f, task **out, imgate_error *err);

#endif
