/* accounts.h - accounts and API keys on top of the store.
 *
 * Keys look like "igk_" + 40 base62 characters (about 238 random bits). The
 * fixed prefix makes a leaked key easy to find with a secret scanner. Only the
 * SHA-256 of a key is stored: with this much entropy a fast hash is enough (no
 * password-style stretching is needed), and it keeps authentication cheap. */
#ifndef IMGATE_ACCOUNTS_H
#define IMGATE_ACCOUNTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core/error.h"
#include "store/store.h"
#include "util/buf.h"

#define ACCOUNTS_KEY_PREFIX "igk_"
#define ACCOUNTS_KEY_RANDOM_LEN 40
#define ACCOUNTS_KEY_LEN (4 + ACCOUNTS_KEY_RANDOM_LEN)

/* Lower-cases email into out and checks its shape: 3 to 254 bytes of
 * printable ASCII other than space, '"', '\\' and ','; exactly one '@', with
 * text before and after it. out needs strlen(email) + 1 bytes; false when it
 * is smaller or the shape is wrong. */
bool accounts_normalize_email(const char *email, char *out, size_t out_size);
/* True when key has the shape of an imgate key (prefix, length, alphabet). */
bool accounts_key_well_formed(const char *key);

/* Creates an account. ERR_INVALID for a bad email, ERR_INVALID "account_exists" when taken. */
/* grant_micros: the signup bonus, posted to the ledger in the same
 * transaction as the account (0 = none). */
int accounts_create(store *st, const char *email, int64_t grant_micros, int64_t *id_out,
                    imgate_error *err);
/* Signup as the CLI and the admin API do it: accounts_create with the
 * configured bonus (cfg->signup_bonus_micros), then the configured default
 * limits (default_max_concurrency, default_qps_per_key) when either is set.
 * The two are separate store calls: should the second fail, the account
 * exists with the store's defaults (unlimited) and ERR_INTERNAL is returned. */
int accounts_signup(store *st, const imgate_config *cfg, const char *email, int64_t *id_out,
                    imgate_error *err);
/* The account with this email (normalised first). ERR_NOT_FOUND
 * "account_not_found" (param "email") when there is none or the email is
 * malformed; ERR_INTERNAL when the store fails. */
int accounts_find(store *st, const char *email, store_account *out, imgate_error *err);
/* The most one top-up or refund may move ($1,000,000,000), and the most a
 * top-up may bring an account's balance plus held amount to
 * ($100,000,000,000). Far above any real amount, they keep every sum of
 * the ledger well inside int64: the store's SQL sums would overflow near
 * $9.2 trillion. */
#define ACCOUNTS_MAX_AMOUNT_MICROS 1000000000000000LL
#define ACCOUNTS_MAX_BALANCE_MICROS 100000000000000000LL

/* A top-up (topup true: money in) or a refund (money paid back) of micros > 0
 * on the account, with reason (NULL or "": "top-up" / "refund"). ERR_INVALID
 * "invalid_amount" (param "usd") when micros <= 0 or over
 * ACCOUNTS_MAX_AMOUNT_MICROS, or when a top-up would take the account past
 * ACCOUNTS_MAX_BALANCE_MICROS; ERR_NO_CREDIT
 * "insufficient_credit" when a refund exceeds the available balance.
 * *balance_out (may be NULL): the available balance after. */
int accounts_post_money(store *st, int64_t account_id, bool topup, int64_t micros,
                        const char *reason, int64_t *balance_out, imgate_error *err);
/* Appends the ledger entries as CSV (header line first):
 *   id,time,kind,available_usd,held_usd,task,reason
 * reason always quoted, '"' doubled. The same bytes for `imgate admin ledger
 * --csv` and GET /admin/accounts/{email}/ledger?format=csv. False when
 * memory runs out. */
bool accounts_ledger_csv(const ledger_entry *e, size_t n, buf *out);

/* Creates a key for the account with this email; key_out receives the key
 * (shown once, never stored). max_active > 0 refuses (403 too_many_keys) when
 * the account already has that many active keys. */
int accounts_create_key(store *st, const char *email, const char *name, int max_active,
                        char key_out[ACCOUNTS_KEY_LEN + 1], int64_t *key_id_out,
                        imgate_error *err);
/* Revokes a key given as the full key or as its numeric id. */
int accounts_revoke_key(store *st, const char *key_or_id, imgate_error *err);
/* The account of an "Authorization: Bearer KEY" header value. ERR_UNAUTHORIZED
 * when missing, malformed, unknown or revoked; ERR_FORBIDDEN when disabled. */
int accounts_authenticate(store *st, const char *authorization, store_account *out,
                          imgate_error *err);

#endif
