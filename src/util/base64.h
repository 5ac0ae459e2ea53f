/* base64.h - RFC 4648 base64, both alphabets: one-shot and streaming decoding, encoding.
 *
 * What the decoder accepts, in both forms:
 * - the standard ('+/') or the URL-safe ('-_') alphabet, but one per input: an
 *   input holding characters of both is refused (no encoder writes that);
 * - padding is optional; when present it must complete the final group
 *   exactly ("Zg==", "Zm8="), and nothing but whitespace may follow it;
 * - ASCII whitespace (CR, LF, space, tab) is skipped anywhere, between
 *   padding characters too; any other byte is refused, NUL included;
 * - a final group of a single character is refused, and so are non-zero
 *   unused bits in the last character ("Zh==" is not "Zg=="): every byte
 *   string has exactly one accepted spelling per alphabet, up to whitespace
 *   and padding. */
#ifndef IMGATE_BASE64_H
#define IMGATE_BASE64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Decodes in_len bytes of text as described above.
 * On success returns 0 and a malloc'd *out (free it) of *out_len bytes.
 * Returns -1 on malformed input (or when memory runs out), -2 when the input
 * is well formed but decodes to more than max_out bytes. Nothing is left in
 * *out on failure. */
int base64_decode(const char *in, size_t in_len, size_t max_out, uint8_t **out, size_t *out_len);

/* Encodes with the standard alphabet and padding. Returns a malloc'd
 * NUL-terminated string (free it), or NULL when memory runs out. */
char *base64_encode(const uint8_t *in, size_t in_len);

/* Bytes needed to encode in_len bytes, without the NUL. */
size_t base64_encoded_len(size_t in_len);

/* ---- streaming decoding ----
 * The same rules over input that arrives in pieces: a piece may end anywhere,
 * inside a group, a whitespace run or the padding. Feed every piece, then
 * finish, which checks the end (a lone final character, padding that does
 * not complete the group, trailing bits) and gives the last one or two bytes.
 * Once a call has refused the input, the stream stays failed. A stream is a
 * plain value: no allocation, nothing to free. */
typedef struct base64_stream {
  const uint32_t (*table)[256]; /* the decoding tables of the alphabet known so far */
  uint32_t acc;                 /* the bits of the group in progress */
  uint8_t n;                    /* characters in the group in progress, 0..3 */
  uint8_t pads;                 /* '=' seen; only whitespace may follow them */
  uint8_t alphabet;             /* 0 not known yet, 1 standard, 2 URL-safe */
  bool failed;
} base64_stream;

/* The most bytes one feed of len characters writes: whole groups only, the
 * end of a partial group comes later. */
#define BASE64_FEED_MAX(len) (((len) / 4 + 1) * 3)

void base64_stream_init(base64_stream *s);

/* Decodes len characters into out, which has room for BASE64_FEED_MAX(len)
 * bytes; *out_len says how many were written. Returns 0, or -1 when the
 * input is malformed (then *out_len bytes were written before the fault). */
int base64_stream_feed(base64_stream *s, const char *in, size_t len, uint8_t *out,
                       size_t *out_len);

/* Like feed, but stops before the first character that is neither a digit of
 * the alphabet nor '=' (whitespace included), for callers that read base64
 * inside another syntax and must see those characters themselves (a JSON
 * string ends at '"', has escapes, may not hold a raw tab). Returns how many
 * characters were consumed; a strictness fault among them (mixed alphabets,
 * a digit after padding, too much padding) fails the stream: check
 * base64_stream_failed. */
size_t base64_stream_run(base64_stream *s, const char *in, size_t len, uint8_t *out,
                         size_t *out_len);

/* Receives decoded bytes; returns 0 to go on, anything else to stop. */
typedef int (*base64_sink_fn)(void *ctx, const uint8_t *bytes, size_t len);

/* Like feed, handing the bytes to sink in pieces of a few kilobytes instead.
 * Returns 0, -1 when the input is malformed, -2 when the sink stopped. */
int base64_stream_feed_to(base64_stream *s, const char *in, size_t len, base64_sink_fn sink,
                          void *ctx);

/* The input has ended: checks its end and writes the last 0 to 2 bytes into
 * tail. Returns 0, or -1 when the input was malformed. */
int base64_stream_finish(base64_stream *s, uint8_t tail[2], size_t *tail_len);

static inline bool base64_stream_failed(const base64_stream *s) { return s->failed; }

#endif
