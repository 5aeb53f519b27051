/* cy_clock: the two clocks. Monotonic milliseconds for timeouts and
 * liveness (never jumps); wall-clock milliseconds since the epoch for
 * anything written to disk or shown to people (survives a restart).
 * Thread: any.
 */
#ifndef CY_CLOCK_H
#define CY_CLOCK_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

static inline int64_t cy_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Monotonic microseconds, for measuring short intervals (round trips). */
static inline int64_t cy_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline int64_t cy_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wall ms as ISO 8601 UTC with milliseconds ("2026-12-04T13:35:32.123Z")
 * into buf (at least CY_TIME_ISO_LEN bytes); "" when ms <= 0 or the time
 * cannot be shown. Returns buf. */
#define CY_TIME_ISO_LEN 32
static inline char *cy_time_iso(int64_t ms, char *buf)
{
    buf[0] = '\0';
    if (ms <= 0) return buf;
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&sec, &tm)) return buf;
    snprintf(buf, CY_TIME_ISO_LEN, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", (tm.tm_year + 1900) % 10000,
             (tm.tm_mon + 1) % 100, tm.tm_mday % 100, tm.tm_hour % 100, tm.tm_min % 100,
             tm.tm_sec % 100, (int)(ms % 1000));
    return buf;
}

#endif
