/* await.h - answering a request once its task is final, without holding a
 * thread: the shared part of Prefer: wait, long polls, synchronous submits
 * and every dialect whose clients expect the result on the same request.
 *
 * The request follows its task (follow.h): each committed change of the task
 * wakes it, and it looks again. The dialect's ready function answers, once:
 * with the final task, or with the task as it is when the wait runs out, the
 * server stops, or nothing could wake it. */
#ifndef IMGATE_API_AWAIT_H
#define IMGATE_API_AWAIT_H

#include <stdbool.h>
#include <stddef.h>

#include "core/core.h"
#include "http/server.h"

/* Answers req. t is the task (final, or as it is when the wait ended: final
 * says which); when the task could not be read, t is NULL and err says why.
 * arg: the dialect's own bytes given to api_await_task (copied). */
typedef void (*api_ready_fn)(http_request *req, core *c, const task *t, bool final,
                             const imgate_error *err, void *arg);

/* The largest arg api_await_task keeps. */
#define API_AWAIT_ARG_MAX 64

/* Answers at once (through ready) when t is final or seconds <= 0; else
 * waits up to seconds for it to be final. arg_size <= API_AWAIT_ARG_MAX. */
void api_await_task(http_request *req, core *c, const store_account *acct, const task *t,
                    int seconds, api_ready_fn ready, const void *arg, size_t arg_size);
/* The same, with arg a pointer to an object whose size is checked when
 * compiling (an assert would be gone from a release build). */
#define API_AWAIT_TASK(req, c, acct, t, seconds, ready, argp)                                  \
  do {                                                                                         \
    _Static_assert(sizeof *(argp) <= API_AWAIT_ARG_MAX, "api_await_task arg too large");       \
    api_await_task((req), (c), (acct), (t), (seconds), (ready), (argp), sizeof *(argp));       \
  } while (0)

#endif
