/* dheap.h - an intrusive min-heap of deadlines.
 *
 * The owner embeds a dheap_node in each of its objects; the heap keeps
 * pointers to the nodes and writes each node's position back into it, so an
 * object can leave the heap or move its deadline in O(log n) without a
 * search. Used for timeouts of many objects of which few expire: pushing,
 * moving and removing cost O(log n); looking at the earliest costs O(1).
 * Not thread-safe: one owner thread per heap. */
#ifndef IMGATE_DHEAP_H
#define IMGATE_DHEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DHEAP_NONE ((size_t)-1)

typedef struct dheap_node {
  int64_t due;  /* the deadline, in the owner's clock (e.g. time_mono_ms) */
  size_t index; /* position in the heap; DHEAP_NONE when not in it */
} dheap_node;

typedef struct dheap {
  dheap_node **items;
  size_t len, cap;
} dheap;

#define DHEAP_INIT {NULL, 0, 0}

/* A node that is in no heap (call before first use). */
static inline void dheap_node_init(dheap_node *n) { n->index = DHEAP_NONE; }
static inline bool dheap_node_queued(const dheap_node *n) { return n->index != DHEAP_NONE; }

/* Puts n in the heap due at `due`, or moves it there when it is in already.
 * False only when memory runs out (n is then not in the heap). */
bool dheap_set(dheap *h, dheap_node *n, int64_t due);
/* Takes n out of the heap; nothing when it is not in it. */
void dheap_remove(dheap *h, dheap_node *n);
/* The earliest node, or NULL when the heap is empty. */
static inline dheap_node *dheap_top(const dheap *h) { return h->len ? h->items[0] : NULL; }
void dheap_free(dheap *h);

#endif
