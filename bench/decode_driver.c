/* decode_driver.c - one way of reading a big upstream answer, timed, for bench/decode.
 *
 *   build/decode_driver MODE FILE
 *
 * Reads FILE from the page cache in 16 KB pieces (what curl's write callback
 * gets) and does what MODE says, once, then prints one JSON line: the mode,
 * bytes in and out, wall and CPU seconds of the whole run (reading the file
 * included), and the process's peak RSS (VmHWM). One mode per process, so
 * that the peak is that mode's own.
 *
 * Modes on a Gemini answer (FILE is its JSON):
 *   old       the path before Step 7: the body collected in a growing buffer
 *             (curlloop.c's buf_append), parsed whole by jansson, the final
 *             image's string decoded by the old two-pass decoder
 *             (tests/fuzz/base64_reference.h), its header checked;
 *   oneshot   the same with the table-driven base64_decode: the decoder alone
 *             swapped;
 *   new       what the adapter does now: each piece to an answer_reader
 *             (imgscan + the streaming decoder, the image into its own
 *             buffer), then gemini_parse_answer over the rest.
 * Modes on raw base64 (FILE is the image's base64 alone):
 *   raw-old   the old decoder over the whole text (read whole first);
 *   raw-new   base64_stream_feed_to, piece by piece, into a counting sink;
 *   openssl   EVP_DecodeUpdate piece by piece (for comparison only: it takes
 *             one alphabet, and accepts non-zero trailing bits). */
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../tests/fuzz/base64_reference.h"
#include "upstream/adapter.h"
#include "upstream/answer.h"
#include "upstream/gemini.h"
#include "util/base64.h"
#include "util/buf.h"

#define PIECE 16384

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "decode_driver: %s\n", what);
  exit(1);
}

/* Calls piece(ctx, data, len) for each 16 KB piece of the file. */
static size_t read_pieces(const char *path, bool (*piece)(void *, const char *, size_t),
                          void *ctx) {
  FILE *f = fopen(path, "rb");
  if (!f) die("cannot open the input");
  char chunk[PIECE];
  size_t total = 0, n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    total += n;
    if (!piece(ctx, chunk, n)) die("a piece was refused");
  }
  fclose(f);
  return total;
}

static bool collect(void *ctx, const char *data, size_t len) {
  return buf_append(ctx, data, len);
}

/* The final image's string in a parsed Gemini answer, as gemini.c found it before. */
static json_t *final_image_string(json_t *root) {
  json_t *parts = json_object_get(
      json_object_get(json_array_get(json_object_get(root, "candidates"), 0), "content"), "parts");
  json_t *found = NULL;
  size_t i;
  json_t *part;
  json_array_foreach(parts, i, part) {
    if (json_is_true(json_object_get(part, "thought"))) continue;
    json_t *data = json_object_get(json_object_get(part, "inlineData"), "data");
    if (json_is_string(data)) found = data;
  }
  return found;
}

/* old and oneshot: collect, parse whole, decode one string. */
static size_t run_whole(const char *path, bool old, size_t *in) {
  buf body = BUF_INIT;
  *in = read_pieces(path, collect, &body);
  json_error_t err;
  json_t *root = json_loadb(body.data, body.len, 0, &err);
  buf_free(&body); /* as the adapter did once parsed */
  json_t *s = final_image_string(root);
  if (!s) die("no image in the answer");
  uint8_t *bytes = NULL;
  size_t n = 0;
  int rc = old ? ref_base64_decode(json_string_value(s), json_string_length(s),
                                   ADAPTER_MAX_IMAGE_BYTES, &bytes, &n)
               : base64_decode(json_string_value(s), json_string_length(s),
                               ADAPTER_MAX_IMAGE_BYTES, &bytes, &n);
  json_decref(root);
  provider_image img;
  const char *why = NULL;
  if (rc != 0 || adapter_image_from_bytes(bytes, n, &img, &why) != 0) die("the image did not decode");
  free(img.data);
  return n;
}

static size_t run_new(const char *path, size_t *in) {
  answer_reader a;
  gemini_answer_init(&a);
  *in = read_pieces(path, answer_write, &a);
  provider_outcome *o = gemini_parse_answer(200, &a, NULL);
  answer_free(&a);
  if (!o || o->status != PROVIDER_OK || o->n_images != 1) die(o ? o->error_message : "no outcome");
  size_t n = o->images[0].len;
  provider_outcome_free(o);
  return n;
}

static size_t run_raw_old(const char *path, size_t *in) {
  buf text = BUF_INIT;
  *in = read_pieces(path, collect, &text);
  uint8_t *bytes = NULL;
  size_t n = 0;
  if (ref_base64_decode(text.data, text.len, SIZE_MAX, &bytes, &n) != 0) die("not base64");
  buf_free(&text);
  free(bytes);
  return n;
}

typedef struct counted {
  base64_stream s;
  size_t out;
} counted;

static int count_bytes(void *ctx, const uint8_t *bytes, size_t len) {
  counted *c = ctx;
  (void)bytes;
  c->out += len;
  return 0;
}

static bool feed_counted(void *ctx, const char *data, size_t len) {
  counted *c = ctx;
  return base64_stream_feed_to(&c->s, data, len, count_bytes, c) == 0;
}

static size_t run_raw_new(const char *path, size_t *in) {
  counted c = {.out = 0};
  base64_stream_init(&c.s);
  *in = read_pieces(path, feed_counted, &c);
  uint8_t tail[2];
  size_t tail_len = 0;
  if (base64_stream_finish(&c.s, tail, &tail_len) != 0) die("not base64");
  return c.out + tail_len;
}

typedef struct evp {
  EVP_ENCODE_CTX *ctx;
  size_t out;
} evp;

static bool feed_evp(void *ctx, const char *data, size_t len) {
  evp *e = ctx;
  unsigned char out[PIECE];
  int n = 0;
  int rc = EVP_DecodeUpdate(e->ctx, out, &n, (const unsigned char *)data, (int)len);
  e->out += (size_t)n;
  return rc >= 0;
}

static size_t run_openssl(const char *path, size_t *in) {
  evp e = {EVP_ENCODE_CTX_new(), 0};
  if (!e.ctx) die("no EVP context");
  EVP_DecodeInit(e.ctx);
  *in = read_pieces(path, feed_evp, &e);
  unsigned char tail[64];
  int n = 0;
  if (EVP_DecodeFinal(e.ctx, tail, &n) < 0) die("EVP_DecodeFinal refused");
  EVP_ENCODE_CTX_free(e.ctx);
  return e.out + (size_t)n;
}

/* The peak RSS of this process in KB (VmHWM). Not getrusage's ru_maxrss,
 * which a child inherits from its parent across fork and exec: a Python
 * parent that made the input would show through. */
static long peak_rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmHWM: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

int main(int argc, char **argv) {
  if (argc != 3) die("usage: decode_driver old|oneshot|new|raw-old|raw-new|openssl FILE");
  const char *mode = argv[1], *path = argv[2];
  double t0 = now_s();
  size_t in = 0, out = 0;
  if (strcmp(mode, "old") == 0) out = run_whole(path, true, &in);
  else if (strcmp(mode, "oneshot") == 0) out = run_whole(path, false, &in);
  else if (strcmp(mode, "new") == 0) out = run_new(path, &in);
  else if (strcmp(mode, "raw-old") == 0) out = run_raw_old(path, &in);
  else if (strcmp(mode, "raw-new") == 0) out = run_raw_new(path, &in);
  else if (strcmp(mode, "openssl") == 0) out = run_openssl(path, &in);
  else die("unknown mode");
  double wall = now_s() - t0;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
               (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  printf("{\"mode\":\"%s\",\"in_bytes\":%zu,\"out_bytes\":%zu,\"wall_s\":%.6f,\"cpu_s\":%.6f,"
         "\"max_rss_kb\":%ld}\n",
         mode, in, out, wall, cpu, peak_rss_kb());
  return 0;
}
