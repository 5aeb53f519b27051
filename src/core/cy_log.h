/* cy_log: one line per event, to stderr.
 *
 *   2026-11-24T03:08:20.123Z INFO  shard=2 client=dev-1 connected proto=5 keepalive=60
 *
 * Time is UTC with milliseconds, then the level, then the process's tag
 * (shard=N in a shard, none in the supervisor), then client=<id> when the
 * event concerns one client, then the message. Lines are written with one
 * write(2) so they do not interleave between processes sharing stderr.
 *
 * Thread: any; the level is process-wide state set once at start.
 */
#ifndef CY_LOG_H
#define CY_LOG_H

typedef enum { CY_LOG_DEBUG = 0, CY_LOG_INFO, CY_LOG_WARN, CY_LOG_ERROR } cy_log_level;

void cy_log_set_level(cy_log_level lvl);
/* Tag every line of this process with "tag " (copied; NULL or "" for none). */
void cy_log_set_tag(const char *tag);
/* Parses "debug", "info", "warn", "error". Returns 0 or CY_EINVAL. */
int cy_log_parse_level(const char *s, cy_log_level *out);
int cy_log_enabled(cy_log_level lvl);
/* client may be NULL. */
void cy_log(cy_log_level lvl, const char *client, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define cy_debug(client, ...)                                                                      \
    do {                                                                                           \
        if (cy_log_enabled(CY_LOG_DEBUG)) cy_log(CY_LOG_DEBUG, client, __VA_ARGS__);               \
    } while (0)
/* Checks the level before evaluating its arguments, as cy_debug does: some
 * arguments cost a system call (cy_conn_peer), and info is off in production
 * and benchmarks. */
#define cy_info(client, ...)                                                                       \
    do {                                                                                           \
        if (cy_log_enabled(CY_LOG_INFO)) cy_log(CY_LOG_INFO, client, __VA_ARGS__);                 \
    } while (0)
#define cy_warn(client, ...) cy_log(CY_LOG_WARN, client, __VA_ARGS__)
#define cy_error(client, ...) cy_log(CY_LOG_ERROR, client, __VA_ARGS__)

#endif
