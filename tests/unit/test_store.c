/* test_store.c - the SQLite store: migrations, accounts, keys, the task
 * lifecycle with its compare-and-set guarantees, and concurrent use. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/store.h"
#include "util/ids.h"

#define POOL 4
#define NOW 1700000000000LL

typedef struct fx {
  char dir[64];
  char path[128];
  store *s;
  int64_t account;
} fx;

static store *open_store(const char *path) {
  char err[256] = "";
  store *s = store_sqlite_open(path, POOL, err, sizeof err);
  if (!s) fail_msg("store_sqlite_open: %s", err);
  return s;
}

static int setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  assert_non_null(f);
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-store-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof f->path, "%s/imgate.db", f->dir);
  f->s = open_store(f->path);
  assert_int_equal(f->s->ops->account_create(f->s, "owner@example.com", NOW, &f->account),
                   STORE_OK);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fx *f = *state;
  /* Whatever a test did, the money adds up. */
  if (f->s) assert_int_equal(f->s->ops->ledger_verify(f->s), STORE_OK);
  if (f->s) f->s->ops->close(f->s);
  static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    char p[160];
    snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
    unlink(p);
  }
  assert_int_equal(rmdir(f->dir), 0);
  free(f);
  return 0;
}

/* One integer from a query on a separate raw connection. */
static int64_t raw_int(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

static void raw_exec(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
}

static char *xstrdup(const char *s) {
  char *p = strdup(s);
  assert_non_null(p);
  return p;
}

/* A queued task owned by account, with two inputs (one stored, one URL). */
static task *make_task(int64_t account, int64_t created_ms) {
  task *t = calloc(1, sizeof *t);
  assert_non_null(t);
  assert_true(ids_uuid7(t->id));
  t->account_id = account;
  t->state = TASK_QUEUED;
  t->model = xstrdup("nano-banana-2");
  t->prompt = xstrdup("a lighthouse at dusk, \"quoted\" and 'single'");
  t->aspect_ratio = xstrdup("16:9");
  t->resolution = xstrdup("2K");
  t->webhook_url = xstrdup("https://example.com/hook");
  t->webhook_events = TASK_WEBHOOK_RUNNING;
  t->dialect = xstrdup("openai");
  t->public_base = xstrdup("https://img.example.com:8443");
  t->output_format = xstrdup("webp");
  t->output_compression = 37;
  t->quantity = 1;
  t->created_ms = created_ms;
  t->n_inputs = 2;
  t->inputs = calloc(2, sizeof *t->inputs);
  assert_non_null(t->inputs);
  t->inputs[0].blob_key = xstrdup("inputs/ab/abcdef");
  t->inputs[0].mime = xstrdup("image/png");
  t->inputs[0].bytes = 1234;
  t->inputs[1].url = xstrdup("https://example.com/ref.jpg");
  return t;
}

static task_result make_result(int index, const char *token) {
  task_result r = {.index = index, .width = 1024 + index, .height = 768, .bytes = 5000 + index,
                   .expires_ms = NOW + 86400000};
  char key[64];
  snprintf(key, sizeof key, "results/%s", token);
  r.blob_key = xstrdup(key);
  r.token = xstrdup(token);
  r.mime = xstrdup("image/png");
  r.etag = xstrdup("0123456789abcdef0123456789abcdef");
  return r;
}

static void assert_str_or_null(const char *a, const char *b) {
  if (!a || !b) {
    assert_ptr_equal(a, b);
    return;
  }
  assert_string_equal(a, b);
}

static void assert_result_equal(const task_result *a, const task_result *b) {
  assert_int_equal(a->index, b->index);
  assert_str_or_null(a->blob_key, b->blob_key);
  assert_str_or_null(a->token, b->token);
  assert_str_or_null(a->mime, b->mime);
  assert_str_or_null(a->etag, b->etag);
  assert_int_equal(a->width, b->width);
  assert_int_equal(a->height, b->height);
  assert_int_equal(a->bytes, b->bytes);
  assert_int_equal(a->expires_ms, b->expires_ms);
  assert_str_or_null(a->quality, b->quality);
  assert_str_or_null(a->background, b->background);
}

static void assert_task_equal(const task *a, const task *b) {
  assert_string_equal(a->id, b->id);
  assert_int_equal(a->account_id, b->account_id);
  assert_int_equal(a->state, b->state);
  assert_str_or_null(a->model, b->model);
  assert_str_or_null(a->prompt, b->prompt);
  assert_str_or_null(a->aspect_ratio, b->aspect_ratio);
  assert_str_or_null(a->resolution, b->resolution);
  assert_str_or_null(a->webhook_url, b->webhook_url);
  assert_int_equal(a->webhook_events, b->webhook_events);
  assert_str_or_null(a->dialect, b->dialect);
  assert_str_or_null(a->public_base, b->public_base);
  assert_str_or_null(a->output_format, b->output_format);
  assert_int_equal(a->output_compression, b->output_compression);
  assert_int_equal(a->deadline_ms, b->deadline_ms);
  assert_int_equal(a->cancel_requested, b->cancel_requested);
  assert_str_or_null(a->provider, b->provider);
  assert_int_equal(a->quantity, b->quantity);
  assert_int_equal(a->attempts, b->attempts);
  assert_int_equal(a->created_ms, b->created_ms);
  assert_int_equal(a->started_ms, b->started_ms);
  assert_int_equal(a->finished_ms, b->finished_ms);
  assert_str_or_null(a->error_code, b->error_code);
  assert_str_or_null(a->error_message, b->error_message);
  assert_int_equal(a->n_inputs, b->n_inputs);
  for (size_t i = 0; i < a->n_inputs; i++) {
    assert_str_or_null(a->inputs[i].blob_key, b->inputs[i].blob_key);
    assert_str_or_null(a->inputs[i].url, b->inputs[i].url);
    assert_str_or_null(a->inputs[i].mime, b->inputs[i].mime);
    assert_int_equal(a->inputs[i].bytes, b->inputs[i].bytes);
  }
  assert_str_or_null(a->background, b->background);
  assert_int_equal(a->mask != NULL, b->mask != NULL);
  if (a->mask) {
    assert_str_or_null(a->mask->blob_key, b->mask->blob_key);
    assert_str_or_null(a->mask->mime, b->mask->mime);
    assert_int_equal(a->mask->bytes, b->mask->bytes);
  }
  assert_int_equal(a->n_results, b->n_results);
  for (size_t i = 0; i < a->n_results; i++) assert_result_equal(&a->results[i], &b->results[i]);
}

static task *get_task(store *s, const char *id) {
  task *t = NULL;
  assert_int_equal(s->ops->task_get(s, id, &t), STORE_OK);
  assert_non_null(t);
  return t;
}

/* ---- migrations ------------------------------------------------------------------------ */

static void test_migrations_fresh_and_reopen(void **state) {
  fx *f = *state;
  int64_t versions = raw_int(f->path, "SELECT COUNT(*) FROM schema_migrations");
  int64_t newest = raw_int(f->path, "SELECT MAX(version) FROM schema_migrations");
  int64_t applied = raw_int(f->path, "SELECT SUM(applied_ms) FROM schema_migrations");
  assert_true(versions >= 1);
  assert_int_equal(versions, newest); /* 1..newest, each once */
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM sqlite_master WHERE name IN "
                                    "('accounts','api_keys','tasks','task_inputs','task_results')"),
                   5);

  f->s->ops->close(f->s);
  f->s = open_store(f->path);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM schema_migrations"), versions);
  assert_int_equal(raw_int(f->path, "SELECT SUM(applied_ms) FROM schema_migrations"), applied);
  /* The data from before the reopen is still there. */
  store_account a;
  assert_int_equal(f->s->ops->account_get_by_email(f->s, "owner@example.com", &a), STORE_OK);
  assert_int_equal(a.id, f->account);
}

static void test_wal_and_foreign_keys(void **state) {
  fx *f = *state;
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
  sqlite3_finalize(st);
  sqlite3_close(db);
  /* Foreign keys are enforced on the store's own connections. */
  int64_t id = 0;
  assert_int_equal(f->s->ops->key_create(f->s, 999999, "h", "igk_x", "n", NOW, &id),
                   STORE_NOT_FOUND);
}

static void test_future_version_refused(void **state) {
  fx *f = *state;
  f->s->ops->close(f->s);
  f->s = NULL;
  raw_exec(f->path, "INSERT INTO schema_migrations(version, applied_ms) VALUES (999, 1)");
  char err[256] = "";
  store *s = store_sqlite_open(f->path, POOL, err, sizeof err);
  assert_null(s);
  assert_non_null(strstr(err, "999"));
  assert_non_null(strstr(err, "newer"));
  assert_int_equal(raw_int(f->path, "SELECT MAX(version) FROM schema_migrations"), 999);
}

static void test_open_rejects_bad_arguments(void **state) {
  fx *f = *state;
  char err[256] = "";
  assert_null(store_sqlite_open(f->path, 0, err, sizeof err));
  assert_true(strlen(err) > 0);
  err[0] = '\0';
  assert_null(store_sqlite_open(f->path, 1000, err, sizeof err));
  assert_true(strlen(err) > 0);
  err[0] = '\0';
  char missing[200];
  snprintf(missing, sizeof missing, "%s/no/such/folder/x.db", f->dir);
  assert_null(store_sqlite_open(missing, 1, err, sizeof err));
  assert_non_null(strstr(err, "cannot open"));
}

/* The server sized its pool threads + 4 and the store refuses more than 64:
 * on a machine with 61 cores or more it could not start. */
static void test_pool_size_for_many_threads(void **state) {
  fx *f = *state;
  assert_int_equal(store_sqlite_pool_size(1), 5);
  assert_int_equal(store_sqlite_pool_size(0), 5);
  assert_int_equal(store_sqlite_pool_size(2), 6);
  assert_int_equal(store_sqlite_pool_size(60), STORE_SQLITE_MAX_POOL);
  const int threads[] = {1, 60, 61, 64, 128, 1024};
  for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++) {
    int n = store_sqlite_pool_size(threads[i]);
    assert_true(n >= 1 && n <= STORE_SQLITE_MAX_POOL);
    char err[256] = "";
    store *s = store_sqlite_open(f->path, n, err, sizeof err);
    if (!s) fail_msg("%d threads: pool of %d refused: %s", threads[i], n, err);
    s->ops->close(s);
  }
}

/* ---- accounts -------------------------------------------------------------------------- */

static void test_accounts(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id = 0, other = 0;
  assert_int_equal(s->ops->account_create(s, "a@example.com", NOW + 5, &id), STORE_OK);
  assert_true(id > 0);
  assert_int_not_equal(id, f->account);
  assert_int_equal(s->ops->account_create(s, "a@example.com", NOW, &other), STORE_CONFLICT);

  store_account a;
  assert_int_equal(s->ops->account_get_by_email(s, "a@example.com", &a), STORE_OK);
  assert_int_equal(a.id, id);
  assert_string_equal(a.email, "a@example.com");
  assert_false(a.disabled);
  assert_int_equal(a.created_ms, NOW + 5);

  store_account b;
  assert_int_equal(s->ops->account_get(s, id, &b), STORE_OK);
  assert_memory_equal(&a, &b, sizeof a);

  assert_int_equal(s->ops->account_get(s, id + 100, &b), STORE_NOT_FOUND);
  assert_int_equal(s->ops->account_get_by_email(s, "A@example.com", &b), STORE_NOT_FOUND);

  int64_t n = 0;
  assert_int_equal(s->ops->account_count(s, &n), STORE_OK);
  assert_int_equal(n, 2);
}

/* ---- keys ------------------------------------------------------------------------------ */

static void test_keys(void **state) {
  fx *f = *state;
  store *s = f->s;
  char h1[65], h2[65], h3[65];
  ids_sha256_hex("key-one", 7, h1);
  ids_sha256_hex("key-two", 7, h2);
  ids_sha256_hex("key-three", 9, h3);
  int64_t k1 = 0, k2 = 0, k3 = 0, dup = 0;
  assert_int_equal(s->ops->key_create(s, f->account, h1, "igk_one", "laptop", NOW, &k1), STORE_OK);
  assert_int_equal(s->ops->key_create(s, f->account, h2, "igk_two", "ci", NOW + 1, &k2), STORE_OK);
  assert_int_equal(s->ops->key_create(s, f->account, h3, "igk_thr", NULL, NOW + 2, &k3), STORE_OK);
  assert_int_equal(s->ops->key_create(s, f->account, h1, "igk_one", "again", NOW, &dup),
                   STORE_CONFLICT);
  assert_int_equal(s->ops->key_create(s, f->account + 77, "fresh", "igk_f", "x", NOW, &dup),
                   STORE_NOT_FOUND);

  /* authenticate, and last_used_ms written at most once a minute */
  store_account a;
  int64_t kid = 0;
  assert_int_equal(s->ops->key_authenticate(s, h1, NOW + 1000, &a, &kid), STORE_OK);
  assert_int_equal(kid, k1);
  assert_int_equal(a.id, f->account);
  assert_string_equal(a.email, "owner@example.com");
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT last_used_ms FROM api_keys WHERE id = %lld", (long long)k1);
  assert_int_equal(raw_int(f->path, sql), NOW + 1000);
  assert_int_equal(s->ops->key_authenticate(s, h1, NOW + 30000, &a, &kid), STORE_OK);
  assert_int_equal(raw_int(f->path, sql), NOW + 1000);
  assert_int_equal(s->ops->key_authenticate(s, h1, NOW + 70000, &a, &kid), STORE_OK);
  assert_int_equal(raw_int(f->path, sql), NOW + 70000);
  assert_int_equal(s->ops->key_authenticate(s, "no-such-hash", NOW, &a, &kid), STORE_NOT_FOUND);

  /* revoke by id; a revoked key no longer authenticates and cannot be revoked again */
  assert_int_equal(s->ops->key_revoke(s, k1, NULL, NOW + 2000), STORE_OK);
  assert_int_equal(s->ops->key_authenticate(s, h1, NOW + 3000, &a, &kid), STORE_NOT_FOUND);
  assert_int_equal(s->ops->key_revoke(s, k1, NULL, NOW + 2000), STORE_NOT_FOUND);
  /* by id with a hash that is not that key's: nothing happens */
  assert_int_equal(s->ops->key_revoke(s, k2, h3, NOW), STORE_NOT_FOUND);
  assert_int_equal(s->ops->key_authenticate(s, h2, NOW, &a, &kid), STORE_OK);
  /* by hash */
  assert_int_equal(s->ops->key_revoke(s, 0, h2, NOW + 4000), STORE_OK);
  assert_int_equal(s->ops->key_authenticate(s, h2, NOW, &a, &kid), STORE_NOT_FOUND);
  assert_int_equal(s->ops->key_revoke(s, 0, h2, NOW + 4000), STORE_NOT_FOUND);
  /* no selector matches nothing (and must not revoke everything) */
  assert_int_equal(s->ops->key_revoke(s, 0, NULL, NOW), STORE_NOT_FOUND);
  assert_int_equal(s->ops->key_authenticate(s, h3, NOW, &a, &kid), STORE_OK);
  assert_int_equal(kid, k3);

  store_key *keys = NULL;
  size_t n = 0;
  assert_int_equal(s->ops->key_list(s, f->account, &keys, &n), STORE_OK);
  assert_int_equal(n, 3);
  assert_int_equal(keys[0].id, k3); /* newest first */
  assert_int_equal(keys[1].id, k2);
  assert_int_equal(keys[2].id, k1);
  assert_string_equal(keys[0].prefix, "igk_thr");
  assert_string_equal(keys[0].name, "");
  assert_int_equal(keys[0].revoked_ms, 0);
  assert_string_equal(keys[1].name, "ci");
  assert_int_equal(keys[1].revoked_ms, NOW + 4000);
  assert_int_equal(keys[2].account_id, f->account);
  assert_int_equal(keys[2].created_ms, NOW);
  assert_int_equal(keys[2].last_used_ms, NOW + 70000);
  assert_int_equal(keys[2].revoked_ms, NOW + 2000);
  free(keys);

  assert_int_equal(s->ops->key_list(s, f->account + 77, &keys, &n), STORE_OK);
  assert_int_equal(n, 0);
  free(keys);
}

static void test_disabled_account_still_reported(void **state) {
  fx *f = *state;
  char h[65];
  ids_sha256_hex("k", 1, h);
  assert_int_equal(f->s->ops->key_create(f->s, f->account, h, "igk_k", "k", NOW, NULL), STORE_OK);
  raw_exec(f->path, "UPDATE accounts SET disabled = 1");
  store_account a;
  assert_int_equal(f->s->ops->key_authenticate(f->s, h, NOW, &a, NULL), STORE_OK);
  assert_true(a.disabled);
}

/* ---- tasks ----------------------------------------------------------------------------- */

static void test_task_insert_get(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  t->deadline_ms = NOW + 60000;
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  task *got = get_task(s, t->id);
  assert_task_equal(got, t);
  assert_null(got->provider);
  assert_null(got->inputs[1].blob_key);
  assert_null(got->inputs[1].mime);
  assert_int_equal(got->event_seq, 1); /* its QUEUED event */
  task_free(got);

  /* Defaults: no dialect is "native", no public base stays none; a caller's
   * cancel_requested or event_seq is not taken over. */
  task *plain = make_task(f->account, NOW);
  free(plain->dialect);
  free(plain->public_base);
  plain->dialect = plain->public_base = NULL;
  free(plain->output_format);
  plain->output_format = NULL; /* images as the upstream makes them */
  plain->webhook_events = 0;
  plain->cancel_requested = true;
  plain->event_seq = 42;
  assert_int_equal(s->ops->task_insert(s, plain), STORE_OK);
  got = get_task(s, plain->id);
  assert_string_equal(got->dialect, "native");
  assert_null(got->public_base);
  assert_null(got->output_format);
  assert_int_equal(got->webhook_events, 0);
  assert_int_equal(got->deadline_ms, 0);
  assert_false(got->cancel_requested);
  assert_int_equal(got->event_seq, 1);
  task_free(got);
  task_free(plain);

  assert_int_equal(s->ops->task_insert(s, t), STORE_CONFLICT);
  task *orphan = make_task(f->account + 77, NOW);
  assert_int_equal(s->ops->task_insert(s, orphan), STORE_NOT_FOUND);
  task *missing = (task *)1;
  assert_int_equal(s->ops->task_get(s, orphan->id, &missing), STORE_NOT_FOUND);
  assert_null(missing);
  /* the failed insert left no inputs (nor an event) behind */
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM task_inputs"), 4);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM task_events"), 2);
  task_free(orphan);
  task_free(t);
}

static void test_task_start(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  int attempt = 0;
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW + 10, &attempt), STORE_OK);
  assert_int_equal(attempt, 1);
  task *got = get_task(s, t->id);
  assert_int_equal(got->state, TASK_RUNNING);
  assert_int_equal(got->attempts, 1);
  assert_int_equal(got->started_ms, NOW + 10);
  assert_string_equal(got->provider, "sim");
  task_free(got);

  attempt = -5;
  assert_int_equal(s->ops->task_start(s, t->id, "other", NOW + 20, &attempt), STORE_CONFLICT);
  assert_int_equal(attempt, -5);
  got = get_task(s, t->id);
  assert_int_equal(got->attempts, 1);
  assert_string_equal(got->provider, "sim");
  task_free(got);

  char id[IDS_UUID_LEN + 1];
  assert_true(ids_uuid7(id));
  assert_int_equal(s->ops->task_start(s, id, "sim", NOW, &attempt), STORE_NOT_FOUND);
  task_free(t);
}

/* Several tasks start in one transaction; one that cannot start (started
 * already, or unknown) does not keep the others from starting. */
static void test_task_start_many(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *a = make_task(f->account, NOW), *b = make_task(f->account, NOW + 1);
  assert_int_equal(s->ops->task_insert(s, a), STORE_OK);
  assert_int_equal(s->ops->task_insert(s, b), STORE_OK);
  int attempt;
  assert_int_equal(s->ops->task_start(s, b->id, "sim", NOW, &attempt), STORE_OK);
  char unknown[IDS_UUID_LEN + 1];
  assert_true(ids_uuid7(unknown));
  store_start items[] = {{.task_id = a->id, .provider = "p1", .rc = -99, .attempt = -1},
                         {.task_id = b->id, .provider = "p2", .rc = -99, .attempt = -1},
                         {.task_id = unknown, .provider = "p3", .rc = -99, .attempt = -1}};
  assert_int_equal(s->ops->task_start_many(s, items, 3, NOW + 50), STORE_OK);
  assert_int_equal(items[0].rc, STORE_OK);
  assert_int_equal(items[0].attempt, 1);
  assert_int_equal(items[1].rc, STORE_CONFLICT);
  assert_int_equal(items[2].rc, STORE_NOT_FOUND);
  task *got = get_task(s, a->id);
  assert_int_equal(got->state, TASK_RUNNING);
  assert_int_equal(got->started_ms, NOW + 50);
  assert_string_equal(got->provider, "p1");
  task_free(got);
  got = get_task(s, b->id);
  assert_int_equal(got->attempts, 1);
  assert_string_equal(got->provider, "sim"); /* the refused item changed nothing */
  task_free(got);
  assert_int_equal(s->ops->task_start_many(s, items, 0, NOW), STORE_OK);
  task_free(a);
  task_free(b);
}

static void test_task_finish(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  int attempt = 0;
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW + 10, &attempt), STORE_OK);

  task_result r[2] = {make_result(0, "tokA"), make_result(1, "tokB")};
  assert_int_equal(s->ops->task_finish(s, t->id, attempt, TASK_RUNNING, NULL, NULL, r, 2, 0, NOW, NULL, NULL),
                   STORE_ERROR); /* not a final state */
  assert_int_equal(s->ops->task_finish(s, t->id, attempt, TASK_SUCCEEDED, NULL, NULL, r, 2, 0,
                                       NOW + 100, NULL, NULL),
                   STORE_OK);
  task *got = get_task(s, t->id);
  assert_int_equal(got->state, TASK_SUCCEEDED);
  assert_int_equal(got->finished_ms, NOW + 100);
  assert_null(got->error_code);
  assert_int_equal(got->n_results, 2);
  assert_result_equal(&got->results[0], &r[0]);
  assert_result_equal(&got->results[1], &r[1]);

  /* A second finish changes nothing, not even with different results. */
  task_result again[1] = {make_result(0, "tokC")};
  assert_int_equal(s->ops->task_finish(s, t->id, attempt, TASK_FAILED, "boom", "late", again, 1, 0,
                                       NOW + 200, NULL, NULL),
                   STORE_CONFLICT);
  task *after = get_task(s, t->id);
  assert_task_equal(after, got);
  task_result out;
  assert_int_equal(s->ops->result_by_token(s, "tokC", &out), STORE_NOT_FOUND);
  task_free(after);
  task_free(got);

  char id[IDS_UUID_LEN + 1];
  assert_true(ids_uuid7(id));
  assert_int_equal(s->ops->task_finish(s, id, 1, TASK_FAILED, "x", "y", NULL, 0, 0, NOW, NULL, NULL),
                   STORE_NOT_FOUND);
  task_result_clear(&again[0]);
  task_result_clear(&r[0]);
  task_result_clear(&r[1]);
  task_free(t);
}

static void test_task_finish_stale_attempt(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  int first = 0, second = 0;
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW, &first), STORE_OK);
  int64_t n = 0;
  assert_int_equal(s->ops->task_requeue_running(s, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_int_equal(s->ops->task_start(s, t->id, "sim2", NOW + 1, &second), STORE_OK);
  assert_int_equal(first, 1);
  assert_int_equal(second, 2);

  task_result r[1] = {make_result(0, "stale")};
  assert_int_equal(s->ops->task_finish(s, t->id, first, TASK_SUCCEEDED, NULL, NULL, r, 1, 0, NOW, NULL, NULL),
                   STORE_CONFLICT);
  task *got = get_task(s, t->id);
  assert_int_equal(got->state, TASK_RUNNING);
  assert_int_equal(got->n_results, 0);
  task_free(got);

  assert_int_equal(s->ops->task_finish(s, t->id, second, TASK_MODERATED, "moderated",
                                       "the provider refused the prompt", NULL, 0, 0, NOW + 5, NULL, NULL),
                   STORE_OK);
  got = get_task(s, t->id);
  assert_int_equal(got->state, TASK_MODERATED);
  assert_string_equal(got->error_code, "moderated");
  assert_string_equal(got->error_message, "the provider refused the prompt");
  assert_string_equal(got->provider, "sim2");
  assert_int_equal(got->n_results, 0);
  task_free(got);
  task_result_clear(&r[0]);
  task_free(t);
}

static void test_requeue_running(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t[3];
  for (int i = 0; i < 3; i++) {
    t[i] = make_task(f->account, NOW + i);
    assert_int_equal(s->ops->task_insert(s, t[i]), STORE_OK);
  }
  int attempt;
  assert_int_equal(s->ops->task_start(s, t[0]->id, "sim", NOW, &attempt), STORE_OK);
  assert_int_equal(s->ops->task_start(s, t[2]->id, "sim", NOW, &attempt), STORE_OK);
  int64_t n = -1;
  assert_int_equal(s->ops->task_requeue_running(s, &n), STORE_OK);
  assert_int_equal(n, 2);
  for (int i = 0; i < 3; i++) {
    task *got = get_task(s, t[i]->id);
    assert_int_equal(got->state, TASK_QUEUED);
    assert_int_equal(got->attempts, i == 1 ? 0 : 1);
    task_free(got);
  }
  assert_int_equal(s->ops->task_requeue_running(s, &n), STORE_OK);
  assert_int_equal(n, 0);
  for (int i = 0; i < 3; i++) task_free(t[i]);
}

static void test_list_queued(void **state) {
  fx *f = *state;
  store *s = f->s;
  /* Inserted out of order; the list follows created_ms. */
  static const int64_t created[5] = {50, 10, 40, 20, 30};
  task *t[5];
  for (int i = 0; i < 5; i++) {
    t[i] = make_task(f->account, NOW + created[i]);
    assert_int_equal(s->ops->task_insert(s, t[i]), STORE_OK);
  }
  int attempt;
  assert_int_equal(s->ops->task_start(s, t[3]->id, "sim", NOW, &attempt), STORE_OK); /* 20 */

  char (*ids)[IDS_UUID_LEN + 1] = NULL;
  size_t n = 0;
  assert_int_equal(s->ops->task_list_queued(s, 100, &ids, &n), STORE_OK);
  assert_int_equal(n, 4);
  static const int order[4] = {1, 4, 2, 0}; /* created 10, 30, 40, 50 */
  for (int i = 0; i < 4; i++) assert_string_equal(ids[i], t[order[i]]->id);
  free(ids);

  assert_int_equal(s->ops->task_list_queued(s, 2, &ids, &n), STORE_OK);
  assert_int_equal(n, 2);
  assert_string_equal(ids[0], t[1]->id);
  assert_string_equal(ids[1], t[4]->id);
  free(ids);

  assert_int_equal(s->ops->task_list_queued(s, 0, &ids, &n), STORE_OK);
  assert_int_equal(n, 0);
  free(ids);
  for (int i = 0; i < 5; i++) task_free(t[i]);
}

/* An account's tasks, newest first, a page at a time; another account's
 * tasks never show, and its task is no cursor here. */
static void test_list_account(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t other;
  assert_int_equal(s->ops->account_create(s, "other@example.com", NOW, &other), STORE_OK);
  /* Two share a created_ms: the id breaks the tie. */
  static const int64_t created[5] = {50, 10, 40, 40, 30};
  task *t[5];
  for (int i = 0; i < 5; i++) {
    t[i] = make_task(f->account, NOW + created[i]);
    assert_int_equal(s->ops->task_insert(s, t[i]), STORE_OK);
  }
  task *theirs = make_task(other, NOW + 45);
  assert_int_equal(s->ops->task_insert(s, theirs), STORE_OK);
  /* Newest first: 50, then the two 40s (higher id first), 30, 10. */
  bool second_first = strcmp(t[3]->id, t[2]->id) > 0;
  const char *order[5] = {t[0]->id, second_first ? t[3]->id : t[2]->id,
                          second_first ? t[2]->id : t[3]->id, t[4]->id, t[1]->id};
  char (*ids)[IDS_UUID_LEN + 1] = NULL;
  size_t n = 0;
  const char *after = NULL;
  char cursor[IDS_UUID_LEN + 1];
  size_t seen = 0;
  for (int page = 0; page < 3; page++) {
    assert_int_equal(s->ops->task_list_account(s, f->account, after, 2, &ids, &n), STORE_OK);
    assert_int_equal(n, page < 2 ? 2 : 1);
    for (size_t i = 0; i < n; i++) assert_string_equal(ids[i], order[seen++]);
    snprintf(cursor, sizeof cursor, "%s", ids[n - 1]);
    after = cursor;
    free(ids);
  }
  assert_int_equal(seen, 5);
  /* After the last one: an empty page, not an error. */
  assert_int_equal(s->ops->task_list_account(s, f->account, after, 2, &ids, &n), STORE_OK);
  assert_int_equal(n, 0);
  free(ids);
  /* The other account's task is no cursor for this one, nor an unknown id. */
  assert_int_equal(s->ops->task_list_account(s, f->account, theirs->id, 2, &ids, &n),
                   STORE_NOT_FOUND);
  free(ids);
  assert_int_equal(s->ops->task_list_account(s, f->account, "00000000-0000-7000-8000-000000000000",
                                             2, &ids, &n),
                   STORE_NOT_FOUND);
  free(ids);
  assert_int_equal(s->ops->task_list_account(s, other, NULL, 10, &ids, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_string_equal(ids[0], theirs->id);
  free(ids);
  for (int i = 0; i < 5; i++) task_free(t[i]);
  task_free(theirs);
}

static void test_result_by_token(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  int attempt;
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW, &attempt), STORE_OK);
  task_result r[2] = {make_result(0, "tok-zero"), make_result(1, "tok-one")};
  assert_int_equal(s->ops->task_finish(s, t->id, attempt, TASK_SUCCEEDED, NULL, NULL, r, 2, 0, NOW, NULL, NULL),
                   STORE_OK);
  task_result out;
  assert_int_equal(s->ops->result_by_token(s, "tok-one", &out), STORE_OK);
  assert_result_equal(&out, &r[1]);
  task_result_clear(&out);
  assert_int_equal(s->ops->result_by_token(s, "tok-two", &out), STORE_NOT_FOUND);
  assert_null(out.token);
  task_result_clear(&r[0]);
  task_result_clear(&r[1]);
  task_free(t);
}

/* A duplicate token (a result that is not unique) fails the whole finish:
 * the state change rolls back with it. */
static void test_finish_is_atomic(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  int attempt;
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW, &attempt), STORE_OK);
  task_result r[2] = {make_result(0, "same"), make_result(1, "same")};
  assert_int_equal(s->ops->task_finish(s, t->id, attempt, TASK_SUCCEEDED, NULL, NULL, r, 2, 0, NOW, NULL, NULL),
                   STORE_ERROR);
  task *got = get_task(s, t->id);
  assert_int_equal(got->state, TASK_RUNNING);
  assert_int_equal(got->n_results, 0);
  task_free(got);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM task_results"), 0);
  task_result_clear(&r[0]);
  task_result_clear(&r[1]);
  task_free(t);
}

/* ---- concurrency ----------------------------------------------------------------------- */

#define RACE_THREADS 8
#define RACE_TASKS 50

typedef struct race {
  store *s;
  pthread_barrier_t go;
  char ids[RACE_TASKS][IDS_UUID_LEN + 1];
  atomic_int starts[RACE_TASKS];
  atomic_int finishes[RACE_TASKS];
  atomic_int errors;
} race;

typedef struct racer {
  race *r;
  int n;
} racer;

/* Every thread starts and finishes every task. A thread whose start lost
 * still tries to finish attempt 1, racing the winner's finish. */
static void race_one(race *r, int thread, int i) {
  int attempt = 1;
  int rc = r->s->ops->task_start(r->s, r->ids[i], "sim", NOW, &attempt);
  if (rc == STORE_OK)
    atomic_fetch_add(&r->starts[i], 1);
  else if (rc != STORE_CONFLICT)
    atomic_fetch_add(&r->errors, 1);
  char token[64];
  snprintf(token, sizeof token, "race-%d-%d", i, thread);
  task_result res = {.index = 0, .blob_key = token, .token = token, .mime = "image/png",
                     .etag = "e", .width = 1, .height = 1, .bytes = 1, .expires_ms = NOW};
  rc = r->s->ops->task_finish(r->s, r->ids[i], attempt, TASK_SUCCEEDED, NULL, NULL, &res, 1, 0, NOW, NULL, NULL);
  if (rc == STORE_OK)
    atomic_fetch_add(&r->finishes[i], 1);
  else if (rc != STORE_CONFLICT)
    atomic_fetch_add(&r->errors, 1);
}

static void *race_thread(void *arg) {
  racer *me = arg;
  pthread_barrier_wait(&me->r->go);
  for (int k = 0; k < RACE_TASKS; k++) {
    int i = me->n % 2 ? RACE_TASKS - 1 - k : k; /* half go backwards */
    race_one(me->r, me->n, i);
  }
  return NULL;
}

static void test_concurrent_start_finish(void **state) {
  fx *f = *state;
  race *r = calloc(1, sizeof *r);
  assert_non_null(r);
  r->s = f->s;
  for (int i = 0; i < RACE_TASKS; i++) {
    task *t = make_task(f->account, NOW + i);
    assert_int_equal(f->s->ops->task_insert(f->s, t), STORE_OK);
    memcpy(r->ids[i], t->id, sizeof r->ids[i]);
    task_free(t);
  }
  assert_int_equal(pthread_barrier_init(&r->go, NULL, RACE_THREADS), 0);
  pthread_t th[RACE_THREADS];
  racer who[RACE_THREADS];
  for (int n = 0; n < RACE_THREADS; n++) {
    who[n] = (racer){r, n};
    assert_int_equal(pthread_create(&th[n], NULL, race_thread, &who[n]), 0);
  }
  for (int n = 0; n < RACE_THREADS; n++) pthread_join(th[n], NULL);
  pthread_barrier_destroy(&r->go);

  assert_int_equal(atomic_load(&r->errors), 0);
  for (int i = 0; i < RACE_TASKS; i++) {
    assert_int_equal(atomic_load(&r->starts[i]), 1);
    assert_int_equal(atomic_load(&r->finishes[i]), 1);
    task *t = get_task(f->s, r->ids[i]);
    assert_int_equal(t->state, TASK_SUCCEEDED);
    assert_int_equal(t->attempts, 1);
    assert_int_equal(t->n_results, 1);
    task_free(t);
  }
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM task_results"), RACE_TASKS);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(DISTINCT task_id) FROM task_results"),
                   RACE_TASKS);
  free(r);
}


/* ---- the ledger ------------------------------------------------------------------------ */

static store_account account_of(store *s, int64_t id) {
  store_account a;
  assert_int_equal(s->ops->account_get(s, id, &a), STORE_OK);
  return a;
}

static void test_ledger_grants_topups_refunds(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id, bal;
  assert_int_equal(s->ops->account_open(s, "new@example.com", NOW, 1000000, &id), STORE_OK);
  assert_int_equal(account_of(s, id).balance_micros, 1000000);
  assert_int_equal(s->ops->account_open(s, "new@example.com", NOW, 1000000, &id),
                   STORE_CONFLICT); /* and no second grant */
  assert_int_equal(s->ops->ledger_post(s, id, LEDGER_TOPUP, 2500000, "invoice 7", NOW, &bal),
                   STORE_OK);
  assert_int_equal(bal, 3500000);
  assert_int_equal(s->ops->ledger_post(s, id, LEDGER_REFUND, -4000000, "too much", NOW, &bal),
                   STORE_NO_CREDIT);
  assert_int_equal(s->ops->ledger_post(s, id, LEDGER_REFUND, -3500000, "all", NOW, &bal),
                   STORE_OK);
  assert_int_equal(bal, 0);
  assert_int_equal(s->ops->ledger_post(s, id, LEDGER_TOPUP, -1, "negative", NOW, NULL),
                   STORE_ERROR);
  assert_int_equal(s->ops->ledger_post(s, id, LEDGER_HOLD, -1, "by hand", NOW, NULL), STORE_ERROR);
  assert_int_equal(s->ops->ledger_post(s, 999999, LEDGER_TOPUP, 5, "nobody", NOW, NULL),
                   STORE_NOT_FOUND);
  ledger_entry *e;
  size_t n;
  assert_int_equal(s->ops->ledger_list(s, id, &e, &n), STORE_OK);
  assert_int_equal(n, 3);
  assert_int_equal(e[0].kind, LEDGER_GRANT);
  assert_string_equal(e[0].reason, "signup bonus");
  assert_int_equal(e[1].kind, LEDGER_TOPUP);
  assert_string_equal(e[1].reason, "invoice 7");
  assert_int_equal(e[2].kind, LEDGER_REFUND);
  assert_int_equal(e[2].available_micros, -3500000);
  free(e);
}

/* Inserts a priced task for account; returns the store's answer. */
static int insert_priced(store *s, int64_t account, int64_t unit, int64_t refs, task **out) {
  task *t = make_task(account, NOW);
  t->price_unit_micros = unit;
  t->price_refs_micros = refs;
  t->cost_held_micros = unit * t->quantity + refs;
  int rc = s->ops->task_insert(s, t);
  *out = t;
  return rc;
}

/* ---- group commit ---------------------------------------------------------------------- */

typedef struct submit_arg {
  store *s;
  int64_t account;
  int rc;
  task *t;
} submit_arg;

static void *submit_one(void *p) {
  submit_arg *a = p;
  a->rc = insert_priced(a->s, a->account, 10000, 0, &a->t);
  return NULL;
}

/* Submits that arrive while one is being written are written together, in
 * one transaction and one commit, each still with its own answer: here the
 * first waits behind a writer in another process (the admin CLI would be
 * one) while ten more queue; the ten then go in one batch, and the balance
 * covers only some of them: those are stored, the rest refused alone. */
static void test_group_commit(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id;
  assert_int_equal(s->ops->account_open(s, "batched@example.com", NOW, 60000, &id), STORE_OK);
  uint64_t batches0, submits0, batches, submits;
  size_t queued;
  bool writing;
  store_sqlite_group_commit_stats(s, &batches0, &submits0, &queued, &writing);

  /* Another connection holds the write lock. */
  sqlite3 *other;
  assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
  assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);

  enum { N = 11 };
  submit_arg args[N];
  pthread_t th[N];
  for (int i = 0; i < N; i++) {
    args[i] = (submit_arg){.s = s, .account = id};
    assert_int_equal(pthread_create(&th[i], NULL, submit_one, &args[i]), 0);
    if (i > 0) continue;
    /* The first is the writer (blocked in BEGIN) before the others come. */
    for (int k = 0; k < 5000 && !writing; k++) {
      usleep(1000);
      store_sqlite_group_commit_stats(s, &batches, &submits, &queued, &writing);
    }
    assert_true(writing);
  }
  /* Polled (bounded) until the other ten are queued behind it. */
  for (int k = 0; k < 5000; k++) {
    store_sqlite_group_commit_stats(s, &batches, &submits, &queued, &writing);
    if (queued == N - 1) break;
    usleep(1000);
  }
  assert_int_equal(queued, N - 1);
  assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(other);
  int ok = 0, poor = 0;
  for (int i = 0; i < N; i++) {
    assert_int_equal(pthread_join(th[i], NULL), 0);
    if (args[i].rc == STORE_OK) ok++;
    else if (args[i].rc == STORE_NO_CREDIT) poor++;
    else fail_msg("submit %d: %d", i, args[i].rc);
  }
  /* 60,000 covers six tasks of 10,000: six stored, five refused. */
  assert_int_equal(ok, 6);
  assert_int_equal(poor, 5);
  store_sqlite_group_commit_stats(s, &batches, &submits, &queued, &writing);
  assert_int_equal(submits - submits0, N);
  assert_int_equal(batches - batches0, 2); /* the first alone, then the ten at once */
  for (int i = 0; i < N; i++) {
    task *got = NULL;
    int rc = s->ops->task_get(s, args[i].t->id, &got);
    assert_int_equal(rc, args[i].rc == STORE_OK ? STORE_OK : STORE_NOT_FOUND);
    task_free(got);
    task_free(args[i].t);
  }
  store_account a = account_of(s, id);
  assert_int_equal(a.held_micros, 60000);
  assert_int_equal(a.balance_micros, 0);
}

/* One write of each kind, for test_group_commit_mixed. */
typedef struct write_arg {
  store *s;
  int kind; /* 0 submit, 1 start, 2 finish */
  task *t;
  int attempt;
  task_result result;
  int64_t charge; /* finish: 0 = the task's 10,000 */
  store_start item;
  int rc;
} write_arg;

static void *write_one(void *p) {
  write_arg *a = p;
  if (a->kind == 0) {
    a->rc = a->s->ops->task_insert(a->s, a->t);
  } else if (a->kind == 1) {
    a->rc = a->s->ops->task_start_many(a->s, &a->item, 1, NOW + 20);
  } else {
    a->rc = a->s->ops->task_finish(a->s, a->t->id, a->attempt, TASK_SUCCEEDED, NULL, NULL,
                                   &a->result, 1, a->charge ? a->charge : 10000, NOW + 30,
                                   NULL, NULL);
  }
  return NULL;
}

/* Starts and finishes share the group commit with submits: a submit, a
 * start and five finishes that queue behind a writer go in one commit, and
 * each keeps its own answer. Two of the finishes are of the same task: the
 * one whose compare-and-set loses gets CONFLICT, undone to its savepoint,
 * while the rest of the batch commits (one capture, never two). Another
 * asks to charge more than its hold: refused (STORE_ERROR) and undone alone,
 * its task still running; one task's bad write fails nobody else's. */
static void test_group_commit_mixed(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id;
  assert_int_equal(s->ops->account_open(s, "mixed@example.com", NOW, 1000000, &id), STORE_OK);
  enum { RUNNING = 4 };
  task *run[RUNNING];
  int attempt[RUNNING];
  for (int i = 0; i < RUNNING; i++) {
    assert_int_equal(insert_priced(s, id, 10000, 0, &run[i]), STORE_OK);
    assert_int_equal(s->ops->task_start(s, run[i]->id, "sim", NOW + 10, &attempt[i]), STORE_OK);
  }
  task *queued, *fresh;
  assert_int_equal(insert_priced(s, id, 10000, 0, &queued), STORE_OK);
  fresh = make_task(id, NOW);
  fresh->price_unit_micros = 10000;
  fresh->cost_held_micros = 10000;

  enum { N = 8 };
  write_arg args[N] = {
      {.kind = 0, .t = fresh}, /* the writer, first */
      {.kind = 1, .item = {.task_id = queued->id, .provider = "sim", .rc = -99}},
      {.kind = 2, .t = run[0], .attempt = attempt[0], .result = make_result(0, "mixA")},
      {.kind = 2, .t = run[1], .attempt = attempt[1], .result = make_result(0, "mixB")},
      {.kind = 2, .t = run[2], .attempt = attempt[2], .result = make_result(0, "mixC")},
      {.kind = 2, .t = run[2], .attempt = attempt[2], .result = make_result(0, "mixD")},
      {.kind = 2, .t = run[3], .attempt = attempt[3], .result = make_result(0, "mixE"),
       .charge = 999999},
      {.kind = 0, .t = NULL},
  };
  /* The last submit is a second one of the writer's own task: refused
   * alone (CONFLICT) without failing the batch. */
  args[N - 1].t = fresh;
  uint64_t batches0, writes0, batches, writes;
  size_t queued_n;
  bool writing;
  store_sqlite_group_commit_stats(s, &batches0, &writes0, &queued_n, &writing);

  sqlite3 *other;
  assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
  assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  pthread_t th[N];
  for (int i = 0; i < N; i++) {
    args[i].s = s;
    args[i].rc = -99;
    assert_int_equal(pthread_create(&th[i], NULL, write_one, &args[i]), 0);
    if (i > 0) continue;
    for (int k = 0; k < 5000 && !writing; k++) {
      usleep(1000);
      store_sqlite_group_commit_stats(s, &batches, &writes, &queued_n, &writing);
    }
    assert_true(writing);
  }
  for (int k = 0; k < 5000; k++) {
    store_sqlite_group_commit_stats(s, &batches, &writes, &queued_n, &writing);
    if (queued_n == N - 1) break;
    usleep(1000);
  }
  assert_int_equal(queued_n, N - 1);
  assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(other);
  for (int i = 0; i < N; i++) assert_int_equal(pthread_join(th[i], NULL), 0);

  store_sqlite_group_commit_stats(s, &batches, &writes, &queued_n, &writing);
  assert_int_equal(writes - writes0, N);
  assert_int_equal(batches - batches0, 2); /* the writer alone, then the seven at once */
  assert_int_equal(args[6].rc, STORE_ERROR);
  task *over = get_task(s, run[3]->id);
  assert_int_equal(over->state, TASK_RUNNING);
  assert_int_equal(over->n_results, 0);
  task_free(over);
  assert_int_equal(args[0].rc, STORE_OK);
  assert_int_equal(args[N - 1].rc, STORE_CONFLICT);
  assert_int_equal(args[1].rc, STORE_OK);
  assert_int_equal(args[1].item.rc, STORE_OK);
  assert_int_equal(args[2].rc, STORE_OK);
  assert_int_equal(args[3].rc, STORE_OK);
  /* run[2]: exactly one of its two finishes won. */
  assert_true((args[4].rc == STORE_OK && args[5].rc == STORE_CONFLICT) ||
              (args[4].rc == STORE_CONFLICT && args[5].rc == STORE_OK));
  const char *won = args[4].rc == STORE_OK ? "mixC" : "mixD";
  task *got = get_task(s, run[2]->id);
  assert_int_equal(got->state, TASK_SUCCEEDED);
  assert_int_equal(got->n_results, 1);
  assert_string_equal(got->results[0].token, won);
  task_free(got);
  got = get_task(s, queued->id);
  assert_int_equal(got->state, TASK_RUNNING);
  task_free(got);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM task_results WHERE token = 'mixC'"
                                    " OR token = 'mixD'"),
                   1);
  /* Three captured of 10,000 each; three holds (the queued-then-started
   * task, the fresh one, the one refused its overcharge) still held. */
  store_account a = account_of(s, id);
  assert_int_equal(a.held_micros, 30000);
  assert_int_equal(a.balance_micros, 1000000 - 3 * 10000 - 30000);
  for (int i = 0; i < RUNNING; i++) task_free(run[i]);
  for (int i = 0; i < N; i++) task_result_clear(&args[i].result);
  task_free(queued);
  task_free(fresh);
}

static void test_hold_capture_release(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id;
  assert_int_equal(s->ops->account_open(s, "buyer@example.com", NOW, 100000, &id), STORE_OK);
  task *ok, *failed, *moderated, *poor;
  assert_int_equal(insert_priced(s, id, 25000, 5000, &ok), STORE_OK);
  assert_int_equal(insert_priced(s, id, 25000, 0, &failed), STORE_OK);
  assert_int_equal(insert_priced(s, id, 25000, 0, &moderated), STORE_OK);
  store_account a = account_of(s, id);
  assert_int_equal(a.balance_micros, 100000 - 30000 - 25000 - 25000);
  assert_int_equal(a.held_micros, 80000);
  /* 20,000 left: a 25,000 task is refused and nothing of it is stored */
  assert_int_equal(insert_priced(s, id, 25000, 0, &poor), STORE_NO_CREDIT);
  task *missing = NULL;
  assert_int_equal(s->ops->task_get(s, poor->id, &missing), STORE_NOT_FOUND);
  assert_int_equal(account_of(s, id).held_micros, 80000);

  int run;
  task_result r[1] = {make_result(0, "bill-ok")};
  assert_int_equal(s->ops->task_start(s, ok->id, "p", NOW, &run), STORE_OK);
  /* The charge is the core's (unit + surcharge here); the store keeps it. */
  assert_int_equal(s->ops->task_finish(s, ok->id, run, TASK_SUCCEEDED, NULL, NULL, r, 1, 30000,
                                       NOW, NULL, NULL),
                   STORE_OK);
  task_result_clear(&r[0]);
  assert_int_equal(s->ops->task_start(s, failed->id, "p", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_finish(s, failed->id, run, TASK_FAILED, "x", "y", NULL, 0, 0, NOW,
                                       NULL, NULL),
                   STORE_OK);
  assert_int_equal(s->ops->task_start(s, moderated->id, "p", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_finish(s, moderated->id, run, TASK_MODERATED, "m", "z", NULL, 0, 0,
                                       NOW, NULL, NULL),
                   STORE_OK);
  /* A second finish (a stale run, a replay) moves no money. */
  assert_int_equal(s->ops->task_finish(s, ok->id, run, TASK_SUCCEEDED, NULL, NULL, NULL, 0, 0, NOW,
                                       NULL, NULL),
                   STORE_CONFLICT);
  a = account_of(s, id);
  assert_int_equal(a.held_micros, 0);
  assert_int_equal(a.balance_micros, 100000 - 30000); /* only the delivered image is paid */
  task *got = get_task(s, ok->id);
  assert_int_equal(got->cost_held_micros, 30000);
  assert_int_equal(got->cost_charged_micros, 30000);
  task_free(got);
  got = get_task(s, failed->id);
  assert_int_equal(got->cost_charged_micros, 0);
  task_free(got);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM ledger WHERE kind = 'capture'"), 1);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM ledger WHERE kind = 'release'"), 2);
  task_free(ok);
  task_free(failed);
  task_free(moderated);
  task_free(poor);
}

/* A task of two images that delivers one pays for one (and the reference
 * surcharge), and gets the rest back. */
static void test_list_running_and_requeue(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  store_start *runs = NULL;
  size_t n = 99;
  assert_int_equal(s->ops->task_list_running(s, 10, &runs, &n), STORE_OK);
  assert_int_equal(n, 0);
  int run;
  assert_int_equal(s->ops->task_start(s, t->id, "p", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_list_running(s, 10, &runs, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_string_equal(runs[0].task_id, t->id);
  assert_int_equal(runs[0].attempt, run);
  free(runs);
  assert_int_equal(s->ops->task_requeue(s, t->id, run + 1), STORE_CONFLICT); /* another run */
  assert_int_equal(s->ops->task_requeue(s, t->id, run), STORE_OK);
  assert_int_equal(s->ops->task_requeue(s, t->id, run), STORE_CONFLICT); /* queued now */
  task *got = get_task(s, t->id);
  assert_int_equal(got->state, TASK_QUEUED);
  task_free(got);
  assert_int_equal(s->ops->task_list_running(s, 10, &runs, &n), STORE_OK);
  assert_int_equal(n, 0);
  task_free(t);
}

static void test_partial_capture(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id;
  assert_int_equal(s->ops->account_open(s, "pair@example.com", NOW, 100000, &id), STORE_OK);
  task *t = make_task(id, NOW);
  t->quantity = 2;
  t->price_unit_micros = 25000;
  t->price_refs_micros = 2000;
  t->cost_held_micros = 2 * 25000 + 2000;
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  assert_int_equal(account_of(s, id).held_micros, 52000);
  int run;
  task_result r[1] = {make_result(0, "half")};
  assert_int_equal(s->ops->task_start(s, t->id, "p", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, r, 1, 27000,
                                       NOW, NULL, NULL),
                   STORE_OK);
  task_result_clear(&r[0]);
  store_account a = account_of(s, id);
  assert_int_equal(a.held_micros, 0);
  assert_int_equal(a.balance_micros, 100000 - 27000);
  task *got = get_task(s, t->id);
  assert_int_equal(got->cost_charged_micros, 27000);
  task_free(got);
  assert_int_equal(raw_int(f->path, "SELECT -SUM(held) FROM ledger WHERE kind = 'capture'"), 27000);
  assert_int_equal(raw_int(f->path, "SELECT SUM(available) FROM ledger WHERE kind = 'release'"),
                   25000);
  task_free(t);
}

static void test_concurrency_limit(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id;
  assert_int_equal(s->ops->account_open(s, "limited@example.com", NOW, 0, &id), STORE_OK);
  assert_int_equal(s->ops->account_set_limits(s, id, 2, -1), STORE_OK);
  assert_int_equal(account_of(s, id).max_concurrency, 2);
  assert_int_equal(account_of(s, id).qps_per_key, 0);
  task *t[3];
  assert_int_equal(insert_priced(s, id, 0, 0, &t[0]), STORE_OK);
  assert_int_equal(insert_priced(s, id, 0, 0, &t[1]), STORE_OK);
  assert_int_equal(insert_priced(s, id, 0, 0, &t[2]), STORE_LIMIT);
  int run;
  assert_int_equal(s->ops->task_start(s, t[0]->id, "p", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_finish(s, t[0]->id, run, TASK_FAILED, "x", "y", NULL, 0, 0, NOW,
                                       NULL, NULL),
                   STORE_OK);
  task_free(t[2]);
  assert_int_equal(insert_priced(s, id, 0, 0, &t[2]), STORE_OK); /* a slot came free */
  assert_int_equal(s->ops->account_set_limits(s, id, 0, 7), STORE_OK);
  assert_int_equal(account_of(s, id).max_concurrency, 0);
  assert_int_equal(account_of(s, id).qps_per_key, 7);
  assert_int_equal(s->ops->account_set_limits(s, 424242, 1, 1), STORE_NOT_FOUND);
  assert_int_equal(s->ops->account_set_disabled(s, id, true), STORE_OK);
  assert_true(account_of(s, id).disabled);
  for (int i = 0; i < 3; i++) task_free(t[i]);
}

static void test_ledger_verify_detects_drift(void **state) {
  fx *f = *state;
  int64_t id;
  assert_int_equal(f->s->ops->account_open(f->s, "drift@example.com", NOW, 5000, &id), STORE_OK);
  assert_int_equal(f->s->ops->ledger_verify(f->s), STORE_OK);
  raw_exec(f->path, "UPDATE accounts SET balance = balance + 1 WHERE email = 'drift@example.com'");
  assert_int_equal(f->s->ops->ledger_verify(f->s), STORE_CONFLICT);
  raw_exec(f->path, "UPDATE accounts SET balance = balance - 1 WHERE email = 'drift@example.com'");
  assert_int_equal(f->s->ops->ledger_verify(f->s), STORE_OK);
}

/* Rows that keep the cached sums right but move money the wrong way are
 * caught too: a release that credits more than it frees, a task that lost
 * its hold, a row filed under another account. */
static void test_ledger_verify_detects_forged_rows(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id, other;
  assert_int_equal(s->ops->account_open(s, "forge@example.com", NOW, 100000, &id), STORE_OK);
  assert_int_equal(s->ops->account_open(s, "other@example.com", NOW, 100000, &other), STORE_OK);
  task *t;
  assert_int_equal(insert_priced(s, id, 25000, 0, &t), STORE_OK);
  int run;
  assert_int_equal(s->ops->task_start(s, t->id, "p", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_FAILED, "x", "y", NULL, 0, 0, NOW, NULL, NULL),
                   STORE_OK);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);
  char sql[512];
  /* A release of +2x for a hold of x, with the cached balance moved to match. */
  snprintf(sql, sizeof sql,
           "UPDATE ledger SET available = available * 2 WHERE kind = 'release' AND task_id = '%s';"
           "UPDATE accounts SET balance = balance + 25000 WHERE id = %lld",
           t->id, (long long)id);
  raw_exec(f->path, sql);
  assert_int_equal(s->ops->ledger_verify(s), STORE_CONFLICT);
  snprintf(sql, sizeof sql,
           "UPDATE ledger SET available = available / 2 WHERE kind = 'release' AND task_id = '%s';"
           "UPDATE accounts SET balance = balance - 25000 WHERE id = %lld",
           t->id, (long long)id);
  raw_exec(f->path, sql);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);
  /* The rows filed under another account: their sums are zero, no cached sum moves. */
  snprintf(sql, sizeof sql,
           "UPDATE ledger SET account_id = %lld WHERE task_id = '%s'", (long long)other, t->id);
  raw_exec(f->path, sql);
  assert_int_equal(s->ops->ledger_verify(s), STORE_CONFLICT);
  snprintf(sql, sizeof sql, "UPDATE ledger SET account_id = %lld WHERE task_id = '%s'",
           (long long)id, t->id);
  raw_exec(f->path, sql);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);
  task_free(t);
}

/* ---- idempotency keys ------------------------------------------------------------------ */

#define IDEM_TTL 1000

/* Inserts a task priced 25,000 for account at created_ms under key/hash;
 * returns the store's answer, the task in *out (task_free it) and the first
 * task's id in first (when the key was known). */
static int insert_keyed(store *s, int64_t account, int64_t created_ms, const char *key,
                        const char *hash, task **out, char first[IDS_UUID_LEN + 1]) {
  task *t = make_task(account, created_ms);
  t->price_unit_micros = 25000;
  t->cost_held_micros = 25000;
  store_idem idem = {.key = key, .request_hash = hash, .ttl_ms = IDEM_TTL};
  int rc = s->ops->task_insert_idempotent(s, t, &idem, first);
  *out = t;
  return rc;
}

static int64_t holds_of(const char *path, const char *task_id) {
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM ledger WHERE kind = 'hold' AND task_id = '%s'",
           task_id);
  return raw_int(path, sql);
}

static int64_t key_rows_of(const char *path, const char *task_id) {
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM idempotency_keys WHERE task_id = '%s'", task_id);
  return raw_int(path, sql);
}

static void test_idem_replay_and_mismatch(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id, other;
  assert_int_equal(s->ops->account_open(s, "idem@example.com", NOW, 100000, &id), STORE_OK);
  assert_int_equal(s->ops->account_open(s, "idem2@example.com", NOW, 100000, &other), STORE_OK);
  char first[IDS_UUID_LEN + 1];
  task *a, *b, *c, *d, *e;
  assert_int_equal(insert_keyed(s, id, NOW, "order-1", "h1", &a, first), STORE_OK);
  /* The same key and request: the first task, nothing new stored or held. */
  assert_int_equal(insert_keyed(s, id, NOW + 10, "order-1", "h1", &b, first), STORE_REPLAY);
  assert_string_equal(first, a->id);
  task *missing = NULL;
  assert_int_equal(s->ops->task_get(s, b->id, &missing), STORE_NOT_FOUND);
  store_account acct = account_of(s, id);
  assert_int_equal(acct.balance_micros, 75000);
  assert_int_equal(acct.held_micros, 25000);
  assert_int_equal(holds_of(f->path, a->id), 1);
  /* The same key, another request: refused, and still nothing stored. */
  memset(first, 0, sizeof first);
  assert_int_equal(insert_keyed(s, id, NOW + 20, "order-1", "h2", &c, first),
                   STORE_IDEMPOTENCY_MISMATCH);
  assert_string_equal(first, a->id);
  assert_int_equal(s->ops->task_get(s, c->id, &missing), STORE_NOT_FOUND);
  assert_int_equal(account_of(s, id).held_micros, 25000);
  /* Keys are per account; another key is another task. */
  assert_int_equal(insert_keyed(s, other, NOW, "order-1", "h1", &d, first), STORE_OK);
  assert_int_equal(insert_keyed(s, id, NOW, "order-2", "h1", &e, first), STORE_OK);
  assert_int_equal(account_of(s, other).held_micros, 25000);
  assert_int_equal(account_of(s, id).held_micros, 50000);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys"), 3);
  /* A key row points at its task; the replay left no row of its own. */
  assert_int_equal(key_rows_of(f->path, a->id), 1);
  /* An incomplete key is the caller's bug. */
  store_idem bad = {.key = NULL, .request_hash = "h", .ttl_ms = IDEM_TTL};
  assert_int_equal(s->ops->task_insert_idempotent(s, b, &bad, first), STORE_ERROR);
  task_free(a);
  task_free(b);
  task_free(c);
  task_free(d);
  task_free(e);
}

/* A replay is answered before the limits are looked at; a refused insert
 * does not consume its key. */
static void test_idem_limits_and_refusals(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t id;
  char first[IDS_UUID_LEN + 1];
  assert_int_equal(s->ops->account_open(s, "tight@example.com", NOW, 25000, &id), STORE_OK);
  assert_int_equal(s->ops->account_set_limits(s, id, 1, -1), STORE_OK);
  task *a, *b, *c, *d, *e;
  assert_int_equal(insert_keyed(s, id, NOW, "k", "h", &a, first), STORE_OK);
  /* The balance is 0 and the one slot taken: a replay still answers. */
  assert_int_equal(insert_keyed(s, id, NOW, "k", "h", &b, first), STORE_REPLAY);
  assert_string_equal(first, a->id);
  /* A new key meets the limit; its key is not kept. */
  assert_int_equal(insert_keyed(s, id, NOW, "k2", "h", &c, first), STORE_LIMIT);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys WHERE key = 'k2'"), 0);
  int run;
  assert_int_equal(s->ops->task_start(s, a->id, "p", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_finish(s, a->id, run, TASK_FAILED, "x", "y", NULL, 0, 0, NOW, NULL, NULL),
                   STORE_OK);
  assert_int_equal(s->ops->ledger_post(s, id, LEDGER_REFUND, -25000, "empty it", NOW, NULL),
                   STORE_OK);
  /* Now the slot is free but the balance is 0: NO_CREDIT, key not kept. */
  assert_int_equal(insert_keyed(s, id, NOW, "k2", "h", &d, first), STORE_NO_CREDIT);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys WHERE key = 'k2'"), 0);
  /* After a top-up the same key goes through. */
  assert_int_equal(s->ops->ledger_post(s, id, LEDGER_TOPUP, 25000, "more", NOW, NULL), STORE_OK);
  assert_int_equal(insert_keyed(s, id, NOW, "k2", "h", &e, first), STORE_OK);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys WHERE key = 'k2'"), 1);
  task_free(a);
  task_free(b);
  task_free(c);
  task_free(d);
  task_free(e);
}

static void test_idem_expiry_and_purge(void **state) {
  fx *f = *state;
  store *s = f->s;
  char first[IDS_UUID_LEN + 1];
  task *a, *b, *c;
  int64_t id;
  assert_int_equal(s->ops->account_open(s, "rich@example.com", NOW, 1000000000, &id), STORE_OK);
  assert_int_equal(insert_keyed(s, id, NOW, "k", "h1", &a, first), STORE_OK);
  /* Alive until ttl has passed... */
  assert_int_equal(insert_keyed(s, id, NOW + IDEM_TTL - 1, "k", "h1", &b, first),
                   STORE_REPLAY);
  assert_string_equal(first, a->id);
  task_free(b);
  /* ...then forgotten: the key is free again, for any request. */
  assert_int_equal(insert_keyed(s, id, NOW + IDEM_TTL, "k", "h2", &b, first), STORE_OK);
  assert_int_equal(key_rows_of(f->path, b->id), 1);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys"), 1);
  /* and the new entry counts from its own submit */
  assert_int_equal(insert_keyed(s, id, NOW + IDEM_TTL + 5, "k", "h2", &c, first),
                   STORE_REPLAY);
  assert_string_equal(first, b->id);
  task_free(a);
  task_free(b);
  task_free(c);

  /* 150 keys, then every keyed insert after their ttl forgets up to 100. */
  const int64_t t0 = NOW + 10 * IDEM_TTL;
  for (int i = 0; i < 150; i++) {
    char key[32];
    snprintf(key, sizeof key, "bulk-%d", i);
    assert_int_equal(insert_keyed(s, id, t0 + i, key, "h", &a, first), STORE_OK);
    task_free(a);
  }
  /* (their own inserts already forgot "k", expired by then) */
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys"), 150);
  const int64_t later = t0 + 150 + IDEM_TTL;
  assert_int_equal(insert_keyed(s, id, later, "fresh-1", "h", &a, first), STORE_OK);
  task_free(a);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys"), 150 - 100 + 1);
  /* the oldest went first */
  assert_int_equal(raw_int(f->path, "SELECT MIN(created_ms) FROM idempotency_keys"), t0 + 100);
  assert_int_equal(insert_keyed(s, id, later, "fresh-2", "h", &a, first), STORE_OK);
  task_free(a);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys"), 2);
}

#define IDEM_THREADS 16

typedef struct idem_race {
  store *s;
  int64_t account;
  pthread_barrier_t go;
  atomic_int inserted, replayed, other;
  char inserted_id[IDS_UUID_LEN + 1];
  char first[IDEM_THREADS][IDS_UUID_LEN + 1];
} idem_race;

typedef struct idem_racer {
  idem_race *r;
  int n;
} idem_racer;

static void *idem_race_thread(void *arg) {
  idem_racer *me = arg;
  idem_race *r = me->r;
  task *t = make_task(r->account, NOW);
  store_idem idem = {.key = "same-key", .request_hash = "same-hash", .ttl_ms = IDEM_TTL};
  pthread_barrier_wait(&r->go);
  int rc = r->s->ops->task_insert_idempotent(r->s, t, &idem, r->first[me->n]);
  if (rc == STORE_OK) {
    memcpy(r->inserted_id, t->id, sizeof r->inserted_id);
    atomic_fetch_add(&r->inserted, 1);
  } else if (rc == STORE_REPLAY) {
    atomic_fetch_add(&r->replayed, 1);
  } else {
    atomic_fetch_add(&r->other, 1);
  }
  task_free(t);
  return NULL;
}

static void test_idem_concurrent_duplicates(void **state) {
  fx *f = *state;
  idem_race *r = calloc(1, sizeof *r);
  assert_non_null(r);
  r->s = f->s;
  r->account = f->account;
  assert_int_equal(pthread_barrier_init(&r->go, NULL, IDEM_THREADS), 0);
  pthread_t th[IDEM_THREADS];
  idem_racer who[IDEM_THREADS];
  for (int n = 0; n < IDEM_THREADS; n++) {
    who[n] = (idem_racer){r, n};
    assert_int_equal(pthread_create(&th[n], NULL, idem_race_thread, &who[n]), 0);
  }
  for (int n = 0; n < IDEM_THREADS; n++) pthread_join(th[n], NULL);
  pthread_barrier_destroy(&r->go);
  assert_int_equal(atomic_load(&r->inserted), 1);
  assert_int_equal(atomic_load(&r->replayed), IDEM_THREADS - 1);
  assert_int_equal(atomic_load(&r->other), 0);
  for (int n = 0; n < IDEM_THREADS; n++)
    if (r->first[n][0]) assert_string_equal(r->first[n], r->inserted_id);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM tasks"), 1);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM idempotency_keys"), 1);
  free(r);
}

/* ---- a broken store -------------------------------------------------------------------- */

static void assert_healthy(store *s) {
  char reason[256] = "not touched";
  assert_int_equal(s->ops->health(s, reason, sizeof reason), STORE_OK);
  assert_string_equal(reason, "");
}

/* The store is broken, and says so with a reason containing want. */
static void assert_broken(store *s, const char *want) {
  char reason[256] = "";
  assert_int_equal(s->ops->health(s, reason, sizeof reason), STORE_ERROR);
  if (!strstr(reason, want)) fail_msg("health reason \"%s\" lacks \"%s\"", reason, want);
  assert_int_equal(s->ops->health(s, NULL, 0), STORE_ERROR); /* reason is optional */
}

/* A new database file at path (rollback journal: one file), with sql run in it. */
static void raw_create(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
}

static void unlink_db_files(const char *path) {
  static const char *const suffixes[] = {"", "-wal", "-shm"};
  for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
    char p[160];
    snprintf(p, sizeof p, "%s%s", path, suffixes[i]);
    unlink(p);
  }
}

/* `rm imgate.db*` under an open store: health says so, and no write
 * lands in the unlinked file (where a restart would never find it), the
 * final write of a running task (its capture) included. Reads go on. */
static void test_health_database_removed(void **state) {
  fx *f = *state;
  task *t = make_task(f->account, NOW);
  t->cost_held_micros = 9500;
  assert_int_equal(f->s->ops->ledger_post(f->s, f->account, LEDGER_TOPUP, 100000, "t", NOW, NULL),
                   STORE_OK);
  assert_int_equal(f->s->ops->task_insert(f->s, t), STORE_OK);
  int attempt = 0;
  assert_int_equal(f->s->ops->task_start(f->s, t->id, "sim", NOW + 1, &attempt), STORE_OK);
  assert_healthy(f->s);

  unlink_db_files(f->path);
  assert_broken(f->s, "imgate.db was removed");

  int64_t id = 0;
  assert_int_equal(f->s->ops->account_create(f->s, "late@example.com", NOW, &id), STORE_ERROR);
  task_result r = make_result(0, "tok-removed");
  assert_int_equal(f->s->ops->task_finish(f->s, t->id, attempt, TASK_SUCCEEDED, NULL, NULL, &r, 1, 0,
                                          NOW + 2, NULL, NULL),
                   STORE_ERROR);
  task_result_clear(&r);
  assert_int_equal(f->s->ops->ledger_post(f->s, f->account, LEDGER_TOPUP, 1, "t", NOW, NULL),
                   STORE_ERROR);
  /* Reads answer from the file the store holds open: the refused writes are
   * in it nowhere, and the task is still running with its hold. */
  store_account a;
  assert_int_equal(f->s->ops->account_get_by_email(f->s, "late@example.com", &a), STORE_NOT_FOUND);
  task *got = get_task(f->s, t->id);
  assert_int_equal(got->state, TASK_RUNNING);
  assert_int_equal(got->n_results, 0);
  task_free(got);
  ledger_entry *e = NULL;
  size_t n = 0;
  assert_int_equal(f->s->ops->ledger_list(f->s, f->account, &e, &n), STORE_OK);
  assert_int_equal(n, 2); /* the topup and the hold: no capture, no second topup */
  assert_int_equal(e[1].kind, LEDGER_HOLD);
  free(e);

  /* A new file at the path does not heal it: it is not the file the
   * connections write to. */
  raw_create(f->path, "CREATE TABLE unrelated(x)");
  assert_broken(f->s, "imgate.db was removed");
  assert_int_equal(f->s->ops->account_create(f->s, "later@example.com", NOW, &id), STORE_ERROR);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM sqlite_master"), 1);
  task_free(t);
}

/* Reads a whole small file; *len its size. */
static char *slurp(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  char *buf = malloc(1 << 20);
  assert_non_null(buf);
  *len = fread(buf, 1, 1 << 20, fp);
  assert_true(feof(fp));
  fclose(fp);
  return buf;
}

/* Another file renamed over the database (a restore done while the server
 * runs): the store notices, and writes neither to its old file nor to the
 * new one. */
static void test_health_database_replaced(void **state) {
  fx *f = *state;
  char other[160];
  snprintf(other, sizeof other, "%s/other.db", f->dir);
  raw_create(other, "CREATE TABLE restored(x); INSERT INTO restored VALUES (42);");
  size_t before_len, after_len;
  char *before = slurp(other, &before_len);
  assert_healthy(f->s);

  assert_int_equal(rename(other, f->path), 0);
  assert_broken(f->s, "imgate.db was replaced by another file");
  task *t = make_task(f->account, NOW);
  assert_int_equal(f->s->ops->task_insert(f->s, t), STORE_ERROR);
  int64_t id = 0;
  assert_int_equal(f->s->ops->key_create(f->s, f->account, "ab12", "igk_ab", "k", NOW, &id),
                   STORE_ERROR);
  task *got = NULL;
  assert_int_equal(f->s->ops->task_get(f->s, t->id, &got), STORE_NOT_FOUND);
  /* The new file is untouched, byte for byte (opening it with SQLite here
   * would replay the old database's -wal into it: the store's files must
   * be replaced as a set, with the server stopped). */
  char *after = slurp(f->path, &after_len);
  assert_int_equal(after_len, before_len);
  assert_memory_equal(after, before, before_len);
  free(before);
  free(after);
  task_free(t);
}

/* ---- a disk that fails ---- */

/* A VFS over the default one whose syncs fail while fail_syncs is set: a
 * disk that reports an I/O error when a commit is made durable. */
typedef struct fault_file {
  sqlite3_file base;
  sqlite3_file *real; /* allocated right after this struct */
} fault_file;

static sqlite3_vfs *fault_real_vfs;
static _Atomic bool fail_syncs;

#define REAL(f) (((fault_file *)(f))->real)
static int ff_close(sqlite3_file *f) { return REAL(f)->pMethods->xClose(REAL(f)); }
static int ff_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o) {
  return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}
static int ff_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o) {
  return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int ff_truncate(sqlite3_file *f, sqlite3_int64 size) {
  return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int ff_sync(sqlite3_file *f, int flags) {
  if (atomic_load(&fail_syncs)) return SQLITE_IOERR_FSYNC;
  return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int ff_file_size(sqlite3_file *f, sqlite3_int64 *size) {
  return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int ff_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int ff_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int ff_check_reserved(sqlite3_file *f, int *out) {
  return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int ff_file_control(sqlite3_file *f, int op, void *arg) {
  return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int ff_sector_size(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int ff_device_chars(sqlite3_file *f) {
  return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int ff_shm_map(sqlite3_file *f, int pg, int size, int extend, void volatile **out) {
  return REAL(f)->pMethods->xShmMap(REAL(f), pg, size, extend, out);
}
static int ff_shm_lock(sqlite3_file *f, int off, int n, int flags) {
  return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void ff_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int ff_shm_unmap(sqlite3_file *f, int del) {
  return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int ff_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **out) {
  return REAL(f)->pMethods->xFetch(REAL(f), o, n, out);
}
static int ff_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p) {
  return REAL(f)->pMethods->xUnfetch(REAL(f), o, p);
}

static const sqlite3_io_methods fault_io = {
    .iVersion = 3,
    .xClose = ff_close,
    .xRead = ff_read,
    .xWrite = ff_write,
    .xTruncate = ff_truncate,
    .xSync = ff_sync,
    .xFileSize = ff_file_size,
    .xLock = ff_lock,
    .xUnlock = ff_unlock,
    .xCheckReservedLock = ff_check_reserved,
    .xFileControl = ff_file_control,
    .xSectorSize = ff_sector_size,
    .xDeviceCharacteristics = ff_device_chars,
    .xShmMap = ff_shm_map,
    .xShmLock = ff_shm_lock,
    .xShmBarrier = ff_shm_barrier,
    .xShmUnmap = ff_shm_unmap,
    .xFetch = ff_fetch,
    .xUnfetch = ff_unfetch,
};

static int fault_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags,
                      int *out_flags) {
  (void)vfs;
  fault_file *ff = (fault_file *)file;
  ff->real = (sqlite3_file *)(ff + 1);
  int rc = fault_real_vfs->xOpen(fault_real_vfs, name, ff->real, flags, out_flags);
  ff->base.pMethods = ff->real->pMethods ? &fault_io : NULL;
  return rc;
}

static sqlite3_vfs fault_vfs;

/* An fsync that fails while a commit is made durable breaks the store for
 * good: the kernel may have dropped the pages, and a later sync that works
 * would not bring them back. Writes stay refused after the disk recovers. */
static void test_health_failed_sync(void **state) {
  fx *f = *state;
  fault_real_vfs = sqlite3_vfs_find(NULL);
  assert_non_null(fault_real_vfs);
  assert_true(fault_real_vfs->iVersion >= 2);
  fault_vfs = *fault_real_vfs;
  fault_vfs.zName = "imgate-test-fault";
  fault_vfs.szOsFile = (int)sizeof(fault_file) + fault_real_vfs->szOsFile;
  fault_vfs.xOpen = fault_open;
  assert_int_equal(sqlite3_vfs_register(&fault_vfs, 1), SQLITE_OK); /* the default now */
  store_sqlite_set_sync(STORE_SYNC_FULL); /* every commit syncs */
  char path[160];
  snprintf(path, sizeof path, "%s/faulty.db", f->dir);
  store *s = open_store(path);
  int64_t id = 0;
  assert_int_equal(s->ops->account_create(s, "a@example.com", NOW, &id), STORE_OK);
  assert_healthy(s);

  atomic_store(&fail_syncs, true);
  assert_int_equal(s->ops->account_create(s, "b@example.com", NOW, &id), STORE_ERROR);
  atomic_store(&fail_syncs, false);
  assert_broken(s, "disk I/O error");
  assert_int_equal(s->ops->account_create(s, "c@example.com", NOW, &id), STORE_ERROR);
  store_account a;
  assert_int_equal(s->ops->account_get_by_email(s, "c@example.com", &a), STORE_NOT_FOUND);
  assert_int_equal(s->ops->account_get_by_email(s, "a@example.com", &a), STORE_OK);
  s->ops->close(s);

  /* Opened again (a restart), the same file is healthy and takes writes. */
  s = open_store(path);
  assert_healthy(s);
  assert_int_equal(s->ops->account_create(s, "c@example.com", NOW, &id), STORE_OK);
  s->ops->close(s);
  assert_int_equal(sqlite3_vfs_register(fault_real_vfs, 1), SQLITE_OK);
  assert_int_equal(sqlite3_vfs_unregister(&fault_vfs), SQLITE_OK);
  unlink_db_files(path);
}

/* ---- task events ----------------------------------------------------------------------- */

/* One integer from a query built with printf. */
static int64_t raw_intf(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int64_t raw_intf(const char *path, const char *fmt, ...) {
  char sql[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(sql, sizeof sql, fmt, ap);
  va_end(ap);
  return raw_int(path, sql);
}

/* The task's events after after_seq; asserts the call worked. */
static task_event *events_of(store *s, const char *id, int after_seq, size_t *n) {
  task_event *ev = NULL;
  assert_int_equal(s->ops->task_events(s, id, after_seq, &ev, n), STORE_OK);
  return ev;
}

static void assert_event(const task_event *e, int seq, task_event_kind kind, int64_t at_ms,
                         int run, const char *provider, int http_status, const char *code) {
  if (e->seq != seq || e->kind != kind)
    fail_msg("event %d %s, wanted %d %s", e->seq, task_event_kind_name(e->kind), seq,
             task_event_kind_name(kind));
  assert_int_equal(e->at_ms, at_ms);
  assert_int_equal(e->run, run);
  assert_string_equal(e->provider, provider);
  assert_int_equal(e->http_status, http_status);
  assert_string_equal(e->error_code, code);
}

static int event_seq_of(store *s, const char *id) {
  task *t = get_task(s, id);
  int seq = t->event_seq;
  task_free(t);
  return seq;
}

/* Every state change, and an attempt to retry, is an event numbered in
 * order, with what each kind carries. */
static void test_events_through_a_life(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  int run;
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW + 10, &run), STORE_OK);
  task_attempt a = {.run = run, .provider = "sim", .upstream_model = "m", .started_ms = NOW + 11,
                    .ended_ms = NOW + 12, .http_status = 503, .error_class = "server",
                    .error_code = "upstream_unavailable"};
  assert_int_equal(s->ops->task_attempt_add(s, t->id, &a), STORE_OK);
  a.error_code = NULL; /* without a code the event names the class */
  a.http_status = 0;
  a.error_class = "timeout";
  a.ended_ms = NOW + 13;
  assert_int_equal(s->ops->task_attempt_add(s, t->id, &a), STORE_OK);
  assert_int_equal(s->ops->task_requeue(s, t->id, run), STORE_OK);
  store_start item = {.task_id = t->id, .provider = "gemini-1"};
  assert_int_equal(s->ops->task_start_many(s, &item, 1, NOW + 20), STORE_OK);
  assert_int_equal(item.rc, STORE_OK);
  int64_t n64;
  assert_int_equal(s->ops->task_requeue_running(s, &n64), STORE_OK);
  assert_int_equal(n64, 1);
  assert_int_equal(s->ops->task_start(s, t->id, NULL, NOW + 30, &run), STORE_OK);
  assert_int_equal(run, 3);
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_FAILED, "no_provider_available", "m",
                                       NULL, 0, 0, NOW + 40, NULL, NULL),
                   STORE_OK);

  size_t n = 0;
  task_event *ev = events_of(s, t->id, 0, &n);
  assert_int_equal(n, 9);
  assert_event(&ev[0], 1, TASK_EVENT_QUEUED, NOW, 0, "", 0, "");
  assert_event(&ev[1], 2, TASK_EVENT_RUNNING, NOW + 10, 1, "sim", 0, "");
  assert_event(&ev[2], 3, TASK_EVENT_ATTEMPT, NOW + 12, 1, "sim", 503, "upstream_unavailable");
  assert_event(&ev[3], 4, TASK_EVENT_ATTEMPT, NOW + 13, 1, "sim", 0, "timeout");
  assert_int_equal(ev[4].kind, TASK_EVENT_QUEUED); /* requeue: stamped with the clock */
  assert_int_equal(ev[4].run, 1);
  assert_true(ev[4].at_ms > NOW);
  assert_event(&ev[5], 6, TASK_EVENT_RUNNING, NOW + 20, 2, "gemini-1", 0, "");
  assert_int_equal(ev[6].kind, TASK_EVENT_QUEUED); /* crash recovery */
  assert_int_equal(ev[6].run, 2);
  /* started with no provider: the event names the recorded one */
  assert_event(&ev[7], 8, TASK_EVENT_RUNNING, NOW + 30, 3, "gemini-1", 0, "");
  assert_event(&ev[8], 9, TASK_EVENT_FAILED, NOW + 40, 3, "", 0, "no_provider_available");
  free(ev);
  assert_int_equal(event_seq_of(s, t->id), 9);

  /* after_seq: only what came later; nothing new is an empty answer. */
  ev = events_of(s, t->id, 7, &n);
  assert_int_equal(n, 2);
  assert_int_equal(ev[0].seq, 8);
  assert_int_equal(ev[1].seq, 9);
  free(ev);
  ev = events_of(s, t->id, 9, &n);
  assert_int_equal(n, 0);
  free(ev);
  char unknown[IDS_UUID_LEN + 1];
  assert_true(ids_uuid7(unknown));
  ev = (task_event *)1;
  assert_int_equal(s->ops->task_events(s, unknown, 0, &ev, &n), STORE_NOT_FOUND);
  assert_null(ev);
  assert_int_equal(n, 0);

  /* A succeeded task's last event, and a queued task's cancel. */
  task *ok = make_task(f->account, NOW), *gone = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, ok), STORE_OK);
  assert_int_equal(s->ops->task_insert(s, gone), STORE_OK);
  assert_int_equal(s->ops->task_start(s, ok->id, "sim", NOW, &run), STORE_OK);
  task_result r = make_result(0, "ev-ok");
  assert_int_equal(
      s->ops->task_finish(s, ok->id, run, TASK_SUCCEEDED, NULL, NULL, &r, 1, 0, NOW + 5, NULL, NULL),
      STORE_OK);
  task_result_clear(&r);
  ev = events_of(s, ok->id, 1, &n);
  assert_int_equal(n, 2);
  assert_event(&ev[1], 3, TASK_EVENT_SUCCEEDED, NOW + 5, 1, "", 0, "");
  free(ev);
  assert_int_equal(s->ops->task_cancel(s, gone->id, NOW + 7, "deadline_exceeded", NULL, NULL),
                   STORE_OK);
  ev = events_of(s, gone->id, 0, &n);
  assert_int_equal(n, 2);
  assert_event(&ev[1], 2, TASK_EVENT_CANCELED, NOW + 7, 0, "", 0, "deadline_exceeded");
  free(ev);
  task_free(ok);
  task_free(gone);
  task_free(t);
}

/* An op that changes nothing writes no event: a start that loses, a finish
 * that loses its compare-and-set or fails, a replayed insert, a late attempt. */
static void test_events_only_with_a_change(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  int run, other;
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW, &other), STORE_CONFLICT);
  assert_int_equal(event_seq_of(s, t->id), 2);
  /* a finish of another run loses its compare-and-set */
  assert_int_equal(s->ops->task_finish(s, t->id, run + 1, TASK_FAILED, "x", "y", NULL, 0, 0, NOW,
                                       NULL, NULL),
                   STORE_CONFLICT);
  assert_int_equal(s->ops->task_requeue(s, t->id, run + 1), STORE_CONFLICT);
  assert_int_equal(event_seq_of(s, t->id), 2);
  /* a finish whose results cannot be stored rolls its event back with it */
  task_result r[2] = {make_result(0, "twice"), make_result(1, "twice")};
  assert_int_equal(
      s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, r, 2, 0, NOW, NULL, NULL),
      STORE_ERROR);
  assert_int_equal(event_seq_of(s, t->id), 2);
  assert_int_equal(raw_intf(f->path, "SELECT COUNT(*) FROM task_events WHERE task_id = '%s'",
                            t->id),
                   2);
  assert_int_equal(
      s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, r, 1, 0, NOW, NULL, NULL),
      STORE_OK);
  task_result_clear(&r[0]);
  task_result_clear(&r[1]);
  /* an attempt recorded after the task finished stays in the history
   * without an event: nothing follows a final event */
  task_attempt late = {.run = run, .provider = "sim", .upstream_model = "m",
                       .error_class = "server", .ended_ms = NOW + 1};
  assert_int_equal(s->ops->task_attempt_add(s, t->id, &late), STORE_OK);
  task *got = get_task(s, t->id);
  assert_int_equal(got->event_seq, 3);
  assert_int_equal(got->n_upstream_attempts, 1);
  task_free(got);
  /* nor does a replayed idempotent insert */
  int64_t payer;
  assert_int_equal(s->ops->account_open(s, "payer@example.com", NOW, 100000, &payer), STORE_OK);
  task *k;
  char first[IDS_UUID_LEN + 1];
  assert_int_equal(insert_keyed(s, payer, NOW, "k-1", "h", &k, first), STORE_OK);
  task_free(k);
  assert_int_equal(insert_keyed(s, payer, NOW, "k-1", "h", &k, first), STORE_REPLAY);
  assert_int_equal(raw_intf(f->path, "SELECT COUNT(*) FROM task_events WHERE task_id = '%s'",
                            k->id),
                   0);
  assert_int_equal(raw_intf(f->path, "SELECT COUNT(*) FROM task_events WHERE task_id = '%s'",
                            first),
                   1);
  task_free(k);
  task_free(t);
}

/* ---- prices per image ------------------------------------------------------------------ */

/* A GPT Image task: its quality is kept; each result keeps the price the
 * core gave it and the quality its upstream reported; the charge is the
 * core's amount, captured as given and the rest released. */
static void test_quality_and_image_prices(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t acc;
  assert_int_equal(s->ops->account_open(s, "grid@example.com", NOW, 1000000, &acc), STORE_OK);
  task *t = make_task(acc, NOW);
  free(t->model);
  t->model = xstrdup("gpt-image-1");
  t->quality = xstrdup("auto");
  t->quantity = 2;
  t->price_unit_micros = 250000;
  t->cost_held_micros = 500000;
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  task *plain = make_task(acc, NOW + 1); /* no quality: NULL stays NULL */
  assert_int_equal(s->ops->task_insert(s, plain), STORE_OK);
  task *got = get_task(s, plain->id);
  assert_null(got->quality);
  task_free(got);
  got = get_task(s, t->id);
  assert_string_equal(got->quality, "auto");
  task_free(got);

  int run;
  assert_int_equal(s->ops->task_start(s, t->id, "p", NOW, &run), STORE_OK);
  task_result r[2] = {make_result(0, "grid-a"), make_result(1, "grid-b")};
  r[0].price_micros = 11000;
  r[0].quality = xstrdup("low");
  r[1].price_micros = 63000;
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, r, 2, 74000,
                                       NOW, NULL, NULL),
                   STORE_OK);
  task_result_clear(&r[0]);
  task_result_clear(&r[1]);
  got = get_task(s, t->id);
  assert_int_equal(got->n_results, 2);
  assert_int_equal(got->results[0].price_micros, 11000);
  assert_string_equal(got->results[0].quality, "low");
  assert_int_equal(got->results[1].price_micros, 63000);
  assert_null(got->results[1].quality);
  assert_int_equal(got->cost_held_micros, 500000);
  assert_int_equal(got->cost_charged_micros, 74000);
  task_free(got);
  task_result one;
  assert_int_equal(s->ops->result_by_token(s, "grid-a", &one), STORE_OK);
  assert_int_equal(one.price_micros, 11000);
  assert_string_equal(one.quality, "low");
  task_result_clear(&one);
  store_account a = account_of(s, acc);
  assert_int_equal(a.held_micros, 0);
  assert_int_equal(a.balance_micros, 1000000 - 74000);
  assert_int_equal(raw_intf(f->path,
                            "SELECT COUNT(*) FROM ledger WHERE task_id = '%s' AND ("
                            "(kind = 'capture' AND available = 0 AND held = -74000) OR"
                            " (kind = 'release' AND available = 426000 AND held = -426000))",
                            t->id),
                   2);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);
  task_free(t);
  task_free(plain);
}

/* ---- backgrounds and masks ------------------------------------------------------------- */

/* A task's background and mask come back as stored: the mask apart from
 * the reference images (a provider that takes none never sees it among
 * them), numbered after them in task_inputs, and referenced for the orphan
 * collector like an input; a result keeps the background its upstream
 * reported. A task without either reads back NULL. */
static void test_background_and_mask(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  free(t->model);
  t->model = xstrdup("gpt-image-1");
  t->background = xstrdup("transparent");
  t->mask = calloc(1, sizeof *t->mask);
  assert_non_null(t->mask);
  char key[128];
  snprintf(key, sizeof key, "inputs/%s/mask.png", t->id);
  t->mask->blob_key = xstrdup(key);
  t->mask->mime = xstrdup("image/png");
  t->mask->bytes = 321;
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  task *got = get_task(s, t->id);
  assert_task_equal(got, t);
  assert_int_equal(got->n_inputs, 2); /* the two images, not the mask */
  assert_non_null(got->mask);
  assert_string_equal(got->mask->blob_key, key);
  assert_null(got->mask->url);
  task_free(got);
  assert_int_equal(raw_intf(f->path,
                            "SELECT COUNT(*) FROM task_inputs WHERE task_id = '%s' AND role = 'mask'"
                            " AND idx = 2",
                            t->id),
                   1);
  /* The orphan collector's view: the mask is one of the task's inputs. */
  task_state st;
  store_blob_ref *refs = NULL;
  size_t n = 0;
  assert_int_equal(s->ops->task_blob_refs(s, t->id, &st, &refs, &n), STORE_OK);
  bool listed = false;
  for (size_t i = 0; i < n; i++) listed |= !refs[i].result && strcmp(refs[i].blob_key, key) == 0;
  assert_true(listed);
  assert_int_equal(n, 3);
  free(refs);

  /* Neither: NULL and NULL. A mask without images is the core's to refuse;
   * the store keeps what it is given (the mask at idx 0). */
  task *plain = make_task(f->account, NOW + 1);
  assert_int_equal(s->ops->task_insert(s, plain), STORE_OK);
  got = get_task(s, plain->id);
  assert_null(got->background);
  assert_null(got->mask);
  assert_int_equal(got->n_inputs, 2);
  task_free(got);
  task *only_mask = make_task(f->account, NOW + 2);
  for (size_t i = 0; i < only_mask->n_inputs; i++) task_input_clear(&only_mask->inputs[i]);
  free(only_mask->inputs);
  only_mask->inputs = NULL;
  only_mask->n_inputs = 0;
  only_mask->mask = calloc(1, sizeof *only_mask->mask);
  assert_non_null(only_mask->mask);
  only_mask->mask->blob_key = xstrdup("inputs/m/mask.png");
  only_mask->mask->bytes = 5;
  assert_int_equal(s->ops->task_insert(s, only_mask), STORE_OK);
  got = get_task(s, only_mask->id);
  assert_int_equal(got->n_inputs, 0);
  assert_null(got->inputs);
  assert_non_null(got->mask);
  assert_string_equal(got->mask->blob_key, "inputs/m/mask.png");
  task_free(got);

  /* The schema refuses what the core never writes: a background outside
   * the three, a second mask. */
  assert_int_equal(raw_intf(f->path,
                            "SELECT COUNT(*) FROM pragma_index_list('task_inputs')"
                            " WHERE name = 'task_inputs_one_mask' AND \"unique\" = 1"),
                   1);
  task *bad = make_task(f->account, NOW + 3);
  bad->background = xstrdup("checkered");
  assert_int_not_equal(s->ops->task_insert(s, bad), STORE_OK);
  task_free(bad);

  /* A result keeps the background its upstream reported, or NULL. */
  int run;
  assert_int_equal(s->ops->task_start(s, t->id, "p", NOW, &run), STORE_OK);
  task_result r[2] = {make_result(0, "bg-a"), make_result(1, "bg-b")};
  r[0].background = xstrdup("transparent");
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, r, 2, 0, NOW,
                                       NULL, NULL),
                   STORE_OK);
  got = get_task(s, t->id);
  assert_int_equal(got->n_results, 2);
  assert_result_equal(&got->results[0], &r[0]);
  assert_result_equal(&got->results[1], &r[1]);
  assert_null(got->results[1].background);
  assert_string_equal(got->background, "transparent"); /* what was asked stays */
  task_free(got);
  task_result one;
  assert_int_equal(s->ops->result_by_token(s, "bg-a", &one), STORE_OK);
  assert_string_equal(one.background, "transparent");
  task_result_clear(&one);
  task_result_clear(&r[0]);
  task_result_clear(&r[1]);
  task_free(t);
  task_free(plain);
  task_free(only_mask);
}

/* The store keeps the core's amount but refuses one the contract does not
 * allow, changing nothing: above the hold, negative, or a charge for a task
 * that delivered nothing. */
static void test_charge_outside_the_contract(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t acc;
  assert_int_equal(s->ops->account_open(s, "contract@example.com", NOW, 100000, &acc), STORE_OK);
  task *t;
  assert_int_equal(insert_priced(s, acc, 20000, 0, &t), STORE_OK);
  int run;
  assert_int_equal(s->ops->task_start(s, t->id, "p", NOW, &run), STORE_OK);
  task_result r = make_result(0, "contract");
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, &r, 1, 20001,
                                       NOW, NULL, NULL),
                   STORE_ERROR);
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, &r, 1, -1, NOW,
                                       NULL, NULL),
                   STORE_ERROR);
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, NULL, 0, 1, NOW,
                                       NULL, NULL),
                   STORE_ERROR);
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_FAILED, "x", "y", NULL, 0, 1, NOW,
                                       NULL, NULL),
                   STORE_ERROR);
  /* Nothing of those stayed: still running, still held, no result row. */
  task *got = get_task(s, t->id);
  assert_int_equal(got->state, TASK_RUNNING);
  assert_int_equal(got->n_results, 0);
  task_free(got);
  assert_int_equal(account_of(s, acc).held_micros, 20000);
  assert_int_equal(raw_intf(f->path, "SELECT COUNT(*) FROM ledger WHERE task_id = '%s'", t->id),
                   1);
  /* The whole hold is a charge the contract allows. */
  assert_int_equal(s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, &r, 1, 20000,
                                       NOW, NULL, NULL),
                   STORE_OK);
  task_result_clear(&r);
  assert_int_equal(account_of(s, acc).balance_micros, 100000 - 20000);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);
  task_free(t);
}

/* ---- cancel and deadlines -------------------------------------------------------------- */

static void test_cancel_in_each_state(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t acc;
  assert_int_equal(s->ops->account_open(s, "cancel@example.com", NOW, 100000, &acc), STORE_OK);
  task *queued, *running, *done;
  assert_int_equal(insert_priced(s, acc, 20000, 5000, &queued), STORE_OK);
  assert_int_equal(insert_priced(s, acc, 20000, 0, &running), STORE_OK);
  assert_int_equal(insert_priced(s, acc, 10000, 0, &done), STORE_OK);
  assert_int_equal(account_of(s, acc).held_micros, 55000);
  int run, done_run;
  assert_int_equal(s->ops->task_start(s, running->id, "sim", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_start(s, done->id, "sim", NOW, &done_run), STORE_OK);
  task_result r = make_result(0, "cancel-done");
  assert_int_equal(s->ops->task_finish(s, done->id, done_run, TASK_SUCCEEDED, NULL, NULL, &r, 1,
                                       10000, NOW, NULL, NULL),
                   STORE_OK);
  task_result_clear(&r);

  /* queued: canceled at once, the whole hold back, event and delivery */
  store_outbox ob = {.id = "msg_00000000000000000000000000000001", .event = "task.canceled",
                     .url = "https://example.com/hook"};
  task_state st = TASK_FAILED;
  assert_int_equal(s->ops->task_cancel(s, queued->id, NOW + 100, "canceled", &ob, &st), STORE_OK);
  assert_int_equal(st, TASK_CANCELED);
  task *got = get_task(s, queued->id);
  assert_int_equal(got->state, TASK_CANCELED);
  assert_int_equal(got->finished_ms, NOW + 100);
  assert_string_equal(got->error_code, "canceled");
  assert_int_equal(got->cost_charged_micros, 0);
  assert_int_equal(got->event_seq, 2);
  task_free(got);
  assert_int_equal(account_of(s, acc).held_micros, 20000);
  assert_int_equal(account_of(s, acc).balance_micros, 100000 - 20000 - 10000);
  assert_int_equal(raw_intf(f->path,
                            "SELECT COUNT(*) FROM ledger WHERE task_id = '%s' AND kind = 'release'"
                            " AND available = 25000 AND held = -25000",
                            queued->id),
                   1);
  assert_int_equal(raw_intf(f->path,
                            "SELECT COUNT(*) FROM webhook_deliveries WHERE task_id = '%s'"
                            " AND id = '%s' AND event = 'task.canceled' AND state = 'pending'"
                            " AND next_ms = %lld AND account_id = %lld",
                            queued->id, ob.id, NOW + 100, (long long)acc),
                   1);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);

  /* a second cancel, a cancel of a finished task: CONFLICT, nothing moves */
  store_outbox ob2 = {.id = "msg_00000000000000000000000000000002", .event = "task.canceled",
                      .url = "https://example.com/hook"};
  st = TASK_QUEUED;
  assert_int_equal(s->ops->task_cancel(s, queued->id, NOW + 200, "canceled", &ob2, &st),
                   STORE_CONFLICT);
  assert_int_equal(st, TASK_CANCELED);
  assert_int_equal(s->ops->task_cancel(s, done->id, NOW + 200, "canceled", &ob2, &st),
                   STORE_CONFLICT);
  assert_int_equal(st, TASK_SUCCEEDED);
  assert_int_equal(event_seq_of(s, queued->id), 2);
  assert_int_equal(event_seq_of(s, done->id), 3);

  /* running: only marked; the engine finishes it as canceled */
  assert_int_equal(s->ops->task_cancel(s, running->id, NOW + 300, "canceled", &ob2, &st),
                   STORE_CONFLICT);
  assert_int_equal(st, TASK_RUNNING);
  got = get_task(s, running->id);
  assert_int_equal(got->state, TASK_RUNNING);
  assert_true(got->cancel_requested);
  assert_int_equal(got->event_seq, 2);
  assert_null(got->error_code);
  task_free(got);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM webhook_deliveries"), 1);
  assert_int_equal(account_of(s, acc).held_micros, 20000);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);
  /* the mark survives a requeue, so a re-run is aborted too */
  assert_int_equal(s->ops->task_requeue(s, running->id, run), STORE_OK);
  assert_int_equal(s->ops->task_start(s, running->id, NULL, NOW + 400, &run), STORE_OK);
  got = get_task(s, running->id);
  assert_true(got->cancel_requested);
  task_free(got);
  assert_int_equal(s->ops->task_finish(s, running->id, run, TASK_CANCELED, "canceled", NULL, NULL,
                                       0, 0, NOW + 500, NULL, &ob2),
                   STORE_OK);
  got = get_task(s, running->id);
  assert_int_equal(got->state, TASK_CANCELED);
  assert_int_equal(got->cost_charged_micros, 0);
  task_free(got);
  size_t n;
  task_event *ev = events_of(s, running->id, 3, &n);
  assert_int_equal(n, 2);
  assert_event(&ev[0], 4, TASK_EVENT_RUNNING, NOW + 400, 2, "sim", 0, "");
  assert_event(&ev[1], 5, TASK_EVENT_CANCELED, NOW + 500, 2, "", 0, "canceled");
  free(ev);
  store_account a = account_of(s, acc);
  assert_int_equal(a.held_micros, 0);
  assert_int_equal(a.balance_micros, 100000 - 10000); /* only the succeeded task paid */
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM webhook_deliveries"), 2);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);

  char unknown[IDS_UUID_LEN + 1];
  assert_true(ids_uuid7(unknown));
  st = TASK_FAILED;
  assert_int_equal(s->ops->task_cancel(s, unknown, NOW, "canceled", NULL, &st), STORE_NOT_FOUND);
  assert_int_equal(st, TASK_FAILED);
  assert_int_equal(s->ops->task_cancel(s, queued->id, NOW, NULL, NULL, &st), STORE_ERROR);
  task_free(queued);
  task_free(running);
  task_free(done);
}

/* ledger_verify: a task that did not succeed captured nothing. A failed
 * task with a capture that is otherwise consistent is caught. */
static void test_ledger_verify_only_success_pays(void **state) {
  fx *f = *state;
  store *s = f->s;
  int64_t acc;
  assert_int_equal(s->ops->account_open(s, "pays@example.com", NOW, 100000, &acc), STORE_OK);
  task *t;
  assert_int_equal(insert_priced(s, acc, 20000, 0, &t), STORE_OK);
  int run;
  assert_int_equal(s->ops->task_start(s, t->id, "sim", NOW, &run), STORE_OK);
  task_result r = make_result(0, "pays");
  assert_int_equal(
      s->ops->task_finish(s, t->id, run, TASK_SUCCEEDED, NULL, NULL, &r, 1, 20000, NOW, NULL, NULL),
      STORE_OK);
  task_result_clear(&r);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);
  const char *const states[] = {"failed", "moderated", "canceled"};
  for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
    char sql[200];
    snprintf(sql, sizeof sql, "UPDATE tasks SET state = '%s' WHERE id = '%s'", states[i], t->id);
    raw_exec(f->path, sql);
    assert_int_equal(s->ops->ledger_verify(s), STORE_CONFLICT);
  }
  char sql[200];
  snprintf(sql, sizeof sql, "UPDATE tasks SET state = 'succeeded' WHERE id = '%s'", t->id);
  raw_exec(f->path, sql);
  task_free(t);
}

static void test_list_due(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t[5];
  /* 0: queued, due second; 1: running, due first; 2: queued, not due yet;
   * 3: no deadline; 4: finished, its deadline passed long ago. */
  const int64_t deadlines[5] = {NOW + 20, NOW + 10, NOW + 1000, 0, NOW};
  for (int i = 0; i < 5; i++) {
    t[i] = make_task(f->account, NOW + i);
    t[i]->deadline_ms = deadlines[i];
    assert_int_equal(s->ops->task_insert(s, t[i]), STORE_OK);
  }
  int run;
  assert_int_equal(s->ops->task_start(s, t[1]->id, "sim", NOW, &run), STORE_OK);
  assert_int_equal(s->ops->task_start(s, t[4]->id, "sim", NOW, &run), STORE_OK);
  assert_int_equal(
      s->ops->task_finish(s, t[4]->id, run, TASK_FAILED, "x", NULL, NULL, 0, 0, NOW, NULL, NULL),
      STORE_OK);
  char(*ids)[IDS_UUID_LEN + 1] = NULL;
  size_t n = 0;
  assert_int_equal(s->ops->task_list_due(s, NOW + 100, 10, &ids, &n), STORE_OK);
  assert_int_equal(n, 2);
  assert_string_equal(ids[0], t[1]->id);
  assert_string_equal(ids[1], t[0]->id);
  free(ids);
  assert_int_equal(s->ops->task_list_due(s, NOW + 100, 1, &ids, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_string_equal(ids[0], t[1]->id);
  free(ids);
  assert_int_equal(s->ops->task_list_due(s, NOW + 5, 10, &ids, &n), STORE_OK);
  assert_int_equal(n, 0);
  free(ids);
  /* a canceled task leaves the list */
  assert_int_equal(s->ops->task_cancel(s, t[0]->id, NOW + 100, "deadline_exceeded", NULL, NULL),
                   STORE_OK);
  assert_int_equal(s->ops->task_list_due(s, NOW + 5000, 10, &ids, &n), STORE_OK);
  assert_int_equal(n, 2);
  assert_string_equal(ids[0], t[1]->id);
  assert_string_equal(ids[1], t[2]->id);
  free(ids);
  assert_int_equal(s->ops->task_list_due(s, NOW + 5000, 0, &ids, &n), STORE_OK);
  assert_int_equal(n, 0);
  free(ids);
  for (int i = 0; i < 5; i++) task_free(t[i]);
}

/* ---- the webhook outbox ---------------------------------------------------------------- */

static int64_t deliveries_of(const char *path, const char *task_id) {
  return raw_intf(path, "SELECT COUNT(*) FROM webhook_deliveries WHERE task_id = '%s'", task_id);
}

/* A delivery row comes exactly with the change that carries it. */
static void test_outbox_rows_with_their_change(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *a = make_task(f->account, NOW), *b = make_task(f->account, NOW + 1);
  assert_int_equal(s->ops->task_insert(s, a), STORE_OK);
  assert_int_equal(s->ops->task_insert(s, b), STORE_OK);
  int run_b;
  assert_int_equal(s->ops->task_start(s, b->id, "sim", NOW, &run_b), STORE_OK);
  /* start_many: the started item's delivery is written, the refused one's not */
  store_outbox ra = {"msg_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1", "task.running", "https://a.example/h"};
  store_outbox rb = {"msg_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1", "task.running", "https://b.example/h"};
  store_start items[] = {{.task_id = a->id, .outbox = &ra}, {.task_id = b->id, .outbox = &rb}};
  assert_int_equal(s->ops->task_start_many(s, items, 2, NOW + 5), STORE_OK);
  assert_int_equal(items[0].rc, STORE_OK);
  assert_int_equal(items[1].rc, STORE_CONFLICT);
  assert_int_equal(deliveries_of(f->path, a->id), 1);
  assert_int_equal(deliveries_of(f->path, b->id), 0);
  assert_int_equal(raw_intf(f->path,
                            "SELECT COUNT(*) FROM webhook_deliveries WHERE id = '%s'"
                            " AND url = 'https://a.example/h' AND created_ms = %lld"
                            " AND next_ms = %lld AND attempts = 0 AND payload IS NULL",
                            ra.id, NOW + 5, NOW + 5),
                   1);
  /* a finish that loses its compare-and-set writes none */
  store_outbox fa = {"msg_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2", "task.failed", "https://a.example/h"};
  assert_int_equal(s->ops->task_finish(s, a->id, items[0].attempt + 1, TASK_FAILED, "x", NULL,
                                       NULL, 0, 0, NOW, NULL, &fa),
                   STORE_CONFLICT);
  assert_int_equal(deliveries_of(f->path, a->id), 1);
  /* a finish that fails writes none, and a delivery id used twice fails
   * the finish (the task stays running) */
  task_result r[2] = {make_result(0, "ob-dup"), make_result(1, "ob-dup")};
  assert_int_equal(s->ops->task_finish(s, a->id, items[0].attempt, TASK_SUCCEEDED, NULL, NULL, r,
                                       2, 0, NOW, NULL, &fa),
                   STORE_ERROR);
  assert_int_equal(deliveries_of(f->path, a->id), 1);
  assert_int_equal(s->ops->task_finish(s, a->id, items[0].attempt, TASK_SUCCEEDED, NULL, NULL, r,
                                       1, 0, NOW, NULL, &ra),
                   STORE_ERROR);
  task *got = get_task(s, a->id);
  assert_int_equal(got->state, TASK_RUNNING);
  assert_int_equal(got->n_results, 0);
  task_free(got);
  /* a malformed delivery is refused before anything changes */
  store_outbox bad = {"msg_too_long_for_the_field_xxxxxxxxxxxxxxxxxxxxxxx", "task.succeeded",
                      "https://a.example/h"};
  assert_int_equal(s->ops->task_finish(s, a->id, items[0].attempt, TASK_SUCCEEDED, NULL, NULL, r,
                                       1, 0, NOW, NULL, &bad),
                   STORE_ERROR);
  store_outbox no_url = {"msg_x", "task.succeeded", NULL};
  assert_int_equal(s->ops->task_cancel(s, a->id, NOW, "canceled", &no_url, NULL), STORE_ERROR);
  assert_int_equal(event_seq_of(s, a->id), 2);
  /* the finish that works writes its delivery */
  assert_int_equal(s->ops->task_finish(s, a->id, items[0].attempt, TASK_SUCCEEDED, NULL, NULL, r,
                                       1, 0, NOW + 9, NULL, &fa),
                   STORE_OK);
  assert_int_equal(deliveries_of(f->path, a->id), 2);
  int64_t pending = 0;
  assert_int_equal(s->ops->webhook_pending_count(s, &pending), STORE_OK);
  assert_int_equal(pending, 2);
  /* with no outbox, no row */
  assert_int_equal(
      s->ops->task_finish(s, b->id, run_b, TASK_FAILED, "x", NULL, NULL, 0, 0, NOW, NULL, NULL),
      STORE_OK);
  assert_int_equal(deliveries_of(f->path, b->id), 0);
  task_result_clear(&r[0]);
  task_result_clear(&r[1]);
  task_free(a);
  task_free(b);
}

/* n tasks started in one transaction, each with a task.running delivery
 * "msg_<first + i>", created at now_ms. */
static void make_deliveries(fx *f, int first, int n, int64_t now_ms,
                            char (*ids)[IDS_UUID_LEN + 1]) {
  store *s = f->s;
  store_start *items = calloc((size_t)n, sizeof *items);
  store_outbox *ob = calloc((size_t)n, sizeof *ob);
  char(*msg)[40] = calloc((size_t)n, sizeof *msg);
  assert_true(items && ob && msg);
  for (int i = 0; i < n; i++) {
    task *t = make_task(f->account, now_ms);
    assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
    memcpy(ids[i], t->id, sizeof ids[i]);
    task_free(t);
    snprintf(msg[i], sizeof msg[i], "msg_%032d", first + i);
    ob[i] = (store_outbox){msg[i], "task.running", "https://example.com/hook"};
    items[i] = (store_start){.task_id = ids[i], .outbox = &ob[i]};
  }
  assert_int_equal(s->ops->task_start_many(s, items, (size_t)n, now_ms), STORE_OK);
  for (int i = 0; i < n; i++) assert_int_equal(items[i].rc, STORE_OK);
  free(items);
  free(ob);
  free(msg);
}

/* A claimed delivery is leased: not claimed again until the lease is over,
 * then claimed again, the same. Due rows come soonest first. */
static void test_webhook_claim_leases(void **state) {
  fx *f = *state;
  store *s = f->s;
  char ids[3][IDS_UUID_LEN + 1];
  make_deliveries(f, 0, 1, NOW + 30, &ids[0]);
  make_deliveries(f, 1, 1, NOW + 10, &ids[1]);
  make_deliveries(f, 2, 1, NOW + 500, &ids[2]);
  store_delivery *d = NULL;
  size_t n = 99;
  assert_int_equal(s->ops->webhook_claim(s, NOW + 100, 60000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 2);
  assert_string_equal(d[0].task_id, ids[1]); /* due at +10 */
  assert_string_equal(d[1].task_id, ids[0]); /* due at +30 */
  assert_string_equal(d[0].event, "task.running");
  assert_string_equal(d[0].url, "https://example.com/hook");
  assert_null(d[0].payload);
  assert_int_equal(d[0].attempts, 0);
  assert_int_equal(d[0].account_id, f->account);
  assert_int_equal(d[0].created_ms, NOW + 10);
  char first_ids[2][40];
  memcpy(first_ids[0], d[0].id, sizeof first_ids[0]);
  memcpy(first_ids[1], d[1].id, sizeof first_ids[1]);
  store_delivery_free(d, n);
  /* leased: not again within the lease, though the third is due now */
  assert_int_equal(s->ops->webhook_claim(s, NOW + 600, 60000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_string_equal(d[0].task_id, ids[2]);
  store_delivery_free(d, n);
  assert_int_equal(s->ops->webhook_claim(s, NOW + 100 + 59999, 60000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 0);
  store_delivery_free(d, n);
  /* the lease is over: due again, the same ids, still never attempted */
  assert_int_equal(s->ops->webhook_claim(s, NOW + 100 + 60000, 60000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 2);
  for (size_t i = 0; i < n; i++) {
    assert_true(strcmp(d[i].id, first_ids[0]) == 0 || strcmp(d[i].id, first_ids[1]) == 0);
    assert_int_equal(d[i].attempts, 0);
  }
  assert_string_not_equal(d[0].id, d[1].id);
  store_delivery_free(d, n);
  int64_t pending = 0;
  assert_int_equal(s->ops->webhook_pending_count(s, &pending), STORE_OK);
  assert_int_equal(pending, 3);
  assert_int_equal(s->ops->webhook_claim(s, NOW, 60000, 0, &d, &n), STORE_OK);
  assert_int_equal(n, 0);
  assert_null(d);
}

#define CLAIM_THREADS 8
#define CLAIM_ROWS 240

typedef struct claim_race {
  store *s;
  pthread_barrier_t go;
  char ids[CLAIM_ROWS * 2][40]; /* room for duplicates, should any come */
  atomic_int n;
  atomic_int errors;
} claim_race;

static void *claim_thread(void *arg) {
  claim_race *r = arg;
  pthread_barrier_wait(&r->go);
  for (;;) {
    store_delivery *d = NULL;
    size_t n = 0;
    if (r->s->ops->webhook_claim(r->s, NOW + 1, 60000, 7, &d, &n) != STORE_OK) {
      atomic_fetch_add(&r->errors, 1);
      return NULL;
    }
    int k = 0;
    for (size_t i = 0; i < n; i++) {
      k = atomic_fetch_add(&r->n, 1);
      if (k < CLAIM_ROWS * 2) memcpy(r->ids[k], d[i].id, sizeof r->ids[k]);
    }
    store_delivery_free(d, n);
    /* Far more claimed than there are rows: claims hand rows out twice
     * (the test fails on the count), and might never run dry. */
    if (n == 0 || k >= CLAIM_ROWS * 2) return NULL;
  }
}

static int cmp_id(const void *a, const void *b) { return strcmp(a, b); }

/* Threads claiming at once never get the same row, and together get all. */
static void test_webhook_claim_concurrent(void **state) {
  fx *f = *state;
  char(*ids)[IDS_UUID_LEN + 1] = calloc(CLAIM_ROWS, sizeof *ids);
  claim_race *r = calloc(1, sizeof *r);
  assert_true(ids && r);
  make_deliveries(f, 0, CLAIM_ROWS, NOW, ids);
  r->s = f->s;
  assert_int_equal(pthread_barrier_init(&r->go, NULL, CLAIM_THREADS), 0);
  pthread_t th[CLAIM_THREADS];
  for (int i = 0; i < CLAIM_THREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, claim_thread, r), 0);
  for (int i = 0; i < CLAIM_THREADS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&r->go);
  assert_int_equal(atomic_load(&r->errors), 0);
  assert_int_equal(atomic_load(&r->n), CLAIM_ROWS);
  qsort(r->ids, CLAIM_ROWS, sizeof r->ids[0], cmp_id);
  for (int i = 1; i < CLAIM_ROWS; i++)
    if (strcmp(r->ids[i - 1], r->ids[i]) == 0) fail_msg("claimed twice: %s", r->ids[i]);
  free(r);
  free(ids);
}

/* One batch: an attempt row each, the new state, the payload once given;
 * an unknown id is skipped. */
static void test_webhook_record_and_list(void **state) {
  fx *f = *state;
  store *s = f->s;
  char ids[3][IDS_UUID_LEN + 1];
  make_deliveries(f, 0, 3, NOW, ids);
  store_delivery *d = NULL;
  size_t n = 0;
  assert_int_equal(s->ops->webhook_claim(s, NOW, 30000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 3);
  char id[3][40];
  for (int i = 0; i < 3; i++) {
    /* rows were made in one transaction at one time: match them by task */
    int k = strcmp(d[i].task_id, ids[0]) == 0 ? 0 : strcmp(d[i].task_id, ids[1]) == 0 ? 1 : 2;
    memcpy(id[k], d[i].id, sizeof id[k]);
  }
  store_delivery_free(d, n);
  const char *payload = "{\"type\":\"task.running\",\"data\":{\"uid\":\"x\"}}";
  store_delivery_result res[] = {
      {.id = id[0], .payload = payload, .at_ms = NOW + 1, .http_status = 204, .duration_ms = 3,
       .state = WEBHOOK_DELIVERED},
      {.id = "msg_nobody", .payload = payload, .at_ms = NOW + 1, .state = WEBHOOK_DELIVERED},
      {.id = id[1], .payload = payload, .at_ms = NOW + 2, .http_status = 500, .duration_ms = 7,
       .error = "HTTP 500", .state = WEBHOOK_PENDING, .next_ms = NOW + 5000},
      {.id = id[2], .payload = payload, .at_ms = NOW + 3, .http_status = 410, .duration_ms = 2,
       .error = "HTTP 410", .state = WEBHOOK_GONE},
  };
  assert_int_equal(s->ops->webhook_record(s, res, 4), STORE_OK);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM webhook_attempts"), 3);
  int64_t pending = 0;
  assert_int_equal(s->ops->webhook_pending_count(s, &pending), STORE_OK);
  assert_int_equal(pending, 1);

  /* the retry is due at next_ms, not before, with its payload and count */
  assert_int_equal(s->ops->webhook_claim(s, NOW + 4999, 30000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 0);
  store_delivery_free(d, n);
  assert_int_equal(s->ops->webhook_claim(s, NOW + 5000, 30000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_string_equal(d[0].id, id[1]);
  assert_int_equal(d[0].attempts, 1);
  assert_string_equal(d[0].payload, payload);
  store_delivery_free(d, n);
  /* a later attempt without a payload keeps the stored one */
  store_delivery_result ok = {.id = id[1], .at_ms = NOW + 5001, .http_status = 200,
                              .duration_ms = 4, .state = WEBHOOK_DELIVERED};
  assert_int_equal(s->ops->webhook_record(s, &ok, 1), STORE_OK);
  assert_int_equal(raw_intf(f->path,
                            "SELECT COUNT(*) FROM webhook_deliveries WHERE id = '%s'"
                            " AND payload = '%s' AND attempts = 2 AND state = 'delivered'",
                            id[1], payload),
                   1);

  store_webhook_attempt *at = NULL;
  assert_int_equal(s->ops->webhook_list(s, ids[1], &at, &n), STORE_OK);
  assert_int_equal(n, 2);
  assert_string_equal(at[0].id, id[1]);
  assert_string_equal(at[0].event, "task.running");
  assert_int_equal(at[0].at_ms, NOW + 2);
  assert_int_equal(at[0].http_status, 500);
  assert_int_equal(at[0].duration_ms, 7);
  assert_string_equal(at[0].error, "HTTP 500");
  assert_int_equal(at[0].state, WEBHOOK_DELIVERED); /* the delivery's state now */
  assert_int_equal(at[1].at_ms, NOW + 5001);
  assert_string_equal(at[1].error, "");
  free(at);
  assert_int_equal(s->ops->webhook_list(s, ids[2], &at, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_int_equal(at[0].state, WEBHOOK_GONE);
  free(at);
  char unknown[IDS_UUID_LEN + 1];
  assert_true(ids_uuid7(unknown));
  assert_int_equal(s->ops->webhook_list(s, unknown, &at, &n), STORE_OK);
  assert_int_equal(n, 0);
  free(at);
  /* an unknown state is refused whole: nothing of the batch is recorded */
  store_delivery_result bad[] = {ok, ok};
  bad[1].state = (webhook_state)9;
  assert_int_equal(s->ops->webhook_record(s, bad, 2), STORE_ERROR);
  assert_int_equal(raw_int(f->path, "SELECT COUNT(*) FROM webhook_attempts"), 4);
  assert_int_equal(s->ops->webhook_record(s, NULL, 0), STORE_OK);
}

/* resend: the latest delivery of a final event is due again, same id. */
static void test_webhook_resend(void **state) {
  fx *f = *state;
  store *s = f->s;
  task *t = make_task(f->account, NOW);
  assert_int_equal(s->ops->task_insert(s, t), STORE_OK);
  assert_int_equal(s->ops->webhook_resend(s, t->id, NOW), STORE_NOT_FOUND);
  store_outbox running = {"msg_11111111111111111111111111111111", "task.running",
                          "https://example.com/hook"};
  store_start item = {.task_id = t->id, .outbox = &running};
  assert_int_equal(s->ops->task_start_many(s, &item, 1, NOW), STORE_OK);
  /* only a task.running delivery: nothing final to send again */
  assert_int_equal(s->ops->webhook_resend(s, t->id, NOW), STORE_NOT_FOUND);
  store_outbox fin = {"msg_22222222222222222222222222222222", "task.failed",
                      "https://example.com/hook"};
  assert_int_equal(s->ops->task_finish(s, t->id, item.attempt, TASK_FAILED, "x", NULL, NULL, 0, 0,
                                       NOW + 1, NULL, &fin),
                   STORE_OK);
  store_delivery *d = NULL;
  size_t n = 0;
  assert_int_equal(s->ops->webhook_claim(s, NOW + 1, 1000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 2);
  store_delivery_free(d, n);
  store_delivery_result res[] = {
      {.id = running.id, .at_ms = NOW + 2, .http_status = 200, .state = WEBHOOK_DELIVERED},
      {.id = fin.id, .at_ms = NOW + 2, .error = "timeout", .state = WEBHOOK_FAILED},
  };
  assert_int_equal(s->ops->webhook_record(s, res, 2), STORE_OK);
  assert_int_equal(s->ops->webhook_claim(s, NOW + 100000, 1000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 0);
  store_delivery_free(d, n);

  assert_int_equal(s->ops->webhook_resend(s, t->id, NOW + 200000), STORE_OK);
  assert_int_equal(s->ops->webhook_claim(s, NOW + 199999, 1000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 0); /* due at the resend's now, not before */
  store_delivery_free(d, n);
  assert_int_equal(s->ops->webhook_claim(s, NOW + 200000, 1000, 10, &d, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_string_equal(d[0].id, fin.id);
  assert_string_equal(d[0].event, "task.failed");
  assert_int_equal(d[0].attempts, 1);
  store_delivery_free(d, n);
  char unknown[IDS_UUID_LEN + 1];
  assert_true(ids_uuid7(unknown));
  assert_int_equal(s->ops->webhook_resend(s, unknown, NOW), STORE_NOT_FOUND);
  task_free(t);
}

/* ---- webhook secrets ------------------------------------------------------------------- */

#define SECRET_THREADS 8

typedef struct secret_race {
  store *s;
  int64_t account;
  pthread_barrier_t go;
  char fresh[SECRET_THREADS][80];
  store_webhook_secret got[SECRET_THREADS];
  int rc[SECRET_THREADS];
} secret_race;

typedef struct secret_racer {
  secret_race *r;
  int i;
} secret_racer;

static void *secret_thread(void *arg) {
  secret_racer *me = arg;
  secret_race *r = me->r;
  pthread_barrier_wait(&r->go);
  r->rc[me->i] = r->s->ops->webhook_secret_get(r->s, r->account, r->fresh[me->i], &r->got[me->i]);
  return NULL;
}

static void test_webhook_secrets(void **state) {
  fx *f = *state;
  store *s = f->s;
  store_webhook_secret sec;
  /* without a fresh one, an account without a secret has none */
  assert_int_equal(s->ops->webhook_secret_get(s, f->account, NULL, &sec), STORE_NOT_FOUND);
  assert_int_equal(s->ops->webhook_secret_get(s, f->account, "whsec_first", &sec), STORE_OK);
  assert_string_equal(sec.current, "whsec_first");
  assert_string_equal(sec.previous, "");
  assert_int_equal(sec.previous_until_ms, 0);
  assert_int_equal(s->ops->webhook_secret_get(s, f->account, "whsec_other", &sec), STORE_OK);
  assert_string_equal(sec.current, "whsec_first"); /* kept: fresh is only for the first */
  assert_int_equal(s->ops->webhook_secret_rotate(s, f->account, "whsec_second", NOW + 86400000,
                                                 &sec),
                   STORE_OK);
  assert_string_equal(sec.current, "whsec_second");
  assert_string_equal(sec.previous, "whsec_first");
  assert_int_equal(sec.previous_until_ms, NOW + 86400000);
  assert_int_equal(s->ops->webhook_secret_rotate(s, f->account, "whsec_third", NOW + 1, NULL),
                   STORE_OK);
  assert_int_equal(s->ops->webhook_secret_get(s, f->account, NULL, &sec), STORE_OK);
  assert_string_equal(sec.current, "whsec_third");
  assert_string_equal(sec.previous, "whsec_second");
  assert_int_equal(sec.previous_until_ms, NOW + 1);
  /* unknown accounts; secrets that do not fit */
  assert_int_equal(s->ops->webhook_secret_get(s, f->account + 99, "whsec_x", &sec),
                   STORE_NOT_FOUND);
  assert_int_equal(s->ops->webhook_secret_rotate(s, f->account + 99, "whsec_x", NOW, &sec),
                   STORE_NOT_FOUND);
  char long_secret[100];
  memset(long_secret, 'a', sizeof long_secret - 1);
  long_secret[sizeof long_secret - 1] = '\0';
  assert_int_equal(s->ops->webhook_secret_rotate(s, f->account, long_secret, NOW, &sec),
                   STORE_ERROR);
  assert_int_equal(s->ops->webhook_secret_rotate(s, f->account, "", NOW, &sec), STORE_ERROR);
  /* a rotation on an account without a secret: fresh, no previous */
  int64_t other;
  assert_int_equal(s->ops->account_create(s, "rot@example.com", NOW, &other), STORE_OK);
  assert_int_equal(s->ops->webhook_secret_rotate(s, other, "whsec_new", NOW + 5, &sec), STORE_OK);
  assert_string_equal(sec.current, "whsec_new");
  assert_string_equal(sec.previous, "");

  /* concurrent first calls: one secret, which every caller gets */
  int64_t racer_account;
  assert_int_equal(s->ops->account_create(s, "race@example.com", NOW, &racer_account), STORE_OK);
  secret_race *r = calloc(1, sizeof *r);
  assert_non_null(r);
  r->s = s;
  r->account = racer_account;
  assert_int_equal(pthread_barrier_init(&r->go, NULL, SECRET_THREADS), 0);
  pthread_t th[SECRET_THREADS];
  secret_racer who[SECRET_THREADS];
  for (int i = 0; i < SECRET_THREADS; i++) {
    snprintf(r->fresh[i], sizeof r->fresh[i], "whsec_thread_%d", i);
    who[i] = (secret_racer){r, i};
    assert_int_equal(pthread_create(&th[i], NULL, secret_thread, &who[i]), 0);
  }
  for (int i = 0; i < SECRET_THREADS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&r->go);
  bool one_of_them = false;
  for (int i = 0; i < SECRET_THREADS; i++) {
    assert_int_equal(r->rc[i], STORE_OK);
    assert_string_equal(r->got[i].current, r->got[0].current);
    one_of_them |= strcmp(r->got[0].current, r->fresh[i]) == 0;
  }
  assert_true(one_of_them);
  assert_int_equal(raw_intf(f->path, "SELECT COUNT(*) FROM webhook_secrets WHERE account_id = %lld",
                            (long long)racer_account),
                   1);
  free(r);
}

/* ---- upgrading from the schema before events ------------------------------------------- */

/* A database made by migrations 1..5 (the schema before this one), filled
 * the way that imgate wrote it, opened by this code: nothing is lost, not
 * even the child rows the rebuild of tasks could have cascaded away, and
 * each task gets one event for its state. */
static void test_upgrade_from_schema_5(void **state) {
  fx *f = *state;
  char path[160], err[256] = "";
  snprintf(path, sizeof path, "%s/old.db", f->dir);
  assert_true(store_sqlite_migrate_to(path, 5, err, sizeof err));
  assert_int_equal(raw_int(path, "SELECT MAX(version) FROM schema_migrations"), 5);
  raw_exec(path,
           "PRAGMA foreign_keys=ON;"
           "INSERT INTO accounts(id, email, created_ms, balance, held)"
           "  VALUES (1, 'old@example.com', 1, 70000, 20000);"
           "INSERT INTO tasks(id, account_id, state, model, prompt, aspect_ratio, resolution,"
           "  webhook_url, provider, quantity, attempts, created_ms, started_ms, finished_ms,"
           "  error_code, error_message, price_unit, price_refs, cost_held, cost_charged) VALUES"
           " ('00000000-0000-7000-8000-000000000001', 1, 'queued', 'm', 'p1', '1:1', '1K',"
           "  'https://example.com/h', NULL, 1, 0, 100, 0, 0, NULL, NULL, 20000, 0, 20000, 0),"
           " ('00000000-0000-7000-8000-000000000002', 1, 'succeeded', 'm', 'p2', '1:1', '1K',"
           "  NULL, 'sim', 1, 1, 200, 210, 220, NULL, NULL, 10000, 0, 10000, 10000),"
           " ('00000000-0000-7000-8000-000000000003', 1, 'failed', 'm', 'p3', '1:1', '1K',"
           "  NULL, 'sim', 1, 2, 300, 310, 320, 'upstream_error', 'boom', 0, 0, 0, 0);"
           "INSERT INTO task_inputs(task_id, idx, blob_key, mime, bytes) VALUES"
           " ('00000000-0000-7000-8000-000000000001', 0, 'inputs/x/0.png', 'image/png', 9);"
           "INSERT INTO task_results(task_id, idx, blob_key, token, mime, expires_ms) VALUES"
           " ('00000000-0000-7000-8000-000000000002', 0, 'results/y/1-0.png', 'tok-old',"
           "  'image/png', 99999);"
           "INSERT INTO task_attempts(task_id, run, provider, upstream_model, started_ms, ended_ms,"
           "  error_class) VALUES ('00000000-0000-7000-8000-000000000003', 2, 'sim', 'u', 1, 2,"
           "  'server');"
           "INSERT INTO ledger(account_id, kind, available, held, task_id, reason, created_ms)"
           "  VALUES (1, 'grant', 100000, 0, NULL, 'signup', 1),"
           "  (1, 'hold', -20000, 20000, '00000000-0000-7000-8000-000000000001', 'h', 100),"
           "  (1, 'hold', -10000, 10000, '00000000-0000-7000-8000-000000000002', 'h', 200),"
           "  (1, 'capture', 0, -10000, '00000000-0000-7000-8000-000000000002', 'c', 220);"
           "INSERT INTO idempotency_keys(account_id, key, request_hash, task_id, created_ms)"
           "  VALUES (1, 'k', 'h', '00000000-0000-7000-8000-000000000001', 100);");

  store *s = open_store(path);
  /* Every later migration applied too, each once. */
  int64_t newest = raw_int(path, "SELECT MAX(version) FROM schema_migrations");
  assert_true(newest >= 7);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM schema_migrations"), newest);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM task_inputs"), 1);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM task_results"), 1);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM task_attempts"), 1);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM ledger"), 4);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM idempotency_keys"), 1);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM pragma_foreign_key_check"), 0);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);

  task *q = get_task(s, "00000000-0000-7000-8000-000000000001");
  assert_int_equal(q->state, TASK_QUEUED);
  assert_string_equal(q->prompt, "p1");
  assert_string_equal(q->webhook_url, "https://example.com/h");
  assert_int_equal(q->n_inputs, 1);
  assert_string_equal(q->inputs[0].blob_key, "inputs/x/0.png");
  assert_int_equal(q->cost_held_micros, 20000);
  assert_string_equal(q->dialect, "native");
  assert_null(q->public_base);
  assert_int_equal(q->deadline_ms, 0);
  assert_int_equal(q->webhook_events, 0);
  assert_false(q->cancel_requested);
  assert_int_equal(q->event_seq, 1);
  /* Output formats came later: images as made, the default quality. */
  assert_null(q->output_format);
  assert_int_equal(q->output_compression, 100);
  task_free(q);
  task *ok = get_task(s, "00000000-0000-7000-8000-000000000002");
  assert_int_equal(ok->state, TASK_SUCCEEDED);
  assert_int_equal(ok->n_results, 1);
  assert_string_equal(ok->results[0].token, "tok-old");
  assert_int_equal(ok->cost_charged_micros, 10000);
  /* schema 7: an image delivered before was charged its task's unit price;
   * nothing reported a quality then */
  assert_int_equal(ok->results[0].price_micros, 10000);
  assert_null(ok->results[0].quality);
  assert_null(ok->quality);
  task_free(ok);
  task *bad = get_task(s, "00000000-0000-7000-8000-000000000003");
  assert_int_equal(bad->n_upstream_attempts, 1);
  assert_string_equal(bad->error_message, "boom");
  task_free(bad);

  size_t n;
  task_event *ev = events_of(s, "00000000-0000-7000-8000-000000000001", 0, &n);
  assert_int_equal(n, 1);
  assert_event(&ev[0], 1, TASK_EVENT_QUEUED, 100, 0, "", 0, "");
  free(ev);
  ev = events_of(s, "00000000-0000-7000-8000-000000000002", 0, &n);
  assert_int_equal(n, 1);
  assert_event(&ev[0], 1, TASK_EVENT_SUCCEEDED, 220, 1, "", 0, "");
  free(ev);
  ev = events_of(s, "00000000-0000-7000-8000-000000000003", 0, &n);
  assert_int_equal(n, 1);
  assert_event(&ev[0], 1, TASK_EVENT_FAILED, 320, 2, "", 0, "upstream_error");
  free(ev);

  /* the old rows take part in the new ops: the queued task is canceled
   * with its hold back, its event numbered after the upgrade's */
  task_state st;
  assert_int_equal(
      s->ops->task_cancel(s, "00000000-0000-7000-8000-000000000001", NOW, "canceled", NULL, &st),
      STORE_OK);
  assert_int_equal(event_seq_of(s, "00000000-0000-7000-8000-000000000001"), 2);
  store_account a = account_of(s, 1);
  assert_int_equal(a.held_micros, 0);
  assert_int_equal(a.balance_micros, 90000);
  assert_int_equal(s->ops->ledger_verify(s), STORE_OK);
  /* foreign keys are enforced again after the migration */
  int64_t key = 0;
  assert_int_equal(s->ops->key_create(s, 424242, "hh", "igk_y", "n", NOW, &key), STORE_NOT_FOUND);
  s->ops->close(s);

  /* and a reopen applies nothing again */
  s = open_store(path);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM schema_migrations"), newest);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM task_events"), 4);
  s->ops->close(s);
  unlink_db_files(path);
  assert_false(store_sqlite_migrate_to(path, 0, err, sizeof err));
  assert_false(store_sqlite_migrate_to(path, 999, err, sizeof err));
}

/* A database at schema 8 (before backgrounds and masks), with a task and its
 * inputs and a result, opened by this code: the task asked no background,
 * its inputs are all images (none a mask), its result reported no background;
 * and the new columns work on the old rows. */
static void test_upgrade_from_schema_8(void **state) {
  fx *f = *state;
  char path[160], err[256] = "";
  snprintf(path, sizeof path, "%s/eight.db", f->dir);
  assert_true(store_sqlite_migrate_to(path, 8, err, sizeof err));
  assert_int_equal(raw_int(path, "SELECT MAX(version) FROM schema_migrations"), 8);
  raw_exec(path,
           "INSERT INTO accounts(id, email, created_ms, balance, held)"
           "  VALUES (1, 'eight@example.com', 1, 100000, 0);"
           "INSERT INTO tasks(id, account_id, state, model, prompt, aspect_ratio, resolution,"
           "  quantity, created_ms, finished_ms, quality, event_seq) VALUES"
           " ('00000000-0000-7000-8000-000000000008', 1, 'succeeded', 'gpt-image-1', 'p',"
           "  '1:1', '1K', 1, 100, 200, 'low', 1);"
           "INSERT INTO task_inputs(task_id, idx, blob_key, url, mime, bytes) VALUES"
           " ('00000000-0000-7000-8000-000000000008', 0, 'inputs/e/0.png', NULL, 'image/png', 9),"
           " ('00000000-0000-7000-8000-000000000008', 1, NULL, 'https://example.com/r.png',"
           "  NULL, 0);"
           "INSERT INTO task_results(task_id, idx, blob_key, token, mime, expires_ms, price,"
           "  quality) VALUES ('00000000-0000-7000-8000-000000000008', 0, 'results/e/1-0.png',"
           "  'tok-eight', 'image/png', 99999, 11000, 'low');");
  store *s = open_store(path);
  assert_true(raw_int(path, "SELECT MAX(version) FROM schema_migrations") >= 9);
  assert_int_equal(raw_int(path, "SELECT COUNT(*) FROM task_inputs WHERE role = 'image'"), 2);
  task *t = get_task(s, "00000000-0000-7000-8000-000000000008");
  assert_null(t->background);
  assert_null(t->mask);
  assert_int_equal(t->n_inputs, 2);
  assert_string_equal(t->inputs[0].blob_key, "inputs/e/0.png");
  assert_string_equal(t->inputs[1].url, "https://example.com/r.png");
  assert_string_equal(t->quality, "low");
  assert_int_equal(t->n_results, 1);
  assert_string_equal(t->results[0].token, "tok-eight");
  assert_null(t->results[0].background);
  task_free(t);
  /* A task written now, with both, beside the old one. */
  task *n = make_task(1, NOW);
  n->background = xstrdup("opaque");
  n->mask = calloc(1, sizeof *n->mask);
  assert_non_null(n->mask);
  n->mask->blob_key = xstrdup("inputs/n/mask.png");
  n->mask->mime = xstrdup("image/png");
  n->mask->bytes = 77;
  assert_int_equal(s->ops->task_insert(s, n), STORE_OK);
  task *got = get_task(s, n->id);
  assert_task_equal(got, n);
  task_free(got);
  task_free(n);
  s->ops->close(s);
  unlink_db_files(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_migrations_fresh_and_reopen, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wal_and_foreign_keys, setup, teardown),
      cmocka_unit_test_setup_teardown(test_future_version_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_rejects_bad_arguments, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pool_size_for_many_threads, setup, teardown),
      cmocka_unit_test_setup_teardown(test_accounts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_keys, setup, teardown),
      cmocka_unit_test_setup_teardown(test_disabled_account_still_reported, setup, teardown),
      cmocka_unit_test_setup_teardown(test_task_insert_get, setup, teardown),
      cmocka_unit_test_setup_teardown(test_task_start, setup, teardown),
      cmocka_unit_test_setup_teardown(test_task_start_many, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ledger_grants_topups_refunds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hold_capture_release, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrency_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_partial_capture, setup, teardown),
      cmocka_unit_test_setup_teardown(test_quality_and_image_prices, setup, teardown),
      cmocka_unit_test_setup_teardown(test_background_and_mask, setup, teardown),
      cmocka_unit_test_setup_teardown(test_charge_outside_the_contract, setup, teardown),
      cmocka_unit_test_setup_teardown(test_list_running_and_requeue, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ledger_verify_detects_drift, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ledger_verify_detects_forged_rows, setup, teardown),
      cmocka_unit_test_setup_teardown(test_task_finish, setup, teardown),
      cmocka_unit_test_setup_teardown(test_task_finish_stale_attempt, setup, teardown),
      cmocka_unit_test_setup_teardown(test_requeue_running, setup, teardown),
      cmocka_unit_test_setup_teardown(test_list_queued, setup, teardown),
      cmocka_unit_test_setup_teardown(test_list_account, setup, teardown),
      cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_group_commit_mixed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_result_by_token, setup, teardown),
      cmocka_unit_test_setup_teardown(test_finish_is_atomic, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_start_finish, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idem_replay_and_mismatch, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idem_limits_and_refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idem_expiry_and_purge, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idem_concurrent_duplicates, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health_database_removed, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health_database_replaced, setup, teardown),
      cmocka_unit_test_setup_teardown(test_health_failed_sync, setup, teardown),
      cmocka_unit_test_setup_teardown(test_events_through_a_life, setup, teardown),
      cmocka_unit_test_setup_teardown(test_events_only_with_a_change, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_in_each_state, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ledger_verify_only_success_pays, setup, teardown),
      cmocka_unit_test_setup_teardown(test_list_due, setup, teardown),
      cmocka_unit_test_setup_teardown(test_outbox_rows_with_their_change, setup, teardown),
      cmocka_unit_test_setup_teardown(test_webhook_claim_leases, setup, teardown),
      cmocka_unit_test_setup_teardown(test_webhook_claim_concurrent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_webhook_record_and_list, setup, teardown),
      cmocka_unit_test_setup_teardown(test_webhook_resend, setup, teardown),
      cmocka_unit_test_setup_teardown(test_webhook_secrets, setup, teardown),
      cmocka_unit_test_setup_teardown(test_upgrade_from_schema_5, setup, teardown),
      cmocka_unit_test_setup_teardown(test_upgrade_from_schema_8, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
