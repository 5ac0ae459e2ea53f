/* dialect.h - the seam every API dialect plugs into.
 *
 * A dialect is one file that defines one api_dialect and one line in the
 * table of dialects.c: the routes it serves, the path prefixes it owns, how
 * its clients send their key, how it shapes a refusal, what it calls the
 * fields the core names in its errors, and how it renders a task's webhook
 * payload. Nothing else changes when one is added.
 *
 * Refusals raised before any handler runs (no such route, wrong method, a
 * body too large, a missing or wrong key, a rate limit) reach the dialect
 * that owns the request's path (the longest prefix that matches; the native
 * one owns what no other claims), so every client hears them in the shape
 * its SDK understands. The core stays dialect-free: a task only records the
 * dialect's name, for its webhook payloads. */
#ifndef IMGATE_API_DIALECT_H
#define IMGATE_API_DIALECT_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "core/error.h"
#include "http/server.h"

/* A field the core names in its errors, as the dialect's clients know it. */
typedef struct api_field_name {
  const char *core; /* a CORE_FIELD_* name ("images") */
  const char *own;  /* the dialect's ("image_urls", "Idempotency-Key") */
} api_field_name;

typedef struct api_dialect {
  const char *name;             /* stored with its tasks ("native") */
  const char *const *prefixes;  /* NULL-terminated path prefixes it owns ("/api/banana/") */
  void (*register_routes)(http_router *r, core *c);
  /* The key the client sent, as this dialect's clients send it, written to
   * out (up to size) as an Authorization value ("Bearer igk_..."), or NULL
   * when there is none. The core checks it, not the dialect. */
  const char *(*read_key)(http_request *req, char *out, size_t size);
  /* A refusal with this HTTP status, in the dialect's shape. err carries the
   * slug, message, field and, for 429, the limit and Retry-After. */
  void (*reply_error)(http_request *req, int status, const imgate_error *err);
  /* Its own names for core fields, ending with {NULL, NULL} (NULL: the
   * core's names are its own). An error a core call returns names the
   * dialect's field (api_reply_from_core); a field not listed keeps the
   * core's name. */
  const api_field_name *field_names;
  /* The webhook payload of event for task t (JSON text, malloc'd; NULL when
   * it cannot be made). */
  char *(*render_webhook)(core *c, const task *t, const char *event, int64_t now_ms);
} api_dialect;

/* The dialects, in the table's order (the first is the default). */
const api_dialect *const *api_dialects(size_t *count);

/* The dialect that owns path: the longest prefix of any dialect's that
 * matches, else the first (native). */
const api_dialect *api_dialect_for_path(const char *path);

/* The same choice among the given dialects (for tests of the rule). */
const api_dialect *api_dialect_choose(const api_dialect *const *table, size_t n,
                                      const char *path);

/* The dialect of that name, or NULL. */
const api_dialect *api_dialect_named(const char *name);

/* What dialect d calls core field core_field (a CORE_FIELD_* name): its
 * field_names entry, else core_field itself. */
const char *api_dialect_field(const api_dialect *d, const char *core_field);

/* Registers every dialect's routes. */
void api_register_dialects(http_router *r, core *c);

/* Reads "Authorization: Bearer <key>" (the most common way). */
const char *api_read_bearer(http_request *req, char *out, size_t size);

#endif
