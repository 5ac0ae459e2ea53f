/* store.h - durable state: accounts, API keys, tasks with their results and
 * events, the webhook outbox and the accounts' webhook secrets.
 *
 * One interface, several backends (SQLite now, PostgreSQL later), the way
 * SQLite's VFS works: a struct of function pointers, one file per backend.
 * Nothing outside a backend knows SQL. Every function is safe to call from
 * any thread at the same time; a backend brings its own connection pool.
 *
 * Results: STORE_OK, or one of the negative codes below. Text returned through
 * out-parameters is malloc'd and owned by the caller unless said otherwise.
 *
 * Task events: every op that changes a task's state writes the event that
 * records it (task_event in core/task.h) in the same transaction, numbered
 * after the task's latest (task.event_seq): task_insert and
 * task_insert_idempotent write QUEUED (seq 1; a replay writes nothing),
 * task_start and task_start_many RUNNING, task_attempt_add ATTEMPT,
 * task_finish the final kind, task_requeue and task_requeue_running QUEUED,
 * task_cancel CANCELED. An op that changes nothing writes nothing.
 *
 * The webhook outbox: a delivery (one event for one URL, with a stable id) is
 * written by the op whose change it announces, in that op's transaction, so a
 * committed change never lacks its due delivery and a rolled-back one never
 * has one. The core decides which deliveries to write (store_outbox); the
 * backend only stores them and hands them to the dispatcher (webhook_claim),
 * which records each attempt (webhook_record). */
#ifndef IMGATE_STORE_H
#define IMGATE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/task.h"

enum {
  STORE_OK = 0,
  STORE_NOT_FOUND = -1, /* no such row */
  STORE_CONFLICT = -2,  /* unique key taken, or a compare-and-set found another state */
  STORE_ERROR = -3,     /* the backend failed (logged by the backend) */
  STORE_NO_CREDIT = -4, /* the account's available balance does not cover the amount */
  STORE_LIMIT = -5,     /* the account already has its maximum of tasks in flight */
  STORE_REPLAY = -6,    /* task_insert_idempotent: the key is known with the same request */
  STORE_IDEMPOTENCY_MISMATCH = -7, /* ... the key is known with a different request */
};

/* The idempotency key of a submit (task_insert_idempotent). Keys are per
 * account: two accounts may use the same key independently. */
typedef struct store_idem {
  const char *key;          /* as the client sent it; the caller checks its form */
  const char *request_hash; /* what identifies the request (the core: 64 hex of SHA-256) */
  int64_t ttl_ms;           /* a key this old (by the task's created_ms) is forgotten */
} store_idem;

typedef struct store_account {
  int64_t id;
  char email[256];
  bool disabled;
  int64_t created_ms;
  int64_t balance_micros;  /* available credit: the sum of the ledger's `available` column */
  int64_t held_micros;     /* held for tasks in flight: the sum of the ledger's `held` column */
  int max_concurrency;     /* tasks queued or running at once; 0 = unlimited */
  int qps_per_key;         /* requests per second per key; 0 = unlimited */
  int64_t key_id;          /* the key that authenticated (key_authenticate only), else 0 */
} store_account;

/* Ledger entry kinds. Each moves money between the account's available
 * balance and its held amount, or in or out of the account:
 *   grant, topup        available +x            (money in)
 *   refund              available -x            (unused credit paid back)
 *   adjustment          available +-x           (an operator's correction)
 *   hold                available -x, held +x   (a task's price, at submit)
 *   capture             held -x                 (a task's charge: the money is spent)
 *   release             available +x, held -x   (what a task did not spend)
 * A task has at most one hold, one capture and one release. */
typedef enum {
  LEDGER_GRANT = 0,
  LEDGER_TOPUP,
  LEDGER_HOLD,
  LEDGER_CAPTURE,
  LEDGER_RELEASE,
  LEDGER_REFUND,
  LEDGER_ADJUSTMENT,
} ledger_kind;

const char *ledger_kind_name(ledger_kind k);

typedef struct ledger_entry {
  int64_t id;
  int64_t account_id;
  ledger_kind kind;
  int64_t available_micros; /* signed change of the available balance */
  int64_t held_micros;      /* signed change of the held amount */
  char task_id[IDS_UUID_LEN + 1]; /* "" when not about a task */
  char reason[128];
  int64_t created_ms;
} ledger_entry;

typedef struct store_key {
  int64_t id;
  int64_t account_id;
  char prefix[24];   /* first characters of the key, safe to show ("igk_AbC1") */
  char name[64];
  int64_t created_ms;
  int64_t last_used_ms; /* 0 = never */
  int64_t revoked_ms;   /* 0 = active */
} store_key;

typedef struct store store;

/* A result image whose retention is over. */
typedef struct store_expired {
  char task_id[IDS_UUID_LEN + 1];
  int index;
  char blob_key[160];
} store_expired;

/* A blob key that one of a task's rows names (task_blob_refs). */
typedef struct store_blob_ref {
  bool result; /* a task_results row; else a task_inputs row (a reference image or the mask) */
  int index;
  /* The key the row holds; "" for an input given by URL, whose row keeps
   * the URL (the engine keeps its download under a key of its own). Room for
   * any key the blob store accepts (BLOB_KEY_MAX). */
  char blob_key[513];
  int64_t purged_ms; /* results: when retention deleted the image; 0 = not deleted */
} store_blob_ref;

/* A webhook delivery to write with a state change (made by the core, which
 * knows the rules). The row also records the task's id and account, the
 * time, state PENDING, attempts 0 and next_ms = the op's now (due at once). */
typedef struct store_outbox {
  const char *id;    /* "msg_" + 32 lower-case hex; the webhook-id of every attempt (< 40 chars) */
  const char *event; /* "task.succeeded", "task.running", ... (< 32 chars) */
  const char *url;   /* the task's webhook_url */
} store_outbox;

/* One task of a task_start_many call. */
typedef struct store_start {
  const char *task_id;
  const char *provider;        /* NULL keeps the recorded one */
  const store_outbox *outbox;  /* written when this task starts; NULL: none */
  int rc;                      /* out */
  int attempt;                 /* out, when rc is STORE_OK */
} store_start;

/* Where a webhook delivery stands. PENDING is due at its next_ms; the
 * others are final (until a webhook_resend makes it PENDING again). */
typedef enum {
  WEBHOOK_PENDING = 0,
  WEBHOOK_DELIVERED, /* a 2xx answer */
  WEBHOOK_FAILED,    /* the dispatcher gave up */
  WEBHOOK_GONE,      /* the receiver answered 410: it wants no more */
} webhook_state;

#define WEBHOOK_STATE_COUNT 4

/* "pending", "delivered", "failed", "gone"; "unknown" otherwise. */
const char *webhook_state_name(webhook_state s);

/* A delivery handed to the dispatcher (webhook_claim). */
typedef struct store_delivery {
  char id[40];
  char task_id[IDS_UUID_LEN + 1];
  int64_t account_id;
  char event[32];
  char *url;        /* malloc'd */
  char *payload;    /* malloc'd; NULL until an attempt stored the payload it sent */
  int attempts;     /* attempts made so far */
  int64_t created_ms;
} store_delivery;

/* Frees url and payload (and zeroes them); NULL is fine. */
void store_delivery_clear(store_delivery *d);
/* Clears n claimed deliveries and frees the array (webhook_claim's *out). */
void store_delivery_free(store_delivery *d, size_t n);

/* One finished attempt of a delivery (webhook_record). */
typedef struct store_delivery_result {
  const char *id;
  const char *payload;   /* the payload as sent, stored when given (NULL keeps what is stored) */
  int64_t at_ms;         /* when the attempt started */
  int http_status;       /* 0: no HTTP answer */
  int64_t duration_ms;
  const char *error;     /* NULL on a 2xx; else a short reason ("timeout", "HTTP 500") */
  webhook_state state;   /* after this attempt */
  int64_t next_ms;       /* PENDING: when it is due again */
} store_delivery_result;

/* One attempt of one of a task's deliveries (webhook_list). */
typedef struct store_webhook_attempt {
  char id[40];           /* the delivery's id */
  char event[32];
  int64_t at_ms;
  int http_status;
  int64_t duration_ms;
  char error[128];       /* "" on success; a longer stored reason is cut */
  webhook_state state;   /* the delivery's state now */
} store_webhook_attempt;

/* An account's webhook signing secrets (Standard Webhooks). Stored as they
 * are, not hashed: the dispatcher needs them to sign, so the database file
 * is as secret as they are. */
typedef struct store_webhook_secret {
  char current[80];          /* "whsec_" + base64 of 32 random bytes */
  char previous[80];         /* "" when none */
  int64_t previous_until_ms; /* previous also signs until then */
} store_webhook_secret;

typedef struct store_ops {
  const char *name; /* "sqlite" */
  void (*close)(store *s);

  /* Whether the store can still be trusted: STORE_OK, or STORE_ERROR with a
   * reason for operators in reason (may be NULL; "" when OK). A store is
   * broken when its storage was removed or replaced under it (the database
   * file the path named at open is no longer the file it names now), or when
   * an operation failed in a way that leaves its state in doubt (an I/O
   * error, a read-only or corrupt database). Broken is for good: the store
   * refuses every write from the moment it knows (so nothing is recorded, or
   * charged, where no one will find it again) and logs one ERROR event; only
   * opening it again (a restart) clears it. Reads go on answering from what
   * the store holds. Cheap enough for every request: one stat(2) of the
   * database file, no database access. */
  int (*health)(store *s, char *reason, size_t reason_size);

  /* Accounts. Emails are compared as given (callers lower-case them). */
  int (*account_create)(store *s, const char *email, int64_t now_ms, int64_t *id_out); /* CONFLICT if taken */
  int (*account_get_by_email)(store *s, const char *email, store_account *out);
  int (*account_get)(store *s, int64_t id, store_account *out);
  int (*account_count)(store *s, int64_t *count_out);
  /* All accounts, oldest first; *accounts is malloc'd (free it). */
  int (*account_list)(store *s, store_account **accounts, size_t *count);

  /* API keys: only a SHA-256 hex of the key is stored. */
  int (*key_create)(store *s, int64_t account_id, const char *hash_hex, const char *prefix,
                    const char *name, int64_t now_ms, int64_t *key_id_out);
  /* The account owning an active (not revoked) key with this hash; also
   * records last_used_ms (cheaply: at most once a minute per key). */
  int (*key_authenticate)(store *s, const char *hash_hex, int64_t now_ms, store_account *out,
                          int64_t *key_id_out);
  /* Revokes by id (when key_id > 0) or by hash (when hash_hex != NULL).
   * NOT_FOUND when no active key matches. */
  int (*key_revoke)(store *s, int64_t key_id, const char *hash_hex, int64_t now_ms);
  /* All keys of an account, newest first; *keys is malloc'd (free it). */
  int (*key_list)(store *s, int64_t account_id, store_key **keys, size_t *count);

  /* Creates an account and posts its signup grant (when grant_micros > 0) in
   * one transaction. CONFLICT when the email is taken. */
  int (*account_open)(store *s, const char *email, int64_t now_ms, int64_t grant_micros,
                      int64_t *id_out);
  /* Posts a grant, topup, refund or adjustment (available_micros signed;
   * positive for grant/topup, negative for refund). NO_CREDIT when it would
   * take the available balance below zero. *balance_out (may be NULL) is the
   * balance after. */
  int (*ledger_post)(store *s, int64_t account_id, ledger_kind kind, int64_t available_micros,
                     const char *reason, int64_t now_ms, int64_t *balance_out);
  /* An account's entries, oldest first; *entries is malloc'd (free it). */
  int (*ledger_list)(store *s, int64_t account_id, ledger_entry **entries, size_t *count);
  /* Compares every account's cached balance and held amount with its ledger
   * sums and every finished task's entries with its hold: a final task holds
   * nothing, only a succeeded one captured anything (failed, moderated and
   * canceled tasks released all of it). Returns OK, or CONFLICT (and logs
   * what differs). */
  int (*ledger_verify)(store *s);
  /* max_concurrency / qps_per_key: 0 = unlimited, < 0 = leave as is. */
  int (*account_set_limits)(store *s, int64_t account_id, int max_concurrency, int qps_per_key);
  int (*account_set_disabled)(store *s, int64_t account_id, bool disabled);
  /* The account's tasks queued or running now. */
  int (*task_count_active)(store *s, int64_t account_id, int64_t *count_out);

  /* Tasks. task_insert stores t (state queued) with its inputs, atomically;
   * when t->cost_held_micros > 0 it also holds that much of the account's
   * balance in the same transaction (NO_CREDIT, and nothing stored, when the
   * balance does not cover it), and refuses with LIMIT when the account's
   * max_concurrency tasks are already queued or running. The QUEUED event
   * (seq 1) goes in the same transaction. Stored as given: dialect (NULL:
   * "native"), public_base, deadline_ms, webhook_events, quality and
   * background (may be NULL), the mask (may be NULL: a task_inputs row of
   * role mask, numbered after the images); cancel_requested
   * and event_seq start at 0 and 1 whatever t says. */
  int (*task_insert)(store *s, const task *t);
  /* task_insert under an idempotency key, in one write transaction. When
   * the account already has the key, younger than idem->ttl_ms (now being
   * t->created_ms): REPLAY when its request_hash equals idem's, else
   * IDEMPOTENCY_MISMATCH; either way the first task's id is copied to
   * first_task_id and nothing is stored or held (the key's check comes before
   * the concurrency and credit checks, so a replay is never refused by them).
   * Otherwise the task, its hold and the key (with the hash and the task's id)
   * are stored together, replacing an expired entry of the same key; when the
   * insert is refused (NO_CREDIT, LIMIT, ...) the key is not stored either.
   * Each call also forgets up to 100 expired keys of any account, so the
   * table holds little more than the keys of the last ttl. Concurrent calls
   * with the same key serialize: exactly one inserts, the others replay. */
  int (*task_insert_idempotent)(store *s, const task *t, const store_idem *idem,
                                char first_task_id[IDS_UUID_LEN + 1]);
  /* Loads a task with its inputs (the images in inputs, the mask apart in
   * mask), results and upstream attempts, and its latest event's seq
   * (event_seq); *out is freed with task_free. */
  int (*task_get)(store *s, const char *task_id, task **out);
  /* The task's events with seq > after_seq, oldest first; *out is malloc'd
   * (free it), *n may be 0. NOT_FOUND when no task has this id. The list is
   * read in one statement (one snapshot), so a caller that then waits for
   * seq > the last one returned misses nothing. Tasks made before events
   * existed (schema 6) start with one event: their state at the upgrade. */
  int (*task_events)(store *s, const char *task_id, int after_seq, task_event **out, size_t *n);
  /* queued -> running, attempts+1, started_ms = now, provider recorded (NULL keeps it).
   * CONFLICT when the task is not queued. *attempt_out = the new attempts. */
  int (*task_start)(store *s, const char *task_id, const char *provider, int64_t now_ms,
                    int *attempt_out);
  /* task_start for several tasks in one transaction, so one disk sync covers
   * them all. Each item gets its own rc (OK, CONFLICT, NOT_FOUND) and, when
   * OK, its attempt; a started item's outbox row (if any) is written with
   * it. Returns STORE_OK, or an error when the transaction failed (then no
   * task was started, whatever the items say). */
  int (*task_start_many)(store *s, store_start *items, size_t n, int64_t now_ms);
  /* running -> final state, only if the task is running and its attempts
   * equal attempt (so a stale run can never finish it). Results (may be 0,
   * each with its price and reported quality and background) and the last upstream attempt
   * (may be NULL) are inserted in the same transaction, and so is the
   * task's billing: of what was held, charge_micros (the core's price of
   * what was delivered) is captured and the rest released. The amount is
   * the caller's: the store decides no price. charge_micros must be 0..the
   * task's hold, and 0 unless final_state is succeeded with results (a
   * failed, moderated or canceled task releases all of it); else ERROR and
   * nothing changes. The final event and the outbox row (may be NULL) go in
   * the same transaction too. CONFLICT when the compare fails: the task was
   * finished already (or re-run), and nothing changes, no event or outbox
   * row included. */
  int (*task_finish)(store *s, const char *task_id, int attempt, task_state final_state,
                     const char *error_code, const char *error_message,
                     const task_result *results, size_t n_results, int64_t charge_micros,
                     int64_t now_ms, const task_attempt *last_attempt,
                     const store_outbox *outbox);
  /* Cancels a task (code: "canceled" or "deadline_exceeded", stored as its
   * error_code), by its state, read and changed in one transaction:
   *   queued:  -> canceled, finished_ms = now, the whole hold released, the
   *            CANCELED event and the outbox row (may be NULL); STORE_OK.
   *   running: only cancel_requested = 1 (the engine aborts the run and
   *            finishes it with TASK_CANCELED, which releases the hold and
   *            writes the event and outbox row then); STORE_CONFLICT.
   *   final:   nothing changes; STORE_CONFLICT.
   * *state_out (may be NULL) is the task's state after the call, set on OK
   * and CONFLICT. NOT_FOUND when no task has this id. cancel_requested
   * survives a requeue, so a run after a crash is aborted as well. */
  int (*task_cancel)(store *s, const char *task_id, int64_t now_ms, const char *code,
                     const store_outbox *outbox, task_state *state_out);
  /* Ids of queued or running tasks whose deadline_ms is set and <= now,
   * soonest deadline first, at most limit (for the deadline sweep); *ids as
   * task_list_queued's. A running one is listed until it is final, whether
   * or not its cancel was requested. */
  int (*task_list_due)(store *s, int64_t now_ms, size_t limit, char (**ids)[IDS_UUID_LEN + 1],
                       size_t *count);
  /* Ids of one account's tasks, newest first (by created_ms, then id), at
   * most limit; with after set, only those that come after that task in
   * this order (a cursor: the last id of the previous page). *ids as
   * task_list_queued's. NOT_FOUND when after is not a task of the account. */
  int (*task_list_account)(store *s, int64_t account_id, const char *after, size_t limit,
                           char (**ids)[IDS_UUID_LEN + 1], size_t *count);
  /* Crash recovery at start: every running task goes back to queued (a
   * QUEUED event each). */
  int (*task_requeue_running)(store *s, int64_t *count_out);
  /* Ids of queued tasks, oldest first, at most limit; *ids is one malloc'd
   * array of count fixed-size strings (free it). */
  int (*task_list_queued)(store *s, size_t limit, char (**ids)[IDS_UUID_LEN + 1], size_t *count);
  /* Running tasks with their attempts counter, oldest start first, at most
   * limit; *items is malloc'd (free it). */
  int (*task_list_running)(store *s, size_t limit, store_start **items, size_t *count);
  /* running -> queued, only if the task is running with these attempts (a
   * run this process lost: its final write failed), with a QUEUED event.
   * CONFLICT otherwise. */
  int (*task_requeue)(store *s, const char *task_id, int attempt);
  /* Records one finished upstream attempt of a task that will be retried,
   * with an ATTEMPT event (provider, http_status, error_code or else
   * error_class; at_ms is the attempt's ended_ms). */
  int (*task_attempt_add)(store *s, const char *task_id, const task_attempt *a);
  /* Results whose expires_ms <= now and whose image is not deleted yet,
   * soonest first, at most limit; *items is malloc'd (free it). */
  int (*results_expired)(store *s, int64_t now_ms, size_t limit, store_expired **items,
                         size_t *count);
  /* Records that a result's image was deleted. NOT_FOUND when unknown or
   * recorded already. */
  int (*result_mark_purged)(store *s, const char *task_id, int index, int64_t now_ms);
  /* A task's state and the blob keys of its input and result rows, read
   * from one snapshot (for the orphan collector, which decides what counts).
   * NOT_FOUND when no task has this id. *refs is malloc'd (free it). */
  int (*task_blob_refs)(store *s, const char *task_id, task_state *state_out,
                        store_blob_ref **refs, size_t *count);
  /* The result behind a public URL token; *out fields are malloc'd (task_result_clear). */
  int (*result_by_token)(store *s, const char *token, task_result *out);

  /* Webhook deliveries (the outbox; rows are written by the task ops above).
   *
   * Claims up to limit PENDING deliveries due by now (next_ms <= now),
   * soonest due first, and moves each to next_ms = now + lease_ms in the same
   * transaction: a lease. If the process dies before recording the attempt,
   * the delivery is due again once the lease is over and is sent again with
   * the same id (receivers deduplicate by it). Claims never return a row
   * another claim holds; *out (free with store_delivery_free) may be empty. */
  int (*webhook_claim)(store *s, int64_t now_ms, int64_t lease_ms, size_t limit,
                       store_delivery **out, size_t *n);
  /* Records n finished attempts in one transaction: an attempt row each,
   * attempts + 1, the new state and next_ms, the payload when given. A
   * result whose id is unknown is skipped (not an error). */
  int (*webhook_record)(store *s, const store_delivery_result *r, size_t n);
  /* Every recorded attempt of the task's deliveries, oldest first (by at_ms);
   * *out is malloc'd (free it), *n may be 0. A delivery not yet attempted
   * has no row here. */
  int (*webhook_list)(store *s, const char *task_id, store_webhook_attempt **out, size_t *n);
  /* The task's latest delivery of a final event becomes PENDING, due at now,
   * with the same id and its attempts kept. NOT_FOUND when the task has no
   * such delivery (or does not exist). */
  int (*webhook_resend)(store *s, const char *task_id, int64_t now_ms);
  /* How many deliveries are PENDING (for metrics). */
  int (*webhook_pending_count)(store *s, int64_t *n);

  /* The account's webhook secrets. When it has none yet, fresh (made by the
   * core) is stored as its current secret and returned: of concurrent first
   * calls, one fresh wins and all return it. With fresh NULL, an account
   * without a secret is NOT_FOUND (nothing is stored). NOT_FOUND for an
   * unknown account. */
  int (*webhook_secret_get)(store *s, int64_t account_id, const char *fresh,
                            store_webhook_secret *out);
  /* fresh becomes the current secret; the old current one becomes previous
   * until previous_until_ms (an account without a secret just gets fresh,
   * with no previous). *out (may be NULL) is the result. NOT_FOUND for an
   * unknown account. */
  int (*webhook_secret_rotate)(store *s, int64_t account_id, const char *fresh,
                               int64_t previous_until_ms, store_webhook_secret *out);
} store_ops;

struct store {
  const store_ops *ops;
};

/* Opens (creating if needed) the SQLite database at path in WAL mode and
 * applies pending migrations. pool_size connections (1..STORE_SQLITE_MAX_POOL)
 * are shared by all threads. The store remembers the file's identity (device
 * and inode) and checks, before every write and in health, that path still
 * names that file. Returns NULL with a message in err on failure. Whether a
 * database may be created at path is the caller's decision (main.c and
 * datadir.h: only `serve` on a fresh folder and `admin init` create one). */
store *store_sqlite_open(const char *path, int pool_size, char *err, size_t err_size);

/* Creates (if needed) the database at path and applies migrations 1..version
 * only, then closes it: a database exactly as the imgate of that schema left
 * it, for tests of upgrades. false (with a message in err) on failure. */
bool store_sqlite_migrate_to(const char *path, int64_t version, char *err, size_t err_size);

/* Durability of a commit (PRAGMA synchronous, applied to every connection
 * opened afterwards). FULL (the default) syncs the WAL at every commit: a
 * commit survives a power loss. NORMAL syncs only at checkpoints: a process
 * crash loses nothing, but the last commits before a power loss or OS crash
 * can roll back. NORMAL commits several times faster on slow-sync disks. */
typedef enum { STORE_SYNC_FULL = 0, STORE_SYNC_NORMAL } store_sync;
void store_sqlite_set_sync(store_sync mode);

/* Most connections a SQLite pool holds. More would not help: SQLite runs
 * one writer at a time, and readers beyond this are rarely all busy. */
#define STORE_SQLITE_MAX_POOL 64

/* The pool size for a server with this many request threads: one connection
 * each, plus a few for the engine's threads, capped at STORE_SQLITE_MAX_POOL
 * (threads beyond it wait for a connection). */
int store_sqlite_pool_size(int threads);
/* Task writes (submits, starts, finishes) done so far, in how many
 * transactions (group commit: one commit serves every write that arrived
 * while the previous one was being written), how many wait for the next one
 * now, and whether one is being written. For tests and benchmarks. */
void store_sqlite_group_commit_stats(store *s, uint64_t *batches, uint64_t *submits,
                                     size_t *queued, bool *writing);

#endif
