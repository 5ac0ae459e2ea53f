/* s3sign.c - S3's URI encoding and presigned URLs (SigV4 query signing),
 * HMAC-SHA256 and SHA-256 from OpenSSL. */
#include "blob/s3sign.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/ids.h"

static bool is_unreserved(unsigned char ch) {
  return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
         ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

bool s3sign_uri_encode(buf *out, const char *s, size_t n, bool keep_slash) {
  static const char hex[] = "0123456789ABCDEF";
  /* Worst case three bytes out per byte in: one reservation, then plain appends. */
  if (n > ((size_t)-1 - 1) / 3 || !buf_reserve(out, 3 * n)) return false;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (is_unreserved(ch) || (keep_slash && ch == '/')) {
      out->data[out->len++] = (char)ch;
    } else {
      out->data[out->len++] = '%';
      out->data[out->len++] = hex[ch >> 4];
      out->data[out->len++] = hex[ch & 15];
    }
  }
  out->data[out->len] = '\0';
  return true;
}

void s3sign_amz_date(int64_t unix_s, char out[17]) {
  time_t t = (time_t)unix_s;
  struct tm tm;
  gmtime_r(&t, &tm);
  /* A year the format cannot hold gives the last second it can: a signature
   * the server then refuses, never a cut string. */
  if (tm.tm_year < 0 || tm.tm_year + 1900 > 9999 || strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) != 16)
    memcpy(out, "99991231T235959Z", 17);
}

static void hmac(const void *key, size_t key_len, const char *msg, uint8_t out[32]) {
  unsigned int len = 32;
  HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)msg, strlen(msg), out, &len);
}

void s3sign_signing_key(const char *secret, const char *date8, const char *region,
                        const char *service, uint8_t out[32]) {
  size_t n = strlen(secret);
  char *first = malloc(n + 5);
  uint8_t k[32];
  if (first) {
    memcpy(first, "AWS4", 4);
    memcpy(first + 4, secret, n + 1);
    hmac(first, n + 4, date8, k);
    OPENSSL_cleanse(first, n + 4);
    free(first);
  } else {
    /* Out of memory: a key nobody can match, never an uninitialised one. */
    memset(k, 0, sizeof k);
  }
  hmac(k, 32, region, k);
  hmac(k, 32, service, k);
  hmac(k, 32, "aws4_request", out);
  OPENSSL_cleanse(k, sizeof k);
}

static void hex32(const uint8_t in[32], char out[65]) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hex[in[i] >> 4];
    out[2 * i + 1] = hex[in[i] & 15];
  }
  out[64] = '\0';
}

static bool present(const char *s) { return s && s[0]; }

/* The canonical query string, which is also the URL's query minus the
 * signature: names already in byte order, values S3-encoded. */
static bool presign_query(buf *q, const s3sign_presign_args *a, const char *amz_date,
                          const char *scope) {
  char credential[512];
  int n = snprintf(credential, sizeof credential, "%s/%s", a->access_key, scope);
  if (n < 0 || (size_t)n >= sizeof credential) return false;
  bool ok = buf_append_str(q, "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=") &&
            s3sign_uri_encode(q, credential, (size_t)n, false) &&
            buf_printf(q, "&X-Amz-Date=%s&X-Amz-Expires=%d", amz_date, a->expires_s);
  if (ok && present(a->session_token)) {
    ok = buf_append_str(q, "&X-Amz-Security-Token=") &&
         s3sign_uri_encode(q, a->session_token, strlen(a->session_token), false);
  }
  return ok && buf_append_str(q, "&X-Amz-SignedHeaders=host");
}

char *s3sign_presign(const s3sign_presign_args *a) {
  if (!a || !present(a->method) || !present(a->scheme) || !present(a->authority) ||
      !present(a->path) || a->path[0] != '/' || !present(a->region) ||
      !present(a->access_key) || !present(a->secret_key) || a->expires_s < 1 ||
      a->expires_s > S3SIGN_MAX_EXPIRES_S)
    return NULL;
  char amz_date[17], date8[9], scope[160];
  s3sign_amz_date(a->now_s, amz_date);
  memcpy(date8, amz_date, 8);
  date8[8] = '\0';
  int n = snprintf(scope, sizeof scope, "%s/%s/s3/aws4_request", date8, a->region);
  if (n < 0 || (size_t)n >= sizeof scope) return NULL;

  buf query = BUF_INIT, creq = BUF_INIT, sts = BUF_INIT, url = BUF_INIT;
  char *result = NULL;
  if (!presign_query(&query, a, amz_date, scope)) goto out;
  /* Canonical request: method, URI, query, headers, signed headers, payload. */
  if (!buf_printf(&creq, "%s\n%s\n%s\nhost:%s\n\nhost\nUNSIGNED-PAYLOAD", a->method, a->path,
                  query.data, a->authority))
    goto out;
  char creq_hash[65];
  ids_sha256_hex(creq.data, creq.len, creq_hash);
  if (!buf_printf(&sts, "AWS4-HMAC-SHA256\n%s\n%s\n%s", amz_date, scope, creq_hash)) goto out;

  uint8_t key[32], sig[32];
  char sig_hex[65];
  s3sign_signing_key(a->secret_key, date8, a->region, "s3", key);
  hmac(key, sizeof key, sts.data, sig);
  OPENSSL_cleanse(key, sizeof key);
  hex32(sig, sig_hex);
  if (buf_printf(&url, "%s://%s%s?%s&X-Amz-Signature=%s", a->scheme, a->authority, a->path,
                 query.data, sig_hex))
    result = buf_steal(&url);
out:
  buf_free(&query);
  buf_free(&creq);
  buf_free(&sts);
  buf_free(&url);
  return result;
}
