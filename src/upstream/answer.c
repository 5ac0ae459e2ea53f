/* answer.c - an upstream answer read while it arrives: an image scanner
 * whose sink grows one buffer per image, and the checks at the end. */
#include "upstream/answer.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/adapter.h"
#include "util/imagefmt.h"

/* The first room an image gets; it doubles from there (large blocks move by
 * mremap, not by copying, so doubling costs little). */
#define ANSWER_IMAGE_FIRST_ROOM ((size_t)64 << 10)

void answer_init(answer_reader *a, imgscan_framing framing, const imgscan_path *paths,
                 size_t n_paths, size_t max_image_bytes) {
  memset(a, 0, sizeof *a);
  a->framing = framing;
  a->paths = paths;
  a->n_paths = n_paths;
  a->max_image_bytes = max_image_bytes;
}

void answer_set_spool(answer_reader *a, provider_spool *spool) {
  assert(!a->scan);
  a->spool = spool;
}

void answer_free(answer_reader *a) {
  imgscan_free(a->scan);
  a->scan = NULL;
  for (size_t i = 0; i < a->n_images; i++) {
    free(a->images[i].data);
    blob_stream_abort(a->images[i].staged);
  }
  free(a->images);
  a->images = NULL;
  a->n_images = 0;
}

/* ---- the scanner's sink ---- */

static int answer_refuse(answer_reader *a, const char *why) {
  a->refusal = why;
  return 1;
}

static int answer_image_begin(void *ctx, size_t image) {
  answer_reader *a = ctx;
  if (image >= ANSWER_MAX_IMAGES) return answer_refuse(a, "the answer holds too many images");
  if (image == 0) {
    a->images = calloc(ANSWER_MAX_IMAGES, sizeof *a->images);
    if (!a->images) {
      a->out_of_memory = true;
      return answer_refuse(a, "out of memory while reading the answer");
    }
  }
  a->n_images = image + 1;
  return 0;
}

/* Appends to the image's memory, growing it by doubling. */
static int answer_image_keep(answer_reader *a, answer_image *img, const uint8_t *bytes,
                             size_t len) {
  assert(!img->staged);
  size_t held = img->len; /* bytes in img->data */
  if (len > img->cap - held) {
    size_t cap = img->cap ? img->cap : ANSWER_IMAGE_FIRST_ROOM;
    while (cap - held < len) cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
    if (cap > a->max_image_bytes) cap = a->max_image_bytes;
    uint8_t *grown = realloc(img->data, cap);
    if (!grown) {
      a->out_of_memory = true;
      return answer_refuse(a, "out of memory while reading the answer");
    }
    img->data = grown;
    img->cap = cap;
  }
  memcpy(img->data + held, bytes, len);
  return 0;
}

/* The image has outgrown its head: begin its write to the store, named by
 * its format (told by the head's bytes), and send the head first. The head
 * stays in memory for answer_take_image's header checks. */
static int answer_image_stage(answer_reader *a, size_t image) {
  answer_image *img = &a->images[image];
  imagefmt fmt = imagefmt_detect(img->data, img->len);
  if (fmt == IMAGEFMT_UNKNOWN)
    return answer_refuse(a, "the image data is not a known image format");
  unsigned n = atomic_fetch_add(&a->spool->seq, 1);
  int k = snprintf(img->key, sizeof img->key, "%s%u.%s", a->spool->prefix, n, imagefmt_ext(fmt));
  if (k < 0 || (size_t)k >= sizeof img->key || !blob_key_valid(img->key))
    return answer_refuse(a, "the image cannot be named in the store");
  img->head_len = img->len;
  if (blob_stream_begin(a->spool->bl, img->key, imagefmt_mime(fmt), &img->staged) != BLOB_OK ||
      blob_stream_write(img->staged, img->data, img->len) != BLOB_OK)
    return answer_refuse(a, "the image could not be written to the store");
  return 0;
}

/* Whether the head holds enough to stage the image: its first
 * ANSWER_HEAD_BYTES and a header whose pixel size can be read (HEIC's is not
 * read anywhere), or as much as a head may ever hold. */
static bool answer_head_ready(const answer_image *img) {
  if (img->len < ANSWER_HEAD_BYTES) return false;
  if (img->len >= ANSWER_HEAD_MAX_BYTES) return true;
  int w, h;
  imagefmt fmt = imagefmt_detect(img->data, img->len);
  return fmt == IMAGEFMT_UNKNOWN || fmt == IMAGEFMT_HEIC ||
         imagefmt_dimensions(img->data, img->len, &w, &h);
}

static int answer_image_write(void *ctx, size_t image, const uint8_t *bytes, size_t len) {
  answer_reader *a = ctx;
  answer_image *img = &a->images[image];
  if (len > a->max_image_bytes - img->len) {
    size_t max = a->max_image_bytes;
    if (max % ((size_t)1 << 20) == 0)
      snprintf(a->message, sizeof a->message, "the image is larger than %zu MiB", max >> 20);
    else
      snprintf(a->message, sizeof a->message, "the image is larger than %zu bytes", max);
    return answer_refuse(a, a->message);
  }
  if (img->staged) {
    if (blob_stream_write(img->staged, bytes, len) != BLOB_OK)
      return answer_refuse(a, "the image could not be written to the store");
    img->len += len;
    return 0;
  }
  if (answer_image_keep(a, img, bytes, len) != 0) return 1;
  img->len += len;
  if (a->spool && answer_head_ready(img)) return answer_image_stage(a, image);
  return 0;
}

static int answer_image_end(void *ctx, size_t image) {
  answer_reader *a = ctx;
  answer_image *img = &a->images[image];
  /* Give back what doubling left over: the image may wait a while to be stored. */
  if (!img->staged && img->len && img->cap > img->len) {
    uint8_t *shrunk = realloc(img->data, img->len);
    if (shrunk) {
      img->data = shrunk;
      img->cap = img->len;
    }
  }
  img->complete = true;
  return 0;
}

/* ---- reading ---- */

bool answer_write(void *ctx, const char *data, size_t len) {
  answer_reader *a = ctx;
  if (!a->scan) {
    imgscan_config cfg = {
        .framing = a->framing,
        .paths = a->paths,
        .n_paths = a->n_paths,
        .rest_max = ANSWER_MAX_REST_BYTES,
        .sink = {answer_image_begin, answer_image_write, answer_image_end, a},
    };
    a->scan = imgscan_new(&cfg);
    if (!a->scan) {
      a->out_of_memory = true;
      return false;
    }
  }
  return imgscan_feed(a->scan, data, len) == IMGSCAN_OK;
}

bool answer_finish(answer_reader *a) {
  if (!a->scan && !a->out_of_memory) answer_write(a, "", 0); /* an empty body */
  if (!a->scan) return false;
  if (!a->finished) {
    a->finished = true;
    imgscan_finish(a->scan);
  }
  return imgscan_status_of(a->scan) == IMGSCAN_OK;
}

const char *answer_rest(const answer_reader *a, size_t *len) {
  if (len) *len = 0;
  if (!a->finished || !a->scan || imgscan_status_of(a->scan) != IMGSCAN_OK) return NULL;
  return imgscan_rest(a->scan, len);
}

bool answer_out_of_memory(const answer_reader *a) {
  return a->out_of_memory || (a->scan && imgscan_status_of(a->scan) == IMGSCAN_ERR_NOMEM);
}

const char *answer_error(const answer_reader *a) {
  if (a->refusal) return a->refusal;
  if (!a->scan) return a->out_of_memory ? "out of memory while reading the answer" : NULL;
  switch (imgscan_status_of(a->scan)) {
  case IMGSCAN_OK:
    return a->finished ? NULL : "the answer was not read to its end";
  case IMGSCAN_ERR_BASE64:
    return "the image data is not valid base64";
  case IMGSCAN_ERR_REST:
    return "the JSON around the images is larger than 2 MiB";
  case IMGSCAN_ERR_NOMEM:
    return "out of memory while reading the answer";
  case IMGSCAN_ERR_TRUNCATED:
    return "the answer is not valid JSON (empty or truncated?)";
  case IMGSCAN_ERR_SYNTAX:
  case IMGSCAN_ERR_DEPTH:
  case IMGSCAN_ERR_SINK:
    break;
  }
  return imgscan_message(a->scan);
}

int answer_take_image(answer_reader *a, const char *marker, provider_image *img, const char **why) {
  memset(img, 0, sizeof *img);
  long i = imgscan_marker_index(marker);
  if (i < 0 || (size_t)i >= a->n_images || !a->images[i].complete || a->images[i].taken) {
    *why = "no image data";
    return -1;
  }
  answer_image *ai = &a->images[i];
  if (!ai->staged) {
    if (adapter_image_from_bytes(ai->data, ai->len, img, why) != 0) return -1;
    ai->data = NULL; /* img's now */
    ai->len = ai->cap = 0;
    ai->taken = true;
    return 0;
  }
  /* Staged: its type and size from the head it kept. */
  provider_image head;
  if (adapter_image_from_bytes(ai->data, ai->head_len, &head, why) != 0) return -1;
  *img = head;
  img->data = NULL;
  img->len = ai->len;
  img->staged = ai->staged;
  snprintf(img->staged_key, sizeof img->staged_key, "%s", ai->key);
  ai->staged = NULL; /* img's now */
  free(ai->data);
  ai->data = NULL;
  ai->len = ai->cap = 0;
  ai->taken = true;
  return 0;
}
