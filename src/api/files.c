/* files.c - serves result images at /files/{token}.{ext}, the extension
 * being the stored image's own (core_open_result checks the whole name).
 *
 * No authentication: the 128-bit random token is the capability, as with a
 * presigned object-store URL, so the URL can be handed to a browser or a CDN.
 * Images never change once written, hence a strong ETag and "immutable". */
#include <stdio.h>
#include <string.h>

#include "api/api.h"
#include "util/timeutil.h"

static void handle_file(http_request *req, void *ctx) {
  core *c = ctx;
  const char *name = http_param_get(req, "name");
  task_result meta;
  blob_object obj;
  imgate_error err = {0};
  if (core_open_result(c, name, &meta, &obj, &err) < 0) {
    api_reply_error(req, err_http_status(err.code), err.slug, err.message, NULL);
    return;
  }
  char etag[80], cache[96], expires[40];
  snprintf(etag, sizeof etag, "\"%s\"", meta.etag);
  int64_t remaining = (meta.expires_ms - time_now_ms()) / 1000;
  snprintf(cache, sizeof cache, "private, max-age=%lld, immutable",
           (long long)(remaining > 0 ? remaining : 0));
  time_format_http(meta.expires_ms, expires);
  http_reply_header(req, "ETag", etag);
  http_reply_header(req, "Cache-Control", cache);
  http_reply_header(req, "Expires", expires);
  http_reply_header(req, "X-Content-Type-Options", "nosniff");

  const char *inm = http_header_get(req, "If-None-Match");
  if (inm && (strstr(inm, etag) || strcmp(inm, "*") == 0)) {
    http_reply_empty(req, 304);
    blob_object_release(&obj);
  } else if (obj.fd >= 0) {
    http_reply_fd(req, 200, meta.mime, obj.fd, obj.size);
    obj.fd = -1; /* the server closes it */
  } else {
    http_reply_bytes(req, 200, meta.mime, obj.data, obj.size);
    blob_object_release(&obj);
  }
  task_result_clear(&meta);
}

void api_files_register(http_router *r, core *c) {
  http_router_add(r, "GET", "/files/{name}", handle_file, c);
}
