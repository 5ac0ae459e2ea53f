/* test_accounts.c - emails, key format, issue/authenticate/revoke against a real store. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/accounts.h"

typedef struct fixture {
  char dir[64];
  store *st;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  char path[128], err[256];
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-acct-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(path, sizeof path, "%s/db", f->dir);
  f->st = store_sqlite_open(path, 2, err, sizeof err);
  assert_non_null(f->st);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  f->st->ops->close(f->st);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

static void test_normalize_email(void **state) {
  (void)state;
  char out[256];
  assert_true(accounts_normalize_email("Alice@Example.COM", out, sizeof out));
  assert_string_equal(out, "alice@example.com");
  assert_false(accounts_normalize_email("no-at-sign", out, sizeof out));
  assert_false(accounts_normalize_email("two@@example.com", out, sizeof out));
  assert_false(accounts_normalize_email("@example.com", out, sizeof out));
  assert_false(accounts_normalize_email("alice@", out, sizeof out));
  assert_false(accounts_normalize_email("al ice@example.com", out, sizeof out));
  assert_false(accounts_normalize_email(NULL, out, sizeof out));
  char long_email[300];
  memset(long_email, 'a', sizeof long_email);
  memcpy(long_email + 280, "@example.com", 13);
  assert_false(accounts_normalize_email(long_email, out, sizeof out));
}

static void test_key_shape(void **state) {
  (void)state;
  assert_true(accounts_key_well_formed("igk_0123456789abcdefghijABCDEFGHIJ0123456789"));
  assert_false(accounts_key_well_formed("igk_0123456789abcdefghijABCDEFGHIJ012345678"));   /* short */
  assert_false(accounts_key_well_formed("igk_0123456789abcdefghijABCDEFGHIJ0123456789x")); /* long */
  assert_false(accounts_key_well_formed("sk-_0123456789abcdefghijABCDEFGHIJ012345678"));
  assert_false(accounts_key_well_formed("igk_0123456789abcdefghijABCDEFGHIJ01234567-9"));
  assert_false(accounts_key_well_formed(NULL));
}

static void test_issue_authenticate_revoke(void **state) {
  fixture *f = *state;
  imgate_error err = {0};
  int64_t id, key_id;
  char key[ACCOUNTS_KEY_LEN + 1], header[80];
  assert_int_equal(accounts_create(f->st, "Bob@Example.com", 0, &id, &err), 0);
  assert_int_equal(accounts_create(f->st, "bob@example.com", 0, &id, &err), -1);
  assert_string_equal(err.slug, "account_exists");
  assert_int_equal(accounts_create_key(f->st, "nobody@example.com", "x", 0, key, &key_id, &err), -1);
  assert_int_equal(err.code, ERR_NOT_FOUND);

  assert_int_equal(accounts_create_key(f->st, "BOB@example.com", "laptop", 0, key, &key_id, &err), 0);
  assert_true(accounts_key_well_formed(key));
  snprintf(header, sizeof header, "Bearer %s", key);
  store_account acct;
  assert_int_equal(accounts_authenticate(f->st, header, &acct, &err), 0);
  assert_int_equal(acct.id, id);
  assert_string_equal(acct.email, "bob@example.com");
  snprintf(header, sizeof header, "bearer %s", key); /* the scheme is case-insensitive */
  assert_int_equal(accounts_authenticate(f->st, header, &acct, &err), 0);

  /* Only the hash is stored: the listed prefix is the key's start, nothing more. */
  store_key *keys;
  size_t n;
  assert_int_equal(f->st->ops->key_list(f->st, id, &keys, &n), STORE_OK);
  assert_int_equal(n, 1);
  assert_int_equal(strncmp(keys[0].prefix, key, strlen(keys[0].prefix)), 0);
  assert_true(strlen(keys[0].prefix) < 12);
  free(keys);

  char two[ACCOUNTS_KEY_LEN + 1];
  int64_t key2;
  assert_int_equal(accounts_create_key(f->st, "bob@example.com", NULL, 0, two, &key2, &err), 0);
  assert_string_not_equal(key, two);

  /* Revoke the first by full key, the second by id. */
  assert_int_equal(accounts_revoke_key(f->st, key, &err), 0);
  snprintf(header, sizeof header, "Bearer %s", key);
  assert_int_equal(accounts_authenticate(f->st, header, &acct, &err), -1);
  assert_int_equal(err.code, ERR_UNAUTHORIZED);
  assert_int_equal(accounts_revoke_key(f->st, key, &err), -1);
  assert_int_equal(err.code, ERR_NOT_FOUND);
  char id_text[24];
  snprintf(id_text, sizeof id_text, "%lld", (long long)key2);
  assert_int_equal(accounts_revoke_key(f->st, id_text, &err), 0);
  snprintf(header, sizeof header, "Bearer %s", two);
  assert_int_equal(accounts_authenticate(f->st, header, &acct, &err), -1);
  assert_int_equal(accounts_revoke_key(f->st, "not-a-key", &err), -1);
  assert_int_equal(err.code, ERR_INVALID);
}

static void test_account_list(void **state) {
  fixture *f = *state;
  imgate_error err = {0};
  int64_t a, b;
  assert_int_equal(accounts_create(f->st, "one@example.com", 0, &a, &err), 0);
  assert_int_equal(accounts_create(f->st, "two@example.com", 0, &b, &err), 0);
  store_account *list;
  size_t n;
  assert_int_equal(f->st->ops->account_list(f->st, &list, &n), STORE_OK);
  assert_int_equal(n, 2);
  assert_int_equal(list[0].id, a);
  assert_string_equal(list[0].email, "one@example.com");
  assert_int_equal(list[1].id, b);
  assert_false(list[1].disabled);
  free(list);
}

static void test_bad_headers(void **state) {
  fixture *f = *state;
  imgate_error err = {0};
  store_account acct;
  const char *bad[] = {NULL,
                       "",
                       "Bearer",
                       "Bearer ",
                       "Basic dXNlcjpwYXNz",
                       "Bearer igk_short",
                       "Bearer igk_0123456789abcdefghijABCDEFGHIJ0123456789" /* well formed, unknown */};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    memset(&err, 0, sizeof err);
    assert_int_equal(accounts_authenticate(f->st, bad[i], &acct, &err), -1);
    assert_int_equal(err.code, ERR_UNAUTHORIZED);
    assert_string_equal(err.slug, "unauthorized");
  }
}

/* Signup with the configured bonus and default limits; top-up and refund
 * through the helpers the CLI and the admin API share. */
static void test_signup_and_money(void **state) {
  fixture *f = *state;
  imgate_config cfg;
  config_defaults(&cfg);
  cfg.signup_bonus_micros = 2500000;
  cfg.default_max_concurrency = 4;
  cfg.default_qps_per_key = 9;
  imgate_error err = {0};
  int64_t id, balance = -1;
  assert_int_equal(accounts_signup(f->st, &cfg, "Money@Example.com", &id, &err), 0);
  store_account a;
  assert_int_equal(accounts_find(f->st, "MONEY@example.com", &a, &err), 0);
  assert_int_equal(a.id, id);
  assert_int_equal(a.balance_micros, 2500000);
  assert_int_equal(a.max_concurrency, 4);
  assert_int_equal(a.qps_per_key, 9);
  assert_int_equal(accounts_signup(f->st, &cfg, "money@example.com", &id, &err), -1);
  assert_string_equal(err.slug, "account_exists");
  assert_int_equal(accounts_find(f->st, "nobody@example.com", &a, &err), -1);
  assert_int_equal(err.code, ERR_NOT_FOUND);
  assert_string_equal(err.slug, "account_not_found");
  assert_int_equal(accounts_find(f->st, "not an email", &a, &err), -1);
  assert_int_equal(err.code, ERR_NOT_FOUND);

  assert_int_equal(accounts_post_money(f->st, id, true, 1000000, NULL, &balance, &err), 0);
  assert_int_equal(balance, 3500000);
  assert_int_equal(accounts_post_money(f->st, id, false, 3500001, "r", &balance, &err), -1);
  assert_int_equal(err.code, ERR_NO_CREDIT);
  assert_string_equal(err.slug, "insufficient_credit");
  assert_int_equal(accounts_post_money(f->st, id, false, 0, "r", &balance, &err), -1);
  assert_int_equal(err.code, ERR_INVALID);
  assert_int_equal(accounts_post_money(f->st, id, true, ACCOUNTS_MAX_AMOUNT_MICROS + 1, NULL,
                                       &balance, &err), -1);
  assert_string_equal(err.slug, "invalid_amount");
  assert_int_equal(accounts_post_money(f->st, id, false, ACCOUNTS_MAX_AMOUNT_MICROS + 1, NULL,
                                       &balance, &err), -1);
  assert_string_equal(err.slug, "invalid_amount");
  assert_int_equal(balance, 3500000);
  assert_int_equal(accounts_post_money(f->st, id, false, 500000, "back", &balance, &err), 0);
  assert_int_equal(balance, 3000000);

  ledger_entry *e = NULL;
  size_t n = 0;
  assert_int_equal(f->st->ops->ledger_list(f->st, id, &e, &n), STORE_OK);
  assert_int_equal(n, 3);
  assert_string_equal(e[1].reason, "top-up"); /* the default reason */
  assert_string_equal(e[2].reason, "back");
  assert_int_equal(e[2].available_micros, -500000);
  free(e);

  /* Top-ups stop below the balance cap: 99 of the largest fill all but
   * 3 USD of it; the 100th would pass it. */
  for (int i = 0; i < 99; i++)
    assert_int_equal(
        accounts_post_money(f->st, id, true, ACCOUNTS_MAX_AMOUNT_MICROS, NULL, &balance, &err), 0);
  assert_int_equal(balance, 99 * ACCOUNTS_MAX_AMOUNT_MICROS + 3000000);
  assert_int_equal(
      accounts_post_money(f->st, id, true, ACCOUNTS_MAX_AMOUNT_MICROS, NULL, &balance, &err), -1);
  assert_string_equal(err.slug, "invalid_amount");
  assert_int_equal(accounts_post_money(f->st, id, true, ACCOUNTS_MAX_AMOUNT_MICROS - 3000000,
                                       NULL, &balance, &err), 0);
  assert_int_equal(balance, ACCOUNTS_MAX_BALANCE_MICROS);
  assert_int_equal(accounts_post_money(f->st, id, true, 1, NULL, &balance, &err), -1);
  assert_int_equal(f->st->ops->ledger_verify(f->st), STORE_OK);

  /* Without default limits the store's (unlimited) stay. */
  cfg.default_max_concurrency = cfg.default_qps_per_key = 0;
  assert_int_equal(accounts_signup(f->st, &cfg, "free@example.com", &id, &err), 0);
  assert_int_equal(accounts_find(f->st, "free@example.com", &a, &err), 0);
  assert_int_equal(a.max_concurrency, 0);
  assert_int_equal(a.qps_per_key, 0);
}

static void test_ledger_csv(void **state) {
  (void)state;
  ledger_entry e[2] = {{.id = 7, .kind = LEDGER_TOPUP, .available_micros = 10500000,
                        .created_ms = 1700000000123LL},
                       {.id = 9, .kind = LEDGER_HOLD, .available_micros = -25000,
                        .held_micros = 25000, .created_ms = 1700000001000LL}};
  snprintf(e[0].reason, sizeof e[0].reason, "PO \"42\", paid");
  snprintf(e[1].task_id, sizeof e[1].task_id, "0b5f0c9e-0000-4000-8000-000000000001");
  buf out = BUF_INIT;
  assert_true(accounts_ledger_csv(e, 2, &out));
  assert_string_equal(out.data,
                      "id,time,kind,available_usd,held_usd,task,reason\n"
                      "7,2023-11-14T22:13:20.123Z,topup,10.500000,0.000000,,\"PO \"\"42\"\", paid\"\n"
                      "9,2023-11-14T22:13:21.000Z,hold,-0.025000,0.025000,"
                      "0b5f0c9e-0000-4000-8000-000000000001,\"\"\n");
  buf_free(&out);
  assert_true(accounts_ledger_csv(NULL, 0, &out));
  assert_string_equal(out.data, "id,time,kind,available_usd,held_usd,task,reason\n");
  buf_free(&out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_normalize_email),
      cmocka_unit_test(test_key_shape),
      cmocka_unit_test_setup_teardown(test_issue_authenticate_revoke, setup, teardown),
      cmocka_unit_test_setup_teardown(test_account_list, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_headers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_signup_and_money, setup, teardown),
      cmocka_unit_test(test_ledger_csv),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
