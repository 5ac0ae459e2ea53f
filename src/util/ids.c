/* ids.c - UUIDv7, random tokens, SHA-256 (OpenSSL). */
#include "util/ids.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "util/timeutil.h"

/* UUIDv7 with a monotonic 12-bit counter in rand_a (RFC 9562 method 1), so
 * ids made in the same millisecond by this process still sort in order. */
static pthread_mutex_t uuid_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t uuid_last_ms;
static unsigned uuid_counter;

bool ids_uuid7(char out[IDS_UUID_LEN + 1]) {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) return false;
  int64_t ms = time_now_ms();
  pthread_mutex_lock(&uuid_lock);
  if (ms <= uuid_last_ms) {
    ms = uuid_last_ms;
    if (++uuid_counter > 0xfff) { /* counter exhausted: borrow the next millisecond */
      ms++;
      uuid_counter = 0;
    }
  } else {
    uuid_counter = (unsigned)(b[6] & 0x07) << 8 | b[7]; /* random start, room to count up */
  }
  uuid_last_ms = ms;
  unsigned counter = uuid_counter;
  pthread_mutex_unlock(&uuid_lock);
  for (int i = 0; i < 6; i++) b[i] = (unsigned char)((uint64_t)ms >> (40 - 8 * i));
  b[6] = (unsigned char)(0x70 | ((counter >> 8) & 0x0f));
  b[7] = (unsigned char)(counter & 0xff);
  b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
  snprintf(out, IDS_UUID_LEN + 1,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
           b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
           b[15]);
  return true;
}

bool ids_is_uuid(const char *s) {
  if (!s || strlen(s) != IDS_UUID_LEN) return false;
  for (int i = 0; i < IDS_UUID_LEN; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!isxdigit((unsigned char)s[i])) {
      return false;
    }
  }
  return true;
}

bool ids_random_hex(char *out, size_t nbytes) {
  static const char hex[] = "0123456789abcdef";
  unsigned char b[64];
  if (nbytes > sizeof b || RAND_bytes(b, (int)nbytes) != 1) return false;
  for (size_t i = 0; i < nbytes; i++) {
    out[2 * i] = hex[b[i] >> 4];
    out[2 * i + 1] = hex[b[i] & 15];
  }
  out[2 * nbytes] = '\0';
  OPENSSL_cleanse(b, sizeof b);
  return true;
}

bool ids_random_base62(char *out, size_t n) {
  static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  size_t i = 0;
  while (i < n) {
    unsigned char b[64];
    if (RAND_bytes(b, sizeof b) != 1) return false;
    /* Rejection sampling: 248 = 4 * 62 keeps every character equally likely. */
    for (size_t j = 0; j < sizeof b && i < n; j++)
      if (b[j] < 248) out[i++] = alphabet[b[j] % 62];
    OPENSSL_cleanse(b, sizeof b);
  }
  out[n] = '\0';
  return true;
}

static void sha256_to_hex(const unsigned char md[32], char out[65]) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 15];
  }
  out[64] = '\0';
}

void ids_sha256_hex(const void *data, size_t len, char out[65]) {
  unsigned char md[32];
  unsigned int md_len = 0;
  EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL);
  sha256_to_hex(md, out);
}

/* The opaque type is OpenSSL's digest context itself. */
ids_sha256 *ids_sha256_begin(void) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(ctx);
    ctx = NULL;
  }
  return (ids_sha256 *)ctx;
}

void ids_sha256_update(ids_sha256 *h, const void *data, size_t len) {
  if (len) EVP_DigestUpdate((EVP_MD_CTX *)h, data, len);
}

void ids_sha256_end(ids_sha256 *h, char out[65]) {
  unsigned char md[32];
  unsigned int md_len = 0;
  EVP_DigestFinal_ex((EVP_MD_CTX *)h, md, &md_len);
  EVP_MD_CTX_free((EVP_MD_CTX *)h);
  sha256_to_hex(md, out);
}

void ids_sha256_abort(ids_sha256 *h) { EVP_MD_CTX_free((EVP_MD_CTX *)h); }

bool ids_equal_ct(const void *a, const void *b, size_t len) { return CRYPTO_memcmp(a, b, len) == 0; }
