/* imgscan.h - the images inside an upstream's JSON answer, found and decoded
 * while the answer arrives.
 *
 * An image generation API answers with JSON (or a stream of JSON events) in
 * which each image is one base64 string of 10-40 MB, and everything else
 * (finish reasons, errors, usage) weighs a few kilobytes. The scanner is fed
 * the answer in pieces of any size, split anywhere, as curl's write callback
 * receives them. It follows the JSON's structure and, for each string at one
 * of the caller's image paths, decodes its base64 piece by piece (strictly,
 * util/base64.h) into the caller's sink: begin, write..., end. Everything
 * else is copied, byte for byte, into a bounded "rest" in which each image
 * string is replaced by a short marker ("imgscan:N", N the image's number),
 * so a JSON parser can read the small rest as it reads whole answers today
 * and find each image by its marker. Memory is the scanner's own (a decoding
 * buffer of 12 KB, the path stack) plus the rest, whatever the images weigh.
 *
 * A string is known to be an image only by where it is, so the scanner keeps
 * the path from the root: which patterns still match at each level of
 * nesting, and the key of the member being read (keys are compared after
 * their JSON escapes are undone). Paths are written like
 * "candidates[].content.parts[].inlineData.data": names of object members,
 * and "[]" for any element of an array. A pattern may also mark strings to
 * drop: copied to the rest as "" and not decoded (large opaque strings the
 * caller never reads, such as Gemini's thoughtSignature).
 *
 * Strict: the whole input must be JSON (RFC 8259 grammar, checked as it
 * goes: structure, numbers, literals, and strings with jansson's rules: UTF-8
 * without overlong forms or surrogates, valid escapes, no \u0000, surrogate
 * escapes only in pairs), an image string must be valid base64 once its JSON
 * escapes are undone ("\/" is a '/'; an optional "data:<type>;base64,"
 * prefix, as some resellers send, is skipped), and nothing is guessed: the
 * first fault stops the scan with a status and a message, and nothing more
 * reaches the sink. So a string that is dropped or decoded, and never reaches
 * the parser, is judged as the parser would have judged it. What is left to
 * the parser that reads the rest: the range of numbers, duplicate keys.
 *
 * Event streams (text/event-stream, as Gemini's streamGenerateContent?alt=sse
 * and OpenAI's image streams send): each event's "data:" lines (joined with
 * "\n", as the SSE rules say) must hold one JSON value, scanned like a whole
 * answer with the paths applied from that value's root; the rest is then a
 * JSON array of those values, one per event. Comments, "event:", "id:",
 * "retry:" and unknown fields are dropped; CRLF, CR and LF all end lines. A
 * final event without its blank line is taken if its JSON is complete.
 *
 * Not thread-safe: one scanner is fed by one thread at a time. */
#ifndef IMGATE_IMGSCAN_H
#define IMGATE_IMGSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IMGSCAN_MAX_PATHS 32    /* patterns per scanner */
#define IMGSCAN_MAX_SEGMENTS 16 /* names and "[]" per pattern */
#define IMGSCAN_MAX_NAME 63     /* bytes of one member name in a pattern */
#define IMGSCAN_MAX_DEPTH 64    /* nesting of arrays and objects; deeper is refused */
#define IMGSCAN_MARKER "imgscan:" /* an image's marker in the rest: this and its number */

typedef enum {
  IMGSCAN_JSON, /* one JSON value */
  IMGSCAN_SSE,  /* an event stream of JSON values */
  IMGSCAN_AUTO, /* decided by the first byte that is not whitespace: '{' or '[' is JSON,
                 * anything else an event stream (an API that streams on success may
                 * answer an error as plain JSON) */
} imgscan_framing;

typedef enum {
  IMGSCAN_OK = 0,
  IMGSCAN_ERR_SYNTAX,    /* not JSON, or not an event stream of JSON */
  IMGSCAN_ERR_TRUNCATED, /* the input ended inside a value (or held none) */
  IMGSCAN_ERR_DEPTH,     /* nested deeper than IMGSCAN_MAX_DEPTH */
  IMGSCAN_ERR_BASE64,    /* an image string is not valid base64 */
  IMGSCAN_ERR_REST,      /* the JSON around the images outgrew rest_max */
  IMGSCAN_ERR_SINK,      /* a sink callback refused */
  IMGSCAN_ERR_NOMEM,
} imgscan_status;

/* What becomes of a string found at a pattern's path. */
typedef enum {
  IMGSCAN_IMAGE, /* decoded to the sink; the rest holds its marker */
  IMGSCAN_DROP,  /* not decoded; the rest holds "" */
} imgscan_kind;

typedef struct imgscan_path {
  const char *path; /* "data[].b64_json"; not copied: it must outlive the scanner */
  imgscan_kind kind;
} imgscan_path;

/* Where image bytes go. Images are numbered 0, 1, 2... in the order their
 * strings begin. Each callback returns 0 to go on, anything else to stop the
 * scan (IMGSCAN_ERR_SINK; the sink keeps its own reason). After a failure no
 * callback is made, so an image whose end never came is incomplete: its
 * owner drops it. end is called only once the base64 has been checked whole. */
typedef struct imgscan_sink {
  int (*begin)(void *ctx, size_t image);
  int (*write)(void *ctx, size_t image, const uint8_t *bytes, size_t len);
  int (*end)(void *ctx, size_t image);
  void *ctx;
} imgscan_sink;

typedef struct imgscan_config {
  imgscan_framing framing;
  const imgscan_path *paths;
  size_t n_paths;  /* at most IMGSCAN_MAX_PATHS */
  size_t rest_max; /* the most bytes the rest may hold */
  imgscan_sink sink;
} imgscan_config;

typedef struct imgscan imgscan;

/* A scanner ready for the first byte. NULL when memory runs out or a path is
 * malformed (empty, an empty or over-long name, a name holding '.', '[', ']'
 * or a byte outside printable ASCII, more than IMGSCAN_MAX_SEGMENTS
 * segments) or there are too many paths. */
imgscan *imgscan_new(const imgscan_config *cfg);
void imgscan_free(imgscan *s);

/* Scans the next len bytes. Returns IMGSCAN_OK, or the fault that stopped the
 * scan (now or before: it stays). Sink callbacks run inside this call. */
imgscan_status imgscan_feed(imgscan *s, const char *data, size_t len);

/* The input has ended: checks that it ended where a whole answer may end.
 * Returns IMGSCAN_OK or the fault. Call it once, after the last feed. */
imgscan_status imgscan_finish(imgscan *s);

/* The status so far and a message for it ("" when OK), naming the byte
 * offset of a syntax fault. */
imgscan_status imgscan_status_of(const imgscan *s);
const char *imgscan_message(const imgscan *s);

/* The rest: after a successful finish, the JSON text with each image string
 * replaced by its marker (each dropped string by ""); for an event stream, the
 * JSON array of the events' values. NUL-terminated; *len may be NULL. Owned
 * by the scanner. */
const char *imgscan_rest(const imgscan *s, size_t *len);

/* The framing found (IMGSCAN_JSON or IMGSCAN_SSE; IMGSCAN_AUTO while no
 * byte has decided it). */
imgscan_framing imgscan_framing_of(const imgscan *s);

/* Images begun so far. */
size_t imgscan_images(const imgscan *s);

/* The image number a marker names, or -1 when text is not exactly a marker
 * ("imgscan:" and a decimal number without leading zeros). */
long imgscan_marker_index(const char *text);

#endif
