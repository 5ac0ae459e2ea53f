/* error.c - filling imgate_error values and mapping codes to HTTP statuses. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util/utf8.h"

/* Copies src into a fixed field, truncating; NULL becomes "". */
static void err_copy(char *dst, size_t size, const char *src) {
  size_t n = src ? strnlen(src, size - 1) : 0;
  if (n) memcpy(dst, src, n);
  dst[n] = '\0';
}

int err_set(imgate_error *e, err_code code, const char *slug, const char *param,
            const char *fmt, ...) {
  if (!e) return -1;
  e->code = code;
  err_copy(e->slug, sizeof e->slug, slug);
  err_copy(e->param, sizeof e->param, param);
  e->message[0] = '\0';
  if (fmt) {
    /* One byte more than the message holds, so that a cut can see whether it
     * falls inside a character. */
    char text[sizeof e->message + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0) text[0] = '\0';
    /* Truncation is fine: the message is for people, the slug is what machines
     * read. But it ends up in JSON, which must be UTF-8: the cut must not split
     * a character, and text from elsewhere (an upstream) may not be clean. */
    size_t keep = utf8_cut(text, sizeof e->message - 1);
    memcpy(e->message, text, keep);
    e->message[keep] = '\0';
    utf8_sanitize(e->message);
  }
  return -1;
}

int err_http_status(err_code code) {
  switch (code) {
  case ERR_NONE: return 200;
  case ERR_INVALID: return 400;
  case ERR_UNAUTHORIZED: return 401;
  case ERR_FORBIDDEN: return 403;
  case ERR_NOT_FOUND: return 404;
  case ERR_GONE: return 410;
  case ERR_TOO_LARGE: return 413;
  case ERR_NO_CREDIT: return 402;
  case ERR_UNPROCESSABLE: return 422;
  case ERR_CONFLICT: return 409;
  case ERR_RATE_LIMITED: return 429;
  case ERR_UNAVAILABLE: return 503;
  case ERR_INTERNAL: return 500;
  }
  return 500; /* a value outside the enum is our bug, not the client's */
}
