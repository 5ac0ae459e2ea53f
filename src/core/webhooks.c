/* webhooks.c - see webhooks.h. */
#include "core/webhooks.h"

#include <stdio.h>

#include "util/ids.h"
#include "util/log.h"

const char *webhooks_event_of_state(task_state s) {
  switch (s) {
  case TASK_RUNNING: return "task.running";
  case TASK_SUCCEEDED: return "task.succeeded";
  case TASK_FAILED: return "task.failed";
  case TASK_MODERATED: return "task.moderated";
  case TASK_CANCELED: return "task.canceled";
  default: return NULL;
  }
}

bool webhooks_outbox_for(const task *t, task_state state, store_outbox *ob,
                         char id[WEBHOOKS_ID_SIZE]) {
  if (!t || !t->webhook_url || !t->webhook_url[0]) return false;
  const char *event = webhooks_event_of_state(state);
  if (!event) return false;
  if (state == TASK_RUNNING && !(t->webhook_events & TASK_WEBHOOK_RUNNING)) return false;
  char hex[33];
  if (!ids_random_hex(hex, 16)) {
    /* Without an id there is no delivery; the change itself must not fail. */
    LOG_ERROR("webhook_id_random_source_failed", "task=%s", t->id);
    return false;
  }
  snprintf(id, WEBHOOKS_ID_SIZE, "msg_%s", hex);
  *ob = (store_outbox){.id = id, .event = event, .url = t->webhook_url};
  return true;
}
