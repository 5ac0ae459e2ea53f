/* sse.h - server-sent events (text/event-stream) as the dialects' streams
 * write them: the head of the answer, one event, a keep-alive. */
#ifndef IMGATE_API_SSE_H
#define IMGATE_API_SSE_H

#include <stdbool.h>

#include <jansson.h>

#include "http/server.h"

/* Starts a 200 text/event-stream answer that no cache keeps and that a proxy
 * passes on event by event (X-Accel-Buffering: no, for nginx). */
void api_sse_start(http_request *req);

/* One event: an "id:" line when id is not NULL, an "event:" line when event
 * is not NULL, then "data: " and doc as one line of compact JSON, and the
 * blank line that ends it. Takes doc. False when nothing or not all of it
 * could be written: doc NULL or not encodable, or the stream was cut (its
 * reader fell too far behind). */
bool api_sse_event(http_request *req, const char *id, const char *event, json_t *doc);

/* A comment line, which SSE readers skip: something on the wire, so that no
 * proxy cuts a quiet stream as idle. */
void api_sse_keepalive(http_request *req);

#endif
