/* s3_driver.c - drives blob/s3client.c for the end-to-end S3 tests
 * (tests/e2e/test_s3_client.py, against tests/fakes/moto_s3.py).
 *
 *   s3_driver COMMAND ARGS...
 *
 * The bucket comes from the environment as s3_config_from_env reads it
 * (IMGATE_S3_ENDPOINT, IMGATE_S3_BUCKET, IMGATE_S3_REGION,
 * IMGATE_S3_ADDRESSING, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), plus
 * S3_DRIVER_RESOLVE (the resolve field) and S3_DRIVER_PART_SIZE (bytes).
 *
 * Commands (each prints one JSON object on stdout, exit 0 unless the driver
 * itself failed; the operation's outcome is in the JSON):
 *   put KEY FILE [TYPE]           PutObject from memory (FILE read whole first)
 *   put-file KEY FILE [TYPE [LEN]] s3_put_file from the file's fd (LEN: claim
 *                                 this length instead of the file's), with the
 *                                 process's resident memory before and its peak
 *                                 during the upload (/proc/self/status, VmHWM
 *                                 reset through /proc/self/clear_refs)
 *   put-many PREFIX N             N small objects PREFIX0..PREFIX{N-1} put at once
 *                                 through the asynchronous API, one wait for all
 *   get KEY OUT [START LEN]       GetObject (a Range when LEN > 0), body to OUT
 *   head KEY | delete KEY
 *   list PREFIX MAX_KEYS          every page, following continuation tokens
 *   presign KEY EXPIRES [NOW]     the URL alone, as {"url": ...} */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blob/s3client.h"
#include "blob/s3sync.h"
#include "upstream/curlloop.h"

static void die(const char *what) {
  fprintf(stderr, "s3_driver: %s\n", what);
  exit(2);
}

static json_t *result_json(const s3_result *r) {
  return json_pack("{s:s, s:i, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I}", "status",
                   s3_status_name(r->status), "http", (int)r->http_status, "code", r->error_code,
                   "message", r->message, "request_id", r->request_id, "etag", r->etag,
                   "content_type", r->content_type, "object_size", (json_int_t)r->object_size,
                   "range_start", (json_int_t)r->range_start, "last_modified_ms",
                   (json_int_t)r->last_modified_ms);
}

static void print_json(json_t *j) {
  char *s = json_dumps(j, JSON_COMPACT);
  if (!s) die("cannot print JSON");
  printf("%s\n", s);
  free(s);
  json_decref(j);
}

/* A field of /proc/self/status in kB; -1 when absent. */
static long proc_status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t n = strlen(field);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, n) == 0 && line[n] == ':') v = strtol(line + n + 1, NULL, 10);
  fclose(f);
  return v;
}

static uint8_t *read_whole(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) die("cannot open the file");
  uint8_t *data = malloc((size_t)st.st_size + 1);
  if (!data) die("out of memory");
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, data + got, (size_t)st.st_size - got);
    if (n <= 0) die("cannot read the file");
    got += (size_t)n;
  }
  close(fd);
  *len = got;
  return data;
}

/* --- put-many: the asynchronous API directly --- */

typedef struct many {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int left;
  int ok;
  json_t *failures;
} many;

static void many_done(void *ctx, s3_result *res) {
  many *m = ctx;
  pthread_mutex_lock(&m->mu);
  if (res->status == S3_OK) m->ok++;
  else json_array_append_new(m->failures, result_json(res));
  if (--m->left == 0) pthread_cond_signal(&m->cv);
  pthread_mutex_unlock(&m->mu);
}

static void put_many(s3_client *c, const char *prefix, int n) {
  many m = {.left = n, .failures = json_array()};
  pthread_mutex_init(&m.mu, NULL);
  pthread_cond_init(&m.cv, NULL);
  char **keys = calloc((size_t)n, sizeof *keys);
  char **bodies = calloc((size_t)n, sizeof *bodies);
  if (!keys || !bodies) die("out of memory");
  int started = 0;
  for (int i = 0; i < n; i++) {
    if (asprintf(&keys[i], "%s%d", prefix, i) < 0 || asprintf(&bodies[i], "body of %d", i) < 0)
      die("out of memory");
    if (s3_put_object(c, keys[i], bodies[i], strlen(bodies[i]), "text/plain", many_done, &m) == 0)
      started++;
  }
  pthread_mutex_lock(&m.mu);
  m.left -= n - started;
  while (m.left > 0) pthread_cond_wait(&m.cv, &m.mu);
  pthread_mutex_unlock(&m.mu);
  print_json(json_pack("{s:i, s:i, s:o}", "started", started, "ok", m.ok, "failures", m.failures));
  for (int i = 0; i < n; i++) {
    free(keys[i]);
    free(bodies[i]);
  }
  free(keys);
  free(bodies);
  pthread_cond_destroy(&m.cv);
  pthread_mutex_destroy(&m.mu);
}

/* --- the rest, through the blocking wrappers --- */

static void list_all(s3_client *c, const char *prefix, int max_keys) {
  json_t *keys = json_array(), *pages = json_array();
  char *token = NULL;
  s3_result r;
  for (;;) {
    if (s3_list_objects_sync(c, prefix, token, max_keys, &r) != S3_OK) break;
    json_array_append_new(pages, json_integer((json_int_t)r.list.n_entries));
    for (size_t i = 0; i < r.list.n_entries; i++) {
      const s3_list_entry *e = &r.list.entries[i];
      json_array_append_new(keys, json_pack("{s:s, s:I, s:s, s:I}", "key", e->key, "size",
                                            (json_int_t)e->size, "etag", e->etag, "mtime_ms",
                                            (json_int_t)e->mtime_ms));
    }
    free(token);
    token = r.list.truncated ? strdup(r.list.next_token) : NULL;
    if (!token) break;
    s3_result_free(&r);
  }
  free(token);
  json_t *out = result_json(&r);
  json_object_set_new(out, "keys", keys);
  json_object_set_new(out, "pages", pages);
  print_json(out);
  s3_result_free(&r);
}

static void put_file(s3_client *c, const char *key, const char *path, const char *type,
                     const char *claimed_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) die("cannot open the file");
  uint64_t len = claimed_len ? strtoull(claimed_len, NULL, 10) : (uint64_t)st.st_size;
  long rss_before = proc_status_kb("VmRSS");
  /* "5" resets the peak (VmHWM) to the current resident size: what follows
   * is the upload's own peak. */
  int cr = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (cr < 0 || write(cr, "5", 1) != 1) die("cannot reset VmHWM");
  close(cr);
  s3_result r;
  s3_put_file_sync(c, key, fd, len, type, &r);
  long peak = proc_status_kb("VmHWM");
  close(fd);
  json_t *out = result_json(&r);
  json_object_set_new(out, "rss_before_kb", json_integer(rss_before));
  json_object_set_new(out, "rss_peak_kb", json_integer(peak));
  print_json(out);
  s3_result_free(&r);
}

static void get(s3_client *c, const char *key, const char *out_path, uint64_t start,
                uint64_t len) {
  s3_result r;
  s3_get_object_sync(c, key, start, len, (size_t)64 << 20, &r);
  json_t *out = result_json(&r);
  json_object_set_new(out, "size", json_integer((json_int_t)r.body.len));
  if (r.status == S3_OK) {
    FILE *f = fopen(out_path, "wb");
    if (!f || (r.body.len && fwrite(r.body.data, 1, r.body.len, f) != r.body.len) || fclose(f) != 0)
      die("cannot write the output file");
  }
  print_json(out);
  s3_result_free(&r);
}

int main(int argc, char **argv) {
  if (argc < 3) die("usage: s3_driver COMMAND ARGS... (see the source)");
  const char *cmd = argv[1];
  s3_config cfg;
  s3_config_defaults(&cfg);
  char err[512];
  if (s3_config_from_env(&cfg, err, sizeof err) != 0) die(err);
  const char *resolve = getenv("S3_DRIVER_RESOLVE");
  if (resolve) snprintf(cfg.resolve, sizeof cfg.resolve, "%s", resolve);
  const char *part = getenv("S3_DRIVER_PART_SIZE");
  if (part) cfg.part_size = strtoull(part, NULL, 10);

  curlloop *loop = curlloop_create(NULL);
  if (!loop) die("cannot start the curl loop");
  s3_client *c = s3_client_new(&cfg, loop, err, sizeof err);
  if (!c) {
    curlloop_destroy(loop);
    print_json(json_pack("{s:s, s:s}", "status", "config", "message", err));
    return 0;
  }
  s3_result r;
  if (strcmp(cmd, "put") == 0 && argc >= 4) {
    size_t len;
    uint8_t *data = read_whole(argv[3], &len);
    s3_put_object_sync(c, argv[2], data, len, argc > 4 ? argv[4] : NULL, &r);
    free(data);
    print_json(result_json(&r));
    s3_result_free(&r);
  } else if (strcmp(cmd, "put-file") == 0 && argc >= 4) {
    put_file(c, argv[2], argv[3], argc > 4 ? argv[4] : NULL, argc > 5 ? argv[5] : NULL);
  } else if (strcmp(cmd, "put-many") == 0 && argc >= 4) {
    put_many(c, argv[2], atoi(argv[3]));
  } else if (strcmp(cmd, "get") == 0 && argc >= 4) {
    get(c, argv[2], argv[3], argc > 5 ? strtoull(argv[4], NULL, 10) : 0,
        argc > 5 ? strtoull(argv[5], NULL, 10) : 0);
  } else if (strcmp(cmd, "head") == 0) {
    s3_head_object_sync(c, argv[2], &r);
    print_json(result_json(&r));
    s3_result_free(&r);
  } else if (strcmp(cmd, "delete") == 0) {
    s3_delete_object_sync(c, argv[2], &r);
    print_json(result_json(&r));
    s3_result_free(&r);
  } else if (strcmp(cmd, "list") == 0 && argc >= 4) {
    list_all(c, argv[2], atoi(argv[3]));
  } else if (strcmp(cmd, "presign") == 0 && argc >= 4) {
    int64_t now = argc > 4 ? strtoll(argv[4], NULL, 10) : (int64_t)time(NULL);
    char *url = s3_presign_get(c, argv[2], atoi(argv[3]), now);
    print_json(json_pack("{s:s?}", "url", url));
    free(url);
  } else {
    die("unknown command or missing arguments");
  }
  curlloop_destroy(loop);
  s3_client_free(c);
  return 0;
}
