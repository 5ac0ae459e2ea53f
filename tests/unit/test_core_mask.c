/* test_core_mask.c - core_submit's rules for transparent backgrounds and
 * edit masks, against a real store and blob store (the engine is created but
 * not started: a submit only queues).
 *
 * background: auto | opaque | transparent; transparent only for a model
 * with catalog transparency (GPT Image) and never with output_format jpeg.
 * A mask: text (base64, data: URI; no URL) or uploaded bytes; a PNG by its
 * bytes, with an alpha channel, within limits.max_image_bytes, of the first
 * inline image's size; only with a reference image, only for GPT Image.
 * Stored beside the inputs (inputs/<id>/mask.png), not counted or priced as
 * a reference image; a refused request leaves nothing behind. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "blob/blob.h"
#include "config.h"
#include "core/core.h"
#include "core/pricing.h"
#include "upstream/router.h"
#include "util/base64.h"
#include "util/timeutil.h"

#define REFERENCE_MICROS 1000
#define MAX_IMAGE_BYTES 4096

/* ---- PNGs of a given colour type, made here (zlib) ---------------------- */

static void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

/* Appends a chunk (length, type, data, CRC) at *at. */
static void chunk(uint8_t **at, const char *type, const uint8_t *data, uint32_t len) {
  put32(*at, len);
  memcpy(*at + 4, type, 4);
  if (len) memcpy(*at + 8, data, len);
  uLong crc = crc32(0, (const Bytef *)*at + 4, 4 + len);
  put32(*at + 8 + len, (uint32_t)crc);
  *at += 12 + len;
}

/* A real, decodable w x h PNG of colour type 0 (grey), 2 (RGB), 4 (grey +
 * alpha) or 6 (RGBA), 8 bits, every pixel zero (fully transparent where
 * there is alpha). */
static uint8_t *png_of(int w, int h, int colour_type, size_t *len) {
  int channels = colour_type == 0 ? 1 : colour_type == 2 ? 3 : colour_type == 4 ? 2 : 4;
  size_t raw_len = (size_t)h * (1 + (size_t)w * channels);
  uint8_t *raw = calloc(1, raw_len); /* filter 0, zero pixels */
  uLongf z_len = compressBound(raw_len);
  uint8_t *z = malloc(z_len);
  assert_non_null(raw);
  assert_non_null(z);
  assert_int_equal(compress(z, &z_len, raw, raw_len), Z_OK);
  uint8_t *png = malloc(8 + 25 + 12 + z_len + 12);
  assert_non_null(png);
  static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  memcpy(png, sig, 8);
  uint8_t ihdr[13] = {0};
  put32(ihdr, (uint32_t)w);
  put32(ihdr + 4, (uint32_t)h);
  ihdr[8] = 8;
  ihdr[9] = (uint8_t)colour_type;
  uint8_t *at = png + 8;
  chunk(&at, "IHDR", ihdr, 13);
  chunk(&at, "IDAT", z, (uint32_t)z_len);
  chunk(&at, "IEND", NULL, 0);
  *len = (size_t)(at - png);
  free(raw);
  free(z);
  return png;
}

/* ---- a core on a real store ---------------------------------------------- */

typedef struct fixture {
  char dir[64];
  imgate_config cfg;
  store *st;
  blob *bl;
  engine *eng;
  events *ev;
  core *c;
  store_account acct;
  provider idle; /* serves both models; never called (the engine is not started) */
} fixture;

static int idle_start(provider *p, const provider_request *req, provider_done_fn done,
                      void *ctx) {
  (void)p, (void)req, (void)done, (void)ctx;
  return -1;
}
static void idle_destroy(provider *p) { (void)p; }
static void idle_cancel(provider *p, void *ctx) { (void)p, (void)ctx; }
static const provider_ops idle_ops = {"idle", idle_start, idle_destroy, idle_cancel};

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  char path[128], err[256];
  snprintf(f->dir, sizeof f->dir, "/tmp/imgate-core-mask-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  config_defaults(&f->cfg);
  f->cfg.max_image_bytes = MAX_IMAGE_BYTES;
  config_price *gpt = (config_price *)pricing_find(&f->cfg, "gpt-image-1");
  assert_non_null(gpt);
  gpt->reference_image = REFERENCE_MICROS;
  snprintf(path, sizeof path, "%s/db", f->dir);
  f->st = store_sqlite_open(path, 2, err, sizeof err);
  assert_non_null(f->st);
  snprintf(path, sizeof path, "%s/blobs", f->dir);
  f->bl = blob_fs_open(path, err, sizeof err);
  assert_non_null(f->bl);
  f->idle.ops = &idle_ops;
  snprintf(f->idle.name, sizeof f->idle.name, "idle");
  router_config rc = {.breaker_failures = 100, .breaker_open_ms = 1000};
  router *r = router_create(&rc);
  assert_int_equal(router_add_provider(r, &f->idle, 0), 0);
  assert_int_equal(router_add_route(r, "gpt-image-1", "idle", "gpt-image-1", 1), 0);
  assert_int_equal(router_add_route(r, "nano-banana", "idle", "gemini-2.5-flash-image", 1), 0);
  engine_config ec = {.max_in_flight = 1, .retention_ms = 3600000, .max_input_bytes = 1 << 20};
  f->eng = engine_create(f->st, f->bl, r, NULL, &ec);
  assert_non_null(f->eng);
  f->ev = events_create();
  assert_non_null(f->ev);
  f->c = core_create(&f->cfg, f->st, f->bl, f->eng, f->ev);
  assert_non_null(f->c);
  int64_t id;
  assert_int_equal(f->st->ops->account_open(f->st, "mask@example.com", 1, 100000000, &id),
                   STORE_OK);
  assert_int_equal(f->st->ops->account_get(f->st, id, &f->acct), STORE_OK);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  core_free(f->c);
  engine_destroy(f->eng);
  events_destroy(f->ev);
  f->st->ops->close(f->st);
  f->bl->ops->close(f->bl);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
  assert_int_equal(system(cmd), 0);
  free(f);
  return 0;
}

/* A request of model with prompt "p" and the given uploads (may be none). */
static core_gen_request request(const char *model, const core_image_bytes *uploads, size_t n) {
  return (core_gen_request){.model = model, .prompt = "p", .image_bytes = uploads,
                            .n_image_bytes = n};
}

/* Submits req, expecting a refusal with this code, slug and param. */
static void refused(fixture *f, const core_gen_request *req, err_code code, const char *slug,
                    const char *param) {
  task *t = NULL;
  imgate_error err = {0};
  if (core_submit(f->c, &f->acct, req, NULL, &t, NULL, &err) == 0) {
    task_free(t);
    fail_msg("accepted, want %s", slug);
  }
  assert_null(t);
  assert_int_equal(err.code, code);
  assert_string_equal(err.slug, slug);
  assert_string_equal(err.param, param);
  assert_true(err.message[0] != '\0');
}

/* Submits req, expecting it to be taken; returns the stored task. */
static task *accepted(fixture *f, const core_gen_request *req) {
  task *t = NULL;
  imgate_error err = {0};
  if (core_submit(f->c, &f->acct, req, NULL, &t, NULL, &err) != 0)
    fail_msg("refused: %s (%s)", err.slug, err.message);
  assert_non_null(t);
  return t;
}

static int count_entry(void *ctx, const blob_entry *e) {
  (void)e;
  (*(size_t *)ctx)++;
  return 0;
}

/* Objects in the blob store under prefix. */
static size_t blobs_under(fixture *f, const char *prefix) {
  size_t n = 0;
  assert_int_equal(f->bl->ops->list(f->bl, prefix, count_entry, &n), BLOB_OK);
  return n;
}

/* ---- background ------------------------------------------------------------ */

static void test_background_values_and_models(void **state) {
  fixture *f = *state;
  core_gen_request r = request("gpt-image-1", NULL, 0);
  r.background = "checkered";
  refused(f, &r, ERR_INVALID, "invalid_background", "background");
  r.background = "Transparent"; /* exact, lower case, as OpenAI's */
  refused(f, &r, ERR_INVALID, "invalid_background", "background");
  /* Gemini has no transparency: transparent is refused, the others taken. */
  r = request("nano-banana", NULL, 0);
  r.background = "transparent";
  refused(f, &r, ERR_INVALID, "invalid_background", "background");
  static const char *const fine[] = {"auto", "opaque"};
  for (size_t i = 0; i < 2; i++) {
    r.background = fine[i];
    task *t = accepted(f, &r);
    assert_string_equal(t->background, fine[i]);
    task_free(t);
  }
  r.background = NULL;
  task *t = accepted(f, &r);
  assert_null(t->background); /* not given: stored as absent (auto) */
  task_free(t);
}

/* JPEG has no alpha: transparent needs png or webp (or no format: GPT
 * Image makes PNG). */
static void test_transparent_needs_alpha_format(void **state) {
  fixture *f = *state;
  core_gen_request r = request("gpt-image-1", NULL, 0);
  r.background = "transparent";
  r.output_format = "jpeg";
  refused(f, &r, ERR_INVALID, "invalid_background", "background");
  r.background = "opaque"; /* an opaque JPEG is fine */
  task_free(accepted(f, &r));
  static const char *const formats[] = {"png", "webp", NULL};
  r.background = "transparent";
  for (size_t i = 0; i < 3; i++) {
    r.output_format = formats[i];
    task *t = accepted(f, &r);
    assert_string_equal(t->background, "transparent");
    task *got = NULL;
    assert_int_equal(f->st->ops->task_get(f->st, t->id, &got), STORE_OK);
    assert_string_equal(got->background, "transparent");
    task_free(got);
    task_free(t);
  }
}

/* ---- masks ----------------------------------------------------------------- */

/* An upload taken: the mask is stored byte for byte beside the inputs,
 * apart from them, and not charged as a reference image. */
static void test_mask_upload_stored(void **state) {
  fixture *f = *state;
  size_t img_len, mask_len;
  uint8_t *img = png_of(16, 12, 2, &img_len);
  uint8_t *mask = png_of(16, 12, 6, &mask_len);
  core_image_bytes up = {img, img_len};
  core_gen_request r = request("gpt-image-1", &up, 1);
  r.mask_bytes = (core_image_bytes){mask, mask_len};
  task *t = accepted(f, &r);
  assert_int_equal(t->n_inputs, 1);
  assert_non_null(t->mask);
  char key[128];
  snprintf(key, sizeof key, "inputs/%s/mask.png", t->id);
  assert_string_equal(t->mask->blob_key, key);
  assert_string_equal(t->mask->mime, "image/png");
  assert_int_equal(t->mask->bytes, (int64_t)mask_len);
  uint8_t *stored = NULL;
  size_t stored_len = 0;
  assert_int_equal(f->bl->ops->read(f->bl, key, 1 << 20, &stored, &stored_len), BLOB_OK);
  assert_int_equal(stored_len, mask_len);
  assert_memory_equal(stored, mask, mask_len);
  free(stored);
  /* One reference image priced, not two. */
  assert_int_equal(t->price_refs_micros, REFERENCE_MICROS);
  task *got = NULL;
  assert_int_equal(f->st->ops->task_get(f->st, t->id, &got), STORE_OK);
  assert_int_equal(got->n_inputs, 1);
  assert_non_null(got->mask);
  assert_string_equal(got->mask->blob_key, key);
  task_free(got);
  task_free(t);

  /* Grey + alpha is an alpha channel too. */
  free(mask);
  mask = png_of(16, 12, 4, &mask_len);
  r.mask_bytes = (core_image_bytes){mask, mask_len};
  task_free(accepted(f, &r));

  /* Not counted among the references either: the model's 10 and a mask. */
  core_image_bytes ten[10];
  for (int i = 0; i < 10; i++) ten[i] = up;
  r = request("gpt-image-1", ten, 10);
  r.mask_bytes = (core_image_bytes){mask, mask_len};
  t = accepted(f, &r);
  assert_int_equal(t->n_inputs, 10);
  assert_non_null(t->mask);
  assert_int_equal(t->price_refs_micros, 10 * REFERENCE_MICROS);
  task_free(t);
  free(img);
  free(mask);
}

/* As text: base64 or a data: URI (with an image given by URL, whose size
 * is not known at submit, so not compared); never a URL. */
static void test_mask_text_forms(void **state) {
  fixture *f = *state;
  size_t mask_len;
  uint8_t *mask = png_of(9, 9, 6, &mask_len);
  char *b64 = base64_encode(mask, mask_len);
  assert_non_null(b64);
  char *uri = malloc(strlen(b64) + 32);
  assert_non_null(uri);
  sprintf(uri, "DATA:image/png;BASE64,%s", b64);
  const char *url_image[] = {"https://example.com/photo.png"};
  core_gen_request r = request("gpt-image-1", NULL, 0);
  r.images = url_image;
  r.n_images = 1;
  const char *forms[] = {b64, uri};
  for (size_t i = 0; i < 2; i++) {
    r.mask = forms[i];
    task *t = accepted(f, &r);
    assert_non_null(t->mask);
    uint8_t *stored = NULL;
    size_t stored_len = 0;
    assert_int_equal(f->bl->ops->read(f->bl, t->mask->blob_key, 1 << 20, &stored, &stored_len),
                     BLOB_OK);
    assert_int_equal(stored_len, mask_len);
    assert_memory_equal(stored, mask, mask_len);
    free(stored);
    task_free(t);
  }
  r.mask = "https://example.com/mask.png";
  refused(f, &r, ERR_INVALID, "invalid_mask", "mask");
  r.mask = "ftp://example.com/mask.png";
  refused(f, &r, ERR_INVALID, "invalid_mask", "mask");
  r.mask = "data:image/png,notbase64";
  refused(f, &r, ERR_INVALID, "invalid_mask", "mask");
  r.mask = "%%% not base64 %%%";
  refused(f, &r, ERR_INVALID, "invalid_mask", "mask");
  r.mask = "";
  refused(f, &r, ERR_INVALID, "invalid_mask", "mask");
  free(uri);
  free(b64);
  free(mask);
}

/* Every way a mask is refused, each in a clear 400 (a 413 for its size),
 * and nothing written for any of them, nothing held. */
static void test_mask_refusals(void **state) {
  fixture *f = *state;
  size_t img_len, rgba_len, rgb_len, small_len, big_len;
  uint8_t *img = png_of(16, 12, 2, &img_len);
  uint8_t *rgba = png_of(16, 12, 6, &rgba_len);
  uint8_t *rgb = png_of(16, 12, 2, &rgb_len);
  uint8_t *small = png_of(8, 8, 6, &small_len);
  big_len = MAX_IMAGE_BYTES + 1;
  uint8_t *big = calloc(1, big_len);
  assert_non_null(big);
  memcpy(big, rgba, rgba_len); /* a PNG by its magic bytes, one byte too many */
  static const uint8_t jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0,
                                 0, 1};
  core_image_bytes up = {img, img_len};

  /* No image to apply to. */
  core_gen_request r = request("gpt-image-1", NULL, 0);
  r.mask_bytes = (core_image_bytes){rgba, rgba_len};
  refused(f, &r, ERR_INVALID, "invalid_mask", "mask");
  /* A model without masks. */
  r = request("nano-banana", &up, 1);
  r.mask_bytes = (core_image_bytes){rgba, rgba_len};
  refused(f, &r, ERR_INVALID, "invalid_mask", "mask");
  r = request("gpt-image-1", &up, 1);
  struct {
    const uint8_t *data;
    size_t len;
    err_code code;
    const char *slug;
  } cases[] = {
      {jpeg, sizeof jpeg, ERR_INVALID, "invalid_mask"},          /* not a PNG */
      {(const uint8_t *)"garbage!", 8, ERR_INVALID, "invalid_mask"},
      {(const uint8_t *)"", 0, ERR_INVALID, "invalid_mask"},     /* an empty part */
      {rgba, 20, ERR_INVALID, "invalid_mask"},                   /* header cut short */
      {rgb, rgb_len, ERR_INVALID, "invalid_mask"},               /* no alpha channel */
      {small, small_len, ERR_INVALID, "invalid_mask"},           /* 8x8 for a 16x12 image */
      {big, big_len, ERR_TOO_LARGE, "image_too_large"},          /* over max_image_bytes */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    r.mask_bytes = (core_image_bytes){cases[i].data, cases[i].len};
    refused(f, &r, cases[i].code, cases[i].slug, "mask");
  }
  /* A colour type PNG does not have (the signature and IHDR are enough). */
  uint8_t odd[33];
  assert_true(rgba_len >= sizeof odd);
  memcpy(odd, rgba, sizeof odd);
  odd[25] = 5;
  r.mask_bytes = (core_image_bytes){odd, sizeof odd};
  refused(f, &r, ERR_INVALID, "invalid_mask", "mask");

  assert_int_equal(blobs_under(f, "inputs/"), 0);
  store_account a;
  assert_int_equal(f->st->ops->account_get(f->st, f->acct.id, &a), STORE_OK);
  assert_int_equal(a.held_micros, 0);
  free(img);
  free(rgba);
  free(rgb);
  free(small);
  free(big);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_background_values_and_models, setup, teardown),
      cmocka_unit_test_setup_teardown(test_transparent_needs_alpha_format, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mask_upload_stored, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mask_text_forms, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mask_refusals, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
