/* provider.c - the outcome object every provider hands to its done() callback. */
#include "upstream/provider.h"

#include <stdio.h>
#include <stdlib.h>

provider_outcome *provider_outcome_new(provider_status status) {
  provider_outcome *o = calloc(1, sizeof *o);
  if (o) o->status = status;
  return o;
}

void provider_spool_copy(provider_spool *dst, const provider_spool *src) {
  dst->bl = src ? src->bl : NULL;
  snprintf(dst->prefix, sizeof dst->prefix, "%s", src ? src->prefix : "");
  atomic_init(&dst->seq, 0);
}

void provider_outcome_free(provider_outcome *o) {
  if (!o) return;
  for (size_t i = 0; i < o->n_images; i++) {
    free(o->images[i].data);
    blob_stream_abort(o->images[i].staged); /* not taken: nothing may be left behind */
  }
  free(o->images);
  free(o);
}

static const char *const class_names[] = {
    [PROVIDER_ERR_NONE] = "none",
    [PROVIDER_ERR_BAD_REQUEST] = "bad_request",
    [PROVIDER_ERR_MODERATED] = "moderated",
    [PROVIDER_ERR_AUTH] = "auth",
    [PROVIDER_ERR_CREDIT] = "credit",
    [PROVIDER_ERR_RATE_LIMITED] = "rate_limited",
    [PROVIDER_ERR_SERVER] = "server",
    [PROVIDER_ERR_TIMEOUT] = "timeout",
    [PROVIDER_ERR_NETWORK] = "network",
    [PROVIDER_ERR_BAD_RESPONSE] = "bad_response",
    [PROVIDER_ERR_NO_IMAGE] = "no_image",
    [PROVIDER_ERR_INTERNAL] = "internal",
    [PROVIDER_ERR_CANCELED] = "canceled",
};
_Static_assert(sizeof class_names / sizeof class_names[0] == PROVIDER_ERR_CLASSES,
               "a name for every error class");

const char *provider_error_class_name(provider_error_class c) {
  if ((unsigned)c >= sizeof class_names / sizeof class_names[0]) return "internal";
  return class_names[c];
}

bool provider_error_class_hurts_route(provider_error_class c) {
  switch (c) {
  case PROVIDER_ERR_AUTH:
  case PROVIDER_ERR_CREDIT:
  case PROVIDER_ERR_RATE_LIMITED:
  case PROVIDER_ERR_SERVER:
  case PROVIDER_ERR_TIMEOUT:
  case PROVIDER_ERR_NETWORK:
  case PROVIDER_ERR_BAD_RESPONSE:
    return true;
  default:
    /* A bad request, a refusal or a model that drew nothing is about the
     * prompt, not the route: it must not push traffic away from a healthy
     * upstream. A canceled call was stopped by us, the upstream never
     * finished: no verdict either way. */
    return false;
  }
}
