/* test_retention.c - the sweeper deletes expired result images, once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "blob/blob.h"
#include "core/retention.h"
#include "store/store.h"

#define NOW 1760000000000LL

typedef struct fx {
  char dir[64];
  store *st;
  blob *bl;
  int64_t account;
} fx;

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  char path[128], err[256];
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-retention-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(path, sizeof path, "%s/db", f->dir);
  f->st = store_sqlite_open(path, 2, err, sizeof err);
  assert_non_null(f->st);
  snprintf(path, sizeof path, "%s/blobs", f->dir);
  f->bl = blob_fs_open(path, err, sizeof err);
  assert_non_null(f->bl);
  assert_int_equal(f->st->ops->account_open(f->st, "r@example.com", NOW, 0, &f->account),
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

static bool exists(fx *f, const char *rel) {
  char path[256];
  struct stat sb;
  snprintf(path, sizeof path, "%s/blobs/%s", f->dir, rel);
  return stat(path, &sb) == 0;
}

/* A succeeded task with one image expiring at expires_ms; its id in id. */
static void finished_task(fx *f, int64_t expires_ms, char id[IDS_UUID_LEN + 1]) {
  task t = {.account_id = f->account, .state = TASK_QUEUED, .model = "nano-banana",
            .prompt = "p", .aspect_ratio = "auto", .resolution = "1K", .quantity = 1,
            .created_ms = NOW};
  assert_true(ids_uuid7(t.id));
  assert_int_equal(f->st->ops->task_insert(f->st, &t), STORE_OK);
  char key[128], token[40];
  snprintf(key, sizeof key, "results/%s/1-0.png", t.id);
  snprintf(token, sizeof token, "tok%.20s", t.id + 16);
  assert_int_equal(f->bl->ops->put(f->bl, key, "png!", 4, "image/png"), BLOB_OK);
  task_result r = {.index = 0, .blob_key = key, .token = token, .mime = "image/png",
                   .etag = "e", .width = 1, .height = 1, .bytes = 4, .expires_ms = expires_ms};
  int run;
  assert_int_equal(f->st->ops->task_start(f->st, t.id, "sim", NOW, &run), STORE_OK);
  assert_int_equal(
      f->st->ops->task_finish(f->st, t.id, run, TASK_SUCCEEDED, NULL, NULL, &r, 1, 0, NOW, NULL, NULL),
      STORE_OK);
  memcpy(id, t.id, sizeof t.id);
}

static void test_sweeps_what_is_due_once(void **state) {
  fx *f = *state;
  char soon[IDS_UUID_LEN + 1], later[IDS_UUID_LEN + 1];
  finished_task(f, NOW + 1000, soon);
  finished_task(f, NOW + 5000, later);
  char soon_key[128], soon_dir[128], later_key[128];
  snprintf(soon_key, sizeof soon_key, "results/%s/1-0.png", soon);
  snprintf(soon_dir, sizeof soon_dir, "results/%s", soon);
  snprintf(later_key, sizeof later_key, "results/%s/1-0.png", later);

  assert_int_equal(retention_sweep(f->st, f->bl, NOW + 999), 0); /* nothing due yet */
  assert_true(exists(f, soon_key));
  assert_int_equal(retention_sweep(f->st, f->bl, NOW + 1000), 1);
  assert_false(exists(f, soon_key));
  assert_false(exists(f, soon_dir)); /* no empty folder per task left behind */
  assert_true(exists(f, "results"));
  assert_true(exists(f, later_key));
  assert_int_equal(retention_sweep(f->st, f->bl, NOW + 1000), 0); /* purged once */

  /* The row stays, the token answers nothing downloadable any more. */
  task *t = NULL;
  assert_int_equal(f->st->ops->task_get(f->st, soon, &t), STORE_OK);
  assert_int_equal(t->n_results, 1);
  task_free(t);

  /* An image deleted by someone else (a crash between delete and mark) counts as done. */
  assert_int_equal(f->bl->ops->remove(f->bl, later_key), BLOB_OK);
  assert_int_equal(retention_sweep(f->st, f->bl, NOW + 5000), 1);
  assert_int_equal(retention_sweep(f->st, f->bl, NOW + 99999), 0);
}

static void test_many_in_batches(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1];
  for (int i = 0; i < 300; i++) finished_task(f, NOW + i, id); /* more than one batch */
  assert_int_equal(retention_sweep(f->st, f->bl, NOW + 1000), 300);
  assert_int_equal(retention_sweep(f->st, f->bl, NOW + 1000), 0);
}

static void test_thread_starts_and_stops(void **state) {
  fx *f = *state;
  char id[IDS_UUID_LEN + 1], key[128];
  finished_task(f, 1, id); /* long expired */
  snprintf(key, sizeof key, "results/%s/1-0.png", id);
  retention_config rc = {.sweep_interval_ms = 60000};
  retention *r = retention_start(f->st, f->bl, &rc);
  assert_non_null(r);
  retention_stop(r); /* the first pass runs at start and finishes before stop returns */
  assert_false(exists(f, key));
  retention_stop(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_sweeps_what_is_due_once, setup, teardown),
      cmocka_unit_test_setup_teardown(test_many_in_batches, setup, teardown),
      cmocka_unit_test_setup_teardown(test_thread_starts_and_stops, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
