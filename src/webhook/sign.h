/* sign.h - the Standard Webhooks format (v1): secrets and signatures.
 *
 * A secret is shown as "whsec_" + base64 of its key bytes; the HMAC key is
 * the decoded part after the prefix. A delivery carries
 *   webhook-id:        stable across the retries of one event
 *   webhook-timestamp: unix seconds of this attempt
 *   webhook-signature: "v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>"
 * and, during a secret rotation, one signature per secret separated by a
 * space, so a receiver holding either secret accepts the delivery.
 * Receivers (the npm package standardwebhooks, docs/delivery.md) recompute
 * the signature, compare in constant time, and reject timestamps more than
 * five minutes from their clock. */
#ifndef IMGATE_WEBHOOK_SIGN_H
#define IMGATE_WEBHOOK_SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WEBHOOK_SECRET_PREFIX "whsec_"
/* Key sizes the format allows (the spec's 24..64 bytes); new secrets use 32. */
#define WEBHOOK_SECRET_MIN_BYTES 24
#define WEBHOOK_SECRET_MAX_BYTES 64
#define WEBHOOK_SECRET_NEW_BYTES 32
/* "whsec_" + base64 of 64 bytes (88) + NUL fits. */
#define WEBHOOK_SECRET_MAX 96
/* "v1," + base64 of a SHA-256 (44) + NUL. */
#define WEBHOOK_SIGNATURE_MAX 48
/* Two signatures and the space between them. */
#define WEBHOOK_SIGNATURE_HEADER_MAX (2 * WEBHOOK_SIGNATURE_MAX)

/* A new secret: "whsec_" + base64 of WEBHOOK_SECRET_NEW_BYTES random bytes
 * (OpenSSL's RAND). Returns 0, or -1 when the random source fails (out is
 * then ""). */
int webhook_secret_new(char out[WEBHOOK_SECRET_MAX]);

/* True when s is "whsec_" followed by the canonical standard base64 (with
 * padding, no blanks) of WEBHOOK_SECRET_MIN_BYTES..MAX_BYTES bytes. */
bool webhook_secret_valid(const char *s);

/* The v1 signature of one attempt: "v1,<base64>" into out. payload is the
 * body exactly as sent (len bytes), timestamp_s the webhook-timestamp sent
 * with it (>= 0). Returns 0, or -1 when the secret is not valid or OpenSSL
 * fails (out is then ""). */
int webhook_sign(const char *secret, const char *msg_id, int64_t timestamp_s,
                 const void *payload, size_t len, char out[WEBHOOK_SIGNATURE_MAX]);

/* The webhook-signature header value: the signature with current, then,
 * when previous is neither NULL nor "" (a rotation window is open), a space
 * and the signature with previous. Returns 0, or -1 as webhook_sign. */
int webhook_signature_header(const char *current, const char *previous, const char *msg_id,
                             int64_t timestamp_s, const void *payload, size_t len,
                             char out[WEBHOOK_SIGNATURE_HEADER_MAX]);

#endif
