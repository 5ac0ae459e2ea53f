/* events.h - who waits for which task: the in-process half of the event spine.
 *
 * Every committed change of a task's state is published here by the code that
 * committed it (core.c: submits and cancels; engine.c: starts, retries,
 * finishes, requeues). A synchronous wait or an SSE stream subscribes to its
 * task and is called back after each publish; it then reads what changed
 * from the store (the task and its events, which the store wrote in the same
 * transaction as the change), so a publish carries nothing and a lost or
 * doubled one costs a read, never a wrong answer. The durable half is the
 * store's: task events and the webhook outbox are rows written with the
 * change itself.
 *
 * The shape is Redis's blocked clients: a hash of task id -> subscribers,
 * here under striped locks. A callback runs on the publishing thread with its
 * stripe locked, so it must be quick and must not call back in here (waking a
 * waiting HTTP request, http_wake, is what it is for). */
#ifndef IMGATE_EVENTS_H
#define IMGATE_EVENTS_H

#include <stddef.h>

typedef struct events events;
typedef struct events_sub events_sub;

/* Something happened to the task: look again. */
typedef void (*events_fn)(void *ctx);

events *events_create(void);
/* Frees the registry; every subscription must be gone. NULL is fine. */
void events_destroy(events *ev);

/* Calls fn(ctx) after each publish for task_id, until unsubscribed. NULL
 * when memory runs out. A subscriber reads the state after subscribing, so a
 * change committed just before is seen there and one just after wakes it. */
events_sub *events_subscribe(events *ev, const char *task_id, events_fn fn, void *ctx);
/* After it returns, fn is not running and will not run again for s. NULL is fine. */
void events_unsubscribe(events *ev, events_sub *s);
/* Calls every subscriber of task_id (on this thread). */
void events_publish(events *ev, const char *task_id);
/* Subscriptions open now (metrics). */
size_t events_count(events *ev);

#endif
