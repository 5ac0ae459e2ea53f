/* provider.c - the outcome object every provider hands to its done() callback. */
#include "upstream/provider.h"

#include <stdlib.h>

provider_outcome *provider_outcome_new(provider_status status) {
  provider_outcome *o = calloc(1, sizeof *o);
  if (o) o->status = status;
  return o;
}

void provider_outcome_free(provider_outcome *o) {
  if (!o) return;
  for (size_t i = 0; i < o->n_images; i++) free(o->images[i].data);
  free(o->images);
  free(o);
}
