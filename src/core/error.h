/* error.h - errors as values, shared by the core and the dialects.
 *
 * The core says what went wrong (a code, a stable machine slug, a message for
 * people, and the request field at fault); each dialect maps that to its own
 * JSON shape and HTTP status. */
#ifndef IMGATE_ERROR_H
#define IMGATE_ERROR_H

typedef enum {
  ERR_NONE = 0,
  ERR_INVALID,      /* the request is malformed or a field is wrong -> 400 */
  ERR_UNAUTHORIZED, /* no or unknown credentials -> 401 */
  ERR_FORBIDDEN,    /* credentials fine, action not allowed -> 403 */
  ERR_NOT_FOUND,    /* no such thing for this account -> 404 */
  ERR_GONE,         /* it existed and was deleted on purpose (an expired image) -> 410 */
  ERR_TOO_LARGE,    /* body or an input over its limit -> 413 */
  ERR_NO_CREDIT,    /* the balance does not cover the price -> 402 */
  ERR_UNPROCESSABLE, /* well-formed, but conflicts with an earlier request -> 422 */
  ERR_CONFLICT,     /* the resource is in a state that does not allow it (a final task) -> 409 */
  ERR_RATE_LIMITED, /* an account or key limit -> 429 (retry_after_s, limit, active) */
  ERR_UNAVAILABLE,  /* shutting down or overloaded -> 503 */
  ERR_INTERNAL,     /* our fault -> 500 */
} err_code;

typedef struct imgate_error {
  err_code code;
  char slug[48];     /* stable machine-readable code, e.g. "invalid_aspect_ratio" */
  char message[256]; /* for people */
  char param[64];    /* request field at fault, "" when none */
  /* ERR_RATE_LIMITED only: when to try again, and the limit that was hit
   * with how much of it is in use (for Retry-After, X-RateLimit-*). */
  int retry_after_s;
  int limit, active;
} imgate_error;

/* Fills e (any of slug/param may be NULL); returns -1 so callers can `return err_set(...)`. */
int err_set(imgate_error *e, err_code code, const char *slug, const char *param,
            const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The HTTP status that fits code in a plain REST dialect. */
int err_http_status(err_code code);

#endif
