/* test_engine.c - the engine against a scripted provider and a real store.
 *
 * The provider below never answers on its own: the test decides when each
 * call completes and how, so every interleaving checked here is deliberate. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blob/blob.h"
#include "config.h"
#include "core/engine.h"
#include "upstream/simpng.h"
#include "util/imagefmt.h"
#include "upstream/router.h"
#include "store/store.h"
#include "util/ids.h"
#include "util/timeutil.h"

/* ---- a provider the test drives ---------------------------------------- */

typedef struct pending_call {
  provider_done_fn done;
  void *ctx;
  char task_id[IDS_UUID_LEN + 1];
  size_t n_inputs;
  size_t input0_len;
  char quality[8];   /* the quality the engine asked for ("" for none) */
  bool cancel_asked; /* the engine called cancel() with this call's ctx */
  char output_format[8]; /* what the engine passed on ("" for none) */
  int output_compression;
  char background[12];   /* what the engine passed on ("" for NULL) */
  uint8_t *mask;         /* a copy of the mask the engine passed on (NULL: none) */
  size_t mask_len;
  struct pending_call *next;
} pending_call;

typedef struct scripted {
  provider base;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pending_call *pending;
  int started;
  int destroyed_with_pending;
  int cancels;         /* cancel() calls, whether or not they named a pending call */
} scripted;

static int scripted_start(provider *p, const provider_request *req, provider_done_fn done,
                          void *ctx) {
  scripted *s = (scripted *)p;
  pending_call *c = calloc(1, sizeof *c);
  c->done = done;
  c->ctx = ctx;
  snprintf(c->task_id, sizeof c->task_id, "%s", req->task_id);
  c->n_inputs = req->n_inputs;
  c->input0_len = req->n_inputs ? req->inputs[0].len : 0;
  snprintf(c->output_format, sizeof c->output_format, "%s",
           req->output_format ? req->output_format : "");
  c->output_compression = req->output_compression;
  snprintf(c->quality, sizeof c->quality, "%s", req->quality ? req->quality : "");
  snprintf(c->background, sizeof c->background, "%s", req->background ? req->background : "");
  if (req->mask) { /* only valid during start() */
    c->mask = malloc(req->mask->len ? req->mask->len : 1);
    memcpy(c->mask, req->mask->data, req->mask->len);
    c->mask_len = req->mask->len;
  }
  pthread_mutex_lock(&s->lock);
  c->next = s->pending;
  s->pending = c;
  s->started++;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
  return 0;
}

static void scripted_destroy(provider *p) {
  scripted *s = (scripted *)p;
  while (s->pending) {
    pending_call *c = s->pending;
    s->pending = c->next;
    s->destroyed_with_pending++;
    free(c->mask);
    free(c);
  }
}

/* Marks the pending call started with ctx; the test then answers it (as a
 * real provider would, soon and on its own thread). */
static void scripted_cancel(provider *p, void *ctx) {
  scripted *s = (scripted *)p;
  pthread_mutex_lock(&s->lock);
  s->cancels++;
  for (pending_call *c = s->pending; c; c = c->next)
    if (c->ctx == ctx) c->cancel_asked = true;
  pthread_mutex_unlock(&s->lock);
}

static const provider_ops scripted_ops = {"scripted", scripted_start, scripted_destroy,
                                          scripted_cancel};

static void scripted_init_named(scripted *s, const char *name) {
  memset(s, 0, sizeof *s);
  s->base.ops = &scripted_ops;
  snprintf(s->base.name, sizeof s->base.name, "%s", name);
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->cond, NULL);
}

static void scripted_init(scripted *s) { scripted_init_named(s, "scripted"); }

/* Waits until at least n calls were started; false after 10 s (a failure, not a pace). */
static bool wait_started(scripted *s, int n) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  pthread_mutex_lock(&s->lock);
  while (s->started < n)
    if (pthread_cond_timedwait(&s->cond, &s->lock, &deadline) != 0) break;
  bool ok = s->started >= n;
  pthread_mutex_unlock(&s->lock);
  return ok;
}

static int started_count(scripted *s) {
  pthread_mutex_lock(&s->lock);
  int n = s->started;
  pthread_mutex_unlock(&s->lock);
  return n;
}

/* Waits until one of two providers got a call and returns it (NULL after 10 s). */
static scripted *wait_any_started(scripted *a, scripted *b) {
  int64_t deadline = time_mono_ms() + 10000;
  while (time_mono_ms() < deadline) {
    if (started_count(a) > 0) return a;
    if (started_count(b) > 0) return b;
    struct timespec short_wait;
    clock_gettime(CLOCK_REALTIME, &short_wait);
    short_wait.tv_nsec += 10 * 1000000;
    if (short_wait.tv_nsec >= 1000000000) {
      short_wait.tv_sec++;
      short_wait.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&a->lock);
    if (a->started == 0) pthread_cond_timedwait(&a->cond, &a->lock, &short_wait);
    pthread_mutex_unlock(&a->lock);
  }
  return NULL;
}

static pending_call *take_one(scripted *s) {
  pthread_mutex_lock(&s->lock);
  pending_call *c = s->pending;
  if (c) s->pending = c->next;
  pthread_mutex_unlock(&s->lock);
  return c;
}

/* A minimal PNG: signature plus IHDR, enough for format detection. */
static const uint8_t tiny_png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13,
                                   'I', 'H', 'D', 'R', 0, 0, 0, 2, 0, 0, 0, 3, 8, 2, 0, 0,
                                   0, 0, 0, 0, 0};

static void complete_with(pending_call *c, provider_outcome *o);

static void complete(pending_call *c, provider_status status) {
  provider_outcome *o = provider_outcome_new(status);
  if (status == PROVIDER_OK) {
    o->images = calloc(1, sizeof *o->images);
    o->images[0].data = malloc(sizeof tiny_png);
    memcpy(o->images[0].data, tiny_png, sizeof tiny_png);
    o->images[0].len = sizeof tiny_png;
    o->images[0].width = 2;
    o->images[0].height = 3;
    snprintf(o->images[0].mime, sizeof o->images[0].mime, "image/png");
    o->n_images = 1;
  } else {
    snprintf(o->error_code, sizeof o->error_code, "%s",
             status == PROVIDER_MODERATED ? "content_moderated" : "upstream_error");
    snprintf(o->error_message, sizeof o->error_message, "scripted");
  }
  complete_with(c, o);
}

static void complete_with(pending_call *c, provider_outcome *o) {
  c->done(c->ctx, o);
  free(c->mask);
  free(c);
}

/* A failure the engine may retry (a 503 from the upstream). */
static void complete_unavailable(pending_call *c, int64_t retry_after_ms) {
  provider_outcome *o = provider_outcome_new(PROVIDER_FAILED);
  o->retryable = true;
  o->error_class = PROVIDER_ERR_SERVER;
  o->http_status = 503;
  o->retry_after_ms = retry_after_ms;
  snprintf(o->error_code, sizeof o->error_code, "upstream_unavailable");
  complete_with(c, o);
}

/* ---- finish notifications ---------------------------------------------- */

typedef struct finish_log {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int count;
  store *st; /* where the changed task is read, to count final ones */
} finish_log;

/* The engine's change notification: counts the changes that made a task final. */
static void on_change(void *ctx, const char *task_id, bool outbox) {
  (void)outbox;
  finish_log *f = ctx;
  task *t = NULL;
  bool final = f->st->ops->task_get(f->st, task_id, &t) == STORE_OK &&
               task_state_is_final(t->state);
  task_free(t);
  if (!final) return;
  pthread_mutex_lock(&f->lock);
  f->count++;
  pthread_cond_broadcast(&f->cond);
  pthread_mutex_unlock(&f->lock);
}

static bool wait_finished(finish_log *f, int n) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  pthread_mutex_lock(&f->lock);
  while (f->count < n)
    if (pthread_cond_timedwait(&f->cond, &f->lock, &deadline) != 0) break;
  bool ok = f->count >= n;
  pthread_mutex_unlock(&f->lock);
  return ok;
}

/* ---- fixture ------------------------------------------------------------ */

typedef struct fixture {
  char dir[64];
  store *st;
  blob *bl;
  finish_log fin;
  int64_t account_id;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  char path[128], err[256];
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-engine-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(path, sizeof path, "%s/db", f->dir);
  f->st = store_sqlite_open(path, 4, err, sizeof err);
  assert_non_null(f->st);
  snprintf(path, sizeof path, "%s/blobs", f->dir);
  f->bl = blob_fs_open(path, err, sizeof err);
  assert_non_null(f->bl);
  pthread_mutex_init(&f->fin.lock, NULL);
  f->fin.st = f->st;
  pthread_cond_init(&f->fin.cond, NULL);
  assert_int_equal(f->st->ops->account_create(f->st, "t@example.com", 1, &f->account_id),
                   STORE_OK);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  f->st->ops->close(f->st);
  f->bl->ops->close(f->bl);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

static engine_config base_config(fixture *f, int max_in_flight, int drain_ms) {
  return (engine_config){.max_in_flight = max_in_flight,
                         .retention_ms = 3600 * 1000,
                         .max_input_bytes = 1 << 20,
                         .drain_timeout_ms = drain_ms,
                         .max_attempts = 3,
                         .deadline_ms = 60000,
                         .backoff_base_ms = 10,
                         .backoff_max_ms = 20,
                         .on_change = on_change,
                         .on_change_ctx = &f->fin};
}

/* A router whose one route for nano-banana goes to each given provider. */
static router *router_of(scripted *const *providers, size_t n) {
  router_config rc = {.breaker_failures = 100, .breaker_open_ms = 1000};
  router *r = router_create(&rc);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(router_add_provider(r, &providers[i]->base, 0), 0);
    assert_int_equal(
        router_add_route(r, "nano-banana", providers[i]->base.name, "upstream-id", 1), 0);
  }
  return r;
}

/* An engine whose one provider s serves gpt-image-1, priced by prices (NULL:
 * each image costs its hold); started. */
static engine *start_gpt_engine(fixture *f, scripted *s, const imgate_config *prices) {
  router_config rc = {.breaker_failures = 100, .breaker_open_ms = 1000};
  router *r = router_create(&rc);
  assert_int_equal(router_add_provider(r, &s->base, 0), 0);
  assert_int_equal(router_add_route(r, "gpt-image-1", s->base.name, "gpt-image-1", 1), 0);
  engine_config ec = base_config(f, 4, 1000);
  ec.prices = prices;
  engine *e = engine_create(f->st, f->bl, r, NULL, &ec);
  assert_non_null(e);
  assert_int_equal(engine_start(e), 0);
  return e;
}

static engine *make_engine(fixture *f, scripted *s, int max_in_flight, int drain_ms) {
  engine_config ec = base_config(f, max_in_flight, drain_ms);
  engine *e = engine_create(f->st, f->bl, router_of(&s, 1), NULL, &ec);
  assert_non_null(e);
  return e;
}

/* Inserts a queued task (optionally with one stored input); returns its id in out. */
static void insert_task(fixture *f, char out[IDS_UUID_LEN + 1], bool with_input) {
  task t = {0};
  assert_true(ids_uuid7(t.id));
  t.account_id = f->account_id;
  t.state = TASK_QUEUED;
  t.model = "nano-banana";
  t.prompt = "p";
  t.aspect_ratio = "auto";
  t.resolution = "1K";
  t.quantity = 1;
  t.created_ms = time_now_ms();
  task_input in = {0};
  char key[96];
  if (with_input) {
    snprintf(key, sizeof key, "inputs/%s/0.png", t.id);
    assert_int_equal(f->bl->ops->put(f->bl, key, tiny_png, sizeof tiny_png, "image/png"), BLOB_OK);
    in.blob_key = key;
    in.mime = "image/png";
    in.bytes = sizeof tiny_png;
    t.inputs = &in;
    t.n_inputs = 1;
  }
  assert_int_equal(f->st->ops->task_insert(f->st, &t), STORE_OK);
  memcpy(out, t.id, sizeof t.id);
}

/* A queued task with a webhook (and the given optional events and
 * deadline); returns its id in out. */
static void insert_task_hooked(fixture *f, char out[IDS_UUID_LEN + 1], unsigned events,
                               int64_t deadline_ms) {
  task t = {0};
  assert_true(ids_uuid7(t.id));
  t.account_id = f->account_id;
  t.state = TASK_QUEUED;
  t.model = "nano-banana";
  t.prompt = "p";
  t.aspect_ratio = "auto";
  t.resolution = "1K";
  t.quantity = 1;
  t.created_ms = time_now_ms();
  t.webhook_url = "https://hooks.example.test/h";
  t.webhook_events = events;
  t.deadline_ms = deadline_ms;
  assert_int_equal(f->st->ops->task_insert(f->st, &t), STORE_OK);
  memcpy(out, t.id, sizeof t.id);
}

/* The events of the deliveries due now in the outbox (claimed, so each is
 * seen once), joined by ','. */
static void outbox_events(fixture *f, char *out, size_t size) {
  store_delivery *d = NULL;
  size_t n = 0;
  assert_int_equal(f->st->ops->webhook_claim(f->st, time_now_ms() + 1000, 60000, 100, &d, &n),
                   STORE_OK);
  out[0] = '\0';
  for (size_t i = 0; i < n; i++)
    snprintf(out + strlen(out), size - strlen(out), "%s%s", i ? "," : "", d[i].event);
  store_delivery_free(d, n);
}

static task *load(fixture *f, const char *id) {
  task *t = NULL;
  assert_int_equal(f->st->ops->task_get(f->st, id, &t), STORE_OK);
  return t;
}

/* ---- a store that fails on request ------------------------------------- */

/* Wraps the fixture's store; the next fail_finish task_finish calls and
 * fail_start_many task_start_many calls fail with STORE_ERROR. */
typedef struct flaky_store {
  store base;
  store_ops ops;
  store *real;
  _Atomic int fail_finish, fail_start_many;
} flaky_store;

static int flaky_finish(store *s, const char *task_id, int attempt, task_state st,
                        const char *code, const char *msg, const task_result *results,
                        size_t n, int64_t charge, int64_t now_ms, const task_attempt *a,
                        const store_outbox *outbox) {
  flaky_store *fs = (flaky_store *)s;
  if (fs->fail_finish > 0) {
    fs->fail_finish--;
    return STORE_ERROR;
  }
  return fs->real->ops->task_finish(fs->real, task_id, attempt, st, code, msg, results, n,
                                    charge, now_ms, a, outbox);
}

static int flaky_start_many(store *s, store_start *items, size_t n, int64_t now_ms) {
  flaky_store *fs = (flaky_store *)s;
  if (fs->fail_start_many > 0) {
    fs->fail_start_many--;
    return STORE_ERROR;
  }
  return fs->real->ops->task_start_many(fs->real, items, n, now_ms);
}

/* Every other operation goes straight to the real store, which they receive
 * as their store argument through these forwarders. */
static int flaky_get(store *s, const char *id, task **out) {
  store *r = ((flaky_store *)s)->real;
  return r->ops->task_get(r, id, out);
}
static int flaky_list_queued(store *s, size_t limit, char (**ids)[IDS_UUID_LEN + 1],
                             size_t *n) {
  store *r = ((flaky_store *)s)->real;
  return r->ops->task_list_queued(r, limit, ids, n);
}
static int flaky_requeue(store *s, int64_t *n) {
  store *r = ((flaky_store *)s)->real;
  return r->ops->task_requeue_running(r, n);
}
static int flaky_list_running(store *s, size_t limit, store_start **items, size_t *n) {
  store *r = ((flaky_store *)s)->real;
  return r->ops->task_list_running(r, limit, items, n);
}
static int flaky_requeue_one(store *s, const char *id, int attempt) {
  store *r = ((flaky_store *)s)->real;
  return r->ops->task_requeue(r, id, attempt);
}
static int flaky_attempt_add(store *s, const char *id, const task_attempt *a) {
  store *r = ((flaky_store *)s)->real;
  return r->ops->task_attempt_add(r, id, a);
}
static int flaky_list_due(store *s, int64_t now, size_t limit, char (**ids)[IDS_UUID_LEN + 1],
                          size_t *n) {
  store *r = ((flaky_store *)s)->real;
  return r->ops->task_list_due(r, now, limit, ids, n);
}
static int flaky_health(store *s, char *reason, size_t size) {
  store *r = ((flaky_store *)s)->real;
  return r->ops->health(r, reason, size);
}

static void flaky_init(flaky_store *fs, store *real) {
  memset(&fs->ops, 0, sizeof fs->ops); /* an unexpected call crashes the test loudly */
  fs->ops.task_get = flaky_get;
  fs->ops.task_start_many = flaky_start_many;
  fs->ops.task_finish = flaky_finish;
  fs->ops.task_list_queued = flaky_list_queued;
  fs->ops.task_requeue_running = flaky_requeue;
  fs->ops.task_attempt_add = flaky_attempt_add;
  fs->ops.task_list_running = flaky_list_running;
  fs->ops.task_requeue = flaky_requeue_one;
  fs->ops.health = flaky_health;
  fs->ops.task_list_due = flaky_list_due;
  fs->base.ops = &fs->ops;
  fs->real = real;
  fs->fail_finish = fs->fail_start_many = 0;
}

/* An engine on fs (flaky_init'ed and primed by the caller) with one scripted
 * route s; one task inserted into id and enqueued. sweep_ms 0: the default. */
static engine *flaky_engine_with_task(fixture *f, flaky_store *fs, scripted *s, int sweep_ms,
                                      char id[IDS_UUID_LEN + 1]) {
  scripted_init(s);
  engine_config ec = base_config(f, 4, 1000);
  ec.sweep_interval_ms = sweep_ms;
  engine *e = engine_create(&fs->base, f->bl, router_of((scripted *[]){s}, 1), NULL, &ec);
  assert_int_equal(engine_start(e), 0);
  insert_task(f, id, false);
  engine_enqueue(e, id);
  return e;
}

/* Polls the store (with a deadline) until the task has its cancel mark. */
static bool wait_cancel_marked(fixture *f, const char *id) {
  for (int i = 0; i < 1000; i++) {
    task *t = load(f, id);
    bool marked = t->cancel_requested;
    task_free(t);
    if (marked) return true;
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL); /* polling the store, with a deadline */
  }
  return false;
}

/* ---- tests -------------------------------------------------------------- */

static void test_runs_tasks_to_success(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 8, 1000);
  assert_int_equal(engine_start(e), 0);
  char ids[5][IDS_UUID_LEN + 1];
  for (int i = 0; i < 5; i++) {
    insert_task(f, ids[i], i == 0);
    engine_enqueue(e, ids[i]);
  }
  assert_true(wait_started(&s, 5));
  pending_call *c;
  bool saw_input = false;
  while ((c = take_one(&s))) {
    if (strcmp(c->task_id, ids[0]) == 0)
      saw_input = c->n_inputs == 1 && c->input0_len == sizeof tiny_png;
    complete(c, PROVIDER_OK);
  }
  assert_true(saw_input); /* the stored reference reached the provider intact */
  assert_true(wait_finished(&f->fin, 5));
  for (int i = 0; i < 5; i++) {
    task *t = load(f, ids[i]);
    assert_int_equal(t->state, TASK_SUCCEEDED);
    assert_int_equal(t->attempts, 1);
    assert_int_equal(t->n_results, 1);
    assert_int_equal(t->results[0].width, 2);
    assert_int_equal(t->results[0].height, 3);
    assert_string_equal(t->results[0].mime, "image/png");
    assert_int_equal(strlen(t->results[0].token), 32);
    uint8_t *data;
    size_t len;
    assert_int_equal(f->bl->ops->read(f->bl, t->results[0].blob_key, 1 << 20, &data, &len),
                     BLOB_OK);
    assert_memory_equal(data, tiny_png, sizeof tiny_png);
    free(data);
    task_free(t);
  }
  engine_destroy(e);
}

/* A queued, priced gpt-image-1 task (the account is topped up to pay its hold). */
static void insert_gpt_task(fixture *f, char out[IDS_UUID_LEN + 1], const char *ratio,
                            const char *quality, int quantity, int64_t unit) {
  assert_int_equal(f->st->ops->ledger_post(f->st, f->account_id, LEDGER_TOPUP, unit * quantity,
                                           "test", time_now_ms(), NULL),
                   STORE_OK);
  task t = {0};
  assert_true(ids_uuid7(t.id));
  t.account_id = f->account_id;
  t.state = TASK_QUEUED;
  t.model = "gpt-image-1";
  t.prompt = "p";
  t.aspect_ratio = (char *)ratio;
  t.resolution = "1K";
  t.quality = (char *)quality;
  t.quantity = quantity;
  t.price_unit_micros = unit;
  t.cost_held_micros = unit * quantity;
  t.created_ms = time_now_ms();
  assert_int_equal(f->st->ops->task_insert(f->st, &t), STORE_OK);
  memcpy(out, t.id, sizeof t.id);
}

/* An outcome with one image per size given ("WxH"), reporting quality ("" none). */
static provider_outcome *sized_images(const char *const *sizes, size_t n, const char *quality) {
  provider_outcome *o = provider_outcome_new(PROVIDER_OK);
  o->images = calloc(n, sizeof *o->images);
  for (size_t i = 0; i < n; i++) {
    o->images[i].data = malloc(sizeof tiny_png);
    memcpy(o->images[i].data, tiny_png, sizeof tiny_png);
    o->images[i].len = sizeof tiny_png;
    assert_int_equal(sscanf(sizes[i], "%dx%d", &o->images[i].width, &o->images[i].height), 2);
    snprintf(o->images[i].mime, sizeof o->images[i].mime, "image/png");
  }
  o->n_images = n;
  snprintf(o->quality, sizeof o->quality, "%s", quality);
  return o;
}

/* With a price list, each delivered image is priced on its own (its size
 * from its pixels, its quality from the upstream's report) and the task is
 * charged their sum; the rest of the hold goes back. The quality reaches
 * the provider as asked. */
static void test_prices_each_delivered_image(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  imgate_config prices;
  config_defaults(&prices);
  engine *e = start_gpt_engine(f, &s, &prices);

  char open[IDS_UUID_LEN + 1], exact[IDS_UUID_LEN + 1];
  insert_gpt_task(f, open, "auto", "auto", 4, 250000); /* holds 4 x 0.25 */
  engine_enqueue(e, open);
  assert_true(wait_started(&s, 1));
  pending_call *c = take_one(&s);
  assert_string_equal(c->quality, "auto");
  static const char *const three[] = {"1024x1024", "1536x1024", "1024x1536"};
  complete_with(c, sized_images(three, 3, "medium")); /* 3 of 4 */
  assert_true(wait_finished(&f->fin, 1));
  task *t = load(f, open);
  assert_int_equal(t->state, TASK_SUCCEEDED);
  assert_int_equal(t->n_results, 3);
  const int64_t want[3] = {42000, 63000, 63000};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(t->results[i].price_micros, want[i]);
    assert_string_equal(t->results[i].quality, "medium");
  }
  assert_int_equal(t->cost_charged_micros, 42000 + 63000 + 63000);
  task_free(t);

  insert_gpt_task(f, exact, "3:2", "high", 1, 250000);
  engine_enqueue(e, exact);
  assert_true(wait_started(&s, 2));
  c = take_one(&s);
  assert_string_equal(c->quality, "high");
  static const char *const landscape[] = {"1536x1024"};
  complete_with(c, sized_images(landscape, 1, "")); /* no report: the quality asked */
  assert_true(wait_finished(&f->fin, 2));
  t = load(f, exact);
  assert_int_equal(t->results[0].price_micros, 250000);
  assert_null(t->results[0].quality);
  assert_int_equal(t->cost_charged_micros, 250000);
  task_free(t);

  store_account a;
  assert_int_equal(f->st->ops->account_get(f->st, f->account_id, &a), STORE_OK);
  assert_int_equal(a.held_micros, 0);
  assert_int_equal(a.balance_micros, 1000000 + 250000 - 168000 - 250000);
  assert_int_equal(f->st->ops->ledger_verify(f->st), STORE_OK);
  engine_destroy(e);
}

/* A GPT Image edit under a mask: the provider gets the task's images as
 * inputs and the mask apart from them (its bytes as stored), with the
 * background asked; each result keeps the background the upstream reported;
 * once final, the mask goes from the blob store with the inputs. */
static void test_mask_and_background_reach_the_provider(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = start_gpt_engine(f, &s, NULL);

  /* The mask differs from the image in its bytes (colour type 6: RGBA). */
  uint8_t mask_png[sizeof tiny_png];
  memcpy(mask_png, tiny_png, sizeof tiny_png);
  mask_png[25] = 6;
  task t = {0};
  assert_true(ids_uuid7(t.id));
  t.account_id = f->account_id;
  t.state = TASK_QUEUED;
  t.model = "gpt-image-1";
  t.prompt = "p";
  t.aspect_ratio = "auto";
  t.resolution = "1K";
  t.quantity = 1;
  t.background = "transparent";
  t.created_ms = time_now_ms();
  char in_key[96], mask_key[96];
  snprintf(in_key, sizeof in_key, "inputs/%s/0.png", t.id);
  snprintf(mask_key, sizeof mask_key, "inputs/%s/mask.png", t.id);
  assert_int_equal(f->bl->ops->put(f->bl, in_key, tiny_png, sizeof tiny_png, "image/png"),
                   BLOB_OK);
  assert_int_equal(f->bl->ops->put(f->bl, mask_key, mask_png, sizeof mask_png, "image/png"),
                   BLOB_OK);
  task_input in = {.blob_key = in_key, .mime = "image/png", .bytes = sizeof tiny_png};
  task_input mask = {.blob_key = mask_key, .mime = "image/png", .bytes = sizeof mask_png};
  t.inputs = &in;
  t.n_inputs = 1;
  t.mask = &mask;
  assert_int_equal(f->st->ops->task_insert(f->st, &t), STORE_OK);
  engine_enqueue(e, t.id);
  assert_true(wait_started(&s, 1));
  pending_call *c = take_one(&s);
  assert_int_equal(c->n_inputs, 1); /* the image, not the mask */
  assert_int_equal(c->input0_len, sizeof tiny_png);
  assert_string_equal(c->background, "transparent");
  assert_non_null(c->mask);
  assert_int_equal(c->mask_len, sizeof mask_png);
  assert_memory_equal(c->mask, mask_png, sizeof mask_png);
  static const char *const square[] = {"1024x1024"};
  provider_outcome *o = sized_images(square, 1, "");
  snprintf(o->background, sizeof o->background, "transparent");
  complete_with(c, o);
  assert_true(wait_finished(&f->fin, 1));
  task *got = load(f, t.id);
  assert_int_equal(got->state, TASK_SUCCEEDED);
  assert_int_equal(got->n_results, 1);
  assert_string_equal(got->results[0].background, "transparent");
  assert_string_equal(got->background, "transparent");
  task_free(got);

  /* A task without them: the provider is given neither. */
  char plain[IDS_UUID_LEN + 1];
  insert_gpt_task(f, plain, "1:1", "low", 1, 11000);
  engine_enqueue(e, plain);
  assert_true(wait_started(&s, 2));
  c = take_one(&s);
  assert_string_equal(c->background, "");
  assert_null(c->mask);
  complete_with(c, sized_images(square, 1, "low"));
  assert_true(wait_finished(&f->fin, 2));
  got = load(f, plain);
  assert_null(got->results[0].background);
  task_free(got);
  /* Stopped, so its completers have done all they were doing: the first
   * task is final, and neither its image nor its mask is kept. */
  engine_destroy(e);
  blob_object obj;
  assert_int_equal(f->bl->ops->open(f->bl, in_key, &obj), BLOB_NOT_FOUND);
  assert_int_equal(f->bl->ops->open(f->bl, mask_key, &obj), BLOB_NOT_FOUND);
}

static void test_respects_max_in_flight(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 2, 1000);
  assert_int_equal(engine_start(e), 0);
  char ids[5][IDS_UUID_LEN + 1];
  for (int i = 0; i < 5; i++) {
    insert_task(f, ids[i], false);
    engine_enqueue(e, ids[i]);
  }
  assert_true(wait_started(&s, 2));
  engine_stats st;
  engine_get_stats(e, &st);
  assert_int_equal(st.in_flight, 2);
  assert_int_equal(st.queued, 3);
  assert_int_equal(s.started, 2);
  /* Each completion frees exactly one slot. */
  for (int done = 0; done < 5; done++) {
    assert_true(wait_started(&s, done + 2 > 5 ? 5 : done + 2));
    pending_call *c = take_one(&s);
    assert_non_null(c);
    complete(c, PROVIDER_OK);
    assert_true(wait_finished(&f->fin, done + 1));
    pthread_mutex_lock(&s.lock);
    assert_true(s.started <= done + 3);
    pthread_mutex_unlock(&s.lock);
  }
  engine_destroy(e);
}

static void test_failed_and_moderated(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000);
  assert_int_equal(engine_start(e), 0);
  char a[IDS_UUID_LEN + 1], b[IDS_UUID_LEN + 1];
  insert_task(f, a, false);
  engine_enqueue(e, a);
  assert_true(wait_started(&s, 1));
  complete(take_one(&s), PROVIDER_FAILED);
  insert_task(f, b, false);
  engine_enqueue(e, b);
  assert_true(wait_started(&s, 2));
  complete(take_one(&s), PROVIDER_MODERATED);
  assert_true(wait_finished(&f->fin, 2));
  task *t = load(f, a);
  assert_int_equal(t->state, TASK_FAILED);
  assert_string_equal(t->error_code, "upstream_error");
  assert_int_equal(t->n_results, 0);
  task_free(t);
  t = load(f, b);
  assert_int_equal(t->state, TASK_MODERATED);
  assert_string_equal(t->error_code, "content_moderated");
  task_free(t);
  engine_destroy(e);
}

static void test_duplicate_enqueue_runs_once(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000);
  assert_int_equal(engine_start(e), 0);
  char a[IDS_UUID_LEN + 1], b[IDS_UUID_LEN + 1];
  insert_task(f, a, false);
  insert_task(f, b, false);
  engine_enqueue(e, a);
  engine_enqueue(e, a); /* the store's compare-and-set turns the second away */
  engine_enqueue(e, b); /* queued behind both: once it starts, both a's were seen */
  assert_true(wait_started(&s, 2));
  pending_call *c;
  while ((c = take_one(&s))) complete(c, PROVIDER_OK);
  assert_true(wait_finished(&f->fin, 2));
  engine_stats st;
  engine_get_stats(e, &st);
  assert_int_equal(st.queued, 0);
  assert_int_equal(s.started, 2);
  engine_destroy(e);
}

static void test_stop_leaves_running_and_restart_reruns(void **state) {
  fixture *f = *state;
  scripted s1;
  scripted_init(&s1);
  engine *e = make_engine(f, &s1, 2, 0);
  assert_int_equal(engine_start(e), 0);
  char ids[4][IDS_UUID_LEN + 1];
  for (int i = 0; i < 4; i++) {
    insert_task(f, ids[i], false);
    engine_enqueue(e, ids[i]);
  }
  assert_true(wait_started(&s1, 2));
  engine_destroy(e); /* drain 0 ms: two calls dropped, two never started */
  assert_int_equal(s1.destroyed_with_pending, 2);
  int running = 0, queued = 0;
  for (int i = 0; i < 4; i++) {
    task *t = load(f, ids[i]);
    running += t->state == TASK_RUNNING;
    queued += t->state == TASK_QUEUED;
    task_free(t);
  }
  assert_int_equal(running, 2);
  assert_int_equal(queued, 2);

  scripted s2;
  scripted_init(&s2);
  e = make_engine(f, &s2, 8, 1000);
  assert_int_equal(engine_start(e), 0); /* recovery: all four come back */
  assert_true(wait_started(&s2, 4));
  pending_call *c;
  while ((c = take_one(&s2))) complete(c, PROVIDER_OK);
  assert_true(wait_finished(&f->fin, 4));
  int second_attempts = 0;
  for (int i = 0; i < 4; i++) {
    task *t = load(f, ids[i]);
    assert_int_equal(t->state, TASK_SUCCEEDED);
    assert_int_equal(t->n_results, 1);
    second_attempts += t->attempts == 2;
    task_free(t);
  }
  assert_int_equal(second_attempts, 2);
  engine_destroy(e);
}

/* Completes the one pending call once the engine has begun to stop. */
static void *complete_during_stop(void *arg) {
  void **args = arg;
  engine *e = args[0];
  scripted *s = args[1];
  int64_t deadline = time_mono_ms() + 10000;
  engine_stats st = {0};
  while (!st.stopping && time_mono_ms() < deadline) {
    engine_get_stats(e, &st);
    sched_yield();
  }
  complete(take_one(s), PROVIDER_OK);
  return NULL;
}

static void test_drain_waits_for_running(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 2, 10000);
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1];
  insert_task(f, id, false);
  engine_enqueue(e, id);
  assert_true(wait_started(&s, 1));
  pthread_t th;
  void *args[2] = {e, &s};
  assert_int_equal(pthread_create(&th, NULL, complete_during_stop, args), 0);
  engine_stop(e); /* must wait for the completion above, not drop it */
  pthread_join(th, NULL);
  assert_int_equal(s.destroyed_with_pending, 0);
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_SUCCEEDED);
  task_free(t);
  engine_destroy(e);
}

static void test_retry_fails_over_to_another_route(void **state) {
  fixture *f = *state;
  scripted a, b;
  scripted_init_named(&a, "a");
  scripted_init_named(&b, "b");
  scripted *both[2] = {&a, &b};
  engine_config ec = base_config(f, 4, 1000);
  engine *e = engine_create(f->st, f->bl, router_of(both, 2), NULL, &ec);
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1];
  insert_task(f, id, false);
  engine_enqueue(e, id);
  /* Whichever route got the first attempt answers 503... */
  int64_t failed_at = 0;
  scripted *first = wait_any_started(&a, &b);
  assert_non_null(first);
  scripted *second = first == &a ? &b : &a;
  failed_at = time_mono_ms();
  complete_unavailable(take_one(first), 200);
  /* ...and the retry goes to the other route, no sooner than Retry-After. */
  assert_true(wait_started(second, 1));
  assert_true(time_mono_ms() - failed_at >= 200);
  assert_int_equal(started_count(first), 1);
  complete(take_one(second), PROVIDER_OK);
  assert_true(wait_finished(&f->fin, 1));
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_SUCCEEDED);
  assert_int_equal(t->attempts, 1); /* one run */
  assert_int_equal(t->n_upstream_attempts, 2);
  assert_string_equal(t->upstream_attempts[0].provider, first->base.name);
  assert_string_equal(t->upstream_attempts[0].error_class, "server");
  assert_int_equal(t->upstream_attempts[0].http_status, 503);
  assert_string_equal(t->upstream_attempts[1].provider, second->base.name);
  assert_string_equal(t->upstream_attempts[1].error_class, "none");
  assert_string_equal(t->upstream_attempts[1].upstream_model, "upstream-id");
  assert_string_equal(t->provider, second->base.name);
  task_free(t);
  engine_destroy(e);
}

static void test_attempts_are_bounded(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000); /* max_attempts 3 */
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1];
  insert_task(f, id, false);
  engine_enqueue(e, id);
  for (int i = 1; i <= 3; i++) {
    assert_true(wait_started(&s, i));
    complete_unavailable(take_one(&s), 0);
  }
  assert_true(wait_finished(&f->fin, 1));
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_FAILED);
  assert_string_equal(t->error_code, "upstream_unavailable");
  assert_int_equal(t->n_upstream_attempts, 3);
  task_free(t);
  assert_int_equal(s.started, 3);
  engine_destroy(e);
}

static void test_retry_after_beyond_deadline_fails_now(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine_config ec = base_config(f, 4, 1000);
  ec.deadline_ms = 2000;
  scripted *one = &s;
  engine *e = engine_create(f->st, f->bl, router_of(&one, 1), NULL, &ec);
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1];
  insert_task(f, id, false);
  engine_enqueue(e, id);
  assert_true(wait_started(&s, 1));
  complete_unavailable(take_one(&s), 60000); /* asks for a minute; the run has two seconds */
  assert_true(wait_finished(&f->fin, 1));
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_FAILED);
  assert_int_equal(t->n_upstream_attempts, 1);
  task_free(t);
  engine_destroy(e);
}

/* A final write that fails for a moment is tried again: the image is kept
 * and the task finishes once. */
static void test_finish_survives_brief_store_failure(void **state) {
  fixture *f = *state;
  flaky_store fs;
  flaky_init(&fs, f->st);
  fs.fail_finish = 2;
  scripted s;
  char id[IDS_UUID_LEN + 1];
  engine *e = flaky_engine_with_task(f, &fs, &s, 0, id);
  assert_true(wait_started(&s, 1));
  complete(take_one(&s), PROVIDER_OK);
  assert_true(wait_finished(&f->fin, 1));
  assert_int_equal(fs.fail_finish, 0); /* both failures happened, then it went through */
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_SUCCEEDED);
  assert_int_equal(t->n_results, 1);
  uint8_t *data;
  size_t len;
  assert_int_equal(f->bl->ops->read(f->bl, t->results[0].blob_key, 1 << 20, &data, &len),
                   BLOB_OK); /* the image was not thrown away by the failed tries */
  free(data);
  task_free(t);
  engine_destroy(e);
  assert_int_equal(f->fin.count, 1);
}

/* A task whose start failed on a store error stays queued in the store; the
 * idle dispatcher's sweep finds it and runs it without a restart. */
static void test_stranded_queued_task_is_swept(void **state) {
  fixture *f = *state;
  flaky_store fs;
  flaky_init(&fs, f->st);
  fs.fail_start_many = 1;
  scripted s;
  char id[IDS_UUID_LEN + 1];
  engine *e = flaky_engine_with_task(f, &fs, &s, 50, id);
  assert_true(wait_started(&s, 1));
  assert_int_equal(fs.fail_start_many, 0); /* the first start really failed */
  complete(take_one(&s), PROVIDER_OK);
  assert_true(wait_finished(&f->fin, 1));
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_SUCCEEDED);
  assert_int_equal(t->attempts, 1);
  task_free(t);
  engine_destroy(e);
}

/* A run whose final write fails every time is not left running until the
 * next restart: the idle dispatcher finds it (running in the store, no job
 * here), puts it back to queued and runs it again. */
static void test_lost_run_is_requeued(void **state) {
  fixture *f = *state;
  flaky_store fs;
  flaky_init(&fs, f->st);
  fs.fail_finish = 5; /* the first write and its four retries */
  scripted s;
  char id[IDS_UUID_LEN + 1];
  engine *e = flaky_engine_with_task(f, &fs, &s, 50, id);
  assert_true(wait_started(&s, 1));
  complete(take_one(&s), PROVIDER_OK);
  assert_true(wait_started(&s, 2)); /* lost, found, started again */
  assert_int_equal(fs.fail_finish, 0);
  complete(take_one(&s), PROVIDER_OK);
  assert_true(wait_finished(&f->fin, 1));
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_SUCCEEDED);
  assert_int_equal(t->attempts, 2);
  task_free(t);
  engine_destroy(e);
  assert_int_equal(f->fin.count, 1);
}


/* A queued task is canceled at once: final, nothing charged, its CANCELED
 * event and its webhook delivery written with the change. */
static void test_cancel_queued(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000);
  char id[IDS_UUID_LEN + 1];
  insert_task_hooked(f, id, 0, 0);
  task_state st;
  assert_int_equal(engine_cancel(e, id, "canceled", &st), STORE_OK);
  assert_int_equal(st, TASK_CANCELED);
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_CANCELED);
  assert_string_equal(t->error_code, "canceled");
  task_free(t);
  char events[256];
  outbox_events(f, events, sizeof events);
  assert_string_equal(events, "task.canceled");
  assert_int_equal(f->fin.count, 1);
  /* Final now: a second cancel changes nothing. */
  assert_int_equal(engine_cancel(e, id, "canceled", &st), STORE_CONFLICT);
  assert_int_equal(st, TASK_CANCELED);
  assert_int_equal(f->st->ops->ledger_verify(f->st), STORE_OK);
  engine_destroy(e);
}

/* A running task: the cancel is marked, and the answer that comes ends it
 * canceled even when it brought an image (dropped, nothing charged). Its
 * webhook gets task.running (asked for) and then task.canceled. */
static void test_cancel_running(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000);
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1];
  insert_task_hooked(f, id, TASK_WEBHOOK_RUNNING, 0);
  engine_enqueue(e, id);
  assert_true(wait_started(&s, 1));
  task_state st;
  assert_int_equal(engine_cancel(e, id, "canceled", &st), STORE_CONFLICT);
  assert_int_equal(st, TASK_RUNNING);
  complete(take_one(&s), PROVIDER_OK);
  assert_true(wait_finished(&f->fin, 1));
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_CANCELED);
  assert_int_equal(t->n_results, 0);
  assert_int_equal(t->cost_charged_micros, 0);
  task_free(t);
  char events[256];
  outbox_events(f, events, sizeof events);
  assert_string_equal(events, "task.running,task.canceled");
  assert_int_equal(f->st->ops->ledger_verify(f->st), STORE_OK);
  engine_destroy(e);
}

/* A cancel while the call is out asks the provider to stop that call (and
 * no other); its canceled answer ends the task canceled, the route unhurt. */
static void test_cancel_stops_the_call(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000);
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1], other[IDS_UUID_LEN + 1];
  insert_task_hooked(f, id, 0, 0);
  insert_task_hooked(f, other, 0, 0);
  engine_enqueue(e, id);
  engine_enqueue(e, other);
  assert_true(wait_started(&s, 2));
  task_state st;
  assert_int_equal(engine_cancel(e, id, "canceled", &st), STORE_CONFLICT);
  assert_int_equal(st, TASK_RUNNING);
  assert_int_equal(s.cancels, 1);
  pending_call *a = take_one(&s), *b = take_one(&s);
  pending_call *mine = strcmp(a->task_id, id) == 0 ? a : b;
  pending_call *theirs = mine == a ? b : a;
  assert_true(mine->cancel_asked);
  assert_false(theirs->cancel_asked);
  provider_outcome *o = provider_outcome_new(PROVIDER_FAILED);
  o->error_class = PROVIDER_ERR_CANCELED;
  snprintf(o->error_code, sizeof o->error_code, PROVIDER_CANCELED_CODE);
  complete_with(mine, o);
  complete(theirs, PROVIDER_OK);
  assert_true(wait_finished(&f->fin, 2));
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_CANCELED);
  assert_string_equal(t->error_code, "canceled");
  assert_int_equal(t->cost_charged_micros, 0);
  task_free(t);
  t = load(f, other);
  assert_int_equal(t->state, TASK_SUCCEEDED);
  task_free(t);
  assert_int_equal(started_count(&s), 2); /* no retry of the canceled call */
  assert_int_equal(f->st->ops->ledger_verify(f->st), STORE_OK);
  engine_destroy(e);
}

/* A cancel that comes right after a start committed, before the engine has
 * its job: the store answers it "running" and marks it, so the run must be
 * found and end canceled before its call goes out. To hit that instant every
 * time, the store's task_start_many is wrapped: once the real one has
 * committed, the cancel is made there, on the dispatcher's own thread (a
 * client's cancel comes on an HTTP thread; the moment is the same). Before
 * the fix the cancel found no job, the call went out and nothing ever ended
 * it (seen by bench/sse: a stream on a task canceled as it started never
 * ended). */
static const store_ops *race_real_ops;
static engine *race_engine;
static char race_id[IDS_UUID_LEN + 1];
static int race_rc;
static task_state race_state;

static int start_then_cancel(store *s, store_start *items, size_t n, int64_t now_ms) {
  int rc = race_real_ops->task_start_many(s, items, n, now_ms);
  for (size_t i = 0; rc == STORE_OK && i < n; i++)
    if (items[i].rc == STORE_OK && strcmp(items[i].task_id, race_id) == 0 && race_rc < 0)
      race_rc = engine_cancel(race_engine, race_id, "canceled", &race_state);
  return rc;
}

static void test_cancel_between_start_and_job(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000);
  insert_task_hooked(f, race_id, 0, 0);
  race_engine = e;
  race_rc = -1;
  race_real_ops = f->st->ops;
  store_ops wrapped = *f->st->ops;
  wrapped.task_start_many = start_then_cancel;
  f->st->ops = &wrapped;
  assert_int_equal(engine_start(e), 0);
  engine_enqueue(e, race_id);
  bool finished = wait_finished(&f->fin, 1);
  int calls = started_count(&s);
  engine_destroy(e);
  f->st->ops = race_real_ops;
  assert_int_equal(race_rc, STORE_CONFLICT); /* it had started */
  assert_int_equal(race_state, TASK_RUNNING);
  assert_true(finished);
  assert_int_equal(calls, 0); /* the call never went out */
  task *t = load(f, race_id);
  assert_int_equal(t->state, TASK_CANCELED);
  assert_string_equal(t->error_code, "canceled");
  task_free(t);
  assert_int_equal(f->st->ops->ledger_verify(f->st), STORE_OK);
}

/* A cancel while the provider's start() runs, before the provider knows the
 * call: asked then, the provider would find nothing to stop, and the call
 * would run its course (with the simulated provider's hour-long delay in
 * bench/sse, a stream that never ended). The engine must ask the provider
 * once start() has returned. Here start() itself makes the cancel, before it
 * registers the call. */
static engine *in_start_engine;
static int in_start_rc;

static int start_after_cancel(provider *p, const provider_request *req, provider_done_fn done,
                              void *ctx) {
  if (in_start_rc < 0) {
    task_state st;
    in_start_rc = engine_cancel(in_start_engine, req->task_id, "canceled", &st);
  }
  return scripted_start(p, req, done, ctx);
}

static const provider_ops cancel_in_start_ops = {"scripted", start_after_cancel,
                                                 scripted_destroy, scripted_cancel};

static int cancel_count(scripted *s) {
  pthread_mutex_lock(&s->lock);
  int n = s->cancels;
  pthread_mutex_unlock(&s->lock);
  return n;
}

static void test_cancel_while_start_runs(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  s.base.ops = &cancel_in_start_ops;
  engine *e = make_engine(f, &s, 4, 1000);
  in_start_engine = e;
  in_start_rc = -1;
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1];
  insert_task_hooked(f, id, 0, 0);
  engine_enqueue(e, id);
  assert_true(wait_started(&s, 1));
  assert_int_equal(in_start_rc, STORE_CONFLICT); /* running: the call was on its way */
  int64_t deadline = time_mono_ms() + 10000;
  while (cancel_count(&s) < 1 && time_mono_ms() < deadline) sched_yield();
  pending_call *c = take_one(&s);
  assert_non_null(c);
  assert_true(c->cancel_asked); /* asked once the provider knew the call */
  provider_outcome *o = provider_outcome_new(PROVIDER_FAILED);
  o->error_class = PROVIDER_ERR_CANCELED;
  snprintf(o->error_code, sizeof o->error_code, PROVIDER_CANCELED_CODE);
  complete_with(c, o);
  assert_true(wait_finished(&f->fin, 1));
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_CANCELED);
  assert_string_equal(t->error_code, "canceled");
  task_free(t);
  engine_destroy(e);
}

/* Polls the engine's gauges (with a deadline) until n runs wait for a retry. */
static bool wait_retrying(engine *e, uint64_t n) {
  engine_stats es;
  for (int i = 0; i < 1000; i++) {
    engine_get_stats(e, &es);
    if (es.retrying == n) return true;
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
  return false;
}

/* A stop while a run waits for its retry timer: the timer heap points into
 * the job, so it must be emptied before the job is freed (ASan saw the
 * reverse order), and the task stays running for the next start. */
static void test_stop_during_retry_wait(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 0);
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1];
  insert_task_hooked(f, id, 0, 0);
  engine_enqueue(e, id);
  assert_true(wait_started(&s, 1));
  complete_unavailable(take_one(&s), 30000);
  assert_true(wait_retrying(e, 1));
  engine_destroy(e);
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_RUNNING);
  task_free(t);
}

/* A run waiting 30 s for a retry is canceled at once, not after the wait. */
static void test_cancel_during_retry_wait(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000);
  assert_int_equal(engine_start(e), 0);
  char id[IDS_UUID_LEN + 1];
  insert_task_hooked(f, id, 0, 0);
  engine_enqueue(e, id);
  assert_true(wait_started(&s, 1));
  complete_unavailable(take_one(&s), 30000); /* deadline_ms 60 s lets it wait */
  assert_true(wait_retrying(e, 1));
  int64_t t0 = time_mono_ms();
  task_state st;
  assert_int_equal(engine_cancel(e, id, "canceled", &st), STORE_CONFLICT);
  assert_true(wait_finished(&f->fin, 1));
  assert_true(time_mono_ms() - t0 < 5000);
  task *t = load(f, id);
  assert_int_equal(t->state, TASK_CANCELED);
  task_free(t);
  assert_int_equal(started_count(&s), 1); /* no second attempt */
  engine_destroy(e);
}

/* Deadlines: a queued task past its deadline and a running one are
 * canceled with deadline_exceeded by the engine itself. */
/* A task with an output format: the provider hears it; a PNG that arrives is
 * converted (stored as WebP, named .webp); one that cannot be decoded is not
 * delivered, and its task fails "transcode_failed", charged nothing. */
static void test_output_format_conversion(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine_config ec = base_config(f, 4, 1000);
  ec.transcode_threads = 1;
  engine *e = engine_create(f->st, f->bl, router_of((scripted *[]){&s}, 1), NULL, &ec);
  assert_non_null(e);
  assert_int_equal(engine_start(e), 0);
  assert_int_equal(f->st->ops->ledger_post(f->st, f->account_id, LEDGER_TOPUP, 5000, "test",
                                           time_now_ms(), NULL),
                   STORE_OK);
  char good[IDS_UUID_LEN + 1], bad[IDS_UUID_LEN + 1];
  for (int i = 0; i < 2; i++) {
    task t = {0};
    assert_true(ids_uuid7(t.id));
    t.account_id = f->account_id;
    t.state = TASK_QUEUED;
    t.model = "nano-banana";
    t.prompt = "p";
    t.aspect_ratio = "auto";
    t.resolution = "1K";
    t.quantity = 1;
    t.output_format = "webp";
    t.output_compression = 30;
    t.price_unit_micros = t.cost_held_micros = 1000;
    t.created_ms = time_now_ms();
    assert_int_equal(f->st->ops->task_insert(f->st, &t), STORE_OK);
    memcpy(i == 0 ? good : bad, t.id, sizeof t.id);
    engine_enqueue(e, t.id);
  }
  assert_true(wait_started(&s, 2));
  pending_call *c;
  while ((c = take_one(&s))) {
    assert_string_equal(c->output_format, "webp");
    assert_int_equal(c->output_compression, 30);
    if (strcmp(c->task_id, bad) == 0) {
      complete(c, PROVIDER_OK); /* tiny_png: a header and nothing to decode */
      continue;
    }
    provider_outcome *o = provider_outcome_new(PROVIDER_OK);
    o->images = calloc(1, sizeof *o->images);
    assert_true(simpng_render("convert me", 40, 24, &o->images[0].data, &o->images[0].len));
    snprintf(o->images[0].mime, sizeof o->images[0].mime, "image/png");
    o->n_images = 1;
    complete_with(c, o);
  }
  assert_true(wait_finished(&f->fin, 2));
  task *t = load(f, good);
  assert_int_equal(t->state, TASK_SUCCEEDED);
  assert_int_equal(t->n_results, 1);
  assert_string_equal(t->results[0].mime, "image/webp");
  assert_int_equal(t->results[0].width, 40);
  assert_int_equal(t->results[0].height, 24);
  size_t klen = strlen(t->results[0].blob_key);
  assert_string_equal(t->results[0].blob_key + klen - 5, ".webp");
  uint8_t *data;
  size_t len;
  assert_int_equal(f->bl->ops->read(f->bl, t->results[0].blob_key, 1 << 20, &data, &len),
                   BLOB_OK);
  assert_int_equal(imagefmt_detect(data, len), IMAGEFMT_WEBP);
  assert_int_equal(t->results[0].bytes, (int64_t)len);
  free(data);
  assert_int_equal(t->cost_charged_micros, 1000);
  task_free(t);
  t = load(f, bad);
  assert_int_equal(t->state, TASK_FAILED);
  assert_string_equal(t->error_code, "transcode_failed");
  assert_non_null(strstr(t->error_message, "could not be converted to webp"));
  assert_int_equal(t->n_results, 0);
  assert_int_equal(t->cost_charged_micros, 0);
  assert_int_equal(t->n_upstream_attempts, 1); /* the call that brought it, recorded */
  assert_string_equal(t->upstream_attempts[0].error_class, "none");
  task_free(t);
  engine_destroy(e);
}

static void test_deadline_cancels(void **state) {
  fixture *f = *state;
  scripted s;
  scripted_init(&s);
  engine *e = make_engine(f, &s, 4, 1000);
  char queued[IDS_UUID_LEN + 1], running[IDS_UUID_LEN + 1];
  insert_task_hooked(f, running, 0, time_now_ms() + 300);
  assert_int_equal(engine_start(e), 0); /* recovery enqueues it */
  assert_true(wait_started(&s, 1));
  insert_task_hooked(f, queued, 0, time_now_ms() - 1); /* never enqueued here */
  assert_true(wait_cancel_marked(f, running));
  complete(take_one(&s), PROVIDER_OK); /* its answer comes: canceled all the same */
  assert_true(wait_finished(&f->fin, 2));
  task *t = load(f, queued);
  assert_int_equal(t->state, TASK_CANCELED);
  assert_string_equal(t->error_code, "deadline_exceeded");
  task_free(t);
  t = load(f, running);
  assert_int_equal(t->state, TASK_CANCELED);
  assert_string_equal(t->error_code, "deadline_exceeded");
  task_free(t);
  engine_destroy(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_runs_tasks_to_success, setup, teardown),
      cmocka_unit_test_setup_teardown(test_output_format_conversion, setup, teardown),
      cmocka_unit_test_setup_teardown(test_prices_each_delivered_image, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mask_and_background_reach_the_provider, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_finish_survives_brief_store_failure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stranded_queued_task_is_swept, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lost_run_is_requeued, setup, teardown),
      cmocka_unit_test_setup_teardown(test_respects_max_in_flight, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failed_and_moderated, setup, teardown),
      cmocka_unit_test_setup_teardown(test_duplicate_enqueue_runs_once, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_leaves_running_and_restart_reruns, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_drain_waits_for_running, setup, teardown),
      cmocka_unit_test_setup_teardown(test_retry_fails_over_to_another_route, setup, teardown),
      cmocka_unit_test_setup_teardown(test_attempts_are_bounded, setup, teardown),
      cmocka_unit_test_setup_teardown(test_retry_after_beyond_deadline_fails_now, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_queued, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_running, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_stops_the_call, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_between_start_and_job, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_while_start_runs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cancel_during_retry_wait, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_during_retry_wait, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deadline_cancels, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
