/* fuzz_transcode.c - image conversion through libvips (core/transcode.h).
 *
 * The input is a file claimed to be an image; it is converted to one of the
 * three output formats (chosen by the input's length, so that a seed keeps
 * its meaning) at a quality from 0 to 100, under a 65,536-pixel limit that
 * keeps each run fast and small. Checked:
 * - never a crash, a leak, or a read past the input (an exact-size copy);
 * - a refusal carries no bytes and says why; anything that is not PNG, JPEG
 *   or WebP by its magic bytes is refused as unsupported, and a header over
 *   the pixel limit as too large, whatever follows it;
 * - a success is the wanted format by its own magic bytes, of the input's
 *   header size (width and height), and converts again (to PNG) the same. */
#include <stdbool.h>

#include "core/transcode.h"
#include "fuzz_check.h"
#include "util/imagefmt.h"

#define FUZZ_MAX_PIXELS (1 << 16)

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  FUZZ_CHECK(transcode_startup());
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const imagefmt targets[] = {IMAGEFMT_PNG, IMAGEFMT_JPEG, IMAGEFMT_WEBP};
  imagefmt to = targets[size % 3];
  int quality = (int)(size * 7 % 101);
  uint8_t *in = fuzz_copy(data, size);
  imagefmt from = imagefmt_detect(in, size);
  int w = 0, h = 0;
  bool sized = imagefmt_dimensions(in, size, &w, &h);

  transcode_result r;
  transcode_status st = transcode_image(in, size, to, quality, FUZZ_MAX_PIXELS, &r);
  if (st != TRANSCODE_OK) {
    FUZZ_CHECK(r.data == NULL && r.len == 0 && r.why[0] != '\0');
    if (from != IMAGEFMT_PNG && from != IMAGEFMT_JPEG && from != IMAGEFMT_WEBP)
      FUZZ_CHECK(st == TRANSCODE_UNSUPPORTED);
    if (sized && (int64_t)w * h > FUZZ_MAX_PIXELS) FUZZ_CHECK(st == TRANSCODE_TOO_LARGE);
    free(in);
    return 0;
  }
  FUZZ_CHECK(sized && (int64_t)w * h <= FUZZ_MAX_PIXELS);
  FUZZ_CHECK(r.data && r.len > 0 && imagefmt_detect(r.data, r.len) == to);
  int ow = 0, oh = 0;
  FUZZ_CHECK(imagefmt_dimensions(r.data, r.len, &ow, &oh));
  FUZZ_CHECK(ow == w && oh == h && r.width == w && r.height == h);
  /* What imgate wrote, it reads back. */
  uint8_t *out = fuzz_copy(r.data, r.len);
  transcode_result again;
  FUZZ_CHECK(transcode_image(out, r.len, IMAGEFMT_PNG, 100, FUZZ_MAX_PIXELS, &again) ==
             TRANSCODE_OK);
  FUZZ_CHECK(again.width == w && again.height == h);
  free(again.data);
  free(out);
  free(r.data);
  free(in);
  return 0;
}
