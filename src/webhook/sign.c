/* sign.c - Standard Webhooks secrets and v1 signatures (HMAC-SHA256 through
 * OpenSSL's EVP_MAC, base64 through util/base64). */
#include "webhook/sign.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "util/base64.h"

#define PREFIX_LEN (sizeof WEBHOOK_SECRET_PREFIX - 1)
#define SHA256_BYTES 32

/* The HMAC implementation, fetched once: a fetch per signature would look it
 * up in OpenSSL's provider store under a lock every time. Never freed (it
 * lives as long as the process, like OpenSSL's own tables). */
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;
static EVP_MAC *hmac_alg;

static void hmac_fetch(void) { hmac_alg = EVP_MAC_fetch(NULL, OSSL_MAC_NAME_HMAC, NULL); }

int webhook_secret_new(char out[WEBHOOK_SECRET_MAX]) {
  out[0] = '\0';
  uint8_t key[WEBHOOK_SECRET_NEW_BYTES];
  if (RAND_bytes(key, sizeof key) != 1) return -1;
  char *b64 = base64_encode(key, sizeof key);
  OPENSSL_cleanse(key, sizeof key);
  if (!b64) return -1;
  int n = snprintf(out, WEBHOOK_SECRET_MAX, WEBHOOK_SECRET_PREFIX "%s", b64);
  assert(n > 0 && n < WEBHOOK_SECRET_MAX);
  (void)n;
  OPENSSL_cleanse(b64, strlen(b64));
  free(b64);
  return 0;
}

/* The key bytes of a valid secret (malloc'd; cleanse and free them), or NULL.
 * Valid means the canonical spelling: encoding the key again must give the
 * text back, which rules out blanks, missing padding and the URL alphabet, so
 * one key has one secret text and the receiver's decoder reads the same key. */
static uint8_t *secret_key(const char *s, size_t *len) {
  if (!s || strncmp(s, WEBHOOK_SECRET_PREFIX, PREFIX_LEN) != 0) return NULL;
  const char *text = s + PREFIX_LEN;
  size_t text_len = strlen(text);
  uint8_t *key = NULL;
  if (base64_decode(text, text_len, WEBHOOK_SECRET_MAX_BYTES, &key, len) != 0) return NULL;
  bool ok = *len >= WEBHOOK_SECRET_MIN_BYTES;
  if (ok) {
    char *again = base64_encode(key, *len);
    ok = again && strcmp(again, text) == 0;
    free(again);
  }
  if (!ok) {
    OPENSSL_cleanse(key, *len);
    free(key);
    return NULL;
  }
  return key;
}

bool webhook_secret_valid(const char *s) {
  size_t len = 0;
  uint8_t *key = secret_key(s, &len);
  if (!key) return false;
  OPENSSL_cleanse(key, len);
  free(key);
  return true;
}

/* HMAC-SHA256(key, "{id}.{timestamp}.{payload}") into mac, fed in pieces so
 * the payload is not copied. */
static bool hmac_message(const uint8_t *key, size_t key_len, const char *msg_id,
                         int64_t timestamp_s, const void *payload, size_t len,
                         uint8_t mac[SHA256_BYTES]) {
  pthread_once(&hmac_once, hmac_fetch);
  if (!hmac_alg) return false;
  EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac_alg);
  if (!ctx) return false;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  char ts[24];
  int ts_len = snprintf(ts, sizeof ts, ".%" PRId64 ".", timestamp_s);
  size_t out_len = 0;
  bool ok = EVP_MAC_init(ctx, key, key_len, params) == 1 &&
            EVP_MAC_update(ctx, (const unsigned char *)msg_id, strlen(msg_id)) == 1 &&
            EVP_MAC_update(ctx, (const unsigned char *)ts, (size_t)ts_len) == 1 &&
            (len == 0 || EVP_MAC_update(ctx, payload, len) == 1) &&
            EVP_MAC_final(ctx, mac, &out_len, SHA256_BYTES) == 1 && out_len == SHA256_BYTES;
  EVP_MAC_CTX_free(ctx);
  return ok;
}

int webhook_sign(const char *secret, const char *msg_id, int64_t timestamp_s,
                 const void *payload, size_t len, char out[WEBHOOK_SIGNATURE_MAX]) {
  assert(msg_id && timestamp_s >= 0 && (payload || len == 0));
  out[0] = '\0';
  size_t key_len = 0;
  uint8_t *key = secret_key(secret, &key_len);
  if (!key) return -1;
  uint8_t mac[SHA256_BYTES];
  bool ok = hmac_message(key, key_len, msg_id, timestamp_s, payload, len, mac);
  OPENSSL_cleanse(key, key_len);
  free(key);
  char *b64 = ok ? base64_encode(mac, sizeof mac) : NULL;
  if (!b64) return -1;
  int n = snprintf(out, WEBHOOK_SIGNATURE_MAX, "v1,%s", b64);
  assert(n > 0 && n < WEBHOOK_SIGNATURE_MAX);
  (void)n;
  free(b64);
  return 0;
}

int webhook_signature_header(const char *current, const char *previous, const char *msg_id,
                             int64_t timestamp_s, const void *payload, size_t len,
                             char out[WEBHOOK_SIGNATURE_HEADER_MAX]) {
  out[0] = '\0';
  char first[WEBHOOK_SIGNATURE_MAX], second[WEBHOOK_SIGNATURE_MAX];
  if (webhook_sign(current, msg_id, timestamp_s, payload, len, first) != 0) return -1;
  if (!previous || !previous[0]) {
    memcpy(out, first, strlen(first) + 1);
    return 0;
  }
  if (webhook_sign(previous, msg_id, timestamp_s, payload, len, second) != 0) return -1;
  int n = snprintf(out, WEBHOOK_SIGNATURE_HEADER_MAX, "%s %s", first, second);
  assert(n > 0 && n < WEBHOOK_SIGNATURE_HEADER_MAX);
  (void)n;
  return 0;
}
