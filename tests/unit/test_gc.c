/* test_gc.c - the orphan collector against a real SQLite store and a real
 * folder: what no committed row refers to goes once it is old enough, and
 * nothing else. Ages are set with utimensat and the pass is given `now`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blob/blob.h"
#include "core/gc.h"
#include "core/retention.h"
#include "store/store.h"

#define NOW 1760000000000LL
#define HOUR 3600000LL
#define OLD (NOW - 2 * HOUR)    /* older than the age guard */
#define YOUNG (NOW - HOUR / 6)  /* ten minutes: younger than the guard */

typedef struct fx {
  char dir[64];
  store *st;
  blob *bl;
  int64_t account;
} fx;

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  char path[128], err[256];
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-gc-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(path, sizeof path, "%s/db", f->dir);
  f->st = store_sqlite_open(path, 2, err, sizeof err);
  assert_non_null(f->st);
  snprintf(path, sizeof path, "%s/blobs", f->dir);
  f->bl = blob_fs_open(path, err, sizeof err);
  assert_non_null(f->bl);
  assert_int_equal(f->st->ops->account_open(f->st, "gc@example.com", NOW, 0, &f->account),
                   STORE_OK);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  f->st->ops->close(f->st);
  f->bl->ops->close(f->bl);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

static void blob_path(fx *f, const char *rel, char *path, size_t size) {
  snprintf(path, size, "%s/blobs/%s", f->dir, rel);
}

static bool exists(fx *f, const char *rel) {
  char path[512];
  struct stat sb;
  blob_path(f, rel, path, sizeof path);
  return stat(path, &sb) == 0;
}

static void set_mtime(fx *f, const char *rel, int64_t ms) {
  char path[512];
  blob_path(f, rel, path, sizeof path);
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
  struct timespec both[2] = {ts, ts};
  assert_int_equal(utimensat(AT_FDCWD, path, both, 0), 0);
}

/* An object as a put writes it, last modified at mtime_ms. */
static void put_at(fx *f, const char *key, int64_t mtime_ms) {
  assert_int_equal(f->bl->ops->put(f->bl, key, "png!", 4, "image/png"), BLOB_OK);
  set_mtime(f, key, mtime_ms);
}

/* A temporary file as a put a crash interrupted leaves it. */
static void temp_at(fx *f, const char *rel, int64_t mtime_ms) {
  char path[512];
  blob_path(f, rel, path, sizeof path);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
  assert_true(fd >= 0);
  close(fd);
  set_mtime(f, rel, mtime_ms);
}

/* Inserts a queued task with one inline input (key inputs/<id>/0.png) and,
 * when with_url, one URL input (its download kept at inputs/<id>/1.url). */
static void queued_task(fx *f, bool with_url, char id[IDS_UUID_LEN + 1]) {
  task t = {.account_id = f->account, .state = TASK_QUEUED, .model = "nano-banana",
            .prompt = "p", .aspect_ratio = "auto", .resolution = "1K", .quantity = 1,
            .created_ms = NOW};
  assert_true(ids_uuid7(t.id));
  char key[128];
  snprintf(key, sizeof key, "inputs/%s/0.png", t.id);
  task_input in[2] = {{.blob_key = key, .mime = "image/png", .bytes = 4},
                      {.url = "https://example.test/ref.png"}};
  t.inputs = in;
  t.n_inputs = with_url ? 2 : 1;
  assert_int_equal(f->st->ops->task_insert(f->st, &t), STORE_OK);
  memcpy(id, t.id, sizeof t.id);
}

/* Runs the queued task `runs` times: every run but the last is killed (put
 * back to queued, as crash recovery does); the last finishes with the one
 * image results/<id>/<runs>-0.png. */
static void finish_after_runs(fx *f, const char *id, int runs) {
  int run = 0;
  for (int i = 1; i <= runs; i++) {
    assert_int_equal(f->st->ops->task_start(f->st, id, "sim", NOW, &run), STORE_OK);
    assert_int_equal(run, i);
    if (i < runs) assert_int_equal(f->st->ops->task_requeue(f->st, id, run), STORE_OK);
  }
  char key[128], token[40];
  snprintf(key, sizeof key, "results/%s/%d-0.png", id, runs);
  snprintf(token, sizeof token, "tok%.20s", id + 16);
  task_result r = {.index = 0, .blob_key = key, .token = token, .mime = "image/png",
                   .etag = "e", .width = 1, .height = 1, .bytes = 4,
                   .expires_ms = NOW + 100 * HOUR};
  assert_int_equal(
      f->st->ops->task_finish(f->st, id, run, TASK_SUCCEEDED, NULL, NULL, &r, 1, 0, NOW, NULL, NULL),
      STORE_OK);
}

static gc_stats collect(fx *f) {
  gc_stats s;
  memset(&s, 0xff, sizeof s); /* every field must be written */
  gc_collect(f->st, f->bl, HOUR, NOW, NULL, &s);
  return s;
}

static void test_orphan_inputs_by_age(void **state) {
  fx *f = *state;
  /* Inputs a submit wrote before a crash kept its task row from being inserted. */
  char old_key[128], young_key[128], id[IDS_UUID_LEN + 1];
  assert_true(ids_uuid7(id));
  snprintf(old_key, sizeof old_key, "inputs/%s/0.png", id);
  put_at(f, old_key, OLD);
  assert_true(ids_uuid7(id));
  /* A submit in progress: its row is not committed yet, but it is young. */
  snprintf(young_key, sizeof young_key, "inputs/%s/0.png", id);
  put_at(f, young_key, YOUNG);

  gc_stats s = collect(f);
  assert_false(exists(f, old_key));
  assert_true(exists(f, young_key));
  assert_int_equal(s.listed, 2);
  assert_int_equal(s.removed, 1);
  assert_int_equal(s.young, 1);
  assert_int_equal(s.referenced, 0);
  assert_int_equal(s.temp_removed, 0);
  assert_int_equal(s.failed, 0);
  /* The emptied task folder went with it; the top level stays. */
  char dir[128];
  snprintf(dir, sizeof dir, "inputs/%.36s", old_key + 7);
  assert_false(exists(f, dir));
  assert_true(exists(f, "inputs"));

  /* Exactly at the age is old enough. */
  set_mtime(f, young_key, NOW - HOUR);
  s = collect(f);
  assert_int_equal(s.removed, 1);
  assert_false(exists(f, young_key));
}

static void test_killed_run_beside_committed_result(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1], killed[128], committed[128], purged_id[IDS_UUID_LEN + 1];
  queued_task(f, false, id);
  finish_after_runs(f, id, 3);
  snprintf(killed, sizeof killed, "results/%s/1-0.png", id);
  snprintf(committed, sizeof committed, "results/%s/3-0.png", id);
  put_at(f, killed, OLD);
  put_at(f, committed, OLD);
  /* The final task's input: the engine deletes it; when a crash kept it from
   * that, it is an orphan. */
  char input[128];
  snprintf(input, sizeof input, "inputs/%s/0.png", id);
  put_at(f, input, OLD);

  /* A purged result whose file a crash kept: nothing refers to it any more. */
  queued_task(f, false, purged_id);
  finish_after_runs(f, purged_id, 1);
  char purged[128];
  snprintf(purged, sizeof purged, "results/%s/1-0.png", purged_id);
  put_at(f, purged, OLD);
  assert_int_equal(f->st->ops->result_mark_purged(f->st, purged_id, 0, NOW), STORE_OK);

  gc_stats s = collect(f);
  assert_false(exists(f, killed));
  assert_true(exists(f, committed));
  assert_false(exists(f, input));
  assert_false(exists(f, purged));
  assert_int_equal(s.removed, 3);
  assert_int_equal(s.referenced, 1);
  assert_int_equal(s.failed, 0);
  /* The committed result still reads back whole. */
  uint8_t *data = NULL;
  size_t len = 0;
  assert_int_equal(f->bl->ops->read(f->bl, committed, 100, &data, &len), BLOB_OK);
  assert_int_equal(len, 4);
  free(data);
  /* A second pass finds nothing more to do. */
  s = collect(f);
  assert_int_equal(s.removed, 0);
  assert_int_equal(s.referenced, 1);
}

static void test_inputs_of_unfinished_tasks_are_kept(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1], inline_key[128], url_key[128], stray[128];
  queued_task(f, true, id);
  snprintf(inline_key, sizeof inline_key, "inputs/%s/0.png", id);
  snprintf(url_key, sizeof url_key, "inputs/%s/1.url", id);
  snprintf(stray, sizeof stray, "inputs/%s/2.url", id); /* no input 2: nothing refers to it */
  put_at(f, inline_key, OLD);
  put_at(f, url_key, OLD);
  put_at(f, stray, OLD);

  gc_stats s = collect(f); /* queued */
  assert_true(exists(f, inline_key));
  assert_true(exists(f, url_key));
  assert_false(exists(f, stray));
  assert_int_equal(s.referenced, 2);
  assert_int_equal(s.removed, 1);

  int run;
  assert_int_equal(f->st->ops->task_start(f->st, id, "sim", NOW, &run), STORE_OK);
  s = collect(f); /* running */
  assert_int_equal(s.referenced, 2);
  assert_int_equal(s.removed, 0);

  assert_int_equal(f->st->ops->task_finish(f->st, id, run, TASK_FAILED, "x", "y", NULL, 0, 0, NOW,
                                           NULL, NULL),
                   STORE_OK);
  s = collect(f); /* final: no run reads them again */
  assert_false(exists(f, inline_key));
  assert_false(exists(f, url_key));
  assert_int_equal(s.removed, 2);
}

static void test_temporary_files_by_age(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1], old_tmp[160], young_tmp[160], committed[128];
  queued_task(f, false, id);
  finish_after_runs(f, id, 1);
  snprintf(committed, sizeof committed, "results/%s/1-0.png", id);
  put_at(f, committed, OLD);
  snprintf(old_tmp, sizeof old_tmp, "results/%s/.~put-00112233aabbccdd", id);
  snprintf(young_tmp, sizeof young_tmp, "results/%s/.~put-44556677eeff0011", id);
  temp_at(f, old_tmp, OLD);
  temp_at(f, young_tmp, YOUNG);

  gc_stats s = collect(f);
  assert_false(exists(f, old_tmp));
  assert_true(exists(f, young_tmp));
  assert_true(exists(f, committed));
  assert_int_equal(s.temp_removed, 1);
  assert_int_equal(s.young, 1);
  assert_int_equal(s.removed, 0);
}

static void test_other_prefixes_are_left_alone(void **state) {
  fx *f = *state;
  put_at(f, "other/thing.png", OLD);
  put_at(f, "top.png", OLD);
  put_at(f, "results/no-task-folder.png", OLD); /* under a task prefix, but no task's */
  gc_stats s = collect(f);
  assert_true(exists(f, "other/thing.png"));
  assert_true(exists(f, "top.png"));
  assert_false(exists(f, "results/no-task-folder.png"));
  assert_int_equal(s.listed, 1);
  assert_int_equal(s.removed, 1);
}

/* A store whose task_blob_refs fails: the collector must keep what it cannot judge. */
typedef struct failing_store {
  store base;
  store_ops ops;
} failing_store;

static int failing_blob_refs(store *s, const char *task_id, task_state *state,
                             store_blob_ref **refs, size_t *count) {
  (void)s;
  (void)task_id;
  (void)state;
  *refs = NULL;
  *count = 0;
  return STORE_ERROR;
}

static void test_store_failure_keeps_everything(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1], key[128];
  assert_true(ids_uuid7(id));
  snprintf(key, sizeof key, "inputs/%s/0.png", id);
  put_at(f, key, OLD);
  failing_store fs;
  fs.ops = *f->st->ops;
  fs.ops.task_blob_refs = failing_blob_refs;
  fs.base.ops = &fs.ops;
  gc_stats s;
  gc_collect(&fs.base, f->bl, HOUR, NOW, NULL, &s);
  assert_true(exists(f, key));
  assert_int_equal(s.failed, 1);
  assert_int_equal(s.removed, 0);
}

static void test_cancelled_pass_removes_nothing(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1], key[128];
  assert_true(ids_uuid7(id));
  snprintf(key, sizeof key, "results/%s/1-0.png", id);
  put_at(f, key, OLD);
  _Atomic bool cancel = true;
  gc_stats s;
  gc_collect(f->st, f->bl, HOUR, NOW, &cancel, &s);
  assert_true(exists(f, key));
  assert_int_equal(s.listed, 0);
}

static void test_store_reports_blob_refs(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1];
  queued_task(f, true, id);
  task_state st;
  store_blob_ref *refs = NULL;
  size_t n = 0;
  assert_int_equal(f->st->ops->task_blob_refs(f->st, id, &st, &refs, &n), STORE_OK);
  assert_int_equal(st, TASK_QUEUED);
  assert_int_equal(n, 2);
  char input_key[128];
  snprintf(input_key, sizeof input_key, "inputs/%s/0.png", id);
  for (size_t i = 0; i < n; i++) {
    assert_false(refs[i].result);
    assert_int_equal(refs[i].purged_ms, 0);
    if (refs[i].index == 0) assert_string_equal(refs[i].blob_key, input_key);
    else assert_string_equal(refs[i].blob_key, ""); /* the URL input */
  }
  free(refs);
  finish_after_runs(f, id, 2);
  assert_int_equal(f->st->ops->result_mark_purged(f->st, id, 0, NOW + 5), STORE_OK);
  assert_int_equal(f->st->ops->task_blob_refs(f->st, id, &st, &refs, &n), STORE_OK);
  assert_int_equal(st, TASK_SUCCEEDED);
  assert_int_equal(n, 3);
  bool saw_result = false;
  for (size_t i = 0; i < n; i++) {
    if (!refs[i].result) continue;
    saw_result = true;
    assert_int_equal(refs[i].purged_ms, NOW + 5);
    char want[128];
    snprintf(want, sizeof want, "results/%s/2-0.png", id);
    assert_string_equal(refs[i].blob_key, want);
  }
  assert_true(saw_result);
  free(refs);
  refs = (store_blob_ref *)1;
  assert_int_equal(f->st->ops->task_blob_refs(f->st, "no-such-task", &st, &refs, &n),
                   STORE_NOT_FOUND);
  assert_null(refs);
  assert_int_equal(n, 0);
}

/* The retention thread runs a pass at start; its counters say so. */
static void test_thread_collects_at_start(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1], key[128];
  assert_true(ids_uuid7(id));
  snprintf(key, sizeof key, "results/%s/1-0.png", id);
  assert_int_equal(f->bl->ops->put(f->bl, key, "png!", 4, "image/png"), BLOB_OK);
  /* The thread uses the real clock: make the file two hours old by it. */
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  set_mtime(f, key, ((int64_t)now.tv_sec - 7200) * 1000);
  retention_config rc = {.sweep_interval_ms = 60000, .orphan_min_age_ms = HOUR,
                         .orphan_interval_ms = HOUR};
  retention *r = retention_start(f->st, f->bl, &rc);
  assert_non_null(r);
  retention_stats rs = {0};
  /* Poll with a deadline: the pass runs on the thread, not here. */
  for (int i = 0; i < 3000 && rs.orphan_passes == 0; i++) {
    struct timespec tick = {.tv_nsec = 10000000};
    nanosleep(&tick, NULL);
    retention_get_stats(r, &rs);
  }
  retention_stop(r);
  assert_int_equal(rs.orphan_passes, 1);
  assert_int_equal(rs.orphans_removed, 1);
  assert_false(exists(f, key));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_orphan_inputs_by_age, setup, teardown),
      cmocka_unit_test_setup_teardown(test_killed_run_beside_committed_result, setup, teardown),
      cmocka_unit_test_setup_teardown(test_inputs_of_unfinished_tasks_are_kept, setup, teardown),
      cmocka_unit_test_setup_teardown(test_temporary_files_by_age, setup, teardown),
      cmocka_unit_test_setup_teardown(test_other_prefixes_are_left_alone, setup, teardown),
      cmocka_unit_test_setup_teardown(test_store_failure_keeps_everything, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancelled_pass_removes_nothing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_store_reports_blob_refs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_thread_collects_at_start, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
