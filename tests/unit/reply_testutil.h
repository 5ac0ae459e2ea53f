/* reply_testutil.h - a request that exists only in memory, for the tests of
 * code that answers one (error shapes, the dialect seam): set it up, read
 * what was answered, free it. Include after cmocka.h. */
#ifndef IMGATE_REPLY_TESTUTIL_H
#define IMGATE_REPLY_TESTUTIL_H

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/server.h"

/* No path: the native dialect answers it, as it does every path no other owns. */
static inline void request_init(http_request *req) {
  memset(req, 0, sizeof *req);
  req->resp_fd = -1;
  strcpy(req->request_id, "test");
}

static inline void request_clear(http_request *req) {
  free(req->resp_body);
  for (int i = 0; i < req->n_resp_headers; i++) {
    free(req->resp_headers[i].name);
    free(req->resp_headers[i].value);
  }
}

/* A header of the answer, or NULL. */
static inline const char *resp_header(const http_request *req, const char *name) {
  for (int i = 0; i < req->n_resp_headers; i++)
    if (strcasecmp(req->resp_headers[i].name, name) == 0) return req->resp_headers[i].value;
  return NULL;
}

#endif
