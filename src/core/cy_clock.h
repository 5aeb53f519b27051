/* cy_clock: the two clocks. Monotonic milliseconds for timeouts and
 * liveness (never jumps); wall-clock milliseconds since the epoch for
 * anything written to disk or shown to people (survives a restart).
 * Thread: any.
 */
#ifndef CY_CLOCK_H
#define CY_CLOCK_H

#include <stdint.h>
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

#endif
