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

#include "core/error.h"
#include "store/store.h"

#define ACCOUNTS_KEY_PREFIX "igk_"
#define ACCOUNTS_KEY_RANDOM_LEN 40
#define ACCOUNTS_KEY_LEN (4 + ACCOUNTS_KEY_RANDOM_LEN)

/* Lower-cases email into out and checks its shape (one '@', no spaces, <= 254). */
bool accounts_normalize_email(const char *email, char *out, size_t out_size);
/* True when key has the shape of an imgate key (prefix, length, alphabet). */
bool accounts_key_well_formed(const char *key);

/* Creates an account. ERR_INVALID for a bad email, ERR_INVALID "account_exists" when taken. */
/* grant_micros: the signup bonus, posted to the ledger in the same
 * transaction as the account (0 = none). */
int accounts_create(store *st, const char *email, int64_t grant_micros, int64_t *id_out,
                    imgate_error *err);
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
