/* jsonscan.c - counting JSON values and depth without parsing. */
#include "util/jsonscan.h"

#include <string.h>

/* Skips a string whose opening quote is at text[i - 1]; returns the index
 * after its closing quote, or len when it is not closed. memchr does the
 * walking: base64 images make most of a body string content. */
static size_t skip_string(const char *text, size_t len, size_t i) {
  while (i < len) {
    const char *q = memchr(text + i, '"', len - i);
    if (!q) return len;
    size_t at = (size_t)(q - text);
    /* The quote is escaped when an odd number of backslashes precede it. */
    size_t bs = 0;
    while (at - bs > i && text[at - bs - 1] == '\\') bs++;
    i = at + 1;
    if (bs % 2 == 0) return i;
  }
  return len;
}

json_scan_result json_scan_limits(const char *text, size_t len, size_t max_depth,
                                  size_t max_values) {
  size_t depth = 0, values = 1;
  size_t i = 0;
  while (i < len) {
    char ch = text[i++];
    switch (ch) {
    case '"':
      i = skip_string(text, len, i);
      break;
    case '[':
    case '{':
      if (++depth > max_depth) return JSON_SCAN_TOO_DEEP;
      if (++values > max_values) return JSON_SCAN_TOO_MANY;
      break;
    case ']':
    case '}':
      if (depth > 0) depth--; /* unbalanced: the parser will say so */
      break;
    case ',':
      if (++values > max_values) return JSON_SCAN_TOO_MANY;
      break;
    default:
      break;
    }
  }
  return JSON_SCAN_OK;
}
