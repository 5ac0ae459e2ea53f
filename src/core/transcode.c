/* transcode.c - see transcode.h. */
#include "core/transcode.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vips/vips.h>

#include "util/log.h"

/* PNG's zlib level: libvips' default, a fair trade of size against time. */
#define TRANSCODE_PNG_LEVEL 6

static pthread_once_t startup_once = PTHREAD_ONCE_INIT;
static bool vips_started;

/* libvips speaks through GLib's log ("VIPS-WARNING **: not enough data"):
 * those lines go to imgate's log instead, in its format, at debug level. A
 * damaged image is expected input; the failure itself is logged once, with
 * its task, where it is handled. */
static void vips_log_line(const gchar *domain, GLogLevelFlags level, const gchar *message,
                          gpointer data) {
  (void)data;
  char q[240];
  LOG_DEBUG("vips_says", "domain=%s level=%d text=%s", domain ? domain : "-", (int)level,
            log_quote(message ? message : "", q, sizeof q));
}

static void start_vips(void) {
  g_log_set_handler("VIPS", G_LOG_LEVEL_MASK | G_LOG_FLAG_FATAL | G_LOG_FLAG_RECURSION,
                    vips_log_line, NULL);
  if (VIPS_INIT("imgate") != 0) {
    char *why = vips_error_buffer_copy();
    LOG_ERROR("transcode_startup_failed", "reason=\"%s\"", why ? why : "?");
    g_free(why);
    return;
  }
  /* One worker per operation: images are converted in parallel by the
   * engine's pool, one per thread; libvips' own threads on top would only
   * compete with the HTTP workers for the same cores. */
  vips_concurrency_set(1);
  /* No operation cache: every image is converted once, and a cache would
   * hold decoded pixels of images long gone. */
  vips_cache_set_max(0);
  vips_cache_set_max_mem(0);
  vips_cache_set_max_files(0);
  /* Only the PNG, JPEG and WebP loaders are ever called, by name; blocking
   * the loaders libvips marks untrusted is a second fence. */
  vips_block_untrusted_set(TRUE);
  vips_started = true;
}

bool transcode_startup(void) {
  pthread_once(&startup_once, start_vips);
  return vips_started;
}

void transcode_shutdown(void) {
  if (vips_started) vips_shutdown();
}

void transcode_thread_done(void) {
  if (vips_started) vips_thread_shutdown();
}

const char *transcode_status_name(transcode_status s) {
  switch (s) {
  case TRANSCODE_OK: return "ok";
  case TRANSCODE_UNSUPPORTED: return "unsupported";
  case TRANSCODE_BAD_HEADER: return "bad_header";
  case TRANSCODE_TOO_LARGE: return "too_large";
  case TRANSCODE_DECODE: return "decode";
  case TRANSCODE_ENCODE: return "encode";
  case TRANSCODE_NO_MEMORY: return "no_memory";
  }
  return "unknown";
}

bool transcode_can_write(imagefmt fmt) {
  return fmt == IMAGEFMT_PNG || fmt == IMAGEFMT_JPEG || fmt == IMAGEFMT_WEBP;
}

static transcode_status fail(transcode_result *out, transcode_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static transcode_status fail(transcode_result *out, transcode_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out->why, sizeof out->why, fmt, ap);
  va_end(ap);
  return s;
}

/* libvips' own account of a failure goes to the log, not to clients: it
 * names internals ("vips_image_copy_memory: ...") and may run long. */
static void log_vips_error(const char *stage, imagefmt from, imagefmt to) {
  char *why = vips_error_buffer_copy();
  char q[240];
  LOG_DEBUG("transcode_failed", "stage=%s from=%s to=%s vips=%s", stage, imagefmt_name(from),
           imagefmt_name(to), log_quote(why ? why : "", q, sizeof q));
  g_free(why);
}

/* Whether every chunk of a PNG fits in the bytes there are, up to IEND.
 * libpng allocates a chunk's declared length before it reads it: a
 * 126-byte file whose text chunk claims 1.5 GB makes it ask for 1.5 GB
 * (found by fuzz_transcode). A chunk that claims more than the file holds is
 * damage, refused here for the cost of a walk over the chunk headers. */
static bool png_chunks_fit(const uint8_t *d, size_t len) {
  size_t i = 8; /* after the signature */
  while (len - i >= 12) {
    uint32_t n =
        (uint32_t)d[i] << 24 | (uint32_t)d[i + 1] << 16 | (uint32_t)d[i + 2] << 8 | d[i + 3];
    if (n > len - i - 12) return false;
    if (memcmp(d + i + 4, "IEND", 4) == 0) return true;
    i += 12 + (size_t)n;
  }
  return false; /* cut before IEND */
}

/* The loader for fmt alone, reading lazily (the pixels are decoded when
 * asked for), failing on decoder errors and truncation. in is only read. */
static VipsImage *load(imagefmt fmt, const uint8_t *in, size_t len) {
  void *buf = (void *)(uintptr_t)in;
  VipsImage *img = NULL;
  int rc = -1;
  switch (fmt) {
  case IMAGEFMT_PNG:
    rc = vips_pngload_buffer(buf, len, &img, "access", VIPS_ACCESS_SEQUENTIAL, "fail_on",
                             VIPS_FAIL_ON_ERROR, NULL);
    break;
  case IMAGEFMT_JPEG:
    rc = vips_jpegload_buffer(buf, len, &img, "access", VIPS_ACCESS_SEQUENTIAL, "fail_on",
                              VIPS_FAIL_ON_ERROR, NULL);
    break;
  case IMAGEFMT_WEBP:
    rc = vips_webpload_buffer(buf, len, &img, "access", VIPS_ACCESS_SEQUENTIAL, "fail_on",
                              VIPS_FAIL_ON_ERROR, NULL);
    break;
  default: break;
  }
  return rc == 0 ? img : NULL;
}

/* 8-bit sRGB (or 8-bit grey), with alpha flattened onto white for JPEG.
 * Takes over *img (replaced by the result). 0, or -1 with libvips' error set. */
static int normalise(VipsImage **img, imagefmt to) {
  VipsImage *cur = *img;
  VipsInterpretation interp = vips_image_get_interpretation(cur);
  bool grey = interp == VIPS_INTERPRETATION_B_W || interp == VIPS_INTERPRETATION_GREY16;
  VipsInterpretation want = grey ? VIPS_INTERPRETATION_B_W : VIPS_INTERPRETATION_sRGB;
  if (interp != want || vips_image_get_format(cur) != VIPS_FORMAT_UCHAR) {
    VipsImage *next = NULL;
    if (vips_colourspace(cur, &next, want, NULL) != 0) return -1;
    g_object_unref(cur);
    *img = cur = next;
    if (vips_image_get_format(cur) != VIPS_FORMAT_UCHAR) {
      if (vips_cast_uchar(cur, &next, NULL) != 0) return -1;
      g_object_unref(cur);
      *img = cur = next;
    }
  }
  if (to == IMAGEFMT_JPEG && vips_image_hasalpha(cur)) {
    VipsImage *next = NULL;
    VipsArrayDouble *white = vips_array_double_newv(1, 255.0);
    int rc = white ? vips_flatten(cur, &next, "background", white, NULL) : -1;
    if (white) vips_area_unref(VIPS_AREA(white));
    if (rc != 0) return -1;
    g_object_unref(cur);
    *img = next;
  }
  return 0;
}

/* Writes img as `to` into a libvips buffer (g_free it). 0 or -1. */
static int save(VipsImage *img, imagefmt to, int quality, void **buf, size_t *len) {
  if (quality < 0) quality = 0;
  if (quality > 100) quality = 100;
  switch (to) {
  case IMAGEFMT_JPEG:
    return vips_jpegsave_buffer(img, buf, len, "Q", quality < 1 ? 1 : quality, "strip", TRUE,
                                NULL);
  case IMAGEFMT_WEBP:
    return vips_webpsave_buffer(img, buf, len, "Q", quality, "strip", TRUE, NULL);
  case IMAGEFMT_PNG:
    return vips_pngsave_buffer(img, buf, len, "compression", TRANSCODE_PNG_LEVEL, "strip", TRUE,
                               NULL);
  default: return -1;
  }
}

transcode_status transcode_image(const uint8_t *in, size_t len, imagefmt to, int quality,
                                 int64_t max_pixels, transcode_result *out) {
  memset(out, 0, sizeof *out);
  if (max_pixels <= 0) max_pixels = TRANSCODE_DEFAULT_MAX_PIXELS;
  if (!transcode_can_write(to))
    return fail(out, TRANSCODE_UNSUPPORTED, "%s is not an output format", imagefmt_name(to));
  if (!vips_started)
    return fail(out, TRANSCODE_ENCODE, "the image converter is not available");
  imagefmt from = imagefmt_detect(in, len);
  if (from != IMAGEFMT_PNG && from != IMAGEFMT_JPEG && from != IMAGEFMT_WEBP)
    return fail(out, TRANSCODE_UNSUPPORTED, "the image is not a PNG, JPEG or WebP (%s)",
                imagefmt_name(from));
  /* The size from the header, before libvips allocates anything for it. */
  int w = 0, h = 0;
  if (!imagefmt_dimensions(in, len, &w, &h))
    return fail(out, TRANSCODE_BAD_HEADER, "the %s header is truncated or malformed",
                imagefmt_name(from));
  if ((int64_t)w * h > max_pixels)
    return fail(out, TRANSCODE_TOO_LARGE, "the image is %dx%d, more than %lld pixels", w, h,
                (long long)max_pixels);

  if (from == IMAGEFMT_PNG && !png_chunks_fit(in, len))
    return fail(out, TRANSCODE_DECODE, "the png data is damaged: a chunk claims more bytes "
                "than there are");

  transcode_status st = TRANSCODE_OK;
  void *vbuf = NULL;
  size_t vlen = 0;
  VipsImage *img = load(from, in, len);
  if (!img) {
    log_vips_error("header", from, to);
    st = fail(out, TRANSCODE_BAD_HEADER, "the %s header cannot be read", imagefmt_name(from));
    goto done;
  }
  if (vips_image_get_width(img) != w || vips_image_get_height(img) != h) {
    st = fail(out, TRANSCODE_BAD_HEADER, "the %s header says %dx%d but the image is %dx%d",
              imagefmt_name(from), w, h, vips_image_get_width(img), vips_image_get_height(img));
    goto done;
  }
  /* Decoded whole here, so that damaged data is told from a failed encode
   * (a lazy pipeline would report both from the save). The pixel limit
   * bounds what this holds. */
  VipsImage *decoded = vips_image_copy_memory(img);
  g_object_unref(img);
  img = decoded;
  if (!img) {
    log_vips_error("decode", from, to);
    st = fail(out, TRANSCODE_DECODE, "the %s image data is damaged or truncated",
              imagefmt_name(from));
    goto done;
  }
  if (normalise(&img, to) != 0 || save(img, to, quality, &vbuf, &vlen) != 0) {
    log_vips_error("encode", from, to);
    st = fail(out, TRANSCODE_ENCODE, "the image could not be written as %s", imagefmt_name(to));
    goto done;
  }
  /* What came out is checked like anything else imgate stores. */
  int ow = 0, oh = 0;
  if (imagefmt_detect(vbuf, vlen) != to || !imagefmt_dimensions(vbuf, vlen, &ow, &oh) ||
      ow != w || oh != h) {
    st = fail(out, TRANSCODE_ENCODE, "the %s written is not a %dx%d %s image", imagefmt_name(to),
              w, h, imagefmt_name(to));
    goto done;
  }
  out->data = malloc(vlen);
  if (!out->data) {
    st = fail(out, TRANSCODE_NO_MEMORY, "out of memory");
    goto done;
  }
  memcpy(out->data, vbuf, vlen);
  out->len = vlen;
  out->width = ow;
  out->height = oh;
done:
  g_free(vbuf);
  if (img) g_object_unref(img);
  /* Warnings of a conversion that worked would pile up in libvips' error
   * text (a fixed buffer) until a real error no longer fits. */
  if (st == TRANSCODE_OK) vips_error_clear();
  return st;
}
