/* router.c - maps (method, path) to a handler; see http_router_add in server.h.
 *
 * A pattern is split once, at add time, into segments kept in one private copy
 * of the pattern text, so matching a request only walks the raw path and
 * compares bytes: the one allocation per match is the decoded copy of each path
 * parameter, made after a route has been chosen.
 *
 * Matching rules worth knowing:
 * - Paths are compared raw (not percent-decoded); only parameter values are
 *   decoded. A parameter whose value holds a malformed escape, or decodes to a
 *   NUL or a '/', does not match: a handler never sees a value it could
 *   mistake for two path segments.
 * - A trailing slash is a segment of its own, so "/v1/models/" and
 *   "/v1/models" are different paths. Clients get a 404 instead of a silent
 *   redirect, which keeps exactly one spelling of every URL.
 * - When several patterns match a path, the most specific one decides,
 *   segment by segment from the left: literal text beats "{name}suffix",
 *   which beats "{name}". Only routes of that pattern count for the method:
 *   with POST /t/create and GET /t/{id}, GET /t/create is 405 (Allow: POST),
 *   never GET /t/{id} with id "create".
 * - HEAD falls back to a GET route when no HEAD route matches (the server
 *   drops the body of a HEAD response).
 * - The router is written only before the server starts; afterwards it is read
 *   from many threads without locking. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "http/server.h"
#include "util/log.h"

/* Distinct methods remembered for an Allow header; more than this many
 * different methods on one path is not a realistic API. */
#define ROUTER_MAX_ALLOW 16

typedef struct route_seg {
  const char *text; /* literal text, or the literal suffix after "{name}" ("" when none) */
  size_t text_len;
  const char *name; /* parameter name; NULL for a literal segment */
} route_seg;

typedef struct route {
  char *method;
  char *storage; /* the pattern copy that text and name point into */
  route_seg *segs;
  int n_segs;
  http_guard_fn guard; /* NULL: none */
  http_handler_fn fn;
  void *ctx;
} route;

struct http_router {
  route *routes;
  size_t n;
  size_t cap;
};

/* A parameter value located in the raw path, not yet decoded. */
typedef struct param_span {
  const char *p;
  size_t n;
} param_span;

http_router *http_router_new(void) { return calloc(1, sizeof(http_router)); }

void http_router_free(http_router *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n; i++) {
    free(r->routes[i].method);
    free(r->routes[i].storage);
    free(r->routes[i].segs);
  }
  free(r->routes);
  free(r);
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool is_method_char(char c) { return isalnum((unsigned char)c) || c == '-' || c == '_'; }

static bool is_name_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

static bool valid_method(const char *m) {
  if (!*m) return false;
  for (; *m; m++)
    if (!is_method_char(*m)) return false;
  return true;
}

/* Parses one segment in place (seg is NUL-terminated inside the storage copy). */
static bool parse_segment(char *seg, route_seg *out) {
  if (seg[0] != '{') {
    if (strpbrk(seg, "{}")) return false;
    out->text = seg;
    out->text_len = strlen(seg);
    out->name = NULL;
    return true;
  }
  char *close = strchr(seg, '}');
  if (!close || close == seg + 1) return false;
  for (char *p = seg + 1; p < close; p++)
    if (!is_name_char(*p)) return false;
  *close = '\0';
  const char *suffix = close + 1;
  if (strpbrk(suffix, "{}")) return false;
  out->name = seg + 1;
  out->text = suffix;
  out->text_len = strlen(suffix);
  return true;
}

static bool names_unique(const route_seg *segs, int n) {
  for (int i = 0; i < n; i++) {
    if (!segs[i].name) continue;
    for (int j = 0; j < i; j++)
      if (segs[j].name && strcmp(segs[i].name, segs[j].name) == 0) return false;
  }
  return true;
}

/* Splits storage ("/a/{b}/c", modified in place) into rt->segs. An empty
 * segment is allowed only last: "/" and "/a/" end with one; "/a//b" is a typo. */
static bool parse_pattern(route *rt) {
  char *s = rt->storage;
  if (s[0] != '/') return false;
  int n = 1;
  for (const char *p = s + 1; *p; p++)
    if (*p == '/') n++;
  rt->segs = calloc((size_t)n, sizeof *rt->segs);
  if (!rt->segs) return false;
  rt->n_segs = n;
  int n_params = 0;
  char *seg = s + 1;
  for (int i = 0; i < n; i++) {
    char *slash = strchr(seg, '/');
    if (slash) *slash = '\0';
    if (*seg == '\0' && i != n - 1) return false;
    if (!parse_segment(seg, &rt->segs[i])) return false;
    if (rt->segs[i].name && ++n_params > HTTP_MAX_PARAMS) return false;
    if (slash) seg = slash + 1;
  }
  return names_unique(rt->segs, n);
}

static bool router_grow(http_router *r) {
  if (r->n < r->cap) return true;
  size_t cap = r->cap ? r->cap * 2 : 16;
  route *p = realloc(r->routes, cap * sizeof *p);
  if (!p) return false;
  r->routes = p;
  r->cap = cap;
  return true;
}

bool http_router_add(http_router *r, const char *method, const char *pattern, http_handler_fn fn,
                     void *ctx) {
  return http_router_add_guarded(r, method, pattern, NULL, fn, ctx);
}

bool http_router_add_guarded(http_router *r, const char *method, const char *pattern,
                             http_guard_fn guard, http_handler_fn fn, void *ctx) {
  if (!r || !method || !pattern || !fn || !valid_method(method)) return false;
  route rt = {.guard = guard, .fn = fn, .ctx = ctx};
  rt.method = strdup(method);
  rt.storage = strdup(pattern);
  bool ok = rt.method && rt.storage && parse_pattern(&rt) && router_grow(r);
  if (!ok) {
    char q[256];
    LOG_ERROR("http_route_rejected", "method=%s pattern=%s", method,
              log_quote(pattern, q, sizeof q));
    free(rt.method);
    free(rt.storage);
    free(rt.segs);
    return false;
  }
  r->routes[r->n++] = rt;
  return true;
}

/* True when the raw value decodes cleanly to bytes without NUL or '/'. */
static bool value_decodes(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (p[i] != '%') continue;
    if (i + 2 >= n) return false; /* an escape needs two more characters */
    int hi = hex_value(p[i + 1]);
    int lo = hex_value(p[i + 2]);
    if (hi < 0 || lo < 0) return false;
    int c = hi * 16 + lo;
    if (c == 0 || c == '/') return false;
    i += 2;
  }
  return true;
}

static bool segment_matches(const route_seg *s, const char *p, size_t n, param_span *param) {
  if (!s->name) return n == s->text_len && memcmp(p, s->text, n) == 0;
  if (n <= s->text_len) return false; /* the value itself must not be empty */
  size_t vlen = n - s->text_len;
  if (memcmp(p + vlen, s->text, s->text_len) != 0) return false;
  if (!value_decodes(p, vlen)) return false;
  param->p = p;
  param->n = vlen;
  return true;
}

/* Matches the raw path against a route's pattern, recording parameter spans. */
static bool route_matches(const route *rt, const char *path, param_span spans[HTTP_MAX_PARAMS]) {
  if (path[0] != '/') return false;
  const char *p = path + 1;
  int k = 0;
  for (int i = 0; i < rt->n_segs; i++) {
    const char *end = strchr(p, '/');
    if (i == rt->n_segs - 1) {
      if (end) return false;
      end = p + strlen(p);
    } else if (!end) {
      return false;
    }
    if (!segment_matches(&rt->segs[i], p, (size_t)(end - p), &spans[k])) return false;
    if (rt->segs[i].name) k++;
    p = end + 1;
  }
  return true;
}

static char *decode_value(const char *p, size_t n) {
  char *out = malloc(n + 1);
  if (!out) return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] == '%') { /* validated by value_decodes */
      out[o++] = (char)(hex_value(p[i + 1]) * 16 + hex_value(p[i + 2]));
      i += 2;
    } else {
      out[o++] = p[i];
    }
  }
  out[o] = '\0';
  return out;
}

/* Decodes the matched route's parameters into out; false when memory runs out. */
static bool decode_params(const route *rt, const param_span *spans, http_param *out, int *out_n) {
  int k = 0;
  for (int i = 0; i < rt->n_segs; i++) {
    if (!rt->segs[i].name) continue;
    char *v = decode_value(spans[k].p, spans[k].n);
    if (!v) {
      for (int j = 0; j < k; j++) {
        free(out[j].value);
        out[j].value = NULL;
      }
      return false;
    }
    out[k].name = rt->segs[i].name;
    out[k].value = v;
    k++;
  }
  if (out_n) *out_n = k;
  return true;
}

static void allow_note(const char **methods, int *n, const char *m) {
  for (int i = 0; i < *n; i++)
    if (strcmp(methods[i], m) == 0) return;
  if (*n < ROUTER_MAX_ALLOW) methods[(*n)++] = m;
}

/* Joins methods with ", "; a method that does not fit whole is left out. */
static void allow_join(const char **methods, int n, char *allow, size_t allow_size) {
  if (!allow || allow_size == 0) return;
  size_t len = 0;
  allow[0] = '\0';
  for (int i = 0; i < n; i++) {
    size_t sep = len ? 2 : 0;
    size_t mlen = strlen(methods[i]);
    if (len + sep + mlen + 1 > allow_size) break;
    if (sep) memcpy(allow + len, ", ", 2);
    memcpy(allow + len + sep, methods[i], mlen + 1);
    len += sep + mlen;
  }
}

/* How specific a segment is: literal text beats a parameter with a literal
 * suffix, which beats a bare parameter. */
static int seg_rank(const route_seg *s) {
  if (!s->name) return 2;
  return s->text_len ? 1 : 0;
}

/* Orders two patterns that match the same path (so they have as many
 * segments): > 0 when a is more specific, segment by segment from the left. */
static int specificity_cmp(const route *a, const route *b) {
  for (int i = 0; i < a->n_segs && i < b->n_segs; i++) {
    int d = seg_rank(&a->segs[i]) - seg_rank(&b->segs[i]);
    if (d) return d;
  }
  return 0;
}

http_route_result http_router_match(http_router *r, const char *method, const char *path,
                                    http_handler_fn *fn, http_guard_fn *guard, void **ctx,
                                    http_param *out_params, int *out_n, char *allow,
                                    size_t allow_size) {
  if (out_n) *out_n = 0;
  if (allow && allow_size) allow[0] = '\0';
  if (!r || !method || !path) return HTTP_ROUTE_NOT_FOUND;
  param_span spans[HTTP_MAX_PARAMS];
  /* The most specific pattern that matches the path decides: a path that a
   * literal route spells out is never taken by a parameter of another. */
  const route *best = NULL;
  for (size_t i = 0; i < r->n; i++) {
    const route *rt = &r->routes[i];
    if ((!best || specificity_cmp(rt, best) > 0) && route_matches(rt, path, spans)) best = rt;
  }
  if (!best) return HTTP_ROUTE_NOT_FOUND;
  bool is_head = strcmp(method, "HEAD") == 0;
  const route *found = NULL;
  const route *head_fallback = NULL;
  const char *methods[ROUTER_MAX_ALLOW];
  int n_methods = 0;
  for (size_t i = 0; i < r->n && !found; i++) {
    const route *rt = &r->routes[i];
    if (specificity_cmp(rt, best) != 0 || !route_matches(rt, path, spans)) continue;
    if (strcmp(rt->method, method) == 0) {
      found = rt; /* spans now hold this route's parameters */
    } else {
      allow_note(methods, &n_methods, rt->method);
      if (is_head && !head_fallback && strcmp(rt->method, "GET") == 0) head_fallback = rt;
    }
  }
  if (!found && head_fallback) {
    found = head_fallback;
    route_matches(found, path, spans); /* refill spans, overwritten by later routes */
  }
  if (!found) {
    allow_join(methods, n_methods, allow, allow_size);
    return HTTP_ROUTE_BAD_METHOD;
  }
  if (out_params && !decode_params(found, spans, out_params, out_n)) {
    /* The result has no way to say "out of memory"; a 404 is the safe refusal. */
    LOG_ERROR("http_route_params_out_of_memory", "path_len=%zu", strlen(path));
    return HTTP_ROUTE_NOT_FOUND;
  }
  if (fn) *fn = found->fn;
  if (guard) *guard = found->guard;
  if (ctx) *ctx = found->ctx;
  return HTTP_ROUTE_FOUND;
}
