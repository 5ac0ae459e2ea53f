/* log.c - logfmt lines on stderr, one write(2) per line. */
#include "util/log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util/timeutil.h"

static atomic_int min_level = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(log_level level) { atomic_store(&min_level, (int)level); }

int log_level_parse(const char *name) {
  for (int i = 0; i < 4; i++)
    if (name && strcmp(name, level_names[i]) == 0) return i;
  return -1;
}

const char *log_quote(const char *value, char *out, size_t out_size) {
  if (out_size == 0) return out;
  if (!value) value = "";
  bool plain = *value != '\0';
  for (const char *p = value; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f) {
      plain = false;
      break;
    }
  }
  size_t o = 0;
  if (plain) {
    for (const char *p = value; *p && o + 1 < out_size; p++) out[o++] = *p;
    out[o] = '\0';
    return out;
  }
  /* Leave room for the closing quote and the NUL. */
  if (out_size < 3) {
    out[0] = '\0';
    return out;
  }
  out[o++] = '"';
  for (const char *p = value; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c < ' ' || c == 0x7f) continue;
    size_t need = (c == '"' || c == '\\') ? 2 : 1;
    if (o + need + 2 > out_size) break;
    if (need == 2) out[o++] = '\\';
    out[o++] = (char)c;
  }
  out[o++] = '"';
  out[o] = '\0';
  return out;
}

void log_event(log_level level, const char *msg, const char *kv_fmt, ...) {
  if ((int)level < atomic_load(&min_level)) return;
  char line[4096];
  char ts[32];
  char qmsg[256];
  time_format_iso(time_now_ms(), ts);
  int n = snprintf(line, sizeof line, "ts=%s level=%s msg=%s", ts, level_names[level],
                   log_quote(msg, qmsg, sizeof qmsg));
  if (n < 0) return;
  size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
  if (kv_fmt && *kv_fmt && len + 2 < sizeof line) {
    line[len++] = ' ';
    va_list ap;
    va_start(ap, kv_fmt);
    int m = vsnprintf(line + len, sizeof line - len, kv_fmt, ap);
    va_end(ap);
    if (m > 0) len += (size_t)m < sizeof line - len ? (size_t)m : sizeof line - len - 1;
  }
  if (len >= sizeof line - 1) len = sizeof line - 2; /* truncated: keep the newline */
  line[len++] = '\n';
  /* One write per line keeps lines whole between threads; a short write to a
   * pipe of less than PIPE_BUF bytes cannot happen, and logging never fails a request. */
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}
