/* fuzz_base64.c - base64 decoding and encoding (util/base64.h).
 *
 * Two directions:
 * - The input decoded as text. When the decoder accepts it, the input must be
 *   a spelling of exactly one byte string: encoding the result gives back the
 *   input with whitespace dropped, the URL-safe alphabet mapped to the
 *   standard one and padding restored (the decoder refuses non-zero trailing
 *   bits, so no two spellings decode alike). The size must respect the cap:
 *   the exact size decodes, one byte less answers -2.
 * - The input (after one byte of flags) encoded as bytes: the encoding has
 *   the announced length, and decodes back, also once re-spelled in the
 *   URL-safe alphabet, without padding, or with whitespace in between.
 * - The input decoded by the decoder this one replaced (base64_reference.h):
 *   the same answer (0, -1 or -2) and the same bytes, at the size cap and
 *   with none.
 * - The input streamed, cut at up to eight points chosen from its hash, by
 *   base64_stream_feed and by base64_stream_run (the caller skipping the
 *   whitespace it stops at): the same verdict and bytes as the one-shot form,
 *   and no call writes more than BASE64_FEED_MAX promises. */
#include <stdbool.h>

#include "base64_reference.h"
#include "fuzz_check.h"
#include "util/base64.h"

/* The one canonical spelling of a text the decoder accepted. */
static char *canonical(const uint8_t *in, size_t len) {
  char *out = malloc(len + 4);
  FUZZ_CHECK(out);
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    char c = (char)in[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '=') continue;
    out[n++] = c == '-' ? '+' : c == '_' ? '/' : c;
  }
  while (n % 4) out[n++] = '=';
  out[n] = '\0';
  return out;
}

static bool is_alphabet_or_space(uint8_t c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '+' || c == '/' || c == '-' || c == '_' || c == '=' || c == ' ' || c == '\t' ||
         c == '\r' || c == '\n';
}

static void check_decode(const uint8_t *data, size_t size) {
  uint8_t *out = NULL;
  size_t out_len = 0;
  int rc = base64_decode((const char *)data, size, SIZE_MAX, &out, &out_len);
  FUZZ_CHECK(rc == 0 || rc == -1);
  if (rc != 0) {
    FUZZ_CHECK(out == NULL && out_len == 0);
    return;
  }
  FUZZ_CHECK(out != NULL);
  bool std = false, url = false;
  for (size_t i = 0; i < size; i++) {
    FUZZ_CHECK(is_alphabet_or_space(data[i]));
    std = std || data[i] == '+' || data[i] == '/';
    url = url || data[i] == '-' || data[i] == '_';
  }
  FUZZ_CHECK(!(std && url)); /* one input, one alphabet */

  char *enc = base64_encode(out, out_len);
  char *canon = canonical(data, size);
  FUZZ_CHECK(enc && strcmp(enc, canon) == 0);
  FUZZ_CHECK(strlen(enc) == base64_encoded_len(out_len));
  free(enc);
  free(canon);

  /* The cap: the exact size passes, one less is refused before any output. */
  uint8_t *again = NULL;
  size_t again_len = 0;
  FUZZ_CHECK(base64_decode((const char *)data, size, out_len, &again, &again_len) == 0);
  FUZZ_CHECK(again_len == out_len && memcmp(again, out, out_len) == 0);
  free(again);
  if (out_len > 0) {
    FUZZ_CHECK(base64_decode((const char *)data, size, out_len - 1, &again, &again_len) == -2);
    FUZZ_CHECK(again == NULL && again_len == 0);
  }
  free(out);
}

/* Re-spells a standard encoding as flags ask: bit 0 URL-safe alphabet, bit 1
 * no padding, bit 2 a blank after every few characters. */
static char *respell(const char *enc, uint8_t flags) {
  size_t len = strlen(enc);
  char *out = malloc(len * 2 + 1);
  FUZZ_CHECK(out);
  static const char blanks[] = " \t\r\n";
  size_t every = (size_t)(flags >> 4) + 1, n = 0;
  for (size_t i = 0; i < len; i++) {
    char c = enc[i];
    if (c == '=' && (flags & 2)) continue;
    if (flags & 1) c = c == '+' ? '-' : c == '/' ? '_' : c;
    out[n++] = c;
    if ((flags & 4) && (i + 1) % every == 0) out[n++] = blanks[i % 4];
  }
  out[n] = '\0';
  return out;
}

static void check_encode(const uint8_t *data, size_t size) {
  if (size == 0) return;
  uint8_t flags = data[0];
  const uint8_t *raw = data + 1;
  size_t raw_len = size - 1;
  char *enc = base64_encode(raw, raw_len);
  FUZZ_CHECK(enc != NULL);
  FUZZ_CHECK(strlen(enc) == base64_encoded_len(raw_len));
  char *text = respell(enc, flags);
  uint8_t *out = NULL;
  size_t out_len = 0;
  FUZZ_CHECK(base64_decode(text, strlen(text), raw_len, &out, &out_len) == 0);
  FUZZ_CHECK(out_len == raw_len && memcmp(out, raw, raw_len) == 0);
  free(out);
  free(text);
  free(enc);
}

static void check_reference(const uint8_t *data, size_t size) {
  uint8_t *a = NULL, *b = NULL;
  size_t alen = 0, blen = 0;
  int ra = base64_decode((const char *)data, size, SIZE_MAX, &a, &alen);
  int rb = ref_base64_decode((const char *)data, size, SIZE_MAX, &b, &blen);
  FUZZ_CHECK(ra == rb && alen == blen && (alen == 0 || memcmp(a, b, alen) == 0));
  free(a);
  free(b);
  size_t cap = size % 7 == 0 ? 0 : blen / 2; /* a cap the text may or may not fit */
  ra = base64_decode((const char *)data, size, cap, &a, &alen);
  rb = ref_base64_decode((const char *)data, size, cap, &b, &blen);
  FUZZ_CHECK(ra == rb && alen == blen && (alen == 0 || memcmp(a, b, alen) == 0));
  free(a);
  free(b);
}

/* Streams data cut at cuts[0..n) (ascending, the last == size). run: through
 * base64_stream_run, skipping whitespace by hand and failing on anything else
 * it stops at. Returns 0 and the bytes in out, or -1. */
static int stream(const uint8_t *data, const size_t *cuts, size_t n, bool run, uint8_t *out,
                  size_t *out_len) {
  base64_stream s;
  base64_stream_init(&s);
  size_t at = 0, o = 0;
  for (size_t k = 0; k < n; k++) {
    size_t len = cuts[k] - at;
    /* A buffer of exactly the promised room: ASan catches a write past it. */
    uint8_t *room = malloc(BASE64_FEED_MAX(len));
    FUZZ_CHECK(room);
    const char *p = (const char *)data + at;
    size_t written = 0;
    int rc = 0;
    if (!run) {
      rc = base64_stream_feed(&s, p, len, room, &written);
    } else {
      size_t i = 0;
      while (i < len && rc == 0) {
        size_t w = 0;
        i += base64_stream_run(&s, p + i, len - i, room + written, &w);
        written += w;
        if (base64_stream_failed(&s)) rc = -1;
        else if (i < len && strchr(" \t\r\n", p[i]) && p[i]) i++;
        else if (i < len) rc = -1;
      }
    }
    FUZZ_CHECK(written <= BASE64_FEED_MAX(len));
    memcpy(out + o, room, written);
    free(room);
    o += written;
    if (rc != 0) return -1;
    at = cuts[k];
  }
  size_t tail = 0;
  if (base64_stream_finish(&s, out + o, &tail) != 0) return -1;
  *out_len = o + tail;
  return 0;
}

static void check_stream(const uint8_t *data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 1099511628211ull;
  size_t cuts[9], n = (size_t)(h % 9);
  for (size_t i = 0; i < n; i++) {
    h = h * 6364136223846793005ull + 1442695040888963407ull;
    cuts[i] = (size_t)(h >> 33) % (size + 1);
  }
  for (size_t i = 1; i < n; i++)
    for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
      size_t t = cuts[j];
      cuts[j] = cuts[j - 1];
      cuts[j - 1] = t;
    }
  cuts[n++] = size;
  uint8_t *want = NULL;
  size_t want_len = 0;
  int want_rc = base64_decode((const char *)data, size, SIZE_MAX, &want, &want_len);
  uint8_t *got = malloc(size + 8);
  FUZZ_CHECK(got);
  for (int run = 0; run <= 1; run++) {
    size_t got_len = 0;
    int rc = stream(data, cuts, n, run, got, &got_len);
    FUZZ_CHECK(rc == (want_rc == 0 ? 0 : -1));
    if (rc == 0) FUZZ_CHECK(got_len == want_len && (!want_len || !memcmp(got, want, want_len)));
  }
  free(got);
  free(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check_decode(data, size);
  check_encode(data, size);
  check_reference(data, size);
  check_stream(data, size);
  return 0;
}
