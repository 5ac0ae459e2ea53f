/* base64.h - RFC 4648 base64, both alphabets. */
#ifndef IMGATE_BASE64_H
#define IMGATE_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Decodes standard ('+/') or URL-safe ('-_') base64; padding is optional,
 * ASCII whitespace (CR, LF, space, tab) is skipped, anything else is an error,
 * and so is a final group of a single character or non-zero trailing bits.
 * On success returns 0 and a malloc'd *out (free it) of *out_len bytes.
 * Returns -1 on malformed input, -2 when the decoded size would exceed max_out. */
int base64_decode(const char *in, size_t in_len, size_t max_out, uint8_t **out, size_t *out_len);

/* Encodes with the standard alphabet and padding. Returns a malloc'd
 * NUL-terminated string (free it), or NULL when memory runs out. */
char *base64_encode(const uint8_t *in, size_t in_len);

/* Bytes needed to encode in_len bytes, without the NUL. */
size_t base64_encoded_len(size_t in_len);

#endif
