/* workpool.c - see workpool.h. */
#include "util/workpool.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

struct workpool {
  pthread_mutex_t lock;
  pthread_cond_t work_cond; /* workers wait for items */
  pthread_cond_t idle_cond; /* drain waits for an empty, idle pool */
  workpool_item *head, *tail;
  int busy;                 /* items running */
  bool stopping;
  pthread_t *threads;
  int n_threads;            /* started */
  void (*thread_exit)(void);
};

static void *workpool_main(void *arg) {
  workpool *p = arg;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (!p->head && !p->stopping) pthread_cond_wait(&p->work_cond, &p->lock);
    if (p->stopping) break;
    workpool_item *w = p->head;
    p->head = w->next;
    if (!p->head) p->tail = NULL;
    p->busy++;
    pthread_mutex_unlock(&p->lock);
    w->run(w); /* w may be gone after this */
    pthread_mutex_lock(&p->lock);
    p->busy--;
    if (!p->head && p->busy == 0) pthread_cond_broadcast(&p->idle_cond);
  }
  pthread_mutex_unlock(&p->lock);
  if (p->thread_exit) p->thread_exit();
  return NULL;
}

static bool workpool_init_sync(workpool *p) {
  if (pthread_mutex_init(&p->lock, NULL) != 0) return false;
  if (pthread_cond_init(&p->work_cond, NULL) != 0) {
    pthread_mutex_destroy(&p->lock);
    return false;
  }
  if (pthread_cond_init(&p->idle_cond, NULL) != 0) {
    pthread_cond_destroy(&p->work_cond);
    pthread_mutex_destroy(&p->lock);
    return false;
  }
  return true;
}

workpool *workpool_create(int threads, void (*thread_exit)(void)) {
  if (threads < 1) threads = 1;
  workpool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->thread_exit = thread_exit;
  p->threads = calloc((size_t)threads, sizeof *p->threads);
  if (!p->threads || !workpool_init_sync(p)) {
    free(p->threads);
    free(p);
    return NULL;
  }
  for (int i = 0; i < threads; i++) {
    if (pthread_create(&p->threads[p->n_threads], NULL, workpool_main, p) != 0) break;
    p->n_threads++;
  }
  if (p->n_threads == 0) {
    workpool_destroy(p);
    return NULL;
  }
  return p;
}

void workpool_submit(workpool *p, workpool_item *w) {
  w->next = NULL;
  pthread_mutex_lock(&p->lock);
  if (p->stopping) {
    pthread_mutex_unlock(&p->lock);
    w->drop(w);
    return;
  }
  if (p->tail)
    p->tail->next = w;
  else
    p->head = w;
  p->tail = w;
  pthread_cond_signal(&p->work_cond);
  pthread_mutex_unlock(&p->lock);
}

void workpool_drain(workpool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  while ((p->head || p->busy > 0) && !p->stopping) pthread_cond_wait(&p->idle_cond, &p->lock);
  pthread_mutex_unlock(&p->lock);
}

void workpool_destroy(workpool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  p->stopping = true;
  pthread_cond_broadcast(&p->work_cond);
  pthread_cond_broadcast(&p->idle_cond);
  pthread_mutex_unlock(&p->lock);
  for (int i = 0; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
  workpool_item *w = p->head;
  while (w) {
    workpool_item *next = w->next;
    w->drop(w);
    w = next;
  }
  pthread_cond_destroy(&p->idle_cond);
  pthread_cond_destroy(&p->work_cond);
  pthread_mutex_destroy(&p->lock);
  free(p->threads);
  free(p);
}
