/* sse.c - server-sent events (see sse.h). */
#include "api/sse.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

void api_sse_start(http_request *req) {
  http_reply_header(req, "Cache-Control", "no-cache");
  http_reply_header(req, "X-Accel-Buffering", "no");
  http_stream_start(req, 200, "text/event-stream");
}

bool api_sse_event(http_request *req, const char *id, const char *event, json_t *doc) {
  char *text = api_json_take_text(doc);
  if (!text) return false;
  char head[160];
  int n = snprintf(head, sizeof head, "%s%s%s%s%s%sdata: ", id ? "id: " : "", id ? id : "",
                   id ? "\n" : "", event ? "event: " : "", event ? event : "",
                   event ? "\n" : "");
  assert(n > 0 && (size_t)n < sizeof head); /* ids and event names are short, ours */
  if (n <= 0 || (size_t)n >= sizeof head) {
    free(text);
    return false;
  }
  bool ok = http_stream_write(req, head, (size_t)n) &&
            http_stream_write(req, text, strlen(text)) && http_stream_write(req, "\n\n", 2);
  free(text);
  return ok;
}

void api_sse_keepalive(http_request *req) { http_stream_write(req, ": keep-alive\n\n", 14); }
