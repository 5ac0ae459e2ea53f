/* main.c - the imgate command line: serve, admin, help.
 *
 * The only file that owns process-wide state: signals, the data-folder lock,
 * and the order in which modules start and stop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "blob/blob.h"
#include "config.h"
#include "datadir.h"
#include "core/accounts.h"
#include "core/pricing.h"
#include "core/core.h"
#include "core/engine.h"
#include "core/retention.h"
#include "core/transcode.h"
#include "http/server.h"
#include "store/store.h"
#include "upstream/provider.h"
#include "upstream/providers.h"
#include "core/catalog.h"
#include "upstream/curlloop.h"
#include "upstream/router.h"
#include "util/buf.h"
#include "util/ids.h"
#include "util/log.h"
#include "util/timeutil.h"

#define DEMO_EMAIL "demo@imgate.local"

static const char usage_main[] =
    "imgate - a self-hosted image-generation gateway\n"
    "\n"
    "usage: imgate <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve                 run the HTTP server\n"
    "  admin                 create the database; manage accounts and API keys\n"
    "  help [command]        show help\n"
    "\n"
    "Run 'imgate <command> --help' for a command's options.\n";

static const char usage_serve[] =
    "usage: imgate serve [--listen HOST:PORT] [--data DIR] [--config FILE]\n"
    "\n"
    "Runs the HTTP server. On a fresh data folder it creates the database; on a\n"
    "database without accounts it creates the demo account " DEMO_EMAIL "\n"
    "and prints its API key once. It refuses to start (exit 1) on a folder\n"
    "whose database is missing but which held one (DIR/" DATADIR_MARKER_FILE "):\n"
    "restore it, or start over with 'imgate admin init'.\n"
    "\n"
    "  --listen HOST:PORT  address to listen on (default 127.0.0.1:8080; port 0 picks\n"
    "                      a free port); env IMGATE_LISTEN\n"
    "  --data DIR          data folder: database and images (default ./var); env IMGATE_DATA\n"
    "  --config FILE       JSON configuration file; env IMGATE_CONFIG\n"
    "\n"
    "Claims the port first (exits 1 at once if it is taken), then opens the\n"
    "data folder. Prints 'imgate listening on URL' once requests are served.\n"
    "SIGTERM or SIGINT stops it gracefully: new connections are turned away,\n"
    "requests in progress get http.shutdown_timeout_ms to finish, running\n"
    "tasks get engine.drain_timeout_ms; tasks not finished are re-run at the\n"
    "next start. See docs/configuration.md.\n";

static const char usage_admin[] =
    "usage: imgate admin <object> <action> [args] [--data DIR] [--config FILE]\n"
    "\n"
    "  init                           create the data folder and an empty database\n"
    "                                 (does nothing to a database that is there)\n"
    "  account create EMAIL           create an account; prints its id\n"
    "  account list                   list accounts (id, email, state, created)\n"
    "  key create EMAIL [--name NAME] create an API key; prints the key alone on\n"
    "                                 stdout (shown once: only its hash is kept)\n"
    "  key list EMAIL                 list the account's keys (id, prefix, state,\n"
    "                                 created, last used, name)\n"
    "  key revoke KEY|ID              revoke a key, given in full or by id\n"
    "  topup EMAIL USD [--reason R]   add prepaid credit, e.g. topup a@b.c 10.50\n"
    "  refund EMAIL USD [--reason R]  pay unused credit back (takes it off the balance)\n"
    "  ledger EMAIL [--csv]           the account's ledger, oldest first, and its balance\n"
    "  ledger-verify                  check that balances equal their ledgers (exit 1 if not)\n"
    "  limits EMAIL [--concurrency N] [--qps N]\n"
    "                                 show or set tasks in flight / requests per second\n"
    "                                 per key (0 = unlimited)\n"
    "  disable EMAIL | enable EMAIL   refuse (403) or allow the account's requests\n"
    "\n"
    "The admin commands work on the same data folder as 'imgate serve', also\n"
    "while a server is running. All but init need a folder that holds a\n"
    "database: they exit 1 and create nothing on any other (a mistyped --data).\n";

typedef struct cli_opts {
  const char *listen;
  const char *data;
  const char *config;
  const char *name;
  const char *reason;
  const char *concurrency, *qps;
  bool csv;
  bool help;
} cli_opts;

/* Parses the options shared by all commands; positional arguments are
 * gathered into args. Returns 0, or 2 on a usage error. */
static int parse_opts(int argc, char **argv, cli_opts *o, char **args, int *n_args,
                      int max_args) {
  static const struct option longopts[] = {
      {"listen", required_argument, NULL, 'l'}, {"data", required_argument, NULL, 'd'},
      {"config", required_argument, NULL, 'c'}, {"name", required_argument, NULL, 'n'},
      {"reason", required_argument, NULL, 'r'}, {"concurrency", required_argument, NULL, 'C'},
      {"qps", required_argument, NULL, 'Q'},    {"csv", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
  memset(o, 0, sizeof *o);
  *n_args = 0;
  optind = 1;
  opterr = 0;
  int ch;
  /* '-' in optstring keeps positional arguments in order, interleaved with options. */
  while ((ch = getopt_long(argc, argv, "-h", longopts, NULL)) != -1) {
    switch (ch) {
    case 'l': o->listen = optarg; break;
    case 'd': o->data = optarg; break;
    case 'c': o->config = optarg; break;
    case 'n': o->name = optarg; break;
    case 'r': o->reason = optarg; break;
    case 'C': o->concurrency = optarg; break;
    case 'Q': o->qps = optarg; break;
    case 'v': o->csv = true; break;
    case 'h': o->help = true; break;
    case 1:
      if (*n_args >= max_args) {
        fprintf(stderr, "imgate: unexpected argument \"%s\"\n", optarg);
        return 2;
      }
      args[(*n_args)++] = optarg;
      break;
    default:
      fprintf(stderr, "imgate: unknown or incomplete option \"%s\"\n", argv[optind - 1]);
      return 2;
    }
  }
  return 0;
}

static int load_config(const cli_opts *o, imgate_config *cfg) {
  char err[512];
  config_defaults(cfg);
  const char *file = o->config ? o->config : getenv("IMGATE_CONFIG");
  if (file && *file && config_load_file(cfg, file, err, sizeof err) < 0) goto fail;
  if (config_load_env(cfg, err, sizeof err) < 0) goto fail;
  if (o->listen) snprintf(cfg->listen, sizeof cfg->listen, "%s", o->listen);
  if (o->data) snprintf(cfg->data_dir, sizeof cfg->data_dir, "%s", o->data);
  if (config_apply_provider_env(cfg, err, sizeof err) < 0) goto fail;
  if (config_validate(cfg, err, sizeof err) < 0) goto fail;
  return 0;
fail:
  fprintf(stderr, "imgate: configuration: %s\n", err);
  return -1;
}

/* Opens DIR/imgate.db, creating it when absent: callers decide first
 * whether that is allowed (datadir_inspect). */
static store *open_store(const imgate_config *cfg, int pool_size) {
  char path[1100], err[256];
  datadir_db_path(cfg->data_dir, path, sizeof path);
  store_sqlite_set_sync(strcmp(cfg->sqlite_synchronous, "normal") == 0 ? STORE_SYNC_NORMAL
                                                                       : STORE_SYNC_FULL);
  store *st = store_sqlite_open(path, pool_size, err, sizeof err);
  if (!st) fprintf(stderr, "imgate: cannot open %s: %s\n", path, err);
  return st;
}

/* ---- admin -------------------------------------------------------------- */

/* The store of a folder that holds a database; anything else is refused
 * with a message naming the folder, and nothing is created: a mistyped
 * --data must not leave a folder with an empty database behind. */
static store *open_existing_store(const imgate_config *cfg) {
  char detail[512];
  const char *dir = cfg->data_dir;
  switch (datadir_inspect(dir, detail, sizeof detail)) {
  case DATADIR_READY:
    return open_store(cfg, 1);
  case DATADIR_MISSING:
    fprintf(stderr,
            "imgate: the data folder %s does not exist; check --data (or IMGATE_DATA), or "
            "create a database there with: imgate admin init --data %s\n",
            dir, dir);
    break;
  case DATADIR_FRESH:
    fprintf(stderr,
            "imgate: %s holds no imgate database (no %s/" DATADIR_DB_FILE "); check --data "
            "(or IMGATE_DATA), or create one with: imgate admin init --data %s\n",
            dir, dir, dir);
    break;
  case DATADIR_LOST:
    fprintf(stderr,
            "imgate: %s: %s; its database is gone. Restore it from a backup "
            "(docs/operations.md), or start over with an empty one: imgate admin init --data %s\n",
            dir, detail, dir);
    break;
  case DATADIR_BAD:
    fprintf(stderr, "imgate: cannot use the data folder %s: %s\n", dir, detail);
    break;
  }
  return NULL;
}

/* `admin init`: the only admin command that creates a database. On a
 * folder that has one it changes nothing (but applies pending migrations,
 * as any admin command does). */
static int admin_init(const imgate_config *cfg) {
  char detail[512], path[1100], err[256];
  const char *dir = cfg->data_dir;
  datadir_db_path(dir, path, sizeof path);
  datadir_state ds = datadir_inspect(dir, detail, sizeof detail);
  if (ds == DATADIR_BAD) {
    fprintf(stderr, "imgate: cannot use the data folder %s: %s\n", dir, detail);
    return 1;
  }
  if (ds != DATADIR_READY && datadir_make(dir) < 0) {
    fprintf(stderr, "imgate: cannot create the data folder %s: %s\n", dir, strerror(errno));
    return 1;
  }
  /* A server on this folder may still hold a removed database open, the
   * one copy left of it (docs/operations.md): never create a new one under
   * its feet. */
  int lock = ds == DATADIR_READY ? -1 : datadir_lock(dir);
  if (ds != DATADIR_READY && lock < 0) {
    fprintf(stderr,
            "imgate: an imgate serve is running on %s (or %s/imgate.lock cannot be opened); "
            "stop it first\n",
            dir, dir);
    return 1;
  }
  store *st = open_store(cfg, 1);
  int rc = st && datadir_mark(dir, err, sizeof err) == 0 ? 0 : 1;
  if (st && rc) fprintf(stderr, "imgate: %s\n", err);
  if (st) st->ops->close(st);
  if (lock >= 0) close(lock);
  if (rc) return 1;
  if (ds == DATADIR_READY) {
    printf("%s already holds a database (%s); nothing created\n", dir, path);
    return 0;
  }
  if (ds == DATADIR_LOST)
    fprintf(stderr, "imgate: note: %s; the new database does not have its accounts, keys or "
                    "balances\n", detail);
  printf("created an empty database: %s\n", path);
  return 0;
}

static int admin_fail(const imgate_error *err) {
  fprintf(stderr, "imgate: %s\n", err->message);
  return 1;
}

/* The account with this email; says why on stderr when there is none. */
static bool admin_account(store *st, const char *email, store_account *out) {
  imgate_error err = {0};
  if (accounts_find(st, email, out, &err) == 0) return true;
  admin_fail(&err);
  return false;
}

static int admin_key_list(store *st, const char *email) {
  store_account acct;
  if (!admin_account(st, email, &acct)) return 1;
  store_key *keys = NULL;
  size_t n = 0;
  if (st->ops->key_list(st, acct.id, &keys, &n) != STORE_OK) {
    fprintf(stderr, "imgate: cannot list keys\n");
    return 1;
  }
  /* The name goes last: it may hold spaces. The last-used time is stamped at
   * most once a minute (see the store), so it is accurate to a minute. */
  printf("%-6s %-10s %-8s %-24s %-24s %s\n", "id", "prefix", "state", "created", "last_used",
         "name");
  for (size_t i = 0; i < n; i++) {
    char created[32], last_used[32] = "never";
    time_format_iso(keys[i].created_ms, created);
    if (keys[i].last_used_ms) time_format_iso(keys[i].last_used_ms, last_used);
    printf("%-6lld %-10s %-8s %-24s %-24s %s\n", (long long)keys[i].id, keys[i].prefix,
           keys[i].revoked_ms ? "revoked" : "active", created, last_used, keys[i].name);
  }
  free(keys);
  return 0;
}

static int admin_account_list(store *st) {
  store_account *accts = NULL;
  size_t n = 0;
  if (st->ops->account_list(st, &accts, &n) != STORE_OK) {
    fprintf(stderr, "imgate: cannot list accounts\n");
    return 1;
  }
  printf("%-6s %-9s %-24s %14s %s\n", "id", "state", "created", "balance_usd", "email");
  for (size_t i = 0; i < n; i++) {
    char created[32], balance[32];
    time_format_iso(accts[i].created_ms, created);
    pricing_format_usd(accts[i].balance_micros, balance, sizeof balance);
    printf("%-6lld %-9s %-24s %14s %s\n", (long long)accts[i].id,
           accts[i].disabled ? "disabled" : "active", created, balance, accts[i].email);
  }
  free(accts);
  return 0;
}

static int admin_money(store *st, const cli_opts *o, bool topup, const char *email,
                       const char *usd) {
  store_account a;
  int64_t micros, balance;
  imgate_error err = {0};
  if (pricing_parse_usd(usd, &micros) < 0 || micros <= 0) {
    fprintf(stderr, "imgate: \"%s\" is not a positive amount of USD (at most 6 decimals)\n",
            usd);
    return 2;
  }
  if (!admin_account(st, email, &a)) return 1;
  if (accounts_post_money(st, a.id, topup, micros, o->reason, &balance, &err) < 0)
    return admin_fail(&err);
  char b[32];
  pricing_format_usd(balance, b, sizeof b);
  printf("%s\n", b);
  return 0;
}

static int admin_ledger(store *st, const cli_opts *o, const char *email) {
  store_account a;
  if (!admin_account(st, email, &a)) return 1;
  ledger_entry *e = NULL;
  size_t n = 0;
  if (st->ops->ledger_list(st, a.id, &e, &n) != STORE_OK) {
    fprintf(stderr, "imgate: cannot read the ledger\n");
    return 1;
  }
  if (o->csv) {
    buf csv = BUF_INIT;
    bool ok = accounts_ledger_csv(e, n, &csv);
    free(e);
    if (!ok) {
      buf_free(&csv);
      fprintf(stderr, "imgate: out of memory\n");
      return 1;
    }
    fwrite(csv.data, 1, csv.len, stdout);
    buf_free(&csv);
    return 0;
  }
  printf("%-7s %-24s %-10s %14s %14s %-36s %s\n", "id", "time", "kind", "available", "held",
         "task", "reason");
  for (size_t i = 0; i < n; i++) {
    char when[32], av[32], he[32];
    time_format_iso(e[i].created_ms, when);
    pricing_format_usd(e[i].available_micros, av, sizeof av);
    pricing_format_usd(e[i].held_micros, he, sizeof he);
    printf("%-7lld %-24s %-10s %14s %14s %-36s %s\n", (long long)e[i].id, when,
           ledger_kind_name(e[i].kind), av, he, e[i].task_id[0] ? e[i].task_id : "-",
           e[i].reason);
  }
  free(e);
  char av[32], he[32];
  pricing_format_usd(a.balance_micros, av, sizeof av);
  pricing_format_usd(a.held_micros, he, sizeof he);
  printf("balance %s USD available, %s USD held\n", av, he);
  return 0;
}

static int parse_limit(const char *text, const char *what, int *out) {
  *out = -1; /* absent: leave as is */
  if (!text) return 0;
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || *end || v < 0 || v > API_LIMIT_MAX) {
    fprintf(stderr, "imgate: --%s must be an integer 0..%d\n", what, API_LIMIT_MAX);
    return -1;
  }
  *out = (int)v;
  return 0;
}

static int admin_limits(store *st, const cli_opts *o, const char *email) {
  store_account a;
  int conc, qps;
  if (parse_limit(o->concurrency, "concurrency", &conc) < 0 || parse_limit(o->qps, "qps", &qps) < 0)
    return 2;
  if (!admin_account(st, email, &a)) return 1;
  if ((conc >= 0 || qps >= 0) &&
      (st->ops->account_set_limits(st, a.id, conc, qps) != STORE_OK ||
       st->ops->account_get(st, a.id, &a) != STORE_OK)) {
    fprintf(stderr, "imgate: the limits could not be stored\n");
    return 1;
  }
  printf("concurrency %d\nqps %d\n", a.max_concurrency, a.qps_per_key);
  return 0;
}

/* The billing and account-state commands: `admin VERB EMAIL [ARG]`.
 * Returns -1 when argv is none of them. */
static int run_admin_billing(store *st, const cli_opts *o, char **args, int n) {
  const char *verb = n > 0 ? args[0] : "";
  if (!strcmp(verb, "ledger-verify") && n == 1) {
    if (st->ops->ledger_verify(st) != STORE_OK) {
      fprintf(stderr, "imgate: the ledger and the balances disagree (see the log)\n");
      return 1;
    }
    printf("ok\n");
    return 0;
  }
  if ((!strcmp(verb, "topup") || !strcmp(verb, "refund")) && n == 3)
    return admin_money(st, o, !strcmp(verb, "topup"), args[1], args[2]);
  if (!strcmp(verb, "ledger") && n == 2) return admin_ledger(st, o, args[1]);
  if (!strcmp(verb, "limits") && n == 2) return admin_limits(st, o, args[1]);
  if ((!strcmp(verb, "disable") || !strcmp(verb, "enable")) && n == 2) {
    store_account a;
    if (!admin_account(st, args[1], &a)) return 1;
    if (st->ops->account_set_disabled(st, a.id, !strcmp(verb, "disable")) != STORE_OK) {
      fprintf(stderr, "imgate: the account's state could not be stored\n");
      return 1;
    }
    fprintf(stderr, "%s %sd\n", a.email, verb);
    return 0;
  }
  return -1;
}

static bool is_billing_verb(const char *v) {
  static const char *const verbs[] = {"topup", "refund", "ledger", "ledger-verify", "limits",
                                      "disable", "enable"};
  for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
    if (!strcmp(v, verbs[i])) return true;
  return false;
}

static int run_admin(int argc, char **argv) {
  cli_opts o;
  char *args[4];
  int n;
  int rc = parse_opts(argc, argv, &o, args, &n, 4);
  if (rc) {
    fputs(usage_admin, stderr);
    return rc;
  }
  if (o.help) {
    fputs(usage_admin, stdout);
    return 0;
  }
  imgate_config cfg;
  if (load_config(&o, &cfg) < 0) return 1;
  const char *obj = n > 0 ? args[0] : "", *act = n > 1 ? args[1] : "";
  const char *arg = n > 2 ? args[2] : NULL;
  if (!strcmp(obj, "init") && n == 1) return admin_init(&cfg);
  if (is_billing_verb(obj)) {
    store *st = open_existing_store(&cfg);
    if (!st) return 1;
    rc = run_admin_billing(st, &o, args, n);
    st->ops->close(st);
    if (rc < 0) fputs(usage_admin, stderr);
    return rc < 0 ? 2 : rc;
  }
  bool known = (strcmp(obj, "account") == 0 && strcmp(act, "create") == 0 && arg && n == 3) ||
               (strcmp(obj, "account") == 0 && strcmp(act, "list") == 0 && n == 2) ||
               (strcmp(obj, "key") == 0 &&
                (!strcmp(act, "create") || !strcmp(act, "list") || !strcmp(act, "revoke")) &&
                arg && n == 3);
  if (!known) {
    fputs(usage_admin, stderr);
    return 2;
  }
  store *st = open_existing_store(&cfg);
  if (!st) return 1;
  imgate_error err = {0};
  rc = 0;
  if (strcmp(obj, "account") == 0 && strcmp(act, "list") == 0) {
    rc = admin_account_list(st);
  } else if (strcmp(obj, "account") == 0) {
    int64_t id;
    if (accounts_signup(st, &cfg, arg, &id, &err) < 0)
      rc = admin_fail(&err);
    else
      printf("%lld\n", (long long)id);
  } else if (strcmp(act, "create") == 0) {
    char key[ACCOUNTS_KEY_LEN + 1];
    int64_t key_id;
    if (accounts_create_key(st, arg, o.name, cfg.max_keys_per_account, key, &key_id, &err) < 0) {
      rc = admin_fail(&err);
    } else {
      printf("%s\n", key);
      fprintf(stderr, "key id %lld created for %s; it is shown only now\n", (long long)key_id,
              arg);
    }
  } else if (strcmp(act, "list") == 0) {
    rc = admin_key_list(st, arg);
  } else {
    if (accounts_revoke_key(st, arg, &err) < 0)
      rc = admin_fail(&err);
    else
      fprintf(stderr, "key revoked\n");
  }
  st->ops->close(st);
  return rc;
}

/* ---- serve -------------------------------------------------------------- */

static void print_banner(const imgate_config *cfg, const char *host, int port, store *st,
                         const char *demo_key) {
  const char *h = strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 ? "127.0.0.1" : host;
  bool v6 = strchr(h, ':') != NULL;
  char url[300];
  snprintf(url, sizeof url, "http://%s%s%s:%d", v6 ? "[" : "", h, v6 ? "]" : "", port);
  printf("imgate listening on %s\n", url);
  printf("data folder: %s (SQLite database and images)\n", cfg->data_dir);
  if (cfg->n_providers == 0 && cfg->n_routes == 0) {
    printf("provider: sim (simulated images, %d ms; no upstream configured)\n", cfg->sim_delay_ms);
  } else {
    for (int i = 0; i < cfg->n_providers; i++)
      printf("provider: %s (%s%s%s)\n", cfg->providers[i].name, cfg->providers[i].kind,
             cfg->providers[i].base_url[0] ? " at " : "", cfg->providers[i].base_url);
  }
  printf("admin token: in %s/admin_token (for /admin/... and /metrics; docs/api-admin.md)\n",
         cfg->data_dir);
  if (demo_key) {
    printf("demo account: " DEMO_EMAIL "\n");
    printf("demo key: %s\n", demo_key);
    printf("try:\n  curl -s %s/api/banana/create-async -H 'Authorization: Bearer %s' \\\n"
           "       -H 'Content-Type: application/json' -d '{\"prompt\":\"a banana on the moon\"}'\n",
           url, demo_key);
  } else {
    int64_t n = 0;
    st->ops->account_count(st, &n);
    printf("accounts: %lld; a new key: imgate admin key create EMAIL --data %s\n", (long long)n,
           cfg->data_dir);
  }
  fflush(stdout);
}

/* The admin token: from configuration, else DATA/admin_token (created with
 * 128 random bits and mode 0600 on first start). */
static int load_admin_token(imgate_config *cfg) {
  if (cfg->admin_token[0]) return 0;
  char path[1100];
  snprintf(path, sizeof path, "%s/admin_token", cfg->data_dir);
  FILE *f = fopen(path, "r");
  if (f) {
    bool ok = fgets(cfg->admin_token, sizeof cfg->admin_token, f) != NULL;
    fclose(f);
    cfg->admin_token[strcspn(cfg->admin_token, "\r\n")] = '\0';
    if (ok && cfg->admin_token[0]) return 0;
  }
  char token[33];
  if (!ids_random_hex(token, 16)) return -1;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  bool ok = write(fd, token, 32) == 32 && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
  close(fd);
  if (!ok) return -1;
  snprintf(cfg->admin_token, sizeof cfg->admin_token, "%s", token);
  return 0;
}

/* What every provider instance may need besides its own configuration. */
static provider_env provider_env_of(const imgate_config *cfg, curlloop *loop, int threads) {
  return (provider_env){.loop = loop,
                        .sim = {.delay_ms = cfg->sim_delay_ms,
                                .fail_marker = cfg->sim_fail_marker,
                                .moderate_marker = cfg->sim_moderate_marker,
                                .render_threads = threads}};
}

/* The simulated provider named "sim", where the configuration implies it. */
static provider *make_sim(const provider_env *env) {
  provider_instance_config pc = {.name = "sim", .kind = "sim"};
  return provider_create(&pc, env);
}

/* Builds the router from configuration: the configured providers and routes,
 * or, when no upstream is configured at all, the simulated provider serving
 * every model. */
static router *build_router(const imgate_config *cfg, curlloop *loop, int threads) {
  router_config rc = {.breaker_failures = cfg->breaker_failures,
                      .breaker_open_ms = cfg->breaker_open_ms,
                      .recovery_ms = cfg->breaker_recovery_ms};
  router *r = router_create(&rc);
  if (!r) return NULL;
  provider_env env = provider_env_of(cfg, loop, threads);
  for (int i = 0; i < cfg->n_providers; i++) {
    const config_provider *cp = &cfg->providers[i];
    provider_instance_config pc = {.name = cp->name,
                                   .kind = cp->kind,
                                   .base_url = cp->base_url,
                                   .api_key = cp->api_key,
                                   .timeout_ms = cp->timeout_ms,
                                   .connect_timeout_ms = cp->connect_timeout_ms};
    provider *p = provider_create(&pc, &env);
    if (!p || router_add_provider(r, p, cp->max_concurrency) < 0) {
      fprintf(stderr, "imgate: provider \"%s\" could not be set up (kind %s)\n", cp->name,
              cp->kind);
      if (p) p->ops->destroy(p);
      router_destroy(r);
      return NULL;
    }
  }
  bool have_routes = cfg->n_routes > 0;
  for (int i = 0; i < cfg->n_routes; i++) {
    const config_route *cr = &cfg->routes[i];
    if (!strcmp(cr->provider, "sim") && !router_has_provider(r, "sim")) {
      /* "sim" may be named in routes without being declared: add it once. */
      provider *p = make_sim(&env);
      if (p && router_add_provider(r, p, 0) < 0) p->ops->destroy(p);
    }
    const catalog_model *m = catalog_find(cr->model);
    const char *upstream = cr->upstream_model[0] ? cr->upstream_model : m->upstream_model;
    if (router_add_route(r, cr->model, cr->provider, upstream, cr->weight) < 0) {
      fprintf(stderr, "imgate: route %s -> %s could not be added\n", cr->model, cr->provider);
      router_destroy(r);
      return NULL;
    }
  }
  /* A model no route names is served by every provider of its kind: declaring
   * a provider is enough to use it. */
  size_t n_models;
  const catalog_model *all = catalog_models(&n_models);
  for (size_t m = 0; m < n_models; m++) {
    if (router_serves(r, all[m].name)) continue;
    for (int i = 0; i < cfg->n_providers; i++)
      if (!strcmp(cfg->providers[i].kind, all[m].upstream_kind))
        router_add_route(r, all[m].name, cfg->providers[i].name, all[m].upstream_model, 1);
  }
  if (!have_routes && cfg->n_providers == 0) {
    provider *p = make_sim(&env);
    if (!p || router_add_provider(r, p, 0) < 0) {
      if (p) p->ops->destroy(p);
      router_destroy(r);
      return NULL;
    }
    size_t n;
    const catalog_model *models = catalog_models(&n);
    for (size_t i = 0; i < n; i++)
      router_add_route(r, models[i].name, "sim", models[i].upstream_model, 1);
  }
  return r;
}

/* Creates the demo account and key on an empty database. */
static int bootstrap_demo(store *st, const imgate_config *cfg, char key[ACCOUNTS_KEY_LEN + 1]) {
  int64_t n = 0, id, key_id;
  imgate_error err = {0};
  if (st->ops->account_count(st, &n) != STORE_OK || n > 0) return 0;
  if (accounts_signup(st, cfg, DEMO_EMAIL, &id, &err) < 0 ||
      accounts_create_key(st, DEMO_EMAIL, "demo", cfg->max_keys_per_account, key, &key_id,
                          &err) < 0) {
    LOG_ERROR("demo_account_failed", "error=%s", err.slug);
    return -1;
  }
  return 1;
}

/* Every upstream call in flight holds a socket: lift the soft descriptor
 * limit to the hard one (the usual soft default, 1024, would cap a gateway
 * at about a thousand concurrent calls). */
static void raise_fd_limit(const imgate_config *cfg) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) LOG_WARN("fd_limit_unchanged", NULL);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  /* Client connections are not the only descriptors: upstream calls, the
   * database and image files need theirs. Running out shows up as refused
   * accepts and failed upstream calls, far from the cause: say it now. */
  rlim_t want = (rlim_t)cfg->max_connections + (rlim_t)cfg->engine_max_in_flight + 256;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
    LOG_WARN("fd_limit_below_max_connections", "nofile=%llu max_connections=%d wanted=%llu",
             (unsigned long long)rl.rlim_cur, cfg->max_connections, (unsigned long long)want);
}

/* Everything `imgate serve` runs. */
typedef struct serve_parts {
  http_listener *listener; /* until the HTTP server takes it over */
  int lock_fd;
  store *st;
  blob *bl;
  engine *eng;
  events *ev; /* task changes: the engine and the core publish, waiting requests watch */
  retention *ret;
  /* Set once the core can render payloads (after the engine started: its
   * changes from recovery are claimed by the dispatcher's first pass), read
   * by the engine's threads: atomic. */
  webhook_dispatcher *wd;
  core *c;
  http_router *routes;
  api_admin *admin;
  api_admin_accounts *admin_accounts;
  http_server *srv;
  int threads;
} serve_parts;

/* The port comes first: when it is taken, nothing has touched the data
 * folder yet (no database, no demo account, no recovery run). Until the
 * server starts, clients wait in the listen queue. */
static int serve_claim_port(serve_parts *p, const imgate_config *cfg, const char *host,
                            int port) {
  char err[256];
  p->listener = http_listen(host, port, err, sizeof err);
  if (p->listener) return 0;
  fprintf(stderr, "imgate: cannot listen on %s: %s%s\n", cfg->listen, err,
          strstr(err, "in use") ? " (another process has this port; choose another with --listen)"
                                : "");
  return -1;
}

/* One server per data folder: the lock is taken before the database is
 * opened, so a second server never even runs the migrations (a second one
 * would re-queue the first one's running tasks as crash leftovers).
 *
 * A database is created only on a fresh folder. One whose database went
 * missing is refused before anything is created in it: a new, empty
 * database would hand out a new demo account in place of every account,
 * key and balance, silently. */
static int serve_open_data(serve_parts *p, const imgate_config *cfg) {
  char detail[512], err[256];
  const char *dir = cfg->data_dir;
  datadir_state ds = datadir_inspect(dir, detail, sizeof detail);
  if (ds == DATADIR_LOST) {
    fprintf(stderr,
            "imgate: refusing to start on %s: %s. Starting would create a new, empty "
            "database (no accounts, keys or balances). Restore %s/" DATADIR_DB_FILE
            " from a backup (docs/operations.md), or start over on purpose with: "
            "imgate admin init --data %s\n",
            dir, detail, dir, dir);
    return -1;
  }
  if (ds == DATADIR_BAD) {
    fprintf(stderr, "imgate: cannot use the data folder %s: %s\n", dir, detail);
    return -1;
  }
  if (datadir_make(dir) < 0) {
    fprintf(stderr, "imgate: cannot create data folder %s: %s\n", dir, strerror(errno));
    return -1;
  }
  p->lock_fd = datadir_lock(dir);
  if (p->lock_fd < 0) {
    fprintf(stderr, "imgate: another imgate serve is using %s\n", cfg->data_dir);
    return -1;
  }
  p->st = open_store(cfg, store_sqlite_pool_size(p->threads));
  if (!p->st) return -1;
  /* Also on a database from before the marker existed: from now on its
   * loss is recognised. */
  if (datadir_mark(dir, err, sizeof err) < 0) {
    fprintf(stderr, "imgate: %s\n", err);
    return -1;
  }
  char blob_dir[1100];
  snprintf(blob_dir, sizeof blob_dir, "%s/blobs", cfg->data_dir);
  p->bl = blob_fs_open(blob_dir, err, sizeof err);
  if (!p->bl) {
    fprintf(stderr, "imgate: blob store: %s\n", err);
    return -1;
  }
  return 0;
}

/* The engine has committed a change of a task: its watchers look again, and
 * a webhook delivery it queued goes out now rather than at the next poll. */
static void publish_change(void *ctx, const char *task_id, bool outbox) {
  serve_parts *p = ctx;
  events_publish(p->ev, task_id);
  webhook_dispatcher *wd = outbox ? __atomic_load_n(&p->wd, __ATOMIC_ACQUIRE) : NULL;
  if (wd) webhook_dispatcher_notify(wd);
}

static void notify_dispatcher(void *ctx, core_webhook_news what) {
  if (what == CORE_WEBHOOK_SECRETS_CHANGED) webhook_dispatcher_secrets_changed(ctx);
  else webhook_dispatcher_notify(ctx);
}

/* The webhook dispatcher, once the core (its payload renderer) exists. */
static int serve_start_webhooks(serve_parts *p, const imgate_config *cfg) {
  webhook_dispatcher_config wc = {.render = api_render_webhook, .render_ctx = p->c};
  webhook_config_from(&wc.webhook, cfg);
  char err[256];
  webhook_dispatcher *wd = webhook_dispatcher_start(&wc, p->st, err, sizeof err);
  if (!wd) {
    fprintf(stderr, "imgate: cannot start the webhook dispatcher: %s\n", err);
    return -1;
  }
  __atomic_store_n(&p->wd, wd, __ATOMIC_RELEASE);
  core_set_webhook_notify(p->c, notify_dispatcher, wd);
  return 0;
}

/* Creates and starts the engine; starting it re-queues what a previous run
 * left unfinished. */
static int serve_start_engine(serve_parts *p, const imgate_config *cfg) {
  p->ev = events_create();
  if (!p->ev) return -1;
  curlloop_config lc = {.max_host_connections = 0, .connect_timeout_ms = 10000};
  curlloop *loop = curlloop_create(&lc);
  router *rt = loop ? build_router(cfg, loop, p->threads) : NULL;
  engine_config ec = {.max_in_flight = cfg->engine_max_in_flight,
                      .retention_ms = (int64_t)cfg->retention_hours * 3600 * 1000,
                      .max_input_bytes = cfg->max_image_bytes,
                      .drain_timeout_ms = cfg->engine_drain_timeout_ms,
                      .max_attempts = cfg->retry_max_attempts,
                      .deadline_ms = cfg->retry_deadline_ms,
                      .backoff_base_ms = cfg->retry_backoff_base_ms,
                      .backoff_max_ms = cfg->retry_backoff_max_ms,
                      .fetch = {.allow_private = cfg->allow_private_networks,
                                .allow_http = cfg->fetch_allow_http,
                                .max_bytes = cfg->max_image_bytes,
                                .timeout_ms = cfg->fetch_timeout_ms,
                                .max_redirects = 3},
                      .transcode_threads = cfg->transcode_threads,
                      .transcode_max_pixels = cfg->transcode_max_pixels,
                      .prices = cfg, /* run_serve's: it outlives the engine */
                      .on_change = publish_change,
                      .on_change_ctx = p};
  p->eng = rt ? engine_create(p->st, p->bl, rt, loop, &ec) : NULL;
  if (!p->eng) {
    if (rt) router_destroy(rt);
    if (loop) curlloop_destroy(loop);
    fprintf(stderr, "imgate: cannot create the task engine\n");
    return -1;
  }
  if (engine_start(p->eng) < 0) {
    fprintf(stderr, "imgate: cannot start the task engine\n");
    return -1;
  }
  retention_config rc = {.sweep_interval_ms = cfg->retention_sweep_interval_ms,
                         .orphan_min_age_ms = (int64_t)cfg->retention_orphan_min_age_s * 1000,
                         .orphan_interval_ms = cfg->retention_orphan_interval_ms};
  p->ret = retention_start(p->st, p->bl, &rc);
  if (!p->ret) {
    fprintf(stderr, "imgate: cannot start the retention sweeper\n");
    return -1;
  }
  return 0;
}

/* Routes, then the server on the claimed port: from here on requests are
 * served. */
static int serve_start_http(serve_parts *p, const imgate_config *cfg) {
  p->c = core_create(cfg, p->st, p->bl, p->eng, p->ev);
  p->routes = http_router_new();
  if (!p->c || !p->routes || serve_start_webhooks(p, cfg) < 0) return -1;
  api_health_register(p->routes, p->c);
  api_register_dialects(p->routes, p->c);
  api_files_register(p->routes, p->c);
  opsview view = {.eng = p->eng, .ret = p->ret, .wd = p->wd};
  p->admin = api_admin_register(p->routes, &view, cfg->admin_token);
  p->admin_accounts = api_admin_accounts_register(p->routes, p->st, cfg);
  if (!p->admin || !p->admin_accounts) return -1;
  http_server_config hc = {.listener = p->listener,
                           .threads = p->threads,
                           .max_body_bytes = cfg->max_body_bytes,
                           .connection_timeout_s = (unsigned)cfg->connection_timeout_s,
                           .max_connections = (unsigned)cfg->max_connections,
                           .max_connections_per_ip = (unsigned)cfg->max_connections_per_ip,
                           .max_buffered_body_bytes = cfg->max_buffered_body_bytes,
                           .shutdown_timeout_ms = cfg->http_shutdown_timeout_ms,
                           .header_timeout_ms = cfg->http_header_timeout_ms,
                           .body_timeout_ms = cfg->http_body_timeout_ms,
                           .body_min_rate = (unsigned)cfg->http_body_min_rate,
                           .send_timeout_ms = cfg->http_send_timeout_ms,
                           .send_min_rate = (unsigned)cfg->http_send_min_rate,
                           .max_header_bytes = cfg->http_max_header_bytes,
                           .on_error = api_server_error_hook};
  char err[256];
  p->listener = NULL; /* the server's now, whatever happens */
  p->srv = http_server_start(&hc, p->routes, err, sizeof err);
  if (!p->srv) {
    fprintf(stderr, "imgate: cannot serve on %s: %s\n", cfg->listen, err);
    return -1;
  }
  return 0;
}

/* How long a stop lets webhook attempts under way finish; the rest are
 * sent again after the restart (their leases run out). */
#define SERVE_WEBHOOK_GRACE_MS 2000

/* Order matters: no new requests (those in progress finish), then no new
 * tasks (the engine's drain may still queue deliveries), then the webhook
 * dispatcher (nothing notifies it any more), then the stores. */
static void serve_stop(serve_parts *p) {
  if (p->srv) http_server_stop(p->srv);
  http_listener_close(p->listener);
  retention_stop(p->ret);
  engine_destroy(p->eng);
  webhook_dispatcher *wd = __atomic_exchange_n(&p->wd, NULL, __ATOMIC_ACQ_REL);
  webhook_dispatcher_stop(wd, SERVE_WEBHOOK_GRACE_MS);
  events_destroy(p->ev); /* after the server (its waiting requests) and the engine */
  core_free(p->c);
  http_router_free(p->routes);
  api_admin_free(p->admin);
  api_admin_accounts_free(p->admin_accounts);
  if (p->bl) p->bl->ops->close(p->bl);
  if (p->st) p->st->ops->close(p->st);
  if (p->lock_fd >= 0) close(p->lock_fd);
}

/* Start-up, in order: the port, the data folder, the demo account, the
 * engine (recovery), the HTTP server; the banner only once requests are
 * served. */
static int serve_start(serve_parts *p, imgate_config *cfg, const char *host, int port) {
  if (serve_claim_port(p, cfg, host, port) < 0 || serve_open_data(p, cfg) < 0) return -1;
  char demo_key[ACCOUNTS_KEY_LEN + 1] = "";
  int demo = cfg->demo_account ? bootstrap_demo(p->st, cfg, demo_key) : 0;
  if (demo < 0) return -1;
  if (load_admin_token(cfg) < 0) {
    fprintf(stderr, "imgate: cannot create %s/admin_token\n", cfg->data_dir);
    return -1;
  }
  if (serve_start_engine(p, cfg) < 0 || serve_start_http(p, cfg) < 0) return -1;
  LOG_INFO("started", "listen=%s:%d threads=%d data=%s", host, http_server_port(p->srv),
           p->threads, cfg->data_dir);
  print_banner(cfg, host, http_server_port(p->srv), p->st, demo > 0 ? demo_key : NULL);
  return 0;
}

static int run_serve(int argc, char **argv) {
  cli_opts o;
  char *args[1];
  int n;
  int rc = parse_opts(argc, argv, &o, args, &n, 0);
  if (rc) {
    fputs(usage_serve, stderr);
    return rc;
  }
  if (o.help) {
    fputs(usage_serve, stdout);
    return 0;
  }
  imgate_config cfg;
  if (load_config(&o, &cfg) < 0) return 1;
  log_set_level((log_level)log_level_parse(cfg.log_level));
  raise_fd_limit(&cfg);

  /* Signals are taken by sigwait() below; every thread created after this
   * inherits the mask, so none of them is interrupted by SIGTERM. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);
  /* libvips (output formats) after the mask: threads it starts inherit it. */
  if (!transcode_startup()) {
    fprintf(stderr, "imgate: cannot start libvips, which converts output formats\n");
    return 1;
  }

  char host[256];
  int port;
  config_split_listen(cfg.listen, host, sizeof host, &port);
  serve_parts p = {.lock_fd = -1};
  p.threads = cfg.http_threads > 0 ? cfg.http_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (p.threads < 1) p.threads = 1;

  rc = 1;
  if (serve_start(&p, &cfg, host, port) == 0) {
    int sig = 0;
    sigwait(&sigs, &sig);
    LOG_INFO("stopping", "signal=%s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    rc = 0;
  }
  serve_stop(&p);
  transcode_shutdown();
  if (rc == 0) LOG_INFO("stopped", NULL);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage_main, stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    fputs(usage_main, stdout);
    return 0;
  }
  if (!strcmp(cmd, "help")) {
    const char *topic = argc > 2 ? argv[2] : "";
    fputs(!strcmp(topic, "serve")   ? usage_serve
          : !strcmp(topic, "admin") ? usage_admin
                                    : usage_main,
          stdout);
    return 0;
  }
  if (!strcmp(cmd, "serve")) return run_serve(argc - 1, argv + 1);
  if (!strcmp(cmd, "admin")) return run_admin(argc - 1, argv + 1);
  fprintf(stderr, "imgate: unknown command \"%s\"\n", cmd);
  fputs(usage_main, stderr);
  return 2;
}
