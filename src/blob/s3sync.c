/* s3sync.c - an S3 operation, started and waited for. */
#include "blob/s3sync.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  s3_result res;
} waiter;

static void waiter_init(waiter *w) {
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  w->done = false;
  memset(&w->res, 0, sizeof w->res);
}

/* The operation's callback, on the loop thread: takes the result and wakes
 * the caller. */
static void waiter_done(void *ctx, s3_result *res) {
  waiter *w = ctx;
  pthread_mutex_lock(&w->mu);
  s3_result_move(&w->res, res);
  w->done = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Waits when the operation started (rc 0); gives the result to out. */
static s3_status waiter_finish(waiter *w, int rc, s3_result *out) {
  if (rc == 0) {
    pthread_mutex_lock(&w->mu);
    while (!w->done) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    s3_result_move(out, &w->res);
  } else {
    memset(out, 0, sizeof *out);
    out->status = S3_FAILED;
    snprintf(out->message, sizeof out->message,
             "the request could not start (an invalid key or argument, no loop, out of memory, "
             "or the loop is stopping)");
  }
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
  return out->status;
}

s3_status s3_put_object_sync(s3_client *c, const char *key, const void *data, size_t len,
                             const char *content_type, s3_result *out) {
  waiter w;
  waiter_init(&w);
  return waiter_finish(&w, s3_put_object(c, key, data, len, content_type, waiter_done, &w), out);
}

s3_status s3_put_file_sync(s3_client *c, const char *key, int fd, uint64_t len,
                           const char *content_type, s3_result *out) {
  waiter w;
  waiter_init(&w);
  return waiter_finish(&w, s3_put_file(c, key, fd, len, content_type, waiter_done, &w), out);
}

s3_status s3_get_object_sync(s3_client *c, const char *key, uint64_t range_start,
                             uint64_t range_len, size_t max_bytes, s3_result *out) {
  waiter w;
  waiter_init(&w);
  return waiter_finish(
      &w, s3_get_object(c, key, range_start, range_len, max_bytes, waiter_done, &w), out);
}

s3_status s3_head_object_sync(s3_client *c, const char *key, s3_result *out) {
  waiter w;
  waiter_init(&w);
  return waiter_finish(&w, s3_head_object(c, key, waiter_done, &w), out);
}

s3_status s3_delete_object_sync(s3_client *c, const char *key, s3_result *out) {
  waiter w;
  waiter_init(&w);
  return waiter_finish(&w, s3_delete_object(c, key, waiter_done, &w), out);
}

s3_status s3_list_objects_sync(s3_client *c, const char *prefix, const char *continuation_token,
                               int max_keys, s3_result *out) {
  waiter w;
  waiter_init(&w);
  return waiter_finish(
      &w, s3_list_objects(c, prefix, continuation_token, max_keys, waiter_done, &w), out);
}
