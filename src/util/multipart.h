/* multipart.h - reads a multipart/form-data body (RFC 7578) that is already
 * in memory, without copying it: each part points into the body.
 *
 * Only what form uploads use is understood: the boundary parameter of the
 * Content-Type, and per part the Content-Disposition (form-data; name=...;
 * filename=...) and Content-Type headers; other part headers are skipped.
 * Anything malformed is refused with a reason, never guessed at. */
#ifndef IMGATE_MULTIPART_H
#define IMGATE_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest names kept (a longer one is refused: form field names are short). */
#define MULTIPART_NAME_MAX 64
#define MULTIPART_FILENAME_MAX 256
#define MULTIPART_TYPE_MAX 128

typedef struct multipart_part {
  char name[MULTIPART_NAME_MAX];         /* the form field, e.g. "image[]" */
  char filename[MULTIPART_FILENAME_MAX]; /* "" when the part is not a file */
  bool is_file;                          /* a filename parameter was given */
  char content_type[MULTIPART_TYPE_MAX]; /* "" when the part has none */
  const uint8_t *data;                   /* into the body */
  size_t len;
} multipart_part;

/* The boundary of a Content-Type value "multipart/form-data; boundary=..."
 * (quoted or not) into out; false when the type is another or the boundary
 * is missing or longer than RFC 2046's 70 characters. */
bool multipart_boundary(const char *content_type, char *out, size_t out_size);

/* Splits body into at most max_parts parts. Returns the number of parts, or
 * -1 with a reason in err: no opening boundary, a part without its
 * Content-Disposition form-data name, a header line over 1 KiB, a name over
 * its limit, more parts than max_parts, or no closing boundary. */
int multipart_parse(const uint8_t *body, size_t len, const char *boundary, multipart_part *parts,
                    size_t max_parts, char *err, size_t err_size);

#endif
