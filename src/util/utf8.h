/* utf8.h - measuring, cutting and repairing UTF-8 text.
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

#endif
