/* transcode.h - one image's bytes turned into another format, through libvips.
 *
 * Bytes in (PNG, JPEG or WebP, told by their magic bytes: whatever anyone
 * called them, and whatever libvips would guess, does not count), bytes out in
 * the wanted format, with no metadata (EXIF, XMP, ICC profiles, text chunks
 * are dropped: an upstream's or a camera's notes are not the client's image).
 *
 * Guards, before libvips decodes anything:
 * - the format must be PNG, JPEG or WebP by its magic bytes, and each is
 *   given to its own loader only (libvips' other loaders, SVG, PDF, matrix
 *   files..., are never reached, and the untrusted ones are blocked anyway);
 * - the pixel size is read from the header (util/imagefmt.c) and an image of
 *   more than max_pixels pixels is refused without being decoded: a few
 *   kilobytes of PNG can claim 60,000 x 60,000 pixels (a decompression bomb);
 *   libvips must then agree with the header's size;
 * - a PNG whose chunks claim more bytes than the file holds is refused
 *   (libpng would allocate a chunk's claimed length before reading it);
 * - a decoder error or truncated data fails the conversion (libvips's
 *   fail_on=error), rather than produce a half-grey picture.
 *
 * Quality (0..100) applies to JPEG (libjpeg's quality; 0 is taken as 1, its
 * lowest) and WebP (lossy, libwebp's quality). PNG is lossless: it is written
 * at zlib level 6 whatever the quality. An image with an alpha channel is
 * flattened onto white for JPEG, which has none. Colour is sRGB, 8 bits per
 * sample (16-bit PNGs, CMYK JPEGs are converted).
 *
 * Threads: transcode_startup() once per process before any conversion (it
 * runs libvips' VIPS_INIT); transcode_image() is then thread-safe. A thread
 * that converted images calls transcode_thread_done() before it ends (libvips
 * keeps per-thread buffers). transcode_shutdown() at exit. */
#ifndef IMGATE_TRANSCODE_H
#define IMGATE_TRANSCODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/imagefmt.h"

/* The default pixel limit: 40 megapixels, twice the largest image an
 * upstream in the catalog makes (a 4K Gemini image at 21:9, ~17 MP). A
 * decoded image costs 3 to 4 bytes a pixel while it is converted. */
#define TRANSCODE_DEFAULT_MAX_PIXELS 40000000LL

typedef enum {
  TRANSCODE_OK = 0,
  TRANSCODE_UNSUPPORTED, /* not PNG, JPEG or WebP by its bytes (or the target is none of them) */
  TRANSCODE_BAD_HEADER,  /* the header is truncated or malformed, or libvips reads another size */
  TRANSCODE_TOO_LARGE,   /* more pixels than max_pixels */
  TRANSCODE_DECODE,      /* the image data cannot be decoded (damaged, truncated) */
  TRANSCODE_ENCODE,      /* encoding in the wanted format failed */
  TRANSCODE_NO_MEMORY,
} transcode_status;

/* "ok", "unsupported", "bad_header", "too_large", "decode", "encode", "no_memory". */
const char *transcode_status_name(transcode_status s);

/* Once per process, before any conversion (idempotent, thread-safe): starts
 * libvips with its own worker threads at 1 per operation (the engine's pool
 * is where images run in parallel) and its operation cache off (memory stays
 * bounded by the images being converted). false when libvips cannot start. */
bool transcode_startup(void);
/* Frees libvips' state; no conversion may run or follow. */
void transcode_shutdown(void);
/* Frees the calling thread's libvips buffers; call before a thread that
 * converted images ends. */
void transcode_thread_done(void);

/* The result of one conversion. */
typedef struct transcode_result {
  uint8_t *data; /* malloc'd (free it); NULL unless TRANSCODE_OK */
  size_t len;
  int width, height;
  char why[160]; /* for people when not OK: what was wrong with the image */
} transcode_result;

/* Converts len bytes at in into `to` (PNG, JPEG or WebP) at quality 0..100.
 * max_pixels <= 0 means TRANSCODE_DEFAULT_MAX_PIXELS. Never reads past len. */
transcode_status transcode_image(const uint8_t *in, size_t len, imagefmt to, int quality,
                                 int64_t max_pixels, transcode_result *out);

/* Whether fmt is one transcode_image() can write. */
bool transcode_can_write(imagefmt fmt);

#endif
