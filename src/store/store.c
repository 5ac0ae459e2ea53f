/* store.c - what every store backend shares: names and freeing of the
 * types store.h declares. */
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

const char *webhook_state_name(webhook_state s) {
  switch (s) {
  case WEBHOOK_PENDING: return "pending";
  case WEBHOOK_DELIVERED: return "delivered";
  case WEBHOOK_FAILED: return "failed";
  case WEBHOOK_GONE: return "gone";
  }
  return "unknown";
}

void store_delivery_clear(store_delivery *d) {
  if (!d) return;
  free(d->url);
  free(d->payload);
  d->url = d->payload = NULL;
}

void store_delivery_free(store_delivery *d, size_t n) {
  for (size_t i = 0; d && i < n; i++) store_delivery_clear(&d[i]);
  free(d);
}
