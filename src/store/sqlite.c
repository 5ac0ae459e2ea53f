/* sqlite.c - the SQLite store backend.
 *
 * One database file in WAL mode, reached through a fixed pool of connections.
 * Each connection is opened SQLITE_OPEN_NOMUTEX: the pool hands a connection
 * to exactly one thread at a time, so SQLite's per-connection mutex would only
 * add cost. The statements the write paths run (sql_run, sql_scalar,
 * sql_update_task) are kept prepared per connection (sql_cache) and reset
 * after each use; the others are prepared per call and finalized before the
 * connection goes back.
 *
 * Writes that span statements run in BEGIN IMMEDIATE transactions: a deferred
 * transaction that reads and then writes can fail with SQLITE_BUSY on the
 * upgrade without the busy handler ever helping, while IMMEDIATE takes the
 * write lock up front, where busy_timeout waits for it. Multi-statement reads
 * run in plain BEGIN so they see one snapshot. */
#include "store/store.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/log.h"
#include "util/timeutil.h"
#include "util/utf8.h"

#define SQL_BUSY_TIMEOUT_MS 5000
/* last_used_ms is advisory; writing it on every request would turn each
 * authenticated call into a write transaction. */
#define SQL_LAST_USED_EVERY_MS 60000

/* Migrations, in order; version N is sql_migrations[N - 1]. An applied
 * migration is never edited: a change to the schema is a new entry. State
 * names are spelled out here rather than taken from task.c because a
 * migration must mean the same thing forever. */
static const char *const sql_migrations[] = {
    /* 1: accounts, API keys, tasks with their inputs and results. */
    "CREATE TABLE accounts("
    "  id INTEGER PRIMARY KEY,"
    "  email TEXT UNIQUE NOT NULL,"
    "  disabled INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL);"
    "CREATE TABLE api_keys("
    "  id INTEGER PRIMARY KEY,"
    "  account_id INTEGER NOT NULL REFERENCES accounts(id),"
    "  hash TEXT UNIQUE NOT NULL,"
    "  prefix TEXT NOT NULL,"
    "  name TEXT NOT NULL DEFAULT '',"
    "  created_ms INTEGER NOT NULL,"
    "  last_used_ms INTEGER NOT NULL DEFAULT 0,"
    "  revoked_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX api_keys_account ON api_keys(account_id, created_ms);"
    "CREATE TABLE tasks("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  account_id INTEGER NOT NULL REFERENCES accounts(id),"
    "  state TEXT NOT NULL CHECK (state IN"
    "    ('queued', 'running', 'succeeded', 'failed', 'moderated')),"
    "  model TEXT NOT NULL,"
    "  prompt TEXT NOT NULL,"
    "  aspect_ratio TEXT NOT NULL,"
    "  resolution TEXT NOT NULL,"
    "  webhook_url TEXT,"
    "  provider TEXT,"
    "  quantity INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  started_ms INTEGER NOT NULL DEFAULT 0,"
    "  finished_ms INTEGER NOT NULL DEFAULT 0,"
    "  error_code TEXT,"
    "  error_message TEXT);"
    "CREATE INDEX tasks_state_created ON tasks(state, created_ms);"
    "CREATE INDEX tasks_account_created ON tasks(account_id, created_ms);"
    "CREATE TABLE task_inputs("
    "  task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL,"
    "  blob_key TEXT,"
    "  url TEXT,"
    "  mime TEXT,"
    "  bytes INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (task_id, idx),"
    "  CHECK (blob_key IS NOT NULL OR url IS NOT NULL));"
    "CREATE TABLE task_results("
    "  task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,"
    "  idx INTEGER NOT NULL,"
    "  blob_key TEXT NOT NULL,"
    "  token TEXT UNIQUE NOT NULL,"
    "  mime TEXT NOT NULL,"
    "  etag TEXT,"
    "  width INTEGER NOT NULL DEFAULT 0,"
    "  height INTEGER NOT NULL DEFAULT 0,"
    "  bytes INTEGER NOT NULL DEFAULT 0,"
    "  expires_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (task_id, idx));",
    /* 2: the upstream attempts of each task (retries, failover, re-runs). */
    "CREATE TABLE task_attempts("
    "  task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,"
    "  seq INTEGER PRIMARY KEY,"
    "  run INTEGER NOT NULL,"
    "  provider TEXT NOT NULL,"
    "  upstream_model TEXT NOT NULL,"
    "  started_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER NOT NULL,"
    "  http_status INTEGER NOT NULL DEFAULT 0,"
    "  error_class TEXT NOT NULL,"
    "  error_code TEXT);"
    "CREATE INDEX task_attempts_task ON task_attempts(task_id, seq);",
    /* 3: prepaid credit. The ledger is the truth; accounts.balance and
     * accounts.held cache its sums and change only in the same transaction
     * as the entry that moves them. */
    "CREATE TABLE ledger("
    "  id INTEGER PRIMARY KEY,"
    "  account_id INTEGER NOT NULL REFERENCES accounts(id),"
    "  kind TEXT NOT NULL CHECK (kind IN"
    "    ('grant', 'topup', 'hold', 'capture', 'release', 'refund', 'adjustment')),"
    "  available INTEGER NOT NULL,"
    "  held INTEGER NOT NULL,"
    "  task_id TEXT REFERENCES tasks(id),"
    "  reason TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL);"
    "CREATE INDEX ledger_account ON ledger(account_id, id);"
    "CREATE UNIQUE INDEX ledger_task_once ON ledger(task_id, kind) WHERE task_id IS NOT NULL;"
    "ALTER TABLE accounts ADD COLUMN balance INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE accounts ADD COLUMN held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0);"
    "ALTER TABLE accounts ADD COLUMN max_concurrency INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE accounts ADD COLUMN qps_per_key INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN price_unit INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN price_refs INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN cost_held INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tasks ADD COLUMN cost_charged INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX tasks_account_state ON tasks(account_id, state);",
    /* 4: idempotency keys of submits: which task a key made, and a hash of
     * the request that made it. A row is written in the transaction that
     * inserts its task, so a key never points at a missing task. */
    "CREATE TABLE idempotency_keys("
    "  account_id INTEGER NOT NULL REFERENCES accounts(id),"
    "  key TEXT NOT NULL,"
    "  request_hash TEXT NOT NULL,"
    "  task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,"
    "  created_ms INTEGER NOT NULL,"
    "  PRIMARY KEY (account_id, key));"
    "CREATE INDEX idempotency_keys_created ON idempotency_keys(created_ms);",
    /* 5: retention. A result whose time is up has its image deleted; the row
     * stays (the task's history), marked purged. */
    "ALTER TABLE task_results ADD COLUMN purged_ms INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX task_results_due ON task_results(expires_ms) WHERE purged_ms = 0;",
    /* 6: delivery. The state 'canceled' needs a new CHECK on tasks.state,
     * and SQLite cannot change a CHECK in place: the table is rebuilt (the
     * documented way: new table, copy, drop, rename, indexes again; foreign
     * keys are off while migrations run, see sql_migrate), with the new
     * columns. Then task events (one per task so far: its state now, so every
     * task's latest event matches its state), the webhook outbox with its
     * attempts, and the accounts' webhook secrets. */
    "CREATE TABLE tasks_v6("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  account_id INTEGER NOT NULL REFERENCES accounts(id),"
    "  state TEXT NOT NULL CHECK (state IN"
    "    ('queued', 'running', 'succeeded', 'failed', 'moderated', 'canceled')),"
    "  model TEXT NOT NULL,"
    "  prompt TEXT NOT NULL,"
    "  aspect_ratio TEXT NOT NULL,"
    "  resolution TEXT NOT NULL,"
    "  webhook_url TEXT,"
    "  provider TEXT,"
    "  quantity INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  started_ms INTEGER NOT NULL DEFAULT 0,"
    "  finished_ms INTEGER NOT NULL DEFAULT 0,"
    "  error_code TEXT,"
    "  error_message TEXT,"
    "  price_unit INTEGER NOT NULL DEFAULT 0,"
    "  price_refs INTEGER NOT NULL DEFAULT 0,"
    "  cost_held INTEGER NOT NULL DEFAULT 0,"
    "  cost_charged INTEGER NOT NULL DEFAULT 0,"
    "  dialect TEXT NOT NULL DEFAULT 'native',"
    "  public_base TEXT,"
    "  deadline_ms INTEGER NOT NULL DEFAULT 0,"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0,"
    "  webhook_events INTEGER NOT NULL DEFAULT 0,"
    "  event_seq INTEGER NOT NULL DEFAULT 0);"
    "INSERT INTO tasks_v6(id, account_id, state, model, prompt, aspect_ratio, resolution,"
    "  webhook_url, provider, quantity, attempts, created_ms, started_ms, finished_ms,"
    "  error_code, error_message, price_unit, price_refs, cost_held, cost_charged, event_seq)"
    "  SELECT id, account_id, state, model, prompt, aspect_ratio, resolution, webhook_url,"
    "  provider, quantity, attempts, created_ms, started_ms, finished_ms, error_code,"
    "  error_message, price_unit, price_refs, cost_held, cost_charged, 1 FROM tasks;"
    "DROP TABLE tasks;"
    "ALTER TABLE tasks_v6 RENAME TO tasks;"
    "CREATE INDEX tasks_state_created ON tasks(state, created_ms);"
    "CREATE INDEX tasks_account_created ON tasks(account_id, created_ms);"
    "CREATE INDEX tasks_account_state ON tasks(account_id, state);"
    "CREATE INDEX tasks_due ON tasks(deadline_ms)"
    "  WHERE deadline_ms > 0 AND state IN ('queued', 'running');"
    "CREATE TABLE task_events("
    "  task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,"
    "  seq INTEGER NOT NULL,"
    "  kind TEXT NOT NULL CHECK (kind IN ('queued', 'running', 'attempt', 'succeeded',"
    "    'failed', 'moderated', 'canceled')),"
    "  at_ms INTEGER NOT NULL,"
    "  run INTEGER NOT NULL DEFAULT 0,"
    "  provider TEXT NOT NULL DEFAULT '',"
    "  http_status INTEGER NOT NULL DEFAULT 0,"
    "  error_code TEXT NOT NULL DEFAULT '',"
    "  PRIMARY KEY (task_id, seq)) WITHOUT ROWID;"
    "INSERT INTO task_events(task_id, seq, kind, at_ms, run, provider, error_code)"
    "  SELECT id, 1, state, CASE state WHEN 'queued' THEN created_ms"
    "  WHEN 'running' THEN started_ms ELSE finished_ms END, attempts,"
    "  CASE state WHEN 'running' THEN COALESCE(provider, '') ELSE '' END,"
    "  CASE WHEN state IN ('failed', 'moderated') THEN COALESCE(error_code, '') ELSE '' END"
    "  FROM tasks;"
    "CREATE TABLE webhook_deliveries("
    "  id TEXT PRIMARY KEY NOT NULL,"
    "  task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,"
    "  account_id INTEGER NOT NULL REFERENCES accounts(id),"
    "  event TEXT NOT NULL,"
    "  url TEXT NOT NULL,"
    "  payload TEXT,"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed', 'gone')),"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  next_ms INTEGER NOT NULL);"
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_ms)"
    "  WHERE state = 'pending';"
    "CREATE INDEX webhook_deliveries_task ON webhook_deliveries(task_id, created_ms);"
    "CREATE TABLE webhook_attempts("
    "  id INTEGER PRIMARY KEY,"
    "  delivery_id TEXT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,"
    "  at_ms INTEGER NOT NULL,"
    "  http_status INTEGER NOT NULL DEFAULT 0,"
    "  duration_ms INTEGER NOT NULL DEFAULT 0,"
    "  error TEXT);"
    "CREATE INDEX webhook_attempts_delivery ON webhook_attempts(delivery_id, id);"
    "CREATE TABLE webhook_secrets("
    "  account_id INTEGER PRIMARY KEY REFERENCES accounts(id),"
    "  current TEXT NOT NULL,"
    "  previous TEXT NOT NULL DEFAULT '',"
    "  previous_until_ms INTEGER NOT NULL DEFAULT 0);",
    /* 7: output formats. The format the client wants its images in (NULL:
     * as the upstream made them) and the quality of JPEG and WebP, kept so
     * that a re-run after a restart converts the same way. Tasks from
     * before get NULL and 100: what they were served. */
    "ALTER TABLE tasks ADD COLUMN output_format TEXT"
    "  CHECK (output_format IN ('png', 'jpeg', 'webp'));"
    "ALTER TABLE tasks ADD COLUMN output_compression INTEGER NOT NULL DEFAULT 100"
    "  CHECK (output_compression BETWEEN 0 AND 100);",
    /* 8: GPT Image priced by quality and size. The quality a task asked for
     * (NULL for models that have none); each delivered image's price, as
     * the core charged it, and the quality its upstream reported (NULL when
     * it did not say). Images delivered before were each charged their
     * task's unit price. */
    "ALTER TABLE tasks ADD COLUMN quality TEXT;"
    "ALTER TABLE task_results ADD COLUMN price INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE task_results ADD COLUMN quality TEXT;"
    "UPDATE task_results SET price ="
    "  (SELECT price_unit FROM tasks WHERE tasks.id = task_results.task_id);",
    /* 9: transparent backgrounds and edit masks. The background a task asked
     * for (NULL: not given, auto); the background each delivered image's
     * upstream reported making (NULL when it did not say); and the role of
     * each input row: a reference image, or the task's mask (at most one,
     * stored like an uploaded image, numbered after the images). Rows from
     * before are images. */
    "ALTER TABLE tasks ADD COLUMN background TEXT"
    "  CHECK (background IN ('auto', 'opaque', 'transparent'));"
    "ALTER TABLE task_results ADD COLUMN background TEXT;"
    "ALTER TABLE task_inputs ADD COLUMN role TEXT NOT NULL DEFAULT 'image'"
    "  CHECK (role IN ('image', 'mask'));"
    "CREATE UNIQUE INDEX task_inputs_one_mask ON task_inputs(task_id) WHERE role = 'mask';",
};

#define SQL_MIGRATION_COUNT ((int64_t)(sizeof sql_migrations / sizeof sql_migrations[0]))

/* Statements kept prepared for one connection. Preparing costs more than
 * running most statements here: before this cache it was half of the
 * instructions of a task's writes (callgrind), and it grows with the schema
 * (each table's indexes, checks and foreign keys are looked at). Keyed by
 * the address of the SQL text, confirmed by the text itself (every SQL here
 * is a literal, but a reused buffer must never find another statement). */
#define SQL_CACHE_SIZE 64

typedef struct sql_cache {
  sqlite3 *db;
  size_t n;
  struct {
    const char *sql;
    sqlite3_stmt *st;
  } items[SQL_CACHE_SIZE];
} sql_cache;

typedef struct sql_store {
  store base; /* first, so a store * is a sql_store * */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* Held for every write, transaction or single statement. SQLite admits one
   * writer at a time anyway; queueing our own writers on a mutex instead of
   * in SQLite's busy handler (which sleeps 1, 2, 5, 10... ms between tries)
   * keeps a burst of writes from turning into a burst of sleeps. busy_timeout
   * still covers writers in other processes (the admin CLI). */
  pthread_mutex_t write_mu;
  /* Group commit of submits (sql_insert_task_tx): inserts that arrive while
   * one is being written wait in this queue (under mu); the next one to go
   * writes them all in one transaction, each under its own savepoint, and
   * one commit (one fsync) makes them all durable. */
  pthread_cond_t gc_cv;          /* a batch was committed */
  struct sql_write_job *gc_head, *gc_tail;
  bool gc_writing;               /* a thread is writing a batch */
  uint64_t gc_batches, gc_jobs;  /* for tests and benchmarks (under mu) */
  size_t n_waiting; /* threads in sql_acquire waiting for a connection (under mu) */
  sqlite3 **conns; /* every connection, for close */
  sql_cache *caches; /* caches[i] is conns[i]'s */
  sqlite3 **idle;  /* stack of connections nobody holds */
  size_t n_conns, n_idle;
  /* The database file as opened. Open connections keep writing to that file
   * even after `rm` or a rename over it; the path is checked against this
   * identity before every write (sql_writable) and by health. */
  char *db_path; /* absolute, as SQLite resolved it */
  dev_t db_dev;
  ino_t db_ino;
  /* Set once, never cleared (sql_break). broken_reason is written before
   * broken is set and never changes after, so a reader that sees broken can
   * read it without a lock; broken_mu orders the writers. */
  _Atomic bool broken;
  pthread_mutex_t broken_mu;
  char broken_reason[256];
} sql_store;

/* The store whose connection this thread holds, from sql_acquire to
 * sql_release. The statement helpers below see only a connection; through
 * this, a failure deep inside one can still mark its store broken. */
static _Thread_local sql_store *sql_thread_store;
/* The statement cache of the connection this thread holds (NULL outside
 * sql_acquire..sql_release, e.g. while migrating). */
static _Thread_local sql_cache *sql_thread_cache;

/* ---- a broken store -------------------------------------------------------------------- */

static void sql_break(sql_store *ss, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Marks the store broken for good, with a reason for operators; the first
 * call logs it as an ERROR, later ones change nothing. */
static void sql_break(sql_store *ss, const char *fmt, ...) {
  pthread_mutex_lock(&ss->broken_mu);
  if (!atomic_load(&ss->broken)) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ss->broken_reason, sizeof ss->broken_reason, fmt, ap);
    va_end(ap);
    atomic_store(&ss->broken, true);
    char qr[300], qp[300];
    LOG_ERROR("store_broken", "reason=%s path=%s action=%s",
              log_quote(ss->broken_reason, qr, sizeof qr), log_quote(ss->db_path, qp, sizeof qp),
              "writes_refused_until_restart");
  }
  pthread_mutex_unlock(&ss->broken_mu);
}

/* The file name alone, for reasons that may be shown to anyone who can
 * reach /healthz: the folder layout stays in the log. */
static const char *sql_file_name(const sql_store *ss) {
  const char *slash = strrchr(ss->db_path, '/');
  return slash ? slash + 1 : ss->db_path;
}

/* STORE_OK while the path still names the file the store opened. A stat
 * costs well under a microsecond, next to a commit's fsync. */
static int sql_check_identity(sql_store *ss) {
  if (atomic_load(&ss->broken)) return STORE_ERROR;
  struct stat st;
  if (stat(ss->db_path, &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      sql_break(ss, "the database file %s was removed after the server opened it",
                sql_file_name(ss));
    else
      sql_break(ss, "the database file %s cannot be checked: %s", sql_file_name(ss),
                strerror(errno));
    return STORE_ERROR;
  }
  if (st.st_dev != ss->db_dev || st.st_ino != ss->db_ino) {
    sql_break(ss, "the database file %s was replaced by another file after the server opened it",
              sql_file_name(ss));
    return STORE_ERROR;
  }
  return STORE_OK;
}

/* Called under the write mutex right before a write commits (or, for a
 * single statement, runs): a write into a file that is no longer the
 * database would be acknowledged and then lost at the next start. */
static int sql_writable(sql_store *ss) { return sql_check_identity(ss); }

/* Failures that leave the database's state in doubt. After a failed fsync
 * the kernel may have dropped the dirty pages while a retry reports success,
 * so an I/O error is not retried but ends the store's life: a restart
 * recovers from what is really on disk. SQLITE_FULL is not here: SQLite
 * rolls the transaction back cleanly and the next write may succeed. */
static bool sql_rc_breaks_store(int rc) {
  switch (rc & 0xff) {
  case SQLITE_IOERR: return rc != SQLITE_IOERR_NOMEM;
  case SQLITE_CORRUPT:
  case SQLITE_NOTADB:
  case SQLITE_READONLY:
    return true;
  default:
    return false;
  }
}

static int sql_health(store *s, char *reason, size_t reason_size) {
  sql_store *ss = (sql_store *)s;
  int rc = sql_check_identity(ss);
  if (reason && reason_size)
    snprintf(reason, reason_size, "%s", rc == STORE_OK ? "" : ss->broken_reason);
  return rc;
}

/* ---- errors ---------------------------------------------------------------------------- */

static int sql_fail(sqlite3 *db, int rc, const char *what) {
  char q[512];
  LOG_ERROR("sqlite_error", "op=%s rc=%d err=%s", what, rc,
            log_quote(db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), q, sizeof q));
  if (sql_thread_store && sql_rc_breaks_store(rc))
    sql_break(sql_thread_store, "the database failed: %s (during %s, code %d)",
              sqlite3_errstr(rc), what, rc);
  return STORE_ERROR;
}

static int sql_oom(const char *what) {
  LOG_ERROR("out_of_memory", "op=%s", what);
  return STORE_ERROR;
}

/* A caller handed us something the store cannot represent faithfully. */
static int sql_misuse(const char *what, const char *why) {
  char q[256];
  LOG_ERROR("store_misuse", "op=%s why=%s", what, log_quote(why, q, sizeof q));
  return STORE_ERROR;
}

/* Maps a failed step to a store code. Extended result codes are on, so rc
 * tells which constraint failed. A missing parent row (an account or task
 * that does not exist) is NOT_FOUND. */
static int sql_map(sqlite3 *db, int rc, const char *what) {
  switch (rc) {
  case SQLITE_CONSTRAINT_UNIQUE:
  case SQLITE_CONSTRAINT_PRIMARYKEY:
    return STORE_CONFLICT;
  case SQLITE_CONSTRAINT_FOREIGNKEY:
    return STORE_NOT_FOUND;
  default:
    return sql_fail(db, rc, what);
  }
}

static void sql_set_err(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void sql_set_err(char *err, size_t err_size, const char *fmt, ...) {
  if (!err || err_size == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_size, fmt, ap);
  va_end(ap);
}

/* ---- statements ------------------------------------------------------------------------ */

/* Binds arguments by type letter: 't' const char * (NULL binds SQL NULL),
 * 'I' int64_t, 'i' int. Parameters are numbered from 1 in order. */
static int sql_bind_va(sqlite3_stmt *st, const char *types, va_list ap) {
  int rc = SQLITE_OK;
  for (int i = 0; types[i] && rc == SQLITE_OK; i++) {
    switch (types[i]) {
    case 't': {
      const char *s = va_arg(ap, const char *);
      rc = s ? sqlite3_bind_text(st, i + 1, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i + 1);
      break;
    }
    case 'I':
      rc = sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
      break;
    case 'i':
      rc = sqlite3_bind_int(st, i + 1, va_arg(ap, int));
      break;
    default:
      rc = SQLITE_MISUSE;
    }
  }
  return rc;
}

static int sql_prepare_va(sqlite3 *db, sqlite3_stmt **st, const char *what, const char *sql,
                          const char *types, va_list ap) {
  *st = NULL;
  int rc = sqlite3_prepare_v2(db, sql, -1, st, NULL);
  if (rc != SQLITE_OK) return sql_fail(db, rc, what);
  rc = sql_bind_va(*st, types, ap);
  if (rc != SQLITE_OK) {
    int r = sql_fail(db, rc, what);
    sqlite3_finalize(*st);
    *st = NULL;
    return r;
  }
  return STORE_OK;
}

/* Prepares sql and binds the arguments; the caller finalizes *st. */
static int sql_prepare(sqlite3 *db, sqlite3_stmt **st, const char *what, const char *sql,
                       const char *types, ...) {
  va_list ap;
  va_start(ap, types);
  int rc = sql_prepare_va(db, st, what, sql, types, ap);
  va_end(ap);
  return rc;
}

/* A statement for sql, bound: from the thread's connection cache when it is
 * there, else prepared (and kept, while the cache has room). *cached tells
 * sql_stmt_done what to do with it. */
static int sql_stmt_get(sqlite3 *db, sqlite3_stmt **st, bool *cached, const char *what,
                        const char *sql, const char *types, va_list ap) {
  sql_cache *c = sql_thread_cache;
  *cached = false;
  if (!c || c->db != db) return sql_prepare_va(db, st, what, sql, types, ap);
  for (size_t i = 0; i < c->n; i++) {
    if (c->items[i].sql != sql || strcmp(sqlite3_sql(c->items[i].st), sql) != 0) continue;
    /* In use further up this thread's stack: no helper here nests, but a
     * shared statement would be rebound under its user. */
    if (sqlite3_stmt_busy(c->items[i].st)) return sql_prepare_va(db, st, what, sql, types, ap);
    *st = c->items[i].st;
    int rc = sql_bind_va(*st, types, ap);
    if (rc != SQLITE_OK) {
      sqlite3_clear_bindings(*st);
      *st = NULL;
      return sql_fail(db, rc, what);
    }
    *cached = true;
    return STORE_OK;
  }
  int rc = sql_prepare_va(db, st, what, sql, types, ap);
  if (rc == STORE_OK && c->n < SQL_CACHE_SIZE) {
    c->items[c->n].sql = sql;
    c->items[c->n].st = *st;
    c->n++;
    *cached = true;
  }
  return rc;
}

/* sql_stmt_get with the arguments here: for reads run often (task_get on
 * every poll and for every webhook payload), whose parse otherwise costs more
 * than the read itself. Give the statement back with sql_stmt_done. */
static int sql_prepare_kept(sqlite3 *db, sqlite3_stmt **st, bool *cached, const char *what,
                            const char *sql, const char *types, ...) {
  va_list ap;
  va_start(ap, types);
  int rc = sql_stmt_get(db, st, cached, what, sql, types, ap);
  va_end(ap);
  return rc;
}

/* Gives back what sql_stmt_get gave: a cached statement is reset and
 * unbound (which also ends any read it had open), another finalized. */
static void sql_stmt_done(sqlite3_stmt *st, bool cached) {
  if (!cached) {
    sqlite3_finalize(st);
    return;
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

/* Finalizes every statement of a connection's cache (before it closes). */
static void sql_cache_clear(sql_cache *c) {
  for (size_t i = 0; i < c->n; i++) sqlite3_finalize(c->items[i].st);
  c->n = 0;
}

/* Steps a statement that must return a row: OK on a row, NOT_FOUND on none. */
static int sql_step_row(sqlite3 *db, sqlite3_stmt *st, const char *what) {
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) return STORE_OK;
  if (rc == SQLITE_DONE) return STORE_NOT_FOUND;
  return sql_map(db, rc, what);
}

static int sql_run_va(sqlite3 *db, const char *what, const char *sql, const char *types,
                      va_list ap) {
  sqlite3_stmt *st;
  bool cached;
  int rc = sql_stmt_get(db, &st, &cached, what, sql, types, ap);
  if (rc != STORE_OK) return rc;
  int step = sqlite3_step(st);
  rc = (step == SQLITE_DONE || step == SQLITE_ROW) ? STORE_OK : sql_map(db, step, what);
  sql_stmt_done(st, cached);
  return rc;
}

/* Runs one statement that returns no rows. */
static int sql_run(sqlite3 *db, const char *what, const char *sql, const char *types, ...) {
  va_list ap;
  va_start(ap, types);
  int rc = sql_run_va(db, what, sql, types, ap);
  va_end(ap);
  return rc;
}

/* Copies a text column into a malloc'd string; SQL NULL gives NULL. */
static bool sql_col_dup(sqlite3_stmt *st, int col, char **dst) {
  *dst = NULL;
  if (sqlite3_column_type(st, col) == SQLITE_NULL) return true;
  const unsigned char *text = sqlite3_column_text(st, col);
  if (!text) return false; /* the conversion to text ran out of memory */
  *dst = strdup((const char *)text);
  return *dst != NULL;
}

/* Copies a text column into a fixed buffer; false when it does not fit. */
static bool sql_col_copy(sqlite3_stmt *st, int col, char *dst, size_t size) {
  const unsigned char *text = sqlite3_column_text(st, col);
  const char *s = text ? (const char *)text : "";
  size_t len = strlen(s);
  if (len >= size) return false;
  memcpy(dst, s, len + 1);
  return true;
}

/* Copies a text column into a fixed buffer, cut on a character boundary
 * when it does not fit: for text that is only shown (codes, reasons). */
static void sql_col_cut(sqlite3_stmt *st, int col, char *dst, size_t size) {
  const unsigned char *text = sqlite3_column_text(st, col);
  const char *s = text ? (const char *)text : "";
  size_t len = utf8_cut(s, size - 1);
  memcpy(dst, s, len);
  dst[len] = '\0';
}

/* Makes room for need elements of size elem; returns the (maybe moved)
 * array, or NULL with arr untouched when memory runs out. */
static void *sql_grow(void *arr, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return arr;
  size_t n = *cap ? *cap : 8;
  while (n < need) n *= 2;
  if (n > SIZE_MAX / elem) return NULL;
  void *p = realloc(arr, n * elem);
  if (p) *cap = n;
  return p;
}

/* Reads the current row into elem (which the reader may assume zeroed).
 * On failure the reader frees what it allocated and returns an error code. */
typedef int (*sql_row_reader)(sqlite3_stmt *st, void *elem);

/* Steps st to its end, appending one elem_size element per row to *arr (grown
 * as needed) and counting them in *count. On error, *arr and *count hold the
 * rows read so far, for the caller to free. */
static int sql_collect(sqlite3 *db, sqlite3_stmt *st, const char *what, sql_row_reader read,
                       size_t elem_size, void **arr, size_t *count) {
  size_t cap = *count;
  int step;
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    char *p = sql_grow(*arr, &cap, *count + 1, elem_size);
    if (!p) return sql_oom(what);
    *arr = p;
    char *elem = p + *count * elem_size;
    memset(elem, 0, elem_size);
    int rc = read(st, elem);
    if (rc != STORE_OK) return rc;
    (*count)++;
  }
  return step == SQLITE_DONE ? STORE_OK : sql_map(db, step, what);
}


/* ---- transactions ---------------------------------------------------------------------- */

static int sql_begin_write(sqlite3 *db) { return sql_run(db, "begin", "BEGIN IMMEDIATE", ""); }

static void sql_write_lock(sql_store *ss) { pthread_mutex_lock(&ss->write_mu); }
static void sql_write_unlock(sql_store *ss) { pthread_mutex_unlock(&ss->write_mu); }

/* A write transaction of this process: the write mutex, then BEGIN IMMEDIATE. */
static int sql_write_begin(sql_store *ss, sqlite3 *db) {
  sql_write_lock(ss);
  int rc = sql_begin_write(db);
  if (rc != STORE_OK) sql_write_unlock(ss);
  return rc;
}
static int sql_begin_read(sqlite3 *db) { return sql_run(db, "begin", "BEGIN", ""); }

static void sql_rollback(sqlite3 *db) {
  /* Some errors (SQLITE_FULL, IOERR, NOMEM) end the transaction themselves. */
  if (!sqlite3_get_autocommit(db)) sql_run(db, "rollback", "ROLLBACK", "");
}

/* Commits when rc is OK, rolls back otherwise; returns the final code. */
static int sql_end(sqlite3 *db, int rc) {
  if (rc == STORE_OK) rc = sql_run(db, "commit", "COMMIT", "");
  if (rc != STORE_OK) sql_rollback(db);
  return rc;
}

/* Ends what sql_write_begin began; nothing commits into a file that is no
 * longer the database. */
static int sql_write_end(sql_store *ss, sqlite3 *db, int rc) {
  if (rc == STORE_OK) rc = sql_writable(ss);
  rc = sql_end(db, rc);
  sql_write_unlock(ss);
  return rc;
}

/* ---- the pool -------------------------------------------------------------------------- */

static sqlite3 *sql_acquire(sql_store *ss) {
  pthread_mutex_lock(&ss->mu);
  while (ss->n_idle == 0) {
    ss->n_waiting++;
    pthread_cond_wait(&ss->cv, &ss->mu);
    ss->n_waiting--;
  }
  sqlite3 *db = ss->idle[--ss->n_idle];
  pthread_mutex_unlock(&ss->mu);
  assert(!sql_thread_store); /* one connection per thread at a time */
  sql_thread_store = ss;
  for (size_t i = 0; i < ss->n_conns; i++)
    if (ss->caches[i].db == db) sql_thread_cache = &ss->caches[i];
  assert(sql_thread_cache);
  return db;
}

static void sql_release(sql_store *ss, sqlite3 *db) {
  /* Never hand the next thread a connection stuck inside a transaction. */
  if (!sqlite3_get_autocommit(db)) {
    LOG_ERROR("sqlite_connection_returned_inside_a_transaction", NULL);
    sql_rollback(db);
  }
  sql_thread_store = NULL;
  sql_thread_cache = NULL;
  pthread_mutex_lock(&ss->mu);
  ss->idle[ss->n_idle++] = db;
  /* A signal nobody waits for still costs a futex call on every release. */
  if (ss->n_waiting) pthread_cond_signal(&ss->cv);
  pthread_mutex_unlock(&ss->mu);
}

/* One list query on a pooled connection: prepare with the arguments, collect
 * every row with read, give the connection back. On error *arr is freed and
 * *count is 0, so callers only ever see a whole list or none. */
static int sql_list(sql_store *ss, const char *what, sql_row_reader read, size_t elem_size,
                    void **arr, size_t *count, const char *sql, const char *types, ...) {
  *arr = NULL;
  *count = 0;
  sqlite3 *db = sql_acquire(ss);
  sqlite3_stmt *st;
  va_list ap;
  va_start(ap, types);
  int rc = sql_prepare_va(db, &st, what, sql, types, ap);
  va_end(ap);
  if (rc == STORE_OK) {
    rc = sql_collect(db, st, what, read, elem_size, arr, count);
    sqlite3_finalize(st);
  }
  sql_release(ss, db);
  if (rc != STORE_OK) {
    free(*arr);
    *arr = NULL;
    *count = 0;
  }
  return rc;
}

/* One writing statement on its own, outside any transaction: a pooled
 * connection, and the write mutex around the statement. When it changes no
 * row the answer is none_rc (STORE_OK when that is fine). changes_out and
 * rowid_out (each may be NULL) receive the rows changed and the rowid an
 * INSERT made. */
static int sql_write_one(sql_store *ss, const char *what, int none_rc, int64_t *changes_out,
                         int64_t *rowid_out, const char *sql, const char *types, ...) {
  sqlite3 *db = sql_acquire(ss);
  sql_write_lock(ss);
  /* The statement commits itself: the check comes before it. */
  int rc = sql_writable(ss);
  if (rc == STORE_OK) {
    va_list ap;
    va_start(ap, types);
    rc = sql_run_va(db, what, sql, types, ap);
    va_end(ap);
  }
  if (rc == STORE_OK) {
    int changes = sqlite3_changes(db);
    if (changes_out) *changes_out = changes;
    if (rowid_out) *rowid_out = sqlite3_last_insert_rowid(db);
    if (changes == 0) rc = none_rc;
  }
  sql_write_unlock(ss);
  sql_release(ss, db);
  return rc;
}

/* ---- accounts -------------------------------------------------------------------------- */

static int sql_read_account(sqlite3_stmt *st, int col, store_account *out) {
  memset(out, 0, sizeof *out);
  out->id = sqlite3_column_int64(st, col);
  if (!sql_col_copy(st, col + 1, out->email, sizeof out->email))
    return sql_misuse("read_account", "stored email too long");
  out->disabled = sqlite3_column_int(st, col + 2) != 0;
  out->created_ms = sqlite3_column_int64(st, col + 3);
  out->balance_micros = sqlite3_column_int64(st, col + 4);
  out->held_micros = sqlite3_column_int64(st, col + 5);
  out->max_concurrency = sqlite3_column_int(st, col + 6);
  out->qps_per_key = sqlite3_column_int(st, col + 7);
  return STORE_OK;
}

static int sql_account_create(store *s, const char *email, int64_t now_ms, int64_t *id_out) {
  if (!email || strlen(email) >= sizeof ((store_account *)0)->email)
    return sql_misuse("account_create", "email missing or too long");
  return sql_write_one((sql_store *)s, "account_create", STORE_OK, NULL, id_out,
                       "INSERT INTO accounts(email, disabled, created_ms) VALUES (?, 0, ?)", "tI",
                       email, now_ms);
}

#define SQL_ACCOUNT_COLUMNS "id, email, disabled, created_ms, balance, held, max_concurrency, qps_per_key"
#define SQL_ACCOUNT_SELECT "SELECT " SQL_ACCOUNT_COLUMNS " FROM accounts"

/* Steps a prepared account query (rc is how preparing went), reads its row
 * and finalizes the statement. */
static int sql_account_row(sqlite3 *db, sqlite3_stmt *st, bool cached, int rc,
                           const char *what, store_account *out) {
  if (rc != STORE_OK) return rc;
  rc = sql_step_row(db, st, what);
  if (rc == STORE_OK) rc = sql_read_account(st, 0, out);
  sql_stmt_done(st, cached);
  return rc;
}

static int sql_account_get_by_email(store *s, const char *email, store_account *out) {
  if (!email) return STORE_NOT_FOUND;
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  sqlite3_stmt *st;
  bool cached = false;
  int rc = sql_prepare_kept(db, &st, &cached, "account_get_by_email",
                            SQL_ACCOUNT_SELECT " WHERE email = ?", "t", email);
  rc = sql_account_row(db, st, cached, rc, "account_get_by_email", out);
  sql_release(ss, db);
  return rc;
}

static int sql_account_get(store *s, int64_t id, store_account *out) {
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  sqlite3_stmt *st;
  bool cached = false;
  int rc = sql_prepare_kept(db, &st, &cached, "account_get", SQL_ACCOUNT_SELECT " WHERE id = ?",
                            "I", id);
  rc = sql_account_row(db, st, cached, rc, "account_get", out);
  sql_release(ss, db);
  return rc;
}

static int sql_account_count(store *s, int64_t *count_out) {
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  sqlite3_stmt *st;
  int rc = sql_prepare(db, &st, "account_count", "SELECT COUNT(*) FROM accounts", "");
  if (rc == STORE_OK) {
    rc = sql_step_row(db, st, "account_count");
    if (rc == STORE_OK) *count_out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  sql_release(ss, db);
  return rc;
}

static int sql_row_account(sqlite3_stmt *st, void *elem) { return sql_read_account(st, 0, elem); }

static int sql_account_list(store *s, store_account **accounts, size_t *count) {
  return sql_list((sql_store *)s, "account_list", sql_row_account, sizeof **accounts,
                  (void **)accounts, count, SQL_ACCOUNT_SELECT " ORDER BY id", "");
}

/* ---- API keys -------------------------------------------------------------------------- */

static int sql_key_create(store *s, int64_t account_id, const char *hash_hex, const char *prefix,
                          const char *name, int64_t now_ms, int64_t *key_id_out) {
  if (!name) name = "";
  if (!hash_hex || !prefix || strlen(prefix) >= sizeof ((store_key *)0)->prefix ||
      strlen(name) >= sizeof ((store_key *)0)->name)
    return sql_misuse("key_create", "hash or prefix missing, or prefix or name too long");
  return sql_write_one((sql_store *)s, "key_create", STORE_OK, NULL, key_id_out,
                       "INSERT INTO api_keys(account_id, hash, prefix, name, created_ms) "
                       "VALUES (?, ?, ?, ?, ?)",
                       "ItttI", account_id, hash_hex, prefix, name, now_ms);
}

/* Stamps last_used_ms unless it was stamped within the last minute. Failing
 * here does not fail the request: the key is valid, only the stamp is late. */
static void sql_key_touch(sql_store *ss, sqlite3 *db, int64_t key_id, int64_t last_used_ms,
                          int64_t now_ms) {
  if (last_used_ms >= now_ms - SQL_LAST_USED_EVERY_MS) return;
  sql_write_lock(ss);
  if (sql_writable(ss) == STORE_OK)
    sql_run(db, "key_touch",
            "UPDATE api_keys SET last_used_ms = ? WHERE id = ? AND last_used_ms < ?", "III",
            now_ms, key_id, now_ms - SQL_LAST_USED_EVERY_MS);
  sql_write_unlock(ss);
}

/* The account is returned even when disabled: refusing it is the caller's
 * policy (out->disabled), not the store's. */
static int sql_key_authenticate(store *s, const char *hash_hex, int64_t now_ms,
                                store_account *out, int64_t *key_id_out) {
  if (!hash_hex) return STORE_NOT_FOUND;
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  sqlite3_stmt *st;
  bool cached = false;
  int64_t key_id = 0, last_used = 0;
  int rc = sql_prepare_kept(db, &st, &cached, "key_authenticate",
                            "SELECT k.id, k.last_used_ms, a.id, a.email, a.disabled, a.created_ms,"
                            " a.balance, a.held, a.max_concurrency, a.qps_per_key "
                            "FROM api_keys k JOIN accounts a ON a.id = k.account_id "
                            "WHERE k.hash = ? AND k.revoked_ms = 0",
                            "t", hash_hex);
  if (rc == STORE_OK) {
    rc = sql_step_row(db, st, "key_authenticate");
    if (rc == STORE_OK) {
      key_id = sqlite3_column_int64(st, 0);
      last_used = sqlite3_column_int64(st, 1);
      rc = sql_read_account(st, 2, out);
    }
    /* Done (reset) before writing: an open read statement would make the
     * update an upgrade from a possibly stale snapshot. */
    sql_stmt_done(st, cached);
  }
  if (rc == STORE_OK) {
    sql_key_touch(ss, db, key_id, last_used, now_ms);
    if (key_id_out) *key_id_out = key_id;
    out->key_id = key_id;
  }
  sql_release(ss, db);
  return rc;
}

static int sql_key_revoke(store *s, int64_t key_id, const char *hash_hex, int64_t now_ms) {
  /* Without either selector the UPDATE below would match every key. */
  if (key_id <= 0 && !hash_hex) return STORE_NOT_FOUND;
  int64_t stamp = now_ms > 0 ? now_ms : 1; /* 0 would mean "active" */
  /* Two statements, so that each finds its key by an index; both take the
   * same arguments (?2 goes unused by the second). */
  const char *sql = key_id > 0 ? "UPDATE api_keys SET revoked_ms = ?1"
                                 " WHERE id = ?2 AND revoked_ms = 0 AND (?3 IS NULL OR hash = ?3)"
                               : "UPDATE api_keys SET revoked_ms = ?1"
                                 " WHERE hash = ?3 AND revoked_ms = 0";
  return sql_write_one((sql_store *)s, "key_revoke", STORE_NOT_FOUND, NULL, NULL, sql, "IIt",
                       stamp, key_id, hash_hex);
}

static int sql_row_key(sqlite3_stmt *st, void *elem) {
  store_key *k = elem;
  k->id = sqlite3_column_int64(st, 0);
  k->account_id = sqlite3_column_int64(st, 1);
  if (!sql_col_copy(st, 2, k->prefix, sizeof k->prefix) ||
      !sql_col_copy(st, 3, k->name, sizeof k->name))
    return sql_misuse("key_list", "stored prefix or name too long");
  k->created_ms = sqlite3_column_int64(st, 4);
  k->last_used_ms = sqlite3_column_int64(st, 5);
  k->revoked_ms = sqlite3_column_int64(st, 6);
  return STORE_OK;
}

static int sql_key_list(store *s, int64_t account_id, store_key **keys, size_t *count) {
  return sql_list((sql_store *)s, "key_list", sql_row_key, sizeof **keys, (void **)keys, count,
                  "SELECT id, account_id, prefix, name, created_ms, last_used_ms, revoked_ms "
                  "FROM api_keys WHERE account_id = ? ORDER BY created_ms DESC, id DESC",
                  "I", account_id);
}

/* ---- tasks: writing -------------------------------------------------------------------- */

/* The new task's row, its event counter at 1: its QUEUED event follows. */
static int sql_insert_task_row(sqlite3 *db, const task *t) {
  return sql_run(db, "task_insert",
                 "INSERT INTO tasks(id, account_id, state, model, prompt, aspect_ratio, resolution,"
                 " webhook_url, provider, quantity, attempts, created_ms, started_ms, finished_ms,"
                 " error_code, error_message, price_unit, price_refs, cost_held, dialect,"
                 " public_base, deadline_ms, webhook_events, output_format, output_compression,"
                 " quality, background, event_seq)"
                 " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
                 "tItttttttiiIIIttIIIttIItitt", t->id, t->account_id,
                 task_state_name(t->state), t->model, t->prompt, t->aspect_ratio, t->resolution,
                 t->webhook_url, t->provider, t->quantity, t->attempts, t->created_ms,
                 t->started_ms, t->finished_ms, t->error_code, t->error_message,
                 t->price_unit_micros, t->price_refs_micros, t->cost_held_micros,
                 t->dialect ? t->dialect : "native", t->public_base, t->deadline_ms,
                 (int64_t)t->webhook_events, t->output_format, t->output_compression,
                 t->quality, t->background);
}

/* ---- task events and the webhook outbox --------------------------------------------------- */

/* What the UPDATE that changes a task's state tells about the row after it
 * (its RETURNING clause): the event's seq and run, and for RUNNING the
 * provider. Taking them from the UPDATE costs no statement of its own. */
typedef struct sql_event_row {
  int seq;
  int attempts;
  char provider[64];
} sql_event_row;

/* Runs an UPDATE ... RETURNING event_seq, attempts[, provider] that matches
 * at most one task: OK with *row filled when it matched, NOT_FOUND when it
 * matched nothing (the caller tells a missing task from one in another
 * state). */
static int sql_update_task(sqlite3 *db, const char *what, sql_event_row *row, const char *sql,
                           const char *types, ...) {
  sqlite3_stmt *st;
  bool cached;
  va_list ap;
  va_start(ap, types);
  int rc = sql_stmt_get(db, &st, &cached, what, sql, types, ap);
  va_end(ap);
  if (rc != STORE_OK) return rc;
  int step = sqlite3_step(st);
  if (step == SQLITE_DONE) {
    rc = STORE_NOT_FOUND;
  } else if (step != SQLITE_ROW) {
    rc = sql_map(db, step, what);
  } else {
    memset(row, 0, sizeof *row);
    row->seq = sqlite3_column_int(st, 0);
    row->attempts = sqlite3_column_int(st, 1);
    if (sqlite3_column_count(st) > 2) sql_col_cut(st, 2, row->provider, sizeof row->provider);
    step = sqlite3_step(st); /* the statement is done only once stepped to its end */
    rc = step == SQLITE_DONE  ? STORE_OK
         : step == SQLITE_ROW ? sql_misuse(what, "the update matched several tasks")
                              : sql_map(db, step, what);
  }
  sql_stmt_done(st, cached);
  return rc;
}

/* Writes a task's event, inside the write transaction of the change it
 * records, with the seq that change's UPDATE gave (sql_update_task). A plain
 * insert of a short row: the whole cost of events on the hot paths. */
static int sql_event_put(sqlite3 *db, const char *task_id, const sql_event_row *row,
                         task_event_kind kind, int64_t at_ms, const char *provider,
                         int http_status, const char *error_code) {
  int rc = sql_run(db, "task_event",
                   "INSERT INTO task_events(task_id, seq, kind, at_ms, run, provider, http_status,"
                   " error_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   "titIitit", task_id, row->seq, task_event_kind_name(kind), at_ms, row->attempts,
                   provider ? provider : "", http_status, error_code ? error_code : "");
  /* The seq comes from the task's own counter, which the same transaction
   * moved on: a taken one is a bug, not another writer (CONFLICT). */
  return rc == STORE_CONFLICT ? sql_misuse("task_event", "event seq taken") : rc;
}

/* Whether o can be stored as given: an id and event that fit the fixed
 * fields they are read back into, and a URL. NULL (no delivery) is fine. */
static bool sql_outbox_valid(const store_outbox *o) {
  return !o || (o->id && o->event && o->url && o->id[0] && o->event[0] &&
                strlen(o->id) < sizeof ((store_delivery *)0)->id &&
                strlen(o->event) < sizeof ((store_delivery *)0)->event);
}

/* Writes a delivery of task_id's change, due at now, inside the caller's
 * write transaction (nothing when o is NULL). */
static int sql_outbox_add(sqlite3 *db, const char *task_id, const store_outbox *o,
                          int64_t now_ms) {
  if (!o) return STORE_OK;
  if (!sql_outbox_valid(o)) return sql_misuse("outbox", "id, event or url missing or too long");
  int rc = sql_run(db, "outbox",
                   "INSERT INTO webhook_deliveries(id, task_id, account_id, event, url, state,"
                   " attempts, created_ms, next_ms) SELECT ?1, id, account_id, ?2, ?3, 'pending',"
                   " 0, ?4, ?4 FROM tasks WHERE id = ?5",
                   "tttIt", o->id, o->event, o->url, now_ms, task_id);
  if (rc == STORE_CONFLICT) {
    /* A delivery id used twice is the caller's bug; CONFLICT would tell it
     * that someone else changed the task. */
    char q[64];
    LOG_ERROR("duplicate_webhook_delivery_id", "id=%s", log_quote(o->id, q, sizeof q));
    return STORE_ERROR;
  }
  if (rc == STORE_OK && sqlite3_changes(db) != 1)
    return sql_misuse("outbox", "no task row for the delivery");
  return rc;
}

static int sql_insert_input(sqlite3 *db, const task *t, size_t idx, const task_input *in,
                            const char *role) {
  return sql_run(db, "task_insert_input",
                 "INSERT INTO task_inputs(task_id, idx, blob_key, url, mime, bytes, role) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
                 "tItttIt", t->id, (int64_t)idx, in->blob_key, in->url, in->mime, in->bytes, role);
}

/* The reference images, then the mask (numbered after them). */
static int sql_insert_inputs(sqlite3 *db, const task *t) {
  int rc = STORE_OK;
  for (size_t i = 0; i < t->n_inputs && rc == STORE_OK; i++)
    rc = sql_insert_input(db, t, i, &t->inputs[i], "image");
  if (rc == STORE_OK && t->mask) rc = sql_insert_input(db, t, t->n_inputs, t->mask, "mask");
  return rc;
}

/* ---- the ledger ------------------------------------------------------------------------ */

static const char *const ledger_kind_names[] = {
    [LEDGER_GRANT] = "grant",     [LEDGER_TOPUP] = "topup",   [LEDGER_HOLD] = "hold",
    [LEDGER_CAPTURE] = "capture", [LEDGER_RELEASE] = "release", [LEDGER_REFUND] = "refund",
    [LEDGER_ADJUSTMENT] = "adjustment",
};

const char *ledger_kind_name(ledger_kind k) {
  if ((unsigned)k >= sizeof ledger_kind_names / sizeof ledger_kind_names[0]) return "?";
  return ledger_kind_names[k];
}

static bool ledger_kind_parse(const char *name, ledger_kind *out) {
  for (size_t i = 0; name && i < sizeof ledger_kind_names / sizeof ledger_kind_names[0]; i++)
    if (strcmp(name, ledger_kind_names[i]) == 0) {
      *out = (ledger_kind)i;
      return true;
    }
  return false;
}

/* One integer from a query that returns one row (in the caller's transaction). */
static int sql_scalar(sqlite3 *db, const char *what, int64_t *out, const char *sql,
                      const char *types, ...) {
  sqlite3_stmt *st;
  bool cached;
  va_list ap;
  va_start(ap, types);
  int rc = sql_stmt_get(db, &st, &cached, what, sql, types, ap);
  va_end(ap);
  if (rc != STORE_OK) return rc;
  rc = sql_step_row(db, st, what);
  if (rc == STORE_OK) *out = sqlite3_column_int64(st, 0);
  sql_stmt_done(st, cached);
  return rc;
}

/* Appends one entry and moves the account's cached sums with it, inside the
 * caller's write transaction. When floor_check, refuses (NO_CREDIT) an entry
 * that would take the available balance below zero. */
static int sql_ledger_append(sqlite3 *db, int64_t account_id, ledger_kind kind,
                             int64_t available, int64_t held, const char *task_id,
                             const char *reason, int64_t now_ms, bool floor_check) {
  int rc = sql_run(db, "ledger_balance",
                   "UPDATE accounts SET balance = balance + ?1, held = held + ?2"
                   " WHERE id = ?3 AND (?4 = 0 OR balance + ?1 >= 0)",
                   "IIIi", available, held, account_id, floor_check ? 1 : 0);
  if (rc != STORE_OK) return rc;
  if (sqlite3_changes(db) == 0) {
    int64_t one;
    rc = sql_scalar(db, "ledger_account", &one, "SELECT 1 FROM accounts WHERE id = ?", "I",
                    account_id);
    return rc == STORE_OK ? STORE_NO_CREDIT : rc;
  }
  return sql_run(db, "ledger_append",
                 "INSERT INTO ledger(account_id, kind, available, held, task_id, reason,"
                 " created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 "ItIIttI", account_id, ledger_kind_name(kind), available, held, task_id,
                 reason ? reason : "", now_ms);
}

static int sql_account_open(store *s, const char *email, int64_t now_ms, int64_t grant_micros,
                            int64_t *id_out) {
  if (!email || strlen(email) >= sizeof ((store_account *)0)->email)
    return sql_misuse("account_open", "email missing or too long");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    int r = sql_run(db, "account_open",
                    "INSERT INTO accounts(email, disabled, created_ms) VALUES (?, 0, ?)", "tI",
                    email, now_ms);
    int64_t id = sqlite3_last_insert_rowid(db);
    if (r == STORE_OK && grant_micros > 0)
      r = sql_ledger_append(db, id, LEDGER_GRANT, grant_micros, 0, NULL, "signup bonus", now_ms,
                            false);
    if (r == STORE_OK && id_out) *id_out = id;
    rc = sql_write_end(ss, db, r);
  }
  sql_release(ss, db);
  return rc;
}

static int sql_ledger_post(store *s, int64_t account_id, ledger_kind kind,
                           int64_t available_micros, const char *reason, int64_t now_ms,
                           int64_t *balance_out) {
  if (kind == LEDGER_HOLD || kind == LEDGER_CAPTURE || kind == LEDGER_RELEASE)
    return sql_misuse("ledger_post", "holds, captures and releases belong to tasks");
  if ((kind == LEDGER_GRANT || kind == LEDGER_TOPUP) && available_micros <= 0)
    return sql_misuse("ledger_post", "a grant or topup must be positive");
  if (kind == LEDGER_REFUND && available_micros >= 0)
    return sql_misuse("ledger_post", "a refund must be negative");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    int r = sql_ledger_append(db, account_id, kind, available_micros, 0, NULL, reason, now_ms,
                              available_micros < 0);
    if (r == STORE_OK && balance_out)
      r = sql_scalar(db, "ledger_post", balance_out, "SELECT balance FROM accounts WHERE id = ?",
                     "I", account_id);
    rc = sql_write_end(ss, db, r);
  }
  sql_release(ss, db);
  return rc;
}

static int sql_row_ledger(sqlite3_stmt *st, void *elem) {
  ledger_entry *e = elem;
  e->id = sqlite3_column_int64(st, 0);
  e->account_id = sqlite3_column_int64(st, 1);
  if (!ledger_kind_parse((const char *)sqlite3_column_text(st, 2), &e->kind))
    return sql_misuse("ledger_list", "stored kind unknown");
  e->available_micros = sqlite3_column_int64(st, 3);
  e->held_micros = sqlite3_column_int64(st, 4);
  if (!sql_col_copy(st, 5, e->task_id, sizeof e->task_id)) e->task_id[0] = '\0';
  if (!sql_col_copy(st, 6, e->reason, sizeof e->reason)) {
    memcpy(e->reason, sqlite3_column_text(st, 6), sizeof e->reason - 1);
    e->reason[sizeof e->reason - 1] = '\0';
  }
  e->created_ms = sqlite3_column_int64(st, 7);
  return STORE_OK;
}

static int sql_ledger_list(store *s, int64_t account_id, ledger_entry **entries, size_t *count) {
  return sql_list((sql_store *)s, "ledger_list", sql_row_ledger, sizeof **entries,
                  (void **)entries, count,
                  "SELECT id, account_id, kind, available, held, COALESCE(task_id, ''),"
                  " reason, created_ms FROM ledger WHERE account_id = ? ORDER BY id",
                  "I", account_id);
}

/* Counts rows of a query that lists what is wrong, logging the first few. */
static int sql_count_violations(sqlite3 *db, const char *what, const char *sql, int64_t *n) {
  sqlite3_stmt *st;
  int rc = sql_prepare(db, &st, what, sql, "");
  if (rc != STORE_OK) return rc;
  int step;
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    if (++*n <= 5) {
      char q[200];
      LOG_ERROR("ledger_invariant_broken", "check=%s row=%s", what,
                log_quote((const char *)sqlite3_column_text(st, 0), q, sizeof q));
    }
  }
  sqlite3_finalize(st);
  return step == SQLITE_DONE ? STORE_OK : sql_map(db, step, what);
}

static int sql_ledger_verify(store *s) {
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_begin_read(db);
  int64_t bad = 0;
  if (rc == STORE_OK)
    rc = sql_count_violations(db, "account_sums",
                              "SELECT a.email FROM accounts a LEFT JOIN (SELECT account_id,"
                              " SUM(available) av, SUM(held) he FROM ledger GROUP BY account_id) l"
                              " ON l.account_id = a.id WHERE a.balance != COALESCE(l.av, 0)"
                              " OR a.held != COALESCE(l.he, 0) OR a.held < 0",
                              &bad);
  /* A finished task holds nothing; a task in flight holds exactly its price.
   * Only a succeeded task is charged: a failed, moderated or canceled one
   * released all of its hold. */
  if (rc == STORE_OK)
    rc = sql_count_violations(db, "task_holds",
                              "SELECT t.id FROM tasks t LEFT JOIN (SELECT task_id, SUM(held) he,"
                              " -SUM(CASE WHEN kind = 'capture' THEN held ELSE 0 END) cap"
                              " FROM ledger WHERE task_id IS NOT NULL GROUP BY task_id) l"
                              " ON l.task_id = t.id WHERE COALESCE(l.he, 0) != CASE WHEN t.state"
                              " IN ('queued', 'running') THEN t.cost_held ELSE 0 END"
                              " OR COALESCE(l.cap, 0) != t.cost_charged"
                              " OR t.cost_charged > t.cost_held"
                              " OR (t.state != 'succeeded' AND t.cost_charged != 0)",
                              &bad);
  /* Conservation per task: what left the available balance is the hold,
   * less what came back; once final that is exactly the charge. A priced
   * task has its hold row, and every row of a task is its account's. */
  if (rc == STORE_OK)
    rc = sql_count_violations(db, "task_conservation",
                              "SELECT t.id FROM tasks t LEFT JOIN (SELECT task_id, SUM(available) av,"
                              " SUM(kind = 'hold') holds, SUM(account_id) acc, COUNT(*) n"
                              " FROM ledger WHERE task_id IS NOT NULL GROUP BY task_id) l"
                              " ON l.task_id = t.id WHERE COALESCE(l.av, 0) != CASE WHEN t.state"
                              " IN ('queued', 'running') THEN -t.cost_held ELSE -t.cost_charged END"
                              " OR (t.cost_held > 0 AND COALESCE(l.holds, 0) != 1)"
                              " OR COALESCE(l.acc, 0) != t.account_id * COALESCE(l.n, 0)",
                              &bad);
  /* Each kind moves money its own way (docs/billing.md), and no balance is
   * below zero. */
  if (rc == STORE_OK)
    rc = sql_count_violations(db, "entry_signs",
                              "SELECT id FROM ledger WHERE NOT CASE kind"
                              " WHEN 'grant' THEN available > 0 AND held = 0"
                              " WHEN 'topup' THEN available > 0 AND held = 0"
                              " WHEN 'refund' THEN available < 0 AND held = 0"
                              " WHEN 'adjustment' THEN held = 0"
                              " WHEN 'hold' THEN available < 0 AND held = -available"
                              " WHEN 'capture' THEN available = 0 AND held < 0"
                              " WHEN 'release' THEN available > 0 AND held = -available"
                              " ELSE 0 END"
                              " UNION ALL SELECT email FROM accounts WHERE balance < 0",
                              &bad);
  rc = sql_end(db, rc);
  sql_release(ss, db);
  if (rc != STORE_OK) return rc;
  return bad ? STORE_CONFLICT : STORE_OK;
}

static int sql_account_set_limits(store *s, int64_t account_id, int max_concurrency,
                                  int qps_per_key) {
  return sql_write_one(
      (sql_store *)s, "account_set_limits", STORE_NOT_FOUND, NULL, NULL,
      "UPDATE accounts SET max_concurrency = CASE WHEN ?1 < 0 THEN max_concurrency"
      " ELSE ?1 END, qps_per_key = CASE WHEN ?2 < 0 THEN qps_per_key ELSE ?2 END WHERE id = ?3",
      "iiI", max_concurrency, qps_per_key, account_id);
}

static int sql_account_set_disabled(store *s, int64_t account_id, bool disabled) {
  return sql_write_one((sql_store *)s, "account_set_disabled", STORE_NOT_FOUND, NULL, NULL,
                       "UPDATE accounts SET disabled = ? WHERE id = ?", "iI", disabled ? 1 : 0,
                       account_id);
}

/* An account's tasks queued or running: what its max_concurrency limits. */
#define SQL_COUNT_ACTIVE \
  "SELECT COUNT(*) FROM tasks WHERE account_id = ? AND state IN ('queued', 'running')"

static int sql_task_count_active(store *s, int64_t account_id, int64_t *count_out) {
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_scalar(db, "task_count_active", count_out, SQL_COUNT_ACTIVE, "I", account_id);
  sql_release(ss, db);
  return rc;
}

/* The account's tasks queued or running against its limit (0 = none). */
static int sql_check_concurrency(sqlite3 *db, int64_t account_id) {
  int64_t limit = 0, active = 0;
  int rc = sql_scalar(db, "task_limit", &limit,
                      "SELECT max_concurrency FROM accounts WHERE id = ?", "I", account_id);
  if (rc != STORE_OK || limit <= 0) return rc == STORE_NOT_FOUND ? STORE_OK : rc;
  rc = sql_scalar(db, "task_active", &active, SQL_COUNT_ACTIVE, "I", account_id);
  if (rc != STORE_OK) return rc;
  return active >= limit ? STORE_LIMIT : STORE_OK;
}

/* Expired keys forgotten per keyed insert: bounded work per submit, and
 * still far more than one insert adds, so the table cannot grow beyond the
 * keys of the last ttl plus what the last few inserts left behind. */
#define SQL_IDEM_PURGE_BATCH 100

/* Inside the insert's write transaction, before anything is written: OK
 * when the key is free (absent, or expired and now deleted), else REPLAY or
 * IDEMPOTENCY_MISMATCH with the first task's id in first_task_id. */
static int sql_idem_claim(sqlite3 *db, int64_t account_id, const store_idem *idem,
                          int64_t now_ms, char first_task_id[IDS_UUID_LEN + 1]) {
  sqlite3_stmt *st;
  bool cached = false;
  first_task_id[0] = '\0';
  int rc = sql_prepare_kept(db, &st, &cached, "idem_lookup",
                            "SELECT request_hash, task_id, created_ms FROM idempotency_keys"
                            " WHERE account_id = ? AND key = ?",
                            "It", account_id, idem->key);
  if (rc != STORE_OK) return rc;
  rc = sql_step_row(db, st, "idem_lookup");
  bool expired = false;
  if (rc == STORE_OK) {
    const unsigned char *hash = sqlite3_column_text(st, 0);
    int64_t created_ms = sqlite3_column_int64(st, 2);
    /* A key made "in the future" (the clock stepped back) is alive. */
    expired = now_ms - created_ms >= idem->ttl_ms;
    if (!expired) {
      if (!hash || !sql_col_copy(st, 1, first_task_id, IDS_UUID_LEN + 1))
        rc = sql_misuse("idem_lookup", "stored key row unreadable");
      else
        rc = strcmp((const char *)hash, idem->request_hash) == 0 ? STORE_REPLAY
                                                                  : STORE_IDEMPOTENCY_MISMATCH;
    }
  } else if (rc == STORE_NOT_FOUND) {
    rc = STORE_OK;
  }
  sql_stmt_done(st, cached);
  if (rc == STORE_OK && expired)
    rc = sql_run(db, "idem_expire", "DELETE FROM idempotency_keys WHERE account_id = ? AND key = ?",
                 "It", account_id, idem->key);
  return rc;
}

/* After the task is in: records the key, and forgets a batch of expired ones. */
static int sql_idem_record(sqlite3 *db, const task *t, const store_idem *idem) {
  int rc = sql_run(db, "idem_insert",
                   "INSERT INTO idempotency_keys(account_id, key, request_hash, task_id,"
                   " created_ms) VALUES (?, ?, ?, ?, ?)",
                   "ItttI", t->account_id, idem->key, idem->request_hash, t->id, t->created_ms);
  if (rc == STORE_OK)
    rc = sql_run(db, "idem_purge",
                 "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM"
                 " idempotency_keys WHERE created_ms <= ? ORDER BY created_ms LIMIT ?)",
                 "Ii", t->created_ms - idem->ttl_ms, SQL_IDEM_PURGE_BATCH);
  return rc;
}

/* One submit: the task, its inputs, its first event, its hold and its
 * idempotency key, inside the current transaction. */
static int sql_insert_locked(sqlite3 *db, const task *t, const store_idem *idem,
                             char *first_task_id) {
  /* The key first: a replay is answered whatever the limits say now. */
  int rc = idem ? sql_idem_claim(db, t->account_id, idem, t->created_ms, first_task_id) : STORE_OK;
  if (rc == STORE_OK) rc = sql_check_concurrency(db, t->account_id);
  if (rc == STORE_OK) rc = sql_insert_task_row(db, t);
  if (rc == STORE_OK) rc = sql_insert_inputs(db, t);
  if (rc == STORE_OK) {
    const sql_event_row first = {.seq = 1, .attempts = t->attempts};
    rc = sql_event_put(db, t->id, &first, TASK_EVENT_QUEUED, t->created_ms, NULL, 0, NULL);
  }
  /* The hold goes in the same transaction: no task without its hold, no
   * hold without its task. */
  if (rc == STORE_OK && t->cost_held_micros > 0)
    rc = sql_ledger_append(db, t->account_id, LEDGER_HOLD, -t->cost_held_micros,
                           t->cost_held_micros, t->id, "task submitted", t->created_ms, true);
  if (rc == STORE_OK && idem) rc = sql_idem_record(db, t, idem);
  return rc;
}

/* ---- group commit ---------------------------------------------------------------------- */

/* One write waiting in the group-commit queue (on its caller's stack): a
 * body that runs inside a batch's transaction, under a savepoint of its own. */
typedef struct sql_write_job {
  int (*body)(sqlite3 *db, void *arg);
  void *arg;
  int rc;
  bool done;
  struct sql_write_job *next;
} sql_write_job;

/* Writes one batch: one transaction, a savepoint per write, one commit.
 * Each job's rc is its own answer; a failure of the transaction itself (the
 * disk, the commit) is every job's. */
static void sql_write_batch(sql_store *ss, sql_write_job *jobs) {
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    for (sql_write_job *j = jobs; rc == STORE_OK && j; j = j->next) {
      rc = sql_run(db, "savepoint", "SAVEPOINT w", "");
      if (rc != STORE_OK) break;
      j->rc = j->body(db, j->arg);
      if (j->rc != STORE_OK) {
        /* A write that failed is undone to its savepoint and the others go
         * on, whatever its answer (a refused submit, a finish whose
         * compare-and-set lost, a misused argument, a constraint): one
         * task's trouble must not fail another's write. Unless SQLite has
         * ended the transaction itself (disk full, I/O error, out of
         * memory): then nothing in it can be trusted and the batch fails. */
        if (sqlite3_get_autocommit(db)) {
          rc = j->rc;
          break;
        }
        rc = sql_run(db, "rollback_to", "ROLLBACK TO w", "");
      }
      if (rc == STORE_OK) rc = sql_run(db, "release", "RELEASE w", "");
    }
    rc = sql_write_end(ss, db, rc); /* commits, or rolls everything back */
  }
  sql_release(ss, db);
  if (rc != STORE_OK)
    for (sql_write_job *j = jobs; j; j = j->next) j->rc = rc;
}

/* Runs body in the next group commit and returns its answer. Whoever finds
 * nobody writing writes everything queued so far (its own write included)
 * and wakes the others; a write that arrives while a batch is being written
 * waits for the next one. Under load one fsync serves every submit, start
 * and finish of the last few milliseconds, with the same durability: nobody
 * hears OK before the commit that holds its write. */
static int sql_group_write(sql_store *ss, int (*body)(sqlite3 *db, void *arg), void *arg) {
  sql_write_job me = {.body = body, .arg = arg, .rc = STORE_ERROR};
  pthread_mutex_lock(&ss->mu);
  if (ss->gc_tail) ss->gc_tail->next = &me;
  else ss->gc_head = &me;
  ss->gc_tail = &me;
  while (!me.done) {
    if (ss->gc_writing) {
      pthread_cond_wait(&ss->gc_cv, &ss->mu);
      continue;
    }
    sql_write_job *batch = ss->gc_head;
    ss->gc_head = ss->gc_tail = NULL;
    ss->gc_writing = true;
    pthread_mutex_unlock(&ss->mu);
    assert(batch);
    sql_write_batch(ss, batch);
    pthread_mutex_lock(&ss->mu);
    size_t n = 0;
    for (sql_write_job *j = batch; j; j = j->next, n++) j->done = true;
    ss->gc_batches++;
    ss->gc_jobs += n;
    ss->gc_writing = false;
    pthread_cond_broadcast(&ss->gc_cv);
  }
  pthread_mutex_unlock(&ss->mu);
  return me.rc;
}

/* A submit's arguments through the group commit. */
typedef struct sql_insert_args {
  const task *t;
  const store_idem *idem;
  char *first_task_id;
} sql_insert_args;

static int sql_insert_body(sqlite3 *db, void *arg) {
  sql_insert_args *a = arg;
  return sql_insert_locked(db, a->t, a->idem, a->first_task_id);
}

static int sql_insert_task_tx(sql_store *ss, const task *t, const store_idem *idem,
                             char first_task_id[IDS_UUID_LEN + 1]) {
  if (!t || !ids_is_uuid(t->id)) return sql_misuse("task_insert", "task id is not a UUID");
  if (t->state != TASK_QUEUED) return sql_misuse("task_insert", "a new task must be queued");
  if (t->cost_held_micros < 0) return sql_misuse("task_insert", "negative price");
  if (t->deadline_ms < 0) return sql_misuse("task_insert", "negative deadline");
  if (idem && (!idem->key || !idem->request_hash || idem->ttl_ms <= 0 || !first_task_id))
    return sql_misuse("task_insert", "incomplete idempotency key");
  sql_insert_args a = {.t = t, .idem = idem, .first_task_id = first_task_id};
  return sql_group_write(ss, sql_insert_body, &a);
}

void store_sqlite_group_commit_stats(store *s, uint64_t *batches, uint64_t *submits,
                                     size_t *queued, bool *writing) {
  sql_store *ss = (sql_store *)s;
  pthread_mutex_lock(&ss->mu);
  *batches = ss->gc_batches;
  *submits = ss->gc_jobs;
  size_t n = 0;
  for (sql_write_job *j = ss->gc_head; j; j = j->next) n++;
  *queued = n;
  *writing = ss->gc_writing;
  pthread_mutex_unlock(&ss->mu);
}

static int sql_task_insert(store *s, const task *t) {
  return sql_insert_task_tx((sql_store *)s, t, NULL, NULL);
}

static int sql_task_insert_idempotent(store *s, const task *t, const store_idem *idem,
                                      char first_task_id[IDS_UUID_LEN + 1]) {
  if (!idem) return sql_misuse("task_insert", "no idempotency key");
  return sql_insert_task_tx((sql_store *)s, t, idem, first_task_id);
}

/* Inside a write transaction whose compare-and-set matched nothing: tells a
 * task that does not exist from one in another state. */
static int sql_cas_miss(sqlite3 *db, const char *task_id, const char *what) {
  int64_t one;
  int rc = sql_scalar(db, what, &one, "SELECT 1 FROM tasks WHERE id = ?", "t", task_id);
  return rc == STORE_OK ? STORE_CONFLICT : rc;
}

static int sql_start_locked(sqlite3 *db, const char *task_id, const char *provider,
                            int64_t now_ms, int *attempt_out) {
  sql_event_row row;
  int rc = sql_update_task(db, "task_start", &row,
                           "UPDATE tasks SET state = ?, attempts = attempts + 1, started_ms = ?,"
                           " provider = COALESCE(?, provider), event_seq = event_seq + 1"
                           " WHERE id = ? AND state = ? RETURNING event_seq, attempts, provider",
                           "tIttt", task_state_name(TASK_RUNNING), now_ms, provider, task_id,
                           task_state_name(TASK_QUEUED));
  if (rc == STORE_NOT_FOUND) return sql_cas_miss(db, task_id, "task_start");
  if (rc == STORE_OK)
    rc = sql_event_put(db, task_id, &row, TASK_EVENT_RUNNING, now_ms, row.provider, 0, NULL);
  if (rc == STORE_OK && attempt_out) *attempt_out = row.attempts;
  return rc;
}

static int sql_task_start(store *s, const char *task_id, const char *provider, int64_t now_ms,
                          int *attempt_out) {
  if (!task_id) return STORE_NOT_FOUND;
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK)
    rc = sql_write_end(ss, db, sql_start_locked(db, task_id, provider, now_ms, attempt_out));
  sql_release(ss, db);
  return rc;
}

/* A start's arguments through the group commit. */
typedef struct sql_start_args {
  store_start *items;
  size_t n;
  int64_t now_ms;
} sql_start_args;

static int sql_start_body(sqlite3 *db, void *arg) {
  sql_start_args *a = arg;
  int rc = STORE_OK;
  for (size_t i = 0; i < a->n && rc == STORE_OK; i++) {
    store_start *it = &a->items[i];
    it->rc = it->task_id ? sql_start_locked(db, it->task_id, it->provider, a->now_ms, &it->attempt)
                         : STORE_NOT_FOUND;
    if (it->rc == STORE_OK) it->rc = sql_outbox_add(db, it->task_id, it->outbox, a->now_ms);
    /* One task gone or started elsewhere does not fail the others. */
    if (it->rc != STORE_OK && it->rc != STORE_CONFLICT && it->rc != STORE_NOT_FOUND) rc = it->rc;
  }
  return rc;
}

static int sql_task_start_many(store *s, store_start *items, size_t n, int64_t now_ms) {
  if (n == 0) return STORE_OK;
  for (size_t i = 0; i < n; i++)
    if (!sql_outbox_valid(items[i].outbox))
      return sql_misuse("task_start_many", "outbox id, event or url missing or too long");
  sql_start_args a = {.items = items, .n = n, .now_ms = now_ms};
  return sql_group_write((sql_store *)s, sql_start_body, &a);
}

static int sql_insert_results(sqlite3 *db, const char *task_id, const task_result *results,
                              size_t n) {
  int rc = STORE_OK;
  for (size_t i = 0; i < n && rc == STORE_OK; i++) {
    const task_result *r = &results[i];
    rc = sql_run(db, "task_finish_result",
                 "INSERT INTO task_results(task_id, idx, blob_key, token, mime, etag, width,"
                 " height, bytes, expires_ms, price, quality, background)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 "tittttiiIIItt", task_id, r->index, r->blob_key, r->token, r->mime, r->etag,
                 r->width, r->height, r->bytes, r->expires_ms, r->price_micros, r->quality,
                 r->background);
  }
  /* The task's CAS matched, so CONFLICT here would lie to the caller ("someone
   * else finished it"); a duplicate token or index is a failed write. */
  if (rc == STORE_CONFLICT) {
    char q[64];
    LOG_ERROR("duplicate_result_token_or_index", "task=%s", log_quote(task_id, q, sizeof q));
    rc = STORE_ERROR;
  }
  return rc;
}

/* Captures charge (what the core priced the delivered images at) and
 * releases the rest of the task's hold, inside its finishing transaction:
 * the compare-and-set that lets exactly one run finish the task also lets
 * exactly one run bill it (and ledger_task_once would refuse a second
 * capture anyway). The amounts are the core's; this only keeps the rows,
 * and refuses a charge the contract does not allow (store.h: task_finish). */
static int sql_settle_locked(sqlite3 *db, const char *task_id, task_state final_state,
                             size_t delivered, int64_t charge, int64_t now_ms) {
  sqlite3_stmt *st;
  bool cached = false;
  int rc = sql_prepare_kept(db, &st, &cached, "task_settle",
                            "SELECT account_id, cost_held FROM tasks WHERE id = ?", "t", task_id);
  if (rc != STORE_OK) return rc;
  rc = sql_step_row(db, st, "task_settle");
  int64_t account = 0, held = 0;
  if (rc == STORE_OK) {
    account = sqlite3_column_int64(st, 0);
    held = sqlite3_column_int64(st, 1);
  }
  sql_stmt_done(st, cached);
  if (rc != STORE_OK) return rc;
  bool may_charge = final_state == TASK_SUCCEEDED && delivered > 0;
  if (charge < 0 || charge > held || (charge > 0 && !may_charge))
    return sql_misuse("task_finish",
                      "charge outside 0..hold, or for a task that delivered nothing");
  if (held <= 0) return STORE_OK;
  if (charge > 0)
    rc = sql_ledger_append(db, account, LEDGER_CAPTURE, 0, -charge, task_id, "images delivered",
                           now_ms, false);
  if (rc == STORE_OK && held - charge > 0)
    rc = sql_ledger_append(db, account, LEDGER_RELEASE, held - charge, -(held - charge), task_id,
                           final_state == TASK_SUCCEEDED ? "images not delivered"
                                                         : task_state_name(final_state),
                           now_ms, false);
  if (rc == STORE_OK)
    rc = sql_run(db, "task_settle", "UPDATE tasks SET cost_charged = ? WHERE id = ?", "It",
                 charge, task_id);
  return rc;
}

static int sql_finish_locked(sqlite3 *db, const char *task_id, int attempt,
                             task_state final_state, const char *error_code,
                             const char *error_message, const task_result *results,
                             size_t n_results, int64_t charge, int64_t now_ms) {
  sql_event_row row;
  int rc = sql_update_task(db, "task_finish", &row,
                           "UPDATE tasks SET state = ?, finished_ms = ?, error_code = ?,"
                           " error_message = ?, event_seq = event_seq + 1"
                           " WHERE id = ? AND state = ? AND attempts = ? RETURNING event_seq,"
                           " attempts",
                           "tItttti", task_state_name(final_state), now_ms, error_code,
                           error_message, task_id, task_state_name(TASK_RUNNING), attempt);
  if (rc == STORE_NOT_FOUND) return sql_cas_miss(db, task_id, "task_finish");
  if (rc == STORE_OK) rc = sql_insert_results(db, task_id, results, n_results);
  if (rc == STORE_OK) rc = sql_settle_locked(db, task_id, final_state, n_results, charge, now_ms);
  if (rc == STORE_OK)
    rc = sql_event_put(db, task_id, &row, task_event_kind_of_state(final_state), now_ms, NULL, 0,
                       final_state == TASK_SUCCEEDED ? NULL : error_code);
  return rc;
}

/* Inserts an attempt row and names its provider on the task (in the caller's
 * write transaction). */
static int sql_attempt_insert_locked(sqlite3 *db, const char *task_id, const task_attempt *a) {
  if (!a->provider || !a->upstream_model || !a->error_class)
    return sql_misuse("task_attempt_add", "provider, model or class missing");
  int rc = sql_run(db, "task_attempt_add",
                   "INSERT INTO task_attempts(task_id, run, provider, upstream_model, started_ms,"
                   " ended_ms, http_status, error_class, error_code) VALUES (?,?,?,?,?,?,?,?,?)",
                   "tittIIitt", task_id, a->run, a->provider, a->upstream_model, a->started_ms,
                   a->ended_ms, a->http_status, a->error_class, a->error_code);
  if (rc == STORE_OK)
    rc = sql_run(db, "task_attempt_provider", "UPDATE tasks SET provider = ? WHERE id = ?", "tt",
                 a->provider, task_id);
  return rc;
}

static int sql_task_attempt_add(store *s, const char *task_id, const task_attempt *a) {
  if (!task_id || !a) return sql_misuse("task_attempt_add", "task id or attempt missing");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    int r = sql_attempt_insert_locked(db, task_id, a);
    /* The event only while the task runs: an attempt recorded late (its
     * task finished or put back meanwhile) stays in the history, but no
     * event may follow a task's final one. */
    sql_event_row row;
    if (r == STORE_OK) {
      r = sql_update_task(db, "task_attempt_event", &row,
                          "UPDATE tasks SET event_seq = event_seq + 1"
                          " WHERE id = ? AND state = 'running' RETURNING event_seq, attempts",
                          "t", task_id);
      if (r == STORE_OK)
        r = sql_event_put(db, task_id, &row, TASK_EVENT_ATTEMPT,
                          a->ended_ms > 0 ? a->ended_ms : time_now_ms(), a->provider,
                          a->http_status, a->error_code ? a->error_code : a->error_class);
      else if (r == STORE_NOT_FOUND)
        r = STORE_OK; /* not running (or no such task): the attempt row alone */
    }
    rc = sql_write_end(ss, db, r);
  }
  sql_release(ss, db);
  return rc;
}

/* A finish's arguments through the group commit. */
typedef struct sql_finish_args {
  const char *task_id;
  int attempt;
  task_state final_state;
  const char *error_code, *error_message;
  const task_result *results;
  size_t n_results;
  int64_t charge_micros;
  int64_t now_ms;
  const task_attempt *last_attempt;
  const store_outbox *outbox;
} sql_finish_args;

static int sql_finish_body(sqlite3 *db, void *arg) {
  sql_finish_args *a = arg;
  int rc = sql_finish_locked(db, a->task_id, a->attempt, a->final_state, a->error_code,
                             a->error_message, a->results, a->n_results, a->charge_micros,
                             a->now_ms);
  if (rc == STORE_OK && a->last_attempt)
    rc = sql_attempt_insert_locked(db, a->task_id, a->last_attempt);
  if (rc == STORE_OK) rc = sql_outbox_add(db, a->task_id, a->outbox, a->now_ms);
  return rc;
}


static int sql_task_finish(store *s, const char *task_id, int attempt, task_state final_state,
                           const char *error_code, const char *error_message,
                           const task_result *results, size_t n_results, int64_t charge_micros,
                           int64_t now_ms, const task_attempt *last_attempt,
                           const store_outbox *outbox) {
  if (!task_id) return STORE_NOT_FOUND;
  if (!task_state_is_final(final_state) || !task_state_can_transition(TASK_RUNNING, final_state))
    return sql_misuse("task_finish", "final_state is not a final state");
  if (n_results > 0 && !results) return sql_misuse("task_finish", "results missing");
  if (!sql_outbox_valid(outbox))
    return sql_misuse("task_finish", "outbox id, event or url missing or too long");
  sql_finish_args a = {.task_id = task_id, .attempt = attempt, .final_state = final_state,
                       .error_code = error_code, .error_message = error_message,
                       .results = results, .n_results = n_results, .charge_micros = charge_micros,
                       .now_ms = now_ms,
                       .last_attempt = last_attempt, .outbox = outbox};
  return sql_group_write((sql_store *)s, sql_finish_body, &a);
}

static int sql_task_requeue_running(store *s, int64_t *count_out) {
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    /* The events first, while the rows still say which tasks were running. */
    int r = sql_run(db, "task_requeue_running",
                    "INSERT INTO task_events(task_id, seq, kind, at_ms, run)"
                    " SELECT id, event_seq + 1, 'queued', ?, attempts FROM tasks"
                    " WHERE state = 'running'",
                    "I", time_now_ms());
    if (r == STORE_OK)
      r = sql_run(db, "task_requeue_running",
                  "UPDATE tasks SET state = 'queued', event_seq = event_seq + 1"
                  " WHERE state = 'running'",
                  "");
    if (r == STORE_OK && count_out) *count_out = sqlite3_changes(db);
    rc = sql_write_end(ss, db, r);
  }
  sql_release(ss, db);
  return rc;
}

/* ---- tasks: reading -------------------------------------------------------------------- */

static int sql_read_task(sqlite3_stmt *st, task *t) {
  if (!sql_col_copy(st, 0, t->id, sizeof t->id))
    return sql_misuse("task_get", "stored task id too long");
  t->account_id = sqlite3_column_int64(st, 1);
  const unsigned char *state = sqlite3_column_text(st, 2);
  if (!task_state_parse((const char *)state, &t->state))
    return sql_misuse("task_get", "stored state unknown");
  if (!sql_col_dup(st, 3, &t->model) || !sql_col_dup(st, 4, &t->prompt) ||
      !sql_col_dup(st, 5, &t->aspect_ratio) || !sql_col_dup(st, 6, &t->resolution) ||
      !sql_col_dup(st, 7, &t->webhook_url) || !sql_col_dup(st, 8, &t->provider) ||
      !sql_col_dup(st, 14, &t->error_code) || !sql_col_dup(st, 15, &t->error_message))
    return sql_oom("task_get");
  t->quantity = sqlite3_column_int(st, 9);
  t->attempts = sqlite3_column_int(st, 10);
  t->created_ms = sqlite3_column_int64(st, 11);
  t->started_ms = sqlite3_column_int64(st, 12);
  t->finished_ms = sqlite3_column_int64(st, 13);
  t->price_unit_micros = sqlite3_column_int64(st, 16);
  t->price_refs_micros = sqlite3_column_int64(st, 17);
  t->cost_held_micros = sqlite3_column_int64(st, 18);
  t->cost_charged_micros = sqlite3_column_int64(st, 19);
  if (!sql_col_dup(st, 20, &t->dialect) || !sql_col_dup(st, 21, &t->public_base))
    return sql_oom("task_get");
  t->deadline_ms = sqlite3_column_int64(st, 22);
  t->cancel_requested = sqlite3_column_int(st, 23) != 0;
  t->webhook_events = (unsigned)sqlite3_column_int64(st, 24);
  t->event_seq = sqlite3_column_int(st, 25);
  if (!sql_col_dup(st, 26, &t->output_format)) return sql_oom("task_get");
  t->output_compression = sqlite3_column_int(st, 27);
  if (!sql_col_dup(st, 28, &t->quality) || !sql_col_dup(st, 29, &t->background))
    return sql_oom("task_get");
  return STORE_OK;
}

static int sql_load_task_row(sqlite3 *db, const char *task_id, task *t) {
  sqlite3_stmt *st;
  bool cached;
  int rc = sql_prepare_kept(db, &st, &cached, "task_get",
                            "SELECT id, account_id, state, model, prompt, aspect_ratio, resolution,"
                            " webhook_url, provider, quantity, attempts, created_ms, started_ms,"
                            " finished_ms, error_code, error_message, price_unit, price_refs,"
                            " cost_held, cost_charged, dialect, public_base, deadline_ms,"
                            " cancel_requested, webhook_events, event_seq, output_format,"
                            " output_compression, quality, background FROM tasks WHERE id = ?",
                            "t", task_id);
  if (rc != STORE_OK) return rc;
  rc = sql_step_row(db, st, "task_get");
  if (rc == STORE_OK) rc = sql_read_task(st, t);
  sql_stmt_done(st, cached);
  return rc;
}

/* A task_inputs row as read: the input, and whether it is the task's mask. */
typedef struct sql_input_row {
  task_input in;
  bool mask;
} sql_input_row;

static int sql_row_input(sqlite3_stmt *st, void *elem) {
  sql_input_row *row = elem;
  task_input *in = &row->in;
  in->bytes = sqlite3_column_int64(st, 3);
  row->mask = sqlite3_column_int(st, 4) != 0;
  if (sql_col_dup(st, 0, &in->blob_key) && sql_col_dup(st, 1, &in->url) &&
      sql_col_dup(st, 2, &in->mime))
    return STORE_OK;
  task_input_clear(in);
  return sql_oom("task_get_inputs");
}

/* Moves the rows into t: the images in order into t->inputs, the mask (the
 * schema keeps at most one) into t->mask. The rows' members are t's now,
 * or freed on failure. */
static int sql_split_inputs(task *t, sql_input_row *rows, size_t n) {
  size_t n_masks = 0;
  for (size_t i = 0; i < n; i++) n_masks += rows[i].mask;
  int rc = STORE_OK;
  if (n_masks > 1) rc = sql_misuse("task_get_inputs", "more than one mask");
  size_t n_images = n - n_masks;
  if (rc == STORE_OK && n_images && !(t->inputs = calloc(n_images, sizeof *t->inputs)))
    rc = sql_oom("task_get_inputs");
  if (rc == STORE_OK && n_masks && !(t->mask = calloc(1, sizeof *t->mask)))
    rc = sql_oom("task_get_inputs");
  for (size_t i = 0; i < n; i++) {
    if (rc != STORE_OK) task_input_clear(&rows[i].in);
    else if (rows[i].mask) *t->mask = rows[i].in;
    else t->inputs[t->n_inputs++] = rows[i].in;
  }
  return rc;
}

static int sql_load_inputs(sqlite3 *db, task *t) {
  sqlite3_stmt *st;
  bool cached;
  int rc = sql_prepare_kept(db, &st, &cached, "task_get_inputs",
                            "SELECT blob_key, url, mime, bytes, role = 'mask' FROM task_inputs"
                            " WHERE task_id = ? ORDER BY idx",
                            "t", t->id);
  if (rc != STORE_OK) return rc;
  sql_input_row *rows = NULL;
  size_t n = 0;
  rc = sql_collect(db, st, "task_get_inputs", sql_row_input, sizeof *rows, (void **)&rows, &n);
  sql_stmt_done(st, cached);
  if (rc == STORE_OK) {
    rc = sql_split_inputs(t, rows, n);
  } else {
    for (size_t i = 0; i < n; i++) task_input_clear(&rows[i].in);
  }
  free(rows);
  return rc;
}

/* Reads the result columns starting at col: idx, blob_key, token, mime,
 * etag, width, height, bytes, expires_ms, price, quality, background. */
static bool sql_read_result(sqlite3_stmt *st, int col, task_result *r) {
  memset(r, 0, sizeof *r);
  r->index = sqlite3_column_int(st, col);
  r->width = sqlite3_column_int(st, col + 5);
  r->height = sqlite3_column_int(st, col + 6);
  r->bytes = sqlite3_column_int64(st, col + 7);
  r->expires_ms = sqlite3_column_int64(st, col + 8);
  r->price_micros = sqlite3_column_int64(st, col + 9);
  if (sql_col_dup(st, col + 1, &r->blob_key) && sql_col_dup(st, col + 2, &r->token) &&
      sql_col_dup(st, col + 3, &r->mime) && sql_col_dup(st, col + 4, &r->etag) &&
      sql_col_dup(st, col + 10, &r->quality) && sql_col_dup(st, col + 11, &r->background))
    return true;
  task_result_clear(r);
  return false;
}

#define SQL_RESULT_COLUMNS                                                                 \
  "idx, blob_key, token, mime, etag, width, height, bytes, expires_ms, price, quality,"    \
  " background"

static int sql_row_result(sqlite3_stmt *st, void *elem) {
  return sql_read_result(st, 0, elem) ? STORE_OK : sql_oom("task_get_results");
}

static int sql_load_results(sqlite3 *db, task *t) {
  sqlite3_stmt *st;
  bool cached;
  int rc = sql_prepare_kept(db, &st, &cached, "task_get_results",
                            "SELECT " SQL_RESULT_COLUMNS " FROM task_results WHERE task_id = ?"
                            " ORDER BY idx",
                            "t", t->id);
  if (rc != STORE_OK) return rc;
  rc = sql_collect(db, st, "task_get_results", sql_row_result, sizeof *t->results,
                   (void **)&t->results, &t->n_results);
  sql_stmt_done(st, cached);
  return rc;
}

static int sql_row_attempt(sqlite3_stmt *st, void *elem) {
  task_attempt *a = elem;
  a->run = sqlite3_column_int(st, 0);
  a->started_ms = sqlite3_column_int64(st, 3);
  a->ended_ms = sqlite3_column_int64(st, 4);
  a->http_status = sqlite3_column_int(st, 5);
  if (sql_col_dup(st, 1, &a->provider) && sql_col_dup(st, 2, &a->upstream_model) &&
      sql_col_dup(st, 6, &a->error_class) && sql_col_dup(st, 7, &a->error_code))
    return STORE_OK;
  task_attempt_clear(a);
  return sql_oom("task_get_attempts");
}

static int sql_load_attempts(sqlite3 *db, task *t) {
  sqlite3_stmt *st;
  bool cached;
  int rc = sql_prepare_kept(
      db, &st, &cached, "task_get_attempts",
      "SELECT run, provider, upstream_model, started_ms, ended_ms, http_status,"
      " error_class, error_code FROM task_attempts WHERE task_id = ? ORDER BY seq",
      "t", t->id);
  if (rc != STORE_OK) return rc;
  rc = sql_collect(db, st, "task_get_attempts", sql_row_attempt, sizeof *t->upstream_attempts,
                   (void **)&t->upstream_attempts, &t->n_upstream_attempts);
  sql_stmt_done(st, cached);
  return rc;
}


static int sql_task_get(store *s, const char *task_id, task **out) {
  *out = NULL;
  if (!task_id) return STORE_NOT_FOUND;
  task *t = calloc(1, sizeof *t);
  if (!t) return sql_oom("task_get");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  /* One read transaction: the row, inputs and results come from one snapshot,
   * so a task never appears finished without its results. */
  int rc = sql_begin_read(db);
  if (rc == STORE_OK) {
    int r = sql_load_task_row(db, task_id, t);
    if (r == STORE_OK) r = sql_load_inputs(db, t);
    if (r == STORE_OK) r = sql_load_results(db, t);
    if (r == STORE_OK) r = sql_load_attempts(db, t);
    rc = sql_end(db, r);
  }
  sql_release(ss, db);
  if (rc != STORE_OK) {
    task_free(t);
    return rc;
  }
  *out = t;
  return STORE_OK;
}

static int sql_row_task_id(sqlite3_stmt *st, void *elem) {
  if (!sql_col_copy(st, 0, elem, IDS_UUID_LEN + 1))
    return sql_misuse("task_list", "stored task id too long");
  return STORE_OK;
}

static int sql_task_list_queued(store *s, size_t limit, char (**ids)[IDS_UUID_LEN + 1],
                                size_t *count) {
  *ids = NULL;
  *count = 0;
  if (limit == 0) return STORE_OK;
  int64_t lim = limit > (size_t)INT64_MAX ? INT64_MAX : (int64_t)limit;
  return sql_list((sql_store *)s, "task_list_queued", sql_row_task_id, sizeof **ids,
                  (void **)ids, count,
                  "SELECT id FROM tasks WHERE state = ? ORDER BY created_ms, id LIMIT ?", "tI",
                  task_state_name(TASK_QUEUED), lim);
}

/* store_start carries the id as a pointer; the listing keeps the ids in the
 * same allocation, after the items. Rows are read into this first. */
typedef struct sql_running_row {
  char id[IDS_UUID_LEN + 1];
  int attempts;
} sql_running_row;

static int sql_row_running(sqlite3_stmt *st, void *elem) {
  sql_running_row *r = elem;
  if (!sql_col_copy(st, 0, r->id, sizeof r->id))
    return sql_misuse("task_list_running", "stored task id too long");
  r->attempts = sqlite3_column_int(st, 1);
  return STORE_OK;
}

static int sql_task_list_running(store *s, size_t limit, store_start **items, size_t *count) {
  *items = NULL;
  *count = 0;
  if (limit == 0) return STORE_OK;
  sql_running_row *rows = NULL;
  size_t n = 0;
  int rc = sql_list((sql_store *)s, "task_list_running", sql_row_running, sizeof *rows,
                    (void **)&rows, &n,
                    "SELECT id, attempts FROM tasks WHERE state = 'running'"
                    " ORDER BY started_ms, id LIMIT ?",
                    "I", (int64_t)(limit > INT32_MAX ? INT32_MAX : limit));
  if (rc != STORE_OK || n == 0) {
    free(rows);
    return rc;
  }
  /* One block: the items, then the ids they point at. */
  char *block = malloc(n * (sizeof **items + IDS_UUID_LEN + 1));
  if (!block) {
    free(rows);
    return sql_oom("task_list_running");
  }
  store_start *out = (store_start *)block;
  char *ids = block + n * sizeof *out;
  for (size_t i = 0; i < n; i++) {
    char *id = ids + i * (IDS_UUID_LEN + 1);
    memcpy(id, rows[i].id, IDS_UUID_LEN + 1);
    out[i] = (store_start){.task_id = id, .rc = STORE_OK, .attempt = rows[i].attempts};
  }
  free(rows);
  *items = out;
  *count = n;
  return STORE_OK;
}

static int sql_task_requeue(store *s, const char *task_id, int attempt) {
  if (!task_id) return STORE_NOT_FOUND;
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    sql_event_row row;
    int r = sql_update_task(db, "task_requeue", &row,
                            "UPDATE tasks SET state = 'queued', event_seq = event_seq + 1"
                            " WHERE id = ? AND state = 'running' AND attempts = ?"
                            " RETURNING event_seq, attempts",
                            "ti", task_id, attempt);
    if (r == STORE_NOT_FOUND) r = STORE_CONFLICT; /* as before events: unknown ids too */
    if (r == STORE_OK)
      r = sql_event_put(db, task_id, &row, TASK_EVENT_QUEUED, time_now_ms(), NULL, 0, NULL);
    rc = sql_write_end(ss, db, r);
  }
  sql_release(ss, db);
  return rc;
}

static int sql_result_by_token(store *s, const char *token, task_result *out) {
  memset(out, 0, sizeof *out);
  if (!token) return STORE_NOT_FOUND;
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  sqlite3_stmt *st;
  bool cached = false;
  int rc = sql_prepare_kept(db, &st, &cached, "result_by_token",
                            "SELECT " SQL_RESULT_COLUMNS " FROM task_results WHERE token = ?", "t",
                            token);
  if (rc == STORE_OK) {
    rc = sql_step_row(db, st, "result_by_token");
    if (rc == STORE_OK && !sql_read_result(st, 0, out)) rc = sql_oom("result_by_token");
    sql_stmt_done(st, cached);
  }
  sql_release(ss, db);
  return rc;
}

/* ---- retention ------------------------------------------------------------------------- */

static int sql_row_expired(sqlite3_stmt *st, void *elem) {
  store_expired *e = elem;
  if (!sql_col_copy(st, 0, e->task_id, sizeof e->task_id) ||
      !sql_col_copy(st, 2, e->blob_key, sizeof e->blob_key))
    return sql_misuse("results_expired", "stored id or blob key too long");
  e->index = sqlite3_column_int(st, 1);
  return STORE_OK;
}

static int sql_results_expired(store *s, int64_t now_ms, size_t limit, store_expired **items,
                               size_t *count) {
  *items = NULL;
  *count = 0;
  if (limit == 0) return STORE_OK;
  return sql_list((sql_store *)s, "results_expired", sql_row_expired, sizeof **items,
                  (void **)items, count,
                  "SELECT task_id, idx, blob_key FROM task_results"
                  " WHERE purged_ms = 0 AND expires_ms <= ? ORDER BY expires_ms LIMIT ?",
                  "II", now_ms, (int64_t)(limit > INT32_MAX ? INT32_MAX : limit));
}

static int sql_result_mark_purged(store *s, const char *task_id, int index, int64_t now_ms) {
  return sql_write_one((sql_store *)s, "result_mark_purged", STORE_NOT_FOUND, NULL, NULL,
                       "UPDATE task_results SET purged_ms = ? WHERE task_id = ? AND idx = ?"
                       " AND purged_ms = 0",
                       "Iti", now_ms > 0 ? now_ms : 1, task_id, index);
}

/* ---- orphan collection ---------------------------------------------------------------- */

static int sql_row_blob_ref(sqlite3_stmt *st, void *elem) {
  store_blob_ref *r = elem;
  r->result = sqlite3_column_int(st, 0) != 0;
  r->index = sqlite3_column_int(st, 1);
  /* A key longer than the field is an error, never a cut: a cut key would
   * name some other object, or none, and the caller would decide on it. */
  if (!sql_col_copy(st, 2, r->blob_key, sizeof r->blob_key))
    return sql_misuse("task_blob_refs", "stored blob key too long");
  r->purged_ms = sqlite3_column_int64(st, 3);
  return STORE_OK;
}

static int sql_load_task_state(sqlite3 *db, const char *task_id, task_state *out,
                               const char *what) {
  sqlite3_stmt *st;
  bool cached = false;
  int rc = sql_prepare_kept(db, &st, &cached, what, "SELECT state FROM tasks WHERE id = ?", "t",
                            task_id);
  if (rc != STORE_OK) return rc;
  rc = sql_step_row(db, st, what);
  if (rc == STORE_OK && !task_state_parse((const char *)sqlite3_column_text(st, 0), out))
    rc = sql_misuse(what, "stored state unknown");
  sql_stmt_done(st, cached);
  return rc;
}

static int sql_task_blob_refs(store *s, const char *task_id, task_state *state_out,
                              store_blob_ref **refs, size_t *count) {
  *refs = NULL;
  *count = 0;
  if (!task_id) return STORE_NOT_FOUND;
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  /* One read transaction: the state and the rows agree. */
  int rc = sql_begin_read(db);
  if (rc == STORE_OK) {
    int r = sql_load_task_state(db, task_id, state_out, "task_blob_refs");
    sqlite3_stmt *st = NULL;
    if (r == STORE_OK)
      r = sql_prepare(db, &st, "task_blob_refs",
                      "SELECT 0, idx, COALESCE(blob_key, ''), 0 FROM task_inputs"
                      " WHERE task_id = ?1"
                      " UNION ALL SELECT 1, idx, blob_key, purged_ms FROM task_results"
                      " WHERE task_id = ?1",
                      "t", task_id);
    if (r == STORE_OK)
      r = sql_collect(db, st, "task_blob_refs", sql_row_blob_ref, sizeof **refs, (void **)refs,
                      count);
    sqlite3_finalize(st);
    rc = sql_end(db, r);
  }
  sql_release(ss, db);
  if (rc != STORE_OK) {
    free(*refs);
    *refs = NULL;
    *count = 0;
  }
  return rc;
}

/* ---- cancel and deadlines -------------------------------------------------------------- */

/* Inside the cancel's write transaction: reads the state and acts on it
 * (store.h). *state is the state after. */
static int sql_cancel_locked(sqlite3 *db, const char *task_id, int64_t now_ms, const char *code,
                             const store_outbox *outbox, task_state *state) {
  int rc = sql_load_task_state(db, task_id, state, "task_cancel");
  if (rc != STORE_OK) return rc;
  if (*state == TASK_RUNNING)
    return sql_run(db, "task_cancel",
                   "UPDATE tasks SET cancel_requested = 1 WHERE id = ? AND cancel_requested = 0",
                   "t", task_id);
  if (*state != TASK_QUEUED) return STORE_CONFLICT;
  assert(task_state_can_transition(TASK_QUEUED, TASK_CANCELED));
  sql_event_row row;
  rc = sql_update_task(db, "task_cancel", &row,
                       "UPDATE tasks SET state = 'canceled', finished_ms = ?, error_code = ?,"
                       " event_seq = event_seq + 1 WHERE id = ? AND state = 'queued'"
                       " RETURNING event_seq, attempts",
                       "Itt", now_ms, code, task_id);
  if (rc == STORE_NOT_FOUND) /* read as queued in this same transaction */
    rc = sql_misuse("task_cancel", "the queued task changed under the write lock");
  if (rc == STORE_OK) rc = sql_settle_locked(db, task_id, TASK_CANCELED, 0, 0, now_ms);
  if (rc == STORE_OK)
    rc = sql_event_put(db, task_id, &row, TASK_EVENT_CANCELED, now_ms, NULL, 0, code);
  if (rc == STORE_OK) rc = sql_outbox_add(db, task_id, outbox, now_ms);
  if (rc == STORE_OK) *state = TASK_CANCELED;
  return rc;
}

static int sql_task_cancel(store *s, const char *task_id, int64_t now_ms, const char *code,
                           const store_outbox *outbox, task_state *state_out) {
  if (!task_id) return STORE_NOT_FOUND;
  if (!code || !code[0]) return sql_misuse("task_cancel", "no error code");
  if (!sql_outbox_valid(outbox))
    return sql_misuse("task_cancel", "outbox id, event or url missing or too long");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  task_state state = TASK_QUEUED;
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    int r = sql_cancel_locked(db, task_id, now_ms, code, outbox, &state);
    /* A running task's mark is a change to commit, though the answer is
     * CONFLICT (the task is not canceled yet). */
    bool marked = r == STORE_OK && state == TASK_RUNNING;
    rc = sql_write_end(ss, db, r);
    if (rc == STORE_OK && marked) rc = STORE_CONFLICT;
  }
  sql_release(ss, db);
  if (state_out && (rc == STORE_OK || rc == STORE_CONFLICT)) *state_out = state;
  return rc;
}

static int sql_task_list_due(store *s, int64_t now_ms, size_t limit,
                             char (**ids)[IDS_UUID_LEN + 1], size_t *count) {
  *ids = NULL;
  *count = 0;
  if (limit == 0) return STORE_OK;
  /* tasks_due holds only the tasks with a deadline that are not final, a
   * few among many; without statistics the planner would rather walk every
   * queued and running task by state. The WHERE repeats the index's
   * condition, which INDEXED BY requires (it fails loudly otherwise). */
  return sql_list((sql_store *)s, "task_list_due", sql_row_task_id, sizeof **ids, (void **)ids,
                  count,
                  "SELECT id FROM tasks INDEXED BY tasks_due"
                  " WHERE deadline_ms > 0 AND state IN ('queued', 'running')"
                  " AND deadline_ms <= ? ORDER BY deadline_ms, id LIMIT ?",
                  "II", now_ms, (int64_t)(limit > INT32_MAX ? INT32_MAX : limit));
}

static int sql_task_list_account(store *s, int64_t account_id, const char *after, size_t limit,
                                 char (**ids)[IDS_UUID_LEN + 1], size_t *count) {
  *ids = NULL;
  *count = 0;
  int64_t lim = (int64_t)(limit > INT32_MAX ? INT32_MAX : limit);
  sql_store *ss = (sql_store *)s;
  if (!after)
    return sql_list(ss, "task_list_account", sql_row_task_id, sizeof **ids, (void **)ids, count,
                    "SELECT id FROM tasks WHERE account_id = ?"
                    " ORDER BY created_ms DESC, id DESC LIMIT ?",
                    "II", account_id, lim);
  /* The cursor task must be the account's: another account's id says
   * nothing here (and its time must not leak through the page it would
   * start). */
  int rc = sql_list(ss, "task_list_account", sql_row_task_id, sizeof **ids, (void **)ids, count,
                    "SELECT t.id FROM tasks t, tasks c"
                    " WHERE c.id = ? AND c.account_id = ? AND t.account_id = c.account_id"
                    " AND (t.created_ms < c.created_ms OR"
                    "      (t.created_ms = c.created_ms AND t.id < c.id))"
                    " ORDER BY t.created_ms DESC, t.id DESC LIMIT ?",
                    "tII", after, account_id, lim);
  if (rc != STORE_OK || *count > 0) return rc;
  /* An empty page: the end of the list, or a cursor that is not the account's. */
  char (*probe)[IDS_UUID_LEN + 1] = NULL;
  size_t n = 0;
  rc = sql_list(ss, "task_list_account", sql_row_task_id, sizeof *probe, (void **)&probe, &n,
                "SELECT id FROM tasks WHERE id = ? AND account_id = ?", "tI", after, account_id);
  free(probe);
  if (rc != STORE_OK) return rc;
  return n == 1 ? STORE_OK : STORE_NOT_FOUND;
}

/* ---- task events: reading -------------------------------------------------------------- */

static int sql_row_event(sqlite3_stmt *st, void *elem) {
  task_event *e = elem;
  e->seq = sqlite3_column_int(st, 0);
  if (!task_event_kind_parse((const char *)sqlite3_column_text(st, 1), &e->kind))
    return sql_misuse("task_events", "stored kind unknown");
  e->at_ms = sqlite3_column_int64(st, 2);
  e->run = sqlite3_column_int(st, 3);
  sql_col_cut(st, 4, e->provider, sizeof e->provider);
  e->http_status = sqlite3_column_int(st, 5);
  sql_col_cut(st, 6, e->error_code, sizeof e->error_code);
  return STORE_OK;
}

static int sql_task_events(store *s, const char *task_id, int after_seq, task_event **out,
                           size_t *n) {
  *out = NULL;
  *n = 0;
  if (!task_id) return STORE_NOT_FOUND;
  sql_store *ss = (sql_store *)s;
  int rc = sql_list(ss, "task_events", sql_row_event, sizeof **out, (void **)out, n,
                    "SELECT seq, kind, at_ms, run, provider, http_status, error_code"
                    " FROM task_events WHERE task_id = ? AND seq > ? ORDER BY seq",
                    "ti", task_id, after_seq);
  if (rc != STORE_OK || *n > 0) return rc;
  /* No event after after_seq: a task with nothing new, or no task at all
   * (every task has its QUEUED event, so only then is it worth a look). */
  sqlite3 *db = sql_acquire(ss);
  int64_t one;
  rc = sql_scalar(db, "task_events", &one, "SELECT 1 FROM tasks WHERE id = ?", "t", task_id);
  sql_release(ss, db);
  return rc;
}

/* ---- webhook deliveries ---------------------------------------------------------------- */

static bool sql_webhook_state_parse(const char *name, webhook_state *out) {
  for (int i = 0; name && i < WEBHOOK_STATE_COUNT; i++)
    if (strcmp(name, webhook_state_name((webhook_state)i)) == 0) {
      *out = (webhook_state)i;
      return true;
    }
  return false;
}

/* The events whose delivery webhook_resend sends again: those that announce
 * a final state (store.h). */
#define SQL_FINAL_EVENTS "('task.succeeded', 'task.failed', 'task.moderated', 'task.canceled')"

/* Binds a prepared statement afresh (after a reset) and steps it once:
 * statements run once per row of a batch are prepared once per batch. */
static int sql_rerun(sqlite3 *db, sqlite3_stmt *st, const char *what, const char *types, ...) {
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  va_list ap;
  va_start(ap, types);
  int rc = sql_bind_va(st, types, ap);
  va_end(ap);
  if (rc != SQLITE_OK) return sql_fail(db, rc, what);
  int step = sqlite3_step(st);
  return step == SQLITE_DONE || step == SQLITE_ROW ? STORE_OK : sql_map(db, step, what);
}

static int sql_row_delivery(sqlite3_stmt *st, void *elem) {
  store_delivery *d = elem;
  if (!sql_col_copy(st, 0, d->id, sizeof d->id) ||
      !sql_col_copy(st, 1, d->task_id, sizeof d->task_id) ||
      !sql_col_copy(st, 3, d->event, sizeof d->event))
    return sql_misuse("webhook_claim", "stored id, task id or event too long");
  d->account_id = sqlite3_column_int64(st, 2);
  d->attempts = sqlite3_column_int(st, 6);
  d->created_ms = sqlite3_column_int64(st, 7);
  if (sql_col_dup(st, 4, &d->url) && sql_col_dup(st, 5, &d->payload)) return STORE_OK;
  store_delivery_clear(d);
  return sql_oom("webhook_claim");
}

/* Inside the claim's write transaction: reads the due rows, then moves each
 * to the end of its lease. */
static int sql_claim_locked(sqlite3 *db, int64_t now_ms, int64_t lease_ms, size_t limit,
                            store_delivery **out, size_t *n) {
  sqlite3_stmt *st;
  int rc = sql_prepare(db, &st, "webhook_claim",
                       "SELECT id, task_id, account_id, event, url, payload, attempts, created_ms"
                       " FROM webhook_deliveries WHERE state = 'pending' AND next_ms <= ?"
                       " ORDER BY next_ms LIMIT ?",
                       "II", now_ms, (int64_t)(limit > INT32_MAX ? INT32_MAX : limit));
  if (rc != STORE_OK) return rc;
  rc = sql_collect(db, st, "webhook_claim", sql_row_delivery, sizeof **out, (void **)out, n);
  sqlite3_finalize(st);
  if (rc != STORE_OK || *n == 0) return rc;
  rc = sql_prepare(db, &st, "webhook_claim",
                   "UPDATE webhook_deliveries SET next_ms = ? WHERE id = ?", "");
  for (size_t i = 0; i < *n && rc == STORE_OK; i++)
    rc = sql_rerun(db, st, "webhook_claim", "It", now_ms + lease_ms, (*out)[i].id);
  sqlite3_finalize(st);
  return rc;
}

static int sql_webhook_claim(store *s, int64_t now_ms, int64_t lease_ms, size_t limit,
                             store_delivery **out, size_t *n) {
  *out = NULL;
  *n = 0;
  if (limit == 0) return STORE_OK;
  if (lease_ms <= 0) return sql_misuse("webhook_claim", "a lease must be positive");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK)
    rc = sql_write_end(ss, db, sql_claim_locked(db, now_ms, lease_ms, limit, out, n));
  sql_release(ss, db);
  if (rc != STORE_OK) {
    store_delivery_free(*out, *n);
    *out = NULL;
    *n = 0;
  }
  return rc;
}

/* Inside the record's write transaction: one result. */
static int sql_record_one(sqlite3 *db, sqlite3_stmt *update, sqlite3_stmt *insert,
                          const store_delivery_result *r) {
  int rc = sql_rerun(db, update, "webhook_record", "tIttt", webhook_state_name(r->state),
                     r->next_ms, r->payload, r->id, webhook_state_name(WEBHOOK_PENDING));
  if (rc != STORE_OK || sqlite3_changes(db) == 0) return rc; /* an unknown id: skipped */
  return sql_rerun(db, insert, "webhook_record", "tIiIt", r->id, r->at_ms, r->http_status,
                   r->duration_ms, r->error);
}

static int sql_webhook_record(store *s, const store_delivery_result *r, size_t n) {
  if (n == 0) return STORE_OK;
  if (!r) return sql_misuse("webhook_record", "results missing");
  for (size_t i = 0; i < n; i++)
    if (!r[i].id || (unsigned)r[i].state >= WEBHOOK_STATE_COUNT)
      return sql_misuse("webhook_record", "a result without an id or with an unknown state");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    sqlite3_stmt *update = NULL, *insert = NULL;
    /* next_ms matters only while PENDING; a final row keeps its last one. */
    int r2 = sql_prepare(db, &update, "webhook_record",
                         "UPDATE webhook_deliveries SET attempts = attempts + 1, state = ?1,"
                         " next_ms = CASE WHEN ?1 = ?5 THEN ?2 ELSE next_ms END,"
                         " payload = COALESCE(?3, payload) WHERE id = ?4",
                         "");
    if (r2 == STORE_OK)
      r2 = sql_prepare(db, &insert, "webhook_record",
                       "INSERT INTO webhook_attempts(delivery_id, at_ms, http_status, duration_ms,"
                       " error) VALUES (?, ?, ?, ?, ?)",
                       "");
    for (size_t i = 0; i < n && r2 == STORE_OK; i++) r2 = sql_record_one(db, update, insert, &r[i]);
    sqlite3_finalize(update);
    sqlite3_finalize(insert);
    rc = sql_write_end(ss, db, r2);
  }
  sql_release(ss, db);
  return rc;
}

static int sql_row_webhook_attempt(sqlite3_stmt *st, void *elem) {
  store_webhook_attempt *a = elem;
  if (!sql_col_copy(st, 0, a->id, sizeof a->id) || !sql_col_copy(st, 1, a->event, sizeof a->event))
    return sql_misuse("webhook_list", "stored id or event too long");
  a->at_ms = sqlite3_column_int64(st, 2);
  a->http_status = sqlite3_column_int(st, 3);
  a->duration_ms = sqlite3_column_int64(st, 4);
  sql_col_cut(st, 5, a->error, sizeof a->error);
  if (!sql_webhook_state_parse((const char *)sqlite3_column_text(st, 6), &a->state))
    return sql_misuse("webhook_list", "stored state unknown");
  return STORE_OK;
}

static int sql_webhook_list(store *s, const char *task_id, store_webhook_attempt **out,
                            size_t *n) {
  *out = NULL;
  *n = 0;
  if (!task_id) return STORE_OK;
  return sql_list((sql_store *)s, "webhook_list", sql_row_webhook_attempt, sizeof **out,
                  (void **)out, n,
                  "SELECT d.id, d.event, a.at_ms, a.http_status, a.duration_ms,"
                  " COALESCE(a.error, ''), d.state FROM webhook_deliveries d"
                  " JOIN webhook_attempts a ON a.delivery_id = d.id"
                  " WHERE d.task_id = ? ORDER BY a.at_ms, a.id",
                  "t", task_id);
}

static int sql_webhook_resend(store *s, const char *task_id, int64_t now_ms) {
  if (!task_id) return STORE_NOT_FOUND;
  return sql_write_one((sql_store *)s, "webhook_resend", STORE_NOT_FOUND, NULL, NULL,
                       "UPDATE webhook_deliveries SET state = 'pending', next_ms = ?1"
                       " WHERE id = (SELECT id FROM webhook_deliveries WHERE task_id = ?2"
                       " AND event IN " SQL_FINAL_EVENTS " ORDER BY created_ms DESC, rowid DESC"
                       " LIMIT 1)",
                       "It", now_ms, task_id);
}

static int sql_webhook_pending_count(store *s, int64_t *n) {
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_scalar(db, "webhook_pending_count", n,
                      "SELECT COUNT(*) FROM webhook_deliveries WHERE state = 'pending'", "");
  sql_release(ss, db);
  return rc;
}

/* ---- webhook secrets ------------------------------------------------------------------- */

static bool sql_secret_valid(const char *secret) {
  return secret && secret[0] && strlen(secret) < sizeof ((store_webhook_secret *)0)->current;
}

/* Reads the account's secrets (on db, in or out of a transaction). */
static int sql_secret_read(sqlite3 *db, int64_t account_id, store_webhook_secret *out) {
  sqlite3_stmt *st;
  bool cached = false;
  int rc = sql_prepare_kept(db, &st, &cached, "webhook_secret",
                            "SELECT current, previous, previous_until_ms FROM webhook_secrets"
                            " WHERE account_id = ?",
                            "I", account_id);
  if (rc != STORE_OK) return rc;
  rc = sql_step_row(db, st, "webhook_secret");
  if (rc == STORE_OK) {
    memset(out, 0, sizeof *out);
    if (!sql_col_copy(st, 0, out->current, sizeof out->current) ||
        !sql_col_copy(st, 1, out->previous, sizeof out->previous))
      rc = sql_misuse("webhook_secret", "stored secret too long");
    out->previous_until_ms = sqlite3_column_int64(st, 2);
  }
  sql_stmt_done(st, cached);
  return rc;
}

static int sql_webhook_secret_get(store *s, int64_t account_id, const char *fresh,
                                  store_webhook_secret *out) {
  if (fresh && !sql_secret_valid(fresh))
    return sql_misuse("webhook_secret_get", "fresh secret empty or too long");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_secret_read(db, account_id, out);
  sql_release(ss, db);
  if (rc != STORE_NOT_FOUND || !fresh) return rc;
  /* The first call for the account: of racing first calls, the first
   * insert wins and the others change nothing; all read the winner. An
   * unknown account fails the foreign key: NOT_FOUND. */
  rc = sql_write_one(ss, "webhook_secret_get", STORE_OK, NULL, NULL,
                     "INSERT INTO webhook_secrets(account_id, current) VALUES (?, ?)"
                     " ON CONFLICT(account_id) DO NOTHING",
                     "It", account_id, fresh);
  if (rc != STORE_OK) return rc;
  db = sql_acquire(ss);
  rc = sql_secret_read(db, account_id, out);
  sql_release(ss, db);
  return rc;
}

static int sql_webhook_secret_rotate(store *s, int64_t account_id, const char *fresh,
                                     int64_t previous_until_ms, store_webhook_secret *out) {
  if (!sql_secret_valid(fresh))
    return sql_misuse("webhook_secret_rotate", "fresh secret missing, empty or too long");
  sql_store *ss = (sql_store *)s;
  sqlite3 *db = sql_acquire(ss);
  int rc = sql_write_begin(ss, db);
  if (rc == STORE_OK) {
    /* In an UPDATE every right-hand side sees the row as it was: previous
     * gets the old current. */
    int r = sql_run(db, "webhook_secret_rotate",
                    "INSERT INTO webhook_secrets(account_id, current) VALUES (?1, ?2)"
                    " ON CONFLICT(account_id) DO UPDATE SET current = excluded.current,"
                    " previous = current, previous_until_ms = ?3",
                    "ItI", account_id, fresh, previous_until_ms);
    store_webhook_secret now;
    if (r == STORE_OK) r = sql_secret_read(db, account_id, &now);
    if (r == STORE_OK && out) *out = now;
    rc = sql_write_end(ss, db, r);
  }
  sql_release(ss, db);
  return rc;
}

/* ---- opening and closing --------------------------------------------------------------- */

static void sql_free(sql_store *ss) {
  for (size_t i = 0; i < ss->n_conns; i++) {
    sql_cache_clear(&ss->caches[i]);
    if (sqlite3_close(ss->conns[i]) != SQLITE_OK) /* a statement left open: a bug */
      LOG_ERROR("sqlite_connection_did_not_close", NULL);
  }
  pthread_cond_destroy(&ss->cv);
  pthread_mutex_destroy(&ss->mu);
  pthread_mutex_destroy(&ss->write_mu);
  pthread_mutex_destroy(&ss->broken_mu);
  pthread_cond_destroy(&ss->gc_cv);
  free(ss->db_path);
  free(ss->conns);
  free(ss->caches);
  free(ss->idle);
  free(ss);
}

/* Every operation has returned its connection by now (the caller stops all
 * users before closing), so each close succeeds: no statement is left open. */
static void sql_close(store *s) {
  if (s) sql_free((sql_store *)s);
}

/* Runs a statement that returns one text value (a PRAGMA) into out. */
static bool sql_pragma_text(sqlite3 *db, const char *sql, char *out, size_t size) {
  sqlite3_stmt *st;
  out[0] = '\0';
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return false;
  bool ok = sqlite3_step(st) == SQLITE_ROW && sql_col_copy(st, 0, out, size);
  sqlite3_finalize(st);
  return ok;
}

/* Per-connection settings.
 *
 * synchronous=FULL, not NORMAL. With WAL, NORMAL cannot corrupt the database,
 * but it syncs the WAL only at checkpoints, so a transaction whose COMMIT has
 * returned can still roll back after a power loss or OS crash (SQLite's
 * documentation of PRAGMA synchronous says exactly this). A finished task is
 * reported to its client and webhook right after task_finish commits; losing
 * that commit afterwards would make a delivered result vanish and the task run
 * again. FULL syncs the WAL on every commit: one fsync per write transaction,
 * a few per task, which is cheap next to generating an image. The operator
 * may choose NORMAL (store.sqlite_synchronous), see store_sqlite_set_sync(). */
static _Atomic int sql_sync_mode = STORE_SYNC_FULL;

void store_sqlite_set_sync(store_sync mode) { sql_sync_mode = (int)mode; }

static bool sql_configure(sqlite3 *db, char *err, size_t err_size) {
  char mode[16];
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, SQL_BUSY_TIMEOUT_MS);
  if (!sql_pragma_text(db, "PRAGMA journal_mode=WAL", mode, sizeof mode) ||
      strcmp(mode, "wal") != 0) {
    sql_set_err(err, err_size, "cannot switch the database to WAL mode (%s): %s", mode,
                sqlite3_errmsg(db));
    return false;
  }
  char *msg = NULL;
  const char *pragmas = sql_sync_mode == STORE_SYNC_NORMAL
                            ? "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                            : "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;";
  if (sqlite3_exec(db, pragmas, NULL, NULL, &msg) != SQLITE_OK) {
    sql_set_err(err, err_size, "cannot configure the database: %s", msg ? msg : "?");
    sqlite3_free(msg);
    return false;
  }
  /* A build without foreign keys ignores the pragma silently. */
  char fk[8];
  if (!sql_pragma_text(db, "PRAGMA foreign_keys", fk, sizeof fk) || strcmp(fk, "1") != 0) {
    sql_set_err(err, err_size, "this SQLite does not enforce foreign keys");
    return false;
  }
  return true;
}

static sqlite3 *sql_open_conn(const char *path, char *err, size_t err_size) {
  sqlite3 *db = NULL;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path, &db, flags, NULL);
  if (rc != SQLITE_OK) {
    sql_set_err(err, err_size, "cannot open database %s: %s", path,
                db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close(db);
    return NULL;
  }
  if (!sql_configure(db, err, err_size)) {
    sqlite3_close(db);
    return NULL;
  }
  return db;
}

/* Reads the newest applied version and whether version v is applied. */
static bool sql_versions(sqlite3 *db, int64_t v, int64_t *max_out, bool *has_v) {
  sqlite3_stmt *st;
  if (sql_prepare(db, &st, "migrate",
                  "SELECT COALESCE(MAX(version), 0), COALESCE(SUM(version = ?), 0)"
                  " FROM schema_migrations",
                  "I", v) != STORE_OK)
    return false;
  bool ok = sql_step_row(db, st, "migrate") == STORE_OK;
  if (ok) {
    *max_out = sqlite3_column_int64(st, 0);
    *has_v = sqlite3_column_int64(st, 1) > 0;
  }
  sqlite3_finalize(st);
  return ok;
}

/* Inside the migration transaction: false (with err) when the database was
 * written by a newer imgate; otherwise *pending tells whether v is missing. */
static bool sql_migration_check(sqlite3 *db, int64_t v, bool *pending, char *err,
                                size_t err_size) {
  int64_t max = 0;
  bool has_v = false;
  if (!sql_versions(db, v, &max, &has_v)) {
    sql_set_err(err, err_size, "cannot read schema_migrations: %s", sqlite3_errmsg(db));
    return false;
  }
  if (max > SQL_MIGRATION_COUNT) {
    /* Running old code on a newer schema could silently drop what the newer
     * code relies on; the operator must upgrade the binary instead. */
    sql_set_err(err, err_size,
                "database schema version %lld is newer than this imgate knows (%lld); "
                "refusing to open it with an older binary",
                (long long)max, (long long)SQL_MIGRATION_COUNT);
    return false;
  }
  *pending = !has_v;
  return true;
}

/* Inside a migration's transaction, with foreign keys off: true when every
 * row still has its parents (PRAGMA foreign_key_check returns no row). */
static bool sql_foreign_keys_hold(sqlite3 *db) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(db, "PRAGMA foreign_key_check", -1, &st, NULL) != SQLITE_OK) return false;
  bool ok = sqlite3_step(st) == SQLITE_DONE;
  sqlite3_finalize(st);
  return ok;
}

/* Runs migration v and records it, then commits. */
static bool sql_migration_apply(sqlite3 *db, int64_t v, char *err, size_t err_size) {
  char *msg = NULL;
  if (sqlite3_exec(db, sql_migrations[v - 1], NULL, NULL, &msg) != SQLITE_OK) {
    sql_set_err(err, err_size, "migration %lld failed: %s", (long long)v, msg ? msg : "?");
    sqlite3_free(msg);
    return false;
  }
  if (!sql_foreign_keys_hold(db)) {
    sql_set_err(err, err_size, "migration %lld failed: it left rows without their parent rows",
                (long long)v);
    return false;
  }
  if (sql_run(db, "migrate", "INSERT INTO schema_migrations(version, applied_ms) VALUES (?, ?)",
              "II", v, time_now_ms()) != STORE_OK ||
      sql_end(db, STORE_OK) != STORE_OK) {
    sql_set_err(err, err_size, "migration %lld failed: %s", (long long)v, sqlite3_errmsg(db));
    return false;
  }
  LOG_INFO("schema_migration_applied", "version=%lld", (long long)v);
  return true;
}

/* Applies migration v in its own transaction unless it is applied already.
 * The version check runs inside the write transaction so two processes
 * opening the same new database never both apply it. */
static bool sql_migrate_one(sqlite3 *db, int64_t v, char *err, size_t err_size) {
  if (sql_begin_write(db) != STORE_OK) {
    sql_set_err(err, err_size, "cannot lock the database: %s", sqlite3_errmsg(db));
    return false;
  }
  bool pending = false;
  bool ok = sql_migration_check(db, v, &pending, err, err_size) &&
            (!pending || sql_migration_apply(db, v, err, err_size));
  sql_rollback(db); /* a no-op after a commit; releases the lock otherwise */
  return ok;
}

/* Applies migrations 1..upto. Foreign keys are off meanwhile (the pragma is
 * a no-op inside a transaction, so it is set around them): a migration that
 * rebuilds a table drops the old one, and with foreign keys on that drop
 * would first delete every row, cascading into the child tables. Each
 * migration checks the keys itself before it commits. */
static bool sql_migrate(sqlite3 *db, int64_t upto, char *err, size_t err_size) {
  if (sql_run(db, "migrate",
              "CREATE TABLE IF NOT EXISTS schema_migrations("
              "version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
              "") != STORE_OK) {
    sql_set_err(err, err_size, "cannot create schema_migrations: %s", sqlite3_errmsg(db));
    return false;
  }
  if (sqlite3_exec(db, "PRAGMA foreign_keys=OFF", NULL, NULL, NULL) != SQLITE_OK) {
    sql_set_err(err, err_size, "cannot turn foreign keys off to migrate: %s", sqlite3_errmsg(db));
    return false;
  }
  bool ok = true;
  for (int64_t v = 1; v <= upto && ok; v++) ok = sql_migrate_one(db, v, err, err_size);
  char fk[8];
  if (sqlite3_exec(db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL) != SQLITE_OK ||
      !sql_pragma_text(db, "PRAGMA foreign_keys", fk, sizeof fk) || strcmp(fk, "1") != 0) {
    if (ok) sql_set_err(err, err_size, "cannot turn foreign keys back on after migrating");
    return false;
  }
  return ok;
}

static const store_ops sql_ops = {
    .name = "sqlite",
    .close = sql_close,
    .health = sql_health,
    .account_create = sql_account_create,
    .account_get_by_email = sql_account_get_by_email,
    .account_get = sql_account_get,
    .account_count = sql_account_count,
    .account_list = sql_account_list,
    .key_create = sql_key_create,
    .key_authenticate = sql_key_authenticate,
    .key_revoke = sql_key_revoke,
    .key_list = sql_key_list,
    .task_insert = sql_task_insert,
    .task_insert_idempotent = sql_task_insert_idempotent,
    .task_get = sql_task_get,
    .account_open = sql_account_open,
    .ledger_post = sql_ledger_post,
    .ledger_list = sql_ledger_list,
    .ledger_verify = sql_ledger_verify,
    .account_set_limits = sql_account_set_limits,
    .account_set_disabled = sql_account_set_disabled,
    .task_count_active = sql_task_count_active,
    .task_list_running = sql_task_list_running,
    .task_requeue = sql_task_requeue,
    .results_expired = sql_results_expired,
    .result_mark_purged = sql_result_mark_purged,
    .task_start = sql_task_start,
    .task_start_many = sql_task_start_many,
    .task_finish = sql_task_finish,
    .task_requeue_running = sql_task_requeue_running,
    .task_list_queued = sql_task_list_queued,
    .task_attempt_add = sql_task_attempt_add,
    .result_by_token = sql_result_by_token,
    .task_blob_refs = sql_task_blob_refs,
    .task_events = sql_task_events,
    .task_cancel = sql_task_cancel,
    .task_list_due = sql_task_list_due,
    .task_list_account = sql_task_list_account,
    .webhook_claim = sql_webhook_claim,
    .webhook_record = sql_webhook_record,
    .webhook_list = sql_webhook_list,
    .webhook_resend = sql_webhook_resend,
    .webhook_pending_count = sql_webhook_pending_count,
    .webhook_secret_get = sql_webhook_secret_get,
    .webhook_secret_rotate = sql_webhook_secret_rotate,
};

static sql_store *sql_alloc(int pool_size) {
  sql_store *ss = calloc(1, sizeof *ss);
  if (!ss) return NULL;
  ss->conns = calloc((size_t)pool_size, sizeof *ss->conns);
  ss->idle = calloc((size_t)pool_size, sizeof *ss->idle);
  ss->caches = calloc((size_t)pool_size, sizeof *ss->caches);
  /* Each step only once the one before it worked; a failure undoes exactly
   * the steps done. */
  int done = 0;
  if (ss->conns && ss->idle && ss->caches) {
    if (pthread_mutex_init(&ss->mu, NULL) == 0) done = 1;
    if (done == 1 && pthread_cond_init(&ss->cv, NULL) == 0) done = 2;
    if (done == 2 && pthread_mutex_init(&ss->write_mu, NULL) == 0) done = 3;
    if (done == 3 && pthread_mutex_init(&ss->broken_mu, NULL) == 0) done = 4;
    if (done == 4 && pthread_cond_init(&ss->gc_cv, NULL) == 0) done = 5;
  }
  if (done < 5) {
    if (done >= 4) pthread_mutex_destroy(&ss->broken_mu);
    if (done >= 3) pthread_mutex_destroy(&ss->write_mu);
    if (done >= 2) pthread_cond_destroy(&ss->cv);
    if (done >= 1) pthread_mutex_destroy(&ss->mu);
    free(ss->conns);
    free(ss->caches);
    free(ss->idle);
    free(ss);
    return NULL;
  }
  ss->base.ops = &sql_ops;
  return ss;
}

/* Remembers which file the connections opened (see sql_check_identity). */
static bool sql_record_identity(sql_store *ss, char *err, size_t err_size) {
  const char *name = sqlite3_db_filename(ss->conns[0], "main");
  struct stat st;
  if (!name || !*name || !(ss->db_path = strdup(name))) {
    sql_set_err(err, err_size, "cannot tell which file the database is");
    return false;
  }
  if (stat(ss->db_path, &st) != 0) {
    sql_set_err(err, err_size, "cannot stat the database %s: %s", ss->db_path, strerror(errno));
    return false;
  }
  ss->db_dev = st.st_dev;
  ss->db_ino = st.st_ino;
  return true;
}

int store_sqlite_pool_size(int threads) {
  /* The engine's dispatcher and completers use the store besides the
   * request threads. */
  const int engine_threads = 4;
  if (threads < 1) threads = 1;
  if (threads > STORE_SQLITE_MAX_POOL - engine_threads) return STORE_SQLITE_MAX_POOL;
  return threads + engine_threads;
}

/* Process-wide SQLite settings, before SQLite initialises itself. Memory
 * statistics are off: keeping them takes a global mutex on every allocation
 * of every connection, which the request threads then queue on (it showed as
 * the top lock in a profile of the poll path). Nothing here reads them. */
static pthread_once_t sql_global_once = PTHREAD_ONCE_INIT;

static void sql_global_init(void) {
  if (sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) != SQLITE_OK)
    LOG_WARN("sqlite_memstatus_left_on", NULL); /* initialised already by someone else */
}

store *store_sqlite_open(const char *path, int pool_size, char *err, size_t err_size) {
  if (!path || !*path) {
    sql_set_err(err, err_size, "no database path");
    return NULL;
  }
  if (pool_size < 1 || pool_size > STORE_SQLITE_MAX_POOL) {
    sql_set_err(err, err_size, "pool size %d outside 1..%d", pool_size, STORE_SQLITE_MAX_POOL);
    return NULL;
  }
  if (!sqlite3_threadsafe()) {
    sql_set_err(err, err_size, "SQLite was built without thread support");
    return NULL;
  }
  pthread_once(&sql_global_once, sql_global_init);
  sql_store *ss = sql_alloc(pool_size);
  if (!ss) {
    sql_set_err(err, err_size, "out of memory");
    return NULL;
  }
  /* The first connection migrates before the others exist, so no operation
   * can ever see a half-migrated schema. */
  for (int i = 0; i < pool_size; i++) {
    sqlite3 *db = sql_open_conn(path, err, err_size);
    if (!db || (i == 0 && !sql_migrate(db, SQL_MIGRATION_COUNT, err, err_size))) {
      sqlite3_close(db);
      sql_free(ss);
      return NULL;
    }
    ss->caches[ss->n_conns].db = db;
    ss->conns[ss->n_conns++] = db;
    ss->idle[ss->n_idle++] = db;
  }
  if (!sql_record_identity(ss, err, err_size)) {
    sql_free(ss);
    return NULL;
  }
  return &ss->base;
}

bool store_sqlite_migrate_to(const char *path, int64_t version, char *err, size_t err_size) {
  if (!path || !*path || version < 1 || version > SQL_MIGRATION_COUNT) {
    sql_set_err(err, err_size, "no path, or version outside 1..%lld",
                (long long)SQL_MIGRATION_COUNT);
    return false;
  }
  pthread_once(&sql_global_once, sql_global_init);
  sqlite3 *db = sql_open_conn(path, err, err_size);
  bool ok = db && sql_migrate(db, version, err, err_size);
  sqlite3_close(db);
  return ok;
}
