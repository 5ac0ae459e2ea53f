/* opsview.h - what operators see of a running server: live provider and
 * route health, and every counter in Prometheus text format.
 *
 * The admin endpoints (api/admin.c) only put these on the wire; gathering
 * them from the engine, the router, the retention sweeper and the webhook
 * dispatcher is done here, so the HTTP side knows none of those modules. */
#ifndef IMGATE_OPSVIEW_H
#define IMGATE_OPSVIEW_H

#include "core/engine.h"
#include "core/retention.h"
#include "util/buf.h"
#include "webhook/dispatcher.h"

/* The sources; ret and wd may be NULL (their counters are then left out).
 * Each must outlive every call below. */
typedef struct opsview {
  engine *eng;
  retention *ret;
  webhook_dispatcher *wd;
} opsview;

/* Every provider and route with its live health, as JSON text (malloc'd;
 * NULL when out of memory). Any thread. */
char *opsview_providers_json(const opsview *v);

/* Every counter and gauge, Prometheus text format 0.0.4, appended to out.
 * False when out of memory. Any thread; may read the store (the webhook
 * backlog, at most every few seconds). */
bool opsview_metrics(const opsview *v, buf *out);

#endif
