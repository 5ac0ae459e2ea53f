/* multipart.c - multipart/form-data, read in place (see multipart.h). */
#include "util/multipart.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define MULTIPART_LINE_MAX 1024

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t err_size,
                                                     const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_size, fmt, ap);
  va_end(ap);
  return -1;
}

/* Reads one parameter value at *p (quoted, with backslash escapes, or a
 * token up to ';'), into out; false when it does not fit or a quote is not
 * closed. *p moves past it. */
static bool read_value(const char **p, const char *end, char *out, size_t out_size) {
  const char *s = *p;
  size_t n = 0;
  if (s < end && *s == '"') {
    s++;
    while (s < end && *s != '"') {
      if (*s == '\\' && s + 1 < end) s++;
      if (n + 1 >= out_size) return false;
      out[n++] = *s++;
    }
    if (s >= end) return false; /* the quote was never closed */
    s++;
  } else {
    while (s < end && *s != ';' && *s != ' ' && *s != '\t') {
      if (n + 1 >= out_size) return false;
      out[n++] = *s++;
    }
  }
  out[n] = '\0';
  *p = s;
  return true;
}

bool multipart_boundary(const char *content_type, char *out, size_t out_size) {
  static const char type[] = "multipart/form-data";
  if (!content_type || strncasecmp(content_type, type, sizeof type - 1) != 0) return false;
  const char *p = content_type + sizeof type - 1;
  const char *end = p + strlen(p);
  while (p < end) {
    while (p < end && (*p == ';' || *p == ' ' || *p == '\t')) p++;
    const char *key = p;
    while (p < end && *p != '=' && *p != ';') p++;
    if (p >= end || *p != '=') continue;
    size_t key_len = (size_t)(p - key);
    p++;
    char value[80];
    if (!read_value(&p, end, value, sizeof value)) return false;
    if (key_len == 8 && strncasecmp(key, "boundary", 8) == 0) {
      size_t n = strlen(value);
      if (n == 0 || n > 70 || n + 1 > out_size) return false;
      memcpy(out, value, n + 1);
      return true;
    }
  }
  return false;
}

/* Content-Disposition: form-data; name="..."; filename="..." */
static bool parse_disposition(const char *v, const char *end, multipart_part *part,
                              bool *has_name) {
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  if ((size_t)(end - v) < 9 || strncasecmp(v, "form-data", 9) != 0) return false;
  v += 9;
  while (v < end) {
    while (v < end && (*v == ';' || *v == ' ' || *v == '\t')) v++;
    const char *key = v;
    while (v < end && *v != '=' && *v != ';') v++;
    if (v >= end || *v != '=') continue;
    size_t key_len = (size_t)(v - key);
    v++;
    char value[MULTIPART_FILENAME_MAX];
    if (!read_value(&v, end, value, sizeof value)) return false;
    if (key_len == 4 && strncasecmp(key, "name", 4) == 0) {
      size_t n = strlen(value);
      if (n >= sizeof part->name) return false;
      memcpy(part->name, value, n + 1);
      *has_name = value[0] != '\0'; /* an empty name names no field */
    } else if (key_len == 8 && strncasecmp(key, "filename", 8) == 0) {
      snprintf(part->filename, sizeof part->filename, "%s", value);
      part->is_file = true;
    } else if (key_len == 9 && strncasecmp(key, "filename*", 9) == 0) {
      part->is_file = true; /* RFC 5987 form: the name itself is not needed */
    }
  }
  return true;
}

int multipart_parse(const uint8_t *body, size_t len, const char *boundary, multipart_part *parts,
                    size_t max_parts, char *err, size_t err_size) {
  char delim[80];
  int dn = snprintf(delim, sizeof delim, "\r\n--%s", boundary);
  if (dn < 0 || (size_t)dn >= sizeof delim || !boundary[0])
    return fail(err, err_size, "the multipart boundary is missing or too long");
  size_t delim_len = (size_t)dn;
  /* The first delimiter may open the body (no CRLF before it) or follow a
   * preamble, which is ignored. */
  const uint8_t *end = body + len;
  const uint8_t *p;
  if (len >= delim_len - 2 && memcmp(body, delim + 2, delim_len - 2) == 0) {
    p = body + delim_len - 2;
  } else {
    const uint8_t *at = memmem(body, len, delim, delim_len);
    if (!at) return fail(err, err_size, "the body does not start with the multipart boundary");
    p = at + delim_len;
  }
  size_t n = 0;
  for (;;) {
    /* After a delimiter: "--" closes the body, else CRLF starts a part
     * (transport padding, spaces and tabs, is allowed before it). */
    if (end - p >= 2 && p[0] == '-' && p[1] == '-') return (int)n;
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
      return fail(err, err_size, "a multipart boundary is not followed by a line end");
    p += 2;
    if (n == max_parts) return fail(err, err_size, "more than %zu parts", max_parts);
    multipart_part *part = &parts[n];
    memset(part, 0, sizeof *part);
    bool has_name = false;
    /* Header lines up to an empty one. */
    for (;;) {
      const uint8_t *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
      if (!eol) return fail(err, err_size, "part %zu: its headers do not end", n);
      size_t line_len = (size_t)(eol - p);
      if (line_len == 0) {
        p = eol + 2;
        break;
      }
      if (line_len > MULTIPART_LINE_MAX)
        return fail(err, err_size, "part %zu: a header line over %d bytes", n,
                    MULTIPART_LINE_MAX);
      const char *line = (const char *)p, *lend = (const char *)eol;
      const char *colon = memchr(line, ':', line_len);
      if (!colon) return fail(err, err_size, "part %zu: a header line without a colon", n);
      size_t name_len = (size_t)(colon - line);
      const char *v = colon + 1;
      if (name_len == 19 && strncasecmp(line, "Content-Disposition", 19) == 0) {
        if (!parse_disposition(v, lend, part, &has_name))
          return fail(err, err_size, "part %zu: its Content-Disposition is not form-data", n);
      } else if (name_len == 12 && strncasecmp(line, "Content-Type", 12) == 0) {
        while (v < lend && (*v == ' ' || *v == '\t')) v++;
        size_t tl = (size_t)(lend - v);
        if (tl >= sizeof part->content_type)
          return fail(err, err_size, "part %zu: its Content-Type is too long", n);
        memcpy(part->content_type, v, tl);
        part->content_type[tl] = '\0';
      }
      p = eol + 2;
    }
    if (!has_name) return fail(err, err_size, "part %zu has no form-data name", n);
    const uint8_t *next = memmem(p, (size_t)(end - p), delim, delim_len);
    if (!next) return fail(err, err_size, "part %zu: the closing boundary is missing", n);
    part->data = p;
    part->len = (size_t)(next - p);
    n++;
    p = next + delim_len;
  }
}
