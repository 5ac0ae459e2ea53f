/* imagefmt.h - image formats recognised by their magic bytes, and their pixel size.
 * imgate never trusts a client's or an upstream's Content-Type: it looks at the bytes. */
#ifndef IMGATE_IMAGEFMT_H
#define IMGATE_IMAGEFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
  IMAGEFMT_UNKNOWN = 0,
  IMAGEFMT_PNG,
  IMAGEFMT_JPEG,
  IMAGEFMT_WEBP,
  IMAGEFMT_HEIC, /* ISO BMFF 'ftyp' with a HEIC/HEIF brand (heic, heix, hevc, heim, heis, mif1, msf1) */
} imagefmt;

/* Detects the format from the first bytes (needs at most 16). */
imagefmt imagefmt_detect(const uint8_t *data, size_t len);
/* "image/png", "image/jpeg", "image/webp", "image/heic"; "application/octet-stream" for unknown. */
const char *imagefmt_mime(imagefmt fmt);
/* "png", "jpeg", "webp", "heic", "unknown". */
const char *imagefmt_name(imagefmt fmt);
/* Format from its name as imagefmt_name() gives it ("png", "jpeg", "webp",
 * "heic"; exact, lower case); IMAGEFMT_UNKNOWN for anything else or NULL. */
imagefmt imagefmt_from_name(const char *name);
/* Format from a MIME type such as "image/png" (case-insensitive, parameters ignored). */
imagefmt imagefmt_from_mime(const char *mime);
/* File extension without the dot: "png", "jpg", "webp", "heic", "bin". */
const char *imagefmt_ext(imagefmt fmt);

/* Reads the pixel size from the header of a PNG (IHDR), JPEG (first SOFn
 * marker) or WebP (VP8, VP8L or VP8X). Returns false when the format has no
 * parser here (HEIC) or the header is truncated or malformed. Never reads past len. */
bool imagefmt_dimensions(const uint8_t *data, size_t len, int *width, int *height);

/* Whether a PNG has an alpha channel, from its IHDR colour type: true for
 * greyscale + alpha (4) and RGBA (6) into *alpha, false for the others
 * (a palette or a tRNS chunk gives transparency without an alpha channel,
 * and is not looked for). Returns false when data is not a PNG or its IHDR
 * is truncated or malformed (the colour type must be one of PNG's five).
 * Never reads past len. */
bool imagefmt_png_alpha(const uint8_t *data, size_t len, bool *alpha);

#endif
