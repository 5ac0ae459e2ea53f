/* blob.h - object storage for images (results and reference inputs).
 *
 * Keys are relative paths of [A-Za-z0-9._/-] without "..", chosen by the
 * caller. Backends: fs.c (a folder, the default); S3 and a mirror of two come
 * later. put is atomic: a reader sees the whole object or none. */
#ifndef IMGATE_BLOB_H
#define IMGATE_BLOB_H

#include <stddef.h>
#include <stdint.h>

enum { BLOB_OK = 0, BLOB_NOT_FOUND = -1, BLOB_ERROR = -2, BLOB_INVALID_KEY = -3 };

/* An object opened for reading: either a file descriptor to send from (fd >= 0,
 * data NULL) or bytes in memory (fd == -1). Release with blob_object_release. */
typedef struct blob_object {
  int fd;
  void *data;
  uint64_t size;
} blob_object;

typedef struct blob blob;

typedef struct blob_ops {
  const char *name; /* "fs" */
  int (*put)(blob *b, const char *key, const void *data, size_t len, const char *content_type);
  int (*open)(blob *b, const char *key, blob_object *out);
  /* Reads the whole object into memory (*data malloc'd, free it); max_len caps it (BLOB_ERROR beyond). */
  int (*read)(blob *b, const char *key, size_t max_len, uint8_t **data, size_t *len);
  int (*remove)(blob *b, const char *key); /* NOT_FOUND is not an error worth logging */
  void (*close)(blob *b);
} blob_ops;

struct blob {
  const blob_ops *ops;
};

/* A store rooted at dir (created if missing). NULL with err on failure. */
blob *blob_fs_open(const char *dir, char *err, size_t err_size);

/* Longest key any backend accepts. */
#define BLOB_KEY_MAX 512

/* True when key is acceptable to every backend. */
int blob_key_valid(const char *key);
/* Closes the fd or frees the data of o. */
void blob_object_release(blob_object *o);

#endif
