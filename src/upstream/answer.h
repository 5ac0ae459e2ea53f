/* answer.h - an upstream's answer read while it arrives: the images in it
 * decoded into memory of their own size, the rest kept as small JSON text.
 *
 * The HTTP adapters (gemini.c, openai.c) give one to each call and hand it to
 * the curl loop as the transfer's sink (answer_write), so the body is never
 * held whole: the image strings, found by their paths (upstream/imgscan.h),
 * are decoded piece by piece as curl receives them, and the rest, where each
 * image string is a marker, is parsed with jansson once the transfer has
 * ended; the parser takes each image it wants by its marker. In flight, an
 * answer costs the images' bytes, the scanner's ~13 KB and the rest; nothing
 * is allocated before the first byte of the body. Not thread-safe: fed by
 * the loop thread, then read by one parsing thread after the transfer's end.
 *
 * What is refused, each with a reason safe to show (answer_error): JSON or
 * base64 that is not valid, an image over max_image_bytes, more than
 * ANSWER_MAX_IMAGES image strings, a rest over ANSWER_MAX_REST_BYTES. */
#ifndef IMGATE_ANSWER_H
#define IMGATE_ANSWER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "upstream/imgscan.h"
#include "upstream/provider.h"

#define ANSWER_MAX_IMAGES 16 /* image strings in one answer: OpenAI's n <= 10, Gemini's thoughts */
#define ANSWER_MAX_REST_BYTES ((size_t)2 << 20) /* the JSON around the images */

/* With a spool, an image keeps only its head in memory: at least its first
 * ANSWER_HEAD_BYTES, more while its pixel size cannot be read from what came
 * (a JPEG's frame header follows its metadata segments, which may be long),
 * never more than ANSWER_HEAD_MAX_BYTES (plus the piece that crossed it).
 * From there on it is written to the blob store as it arrives. */
#define ANSWER_HEAD_BYTES ((size_t)64 << 10)
#define ANSWER_HEAD_MAX_BYTES ((size_t)1 << 20)

typedef struct answer_image {
  uint8_t *data; /* malloc'd (NULL while empty); with a spool, at most the head */
  size_t len, cap; /* len: every byte so far, the staged ones included */
  size_t head_len;  /* staged: the bytes kept in data */
  blob_stream *staged; /* begun once the image outgrew its head (spool only) */
  char key[BLOB_KEY_MAX + 1];
  bool complete; /* its string ended and was valid base64 */
  bool taken;    /* answer_take_image gave it away */
} answer_image;

typedef struct answer_reader {
  imgscan_framing framing;
  const imgscan_path *paths; /* static tables: not copied */
  size_t n_paths;
  size_t max_image_bytes;
  provider_spool *spool;     /* NULL: images whole in memory */
  imgscan *scan;             /* made at the first byte */
  answer_image *images;      /* n_images of them, in the order they began */
  size_t n_images;
  const char *refusal;       /* why the sink stopped the scan, or NULL */
  bool out_of_memory;
  bool finished;
  char message[160];         /* answer_error's text, when it is not a constant */
} answer_reader;

/* Ready for the first byte; allocates nothing. paths must outlive a. */
void answer_init(answer_reader *a, imgscan_framing framing, const imgscan_path *paths,
                 size_t n_paths, size_t max_image_bytes);
/* Large images of this answer go to spool's store as they arrive (see
 * provider_image); before the first byte. */
void answer_set_spool(answer_reader *a, provider_spool *spool);

/* Frees everything (images not taken included, their staged writes
 * aborted); a is then as after init, without its paths. Safe to call twice. */
void answer_free(answer_reader *a);

/* The next piece of the body. false when the answer cannot be read any more
 * (malformed, too large, out of memory): stop the transfer. The signature of
 * curlloop_sink.write, ctx being the answer. */
bool answer_write(void *ctx, const char *data, size_t len);

/* The body has ended. Returns whether the answer was read whole: then
 * answer_rest is its JSON. Idempotent. */
bool answer_finish(answer_reader *a);

/* The rest (NUL-terminated, owned by a) after a successful finish, or NULL. */
const char *answer_rest(const answer_reader *a, size_t *len);

/* Why the answer could not be read ("the image data is not valid base64",
 * "invalid JSON: ':' was expected at byte 1234", ...), or NULL when it could.
 * Text safe to show, valid while a lives. */
const char *answer_error(const answer_reader *a);

/* Whether reading stopped for lack of memory (not the upstream's fault). */
bool answer_out_of_memory(const answer_reader *a);

/* Takes the image a marker names (the string found at an image path in the
 * rest) and checks that it is one: its type from its magic bytes, its size
 * from its header, as adapter_decode_image does. Returns 0 and fills img
 * (img->data, or img->staged for a staged image, is now the caller's), or -1
 * with *why set to a static reason
 * (the marker names no complete image not yet taken; the bytes are no image
 * of a known format; its header is malformed). */
int answer_take_image(answer_reader *a, const char *marker, provider_image *img, const char **why);

#endif
