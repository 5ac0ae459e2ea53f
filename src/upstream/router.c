/* router.c - routes, live health, circuit breakers, weighted choice. See router.h. */
#include "upstream/router.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "util/timeutil.h"

#define ROUTER_MAX_PROVIDERS 32
#define ROUTER_MAX_ROUTES 128
#define ROUTER_CLASSES PROVIDER_ERR_CLASSES
/* A 429 may ask for a long pause; past this the route is tried again anyway
 * and the breaker decides. */
#define ROUTER_MAX_COOLDOWN_MS 60000

typedef enum { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN } breaker_state;

static const char *const breaker_names[] = {"closed", "open", "half_open"};

typedef struct provider_entry {
  provider *p;
  int max_concurrency; /* 0 = unlimited */
  int in_flight;
} provider_entry;

struct router_route {
  char model[48];
  char upstream_model[128];
  int weight;
  provider_entry *prov;

  uint32_t history;     /* last outcomes that count, newest in bit 0: 1 = success */
  int history_len;      /* up to ROUTER_WINDOW */
  double latency_ms;    /* EWMA of successful attempts */
  int in_flight;
  int consecutive_failures;
  breaker_state state;
  int64_t open_until;   /* mono ms, when open */
  int64_t cool_until;   /* mono ms, after a 429 with a pause */
  int64_t last_failure; /* mono ms of the last failure that counted; 0 = none */
  bool probe_in_flight; /* half-open: the one probe is out */
  int64_t opened_at;     /* mono ms the breaker last opened */

  uint64_t attempts;
  uint64_t successes;
  uint64_t errors[ROUTER_CLASSES];
  uint64_t breaker_opened;
};

struct router {
  pthread_mutex_t lock;
  router_config cfg;
  provider_entry providers[ROUTER_MAX_PROVIDERS];
  int n_providers;
  router_route *routes[ROUTER_MAX_ROUTES];
  int n_routes;
  unsigned rng;
};

router *router_create(const router_config *cfg) {
  router *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->cfg = *cfg;
  if (r->cfg.breaker_failures <= 0) r->cfg.breaker_failures = 5;
  if (r->cfg.breaker_open_ms <= 0) r->cfg.breaker_open_ms = 5000;
  if (r->cfg.recovery_ms <= 0) r->cfg.recovery_ms = 30000;
  r->rng = (unsigned)time_mono_ms() ^ 0x9e3779b9u;
  pthread_mutex_init(&r->lock, NULL);
  return r;
}

void router_destroy(router *r) {
  if (!r) return;
  for (int i = 0; i < r->n_providers; i++) r->providers[i].p->ops->destroy(r->providers[i].p);
  for (int i = 0; i < r->n_routes; i++) free(r->routes[i]);
  pthread_mutex_destroy(&r->lock);
  free(r);
}

static provider_entry *find_provider(router *r, const char *name) {
  for (int i = 0; i < r->n_providers; i++)
    if (strcmp(r->providers[i].p->name, name) == 0) return &r->providers[i];
  return NULL;
}

int router_add_provider(router *r, provider *p, int max_concurrency) {
  pthread_mutex_lock(&r->lock);
  int rc = -1;
  if (r->n_providers < ROUTER_MAX_PROVIDERS && !find_provider(r, p->name)) {
    r->providers[r->n_providers++] = (provider_entry){p, max_concurrency > 0 ? max_concurrency : 0, 0};
    rc = 0;
  }
  pthread_mutex_unlock(&r->lock);
  return rc;
}

int router_add_route(router *r, const char *model, const char *provider_name,
                     const char *upstream_model, int weight) {
  router_route *rt = calloc(1, sizeof *rt);
  if (!rt) return -1;
  snprintf(rt->model, sizeof rt->model, "%s", model);
  snprintf(rt->upstream_model, sizeof rt->upstream_model, "%s", upstream_model);
  rt->weight = weight > 0 ? weight : 1;
  pthread_mutex_lock(&r->lock);
  rt->prov = find_provider(r, provider_name);
  int rc = -1;
  if (rt->prov && r->n_routes < ROUTER_MAX_ROUTES) {
    r->routes[r->n_routes++] = rt;
    rc = 0;
  }
  pthread_mutex_unlock(&r->lock);
  if (rc < 0) free(rt);
  return rc;
}

bool router_has_provider(router *r, const char *name) {
  pthread_mutex_lock(&r->lock);
  bool found = find_provider(r, name) != NULL;
  pthread_mutex_unlock(&r->lock);
  return found;
}

bool router_has_untried(router *r, const char *model, router_route *const *tried, size_t n_tried) {
  pthread_mutex_lock(&r->lock);
  bool found = false;
  for (int i = 0; i < r->n_routes && !found; i++) {
    if (strcmp(r->routes[i]->model, model) != 0) continue;
    bool seen = false;
    for (size_t k = 0; k < n_tried && !seen; k++) seen = tried[k] == r->routes[i];
    found = !seen;
  }
  pthread_mutex_unlock(&r->lock);
  return found;
}

bool router_serves(router *r, const char *model) { return router_has_untried(r, model, NULL, 0); }

static double success_rate(const router_route *rt) {
  if (rt->history_len == 0) return 1.0;
  uint32_t mask = rt->history_len >= 32 ? 0xffffffffu : ((1u << rt->history_len) - 1);
  return (double)__builtin_popcount(rt->history & mask) / rt->history_len;
}

/* Whether rt can take a call now; if not, *wait_ms is when it may. Moves an
 * open breaker whose time is up to half-open. */
static bool route_usable(router_route *rt, int64_t now, int64_t *wait_ms) {
  *wait_ms = 0;
  if (rt->state == BREAKER_OPEN) {
    if (now < rt->open_until) {
      *wait_ms = rt->open_until - now;
      return false;
    }
    rt->state = BREAKER_HALF_OPEN;
    rt->probe_in_flight = false;
  }
  if (rt->state == BREAKER_HALF_OPEN && rt->probe_in_flight) {
    *wait_ms = 100; /* the probe decides soon */
    return false;
  }
  if (now < rt->cool_until) {
    *wait_ms = rt->cool_until - now;
    return false;
  }
  if (rt->prov->max_concurrency && rt->prov->in_flight >= rt->prov->max_concurrency) {
    *wait_ms = 50; /* a slot frees when any call of this provider ends */
    return false;
  }
  return true;
}

static bool tried(const router_route *rt, router_route *const *avoid, size_t n_avoid) {
  for (size_t i = 0; i < n_avoid; i++)
    if (avoid[i] == rt) return true;
  return false;
}

/* The success rate, fading back to 1 as time passes without failures. */
static double health(const router *r, const router_route *rt, int64_t now) {
  double s = success_rate(rt);
  if (rt->last_failure > 0 && s < 1.0) {
    double faded = (double)(now - rt->last_failure) / r->cfg.recovery_ms;
    if (faded > 1.0) faded = 1.0;
    if (faded > 0) s += (1.0 - s) * faded;
  }
  return s < 0.05 ? 0.05 : s; /* a bad route keeps a trickle of traffic */
}

static double effective_weight(const router *r, const router_route *rt, int64_t now) {
  double h = health(r, rt, now);
  return rt->weight * h * h;
}

router_route *router_pick(router *r, const char *model, router_route *const *avoid,
                          size_t n_avoid, int64_t now_mono_ms, int64_t *retry_in_ms) {
  router_route *usable[ROUTER_MAX_ROUTES];
  int n_fresh = 0, n_tried = 0;
  int64_t soonest = 0;
  pthread_mutex_lock(&r->lock);
  /* Fresh (untried) routes fill the array from the front, tried ones from the back. */
  for (int i = 0; i < r->n_routes; i++) {
    router_route *rt = r->routes[i];
    if (strcmp(rt->model, model) != 0) continue;
    int64_t wait;
    if (!route_usable(rt, now_mono_ms, &wait)) {
      if (soonest == 0 || wait < soonest) soonest = wait;
      continue;
    }
    if (tried(rt, avoid, n_avoid))
      usable[ROUTER_MAX_ROUTES - 1 - n_tried++] = rt;
    else
      usable[n_fresh++] = rt;
  }
  router_route **pool = n_fresh ? usable : &usable[ROUTER_MAX_ROUTES - n_tried];
  int n = n_fresh ? n_fresh : n_tried;
  router_route *chosen = NULL;
  if (n > 0) {
    double total = 0;
    for (int i = 0; i < n; i++) total += effective_weight(r, pool[i], now_mono_ms);
    double x = (double)rand_r(&r->rng) / ((double)RAND_MAX + 1.0) * total;
    chosen = pool[n - 1];
    for (int i = 0; i < n; i++) {
      x -= effective_weight(r, pool[i], now_mono_ms);
      if (x < 0) {
        chosen = pool[i];
        break;
      }
    }
    chosen->in_flight++;
    chosen->attempts++;
    chosen->prov->in_flight++;
    if (chosen->state == BREAKER_HALF_OPEN) chosen->probe_in_flight = true;
  }
  pthread_mutex_unlock(&r->lock);
  if (!chosen && retry_in_ms) *retry_in_ms = soonest > 0 ? soonest : 1000;
  return chosen;
}

void router_release(router *r, router_route *rt) {
  pthread_mutex_lock(&r->lock);
  rt->in_flight--;
  rt->prov->in_flight--;
  rt->attempts--;
  if (rt->state == BREAKER_HALF_OPEN) rt->probe_in_flight = false;
  pthread_mutex_unlock(&r->lock);
}

static void push_history(router_route *rt, bool ok) {
  rt->history = (rt->history << 1) | (ok ? 1u : 0u);
  if (rt->history_len < ROUTER_WINDOW) rt->history_len++;
}

static void open_breaker(router *r, router_route *rt, int64_t now) {
  rt->state = BREAKER_OPEN;
  rt->opened_at = now;
  rt->open_until = now + r->cfg.breaker_open_ms;
  rt->probe_in_flight = false;
  rt->breaker_opened++;
}

void router_report(router *r, router_route *rt, const provider_outcome *o, int64_t latency_ms,
                   int64_t now_mono_ms) {
  pthread_mutex_lock(&r->lock);
  rt->in_flight--;
  rt->prov->in_flight--;
  /* A call started before the breaker opened can report while it is
   * half-open: that late answer is not the probe, and must neither close
   * nor reopen the breaker, nor free the probe's slot. No call but the probe
   * can start on a route after its breaker opened. */
  int64_t call_started = now_mono_ms - (latency_ms > 0 ? latency_ms : 0);
  bool was_probe = rt->state == BREAKER_HALF_OPEN && rt->probe_in_flight &&
                   call_started >= rt->opened_at;
  if (was_probe) rt->probe_in_flight = false;
  provider_error_class cls = o->status == PROVIDER_OK ? PROVIDER_ERR_NONE : o->error_class;
  if ((unsigned)cls < ROUTER_CLASSES) rt->errors[cls]++;
  if (cls == PROVIDER_ERR_CANCELED) {
    /* We stopped the call before the upstream finished: it proves neither
     * health nor sickness. No history, the failure streak stands, and a
     * canceled probe leaves the breaker half-open for the next pick to probe. */
  } else if (o->status == PROVIDER_OK || !provider_error_class_hurts_route(cls)) {
    /* The upstream answered sensibly: the route is alive. */
    if (o->status == PROVIDER_OK) {
      rt->successes++;
      push_history(rt, true);
      rt->latency_ms = rt->latency_ms == 0 ? (double)latency_ms
                                           : 0.8 * rt->latency_ms + 0.2 * (double)latency_ms;
    }
    rt->consecutive_failures = 0;
    if (was_probe) rt->state = BREAKER_CLOSED;
  } else {
    push_history(rt, false);
    rt->consecutive_failures++;
    rt->last_failure = now_mono_ms > 0 ? now_mono_ms : 1;
    if (cls == PROVIDER_ERR_RATE_LIMITED && o->retry_after_ms > 0) {
      int64_t pause = o->retry_after_ms < ROUTER_MAX_COOLDOWN_MS ? o->retry_after_ms
                                                                 : ROUTER_MAX_COOLDOWN_MS;
      if (now_mono_ms + pause > rt->cool_until) rt->cool_until = now_mono_ms + pause;
    }
    if (was_probe || (rt->state == BREAKER_CLOSED &&
                      rt->consecutive_failures >= r->cfg.breaker_failures))
      open_breaker(r, rt, now_mono_ms);
  }
  pthread_mutex_unlock(&r->lock);
}

provider *router_route_provider(const router_route *rt) { return rt->prov->p; }
const char *router_route_upstream_model(const router_route *rt) { return rt->upstream_model; }

/* The state as a reader should see it: an open breaker whose time is up is
 * reported half-open (it will probe on the next pick). */
static breaker_state shown_state(const router_route *rt, int64_t now) {
  if (rt->state == BREAKER_OPEN && now >= rt->open_until) return BREAKER_HALF_OPEN;
  return rt->state;
}

char *router_health_json(router *r, int64_t now_mono_ms) {
  json_t *provs = json_array(), *routes = json_array();
  pthread_mutex_lock(&r->lock);
  for (int i = 0; i < r->n_providers; i++) {
    provider_entry *pe = &r->providers[i];
    json_array_append_new(provs, json_pack("{s:s, s:s, s:i, s:i}", "name", pe->p->name, "kind",
                                           pe->p->ops->kind, "in_flight", pe->in_flight,
                                           "max_concurrency", pe->max_concurrency));
  }
  for (int i = 0; i < r->n_routes; i++) {
    router_route *rt = r->routes[i];
    json_t *errors = json_object();
    for (int c = 1; c < ROUTER_CLASSES; c++)
      if (rt->errors[c])
        json_object_set_new(errors, provider_error_class_name((provider_error_class)c),
                            json_integer((json_int_t)rt->errors[c]));
    int64_t open_ms = rt->state == BREAKER_OPEN && rt->open_until > now_mono_ms
                          ? rt->open_until - now_mono_ms
                          : 0;
    int64_t cool_ms = rt->cool_until > now_mono_ms ? rt->cool_until - now_mono_ms : 0;
    json_array_append_new(
        routes,
        json_pack("{s:s, s:s, s:s, s:i, s:s, s:f, s:f, s:f, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:o}",
                  "model", rt->model, "provider", rt->prov->p->name, "upstream_model",
                  rt->upstream_model, "weight", rt->weight, "state",
                  breaker_names[shown_state(rt, now_mono_ms)], "success_rate", success_rate(rt),
                  "health", health(r, rt, now_mono_ms),
                  "latency_ms", rt->latency_ms, "in_flight", rt->in_flight,
                  "consecutive_failures", rt->consecutive_failures, "attempts",
                  (json_int_t)rt->attempts, "successes", (json_int_t)rt->successes,
                  "breaker_opened", (json_int_t)rt->breaker_opened, "open_for_ms",
                  (json_int_t)open_ms, "cooldown_ms", (json_int_t)cool_ms, "errors", errors));
  }
  pthread_mutex_unlock(&r->lock);
  json_t *doc = json_pack("{s:o, s:o}", "providers", provs, "routes", routes);
  char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  return text;
}

void router_metrics(router *r, buf *out, int64_t now_mono_ms) {
  pthread_mutex_lock(&r->lock);
  buf_append_str(out, "# HELP imgate_route_attempts_total Upstream attempts started per route.\n"
                      "# TYPE imgate_route_attempts_total counter\n");
  for (int i = 0; i < r->n_routes; i++) {
    router_route *rt = r->routes[i];
    buf_printf(out,
               "imgate_route_attempts_total{model=\"%s\",provider=\"%s\",upstream_model=\"%s\"} "
               "%llu\n",
               rt->model, rt->prov->p->name, rt->upstream_model, (unsigned long long)rt->attempts);
  }
  buf_append_str(out, "# HELP imgate_route_outcomes_total Attempt outcomes per route and class.\n"
                      "# TYPE imgate_route_outcomes_total counter\n");
  for (int i = 0; i < r->n_routes; i++) {
    router_route *rt = r->routes[i];
    for (int c = 0; c < ROUTER_CLASSES; c++) {
      uint64_t v = c == 0 ? rt->successes : rt->errors[c];
      if (c != 0 && v == 0) continue;
      buf_printf(out,
                 "imgate_route_outcomes_total{model=\"%s\",provider=\"%s\",class=\"%s\"} %llu\n",
                 rt->model, rt->prov->p->name,
                 c == 0 ? "success" : provider_error_class_name((provider_error_class)c),
                 (unsigned long long)v);
    }
  }
  static const char *const gauges[][2] = {
      {"imgate_route_in_flight", "Upstream calls in flight per route."},
      {"imgate_route_success_rate", "Success rate over the last attempts that count."},
      {"imgate_route_latency_ms", "Moving average latency of successful attempts."},
      {"imgate_route_breaker_open", "1 when the route's circuit breaker is open."},
  };
  for (size_t g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
    buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g][0], gauges[g][1], gauges[g][0]);
    for (int i = 0; i < r->n_routes; i++) {
      router_route *rt = r->routes[i];
      double v = g == 0   ? rt->in_flight
                 : g == 1 ? success_rate(rt)
                 : g == 2 ? rt->latency_ms
                          : (shown_state(rt, now_mono_ms) == BREAKER_OPEN ? 1.0 : 0.0);
      buf_printf(out, "%s{model=\"%s\",provider=\"%s\"} %g\n", gauges[g][0], rt->model,
                 rt->prov->p->name, v);
    }
  }
  pthread_mutex_unlock(&r->lock);
}

int64_t router_expected_ms(router *r, const char *model, const char *provider_name) {
  double sum = 0, own = 0;
  int n = 0;
  pthread_mutex_lock(&r->lock);
  for (int i = 0; i < r->n_routes; i++) {
    const router_route *rt = r->routes[i];
    if (strcmp(rt->model, model) != 0 || rt->latency_ms <= 0) continue;
    if (provider_name && strcmp(rt->prov->p->name, provider_name) == 0) own = rt->latency_ms;
    sum += rt->latency_ms;
    n++;
  }
  pthread_mutex_unlock(&r->lock);
  if (own > 0) return (int64_t)own;
  return n ? (int64_t)(sum / n) : 0;
}
