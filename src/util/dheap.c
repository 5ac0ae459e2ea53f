/* dheap.c - see dheap.h. */
#include "util/dheap.h"

#include <assert.h>
#include <stdlib.h>

static void place(dheap *h, size_t i, dheap_node *n) {
  h->items[i] = n;
  n->index = i;
}

static void sift_up(dheap *h, size_t i) {
  dheap_node *n = h->items[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (h->items[parent]->due <= n->due) break;
    place(h, i, h->items[parent]);
    i = parent;
  }
  place(h, i, n);
}

static void sift_down(dheap *h, size_t i) {
  dheap_node *n = h->items[i];
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= h->len) break;
    if (child + 1 < h->len && h->items[child + 1]->due < h->items[child]->due) child++;
    if (n->due <= h->items[child]->due) break;
    place(h, i, h->items[child]);
    i = child;
  }
  place(h, i, n);
}

bool dheap_set(dheap *h, dheap_node *n, int64_t due) {
  if (dheap_node_queued(n)) {
    assert(n->index < h->len && h->items[n->index] == n);
    int64_t old = n->due;
    n->due = due;
    if (due < old) sift_up(h, n->index);
    else if (due > old) sift_down(h, n->index);
    return true;
  }
  if (h->len == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    dheap_node **items = realloc(h->items, cap * sizeof *items);
    if (!items) return false;
    h->items = items;
    h->cap = cap;
  }
  n->due = due;
  place(h, h->len++, n);
  sift_up(h, h->len - 1);
  return true;
}

void dheap_remove(dheap *h, dheap_node *n) {
  if (!dheap_node_queued(n)) return;
  size_t i = n->index;
  assert(i < h->len && h->items[i] == n);
  n->index = DHEAP_NONE;
  dheap_node *last = h->items[--h->len];
  if (i == h->len) return;
  place(h, i, last);
  /* The moved node may belong above or below its new place. */
  sift_up(h, i);
  sift_down(h, last->index);
}

void dheap_free(dheap *h) {
  free(h->items);
  h->items = NULL;
  h->len = h->cap = 0;
}
