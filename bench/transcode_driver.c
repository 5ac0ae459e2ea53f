/* transcode_driver.c - converts one image file N times with core/transcode.c,
 * for timing (bench/README: hyperfine or /usr/bin/time around it) and for
 * trying a file by hand. Not installed.
 *
 *   transcode_driver IN_FILE png|jpeg|webp [QUALITY [N [OUT_FILE]]]
 *
 * Prints one JSON line: the status of the last conversion, its size, and the
 * mean milliseconds per conversion (wall clock). QUALITY defaults to 100, N
 * to 1; OUT_FILE gets the last result. Exit 0 when every conversion worked. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/transcode.h"
#include "util/timeutil.h"

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  uint8_t *data = NULL;
  size_t cap = 0, n = 0, got;
  do {
    if (n == cap) {
      cap = cap ? cap * 2 : 1 << 20;
      uint8_t *bigger = realloc(data, cap);
      if (!bigger) {
        free(data);
        fclose(f);
        return NULL;
      }
      data = bigger;
    }
    got = fread(data + n, 1, cap - n, f);
    n += got;
  } while (got > 0);
  fclose(f);
  *len = n;
  return data;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: transcode_driver IN_FILE png|jpeg|webp [QUALITY [N [OUT_FILE]]]\n");
    return 2;
  }
  imagefmt to = imagefmt_from_name(argv[2]);
  int quality = argc > 3 ? atoi(argv[3]) : 100;
  int n = argc > 4 ? atoi(argv[4]) : 1;
  size_t len = 0;
  uint8_t *in = read_file(argv[1], &len);
  if (!in || n < 1 || !transcode_startup()) {
    fprintf(stderr, "transcode_driver: cannot read %s or start libvips\n", argv[1]);
    return 2;
  }
  transcode_result r = {0};
  transcode_status st = TRANSCODE_OK;
  int failed = 0;
  int64_t started = time_mono_ms();
  for (int i = 0; i < n; i++) {
    free(r.data);
    st = transcode_image(in, len, to, quality, 0, &r);
    failed += st != TRANSCODE_OK;
  }
  double ms = (double)(time_mono_ms() - started) / n;
  printf("{\"status\":\"%s\",\"why\":\"%s\",\"bytes_in\":%zu,\"bytes_out\":%zu,\"width\":%d,"
         "\"height\":%d,\"runs\":%d,\"ms_per_run\":%.2f}\n",
         transcode_status_name(st), r.why, len, r.len, r.width, r.height, n, ms);
  if (argc > 5 && r.data) {
    FILE *f = fopen(argv[5], "wb");
    if (f) {
      fwrite(r.data, 1, r.len, f);
      fclose(f);
    }
  }
  free(r.data);
  free(in);
  transcode_thread_done();
  transcode_shutdown();
  return failed ? 1 : 0;
}
