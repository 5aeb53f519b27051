/* cy_log: one line per event, to stderr, as text or as JSON.
 *
 *   2026-11-24T03:08:20.123Z INFO  shard=2 client=dev-1 connected proto=5 keepalive=60
 *
 * Text (log_format = text, the default): time is UTC with milliseconds,
 * then the level, then the process's tag (shard=N in a shard, "monitor" in
 * the monitor, none in the supervisor), then client=<id> when the event
 * concerns one client, then the message. Control characters become '?', so
 * text from clients cannot forge lines.
 *
 * JSON (log_format = json, for log shippers): one object per line,
 *
 *   {"time":"2026-11-24T03:08:20.123Z","level":"info","process":"shard","shard":2,
 *    "source":"mqtt/handle_connect.c:397","client":"dev-1","message":"connected ..."}
 *
 * "shard" only in a shard, "client" only when the event concerns one;
 * "source" is the file and line that logged (under src/). Strings are
 * escaped as JSON wants and always valid UTF-8 (a byte that is not is
 * written as U+FFFD), whatever a client sent.
 *
 * Lines are written with one write(2) so they do not interleave between
 * processes sharing stderr. The format is chosen at start (not on reload).
 *
 * Thread: any; the level, format, tag and process name are process-wide
 * state, set at start and on a reload (SIGHUP), from the process's main
 * thread.
 */
#ifndef CY_LOG_H
#define CY_LOG_H

#include <stdint.h>

typedef enum { CY_LOG_DEBUG = 0, CY_LOG_INFO, CY_LOG_WARN, CY_LOG_ERROR } cy_log_level;
typedef enum { CY_LOG_TEXT = 0, CY_LOG_JSON } cy_log_format;

void cy_log_set_level(cy_log_level lvl);
/* Tag every line of this process with "tag " (copied; NULL or "" for none).
 * In JSON, a tag "shard=N" is "process":"shard","shard":N, any other tag
 * is the process's name. */
void cy_log_set_tag(const char *tag);
/* The process's name in JSON lines while it has no tag (copied, at most 31
 * bytes; default "cyan"): the supervisor sets "supervisor". */
void cy_log_set_process(const char *name);
/* Parses "debug", "info", "warn", "error". Returns 0 or CY_EINVAL. */
int cy_log_parse_level(const char *s, cy_log_level *out);
/* Parses "text", "json". Returns 0 or CY_EINVAL. */
int cy_log_parse_format(const char *s, cy_log_format *out);
void cy_log_set_format(cy_log_format f);
int cy_log_enabled(cy_log_level lvl);
/* One line. file and line: where it was logged (cy_log passes __FILE__
 * and __LINE__; file may be NULL). client may be NULL. */
void cy_log_at(cy_log_level lvl, const char *file, int line, const char *client, const char *fmt,
               ...) __attribute__((format(printf, 5, 6)));
#define cy_log(lvl, client, ...) cy_log_at(lvl, __FILE__, __LINE__, client, __VA_ARGS__)

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

/* The connection summary (log_summary_interval): each connection's own
 * lines (connected, disconnected, online, offline) are at debug; every
 * interval a shard writes one info line of what happened since the last:
 *
 *   INFO  shard=1 connections in the last 60 s: 12 opened (mqtt 10, mqtts 2),
 *         9 closed (mqtt 9), 3 refused; open now: 140 MQTT, 12 CoAP
 *
 * and nothing when nothing did. "opened" counts logins (an accepted
 * CONNECT, a CoAP device coming online), "closed" their ends, "refused"
 * refused CONNECTs. Kinds: mqtt (plain TCP), mqtts (TLS ended here), ws
 * (WebSocket ended here), tls/ws (TLS or WebSocket that another shard
 * terminates for this one), coap, coaps (DTLS). Process-wide counts, the
 * shard's loop's only. */
typedef enum {
    CY_CONN_MQTT = 0,
    CY_CONN_MQTTS,
    CY_CONN_WS,
    CY_CONN_RELAYED,
    CY_CONN_COAP,
    CY_CONN_COAPS,
    CY_CONN_KINDS
} cy_conn_kind;

void cy_connsum_opened(cy_conn_kind k);
void cy_connsum_closed(cy_conn_kind k);
/* Called often (a sweep): the first call starts the interval (what was
 * counted before belongs to it); once interval_s has passed it writes the
 * line if anything happened and starts the next. refused_total: the
 * process's count of refused CONNECTs so far (the line shows its growth);
 * mqtt_open, coap_open: connections and CoAP devices online now.
 * interval_s 0: no line, counts dropped. Returns 1 when it wrote a line. */
int cy_connsum_tick(int64_t now_ms, uint32_t interval_s, uint64_t refused_total, uint64_t mqtt_open,
                    uint64_t coap_open);
/* Forget everything (tests). */
void cy_connsum_reset(void);

/* A rate limit for log lines about one kind of event that a stranger can
 * repeat at will (a failed login, an idle socket): at most one line per
 * source (an address) per window, and at most `burst` lines per window in
 * all, so a flood from one or from many sources cannot fill the log. What
 * is held back is counted per source and reported by that source's next
 * line ("... (37 more since the last line)").
 *
 * The table is fixed (CY_LOGRL_SLOTS sources); a source whose slot is taken
 * by another source active in the same window is counted in `others`,
 * which the next line of any source reports.
 *
 * Ownership: the caller's storage (zero it, or cy_logrl_init). Keys are
 * copied (up to 47 bytes). Thread: the owner's. */
#define CY_LOGRL_SLOTS 256
#define CY_LOGRL_KEY 48

typedef struct cy_logrl_slot {
    char key[CY_LOGRL_KEY];
    int64_t start_ms;    /* when this source's window began */
    uint64_t held;       /* events of this source not logged since its last line */
} cy_logrl_slot;

typedef struct cy_logrl {
    uint32_t window_ms;  /* one line per source per window */
    uint32_t burst;      /* lines per window, all sources together */
    int64_t win_start_ms;
    uint32_t lines;      /* lines in the current global window */
    uint64_t others;     /* events held back whose source had no slot */
    cy_logrl_slot slots[CY_LOGRL_SLOTS];
} cy_logrl;

void cy_logrl_init(cy_logrl *rl, uint32_t window_ms, uint32_t burst);
/* Decide for one event of `key` at monotonic time now_ms. Returns 1 when a
 * line should be written, and sets *held to the number of events (of this
 * source, and of sources without a slot) that were held back since the
 * last line; returns 0 when the event is only counted. */
int cy_logrl_allow(cy_logrl *rl, const char *key, int64_t now_ms, uint64_t *held);
/* cy_logrl_allow at the monotonic clock's now, and the end of the line to
 * write: "" or " (N more since the last line)" in more[0..CY_LOGRL_MORE). */
#define CY_LOGRL_MORE 64
int cy_logrl_line(cy_logrl *rl, const char *key, char more[CY_LOGRL_MORE]);

#endif
