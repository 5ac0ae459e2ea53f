/* blob.c - what every blob backend shares: the key rules and object release. */
#include "blob/blob.h"

#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

/* Long enough for any key imgate builds, short enough to stay far below
 * PATH_MAX once a backend prefixes its root. */

static bool blob_key_char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '_' || c == '-' || c == '/';
}

/* A segment of "." or ".." would step outside the key space on a filesystem
 * and is ambiguous in object stores, so neither is allowed anywhere. */
static bool blob_segment_ok(const char *seg, size_t len) {
  if (len == 0) return false;
  if (len == 1 && seg[0] == '.') return false;
  if (len == 2 && seg[0] == '.' && seg[1] == '.') return false;
  return true;
}

int blob_key_valid(const char *key) {
  if (!key) return 0;
  const char *seg = key;
  size_t i = 0;
  for (; key[i]; i++) {
    if (i >= BLOB_KEY_MAX || !blob_key_char(key[i])) return 0;
    if (key[i] == '/') {
      if (!blob_segment_ok(seg, (size_t)(key + i - seg))) return 0;
      seg = key + i + 1;
    }
  }
  return blob_segment_ok(seg, (size_t)(key + i - seg));
}

void blob_object_release(blob_object *o) {
  if (!o) return;
  if (o->fd >= 0) close(o->fd);
  free(o->data);
  o->fd = -1;
  o->data = NULL;
  o->size = 0;
}
