/* fuzz_router.c - method + path matching (http/server.h: http_router_match).
 *
 * The route table is the real server's (the routes src/api/ registers, in
 * the same order), plus the shapes the coming dialects need: a parameter
 * with a literal suffix, two parameters, a trailing slash. The input is a
 * request line, "METHOD PATH" (no space: a GET of the whole input).
 *
 * A reference matcher written from the router's documented rules (split on
 * '/', an empty segment is a segment, "{name}suffix" takes a non-empty value
 * that percent-decodes cleanly and not to NUL or '/', routes tried in order among equals,
 * HEAD falls back to GET) predicts the answer: which route, which decoded
 * parameters, or 405 with which Allow list, or 404 (the most specific
 * pattern that matches decides: literal beats "{name}suffix" beats "{name}",
 * left to right). The answer must also be
 * the same when asked again, and a short Allow buffer gets whole methods
 * only. */
#include <stdbool.h>

#include "fuzz_check.h"
#include "http/server.h"

typedef struct fixture_route {
  const char *method;
  const char *pattern;
  bool guarded; /* added with a guard, as every authenticated route is */
} fixture_route;

static const fixture_route fixture[] = {
    /* api/health.c, api/native.c, api/files.c, api/admin.c, api/admin_accounts.c */
    {"GET", "/healthz", false},
    {"POST", "/api/banana/create-async", true},
    {"GET", "/api/banana/credits", true},
    {"GET", "/api/banana/{uid}", true},
    {"GET", "/files/{name}", false},
    {"GET", "/admin/providers", true},
    {"GET", "/metrics", true},
    {"POST", "/admin/accounts", true},
    {"GET", "/admin/accounts", true},
    {"GET", "/admin/accounts/{email}", true},
    {"POST", "/admin/accounts/{email}/topup", true},
    {"POST", "/admin/accounts/{email}/refund", true},
    {"GET", "/admin/accounts/{email}/ledger", true},
    {"PUT", "/admin/accounts/{email}/limits", true},
    {"POST", "/admin/accounts/{email}/disable", true},
    {"POST", "/admin/accounts/{email}/enable", true},
    {"POST", "/admin/accounts/{email}/keys", true},
    {"GET", "/admin/accounts/{email}/keys", true},
    {"DELETE", "/admin/keys/{id}", true},
    {"GET", "/admin/ledger/verify", true},
    /* the coming dialects' shapes */
    {"POST", "/v1beta/models/{model}:generateContent", true},
    {"POST", "/v1beta/models/{model}:streamGenerateContent", true},
    {"GET", "/v1/models/", false},
    {"GET", "/v1/tasks/{task}/images/{index}.png", false},
    {"HEAD", "/v1/tasks/{task}", false},
    {"GET", "/v1/tasks/{task}", false},
};
#define N_FIXTURE (sizeof fixture / sizeof fixture[0])

static void dummy_handler(http_request *req, void *ctx) {}
static bool dummy_guard(http_request *req, void *ctx) { return true; }

static http_router *the_router(void) {
  static http_router *r;
  if (!r) {
    r = http_router_new();
    FUZZ_CHECK(r);
    for (size_t i = 0; i < N_FIXTURE; i++)
      FUZZ_CHECK(http_router_add_guarded(r, fixture[i].method, fixture[i].pattern,
                                         fixture[i].guarded ? dummy_guard : NULL, dummy_handler,
                                         (void *)&fixture[i]));
  }
  return r;
}

/* ---- the reference matcher ---- */

typedef struct ref_params {
  int n;
  char name[HTTP_MAX_PARAMS][32];
  char *value[HTTP_MAX_PARAMS]; /* each as long as the path, so any value fits */
} ref_params;

static void ref_params_init(ref_params *p, const char *path) {
  p->n = 0;
  for (int i = 0; i < HTTP_MAX_PARAMS; i++) {
    p->value[i] = malloc(strlen(path) + 1);
    FUZZ_CHECK(p->value[i]);
  }
}

static void ref_params_free(ref_params *p) {
  for (int i = 0; i < HTTP_MAX_PARAMS; i++) free(p->value[i]);
}

static int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes n bytes into out (room for n + 1); false on a bad escape or a NUL or '/'. */
static bool ref_decode(const char *p, size_t n, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)p[i];
    if (c == '%') {
      if (n - i < 3 || hex(p[i + 1]) < 0 || hex(p[i + 2]) < 0) return false;
      c = hex(p[i + 1]) * 16 + hex(p[i + 2]);
      if (c == 0 || c == '/') return false;
      i += 2;
    }
    out[o++] = (char)c;
  }
  out[o] = '\0';
  return true;
}

/* The n-th '/'-separated segment after the leading '/': start and length. */
static int split(const char *s, const char **starts, size_t *lens, int max) {
  int n = 0;
  const char *p = s + 1;
  for (;;) {
    const char *slash = strchr(p, '/');
    size_t len = slash ? (size_t)(slash - p) : strlen(p);
    if (n == max) return -1;
    starts[n] = p;
    lens[n++] = len;
    if (!slash) return n;
    p = slash + 1;
  }
}

static bool ref_match(const char *pattern, const char *path, ref_params *out) {
  enum { MAX_SEGS = 64 };
  const char *ps[MAX_SEGS], *qs[MAX_SEGS];
  size_t pl[MAX_SEGS], ql[MAX_SEGS];
  out->n = 0;
  if (path[0] != '/') return false;
  int np = split(pattern, ps, pl, MAX_SEGS);
  int nq = split(path, qs, ql, MAX_SEGS);
  if (nq < 0 || np != nq) return false;
  for (int i = 0; i < np; i++) {
    if (ps[i][0] != '{') {
      if (pl[i] != ql[i] || memcmp(ps[i], qs[i], pl[i]) != 0) return false;
      continue;
    }
    const char *close = memchr(ps[i], '}', pl[i]);
    size_t name_len = (size_t)(close - ps[i]) - 1;
    size_t suffix_len = pl[i] - name_len - 2;
    if (ql[i] <= suffix_len) return false;
    size_t value_len = ql[i] - suffix_len;
    if (memcmp(qs[i] + value_len, close + 1, suffix_len) != 0) return false;
    FUZZ_CHECK(out->n < HTTP_MAX_PARAMS && name_len < sizeof out->name[0]);
    if (!ref_decode(qs[i], value_len, out->value[out->n])) return false;
    memcpy(out->name[out->n], ps[i] + 1, name_len);
    out->name[out->n][name_len] = '\0';
    out->n++;
  }
  return true;
}

typedef struct expectation {
  http_route_result result;
  const fixture_route *route;
  ref_params params;
  char allow[512];
} expectation;

/* How specific a pattern is, segment by segment: literal 2, "{name}suffix"
 * 1, "{name}" 0; patterns compare left to right. */
static int ref_specificity_cmp(const char *a, const char *b) {
  enum { MAX_SEGS = 64 };
  const char *as[MAX_SEGS], *bs[MAX_SEGS];
  size_t al[MAX_SEGS], bl[MAX_SEGS];
  int na = split(a, as, al, MAX_SEGS), nb = split(b, bs, bl, MAX_SEGS);
  for (int i = 0; i < na && i < nb; i++) {
    int ra = as[i][0] != '{' ? 2 : as[i][al[i] - 1] != '}' ? 1 : 0;
    int rb = bs[i][0] != '{' ? 2 : bs[i][bl[i] - 1] != '}' ? 1 : 0;
    if (ra != rb) return ra - rb;
  }
  return 0;
}

/* e->params must have been initialised for path. */
static void predict(const char *method, const char *path, expectation *e) {
  e->result = HTTP_ROUTE_NOT_FOUND;
  e->route = NULL;
  e->allow[0] = '\0';
  /* The most specific pattern that matches decides; only its routes count. */
  const fixture_route *best = NULL;
  for (size_t i = 0; i < N_FIXTURE; i++)
    if (ref_match(fixture[i].pattern, path, &e->params) &&
        (!best || ref_specificity_cmp(fixture[i].pattern, best->pattern) > 0))
      best = &fixture[i];
  const fixture_route *head_fallback = NULL;
  const char *others[N_FIXTURE]; /* other methods for the path, each once, in order added */
  size_t n_others = 0;
  for (size_t i = 0; i < N_FIXTURE && best; i++) {
    if (ref_specificity_cmp(fixture[i].pattern, best->pattern) != 0) continue;
    if (!ref_match(fixture[i].pattern, path, &e->params)) continue;
    if (strcmp(fixture[i].method, method) == 0) {
      e->result = HTTP_ROUTE_FOUND;
      e->route = &fixture[i];
      return;
    }
    if (!head_fallback && strcmp(method, "HEAD") == 0 && strcmp(fixture[i].method, "GET") == 0)
      head_fallback = &fixture[i];
    bool listed = false;
    for (size_t k = 0; k < n_others && !listed; k++)
      listed = strcmp(others[k], fixture[i].method) == 0;
    if (!listed) others[n_others++] = fixture[i].method;
  }
  if (head_fallback) {
    e->result = HTTP_ROUTE_FOUND;
    e->route = head_fallback;
    FUZZ_CHECK(ref_match(head_fallback->pattern, path, &e->params));
    return;
  }
  e->params.n = 0;
  if (n_others == 0) return;
  e->result = HTTP_ROUTE_BAD_METHOD;
  for (size_t k = 0; k < n_others; k++) {
    if (k) strcat(e->allow, ", ");
    strcat(e->allow, others[k]);
  }
}

/* ---- the checks ---- */

static void free_params(http_param *params, int n) {
  for (int i = 0; i < n; i++) free(params[i].value);
}

static void check(const char *method, const char *path, size_t short_allow) {
  http_router *r = the_router();
  expectation e;
  ref_params_init(&e.params, path);
  predict(method, path, &e);

  http_handler_fn fn = NULL;
  http_guard_fn guard = NULL;
  void *ctx = NULL;
  http_param params[HTTP_MAX_PARAMS];
  int n = -1;
  char allow[512];
  http_route_result got =
      http_router_match(r, method, path, &fn, &guard, &ctx, params, &n, allow, sizeof allow);
  FUZZ_CHECK(got == e.result);
  if (got == HTTP_ROUTE_FOUND) {
    FUZZ_CHECK(ctx == e.route && fn == dummy_handler);
    FUZZ_CHECK(guard == (e.route->guarded ? dummy_guard : NULL));
    FUZZ_CHECK(n == e.params.n);
    for (int i = 0; i < n; i++) {
      FUZZ_CHECK(strcmp(params[i].name, e.params.name[i]) == 0);
      FUZZ_CHECK(params[i].value[0] != '\0' && strchr(params[i].value, '/') == NULL);
      FUZZ_CHECK(strcmp(params[i].value, e.params.value[i]) == 0);
    }
    /* Asked again, the same answer: the router keeps no state between matches. */
    http_param again[HTTP_MAX_PARAMS];
    int n_again = -1;
    void *ctx_again = NULL;
    FUZZ_CHECK(http_router_match(r, method, path, NULL, NULL, &ctx_again, again, &n_again, NULL,
                                 0) == HTTP_ROUTE_FOUND);
    FUZZ_CHECK(ctx_again == ctx && n_again == n);
    for (int i = 0; i < n; i++) FUZZ_CHECK(strcmp(again[i].value, params[i].value) == 0);
    free_params(again, n_again);
    free_params(params, n);
    /* Without parameter outputs, still found. */
    FUZZ_CHECK(http_router_match(r, method, path, NULL, NULL, NULL, NULL, NULL, NULL, 0) ==
               HTTP_ROUTE_FOUND);
    ref_params_free(&e.params);
    return;
  }
  FUZZ_CHECK(n == 0);
  FUZZ_CHECK(strcmp(allow, e.allow) == 0);

  /* A short Allow buffer: as many whole methods from the front of the list as
   * fit, never a piece of one. */
  char *small = malloc(short_allow ? short_allow : 1);
  FUZZ_CHECK(small);
  FUZZ_CHECK(http_router_match(r, method, path, NULL, NULL, NULL, NULL, NULL, small,
                               short_allow) == got);
  if (short_allow) {
    size_t k = strlen(small);
    FUZZ_CHECK(k < short_allow);
    FUZZ_CHECK(strncmp(small, e.allow, k) == 0);
    if (e.allow[k] != '\0') {
      /* Cut at a method boundary, and only because the next method did not fit. */
      const char *next = k ? e.allow + k + 2 : e.allow;
      FUZZ_CHECK(k == 0 || e.allow[k] == ',');
      FUZZ_CHECK((k ? k + 2 : 0) + strcspn(next, ",") + 1 > short_allow);
    }
  }
  free(small);
  ref_params_free(&e.params);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *line = fuzz_cstring(data, size);
  char *space = strchr(line, ' ');
  const char *method = "GET", *path = line;
  if (space) {
    *space = '\0';
    method = line;
    path = space + 1;
  }
  check(method, path, size % 24);
  free(line);
  return 0;
}
