/* fuzz_imagefmt.c - magic bytes and header sizes (util/imagefmt.h).
 *
 * The input is a file. Checked:
 * - detection needs at most 16 bytes: the first 16 give the same answer;
 * - a size is only reported for PNG, JPEG and WebP, is positive and within
 *   what the format's header field can hold (PNG's is the IHDR's, read back);
 * - the parser never reads past len (AddressSanitizer, on exact-size copies)
 *   and decides from what it read: when a beginning of the file is enough
 *   for a size, the whole file gives the same size;
 * - the name tables are total, and a format's MIME type maps back to it, in
 *   any case and with parameters;
 * - a PNG's alpha channel (imagefmt_png_alpha) is judged only for a PNG whose
 *   size is read, from IHDR's colour type (one of PNG's five; 4 and 6 have
 *   alpha), and its first 26 bytes give the same answer (an exact-size copy). */
#include <ctype.h>
#include <stdbool.h>

#include "fuzz_check.h"
#include "util/imagefmt.h"

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void check_names(void) {
  static const imagefmt all[] = {IMAGEFMT_UNKNOWN, IMAGEFMT_PNG, IMAGEFMT_JPEG, IMAGEFMT_WEBP,
                                 IMAGEFMT_HEIC};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    imagefmt f = all[i];
    FUZZ_CHECK(imagefmt_mime(f) && imagefmt_name(f) && imagefmt_ext(f));
    if (f == IMAGEFMT_UNKNOWN) continue;
    char mime[64];
    FUZZ_CHECK(imagefmt_from_mime(imagefmt_mime(f)) == f);
    snprintf(mime, sizeof mime, " %s; charset=binary", imagefmt_mime(f));
    for (char *p = mime; *p; p++) *p = (char)toupper((unsigned char)*p);
    FUZZ_CHECK(imagefmt_from_mime(mime) == f);
  }
}

/* The input as a Content-Type: case and parameters never change the answer. */
static void check_mime(const uint8_t *data, size_t size) {
  char *s = fuzz_cstring(data, size);
  imagefmt f = imagefmt_from_mime(s);
  size_t n = strlen(s);
  char *variant = malloc(n + 16);
  FUZZ_CHECK(variant);
  for (size_t i = 0; i <= n; i++) variant[i] = (char)tolower((unsigned char)s[i]);
  FUZZ_CHECK(imagefmt_from_mime(variant) == f);
  if (f != IMAGEFMT_UNKNOWN) {
    memcpy(variant + n, ";q=1", 5);
    FUZZ_CHECK(imagefmt_from_mime(variant) == f);
  }
  free(variant);
  free(s);
}

static void check_size(imagefmt f, const uint8_t *data, size_t len, int w, int h) {
  FUZZ_CHECK(w > 0 && h > 0);
  switch (f) {
  case IMAGEFMT_PNG:
    FUZZ_CHECK(len >= 24);
    FUZZ_CHECK((uint32_t)w == be32(data + 16) && (uint32_t)h == be32(data + 20));
    break;
  case IMAGEFMT_JPEG: FUZZ_CHECK(w <= 0xffff && h <= 0xffff); break;
  case IMAGEFMT_WEBP: FUZZ_CHECK(w <= 1 << 24 && h <= 1 << 24); break;
  case IMAGEFMT_HEIC:
  case IMAGEFMT_UNKNOWN: FUZZ_CHECK(!"a size for a format without a size parser"); break;
  }
}

/* The answer on the first n bytes, read from an exact-size copy. */
static bool dimensions_of_prefix(const uint8_t *data, size_t n, imagefmt *f, int *w, int *h) {
  uint8_t *copy = fuzz_copy(data, n);
  *f = imagefmt_detect(copy, n);
  bool ok = imagefmt_dimensions(copy, n, w, h);
  if (ok) check_size(*f, copy, n, *w, *h);
  bool ok_without_outputs = imagefmt_dimensions(copy, n, NULL, NULL);
  FUZZ_CHECK(ok_without_outputs == ok);
  free(copy);
  return ok;
}

static void check_png_alpha(const uint8_t *data, size_t size) {
  bool alpha = false;
  bool ok = imagefmt_png_alpha(data, size, &alpha);
  if (!ok) return;
  FUZZ_CHECK(imagefmt_detect(data, size) == IMAGEFMT_PNG && size >= 26);
  FUZZ_CHECK(imagefmt_dimensions(data, size, NULL, NULL));
  uint8_t type = data[25];
  FUZZ_CHECK(type == 0 || type == 2 || type == 3 || type == 4 || type == 6);
  FUZZ_CHECK(alpha == (type == 4 || type == 6));
  uint8_t *head = fuzz_copy(data, 26);
  bool head_alpha = !alpha;
  FUZZ_CHECK(imagefmt_png_alpha(head, 26, &head_alpha) && head_alpha == alpha);
  bool cut_alpha = false;
  FUZZ_CHECK(!imagefmt_png_alpha(head, 25, &cut_alpha));
  free(head);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_names();
  check_mime(data, size);

  imagefmt f = imagefmt_detect(data, size);
  if (size > 16) FUZZ_CHECK(imagefmt_detect(data, 16) == f);

  int w = 0, h = 0;
  bool ok = imagefmt_dimensions(data, size, &w, &h);
  if (ok) check_size(f, data, size, w, h);
  check_png_alpha(data, size);

  /* Every short beginning, then a few longer ones. */
  size_t cuts[64 + 3];
  size_t n_cuts = 0;
  for (size_t n = 0; n < size && n < 64; n++) cuts[n_cuts++] = n;
  if (size > 64) {
    cuts[n_cuts++] = size / 2;
    cuts[n_cuts++] = size - 1;
  }
  for (size_t i = 0; i < n_cuts; i++) {
    imagefmt pf;
    int pw = 0, ph = 0;
    if (!dimensions_of_prefix(data, cuts[i], &pf, &pw, &ph)) continue;
    FUZZ_CHECK(ok && pf == f && pw == w && ph == h);
  }
  return 0;
}
