/* utf8.h - measuring, cutting, decoding and repairing UTF-8 text.
 *
 * User text (a model name, an aspect ratio, an upstream's message) ends up in
 * JSON answers, and jansson refuses to build a string that is not
 * well-formed UTF-8: a "%.64s" that cuts a character in half turns a 400 into
 * an empty 500. These helpers cut on character boundaries and repair text of
 * unknown origin before it reaches JSON. */
#ifndef IMGATE_UTF8_H
#define IMGATE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of s to keep so that at most max_bytes are kept and no character is
 * split: strlen(s) when it fits, else max_bytes backed off to the start of
 * the character it would cut. Meant for "%.*s" with (int)utf8_cut(s, n), s.
 * Well-formed input gives a well-formed prefix. */
size_t utf8_cut(const char *s, size_t max_bytes);

/* Code points in s (continuation bytes are not counted). */
size_t utf8_length(const char *s);

/* True when the len bytes at s are well-formed UTF-8 (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF) without NUL bytes. */
bool utf8_valid(const char *s, size_t len);

/* Replaces, in place, every byte of s that is not part of a well-formed
 * sequence with '?'. Returns how many bytes were replaced. */
size_t utf8_sanitize(char *s);

/* Decodes the character at s, of which at most avail bytes may be read:
 * returns its length in bytes (1 to 4) and stores its code point in *cp, or
 * returns 0 (and leaves *cp alone) when the bytes there are malformed,
 * truncated or a NUL. */
size_t utf8_decode(const char *s, size_t avail, uint32_t *cp);

/* True when code point cp shows nothing on its own: Unicode's White_Space
 * characters (tab to carriage return, space, U+0085, no-break spaces, the
 * U+2000 spaces, line and paragraph separators, ideographic space U+3000)
 * and the invisible format characters (soft hyphen, zero-width space and
 * joiners, direction marks and embeddings, word joiner and invisible
 * operators, byte order mark / zero-width no-break space). */
bool utf8_is_invisible(uint32_t cp);

/* True when the NUL-terminated s shows nothing: it is empty or made only of
 * utf8_is_invisible characters. A malformed byte is something, not blank. */
bool utf8_is_blank(const char *s);

#endif
