/* native_int.h - what the native dialect's files share (native.c: routes
 * and waiting; native_render.c: the task's shape; native_events.c: its SSE
 * stream; account.c: the account's webhook secret). Not for other dialects. */
#ifndef IMGATE_NATIVE_INT_H
#define IMGATE_NATIVE_INT_H

#include "api/api.h"

/* The task as this dialect shows it, image URLs under base ("http://host",
 * no trailing slash). NULL when memory runs out. */
json_t *native_render_task(const char *base, core *c, const task *t);
/* The same for an answer to req (base: the public URL or the request's Host). */
json_t *native_render_task_for(http_request *req, core *c, const task *t);
/* Answers t at once when it is final or seconds is 0; else the request
 * waits (no thread) for the task to be final, at most seconds, and then
 * answers it as it is then. prefer: the client asked for the wait with
 * Prefer: wait=N (or ?wait=N), and is told Preference-Applied: wait=N. */
void native_answer_task(http_request *req, core *c, const store_account *acct, const task *t,
                        int seconds, bool prefer);

/* GET /api/banana/{uid}/events (native_events.c). */
void native_handle_events(http_request *req, void *ctx);

#endif
