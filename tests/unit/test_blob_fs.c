/* test_blob_fs.c - the folder blob backend: round trips, key rules, limits, atomic puts,
 * concurrency. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blob/blob.h"

typedef struct fixture {
  char dir[64];
  char root[128]; /* dir/store/root: created by blob_fs_open, mkdir -p style */
  blob *b;
} fixture;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f) return -1;
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-blobfs-XXXXXX");
  if (!mkdtemp(f->dir)) {
    free(f);
    return -1;
  }
  snprintf(f->root, sizeof f->root, "%s/store/root", f->dir);
  char err[256];
  f->b = blob_fs_open(f->root, err, sizeof err);
  if (!f->b) {
    fprintf(stderr, "blob_fs_open: %s\n", err);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  f->b->ops->close(f->b);
  int rc = nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  free(f);
  return rc;
}

static int put_str(blob *b, const char *key, const char *text) {
  return b->ops->put(b, key, text, strlen(text), "text/plain");
}

/* Reads key and checks it holds exactly text. */
static void expect_content(blob *b, const char *key, const char *text) {
  uint8_t *data = NULL;
  size_t len = 0;
  assert_int_equal(b->ops->read(b, key, 1 << 20, &data, &len), BLOB_OK);
  assert_non_null(data);
  assert_int_equal(len, strlen(text));
  if (len) assert_memory_equal(data, text, len);
  free(data);
}

static void test_root_created(void **state) {
  fixture *f = *state;
  struct stat st;
  assert_int_equal(stat(f->root, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  assert_string_equal(f->b->ops->name, "fs");
  /* Opening an existing folder again works too. */
  char err[256];
  blob *again = blob_fs_open(f->root, err, sizeof err);
  assert_non_null(again);
  again->ops->close(again);
}

static void test_open_fails_on_file_root(void **state) {
  fixture *f = *state;
  char path[192];
  snprintf(path, sizeof path, "%s/plainfile", f->dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
  assert_true(fd >= 0);
  close(fd);
  char err[256] = "";
  assert_null(blob_fs_open(path, err, sizeof err));
  assert_true(strlen(err) > 0);
  snprintf(path, sizeof path, "%s/plainfile/below", f->dir);
  err[0] = '\0';
  assert_null(blob_fs_open(path, err, sizeof err));
  assert_true(strlen(err) > 0);
  assert_null(blob_fs_open("", err, sizeof err));
}

static void test_round_trip(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  assert_int_equal(put_str(b, "img/abc.png", "hello blob"), BLOB_OK);

  blob_object o;
  assert_int_equal(b->ops->open(b, "img/abc.png", &o), BLOB_OK);
  assert_true(o.fd >= 0);
  assert_null(o.data);
  assert_int_equal(o.size, 10);
  char buf[32];
  assert_int_equal(pread(o.fd, buf, sizeof buf, 0), 10);
  assert_memory_equal(buf, "hello blob", 10);
  assert_true(fcntl(o.fd, F_GETFD) & FD_CLOEXEC);
  int fd = o.fd;
  blob_object_release(&o);
  assert_int_equal(o.fd, -1);
  assert_int_equal(fcntl(fd, F_GETFD), -1); /* the fd really was closed */

  expect_content(b, "img/abc.png", "hello blob");
  assert_int_equal(b->ops->remove(b, "img/abc.png"), BLOB_OK);
  assert_int_equal(b->ops->open(b, "img/abc.png", &o), BLOB_NOT_FOUND);
  assert_int_equal(o.fd, -1);
  assert_int_equal(b->ops->remove(b, "img/abc.png"), BLOB_NOT_FOUND);
}

static void test_empty_object(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  assert_int_equal(b->ops->put(b, "empty", NULL, 0, NULL), BLOB_OK);
  uint8_t *data = NULL;
  size_t len = 1;
  assert_int_equal(b->ops->read(b, "empty", 0, &data, &len), BLOB_OK);
  assert_non_null(data);
  assert_int_equal(len, 0);
  free(data);
  blob_object o;
  assert_int_equal(b->ops->open(b, "empty", &o), BLOB_OK);
  assert_int_equal(o.size, 0);
  blob_object_release(&o);
}

static void test_release_memory_object(void **state) {
  (void)state;
  blob_object o = {.fd = -1, .data = malloc(16), .size = 16};
  assert_non_null(o.data);
  blob_object_release(&o);
  assert_null(o.data);
  assert_int_equal(o.size, 0);
  blob_object_release(&o); /* twice is harmless */
  blob_object_release(NULL);
}

static void test_overwrite(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  assert_int_equal(put_str(b, "k.txt", "a much longer first version"), BLOB_OK);
  assert_int_equal(put_str(b, "k.txt", "short"), BLOB_OK);
  expect_content(b, "k.txt", "short");
}

static void test_nested_keys_create_folders(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  assert_int_equal(put_str(b, "a/b/c/d/e.bin", "deep"), BLOB_OK);
  assert_int_equal(put_str(b, "a/b/x.bin", "shallow"), BLOB_OK);
  char path[256];
  struct stat st;
  snprintf(path, sizeof path, "%s/a/b/c/d", f->root);
  assert_int_equal(stat(path, &st), 0);
  assert_true(S_ISDIR(st.st_mode));
  snprintf(path, sizeof path, "%s/a/b/c/d/e.bin", f->root);
  assert_int_equal(stat(path, &st), 0);
  assert_true(S_ISREG(st.st_mode));
  expect_content(b, "a/b/c/d/e.bin", "deep");
  expect_content(b, "a/b/x.bin", "shallow");
  /* A folder is not an object, and a key cannot pass through a file. */
  blob_object o;
  assert_int_equal(b->ops->open(b, "a/b", &o), BLOB_NOT_FOUND);
  assert_int_equal(b->ops->remove(b, "a/b"), BLOB_NOT_FOUND);
  assert_int_equal(b->ops->open(b, "a/b/x.bin/y", &o), BLOB_NOT_FOUND);
  assert_int_equal(put_str(b, "a/b/x.bin/y", "nope"), BLOB_ERROR);
}

static const char *const bad_keys[] = {
    "", "/abs", "abs/", "a//b", "..", "../x", "a/../b", "a/..", ".", "./a", "a/./b",
    "a b", "a\\b", "a:b", "a~b", "caf\xc3\xa9", "a\nb", "a?b", "a*b",
};

static void test_key_rules(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
    if (blob_key_valid(bad_keys[i])) print_error("accepted key \"%s\"\n", bad_keys[i]);
    assert_false(blob_key_valid(bad_keys[i]));
  }
  assert_false(blob_key_valid(NULL));
  assert_true(blob_key_valid("a"));
  assert_true(blob_key_valid("results/2024/01/0190b-abc_D.png"));
  assert_true(blob_key_valid("...")); /* only "." and ".." are special */
  assert_true(blob_key_valid(".hidden/..x/x.."));
  assert_true(blob_key_valid("-_.-"));

  char key[600];
  memset(key, 'k', sizeof key);
  key[512] = '\0';
  assert_true(blob_key_valid(key));
  key[512] = 'k';
  key[513] = '\0';
  assert_false(blob_key_valid(key));
}

static void test_invalid_keys_rejected_by_every_op(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  char long_key[514];
  memset(long_key, 'k', sizeof long_key - 1);
  long_key[sizeof long_key - 1] = '\0';
  const char *keys[] = {"../escape", "/etc/passwd", "a//b", "a b", long_key, ""};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    const char *k = keys[i];
    assert_int_equal(put_str(b, k, "x"), BLOB_INVALID_KEY);
    blob_object o;
    assert_int_equal(b->ops->open(b, k, &o), BLOB_INVALID_KEY);
    assert_int_equal(o.fd, -1);
    uint8_t *data = NULL;
    size_t len = 0;
    assert_int_equal(b->ops->read(b, k, 100, &data, &len), BLOB_INVALID_KEY);
    assert_null(data);
    assert_int_equal(b->ops->remove(b, k), BLOB_INVALID_KEY);
  }
  /* Nothing escaped the root. */
  char path[128];
  snprintf(path, sizeof path, "%s/store/escape", f->dir);
  assert_int_equal(access(path, F_OK), -1);
}

static void test_longest_key_works(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  /* 512 characters in segments short enough for the filesystem's NAME_MAX. */
  char key[513];
  for (size_t i = 0; i < 512; i++) key[i] = (i % 100 == 99) ? '/' : 'k';
  key[512] = '\0';
  assert_true(blob_key_valid(key));
  assert_int_equal(put_str(b, key, "long"), BLOB_OK);
  expect_content(b, key, "long");
}

static void test_read_max_len(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  assert_int_equal(put_str(b, "ten", "0123456789"), BLOB_OK);
  uint8_t *data = NULL;
  size_t len = 0;
  assert_int_equal(b->ops->read(b, "ten", 10, &data, &len), BLOB_OK);
  assert_int_equal(len, 10);
  free(data);
  data = NULL;
  assert_int_equal(b->ops->read(b, "ten", 9, &data, &len), BLOB_ERROR);
  assert_null(data);
  assert_int_equal(len, 0);
}

static void test_missing(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  blob_object o;
  assert_int_equal(b->ops->open(b, "nope.png", &o), BLOB_NOT_FOUND);
  assert_int_equal(b->ops->open(b, "no/such/folder.png", &o), BLOB_NOT_FOUND);
  uint8_t *data = NULL;
  size_t len = 0;
  assert_int_equal(b->ops->read(b, "nope.png", 100, &data, &len), BLOB_NOT_FOUND);
  assert_null(data);
  assert_int_equal(b->ops->remove(b, "nope.png"), BLOB_NOT_FOUND);
  assert_int_equal(b->ops->remove(b, "no/such/folder.png"), BLOB_NOT_FOUND);
}

/* Counts regular files under path, failing on any temporary file. */
static size_t count_files(const char *path) {
  DIR *d = opendir(path);
  assert_non_null(d);
  size_t n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    if (strchr(de->d_name, '~')) print_error("temporary file left: %s/%s\n", path, de->d_name);
    assert_null(strchr(de->d_name, '~'));
    char child[1024];
    snprintf(child, sizeof child, "%s/%s", path, de->d_name);
    struct stat st;
    assert_int_equal(lstat(child, &st), 0);
    if (S_ISDIR(st.st_mode)) n += count_files(child);
    else n++;
  }
  closedir(d);
  return n;
}

static void test_no_temp_files_left(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  char key[64];
  for (int i = 0; i < 20; i++) {
    snprintf(key, sizeof key, "t/%d/obj-%d.bin", i % 3, i);
    assert_int_equal(put_str(b, key, "payload"), BLOB_OK);
    assert_int_equal(put_str(b, key, "payload, again"), BLOB_OK);
  }
  /* A failed put cleans up after itself too. */
  assert_int_equal(put_str(b, "t/0", "0 is a folder"), BLOB_ERROR);
  assert_int_equal(count_files(f->root), 20);
}

/* ---- streamed puts ---------------------------------------------------------------------- */

/* Pieces of every size arrive in order; the object appears only at commit,
 * whole, with its size counted on the way. */
static void test_stream_round_trip(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  enum { LEN = 300000 };
  uint8_t *data = malloc(LEN);
  assert_non_null(data);
  for (size_t i = 0; i < LEN; i++) data[i] = (uint8_t)(i * 7 + (i >> 9));
  blob_stream *s;
  assert_int_equal(blob_stream_begin(b, "results/t1/1-0.png", "image/png", &s), BLOB_OK);
  size_t off = 0, step = 1;
  while (off < LEN) {
    size_t n = step < LEN - off ? step : LEN - off;
    assert_int_equal(blob_stream_write(s, data + off, n), BLOB_OK);
    off += n;
    step = step * 3 + 1; /* 1, 4, 13, 40 ... bytes: every kind of piece */
    blob_object o;
    assert_int_equal(b->ops->open(b, "results/t1/1-0.png", &o), BLOB_NOT_FOUND);
  }
  blob_stream_info info;
  assert_int_equal(blob_stream_commit(s, &info), BLOB_OK);
  assert_int_equal(info.size, LEN);
  uint8_t *got = NULL;
  size_t len = 0;
  assert_int_equal(b->ops->read(b, "results/t1/1-0.png", LEN, &got, &len), BLOB_OK);
  assert_int_equal(len, LEN);
  assert_memory_equal(got, data, LEN);
  free(got);
  free(data);
  assert_int_equal(count_files(f->root), 1); /* no temporary left beside it */
}

/* An abort leaves nothing; a streamed put over an existing object leaves the
 * old one readable until its commit. */
static void test_stream_abort_and_replace(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  blob_stream *s;
  assert_int_equal(blob_stream_begin(b, "a/gone.bin", NULL, &s), BLOB_OK);
  assert_int_equal(blob_stream_write(s, "half", 4), BLOB_OK);
  blob_stream_abort(s);
  blob_object o;
  assert_int_equal(b->ops->open(b, "a/gone.bin", &o), BLOB_NOT_FOUND);
  assert_int_equal(count_files(f->root), 0);

  assert_int_equal(put_str(b, "a/kept.txt", "old"), BLOB_OK);
  assert_int_equal(blob_stream_begin(b, "a/kept.txt", "text/plain", &s), BLOB_OK);
  assert_int_equal(blob_stream_write(s, "new ", 4), BLOB_OK);
  expect_content(b, "a/kept.txt", "old");
  assert_int_equal(blob_stream_write(s, "text", 4), BLOB_OK);
  expect_content(b, "a/kept.txt", "old");
  assert_int_equal(blob_stream_commit(s, NULL), BLOB_OK);
  expect_content(b, "a/kept.txt", "new text");
  assert_int_equal(count_files(f->root), 1);
}

/* Bad keys are refused at begin; a commit that cannot land (its name is a
 * folder) fails and leaves no temporary behind. */
static void test_stream_refusals(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  blob_stream *s = (blob_stream *)1;
  assert_int_equal(blob_stream_begin(b, "../escape", NULL, &s), BLOB_INVALID_KEY);
  assert_null(s);
  assert_int_equal(blob_stream_begin(b, "", NULL, &s), BLOB_INVALID_KEY);
  assert_int_equal(put_str(b, "d/inner/x.txt", "x"), BLOB_OK);
  assert_int_equal(blob_stream_begin(b, "d/inner", NULL, &s), BLOB_OK);
  assert_int_equal(blob_stream_write(s, "payload", 7), BLOB_OK);
  assert_int_equal(blob_stream_commit(s, NULL), BLOB_ERROR);
  assert_int_equal(count_files(f->root), 1);
  expect_content(b, "d/inner/x.txt", "x");
}

/* Streamed puts of many objects at once, interleaved on one thread (as the
 * pieces of several upstream answers arrive on the curl loop). */
static void test_stream_interleaved(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  enum { N = 6 };
  blob_stream *s[N];
  char key[64];
  for (int i = 0; i < N; i++) {
    snprintf(key, sizeof key, "results/t%d/1-0.bin", i % 3);
    if (i >= 3) snprintf(key, sizeof key, "results/t%d/1-1.bin", i % 3);
    assert_int_equal(blob_stream_begin(b, key, NULL, &s[i]), BLOB_OK);
  }
  for (int round = 0; round < 50; round++)
    for (int i = 0; i < N; i++) {
      char piece[32];
      int n = snprintf(piece, sizeof piece, "%d:%d;", i, round);
      assert_int_equal(blob_stream_write(s[i], piece, (size_t)n), BLOB_OK);
    }
  for (int i = 0; i < N; i++) {
    if (i == 4) {
      blob_stream_abort(s[i]);
      continue;
    }
    assert_int_equal(blob_stream_commit(s[i], NULL), BLOB_OK);
  }
  assert_int_equal(count_files(f->root), N - 1);
  uint8_t *got = NULL;
  size_t len = 0;
  assert_int_equal(b->ops->read(b, "results/t2/1-0.bin", 1 << 20, &got, &len), BLOB_OK);
  assert_true(len > 3 && memcmp(got, "2:0;2:1;", 8) == 0);
  free(got);
}

#define N_THREADS 8
#define PUTS_PER_THREAD 40

typedef struct worker {
  blob *b;
  int id;
  int failures;
} worker;

static void worker_key(char *key, size_t size, int id, int i) {
  /* Every thread writes into the same fresh folders, so they race to create them. */
  snprintf(key, size, "race/%d/w%d-%d.txt", i % 4, id, i);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  char key[64], text[64];
  for (int i = 0; i < PUTS_PER_THREAD; i++) {
    worker_key(key, sizeof key, w->id, i);
    snprintf(text, sizeof text, "thread %d object %d", w->id, i);
    if (put_str(w->b, key, text) != BLOB_OK) w->failures++;
  }
  return NULL;
}

static void test_concurrent_puts(void **state) {
  fixture *f = *state;
  pthread_t threads[N_THREADS];
  worker workers[N_THREADS];
  for (int t = 0; t < N_THREADS; t++) {
    workers[t] = (worker){.b = f->b, .id = t};
    assert_int_equal(pthread_create(&threads[t], NULL, worker_main, &workers[t]), 0);
  }
  for (int t = 0; t < N_THREADS; t++) {
    assert_int_equal(pthread_join(threads[t], NULL), 0);
    assert_int_equal(workers[t].failures, 0);
  }
  char key[64], text[64];
  for (int t = 0; t < N_THREADS; t++) {
    for (int i = 0; i < PUTS_PER_THREAD; i++) {
      worker_key(key, sizeof key, t, i);
      snprintf(text, sizeof text, "thread %d object %d", t, i);
      expect_content(f->b, key, text);
    }
  }
  assert_int_equal(count_files(f->root), N_THREADS * PUTS_PER_THREAD);
}

/* ---- listing ---------------------------------------------------------------- */

#define MAX_LISTED 64

typedef struct listed {
  size_t n;
  struct {
    char key[600];
    uint64_t size;
    int64_t mtime_ms;
    bool temporary;
  } e[MAX_LISTED];
  int stop_after;  /* > 0: return 7 once this many were seen */
  bool remove_each; /* remove every entry as it is reported */
  blob *b;
} listed;

static int collect_entry(void *ctx, const blob_entry *e) {
  listed *l = ctx;
  assert_true(l->n < MAX_LISTED);
  snprintf(l->e[l->n].key, sizeof l->e[l->n].key, "%s", e->key);
  l->e[l->n].size = e->size;
  l->e[l->n].mtime_ms = e->mtime_ms;
  l->e[l->n].temporary = e->temporary;
  l->n++;
  if (l->remove_each) {
    blob *b = l->b;
    int rc = e->temporary ? b->ops->remove_temp(b, e->key) : b->ops->remove(b, e->key);
    assert_int_equal(rc, BLOB_OK);
  }
  return (l->stop_after > 0 && (int)l->n >= l->stop_after) ? 7 : 0;
}

/* The index of key in the listing, or -1. */
static int find_listed(const listed *l, const char *key) {
  for (size_t i = 0; i < l->n; i++)
    if (strcmp(l->e[i].key, key) == 0) return (int)i;
  return -1;
}

/* Writes a file straight into the store's folder (what a crash mid-put leaves). */
static void write_raw(fixture *f, const char *rel, const char *text) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", f->root, rel);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
}

static void set_mtime(fixture *f, const char *rel, time_t sec) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", f->root, rel);
  struct timespec ts[2] = {{.tv_sec = sec, .tv_nsec = 250000000},
                           {.tv_sec = sec, .tv_nsec = 250000000}};
  assert_int_equal(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static void test_list_nested_and_temporary(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  assert_int_equal(put_str(b, "results/a/1-0.png", "one"), BLOB_OK);
  assert_int_equal(put_str(b, "results/a/3-0.png", "three!"), BLOB_OK);
  assert_int_equal(put_str(b, "results/b/deep/x.png", "x"), BLOB_OK);
  assert_int_equal(put_str(b, "results/ab/z.png", "z"), BLOB_OK);
  assert_int_equal(put_str(b, "inputs/c/0.png", "in"), BLOB_OK);
  assert_int_equal(put_str(b, "top.txt", "top"), BLOB_OK);
  write_raw(f, "results/a/.~put-0123456789abcdef", "half"); /* a put a crash cut short */
  write_raw(f, "results/a/bad name.png", "not a key"); /* not written through the store */
  write_raw(f, "results/a/.~put-bad name", "not ours"); /* no temporary name fs makes */
  set_mtime(f, "results/a/3-0.png", 1700000000);

  listed *l = calloc(1, sizeof *l);
  assert_int_equal(b->ops->list(b, "", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 7);
  int i = find_listed(l, "results/a/3-0.png");
  assert_true(i >= 0);
  assert_int_equal(l->e[i].size, 6);
  assert_int_equal(l->e[i].mtime_ms, 1700000000250LL);
  assert_false(l->e[i].temporary);
  i = find_listed(l, "results/a/.~put-0123456789abcdef");
  assert_true(i >= 0);
  assert_true(l->e[i].temporary);
  assert_int_equal(l->e[i].size, 4);
  assert_true(find_listed(l, "results/b/deep/x.png") >= 0);
  assert_true(find_listed(l, "top.txt") >= 0);
  assert_int_equal(find_listed(l, "results/a/bad name.png"), -1);
  assert_int_equal(find_listed(l, "results/a/.~put-bad name"), -1);
  /* A folder's entries come one after another. */
  int first = -1, last = -1;
  for (size_t k = 0; k < l->n; k++)
    if (strncmp(l->e[k].key, "results/a/", 10) == 0) {
      if (first < 0) first = (int)k;
      last = (int)k;
    }
  assert_int_equal(last - first, 2);

  /* A prefix selects by the start of the key, folders or not. */
  memset(l, 0, sizeof *l);
  assert_int_equal(b->ops->list(b, "results/", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 5);
  assert_int_equal(find_listed(l, "inputs/c/0.png"), -1);
  memset(l, 0, sizeof *l);
  assert_int_equal(b->ops->list(b, "results/a", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 4); /* results/a/... and results/ab/z.png */
  assert_true(find_listed(l, "results/ab/z.png") >= 0);
  memset(l, 0, sizeof *l);
  assert_int_equal(b->ops->list(b, "results/a/", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 3);
  memset(l, 0, sizeof *l);
  assert_int_equal(b->ops->list(b, "inputs/c/0.png", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 1);
  memset(l, 0, sizeof *l);
  assert_int_equal(b->ops->list(b, "nothing/here/", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 0);
  assert_int_equal(b->ops->list(b, "../", collect_entry, l), BLOB_INVALID_KEY);
  free(l);
}

static void test_list_does_not_follow_symlinks(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  char outside[192], target[256], link[256];
  snprintf(outside, sizeof outside, "%s/outside", f->dir);
  assert_int_equal(mkdir(outside, 0755), 0);
  snprintf(target, sizeof target, "%s/secret.png", outside);
  int fd = open(target, O_WRONLY | O_CREAT, 0644);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(put_str(b, "results/t/1-0.png", "real"), BLOB_OK);
  snprintf(link, sizeof link, "%s/results/dirlink", f->root);
  assert_int_equal(symlink(outside, link), 0);
  snprintf(link, sizeof link, "%s/results/t/filelink.png", f->root);
  assert_int_equal(symlink(target, link), 0);
  /* A prefix whose folder is a symlink is not entered either: not a folder, nothing in it. */
  listed *l = calloc(1, sizeof *l);
  assert_int_equal(b->ops->list(b, "results/dirlink/", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 0);
  assert_int_equal(b->ops->list(b, "", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 1);
  assert_string_equal(l->e[0].key, "results/t/1-0.png");
  /* Removing everything listed leaves the outside untouched. */
  memset(l, 0, sizeof *l);
  l->remove_each = true;
  l->b = b;
  assert_int_equal(b->ops->list(b, "", collect_entry, l), BLOB_OK);
  assert_int_equal(access(target, F_OK), 0);
  free(l);
}

static void test_list_stops_and_removes(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  char key[64];
  for (int i = 0; i < 6; i++) {
    snprintf(key, sizeof key, "results/task%d/1-0.png", i);
    assert_int_equal(put_str(b, key, "img"), BLOB_OK);
  }
  write_raw(f, "results/task0/.~put-00aa", "half");
  listed *l = calloc(1, sizeof *l);
  l->stop_after = 2;
  assert_int_equal(b->ops->list(b, "results/", collect_entry, l), 7); /* the callback's value */
  assert_int_equal(l->n, 2);

  /* The callback may remove what it is given; emptied folders go, the top stays. */
  memset(l, 0, sizeof *l);
  l->remove_each = true;
  l->b = b;
  assert_int_equal(b->ops->list(b, "results/", collect_entry, l), BLOB_OK);
  assert_int_equal(l->n, 7);
  char path[256];
  snprintf(path, sizeof path, "%s/results", f->root);
  DIR *d = opendir(path);
  assert_non_null(d);
  struct dirent *de;
  size_t left = 0;
  while ((de = readdir(d)) != NULL)
    if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) left++;
  closedir(d);
  assert_int_equal(left, 0);
  free(l);
}

static void test_remove_temp_only_removes_temporaries(void **state) {
  fixture *f = *state;
  blob *b = f->b;
  assert_int_equal(put_str(b, "results/t/1-0.png", "real"), BLOB_OK);
  write_raw(f, "results/t/.~put-0123abcd", "half");
  assert_int_equal(b->ops->remove_temp(b, "results/t/1-0.png"), BLOB_INVALID_KEY);
  assert_int_equal(b->ops->remove_temp(b, "results/t/.~put-"), BLOB_INVALID_KEY);
  assert_int_equal(b->ops->remove_temp(b, "../t/.~put-0123abcd"), BLOB_INVALID_KEY);
  assert_int_equal(b->ops->remove_temp(b, "results//.~put-0123abcd"), BLOB_INVALID_KEY);
  /* The key rules still keep temporaries away from the object operations. */
  assert_int_equal(b->ops->remove(b, "results/t/.~put-0123abcd"), BLOB_INVALID_KEY);
  assert_int_equal(b->ops->remove_temp(b, "results/t/.~put-0123abcd"), BLOB_OK);
  assert_int_equal(b->ops->remove_temp(b, "results/t/.~put-0123abcd"), BLOB_NOT_FOUND);
  expect_content(b, "results/t/1-0.png", "real");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_root_created, setup, teardown),
      cmocka_unit_test_setup_teardown(test_open_fails_on_file_root, setup, teardown),
      cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_empty_object, setup, teardown),
      cmocka_unit_test(test_release_memory_object),
      cmocka_unit_test_setup_teardown(test_overwrite, setup, teardown),
      cmocka_unit_test_setup_teardown(test_nested_keys_create_folders, setup, teardown),
      cmocka_unit_test(test_key_rules),
      cmocka_unit_test_setup_teardown(test_invalid_keys_rejected_by_every_op, setup, teardown),
      cmocka_unit_test_setup_teardown(test_longest_key_works, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_max_len, setup, teardown),
      cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_temp_files_left, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_abort_and_replace, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_refusals, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_interleaved, setup, teardown),
      cmocka_unit_test_setup_teardown(test_concurrent_puts, setup, teardown),
      cmocka_unit_test_setup_teardown(test_list_nested_and_temporary, setup, teardown),
      cmocka_unit_test_setup_teardown(test_list_does_not_follow_symlinks, setup, teardown),
      cmocka_unit_test_setup_teardown(test_list_stops_and_removes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_remove_temp_only_removes_temporaries, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
