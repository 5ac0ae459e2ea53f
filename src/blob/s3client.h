/* s3client.h - an S3 client on a curl loop (upstream/curlloop.h).
 *
 * Every operation is asynchronous: it builds a request, signs it with
 * libcurl's SigV4 (CURLOPT_AWS_SIGV4 "aws:amz:REGION:s3") and hands it to the
 * loop; its callback runs later, once, on the loop thread, and must not block.
 * s3sync.h has blocking versions for callers that may block.
 *
 * Payload hashes (x-amz-content-sha256, which curl 7.88 does not set for S3):
 * a body in memory is hashed (SHA-256) and the hash signed; a body streamed
 * from a file (a whole object or a multipart part) is sent as
 * UNSIGNED-PAYLOAD, which S3 accepts for any request signed in the
 * Authorization header: hashing it first would read every byte twice, and
 * the bytes are protected on the way by TLS (https endpoints).
 *
 * Keys are any UTF-8 up to 1024 bytes; the client encodes them the way S3
 * signs them (every byte but unreserved ones and '/' percent-encoded).
 *
 * Memory: bodies from a file are read a buffer at a time by libcurl's read
 * callback (pread, so several parts of one file go up at once); nothing
 * holds a part or an object whole. A GET's body is kept in memory up to a cap
 * the caller gives. */
#ifndef IMGATE_S3CLIENT_H
#define IMGATE_S3CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blob/s3config.h"
#include "blob/s3xml.h"
#include "upstream/curlloop.h"
#include "util/buf.h"

/* What became of a request, in the few classes a caller acts on. */
typedef enum {
  S3_OK = 0,
  S3_NOT_FOUND,  /* no such key, bucket or upload (404, NoSuchKey, NoSuchBucket, NoSuchUpload) */
  S3_DENIED,     /* refused: credentials, signature, clock, policy (403, AccessDenied,
                  * SignatureDoesNotMatch, InvalidAccessKeyId, ...) */
  S3_RETRYABLE,  /* worth trying again later: SlowDown, 5xx, a network failure or timeout */
  S3_FAILED,     /* anything else: a bad request, a local error; retrying will not help */
} s3_status;

/* The class of an answer that is not a success: S3's error Code decides
 * when there is one ("" when none), the HTTP status otherwise (404 not
 * found, 401/403 denied, 429 and 5xx retryable). Never S3_OK. */
s3_status s3_status_of(long http_status, const char *code);

/* "ok", "not_found", "denied", "retryable", "failed". */
const char *s3_status_name(s3_status s);

/* What an operation's callback receives. The client frees it (and all it
 * points to) when the callback returns: take what you need, e.g.
 * buf_steal(&res->body), or s3_result_move. */
typedef struct s3_result {
  s3_status status;
  long http_status;         /* 0 when no answer came */
  char error_code[64];      /* S3's Code ("NoSuchKey"); "" when none */
  char message[512];        /* S3's Message, curl's error, or ours; "" on success */
  char request_id[128];     /* x-amz-request-id, for S3's support and the logs */
  /* get, head: the object */
  char etag[80];            /* put, part, complete too */
  char content_type[128];
  int64_t last_modified_ms; /* 0 when not given */
  uint64_t object_size;     /* the whole object's size (a ranged get: from Content-Range) */
  uint64_t range_start;     /* get: the first byte of body within the object */
  buf body;                 /* get: the bytes */
  /* list */
  s3_list_page list;
  /* multipart create */
  char *upload_id;
} s3_result;

/* Frees what r points to and zeroes it. */
void s3_result_free(s3_result *r);
/* Moves src into dst (dst's old contents are not freed); src is left empty. */
void s3_result_move(s3_result *dst, s3_result *src);

typedef void (*s3_done_fn)(void *ctx, s3_result *res);

typedef struct s3_client s3_client;

/* A client for the bucket cfg names (copied, then checked with
 * s3_config_check). loop runs its requests; NULL makes a client that only
 * presigns. NULL with err when the configuration is unusable. */
s3_client *s3_client_new(const s3_config *cfg, curlloop *loop, char *err, size_t err_size);
/* The checked configuration in use (endpoint normalised). */
const s3_config *s3_client_config(const s3_client *c);
/* Operations started and not yet called back. */
size_t s3_client_in_flight(const s3_client *c);
/* Frees the client. No operation may be in flight: destroy the loop first
 * (which calls every pending operation back, failed) or wait for them. */
void s3_client_free(s3_client *c);

/* True when S3 takes key: 1..1024 bytes, no NUL (by construction), valid
 * UTF-8 is not required by S3 and not checked. */
bool s3_key_valid(const char *key);

/* Every operation returns 0 once started (done will run exactly once, on the
 * loop thread, never inside this call), or -1 when it could not start (an
 * invalid key or argument, no loop, out of memory, the loop stopping): then
 * done never runs. Arguments are copied unless said otherwise. */

/* PutObject of len bytes at data, which must stay valid and unchanged until
 * done runs (not copied: images are large). content_type NULL =
 * application/octet-stream. res->etag is the new object's. */
int s3_put_object(s3_client *c, const char *key, const void *data, size_t len,
                  const char *content_type, s3_done_fn done, void *ctx);

/* PutObject of the len bytes of fd from offset (a spool file). fd must stay
 * open until done runs; it is read with pread, so its file offset is not
 * used or moved. */
int s3_put_object_fd(s3_client *c, const char *key, int fd, uint64_t offset, uint64_t len,
                     const char *content_type, s3_done_fn done, void *ctx);

/* The size-deciding upload of len bytes of fd from offset 0: one PutObject
 * when len is at most the configured part size, otherwise a multipart upload
 * (create, parts from file ranges with up to max_parts_in_flight at once,
 * complete; on any failure the upload is aborted so no parts linger, and the
 * first failure is reported). Same rules about fd as s3_put_object_fd. */
int s3_put_file(s3_client *c, const char *key, int fd, uint64_t len, const char *content_type,
                s3_done_fn done, void *ctx);

/* GetObject, the body into res->body, at most max_bytes of it (a larger
 * answer fails, S3_FAILED). With range_len > 0 only bytes
 * [range_start, range_start + range_len) are asked for (a Range header; the
 * store may send fewer at the object's end). */
int s3_get_object(s3_client *c, const char *key, uint64_t range_start, uint64_t range_len,
                  size_t max_bytes, s3_done_fn done, void *ctx);

/* HeadObject: size, ETag, type and time of the object, no body. */
int s3_head_object(s3_client *c, const char *key, s3_done_fn done, void *ctx);

/* DeleteObject. S3 answers success for a key that does not exist. */
int s3_delete_object(s3_client *c, const char *key, s3_done_fn done, void *ctx);

/* ListObjectsV2: one page of the keys starting with prefix (NULL or "" =
 * all), after continuation_token (NULL = from the start), at most max_keys
 * (1..1000; 0 = S3's default of 1000). res->list holds the page; when
 * res->list.truncated, pass res->list.next_token for the next one. */
int s3_list_objects(s3_client *c, const char *prefix, const char *continuation_token,
                    int max_keys, s3_done_fn done, void *ctx);

/* The multipart steps, for callers that drive an upload themselves
 * (s3_put_file drives one for a file). */
/* CreateMultipartUpload: res->upload_id names the upload. */
int s3_multipart_create(s3_client *c, const char *key, const char *content_type, s3_done_fn done,
                        void *ctx);
/* UploadPart number part_number (1..10000) from len bytes of fd at offset:
 * res->etag is what complete needs. */
int s3_multipart_upload_part(s3_client *c, const char *key, const char *upload_id,
                             int part_number, int fd, uint64_t offset, uint64_t len,
                             s3_done_fn done, void *ctx);
/* CompleteMultipartUpload with the ETags of parts 1..n in order. A 200 whose
 * body is an <Error> is reported as that error. */
int s3_multipart_complete(s3_client *c, const char *key, const char *upload_id,
                          const char *const *etags, size_t n, s3_done_fn done, void *ctx);
/* AbortMultipartUpload: the parts sent so far are dropped by the store. */
int s3_multipart_abort(s3_client *c, const char *key, const char *upload_id, s3_done_fn done,
                       void *ctx);

/* A presigned GET URL for key, valid expires_s seconds (1..604800) from
 * now_s (unix seconds; pass time(NULL)), signed by us (SigV4 query string,
 * HMAC-SHA256): anyone holding it may read the object until then, with no
 * credentials. malloc'd; NULL on an invalid key or expiry. */
char *s3_presign_get(const s3_client *c, const char *key, int expires_s, int64_t now_s);

#endif
