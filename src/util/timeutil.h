/* timeutil.h - wall-clock and monotonic time in milliseconds; UTC text. */
#ifndef IMGATE_TIMEUTIL_H
#define IMGATE_TIMEUTIL_H

#include <stdint.h>

/* Unix time in milliseconds (CLOCK_REALTIME). */
int64_t time_now_ms(void);
/* Milliseconds from an arbitrary origin that never goes back (CLOCK_MONOTONIC). */
int64_t time_mono_ms(void);
/* Formats unix ms as RFC 3339 UTC with milliseconds, "2026-11-21T09:05:03.042Z". */
void time_format_iso(int64_t unix_ms, char out[32]);
/* Formats unix ms as an HTTP date (RFC 9110 IMF-fixdate), "Sat, 21 Nov 2026 09:05:03 GMT". */
void time_format_http(int64_t unix_ms, char out[40]);

#endif
