/* s3config.h - where an S3 bucket is and how to talk to it: one struct, its
 * defaults, a JSON object and the environment as sources, and the check that
 * turns it into something the client can use (or says clearly why not).
 *
 * Not yet a blob backend: the S3 client (s3client.h) takes this struct;
 * wiring it as blob.backend "s3" comes with the streaming blob interface.
 * docs/storage.md lists every field. */
#ifndef IMGATE_S3CONFIG_H
#define IMGATE_S3CONFIG_H

#include <stdint.h>

#include <jansson.h>

/* How a bucket is named in a request's URL. */
typedef enum {
  S3_PATH_STYLE = 0,   /* https://endpoint/bucket/key */
  S3_VIRTUAL_HOST,     /* https://bucket.endpoint/key: the bucket is a subdomain */
} s3_addressing;

#define S3_MIN_PART_SIZE ((uint64_t)5 << 20) /* S3's smallest part but the last */
#define S3_MAX_PART_SIZE ((uint64_t)5 << 30)
#define S3_MAX_PARTS 10000

/* Fixed-size fields, so the struct copies by value like imgate_config. */
typedef struct s3_config {
  /* scheme://host[:port]: https for real stores, http for a local MinIO or
   * a test server. "" = AWS's regional endpoint, https://s3.REGION.amazonaws.com. */
  char endpoint[512];
  char bucket[64];
  char region[64];           /* "us-east-1"; R2 says "auto" */
  char access_key[128];
  char secret_key[128];
  char session_token[2048];  /* temporary credentials (STS); "" = none */
  s3_addressing addressing;
  /* HOST:PORT:ADDRESS, as curl's --resolve: the host name is not looked up
   * but taken to be ADDRESS. For split-horizon setups, and for tests of
   * virtual-host addressing that must never leave 127.0.0.1. "" = none. */
  char resolve[320];
  int connect_timeout_ms;    /* TCP + TLS set-up */
  int request_timeout_ms;    /* a whole request that carries no object bytes */
  /* A request that carries object bytes (put, get, a part) has no total
   * deadline, its size decides: it fails when under 1 KiB/s for this long. */
  int stall_timeout_s;
  /* Objects above this size go up in parts of this size (5 MiB..5 GiB); a
   * larger part is used when the object would need more than 10,000 parts. */
  uint64_t part_size;
  int max_parts_in_flight;   /* parts of one upload sent at once, 1..64 */
} s3_config;

/* Defaults: path style, region us-east-1, 10 s connect, 30 s requests, 30 s
 * stall, 16 MiB parts, 4 in flight; no endpoint, bucket or credentials. */
void s3_config_defaults(s3_config *c);

/* Sets the members present in obj, a JSON object with the keys endpoint,
 * bucket, region, access_key_id, secret_access_key, session_token, addressing
 * ("path" | "virtual-host"), resolve, connect_timeout_ms, request_timeout_ms,
 * stall_timeout_s, part_size_bytes, max_parts_in_flight. An unknown key or a
 * wrong type is an error (-1, with err naming it under where, e.g.
 * "blob.s3"); 0 otherwise. Values are checked by s3_config_check. */
int s3_config_from_json(s3_config *c, const json_t *obj, const char *where, char *err,
                        size_t err_size);

/* Sets what the environment names: IMGATE_S3_ENDPOINT, IMGATE_S3_BUCKET,
 * IMGATE_S3_REGION, IMGATE_S3_ADDRESSING, AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN. -1 with err when a value does
 * not fit its field or IMGATE_S3_ADDRESSING is neither style. */
int s3_config_from_env(s3_config *c, char *err, size_t err_size);

/* Checks every field and normalises the endpoint (fills in AWS's when empty,
 * drops a default port and a trailing '/'). 0 when usable; -1 with a message
 * naming the field and the rule otherwise. */
int s3_config_check(s3_config *c, char *err, size_t err_size);

#endif
