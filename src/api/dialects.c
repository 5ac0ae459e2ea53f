/* dialects.c - the table of dialects, and the choices made by it (see
 * dialect.h). Adding a dialect: its file defines `const api_dialect
 * api_<name>_dialect`, and one line below names it. */
#include "api/dialect.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

extern const api_dialect api_native_dialect;
extern const api_dialect api_openai_dialect;
extern const api_dialect api_apistor_dialect;
extern const api_dialect api_gemini_dialect;
extern const api_dialect api_nananobanana_dialect;

static const api_dialect *const table[] = {
    &api_native_dialect,       /* first: the default owner of every path */
    &api_openai_dialect,       /* /v1/ */
    &api_apistor_dialect,      /* /api/v1/images/nanobanana/ (seeds 001, 002) */
    &api_gemini_dialect,       /* /v1beta/ */
    &api_nananobanana_dialect, /* /api/v1/ (seed 004) */
};

#define N_DIALECTS (sizeof table / sizeof table[0])

const api_dialect *const *api_dialects(size_t *count) {
  *count = N_DIALECTS;
  return table;
}

const api_dialect *api_dialect_choose(const api_dialect *const *dialects, size_t n,
                                      const char *path) {
  const api_dialect *best = n ? dialects[0] : NULL;
  size_t best_len = 0;
  for (size_t i = 0; path && i < n; i++) {
    for (const char *const *p = dialects[i]->prefixes; p && *p; p++) {
      size_t len = strlen(*p);
      if (len > best_len && strncmp(path, *p, len) == 0) {
        best = dialects[i];
        best_len = len;
      }
    }
  }
  return best;
}

const api_dialect *api_dialect_for_path(const char *path) {
  return api_dialect_choose(table, N_DIALECTS, path);
}

const api_dialect *api_dialect_named(const char *name) {
  for (size_t i = 0; name && i < N_DIALECTS; i++)
    if (strcmp(table[i]->name, name) == 0) return table[i];
  return NULL;
}

const char *api_dialect_field(const api_dialect *d, const char *core_field) {
  for (const api_field_name *f = d->field_names; f && f->core; f++)
    if (strcmp(f->core, core_field) == 0) return f->own;
  return core_field;
}

void api_register_dialects(http_router *r, core *c) {
  for (size_t i = 0; i < N_DIALECTS; i++) table[i]->register_routes(r, c);
}

const char *api_read_bearer(http_request *req, char *out, size_t size) {
  const char *h = http_header_get(req, "Authorization");
  if (!h) return NULL;
  /* Too long for any key: refused whole, never checked cut short. */
  if (strlen(h) >= size) h = "";
  snprintf(out, size, "%s", h);
  return out;
}
