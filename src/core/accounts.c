/* accounts.c - account creation, key issue/revoke, bearer authentication. */
#include "core/accounts.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "core/pricing.h"
#include "util/ids.h"
#include "util/timeutil.h"

bool accounts_normalize_email(const char *email, char *out, size_t out_size) {
  size_t len = email ? strlen(email) : 0;
  if (len < 3 || len > 254 || len >= out_size) return false;
  int at = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)email[i];
    if (c <= ' ' || c >= 0x7f || c == '"' || c == '\\' || c == ',') return false;
    if (c == '@') at++;
    out[i] = (char)tolower(c);
  }
  out[len] = '\0';
  const char *a = strchr(out, '@');
  return at == 1 && a != out && a[1] != '\0';
}

bool accounts_key_well_formed(const char *key) {
  if (!key || strlen(key) != ACCOUNTS_KEY_LEN) return false;
  if (strncmp(key, ACCOUNTS_KEY_PREFIX, 4) != 0) return false;
  for (size_t i = 4; i < ACCOUNTS_KEY_LEN; i++)
    if (!isalnum((unsigned char)key[i])) return false;
  return true;
}

int accounts_create(store *st, const char *email, int64_t grant_micros, int64_t *id_out,
                    imgate_error *err) {
  char norm[256];
  if (!accounts_normalize_email(email, norm, sizeof norm))
    return err_set(err, ERR_INVALID, "invalid_email", "email", "\"%s\" is not an email address",
                   email ? email : "");
  int rc = st->ops->account_open(st, norm, time_now_ms(), grant_micros, id_out);
  if (rc == STORE_CONFLICT)
    return err_set(err, ERR_INVALID, "account_exists", "email", "an account for %s exists", norm);
  if (rc != STORE_OK) return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  return 0;
}

int accounts_signup(store *st, const imgate_config *cfg, const char *email, int64_t *id_out,
                    imgate_error *err) {
  if (accounts_create(st, email, cfg->signup_bonus_micros, id_out, err) < 0) return -1;
  if (cfg->default_max_concurrency == 0 && cfg->default_qps_per_key == 0) return 0;
  if (st->ops->account_set_limits(st, *id_out, cfg->default_max_concurrency,
                                  cfg->default_qps_per_key) != STORE_OK)
    return err_set(err, ERR_INTERNAL, "store_error", NULL,
                   "the account was created, but its default limits could not be stored");
  return 0;
}

int accounts_find(store *st, const char *email, store_account *out, imgate_error *err) {
  char norm[256];
  if (!accounts_normalize_email(email, norm, sizeof norm))
    return err_set(err, ERR_NOT_FOUND, "account_not_found", "email", "no account for %.200s",
                   email ? email : "");
  int rc = st->ops->account_get_by_email(st, norm, out);
  if (rc == STORE_NOT_FOUND)
    return err_set(err, ERR_NOT_FOUND, "account_not_found", "email", "no account for %s", norm);
  if (rc != STORE_OK) return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  return 0;
}

int accounts_post_money(store *st, int64_t account_id, bool topup, int64_t micros,
                        const char *reason, int64_t *balance_out, imgate_error *err) {
  if (micros <= 0)
    return err_set(err, ERR_INVALID, "invalid_amount", "usd", "the amount must be positive");
  if (micros > ACCOUNTS_MAX_AMOUNT_MICROS)
    return err_set(err, ERR_INVALID, "invalid_amount", "usd",
                   "at most 1000000000 USD can be moved at once");
  if (topup) {
    /* Not atomic with the post below: concurrent top-ups could pass this
     * together, but it would take thousands of them at the largest amount
     * to get anywhere near int64's end. */
    store_account a;
    if (st->ops->account_get(st, account_id, &a) != STORE_OK)
      return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
    if (a.balance_micros + a.held_micros > ACCOUNTS_MAX_BALANCE_MICROS - micros)
      return err_set(err, ERR_INVALID, "invalid_amount", "usd",
                     "the balance would exceed 100000000000 USD");
  }
  if (!reason || !*reason) reason = topup ? "top-up" : "refund";
  int rc = st->ops->ledger_post(st, account_id, topup ? LEDGER_TOPUP : LEDGER_REFUND,
                                topup ? micros : -micros, reason, time_now_ms(), balance_out);
  if (rc == STORE_NO_CREDIT) {
    char usd[PRICING_USD_BUFSIZE];
    pricing_format_usd(micros, usd, sizeof usd);
    return err_set(err, ERR_NO_CREDIT, "insufficient_credit", "usd",
                   "the available balance is smaller than %s USD", usd);
  }
  if (rc != STORE_OK)
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "the ledger could not be written");
  return 0;
}

bool accounts_ledger_csv(const ledger_entry *e, size_t n, buf *out) {
  bool ok = buf_append_str(out, "id,time,kind,available_usd,held_usd,task,reason\n");
  for (size_t i = 0; ok && i < n; i++) {
    char when[32], av[PRICING_USD_BUFSIZE], he[PRICING_USD_BUFSIZE];
    time_format_iso(e[i].created_ms, when);
    pricing_format_usd(e[i].available_micros, av, sizeof av);
    pricing_format_usd(e[i].held_micros, he, sizeof he);
    ok = buf_printf(out, "%lld,%s,%s,%s,%s,%s,\"", (long long)e[i].id, when,
                    ledger_kind_name(e[i].kind), av, he, e[i].task_id);
    /* Reasons are free text: quoted the CSV way. */
    for (const char *p = e[i].reason; ok && *p; p++)
      ok = buf_append(out, p, 1) && (*p != '"' || buf_append(out, "\"", 1));
    ok = ok && buf_append_str(out, "\"\n");
  }
  return ok;
}

int accounts_create_key(store *st, const char *email, const char *name, int max_active,
                        char key_out[ACCOUNTS_KEY_LEN + 1], int64_t *key_id_out,
                        imgate_error *err) {
  store_account acct;
  if (accounts_find(st, email, &acct, err) < 0) return -1;
  if (max_active > 0) {
    store_key *keys = NULL;
    size_t n = 0, active = 0;
    if (st->ops->key_list(st, acct.id, &keys, &n) != STORE_OK)
      return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
    for (size_t i = 0; i < n; i++) active += keys[i].revoked_ms == 0;
    free(keys);
    if (active >= (size_t)max_active)
      return err_set(err, ERR_FORBIDDEN, "too_many_keys", NULL,
                     "%s has %zu active keys, the most allowed; revoke one first", acct.email,
                     active);
  }
  memcpy(key_out, ACCOUNTS_KEY_PREFIX, 4);
  if (!ids_random_base62(key_out + 4, ACCOUNTS_KEY_RANDOM_LEN))
    return err_set(err, ERR_INTERNAL, "random_failed", NULL, "no randomness available");
  char hash[65], prefix[9];
  ids_sha256_hex(key_out, ACCOUNTS_KEY_LEN, hash);
  snprintf(prefix, sizeof prefix, "%.8s", key_out);
  int rc = st->ops->key_create(st, acct.id, hash, prefix, name ? name : "", time_now_ms(),
                               key_id_out);
  if (rc != STORE_OK) {
    OPENSSL_cleanse(key_out, ACCOUNTS_KEY_LEN);
    return err_set(err, ERR_INTERNAL, "store_error", NULL, "the key could not be stored");
  }
  return 0;
}

int accounts_revoke_key(store *st, const char *key_or_id, imgate_error *err) {
  int64_t id = 0;
  char hash[65];
  const char *hash_arg = NULL;
  if (accounts_key_well_formed(key_or_id)) {
    ids_sha256_hex(key_or_id, ACCOUNTS_KEY_LEN, hash);
    hash_arg = hash;
  } else {
    char *end;
    errno = 0;
    long long v = strtoll(key_or_id, &end, 10);
    if (errno || *end || v <= 0)
      return err_set(err, ERR_INVALID, "invalid_key", "key", "give the full key or its id");
    id = v;
  }
  int rc = st->ops->key_revoke(st, id, hash_arg, time_now_ms());
  if (rc == STORE_NOT_FOUND)
    return err_set(err, ERR_NOT_FOUND, "key_not_found", "key", "no active key matches");
  if (rc != STORE_OK) return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  return 0;
}

int accounts_authenticate(store *st, const char *authorization, store_account *out,
                          imgate_error *err) {
  if (!authorization || !*authorization)
    return err_set(err, ERR_UNAUTHORIZED, "unauthorized", NULL,
                   "missing Authorization header; send Authorization: Bearer <key>");
  if (strncasecmp(authorization, "Bearer ", 7) != 0)
    return err_set(err, ERR_UNAUTHORIZED, "unauthorized", NULL,
                   "the Authorization header must use the Bearer scheme");
  const char *key = authorization + 7;
  while (*key == ' ') key++;
  /* Malformed keys are refused without touching the store. */
  if (!accounts_key_well_formed(key))
    return err_set(err, ERR_UNAUTHORIZED, "unauthorized", NULL, "invalid API key");
  char hash[65];
  ids_sha256_hex(key, ACCOUNTS_KEY_LEN, hash);
  int64_t key_id;
  int rc = st->ops->key_authenticate(st, hash, time_now_ms(), out, &key_id);
  if (rc == STORE_NOT_FOUND)
    return err_set(err, ERR_UNAUTHORIZED, "unauthorized", NULL, "invalid API key");
  if (rc != STORE_OK) return err_set(err, ERR_INTERNAL, "store_error", NULL, "store failure");
  if (out->disabled)
    return err_set(err, ERR_FORBIDDEN, "account_disabled", NULL, "this account is disabled");
  return 0;
}
