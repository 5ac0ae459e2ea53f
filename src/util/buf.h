/* buf.h - a growable byte buffer, always NUL-terminated for convenience. */
#ifndef IMGATE_BUF_H
#define IMGATE_BUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct buf {
  char *data; /* NULL until the first append; data[len] == '\0' after any append */
  size_t len;
  size_t cap;
} buf;

#define BUF_INIT {NULL, 0, 0}

/* Makes room for extra more bytes (and the NUL) in one allocation; false
 * when memory runs out. Appending that much afterwards does not reallocate. */
bool buf_reserve(buf *b, size_t extra);
/* Appends n bytes; returns false (and leaves b unchanged) when memory runs out. */
bool buf_append(buf *b, const void *data, size_t n);
bool buf_append_str(buf *b, const char *s);
bool buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the storage to the caller (who frees it) and resets b. */
char *buf_steal(buf *b);
void buf_free(buf *b);

#endif
