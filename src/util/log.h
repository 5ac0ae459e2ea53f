/* log.h - structured one-line logs (logfmt) on stderr.
 *
 * Every line is `ts=... level=... msg=... key=value ...`, one event per line,
 * written with a single write(2) so lines from different threads never
 * interleave. Values that contain spaces, quotes or '=' must be passed through
 * log_quote() by the caller. */
#ifndef IMGATE_LOG_H
#define IMGATE_LOG_H

#include <stddef.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Sets the minimum level written (default LOG_INFO). Thread-safe to call once at start. */
void log_set_level(log_level level);
/* Parses "debug|info|warn|error"; returns -1 on anything else. */
int log_level_parse(const char *name);

/* Writes one line: ts, level, msg=<msg>, then the printf-formatted key=value tail (may be NULL). */
void log_event(log_level level, const char *msg, const char *kv_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Quotes a value for logfmt into out (always NUL-terminated, truncated to fit):
 * plain values are copied as they are, others get "..." with \" and \\ escaped
 * and control characters dropped. Returns out. */
const char *log_quote(const char *value, char *out, size_t out_size);

#define LOG_DEBUG(msg, ...) log_event(LOG_DEBUG, msg, __VA_ARGS__)
#define LOG_INFO(msg, ...) log_event(LOG_INFO, msg, __VA_ARGS__)
#define LOG_WARN(msg, ...) log_event(LOG_WARN, msg, __VA_ARGS__)
#define LOG_ERROR(msg, ...) log_event(LOG_ERROR, msg, __VA_ARGS__)

#endif
