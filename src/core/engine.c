/* engine.c - dispatcher, provider callbacks, completers. See engine.h. */
#include "core/engine.h"

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pricing.h"
#include "core/transcode.h"
#include "core/webhooks.h"
#include "util/dheap.h"
#include "util/ids.h"
#include "util/imagefmt.h"
#include "util/log.h"
#include "util/timeutil.h"
#include "util/utf8.h"
#include "util/workpool.h"

/* One task waiting in memory to be started. */
typedef struct queued_id {
  char id[IDS_UUID_LEN + 1];
  struct queued_id *next;
} queued_id;

#define ENGINE_MAX_TRIED 8
/* How often the dispatcher looks for tasks past their deadline: a deadline
 * is honoured to within about this much. */
#define ENGINE_DEADLINE_SWEEP_MS 1000

struct job;

/* One reference image being downloaded for a job. */
typedef struct download_slot {
  struct job *j;
  size_t index; /* into the task's inputs */
} download_slot;

/* The downloads of a job's URL inputs, all in flight at once on the curl loop. */
typedef struct downloads {
  download_slot *slots; /* one per task input */
  fetch_result *res;    /* one per task input; filled for URL inputs */
  size_t pending;       /* downloads not yet called back, plus one while starting */
  int64_t started_mono;
} downloads;

/* One running task: from its start in the store until it is finished, across
 * every upstream attempt of this run. */
typedef struct job {
  engine *e;
  char task_id[IDS_UUID_LEN + 1];
  int run;                    /* the store's attempts counter for this run */
  task *t;                    /* the task as loaded at start (model, prompt, inputs...) */
  int n_attempts;             /* upstream attempts made in this run */
  router_route *tried[ENGINE_MAX_TRIED];
  size_t n_tried;
  router_route *route;        /* the route of the attempt in flight */
  int64_t run_started_mono;
  int64_t attempt_started_mono, attempt_started_ms;
  dheap_node timer;           /* first retry due (e->timers): when its next attempt may go */
  /* Where the attempt in flight writes large images as they arrive (its
   * provider copies it at start). */
  provider_spool spool;
  provider_outcome *outcome;  /* set by the provider's callback */
  downloads *dl;              /* set while reference images download */
  bool inputs_ready;          /* this run found or downloaded its URL inputs */
  /* A cancel came (engine_cancel, or the store's mark at start): the run
   * ends canceled at its next step; the call in flight is aborted. Under
   * e->lock. */
  bool cancel;
  char cancel_code[24];
  /* A provider call is out for this job (from just before start() until its
   * done reaches us): only then may engine_cancel ask the provider to stop
   * it, since ctx (the job) names the call. Under e->lock. */
  bool calling;
  /* run_attempt is inside the provider's start(): the call may not be known
   * to the provider yet, and the job is still run_attempt's. A cancel or a
   * done() meanwhile leaves its work for run_attempt to do once start() has
   * returned (cancel_in_start, done_in_start). Under e->lock. */
  bool in_start, cancel_in_start, done_in_start;
  /* Converting the outcome's images to the task's output_format, on the
   * engine's transcode pool: the item it is queued as, the attempt that
   * brought the images (recorded when the task finishes; its strings are
   * static or the router's), and once back, the first conversion that
   * failed, for the task's error when none succeeded. */
  workpool_item convert;
  task_attempt convert_attempt;
  bool converted;
  char convert_error[256];
  struct job *prev, *next;    /* running list */
  struct job *done_next;      /* completion queue */
} job;

struct engine {
  store *st;
  blob *bl;
  router *rt;
  curlloop *loop;
  engine_config cfg;

  pthread_mutex_t lock;
  pthread_cond_t dispatch_cond; /* queue grew, a slot freed, a retry was scheduled, or stopping */
  pthread_cond_t drain_cond;    /* in_flight dropped */
  pthread_cond_t done_cond;     /* completion queue grew, or completers must exit */
  queued_id *q_head, *q_tail;
  size_t q_len;
  job *running;                 /* every job, whatever it waits for */
  size_t in_flight;             /* jobs, plus slots reserved by the dispatcher */
  dheap timers;                 /* jobs waiting for a retry's time (job.timer) */
  job *done_head, *done_tail;
  uint64_t finished;             /* tasks whose final state this process committed */
  unsigned rng;
  bool stopping;                /* no more dispatching */
  bool completers_exit;         /* completers leave once the completion queue is empty */
  bool started, stopped;
  int64_t next_sweep_mono;      /* when the dispatcher next looks for stranded queued tasks */
  int64_t next_deadline_mono;   /* when it next looks for tasks past their deadline */

  pthread_t dispatcher;
  pthread_t *completers;
  int n_completers;
  /* Converts images to a task's output_format; NULL before start and once
   * engine_stop has taken it down (under lock). */
  workpool *transcoder;
};

static void cond_init_monotonic(pthread_cond_t *c) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(c, &attr);
  pthread_condattr_destroy(&attr);
}

static void mono_deadline(struct timespec *ts, int64_t mono_ms) {
  ts->tv_sec = mono_ms / 1000;
  ts->tv_nsec = (mono_ms % 1000) * 1000000;
}

engine *engine_create(store *st, blob *bl, router *rt, curlloop *loop, const engine_config *cfg) {
  engine *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->st = st;
  e->bl = bl;
  e->rt = rt;
  e->loop = loop;
  e->cfg = *cfg;
  if (e->cfg.max_in_flight <= 0) e->cfg.max_in_flight = 1;
  if (e->cfg.completer_threads <= 0) e->cfg.completer_threads = 2;
  if (e->cfg.max_attempts <= 0) e->cfg.max_attempts = 3;
  if (e->cfg.deadline_ms <= 0) e->cfg.deadline_ms = 300000;
  if (e->cfg.backoff_base_ms <= 0) e->cfg.backoff_base_ms = 500;
  if (e->cfg.backoff_max_ms <= 0) e->cfg.backoff_max_ms = 15000;
  if (e->cfg.sweep_interval_ms <= 0) e->cfg.sweep_interval_ms = 30000;
  if (e->cfg.transcode_threads <= 0) e->cfg.transcode_threads = 2;
  e->rng = (unsigned)time_now_ms();
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

static job *job_of_timer(dheap_node *n) {
  return (job *)(void *)((char *)n - offsetof(job, timer));
}

/* ---- finishing ---------------------------------------------------------- */

static void downloads_free(downloads *d, size_t n) {
  if (!d) return;
  for (size_t i = 0; i < n; i++) free(d->res[i].data);
  free(d->res);
  free(d->slots);
  free(d);
}

static void job_free(job *j) {
  provider_outcome_free(j->outcome);
  downloads_free(j->dl, j->t ? j->t->n_inputs : 0);
  task_free(j->t);
  free(j);
}

static void unlink_running(engine *e, job *j) {
  if (j->prev)
    j->prev->next = j->next;
  else
    e->running = j->next;
  if (j->next) j->next->prev = j->prev;
  j->prev = j->next = NULL;
}

/* The job's slot is free again: the dispatcher may start another task. */
static void job_release(engine *e, job *j) {
  pthread_mutex_lock(&e->lock);
  unlink_running(e, j);
  e->in_flight--;
  pthread_cond_signal(&e->dispatch_cond);
  pthread_cond_broadcast(&e->drain_cond);
  pthread_mutex_unlock(&e->lock);
  job_free(j);
}

/* A change of task_id was committed: its watchers (and, when outbox, the
 * webhook dispatcher) hear of it. */
static void changed(engine *e, const char *task_id, bool outbox) {
  if (e->cfg.on_change) e->cfg.on_change(e->cfg.on_change_ctx, task_id, outbox);
}

/* How often, and after what pauses, a failed final write is tried again
 * before the task is left running for the next start to re-run. A store that
 * fails briefly (disk full for a moment, a lock held too long) must not cost
 * a finished image. A broken store (store_ops.health) is not tried again: it
 * refuses every write until a restart, so the task is left as it is at once
 * (running, its hold in place, nothing captured) for the restart to re-run. */
static const int finish_retry_ms[] = {50, 200, 1000, 3000};

/* Returns true when the task is final in the store (this run finished it, or
 * another had); false when the write failed and the task stays running. */
static bool finish_task(engine *e, const task *t, const char *task_id, int run, task_state state,
                        const char *code, const char *message, const task_result *results,
                        size_t n_results, int64_t charge, int64_t dur_ms,
                        const task_attempt *attempt) {
  int rc;
  store_outbox ob;
  char ob_id[WEBHOOKS_ID_SIZE];
  bool has_ob = webhooks_outbox_for(t, state, &ob, ob_id);
  for (size_t i = 0;; i++) {
    rc = e->st->ops->task_finish(e->st, task_id, run, state, code, message, results, n_results,
                                 charge, time_now_ms(), attempt, has_ob ? &ob : NULL);
    if (rc == STORE_OK || rc == STORE_CONFLICT || rc == STORE_NOT_FOUND ||
        i == sizeof finish_retry_ms / sizeof finish_retry_ms[0] ||
        e->st->ops->health(e->st, NULL, 0) != STORE_OK)
      break;
    LOG_WARN("task_finish_retry", "task=%s attempt=%d after_ms=%d", task_id, run,
             finish_retry_ms[i]);
    struct timespec pause = {.tv_sec = finish_retry_ms[i] / 1000,
                             .tv_nsec = (long)(finish_retry_ms[i] % 1000) * 1000000};
    nanosleep(&pause, NULL); /* a completer thread; nothing else waits on it */
  }
  char qmsg[300];
  if (rc == STORE_OK) {
    LOG_INFO("task_finished",
             "task=%s state=%s attempt=%d images=%zu charged_micros=%lld dur_ms=%lld code=%s",
             task_id, task_state_name(state), run, n_results, (long long)charge,
             (long long)dur_ms, code ? code : "-");
    pthread_mutex_lock(&e->lock);
    e->finished++;
    pthread_mutex_unlock(&e->lock);
    changed(e, task_id, has_ob);
    return true;
  }
  if (rc == STORE_CONFLICT) {
    LOG_WARN("task_finish_conflict", "task=%s attempt=%d", task_id, run);
  } else {
    /* The task stays running in the store; a restart re-runs it. */
    LOG_ERROR("task_finish_failed", "task=%s attempt=%d message=%s", task_id, run,
              log_quote(message, qmsg, sizeof qmsg));
  }
  for (size_t i = 0; i < n_results; i++) e->bl->ops->remove(e->bl, results[i].blob_key);
  return rc == STORE_CONFLICT;
}

/* Where input i of t is in the blob store: the key it was stored under, or
 * for a URL input the key its download is kept under for the task's
 * attempts and re-runs (written into key). */
static const char *input_key(const task *t, size_t i, char *key, size_t size) {
  if (t->inputs[i].blob_key) return t->inputs[i].blob_key;
  task_url_input_key(t->id, i, key, size);
  return key;
}

/* A final task needs its reference images no more: no run will read them.
 * Best effort: what a crash leaves behind is an orphan, never a dangling row. */
static void remove_inputs(engine *e, const task *t) {
  for (size_t i = 0; t && i < t->n_inputs; i++) {
    char key[128];
    e->bl->ops->remove(e->bl, input_key(t, i, key, sizeof key));
  }
  if (t && t->mask && t->mask->blob_key) e->bl->ops->remove(e->bl, t->mask->blob_key);
}

/* Whether a cancel came for the job, and with which code (under e->lock). */
static bool job_canceled(engine *e, job *j, char code[24]) {
  pthread_mutex_lock(&e->lock);
  bool c = j->cancel;
  if (c) memcpy(code, j->cancel_code, 24);
  pthread_mutex_unlock(&e->lock);
  return c;
}

/* Finishes the job's task without images and frees the job. attempt is the
 * last upstream attempt, recorded in the same transaction (NULL: none ended). */
static void finish_job(engine *e, job *j, task_state state, const char *code,
                       const char *message, const task_attempt *attempt) {
  if (finish_task(e, j->t, j->task_id, j->run, state, code, message, NULL, 0, 0,
                  time_mono_ms() - j->run_started_mono, attempt))
    remove_inputs(e, j->t);
  job_release(e, j);
}

/* The format of an image: by its bytes in memory, or, staged, by the head
 * its provider read them from (provider_image.mime). */
static imagefmt image_format(const provider_image *img) {
  return img->staged ? imagefmt_from_mime(img->mime) : imagefmt_detect(img->data, img->len);
}

/* Writes the images of a successful outcome to the blob store and fills
 * results: an image in memory is put, a staged one (written as it arrived)
 * committed where it was written. Returns the number written, or -1 after
 * removing what was written (staged writes not reached are left to
 * provider_outcome_free, which aborts them). */
static int store_images(engine *e, const job *j, provider_outcome *o, task_result *results) {
  int64_t now = time_now_ms();
  for (size_t i = 0; i < o->n_images; i++) {
    provider_image *img = &o->images[i];
    task_result *r = &results[i];
    imagefmt fmt = image_format(img);
    int w = img->width, h = img->height;
    if (fmt == IMAGEFMT_UNKNOWN) goto fail;
    if (!img->staged && (w <= 0 || h <= 0)) imagefmt_dimensions(img->data, img->len, &w, &h);
    /* The ETag is random too: an image never changes under its URL, so a
     * validator unique to the object is as strong as a hash of its bytes,
     * and costs nothing per byte (hashing was a fifth of a large image's
     * CPU). */
    char token[33], key[BLOB_KEY_MAX + 1], etag[33];
    if (!ids_random_hex(token, 16) || !ids_random_hex(etag, 16)) goto fail;
    if (img->staged) {
      blob_stream_info info;
      blob_stream *staged = img->staged;
      img->staged = NULL; /* committed or not, it is gone */
      snprintf(key, sizeof key, "%s", img->staged_key);
      if (blob_stream_commit(staged, &info) != BLOB_OK) {
        e->bl->ops->remove(e->bl, key); /* a commit may fail after its rename */
        goto fail;
      }
      if (info.size != img->len) { /* the provider's count and the store's disagree */
        e->bl->ops->remove(e->bl, key);
        goto fail;
      }
    } else {
      snprintf(key, sizeof key, TASK_BLOB_RESULTS "%s/%d-%zu.%s", j->task_id, j->run, i,
               imagefmt_ext(fmt));
      if (e->bl->ops->put(e->bl, key, img->data, img->len, imagefmt_mime(fmt)) != BLOB_OK)
        goto fail;
    }
    r->index = (int)i;
    r->blob_key = strdup(key);
    r->token = strdup(token);
    r->mime = strdup(imagefmt_mime(fmt));
    r->etag = strdup(etag);
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

/* Prices each delivered image (pricing_image: its own pixels, the quality
 * the upstream reported) into its result, with the quality and background
 * the upstream reported, and returns what the task is charged for them all;
 * -1 (nothing priced) when memory runs out. */
static int64_t price_results(engine *e, const task *t, const provider_outcome *o,
                             task_result *results, size_t n) {
  int64_t *prices = calloc(n ? n : 1, sizeof *prices);
  if (!prices) return -1;
  for (size_t i = 0; i < n; i++) {
    task_result *r = &results[i];
    r->price_micros = pricing_image(e->cfg.prices, t->model, t->aspect_ratio, t->quality,
                                    r->width, r->height, o->quality, t->price_unit_micros);
    prices[i] = r->price_micros;
    if ((o->quality[0] && !(r->quality = strdup(o->quality))) ||
        (o->background[0] && !(r->background = strdup(o->background)))) {
      free(prices);
      return -1;
    }
  }
  int64_t charge = pricing_charge(prices, n, t->price_refs_micros, t->cost_held_micros);
  free(prices);
  return charge;
}

static void finish_with_images(engine *e, job *j, provider_outcome *o,
                               const task_attempt *attempt) {
  int64_t dur = time_mono_ms() - j->run_started_mono;
  task_result *results = calloc(o->n_images, sizeof *results);
  int n = results ? store_images(e, j, o, results) : -1;
  int64_t charge = n >= 0 ? price_results(e, j->t, o, results, (size_t)n) : -1;
  bool final;
  if (n < 0 || charge < 0) {
    for (int i = 0; i < n; i++) {
      e->bl->ops->remove(e->bl, results[i].blob_key);
      task_result_clear(&results[i]);
    }
    final = finish_task(e, j->t, j->task_id, j->run, TASK_FAILED, "storage_error",
                        "the result image could not be stored", NULL, 0, 0, dur, attempt);
  } else {
    final = finish_task(e, j->t, j->task_id, j->run, TASK_SUCCEEDED, NULL, NULL, results,
                        (size_t)n, charge, dur, attempt);
    for (int i = 0; i < n; i++) task_result_clear(&results[i]);
  }
  if (final) remove_inputs(e, j->t);
  free(results);
  job_release(e, j);
}

/* ---- output formats ------------------------------------------------------- */

static void hand_to_completers(engine *e, job *j);

/* The format the task wants its images in; IMAGEFMT_UNKNOWN: as made. */
static imagefmt wanted_format(const task *t) { return imagefmt_from_name(t->output_format); }

/* Whether some image of o is not in the task's output format, by its
 * bytes (never by what the upstream said it sent). */
static bool needs_conversion(const task *t, const provider_outcome *o) {
  imagefmt want = wanted_format(t);
  if (want == IMAGEFMT_UNKNOWN) return false;
  for (size_t i = 0; i < o->n_images; i++)
    if (image_format(&o->images[i]) != want) return true;
  return false;
}

/* A staged image to be converted: libvips takes bytes, so it is committed,
 * read back and removed (conversion is the rare path: most upstreams make
 * the format asked for). False when any step fails; the image is then
 * empty. */
static bool image_into_memory(engine *e, provider_image *img) {
  if (!img->staged) return true;
  blob_stream *staged = img->staged;
  img->staged = NULL;
  uint8_t *data = NULL;
  size_t len = 0;
  bool ok = blob_stream_commit(staged, NULL) == BLOB_OK &&
            e->bl->ops->read(e->bl, img->staged_key, img->len, &data, &len) == BLOB_OK &&
            len == img->len;
  e->bl->ops->remove(e->bl, img->staged_key);
  if (!ok) {
    free(data);
    img->len = 0;
    return false;
  }
  img->data = data;
  return true;
}

/* Transcode thread: converts every image of the outcome that is not in the
 * wanted format, in place. One that cannot be converted is emptied (data
 * NULL): it will not be delivered, nor paid for. Then the job goes back to
 * a completer (finish_conversion). */
static void convert_run(workpool_item *w) {
  job *j = (job *)(void *)((char *)w - offsetof(job, convert));
  engine *e = j->e;
  provider_outcome *o = j->outcome;
  imagefmt want = wanted_format(j->t);
  char code[24];
  for (size_t i = 0; i < o->n_images && !job_canceled(e, j, code); i++) {
    provider_image *img = &o->images[i];
    imagefmt from = image_format(img);
    if (from == want) continue;
    if (!image_into_memory(e, img)) {
      LOG_WARN("image_not_converted", "task=%s index=%zu why=staged_image_unreadable", j->task_id,
               i);
      if (!j->convert_error[0])
        snprintf(j->convert_error, sizeof j->convert_error,
                 "image %zu could not be read back to be converted", i);
      continue;
    }
    int64_t started = time_mono_ms();
    transcode_result r;
    transcode_status st = transcode_image(img->data, img->len, want, j->t->output_compression,
                                          e->cfg.transcode_max_pixels, &r);
    if (st != TRANSCODE_OK) {
      char why[200];
      LOG_WARN("image_not_converted", "task=%s index=%zu from=%s to=%s status=%s why=%s",
               j->task_id, i, imagefmt_name(from), imagefmt_name(want),
               transcode_status_name(st), log_quote(r.why, why, sizeof why));
      if (!j->convert_error[0])
        snprintf(j->convert_error, sizeof j->convert_error,
                 "image %zu could not be converted to %s: %s", i, imagefmt_name(want), r.why);
      free(img->data);
      img->data = NULL;
      img->len = 0;
      continue;
    }
    LOG_INFO("image_converted", "task=%s index=%zu from=%s to=%s bytes_in=%zu bytes_out=%zu "
             "dur_ms=%lld", j->task_id, i, imagefmt_name(from), imagefmt_name(want), img->len,
             r.len, (long long)(time_mono_ms() - started));
    free(img->data);
    img->data = r.data;
    img->len = r.len;
    img->width = r.width;
    img->height = r.height;
    snprintf(img->mime, sizeof img->mime, "%s", imagefmt_mime(want));
  }
  j->converted = true;
  hand_to_completers(e, j);
}

/* The pool was taken down (engine_stop) with the job still queued: the job
 * stays on the running list, which engine_stop empties, and the task stays
 * running in the store for the next start to run again. */
static void convert_drop(workpool_item *w) { (void)w; }

/* Completer thread: hands the job to the transcode pool, with the attempt
 * that brought its images. While the engine stops, the pool is gone: the
 * job is left to engine_stop, as a call still out upstream would be. */
static void start_conversion(engine *e, job *j, const task_attempt *attempt) {
  j->convert_attempt = *attempt;
  j->convert = (workpool_item){.run = convert_run, .drop = convert_drop};
  j->convert_error[0] = '\0';
  pthread_mutex_lock(&e->lock);
  /* Under the lock: engine_stop takes the pool away under it too, so the
   * pool submitted to is never one being destroyed. */
  bool queued = e->transcoder != NULL;
  if (queued) workpool_submit(e->transcoder, &j->convert);
  pthread_mutex_unlock(&e->lock);
  if (!queued)
    LOG_WARN("conversion_left_for_restart", "task=%s attempt=%d", j->task_id, j->run);
}

/* Completer thread, after convert_run: stores what was converted. */
static void finish_conversion(engine *e, job *j) {
  provider_outcome *o = j->outcome;
  const task_attempt *a = &j->convert_attempt;
  char cancel_code[24];
  if (job_canceled(e, j, cancel_code)) {
    finish_job(e, j, TASK_CANCELED, cancel_code, "the task was canceled", a);
    return;
  }
  size_t kept = 0;
  for (size_t i = 0; i < o->n_images; i++)
    if (o->images[i].data || o->images[i].staged) o->images[kept++] = o->images[i];
  o->n_images = kept;
  if (kept == 0) {
    finish_job(e, j, TASK_FAILED, "transcode_failed", j->convert_error, a);
    return;
  }
  finish_with_images(e, j, o, a);
}

/* ---- retries -------------------------------------------------------------- */

/* Puts the job on the timer heap; the dispatcher runs its next attempt at due. */
static void schedule(engine *e, job *j, int64_t due_mono) {
  pthread_mutex_lock(&e->lock);
  bool ok = dheap_set(&e->timers, &j->timer, due_mono);
  if (ok) pthread_cond_signal(&e->dispatch_cond);
  pthread_mutex_unlock(&e->lock);
  if (!ok)
    finish_job(e, j, TASK_FAILED, "internal_error", "out of memory scheduling a retry", NULL);
}

/* Exponential backoff with "equal jitter": half the step is fixed, half
 * random, so retries of many tasks spread out but none retries at once. */
static int64_t backoff_ms(engine *e, int attempts_made) {
  int64_t step = e->cfg.backoff_base_ms;
  for (int i = 1; i < attempts_made && step < e->cfg.backoff_max_ms; i++) step *= 2;
  if (step > e->cfg.backoff_max_ms) step = e->cfg.backoff_max_ms;
  pthread_mutex_lock(&e->lock);
  unsigned r = (unsigned)rand_r(&e->rng);
  pthread_mutex_unlock(&e->lock);
  return step / 2 + (int64_t)(r % (unsigned)(step / 2 + 1));
}

/* Describes the attempt that just ended (pointing into j and o). */
static task_attempt describe_attempt(const job *j, const provider_outcome *o) {
  task_attempt a = {
      .run = j->run,
      .provider = router_route_provider(j->route)->name,
      .upstream_model = (char *)router_route_upstream_model(j->route),
      .started_ms = j->attempt_started_ms,
      .ended_ms = time_now_ms(),
      .http_status = o->http_status,
      .error_class = (char *)provider_error_class_name(
          o->status == PROVIDER_OK ? PROVIDER_ERR_NONE : o->error_class),
      .error_code = o->status == PROVIDER_OK ? NULL : (char *)o->error_code,
  };
  LOG_INFO("attempt_ended", "task=%s provider=%s upstream_model=%s status=%d class=%s dur_ms=%lld",
           j->task_id, a.provider, a.upstream_model, a.http_status, a.error_class,
           (long long)(a.ended_ms - a.started_ms));
  return a;
}

/* A completer decides what an attempt's outcome means for the task. */
static void handle_outcome(engine *e, job *j) {
  provider_outcome *o = j->outcome;
  int64_t now = time_mono_ms();
  /* Providers quote upstream text into fixed buffers, which may cut a
   * character in half: repair it once here, before it is stored and shown. */
  utf8_sanitize(o->error_code);
  utf8_sanitize(o->error_message);
  if (o->status == PROVIDER_OK && o->n_images == 0) {
    o->status = PROVIDER_FAILED;
    o->retryable = true;
    o->error_class = PROVIDER_ERR_NO_IMAGE;
    snprintf(o->error_code, sizeof o->error_code, "no_image");
    snprintf(o->error_message, sizeof o->error_message, "the provider answered without an image");
  }
  router_report(e->rt, j->route, o, now - j->attempt_started_mono, now);
  task_attempt a = describe_attempt(j, o);
  j->n_attempts++;
  j->route = NULL;

  /* A cancel wins over whatever the attempt brought: the client asked for
   * nothing more and pays for nothing (an image that came meanwhile is
   * dropped with the outcome). */
  char cancel_code[24];
  if (job_canceled(e, j, cancel_code)) {
    finish_job(e, j, TASK_CANCELED, cancel_code, "the task was canceled", &a);
    return;
  }

  if (o->status == PROVIDER_OK) {
    if (needs_conversion(j->t, o))
      start_conversion(e, j, &a);
    else
      finish_with_images(e, j, o, &a);
    return;
  }
  if (o->status == PROVIDER_MODERATED) {
    finish_job(e, j, TASK_MODERATED, o->error_code[0] ? o->error_code : "content_moderated",
               o->error_message, &a);
    return;
  }
  /* A refused key or an exhausted account stays so on the same route: retry
   * only where another provider, with its own key, can take the task. */
  bool same_route_futile =
      o->error_class == PROVIDER_ERR_AUTH || o->error_class == PROVIDER_ERR_CREDIT;
  if (o->retryable && same_route_futile &&
      !router_has_untried(e->rt, j->t->model, j->tried, j->n_tried))
    o->retryable = false;
  if (o->retryable && j->n_attempts < e->cfg.max_attempts) {
    int64_t delay = backoff_ms(e, j->n_attempts);
    if (o->retry_after_ms > delay) delay = o->retry_after_ms;
    if (now + delay - j->run_started_mono < e->cfg.deadline_ms) {
      LOG_INFO("attempt_retry", "task=%s after_ms=%lld attempts=%d", j->task_id,
               (long long)delay, j->n_attempts);
      if (e->st->ops->task_attempt_add(e->st, j->task_id, &a) != STORE_OK)
        LOG_WARN("attempt_record_failed", "task=%s", j->task_id);
      else
        changed(e, j->task_id, false);
      provider_outcome_free(o);
      j->outcome = NULL;
      /* +1: the clock counts whole milliseconds, so without it a retry could
       * go up to a millisecond before the time an upstream asked for. */
      schedule(e, j, now + delay + 1);
      return;
    }
  }
  finish_job(e, j, TASK_FAILED, o->error_code[0] ? o->error_code : "upstream_error",
             o->error_message, &a);
}

/* Provider threads and the curl loop land here: hand the outcome to a
 * completer and return at once, so they never wait on disk or the database. */
static void hand_to_completers(engine *e, job *j) {
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

static void on_provider_done(void *ctx, provider_outcome *outcome) {
  job *j = ctx;
  engine *e = j->e;
  pthread_mutex_lock(&e->lock);
  j->calling = false; /* from here a cancel can no longer name this call */
  j->outcome = outcome;
  bool in_start = j->in_start; /* then run_attempt hands it on once start() returns */
  if (in_start) j->done_in_start = true;
  pthread_mutex_unlock(&e->lock);
  if (!in_start) hand_to_completers(e, j);
}

static void handle_downloads(engine *e, job *j);

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
    if (j->dl)
      handle_downloads(e, j);
    else if (j->converted)
      finish_conversion(e, j);
    else
      handle_outcome(e, j);
    pthread_mutex_lock(&e->lock);
  }
  pthread_mutex_unlock(&e->lock);
  return NULL;
}

/* ---- attempts ------------------------------------------------------------- */

typedef struct loaded_inputs {
  provider_input *inputs;
  uint8_t **data;
  size_t n;
  provider_input mask;  /* the task's mask; .data NULL when it has none */
  uint8_t *mask_data;
} loaded_inputs;

static void loaded_inputs_free(loaded_inputs *li) {
  for (size_t i = 0; i < li->n; i++) free(li->data[i]);
  free(li->data);
  free(li->inputs);
  free(li->mask_data);
}

/* Reads the reference images (and the mask) back for one attempt. Keeping them in memory
 * between attempts would cost up to 70 MB per waiting task; a re-read is cheap. */
static int load_inputs(engine *e, const task *t, loaded_inputs *li) {
  memset(li, 0, sizeof *li);
  if (t->mask) {
    size_t len;
    if (!t->mask->blob_key ||
        e->bl->ops->read(e->bl, t->mask->blob_key, e->cfg.max_input_bytes, &li->mask_data,
                         &len) != BLOB_OK)
      return -1;
    li->mask = (provider_input){.data = li->mask_data, .len = len, .mime = "image/png"};
  }
  if (t->n_inputs == 0) return 0;
  li->inputs = calloc(t->n_inputs, sizeof *li->inputs);
  li->data = calloc(t->n_inputs, sizeof *li->data);
  if (!li->inputs || !li->data) return -1;
  for (size_t i = 0; i < t->n_inputs; i++) {
    const task_input *in = &t->inputs[i];
    char key[128];
    size_t len;
    if (e->bl->ops->read(e->bl, input_key(t, i, key, sizeof key), e->cfg.max_input_bytes,
                         &li->data[i], &len) != BLOB_OK)
      return -1;
    li->n = i + 1;
    li->inputs[i].data = li->data[i];
    li->inputs[i].len = len;
    li->inputs[i].mime = in->mime ? in->mime : imagefmt_mime(imagefmt_detect(li->data[i], len));
  }
  return 0;
}

/* Whether a URL input of t is missing from the blob store: not downloaded by
 * this run, nor by an earlier run of the task. Opens, does not read. */
static bool url_inputs_missing(engine *e, const task *t) {
  for (size_t i = 0; i < t->n_inputs; i++) {
    if (t->inputs[i].blob_key) continue;
    char key[128];
    blob_object o;
    int rc = e->bl->ops->open(e->bl, input_key(t, i, key, sizeof key), &o);
    if (rc == BLOB_NOT_FOUND) return true;
    if (rc == BLOB_OK) blob_object_release(&o);
  }
  return false;
}

/* ---- reference images by URL ---------------------------------------------- */

/* One download fewer outstanding; the last hands the job to a completer. */
static void download_settled(engine *e, job *j) {
  pthread_mutex_lock(&e->lock);
  size_t left = --j->dl->pending;
  pthread_mutex_unlock(&e->lock);
  if (left == 0) hand_to_completers(e, j);
}

/* Curl loop thread: keep the result (and its bytes) for the completer. */
static void on_downloaded(void *ctx, fetch_result *res) {
  download_slot *slot = ctx;
  slot->j->dl->res[slot->index] = *res;
  res->data = NULL;
  download_settled(slot->j->e, slot->j);
}

/* Starts every URL input's download at once. The job waits for them off the
 * dispatcher; a completer takes it from there (handle_downloads). */
static void start_downloads(engine *e, job *j) {
  const task *t = j->t;
  downloads *d = calloc(1, sizeof *d);
  if (d) {
    d->slots = calloc(t->n_inputs, sizeof *d->slots);
    d->res = calloc(t->n_inputs, sizeof *d->res);
  }
  if (!d || !d->slots || !d->res || !e->loop) {
    downloads_free(d, t->n_inputs);
    finish_job(e, j, TASK_FAILED, "image_download_failed",
               "reference images by URL cannot be downloaded here", NULL);
    return;
  }
  d->started_mono = time_mono_ms();
  d->pending = 1; /* held until every download has started */
  j->dl = d;
  j->inputs_ready = true;
  for (size_t i = 0; i < t->n_inputs; i++) {
    if (!t->inputs[i].url) continue;
    d->slots[i] = (download_slot){.j = j, .index = i};
    pthread_mutex_lock(&e->lock);
    d->pending++;
    pthread_mutex_unlock(&e->lock);
    fetch_result immediate = {0};
    if (fetch_start(e->loop, &e->cfg.fetch, t->inputs[i].url, on_downloaded, &d->slots[i],
                    &immediate) < 0) {
      d->res[i] = immediate;
      download_settled(e, j);
    }
  }
  download_settled(e, j);
}

static const char *download_error_code(fetch_status s) {
  switch (s) {
  case FETCH_REFUSED_ADDRESS:
  case FETCH_REFUSED_SCHEME: return "image_url_refused";
  case FETCH_TOO_LARGE: return "image_too_large";
  case FETCH_NOT_IMAGE: return "invalid_image";
  default: return "image_download_failed";
  }
}


/* Completer thread: every download of the job has ended. Keeps the images in
 * the blob store and lets the dispatcher start the first attempt, or fails
 * the task (no upstream was called, so nothing is owed). */
static void handle_downloads(engine *e, job *j) {
  downloads *d = j->dl;
  j->dl = NULL;
  const task *t = j->t;
  char cancel_code[24];
  if (job_canceled(e, j, cancel_code)) {
    downloads_free(d, t->n_inputs);
    finish_job(e, j, TASK_CANCELED, cancel_code, "the task was canceled", NULL);
    return;
  }
  size_t n_url = 0, bytes = 0;
  const char *code = NULL; /* set: the task fails with it and message */
  char message[320];
  for (size_t i = 0; i < t->n_inputs && !code; i++) {
    if (!t->inputs[i].url) continue;
    fetch_result *r = &d->res[i];
    if (r->status == FETCH_CANCELLED) {
      pthread_mutex_lock(&e->lock);
      bool stopping = e->stopping;
      pthread_mutex_unlock(&e->lock);
      if (stopping) { /* the task stays running in the store; the next start re-runs it */
        downloads_free(d, t->n_inputs);
        return;
      }
    }
    char key[128];
    if (r->status != FETCH_OK) {
      snprintf(message, sizeof message, "image %zu: %s", i, r->message);
      utf8_sanitize(message);
      code = download_error_code(r->status);
      LOG_INFO("input_download_failed", "task=%s index=%zu code=%s http_status=%ld", j->task_id,
               i, code, r->http_status);
    } else if (e->bl->ops->put(e->bl, input_key(t, i, key, sizeof key), r->data, r->len,
                               r->mime) != BLOB_OK) {
      code = "storage_error";
      snprintf(message, sizeof message, "a reference image could not be stored");
    } else {
      n_url++;
      bytes += r->len;
    }
  }
  int64_t dur_ms = time_mono_ms() - d->started_mono;
  downloads_free(d, t->n_inputs);
  if (code) {
    finish_job(e, j, TASK_FAILED, code, message, NULL);
    return;
  }
  LOG_INFO("inputs_downloaded", "task=%s images=%zu bytes=%zu dur_ms=%lld", j->task_id, n_url,
           bytes, (long long)dur_ms);
  schedule(e, j, time_mono_ms());
}

static provider_outcome *internal_outcome(const char *code, const char *message, bool retryable) {
  provider_outcome *o = provider_outcome_new(PROVIDER_FAILED);
  if (!o) return NULL;
  o->retryable = retryable;
  o->error_class = PROVIDER_ERR_INTERNAL;
  snprintf(o->error_code, sizeof o->error_code, "%s", code);
  snprintf(o->error_message, sizeof o->error_message, "%s", message);
  return o;
}

/* Ends the attempt in flight on our side, through the same path as an
 * upstream's answer (so it is reported, recorded and maybe retried). */
static void fail_attempt(engine *e, job *j, const char *code, const char *message,
                         bool retryable) {
  provider_outcome *o = internal_outcome(code, message, retryable);
  if (!o) {
    router_release(e->rt, j->route);
    j->route = NULL;
    finish_job(e, j, TASK_FAILED, "internal_error", "out of memory", NULL);
    return;
  }
  on_provider_done(j, o);
}

/* Starts the job's next upstream attempt (dispatcher thread), on route when
 * one was picked already, else on a fresh pick. */
static void run_attempt(engine *e, job *j, router_route *route) {
  char code[24];
  if (job_canceled(e, j, code)) {
    if (route) router_release(e->rt, route);
    finish_job(e, j, TASK_CANCELED, code, "the task was canceled", NULL);
    return;
  }
  if (!j->inputs_ready) {
    if (url_inputs_missing(e, j->t)) {
      if (route) router_release(e->rt, route);
      start_downloads(e, j);
      return;
    }
    j->inputs_ready = true;
  }
  int64_t now = time_mono_ms();
  int64_t left = e->cfg.deadline_ms - (now - j->run_started_mono);
  int64_t wait = 0;
  if (!route && left > 0) route = router_pick(e->rt, j->t->model, j->tried, j->n_tried, now, &wait);
  if (!route) {
    if (left > 0 && wait < left) {
      schedule(e, j, now + wait); /* every route is resting or full: not an attempt */
      return;
    }
    finish_job(e, j, TASK_FAILED, "no_provider_available",
               "no upstream could take the task before its deadline", NULL);
    return;
  }
  j->route = route;
  if (j->n_tried < ENGINE_MAX_TRIED) {
    bool seen = false;
    for (size_t i = 0; i < j->n_tried; i++) seen |= j->tried[i] == route;
    if (!seen) j->tried[j->n_tried++] = route;
  }
  j->attempt_started_mono = now;
  j->attempt_started_ms = time_now_ms();

  provider *p = router_route_provider(route);
  loaded_inputs li;
  if (load_inputs(e, j->t, &li) < 0) {
    loaded_inputs_free(&li);
    fail_attempt(e, j, "input_unavailable", "a reference image could not be read back", false);
    return;
  }
  /* Large images go to the store as they arrive, under names of this
   * attempt's own ("<run>-a<attempt>-<n>"), so none can meet another
   * attempt's; the engine commits them when it stores the outcome. */
  j->spool.bl = e->bl;
  snprintf(j->spool.prefix, sizeof j->spool.prefix, TASK_BLOB_RESULTS "%s/%d-a%d-", j->task_id,
           j->run, j->n_attempts + 1);
  provider_request req = {
      .task_id = j->t->id,
      .model = j->t->model,
      .upstream_model = router_route_upstream_model(route),
      .prompt = j->t->prompt,
      .aspect_ratio = j->t->aspect_ratio,
      .resolution = j->t->resolution,
      .quality = j->t->quality,
      .quantity = j->t->quantity > 0 ? j->t->quantity : 1,
      .inputs = li.inputs,
      .n_inputs = li.n,
      .timeout_ms = (long)left,
      .output_format = j->t->output_format,
      .output_compression = j->t->output_compression,
      .spool = &j->spool,
      .background = j->t->background,
      .mask = li.mask.data ? &li.mask : NULL,
  };
  LOG_INFO("attempt_started", "task=%s run=%d attempt=%d provider=%s upstream_model=%s",
           j->task_id, j->run, j->n_attempts + 1, p->name, req.upstream_model);
  /* A cancel that came since the check above is seen here, under the lock
   * that engine_cancel takes: either the call never starts, or it starts
   * marked as out and engine_cancel stops it (one that comes while start()
   * runs, when the provider may not know the call yet, is passed on below
   * once start() has returned). */
  pthread_mutex_lock(&e->lock);
  bool canceled = j->cancel;
  if (canceled) memcpy(code, j->cancel_code, sizeof code);
  assert(!j->calling && !j->in_start);
  j->calling = j->in_start = !canceled;
  pthread_mutex_unlock(&e->lock);
  if (canceled) {
    loaded_inputs_free(&li);
    router_release(e->rt, route);
    j->route = NULL;
    finish_job(e, j, TASK_CANCELED, code, "the task was canceled", NULL);
    return;
  }
  int rc = p->ops->start(p, &req, on_provider_done, j);
  loaded_inputs_free(&li);
  /* The job is still ours (in_start kept a done() from handing it on): what
   * came while start() ran is done now, under the lock engine_cancel takes
   * to stop a call. After this the job belongs to the callback. */
  pthread_mutex_lock(&e->lock);
  j->in_start = false;
  bool done = j->done_in_start;
  bool stop = j->cancel_in_start && rc == 0 && !done;
  j->done_in_start = j->cancel_in_start = false;
  if (rc != 0) j->calling = false; /* done is never called for a call that did not start */
  if (stop && p->ops->cancel) p->ops->cancel(p, j);
  pthread_mutex_unlock(&e->lock);
  if (rc != 0)
    fail_attempt(e, j, "provider_unavailable", "the provider could not start the call", true);
  else if (done)
    hand_to_completers(e, j);
}

#define ENGINE_START_BATCH 64

/* Starts a batch of queued tasks: loads each, picks its route, marks them all
 * running in one store transaction (one disk sync for the batch, not one per
 * task), then starts their first attempts. The route is picked before the
 * task is marked running, so the store names the provider from the start.
 * Returns how many became jobs; the caller gives back the other slots. */
static size_t start_tasks(engine *e, queued_id **ids, size_t n) {
  job *jobs[ENGINE_START_BATCH];
  router_route *routes[ENGINE_START_BATCH];
  store_start items[ENGINE_START_BATCH];
  store_outbox outbox[ENGINE_START_BATCH];
  char outbox_id[ENGINE_START_BATCH][WEBHOOKS_ID_SIZE];
  size_t m = 0;
  for (size_t i = 0; i < n; i++) {
    /* The same task twice in one batch (queued by a submit and found by the
     * sweep at once): one job, so that a cancel finds the one that runs. */
    bool twice = false;
    for (size_t k = 0; k < m && !twice; k++) twice = strcmp(jobs[k]->task_id, ids[i]->id) == 0;
    if (twice) continue;
    job *j = calloc(1, sizeof *j);
    if (!j) continue; /* still queued in the store: the next start picks it up */
    dheap_node_init(&j->timer);
    if (e->st->ops->task_get(e->st, ids[i]->id, &j->t) != STORE_OK ||
        j->t->state != TASK_QUEUED) {
      job_free(j); /* gone, or started already */
      continue;
    }
    int64_t wait;
    routes[m] = router_pick(e->rt, j->t->model, NULL, 0, time_mono_ms(), &wait);
    items[m] = (store_start){.task_id = j->t->id,
                             .provider = routes[m] ? router_route_provider(routes[m])->name : NULL};
    if (webhooks_outbox_for(j->t, TASK_RUNNING, &outbox[m], outbox_id[m]))
      items[m].outbox = &outbox[m];
    j->e = e;
    snprintf(j->task_id, sizeof j->task_id, "%s", j->t->id);
    jobs[m++] = j;
  }
  /* The jobs are on the running list before their start commits: a cancel
   * that comes right after the commit (the store answers it "running") must
   * find its job here, or nothing here would ever end the run. One that
   * comes before the commit cancels the task as queued, and its start then
   * fails the store's compare-and-set. */
  pthread_mutex_lock(&e->lock);
  for (size_t i = 0; i < m; i++) {
    jobs[i]->next = e->running;
    if (e->running) e->running->prev = jobs[i];
    e->running = jobs[i];
  }
  pthread_mutex_unlock(&e->lock);
  int rc = e->st->ops->task_start_many(e->st, items, m, time_now_ms());
  if (rc != STORE_OK) LOG_ERROR("task_start_failed", "tasks=%zu", m);
  size_t started = 0;
  for (size_t i = 0; i < m; i++) {
    job *j = jobs[i];
    if (rc != STORE_OK || items[i].rc != STORE_OK) {
      pthread_mutex_lock(&e->lock);
      unlink_running(e, j);
      pthread_mutex_unlock(&e->lock);
      if (routes[i]) router_release(e->rt, routes[i]);
      job_free(j);
      jobs[i] = NULL;
      continue;
    }
    j->run = items[i].attempt;
    j->run_started_mono = time_mono_ms();
    changed(e, j->task_id, items[i].outbox != NULL);
    /* A cancel that came while the task was not running here (another
     * process, or before a crash) is in the store: this run ends at once. */
    if (j->t->cancel_requested) {
      pthread_mutex_lock(&e->lock);
      if (!j->cancel) snprintf(j->cancel_code, sizeof j->cancel_code, "canceled");
      j->cancel = true;
      pthread_mutex_unlock(&e->lock);
    }
    started++;
  }
  /* Only now the attempts: a fast failure must not finish a task whose
   * siblings are still being linked. */
  for (size_t i = 0; i < m; i++)
    if (jobs[i]) run_attempt(e, jobs[i], routes[i]);
  return started;
}

/* Enqueues up to limit of the tasks queued in the store, oldest first.
 * Returns how many, or -1 when the store fails. */
static long long enqueue_stored(engine *e, size_t limit) {
  char(*ids)[IDS_UUID_LEN + 1] = NULL;
  size_t n = 0;
  if (e->st->ops->task_list_queued(e->st, limit, &ids, &n) != STORE_OK) return -1;
  for (size_t i = 0; i < n; i++) engine_enqueue(e, ids[i]);
  free(ids);
  return (long long)n;
}

/* Queued in the store but in no memory queue: a task whose start failed on a
 * store error, or whose id could not be queued (out of memory). Looked for
 * only while the memory queue is empty, so a task found is a stray, or one
 * submitted this instant (then its second copy fails the start's
 * compare-and-set and is dropped). Called without e->lock. */
static void sweep_stranded(engine *e, size_t room) {
  long long n = enqueue_stored(e, room);
  if (n > 0) LOG_INFO("engine_swept", "queued=%lld", n);
}

/* Whether a job of this process runs task_id (under e->lock). */
static bool owned_locked(engine *e, const char *task_id) {
  for (job *j = e->running; j; j = j->next)
    if (strcmp(j->task_id, task_id) == 0) return true;
  return false;
}

/* Running in the store but run by no job here: a run whose final write kept
 * failing (finish_task gave up). Put back to queued (compare-and-set on its
 * attempts) and run again, as a restart would, instead of leaving its hold
 * and its concurrency slot taken until then. The dispatcher is the only
 * thread that starts jobs, and it runs this, so a task between its start
 * and its job is never mistaken for a lost one. Called without e->lock. */
static void sweep_lost_runs(engine *e) {
  pthread_mutex_lock(&e->lock);
  /* On the dispatcher's thread every slot in use is a job on the running list. */
  size_t jobs = e->in_flight;
  pthread_mutex_unlock(&e->lock);
  store_start *runs = NULL;
  size_t n = 0;
  if (e->st->ops->task_list_running(e->st, jobs + 1024, &runs, &n) != STORE_OK) return;
  for (size_t i = 0; n > jobs && i < n; i++) {
    pthread_mutex_lock(&e->lock);
    bool mine = owned_locked(e, runs[i].task_id);
    pthread_mutex_unlock(&e->lock);
    if (mine || e->st->ops->task_requeue(e->st, runs[i].task_id, runs[i].attempt) != STORE_OK)
      continue;
    LOG_WARN("lost_run_requeued", "task=%s attempt=%d", runs[i].task_id, runs[i].attempt);
    changed(e, runs[i].task_id, false);
    engine_enqueue(e, runs[i].task_id);
  }
  free(runs);
}

int engine_cancel(engine *e, const char *task_id, const char *code, task_state *state_out) {
  task *t = NULL;
  int rc = e->st->ops->task_get(e->st, task_id, &t);
  if (rc != STORE_OK) return rc;
  store_outbox ob;
  char ob_id[WEBHOOKS_ID_SIZE];
  bool has_ob = webhooks_outbox_for(t, TASK_CANCELED, &ob, ob_id);
  task_state state = t->state;
  rc = e->st->ops->task_cancel(e->st, task_id, time_now_ms(), code, has_ob ? &ob : NULL, &state);
  task_free(t); /* after the call: ob points into t */
  if (state_out) *state_out = state;
  if (rc == STORE_OK) {
    LOG_INFO("task_canceled", "task=%s code=%s was=queued", task_id, code);
    changed(e, task_id, has_ob);
    return STORE_OK;
  }
  if (rc != STORE_CONFLICT || state != TASK_RUNNING) return rc;
  /* Running: the store has the mark; the run here, if this process has it,
   * ends canceled at its next step, at once when it waits for a retry. */
  pthread_mutex_lock(&e->lock);
  for (job *j = e->running; j; j = j->next) {
    if (strcmp(j->task_id, task_id) != 0) continue;
    if (!j->cancel) LOG_INFO("task_cancel_requested", "task=%s code=%s", task_id, code);
    j->cancel = true;
    snprintf(j->cancel_code, sizeof j->cancel_code, "%s", code);
    /* A call out upstream is broken off: its done comes soon as canceled and
     * the run ends at its next step. Under e->lock, the job cannot end and be
     * freed meanwhile (calling is cleared under it first), and the provider
     * never calls done from cancel() nor holds its own lock while calling
     * done, so the lock order e->lock -> provider lock has no reverse. */
    if (j->calling && j->in_start) {
      j->cancel_in_start = true; /* the provider may not know the call yet: run_attempt asks */
    } else if (j->calling && j->route) {
      provider *p = router_route_provider(j->route);
      if (p->ops->cancel) p->ops->cancel(p, j);
    }
    if (dheap_node_queued(&j->timer)) {
      dheap_set(&e->timers, &j->timer, time_mono_ms());
      pthread_cond_signal(&e->dispatch_cond);
    }
    break;
  }
  pthread_mutex_unlock(&e->lock);
  return STORE_CONFLICT;
}

/* Tasks whose deadline has passed are canceled ("deadline_exceeded"), queued
 * or running. Called without e->lock, about once a second. */
static void sweep_deadlines(engine *e) {
  char(*ids)[IDS_UUID_LEN + 1] = NULL;
  size_t n = 0;
  if (e->st->ops->task_list_due(e->st, time_now_ms(), 64, &ids, &n) != STORE_OK) return;
  for (size_t i = 0; i < n; i++) {
    task_state state;
    engine_cancel(e, ids[i], "deadline_exceeded", &state);
  }
  free(ids);
}

static void *dispatcher_main(void *arg) {
  engine *e = arg;
  pthread_mutex_lock(&e->lock);
  e->next_sweep_mono = time_mono_ms() + e->cfg.sweep_interval_ms;
  e->next_deadline_mono = time_mono_ms();
  while (!e->stopping) {
    int64_t now = time_mono_ms();
    if (now >= e->next_deadline_mono) {
      e->next_deadline_mono = now + ENGINE_DEADLINE_SWEEP_MS;
      pthread_mutex_unlock(&e->lock);
      if (e->st->ops->health(e->st, NULL, 0) == STORE_OK) sweep_deadlines(e);
      pthread_mutex_lock(&e->lock);
      continue;
    }
    if (!e->q_head && now >= e->next_sweep_mono) {
      e->next_sweep_mono = now + e->cfg.sweep_interval_ms;
      size_t room = e->in_flight < (size_t)e->cfg.max_in_flight
                        ? (size_t)e->cfg.max_in_flight - e->in_flight
                        : 0;
      pthread_mutex_unlock(&e->lock);
      /* A broken store would refuse every start and requeue. Asking also
       * makes it log, once, that it is broken: an idle server whose
       * database vanished says so within a sweep even if nothing polls
       * /healthz. */
      if (e->st->ops->health(e->st, NULL, 0) == STORE_OK) {
        if (room) sweep_stranded(e, room);
        sweep_lost_runs(e); /* after: what it requeues it also enqueues itself */
      }
      pthread_mutex_lock(&e->lock);
      continue;
    }
    dheap_node *due = dheap_top(&e->timers);
    if (due && due->due <= now) {
      job *j = job_of_timer(due);
      dheap_remove(&e->timers, due);
      pthread_mutex_unlock(&e->lock);
      run_attempt(e, j, NULL);
      pthread_mutex_lock(&e->lock);
      continue;
    }
    if (e->q_head && e->in_flight < (size_t)e->cfg.max_in_flight) {
      queued_id *batch[ENGINE_START_BATCH];
      size_t n = 0;
      while (e->q_head && n < ENGINE_START_BATCH &&
             e->in_flight < (size_t)e->cfg.max_in_flight) {
        queued_id *q = e->q_head;
        e->q_head = q->next;
        if (!e->q_head) e->q_tail = NULL;
        e->q_len--;
        e->in_flight++; /* reserve the slot before the lock is dropped */
        batch[n++] = q;
      }
      pthread_mutex_unlock(&e->lock);
      size_t started = start_tasks(e, batch, n);
      for (size_t i = 0; i < n; i++) free(batch[i]);
      pthread_mutex_lock(&e->lock);
      if (started < n) {
        e->in_flight -= n - started;
        pthread_cond_broadcast(&e->drain_cond);
      }
      continue;
    }
    int64_t wake = e->next_sweep_mono;
    if (dheap_top(&e->timers) && dheap_top(&e->timers)->due < wake)
      wake = dheap_top(&e->timers)->due;
    if (e->next_deadline_mono < wake) wake = e->next_deadline_mono;
    struct timespec ts;
    mono_deadline(&ts, wake);
    pthread_cond_timedwait(&e->dispatch_cond, &e->lock, &ts);
  }
  pthread_mutex_unlock(&e->lock);
  return NULL;
}

/* ---- lifecycle ------------------------------------------------------------ */

static int recover(engine *e) {
  int64_t requeued = 0;
  if (e->st->ops->task_requeue_running(e->st, &requeued) != STORE_OK) return -1;
  long long n = enqueue_stored(e, (size_t)-1);
  if (n < 0) return -1;
  LOG_INFO("engine_recovered", "requeued_running=%lld queued=%lld", (long long)requeued, n);
  return 0;
}

int engine_start(engine *e) {
  if (e->started) return 0;
  if (recover(e) < 0) {
    LOG_ERROR("engine_recovery_failed", NULL);
    return -1;
  }
  /* Conversions need libvips started; it starts once per process. */
  if (!transcode_startup()) LOG_WARN("transcode_unavailable", NULL);
  e->transcoder = workpool_create(e->cfg.transcode_threads, transcode_thread_done);
  if (!e->transcoder) return -1;
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

  /* Retries waiting for their time will not run in this process: they do
   * not hold the drain up. Calls in flight get drain_timeout_ms. */
  int64_t deadline = time_mono_ms() + e->cfg.drain_timeout_ms;
  struct timespec ts;
  mono_deadline(&ts, deadline);
  pthread_mutex_lock(&e->lock);
  while (e->in_flight > e->timers.len) {
    if (pthread_cond_timedwait(&e->drain_cond, &e->lock, &ts) != 0) break;
  }
  pthread_mutex_unlock(&e->lock);

  /* Cancel what is still out: the curl loop first (its callbacks free the
   * providers' call contexts without reporting), then let the completers
   * store what already arrived, then the providers (the simulated one drops
   * its pending calls). Nothing below calls back into a freed module. */
  if (e->loop) {
    curlloop_destroy(e->loop);
    e->loop = NULL;
  }
  /* Conversions under way finish and go to the completers; those still
   * queued are left (running in the store, re-run at the next start). */
  pthread_mutex_lock(&e->lock);
  workpool *transcoder = e->transcoder;
  e->transcoder = NULL;
  pthread_mutex_unlock(&e->lock);
  workpool_destroy(transcoder);
  pthread_mutex_lock(&e->lock);
  e->completers_exit = true;
  pthread_cond_broadcast(&e->done_cond);
  pthread_mutex_unlock(&e->lock);
  for (int i = 0; i < e->n_completers; i++) pthread_join(e->completers[i], NULL);
  e->n_completers = 0;
  router_destroy(e->rt);
  e->rt = NULL;

  /* Whatever is left stays running in the store and is re-run at the next start. */
  pthread_mutex_lock(&e->lock);
  size_t abandoned = 0;
  /* The retry heap points into the jobs: empty it before they are freed. */
  while (dheap_top(&e->timers)) dheap_remove(&e->timers, dheap_top(&e->timers));
  while (e->running) {
    job *j = e->running;
    unlink_running(e, j);
    job_free(j);
    abandoned++;
  }
  e->done_head = e->done_tail = NULL;
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
  dheap_free(&e->timers);
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
  out->retrying = e->timers.len;
  out->finished = e->finished;
  out->stopping = e->stopping;
  pthread_mutex_unlock(&e->lock);
}

bool engine_serves(engine *e, const char *model) { return e->rt && router_serves(e->rt, model); }

router *engine_router(engine *e) { return e->rt; }
