/* fuzz_multipart.c - multipart/form-data read in place (util/multipart.h).
 *
 * The input is a body under the boundary "XyZ" (and, from its first line, a
 * Content-Type value for multipart_boundary). Properties:
 * - multipart_boundary gives a boundary of 1..70 bytes or refuses;
 * - multipart_parse either refuses with a reason, or returns parts that lie
 *   inside the body, in order and without overlap, each with a name, and
 *   for each part the body holds the delimiter right after its data (the
 *   reference check: what was cut out is exactly what lay between two
 *   delimiters). */
#include <string.h>

#include "fuzz_check.h"
#include "util/multipart.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The first line, as a Content-Type value. */
  const uint8_t *nl = memchr(data, '\n', size < 200 ? size : 200);
  if (nl) {
    char ct[201];
    size_t n = (size_t)(nl - data);
    memcpy(ct, data, n);
    ct[n] = '\0';
    char b[80];
    if (multipart_boundary(ct, b, sizeof b)) FUZZ_CHECK(strlen(b) >= 1 && strlen(b) <= 70);
  }
  multipart_part parts[8];
  char err[128] = "";
  int n = multipart_parse(data, size, "XyZ", parts, 8, err, sizeof err);
  if (n < 0) {
    FUZZ_CHECK(n == -1 && err[0] != '\0');
    return 0;
  }
  FUZZ_CHECK(n <= 8);
  const uint8_t *prev_end = data;
  for (int i = 0; i < n; i++) {
    const multipart_part *p = &parts[i];
    FUZZ_CHECK(p->name[0] != '\0');
    FUZZ_CHECK(p->data >= prev_end && p->data + p->len <= data + size);
    FUZZ_CHECK(data + size - (p->data + p->len) >= 7 &&
               memcmp(p->data + p->len, "\r\n--XyZ", 7) == 0);
    FUZZ_CHECK(!p->is_file || strlen(p->filename) < sizeof p->filename);
    prev_end = p->data + p->len;
  }
  return 0;
}
