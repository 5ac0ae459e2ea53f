/* router.h - chooses the upstream route for each attempt by live health.
 *
 * A route is (provider instance, upstream model id, weight) serving one
 * catalog model. Per route the router keeps: the outcome of the last
 * ROUTER_WINDOW attempts (the rolling success rate), an exponentially weighted
 * latency, the calls in flight, and a circuit breaker:
 *
 *   closed --(breaker_failures consecutive failures)--> open
 *   open --(breaker_open_ms elapsed)--> half-open: one probe call at a time
 *   half-open --probe succeeds--> closed;  --probe fails--> open again
 *
 * Only failures that say something about the route count (timeouts, 5xx,
 * 429, bad keys: provider_error_class_hurts_route); a moderated prompt or a
 * bad request does not. A canceled call counts neither way: it does not
 * reset the failure streak, and a canceled probe only frees the probe's
 * slot. A pick chooses at random among usable routes with a
 * probability proportional to weight x health^2, preferring routes the task
 * has not tried yet, so a retry goes elsewhere when it can. health is the
 * success rate, fading back to 1 over recovery_ms after the route's last
 * failure: a route only shows it recovered by being tried, so a penalty that
 * never faded would starve a route that once had a bad minute. A 429 with a
 * pause (Retry-After, RetryInfo) rests the route for that long.
 *
 * Thread-safe: one mutex; picks and reports are O(routes of the model). */
#ifndef IMGATE_ROUTER_H
#define IMGATE_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "upstream/provider.h"
#include "util/buf.h"

#define ROUTER_WINDOW 32

typedef struct router_config {
  int breaker_failures; /* consecutive route failures that open the breaker (default 5) */
  int breaker_open_ms;  /* how long it stays open before a probe (default 5000) */
  int recovery_ms;      /* how long a failure weighs on the route's share (default 30000) */
} router_config;

typedef struct router router;
typedef struct router_route router_route; /* opaque; valid until router_destroy */

router *router_create(const router_config *cfg);
/* Destroys every provider the router owns, then the router. */
void router_destroy(router *r);

/* Adds a provider instance; on success the router takes ownership. max_concurrency
 * caps its calls in flight across routes (0 = unlimited). Returns 0, or -1
 * when the name is taken (then the caller still owns p). */
int router_add_provider(router *r, provider *p, int max_concurrency);
/* Adds a route for model. Returns 0, or -1 when the provider is unknown. */
int router_add_route(router *r, const char *model, const char *provider_name,
                     const char *upstream_model, int weight);
/* True when a provider of this name was added. */
bool router_has_provider(router *r, const char *name);
/* True when at least one route serves model. */
bool router_serves(router *r, const char *model);
/* True when a route serves model that is not among tried. */
bool router_has_untried(router *r, const char *model, router_route *const *tried, size_t n_tried);

/* Picks a route for one attempt and counts it in flight. avoid lists routes
 * this task already tried (preferred against, not forbidden). Returns NULL
 * when no route can take a call now (all open, or at their concurrency cap);
 * then *retry_in_ms says when one may (>= 1). */
router_route *router_pick(router *r, const char *model, router_route *const *avoid,
                          size_t n_avoid, int64_t now_mono_ms, int64_t *retry_in_ms);
/* Gives a picked route back unused (the attempt never started): no health
 * change. Either this or router_report, once per successful pick. */
void router_release(router *r, router_route *route);
/* Reports the attempt's end (exactly once per successful pick). */
void router_report(router *r, router_route *route, const provider_outcome *o,
                   int64_t latency_ms, int64_t now_mono_ms);

/* How long an attempt for model on the named provider takes, from the
 * latency of its successful attempts so far (moving average); for an unknown
 * provider (NULL or not serving model) the average over model's routes with
 * a latency. 0 when nothing has been measured yet. */
int64_t router_expected_ms(router *r, const char *model, const char *provider_name);

provider *router_route_provider(const router_route *route);
const char *router_route_upstream_model(const router_route *route);

/* {"providers":[...], "routes":[{model, provider, upstream_model, weight, state,
 * success_rate, latency_ms, in_flight, consecutive_failures, ...}]} as JSON text
 * (malloc'd). */
char *router_health_json(router *r, int64_t now_mono_ms);
/* Appends Prometheus text-format metrics for every route to out. */
void router_metrics(router *r, buf *out, int64_t now_mono_ms);

#endif
