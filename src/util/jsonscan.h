/* jsonscan.h - a cheap look at raw JSON before it is parsed.
 *
 * A JSON parser builds a node for every value before the caller can look at
 * any of them: jansson turns a 30 MiB body of "[],[],[],..." into about
 * 1.4 GB of nodes. One pass over the raw bytes, allocating nothing, counts
 * values and nesting depth, so such a body can be refused before parsing.
 * The scan does not check that the text is JSON; the parser still does. */
#ifndef IMGATE_JSONSCAN_H
#define IMGATE_JSONSCAN_H

#include <stddef.h>

typedef enum {
  JSON_SCAN_OK = 0,
  JSON_SCAN_TOO_DEEP, /* arrays and objects nest deeper than max_depth */
  JSON_SCAN_TOO_MANY, /* more than max_values values */
} json_scan_result;

/* Scans len bytes of text (NUL bytes included). Values are counted from the
 * structure outside strings: 1 for the document, plus 1 per '[' or '{', plus
 * 1 per ','. So [1,2,3] counts 4, and an object of n members n + 1: keys are
 * not counted, members are. */
json_scan_result json_scan_limits(const char *text, size_t len, size_t max_depth,
                                  size_t max_values);

#endif
