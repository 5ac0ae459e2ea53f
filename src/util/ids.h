/* ids.h - identifiers, random tokens and digests (OpenSSL underneath). */
#ifndef IMGATE_IDS_H
#define IMGATE_IDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IDS_UUID_LEN 36 /* without the NUL */

/* A UUIDv7 (RFC 9562: 48-bit unix ms, version, random) in lower-case text form.
 * Ids made later by the same process sort after earlier ones. Returns false if
 * the random source fails. */
bool ids_uuid7(char out[IDS_UUID_LEN + 1]);
/* True when s is a canonical lower- or upper-case UUID text (8-4-4-4-12 hex). */
bool ids_is_uuid(const char *s);

/* nbytes cryptographically random bytes as 2*nbytes lower-case hex + NUL. */
bool ids_random_hex(char *out, size_t nbytes);
/* n random characters from [0-9A-Za-z] (unbiased) + NUL; out holds n+1 bytes. */
bool ids_random_base62(char *out, size_t n);

/* SHA-256 of data as 64 lower-case hex + NUL. */
void ids_sha256_hex(const void *data, size_t len, char out[65]);
/* SHA-256 of data given in pieces: begin (NULL when memory runs out),
 * update any number of times, then end, which writes 64 lower-case hex + NUL
 * and frees the state. ids_sha256_abort frees it without a digest. */
typedef struct ids_sha256 ids_sha256;
ids_sha256 *ids_sha256_begin(void);
void ids_sha256_update(ids_sha256 *h, const void *data, size_t len);
void ids_sha256_end(ids_sha256 *h, char out[65]);
void ids_sha256_abort(ids_sha256 *h);
/* Constant-time comparison of two equal-length byte strings. */
bool ids_equal_ct(const void *a, const void *b, size_t len);

#endif
