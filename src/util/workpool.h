/* workpool.h - a small pool of threads that run queued items in order.
 *
 * For work that must leave the thread that found it because it is slow: the
 * curl loop hands upstream answers to their adapter's pool for parsing
 * (upstream/adapter.h), and the engine hands delivered images to its pool for
 * transcoding (core/engine.c). Items are the caller's memory, linked in
 * place: submitting never allocates and never fails. */
#ifndef IMGATE_WORKPOOL_H
#define IMGATE_WORKPOOL_H

typedef struct workpool_item workpool_item;
struct workpool_item {
  void (*run)(workpool_item *w);  /* on a pool thread; may free w */
  void (*drop)(workpool_item *w); /* instead of run, when the pool stops first; must free w
                                     (or hand it back to its owner) */
  workpool_item *next;            /* the pool's */
};

typedef struct workpool workpool;

/* Starts threads (at least 1). thread_exit (may be NULL) runs on each pool
 * thread just before it ends, for libraries that keep per-thread state
 * (libvips). NULL when no thread could be started. */
workpool *workpool_create(int threads, void (*thread_exit)(void));
/* Queues w. After destroy has begun, w is dropped at once. Thread-safe. */
void workpool_submit(workpool *p, workpool_item *w);
/* Waits until the queue is empty and no item is running. */
void workpool_drain(workpool *p);
/* Stops and joins the threads (an item already running finishes), then
 * drops every item still queued, oldest first. NULL is fine. */
void workpool_destroy(workpool *p);

#endif
