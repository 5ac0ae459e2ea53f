/* blob.h - object storage for images (results and reference inputs).
 *
 * Keys are relative paths of [A-Za-z0-9._/-] without "..", chosen by the
 * caller. Backends: fs.c (a folder, the default); S3 and a mirror of two come
 * later. put is atomic: a reader sees the whole object or none. */
#ifndef IMGATE_BLOB_H
#define IMGATE_BLOB_H

#include <stdbool.h>
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

/* One entry of a listing (blob_ops.list). */
typedef struct blob_entry {
  /* An object's key; for a temporary entry, the name to give remove_temp. */
  const char *key;
  uint64_t size;
  int64_t mtime_ms; /* last modification, unix ms */
  /* A write that never completed (fs: a ".~put-" file a crash left behind;
   * S3 later: an unfinished multipart upload). Not an object: no reader can
   * ask for it, only remove_temp removes it. */
  bool temporary;
} blob_entry;

/* A write in progress (blob_ops.begin): what a backend returns embeds this
 * first. Written in order by one thread at a time; ends with exactly one
 * commit or abort, which frees it. */
typedef struct blob_writer {
  blob *b;
} blob_writer;

/* Called once per entry; a positive return stops the listing. The callback
 * may remove the entry it is given. */
typedef int (*blob_list_fn)(void *ctx, const blob_entry *e);

typedef struct blob_ops {
  const char *name; /* "fs" */
  int (*put)(blob *b, const char *key, const void *data, size_t len, const char *content_type);
  /* A streamed put, for objects that arrive in pieces (an image decoded as
   * its upstream answer comes in): begin, write any number of times, then
   * commit or abort. Nothing is visible under key before commit; commit
   * makes the whole object visible at once and as durable as put, abort
   * leaves nothing behind. An object already under key stays readable until
   * the commit replaces it. After a failed write only abort is allowed. */
  int (*begin)(blob *b, const char *key, const char *content_type, blob_writer **out);
  int (*write)(blob_writer *w, const void *data, size_t len);
  int (*commit)(blob_writer *w); /* frees w, whatever it answers */
  void (*abort)(blob_writer *w); /* frees w */
  int (*open)(blob *b, const char *key, blob_object *out);
  /* Reads the whole object into memory (*data malloc'd, free it); max_len caps it (BLOB_ERROR beyond). */
  int (*read)(blob *b, const char *key, size_t max_len, uint8_t **data, size_t *len);
  int (*remove)(blob *b, const char *key); /* NOT_FOUND is not an error worth logging */
  /* Reports every object whose key starts with prefix ("" for all), and
   * every temporary entry whose name does, to fn. Streams: memory stays
   * bounded however many objects there are. Entries of one folder (keys
   * sharing everything up to their last '/') come one after another; no other
   * order is promised. Objects written or removed during the listing may or
   * may not be reported. Returns BLOB_OK when everything was reported, fn's
   * positive value when fn stopped the listing, BLOB_ERROR when part of the
   * store could not be listed (logged; the rest was reported). */
  int (*list)(blob *b, const char *prefix, blob_list_fn fn, void *ctx);
  /* Removes a temporary entry by the name a listing gave. NOT_FOUND when it
   * is gone, BLOB_INVALID_KEY when name is not a temporary entry's. */
  int (*remove_temp)(blob *b, const char *name);
  void (*close)(blob *b);
} blob_ops;

struct blob {
  const blob_ops *ops;
};

/* A store rooted at dir (created if missing). NULL with err on failure. */
blob *blob_fs_open(const char *dir, char *err, size_t err_size);

/* A streamed put that also counts what it writes, so that the size the
 * store committed can be checked against the size the writer meant. (No
 * content hash: at 1.7 GB/s SHA-256 was a fifth of the CPU an upstream's
 * 30 MB image costs, and nothing needs it: an image never changes under its
 * name, so its ETag need not be derived from its bytes.) */
typedef struct blob_stream blob_stream;
typedef struct blob_stream_info {
  uint64_t size;
} blob_stream_info;
/* BLOB_OK with *out, or the backend's error (BLOB_ERROR when memory runs out). */
int blob_stream_begin(blob *b, const char *key, const char *content_type, blob_stream **out);
int blob_stream_write(blob_stream *s, const void *data, size_t len);
/* Commits (blob_ops.commit) and fills info; frees s whatever it answers. */
int blob_stream_commit(blob_stream *s, blob_stream_info *info);
/* Aborts and frees s; NULL is fine. */
void blob_stream_abort(blob_stream *s);

/* Longest key any backend accepts. */
#define BLOB_KEY_MAX 512

/* True when key is acceptable to every backend. */
int blob_key_valid(const char *key);
/* Closes the fd or frees the data of o. */
void blob_object_release(blob_object *o);

#endif
