/* test_task.c - the task state machine, state and event names, and freeing
 * tasks. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/task.h"

/* The transitions task.h documents, written out independently of task.c. */
static bool expected_transition(task_state from, task_state to) {
  static const struct {
    task_state from, to;
  } allowed[] = {
      {TASK_QUEUED, TASK_RUNNING},    {TASK_RUNNING, TASK_QUEUED},
      {TASK_RUNNING, TASK_SUCCEEDED}, {TASK_RUNNING, TASK_FAILED},
      {TASK_RUNNING, TASK_MODERATED}, {TASK_RUNNING, TASK_CANCELED},
      {TASK_QUEUED, TASK_CANCELED},
  };
  for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
    if (allowed[i].from == from && allowed[i].to == to) return true;
  return false;
}

static void test_every_transition_pair(void **state) {
  (void)state;
  int allowed = 0;
  for (int from = 0; from < TASK_STATE_COUNT; from++) {
    for (int to = 0; to < TASK_STATE_COUNT; to++) {
      bool got = task_state_can_transition((task_state)from, (task_state)to);
      if (got != expected_transition((task_state)from, (task_state)to))
        fail_msg("transition %s -> %s: got %d", task_state_name((task_state)from),
                 task_state_name((task_state)to), got);
      allowed += got;
    }
  }
  assert_int_equal(allowed, 7);
}

static void test_final_states_never_move(void **state) {
  (void)state;
  for (int from = 0; from < TASK_STATE_COUNT; from++) {
    if (!task_state_is_final((task_state)from)) continue;
    for (int to = 0; to < TASK_STATE_COUNT; to++)
      assert_false(task_state_can_transition((task_state)from, (task_state)to));
  }
  assert_false(task_state_is_final(TASK_QUEUED));
  assert_false(task_state_is_final(TASK_RUNNING));
  assert_true(task_state_is_final(TASK_SUCCEEDED));
  assert_true(task_state_is_final(TASK_FAILED));
  assert_true(task_state_is_final(TASK_MODERATED));
  assert_true(task_state_is_final(TASK_CANCELED));
}

static void test_out_of_range_states(void **state) {
  (void)state;
  task_state bad = (task_state)TASK_STATE_COUNT;
  assert_false(task_state_can_transition(bad, TASK_RUNNING));
  assert_false(task_state_can_transition(TASK_QUEUED, bad));
  assert_false(task_state_can_transition((task_state)-1, TASK_QUEUED));
  assert_false(task_state_is_final(bad));
  assert_string_equal(task_state_name(bad), "unknown");
}

static void test_names_round_trip(void **state) {
  (void)state;
  static const char *const names[TASK_STATE_COUNT] = {"queued", "running", "succeeded", "failed",
                                                      "moderated", "canceled"};
  for (int i = 0; i < TASK_STATE_COUNT; i++) {
    assert_string_equal(task_state_name((task_state)i), names[i]);
    task_state parsed = (task_state)-1;
    assert_true(task_state_parse(names[i], &parsed));
    assert_int_equal(parsed, i);
  }
}

static void test_event_kinds(void **state) {
  (void)state;
  static const char *const names[TASK_EVENT_KIND_COUNT] = {
      "queued", "running", "attempt", "succeeded", "failed", "moderated", "canceled"};
  for (int i = 0; i < TASK_EVENT_KIND_COUNT; i++) {
    assert_string_equal(task_event_kind_name((task_event_kind)i), names[i]);
    task_event_kind parsed = (task_event_kind)-1;
    assert_true(task_event_kind_parse(names[i], &parsed));
    assert_int_equal(parsed, i);
  }
  assert_string_equal(task_event_kind_name((task_event_kind)TASK_EVENT_KIND_COUNT), "unknown");
  task_event_kind k = TASK_EVENT_ATTEMPT;
  assert_false(task_event_kind_parse("Attempt", &k));
  assert_false(task_event_kind_parse(NULL, &k));
  assert_int_equal(k, TASK_EVENT_ATTEMPT);
  /* Entering a state is recorded by the event of the same name. */
  for (int st = 0; st < TASK_STATE_COUNT; st++)
    assert_string_equal(task_event_kind_name(task_event_kind_of_state((task_state)st)),
                        task_state_name((task_state)st));
}

static void test_parse_rejects_others(void **state) {
  (void)state;
  static const char *const bad[] = {"", "Queued", "queued ", "done", "unknown", "runnin"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    task_state parsed = TASK_FAILED;
    assert_false(task_state_parse(bad[i], &parsed));
    assert_int_equal(parsed, TASK_FAILED); /* untouched on failure */
  }
  task_state parsed;
  assert_false(task_state_parse(NULL, &parsed));
}

/* Under ASan with leak detection, a member task_free forgets fails the run. */
static void test_free_everything(void **state) {
  (void)state;
  task_free(NULL);
  task *t = calloc(1, sizeof *t);
  assert_non_null(t);
  t->model = strdup("m");
  t->prompt = strdup("p");
  t->aspect_ratio = strdup("1:1");
  t->resolution = strdup("1K");
  t->webhook_url = strdup("https://example.com/h");
  t->dialect = strdup("native");
  t->public_base = strdup("https://img.example.com");
  t->provider = strdup("sim");
  t->error_code = strdup("e");
  t->error_message = strdup("msg");
  t->n_inputs = 2;
  t->inputs = calloc(2, sizeof *t->inputs);
  assert_non_null(t->inputs);
  t->inputs[0].blob_key = strdup("k");
  t->inputs[0].mime = strdup("image/png");
  t->inputs[1].url = strdup("https://example.com/a.png");
  t->n_results = 1;
  t->results = calloc(1, sizeof *t->results);
  assert_non_null(t->results);
  t->results[0].blob_key = strdup("b");
  t->results[0].token = strdup("t");
  t->results[0].mime = strdup("image/png");
  t->results[0].etag = strdup("e");
  task_free(t);

  task_result r = {.index = 3, .token = strdup("x"), .width = 5};
  task_result_clear(&r);
  assert_null(r.token);
  assert_int_equal(r.index, 0);
  assert_int_equal(r.width, 0);
  task_result_clear(NULL);

  task_input in = {.url = strdup("u"), .bytes = 9};
  task_input_clear(&in);
  assert_null(in.url);
  assert_int_equal(in.bytes, 0);
  task_input_clear(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_transition_pair),
      cmocka_unit_test(test_final_states_never_move),
      cmocka_unit_test(test_out_of_range_states),
      cmocka_unit_test(test_names_round_trip),
      cmocka_unit_test(test_event_kinds),
      cmocka_unit_test(test_parse_rejects_others),
      cmocka_unit_test(test_free_everything),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
