/* s3sign.h - the parts of AWS Signature Version 4 the S3 client computes
 * itself: S3's URI encoding and the query-string signature of presigned
 * URLs. Requests the client sends are signed by libcurl (CURLOPT_AWS_SIGV4);
 * a presigned URL is never sent by us, so libcurl cannot sign it.
 *
 * Pure functions, no I/O: safe from any thread. */
#ifndef IMGATE_S3SIGN_H
#define IMGATE_S3SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* Longest presign expiry SigV4 allows: seven days. */
#define S3SIGN_MAX_EXPIRES_S 604800

/* Appends the n bytes of s percent-encoded the way SigV4 and S3 want them:
 * every byte but A-Z a-z 0-9 '-' '.' '_' '~' becomes %XX with upper-case hex;
 * '/' is kept as it is when keep_slash (an object key in a path), encoded
 * otherwise (a query value). false when memory runs out (out then holds a
 * prefix of the encoding). */
bool s3sign_uri_encode(buf *out, const char *s, size_t n, bool keep_slash);

/* Unix seconds as SigV4's timestamp, "20130524T000000Z" (UTC). */
void s3sign_amz_date(int64_t unix_s, char out[17]);

/* SigV4's signing key for one day, region and service: HMAC-SHA256 chained
 * from "AWS4" + secret over date ("20130524"), region, service and
 * "aws4_request". */
void s3sign_signing_key(const char *secret, const char *date8, const char *region,
                        const char *service, uint8_t out[32]);

/* What a presigned URL is made of. Every string is required but
 * session_token, which may be NULL or "" when the credentials have none. */
typedef struct s3sign_presign_args {
  const char *method;     /* "GET" */
  const char *scheme;     /* "https" or "http" */
  const char *authority;  /* host[:port] exactly as a client's Host header will carry it */
  const char *path;       /* the canonical URI: '/' then the S3-encoded path */
  const char *region;
  const char *access_key;
  const char *secret_key;
  const char *session_token;
  int64_t now_s;          /* when the signature starts to count (unix seconds) */
  int expires_s;          /* 1..S3SIGN_MAX_EXPIRES_S */
} s3sign_presign_args;

/* The presigned URL (query-string authentication, signed header "host",
 * payload UNSIGNED-PAYLOAD), malloc'd. NULL when expires_s is out of range,
 * a required string is missing, or memory runs out. */
char *s3sign_presign(const s3sign_presign_args *a);

#endif
