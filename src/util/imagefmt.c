/* imagefmt.c - format detection by magic bytes and header parsing for pixel size.
 *
 * Input comes from clients and upstreams, so every read is checked against len
 * before it happens and any surprise means "don't know" (false), never a guess. */
#include "util/imagefmt.h"

#include <string.h>
#include <strings.h>

static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

/* Major brands of HEIF-family files that are HEIC/HEIF still images or
 * sequences. AVIF shares the container (and often lists mif1 as a compatible
 * brand) but is a different codec, so only the major brand counts. */
static const char *const heic_brands[] = {"heic", "heix", "hevc", "hevx", "heim",
                                          "heis", "mif1", "msf1", NULL};

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t be32(const uint8_t *p) { return be16(p) << 16 | be16(p + 2); }
static uint32_t le16(const uint8_t *p) { return (uint32_t)p[1] << 8 | p[0]; }
static uint32_t le24(const uint8_t *p) { return (uint32_t)p[2] << 16 | le16(p); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[3] << 24 | le24(p); }

static bool is_webp(const uint8_t *d, size_t len) {
  return len >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0;
}

static bool is_heic(const uint8_t *d, size_t len) {
  if (len < 12 || memcmp(d + 4, "ftyp", 4) != 0) return false;
  for (const char *const *b = heic_brands; *b; b++)
    if (memcmp(d + 8, *b, 4) == 0) return true;
  return false;
}

imagefmt imagefmt_detect(const uint8_t *data, size_t len) {
  if (!data) return IMAGEFMT_UNKNOWN;
  if (len >= sizeof png_sig && memcmp(data, png_sig, sizeof png_sig) == 0) return IMAGEFMT_PNG;
  if (len >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff) return IMAGEFMT_JPEG;
  if (is_webp(data, len)) return IMAGEFMT_WEBP;
  if (is_heic(data, len)) return IMAGEFMT_HEIC;
  return IMAGEFMT_UNKNOWN;
}

const char *imagefmt_mime(imagefmt fmt) {
  switch (fmt) {
  case IMAGEFMT_PNG: return "image/png";
  case IMAGEFMT_JPEG: return "image/jpeg";
  case IMAGEFMT_WEBP: return "image/webp";
  case IMAGEFMT_HEIC: return "image/heic";
  case IMAGEFMT_UNKNOWN: break;
  }
  return "application/octet-stream";
}

const char *imagefmt_name(imagefmt fmt) {
  switch (fmt) {
  case IMAGEFMT_PNG: return "png";
  case IMAGEFMT_JPEG: return "jpeg";
  case IMAGEFMT_WEBP: return "webp";
  case IMAGEFMT_HEIC: return "heic";
  case IMAGEFMT_UNKNOWN: break;
  }
  return "unknown";
}

const char *imagefmt_ext(imagefmt fmt) {
  switch (fmt) {
  case IMAGEFMT_PNG: return "png";
  case IMAGEFMT_JPEG: return "jpg";
  case IMAGEFMT_WEBP: return "webp";
  case IMAGEFMT_HEIC: return "heic";
  case IMAGEFMT_UNKNOWN: break;
  }
  return "bin";
}

imagefmt imagefmt_from_name(const char *name) {
  static const imagefmt named[] = {IMAGEFMT_PNG, IMAGEFMT_JPEG, IMAGEFMT_WEBP, IMAGEFMT_HEIC};
  for (size_t i = 0; name && i < sizeof named / sizeof named[0]; i++)
    if (strcmp(name, imagefmt_name(named[i])) == 0) return named[i];
  return IMAGEFMT_UNKNOWN;
}

imagefmt imagefmt_from_mime(const char *mime) {
  static const struct {
    const char *type;
    imagefmt fmt;
  } types[] = {
      {"image/png", IMAGEFMT_PNG},   {"image/jpeg", IMAGEFMT_JPEG},
      {"image/jpg", IMAGEFMT_JPEG},  {"image/pjpeg", IMAGEFMT_JPEG},
      {"image/webp", IMAGEFMT_WEBP}, {"image/heic", IMAGEFMT_HEIC},
      {"image/heif", IMAGEFMT_HEIC}, {"image/heic-sequence", IMAGEFMT_HEIC},
      {"image/heif-sequence", IMAGEFMT_HEIC},
  };
  if (!mime) return IMAGEFMT_UNKNOWN;
  while (*mime == ' ' || *mime == '\t') mime++;
  /* The type ends at parameters (";charset=...") or trailing blanks. */
  size_t n = strcspn(mime, "; \t");
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
    if (strlen(types[i].type) == n && strncasecmp(types[i].type, mime, n) == 0)
      return types[i].fmt;
  return IMAGEFMT_UNKNOWN;
}

/* Sizes larger than an int can hold, or zero, are malformed for our purposes. */
static bool put_size(uint32_t w, uint32_t h, int *width, int *height) {
  if (w == 0 || h == 0 || w > 0x7fffffffu || h > 0x7fffffffu) return false;
  if (width) *width = (int)w;
  if (height) *height = (int)h;
  return true;
}

/* PNG: the signature is followed by the IHDR chunk: length 13, "IHDR", width, height. */
static bool png_dimensions(const uint8_t *d, size_t len, int *w, int *h) {
  if (len < 24) return false;
  if (be32(d + 8) != 13 || memcmp(d + 12, "IHDR", 4) != 0) return false;
  return put_size(be32(d + 16), be32(d + 20), w, h);
}

bool imagefmt_png_alpha(const uint8_t *data, size_t len, bool *alpha) {
  /* IHDR data: width(4) height(4) bit depth(1) colour type(1) ... */
  if (imagefmt_detect(data, len) != IMAGEFMT_PNG || !png_dimensions(data, len, NULL, NULL) ||
      len < 26)
    return false;
  uint8_t type = data[25];
  if (type != 0 && type != 2 && type != 3 && type != 4 && type != 6) return false;
  *alpha = type == 4 || type == 6;
  return true;
}

/* SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG extension) and CC (DAC)
 * share the range but are not frames. */
static bool jpeg_is_sof(uint8_t m) {
  return m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc;
}

/* Markers that stand alone, without a length field: TEM, RST0..7, SOI. */
static bool jpeg_is_standalone(uint8_t m) { return m == 0x01 || (m >= 0xd0 && m <= 0xd8); }

/* Walks marker segments from just after SOI to the first SOF. */
static bool jpeg_dimensions(const uint8_t *d, size_t len, int *w, int *h) {
  size_t i = 2;
  for (;;) {
    if (i >= len || d[i] != 0xff) return false;
    while (i < len && d[i] == 0xff) i++; /* any number of fill bytes may precede a marker */
    if (i >= len) return false;
    uint8_t m = d[i++];
    if (m == 0x00) return false; /* a stuffed zero is not a marker here */
    if (jpeg_is_standalone(m)) continue;
    if (m == 0xd9 || m == 0xda) return false; /* EOI or scan data before any frame header */
    if (len - i < 2) return false;
    size_t seg = be16(d + i);
    if (seg < 2) return false;
    if (jpeg_is_sof(m)) {
      /* Lf(2) P(1) Y(2) X(2) Nf(1) */
      if (seg < 8 || len - i < 8) return false;
      return put_size(be16(d + i + 5), be16(d + i + 3), w, h);
    }
    if (seg > len - i) return false;
    i += seg;
  }
}

/* VP8 key frame: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and
 * height (the top two bits of each are a scaling hint). */
static bool webp_vp8(const uint8_t *c, size_t avail, uint32_t csize, int *w, int *h) {
  if (csize < 10 || avail < 10) return false;
  if (c[0] & 1) return false; /* an interframe cannot start a still image */
  if (c[3] != 0x9d || c[4] != 0x01 || c[5] != 0x2a) return false;
  return put_size(le16(c + 6) & 0x3fff, le16(c + 8) & 0x3fff, w, h);
}

/* VP8L: signature 0x2f, then width-1 and height-1 in 14 bits each, an alpha
 * bit and a 3-bit version that must be 0. */
static bool webp_vp8l(const uint8_t *c, size_t avail, uint32_t csize, int *w, int *h) {
  if (csize < 5 || avail < 5 || c[0] != 0x2f) return false;
  uint32_t bits = le32(c + 1);
  if (bits >> 29 != 0) return false;
  return put_size((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1, w, h);
}

/* VP8X: flags, 3 reserved bytes, canvas width-1 and height-1 in 24 bits each. */
static bool webp_vp8x(const uint8_t *c, size_t avail, uint32_t csize, int *w, int *h) {
  if (csize < 10 || avail < 10) return false;
  return put_size(le24(c + 4) + 1, le24(c + 7) + 1, w, h);
}

static bool webp_dimensions(const uint8_t *d, size_t len, int *w, int *h) {
  if (len < 20) return false;
  uint32_t csize = le32(d + 16);
  const uint8_t *c = d + 20;
  size_t avail = len - 20;
  if (memcmp(d + 12, "VP8 ", 4) == 0) return webp_vp8(c, avail, csize, w, h);
  if (memcmp(d + 12, "VP8L", 4) == 0) return webp_vp8l(c, avail, csize, w, h);
  if (memcmp(d + 12, "VP8X", 4) == 0) return webp_vp8x(c, avail, csize, w, h);
  return false;
}

bool imagefmt_dimensions(const uint8_t *data, size_t len, int *width, int *height) {
  switch (imagefmt_detect(data, len)) {
  case IMAGEFMT_PNG: return png_dimensions(data, len, width, height);
  case IMAGEFMT_JPEG: return jpeg_dimensions(data, len, width, height);
  case IMAGEFMT_WEBP: return webp_dimensions(data, len, width, height);
  case IMAGEFMT_HEIC:
  case IMAGEFMT_UNKNOWN: break;
  }
  return false;
}
