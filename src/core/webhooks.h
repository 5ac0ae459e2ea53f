/* webhooks.h - which events of a task are announced to its webhook, and the
 * outbox row that announces one.
 *
 * The rule: a task with a webhook_url has its final event (task.succeeded,
 * task.failed, task.moderated, task.canceled) delivered, always; and
 * task.running when the client asked for it (TASK_WEBHOOK_RUNNING). The row
 * is written by the store in the transaction of the change it announces
 * (store.h), so a committed change never lacks its delivery. */
#ifndef IMGATE_WEBHOOKS_H
#define IMGATE_WEBHOOKS_H

#include <stdbool.h>

#include "core/task.h"
#include "store/store.h"

/* Room for an outbox id: "msg_" + 32 hex + NUL. */
#define WEBHOOKS_ID_SIZE 40

/* The event name of a state: "task.succeeded", ...; "task.running" for
 * running; NULL for queued. */
const char *webhooks_event_of_state(task_state s);

/* Fills *ob (and id) with the row announcing that t has entered state, when
 * t's webhook wants that event; false (ob untouched) when it does not, or
 * when no id could be made. ob points into t and id: keep both alive while
 * ob is used. */
bool webhooks_outbox_for(const task *t, task_state state, store_outbox *ob,
                         char id[WEBHOOKS_ID_SIZE]);

#endif
