/* fuzz_jsonscan.c - the JSON pre-scan (util/jsonscan.h) against its contract and jansson.
 *
 * The input is the document. For any bytes, the scan must behave as a pair of
 * thresholds: there is a depth D and a value count V such that it says OK
 * exactly when max_depth >= D and max_values >= V, TOO_DEEP when only the
 * depth is short, TOO_MANY when only the count is. A prefix of the text never
 * needs more than the whole. When jansson parses the text (refusing duplicate
 * keys, as the API does), D is the nesting depth of the tree and V its number of values
 * plus one per empty array or object (the '[' of an empty array counts, see
 * jsonscan.h): the scan may not under-count what the parser will build. */
#include <jansson.h>

#include "fuzz_check.h"
#include "util/jsonscan.h"

/* Smallest depth limit the scan accepts, found by bisection: with no value
 * limit the scan is OK or TOO_DEEP, and OK for every limit above D. Nesting
 * cannot exceed one level per byte. */
static size_t depth_needed(const char *text, size_t len) {
  size_t lo = 0, hi = len;
  FUZZ_CHECK(json_scan_limits(text, len, hi, SIZE_MAX) == JSON_SCAN_OK);
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    json_scan_result r = json_scan_limits(text, len, mid, SIZE_MAX);
    FUZZ_CHECK(r == JSON_SCAN_OK || r == JSON_SCAN_TOO_DEEP);
    if (r == JSON_SCAN_OK)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* Smallest value limit (at least 1: the document itself) the scan accepts. */
static size_t values_needed(const char *text, size_t len) {
  size_t lo = 1, hi = len + 1;
  FUZZ_CHECK(json_scan_limits(text, len, SIZE_MAX, hi) == JSON_SCAN_OK);
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    json_scan_result r = json_scan_limits(text, len, SIZE_MAX, mid);
    FUZZ_CHECK(r == JSON_SCAN_OK || r == JSON_SCAN_TOO_MANY);
    if (r == JSON_SCAN_OK)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* Depth and value count of a parsed tree, as the scan counts them. */
static void tree_stats(const json_t *v, size_t depth, size_t *max_depth, size_t *values) {
  (*values)++;
  if (!json_is_array(v) && !json_is_object(v)) return;
  depth++;
  if (depth > *max_depth) *max_depth = depth;
  if (json_is_array(v)) {
    if (json_array_size(v) == 0) (*values)++;
    for (size_t i = 0; i < json_array_size(v); i++)
      tree_stats(json_array_get(v, i), depth, max_depth, values);
  } else {
    if (json_object_size(v) == 0) (*values)++;
    const char *key;
    json_t *member;
    json_object_foreach((json_t *)v, key, member) tree_stats(member, depth, max_depth, values);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  FUZZ_CHECK(json_scan_limits(text, size, SIZE_MAX, SIZE_MAX) == JSON_SCAN_OK);

  size_t d = depth_needed(text, size);
  size_t v = values_needed(text, size);
  FUZZ_CHECK(json_scan_limits(text, size, d, v) == JSON_SCAN_OK);
  if (d > 0) FUZZ_CHECK(json_scan_limits(text, size, d - 1, v) == JSON_SCAN_TOO_DEEP);
  if (v > 1) FUZZ_CHECK(json_scan_limits(text, size, d, v - 1) == JSON_SCAN_TOO_MANY);
  if (d > 0 && v > 1) {
    json_scan_result r = json_scan_limits(text, size, d - 1, v - 1);
    FUZZ_CHECK(r == JSON_SCAN_TOO_DEEP || r == JSON_SCAN_TOO_MANY);
  }

  /* Prefixes: what a whole text passes, every beginning of it passes. Each is
   * scanned from its own exact-size copy so a read past its end shows. */
  size_t cuts[] = {size / 2, size ? size - 1 : 0};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    uint8_t *prefix = fuzz_copy(data, cuts[i]);
    FUZZ_CHECK(json_scan_limits((const char *)prefix, cuts[i], d, v) == JSON_SCAN_OK);
    free(prefix);
  }

  json_error_t jerr;
  /* Duplicate keys refused, as the API does: a parser that kept only the last
   * would hold fewer members than the text has. */
  json_t *root =
      json_loadb(text, size, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
  if (root) {
    size_t tree_depth = 0, tree_values = 0;
    tree_stats(root, 0, &tree_depth, &tree_values);
    if (d != tree_depth || v != tree_values) {
      fprintf(stderr, "scan depth %zu values %zu, tree depth %zu values %zu\n", d, v, tree_depth,
              tree_values);
      FUZZ_CHECK(!"the scan agrees with the parsed tree");
    }
    json_decref(root);
  }
  return 0;
}
