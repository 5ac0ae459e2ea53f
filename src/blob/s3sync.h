/* s3sync.h - blocking versions of the S3 client's operations, for callers
 * that may wait: tests, the command line, a repair pass on its own thread.
 *
 * Each starts the asynchronous operation and waits on a condition variable
 * until its callback has run, then hands the result over: out is always
 * filled (free it with s3_result_free) and its status returned. An operation
 * that cannot start gives S3_FAILED with a message. Never call these on the
 * client's loop thread (from an operation's callback): the loop would wait
 * for itself. */
#ifndef IMGATE_S3SYNC_H
#define IMGATE_S3SYNC_H

#include "blob/s3client.h"

s3_status s3_put_object_sync(s3_client *c, const char *key, const void *data, size_t len,
                             const char *content_type, s3_result *out);
s3_status s3_put_file_sync(s3_client *c, const char *key, int fd, uint64_t len,
                           const char *content_type, s3_result *out);
s3_status s3_get_object_sync(s3_client *c, const char *key, uint64_t range_start,
                             uint64_t range_len, size_t max_bytes, s3_result *out);
s3_status s3_head_object_sync(s3_client *c, const char *key, s3_result *out);
s3_status s3_delete_object_sync(s3_client *c, const char *key, s3_result *out);
s3_status s3_list_objects_sync(s3_client *c, const char *prefix, const char *continuation_token,
                               int max_keys, s3_result *out);

#endif
