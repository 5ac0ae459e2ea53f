/* task.c - task state names, the transition table, and freeing tasks. */
#include "core/task.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const task_state_names[TASK_STATE_COUNT] = {
    "queued", "running", "succeeded", "failed", "moderated", "canceled",
};

/* allowed[from][to]. Final states have an empty row: once finished, a task
 * never changes again. running -> queued exists only for crash recovery. */
static const bool task_transitions[TASK_STATE_COUNT][TASK_STATE_COUNT] = {
    [TASK_QUEUED] = {[TASK_RUNNING] = true, [TASK_CANCELED] = true},
    [TASK_RUNNING] = {[TASK_QUEUED] = true,
                      [TASK_SUCCEEDED] = true,
                      [TASK_FAILED] = true,
                      [TASK_MODERATED] = true,
                      [TASK_CANCELED] = true},
};

static const char *const task_event_kind_names[TASK_EVENT_KIND_COUNT] = {
    [TASK_EVENT_QUEUED] = "queued",       [TASK_EVENT_RUNNING] = "running",
    [TASK_EVENT_ATTEMPT] = "attempt",     [TASK_EVENT_SUCCEEDED] = "succeeded",
    [TASK_EVENT_FAILED] = "failed",       [TASK_EVENT_MODERATED] = "moderated",
    [TASK_EVENT_CANCELED] = "canceled",
};

static bool task_state_valid(task_state s) { return (unsigned)s < TASK_STATE_COUNT; }

const char *task_state_name(task_state s) {
  return task_state_valid(s) ? task_state_names[s] : "unknown";
}

bool task_state_parse(const char *name, task_state *out) {
  if (!name) return false;
  for (int i = 0; i < TASK_STATE_COUNT; i++) {
    if (strcmp(name, task_state_names[i]) == 0) {
      *out = (task_state)i;
      return true;
    }
  }
  return false;
}

bool task_state_is_final(task_state s) {
  return s == TASK_SUCCEEDED || s == TASK_FAILED || s == TASK_MODERATED || s == TASK_CANCELED;
}

bool task_state_can_transition(task_state from, task_state to) {
  if (!task_state_valid(from) || !task_state_valid(to)) return false;
  return task_transitions[from][to];
}

const char *task_event_kind_name(task_event_kind k) {
  return (unsigned)k < TASK_EVENT_KIND_COUNT ? task_event_kind_names[k] : "unknown";
}

bool task_event_kind_parse(const char *name, task_event_kind *out) {
  if (!name) return false;
  for (int i = 0; i < TASK_EVENT_KIND_COUNT; i++) {
    if (strcmp(name, task_event_kind_names[i]) == 0) {
      *out = (task_event_kind)i;
      return true;
    }
  }
  return false;
}

task_event_kind task_event_kind_of_state(task_state s) {
  switch (s) {
  case TASK_QUEUED: return TASK_EVENT_QUEUED;
  case TASK_RUNNING: return TASK_EVENT_RUNNING;
  case TASK_SUCCEEDED: return TASK_EVENT_SUCCEEDED;
  case TASK_FAILED: return TASK_EVENT_FAILED;
  case TASK_MODERATED: return TASK_EVENT_MODERATED;
  case TASK_CANCELED: return TASK_EVENT_CANCELED;
  }
  assert(!"task state out of range");
  return TASK_EVENT_QUEUED;
}

void task_result_clear(task_result *r) {
  if (!r) return;
  free(r->blob_key);
  free(r->token);
  free(r->mime);
  free(r->etag);
  free(r->quality);
  free(r->background);
  memset(r, 0, sizeof *r);
}

void task_input_clear(task_input *in) {
  if (!in) return;
  free(in->blob_key);
  free(in->url);
  free(in->mime);
  memset(in, 0, sizeof *in);
}

void task_free(task *t) {
  if (!t) return;
  free(t->model);
  free(t->prompt);
  free(t->aspect_ratio);
  free(t->resolution);
  free(t->quality);
  free(t->webhook_url);
  free(t->dialect);
  free(t->public_base);
  free(t->output_format);
  free(t->background);
  free(t->provider);
  free(t->error_code);
  free(t->error_message);
  for (size_t i = 0; i < t->n_inputs; i++) task_input_clear(&t->inputs[i]);
  free(t->inputs);
  task_input_clear(t->mask);
  free(t->mask);
  for (size_t i = 0; i < t->n_results; i++) task_result_clear(&t->results[i]);
  free(t->results);
  for (size_t i = 0; i < t->n_upstream_attempts; i++) task_attempt_clear(&t->upstream_attempts[i]);
  free(t->upstream_attempts);
  free(t);
}

void task_attempt_clear(task_attempt *a) {
  if (!a) return;
  free(a->provider);
  free(a->upstream_model);
  free(a->error_class);
  free(a->error_code);
  a->provider = a->upstream_model = a->error_class = a->error_code = NULL;
}

void task_url_input_key(const char *task_id, size_t index, char *key, size_t size) {
  snprintf(key, size, TASK_BLOB_INPUTS "%s/%zu.url", task_id, index);
}
