/* fuzz_check.h - what the fuzz targets share.
 *
 * A target checks properties of what a parser returns, not only that it
 * returns: FUZZ_CHECK names the broken property and aborts, so libFuzzer
 * stops, prints the stack and saves the input as a crash-* file. */
#ifndef IMGATE_FUZZ_CHECK_H
#define IMGATE_FUZZ_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                    \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      fprintf(stderr, "%s:%d: property broken: %s\n", __FILE__, __LINE__, #cond);           \
      abort();                                                                              \
    }                                                                                       \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as a NUL-terminated string, cut at its first NUL as a C caller
 * would see it. malloc'd with no room to spare, so AddressSanitizer catches a
 * read past the end. */
static inline char *fuzz_cstring(const uint8_t *data, size_t size) {
  size_t n = strnlen((const char *)data, size);
  char *s = malloc(n + 1);
  if (!s) abort();
  memcpy(s, data, n);
  s[n] = '\0';
  return s;
}

/* A heap copy of exactly n bytes, for the same reason (AddressSanitizer's
 * malloc(0) gives a pointer with no addressable byte). */
static inline uint8_t *fuzz_copy(const uint8_t *data, size_t n) {
  uint8_t *p = malloc(n);
  if (!p) abort();
  if (n) memcpy(p, data, n);
  return p;
}

#endif
