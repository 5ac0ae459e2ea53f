/* engine.c - dispatcher, provider callbacks, completers. See engine.h. */
#include "core/engine.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/ids.h"
#include "util/imagefmt.h"
#include "util/log.h"
#include "util/timeutil.h"

/* One task waiting in memory to be started. */
typedef struct queued_id {
  char id[IDS_UUID_LEN + 1];
  struct queued_id *next;
} queued_id;

/* One started provider call, from start() until its outcome is stored. */
typedef struct job {
  engine *e;
  char task_id[IDS_UUID_LEN + 1];
  int attempt;
  int64_t started_mono_ms;
  provider_outcome *outcome;  /* set by the provider's callback */
  struct job *prev, *next;    /* in-flight list */
  struct job *done_next;      /* completion queue */
} job;

struct engine {
  store *st;
  blob *bl;
  provider *prov;
  engine_config cfg;

  pthread_mutex_t lock;
  pthread_cond_t dispatch_cond; /* queue grew, a slot freed, or stopping */
  pthread_cond_t drain_cond;    /* in_flight dropped */
  pthread_cond_t done_cond;     /* completion queue grew, or completers must exit */
  queued_id *q_head, *q_tail;
  size_t q_len;
  job *running;                 /* in-flight list head */
  size_t in_flight;
  job *done_head, *done_tail;
  uint64_t finished;
  bool stopping;                /* no more dispatching */
  bool completers_exit;         /* completers leave once the completion queue is empty */
  bool started, stopped;

  pthread_t dispatcher;
  pthread_t *completers;
  int n_completers;
};

static void cond_init_monotonic(pthread_cond_t *c) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(c, &attr);
  pthread_condattr_destroy(&attr);
}

static void deadline_from_now(struct timespec *ts, int64_t ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (ms % 1000) * 1000000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

engine *engine_create(store *st, blob *bl, provider *prov, const engine_config *cfg) {
  engine *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->st = st;
  e->bl = bl;
  e->prov = prov;
  e->cfg = *cfg;
  if (e->cfg.max_in_flight <= 0) e->cfg.max_in_flight = 1;
  if (e->cfg.completer_threads <= 0) e->cfg.completer_threads = 2;
  pthread_mutex_init(&e->lock, NULL);
  cond_init_monotonic(&e->dispatch_cond);
  cond_init_monotonic(&e->drain_cond);
  cond_init_monotonic(&e->done_cond);
  return e;
}

void engine_enqueue(engine *e, const char *task_id) {
  queued_id *q = malloc(sizeof *q);
  if (!q) {
    /* The task is durable as queued; the next start picks it up. */
    LOG_ERROR("engine_enqueue_failed", "task=%s reason=out_of_memory", task_id);
    return;
  }
  snprintf(q->id, sizeof q->id, "%s", task_id);
  q->next = NULL;
  pthread_mutex_lock(&e->lock);
  if (e->q_tail)
    e->q_tail->next = q;
  else
    e->q_head = q;
  e->q_tail = q;
  e->q_len++;
  pthread_cond_signal(&e->dispatch_cond);
  pthread_mutex_unlock(&e->lock);
}

/* ---- finishing ---------------------------------------------------------- */

static void finish_task(engine *e, const char *task_id, int attempt, task_state state,
                        const char *code, const char *message, const task_result *results,
                        size_t n_results, int64_t dur_ms) {
  int rc = e->st->ops->task_finish(e->st, task_id, attempt, state, code, message, results,
                                   n_results, time_now_ms());
  char qmsg[300];
  if (rc == STORE_OK) {
    LOG_INFO("task_finished", "task=%s state=%s attempt=%d images=%zu dur_ms=%lld code=%s",
             task_id, task_state_name(state), attempt, n_results, (long long)dur_ms,
             code ? code : "-");
    if (e->cfg.on_finished) e->cfg.on_finished(e->cfg.on_finished_ctx, task_id, state);
    return;
  }
  if (rc == STORE_CONFLICT) {
    LOG_WARN("task_finish_conflict", "task=%s attempt=%d", task_id, attempt);
  } else {
    /* The task stays running in the store; a restart re-runs it. */
    LOG_ERROR("task_finish_failed", "task=%s attempt=%d message=%s", task_id, attempt,
              log_quote(message, qmsg, sizeof qmsg));
  }
  for (size_t i = 0; i < n_results; i++) e->bl->ops->remove(e->bl, results[i].blob_key);
}

/* Writes the images of a successful outcome to the blob store and fills
 * results. Returns the number written, or -1 after removing what was written. */
static int store_images(engine *e, const job *j, const provider_outcome *o,
                        task_result *results) {
  int64_t now = time_now_ms();
  for (size_t i = 0; i < o->n_images; i++) {
    const provider_image *img = &o->images[i];
    task_result *r = &results[i];
    imagefmt fmt = imagefmt_detect(img->data, img->len);
    int w = img->width, h = img->height;
    if (fmt == IMAGEFMT_UNKNOWN) goto fail;
    if (w <= 0 || h <= 0) imagefmt_dimensions(img->data, img->len, &w, &h);
    char token[33], key[128], digest[65];
    if (!ids_random_hex(token, 16)) goto fail;
    snprintf(key, sizeof key, "results/%s/%d-%zu.%s", j->task_id, j->attempt, i,
             imagefmt_ext(fmt));
    ids_sha256_hex(img->data, img->len, digest);
    digest[32] = '\0';
    if (e->bl->ops->put(e->bl, key, img->data, img->len, imagefmt_mime(fmt)) != BLOB_OK)
      goto fail;
    r->index = (int)i;
    r->blob_key = strdup(key);
    r->token = strdup(token);
    r->mime = strdup(imagefmt_mime(fmt));
    r->etag = strdup(digest);
    r->width = w;
    r->height = h;
    r->bytes = (int64_t)img->len;
    r->expires_ms = now + e->cfg.retention_ms;
    if (!r->blob_key || !r->token || !r->mime || !r->etag) {
      e->bl->ops->remove(e->bl, key);
      task_result_clear(r);
      goto fail;
    }
    continue;
  fail:
    for (size_t k = 0; k < i; k++) {
      e->bl->ops->remove(e->bl, results[k].blob_key);
      task_result_clear(&results[k]);
    }
    return -1;
  }
  return (int)o->n_images;
}

static void complete_job(engine *e, job *j) {
  provider_outcome *o = j->outcome;
  int64_t dur = time_mono_ms() - j->started_mono_ms;
  if (o->status == PROVIDER_MODERATED) {
    finish_task(e, j->task_id, j->attempt, TASK_MODERATED,
                o->error_code[0] ? o->error_code : "content_moderated", o->error_message, NULL,
                0, dur);
  } else if (o->status == PROVIDER_FAILED) {
    finish_task(e, j->task_id, j->attempt, TASK_FAILED,
                o->error_code[0] ? o->error_code : "upstream_error", o->error_message, NULL, 0,
                dur);
  } else if (o->n_images == 0) {
    finish_task(e, j->task_id, j->attempt, TASK_FAILED, "no_image",
                "the provider answered without an image", NULL, 0, dur);
  } else {
    task_result *results = calloc(o->n_images, sizeof *results);
    int n = results ? store_images(e, j, o, results) : -1;
    if (n < 0) {
      finish_task(e, j->task_id, j->attempt, TASK_FAILED, "storage_error",
                  "the result image could not be stored", NULL, 0, dur);
    } else {
      finish_task(e, j->task_id, j->attempt, TASK_SUCCEEDED, NULL, NULL, results, (size_t)n,
                  dur);
      for (int i = 0; i < n; i++) task_result_clear(&results[i]);
    }
    free(results);
  }
}

static void unlink_running(engine *e, job *j) {
  if (j->prev)
    j->prev->next = j->next;
  else
    e->running = j->next;
  if (j->next) j->next->prev = j->prev;
  j->prev = j->next = NULL;
}

/* Provider threads land here: hand the outcome to a completer and return at
 * once, so a provider's thread never waits on disk or the database. */
static void on_provider_done(void *ctx, provider_outcome *outcome) {
  job *j = ctx;
  engine *e = j->e;
  j->outcome = outcome;
  pthread_mutex_lock(&e->lock);
  j->done_next = NULL;
  if (e->done_tail)
    e->done_tail->done_next = j;
  else
    e->done_head = j;
  e->done_tail = j;
  pthread_cond_signal(&e->done_cond);
  pthread_mutex_unlock(&e->lock);
}

static void *completer_main(void *arg) {
  engine *e = arg;
  pthread_mutex_lock(&e->lock);
  for (;;) {
    while (!e->done_head && !e->completers_exit) pthread_cond_wait(&e->done_cond, &e->lock);
    job *j = e->done_head;
    if (!j) break; /* exit requested and nothing left */
    e->done_head = j->done_next;
    if (!e->done_head) e->done_tail = NULL;
    pthread_mutex_unlock(&e->lock);

    complete_job(e, j);
    provider_outcome_free(j->outcome);

    pthread_mutex_lock(&e->lock);
    unlink_running(e, j);
    e->in_flight--;
    e->finished++;
    pthread_cond_signal(&e->dispatch_cond);
    pthread_cond_broadcast(&e->drain_cond);
    free(j);
  }
  pthread_mutex_unlock(&e->lock);
  return NULL;
}

/* ---- starting ----------------------------------------------------------- */

typedef struct loaded_inputs {
  provider_input *inputs;
  uint8_t **data;
  size_t n;
} loaded_inputs;

static void loaded_inputs_free(loaded_inputs *li) {
  for (size_t i = 0; i < li->n; i++) free(li->data[i]);
  free(li->data);
  free(li->inputs);
}

static int load_inputs(engine *e, const task *t, loaded_inputs *li) {
  memset(li, 0, sizeof *li);
  if (t->n_inputs == 0) return 0;
  li->inputs = calloc(t->n_inputs, sizeof *li->inputs);
  li->data = calloc(t->n_inputs, sizeof *li->data);
  if (!li->inputs || !li->data) return -1;
  for (size_t i = 0; i < t->n_inputs; i++) {
    const task_input *in = &t->inputs[i];
    if (!in->blob_key) return -1; /* URL inputs arrive with the fetcher */
    size_t len;
    if (e->bl->ops->read(e->bl, in->blob_key, e->cfg.max_input_bytes, &li->data[i], &len) !=
        BLOB_OK)
      return -1;
    li->n = i + 1;
    li->inputs[i].data = li->data[i];
    li->inputs[i].len = len;
    li->inputs[i].mime = in->mime ? in->mime : "application/octet-stream";
  }
  return 0;
}

/* Starts one task. Returns true when a provider call is now in flight (its
 * slot is released by the completer), false when the slot is free again. */
static bool start_task(engine *e, const char *task_id) {
  int attempt = 0;
  int rc = e->st->ops->task_start(e->st, task_id, e->prov->name, time_now_ms(), &attempt);
  if (rc == STORE_CONFLICT || rc == STORE_NOT_FOUND) return false; /* started or gone already */
  if (rc != STORE_OK) {
    LOG_ERROR("task_start_failed", "task=%s", task_id);
    return false;
  }
  task *t = NULL;
  loaded_inputs li = {0};
  job *j = calloc(1, sizeof *j);
  if (!j || e->st->ops->task_get(e->st, task_id, &t) != STORE_OK) {
    /* Leaves the task running: the next start re-runs it. */
    LOG_ERROR("task_load_failed", "task=%s attempt=%d", task_id, attempt);
    free(j);
    return false;
  }
  j->e = e;
  snprintf(j->task_id, sizeof j->task_id, "%s", task_id);
  j->attempt = attempt;
  j->started_mono_ms = time_mono_ms();

  if (load_inputs(e, t, &li) < 0) {
    finish_task(e, task_id, attempt, TASK_FAILED, "input_unavailable",
                "a reference image could not be read back", NULL, 0, 0);
    loaded_inputs_free(&li);
    task_free(t);
    free(j);
    return false;
  }
  provider_request req = {
      .task_id = t->id,
      .model = t->model,
      .upstream_model = t->model,
      .prompt = t->prompt,
      .aspect_ratio = t->aspect_ratio,
      .resolution = t->resolution,
      .quantity = t->quantity > 0 ? t->quantity : 1,
      .inputs = li.inputs,
      .n_inputs = li.n,
  };
  LOG_INFO("task_started", "task=%s attempt=%d provider=%s model=%s", task_id, attempt,
           e->prov->name, t->model);

  pthread_mutex_lock(&e->lock);
  j->next = e->running;
  if (e->running) e->running->prev = j;
  e->running = j;
  pthread_mutex_unlock(&e->lock);

  bool ok = e->prov->ops->start(e->prov, &req, on_provider_done, j) == 0;
  loaded_inputs_free(&li);
  task_free(t);
  if (!ok) {
    pthread_mutex_lock(&e->lock);
    unlink_running(e, j);
    pthread_mutex_unlock(&e->lock);
    finish_task(e, task_id, attempt, TASK_FAILED, "provider_unavailable",
                "the provider could not start the call", NULL, 0, 0);
    free(j);
  }
  return ok;
}

static void *dispatcher_main(void *arg) {
  engine *e = arg;
  pthread_mutex_lock(&e->lock);
  while (!e->stopping) {
    if (!e->q_head || e->in_flight >= (size_t)e->cfg.max_in_flight) {
      pthread_cond_wait(&e->dispatch_cond, &e->lock);
      continue;
    }
    queued_id *q = e->q_head;
    e->q_head = q->next;
    if (!e->q_head) e->q_tail = NULL;
    e->q_len--;
    e->in_flight++; /* reserve the slot before the lock is dropped */
    pthread_mutex_unlock(&e->lock);

    bool running = start_task(e, q->id);
    free(q);

    pthread_mutex_lock(&e->lock);
    if (!running) {
      e->in_flight--;
      pthread_cond_broadcast(&e->drain_cond);
    }
  }
  pthread_mutex_unlock(&e->lock);
  return NULL;
}

/* ---- lifecycle ---------------------------------------------------------- */

static int recover(engine *e) {
  int64_t requeued = 0;
  if (e->st->ops->task_requeue_running(e->st, &requeued) != STORE_OK) return -1;
  char(*ids)[IDS_UUID_LEN + 1] = NULL;
  size_t n = 0;
  if (e->st->ops->task_list_queued(e->st, (size_t)-1, &ids, &n) != STORE_OK) return -1;
  for (size_t i = 0; i < n; i++) engine_enqueue(e, ids[i]);
  free(ids);
  LOG_INFO("engine_recovered", "requeued_running=%lld queued=%zu", (long long)requeued, n);
  return 0;
}

int engine_start(engine *e) {
  if (e->started) return 0;
  if (recover(e) < 0) {
    LOG_ERROR("engine_recovery_failed", NULL);
    return -1;
  }
  e->completers = calloc((size_t)e->cfg.completer_threads, sizeof *e->completers);
  if (!e->completers) return -1;
  for (int i = 0; i < e->cfg.completer_threads; i++) {
    if (pthread_create(&e->completers[i], NULL, completer_main, e) != 0) {
      engine_stop(e);
      return -1;
    }
    e->n_completers++;
  }
  if (pthread_create(&e->dispatcher, NULL, dispatcher_main, e) != 0) {
    engine_stop(e);
    return -1;
  }
  e->started = true;
  return 0;
}

void engine_stop(engine *e) {
  pthread_mutex_lock(&e->lock);
  if (e->stopped) {
    pthread_mutex_unlock(&e->lock);
    return;
  }
  e->stopped = true;
  e->stopping = true;
  bool had_dispatcher = e->started;
  pthread_cond_broadcast(&e->dispatch_cond);
  pthread_mutex_unlock(&e->lock);
  if (had_dispatcher) pthread_join(e->dispatcher, NULL);

  /* Let running calls finish for a while; what does not finish stays
   * running in the store and is re-run after the next start. */
  struct timespec deadline;
  deadline_from_now(&deadline, e->cfg.drain_timeout_ms);
  pthread_mutex_lock(&e->lock);
  while (e->in_flight > 0) {
    if (pthread_cond_timedwait(&e->drain_cond, &e->lock, &deadline) != 0) break;
  }
  pthread_mutex_unlock(&e->lock);

  /* After destroy no callback can arrive; completions already queued are
   * still stored by the completers before they exit. */
  if (e->prov) {
    e->prov->ops->destroy(e->prov);
    e->prov = NULL;
  }
  pthread_mutex_lock(&e->lock);
  e->completers_exit = true;
  pthread_cond_broadcast(&e->done_cond);
  pthread_mutex_unlock(&e->lock);
  for (int i = 0; i < e->n_completers; i++) pthread_join(e->completers[i], NULL);
  e->n_completers = 0;

  pthread_mutex_lock(&e->lock);
  size_t abandoned = e->in_flight;
  while (e->running) {
    job *j = e->running;
    unlink_running(e, j);
    free(j);
  }
  e->in_flight = 0;
  pthread_mutex_unlock(&e->lock);
  LOG_INFO("engine_stopped", "finished=%llu left_running=%zu left_queued=%zu",
           (unsigned long long)e->finished, abandoned, e->q_len);
}

void engine_destroy(engine *e) {
  if (!e) return;
  engine_stop(e);
  while (e->q_head) {
    queued_id *q = e->q_head;
    e->q_head = q->next;
    free(q);
  }
  free(e->completers);
  pthread_cond_destroy(&e->dispatch_cond);
  pthread_cond_destroy(&e->drain_cond);
  pthread_cond_destroy(&e->done_cond);
  pthread_mutex_destroy(&e->lock);
  free(e);
}

void engine_get_stats(engine *e, engine_stats *out) {
  pthread_mutex_lock(&e->lock);
  out->queued = e->q_len;
  out->in_flight = e->in_flight;
  out->finished = e->finished;
  out->stopping = e->stopping;
  pthread_mutex_unlock(&e->lock);
}
