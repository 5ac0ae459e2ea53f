/* sim.c - the simulated provider: answers after a fixed delay with PNGs of the
 * exact size the real model would return, drawn from the prompt.
 *
 * One timer thread keeps pending calls in a min-heap ordered by due time and
 * sleeps on a CLOCK_MONOTONIC condition variable until the earliest is due;
 * due calls move to a FIFO that a small pool of render threads drains. So a
 * pending call costs only its memory, however many there are. The outcome is
 * allocated when the call starts, so running out of memory later can never
 * leave a started call without its done() callback. cancel() takes a call
 * still waiting (for its delay, or for a render thread) and hands it to the
 * render threads already answered; a call being drawn finishes. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/catalog.h"
#include "upstream/provider.h"
#include "upstream/simpng.h"
#include "util/imagefmt.h"
#include "util/log.h"
#include "util/timeutil.h"

#define SIM_DEFAULT_THREADS 2
#define SIM_MAX_THREADS 64
#define SIM_MAX_QUANTITY 10 /* the most any upstream returns from one call */

typedef struct sim_call {
  int64_t due_ms;
  uint64_t seq; /* breaks ties in due_ms so equal deadlines run in start order */
  char *prompt;
  int width, height, quantity;
  provider_outcome *outcome; /* preset to FAILED when the request was invalid */
  provider_done_fn done;
  void *ctx;
  struct sim_call *next; /* link in the render queue */
} sim_call;

typedef struct sim_provider {
  provider base; /* first, so a provider * is a sim_provider * */
  int delay_ms;
  char *fail_marker;     /* NULL when off */
  char *moderate_marker; /* NULL when off */

  pthread_mutex_t lock; /* guards everything below */
  pthread_cond_t timer_cond; /* on CLOCK_MONOTONIC: the timer waits for deadlines */
  pthread_cond_t work_cond;  /* render threads wait for due calls */
  bool stopping;
  sim_call **heap; /* pending calls, earliest due first */
  size_t heap_len, heap_cap;
  uint64_t next_seq;
  sim_call *work_head, *work_tail; /* due calls waiting for a render thread */

  bool timer_started;
  pthread_t timer;
  pthread_t *workers;
  int n_workers; /* started */
} sim_provider;

static void sim_call_free(sim_call *call) {
  if (!call) return;
  free(call->prompt);
  provider_outcome_free(call->outcome);
  free(call);
}

/* ---- pending heap (lock held) ---- */

static bool sim_call_before(const sim_call *a, const sim_call *b) {
  return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void sim_heap_swap(sim_call **h, size_t i, size_t j) {
  sim_call *t = h[i];
  h[i] = h[j];
  h[j] = t;
}

static bool sim_heap_push(sim_provider *sp, sim_call *call) {
  if (sp->heap_len == sp->heap_cap) {
    size_t cap = sp->heap_cap ? sp->heap_cap * 2 : 64;
    if (cap > SIZE_MAX / sizeof *sp->heap) return false;
    sim_call **h = realloc(sp->heap, cap * sizeof *h);
    if (!h) return false;
    sp->heap = h;
    sp->heap_cap = cap;
  }
  size_t i = sp->heap_len++;
  sp->heap[i] = call;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!sim_call_before(sp->heap[i], sp->heap[parent])) break;
    sim_heap_swap(sp->heap, i, parent);
    i = parent;
  }
  return true;
}

/* Takes the call at index i out of the heap: the last one fills the hole and
 * moves down or up to its place. */
static sim_call *sim_heap_remove(sim_provider *sp, size_t i) {
  sim_call **h = sp->heap;
  sim_call *taken = h[i];
  h[i] = h[--sp->heap_len];
  if (i == sp->heap_len) return taken;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, min = i;
    if (l < sp->heap_len && sim_call_before(h[l], h[min])) min = l;
    if (r < sp->heap_len && sim_call_before(h[r], h[min])) min = r;
    if (min == i) break;
    sim_heap_swap(h, i, min);
    i = min;
  }
  while (i > 0 && sim_call_before(h[i], h[(i - 1) / 2])) {
    sim_heap_swap(h, i, (i - 1) / 2);
    i = (i - 1) / 2;
  }
  return taken;
}

static sim_call *sim_heap_pop(sim_provider *sp) { return sim_heap_remove(sp, 0); }

/* ---- render queue (lock held) ---- */

static void sim_enqueue_work(sim_provider *sp, sim_call *call) {
  call->next = NULL;
  if (sp->work_tail)
    sp->work_tail->next = call;
  else
    sp->work_head = call;
  sp->work_tail = call;
  pthread_cond_signal(&sp->work_cond);
}

static sim_call *sim_dequeue_work(sim_provider *sp) {
  sim_call *call = sp->work_head;
  if (call) {
    sp->work_head = call->next;
    if (!sp->work_head) sp->work_tail = NULL;
  }
  return call;
}

static bool sim_is_stopping(sim_provider *sp) {
  pthread_mutex_lock(&sp->lock);
  bool s = sp->stopping;
  pthread_mutex_unlock(&sp->lock);
  return s;
}

/* ---- outcomes ---- */

static void sim_set_error(provider_outcome *o, provider_status status, bool retryable,
                          const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void sim_set_error(provider_outcome *o, provider_status status, bool retryable,
                          const char *code, const char *fmt, ...) {
  for (size_t i = 0; i < o->n_images; i++) free(o->images[i].data);
  free(o->images);
  o->images = NULL;
  o->n_images = 0;
  o->status = status;
  o->retryable = retryable;
  /* The sim's refusals are about the prompt, its only failure is our own. */
  o->error_class = status == PROVIDER_MODERATED ? PROVIDER_ERR_MODERATED
                   : retryable                  ? PROVIDER_ERR_INTERNAL
                                                : PROVIDER_ERR_BAD_REQUEST;
  snprintf(o->error_code, sizeof o->error_code, "%s", code);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(o->error_message, sizeof o->error_message, fmt, ap);
  va_end(ap);
}

/* The answer to a call cancel() stopped before it was drawn. */
static void sim_set_canceled(provider_outcome *o) {
  sim_set_error(o, PROVIDER_FAILED, false, PROVIDER_CANCELED_CODE, "sim: the call was canceled");
  o->error_class = PROVIDER_ERR_CANCELED;
}

static bool sim_marker_hit(const char *marker, const char *prompt) {
  return marker && strstr(prompt, marker) != NULL;
}

/* Image i's digest input: the prompt itself for the first, "prompt#i" after,
 * so a batch holds different pictures yet the first matches a single call. */
static bool sim_render_one(const sim_call *call, int i, provider_image *img) {
  char *input = NULL;
  if (i > 0) {
    size_t n = strlen(call->prompt) + 16;
    input = malloc(n);
    if (!input) return false;
    snprintf(input, n, "%s#%d", call->prompt, i);
  }
  bool ok = simpng_render(input ? input : call->prompt, call->width, call->height, &img->data,
                          &img->len);
  free(input);
  if (!ok) return false;
  snprintf(img->mime, sizeof img->mime, "%s",
           imagefmt_mime(imagefmt_detect(img->data, img->len)));
  img->width = call->width;
  img->height = call->height;
  return true;
}

static void sim_render_images(sim_provider *sp, sim_call *call) {
  provider_outcome *o = call->outcome;
  o->images = calloc((size_t)call->quantity, sizeof *o->images);
  if (!o->images) goto fail;
  for (int i = 0; i < call->quantity; i++) {
    if (sim_is_stopping(sp)) return; /* the call is about to be dropped: stop drawing */
    if (!sim_render_one(call, i, &o->images[i])) goto fail;
    o->n_images++;
  }
  return;
fail:
  LOG_WARN("sim_render_failed", "width=%d height=%d", call->width, call->height);
  sim_set_error(o, PROVIDER_FAILED, true, "internal_error", "sim: could not render the image");
}

/* Fills call->outcome; it is already FAILED if start() found the request invalid. */
static void sim_execute(sim_provider *sp, sim_call *call) {
  provider_outcome *o = call->outcome;
  if (o->status != PROVIDER_OK) return;
  if (sim_marker_hit(sp->moderate_marker, call->prompt)) {
    sim_set_error(o, PROVIDER_MODERATED, false, "content_moderated",
                  "sim: prompt matched the moderation marker");
  } else if (sim_marker_hit(sp->fail_marker, call->prompt)) {
    sim_set_error(o, PROVIDER_FAILED, false, "upstream_error",
                  "sim: prompt matched the failure marker");
  } else {
    sim_render_images(sp, call);
  }
}

/* ---- threads ---- */

static void *sim_timer_main(void *arg) {
  sim_provider *sp = arg;
  pthread_mutex_lock(&sp->lock);
  while (!sp->stopping) {
    if (sp->heap_len == 0) {
      pthread_cond_wait(&sp->timer_cond, &sp->lock);
      continue;
    }
    int64_t due = sp->heap[0]->due_ms;
    if (due <= time_mono_ms()) {
      sim_enqueue_work(sp, sim_heap_pop(sp));
      continue;
    }
    /* due is on time_mono_ms()'s clock, which is CLOCK_MONOTONIC like timer_cond. */
    struct timespec ts = {.tv_sec = (time_t)(due / 1000), .tv_nsec = (long)(due % 1000) * 1000000};
    pthread_cond_timedwait(&sp->timer_cond, &sp->lock, &ts);
  }
  pthread_mutex_unlock(&sp->lock);
  return NULL;
}

static void *sim_worker_main(void *arg) {
  sim_provider *sp = arg;
  pthread_mutex_lock(&sp->lock);
  for (;;) {
    while (!sp->work_head && !sp->stopping) pthread_cond_wait(&sp->work_cond, &sp->lock);
    if (sp->stopping) break;
    sim_call *call = sim_dequeue_work(sp);
    pthread_mutex_unlock(&sp->lock);

    sim_execute(sp, call);
    /* A call finished while destroy() runs is dropped like a pending one.
     * If destroy() starts right after this check, done() still runs, but
     * destroy() joins this thread, so no callback outlives it. */
    if (!sim_is_stopping(sp)) {
      provider_outcome *o = call->outcome;
      call->outcome = NULL;
      call->done(call->ctx, o);
    }
    sim_call_free(call);
    pthread_mutex_lock(&sp->lock);
  }
  pthread_mutex_unlock(&sp->lock);
  return NULL;
}

/* ---- provider ops ---- */

/* Works out the picture size, or presets the outcome to a non-retryable
 * failure: retrying a request the model cannot serve would not help. */
static void sim_plan(sim_call *call, const provider_request *req) {
  provider_outcome *o = call->outcome;
  const catalog_model *m = catalog_find(req->model);
  if (!m) {
    sim_set_error(o, PROVIDER_FAILED, false, "invalid_request", "sim: unknown model \"%.64s\"",
                  req->model ? req->model : "");
    return;
  }
  int ref_w = 0, ref_h = 0;
  if (req->n_inputs > 0 && req->inputs && req->inputs[0].data &&
      !imagefmt_dimensions(req->inputs[0].data, req->inputs[0].len, &ref_w, &ref_h))
    ref_w = ref_h = 0;
  const char *asked = req->aspect_ratio ? req->aspect_ratio : "auto";
  const char *ratio = catalog_resolve_ratio(m, asked, ref_w, ref_h);
  const char *res =
      catalog_resolution(m, req->resolution ? req->resolution : m->default_resolution);
  if (!ratio || !res || !catalog_pixel_size(m, ratio, res, &call->width, &call->height)) {
    sim_set_error(o, PROVIDER_FAILED, false, "invalid_request",
                  "sim: %s does not offer aspect ratio \"%.16s\" at resolution \"%.16s\"",
                  m->name, asked, req->resolution ? req->resolution : "(default)");
    return;
  }
  if (req->quantity < 1 || req->quantity > SIM_MAX_QUANTITY) {
    sim_set_error(o, PROVIDER_FAILED, false, "invalid_request",
                  "sim: quantity must be between 1 and %d", SIM_MAX_QUANTITY);
    return;
  }
  call->quantity = req->quantity;
}

static int sim_start(provider *p, const provider_request *req, provider_done_fn done, void *ctx) {
  sim_provider *sp = (sim_provider *)p;
  if (!sp || !req || !done) return -1;
  int64_t now = time_mono_ms();
  sim_call *call = calloc(1, sizeof *call);
  if (!call) return -1;
  call->prompt = strdup(req->prompt ? req->prompt : "");
  call->outcome = provider_outcome_new(PROVIDER_OK);
  if (!call->prompt || !call->outcome) {
    sim_call_free(call);
    return -1;
  }
  call->done = done;
  call->ctx = ctx;
  call->due_ms = now + sp->delay_ms;
  sim_plan(call, req);

  pthread_mutex_lock(&sp->lock);
  bool ok = !sp->stopping;
  if (ok && call->outcome->status != PROVIDER_OK) {
    sim_enqueue_work(sp, call); /* an invalid request is refused at once, like a real 400 */
  } else if (ok) {
    call->seq = sp->next_seq++;
    ok = sim_heap_push(sp, call);
    if (ok && sp->heap[0] == call) pthread_cond_signal(&sp->timer_cond);
  }
  pthread_mutex_unlock(&sp->lock);
  if (!ok) sim_call_free(call);
  return ok ? 0 : -1;
}

/* A waiting call answers at once, canceled, through the render threads like
 * any other: done() stays on the provider's threads and is never called
 * twice. A call in the render queue is only marked: the outcome no longer
 * says OK, so sim_execute leaves it alone. One already answered (an invalid
 * request waiting to be delivered) keeps its answer. */
static void sim_cancel(provider *p, void *ctx) {
  sim_provider *sp = (sim_provider *)p;
  if (!sp) return;
  pthread_mutex_lock(&sp->lock);
  /* A removal reorders the heap, so each search starts over; one ctx has one
   * call in flight, so this is one pass to find it and one to see it is gone. */
  for (size_t i = 0; i < sp->heap_len;) {
    if (sp->heap[i]->ctx != ctx) {
      i++;
      continue;
    }
    sim_call *call = sim_heap_remove(sp, i);
    sim_set_canceled(call->outcome);
    sim_enqueue_work(sp, call);
    i = 0;
  }
  for (sim_call *call = sp->work_head; call; call = call->next)
    if (call->ctx == ctx && call->outcome->status == PROVIDER_OK) sim_set_canceled(call->outcome);
  pthread_mutex_unlock(&sp->lock);
}

/* Stops and joins every started thread, then frees all that is left. */
static void sim_destroy(provider *p) {
  sim_provider *sp = (sim_provider *)p;
  if (!sp) return;
  pthread_mutex_lock(&sp->lock);
  sp->stopping = true;
  pthread_cond_broadcast(&sp->timer_cond);
  pthread_cond_broadcast(&sp->work_cond);
  pthread_mutex_unlock(&sp->lock);
  if (sp->timer_started) pthread_join(sp->timer, NULL);
  for (int i = 0; i < sp->n_workers; i++) pthread_join(sp->workers[i], NULL);

  for (size_t i = 0; i < sp->heap_len; i++) sim_call_free(sp->heap[i]);
  sim_call *call;
  while ((call = sim_dequeue_work(sp))) sim_call_free(call);
  free(sp->heap);
  free(sp->workers);
  free(sp->fail_marker);
  free(sp->moderate_marker);
  pthread_cond_destroy(&sp->timer_cond);
  pthread_cond_destroy(&sp->work_cond);
  pthread_mutex_destroy(&sp->lock);
  free(sp);
}

static const provider_ops sim_ops = {
    .kind = "sim", .start = sim_start, .destroy = sim_destroy, .cancel = sim_cancel};

/* A copy of a marker, NULL for an empty or absent one; false when out of memory. */
static bool sim_copy_marker(const char *marker, char **out) {
  *out = NULL;
  if (!marker || !*marker) return true;
  *out = strdup(marker);
  return *out != NULL;
}

static bool sim_init_sync(sim_provider *sp) {
  pthread_condattr_t attr;
  if (pthread_condattr_init(&attr) != 0) return false;
  bool ok = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0 &&
            pthread_cond_init(&sp->timer_cond, &attr) == 0;
  pthread_condattr_destroy(&attr);
  if (!ok) return false;
  if (pthread_cond_init(&sp->work_cond, NULL) != 0) {
    pthread_cond_destroy(&sp->timer_cond);
    return false;
  }
  if (pthread_mutex_init(&sp->lock, NULL) != 0) {
    pthread_cond_destroy(&sp->timer_cond);
    pthread_cond_destroy(&sp->work_cond);
    return false;
  }
  return true;
}

static bool sim_start_threads(sim_provider *sp, int n) {
  sp->workers = calloc((size_t)n, sizeof *sp->workers);
  if (!sp->workers) return false;
  if (pthread_create(&sp->timer, NULL, sim_timer_main, sp) != 0) return false;
  sp->timer_started = true;
  for (int i = 0; i < n; i++) {
    if (pthread_create(&sp->workers[i], NULL, sim_worker_main, sp) != 0) return false;
    sp->n_workers++;
  }
  return true;
}

provider *sim_provider_create(const sim_config *cfg) {
  if (!cfg) return NULL;
  sim_provider *sp = calloc(1, sizeof *sp);
  if (!sp) return NULL;
  sp->base.ops = &sim_ops;
  snprintf(sp->base.name, sizeof sp->base.name, "sim");
  sp->delay_ms = cfg->delay_ms > 0 ? cfg->delay_ms : 0;
  if (!sim_copy_marker(cfg->fail_marker, &sp->fail_marker) ||
      !sim_copy_marker(cfg->moderate_marker, &sp->moderate_marker) || !sim_init_sync(sp)) {
    free(sp->fail_marker);
    free(sp->moderate_marker);
    free(sp);
    return NULL;
  }
  int n = cfg->render_threads > 0 ? cfg->render_threads : SIM_DEFAULT_THREADS;
  if (n > SIM_MAX_THREADS) n = SIM_MAX_THREADS;
  if (!sim_start_threads(sp, n)) {
    LOG_ERROR("sim_could_not_start_threads", "threads=%d", n);
    sim_destroy(&sp->base); /* joins whatever did start */
    return NULL;
  }
  return &sp->base;
}
